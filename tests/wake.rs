//! Hands-free with the wake word on the shipped defaults (embedded model, whisper tiny.en,
//! espeak-ng): client audio streamed in real time over a real WebSocket, and the server's
//! own input device (`audio.listen = "wake"`, a `file:` input standing in for a
//! microphone). The "hey coda" reference is built by the server at start from espeak-ng
//! voices, into a file of the test's own.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const QUESTION: &str = "What is the tallest mountain in the world?";

fn server(home: &Path, extra: &[(&str, &str)]) -> Server {
    let store = store();
    let reference = home.join("hey-coda.json");
    let mut env = vec![
        (
            "CODA__MODELS__DIR",
            store.to_str().expect("utf-8").to_string(),
        ),
        (
            "CODA__WAKE__REFERENCE",
            reference.to_str().expect("utf-8").to_string(),
        ),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start(&[], &env)
}

/// `stt_start` in wake mode, retried while the reference is still being built.
async fn start_wake(c: &mut Client) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = c
            .request("stt_start", json!({"mode": "wake", "source": "client"}))
            .await;
        let loading = r["data"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("still loading"));
        if !loading || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// No `stt_start` or `wake_detected` arrives within `limit`.
async fn nothing_heard(c: &mut Client, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.next_json(left).await {
            Ok(v) if matches!(ty(&v), "stt_start" | "wake_detected") => {
                panic!("speech without the wake word was taken: {v}")
            }
            Ok(_) => continue,
            Err(End::Timeout) => return,
            Err(e) => panic!("connection ended: {e:?}"),
        }
    }
}

#[tokio::test]
async fn the_wake_word_a_question_and_a_follow_up_on_client_audio() {
    let home = tempfile::tempdir().expect("tempdir");
    let server = server(home.path(), &[]);
    let mut c = server.client().await;
    let r = start_wake(&mut c).await;
    assert_eq!(ty(&r), "command_result", "{r}");
    assert_eq!(r["data"]["data"]["mode"], json!("wake"), "{r}");
    assert!(
        home.path().join("hey-coda.json").is_file(),
        "reference built at start"
    );

    // Speech without the wake word is not a turn.
    stream(&mut c, &pcm_of(&[("The weather is nice today.", 1_200)])).await;
    nothing_heard(&mut c, Duration::from_secs(2)).await;

    // The wake word, a short pause, the question.
    stream(&mut c, &pcm_of(&[("Hey Coda.", 250), (QUESTION, 1_500)])).await;
    let wake = c.wait_type("wake_detected", Duration::from_secs(10)).await;
    assert_eq!(wake["data"]["word"], json!("hey coda"), "{wake}");
    assert_eq!(wake["data"]["source"], json!("client"), "{wake}");
    assert!(
        wake["data"]["score"].as_f64().unwrap_or(0.0) > 0.0,
        "{wake}"
    );
    // On the defaults whisper checked the word (wake.verify_threshold = -9.4).
    let verified = wake["data"]["verified"].as_f64();
    assert!(verified.is_some_and(|v| v >= -9.4), "{wake}");
    let (_, events) = voice_turn(&mut c, Duration::from_secs(90)).await;
    check_turn(&events, QUESTION);
    let start = events
        .iter()
        .find(|v| ty(v) == "stt_start")
        .expect("stt_start");
    assert_eq!(start["data"]["mode"], json!("wake"), "{start}");
    let heard = events
        .iter()
        .find(|v| ty(v) == "stt_result")
        .and_then(|v| v["data"]["text"].as_str())
        .unwrap_or_default()
        .to_lowercase();
    assert!(
        !heard.contains("coda"),
        "the wake word is not part of the turn: {heard:?}"
    );

    // After the answer: a follow-up needs no wake word.
    let m = c
        .wait_for("mode listening_follow_up", Duration::from_secs(10), |v| {
            ty(v) == "mode_change" && v["data"]["mode"] == json!("listening_follow_up")
        })
        .await;
    assert_eq!(m["data"]["previous"], json!("idle"), "{m}");
    stream(&mut c, &pcm_of(&[(QUESTION, 1_500)])).await;
    let (_, events) = voice_turn(&mut c, Duration::from_secs(90)).await;
    check_turn(&events, QUESTION);

    // The window closes after conversation.follow_up_s: speech needs the word again.
    c.wait_for("the second window", Duration::from_secs(10), |v| {
        ty(v) == "mode_change" && v["data"]["mode"] == json!("listening_follow_up")
    })
    .await;
    c.wait_for(
        "mode idle as the window closes",
        Duration::from_secs(15),
        |v| ty(v) == "mode_change" && v["data"]["mode"] == json!("idle"),
    )
    .await;
    stream(&mut c, &pcm_of(&[(QUESTION, 1_000)])).await;
    nothing_heard(&mut c, Duration::from_secs(3)).await;
    let r = c.request("stt_stop", json!({})).await;
    assert_eq!(ty(&r), "command_result", "{r}");
}

/// The word is reported when whisper's check of it answers, not with the client's next
/// frame: a client that stops sending just after the word still hears it.
#[tokio::test]
async fn the_wake_word_is_reported_when_its_check_answers_without_more_audio() {
    let home = tempfile::tempdir().expect("tempdir");
    let server = server(home.path(), &[]);
    let mut c = server.client().await;
    let r = start_wake(&mut c).await;
    assert_eq!(ty(&r), "command_result", "{r}");
    // The word and 200 ms after its last sound: the matcher reports ~120 ms after it,
    // whisper's check (a debug build here) answers after the last frame went.
    let (word, _wav) = speech("Hey Coda.", 0);
    let loud = word
        .chunks_exact(2)
        .rposition(|b| i16::from_le_bytes([b[0], b[1]]).unsigned_abs() > 300)
        .expect("espeak-ng said something");
    let end = ((loud + 1) * 2 + 200 * 32).min(word.len());
    let mut pcm = vec![0u8; 500 * 32];
    pcm.extend_from_slice(&word[..end]);
    pcm.extend(std::iter::repeat_n(0u8, (640 - pcm.len() % 640) % 640));
    stream(&mut c, &pcm).await;
    let wake = c.wait_type("wake_detected", Duration::from_secs(10)).await;
    assert_eq!(wake["data"]["word"], json!("hey coda"), "{wake}");
    assert!(wake["data"]["verified"].as_f64().is_some(), "{wake}");
    let r = c.request("stt_stop", json!({})).await;
    assert_eq!(ty(&r), "command_result", "{r}");
}

#[tokio::test]
async fn wake_mode_without_a_reference_is_refused_and_says_why() {
    let home = tempfile::tempdir().expect("tempdir");
    let server = server(home.path(), &[("CODA__WAKE__SYNTHESIZE_MISSING", "false")]);
    let mut c = server.client().await;
    let r = start_wake(&mut c).await;
    assert_eq!(ty(&r), "command_error", "{r}");
    assert_eq!(r["data"]["code"], json!("unavailable"), "{r}");
    let msg = r["data"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("no wake word reference at") && msg.contains("hey-coda.json"),
        "{msg}"
    );
    // Everything else works: push-to-talk on the same connection.
    listen(&mut c, "push_to_talk", "client").await;
    let info = server.system_info().await;
    let wake = info["components"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == json!("wake_word")))
        .cloned()
        .unwrap_or_default();
    assert_eq!(wake["state"], json!("degraded"), "{info}");
}

#[tokio::test]
async fn audio_listen_wake_on_the_device() {
    let home = tempfile::tempdir().expect("tempdir");
    // The "microphone": silence, the wake word and the question, silence.
    let wav = home.path().join("mic.wav");
    let pcm = pcm_of(&[("Hey Coda.", 250), (QUESTION, 0)]);
    write_pcm_wav(&wav, &pcm);
    let input = format!("file:{}", wav.display());
    let server = server(
        home.path(),
        &[
            ("CODA__AUDIO__INPUT_DEVICE", input.as_str()),
            ("CODA__AUDIO__LISTEN", "wake"),
            // The word matcher alone, as without a speech-to-text model.
            ("CODA__WAKE__VERIFY", "false"),
        ],
    );
    let mut c = server.client().await;
    let wake = c.wait_type("wake_detected", Duration::from_secs(60)).await;
    assert_eq!(wake["session_id"], json!("device"), "{wake}");
    assert_eq!(wake["data"]["source"], json!("device"), "{wake}");
    assert!(wake["data"].get("verified").is_none(), "{wake}");
    let (_, events) = voice_turn(&mut c, Duration::from_secs(90)).await;
    check_turn(&events, QUESTION);
    assert!(events.iter().all(|v| v["session_id"] == json!("device")));
}
