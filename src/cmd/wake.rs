//! `coda wake train|test|info`: build a wake word reference and try it on recordings.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Subcommand;
use coda_actors::audio::convert::read_wav_16k;
use coda_actors::stt::EngineVerifier;
use coda_actors::wake::template::{Reference, TemplateModel};
use coda_actors::wake::verify::{Verified, VerifySettings};
use coda_actors::wake::{synth, WakeDetector, WakeSettings};

use crate::config::Loaded;

/// `coda wake ...`
#[derive(Debug, Subcommand)]
pub enum WakeCommand {
    /// Build a wake word reference from recordings of it (3 to 8 WAV files, one saying of
    /// the word each, any rate), or with no files from espeak-ng voices.
    Train {
        /// The words, e.g. "hey coda".
        word: String,
        /// Recordings of the word.
        files: Vec<PathBuf>,
        /// Where to write it (default: where `wake.word = WORD` would read it).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the wake words detected in a WAV file, with times and scores.
    Test {
        file: PathBuf,
        /// A reference file (default: the configured word's).
        #[arg(long)]
        reference: Option<PathBuf>,
        /// Word matcher threshold (default: wake.candidate_threshold when verifying,
        /// else wake.threshold).
        #[arg(long)]
        threshold: Option<f32>,
        /// Also print the word matcher's best score of every second.
        #[arg(long)]
        scores: bool,
        /// The word matcher alone: no check by the speech-to-text model.
        #[arg(long)]
        no_verify: bool,
    },
    /// Show a reference: its word, examples and where they came from.
    Info {
        /// A reference file (default: the configured word's).
        reference: Option<PathBuf>,
    },
}

/// `coda wake`.
pub fn run(loaded: &Loaded, cmd: WakeCommand) -> anyhow::Result<()> {
    let settings = loaded.settings.wake_settings();
    match cmd {
        WakeCommand::Train { word, files, out } => {
            let target = WakeSettings {
                word: word.clone(),
                reference: out,
                ..settings.clone()
            };
            let path = target.reference_path();
            let reference = if files.is_empty() {
                synth::reference(&word, &settings.espeak)?
            } else {
                let clips = files
                    .iter()
                    .map(|f| {
                        let samples = read_wav_16k(f).with_context(|| f.display().to_string())?;
                        Ok((f.display().to_string(), samples))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                // Other speech for the codebook: espeak-ng's when it is there.
                let background = synth::background(&settings.espeak).unwrap_or_else(|e| {
                    eprintln!("note: {e}; the codebook is built from your recordings alone");
                    Vec::new()
                });
                Reference::build(&word, &clips, &background)?
            };
            reference.save(&path)?;
            println!(
                "wake word {:?}: {} examples → {}",
                reference.word,
                reference.examples.len(),
                path.display()
            );
            if files.len() == 1 || files.len() == 2 {
                println!("tip: 3 to 8 recordings (different days, distances, tones) detect more reliably");
            }
            Ok(())
        }
        WakeCommand::Test {
            file,
            reference,
            threshold,
            scores,
            no_verify,
        } => {
            let path = reference.unwrap_or_else(|| settings.reference_path());
            let r = Reference::load(&path)?;
            let samples = read_wav_16k(&file).with_context(|| file.display().to_string())?;
            let verify = match settings.verify.filter(|_| !no_verify) {
                Some(v) => {
                    let s = crate::cmd::transcribe::stt_settings(loaded, None, None);
                    match coda_actors::stt::load_engine(&s) {
                        Ok(e) => Some((v, EngineVerifier(Arc::new(e)))),
                        Err(e) => {
                            eprintln!("note: not verified by whisper ({e}); the word matcher alone decides at wake.threshold");
                            None
                        }
                    }
                }
                None => None,
            };
            let model = TemplateModel::new(r, settings.threshold);
            let mut d: Box<dyn WakeDetector> = match verify {
                Some((v, engine)) => Box::new(Verified::over(
                    &model,
                    Arc::new(engine),
                    VerifySettings {
                        candidate_threshold: threshold.unwrap_or(v.candidate_threshold),
                        ..v
                    },
                )),
                None => Box::new(model.detector_at(threshold.unwrap_or(settings.threshold))),
            };
            let mut probe = scores.then(|| model.detector());
            let mut found = 0;
            for (i, second) in samples.chunks(16_000).enumerate() {
                for chunk in second.chunks(320) {
                    if let Some(p) = probe.as_mut() {
                        p.push(chunk);
                    }
                    if let Some(hit) = d.push(chunk) {
                        found += 1;
                        let check = hit
                            .verified
                            .map(|v| format!("  verified {v:.2}"))
                            .unwrap_or_default();
                        println!(
                            "{:8.2} s  {:?}  score {:.3}{check}  (word {:.2}–{:.2} s)",
                            (hit.end + coda_actors::wake::template::PATIENCE * 160) as f64
                                / 16_000.0,
                            hit.word,
                            hit.score,
                            hit.start as f64 / 16_000.0,
                            hit.end as f64 / 16_000.0
                        );
                    }
                }
                if let Some(p) = probe.as_mut() {
                    println!("{:8} s  best score {:.3}", i, p.best_score());
                }
            }
            if found == 0 {
                println!(
                    "no wake word detected ({:.1} s of audio)",
                    samples.len() as f64 / 16_000.0
                );
            }
            Ok(())
        }
        WakeCommand::Info { reference } => {
            let path = reference.unwrap_or_else(|| settings.reference_path());
            let r = Reference::load(&path)?;
            println!(
                "{}: wake word {:?}, {} examples",
                path.display(),
                r.word,
                r.examples.len()
            );
            for (s, e) in r.sources.iter().zip(&r.examples) {
                println!("  {s}  ({} ms)", e.len() * 10);
            }
            Ok(())
        }
    }
}
