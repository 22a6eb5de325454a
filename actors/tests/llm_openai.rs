//! The OpenAI-compatible engine against a loopback server speaking the documented wire
//! format: SSE split anywhere, keep-alive comments, `[DONE]`, error bodies, 429 with
//! Retry-After, 503 retries, mid-stream disconnects, idle timeouts, cancellation, tool
//! calls, model discovery.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coda_actors::llm::openai::{OpenAiConfig, OpenAiProvider};
use coda_actors::llm::scripted::{Reply, ScriptedServer, Step};
use coda_actors::llm::{
    ChatRequest, FinishReason, LlmError, LlmProvider, StreamChunk, ToolCallRequest, ToolSpec, Usage,
};
use common::*;
use futures_util::StreamExt;
use serde_json::json;

fn provider(server: &ScriptedServer, model: &str) -> OpenAiProvider {
    OpenAiProvider::new(OpenAiConfig {
        base_url: format!("{}/v1", server.url()),
        api_key: Some("sk-test-123".into()),
        model: model.into(),
        include_usage: true,
        http: fast_http(),
    })
    .unwrap()
}

#[tokio::test]
async fn streams_events_split_mid_line_with_comments_crlf_and_utf8_splits() {
    // One answer, written in awkward pieces: a keep-alive comment, an event split inside
    // its JSON, a line ending split between \r and \n, a multi-byte character split across
    // writes, two events in one write, and `[DONE]` split in two.
    let e2 = oa_delta(" wörld").replace("\n\n", "\r\n\r\n");
    let split = e2.find('ö').unwrap();
    let mut steps = vec![
        Step::Write(b": keep-alive\n\n".to_vec()),
        Step::Write(br#"data: {"choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"#.to_vec()),
        Step::Write(b"lo\"},\"finish_reason\":null}]}\n".to_vec()),
        Step::Write(b"\n".to_vec()),
        Step::Write(e2.as_bytes()[..split + 1].to_vec()),
        Step::Write(e2.as_bytes()[split + 1..e2.len() - 3].to_vec()),
        Step::Write(e2.as_bytes()[e2.len() - 3..].to_vec()),
        Step::Write(b": ping\n\n".to_vec()),
        Step::Write(
            format!(
                "{}data: {}\n\n",
                oa_delta("!"),
                json!({"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]})
            )
            .into_bytes(),
        ),
        Step::Write(
            format!(
                "data: {}\n\n",
                json!({"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":4,"total_tokens":9}})
            )
            .into_bytes(),
        ),
        Step::Write(b"data: [DO".to_vec()),
        Step::Write(b"NE]\n\n".to_vec()),
    ];
    // Separate reads for separate writes.
    steps = steps
        .into_iter()
        .flat_map(|s| [s, Step::Sleep(Duration::from_millis(15))])
        .collect();
    let server = ScriptedServer::start(move |r| {
        assert_eq!(r.path(), "/v1/chat/completions");
        Reply::stream("text/event-stream", steps.clone())
    })
    .await
    .unwrap();
    let p = provider(&server, "gpt-test");
    let items = drain(p.chat_stream(ask("hi")).await.unwrap()).await;
    assert_eq!(text(&items), "Hello wörld!");
    assert_eq!(
        items.last().unwrap().as_ref().unwrap(),
        &StreamChunk::Done {
            finish_reason: FinishReason::Stop,
            usage: Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 4
            })
        }
    );
    let req = &server.requests()[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.header("authorization"), Some("Bearer sk-test-123"));
    let body = req.json();
    assert_eq!(body["model"], "gpt-test");
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(body["messages"][0], json!({"role":"user","content":"hi"}));
}

#[tokio::test]
async fn whole_answer_through_chat() {
    let server = ScriptedServer::start(|_| {
        Reply::sse_pieces(
            &[
                &oa_delta("4"),
                r#"data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}

"#,
                "data: [DONE]\n\n",
            ],
            Duration::ZERO,
        )
    })
    .await
    .unwrap();
    let p = provider(&server, "m");
    let resp = p.chat(ask("2+2")).await.unwrap();
    assert_eq!(resp.text, "4");
    assert_eq!(resp.finish_reason, FinishReason::Length);
    // No usage chunk: the count of streamed tokens stands in.
    assert_eq!(resp.usage.completion_tokens, 1);
}

#[tokio::test]
async fn error_bodies_map_to_the_small_set() {
    let server = ScriptedServer::start(|r| {
        let model = r.json()["model"].as_str().unwrap_or_default().to_string();
        match model.as_str() {
            "badkey" => Reply::json(
                401,
                r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}"#,
            ),
            "missing" => Reply::json(
                404,
                r#"{"error":{"message":"The model `missing` does not exist","type":"invalid_request_error","code":"model_not_found"}}"#,
            ),
            "bad" => Reply::json(400, r#"{"detail":"messages: field required"}"#),
            _ => Reply::json(418, "teapot"),
        }
    })
    .await
    .unwrap();
    let p = provider(&server, "m");
    let run = |m: &str| {
        let mut r = ask("x");
        r.model = Some(m.into());
        p.chat_stream(r)
    };
    let e = run("badkey").await.err().unwrap();
    assert!(
        matches!(&e, LlmError::Auth(m) if m.contains("Incorrect API key") && m.contains("401")),
        "{e}"
    );
    let e = run("missing").await.err().unwrap();
    assert!(
        matches!(&e, LlmError::NotFound(m) if m.contains("model_not_found")),
        "{e}"
    );
    let e = run("bad").await.err().unwrap();
    assert!(
        matches!(&e, LlmError::Invalid(m) if m.contains("field required")),
        "{e}"
    );
    let e = run("x").await.err().unwrap();
    assert_eq!(e.code(), "bad_response");
    // None of these is worth a retry.
    assert_eq!(server.requests().len(), 4);
}

#[tokio::test]
async fn rate_limit_waits_for_retry_after_then_succeeds() {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let server = ScriptedServer::start(move |_| {
        if n2.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::json(
                429,
                r#"{"error":{"message":"Rate limit reached","type":"requests"}}"#,
            )
            .header("retry-after", "1")
        } else {
            Reply::sse_pieces(&[&oa_delta("ok"), "data: [DONE]\n\n"], Duration::ZERO)
        }
    })
    .await
    .unwrap();
    let p = provider(&server, "m");
    let t0 = Instant::now();
    let items = drain(p.chat_stream(ask("x")).await.unwrap()).await;
    assert_eq!(text(&items), "ok");
    assert!(
        t0.elapsed() >= Duration::from_millis(950),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(n.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn long_retry_after_is_returned_not_waited() {
    let server = ScriptedServer::start(|_| {
        Reply::json(429, r#"{"error":{"message":"quota exceeded"}}"#).header("retry-after", "3600")
    })
    .await
    .unwrap();
    let p = provider(&server, "m");
    let t0 = Instant::now();
    let e = p.chat_stream(ask("x")).await.err().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(2));
    match e {
        LlmError::RateLimited {
            retry_after,
            message,
        } => {
            assert_eq!(retry_after, Some(Duration::from_secs(3600)));
            assert!(message.contains("quota exceeded"), "{message}");
        }
        other => panic!("expected rate_limited, got {other}"),
    }
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn unavailable_is_retried_a_bounded_number_of_times() {
    let server = ScriptedServer::start(|_| Reply::json(503, r#"{"error":"loading model"}"#))
        .await
        .unwrap();
    let p = provider(&server, "m");
    let e = p.chat_stream(ask("x")).await.err().unwrap();
    assert!(
        matches!(&e, LlmError::Unavailable(m) if m.contains("loading model")),
        "{e}"
    );
    // max_retries = 2: three attempts in all.
    assert_eq!(server.requests().len(), 3);
}

#[tokio::test]
async fn mid_stream_disconnect_is_an_error_after_the_tokens() {
    let server = ScriptedServer::start(|_| {
        Reply::stream(
            "text/event-stream",
            vec![
                Step::Write(oa_delta("par").into_bytes()),
                Step::Sleep(Duration::from_millis(20)),
                Step::Write(b"data: {\"choices\":[{\"delta\":{\"cont".to_vec()),
                Step::Close,
            ],
        )
    })
    .await
    .unwrap();
    let p = provider(&server, "m");
    let items = drain(p.chat_stream(ask("x")).await.unwrap()).await;
    assert_eq!(text(&items), "par");
    let e = items.last().unwrap().as_ref().unwrap_err();
    assert_eq!(e.code(), "unavailable", "{e}");
}

#[tokio::test]
async fn close_delimited_body_needs_a_finish() {
    // Some servers close the connection instead of sending [DONE]: a finish_reason makes
    // that a whole answer; without one it is a truncated one.
    let with_finish = Reply {
        status: 200,
        headers: vec![("content-type".into(), "text/event-stream".into())],
        chunked: false,
        steps: vec![
            Step::Write(oa_delta("a").into_bytes()),
            Step::Write(
                b"data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n".to_vec(),
            ),
        ],
    };
    let without = Reply {
        steps: vec![Step::Write(oa_delta("a").into_bytes())],
        ..with_finish.clone()
    };
    let server = ScriptedServer::start(move |r| {
        if r.json()["model"] == "whole" {
            with_finish.clone()
        } else {
            without.clone()
        }
    })
    .await
    .unwrap();
    let p = provider(&server, "whole");
    let items = drain(p.chat_stream(ask("x")).await.unwrap()).await;
    assert!(matches!(items.last(), Some(Ok(StreamChunk::Done { .. }))));
    let p = provider(&server, "cut");
    let items = drain(p.chat_stream(ask("x")).await.unwrap()).await;
    assert_eq!(text(&items), "a");
    assert!(items.last().unwrap().is_err());
}

#[tokio::test]
async fn idle_timeout_ends_a_silent_stream() {
    let server = ScriptedServer::start(|_| {
        Reply::stream(
            "text/event-stream",
            vec![
                Step::Write(oa_delta("slow").into_bytes()),
                Step::Sleep(Duration::from_secs(30)),
            ],
        )
    })
    .await
    .unwrap();
    let mut http = fast_http();
    http.idle_timeout = Duration::from_millis(300);
    let p = OpenAiProvider::new(OpenAiConfig {
        base_url: format!("{}/v1", server.url()),
        model: "m".into(),
        http,
        ..Default::default()
    })
    .unwrap();
    let t0 = Instant::now();
    let items = drain(p.chat_stream(ask("x")).await.unwrap()).await;
    assert_eq!(text(&items), "slow");
    let e = items.last().unwrap().as_ref().unwrap_err();
    assert_eq!(e.code(), "timeout", "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_request() {
    let server = ScriptedServer::start(|_| {
        Reply::stream(
            "text/event-stream",
            vec![Step::Write(oa_delta("first").into_bytes()), Step::Stall],
        )
    })
    .await
    .unwrap();
    let p = provider(&server, "m");
    let mut s = p.chat_stream(ask("x")).await.unwrap();
    let first = tokio::time::timeout(WAIT, s.next()).await.unwrap();
    assert_eq!(first.unwrap().unwrap(), StreamChunk::Token("first".into()));
    assert_eq!(server.hangups(), 0);
    drop(s);
    assert!(
        server.wait_for(WAIT, |s| s.hangups() == 1).await,
        "the server never saw the client hang up"
    );
}

#[tokio::test]
async fn refused_connection_is_unavailable() {
    // Bind then drop a listener: nothing listens on that port now.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut http = fast_http();
    http.max_retries = 1;
    let p = OpenAiProvider::new(OpenAiConfig {
        base_url: format!("http://127.0.0.1:{port}/v1"),
        model: "m".into(),
        http,
        ..Default::default()
    })
    .unwrap();
    let e = p.chat_stream(ask("x")).await.err().unwrap();
    assert!(
        matches!(&e, LlmError::Unavailable(m) if m.contains("cannot connect")),
        "{e}"
    );
    assert!(e.is_unavailable());
}

#[tokio::test]
async fn tool_calls_and_extra_fields_pass_through() {
    let server = ScriptedServer::start(|_| {
        Reply::sse_pieces(
            &[
                r#"data: {"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}]}

"#,
                r#"data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\": \"Os"}}]},"finish_reason":null}]}

"#,
                r#"data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"lo\"}"}},{"index":1,"id":"call_b","type":"function","function":{"name":"get_time","arguments":"{}"}}]},"finish_reason":null}]}

"#,
                r#"data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}

"#,
                "data: [DONE]\n\n",
            ],
            Duration::from_millis(5),
        )
    })
    .await
    .unwrap();
    let p = provider(&server, "m");
    let req = ChatRequest {
        tools: vec![ToolSpec {
            name: "get_weather".into(),
            description: "Weather for a city".into(),
            parameters: json!({"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}),
        }],
        extra: Some(json!({"tool_choice": {"type":"function","function":{"name":"get_weather"}}})),
        ..ask("weather in Oslo?")
    };
    let resp = p.chat(req).await.unwrap();
    assert_eq!(resp.finish_reason, FinishReason::ToolCalls);
    assert_eq!(
        resp.tool_calls,
        vec![
            ToolCallRequest {
                id: "call_a".into(),
                name: "get_weather".into(),
                arguments: r#"{"city": "Oslo"}"#.into()
            },
            ToolCallRequest {
                id: "call_b".into(),
                name: "get_time".into(),
                arguments: "{}".into()
            }
        ]
    );
    let body = server.requests()[0].json();
    assert_eq!(body["tools"][0]["type"], "function");
    assert_eq!(
        body["tools"][0]["function"]["parameters"]["required"][0],
        "city"
    );
    assert_eq!(body["tool_choice"]["function"]["name"], "get_weather");
}

#[tokio::test]
async fn error_event_inside_the_stream() {
    let server = ScriptedServer::start(|_| {
        Reply::sse_pieces(
            &[
                &oa_delta("Hi"),
                r#"data: {"error":{"message":"upstream overloaded","type":"server_error","code":503}}

"#,
            ],
            Duration::ZERO,
        )
    })
    .await
    .unwrap();
    let p = provider(&server, "m");
    let items = drain(p.chat_stream(ask("x")).await.unwrap()).await;
    assert_eq!(text(&items), "Hi");
    let e = items.last().unwrap().as_ref().unwrap_err();
    assert!(e.to_string().contains("upstream overloaded"), "{e}");
}

#[tokio::test]
async fn models_are_listed_and_the_first_is_used_when_none_is_configured() {
    let server = ScriptedServer::start(|r| match r.path() {
        "/v1/models" => Reply::json(
            200,
            json!({"object":"list","data":[
                {"id":"qwen2.5-coder-7b","object":"model","owned_by":"llamacpp","meta":{"n_ctx_train":32768}},
                {"id":"other","object":"model"}]})
            .to_string(),
        ),
        _ => Reply::sse_pieces(&[&oa_delta("x"), "data: [DONE]\n\n"], Duration::ZERO),
    })
    .await
    .unwrap();
    let p = provider(&server, "");
    let models = p.list_models().await.unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(models[0].id, "qwen2.5-coder-7b");
    assert_eq!(models[0].context_length, Some(32768));
    assert_eq!(p.model_info("other").await.unwrap().id, "other");
    assert_eq!(p.model_info("nope").await.unwrap_err().code(), "not_found");
    let h = p.health().await.unwrap();
    assert!(h.ok && h.detail.contains("2 model"), "{h:?}");
    drain(p.chat_stream(ask("x")).await.unwrap()).await;
    let chat = server
        .requests()
        .into_iter()
        .find(|r| r.path() == "/v1/chat/completions")
        .unwrap();
    assert_eq!(chat.json()["model"], "qwen2.5-coder-7b");
    assert_eq!(p.default_model(), "qwen2.5-coder-7b");
}
