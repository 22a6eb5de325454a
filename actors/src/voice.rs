//! The hand-off between where speech comes from (the input device through AudioCapture,
//! or a client's binary WebSocket frames) and what turns it into a turn (Stt, then the
//! Orchestrator). Producers send [`SpeechAudio`] to a `Recipient<SpeechAudio>` given to
//! them at wiring time; they never know who transcribes.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Instant;

use actix::Message;
use coda_protocol::{AudioSource, SttMode};

/// Sample rate of every [`SpeechAudio`]: whisper's.
pub const SPEECH_SAMPLE_RATE: u32 = 16_000;

/// What a speech producer reports about one utterance of one session.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub enum SpeechAudio {
    /// Listening started (push-to-talk pressed, or voice activity began in continuous mode).
    Started {
        /// The conversation session the speech belongs to.
        session_id: String,
        /// Push-to-talk or continuous.
        mode: SttMode,
        /// Device or client frames.
        source: AudioSource,
    },
    /// The audio so far while speaking (for `stt_interim`); not a delta: the whole
    /// utterance up to now. Producers send these at most every few hundred ms, and once
    /// more, `settle`d, when the speaker pauses.
    Partial {
        session_id: String,
        /// 16 kHz mono samples in [-1, 1].
        samples: Arc<[f32]>,
        /// The speaker paused here: transcribe it now, it may be the whole utterance.
        settle: Option<Settle>,
    },
    /// The utterance is complete (push-to-talk released, or silence after speech).
    Ended {
        session_id: String,
        /// 16 kHz mono samples in [-1, 1], the whole utterance.
        samples: Arc<[f32]>,
        /// When the speaker stopped (for the end-of-speech → first-audio figure).
        speech_ended: Instant,
        /// The last settled point, when nothing was said after it: the transcript of that
        /// settled audio is this utterance's (no need to transcribe again).
        settle: Option<Settle>,
    },
    /// The wake word was heard; a `Started` follows.
    Wake {
        session_id: String,
        word: String,
        score: f32,
        /// The speech-to-text check's score, when it verified the word.
        verified: Option<f32>,
        source: AudioSource,
    },
    /// Listening stopped with nothing to transcribe (cancelled, or no speech at all).
    Cancelled {
        session_id: String,
        /// Why, for the log and `stt_error` when it is an error.
        reason: String,
    },
}

impl SpeechAudio {
    /// The session this report belongs to.
    pub fn session_id(&self) -> &str {
        match self {
            SpeechAudio::Started { session_id, .. }
            | SpeechAudio::Partial { session_id, .. }
            | SpeechAudio::Ended { session_id, .. }
            | SpeechAudio::Wake { session_id, .. }
            | SpeechAudio::Cancelled { session_id, .. } => session_id,
        }
    }
}

/// A point where the speaker paused, shared by the producer and the transcriber.
#[derive(Debug, Clone)]
pub struct Settle {
    /// Samples of the utterance up to the pause.
    pub len: usize,
    /// The transcriber stores `len` here when the transcript up to the pause reads as a
    /// complete request; the producer may then end the utterance after a shorter silence.
    pub complete: Arc<AtomicUsize>,
}

/// `stt_start` / `stt_stop` with `source: "device"`, for the input-device producer
/// (AudioCapture): listen for a session, or stop (push-to-talk released: the utterance
/// ends). The answer is an error text for the client's `command_error` when it cannot.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), String>")]
pub enum DeviceListen {
    /// Start listening on the input device.
    Start {
        /// The session the speech belongs to.
        session_id: String,
        /// Push-to-talk or continuous.
        mode: SttMode,
    },
    /// Stop listening.
    Stop { session_id: String },
}

/// Converts signed 16-bit PCM to the [-1, 1] floats [`SpeechAudio`] carries.
pub fn pcm16_to_f32(samples: &[i16]) -> Vec<f32> {
    samples.iter().map(|&s| f32::from(s) / 32768.0).collect()
}

/// The follow-up window of one wake-mode listening: until when speech counts as a turn
/// without the wake word. Written by the Orchestrator when an answer ends, read by the
/// listening's [`Segmenter`](crate::audio::Segmenter) on every frame.
#[derive(Debug, Default)]
pub struct FollowUp {
    /// Nanoseconds after [`epoch`]; 0 = closed.
    until: std::sync::atomic::AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl FollowUp {
    /// Opens the window until `until`.
    pub fn open(&self, until: Instant) {
        let ns = until.saturating_duration_since(epoch()).as_nanos().max(1) as u64;
        self.until.store(ns, std::sync::atomic::Ordering::Relaxed);
    }

    /// Closes it (an utterance used it).
    pub fn close(&self) {
        self.until.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// Until when it is open (`None`: closed).
    pub fn until(&self) -> Option<Instant> {
        match self.until.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            ns => Some(epoch() + std::time::Duration::from_nanos(ns)),
        }
    }

    /// Is it open at `now`?
    pub fn is_open(&self, now: Instant) -> bool {
        match self.until.load(std::sync::atomic::Ordering::Relaxed) {
            0 => false,
            ns => now < epoch() + std::time::Duration::from_nanos(ns),
        }
    }
}

/// The follow-up windows of the sessions listening in wake mode. A listening holds its
/// window (`Arc`); the registry only points at it, so a listening that ended leaves
/// nothing behind.
#[derive(Debug, Clone, Default)]
pub struct FollowUps {
    live: Arc<std::sync::Mutex<std::collections::HashMap<String, std::sync::Weak<FollowUp>>>>,
}

impl FollowUps {
    /// The window of a new wake-mode listening of `session_id`.
    pub fn register(&self, session_id: &str) -> Arc<FollowUp> {
        let cell = Arc::new(FollowUp::default());
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|_, w| w.strong_count() > 0);
        live.insert(session_id.to_string(), Arc::downgrade(&cell));
        cell
    }

    /// Opens `session_id`'s window until `until`; false when it is not listening in wake
    /// mode.
    pub fn open(&self, session_id: &str, until: Instant) -> bool {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        match live.get(session_id).and_then(std::sync::Weak::upgrade) {
            Some(cell) => {
                cell.open(until);
                true
            }
            None => false,
        }
    }
}

/// What a producer needs to listen in wake mode: a detector for its stream and the
/// session's follow-up window.
pub struct WakeListening {
    pub detector: Box<dyn crate::wake::WakeDetector>,
    pub follow_up: Arc<FollowUp>,
}

/// The shared parts of hands-free listening, handed to producers and the Orchestrator at
/// wiring time.
#[derive(Clone, Default)]
pub struct Hands {
    pub wake: crate::wake::WakeModels,
    pub follow_ups: FollowUps,
    /// What the speaker plays, for echo cancellation on the input device.
    pub echo: crate::audio::echo::EchoReference,
}

impl Hands {
    /// A wake-mode listening for `session_id`, or why there can be none.
    pub fn listen(&self, session_id: &str) -> Result<WakeListening, crate::wake::WakeError> {
        Ok(WakeListening {
            detector: self.wake.detector()?,
            follow_up: self.follow_ups.register(session_id),
        })
    }
}
