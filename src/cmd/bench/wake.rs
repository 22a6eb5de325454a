//! `coda bench wake`: the wake word on speakers it was not built from. Held-out espeak-ng
//! voices (accents and variants not in the reference) say the word before a command, in
//! a room (sox reverb) with pink noise at `--snr`; then `--minutes` of other speech by the
//! same voices, with the same noise, measures false wakes. One detector runs over each
//! whole stream, as on a live microphone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use coda_actors::audio::convert::read_wav_16k;
use coda_actors::stt::WhisperEngine;
use coda_actors::wake::synth::{held_out_voices, speak, Voice};
use coda_actors::wake::template::{trim, Reference, TemplateModel};
use coda_actors::wake::verify::{Verified, VerifyRequest, VerifySettings, WakeVerify};
use coda_actors::wake::{Detection, WakeDetector};
use serde::Serialize;

use crate::config::Loaded;

/// `coda bench wake` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct WakeBenchArgs {
    /// The reference (default: the configured word's, built if missing).
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Word matcher thresholds to measure (default: wake.candidate_threshold when
    /// verifying, else wake.threshold), e.g. `0.03,0.035,0.04`.
    #[arg(long, value_delimiter = ',')]
    pub threshold: Vec<f32>,
    /// Minutes of speech without the wake word.
    #[arg(long, default_value_t = 30.0)]
    pub minutes: f64,
    /// Speech-to-noise ratio of the added room noise, dB.
    #[arg(long, default_value_t = 15.0)]
    pub snr: f64,
    /// Which stretch of the (seeded) noise meets which speech: runs with other seeds
    /// measure other noise over the same voices.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// The word matcher alone: no check of its candidates by whisper (as with
    /// `wake.verify = false`).
    #[arg(long)]
    pub no_verify: bool,
    /// Whisper thresholds to measure (default: wake.verify_threshold), e.g. `-7.5,-7,-6.5`.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub verify_threshold: Vec<f32>,
    /// Whether the check looks at the match before the matcher reports it, each measured
    /// (default: wake.early_check), e.g. `true,false`.
    #[arg(long, value_delimiter = ',')]
    pub early: Vec<bool>,
}

const COMMANDS: [&str; 3] = [
    "what time is it",
    "turn on the kitchen lights",
    "set a timer for five minutes",
];

/// Prose for the false-wake test: the project's own documentation, read aloud.
const PROSE: [&str; 4] = [
    include_str!("../../../docs/architecture.md"),
    include_str!("../../../docs/voice.md"),
    include_str!("../../../docs/llm.md"),
    include_str!("../../../README.md"),
];

#[derive(Debug, Serialize)]
struct WakeReport {
    word: String,
    threshold: f32,
    /// Whisper's threshold (`None`: the word matcher alone).
    verify_threshold: Option<f32>,
    early: bool,
    /// Candidates whisper checked, per hour of other speech.
    candidates_per_hour: f64,
    verify_ms_p50: f64,
    verify_ms_p95: f64,
    voices: usize,
    wake_words: usize,
    detected: usize,
    detection_rate: f64,
    extra_detections_in_commands: usize,
    latency_after_word_p50_ms: f64,
    latency_after_word_p95_ms: f64,
    latency_after_word_max_ms: f64,
    non_wake_speech_s: f64,
    false_wakes: usize,
    false_wakes_per_hour: f64,
    cpu_percent_of_one_core: f64,
    snr_db: f64,
    missed: Vec<String>,
    /// What was being read when each false wake was reported.
    false_wake_sentences: Vec<String>,
}

/// Sentences of `text` fit to say: prose, 4 to 30 words, without the wake word's words.
fn sentences(text: &str, avoid: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_code = false;
    let mut para = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        let l = line.trim();
        if in_code || l.starts_with('#') || l.starts_with('|') || l.is_empty() {
            para.push('\n');
            continue;
        }
        para.push(' ');
        para.push_str(l.trim_start_matches(['-', '*', ' ']));
    }
    for s in para.split(['.', '?', '!', '\n', ';', ':']) {
        let clean: String = s
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || c == ' ' || c == ',' || c == '\'' {
                    c
                } else {
                    ' '
                }
            })
            .collect();
        let words: Vec<&str> = clean.split_whitespace().collect();
        let lower = clean.to_lowercase();
        if (4..=30).contains(&words.len()) && !avoid.iter().any(|w| lower.contains(w.as_str())) {
            out.push(words.join(" "));
        }
    }
    out
}

fn sox(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("sox").args(args).output().map_err(|e| {
        anyhow::anyhow!("cannot run sox ({e}): apt-get install sox (./scripts/setup does it)")
    })?;
    if !out.status.success() {
        bail!(
            "sox {:?}: {}",
            args,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `samples` in a small room (sox reverb), back at 16 kHz.
fn in_room(dir: &Path, samples: &[f32], reverb: u32) -> anyhow::Result<Vec<f32>> {
    let (dry, wet) = (dir.join("dry.wav"), dir.join("wet.wav"));
    super::write_wav_16k(&dry, samples)?;
    sox(&[
        dry.to_str().unwrap_or_default(),
        wet.to_str().unwrap_or_default(),
        "reverb",
        &reverb.to_string(),
        "50",
        "40",
    ])?;
    Ok(read_wav_16k(&wet)?)
}

struct Noise {
    samples: Vec<f32>,
    at: usize,
}

impl Noise {
    /// Adds noise to `speech` at `snr` dB below its speech level (RMS of its loud part).
    fn mix(&mut self, speech: &mut [f32], snr: f64) {
        let loud: Vec<f32> = trim(speech).to_vec();
        let level = coda_actors::audio::convert::rms(&loud).max(1e-4);
        let noise_rms = coda_actors::audio::convert::rms(&self.samples).max(1e-6);
        let gain = level / noise_rms * 10f32.powf(-(snr as f32) / 20.0);
        for s in speech.iter_mut() {
            *s += gain * self.samples[self.at];
            self.at = (self.at + 1) % self.samples.len();
        }
    }
}

/// Checks by the engine in this thread, each one's time kept, ms. Each answer is held
/// until the stream reaches the moment it would come in a live server (checks one at a
/// time, each taking the time it took here; one given up stops at once), so a detection is
/// reported at the push it would be live.
struct Recorded {
    engine: Arc<WhisperEngine>,
    checks: Mutex<Vec<f64>>,
    /// The stream position of the push under way, samples.
    pos: std::sync::atomic::AtomicU64,
    held: Mutex<Vec<Held>>,
}

struct Held {
    /// The stream position the answer would come at.
    at: u64,
    reply: std::sync::mpsc::Sender<Result<f64, String>>,
    answer: Result<f64, String>,
    cancel: Arc<std::sync::atomic::AtomicBool>,
}

impl Recorded {
    fn new(engine: Arc<WhisperEngine>) -> Recorded {
        Recorded {
            engine,
            checks: Default::default(),
            pos: Default::default(),
            held: Default::default(),
        }
    }

    /// The stream reached `pos`: answers due by then are given.
    fn reach(&self, pos: u64) {
        use std::sync::atomic::Ordering;
        self.pos.store(pos, Ordering::Relaxed);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        for h in held.extract_if(.., |h| h.at <= pos) {
            let _ = h.reply.send(h.answer);
        }
    }
}

impl WakeVerify for Recorded {
    fn verify(&self, r: VerifyRequest) {
        use std::sync::atomic::Ordering;
        let t0 = std::time::Instant::now();
        let answer = self
            .engine
            .phrase_score(&r.audio, &r.phrases, None)
            .map_err(|e| e.to_string());
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ms);
        let now = self.pos.load(Ordering::Relaxed);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let busy = held
            .iter()
            .filter(|h| !h.cancel.load(Ordering::Relaxed))
            .map(|h| h.at)
            .max()
            .unwrap_or(now);
        held.push(Held {
            at: busy.max(now) + (ms * 16.0) as u64,
            reply: r.reply,
            answer,
            cancel: r.cancel,
        });
    }
}

/// A detection: where the word started and ended, and the stream position it was reported
/// at.
struct Hit {
    start: usize,
    end: usize,
    reported: usize,
    /// The clip of other speech it came in.
    clip: usize,
}

impl Hit {
    fn new(d: &Detection, reported: usize) -> Hit {
        Hit {
            start: usize::try_from(d.start).unwrap_or(usize::MAX),
            end: usize::try_from(d.end).unwrap_or(usize::MAX),
            reported,
            clip: 0,
        }
    }
}

/// The wakes a listener has: a detection overlapping the one before is that word read to a
/// later end, which moves where the utterance starts (the segmenter's rule), not a wake.
fn wakes(hits: Vec<Hit>) -> Vec<Hit> {
    let mut out: Vec<Hit> = Vec::new();
    for h in hits {
        match out.last_mut() {
            Some(p) if h.start < p.end => p.end = p.end.max(h.end),
            _ => out.push(h),
        }
    }
    out
}

fn silence(ms: usize) -> Vec<f32> {
    vec![0.0; ms * 16]
}

/// `coda bench wake`.
pub fn run(loaded: &Loaded, args: WakeBenchArgs) -> anyhow::Result<()> {
    let settings = loaded.settings.wake_settings();
    let reference = match &args.reference {
        Some(p) => Reference::load(p)?,
        None => {
            coda_actors::wake::load_model(&settings)?;
            Reference::load(&settings.reference_path())?
        }
    };
    let word = reference.word.clone();
    let tmp = tempfile::tempdir()?;
    let noise_path = tmp.path().join("noise.wav");
    // Seeded (`-R`): every run adds the same noise, so runs compare.
    sox(&[
        "-R",
        "-n",
        "-r",
        "16000",
        "-c",
        "1",
        "-b",
        "16",
        noise_path.to_str().unwrap_or_default(),
        "synth",
        "37",
        "pinknoise",
    ])?;
    let samples = read_wav_16k(&noise_path)?;
    let at = (args.seed.wrapping_mul(104_729) % samples.len().max(1) as u64) as usize;
    let mut noise = Noise { samples, at };
    let voices = held_out_voices();
    let espeak = &settings.espeak;
    eprintln!("wake word {word:?}: {} held-out voices", voices.len());

    // The wake word before a command, once per voice and command.
    let mut stream = Vec::new();
    let mut words: Vec<(usize, usize, String)> = Vec::new();
    for (i, v) in voices.iter().enumerate() {
        let command = COMMANDS[i % COMMANDS.len()];
        let w = speak(espeak, v, &word)?;
        let w = trim(&w).to_vec();
        let c = speak(espeak, v, command)?;
        let c = trim(&c).to_vec();
        let mut clip = silence(800);
        let start = clip.len();
        clip.extend_from_slice(&w);
        let end = clip.len();
        clip.extend(silence(120));
        clip.extend_from_slice(&c);
        clip.extend(silence(1200));
        let mut clip = in_room(tmp.path(), &clip, 30 + (i as u32 * 7) % 40)?;
        noise.mix(&mut clip, args.snr);
        let base = stream.len();
        words.push((base + start, base + end, v.label()));
        stream.extend(clip);
    }

    // Speech without the wake word.
    let avoid: Vec<String> = word
        .to_lowercase()
        .split_whitespace()
        .filter(|w| w.len() > 3)
        .map(str::to_string)
        .collect();
    let prose: Vec<String> = PROSE.iter().flat_map(|t| sentences(t, &avoid)).collect();
    if prose.is_empty() {
        bail!("no sentences to speak");
    }
    let target = (args.minutes * 60.0 * 16_000.0) as usize;
    let mut other: Vec<Vec<f32>> = Vec::new();
    let mut speech_samples = 0usize;
    while speech_samples < target {
        let n = other.len();
        let v: &Voice = &voices[n % voices.len()];
        let text = &prose[n % prose.len()];
        let s = speak(espeak, v, text).with_context(|| format!("speaking {text:?}"))?;
        let mut clip = trim(&s).to_vec();
        speech_samples += clip.len();
        clip.extend(silence(300));
        let mut clip = if n % 4 == 3 {
            in_room(tmp.path(), &clip, 40)?
        } else {
            clip
        };
        noise.mix(&mut clip, args.snr);
        other.push(clip);
        if other.len().is_multiple_of(100) {
            eprintln!(
                "  spoken {:.1} of {:.0} min of other speech",
                speech_samples as f64 / 16_000.0 / 60.0,
                args.minutes
            );
        }
    }
    let speech_s = speech_samples as f64 / 16_000.0;
    let verify = settings.verify.filter(|_| !args.no_verify);
    let engine = match verify {
        Some(_) => {
            let s = crate::cmd::transcribe::stt_settings(loaded, None, None);
            let engine = coda_actors::stt::load_engine(&s).map_err(|e| {
                anyhow::anyhow!("{e}\n(the wake word is verified with the speech-to-text model; --no-verify measures the word matcher alone)")
            })?;
            Some(Arc::new(engine))
        }
        None => None,
    };
    let thresholds = match (&args.threshold[..], verify) {
        ([], Some(v)) => vec![v.candidate_threshold],
        ([], None) => vec![settings.threshold],
        (t, _) => t.to_vec(),
    };
    let verify_thresholds: Vec<Option<f32>> = match (&args.verify_threshold[..], verify) {
        (_, None) => vec![None],
        ([], Some(v)) => vec![Some(v.threshold)],
        (t, Some(_)) => t.iter().copied().map(Some).collect(),
    };
    let earlies = match (&args.early[..], verify) {
        (_, None) => vec![false],
        ([], Some(v)) => vec![v.early],
        (e, Some(_)) => e.to_vec(),
    };
    let mut reports = Vec::new();
    let runs: Vec<(f32, Option<f32>, bool)> = thresholds
        .iter()
        .flat_map(|t| verify_thresholds.iter().map(move |v| (*t, *v)))
        .flat_map(|(t, v)| earlies.iter().map(move |e| (t, v, *e)))
        .collect();
    for (threshold, vt, early) in runs {
        let model = TemplateModel::new(reference.clone(), threshold);
        // The detector as it runs, one pass per setting (whether a candidate is checked
        // at all depends on the checks before it), with its checks' answers coming when
        // they would live.
        let detector = || -> (Box<dyn WakeDetector>, Option<Arc<Recorded>>) {
            match (&engine, vt) {
                (Some(e), Some(vt)) => {
                    let rec = Arc::new(Recorded::new(e.clone()));
                    let settings = VerifySettings {
                        candidate_threshold: threshold,
                        threshold: vt,
                        early,
                    };
                    let d = Verified::over(&model, rec.clone(), settings);
                    (Box::new(d), Some(rec))
                }
                _ => (Box::new(model.detector()), None),
            }
        };
        let (mut d, rec) = detector();
        let mut hits: Vec<Hit> = Vec::new();
        let mut pos = 0;
        for chunk in stream.chunks(320) {
            pos += chunk.len();
            if let Some(r) = &rec {
                r.reach(pos as u64);
            }
            if let Some(h) = d.push(chunk) {
                hits.push(Hit::new(&h, pos));
            }
        }
        let (mut d, rec) = detector();
        let mut false_hits: Vec<Hit> = Vec::new();
        let cpu0 = super::process_cpu_us();
        let mut pos = 0u64;
        for (n, clip) in other.iter().enumerate() {
            for chunk in clip.chunks(320) {
                pos += chunk.len() as u64;
                if let Some(r) = &rec {
                    r.reach(pos);
                }
                if let Some(h) = d.push(chunk) {
                    false_hits.push(Hit {
                        clip: n,
                        ..Hit::new(&h, 0)
                    });
                }
            }
        }
        let cpu = (super::process_cpu_us() - cpu0) as f64 * 1e-6;
        let mut checks: Vec<f64> = rec
            .map(|r| r.checks.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .unwrap_or_default();
        checks.sort_by(|a, b| a.total_cmp(b));
        {
            let hits = wakes(hits);
            let false_wakes = wakes(false_hits);
            let false_wake_sentences: Vec<String> = false_wakes
                .iter()
                .map(|h| prose[h.clip % prose.len()].clone())
                .collect();
            let false_wakes = false_wakes.len();
            let mut latencies = Vec::new();
            let mut missed = Vec::new();
            let mut used = vec![false; hits.len()];
            for (start, end, label) in &words {
                let found = hits.iter().enumerate().find(|(k, h)| {
                    !used[*k] && h.end + 4_800 >= *end && h.end <= end + 8_000 && h.end > *start
                });
                match found {
                    Some((k, h)) => {
                        used[k] = true;
                        latencies.push((h.reported as f64 - *end as f64) / 16.0);
                    }
                    None => missed.push(label.clone()),
                }
            }
            let extra = used.iter().filter(|u| !**u).count();
            latencies.sort_by(|a, b| a.total_cmp(b));
            reports.push(WakeReport {
                word: word.clone(),
                threshold,
                verify_threshold: vt,
                early,
                candidates_per_hour: checks.len() as f64 * 3600.0 / speech_s,
                verify_ms_p50: super::pct(&checks, 0.5),
                verify_ms_p95: super::pct(&checks, 0.95),
                voices: voices.len(),
                wake_words: words.len(),
                detected: words.len() - missed.len(),
                detection_rate: (words.len() - missed.len()) as f64 / words.len() as f64,
                extra_detections_in_commands: extra,
                latency_after_word_p50_ms: super::pct(&latencies, 0.5),
                latency_after_word_p95_ms: super::pct(&latencies, 0.95),
                latency_after_word_max_ms: latencies.last().copied().unwrap_or(0.0),
                non_wake_speech_s: speech_s,
                false_wakes,
                false_wakes_per_hour: false_wakes as f64 * 3600.0 / speech_s,
                cpu_percent_of_one_core: cpu / speech_s * 100.0,
                snr_db: args.snr,
                missed: missed.clone(),
                false_wake_sentences,
            });
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(());
    }
    for report in reports {
        let check = match report.verify_threshold {
            Some(t) => format!(
                ", verified by whisper at {t:.2}{} ({:.0} candidates/h, check p50 {:.0} ms, p95 {:.0} ms)",
                if report.early { ", looking early" } else { "" },
                report.candidates_per_hour, report.verify_ms_p50, report.verify_ms_p95
            ),
            None => ", not verified".into(),
        };
        println!(
            "wake word {:?} at threshold {:.3}{check}, {} held-out voices, noise at {:.0} dB SNR\n  detected {}/{} ({:.1} %), {} extra detections during commands\n  detection after the word ended: p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms\n  false wakes: {} in {:.1} min of other speech ({:.2} per hour)\n  CPU while listening: {:.2} % of one core",
            report.word,
            report.threshold,
            report.voices,
            report.snr_db,
            report.detected,
            report.wake_words,
            report.detection_rate * 100.0,
            report.extra_detections_in_commands,
            report.latency_after_word_p50_ms,
            report.latency_after_word_p95_ms,
            report.latency_after_word_max_ms,
            report.false_wakes,
            report.non_wake_speech_s / 60.0,
            report.false_wakes_per_hour,
            report.cpu_percent_of_one_core
        );
        if !report.missed.is_empty() {
            println!("  missed: {}", report.missed.join(", "));
        }
        for s in &report.false_wake_sentences {
            println!("  false wake while reading: {s:?}");
        }
    }
    Ok(())
}
