//! Coda as an MCP server: its tools (the registry's, memory's `recall`/`remember` where
//! the store is there) and `ask` (one question to Coda's language model), for other
//! assistants and editors. Over stdio (`coda mcp serve`) or streamable HTTP (`/mcp` on
//! `coda serve`, behind the same token as the WebSocket).
//!
//! Permissions hold here too: `deny` tools are not listed; `ask` tools are listed with
//! `destructiveHint` (so the client asks its user) and run only when the config allows
//! them (`mcp.serve.allow_ask`), since nobody at Coda's end can say yes. Other MCP
//! servers' tools (`NAME__tool`) are not passed on.

use std::borrow::Cow;
use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
    ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, ServerHandler};
use serde_json::{json, Map, Value};

use crate::llm::{ChatMessage, ChatRequest, ChatRole, LlmProvider};
use crate::tools::registry::GROUP_SEPARATOR;
use crate::tools::{Permission, ToolContext, ToolFailure, ToolRegistry};

/// Tools that change something although they may run without asking.
const CHANGES: [&str; 3] = ["run_command", "remember", "timer"];

/// The name of the tool that asks Coda's language model.
pub const ASK_TOOL: &str = "ask";

/// What the server offers.
#[derive(Clone)]
pub struct CodaMcpServer {
    registry: Arc<ToolRegistry>,
    llm: Option<Arc<dyn LlmProvider>>,
    allow_ask: bool,
    system_prompt: String,
}

impl CodaMcpServer {
    /// `registry`'s tools, and `ask` when `llm` is given. `allow_ask`: run the tools whose
    /// permission is `ask` (the MCP client's user confirms them on their side).
    pub fn new(
        registry: Arc<ToolRegistry>,
        llm: Option<Arc<dyn LlmProvider>>,
        allow_ask: bool,
    ) -> CodaMcpServer {
        CodaMcpServer {
            registry,
            llm,
            allow_ask,
            system_prompt: "You are Coda, a helpful assistant. Answer briefly and precisely."
                .into(),
        }
    }

    /// The tools listed to clients.
    pub fn tools(&self) -> Vec<Tool> {
        let mut out: Vec<Tool> = self
            .registry
            .list()
            .into_iter()
            .filter(|t| t.permission != Permission::Deny && !t.name.contains(GROUP_SEPARATOR))
            .map(|t| {
                let schema = match t.parameters {
                    Value::Object(m) => m,
                    _ => Map::new(),
                };
                // A command or a stored memory changes things whatever the permission
                // that lets it run without asking.
                let safe = t.permission == Permission::Safe && !CHANGES.contains(&t.name.as_str());
                let mut tool = Tool::new(t.name, t.description, Arc::new(schema));
                let mut a = ToolAnnotations::default();
                a.read_only_hint = Some(safe);
                a.destructive_hint = Some(!safe);
                tool.annotations = Some(a);
                tool
            })
            .collect();
        if self.llm.is_some() {
            let schema = json!({
                "type": "object",
                "properties": {
                    "question": {"type": "string", "description": "What to ask"},
                    "system": {"type": "string", "description": "Instructions instead of Coda's own"}
                },
                "required": ["question"],
                "additionalProperties": false
            });
            let schema = match schema {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            let mut tool = Tool::new(
                ASK_TOOL,
                "Ask Coda's language model one question; the answer is text.",
                Arc::new(schema),
            );
            let mut a = ToolAnnotations::default();
            a.read_only_hint = Some(true);
            a.open_world_hint = Some(false);
            tool.annotations = Some(a);
            out.push(tool);
        }
        out
    }

    /// Runs one call; a tool's failure is a result with `isError`, as MCP has it.
    pub async fn call(&self, name: &str, args: Value) -> CallToolResult {
        if name == ASK_TOOL && self.llm.is_some() {
            return self.ask(&args).await;
        }
        if name.contains(GROUP_SEPARATOR) {
            return error_result(format!("there is no tool named `{name}`"));
        }
        let ctx = ToolContext {
            call_id: format!("mcp-{}", uuid::Uuid::new_v4().simple()),
            ..ToolContext::default()
        };
        match self.registry.call(name, args, ctx, self.allow_ask).await {
            Ok(v) => {
                let text = match &v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
                if v.is_object() {
                    r.structured_content = Some(v);
                }
                r
            }
            Err(ToolFailure::NeedsConfirmation { tool, preview }) => error_result(format!(
                "`{tool}` needs the user's confirmation{}; Coda's MCP server runs such tools \
                 only when mcp.serve.allow_ask = true",
                preview
                    .map(|p| format!(" ({})", p.summary))
                    .unwrap_or_default()
            )),
            Err(e) => error_result(format!("{}: {e}", e.code())),
        }
    }

    async fn ask(&self, args: &Value) -> CallToolResult {
        let Some(llm) = &self.llm else {
            return error_result("no language model".into());
        };
        let Some(question) = args.get("question").and_then(Value::as_str) else {
            return error_result("`question` (a string) is required".into());
        };
        let system = args
            .get("system")
            .and_then(Value::as_str)
            .unwrap_or(&self.system_prompt);
        let req = ChatRequest {
            messages: vec![
                ChatMessage::new(ChatRole::System, system),
                ChatMessage::new(ChatRole::User, question),
            ],
            ..Default::default()
        };
        match llm.chat(req).await {
            Ok(r) => CallToolResult::success(vec![ContentBlock::text(r.text)]),
            Err(e) => error_result(format!("the language model could not answer: {e}")),
        }
    }
}

fn error_result(text: String) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(text)])
}

impl ServerHandler for CodaMcpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(
                Implementation::new("coda", env!("CARGO_PKG_VERSION")).with_title("Coda"),
            )
            .with_instructions(
                "Coda's tools: the project's files (read, search, edit), its version control, \
                 commands, the clock, a calculator, memory where Coda runs with its store, and \
                 `ask` for Coda's language model.",
            )
    }

    async fn list_tools(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, rmcp::ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, rmcp::ErrorData> {
        let name: Cow<'_, str> = request.name.clone();
        let args = request.arguments.map(Value::Object).unwrap_or(Value::Null);
        Ok(self.call(&name, args).await.into())
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tools().into_iter().find(|t| t.name == name)
    }
}

/// The server over streamable HTTP, for a web framework to mount (`/mcp` on `coda
/// serve`): stateless, each POST answered by itself (JSON, or SSE when the answer has
/// notifications first), so any of the HTTP workers can take any request.
#[derive(Clone)]
pub struct HttpEndpoint {
    service: rmcp::transport::streamable_http_server::tower::StreamableHttpService<
        CodaMcpServer,
        rmcp::transport::streamable_http_server::session::local::LocalSessionManager,
    >,
}

/// An answer to hand back to the web framework.
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: futures_util::stream::BoxStream<'static, Result<bytes::Bytes, std::io::Error>>,
}

impl HttpEndpoint {
    /// The Host check is the server's own (its guard runs before this), so none here.
    pub fn new(server: CodaMcpServer) -> HttpEndpoint {
        use rmcp::transport::streamable_http_server::StreamableHttpServerConfig;
        let config = StreamableHttpServerConfig::default()
            .with_legacy_session_mode(false)
            .with_json_response(true)
            .with_sse_keep_alive(None)
            .with_allowed_hosts(Vec::<String>::new());
        HttpEndpoint {
            service: rmcp::transport::streamable_http_server::tower::StreamableHttpService::new(
                move || Ok(server.clone()),
                Default::default(),
                config,
            ),
        }
    }

    /// Answers one request.
    pub async fn handle(
        &self,
        method: &str,
        uri: &str,
        headers: Vec<(String, Vec<u8>)>,
        body: bytes::Bytes,
    ) -> HttpAnswer {
        use futures_util::StreamExt;
        use tower_service::Service;
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in &headers {
            b = b.header(k.as_str(), v.as_slice());
        }
        let request = match b.body(http_body_util::Full::new(body)) {
            Ok(r) => r,
            Err(e) => {
                return HttpAnswer {
                    status: 400,
                    headers: vec![("content-type".into(), b"text/plain".to_vec())],
                    body: futures_util::stream::once(async move {
                        Ok(bytes::Bytes::from(format!("bad request: {e}\n")))
                    })
                    .boxed(),
                }
            }
        };
        let response = match self.service.clone().call(request).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let (parts, body) = response.into_parts();
        HttpAnswer {
            status: parts.status.as_u16(),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: http_body_util::BodyDataStream::new(body)
                .map(|r| r.map_err(|never| match never {}))
                .boxed(),
        }
    }
}
