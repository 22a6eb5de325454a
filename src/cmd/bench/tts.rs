//! `coda bench tts`: the speech engine's time to first audio and total for a two-sentence
//! answer, optionally against a loopback server speaking a remote engine's wire format.

use std::time::Instant;

use coda_actors::tts::SentenceSplitter;

use super::summary;
use crate::config::Settings;
use crate::speech::tts_engine;
use coda_actors::tts::registry::EngineKind;

/// `coda bench tts` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct TtsBenchArgs {
    /// Engine: espeak-ng, elevenlabs, openai (default: tts.engine).
    #[arg(long)]
    pub engine: Option<EngineKind>,
    /// Measured runs (after one warm-up).
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// For elevenlabs/openai: talk to an in-process loopback server speaking the API's
    /// wire format (measures the client's own overhead; no network, no key).
    #[arg(long)]
    pub loopback: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// The two-sentence answer every run speaks.
pub const BENCH_ANSWER: &str =
    "The weather today is sunny and warm. You might want to bring your sunglasses.";
/// `coda bench tts`.
pub fn run(s: &Settings, args: TtsBenchArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut settings = s.clone();
        let name = args.engine.unwrap_or(s.tts.engine);
        // The loopback server must outlive the runs.
        let mut _server = None;
        if args.loopback && name != EngineKind::EspeakNg {
            use coda_actors::llm::scripted::{Reply, ScriptedServer, Step};
            // 1.5 s of a tone as s16le, streamed in 20 chunks.
            let rate = if name == EngineKind::OpenAi {
                24_000
            } else {
                22_050
            };
            let pcm: Vec<u8> = (0..rate * 3 / 2)
                .flat_map(|i| {
                    let v = (8000.0
                        * (2.0 * std::f32::consts::PI * 200.0 * i as f32 / rate as f32).sin())
                        as i16;
                    v.to_le_bytes()
                })
                .collect();
            let server = ScriptedServer::start(move |_| {
                let steps = pcm
                    .chunks(pcm.len() / 20 + 1)
                    .map(|c| Step::Write(c.to_vec()))
                    .collect();
                Reply::stream("audio/pcm", steps)
            })
            .await?;
            settings.tts.elevenlabs.base_url = server.url();
            settings.tts.openai.base_url = format!("{}/v1", server.url());
            settings.tts.fallback = crate::config::SpeechFallback::None;
            _server = Some(server);
        }
        let engine = tts_engine(&settings, Some(name), None)?;
        let mut splitter = SentenceSplitter::new();
        let mut sentences = splitter.push(BENCH_ANSWER);
        sentences.extend(splitter.finish());
        let mut first = Vec::new();
        let mut total = Vec::new();
        for run in 0..=args.runs {
            let t0 = Instant::now();
            let mut ttfa = 0.0;
            for (i, text) in sentences.iter().enumerate() {
                engine
                    .synthesize(text)
                    .await
                    .map_err(|e| anyhow::anyhow!("{}: {e}", engine.name()))?;
                if i == 0 {
                    ttfa = t0.elapsed().as_secs_f64() * 1000.0;
                }
            }
            if run > 0 {
                first.push(ttfa);
                total.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
        }
        let report = serde_json::json!({
            "engine": engine.name(),
            "loopback": args.loopback,
            "sentences": sentences.len(),
            "first_audio": summary(first),
            "total": summary(total),
        });
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!(
                "tts {}{}: {} runs of a {}-sentence answer",
                engine.name(),
                if args.loopback {
                    " (loopback server)"
                } else {
                    ""
                },
                args.runs,
                sentences.len()
            );
            for k in ["first_audio", "total"] {
                println!(
                    "  {k:<12} p50 {:>8.1} ms  p95 {:>8.1} ms  max {:>8.1} ms",
                    report[k]["p50_ms"].as_f64().unwrap_or(0.0),
                    report[k]["p95_ms"].as_f64().unwrap_or(0.0),
                    report[k]["max_ms"].as_f64().unwrap_or(0.0)
                );
            }
        }
        Ok(())
    })
}
