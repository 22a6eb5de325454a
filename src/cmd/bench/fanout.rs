//! `coda bench fanout`: starts a real `coda serve` child with the synthetic load generator,
//! connects N real WebSocket clients over loopback, and reports delivered events/s,
//! latency (event timestamp → client receive), gaps, the server's CPU time per delivered
//! message and its memory.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;

use super::spawn_server;
use crate::cmd::ConfigChoice;

/// `coda bench fanout` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// Connected clients.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Events per second published by the server.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Measured seconds (after a 1 s warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Envelope size of each event, in bytes.
    #[arg(long, default_value_t = 256)]
    pub bytes: usize,
    /// Client runtime threads.
    #[arg(long, default_value_t = 2)]
    pub client_threads: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `coda bench fanout`.
pub fn run(choice: &ConfigChoice, args: &FanoutArgs) -> anyhow::Result<()> {
    let report = fanout(choice, args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print();
    }
    Ok(())
}

/// The measured figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FanoutReport {
    pub clients: usize,
    pub rate: f64,
    pub bytes: usize,
    pub duration_s: f64,
    pub published: u64,
    pub expected_deliveries: u64,
    pub delivered: u64,
    pub delivered_per_s: f64,
    pub delivered_ratio: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    pub gaps: u64,
    pub clients_cut_off: u64,
    pub server_cpu_s: f64,
    pub server_cpu_us_per_delivered: f64,
    pub server_rss_idle_mb: f64,
    pub server_rss_end_mb: f64,
    pub server_rss_peak_mb: Option<f64>,
}

impl FanoutReport {
    fn print(&self) {
        println!(
            "fanout: {} clients x {} events/s x {} B for {:.1} s",
            self.clients, self.rate, self.bytes, self.duration_s
        );
        println!(
            "  delivered        {} of {} expected ({:.1}%), {:.0} msg/s",
            self.delivered,
            self.expected_deliveries,
            self.delivered_ratio * 100.0,
            self.delivered_per_s
        );
        println!(
            "  latency          p50 {:.3} ms   p99 {:.3} ms   max {:.3} ms",
            self.latency_p50_ms, self.latency_p99_ms, self.latency_max_ms
        );
        println!(
            "  gaps             {}   clients cut off {}",
            self.gaps, self.clients_cut_off
        );
        println!(
            "  server CPU       {:.2} s  = {:.2} us per delivered message",
            self.server_cpu_s, self.server_cpu_us_per_delivered
        );
        println!(
            "  server RSS       idle {:.1} MB   end {:.1} MB   peak {}",
            self.server_rss_idle_mb,
            self.server_rss_end_mb,
            self.server_rss_peak_mb
                .map(|p| format!("{p:.1} MB"))
                .unwrap_or_else(|| "n/a".into())
        );
    }
}

#[derive(Deserialize)]
struct Head<'a> {
    seq: u64,
    timestamp: f64,
    #[serde(rename = "type", borrow)]
    kind: &'a str,
}

#[derive(Default)]
struct Shared {
    measuring: AtomicBool,
    stop: AtomicBool,
    delivered: AtomicU64,
    gaps: AtomicU64,
    cut_off: AtomicU64,
    ticks_seen: AtomicU64,
    hist: Mutex<Option<Histogram<u64>>>,
}

/// Runs the fan-out benchmark.
pub fn fanout(choice: &ConfigChoice, args: &FanoutArgs) -> anyhow::Result<FanoutReport> {
    anyhow::ensure!(args.clients > 0, "--clients must be at least 1");
    anyhow::ensure!(
        args.rate > 0.0 && args.rate.is_finite(),
        "--rate must be positive"
    );
    anyhow::ensure!(
        args.duration > 0.0 && args.duration.is_finite(),
        "--duration must be positive"
    );
    let tmp = tempfile::tempdir()?;
    let (rate, bytes, clients) = (
        args.rate.to_string(),
        args.bytes.to_string(),
        args.clients.to_string(),
    );
    let (child, url) = spawn_server(
        tmp.path(),
        choice,
        &[
            "--emit-synthetic",
            &rate,
            "--synthetic-bytes",
            &bytes,
            "--synthetic-wait-clients",
            &clients,
        ],
    )?;
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(300));
    let (_, rss_idle) = proc_sample(pid);

    let shared = Arc::new(Shared::default());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        let sem = Arc::new(tokio::sync::Semaphore::new(64));
        let mut tasks = Vec::new();
        for _ in 0..args.clients {
            let permit = sem.clone().acquire_owned().await?;
            let (ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
            drop(permit);
            tasks.push(tokio::spawn(client_loop(ws, shared.clone())));
        }
        // Warm-up: every client has seen ticks flowing.
        let warm = Instant::now();
        while shared.ticks_seen.load(Ordering::Relaxed) < args.clients as u64
            && warm.elapsed() < Duration::from_secs(30)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        *shared
            .hist
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))? =
            Some(Histogram::new_with_bounds(1, 60_000_000, 3)?);
        let (cpu0, _) = proc_sample(pid);
        let t0 = Instant::now();
        shared.measuring.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
        shared.measuring.store(false, Ordering::SeqCst);
        let elapsed = t0.elapsed().as_secs_f64();
        let (cpu1, rss_end) = proc_sample(pid);
        shared.stop.store(true, Ordering::SeqCst);
        // Clients see `stop` on their next message and merge their figures.
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        let delivered = shared.delivered.load(Ordering::Relaxed);
        let hist = shared
            .hist
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .take();
        let (p50, p99, max) = hist
            .map(|h| {
                (
                    h.value_at_quantile(0.50) as f64 / 1000.0,
                    h.value_at_quantile(0.99) as f64 / 1000.0,
                    h.max() as f64 / 1000.0,
                )
            })
            .unwrap_or_default();
        let published = (args.rate * elapsed) as u64;
        let expected = published * args.clients as u64;
        let cpu_s = (cpu1.saturating_sub(cpu0)) as f64 / 1000.0;
        anyhow::Ok(FanoutReport {
            clients: args.clients,
            rate: args.rate,
            bytes: args.bytes,
            duration_s: elapsed,
            published,
            expected_deliveries: expected,
            delivered,
            delivered_per_s: delivered as f64 / elapsed,
            delivered_ratio: if expected > 0 {
                delivered as f64 / expected as f64
            } else {
                0.0
            },
            latency_p50_ms: p50,
            latency_p99_ms: p99,
            latency_max_ms: max,
            gaps: shared.gaps.load(Ordering::Relaxed),
            clients_cut_off: shared.cut_off.load(Ordering::Relaxed),
            server_cpu_s: cpu_s,
            server_cpu_us_per_delivered: if delivered > 0 {
                cpu_s * 1e6 / delivered as f64
            } else {
                f64::NAN
            },
            server_rss_idle_mb: rss_idle as f64 / 1e6,
            server_rss_end_mb: rss_end as f64 / 1e6,
            server_rss_peak_mb: rss_peak(pid).map(|b| b as f64 / 1e6),
        })
    })?;
    rt.shutdown_timeout(Duration::from_secs(1));
    drop(child);
    Ok(report)
}

async fn client_loop(mut ws: crate::client::Ws, shared: Arc<Shared>) {
    let mut last_seq: Option<u64> = None;
    // One histogram per client, merged once at the end: recording is a few ns.
    let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
    let mut local_delivered = 0u64;
    let mut seen_tick = false;
    while let Some(msg) = ws.next().await {
        let text = match msg {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(_)) | Err(_) => {
                if !shared.stop.load(Ordering::Relaxed) {
                    shared.cut_off.fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
            Ok(_) => continue,
        };
        let now = crate::bench_clock();
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let Ok(head) = serde_json::from_str::<Head>(&text) else {
            continue;
        };
        match head.kind {
            "replay" => {
                last_seq = Some(head.seq);
                continue;
            }
            "command_result" | "command_error" | "config" => continue,
            _ => {}
        }
        if let Some(prev) = last_seq {
            if head.seq > prev + 1 && shared.measuring.load(Ordering::Relaxed) {
                shared
                    .gaps
                    .fetch_add(head.seq - prev - 1, Ordering::Relaxed);
            }
        }
        last_seq = Some(head.seq);
        if head.kind == "diagnostic_tick" {
            if !seen_tick {
                seen_tick = true;
                shared.ticks_seen.fetch_add(1, Ordering::Relaxed);
            }
            if shared.measuring.load(Ordering::Relaxed) {
                local_delivered += 1;
                if let Some(h) = local.as_mut() {
                    let us = ((now - head.timestamp) * 1e6).max(1.0) as u64;
                    let _ = h.record(us.min(60_000_000));
                }
            }
        }
    }
    flush(&shared, &mut local, &mut local_delivered);
}

fn flush(shared: &Shared, local: &mut Option<Histogram<u64>>, delivered: &mut u64) {
    if *delivered == 0 {
        return;
    }
    shared.delivered.fetch_add(*delivered, Ordering::Relaxed);
    *delivered = 0;
    if let (Ok(mut g), Some(h)) = (shared.hist.lock(), local.as_mut()) {
        if let Some(total) = g.as_mut() {
            let _ = total.add(&*h);
        }
        h.reset();
    }
}

/// (accumulated CPU ms, RSS bytes) of a process.
fn proc_sample(pid: u32) -> (u64, u64) {
    use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
    let Ok(mut sys) = System::new() else {
        return (0, 0);
    };
    let pid = Pid::from_u32(pid);
    sys.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[pid]),
        true,
        ProcessRefreshKind::nothing().with_cpu().with_memory(),
    );
    sys.process(pid)
        .map(|p| (p.accumulated_cpu_time(), p.memory()))
        .unwrap_or((0, 0))
}

/// Peak RSS (Linux `VmHWM`).
fn rss_peak(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
