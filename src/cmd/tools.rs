//! `coda tools list|call|undo`: the tools without a model and without a server, for
//! scripts and tests. The registry is built here as the server builds it (same config,
//! same permissions), minus what needs a running core (memory, timers); a call goes
//! through the same checks as a model's: `deny` refuses, `ask` shows what the call would
//! do (a write's diff) and stops unless `--yes`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Subcommand;
use coda_actors::tools::{
    register_builtins, BuiltinDeps, ProgressSink, ToolContext, ToolFailure, ToolRegistry, Workspace,
};
use serde_json::{json, Value};

use crate::config::{ConfigError, Loaded, OverrideValue};

/// `coda tools ...`
#[derive(Debug, clap::Args)]
pub struct ToolsArgs {
    /// The project the coding tools work in (default: tools.project_root, else the
    /// working directory).
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: ToolsCommand,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum ToolsCommand {
    /// List every tool with its permission and timeout.
    List {
        /// Machine-readable output (with each tool's JSON Schema).
        #[arg(long)]
        json: bool,
    },
    /// Run one tool, with the same permission checks as a model's call. A tool that asks
    /// prints what it would do and exits with code 4 unless --yes; a denied one exits 5.
    Call {
        /// The tool's name (see `coda tools list`).
        name: String,
        /// Its arguments, a JSON object.
        #[arg(long, value_name = "JSON", default_value = "{}")]
        args: String,
        /// Confirm the call (for tools whose permission, or shell rule, is `ask`).
        #[arg(long, short = 'y')]
        yes: bool,
        /// Print a failure as JSON on stdout too (`error`, `message`, `preview`).
        #[arg(long)]
        json: bool,
    },
    /// Undo the assistant's newest write in the project (`call undo_last_write`).
    Undo {
        /// Confirm (undo asks like any write).
        #[arg(long, short = 'y')]
        yes: bool,
        /// Undo even though the file changed since the write.
        #[arg(long)]
        force: bool,
    },
}

impl ToolsArgs {
    /// `--root` as a config override.
    pub fn overrides(&self) -> Vec<(String, OverrideValue, String)> {
        self.root
            .iter()
            .map(|r| {
                (
                    "tools.project_root".to_string(),
                    OverrideValue::Str(r.display().to_string()),
                    "--root".to_string(),
                )
            })
            .collect()
    }
}

/// A call ended without a result: the exit code says why.
#[derive(Debug, thiserror::Error)]
#[error("`{tool}` did not run: {failure}{}", if matches!(.failure, ToolFailure::NeedsConfirmation { .. }) { "\n  nothing was done; run again with --yes to confirm" } else { "" })]
pub struct CallRefused {
    pub tool: String,
    pub failure: ToolFailure,
}

impl CallRefused {
    /// 4: needs confirmation; 5: denied; 1: anything else.
    pub fn exit_code(&self) -> i32 {
        match self.failure {
            ToolFailure::NeedsConfirmation { .. } => 4,
            ToolFailure::Denied { .. } => 5,
            _ => super::exit::FAILURE,
        }
    }
}

/// The tools as configured, working in `root` (`None`: `tools.project_root`, else the
/// working directory); the registry `coda chat` offers the model too.
pub fn registry(loaded: &Loaded, root: Option<PathBuf>) -> anyhow::Result<ToolRegistry> {
    let t = &loaded.settings.tools;
    let mut settings = t.workspace_settings();
    if let Some(root) = root {
        settings.root = root;
    }
    let ws = Workspace::open(settings).map_err(|e| ConfigError::Invalid {
        key: "tools.project_root".into(),
        problem: e.to_string(),
    })?;
    let mut registry = ToolRegistry::new(t.registry_settings());
    register_builtins(
        &mut registry,
        BuiltinDeps {
            project: Some(Arc::new(ws)),
            shell: Some(t.shell_settings()?),
            map_cache: Some(crate::llm_setup::cache_dir().join("repomap")),
            ..BuiltinDeps::default()
        },
    )?;
    registry.set_permissions(&t.permissions)?;
    Ok(registry)
}

/// Runs a `coda tools` command.
pub fn run(loaded: &Loaded, args: ToolsArgs) -> anyhow::Result<()> {
    let registry = registry(loaded, None)?;
    // The MCP servers' tools too: every server for a listing, the one named for a call.
    let mut servers = super::mcp::servers(loaded, &loaded.settings.tools.project_root())?;
    match &args.cmd {
        ToolsCommand::List { .. } => {}
        ToolsCommand::Call { name, .. } => servers.retain(|s| {
            name.starts_with(&format!(
                "{}{}",
                s.name,
                coda_actors::tools::registry::GROUP_SEPARATOR
            ))
        }),
        ToolsCommand::Undo { .. } => servers.clear(),
    }
    let rt = crate::llm_setup::background_runtime()?;
    let conns = rt.block_on(super::mcp::connect_all(servers, &registry));
    let result = run_with(&rt, &registry, args);
    rt.block_on(super::mcp::disconnect_all(conns));
    result
}

fn run_with(
    rt: &tokio::runtime::Runtime,
    registry: &ToolRegistry,
    args: ToolsArgs,
) -> anyhow::Result<()> {
    match args.cmd {
        ToolsCommand::List { json } => list(registry, json),
        ToolsCommand::Call {
            name,
            args,
            yes,
            json,
        } => {
            let arguments: Value =
                serde_json::from_str(&args).map_err(|e| ConfigError::Invalid {
                    key: "--args".into(),
                    problem: format!("not JSON: {e}"),
                })?;
            call(rt, registry, &name, arguments, yes, json)
        }
        ToolsCommand::Undo { yes, force } => call(
            rt,
            registry,
            "undo_last_write",
            json!({"force": force}),
            yes,
            false,
        ),
    }
}

/// Prints the tools: name, permission, timeout, first sentence (or JSON).
pub fn list(registry: &ToolRegistry, json: bool) -> anyhow::Result<()> {
    let tools = registry.list();
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&tools)?)?;
        return Ok(());
    }
    let width = tools.iter().map(|t| t.name.len()).max().unwrap_or(0);
    for t in &tools {
        let permission = serde_json::to_value(t.permission)?;
        let first = t.description.split(". ").next().unwrap_or_default();
        writeln!(
            out,
            "{:width$}  {:4}  {:>6}  {}",
            t.name,
            permission.as_str().unwrap_or_default(),
            format!("{:.0}s", t.timeout_s),
            first.trim_end_matches('.'),
        )?;
    }
    Ok(())
}

fn call(
    rt: &tokio::runtime::Runtime,
    registry: &ToolRegistry,
    name: &str,
    arguments: Value,
    confirmed: bool,
    json: bool,
) -> anyhow::Result<()> {
    let cancelled = Arc::new(AtomicBool::new(false));
    // A command's output shows as it comes when someone watches; the result has it too.
    let progress = std::io::stderr().is_terminal().then(|| {
        ProgressSink::new(|_stream, text| {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(text.as_bytes());
            let _ = err.flush();
        })
    });
    let ctx = ToolContext {
        call_id: "cli-1".into(),
        cancelled: cancelled.clone(),
        progress,
        ..ToolContext::default()
    };
    let result = rt.block_on(async {
        // Ctrl-C or SIGTERM stops the tool (a command's process group is killed, as it is
        // in its own group and the terminal's Ctrl-C does not reach it), and the call
        // still answers what it had.
        let stop = cancelled.clone();
        let signals = async move {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{signal, SignalKind};
                match signal(SignalKind::terminate()) {
                    Ok(mut term) => {
                        tokio::select! {
                            _ = tokio::signal::ctrl_c() => {}
                            _ = term.recv() => {}
                        }
                    }
                    Err(_) => {
                        let _ = tokio::signal::ctrl_c().await;
                    }
                }
            }
            #[cfg(not(unix))]
            let _ = tokio::signal::ctrl_c().await;
            stop.store(true, Ordering::Relaxed);
            // The tool now stops and answers; this branch must not win the race.
            std::future::pending::<()>().await;
        };
        tokio::select! {
            r = registry.call(name, arguments, ctx, confirmed) => r,
            _ = signals => Err(ToolFailure::Unavailable("interrupted".into())),
        }
    });
    let mut out = std::io::stdout().lock();
    match result {
        Ok(v) => {
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            Ok(())
        }
        Err(failure) => {
            if json {
                let v = json!({
                    "error": failure.code(),
                    "message": failure.to_string(),
                    "preview": failure.preview(),
                });
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else if let Some(p) = failure.preview() {
                writeln!(out, "{}", p.summary)?;
                if let Some(diff) = &p.diff {
                    write!(out, "{diff}")?;
                }
            }
            out.flush()?;
            Err(CallRefused {
                tool: name.to_string(),
                failure,
            }
            .into())
        }
    }
}
