//! The Ollama engine against a loopback server speaking Ollama's documented API:
//! NDJSON lines split across chunks, `done` with counts, inline errors, 404 for a missing
//! model, `/api/tags`, `/api/show`, `/api/pull` progress, health and discovery.

mod common;

use std::time::Duration;

use coda_actors::llm::ollama::{self, OllamaConfig, OllamaProvider, PullProgress};
use coda_actors::llm::scripted::{Reply, ScriptedServer, Step};
use coda_actors::llm::{FinishReason, LlmError, LlmProvider, StreamChunk, Usage};
use common::*;
use serde_json::json;

fn provider(server: &ScriptedServer) -> OllamaProvider {
    OllamaProvider::new(OllamaConfig {
        base_url: server.url(),
        model: "llama3.2".into(),
        http: fast_http(),
    })
    .unwrap()
}

fn line(v: serde_json::Value) -> String {
    format!("{v}\n")
}

#[tokio::test]
async fn ndjson_lines_split_across_chunks() {
    let body = [
        line(json!({"model":"llama3.2","created_at":"2024-01-01T00:00:00Z","message":{"role":"assistant","content":"Bon"},"done":false})),
        line(json!({"model":"llama3.2","message":{"role":"assistant","content":"jour, "},"done":false})),
        line(json!({"model":"llama3.2","message":{"role":"assistant","content":"ça va"},"done":false})),
        "\n".to_string(),
        line(json!({"model":"llama3.2","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","total_duration":123,"prompt_eval_count":26,"eval_count":3})),
    ]
    .concat();
    // 7-byte pieces: lines split mid-JSON, several line ends in one piece, "ç" split.
    let mut steps = Vec::new();
    for piece in bytes_pieces(&body, 7) {
        steps.push(Step::Write(piece));
        steps.push(Step::Sleep(Duration::from_millis(2)));
    }
    let server = ScriptedServer::start(move |r| {
        assert_eq!(r.path(), "/api/chat");
        Reply::stream("application/x-ndjson", steps.clone())
    })
    .await
    .unwrap();
    let p = provider(&server);
    let mut req = ask("salut");
    req.temperature = Some(0.2);
    req.max_tokens = Some(64);
    req.seed = Some(7);
    req.stop = vec!["\n\n".into()];
    let items = drain(p.chat_stream(req).await.unwrap()).await;
    assert_eq!(text(&items), "Bonjour, ça va");
    assert_eq!(
        items.last().unwrap().as_ref().unwrap(),
        &StreamChunk::Done {
            finish_reason: FinishReason::Stop,
            usage: Some(Usage {
                prompt_tokens: 26,
                completion_tokens: 3
            })
        }
    );
    let body = server.requests()[0].json();
    assert_eq!(body["model"], "llama3.2");
    assert_eq!(body["stream"], true);
    assert_eq!(body["messages"][0]["content"], "salut");
    assert_eq!(body["options"]["num_predict"], 64);
    assert_eq!(body["options"]["seed"], 7);
    assert_eq!(body["options"]["stop"][0], "\n\n");
    assert!((body["options"]["temperature"].as_f64().unwrap() - 0.2).abs() < 1e-6);
}

#[tokio::test]
async fn missing_model_says_how_to_pull_it() {
    let server = ScriptedServer::start(|_| {
        Reply::json(
            404,
            r#"{"error":"model \"nosuch\" not found, try pulling it first"}"#,
        )
    })
    .await
    .unwrap();
    let p = provider(&server);
    let mut req = ask("x");
    req.model = Some("nosuch".into());
    let e = p.chat_stream(req).await.err().unwrap();
    match e {
        LlmError::NotFound(m) => {
            assert!(m.contains("try pulling it first"), "{m}");
            assert!(m.contains("coda models pull nosuch"), "{m}");
        }
        other => panic!("expected not_found, got {other}"),
    }
}

#[tokio::test]
async fn inline_error_and_truncated_stream() {
    let server = ScriptedServer::start(|r| {
        if r.json()["model"] == "err" {
            Reply::stream(
                "application/x-ndjson",
                vec![
                    Step::Write(line(json!({"message":{"role":"assistant","content":"a"},"done":false})).into_bytes()),
                    Step::Write(line(json!({"error":"an error was encountered while running the model: CUDA out of memory"})).into_bytes()),
                ],
            )
        } else {
            Reply::stream(
                "application/x-ndjson",
                vec![
                    Step::Write(line(json!({"message":{"role":"assistant","content":"a"},"done":false})).into_bytes()),
                    Step::Write(b"{\"message\":{\"role\":\"assis".to_vec()),
                    Step::Close,
                ],
            )
        }
    })
    .await
    .unwrap();
    let p = provider(&server);
    let mut req = ask("x");
    req.model = Some("err".into());
    let items = drain(p.chat_stream(req).await.unwrap()).await;
    assert_eq!(text(&items), "a");
    let e = items.last().unwrap().as_ref().unwrap_err();
    assert!(e.to_string().contains("CUDA out of memory"), "{e}");
    let items = drain(p.chat_stream(ask("x")).await.unwrap()).await;
    assert_eq!(text(&items), "a");
    assert_eq!(
        items.last().unwrap().as_ref().unwrap_err().code(),
        "unavailable"
    );
}

#[tokio::test]
async fn tags_show_and_health() {
    let server = ScriptedServer::start(|r| match r.path() {
        "/api/tags" => Reply::json(
            200,
            json!({"models":[
                {"name":"llama3.2:latest","model":"llama3.2:latest","modified_at":"2024-10-01T00:00:00Z","size":2019393189u64,"digest":"a80c4f17","details":{"format":"gguf","family":"llama","parameter_size":"3.2B","quantization_level":"Q4_K_M"}},
                {"name":"qwen2.5-coder:7b","model":"qwen2.5-coder:7b","size":4683087332u64,"details":{"family":"qwen2"}}]})
            .to_string(),
        ),
        "/api/show" => {
            if r.json()["model"] == "llama3.2" {
                Reply::json(
                    200,
                    json!({"details":{"family":"llama"},"model_info":{"general.architecture":"llama","llama.context_length":131072},"capabilities":["completion","tools"]})
                        .to_string(),
                )
            } else {
                Reply::json(404, r#"{"error":"model 'x' not found"}"#)
            }
        }
        "/api/version" => Reply::json(200, r#"{"version":"0.6.2"}"#),
        _ => Reply::json(404, "{}"),
    })
    .await
    .unwrap();
    let p = provider(&server);
    let models = p.list_models().await.unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(models[0].id, "llama3.2:latest");
    assert_eq!(models[0].name.as_deref(), Some("llama3.2"));
    assert_eq!(models[0].size_bytes, Some(2019393189));
    let info = p.model_info("llama3.2").await.unwrap();
    assert_eq!(info.context_length, Some(131072));
    assert_eq!(info.details.unwrap()["capabilities"][1], "tools");
    assert_eq!(p.model_info("x").await.unwrap_err().code(), "not_found");
    let h = p.health().await.unwrap();
    assert!(h.ok && h.detail.contains("0.6.2"), "{h:?}");
}

#[tokio::test]
async fn pull_reports_progress_until_success() {
    let server = ScriptedServer::start(|r| {
        let model = r.json()["model"].as_str().unwrap_or_default().to_string();
        if model == "nosuch" {
            return Reply::stream(
                "application/x-ndjson",
                vec![
                    Step::Write(line(json!({"status":"pulling manifest"})).into_bytes()),
                    Step::Write(line(json!({"error":"pull model manifest: file does not exist"})).into_bytes()),
                ],
            );
        }
        let mut steps = vec![Step::Write(line(json!({"status":"pulling manifest"})).into_bytes())];
        for done in [0u64, 500, 1000] {
            steps.push(Step::Write(
                line(json!({"status":"pulling dde5aa3fc5ff","digest":"sha256:dde5aa3fc5ff","total":1000,"completed":done}))
                    .into_bytes(),
            ));
        }
        for s in ["verifying sha256 digest", "writing manifest", "success"] {
            steps.push(Step::Write(line(json!({ "status": s })).into_bytes()));
        }
        Reply::stream("application/x-ndjson", steps)
    })
    .await
    .unwrap();
    let p = provider(&server);
    let mut seen: Vec<PullProgress> = Vec::new();
    p.pull("llama3.2", |pr| seen.push(pr.clone()))
        .await
        .unwrap();
    assert_eq!(seen.first().unwrap().status, "pulling manifest");
    assert_eq!(seen.last().unwrap().status, "success");
    let completed: Vec<u64> = seen.iter().filter_map(|s| s.completed).collect();
    assert_eq!(completed, vec![0, 500, 1000]);
    assert_eq!(server.requests()[0].json()["stream"], true);
    let e = p.pull("nosuch", |_| {}).await.unwrap_err();
    assert!(e.to_string().contains("file does not exist"), "{e}");
}

#[tokio::test]
async fn discovery_finds_the_first_live_ollama() {
    let live = ScriptedServer::start(|r| match r.path() {
        "/api/version" => Reply::json(200, r#"{"version":"0.6.2"}"#),
        _ => Reply::json(404, "{}"),
    })
    .await
    .unwrap();
    let not_ollama = ScriptedServer::start(|_| Reply::json(200, r#"{"hello":"world"}"#))
        .await
        .unwrap();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let client = coda_actors::llm::http::client(&fast_http()).unwrap();
    let found = ollama::discover(&client, &[dead.clone(), not_ollama.url(), live.url()]).await;
    assert_eq!(found, Some(live.url()));
    assert_eq!(
        ollama::discover(&client, &[dead, not_ollama.url()]).await,
        None
    );
}
