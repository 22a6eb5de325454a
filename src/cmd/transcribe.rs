//! `coda transcribe FILE.wav`: speech-to-text from the command line with the same engine
//! and settings the Stt actor uses.
//!
//! Any WAV `hound` reads (8/16/24/32-bit integer or 32-bit float, any channel count, any
//! rate) is mixed down to mono and resampled to 16 kHz with `rubato`'s FFT resampler.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use coda_actors::stt::{load_engine, SttSettings};
use coda_actors::voice::SPEECH_SAMPLE_RATE;
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

/// Reads a WAV file as 16 kHz mono samples in [-1, 1].
pub fn read_wav_16k(path: &Path) -> anyhow::Result<Vec<f32>> {
    let mut reader = hound::WavReader::open(path)
        .with_context(|| format!("{}: not a readable WAV file", path.display()))?;
    let spec = reader.spec();
    if spec.channels == 0 || spec.sample_rate == 0 {
        bail!("{}: WAV header has no channels or no rate", path.display());
    }
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader
            .samples::<f32>()
            .collect::<Result<_, _>>()
            .with_context(|| format!("{}: corrupt sample data", path.display()))?,
        hound::SampleFormat::Int => {
            let bits = spec.bits_per_sample;
            if !(1..=32).contains(&bits) {
                bail!("{}: {bits}-bit samples are not supported", path.display());
            }
            let scale = (1u64 << (bits - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.map(|v| v as f32 / scale))
                .collect::<Result<_, _>>()
                .with_context(|| format!("{}: corrupt sample data", path.display()))?
        }
    };
    let ch = usize::from(spec.channels);
    let mono: Vec<f32> = interleaved
        .chunks(ch)
        .map(|c| c.iter().sum::<f32>() / c.len() as f32)
        .collect();
    resample_to_16k(&mono, spec.sample_rate)
}

/// Resamples mono audio from `rate` to 16 kHz (FFT resampler; delay removed, length
/// kept in proportion).
pub fn resample_to_16k(input: &[f32], rate: u32) -> anyhow::Result<Vec<f32>> {
    use rubato::{FftFixedIn, Resampler};
    if rate == SPEECH_SAMPLE_RATE || input.is_empty() {
        return Ok(input.to_vec());
    }
    let mut r = FftFixedIn::<f32>::new(rate as usize, SPEECH_SAMPLE_RATE as usize, 1024, 2, 1)
        .map_err(|e| anyhow!("cannot resample from {rate} Hz: {e}"))?;
    let delay = r.output_delay();
    let expected = (input.len() as u64 * u64::from(SPEECH_SAMPLE_RATE) / u64::from(rate)) as usize;
    let mut out = Vec::with_capacity(expected + delay + 2048);
    let mut pos = 0;
    loop {
        let need = r.input_frames_next();
        if pos + need > input.len() {
            break;
        }
        let o = r.process(&[&input[pos..pos + need]], None)?;
        out.extend_from_slice(&o[0]);
        pos += need;
    }
    if pos < input.len() {
        let o = r.process_partial(Some(&[&input[pos..]]), None)?;
        out.extend_from_slice(&o[0]);
    }
    while out.len() < expected + delay {
        let o = r.process_partial::<&[f32]>(None, None)?;
        if o[0].is_empty() {
            break;
        }
        out.extend_from_slice(&o[0]);
    }
    out.drain(..delay.min(out.len()));
    out.truncate(expected);
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resampling_keeps_length_and_pitch() {
        // One second of 440 Hz at 44.1 kHz → 16 000 samples of 440 Hz.
        let rate = 44_100u32;
        let input: Vec<f32> = (0..rate)
            .map(|i| (2.0 * std::f32::consts::PI * 440.0 * i as f32 / rate as f32).sin() * 0.5)
            .collect();
        let out = resample_to_16k(&input, rate).expect("resample");
        assert_eq!(out.len(), 16_000);
        // Zero crossings in the middle half: 440 Hz → 2 × 440 × 0.5 s = 440.
        let mid = &out[4000..12000];
        let crossings = mid
            .windows(2)
            .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
            .count();
        assert!((435..=445).contains(&crossings), "{crossings}");
        let peak = mid.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!((0.45..0.55).contains(&peak), "{peak}");
    }

    #[test]
    fn wav_files_of_any_shape_read_as_16k_mono() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stereo.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 22_050,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&path, spec).expect("create");
        for _ in 0..22_050 {
            w.write_sample(16384i16).expect("l");
            w.write_sample(0i16).expect("r");
        }
        w.finalize().expect("finalize");
        let s = read_wav_16k(&path).expect("read");
        assert_eq!(s.len(), 16_000);
        assert!((s[8000] - 0.25).abs() < 0.01, "{}", s[8000]);
        std::fs::write(dir.path().join("bad.wav"), b"RIFF\x10\0\0\0WAVEjunk").expect("write");
        assert!(read_wav_16k(&dir.path().join("bad.wav")).is_err());
    }
}
