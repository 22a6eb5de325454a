//! Commands: answers, error codes, limits.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Waits for a `command_error` and checks its code and id.
async fn expect_error(c: &mut Client, code: &str, id: Option<&str>) -> Value {
    let v = c
        .wait_for(&format!("command_error {code}"), RECV_TIMEOUT, |v| {
            ty(v) == "command_error"
        })
        .await;
    assert_envelope(&v);
    assert_eq!(v["data"]["code"], json!(code), "{v}");
    assert_eq!(v["data"]["id"], json!(id), "{v}");
    assert!(
        v["data"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    v
}

#[tokio::test]
async fn bad_frames_get_coded_errors_and_the_connection_survives() {
    let server = Server::start(&[], &[]);
    let (mut c, _) = server.hello_client().await;
    c.wait_type("replay", RECV_TIMEOUT).await;

    c.send_text("{\"type\": \"ping\",").await;
    expect_error(&mut c, "bad_json", None).await;
    c.ping().await;

    c.send_text(r#"{"id":"u-1","type":"frobnicate","data":{}}"#)
        .await;
    expect_error(&mut c, "unknown_command", Some("u-1")).await;
    c.ping().await;

    c.send_text(r#"{"type":"frobnicate"}"#).await;
    expect_error(&mut c, "unknown_command", None).await;

    c.send_text(r#"{"id":"w-1","type":"subscribe","data":{"types":5}}"#)
        .await;
    expect_error(&mut c, "invalid_data", Some("w-1")).await;
    c.ping().await;

    c.send_text(r#"{"id":"w-2","type":"ping","data":[1,2]}"#)
        .await;
    expect_error(&mut c, "invalid_data", Some("w-2")).await;

    c.send_text("[1,2,3]").await;
    expect_error(&mut c, "invalid_data", None).await;
    c.ping().await;

    // 300 KB: over the 256 KiB limit, under 4x it.
    let big = format!(
        r#"{{"id":"big","type":"ping","data":{{"pad":"{}"}}}}"#,
        "x".repeat(300 * 1024)
    );
    c.send_text(big).await;
    let v = expect_error(&mut c, "too_large", None).await;
    assert!(
        v["data"]["message"].as_str().unwrap().contains("262144"),
        "{v}"
    );
    c.ping().await;

    // Binary audio outside stt_start/stt_stop.
    c.ws.send(Message::binary(vec![0u8; 3200])).await.unwrap();
    expect_error(&mut c, "invalid_data", None).await;
    c.ping().await;

    // Invalid UTF-8 in a text frame cannot be sent by this client library; a binary
    // frame over the limit is `too_large`.
    c.ws.send(Message::binary(vec![0u8; 300 * 1024]))
        .await
        .unwrap();
    expect_error(&mut c, "too_large", None).await;
    c.ping().await;
}

#[tokio::test]
async fn ping_with_id_is_answered_exactly_once() {
    let server = Server::start(&["--emit-synthetic", "100"], &[]);
    let mut c = server.client().await;
    c.send_cmd("ping", json!({}), Some("p-unique")).await;
    let mut answers = 0;
    let mut others = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.next_json(left).await {
            Ok(v) => {
                assert_envelope(&v);
                if v["data"]["id"] == json!("p-unique") {
                    assert_eq!(ty(&v), "command_result", "{v}");
                    assert_eq!(v["data"]["ok"], json!(true), "{v}");
                    assert!(v["data"]["data"]["pong"].is_number(), "{v}");
                    answers += 1;
                } else {
                    others += 1;
                }
            }
            Err(End::Timeout) => break,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(answers, 1);
    assert!(others > 0, "the stream kept flowing");
    // Without an id, the answer carries id null.
    c.send_cmd("ping", json!({}), None).await;
    let v = c
        .wait_for("id-less ping answer", RECV_TIMEOUT, |v| {
            ty(v) == "command_result"
        })
        .await;
    assert_eq!(v["data"]["id"], Value::Null, "{v}");
}

#[tokio::test]
async fn info_and_config_with_and_without_id() {
    let server = Server::start(&[], &[]);
    let (mut c, hello) = server.hello_client().await;
    assert_eq!(hello["protocol_version"], json!("1.0"));
    assert_eq!(hello["server_version"], json!(env!("CARGO_PKG_VERSION")));
    assert!(
        hello["epoch"].is_string() && hello["last_seq"].is_u64(),
        "{hello}"
    );

    c.send_cmd("get_system_info", json!({}), None).await;
    let info = c.wait_type("system_info", RECV_TIMEOUT).await;
    assert_envelope(&info);
    let d = &info["data"];
    assert_eq!(d["server_version"], json!(env!("CARGO_PKG_VERSION")), "{d}");
    assert_eq!(d["protocol_version"], json!("1.0"));
    assert_eq!(d["clients"], json!(1), "{d}");
    assert_eq!(d["auth_required"], json!(false));
    assert_eq!(d["listen"], json!(format!("127.0.0.1:{}", server.port)));
    assert!(d["components"].to_string().contains("event_hub"), "{d}");

    let r = c.request("get_system_info", json!({})).await;
    assert_eq!(ty(&r), "command_result", "{r}");
    assert_eq!(r["data"]["ok"], json!(true));
    assert_eq!(
        r["data"]["data"]["server_version"],
        json!(env!("CARGO_PKG_VERSION"))
    );
    assert!(r["data"]["data"]["uptime_s"].is_number(), "{r}");

    c.send_cmd("get_config", json!({}), None).await;
    let cfg = c.wait_type("config", RECV_TIMEOUT).await;
    assert_envelope(&cfg);
    check_config(&cfg["data"], &server);

    let r = c.request("get_config", json!({})).await;
    assert_eq!(ty(&r), "command_result", "{r}");
    check_config(&r["data"]["data"], &server);
}

fn check_config(d: &Value, server: &Server) {
    // `profile` is omitted when no profile is in use.
    assert!(
        d.get("profile")
            .is_none_or(|p| p.is_string() || p.is_null()),
        "{d}"
    );
    let cfg = &d["config"];
    for section in ["server", "auth", "events", "storage", "log"] {
        assert!(cfg[section].is_object(), "section {section}: {d}");
    }
    assert_eq!(cfg["server"]["max_frame_bytes"], json!(262144));
    assert_eq!(cfg["server"]["port"], json!(0), "the configured port");
    assert_eq!(cfg["auth"]["required"], json!(false));
    assert!(
        cfg["auth"]["token_file"].is_string(),
        "file names are not secrets: {d}"
    );
    // The per-boot secret never appears.
    let text = d.to_string();
    assert!(
        !text.contains(&server.boot_token()),
        "boot token leaked into config"
    );
}

#[tokio::test]
async fn unavailable_commands_say_so() {
    let server = Server::start(&[], &[]);
    let mut c = server.client().await;
    // Listening on the server's input device: a machine without one (CI, this hermetic
    // HOME) says `unavailable`, and then there is nothing to stop.
    let r = c
        .request("stt_start", json!({"mode": "push_to_talk"}))
        .await;
    let stop = c.request("stt_stop", json!({})).await;
    if ty(&r) == "command_error" {
        assert_eq!(r["data"]["code"], json!("unavailable"), "stt_start: {r}");
        assert_eq!(ty(&stop), "command_error", "{stop}");
        assert_eq!(
            stop["data"]["code"],
            json!("invalid_data"),
            "stt_stop: {stop}"
        );
        let m = stop["data"]["message"].as_str().unwrap_or("");
        assert!(m.contains("not listening"), "{stop}");
    } else {
        assert_eq!(ty(&r), "command_result", "{r}");
        assert_eq!(ty(&stop), "command_result", "{stop}");
    }
    // Conversation commands: exactly one answer, a result or an `unavailable` error
    // (this build may have no language model), never silence or a dropped connection.
    for (t, data) in [
        ("text_input", json!({"text": "what time is it"})),
        ("demo_flow", json!({})),
    ] {
        let id = c.fresh_id();
        c.send_cmd(t, data, Some(&id)).await;
        let r = c.wait_reply(&id, RECV_TIMEOUT).await;
        if ty(&r) == "command_error" {
            assert_eq!(r["data"]["code"], json!("unavailable"), "{t}: {r}");
        }
        let again = bounded("no second answer", Duration::from_secs(5), async {
            loop {
                match c.next_json(Duration::from_millis(500)).await {
                    Ok(v) if v["data"]["id"] == json!(id) && is_direct(&v) => return Some(v),
                    Ok(_) => continue,
                    Err(End::Timeout) => return None,
                    Err(e) => panic!("{t}: {e:?}"),
                }
            }
        })
        .await;
        assert!(again.is_none(), "{t} answered twice: {again:?}");
    }
    c.ping().await;
}

#[tokio::test]
async fn version_mismatch_closes_with_1002() {
    let server = Server::start(&[], &[]);
    let mut c = server.client().await;
    c.send_cmd("hello", json!({"protocol_version": "2.0"}), Some("v"))
        .await;
    let mut saw_system_error = false;
    let mut saw_command_error = false;
    let close = bounded(
        "close after version mismatch",
        Duration::from_secs(20),
        async {
            loop {
                match c.next_json(RECV_TIMEOUT).await {
                    Ok(v) => match ty(&v) {
                        "system_error" => {
                            assert_eq!(v["data"]["code"], json!("version_mismatch"), "{v}");
                            saw_system_error = true;
                        }
                        "command_error" => {
                            assert_eq!(v["data"]["code"], json!("version_mismatch"), "{v}");
                            assert_eq!(v["data"]["id"], json!("v"), "{v}");
                            saw_command_error = true;
                        }
                        _ => {}
                    },
                    Err(End::Closed(f)) => return f,
                    Err(e) => panic!("expected a close frame, got {e:?}"),
                }
            }
        },
    )
    .await;
    assert!(saw_system_error && saw_command_error);
    assert_eq!(close.map(|f| f.0), Some(1002));
}

#[tokio::test]
async fn a_frame_far_over_the_limit_closes_with_1009() {
    let server = Server::start(&[], &[]);
    let c = server.client().await;
    let (mut sink, mut stream) = c.ws.split();
    // 1.1 MB > 4 x 262144: the server refuses it from the frame header.
    let huge = "x".repeat(1_100_000);
    let writer = tokio::spawn(async move {
        let _ = sink.send(Message::text(huge)).await;
        sink
    });
    let close = bounded("close after a huge frame", Duration::from_secs(20), async {
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(Message::Close(f)) => return f.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(e) => panic!("connection failed without a close frame: {e}"),
            }
        }
        None
    })
    .await;
    assert_eq!(close, Some(1009));
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    // The server is fine.
    let mut d = server.client().await;
    d.ping().await;
}

#[tokio::test]
async fn rate_limit_drops_a_flood_then_recovers() {
    let server = Server::start(
        &[],
        &[
            ("CODA__SERVER__RATE_LIMIT_PER_S", "5"),
            ("CODA__SERVER__RATE_LIMIT_BURST", "5"),
        ],
    );
    let mut c = server.client().await;
    for i in 0..50 {
        c.send_cmd("ping", json!({}), Some(&format!("f-{i}"))).await;
    }
    let mut answered = 0;
    let mut limited = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1200);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.next_json(left).await {
            Ok(v) if ty(&v) == "command_result" => answered += 1,
            Ok(v) if ty(&v) == "command_error" => {
                assert_eq!(v["data"]["code"], json!("rate_limited"), "{v}");
                limited += 1;
            }
            Ok(_) => {}
            Err(End::Timeout) => break,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(limited >= 1, "no rate_limited error");
    assert!(answered < 50, "all 50 answered despite the limit");
    assert!(answered >= 4, "the burst is answered: {answered}");
    assert!(
        limited <= 2,
        "rate_limited notices are throttled, not one per frame: {limited}"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.ping().await;
}

#[tokio::test]
async fn raw_frames_invalid_utf8_and_fragments() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let server = Server::start(&[], &[]);
    let mut c = server.client().await;

    // A text frame that is not UTF-8: bad_json, and the connection goes on.
    let bad = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    c.ws.send(Message::Frame(bad)).await.unwrap();
    expect_error(&mut c, "bad_json", None).await;
    c.ping().await;

    // A command split over a text frame and a continuation frame is one command.
    let first = Frame::message(
        &b"{\"id\":\"frag\",\"ty"[..],
        OpCode::Data(Data::Text),
        false,
    );
    let rest = Frame::message(&b"pe\":\"ping\"}"[..], OpCode::Data(Data::Continue), true);
    c.ws.send(Message::Frame(first)).await.unwrap();
    c.ws.send(Message::Frame(rest)).await.unwrap();
    let r = c.wait_reply("frag", RECV_TIMEOUT).await;
    assert_eq!(ty(&r), "command_result", "{r}");
}

#[tokio::test]
async fn persistent_garbage_closes_with_1008() {
    let server = Server::start(&[], &[("CODA__SERVER__MAX_VIOLATIONS", "5")]);
    let mut c = server.client().await;
    // A valid command resets the count.
    for _ in 0..4 {
        c.send_text("nope").await;
    }
    c.ping().await;
    for _ in 0..6 {
        c.send_text("nope").await;
    }
    let mut errors = 0;
    let close = bounded("close after garbage", Duration::from_secs(20), async {
        loop {
            match c.next_json(RECV_TIMEOUT).await {
                Ok(v) if ty(&v) == "command_error" => {
                    assert_eq!(v["data"]["code"], json!("bad_json"), "{v}");
                    errors += 1;
                }
                Ok(_) => {}
                Err(End::Closed(f)) => return f,
                Err(e) => panic!("{e:?}"),
            }
        }
    })
    .await;
    // (The 4 errors before the ping were skipped while waiting for its answer.) Each of
    // the 6 was answered before the close.
    assert_eq!(errors, 6);
    assert_eq!(close.map(|f| f.0), Some(1008));
}

#[tokio::test]
async fn the_root_path_accepts_websockets_too() {
    let server = Server::start(&[], &[]);
    let mut c = Client::connect(&format!("ws://127.0.0.1:{}/", server.port), &[]).await;
    c.ping().await;
    let (status, body) = server.get("/").await;
    assert_eq!(status, 200);
    assert!(body.contains("/ws"), "{body}");
    let (status, _) = server.get("/no/such/thing").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn heartbeat_drops_silent_clients_only() {
    let server = Server::start(
        &[],
        &[
            ("CODA__SERVER__PING_INTERVAL_S", "0.3"),
            ("CODA__SERVER__PING_TIMEOUT_S", "0.3"),
        ],
    );
    let mut watcher = server.client().await;
    watcher
        .hello(json!({"subscribe": ["connection_status"]}))
        .await;
    let silent = server.client().await; // never reads, never answers pings
    let connected = watcher
        .wait_for("silent client connected", RECV_TIMEOUT, |v| {
            v["data"]["state"] == json!("connected")
        })
        .await;
    let id = connected["data"]["client_id"].as_str().unwrap().to_string();
    let closed = watcher
        .wait_for("silent client dropped", RECV_TIMEOUT, |v| {
            v["data"]["state"] == json!("closed") && v["data"]["client_id"] == json!(id)
        })
        .await;
    assert!(
        closed["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("ping timeout"),
        "{closed}"
    );
    // The watcher answers the server's pings (by reading: the client library replies) and
    // stays connected well past the timeout.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match watcher.next_json(left).await {
            Ok(_) => {}
            Err(End::Timeout) => break,
            Err(e) => panic!("the reading client was dropped: {e:?}"),
        }
    }
    watcher.ping().await;
    drop(silent);
}

/// With a first command other than `hello`, the session code promises "the answer to the
/// command follows the replay on the wire" (actors/src/session/mod.rs, `dispatch`).
#[tokio::test]
async fn first_command_answer_follows_the_replay() {
    let server = Server::start(&[], &[]);
    let mut c = server.client().await;
    c.send_cmd("ping", json!({}), Some("first")).await;
    let v = c.recv_json(RECV_TIMEOUT).await;
    assert_eq!(ty(&v), "replay", "first message: {v}");
    let v = c.recv_json(RECV_TIMEOUT).await;
    assert_eq!(v["data"]["id"], json!("first"), "{v}");
}

/// Two frames written a moment apart must not wait for the client's delayed ACK (Nagle):
/// a first command's answer and the replay both arrive within a few milliseconds.
#[tokio::test]
async fn back_to_back_frames_are_not_delayed() {
    let server = Server::start(&[], &[]);
    let mut times = Vec::new();
    for _ in 0..7 {
        let mut c = server.client().await;
        let t = std::time::Instant::now();
        c.send_cmd("ping", json!({}), Some("a")).await;
        c.wait_reply("a", RECV_TIMEOUT).await;
        // The replay is in the queue right behind (or ahead of) the answer.
        c.wait_type("replay", RECV_TIMEOUT).await;
        times.push(t.elapsed());
    }
    times.sort();
    // The median, so one scheduling hiccup on a busy machine does not decide it.
    assert!(
        times[3] < Duration::from_millis(25),
        "answer + replay took {times:?}"
    );
}

/// After the close handshake the server should close TCP at once (RFC 6455 §7.1.1: the
/// server closes the connection first); it lingers ~1 s instead.
#[tokio::test]
async fn tcp_closes_promptly_after_the_close_handshake() {
    let server = Server::start(&[], &[]);
    let mut c = server.client().await;
    c.ping().await;
    let t = std::time::Instant::now();
    c.ws.close(None).await.unwrap();
    bounded("server EOF", Duration::from_secs(10), async {
        while let Some(Ok(_)) = c.ws.next().await {}
    })
    .await;
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "TCP closed after {:?}",
        t.elapsed()
    );
}

/// A tool turn through the real server: rules route "what time is it" to the clock tool,
/// whose answer is spoken; and the memory viewer commands answer.
#[tokio::test]
async fn tool_turns_and_memory_commands_work() {
    let server = Server::start(&[], &[]);
    let mut c = server.client().await;
    let r = c
        .request("text_input", json!({"text": "what time is it"}))
        .await;
    assert_eq!(ty(&r), "command_result", "{r}");
    let turn = r["data"]["data"]["turn_id"]
        .as_str()
        .expect("turn_id")
        .to_string();
    let intent = c
        .wait_for("intent_result", RECV_TIMEOUT, |v| {
            ty(v) == "intent_result" && v["data"]["turn_id"] == json!(turn)
        })
        .await;
    assert_eq!(intent["data"]["route"], json!("tool"), "{intent}");
    let result = c
        .wait_for("tool_result", RECV_TIMEOUT, |v| {
            ty(v) == "tool_result" && v["data"]["turn_id"] == json!(turn)
        })
        .await;
    assert_eq!(result["data"]["tool"], json!("clock"), "{result}");
    let said = c
        .wait_for("assistant message", RECV_TIMEOUT, |v| {
            ty(v) == "conversation_message"
                && v["data"]["role"] == json!("assistant")
                && v["data"]["turn_id"] == json!(turn)
        })
        .await;
    assert!(
        said["data"]["content"]
            .as_str()
            .unwrap_or("")
            .starts_with("It is "),
        "{said}"
    );
    c.wait_for("latency_trace", RECV_TIMEOUT, |v| {
        ty(v) == "latency_trace" && v["data"]["turn_id"] == json!(turn)
    })
    .await;
    for t in ["memory_list", "memory_search"] {
        let r = c.request(t, json!({"query": "time", "limit": 5})).await;
        assert_eq!(ty(&r), "command_result", "{t}: {r}");
        assert!(r["data"]["data"]["items"].is_array(), "{t}: {r}");
    }
}
