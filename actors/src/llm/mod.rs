//! The LLM room: the provider trait every engine implements (the embedded GGUF model,
//! Ollama, OpenAI-compatible servers, OCI GenAI), the request/response types they share,
//! and the error set every provider maps its failures into.
//!
//! Engines live in sub-modules of this room and are chosen by `llm.provider` in config:
//! [`ollama`] (Ollama's native API), [`openai`] (any OpenAI-compatible server: LiteLLM
//! proxy, vLLM, llama.cpp's server, LM Studio), [`oci`] (OCI Generative AI, signed
//! requests). [`registry`] builds the configured provider with its fallback chain.

pub mod http;
pub mod oci;
pub mod ollama;
pub mod openai;
pub mod registry;
pub mod scripted;
pub mod usage;

pub mod actor;

pub mod local;

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;
use serde::{Deserialize, Serialize};

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatRole {
    /// Instructions.
    System,
    /// The person.
    User,
    /// The model.
    Assistant,
    /// A tool's answer to a tool call.
    Tool,
}

/// A function call the model asked for (OpenAI-style function calling).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCallRequest {
    /// Call id (to correlate the tool's answer).
    pub id: String,
    /// Tool name.
    pub name: String,
    /// Arguments as a JSON string, exactly as the model produced them.
    pub arguments: String,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who said it.
    pub role: ChatRole,
    /// The text.
    pub content: String,
    /// Calls the assistant asked for (assistant messages only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallRequest>,
    /// Which call this answers (tool messages only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// A message with only text.
    pub fn new(role: ChatRole, content: impl Into<String>) -> Self {
        ChatMessage {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

/// A tool the model may call: name, description and JSON-Schema parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// Tool name.
    pub name: String,
    /// What it does (the model reads this).
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: serde_json::Value,
}

/// A chat request, provider-neutral.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// Model name (`None`: the provider's configured default).
    pub model: Option<String>,
    /// The conversation, oldest first.
    pub messages: Vec<ChatMessage>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// Most tokens to generate.
    pub max_tokens: Option<u32>,
    /// Stop sequences.
    pub stop: Vec<String>,
    /// Seed for reproducible sampling, where supported.
    pub seed: Option<u64>,
    /// Tools offered for function calling (passed through where supported).
    pub tools: Vec<ToolSpec>,
    /// Provider-specific extra fields passed through verbatim (e.g. `tool_choice`).
    pub extra: Option<serde_json::Value>,
}

impl ChatRequest {
    /// The model it names, when it names one.
    pub fn named_model(&self) -> Option<&str> {
        self.model.as_deref().filter(|m| !m.is_empty())
    }
}

/// Sampling settings applied to requests that leave them unset (`[llm]` in config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerationDefaults {
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// Most tokens to generate.
    pub max_tokens: Option<u32>,
    /// Seed for reproducible sampling.
    pub seed: Option<u64>,
}

impl GenerationDefaults {
    /// Fills the fields `req` leaves unset.
    pub fn apply(&self, req: &mut ChatRequest) {
        req.temperature = req.temperature.or(self.temperature);
        req.top_p = req.top_p.or(self.top_p);
        req.max_tokens = req.max_tokens.or(self.max_tokens);
        req.seed = req.seed.or(self.seed);
    }
}

/// Token counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
}

/// Why generation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model stopped (end token or stop sequence).
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The model asked for tool calls.
    ToolCalls,
    /// The caller cancelled.
    Cancelled,
    /// Something else the provider said.
    Other(String),
}

/// A whole answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// The model that answered.
    pub model: String,
    pub text: String,
    /// Tool calls asked for.
    pub tool_calls: Vec<ToolCallRequest>,
    /// Token counts (estimated where the provider does not say).
    pub usage: Usage,
    /// Why it ended.
    pub finish_reason: FinishReason,
}

/// One piece of a streamed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamChunk {
    /// A piece of text, in order.
    Token(String),
    /// A complete tool call (streams assemble the deltas before yielding it).
    ToolCall(ToolCallRequest),
    /// The end, with usage when known.
    Done {
        /// Why it ended.
        finish_reason: FinishReason,
        /// Token counts when known.
        usage: Option<Usage>,
    },
}

/// A stream of chunks. Dropping it cancels the generation (and the HTTP request).
pub type ChatStream = Pin<Box<dyn Stream<Item = Result<StreamChunk, LlmError>> + Send>>;

/// A streamed answer and who gives it: with a fallback chain or the LLM pool, that is
/// only known once the answer started.
pub struct Served {
    pub stream: ChatStream,
    /// The provider answering: the chain's link that answered, `pool:<node>` for a core
    /// of the LLM pool.
    pub provider: String,
    pub model: String,
}

impl fmt::Debug for Served {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Served")
            .field("provider", &self.provider)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

/// What a provider says about a model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The id to put in requests.
    pub id: String,
    /// A friendlier name, where there is one.
    pub name: Option<String>,
    /// Which provider serves it.
    pub provider: String,
    /// Context window, when known.
    pub context_length: Option<u32>,
    /// Size on disk, when known.
    pub size_bytes: Option<u64>,
    /// Anything else the provider reports.
    pub details: Option<serde_json::Value>,
}

/// Provider health.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// Reachable and able to answer.
    pub ok: bool,
    /// Round-trip of the health check.
    pub latency_ms: f64,
    /// What was found.
    pub detail: String,
}

/// The small set every provider maps its failures into.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    /// Credentials missing or refused.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// Model or endpoint not found.
    #[error("not found: {0}")]
    NotFound(String),
    /// Too many requests.
    #[error("rate limited{}: {message}", retry_after.map(|d| format!(" (retry after {:.1} s)", d.as_secs_f64())).unwrap_or_default())]
    RateLimited {
        /// Server's Retry-After, when given.
        retry_after: Option<Duration>,
        /// What the server said.
        message: String,
    },
    /// Connect or idle timeout.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The provider cannot be reached or is not set up (also: feature not built).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The provider answered something we cannot use.
    #[error("bad response: {0}")]
    BadResponse(String),
    /// The request itself is invalid (caller's error).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Cancelled by the caller (barge-in).
    #[error("cancelled")]
    Cancelled,
}

impl LlmError {
    /// The `llm_error` event of this failure in `turn_id`.
    pub fn event(&self, turn_id: &str) -> coda_protocol::LlmError {
        coda_protocol::LlmError {
            turn_id: Some(turn_id.to_string()),
            code: self.code().to_string(),
            message: self.to_string(),
            level: coda_protocol::Level::Error,
        }
    }

    /// The stable code for events (`llm_error.code`).
    pub fn code(&self) -> &'static str {
        match self {
            LlmError::Auth(_) => "auth",
            LlmError::NotFound(_) => "not_found",
            LlmError::RateLimited { .. } => "rate_limited",
            LlmError::Timeout(_) => "timeout",
            LlmError::Unavailable(_) => "unavailable",
            LlmError::BadResponse(_) => "bad_response",
            LlmError::Invalid(_) => "invalid",
            LlmError::Cancelled => "cancelled",
        }
    }

    /// What the error says, without the prefix of its kind.
    pub fn detail(&self) -> String {
        match self {
            LlmError::Auth(m)
            | LlmError::NotFound(m)
            | LlmError::Timeout(m)
            | LlmError::Unavailable(m)
            | LlmError::BadResponse(m)
            | LlmError::Invalid(m) => m.clone(),
            LlmError::RateLimited { message, .. } => message.clone(),
            LlmError::Cancelled => String::new(),
        }
    }

    /// The error of `code` (as [`LlmError::code`] names it) saying `detail`: the same
    /// variant again on the other side of a wire. An unknown code is a bad response.
    pub fn from_parts(code: &str, detail: String, retry_after: Option<Duration>) -> LlmError {
        match code {
            "auth" => LlmError::Auth(detail),
            "not_found" => LlmError::NotFound(detail),
            "rate_limited" => LlmError::RateLimited {
                retry_after,
                message: detail,
            },
            "timeout" => LlmError::Timeout(detail),
            "unavailable" => LlmError::Unavailable(detail),
            "bad_response" => LlmError::BadResponse(detail),
            "invalid" => LlmError::Invalid(detail),
            "cancelled" => LlmError::Cancelled,
            other => LlmError::BadResponse(format!("unknown error kind `{other}`: {detail}")),
        }
    }

    /// Is it worth trying the next provider of a fallback chain?
    pub fn is_unavailable(&self) -> bool {
        matches!(self, LlmError::Unavailable(_) | LlmError::Timeout(_))
    }
}

/// A language-model provider. Implementations are cheap to share (`Arc<dyn LlmProvider>`)
/// and do blocking work (local inference) off the caller's event loop.
#[async_trait::async_trait]
pub trait LlmProvider: Send + Sync + fmt::Debug {
    /// The provider's config name (`local`, `ollama`, `openai`, `oci`, ...).
    fn name(&self) -> &str;

    /// The model used when a request names none.
    fn default_model(&self) -> String;

    /// A whole answer.
    async fn chat(&self, req: ChatRequest) -> Result<ChatResponse, LlmError> {
        collect(self.chat_stream(req).await?, self.default_model()).await
    }

    /// A streamed answer. Dropping the stream cancels the generation.
    async fn chat_stream(&self, req: ChatRequest) -> Result<ChatStream, LlmError>;

    /// A streamed answer, saying which provider and model give it.
    async fn chat_stream_served(&self, req: ChatRequest) -> Result<Served, LlmError> {
        let named = req.named_model().map(str::to_string);
        let stream = self.chat_stream(req).await?;
        Ok(Served {
            stream,
            provider: self.name().to_string(),
            // Asked after the call: a provider may discover its model on first use.
            model: named.unwrap_or_else(|| self.default_model()),
        })
    }

    /// Models this provider can serve.
    async fn list_models(&self) -> Result<Vec<ModelInfo>, LlmError>;

    /// Models this provider can serve, bypassing any cache (the same as `list_models` for
    /// providers that keep none).
    async fn refresh_models(&self) -> Result<Vec<ModelInfo>, LlmError> {
        self.list_models().await
    }

    /// One model's details.
    async fn model_info(&self, model: &str) -> Result<ModelInfo, LlmError> {
        self.list_models()
            .await?
            .into_iter()
            .find(|m| m.id == model || m.name.as_deref() == Some(model))
            .ok_or_else(|| {
                LlmError::NotFound(format!("model `{model}` on provider `{}`", self.name()))
            })
    }

    /// Is the provider reachable and ready?
    async fn health(&self) -> Result<Health, LlmError>;
}

/// Drains a stream into a whole answer.
pub async fn collect(mut stream: ChatStream, model: String) -> Result<ChatResponse, LlmError> {
    use futures_util::StreamExt;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    let mut usage = None;
    let mut finish_reason = FinishReason::Stop;
    let mut tokens = 0u32;
    while let Some(chunk) = stream.next().await {
        match chunk? {
            StreamChunk::Token(t) => {
                tokens += 1;
                text.push_str(&t);
            }
            StreamChunk::ToolCall(c) => tool_calls.push(c),
            StreamChunk::Done {
                finish_reason: f,
                usage: u,
            } => {
                finish_reason = f;
                usage = u;
                break;
            }
        }
    }
    Ok(ChatResponse {
        model,
        text,
        tool_calls,
        usage: usage.unwrap_or(Usage {
            prompt_tokens: 0,
            completion_tokens: tokens,
        }),
        finish_reason,
    })
}

/// The request-body parts Ollama and OpenAI-compatible servers spell the same way: the
/// tools as `{"type":"function","function":{…}}` and the caller's extra fields (which win).
pub(crate) fn add_tools_and_extra(
    body: &mut serde_json::Map<String, serde_json::Value>,
    req: &ChatRequest,
) {
    use serde_json::{json, Value};
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.name, "description": t.description, "parameters": t.parameters}})
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(Value::Object(extra)) = &req.extra {
        for (k, v) in extra {
            body.insert(k.clone(), v.clone());
        }
    }
}
