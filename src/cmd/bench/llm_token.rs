//! `coda bench llm-token`: the latency a provider engine adds to each token, from the
//! moment a loopback server starts writing it to the socket to the moment the engine's
//! stream yields it (HTTP, SSE / NDJSON parsing, decoding), over a paced stream of one
//! token per event.

use std::time::{Duration, Instant};

use coda_actors::llm::ollama::{OllamaConfig, OllamaProvider};
use coda_actors::llm::openai::{OpenAiConfig, OpenAiProvider};
use coda_actors::llm::scripted::{Reply, ScriptedServer, Step};
use coda_actors::llm::{ChatMessage, ChatRequest, ChatRole, LlmProvider, StreamChunk};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;

/// `coda bench llm-token` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct LlmTokenArgs {
    /// Wire format: openai (SSE) or ollama (NDJSON).
    #[arg(long, default_value = "openai")]
    pub provider: String,
    /// Tokens per stream.
    #[arg(long, default_value_t = 2000)]
    pub tokens: usize,
    /// Pause between tokens, in microseconds (a paced stream, like a real model's).
    #[arg(long, default_value_t = 1000)]
    pub pace_us: u64,
    /// Streams to run.
    #[arg(long, default_value_t = 3)]
    pub streams: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Percentiles of one measurement, in milliseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Percentiles {
    pub samples: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Smallest.
    pub min_ms: f64,
}

impl Percentiles {
    pub(super) fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |ns: u64| ns as f64 / 1e6;
        Percentiles {
            samples: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
            min_ms: ms(h.min()),
        }
    }

    pub(super) fn line(&self, what: &str) -> String {
        format!(
            "{what}: p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms  min {:.3} ms  ({} samples)",
            self.p50_ms, self.p90_ms, self.p99_ms, self.max_ms, self.min_ms, self.samples
        )
    }
}

pub(super) fn histogram() -> anyhow::Result<Histogram<u64>> {
    // 1 ns .. 100 s, 3 significant digits.
    Ok(Histogram::new_with_bounds(1, 100_000_000_000, 3)?)
}

fn token_reply(provider: &str, tokens: usize, pace: Duration) -> Reply {
    let mut steps = Vec::with_capacity(tokens * 2 + 1);
    for i in 0..tokens {
        let piece = format!("t{i} ");
        let bytes = if provider == "ollama" {
            format!(
                "{}\n",
                json!({"model":"bench","message":{"role":"assistant","content":piece},"done":false})
            )
        } else {
            format!(
                "data: {}\n\n",
                json!({"id":"b","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":piece},"finish_reason":null}]})
            )
        };
        steps.push(Step::Write(bytes.into_bytes()));
        if !pace.is_zero() {
            steps.push(Step::Sleep(pace));
        }
    }
    let end = if provider == "ollama" {
        format!(
            "{}\n",
            json!({"model":"bench","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop"})
        )
    } else {
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n"
            .to_string()
    };
    steps.push(Step::Write(end.into_bytes()));
    let ct = if provider == "ollama" {
        "application/x-ndjson"
    } else {
        "text/event-stream"
    };
    Reply::stream(ct, steps)
}

/// The `llm-token` result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LlmTokenReport {
    /// Wire format measured.
    pub provider: String,
    /// Tokens per stream.
    pub tokens: usize,
    /// Pause between tokens, µs.
    pub pace_us: u64,
    /// Socket write → stream yield.
    pub latency: Percentiles,
}

/// Runs `coda bench llm-token`.
pub fn llm_token(args: &LlmTokenArgs) -> anyhow::Result<LlmTokenReport> {
    anyhow::ensure!(
        matches!(args.provider.as_str(), "openai" | "ollama"),
        "--provider must be openai or ollama"
    );
    anyhow::ensure!(
        args.tokens > 0 && args.streams > 0,
        "--tokens and --streams must be > 0"
    );
    // The server on its own thread and runtime, as a real provider is another process.
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let reply = token_reply(
        &args.provider,
        args.tokens,
        Duration::from_micros(args.pace_us),
    );
    let server_thread = std::thread::spawn(move || -> anyhow::Result<Vec<Instant>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let server = ScriptedServer::start(move |_| reply.clone()).await?;
            let _ = tx.send(server.url());
            let _ = stop_rx.await;
            anyhow::Ok(server.write_times())
        })
    });
    let url = rx
        .recv()
        .map_err(|_| anyhow::anyhow!("the benchmark server did not start"))?;
    let rt = crate::llm_setup::runtime()?;
    let mut hist = histogram()?;
    let result = rt.block_on(async {
        let provider: Box<dyn LlmProvider> = if args.provider == "ollama" {
            Box::new(OllamaProvider::new(OllamaConfig {
                base_url: url.clone(),
                model: "bench".into(),
                ..Default::default()
            })?)
        } else {
            Box::new(OpenAiProvider::new(OpenAiConfig {
                base_url: format!("{url}/v1"),
                model: "bench".into(),
                ..Default::default()
            })?)
        };
        let req = ChatRequest {
            messages: vec![ChatMessage::new(ChatRole::User, "bench")],
            ..Default::default()
        };
        let mut all_received = Vec::new();
        for _ in 0..args.streams {
            let mut received = Vec::with_capacity(args.tokens);
            let mut s = provider.chat_stream(req.clone()).await?;
            while let Some(c) = s.next().await {
                let at = Instant::now();
                match c? {
                    StreamChunk::Token(_) => received.push(at),
                    StreamChunk::Done { .. } => break,
                    StreamChunk::ToolCall(_) => {}
                }
            }
            anyhow::ensure!(
                received.len() == args.tokens,
                "received {} tokens of {}",
                received.len(),
                args.tokens
            );
            all_received.push(received);
        }
        anyhow::Ok(all_received)
    });
    let _ = stop_tx.send(());
    let written = server_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the benchmark server panicked"))??;
    let received = result?;
    // Each stream wrote tokens + 1 events (the last is the end marker).
    let per_stream = args.tokens + 1;
    anyhow::ensure!(
        written.len() == per_stream * args.streams,
        "the server recorded {} writes, expected {}",
        written.len(),
        per_stream * args.streams
    );
    for (k, stream) in received.iter().enumerate() {
        for (i, at) in stream.iter().enumerate() {
            let sent = written[k * per_stream + i];
            let ns = at.saturating_duration_since(sent).as_nanos() as u64;
            hist.record(ns.max(1))?;
        }
    }
    Ok(LlmTokenReport {
        provider: args.provider.clone(),
        tokens: args.tokens,
        pace_us: args.pace_us,
        latency: Percentiles::of(&hist),
    })
}

/// Runs and prints `llm-token`.
pub fn run(args: &LlmTokenArgs) -> anyhow::Result<()> {
    let r = llm_token(args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{} engine, {} tokens/stream, one every {} µs",
            r.provider, r.tokens, r.pace_us
        );
        println!("{}", r.latency.line("socket write → stream yield"));
    }
    Ok(())
}
