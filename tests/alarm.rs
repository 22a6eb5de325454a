//! A timer set by a client rings in that client's session: the real server (espeak-ng, no
//! sound card), a real WebSocket client that set it by voice command text, the `alarm`
//! event and the ring's speech as `tts_audio`; `interrupt` silences it.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test]
async fn a_timer_rings_where_it_was_set_and_interrupt_silences_it() {
    // The timer is a tool intent: no language model is needed (a dead one is configured).
    let server = Server::start(
        &[],
        &[
            ("CODA__LLM__PROVIDER", "openai"),
            ("CODA__LLM__OPENAI__BASE_URL", "http://127.0.0.1:9/v1"),
        ],
    );
    let mut c = server.client().await;
    let r = c
        .request(
            "subscribe",
            json!({"types": ["alarm", "tts_*", "tts_audio"]}),
        )
        .await;
    assert_eq!(ty(&r), "command_result", "{r}");
    let r = c
        .request(
            "text_input",
            json!({"text": "set a timer for 2 seconds for tea"}),
        )
        .await;
    assert_eq!(ty(&r), "command_result", "{r}");

    let ring = c
        .wait_for("the alarm", Duration::from_secs(20), |v| {
            ty(v) == "alarm" && v["data"]["ringing"] == true
        })
        .await;
    assert_eq!(ring["data"]["label"], "tea", "{ring}");
    assert_eq!(ring["data"]["timer_id"], "timer-1", "{ring}");
    assert!(
        ring["data"]["text"]
            .as_str()
            .is_some_and(|t| t.contains("timer for tea is done")),
        "{ring}"
    );
    let session = ring["session_id"].clone();
    // Its speech goes to the session that set it, as audio the client can play.
    let audio = c
        .wait_for("the ring's audio", Duration::from_secs(30), |v| {
            ty(v) == "tts_audio" && v["data"]["turn_id"] == "timer-1-ring-1"
        })
        .await;
    assert_eq!(audio["session_id"], session, "{audio}");
    assert!(audio["data"]["audio"]
        .as_str()
        .is_some_and(|a| !a.is_empty()));

    let r = c.request("interrupt", json!({})).await;
    assert_eq!(ty(&r), "command_result", "{r}");
    let off = c
        .wait_for("the alarm to stop", Duration::from_secs(10), |v| {
            ty(v) == "alarm" && v["data"]["ringing"] == false
        })
        .await;
    assert_eq!(off["data"]["reason"], "stopped", "{off}");
    // No second ring after the pause.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.next_json(left).await {
            Ok(v) => assert!(
                !(ty(&v) == "tts_start" && v["data"]["turn_id"] == "timer-1-ring-2"),
                "rang again after the interrupt: {v}"
            ),
            Err(_) => break,
        }
    }
}
