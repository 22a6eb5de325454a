//! The provider registry: builds the provider `llm.provider` names and wraps it in the
//! fallback chain `llm.fallback`. When a provider is unavailable (cannot be reached, timed
//! out, or is not set up) the chain moves to the next one — before any token was
//! produced, never midway — and says so every time: a `llm_error` event with level
//! `warning` and code `provider_fallback` through the hub (when there is one), a `warn`
//! log line, and the caller's notice hook (the CLI prints a line on stderr).

use std::fmt;
use std::sync::{Arc, Mutex};

use coda_protocol::events::{Level, LlmError as LlmErrorEvent};

use super::oci::{OciConfig, OciProvider};
use super::ollama::{OllamaConfig, OllamaProvider};
use super::openai::{OpenAiConfig, OpenAiProvider};
use super::{
    ChatRequest, ChatStream, GenerationDefaults, Health, LlmError, LlmProvider, ModelInfo, Served,
};
use crate::cluster::pool::{PoolLink, PoolProvider};
use crate::hub::HubHandle;

/// A provider `llm.provider` and `llm.fallback` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum ProviderKind {
    /// The embedded GGUF model.
    Local,
    Ollama,
    /// An OpenAI-compatible server (OpenAI, LiteLLM, vLLM, llama.cpp's server, …).
    #[serde(rename = "openai")]
    OpenAi,
    /// Oracle OCI Generative AI.
    Oci,
    /// The LLM pool: whichever core of the cluster is free answers (over NATS).
    Pool,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 5] = [
        ProviderKind::Local,
        ProviderKind::Ollama,
        ProviderKind::OpenAi,
        ProviderKind::Oci,
        ProviderKind::Pool,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Local => "local",
            ProviderKind::Ollama => "ollama",
            ProviderKind::OpenAi => "openai",
            ProviderKind::Oci => "oci",
            ProviderKind::Pool => "pool",
        }
    }

    /// `local, ollama, openai, oci, pool` (for messages).
    pub fn known() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }
}

// Through `FromStr`, so a bad config value is answered with the known names.
impl TryFrom<String> for ProviderKind {
    type Error = UnknownProvider;
    fn try_from(name: String) -> Result<ProviderKind, UnknownProvider> {
        name.parse()
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is no provider.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unknown LLM provider `{0}` (known: {known})", known = ProviderKind::known())]
pub struct UnknownProvider(pub String);

impl std::str::FromStr for ProviderKind {
    type Err = UnknownProvider;
    fn from_str(name: &str) -> Result<ProviderKind, UnknownProvider> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == name)
            .ok_or_else(|| UnknownProvider(name.to_string()))
    }
}

/// Settings of the embedded model (`[llm]` keys the `local` provider reads).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LocalSettings {
    /// Model name (`llm.model`).
    pub model: String,
    /// Inference threads (`llm.threads`, 0 = automatic).
    pub threads: usize,
}

/// Everything the registry needs, already resolved from config, environment and flags.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmSettings {
    /// The primary provider.
    pub provider: ProviderKind,
    /// Model for the primary provider, overriding its configured one (`--model`).
    pub model: Option<String>,
    /// Providers to try, in order, when the previous one is unavailable.
    pub fallback: Vec<ProviderKind>,
    /// Sampling settings applied to requests that leave them unset.
    pub defaults: GenerationDefaults,
    pub local: LocalSettings,
    pub ollama: OllamaConfig,
    pub openai: OpenAiConfig,
    pub oci: OciConfig,
    /// The LLM pool's connection (`[cluster]`); `None` where there is none.
    pub pool: Option<PoolLink>,
}

impl Default for LlmSettings {
    fn default() -> Self {
        LlmSettings {
            provider: ProviderKind::Local,
            model: None,
            fallback: Vec::new(),
            defaults: GenerationDefaults::default(),
            local: LocalSettings::default(),
            ollama: OllamaConfig::default(),
            openai: OpenAiConfig::default(),
            oci: OciConfig::default(),
            pool: None,
        }
    }
}

/// A move down the fallback chain.
#[derive(Debug, Clone, PartialEq)]
pub struct FallbackNotice {
    /// The provider that was unavailable.
    pub from: ProviderKind,
    /// The provider tried next.
    pub to: ProviderKind,
    /// Why `from` was skipped.
    pub error: LlmError,
}

impl fmt::Display for FallbackNotice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "provider `{}` is unavailable ({}); falling back to `{}`",
            self.from, self.error, self.to
        )
    }
}

/// Called on every fallback (the CLI prints it on stderr).
pub type NoticeHook = Arc<dyn Fn(&FallbackNotice) + Send + Sync>;

/// Builds one provider.
pub fn build_one(kind: ProviderKind, s: &LlmSettings) -> Result<Arc<dyn LlmProvider>, LlmError> {
    Ok(match kind {
        ProviderKind::Local => return build_local(s),
        ProviderKind::Ollama => Arc::new(OllamaProvider::new(s.ollama.clone())?),
        ProviderKind::OpenAi => Arc::new(OpenAiProvider::new(s.openai.clone())?),
        ProviderKind::Oci => Arc::new(OciProvider::new(s.oci.clone())?),
        ProviderKind::Pool => match &s.pool {
            Some(link) => Arc::new(PoolProvider::new(link.clone())),
            None => return Err(LlmError::Unavailable(
                "the `pool` provider asks the cluster's cores over NATS: it needs cluster.nats_url"
                    .into(),
            )),
        },
    })
}

/// The embedded GGUF model (loads it now, about a second for the default model; shared
/// with every other provider naming the same file). Without the `local-llm` feature this
/// is `Unavailable`, saying so.
pub fn build_local(s: &LlmSettings) -> Result<Arc<dyn LlmProvider>, LlmError> {
    let primary = s.provider == ProviderKind::Local;
    let d = &s.defaults;
    let fallback = super::local::LocalLlmConfig::default();
    super::local::local_provider(&super::local::LocalLlmConfig {
        // `--model` names the primary provider's model.
        model: s
            .model
            .clone()
            .filter(|_| primary)
            .unwrap_or_else(|| s.local.model.clone()),
        models_dir: None,
        temperature: d.temperature.unwrap_or(fallback.temperature),
        top_p: d.top_p.unwrap_or(fallback.top_p),
        max_tokens: d.max_tokens.unwrap_or(fallback.max_tokens),
        seed: d.seed.unwrap_or(0),
        threads: s.local.threads,
    })
}

/// One link of the chain: a built provider, or why it could not be built.
#[derive(Debug)]
struct Slot {
    name: ProviderKind,
    provider: Result<Arc<dyn LlmProvider>, LlmError>,
}

/// The configured provider with its fallback chain, itself an [`LlmProvider`].
pub struct Chain {
    slots: Vec<Slot>,
    model: Option<String>,
    defaults: GenerationDefaults,
    hub: Option<HubHandle>,
    hook: Option<NoticeHook>,
    /// (provider, model) of the last answer that started.
    last: Mutex<Option<(String, String)>>,
}

impl fmt::Debug for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chain")
            .field("slots", &self.slots)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

/// Builds the chain `s` describes. A primary provider that cannot be built is an error
/// right away when there is no fallback to go to (so `coda ask` fails fast and clearly);
/// with a fallback, it is skipped — with a notice — when used.
pub fn build(
    s: &LlmSettings,
    hub: Option<HubHandle>,
    hook: Option<NoticeHook>,
) -> Result<Chain, LlmError> {
    let mut names = vec![s.provider];
    for f in &s.fallback {
        if !names.contains(f) {
            names.push(*f);
        }
    }
    let slots: Vec<Slot> = names
        .into_iter()
        .map(|name| Slot {
            provider: build_one(name, s),
            name,
        })
        .collect();
    if slots.len() == 1 {
        if let Err(e) = &slots[0].provider {
            return Err(e.clone());
        }
    }
    Ok(Chain {
        slots,
        model: s.model.clone().filter(|m| !m.is_empty()),
        defaults: s.defaults,
        hub,
        hook,
        last: Mutex::new(None),
    })
}

impl Chain {
    /// Providers in the order they are tried.
    pub fn names(&self) -> Vec<ProviderKind> {
        self.slots.iter().map(|s| s.name).collect()
    }

    /// The (provider, model) of the last answer that started streaming.
    pub fn answered_by(&self) -> Option<(String, String)> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn primary(&self) -> Result<&Arc<dyn LlmProvider>, LlmError> {
        self.slots[0].provider.as_ref().map_err(Clone::clone)
    }

    fn announce(&self, notice: &FallbackNotice) {
        tracing::warn!(from = %notice.from, to = %notice.to, error = %notice.error, "LLM provider fallback");
        if let Some(hub) = &self.hub {
            hub.publish(
                "system",
                &LlmErrorEvent {
                    turn_id: None,
                    code: "provider_fallback".into(),
                    message: notice.to_string(),
                    level: Level::Warning,
                },
            );
        }
        if let Some(hook) = &self.hook {
            hook(notice);
        }
    }
}

#[async_trait::async_trait]
impl LlmProvider for Chain {
    fn name(&self) -> &str {
        self.slots[0].name.as_str()
    }

    fn default_model(&self) -> String {
        if let Some(m) = &self.model {
            return m.clone();
        }
        self.primary()
            .map(|p| p.default_model())
            .unwrap_or_default()
    }

    async fn chat_stream(&self, req: ChatRequest) -> Result<ChatStream, LlmError> {
        Ok(self.chat_stream_served(req).await?.stream)
    }

    async fn chat_stream_served(&self, mut req: ChatRequest) -> Result<Served, LlmError> {
        self.defaults.apply(&mut req);
        let explicit = req.named_model().map(str::to_string);
        let n = self.slots.len();
        for (i, slot) in self.slots.iter().enumerate() {
            let mut r = req.clone();
            // The named model belongs to the primary provider; the others use their own.
            r.model = if i == 0 {
                explicit.clone().or_else(|| self.model.clone())
            } else {
                None
            };
            let attempt = match &slot.provider {
                Ok(p) => p.chat_stream_served(r).await,
                Err(e) => Err(e.clone()),
            };
            match attempt {
                Ok(served) => {
                    *self.last.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some((served.provider.clone(), served.model.clone()));
                    return Ok(served);
                }
                Err(e) if e.is_unavailable() && i + 1 < n => self.announce(&FallbackNotice {
                    from: slot.name,
                    to: self.slots[i + 1].name,
                    error: e,
                }),
                Err(e) => return Err(e),
            }
        }
        // The loop returns on the last slot whatever happens; an empty chain cannot be built.
        Err(LlmError::Unavailable("no LLM provider configured".into()))
    }

    async fn list_models(&self) -> Result<Vec<ModelInfo>, LlmError> {
        self.primary()?.list_models().await
    }

    async fn refresh_models(&self) -> Result<Vec<ModelInfo>, LlmError> {
        self.primary()?.refresh_models().await
    }

    async fn model_info(&self, model: &str) -> Result<ModelInfo, LlmError> {
        self.primary()?.model_info(model).await
    }

    async fn health(&self) -> Result<Health, LlmError> {
        self.primary()?.health().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_are_refused() {
        let e = "gpt".parse::<ProviderKind>().unwrap_err();
        assert!(e.to_string().contains("local, ollama, openai, oci"), "{e}");
        for k in ProviderKind::ALL {
            assert_eq!(k.as_str().parse::<ProviderKind>().unwrap(), k);
            let json = serde_json::to_value(k).unwrap();
            assert_eq!(json, k.as_str(), "serde and as_str agree");
        }
    }

    #[test]
    fn local_alone_fails_fast_with_its_reason() {
        let s = LlmSettings {
            local: LocalSettings {
                model: "/nonexistent/model.gguf".into(),
                threads: 1,
            },
            ..Default::default()
        };
        let e = build(&s, None, None).unwrap_err();
        assert_eq!(e.code(), "unavailable");
        let why = if cfg!(feature = "local-llm") {
            "does not exist"
        } else {
            "built without the local-llm feature"
        };
        assert!(e.to_string().contains(why), "{e}");
    }

    #[test]
    fn chain_dedupes_and_keeps_order() {
        let s = LlmSettings {
            provider: ProviderKind::OpenAi,
            fallback: vec![
                ProviderKind::Ollama,
                ProviderKind::OpenAi,
                ProviderKind::Local,
            ],
            ..Default::default()
        };
        let c = build(&s, None, None).unwrap();
        assert_eq!(
            c.names(),
            vec![
                ProviderKind::OpenAi,
                ProviderKind::Ollama,
                ProviderKind::Local
            ]
        );
    }
}
