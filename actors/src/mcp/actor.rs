//! `McpServerActor`: one configured MCP server in `coda serve`. It connects, puts the
//! server's tools in the registry, lists them again on `list_changed`, and when the
//! server exits or cannot be reached takes its tools out and tries again after a backoff
//! — within the restart budget, after which the server is given up on (`failed`). Every
//! change is an `mcp_status` event. Stopping the actor ends the session and the program's
//! whole process group.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use coda_protocol::{McpStatus, SYSTEM_SESSION};
use tokio::sync::oneshot;

use super::{Connection, McpServerSettings, ServerNote};
use crate::hub::HubHandle;
use crate::supervise::RestartBudget;
use crate::tools::ToolRegistry;

/// How a connection ended.
enum Ended {
    /// Asked to stop.
    Stopped,
    /// It could not start, or it went away.
    Lost(String),
}

pub struct McpServerActor {
    settings: McpServerSettings,
    registry: Arc<ToolRegistry>,
    hub: Option<HubHandle>,
    budget: RestartBudget,
    restarts: u32,
    recent: VecDeque<Instant>,
    /// Tells the live connection to end.
    stop: Option<oneshot::Sender<()>>,
    /// The program of the live connection (the leader of its process group).
    pid: Option<u32>,
}

impl McpServerActor {
    pub fn new(
        settings: McpServerSettings,
        registry: Arc<ToolRegistry>,
        hub: Option<HubHandle>,
        budget: RestartBudget,
    ) -> McpServerActor {
        McpServerActor {
            settings,
            registry,
            hub,
            budget,
            restarts: 0,
            recent: VecDeque::new(),
            stop: None,
            pid: None,
        }
    }

    fn publish(&self, state: &str, tools: Vec<String>, reason: Option<String>) {
        publish(
            self.hub.as_ref(),
            &self.settings,
            self.restarts,
            state,
            tools,
            reason,
        );
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        self.publish("starting", Vec::new(), None);
        let (stop_tx, mut stop_rx) = oneshot::channel();
        self.stop = Some(stop_tx);
        let settings = self.settings.clone();
        let registry = self.registry.clone();
        let hub = self.hub.clone();
        let restarts = self.restarts;
        let (pid_tx, pid_rx) = oneshot::channel();
        let run = async move {
            let mut conn = match Connection::open(settings.clone()).await {
                Ok(c) => c,
                Err(e) => return Ended::Lost(e.to_string()),
            };
            let _ = pid_tx.send(conn.pid);
            match conn.register(&registry).await {
                Ok(names) => publish(
                    hub.as_ref(),
                    &settings,
                    restarts,
                    "ready",
                    names,
                    Some("connected".into()),
                ),
                Err(e) => {
                    conn.shutdown().await;
                    return Ended::Lost(e.to_string());
                }
            }
            loop {
                tokio::select! {
                    _ = &mut stop_rx => {
                        registry.remove_group(&settings.name);
                        conn.shutdown().await;
                        return Ended::Stopped;
                    }
                    note = conn.note() => match note {
                        Some(ServerNote::ToolsChanged) => match conn.register(&registry).await {
                            Ok(names) => publish(hub.as_ref(), &settings, restarts, "ready", names, Some("list_changed".into())),
                            Err(e) => tracing::warn!(server = %settings.name, "cannot list the changed tools: {e}"),
                        },
                        None => break,
                    }
                }
            }
            registry.remove_group(&settings.name);
            Ended::Lost("the connection closed (the server exited)".into())
        };
        ctx.spawn(
            async move { pid_rx.await.ok().flatten() }
                .into_actor(self)
                .map(|pid, act, _| act.pid = pid),
        );
        ctx.spawn(
            run.into_actor(self)
                .map(|ended, act, ctx| act.ended(ended, ctx)),
        );
    }

    fn ended(&mut self, ended: Ended, ctx: &mut Context<Self>) {
        self.stop = None;
        self.pid = None;
        let Ended::Lost(why) = ended else {
            return;
        };
        tracing::warn!(server = %self.settings.name, "MCP server lost: {why}");
        if self.budget.spend(&mut self.recent, Instant::now()) {
            self.publish(
                "failed",
                Vec::new(),
                Some(format!(
                    "{why}; given up after {} restarts in {:?} (the restart budget)",
                    self.budget.max_restarts, self.budget.period
                )),
            );
            return;
        }
        self.restarts += 1;
        self.publish("restarting", Vec::new(), Some(why));
        let backoff = Duration::from_millis(250 << self.recent.len().min(5));
        ctx.run_later(backoff, |act, ctx| act.connect(ctx));
    }
}

fn publish(
    hub: Option<&HubHandle>,
    settings: &McpServerSettings,
    restarts: u32,
    state: &str,
    tools: Vec<String>,
    reason: Option<String>,
) {
    if let Some(hub) = hub {
        hub.publish(
            SYSTEM_SESSION,
            &McpStatus {
                server: settings.name.clone(),
                state: state.to_string(),
                transport: settings.transport.kind().to_string(),
                tools,
                restarts,
                reason,
            },
        );
    }
}

impl Actor for McpServerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.connect(ctx);
    }

    fn stopping(&mut self, _: &mut Context<Self>) -> Running {
        self.registry.remove_group(&self.settings.name);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // The connection's future ends with the actor, before it could close the session
        // politely: the program's group is told to go now.
        #[cfg(unix)]
        if let Some(pid) = self.pid.take().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: signals the process group this actor started (its leader's pid).
            unsafe {
                libc::killpg(pid, libc::SIGTERM);
            }
        }
        self.publish("stopped", Vec::new(), None);
        Running::Stop
    }
}

impl Supervised for McpServerActor {}

impl Drop for McpServerActor {
    fn drop(&mut self) {
        // Dropped without stopping (the system went down): the program must not outlive us.
        #[cfg(unix)]
        if let Some(pid) = self.pid.take().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: signals the process group this actor started (its leader's pid).
            unsafe {
                libc::killpg(pid, libc::SIGTERM);
            }
        }
    }
}

/// Stop the server (`coda serve` shutting down): its session ends and its program's
/// process group is told to go.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct StopMcp;

impl Handler<StopMcp> for McpServerActor {
    type Result = ();

    fn handle(&mut self, _: StopMcp, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
