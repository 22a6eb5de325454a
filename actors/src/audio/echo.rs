//! Acoustic echo cancellation: what the speaker plays must not reach the VAD, the wake
//! word or whisper through the microphone.
//!
//! Playback taps what the output device actually pulls into an [`EchoReference`]; the
//! capture thread runs an [`EchoCanceller`] (WebRTC's AEC3, ported to Rust by the `aec3`
//! crate: feature `echo`) on every 10 ms of microphone audio with that reference. AEC3
//! estimates the delay between the two itself (the device buffers on both sides and the
//! room), adapts a linear filter to the echo path and suppresses what is left.
//!
//! The reference arrives in the bursts the output device pulls (a period at a time) while
//! the microphone's audio comes in bursts of its own, so the canceller keeps a small
//! jitter buffer of reference and feeds AEC3 one reference frame per microphone frame.
//! While nothing has played for a while the microphone audio passes through untouched
//! (AEC3 keeps what it learned for the next answer).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Samples per 10 ms frame at 16 kHz: AEC3's unit.
pub const FRAME: usize = 160;

/// The most reference held for a capture that is behind (or an output device that is not
/// paced, like ALSA's `null`): 1 s at 48 kHz.
const MAX_PENDING: usize = 48_000;

/// What the speaker played, shared by playback (which writes) and the capture thread
/// (which reads). Cheap to clone; playback only copies samples while a canceller listens.
#[derive(Debug, Clone, Default)]
pub struct EchoReference {
    inner: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    listeners: AtomicUsize,
    pending: Mutex<Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    chunks: VecDeque<(u32, Vec<f32>)>,
    samples: usize,
}

impl EchoReference {
    /// A reference nobody plays into yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Is a canceller reading? (Playback skips the copy otherwise.)
    pub fn is_listening(&self) -> bool {
        self.inner.listeners.load(Ordering::Relaxed) > 0
    }

    /// Mono `samples` at `rate` Hz that the output device just took. Never blocks: when
    /// the capture thread holds the lock the caller keeps the samples and tries later.
    /// Returns whether they were taken.
    pub fn try_played(&self, rate: u32, samples: &[f32]) -> bool {
        if samples.is_empty() || !self.is_listening() {
            return true;
        }
        let Ok(mut p) = self.inner.pending.try_lock() else {
            return false;
        };
        p.samples += samples.len();
        p.chunks.push_back((rate, samples.to_vec()));
        while p.samples > MAX_PENDING {
            match p.chunks.pop_front() {
                Some((_, c)) => p.samples -= c.len(),
                None => p.samples = 0,
            }
        }
        true
    }

    /// Like [`try_played`](Self::try_played), waiting for the lock (for producers that
    /// are not the device's own thread: tests, benchmarks).
    pub fn played(&self, rate: u32, samples: &[f32]) {
        while !self.try_played(rate, samples) {
            std::thread::yield_now();
        }
    }

    fn take(&self) -> VecDeque<(u32, Vec<f32>)> {
        match self.inner.pending.lock() {
            Ok(mut p) => {
                p.samples = 0;
                std::mem::take(&mut p.chunks)
            }
            Err(_) => VecDeque::new(),
        }
    }

    #[cfg_attr(not(feature = "echo"), allow(dead_code))]
    /// Registers a reader; what was played before is dropped (it is not in the
    /// microphone's audio from now on).
    fn listen(&self) -> Listening {
        self.take();
        self.inner.listeners.fetch_add(1, Ordering::Relaxed);
        Listening(self.clone())
    }
}

/// A registered reader of an [`EchoReference`]; unregisters on drop.
#[derive(Debug)]
struct Listening(EchoReference);

impl Drop for Listening {
    fn drop(&mut self) {
        self.0.inner.listeners.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why echo cancellation cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EchoError {
    /// Built without the `echo` feature.
    #[error("this build of coda has no echo cancellation (built without the `echo` feature)")]
    NotBuilt,
    /// AEC3 refused to start.
    #[error("echo cancellation cannot start: {0}")]
    Setup(String),
}

/// Measured on the last processed frames, for `coda bench echo` and the log.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EchoStats {
    /// 10 ms frames run through AEC3.
    pub frames: u64,
    /// Frames passed through untouched (nothing played recently).
    pub bypassed: u64,
    /// Times the reference ran dry mid-playback and AEC3 was fed silence.
    pub underruns: u64,
}

/// The reference side of the canceller: resampled to 16 kHz, buffered against the
/// burstiness of both devices, handed out one frame per microphone frame.
#[derive(Debug)]
struct RenderQueue {
    reference: EchoReference,
    _listening: Listening,
    resampler: Option<super::convert::Resampler16k>,
    queue: VecDeque<f32>,
    /// Frames to hold before feeding, grown to the largest burst seen.
    target: usize,
    primed: bool,
    /// Frames since the reference last carried sound.
    quiet_frames: u64,
}

/// Frames of reference held before the first is fed (more when bursts are bigger).
#[cfg_attr(not(feature = "echo"), allow(dead_code))]
const MIN_PRIME: usize = 2 * FRAME;
/// The most reference held before the oldest is dropped (a capture that stalled must
/// not leave AEC3 looking for an echo seconds late).
const MAX_QUEUE: usize = 40 * FRAME;
/// After this long without sound played the microphone passes through (3 s: longer than
/// any room's echo tail and than a pause between sentences).
const IDLE_FRAMES: u64 = 300;

#[cfg_attr(not(feature = "echo"), allow(dead_code))]
impl RenderQueue {
    fn new(reference: EchoReference) -> Self {
        RenderQueue {
            _listening: reference.listen(),
            reference,
            resampler: None,
            queue: VecDeque::new(),
            target: MIN_PRIME,
            primed: false,
            quiet_frames: IDLE_FRAMES,
        }
    }

    fn pull(&mut self) {
        for (rate, samples) in self.reference.take() {
            if self.resampler.as_ref().map(|r| r.input_rate()) != Some(rate) {
                self.resampler = super::convert::Resampler16k::new(rate).ok();
            }
            let Some(r) = self.resampler.as_mut() else {
                continue;
            };
            let out = r.push(&samples);
            self.target = self
                .target
                .max(out.len().div_ceil(FRAME) * FRAME)
                .min(MAX_QUEUE / 2);
            self.queue.extend(out);
        }
        while self.queue.len() > MAX_QUEUE {
            self.queue.pop_front();
        }
    }

    /// The next 10 ms of reference (silence while priming or dry), and whether it ran dry
    /// mid-playback.
    fn next_frame(&mut self, frame: &mut [f32; FRAME]) -> bool {
        self.pull();
        if !self.primed && self.queue.len() >= self.target {
            self.primed = true;
        }
        let mut underrun = false;
        if self.primed && self.queue.len() >= FRAME {
            for (d, s) in frame.iter_mut().zip(self.queue.drain(..FRAME)) {
                *d = s;
            }
        } else {
            frame.fill(0.0);
            if self.primed {
                underrun = true;
                self.primed = false;
            }
        }
        if frame.iter().any(|s| s.abs() > 1e-5) {
            self.quiet_frames = 0;
        } else {
            self.quiet_frames = self.quiet_frames.saturating_add(1);
        }
        underrun
    }

    fn idle(&self) -> bool {
        self.quiet_frames >= IDLE_FRAMES && self.queue.is_empty()
    }
}

/// Echo cancellation for one microphone stream: 16 kHz mono in, the same out with the
/// speaker's sound removed. Not `Send` (AEC3 is not): make it on the thread that uses it.
pub struct EchoCanceller {
    render: RenderQueue,
    #[cfg(feature = "echo")]
    aec: aec3::pipelines::linear::LinearPipeline,
    /// Microphone samples short of a whole frame.
    carry: Vec<f32>,
    stats: EchoStats,
}

impl std::fmt::Debug for EchoCanceller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EchoCanceller")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl EchoCanceller {
    /// A canceller reading `reference`.
    pub fn new(reference: EchoReference) -> Result<Self, EchoError> {
        #[cfg(feature = "echo")]
        {
            use aec3::nodes::audio::AudioFormat;
            let format = AudioFormat::ten_ms(crate::voice::SPEECH_SAMPLE_RATE, 1);
            // Echo removal only: noise suppression and gain control change the speech
            // that the VAD's thresholds and whisper were tuned on.
            let aec = aec3::pipelines::linear::builder(format, format)
                .enable_noise_suppression(false)
                .enable_gain_controller2(false)
                .enable_post_filter(false)
                .export_linear_output(true)
                .build()
                .map_err(|e| EchoError::Setup(e.to_string()))?;
            Ok(EchoCanceller {
                render: RenderQueue::new(reference),
                aec,
                carry: Vec::new(),
                stats: EchoStats::default(),
            })
        }
        #[cfg(not(feature = "echo"))]
        {
            let _ = reference;
            Err(EchoError::NotBuilt)
        }
    }

    /// Cancels the echo in `mic` (16 kHz mono). Works in whole 10 ms frames: a remainder
    /// waits for the next call, so the output may be up to 159 samples shorter (or longer)
    /// than the input.
    pub fn process(&mut self, mic: &[f32]) -> Vec<f32> {
        self.process_both(mic).0
    }

    /// Like [`process`](Self::process), also returning AEC3's linear output: the echo
    /// path's estimate subtracted, before the suppression that removes what is left of
    /// the echo (and, while both talk, some of the person too).
    pub fn process_both(&mut self, mic: &[f32]) -> (Vec<f32>, Vec<f32>) {
        self.carry.extend_from_slice(mic);
        let whole = self.carry.len() / FRAME * FRAME;
        let input: Vec<f32> = self.carry.drain(..whole).collect();
        let (mut out, mut linear) = (Vec::with_capacity(whole), Vec::with_capacity(whole));
        let mut render = [0.0f32; FRAME];
        let mut cleaned = [0.0f32; FRAME];
        let mut lin = [0.0f32; FRAME];
        for capture in input.chunks_exact(FRAME) {
            if self.render.next_frame(&mut render) {
                self.stats.underruns += 1;
            }
            if self.render.idle() {
                self.stats.bypassed += 1;
                out.extend_from_slice(capture);
                linear.extend_from_slice(capture);
                continue;
            }
            self.stats.frames += 1;
            if self.cancel(&render, capture, &mut cleaned, &mut lin) {
                out.extend_from_slice(&cleaned);
                linear.extend_from_slice(&lin);
            } else {
                out.extend_from_slice(capture);
                linear.extend_from_slice(capture);
            }
        }
        (out, linear)
    }

    #[cfg(feature = "echo")]
    fn cancel(
        &mut self,
        render: &[f32],
        capture: &[f32],
        out: &mut [f32],
        linear: &mut [f32],
    ) -> bool {
        if let Err(e) = self.aec.handle_render_frame(render) {
            tracing::debug!(error = %e, "echo canceller refused a reference frame");
            return false;
        }
        match self.aec.process_capture_frame(capture, out) {
            Ok(true) => {
                match self.aec.try_pull_linear_output() {
                    Ok(Some(p)) if p.payload().samples().len() == linear.len() => {
                        linear.copy_from_slice(p.payload().samples())
                    }
                    _ => linear.copy_from_slice(out),
                }
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::debug!(error = %e, "echo canceller refused a microphone frame");
                false
            }
        }
    }

    #[cfg(not(feature = "echo"))]
    fn cancel(&mut self, _: &[f32], _: &[f32], _: &mut [f32], _: &mut [f32]) -> bool {
        false
    }

    /// What it has done so far.
    pub fn stats(&self) -> EchoStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg_noise(n: usize, seed: u64, amp: f32) -> Vec<f32> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
            })
            .collect()
    }

    #[test]
    fn the_reference_is_copied_only_while_someone_listens() {
        let r = EchoReference::new();
        assert!(r.try_played(16_000, &[0.5; 100]));
        assert!(r.take().is_empty(), "nobody listened");
        let l = r.listen();
        r.played(16_000, &[0.5; 100]);
        assert_eq!(r.take().len(), 1);
        drop(l);
        assert!(!r.is_listening());
    }

    #[test]
    fn an_unread_reference_is_bounded() {
        let r = EchoReference::new();
        let _l = r.listen();
        for _ in 0..100 {
            r.played(48_000, &[0.1; 4800]);
        }
        let held: usize = r.take().iter().map(|(_, c)| c.len()).sum();
        assert!(held <= MAX_PENDING, "{held}");
    }

    #[test]
    fn bursts_are_smoothed_into_one_frame_per_microphone_frame() {
        let r = EchoReference::new();
        let mut q = RenderQueue::new(r.clone());
        let mut frame = [0.0; FRAME];
        // One 40 ms burst, then 10 ms frames: the first burst primes the queue, then
        // every frame is fed without a gap for the whole 40 ms.
        r.played(16_000, &[0.25; 4 * FRAME]);
        let mut fed = 0;
        for _ in 0..4 {
            assert!(!q.next_frame(&mut frame));
            if frame[0] == 0.25 {
                fed += 1;
            }
        }
        assert_eq!(fed, 4);
        // Dry mid-playback: an underrun, silence fed.
        assert!(q.next_frame(&mut frame));
        assert_eq!(frame[0], 0.0);
    }

    #[test]
    fn silence_long_enough_bypasses_the_canceller() {
        let r = EchoReference::new();
        let mut q = RenderQueue::new(r.clone());
        assert!(q.idle(), "nothing ever played");
        r.played(16_000, &[0.25; FRAME * 4]);
        let mut frame = [0.0; FRAME];
        q.next_frame(&mut frame);
        assert!(!q.idle());
        for _ in 0..IDLE_FRAMES + 4 {
            q.next_frame(&mut frame);
        }
        assert!(q.idle());
    }

    /// A decaying room response with the direct sound `delay` samples late.
    #[cfg(feature = "echo")]
    fn room(delay: usize, gain: f32) -> Vec<f32> {
        let tail = 1600; // 100 ms of reverberation
        let noise = lcg_noise(tail, 7, 1.0);
        let mut ir = vec![0.0; delay + tail];
        ir[delay] = gain;
        for (i, n) in noise.iter().enumerate().skip(1) {
            ir[delay + i] = gain * 0.3 * n * (-(i as f32) / 300.0).exp();
        }
        ir
    }

    #[cfg(feature = "echo")]
    fn convolve(x: &[f32], h: &[f32]) -> Vec<f32> {
        let taps: Vec<(usize, f32)> = h
            .iter()
            .enumerate()
            .filter(|(_, v)| v.abs() > 1e-4)
            .map(|(i, &v)| (i, v))
            .collect();
        let mut y = vec![0.0; x.len()];
        for (n, out) in y.iter_mut().enumerate() {
            *out = taps
                .iter()
                .filter(|(i, _)| *i <= n)
                .map(|(i, v)| v * x[n - i])
                .sum();
        }
        y
    }

    #[cfg(feature = "echo")]
    #[test]
    fn the_speakers_sound_is_removed_from_the_microphone() {
        use super::super::convert::rms;
        // Speech-like reference: noise shaped into 200 ms syllables.
        let n = 16_000 * 4;
        let far: Vec<f32> = lcg_noise(n, 1, 0.3)
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v * (0.3 + 0.7 * ((i as f32 / 3200.0 * std::f32::consts::PI).sin()).abs())
            })
            .collect();
        let echo = convolve(&far, &room(1280, 0.5)); // 80 ms
        let r = EchoReference::new();
        let mut c = EchoCanceller::new(r.clone()).unwrap();
        let mut out = Vec::new();
        for (f, e) in far.chunks(FRAME).zip(echo.chunks(FRAME)) {
            r.played(16_000, f);
            out.extend(c.process(e));
        }
        let after = 16_000 * 2..out.len().min(echo.len());
        let erle = 20.0 * (rms(&echo[after.clone()]) / rms(&out[after]).max(1e-9)).log10();
        eprintln!("ERLE {erle:.1} dB, {:?}", c.stats());
        assert!(erle >= 20.0, "echo reduced by only {erle:.1} dB");
        assert_eq!(c.stats().underruns, 0);
    }
}
