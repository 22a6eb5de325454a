//! Barge-in by voice on the shipped defaults (embedded model, whisper tiny.en, espeak-ng):
//! client audio streamed in real time over a real WebSocket in continuous mode, a second
//! question spoken while the first answer is being spoken. Nothing is scripted.
//!
//! A client session's answer is "being spoken" while its speech is produced (the client
//! plays it; ALSA's null device, the only output here, takes samples far faster than real
//! time, so the server's own speaker cannot hold an answer open for a test either): the
//! request asks for a story, which the model tells up to `conversation.max_tokens` (raised
//! for it: up to ~11 s of generation here), and the question starts as soon as the first words
//! are spoken.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const STORY: &str = "Tell me a long story about a dragon and a knight.";
const QUESTION: &str = "What is the tallest mountain in the world?";

#[tokio::test]
async fn speech_over_the_answer_stops_it_and_becomes_the_next_turn() {
    let store = store();
    let server = Server::start(
        &[],
        &[
            ("CODA__MODELS__DIR", store.to_str().expect("utf-8")),
            // A story long enough to still be told when the question comes.
            ("CODA__CONVERSATION__MAX_TOKENS", "512"),
        ],
    );
    let mut c = server.client().await;
    listen(&mut c, "continuous", "client").await;

    // A short story can be told before the question is heard: then the question is a
    // turn of its own, and the test asks again.
    for attempt in 1..=3 {
        stream(&mut c, &pcm_of(&[(STORY, 1_000)])).await;
        let first = c
            .wait_for("the request heard", Duration::from_secs(60), |v| {
                ty(v) == "stt_result"
            })
            .await;
        let story_turn = first["data"]["turn_id"].clone();
        c.wait_for("its answer spoken", Duration::from_secs(60), |v| {
            ty(v) == "mode_change" && v["data"]["mode"] == json!("speaking")
        })
        .await;

        // The question over it, from its first sound.
        let (question, _wav) = speech(QUESTION, 1_500);
        stream(&mut c, &question).await;
        let v: Value = c
            .wait_for(
                "the answer interrupted or ended",
                Duration::from_secs(60),
                |v| {
                    (ty(v) == "latency_trace" && v["data"]["turn_id"] == story_turn)
                        || (ty(v) == "conversation_message"
                            && v["data"]["interrupted"] == json!(true))
                },
            )
            .await;
        if ty(&v) == "latency_trace" {
            eprintln!("attempt {attempt}: the story was told before the question was heard");
            let (_, events) = voice_turn(&mut c, Duration::from_secs(90)).await;
            check_turn(&events, QUESTION);
            continue;
        }
        // The answer stopped: the assistant message keeps what was spoken.
        assert_eq!(v["data"]["turn_id"], story_turn, "{v}");
        assert_eq!(v["data"]["role"], json!("assistant"), "{v}");
        let said = v["data"]["content"].as_str().unwrap_or_default();
        assert!(!said.trim().is_empty(), "nothing spoken before it: {v}");

        // The question becomes the next turn, answered and spoken.
        let (turn, events) = voice_turn(&mut c, Duration::from_secs(90)).await;
        assert_ne!(json!(turn), story_turn);
        check_turn(&events, QUESTION);
        return;
    }
    panic!("three stories were told before the question over them was heard");
}
