//! Load: a stalled client is cut off without slowing a fast one; connection churn leaves
//! nothing behind.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// The two tests here are CPU-heavy: run them one at a time so each measures the server,
/// not the other test.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const RATE: f64 = 5000.0;

/// `(seq, type)` from the head of a hub-built envelope, without parsing the 4 KB padding.
fn head(text: &str) -> Option<(u64, &str)> {
    let s = text.get(..text.len().min(256)).unwrap_or(text);
    let i = s.find("\"seq\":")? + 6;
    let digits: &str = &s[i..s[i..].find(|c: char| !c.is_ascii_digit())? + i];
    let j = s.find("\"type\":\"")? + 8;
    let name = &s[j..s[j..].find('"')? + j];
    Some((digits.parse().ok()?, name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_cut_off_and_the_fast_one_keeps_up() {
    let _heavy = HEAVY.lock().await;
    let server = Server::start(
        &[
            "--emit-synthetic",
            "5000",
            "--synthetic-bytes",
            "4096",
            "--synthetic-wait-clients",
            "2",
        ],
        &[("CODA__SERVER__MAX_QUEUE", "64")],
    );
    // The fast client reads continuously; a big kernel receive buffer lets it ride out
    // scheduling hiccups on a busy 2-core machine (its *reading* is what is measured).
    let mut fast = Client::connect_big_buffer(&server.url(), 4 << 20).await;
    fast.send_cmd("hello", json!({"protocol_version": "1.0"}), Some("h"))
        .await;
    let reply = fast.wait_reply("h", RECV_TIMEOUT).await;
    assert_eq!(ty(&reply), "command_result", "{reply}");
    // The stalled client: subscribed after the hello wait, never reads a byte.
    let stalled = server.client().await;
    let connected_at = Instant::now();

    let mut last: Option<u64> = None;
    let mut stalled_id: Option<String> = None;
    let mut cut_at: Option<Instant> = None;
    let mut cut_reason = String::new();
    let window = Duration::from_secs(2);
    let mut in_window = 0u64;
    let mut ticks = 0u64;
    bounded("the load test", Duration::from_secs(60), async {
        loop {
            if let Some(t) = cut_at {
                if t.elapsed() >= window {
                    break;
                }
            } else if connected_at.elapsed() > Duration::from_secs(30) {
                panic!("the stalled client was not cut off within 30 s ({ticks} ticks seen)");
            }
            let msg = tokio::time::timeout(RECV_TIMEOUT, fast.ws.next())
                .await
                .expect("the fast client starved")
                .expect("the fast client's stream ended")
                .unwrap_or_else(|e| {
                    panic!(
                        "the fast client was disconnected after {ticks} ticks: {e}; server log:\n{}",
                        server.stderr_text()
                    )
                });
            let text = match msg {
                Message::Text(t) => t,
                Message::Close(f) => panic!("the fast client was closed: {f:?}"),
                _ => continue,
            };
            let text = text.as_str();
            let (s, t) = head(text)
                .unwrap_or_else(|| panic!("not an envelope: {}", &text[..text.len().min(300)]));
            match t {
                "replay" => {
                    let v: Value = serde_json::from_str(text).unwrap();
                    last = v["data"]["last_seq"].as_u64();
                    continue;
                }
                "command_result" | "command_error" | "config" => continue,
                _ => {}
            }
            if let Some(l) = last {
                assert_eq!(s, l + 1, "seq gap for the fast client after {l}");
            }
            last = Some(s);
            match t {
                "diagnostic_tick" => {
                    ticks += 1;
                    if cut_at.is_some() {
                        in_window += 1;
                    }
                }
                "connection_status" => {
                    let v: Value = serde_json::from_str(text).unwrap();
                    let d = &v["data"];
                    let id = d["client_id"].as_str().unwrap_or("").to_string();
                    match d["state"].as_str() {
                        Some("connected") if stalled_id.is_none() => stalled_id = Some(id),
                        Some("closed") => {
                            let reason = d["reason"].as_str().unwrap_or("").to_string();
                            assert_eq!(
                                Some(&id),
                                stalled_id.as_ref(),
                                "only the stalled client closes: {v}"
                            );
                            assert!(reason.contains("slow consumer"), "{v}");
                            cut_reason = reason;
                            cut_at = Some(Instant::now());
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
    })
    .await;
    assert!(
        cut_reason.contains("64"),
        "the reason names the limit: {cut_reason}"
    );
    let expected = RATE * window.as_secs_f64();
    assert!(
        in_window as f64 >= 0.8 * expected,
        "the fast client got {in_window} ticks in {window:?}; expected about {expected}"
    );
    // The stalled client's connection is gone on the server side.
    poll_until(
        "the stalled session unregistered",
        Duration::from_secs(15),
        || async {
            let info = server.system_info().await;
            (info["clients"] == json!(1)).then_some(())
        },
    )
    .await;
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_churn_leaves_no_sessions() {
    let _heavy = HEAVY.lock().await;
    // As fast as four tasks can connect: above the per-address connect rate.
    let server = Server::start(&[], &[("CODA__SERVER__CONNECT_RATE_PER_IP", "100000")]);
    let url = server.url();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..250 {
                let mut c = Client::connect(&url, &[]).await;
                match i % 5 {
                    // Some talk first, some close at once.
                    0 => {
                        c.ping().await;
                    }
                    1 => {
                        c.send_cmd("hello", json!({"protocol_version": "1.0"}), None)
                            .await;
                    }
                    _ => {}
                }
                if worker == 3 && i % 50 == 49 {
                    // An abrupt drop now and then (no close handshake).
                    drop(c);
                } else {
                    c.close().await;
                }
            }
        }));
    }
    for t in tasks {
        bounded("churn worker", Duration::from_secs(120), t)
            .await
            .expect("churn worker panicked");
    }
    let churn = started.elapsed();
    poll_until(
        "no sessions left after 1,000 connections",
        Duration::from_secs(20),
        || async {
            let info = server.system_info().await;
            (info["clients"] == json!(0)).then_some(())
        },
    )
    .await;
    let info = server.system_info().await;
    // Each connection was announced and closed (2 events each), plus the startup events.
    assert!(info["last_seq"].as_u64().unwrap() >= 2000, "{info}");
    let mut c = server.client().await;
    c.ping().await;
    eprintln!("1,000 connect/disconnect cycles in {churn:?}");
}

/// A burst of events larger than `server.max_queue`, published while the client is reading
/// normally, must not cut that client off: the queue bound is meant for clients that do not
/// read, not for the server's own scheduling. The burst is made by pausing the server
/// (SIGSTOP) for 100 ms at 5000 events/s: the synthetic generator then catches up at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_does_not_cut_off_a_reading_client() {
    let _heavy = HEAVY.lock().await;
    let server = Server::start(
        &["--emit-synthetic", "5000", "--synthetic-wait-clients", "1"],
        &[("CODA__SERVER__MAX_QUEUE", "64")],
    );
    let mut fast = Client::connect_big_buffer(&server.url(), 4 << 20).await;
    fast.send_cmd("hello", json!({"protocol_version": "1.0"}), Some("h"))
        .await;
    fast.wait_reply("h", RECV_TIMEOUT).await;
    let pid = server.pid().to_string();
    let signal = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
    };
    let reader = async {
        let mut n = 0u64;
        loop {
            match fast.next_json(RECV_TIMEOUT).await {
                Ok(_) => n += 1,
                Err(e) => return (n, e),
            }
        }
    };
    let pauser = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        signal("-STOP");
        tokio::time::sleep(Duration::from_millis(100)).await;
        signal("-CONT");
        tokio::time::sleep(Duration::from_millis(1500)).await;
    };
    tokio::select! {
        (n, e) = reader => panic!("the reading client was cut off after {n} messages: {e:?}\n{}", server.stderr_text()),
        _ = pauser => {}
    }
}
