//! Metrics: `system_metrics` at the configured interval, `get_performance_metrics`,
//! `GET /metrics` in Prometheus text format, and threshold alerts that fire and clear.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// `system_metrics` events of a client (live ones, and the one a replay may carry).
async fn collect_system_metrics(c: &mut Client, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    bounded("collecting system_metrics", SECS(30), async {
        while out.len() < n {
            let v = c.recv_json(RECV_TIMEOUT).await;
            assert_envelope(&v);
            if ty(&v) == "system_metrics" {
                out.push(v);
            }
        }
    })
    .await;
    out
}

#[tokio::test]
async fn system_metrics_at_the_configured_interval_with_sane_values() {
    let server = Server::start(&[], &[("CODA__METRICS__INTERVAL_S", "0.2")]);
    let mut c = server.client().await;
    c.hello(json!({"subscribe": ["system_metrics"]})).await;
    let replay = c.wait_type("replay", RECV_TIMEOUT).await;
    let replayed = replay["data"]["events"].as_array().unwrap().len();
    assert!(
        replayed <= 1,
        "only the latest system_metrics is replayed: {replay}"
    );

    // About 1.5 s worth at 0.2 s.
    let events = collect_system_metrics(&mut c, 8).await;
    let stamps: Vec<f64> = events
        .iter()
        .map(|e| e["timestamp"].as_f64().unwrap())
        .collect();
    let gaps: Vec<f64> = stamps.windows(2).map(|w| w[1] - w[0]).collect();
    let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
    // Timers never fire early, so the mean gap is at least the interval (minus clock
    // granularity); the generous upper bound only catches a wrong interval, not a slow box.
    assert!(
        (0.19..=0.6).contains(&mean),
        "mean gap {mean:.3} s for interval 0.2 s: {gaps:?}"
    );
    let seqs: Vec<u64> = events.iter().map(seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    for e in &events {
        assert_eq!(e["session_id"], json!("system"), "{e}");
        let d = &e["data"];
        let mem = d["memory_mb"].as_f64().expect("memory_mb");
        assert!(mem > 1.0 && mem < 2000.0, "memory_mb {mem}: {e}");
        let cpu = d["cpu_percent"].as_f64().expect("cpu_percent");
        assert!(
            (0.0..=100.0 * cores).contains(&cpu),
            "cpu_percent {cpu}: {e}"
        );
        let sys_cpu = d["system_cpu_percent"]
            .as_f64()
            .expect("system_cpu_percent");
        assert!((0.0..=100.0).contains(&sys_cpu), "{e}");
        let total = d["system_memory_total_mb"].as_f64().expect("total");
        let used = d["system_memory_used_mb"].as_f64().expect("used");
        assert!(used > 0.0 && used <= total && total > mem, "{e}");
        // GPU fields appear together, or not at all (no driver: not at all).
        assert_eq!(
            d.get("gpu_vram_mb").is_some(),
            d.get("gpu_util").is_some(),
            "{e}"
        );
        if let Some(u) = d.get("gpu_util") {
            assert!((0.0..=100.0).contains(&u.as_f64().unwrap()), "{e}");
        }
    }
    // The metrics component reports running.
    let info = server.system_info().await;
    let metrics = info["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == json!("metrics"))
        .unwrap_or_else(|| panic!("no metrics component: {info}"));
    assert_eq!(metrics["state"], json!("running"), "{info}");
    // No error spam about a missing GPU (one info line at most; tests log at warn).
    let stderr = server.stderr_text();
    assert!(!stderr.contains("GPU query failed"), "{stderr}");
}

#[tokio::test]
async fn get_performance_metrics_answers_with_component_timing() {
    // No periodic samples: the stream is quiet unless this test acts.
    let server = Server::start(&[], &[("CODA__METRICS__INTERVAL_S", "3600")]);
    let (mut c, _) = server.hello_client().await;
    c.wait_type("replay", RECV_TIMEOUT).await;

    let r = c.request("get_performance_metrics", json!({})).await;
    assert_eq!(ty(&r), "command_result", "{r}");
    let d = &r["data"]["data"];
    assert!(d["window_s"].as_f64().is_some_and(|w| w >= 0.0), "{r}");
    assert_eq!(d["turns"], json!(0), "no turns yet: {r}");
    assert_eq!(d["stages"], json!([]), "{r}");
    assert!(
        d["counters"]["events_published"].as_u64().unwrap() > 0,
        "{r}"
    );

    // Without an id: a component_timing event for this client only.
    c.send_cmd("get_performance_metrics", json!({}), None).await;
    let t = c.wait_type("component_timing", RECV_TIMEOUT).await;
    assert_envelope(&t);
    assert!(
        t["data"]["counters"]["commands_received"].as_u64().unwrap() >= 2,
        "{t}"
    );
    // It was not published to the stream: the next stream event's seq is not past it.
    let other = server.client().await;
    other.close().await;
    let next = c.wait_type("connection_status", RECV_TIMEOUT).await;
    assert_eq!(
        seq(&next),
        seq(&t) + 1,
        "direct answers take no seq: {t} {next}"
    );
}

/// Parses with an independent reader (prometheus-parse) and checks it accounted for every
/// sample line (it skips lines it cannot read instead of failing).
fn parse_exposition(text: &str) -> prometheus_parse::Scrape {
    let scrape =
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parse");
    let sample_lines = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .count();
    let accounted: usize = scrape
        .samples
        .iter()
        .map(|s| match &s.value {
            prometheus_parse::Value::Summary(q) => q.len(),
            _ => 1,
        })
        .sum();
    assert_eq!(
        accounted, sample_lines,
        "lines the reader could not place:\n{text}"
    );
    for line in text.lines() {
        if let Some(rest) = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
        {
            assert!(rest.starts_with("coda_"), "{line}");
        } else {
            assert!(!line.starts_with('#'), "stray comment {line}");
        }
    }
    for s in &scrape.samples {
        assert!(s.metric.starts_with("coda_"), "{}", s.metric);
    }
    scrape
}

/// Per-type event counts and the seq from a scrape.
fn event_counts(scrape: &prometheus_parse::Scrape) -> (BTreeMap<String, u64>, u64) {
    let mut counts = BTreeMap::new();
    let mut seq = None;
    for s in &scrape.samples {
        match (s.metric.as_str(), &s.value) {
            ("coda_events_total", prometheus_parse::Value::Counter(v)) => {
                let t = s.labels.get("type").expect("type label").to_string();
                counts.insert(t, *v as u64);
            }
            ("coda_event_seq", prometheus_parse::Value::Gauge(v)) => seq = Some(*v as u64),
            _ => {}
        }
    }
    (counts, seq.expect("coda_event_seq"))
}

#[tokio::test]
async fn prometheus_exposition_counts_what_clients_see() {
    let server = Server::start(&[], &[("CODA__METRICS__INTERVAL_S", "0.2")]);
    let (mut a, _) = server.hello_client().await;
    a.wait_type("replay", RECV_TIMEOUT).await;

    let (status, body1) = server.get("/metrics").await;
    assert_eq!(status, 200, "{body1}");
    let scrape1 = parse_exposition(&body1);
    let (c1, s1) = event_counts(&scrape1);
    assert_eq!(
        c1.values().sum::<u64>(),
        s1,
        "counts add up to the seq\n{body1}"
    );
    for name in [
        "coda_build_info",
        "coda_clients",
        "coda_commands_total",
        "coda_slow_consumer_disconnects_total",
        "coda_component_running",
    ] {
        assert!(
            scrape1.samples.iter().any(|s| s.metric == name),
            "{name} missing\n{body1}"
        );
    }
    let clients = scrape1
        .samples
        .iter()
        .find(|s| s.metric == "coda_clients")
        .map(|s| s.value.clone());
    assert_eq!(
        clients,
        Some(prometheus_parse::Value::Gauge(1.0)),
        "{body1}"
    );

    // Activity: connection churn and a few commands, while system_metrics flows.
    for _ in 0..3 {
        let mut b = server.client().await;
        b.ping().await;
        b.close().await;
    }
    // Sent without waiting for the answer: waiting would skip A's stream events.
    a.send_cmd("no_such_command", json!({}), Some("bad")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (status, body2) = server.get("/metrics").await;
    assert_eq!(status, 200, "{body2}");
    let scrape2 = parse_exposition(&body2);
    let (c2, s2) = event_counts(&scrape2);
    assert_eq!(c2.values().sum::<u64>(), s2, "\n{body2}");
    assert!(s2 > s1);

    // Client A saw every stream event; those with seq in (s1, s2] must match the deltas.
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    let mut seqs = Vec::new();
    bounded("reading up to the second scrape", SECS(30), async {
        loop {
            let v = a.recv_json(RECV_TIMEOUT).await;
            if is_direct(&v) || ty(&v) == "system_info" {
                continue;
            }
            let sq = seq(&v);
            if sq > s1 && sq <= s2 {
                *seen.entry(ty(&v).to_string()).or_default() += 1;
                seqs.push(sq);
            }
            if sq >= s2 {
                break;
            }
        }
    })
    .await;
    assert_eq!(seqs, (s1 + 1..=s2).collect::<Vec<_>>(), "no gaps");
    for (t, n2) in &c2 {
        let delta = n2 - c1.get(t).copied().unwrap_or(0);
        assert_eq!(
            seen.get(t).copied().unwrap_or(0),
            delta,
            "events of type {t} between the scrapes"
        );
    }
    assert!(seen["connection_status"] >= 6, "{seen:?}");
    assert!(
        seen.get("system_metrics").copied().unwrap_or(0) >= 1,
        "{seen:?}"
    );

    let value = |name: &str| {
        scrape2
            .samples
            .iter()
            .find(|s| s.metric == name)
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("{name} missing\n{body2}"))
    };
    // hello and three pings (an unknown command is rejected before dispatch).
    assert!(value("coda_commands_total") >= 4.0, "\n{body2}");
    assert!(value("coda_command_errors_total") >= 1.0, "\n{body2}");
    let rss = value("coda_process_resident_memory_bytes");
    assert!(rss > 1e6 && rss < 2e9, "{rss}");
}

#[tokio::test]
async fn alerts_fire_and_clear_from_config() {
    let home = Home::new();
    let dir = home.config_dir().join("coda");
    std::fs::create_dir_all(&dir).unwrap();
    // memory_mb above 1 MiB fires at once and stays; clients is driven from here.
    std::fs::write(
        dir.join("config.toml"),
        r#"[metrics]
interval_s = 0.2
alerts = [
  { metric = "memory_mb", above = 1.0, clear_below = 0.5, level = "info" },
  { metric = "clients", above = 2.5, clear_below = 1.5, level = "warning" },
]
"#,
    )
    .unwrap();
    let server = Server::start_in(home, &[], &[]);
    let mut a = server.client().await;
    a.hello(json!({"subscribe": ["alert"]})).await;

    let is_alert =
        |v: &Value, metric: &str| ty(v) == "alert" && v["data"]["metric"] == json!(metric);
    // The memory alert: live, or in the replay if it fired before we connected.
    let mut memory_alert = None;
    bounded("memory alert", SECS(30), async {
        while memory_alert.is_none() {
            let v = a.recv_json(RECV_TIMEOUT).await;
            if ty(&v) == "replay" {
                memory_alert = v["data"]["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|e| is_alert(e, "memory_mb"))
                    .cloned();
            } else if is_alert(&v, "memory_mb") {
                memory_alert = Some(v);
            }
        }
    })
    .await;
    let m = memory_alert.unwrap();
    assert_envelope(&m);
    assert_eq!(m["data"]["cleared"], json!(false), "{m}");
    assert_eq!(m["data"]["level"], json!("info"), "{m}");
    assert_eq!(m["data"]["threshold"], json!(1.0), "{m}");
    assert!(m["data"]["value"].as_f64().unwrap() > 1.0, "{m}");

    // Three clients: above 2.5 -> fires once.
    let b = server.client().await;
    let c = server.client().await;
    let fired = a
        .wait_for("clients alert", RECV_TIMEOUT, |v| is_alert(v, "clients"))
        .await;
    assert_eq!(fired["data"]["cleared"], json!(false), "{fired}");
    assert_eq!(fired["data"]["value"], json!(3.0), "{fired}");
    assert_eq!(fired["data"]["level"], json!("warning"), "{fired}");
    assert!(
        fired["data"]["message"]
            .as_str()
            .unwrap()
            .contains("clients"),
        "{fired}"
    );

    // Two clients: inside the band -> nothing for several intervals.
    b.close().await;
    match a.next_json(Duration::from_millis(1200)).await {
        Err(End::Timeout) => {}
        other => panic!("nothing expected inside the band, got {other:?}"),
    }
    // One client: below 1.5 -> clears once.
    c.close().await;
    let cleared = a
        .wait_for("clients alert cleared", RECV_TIMEOUT, |v| {
            is_alert(v, "clients")
        })
        .await;
    assert_eq!(cleared["data"]["cleared"], json!(true), "{cleared}");
    assert_eq!(cleared["data"]["value"], json!(1.0), "{cleared}");
    assert_eq!(cleared["data"]["threshold"], json!(1.5), "{cleared}");
    // And stays quiet: the memory alert does not repeat, the clients one does not flap.
    match a.next_json(Duration::from_millis(1200)).await {
        Err(End::Timeout) => {}
        other => panic!("no further alert expected, got {other:?}"),
    }

    let (status, body) = server.get("/metrics").await;
    assert_eq!(status, 200);
    let scrape = parse_exposition(&body);
    let active: BTreeMap<String, f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "coda_alert_active")
        .map(|s| {
            let v = match s.value {
                prometheus_parse::Value::Gauge(v) => v,
                _ => f64::NAN,
            };
            (s.labels.get("metric").unwrap().to_string(), v)
        })
        .collect();
    assert_eq!(active.get("memory_mb"), Some(&1.0), "\n{body}");
    assert_eq!(active.get("clients"), Some(&0.0), "\n{body}");
    assert!(body.contains("coda_alerts_fired_total 2\n"), "\n{body}");
}

/// The orchestrator's `latency_trace` reaches the tracker through the hub: the periodic
/// `component_timing`, `get_performance_metrics` and `/metrics` all show the turn.
#[tokio::test]
async fn a_turn_feeds_the_latency_tracker() {
    let server = Server::start(&[], &[("CODA__METRICS__TIMING_INTERVAL_S", "0.2")]);
    let (mut c, _) = server.hello_client().await;
    c.wait_type("replay", RECV_TIMEOUT).await;
    // Whatever the answer (this build may have no language model), the turn is traced.
    c.send_cmd(
        "text_input",
        json!({"text": "what time is it"}),
        Some("turn"),
    )
    .await;
    let trace = c.wait_type("latency_trace", RECV_TIMEOUT).await;
    let total_ms = trace["data"]["total_ms"].as_f64().expect("total_ms");

    let timing = c.wait_type("component_timing", RECV_TIMEOUT).await;
    assert_envelope(&timing);
    let d = &timing["data"];
    assert_eq!(d["turns"], json!(1), "{timing}");
    let stages = d["stages"].as_array().unwrap();
    let total = stages
        .iter()
        .find(|s| s["stage"] == json!("total"))
        .unwrap_or_else(|| panic!("no total stage: {timing}"));
    assert_eq!(total["count"], json!(1), "{timing}");
    assert_eq!(
        total["max_ms"].as_f64(),
        Some(total_ms),
        "exact max: {timing}"
    );
    // Every stage the trace carried, and no other.
    let traced: Vec<String> = trace["data"]
        .as_object()
        .unwrap()
        .keys()
        .filter_map(|k| k.strip_suffix("_ms").map(str::to_string))
        .collect();
    let mut named: Vec<String> = stages
        .iter()
        .map(|s| s["stage"].as_str().unwrap().to_string())
        .collect();
    named.sort();
    let mut traced_sorted = traced.clone();
    traced_sorted.sort();
    assert_eq!(named, traced_sorted, "{trace} {timing}");

    let r = c.request("get_performance_metrics", json!({})).await;
    assert_eq!(r["data"]["data"]["turns"], json!(1), "{r}");

    let (status, body) = server.get("/metrics").await;
    assert_eq!(status, 200);
    let scrape = parse_exposition(&body);
    let count = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "coda_stage_latency_seconds_count" && s.labels.get("stage") == Some("total")
        })
        .unwrap_or_else(|| panic!("no total count\n{body}"));
    assert!(
        matches!(count.value, prometheus_parse::Value::Untyped(v) if v == 1.0),
        "{count:?}"
    );
    let quantiles = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "coda_stage_latency_seconds" && s.labels.get("stage") == Some("total")
        })
        .unwrap_or_else(|| panic!("no total quantiles\n{body}"));
    match &quantiles.value {
        prometheus_parse::Value::Summary(q) => {
            assert_eq!(q.len(), 3, "{q:?}");
            for sq in q {
                // One sample: every quantile is that sample (1% histogram precision).
                let ms = sq.count * 1000.0;
                assert!(
                    (ms - total_ms).abs() <= total_ms * 0.01 + 0.002,
                    "{sq:?} vs {total_ms}"
                );
            }
        }
        other => panic!("not a summary: {other:?}"),
    }
}
