//! `coda bench ask-startup`: from spawning `coda ask` to the first byte of its request
//! arriving at the provider (process start, config, client set-up, connect, send).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use coda_actors::llm::scripted::{Reply, ScriptedServer};

use super::llm_token::{histogram, Percentiles};

/// `coda bench ask-startup` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct AskStartupArgs {
    /// Runs of `coda ask` (after one warm-up run).
    #[arg(long, default_value_t = 30)]
    pub runs: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The `ask-startup` result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AskStartupReport {
    /// Spawn → first request byte at the provider.
    pub startup: Percentiles,
}

/// Runs `coda bench ask-startup`: spawns this binary's `ask` against a loopback
/// OpenAI-compatible server, in a private home so no user config is read.
pub fn ask_startup(args: &AskStartupArgs) -> anyhow::Result<AskStartupReport> {
    anyhow::ensure!(args.runs > 0, "--runs must be > 0");
    let exe = std::env::current_exe()?;
    let home = tempfile::tempdir()?;
    let rt = crate::llm_setup::background_runtime()?;
    let server = rt.block_on(ScriptedServer::start(|_| {
        Reply::sse_pieces(
            &[
                "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\"},\"finish_reason\":\"stop\"}]}\n\n",
                "data: [DONE]\n\n",
            ],
            Duration::ZERO,
        )
    }))?;
    let mut hist = histogram()?;
    for run in 0..=args.runs {
        let t0 = Instant::now();
        let status = spawn_ask(&exe, home.path(), &server.url())?;
        anyhow::ensure!(status.success(), "coda ask failed ({status}) in run {run}");
        let reqs = server.requests();
        let first = reqs
            .last()
            .ok_or_else(|| anyhow::anyhow!("the server saw no request"))?
            .first_byte_at;
        // Run 0 warms the page cache.
        if run > 0 {
            hist.record((first.saturating_duration_since(t0).as_nanos() as u64).max(1))?;
        }
    }
    Ok(AskStartupReport {
        startup: Percentiles::of(&hist),
    })
}

fn spawn_ask(exe: &Path, home: &Path, url: &str) -> anyhow::Result<std::process::ExitStatus> {
    Ok(std::process::Command::new(exe)
        .args(["ask", "--provider", "openai", "hi"])
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("CODA__LLM__OPENAI__BASE_URL", format!("{url}/v1"))
        .env("CODA__LLM__OPENAI__MODEL", "bench")
        .env_remove("CODA_CONFIG")
        .env_remove("CODA_PROFILE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?)
}

/// Runs and prints `ask-startup`.
pub fn run(args: &AskStartupArgs) -> anyhow::Result<()> {
    let r = ask_startup(args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("{}", r.startup.line("coda ask spawn → first byte upstream"));
    }
    Ok(())
}
