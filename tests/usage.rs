//! Token usage and cost through the real `coda serve`: a scripted OpenAI-compatible model
//! that reports usage gives `llm_result.usage` (priced from `[llm.prices]`), the
//! session's running total, and the `/metrics` counters; one that reports none gives
//! estimated counts, said to be estimated, with the cost unknown.

mod common;

use std::time::Duration;

use coda_actors::llm::scripted::{Reply, ScriptedServer, Step};
use common::*;
use serde_json::{json, Value};

/// A model streaming "Hello there." and, when `usage`, reporting (prompt, completion).
async fn model(usage: Option<(u32, u32)>) -> ScriptedServer {
    ScriptedServer::start(move |_| {
        let mut steps = vec![
            Step::Write(sse_delta("Hello ")),
            Step::Write(sse_delta("there.")),
        ];
        if let Some((p, c)) = usage {
            steps.push(Step::Write(
                format!(
                    "data: {}\n\n",
                    json!({"choices":[],"usage":{"prompt_tokens":p,"completion_tokens":c}})
                )
                .into_bytes(),
            ));
        }
        steps.push(Step::Write(sse_stop()));
        Reply::stream("text/event-stream", steps)
    })
    .await
    .expect("model server")
}

/// A server on `llm` with `config` as the user's config file.
fn server(llm: &ScriptedServer, config: &str) -> Server {
    let home = Home::new();
    let dir = home.config_dir().join("coda");
    std::fs::create_dir_all(&dir).expect("config dir");
    std::fs::write(dir.join("config.toml"), config).expect("config file");
    let base = format!("{}/v1", llm.url());
    Server::start_in(
        home,
        &[],
        &[
            ("CODA__LLM__PROVIDER", "openai"),
            ("CODA__LLM__OPENAI__BASE_URL", base.as_str()),
            ("CODA__LLM__OPENAI__MODEL", "Test-Model"),
        ],
    )
}

/// One text turn; its `llm_result` data.
async fn turn(c: &mut Client, text: &str) -> Value {
    let r = c.request("text_input", json!({"text": text})).await;
    assert_eq!(ty(&r), "command_result", "{r}");
    let id = r["data"]["data"]["turn_id"].clone();
    loop {
        let v = c.recv_json(Duration::from_secs(30)).await;
        if ty(&v) == "llm_result" && v["data"]["turn_id"] == id {
            return v["data"].clone();
        }
    }
}

fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let scrape =
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parse");
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .and_then(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}

#[tokio::test]
async fn reported_usage_is_priced_summed_per_session_and_counted_in_metrics() {
    let llm = model(Some((120, 9))).await;
    // The config key is lower case; the model is named in mixed case by the provider.
    let server = server(
        &llm,
        "[llm.prices.\"test-model\"]\ninput_per_mtok = 0.15\noutput_per_mtok = 0.6\ncurrency = \"EUR\"\n",
    );
    let mut c = server.client().await;
    let first = turn(&mut c, "hi").await;
    let u = &first["usage"];
    assert_eq!(u["input_tokens"], json!(120), "{first}");
    assert_eq!(u["output_tokens"], json!(9), "{first}");
    assert!(
        u.get("estimated").is_none(),
        "reported counts are exact: {first}"
    );
    assert_eq!(u["pricing"], json!("priced"));
    assert_eq!(u["currency"], json!("EUR"));
    let cost = 120.0 * 0.15 / 1e6 + 9.0 * 0.6 / 1e6;
    assert!(
        (u["cost"].as_f64().expect("cost") - cost).abs() < 1e-12,
        "{first}"
    );
    assert_eq!(first["session_usage"]["input_tokens"], json!(120));

    let second = turn(&mut c, "again").await;
    let s = &second["session_usage"];
    assert_eq!(s["input_tokens"], json!(240), "{second}");
    assert_eq!(s["output_tokens"], json!(18), "{second}");
    assert!((s["cost"].as_f64().expect("cost") - 2.0 * cost).abs() < 1e-12);

    let (status, text) = server.get("/metrics").await;
    assert_eq!(status, 200);
    let labels = [("provider", "openai"), ("model", "Test-Model")];
    assert_eq!(
        sample(&text, "coda_llm_prompt_tokens_total", &labels),
        Some(240.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "coda_llm_completion_tokens_total", &labels),
        Some(18.0)
    );
    assert_eq!(sample(&text, "coda_llm_requests_total", &labels), Some(2.0));
    assert_eq!(
        sample(&text, "coda_llm_estimated_usage_total", &labels),
        Some(0.0)
    );
    let priced = [
        ("provider", "openai"),
        ("model", "Test-Model"),
        ("currency", "EUR"),
    ];
    let total = sample(&text, "coda_llm_cost_total", &priced).expect("cost series");
    assert!((total - 2.0 * cost).abs() < 1e-12, "{text}");
}

#[tokio::test]
async fn a_provider_without_usage_is_estimated_and_its_cost_unknown() {
    let llm = model(None).await;
    let server = server(&llm, "");
    let mut c = server.client().await;
    let r = turn(&mut c, "tell me something about the weather today").await;
    let u = &r["usage"];
    assert_eq!(u["estimated"], json!(true), "{r}");
    // The system prompt and the question are in the prompt: well over ten tokens.
    let input = u["input_tokens"].as_u64().expect("input_tokens");
    assert!(input > 10, "{r}");
    // Two streamed pieces, "Hello there." (12 characters): at least 3 tokens by estimate.
    let output = u["output_tokens"].as_u64().expect("output_tokens");
    assert!((3..=12).contains(&output), "{r}");
    assert_eq!(u["pricing"], json!("unknown"));
    assert!(u.get("cost").is_none(), "{r}");

    let (_, text) = server.get("/metrics").await;
    let labels = [("provider", "openai"), ("model", "Test-Model")];
    assert_eq!(
        sample(&text, "coda_llm_prompt_tokens_total", &labels),
        Some(input as f64),
        "{text}"
    );
    assert_eq!(
        sample(&text, "coda_llm_estimated_usage_total", &labels),
        Some(1.0)
    );
    assert!(
        !text.contains("coda_llm_cost_total{"),
        "no price, no cost: {text}"
    );
}
