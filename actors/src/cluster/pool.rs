//! The LLM pool: cores that answer each other's language-model requests, so a slow model
//! on one core does not hold up another's turns.
//!
//! - A **member** (`cluster.llm_pool = true`) takes chat requests on [`CHAT_SUBJECT`] in
//!   queue group [`GROUP`] (NATS hands each request to one member) and answers with its
//!   own provider chain. While it runs `capacity` requests it leaves the queue group, so
//!   NATS gives requests only to members with room; it joins again when one ends.
//!   Requests that were already on their way when it left are answered `busy`.
//! - A **requester** (`llm.provider = "pool"`, [`PoolProvider`]) sends the request with a
//!   fresh inbox as its reply subject and reads the answer there: `accepted` (which
//!   member), `started` (its provider and model), then the pieces, then `done` or
//!   `error` (the [`LlmError`] kind and text, rebuilt as the same variant). Every reply
//!   is numbered, so a lost piece is an error rather than a silently shorter answer.
//!   "No responders" (every member busy, or none) and `busy` are asked again, with a
//!   short backoff, for up to [`PoolSettings::wait`].
//! - Both sides say they are alive every [`HEARTBEAT`] while an answer runs (the
//!   requester on `coda-pool.ctl.<id>`): a requester that goes away (turn interrupted,
//!   process killed) stops the member's generation, and a member that goes silent (killed
//!   mid-answer) fails the turn with its name instead of hanging it.
//!
//! Subjects are under `coda-pool.`, outside the event stream's `coda.*.*`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::{Client, Message, StatusCode, Subscriber};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, OnceCell};

use super::{valid_token, Cluster};
use crate::llm::{
    ChatRequest, ChatStream, FinishReason, Health, LlmError, LlmProvider, ModelInfo, Served,
    StreamChunk, ToolCallRequest, Usage,
};

/// Chat requests.
pub const CHAT_SUBJECT: &str = "coda-pool.llm.chat";
/// Health and model questions (members stay on it while busy).
pub const INFO_SUBJECT: &str = "coda-pool.llm.info";
/// The members' queue group.
pub const GROUP: &str = "coda-pool";
/// How often each side of a running answer says it is still there.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A member's patience with a requester that says nothing.
const REQUESTER_SILENCE: Duration = Duration::from_secs(5);
/// The wire's version; a member refuses others.
const WIRE_VERSION: u32 = 1;
/// A member's limit on a health or model question: under NATS's request timeout (10 s),
/// so the asker hears why.
const INFO_WITHIN: Duration = Duration::from_secs(8);
/// The longest pause between two asks while every member is busy.
const MAX_PAUSE: Duration = Duration::from_millis(250);

fn control_subject(id: &str) -> String {
    format!("coda-pool.ctl.{id}")
}

// ---------------------------------------------------------------------------------------
// The wire
// ---------------------------------------------------------------------------------------

/// A chat request to the pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolRequest {
    /// [`WIRE_VERSION`].
    pub v: u32,
    /// Names the request's control subject (a subject token).
    pub id: String,
    /// The asking node (for logs).
    pub from: String,
    pub request: ChatRequest,
}

/// An [`LlmError`] on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireError {
    /// [`LlmError::code`].
    pub code: String,
    /// [`LlmError::detail`].
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl WireError {
    pub fn of(e: &LlmError) -> WireError {
        WireError {
            code: e.code().to_string(),
            message: e.detail(),
            retry_after_ms: match e {
                LlmError::RateLimited { retry_after, .. } => {
                    retry_after.map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64)
                }
                _ => None,
            },
        }
    }

    /// The same error again, saying which member it came from.
    pub fn into_error(self, node: &str) -> LlmError {
        let detail = if node.is_empty() {
            self.message
        } else {
            format!("pool member {node}: {}", self.message)
        };
        LlmError::from_parts(
            &self.code,
            detail,
            self.retry_after_ms.map(Duration::from_millis),
        )
    }
}

/// What a member sends a requester.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
    /// The member took the request.
    Accepted {
        node: String,
    },
    /// The member has no room (the request reached it as it left the queue group).
    Busy {
        node: String,
    },
    /// The answer started: who gives it.
    Started {
        provider: String,
        model: String,
    },
    /// Still working.
    Alive,
    Token {
        text: String,
    },
    ToolCall {
        call: ToolCallRequest,
    },
    Done {
        finish_reason: FinishReason,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
    },
    Error(WireError),
}

/// A numbered [`Reply`]: 0 for `accepted`/`busy`, then 1, 2, … in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplyMsg {
    pub n: u64,
    #[serde(flatten)]
    pub reply: Reply,
}

/// What a requester sends the member on the request's control subject.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Control {
    Alive,
    Cancel,
}

/// A question on [`INFO_SUBJECT`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "ask", rename_all = "snake_case")]
pub enum InfoAsk {
    Health,
    Models,
    Model { id: String },
}

/// A member's answer on [`INFO_SUBJECT`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InfoReply {
    pub node: String,
    pub provider: String,
    #[serde(flatten)]
    pub answer: InfoAnswer,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum InfoAnswer {
    Health { health: Health },
    Models { models: Vec<ModelInfo> },
    Model { model: ModelInfo },
    Error(WireError),
}

/// A request's bytes; `Invalid` when they exceed `max_payload` (NATS's message limit).
pub fn encode_request(req: &PoolRequest, max_payload: usize) -> Result<Vec<u8>, LlmError> {
    let body = serde_json::to_vec(req)
        .map_err(|e| LlmError::Invalid(format!("the request cannot be encoded: {e}")))?;
    if body.len() > max_payload {
        return Err(LlmError::Invalid(format!(
            "the request is {} bytes; the LLM pool carries at most {max_payload} (the NATS server's max_payload): shorten the conversation",
            body.len()
        )));
    }
    Ok(body)
}

/// A request from its bytes: `Invalid`, saying why, when it is not one this member takes.
pub fn decode_request(bytes: &[u8]) -> Result<PoolRequest, LlmError> {
    let req: PoolRequest = serde_json::from_slice(bytes)
        .map_err(|e| LlmError::Invalid(format!("unreadable LLM pool request: {e}")))?;
    if req.v != WIRE_VERSION {
        return Err(LlmError::Invalid(format!(
            "LLM pool request of wire version {}; this member speaks {WIRE_VERSION}",
            req.v
        )));
    }
    if !valid_token(&req.id) {
        return Err(LlmError::Invalid(
            "LLM pool request id must be 1–64 letters, digits, `-` or `_`".into(),
        ));
    }
    Ok(req)
}

pub fn encode_reply(n: u64, reply: Reply) -> Vec<u8> {
    // Plain data (strings, numbers, maps of JSON values): encoding cannot fail.
    serde_json::to_vec(&ReplyMsg { n, reply }).unwrap_or_default()
}

/// A reply from its bytes; `BadResponse` when it is not one.
pub fn decode_reply(bytes: &[u8]) -> Result<ReplyMsg, LlmError> {
    serde_json::from_slice(bytes).map_err(|e| {
        LlmError::BadResponse(format!(
            "unreadable LLM pool message ({e}): {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(120)])
        ))
    })
}

fn reply_of(chunk: StreamChunk) -> Reply {
    match chunk {
        StreamChunk::Token(text) => Reply::Token { text },
        StreamChunk::ToolCall(call) => Reply::ToolCall { call },
        StreamChunk::Done {
            finish_reason,
            usage,
        } => Reply::Done {
            finish_reason,
            usage,
        },
    }
}

// ---------------------------------------------------------------------------------------
// The member's side
// ---------------------------------------------------------------------------------------

/// Serves the LLM pool from this node: chat requests (at most `capacity` at once) and
/// info questions, answered by `provider`. Runs until the returned tasks are aborted.
pub fn serve(
    cluster: &Cluster,
    provider: Arc<dyn LlmProvider>,
    capacity: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    let client = cluster.client.clone();
    let node = cluster.settings.node.clone();
    tracing::info!(node = %node, capacity, "serving the LLM pool");
    vec![
        tokio::spawn(take_requests(
            client.clone(),
            node.clone(),
            provider.clone(),
            capacity.max(1),
        )),
        tokio::spawn(answer_info(client, node, provider)),
    ]
}

async fn next_of(sub: &mut Option<Subscriber>) -> Option<Message> {
    match sub {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// Takes chat requests while there is room; out of the queue group while there is none.
async fn take_requests(
    client: Client,
    node: String,
    provider: Arc<dyn LlmProvider>,
    capacity: usize,
) {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
    let mut running = 0usize;
    // In the queue group.
    let mut open: Option<Subscriber> = None;
    // Left, delivering what NATS had sent before it knew.
    let mut closing: Option<Subscriber> = None;
    loop {
        if open.is_none() && running < capacity {
            match client
                .queue_subscribe(CHAT_SUBJECT.to_string(), GROUP.to_string())
                .await
            {
                Ok(s) => {
                    tracing::debug!(running, "LLM pool: taking requests");
                    open = Some(s);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "LLM pool: cannot take requests; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        let request = tokio::select! {
            m = next_of(&mut open) => {
                if m.is_none() {
                    // The client is closing; do not spin on an ended subscription.
                    open = None;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                m
            }
            m = next_of(&mut closing) => {
                if m.is_none() {
                    closing = None;
                }
                m
            }
            Some(()) = done_rx.recv() => {
                running = running.saturating_sub(1);
                None
            }
        };
        let Some(m) = request else { continue };
        let Some(reply_to) = m.reply.clone() else {
            tracing::debug!("LLM pool: a request without a reply subject; ignored");
            continue;
        };
        if running >= capacity {
            let busy = encode_reply(0, Reply::Busy { node: node.clone() });
            let _ = client.publish(reply_to, busy.into()).await;
            continue;
        }
        running += 1;
        let (c, n, p, done) = (
            client.clone(),
            node.clone(),
            provider.clone(),
            done_tx.clone(),
        );
        tokio::spawn(async move {
            answer(c, n, p, reply_to, &m.payload).await;
            let _ = done.send(());
        });
        if running >= capacity {
            if let Some(mut s) = open.take() {
                // Drain, not unsubscribe: requests NATS sent before it saw us leave still
                // arrive, and are answered `busy` instead of lost.
                if let Err(e) = s.drain().await {
                    tracing::debug!(error = %e, "LLM pool: leaving the queue group failed");
                }
                tracing::debug!(running, "LLM pool: full; out of the queue group");
                closing = Some(s);
            }
        }
    }
}

/// Numbered replies to one requester.
struct Out {
    client: Client,
    to: async_nats::Subject,
    n: u64,
}

impl Out {
    async fn send(&mut self, reply: Reply) {
        let mut body = encode_reply(self.n, reply);
        if body.len() > self.client.max_payload() {
            let e = LlmError::BadResponse(format!(
                "a piece of the answer is {} bytes, more than NATS carries ({})",
                body.len(),
                self.client.max_payload()
            ));
            body = encode_reply(self.n, Reply::Error(WireError::of(&e)));
        }
        self.n += 1;
        if let Err(e) = self.client.publish(self.to.clone(), body.into()).await {
            tracing::debug!(error = %e, "LLM pool: reply not sent");
        }
    }
}

/// What the requester said last, or that it is gone.
enum Heard {
    Alive,
    Gone(&'static str),
}

fn heard(m: Option<Message>) -> Heard {
    match m.map(|m| serde_json::from_slice::<Control>(&m.payload)) {
        Some(Ok(Control::Alive)) | Some(Err(_)) => Heard::Alive,
        Some(Ok(Control::Cancel)) => Heard::Gone("cancelled"),
        None => Heard::Gone("connection closed"),
    }
}

/// Answers one chat request (`payload`) on `to`.
async fn answer(
    client: Client,
    node: String,
    provider: Arc<dyn LlmProvider>,
    to: async_nats::Subject,
    payload: &[u8],
) {
    let mut out = Out {
        client: client.clone(),
        to,
        n: 0,
    };
    let req = match decode_request(payload) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "LLM pool: request refused");
            out.send(Reply::Error(WireError::of(&e))).await;
            return;
        }
    };
    // Before `accepted`: the requester's first word on it may follow right after.
    let mut ctl = match client.subscribe(control_subject(&req.id)).await {
        Ok(s) => s,
        Err(e) => {
            let e = LlmError::Unavailable(format!("cannot follow the request: {e}"));
            out.send(Reply::Error(WireError::of(&e))).await;
            return;
        }
    };
    out.send(Reply::Accepted { node: node.clone() }).await;
    let (id, from) = (req.id.clone(), req.from.clone());
    tracing::debug!(%id, %from, "LLM pool: answering");
    let t0 = Instant::now();
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let opening = provider.chat_stream_served(req.request);
    tokio::pin!(opening);
    let served = loop {
        tokio::select! {
            r = &mut opening => break r,
            _ = beat.tick() => {
                if last_heard.elapsed() > REQUESTER_SILENCE {
                    tracing::info!(%id, %from, "LLM pool: the requester went silent; stopped");
                    return;
                }
                out.send(Reply::Alive).await;
            }
            m = ctl.next() => match heard(m) {
                Heard::Alive => last_heard = Instant::now(),
                Heard::Gone(why) => {
                    tracing::debug!(%id, why, "LLM pool: request ended by the requester");
                    return;
                }
            },
        }
    };
    let mut stream = match served {
        Ok(s) => {
            out.send(Reply::Started {
                provider: s.provider,
                model: s.model,
            })
            .await;
            s.stream
        }
        Err(e) => {
            out.send(Reply::Error(WireError::of(&e))).await;
            return;
        }
    };
    loop {
        tokio::select! {
            c = stream.next() => match c {
                Some(Ok(chunk)) => {
                    let end = matches!(chunk, StreamChunk::Done { .. });
                    out.send(reply_of(chunk)).await;
                    if end {
                        break;
                    }
                }
                Some(Err(e)) => {
                    out.send(Reply::Error(WireError::of(&e))).await;
                    break;
                }
                None => {
                    out.send(Reply::Done { finish_reason: FinishReason::Stop, usage: None }).await;
                    break;
                }
            },
            _ = beat.tick() => {
                if last_heard.elapsed() > REQUESTER_SILENCE {
                    tracing::info!(%id, %from, "LLM pool: the requester went silent; generation stopped");
                    return;
                }
                out.send(Reply::Alive).await;
            }
            m = ctl.next() => match heard(m) {
                Heard::Alive => last_heard = Instant::now(),
                Heard::Gone(why) => {
                    // Dropping the stream stops the provider (HTTP request closed).
                    tracing::debug!(%id, why, "LLM pool: generation stopped by the requester");
                    return;
                }
            },
        }
    }
    tracing::debug!(%id, %from, ms = t0.elapsed().as_millis() as u64, "LLM pool: answered");
}

/// Answers health and model questions (one at a time: they are rare and small).
async fn answer_info(client: Client, node: String, provider: Arc<dyn LlmProvider>) {
    let mut sub = loop {
        match client
            .queue_subscribe(INFO_SUBJECT.to_string(), GROUP.to_string())
            .await
        {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "LLM pool: cannot take questions; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    while let Some(m) = sub.next().await {
        let Some(to) = m.reply else { continue };
        let fail = |e: LlmError| InfoAnswer::Error(WireError::of(&e));
        let answer = match serde_json::from_slice::<InfoAsk>(&m.payload) {
            Err(e) => fail(LlmError::Invalid(format!(
                "unreadable LLM pool question: {e}"
            ))),
            Ok(ask) => {
                let work = async {
                    match ask {
                        InfoAsk::Health => provider
                            .health()
                            .await
                            .map_or_else(fail, |health| InfoAnswer::Health { health }),
                        InfoAsk::Models => provider
                            .list_models()
                            .await
                            .map_or_else(fail, |models| InfoAnswer::Models { models }),
                        InfoAsk::Model { id } => provider
                            .model_info(&id)
                            .await
                            .map_or_else(fail, |model| InfoAnswer::Model { model }),
                    }
                };
                tokio::time::timeout(INFO_WITHIN, work)
                    .await
                    .unwrap_or_else(|_| {
                        fail(LlmError::Timeout(format!(
                            "the provider did not answer within {} s",
                            INFO_WITHIN.as_secs()
                        )))
                    })
            }
        };
        let reply = InfoReply {
            node: node.clone(),
            provider: provider.name().to_string(),
            answer,
        };
        let body = serde_json::to_vec(&reply).unwrap_or_default();
        if let Err(e) = client.publish(to, body.into()).await {
            tracing::debug!(error = %e, "LLM pool: answer not sent");
        }
    }
}

// ---------------------------------------------------------------------------------------
// The requester's side
// ---------------------------------------------------------------------------------------

/// How a requester uses the pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSettings {
    /// How long a request waits for a free member (`cluster.llm_pool_wait_s`).
    pub wait: Duration,
    /// A member answers `accepted` at once; none within this, and the request is asked
    /// again (the member it went to is gone).
    pub accept_within: Duration,
    /// A member silent this long mid-answer is taken for gone (it sends a heartbeat
    /// every [`HEARTBEAT`]).
    pub silence: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            wait: Duration::from_secs(30),
            accept_within: Duration::from_secs(3),
            silence: Duration::from_secs(5),
        }
    }
}

/// The NATS connection a requester uses: the node's own, or one made on first use (the
/// CLI's commands).
#[derive(Clone)]
enum Conn {
    Ready(Client),
    Lazy {
        url: String,
        cell: Arc<OnceCell<Client>>,
    },
}

/// A requester's way to the pool: a connection, this node's name and the settings.
#[derive(Clone)]
pub struct PoolLink {
    conn: Conn,
    node: String,
    settings: PoolSettings,
}

impl std::fmt::Debug for PoolLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolLink")
            .field("node", &self.node)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

// Settings compare by what they say, not by the connection they hold.
impl PartialEq for PoolLink {
    fn eq(&self, other: &Self) -> bool {
        self.node == other.node && self.settings == other.settings
    }
}

impl PoolLink {
    /// Through the node's cluster connection.
    pub fn of(cluster: &Cluster, settings: PoolSettings) -> PoolLink {
        PoolLink {
            conn: Conn::Ready(cluster.client.clone()),
            node: cluster.settings.node.clone(),
            settings,
        }
    }

    /// Through a connection to `url` made on first use, as `node`.
    pub fn lazy(url: &str, node: &str, settings: PoolSettings) -> PoolLink {
        PoolLink {
            conn: Conn::Lazy {
                url: url.to_string(),
                cell: Arc::new(OnceCell::new()),
            },
            node: node.to_string(),
            settings,
        }
    }

    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    async fn client(&self) -> Result<Client, LlmError> {
        match &self.conn {
            Conn::Ready(c) => Ok(c.clone()),
            Conn::Lazy { url, cell } => cell
                .get_or_try_init(|| async {
                    async_nats::ConnectOptions::new()
                        .name(format!("coda/{}", self.node))
                        .connection_timeout(Duration::from_secs(5))
                        .connect(url.as_str())
                        .await
                        .map_err(|e| {
                            LlmError::Unavailable(format!(
                                "cannot reach the LLM pool's NATS server at {url}: {e}"
                            ))
                        })
                })
                .await
                .cloned(),
        }
    }
}

/// The `pool` provider: each request goes to a free core of the pool.
pub struct PoolProvider {
    link: PoolLink,
    /// The model the last answer came from (what `default_model` says).
    last_model: Mutex<Option<String>>,
}

impl std::fmt::Debug for PoolProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolProvider")
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

fn nats_down(e: impl std::fmt::Display) -> LlmError {
    LlmError::Unavailable(format!("the LLM pool's NATS connection failed: {e}"))
}

impl PoolProvider {
    pub fn new(link: PoolLink) -> PoolProvider {
        PoolProvider {
            link,
            last_model: Mutex::new(None),
        }
    }

    /// Sends the request until a member accepts it (or the wait is over); then follows
    /// that member's answer.
    async fn open(&self, request: ChatRequest) -> Result<Served, LlmError> {
        let client = self.link.client().await?;
        let s = &self.link.settings;
        let started = Instant::now();
        // Short at first: a member that just finished an answer is back in the queue
        // group within a millisecond or two.
        let mut pause = Duration::from_millis(2);
        let mut req = PoolRequest {
            v: WIRE_VERSION,
            id: String::new(),
            from: self.link.node.clone(),
            request,
        };
        loop {
            // A fresh id each time: a member that accepted an earlier ask late stops for
            // want of heartbeats.
            req.id = uuid::Uuid::new_v4().simple().to_string();
            let body = encode_request(&req, client.max_payload())?;
            let inbox = client.new_inbox();
            let mut sub = client.subscribe(inbox.clone()).await.map_err(nats_down)?;
            client
                .publish_with_reply(CHAT_SUBJECT.to_string(), inbox, body.into())
                .await
                .map_err(nats_down)?;
            match tokio::time::timeout(s.accept_within, sub.next()).await {
                Ok(Some(m)) if m.status == Some(StatusCode::NO_RESPONDERS) => {}
                Ok(Some(m)) => match decode_reply(&m.payload)?.reply {
                    Reply::Accepted { node } => {
                        return self.follow(client, sub, req.id, node).await
                    }
                    Reply::Busy { node } => tracing::debug!(%node, "LLM pool: member busy"),
                    Reply::Error(w) => return Err(w.into_error("")),
                    other => {
                        return Err(LlmError::BadResponse(format!(
                            "LLM pool: `{other:?}` before the request was accepted"
                        )))
                    }
                },
                Ok(None) => return Err(nats_down("the connection closed")),
                Err(_) => {
                    tracing::warn!(
                        after_s = s.accept_within.as_secs_f64(),
                        "LLM pool: no member accepted the request; asking again"
                    );
                    let _ = client
                        .publish(control_subject(&req.id), control(Control::Cancel))
                        .await;
                }
            }
            drop(sub);
            if started.elapsed() + pause > s.wait {
                return Err(self.none_free(&client, started.elapsed()).await);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    /// Why no member took the request: none serves the pool, or all were busy.
    async fn none_free(&self, client: &Client, waited: Duration) -> LlmError {
        let any = tokio::time::timeout(
            Duration::from_secs(1),
            client.request(INFO_SUBJECT.to_string(), Vec::new().into()),
        )
        .await;
        if let Ok(Err(e)) = &any {
            if e.kind() == async_nats::client::RequestErrorKind::NoResponders {
                return LlmError::Unavailable(format!(
                    "no core serves the LLM pool (nobody on {CHAT_SUBJECT}): set cluster.llm_pool = true on a node with its own provider"
                ));
            }
        }
        LlmError::Unavailable(format!(
            "no core in the LLM pool is free: every member stayed busy for {:.1} s (cluster.llm_pool_wait_s)",
            waited.as_secs_f64()
        ))
    }

    /// Reads member `node`'s answer to request `id` on `sub`, up to `started`.
    async fn follow(
        &self,
        client: Client,
        sub: Subscriber,
        id: String,
        node: String,
    ) -> Result<Served, LlmError> {
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(heartbeat(client, id, stopped));
        let mut watch = Watch {
            sub,
            n: 1,
            node,
            silence: self.link.settings.silence.max(HEARTBEAT * 2),
            _stop: stop,
        };
        let (provider, model) = match watch.next().await? {
            Reply::Started { provider, model } => (provider, model),
            Reply::Error(w) => return Err(w.into_error(&watch.node)),
            other => return Err(watch.unexpected(&other)),
        };
        tracing::debug!(node = %watch.node, %provider, %model, "LLM pool: answer started");
        *self.last_model.lock().unwrap_or_else(|p| p.into_inner()) = Some(model.clone());
        let by = format!("pool:{}", watch.node);
        let stream = futures_util::stream::unfold(Some(watch), |state| async move {
            let mut w = state?;
            Some(match w.next().await {
                Ok(Reply::Token { text }) => (Ok(StreamChunk::Token(text)), Some(w)),
                Ok(Reply::ToolCall { call }) => (Ok(StreamChunk::ToolCall(call)), Some(w)),
                Ok(Reply::Done {
                    finish_reason,
                    usage,
                }) => (
                    Ok(StreamChunk::Done {
                        finish_reason,
                        usage,
                    }),
                    None,
                ),
                Ok(Reply::Error(e)) => (Err(e.into_error(&w.node)), None),
                Ok(other) => (Err(w.unexpected(&other)), None),
                Err(e) => (Err(e), None),
            })
        });
        Ok(Served {
            stream: Box::pin(stream),
            provider: by,
            model,
        })
    }

    /// One question to whichever member takes it.
    async fn ask(&self, ask: InfoAsk) -> Result<(String, String, InfoAnswer), LlmError> {
        let client = self.link.client().await?;
        let body = serde_json::to_vec(&ask).unwrap_or_default();
        let reply = client
            .request(INFO_SUBJECT.to_string(), body.into())
            .await
            .map_err(|e| match e.kind() {
                async_nats::client::RequestErrorKind::NoResponders => LlmError::Unavailable(format!(
                    "no core serves the LLM pool (nobody on {INFO_SUBJECT}): set cluster.llm_pool = true on a node with its own provider"
                )),
                async_nats::client::RequestErrorKind::TimedOut => {
                    LlmError::Timeout("the LLM pool member did not answer the question in time".into())
                }
                _ => nats_down(e),
            })?;
        let r: InfoReply = serde_json::from_slice(&reply.payload)
            .map_err(|e| LlmError::BadResponse(format!("unreadable LLM pool answer: {e}")))?;
        match r.answer {
            InfoAnswer::Error(w) => Err(w.into_error(&r.node)),
            a => Ok((r.node, r.provider, a)),
        }
    }
}

fn control(c: Control) -> bytes::Bytes {
    serde_json::to_vec(&c).unwrap_or_default().into()
}

/// Tells the member of request `id` that the requester is there, until `stopped` ends
/// (the answer is over, or its stream was dropped); then tells it to stop.
async fn heartbeat(client: Client, id: String, mut stopped: oneshot::Receiver<()>) {
    let subject = control_subject(&id);
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = beat.tick() => {
                let _ = client.publish(subject.clone(), control(Control::Alive)).await;
            }
            _ = &mut stopped => {
                // After a finished answer the member has gone: this reaches no one.
                let _ = client.publish(subject, control(Control::Cancel)).await;
                return;
            }
        }
    }
}

/// One member's answer as it arrives.
struct Watch {
    sub: Subscriber,
    /// The number the next reply must have.
    n: u64,
    node: String,
    silence: Duration,
    /// Dropped with the answer: the heartbeat then says `cancel`.
    _stop: oneshot::Sender<()>,
}

impl Watch {
    /// The next reply that is not a heartbeat.
    async fn next(&mut self) -> Result<Reply, LlmError> {
        loop {
            let m = match tokio::time::timeout(self.silence, self.sub.next()).await {
                Err(_) => {
                    return Err(LlmError::Timeout(format!(
                        "pool member {} went silent for {:.0} s mid-answer (stopped, or cut off from NATS)",
                        self.node,
                        self.silence.as_secs_f64()
                    )))
                }
                Ok(None) => return Err(nats_down("the connection closed mid-answer")),
                Ok(Some(m)) => m,
            };
            if m.status.is_some() {
                continue;
            }
            let msg = decode_reply(&m.payload).map_err(|e| {
                LlmError::BadResponse(format!("pool member {}: {}", self.node, e.detail()))
            })?;
            if msg.n != self.n {
                return Err(LlmError::BadResponse(format!(
                    "pool member {}: piece {} of the answer came where {} was due (pieces lost on the way)",
                    self.node, msg.n, self.n
                )));
            }
            self.n += 1;
            if msg.reply != Reply::Alive {
                return Ok(msg.reply);
            }
        }
    }

    fn unexpected(&self, r: &Reply) -> LlmError {
        LlmError::BadResponse(format!(
            "pool member {}: `{r:?}` out of place in an answer",
            self.node
        ))
    }
}

#[async_trait::async_trait]
impl LlmProvider for PoolProvider {
    fn name(&self) -> &str {
        "pool"
    }

    fn default_model(&self) -> String {
        self.last_model
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "default".into())
    }

    async fn chat_stream(&self, req: ChatRequest) -> Result<ChatStream, LlmError> {
        Ok(self.open(req).await?.stream)
    }

    async fn chat_stream_served(&self, req: ChatRequest) -> Result<Served, LlmError> {
        self.open(req).await
    }

    async fn list_models(&self) -> Result<Vec<ModelInfo>, LlmError> {
        match self.ask(InfoAsk::Models).await? {
            (_, _, InfoAnswer::Models { models }) => Ok(models),
            (node, _, other) => Err(LlmError::BadResponse(format!(
                "pool member {node} answered {other:?} to a question for its models"
            ))),
        }
    }

    async fn model_info(&self, model: &str) -> Result<ModelInfo, LlmError> {
        match self.ask(InfoAsk::Model { id: model.into() }).await? {
            (_, _, InfoAnswer::Model { model }) => Ok(model),
            (node, _, other) => Err(LlmError::BadResponse(format!(
                "pool member {node} answered {other:?} to a question for a model"
            ))),
        }
    }

    async fn health(&self) -> Result<Health, LlmError> {
        let t0 = Instant::now();
        match self.ask(InfoAsk::Health).await? {
            (node, provider, InfoAnswer::Health { health }) => Ok(Health {
                ok: health.ok,
                latency_ms: t0.elapsed().as_secs_f64() * 1000.0,
                detail: format!("pool member {node} ({provider}): {}", health.detail),
            }),
            (node, _, other) => Err(LlmError::BadResponse(format!(
                "pool member {node} answered {other:?} to a health question"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{ChatMessage, ChatRole, ToolSpec};

    fn request() -> PoolRequest {
        PoolRequest {
            v: WIRE_VERSION,
            id: "0123abcd".into(),
            from: "kitchen".into(),
            request: ChatRequest {
                model: Some("llama3.2".into()),
                messages: vec![
                    ChatMessage::new(ChatRole::System, "Be brief."),
                    ChatMessage::new(ChatRole::User, "Why is the sky blue? ünïcödé"),
                ],
                temperature: Some(0.5),
                max_tokens: Some(64),
                stop: vec!["\n\n".into()],
                seed: Some(7),
                tools: vec![ToolSpec {
                    name: "clock".into(),
                    description: "the time".into(),
                    parameters: serde_json::json!({"type": "object"}),
                }],
                extra: Some(serde_json::json!({"tool_choice": "auto"})),
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_request_survives_the_wire() {
        let req = request();
        let bytes = encode_request(&req, 1 << 20).unwrap();
        assert_eq!(decode_request(&bytes).unwrap(), req);
    }

    #[test]
    fn an_oversize_request_is_refused_saying_the_limit() {
        let mut req = request();
        req.request
            .messages
            .push(ChatMessage::new(ChatRole::User, "x".repeat(2000)));
        let e = encode_request(&req, 1024).unwrap_err();
        assert_eq!(e.code(), "invalid");
        assert!(e.to_string().contains("at most 1024"), "{e}");
    }

    #[test]
    fn bad_requests_are_refused_not_panicked_on() {
        for (bytes, why) in [
            (&b"\xff\xfe not json"[..], "unreadable"),
            (&b"{}"[..], "unreadable"),
            (&b"[1,2,3]"[..], "unreadable"),
        ] {
            let e = decode_request(bytes).unwrap_err();
            assert_eq!(e.code(), "invalid");
            assert!(e.to_string().contains(why), "{e}");
        }
        let mut req = request();
        req.v = 9;
        let e = decode_request(&serde_json::to_vec(&req).unwrap()).unwrap_err();
        assert!(e.to_string().contains("wire version 9"), "{e}");
        // The id names a subject: no wildcards, no dots.
        for id in ["*", ">", "a.b", ""] {
            req.v = WIRE_VERSION;
            req.id = id.into();
            let e = decode_request(&serde_json::to_vec(&req).unwrap()).unwrap_err();
            assert!(e.to_string().contains("request id"), "{id}: {e}");
        }
    }

    #[test]
    fn every_reply_survives_the_wire() {
        let replies = vec![
            Reply::Accepted {
                node: "study".into(),
            },
            Reply::Busy {
                node: "study".into(),
            },
            Reply::Started {
                provider: "openai".into(),
                model: "gpt-x".into(),
            },
            Reply::Alive,
            Reply::Token {
                text: "Hello, \"world\"\n".into(),
            },
            Reply::ToolCall {
                call: ToolCallRequest {
                    id: "c1".into(),
                    name: "clock".into(),
                    arguments: "{\"tz\":\"UTC\"}".into(),
                },
            },
            Reply::Done {
                finish_reason: FinishReason::Other("content_filter".into()),
                usage: Some(Usage {
                    prompt_tokens: 3,
                    completion_tokens: 4,
                }),
            },
            Reply::Done {
                finish_reason: FinishReason::Length,
                usage: None,
            },
            Reply::Error(WireError::of(&LlmError::Timeout("slow".into()))),
        ];
        for (n, r) in replies.into_iter().enumerate() {
            let bytes = encode_reply(n as u64, r.clone());
            let back = decode_reply(&bytes).unwrap();
            assert_eq!(
                back,
                ReplyMsg {
                    n: n as u64,
                    reply: r
                }
            );
        }
    }

    #[test]
    fn malformed_replies_are_bad_responses() {
        for bytes in [
            &b""[..],
            b"{\"n\":1}",
            b"{\"n\":-1,\"kind\":\"alive\"}",
            b"{\"n\":1,\"kind\":\"teleport\"}",
            b"{\"n\":1,\"kind\":\"token\"}",
            b"\x00\x01\x02",
        ] {
            let e = decode_reply(bytes).unwrap_err();
            assert_eq!(e.code(), "bad_response", "{bytes:?}");
        }
    }

    #[test]
    fn every_error_kind_comes_back_as_itself_naming_the_member() {
        let errors = [
            LlmError::Auth("key refused".into()),
            LlmError::NotFound("model x".into()),
            LlmError::RateLimited {
                retry_after: Some(Duration::from_millis(1500)),
                message: "slow down".into(),
            },
            LlmError::RateLimited {
                retry_after: None,
                message: "slow down".into(),
            },
            LlmError::Timeout("idle".into()),
            LlmError::Unavailable("down".into()),
            LlmError::BadResponse("junk".into()),
            LlmError::Invalid("empty".into()),
            LlmError::Cancelled,
        ];
        for e in errors {
            let bytes = encode_reply(2, Reply::Error(WireError::of(&e)));
            let Reply::Error(w) = decode_reply(&bytes).unwrap().reply else {
                panic!("not an error")
            };
            let back = w.into_error("study");
            assert_eq!(back.code(), e.code());
            if e != LlmError::Cancelled {
                assert_eq!(back.detail(), format!("pool member study: {}", e.detail()));
            }
            if let LlmError::RateLimited { retry_after, .. } = e {
                let LlmError::RateLimited { retry_after: r, .. } = back else {
                    panic!("{back:?}")
                };
                assert_eq!(r, retry_after);
            }
        }
        let odd = WireError {
            code: "meltdown".into(),
            message: "?".into(),
            retry_after_ms: None,
        };
        assert_eq!(odd.into_error("x").code(), "bad_response");
    }

    #[test]
    fn control_and_info_messages_survive_the_wire() {
        for c in [Control::Alive, Control::Cancel] {
            let b = serde_json::to_vec(&c).unwrap();
            assert_eq!(serde_json::from_slice::<Control>(&b).unwrap(), c);
        }
        let r = InfoReply {
            node: "study".into(),
            provider: "openai".into(),
            answer: InfoAnswer::Health {
                health: Health {
                    ok: true,
                    latency_ms: 1.5,
                    detail: "fine".into(),
                },
            },
        };
        let b = serde_json::to_vec(&r).unwrap();
        assert_eq!(serde_json::from_slice::<InfoReply>(&b).unwrap(), r);
        for ask in [
            InfoAsk::Health,
            InfoAsk::Models,
            InfoAsk::Model { id: "m".into() },
        ] {
            let b = serde_json::to_vec(&ask).unwrap();
            assert_eq!(serde_json::from_slice::<InfoAsk>(&b).unwrap(), ask);
        }
    }
}
