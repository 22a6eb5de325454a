//! EventHub: owns the global `seq` counter and the `epoch`, the subscribers, the replay
//! ring for new clients and the resume window for reconnecting ones.
//!
//! Every event is serialised exactly once, here, into its full envelope; subscribers get a
//! cheap shared handle to those bytes. Publishing goes through [`HubHandle`], which never
//! blocks and never fails the caller.

mod counters;
mod filter;
mod recorder;

pub use counters::{CounterSnapshot, HubCounters, LlmUsageTotals, Refusal};
pub use filter::{FilterError, TypeMask};
pub use recorder::{record_events, Recorded};

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use bytestring::ByteString;
use coda_protocol::{EventPayload, EventType, Retention, PROTOCOL_VERSION};
use serde_json::value::RawValue;

/// Hub limits (from the `[events]` config section).
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// Important events kept for the replay a new client receives.
    pub replay_size: usize,
    /// Most events kept in the resume window.
    pub resume_max_events: usize,
    /// Oldest event kept in the resume window.
    pub resume_max_age: Duration,
}

impl Default for HubSettings {
    fn default() -> Self {
        HubSettings {
            replay_size: 50,
            resume_max_events: 10_000,
            resume_max_age: Duration::from_secs(300),
        }
    }
}

/// One accepted event: its number, type and the serialised envelope, shared by every
/// subscriber and the history buffers.
#[derive(Debug)]
pub struct StreamEvent {
    /// Global sequence number.
    pub seq: u64,
    /// Unix seconds when the hub accepted it.
    pub timestamp: f64,
    pub event_type: EventType,
    /// The complete JSON envelope.
    pub json: ByteString,
    /// When it was accepted (monotonic), for the age bound of the resume window.
    pub accepted: Instant,
}

/// A shared, immutable accepted event.
pub type SharedEvent = Arc<StreamEvent>;

/// Seconds since the Unix epoch, as the envelope's `timestamp`.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------

/// Publish one event. Sent by [`HubHandle::publish`].
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish {
    /// The conversation session, or `"system"`.
    pub session_id: String,
    pub event_type: EventType,
    /// The payload, already serialised by the publisher (spreads the work off the hub).
    pub data: Box<RawValue>,
}

/// What the hub sends a session.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub enum HubDelivery {
    /// A live event.
    Event(SharedEvent),
    /// Live events published close together, in seq order, sent to every subscriber as
    /// one message (each filters them by its own mask): at high rates one mailbox
    /// message per event and subscriber was most of the fan-out's cost.
    Events(Arc<[SharedEvent]>),
    /// History: the answer to a subscription (new client or resume).
    Replay(ReplayBatch),
    /// The server is shutting down: tell the client and close.
    Shutdown(String),
}

impl HubDelivery {
    /// The live events it carries (none for a replay or a shutdown).
    pub fn live(&self) -> &[SharedEvent] {
        match self {
            HubDelivery::Event(ev) => std::slice::from_ref(ev),
            HubDelivery::Events(batch) => batch,
            HubDelivery::Replay(_) | HubDelivery::Shutdown(_) => &[],
        }
    }
}

/// History for one client, in seq order.
#[derive(Debug, Clone)]
pub struct ReplayBatch {
    /// Events, oldest first.
    pub events: Vec<SharedEvent>,
    /// False when events the client asked for were no longer retained (or the epoch changed).
    pub complete: bool,
    /// The stream the seqs belong to.
    pub epoch: Arc<str>,
    /// The hub's latest seq at the time of the batch.
    pub last_seq: u64,
}

/// Register a connection (before or without a subscription): counted, told about shutdown.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Register {
    /// Connection id.
    pub client_id: u64,
    /// Where deliveries go.
    pub recipient: Recipient<HubDelivery>,
}

/// A connection went away.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unregister {
    /// Connection id.
    pub client_id: u64,
}

/// Where a subscription starts.
#[derive(Debug, Clone)]
pub enum StartAt {
    /// A new client: the replay ring plus the latest state events.
    Replay,
    /// A reconnecting client: every retained event after `last_seq` of `epoch`.
    Resume {
        /// The epoch the client's `last_seq` belongs to (`None`: assume the current one).
        epoch: Option<String>,
        /// The last seq the client saw.
        last_seq: u64,
    },
    /// Only change the filter, send no history.
    Live,
}

/// Start (or change) live delivery for a registered connection. The history batch, if any,
/// is sent through the same recipient *before* any later live event, so order holds.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    /// Connection id (must be registered).
    pub client_id: u64,
    /// Types to deliver live.
    pub mask: TypeMask,
    /// Which history to send first.
    pub start: StartAt,
}

/// Ask the hub for its counters.
#[derive(Message)]
#[rtype(result = "HubStatus")]
pub struct GetStatus;

/// The hub's counters.
#[derive(Debug, Clone, MessageResponse)]
pub struct HubStatus {
    /// Current epoch.
    pub epoch: Arc<str>,
    /// Latest seq.
    pub last_seq: u64,
    /// Registered connections.
    pub clients: usize,
    /// Connections receiving live events.
    pub subscribed: usize,
    /// Events in the resume window.
    pub window_len: usize,
    /// Events in the replay ring.
    pub replay_len: usize,
}

/// Ask the hub for its counters, read between two events so the per-type counts add up
/// to `last_seq` exactly.
#[derive(Message)]
#[rtype(result = "CounterSnapshot")]
pub struct GetCounters;

/// Deliver the events of `mask` to an in-process observer (e.g. the metrics actor, which
/// feeds its latency tracker from `latency_trace`). Observers are not clients: they are
/// not counted, get no replay and no shutdown notice; their types count as wanted
/// ([`HubHandle::wants`]). Registering the same `name` again
/// replaces the earlier registration (an actor restarting re-registers).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Observe {
    /// Who observes (one registration per name).
    pub name: &'static str,
    /// The types to deliver.
    pub mask: TypeMask,
    /// Where they go (as [`HubDelivery::Event`]).
    pub recipient: Recipient<HubDelivery>,
}

/// Tell every connection the server is going down.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Shutdown {
    /// Why (sent to clients as the close reason).
    pub reason: String,
}

// ---------------------------------------------------------------------------------------
// The actor
// ---------------------------------------------------------------------------------------

struct Client {
    recipient: Recipient<HubDelivery>,
    /// `None` until the connection subscribes.
    mask: Option<TypeMask>,
}

/// The event hub actor. Start it with [`EventHub::start_hub`].
pub struct EventHub {
    settings: HubSettings,
    epoch: Arc<str>,
    seq: u64,
    clients: HashMap<u64, Client>,
    /// Subscribed clients, kept as a flat list for the fan-out loop.
    subscribers: Vec<(u64, TypeMask, Recipient<HubDelivery>)>,
    replay_ring: VecDeque<SharedEvent>,
    latest: HashMap<EventType, SharedEvent>,
    window: VecDeque<SharedEvent>,
    published: Arc<AtomicU64>,
    counters: Arc<HubCounters>,
    observers: Vec<(&'static str, TypeMask, Recipient<HubDelivery>)>,
    /// Union of the subscribed clients' masks (read by [`HubHandle::wants`]).
    wanted: Arc<AtomicU64>,
    /// Events accepted and not yet sent to the subscribers.
    pending: Vec<SharedEvent>,
    /// When the subscribers were last sent events, and whether a send is scheduled.
    last_flush: Instant,
    flush_scheduled: bool,
}

/// Events published within this long of the previous send to subscribers wait for the
/// next one; an event after a quiet spell goes out at once. So a busy stream is sent in
/// batches, at most this much later, and a quiet one is not delayed at all.
const BATCH_WINDOW: Duration = Duration::from_millis(2);

impl EventHub {
    /// A hub with a fresh random epoch (history is not kept across restarts, so each boot
    /// is a new stream).
    pub fn new(settings: HubSettings) -> EventHub {
        let epoch: Arc<str> =
            Arc::from(uuid::Uuid::new_v4().simple().to_string()[..12].to_string());
        EventHub {
            settings,
            epoch,
            seq: 0,
            clients: HashMap::new(),
            subscribers: Vec::new(),
            replay_ring: VecDeque::new(),
            latest: HashMap::new(),
            window: VecDeque::new(),
            published: Arc::new(AtomicU64::new(0)),
            counters: Arc::new(HubCounters::default()),
            observers: Vec::new(),
            wanted: Arc::new(AtomicU64::new(0)),
            pending: Vec::new(),
            last_flush: Instant::now() - BATCH_WINDOW,
            flush_scheduled: false,
        }
    }

    /// Sends the pending events to the subscribers.
    fn flush(&mut self) {
        self.flush_scheduled = false;
        self.last_flush = Instant::now();
        match self.pending.len() {
            0 => {}
            1 => {
                if let Some(ev) = self.pending.pop() {
                    for (_, mask, r) in &self.subscribers {
                        if mask.contains(ev.event_type) {
                            r.do_send(HubDelivery::Event(ev.clone()));
                        }
                    }
                }
            }
            _ => {
                let batch: Arc<[SharedEvent]> = std::mem::take(&mut self.pending).into();
                let mut types = TypeMask::NONE;
                for e in batch.iter() {
                    types = types.union(TypeMask::from_type(e.event_type));
                }
                for (_, mask, r) in &self.subscribers {
                    if mask.intersects(types) {
                        r.do_send(HubDelivery::Events(batch.clone()));
                    }
                }
            }
        }
    }

    /// Starts the hub on the current arbiter and returns the publishing handle.
    pub fn start_hub(settings: HubSettings) -> HubHandle {
        let hub = EventHub::new(settings);
        let published = hub.published.clone();
        let counters = hub.counters.clone();
        let epoch = hub.epoch.clone();
        let wanted = hub.wanted.clone();
        let addr = hub.start();
        HubHandle {
            addr,
            epoch,
            published,
            counters,
            wanted,
        }
    }

    fn rebuild_subscribers(&mut self) {
        self.subscribers = self
            .clients
            .iter()
            .filter_map(|(id, c)| c.mask.map(|m| (*id, m, c.recipient.clone())))
            .collect();
        // Observers count: one that forwards audio (satellites) wants it produced.
        let union = self
            .subscribers
            .iter()
            .map(|(_, m, _)| m)
            .chain(self.observers.iter().map(|(_, m, _)| m))
            .fold(0u64, |acc, m| acc | m.bits());
        self.wanted.store(union, Ordering::Relaxed);
        self.counters
            .set_connections(self.clients.len(), self.subscribers.len());
    }

    fn trim_window(&mut self, now: Instant) {
        while self.window.len() > self.settings.resume_max_events {
            self.window.pop_front();
        }
        while let Some(front) = self.window.front() {
            if now.duration_since(front.accepted) > self.settings.resume_max_age {
                self.window.pop_front();
            } else {
                break;
            }
        }
    }

    fn accept(&mut self, msg: Publish) -> SharedEvent {
        self.seq += 1;
        let timestamp = unix_now();
        let json = envelope(
            self.seq,
            timestamp,
            msg.event_type,
            &msg.session_id,
            msg.data.get(),
        );
        let now = Instant::now();
        let ev = Arc::new(StreamEvent {
            seq: self.seq,
            timestamp,
            event_type: msg.event_type,
            json: ByteString::from(json),
            accepted: now,
        });
        self.window.push_back(ev.clone());
        self.trim_window(now);
        match msg.event_type.retention() {
            Retention::Important => {
                self.replay_ring.push_back(ev.clone());
                while self.replay_ring.len() > self.settings.replay_size {
                    self.replay_ring.pop_front();
                }
            }
            Retention::LatestOnly => {
                self.latest.insert(msg.event_type, ev.clone());
            }
            Retention::Transient | Retention::Direct => {}
        }
        ev
    }

    fn replay_for_new_client(&self) -> ReplayBatch {
        let mut events: Vec<SharedEvent> = self.replay_ring.iter().cloned().collect();
        events.extend(self.latest.values().cloned());
        events.sort_by_key(|e| e.seq);
        ReplayBatch {
            events,
            complete: true,
            epoch: self.epoch.clone(),
            last_seq: self.seq,
        }
    }

    fn replay_for_resume(&mut self, epoch: Option<&str>, last_seq: u64) -> ReplayBatch {
        self.trim_window(Instant::now());
        let same_epoch = epoch.is_none_or(|e| e == &*self.epoch);
        let (events, complete) = if !same_epoch || last_seq > self.seq {
            // Another stream, or a position this stream never reached: the client's
            // position is gone; it gets what we have and starts from a snapshot.
            (self.replay_for_new_client().events, false)
        } else {
            let oldest = self.window.front().map(|e| e.seq).unwrap_or(self.seq + 1);
            let complete = last_seq + 1 >= oldest;
            let start = self.window.partition_point(|e| e.seq <= last_seq);
            (self.window.range(start..).cloned().collect(), complete)
        };
        ReplayBatch {
            events,
            complete,
            epoch: self.epoch.clone(),
            last_seq: self.seq,
        }
    }
}

/// Formats an f64 as a JSON number (finite values only; non-finite becomes 0).
/// Writes an envelope's opening, up to and including `"data":`, into `out`; the caller
/// writes the data (valid JSON) and then `}`. The one place the envelope is spelled out:
/// hand-built so a payload's bytes are copied once.
pub fn open_envelope(
    out: &mut String,
    seq: u64,
    timestamp: f64,
    kind: EventType,
    session_id: &str,
) {
    use std::fmt::Write;
    let session = serde_json::to_string(session_id).unwrap_or_else(|_| "\"system\"".into());
    let _ = write!(
        out,
        r#"{{"version":"{PROTOCOL_VERSION}","seq":{seq},"timestamp":{},"type":"{}","session_id":{session},"data":"#,
        json_f64(timestamp),
        kind.as_str(),
    );
}

/// An envelope as the hub wrote it, read without copying its payload: for observers
/// that need its session or forward its `data` (the cluster, satellites, answers).
#[derive(Debug, serde::Deserialize)]
pub struct EnvelopeRef<'a> {
    pub timestamp: f64,
    #[serde(rename = "type", borrow)]
    pub kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub session_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub data: &'a RawValue,
}

impl<'a> EnvelopeRef<'a> {
    /// Reads `json` (`None` when it is not an envelope).
    pub fn read(json: &'a [u8]) -> Option<EnvelopeRef<'a>> {
        serde_json::from_slice(json).ok()
    }
}

/// A whole envelope around `data` (valid JSON).
pub fn envelope(seq: u64, timestamp: f64, kind: EventType, session_id: &str, data: &str) -> String {
    let mut out = String::with_capacity(data.len() + session_id.len() + 112);
    open_envelope(&mut out, seq, timestamp, kind, session_id);
    out.push_str(data);
    out.push('}');
    out
}

fn json_f64(v: f64) -> String {
    if v.is_finite() {
        // Millisecond-and-better precision, no exponent for timestamps.
        format!("{v:.6}")
    } else {
        "0".to_string()
    }
}

impl Actor for EventHub {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        tracing::info!(epoch = %self.epoch, "event hub started");
    }
}

impl Handler<Publish> for EventHub {
    type Result = ();

    fn handle(&mut self, msg: Publish, ctx: &mut Context<Self>) {
        let ev = self.accept(msg);
        let t = ev.event_type;
        self.counters.event_accepted(t);
        self.published.store(self.seq, Ordering::Relaxed);
        for (_, mask, r) in &self.observers {
            if mask.contains(t) {
                r.do_send(HubDelivery::Event(ev.clone()));
            }
        }
        if self.subscribers.is_empty() {
            return;
        }
        self.pending.push(ev);
        if self.flush_scheduled {
            return;
        }
        let since = self.last_flush.elapsed();
        if since >= BATCH_WINDOW {
            self.flush();
        } else {
            self.flush_scheduled = true;
            ctx.run_later(BATCH_WINDOW - since, |act, _| act.flush());
        }
    }
}

impl Handler<Register> for EventHub {
    type Result = ();

    fn handle(&mut self, msg: Register, _: &mut Context<Self>) {
        self.clients.insert(
            msg.client_id,
            Client {
                recipient: msg.recipient,
                mask: None,
            },
        );
        self.counters
            .set_connections(self.clients.len(), self.subscribers.len());
    }
}

impl Handler<Unregister> for EventHub {
    type Result = ();

    fn handle(&mut self, msg: Unregister, _: &mut Context<Self>) {
        if let Some(c) = self.clients.remove(&msg.client_id) {
            if c.mask.is_some() {
                self.rebuild_subscribers();
            } else {
                self.counters
                    .set_connections(self.clients.len(), self.subscribers.len());
            }
        }
    }
}

impl Handler<Subscribe> for EventHub {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) {
        // Whatever was published before this goes out first, as it did unbatched.
        self.flush();
        let batch = match &msg.start {
            StartAt::Replay => Some(self.replay_for_new_client()),
            StartAt::Resume { epoch, last_seq } => {
                Some(self.replay_for_resume(epoch.as_deref(), *last_seq))
            }
            StartAt::Live => None,
        };
        let Some(client) = self.clients.get_mut(&msg.client_id) else {
            return;
        };
        client.mask = Some(msg.mask);
        if let Some(batch) = batch {
            // Same mailbox as the live events that follow: the order on the wire holds.
            client.recipient.do_send(HubDelivery::Replay(batch));
        }
        self.rebuild_subscribers();
    }
}

impl Handler<GetStatus> for EventHub {
    type Result = HubStatus;

    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> HubStatus {
        // The status's last_seq has been sent to the subscribers.
        self.flush();
        HubStatus {
            epoch: self.epoch.clone(),
            last_seq: self.seq,
            clients: self.clients.len(),
            subscribed: self.subscribers.len(),
            window_len: self.window.len(),
            replay_len: self.replay_ring.len(),
        }
    }
}

impl Handler<GetCounters> for EventHub {
    type Result = MessageResult<GetCounters>;

    fn handle(&mut self, _: GetCounters, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.counters.snapshot(self.seq))
    }
}

impl Handler<Observe> for EventHub {
    type Result = ();

    fn handle(&mut self, msg: Observe, _: &mut Context<Self>) {
        self.observers.retain(|(name, _, _)| *name != msg.name);
        self.observers.push((msg.name, msg.mask, msg.recipient));
        self.rebuild_subscribers();
    }
}

impl Handler<Shutdown> for EventHub {
    type Result = usize;

    fn handle(&mut self, msg: Shutdown, _: &mut Context<Self>) -> usize {
        self.flush();
        for c in self.clients.values() {
            c.recipient
                .do_send(HubDelivery::Shutdown(msg.reason.clone()));
        }
        self.clients.len()
    }
}

// ---------------------------------------------------------------------------------------
// The handle every actor publishes through
// ---------------------------------------------------------------------------------------

/// The cheap, cloneable handle through which everything publishes. Never blocks, never
/// fails the caller: a payload that cannot be serialised is logged and dropped, and a hub
/// that has stopped (shutdown) silently discards.
#[derive(Clone)]
pub struct HubHandle {
    addr: Addr<EventHub>,
    epoch: Arc<str>,
    published: Arc<AtomicU64>,
    counters: Arc<HubCounters>,
    wanted: Arc<AtomicU64>,
}

impl HubHandle {
    /// Does any subscribed client or observer want events of type `t`? (For costly, opt-in events
    /// such as `tts_audio`: skip producing them when nobody listens.)
    pub fn wants(&self, t: EventType) -> bool {
        TypeMask::ALL.bits() & self.wanted.load(Ordering::Relaxed) & (1u64 << (t as u32)) != 0
    }

    /// Publishes a typed payload for `session_id` (`"system"` for process-wide events).
    pub fn publish<P: EventPayload>(&self, session_id: &str, payload: &P) {
        match serde_json::value::to_raw_value(payload) {
            Ok(data) => self.addr.do_send(Publish {
                session_id: session_id.to_string(),
                event_type: P::TYPE,
                data,
            }),
            Err(e) => {
                tracing::error!(event_type = %P::TYPE, error = %e, "event payload failed to serialise; dropped")
            }
        }
    }

    /// Publishes an already-serialised payload (the synthetic load generator uses this so
    /// the measured path is the hub's, not the generator's serialiser).
    pub fn publish_raw(&self, session_id: &str, event_type: EventType, data: Box<RawValue>) {
        self.addr.do_send(Publish {
            session_id: session_id.to_string(),
            event_type,
            data,
        });
    }

    /// The hub's actor address (to register sessions and ask for status).
    pub fn addr(&self) -> &Addr<EventHub> {
        &self.addr
    }

    /// The stream's epoch.
    pub fn epoch(&self) -> &Arc<str> {
        &self.epoch
    }

    /// The latest seq the hub has assigned (relaxed read, for status displays).
    pub fn last_seq(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// The process-wide counters (events per type, clients, commands, slow consumers).
    pub fn counters(&self) -> &Arc<HubCounters> {
        &self.counters
    }
}
