//! The `local` provider: a GGUF chat model run in-process on the CPU by the embedded
//! engine (crate `coda-llm`), so `coda serve` works on a machine with no other service.
//!
//! - The model is loaded once per (file, threads) and shared (`Arc`) by every provider and
//!   request that names it.
//! - Each request generates on its own thread (never on an async event loop); tokens come
//!   back through a channel. Dropping the [`ChatStream`] closes the channel, and the
//!   generation stops before its next token.
//! - One generation runs at a time per model (it already uses every inference thread);
//!   concurrent requests queue in arrival order.
//! - Tool specs are not offered to the model (the default model's template has no tool
//!   syntax); its answers are plain text.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{LlmError, LlmProvider};

/// The `[llm]` settings the local provider reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalLlmConfig {
    /// A model-store name (`smollm2`) or a path to a `.gguf` file.
    pub model: String,
    /// The model store directory (`None`: `$XDG_DATA_HOME/coda/models`).
    pub models_dir: Option<PathBuf>,
    /// Default sampling temperature (0 = greedy).
    pub temperature: f32,
    /// Default nucleus mass (1 = off).
    pub top_p: f32,
    /// Default answer length limit, in tokens.
    pub max_tokens: u32,
    /// Default seed; 0 = a fresh random seed per request.
    pub seed: u64,
    /// Inference threads; 0 = one per CPU core.
    pub threads: usize,
}

impl Default for LocalLlmConfig {
    fn default() -> Self {
        LocalLlmConfig {
            model: "smollm2".into(),
            models_dir: None,
            temperature: 0.2,
            top_p: 0.9,
            max_tokens: 512,
            seed: 0,
            threads: 0,
        }
    }
}

impl LocalLlmConfig {
    /// The model store this config points at.
    pub fn store(&self) -> crate::models::ModelStore {
        match &self.models_dir {
            Some(d) => crate::models::ModelStore::new(d),
            None => crate::models::ModelStore::new(crate::models::ModelStore::default_dir()),
        }
    }
}

/// Builds the local provider, loading the model now (blocking: about a second for the
/// default model; call it from a blocking context). A missing model is
/// `LlmError::Unavailable` naming the command that installs it.
#[cfg(feature = "local-llm")]
pub fn local_provider(cfg: &LocalLlmConfig) -> Result<Arc<dyn LlmProvider>, LlmError> {
    Ok(Arc::new(LocalProvider::new(cfg)?))
}

/// Without the `local-llm` feature there is no engine to run.
#[cfg(not(feature = "local-llm"))]
pub fn local_provider(_cfg: &LocalLlmConfig) -> Result<Arc<dyn LlmProvider>, LlmError> {
    Err(LlmError::Unavailable(
        "built without the local-llm feature: rebuild with default features, or set llm.provider to a remote provider".into(),
    ))
}

#[cfg(feature = "local-llm")]
pub use engine_impl::{load_engine, LocalProvider};

#[cfg(feature = "local-llm")]
mod engine_impl {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex, OnceLock, Weak};
    use std::time::Instant;

    use coda_llm::template::TemplateMessage;
    use coda_llm::{Engine, Finish, GenError, GenParams, LoadError};
    use futures_util::StreamExt;
    use tokio::sync::mpsc;

    use super::LocalLlmConfig;
    use crate::llm::{
        ChatRequest, ChatRole, ChatStream, FinishReason, Health, LlmError, LlmProvider, ModelInfo,
        StreamChunk, Usage,
    };
    use crate::models::{ModelError, ModelKind};

    type EngineCache = Mutex<HashMap<(PathBuf, usize), Weak<Engine>>>;

    fn cache() -> &'static EngineCache {
        static CACHE: OnceLock<EngineCache> = OnceLock::new();
        CACHE.get_or_init(|| Mutex::new(HashMap::new()))
    }

    fn load_err(e: LoadError) -> LlmError {
        LlmError::Unavailable(format!("cannot load the local model: {e}"))
    }

    /// Loads `path` with `threads` inference threads, or returns the engine already
    /// loaded for it (models are loaded once and shared while anyone holds them).
    pub fn load_engine(path: &Path, threads: usize) -> Result<Arc<Engine>, LlmError> {
        let key = (
            std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
            threads,
        );
        // Holding the lock while loading makes a second caller wait for the first load
        // instead of loading the same file twice.
        let mut map = cache().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(engine) = map.get(&key).and_then(Weak::upgrade) {
            return Ok(engine);
        }
        let started = Instant::now();
        let engine = Arc::new(Engine::load(path, threads).map_err(load_err)?);
        tracing::info!(
            path = %path.display(),
            secs = started.elapsed().as_secs_f64(),
            threads = engine.threads(),
            kernel = ?engine.kernel(),
            "local model loaded"
        );
        map.retain(|_, w| w.strong_count() > 0);
        map.insert(key, Arc::downgrade(&engine));
        Ok(engine)
    }

    /// A model named in a request that is not there is `NotFound`.
    fn model_err(e: ModelError) -> LlmError {
        match e {
            ModelError::NotInstalled { .. }
            | ModelError::FileMissing { .. }
            | ModelError::NoSuchFile(_) => LlmError::NotFound(e.to_string()),
            other => LlmError::Unavailable(other.to_string()),
        }
    }

    /// The local provider: one default model, others from the store loaded on request.
    #[derive(Debug)]
    pub struct LocalProvider {
        cfg: LocalLlmConfig,
        engine: Arc<Engine>,
    }

    impl LocalProvider {
        /// Resolves and loads `cfg.model` (blocking).
        pub fn new(cfg: &LocalLlmConfig) -> Result<LocalProvider, LlmError> {
            // The provider's own model missing makes the provider unavailable (a fallback
            // chain moves on); the message names the command that installs it.
            let path = cfg
                .store()
                .resolve(&cfg.model)
                .map_err(|e| LlmError::Unavailable(e.to_string()))?;
            Ok(LocalProvider {
                cfg: cfg.clone(),
                engine: load_engine(&path, cfg.threads)?,
            })
        }

        /// The default model's engine (timings, counters, shapes).
        pub fn engine(&self) -> &Arc<Engine> {
            &self.engine
        }

        async fn engine_for(&self, model: Option<&str>) -> Result<Arc<Engine>, LlmError> {
            match model {
                None => Ok(self.engine.clone()),
                Some(m) if m == self.cfg.model || m == "local" => Ok(self.engine.clone()),
                Some(m) => {
                    let path = self.cfg.store().resolve(m).map_err(model_err)?;
                    let threads = self.cfg.threads;
                    tokio::task::spawn_blocking(move || load_engine(&path, threads))
                        .await
                        .map_err(|e| LlmError::Unavailable(format!("model loader failed: {e}")))?
                }
            }
        }

        fn params(&self, req: &ChatRequest, engine: &Engine) -> Result<GenParams, LlmError> {
            let temperature = req.temperature.unwrap_or(self.cfg.temperature);
            let top_p = req.top_p.unwrap_or(self.cfg.top_p);
            if !(temperature.is_finite() && temperature >= 0.0) {
                return Err(LlmError::Invalid(format!(
                    "temperature {temperature} must be 0 or more"
                )));
            }
            if !(top_p > 0.0 && top_p <= 1.0) {
                return Err(LlmError::Invalid(format!(
                    "top_p {top_p} must be in (0, 1]"
                )));
            }
            let max_tokens = req.max_tokens.unwrap_or(self.cfg.max_tokens);
            if max_tokens == 0 {
                return Err(LlmError::Invalid("max_tokens must be at least 1".into()));
            }
            let seed = match req.seed {
                Some(s) => s,
                None if self.cfg.seed != 0 => self.cfg.seed,
                None => rand::random(),
            };
            Ok(GenParams {
                temperature,
                top_p,
                max_tokens: max_tokens.min(engine.config().context as u32),
                seed,
                stop: req.stop.clone(),
            })
        }
    }

    fn role(r: ChatRole) -> &'static str {
        match r {
            ChatRole::System => "system",
            ChatRole::User => "user",
            ChatRole::Assistant => "assistant",
            ChatRole::Tool => "tool",
        }
    }

    /// While the answer is read out, the conversation with it is computed into the
    /// engine's prompt cache: the next turn's prompt repeats it, and would otherwise
    /// compute the whole answer again before its first token (a new generation stops
    /// this between chunks).
    fn warm_with_answer(engine: &Engine, mut messages: Vec<TemplateMessage>, answer: String) {
        messages.push(TemplateMessage {
            role: "assistant".into(),
            content: answer,
        });
        let started = std::time::Instant::now();
        match engine
            .prompt_tokens(&messages)
            .and_then(|tokens| engine.warm(&tokens, &|| false))
        {
            Ok(tokens) => tracing::debug!(
                tokens,
                ms = started.elapsed().as_secs_f64() * 1e3,
                "the answer is in the prompt cache"
            ),
            Err(e) => tracing::debug!(error = %e, "the answer was not put in the prompt cache"),
        }
    }

    fn gen_err(e: GenError) -> LlmError {
        LlmError::Invalid(e.to_string())
    }

    fn model_name(engine: &Engine, fallback: &str) -> String {
        engine
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| fallback.to_string())
    }

    #[async_trait::async_trait]
    impl LlmProvider for LocalProvider {
        fn name(&self) -> &str {
            "local"
        }

        fn default_model(&self) -> String {
            self.cfg.model.clone()
        }

        async fn chat_stream(&self, req: ChatRequest) -> Result<ChatStream, LlmError> {
            if req.messages.is_empty() {
                return Err(LlmError::Invalid("no messages".into()));
            }
            let engine = self.engine_for(req.model.as_deref()).await?;
            let params = self.params(&req, &engine)?;
            if !req.tools.is_empty() {
                tracing::debug!(
                    tools = req.tools.len(),
                    "the local model is not offered tools; it answers in text"
                );
            }
            let messages: Vec<TemplateMessage> = req
                .messages
                .iter()
                .map(|m| TemplateMessage {
                    role: role(m.role).into(),
                    content: m.content.clone(),
                })
                .collect();
            let (tx, rx) = mpsc::unbounded_channel::<Result<StreamChunk, LlmError>>();
            std::thread::Builder::new()
                .name("coda-llm-gen".into())
                .spawn(move || {
                    let prompt = match engine.prompt_tokens(&messages) {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = tx.send(Err(gen_err(e)));
                            return;
                        }
                    };
                    let cancelled = || tx.is_closed();
                    let mut send =
                        |text: &str| tx.send(Ok(StreamChunk::Token(text.into()))).is_ok();
                    let answer = match engine.generate(&prompt, &params, &cancelled, &mut send) {
                        Ok(out) => {
                            tracing::debug!(
                                prompt_tokens = out.prompt_tokens,
                                reused_tokens = out.reused_tokens,
                                completion_tokens = out.completion_tokens,
                                ttft_ms = out.time_to_first_token.as_secs_f64() * 1e3,
                                decode_s = out.decode_time.as_secs_f64(),
                                finish = ?out.finish,
                                "local generation done"
                            );
                            let finish_reason = match out.finish {
                                Finish::Stop => FinishReason::Stop,
                                Finish::Length => FinishReason::Length,
                                Finish::Cancelled => FinishReason::Cancelled,
                            };
                            let _ = tx.send(Ok(StreamChunk::Done {
                                finish_reason,
                                usage: Some(Usage {
                                    prompt_tokens: out.prompt_tokens as u32,
                                    completion_tokens: out.completion_tokens as u32,
                                }),
                            }));
                            (out.finish != Finish::Cancelled).then_some(out.text)
                        }
                        Err(e) => {
                            let _ = tx.send(Err(gen_err(e)));
                            None
                        }
                    };
                    // The stream ends here; the cache is filled after.
                    drop(tx);
                    if let Some(answer) = answer {
                        warm_with_answer(&engine, messages, answer);
                    }
                })
                .map_err(|e| {
                    LlmError::Unavailable(format!("cannot start a generation thread: {e}"))
                })?;
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            });
            Ok(stream.boxed())
        }

        async fn list_models(&self) -> Result<Vec<ModelInfo>, LlmError> {
            let store = self.cfg.store();
            let default_path = self.engine.path.clone();
            let mut out = vec![ModelInfo {
                id: self.cfg.model.clone(),
                name: self.engine.name.clone(),
                provider: "local".into(),
                context_length: Some(self.engine.config().context as u32),
                size_bytes: std::fs::metadata(&default_path).ok().map(|m| m.len()),
                details: Some(serde_json::json!({
                    "path": default_path,
                    "loaded": true,
                    "arch": self.engine.config().arch,
                    "threads": self.engine.threads(),
                    "kernel": format!("{:?}", self.engine.kernel()),
                    "chat_template": if self.engine.template.from_gguf { "gguf" } else { "chatml fallback" },
                })),
            }];
            // Other chat models in the store can be named in requests too.
            if let Ok(entries) = store.list() {
                for e in entries {
                    if e.kind == ModelKind::Llm
                        && e.name != self.cfg.model
                        && store.path_of(&e) != default_path
                    {
                        out.push(ModelInfo {
                            id: e.name.clone(),
                            name: None,
                            provider: "local".into(),
                            context_length: None,
                            size_bytes: Some(e.size),
                            details: Some(serde_json::json!({
                                "path": store.path_of(&e),
                                "loaded": false,
                                "format": e.format,
                            })),
                        });
                    }
                }
            }
            Ok(out)
        }

        async fn health(&self) -> Result<Health, LlmError> {
            Ok(Health {
                ok: true,
                latency_ms: 0.0,
                detail: format!(
                    "{} loaded from {} ({} threads, {:?} kernel)",
                    model_name(&self.engine, &self.cfg.model),
                    self.engine.path.display(),
                    self.engine.threads(),
                    self.engine.kernel()
                ),
            })
        }
    }
}

#[cfg(all(test, not(feature = "local-llm")))]
mod tests {
    use super::*;

    #[test]
    fn without_the_feature_local_is_unavailable() {
        match local_provider(&LocalLlmConfig::default()) {
            Err(LlmError::Unavailable(msg)) => assert!(msg.contains("local-llm"), "{msg}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
}
