//! Memory: owns conversations (sessions of messages with metadata) and long-term memories
//! (text, tags, source turn, time) on the store, their search index, and each turn's LLM
//! context.
//!
//! # Messages
//!
//! | message | answer | events |
//! |---|---|---|
//! | [`Store`] | `Result<MemoryItem, MemoryFailure>` | `memory_store` |
//! | [`Forget`] | `Result<bool, MemoryFailure>` (false: no such memory) | — |
//! | [`Search`] | `Result<MemoryItems, MemoryFailure>`, best first | `memory_retrieve` when it has a `session_id` |
//! | [`List`] | `Result<MemoryItems, MemoryFailure>`, newest first | — |
//! | [`AppendMessage`] | `Result<AppendedMessage, MemoryFailure>` | — |
//! | [`BuildContext`] | `Result<TurnContext, MemoryFailure>` (`.messages: Vec<ChatMessage>`) | `memory_retrieve` |
//! | [`History`] | `Result<Vec<MessageRecord>, MemoryFailure>` | — |
//! | [`Sessions`] | `Result<Vec<SessionMeta>, MemoryFailure>` | — |
//! | [`ForgetSession`] | `Result<Option<u64>, MemoryFailure>` | — |
//! | [`Stats`] | `MemoryStats` | — |
//!
//! Every failure is also published as `memory_error` (except "not found", and invalid
//! requests that belong to no turn: their sender gets the error).
//!
//! The WebSocket commands `memory_search` / `memory_list` map to
//! [`Search::from_query`] / [`List::from_query`]; the answer's `MemoryItems` is the
//! `command_result` data, and [`MemoryFailure::code`] says which `command_error` to send.
//!
//! # Threads
//!
//! The actor never touches the disk on its event loop. Writes go, in arrival order, to one
//! writer thread (`coda-memory-writer`) that group-commits whatever is queued: one sled
//! flush for the batch, then every caller in it is answered. So an acknowledged write is on
//! disk, messages of a session keep the order they were sent in, and a burst of writes
//! costs one fsync, not one each. Reads (search, list, context) run on the blocking pool
//! (`tokio::task::spawn_blocking`) against the in-memory index and the session cache, so
//! they never wait behind a flush. A panic in either is caught and answered as
//! [`MemoryFailure::Unavailable`]; the actor keeps serving. The actor is `Supervised`: its
//! state lives in the shared [`MemoryEngine`] and the writer, so a restart loses nothing.
//!
//! # Storage
//!
//! Trees and record layouts: [`records`]. Saved terminal chats: [`chat_sessions`].

pub mod chat_sessions;
pub mod context;
pub mod engine;
pub mod index;
pub mod records;

pub use chat_sessions::{ChatExportFormat, ChatSessionInfo, ChatSessionStore, SavedChat};
pub use context::{estimate_tokens, TurnContext};
pub use engine::{
    parse_memory_id, ConversationExport, MemoryEngine, MemoryExport, MemoryFailure, MemorySettings,
    NewMemory, NewMessage, WriteJob, WriteOutcome,
};
pub use records::{MemoryId, MemoryRecord, MessageRecord, SessionMeta};

use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use coda_protocol::{
    MemoryError as MemoryErrorEvent, MemoryItem, MemoryItems, MemoryQuery, MemoryRetrieve,
    MemoryStore as MemoryStoreEvent, SYSTEM_SESSION,
};
use tokio::sync::oneshot;

use crate::hub::HubHandle;
use crate::llm::{ChatRole, ToolCallRequest};
use crate::supervise::Supervision;

/// Most jobs committed with one flush.
const MAX_GROUP: usize = 256;
/// Writes waiting for the writer thread at most; beyond it a write is refused at once
/// (`unavailable`) instead of queueing without bound behind a slow disk.
const MAX_QUEUED_WRITES: usize = 4096;

// ---------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------

/// Store a long-term memory.
#[derive(Message, Debug, Clone, Default)]
#[rtype(result = "Result<MemoryItem, MemoryFailure>")]
pub struct Store {
    /// What to remember.
    pub content: String,
    /// Labels.
    pub tags: Vec<String>,
    /// The conversation it came from (the `memory_store` event goes to it).
    pub session_id: Option<String>,
    /// The turn it came from.
    pub turn_id: Option<String>,
    /// Who stores it (`user`, `tool`, `cli`, ...).
    pub source: String,
    pub importance: Option<f64>,
}

/// Delete a memory by id (`m-...`).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<bool, MemoryFailure>")]
pub struct Forget {
    /// The memory id as shown to users.
    pub memory_id: String,
}

/// Ranked search over memories.
#[derive(Message, Debug, Clone, Default)]
#[rtype(result = "Result<MemoryItems, MemoryFailure>")]
pub struct Search {
    /// Search text.
    pub query: String,
    /// Most results (`None`: `memory.default_limit`).
    pub limit: Option<usize>,
    /// The conversation searching (then `memory_retrieve` is published to it).
    pub session_id: Option<String>,
    /// The turn searching.
    pub turn_id: Option<String>,
}

impl Search {
    /// The `memory_search` WebSocket command (publishes nothing: the client gets the answer).
    pub fn from_query(q: &MemoryQuery) -> Search {
        Search {
            query: q.query.clone().unwrap_or_default(),
            limit: q.limit.map(|l| l as usize),
            session_id: None,
            turn_id: None,
        }
    }
}

/// Memories, newest first.
#[derive(Message, Debug, Clone, Default)]
#[rtype(result = "Result<MemoryItems, MemoryFailure>")]
pub struct List {
    /// Most results (`None`: `memory.default_limit`).
    pub limit: Option<usize>,
    /// Skip this many newest ones first.
    pub offset: usize,
}

impl List {
    /// The `memory_list` WebSocket command.
    pub fn from_query(q: &MemoryQuery) -> List {
        List {
            limit: q.limit.map(|l| l as usize),
            offset: 0,
        }
    }
}

/// Append one message to a conversation session (created on first use).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<AppendedMessage, MemoryFailure>")]
pub struct AppendMessage {
    pub session_id: String,
    /// Who said it.
    pub role: ChatRole,
    /// The text.
    pub content: String,
    pub turn_id: Option<String>,
    /// Tool calls (assistant messages).
    pub tool_calls: Vec<ToolCallRequest>,
    /// The call answered (tool messages).
    pub tool_call_id: Option<String>,
    /// Anything else worth keeping (model, latency, input source...).
    pub metadata: serde_json::Value,
}

impl AppendMessage {
    /// A plain text message.
    pub fn text(
        session_id: impl Into<String>,
        role: ChatRole,
        content: impl Into<String>,
        turn_id: Option<String>,
    ) -> AppendMessage {
        AppendMessage {
            session_id: session_id.into(),
            role,
            content: content.into(),
            turn_id,
            tool_calls: Vec::new(),
            tool_call_id: None,
            metadata: serde_json::Value::Null,
        }
    }
}

/// An appended message's identity.
#[derive(Debug, Clone, PartialEq)]
pub struct AppendedMessage {
    /// `<session>#<seq>` (the `message_id` of `conversation_message`).
    pub message_id: String,
    /// Position in the session, from 1.
    pub seq: u64,
    /// When it was stored, unix seconds.
    pub created_at: f64,
}

/// The LLM's context for a turn: relevant memories, summary of older turns, recent turns,
/// then `user_text` — within `token_budget` estimated tokens.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<TurnContext, MemoryFailure>")]
pub struct BuildContext {
    pub session_id: String,
    /// What the user just said.
    pub user_text: String,
    /// Budget in estimated tokens (`None`: `memory.context_token_budget`). Leave room for
    /// the system prompt and the answer.
    pub token_budget: Option<usize>,
    /// The turn (for `memory_retrieve`).
    pub turn_id: Option<String>,
}

/// The last messages of a session, oldest first.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<Vec<MessageRecord>, MemoryFailure>")]
pub struct History {
    pub session_id: String,
    /// Most messages.
    pub limit: usize,
}

/// Every session, most recently updated first.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<Vec<SessionMeta>, MemoryFailure>")]
pub struct Sessions;

/// Delete a session and its messages (`None`: no such session, else how many messages).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<Option<u64>, MemoryFailure>")]
pub struct ForgetSession {
    pub session_id: String,
}

/// Counts.
#[derive(Message, Debug, Clone)]
#[rtype(result = "MemoryStats")]
pub struct Stats;

/// The answer to [`Stats`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MemoryStats {
    /// Live long-term memories.
    pub memories: usize,
    /// Memory records skipped at start as unreadable.
    pub skipped_records: usize,
}

// ---------------------------------------------------------------------------------------
// The writer thread
// ---------------------------------------------------------------------------------------

struct PendingWrite {
    job: WriteJob,
    reply: oneshot::Sender<Result<WriteOutcome, MemoryFailure>>,
}

/// The queue to the writer thread. The thread ends when every handle is dropped.
#[derive(Clone)]
struct Writer {
    tx: mpsc::SyncSender<PendingWrite>,
    counters: Option<Arc<crate::hub::HubCounters>>,
}

impl Writer {
    fn spawn(
        engine: Arc<MemoryEngine>,
        counters: Option<Arc<crate::hub::HubCounters>>,
    ) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::sync_channel::<PendingWrite>(MAX_QUEUED_WRITES);
        std::thread::Builder::new()
            .name("coda-memory-writer".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_GROUP {
                        match rx.try_recv() {
                            Ok(p) => batch.push(p),
                            Err(_) => break,
                        }
                    }
                    let (jobs, replies): (Vec<WriteJob>, Vec<_>) =
                        batch.into_iter().map(|p| (p.job, p.reply)).unzip();
                    let n = jobs.len();
                    let results = panic::catch_unwind(AssertUnwindSafe(|| engine.commit(jobs)))
                        .unwrap_or_else(|_| {
                            tracing::error!(
                                "memory writer panicked; the group was not acknowledged"
                            );
                            vec![
                                Err(MemoryFailure::Unavailable(
                                    "the memory writer failed on this write".into()
                                ));
                                n
                            ]
                        });
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(result);
                    }
                }
            })?;
        Ok(Writer { tx, counters })
    }

    /// Queues a write without waiting: a full queue is a refusal.
    fn enqueue(&self, write: PendingWrite) -> Result<(), MemoryFailure> {
        self.tx.try_send(write).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => {
                if let Some(c) = &self.counters {
                    c.refused(crate::hub::Refusal::MemoryWrite);
                }
                MemoryFailure::Unavailable(format!(
                    "{MAX_QUEUED_WRITES} memory writes are already waiting for the disk; try again"
                ))
            }
            mpsc::TrySendError::Disconnected(_) => {
                MemoryFailure::Unavailable("the memory writer has stopped".into())
            }
        })
    }

    async fn submit(&self, job: WriteJob) -> Result<WriteOutcome, MemoryFailure> {
        let (reply, rx) = oneshot::channel();
        self.enqueue(PendingWrite { job, reply })?;
        rx.await
            .map_err(|_| MemoryFailure::Unavailable("the memory writer has stopped".into()))?
    }
}

// ---------------------------------------------------------------------------------------
// The actor
// ---------------------------------------------------------------------------------------

pub struct MemoryActor {
    engine: Arc<MemoryEngine>,
    writer: Writer,
    hub: Option<HubHandle>,
    /// The kernel's restart budget and `component_status`, when run under it (`coda
    /// serve`); the CLI and benchmarks run the actor on its own.
    sup: Option<Supervision>,
}

impl std::fmt::Debug for MemoryActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryActor")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

impl MemoryActor {
    /// An actor over `engine`, publishing through `hub` when given. Starts the writer
    /// thread (the only error is the OS refusing a thread).
    pub fn new(engine: Arc<MemoryEngine>, hub: Option<HubHandle>) -> std::io::Result<MemoryActor> {
        let writer = Writer::spawn(engine.clone(), hub.as_ref().map(|h| h.counters().clone()))?;
        Ok(MemoryActor {
            engine,
            writer,
            hub,
            sup: None,
        })
    }

    /// Runs the actor under `sup`: a panic in a handler or in the read it started restarts
    /// it against the restart budget; out of budget, every request gets `unavailable`.
    pub fn supervised(mut self, sup: Supervision) -> MemoryActor {
        self.sup = Some(sup);
        self
    }

    /// `Some(error)` while degraded: the answer every request gets.
    fn refused(&self) -> Option<MemoryFailure> {
        self.sup
            .as_ref()
            .filter(|s| s.is_degraded())
            .map(|s| MemoryFailure::Unavailable(s.unavailable()))
    }

    /// The engine (shared; for direct synchronous use).
    pub fn engine(&self) -> &Arc<MemoryEngine> {
        &self.engine
    }
}

impl Actor for MemoryActor {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        if let Some(s) = &mut self.sup {
            s.started();
        }
    }
}

impl Supervised for MemoryActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        tracing::warn!("memory actor restarting (engine and writer kept)");
        if let Some(s) = &mut self.sup {
            s.restarting();
        }
    }
}

crate::impl_fault_injection!(MemoryActor, optional);

/// A read on the blocking pool panicked: the actor restarts (under supervision) so the
/// crash counts against its budget like a handler panic.
#[derive(Message)]
#[rtype(result = "()")]
struct ReadPanicked(String);

impl Handler<ReadPanicked> for MemoryActor {
    type Result = ();

    fn handle(&mut self, msg: ReadPanicked, ctx: &mut Context<Self>) {
        if let Some(s) = &mut self.sup {
            s.crashed(&msg.0);
            ctx.stop();
        }
    }
}

/// Runs `f(engine)` on the blocking pool; a panic becomes `Unavailable` and is reported
/// to the actor at `me`.
async fn blocking<T, F>(
    engine: &Arc<MemoryEngine>,
    me: Addr<MemoryActor>,
    f: F,
) -> Result<T, MemoryFailure>
where
    T: Send + 'static,
    F: FnOnce(&MemoryEngine) -> Result<T, MemoryFailure> + Send + 'static,
{
    let engine = engine.clone();
    match tokio::task::spawn_blocking(move || f(&engine)).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => {
            let what = crate::supervise::panic_message(e.into_panic().as_ref());
            tracing::error!(panic = %what, "a memory read panicked");
            me.do_send(ReadPanicked(what));
            Err(MemoryFailure::Unavailable(
                "the memory read failed unexpectedly (panic; logged)".into(),
            ))
        }
        Err(_) => Err(MemoryFailure::Unavailable(
            "the memory read was cancelled".into(),
        )),
    }
}

/// Publishes a failure as `memory_error` (see the module docs for which).
fn report(
    hub: &Option<HubHandle>,
    session: Option<&str>,
    turn_id: Option<String>,
    e: &MemoryFailure,
) {
    let Some(hub) = hub else { return };
    let worth = match e {
        MemoryFailure::NotFound(_) => false,
        MemoryFailure::Invalid(_) => turn_id.is_some(),
        _ => true,
    };
    if worth {
        hub.publish(
            session.unwrap_or(SYSTEM_SESSION),
            &MemoryErrorEvent {
                turn_id,
                code: e.code().to_string(),
                message: e.to_string(),
                level: e.level(),
            },
        );
    }
}

fn limit_or(limit: Option<usize>, default: usize) -> Result<usize, MemoryFailure> {
    match limit {
        Some(0) => Err(MemoryFailure::Invalid("`limit` must be at least 1".into())),
        Some(l) => Ok(l.min(coda_protocol::MAX_MEMORY_LIMIT as usize)),
        None => Ok(default),
    }
}

impl Handler<Store> for MemoryActor {
    type Result = ResponseFuture<Result<MemoryItem, MemoryFailure>>;

    fn handle(&mut self, msg: Store, _: &mut Context<Self>) -> Self::Result {
        if let Some(e) = self.refused() {
            return Box::pin(async move { Err(e) });
        }
        let writer = self.writer.clone();
        let hub = self.hub.clone();
        Box::pin(async move {
            let session = msg.session_id.clone();
            let turn_id = msg.turn_id.clone();
            let job = WriteJob::Store(NewMemory {
                content: msg.content,
                tags: msg.tags,
                session_id: msg.session_id,
                turn_id: msg.turn_id,
                source: msg.source,
                importance: msg.importance,
            });
            match writer.submit(job).await {
                Ok(WriteOutcome::Stored(r)) => {
                    if let Some(hub) = &hub {
                        hub.publish(
                            session.as_deref().unwrap_or(SYSTEM_SESSION),
                            &MemoryStoreEvent {
                                turn_id: r.turn_id.clone(),
                                memory_id: r.memory_id(),
                                content: r.content.clone(),
                                tags: r.tags.clone(),
                                importance: r.importance,
                            },
                        );
                    }
                    Ok(r.to_item(None))
                }
                Ok(other) => Err(engine_unexpected(other)),
                Err(e) => {
                    report(&hub, session.as_deref(), turn_id, &e);
                    Err(e)
                }
            }
        })
    }
}

fn engine_unexpected(o: WriteOutcome) -> MemoryFailure {
    MemoryFailure::Unavailable(format!("unexpected write outcome {o:?}"))
}

impl Handler<Forget> for MemoryActor {
    type Result = ResponseFuture<Result<bool, MemoryFailure>>;

    fn handle(&mut self, msg: Forget, _: &mut Context<Self>) -> Self::Result {
        if let Some(e) = self.refused() {
            return Box::pin(async move { Err(e) });
        }
        let writer = self.writer.clone();
        let hub = self.hub.clone();
        Box::pin(async move {
            let id = parse_memory_id(&msg.memory_id)?;
            match writer.submit(WriteJob::Forget(id)).await {
                Ok(WriteOutcome::Forgotten(r)) => Ok(r.is_some()),
                Ok(other) => Err(engine_unexpected(other)),
                Err(e) => {
                    report(&hub, None, None, &e);
                    Err(e)
                }
            }
        })
    }
}

impl Handler<Search> for MemoryActor {
    type Result = ResponseFuture<Result<MemoryItems, MemoryFailure>>;

    fn handle(&mut self, msg: Search, ctx: &mut Context<Self>) -> Self::Result {
        if let Some(e) = self.refused() {
            return Box::pin(async move { Err(e) });
        }
        let me = ctx.address();
        let engine = self.engine.clone();
        let hub = self.hub.clone();
        Box::pin(async move {
            let limit = limit_or(msg.limit, engine.settings().default_limit)?;
            let started = Instant::now();
            let query = msg.query.clone();
            let result = blocking(&engine, me, move |e| {
                Ok(e.search(&query, limit)
                    .into_iter()
                    .map(|h| h.record.to_item(Some(h.score)))
                    .collect::<Vec<_>>())
            })
            .await;
            match result {
                Ok(items) => {
                    if let (Some(hub), Some(session)) = (&hub, &msg.session_id) {
                        hub.publish(
                            session,
                            &MemoryRetrieve {
                                turn_id: msg.turn_id.clone(),
                                query: msg.query,
                                results: items.clone(),
                                duration_ms: started.elapsed().as_secs_f64() * 1e3,
                            },
                        );
                    }
                    Ok(MemoryItems { items })
                }
                Err(e) => {
                    report(&hub, msg.session_id.as_deref(), msg.turn_id, &e);
                    Err(e)
                }
            }
        })
    }
}

impl Handler<List> for MemoryActor {
    type Result = ResponseFuture<Result<MemoryItems, MemoryFailure>>;

    fn handle(&mut self, msg: List, ctx: &mut Context<Self>) -> Self::Result {
        if let Some(e) = self.refused() {
            return Box::pin(async move { Err(e) });
        }
        let me = ctx.address();
        let engine = self.engine.clone();
        let hub = self.hub.clone();
        Box::pin(async move {
            let limit = limit_or(msg.limit, engine.settings().default_limit)?;
            let result = blocking(&engine, me, move |e| {
                Ok(e.list(msg.offset, limit)
                    .into_iter()
                    .map(|r| r.to_item(None))
                    .collect())
            })
            .await;
            result.map(|items| MemoryItems { items }).inspect_err(|e| {
                report(&hub, None, None, e);
            })
        })
    }
}

impl Handler<AppendMessage> for MemoryActor {
    type Result = ResponseFuture<Result<AppendedMessage, MemoryFailure>>;

    fn handle(&mut self, msg: AppendMessage, _: &mut Context<Self>) -> Self::Result {
        if let Some(e) = self.refused() {
            return Box::pin(async move { Err(e) });
        }
        // Submitted now, in the handler, so messages keep the order they were sent in.
        let (reply, rx) = oneshot::channel();
        let session = msg.session_id.clone();
        let turn_id = msg.turn_id.clone();
        let sent = self.writer.enqueue(PendingWrite {
            job: WriteJob::Append(NewMessage {
                session_id: msg.session_id,
                role: msg.role,
                content: msg.content,
                turn_id: msg.turn_id,
                tool_calls: msg.tool_calls,
                tool_call_id: msg.tool_call_id,
                metadata: msg.metadata,
            }),
            reply,
        });
        let hub = self.hub.clone();
        Box::pin(async move {
            let result = match sent {
                Err(e) => Err(e),
                Ok(()) => rx.await.unwrap_or_else(|_| {
                    Err(MemoryFailure::Unavailable(
                        "the memory writer has stopped".into(),
                    ))
                }),
            };
            match result {
                Ok(WriteOutcome::Appended(m)) => Ok(AppendedMessage {
                    message_id: m.message_id(&session),
                    seq: m.seq,
                    created_at: m.created_at,
                }),
                Ok(other) => Err(engine_unexpected(other)),
                Err(e) => {
                    report(&hub, Some(&session), turn_id, &e);
                    Err(e)
                }
            }
        })
    }
}

impl Handler<BuildContext> for MemoryActor {
    type Result = ResponseFuture<Result<TurnContext, MemoryFailure>>;

    fn handle(&mut self, msg: BuildContext, ctx: &mut Context<Self>) -> Self::Result {
        if let Some(e) = self.refused() {
            return Box::pin(async move { Err(e) });
        }
        let me = ctx.address();
        let engine = self.engine.clone();
        let hub = self.hub.clone();
        Box::pin(async move {
            let started = Instant::now();
            let (session, text, budget) = (
                msg.session_id.clone(),
                msg.user_text.clone(),
                msg.token_budget,
            );
            let result = blocking(&engine, me, move |e| {
                e.build_context(&session, &text, budget)
            })
            .await;
            match result {
                Ok(ctx) => {
                    if let Some(hub) = &hub {
                        hub.publish(
                            &msg.session_id,
                            &MemoryRetrieve {
                                turn_id: msg.turn_id,
                                query: msg.user_text,
                                results: ctx.memories.clone(),
                                duration_ms: started.elapsed().as_secs_f64() * 1e3,
                            },
                        );
                    }
                    Ok(ctx)
                }
                Err(e) => {
                    report(&hub, Some(&msg.session_id), msg.turn_id, &e);
                    Err(e)
                }
            }
        })
    }
}

impl Handler<History> for MemoryActor {
    type Result = ResponseFuture<Result<Vec<MessageRecord>, MemoryFailure>>;

    fn handle(&mut self, msg: History, ctx: &mut Context<Self>) -> Self::Result {
        if let Some(e) = self.refused() {
            return Box::pin(async move { Err(e) });
        }
        let me = ctx.address();
        let engine = self.engine.clone();
        Box::pin(async move {
            blocking(&engine, me, move |e| e.history(&msg.session_id, msg.limit)).await
        })
    }
}

impl Handler<Sessions> for MemoryActor {
    type Result = ResponseFuture<Result<Vec<SessionMeta>, MemoryFailure>>;

    fn handle(&mut self, _: Sessions, ctx: &mut Context<Self>) -> Self::Result {
        if let Some(e) = self.refused() {
            return Box::pin(async move { Err(e) });
        }
        let me = ctx.address();
        let engine = self.engine.clone();
        Box::pin(async move { blocking(&engine, me, |e| e.sessions()).await })
    }
}

impl Handler<ForgetSession> for MemoryActor {
    type Result = ResponseFuture<Result<Option<u64>, MemoryFailure>>;

    fn handle(&mut self, msg: ForgetSession, _: &mut Context<Self>) -> Self::Result {
        if let Some(e) = self.refused() {
            return Box::pin(async move { Err(e) });
        }
        let writer = self.writer.clone();
        let hub = self.hub.clone();
        Box::pin(async move {
            match writer
                .submit(WriteJob::ForgetSession(msg.session_id.clone()))
                .await
            {
                Ok(WriteOutcome::SessionForgotten(n)) => Ok(n),
                Ok(other) => Err(engine_unexpected(other)),
                Err(e) => {
                    report(&hub, None, None, &e);
                    Err(e)
                }
            }
        })
    }
}

impl Handler<Stats> for MemoryActor {
    type Result = MessageResult<Stats>;

    fn handle(&mut self, _: Stats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(MemoryStats {
            memories: self.engine.memory_count(),
            skipped_records: self.engine.skipped_records(),
        })
    }
}

#[cfg(test)]
mod tests;
