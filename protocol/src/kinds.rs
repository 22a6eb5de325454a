//! The closed sets of names the protocol uses: event types, command types, error codes,
//! and how long the hub keeps each event type for clients that connect or resume later.

use serde::{Deserialize, Serialize};

macro_rules! name_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant,)+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The wire name (`snake_case`).
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }

            /// Parses a wire name; `None` for a name this version does not know.
            pub fn parse(name: &str) -> Option<Self> {
                match name { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

name_enum! {
    /// Every event type the server emits (the `type` field of an envelope).
    EventType {
        // system
        /// Server identity, version, uptime and component states.
        SystemInfo = "system_info",
        /// Periodic resource usage of the process (and the machine).
        SystemMetrics = "system_metrics",
        /// A process-wide error or warning not tied to one command.
        SystemError = "system_error",
        /// A subsystem actor changed state (started, restarted, degraded, stopped).
        ComponentStatus = "component_status",
        /// A metric crossed (or dropped back under) its alert threshold.
        Alert = "alert",
        /// A WebSocket client connected, authenticated, was refused or left.
        ConnectionStatus = "connection_status",
        /// Catch-up batch of earlier events, sent to one client only.
        Replay = "replay",
        /// The effective configuration, secrets redacted, sent to one client only.
        Config = "config",
        /// Successful answer to a command, sent to the client that sent it.
        CommandResult = "command_result",
        /// Rejected or failed command, sent to the client that sent it.
        CommandError = "command_error",
        /// Synthetic load event for testing clients and throughput (off by default).
        DiagnosticTick = "diagnostic_tick",
        // performance
        /// Per-stage latency of one completed conversation turn.
        LatencyTrace = "latency_trace",
        /// Periodic latency percentiles per pipeline stage, plus counters.
        ComponentTiming = "component_timing",
        // speech-to-text
        /// The wake word was heard: the utterance after it becomes a turn.
        WakeDetected = "wake_detected",
        /// Speech-to-text started listening.
        SttStart = "stt_start",
        /// A partial (not yet final) transcript.
        SttInterim = "stt_interim",
        /// The final transcript of one utterance.
        SttResult = "stt_result",
        /// Speech-to-text failed.
        SttError = "stt_error",
        // language model
        /// The language model started generating an answer.
        LlmStart = "llm_start",
        /// One streamed piece of the answer.
        LlmToken = "llm_token",
        /// The language model finished its answer.
        LlmResult = "llm_result",
        /// The language model failed.
        LlmError = "llm_error",
        // text-to-speech
        /// Text-to-speech started on a piece of text.
        TtsStart = "tts_start",
        /// Text-to-speech reached the next sentence.
        TtsProgress = "tts_progress",
        /// Playback of a turn's speech paused: someone started talking over it.
        TtsPaused = "tts_paused",
        /// Playback of a turn's speech went on: what was heard was not speech.
        TtsResumed = "tts_resumed",
        /// Text-to-speech finished (or was interrupted).
        TtsResult = "tts_result",
        /// Text-to-speech failed.
        TtsError = "tts_error",
        /// A chunk of synthesized audio, for clients that play it themselves.
        TtsAudio = "tts_audio",
        // intent
        /// The intent router decided how to handle the input.
        IntentResult = "intent_result",
        // memory
        /// A long-term memory was stored.
        MemoryStore = "memory_store",
        /// Memories were retrieved for a turn.
        MemoryRetrieve = "memory_retrieve",
        /// A memory operation failed.
        MemoryError = "memory_error",
        // tools
        /// A tool is being called.
        ToolCall = "tool_call",
        /// A piece of a running tool's output (a command's stdout or stderr).
        ToolProgress = "tool_progress",
        /// A tool returned its result.
        ToolResult = "tool_result",
        /// A tool call failed.
        ToolError = "tool_error",
        /// An MCP server connected, changed its tools, exited or was given up on.
        McpStatus = "mcp_status",
        // conversation and state
        /// A conversation began.
        ConversationStart = "conversation_start",
        /// Summary of one completed conversation turn.
        ConversationTurn = "conversation_turn",
        /// A conversation ended.
        ConversationEnd = "conversation_end",
        /// One message of the conversation transcript.
        ConversationMessage = "conversation_message",
        /// A timer went off and rings in the session that set it, or stopped ringing.
        Alarm = "alarm",
        /// The assistant changed mode (idle, listening, thinking, speaking).
        ModeChange = "mode_change",
        /// The assistant's expressed emotion changed.
        EmotionChange = "emotion_change",
    }
}

/// How the hub keeps an event type for clients that were not connected when it happened.
///
/// Every stream event, whatever its retention, stays in the *resume window* (bounded by
/// count and age) so a reconnecting client loses nothing. Retention only decides what a
/// *new* client gets in its `replay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Kept in the replay ring (the last N important events).
    Important,
    /// Only the most recent event of this type is replayed (state snapshots).
    LatestOnly,
    /// Not replayed to new clients (high-rate streams: tokens, interims, audio, ticks,
    /// connection churn).
    Transient,
    /// Never part of the numbered stream: sent to one client only (answers, replays).
    Direct,
}

impl EventType {
    /// How the hub keeps this type for later clients.
    pub const fn retention(self) -> Retention {
        use EventType::*;
        match self {
            SystemMetrics | ModeChange | SystemInfo | ComponentTiming | EmotionChange => {
                Retention::LatestOnly
            }
            LlmToken | SttInterim | TtsProgress | TtsAudio | DiagnosticTick | ConnectionStatus
            | ToolProgress => Retention::Transient,
            Replay | Config | CommandResult | CommandError => Retention::Direct,
            _ => Retention::Important,
        }
    }
}

name_enum! {
    /// Every command a client may send (the `type` field of a command).
    CommandType {
        /// Version check, optional resume position and type filter.
        Hello = "hello",
        /// Authenticate with a token (when none came with the HTTP upgrade).
        Auth = "auth",
        /// Add event-type patterns to this connection's filter.
        Subscribe = "subscribe",
        /// Remove event-type patterns from this connection's filter.
        Unsubscribe = "unsubscribe",
        /// Replay every retained event after a stream position.
        Resume = "resume",
        /// One conversation turn from text.
        TextInput = "text_input",
        /// Start listening (push-to-talk or continuous).
        SttStart = "stt_start",
        /// Stop listening.
        SttStop = "stt_stop",
        /// Barge-in: stop generation and playback now.
        Interrupt = "interrupt",
        /// Run a scripted STT → LLM → TTS flow through the real components.
        DemoFlow = "demo_flow",
        /// Ask for a `system_info` snapshot.
        GetSystemInfo = "get_system_info",
        /// Ask for a `component_timing` summary.
        GetPerformanceMetrics = "get_performance_metrics",
        /// Ask for the effective configuration (read-only).
        GetConfig = "get_config",
        /// Search long-term memories.
        MemorySearch = "memory_search",
        /// List recent long-term memories.
        MemoryList = "memory_list",
        /// Liveness check, answered with `command_result`.
        Ping = "ping",
        /// Admin: create a token (per-boot token only).
        TokenCreate = "token_create",
        /// Admin: list tokens (per-boot token only).
        TokenList = "token_list",
        /// Admin: revoke a token (per-boot token only).
        TokenRevoke = "token_revoke",
        /// Admin: rotate a token (per-boot token only).
        TokenRotate = "token_rotate",
    }
}

name_enum! {
    /// Stable error codes carried by `command_error` and `system_error`.
    ErrorCode {
        /// The frame was not valid JSON (or not valid UTF-8).
        BadJson = "bad_json",
        /// The `type` names no command this server knows.
        UnknownCommand = "unknown_command",
        /// The command's fields are missing or of the wrong type.
        InvalidData = "invalid_data",
        /// The frame is larger than `server.max_frame_bytes`.
        TooLarge = "too_large",
        /// No valid token, or a command before authentication.
        Unauthorized = "unauthorized",
        /// The client sent commands faster than its rate limit.
        RateLimited = "rate_limited",
        /// The feature is not available (not built yet, degraded, or switched off).
        Unavailable = "unavailable",
        /// The client's protocol MAJOR differs from the server's.
        VersionMismatch = "version_mismatch",
        /// The server failed while handling a valid command.
        Internal = "internal",
    }
}
