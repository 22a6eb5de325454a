//! `coda bench stt`: time to transcribe a short command and the real-time factor,
//! optionally beside whisper.cpp's own `whisper-cli` on the same file, or accuracy over a
//! corpus of spoken commands.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use coda_actors::audio::convert::read_wav_16k;
use coda_actors::stt::load_engine;
use coda_actors::voice::SPEECH_SAMPLE_RATE;
use serde::Serialize;

use crate::cmd::transcribe::stt_settings;
use crate::config::Loaded;

/// `coda bench stt` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct SttBenchArgs {
    /// The WAV to transcribe (default: a 3-second command spoken by espeak-ng).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Measured runs (after one warm-up).
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Model name or ggml file (default: stt.model).
    #[arg(long)]
    pub model: Option<String>,
    /// Threads (default: stt.threads; 0 = half the cores, 1 to 4).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Also run whisper.cpp's own `whisper-cli` on the same file and model.
    #[arg(long, value_name = "PATH")]
    pub whisper_cli: Option<PathBuf>,
    /// Accuracy over a set of spoken commands: DIR/corpus.tsv lists `FILE<TAB>TEXT`
    /// (`scripts/voice-corpus DIR` makes one). Prints word error rate, looping transcripts
    /// and times per file, beside whisper-cli's when `--whisper-cli` is given.
    #[arg(long, value_name = "DIR", conflicts_with = "file")]
    pub corpus: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Timing {
    runs: usize,
    p50_ms: f64,
    p95_ms: f64,
    min_ms: f64,
    rtf_p50: f64,
}

impl Timing {
    fn from(mut ms: Vec<f64>, audio_ms: f64) -> Timing {
        ms.sort_by(|a, b| a.total_cmp(b));
        let p50 = super::pct(&ms, 0.5);
        Timing {
            runs: ms.len(),
            p50_ms: p50,
            p95_ms: super::pct(&ms, 0.95),
            min_ms: ms.first().copied().unwrap_or(0.0),
            rtf_p50: p50 / audio_ms.max(1.0),
        }
    }
}

#[derive(Debug, Serialize)]
struct SttBenchReport {
    file: String,
    model: String,
    threads: usize,
    audio_ms: f64,
    load_ms: f64,
    text: String,
    coda: Timing,
    #[serde(skip_serializing_if = "Option::is_none")]
    whisper_cli_full_window: Option<Timing>,
    #[serde(skip_serializing_if = "Option::is_none")]
    whisper_cli_same_audio_ctx: Option<Timing>,
    #[serde(skip_serializing_if = "Option::is_none")]
    whisper_cli_same_audio_ctx_wall: Option<Timing>,
    #[serde(skip_serializing_if = "Option::is_none")]
    whisper_cli_text: Option<String>,
}

/// The default benchmark input: a spoken 3-second command.
fn spoken_command(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("command.wav");
    super::espeak_wav(
        &path,
        "Turn on the kitchen lights and set a timer for ten minutes.",
    )
    .context("making the test command; pass --file WAV")?;
    Ok(path)
}

/// A `whisper_print_timings: NAME time = X ms` figure from whisper-cli's stderr.
fn cli_timing(stderr: &str, name: &str) -> Option<f64> {
    stderr.lines().find_map(|l| {
        let rest = l.strip_prefix("whisper_print_timings:")?.trim_start();
        let rest = rest
            .strip_prefix(name)?
            .trim_start()
            .strip_prefix("time =")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Runs whisper-cli (greedy, no fallback, no timestamps: the engine's settings) `runs`
/// times after a warm-up; times are its own `total - load` (transcription in process,
/// comparable to the engine's), and the wall time including process start and load.
fn run_whisper_cli(
    cli: &Path,
    model: &Path,
    wav: &Path,
    threads: usize,
    audio_ctx: Option<i32>,
    runs: usize,
    audio_ms: f64,
) -> anyhow::Result<(Timing, Timing, String)> {
    let (mut inproc, mut wall) = (Vec::new(), Vec::new());
    let mut text = String::new();
    for i in 0..=runs {
        let mut c = Command::new(cli);
        c.arg("-m")
            .arg(model)
            .arg("-f")
            .arg(wav)
            .args(["-t", &threads.to_string(), "-nt", "-l", "en", "-nf"])
            .args(["-bs", "1", "-bo", "1"]);
        if let Some(ac) = audio_ctx {
            c.args(["-ac", &ac.to_string()]);
        }
        let t0 = Instant::now();
        let out = c
            .output()
            .with_context(|| format!("cannot run {}", cli.display()))?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        if !out.status.success() {
            bail!("{} failed ({})", cli.display(), out.status);
        }
        let err = String::from_utf8_lossy(&out.stderr);
        let (Some(total), Some(load)) = (cli_timing(&err, "total"), cli_timing(&err, "load"))
        else {
            bail!("{} printed no timings", cli.display());
        };
        if i > 0 {
            inproc.push(total - load);
            wall.push(ms);
        }
        text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    Ok((
        Timing::from(inproc, audio_ms),
        Timing::from(wall, audio_ms),
        text,
    ))
}

#[derive(Debug, Serialize)]
struct CorpusRow {
    file: String,
    reference: String,
    audio_ms: f64,
    text: String,
    wer: f64,
    looped: bool,
    ms: f64,
    audio_ctx: i32,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    cli_full: Option<CliRun>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cli_same_ctx: Option<CliRun>,
}

#[derive(Debug, Serialize)]
struct CliRun {
    text: String,
    wer: f64,
    looped: bool,
    ms: f64,
}

#[derive(Debug, Serialize)]
struct CorpusSummary {
    engine: String,
    files: usize,
    wer_percent: f64,
    looped: usize,
    p50_ms: f64,
    p95_ms: f64,
}

fn summarise(engine: &str, rows: &[(&str, &str, f64, bool)], files: usize) -> CorpusSummary {
    let (mut errors, mut words) = (0usize, 0usize);
    let mut times = Vec::new();
    let mut looped = 0;
    for (reference, text, ms, l) in rows {
        let r = crate::wer::normalise(reference);
        errors += crate::wer::word_errors(&r, &crate::wer::normalise(text));
        words += r.len();
        times.push(*ms);
        looped += usize::from(*l);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    CorpusSummary {
        engine: engine.to_string(),
        files,
        wer_percent: 100.0 * errors as f64 / words.max(1) as f64,
        looped,
        p50_ms: super::pct(&times, 0.5),
        p95_ms: super::pct(&times, 0.95),
    }
}

/// A transcript that loops or is longer than the speech allows (the engine's own check,
/// applied to any engine's text).
fn looped(text: &str, audio_ms: f64) -> bool {
    #[cfg(feature = "stt")]
    {
        coda_actors::stt::degenerate(text, audio_ms / 1000.0, false).is_some()
    }
    #[cfg(not(feature = "stt"))]
    {
        let _ = (text, audio_ms);
        false
    }
}

/// `coda bench stt --corpus DIR`: each file once with the engine and, interleaved, with
/// whisper-cli at its full window and at the engine's first window.
fn bench_corpus(loaded: &Loaded, args: &SttBenchArgs, dir: &Path) -> anyhow::Result<()> {
    let list = dir.join("corpus.tsv");
    let text = std::fs::read_to_string(&list).with_context(|| {
        format!(
            "cannot read {} (make one with scripts/voice-corpus DIR)",
            list.display()
        )
    })?;
    let entries: Vec<(PathBuf, String)> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (f, r) = l
                .split_once('\t')
                .ok_or_else(|| anyhow!("{}: line without a tab: {l:?}", list.display()))?;
            Ok((dir.join(f), r.trim().to_string()))
        })
        .collect::<anyhow::Result<_>>()?;
    if entries.is_empty() {
        bail!("{} lists no files", list.display());
    }
    let s = stt_settings(loaded, args.model.clone(), args.threads);
    let threads = if s.threads == 0 {
        coda_actors::stt::default_threads()
    } else {
        s.threads
    };
    let engine = load_engine(&s)?;
    let model_path = loaded
        .settings
        .model_store()
        .resolve(&s.model)
        .map_err(|e| anyhow!("{e}"))?;
    let tmp = tempfile::tempdir()?;
    // Warm-up: the first run pays for allocating the state.
    engine.transcribe(&read_wav_16k(&entries[0].0)?, None)?;
    let mut rows = Vec::new();
    for (file, reference) in &entries {
        let samples = read_wav_16k(file)?;
        let audio_ms = samples.len() as f64 * 1000.0 / f64::from(SPEECH_SAMPLE_RATE);
        let t = engine.transcribe(&samples, None)?;
        let mut row = CorpusRow {
            file: file.display().to_string(),
            reference: reference.clone(),
            audio_ms,
            wer: crate::wer::wer(reference, &t.text),
            looped: looped(&t.text, audio_ms),
            text: t.text,
            ms: t.elapsed_ms,
            audio_ctx: t.audio_ctx,
            attempts: t.attempts,
            cli_full: None,
            cli_same_ctx: None,
        };
        if let Some(cli) = &args.whisper_cli {
            let wav16 = tmp.path().join("input-16k.wav");
            super::write_wav_16k(&wav16, &samples)?;
            let run = |ac: Option<i32>| -> anyhow::Result<CliRun> {
                let (t, _, text) =
                    run_whisper_cli(cli, &model_path, &wav16, threads, ac, 1, audio_ms)?;
                Ok(CliRun {
                    wer: crate::wer::wer(reference, &text),
                    looped: looped(&text, audio_ms),
                    text,
                    ms: t.p50_ms,
                })
            };
            row.cli_full = Some(run(None)?);
            #[cfg(feature = "stt")]
            {
                let first = coda_actors::stt::context_plan(
                    (samples.len().max(17_600)) as f64 / 16_000.0,
                    1500,
                )[0];
                row.cli_same_ctx = Some(run(Some(first))?);
            }
        }
        if !args.json {
            println!(
                "{:>5.0} ms audio  {:>6.0} ms  ctx {:>4} x{}  wer {:>5.1}%{}  {:?} → {:?}{}",
                row.audio_ms,
                row.ms,
                row.audio_ctx,
                row.attempts,
                row.wer * 100.0,
                if row.looped { " LOOP" } else { "" },
                row.reference,
                row.text,
                row.cli_full
                    .as_ref()
                    .map(|c| format!("  | whisper-cli {:.0} ms {:?}", c.ms, c.text))
                    .unwrap_or_default()
            );
        }
        rows.push(row);
    }
    let n = rows.len();
    let mut summaries = vec![summarise(
        "coda",
        &rows
            .iter()
            .map(|r| (r.reference.as_str(), r.text.as_str(), r.ms, r.looped))
            .collect::<Vec<_>>(),
        n,
    )];
    for (name, pick) in [
        ("whisper-cli full window", 0usize),
        ("whisper-cli same first window", 1usize),
    ] {
        let got: Vec<_> = rows
            .iter()
            .filter_map(|r| {
                let c = if pick == 0 {
                    r.cli_full.as_ref()
                } else {
                    r.cli_same_ctx.as_ref()
                }?;
                Some((r.reference.as_str(), c.text.as_str(), c.ms, c.looped))
            })
            .collect();
        if !got.is_empty() {
            summaries.push(summarise(name, &got, n));
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"files": rows, "summary": summaries, "threads": threads, "model": s.model})
            )?
        );
    } else {
        println!("model {}, {threads} threads, {n} files", s.model);
        for x in &summaries {
            println!(
                "  {:<30} WER {:>5.1}%  looping {:>2}  p50 {:>6.0} ms  p95 {:>6.0} ms",
                x.engine, x.wer_percent, x.looped, x.p50_ms, x.p95_ms
            );
        }
    }
    Ok(())
}

/// `coda bench stt`.
pub fn run(loaded: &Loaded, args: SttBenchArgs) -> anyhow::Result<()> {
    if let Some(dir) = args.corpus.clone() {
        return bench_corpus(loaded, &args, &dir);
    }
    let tmp = tempfile::tempdir()?;
    let file = match &args.file {
        Some(f) => f.clone(),
        None => spoken_command(tmp.path())?,
    };
    let samples = read_wav_16k(&file)?;
    let audio_ms = samples.len() as f64 * 1000.0 / f64::from(SPEECH_SAMPLE_RATE);
    let s = stt_settings(loaded, args.model.clone(), args.threads);
    let threads = if s.threads == 0 {
        coda_actors::stt::default_threads()
    } else {
        s.threads
    };
    let t0 = Instant::now();
    let engine = load_engine(&s)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let warm = engine.transcribe(&samples, None)?;
    let mut times = Vec::new();
    for _ in 0..args.runs.max(1) {
        let t = engine.transcribe(&samples, None)?;
        times.push(t.elapsed_ms);
    }
    let coda = Timing::from(times, audio_ms);
    let mut report = SttBenchReport {
        file: file.display().to_string(),
        model: s.model.clone(),
        threads,
        audio_ms,
        load_ms,
        text: warm.text,
        coda,
        whisper_cli_full_window: None,
        whisper_cli_same_audio_ctx: None,
        whisper_cli_same_audio_ctx_wall: None,
        whisper_cli_text: None,
    };
    if let Some(cli) = &args.whisper_cli {
        let model_path = loaded
            .settings
            .model_store()
            .resolve(&s.model)
            .map_err(|e| anyhow!("{e}"))?;
        let wav16 = tmp.path().join("input-16k.wav");
        super::write_wav_16k(&wav16, &samples)?;
        let runs = args.runs.max(1);
        let (full, _, text) =
            run_whisper_cli(cli, &model_path, &wav16, threads, None, runs, audio_ms)?;
        #[cfg(feature = "stt")]
        let ac = Some(coda_actors::stt::audio_ctx_for(
            (samples.len().max(17_600)) as f64 / 16_000.0,
            1500,
        ));
        #[cfg(not(feature = "stt"))]
        let ac: Option<i32> = None;
        let (same, same_wall, _) =
            run_whisper_cli(cli, &model_path, &wav16, threads, ac, runs, audio_ms)?;
        report.whisper_cli_full_window = Some(full);
        report.whisper_cli_same_audio_ctx = Some(same);
        report.whisper_cli_same_audio_ctx_wall = Some(same_wall);
        report.whisper_cli_text = Some(text);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "stt bench: {} ({:.0} ms of audio), model {}, {} threads, load {:.0} ms",
        report.file, report.audio_ms, report.model, report.threads, report.load_ms
    );
    println!("  text: {}", report.text);
    let row = |name: &str, t: &Timing| {
        println!(
            "  {name:<30} p50 {:>7.1} ms  p95 {:>7.1} ms  min {:>7.1} ms  RTF {:.3}  ({} runs)",
            t.p50_ms, t.p95_ms, t.min_ms, t.rtf_p50, t.runs
        )
    };
    row("coda (whisper-rs)", &report.coda);
    if let Some(t) = &report.whisper_cli_full_window {
        row("whisper-cli (30 s window)", t);
    }
    if let Some(t) = &report.whisper_cli_same_audio_ctx {
        row("whisper-cli (same audio_ctx)", t);
    }
    if let Some(t) = &report.whisper_cli_same_audio_ctx_wall {
        row("  … wall, with start + load", t);
    }
    if let Some(t) = &report.whisper_cli_text {
        println!("  whisper-cli text: {t}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whisper_cli_timings_parse() {
        let err = "whisper_print_timings:     load time =   159.01 ms\nwhisper_print_timings:   encode time =   329.47 ms /     1 runs (   329.47 ms per run)\nwhisper_print_timings:    total time =   827.75 ms\n";
        assert_eq!(cli_timing(err, "load"), Some(159.01));
        assert_eq!(cli_timing(err, "encode"), Some(329.47));
        assert_eq!(cli_timing(err, "total"), Some(827.75));
        assert_eq!(cli_timing(err, "mel"), None);
    }
}
