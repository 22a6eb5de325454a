//! From the `[llm]` config section (and `--provider` / `--model`) to a running provider
//! chain for the CLI's LLM commands, with fallbacks announced on stderr.

use std::path::PathBuf;
use std::sync::Arc;

use coda_actors::cluster::pool::{PoolLink, PoolSettings};
use coda_actors::llm::http::HttpOptions;
use coda_actors::llm::oci::auth as oci_auth;
use coda_actors::llm::oci::OciConfig;
use coda_actors::llm::ollama::OllamaConfig;
use coda_actors::llm::openai::OpenAiConfig;
use coda_actors::llm::registry::{self, Chain, FallbackNotice, LlmSettings, LocalSettings};
use coda_actors::llm::GenerationDefaults;

use crate::config::{LlmConfig, OverrideValue, Settings};

/// `--provider` / `--model`, shared by `ask`, `chat` and `models`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ProviderArgs {
    /// Provider for this command: local, ollama, openai, oci or pool (llm.provider).
    #[arg(long, value_name = "P")]
    pub provider: Option<String>,
    /// Model for this command (the provider's configured model otherwise).
    #[arg(long, value_name = "M")]
    pub model: Option<String>,
}

impl ProviderArgs {
    /// Config overrides these flags make.
    pub fn overrides(&self) -> Vec<(String, OverrideValue, String)> {
        self.provider
            .iter()
            .map(|p| {
                (
                    "llm.provider".to_string(),
                    OverrideValue::Str(p.clone()),
                    "--provider".to_string(),
                )
            })
            .collect()
    }
}

/// The registry's settings for `cfg`, with `model` for the primary provider.
pub fn llm_settings(cfg: &LlmConfig, model: Option<String>) -> LlmSettings {
    let http = HttpOptions {
        connect_timeout: Settings::secs(cfg.connect_timeout_s),
        idle_timeout: Settings::secs(cfg.idle_timeout_s),
        max_retries: cfg.max_retries,
        ..HttpOptions::default()
    };
    let api_key = if !cfg.openai.api_key.is_empty() {
        Some(cfg.openai.api_key.clone())
    } else if !cfg.openai.api_key_env.is_empty() {
        std::env::var(&cfg.openai.api_key_env)
            .ok()
            .filter(|k| !k.is_empty())
    } else {
        None
    };
    LlmSettings {
        provider: cfg.provider,
        model: model.filter(|m| !m.is_empty()),
        fallback: cfg.fallback.clone(),
        defaults: GenerationDefaults {
            temperature: Some(cfg.temperature),
            top_p: Some(cfg.top_p),
            max_tokens: Some(cfg.max_tokens),
            seed: (cfg.seed != 0).then_some(cfg.seed),
        },
        local: LocalSettings {
            model: cfg.model.clone(),
            threads: cfg.threads,
        },
        ollama: OllamaConfig {
            base_url: cfg.ollama.base_url.clone(),
            model: cfg.ollama.model.clone(),
            http: http.clone(),
        },
        openai: OpenAiConfig {
            base_url: cfg.openai.base_url.clone(),
            api_key,
            model: cfg.openai.model.clone(),
            include_usage: true,
            http: http.clone(),
        },
        oci: OciConfig {
            config_file: if cfg.oci.config_file.trim().is_empty() {
                oci_auth::default_config_file()
            } else {
                oci_auth::expand_tilde(cfg.oci.config_file.trim())
            },
            profile: if cfg.oci.profile.trim().is_empty() {
                "DEFAULT".into()
            } else {
                cfg.oci.profile.trim().to_string()
            },
            region: cfg.oci.region.clone(),
            compartment_id: cfg.oci.compartment_id.clone(),
            auth: cfg.oci.auth,
            model: cfg.oci.model.clone(),
            endpoint: cfg.oci.endpoint.clone(),
            management_endpoint: cfg.oci.management_endpoint.clone(),
            cache_dir: Some(cache_dir()),
            http,
        },
        // A connection made on first use; `coda serve` puts its own cluster link here.
        pool: cfg.pool.as_ref().map(|p| {
            PoolLink::lazy(
                &p.nats_url,
                &p.node,
                PoolSettings {
                    wait: Settings::secs(p.wait_s),
                    ..Default::default()
                },
            )
        }),
    }
}

/// `$XDG_CACHE_HOME/coda`.
pub fn cache_dir() -> PathBuf {
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("coda")
}

/// `$XDG_DATA_HOME/coda`.
pub fn data_dir() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("coda")
}

/// The line printed on stderr for every fallback.
pub fn notice_line(n: &FallbackNotice) -> String {
    format!("coda: warning: {n}")
}

/// Builds the chain, announcing fallbacks on stderr.
pub fn build_chain(s: &LlmSettings) -> anyhow::Result<Arc<Chain>> {
    let hook: registry::NoticeHook = Arc::new(|n: &FallbackNotice| eprintln!("{}", notice_line(n)));
    Ok(Arc::new(registry::build(s, None, Some(hook))?))
}

/// A runtime for an interactive command: one worker thread that keeps running between
/// turns, so a cancelled answer's connection is closed at once (with a current-thread
/// runtime, nothing would run while the REPL waits for input).
pub fn background_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?)
}

/// A runtime for one CLI command (single thread: the work is one HTTP stream).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load, LoadOptions};
    use coda_actors::llm::registry::ProviderKind;

    #[test]
    fn settings_follow_the_config() {
        let mut cfg = load(&LoadOptions::hermetic()).unwrap().settings.llm;
        cfg.provider = ProviderKind::Oci;
        cfg.fallback = vec![ProviderKind::Ollama];
        cfg.openai.api_key = "sk-direct".into();
        cfg.connect_timeout_s = 1.5;
        cfg.max_retries = 4;
        let s = llm_settings(&cfg, Some("grok-3".into()));
        assert_eq!(s.provider, ProviderKind::Oci);
        assert_eq!(s.model.as_deref(), Some("grok-3"));
        assert_eq!(s.fallback, vec![ProviderKind::Ollama]);
        assert_eq!(s.openai.api_key.as_deref(), Some("sk-direct"));
        assert_eq!(
            s.ollama.http.connect_timeout,
            std::time::Duration::from_millis(1500)
        );
        assert_eq!(s.oci.http.max_retries, 4);
        assert_eq!(s.oci.profile, "DEFAULT");
        assert_eq!(s.oci.auth, oci_auth::OciAuth::Auto);
        assert!(s.oci.cache_dir.is_some());
        // seed 0 means "not fixed": nothing is sent.
        assert_eq!(s.defaults.seed, None);
        assert_eq!(s.defaults.max_tokens, Some(cfg.max_tokens));
        cfg.seed = 42;
        cfg.openai.api_key.clear();
        cfg.openai.api_key_env.clear();
        let s = llm_settings(&cfg, Some(String::new()));
        assert_eq!(s.defaults.seed, Some(42));
        assert_eq!(s.openai.api_key, None);
        assert_eq!(s.model, None);
    }

    #[test]
    fn bad_llm_config_names_the_key() {
        let env = |k: &str, v: &str| LoadOptions {
            env: Some([(k.to_string(), v.to_string())].into_iter().collect()),
            no_user_files: true,
            ..Default::default()
        };
        for (k, v, key) in [
            ("CODA__LLM__PROVIDER", "gpt", "llm.provider"),
            ("CODA__LLM__FALLBACK", "ollama,nope", "llm.fallback"),
            ("CODA__LLM__TEMPERATURE", "3", "llm.temperature"),
            ("CODA__LLM__IDLE_TIMEOUT_S", "0", "llm.idle_timeout_s"),
            ("CODA__LLM__OCI__AUTH", "password", "llm.oci.auth"),
            ("CODA__LLM__OPENAI__BASE", "x", "llm.openai.base"),
        ] {
            let e = load(&env(k, v)).unwrap_err().to_string();
            assert!(e.contains(key), "{k}={v}: {e}");
        }
        let l = load(&env("CODA__LLM__FALLBACK", "ollama,local")).unwrap();
        assert_eq!(
            l.settings.llm.fallback,
            vec![ProviderKind::Ollama, ProviderKind::Local]
        );
    }
}
