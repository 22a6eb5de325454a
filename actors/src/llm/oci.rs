//! OCI Generative AI: `POST /20231130/actions/chat` on the region's inference endpoint,
//! signed with the profile's key ([`auth`]), in the two request formats the service
//! takes — `COHERE` (Cohere Command models: `message` + `chatHistory` + `preambleOverride`)
//! and `GENERIC` (Meta Llama, xAI Grok and the rest: `messages` with content parts) —
//! streamed as SSE. Model discovery lists the compartment's chat models
//! (`GET /20231130/models` on the management endpoint), cached for 24 hours on disk, and
//! maps friendly names (`command-r-plus`, `llama-3.3-70b-instruct`) to model ids.

pub mod auth;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::Digest as _;
use tokio::sync::Mutex;

use self::auth::{OciAuth, OciProfile, OciSigner};
use super::http::{self, Decoder, HttpOptions, Payload};
use super::{
    ChatMessage, ChatRequest, ChatRole, ChatStream, FinishReason, Health, LlmError, LlmProvider,
    ModelInfo, StreamChunk, ToolCallRequest, ToolSpec, Usage,
};

/// The API version in every path.
pub const API_VERSION: &str = "20231130";

/// How long a discovered model list stays fresh.
pub const MODEL_CACHE_TTL: Duration = Duration::from_secs(24 * 3600);

/// Settings of the OCI provider.
#[derive(Debug, Clone, PartialEq)]
pub struct OciConfig {
    /// The OCI config file (`~/.oci/config`).
    pub config_file: PathBuf,
    pub profile: String,
    /// Region (empty: the profile's `region`).
    pub region: String,
    /// Compartment OCID (empty: the tenancy, i.e. the root compartment).
    pub compartment_id: String,
    /// Which credentials.
    pub auth: OciAuth,
    /// Model used when a request names none.
    pub model: String,
    /// Inference endpoint override (empty: from the region).
    pub endpoint: String,
    /// Management endpoint override, for model discovery (empty: from the region).
    pub management_endpoint: String,
    /// Where the model list is cached (`None`: memory only).
    pub cache_dir: Option<PathBuf>,
    /// Timeouts and retries.
    pub http: HttpOptions,
}

impl Default for OciConfig {
    fn default() -> Self {
        OciConfig {
            config_file: auth::default_config_file(),
            profile: "DEFAULT".into(),
            region: String::new(),
            compartment_id: String::new(),
            auth: OciAuth::Auto,
            model: "cohere.command-a-03-2025".into(),
            endpoint: String::new(),
            management_endpoint: String::new(),
            cache_dir: None,
            http: HttpOptions::default(),
        }
    }
}

/// Which chat request format a model takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiFormat {
    /// Cohere Command models.
    Cohere,
    /// Everything else (Meta, xAI, ...).
    Generic,
}

impl ApiFormat {
    /// The format for a vendor name (`cohere`, `meta`, `xai`, ...).
    pub fn for_vendor(vendor: &str) -> ApiFormat {
        if vendor.eq_ignore_ascii_case("cohere") {
            ApiFormat::Cohere
        } else {
            ApiFormat::Generic
        }
    }
}

/// A model as the service lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OciModel {
    pub ocid: String,
    /// Display name, also accepted as model id: `cohere.command-r-plus-08-2024`.
    pub display_name: String,
    /// `cohere`, `meta`, `xai`, ...
    pub vendor: String,
    /// Version string.
    pub version: String,
    /// `CHAT`, `TEXT_EMBEDDINGS`, ...
    pub capabilities: Vec<String>,
    /// RFC 3339 creation time (newest wins among same-named versions).
    pub time_created: String,
    /// When it is (or was) deprecated, if announced.
    pub time_deprecated: Option<String>,
}

impl OciModel {
    /// The name without the vendor prefix: `command-r-plus-08-2024`.
    pub fn friendly(&self) -> &str {
        self.display_name
            .split_once('.')
            .map(|(_, rest)| rest)
            .unwrap_or(&self.display_name)
    }

    fn info(&self) -> ModelInfo {
        ModelInfo {
            id: self.display_name.clone(),
            name: Some(self.friendly().to_string()),
            provider: "oci".into(),
            context_length: None,
            size_bytes: None,
            details: Some(json!({
                "ocid": self.ocid,
                "vendor": self.vendor,
                "version": self.version,
                "capabilities": self.capabilities,
                "time_created": self.time_created,
                "time_deprecated": self.time_deprecated,
            })),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ModelCache {
    /// Unix seconds.
    fetched_at: u64,
    models: Vec<OciModel>,
}

impl ModelCache {
    fn fresh(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        now.saturating_sub(self.fetched_at) < MODEL_CACHE_TTL.as_secs()
    }
}

/// What a request is sent to: a model on demand or a dedicated endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// `servingMode` object.
    pub serving_mode: Value,
    /// Request format.
    pub format: ApiFormat,
}

/// Resolves a model name against a model list: exact id / display name / OCID first, then
/// `<vendor>.<name>`, then the newest model whose name starts with `name`.
pub fn resolve_friendly<'a>(models: &'a [OciModel], name: &str) -> Option<&'a OciModel> {
    if let Some(m) = models
        .iter()
        .find(|m| m.display_name == name || m.ocid == name || m.friendly() == name)
    {
        return Some(m);
    }
    models
        .iter()
        .filter(|m| m.friendly().starts_with(name))
        .max_by(|a, b| a.time_created.cmp(&b.time_created))
}

/// The OCI Generative AI provider.
pub struct OciProvider {
    cfg: OciConfig,
    client: reqwest::Client,
    signer: OciSigner,
    region: String,
    compartment_id: String,
    chat_url: reqwest::Url,
    models_url: reqwest::Url,
    cache_file: Option<PathBuf>,
    models: Mutex<Option<ModelCache>>,
}

impl std::fmt::Debug for OciProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OciProvider")
            .field("profile", &self.cfg.profile)
            .field("region", &self.region)
            .field("chat_url", &self.chat_url.as_str())
            .finish_non_exhaustive()
    }
}

fn valid_region(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 32
        && r.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn parse_url(s: &str) -> Result<reqwest::Url, LlmError> {
    reqwest::Url::parse(s).map_err(|e| LlmError::Invalid(format!("oci: bad URL {s:?}: {e}")))
}

impl OciProvider {
    /// Reads the profile and key, and works out the endpoints. Fails with a message naming
    /// what is missing (config file, profile, key, region).
    pub fn new(cfg: OciConfig) -> Result<Self, LlmError> {
        let profile: OciProfile = auth::load_profile(&cfg.config_file, &cfg.profile)?;
        let signer = OciSigner::for_profile(&profile, cfg.auth)?;
        let region = if cfg.region.trim().is_empty() {
            profile.get("region").unwrap_or_default().to_string()
        } else {
            cfg.region.trim().to_string()
        };
        if !valid_region(&region) {
            return Err(LlmError::Invalid(format!(
                "oci: no valid region (got {region:?}); set `region` in profile [{}] or llm.oci.region (e.g. \"us-chicago-1\")",
                cfg.profile
            )));
        }
        let compartment_id = if cfg.compartment_id.trim().is_empty() {
            profile.get("tenancy").unwrap_or_default().to_string()
        } else {
            cfg.compartment_id.trim().to_string()
        };
        if compartment_id.is_empty() {
            return Err(LlmError::Invalid(
                "oci: no compartment: set llm.oci.compartment_id (or `tenancy` in the profile for the root compartment)".into(),
            ));
        }
        let inference = if cfg.endpoint.trim().is_empty() {
            format!("https://inference.generativeai.{region}.oci.oraclecloud.com")
        } else {
            cfg.endpoint.trim().trim_end_matches('/').to_string()
        };
        let management = if cfg.management_endpoint.trim().is_empty() {
            format!("https://generativeai.{region}.oci.oraclecloud.com")
        } else {
            cfg.management_endpoint
                .trim()
                .trim_end_matches('/')
                .to_string()
        };
        let chat_url = parse_url(&format!("{inference}/{API_VERSION}/actions/chat"))?;
        let models_url = parse_url(&format!("{management}/{API_VERSION}/models"))?;
        let cache_file = cfg.cache_dir.as_ref().map(|d| {
            // One file per region and compartment: lists differ between them.
            let tag = hex::encode(&sha2::Sha256::digest(compartment_id.as_bytes())[..6]);
            d.join(format!("oci-models-{region}-{tag}.json"))
        });
        Ok(OciProvider {
            client: http::client(&cfg.http)?,
            signer,
            region,
            compartment_id,
            chat_url,
            models_url,
            cache_file,
            models: Mutex::new(None),
            cfg,
        })
    }

    /// The region in use.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The compartment in use.
    pub fn compartment_id(&self) -> &str {
        &self.compartment_id
    }

    /// Sends a signed GET.
    async fn get(&self, url: reqwest::Url) -> Result<reqwest::Response, LlmError> {
        let shown = url.to_string();
        http::send("oci", &shown, &self.cfg.http, || {
            let signed = self.signer.sign("GET", &url, None)?;
            Ok(signed.apply(self.client.get(url.clone())))
        })
        .await
        .map_err(hint)
    }

    /// The chat models of the compartment, from the cache when fresh (`refresh` forces a
    /// new listing).
    pub async fn models(&self, refresh: bool) -> Result<Vec<OciModel>, LlmError> {
        let mut guard = self.models.lock().await;
        if !refresh {
            if let Some(c) = guard.as_ref().filter(|c| c.fresh()) {
                return Ok(c.models.clone());
            }
            if let Some(c) = self.read_cache().filter(ModelCache::fresh) {
                let models = c.models.clone();
                *guard = Some(c);
                return Ok(models);
            }
        }
        let models = self.fetch_models().await?;
        let cache = ModelCache {
            fetched_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            models: models.clone(),
        };
        self.write_cache(&cache);
        *guard = Some(cache);
        Ok(models)
    }

    fn read_cache(&self) -> Option<ModelCache> {
        let text = std::fs::read_to_string(self.cache_file.as_ref()?).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn write_cache(&self, c: &ModelCache) {
        let Some(path) = &self.cache_file else { return };
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, serde_json::to_vec(c).unwrap_or_default())?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            tracing::debug!(path = %path.display(), error = %e, "oci model cache not written");
        }
    }

    async fn fetch_models(&self) -> Result<Vec<OciModel>, LlmError> {
        let mut page: Option<String> = None;
        let mut by_name: BTreeMap<String, OciModel> = BTreeMap::new();
        // Bounded: a service that keeps paging forever is a bad response, not a hang.
        for _ in 0..50 {
            let mut url = self.models_url.clone();
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("compartmentId", &self.compartment_id);
                q.append_pair("capability", "CHAT");
                q.append_pair("lifecycleState", "ACTIVE");
                q.append_pair("limit", "1000");
                if let Some(p) = &page {
                    q.append_pair("page", p);
                }
            }
            let resp = self.get(url).await?;
            let next = resp
                .headers()
                .get("opc-next-page")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let v: Value = resp
                .json()
                .await
                .map_err(|e| http::map_transport("oci", self.models_url.as_str(), &e))?;
            let items = v["items"].as_array().ok_or_else(|| {
                LlmError::BadResponse("oci: the model list has no `items`".into())
            })?;
            for it in items {
                let Some(name) = it["displayName"].as_str() else {
                    continue;
                };
                let m = OciModel {
                    ocid: it["id"].as_str().unwrap_or_default().to_string(),
                    display_name: name.to_string(),
                    vendor: it["vendor"]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| name.split('.').next().unwrap_or_default().into()),
                    version: it["version"].as_str().unwrap_or_default().to_string(),
                    capabilities: it["capabilities"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|c| c.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default(),
                    time_created: it["timeCreated"].as_str().unwrap_or_default().to_string(),
                    time_deprecated: it["timeDeprecated"].as_str().map(str::to_string),
                };
                if !m.capabilities.is_empty() && !m.capabilities.iter().any(|c| c == "CHAT") {
                    continue;
                }
                // Several versions share a display name: keep the newest.
                match by_name.get(name) {
                    Some(old) if old.time_created >= m.time_created => {}
                    _ => {
                        by_name.insert(name.to_string(), m);
                    }
                }
            }
            match next {
                Some(p) if !p.is_empty() => page = Some(p),
                _ => return Ok(by_name.into_values().collect()),
            }
        }
        Err(LlmError::BadResponse(
            "oci: the model list did not end after 50 pages".into(),
        ))
    }

    /// Where a request for `model` goes and in which format.
    pub async fn target(&self, model: &str) -> Result<Target, LlmError> {
        let model = model.trim();
        if model.starts_with("ocid1.generativeaiendpoint") {
            return Ok(Target {
                serving_mode: json!({"servingType": "DEDICATED", "endpointId": model}),
                format: ApiFormat::Generic,
            });
        }
        let on_demand = |id: &str, format| Target {
            serving_mode: json!({"servingType": "ON_DEMAND", "modelId": id}),
            format,
        };
        if model.starts_with("ocid1.") {
            // The vendor decides the format; find it in the list if we can.
            let format = match self.models(false).await {
                Ok(list) => list
                    .iter()
                    .find(|m| m.ocid == model)
                    .map(|m| ApiFormat::for_vendor(&m.vendor))
                    .unwrap_or(ApiFormat::Generic),
                Err(e) => {
                    tracing::debug!(error = %e, "oci: model list unavailable; GENERIC format assumed");
                    ApiFormat::Generic
                }
            };
            return Ok(on_demand(model, format));
        }
        if let Some((vendor, _)) = model.split_once('.') {
            return Ok(on_demand(model, ApiFormat::for_vendor(vendor)));
        }
        let list = self.models(false).await?;
        match resolve_friendly(&list, model) {
            Some(m) => Ok(on_demand(&m.display_name, ApiFormat::for_vendor(&m.vendor))),
            None => {
                let some: Vec<&str> = list
                    .iter()
                    .take(8)
                    .map(|m| m.display_name.as_str())
                    .collect();
                Err(LlmError::NotFound(format!(
                    "oci: no chat model matches `{model}` in {} (some that do exist: {}); `coda models list --provider oci` lists them",
                    self.region,
                    some.join(", ")
                )))
            }
        }
    }

    /// The `chat` request body (public for tests of the wire format).
    pub fn request_body(&self, req: &ChatRequest, target: &Target) -> Value {
        let mut chat = match target.format {
            ApiFormat::Cohere => cohere_request(req),
            ApiFormat::Generic => generic_request(req),
        };
        chat.insert("isStream".into(), json!(true));
        if let Some(t) = req.temperature {
            chat.insert("temperature".into(), json!(t));
        }
        if let Some(p) = req.top_p {
            chat.insert("topP".into(), json!(p));
        }
        if let Some(n) = req.max_tokens {
            chat.insert("maxTokens".into(), json!(n));
        }
        if let Some(s) = req.seed {
            chat.insert("seed".into(), json!(s));
        }
        if !req.stop.is_empty() {
            let key = match target.format {
                ApiFormat::Cohere => "stopSequences",
                ApiFormat::Generic => "stop",
            };
            chat.insert(key.into(), json!(req.stop));
        }
        if let Some(Value::Object(extra)) = &req.extra {
            for (k, v) in extra {
                chat.insert(k.clone(), v.clone());
            }
        }
        json!({
            "compartmentId": self.compartment_id,
            "servingMode": target.serving_mode,
            "chatRequest": Value::Object(chat),
        })
    }
}

/// Adds what the user can do about an OCI error.
fn hint(e: LlmError) -> LlmError {
    match e {
        LlmError::Auth(m) => LlmError::Auth(format!(
            "{m}; check user, fingerprint, key_file and tenancy of the OCI profile (and the clock: signatures expire after 5 minutes)"
        )),
        LlmError::NotFound(m) if m.contains("NotAuthorizedOrNotFound") => LlmError::NotFound(
            format!("{m}; or the compartment's policies do not allow generative-ai use"),
        ),
        other => other,
    }
}

fn cohere_tool(t: &ToolSpec) -> Value {
    let props = t.parameters["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let required: Vec<&str> = t.parameters["required"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut defs = Map::new();
    for (name, schema) in props {
        // Cohere wants Python type names.
        let ty = match schema["type"].as_str().unwrap_or("string") {
            "string" => "str",
            "number" => "float",
            "integer" => "int",
            "boolean" => "bool",
            "array" => "list",
            "object" => "dict",
            other => other,
        }
        .to_string();
        defs.insert(
            name.clone(),
            json!({
                "description": schema["description"].as_str().unwrap_or_default(),
                "type": ty,
                "isRequired": required.contains(&name.as_str()),
            }),
        );
    }
    json!({"name": t.name, "description": t.description, "parameterDefinitions": defs})
}

fn cohere_request(req: &ChatRequest) -> Map<String, Value> {
    let mut chat = Map::new();
    chat.insert("apiFormat".into(), json!("COHERE"));
    let preamble: Vec<&str> = req
        .messages
        .iter()
        .filter(|m| m.role == ChatRole::System)
        .map(|m| m.content.as_str())
        .collect();
    if !preamble.is_empty() {
        chat.insert("preambleOverride".into(), json!(preamble.join("\n\n")));
    }
    let last_user = req.messages.iter().rposition(|m| m.role == ChatRole::User);
    // Arguments of earlier calls, to pair tool results with their calls.
    let calls: BTreeMap<&str, &ToolCallRequest> = req
        .messages
        .iter()
        .flat_map(|m| m.tool_calls.iter())
        .map(|c| (c.id.as_str(), c))
        .collect();
    let mut history: Vec<Value> = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        if Some(i) == last_user || m.role == ChatRole::System {
            continue;
        }
        match m.role {
            ChatRole::User => history.push(json!({"role": "USER", "message": m.content})),
            ChatRole::Assistant => {
                let mut o = json!({"role": "CHATBOT", "message": m.content});
                if !m.tool_calls.is_empty() {
                    o["toolCalls"] = m
                        .tool_calls
                        .iter()
                        .map(|c| json!({"name": c.name, "parameters": args_object(&c.arguments)}))
                        .collect();
                }
                history.push(o);
            }
            ChatRole::Tool => {
                let call = m
                    .tool_call_id
                    .as_deref()
                    .and_then(|id| calls.get(id))
                    .map(|c| json!({"name": c.name, "parameters": args_object(&c.arguments)}))
                    .unwrap_or_else(|| json!({"name": "", "parameters": {}}));
                let result = json!({"call": call, "outputs": [{"output": m.content}]});
                // Results of one turn's parallel calls share one TOOL entry.
                match history.last_mut() {
                    Some(last) if last["role"] == "TOOL" => {
                        if let Some(a) = last["toolResults"].as_array_mut() {
                            a.push(result);
                        }
                    }
                    _ => history.push(json!({"role": "TOOL", "toolResults": [result]})),
                }
            }
            ChatRole::System => {}
        }
    }
    chat.insert(
        "message".into(),
        json!(last_user
            .map(|i| req.messages[i].content.as_str())
            .unwrap_or_default()),
    );
    if !history.is_empty() {
        chat.insert("chatHistory".into(), Value::Array(history));
    }
    if !req.tools.is_empty() {
        chat.insert(
            "tools".into(),
            req.tools.iter().map(cohere_tool).collect::<Value>(),
        );
    }
    chat
}

fn args_object(arguments: &str) -> Value {
    serde_json::from_str::<Value>(arguments)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}))
}

fn text_parts(text: &str) -> Value {
    json!([{"type": "TEXT", "text": text}])
}

fn generic_message(m: &ChatMessage) -> Value {
    let role = match m.role {
        ChatRole::System => "SYSTEM",
        ChatRole::User => "USER",
        ChatRole::Assistant => "ASSISTANT",
        ChatRole::Tool => "TOOL",
    };
    let mut o = json!({"role": role});
    if !(m.role == ChatRole::Assistant && !m.tool_calls.is_empty() && m.content.is_empty()) {
        o["content"] = text_parts(&m.content);
    }
    if !m.tool_calls.is_empty() {
        o["toolCalls"] = m
            .tool_calls
            .iter()
            .map(|c| json!({"id": c.id, "type": "FUNCTION", "name": c.name, "arguments": c.arguments}))
            .collect();
    }
    if let Some(id) = &m.tool_call_id {
        o["toolCallId"] = json!(id);
    }
    o
}

fn generic_request(req: &ChatRequest) -> Map<String, Value> {
    let mut chat = Map::new();
    chat.insert("apiFormat".into(), json!("GENERIC"));
    chat.insert(
        "messages".into(),
        req.messages.iter().map(generic_message).collect::<Value>(),
    );
    if !req.tools.is_empty() {
        chat.insert(
            "tools".into(),
            req.tools
                .iter()
                .map(|t| json!({"type": "FUNCTION", "name": t.name, "description": t.description, "parameters": t.parameters}))
                .collect::<Value>(),
        );
    }
    chat
}

/// Maps OCI finish reasons (Cohere: `COMPLETE`, `MAX_TOKENS`, `TOOL_CALL`, `ERROR...`;
/// generic: OpenAI-style lower case).
pub fn finish_reason(s: &str) -> FinishReason {
    match s.to_ascii_uppercase().as_str() {
        "COMPLETE" | "STOP" | "END_TURN" | "EOS" => FinishReason::Stop,
        "MAX_TOKENS" | "LENGTH" => FinishReason::Length,
        "TOOL_CALL" | "TOOL_CALLS" => FinishReason::ToolCalls,
        _ => FinishReason::Other(s.to_string()),
    }
}

/// Decodes OCI's streamed chat events, both formats.
pub struct OciDecoder {
    format: ApiFormat,
    text_emitted: bool,
    calls_emitted: bool,
    /// Generic tool calls being assembled, in order of appearance.
    calls: Vec<ToolCallRequest>,
    produced: bool,
}

impl OciDecoder {
    /// A decoder for `format`.
    pub fn new(format: ApiFormat) -> Self {
        OciDecoder {
            format,
            text_emitted: false,
            calls_emitted: false,
            calls: Vec::new(),
            produced: false,
        }
    }

    fn cohere_calls(&mut self, v: &Value, out: &mut VecDeque<StreamChunk>) {
        let Some(calls) = v["toolCalls"].as_array() else {
            return;
        };
        for (i, c) in calls.iter().enumerate() {
            let name = c["name"].as_str().unwrap_or_default().to_string();
            let arguments = c["parameters"].to_string();
            // Cohere calls carry no id: derive a stable one from the call itself.
            let digest = sha2::Sha256::digest(format!("{i}|{name}|{arguments}").as_bytes());
            out.push_back(StreamChunk::ToolCall(ToolCallRequest {
                id: format!("call_{}", hex::encode(&digest[..8])),
                name,
                arguments,
            }));
            self.calls_emitted = true;
            self.produced = true;
        }
    }

    fn usage(v: &Value) -> Option<Usage> {
        let u = v.get("usage").filter(|u| u.is_object())?;
        Some(Usage {
            prompt_tokens: u["promptTokens"].as_u64().unwrap_or(0) as u32,
            completion_tokens: u["completionTokens"].as_u64().unwrap_or(0) as u32,
        })
    }

    fn done(
        &mut self,
        reason: FinishReason,
        usage: Option<Usage>,
        out: &mut VecDeque<StreamChunk>,
    ) {
        for c in std::mem::take(&mut self.calls) {
            out.push_back(StreamChunk::ToolCall(c));
        }
        out.push_back(StreamChunk::Done {
            finish_reason: reason,
            usage,
        });
    }
}

impl Decoder for OciDecoder {
    fn feed(&mut self, p: &Payload, out: &mut VecDeque<StreamChunk>) -> Result<bool, LlmError> {
        let data = p.data.trim();
        if data == "[DONE]" {
            self.done(FinishReason::Stop, None, out);
            return Ok(true);
        }
        if data.is_empty() {
            return Ok(false);
        }
        let v: Value = serde_json::from_str(data).map_err(|e| {
            LlmError::BadResponse(format!(
                "oci: a streamed event is not JSON ({e}): {}",
                data.chars().take(200).collect::<String>()
            ))
        })?;
        // An error object (`{"code","message"}`) inside the stream.
        if v["code"].is_string() && v["message"].is_string() {
            return Err(LlmError::BadResponse(format!(
                "oci: the service reported an error mid-answer: {}",
                http::error_message(data)
            )));
        }
        let finish = v["finishReason"].as_str().map(finish_reason);
        match self.format {
            ApiFormat::Cohere => {
                let terminal = finish.is_some();
                // The terminal event repeats the whole text (and calls): emit them only if
                // nothing was streamed before.
                if let Some(t) = v["text"].as_str().filter(|t| !t.is_empty()) {
                    if !(terminal && self.text_emitted) {
                        out.push_back(StreamChunk::Token(t.to_string()));
                        self.text_emitted = true;
                        self.produced = true;
                    }
                }
                if !(terminal && self.calls_emitted) {
                    self.cohere_calls(&v, out);
                }
                if let Some(reason) = finish {
                    self.done(reason, Self::usage(&v), out);
                    return Ok(true);
                }
            }
            ApiFormat::Generic => {
                let msg = &v["message"];
                if let Some(parts) = msg["content"].as_array() {
                    for part in parts {
                        if let Some(t) = part["text"].as_str().filter(|t| !t.is_empty()) {
                            out.push_back(StreamChunk::Token(t.to_string()));
                            self.produced = true;
                        }
                    }
                }
                if let Some(calls) = msg["toolCalls"].as_array() {
                    for c in calls {
                        let id = c["id"].as_str().unwrap_or_default();
                        let name = c["name"].as_str().unwrap_or_default();
                        let args = c["arguments"].as_str().unwrap_or_default();
                        // Calls stream progressively: a chunk with a new id (or the first)
                        // starts a call, later pieces extend the last one.
                        let starts = self.calls.is_empty()
                            || (!id.is_empty() && self.calls.last().is_some_and(|l| l.id != id));
                        if starts {
                            self.calls.push(ToolCallRequest {
                                id: id.to_string(),
                                name: name.to_string(),
                                arguments: args.to_string(),
                            });
                        } else if let Some(last) = self.calls.last_mut() {
                            if last.name.is_empty() {
                                last.name = name.to_string();
                            }
                            last.arguments.push_str(args);
                        }
                        self.produced = true;
                    }
                }
                if let Some(reason) = finish {
                    for (i, c) in self.calls.iter_mut().enumerate() {
                        if c.id.is_empty() {
                            c.id = format!("call_{i}");
                        }
                    }
                    self.done(reason, Self::usage(&v), out);
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    fn end(&mut self, out: &mut VecDeque<StreamChunk>) -> Result<(), LlmError> {
        // A clean end of the body (a broken one is a transport error) after some output:
        // the service does not always send a finish marker.
        if self.produced {
            self.done(FinishReason::Stop, None, out);
            Ok(())
        } else {
            Err(LlmError::BadResponse(
                "oci: the stream ended without any answer".into(),
            ))
        }
    }
}

#[async_trait::async_trait]
impl LlmProvider for OciProvider {
    fn name(&self) -> &str {
        "oci"
    }

    fn default_model(&self) -> String {
        self.cfg.model.clone()
    }

    async fn chat_stream(&self, req: ChatRequest) -> Result<ChatStream, LlmError> {
        let model = req.named_model().unwrap_or(&self.cfg.model);
        let target = self.target(model).await?;
        let body = http::chat_body(&req, || self.request_body(&req, &target))?;
        let shown = self.chat_url.to_string();
        let resp = http::send("oci", &shown, &self.cfg.http, || {
            let signed = self.signer.sign("POST", &self.chat_url, Some(&body))?;
            Ok(signed
                .apply(self.client.post(self.chat_url.clone()))
                .header("accept", "text/event-stream")
                .body(body.clone()))
        })
        .await
        .map_err(hint)?;
        let payloads = http::sse_payloads("oci", &shown, Box::pin(resp.bytes_stream()));
        Ok(http::decode_stream(
            payloads,
            OciDecoder::new(target.format),
        ))
    }

    async fn list_models(&self) -> Result<Vec<ModelInfo>, LlmError> {
        Ok(self
            .models(false)
            .await?
            .iter()
            .map(OciModel::info)
            .collect())
    }

    async fn refresh_models(&self) -> Result<Vec<ModelInfo>, LlmError> {
        Ok(self
            .models(true)
            .await?
            .iter()
            .map(OciModel::info)
            .collect())
    }

    async fn model_info(&self, model: &str) -> Result<ModelInfo, LlmError> {
        let list = self.models(false).await?;
        resolve_friendly(&list, model)
            .map(OciModel::info)
            .ok_or_else(|| LlmError::NotFound(format!("oci: no chat model matches `{model}`")))
    }

    async fn health(&self) -> Result<Health, LlmError> {
        let t0 = Instant::now();
        let mut url = self.models_url.clone();
        url.query_pairs_mut()
            .append_pair("compartmentId", &self.compartment_id)
            .append_pair("limit", "1");
        self.get(url).await?;
        Ok(Health {
            ok: true,
            latency_ms: t0.elapsed().as_secs_f64() * 1000.0,
            detail: format!(
                "OCI Generative AI in {} accepts profile [{}]",
                self.region, self.cfg.profile
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, vendor: &str, created: &str) -> OciModel {
        OciModel {
            ocid: format!("ocid1.generativeaimodel.oc1..{name}"),
            display_name: name.into(),
            vendor: vendor.into(),
            version: "1".into(),
            capabilities: vec!["CHAT".into()],
            time_created: created.into(),
            time_deprecated: None,
        }
    }

    #[test]
    fn friendly_names_resolve() {
        let list = vec![
            m("cohere.command-r-plus", "cohere", "2024-01-01T00:00:00Z"),
            m(
                "cohere.command-r-plus-08-2024",
                "cohere",
                "2024-08-01T00:00:00Z",
            ),
            m(
                "meta.llama-3.3-70b-instruct",
                "meta",
                "2024-12-01T00:00:00Z",
            ),
            m("xai.grok-3", "xai", "2025-05-01T00:00:00Z"),
            m("xai.grok-3-mini", "xai", "2025-05-02T00:00:00Z"),
        ];
        let r = |n: &str| resolve_friendly(&list, n).map(|m| m.display_name.clone());
        assert_eq!(
            r("command-r-plus").as_deref(),
            Some("cohere.command-r-plus")
        );
        assert_eq!(r("grok-3").as_deref(), Some("xai.grok-3"));
        assert_eq!(
            r("llama-3.3").as_deref(),
            Some("meta.llama-3.3-70b-instruct")
        );
        assert_eq!(
            r("command").as_deref(),
            Some("cohere.command-r-plus-08-2024")
        );
        assert_eq!(
            r("ocid1.generativeaimodel.oc1..xai.grok-3-mini").as_deref(),
            Some("xai.grok-3-mini")
        );
        assert_eq!(r("gpt-5"), None);
    }

    #[test]
    fn cohere_body_splits_history_preamble_and_tools() {
        let mut call = ChatMessage::new(ChatRole::Assistant, "");
        call.tool_calls.push(ToolCallRequest {
            id: "c1".into(),
            name: "get_time".into(),
            arguments: r#"{"tz":"UTC"}"#.into(),
        });
        let mut result = ChatMessage::new(ChatRole::Tool, "12:00");
        result.tool_call_id = Some("c1".into());
        let req = ChatRequest {
            messages: vec![
                ChatMessage::new(ChatRole::System, "be brief"),
                ChatMessage::new(ChatRole::User, "hi"),
                ChatMessage::new(ChatRole::Assistant, "hello"),
                ChatMessage::new(ChatRole::User, "time?"),
                call,
                result,
            ],
            tools: vec![ToolSpec {
                name: "get_time".into(),
                description: "now".into(),
                parameters: json!({"type":"object","properties":{"tz":{"type":"string","description":"zone"}},"required":["tz"]}),
            }],
            stop: vec!["END".into()],
            ..Default::default()
        };
        let c = cohere_request(&req);
        assert_eq!(c["message"], "time?");
        assert_eq!(c["preambleOverride"], "be brief");
        let h = c["chatHistory"].as_array().unwrap();
        assert_eq!(h[0], json!({"role":"USER","message":"hi"}));
        assert_eq!(h[1]["role"], "CHATBOT");
        assert_eq!(h[2]["toolCalls"][0]["parameters"]["tz"], "UTC");
        assert_eq!(h[3]["toolResults"][0]["call"]["name"], "get_time");
        assert_eq!(h[3]["toolResults"][0]["outputs"][0]["output"], "12:00");
        assert_eq!(
            c["tools"][0]["parameterDefinitions"]["tz"],
            json!({"description":"zone","type":"str","isRequired":true})
        );
        let g = generic_request(&req);
        assert_eq!(g["messages"][0]["role"], "SYSTEM");
        assert_eq!(g["messages"][4]["toolCalls"][0]["type"], "FUNCTION");
        assert!(g["messages"][4].get("content").is_none());
        assert_eq!(g["messages"][5]["toolCallId"], "c1");
        assert_eq!(g["tools"][0]["type"], "FUNCTION");
    }

    #[test]
    fn cohere_terminal_event_does_not_repeat_text() {
        let mut d = OciDecoder::new(ApiFormat::Cohere);
        let mut out = VecDeque::new();
        let ev = |s: &str| Payload {
            event: String::new(),
            data: s.into(),
        };
        d.feed(&ev(r#"{"apiFormat":"COHERE","text":"Hel"}"#), &mut out)
            .unwrap();
        d.feed(&ev(r#"{"apiFormat":"COHERE","text":"lo"}"#), &mut out)
            .unwrap();
        assert!(d
            .feed(
                &ev(r#"{"apiFormat":"COHERE","text":"Hello","chatHistory":[],"finishReason":"COMPLETE"}"#),
                &mut out
            )
            .unwrap());
        let out: Vec<_> = out.into_iter().collect();
        assert_eq!(
            out,
            vec![
                StreamChunk::Token("Hel".into()),
                StreamChunk::Token("lo".into()),
                StreamChunk::Done {
                    finish_reason: FinishReason::Stop,
                    usage: None
                }
            ]
        );
    }
}
