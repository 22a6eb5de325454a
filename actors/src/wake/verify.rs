//! The second stage: whisper checks what the template matcher heard.
//!
//! The template detector alone trades missed words for false wakes badly (`coda bench
//! wake`, 15 dB SNR: 96.9 % detected at 120 false wakes an hour, 93.8 % at 18). Run at the lower
//! threshold, it only proposes candidates; each one's audio (from [`PRE_MS`] before the
//! word to its end) goes to the speech-to-text model, which scores how likely the clip
//! says the wake word ([`crate::stt::WhisperEngine::phrase_score`]); with the matcher's
//! own score ([`fused`]) that decides whether the candidate is a detection. The check runs off the audio path: the
//! [`Verified`] detector asks and keeps listening, and reports the detection (with the
//! word's original position, so the utterance still starts where the word ended) at the
//! first push after the answer. With [`VerifySettings::early`] the check starts sooner: on
//! the match the matcher is still following, and that answer decides if the matcher then
//! reports the same reading followed by a pause. When no answer can come (no model, a failure, a
//! [`WAIT`] without one), the first stage's own score decides, at the stricter threshold
//! it would have had alone.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Detection, WakeDetector, WakeModel};

/// Audio from before the word that the check hears, ms.
pub const PRE_MS: u64 = 300;
/// The [`fused`] score at or above which the word was said (`coda bench wake`, see
/// docs/voice.md).
pub const DEFAULT_THRESHOLD: f32 = -9.4;
/// Weight of the matcher's own score in the [`fused`] one.
pub const MATCH_WEIGHT: f64 = 2.0;
/// The matcher score that adds nothing to the [`fused`] one.
pub const MATCH_REFERENCE: f32 = 0.05;
/// What the lead word's log-probability counts beside the name's, in [`phrase_check`].
pub const LEAD_WEIGHT: f64 = 0.15;

/// What decides a candidate: whisper's [`phrase_check`] of the word, plus [`MATCH_WEIGHT`]
/// × ln(matcher score / [`MATCH_REFERENCE`]). The two err on different candidates: fitted
/// on one stretch of `coda bench wake` noise and measured on two others, the sum kept one
/// word more and three false wakes fewer than whisper alone.
pub fn fused(check: f64, matcher: f32) -> f64 {
    check + MATCH_WEIGHT * f64::from(matcher.max(1e-3) / MATCH_REFERENCE).ln()
}

/// Whisper's score of one [`Phrase`] from its tokens' log-probabilities: the name's mean
/// per token plus [`LEAD_WEIGHT`] × the lead word's. The name is what tells the word from
/// other speech: whisper hears "hey" everywhere ("Hey, it's…") and often misses it in the
/// word itself, and the comma it may write after it is nearly free, so counting either
/// like the name let "hey, it's" and "echo can…" through (`coda bench wake`, 3 h of other
/// speech: at the threshold keeping 186 of 192 words, 2 false wakes against 14 for the
/// plain mean over all tokens; see docs/voice.md).
pub fn phrase_check(lead: &[f64], name: &[f64]) -> f64 {
    let mean = name.iter().sum::<f64>() / name.len().max(1) as f64;
    mean + LEAD_WEIGHT * lead.iter().sum::<f64>()
}

/// The template score of a candidate worth checking.
pub const DEFAULT_CANDIDATE_THRESHOLD: f32 = 0.035;
/// How long a candidate may wait for its check before the first stage decides alone.
pub const WAIT: Duration = Duration::from_millis(1500);
/// The first look at a match comes once it has not improved for this many 10 ms frames
/// (the matcher reports it after [`super::template::PATIENCE`]).
pub const EARLY_FRAMES: u64 = 2;
/// Audio kept for the check: the longest word, [`PRE_MS`] and the time to report.
const HISTORY: usize = 4 * crate::voice::SPEECH_SAMPLE_RATE as usize;

/// Whether the wake word is verified, and how strictly.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VerifySettings {
    /// Template score that makes a candidate.
    pub candidate_threshold: f32,
    /// The [`fused`] score that makes a candidate a detection.
    pub threshold: f32,
    /// Check the match the matcher follows before it reports it, and let that answer decide
    /// when the word was followed by a pause.
    pub early: bool,
}

impl Default for VerifySettings {
    fn default() -> Self {
        VerifySettings {
            candidate_threshold: DEFAULT_CANDIDATE_THRESHOLD,
            threshold: DEFAULT_THRESHOLD,
            early: true,
        }
    }
}

/// One way whisper writes the word: the lead word, what may come between (a comma), and
/// the name (`hey coda` → ` Hey`, `,`, ` Coda`). A one-word wake word is all name.
#[derive(Debug, Clone, PartialEq)]
pub struct Phrase {
    pub lead: String,
    pub joiner: String,
    pub name: String,
}

/// One check: the clip, the ways the word is written, and where the score goes.
pub struct VerifyRequest {
    pub audio: Vec<f32>,
    pub phrases: Vec<Phrase>,
    pub reply: mpsc::Sender<Result<f64, String>>,
    /// Set when nobody waits for the answer any more (a better reading of the word is
    /// checked instead, the stream was reset): a check not yet run is skipped, one
    /// running stops at whisper.cpp's next step, so the check that matters has the CPU.
    pub cancel: Arc<AtomicBool>,
    /// Called once the answer is sent (see [`WakeDetector::wake_on_answer`]).
    pub answered: Option<super::Waker>,
}

impl VerifyRequest {
    /// Answers the check and wakes whoever waits for it.
    pub fn answer(self, result: Result<f64, String>) {
        answer(&self.reply, self.answered.as_ref(), result);
    }
}

/// Sends `result` to `reply`, then calls `answered` (the parts of a [`VerifyRequest`] kept
/// while the check runs).
pub fn answer(
    reply: &mpsc::Sender<Result<f64, String>>,
    answered: Option<&super::Waker>,
    result: Result<f64, String>,
) {
    let _ = reply.send(result);
    if let Some(wake) = answered {
        wake();
    }
}

/// Scores clips for the wake word (the Stt actor, or an engine in this thread for the
/// command line and the benchmark). Dropping the request unanswered is a failure.
pub trait WakeVerify: Send + Sync {
    fn verify(&self, request: VerifyRequest);
}

/// How whisper writes the word: `hey coda` → ` Hey Coda`, ` Hey, Coda`.
pub fn phrases(word: &str) -> Vec<Phrase> {
    let words: Vec<String> = word
        .split_whitespace()
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f
                    .to_uppercase()
                    .chain(c.flat_map(char::to_lowercase))
                    .collect(),
                None => String::new(),
            }
        })
        .collect();
    match &words[..] {
        [] => Vec::new(),
        [name] => vec![Phrase {
            lead: String::new(),
            joiner: String::new(),
            name: format!(" {name}"),
        }],
        [lead, rest @ ..] => ["", ","]
            .iter()
            .map(|joiner| Phrase {
                lead: format!(" {lead}"),
                joiner: joiner.to_string(),
                name: format!(" {}", rest.join(" ")),
            })
            .collect(),
    }
}

struct Pending {
    detection: Detection,
    reply: mpsc::Receiver<Result<f64, String>>,
    cancel: Arc<AtomicBool>,
    asked: Instant,
    /// A first look, asked before the matcher reported the word: it decides only once the
    /// matcher reports this same reading followed by a pause.
    early: bool,
}

impl Pending {
    fn reads(&self, d: &Detection) -> bool {
        (self.detection.start, self.detection.end) == (d.start, d.end)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// A detector whose candidates are checked by a [`WakeVerify`].
pub struct Verified {
    inner: Box<dyn WakeDetector>,
    verifier: Arc<dyn WakeVerify>,
    phrases: Vec<Phrase>,
    threshold: f64,
    /// A first-stage score that stands alone when the check cannot answer.
    alone: f32,
    early: bool,
    history: VecDeque<f32>,
    pos: u64,
    pending: Option<Pending>,
    /// The last detection reported: a later reading of the same word needs no check.
    reported: Option<Detection>,
    waker: Option<super::Waker>,
}

impl Verified {
    /// `inner` proposes candidates (at the candidate threshold); `alone` is the template
    /// threshold used when a check fails.
    pub fn new(
        inner: Box<dyn WakeDetector>,
        verifier: Arc<dyn WakeVerify>,
        threshold: f32,
        alone: f32,
    ) -> Verified {
        Verified {
            phrases: phrases(inner.word()),
            inner,
            verifier,
            threshold: f64::from(threshold),
            alone,
            early: false,
            history: VecDeque::with_capacity(HISTORY),
            pos: 0,
            pending: None,
            reported: None,
            waker: None,
        }
    }

    /// A detector of `model` proposing candidates at `settings.candidate_threshold`,
    /// checked by `verifier` at `settings.threshold`, falling back to the model's own
    /// threshold.
    pub fn over(
        model: &dyn WakeModel,
        verifier: Arc<dyn WakeVerify>,
        settings: VerifySettings,
    ) -> Verified {
        Verified::new(
            model.detector_at(settings.candidate_threshold),
            verifier,
            settings.threshold,
            model.threshold(),
        )
        .looking_early(settings.early)
    }

    /// Whether the match the matcher follows is checked before it is reported (see
    /// [`VerifySettings::early`]).
    pub fn looking_early(mut self, on: bool) -> Verified {
        self.early = on;
        self
    }

    /// The pending candidate's outcome, if it is known.
    fn settle(&mut self) -> Option<Detection> {
        let p = self.pending.as_ref().filter(|p| !p.early)?;
        let verdict = match p.reply.try_recv() {
            Ok(Ok(check)) => Ok(fused(check, p.detection.score)),
            Ok(Err(e)) => Err(e),
            Err(mpsc::TryRecvError::Disconnected) => Err("the check was dropped".into()),
            Err(mpsc::TryRecvError::Empty) if p.asked.elapsed() >= WAIT => {
                Err(format!("no answer within {} ms", WAIT.as_millis()))
            }
            Err(mpsc::TryRecvError::Empty) => return None,
        };
        let p = self.pending.take()?;
        let d = p.detection.clone();
        match verdict {
            Ok(score) if score >= self.threshold => {
                tracing::debug!(word = %d.word, score = d.score, verified = score, "wake word verified");
                Some(Detection {
                    verified: Some(score as f32),
                    ..d
                })
            }
            Ok(score) => {
                tracing::debug!(word = %d.word, score = d.score, verified = score, threshold = self.threshold, "wake word candidate rejected");
                None
            }
            Err(e) => {
                let keep = d.score >= self.alone;
                tracing::debug!(word = %d.word, score = d.score, error = %e, keep, "wake word not verified: the template score decides");
                keep.then_some(d)
            }
        }
    }

    /// Asks whisper about `d`, on the audio from [`PRE_MS`] before it to now; the check
    /// replaced (if any) is given up first.
    fn ask(&mut self, d: Detection, early: bool) {
        let from = d.start.saturating_sub(PRE_MS * 16);
        let back = usize::try_from(self.pos.saturating_sub(from)).unwrap_or(usize::MAX);
        let skip = self.history.len().saturating_sub(back);
        let audio: Vec<f32> = self.history.iter().skip(skip).copied().collect();
        let (reply, answer) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        self.pending = None;
        self.verifier.verify(VerifyRequest {
            audio,
            phrases: self.phrases.clone(),
            reply,
            cancel: cancel.clone(),
            answered: self.waker.clone(),
        });
        self.pending = Some(Pending {
            detection: d,
            reply: answer,
            cancel,
            asked: Instant::now(),
            early,
        });
    }

    /// A first look at the match the matcher follows, once it has held for
    /// [`EARLY_FRAMES`]: the check then runs while the matcher waits to be sure, instead of
    /// after it (what follows the word decides whether this answer counts).
    fn look_early(&mut self) {
        if self.pending.as_ref().is_some_and(|p| !p.early) {
            return;
        }
        let Some(c) = self.inner.provisional() else {
            return;
        };
        let held = self.pos >= c.end + EARLY_FRAMES * super::features::HOP as u64;
        let looking = self.pending.as_ref().is_some_and(|p| p.reads(&c));
        // A later reading of the word already reported needs no check.
        let known = self.reported.as_ref().is_some_and(|r| c.start < r.end);
        if held && !looking && !known {
            self.ask(c, true);
        }
    }
}

impl WakeDetector for Verified {
    fn word(&self) -> &str {
        self.inner.word()
    }

    fn push(&mut self, samples: &[f32]) -> Option<Detection> {
        self.pos += samples.len() as u64;
        let over = (self.history.len() + samples.len()).saturating_sub(HISTORY);
        self.history.drain(..over.min(self.history.len()));
        let fresh = samples.len().min(HISTORY);
        self.history
            .extend(samples[samples.len() - fresh..].iter().copied());
        let candidate = self.inner.push(samples);
        let mut settled = self.settle();
        if let Some(d) = candidate {
            // The word reported, read to a later end: already checked.
            if let Some(r) = self
                .reported
                .as_ref()
                .filter(|r| d.start < r.end && settled.is_none())
            {
                let revised = Detection {
                    verified: r.verified,
                    ..d
                };
                self.reported = Some(revised.clone());
                return Some(revised);
            }
            let looked = self
                .pending
                .as_ref()
                .is_some_and(|p| p.early && p.reads(&d));
            if looked && self.inner.paused_after(&d) {
                // The first look heard this reading, and what followed it is a pause:
                // more of it would tell whisper nothing, so that answer decides.
                tracing::debug!(word = %d.word, end = d.end, "the first look decides");
                if let Some(p) = self.pending.as_mut() {
                    p.early = false;
                }
                settled = self.settle();
            } else {
                if looked {
                    tracing::debug!(word = %d.word, end = d.end, "no pause after the word: checked again");
                }
                // A candidate overlapping the one being checked is a better reading of the
                // same word (the matcher reports those only when clearly better): it is
                // checked instead, on audio that now holds the whole word. A first look
                // gives way to the check of what was reported.
                let idle = self.pending.as_ref().is_none_or(|p| p.early);
                let revises = self
                    .pending
                    .as_ref()
                    .is_some_and(|p| d.start < p.detection.end);
                if (idle || revises) && settled.is_none() {
                    self.ask(d, false);
                }
            }
        }
        if settled.is_some() {
            self.reported.clone_from(&settled);
        } else if self.early {
            self.look_early();
        }
        settled
    }

    fn reset(&mut self) {
        self.inner.reset();
        self.history.clear();
        self.pending = None;
        self.reported = None;
    }

    fn wake_on_answer(&mut self, waker: super::Waker) {
        self.waker = Some(waker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phrases_are_written_as_whisper_writes_them() {
        let written = |w: &str| -> Vec<String> {
            phrases(w)
                .iter()
                .map(|p| format!("{}{}{}", p.lead, p.joiner, p.name))
                .collect()
        };
        assert_eq!(written("hey coda"), vec![" Hey Coda", " Hey, Coda"]);
        assert_eq!(written("  COMPUTER "), vec![" Computer"]);
        assert_eq!(phrases("ok hey coda")[1].name, " Hey Coda");
        assert_eq!(phrases("computer")[0].lead, "");
        assert!(phrases("   ").is_empty());
    }

    #[test]
    fn the_name_decides_more_than_the_lead_word() {
        // "Hey, it's": the lead heard well, the name not at all.
        let hey_its = phrase_check(&[-1.0], &[-14.0, -9.5]);
        // The word in noise: the lead misheard, the name heard.
        let word = phrase_check(&[-6.5], &[-5.0, -4.0]);
        assert!(word > hey_its, "{word} vs {hey_its}");
        assert_eq!(phrase_check(&[], &[-2.0, -4.0]), -3.0);
    }

    fn detection(score: f32, start: u64, end: u64) -> Detection {
        Detection {
            word: "hey coda".into(),
            score,
            start,
            end,
            verified: None,
        }
    }

    /// Counts `n` more samples heard; whether that reached `at`.
    fn reaches(heard: &mut u64, n: usize, at: u64) -> bool {
        let before = *heard;
        *heard += n as u64;
        before < at && *heard >= at
    }

    /// Proposes a candidate at a fixed sample count.
    struct At {
        fire: u64,
        heard: u64,
        score: f32,
    }

    impl WakeDetector for At {
        fn word(&self) -> &str {
            "hey coda"
        }
        fn push(&mut self, samples: &[f32]) -> Option<Detection> {
            reaches(&mut self.heard, samples.len(), self.fire)
                .then(|| detection(self.score, self.fire - 8_000, self.fire))
        }
        fn reset(&mut self) {}
    }

    /// Answers every check with a fixed result (or never: keeps the request unanswered),
    /// recording what it heard.
    struct Fixed {
        answer: Option<Result<f64, String>>,
        heard: std::sync::Mutex<Vec<(usize, Vec<Phrase>)>>,
        hold: std::sync::Mutex<Vec<mpsc::Sender<Result<f64, String>>>>,
        cancels: std::sync::Mutex<Vec<Arc<AtomicBool>>>,
        wakers: std::sync::Mutex<Vec<Option<crate::wake::Waker>>>,
    }

    impl WakeVerify for Fixed {
        fn verify(&self, r: VerifyRequest) {
            self.heard
                .lock()
                .unwrap()
                .push((r.audio.len(), r.phrases.clone()));
            self.cancels.lock().unwrap().push(r.cancel);
            self.wakers.lock().unwrap().push(r.answered);
            match &self.answer {
                Some(a) => {
                    let _ = r.reply.send(a.clone());
                }
                None => self.hold.lock().unwrap().push(r.reply),
            }
        }
    }

    impl Fixed {
        /// The length of each clip checked.
        fn lens(&self) -> Vec<usize> {
            self.heard.lock().unwrap().iter().map(|h| h.0).collect()
        }
        /// Which checks were given up.
        fn cancelled(&self) -> Vec<bool> {
            let cancels = self.cancels.lock().unwrap();
            cancels.iter().map(|c| c.load(Ordering::Relaxed)).collect()
        }
    }

    fn fixed(answer: Option<Result<f64, String>>) -> Arc<Fixed> {
        Arc::new(Fixed {
            answer,
            heard: Default::default(),
            hold: Default::default(),
            cancels: Default::default(),
            wakers: Default::default(),
        })
    }

    fn run(answer: Option<Result<f64, String>>, score: f32) -> (Vec<Detection>, Arc<Fixed>) {
        let v = fixed(answer);
        let inner = Box::new(At {
            fire: 32_000,
            heard: 0,
            score,
        });
        let mut d = Verified::new(inner, v.clone(), DEFAULT_THRESHOLD, 0.05);
        let mut out = Vec::new();
        for _ in 0..120 {
            out.extend(d.push(&[0.0; 320]));
        }
        (out, v)
    }

    #[test]
    fn a_verified_candidate_is_reported_at_its_own_position() {
        let (out, v) = run(Some(Ok(-5.0)), 0.04);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].start, out[0].end), (24_000, 32_000));
        // The check heard the word and the 300 ms before it.
        let heard = v.heard.lock().unwrap();
        assert_eq!(heard.len(), 1);
        assert_eq!(heard[0].0, 8_000 + 300 * 16);
        assert_eq!(heard[0].1, phrases("hey coda"));
    }

    #[test]
    fn an_unlikely_candidate_is_not_a_detection() {
        let line = f64::from(DEFAULT_THRESHOLD);
        let (out, _) = run(Some(Ok(line - 1.0)), 0.05);
        assert!(out.is_empty());
        // A strong match lifts a middling check over the line, a weak one sinks it.
        assert_eq!(run(Some(Ok(line - 0.8)), 0.1).0.len(), 1);
        assert!(run(Some(Ok(line + 0.4)), 0.02).0.is_empty());
    }

    #[test]
    fn without_an_answer_the_template_score_decides() {
        assert_eq!(run(Some(Err("no model".into())), 0.06).0.len(), 1);
        assert!(run(Some(Err("no model".into())), 0.04).0.is_empty());
    }

    #[test]
    fn a_check_that_does_not_answer_is_given_up_after_the_wait() {
        let v = fixed(None);
        let asked = |v: &Arc<Fixed>| {
            let inner = Box::new(At {
                fire: 16_000,
                heard: 0,
                score: 0.06,
            });
            let mut d = Verified::new(inner, v.clone(), -7.0, 0.05);
            for _ in 0..51 {
                assert!(d.push(&[0.0; 320]).is_none(), "still waiting");
            }
            d
        };
        let mut d = asked(&v);
        std::thread::sleep(WAIT);
        let found = d.push(&[0.0; 320]).expect("decided by the template score");
        assert_eq!(found.verified, None);
        // Given up, the check is told to stop; so is one pending when the stream resets.
        let cancelled = |v: &Arc<Fixed>| {
            v.cancels
                .lock()
                .unwrap()
                .last()
                .is_some_and(|c| c.load(Ordering::Relaxed))
        };
        assert!(cancelled(&v));
        let mut d = asked(&v);
        assert!(!cancelled(&v));
        d.reset();
        assert!(cancelled(&v));
        // A dropped check (the Stt actor gone) is given up at once.
        let mut d = asked(&v);
        v.hold.lock().unwrap().clear();
        assert!(d.push(&[0.0; 320]).is_some());
    }

    #[test]
    fn the_answer_wakes_the_owner_and_an_empty_push_reports_it() {
        let v = fixed(None);
        let inner = Box::new(At {
            fire: 16_000,
            heard: 0,
            score: 0.06,
        });
        let woken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut d = Verified::new(inner, v.clone(), -7.0, 0.05);
        let w = woken.clone();
        d.wake_on_answer(Arc::new(move || {
            w.fetch_add(1, Ordering::Relaxed);
        }));
        for _ in 0..51 {
            assert!(d.push(&[0.0; 320]).is_none());
        }
        assert!(d.push(&[]).is_none(), "no answer yet");
        let reply = v.hold.lock().unwrap().pop().expect("asked");
        let waker = v.wakers.lock().unwrap().pop().flatten();
        assert!(waker.is_some(), "the request carries the waker");
        answer(&reply, waker.as_ref(), Ok(-2.0));
        assert_eq!(woken.load(Ordering::Relaxed), 1);
        let found = d.push(&[]).expect("reported without more audio");
        assert!(found.verified.is_some_and(|v| v >= -7.0), "{found:?}");
    }

    /// Proposes each (start, end, score) when the stream reaches its end.
    struct Script(Vec<(u64, u64, f32)>, u64);

    impl WakeDetector for Script {
        fn word(&self) -> &str {
            "hey coda"
        }
        fn push(&mut self, samples: &[f32]) -> Option<Detection> {
            let before = self.1;
            self.1 += samples.len() as u64;
            let heard = self.1;
            let &(start, end, score) = self
                .0
                .iter()
                .find(|(_, end, _)| before < *end && heard >= *end)?;
            Some(detection(score, start, end))
        }
        fn reset(&mut self) {}
    }

    #[test]
    fn a_better_reading_of_the_word_being_checked_is_checked_instead() {
        let v = fixed(None);
        // "hey co…" proposed first, the whole word 300 ms later.
        let inner = Box::new(Script(
            vec![(16_000, 24_000, 0.037), (16_000, 28_800, 0.09)],
            0,
        ));
        let mut d = Verified::new(inner, v.clone(), -7.0, 0.05);
        for _ in 0..100 {
            assert!(d.push(&[0.0; 320]).is_none());
        }
        // Two checks, each from 300 ms before the word to where it was proposed.
        assert_eq!(v.lens(), vec![24_000 - 11_200, 28_800 - 11_200]);
        let replies: Vec<_> = v.hold.lock().unwrap().drain(..).collect();
        // The first check's answer goes nowhere: nobody waits for it any more, and it was
        // told so; the second was not.
        assert!(replies[0].send(Ok(-5.0)).is_err());
        assert_eq!(v.cancelled(), vec![true, false]);
        replies[1].send(Ok(-5.0)).unwrap();
        let found = d.push(&[0.0; 320]).expect("the whole word, verified");
        assert_eq!(
            (found.start, found.end, found.score),
            (16_000, 28_800, 0.09)
        );
    }

    /// Follows a match ending at `end` from there on, offering it (`provisional`) from
    /// `offer_at` until it reports it at `report_at`; the reading may move to `moved` (a
    /// later end) at `move_at`. Whether a pause followed is `pause`.
    struct Staged {
        start: u64,
        end: u64,
        offer_at: u64,
        report_at: u64,
        moved: Option<(u64, u64)>,
        pause: bool,
        heard: u64,
    }

    impl Staged {
        fn reading(&self) -> Detection {
            let end = match self.moved {
                Some((at, end)) if self.heard >= at => end,
                _ => self.end,
            };
            detection(0.06, self.start, end)
        }
    }

    impl WakeDetector for Staged {
        fn word(&self) -> &str {
            "hey coda"
        }
        fn push(&mut self, samples: &[f32]) -> Option<Detection> {
            reaches(&mut self.heard, samples.len(), self.report_at).then(|| self.reading())
        }
        fn reset(&mut self) {}
        fn provisional(&self) -> Option<Detection> {
            (self.heard >= self.offer_at && self.heard < self.report_at).then(|| self.reading())
        }
        fn paused_after(&self, _d: &Detection) -> bool {
            self.pause
        }
    }

    /// Streams 20 ms pushes through `d`; the positions (samples) where it reported.
    fn reports(d: &mut Verified, pushes: usize) -> Vec<(u64, Detection)> {
        (1..=pushes as u64)
            .filter_map(|n| d.push(&[0.0; 320]).map(|f| (n * 320, f)))
            .collect()
    }

    fn staged(pause: bool, moved: Option<(u64, u64)>) -> Box<Staged> {
        // The match ends at 16 000 and is offered from 16 320 (held 2 frames); the matcher
        // reports it 60 ms after its end.
        Box::new(Staged {
            start: 8_000,
            end: 16_000,
            offer_at: 16_320,
            report_at: 16_960,
            moved,
            pause,
            heard: 0,
        })
    }

    #[test]
    fn a_first_look_decides_when_a_pause_followed_the_word() {
        let v = fixed(Some(Ok(-5.0)));
        let mut d = Verified::new(staged(true, None), v.clone(), DEFAULT_THRESHOLD, 0.05)
            .looking_early(true);
        let found = reports(&mut d, 100);
        // Reported at the matcher's report (the answer was in), not a push after it.
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, 16_960);
        assert_eq!((found[0].1.start, found[0].1.end), (8_000, 16_000));
        assert_eq!(found[0].1.verified, Some(-5.0 + fused(0.0, 0.06) as f32));
        // One check, on the audio up to where the match was first offered.
        let heard = v.heard.lock().unwrap();
        assert_eq!(heard.len(), 1);
        assert_eq!(heard[0].0, 16_320 - (8_000 - PRE_MS * 16) as usize);
        // Off, the same match is checked once it is reported, and comes a push later.
        let v = fixed(Some(Ok(-5.0)));
        let mut d = Verified::new(staged(true, None), v.clone(), DEFAULT_THRESHOLD, 0.05);
        assert_eq!(reports(&mut d, 100)[0].0, 17_280);
        assert_eq!(v.heard.lock().unwrap()[0].0, 16_960 - 3_200);
    }

    /// The first look (from where the match was offered) was given up for a second check
    /// (to where it was reported): nobody waits for its answer. The second check's reply.
    fn given_up_for_a_second_check(v: &Fixed) -> mpsc::Sender<Result<f64, String>> {
        assert_eq!(v.lens(), vec![16_320 - 3_200, 16_960 - 3_200]);
        assert_eq!(v.cancelled(), vec![true, false]);
        let mut replies: Vec<_> = v.hold.lock().unwrap().drain(..).collect();
        assert!(replies[0].send(Ok(-5.0)).is_err());
        replies.pop().expect("two checks")
    }

    #[test]
    fn when_speech_went_on_after_the_word_it_is_checked_again_with_it() {
        // The first look would have passed; what followed decides instead.
        let v = fixed(None);
        let mut d = Verified::new(staged(false, None), v.clone(), DEFAULT_THRESHOLD, 0.05)
            .looking_early(true);
        assert!(reports(&mut d, 60).is_empty());
        given_up_for_a_second_check(&v)
            .send(Ok(f64::from(DEFAULT_THRESHOLD) - 1.0))
            .unwrap();
        assert!(reports(&mut d, 5).is_empty(), "the second check refused it");
    }

    #[test]
    fn a_reading_that_moves_is_looked_at_again() {
        // The match's end moves 40 ms later before it is reported: the first look is given
        // up and the new reading looked at once it has held.
        let v = fixed(None);
        let mut d = Verified::new(
            staged(true, Some((16_640, 16_640))),
            v.clone(),
            DEFAULT_THRESHOLD,
            0.05,
        )
        .looking_early(true);
        assert!(reports(&mut d, 60).is_empty());
        given_up_for_a_second_check(&v).send(Ok(-5.0)).unwrap();
        let found = reports(&mut d, 1);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].1.end, 16_640);
    }
}
