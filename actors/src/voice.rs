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
