//! Whatever a device gives (any channel count, any rate) to the 16 kHz mono f32 that
//! [`SpeechAudio`](crate::voice::SpeechAudio) carries.
//!
//! Channels are averaged first (one channel to resample instead of N), then rubato's FFT
//! resampler (`rubato::Fft`, fixed input chunks) converts the rate: a synchronous
//! resampler is exact for the fixed ratios devices use (44.1/48 kHz → 16 kHz) and its
//! anti-aliasing filter is built in. It streams: chunks of any size go in, output comes
//! out as soon as a full input chunk is available, and [`Resampler16k::finish`] flushes
//! the tail. [`read_wav_16k`] does the same for a whole WAV file.

use std::path::{Path, PathBuf};

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Indexing, Resampler};

use crate::voice::SPEECH_SAMPLE_RATE;

/// Averages interleaved frames of `channels` channels into one channel.
pub fn downmix(interleaved: &[f32], channels: usize) -> Vec<f32> {
    if channels <= 1 {
        return interleaved.to_vec();
    }
    let scale = 1.0 / channels as f32;
    interleaved
        .chunks_exact(channels)
        .map(|frame| frame.iter().sum::<f32>() * scale)
        .collect()
}

/// Signed 16-bit samples to [-1, 1] floats.
pub fn i16_to_f32(samples: &[i16]) -> Vec<f32> {
    crate::voice::pcm16_to_f32(samples)
}

/// [-1, 1] floats to signed 16-bit samples (clipped).
pub fn f32_to_i16(samples: &[f32]) -> Vec<i16> {
    samples
        .iter()
        .map(|&s| (s.clamp(-1.0, 1.0) * 32767.0).round() as i16)
        .collect()
}

/// A resampler could not be built (an unusable rate).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("cannot resample from {rate} Hz: {reason}")]
pub struct ResampleSetupError {
    /// The input rate.
    pub rate: u32,
    /// Why.
    pub reason: String,
}

/// Streaming mono resampler from any rate to 16 kHz.
pub struct Resampler16k {
    inner: Option<Fft<f32>>,
    pending: Vec<f32>,
    out_buf: Vec<f32>,
    /// Output frames still to drop: the resampler's delay, so output lines up with input.
    skip: usize,
    in_total: u64,
    out_total: u64,
    rate: u32,
}

impl std::fmt::Debug for Resampler16k {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resampler16k")
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

impl Resampler16k {
    /// A resampler from `rate` Hz (16 kHz input passes through untouched).
    pub fn new(rate: u32) -> Result<Self, ResampleSetupError> {
        let inner = if rate == SPEECH_SAMPLE_RATE {
            None
        } else {
            if rate == 0 {
                return Err(ResampleSetupError {
                    rate,
                    reason: "zero sample rate".into(),
                });
            }
            // About 20 ms per chunk: low latency for capture, cheap FFTs.
            let chunk = (rate as usize / 50).max(64);
            let r = Fft::<f32>::new(
                rate as usize,
                SPEECH_SAMPLE_RATE as usize,
                chunk,
                1,
                FixedSync::Input,
            )
            .map_err(|e| ResampleSetupError {
                rate,
                reason: e.to_string(),
            })?;
            Some(r)
        };
        let skip = inner.as_ref().map(|r| r.output_delay()).unwrap_or(0);
        let out_len = inner.as_ref().map(|r| r.output_frames_max()).unwrap_or(0);
        Ok(Resampler16k {
            inner,
            pending: Vec::new(),
            out_buf: vec![0.0; out_len],
            skip,
            in_total: 0,
            out_total: 0,
            rate,
        })
    }

    pub fn input_rate(&self) -> u32 {
        self.rate
    }

    /// Adds mono input; returns the 16 kHz output available so far. Samples outside
    /// [-1, 1] are clipped and non-finite ones are silence: the FFT underneath panics on a
    /// NaN (found by fuzzing a float WAV), and nothing past full scale is speech.
    pub fn push(&mut self, mono: &[f32]) -> Vec<f32> {
        self.in_total += mono.len() as u64;
        let clean = mono.iter().map(|&v| {
            if v.is_finite() {
                v.clamp(-1.0, 1.0)
            } else {
                0.0
            }
        });
        let Some(r) = self.inner.as_mut() else {
            self.out_total += mono.len() as u64;
            return clean.collect();
        };
        self.pending.extend(clean);
        let mut out = Vec::new();
        let mut used = 0;
        loop {
            let need = r.input_frames_next();
            if self.pending.len() - used < need {
                break;
            }
            let chunk = &self.pending[used..used + need];
            let produced = Self::run(r, chunk, None, &mut self.out_buf);
            used += need;
            Self::emit(&mut self.skip, &self.out_buf[..produced], &mut out);
        }
        self.pending.drain(..used);
        self.out_total += out.len() as u64;
        out
    }

    /// Flushes the tail: the output then has the input's length at 16 kHz (±1 sample).
    pub fn finish(&mut self) -> Vec<f32> {
        let Some(r) = self.inner.as_mut() else {
            return Vec::new();
        };
        let expected = (self.in_total as f64 * f64::from(SPEECH_SAMPLE_RATE) / f64::from(self.rate))
            .round() as u64;
        let mut out = Vec::new();
        let rest = std::mem::take(&mut self.pending);
        let need = r.input_frames_next();
        let mut chunk = rest;
        let valid = chunk.len();
        chunk.resize(need, 0.0);
        let produced = Self::run(r, &chunk, Some(valid), &mut self.out_buf);
        Self::emit(&mut self.skip, &self.out_buf[..produced], &mut out);
        // The resampler's delay still holds real output: push silence until it is out.
        let zeros = vec![0.0; need];
        while self.out_total + (out.len() as u64) < expected {
            let produced = Self::run(r, &zeros, Some(0), &mut self.out_buf);
            if produced == 0 {
                break;
            }
            Self::emit(&mut self.skip, &self.out_buf[..produced], &mut out);
        }
        let keep = expected.saturating_sub(self.out_total) as usize;
        out.truncate(keep);
        self.out_total += out.len() as u64;
        out
    }

    fn run(r: &mut Fft<f32>, input: &[f32], partial: Option<usize>, out: &mut [f32]) -> usize {
        let frames_in = input.len();
        let frames_out = out.len();
        let (Ok(inp), Ok(mut outp)) = (
            InterleavedSlice::new(input, 1, frames_in),
            InterleavedSlice::new_mut(out, 1, frames_out),
        ) else {
            return 0;
        };
        let indexing = partial.map(|n| Indexing::new().partial_len(n));
        match r.process_into_buffer(&inp, &mut outp, indexing.as_ref()) {
            Ok((_, produced)) => produced,
            // Sizes are the resampler's own: an error here is a bug, not input; drop the
            // chunk rather than take the capture down.
            Err(e) => {
                tracing::error!(error = %e, "resampling failed; chunk dropped");
                0
            }
        }
    }

    fn emit(skip: &mut usize, produced: &[f32], out: &mut Vec<f32>) {
        let drop = (*skip).min(produced.len());
        *skip -= drop;
        out.extend_from_slice(&produced[drop..]);
    }
}

/// One-shot conversion of interleaved 16-bit audio to 16 kHz mono f32.
pub fn to_speech_rate_i16(
    interleaved: &[i16],
    rate: u32,
    channels: usize,
) -> Result<Vec<f32>, ResampleSetupError> {
    let mono = downmix(&i16_to_f32(interleaved), channels.max(1));
    to_speech_rate(&mono, rate)
}

/// One-shot conversion of mono f32 audio at `rate` to 16 kHz.
pub fn to_speech_rate(mono: &[f32], rate: u32) -> Result<Vec<f32>, ResampleSetupError> {
    let mut r = Resampler16k::new(rate)?;
    let mut out = r.push(mono);
    out.extend(r.finish());
    Ok(out)
}

/// A WAV file that cannot be read as speech audio.
#[derive(Debug, thiserror::Error)]
pub enum WavError {
    /// Not a WAV file hound can parse (or not there).
    #[error("{}: not a readable WAV file", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: hound::Error,
    },
    /// A header that promises no audio.
    #[error("{}: WAV header has no channels or no rate", path.display())]
    Header { path: PathBuf },
    /// Integer samples wider than 32 bits (or of zero width).
    #[error("{}: {bits}-bit samples are not supported", path.display())]
    Bits { path: PathBuf, bits: u16 },
    /// The data chunk ends early or cannot be decoded.
    #[error("{}: corrupt sample data", path.display())]
    Samples {
        path: PathBuf,
        #[source]
        source: hound::Error,
    },
    #[error(transparent)]
    Resample(#[from] ResampleSetupError),
}

/// Reads a WAV file (8/16/24/32-bit integer or 32-bit float, any channel count, any rate)
/// as 16 kHz mono samples in [-1, 1].
pub fn read_wav_16k(path: &Path) -> Result<Vec<f32>, WavError> {
    let mut reader = hound::WavReader::open(path).map_err(|source| WavError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let spec = reader.spec();
    if spec.channels == 0 || spec.sample_rate == 0 {
        return Err(WavError::Header {
            path: path.to_path_buf(),
        });
    }
    let corrupt = |source| WavError::Samples {
        path: path.to_path_buf(),
        source,
    };
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader
            .samples::<f32>()
            .collect::<Result<_, _>>()
            .map_err(corrupt)?,
        hound::SampleFormat::Int => {
            let bits = spec.bits_per_sample;
            if !(1..=32).contains(&bits) {
                return Err(WavError::Bits {
                    path: path.to_path_buf(),
                    bits,
                });
            }
            let scale = (1u64 << (bits - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.map(|v| v as f32 / scale))
                .collect::<Result<_, _>>()
                .map_err(corrupt)?
        }
    };
    let mono = downmix(&interleaved, usize::from(spec.channels));
    Ok(to_speech_rate(&mono, spec.sample_rate)?)
}

/// Root-mean-square level of `samples`.
pub fn rms(samples: &[f32]) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (sum / samples.len() as f64).sqrt() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_and_out_of_range_samples_do_not_reach_the_fft() {
        // Found by fuzzing read_wav_16k: a float WAV holding NaN panicked inside rubato.
        let mut input = sine(8_000, 440.0, 0.2, 0.5);
        input[10] = f32::NAN;
        input[20] = f32::INFINITY;
        input[30] = 1e38;
        for rate in [8_000, 16_000, 44_100] {
            let out = to_speech_rate(&input, rate).expect("converts");
            assert!(
                out.iter().all(|s| s.is_finite() && s.abs() <= 1.5),
                "{rate}"
            );
        }
    }

    fn sine(rate: u32, hz: f32, secs: f32, amp: f32) -> Vec<f32> {
        let n = (rate as f32 * secs) as usize;
        (0..n)
            .map(|i| amp * (2.0 * std::f32::consts::PI * hz * i as f32 / rate as f32).sin())
            .collect()
    }

    #[test]
    fn stereo_44k1_i16_to_16k_mono_keeps_length_and_energy() {
        // 1 s of a 440 Hz tone, the same on both channels, at 0.5 amplitude.
        let mono = sine(44_100, 440.0, 1.0, 0.5);
        let stereo: Vec<i16> = mono
            .iter()
            .flat_map(|&s| {
                let v = (s * 32767.0) as i16;
                [v, v]
            })
            .collect();
        let out = to_speech_rate_i16(&stereo, 44_100, 2).unwrap();
        assert!(
            (out.len() as i64 - 16_000).abs() <= 1,
            "length {}",
            out.len()
        );
        let want = 0.5 / 2f32.sqrt();
        // Skip the edges (filter ramp) when measuring the level.
        let level = rms(&out[800..15_200]);
        assert!((level - want).abs() < 0.02, "rms {level}, want {want}");
    }

    #[test]
    fn tone_above_the_new_nyquist_is_filtered_out() {
        // 10 kHz cannot exist at 16 kHz: the anti-aliasing filter must remove it.
        let hi = sine(48_000, 10_000.0, 0.5, 0.5);
        let out = to_speech_rate(&hi, 48_000).unwrap();
        assert!((out.len() as i64 - 8_000).abs() <= 1);
        assert!(rms(&out[400..7_600]) < 0.01, "aliased energy {}", rms(&out));
    }

    #[test]
    fn streaming_in_odd_pieces_matches_one_shot() {
        let input = sine(48_000, 300.0, 0.7, 0.3);
        let whole = to_speech_rate(&input, 48_000).unwrap();
        let mut r = Resampler16k::new(48_000).unwrap();
        let mut pieces = Vec::new();
        for chunk in input.chunks(333) {
            pieces.extend(r.push(chunk));
        }
        pieces.extend(r.finish());
        assert_eq!(pieces.len(), whole.len());
        let diff = pieces
            .iter()
            .zip(&whole)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-4, "max difference {diff}");
    }

    #[test]
    fn sixteen_k_passes_through_and_zero_rate_is_refused() {
        let x = vec![0.1, -0.2, 0.3];
        assert_eq!(to_speech_rate(&x, 16_000).unwrap(), x);
        assert!(Resampler16k::new(0).is_err());
        assert_eq!(downmix(&[1.0, 0.0, 0.5, 0.5], 2), vec![0.5, 0.5]);
        assert_eq!(f32_to_i16(&[2.0, -2.0, 0.0]), vec![32767, -32767, 0]);
    }

    #[test]
    fn resampling_keeps_length_and_pitch() {
        // One second of 440 Hz at 44.1 kHz → 16 000 samples of 440 Hz.
        let out = to_speech_rate(&sine(44_100, 440.0, 1.0, 0.5), 44_100).unwrap();
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
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stereo.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 22_050,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for _ in 0..22_050 {
            w.write_sample(16384i16).unwrap();
            w.write_sample(0i16).unwrap();
        }
        w.finalize().unwrap();
        let s = read_wav_16k(&path).unwrap();
        assert_eq!(s.len(), 16_000);
        assert!((s[8000] - 0.25).abs() < 0.01, "{}", s[8000]);
        let bad = dir.path().join("bad.wav");
        std::fs::write(&bad, b"RIFF\x10\0\0\0WAVEjunk").unwrap();
        let err = read_wav_16k(&bad).unwrap_err();
        assert!(matches!(err, WavError::Open { .. }), "{err}");
        assert!(
            err.to_string()
                .ends_with("bad.wav: not a readable WAV file"),
            "{err}"
        );
    }
}
