//! The registry's fallback chain: an unavailable provider is skipped — with an
//! `llm_error` warning event on the hub and the caller's notice every time — and other
//! failures are not papered over.

mod common;

use std::sync::{Arc, Mutex};

use actix::prelude::*;
use coda_actors::hub::{
    EventHub, HubDelivery, HubSettings, Register, StartAt, Subscribe, TypeMask,
};
use coda_actors::llm::ollama::OllamaConfig;
use coda_actors::llm::openai::OpenAiConfig;
use coda_actors::llm::registry::{self, FallbackNotice, LlmSettings, ProviderKind};
use coda_actors::llm::scripted::{Reply, ScriptedServer};
use coda_actors::llm::{GenerationDefaults, LlmProvider};
use common::*;
use serde_json::{json, Value};

/// Forwards every delivered event's JSON to a channel.
struct Collector(tokio::sync::mpsc::UnboundedSender<Value>);

impl Actor for Collector {
    type Context = Context<Self>;
}

impl Handler<HubDelivery> for Collector {
    type Result = ();
    fn handle(&mut self, msg: HubDelivery, _: &mut Context<Self>) {
        let events = match msg {
            HubDelivery::Replay(b) => b.events,
            live => live.live().to_vec(),
        };
        for e in events {
            if let Ok(v) = serde_json::from_str(&e.json) {
                let _ = self.0.send(v);
            }
        }
    }
}

fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

async fn ollama_server() -> ScriptedServer {
    ScriptedServer::start(|_| {
        Reply::stream(
            "application/x-ndjson",
            vec![coda_actors::llm::scripted::Step::Write(
                format!(
                    "{}\n{}\n",
                    json!({"message":{"role":"assistant","content":"from ollama"},"done":false}),
                    json!({"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop"})
                )
                .into_bytes(),
            )],
        )
    })
    .await
    .unwrap()
}

fn settings(openai_url: &str, ollama_url: &str) -> LlmSettings {
    let mut http = fast_http();
    http.max_retries = 0;
    LlmSettings {
        provider: ProviderKind::OpenAi,
        model: Some("primary-model".into()),
        fallback: vec![ProviderKind::Ollama],
        defaults: GenerationDefaults {
            temperature: Some(0.5),
            max_tokens: Some(33),
            ..Default::default()
        },
        openai: OpenAiConfig {
            base_url: format!("{openai_url}/v1"),
            model: "gpt-x".into(),
            http: http.clone(),
            ..Default::default()
        },
        ollama: OllamaConfig {
            base_url: ollama_url.into(),
            model: "llama3.2".into(),
            http,
        },
        ..Default::default()
    }
}

#[actix_rt::test]
async fn unavailable_primary_falls_back_and_says_so_every_time() {
    let hub = EventHub::start_hub(HubSettings::default());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let collector = Collector(tx).start();
    hub.addr()
        .send(Register {
            client_id: 1,
            recipient: collector.recipient(),
        })
        .await
        .unwrap();
    hub.addr()
        .send(Subscribe {
            client_id: 1,
            mask: TypeMask::ALL,
            start: StartAt::Live,
        })
        .await
        .unwrap();

    let ollama = ollama_server().await;
    let notices: Arc<Mutex<Vec<FallbackNotice>>> = Arc::default();
    let n2 = notices.clone();
    let chain = registry::build(
        &settings(&dead_url(), &ollama.url()),
        Some(hub.clone()),
        Some(Arc::new(move |n: &FallbackNotice| {
            n2.lock().unwrap().push(n.clone())
        })),
    )
    .unwrap();
    assert_eq!(chain.name(), "openai");
    assert_eq!(chain.default_model(), "primary-model");
    for round in 1..=2 {
        let items = drain(chain.chat_stream(ask("hi")).await.unwrap()).await;
        assert_eq!(text(&items), "from ollama");
        assert_eq!(
            chain.answered_by(),
            Some(("ollama".to_string(), "llama3.2".to_string()))
        );
        // Every time, not once.
        assert_eq!(notices.lock().unwrap().len(), round);
        let ev = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ev["type"], "llm_error");
        assert_eq!(ev["data"]["code"], "provider_fallback");
        assert_eq!(ev["data"]["level"], "warning");
        let msg = ev["data"]["message"].as_str().unwrap();
        assert!(
            msg.contains("`openai` is unavailable") && msg.contains("falling back to `ollama`"),
            "{msg}"
        );
    }
    let n = notices.lock().unwrap()[0].clone();
    assert_eq!((n.from.as_str(), n.to.as_str()), ("openai", "ollama"));
    assert_eq!(n.error.code(), "unavailable");
    // The fallback provider got its own model, and the [llm] sampling defaults.
    let body = ollama.requests()[0].json();
    assert_eq!(body["model"], "llama3.2");
    assert_eq!(body["options"]["num_predict"], 33);
}

#[actix_rt::test]
async fn other_errors_do_not_fall_back() {
    let openai =
        ScriptedServer::start(|_| Reply::json(401, r#"{"error":{"message":"invalid api key"}}"#))
            .await
            .unwrap();
    let ollama = ollama_server().await;
    let notices: Arc<Mutex<Vec<FallbackNotice>>> = Arc::default();
    let n2 = notices.clone();
    let chain = registry::build(
        &settings(&openai.url(), &ollama.url()),
        None,
        Some(Arc::new(move |n: &FallbackNotice| {
            n2.lock().unwrap().push(n.clone())
        })),
    )
    .unwrap();
    let e = chain.chat_stream(ask("hi")).await.err().unwrap();
    assert_eq!(e.code(), "auth");
    assert!(notices.lock().unwrap().is_empty());
    assert!(ollama.requests().is_empty());
    // The primary got the --model override and the defaults.
    let body = openai.requests()[0].json();
    assert_eq!(body["model"], "primary-model");
    assert_eq!(body["max_tokens"], 33);
}

#[actix_rt::test]
async fn a_provider_missing_from_the_build_is_skipped_with_a_notice() {
    let ollama = ollama_server().await;
    let mut s = settings(&dead_url(), &ollama.url());
    s.provider = ProviderKind::Local;
    s.model = None;
    s.local.model = "/nonexistent/model.gguf".into();
    let notices: Arc<Mutex<Vec<FallbackNotice>>> = Arc::default();
    let n2 = notices.clone();
    let chain = registry::build(
        &s,
        None,
        Some(Arc::new(move |n: &FallbackNotice| {
            n2.lock().unwrap().push(n.clone())
        })),
    )
    .unwrap();
    assert_eq!(
        chain.names(),
        vec![ProviderKind::Local, ProviderKind::Ollama]
    );
    let items = drain(chain.chat_stream(ask("hi")).await.unwrap()).await;
    assert_eq!(text(&items), "from ollama");
    let n = notices.lock().unwrap()[0].to_string();
    let why = if cfg!(feature = "local-llm") {
        "does not exist"
    } else {
        "built without the local-llm feature"
    };
    assert!(
        n.contains("`local` is unavailable") && n.contains(why),
        "{n}"
    );
    // Listing and health speak for the primary only.
    assert_eq!(chain.list_models().await.unwrap_err().code(), "unavailable");
}
