//! A whole text turn through the real `coda serve`: WebSocket client → orchestrator →
//! OpenAI-compatible provider (a loopback server speaking SSE) → espeak-ng → events.

mod common;

use std::time::Duration;

use coda_actors::llm::scripted::{Reply, ScriptedServer, Step};
use common::*;
use serde_json::json;

#[tokio::test]
async fn a_text_turn_over_the_websocket_streams_tokens_and_speaks() {
    let upstream = ScriptedServer::start(|_| {
        let mut steps = Vec::new();
        for piece in ["The sky ", "is blue. ", "Light ", "scatters."] {
            steps.push(Step::Write(common::sse_delta(piece)));
            steps.push(Step::Sleep(Duration::from_millis(20)));
        }
        steps.push(Step::Write(common::sse_stop()));
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

/// The default model installed by `scripts/setup` (or `CODA_TEST_MODEL`).
fn embedded_model() -> String {
    if let Some(p) = std::env::var_os("CODA_TEST_MODEL").filter(|p| !p.is_empty()) {
        return p.to_string_lossy().into_owned();
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".local/share")))
        .expect("HOME");
    let p = data.join("coda/models/smollm2.gguf");
    assert!(
        p.is_file(),
        "{} is missing: run `coda models pull smollm2` (scripts/setup does) or set CODA_TEST_MODEL",
        p.display()
    );
    p.to_string_lossy().into_owned()
}

/// End to end with the real embedded model: the default provider, in-process.
#[tokio::test]
async fn a_text_turn_with_the_embedded_model() {
    let model = embedded_model();
    let server = Server::start(
        &[],
        &[
            ("CODA__LLM__PROVIDER", "local"),
            ("CODA__LLM__MODEL", model.as_str()),
            ("CODA__LLM__SEED", "7"),
            ("CODA__LLM__MAX_TOKENS", "40"),
        ],
    );
    let mut c = server.client().await;
    let r = c
        .request(
            "text_input",
            json!({"text": "What is the capital of France? Answer in one sentence."}),
        )
        .await;
    assert_eq!(ty(&r), "command_result", "{r}");
    let turn = r["data"]["data"]["turn_id"]
        .as_str()
        .expect("turn_id")
        .to_string();
    let (mut seen, mut tokens, mut result, mut trace) = (Vec::new(), String::new(), None, None);
    loop {
        let v = c.recv_json(Duration::from_secs(120)).await;
        if v["data"]["turn_id"] != json!(turn) {
            continue;
        }
        let t = ty(&v).to_string();
        match t.as_str() {
            "llm_start" => assert_eq!(v["data"]["provider"], "local", "{v}"),
            "llm_token" => tokens.push_str(v["data"]["text"].as_str().unwrap_or("")),
            "llm_result" => result = Some(v["data"]["text"].as_str().unwrap_or("").to_string()),
            "llm_error" => panic!("the embedded model failed: {v}"),
            "latency_trace" => trace = Some(v["data"].clone()),
            _ => {}
        }
        seen.push(t);
        if trace.is_some() {
            break;
        }
    }
    let result = result.unwrap_or_else(|| panic!("no llm_result in {seen:?}"));
    assert!(!result.trim().is_empty(), "empty answer: {seen:?}");
    assert_eq!(tokens, result, "streamed tokens are the answer");
    assert!(seen.iter().any(|t| t == "tts_start"), "{seen:?}");
    let trace = trace.expect("latency_trace");
    assert!(
        trace["llm_ttft_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{trace}"
    );
}
