//! Hostile clients against the real binary: frame headers that lie about their size,
//! reserved bits, oversize fragments, headers that are too long or repeated, filters that
//! grow, garbage tokens, out-of-range lifetimes, and replies held behind a replay.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Server frames until a close: the text messages, then the close code and reason.
async fn read_until_close(
    s: &mut TcpStream,
    limit: Duration,
) -> (Vec<Value>, Option<(u16, String)>) {
    let mut buf = Vec::new();
    let mut texts = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        // Whole frames in `buf` first (server frames are unmasked).
        while buf.len() >= 2 {
            let (len, at) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                127 if buf.len() >= 10 => {
                    let mut l = [0u8; 8];
                    l.copy_from_slice(&buf[2..10]);
                    (u64::from_be_bytes(l) as usize, 10)
                }
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if buf.len() < at + len {
                break;
            }
            let payload = buf[at..at + len].to_vec();
            let opcode = buf[0] & 0x0f;
            buf.drain(..at + len);
            match opcode {
                1 => texts.push(serde_json::from_slice(&payload).expect("server JSON")),
                8 => {
                    let close = (payload.len() >= 2).then(|| {
                        (
                            u16::from_be_bytes([payload[0], payload[1]]),
                            String::from_utf8_lossy(&payload[2..]).into_owned(),
                        )
                    });
                    return (texts, close);
                }
                _ => {}
            }
        }
        let mut chunk = [0u8; 65536];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => panic!("no close within {limit:?}; got {texts:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return (texts, None),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test]
async fn a_header_declaring_a_gigabyte_is_refused_before_its_payload() {
    for auth in [false, true] {
        let args: &[&str] = if auth { &["--auth"] } else { &[] };
        let server = Server::start(args, &[]);
        let before = rss_kib(server.pid());
        let mut s = raw_upgrade(server.port, "").await;
        s.write_all(&header(0x81, 1 << 30)).await.expect("header");
        // The server stops reading; what it does not read cannot cost it memory.
        let junk = vec![b'x'; 1 << 20];
        for _ in 0..64 {
            if !write_within(&mut s, &junk, Duration::from_millis(200)).await {
                break;
            }
        }
        let (_, close) = read_until_close(&mut s, RECV_TIMEOUT).await;
        let (code, reason) = close.expect("a close frame");
        assert_eq!(code, 1009, "{reason}");
        assert!(reason.contains("1073741824"), "{reason}");
        let grew = rss_kib(server.pid()).saturating_sub(before);
        assert!(grew < 16 * 1024, "RSS grew {grew} KiB (auth {auth})");
        let mut c = server.client().await;
        if auth {
            let token = server.boot_token();
            c.send_cmd("auth", json!({"token": token}), Some("a")).await;
            c.wait_reply("a", RECV_TIMEOUT).await;
        }
        c.ping().await;
    }
}

#[tokio::test]
async fn reserved_bits_fail_the_connection_at_once_with_1002() {
    let server = Server::start(&[], &[]);
    let mut s = raw_upgrade(server.port, "").await;
    // A ping first, in the same write: its answer still comes, then the close.
    let mut bytes = frame(0x81, br#"{"id":"p","type":"ping","data":{}}"#);
    bytes.extend(frame(0xC1, br#"{"type":"ping"}"#)); // RSV1 set
    s.write_all(&bytes).await.expect("write");
    let (texts, close) = read_until_close(&mut s, RECV_TIMEOUT).await;
    let (code, reason) = close.expect("a close frame");
    assert_eq!(code, 1002, "{reason}");
    assert!(reason.contains("reserved"), "{reason}");
    assert!(
        texts.iter().any(|v| v["data"]["id"] == json!("p")),
        "the ping before it is answered: {texts:?}"
    );
    assert!(
        !texts.iter().any(|v| v["data"]["code"] == json!("bad_json")),
        "{texts:?}"
    );
}

#[tokio::test]
async fn fragments_adding_up_past_the_cap_close_with_1009() {
    let server = Server::start(&[], &[("CODA__SERVER__MAX_FRAME_BYTES", "4096")]);
    let mut s = raw_upgrade(server.port, "").await;
    let piece = vec![b' '; 10_000];
    let mut bytes = frame(0x01, &piece); // text, more to come
    bytes.extend(frame(0x00, &piece)); // 20,000 > 4 x 4096
    s.write_all(&bytes).await.expect("write");
    let (_, close) = read_until_close(&mut s, RECV_TIMEOUT).await;
    let (code, reason) = close.expect("a close frame");
    assert_eq!(code, 1009, "{reason}");
    assert!(reason.contains("fragmented"), "{reason}");
}

#[tokio::test]
async fn replies_held_behind_a_replay_go_out_before_the_close() {
    let server = Server::start(&[], &[]);
    let mut s = raw_upgrade(server.port, "").await;
    let mut bytes = frame(0x81, br#"{"id":"p","type":"ping","data":{}}"#);
    bytes.extend(frame(
        0x81,
        br#"{"id":"h","type":"hello","data":{"protocol_version":"9.0"}}"#,
    ));
    s.write_all(&bytes).await.expect("write");
    let (texts, close) = read_until_close(&mut s, RECV_TIMEOUT).await;
    assert_eq!(close.map(|c| c.0), Some(1002));
    let ids: Vec<&Value> = texts.iter().map(|v| &v["data"]["id"]).collect();
    assert!(ids.contains(&&json!("p")), "ping answered: {texts:?}");
    assert!(ids.contains(&&json!("h")), "hello answered: {texts:?}");
}

/// The next refusal a `connection_status` watcher sees is small, whatever was sent.
async fn refusal_is_short(watcher: &mut Client) {
    let ev = watcher
        .wait_for("a refusal", RECV_TIMEOUT, |v| {
            ty(v) == "connection_status" && v["data"]["state"] == json!("refused")
        })
        .await;
    let len = ev.to_string().len();
    assert!(len < 1024, "{len} bytes: {ev}");
}

#[tokio::test]
async fn echoed_hosts_and_origins_are_cut_and_duplicates_refused() {
    let server = Server::start(&[], &[]);
    let (mut watcher, _) = server.hello_client().await;
    watcher
        .request("subscribe", json!({"types": ["connection_status"]}))
        .await;
    let long = "h".repeat(100_000);
    let (status, body) = http_get(server.port, "/api/system", Some(&long)).await;
    assert_eq!(status, 403);
    assert!(body.len() < 400, "{} bytes", body.len());
    refusal_is_short(&mut watcher).await;

    let origin = format!("http://{}", "o".repeat(100_000));
    let e = try_connect(&server.url(), &[("Origin", origin.as_str())])
        .await
        .expect_err("refused");
    assert_eq!(refused_status(&e), Some(403));
    refusal_is_short(&mut watcher).await;

    // Two Host headers, two Origin headers: 400.
    for extra in [
        "Host: 127.0.0.1\r\n".to_string(),
        format!(
            "Origin: http://127.0.0.1:{0}\r\nOrigin: http://127.0.0.1:{0}\r\n",
            server.port
        ),
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", server.port))
            .await
            .unwrap();
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{extra}Upgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            server.port
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = vec![0u8; 4096];
        let n = bounded("refusal", RECV_TIMEOUT, s.read(&mut out))
            .await
            .unwrap();
        let head = String::from_utf8_lossy(&out[..n]);
        assert!(head.starts_with("HTTP/1.1 400"), "{extra}: {head}");
    }
}

#[tokio::test]
async fn filters_dedupe_refuse_unknown_patterns_and_stay_bounded() {
    let server = Server::start(&[], &[]);
    let (mut c, _) = server.hello_client().await;
    for _ in 0..20 {
        let r = c.request("subscribe", json!({"types": ["stt_*"]})).await;
        assert_eq!(ty(&r), "command_result", "{r}");
    }
    let r = c
        .request("unsubscribe", json!({"types": ["stt_interim"]}))
        .await;
    assert_eq!(r["data"]["data"]["include"], json!(["stt_*"]), "{r}");
    assert_eq!(r["data"]["data"]["exclude"], json!(["stt_interim"]), "{r}");
    // An unknown exclusion is refused and the earlier one is kept.
    let r = c
        .request("unsubscribe", json!({"types": ["nonsense"]}))
        .await;
    assert_eq!(r["data"]["code"], json!("invalid_data"), "{r}");
    let r = c
        .request("unsubscribe", json!({"types": ["stt_result"]}))
        .await;
    assert_eq!(
        r["data"]["data"]["exclude"],
        json!(["stt_interim", "stt_result"]),
        "{r}"
    );
    let types = r["data"]["data"]["types"].as_array().unwrap();
    assert!(!types.contains(&json!("stt_interim")), "{r}");
}

#[tokio::test]
async fn a_garbage_token_is_refused_even_with_auth_off() {
    let server = Server::start(&[], &[]);
    let mut c = server.client().await;
    c.send_cmd("auth", json!({"token": "garbage"}), Some("a"))
        .await;
    let (reply, close) = bounded("refusal", RECV_TIMEOUT, async {
        let reply = c.wait_reply("a", RECV_TIMEOUT).await;
        loop {
            match c.next_json(RECV_TIMEOUT).await {
                Ok(_) => continue,
                Err(End::Closed(f)) => return (reply, f),
                Err(e) => panic!("{e:?}"),
            }
        }
    })
    .await;
    assert_eq!(reply["data"]["code"], json!("unauthorized"), "{reply}");
    assert_eq!(close.map(|f| f.0), Some(1008));
    // The right token is still welcome.
    let mut c = server.client().await;
    let r = c
        .request("auth", json!({"token": server.boot_token()}))
        .await;
    assert_eq!(r["data"]["data"]["authenticated"], json!(true), "{r}");
}

#[tokio::test]
async fn an_absurd_token_lifetime_is_invalid_data_not_a_panic() {
    let server = Server::start(&[], &[]);
    let token = server.boot_token();
    let auth = format!("Bearer {token}");
    let mut c = Client::connect(&server.url(), &[("Authorization", auth.as_str())]).await;
    for (ty_, data) in [
        ("token_create", json!({"name": "x", "expires_s": 1e300})),
        ("token_rotate", json!({"token": "x", "expires_s": 1e300})),
        ("token_create", json!({"name": "y", "expires_s": -1})),
    ] {
        let r = c.request(ty_, data).await;
        assert_eq!(r["data"]["code"], json!("invalid_data"), "{r}");
    }
    let r = c
        .request("token_create", json!({"name": "ok", "expires_s": 3600}))
        .await;
    assert_eq!(ty(&r), "command_result", "{r}");
    c.ping().await;
    assert_eq!(server.system_info().await["clients"], json!(1));
}

#[tokio::test]
async fn a_reader_that_stalls_is_cut_by_bytes_told_why_and_can_resume() {
    let server = Server::start(&[], &[("CODA__SERVER__MAX_QUEUE_BYTES", "65536")]);
    // Fill the resume window: every connection adds two connection_status events.
    for _ in 0..150 {
        let c = server.client().await;
        drop(c);
    }
    let before = rss_kib(server.pid());
    let mut s = raw_upgrade(server.port, "").await;
    let resume = frame(0x81, br#"{"type":"resume","data":{"last_seq":0}}"#);
    // Never reading: replies pile up until the byte bound cuts the connection.
    for _ in 0..200 {
        if !write_within(&mut s, &resume, Duration::from_millis(100)).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let grew = rss_kib(server.pid()).saturating_sub(before);
    assert!(grew < 32 * 1024, "RSS grew {grew} KiB");
    let (texts, close) = read_until_close(&mut s, Duration::from_secs(30)).await;
    let (code, reason) = close.expect("told why");
    assert_eq!(code, 1013, "{reason}");
    assert!(reason.contains("slow consumer"), "{reason}");
    let last = texts.iter().map(seq).max().unwrap_or(0);
    // And it can resume where it stopped.
    let mut c = server.client().await;
    let r = c.request("resume", json!({"last_seq": last})).await;
    assert_eq!(ty(&r), "command_result", "{r}");
}

#[tokio::test]
async fn a_ping_flood_is_not_answered_past_the_rate_limit() {
    let server = Server::start(
        &[],
        &[
            ("CODA__SERVER__RATE_LIMIT_PER_S", "5"),
            ("CODA__SERVER__RATE_LIMIT_BURST", "10"),
        ],
    );
    let mut s = raw_upgrade(server.port, "").await;
    let mut bytes = Vec::new();
    for _ in 0..200 {
        bytes.extend(frame(0x89, b"p"));
    }
    s.write_all(&bytes).await.expect("write");
    // Count pongs (opcode 0xA) for a second.
    let mut pongs = 0;
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    let mut chunk = [0u8; 65536];
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let mut i = 0;
    while i + 2 <= buf.len() {
        let len = (buf[i + 1] & 0x7f) as usize; // server frames here are all short
        if buf[i] & 0x0f == 0xA {
            pongs += 1;
        }
        i += 2 + len;
    }
    assert!((10..=20).contains(&pongs), "{pongs} pongs for 200 pings");
}

#[tokio::test]
async fn one_address_cannot_hold_or_churn_unbounded_connections() {
    let server = Server::start(
        &[],
        &[
            ("CODA__SERVER__MAX_CONNECTIONS_PER_IP", "5"),
            ("CODA__SERVER__CONNECT_RATE_PER_IP", "1000"),
        ],
    );
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(server.client().await);
    }
    let e = try_connect(&server.url(), &[]).await.expect_err("a sixth");
    assert_eq!(refused_status(&e), Some(429));
    held.pop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = server.client().await;
    c.ping().await;

    let server = Server::start(&[], &[("CODA__SERVER__CONNECT_RATE_PER_IP", "5")]);
    let mut refused = 0;
    for _ in 0..30 {
        match try_connect(&server.url(), &[]).await {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(refused_status(&e), Some(429));
                refused += 1;
            }
        }
    }
    assert!(refused >= 15, "{refused} of 30 refused at 5/s");
}

#[tokio::test]
async fn binary_frames_have_a_byte_budget() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let server = Server::start(&[], &[]);
    let mut c = server.client().await;
    // 1.8 MB at once: past the 960 KB burst.
    for _ in 0..30 {
        c.ws.send(Message::binary(vec![0u8; 60_000]))
            .await
            .expect("send");
    }
    let limited = c
        .wait_for("rate_limited", RECV_TIMEOUT, |v| {
            ty(v) == "command_error" && v["data"]["code"] == json!("rate_limited")
        })
        .await;
    assert!(
        limited["data"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("binary frames")),
        "{limited}"
    );
    c.ping().await;
}
