//! WakeWord: hands-free listening starts at a spoken wake word ("hey coda").
//!
//! Detection runs where the audio is cut into utterances (the [`Segmenter`] of the
//! device or of a client stream), through a [`WakeDetector`] made per stream: it sees
//! every sample exactly once, and the utterance that follows can start at the sample
//! where the word ended. This actor owns what detectors are made from: it loads the
//! reference of `wake.word` at start (building it from espeak-ng voices when the file is
//! missing, so any word works on a fresh machine), reports the component's state, and
//! hands out detectors through the cloneable [`WakeModels`] handle.
//!
//! The built-in engine ([`template`]) matches against example utterances; with a
//! verifier installed (the Stt actor's whisper model, `wake.verify`), it only proposes
//! candidates and whisper decides ([`verify`]). An engine for neural models
//! (openWakeWord ONNX files a user supplies) would be another [`WakeModel`].
//!
//! [`Segmenter`]: crate::audio::Segmenter

pub mod features;
pub mod synth;
pub mod template;
pub mod verify;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use actix::prelude::*;
use coda_protocol::ComponentState;

use crate::components::ComponentRegistry;
use crate::supervise::Supervision;

/// A wake word was heard in a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// The word, as configured (`hey coda`).
    pub word: String,
    /// How close the match was, 0–1.
    pub score: f32,
    /// Where the word started and ended, in samples since the stream began.
    pub start: u64,
    pub end: u64,
    /// The speech-to-text check's score, when one verified the word ([`verify`]).
    pub verified: Option<f32>,
}

/// Detects a wake word in one stream of 16 kHz mono samples.
pub trait WakeDetector: Send {
    fn word(&self) -> &str;
    /// Feeds samples; a detection is reported once, shortly after the word ended. A later
    /// reading of the same word (overlapping it, ending later) may follow: where the word
    /// really ended.
    fn push(&mut self, samples: &[f32]) -> Option<Detection>;
    /// Forgets the audio so far (stream positions keep counting).
    fn reset(&mut self);
    /// The match that will be reported if no better one comes, before it is: for a first
    /// look at it while the detector waits to be sure ([`verify`]).
    fn provisional(&self) -> Option<Detection> {
        None
    }
    /// Whether everything heard since `d` ended is a pause beside the word.
    fn paused_after(&self, _d: &Detection) -> bool {
        false
    }
    /// `waker` is called when an answer the detector waits for comes in between pushes
    /// (a [`verify`] check): pushing no samples then reports what it decided at once,
    /// instead of with the next frame of audio.
    fn wake_on_answer(&mut self, _waker: Waker) {}
}

/// Called from another thread when a detector has something to report ([`WakeDetector::wake_on_answer`]).
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// A [`Waker`] that sends `M` to the actor owning the detector, while it runs (it does not
/// keep the actor alive).
pub fn actor_waker<A, M>(addr: actix::WeakAddr<A>) -> Waker
where
    A: actix::Actor<Context = actix::Context<A>> + actix::Handler<M>,
    M: actix::Message<Result = ()> + Default + Send + 'static,
{
    Arc::new(move || {
        if let Some(a) = addr.upgrade() {
            a.do_send(M::default());
        }
    })
}

/// What detectors are made from.
pub trait WakeModel: Send + Sync {
    fn word(&self) -> &str;
    /// A detector at the configured threshold.
    fn detector(&self) -> Box<dyn WakeDetector>;
    /// The configured threshold.
    fn threshold(&self) -> f32;
    /// A detector at another threshold (a first stage proposing candidates).
    fn detector_at(&self, threshold: f32) -> Box<dyn WakeDetector>;
}

impl WakeModel for template::TemplateModel {
    fn word(&self) -> &str {
        template::TemplateModel::word(self)
    }

    fn detector(&self) -> Box<dyn WakeDetector> {
        Box::new(template::TemplateModel::detector(self))
    }

    fn threshold(&self) -> f32 {
        template::TemplateModel::threshold(self)
    }

    fn detector_at(&self, threshold: f32) -> Box<dyn WakeDetector> {
        Box::new(template::TemplateModel::detector_at(self, threshold))
    }
}

/// Why there is no wake word detector.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WakeError {
    /// No reference file.
    #[error("no wake word reference at {0}")]
    Missing(String),
    /// A reference or an example that cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// Being loaded (or built) right now.
    #[error("the wake word reference is still loading")]
    Loading,
    /// Not running, or failed to load.
    #[error("{0}")]
    Unavailable(String),
}

/// WakeWord settings (the `[wake]` config section).
#[derive(Debug, Clone, PartialEq)]
pub struct WakeSettings {
    /// The wake word.
    pub word: String,
    /// Its reference file (`None`: `<models>/wake/<word>.json`).
    pub reference: Option<PathBuf>,
    /// The model store directory (`None`: the default store).
    pub models_dir: Option<PathBuf>,
    /// Detections score at least this, 0–1 (when nothing verifies them).
    pub threshold: f32,
    /// Verify candidates with the speech-to-text model (`None`: the template alone).
    pub verify: Option<verify::VerifySettings>,
    /// Build a missing reference from espeak-ng voices (needs `espeak-ng`).
    pub synthesize_missing: bool,
    /// The espeak-ng program.
    pub espeak: PathBuf,
}

/// The default threshold (from `coda bench wake`: see docs/voice.md).
pub const DEFAULT_THRESHOLD: f32 = 0.05;

impl Default for WakeSettings {
    fn default() -> Self {
        WakeSettings {
            word: "hey coda".into(),
            reference: None,
            models_dir: None,
            threshold: DEFAULT_THRESHOLD,
            verify: Some(verify::VerifySettings::default()),
            synthesize_missing: true,
            espeak: "espeak-ng".into(),
        }
    }
}

impl WakeSettings {
    /// Where the reference of the word is read from and written to.
    pub fn reference_path(&self) -> PathBuf {
        match &self.reference {
            Some(p) => p.clone(),
            None => {
                let dir = self
                    .models_dir
                    .clone()
                    .unwrap_or_else(crate::models::ModelStore::default_dir);
                dir.join("wake")
                    .join(format!("{}.json", file_stem(&self.word)))
            }
        }
    }
}

/// `hey coda` → `hey-coda`.
pub fn file_stem(word: &str) -> String {
    let s: String = word
        .trim()
        .to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { '-' })
        .collect();
    let s = s
        .split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    if s.is_empty() {
        "wake".into()
    } else {
        s
    }
}

/// Loads the reference of `settings`, building it from espeak-ng voices first when it
/// is missing and that is allowed.
pub fn load_model(settings: &WakeSettings) -> Result<template::TemplateModel, WakeError> {
    let path = settings.reference_path();
    let reference = match template::Reference::load(&path) {
        Ok(r) => r,
        Err(WakeError::Missing(_)) if settings.synthesize_missing => {
            tracing::info!(word = %settings.word, path = %path.display(), "no wake word reference yet: building one from espeak-ng voices");
            let r = synth::reference(&settings.word, &settings.espeak)?;
            r.save(&path)?;
            r
        }
        Err(e) => return Err(e),
    };
    if reference.word.to_lowercase() != settings.word.trim().to_lowercase() {
        tracing::warn!(configured = %settings.word, reference = %reference.word, path = %path.display(), "the wake word reference is for another word");
    }
    Ok(template::TemplateModel::new(reference, settings.threshold))
}

/// What checks candidates, and how strictly.
type Verifier = (Arc<dyn verify::WakeVerify>, verify::VerifySettings);

/// The loaded model, shared by the WakeWord actor (which fills it) and the producers of
/// speech (which make detectors from it); and the verifier the kernel wires in.
#[derive(Clone)]
pub struct WakeModels {
    slot: Arc<RwLock<Result<Arc<dyn WakeModel>, WakeError>>>,
    verifier: Arc<RwLock<Option<Verifier>>>,
}

impl Default for WakeModels {
    fn default() -> Self {
        WakeModels {
            slot: Arc::new(RwLock::new(Err(WakeError::Unavailable(
                "the wake word component is not running".into(),
            )))),
            verifier: Arc::new(RwLock::new(None)),
        }
    }
}

impl WakeModels {
    /// A detector for a new stream, or why there is none.
    pub fn detector(&self) -> Result<Box<dyn WakeDetector>, WakeError> {
        let model = match &*self.slot.read().unwrap_or_else(|p| p.into_inner()) {
            Ok(m) => m.clone(),
            Err(e) => return Err(e.clone()),
        };
        Ok(
            match &*self.verifier.read().unwrap_or_else(|p| p.into_inner()) {
                Some((v, s)) => Box::new(verify::Verified::over(&*model, v.clone(), *s)),
                None => model.detector(),
            },
        )
    }

    /// Candidates of detectors made from now on are checked by `verifier`.
    pub fn set_verifier(
        &self,
        verifier: Arc<dyn verify::WakeVerify>,
        settings: verify::VerifySettings,
    ) {
        *self.verifier.write().unwrap_or_else(|p| p.into_inner()) = Some((verifier, settings));
    }

    /// Whether detectors can be made now, or why not (without making one).
    pub fn ready(&self) -> Result<(), WakeError> {
        match &*self.slot.read().unwrap_or_else(|p| p.into_inner()) {
            Ok(_) => Ok(()),
            Err(e) => Err(e.clone()),
        }
    }

    /// Resolves once the reference is no longer loading (or after `limit`): a listening
    /// asked for right after start waits for it instead of being refused.
    pub async fn loaded(&self, limit: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while matches!(self.ready(), Err(WakeError::Loading))
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Installs a model (or the reason there is none).
    pub fn set(&self, model: Result<Arc<dyn WakeModel>, WakeError>) {
        *self.slot.write().unwrap_or_else(|p| p.into_inner()) = model;
    }
}

/// The WakeWord actor.
pub struct WakeWord {
    sup: Supervision,
    components: ComponentRegistry,
    settings: WakeSettings,
    models: WakeModels,
}

impl WakeWord {
    pub fn new(
        sup: Supervision,
        components: ComponentRegistry,
        settings: WakeSettings,
        models: WakeModels,
    ) -> Self {
        WakeWord {
            sup,
            components,
            settings,
            models,
        }
    }
}

impl Actor for WakeWord {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.sup.started();
        self.models.set(Err(WakeError::Loading));
        let settings = self.settings.clone();
        let fut = crate::supervise::dedicated("coda-wake-load", move || load_model(&settings));
        ctx.spawn(fut.into_actor(self).map(|res, act, _| {
            let res = match res {
                Ok(r) => r,
                Err(panic) => Err(WakeError::Unavailable(format!(
                    "loading the wake word panicked: {panic}"
                ))),
            };
            match res {
                Ok(model) => {
                    tracing::info!(word = %model.word(), threshold = act.settings.threshold, "wake word ready");
                    act.models.set(Ok(Arc::new(model)));
                }
                Err(e) => {
                    tracing::warn!(reason = %e, "no wake word: stt_start with mode \"wake\" is refused (everything else works)");
                    act.components.set(
                        act.sup.hub(),
                        act.sup.name(),
                        ComponentState::Degraded,
                        Some(e.to_string()),
                    );
                    act.models.set(Err(WakeError::Unavailable(format!(
                        "no wake word detector: {e}"
                    ))));
                }
            }
        }));
    }
}

impl actix::Supervised for WakeWord {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.sup.restarting();
    }
}

crate::impl_fault_injection!(WakeWord);
