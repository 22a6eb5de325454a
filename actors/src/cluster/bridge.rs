//! The hub → JetStream bridge: an observer of the hub that writes every event to the
//! outbox, and one task that drains the outbox to JetStream in order.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use async_nats::header::HeaderMap;
use bytes::Bytes;
use tokio::sync::Notify;

use super::outbox::{Outbox, Record};
use super::Cluster;
use crate::hub::{HubDelivery, HubHandle, Observe, TypeMask};

/// Events published to JetStream at once before their acknowledgements are awaited.
const BATCH: usize = 256;
/// Waits between attempts while NATS is unreachable.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The outbox and how the drain is woken, shared by the observer and the drain task.
struct Shared {
    outbox: Mutex<Outbox>,
    wake: Notify,
}

/// Observes the hub (every type but the opt-in audio) and hands events to the drain.
pub struct Bridge {
    hub: HubHandle,
    shared: Arc<Shared>,
    drain: Option<tokio::task::JoinHandle<()>>,
    cluster: Cluster,
}

impl Bridge {
    /// Starts the bridge for `cluster` on `hub`, with `outbox` (already opened: a leftover
    /// from an earlier run is drained first).
    pub fn start(cluster: Cluster, hub: HubHandle, outbox: Outbox) -> Addr<Bridge> {
        if !outbox.is_empty() {
            tracing::info!(
                waiting = outbox.len(),
                "events from an earlier run wait in the cluster outbox"
            );
        }
        let shared = Arc::new(Shared {
            outbox: Mutex::new(outbox),
            wake: Notify::new(),
        });
        Bridge::create(|ctx| {
            // Registered now, not in `started()`: events published before this actor first
            // runs must not be missed.
            hub.addr().do_send(Observe {
                name: "cluster",
                mask: TypeMask::DEFAULT,
                recipient: ctx.address().recipient(),
            });
            Bridge {
                hub,
                shared,
                drain: None,
                cluster,
            }
        })
    }
}

impl Actor for Bridge {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        let (cluster, shared) = (self.cluster.clone(), self.shared.clone());
        self.drain = Some(tokio::spawn(drain(cluster, shared)));
        // A leftover outbox goes out without waiting for a new event.
        self.shared.wake.notify_one();
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(d) = self.drain.take() {
            d.abort();
        }
        if let Ok(o) = self.shared.outbox.lock() {
            o.flush();
        }
    }
}

impl Handler<HubDelivery> for Bridge {
    type Result = ();

    fn handle(&mut self, msg: HubDelivery, _: &mut Context<Self>) {
        let epoch = self.hub.epoch().to_string();
        let Ok(mut outbox) = self.shared.outbox.lock() else {
            return;
        };
        for ev in msg.live() {
            let r = Record {
                epoch: epoch.clone(),
                seq: ev.seq,
                event_type: ev.event_type.as_str().to_string(),
                json: ev.json.as_bytes().to_vec(),
            };
            match outbox.push(&r) {
                Ok(0) => {}
                // Said at the 1st, 10th, 100th… drop, not at every event of an outage.
                Ok(_) if !power_of_ten(outbox.dropped()) => {}
                Ok(_) => tracing::warn!(
                    total_dropped = outbox.dropped(),
                    "the cluster outbox is full: its oldest events are being dropped"
                ),
                Err(e) => {
                    tracing::error!(error = %e, seq = ev.seq, "event not queued for the cluster")
                }
            }
        }
        drop(outbox);
        self.shared.wake.notify_one();
    }
}

/// Sends the outbox to JetStream, oldest first, for as long as the bridge runs. A batch
/// is published, then its acknowledgements are awaited in order; only the acknowledged
/// prefix leaves the outbox, and the rest is sent again (the message id makes JetStream
/// drop what it already has), so nothing is lost, doubled or reordered by a failure.
async fn drain(cluster: Cluster, shared: Arc<Shared>) {
    let node = cluster.settings.node.clone();
    let mut stream_ready = false;
    let mut backoff = BACKOFF_MIN;
    let mut outage: Option<(std::time::Instant, String)> = None;
    loop {
        let batch = match shared.outbox.lock() {
            Ok(o) => o.peek(BATCH),
            Err(_) => return,
        };
        if batch.is_empty() {
            shared.wake.notified().await;
            continue;
        }
        let result = if stream_ready {
            send(&cluster, &node, &batch).await
        } else {
            match cluster.ensure_stream().await {
                Ok(()) => {
                    stream_ready = true;
                    send(&cluster, &node, &batch).await
                }
                Err(e) => (None, Some(e.to_string())),
            }
        };
        let (acked, failure) = result;
        if let Some(key) = acked {
            if let Ok(mut o) = shared.outbox.lock() {
                if let Err(e) = o.remove_through(key) {
                    tracing::error!(error = %e, "acknowledged events stay in the cluster outbox");
                }
            }
        }
        match failure {
            None => {
                backoff = BACKOFF_MIN;
                if let Some((since, _)) = outage.take() {
                    tracing::info!(
                        node = %node,
                        after_s = since.elapsed().as_secs_f64(),
                        "JetStream reachable again; the outbox is draining"
                    );
                }
            }
            Some(why) => {
                if outage.is_none() {
                    tracing::warn!(node = %node, error = %why, "events cannot reach JetStream; they wait in the outbox");
                    outage = Some((std::time::Instant::now(), why));
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Publishes `batch`; returns the key of the last event of the acknowledged prefix, and
/// why the rest was not.
async fn send(
    cluster: &Cluster,
    node: &str,
    batch: &[(u64, Record)],
) -> (Option<u64>, Option<String>) {
    let mut pending = Vec::with_capacity(batch.len());
    let mut failure = None;
    for (key, r) in batch {
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            format!("{node}.{}.{}", r.epoch, r.seq).as_str(),
        );
        headers.insert("Coda-Node", node);
        headers.insert("Coda-Epoch", r.epoch.as_str());
        headers.insert("Coda-Seq", r.seq.to_string().as_str());
        let subject = cluster.settings.subject(&r.event_type);
        match cluster
            .js
            .publish_with_headers(subject, headers, Bytes::from(r.json.clone()))
            .await
        {
            Ok(ack) => pending.push((*key, ack)),
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        }
    }
    let mut acked = None;
    for (key, ack) in pending {
        match ack.await {
            Ok(_) => acked = Some(key),
            Err(e) => {
                failure.get_or_insert_with(|| e.to_string());
                break;
            }
        }
    }
    (acked, failure)
}

fn power_of_ten(mut n: u64) -> bool {
    while n >= 10 && n.is_multiple_of(10) {
        n /= 10;
    }
    n == 1
}

#[cfg(test)]
mod tests {
    #[test]
    fn drops_are_said_at_powers_of_ten() {
        let said: Vec<u64> = (0..2000).filter(|&n| super::power_of_ten(n)).collect();
        assert_eq!(said, [1, 10, 100, 1000]);
    }
}
