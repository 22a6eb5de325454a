//! The spoken turn on the shipped defaults, through the real binary: no provider override
//! (the embedded SmolLM2 model, whisper tiny.en, espeak-ng), only the model store pointed
//! at the one scripts/setup fills. A spoken question streamed as client audio becomes
//! `stt_result` → `llm_result` → `tts_result` of one turn, in push-to-talk and hands-free
//! (continuous) listening, and through the server's own input device (a `file:` input:
//! a WAV played in real time as a microphone would, the stand-in on machines without a
//! sound card). Whisper's failures depended on the process start (heap layout), so the
//! push-to-talk turn runs in several fresh server starts.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use coda::wer::{normalise, word_errors};
use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const QUESTION: &str = "What is the tallest mountain in the world?";
const FRESH_STARTS: usize = 5;

/// The model store scripts/setup fills (both models must be there).
fn store() -> PathBuf {
    let dir = std::env::var_os("CODA_TEST_MODEL")
        .filter(|p| !p.is_empty())
        .and_then(|p| PathBuf::from(p).parent().map(Path::to_path_buf))
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/coda/models"))
        })
        .expect("HOME");
    for m in ["smollm2.gguf", "whisper-tiny.en.bin", "index.json"] {
        assert!(
            dir.join(m).is_file(),
            "{} is missing: scripts/setup installs the default models",
            dir.join(m).display()
        );
    }
    dir
}

/// espeak-ng's 16 kHz s16le PCM of `text`, with `pad_ms` of silence after it.
fn speech(text: &str, pad_ms: usize) -> (Vec<u8>, tempfile::TempPath) {
    let wav = tempfile::Builder::new()
        .suffix(".wav")
        .tempfile()
        .expect("tempfile")
        .into_temp_path();
    let status = Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "160", "-w"])
        .arg(&wav)
        .arg(text)
        .status()
        .expect("espeak-ng runs (scripts/setup installs it)");
    assert!(status.success());
    let samples = coda_actors::audio::convert::read_wav_16k(&wav).expect("a WAV");
    let mut pcm: Vec<u8> = samples
        .iter()
        .flat_map(|s| ((s.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes())
        .collect();
    pcm.extend(std::iter::repeat_n(0u8, pad_ms * 32));
    (pcm, wav)
}

/// Streams `pcm` in 20 ms frames at real-time pace.
async fn stream(c: &mut Client, pcm: &[u8]) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for frame in pcm.chunks(640) {
        tick.tick().await;
        c.ws.send(Message::Binary(frame.to_vec().into()))
            .await
            .expect("send audio");
    }
}

/// Events of the next voice turn (the first `stt_result` from now on) until its
/// `latency_trace`: the turn id and its events, `stt_start` included.
async fn voice_turn(c: &mut Client, limit: Duration) -> (String, Vec<Value>) {
    let deadline = Instant::now() + limit;
    let mut turn: Option<String> = None;
    let mut all = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let types: Vec<&str> = all.iter().map(ty).collect();
        assert!(
            !left.is_zero(),
            "no whole voice turn within {limit:?}: {types:?}"
        );
        let v = c.recv_json(left).await;
        let t = ty(&v).to_string();
        if t == "stt_error" || t == "llm_error" {
            panic!("the default voice path failed: {v}");
        }
        if turn.is_none() && t == "stt_result" {
            turn = v["data"]["turn_id"].as_str().map(str::to_string);
        }
        let done = t == "latency_trace"
            && turn
                .as_ref()
                .is_some_and(|id| v["data"]["turn_id"] == json!(id));
        all.push(v);
        if done {
            let id = turn.unwrap_or_default();
            let events = all
                .into_iter()
                .filter(|v| v["data"]["turn_id"] == json!(id))
                .collect();
            return (id, events);
        }
    }
}

/// The turn heard the question, answered it and spoke, in that order.
fn check_turn(events: &[Value]) -> Value {
    let types: Vec<&str> = events.iter().map(ty).collect();
    let pos = |t: &str| {
        types
            .iter()
            .position(|x| *x == t)
            .unwrap_or_else(|| panic!("no {t} in {types:?}"))
    };
    assert!(pos("stt_result") < pos("llm_result"), "{types:?}");
    assert!(pos("llm_result") < pos("tts_result"), "{types:?}");
    assert!(pos("tts_result") < pos("latency_trace"), "{types:?}");
    let heard = events[pos("stt_result")]["data"]["text"]
        .as_str()
        .unwrap_or("");
    let errors = word_errors(&normalise(QUESTION), &normalise(heard));
    assert!(errors <= 1, "heard {heard:?} for {QUESTION:?}");
    let answer = events[pos("llm_result")]["data"]["text"]
        .as_str()
        .unwrap_or("");
    assert!(!answer.trim().is_empty(), "empty answer: {types:?}");
    events[pos("latency_trace")]["data"].clone()
}

fn server(store: &Path, extra: &[(&str, &str)]) -> Server {
    let dir = store.to_str().expect("utf-8 path");
    let mut env = vec![("CODA__MODELS__DIR", dir)];
    env.extend_from_slice(extra);
    Server::start(&[], &env)
}

#[tokio::test]
async fn push_to_talk_on_the_defaults_in_fresh_starts() {
    let store = store();
    let (pcm, _wav) = speech(QUESTION, 200);
    for start in 0..FRESH_STARTS {
        let server = server(&store, &[]);
        let mut c = server.client().await;
        let r = c
            .request(
                "stt_start",
                json!({"mode": "push_to_talk", "source": "client"}),
            )
            .await;
        assert_eq!(ty(&r), "command_result", "{r}");
        stream(&mut c, &pcm).await;
        let r = c.request("stt_stop", json!({})).await;
        assert_eq!(ty(&r), "command_result", "{r}");
        let (_, events) = voice_turn(&mut c, Duration::from_secs(90)).await;
        let trace = check_turn(&events);
        println!(
            "start {start}: stt {:.0} ms, end of speech → first audio {:.0} ms",
            trace["stt_ms"].as_f64().unwrap_or(0.0),
            trace["tts_first_audio_ms"].as_f64().unwrap_or(0.0)
        );
        let log = server.stderr_text();
        assert!(
            !log.contains("failed to encode"),
            "whisper.cpp failed in start {start}:\n{log}"
        );
    }
}

#[tokio::test]
async fn hands_free_client_audio_on_the_defaults() {
    let store = store();
    let server = server(&store, &[]);
    let mut c = server.client().await;
    let r = c
        .request(
            "stt_start",
            json!({"mode": "continuous", "source": "client"}),
        )
        .await;
    assert_eq!(ty(&r), "command_result", "{r}");
    // Silence first (the detector learns the floor), the question, then silence: the
    // detector ends the utterance by itself; no stt_stop.
    let (speech, _wav) = speech(QUESTION, 1_500);
    let mut pcm = vec![0u8; 500 * 32];
    pcm.extend(speech);
    stream(&mut c, &pcm).await;
    let (first, events) = voice_turn(&mut c, Duration::from_secs(90)).await;
    check_turn(&events);
    // Still listening: a second utterance is a second turn.
    stream(&mut c, &pcm).await;
    let (second, events) = voice_turn(&mut c, Duration::from_secs(90)).await;
    check_turn(&events);
    assert_ne!(first, second);
    let r = c.request("stt_stop", json!({})).await;
    assert_eq!(ty(&r), "command_result", "{r}");
}

#[tokio::test]
async fn the_device_path_on_the_defaults_with_a_file_input() {
    let store = store();
    // The "microphone": 0.5 s of silence, the question, silence until stopped.
    let wav = tempfile::Builder::new()
        .suffix(".wav")
        .tempfile()
        .expect("tempfile")
        .into_temp_path();
    let (speech, _spoken) = speech(QUESTION, 0);
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&wav, spec).expect("wav");
    for _ in 0..8_000 {
        w.write_sample(0i16).expect("write");
    }
    for s in speech.chunks_exact(2) {
        w.write_sample(i16::from_le_bytes([s[0], s[1]]))
            .expect("write");
    }
    w.finalize().expect("finalize");
    let input = format!("file:{}", wav.display());
    let server = server(&store, &[("CODA__AUDIO__INPUT_DEVICE", input.as_str())]);
    let mut c = server.client().await;
    let r = c
        .request(
            "stt_start",
            json!({"mode": "continuous", "source": "device"}),
        )
        .await;
    assert_eq!(ty(&r), "command_result", "{r}");
    let (_, events) = voice_turn(&mut c, Duration::from_secs(90)).await;
    let start = events
        .iter()
        .find(|v| ty(v) == "stt_start")
        .unwrap_or_else(|| panic!("no stt_start in {events:?}"));
    assert_eq!(start["data"]["source"], json!("device"), "{start}");
    assert_eq!(start["data"]["mode"], json!("continuous"), "{start}");
    check_turn(&events);
    let r = c.request("stt_stop", json!({})).await;
    assert_eq!(ty(&r), "command_result", "{r}");
}
