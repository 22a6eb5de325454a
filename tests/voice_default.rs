//! The spoken turn on the shipped defaults, through the real binary: no provider override
//! (the embedded SmolLM2 model, whisper tiny.en, espeak-ng), only the model store pointed
//! at the one scripts/setup fills. A spoken question streamed as client audio becomes
//! `stt_result` → `llm_result` → `tts_result` of one turn, in push-to-talk and hands-free
//! (continuous) listening, and through the server's own input device (a `file:` input:
//! a WAV played in real time as a microphone would, the stand-in on machines without a
//! sound card). Whisper's failures depended on the process start (heap layout), so the
//! push-to-talk turn runs in several fresh server starts.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::json;

const QUESTION: &str = "What is the tallest mountain in the world?";
const FRESH_STARTS: usize = 5;

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
        listen(&mut c, "push_to_talk", "client").await;
        stream(&mut c, &pcm).await;
        let r = c.request("stt_stop", json!({})).await;
        assert_eq!(ty(&r), "command_result", "{r}");
        let (_, events) = voice_turn(&mut c, Duration::from_secs(90)).await;
        let trace = check_turn(&events, QUESTION);
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
    listen(&mut c, "continuous", "client").await;
    // Silence first (the detector learns the floor), the question, then silence: the
    // detector ends the utterance by itself; no stt_stop.
    let (speech, _wav) = speech(QUESTION, 1_500);
    let mut pcm = vec![0u8; 500 * 32];
    pcm.extend(speech);
    stream(&mut c, &pcm).await;
    let (first, events) = voice_turn(&mut c, Duration::from_secs(90)).await;
    check_turn(&events, QUESTION);
    // Still listening: a second utterance is a second turn.
    stream(&mut c, &pcm).await;
    let (second, events) = voice_turn(&mut c, Duration::from_secs(90)).await;
    check_turn(&events, QUESTION);
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
    let mut pcm = vec![0u8; 16_000];
    pcm.extend(speech);
    write_pcm_wav(&wav, &pcm);
    let input = format!("file:{}", wav.display());
    let server = server(&store, &[("CODA__AUDIO__INPUT_DEVICE", input.as_str())]);
    let mut c = server.client().await;
    listen(&mut c, "continuous", "device").await;
    let (_, events) = voice_turn(&mut c, Duration::from_secs(90)).await;
    let start = events
        .iter()
        .find(|v| ty(v) == "stt_start")
        .unwrap_or_else(|| panic!("no stt_start in {events:?}"));
    assert_eq!(start["data"]["source"], json!("device"), "{start}");
    assert_eq!(start["data"]["mode"], json!("continuous"), "{start}");
    check_turn(&events, QUESTION);
    let r = c.request("stt_stop", json!({})).await;
    assert_eq!(ty(&r), "command_result", "{r}");
}
