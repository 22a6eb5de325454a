//! Tts: turns sentences into audio as they arrive, so speech starts on the first complete
//! sentence. Engines sit behind [`TtsEngine`]: espeak-ng (local), ElevenLabs and
//! OpenAI-compatible speech ([`remote`]), optionally with a fallback.
//!
//! Per turn, sentences are synthesised in order, one at a time; turns of different
//! sessions run side by side. Engines hand a sentence over in pieces as they make it (the
//! remote ones stream their HTTP answer; espeak-ng gives one piece): with playback on
//! ([`TtsOutput::play`]) each piece is queued on the output device as it arrives (the next
//! sentence is synthesised while this one plays), and the turn ends when the last one has
//! played. A turn's playback can be held ([`HoldTurn`]: someone talks over it) and go on
//! from where it paused; synthesis does not wait. Publishes `tts_start` (first sentence),
//! `tts_progress` (each sentence), `tts_audio` (audio chunks, only while a client
//! subscribed to them), `tts_paused` / `tts_resumed`, `tts_result` (turn done; `played`
//! true only when every sentence went to a device) and `tts_error`, and tells the
//! Orchestrator through [`TtsUpdate`].

pub mod espeak;
pub mod registry;
pub mod remote;
mod sentences;

pub use sentences::SentenceSplitter;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use base64::Engine as _;
use coda_protocol::{
    EventType, Level, TtsAudio, TtsError, TtsPaused, TtsProgress, TtsResult, TtsResumed, TtsStart,
};

use crate::supervise::Supervision;

/// Synthesised audio: 16-bit mono PCM.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
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
    /// The service refused the credentials (HTTP 401/403).
    #[error("not authorised: {0}")]
    Auth(String),
    /// The service asked us to slow down (HTTP 429).
    #[error("rate limited: {0}")]
    RateLimited(String),
    /// No (complete) answer in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The audio that came back is unusable (truncated, odd length, not the format asked).
    #[error("bad audio: {0}")]
    BadAudio(String),
}

impl TtsEngineError {
    /// Stable code for `tts_error`.
    pub fn code(&self) -> &'static str {
        match self {
            TtsEngineError::Unavailable(_) => "unavailable",
            TtsEngineError::Failed(_) => "synthesis_failed",
            TtsEngineError::Auth(_) => "auth_failed",
            TtsEngineError::RateLimited(_) => "rate_limited",
            TtsEngineError::Timeout(_) => "timeout",
            TtsEngineError::BadAudio(_) => "bad_audio",
        }
    }

    /// The message without the kind prefix.
    pub fn detail(&self) -> &str {
        match self {
            TtsEngineError::Unavailable(m)
            | TtsEngineError::Failed(m)
            | TtsEngineError::Auth(m)
            | TtsEngineError::RateLimited(m)
            | TtsEngineError::Timeout(m)
            | TtsEngineError::BadAudio(m) => m,
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
    /// One sentence to audio, with the failure of a primary engine that a fallback
    /// covered (so it can be announced). Engines without a fallback need not override it.
    async fn synthesize_reported(
        &self,
        text: &str,
    ) -> Result<(Audio, Option<TtsEngineError>), TtsEngineError> {
        self.synthesize(text).await.map(|a| (a, None))
    }
    /// One sentence as pieces of audio in order, with the failure of a primary engine
    /// that a fallback covered. Engines that stream their answer (the remote ones) yield
    /// pieces as they arrive, so playback starts on the first; others yield one piece.
    async fn synthesize_stream(
        &self,
        text: &str,
    ) -> Result<(AudioStream, Option<TtsEngineError>), TtsEngineError> {
        let (audio, covered) = self.synthesize_reported(text).await?;
        Ok((one_piece(audio), covered))
    }
    /// The fallback engine's name, if there is one.
    fn fallback_name(&self) -> Option<&str> {
        None
    }
}

/// Pieces of one sentence's audio, in order (an error ends it).
pub type AudioStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Audio, TtsEngineError>> + Send>>;

/// A stream of one piece.
pub fn one_piece(audio: Audio) -> AudioStream {
    Box::pin(futures_util::stream::once(async move { Ok(audio) }))
}

/// A piece of a sentence's audio arrived (sent by the synthesis task, so pieces and the
/// sentence's end reach the actor in order).
#[derive(Message)]
#[rtype(result = "()")]
struct Piece {
    turn_id: String,
    index: u32,
    text: String,
    audio: Audio,
    /// The primary engine's failure a fallback covered (first piece only).
    covered: Option<TtsEngineError>,
    /// From the start of the synthesis to this piece.
    synth_ms: f64,
    first: bool,
}

/// The sentence's synthesis ended (all its pieces were sent before this).
#[derive(Message)]
#[rtype(result = "()")]
struct SentenceEnd {
    turn_id: String,
    index: u32,
    result: Result<(), TtsEngineError>,
}

/// Where synthesised speech goes besides the events.
#[derive(Debug, Clone)]
pub struct TtsOutput {
    /// Play on an output device (`tts.play`).
    pub play: bool,
    /// Output device name (empty: the default).
    pub device: String,
    /// Publish `tts_audio` chunks while some client subscribes to them.
    pub stream_audio: bool,
}

impl Default for TtsOutput {
    fn default() -> Self {
        TtsOutput {
            play: false,
            device: String::new(),
            stream_audio: true,
        }
    }
}

/// Samples per `tts_audio` chunk: a quarter second at 22 kHz (about 15 KB of base64).
const AUDIO_CHUNK_SAMPLES: usize = 5_512;

/// What the Tts actor tells the Orchestrator.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub enum TtsUpdate {
    /// A sentence's first audio is out (with playback it is playing).
    Spoken {
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
        turn_id: String,
        /// Total audio.
        audio_ms: f64,
        /// From the first sentence queued to the last one done.
        duration_ms: f64,
    },
    /// Speech failed for the turn (the text answer stands).
    Failed {
        turn_id: String,
        /// Why.
        error: TtsEngineError,
    },
}

/// How much of one sentence was synthesised and how much of that the output device took,
/// written by the Tts actor and the speaker, read by whoever asked for the sentence (the
/// Orchestrator, when the turn is interrupted: what was heard is what was played, not what
/// was synthesised).
#[derive(Debug, Default)]
pub struct SentenceProgress {
    synthesized: AtomicUsize,
    played: Arc<AtomicUsize>,
    complete: AtomicBool,
    on_device: AtomicBool,
}

impl SentenceProgress {
    /// How much of the sentence was played, 0–1; `None` when it did not go to an output
    /// device (then nobody can say what was heard).
    pub fn heard(&self) -> Option<f64> {
        if !self.on_device.load(Ordering::Relaxed) {
            return None;
        }
        let total = self.synthesized.load(Ordering::Relaxed);
        let played = self.played.load(Ordering::Relaxed);
        if total == 0 {
            return Some(0.0);
        }
        let fraction = (played as f64 / total as f64).min(1.0);
        // All that was synthesised played, but more was still to come.
        if !self.complete.load(Ordering::Relaxed) && fraction >= 1.0 {
            return Some(0.99);
        }
        Some(fraction)
    }

    /// Records `synthesized` more samples, all `played` (tests, and engines without a
    /// device that know what was heard).
    pub fn record(&self, synthesized: usize, played: usize, complete: bool) {
        self.on_device.store(true, Ordering::Relaxed);
        self.synthesized.fetch_add(synthesized, Ordering::Relaxed);
        self.played.fetch_add(played, Ordering::Relaxed);
        self.complete.store(complete, Ordering::Relaxed);
    }
}

/// Queue a sentence of a turn.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct Speak {
    pub turn_id: String,
    /// The conversation session (envelope `session_id`).
    pub session_id: String,
    /// Order within the turn, from 0.
    pub index: u32,
    /// The sentence.
    pub text: String,
    /// Where updates go.
    pub reply_to: Recipient<TtsUpdate>,
    /// How much of it was synthesised and played.
    pub progress: Arc<SentenceProgress>,
}

/// No more sentences for this turn: finish when the queue drains.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FinishTurn {
    pub turn_id: String,
}

/// Barge-in: stop speaking this turn now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CancelTurn {
    pub turn_id: String,
}

/// Barge-in by voice: hold this turn's playback where it is while someone talks over it,
/// or go on with it. Synthesis goes on either way.
#[derive(Message)]
#[rtype(result = "()")]
pub struct HoldTurn {
    pub turn_id: String,
    pub hold: Hold,
}

/// What to do with a turn's playback.
#[derive(Debug, Clone, PartialEq)]
pub enum Hold {
    /// Someone talks over it: pause where it is.
    Pause,
    /// Go on from there: why (`tts_resumed.reason`), and the transcript when it was the
    /// answer's own voice.
    Resume {
        reason: &'static str,
        heard: Option<String>,
    },
}

struct TurnSpeech {
    session_id: String,
    /// Since when its playback is held.
    held: Option<Instant>,
    reply_to: Recipient<TtsUpdate>,
    pending: VecDeque<(u32, String)>,
    busy: Option<SpawnHandle>,
    finishing: bool,
    started: Instant,
    audio_ms: f64,
    announced: bool,
    /// Sentences queued on the speaker and not yet done.
    playing: usize,
    /// Each sentence's progress, by index.
    progress: HashMap<u32, Arc<SentenceProgress>>,
    /// Every sentence so far went to a device to the end.
    all_played: bool,
    /// `tts_audio` chunks published.
    chunks: u32,
}

/// The output device, once the Tts actor has tried to open it.
#[derive(Clone)]
enum SpeakerState {
    /// Playback off, or not tried yet.
    Off,
    /// Open.
    #[cfg(feature = "audio")]
    Open(crate::audio::Speaker),
    /// No device (the reason was logged once).
    Missing,
}

pub struct TtsActor {
    sup: Supervision,
    engine: Arc<dyn TtsEngine>,
    turns: HashMap<String, TurnSpeech>,
    output: TtsOutput,
    speaker: SpeakerState,
    /// Where what the speaker plays goes for echo cancellation.
    echo: Option<crate::audio::echo::EchoReference>,
    /// The speaker is paused (some turn is held).
    paused: bool,
}

impl TtsActor {
    /// A Tts actor speaking with `engine` (no playback; see [`TtsActor::with_output`]).
    pub fn new(sup: Supervision, engine: Arc<dyn TtsEngine>) -> Self {
        TtsActor {
            sup,
            engine,
            turns: HashMap::new(),
            output: TtsOutput::default(),
            speaker: SpeakerState::Off,
            echo: None,
            paused: false,
        }
    }

    /// What the speaker plays also goes to `echo` (the input device's echo canceller).
    pub fn with_echo(mut self, echo: crate::audio::echo::EchoReference) -> Self {
        self.echo = Some(echo);
        self
    }

    /// Where speech goes: the device is opened when the actor starts.
    pub fn with_output(mut self, output: TtsOutput) -> Self {
        self.output = output;
        self
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
            // A held turn is not over: a client may hold its audio, paused, to go on with.
            if turn.finishing && turn.playing == 0 && turn.held.is_none() {
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
        let me = ctx.address();
        let fut = async move {
            use futures_util::StreamExt;
            let t = std::time::Instant::now();
            let result = match engine.synthesize_stream(&text).await {
                Err(e) => Err(e),
                Ok((mut pieces, mut covered)) => {
                    let mut first = true;
                    let mut result = Ok(());
                    while let Some(piece) = pieces.next().await {
                        match piece {
                            Ok(audio) => me.do_send(Piece {
                                turn_id: id.clone(),
                                index,
                                text: text.clone(),
                                audio,
                                covered: covered.take(),
                                synth_ms: t.elapsed().as_secs_f64() * 1000.0,
                                first: std::mem::take(&mut first),
                            }),
                            Err(e) => {
                                result = Err(e);
                                break;
                            }
                        }
                    }
                    result
                }
            };
            me.do_send(SentenceEnd {
                turn_id: id,
                index,
                result,
            });
        };
        let handle = ctx.spawn(fut.into_actor(self));
        if let Some(turn) = self.turns.get_mut(turn_id) {
            turn.busy = Some(handle);
        }
    }

    /// A piece of a sentence: the first one announces the sentence (progress, first
    /// audio); every one is published and played as it comes.
    fn piece(&mut self, p: Piece, ctx: &mut Context<Self>) {
        let hub = self.sup.hub().clone();
        let Some(turn) = self.turns.get_mut(&p.turn_id) else {
            return;
        };
        let turn_id = p.turn_id.as_str();
        if let Some(e) = &p.covered {
            // The primary engine failed and the fallback spoke: say so.
            hub.publish(
                &turn.session_id,
                &TtsError {
                    turn_id: Some(turn_id.to_string()),
                    code: e.code().to_string(),
                    message: format!(
                        "{} (this sentence was spoken by {} instead)",
                        e,
                        self.engine.fallback_name().unwrap_or("the fallback engine")
                    ),
                    level: Level::Warning,
                },
            );
        }
        let audio_ms = p.audio.duration_ms();
        turn.audio_ms += audio_ms;
        if let Some(progress) = turn.progress.get(&p.index) {
            progress
                .synthesized
                .fetch_add(p.audio.samples.len(), Ordering::Relaxed);
        }
        if p.first {
            hub.publish(
                &turn.session_id,
                &TtsProgress {
                    turn_id: Some(turn_id.to_string()),
                    sentence_index: p.index,
                    text: p.text.clone(),
                },
            );
        }
        if self.output.stream_audio && hub.wants(EventType::TtsAudio) {
            for piece in p.audio.samples.chunks(AUDIO_CHUNK_SAMPLES) {
                let bytes: Vec<u8> = piece.iter().flat_map(|s| s.to_le_bytes()).collect();
                hub.publish(
                    &turn.session_id,
                    &TtsAudio {
                        turn_id: Some(turn_id.to_string()),
                        index: turn.chunks,
                        sample_rate: p.audio.sample_rate,
                        channels: 1,
                        format: "pcm_s16le".into(),
                        audio: base64::engine::general_purpose::STANDARD.encode(&bytes),
                        last: false,
                    },
                );
                turn.chunks += 1;
            }
        }
        if p.first {
            turn.reply_to.do_send(TtsUpdate::Spoken {
                turn_id: turn_id.to_string(),
                index: p.index,
                text: p.text,
                audio_ms,
                synth_ms: p.synth_ms,
            });
        }
        let turn_id = p.turn_id;
        self.play(&turn_id, p.index, p.audio, ctx);
    }

    fn sentence_end(&mut self, end: SentenceEnd, ctx: &mut Context<Self>) {
        let hub = self.sup.hub().clone();
        let turn_id = end.turn_id.as_str();
        let Some(turn) = self.turns.get_mut(turn_id) else {
            return;
        };
        turn.busy = None;
        match end.result {
            Ok(()) => {
                if let Some(p) = turn.progress.get(&end.index) {
                    p.complete.store(true, Ordering::Relaxed);
                }
                self.pump(turn_id, ctx)
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
                if let Some(turn) = self.turns.remove(turn_id) {
                    self.sync_pause();
                    self.end_audio_stream(turn_id, &turn);
                }
            }
        }
    }

    /// Queues a sentence's audio on the speaker (in order); the turn waits for it.
    fn play(&mut self, turn_id: &str, index: u32, audio: Audio, ctx: &mut Context<Self>) {
        let Some(turn) = self.turns.get_mut(turn_id) else {
            return;
        };
        match &self.speaker {
            #[cfg(feature = "audio")]
            SpeakerState::Open(speaker) => {
                turn.playing += 1;
                let speaker = speaker.clone();
                let id = turn_id.to_string();
                let samples = crate::audio::convert::i16_to_f32(&audio.samples);
                let rate = audio.sample_rate;
                let played = turn.progress.get(&index).map(|p| {
                    p.on_device.store(true, Ordering::Relaxed);
                    p.played.clone()
                });
                ctx.spawn(
                    async move { speaker.play_counted(samples, rate, played).await }
                        .into_actor(self)
                        .map(move |outcome, act, ctx| act.played(&id, outcome, ctx)),
                );
            }
            SpeakerState::Off | SpeakerState::Missing => {
                let _ = (audio, index, ctx);
                turn.all_played = false;
            }
        }
    }

    #[cfg(feature = "audio")]
    fn played(
        &mut self,
        turn_id: &str,
        outcome: crate::audio::PlayOutcome,
        ctx: &mut Context<Self>,
    ) {
        let Some(turn) = self.turns.get_mut(turn_id) else {
            return;
        };
        turn.playing = turn.playing.saturating_sub(1);
        if outcome != crate::audio::PlayOutcome::Played {
            if let crate::audio::PlayOutcome::Failed(why) = &outcome {
                tracing::warn!(turn = turn_id, %why, "playback failed");
            }
            turn.all_played = false;
        }
        self.pump(turn_id, ctx);
    }

    /// Pauses the speaker while some turn is held, and only then: a held turn that ends
    /// (cancelled, failed, or done with nothing left to play) must not leave it paused.
    fn sync_pause(&mut self) {
        let hold = self.turns.values().any(|t| t.held.is_some());
        if hold == self.paused {
            return;
        }
        self.paused = hold;
        #[cfg(feature = "audio")]
        if let SpeakerState::Open(s) = &self.speaker {
            s.pause_now(hold);
        }
    }

    fn hold(&mut self, turn_id: &str, hold: Hold, ctx: &mut Context<Self>) {
        let Some(turn) = self.turns.get_mut(turn_id) else {
            return;
        };
        let session = turn.session_id.clone();
        let hub = self.sup.hub().clone();
        match (hold, turn.held) {
            (Hold::Pause, None) => {
                turn.held = Some(Instant::now());
                hub.publish(
                    &session,
                    &TtsPaused {
                        turn_id: Some(turn_id.to_string()),
                    },
                );
            }
            (Hold::Resume { reason, heard }, Some(since)) => {
                turn.held = None;
                hub.publish(
                    &session,
                    &TtsResumed {
                        turn_id: Some(turn_id.to_string()),
                        paused_ms: since.elapsed().as_secs_f64() * 1000.0,
                        reason: reason.to_string(),
                        heard,
                    },
                );
            }
            _ => return,
        }
        self.sync_pause();
        self.pump(turn_id, ctx);
    }

    /// The closing `tts_audio` chunk (`last: true`, no samples) for clients that got some.
    fn end_audio_stream(&self, turn_id: &str, turn: &TurnSpeech) {
        if turn.chunks > 0 {
            self.sup.hub().publish(
                &turn.session_id,
                &TtsAudio {
                    turn_id: Some(turn_id.to_string()),
                    index: turn.chunks,
                    sample_rate: 0,
                    channels: 1,
                    format: "pcm_s16le".into(),
                    audio: String::new(),
                    last: true,
                },
            );
        }
    }

    fn finish(&mut self, turn_id: &str) {
        if let Some(turn) = self.turns.remove(turn_id) {
            self.sync_pause();
            let duration_ms = turn.started.elapsed().as_secs_f64() * 1000.0;
            self.end_audio_stream(turn_id, &turn);
            if turn.announced {
                self.sup.hub().publish(
                    &turn.session_id,
                    &TtsResult {
                        turn_id: Some(turn_id.to_string()),
                        duration_ms,
                        audio_ms: turn.audio_ms,
                        played: turn.all_played,
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

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.sup.started();
        if self.output.play && matches!(self.speaker, SpeakerState::Off) {
            self.open_speaker(ctx);
        }
    }
}

impl TtsActor {
    #[cfg(feature = "audio")]
    fn open_speaker(&mut self, ctx: &mut Context<Self>) {
        let (device, echo) = (self.output.device.clone(), self.echo.clone());
        let open = crate::supervise::dedicated("coda-speaker-open", move || {
            crate::audio::Speaker::open(&device, echo)
        });
        // `wait`: sentences queue behind the opening, so none is synthesised for a
        // speaker state that is about to change.
        ctx.wait(open.into_actor(self).map(|res, act, _| {
            act.speaker = match res {
                Ok(Ok(speaker)) => {
                    tracing::info!(device = speaker.device(), "speech plays on the output device");
                    SpeakerState::Open(speaker)
                }
                Ok(Err(e)) => {
                    tracing::info!(reason = %e, "no output device: speech is synthesised but not played (tts_result.played = false)");
                    SpeakerState::Missing
                }
                Err(panic) => {
                    tracing::warn!(%panic, "opening the output device panicked; speech is not played");
                    SpeakerState::Missing
                }
            };
        }));
    }

    #[cfg(not(feature = "audio"))]
    fn open_speaker(&mut self, _: &mut Context<Self>) {
        tracing::info!(
            "{}: speech is synthesised but not played (tts_result.played = false)",
            crate::audio::NO_AUDIO_BUILD
        );
        self.speaker = SpeakerState::Missing;
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
        self.sync_pause();
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
                held: None,
                reply_to: msg.reply_to.clone(),
                pending: VecDeque::new(),
                busy: None,
                finishing: false,
                started: Instant::now(),
                audio_ms: 0.0,
                announced: false,
                playing: 0,
                progress: HashMap::new(),
                all_played: true,
                chunks: 0,
            });
        turn.progress.insert(msg.index, msg.progress);
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
            // Silence now: the assistant has one voice, so the whole queue goes (and with
            // it the speaker's pause).
            #[cfg(feature = "audio")]
            if turn.playing > 0 {
                if let SpeakerState::Open(s) = &self.speaker {
                    s.stop_now();
                    self.paused = false;
                }
            }
            self.sync_pause();
            self.end_audio_stream(&msg.turn_id, &turn);
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

impl Handler<HoldTurn> for TtsActor {
    type Result = ();

    fn handle(&mut self, msg: HoldTurn, ctx: &mut Context<Self>) {
        self.hold(&msg.turn_id, msg.hold, ctx);
    }
}

/// Stop playback now (every turn), answering with the time the playback thread took to
/// act. For benchmarks and the interrupt path when no turn is known.
#[derive(Message)]
#[rtype(result = "Option<std::time::Duration>")]
pub struct StopPlayback;

impl Handler<StopPlayback> for TtsActor {
    type Result = ResponseFuture<Option<std::time::Duration>>;

    fn handle(&mut self, _: StopPlayback, _: &mut Context<Self>) -> Self::Result {
        match &self.speaker {
            #[cfg(feature = "audio")]
            SpeakerState::Open(s) => {
                let s = s.clone();
                Box::pin(async move { Some(s.stop().await) })
            }
            _ => Box::pin(async { None }),
        }
    }
}

impl Handler<Piece> for TtsActor {
    type Result = ();

    fn handle(&mut self, msg: Piece, ctx: &mut Context<Self>) {
        self.piece(msg, ctx);
    }
}

impl Handler<SentenceEnd> for TtsActor {
    type Result = ();

    fn handle(&mut self, msg: SentenceEnd, ctx: &mut Context<Self>) {
        self.sentence_end(msg, ctx);
    }
}

crate::impl_fault_injection!(TtsActor);
