//! `coda bench turn`: text turns through a real `coda serve` (the configured LLM and
//! speech engines), per-stage percentiles from their `latency_trace`s.

use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use super::spawn_server;
use crate::cmd::ConfigChoice;

/// `coda bench turn` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct TurnArgs {
    /// Turns to run (after one warm-up turn).
    #[arg(long, default_value_t = 20)]
    pub turns: usize,
    /// The text of each turn.
    #[arg(long, default_value = "Say hello in one short sentence.")]
    pub text: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Per-stage percentiles of `coda bench turn`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TurnReport {
    pub turns: usize,
    pub failed: usize,
    /// stage → (p50 ms, p95 ms, samples)
    pub stages: std::collections::BTreeMap<String, (f64, f64, usize)>,
}

impl TurnReport {
    fn print(&self) {
        println!("turn: {} turns ({} failed)", self.turns, self.failed);
        println!(
            "  {:<22} {:>10} {:>10} {:>6}",
            "stage", "p50 ms", "p95 ms", "n"
        );
        for (stage, (p50, p95, n)) in &self.stages {
            println!("  {stage:<22} {p50:>10.2} {p95:>10.2} {n:>6}");
        }
    }
}

/// Runs text turns one after another and collects their `latency_trace`s.
pub fn turns(choice: &ConfigChoice, args: &TurnArgs) -> anyhow::Result<TurnReport> {
    use futures_util::SinkExt;
    anyhow::ensure!(args.turns > 0, "--turns must be at least 1");
    let tmp = tempfile::tempdir()?;
    let (_child, url) = spawn_server(tmp.path(), choice, &[])?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
        let mut samples: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
        let mut failed = 0;
        for i in 0..=args.turns {
            let cmd = serde_json::json!({"id": format!("b{i}"), "type": "text_input", "data": {"text": args.text, "session_id": format!("bench-{i}")}});
            ws.send(Message::Text(cmd.to_string().into())).await?;
            let mut turn_id = None;
            let mut errored = false;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            loop {
                let msg = tokio::time::timeout_at(deadline, ws.next())
                    .await
                    .map_err(|_| anyhow::anyhow!("turn {i} did not finish in 120 s"))?
                    .ok_or_else(|| anyhow::anyhow!("server closed the connection"))??;
                let Message::Text(text) = msg else { continue };
                let env: coda_protocol::RawEnvelope = serde_json::from_str(&text)?;
                match env.event_type.as_str() {
                    "command_result" if env.data["id"] == format!("b{i}") => {
                        turn_id = env.data["data"]["turn_id"].as_str().map(str::to_string);
                    }
                    "command_error" if env.data["id"] == format!("b{i}") => {
                        anyhow::bail!("server refused the turn: {}", env.data["message"]);
                    }
                    "llm_error" | "tts_error" if env.data["turn_id"].as_str() == turn_id.as_deref() => {
                        errored = true;
                        eprintln!("turn {i}: {}: {}", env.event_type, env.data["message"]);
                    }
                    "latency_trace" if env.data["turn_id"].as_str() == turn_id.as_deref() => {
                        if i > 0 {
                            if errored {
                                failed += 1;
                            }
                            if let Some(obj) = env.data.as_object() {
                                for (k, v) in obj {
                                    if let (Some(stage), Some(ms)) = (k.strip_suffix("_ms"), v.as_f64()) {
                                        samples.entry(stage.to_string()).or_default().push(ms);
                                    }
                                }
                            }
                        }
                        break;
                    }
                    _ => {}
                }
            }
        }
        let stages = samples
            .into_iter()
            .map(|(k, mut v)| {
                v.sort_by(f64::total_cmp);
                (k, (super::pct(&v, 0.5), super::pct(&v, 0.95), v.len()))
            })
            .collect();
        anyhow::Ok(TurnReport {
            turns: args.turns,
            failed,
            stages,
        })
    })
}

/// `coda bench turn`.
pub fn run(choice: &ConfigChoice, args: &TurnArgs) -> anyhow::Result<()> {
    let report = turns(choice, args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print();
    }
    Ok(())
}
