//! Capture and playback on ALSA's `null` device: a temp HOME whose `.asoundrc` makes the
//! default PCM `null` gives a working, silent input and output on any machine (no sound
//! card needed). The HOME is set once, before ALSA reads its configuration.
#![cfg(feature = "audio")]

mod audio_common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use audio_common::{alsa_home, hub_with_events, Sink};
use coda_actors::audio::{
    AudioCapture, AudioError, AudioSettings, PlayOutcome, Speaker, StartCapture, StopCapture,
};
use coda_actors::components::ComponentRegistry;
use coda_actors::hub::{HubHandle, TypeMask};
use coda_actors::supervise::Supervision;
use coda_actors::tts::espeak::{EspeakConfig, EspeakEngine};
use coda_actors::tts::{
    CancelTurn, FinishTurn, Hold, HoldTurn, SentenceProgress, Speak, TtsActor, TtsOutput, TtsUpdate,
};
use coda_actors::voice::SpeechAudio;
use coda_protocol::{EventType, RawEnvelope, SttMode};

fn null_home() {
    alsa_home("pcm.!default { type plug slave.pcm \"null\" }\n");
}

const WAIT: Duration = Duration::from_secs(10);

async fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn capture(hub: &HubHandle, sink: Recipient<SpeechAudio>) -> Addr<AudioCapture> {
    let components = ComponentRegistry::new();
    let sup = Supervision::new("audio", Default::default(), hub.clone(), components.clone());
    let settings = AudioSettings {
        segment: coda_actors::audio::SegmentSettings {
            interim_ms: 100,
            ..Default::default()
        },
        ..Default::default()
    };
    AudioCapture::new(sup, components, settings, Some(sink)).start()
}

#[actix_rt::test]
async fn push_to_talk_on_the_null_device_reports_started_and_ended() {
    null_home();
    let (hub, _events) = hub_with_events(TypeMask::ALL);
    let got = Arc::new(Mutex::new(Vec::new()));
    let cap = capture(&hub, Sink(got.clone()).start().recipient());
    let started = cap
        .send(StartCapture {
            session_id: "s1".into(),
            mode: SttMode::PushToTalk,
        })
        .await
        .unwrap()
        .expect("the null device opens");
    assert!(started.rate > 0 && started.channels > 0, "{started:?}");
    // Let some (silent) audio arrive: silence is never sent for an interim transcript.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !got.lock()
            .unwrap()
            .iter()
            .any(|m| matches!(m, SpeechAudio::Partial { .. })),
        "an interim for digital silence"
    );
    // A second session cannot take the device meanwhile.
    let busy = cap
        .send(StartCapture {
            session_id: "other".into(),
            mode: SttMode::PushToTalk,
        })
        .await
        .unwrap();
    assert_eq!(busy, Err(AudioError::Busy("s1".into())));
    cap.send(StopCapture {
        session_id: "s1".into(),
    })
    .await
    .unwrap()
    .unwrap();
    let msgs = wait_until("Ended", || {
        let g = got.lock().unwrap();
        g.iter()
            .any(|m| matches!(m, SpeechAudio::Ended { .. }))
            .then(|| g.clone())
    })
    .await;
    assert!(
        matches!(&msgs[0], SpeechAudio::Started { session_id, mode: SttMode::PushToTalk, .. } if session_id == "s1"),
        "{:?}",
        msgs[0]
    );
    let Some(SpeechAudio::Ended { samples, .. }) = msgs.last() else {
        panic!("last report is not Ended: {:?}", msgs.last());
    };
    assert!(!samples.is_empty());
    // The null device captures digital silence.
    assert!(samples.iter().all(|s| s.abs() < 1e-6));
    // Stopped: a second stop is an error, and the device can be opened again.
    assert!(cap
        .send(StopCapture {
            session_id: "s1".into()
        })
        .await
        .unwrap()
        .is_err());
    cap.send(StartCapture {
        session_id: "s2".into(),
        mode: SttMode::Continuous,
    })
    .await
    .unwrap()
    .expect("reopens");
    tokio::time::sleep(Duration::from_millis(300)).await;
    cap.send(StopCapture {
        session_id: "s2".into(),
    })
    .await
    .unwrap()
    .unwrap();
    // Continuous listening to silence found no speech: nothing reported for s2.
    assert!(got.lock().unwrap().iter().all(|m| m.session_id() != "s2"));
}

fn tone(secs: f32, rate: u32) -> Vec<f32> {
    (0..(secs * rate as f32) as usize)
        .map(|i| 0.2 * (2.0 * std::f32::consts::PI * 220.0 * i as f32 / rate as f32).sin())
        .collect()
}

#[actix_rt::test]
async fn playback_on_the_null_device_plays_and_interrupt_stops_it() {
    null_home();
    let speaker = tokio::task::spawn_blocking(|| Speaker::open("", None))
        .await
        .unwrap()
        .expect("the null output opens");
    let out = tokio::time::timeout(WAIT, speaker.play(tone(0.3, 22_050), 22_050))
        .await
        .unwrap();
    assert_eq!(out, PlayOutcome::Played);

    // A minute of audio: only the stop can end it within the wait.
    let sp = speaker.clone();
    let playing = tokio::spawn(async move { sp.play(tone(60.0, 22_050), 22_050).await });
    let before = speaker.last_pull();
    wait_until("the device to pull samples", || {
        (speaker.last_pull() != before).then_some(())
    })
    .await;
    let t = Instant::now();
    let ack = speaker.stop().await;
    let outcome = tokio::time::timeout(WAIT, playing).await.unwrap().unwrap();
    assert_eq!(outcome, PlayOutcome::Stopped);
    // No sample of ours is pulled after the stop settles.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let settled = speaker.last_pull();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        speaker.last_pull(),
        settled,
        "samples still pulled after stop"
    );
    eprintln!(
        "interrupt: stop acknowledged in {:.2} ms, last sample pulled {:.2} ms after it",
        ack.as_secs_f64() * 1000.0,
        settled
            .map(|s| s.saturating_duration_since(t).as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    );
}

/// A paused speaker takes no sample of what plays nor of what is queued, and goes on
/// from where it paused; a stop ends the pause.
#[actix_rt::test]
async fn a_paused_speaker_holds_its_place_and_a_stop_ends_the_pause() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    null_home();
    let speaker = tokio::task::spawn_blocking(|| Speaker::open("", None))
        .await
        .unwrap()
        .expect("the null output opens");
    let played = Arc::new(AtomicUsize::new(0));
    let (sp, counter) = (speaker.clone(), played.clone());
    let long = tokio::spawn(async move {
        sp.play_counted(tone(60.0, 22_050), 22_050, Some(counter))
            .await
    });
    wait_until("the device to take samples", || {
        (played.load(Ordering::Relaxed) > 0).then_some(())
    })
    .await;
    speaker.pause_now(true);
    // The player's controls are read every 5 ms.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let at_pause = played.load(Ordering::Relaxed);
    let sp = speaker.clone();
    let queued = tokio::spawn(async move { sp.play(tone(0.2, 22_050), 22_050).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        played.load(Ordering::Relaxed),
        at_pause,
        "taken while paused"
    );
    assert!(!long.is_finished() && !queued.is_finished());

    speaker.pause_now(false);
    wait_until("playback to go on", || {
        (played.load(Ordering::Relaxed) > at_pause).then_some(())
    })
    .await;
    speaker.pause_now(true);
    speaker.stop().await;
    let outcomes = (
        tokio::time::timeout(WAIT, long).await.unwrap().unwrap(),
        tokio::time::timeout(WAIT, queued).await.unwrap().unwrap(),
    );
    assert_eq!(outcomes, (PlayOutcome::Stopped, PlayOutcome::Stopped));
    // Paused when stopped: the next sound plays all the same.
    let next = tokio::time::timeout(WAIT, speaker.play(tone(0.2, 22_050), 22_050))
        .await
        .unwrap();
    assert_eq!(next, PlayOutcome::Played);
}

/// What the speaker plays reaches the echo canceller of the input device: after a tone,
/// the canceller runs on the microphone's audio (it passes audio through untouched while
/// nothing has played).
#[cfg(feature = "echo")]
#[actix_rt::test]
async fn what_the_speaker_plays_is_the_echo_cancellers_reference() {
    use coda_actors::audio::echo::{EchoCanceller, EchoReference};
    null_home();
    let reference = EchoReference::new();
    let mut canceller = EchoCanceller::new(reference.clone()).expect("AEC3 starts");
    let r = reference.clone();
    let speaker = tokio::task::spawn_blocking(move || Speaker::open("", Some(r)))
        .await
        .unwrap()
        .expect("the null output opens");
    canceller.process(&[0.0; 1600]);
    assert_eq!(canceller.stats().frames, 0, "nothing played yet");
    let out = tokio::time::timeout(WAIT, speaker.play(tone(0.3, 22_050), 22_050))
        .await
        .unwrap();
    assert_eq!(out, PlayOutcome::Played);
    canceller.process(&[0.0; 1600]);
    assert!(canceller.stats().frames > 0, "{:?}", canceller.stats());
}

/// The capture thread cancels the echo: a `file:` input carrying the echo of what a paced
/// "speaker" thread plays into the reference comes out ≥ 20 dB quieter after a second,
/// with the less-suppressed version for utterances beside it.
#[cfg(feature = "echo")]
#[test]
fn the_capture_thread_cancels_the_echo_of_what_plays() {
    use coda_actors::audio::convert::rms;
    use coda_actors::audio::device::{start_capture, Captured};
    use coda_actors::audio::echo::{EchoReference, FRAME};
    let rate = 16_000usize;
    let mut x = 99u64;
    let far: Vec<f32> = (0..rate * 3)
        .map(|i| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let n = (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
            n * 0.3 * (0.3 + 0.7 * (i as f32 / 3200.0 * std::f32::consts::PI).sin().abs())
        })
        .collect();
    // 60 ms away, a little quieter, with one reflection.
    let mut echo = vec![0.0f32; far.len()];
    for (i, e) in echo.iter_mut().enumerate() {
        if i >= 960 {
            *e += 0.5 * far[i - 960];
        }
        if i >= 1400 {
            *e += 0.1 * far[i - 1400];
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("echo.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate as u32,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut w = hound::WavWriter::create(&wav, spec).unwrap();
    for s in &echo {
        w.write_sample(*s).unwrap();
    }
    w.finalize().unwrap();

    let reference = EchoReference::new();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Captured>(1024);
    let handle = start_capture(
        &format!("file:{}", wav.display()),
        tx,
        Some(reference.clone()),
    )
    .expect("file input opens");
    // The "speaker": 10 ms at a time in real time, as a device pulls.
    let t0 = Instant::now();
    for (i, f) in far.chunks(FRAME).enumerate() {
        reference.played(rate as u32, f);
        let due = t0 + Duration::from_millis(10 * (i as u64 + 1));
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    std::thread::sleep(Duration::from_millis(100));
    drop(handle);
    let (mut out, mut kept) = (Vec::new(), Vec::new());
    while let Ok(c) = rx.try_recv() {
        kept.extend(c.keep.expect("a kept version beside the cancelled one"));
        out.extend(c.samples);
    }
    assert!(out.len() >= far.len() - 3200, "{} samples", out.len());
    let tail = rate + rate / 2..far.len() - 1600;
    let erle = 20.0 * (rms(&echo[tail.clone()]) / rms(&out[tail]).max(1e-9)).log10();
    assert!(erle >= 20.0, "echo reduced by {erle:.1} dB only");
}

struct Updates(Arc<Mutex<Vec<TtsUpdate>>>);
impl Actor for Updates {
    type Context = Context<Self>;
}
impl Handler<TtsUpdate> for Updates {
    type Result = ();
    fn handle(&mut self, m: TtsUpdate, _: &mut Context<Self>) {
        self.0.lock().unwrap().push(m);
    }
}

/// A Tts actor playing on the null device and publishing `tts_audio`, with a recorder of
/// its updates; the hub has taken the subscription when it returns.
async fn speaking_on_null(
    hub: HubHandle,
    engine: Arc<dyn coda_actors::tts::TtsEngine>,
) -> (
    Addr<TtsActor>,
    Arc<Mutex<Vec<TtsUpdate>>>,
    Recipient<TtsUpdate>,
) {
    let sup = Supervision::new("tts", Default::default(), hub, ComponentRegistry::new());
    let tts = TtsActor::new(sup, engine)
        .with_output(TtsOutput {
            play: true,
            device: String::new(),
            stream_audio: true,
        })
        .start();
    let updates = Arc::new(Mutex::new(Vec::new()));
    let rec = Updates(updates.clone()).start().recipient();
    tokio::time::sleep(Duration::from_millis(50)).await;
    (tts, updates, rec)
}

/// Turn `t1` of session `s1` says "Hello." (its updates go nowhere).
async fn say_hello(tts: &Addr<TtsActor>) {
    let rec = Updates(Arc::new(Mutex::new(Vec::new())))
        .start()
        .recipient();
    tts.send(Speak {
        turn_id: "t1".into(),
        session_id: "s1".into(),
        index: 0,
        text: "Hello.".into(),
        progress: Default::default(),
        reply_to: rec,
    })
    .await
    .unwrap()
    .unwrap();
}

fn espeak() -> Arc<EspeakEngine> {
    Arc::new(EspeakEngine::new(EspeakConfig {
        binary: "espeak-ng".into(),
        voice: "en-us".into(),
        rate: 175,
    }))
}

async fn tts_result(events: &Arc<Mutex<Vec<RawEnvelope>>>) -> serde_json::Value {
    wait_until("tts_result", || {
        events
            .lock()
            .unwrap()
            .iter()
            .find(|e| e.event_type == "tts_result")
            .map(|e| e.data.clone())
    })
    .await
}

#[actix_rt::test]
async fn tts_plays_each_sentence_and_reports_played_with_audio_chunks() {
    null_home();
    // A client subscribed to tts_audio by name (ALL = DEFAULT + tts_audio).
    let (hub, events) = hub_with_events(TypeMask::ALL);
    let (tts, updates, rec) = speaking_on_null(hub.clone(), espeak()).await;
    let progress: Vec<Arc<SentenceProgress>> = (0..2).map(|_| Default::default()).collect();
    for (i, text) in ["Hello there.", "This is the second sentence."]
        .into_iter()
        .enumerate()
    {
        tts.send(Speak {
            turn_id: "t1".into(),
            session_id: "s1".into(),
            index: i as u32,
            text: text.into(),
            progress: progress[i].clone(),
            reply_to: rec.clone(),
        })
        .await
        .unwrap()
        .unwrap();
    }
    tts.do_send(FinishTurn {
        turn_id: "t1".into(),
    });
    let result = tts_result(&events).await;
    assert_eq!(result["played"], true, "{result}");
    // Every sample of both went to the device: both were heard whole.
    for p in &progress {
        assert_eq!(p.heard(), Some(1.0));
    }
    let evs = events.lock().unwrap().clone();
    let chunks: Vec<&RawEnvelope> = evs.iter().filter(|e| e.event_type == "tts_audio").collect();
    assert!(chunks.len() >= 3, "{} tts_audio chunks", chunks.len());
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c.data["index"], i as u64);
        assert_eq!(c.data["turn_id"], "t1");
    }
    assert_eq!(chunks.last().unwrap().data["last"], true);
    // The PCM decodes to whole 16-bit samples at espeak-ng's rate.
    use base64::Engine as _;
    let pcm = base64::engine::general_purpose::STANDARD
        .decode(chunks[0].data["audio"].as_str().unwrap())
        .unwrap();
    assert!(!pcm.is_empty() && pcm.len().is_multiple_of(2));
    assert_eq!(chunks[0].data["sample_rate"], 22_050);
    // tts_start came before the first progress, and the turn is done.
    let start = evs
        .iter()
        .position(|e| e.event_type == "tts_start")
        .unwrap();
    let progress = evs
        .iter()
        .position(|e| e.event_type == "tts_progress")
        .unwrap();
    assert!(start < progress);
    assert!(updates
        .lock()
        .unwrap()
        .iter()
        .any(|u| matches!(u, TtsUpdate::Done { .. })));
}

#[actix_rt::test]
async fn tts_audio_is_not_produced_for_wildcard_subscribers_and_no_playback_is_not_played() {
    null_home();
    let (hub, events) = hub_with_events(TypeMask::DEFAULT);
    let sup = Supervision::new(
        "tts",
        Default::default(),
        hub.clone(),
        ComponentRegistry::new(),
    );
    let tts = TtsActor::new(sup, espeak())
        .with_output(TtsOutput::default())
        .start();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!hub.wants(EventType::TtsAudio));
    assert!(hub.wants(EventType::TtsResult));
    say_hello(&tts).await;
    tts.do_send(FinishTurn {
        turn_id: "t1".into(),
    });
    let result = tts_result(&events).await;
    // Playback is off here: nothing went to a device.
    assert_eq!(result["played"], false);
    let produced = hub
        .counters()
        .snapshot(0)
        .events
        .iter()
        .find(|(t, _)| *t == EventType::TtsAudio)
        .map(|(_, n)| *n)
        .unwrap_or(0);
    assert_eq!(produced, 0, "tts_audio produced with no one asking");
}

/// A remote engine's sentence plays as it streams in: the first audio is out (and on the
/// device) long before the slow server has sent the rest, and the whole plays.
#[actix_rt::test]
async fn remote_speech_plays_as_it_streams_in() {
    use coda_actors::llm::scripted::{Reply, ScriptedServer, Step};
    use coda_actors::tts::remote::{OpenAiSpeechConfig, OpenAiSpeechEngine};
    null_home();
    // 0.8 s of audio in four pieces, 400 ms apart: the whole takes 1.6 s to arrive.
    let body: Vec<u8> = (0..19_200i32)
        .flat_map(|i| (((i * 37) % 20_000 - 10_000) as i16).to_le_bytes())
        .collect();
    let server = ScriptedServer::start(move |_| {
        let steps = body
            .chunks(body.len() / 4 + 1)
            .flat_map(|c| {
                [
                    Step::Write(c.to_vec()),
                    Step::Sleep(Duration::from_millis(400)),
                ]
            })
            .collect();
        Reply::stream("application/octet-stream", steps)
    })
    .await
    .unwrap();
    let engine = Arc::new(
        OpenAiSpeechEngine::new(OpenAiSpeechConfig {
            base_url: format!("{}/v1", server.url()),
            api_key: None,
            model: "tts-1".into(),
            voice: "alloy".into(),
            response_format: "pcm".into(),
            timeout: Duration::from_secs(10),
            http: Default::default(),
        })
        .unwrap(),
    );
    let (hub, events) = hub_with_events(TypeMask::ALL);
    let (tts, updates, rec) = speaking_on_null(hub, engine).await;
    let t0 = Instant::now();
    tts.send(Speak {
        turn_id: "t1".into(),
        session_id: "s1".into(),
        index: 0,
        text: "One slow sentence.".into(),
        progress: Default::default(),
        reply_to: rec,
    })
    .await
    .unwrap()
    .unwrap();
    tts.do_send(FinishTurn {
        turn_id: "t1".into(),
    });
    let first_audio = wait_until("the first audio", || {
        updates
            .lock()
            .unwrap()
            .iter()
            .any(|u| matches!(u, TtsUpdate::Spoken { .. }))
            .then(|| t0.elapsed())
    })
    .await;
    let result = tts_result(&events).await;
    let whole = t0.elapsed();
    println!("first audio after {first_audio:?}, the whole sentence after {whole:?}");
    assert!(
        first_audio < Duration::from_millis(500),
        "first audio after {first_audio:?}"
    );
    assert!(whole >= Duration::from_millis(1_500), "{whole:?}");
    assert_eq!(result["played"], true, "{result}");
    assert!(
        (result["audio_ms"].as_f64().unwrap() - 800.0).abs() < 1.0,
        "{result}"
    );
    let evs = events.lock().unwrap().clone();
    let pieces = evs
        .iter()
        .filter(|e| e.event_type == "tts_audio" && e.data["last"] == false)
        .count();
    assert!(pieces >= 4, "{pieces} tts_audio pieces");
    assert_eq!(
        evs.iter()
            .filter(|e| e.event_type == "tts_progress")
            .count(),
        1,
        "one sentence"
    );
}

/// What was heard over `turn` was not speech: its playback goes on.
fn go_on(tts: &Addr<TtsActor>, turn: &str) {
    tts.do_send(HoldTurn {
        turn_id: turn.into(),
        hold: Hold::Resume {
            reason: "no_speech",
            heard: None,
        },
    });
}

/// Speaks every sentence as `secs` of a tone (long enough to be caught playing).
#[derive(Debug)]
struct ToneEngine {
    secs: f32,
}

#[async_trait::async_trait]
impl coda_actors::tts::TtsEngine for ToneEngine {
    fn name(&self) -> &str {
        "tone"
    }
    fn voice(&self) -> &str {
        "a"
    }
    async fn check(&self) -> Result<(), coda_actors::tts::TtsEngineError> {
        Ok(())
    }
    async fn synthesize(
        &self,
        _: &str,
    ) -> Result<coda_actors::tts::Audio, coda_actors::tts::TtsEngineError> {
        Ok(coda_actors::tts::Audio {
            samples: tone(self.secs, 22_050)
                .into_iter()
                .map(|v| (v * 32_767.0) as i16)
                .collect(),
            sample_rate: 22_050,
        })
    }
}

/// A held turn's playback pauses where it is (`tts_paused`) and goes on from there
/// (`tts_resumed`), to the end: played whole. A held turn that is cancelled leaves the
/// speaker free for the next one.
#[actix_rt::test]
async fn a_held_turn_pauses_and_goes_on_and_a_cancelled_one_frees_the_speaker() {
    null_home();
    let (hub, events) = hub_with_events(TypeMask::DEFAULT);
    let (tts, updates, rec) = speaking_on_null(hub, Arc::new(ToneEngine { secs: 20.0 })).await;
    let speak = |turn: &str, progress: Arc<SentenceProgress>| Speak {
        turn_id: turn.into(),
        session_id: "s1".into(),
        index: 0,
        text: "A long sentence.".into(),
        progress,
        reply_to: rec.clone(),
    };
    let progress = Arc::new(SentenceProgress::default());
    tts.send(speak("t1", progress.clone()))
        .await
        .unwrap()
        .unwrap();
    tts.do_send(FinishTurn {
        turn_id: "t1".into(),
    });
    let heard = || progress.heard().unwrap_or(0.0);
    wait_until("the sentence to play", || (heard() > 0.0).then_some(())).await;
    tts.do_send(HoldTurn {
        turn_id: "t1".into(),
        hold: Hold::Pause,
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let at_pause = heard();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(heard(), at_pause, "played while held");
    assert!(at_pause < 1.0);
    go_on(&tts, "t1");
    let result = tts_result(&events).await;
    assert_eq!(result["played"], true, "{result}");
    assert_eq!(progress.heard(), Some(1.0));
    let types: Vec<String> = events
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.event_type.clone())
        .filter(|t| t.starts_with("tts_"))
        .collect();
    assert_eq!(
        types,
        [
            "tts_start",
            "tts_progress",
            "tts_paused",
            "tts_resumed",
            "tts_result"
        ],
    );
    let resumed = events
        .lock()
        .unwrap()
        .iter()
        .find(|e| e.event_type == "tts_resumed")
        .map(|e| e.data.clone())
        .unwrap();
    assert!(resumed["paused_ms"].as_f64().unwrap() >= 300.0, "{resumed}");
    assert_eq!(resumed["reason"], "no_speech", "{resumed}");

    // Held, then cancelled (the transcript interrupts it): the next turn plays.
    events.lock().unwrap().clear();
    tts.send(speak("t2", Default::default()))
        .await
        .unwrap()
        .unwrap();
    tts.do_send(HoldTurn {
        turn_id: "t2".into(),
        hold: Hold::Pause,
    });
    tts.do_send(CancelTurn {
        turn_id: "t2".into(),
    });
    let t3 = Arc::new(SentenceProgress::default());
    tts.send(speak("t3", t3.clone())).await.unwrap().unwrap();
    wait_until("the next turn to play", || {
        (t3.heard().unwrap_or(0.0) > 0.0).then_some(())
    })
    .await;
    assert!(updates
        .lock()
        .unwrap()
        .iter()
        .all(|u| !matches!(u, TtsUpdate::Failed { .. })));
}

/// With no speaker (a client plays `tts_audio`, paused on `tts_paused`), a held turn whose
/// audio is all made does not end until it goes on: the client still has it to play.
#[actix_rt::test]
async fn a_held_turn_without_a_speaker_ends_only_once_it_goes_on() {
    let (hub, events) = hub_with_events(TypeMask::DEFAULT);
    let sup = Supervision::new("tts", Default::default(), hub, ComponentRegistry::new());
    let tts = TtsActor::new(sup, Arc::new(ToneEngine { secs: 0.5 }))
        .with_output(TtsOutput::default())
        .start();
    say_hello(&tts).await;
    tts.do_send(HoldTurn {
        turn_id: "t1".into(),
        hold: Hold::Pause,
    });
    tts.do_send(FinishTurn {
        turn_id: "t1".into(),
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ended = |events: &Arc<Mutex<Vec<RawEnvelope>>>| {
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.event_type == "tts_result")
    };
    assert!(!ended(&events), "ended while held");
    go_on(&tts, "t1");
    let result = tts_result(&events).await;
    assert_eq!(result["played"], false, "{result}");
}
