//! `coda transcribe FILE.wav`: speech-to-text from the command line with the same engine
//! and settings the Stt actor uses.
//!
//! Any WAV `hound` reads is mixed down to mono and resampled to 16 kHz
//! ([`read_wav_16k`], the capture path's resampler).

use std::path::PathBuf;

use coda_actors::audio::convert::read_wav_16k;
use coda_actors::stt::{load_engine, SttSettings};
use serde::Serialize;

use crate::config::Loaded;

/// `coda transcribe` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct TranscribeArgs {
    /// The WAV file.
    pub file: PathBuf,
    /// Print JSON: {text, confidence, duration_ms, language, audio_ms}.
    #[arg(long)]
    pub json: bool,
    /// Model name in the store or a ggml file (default: stt.model).
    #[arg(long)]
    pub model: Option<String>,
    /// Threads (default: stt.threads; 0 = half the cores, 1 to 4).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// `[stt]` with the command's `--model` and `--threads`.
pub(crate) fn stt_settings(
    loaded: &Loaded,
    model: Option<String>,
    threads: Option<usize>,
) -> SttSettings {
    let mut s = loaded.settings.stt_settings();
    if let Some(m) = model {
        s.model = m;
    }
    if let Some(t) = threads {
        s.threads = t;
    }
    s
}

/// What `coda transcribe --json` prints.
#[derive(Debug, Serialize)]
struct TranscribeOutput {
    text: String,
    confidence: f64,
    duration_ms: f64,
    language: String,
    audio_ms: f64,
    audio_ctx: i32,
    attempts: u32,
}

/// `coda transcribe`.
pub fn run(loaded: &Loaded, args: TranscribeArgs) -> anyhow::Result<()> {
    let samples = read_wav_16k(&args.file)?;
    let engine = load_engine(&stt_settings(loaded, args.model, args.threads))?;
    let t = engine.transcribe(&samples, None)?;
    if args.json {
        let out = TranscribeOutput {
            text: t.text,
            confidence: t.confidence,
            duration_ms: t.elapsed_ms,
            language: t.language,
            audio_ms: t.audio_ms,
            audio_ctx: t.audio_ctx,
            attempts: t.attempts,
        };
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!("{}", t.text);
    }
    Ok(())
}
