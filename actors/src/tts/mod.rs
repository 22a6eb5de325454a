//! Tts: turns sentences into audio as they arrive, so speech starts on the first complete
//! sentence. Engines sit behind [`TtsEngine`] (espeak-ng here; ElevenLabs and
//! OpenAI-compatible speech, and playback, come with the voice work).
//!
//! Per turn, sentences are synthesised in order, one at a time; turns of different
//! sessions run side by side. Publishes `tts_start` (first sentence), `tts_progress` (each
//! sentence), `tts_result` (turn done) and `tts_error`, and tells the Orchestrator through
//! [`TtsUpdate`].

pub mod espeak;
mod sentences;

pub use sentences::SentenceSplitter;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use coda_protocol::{Level, TtsError, TtsProgress, TtsResult, TtsStart};

use crate::supervise::Supervision;

/// Synthesised audio: 16-bit mono PCM.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    /// Samples.
    pub samples: Vec<i16>,
    /// Samples per second.
    pub sample_rate: u32,
}

impl Audio {
    /// Length in milliseconds.
    pub fn duration_ms(&self) -> f64 {
        self.samples.len() as f64 * 1000.0 / f64::from(self.sample_rate.max(1))
    }
}

/// An engine failure.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TtsEngineError {
    /// Not installed / not configured.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Synthesis failed.
    #[error("synthesis failed: {0}")]
    Failed(String),
}

impl TtsEngineError {
    fn code(&self) -> &'static str {
        match self {
            TtsEngineError::Unavailable(_) => "unavailable",
            TtsEngineError::Failed(_) => "synthesis_failed",
        }
    }
}

/// A speech engine. `synthesize` is cancelled by dropping its future.
#[async_trait::async_trait]
pub trait TtsEngine: Send + Sync + std::fmt::Debug {
    /// Engine name for events.
    fn name(&self) -> &str;
    /// Voice name for events.
    fn voice(&self) -> &str;
    /// Can it speak at all? (Run once at start.)
    async fn check(&self) -> Result<(), TtsEngineError>;
    /// One sentence to audio.
    async fn synthesize(&self, text: &str) -> Result<Audio, TtsEngineError>;
}

/// What the Tts actor tells the Orchestrator.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub enum TtsUpdate {
    /// A sentence is ready (its audio exists; with playback it is being played).
    Spoken {
        /// The turn.
        turn_id: String,
        /// Sentence index.
        index: u32,
        /// The sentence.
        text: String,
        /// Its audio length.
        audio_ms: f64,
        /// Time the engine took to synthesise it.
        synth_ms: f64,
    },
    /// Every sentence of the turn is done.
    Done {
        /// The turn.
        turn_id: String,
        /// Total audio.
        audio_ms: f64,
        /// From the first sentence queued to the last one done.
        duration_ms: f64,
    },
    /// Speech failed for the turn (the text answer stands).
    Failed {
        /// The turn.
        turn_id: String,
        /// Why.
        error: TtsEngineError,
    },
}

/// Queue a sentence of a turn.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct Speak {
    /// The turn.
    pub turn_id: String,
    /// The conversation session (envelope `session_id`).
    pub session_id: String,
    /// Order within the turn, from 0.
    pub index: u32,
    /// The sentence.
    pub text: String,
    /// Where updates go.
    pub reply_to: Recipient<TtsUpdate>,
}

/// No more sentences for this turn: finish when the queue drains.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FinishTurn {
    /// The turn.
    pub turn_id: String,
}

/// Barge-in: stop speaking this turn now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CancelTurn {
    /// The turn.
    pub turn_id: String,
}

struct TurnSpeech {
    session_id: String,
    reply_to: Recipient<TtsUpdate>,
    pending: VecDeque<(u32, String)>,
    busy: Option<SpawnHandle>,
    finishing: bool,
    started: Instant,
    audio_ms: f64,
    announced: bool,
}

/// The Tts actor.
pub struct TtsActor {
    sup: Supervision,
    engine: Arc<dyn TtsEngine>,
    turns: HashMap<String, TurnSpeech>,
}

impl TtsActor {
    /// A Tts actor speaking with `engine`.
    pub fn new(sup: Supervision, engine: Arc<dyn TtsEngine>) -> Self {
        TtsActor {
            sup,
            engine,
            turns: HashMap::new(),
        }
    }

    /// Starts the next sentence of `turn_id` if none is being synthesised.
    fn pump(&mut self, turn_id: &str, ctx: &mut Context<Self>) {
        let engine = self.engine.clone();
        let hub = self.sup.hub().clone();
        let Some(turn) = self.turns.get_mut(turn_id) else {
            return;
        };
        if turn.busy.is_some() {
            return;
        }
        let Some((index, text)) = turn.pending.pop_front() else {
            if turn.finishing {
                self.finish(turn_id);
            }
            return;
        };
        if !turn.announced {
            turn.announced = true;
            hub.publish(
                &turn.session_id,
                &TtsStart {
                    turn_id: Some(turn_id.to_string()),
                    text: text.clone(),
                    voice: engine.voice().to_string(),
                    engine: engine.name().to_string(),
                },
            );
        }
        let id = turn_id.to_string();
        let fut = async move {
            let t = std::time::Instant::now();
            let r = engine.synthesize(&text).await;
            (text, r, t.elapsed().as_secs_f64() * 1000.0)
        };
        let handle = ctx.spawn(fut.into_actor(self).map(
            move |(text, result, synth_ms), act, ctx| {
                act.sentence_done(&id, index, text, result, synth_ms, ctx);
            },
        ));
        if let Some(turn) = self.turns.get_mut(turn_id) {
            turn.busy = Some(handle);
        }
    }

    fn sentence_done(
        &mut self,
        turn_id: &str,
        index: u32,
        text: String,
        result: Result<Audio, TtsEngineError>,
        synth_ms: f64,
        ctx: &mut Context<Self>,
    ) {
        let hub = self.sup.hub().clone();
        let Some(turn) = self.turns.get_mut(turn_id) else {
            return;
        };
        turn.busy = None;
        match result {
            Ok(audio) => {
                let audio_ms = audio.duration_ms();
                turn.audio_ms += audio_ms;
                hub.publish(
                    &turn.session_id,
                    &TtsProgress {
                        turn_id: Some(turn_id.to_string()),
                        sentence_index: index,
                        text: text.clone(),
                    },
                );
                turn.reply_to.do_send(TtsUpdate::Spoken {
                    turn_id: turn_id.to_string(),
                    index,
                    text,
                    audio_ms,
                    synth_ms,
                });
                self.pump(turn_id, ctx);
            }
            Err(error) => {
                hub.publish(
                    &turn.session_id,
                    &TtsError {
                        turn_id: Some(turn_id.to_string()),
                        code: error.code().to_string(),
                        message: error.to_string(),
                        level: Level::Error,
                    },
                );
                turn.reply_to.do_send(TtsUpdate::Failed {
                    turn_id: turn_id.to_string(),
                    error,
                });
                self.turns.remove(turn_id);
            }
        }
    }

    fn finish(&mut self, turn_id: &str) {
        if let Some(turn) = self.turns.remove(turn_id) {
            let duration_ms = turn.started.elapsed().as_secs_f64() * 1000.0;
            if turn.announced {
                self.sup.hub().publish(
                    &turn.session_id,
                    &TtsResult {
                        turn_id: Some(turn_id.to_string()),
                        duration_ms,
                        audio_ms: turn.audio_ms,
                        // Playback arrives with the voice work; until then nothing plays.
                        played: false,
                    },
                );
            }
            turn.reply_to.do_send(TtsUpdate::Done {
                turn_id: turn_id.to_string(),
                audio_ms: turn.audio_ms,
                duration_ms,
            });
        }
    }
}

impl Actor for TtsActor {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        self.sup.started();
    }
}

impl actix::Supervised for TtsActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // In-flight syntheses died with the old context: tell their turns.
        for (turn_id, turn) in self.turns.drain() {
            turn.reply_to.do_send(TtsUpdate::Failed {
                turn_id,
                error: TtsEngineError::Failed("the tts component restarted".into()),
            });
        }
        self.sup.restarting();
    }
}

impl Handler<Speak> for TtsActor {
    type Result = Result<(), String>;

    fn handle(&mut self, msg: Speak, ctx: &mut Context<Self>) -> Self::Result {
        if self.sup.is_degraded() {
            return Err(self.sup.unavailable());
        }
        let turn = self
            .turns
            .entry(msg.turn_id.clone())
            .or_insert_with(|| TurnSpeech {
                session_id: msg.session_id.clone(),
                reply_to: msg.reply_to.clone(),
                pending: VecDeque::new(),
                busy: None,
                finishing: false,
                started: Instant::now(),
                audio_ms: 0.0,
                announced: false,
            });
        turn.pending.push_back((msg.index, msg.text));
        self.pump(&msg.turn_id, ctx);
        Ok(())
    }
}

impl Handler<FinishTurn> for TtsActor {
    type Result = ();

    fn handle(&mut self, msg: FinishTurn, ctx: &mut Context<Self>) {
        if let Some(turn) = self.turns.get_mut(&msg.turn_id) {
            turn.finishing = true;
            self.pump(&msg.turn_id, ctx);
        }
    }
}

impl Handler<CancelTurn> for TtsActor {
    type Result = ();

    fn handle(&mut self, msg: CancelTurn, ctx: &mut Context<Self>) {
        if let Some(mut turn) = self.turns.remove(&msg.turn_id) {
            // Dropping the synthesis future kills the espeak-ng process.
            if let Some(h) = turn.busy.take() {
                ctx.cancel_future(h);
            }
            if turn.announced {
                self.sup.hub().publish(
                    &turn.session_id,
                    &TtsResult {
                        turn_id: Some(msg.turn_id.clone()),
                        duration_ms: turn.started.elapsed().as_secs_f64() * 1000.0,
                        audio_ms: turn.audio_ms,
                        played: false,
                    },
                );
            }
        }
    }
}

crate::impl_fault_injection!(TtsActor);
