//! OpenTelemetry through the real `coda serve`: a loopback OTLP/HTTP receiver (the
//! scripted server, decoding the protobuf bodies with `opentelemetry-proto`'s prost
//! types) gets the span tree of one text turn, with the GenAI attributes and the token
//! counts the scripted model reported, tagged with the turn id the WebSocket client saw;
//! and the metrics. Without an endpoint nothing is sent and no exporter thread runs.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use coda_actors::llm::scripted::{Recorded, Reply, ScriptedServer, Step};
use common::*;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;

/// An OpenAI-compatible model that streams two sentences and reports usage 12 in, 7 out.
async fn model() -> ScriptedServer {
    ScriptedServer::start(|_| {
        let mut steps = Vec::new();
        for piece in ["Hello ", "there. ", "Bye."] {
            steps.push(Step::Write(sse_delta(piece)));
        }
        steps.push(Step::Write(
            format!(
                "data: {}\n\n",
                json!({"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":7}})
            )
            .into_bytes(),
        ));
        steps.push(Step::Write(sse_stop()));
        Reply::stream("text/event-stream", steps)
    })
    .await
    .expect("model server")
}

/// A collector: every export is accepted with an empty protobuf answer.
async fn collector() -> ScriptedServer {
    ScriptedServer::start(|_| Reply {
        status: 200,
        headers: vec![
            ("content-type".into(), "application/x-protobuf".into()),
            ("content-length".into(), "0".into()),
        ],
        chunked: false,
        steps: Vec::new(),
    })
    .await
    .expect("collector")
}

fn env_for(base: &str) -> Vec<(&'static str, &str)> {
    vec![
        ("CODA__LLM__PROVIDER", "openai"),
        ("CODA__LLM__OPENAI__BASE_URL", base),
        ("CODA__LLM__OPENAI__MODEL", "test-model"),
    ]
}

/// One text turn; its turn id once its `latency_trace` arrived, and the `call_id` of its
/// `tool_result` if a tool answered it.
async fn turn_of(c: &mut Client, text: &str) -> (String, Option<String>) {
    let r = c.request("text_input", json!({"text": text})).await;
    assert_eq!(ty(&r), "command_result", "{r}");
    let turn = r["data"]["data"]["turn_id"]
        .as_str()
        .expect("turn_id")
        .to_string();
    let mut call = None;
    loop {
        let v = c.recv_json(Duration::from_secs(30)).await;
        if v["data"]["turn_id"] != json!(turn) {
            continue;
        }
        if ty(&v) == "tool_result" {
            call = v["data"]["call_id"].as_str().map(str::to_string);
        }
        if ty(&v) == "latency_trace" {
            return (turn, call);
        }
    }
}

async fn one_turn(server: &Server) -> String {
    turn_of(&mut server.client().await, "say hello").await.0
}

/// Threads of `pid` whose name starts with `OpenTelemetry` (the SDK's exporter threads).
fn exporter_threads(pid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .filter(|name| name.starts_with("OpenTelemetry"))
        .count()
}

fn attrs(kv: &[KeyValue]) -> HashMap<String, any_value::Value> {
    kv.iter()
        .filter_map(|a| {
            Some((
                a.key.clone(),
                a.value.as_ref().and_then(|v| v.value.clone())?,
            ))
        })
        .collect()
}

fn string(a: &HashMap<String, any_value::Value>, k: &str) -> Option<String> {
    match a.get(k) {
        Some(any_value::Value::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

fn int(a: &HashMap<String, any_value::Value>, k: &str) -> Option<i64> {
    match a.get(k) {
        Some(any_value::Value::IntValue(i)) => Some(*i),
        _ => None,
    }
}

fn bodies<'a>(reqs: &'a [Recorded], path: &str) -> Vec<&'a Recorded> {
    reqs.iter().filter(|r| r.path() == path).collect()
}

// Multi-threaded: the collector must answer while the test thread waits for the server
// to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_is_exported_as_a_span_tree_with_genai_attributes_and_metrics_follow() {
    let (llm, otlp) = (model().await, collector().await);
    let base = format!("{}/v1", llm.url());
    let endpoint = otlp.url();
    let mut env = env_for(&base);
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()));
    env.push(("CODA__TELEMETRY__EXPORT_INTERVAL_S", "0.5"));
    env.push(("CODA__TELEMETRY__SERVICE_NAME", "coda-under-test"));
    let mut server = Server::start(&[], &env);
    assert_eq!(
        exporter_threads(server.pid()),
        2,
        "a batch span processor and a periodic metric reader"
    );
    let mut c = server.client().await;
    let (turn, _) = turn_of(&mut c, "say hello").await;
    // The clock tool answers this one, without the model.
    let (tool_turn, call_id) = turn_of(&mut c, "what time is it").await;
    let call_id = call_id.expect("a tool_result with a call_id");
    // SIGTERM: the spans still batched are flushed on the way out.
    let status = server.terminate();
    assert!(status.success(), "{status:?}: {}", server.stderr_text());

    let reqs = otlp.requests();
    let mut spans: Vec<Span> = Vec::new();
    let mut services = Vec::new();
    for r in bodies(&reqs, "/v1/traces") {
        assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
        let req = ExportTraceServiceRequest::decode(r.body.as_slice()).expect("protobuf traces");
        for rs in req.resource_spans {
            if let Some(res) = &rs.resource {
                services.extend(string(&attrs(&res.attributes), "service.name"));
            }
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
    }
    assert!(
        services.iter().all(|s| s == "coda-under-test"),
        "{services:?}"
    );
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    let root = spans
        .iter()
        .find(|s| {
            s.name == "turn" && string(&attrs(&s.attributes), "coda.turn_id") == Some(turn.clone())
        })
        .unwrap_or_else(|| panic!("no root span for {turn} in {names:?}"));
    assert!(root.parent_span_id.is_empty(), "the turn span is a root");
    let ra = attrs(&root.attributes);
    assert!(string(&ra, "coda.session_id").is_some_and(|s| !s.is_empty()));
    assert_eq!(string(&ra, "coda.source").as_deref(), Some("text"));
    assert!(int(&ra, "coda.seq").is_some(), "{ra:?}");
    let children: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id == root.span_id)
        .collect();
    let child = |name: &str| {
        children
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no child {name} of the turn span in {names:?}"))
    };
    for s in &children {
        assert_eq!(s.trace_id, root.trace_id, "one trace per turn");
        assert!(s.start_time_unix_nano >= root.start_time_unix_nano);
        assert!(
            s.end_time_unix_nano <= root.end_time_unix_nano,
            "{} ends inside the turn",
            s.name
        );
    }
    child("intent");
    child("memory context");
    child("tts");
    let chat = child("chat test-model");
    let ca = attrs(&chat.attributes);
    assert_eq!(
        string(&ca, "gen_ai.operation.name").as_deref(),
        Some("chat")
    );
    assert_eq!(
        string(&ca, "gen_ai.provider.name").as_deref(),
        Some("openai")
    );
    assert_eq!(string(&ca, "gen_ai.system").as_deref(), Some("openai"));
    assert_eq!(
        string(&ca, "gen_ai.request.model").as_deref(),
        Some("test-model")
    );
    assert_eq!(
        string(&ca, "gen_ai.response.model").as_deref(),
        Some("test-model")
    );
    assert_eq!(int(&ca, "gen_ai.usage.input_tokens"), Some(12));
    assert_eq!(int(&ca, "gen_ai.usage.output_tokens"), Some(7));
    assert_eq!(string(&ca, "coda.turn_id"), Some(turn.clone()));
    // SpanKind::Client is 3 in OTLP.
    assert_eq!(chat.kind, 3);

    // The tool turn: a tool span under its own root, naming the tool_result's call.
    let tool_root = spans
        .iter()
        .find(|s| {
            s.name == "turn"
                && string(&attrs(&s.attributes), "coda.turn_id") == Some(tool_turn.clone())
        })
        .unwrap_or_else(|| panic!("no root span for {tool_turn} in {names:?}"));
    assert_ne!(tool_root.trace_id, root.trace_id, "a trace per turn");
    let tool = spans
        .iter()
        .find(|s| s.parent_span_id == tool_root.span_id && s.name == "execute_tool clock")
        .unwrap_or_else(|| panic!("no tool span under {tool_turn} in {names:?}"));
    let ta = attrs(&tool.attributes);
    assert_eq!(
        string(&ta, "gen_ai.operation.name").as_deref(),
        Some("execute_tool")
    );
    assert_eq!(string(&ta, "gen_ai.tool.name").as_deref(), Some("clock"));
    assert_eq!(string(&ta, "gen_ai.tool.call.id"), Some(call_id));

    // Metrics: the hub's event counters and the model's token counts.
    let mut metric_names = Vec::new();
    let mut input_tokens = None;
    for r in bodies(&reqs, "/v1/metrics") {
        let req = ExportMetricsServiceRequest::decode(r.body.as_slice()).expect("protobuf metrics");
        for rm in req.resource_metrics {
            for sm in rm.scope_metrics {
                for m in sm.metrics {
                    if m.name == "gen_ai.client.token.usage.input" {
                        use opentelemetry_proto::tonic::metrics::v1::{
                            metric::Data, number_data_point::Value,
                        };
                        if let Some(Data::Sum(sum)) = &m.data {
                            for p in &sum.data_points {
                                if let Some(Value::AsInt(v)) = p.value {
                                    input_tokens = Some(v);
                                }
                            }
                        }
                    }
                    metric_names.push(m.name);
                }
            }
        }
    }
    assert!(
        metric_names.iter().any(|n| n == "coda.events"),
        "{metric_names:?}"
    );
    assert_eq!(input_tokens, Some(12), "{metric_names:?}");
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_exported_and_no_exporter_runs() {
    let (llm, otlp) = (model().await, collector().await);
    let base = format!("{}/v1", llm.url());
    let mut server = Server::start(&[], &env_for(&base));
    assert_eq!(exporter_threads(server.pid()), 0);
    one_turn(&server).await;
    assert_eq!(exporter_threads(server.pid()), 0);
    server.terminate();
    assert!(otlp.requests().is_empty(), "{:?}", otlp.requests());
}

/// The whisper model `scripts/setup` installs (or `CODA_TEST_WHISPER`).
#[cfg(feature = "stt")]
fn whisper_model() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("CODA_TEST_WHISPER").filter(|p| !p.is_empty()) {
        return p.into();
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".local/share")))
        .expect("HOME");
    let p = base.join("coda/models/whisper-tiny.en.bin");
    assert!(
        p.is_file(),
        "{} is missing: run `coda models pull whisper-tiny.en` (scripts/setup does)",
        p.display()
    );
    p
}

/// A spoken turn: the Stt actor opens the turn's root span, with the transcription as
/// its first child, and the orchestrator's stages follow under the same root.
#[cfg(feature = "stt")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoken_turn_has_its_transcription_under_the_same_root() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message as WsMessage;

    let (llm, otlp) = (model().await, collector().await);
    let base = format!("{}/v1", llm.url());
    let endpoint = otlp.url();
    let whisper = whisper_model();
    let mut env = env_for(&base);
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()));
    env.push(("CODA__STT__MODEL", whisper.to_str().expect("utf-8")));
    let mut server = Server::start(&[], &env);

    let wav = tempfile::Builder::new()
        .suffix(".wav")
        .tempfile()
        .expect("tempfile")
        .into_temp_path();
    let status = std::process::Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "160", "-w"])
        .arg(&wav)
        .arg("Why is the sky blue?")
        .status()
        .expect("espeak-ng runs (scripts/setup installs it)");
    assert!(status.success());
    let samples = coda_actors::audio::convert::read_wav_16k(&wav).expect("wav");
    let mut c = server.client().await;
    c.send_cmd(
        "stt_start",
        json!({"mode": "push_to_talk", "source": "client"}),
        Some("start"),
    )
    .await;
    for chunk in samples.chunks(1600) {
        let pcm: Vec<u8> = chunk
            .iter()
            .flat_map(|s| ((s.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes())
            .collect();
        c.ws.send(WsMessage::binary(pcm)).await.expect("send audio");
    }
    c.send_cmd("stt_stop", json!({}), Some("stop")).await;
    let mut turn = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let v = c.next_json(left).await.expect("the spoken turn's events");
        if ty(&v) == "stt_result" {
            turn = v["data"]["turn_id"].as_str().map(str::to_string);
        }
        if ty(&v) == "latency_trace"
            && turn.is_some()
            && v["data"]["turn_id"].as_str() == turn.as_deref()
        {
            break;
        }
    }
    let turn = turn.expect("stt_result with a turn id");
    assert!(server.terminate().success());

    let mut spans: Vec<Span> = Vec::new();
    for r in bodies(&otlp.requests(), "/v1/traces") {
        let req = ExportTraceServiceRequest::decode(r.body.as_slice()).expect("protobuf traces");
        for rs in req.resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
    }
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    let root = spans
        .iter()
        .find(|s| {
            s.name == "turn" && string(&attrs(&s.attributes), "coda.turn_id") == Some(turn.clone())
        })
        .unwrap_or_else(|| panic!("no root span for {turn} in {names:?}"));
    assert_eq!(
        string(&attrs(&root.attributes), "coda.source").as_deref(),
        Some("voice")
    );
    let child = |name: &str| {
        spans
            .iter()
            .find(|s| s.parent_span_id == root.span_id && s.name == name)
            .unwrap_or_else(|| panic!("no child {name} of {turn} in {names:?}"))
    };
    let stt = child("stt");
    assert!(stt.end_time_unix_nano > stt.start_time_unix_nano);
    // The transcription comes first, then the model.
    assert!(child("chat test-model").start_time_unix_nano >= stt.end_time_unix_nano);
}

/// The model calls a tool in a turn: one `chat` span per round and the call's
/// `execute_tool` span between them, all children of the turn, the call named by the
/// model's call id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_models_tool_call_is_a_span_between_its_two_rounds() {
    let llm = ScriptedServer::start(|r| {
        let answered = r.json()["messages"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["role"] == "tool"));
        if answered {
            Reply::stream(
                "text/event-stream",
                vec![
                    Step::Write(sse_delta("It is late.")),
                    Step::Write(sse_stop()),
                ],
            )
        } else {
            Reply::stream(
                "text/event-stream",
                vec![Step::Write(sse_tool_call("call-7", "clock", &json!({})))],
            )
        }
    })
    .await
    .expect("model server");
    let otlp = collector().await;
    let base = format!("{}/v1", llm.url());
    let endpoint = otlp.url();
    let mut env = env_for(&base);
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()));
    let mut server = Server::start(&[], &env);
    let mut c = server.client().await;
    // Not a rule's intent: the model answers, calling the clock.
    let (turn, call) = turn_of(&mut c, "should I go to bed").await;
    assert_eq!(call.as_deref(), Some("call-7"));
    assert!(server.terminate().success());

    let mut spans: Vec<Span> = Vec::new();
    for r in bodies(&otlp.requests(), "/v1/traces") {
        let req = ExportTraceServiceRequest::decode(r.body.as_slice()).expect("protobuf traces");
        for rs in req.resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
    }
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    let root = spans
        .iter()
        .find(|s| {
            s.name == "turn" && string(&attrs(&s.attributes), "coda.turn_id") == Some(turn.clone())
        })
        .unwrap_or_else(|| panic!("no root span for {turn} in {names:?}"));
    let mut chats: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id == root.span_id && s.name == "chat test-model")
        .collect();
    chats.sort_by_key(|s| s.start_time_unix_nano);
    assert_eq!(chats.len(), 2, "{names:?}");
    let tool = spans
        .iter()
        .find(|s| s.parent_span_id == root.span_id && s.name == "execute_tool clock")
        .unwrap_or_else(|| panic!("no tool span in {names:?}"));
    let ta = attrs(&tool.attributes);
    assert_eq!(
        string(&ta, "gen_ai.tool.call.id").as_deref(),
        Some("call-7")
    );
    assert!(tool.start_time_unix_nano >= chats[0].end_time_unix_nano);
    assert!(tool.end_time_unix_nano <= chats[1].start_time_unix_nano);
    assert_eq!(
        string(
            &attrs(&chats[0].attributes),
            "gen_ai.response.finish_reasons"
        )
        .as_deref(),
        Some("tool_calls")
    );
}
