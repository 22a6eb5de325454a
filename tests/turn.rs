//! A whole text turn through the real `coda serve`: WebSocket client → orchestrator →
//! OpenAI-compatible provider (a loopback server speaking SSE) → espeak-ng → events.

mod common;

use std::time::Duration;

use coda_actors::llm::scripted::{Reply, ScriptedServer, Step};
use common::*;
use serde_json::json;

fn delta(content: &str) -> Vec<u8> {
    format!(
        "data: {}\n\n",
        json!({"choices":[{"index":0,"delta":{"content":content},"finish_reason":null}]})
    )
    .into_bytes()
}

#[tokio::test]
async fn a_text_turn_over_the_websocket_streams_tokens_and_speaks() {
    let upstream = ScriptedServer::start(|_| {
        let mut steps = Vec::new();
        for piece in ["The sky ", "is blue. ", "Light ", "scatters."] {
            steps.push(Step::Write(delta(piece)));
            steps.push(Step::Sleep(Duration::from_millis(20)));
        }
        steps.push(Step::Write(
            format!(
                "data: {}\n\ndata: [DONE]\n\n",
                json!({"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]})
            )
            .into_bytes(),
        ));
        Reply::stream("text/event-stream", steps)
    })
    .await
    .expect("upstream");
    let base = format!("{}/v1", upstream.url());
    let server = Server::start(
        &[],
        &[
            ("CODA__LLM__PROVIDER", "openai"),
            ("CODA__LLM__OPENAI__BASE_URL", base.as_str()),
            ("CODA__LLM__OPENAI__MODEL", "test-model"),
        ],
    );
    let mut c = server.client().await;
    let r = c
        .request("text_input", json!({"text": "why is the sky blue"}))
        .await;
    assert_eq!(ty(&r), "command_result", "{r}");
    let turn = r["data"]["data"]["turn_id"]
        .as_str()
        .expect("turn_id")
        .to_string();
    let mut seen = Vec::new();
    let mut tokens = String::new();
    loop {
        let v = c.recv_json(Duration::from_secs(30)).await;
        if v["data"]["turn_id"] != json!(turn) {
            continue;
        }
        let t = ty(&v).to_string();
        if t == "llm_token" {
            tokens.push_str(v["data"]["text"].as_str().unwrap_or(""));
        }
        seen.push(t.clone());
        if t == "latency_trace" {
            break;
        }
    }
    let pos = |t: &str| {
        seen.iter()
            .position(|x| x == t)
            .unwrap_or_else(|| panic!("no {t} in {seen:?}"))
    };
    assert_eq!(tokens, "The sky is blue. Light scatters.");
    assert!(pos("conversation_turn") < pos("intent_result"));
    assert!(pos("intent_result") < pos("llm_start"));
    assert!(pos("llm_start") < pos("llm_token"));
    // Speech starts on the first sentence, before the answer is complete.
    assert!(pos("tts_start") < pos("llm_result"), "{seen:?}");
    assert!(pos("llm_result") < pos("tts_result"));
    assert!(
        seen.iter().filter(|t| *t == "tts_progress").count() == 2,
        "{seen:?}"
    );
}
