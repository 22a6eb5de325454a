//! Ollama's native API: `POST /api/chat` streamed as NDJSON, `GET /api/tags`,
//! `POST /api/show`, `POST /api/pull` (streamed progress), `GET /api/version` for health,
//! and discovery of a local Ollama when no URL is configured (`OLLAMA_HOST`, then the
//! default port on loopback).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use tokio::sync::OnceCell;

use super::http::{self, Decoder, HttpOptions, Payload};
use super::{
    ChatMessage, ChatRequest, ChatRole, ChatStream, FinishReason, Health, LlmError, LlmProvider,
    ModelInfo, StreamChunk, ToolCallRequest, Usage,
};

/// Ollama's default address.
pub const DEFAULT_URL: &str = "http://127.0.0.1:11434";

/// How long a discovery probe may take per candidate.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Settings of an Ollama provider.
#[derive(Debug, Clone, PartialEq)]
pub struct OllamaConfig {
    /// Base URL, e.g. `http://127.0.0.1:11434`. Empty: discover a local Ollama.
    pub base_url: String,
    /// Model used when a request names none.
    pub model: String,
    /// Timeouts and retries.
    pub http: HttpOptions,
}

impl Default for OllamaConfig {
    fn default() -> Self {
        OllamaConfig {
            base_url: String::new(),
            model: "llama3.2".into(),
            http: HttpOptions::default(),
        }
    }
}

/// The Ollama provider.
#[derive(Debug)]
pub struct OllamaProvider {
    cfg: OllamaConfig,
    client: reqwest::Client,
    /// The base URL in use (configured, or found by discovery on first use).
    base: OnceCell<String>,
}

/// One progress report of `pull`.
#[derive(Debug, Clone, PartialEq)]
pub struct PullProgress {
    /// Ollama's status line, e.g. `pulling manifest`, `pulling 6a0746a1ec1a`, `success`.
    pub status: String,
    /// The layer being downloaded.
    pub digest: Option<String>,
    /// Its size in bytes.
    pub total: Option<u64>,
    /// Bytes downloaded so far.
    pub completed: Option<u64>,
}

/// Where to look for a local Ollama, in order: `OLLAMA_HOST` (as Ollama reads it:
/// `host`, `host:port` or a URL; `0.0.0.0` means this machine), then the default address.
pub fn discovery_candidates(ollama_host: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(h) = ollama_host.map(str::trim).filter(|h| !h.is_empty()) {
        let with_scheme = if h.contains("://") {
            h.to_string()
        } else {
            format!("http://{h}")
        };
        let (scheme, rest) = with_scheme.split_once("://").unwrap_or(("http", h));
        let rest = rest.trim_end_matches('/');
        let rest = rest.replacen("0.0.0.0", "127.0.0.1", 1);
        // A bare host gets Ollama's default port.
        let has_port = rest
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.chars().all(|c| c.is_ascii_digit()) && !p.is_empty());
        let rest = if has_port {
            rest
        } else {
            format!("{rest}:11434")
        };
        out.push(format!("{scheme}://{rest}"));
    }
    for d in [DEFAULT_URL, "http://localhost:11434"] {
        if !out.iter().any(|o| o == d) {
            out.push(d.to_string());
        }
    }
    out
}

/// Finds the first candidate that answers `GET /api/version` like Ollama.
pub async fn discover(client: &reqwest::Client, candidates: &[String]) -> Option<String> {
    for c in candidates {
        let url = format!("{}/api/version", c.trim_end_matches('/'));
        let probe = async {
            let resp = client.get(&url).send().await.ok()?;
            if !resp.status().is_success() {
                return None;
            }
            let v: Value = resp.json().await.ok()?;
            v["version"].as_str().map(|_| ())
        };
        if let Ok(Some(())) = tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            return Some(c.trim_end_matches('/').to_string());
        }
    }
    None
}

impl OllamaProvider {
    /// A provider with `cfg` (discovery, when needed, happens on first use).
    pub fn new(cfg: OllamaConfig) -> Result<Self, LlmError> {
        let configured = cfg.base_url.trim().trim_end_matches('/').to_string();
        let is_url = configured.starts_with("http://") || configured.starts_with("https://");
        if !configured.is_empty() && !is_url {
            return Err(LlmError::Invalid(format!(
                "ollama: base_url must start with http:// or https://, not {:?}",
                cfg.base_url
            )));
        }
        let client = http::client(&cfg.http)?;
        let base = if configured.is_empty() {
            OnceCell::new()
        } else {
            OnceCell::new_with(Some(configured))
        };
        Ok(OllamaProvider { cfg, client, base })
    }

    /// The base URL in use, discovering a local Ollama the first time when none is set.
    pub async fn base_url(&self) -> Result<&str, LlmError> {
        self.base
            .get_or_try_init(|| async {
                let env = std::env::var("OLLAMA_HOST").ok();
                let candidates = discovery_candidates(env.as_deref());
                discover(&self.client, &candidates).await.ok_or_else(|| {
                    LlmError::Unavailable(format!(
                        "ollama: no Ollama answered at {}; start it with `ollama serve` or set llm.ollama.base_url",
                        candidates.join(", ")
                    ))
                })
            })
            .await
            .map(String::as_str)
    }

    /// The request body for `req`.
    pub fn request_body(&self, req: &ChatRequest, model: &str) -> Value {
        let mut body = Map::new();
        body.insert("model".into(), json!(model));
        body.insert(
            "messages".into(),
            Value::Array(req.messages.iter().map(message_json).collect()),
        );
        body.insert("stream".into(), json!(true));
        let mut options = Map::new();
        if let Some(t) = req.temperature {
            options.insert("temperature".into(), json!(t));
        }
        if let Some(p) = req.top_p {
            options.insert("top_p".into(), json!(p));
        }
        if let Some(n) = req.max_tokens {
            options.insert("num_predict".into(), json!(n));
        }
        if let Some(s) = req.seed {
            options.insert("seed".into(), json!(s));
        }
        if !req.stop.is_empty() {
            options.insert("stop".into(), json!(req.stop));
        }
        if !options.is_empty() {
            body.insert("options".into(), Value::Object(options));
        }
        super::add_tools_and_extra(&mut body, req);
        Value::Object(body)
    }

    /// Downloads `model`, calling `progress` for every status line Ollama streams.
    pub async fn pull(
        &self,
        model: &str,
        mut progress: impl FnMut(&PullProgress) + Send,
    ) -> Result<(), LlmError> {
        let url = format!("{}/api/pull", self.base_url().await?);
        let body = json!({"model": model, "stream": true}).to_string();
        let resp = http::send("ollama", &url, &self.cfg.http, || {
            Ok(self
                .client
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone()))
        })
        .await?;
        let mut lines = http::ndjson_payloads("ollama", &url, Box::pin(resp.bytes_stream()));
        let mut success = false;
        while let Some(line) = lines.next().await {
            let line = line?;
            let v: Value = serde_json::from_str(&line.data).map_err(|e| {
                LlmError::BadResponse(format!("ollama: pull progress is not JSON ({e})"))
            })?;
            if let Some(err) = v["error"].as_str() {
                return Err(map_inline_error(err));
            }
            let p = PullProgress {
                status: v["status"].as_str().unwrap_or_default().to_string(),
                digest: v["digest"].as_str().map(str::to_string),
                total: v["total"].as_u64(),
                completed: v["completed"].as_u64(),
            };
            success |= p.status == "success";
            progress(&p);
        }
        if success {
            Ok(())
        } else {
            Err(LlmError::Unavailable(format!(
                "ollama: the pull of {model} ended without `success`"
            )))
        }
    }
}

fn map_inline_error(err: &str) -> LlmError {
    let msg = format!("ollama: {err}");
    if err.contains("not found") {
        LlmError::NotFound(msg)
    } else {
        LlmError::BadResponse(msg)
    }
}

fn message_json(m: &ChatMessage) -> Value {
    let role = match m.role {
        ChatRole::System => "system",
        ChatRole::User => "user",
        ChatRole::Assistant => "assistant",
        ChatRole::Tool => "tool",
    };
    let mut o = Map::new();
    o.insert("role".into(), json!(role));
    o.insert("content".into(), json!(m.content));
    if !m.tool_calls.is_empty() {
        // Ollama takes arguments as an object, not a JSON string.
        let calls: Vec<Value> = m
            .tool_calls
            .iter()
            .map(|c| {
                let args: Value = serde_json::from_str(&c.arguments).unwrap_or(json!({}));
                json!({"function": {"name": c.name, "arguments": args}})
            })
            .collect();
        o.insert("tool_calls".into(), Value::Array(calls));
    }
    if let Some(id) = &m.tool_call_id {
        o.insert("tool_call_id".into(), json!(id));
    }
    Value::Object(o)
}

/// Decodes `/api/chat` NDJSON lines.
#[derive(Default)]
pub struct OllamaDecoder {
    calls: u32,
}

impl Decoder for OllamaDecoder {
    fn feed(&mut self, p: &Payload, out: &mut VecDeque<StreamChunk>) -> Result<bool, LlmError> {
        let v: Value = serde_json::from_str(&p.data).map_err(|e| {
            LlmError::BadResponse(format!(
                "ollama: a streamed line is not JSON ({e}): {}",
                p.data.chars().take(200).collect::<String>()
            ))
        })?;
        if let Some(err) = v["error"].as_str() {
            return Err(map_inline_error(err));
        }
        let msg = &v["message"];
        if let Some(text) = msg["content"].as_str().filter(|t| !t.is_empty()) {
            out.push_back(StreamChunk::Token(text.to_string()));
        }
        if let Some(calls) = msg["tool_calls"].as_array() {
            for c in calls {
                self.calls += 1;
                let f = &c["function"];
                let arguments = match &f["arguments"] {
                    Value::String(s) => s.clone(),
                    Value::Null => "{}".to_string(),
                    other => other.to_string(),
                };
                out.push_back(StreamChunk::ToolCall(ToolCallRequest {
                    id: c["id"]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("call_{}", self.calls)),
                    name: f["name"].as_str().unwrap_or_default().to_string(),
                    arguments,
                }));
            }
        }
        if v["done"].as_bool() == Some(true) {
            let finish_reason = match v["done_reason"].as_str() {
                None | Some("stop") => {
                    if self.calls > 0 {
                        FinishReason::ToolCalls
                    } else {
                        FinishReason::Stop
                    }
                }
                Some("length") => FinishReason::Length,
                Some(other) => FinishReason::Other(other.to_string()),
            };
            let usage = match (v["prompt_eval_count"].as_u64(), v["eval_count"].as_u64()) {
                (None, None) => None,
                (p, c) => Some(Usage {
                    prompt_tokens: p.unwrap_or(0) as u32,
                    completion_tokens: c.unwrap_or(0) as u32,
                }),
            };
            out.push_back(StreamChunk::Done {
                finish_reason,
                usage,
            });
            return Ok(true);
        }
        Ok(false)
    }

    fn end(&mut self, _out: &mut VecDeque<StreamChunk>) -> Result<(), LlmError> {
        Err(LlmError::Unavailable(
            "ollama: the stream ended before the answer was complete (no `done`)".into(),
        ))
    }
}

#[async_trait::async_trait]
impl LlmProvider for OllamaProvider {
    fn name(&self) -> &str {
        "ollama"
    }

    fn default_model(&self) -> String {
        self.cfg.model.clone()
    }

    async fn chat_stream(&self, req: ChatRequest) -> Result<ChatStream, LlmError> {
        let model = req.named_model().unwrap_or(&self.cfg.model);
        let body = http::chat_body(&req, || self.request_body(&req, model))?;
        let url = format!("{}/api/chat", self.base_url().await?);
        let resp = http::send("ollama", &url, &self.cfg.http, || {
            Ok(self
                .client
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone()))
        })
        .await
        .map_err(|e| match e {
            LlmError::NotFound(m) => LlmError::NotFound(format!(
                "{m}; pull it with `coda models pull {model} --provider ollama`"
            )),
            other => other,
        })?;
        let payloads = http::ndjson_payloads("ollama", &url, Box::pin(resp.bytes_stream()));
        Ok(http::decode_stream(payloads, OllamaDecoder::default()))
    }

    async fn list_models(&self) -> Result<Vec<ModelInfo>, LlmError> {
        let url = format!("{}/api/tags", self.base_url().await?);
        let resp = http::send("ollama", &url, &self.cfg.http, || Ok(self.client.get(&url))).await?;
        let v: Value = resp
            .json()
            .await
            .map_err(|e| http::map_transport("ollama", &url, &e))?;
        let models = v["models"].as_array().ok_or_else(|| {
            LlmError::BadResponse(format!("ollama: {url} did not return a `models` list"))
        })?;
        Ok(models
            .iter()
            .filter_map(|m| {
                let id = m["name"].as_str().or_else(|| m["model"].as_str())?;
                Some(ModelInfo {
                    id: id.to_string(),
                    name: id.strip_suffix(":latest").map(str::to_string),
                    provider: "ollama".into(),
                    context_length: None,
                    size_bytes: m["size"].as_u64(),
                    details: Some(m["details"].clone()),
                })
            })
            .collect())
    }

    async fn model_info(&self, model: &str) -> Result<ModelInfo, LlmError> {
        let url = format!("{}/api/show", self.base_url().await?);
        let body = json!({ "model": model }).to_string();
        let resp = http::send("ollama", &url, &self.cfg.http, || {
            Ok(self
                .client
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone()))
        })
        .await?;
        let v: Value = resp
            .json()
            .await
            .map_err(|e| http::map_transport("ollama", &url, &e))?;
        // `model_info` keys are prefixed by the architecture: `llama.context_length`.
        let context_length = v["model_info"].as_object().and_then(|mi| {
            mi.iter()
                .find(|(k, _)| k.ends_with(".context_length"))
                .and_then(|(_, v)| v.as_u64())
        });
        Ok(ModelInfo {
            id: model.to_string(),
            name: None,
            provider: "ollama".into(),
            context_length: context_length.map(|c| c.min(u32::MAX as u64) as u32),
            size_bytes: None,
            details: Some(json!({
                "details": v["details"],
                "capabilities": v["capabilities"],
                "parameters": v["parameters"],
            })),
        })
    }

    async fn health(&self) -> Result<Health, LlmError> {
        let t0 = Instant::now();
        let url = format!("{}/api/version", self.base_url().await?);
        let resp = http::send("ollama", &url, &self.cfg.http, || Ok(self.client.get(&url))).await?;
        let v: Value = resp
            .json()
            .await
            .map_err(|e| http::map_transport("ollama", &url, &e))?;
        let version = v["version"].as_str().ok_or_else(|| {
            LlmError::BadResponse(format!("ollama: {url} did not report a version"))
        })?;
        Ok(Health {
            ok: true,
            latency_ms: t0.elapsed().as_secs_f64() * 1000.0,
            detail: format!("Ollama {version} at {}", self.base_url().await?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_ollama_host() {
        assert_eq!(
            discovery_candidates(None),
            vec![DEFAULT_URL.to_string(), "http://localhost:11434".into()]
        );
        assert_eq!(
            discovery_candidates(Some("0.0.0.0"))[0],
            "http://127.0.0.1:11434"
        );
        assert_eq!(
            discovery_candidates(Some("127.0.0.1:9999"))[0],
            "http://127.0.0.1:9999"
        );
        assert_eq!(
            discovery_candidates(Some("https://gpu.lan:443/"))[0],
            "https://gpu.lan:443"
        );
        assert_eq!(
            discovery_candidates(Some("gpu.lan"))[0],
            "http://gpu.lan:11434"
        );
        // The default is not listed twice.
        assert_eq!(discovery_candidates(Some("127.0.0.1:11434")).len(), 2);
    }

    #[test]
    fn tool_calls_and_usage() {
        let mut d = OllamaDecoder::default();
        let mut out = VecDeque::new();
        let line = |s: &str| Payload {
            event: String::new(),
            data: s.into(),
        };
        assert!(!d
            .feed(&line(r#"{"message":{"role":"assistant","content":"","tool_calls":[{"function":{"name":"get_time","arguments":{"tz":"UTC"}}}]},"done":false}"#), &mut out)
            .unwrap());
        assert!(d
            .feed(&line(r#"{"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","prompt_eval_count":9,"eval_count":4}"#), &mut out)
            .unwrap());
        let out: Vec<_> = out.into_iter().collect();
        assert_eq!(
            out,
            vec![
                StreamChunk::ToolCall(ToolCallRequest {
                    id: "call_1".into(),
                    name: "get_time".into(),
                    arguments: r#"{"tz":"UTC"}"#.into()
                }),
                StreamChunk::Done {
                    finish_reason: FinishReason::ToolCalls,
                    usage: Some(Usage {
                        prompt_tokens: 9,
                        completion_tokens: 4
                    })
                }
            ]
        );
    }
}
