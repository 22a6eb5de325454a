//! Counters fed by the one publishing path and by the sessions: events accepted per type,
//! connected clients, slow-consumer cut-offs, commands. Relaxed atomics, one per counter,
//! no locks: the hub's hot path pays one `fetch_add` per event. `/metrics` and
//! `component_timing` read them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use coda_protocol::EventType;

const TYPES: usize = EventType::ALL.len();

/// What a limit refused (each a counter: `/metrics` `coda_refusals_total{kind}`, and
/// `<kind>_refused` in `component_timing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// An upgrade refused for its address's connection count or rate.
    Connection,
    /// A frame that closed its connection (declared size, reserved bits, control frame).
    Frame,
    /// A turn refused because `conversation.max_turns_in_flight` turns are running.
    Turn,
    /// Client audio refused because `audio.max_client_streams` are listening.
    ClientAudio,
    /// A memory write refused because the writer's queue is full.
    MemoryWrite,
}

impl Refusal {
    pub const ALL: [Refusal; 5] = [
        Refusal::Connection,
        Refusal::Frame,
        Refusal::Turn,
        Refusal::ClientAudio,
        Refusal::MemoryWrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Connection => "connection",
            Refusal::Frame => "frame",
            Refusal::Turn => "turn",
            Refusal::ClientAudio => "client_audio",
            Refusal::MemoryWrite => "memory_write",
        }
    }
}

/// Process-wide counters. Shared as `Arc<HubCounters>` through [`super::HubHandle`].
#[derive(Debug)]
pub struct HubCounters {
    /// Events accepted by the hub, by type (index: the `EventType` discriminant).
    events: [AtomicU64; TYPES],
    clients: AtomicU64,
    subscribed: AtomicU64,
    slow_disconnects: AtomicU64,
    commands: AtomicU64,
    command_errors: AtomicU64,
    refusals: [AtomicU64; Refusal::ALL.len()],
    /// LLM usage by (provider, model): labels are open-ended, so a map under a lock
    /// (taken once per generation, not per event).
    llm: Mutex<BTreeMap<(String, String), LlmUsageTotals>>,
}

/// Tokens and cost of one provider/model since start (`/metrics`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LlmUsageTotals {
    /// Generations.
    pub requests: u64,
    /// Prompt tokens (estimated ones included).
    pub prompt_tokens: u64,
    /// Generated tokens (estimated ones included).
    pub completion_tokens: u64,
    /// Generations whose counts were estimated.
    pub estimated: u64,
    /// Cost of the priced generations.
    pub cost: f64,
    /// Its currency (the configured one; `None` while nothing was priced).
    pub currency: Option<String>,
    /// How the model is priced (`priced`, `free`, `unknown`).
    pub pricing: coda_protocol::Pricing,
}

impl Default for HubCounters {
    fn default() -> Self {
        HubCounters {
            events: std::array::from_fn(|_| AtomicU64::new(0)),
            clients: AtomicU64::new(0),
            subscribed: AtomicU64::new(0),
            slow_disconnects: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            command_errors: AtomicU64::new(0),
            refusals: std::array::from_fn(|_| AtomicU64::new(0)),
            llm: Mutex::new(BTreeMap::new()),
        }
    }
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CounterSnapshot {
    /// The hub's latest seq when the snapshot was taken (0 when read outside the hub).
    pub last_seq: u64,
    /// Events accepted per type, every type (zeros included), in protocol order.
    pub events: Vec<(EventType, u64)>,
    /// Registered WebSocket connections.
    pub clients: u64,
    /// Connections receiving live events.
    pub subscribed: u64,
    /// Connections cut off because their outbound queue filled.
    pub slow_disconnects: u64,
    /// Commands parsed and dispatched.
    pub commands: u64,
    /// `command_error` answers sent.
    pub command_errors: u64,
    /// Refusals by a limit, by kind, every kind, in [`Refusal::ALL`] order.
    pub refusals: Vec<(Refusal, u64)>,
}

impl CounterSnapshot {
    /// Every event accepted, all types together.
    pub fn events_total(&self) -> u64 {
        self.events.iter().map(|(_, n)| n).sum()
    }
}

impl HubCounters {
    /// Counts one accepted event (the hub calls this as it assigns the seq).
    #[inline]
    pub fn event_accepted(&self, t: EventType) {
        self.events[t as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Events of type `t` accepted so far.
    pub fn events(&self, t: EventType) -> u64 {
        self.events[t as usize].load(Ordering::Relaxed)
    }

    /// Every event accepted so far.
    pub fn events_total(&self) -> u64 {
        self.events.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Registered WebSocket connections now.
    pub fn clients(&self) -> u64 {
        self.clients.load(Ordering::Relaxed)
    }

    pub(super) fn set_connections(&self, clients: usize, subscribed: usize) {
        self.clients.store(clients as u64, Ordering::Relaxed);
        self.subscribed.store(subscribed as u64, Ordering::Relaxed);
    }

    /// A connection was cut off as a slow consumer.
    pub fn slow_disconnect(&self) {
        self.slow_disconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// A command was parsed and dispatched.
    pub fn command(&self) {
        self.commands.fetch_add(1, Ordering::Relaxed);
    }

    /// A `command_error` was sent.
    pub fn command_error(&self) {
        self.command_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A limit refused something.
    pub fn refused(&self, kind: Refusal) {
        self.refusals[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Adds one generation's usage to its provider/model's totals.
    pub fn llm_usage(&self, provider: &str, model: &str, u: &coda_protocol::TokenUsage) {
        let mut map = self.llm.lock().unwrap_or_else(|p| p.into_inner());
        let t = map
            .entry((provider.to_string(), model.to_string()))
            .or_default();
        t.requests += 1;
        t.prompt_tokens += u.input_tokens;
        t.completion_tokens += u.output_tokens;
        t.estimated += u64::from(u.estimated);
        t.cost += u.cost.unwrap_or(0.0);
        if u.currency.is_some() {
            t.currency.clone_from(&u.currency);
        }
        t.pricing = u.pricing;
    }

    /// LLM usage by (provider, model), sorted.
    pub fn llm_usage_snapshot(&self) -> Vec<((String, String), LlmUsageTotals)> {
        let map = self.llm.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Reads every counter. Taken inside the hub (see [`super::GetCounters`]) the event
    /// counts and `last_seq` agree exactly; read elsewhere they may be mid-update.
    pub fn snapshot(&self, last_seq: u64) -> CounterSnapshot {
        CounterSnapshot {
            last_seq,
            events: EventType::ALL
                .iter()
                .map(|t| (*t, self.events(*t)))
                .collect(),
            clients: self.clients(),
            subscribed: self.subscribed.load(Ordering::Relaxed),
            slow_disconnects: self.slow_disconnects.load(Ordering::Relaxed),
            commands: self.commands.load(Ordering::Relaxed),
            command_errors: self.command_errors.load(Ordering::Relaxed),
            refusals: Refusal::ALL
                .iter()
                .map(|k| (*k, self.refusals[*k as usize].load(Ordering::Relaxed)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_type() {
        let c = HubCounters::default();
        c.event_accepted(EventType::Alert);
        c.event_accepted(EventType::Alert);
        c.event_accepted(EventType::LlmToken);
        let s = c.snapshot(3);
        assert_eq!(s.events_total(), 3);
        assert_eq!(c.events_total(), 3);
        assert_eq!(s.events.len(), EventType::ALL.len());
        for (t, n) in &s.events {
            let want = match t {
                EventType::Alert => 2,
                EventType::LlmToken => 1,
                _ => 0,
            };
            assert_eq!(*n, want, "{t}");
        }
    }
}
