//! OpenAI-compatible servers: `POST {base_url}/chat/completions` streamed as SSE and
//! `GET {base_url}/models`. Written against the OpenAI wire format only (no vendor
//! extensions required), so it works unmodified with the LiteLLM proxy, vLLM, llama.cpp's
//! `llama-server` and LM Studio. Tool / function-calling fields are passed through: tools
//! are sent as `tools`, streamed `tool_calls` deltas are assembled into whole calls, and
//! anything in [`ChatRequest::extra`] (e.g. `tool_choice`) is merged into the body.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{json, Map, Value};

use super::http::{self, Decoder, HttpOptions, Payload};
use super::{
    ChatMessage, ChatRequest, ChatRole, ChatStream, FinishReason, Health, LlmError, LlmProvider,
    ModelInfo, StreamChunk, ToolCallRequest, Usage,
};

/// Settings of one OpenAI-compatible endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenAiConfig {
    /// Base URL including the API version path, e.g. `http://127.0.0.1:4000/v1`.
    pub base_url: String,
    /// Bearer token (`None`: no `Authorization` header, as local servers expect).
    pub api_key: Option<String>,
    /// Model used when a request names none (empty: the first model `/models` lists,
    /// which suits single-model servers such as llama.cpp's).
    pub model: String,
    /// Ask for a final usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    /// Timeouts and retries.
    pub http: HttpOptions,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        OpenAiConfig {
            base_url: "http://127.0.0.1:4000/v1".into(),
            api_key: None,
            model: String::new(),
            include_usage: true,
            http: HttpOptions::default(),
        }
    }
}

/// An OpenAI-compatible provider.
pub struct OpenAiProvider {
    name: String,
    cfg: OpenAiConfig,
    client: reqwest::Client,
    chat_url: String,
    models_url: String,
    /// The model found by asking `/models` when none is configured.
    discovered_model: Mutex<Option<String>>,
}

impl std::fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("name", &self.name)
            .field("base_url", &self.cfg.base_url)
            .field("model", &self.cfg.model)
            .field("api_key", &self.cfg.api_key.as_ref().map(|_| "***"))
            .finish()
    }
}

impl OpenAiProvider {
    /// A provider named `openai`.
    pub fn new(cfg: OpenAiConfig) -> Result<Self, LlmError> {
        Self::with_name("openai", cfg)
    }

    /// A provider with another config name (several OpenAI-compatible endpoints).
    pub fn with_name(name: &str, cfg: OpenAiConfig) -> Result<Self, LlmError> {
        let base = cfg.base_url.trim().trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(LlmError::Invalid(format!(
                "{name}: base_url must start with http:// or https://, not {:?}",
                cfg.base_url
            )));
        }
        let client = http::client(&cfg.http)?;
        Ok(OpenAiProvider {
            name: name.to_string(),
            chat_url: format!("{base}/chat/completions"),
            models_url: format!("{base}/models"),
            cfg,
            client,
            discovered_model: Mutex::new(None),
        })
    }

    fn authorize(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.cfg.api_key {
            Some(key) if !key.is_empty() => rb.bearer_auth(key),
            _ => rb,
        }
    }

    /// The model for `req`: its own, the configured one, or the server's first.
    async fn model_for(&self, req: &ChatRequest) -> Result<String, LlmError> {
        if let Some(m) = req.named_model() {
            return Ok(m.to_string());
        }
        if !self.cfg.model.is_empty() {
            return Ok(self.cfg.model.clone());
        }
        if let Some(m) = self.discovered().clone() {
            return Ok(m);
        }
        let first = self
            .list_models()
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| {
                LlmError::NotFound(format!(
                    "{}: no model configured (llm.openai.model) and {} lists none",
                    self.name, self.models_url
                ))
            })?;
        *self.discovered() = Some(first.id.clone());
        Ok(first.id)
    }

    fn discovered(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.discovered_model
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The request body for `req` (public for tests and benchmarks of the wire format).
    pub fn request_body(&self, req: &ChatRequest, model: &str) -> Value {
        let mut body = Map::new();
        body.insert("model".into(), json!(model));
        body.insert(
            "messages".into(),
            Value::Array(req.messages.iter().map(message_json).collect()),
        );
        body.insert("stream".into(), json!(true));
        if self.cfg.include_usage {
            body.insert("stream_options".into(), json!({"include_usage": true}));
        }
        if let Some(t) = req.temperature {
            body.insert("temperature".into(), json!(t));
        }
        if let Some(p) = req.top_p {
            body.insert("top_p".into(), json!(p));
        }
        if let Some(n) = req.max_tokens {
            body.insert("max_tokens".into(), json!(n));
        }
        if let Some(s) = req.seed {
            body.insert("seed".into(), json!(s));
        }
        if !req.stop.is_empty() {
            body.insert("stop".into(), json!(req.stop));
        }
        super::add_tools_and_extra(&mut body, req);
        Value::Object(body)
    }
}

fn role_str(r: ChatRole) -> &'static str {
    match r {
        ChatRole::System => "system",
        ChatRole::User => "user",
        ChatRole::Assistant => "assistant",
        ChatRole::Tool => "tool",
    }
}

fn message_json(m: &ChatMessage) -> Value {
    let mut o = Map::new();
    o.insert("role".into(), json!(role_str(m.role)));
    if m.tool_calls.is_empty() || !m.content.is_empty() {
        o.insert("content".into(), json!(m.content));
    } else {
        o.insert("content".into(), Value::Null);
    }
    if !m.tool_calls.is_empty() {
        let calls: Vec<Value> = m
            .tool_calls
            .iter()
            .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
            .collect();
        o.insert("tool_calls".into(), Value::Array(calls));
    }
    if let Some(id) = &m.tool_call_id {
        o.insert("tool_call_id".into(), json!(id));
    }
    Value::Object(o)
}

/// Decodes `chat.completion.chunk` events.
#[derive(Default)]
pub struct OpenAiDecoder {
    provider: String,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    /// Tool calls being assembled, by their `index`.
    calls: BTreeMap<u64, ToolCallRequest>,
}

impl OpenAiDecoder {
    /// A decoder whose errors name `provider`.
    pub fn new(provider: &str) -> Self {
        OpenAiDecoder {
            provider: provider.to_string(),
            ..Default::default()
        }
    }

    fn finish(&mut self, out: &mut VecDeque<StreamChunk>) {
        for (_, call) in std::mem::take(&mut self.calls) {
            out.push_back(StreamChunk::ToolCall(call));
        }
        out.push_back(StreamChunk::Done {
            finish_reason: self.finish.take().unwrap_or(FinishReason::Stop),
            usage: self.usage.take(),
        });
    }
}

/// Maps OpenAI's `finish_reason` strings.
pub fn finish_reason(s: &str) -> FinishReason {
    match s {
        "stop" | "eos" | "end_turn" => FinishReason::Stop,
        "length" | "max_tokens" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        other => FinishReason::Other(other.to_string()),
    }
}

impl Decoder for OpenAiDecoder {
    fn feed(&mut self, p: &Payload, out: &mut VecDeque<StreamChunk>) -> Result<bool, LlmError> {
        let data = p.data.trim();
        if data == "[DONE]" {
            self.finish(out);
            return Ok(true);
        }
        if data.is_empty() {
            return Ok(false);
        }
        let v: Value = serde_json::from_str(data).map_err(|e| {
            LlmError::BadResponse(format!(
                "{}: a streamed event is not JSON ({e}): {}",
                self.provider,
                data.chars().take(200).collect::<String>()
            ))
        })?;
        // Servers report failures inside the stream too (vLLM, LiteLLM).
        if p.event == "error" || v.get("error").is_some_and(|e| !e.is_null()) {
            let msg = http::error_message(data);
            let code = v["error"]["code"]
                .as_u64()
                .or_else(|| v["error"]["status_code"].as_u64());
            return Err(match code {
                Some(429) => LlmError::RateLimited {
                    retry_after: None,
                    message: format!("{}: {msg}", self.provider),
                },
                Some(401 | 403) => LlmError::Auth(format!("{}: {msg}", self.provider)),
                _ => LlmError::BadResponse(format!(
                    "{}: the server reported an error mid-answer: {msg}",
                    self.provider
                )),
            });
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            self.usage = Some(Usage {
                prompt_tokens: u["prompt_tokens"].as_u64().unwrap_or(0) as u32,
                completion_tokens: u["completion_tokens"].as_u64().unwrap_or(0) as u32,
            });
        }
        let Some(choice) = v["choices"].as_array().and_then(|c| c.first()) else {
            return Ok(false);
        };
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str() {
            if !text.is_empty() {
                out.push_back(StreamChunk::Token(text.to_string()));
            }
        }
        if let Some(calls) = delta["tool_calls"].as_array() {
            for (pos, c) in calls.iter().enumerate() {
                let index = c["index"].as_u64().unwrap_or(pos as u64);
                let entry = self.calls.entry(index).or_insert_with(|| ToolCallRequest {
                    id: String::new(),
                    name: String::new(),
                    arguments: String::new(),
                });
                if let Some(id) = c["id"].as_str().filter(|s| !s.is_empty()) {
                    entry.id = id.to_string();
                }
                if let Some(n) = c["function"]["name"].as_str() {
                    entry.name.push_str(n);
                }
                if let Some(a) = c["function"]["arguments"].as_str() {
                    entry.arguments.push_str(a);
                }
            }
        }
        if let Some(fr) = choice["finish_reason"].as_str() {
            self.finish = Some(finish_reason(fr));
        }
        Ok(false)
    }

    fn end(&mut self, out: &mut VecDeque<StreamChunk>) -> Result<(), LlmError> {
        // Some servers close without `[DONE]`; a finish_reason means the answer is whole.
        if self.finish.is_some() {
            self.finish(out);
            Ok(())
        } else {
            Err(LlmError::Unavailable(format!(
                "{}: the stream ended before the answer was complete (no finish_reason, no [DONE])",
                self.provider
            )))
        }
    }
}

#[async_trait::async_trait]
impl LlmProvider for OpenAiProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn default_model(&self) -> String {
        if !self.cfg.model.is_empty() {
            return self.cfg.model.clone();
        }
        self.discovered().clone().unwrap_or_default()
    }

    async fn chat_stream(&self, req: ChatRequest) -> Result<ChatStream, LlmError> {
        if req.messages.is_empty() {
            return Err(LlmError::Invalid("no messages to send".into()));
        }
        let model = self.model_for(&req).await?;
        let body = http::chat_body(&req, || self.request_body(&req, &model))?;
        let resp = http::send(&self.name, &self.chat_url, &self.cfg.http, || {
            Ok(self
                .authorize(self.client.post(&self.chat_url))
                .header("content-type", "application/json")
                .header("accept", "text/event-stream")
                .body(body.clone()))
        })
        .await?;
        let payloads =
            http::sse_payloads(&self.name, &self.chat_url, Box::pin(resp.bytes_stream()));
        Ok(http::decode_stream(
            payloads,
            OpenAiDecoder::new(&self.name),
        ))
    }

    async fn list_models(&self) -> Result<Vec<ModelInfo>, LlmError> {
        let resp = http::send(&self.name, &self.models_url, &self.cfg.http, || {
            Ok(self.authorize(self.client.get(&self.models_url)))
        })
        .await?;
        let v: Value = resp
            .json()
            .await
            .map_err(|e| http::map_transport(&self.name, &self.models_url, &e))?;
        let data = v["data"].as_array().ok_or_else(|| {
            LlmError::BadResponse(format!(
                "{}: {} did not return a `data` list",
                self.name, self.models_url
            ))
        })?;
        Ok(data
            .iter()
            .filter_map(|m| {
                let id = m["id"].as_str()?.to_string();
                // llama.cpp reports the training context; LM Studio and vLLM their limits.
                let ctx = m["meta"]["n_ctx_train"]
                    .as_u64()
                    .or_else(|| m["max_model_len"].as_u64())
                    .or_else(|| m["max_context_length"].as_u64())
                    .or_else(|| m["context_length"].as_u64());
                Some(ModelInfo {
                    id,
                    name: None,
                    provider: self.name.clone(),
                    context_length: ctx.map(|c| c.min(u32::MAX as u64) as u32),
                    size_bytes: m["meta"]["size"].as_u64(),
                    details: Some(m.clone()),
                })
            })
            .collect())
    }

    async fn health(&self) -> Result<Health, LlmError> {
        let t0 = Instant::now();
        let models = self.list_models().await?;
        Ok(Health {
            ok: true,
            latency_ms: t0.elapsed().as_secs_f64() * 1000.0,
            detail: format!(
                "{} at {} serves {} model(s)",
                self.name,
                self.cfg.base_url,
                models.len()
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ToolSpec;

    fn feed_all(d: &mut OpenAiDecoder, events: &[&str]) -> (Vec<StreamChunk>, bool) {
        let mut out = VecDeque::new();
        let mut done = false;
        for e in events {
            done = d
                .feed(
                    &Payload {
                        event: String::new(),
                        data: e.to_string(),
                    },
                    &mut out,
                )
                .unwrap();
        }
        (out.into_iter().collect(), done)
    }

    #[test]
    fn tool_call_deltas_are_assembled() {
        let mut d = OpenAiDecoder::new("t");
        let (out, done) = feed_all(
            &mut d,
            &[
                r#"{"choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]}}]}"#,
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]}}]}"#,
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Oslo\"}"}}]}}]}"#,
                r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
                r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":7}}"#,
                "[DONE]",
            ],
        );
        assert!(done);
        assert_eq!(
            out,
            vec![
                StreamChunk::ToolCall(ToolCallRequest {
                    id: "call_1".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Oslo"}"#.into()
                }),
                StreamChunk::Done {
                    finish_reason: FinishReason::ToolCalls,
                    usage: Some(Usage {
                        prompt_tokens: 12,
                        completion_tokens: 7
                    })
                }
            ]
        );
    }

    #[test]
    fn body_carries_tools_and_extra() {
        let p = OpenAiProvider::new(OpenAiConfig::default()).unwrap();
        let req = ChatRequest {
            messages: vec![ChatMessage::new(ChatRole::User, "hi")],
            tools: vec![ToolSpec {
                name: "f".into(),
                description: "d".into(),
                parameters: json!({"type":"object"}),
            }],
            extra: Some(json!({"tool_choice": "auto", "parallel_tool_calls": false})),
            max_tokens: Some(5),
            ..Default::default()
        };
        let b = p.request_body(&req, "m");
        assert_eq!(b["tools"][0]["function"]["name"], "f");
        assert_eq!(b["tool_choice"], "auto");
        assert_eq!(b["parallel_tool_calls"], false);
        assert_eq!(b["max_tokens"], 5);
        assert_eq!(b["stream"], true);
        assert!(b.get("temperature").is_none());
    }
}
