//! Server → client messages: the envelope and one payload struct per [`EventType`].
//!
//! Every message the server sends is an envelope
//! `{version, seq, timestamp, type, session_id, data}`; `data` is the payload struct named
//! like the type (`stt_result` → [`SttResult`]). [`Envelope`] deserializes any message of
//! a type this version knows; [`RawEnvelope`] accepts every message and decodes it on
//! demand, so a client can skip types added by later MINOR versions.
//!
//! Payload structs ignore unknown fields when deserializing (a later MINOR may add
//! optional fields) and leave `None` optional fields out when serializing.

use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::kinds::{ErrorCode, EventType};
use crate::version::PROTOCOL_VERSION;

/// The `session_id` of process-wide events (metrics, component status, alerts, ...).
pub const SYSTEM_SESSION: &str = "system";

/// A payload struct: the `data` of one event type.
pub trait EventPayload: Serialize {
    /// The event type whose `data` this struct is.
    const TYPE: EventType;
}

// ---------------------------------------------------------------------------------------
// Closed sets
// ---------------------------------------------------------------------------------------

macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant,)+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The wire name (`snake_case`).
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum! {
    /// Severity of an error or alert, from least to most severe (`Ord` follows severity).
    #[derive(PartialOrd, Ord)]
    Level {
        /// Diagnostic detail.
        Debug = "debug",
        /// Worth knowing, nothing is wrong.
        Info = "info",
        /// Something degraded but the operation went on (e.g. a retry).
        Warning = "warning",
        /// An operation failed.
        Error = "error",
        /// A subsystem is unusable.
        Critical = "critical",
    }
}

wire_enum! {
    /// Lifecycle state of a supervised component (subsystem actor).
    ComponentState {
        /// Initialising (loading models, opening devices).
        Starting = "starting",
        /// Serving.
        Running = "running",
        /// Crashed and being restarted by its supervisor.
        Restarting = "restarting",
        /// Out of restart budget or missing a dependency: the rest of the system serves on.
        Degraded = "degraded",
        /// Shut down.
        Stopped = "stopped",
    }
}

wire_enum! {
    /// What happened to a WebSocket connection.
    ConnectionState {
        /// The upgrade was accepted.
        Connected = "connected",
        /// The client proved a valid token (or none was needed on loopback).
        Authenticated = "authenticated",
        /// The upgrade or the authentication was refused (see `reason`).
        Refused = "refused",
        /// The connection ended (see `reason`).
        Closed = "closed",
    }
}

wire_enum! {
    /// What the assistant is doing.
    Mode {
        /// Waiting.
        Idle = "idle",
        /// Capturing speech.
        Listening = "listening",
        /// After an answer, listening for a follow-up question without the wake word
        /// (for `conversation.follow_up_s`).
        ListeningFollowUp = "listening_follow_up",
        /// Understanding the input and preparing an answer.
        Thinking = "thinking",
        /// Playing an answer.
        Speaking = "speaking",
    }
}

wire_enum! {
    /// Where the intent router sends an input.
    Route {
        /// A tool handles it.
        Tool = "tool",
        /// The language model answers.
        Llm = "llm",
        /// The assistant itself handles it (stop, volume, mode changes, ...).
        System = "system",
    }
}

wire_enum! {
    /// How listening starts and stops.
    SttMode {
        /// Listen while the button is held: between `stt_start` and `stt_stop`.
        PushToTalk = "push_to_talk",
        /// Listen continuously, splitting utterances by voice activity detection.
        Continuous = "continuous",
        /// Listen for the wake word; the utterance after it becomes a turn.
        Wake = "wake",
    }
}

wire_enum! {
    /// Where speech audio comes from.
    AudioSource {
        /// The server's own input device.
        Device = "device",
        /// Binary WebSocket frames from the client (PCM s16le, mono, 16 kHz).
        Client = "client",
    }
}

wire_enum! {
    /// Author of a conversation message.
    Role {
        /// The person talking to the assistant.
        User = "user",
        /// The assistant.
        Assistant = "assistant",
        /// System instructions.
        System = "system",
        /// Output of a tool.
        Tool = "tool",
    }
}

// ---------------------------------------------------------------------------------------
// System payloads
// ---------------------------------------------------------------------------------------

/// `system_info`: who the server is and how its components are doing.
///
/// Broadcast at start and when asked with `get_system_info`; only the latest is replayed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SystemInfo {
    /// The server's own version (crate version), e.g. `"0.1.0"`.
    pub server_version: String,
    /// The protocol version the server speaks, e.g. `"1.0"`.
    pub protocol_version: String,
    /// The current stream epoch (see `replay`).
    pub epoch: String,
    /// The `seq` of the last event published on the stream when this was built.
    pub last_seq: u64,
    /// When the server started, unix seconds.
    pub started_at: f64,
    /// Seconds since the server started.
    pub uptime_s: f64,
    /// Operating-system process id.
    pub pid: u32,
    /// The address the server listens on, e.g. `"127.0.0.1:8765"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Whether clients must present a token.
    pub auth_required: bool,
    /// Number of connected WebSocket clients.
    pub clients: u32,
    /// Every supervised component and its state.
    pub components: Vec<ComponentInfo>,
}

/// One component inside [`SystemInfo`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ComponentInfo {
    /// Component name, e.g. `"stt"`, `"llm"`, `"tts"`, `"memory"`.
    pub name: String,
    /// Current lifecycle state.
    pub state: ComponentState,
    /// Restarts since the server started.
    pub restarts: u32,
    /// Seconds since the component last (re)started.
    pub uptime_s: f64,
    /// Why it is in this state (for `degraded`, `restarting`, `stopped`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `system_metrics`: resource usage, sampled periodically; only the latest is replayed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SystemMetrics {
    /// Resident memory of the server process, MiB.
    pub memory_mb: f64,
    /// CPU use of the server process, percent of one core (may exceed 100).
    pub cpu_percent: f64,
    /// GPU memory used, MiB, when a GPU is visible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_vram_mb: Option<f64>,
    /// GPU utilisation, percent, when a GPU is visible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_util: Option<f64>,
    /// Memory used by the whole machine, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_memory_used_mb: Option<f64>,
    /// Total memory of the machine, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_memory_total_mb: Option<f64>,
    /// CPU use of the whole machine, percent of all cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_cpu_percent: Option<f64>,
}

/// `system_error`: an error or warning not tied to one command.
///
/// Also sent to a single client before the server closes its connection, e.g. code
/// `version_mismatch` after `hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SystemError {
    /// Severity.
    pub level: Level,
    /// The component that reports it, e.g. `"tts"`, `"ws"`, `"hub"`.
    pub component: String,
    /// Stable machine-readable code: an [`ErrorCode`] name such as `version_mismatch`, or
    /// a component-specific code such as `device_unavailable`.
    pub code: String,
    /// Human-readable explanation, saying what to do next when there is something to do.
    pub message: String,
}

/// `component_status`: a supervised component changed state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ComponentStatus {
    /// Component name, e.g. `"stt"`.
    pub component: String,
    /// The new state.
    pub state: ComponentState,
    /// Restarts since the server started.
    pub restarts: u32,
    /// Why (crash message, missing model, restart budget exhausted, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `alert`: a metric crossed its threshold, or came back (`cleared: true`).
///
/// Alerts use hysteresis: one alert when the metric goes over, one `cleared` alert when it
/// is back under, never one per sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Alert {
    /// The metric as named in the `metrics.alerts` config, e.g. `"memory_mb"`,
    /// `"cpu_percent"`, `"clients"`, `"latency.total.p95"`.
    pub metric: String,
    /// The value that triggered (or cleared) the alert.
    pub value: f64,
    /// The configured threshold.
    pub threshold: f64,
    /// Severity while the alert is active.
    pub level: Level,
    /// `false` when the alert fires, `true` when the metric is back to normal.
    pub cleared: bool,
    /// Human-readable summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `connection_status`: a WebSocket client connected, authenticated, was refused or left.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConnectionStatus {
    /// Server-assigned id of the connection.
    pub client_id: String,
    /// The peer's address, e.g. `"127.0.0.1:53122"`.
    pub peer: String,
    /// What happened.
    pub state: ConnectionState,
    /// Why (for `refused` and `closed`), e.g. `"bad token"`, `"slow consumer"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The `Origin` header of the upgrade request, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// `replay`: earlier events, sent to one client only (on connect, or answering
/// `resume` / `hello` with a position).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Replay {
    /// The events, oldest first, as full envelopes with their original `seq`.
    pub events: Vec<RawEnvelope>,
    /// `true` when nothing the client asked for is missing; `false` when some events were
    /// no longer retained or the epoch changed (start again from a snapshot).
    pub complete: bool,
    /// The stream epoch these `seq` numbers belong to.
    pub epoch: String,
    /// The `seq` of the last stream event at the time of the replay: continue from here.
    pub last_seq: u64,
}

/// `config`: the effective configuration, secrets redacted; sent to one client only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Config {
    /// The effective configuration as an object of sections (same shape as the TOML file).
    pub config: Value,
    /// The active profile, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

/// `command_result`: the command with this `id` succeeded; sent to its sender only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CommandResult {
    /// The command's `id`; `null` when the command had none.
    pub id: Option<String>,
    /// Always `true` (failures are `command_error`).
    pub ok: bool,
    /// The command's answer (`{}` when there is nothing to say); for `hello`, a
    /// [`HelloReply`].
    pub data: Value,
}

/// `command_error`: the command with this `id` was rejected or failed; sent to its sender
/// only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CommandError {
    /// The command's `id`; `null` when it had none or the frame could not be read.
    pub id: Option<String>,
    /// Stable machine-readable reason.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
}

/// `diagnostic_tick`: synthetic load for testing clients and throughput (off by default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DiagnosticTick {
    /// Counter, from 0.
    pub index: u64,
    /// When the generator emitted it, unix seconds (compare with the envelope's
    /// `timestamp` and your receive time).
    pub emitted_at: f64,
    /// Filler to reach the configured event size.
    pub padding: String,
}

/// The `data` of the `command_result` answering `hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HelloReply {
    /// The protocol version the server speaks.
    pub protocol_version: String,
    /// The server's own version.
    pub server_version: String,
    /// The current stream epoch.
    pub epoch: String,
    /// The `seq` of the last stream event.
    pub last_seq: u64,
}

// ---------------------------------------------------------------------------------------
// Performance payloads
// ---------------------------------------------------------------------------------------

/// `latency_trace`: per-stage latency of one completed turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LatencyTrace {
    /// The turn.
    pub turn_id: String,
    /// Speech-to-text time (absent for text input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stt_ms: Option<f64>,
    /// Voice turns: from the end of speech to the end of the utterance (the silence the
    /// detector waited for; about 0 for push-to-talk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_ms: Option<f64>,
    /// Voice turns: from the end of the utterance to its transcript (less than `stt_ms`
    /// when the transcription ran while the speaker paused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stt_wait_ms: Option<f64>,
    /// Intent routing time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent_ms: Option<f64>,
    /// Time to the first LLM token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_ttft_ms: Option<f64>,
    /// Full LLM generation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_ms: Option<f64>,
    /// Time from the end of the input to the first audio played.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tts_first_audio_ms: Option<f64>,
    /// Full text-to-speech time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tts_ms: Option<f64>,
    /// From the end of the input to the end of the answer.
    pub total_ms: f64,
    /// The kernel's own share of `total_ms`: the total minus the time spent inside the
    /// engines on the turn's critical path (model generation, and speech synthesis after
    /// generation ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_ms: Option<f64>,
}

/// `component_timing`: periodic latency summary per stage; the answer to
/// `get_performance_metrics`. Only the latest is replayed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ComponentTiming {
    /// Seconds of history the percentiles cover.
    pub window_s: f64,
    /// Turns completed in the window.
    pub turns: u64,
    /// One entry per stage that ran in the window.
    pub stages: Vec<StageTiming>,
    /// Counters since the server started, by name (e.g. `events_published`,
    /// `commands_rejected`, `clients_dropped_slow`).
    pub counters: BTreeMap<String, u64>,
}

/// Latency percentiles of one stage, inside [`ComponentTiming`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StageTiming {
    /// The stage, named like the `latency_trace` fields without `_ms`: `stt`, `intent`,
    /// `llm_ttft`, `llm`, `tts_first_audio`, `tts`, `total`.
    pub stage: String,
    /// Samples in the window.
    pub count: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Maximum, ms.
    pub max_ms: f64,
}

// ---------------------------------------------------------------------------------------
// Speech-to-text payloads
// ---------------------------------------------------------------------------------------

/// `wake_detected`: the wake word was heard; what is said after it becomes a turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WakeDetected {
    /// The wake word, e.g. `"hey coda"`.
    pub word: String,
    /// How close the match was (the detector's score; detections are at or above
    /// `wake.threshold`).
    pub score: f64,
    /// Where the audio comes from.
    pub source: AudioSource,
    /// The speech-to-text check's score, when it verified the word (whisper's mean
    /// log-probability per token of the word in the audio plus 2 × ln(score / 0.05), at or
    /// above `wake.verify_threshold`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<f64>,
}

/// `stt_start`: listening started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SttStart {
    /// The turn this speech will become.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
    /// Push-to-talk or continuous.
    pub mode: SttMode,
    /// Where the audio comes from.
    pub source: AudioSource,
}

/// `stt_interim`: a partial transcript that may still change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SttInterim {
    /// The turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
    /// The transcript so far (replaces the previous interim, it is not a delta).
    pub text: String,
    /// Engine confidence, 0.0–1.0, when the engine gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
}

/// `stt_result`: the final transcript of one utterance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SttResult {
    /// The turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
    /// The transcript.
    pub text: String,
    /// Engine confidence, 0.0–1.0.
    pub confidence: f64,
    /// Transcription time, ms.
    pub duration_ms: f64,
    /// Detected or configured language, e.g. `"en"`.
    pub language: String,
}

/// `stt_error`: speech-to-text failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SttError {
    /// The turn, when one had started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
    /// Stable machine-readable code, e.g. `device_unavailable`, `model_missing`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// Severity.
    pub level: Level,
}

// ---------------------------------------------------------------------------------------
// Language-model payloads
// ---------------------------------------------------------------------------------------

/// `llm_start`: the language model started generating.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LlmStart {
    /// The turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
    /// Provider name, e.g. `"local"`, `"ollama"`, `"openai"`.
    pub provider: String,
    /// Model name.
    pub model: String,
    /// The user prompt (the latest input, not the whole context).
    pub prompt: String,
}

/// `llm_token`: one streamed piece of the answer. Not replayed to new clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LlmToken {
    /// The turn.
    pub turn_id: String,
    /// Position in the answer, from 0 (detect missing or reordered tokens with it).
    pub index: u32,
    /// The text to append.
    pub text: String,
}

/// `llm_result`: the answer is complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LlmResult {
    /// The turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
    /// The whole answer.
    pub text: String,
    /// Generation time, ms.
    pub duration_ms: f64,
    /// Tokens generated.
    pub tokens: u32,
    /// Generation speed.
    pub tokens_per_second: f64,
    /// The provider that answered, after any fallback: e.g. `"openai"`, or `"pool:<node>"`
    /// when a core of the LLM pool did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The model that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Tokens in and out of this generation, and what they cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<TokenUsage>,
    /// The session's running total (every generation of this session on this server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_usage: Option<TokenUsage>,
}

/// Tokens in and out, and their cost (in `llm_result`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TokenUsage {
    /// Prompt tokens (the whole context sent).
    pub input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
    /// `true` when some counts are estimates (the provider reported none).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
    /// How the cost is known.
    pub pricing: Pricing,
    /// The cost (`pricing` `priced`; `0` when `free`; absent when `unknown`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    /// The cost's currency, as configured (e.g. `"USD"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}

/// How a cost is known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Pricing {
    /// From the configured price of the model (`llm.prices`).
    Priced,
    /// A local model: nothing to pay.
    Free,
    /// A paid provider with no price configured for the model.
    #[default]
    Unknown,
}

impl Pricing {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Pricing::Priced => "priced",
            Pricing::Free => "free",
            Pricing::Unknown => "unknown",
        }
    }
}

/// `llm_error`: the language model failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LlmError {
    /// The turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
    /// Stable machine-readable code, e.g. `provider_unreachable`, `timeout`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// Severity.
    pub level: Level,
}

// ---------------------------------------------------------------------------------------
// Text-to-speech payloads
// ---------------------------------------------------------------------------------------

/// `tts_start`: speech synthesis started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TtsStart {
    /// The turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
    /// The text to speak.
    pub text: String,
    /// Voice name.
    pub voice: String,
    /// Engine name, e.g. `"espeak"`, `"elevenlabs"`.
    pub engine: String,
}

/// `tts_progress`: synthesis reached the next sentence. Not replayed to new clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TtsProgress {
    /// The turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
    /// Sentence position in the answer, from 0.
    pub sentence_index: u32,
    /// The sentence being spoken.
    pub text: String,
}

/// `tts_paused`: playback of the turn's speech paused because someone started talking over
/// it (barge-in by voice). What they said decides: a transcript interrupts the turn, no
/// speech resumes it (`tts_resumed`). A client that plays `tts_audio` pauses too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TtsPaused {
    /// The turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
}

/// `tts_resumed`: playback of the turn's speech goes on from where it paused: what was
/// heard over it was no one speaking to the assistant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TtsResumed {
    /// The turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
    /// How long it was paused, ms.
    pub paused_ms: f64,
    /// Why: `no_speech` (no words in it), `own_voice` (its words were the answer's own,
    /// echo cancellation let some through), `timeout` (the utterance never ended). An open
    /// set: show unknown ones as text.
    pub reason: String,
    /// The transcript, when it was the answer's own voice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heard: Option<String>,
}

/// `tts_result`: speech finished (or was interrupted: `played: false`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TtsResult {
    /// The turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
    /// Synthesis time, ms.
    pub duration_ms: f64,
    /// Length of the audio produced, ms.
    pub audio_ms: f64,
    /// Whether the audio was played to the end.
    pub played: bool,
}

/// `tts_error`: speech synthesis or playback failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TtsError {
    /// The turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
    /// Stable machine-readable code, e.g. `engine_failed`, `no_output_device`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// Severity.
    pub level: Level,
}

/// `tts_audio`: a chunk of synthesized audio, for clients that play it themselves.
/// Not replayed to new clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TtsAudio {
    /// The turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
    /// Chunk position in the turn's audio, from 0.
    pub index: u32,
    /// Sample rate, Hz.
    pub sample_rate: u32,
    /// Interleaved channels (1 = mono).
    pub channels: u16,
    /// Sample encoding of `audio`; `"pcm_s16le"` (16-bit signed little-endian) in 1.0.
    pub format: String,
    /// The samples, base64 (standard alphabet, padded).
    pub audio: String,
    /// `true` on the turn's last chunk.
    pub last: bool,
}

// ---------------------------------------------------------------------------------------
// Intent payloads
// ---------------------------------------------------------------------------------------

/// `intent_result`: the intent router decided how to handle the input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IntentResult {
    /// The turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
    /// Intent name, e.g. `"get_time"`, `"chat"`.
    pub intent: String,
    /// Router confidence, 0.0–1.0.
    pub confidence: f64,
    /// Who handles it.
    pub route: Route,
}

// ---------------------------------------------------------------------------------------
// Memory payloads
// ---------------------------------------------------------------------------------------

/// `memory_store`: a long-term memory was stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MemoryStore {
    /// The turn that produced it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
    /// Id of the stored memory.
    pub memory_id: String,
    /// What was remembered.
    pub content: String,
    /// Labels, e.g. `["preference"]`.
    pub tags: Vec<String>,
    /// Importance, 0.0–1.0, when the memory system rates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub importance: Option<f64>,
}

/// `memory_retrieve`: memories were retrieved to answer a turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MemoryRetrieve {
    /// The turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
    /// What was searched for.
    pub query: String,
    /// The memories found, best first.
    pub results: Vec<MemoryItem>,
    /// Search time, ms.
    pub duration_ms: f64,
}

/// One memory, inside [`MemoryRetrieve`] (and in the `memory_search` / `memory_list`
/// answers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MemoryItem {
    /// Id of the memory.
    pub memory_id: String,
    /// What was remembered.
    pub content: String,
    /// Labels.
    pub tags: Vec<String>,
    /// Relevance to the query, when there was one (higher is better).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// When it was stored, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<f64>,
}

/// The `data` of the `command_result` answering `memory_search` or `memory_list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MemoryItems {
    /// The memories, best first (`memory_search`) or newest first (`memory_list`).
    pub items: Vec<MemoryItem>,
}

/// `memory_error`: a memory operation failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MemoryError {
    /// The turn, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
    /// Stable machine-readable code, e.g. `storage_failed`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// Severity.
    pub level: Level,
}

// ---------------------------------------------------------------------------------------
// Tool payloads
// ---------------------------------------------------------------------------------------

/// `tool_call`: a tool is being called.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ToolCall {
    /// The turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
    /// Id of this call (matches `tool_result` / `tool_error`).
    pub call_id: String,
    /// Tool name.
    pub tool: String,
    /// Arguments, an object matching the tool's JSON Schema.
    pub arguments: Value,
}

/// `tool_result`: a tool call returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ToolResult {
    /// The turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
    /// Id of the call (from `tool_call`).
    pub call_id: String,
    /// Tool name.
    pub tool: String,
    /// What the tool returned.
    pub result: Value,
    /// Execution time, ms.
    pub duration_ms: f64,
}

/// `tool_error`: a tool call failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ToolError {
    /// The turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
    /// Id of the call (from `tool_call`).
    pub call_id: String,
    /// Tool name.
    pub tool: String,
    /// Stable machine-readable code, e.g. `invalid_arguments`, `timeout`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// Severity.
    pub level: Level,
    /// For `needs_confirmation`: what the call would do, for the user to decide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<ToolPreview>,
}

/// What a tool call would do, shown before the user confirms it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ToolPreview {
    /// One line, e.g. "write src/main.rs (+3 -1)" or "run `cargo test` in the project".
    pub summary: String,
    /// The unified diff of a write or edit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

/// `mcp_status`: an MCP server (`[mcp.servers.NAME]`) connected, changed its tools
/// (`notifications/tools/list_changed`), exited, is being restarted, or was given up on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct McpStatus {
    /// The server's name in the config.
    pub server: String,
    /// `starting`, `ready`, `restarting`, `failed` (out of restarts, or cannot start) or
    /// `stopped`.
    pub state: String,
    /// `stdio` or `http`.
    pub transport: String,
    /// Its tools as registered (`NAME__tool`), when ready.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Restarts so far.
    pub restarts: u32,
    /// What happened: `connected`, `list_changed`, an exit or error message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `tool_progress`: a piece of a running tool's output (a shell command's stdout or
/// stderr as it comes), before its `tool_result`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ToolProgress {
    /// The turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
    /// Id of the call (from `tool_call`).
    pub call_id: String,
    /// Tool name.
    pub tool: String,
    /// Which output: `stdout` or `stderr` for commands (other tools may name their own).
    pub stream: String,
    /// The text, as it came (invalid UTF-8 replaced).
    pub text: String,
}

// ---------------------------------------------------------------------------------------
// Conversation and state payloads
// ---------------------------------------------------------------------------------------

/// `conversation_start`: a conversation began in the envelope's session.
///
/// A session can hold several conversations, one after another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConversationStart {
    /// Id of the conversation.
    pub conversation_id: String,
    /// The connection that started it, when it came from a client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// `conversation_turn`: a turn began — the first event of every turn, carrying the
/// `turn_id` every later event of the turn repeats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConversationTurn {
    /// Id of the conversation.
    pub conversation_id: String,
    /// Id of the turn (the `turn_id` of its other events).
    pub turn_id: String,
    /// Position of the turn in the conversation, from 0.
    pub index: u32,
    /// What the user said or typed.
    pub user_text: String,
    /// Where the input came from: `text`, `voice` or `demo`.
    pub source: String,
}

/// `conversation_end`: a conversation ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConversationEnd {
    /// Id of the conversation.
    pub conversation_id: String,
    /// Turns it held.
    pub turns: u32,
    /// Seconds from start to end.
    pub duration_s: f64,
    /// Why it ended, e.g. `"idle_timeout"`, `"client_closed"`, `"shutdown"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `conversation_message`: one message of the conversation transcript.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConversationMessage {
    /// The turn it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
    /// Id of the message.
    pub message_id: String,
    /// Who wrote it.
    pub role: Role,
    /// The text.
    pub content: String,
    /// For an assistant message cut short by barge-in: true, and `content` holds only
    /// what was actually spoken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<bool>,
    /// For an interrupted assistant message: the part of the answer that was never
    /// spoken (not kept in the conversation context).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut: Option<String>,
}

/// `alarm`: a timer went off and rings in the session that set it (its text spoken there,
/// a few times), or stopped ringing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Alarm {
    /// The timer (`timer-N`).
    pub timer_id: String,
    /// Its label, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// What the assistant says, e.g. `"Your 5 minute timer for tea is done."`.
    pub text: String,
    /// True when it starts ringing; false when it stops (silenced, or it rang out).
    pub ringing: bool,
    /// Why it stopped: `"stopped"` (an interrupt, speech, or new input in the session) or
    /// `"rang_out"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `mode_change`: the assistant changed mode. Only the latest is replayed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModeChange {
    /// The new mode.
    pub mode: Mode,
    /// The mode before (absent for the first one after start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Mode>,
}

/// `emotion_change`: the assistant's expressed emotion changed. Only the latest is
/// replayed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EmotionChange {
    /// The new emotion, e.g. `"neutral"`, `"happy"`, `"concerned"` (an open set).
    pub emotion: String,
    /// The emotion before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// Strength, 0.0–1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intensity: Option<f64>,
}

// ---------------------------------------------------------------------------------------
// EventData: every payload, tagged by its type
// ---------------------------------------------------------------------------------------

macro_rules! event_data {
    ($($variant:ident,)+) => {
        /// Any event this version knows: its type and payload.
        ///
        /// Serializes adjacently tagged, `{"type": "stt_result", "data": {...}}`, which is
        /// the shape flattened into [`Envelope`].
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type", content = "data", rename_all = "snake_case")]
        pub enum EventData {
            $(
                #[doc = concat!("See [`", stringify!($variant), "`].")]
                $variant($variant),
            )+
        }

        impl EventData {
            /// The event type of this payload.
            pub fn event_type(&self) -> EventType {
                match self {
                    $(EventData::$variant(_) => EventType::$variant,)+
                }
            }

            /// Deserializes `data` as the payload of `event_type`.
            pub fn from_parts(event_type: EventType, data: &Value) -> Result<Self, serde_json::Error> {
                match event_type {
                    $(EventType::$variant => $variant::deserialize(data).map(EventData::$variant),)+
                }
            }

            /// The payload alone, as a JSON value (the envelope's `data`).
            pub fn data_value(&self) -> Result<Value, serde_json::Error> {
                match self {
                    $(EventData::$variant(payload) => serde_json::to_value(payload),)+
                }
            }

            fn serialize_data_field<S: SerializeStruct>(&self, out: &mut S) -> Result<(), S::Error> {
                match self {
                    $(EventData::$variant(payload) => out.serialize_field("data", payload),)+
                }
            }
        }

        $(
            impl EventPayload for $variant {
                const TYPE: EventType = EventType::$variant;
            }

            impl From<$variant> for EventData {
                fn from(payload: $variant) -> Self {
                    EventData::$variant(payload)
                }
            }
        )+

        /// The JSON Schema of the payload of `event_type`.
        pub(crate) fn payload_schema(generator: &mut SchemaGenerator, event_type: EventType) -> Schema {
            match event_type {
                $(EventType::$variant => generator.root_schema_for::<$variant>(),)+
            }
        }
    };
}

event_data! {
    SystemInfo,
    SystemMetrics,
    SystemError,
    ComponentStatus,
    Alert,
    ConnectionStatus,
    Replay,
    Config,
    CommandResult,
    CommandError,
    DiagnosticTick,
    LatencyTrace,
    ComponentTiming,
    WakeDetected,
    SttStart,
    SttInterim,
    SttResult,
    SttError,
    LlmStart,
    LlmToken,
    LlmResult,
    LlmError,
    TtsStart,
    TtsProgress,
    TtsPaused,
    TtsResumed,
    TtsResult,
    TtsError,
    TtsAudio,
    IntentResult,
    MemoryStore,
    MemoryRetrieve,
    MemoryError,
    ToolCall,
    ToolProgress,
    ToolResult,
    ToolError,
    McpStatus,
    ConversationStart,
    ConversationTurn,
    ConversationEnd,
    ConversationMessage,
    Alarm,
    ModeChange,
    EmotionChange,
}

// ---------------------------------------------------------------------------------------
// Envelopes
// ---------------------------------------------------------------------------------------

/// A server message of a type this version knows, with its typed payload.
///
/// Wire form (fields in this order when serialized):
/// `{"version":"1.0","seq":143,"timestamp":1713943123.771,"type":"stt_result","session_id":"cli-01","data":{...}}`.
///
/// Deserializing fails for an event type this version does not know; a client that must
/// survive newer servers reads [`RawEnvelope`] instead. Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Envelope {
    /// Protocol version `"MAJOR.MINOR"` of the sender.
    pub version: String,
    /// Position in the server's event stream. For direct replies (`replay`, `config`,
    /// `command_result`, `command_error`) the `seq` of the last stream event this
    /// connection was sent (0 if none): direct replies are not numbered.
    pub seq: u64,
    /// When the hub accepted the event, unix seconds.
    pub timestamp: f64,
    /// The conversation session, or [`SYSTEM_SESSION`] for process-wide events.
    pub session_id: String,
    /// The `type` and `data` fields.
    #[serde(flatten)]
    pub event: EventData,
    /// Cluster view only (`hello {"scope":"cluster"}`): the node whose hub produced the
    /// event; `seq` is then the cluster stream's sequence.
    #[serde(default)]
    pub node: Option<String>,
    /// Cluster view only: the event's `seq` on its own node.
    #[serde(default)]
    pub node_seq: Option<u64>,
}

impl Envelope {
    /// An envelope of the current [`PROTOCOL_VERSION`].
    pub fn new(
        seq: u64,
        timestamp: f64,
        session_id: impl Into<String>,
        event: impl Into<EventData>,
    ) -> Self {
        Envelope {
            version: PROTOCOL_VERSION.to_owned(),
            seq,
            timestamp,
            session_id: session_id.into(),
            event: event.into(),
            node: None,
            node_seq: None,
        }
    }

    /// The event type.
    pub fn event_type(&self) -> EventType {
        self.event.event_type()
    }

    /// The same message with an untyped payload (e.g. to put it into a [`Replay`]).
    pub fn to_raw(&self) -> Result<RawEnvelope, serde_json::Error> {
        Ok(RawEnvelope {
            version: self.version.clone(),
            seq: self.seq,
            timestamp: self.timestamp,
            event_type: self.event_type().as_str().to_owned(),
            session_id: self.session_id.clone(),
            data: self.event.data_value()?,
            node: self.node.clone(),
            node_seq: self.node_seq,
        })
    }
}

impl Serialize for Envelope {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let fields = 6 + usize::from(self.node.is_some()) + usize::from(self.node_seq.is_some());
        let mut out = serializer.serialize_struct("Envelope", fields)?;
        out.serialize_field("version", &self.version)?;
        out.serialize_field("seq", &self.seq)?;
        out.serialize_field("timestamp", &self.timestamp)?;
        out.serialize_field("type", self.event.event_type().as_str())?;
        out.serialize_field("session_id", &self.session_id)?;
        self.event.serialize_data_field(&mut out)?;
        if let Some(node) = &self.node {
            out.serialize_field("node", node)?;
        }
        if let Some(n) = self.node_seq {
            out.serialize_field("node_seq", &n)?;
        }
        out.end()
    }
}

/// Any server message, its payload left as JSON: the tolerant way to read the stream.
///
/// Reading every frame as `RawEnvelope` never fails for a well-formed message, whatever
/// its type; [`decode`](RawEnvelope::decode) then gives the typed payload, or `None` for a
/// type added by a later MINOR version (skip it). Also the element type of
/// [`Replay::events`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RawEnvelope {
    /// Protocol version `"MAJOR.MINOR"` of the sender.
    pub version: String,
    /// Position in the server's event stream (see [`Envelope::seq`]).
    pub seq: u64,
    /// When the hub accepted the event, unix seconds.
    pub timestamp: f64,
    /// The event type (`snake_case`), possibly one this version does not know.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The conversation session, or `"system"` for process-wide events.
    pub session_id: String,
    /// The payload, an object whose shape depends on `type`.
    pub data: Value,
    /// Cluster view only: the node that produced the event (see [`Envelope::node`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Cluster view only: the event's `seq` on its own node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_seq: Option<u64>,
}

impl RawEnvelope {
    /// The event type, or `None` when this version does not know it.
    pub fn known_type(&self) -> Option<EventType> {
        EventType::parse(&self.event_type)
    }

    /// The typed payload: `None` for an unknown type (ignore the event), `Some(Err(_))`
    /// when a known type's `data` does not match its struct.
    pub fn decode(&self) -> Option<Result<EventData, serde_json::Error>> {
        let event_type = self.known_type()?;
        Some(EventData::from_parts(event_type, &self.data))
    }

    /// The typed envelope; `None` for an unknown type (see [`decode`](Self::decode)).
    pub fn to_envelope(&self) -> Option<Result<Envelope, serde_json::Error>> {
        let event = self.decode()?;
        Some(event.map(|event| Envelope {
            version: self.version.clone(),
            seq: self.seq,
            timestamp: self.timestamp,
            session_id: self.session_id.clone(),
            event,
            node: self.node.clone(),
            node_seq: self.node_seq,
        }))
    }
}

impl TryFrom<&Envelope> for RawEnvelope {
    type Error = serde_json::Error;

    fn try_from(envelope: &Envelope) -> Result<Self, Self::Error> {
        envelope.to_raw()
    }
}
