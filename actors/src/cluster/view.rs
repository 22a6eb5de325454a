//! The cluster view of one WebSocket client: an ordered JetStream consumer from the
//! client's position, its messages turned back into envelopes numbered by the stream
//! sequence and handed to the session like the hub's own deliveries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Recipient;
use async_nats::jetstream::consumer::{push, DeliverPolicy};
use bytestring::ByteString;
use coda_protocol::EventType;
use futures_util::StreamExt;

use super::{Cluster, ClusterError};
use crate::hub::{open_envelope, EnvelopeRef, HubDelivery, ReplayBatch, StartAt, StreamEvent};

/// The longest a replay may take to arrive from JetStream before it is sent as it is
/// (marked incomplete).
const REPLAY_WAIT: Duration = Duration::from_secs(10);

/// A view that started: the stream's epoch and last sequence when it did, and the task
/// feeding the session (abort it when the session ends).
#[derive(Debug)]
pub struct ViewStarted {
    /// The stream's identity: its name and creation time. A stream deleted and made
    /// again is another epoch.
    pub epoch: String,
    /// The stream's last sequence at the start.
    pub last_seq: u64,
    /// The feeding task.
    pub task: tokio::task::AbortHandle,
}

/// Starts feeding `recipient` the cluster's events from `start` (a replay first, then
/// live). `Resume` positions are stream sequences of `epoch`.
pub async fn open_view(
    cluster: Cluster,
    start: StartAt,
    recipient: Recipient<HubDelivery>,
) -> Result<ViewStarted, ClusterError> {
    cluster.ensure_stream().await?;
    let stream = cluster
        .js
        .get_stream(&cluster.settings.stream)
        .await
        .map_err(|e| cluster.stream_err(e))?;
    let info = stream.get_info().await.map_err(|e| cluster.stream_err(e))?;
    let epoch = format!(
        "{}-{}",
        cluster.settings.stream,
        info.created.unix_timestamp_nanos()
    );
    let last = info.state.last_sequence;
    let first = if info.state.messages == 0 {
        last + 1
    } else {
        info.state.first_sequence.max(1)
    };
    let recent = last
        .saturating_sub(cluster.settings.replay_size as u64)
        .saturating_add(1)
        .max(first);
    let (from, complete) = match &start {
        StartAt::Resume { epoch: e, last_seq } => {
            if e.as_deref().is_some_and(|e| e != epoch) || *last_seq > last {
                (recent, false)
            } else {
                let complete = last_seq + 1 >= first;
                ((last_seq + 1).max(first), complete)
            }
        }
        StartAt::Replay | StartAt::Live => (recent, true),
    };
    let most = cluster.settings.replay_max.max(1) as u64;
    let (from, complete) = if last >= from && last - from >= most {
        (last + 1 - most, false)
    } else {
        (from, complete)
    };
    let consumer = stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: cluster.client.new_inbox(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| cluster.stream_err(e))?;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| cluster.stream_err(e))?;
    let replay = Replay {
        epoch: Arc::from(epoch.as_str()),
        from,
        last,
        complete,
    };
    let task = tokio::spawn(feed(messages, recipient, replay));
    Ok(ViewStarted {
        epoch,
        last_seq: last,
        task: task.abort_handle(),
    })
}

/// What the first delivery of a view holds.
struct Replay {
    epoch: Arc<str>,
    from: u64,
    last: u64,
    complete: bool,
}

async fn feed(mut messages: push::Ordered, recipient: Recipient<HubDelivery>, replay: Replay) {
    let mut events = Vec::new();
    let mut complete = replay.complete;
    if replay.from <= replay.last {
        let deadline = tokio::time::sleep(REPLAY_WAIT);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                m = messages.next() => match m {
                    Some(Ok(m)) => {
                        let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
                        if let Some(ev) = event_of(&m, seq) {
                            events.push(Arc::new(ev));
                        }
                        if seq >= replay.last {
                            break;
                        }
                    }
                    Some(Err(e)) => tracing::debug!(error = %e, "cluster view: consumer hiccup"),
                    None => return,
                },
                _ = &mut deadline => {
                    tracing::warn!("cluster view: the replay did not arrive in time; sent incomplete");
                    complete = false;
                    break;
                }
            }
        }
    }
    let last_seq = events
        .last()
        .map_or(replay.last, |e| e.seq.max(replay.last));
    recipient.do_send(HubDelivery::Replay(ReplayBatch {
        events,
        complete,
        epoch: replay.epoch,
        last_seq,
    }));
    while let Some(m) = messages.next().await {
        if !recipient.connected() {
            return;
        }
        match m {
            Ok(m) => {
                let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
                if let Some(ev) = event_of(&m, seq) {
                    recipient.do_send(HubDelivery::Event(Arc::new(ev)));
                }
            }
            Err(e) => tracing::debug!(error = %e, "cluster view: consumer hiccup"),
        }
    }
}

/// The envelope of a stream message for a cluster client: numbered `seq` by the stream,
/// with the node that produced it and that node's own seq. `None` for what is not a
/// Coda event of a known type (logged).
fn event_of(m: &async_nats::jetstream::Message, seq: u64) -> Option<StreamEvent> {
    let header = |name: &str| {
        m.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_string())
    };
    let node = header("Coda-Node").unwrap_or_default();
    let node_seq: u64 = header("Coda-Seq").and_then(|s| s.parse().ok()).unwrap_or(0);
    let Some(stored) = EnvelopeRef::read(&m.payload) else {
        tracing::debug!(seq, "cluster view: not a Coda event; skipped");
        return None;
    };
    let Some(kind) = EventType::parse(&stored.kind) else {
        tracing::debug!(seq, kind = %stored.kind, "cluster view: an event type this version does not know; skipped");
        return None;
    };
    let mut json = String::with_capacity(m.payload.len() + node.len() + 48);
    open_envelope(&mut json, seq, stored.timestamp, kind, &stored.session_id);
    json.push_str(stored.data.get());
    json.push_str(",\"node\":");
    json.push_str(&serde_json::to_string(&node).unwrap_or_else(|_| "\"\"".into()));
    json.push_str(",\"node_seq\":");
    json.push_str(&node_seq.to_string());
    json.push('}');
    Some(StreamEvent {
        seq,
        timestamp: stored.timestamp,
        event_type: kind,
        json: ByteString::from(json),
        accepted: Instant::now(),
    })
}
