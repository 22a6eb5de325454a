//! The event stream: envelopes, global seq, replay on connect, resume, epochs, filters.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// Every message of a mixed conversation (stream events, answers, errors, info, config,
/// replay) has the six envelope fields with the right JSON types.
#[tokio::test]
async fn every_message_is_a_typed_envelope() {
    let server = Server::start(&["--emit-synthetic", "300"], &[]);
    let mut c = server.client().await;
    // No hello: the first command starts delivery (replay first).
    let mut expected_ids = HashSet::new();
    for round in 0..12 {
        let id = format!("m-{round}");
        c.send_cmd("ping", json!({}), Some(&id)).await;
        expected_ids.insert(id);
        c.send_cmd("ping", json!({}), None).await;
        let info_id = format!("i-{round}");
        c.send_cmd(
            "get_system_info",
            json!({}),
            (round % 2 == 0).then_some(info_id.as_str()),
        )
        .await;
        let cfg_id = format!("c-{round}");
        c.send_cmd(
            "get_config",
            json!({}),
            (round % 2 == 1).then_some(cfg_id.as_str()),
        )
        .await;
        c.send_cmd("text_input", json!({"text": "hi"}), Some("ti"))
            .await;
        c.send_text("{definitely not json").await;
        c.send_text(r#"{"id":"x","type":"no_such_command"}"#).await;
        if round % 4 == 0 {
            // Connection churn: connection_status events.
            let other = server.client().await;
            other.close().await;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }

    let mut count = 0usize;
    let mut types = HashSet::new();
    let mut answered = HashSet::new();
    bounded("collecting 400 messages", SECS(60), async {
        while count < 400 || !expected_ids.is_subset(&answered) {
            let v = c.recv_json(RECV_TIMEOUT).await;
            assert_envelope(&v);
            if ty(&v) == "replay" {
                for e in v["data"]["events"].as_array().expect("events") {
                    assert_envelope(e);
                }
            }
            if ty(&v) == "command_result" {
                if let Some(id) = v["data"]["id"].as_str() {
                    answered.insert(id.to_string());
                }
            }
            types.insert(ty(&v).to_string());
            count += 1;
        }
    })
    .await;
    for t in [
        "replay",
        "command_result",
        "command_error",
        "config",
        "system_info",
        "diagnostic_tick",
        "connection_status",
    ] {
        assert!(
            types.contains(t),
            "no {t} among {count} messages: {types:?}"
        );
    }
    assert!(expected_ids.is_subset(&answered), "unanswered pings");
}

/// 10,000 consecutive stream events, each seq exactly one more than the last; direct
/// replies repeat the last stream seq.
#[tokio::test]
async fn seq_is_contiguous_over_ten_thousand_events() {
    let server = Server::start(
        &["--emit-synthetic", "20000", "--synthetic-wait-clients", "1"],
        // A debug-build client on a loaded machine may lag behind 20k events/s for a
        // moment; this test is about numbering, not slow-consumer cut-off.
        &[("CODA__SERVER__MAX_QUEUE", "200000")],
    );
    let mut c = server.client().await;
    c.send_cmd("hello", json!({"protocol_version": "1.0"}), Some("h"))
        .await;
    let mut last: Option<u64> = None;
    let mut stream_events = 0u32;
    let mut ticks = 0u32;
    bounded("10,000 stream events", SECS(90), async {
        while stream_events < 10_000 {
            let v = c.recv_json(RECV_TIMEOUT).await;
            let s = seq(&v);
            match ty(&v) {
                "replay" => {
                    assert_eq!(v["data"]["last_seq"].as_u64(), Some(s), "{v}");
                    assert!(last.is_none_or(|l| l <= s), "replay seq went back: {v}");
                    last = Some(s);
                }
                t if DIRECT_TYPES.contains(&t) => {
                    assert_eq!(
                        s,
                        last.unwrap_or(0),
                        "direct reply must repeat the last stream seq: {v}"
                    );
                }
                t => {
                    let prev = last.expect("a stream event before the replay");
                    assert_eq!(s, prev + 1, "gap or repeat after seq {prev}: {t} {s}");
                    last = Some(s);
                    stream_events += 1;
                    if t == "diagnostic_tick" {
                        ticks += 1;
                    }
                }
            }
        }
    })
    .await;
    assert!(
        ticks >= 9_990,
        "the stream was the synthetic ticks: {ticks}"
    );
    // A direct answer now repeats the last seq this client was sent (no stream event can
    // slip in between when the queue is drained up to the answer).
    c.send_cmd("ping", json!({}), Some("last")).await;
    let reply = bounded("ping answer", SECS(60), async {
        loop {
            let v = c.recv_json(RECV_TIMEOUT).await;
            if DIRECT_TYPES.contains(&ty(&v)) {
                if v["data"]["id"] == json!("last") {
                    return v;
                }
            } else {
                let s = seq(&v);
                assert_eq!(s, last.unwrap() + 1);
                last = Some(s);
            }
        }
    })
    .await;
    assert_eq!(seq(&reply), last.unwrap(), "{reply}");
}

/// A new client's replay holds the startup component_status events and only replayable
/// kinds: no ticks, no connection churn.
#[tokio::test]
async fn replay_on_connect_is_important_events_only() {
    let server = Server::start(&["--emit-synthetic", "200"], &[]);
    // Make transient history: ticks and connection events.
    let (mut a, _) = server.hello_client().await;
    a.wait_type("diagnostic_tick", RECV_TIMEOUT).await;
    server.client().await.close().await;
    a.wait_type("connection_status", RECV_TIMEOUT).await;
    a.close().await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    // No hello: the replay comes after server.hello_wait_ms, as the very first message.
    let mut b = server.client().await;
    let replay = b.recv_json(RECV_TIMEOUT).await;
    assert_eq!(ty(&replay), "replay", "{replay}");
    assert_envelope(&replay);
    let data = &replay["data"];
    assert_eq!(data["complete"], json!(true), "{replay}");
    assert!(
        data["epoch"].as_str().is_some_and(|e| !e.is_empty()),
        "{replay}"
    );
    let events = data["events"].as_array().expect("events");
    let mut components = HashSet::new();
    let mut prev = 0;
    for e in events {
        assert_envelope(e);
        assert!(seq(e) > prev, "replay events in seq order");
        prev = seq(e);
        let t = ty(e);
        assert!(
            !matches!(
                t,
                "diagnostic_tick"
                    | "connection_status"
                    | "llm_token"
                    | "stt_interim"
                    | "tts_audio"
                    | "tts_progress"
            ),
            "transient {t} in the replay: {e}"
        );
        assert!(!is_direct(e), "direct {t} in the replay");
        if t == "component_status" {
            components.insert((
                e["data"]["component"].as_str().unwrap().to_string(),
                e["data"]["state"].as_str().unwrap().to_string(),
            ));
        }
    }
    for c in ["event_hub", "store", "server"] {
        assert!(
            components.contains(&(c.to_string(), "running".to_string())),
            "no component_status {c}=running in replay: {components:?}"
        );
    }
    assert!(data["last_seq"].as_u64().unwrap() >= prev);
}

/// Reads stream events until `n` diagnostic ticks were seen; returns the last stream seq.
async fn read_ticks(c: &mut Client, n: usize) -> u64 {
    let mut last = 0;
    let mut ticks = 0;
    bounded("reading ticks", SECS(60), async {
        while ticks < n {
            let v = c.recv_json(RECV_TIMEOUT).await;
            if is_direct(&v) {
                continue;
            }
            if last > 0 {
                assert_eq!(seq(&v), last + 1, "gap while reading: {v}");
            }
            last = seq(&v);
            if ty(&v) == "diagnostic_tick" {
                ticks += 1;
            }
        }
    })
    .await;
    last
}

/// Reads the hello answer and the replay (in whichever order they come).
async fn hello_and_replay(c: &mut Client, extra: Value) -> (Value, Value) {
    let mut data = json!({"client": "it", "protocol_version": "1.0"});
    for (k, v) in extra.as_object().unwrap() {
        data[k] = v.clone();
    }
    c.send_cmd("hello", data, Some("hello")).await;
    let mut answer = None;
    let mut replay = None;
    bounded("hello answer and replay", SECS(30), async {
        while answer.is_none() || replay.is_none() {
            let v = c.recv_json(RECV_TIMEOUT).await;
            match ty(&v) {
                "replay" => {
                    assert!(replay.is_none(), "two replays");
                    replay = Some(v);
                }
                "command_result" | "command_error" if v["data"]["id"] == json!("hello") => {
                    assert_eq!(ty(&v), "command_result", "{v}");
                    answer = Some(v["data"]["data"].clone());
                }
                other => panic!("unexpected {other} before the replay: {v}"),
            }
        }
    })
    .await;
    (answer.unwrap(), replay.unwrap())
}

#[tokio::test]
async fn resume_continues_exactly_where_the_client_left() {
    let server = Server::start(
        &["--emit-synthetic", "500", "--synthetic-wait-clients", "1"],
        &[],
    );
    let mut a = server.client().await;
    let (answer, _) = hello_and_replay(&mut a, json!({})).await;
    let epoch = answer["epoch"].as_str().expect("epoch").to_string();
    let last = read_ticks(&mut a, 50).await;
    drop(a); // abrupt disconnect, events keep flowing
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut b = server.client().await;
    let (answer, replay) =
        hello_and_replay(&mut b, json!({"epoch": epoch, "last_seq": last})).await;
    assert_eq!(answer["epoch"], json!(epoch));
    assert!(answer["last_seq"].as_u64().unwrap() > last, "{answer}");
    let data = &replay["data"];
    assert_eq!(data["complete"], json!(true), "{replay}");
    assert_eq!(data["epoch"], json!(epoch));
    let events = data["events"].as_array().unwrap();
    assert!(
        events.len() >= 20,
        "300 ms at 500/s should leave many events: {}",
        events.len()
    );
    let mut expect = last + 1;
    let mut tick_count = 0;
    for e in events {
        assert_envelope(e);
        assert_eq!(
            seq(e),
            expect,
            "replay must continue exactly from last_seq+1"
        );
        expect += 1;
        if ty(e) == "diagnostic_tick" {
            tick_count += 1;
        }
    }
    assert!(
        tick_count > 0,
        "missed ticks are replayed (transient kinds included)"
    );
    assert_eq!(
        data["last_seq"].as_u64(),
        Some(expect - 1),
        "{}",
        data["last_seq"]
    );
    // Live events: no gap, no duplicate.
    bounded("live continuation", SECS(60), async {
        let mut live = 0;
        while live < 200 {
            let v = b.recv_json(RECV_TIMEOUT).await;
            if is_direct(&v) {
                continue;
            }
            assert_eq!(
                seq(&v),
                expect,
                "live events continue after the replay: {v}"
            );
            expect += 1;
            live += 1;
        }
    })
    .await;
}

#[tokio::test]
async fn resume_outside_the_window_is_incomplete() {
    let server = Server::start(
        &["--emit-synthetic", "500", "--synthetic-wait-clients", "1"],
        &[("CODA__EVENTS__RESUME_MAX_EVENTS", "50")],
    );
    let mut a = server.client().await;
    let (answer, _) = hello_and_replay(&mut a, json!({})).await;
    let epoch = answer["epoch"].as_str().unwrap().to_string();
    let last = read_ticks(&mut a, 10).await;
    a.close().await;
    // Wait until well over 50 events went by.
    poll_until(
        "more than 100 events after the client left",
        SECS(30),
        || async {
            let info = server.system_info().await;
            (info["last_seq"].as_u64().unwrap() > last + 100).then_some(())
        },
    )
    .await;

    let mut b = server.client().await;
    let (answer, replay) =
        hello_and_replay(&mut b, json!({"epoch": epoch, "last_seq": last})).await;
    assert_eq!(answer["epoch"], json!(epoch));
    assert_eq!(
        replay["data"]["complete"],
        json!(false),
        "{}",
        replay["data"]["complete"]
    );
    let events = replay["data"]["events"].as_array().unwrap();
    assert!(
        events.len() <= 50,
        "window holds at most 50: {}",
        events.len()
    );
    assert!(
        events.first().is_some_and(|e| seq(e) > last + 1),
        "the oldest retained event is past the client's position"
    );
}

#[tokio::test]
async fn a_new_epoch_after_restart_is_incomplete() {
    let home = Home::new();
    let mut first = Server::start_in(home.clone(), &["--emit-synthetic", "200"], &[]);
    let mut a = first.client().await;
    let (answer, _) = hello_and_replay(&mut a, json!({})).await;
    let old_epoch = answer["epoch"].as_str().unwrap().to_string();
    let last = read_ticks(&mut a, 5).await;
    drop(a);
    let status = first.terminate();
    assert!(status.success(), "{status:?}");

    let second = Server::start_in(home, &[], &[]);
    let mut b = second.client().await;
    let (answer, replay) =
        hello_and_replay(&mut b, json!({"epoch": old_epoch, "last_seq": last})).await;
    let new_epoch = answer["epoch"].as_str().unwrap();
    assert_ne!(new_epoch, old_epoch, "a restart starts a new stream");
    assert_eq!(replay["data"]["epoch"], json!(new_epoch));
    assert_eq!(replay["data"]["complete"], json!(false), "{replay}");
}

/// Collects stream events for `dur`; panics on a direct message it does not expect.
async fn stream_types_for(c: &mut Client, dur: Duration) -> Vec<String> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + dur;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.next_json(left).await {
            Ok(v) => {
                assert!(!is_direct(&v), "unexpected direct message: {v}");
                out.push(ty(&v).to_string());
            }
            Err(End::Timeout) => return out,
            Err(e) => panic!("stream ended: {e:?}"),
        }
    }
}

#[tokio::test]
async fn type_filters_subscribe_and_unsubscribe() {
    let server = Server::start(&["--emit-synthetic", "200"], &[]);
    let mut c = server.client().await;
    let (_, replay) = hello_and_replay(&mut c, json!({"subscribe": ["component_*"]})).await;
    let events = replay["data"]["events"].as_array().unwrap();
    assert!(events.len() >= 3, "{replay}");
    assert!(
        events.iter().all(|e| ty(e) == "component_status"),
        "replay is filtered too: {replay}"
    );

    // Ticks and connection events are filtered out.
    let other = server.client().await;
    other.close().await;
    let seen = stream_types_for(&mut c, Duration::from_millis(400)).await;
    assert!(seen.iter().all(|t| t.starts_with("component_")), "{seen:?}");

    // Add ticks.
    let r = c
        .request("subscribe", json!({"types": ["diagnostic_tick"]}))
        .await;
    assert_eq!(ty(&r), "command_result", "{r}");
    let types: Vec<&str> = r["data"]["data"]["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        types.contains(&"diagnostic_tick") && types.contains(&"component_status"),
        "{types:?}"
    );
    assert!(!types.contains(&"connection_status"), "{types:?}");
    let other = server.client().await;
    other.close().await;
    let seen = stream_types_for(&mut c, Duration::from_millis(400)).await;
    assert!(
        seen.iter().filter(|t| *t == "diagnostic_tick").count() >= 10,
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .all(|t| t == "diagnostic_tick" || t.starts_with("component_")),
        "{seen:?}"
    );

    // Remove them: nothing after the answer.
    let r = c
        .request("unsubscribe", json!({"types": ["diagnostic_tick"]}))
        .await;
    assert_eq!(ty(&r), "command_result", "{r}");
    let seen = stream_types_for(&mut c, Duration::from_millis(400)).await;
    assert!(seen.is_empty(), "after unsubscribe: {seen:?}");

    // A prefix pattern for connection events.
    let r = c
        .request("subscribe", json!({"types": ["connection_*"]}))
        .await;
    assert_eq!(ty(&r), "command_result", "{r}");
    let other = server.client().await;
    let v = c.wait_type("connection_status", RECV_TIMEOUT).await;
    assert_eq!(v["data"]["state"], json!("connected"), "{v}");
    other.close().await;

    // Bad patterns are rejected and leave the filter as it was.
    for bad in [
        json!(["nope_*"]),
        json!(["*_result"]),
        json!(["llm_resullt"]),
        json!([""]),
    ] {
        let r = c.request("subscribe", json!({"types": bad})).await;
        assert_eq!(ty(&r), "command_error", "{r}");
        assert_eq!(r["data"]["code"], json!("invalid_data"), "{r}");
    }
    let seen = stream_types_for(&mut c, Duration::from_millis(300)).await;
    assert!(seen.iter().all(|t| t != "diagnostic_tick"), "{seen:?}");

    // A bad pattern in hello is invalid_data too.
    let mut d = server.client().await;
    d.send_cmd(
        "hello",
        json!({"protocol_version": "1.0", "subscribe": ["zzz*"]}),
        Some("h"),
    )
    .await;
    let r = d.wait_reply("h", RECV_TIMEOUT).await;
    assert_eq!(r["data"]["code"], json!("invalid_data"), "{r}");
}

/// `resume` (instead of hello) as the first command: the same exact continuation.
#[tokio::test]
async fn resume_command_replays_missed_events() {
    let server = Server::start(
        &["--emit-synthetic", "400", "--synthetic-wait-clients", "1"],
        &[],
    );
    let mut a = server.client().await;
    let (answer, _) = hello_and_replay(&mut a, json!({})).await;
    let epoch = answer["epoch"].as_str().unwrap().to_string();
    let last = read_ticks(&mut a, 20).await;
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut b = server.client().await;
    b.send_cmd(
        "resume",
        json!({"epoch": epoch, "last_seq": last}),
        Some("r"),
    )
    .await;
    let mut expect = last + 1;
    let mut got_answer = false;
    let mut got_replay = false;
    let mut live = 0;
    bounded("resume", SECS(60), async {
        while !(got_answer && got_replay && live >= 100) {
            let v = b.recv_json(RECV_TIMEOUT).await;
            match ty(&v) {
                "command_result" => {
                    assert_eq!(v["data"]["id"], json!("r"), "{v}");
                    assert_eq!(v["data"]["data"]["resumed_from"], json!(last), "{v}");
                    got_answer = true;
                }
                "replay" => {
                    assert!(!got_replay, "one replay only");
                    got_replay = true;
                    assert_eq!(v["data"]["complete"], json!(true), "{v}");
                    for e in v["data"]["events"].as_array().unwrap() {
                        assert_eq!(seq(e), expect);
                        expect += 1;
                    }
                }
                _ => {
                    assert!(got_replay, "live event before the replay: {v}");
                    assert_eq!(seq(&v), expect, "{v}");
                    expect += 1;
                    live += 1;
                }
            }
        }
    })
    .await;
    assert!(expect > last + 100);
}

/// `events.replay_size` bounds the replay a new client gets.
#[tokio::test]
async fn replay_size_bounds_the_replay() {
    let server = Server::start(&[], &[("CODA__EVENTS__REPLAY_SIZE", "2")]);
    let mut c = server.client().await;
    let replay = c.wait_type("replay", RECV_TIMEOUT).await;
    let events = replay["data"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{replay}");
    // The most recent ones, not the first: at least four component_status events are
    // published at startup (event_hub, store, server starting, server running).
    assert!(
        events.iter().all(|e| ty(e) == "component_status"),
        "{replay}"
    );
    assert!(seq(&events[0]) < seq(&events[1]), "{replay}");
    assert!(seq(&events[0]) >= 3, "the oldest were dropped: {replay}");
}
