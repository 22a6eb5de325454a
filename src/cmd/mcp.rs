//! `coda mcp list|tools|serve`, and the MCP servers' tools for the terminal commands
//! (`coda chat`, `coda ask --tools`, `coda tools`): each configured server is connected
//! for the command's life and its tools join the registry as `NAME__tool`.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use clap::Subcommand;
use coda_actors::mcp::server::CodaMcpServer;
use coda_actors::mcp::{Connection, McpServerSettings, McpTransport};
use coda_actors::tools::ToolRegistry;
use serde_json::json;

use crate::config::{ConfigError, Loaded};

/// `coda mcp ...`
#[derive(Debug, Subcommand)]
pub enum McpCommand {
    /// The configured MCP servers ([mcp.servers.NAME]): each is started and asked for its
    /// tools, to show that it works.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One server's tools, with the permission each gets.
    Tools {
        /// The server's name in the config.
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Serve Coda's tools and `ask` to an MCP client over stdio (for editors and other
    /// assistants; `coda serve` also answers on /mcp).
    Serve,
}

/// The configured servers' settings, for a project at `root`.
pub fn servers(loaded: &Loaded, root: &Path) -> Result<Vec<McpServerSettings>, ConfigError> {
    loaded
        .settings
        .mcp
        .server_settings(root, &loaded.settings.tools)
}

/// Connects `servers` (all at once) and puts their tools in `registry`. A server that
/// cannot be used is told on stderr and left out: the command goes on without it.
pub async fn connect_all(
    servers: Vec<McpServerSettings>,
    registry: &ToolRegistry,
) -> Vec<Connection> {
    let opened = futures_util::future::join_all(servers.into_iter().map(Connection::open)).await;
    let mut live = Vec::new();
    for c in opened {
        match c {
            Ok(conn) => match conn.register(registry).await {
                Ok(_) => live.push(conn),
                Err(e) => {
                    eprintln!("coda: {e}; its tools are left out");
                    conn.shutdown().await;
                }
            },
            Err(e) => eprintln!("coda: {e}; its tools are left out"),
        }
    }
    live
}

/// Ends every connection (the programs' process groups are stopped).
pub async fn disconnect_all(conns: Vec<Connection>) {
    futures_util::future::join_all(conns.into_iter().map(Connection::shutdown)).await;
}

fn target(t: &McpTransport) -> String {
    match t {
        McpTransport::Stdio { command, args, .. } => std::iter::once(command.as_str())
            .chain(args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        McpTransport::Http { url, .. } => url.clone(),
    }
}

/// Runs a `coda mcp` command.
pub fn run(loaded: &Loaded, cmd: McpCommand) -> anyhow::Result<()> {
    let root = loaded.settings.tools.project_root();
    match cmd {
        McpCommand::List { json } => list(loaded, &root, json),
        McpCommand::Tools { name, json } => tools(loaded, &root, &name, json),
        McpCommand::Serve => serve(loaded),
    }
}

fn list(loaded: &Loaded, root: &Path, json: bool) -> anyhow::Result<()> {
    let configured = &loaded.settings.mcp.servers;
    let enabled = servers(loaded, root)?;
    let rt = crate::llm_setup::background_runtime()?;
    let mut rows = Vec::new();
    for (name, c) in configured {
        let settings = enabled.iter().find(|s| &s.name == name).cloned();
        let (state, tools, transport, target_text) = match settings {
            None => (
                "disabled".to_string(),
                None,
                if c.command.is_empty() {
                    "http"
                } else {
                    "stdio"
                },
                if c.command.is_empty() {
                    c.url.clone()
                } else {
                    c.command.clone()
                },
            ),
            Some(s) => {
                let kind = s.transport.kind();
                let t = target(&s.transport);
                let registry = ToolRegistry::new(Default::default());
                let r = rt.block_on(async {
                    let conn = Connection::open(s).await?;
                    let names = conn.register(&registry).await;
                    conn.shutdown().await;
                    names
                });
                match r {
                    Ok(names) => ("ok".into(), Some(names.len()), kind, t),
                    Err(e) => (format!("error: {e}"), None, kind, t),
                }
            }
        };
        rows.push(json!({
            "name": name, "transport": transport, "target": target_text,
            "state": state, "tools": tools,
        }));
    }
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
    } else if rows.is_empty() {
        writeln!(
            out,
            "no MCP servers configured (add [mcp.servers.NAME] to the config; docs/coding.md#mcp)"
        )?;
    } else {
        for r in rows {
            let tools = r["tools"]
                .as_u64()
                .map(|n| format!("{n} tools"))
                .unwrap_or_default();
            writeln!(
                out,
                "{:<16} {:<5}  {:<8} {:>9}  {}",
                r["name"].as_str().unwrap_or_default(),
                r["transport"].as_str().unwrap_or_default(),
                r["state"].as_str().unwrap_or_default(),
                tools,
                r["target"].as_str().unwrap_or_default(),
            )?;
        }
    }
    Ok(())
}

fn tools(loaded: &Loaded, root: &Path, name: &str, json: bool) -> anyhow::Result<()> {
    let Some(s) = servers(loaded, root)?.into_iter().find(|s| s.name == name) else {
        let known: Vec<&String> = loaded.settings.mcp.servers.keys().collect();
        return Err(ConfigError::Invalid {
            key: format!("mcp.servers.{name}"),
            problem: if loaded.settings.mcp.servers.contains_key(name) {
                "this server is disabled (enabled = false)".into()
            } else {
                format!("no such server (configured: {known:?})")
            },
        }
        .into());
    };
    let rt = crate::llm_setup::background_runtime()?;
    let registry = ToolRegistry::new(Default::default());
    rt.block_on(async {
        let conn = Connection::open(s).await?;
        let r = conn.register(&registry).await;
        conn.shutdown().await;
        r
    })?;
    super::tools::list(&registry, json)
}

fn serve(loaded: &Loaded) -> anyhow::Result<()> {
    use rmcp::ServiceExt;
    let registry = Arc::new(crate::cmd::tools::registry(loaded, None)?);
    let llm = match crate::llm_setup::build_chain(&crate::llm_setup::llm_settings(
        &loaded.settings.llm,
        None,
    )) {
        Ok(chain) => Some(chain as Arc<dyn coda_actors::llm::LlmProvider>),
        Err(e) => {
            tracing::warn!("`ask` is not offered: {e}");
            None
        }
    };
    let server = CodaMcpServer::new(registry, llm, loaded.settings.mcp.serve.allow_ask);
    let rt = crate::llm_setup::background_runtime()?;
    rt.block_on(async {
        let running = server
            .serve(rmcp::transport::stdio())
            .await
            .map_err(|e| anyhow::anyhow!("MCP session failed to start: {e}"))?;
        let _ = running.waiting().await;
        Ok(())
    })
}
