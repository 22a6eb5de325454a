//! `coda bench audio`: interrupt → playback stopped, end of speech → utterance ended.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::summary;
use crate::config::Settings;

/// `coda bench audio` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct AudioBenchArgs {
    /// Measured runs of each figure.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `coda bench audio`: interrupt → playback stopped on the output device, and end of
/// speech → `SpeechAudio::Ended` through AudioCapture's VAD (espeak-ng speech fed in real
/// time).
pub fn run(s: &Settings, args: AudioBenchArgs) -> anyhow::Result<()> {
    let mut report = serde_json::Map::new();
    match bench_interrupt(s, args.runs) {
        Ok(v) => {
            report.insert("interrupt".into(), v);
        }
        Err(e) => {
            report.insert(
                "interrupt".into(),
                serde_json::json!({"error": e.to_string()}),
            );
        }
    }
    report.insert(
        "end_of_speech".into(),
        bench_end_of_speech(s, args.runs.min(5))?,
    );
    let report = serde_json::Value::Object(report);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let ms = |v: &serde_json::Value| {
            format!(
                "p50 {:.2} ms  p95 {:.2} ms  max {:.2} ms  (n={})",
                v["p50_ms"].as_f64().unwrap_or(0.0),
                v["p95_ms"].as_f64().unwrap_or(0.0),
                v["max_ms"].as_f64().unwrap_or(0.0),
                v["n"].as_u64().unwrap_or(0)
            )
        };
        let i = &report["interrupt"];
        match i["error"].as_str() {
            Some(e) => println!("interrupt: not measured ({e})"),
            None => {
                println!(
                    "interrupt on output `{}`:",
                    i["device"].as_str().unwrap_or("?")
                );
                println!(
                    "  stop acknowledged          {}",
                    ms(&i["stop_acknowledged"])
                );
                println!(
                    "  last sample pulled after   {}",
                    ms(&i["last_sample_pulled_after_interrupt"])
                );
            }
        }
        let e = &report["end_of_speech"];
        println!(
            "end of speech -> Ended (audio.silence_ms = {}): {}",
            e["silence_ms"],
            ms(&e["speech_end_to_ended"])
        );
    }
    Ok(())
}

#[cfg(feature = "audio")]
fn bench_interrupt(s: &Settings, runs: usize) -> anyhow::Result<serde_json::Value> {
    let speaker = coda_actors::audio::Speaker::open(&s.audio.output_device, None)
        .map_err(|e| anyhow::anyhow!("no output device: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut ack, mut silent) = (Vec::new(), Vec::new());
    rt.block_on(async {
        for _ in 0..runs {
            // A minute of tone: far longer than any run, so only the stop can end it.
            let tone: Vec<f32> = (0..22_050 * 60)
                .map(|i| 0.2 * (2.0 * std::f32::consts::PI * 220.0 * i as f32 / 22_050.0).sin())
                .collect();
            let sp = speaker.clone();
            let playing = tokio::spawn(async move { sp.play(tone, 22_050).await });
            // Until the device pulls our samples.
            let deadline = Instant::now() + Duration::from_secs(3);
            let start = speaker.last_pull();
            while speaker.last_pull() == start && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            let t = Instant::now();
            let took = speaker.stop().await;
            ack.push(took.as_secs_f64() * 1000.0);
            // The last pull of our samples after the stop, once pulls have ceased.
            let mut last = speaker.last_pull();
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let now = speaker.last_pull();
                if now == last {
                    break;
                }
                last = now;
            }
            let after = last
                .map(|l| l.saturating_duration_since(t).as_secs_f64() * 1000.0)
                .unwrap_or(0.0);
            silent.push(after);
            let _ = playing.await;
        }
    });
    Ok(serde_json::json!({
        "device": speaker.device(),
        "stop_acknowledged": summary(ack),
        "last_sample_pulled_after_interrupt": summary(silent),
    }))
}

#[cfg(not(feature = "audio"))]
fn bench_interrupt(_: &Settings, _: usize) -> anyhow::Result<serde_json::Value> {
    anyhow::bail!(coda_actors::audio::NO_AUDIO_BUILD)
}

fn bench_end_of_speech(s: &Settings, runs: usize) -> anyhow::Result<serde_json::Value> {
    use actix::Actor as _;
    use coda_actors::audio::{AudioCapture, FeedAudio, StartFeed, StopCapture};
    use coda_actors::voice::SpeechAudio;
    let out = std::process::Command::new(&s.tts.binary)
        .args([
            "--stdout",
            "-v",
            &s.tts.voice,
            "Turn on the kitchen lights please.",
        ])
        .output()
        .context("espeak-ng is needed for this benchmark")?;
    let audio = coda_actors::tts::espeak::parse_wav(&out.stdout)
        .map_err(|e| anyhow::anyhow!("espeak-ng: {e}"))?;
    let speech =
        coda_actors::audio::convert::to_speech_rate_i16(&audio.samples, audio.sample_rate, 1)?;
    // The last sample louder than -40 dBFS ends the speech.
    let end = speech
        .iter()
        .rposition(|x| x.abs() > 0.01)
        .unwrap_or(speech.len());
    let speech = speech[..end].to_vec();
    let settings = s.audio_settings();
    let system = actix_rt::System::new();
    let lat = system.block_on(async move {
        let hub = coda_actors::hub::EventHub::start_hub(coda_actors::hub::HubSettings::default());
        let components = coda_actors::components::ComponentRegistry::new();
        let sup = coda_actors::supervise::Supervision::new(
            "audio",
            Default::default(),
            hub.clone(),
            components.clone(),
        );
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(SpeechAudio, Instant)>();
        let sink = Collector(tx).start();
        let capture = AudioCapture::new(sup, components, settings, Some(sink.recipient())).start();
        let mut lat = Vec::new();
        for run in 0..runs {
            let session = format!("bench-{run}");
            let _ = capture
                .send(StartFeed {
                    session_id: session.clone(),
                    mode: coda_protocol::SttMode::Continuous,
                })
                .await;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let silence = vec![0.0f32; 320];
            for _ in 0..25 {
                tick.tick().await;
                capture.do_send(FeedAudio {
                    samples: silence.clone(),
                });
            }
            for c in speech.chunks(320) {
                tick.tick().await;
                capture.do_send(FeedAudio {
                    samples: c.to_vec(),
                });
            }
            let spoken_end = Instant::now();
            let mut ended = None;
            for _ in 0..150 {
                tick.tick().await;
                capture.do_send(FeedAudio {
                    samples: silence.clone(),
                });
                while let Ok((m, at)) = rx.try_recv() {
                    if matches!(m, SpeechAudio::Ended { .. }) {
                        ended = Some(at);
                    }
                }
                if ended.is_some() {
                    break;
                }
            }
            let _ = capture
                .send(StopCapture {
                    session_id: session,
                })
                .await;
            if let Some(at) = ended {
                lat.push(at.duration_since(spoken_end).as_secs_f64() * 1000.0);
            }
        }
        lat
    });
    Ok(serde_json::json!({
        "silence_ms": s.audio.silence_ms,
        "speech_end_to_ended": summary(lat),
    }))
}

struct Collector(tokio::sync::mpsc::UnboundedSender<(coda_actors::voice::SpeechAudio, Instant)>);

impl actix::Actor for Collector {
    type Context = actix::Context<Self>;
}

impl actix::Handler<coda_actors::voice::SpeechAudio> for Collector {
    type Result = ();

    fn handle(&mut self, msg: coda_actors::voice::SpeechAudio, _: &mut actix::Context<Self>) {
        let _ = self.0.send((msg, Instant::now()));
    }
}
