//! Configuration: one typed tree, layered as ARCHITECTURE.md says — built-in defaults
//! (config/default.toml, compiled in) < user file < profile < `CODA__SECTION__KEY`
//! environment < command-line flags — with the source of every value remembered for
//! `coda config show`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use coda_actors::llm::oci::auth::OciAuth;
use coda_actors::llm::registry::ProviderKind;
use coda_actors::tools::Permission;
use config::{Config, Environment, File, FileFormat};
use serde::{Deserialize, Serialize};

/// The built-in defaults.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Profiles shipped in the binary (`config/profiles/*.toml`).
pub const BUILTIN_PROFILES: &[(&str, &str)] = &[
    ("dev", include_str!("../config/profiles/dev.toml")),
    ("remote", include_str!("../config/profiles/remote.toml")),
];

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub workers: usize,
    pub max_frame_bytes: usize,
    pub max_queue: usize,
    pub max_queue_bytes: usize,
    pub max_lag_ms: u64,
    pub max_connections_per_ip: usize,
    pub connect_rate_per_ip: f64,
    pub rate_limit_per_s: f64,
    pub rate_limit_burst: u32,
    pub max_violations: u32,
    pub ping_interval_s: f64,
    pub ping_timeout_s: f64,
    pub hello_wait_ms: u64,
    pub shutdown_grace_s: f64,
    pub allowed_hosts: Vec<String>,
    pub allowed_origins: Vec<String>,
}

/// `[auth]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub required: bool,
    pub timeout_s: f64,
    pub token_file: String,
}

/// `[events]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    pub replay_size: usize,
    pub resume_max_events: usize,
    pub resume_max_age_s: f64,
}

/// `[cluster]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub nats_url: String,
    pub node: String,
    pub stream: String,
    pub max_events: i64,
    pub max_age_s: f64,
    pub outbox_max_events: usize,
    pub outbox_dir: String,
    pub llm_pool: bool,
    pub llm_pool_capacity: usize,
    pub llm_pool_wait_s: f64,
}

/// `[wyoming]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WyomingConfig {
    pub enabled: bool,
    pub host: String,
    pub port: u16,
    pub allow_remote: bool,
    pub max_connections: usize,
}

/// `[conversation]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConversationConfig {
    pub system_prompt: String,
    pub history_turns: usize,
    pub max_tokens: u32,
    pub speak_first_clause: bool,
    pub max_sessions: usize,
    pub max_turns_in_flight: usize,
    pub follow_up_s: f64,
    pub llm_tools: bool,
    pub max_tool_rounds: u32,
}

/// `[tts]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtsConfig {
    pub engine: coda_actors::tts::registry::EngineKind,
    pub binary: String,
    pub voice: String,
    pub rate: u32,
    pub play: bool,
    pub stream_audio: bool,
    pub fallback: SpeechFallback,
    pub timeout_s: f64,
    pub elevenlabs: TtsElevenLabsConfig,
    pub openai: TtsOpenAiConfig,
}

/// `tts.fallback`: what speaks when a remote engine fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub enum SpeechFallback {
    /// `""`: the turn's speech fails with `tts_error`.
    #[serde(rename = "")]
    None,
    #[serde(rename = "espeak-ng")]
    EspeakNg,
}

impl TryFrom<String> for SpeechFallback {
    type Error = String;
    fn try_from(s: String) -> Result<SpeechFallback, String> {
        match s.as_str() {
            "" => Ok(SpeechFallback::None),
            "espeak-ng" | "espeak" => Ok(SpeechFallback::EspeakNg),
            other => Err(format!(
                "`{other}` is not a fallback: \"espeak-ng\" or \"\" (none)"
            )),
        }
    }
}

/// `[tts.elevenlabs]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtsElevenLabsConfig {
    pub base_url: String,
    pub api_key_env: String,
    pub voice_id: String,
    pub model_id: String,
    pub output_format: String,
}

/// `[tts.openai]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtsOpenAiConfig {
    pub base_url: String,
    pub api_key_env: String,
    pub model: String,
    pub voice: String,
    pub response_format: String,
}

/// `[audio]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioConfig {
    pub enabled: bool,
    pub listen: ListenMode,
    pub barge_in: bool,
    pub echo_cancel: bool,
    pub input_device: String,
    pub output_device: String,
    pub vad_start_db: f32,
    pub vad_stop_db: f32,
    pub vad_min_dbfs: f32,
    pub vad_start_ms: u32,
    pub silence_ms: u32,
    pub settle_ms: u32,
    pub quick_silence_ms: u32,
    pub preroll_ms: u32,
    pub max_utterance_s: f64,
    pub interim_ms: u32,
    pub max_client_streams: usize,
}

/// `audio.listen`: how `coda serve` listens on its own input device from the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum ListenMode {
    /// Only when a client sends `stt_start {"source":"device"}`.
    Off,
    /// For the wake word.
    Wake,
    /// Every utterance.
    Continuous,
}

impl TryFrom<String> for ListenMode {
    type Error = String;
    fn try_from(s: String) -> Result<ListenMode, String> {
        match s.as_str() {
            "off" => Ok(ListenMode::Off),
            "wake" => Ok(ListenMode::Wake),
            "continuous" => Ok(ListenMode::Continuous),
            other => Err(format!(
                "`{other}` is not \"off\", \"wake\" or \"continuous\""
            )),
        }
    }
}

/// `[wake]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WakeConfig {
    pub word: String,
    pub reference: String,
    pub threshold: f32,
    pub synthesize_missing: bool,
    pub verify: bool,
    pub verify_threshold: f32,
    pub candidate_threshold: f32,
    pub early_check: bool,
}

/// `[stt]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SttConfig {
    pub model: String,
    pub language: String,
    pub threads: usize,
    pub preload: bool,
    pub interim_interval_ms: u64,
    pub max_utterance_s: f64,
}

/// `[kernel]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelConfig {
    pub max_restarts: u32,
    pub restart_period_s: f64,
}

/// `[storage]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub path: String,
}

/// `[memory]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    pub context_token_budget: usize,
    pub recent_turns: usize,
    pub summary_token_budget: usize,
    pub search_limit: usize,
    pub default_limit: usize,
}

/// `[tools]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsConfig {
    pub default_timeout_s: f64,
    pub max_output_bytes: usize,
    pub default_permission: Permission,
    pub permissions: BTreeMap<String, Permission>,
    /// The project of the coding tools ("" = the working directory).
    pub project_root: String,
    pub files: ToolFilesConfig,
    pub shell: ToolShellConfig,
}

/// `[mcp]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    pub servers: BTreeMap<String, McpServerConfig>,
    pub connect_timeout_s: f64,
    pub call_timeout_s: f64,
    pub max_result_bytes: usize,
    pub serve: McpServeConfig,
}

/// `[mcp.servers.NAME]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct McpServerConfig {
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: String,
    pub url: String,
    pub bearer_token: String,
    pub bearer_token_env: String,
    pub permissions: BTreeMap<String, Permission>,
    pub enabled: Option<bool>,
}

/// `[mcp.serve]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServeConfig {
    pub allow_ask: bool,
    pub http: bool,
}

impl McpConfig {
    /// The enabled servers' settings; `project` is their root and default directory.
    /// Problems (a token variable that is not set) are errors naming the key.
    pub fn server_settings(
        &self,
        project: &std::path::Path,
        tools: &ToolsConfig,
    ) -> Result<Vec<coda_actors::mcp::McpServerSettings>, ConfigError> {
        use coda_actors::mcp::{McpServerSettings, McpTransport};
        let mut out = Vec::new();
        for (name, c) in &self.servers {
            if c.enabled == Some(false) {
                continue;
            }
            let key = |k: &str| format!("mcp.servers.{name}.{k}");
            let transport = if !c.command.is_empty() {
                McpTransport::Stdio {
                    command: c.command.clone(),
                    args: c.args.clone(),
                    env: c.env.clone(),
                    cwd: Some(if c.cwd.is_empty() {
                        project.to_path_buf()
                    } else {
                        PathBuf::from(&c.cwd)
                    }),
                }
            } else {
                let token = if !c.bearer_token_env.is_empty() {
                    Some(std::env::var(&c.bearer_token_env).map_err(|_| {
                        invalid(
                            &key("bearer_token_env"),
                            format!("the environment variable {} is not set", c.bearer_token_env),
                        )
                    })?)
                } else {
                    Some(c.bearer_token.clone()).filter(|t| !t.is_empty())
                };
                McpTransport::Http {
                    url: c.url.clone(),
                    bearer_token: token,
                }
            };
            let mut s = McpServerSettings::new(name, transport);
            // tools.permissions with the full name wins over the server's own table.
            s.permissions = c.permissions.clone();
            let prefix = format!("{name}{}", coda_actors::tools::registry::GROUP_SEPARATOR);
            for (full, p) in &tools.permissions {
                if let Some(tool) = full.strip_prefix(&prefix) {
                    s.permissions.insert(tool.to_string(), *p);
                }
            }
            s.connect_timeout = Duration::from_secs_f64(self.connect_timeout_s);
            s.call_timeout = Duration::from_secs_f64(self.call_timeout_s);
            s.max_result_bytes = self.max_result_bytes;
            s.roots = vec![project.to_path_buf()];
            out.push(s);
        }
        Ok(out)
    }
}

/// `[tools.files]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolFilesConfig {
    pub max_read_bytes: usize,
    pub max_file_bytes: u64,
    pub max_search_results: usize,
    pub max_list_entries: usize,
    pub max_diff_bytes: usize,
    pub undo_dir: String,
    pub undo_depth: usize,
    pub undo_bytes: u64,
}

/// `[tools.shell]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolShellConfig {
    pub timeout_s: f64,
    pub max_timeout_s: f64,
    pub max_output_bytes: usize,
    pub max_stream_bytes: usize,
    pub kill_grace_s: f64,
    pub env: Vec<String>,
    pub default: Permission,
    pub allow: Vec<String>,
    pub ask: Vec<String>,
    pub deny: Vec<String>,
}

impl ToolsConfig {
    pub fn registry_settings(&self) -> coda_actors::tools::RegistrySettings {
        coda_actors::tools::RegistrySettings {
            default_timeout: Settings::secs(self.default_timeout_s),
            default_permission: self.default_permission,
            max_output_bytes: self.max_output_bytes,
        }
    }

    /// The project root: `project_root`, else the working directory.
    pub fn project_root(&self) -> PathBuf {
        if self.project_root.is_empty() {
            std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
        } else {
            PathBuf::from(&self.project_root)
        }
    }

    /// The file tools' settings for the project.
    pub fn workspace_settings(&self) -> coda_actors::tools::WorkspaceSettings {
        let f = &self.files;
        let undo_dir = if f.undo_dir.is_empty() {
            dirs::data_dir()
                .unwrap_or_else(std::env::temp_dir)
                .join("coda")
                .join("undo")
        } else {
            PathBuf::from(&f.undo_dir)
        };
        coda_actors::tools::WorkspaceSettings {
            root: self.project_root(),
            max_read_bytes: f.max_read_bytes,
            max_file_bytes: f.max_file_bytes,
            max_search_results: f.max_search_results,
            max_list_entries: f.max_list_entries,
            max_diff_bytes: f.max_diff_bytes,
            undo_dir,
            undo_depth: f.undo_depth,
            undo_bytes: f.undo_bytes,
        }
    }

    /// The shell's settings, rules compiled.
    pub fn shell_settings(
        &self,
    ) -> Result<coda_actors::tools::builtin::shell::ShellSettings, ConfigError> {
        let sh = &self.shell;
        let rules = coda_actors::tools::builtin::shell_rules::ShellRules::new(
            &sh.allow, &sh.ask, &sh.deny, sh.default,
        )
        .map_err(|e| invalid("tools.shell", e))?;
        Ok(coda_actors::tools::builtin::shell::ShellSettings {
            timeout: Settings::secs(sh.timeout_s),
            max_timeout: Settings::secs(sh.max_timeout_s),
            max_output_bytes: sh.max_output_bytes,
            max_stream_bytes: sh.max_stream_bytes,
            kill_grace: Settings::secs(sh.kill_grace_s),
            pass_env: sh.env.clone(),
            rules,
        })
    }
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

/// `log.format`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum LogFormat {
    Text,
    /// One JSON object per line.
    Json,
}

impl TryFrom<String> for LogFormat {
    type Error = String;
    fn try_from(s: String) -> Result<LogFormat, String> {
        match s.as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("`{other}` is not \"text\" or \"json\"")),
        }
    }
}

/// `[metrics]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub interval_s: f64,
    pub timing_interval_s: f64,
    pub window_s: f64,
    pub alerts: Vec<AlertConfig>,
}

/// One entry of `metrics.alerts`: `above` + `clear_below`, or `below` + `clear_above`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    pub metric: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_below: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_above: Option<f64>,
    #[serde(default)]
    pub for_s: f64,
    #[serde(default = "AlertConfig::default_level")]
    pub level: coda_protocol::Level,
}

impl AlertConfig {
    fn default_level() -> coda_protocol::Level {
        coda_protocol::Level::Warning
    }
}

impl MetricsConfig {
    /// The alert rules, validated; an error names the key, e.g. `metrics.alerts[1].clear_below`.
    pub fn alert_rules(&self) -> Result<Vec<coda_actors::metrics::alerts::AlertRule>, ConfigError> {
        use coda_actors::metrics::alerts::{AlertRule, AlertSpec};
        self.alerts
            .iter()
            .enumerate()
            .map(|(i, a)| {
                AlertRule::from_spec(&AlertSpec {
                    metric: &a.metric,
                    above: a.above,
                    clear_below: a.clear_below,
                    below: a.below,
                    clear_above: a.clear_above,
                    for_s: a.for_s,
                    level: a.level,
                })
                .map_err(|e| invalid(&format!("metrics.alerts[{i}].{}", e.field), e.problem))
            })
            .collect()
    }
}

/// `[telemetry]`: OpenTelemetry export (traces of every turn and the metrics, OTLP/HTTP).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The collector's base URL (`/v1/traces`, `/v1/metrics` are appended); empty =
    /// `$OTEL_EXPORTER_OTLP_ENDPOINT`, and nothing is exported when both are empty.
    pub endpoint: String,
    /// Extra HTTP headers on every export (e.g. an API key).
    pub headers: BTreeMap<String, String>,
    /// `service.name`; empty = `$OTEL_SERVICE_NAME`, else `coda`.
    pub service_name: String,
    /// Fraction of turns traced, 0–1.
    pub sampling_ratio: f64,
    /// Seconds between metric exports.
    pub export_interval_s: f64,
}

/// `[llm]`: the language model. The sampling keys apply to every provider (a request's own
/// values win); `model` and `threads` are the embedded (`local`) model's.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    pub provider: ProviderKind,
    pub model: String,
    pub temperature: f32,
    pub top_p: f32,
    pub max_tokens: u32,
    pub seed: u64,
    pub threads: usize,
    pub fallback: Vec<ProviderKind>,
    pub connect_timeout_s: f64,
    pub idle_timeout_s: f64,
    pub max_retries: u32,
    pub ollama: LlmOllamaConfig,
    pub openai: LlmOpenAiConfig,
    pub oci: LlmOciConfig,
    /// Prices per model (`[llm.prices."MODEL"]`), for the cost of usage.
    #[serde(default)]
    pub prices: BTreeMap<String, coda_actors::llm::usage::Price>,
    /// Where the `pool` provider asks: copied from `[cluster]` at load (not a key), so
    /// the CLI's LLM commands can use the pool too.
    #[serde(skip)]
    pub pool: Option<PoolTarget>,
}

/// The LLM pool as a requester sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolTarget {
    pub nats_url: String,
    /// This node's name (for the members' logs).
    pub node: String,
    pub wait_s: f64,
}

/// `[llm.ollama]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmOllamaConfig {
    pub base_url: String,
    pub model: String,
}

/// `[llm.openai]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmOpenAiConfig {
    pub base_url: String,
    pub api_key: String,
    pub api_key_env: String,
    pub model: String,
}

/// `[llm.oci]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmOciConfig {
    pub config_file: String,
    pub profile: String,
    pub region: String,
    pub compartment_id: String,
    pub auth: OciAuth,
    pub model: String,
    pub endpoint: String,
    pub management_endpoint: String,
}

/// `[models]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsConfig {
    pub dir: String,
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub events: EventsConfig,
    pub cluster: ClusterConfig,
    pub wyoming: WyomingConfig,
    pub conversation: ConversationConfig,
    pub tts: TtsConfig,
    pub kernel: KernelConfig,
    pub storage: StorageConfig,
    pub memory: MemoryConfig,
    pub tools: ToolsConfig,
    pub mcp: McpConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub telemetry: TelemetryConfig,
    pub llm: LlmConfig,
    pub models: ModelsConfig,
    pub stt: SttConfig,
    pub audio: AudioConfig,
    pub wake: WakeConfig,
}

impl Settings {
    /// The built-in defaults alone.
    pub fn defaults() -> Settings {
        // The compiled-in file is tested to parse (config::tests::defaults_parse).
        load(&LoadOptions::hermetic())
            .map(|l| l.settings)
            .unwrap_or_else(|e| panic!("built-in config/default.toml is invalid: {e}"))
    }

    /// The store directory.
    pub fn storage_dir(&self) -> PathBuf {
        if self.storage.path.is_empty() {
            dirs::data_dir()
                .unwrap_or_else(std::env::temp_dir)
                .join("coda")
                .join("store")
        } else {
            PathBuf::from(&self.storage.path)
        }
    }

    /// The per-boot token file for a server on `port`.
    pub fn token_file(&self, port: u16) -> PathBuf {
        if self.auth.token_file.is_empty() {
            coda_actors::auth::BootToken::default_path(port)
        } else {
            PathBuf::from(&self.auth.token_file)
        }
    }

    /// The model store (`models.dir`, default `$XDG_DATA_HOME/coda/models`).
    pub fn model_store(&self) -> coda_actors::models::ModelStore {
        coda_actors::models::ModelStore::at_or_default(&self.models.dir)
    }

    /// Duration helpers.
    pub fn secs(v: f64) -> Duration {
        Duration::from_secs_f64(v.max(0.0))
    }
}

/// Where the layers come from. `None` fields mean "the real environment".
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `--config FILE` (must exist).
    pub config_file: Option<PathBuf>,
    /// `--profile NAME` (else `CODA_PROFILE`).
    pub profile: Option<String>,
    /// Environment variables; `None` reads the process environment.
    pub env: Option<HashMap<String, String>>,
    /// The user config directory; `None` uses `$XDG_CONFIG_HOME/coda`.
    pub config_dir: Option<PathBuf>,
    /// Skip the user file and config directory entirely (tests, `defaults()`).
    pub no_user_files: bool,
    /// Flag overrides: (key, value, flag name).
    pub overrides: Vec<(String, OverrideValue, String)>,
}

/// A flag's value.
#[derive(Debug, Clone)]
pub enum OverrideValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl LoadOptions {
    /// Defaults only: no files, no environment.
    pub fn hermetic() -> LoadOptions {
        LoadOptions {
            env: Some(HashMap::new()),
            no_user_files: true,
            ..Default::default()
        }
    }
}

/// The loaded configuration with provenance.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub settings: Settings,
    /// Dotted key → where its value came from.
    pub sources: BTreeMap<String, String>,
    /// The active profile.
    pub profile: Option<String>,
}

impl Loaded {
    /// The effective configuration as JSON with secrets redacted.
    pub fn redacted_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.settings).unwrap_or(serde_json::Value::Null);
        redact(&mut v);
        v
    }
}

/// A configuration problem. Its message names the key (or file) and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    FileMissing(PathBuf),
    #[error("cannot read {source_name}: {message}")]
    Parse {
        source_name: String,
        message: String,
    },
    #[error("unknown profile `{name}` (built-in: {builtin}; user profiles are read from {dir})")]
    UnknownProfile {
        name: String,
        builtin: String,
        dir: String,
    },
    #[error(
        "unknown config key `{key}` (from {source_name}); see `coda config show` for every key"
    )]
    UnknownKey { key: String, source_name: String },
    #[error("config key `{key}`: {problem}")]
    Invalid { key: String, problem: String },
}

/// Loads and validates the configuration.
pub fn load(opts: &LoadOptions) -> Result<Loaded, ConfigError> {
    let env: HashMap<String, String> = match &opts.env {
        Some(e) => e.clone(),
        None => std::env::vars().collect(),
    };
    let config_dir = opts
        .config_dir
        .clone()
        .or_else(|| dirs::config_dir().map(|d| d.join("coda")));

    // Each layer is built alone first so we know which keys it sets.
    let mut layers: Vec<(String, Config)> = Vec::new();
    let default = Config::builder()
        .add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml))
        .build()
        .map_err(|e| parse_err("built-in defaults", e))?;
    layers.push(("default".into(), default));

    if let Some(path) = &opts.config_file {
        if !path.exists() {
            return Err(ConfigError::FileMissing(path.clone()));
        }
        layers.push((format!("file {}", path.display()), file_layer(path)?));
    } else if !opts.no_user_files {
        if let Some(dir) = &config_dir {
            let path = dir.join("config.toml");
            if path.exists() {
                layers.push((format!("file {}", path.display()), file_layer(&path)?));
            }
        }
    }

    let profile = opts
        .profile
        .clone()
        .or_else(|| env.get("CODA_PROFILE").cloned())
        .filter(|p| !p.is_empty());
    if let Some(name) = &profile {
        let user = (!opts.no_user_files)
            .then(|| {
                config_dir
                    .as_ref()
                    .map(|d| d.join("profiles").join(format!("{name}.toml")))
            })
            .flatten()
            .filter(|p| p.exists());
        if let Some(path) = user {
            layers.push((
                format!("profile {name} ({})", path.display()),
                file_layer(&path)?,
            ));
        } else if let Some((_, text)) = BUILTIN_PROFILES.iter().find(|(n, _)| n == name) {
            let layer = Config::builder()
                .add_source(File::from_str(text, FileFormat::Toml))
                .build()
                .map_err(|e| parse_err(&format!("built-in profile {name}"), e))?;
            layers.push((format!("profile {name} (built-in)"), layer));
        } else {
            return Err(ConfigError::UnknownProfile {
                name: name.clone(),
                builtin: BUILTIN_PROFILES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
                dir: config_dir
                    .map(|d| d.join("profiles").display().to_string())
                    .unwrap_or_else(|| "(no config dir)".into()),
            });
        }
    }

    let coda_env: HashMap<String, String> = env
        .iter()
        .filter(|(k, _)| k.starts_with("CODA__"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !coda_env.is_empty() {
        let layer = Config::builder()
            .add_source(env_source(coda_env))
            .build()
            .map_err(|e| parse_err("environment (CODA__*)", e))?;
        layers.push(("env".into(), layer));
    }

    if !opts.overrides.is_empty() {
        let mut b = Config::builder();
        for (key, value, _) in &opts.overrides {
            b = match value {
                OverrideValue::Str(s) => b.set_override(key.as_str(), s.clone()),
                OverrideValue::Int(i) => b.set_override(key.as_str(), *i),
                OverrideValue::Bool(v) => b.set_override(key.as_str(), *v),
            }
            .map_err(|e| parse_err("command line", e))?;
        }
        layers.push((
            "flags".into(),
            b.build().map_err(|e| parse_err("command line", e))?,
        ));
    }

    // Provenance, and unknown keys named with where they came from.
    let known = flatten_config(&layers[0].1)?;
    let mut sources = BTreeMap::new();
    for (label, layer) in &layers {
        for key in flatten_config(layer)?.into_keys() {
            if !known.contains_key(&key) && !OPEN_TABLES.iter().any(|t| key.starts_with(t)) {
                let source_name = if label == "env" {
                    format!(
                        "environment variable CODA__{}",
                        key.replace('.', "__").to_uppercase()
                    )
                } else {
                    label.clone()
                };
                return Err(ConfigError::UnknownKey { key, source_name });
            }
            let src = match label.as_str() {
                "env" => format!("env CODA__{}", key.replace('.', "__").to_uppercase()),
                "flags" => opts
                    .overrides
                    .iter()
                    .find(|(k, _, _)| *k == key)
                    .map(|(_, _, flag)| format!("flag {flag}"))
                    .unwrap_or_else(|| "flag".into()),
                other => other.to_string(),
            };
            sources.insert(key, src);
        }
    }

    let mut merged = Config::builder();
    for (_, layer) in layers {
        merged = merged.add_source(layer);
    }
    let merged = merged.build().map_err(|e| parse_err("merged config", e))?;
    let settings: Settings = merged.try_deserialize().map_err(|e| {
        let message = e.to_string();
        let key = extract_key(&message).unwrap_or_else(|| "?".into());
        // The key leads the message already.
        let problem = message
            .strip_suffix(&format!(" for key `{key}`"))
            .unwrap_or(&message)
            .to_string();
        ConfigError::Invalid { key, problem }
    })?;
    validate(&settings)?;
    let mut settings = settings;
    settings.llm.pool = settings.cluster_settings().map(|c| PoolTarget {
        nats_url: c.nats_url,
        node: c.node,
        wait_s: settings.cluster.llm_pool_wait_s,
    });
    Ok(Loaded {
        settings,
        sources,
        profile,
    })
}

fn env_source(vars: HashMap<String, String>) -> Environment {
    Environment::with_prefix("CODA")
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .list_separator(",")
        .with_list_parse_key("server.allowed_hosts")
        .with_list_parse_key("server.allowed_origins")
        .with_list_parse_key("llm.fallback")
        .source(Some(vars))
}

fn file_layer(path: &Path) -> Result<Config, ConfigError> {
    Config::builder()
        .add_source(File::from(path).format(FileFormat::Toml).required(true))
        .build()
        .map_err(|e| parse_err(&format!("{}", path.display()), e))
}

fn parse_err(source_name: &str, e: config::ConfigError) -> ConfigError {
    ConfigError::Parse {
        source_name: source_name.to_string(),
        message: e.to_string(),
    }
}

/// `... for key `server.port`` → `server.port`.
fn extract_key(message: &str) -> Option<String> {
    let i = message.find("for key `")?;
    let rest = &message[i + 9..];
    Some(rest[..rest.find('`')?].to_string())
}

fn validate_telemetry(t: &TelemetryConfig, llm: &LlmConfig) -> Result<(), ConfigError> {
    let e = t.endpoint.trim();
    let url = e.starts_with("http://") || e.starts_with("https://");
    if !e.is_empty() && !url {
        return Err(invalid(
            "telemetry.endpoint",
            "must be an http:// or https:// URL (OTLP/HTTP), e.g. http://127.0.0.1:4318",
        ));
    }
    if !(t.sampling_ratio.is_finite() && (0.0..=1.0).contains(&t.sampling_ratio)) {
        return Err(invalid(
            "telemetry.sampling_ratio",
            "must be between 0 and 1",
        ));
    }
    if !(t.export_interval_s.is_finite() && (0.1..=86_400.0).contains(&t.export_interval_s)) {
        return Err(invalid(
            "telemetry.export_interval_s",
            "must be between 0.1 and 86400 seconds",
        ));
    }
    for (model, p) in &llm.prices {
        for (field, v) in [
            ("input_per_mtok", p.input_per_mtok),
            ("output_per_mtok", p.output_per_mtok),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(invalid(
                    &format!("llm.prices.{model}.{field}"),
                    "must be a price of zero or more",
                ));
            }
        }
    }
    Ok(())
}

/// Tables whose keys are the user's own (server, tool, model and header names): any key
/// is taken there; their values are still checked when read.
const OPEN_TABLES: &[&str] = &[
    "mcp.servers.",
    "tools.permissions.",
    "llm.prices.",
    "telemetry.headers.",
];

fn flatten_config(c: &Config) -> Result<BTreeMap<String, serde_json::Value>, ConfigError> {
    let v: serde_json::Value = c
        .clone()
        .try_deserialize()
        .map_err(|e| parse_err("config layer", e))?;
    let mut out = BTreeMap::new();
    flatten("", &v, &mut out);
    Ok(out)
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

/// Flattened `key → value` of a JSON tree (for display).
pub fn flatten_json(v: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    flatten("", v, &mut out);
    out
}

/// Is this key a secret? (`api_key`, `password`, `secret`, `token` — but not the names of
/// files or environment variables that hold them.)
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    if k.ends_with("_file") || k.ends_with("_env") || k.ends_with("_path") {
        return false;
    }
    [
        "api_key",
        "apikey",
        "password",
        "secret",
        "token",
        "private_key",
    ]
    .iter()
    .any(|s| k.contains(s))
}

fn redact(v: &mut serde_json::Value) {
    if let serde_json::Value::Object(map) = v {
        for (k, val) in map.iter_mut() {
            // Export headers carry keys under any name (`authorization`, `x-api-key`).
            if k == "headers" {
                if let serde_json::Value::Object(h) = val {
                    for hv in h.values_mut() {
                        if matches!(hv, serde_json::Value::String(s) if !s.is_empty()) {
                            *hv = serde_json::Value::String("***redacted***".into());
                        }
                    }
                }
            } else if is_secret_key(k) {
                if matches!(val, serde_json::Value::String(s) if !s.is_empty()) {
                    *val = serde_json::Value::String("***redacted***".into());
                }
            } else {
                redact(val);
            }
        }
    }
}

fn invalid(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        problem: problem.into(),
    }
}

fn validate(s: &Settings) -> Result<(), ConfigError> {
    let sv = &s.server;
    if sv.host.trim().is_empty() {
        return Err(invalid("server.host", "must not be empty"));
    }
    if sv.workers > 256 {
        return Err(invalid("server.workers", "at most 256"));
    }
    if !(1024..=64 * 1024 * 1024).contains(&sv.max_frame_bytes) {
        return Err(invalid(
            "server.max_frame_bytes",
            "must be between 1024 and 67108864",
        ));
    }
    if sv.max_queue == 0 {
        return Err(invalid("server.max_queue", "must be at least 1"));
    }
    if !(64 * 1024..=1 << 30).contains(&sv.max_queue_bytes) {
        return Err(invalid(
            "server.max_queue_bytes",
            "must be between 65536 and 1073741824",
        ));
    }
    if !(1..=1_000_000).contains(&sv.max_connections_per_ip) {
        return Err(invalid(
            "server.max_connections_per_ip",
            "must be between 1 and 1000000",
        ));
    }
    if !(sv.connect_rate_per_ip.is_finite() && sv.connect_rate_per_ip >= 1.0) {
        return Err(invalid(
            "server.connect_rate_per_ip",
            "must be at least 1 connection a second",
        ));
    }
    if !(10..=600_000).contains(&sv.max_lag_ms) {
        return Err(invalid(
            "server.max_lag_ms",
            "must be between 10 and 600000 milliseconds",
        ));
    }
    if !(sv.rate_limit_per_s.is_finite() && sv.rate_limit_per_s > 0.0) {
        return Err(invalid(
            "server.rate_limit_per_s",
            "must be a positive number",
        ));
    }
    if sv.rate_limit_burst == 0 {
        return Err(invalid("server.rate_limit_burst", "must be at least 1"));
    }
    for (k, v) in [
        ("server.ping_interval_s", sv.ping_interval_s),
        ("server.ping_timeout_s", sv.ping_timeout_s),
        ("auth.timeout_s", s.auth.timeout_s),
        ("events.resume_max_age_s", s.events.resume_max_age_s),
    ] {
        if !(v.is_finite() && v > 0.0 && v < 1e7) {
            return Err(invalid(k, "must be a positive number of seconds"));
        }
    }
    if !(sv.shutdown_grace_s.is_finite() && (0.0..=60.0).contains(&sv.shutdown_grace_s)) {
        return Err(invalid(
            "server.shutdown_grace_s",
            "must be between 0 and 60",
        ));
    }
    if s.events.resume_max_events == 0 || s.events.resume_max_events > 10_000_000 {
        return Err(invalid(
            "events.resume_max_events",
            "must be between 1 and 10000000",
        ));
    }
    if s.events.replay_size > 100_000 {
        return Err(invalid("events.replay_size", "at most 100000"));
    }
    for (k, v) in [
        ("metrics.interval_s", s.metrics.interval_s),
        ("metrics.timing_interval_s", s.metrics.timing_interval_s),
        ("metrics.window_s", s.metrics.window_s),
    ] {
        if !(v.is_finite() && (0.1..=86_400.0).contains(&v)) {
            return Err(invalid(k, "must be between 0.1 and 86400 seconds"));
        }
    }
    s.metrics.alert_rules()?;
    validate_telemetry(&s.telemetry, &s.llm)?;
    if s.conversation.history_turns > 1000 {
        return Err(invalid("conversation.history_turns", "at most 1000"));
    }
    let c = &s.conversation;
    if !(1..=1_000).contains(&c.max_turns_in_flight) {
        return Err(invalid(
            "conversation.max_turns_in_flight",
            "must be between 1 and 1000",
        ));
    }
    if !(c.max_turns_in_flight..=1_000_000).contains(&c.max_sessions) {
        return Err(invalid(
            "conversation.max_sessions",
            "must be between conversation.max_turns_in_flight and 1000000",
        ));
    }
    validate_speech(s)?;
    if !(80..=500).contains(&s.tts.rate) {
        return Err(invalid(
            "tts.rate",
            "must be between 80 and 500 words per minute",
        ));
    }
    if !(s.kernel.restart_period_s.is_finite() && s.kernel.restart_period_s > 0.0) {
        return Err(invalid(
            "kernel.restart_period_s",
            "must be a positive number of seconds",
        ));
    }
    validate_memory_tools(s)?;
    validate_mcp(&s.mcp)?;
    validate_stt(&s.stt)?;
    validate_cluster(&s.cluster, &s.llm)?;
    validate_wyoming(&s.wyoming)?;
    validate_llm(&s.llm)
}

fn validate_cluster(c: &ClusterConfig, llm: &LlmConfig) -> Result<(), ConfigError> {
    let asks_pool =
        llm.provider == ProviderKind::Pool || llm.fallback.contains(&ProviderKind::Pool);
    if !(1..=64).contains(&c.llm_pool_capacity) {
        return Err(invalid(
            "cluster.llm_pool_capacity",
            "must be between 1 and 64",
        ));
    }
    if !(c.llm_pool_wait_s.is_finite() && (0.0..=3600.0).contains(&c.llm_pool_wait_s)) {
        return Err(invalid(
            "cluster.llm_pool_wait_s",
            "must be between 0 and 3600 seconds",
        ));
    }
    if c.nats_url.trim().is_empty() {
        if asks_pool {
            return Err(invalid(
                "cluster.nats_url",
                "llm.provider (or llm.fallback) names \"pool\", which sends requests to the cores of the LLM pool over NATS: set cluster.nats_url, e.g. nats://127.0.0.1:4222",
            ));
        }
        if c.llm_pool {
            return Err(invalid(
                "cluster.llm_pool",
                "a pool member takes requests over NATS: set cluster.nats_url too",
            ));
        }
        return Ok(());
    }
    if c.llm_pool && asks_pool {
        return Err(invalid(
            "cluster.llm_pool",
            "a pool member answers with its own provider, but llm.provider (or llm.fallback) names \"pool\": it would send the pool's requests back into the pool",
        ));
    }
    let url = c.nats_url.trim();
    if !["nats://", "tls://", "ws://", "wss://"]
        .iter()
        .any(|p| url.starts_with(p))
    {
        return Err(invalid(
            "cluster.nats_url",
            "must be a NATS URL such as nats://127.0.0.1:4222",
        ));
    }
    if !c.node.is_empty() && !coda_actors::cluster::valid_token(&c.node) {
        return Err(invalid(
            "cluster.node",
            "must be 1–64 letters, digits, `-` or `_` (it is part of a NATS subject)",
        ));
    }
    if !coda_actors::cluster::valid_token(&c.stream) {
        return Err(invalid(
            "cluster.stream",
            "must be 1–64 letters, digits, `-` or `_`",
        ));
    }
    if c.max_events < 1 {
        return Err(invalid("cluster.max_events", "must be at least 1"));
    }
    if !(c.max_age_s.is_finite() && c.max_age_s >= 1.0) {
        return Err(invalid("cluster.max_age_s", "must be at least 1 second"));
    }
    if !(1..=100_000_000).contains(&c.outbox_max_events) {
        return Err(invalid(
            "cluster.outbox_max_events",
            "must be between 1 and 100000000",
        ));
    }
    Ok(())
}

fn validate_wyoming(w: &WyomingConfig) -> Result<(), ConfigError> {
    if !w.enabled {
        return Ok(());
    }
    if w.host.trim().is_empty() {
        return Err(invalid("wyoming.host", "must not be empty"));
    }
    if !(1..=1024).contains(&w.max_connections) {
        return Err(invalid(
            "wyoming.max_connections",
            "must be between 1 and 1024",
        ));
    }
    if !w.allow_remote && !crate::server::is_loopback_host(&w.host) {
        return Err(invalid(
            "wyoming.host",
            "is not a loopback address, and Wyoming has no authentication: set wyoming.allow_remote = true to expose it on the network anyway",
        ));
    }
    Ok(())
}

fn validate_stt(c: &SttConfig) -> Result<(), ConfigError> {
    if c.model.trim().is_empty() {
        return Err(invalid("stt.model", "must name a model or a file"));
    }
    if c.language.is_empty()
        || c.language.len() > 8
        || !c.language.chars().all(|ch| ch.is_ascii_alphabetic())
    {
        return Err(invalid(
            "stt.language",
            "must be a language code such as \"en\", or \"auto\"",
        ));
    }
    if c.threads > 64 {
        return Err(invalid("stt.threads", "at most 64"));
    }
    if !(c.max_utterance_s.is_finite() && c.max_utterance_s > 0.0 && c.max_utterance_s <= 600.0) {
        return Err(invalid(
            "stt.max_utterance_s",
            "must be between 0 and 600 seconds",
        ));
    }
    if c.interim_interval_ms < 100 {
        return Err(invalid("stt.interim_interval_ms", "at least 100"));
    }
    Ok(())
}

fn validate_speech(s: &Settings) -> Result<(), ConfigError> {
    if s.wake.word.trim().is_empty() || s.wake.word.len() > 64 {
        return Err(invalid("wake.word", "must be 1 to 64 characters"));
    }
    if !(s.wake.threshold.is_finite() && (0.0..=1.0).contains(&s.wake.threshold)) {
        return Err(invalid("wake.threshold", "must be between 0 and 1"));
    }
    if !(s.wake.candidate_threshold.is_finite()
        && (0.0..=1.0).contains(&s.wake.candidate_threshold))
    {
        return Err(invalid(
            "wake.candidate_threshold",
            "must be between 0 and 1",
        ));
    }
    if !(s.wake.verify_threshold.is_finite() && (-30.0..=0.0).contains(&s.wake.verify_threshold)) {
        return Err(invalid(
            "wake.verify_threshold",
            "must be between -30 and 0 (a mean log-probability per token)",
        ));
    }
    let f = s.conversation.follow_up_s;
    if !(f.is_finite() && (0.0..=120.0).contains(&f)) {
        return Err(invalid(
            "conversation.follow_up_s",
            "must be between 0 and 120 seconds (0 = off)",
        ));
    }
    if s.conversation.max_tool_rounds > 20 {
        return Err(invalid("conversation.max_tool_rounds", "at most 20"));
    }
    if !(s.tts.timeout_s.is_finite() && (0.5..=600.0).contains(&s.tts.timeout_s)) {
        return Err(invalid(
            "tts.timeout_s",
            "must be between 0.5 and 600 seconds",
        ));
    }
    if coda_actors::tts::remote::elevenlabs_pcm_rate(&s.tts.elevenlabs.output_format).is_none() {
        return Err(invalid(
            "tts.elevenlabs.output_format",
            "must be raw PCM: pcm_16000, pcm_22050, pcm_24000 or pcm_44100",
        ));
    }
    if !matches!(s.tts.openai.response_format.as_str(), "pcm" | "wav") {
        return Err(invalid(
            "tts.openai.response_format",
            "must be \"pcm\" or \"wav\"",
        ));
    }
    let a = &s.audio;
    if !(a.vad_stop_db.is_finite()
        && a.vad_start_db.is_finite()
        && 0.0 <= a.vad_stop_db
        && a.vad_stop_db <= a.vad_start_db)
    {
        return Err(invalid(
            "audio.vad_stop_db",
            "must be between 0 and audio.vad_start_db (hysteresis)",
        ));
    }
    if !(a.vad_min_dbfs.is_finite() && (-120.0..=0.0).contains(&a.vad_min_dbfs)) {
        return Err(invalid("audio.vad_min_dbfs", "must be between -120 and 0"));
    }
    if !(20..=10_000).contains(&a.silence_ms) {
        return Err(invalid("audio.silence_ms", "must be between 20 and 10000"));
    }
    if !(20..=10_000).contains(&a.settle_ms) {
        return Err(invalid("audio.settle_ms", "must be between 20 and 10000"));
    }
    if !(20..=10_000).contains(&a.quick_silence_ms) || a.quick_silence_ms > a.silence_ms {
        return Err(invalid(
            "audio.quick_silence_ms",
            "must be between 20 and 10000 and at most audio.silence_ms",
        ));
    }
    if !(a.max_utterance_s.is_finite() && (1.0..=600.0).contains(&a.max_utterance_s)) {
        return Err(invalid(
            "audio.max_utterance_s",
            "must be between 1 and 600 seconds",
        ));
    }
    if !(1..=1_000).contains(&a.max_client_streams) {
        return Err(invalid(
            "audio.max_client_streams",
            "must be between 1 and 1000",
        ));
    }
    if !(50..=10_000).contains(&a.interim_ms) {
        return Err(invalid("audio.interim_ms", "must be between 50 and 10000"));
    }
    Ok(())
}

fn validate_llm(l: &LlmConfig) -> Result<(), ConfigError> {
    if !(l.temperature.is_finite() && (0.0..=2.0).contains(&l.temperature)) {
        return Err(invalid("llm.temperature", "must be between 0 and 2"));
    }
    if !(l.top_p.is_finite() && l.top_p > 0.0 && l.top_p <= 1.0) {
        return Err(invalid("llm.top_p", "must be in (0, 1]"));
    }
    if l.max_tokens == 0 {
        return Err(invalid("llm.max_tokens", "must be at least 1"));
    }
    for (k, v) in [
        ("llm.connect_timeout_s", l.connect_timeout_s),
        ("llm.idle_timeout_s", l.idle_timeout_s),
    ] {
        if !(v.is_finite() && v > 0.0 && v < 1e6) {
            return Err(invalid(k, "must be a positive number of seconds"));
        }
    }
    if l.max_retries > 10 {
        return Err(invalid("llm.max_retries", "at most 10"));
    }
    Ok(())
}

fn validate_mcp(m: &McpConfig) -> Result<(), ConfigError> {
    for (k, v) in [
        ("mcp.connect_timeout_s", m.connect_timeout_s),
        ("mcp.call_timeout_s", m.call_timeout_s),
    ] {
        if !(v.is_finite() && (0.1..=3600.0).contains(&v)) {
            return Err(invalid(k, "must be between 0.1 and 3600 seconds"));
        }
    }
    if !(256..=16 * 1024 * 1024).contains(&m.max_result_bytes) {
        return Err(invalid(
            "mcp.max_result_bytes",
            "must be between 256 and 16777216",
        ));
    }
    for (name, c) in &m.servers {
        let key = |k: &str| format!("mcp.servers.{name}{k}");
        if !coda_actors::mcp::valid_server_name(name) {
            return Err(invalid(
                &key(""),
                "a server's name must be 1-32 characters of a-z, 0-9 and - (its tools are NAME__tool)",
            ));
        }
        match (c.command.trim().is_empty(), c.url.trim().is_empty()) {
            (true, true) => {
                return Err(invalid(
                    &key(""),
                    "give `command` (a program speaking MCP on stdio) or `url` (streamable HTTP)",
                ))
            }
            (false, false) => return Err(invalid(&key(""), "give `command` or `url`, not both")),
            (true, false) => {
                if !(c.url.starts_with("http://") || c.url.starts_with("https://")) {
                    return Err(invalid(&key(".url"), "must be an http:// or https:// URL"));
                }
                if !c.args.is_empty() || !c.env.is_empty() || !c.cwd.is_empty() {
                    return Err(invalid(
                        &key(""),
                        "`args`, `env` and `cwd` are for a `command`, not a `url`",
                    ));
                }
            }
            (false, true) => {
                if !c.bearer_token.is_empty() || !c.bearer_token_env.is_empty() {
                    return Err(invalid(
                        &key(""),
                        "a bearer token is for a `url`, not a `command`",
                    ));
                }
            }
        }
    }
    Ok(())
}

fn validate_memory_tools(s: &Settings) -> Result<(), ConfigError> {
    let m = &s.memory;
    if !(64..=1_000_000).contains(&m.context_token_budget) {
        return Err(invalid(
            "memory.context_token_budget",
            "must be between 64 and 1000000",
        ));
    }
    if !(1..=100).contains(&m.recent_turns) {
        return Err(invalid("memory.recent_turns", "must be between 1 and 100"));
    }
    if m.summary_token_budget > 100_000 {
        return Err(invalid("memory.summary_token_budget", "at most 100000"));
    }
    if m.search_limit > 100 {
        return Err(invalid("memory.search_limit", "at most 100"));
    }
    if !(1..=coda_protocol::MAX_MEMORY_LIMIT as usize).contains(&m.default_limit) {
        return Err(invalid(
            "memory.default_limit",
            format!("must be between 1 and {}", coda_protocol::MAX_MEMORY_LIMIT),
        ));
    }
    let t = &s.tools;
    // Any key may be written under tools.permissions (an MCP server's tools are only
    // known once it runs), but a name that is no built-in and no `SERVER__tool` is a typo.
    for name in t.permissions.keys() {
        let mcp = name
            .split_once(coda_actors::tools::registry::GROUP_SEPARATOR)
            .is_some_and(|(server, tool)| {
                coda_actors::mcp::valid_server_name(server) && !tool.is_empty()
            });
        if !mcp && !coda_actors::tools::builtin::is_builtin(name) {
            return Err(invalid(
                &format!("tools.permissions.{name}"),
                "not a tool: name a built-in tool (`coda tools list`) or an MCP server's as SERVER__tool",
            ));
        }
    }
    if !(t.default_timeout_s.is_finite()
        && t.default_timeout_s > 0.0
        && t.default_timeout_s <= 3600.0)
    {
        return Err(invalid(
            "tools.default_timeout_s",
            "must be a positive number of seconds, at most 3600",
        ));
    }
    if !(1024..=64 * 1024 * 1024).contains(&t.max_output_bytes) {
        return Err(invalid(
            "tools.max_output_bytes",
            "must be between 1024 and 67108864",
        ));
    }
    // What the file and shell tools put in one result must fit under the result cap,
    // or a finished write would be reported as `bad_output`.
    let half = t.max_output_bytes / 2;
    let f = &t.files;
    for (key, v) in [
        ("tools.files.max_read_bytes", f.max_read_bytes),
        ("tools.files.max_diff_bytes", f.max_diff_bytes),
    ] {
        if !(256..=half).contains(&v) {
            return Err(invalid(
                key,
                format!("must be between 256 and half of tools.max_output_bytes ({half})"),
            ));
        }
    }
    if !(1..=1000).contains(&f.max_search_results) {
        return Err(invalid(
            "tools.files.max_search_results",
            "must be between 1 and 1000",
        ));
    }
    if !(1..=10_000).contains(&f.max_list_entries) {
        return Err(invalid(
            "tools.files.max_list_entries",
            "must be between 1 and 10000",
        ));
    }
    if !(1..=1024 * 1024 * 1024).contains(&f.max_file_bytes) {
        return Err(invalid(
            "tools.files.max_file_bytes",
            "must be between 1 and 1073741824",
        ));
    }
    if !(1..=10_000).contains(&f.undo_depth) {
        return Err(invalid(
            "tools.files.undo_depth",
            "must be between 1 and 10000",
        ));
    }
    if f.undo_bytes < f.max_file_bytes {
        return Err(invalid(
            "tools.files.undo_bytes",
            "must be at least tools.files.max_file_bytes, so every write can be undone",
        ));
    }
    let sh = &t.shell;
    let secs = |v: f64| v.is_finite() && v > 0.0 && v <= 86_400.0;
    if !secs(sh.timeout_s) || !secs(sh.max_timeout_s) || sh.timeout_s > sh.max_timeout_s {
        return Err(invalid(
            "tools.shell.timeout_s",
            "timeout_s and max_timeout_s must be positive seconds (at most a day), timeout_s <= max_timeout_s",
        ));
    }
    if !(sh.kill_grace_s.is_finite() && (0.0..=60.0).contains(&sh.kill_grace_s)) {
        return Err(invalid(
            "tools.shell.kill_grace_s",
            "must be between 0 and 60 seconds",
        ));
    }
    if !(64..=t.max_output_bytes / 4).contains(&sh.max_output_bytes) {
        return Err(invalid(
            "tools.shell.max_output_bytes",
            format!(
                "must be between 64 and a quarter of tools.max_output_bytes ({}): stdout and stderr each keep this much",
                t.max_output_bytes / 4
            ),
        ));
    }
    t.shell_settings()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_and_tools_sections() {
        let l = load(&LoadOptions::hermetic()).unwrap();
        let perms = &l.settings.tools.permissions;
        for tool in coda_actors::tools::BUILTIN_TOOLS
            .iter()
            .chain(coda_actors::tools::CODING_TOOLS)
        {
            assert!(perms.contains_key(*tool), "default.toml names {tool}");
        }
        let shell = l
            .settings
            .tools
            .shell_settings()
            .expect("default shell rules");
        use coda_actors::tools::Permission::*;
        assert_eq!(shell.rules.decide("git status").permission, Safe);
        assert_eq!(shell.rules.decide("rm -rf /").permission, Deny);
        assert_eq!(shell.rules.decide("make").permission, Ask);
        let e = load(&env(&[("CODA__TOOLS__SHELL__MAX_OUTPUT_BYTES", "60000")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("tools.shell.max_output_bytes"), "{e}");
        let e = load(&env(&[("CODA__TOOLS__FILES__UNDO_BYTES", "10")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("tools.files.undo_bytes"), "{e}");
        assert_eq!(
            l.settings.memory.engine_settings().recent_turns,
            l.settings.memory.recent_turns
        );
        let e = load(&env(&[("CODA__TOOLS__PERMISSIONS__CALCULATOR", "maybe")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("tools.permissions.calculator"), "{e}");
        let l = load(&env(&[("CODA__TOOLS__PERMISSIONS__TIMER", "deny")])).unwrap();
        assert_eq!(
            l.settings.tools.permissions["timer"],
            coda_actors::tools::Permission::Deny
        );
        let e = load(&env(&[("CODA__MEMORY__RECENT_TURNS", "0")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("memory.recent_turns"), "{e}");
        let e = load(&env(&[("CODA__TOOLS__PERMISSIONS__NOT_A_TOOL", "safe")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tools.permissions.not_a_tool") && e.contains("not a tool"),
            "{e}"
        );
        // An MCP server's tool may be named before the server runs (in a file: the
        // environment's `__` would split its name).
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[tools.permissions]\ntime__get_current_time = \"ask\"\n",
        )
        .unwrap();
        let loaded = load(&LoadOptions {
            config_file: Some(file),
            ..env(&[])
        })
        .unwrap();
        assert_eq!(
            loaded
                .settings
                .tools
                .permissions
                .get("time__get_current_time"),
            Some(&Permission::Ask)
        );
    }

    fn env(pairs: &[(&str, &str)]) -> LoadOptions {
        LoadOptions {
            env: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            no_user_files: true,
            ..Default::default()
        }
    }

    #[test]
    fn defaults_parse() {
        let l = load(&LoadOptions::hermetic()).unwrap();
        assert_eq!(l.settings.server.port, 8765);
        assert_eq!(l.settings.server.host, "127.0.0.1");
        assert!(l.sources.values().all(|s| s == "default"));
    }

    #[test]
    fn env_overrides_and_names_source() {
        let l = load(&env(&[
            ("CODA__SERVER__PORT", "9001"),
            ("CODA__SERVER__MAX_FRAME_BYTES", "2048"),
            (
                "CODA__SERVER__ALLOWED_ORIGINS",
                "https://a.example,https://b.example",
            ),
        ]))
        .unwrap();
        assert_eq!(l.settings.server.port, 9001);
        assert_eq!(l.settings.server.max_frame_bytes, 2048);
        assert_eq!(l.settings.server.allowed_origins.len(), 2);
        assert_eq!(l.sources["server.port"], "env CODA__SERVER__PORT");
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = load(&env(&[("CODA__SERVER__PORT", "abc")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.port"), "{e}");
        let e = load(&env(&[("CODA__SERVER__PROT", "1")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("server.prot") && e.contains("CODA__SERVER__PROT"),
            "{e}"
        );
        let e = load(&env(&[("CODA__LOG__FORMAT", "xml")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("log.format"), "{e}");
        let e = load(&env(&[("CODA__SERVER__MAX_QUEUE", "0")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.max_queue"), "{e}");
        let e = load(&env(&[("CODA__LLM__TOP_P", "1.5")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("llm.top_p"), "{e}");
    }

    #[test]
    fn the_llm_pool_settings_are_checked_and_reach_the_llm_config() {
        const NATS: (&str, &str) = ("CODA__CLUSTER__NATS_URL", "nats://127.0.0.1:4222");
        for (vars, key) in [
            (vec![("CODA__LLM__PROVIDER", "pool")], "cluster.nats_url"),
            (
                vec![("CODA__LLM__FALLBACK", "ollama,pool")],
                "cluster.nats_url",
            ),
            (
                vec![("CODA__CLUSTER__LLM_POOL", "true")],
                "cluster.llm_pool",
            ),
            (
                vec![
                    NATS,
                    ("CODA__CLUSTER__LLM_POOL", "true"),
                    ("CODA__LLM__PROVIDER", "pool"),
                ],
                "cluster.llm_pool",
            ),
            (
                vec![NATS, ("CODA__CLUSTER__LLM_POOL_CAPACITY", "0")],
                "cluster.llm_pool_capacity",
            ),
            (
                vec![NATS, ("CODA__CLUSTER__LLM_POOL_WAIT_S", "-1")],
                "cluster.llm_pool_wait_s",
            ),
        ] {
            let e = load(&env(&vars)).unwrap_err().to_string();
            assert!(e.contains(key), "{vars:?}: {e}");
        }
        let l = load(&env(&[
            NATS,
            ("CODA__CLUSTER__NODE", "kitchen"),
            ("CODA__LLM__PROVIDER", "pool"),
            ("CODA__CLUSTER__LLM_POOL_WAIT_S", "2.5"),
        ]))
        .unwrap();
        assert_eq!(
            l.settings.llm.pool,
            Some(PoolTarget {
                nats_url: NATS.1.into(),
                node: "kitchen".into(),
                wait_s: 2.5
            })
        );
        let lone = load(&env(&[])).unwrap();
        assert_eq!(lone.settings.llm.pool, None);
        assert!(!lone.settings.cluster.llm_pool);
    }

    #[test]
    fn profile_and_flags_layer_in_order() {
        let mut o = env(&[("CODA__SERVER__PORT", "9002")]);
        o.profile = Some("dev".into());
        let l = load(&o).unwrap();
        assert_eq!(l.settings.server.port, 9002, "env beats profile");
        assert_eq!(l.settings.log.level, "debug");
        assert_eq!(l.sources["log.level"], "profile dev (built-in)");
        o.overrides.push((
            "server.port".into(),
            OverrideValue::Int(9003),
            "--port".into(),
        ));
        let l = load(&o).unwrap();
        assert_eq!(l.settings.server.port, 9003, "flag beats env");
        assert_eq!(l.sources["server.port"], "flag --port");
        let mut bad = env(&[]);
        bad.profile = Some("nope".into());
        assert!(load(&bad)
            .unwrap_err()
            .to_string()
            .contains("unknown profile `nope`"));
    }

    #[test]
    fn user_file_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[server]\nport = 9100\n").unwrap();
        let mut o = env(&[]);
        o.config_file = Some(f.clone());
        let l = load(&o).unwrap();
        assert_eq!(l.settings.server.port, 9100);
        assert!(l.sources["server.port"].starts_with("file "));
        std::fs::write(&f, "[server\nport = ").unwrap();
        assert!(matches!(load(&o), Err(ConfigError::Parse { .. })));
        o.config_file = Some(dir.path().join("missing.toml"));
        assert!(matches!(load(&o), Err(ConfigError::FileMissing(_))));
    }

    #[test]
    fn metrics_alerts_from_a_file_replace_the_defaults_and_are_validated() {
        let defaults = load(&LoadOptions::hermetic()).unwrap().settings.metrics;
        assert!(defaults.alert_rules().is_ok());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "[metrics]\ninterval_s = 0.5\nalerts = [ { metric = \"clients\", above = 2, clear_below = 1, for_s = 3 } ]\n",
        )
        .unwrap();
        let mut o = env(&[]);
        o.config_file = Some(f.clone());
        let l = load(&o).unwrap();
        let m = &l.settings.metrics;
        assert_eq!(m.interval_s, 0.5);
        assert_eq!(m.alerts.len(), 1, "a file's list replaces the default list");
        let rules = m.alert_rules().unwrap();
        assert_eq!(rules[0].metric.name(), "clients");
        assert_eq!((rules[0].fire, rules[0].clear), (2.0, 1.0));
        assert_eq!(rules[0].level, coda_protocol::Level::Warning);
        assert!(l.sources["metrics.alerts"].starts_with("file "));

        let bad = |body: &str| {
            std::fs::write(&f, format!("[metrics]\n{body}\n")).unwrap();
            load(&o).unwrap_err().to_string()
        };
        let e = bad("alerts = [ { metric = \"memory_mb\", above = 100.0, clear_below = 100.0 } ]");
        assert!(e.contains("metrics.alerts[0].clear_below"), "{e}");
        let e = bad("alerts = [ { metric = \"clients\", above = 2, clear_below = 1 }, { metric = \"cpu\", above = 2, clear_below = 1 } ]");
        assert!(
            e.contains("metrics.alerts[1].metric") && e.contains("cpu_percent"),
            "{e}"
        );
        let e = bad("alerts = [ { metric = \"clients\", below = 2 } ]");
        assert!(e.contains("metrics.alerts[0].clear_above"), "{e}");
        let e = bad(
            "alerts = [ { metric = \"clients\", above = 2, clear_below = 1, level = \"loud\" } ]",
        );
        assert!(e.contains("loud"), "{e}");
        let e = bad(
            "alerts = [ { metric = \"clients\", above = 2, clear_below = 1, fire_after = 3 } ]",
        );
        assert!(e.contains("fire_after"), "{e}");
        let e = load(&env(&[("CODA__METRICS__INTERVAL_S", "0")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("metrics.interval_s"), "{e}");
        let l = load(&env(&[("CODA__METRICS__INTERVAL_S", "0.2")])).unwrap();
        assert_eq!(l.settings.metrics.interval_s, 0.2);
        for (k, v, key) in [
            (
                "CODA__TELEMETRY__SAMPLING_RATIO",
                "1.5",
                "telemetry.sampling_ratio",
            ),
            (
                "CODA__TELEMETRY__ENDPOINT",
                "127.0.0.1:4318",
                "telemetry.endpoint",
            ),
            (
                "CODA__TELEMETRY__EXPORT_INTERVAL_S",
                "0",
                "telemetry.export_interval_s",
            ),
        ] {
            let e = load(&env(&[(k, v)])).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
        let l = load(&env(&[("CODA__TELEMETRY__ENDPOINT", "http://c:4318")])).unwrap();
        assert_eq!(l.settings.telemetry.endpoint, "http://c:4318");
    }

    #[test]
    fn secrets_are_redacted() {
        let mut v = serde_json::json!({"llm": {"openai": {"api_key": "sk-123", "api_key_env": "OPENAI_API_KEY"}}, "auth": {"token_file": "/x"}});
        redact(&mut v);
        assert_eq!(v["llm"]["openai"]["api_key"], "***redacted***");
        assert_eq!(v["llm"]["openai"]["api_key_env"], "OPENAI_API_KEY");
        assert_eq!(v["auth"]["token_file"], "/x");
        // Export headers carry keys under any name.
        let mut v = serde_json::json!({"telemetry": {"headers": {"x-honeycomb-team": "k1"}, "endpoint": "http://c"}});
        redact(&mut v);
        assert_eq!(
            v["telemetry"]["headers"]["x-honeycomb-team"],
            "***redacted***"
        );
        assert_eq!(v["telemetry"]["endpoint"], "http://c");
    }
}
