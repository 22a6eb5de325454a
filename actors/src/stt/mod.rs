//! Stt: speech to text. Takes [`SpeechAudio`] from whoever produces speech (client binary
//! frames through the session, the input device through AudioCapture), transcribes it
//! with whisper.cpp off the event loop, publishes `stt_start` / `stt_interim` /
//! `stt_result` / `stt_error`, and hands the transcript to the Orchestrator as a voice
//! turn carrying the same `turn_id`, the transcription time and the end-of-speech instant.
//!
//! The model is loaded once, on the blocking pool (at start when `preload`, else at the
//! first utterance). A missing model is `stt_error` `model_missing` with the command that
//! installs it, and the component reports `degraded`; everything else keeps working.
//! Interim transcriptions are skipped while one is running and aborted when the utterance
//! ends; a new utterance or `Cancelled` aborts the session's running work.

#[cfg(feature = "stt")]
mod engine;
#[cfg(feature = "stt")]
pub use engine::{
    audio_ctx_for, clip_audio_ctx, context_plan, degenerate, token_cap, WhisperEngine,
};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix::prelude::*;
use coda_protocol::{ComponentState, Level, SttError, SttInterim, SttResult, SttStart};

use crate::orchestrator::{Listening, Orchestrator, VoiceTurn};
use crate::supervise::{blocking, Supervision};
use crate::voice::{Settle, SpeechAudio};

/// Stt settings (the `[stt]` config section).
#[derive(Debug, Clone)]
pub struct SttSettings {
    /// A model name in the store (`whisper-tiny.en`) or a path to a ggml file.
    pub model: String,
    /// The model store directory (`None`: the default store).
    pub models_dir: Option<PathBuf>,
    /// `en`, another language code (multilingual models), or `auto`.
    pub language: String,
    /// Threads per transcription (0: [`default_threads`]).
    pub threads: usize,
    /// Load the model when the actor starts rather than at the first utterance.
    pub preload: bool,
}

impl Default for SttSettings {
    fn default() -> Self {
        SttSettings {
            model: "whisper-tiny.en".into(),
            models_dir: None,
            language: "en".into(),
            threads: 0,
            preload: true,
        }
    }
}

/// Threads per transcription when `stt.threads` is 0: half the cores, 1 to 4. ggml's
/// worker threads spin while they wait, so on a small machine that also runs the LLM and
/// speech synthesis, more threads than spare cores make a transcription slower, not faster.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| (n.get() / 2).clamp(1, 4))
        .unwrap_or(1)
}

/// One transcription.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Transcript {
    /// The text (trimmed; empty when nothing was said).
    pub text: String,
    /// Mean probability of the text's tokens, 0–1.
    pub confidence: f64,
    /// The configured or detected language.
    pub language: String,
    /// Length of the audio, ms.
    pub audio_ms: f64,
    /// Transcription time, ms.
    pub elapsed_ms: f64,
    /// Encoder window of the decoding that was kept (positions of 20 ms; 1500 = 30 s).
    pub audio_ctx: i32,
    /// Decodings run: more than one when a trimmed window gave a degenerate transcript.
    pub attempts: u32,
}

/// Why speech could not be transcribed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SttFailure {
    /// No model file.
    #[error("{0}")]
    ModelMissing(String),
    /// The model file is unusable.
    #[error("{0}")]
    ModelInvalid(String),
    /// Speech-to-text is not in this build or not running.
    #[error("{0}")]
    Unavailable(String),
    /// Aborted (the utterance ended or was cancelled).
    #[error("transcription cancelled")]
    Cancelled,
    /// whisper.cpp failed.
    #[error("{0}")]
    Failed(String),
}

impl SttFailure {
    /// The `stt_error` code.
    pub fn code(&self) -> &'static str {
        match self {
            SttFailure::ModelMissing(_) => "model_missing",
            SttFailure::ModelInvalid(_) => "model_invalid",
            SttFailure::Unavailable(_) => "unavailable",
            SttFailure::Cancelled => "cancelled",
            SttFailure::Failed(_) => "transcription_failed",
        }
    }
}

/// Without the `stt` feature there is no engine: loading says so.
#[cfg(not(feature = "stt"))]
#[derive(Debug)]
pub enum WhisperEngine {}

#[cfg(not(feature = "stt"))]
impl WhisperEngine {
    /// Always an error: this build has no speech-to-text engine.
    pub fn load(
        _path: &std::path::Path,
        _language: &str,
        _threads: usize,
    ) -> Result<WhisperEngine, SttFailure> {
        Err(SttFailure::Unavailable(
            "speech-to-text is not in this build (built without the `stt` feature)".into(),
        ))
    }

    /// Unreachable: no engine value exists.
    pub fn phrase_score(
        &self,
        _samples: &[f32],
        _phrases: &[crate::wake::verify::Phrase],
        _abort: Option<&Arc<AtomicBool>>,
    ) -> Result<f64, SttFailure> {
        match *self {}
    }

    /// Unreachable: no engine value exists.
    pub fn transcribe(
        &self,
        _samples: &[f32],
        _abort: Option<Arc<AtomicBool>>,
    ) -> Result<Transcript, SttFailure> {
        match *self {}
    }
}

/// Resolves `settings.model` in the store and loads it.
pub fn load_engine(settings: &SttSettings) -> Result<WhisperEngine, SttFailure> {
    if !cfg!(feature = "stt") {
        return WhisperEngine::load(std::path::Path::new(""), "", 0);
    }
    let store = match &settings.models_dir {
        Some(d) => crate::models::ModelStore::new(d),
        None => crate::models::ModelStore::new(crate::models::ModelStore::default_dir()),
    };
    let path = store.resolve(&settings.model).map_err(|e| match e {
        crate::models::ModelError::NotInstalled { .. }
        | crate::models::ModelError::FileMissing { .. }
        | crate::models::ModelError::NoSuchFile(_) => {
            SttFailure::ModelMissing(format!("speech-to-text model missing: {e}"))
        }
        other => SttFailure::ModelInvalid(other.to_string()),
    })?;
    WhisperEngine::load(&path, &settings.language, settings.threads)
}

/// The model, loaded once by whichever blocking job needs it first.
#[derive(Default)]
struct EngineSlot {
    engine: Mutex<Option<Result<Arc<WhisperEngine>, SttFailure>>>,
}

impl EngineSlot {
    /// The engine, loading it on first use (call from the blocking pool). A missing model
    /// is looked for again next time, so `coda models pull` while running fixes it.
    fn get(&self, settings: &SttSettings) -> Result<Arc<WhisperEngine>, SttFailure> {
        let mut slot = self.engine.lock().unwrap_or_else(|p| p.into_inner());
        match &*slot {
            Some(Ok(e)) => return Ok(e.clone()),
            Some(Err(e)) if !matches!(e, SttFailure::ModelMissing(_)) => return Err(e.clone()),
            _ => {}
        }
        let t0 = Instant::now();
        let loaded = load_engine(settings).map(Arc::new);
        match &loaded {
            Ok(_) => tracing::info!(
                model = %settings.model,
                load_ms = t0.elapsed().as_secs_f64() * 1000.0,
                "speech-to-text model loaded"
            ),
            Err(e) => {
                tracing::warn!(model = %settings.model, error = %e, "speech-to-text model not loaded")
            }
        }
        *slot = Some(loaded.clone());
        loaded
    }
}

struct Utterance {
    turn_id: String,
    /// Abort flag of the running interim transcription, if one runs.
    interim: Option<Arc<AtomicBool>>,
    /// Abort flag of the final transcription, once the utterance ended.
    final_abort: Option<Arc<AtomicBool>>,
    /// The transcription of the audio up to the speaker's last pause.
    settled: Option<SettledRun>,
    /// The utterance ended with nothing said after that pause while its transcription
    /// was still running: it is the final one, finished when it is done.
    final_waiting: Option<(Instant, Instant)>,
    /// The turn's root trace span, from the start of speech (the orchestrator keeps it).
    span: tracing::Span,
}

impl Utterance {
    fn new(turn_id: String, session_id: &str) -> Utterance {
        Utterance {
            span: crate::orchestrator::turn_span(&turn_id, session_id),
            turn_id,
            interim: None,
            final_abort: None,
            settled: None,
            final_waiting: None,
        }
    }
}

/// A transcription's span under the turn's root: `settled` (at a pause; it becomes the
/// final one when nothing follows) or `final`.
fn stt_span(root: &tracing::Span, turn_id: &str, samples: usize, kind: &str) -> tracing::Span {
    tracing::debug_span!(
        parent: root,
        "coda.stt",
        otel.name = "stt",
        coda.turn_id = turn_id,
        coda.stt.kind = kind,
        coda.stt.audio_ms = samples as f64 / 16.0,
        otel.status_code = tracing::field::Empty,
    )
}

struct SettledRun {
    settle: Settle,
    abort: Arc<AtomicBool>,
    /// `None` while it runs.
    result: Option<Result<Transcript, SttFailure>>,
}

/// Words a request does not end on: a transcript ending with one is a speaker pausing
/// mid-sentence, whatever punctuation whisper put after it.
const DANGLING: &[&str] = &[
    "a", "an", "and", "are", "at", "but", "by", "for", "from", "in", "is", "my", "of", "on", "or",
    "so", "than", "that", "the", "then", "to", "was", "what", "when", "where", "which", "who",
    "why", "with", "your",
];

/// Does `text` read as a complete request (a sentence that ends, not on a word that
/// leads on)? Used to end an utterance after a shorter silence.
pub fn reads_complete(text: &str) -> bool {
    let t = text.trim();
    if t.ends_with("...") || !t.ends_with(['.', '?', '!']) {
        return false;
    }
    let last = t
        .trim_end_matches(['.', '?', '!'])
        .rsplit(char::is_whitespace)
        .next()
        .unwrap_or("")
        .trim_matches(|c: char| !c.is_alphanumeric())
        .to_lowercase();
    !last.is_empty() && !DANGLING.contains(&last.as_str())
}

pub struct SttActor {
    sup: Supervision,
    settings: SttSettings,
    slot: Arc<EngineSlot>,
    orchestrator: Addr<Orchestrator>,
    utterances: HashMap<String, Utterance>,
    next_turn: u64,
    /// The component was reported degraded for its model (cleared once it loads).
    model_degraded: bool,
}

impl SttActor {
    /// An Stt actor handing its transcripts to `orchestrator`.
    pub fn new(sup: Supervision, settings: SttSettings, orchestrator: Addr<Orchestrator>) -> Self {
        SttActor {
            sup,
            settings,
            slot: Arc::new(EngineSlot::default()),
            orchestrator,
            utterances: HashMap::new(),
            next_turn: 1,
            model_degraded: false,
        }
    }

    fn error(&mut self, session_id: &str, turn_id: Option<String>, failure: &SttFailure) {
        let level = match failure {
            SttFailure::Cancelled => Level::Warning,
            _ => Level::Error,
        };
        self.sup.hub().publish(
            session_id,
            &SttError {
                turn_id,
                code: failure.code().to_string(),
                message: failure.to_string(),
                level,
            },
        );
        if matches!(
            failure,
            SttFailure::ModelMissing(_) | SttFailure::ModelInvalid(_) | SttFailure::Unavailable(_)
        ) {
            self.degrade(failure);
        }
    }

    fn degrade(&mut self, failure: &SttFailure) {
        self.model_degraded = true;
        self.sup
            .report(ComponentState::Degraded, Some(failure.to_string()));
    }

    /// Runs `f` with the engine on the blocking pool; a panic there restarts the actor.
    fn run<F, R>(
        &mut self,
        f: F,
        done: impl FnOnce(&mut Self, Result<R, SttFailure>, &mut Context<Self>) + 'static,
        ctx: &mut Context<Self>,
    ) where
        F: FnOnce(&WhisperEngine) -> Result<R, SttFailure> + Send + 'static,
        R: Send + 'static,
    {
        let (slot, settings) = (self.slot.clone(), self.settings.clone());
        let job = blocking(move || slot.get(&settings).and_then(|e| f(&e)));
        ctx.spawn(job.into_actor(self).map(move |res, act, ctx| match res {
            Ok(r) => {
                if r.is_ok() && act.model_degraded {
                    act.model_degraded = false;
                    act.sup.report(ComponentState::Running, None);
                }
                done(act, r, ctx)
            }
            Err(panic) => {
                act.sup.crashed(&panic);
                ctx.stop();
            }
        }));
    }

    fn started_speech(
        &mut self,
        session_id: String,
        mode: coda_protocol::SttMode,
        source: coda_protocol::AudioSource,
        ctx: &mut Context<Self>,
    ) {
        self.abort_session(&session_id);
        let turn_id = format!("t-v{:04}", self.next_turn);
        self.next_turn += 1;
        self.sup.hub().publish(
            &session_id,
            &SttStart {
                turn_id: Some(turn_id.clone()),
                mode,
                source,
            },
        );
        self.orchestrator.do_send(Listening {
            session_id: session_id.clone(),
            on: true,
        });
        self.utterances.insert(
            session_id.clone(),
            Utterance::new(turn_id.clone(), &session_id),
        );
        // A missing model is said at once, while the user is still speaking.
        self.run(
            |_| Ok(()),
            move |act, res: Result<(), SttFailure>, _| {
                if let Err(e) = res {
                    act.error(&session_id, Some(turn_id), &e);
                }
            },
            ctx,
        );
    }

    fn partial(
        &mut self,
        session_id: String,
        samples: Arc<[f32]>,
        settle: Option<Settle>,
        ctx: &mut Context<Self>,
    ) {
        if let Some(settle) = settle {
            self.settled_partial(session_id, samples, settle, ctx);
            return;
        }
        let Some(u) = self.utterances.get_mut(&session_id) else {
            return;
        };
        let settled_running = u.settled.as_ref().is_some_and(|r| r.result.is_none());
        if u.interim.is_some() || u.final_abort.is_some() || settled_running {
            return;
        }
        let flag = Arc::new(AtomicBool::new(false));
        u.interim = Some(flag.clone());
        let turn_id = u.turn_id.clone();
        let abort = flag.clone();
        self.run(
            move |e| e.transcribe(&samples, Some(abort)),
            move |act, res, _| {
                let Some(u) = act.utterances.get_mut(&session_id) else {
                    return;
                };
                if u.interim.as_ref().is_some_and(|f| Arc::ptr_eq(f, &flag)) {
                    u.interim = None;
                }
                if u.turn_id != turn_id || u.final_abort.is_some() || u.final_waiting.is_some() {
                    return;
                }
                act.interim(&session_id, turn_id, res);
            },
            ctx,
        );
    }

    fn interim(&mut self, session_id: &str, turn_id: String, res: Result<Transcript, SttFailure>) {
        match res {
            Ok(t) if !t.text.is_empty() => self.sup.hub().publish(
                session_id,
                &SttInterim {
                    turn_id: Some(turn_id),
                    text: t.text,
                    confidence: Some(t.confidence),
                },
            ),
            Ok(_) | Err(SttFailure::Cancelled) => {}
            // Errors are reported once, by the final transcription.
            Err(e) => tracing::debug!(error = %e, "interim transcription failed"),
        }
    }

    /// The speaker paused: transcribe what was said so far now, ahead of any interim, so
    /// that if this was the end the transcript is ready when the utterance ends.
    fn settled_partial(
        &mut self,
        session_id: String,
        samples: Arc<[f32]>,
        settle: Settle,
        ctx: &mut Context<Self>,
    ) {
        let Some(u) = self.utterances.get_mut(&session_id) else {
            return;
        };
        if u.final_abort.is_some() || u.final_waiting.is_some() {
            return;
        }
        for f in [u.interim.take(), u.settled.take().map(|r| r.abort)]
            .into_iter()
            .flatten()
        {
            f.store(true, Ordering::Relaxed);
        }
        let flag = Arc::new(AtomicBool::new(false));
        u.settled = Some(SettledRun {
            settle: settle.clone(),
            abort: flag.clone(),
            result: None,
        });
        let turn_id = u.turn_id.clone();
        let abort = flag.clone();
        let span = stt_span(&u.span, &turn_id, samples.len(), "settled");
        self.run(
            move |e| e.transcribe(&samples, Some(abort)),
            move |act, res, _| {
                if res.is_err() {
                    span.record("otel.status_code", "error");
                }
                drop(span);
                let Some(u) = act.utterances.get_mut(&session_id) else {
                    return;
                };
                let Some(run) = u.settled.as_mut().filter(|r| Arc::ptr_eq(&r.abort, &flag)) else {
                    return;
                };
                if let Ok(t) = &res {
                    if reads_complete(&t.text) {
                        run.settle.complete.store(run.settle.len, Ordering::Relaxed);
                    }
                }
                run.result = Some(res.clone());
                if let Some((speech_ended, utterance_ended)) = u.final_waiting.take() {
                    let root = act.utterances.remove(&session_id).map(|u| u.span);
                    act.finish(
                        session_id,
                        turn_id,
                        res,
                        speech_ended,
                        utterance_ended,
                        root.unwrap_or_else(tracing::Span::none),
                    );
                } else {
                    act.interim(&session_id, turn_id, res);
                }
            },
            ctx,
        );
    }

    fn ended(
        &mut self,
        session_id: String,
        samples: Arc<[f32]>,
        speech_ended: Instant,
        settle: Option<Settle>,
        ctx: &mut Context<Self>,
    ) {
        let utterance_ended = Instant::now();
        let turn_id = match self.utterances.get_mut(&session_id) {
            Some(u) if u.final_abort.is_none() && u.final_waiting.is_none() => {
                if let Some(f) = u.interim.take() {
                    f.store(true, Ordering::Relaxed);
                }
                // Nothing was said after the last pause: its transcript is the final one.
                let reusable = settle.as_ref().is_some_and(|s| {
                    u.settled
                        .as_ref()
                        .is_some_and(|r| r.settle.len == s.len && !r.abort.load(Ordering::Relaxed))
                });
                if reusable {
                    let done = u.settled.as_ref().and_then(|r| r.result.clone());
                    let turn_id = u.turn_id.clone();
                    match done {
                        Some(res) => {
                            let root = self.utterances.remove(&session_id).map(|u| u.span);
                            self.finish(
                                session_id,
                                turn_id,
                                res,
                                speech_ended,
                                utterance_ended,
                                root.unwrap_or_else(tracing::Span::none),
                            );
                        }
                        None => u.final_waiting = Some((speech_ended, utterance_ended)),
                    }
                    return;
                }
                if let Some(r) = u.settled.take() {
                    r.abort.store(true, Ordering::Relaxed);
                }
                u.turn_id.clone()
            }
            // Ended without Started (or twice): a turn of its own.
            _ => {
                let id = format!("t-v{:04}", self.next_turn);
                self.next_turn += 1;
                self.utterances
                    .insert(session_id.clone(), Utterance::new(id.clone(), &session_id));
                id
            }
        };
        let flag = Arc::new(AtomicBool::new(false));
        if let Some(u) = self.utterances.get_mut(&session_id) {
            u.final_abort = Some(flag.clone());
        }
        let abort = flag.clone();
        // The utterance's root span goes on to the orchestrator with the transcript.
        let root = self
            .utterances
            .get(&session_id)
            .map_or_else(tracing::Span::none, |u| u.span.clone());
        let stt_span = stt_span(&root, &turn_id, samples.len(), "final");
        self.run(
            move |e| e.transcribe(&samples, Some(abort)),
            move |act, res, _| {
                if res.is_err() {
                    stt_span.record("otel.status_code", "error");
                }
                drop(stt_span);
                let current = act.utterances.get(&session_id).is_some_and(|u| {
                    u.final_abort
                        .as_ref()
                        .is_some_and(|f| Arc::ptr_eq(f, &flag))
                });
                if current {
                    act.utterances.remove(&session_id);
                }
                act.finish(
                    session_id,
                    turn_id,
                    res,
                    speech_ended,
                    utterance_ended,
                    root,
                );
            },
            ctx,
        );
    }

    fn finish(
        &mut self,
        session_id: String,
        turn_id: String,
        res: Result<Transcript, SttFailure>,
        speech_ended: Instant,
        utterance_ended: Instant,
        span: tracing::Span,
    ) {
        let t = match res {
            Ok(t) => t,
            Err(SttFailure::Cancelled) => return,
            Err(e) => {
                self.error(&session_id, Some(turn_id), &e);
                self.orchestrator.do_send(Listening {
                    session_id,
                    on: false,
                });
                return;
            }
        };
        self.sup.hub().publish(
            &session_id,
            &SttResult {
                turn_id: Some(turn_id.clone()),
                text: t.text.clone(),
                confidence: t.confidence,
                duration_ms: t.elapsed_ms,
                language: t.language.clone(),
            },
        );
        tracing::info!(turn = %turn_id, audio_ms = t.audio_ms, stt_ms = t.elapsed_ms, audio_ctx = t.audio_ctx, attempts = t.attempts, "transcribed");
        if t.text.is_empty() {
            self.error(
                &session_id,
                Some(turn_id),
                &SttFailure::Failed("no speech recognised".into()),
            );
            self.orchestrator.do_send(Listening {
                session_id,
                on: false,
            });
            return;
        }
        self.orchestrator.do_send(VoiceTurn {
            session_id,
            text: t.text,
            turn_id,
            stt_ms: t.elapsed_ms,
            speech_ended,
            utterance_ended,
            span,
        });
    }

    /// Aborts whatever runs for `session_id` and forgets its utterance.
    fn abort_session(&mut self, session_id: &str) {
        if let Some(u) = self.utterances.remove(session_id) {
            for f in [u.interim, u.final_abort, u.settled.map(|r| r.abort)]
                .into_iter()
                .flatten()
            {
                f.store(true, Ordering::Relaxed);
            }
        }
    }
}

impl Actor for SttActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.sup.started();
        if self.sup.is_degraded() {
            return;
        }
        if self.settings.preload {
            self.run(
                |_| Ok(()),
                |act, res: Result<(), SttFailure>, _| {
                    if let Err(e) = res {
                        act.degrade(&e);
                    }
                },
                ctx,
            );
        }
    }
}

impl actix::Supervised for SttActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        let sessions: Vec<String> = self.utterances.keys().cloned().collect();
        for s in sessions {
            if let Some(u) = self.utterances.get(&s) {
                self.error(
                    &s,
                    Some(u.turn_id.clone()),
                    &SttFailure::Failed("speech-to-text restarted; say it again".into()),
                );
            }
            self.abort_session(&s);
            // An answer paused for this utterance goes on.
            self.orchestrator.do_send(Listening {
                session_id: s,
                on: false,
            });
        }
        // The model is reloaded fresh after a crash.
        self.slot = Arc::new(EngineSlot::default());
        self.sup.restarting();
    }
}

impl Handler<SpeechAudio> for SttActor {
    type Result = ();

    fn handle(&mut self, msg: SpeechAudio, ctx: &mut Context<Self>) {
        if let SpeechAudio::Wake {
            session_id,
            word,
            score,
            verified,
            source,
        } = msg
        {
            tracing::info!(session = %session_id, %word, score, ?verified, %source, "wake word");
            self.sup.hub().publish(
                &session_id,
                &coda_protocol::WakeDetected {
                    word,
                    score: f64::from(score),
                    source,
                    verified: verified.map(|v| (f64::from(v) * 100.0).round() / 100.0),
                },
            );
            return;
        }
        if self.sup.is_degraded() {
            let failure = SttFailure::Unavailable(self.sup.unavailable());
            if matches!(msg, SpeechAudio::Started { .. } | SpeechAudio::Ended { .. }) {
                self.error(msg.session_id(), None, &failure);
            }
            return;
        }
        match msg {
            SpeechAudio::Started {
                session_id,
                mode,
                source,
            } => self.started_speech(session_id, mode, source, ctx),
            SpeechAudio::Partial {
                session_id,
                samples,
                settle,
            } => self.partial(session_id, samples, settle, ctx),
            SpeechAudio::Ended {
                session_id,
                samples,
                speech_ended,
                settle,
            } => self.ended(session_id, samples, speech_ended, settle, ctx),
            SpeechAudio::Wake { .. } => {}
            SpeechAudio::Cancelled { session_id, reason } => {
                tracing::info!(session = %session_id, %reason, "listening cancelled");
                self.abort_session(&session_id);
                self.orchestrator.do_send(Listening {
                    session_id,
                    on: false,
                });
            }
        }
    }
}

/// Transcribe a whole recording (16 kHz mono) and answer with the transcript, off the
/// hub: for servers that speak other protocols (Wyoming).
#[derive(Message)]
#[rtype(result = "Result<Transcript, String>")]
pub struct Transcribe {
    /// 16 kHz mono samples in [-1, 1].
    pub samples: Arc<[f32]>,
}

impl Handler<Transcribe> for SttActor {
    type Result = ResponseActFuture<Self, Result<Transcript, String>>;

    fn handle(&mut self, msg: Transcribe, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.sup.is_degraded() {
            let _ = tx.send(Err(self.sup.unavailable()));
        } else {
            let samples = msg.samples;
            self.run(
                move |e| e.transcribe(&samples, None),
                move |_, res, _| {
                    let _ = tx.send(res.map_err(|e| e.to_string()));
                },
                ctx,
            );
        }
        Box::pin(
            async move {
                rx.await
                    .unwrap_or_else(|_| Err("speech-to-text stopped".to_string()))
            }
            .into_actor(self),
        )
    }
}

/// Scores a wake word candidate with the model ([`crate::wake::verify`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct VerifyWake(pub crate::wake::verify::VerifyRequest);

impl Handler<VerifyWake> for SttActor {
    type Result = ();

    fn handle(&mut self, msg: VerifyWake, ctx: &mut Context<Self>) {
        let VerifyWake(r) = msg;
        if self.sup.is_degraded() {
            r.answer(Err(self.sup.unavailable()));
            return;
        }
        if r.cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let (audio, phrases, reply, cancel, answered) =
            (r.audio, r.phrases, r.reply, r.cancel, r.answered);
        self.run(
            move |e| e.phrase_score(&audio, &phrases, Some(&cancel)),
            move |_, res, _| {
                crate::wake::verify::answer(
                    &reply,
                    answered.as_ref(),
                    res.map_err(|e| e.to_string()),
                );
            },
            ctx,
        );
    }
}

/// Wake word checks by the Stt actor's model (loaded once, shared with transcription).
pub struct SttVerifier(pub Recipient<VerifyWake>);

impl crate::wake::verify::WakeVerify for SttVerifier {
    fn verify(&self, request: crate::wake::verify::VerifyRequest) {
        // A full mailbox or a stopped actor drops the request: the detector falls back.
        let _ = self.0.try_send(VerifyWake(request));
    }
}

/// Wake word checks by an engine, in the caller's thread (`coda wake test`, `coda bench
/// wake`): the answer is there when `verify` returns.
pub struct EngineVerifier(pub Arc<WhisperEngine>);

impl crate::wake::verify::WakeVerify for EngineVerifier {
    fn verify(&self, r: crate::wake::verify::VerifyRequest) {
        let result = self
            .0
            .phrase_score(&r.audio, &r.phrases, Some(&r.cancel))
            .map_err(|e| e.to_string());
        r.answer(result);
    }
}

crate::impl_fault_injection!(SttActor);
