//! Streaming MFCCs of 16 kHz audio: 25 ms Hann windows every 10 ms, 40 mel bands from
//! 60 Hz to 7.6 kHz, 13 cepstra of which c1..c12 are kept (c0 is the frame's loudness:
//! dropping it makes matching independent of how loud the word was said), with the frame's
//! energy beside them. [`MeanNorm`] then removes the speaker's and the room's average
//! spectrum (cepstral mean normalisation over speech frames) and scales each frame to
//! unit length, so the template matcher's distance is a cosine between what is *said*.

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

/// Samples per analysis window (25 ms).
pub const WINDOW: usize = 400;
/// Samples between frames (10 ms).
pub const HOP: usize = 160;
/// Values per feature frame.
pub const DIMS: usize = 12;

const FFT: usize = 512;
const BANDS: usize = 40;
const CEPSTRA: usize = DIMS + 1;

/// One feature frame.
pub type Frame = [f32; DIMS];

/// A frame as analysed: its energy (dB) and cepstra.
#[derive(Debug, Clone, Copy)]
pub struct Raw {
    pub db: f32,
    pub cepstra: Frame,
}

/// Turns a stream of samples into feature frames.
pub struct Mfcc {
    fft: Arc<dyn RealToComplex<f32>>,
    window: Vec<f32>,
    /// `BANDS` triangular filters over the FFT bins: (first bin, weights).
    filters: Vec<(usize, Vec<f32>)>,
    /// DCT-II rows for c1..c12.
    dct: Vec<[f32; BANDS]>,
    pending: Vec<f32>,
    /// Samples consumed before `pending[0]`.
    consumed: u64,
    input: Vec<f32>,
    spectrum: Vec<realfft::num_complex::Complex<f32>>,
    scratch: Vec<realfft::num_complex::Complex<f32>>,
}

fn mel(hz: f32) -> f32 {
    2595.0 * (1.0 + hz / 700.0).log10()
}

fn hz(mel: f32) -> f32 {
    700.0 * (10f32.powf(mel / 2595.0) - 1.0)
}

impl Default for Mfcc {
    fn default() -> Self {
        Self::new()
    }
}

impl Mfcc {
    pub fn new() -> Mfcc {
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(FFT);
        let window = (0..WINDOW)
            .map(|i| {
                0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / (WINDOW - 1) as f32).cos()
            })
            .collect();
        let (lo, hi) = (mel(60.0), mel(7600.0));
        let edges: Vec<f32> = (0..BANDS + 2)
            .map(|i| hz(lo + (hi - lo) * i as f32 / (BANDS + 1) as f32) * FFT as f32 / 16_000.0)
            .collect();
        let filters = (0..BANDS)
            .map(|b| {
                let (l, c, r) = (edges[b], edges[b + 1], edges[b + 2]);
                let first = l.ceil() as usize;
                let last = (r.floor() as usize).min(FFT / 2);
                let weights = (first..=last)
                    .map(|k| {
                        let k = k as f32;
                        if k <= c {
                            (k - l) / (c - l).max(1e-6)
                        } else {
                            (r - k) / (r - c).max(1e-6)
                        }
                        .max(0.0)
                    })
                    .collect();
                (first, weights)
            })
            .collect();
        let dct = (1..CEPSTRA)
            .map(|n| {
                let mut row = [0f32; BANDS];
                for (m, v) in row.iter_mut().enumerate() {
                    *v = (std::f32::consts::PI * n as f32 * (m as f32 + 0.5) / BANDS as f32).cos();
                }
                row
            })
            .collect();
        let input = fft.make_input_vec();
        let spectrum = fft.make_output_vec();
        let scratch = fft.make_scratch_vec();
        Mfcc {
            fft,
            window,
            filters,
            dct,
            pending: Vec::with_capacity(WINDOW + HOP),
            consumed: 0,
            input,
            spectrum,
            scratch,
        }
    }

    /// Feeds samples; every completed frame goes to `out` with the index (in samples since
    /// the start of the stream) of the end of its window.
    pub fn push(&mut self, samples: &[f32], out: &mut Vec<(u64, Raw)>) {
        self.pending.extend_from_slice(samples);
        let mut start = 0;
        while self.pending.len() - start >= WINDOW {
            let frame = self.frame(start);
            out.push((self.consumed + (start + WINDOW) as u64, frame));
            start += HOP;
        }
        self.pending.drain(..start);
        self.consumed += start as u64;
    }

    /// Forgets buffered audio (the stream position keeps counting).
    pub fn reset(&mut self) {
        self.consumed += self.pending.len() as u64;
        self.pending.clear();
    }

    fn frame(&mut self, start: usize) -> Raw {
        let samples = &self.pending[start..start + WINDOW];
        let power = samples.iter().map(|v| v * v).sum::<f32>() / WINDOW as f32;
        let db = if power.is_finite() {
            10.0 * (power + 1e-10).log10()
        } else {
            -100.0
        };
        // Pre-emphasis, then the window; the rest of the FFT input is zero padding.
        let mut prev = if start > 0 {
            self.pending[start - 1]
        } else {
            samples[0]
        };
        for (i, (&s, w)) in samples.iter().zip(&self.window).enumerate() {
            let v = s - 0.97 * prev;
            prev = s;
            self.input[i] = if v.is_finite() { v * w } else { 0.0 };
        }
        for v in &mut self.input[WINDOW..] {
            *v = 0.0;
        }
        if self
            .fft
            .process_with_scratch(&mut self.input, &mut self.spectrum, &mut self.scratch)
            .is_err()
        {
            return Raw {
                db: -100.0,
                cepstra: [0.0; DIMS],
            };
        }
        let mut energies = [0f32; BANDS];
        for (e, (first, weights)) in energies.iter_mut().zip(&self.filters) {
            let sum: f32 = weights
                .iter()
                .zip(&self.spectrum[*first..])
                .map(|(w, c)| w * c.norm_sqr())
                .sum();
            // A floor near the quietest dithered input: silence does not make -inf.
            *e = (sum + 1e-8).ln();
        }
        let mut f = [0f32; DIMS];
        for (v, row) in f.iter_mut().zip(&self.dct) {
            *v = row.iter().zip(&energies).map(|(a, b)| a * b).sum();
        }
        Raw { db, cepstra: f }
    }
}

/// Speech frames are this far above the quietest recent frames, dB.
const SPEECH_ABOVE_FLOOR_DB: f32 = 10.0;
/// Weight of a new speech frame in the running mean (~0.5 s of speech).
const MEAN_RATE: f32 = 0.02;

/// Streaming cepstral mean normalisation: the mean of recent speech frames is removed
/// from every frame, which is then scaled to unit length.
pub struct MeanNorm {
    mean: Frame,
    seeded: bool,
    floor_db: f32,
}

impl Default for MeanNorm {
    fn default() -> Self {
        MeanNorm {
            mean: [0.0; DIMS],
            seeded: false,
            floor_db: 0.0,
        }
    }
}

impl MeanNorm {
    pub fn push(&mut self, raw: &Raw) -> Frame {
        // The floor follows quiet frames at once and loud ones slowly.
        self.floor_db = if raw.db < self.floor_db || !self.seeded {
            raw.db
        } else {
            self.floor_db + 0.002 * (raw.db - self.floor_db)
        };
        if !self.seeded {
            self.mean = raw.cepstra;
            self.seeded = true;
        } else if raw.db > self.floor_db + SPEECH_ABOVE_FLOOR_DB {
            for (m, c) in self.mean.iter_mut().zip(&raw.cepstra) {
                *m += MEAN_RATE * (c - *m);
            }
        }
        let mut f = raw.cepstra;
        for (v, m) in f.iter_mut().zip(&self.mean) {
            *v -= m;
        }
        normalize(&mut f);
        f
    }
}

/// Scales `f` to unit length (a zero frame stays zero).
pub fn normalize(f: &mut Frame) {
    let n = f.iter().map(|v| v * v).sum::<f32>().sqrt();
    if n > 1e-9 {
        for v in f.iter_mut() {
            *v /= n;
        }
    }
}

/// Analysed frames of a whole clip.
pub fn raw_of_clip(samples: &[f32]) -> Vec<Raw> {
    let mut m = Mfcc::new();
    let mut out = Vec::new();
    m.push(samples, &mut out);
    out.into_iter().map(|(_, f)| f).collect()
}

/// Normalised features of a whole clip of speech: the mean of its frames within 30 dB of
/// the loudest is removed from each.
pub fn of_clip(samples: &[f32]) -> Vec<Frame> {
    let raw = raw_of_clip(samples);
    let peak = raw.iter().map(|r| r.db).fold(f32::MIN, f32::max);
    let speech: Vec<&Raw> = raw.iter().filter(|r| r.db > peak - 30.0).collect();
    let mut mean = [0f32; DIMS];
    for r in &speech {
        for (m, c) in mean.iter_mut().zip(&r.cepstra) {
            *m += c / speech.len() as f32;
        }
    }
    raw.iter()
        .map(|r| {
            let mut f = r.cepstra;
            for (v, m) in f.iter_mut().zip(&mean) {
                *v -= m;
            }
            normalize(&mut f);
            f
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(hz: f32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| 0.3 * (2.0 * std::f32::consts::PI * hz * i as f32 / 16_000.0).sin())
            .collect()
    }

    #[test]
    fn frames_every_10_ms_whatever_the_chunking() {
        let s = tone(440.0, 16_000);
        let whole = raw_of_clip(&s);
        assert_eq!(whole.len(), (16_000 - WINDOW) / HOP + 1);
        let mut m = Mfcc::new();
        let mut out = Vec::new();
        for c in s.chunks(37) {
            m.push(c, &mut out);
        }
        assert_eq!(out.len(), whole.len());
        assert_eq!(out[0].0, WINDOW as u64);
        assert_eq!(out[1].0, (WINDOW + HOP) as u64);
        for ((_, a), b) in out.iter().zip(&whole) {
            for (x, y) in a.cepstra.iter().zip(&b.cepstra) {
                assert!((x - y).abs() < 1e-3 * x.abs().max(1.0));
            }
        }
    }

    #[test]
    fn different_sounds_differ_and_loudness_does_not_matter() {
        let two = |a: f32, b: f32| -> Vec<f32> {
            let mut v = tone(a, 4000);
            v.extend(tone(b, 4000));
            v
        };
        let a = of_clip(&two(300.0, 900.0));
        let loud: Vec<f32> = two(300.0, 900.0).iter().map(|v| v * 3.0).collect();
        let b = of_clip(&loud);
        let c = of_clip(&two(2500.0, 900.0));
        let dot = |x: &Frame, y: &Frame| x.iter().zip(y).map(|(a, b)| a * b).sum::<f32>();
        assert!(dot(&a[5], &b[5]) > 0.99);
        assert!(dot(&a[5], &c[5]) < 0.9);
        assert!(of_clip(&[f32::NAN; 800])
            .iter()
            .all(|f| f.iter().all(|v| v.is_finite())));
    }
}
