//! `coda bench cluster --pool`: what the LLM pool's hop adds to the time to the first
//! token. A real nats-server, an OpenAI-compatible server in this process (the scripted
//! one: the answer's pieces at once, so only the paths differ) and one pool member
//! (`coda serve` with `cluster.llm_pool = true`) answering with it. Per run, interleaved:
//! the member's provider called here directly, and the same question through the pool.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use coda_actors::cluster::pool::{PoolLink, PoolProvider, PoolSettings};
use coda_actors::llm::openai::{OpenAiConfig, OpenAiProvider};
use coda_actors::llm::scripted::{Reply, ScriptedServer, Step};
use coda_actors::llm::{ChatMessage, ChatRequest, ChatRole, LlmProvider, StreamChunk};
use futures_util::StreamExt;

use super::cluster::{nats_binary, start_nats, ClusterBenchArgs};
use super::{pct, spawn_server_env};
use crate::cmd::ConfigChoice;

#[derive(Debug, serde::Serialize)]
struct Report {
    runs: usize,
    nats_server: String,
    /// Request → first token, ms, per run.
    direct_ms: Vec<f64>,
    pool_ms: Vec<f64>,
    direct_p50_ms: f64,
    pool_p50_ms: f64,
    /// Pool minus direct, per run, median.
    added_p50_ms: f64,
    added_max_ms: f64,
}

fn piece(content: &str) -> Vec<u8> {
    format!(
        "data: {}\n\n",
        serde_json::json!({"choices":[{"index":0,"delta":{"content":content},"finish_reason":null}]})
    )
    .into_bytes()
}

/// Request → first token, ms.
async fn first_token(p: &dyn LlmProvider) -> anyhow::Result<f64> {
    let req = ChatRequest {
        messages: vec![ChatMessage::new(ChatRole::User, "Why is the sky blue?")],
        ..Default::default()
    };
    let t0 = Instant::now();
    let mut stream = p.chat_stream(req).await?;
    while let Some(chunk) = stream.next().await {
        if let StreamChunk::Token(_) = chunk? {
            let ms = t0.elapsed().as_secs_f64() * 1000.0;
            // The rest of the answer is read, so the member is free for the next run.
            while let Some(c) = stream.next().await {
                c?;
            }
            return Ok(ms);
        }
    }
    bail!("the answer had no token")
}

/// `coda bench cluster --pool`.
pub fn run(choice: &ConfigChoice, args: &ClusterBenchArgs) -> anyhow::Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let bin = nats_binary(args.nats_server.clone())?;
    let tmp = tempfile::tempdir()?;
    let (_nats, port) = start_nats(&bin, tmp.path())?;
    let url = format!("nats://127.0.0.1:{port}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let upstream = rt.block_on(ScriptedServer::start(|_| {
        let mut steps: Vec<Step> = ["The sky ", "is blue."]
            .iter()
            .map(|p| Step::Write(piece(p)))
            .collect();
        steps.push(Step::Write(b"data: [DONE]\n\n".to_vec()));
        Reply::stream("text/event-stream", steps)
    }))?;
    let base = format!("{}/v1", upstream.url());
    let dir = tmp.path().join("member");
    std::fs::create_dir_all(&dir)?;
    let _member = spawn_server_env(
        &dir,
        choice,
        &[],
        &[
            ("CODA__CLUSTER__NATS_URL", url.as_str()),
            ("CODA__CLUSTER__NODE", "member"),
            ("CODA__CLUSTER__LLM_POOL", "true"),
            ("CODA__LLM__PROVIDER", "openai"),
            ("CODA__LLM__OPENAI__BASE_URL", base.as_str()),
            ("CODA__LLM__OPENAI__MODEL", "scripted"),
        ],
    )?;
    let direct: Arc<dyn LlmProvider> = Arc::new(OpenAiProvider::new(OpenAiConfig {
        base_url: base.clone(),
        model: "scripted".into(),
        ..Default::default()
    })?);
    let pool: Arc<dyn LlmProvider> = Arc::new(PoolProvider::new(PoolLink::lazy(
        &url,
        "bench",
        PoolSettings {
            wait: Duration::from_secs(30),
            ..Default::default()
        },
    )));
    let (mut d, mut p) = (Vec::new(), Vec::new());
    rt.block_on(async {
        // Warm-up: connections made, the member in the queue group.
        first_token(direct.as_ref()).await.context("direct")?;
        first_token(pool.as_ref())
            .await
            .context("through the pool")?;
        for _ in 0..args.runs {
            // Turns come seconds apart, not back to back: the member (capacity 1) is
            // back in the queue group after each answer, as it would be.
            tokio::time::sleep(Duration::from_millis(50)).await;
            d.push(first_token(direct.as_ref()).await?);
            tokio::time::sleep(Duration::from_millis(50)).await;
            p.push(first_token(pool.as_ref()).await?);
        }
        anyhow::Ok(())
    })?;
    let sorted = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    };
    let added = sorted(&d.iter().zip(&p).map(|(d, p)| p - d).collect::<Vec<_>>());
    let report = Report {
        runs: args.runs,
        nats_server: bin.display().to_string(),
        direct_p50_ms: pct(&sorted(&d), 0.5),
        pool_p50_ms: pct(&sorted(&p), 0.5),
        added_p50_ms: pct(&added, 0.5),
        added_max_ms: added.last().copied().unwrap_or(0.0),
        direct_ms: d,
        pool_ms: p,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "LLM pool: time to the first token, {} interleaved runs (an OpenAI-compatible server on loopback answering at once)",
        report.runs
    );
    println!(
        "  the member's provider, called here   p50 {:>6.2} ms",
        report.direct_p50_ms
    );
    println!(
        "  the same through the pool (NATS)     p50 {:>6.2} ms",
        report.pool_p50_ms
    );
    println!(
        "  added by the pool's hop              p50 {:>6.2} ms  max {:>6.2} ms",
        report.added_p50_ms, report.added_max_ms
    );
    Ok(())
}
