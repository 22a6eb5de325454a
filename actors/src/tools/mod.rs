//! Tools: owns the tool registry (name, description, JSON-Schema arguments, timeout,
//! permission) and runs calls so that a tool that panics, hangs or returns garbage is
//! contained and reported as `tool_error`.
//!
//! # Messages
//!
//! | message | answer | events |
//! |---|---|---|
//! | [`Call`] | `Result<serde_json::Value, ToolFailure>` | `tool_call`, then `tool_result` or `tool_error` |
//! | [`Specs`] | `Vec<ToolSpec>`: the tools offered to the LLM (`ChatRequest::tools`) | — |
//! | [`ListTools`] | `Vec<ToolInfo>` (with permissions and timeouts) | — |
//! | [`Cancel`] | number of running calls told to stop | — (their `tool_result`/`tool_error` follow) |
//!
//! # Choosing a tool
//!
//! * By rules, for the IntentRouter: [`match_intent`]`(text) -> Option<IntentMatch>`
//!   (`tool`, `arguments`, `confidence`; "what time is it" → `clock`, "what is 12*7" →
//!   `calculator`, "remember that ..." → `remember`, "set a timer for 5 minutes" →
//!   `timer`). Send `Call { name: m.tool, arguments: m.arguments, .. }`.
//! * By the LLM, where the provider does function calling: put [`Specs`] in
//!   `ChatRequest::tools`; for each `ToolCallRequest` the model returns, send
//!   [`Call::from_request`] and give the model [`tool_message`] of the answer.
//!
//! # Containment
//!
//! Each call: permission (`deny` → `denied`), arguments validated against the tool's JSON
//! Schema (`jsonschema`), the call's own permission where the tool has one (the shell's
//! rules; the stricter applies), `ask` → `needs_confirmation` with a preview of what the
//! call would do (a write's diff) unless the call is `confirmed`; then the tool runs on a
//! thread of its own under its timeout, reporting progress as `tool_progress`. A panic is caught (`catch_unwind`)
//! → `panicked`; no answer in time → `timeout` (the call's `cancelled` flag is set; the
//! thread cannot be killed and is left to finish, its result dropped); a result over
//! `tools.max_output_bytes` or not matching the tool's declared output schema →
//! `bad_output`. The actor never waits on a tool: each call is its own future.

pub mod builtin;
pub mod hgignore;
pub mod intent;
pub mod registry;
pub mod repomap;
pub mod vcs;
pub mod workspace;

pub use builtin::{register_builtins, BuiltinDeps, BUILTIN_TOOLS, CODING_TOOLS};
pub use intent::{match_intent, parse_duration, IntentMatch};
pub use registry::{
    CallPermission, GroupTool, Permission, ProgressSink, RegistryError, RegistrySettings, Tool,
    ToolContext, ToolFailure, ToolInfo, ToolPreview, ToolRegistry,
};
pub use workspace::{Workspace, WorkspaceSettings};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix::prelude::*;
use coda_protocol::{
    ToolCall as ToolCallEvent, ToolError as ToolErrorEvent, ToolProgress as ToolProgressEvent,
    ToolResult as ToolResultEvent, SYSTEM_SESSION,
};
use serde_json::Value;

use crate::hub::HubHandle;
use crate::llm::{ChatMessage, ChatRole, ToolCallRequest, ToolSpec};
use crate::supervise::Supervision;

/// Call a tool.
#[derive(Message, Debug, Clone, Default)]
#[rtype(result = "Result<Value, ToolFailure>")]
pub struct Call {
    /// Tool name.
    pub name: String,
    /// Arguments (an object; `null` means none).
    pub arguments: Value,
    pub turn_id: Option<String>,
    /// The conversation session (events go to it; `system` when absent).
    pub session_id: Option<String>,
    /// Call id (the LLM's tool-call id); one is made up when absent.
    pub call_id: Option<String>,
    /// The user confirmed this call (needed by tools whose permission is `ask`).
    pub confirmed: bool,
}

impl Call {
    /// A call the LLM asked for. Arguments that are not JSON are passed on as the raw
    /// string, which fails validation (`invalid_arguments`), reported like any failure.
    pub fn from_request(
        req: &ToolCallRequest,
        turn_id: Option<String>,
        session_id: Option<String>,
    ) -> Call {
        let arguments = if req.arguments.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&req.arguments)
                .unwrap_or_else(|_| Value::String(req.arguments.clone()))
        };
        Call {
            name: req.name.clone(),
            arguments,
            turn_id,
            session_id,
            call_id: Some(req.id.clone()).filter(|id| !id.is_empty()),
            confirmed: false,
        }
    }
}

/// The message to give the model after a call: the result (or the error) as JSON text.
pub fn tool_message(call_id: &str, result: &Result<Value, ToolFailure>) -> ChatMessage {
    let content = match result {
        Ok(v) => v.to_string(),
        Err(e) => serde_json::json!({"error": e.code(), "message": e.to_string()}).to_string(),
    };
    ChatMessage {
        role: ChatRole::Tool,
        content,
        tool_calls: Vec::new(),
        tool_call_id: Some(call_id.to_string()),
    }
}

/// The tools offered to the LLM.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Vec<ToolSpec>")]
pub struct Specs;

/// Every registered tool.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Vec<ToolInfo>")]
pub struct ListTools;

/// Tell running calls to stop (barge-in, Ctrl-C): the call with this id, or every call of
/// this session, or (neither given) every call. A tool that can stop does (the shell
/// kills its process group) and answers what it had.
#[derive(Message, Debug, Clone, Default)]
#[rtype(result = "usize")]
pub struct Cancel {
    pub call_id: Option<String>,
    pub session_id: Option<String>,
}

struct Running {
    session_id: Option<String>,
    cancelled: Arc<AtomicBool>,
}

pub struct ToolsActor {
    registry: Arc<ToolRegistry>,
    hub: Option<HubHandle>,
    calls: u64,
    /// The calls under way, by call id, for [`Cancel`].
    running: Arc<Mutex<HashMap<String, Running>>>,
    /// The kernel's restart budget and `component_status`, when run under it.
    sup: Option<Supervision>,
}

impl std::fmt::Debug for ToolsActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolsActor")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl ToolsActor {
    /// An actor over `registry`, publishing through `hub` when given.
    pub fn new(registry: ToolRegistry, hub: Option<HubHandle>) -> ToolsActor {
        ToolsActor::shared(Arc::new(registry), hub)
    }

    /// An actor over a registry others add to while it runs (the MCP servers' tools).
    pub fn shared(registry: Arc<ToolRegistry>, hub: Option<HubHandle>) -> ToolsActor {
        ToolsActor {
            registry,
            hub,
            calls: 0,
            running: Default::default(),
            sup: None,
        }
    }

    /// Runs the actor under `sup`: a panic in a handler restarts it against the restart
    /// budget; out of budget, calls get `unavailable` and no tools are offered. (A panic
    /// inside a tool is the tool's failure, `tool_error` `panicked`, not the actor's.)
    pub fn supervised(mut self, sup: Supervision) -> ToolsActor {
        self.sup = Some(sup);
        self
    }

    fn degraded(&self) -> Option<&Supervision> {
        self.sup.as_ref().filter(|s| s.is_degraded())
    }
}

impl Actor for ToolsActor {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        if let Some(s) = &mut self.sup {
            s.started();
        }
    }
}

impl Supervised for ToolsActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        if let Some(s) = &mut self.sup {
            s.restarting();
        }
    }
}

crate::impl_fault_injection!(ToolsActor, optional);

impl Handler<Call> for ToolsActor {
    type Result = ResponseFuture<Result<Value, ToolFailure>>;

    fn handle(&mut self, msg: Call, _: &mut Context<Self>) -> Self::Result {
        if let Some(s) = self.degraded() {
            let e = ToolFailure::Unavailable(s.unavailable());
            return Box::pin(async move { Err(e) });
        }
        self.calls += 1;
        let call_id = msg
            .call_id
            .clone()
            .unwrap_or_else(|| format!("k-{:04}", self.calls));
        let session = msg
            .session_id
            .clone()
            .unwrap_or_else(|| SYSTEM_SESSION.to_string());
        let registry = self.registry.clone();
        let hub = self.hub.clone();
        if let Some(hub) = &hub {
            hub.publish(
                &session,
                &ToolCallEvent {
                    turn_id: msg.turn_id.clone(),
                    call_id: call_id.clone(),
                    tool: msg.name.clone(),
                    arguments: msg.arguments.clone(),
                },
            );
        }
        let cancelled = Arc::new(AtomicBool::new(false));
        if let Ok(mut running) = self.running.lock() {
            running.insert(
                call_id.clone(),
                Running {
                    session_id: msg.session_id.clone(),
                    cancelled: cancelled.clone(),
                },
            );
        }
        let running = self.running.clone();
        let progress = hub.clone().map(|hub| {
            let (session, turn_id, call_id, tool) = (
                session.clone(),
                msg.turn_id.clone(),
                call_id.clone(),
                msg.name.clone(),
            );
            ProgressSink::new(move |stream, text| {
                hub.publish(
                    &session,
                    &ToolProgressEvent {
                        turn_id: turn_id.clone(),
                        call_id: call_id.clone(),
                        tool: tool.clone(),
                        stream: stream.to_string(),
                        text: text.to_string(),
                    },
                )
            })
        });
        Box::pin(async move {
            let started = Instant::now();
            let ctx = ToolContext {
                call_id: call_id.clone(),
                session_id: msg.session_id.clone(),
                turn_id: msg.turn_id.clone(),
                cancelled,
                progress,
            };
            let result = registry
                .call(&msg.name, msg.arguments.clone(), ctx, msg.confirmed)
                .await;
            if let Ok(mut running) = running.lock() {
                running.remove(&call_id);
            }
            if let Some(hub) = &hub {
                match &result {
                    Ok(value) => hub.publish(
                        &session,
                        &ToolResultEvent {
                            turn_id: msg.turn_id.clone(),
                            call_id,
                            tool: msg.name.clone(),
                            result: value.clone(),
                            duration_ms: started.elapsed().as_secs_f64() * 1e3,
                        },
                    ),
                    Err(e) => hub.publish(
                        &session,
                        &ToolErrorEvent {
                            turn_id: msg.turn_id.clone(),
                            call_id,
                            tool: msg.name.clone(),
                            code: e.code().to_string(),
                            message: e.to_string(),
                            level: e.level(),
                            preview: e.preview().cloned(),
                        },
                    ),
                }
            }
            result
        })
    }
}

impl Handler<Specs> for ToolsActor {
    type Result = MessageResult<Specs>;

    fn handle(&mut self, _: Specs, _: &mut Context<Self>) -> Self::Result {
        if self.degraded().is_some() {
            return MessageResult(Vec::new());
        }
        MessageResult(self.registry.specs())
    }
}

impl Handler<Cancel> for ToolsActor {
    type Result = usize;

    fn handle(&mut self, msg: Cancel, _: &mut Context<Self>) -> usize {
        let Ok(running) = self.running.lock() else {
            return 0;
        };
        let mut told = 0;
        for (id, call) in running.iter() {
            let hit = match (&msg.call_id, &msg.session_id) {
                (Some(c), _) => c == id,
                (None, Some(s)) => call.session_id.as_deref() == Some(s.as_str()),
                (None, None) => true,
            };
            if hit {
                call.cancelled.store(true, Ordering::Relaxed);
                told += 1;
            }
        }
        told
    }
}

impl Handler<ListTools> for ToolsActor {
    type Result = MessageResult<ListTools>;

    fn handle(&mut self, _: ListTools, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.registry.list())
    }
}

#[cfg(test)]
mod tests;
