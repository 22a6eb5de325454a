//! Splits a stream of 16 kHz mono audio into utterances: the one place that decides when
//! speech starts, when it pauses and when it ends, for the server's own microphone
//! (AudioCapture) and for client audio (WebSocket sessions) alike.
//!
//! - push-to-talk: the utterance runs from start to [`Segmenter::stop`]; the detector
//!   only marks pauses.
//! - continuous: the [`Vad`] starts utterances (with `preroll_ms` of audio from before, so
//!   the first syllable is kept) and ends them after `vad.silence_ms` of silence.
//! - wake: a [`WakeDetector`] hears every frame; a detection opens an utterance at the
//!   sample where the word ended (the word is not transcribed), which ends like a
//!   continuous one, or unused when nothing is said within [`WAKE_LISTEN`]. While the
//!   session's follow-up window is open (after an answer), speech opens an utterance
//!   without the word, as in continuous mode.
//!
//! Both hand out the audio so far every `interim_ms` (for `stt_interim`) and, once the
//! speaker has paused for `settle_ms`, once more as *settled*: Stt transcribes that at
//! once, so when the pause turns out to be the end, the transcript is already there (or
//! nearly). When Stt finds that transcript complete ([`Settle::complete`]) and the speaker
//! is still silent, a continuous utterance ends after `quick_silence_ms` instead of the
//! full `vad.silence_ms`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coda_protocol::SttMode;

use super::vad::{Vad, VadEvent, VadSettings, FRAME};
use crate::voice::{FollowUp, Settle, WakeListening, SPEECH_SAMPLE_RATE};
use crate::wake::WakeDetector;

/// After the wake word, how long speech may take to begin.
pub const WAKE_LISTEN: Duration = Duration::from_secs(4);
/// Audio kept beyond the preroll while waiting for the wake word: its check
/// ([`crate::wake::verify`]) reports it up to this much later, samples.
const WAKE_VERIFY_MARGIN: usize = SPEECH_SAMPLE_RATE as usize * 3 / 2;
/// Voiced frames after the wake word before it counts as speech (not the word's echo).
const WAKE_VOICED_FRAMES: usize = 5;

/// How audio is cut into utterances.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SegmentSettings {
    /// The voice activity detector (its `silence_ms` ends an utterance).
    pub vad: VadSettings,
    /// Audio kept from before speech was detected, ms.
    pub preroll_ms: u32,
    /// Longest utterance; it is ended at this length, s.
    pub max_utterance_s: f64,
    /// The audio so far goes out at most this often while speaking, ms.
    pub interim_ms: u32,
    /// A pause this long hands the audio so far over as settled, ms.
    pub settle_ms: u32,
    /// Silence that ends a continuous utterance whose settled transcript is complete, ms.
    pub quick_silence_ms: u32,
}

impl Default for SegmentSettings {
    fn default() -> Self {
        SegmentSettings {
            vad: VadSettings::default(),
            preroll_ms: 300,
            max_utterance_s: 30.0,
            interim_ms: 500,
            settle_ms: 120,
            quick_silence_ms: 300,
        }
    }
}

/// What the segmenter saw.
#[derive(Debug, Clone)]
pub enum Segment {
    /// The wake word was heard (wake mode); `Started` follows.
    Wake {
        word: String,
        score: f32,
        verified: Option<f32>,
    },
    /// Speech began (continuous mode; push-to-talk starts with the listening).
    Started,
    /// The utterance so far; `settle` when the speaker has paused here.
    Partial {
        /// The whole utterance up to now.
        samples: Arc<[f32]>,
        /// The pause point, when this is settled audio.
        settle: Option<Settle>,
    },
    /// The utterance is complete.
    Ended {
        /// The whole utterance (the silence that ended it trimmed to 200 ms).
        samples: Arc<[f32]>,
        /// When the speaker stopped.
        speech_ended: Instant,
        /// The last settled point, if nothing was said after it: its transcript is this
        /// utterance's.
        settle: Option<Settle>,
        /// Why it ended.
        cause: EndCause,
    },
    /// The listening stopped with no audio at all.
    Empty,
}

/// Why an utterance ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndCause {
    /// Push-to-talk released (or listening stopped).
    Stopped,
    /// `vad.silence_ms` of silence.
    Silence,
    /// `quick_silence_ms` of silence after a complete-looking transcript.
    QuickSilence,
    /// `max_utterance_s` reached.
    MaxLength,
}

struct Utterance {
    samples: Vec<f32>,
    last_partial: Instant,
    last_voiced_at: Instant,
    /// Silent frames since the last voiced one.
    silent_frames: usize,
    /// Anything voiced yet (push-to-talk starts before the speaker does).
    voiced: bool,
    settle: Option<Settle>,
    /// A voiced frame came after `settle`.
    spoke_since_settle: bool,
    /// Opened by the wake word and nothing said yet: ended unused at this instant.
    wake_deadline: Option<Instant>,
    voiced_frames: usize,
    /// Where the wake word that opened it ended (stream samples): the utterance's start.
    wake_end: Option<u64>,
}

impl Utterance {
    fn new(samples: Vec<f32>, now: Instant) -> Utterance {
        Utterance {
            samples,
            last_partial: now,
            last_voiced_at: now,
            silent_frames: 0,
            voiced: false,
            settle: None,
            spoke_since_settle: false,
            wake_deadline: None,
            voiced_frames: 0,
            wake_end: None,
        }
    }
}

struct WakeGate {
    detector: Box<dyn WakeDetector>,
    follow_up: std::sync::Arc<FollowUp>,
    /// Samples heard so far (the detector's positions count the same).
    pos: u64,
}

/// The segmenter of one listening.
pub struct Segmenter {
    s: SegmentSettings,
    mode: SttMode,
    vad: Vad,
    frame: Vec<f32>,
    /// What the utterance carries for `frame` (see [`Segmenter::push_split`]).
    keep: Vec<f32>,
    recent: std::collections::VecDeque<f32>,
    utterance: Option<Utterance>,
    wake: Option<WakeGate>,
}

fn frames(ms: u32) -> usize {
    (ms as usize / 20).max(1)
}

/// The word that opened `u` read again to a later end ("hey co…" first, then "hey coda"):
/// what was taken for speech after it was the rest of the word, so `u` opens afresh where
/// the word ended. True when it did (the VAD starts over).
fn reread(u: &mut Utterance, d: &crate::wake::Detection, now: Instant) -> bool {
    let Some(end) = u.wake_end else {
        return false;
    };
    if d.start >= end || d.end <= end {
        return false;
    }
    let n = usize::try_from(d.end - end).unwrap_or(usize::MAX);
    let rest: Vec<f32> = u.samples.drain(n.min(u.samples.len())..).collect();
    *u = Utterance::new(rest, now);
    u.wake_deadline = Some(now + WAKE_LISTEN);
    u.wake_end = Some(d.end);
    true
}

impl Segmenter {
    /// A segmenter for one listening in `mode` (push-to-talk opens its utterance now).
    pub fn new(settings: SegmentSettings, mode: SttMode, now: Instant) -> Segmenter {
        Segmenter {
            s: settings,
            mode,
            vad: Vad::new(settings.vad),
            frame: Vec::with_capacity(FRAME),
            keep: Vec::with_capacity(FRAME),
            recent: std::collections::VecDeque::new(),
            utterance: (mode == SttMode::PushToTalk).then(|| Utterance::new(Vec::new(), now)),
            wake: None,
        }
    }

    /// A segmenter listening for the wake word.
    pub fn with_wake(
        settings: SegmentSettings,
        listening: WakeListening,
        now: Instant,
    ) -> Segmenter {
        let mut s = Segmenter::new(settings, SttMode::Wake, now);
        s.wake = Some(WakeGate {
            detector: listening.detector,
            follow_up: listening.follow_up,
            pos: 0,
        });
        s
    }

    /// The mode it was made for.
    pub fn mode(&self) -> SttMode {
        self.mode
    }

    /// Samples in the open utterance.
    pub fn utterance_len(&self) -> usize {
        self.utterance.as_ref().map_or(0, |u| u.samples.len())
    }

    fn max_samples(&self) -> usize {
        (self.s.max_utterance_s.max(0.5) * f64::from(SPEECH_SAMPLE_RATE)) as usize
    }

    fn preroll_samples(&self) -> usize {
        (self.s.preroll_ms + self.s.vad.start_ms) as usize * SPEECH_SAMPLE_RATE as usize / 1000
    }

    /// Feeds samples that arrived at `now`; what they changed goes to `out`.
    pub fn push(&mut self, samples: &[f32], now: Instant, out: &mut Vec<Segment>) {
        self.push_split(samples, samples, now, out);
    }

    /// Feeds two versions of the same samples: the VAD and the wake word decide on
    /// `detect`, the utterances carry `keep`. Echo cancellation gives both: its fully
    /// suppressed output, where the assistant's voice does not start utterances, and its
    /// linear output, which keeps more of a person talking over the assistant for whisper.
    pub fn push_split(
        &mut self,
        detect: &[f32],
        keep: &[f32],
        now: Instant,
        out: &mut Vec<Segment>,
    ) {
        let n = detect.len().min(keep.len());
        let (mut detect, mut keep) = (&detect[..n], &keep[..n]);
        while !detect.is_empty() {
            let take = (FRAME - self.frame.len()).min(detect.len());
            self.frame.extend_from_slice(&detect[..take]);
            self.keep.extend_from_slice(&keep[..take]);
            detect = &detect[take..];
            keep = &keep[take..];
            if self.frame.len() == FRAME {
                let frame = std::mem::replace(&mut self.frame, Vec::with_capacity(FRAME));
                let kept = std::mem::replace(&mut self.keep, Vec::with_capacity(FRAME));
                self.on_frame(&frame, &kept, now, out);
            }
        }
    }

    fn on_frame(&mut self, detect: &[f32], frame: &[f32], now: Instant, out: &mut Vec<Segment>) {
        let ev = self.vad.push_frame(detect);
        let voiced = self.vad.last_voiced();
        // The detector hears every frame, so its stream positions stay the segmenter's.
        let (detection, follow_up) = match self.wake.as_mut() {
            Some(g) => {
                g.pos += frame.len() as u64;
                let d = g.detector.push(detect).map(|d| (d, g.pos));
                (d, g.follow_up.is_open(now))
            }
            None => (None, false),
        };
        let continuous = self.mode != SttMode::PushToTalk;
        let max = self.max_samples();
        let Some(u) = self.utterance.as_mut() else {
            if let Some((d, pos)) = detection {
                self.recent.extend(frame.iter().copied());
                self.open_after_word(d, pos, now, out);
                return;
            }
            let opens = self.mode == SttMode::Continuous || follow_up;
            if opens && matches!(ev, VadEvent::SpeechStart { .. }) {
                if let Some(g) = &self.wake {
                    g.follow_up.close();
                }
                let skip = self.recent.len().saturating_sub(self.preroll_samples());
                let mut samples: Vec<f32> = self.recent.drain(..).skip(skip).collect();
                samples.extend_from_slice(frame);
                let mut u = Utterance::new(samples, now);
                u.voiced = true;
                self.utterance = Some(u);
                out.push(Segment::Started);
            } else {
                // A wake word being verified is reported late: what was said after it
                // must still be here then.
                let keep = self.preroll_samples()
                    + if self.wake.is_some() {
                        WAKE_VERIFY_MARGIN
                    } else {
                        0
                    };
                self.recent.extend(frame.iter().copied());
                let excess = self.recent.len().saturating_sub(keep);
                self.recent.drain(..excess);
            }
            return;
        };
        if let Some((d, _)) = &detection {
            if reread(u, d, now) {
                self.vad.reset();
            }
        }
        u.samples.extend_from_slice(frame);
        if let Some(deadline) = u.wake_deadline {
            // Nothing said after the wake word yet: the detector's silence and the word's
            // own end (its `SpeechEnd`) do not end the utterance; only the deadline does.
            if voiced {
                u.voiced_frames += 1;
            }
            if u.voiced_frames < WAKE_VOICED_FRAMES {
                if now >= deadline {
                    self.utterance = None;
                    self.vad.reset();
                    out.push(Segment::Empty);
                }
                return;
            }
            u.wake_deadline = None;
        }
        if voiced {
            u.voiced = true;
            u.last_voiced_at = now;
            u.silent_frames = 0;
            if u.settle.is_some() {
                u.spoke_since_settle = true;
            }
        } else {
            u.silent_frames += 1;
        }
        if continuous {
            if let VadEvent::SpeechEnd { frames_ago } = ev {
                self.end(frames_ago, None, EndCause::Silence, out);
                return;
            }
            let quick = u.settle.as_ref().is_some_and(|s| {
                !u.spoke_since_settle && s.complete.load(Ordering::Relaxed) == s.len
            });
            if quick && u.silent_frames >= frames(self.s.quick_silence_ms) {
                let n = u.silent_frames;
                self.vad.reset();
                self.end(n, None, EndCause::QuickSilence, out);
                return;
            }
        }
        if u.samples.len() >= max {
            u.samples.truncate(max);
            self.vad.reset();
            self.end(0, Some(now), EndCause::MaxLength, out);
            return;
        }
        let settle_now = u.voiced
            && !voiced
            && u.silent_frames == frames(self.s.settle_ms)
            && (u.settle.is_none() || u.spoke_since_settle);
        if settle_now {
            let settle = Settle {
                len: u.samples.len(),
                complete: Arc::new(AtomicUsize::new(0)),
            };
            u.settle = Some(settle.clone());
            u.spoke_since_settle = false;
            u.last_partial = now;
            out.push(Segment::Partial {
                samples: Arc::from(u.samples.as_slice()),
                settle: Some(settle),
            });
        } else if voiced
            && now.duration_since(u.last_partial)
                >= Duration::from_millis(u64::from(self.s.interim_ms))
        {
            u.last_partial = now;
            out.push(Segment::Partial {
                samples: Arc::from(u.samples.as_slice()),
                settle: None,
            });
        }
    }

    /// Takes what the wake word's detector decided since the last frame (a check answered:
    /// [`crate::wake::WakeDetector::wake_on_answer`]) without waiting for the next one.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<Segment>) {
        let Some(g) = self.wake.as_mut() else {
            return;
        };
        let Some(d) = g.detector.push(&[]) else {
            return;
        };
        let pos = g.pos;
        match self.utterance.as_mut() {
            None => self.open_after_word(d, pos, now, out),
            Some(u) => {
                if reread(u, &d, now) {
                    self.vad.reset();
                }
            }
        }
    }

    /// The wake word `d` was heard, the stream being at `pos`: the utterance starts where
    /// the word ended (the part of the audio kept since).
    fn open_after_word(
        &mut self,
        d: crate::wake::Detection,
        pos: u64,
        now: Instant,
        out: &mut Vec<Segment>,
    ) {
        let after = (pos.saturating_sub(d.end) as usize).min(self.recent.len());
        let skip = self.recent.len() - after;
        let samples: Vec<f32> = self.recent.drain(..).skip(skip).collect();
        let mut u = Utterance::new(samples, now);
        u.wake_deadline = Some(now + WAKE_LISTEN);
        u.wake_end = Some(d.end);
        self.utterance = Some(u);
        out.push(Segment::Wake {
            word: d.word,
            score: d.score,
            verified: d.verified,
        });
        out.push(Segment::Started);
    }

    /// Ends the open utterance, keeping 200 ms of the `silent_frames` that ended it.
    fn end(
        &mut self,
        silent_frames: usize,
        speech_ended: Option<Instant>,
        cause: EndCause,
        out: &mut Vec<Segment>,
    ) {
        let Some(mut u) = self.utterance.take() else {
            return;
        };
        let trim = silent_frames.saturating_sub(10) * FRAME;
        let keep = u.samples.len().saturating_sub(trim);
        u.samples.truncate(keep);
        if u.samples.is_empty() {
            out.push(Segment::Empty);
            return;
        }
        let settle = u.settle.filter(|_| !u.spoke_since_settle);
        out.push(Segment::Ended {
            samples: Arc::from(u.samples),
            speech_ended: speech_ended.unwrap_or(u.last_voiced_at),
            settle,
            cause,
        });
    }

    /// The listening stops at `now` (push-to-talk released): the open utterance ends.
    pub fn stop(&mut self, now: Instant) -> Option<Segment> {
        let mut out = Vec::new();
        // A part-frame at the end is still speech.
        if !self.keep.is_empty() {
            if let Some(u) = self.utterance.as_mut() {
                u.samples.append(&mut self.keep);
            }
            self.frame.clear();
        }
        let ptt = self.mode == SttMode::PushToTalk;
        let spoke = self.utterance.as_ref().is_some_and(|u| u.voiced);
        // Push-to-talk ends when released; if the speaker had already stopped, at the
        // last voiced frame.
        let ended = if ptt || !spoke {
            now
        } else {
            self.utterance.as_ref().map_or(now, |u| u.last_voiced_at)
        };
        self.end(0, Some(ended), EndCause::Stopped, &mut out);
        out.pop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::audio::vad::tests::tone;

    fn quiet(ms: u32) -> Vec<f32> {
        let n = (SPEECH_SAMPLE_RATE * ms / 1000) as usize;
        (0..n)
            .map(|i| if i % 2 == 0 { 0.0005 } else { -0.0005 })
            .collect()
    }

    /// Feeds `signal` in 20 ms chunks, one per 20 ms of a virtual clock.
    fn feed(seg: &mut Segmenter, signal: &[f32], t: &mut Instant) -> Vec<Segment> {
        let mut out = Vec::new();
        for chunk in signal.chunks(FRAME) {
            *t += Duration::from_millis(20);
            seg.push(chunk, *t, &mut out);
        }
        out
    }

    fn names(ev: &[Segment]) -> Vec<&'static str> {
        ev.iter()
            .map(|e| match e {
                Segment::Started => "started",
                Segment::Partial {
                    settle: Some(_), ..
                } => "settled",
                Segment::Partial { .. } => "partial",
                Segment::Ended { .. } => "ended",
                Segment::Empty => "empty",
                Segment::Wake { .. } => "wake",
            })
            .collect()
    }

    /// A stand-in detector (the real one is tested in `wake::template`): reports the
    /// word as ending at sample `at`, once, when it has heard `at + late` samples.
    struct At {
        at: u64,
        late: u64,
        heard: u64,
    }

    impl WakeDetector for At {
        fn word(&self) -> &str {
            "hey test"
        }
        fn push(&mut self, samples: &[f32]) -> Option<crate::wake::Detection> {
            let before = self.heard;
            self.heard += samples.len() as u64;
            let fire = self.at + self.late;
            (before < fire && self.heard >= fire).then(|| crate::wake::Detection {
                word: "hey test".into(),
                score: 0.9,
                start: self.at - 8_000,
                end: self.at,
                verified: None,
            })
        }
        fn reset(&mut self) {}
    }

    fn wake_segmenter(at: u64, t: Instant) -> (Segmenter, std::sync::Arc<FollowUp>) {
        late_wake_segmenter(at, 960, t)
    }

    fn late_wake_segmenter(
        at: u64,
        late: u64,
        t: Instant,
    ) -> (Segmenter, std::sync::Arc<FollowUp>) {
        let ups = crate::voice::FollowUps::default();
        let follow_up = ups.register("s");
        let seg = Segmenter::with_wake(
            SegmentSettings::default(),
            WakeListening {
                detector: Box::new(At { at, late, heard: 0 }),
                follow_up: follow_up.clone(),
            },
            t,
        );
        (seg, follow_up)
    }

    #[test]
    fn the_detector_hears_one_version_and_the_utterance_carries_the_other() {
        let mut t = Instant::now();
        let mut seg = Segmenter::new(SegmentSettings::default(), SttMode::Continuous, t);
        let mut out = Vec::new();
        // Loud only in what is kept (the assistant's echo left in the linear output):
        // nothing starts.
        for f in tone(1_000, 0.3).chunks(FRAME) {
            t += Duration::from_millis(20);
            seg.push_split(&quiet(20), f, t, &mut out);
        }
        assert!(out.is_empty(), "{:?}", names(&out));
        // Speech in both (after a pause longer than the pre-roll): the utterance is made of
        // the kept version.
        let mut speech = quiet(500);
        speech.extend(tone(600, 0.3));
        speech.extend(quiet(1_000));
        let kept: Vec<f32> = speech.iter().map(|v| v * 0.5).collect();
        for (d, k) in speech.chunks(FRAME).zip(kept.chunks(FRAME)) {
            t += Duration::from_millis(20);
            seg.push_split(d, k, t, &mut out);
        }
        let Some(Segment::Ended { samples, .. }) =
            out.iter().find(|e| matches!(e, Segment::Ended { .. }))
        else {
            panic!("{:?}", names(&out))
        };
        let peak = samples.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!((0.1..0.2).contains(&peak), "{peak}");
    }

    #[test]
    fn the_wake_word_opens_an_utterance_that_starts_after_it() {
        let mut t = Instant::now();
        // The word ends at 1.0 s; the detector says so 60 ms later.
        let (mut seg, _) = wake_segmenter(16_000, t);
        let ev = word_pause_request(&mut seg, &mut t);
        let n = names(&ev);
        assert_eq!(&n[..2], ["wake", "started"], "{n:?}");
        assert_eq!(n.iter().filter(|e| **e == "ended").count(), 1, "{n:?}");
        starts_after_the_word(&ev);
    }

    /// A word (a tone, 0.5–1.0 s), a pause longer than the end-of-speech silence, then
    /// the request.
    fn word_pause_request(seg: &mut Segmenter, t: &mut Instant) -> Vec<Segment> {
        let mut sig = quiet(500);
        sig.extend(tone(500, 0.3));
        sig.extend(quiet(900));
        sig.extend(tone(800, 0.3));
        sig.extend(quiet(1_000));
        feed(seg, &sig, t)
    }

    /// The utterance ended holds, from the end of the word, the pause, the request and
    /// 200 ms of silence; none of the word.
    fn starts_after_the_word(ev: &[Segment]) {
        let Some(Segment::Ended { samples, .. }) =
            ev.iter().find(|e| matches!(e, Segment::Ended { .. }))
        else {
            panic!("{:?}", names(ev))
        };
        let secs = samples.len() as f64 / 16_000.0;
        assert!((1.8..2.0).contains(&secs), "{secs}");
        assert!(samples[..16_000 * 8 / 10].iter().all(|v| v.abs() < 0.01));
    }

    /// Reports each (start, end) of the word once it has heard `end + 960` samples.
    struct Readings(Vec<(u64, u64)>, u64);

    impl WakeDetector for Readings {
        fn word(&self) -> &str {
            "hey test"
        }
        fn push(&mut self, samples: &[f32]) -> Option<crate::wake::Detection> {
            let before = self.1;
            self.1 += samples.len() as u64;
            let heard = self.1;
            let &(start, end) = self
                .0
                .iter()
                .find(|(_, end)| before < end + 960 && heard >= end + 960)?;
            Some(crate::wake::Detection {
                word: "hey test".into(),
                score: 0.9,
                start,
                end,
                verified: None,
            })
        }
        fn reset(&mut self) {}
    }

    #[test]
    fn the_word_read_again_to_a_later_end_moves_the_utterances_start() {
        let mut t = Instant::now();
        let ups = crate::voice::FollowUps::default();
        // The word (a tone, 0.5–1.0 s) is first reported as ending at 0.75 s, then read
        // to its real end.
        let mut seg = Segmenter::with_wake(
            SegmentSettings::default(),
            WakeListening {
                detector: Box::new(Readings(vec![(8_000, 12_000), (8_000, 16_000)], 0)),
                follow_up: ups.register("s"),
            },
            t,
        );
        let ev = word_pause_request(&mut seg, &mut t);
        let n = names(&ev);
        assert_eq!(n.iter().filter(|e| **e == "wake").count(), 1, "{n:?}");
        // Not the rest of the word taken for the request.
        starts_after_the_word(&ev);
    }

    #[test]
    fn a_wake_word_reported_late_keeps_what_was_said_after_it() {
        let mut t = Instant::now();
        // Verified a second after it ended, while the request (from 150 ms after the
        // word) is under way: the utterance still starts where the word ended.
        let (mut seg, _) = late_wake_segmenter(16_000, 16_000, t);
        let mut sig = quiet(500);
        sig.extend(tone(500, 0.3));
        sig.extend(quiet(150));
        sig.extend(tone(1_500, 0.3));
        sig.extend(quiet(1_000));
        let ev = feed(&mut seg, &sig, &mut t);
        let Some(Segment::Ended { samples, .. }) =
            ev.iter().find(|e| matches!(e, Segment::Ended { .. }))
        else {
            panic!("{:?}", names(&ev))
        };
        assert!(samples[..16_000 * 14 / 100].iter().all(|v| v.abs() < 0.01));
        let loud = samples.iter().filter(|v| v.abs() > 0.1).count();
        assert!(
            loud > 16_000 * 14 / 10 * 7 / 10,
            "the whole request is there: {loud}"
        );
    }

    /// Reports the word (ending at 1.0 s) on the first push after `answered` is set, as a
    /// detector waiting for its check does.
    struct Answered(std::sync::Arc<std::sync::atomic::AtomicBool>, bool);

    impl WakeDetector for Answered {
        fn word(&self) -> &str {
            "hey test"
        }
        fn push(&mut self, _: &[f32]) -> Option<crate::wake::Detection> {
            let fire = !self.1 && self.0.load(Ordering::Relaxed);
            self.1 |= fire;
            fire.then(|| crate::wake::Detection {
                word: "hey test".into(),
                score: 0.9,
                start: 8_000,
                end: 16_000,
                verified: Some(-2.0),
            })
        }
        fn reset(&mut self) {}
    }

    #[test]
    fn a_wake_word_answered_between_frames_is_taken_without_the_next_one() {
        let mut t = Instant::now();
        let answered = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut seg = Segmenter::with_wake(
            SegmentSettings::default(),
            WakeListening {
                detector: Box::new(Answered(answered.clone(), false)),
                follow_up: crate::voice::FollowUps::default().register("s"),
            },
            t,
        );
        let mut out = Vec::new();
        seg.poll(t, &mut out);
        assert!(out.is_empty());
        let mut sig = quiet(500);
        sig.extend(tone(500, 0.3));
        sig.extend(quiet(140));
        assert!(feed(&mut seg, &sig, &mut t).is_empty());
        answered.store(true, Ordering::Relaxed);
        seg.poll(t, &mut out);
        assert_eq!(names(&out), ["wake", "started"]);
        // The utterance holds what came after the word, and what comes next.
        let mut sig = quiet(760);
        sig.extend(tone(800, 0.3));
        sig.extend(quiet(1_000));
        out.extend(feed(&mut seg, &sig, &mut t));
        starts_after_the_word(&out);
    }

    #[test]
    fn nothing_said_after_the_wake_word_ends_unused_and_speech_without_it_is_ignored() {
        let mut t = Instant::now();
        let (mut seg, _) = wake_segmenter(16_000, t);
        let mut sig = quiet(500);
        sig.extend(tone(500, 0.3));
        sig.extend(quiet(5_000));
        let ev = feed(&mut seg, &sig, &mut t);
        assert_eq!(names(&ev), ["wake", "started", "empty"]);
        // No wake word: speech is not an utterance.
        let mut sig = tone(800, 0.3);
        sig.extend(quiet(1_000));
        assert!(feed(&mut seg, &sig, &mut t).is_empty());
    }

    #[test]
    fn the_follow_up_window_takes_speech_without_the_wake_word() {
        let mut t = Instant::now();
        let (mut seg, follow_up) = wake_segmenter(u64::MAX / 2, t);
        let _ = feed(&mut seg, &quiet(500), &mut t);
        follow_up.open(t + Duration::from_secs(2));
        let mut sig = tone(800, 0.3);
        sig.extend(quiet(1_000));
        let n = names(&feed(&mut seg, &sig, &mut t));
        assert_eq!(n.first(), Some(&"started"), "{n:?}");
        assert_eq!(n.last(), Some(&"ended"), "{n:?}");
        // The window was used: the next speech needs the wake word again.
        assert!(!follow_up.is_open(t));
        let n = names(&feed(&mut seg, &sig, &mut t));
        assert!(n.is_empty(), "{n:?}");
        // A window that expired takes nothing.
        follow_up.open(t + Duration::from_millis(100));
        let _ = feed(&mut seg, &quiet(200), &mut t);
        assert!(feed(&mut seg, &sig, &mut t).is_empty());
    }

    #[test]
    fn continuous_speech_is_one_utterance_with_a_settled_point() {
        let mut t = Instant::now();
        let mut seg = Segmenter::new(SegmentSettings::default(), SttMode::Continuous, t);
        let mut sig = quiet(500);
        sig.extend(tone(1_200, 0.3));
        sig.extend(quiet(1_000));
        let ev = feed(&mut seg, &sig, &mut t);
        let n = names(&ev);
        assert_eq!(n.first(), Some(&"started"), "{n:?}");
        assert_eq!(n.iter().filter(|e| **e == "settled").count(), 1, "{n:?}");
        assert_eq!(n.last(), Some(&"ended"), "{n:?}");
        let Some(Segment::Ended {
            samples,
            settle,
            cause,
            ..
        }) = ev.last()
        else {
            unreachable!()
        };
        assert_eq!(*cause, EndCause::Silence);
        assert!(settle.is_some(), "nothing was said after the pause");
        // Preroll + speech + 200 ms of the silence.
        let secs = samples.len() as f64 / 16_000.0;
        assert!((1.4..1.9).contains(&secs), "{secs}");
    }

    #[test]
    fn a_complete_transcript_ends_the_utterance_sooner() {
        let mut t = Instant::now();
        let s = SegmentSettings::default();
        let mut seg = Segmenter::new(s, SttMode::Continuous, t);
        let mut sig = quiet(500);
        sig.extend(tone(1_000, 0.3));
        let _ = feed(&mut seg, &sig, &mut t);
        // The pause settles; the transcriber says the text is complete.
        let ev = feed(&mut seg, &quiet(s.settle_ms), &mut t);
        let Some(Segment::Partial {
            settle: Some(settle),
            ..
        }) = ev.last()
        else {
            panic!("no settled partial: {:?}", names(&ev));
        };
        settle.complete.store(settle.len, Ordering::Relaxed);
        let ev = feed(&mut seg, &quiet(s.vad.silence_ms), &mut t);
        let ended = ev.iter().position(|e| matches!(e, Segment::Ended { .. }));
        let Some(i) = ended else {
            panic!("{:?}", names(&ev))
        };
        let Segment::Ended { cause, settle, .. } = &ev[i] else {
            unreachable!()
        };
        assert_eq!(*cause, EndCause::QuickSilence);
        assert!(settle.is_some());
        // Ended at quick_silence_ms of silence, counted from the last voiced frame.
        assert!(
            i as u32 * 20 + s.settle_ms <= s.quick_silence_ms + 20,
            "ended {i} frames later"
        );
    }

    #[test]
    fn speech_after_the_pause_unsettles_it() {
        let mut t = Instant::now();
        let mut seg = Segmenter::new(SegmentSettings::default(), SttMode::PushToTalk, t);
        let mut sig = quiet(200);
        sig.extend(tone(600, 0.3));
        sig.extend(quiet(300));
        sig.extend(tone(600, 0.3));
        let ev = feed(&mut seg, &sig, &mut t);
        assert!(names(&ev).contains(&"settled"), "{:?}", names(&ev));
        let Some(Segment::Ended { settle, cause, .. }) = seg.stop(t) else {
            panic!("push-to-talk stop ends the utterance")
        };
        assert_eq!(cause, EndCause::Stopped);
        assert!(settle.is_none(), "speech came after the settled point");
    }

    #[test]
    fn push_to_talk_keeps_everything_until_stopped() {
        let mut t = Instant::now();
        let mut seg = Segmenter::new(SegmentSettings::default(), SttMode::PushToTalk, t);
        let mut sig = tone(700, 0.3);
        sig.extend(quiet(2_000));
        let ev = feed(&mut seg, &sig, &mut t);
        assert!(!names(&ev).contains(&"ended"), "{:?}", names(&ev));
        let Some(Segment::Ended {
            samples, settle, ..
        }) = seg.stop(t)
        else {
            panic!("stop ends it")
        };
        assert_eq!(samples.len(), sig.len());
        assert!(settle.is_some());
    }

    #[test]
    fn stopping_with_nothing_heard_is_empty() {
        let t = Instant::now();
        let mut seg = Segmenter::new(SegmentSettings::default(), SttMode::PushToTalk, t);
        assert!(matches!(seg.stop(t), Some(Segment::Empty)));
        let mut seg = Segmenter::new(SegmentSettings::default(), SttMode::Continuous, t);
        assert!(seg.stop(t).is_none());
    }

    #[test]
    fn long_speech_ends_at_the_maximum() {
        let mut t = Instant::now();
        let s = SegmentSettings {
            max_utterance_s: 1.0,
            ..Default::default()
        };
        let mut seg = Segmenter::new(s, SttMode::Continuous, t);
        let mut sig = quiet(300);
        sig.extend(tone(2_500, 0.3));
        let ev = feed(&mut seg, &sig, &mut t);
        let ended: Vec<_> = ev
            .iter()
            .filter_map(|e| match e {
                Segment::Ended { samples, cause, .. } => Some((samples.len(), *cause)),
                _ => None,
            })
            .collect();
        assert_eq!(
            ended.first(),
            Some(&(16_000, EndCause::MaxLength)),
            "{:?}",
            names(&ev)
        );
    }
}
