//! Barge-in by voice on the shipped defaults (embedded model, whisper tiny.en, espeak-ng):
//! client audio streamed in real time over a real WebSocket in continuous mode, a sound
//! made while the first answer is being spoken. Nothing is scripted.
//!
//! A client session's answer is "being spoken" while its speech is produced (the client
//! plays it; ALSA's null device, the only output here, takes samples far faster than real
//! time, so the server's own speaker cannot hold an answer open for a test either): the
//! request asks for a story, which the model tells up to `conversation.max_tokens` (raised
//! for it: up to ~11 s of generation here), and the sound starts as soon as the first words
//! are spoken. Speech over the answer pauses it (`tts_paused`); a question then interrupts
//! it and becomes the next turn, a noise lets it go on (`tts_resumed`).

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const STORY: &str = "Tell me a long story about a dragon and a knight.";
const QUESTION: &str = "What is the tallest mountain in the world?";

/// A server on the shipped defaults, listening to the client's audio in continuous mode.
async fn listening_server() -> (Server, Client, tempfile::TempDir) {
    let store = store();
    let home = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        &[],
        &[
            ("CODA__MODELS__DIR", store.to_str().expect("utf-8")),
            // A story long enough to still be told when the sound comes.
            ("CODA__CONVERSATION__MAX_TOKENS", "512"),
        ],
    );
    let mut c = server.client().await;
    listen(&mut c, "continuous", "client").await;
    (server, c, home)
}

/// Asks for the story and waits until it is being spoken: its turn id.
async fn story_being_told(c: &mut Client) -> Value {
    stream(c, &pcm_of(&[(STORY, 1_000)])).await;
    // Words: an earlier attempt's noise may still come back as an empty transcript.
    let heard = c
        .wait_for("the request heard", Duration::from_secs(60), |v| {
            ty(v) == "stt_result"
                && v["data"]["text"]
                    .as_str()
                    .is_some_and(|t| !t.trim().is_empty())
        })
        .await;
    c.wait_for("its answer spoken", Duration::from_secs(60), |v| {
        ty(v) == "mode_change" && v["data"]["mode"] == json!("speaking")
    })
    .await;
    heard["data"]["turn_id"].clone()
}

/// The story's `tts_paused`, or its `latency_trace` when it was told before the sound
/// over it was heard (then `None`: a short story, the attempt does not count).
async fn paused(c: &mut Client, story: &Value) -> Option<Value> {
    let v = c
        .wait_for("the answer paused or ended", Duration::from_secs(60), |v| {
            (ty(v) == "tts_paused" || ty(v) == "latency_trace") && v["data"]["turn_id"] == *story
        })
        .await;
    (ty(&v) == "tts_paused").then_some(v)
}

#[tokio::test]
async fn speech_over_the_answer_stops_it_and_becomes_the_next_turn() {
    // A short story can be told before the question is heard: then the question is a
    // turn of its own, and the test asks again, of a fresh server (a conversation that
    // began with a short story tends to go on with short ones).
    for attempt in 1..=3 {
        let (_server, mut c, _home) = listening_server().await;
        let story = story_being_told(&mut c).await;
        // The question over it, from its first sound.
        let (question, _wav) = speech(QUESTION, 1_500);
        stream(&mut c, &question).await;
        if paused(&mut c, &story).await.is_none() {
            eprintln!("attempt {attempt}: the story was told before the question was heard");
            let (_, events) = voice_turn(&mut c, Duration::from_secs(90)).await;
            check_turn(&events, QUESTION);
            continue;
        }
        // Its transcript stops the answer (the assistant message keeps what was spoken)
        // and becomes the next turn, answered and spoken.
        let mut all = Vec::new();
        let mut question: Option<Value> = None;
        while question.is_none() {
            let v = c.recv_json(Duration::from_secs(90)).await;
            assert_ne!(
                ty(&v),
                "tts_resumed",
                "the question let the story go on: {v}"
            );
            if ty(&v) == "stt_result" {
                question = Some(v["data"]["turn_id"].clone());
            }
            all.push(v);
        }
        let question = question.unwrap_or_default();
        assert_ne!(question, story);
        loop {
            let v = c.recv_json(Duration::from_secs(90)).await;
            let done = ty(&v) == "latency_trace" && v["data"]["turn_id"] == question;
            all.push(v);
            if done {
                break;
            }
        }
        let cut = all
            .iter()
            .find(|v| ty(v) == "conversation_message" && v["data"]["turn_id"] == story)
            .unwrap_or_else(|| panic!("the story's message never came"));
        assert_eq!(cut["data"]["interrupted"], json!(true), "{cut}");
        assert_eq!(cut["data"]["role"], json!("assistant"), "{cut}");
        let said = cut["data"]["content"].as_str().unwrap_or_default();
        assert!(!said.trim().is_empty(), "nothing spoken before it: {cut}");
        let events: Vec<Value> = all
            .into_iter()
            .filter(|v| v["data"]["turn_id"] == question)
            .collect();
        let trace = check_turn(&events, QUESTION);
        eprintln!(
            "the question's turn: stt {} ms, first audio {} ms after its end",
            trace["stt_ms"], trace["tts_first_audio_ms"]
        );
        return;
    }
    panic!("three stories were told before the question over them was heard");
}

/// A noise over the answer (no words in it) pauses it; whisper finds no speech, and the
/// answer goes on to its end, whole.
#[tokio::test]
async fn a_noise_over_the_answer_pauses_it_and_it_goes_on() {
    let home = tempfile::tempdir().expect("tempdir");
    // 0.4 s of pink noise (a door, a cough: loud, no words), then a second of silence.
    let wav = home.path().join("noise.wav");
    let status = std::process::Command::new("sox")
        .args(["-n", "-r", "16000", "-b", "16", "-c", "1"])
        .arg(&wav)
        .args(["synth", "0.4", "pinknoise", "vol", "0.3", "pad", "0", "1.0"])
        .status()
        .expect("sox runs (scripts/setup installs it)");
    assert!(status.success());
    let noise: Vec<u8> = coda_actors::audio::convert::read_wav_16k(&wav)
        .expect("a WAV")
        .iter()
        .flat_map(|s| ((s.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes())
        .collect();
    for attempt in 1..=3 {
        let (_server, mut c, _home) = listening_server().await;
        let story = story_being_told(&mut c).await;
        stream(&mut c, &noise).await;
        let Some(_) = paused(&mut c, &story).await else {
            eprintln!("attempt {attempt}: the story was told before the noise was heard");
            continue;
        };
        // Mode speaking again (the orchestrator's), then the speech goes on (the Tts's).
        let mut speaking = false;
        let v = c
            .wait_for("the answer going on", Duration::from_secs(60), |v| {
                speaking |= ty(v) == "mode_change" && v["data"]["mode"] == json!("speaking");
                ty(v) == "tts_resumed"
                    || (ty(v) == "conversation_message" && v["data"]["turn_id"] == story)
            })
            .await;
        assert_eq!(ty(&v), "tts_resumed", "{v}");
        assert_eq!(v["data"]["turn_id"], story, "{v}");
        assert_eq!(v["data"]["reason"], json!("no_speech"), "{v}");
        assert!(speaking, "no mode_change to speaking before {v}");
        let paused_ms = v["data"]["paused_ms"].as_f64().unwrap_or_default();
        assert!(paused_ms > 400.0, "{v}");
        // Told to its end: the assistant message is whole, the speech done.
        let told = c
            .wait_for("the story's message", Duration::from_secs(90), |v| {
                ty(v) == "conversation_message"
                    && v["data"]["turn_id"] == story
                    && v["data"]["role"] == json!("assistant")
            })
            .await;
        assert!(told["data"].get("interrupted").is_none(), "{told}");
        c.wait_for("the story's end", Duration::from_secs(30), |v| {
            ty(v) == "latency_trace" && v["data"]["turn_id"] == story
        })
        .await;
        return;
    }
    panic!("three stories were told before the noise over them was heard");
}
