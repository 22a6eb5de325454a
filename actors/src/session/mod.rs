//! WsSession: one actor per WebSocket connection. Owns the connection's auth state, its
//! event-type filter, its bounded outbound queue, its rate limit and its heartbeat.
//!
//! Frames from the client arrive through `StreamHandler`; events from the hub through
//! [`HubDelivery`]. Everything the client is sent goes through one ordered, bounded queue
//! drained by a single writer task (a handler never writes to the socket itself, so frames
//! cannot be reordered). A client that lets the queue fill is cut off; nobody else waits.

pub mod admission;
mod client_audio;
mod commands;
mod frames;
pub mod guard;
mod outbox;
mod rate;
pub mod upgrade;

pub use client_audio::{ClientAudio, ClientAudioError};
use frames::{FrameCheck, FrameLimits};
pub use outbox::OutboundBody;
use outbox::{Behind, Frame, Outbox, PushError, QueueLimits};

pub use rate::TokenBucket;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, ProtocolError};
use bytes::Bytes;
use bytestring::ByteString;
use coda_protocol::{
    parse_command, Command, CommandError, CommandRejection, CommandResult, ConnectionState,
    ConnectionStatus, ErrorCode, EventPayload, EventType, PROTOCOL_VERSION, SYSTEM_SESSION,
};
use serde::Serialize;

use crate::auth::{Authenticator, Principal};
use crate::components::ComponentRegistry;
use crate::hub::{
    envelope, open_envelope, unix_now, HubDelivery, HubHandle, HubStatus, Register, ReplayBatch,
    StartAt, Subscribe, TypeMask, Unregister,
};
use crate::kernel::{KernelHandle, KernelRequestError};
use crate::metrics::MetricsActor;
use crate::voice::SpeechAudio;

/// Binary (client audio) bytes a connection may send per second: 8x real time for
/// 16 kHz 16-bit mono, so a file may be streamed faster than it plays.
const AUDIO_BYTES_PER_S: f64 = 8.0 * 32_000.0;
/// Binary bytes at once: a whole 30 s utterance sent in one go.
const AUDIO_BURST_BYTES: f64 = 30.0 * 32_000.0;

/// How long a client cut off for falling behind has to read its close frame.
const CUT_GRACE: Duration = Duration::from_secs(5);

/// Per-connection limits (from the `[server]` and `[auth]` config sections).
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// Largest text or binary message accepted and answered (`too_large` above it).
    pub max_frame_bytes: usize,
    /// Outbound messages queued for one client before it is cut off as too slow.
    pub max_queue: usize,
    /// Outbound bytes queued for one client before it is cut off as too slow.
    pub max_queue_bytes: usize,
    /// How long the oldest queued message may wait before the client is cut off.
    pub max_lag: Duration,
    /// Sustained commands per second per client.
    pub rate_per_s: f64,
    /// Commands allowed in a burst.
    pub rate_burst: f64,
    /// How often the server pings.
    pub ping_interval: Duration,
    /// How long past a ping interval a silent client is kept.
    pub ping_timeout: Duration,
    /// How long a new client may take to send `hello` before it gets the default replay.
    pub hello_wait: Duration,
    /// Deadline for the first `auth` message when the upgrade carried no token.
    pub auth_timeout: Duration,
    /// Whether a token is required.
    pub auth_required: bool,
    /// Consecutive invalid frames tolerated before the connection is closed.
    pub max_violations: u32,
    /// Client audio (binary frames between `stt_start` and `stt_stop`).
    pub client_audio: ClientAudioSettings,
    /// Connections per address.
    pub admission: admission::AdmissionSettings,
}

/// How client audio is cut into utterances (the `[audio]` detector settings, with the
/// `[stt]` interim interval and utterance limit: a push-to-talk utterance over it is
/// dropped with an error, a continuous one is ended there).
#[derive(Debug, Clone)]
pub struct ClientAudioSettings {
    /// Detector, interim cadence and limits.
    pub segment: crate::audio::SegmentSettings,
    /// Client-audio streams open at once across the server (`audio.max_client_streams`).
    pub max_streams: usize,
}

impl Default for ClientAudioSettings {
    fn default() -> Self {
        ClientAudioSettings {
            segment: Default::default(),
            max_streams: 8,
        }
    }
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            max_frame_bytes: 256 * 1024,
            max_queue: 4096,
            max_queue_bytes: 8 << 20,
            max_lag: Duration::from_secs(1),
            rate_per_s: 50.0,
            rate_burst: 100.0,
            ping_interval: Duration::from_secs(20),
            ping_timeout: Duration::from_secs(10),
            hello_wait: Duration::from_millis(150),
            auth_timeout: Duration::from_secs(5),
            auth_required: false,
            max_violations: 100,
            client_audio: ClientAudioSettings::default(),
            admission: admission::AdmissionSettings::default(),
        }
    }
}

/// Facts about the running server that sessions report (`get_system_info`, `get_config`).
#[derive(Clone)]
pub struct ServerFacts {
    /// Unix time the server started.
    pub started_at: f64,
    /// Monotonic start.
    pub started: Instant,
    /// `host:port` the server listens on.
    pub listen: Option<String>,
    /// The effective configuration, secrets redacted.
    pub config: serde_json::Value,
    /// The profile in use.
    pub profile: Option<String>,
    /// Component states.
    pub components: ComponentRegistry,
}

/// Everything sessions share. One per server.
pub struct SessionShared {
    /// Limits.
    pub settings: SessionSettings,
    pub hub: HubHandle,
    /// Token checks.
    pub auth: Arc<Authenticator>,
    /// Facts for info commands.
    pub facts: ServerFacts,
    /// The metrics actor, once started (answers `get_performance_metrics`).
    metrics: OnceLock<Addr<MetricsActor>>,
    /// The cluster link, when `[cluster]` is configured (`hello {"scope":"cluster"}`).
    cluster: OnceLock<crate::cluster::Cluster>,
    /// The assistant (without a pipeline, turn commands answer `unavailable`).
    pub kernel: KernelHandle,
    /// Per-address connection limits.
    pub admission: admission::Admission,
    /// Client-audio streams open across the server.
    pub client_streams: admission::SharedLimit,
    next_id: AtomicU64,
}

impl SessionShared {
    /// Bundles the shared state.
    pub fn new(
        settings: SessionSettings,
        hub: HubHandle,
        auth: Arc<Authenticator>,
        facts: ServerFacts,
        kernel: Option<crate::kernel::Kernel>,
    ) -> Arc<Self> {
        Arc::new(SessionShared {
            admission: admission::Admission::new(settings.admission),
            client_streams: admission::SharedLimit::new(settings.client_audio.max_streams),
            settings,
            hub,
            auth,
            facts,
            metrics: OnceLock::new(),
            cluster: OnceLock::new(),
            kernel: KernelHandle::new(kernel),
            next_id: AtomicU64::new(1),
        })
    }

    /// Hands sessions the metrics actor (once; later calls are ignored). Without it,
    /// `get_performance_metrics` is answered `unavailable`.
    pub fn set_metrics(&self, metrics: Addr<MetricsActor>) {
        let _ = self.metrics.set(metrics);
    }

    /// What `get_system_info` and `GET /api/system` answer, given the hub's status.
    pub fn system_info(&self, status: &HubStatus) -> coda_protocol::SystemInfo {
        let facts = &self.facts;
        coda_protocol::SystemInfo {
            server_version: env!("CARGO_PKG_VERSION").to_string(),
            protocol_version: PROTOCOL_VERSION.to_string(),
            epoch: status.epoch.to_string(),
            last_seq: status.last_seq,
            started_at: facts.started_at,
            uptime_s: facts.started.elapsed().as_secs_f64(),
            pid: std::process::id(),
            listen: facts.listen.clone(),
            auth_required: self.settings.auth_required,
            clients: status.clients as u32,
            components: facts.components.snapshot(),
        }
    }

    /// Hands sessions the cluster link (once). Without it, `hello {"scope":"cluster"}`
    /// is answered `unavailable`.
    pub fn set_cluster(&self, cluster: crate::cluster::Cluster) {
        let _ = self.cluster.set(cluster);
    }

    /// The metrics actor, if one was handed over.
    pub fn metrics(&self) -> Option<&Addr<MetricsActor>> {
        self.metrics.get()
    }

    fn next_client_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Publishes a `connection_status` event.
    pub fn connection_event(
        &self,
        client_id: &str,
        peer: &str,
        origin: Option<&str>,
        state: ConnectionState,
        reason: Option<String>,
    ) {
        self.hub.publish(
            SYSTEM_SESSION,
            &ConnectionStatus {
                client_id: client_id.to_string(),
                peer: peer.to_string(),
                state,
                reason,
                origin: origin.map(str::to_string),
            },
        );
    }
}

#[derive(Debug, Clone, PartialEq)]
enum AuthState {
    /// Waiting for an `auth` message.
    Pending,
    /// Authenticated (or auth is off).
    Ok(Option<Principal>),
}

/// One WebSocket connection.
pub struct WsSession {
    shared: Arc<SessionShared>,
    id: u64,
    client_id: String,
    peer: String,
    origin: Option<String>,
    auth: AuthState,
    out: Outbox,
    /// Live delivery has started (hello, first command, or the hello wait ran out).
    subscribed: bool,
    include: Option<Vec<String>>,
    exclude: Vec<String>,
    mask: TypeMask,
    /// Seq of the last stream event sent: direct replies repeat it, so they never look
    /// like a gap.
    last_sent_seq: u64,
    /// A replay was asked of the hub and has not arrived: direct replies wait for it, so
    /// a command's answer never overtakes the replay its command started.
    awaiting_replay: bool,
    deferred: Vec<DeferredFrame>,
    bucket: TokenBucket,
    /// Binary (audio) bytes: a budget of its own, in bytes.
    audio_bucket: TokenBucket,
    rate_notice: Option<Instant>,
    violations: u32,
    last_heard: Instant,
    close_reason: Option<String>,
    /// Client audio listening between `stt_start {source:"client"}` and `stt_stop`.
    audio: Option<ClientAudio>,
    /// The incoming frames' size limit, and why it ended the stream when it did.
    frames: FrameCheck,
    /// `hello {"scope":"cluster"}`: events come from the cluster stream, not the hub;
    /// the task feeding them while one runs.
    cluster_scope: bool,
    cluster_view: Option<tokio::task::AbortHandle>,
    /// This connection's place in its address's count, given back when the session ends.
    _slot: Option<admission::Slot>,
}

/// What the upgrade handler learned and set up for a connection it accepted.
pub(crate) struct Accepted {
    pub peer: String,
    pub origin: Option<String>,
    pub auth: UpgradeAuth,
    pub frames: FrameCheck,
    pub slot: Option<admission::Slot>,
}

/// How a connection authenticated at upgrade time.
pub enum UpgradeAuth {
    /// Auth is off: no token needed.
    NotRequired,
    /// A valid token came with the upgrade.
    Authenticated(Principal),
    /// Auth is on and no token came: the first message must be `auth`.
    AwaitMessage,
}

impl WsSession {
    /// Starts a session actor for an upgraded connection and returns the response body
    /// that carries its outbound frames. `actix_body` is actix-ws's own body: held, never
    /// polled, so actix-ws's incoming stream ends when the connection does.
    pub(crate) fn start_session(
        shared: Arc<SessionShared>,
        stream: actix_ws::MessageStream,
        actix_body: actix_web::body::BoxBody,
        conn: Accepted,
    ) -> OutboundBody {
        let Accepted {
            peer,
            origin,
            auth,
            frames,
            slot,
        } = conn;
        let id = shared.next_client_id();
        let settings = shared.settings.clone();
        // The frame check closes first; this is actix-ws's own backstop.
        let hard_cap = FrameLimits::new(&settings).hard_cap;
        let stream = stream
            .max_frame_size(hard_cap)
            .aggregate_continuations()
            .max_continuation_size(hard_cap);
        let limits = QueueLimits {
            frames: settings.max_queue,
            bytes: settings.max_queue_bytes,
            lag: settings.max_lag,
        };
        let (out, body) = Outbox::new(limits, actix_body);
        let auth_state = match auth {
            UpgradeAuth::NotRequired => AuthState::Ok(None),
            UpgradeAuth::Authenticated(p) => AuthState::Ok(Some(p)),
            UpgradeAuth::AwaitMessage => AuthState::Pending,
        };
        WsSession::create(move |ctx| {
            ctx.add_stream(stream);
            WsSession {
                client_id: format!("c-{id}"),
                id,
                peer,
                origin,
                auth: auth_state,
                out,
                subscribed: false,
                include: None,
                exclude: Vec::new(),
                mask: TypeMask::DEFAULT,
                last_sent_seq: 0,
                awaiting_replay: false,
                deferred: Vec::new(),
                bucket: TokenBucket::new(settings.rate_per_s, settings.rate_burst),
                audio_bucket: TokenBucket::new(AUDIO_BYTES_PER_S, AUDIO_BURST_BYTES),
                rate_notice: None,
                violations: 0,
                last_heard: Instant::now(),
                close_reason: None,
                audio: None,
                frames,
                cluster_scope: false,
                cluster_view: None,
                _slot: slot,
                shared,
            }
        });
        body
    }

    fn settings(&self) -> &SessionSettings {
        &self.shared.settings
    }

    /// Queues a frame; a full queue means the client is too slow and is cut off.
    fn push(&mut self, frame: Frame, ctx: &mut Context<Self>) {
        self.push_at(frame, Instant::now(), ctx);
    }

    /// [`push`](Self::push) with the time already read (one clock read for a batch).
    fn push_at(&mut self, frame: Frame, now: Instant, ctx: &mut Context<Self>) {
        match self.out.push_at(frame, now) {
            Ok(()) => {}
            Err(PushError::Full(behind)) => self.cut(behind, ctx),
            Err(PushError::Closed) => {
                if self.close_reason.is_none() {
                    self.close_reason = Some("connection lost".into());
                }
                ctx.stop();
            }
        }
    }

    /// Cuts a client that fell behind.
    fn cut(&mut self, behind: Behind, ctx: &mut Context<Self>) {
        if self.close_reason.is_some() {
            return;
        }
        self.shared.hub.counters().slow_disconnect();
        let reason = format!(
            "slow consumer: {}; resume from the last seq read",
            behind.describe(self.out.limits())
        );
        tracing::warn!(client = %self.client_id, peer = %self.peer, "{reason}; closing");
        self.close_reason = Some(reason.clone());
        // The backlog goes; the close frame saying why waits for the client to read
        // again, for a while.
        let later = self.out.cut(CloseReason {
            code: CloseCode::Again,
            description: Some(reason),
        });
        actix_rt::spawn(async move {
            actix_rt::time::sleep(CUT_GRACE).await;
            later.abort();
        });
        ctx.stop();
    }

    fn direct<P: EventPayload>(&mut self, payload: &P, ctx: &mut Context<Self>) {
        if self.awaiting_replay {
            // Built when sent, so its seq is the one the client will have seen by then.
            let data = serde_json::to_value(payload).unwrap_or(serde_json::Value::Null);
            let kind = P::TYPE;
            self.deferred
                .push(Box::new(move |seq| direct_frame_value(seq, kind, &data)));
            return;
        }
        let frame = direct_frame(self.last_sent_seq, payload);
        self.push(Frame::Text(frame), ctx);
    }

    fn reply_ok(&mut self, id: Option<String>, data: serde_json::Value, ctx: &mut Context<Self>) {
        self.direct(&CommandResult { id, ok: true, data }, ctx);
    }

    fn reply_err(
        &mut self,
        id: Option<String>,
        code: ErrorCode,
        message: impl Into<String>,
        ctx: &mut Context<Self>,
    ) {
        self.shared.hub.counters().command_error();
        self.direct(
            &CommandError {
                id,
                code,
                message: message.into(),
            },
            ctx,
        );
    }

    /// Closes with a close frame after everything queued so far.
    fn close(&mut self, code: CloseCode, reason: &str, ctx: &mut Context<Self>) {
        if self.close_reason.is_none() {
            self.close_reason = Some(reason.to_string());
        }
        // Replies held for a replay that will not come now still go out, before the close.
        self.awaiting_replay = false;
        for build in std::mem::take(&mut self.deferred) {
            let frame = build(self.last_sent_seq);
            let _ = self.out.push(Frame::Text(frame));
        }
        self.out.close(Some(CloseReason {
            code,
            description: Some(reason.to_string()),
        }));
        ctx.stop();
    }

    /// A frame the client should not have sent: answered, and counted.
    fn violation(
        &mut self,
        id: Option<String>,
        code: ErrorCode,
        message: String,
        ctx: &mut Context<Self>,
    ) {
        self.reply_err(id, code, message, ctx);
        self.violations += 1;
        if self.violations > self.settings().max_violations {
            let reason = format!("{} invalid frames in a row", self.violations);
            self.close(CloseCode::Policy, &reason, ctx);
        }
    }

    fn subscribe(&mut self, start: StartAt, ctx: &mut Context<Self>) {
        self.subscribed = true;
        if self.cluster_scope {
            // The filter applies as events arrive; a position opens the view anew.
            if !matches!(start, StartAt::Live) {
                self.open_cluster_view(None, start, ctx);
            }
            return;
        }
        if !matches!(start, StartAt::Live) {
            self.awaiting_replay = true;
        }
        self.shared.hub.addr().do_send(Subscribe {
            client_id: self.id,
            mask: self.mask,
            start,
        });
    }

    fn on_text(&mut self, text: ByteString, ctx: &mut Context<Self>) {
        if text.len() > self.settings().max_frame_bytes {
            let msg = format!(
                "frame of {} bytes exceeds the limit of {} bytes",
                text.len(),
                self.settings().max_frame_bytes
            );
            self.violation(None, ErrorCode::TooLarge, msg, ctx);
            return;
        }
        if !self.bucket.try_take() {
            let msg = format!(
                "rate limit exceeded ({} commands/s, burst {}); commands are being dropped",
                self.settings().rate_per_s,
                self.settings().rate_burst
            );
            self.rate_limited(msg, ctx);
            return;
        }
        let request = match parse_command(&text) {
            Ok(r) => r,
            Err(CommandRejection { id, code, message }) => {
                self.violation(id, code, message, ctx);
                return;
            }
        };
        let id = request.id;
        self.shared.hub.counters().command();
        if self.auth == AuthState::Pending {
            match request.command {
                Command::Auth(a) => self.authenticate(id, &a.token, ctx),
                other => {
                    let msg = format!(
                        "`{}` before authentication: send {{\"type\":\"auth\",\"data\":{{\"token\":...}}}} first",
                        other.command_type()
                    );
                    self.reply_err(id, ErrorCode::Unauthorized, msg, ctx);
                    self.close(CloseCode::Policy, "authentication required", ctx);
                }
            }
            return;
        }
        self.violations = 0;
        self.dispatch(id, request.command, ctx);
    }

    /// Says a flood is being dropped, at most once a second: a flood must not be
    /// amplified.
    fn rate_limited(&mut self, msg: String, ctx: &mut Context<Self>) {
        let now = Instant::now();
        if self
            .rate_notice
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.rate_notice = Some(now);
            self.reply_err(None, ErrorCode::RateLimited, msg, ctx);
        }
    }

    fn authenticate(&mut self, id: Option<String>, token: &str, ctx: &mut Context<Self>) {
        match self.shared.auth.check(Some(token)) {
            Ok(principal) => {
                tracing::info!(client = %self.client_id, peer = %self.peer, principal = ?principal, "authenticated by auth message");
                self.shared.connection_event(
                    &self.client_id,
                    &self.peer,
                    self.origin.as_deref(),
                    ConnectionState::Authenticated,
                    None,
                );
                let was_pending = self.auth == AuthState::Pending;
                self.auth = AuthState::Ok(Some(principal));
                self.frames
                    .set_limit(FrameLimits::new(self.settings()).hard_cap);
                self.reply_ok(id, serde_json::json!({"authenticated": true}), ctx);
                if was_pending {
                    self.start_hello_wait(ctx);
                }
            }
            Err(failure) => {
                let reason = format!("auth message refused: {failure}");
                tracing::warn!(client = %self.client_id, peer = %self.peer, "{reason}");
                self.shared.connection_event(
                    &self.client_id,
                    &self.peer,
                    self.origin.as_deref(),
                    ConnectionState::Refused,
                    Some(reason.clone()),
                );
                self.reply_err(id, ErrorCode::Unauthorized, reason, ctx);
                self.close(CloseCode::Policy, "unauthorized", ctx);
            }
        }
    }

    fn start_hello_wait(&mut self, ctx: &mut Context<Self>) {
        let wait = self.settings().hello_wait;
        ctx.run_later(wait, |act, ctx| {
            if !act.subscribed {
                act.subscribe(StartAt::Replay, ctx);
            }
        });
    }

    fn dispatch(&mut self, id: Option<String>, command: Command, ctx: &mut Context<Self>) {
        // Any command but hello starts live delivery with the default replay first, so the
        // answer to the command follows the replay on the wire.
        if !self.subscribed && !matches!(command, Command::Hello(_) | Command::Resume(_)) {
            self.subscribe(StartAt::Replay, ctx);
        }
        match command {
            Command::Hello(h) => self.hello(id, h, ctx),
            // Checked even when no token is needed: a wrong one is refused as documented,
            // and a right one names the principal (the per-boot token unlocks admin).
            Command::Auth(a) => self.authenticate(id, &a.token, ctx),
            Command::Subscribe(s) => self.add_types(id, s.types, ctx),
            Command::Unsubscribe(s) => self.remove_types(id, s.types, ctx),
            Command::Resume(r) => self.resume(id, r.epoch, r.last_seq, ctx),
            Command::Ping => self.ping(id, ctx),
            Command::GetSystemInfo => self.get_system_info(id, ctx),
            Command::GetPerformanceMetrics => self.answer_performance(id, ctx),
            Command::GetConfig => self.get_config(id, ctx),
            Command::TextInput(t) => self.text_input(id, t, ctx),
            Command::DemoFlow(d) => self.demo_flow(id, d, ctx),
            Command::MemorySearch(q) => self.memory(id, crate::memory::Search::from_query(&q), ctx),
            Command::MemoryList(q) => self.memory(id, crate::memory::List::from_query(&q), ctx),
            Command::Interrupt(_) => self.interrupt(id, ctx),
            Command::SttStart(c) => self.stt_start(id, c, ctx),
            Command::SttStop(_) => self.stt_stop(id, ctx),
            Command::TokenCreate(_)
            | Command::TokenList
            | Command::TokenRevoke(_)
            | Command::TokenRotate(_) => self.admin_token(id, command, ctx),
        }
    }

    /// A request the assistant did not answer, as the client's `command_error`.
    fn reply_kernel_err(
        &mut self,
        id: Option<String>,
        e: KernelRequestError,
        ctx: &mut Context<Self>,
    ) {
        let code = match &e {
            KernelRequestError::Invalid(_) => ErrorCode::InvalidData,
            KernelRequestError::Failed(_) => ErrorCode::Internal,
            KernelRequestError::NotRunning(_)
            | KernelRequestError::Restarting(_)
            | KernelRequestError::Unavailable(_) => ErrorCode::Unavailable,
        };
        self.reply_err(id, code, e.to_string(), ctx);
    }

    /// The replay came (or will not): the replies held for it go out.
    fn release_deferred(&mut self, ctx: &mut Context<Self>) {
        self.awaiting_replay = false;
        for build in std::mem::take(&mut self.deferred) {
            let frame = build(self.last_sent_seq);
            self.push(Frame::Text(frame), ctx);
        }
    }

    fn send_replay(&mut self, batch: ReplayBatch, ctx: &mut Context<Self>) {
        let frame = replay_frame(&batch, self.mask);
        self.last_sent_seq = self.last_sent_seq.max(batch.last_seq);
        self.push(Frame::Text(frame), ctx);
    }
}

fn to_value<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// A direct reply waiting for a replay, built with the seq current when it is sent.
type DeferredFrame = Box<dyn FnOnce(u64) -> ByteString>;

/// [`direct_frame`] from an already-converted payload.
fn direct_frame_value(seq: u64, kind: EventType, data: &serde_json::Value) -> ByteString {
    let data = data.to_string();
    ByteString::from(envelope(seq, unix_now(), kind, SYSTEM_SESSION, &data))
}

/// A direct (one-client) envelope. Its `seq` repeats the last stream seq the client was
/// sent; direct replies are not part of the numbered stream.
pub fn direct_frame<P: EventPayload>(seq: u64, payload: &P) -> ByteString {
    let data = serde_json::to_string(payload).unwrap_or_else(|_| "{}".to_string());
    ByteString::from(envelope(seq, unix_now(), P::TYPE, SYSTEM_SESSION, &data))
}

/// The `replay` envelope for a batch, keeping only the types in `mask`. The events are
/// spliced in as the exact bytes every other client got.
pub fn replay_frame(batch: &ReplayBatch, mask: TypeMask) -> ByteString {
    let size: usize = batch.events.iter().map(|e| e.json.len() + 1).sum();
    let mut s = String::with_capacity(size + 256);
    use std::fmt::Write;
    open_envelope(
        &mut s,
        batch.last_seq,
        unix_now(),
        EventType::Replay,
        SYSTEM_SESSION,
    );
    s.push_str(r#"{"events":["#);
    let mut first = true;
    for e in batch.events.iter().filter(|e| mask.contains(e.event_type)) {
        if !first {
            s.push(',');
        }
        first = false;
        s.push_str(&e.json);
    }
    let epoch = serde_json::to_string(&*batch.epoch).unwrap_or_else(|_| "\"\"".into());
    let _ = write!(
        s,
        r#"],"complete":{},"epoch":{},"last_seq":{}}}}}"#,
        batch.complete, epoch, batch.last_seq
    );
    ByteString::from(s)
}

impl Actor for WsSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.shared.hub.addr().do_send(Register {
            client_id: self.id,
            recipient: ctx.address().recipient(),
        });
        tracing::info!(client = %self.client_id, peer = %self.peer, origin = ?self.origin, "connected");
        self.shared.connection_event(
            &self.client_id,
            &self.peer,
            self.origin.as_deref(),
            ConnectionState::Connected,
            None,
        );
        if let AuthState::Ok(Some(principal)) = &self.auth {
            tracing::info!(client = %self.client_id, principal = ?principal, "authenticated at upgrade");
            self.shared.connection_event(
                &self.client_id,
                &self.peer,
                self.origin.as_deref(),
                ConnectionState::Authenticated,
                None,
            );
        }
        let interval = self.settings().ping_interval;
        let timeout = self.settings().ping_timeout;
        ctx.run_interval(interval, move |act, ctx| {
            if act.last_heard.elapsed() > interval + timeout {
                let reason = format!(
                    "ping timeout: nothing heard for {:.0} s",
                    act.last_heard.elapsed().as_secs_f64()
                );
                tracing::info!(client = %act.client_id, "{reason}");
                act.close_reason = Some(reason);
                act.out.abort();
                ctx.stop();
            } else {
                act.push(Frame::Ping(Bytes::from_static(b"coda")), ctx);
            }
        });
        match self.auth {
            AuthState::Pending => {
                let deadline = self.settings().auth_timeout;
                ctx.run_later(deadline, move |act, ctx| {
                    if act.auth == AuthState::Pending {
                        let reason = format!("no auth message within {} s", deadline.as_secs_f64());
                        act.shared.connection_event(
                            &act.client_id,
                            &act.peer,
                            act.origin.as_deref(),
                            ConnectionState::Refused,
                            Some(reason.clone()),
                        );
                        act.reply_err(None, ErrorCode::Unauthorized, reason.clone(), ctx);
                        act.close(CloseCode::Policy, &reason, ctx);
                    }
                });
            }
            AuthState::Ok(_) => self.start_hello_wait(ctx),
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(view) = self.cluster_view.take() {
            view.abort();
        }
        if self.audio.take().is_some() {
            if let Some(stt) = self.stt() {
                stt.do_send(SpeechAudio::Cancelled {
                    session_id: self.client_id.clone(),
                    reason: "the connection closed mid-utterance".into(),
                });
            }
        }
        self.shared
            .hub
            .addr()
            .do_send(Unregister { client_id: self.id });
        let reason = self
            .close_reason
            .take()
            .unwrap_or_else(|| "client closed".to_string());
        tracing::info!(client = %self.client_id, peer = %self.peer, %reason, "closed");
        self.shared.connection_event(
            &self.client_id,
            &self.peer,
            self.origin.as_deref(),
            ConnectionState::Closed,
            Some(reason),
        );
    }
}

impl WsSession {
    /// Live events, in seq order.
    fn deliver(&mut self, events: &[crate::hub::SharedEvent], ctx: &mut Context<Self>) {
        let Some(first) = events.first() else {
            return;
        };
        // Time spent waiting in this session's mailbox counts as being behind too: under
        // overload that, not the socket, is where events wait.
        let now = Instant::now();
        let lag = now.saturating_duration_since(first.accepted);
        if lag > self.settings().max_lag {
            self.cut(Behind::Lag(lag), ctx);
            return;
        }
        if !self.subscribed {
            return;
        }
        for ev in events {
            if self.mask.contains(ev.event_type) {
                self.last_sent_seq = ev.seq;
                self.push_at(Frame::Text(ev.json.clone()), now, ctx);
            }
        }
    }
}

impl Handler<HubDelivery> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: HubDelivery, ctx: &mut Context<Self>) {
        match msg {
            HubDelivery::Event(ev) => self.deliver(std::slice::from_ref(&ev), ctx),
            HubDelivery::Events(batch) => self.deliver(&batch, ctx),
            HubDelivery::Replay(batch) => {
                self.send_replay(batch, ctx);
                self.release_deferred(ctx);
            }
            HubDelivery::Shutdown(reason) => self.close(CloseCode::Away, &reason, ctx),
        }
    }
}

impl WsSession {
    fn on_stream_error(&mut self, e: ProtocolError, ctx: &mut Context<Self>) {
        if let Some(v) = self.frames.violation() {
            self.shared
                .hub
                .counters()
                .refused(crate::hub::Refusal::Frame);
            let code = if v.is_size() {
                CloseCode::Size
            } else {
                CloseCode::Protocol
            };
            self.close(code, &v.to_string(), ctx);
            return;
        }
        match e {
            ProtocolError::Overflow => {
                let reason = format!(
                    "frame far above the {} byte limit",
                    self.settings().max_frame_bytes
                );
                self.close(CloseCode::Size, &reason, ctx);
            }
            ProtocolError::Io(ref io) if io.kind() == std::io::ErrorKind::InvalidData => {
                // Invalid UTF-8 in a text frame: the frame was consumed; answer and go on.
                self.violation(
                    None,
                    ErrorCode::BadJson,
                    "text frame is not valid UTF-8".into(),
                    ctx,
                );
            }
            e => self.close(CloseCode::Protocol, &format!("protocol error: {e}"), ctx),
        }
    }
}

impl StreamHandler<Result<AggregatedMessage, ProtocolError>> for WsSession {
    fn handle(&mut self, msg: Result<AggregatedMessage, ProtocolError>, ctx: &mut Context<Self>) {
        self.last_heard = Instant::now();
        match msg {
            Ok(AggregatedMessage::Text(text)) => self.on_text(text, ctx),
            Ok(AggregatedMessage::Binary(bin)) => {
                if bin.len() > self.settings().max_frame_bytes {
                    let msg = format!(
                        "binary frame of {} bytes exceeds the limit of {} bytes",
                        bin.len(),
                        self.settings().max_frame_bytes
                    );
                    self.violation(None, ErrorCode::TooLarge, msg, ctx);
                } else if self.auth == AuthState::Pending {
                    self.reply_err(
                        None,
                        ErrorCode::Unauthorized,
                        "binary frame before authentication",
                        ctx,
                    );
                    self.close(CloseCode::Policy, "authentication required", ctx);
                } else if !self.audio_bucket.try_take_n(bin.len() as f64) {
                    let msg = format!(
                        "binary frames faster than {} KiB/s (8x real-time speech audio); audio is being dropped",
                        AUDIO_BYTES_PER_S as u64 / 1024
                    );
                    self.rate_limited(msg, ctx);
                } else if self.audio.is_some() {
                    self.on_audio(&bin, ctx);
                } else {
                    let msg = "binary audio frames are accepted only between stt_start {\"source\":\"client\"} and stt_stop".to_string();
                    self.violation(None, ErrorCode::InvalidData, msg, ctx);
                }
            }
            // Pings share the command budget: a ping flood is not answered past it.
            Ok(AggregatedMessage::Ping(p)) => {
                if self.bucket.try_take() {
                    self.push(Frame::Pong(p), ctx);
                }
            }
            Ok(AggregatedMessage::Pong(_)) => {}
            Ok(AggregatedMessage::Close(reason)) => {
                self.close_reason = Some(match &reason {
                    Some(r) => format!(
                        "client closed ({:?}{})",
                        r.code,
                        r.description
                            .as_deref()
                            .map(|d| format!(": {d}"))
                            .unwrap_or_default()
                    ),
                    None => "client closed".to_string(),
                });
                self.out.close(reason);
                ctx.stop();
            }
            Err(e) => self.on_stream_error(e, ctx),
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        if self.close_reason.is_none() {
            self.close_reason = Some("connection closed by client".into());
        }
        ctx.stop();
    }
}
