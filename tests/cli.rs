//! The command line: version, schema, config, completions, single instance, signals,
//! `coda events`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[test]
fn version() {
    let out = Home::new().run(&["--version"], &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        out.stdout.trim(),
        format!("coda {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn protocol_schema_covers_every_type() {
    let out = Home::new().run(&["protocol", "schema"], &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).expect("schema is JSON");
    assert_eq!(v["protocol_version"], json!("1.0"));
    for t in coda_protocol::EventType::ALL {
        assert!(
            v["events"][t.as_str()].is_object(),
            "no schema for event {t}"
        );
    }
    assert_eq!(
        v["events"].as_object().unwrap().len(),
        coda_protocol::EventType::ALL.len()
    );
    for c in coda_protocol::CommandType::ALL {
        assert!(
            v["commands"][c.as_str()].is_object(),
            "no schema for command {c}"
        );
    }
    let required: Vec<&str> = v["envelope"]["required"]
        .as_array()
        .expect("envelope.required")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for f in ["version", "seq", "timestamp", "type", "session_id", "data"] {
        assert!(required.contains(&f), "envelope requires {f}");
    }
}

#[test]
fn config_show_names_sources() {
    let home = Home::new();
    let out = home.run(
        &["config", "show", "--json"],
        &[("CODA__SERVER__PORT", "9999")],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(v["config"]["server"]["port"], json!(9999));
    assert_eq!(v["sources"]["server.port"], json!("env CODA__SERVER__PORT"));
    assert_eq!(v["sources"]["server.host"], json!("default"));
    assert_eq!(
        v["sources"]["storage.path"],
        json!("env CODA__STORAGE__PATH")
    );

    // A user config file is a named source; the text form says where each value came from.
    let cfg = home.config_dir().join("coda");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(cfg.join("config.toml"), "[events]\nreplay_size = 7\n").unwrap();
    let out = home.run(&["config", "show"], &[("CODA__SERVER__PORT", "9999")]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let line = |key: &str| {
        out.stdout
            .lines()
            .find(|l| l.starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no {key} line: {}", out.stdout))
            .to_string()
    };
    assert!(
        line("server.port").contains("9999")
            && line("server.port").contains("env CODA__SERVER__PORT")
    );
    assert!(
        line("events.replay_size").contains('7') && line("events.replay_size").contains("file ")
    );
    assert!(line("server.host").contains("# default"));
}

#[test]
fn bad_config_exits_2_and_names_the_key() {
    let home = Home::new();
    let out = home.run(&["config", "show"], &[("CODA__SERVER__PORT", "abc")]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("server.port"), "{out:?}");

    let out = home.run(&["config", "show"], &[("CODA__SERVER__PROT", "1")]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("CODA__SERVER__PROT"), "{out:?}");

    let file = home.path().join("bad.toml");
    std::fs::write(&file, "[server]\nprot = 8765\n").unwrap();
    let f = file.to_str().unwrap();
    let out = home.run(&["--config", f, "config", "show"], &[]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("server.prot"), "{out:?}");
    assert!(out.stderr.contains("bad.toml"), "names the file: {out:?}");

    // `serve` refuses bad config the same way, before listening.
    let out = run_bounded(
        home.command(
            &["serve", "--port", "0"],
            &[("CODA__SERVER__MAX_QUEUE", "abc")],
        ),
        Duration::from_secs(30),
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("server.max_queue"), "{out:?}");
    let out = run_bounded(
        home.command(&["--config", f, "serve", "--port", "0"], &[]),
        Duration::from_secs(30),
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("server.prot"), "{out:?}");
}

#[test]
fn completions() {
    let out = Home::new().run(&["completions", "bash"], &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.len() > 100 && out.stdout.contains("coda"),
        "{out:?}"
    );
}

#[test]
fn a_second_server_on_the_same_store_refuses() {
    let first = Server::start(&[], &[]);
    let out = run_bounded(
        first.home.command(&["serve", "--port", "0"], &[]),
        Duration::from_secs(30),
    );
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(out.stderr.contains("already running"), "{out:?}");
    assert!(!out.stdout.contains("listening"), "{out:?}");
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_cleans_up() {
    let mut server = Server::start(&["--emit-synthetic", "50"], &[]);
    let token_file = server.token_file();
    assert!(token_file.exists(), "per-boot token file while running");
    let (mut c, _) = server.hello_client().await;
    c.wait_type("diagnostic_tick", RECV_TIMEOUT).await;
    sigterm(server.pid());
    let close = c.wait_close(Duration::from_secs(20)).await;
    let (code, reason) = close.expect("a close frame");
    assert_eq!(code, 1001, "{reason}");
    let status = server.wait_exit(Duration::from_secs(20));
    assert_eq!(
        status.code(),
        Some(0),
        "{status:?}: {}",
        server.stderr_text()
    );
    assert!(!token_file.exists(), "token file removed at shutdown");
}

#[test]
fn events_prints_json_lines() {
    for auth in [false, true] {
        let mut args = vec!["--emit-synthetic", "100"];
        if auth {
            // The CLI finds the per-boot token file by itself.
            args.push("--auth");
        }
        let server = Server::start(&args, &[]);
        let url = server.url();
        let out = run_bounded(
            server.home.command(
                &[
                    "events",
                    "--url",
                    &url,
                    "--count",
                    "5",
                    "--json",
                    "--no-replay",
                ],
                &[],
            ),
            Duration::from_secs(60),
        );
        assert_eq!(out.code, Some(0), "auth={auth}: {out:?}");
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(lines.len(), 5, "auth={auth}: {out:?}");
        let mut prev = 0;
        for l in lines {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            assert_envelope(&v);
            assert!(seq(&v) > prev, "in order");
            prev = seq(&v);
        }
    }
}

/// `coda config show | head -1` must not panic when the reader goes away.
#[test]
fn closed_stdout_is_not_a_panic() {
    let home = Home::new();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut cmd = home.command(&["config", "show"], &[]);
    let err_path = home.path().join("stderr.txt");
    cmd.stdout(writer)
        .stderr(std::fs::File::create(&err_path).unwrap());
    let mut child = cmd.spawn().unwrap();
    let status = wait_bounded(&mut child, CMD_TIMEOUT).expect("exits");
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(status.code(), Some(101), "{stderr}");
}

/// While `coda serve` holds the store, `coda token` goes through the running server (with
/// the per-boot token), and the changes apply to the next connection.
#[tokio::test]
async fn token_commands_work_while_serving() {
    let server = Server::start(&["--auth"], &[]);
    let port = server.port.to_string();
    let env = [("CODA__SERVER__PORT", port.as_str())];
    let home = server.home.clone();

    let out = home.run(&["token", "create", "live", "--json"], &env);
    assert_eq!(out.code, Some(0), "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).expect("JSON");
    let id = v["id"].as_str().unwrap().to_string();
    let secret = v["secret"].as_str().unwrap().to_string();
    let bearer = format!("Bearer {secret}");
    let mut c = Client::connect(&server.url(), &[("Authorization", &bearer)]).await;
    c.ping().await;

    let out = home.run(&["token", "list", "--json"], &env);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains(&id) && !out.stdout.contains(&secret),
        "{out:?}"
    );

    let out = home.run(&["token", "revoke", &id], &env);
    assert_eq!(out.code, Some(0), "{out:?}");
    match try_connect(&server.url(), &[("Authorization", &bearer)]).await {
        Ok(_) => panic!("a revoked token was accepted"),
        Err(e) => assert_eq!(refused_status(&e), Some(401), "{e}"),
    }
    assert!(
        !server.stderr_text().contains(&secret),
        "secret in the server log"
    );
}
