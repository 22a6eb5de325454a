//! Client → server messages: one data struct per [`CommandType`], the [`Command`] enum,
//! and [`parse_command`], which turns a text frame into a command or a rejection carrying
//! a stable [`ErrorCode`].
//!
//! Wire form: `{"id":"c-17","type":"text_input","data":{"text":"what time is it"},
//! "timestamp":"2025-05-01T12:34:56.789Z"}`. Only `type` is required; a missing (or `null`)
//! `data` is the same as `{}`; unknown fields, at the top level and inside `data`, are
//! ignored so that newer clients can talk to older servers.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::events::{AudioSource, CommandError, SttMode, SYSTEM_SESSION};
use crate::kinds::{CommandType, ErrorCode};

/// Longest `text_input` text, in characters.
pub const MAX_TEXT_CHARS: usize = 10_000;
/// Most patterns in one `subscribe` / `unsubscribe` / `hello.subscribe`.
pub const MAX_SUBSCRIBE_PATTERNS: usize = 64;
/// Longest event-type pattern, in characters.
pub const MAX_PATTERN_CHARS: usize = 64;
/// Longest `text_input.session_id`, in characters.
pub const MAX_SESSION_ID_CHARS: usize = 128;
/// Largest `limit` of `memory_search` / `memory_list`.
pub const MAX_MEMORY_LIMIT: u32 = 1_000;

/// The longest `expires_s` a token may be given: 100 years (beyond it a lifetime is
/// "never", which is what leaving it out means).
pub const MAX_TOKEN_LIFETIME_S: f64 = 100.0 * 365.25 * 86_400.0;
/// Longest `memory_search` query, in characters.
pub const MAX_QUERY_CHARS: usize = 1_000;

/// Longest piece of client text echoed back in an error message.
const MAX_ECHOED_CHARS: usize = 64;

// ---------------------------------------------------------------------------------------
// Data structs
// ---------------------------------------------------------------------------------------

/// `hello`: the first command of a well-behaved client.
///
/// The server checks the version (see [`check_compatible`](crate::check_compatible)),
/// applies `subscribe` as the type filter, and, when `last_seq` is given, replays what the
/// client missed as with `resume`. Answered with a `command_result` whose `data` is a
/// [`HelloReply`](crate::HelloReply).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Hello {
    /// Free-form client name and version, e.g. `"coda-dashboard/0.3"` (for logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The protocol version the client speaks, `"MAJOR.MINOR"`.
    pub protocol_version: String,
    /// Resume: the epoch of `last_seq` (from an earlier `replay` or `hello` answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// Resume: the last `seq` the client received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
    /// Event-type filter to start with (as `subscribe.types`); absent means every type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<Vec<String>>,
    /// Whose events: this node's (`local`, the default) or every node's of the cluster
    /// (`cluster`: numbered by the cluster stream's sequence, which `epoch`/`last_seq`
    /// then refer to; needs `[cluster]` configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
}

/// `hello.scope`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// This node's hub.
    #[default]
    Local,
    /// Every node's events, from the cluster's JetStream stream.
    Cluster,
}

/// `auth`: authenticate with a token, when none came with the HTTP upgrade.
///
/// Its `Debug` output never shows the token.
#[derive(Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Auth {
    /// The access token (created with the CLI).
    pub token: String,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("token", &"<redacted>")
            .finish()
    }
}

/// `subscribe` / `unsubscribe`: add patterns to, or remove them from, the event-type filter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Subscribe {
    /// Event types (`"llm_result"`) or prefix patterns ending in `*` (`"stt_*"`, `"*"`).
    pub types: Vec<String>,
}

/// `resume`: replay every retained event after a stream position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Resume {
    /// The epoch `last_seq` belongs to; when it differs from the server's, the replay is
    /// `complete: false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// The last `seq` the client received.
    pub last_seq: u64,
}

/// `text_input`: one conversation turn from text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TextInput {
    /// What the user typed (not empty, at most 10,000 characters).
    pub text: String,
    /// The conversation session to continue; absent means this connection's session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

/// `stt_start`: start listening. (Named `SttStartCommand` so it does not clash with the
/// [`SttStart`](crate::SttStart) event.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SttStartCommand {
    /// Push-to-talk or continuous.
    pub mode: SttMode,
    /// Where the audio comes from; absent means the server's device. With `client`, send
    /// the audio as binary frames until `stt_stop`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<AudioSource>,
}

/// `stt_stop`: stop listening (the utterance so far is transcribed).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SttStop {}

/// `interrupt`: barge-in: stop LLM generation and TTS playback now.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Interrupt {}

/// `demo_flow`: run a scripted STT → LLM → TTS flow through the real components.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DemoFlow {
    /// The utterance to simulate; absent means a built-in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// The (empty) data of `get_system_info`, `get_performance_metrics`, `get_config` and
/// `ping`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Empty {}

/// `memory_search` / `memory_list`: look at long-term memories.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MemoryQuery {
    /// Search text (`memory_search`); ignored by `memory_list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Most results to return, 1–1000; absent means the server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `token_create`: create an access token (admin: only for a connection authenticated
/// with the server's per-boot token, i.e. the local `coda token` command).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TokenCreate {
    /// A name for the token (who or what uses it).
    pub name: String,
    /// Lifetime in seconds; absent means no expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_s: Option<f64>,
}

/// `token_revoke`: revoke a token by id or name (admin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TokenRef {
    /// Token id (from `token_list`) or name.
    pub token: String,
}

/// `token_rotate`: give a token a new secret; the old one stops working at once (admin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TokenRotate {
    /// Token id or name.
    pub token: String,
    /// Lifetime of the new secret in seconds; absent means no expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_s: Option<f64>,
}

// ---------------------------------------------------------------------------------------
// Command, CommandRequest
// ---------------------------------------------------------------------------------------

/// A command with its data.
///
/// Serializes to `{"type": ..., "data": {...}}` (the commands without data give
/// `"data": {}`).
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `hello`
    Hello(Hello),
    /// `auth`
    Auth(Auth),
    /// `subscribe`
    Subscribe(Subscribe),
    /// `unsubscribe`
    Unsubscribe(Subscribe),
    /// `resume`
    Resume(Resume),
    /// `text_input`
    TextInput(TextInput),
    /// `stt_start`
    SttStart(SttStartCommand),
    /// `stt_stop`
    SttStop(SttStop),
    /// `interrupt`
    Interrupt(Interrupt),
    /// `demo_flow`
    DemoFlow(DemoFlow),
    /// `get_system_info`
    GetSystemInfo,
    /// `get_performance_metrics`
    GetPerformanceMetrics,
    /// `get_config`
    GetConfig,
    /// `memory_search`
    MemorySearch(MemoryQuery),
    /// `memory_list`
    MemoryList(MemoryQuery),
    /// `ping`
    Ping,
    /// `token_create` (admin)
    TokenCreate(TokenCreate),
    /// `token_list` (admin)
    TokenList,
    /// `token_revoke` (admin)
    TokenRevoke(TokenRef),
    /// `token_rotate` (admin)
    TokenRotate(TokenRotate),
}

impl Command {
    /// The command's type.
    pub fn command_type(&self) -> CommandType {
        match self {
            Command::Hello(_) => CommandType::Hello,
            Command::Auth(_) => CommandType::Auth,
            Command::Subscribe(_) => CommandType::Subscribe,
            Command::Unsubscribe(_) => CommandType::Unsubscribe,
            Command::Resume(_) => CommandType::Resume,
            Command::TextInput(_) => CommandType::TextInput,
            Command::SttStart(_) => CommandType::SttStart,
            Command::SttStop(_) => CommandType::SttStop,
            Command::Interrupt(_) => CommandType::Interrupt,
            Command::DemoFlow(_) => CommandType::DemoFlow,
            Command::GetSystemInfo => CommandType::GetSystemInfo,
            Command::GetPerformanceMetrics => CommandType::GetPerformanceMetrics,
            Command::GetConfig => CommandType::GetConfig,
            Command::MemorySearch(_) => CommandType::MemorySearch,
            Command::MemoryList(_) => CommandType::MemoryList,
            Command::Ping => CommandType::Ping,
            Command::TokenCreate(_) => CommandType::TokenCreate,
            Command::TokenList => CommandType::TokenList,
            Command::TokenRevoke(_) => CommandType::TokenRevoke,
            Command::TokenRotate(_) => CommandType::TokenRotate,
        }
    }

    /// Reads `data` (an object; `{}` when the frame had none) as the data of
    /// `command_type` and checks its invariants. The error is the message of an
    /// `invalid_data` rejection.
    pub fn from_parts(command_type: CommandType, data: &Value) -> Result<Command, String> {
        let command = match command_type {
            CommandType::Hello => Command::Hello(data_as(command_type, data)?),
            CommandType::Auth => Command::Auth(data_as(command_type, data)?),
            CommandType::Subscribe => Command::Subscribe(data_as(command_type, data)?),
            CommandType::Unsubscribe => Command::Unsubscribe(data_as(command_type, data)?),
            CommandType::Resume => Command::Resume(data_as(command_type, data)?),
            CommandType::TextInput => Command::TextInput(data_as(command_type, data)?),
            CommandType::SttStart => Command::SttStart(data_as(command_type, data)?),
            CommandType::SttStop => Command::SttStop(data_as(command_type, data)?),
            CommandType::Interrupt => Command::Interrupt(data_as(command_type, data)?),
            CommandType::DemoFlow => Command::DemoFlow(data_as(command_type, data)?),
            CommandType::GetSystemInfo => {
                data_as::<Empty>(command_type, data)?;
                Command::GetSystemInfo
            }
            CommandType::GetPerformanceMetrics => {
                data_as::<Empty>(command_type, data)?;
                Command::GetPerformanceMetrics
            }
            CommandType::GetConfig => {
                data_as::<Empty>(command_type, data)?;
                Command::GetConfig
            }
            CommandType::MemorySearch => Command::MemorySearch(data_as(command_type, data)?),
            CommandType::MemoryList => Command::MemoryList(data_as(command_type, data)?),
            CommandType::Ping => {
                data_as::<Empty>(command_type, data)?;
                Command::Ping
            }
            CommandType::TokenCreate => Command::TokenCreate(data_as(command_type, data)?),
            CommandType::TokenList => {
                data_as::<Empty>(command_type, data)?;
                Command::TokenList
            }
            CommandType::TokenRevoke => Command::TokenRevoke(data_as(command_type, data)?),
            CommandType::TokenRotate => Command::TokenRotate(data_as(command_type, data)?),
        };
        command
            .validate()
            .map_err(|problem| format!("invalid data for {command_type}: {problem}"))?;
        Ok(command)
    }

    /// Checks the cheap invariants the server relies on (lengths, counts, non-empty text).
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Command::Hello(hello) => match &hello.subscribe {
                Some(types) => validate_patterns("subscribe", types),
                None => Ok(()),
            },
            Command::Subscribe(subscribe) | Command::Unsubscribe(subscribe) => {
                validate_patterns("types", &subscribe.types)
            }
            Command::TextInput(input) => {
                validate_text("text", &input.text)?;
                match &input.session_id {
                    Some(session) => validate_session_id(session),
                    None => Ok(()),
                }
            }
            Command::DemoFlow(DemoFlow { text: Some(text) }) => {
                let chars = text.chars().count();
                if chars > MAX_TEXT_CHARS {
                    Err(format!(
                        "`text` is {chars} characters long; the limit is {MAX_TEXT_CHARS}"
                    ))
                } else {
                    Ok(())
                }
            }
            Command::MemorySearch(query) | Command::MemoryList(query) => validate_memory(query),
            Command::TokenCreate(TokenCreate { expires_s, .. })
            | Command::TokenRotate(TokenRotate { expires_s, .. }) => match expires_s {
                Some(s) if !(s.is_finite() && *s > 0.0 && *s <= MAX_TOKEN_LIFETIME_S) => {
                    Err(format!(
                        "`expires_s` must be a positive number of seconds, at most {MAX_TOKEN_LIFETIME_S} (100 years)"
                    ))
                }
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    fn serialize_data_field<S: SerializeStruct>(&self, out: &mut S) -> Result<(), S::Error> {
        match self {
            Command::Hello(data) => out.serialize_field("data", data),
            Command::Auth(data) => out.serialize_field("data", data),
            Command::Subscribe(data) | Command::Unsubscribe(data) => {
                out.serialize_field("data", data)
            }
            Command::Resume(data) => out.serialize_field("data", data),
            Command::TextInput(data) => out.serialize_field("data", data),
            Command::SttStart(data) => out.serialize_field("data", data),
            Command::SttStop(data) => out.serialize_field("data", data),
            Command::Interrupt(data) => out.serialize_field("data", data),
            Command::DemoFlow(data) => out.serialize_field("data", data),
            Command::MemorySearch(data) | Command::MemoryList(data) => {
                out.serialize_field("data", data)
            }
            Command::TokenCreate(data) => out.serialize_field("data", data),
            Command::TokenRevoke(data) => out.serialize_field("data", data),
            Command::TokenRotate(data) => out.serialize_field("data", data),
            Command::GetSystemInfo
            | Command::GetPerformanceMetrics
            | Command::GetConfig
            | Command::TokenList
            | Command::Ping => out.serialize_field("data", &Empty {}),
        }
    }
}

impl Serialize for Command {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_struct("Command", 2)?;
        out.serialize_field("type", self.command_type().as_str())?;
        self.serialize_data_field(&mut out)?;
        out.end()
    }
}

/// The optional `timestamp` of a command: ISO-8601 text or unix seconds.
///
/// The server does not interpret it beyond logging; it is not validated as a date.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum CommandTimestamp {
    /// ISO-8601 text, e.g. `"2025-05-01T12:34:56.789Z"`.
    Iso(String),
    /// Unix seconds, e.g. `1746102896.789`.
    Unix(f64),
}

/// A whole command frame: the optional correlation `id` and `timestamp`, and the command.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandRequest {
    /// Correlation id: the server answers exactly once with a `command_result` or
    /// `command_error` carrying it.
    pub id: Option<String>,
    /// When the client sent it.
    pub timestamp: Option<CommandTimestamp>,
    /// The command.
    pub command: Command,
}

impl CommandRequest {
    /// A request without `id` or `timestamp`.
    pub fn new(command: Command) -> Self {
        CommandRequest {
            id: None,
            timestamp: None,
            command,
        }
    }

    /// The same request with a correlation id.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// The text frame to send: `{"id":..,"type":..,"data":{..}}` (plus `timestamp` when
    /// set; `id` is left out when `None`).
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: every map key is a string and there is no
        // custom serializer that reports errors.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

impl Serialize for CommandRequest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let fields = 2 + usize::from(self.id.is_some()) + usize::from(self.timestamp.is_some());
        let mut out = serializer.serialize_struct("CommandRequest", fields)?;
        match &self.id {
            Some(id) => out.serialize_field("id", id)?,
            None => out.skip_field("id")?,
        }
        out.serialize_field("type", self.command.command_type().as_str())?;
        self.command.serialize_data_field(&mut out)?;
        match &self.timestamp {
            Some(timestamp) => out.serialize_field("timestamp", timestamp)?,
            None => out.skip_field("timestamp")?,
        }
        out.end()
    }
}

impl From<Command> for CommandRequest {
    fn from(command: Command) -> Self {
        CommandRequest::new(command)
    }
}

/// Why a command frame was refused: becomes a `command_error` for its sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRejection {
    /// The frame's `id`, when it had a string one.
    pub id: Option<String>,
    /// Stable machine-readable reason.
    pub code: ErrorCode,
    /// Human-readable explanation naming the problem.
    pub message: String,
}

impl CommandRejection {
    fn new(id: Option<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        CommandRejection {
            id,
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for CommandRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for CommandRejection {}

impl From<CommandRejection> for CommandError {
    fn from(rejection: CommandRejection) -> Self {
        CommandError {
            id: rejection.id,
            code: rejection.code,
            message: rejection.message,
        }
    }
}

/// Parses one text frame from a client.
///
/// Errors, in the order they are checked:
///
/// | problem | code |
/// |---|---|
/// | not JSON | `bad_json` |
/// | not an object; `id` not a string; `type` missing or not a string | `invalid_data` |
/// | `type` names no command | `unknown_command` |
/// | `data` not an object; `timestamp` neither string nor number | `invalid_data` |
/// | `data` does not fit the command (missing field, wrong type, limits) | `invalid_data` |
///
/// `null` counts as absent for `id`, `data` and `timestamp`. The `id` is read first, so
/// every rejection of a JSON object with a string `id` carries that id.
///
/// ```
/// use coda_protocol::{parse_command, Command, ErrorCode};
/// let request = parse_command(r#"{"id":"c-1","type":"text_input","data":{"text":"hi"}}"#)?;
/// assert_eq!(request.id.as_deref(), Some("c-1"));
/// assert!(matches!(request.command, Command::TextInput(ref t) if t.text == "hi"));
///
/// let rejection = parse_command(r#"{"id":"c-2","type":"fly"}"#).unwrap_err();
/// assert_eq!(rejection.code, ErrorCode::UnknownCommand);
/// assert_eq!(rejection.id.as_deref(), Some("c-2"));
/// # Ok::<(), coda_protocol::CommandRejection>(())
/// ```
pub fn parse_command(text: &str) -> Result<CommandRequest, CommandRejection> {
    let value: Value = serde_json::from_str(text).map_err(|error| {
        CommandRejection::new(None, ErrorCode::BadJson, format!("invalid JSON: {error}"))
    })?;
    let Value::Object(mut frame) = value else {
        return Err(CommandRejection::new(
            None,
            ErrorCode::InvalidData,
            format!(
                "a command must be a JSON object such as {{\"type\":\"ping\"}}, not {}",
                describe(&value)
            ),
        ));
    };

    let id = match frame.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id),
        Some(other) => {
            return Err(CommandRejection::new(
                None,
                ErrorCode::InvalidData,
                format!("`id` must be a string, not {}", describe(&other)),
            ))
        }
    };
    let reject =
        |code: ErrorCode, message: String| CommandRejection::new(id.clone(), code, message);

    let type_name = match frame.get("type") {
        Some(Value::String(name)) => name.as_str(),
        None | Some(Value::Null) => {
            return Err(reject(
                ErrorCode::InvalidData,
                "missing `type`: a command looks like {\"type\":\"ping\"}".to_owned(),
            ))
        }
        Some(other) => {
            return Err(reject(
                ErrorCode::InvalidData,
                format!("`type` must be a string, not {}", describe(other)),
            ))
        }
    };
    let Some(command_type) = CommandType::parse(type_name) else {
        return Err(reject(
            ErrorCode::UnknownCommand,
            format!(
                "unknown command type `{}`; known commands: {}",
                truncate(type_name),
                known_commands()
            ),
        ));
    };

    let data = match frame.remove("data") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(data @ Value::Object(_)) => data,
        Some(other) => {
            return Err(reject(
                ErrorCode::InvalidData,
                format!("`data` must be a JSON object, not {}", describe(&other)),
            ))
        }
    };

    let timestamp = match frame.remove("timestamp") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(CommandTimestamp::Iso(text)),
        Some(Value::Number(number)) => number.as_f64().map(CommandTimestamp::Unix),
        Some(other) => {
            return Err(reject(
                ErrorCode::InvalidData,
                format!(
                    "`timestamp` must be an ISO-8601 string or unix seconds, not {}",
                    describe(&other)
                ),
            ))
        }
    };

    let command = Command::from_parts(command_type, &data)
        .map_err(|message| reject(ErrorCode::InvalidData, message))?;
    Ok(CommandRequest {
        id,
        timestamp,
        command,
    })
}

/// Deserializes `data` into `T`, naming the offending field when serde does not.
fn data_as<T: DeserializeOwned>(command_type: CommandType, data: &Value) -> Result<T, String> {
    T::deserialize(data).map_err(|error| {
        let error = error.to_string();
        match offending_field::<T>(data) {
            Some(field) if !error.contains(&format!("`{field}`")) => {
                format!("invalid data for {command_type}: field `{field}`: {error}")
            }
            _ => format!("invalid data for {command_type}: {error}"),
        }
    })
}

/// The first field of `data` whose value alone makes `T` fail for a reason other than a
/// missing field: the field serde's type error is about. Only called on the error path.
fn offending_field<T: DeserializeOwned>(data: &Value) -> Option<String> {
    let Value::Object(fields) = data else {
        return None;
    };
    fields.iter().find_map(|(key, value)| {
        let mut alone = Map::new();
        alone.insert(key.clone(), value.clone());
        match T::deserialize(&Value::Object(alone)) {
            Err(error) if !error.to_string().starts_with("missing field") => Some(truncate(key)),
            _ => None,
        }
    })
}

fn validate_text(field: &str, text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err(format!("`{field}` must not be empty"));
    }
    let chars = text.chars().count();
    if chars > MAX_TEXT_CHARS {
        return Err(format!(
            "`{field}` is {chars} characters long; the limit is {MAX_TEXT_CHARS}"
        ));
    }
    Ok(())
}

fn validate_session_id(session: &str) -> Result<(), String> {
    if session.trim().is_empty() {
        return Err(
            "`session_id` must not be empty (leave it out to use this connection's session)"
                .to_owned(),
        );
    }
    if session.chars().count() > MAX_SESSION_ID_CHARS {
        return Err(format!(
            "`session_id` is longer than {MAX_SESSION_ID_CHARS} characters"
        ));
    }
    if session == SYSTEM_SESSION {
        return Err(format!(
            "`session_id` \"{SYSTEM_SESSION}\" is reserved for process-wide events"
        ));
    }
    Ok(())
}

fn validate_patterns(field: &str, patterns: &[String]) -> Result<(), String> {
    if patterns.len() > MAX_SUBSCRIBE_PATTERNS {
        return Err(format!(
            "`{field}` has {} patterns; the limit is {MAX_SUBSCRIBE_PATTERNS}",
            patterns.len()
        ));
    }
    for pattern in patterns {
        if pattern.is_empty() {
            return Err(format!("`{field}` contains an empty pattern"));
        }
        if pattern.chars().count() > MAX_PATTERN_CHARS {
            return Err(format!(
                "pattern `{}` in `{field}` is longer than {MAX_PATTERN_CHARS} characters",
                truncate(pattern)
            ));
        }
        if pattern.trim_end_matches('*').contains('*') || pattern.matches('*').count() > 1 {
            return Err(format!(
                "pattern `{pattern}` in `{field}`: `*` is only allowed once, at the end (e.g. \"stt_*\")"
            ));
        }
    }
    Ok(())
}

fn validate_memory(query: &MemoryQuery) -> Result<(), String> {
    if let Some(limit) = query.limit {
        if limit == 0 || limit > MAX_MEMORY_LIMIT {
            return Err(format!(
                "`limit` must be between 1 and {MAX_MEMORY_LIMIT}, not {limit}"
            ));
        }
    }
    if let Some(text) = &query.query {
        if text.chars().count() > MAX_QUERY_CHARS {
            return Err(format!(
                "`query` is longer than {MAX_QUERY_CHARS} characters"
            ));
        }
    }
    Ok(())
}

fn known_commands() -> String {
    CommandType::ALL
        .iter()
        .map(|command| command.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn truncate(text: &str) -> String {
    if text.chars().count() <= MAX_ECHOED_CHARS {
        text.to_owned()
    } else {
        let mut short: String = text.chars().take(MAX_ECHOED_CHARS).collect();
        short.push('…');
        short
    }
}

/// The data struct name of each command type, for the schema.
pub(crate) fn data_schema(
    generator: &mut schemars::SchemaGenerator,
    command_type: CommandType,
) -> schemars::Schema {
    match command_type {
        CommandType::Hello => generator.root_schema_for::<Hello>(),
        CommandType::Auth => generator.root_schema_for::<Auth>(),
        CommandType::Subscribe | CommandType::Unsubscribe => {
            generator.root_schema_for::<Subscribe>()
        }
        CommandType::Resume => generator.root_schema_for::<Resume>(),
        CommandType::TextInput => generator.root_schema_for::<TextInput>(),
        CommandType::SttStart => generator.root_schema_for::<SttStartCommand>(),
        CommandType::SttStop => generator.root_schema_for::<SttStop>(),
        CommandType::Interrupt => generator.root_schema_for::<Interrupt>(),
        CommandType::DemoFlow => generator.root_schema_for::<DemoFlow>(),
        CommandType::GetSystemInfo
        | CommandType::GetPerformanceMetrics
        | CommandType::GetConfig
        | CommandType::TokenList
        | CommandType::Ping => generator.root_schema_for::<Empty>(),
        CommandType::TokenCreate => generator.root_schema_for::<TokenCreate>(),
        CommandType::TokenRevoke => generator.root_schema_for::<TokenRef>(),
        CommandType::TokenRotate => generator.root_schema_for::<TokenRotate>(),
        CommandType::MemorySearch | CommandType::MemoryList => {
            generator.root_schema_for::<MemoryQuery>()
        }
    }
}
