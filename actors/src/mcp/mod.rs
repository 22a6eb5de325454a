//! MCP (the Model Context Protocol), both ways, on the official `rmcp` SDK.
//!
//! **Client**: each server configured under `[mcp.servers.NAME]` — a program Coda runs
//! (stdio, in a process group of its own) or a streamable-HTTP URL (with an optional
//! bearer token) — is connected ([`Connection::open`]), its tools listed and put in the
//! [`ToolRegistry`] as the group `NAME` (tools `NAME__tool`: function names may not
//! contain dots), with permissions from the tools' annotations (read-only → `safe`,
//! anything else → `ask`) unless the config says otherwise. A
//! `notifications/tools/list_changed` lists them again. Results are cut to
//! `max_result_bytes`; the program's stderr goes to the log. In `coda serve` each server
//! is run by an [`McpServerActor`], which restarts it within the restart budget and
//! publishes `mcp_status`; the terminal commands open connections directly.
//!
//! **Server**: [`server::CodaMcpServer`] exposes Coda's tools (and memory search/store and
//! `ask`, when given) to other assistants and editors, over stdio (`coda mcp serve`) or
//! streamable HTTP (`/mcp` on `coda serve`).

pub mod actor;
pub mod server;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[allow(deprecated)]
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ContentBlock,
    Implementation, ListRootsResult, LoggingMessageNotificationParam, Root,
};
use rmcp::service::{NotificationContext, RequestContext, RunningService};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;

pub use actor::McpServerActor;

use crate::tools::registry::GROUP_SEPARATOR;
use crate::tools::{GroupTool, Permission, Tool, ToolContext, ToolFailure, ToolRegistry};

/// How to reach one MCP server.
#[derive(Debug, Clone, PartialEq)]
pub enum McpTransport {
    /// A program Coda starts, speaking MCP on its stdin/stdout.
    Stdio {
        command: String,
        args: Vec<String>,
        /// Added to a clean environment (PATH, HOME, LANG are kept).
        env: BTreeMap<String, String>,
        cwd: Option<PathBuf>,
    },
    /// A streamable-HTTP endpoint.
    Http {
        url: String,
        /// Sent as `Authorization: Bearer …`.
        bearer_token: Option<String>,
    },
}

impl McpTransport {
    /// `stdio` or `http`.
    pub fn kind(&self) -> &'static str {
        match self {
            McpTransport::Stdio { .. } => "stdio",
            McpTransport::Http { .. } => "http",
        }
    }
}

/// One `[mcp.servers.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct McpServerSettings {
    /// The name (`[a-z0-9-]`), also the prefix of its tools.
    pub name: String,
    pub transport: McpTransport,
    /// Permissions by the server's own tool name, over what the annotations say.
    pub permissions: BTreeMap<String, Permission>,
    /// Time allowed to start and list tools.
    pub connect_timeout: Duration,
    /// Time allowed to one call.
    pub call_timeout: Duration,
    /// Largest result kept (text beyond is cut, with a note).
    pub max_result_bytes: usize,
    /// Directories offered as roots (`roots/list`): the project.
    pub roots: Vec<PathBuf>,
}

impl McpServerSettings {
    /// Settings with the defaults around a transport.
    pub fn new(name: &str, transport: McpTransport) -> McpServerSettings {
        McpServerSettings {
            name: name.to_string(),
            transport,
            permissions: BTreeMap::new(),
            connect_timeout: Duration::from_secs(30),
            call_timeout: Duration::from_secs(60),
            max_result_bytes: 32 * 1024,
            roots: Vec::new(),
        }
    }
}

/// Why a server could not be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum McpError {
    #[error("MCP server `{server}`: cannot start `{command}`: {why}")]
    Spawn {
        server: String,
        command: String,
        why: String,
    },
    #[error("MCP server `{server}`: {why}")]
    Protocol { server: String, why: String },
    #[error("MCP server `{server}` did not answer within {0:?}", .timeout)]
    Timeout { server: String, timeout: Duration },
}

/// Is `name` usable as a server name (and tool prefix)?
pub fn valid_server_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// What a server tells us between requests.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerNote {
    /// `notifications/tools/list_changed`.
    ToolsChanged,
}

/// Our side of a connection: roots, and notifications passed on. Roots and server logging
/// are deprecated by the newest protocol (SEP-2577) but still what servers of the
/// earlier versions (most of them) use to find the project and to say what they do.
#[derive(Clone)]
struct Handler {
    roots: Vec<PathBuf>,
    notes: mpsc::UnboundedSender<ServerNote>,
    server: String,
}

#[allow(deprecated)]
impl ClientHandler for Handler {
    fn get_info(&self) -> ClientConfig {
        let mut caps = ClientCapabilities::default();
        if !self.roots.is_empty() {
            caps = ClientCapabilities::builder().enable_roots().build();
        }
        ClientConfig::new(
            caps,
            Implementation::new("coda", env!("CARGO_PKG_VERSION")).with_title("Coda"),
        )
    }

    async fn list_roots(
        &self,
        _: RequestContext<RoleClient>,
    ) -> Result<ListRootsResult, rmcp::ErrorData> {
        let roots = self
            .roots
            .iter()
            .map(|p| {
                let mut r = Root::new(format!("file://{}", p.display()));
                r.name = p.file_name().map(|n| n.to_string_lossy().into_owned());
                r
            })
            .collect();
        Ok(ListRootsResult::new(roots))
    }

    async fn on_tool_list_changed(&self, _: NotificationContext<RoleClient>) {
        let _ = self.notes.send(ServerNote::ToolsChanged);
    }

    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _: NotificationContext<RoleClient>,
    ) {
        tracing::debug!(server = %self.server, level = ?params.level, data = %params.data, "MCP server log");
    }
}

/// A live connection to one server.
pub struct Connection {
    pub settings: McpServerSettings,
    service: RunningService<RoleClient, Handler>,
    notes: mpsc::UnboundedReceiver<ServerNote>,
    /// The program's pid (stdio).
    pub pid: Option<u32>,
}

impl Connection {
    /// Starts (stdio) or reaches (HTTP) the server and initialises the session.
    pub async fn open(settings: McpServerSettings) -> Result<Connection, McpError> {
        let (tx, notes) = mpsc::unbounded_channel();
        let handler = Handler {
            roots: settings.roots.clone(),
            notes: tx,
            server: settings.name.clone(),
        };
        let server = settings.name.clone();
        let timeout = settings.connect_timeout;
        let (service, pid) = match &settings.transport {
            McpTransport::Stdio {
                command,
                args,
                env,
                cwd,
            } => {
                let (transport, pid) = spawn(&settings.name, command, args, env, cwd.as_ref())?;
                let s = within(&server, timeout, handler.serve(transport), |e| {
                    format!("initialisation failed: {e}")
                })
                .await?;
                (s, pid)
            }
            McpTransport::Http { url, bearer_token } => {
                use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
                use rmcp::transport::StreamableHttpClientTransport;
                crate::llm::http::install_tls_provider();
                let mut config = StreamableHttpClientTransportConfig::with_uri(url.clone());
                config.auth_header = bearer_token.clone();
                let transport = StreamableHttpClientTransport::from_config(config);
                let s = within(&server, timeout, handler.serve(transport), |e| {
                    format!("cannot connect to {url}: {e}")
                })
                .await?;
                (s, None)
            }
        };
        Ok(Connection {
            settings,
            service,
            notes,
            pid,
        })
    }

    /// The server's tools, as registry tools with their permissions.
    pub async fn tools(&self) -> Result<Vec<GroupTool>, McpError> {
        let s = &self.settings;
        let listed = within(
            &s.name,
            s.connect_timeout,
            self.service.list_all_tools(),
            |e| format!("tools/list failed: {e}"),
        )
        .await?;
        let peer = self.service.peer().clone();
        Ok(listed
            .into_iter()
            .map(|t| {
                let read_only = t.annotations.as_ref().and_then(|a| a.read_only_hint) == Some(true);
                let permission =
                    s.permissions
                        .get(t.name.as_ref())
                        .copied()
                        .unwrap_or(if read_only {
                            Permission::Safe
                        } else {
                            Permission::Ask
                        });
                let tool = McpTool {
                    full: format!("{}{GROUP_SEPARATOR}{}", s.name, t.name),
                    remote: t.name.to_string(),
                    server: s.name.clone(),
                    description: describe(&s.name, &t),
                    parameters: Value::Object((*t.input_schema).clone()),
                    peer: peer.clone(),
                    timeout: s.call_timeout,
                    max_bytes: s.max_result_bytes,
                };
                GroupTool {
                    tool: Arc::new(tool),
                    permission,
                }
            })
            .collect())
    }

    /// Lists the tools and puts them in `registry` as this server's group; returns the
    /// names that joined (tools that do not fit are left out, with a warning).
    pub async fn register(&self, registry: &ToolRegistry) -> Result<Vec<String>, McpError> {
        let tools = self.tools().await?;
        let (names, problems) = registry.set_group(&self.settings.name, tools);
        for p in problems {
            tracing::warn!(server = %self.settings.name, "MCP tool left out: {p}");
        }
        Ok(names)
    }

    /// The next notification; `None` once the connection is gone.
    pub async fn note(&mut self) -> Option<ServerNote> {
        if is_over(&self.service) {
            return None;
        }
        tokio::select! {
            n = self.notes.recv() => n,
            _ = closed(&self.service) => None,
        }
    }

    /// Is the connection over (the program exited, the HTTP session ended)?
    pub fn is_closed(&self) -> bool {
        is_over(&self.service)
    }

    /// Ends the session: stdin closed, then SIGTERM to the program's process group after
    /// 3 s, then SIGKILL.
    pub async fn shutdown(self) {
        let _ = self.service.cancel().await;
    }
}

/// `fut` within `timeout`; its error told as `why(error)`.
async fn within<T, E, F>(
    server: &str,
    timeout: Duration,
    fut: F,
    why: impl FnOnce(E) -> String,
) -> Result<T, McpError>
where
    F: std::future::Future<Output = Result<T, E>>,
{
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(McpError::Timeout {
            server: server.to_string(),
            timeout,
        }),
        Ok(Err(e)) => Err(McpError::Protocol {
            server: server.to_string(),
            why: why(e),
        }),
        Ok(Ok(v)) => Ok(v),
    }
}

/// Resolves once the service has stopped. An end of the program's output ends the
/// service loop without cancelling the service's token, so the peer's channel is what
/// tells (checked four times a second).
async fn closed(service: &RunningService<RoleClient, Handler>) {
    while !is_over(service) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn is_over(service: &RunningService<RoleClient, Handler>) -> bool {
    service.is_closed() || service.peer().is_transport_closed()
}

/// Starts the program in a process group of its own, with a clean environment; its
/// stderr goes to the log, line by line.
fn spawn(
    server: &str,
    command: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
    cwd: Option<&PathBuf>,
) -> Result<(rmcp::transport::TokioChildProcess, Option<u32>), McpError> {
    use process_wrap::tokio::{CommandWrap, ProcessGroup};
    let mut cmd = tokio::process::Command::new(command);
    cmd.args(args).env_clear();
    for keep in ["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER"] {
        if let Some(v) = std::env::var_os(keep) {
            cmd.env(keep, v);
        }
    }
    cmd.envs(env);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let mut wrap = CommandWrap::from(cmd);
    wrap.wrap(ProcessGroup::leader());
    let (transport, stderr) = rmcp::transport::TokioChildProcess::builder(wrap)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| McpError::Spawn {
            server: server.to_string(),
            command: command.to_string(),
            why: e.to_string(),
        })?;
    let pid = transport.id();
    if let Some(stderr) = stderr {
        let server = server.to_string();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!(server = %server, "MCP server stderr: {line}");
            }
        });
    }
    Ok((transport, pid))
}

/// The description the model sees: the server's, said to come from it.
fn describe(server: &str, t: &rmcp::model::Tool) -> String {
    let text = t
        .description
        .as_deref()
        .or(t.title.as_deref())
        .unwrap_or("(no description)");
    format!("{text} (from the MCP server `{server}`)")
}

/// One tool of an MCP server.
pub struct McpTool {
    full: String,
    remote: String,
    server: String,
    description: String,
    parameters: Value,
    peer: rmcp::Peer<RoleClient>,
    timeout: Duration,
    max_bytes: usize,
}

#[async_trait::async_trait]
impl Tool for McpTool {
    fn name(&self) -> &str {
        &self.full
    }

    fn description(&self) -> &str {
        &self.description
    }

    fn parameters(&self) -> Value {
        self.parameters.clone()
    }

    fn timeout(&self) -> Option<Duration> {
        Some(self.timeout)
    }

    async fn call(&self, args: Value, _ctx: ToolContext) -> Result<Value, ToolFailure> {
        let mut params = CallToolRequestParams::new(Cow::Owned(self.remote.clone()));
        if let Value::Object(map) = args {
            params = params.with_arguments(map);
        }
        let result =
            self.peer.call_tool(params).await.map_err(|e| {
                ToolFailure::Unavailable(format!("MCP server `{}`: {e}", self.server))
            })?;
        result_value(&result, self.max_bytes)
    }
}

/// A call's result as the model gets it: the text joined, other content described, the
/// structured content as is; cut to `max_bytes`. An error result is the call's failure.
pub fn result_value(result: &CallToolResult, max_bytes: usize) -> Result<Value, ToolFailure> {
    let mut text = String::new();
    let mut other = Vec::new();
    for block in &result.content {
        match block {
            ContentBlock::Text(t) => {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&t.text);
            }
            ContentBlock::Image(i) => other.push(json!({
                "type": "image", "mime_type": i.mime_type, "base64_bytes": i.data.len()
            })),
            ContentBlock::Audio(a) => other.push(json!({
                "type": "audio", "mime_type": a.mime_type, "base64_bytes": a.data.len()
            })),
            ContentBlock::Resource(r) => {
                other.push(json!({"type": "resource", "resource": r.resource}))
            }
            ContentBlock::ResourceLink(r) => other.push(json!({
                "type": "resource_link", "uri": r.uri, "name": r.name
            })),
            _ => other.push(json!({"type": "unknown"})),
        }
    }
    let truncated = text.len() > max_bytes;
    if truncated {
        let mut cut = max_bytes;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    if result.is_error == Some(true) {
        return Err(ToolFailure::Failed(if text.is_empty() {
            "the MCP server reported an error".into()
        } else {
            text
        }));
    }
    let mut v = json!({ "text": text });
    if truncated {
        v["truncated"] = json!(format!("cut at {max_bytes} bytes (mcp max_result_bytes)"));
    }
    if !other.is_empty() {
        v["content"] = Value::Array(other);
    }
    if let Some(s) = &result.structured_content {
        let size = serde_json::to_vec(s).map(|b| b.len()).unwrap_or(usize::MAX);
        if size <= max_bytes {
            v["structured"] = s.clone();
        } else {
            v["structured_omitted"] = json!(format!("{size} bytes, over {max_bytes}"));
        }
    }
    Ok(v)
}
