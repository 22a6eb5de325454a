//! Security defaults: loopback-only without auth, tokens, Origin and Host checks, logs.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[test]
fn non_loopback_bind_without_auth_is_refused() {
    let home = Home::new();
    for (args, env) in [
        (vec!["serve", "--host", "0.0.0.0", "--port", "0"], vec![]),
        (
            vec!["serve", "--port", "0"],
            vec![("CODA__SERVER__HOST", "0.0.0.0")],
        ),
    ] {
        let out = run_bounded(home.command(&args, &env), Duration::from_secs(30));
        assert_eq!(out.code, Some(2), "{out:?}");
        assert!(out.stderr.contains("requires token auth"), "{out:?}");
        assert!(!out.stdout.contains("listening"), "{out:?}");
    }
}

/// Reads until the close frame; returns (messages before it, close code).
async fn until_close(c: &mut Client, limit: Duration) -> (Vec<serde_json::Value>, Option<u16>) {
    let mut seen = Vec::new();
    let code = bounded("waiting for close", limit, async {
        loop {
            match c.next_json(limit).await {
                Ok(v) => seen.push(v),
                Err(End::Closed(f)) => return f.map(|f| f.0),
                Err(End::Gone(_)) => return None,
                Err(End::Timeout) => panic!("no close"),
            }
        }
    })
    .await;
    (seen, code)
}

#[tokio::test]
async fn auth_required_without_token_times_out() {
    let server = Server::start(&["--auth"], &[("CODA__AUTH__TIMEOUT_S", "1")]);
    let started = Instant::now();
    let mut c = server.client().await;
    let (seen, code) = until_close(&mut c, Duration::from_secs(15)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed too early"
    );
    assert_eq!(
        seen.len(),
        1,
        "only the error, no events before auth: {seen:?}"
    );
    assert_eq!(ty(&seen[0]), "command_error", "{seen:?}");
    assert_eq!(seen[0]["data"]["code"], json!("unauthorized"));
    assert_eq!(code, Some(1008));

    // A command other than auth first: unauthorized, closed.
    let mut c = server.client().await;
    c.send_cmd("get_config", json!({}), Some("early")).await;
    let (seen, code) = until_close(&mut c, Duration::from_secs(15)).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["data"]["code"], json!("unauthorized"));
    assert_eq!(seen[0]["data"]["id"], json!("early"));
    assert_eq!(code, Some(1008));
}

async fn expect_refused(url: &str, headers: &[(&str, &str)], status: u16) {
    match try_connect(url, headers).await {
        Ok(_) => panic!("upgrade with {headers:?} was accepted; expected HTTP {status}"),
        Err(e) => assert_eq!(refused_status(&e), Some(status), "{headers:?}: {e}"),
    }
}

#[tokio::test]
async fn tokens_are_checked() {
    let home = Home::new();
    let (_, valid) = home.create_token("valid", None);
    let (_, short) = home.create_token("short", Some("1s"));
    let short_created = Instant::now();
    let (revoked_id, revoked) = home.create_token("revoked", None);
    home.revoke_token(&revoked_id);
    let server = Server::start_in(home, &["--auth"], &[]);
    let url = server.url();

    let wrong = "coda_thisIsNotAValidTokenAtAll0000000000000000";
    expect_refused(&url, &[("Authorization", &format!("Bearer {wrong}"))], 401).await;
    expect_refused(
        &url,
        &[(
            "Sec-WebSocket-Protocol",
            &format!("coda.v1, coda.token.{wrong}"),
        )],
        401,
    )
    .await;
    expect_refused(
        &url,
        &[("Authorization", &format!("Bearer {revoked}"))],
        401,
    )
    .await;
    let wait = Duration::from_millis(1600).saturating_sub(short_created.elapsed());
    tokio::time::sleep(wait).await;
    expect_refused(&url, &[("Authorization", &format!("Bearer {short}"))], 401).await;

    // Bearer.
    let mut c = Client::connect(&url, &[("Authorization", &format!("Bearer {valid}"))]).await;
    let r = c.request("get_system_info", json!({})).await;
    assert_eq!(r["data"]["data"]["auth_required"], json!(true), "{r}");

    // Subprotocol: the server picks coda.v1, never echoes the token.
    let c2 = Client::connect(
        &url,
        &[(
            "Sec-WebSocket-Protocol",
            &format!("coda.v1, coda.token.{valid}"),
        )],
    )
    .await;
    let echoed = c2
        .response
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(echoed.as_deref(), Some("coda.v1"));
    let mut c2 = c2;
    c2.ping().await;

    // First message.
    let mut c3 = server.client().await;
    let r = c3.request("auth", json!({"token": valid})).await;
    assert_eq!(ty(&r), "command_result", "{r}");
    assert_eq!(r["data"]["data"]["authenticated"], json!(true), "{r}");
    c3.ping().await;
    c3.wait_type("replay", RECV_TIMEOUT).await;

    // A wrong first message: unauthorized, closed.
    let mut c4 = server.client().await;
    c4.send_cmd("auth", json!({"token": wrong}), Some("a"))
        .await;
    let (seen, code) = until_close(&mut c4, Duration::from_secs(15)).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["data"]["code"], json!("unauthorized"), "{seen:?}");
    assert_eq!(seen[0]["data"]["id"], json!("a"));
    assert_eq!(code, Some(1008));
}

#[tokio::test]
async fn the_per_boot_token_file_is_private_and_works() {
    let server = Server::start(&["--auth"], &[]);
    let path = server.token_file();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path)
            .expect("token file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    }
    let secret = server.boot_token();
    assert!(secret.len() >= 32, "a real secret");
    let mut c = Client::connect(
        &server.url(),
        &[("Authorization", &format!("Bearer {secret}"))],
    )
    .await;
    c.ping().await;
    let mut c = Client::connect(
        &server.url(),
        &[(
            "Sec-WebSocket-Protocol",
            &format!("coda.v1, coda.token.{secret}"),
        )],
    )
    .await;
    c.ping().await;
}

#[tokio::test]
async fn origin_allow_list() {
    let server = Server::start(&[], &[]);
    let url = server.url();
    let port = server.port;
    for bad in [
        "https://evil.example",
        "null",
        "http://localhost:1",
        &format!("http://127.0.0.1.evil.example:{port}"),
    ] {
        expect_refused(&url, &[("Origin", bad)], 403).await;
    }
    for good in [
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
    ] {
        let mut c = Client::connect(&url, &[("Origin", &good)]).await;
        c.ping().await;
    }
    let mut c = Client::connect(&url, &[]).await;
    c.ping().await;
}

#[tokio::test]
async fn host_allow_list_on_every_request() {
    let server = Server::start(&[], &[]);
    let port = server.port;
    expect_refused(&server.url(), &[("Host", "evil.example")], 403).await;
    expect_refused(
        &server.url(),
        &[("Host", &format!("evil.example:{port}"))],
        403,
    )
    .await;
    for path in [
        "/healthz",
        "/api/system_info",
        "/",
        "/api/config",
        "/metrics",
    ] {
        let (status, body) = http_get(port, path, Some("evil.example")).await;
        assert_eq!(status, 403, "{path}: {body}");
        let (status, _) = http_get(port, path, Some(&format!("attacker.localhost:{port}"))).await;
        assert_eq!(status, 403, "{path}");
    }
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let (status, body) = http_get(port, "/healthz", Some(&host)).await;
        assert_eq!(status, 200, "{host}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], json!("ok"));
    }
    let mut c = Client::connect(&server.url(), &[("Host", &format!("localhost:{port}"))]).await;
    c.ping().await;
}

/// Refused attempts are `connection_status` events; no token ever reaches the log.
#[tokio::test]
async fn refusals_are_events_and_tokens_stay_out_of_logs() {
    let home = Home::new();
    let (_, valid) = home.create_token("watcher", None);
    let mut server = Server::start_in(
        home,
        &["--auth"],
        &[
            ("RUST_LOG", "debug"),
            ("CODA__LOG__LEVEL", "debug"),
            ("CODA__AUTH__TIMEOUT_S", "1"),
        ],
    );
    let url = server.url();
    let boot = server.boot_token();
    let wrong = "coda_wrongWrongWrongWrongWrongWrongWrongWrong0000";

    let mut watcher = Client::connect(&url, &[("Authorization", &format!("Bearer {valid}"))]).await;
    watcher
        .hello(json!({"subscribe": ["connection_status"]}))
        .await;
    watcher.wait_type("replay", RECV_TIMEOUT).await;

    async fn refused_event(w: &mut Client, needle: &str) -> serde_json::Value {
        w.wait_for(
            &format!("refused event mentioning {needle}"),
            RECV_TIMEOUT,
            |v| {
                v["data"]["state"] == json!("refused")
                    && v["data"]["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains(needle))
            },
        )
        .await
    }

    expect_refused(&url, &[("Authorization", &format!("Bearer {wrong}"))], 401).await;
    let v = refused_event(&mut watcher, "token").await;
    assert!(
        v["data"]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{v}"
    );

    expect_refused(&url, &[("Origin", "https://evil.example")], 403).await;
    let v = refused_event(&mut watcher, "origin").await;
    assert_eq!(v["data"]["origin"], json!("https://evil.example"), "{v}");

    expect_refused(&url, &[("Host", "evil.example")], 403).await;
    refused_event(&mut watcher, "host").await;

    let mut bad = server.client().await;
    bad.send_cmd("auth", json!({"token": wrong}), None).await;
    bad.wait_close(RECV_TIMEOUT).await;
    refused_event(&mut watcher, "auth message").await;

    let mut slow = server.client().await;
    refused_event(&mut watcher, "no auth message").await;
    let _ = slow.wait_close(RECV_TIMEOUT).await;

    // Successful logins through every carrier are logged too.
    let mut ok1 = Client::connect(
        &url,
        &[(
            "Sec-WebSocket-Protocol",
            &format!("coda.v1, coda.token.{valid}"),
        )],
    )
    .await;
    ok1.ping().await;
    let mut ok2 = server.client().await;
    ok2.request("auth", json!({"token": valid})).await;
    ok2.ping().await;
    let mut ok3 = Client::connect(&url, &[("Authorization", &format!("Bearer {boot}"))]).await;
    ok3.ping().await;
    watcher
        .wait_for("authenticated event", RECV_TIMEOUT, |v| {
            v["data"]["state"] == json!("authenticated")
        })
        .await;

    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    let log = server.stderr_text();
    assert!(log.contains("refused"), "debug logging was captured: {log}");
    for (name, secret) in [
        ("valid", valid.as_str()),
        ("boot", boot.as_str()),
        ("wrong", wrong),
    ] {
        assert!(
            !log.contains(secret),
            "the {name} token appears in the server log"
        );
        // Not even a long piece of it.
        let body = secret.trim_start_matches("coda_");
        assert!(
            !log.contains(&body[..16]),
            "part of the {name} token appears in the log"
        );
    }
}

/// A token in the URL is never used (proxies and histories keep URLs).
#[tokio::test]
async fn tokens_in_the_url_are_ignored() {
    let home = Home::new();
    let (_, valid) = home.create_token("url", None);
    let server = Server::start_in(home, &["--auth"], &[("CODA__AUTH__TIMEOUT_S", "1")]);
    for query in [format!("?token={valid}"), format!("?access_token={valid}")] {
        let url = format!("{}{query}", server.url());
        let mut c = Client::connect(&url, &[]).await;
        let (seen, code) = until_close(&mut c, Duration::from_secs(15)).await;
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0]["data"]["code"], json!("unauthorized"), "{seen:?}");
        assert_eq!(code, Some(1008));
    }
    // Binary before auth: refused and closed.
    let mut c = server.client().await;
    futures_util::SinkExt::send(
        &mut c.ws,
        tokio_tungstenite::tungstenite::Message::binary(vec![0u8; 640]),
    )
    .await
    .unwrap();
    let (seen, code) = until_close(&mut c, Duration::from_secs(15)).await;
    assert_eq!(seen[0]["data"]["code"], json!("unauthorized"), "{seen:?}");
    assert_eq!(code, Some(1008));
}

/// With auth on, the read-only HTTP API and /metrics want the token too; /healthz stays
/// open.
#[tokio::test]
async fn http_api_requires_the_token_when_auth_is_on() {
    let home = Home::new();
    let (_, valid) = home.create_token("api", None);
    let server = Server::start_in(home, &["--auth"], &[]);
    let port = server.port;
    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, 200);
    for path in ["/api/system_info", "/api/config", "/metrics"] {
        let (status, body) = server.get(path).await;
        assert_eq!(status, 401, "{path}: {body}");
        let (status, body) = http_get_with(
            port,
            path,
            &[
                ("Host", &format!("127.0.0.1:{port}")),
                ("Authorization", &format!("Bearer {valid}")),
            ],
        )
        .await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(!body.contains(&valid));
    }
}

/// GET with arbitrary headers over a raw socket: (status, body).
async fn http_get_with(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    bounded("GET", RECV_TIMEOUT, async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut req = format!("GET {path} HTTP/1.1\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("Connection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = text
            .split_once("\r\n\r\n")
            .map(|x| x.1.to_string())
            .unwrap_or_default();
        (status, body)
    })
    .await
}

/// The `token_*` admin commands need the per-boot token, whatever `auth.required` says.
#[tokio::test]
async fn token_admin_commands_need_the_boot_token() {
    let home = Home::new();
    let (_, user) = home.create_token("user", None);
    let server = Server::start_in(home, &["--auth"], &[]);
    let mut c = Client::connect(
        &server.url(),
        &[("Authorization", &format!("Bearer {user}"))],
    )
    .await;
    for (t, data) in [
        ("token_create", json!({"name": "sneaky"})),
        ("token_list", json!({})),
        ("token_revoke", json!({"token": "user"})),
        ("token_rotate", json!({"token": "user"})),
    ] {
        let r = c.request(t, data).await;
        assert_eq!(ty(&r), "command_error", "{t}: {r}");
        assert_eq!(r["data"]["code"], json!("unauthorized"), "{t}: {r}");
    }
    c.ping().await;

    let boot = format!("Bearer {}", server.boot_token());
    let mut admin = Client::connect(&server.url(), &[("Authorization", &boot)]).await;
    let r = admin.request("token_list", json!({})).await;
    assert_eq!(ty(&r), "command_result", "{r}");
    let names: Vec<&str> = r["data"]["data"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["user"], "{r}");
    assert!(!r.to_string().contains(&user), "list never shows secrets");

    // Auth off: an anonymous local client is still not an admin.
    let open = Server::start(&[], &[]);
    let mut anon = open.client().await;
    let r = anon.request("token_create", json!({"name": "x"})).await;
    assert_eq!(r["data"]["code"], json!("unauthorized"), "{r}");
    let boot = format!("Bearer {}", open.boot_token());
    let mut admin = Client::connect(&open.url(), &[("Authorization", &boot)]).await;
    let r = admin.request("token_create", json!({"name": "x"})).await;
    assert_eq!(ty(&r), "command_result", "{r}");
    assert!(r["data"]["data"]["secret"].is_string(), "{r}");
}
