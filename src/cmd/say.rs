//! `coda say`: speak text with the configured (or chosen) engine; play it, or write a WAV.

use std::path::PathBuf;

use anyhow::Context as _;
use coda_actors::tts::{Audio, SentenceSplitter};

use crate::config::Settings;
use crate::speech::tts_engine;

/// `coda say` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct SayArgs {
    /// What to say.
    pub text: String,
    /// Write a WAV file (16-bit mono) instead of playing.
    #[arg(short, long, value_name = "FILE.wav")]
    pub output: Option<PathBuf>,
    /// Engine: espeak-ng, elevenlabs, openai (default: tts.engine).
    #[arg(long)]
    pub engine: Option<coda_actors::tts::registry::EngineKind>,
    /// Voice (engine-specific; default: the engine's configured voice).
    #[arg(long)]
    pub voice: Option<String>,
}

/// Linear-interpolation rate change (only when sentences came back at different rates,
/// e.g. a fallback engine spoke one of them).
fn retime(samples: &[i16], from: u32, to: u32) -> Vec<i16> {
    if from == to || samples.is_empty() {
        return samples.to_vec();
    }
    let n = (samples.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    (0..n)
        .map(|i| {
            let x = i as f64 * f64::from(from) / f64::from(to);
            let j = x.floor() as usize;
            let f = x - j as f64;
            let a = f64::from(samples[j.min(samples.len() - 1)]);
            let b = f64::from(samples[(j + 1).min(samples.len() - 1)]);
            (a + (b - a) * f).round() as i16
        })
        .collect()
}

/// Writes 16-bit mono PCM as a WAV file.
pub fn write_wav(path: &std::path::Path, audio: &Audio) -> anyhow::Result<()> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: audio.sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec)
        .with_context(|| format!("cannot create {}", path.display()))?;
    for &s in &audio.samples {
        w.write_sample(s)?;
    }
    w.finalize()
        .with_context(|| format!("cannot finish {}", path.display()))?;
    Ok(())
}

/// `coda say`.
pub fn run(s: &Settings, args: SayArgs) -> anyhow::Result<()> {
    let engine = tts_engine(s, args.engine, args.voice.as_deref())?;
    let mut splitter = SentenceSplitter::new();
    let mut sentences = splitter.push(&args.text);
    sentences.extend(splitter.finish());
    if sentences.is_empty() {
        anyhow::bail!("nothing to say");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let speak = |text: String| {
            let engine = engine.clone();
            async move {
                match engine.synthesize_reported(&text).await {
                    Ok((audio, covered)) => {
                        if let Some(e) = covered {
                            eprintln!(
                                "note: {} failed ({e}); spoke with {}",
                                engine.name(),
                                engine.fallback_name().unwrap_or("the fallback")
                            );
                        }
                        Ok(audio)
                    }
                    Err(e) => Err(anyhow::anyhow!("{}: {e}", engine.name())),
                }
            }
        };
        match args.output {
            Some(path) => {
                let mut all = Audio {
                    samples: Vec::new(),
                    sample_rate: 0,
                };
                for text in sentences {
                    let a = speak(text).await?;
                    if all.sample_rate == 0 {
                        all.sample_rate = a.sample_rate;
                    }
                    all.samples
                        .extend(retime(&a.samples, a.sample_rate, all.sample_rate));
                }
                write_wav(&path, &all)?;
                eprintln!(
                    "wrote {} ({:.2} s at {} Hz)",
                    path.display(),
                    all.duration_ms() / 1000.0,
                    all.sample_rate
                );
                Ok(())
            }
            None => play_sentences(s, sentences, speak).await,
        }
    })
}

#[cfg(feature = "audio")]
async fn play_sentences<F, Fut>(
    s: &Settings,
    sentences: Vec<String>,
    speak: F,
) -> anyhow::Result<()>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Audio>>,
{
    let device = s.audio.output_device.clone();
    let speaker =
        tokio::task::spawn_blocking(move || coda_actors::audio::Speaker::open(&device, None))
            .await?
            .map_err(|e| {
                anyhow::anyhow!("cannot play: {e}. Write a file instead: coda say TEXT -o out.wav")
            })?;
    // The next sentence is synthesised while the previous one plays.
    let mut playing: Option<tokio::task::JoinHandle<coda_actors::audio::PlayOutcome>> = None;
    for text in sentences {
        let audio = speak(text).await?;
        if let Some(p) = playing.take() {
            p.await?;
        }
        let sp = speaker.clone();
        let samples = coda_actors::audio::convert::i16_to_f32(&audio.samples);
        playing = Some(tokio::spawn(async move {
            sp.play(samples, audio.sample_rate).await
        }));
    }
    if let Some(p) = playing {
        if let coda_actors::audio::PlayOutcome::Failed(why) = p.await? {
            anyhow::bail!("playback failed: {why}");
        }
    }
    Ok(())
}

#[cfg(not(feature = "audio"))]
async fn play_sentences<F, Fut>(_: &Settings, _: Vec<String>, _: F) -> anyhow::Result<()>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Audio>>,
{
    anyhow::bail!(
        "{}; write a file instead: coda say TEXT -o out.wav",
        coda_actors::audio::NO_AUDIO_BUILD
    )
}
