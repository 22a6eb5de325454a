//! A hub subscriber that keeps every event it gets: what tests, benchmarks and tools use
//! to see what the system published.

use std::sync::{Arc, Mutex};

use actix::prelude::*;
use coda_protocol::RawEnvelope;

use super::{HubDelivery, HubHandle, Register, StartAt, Subscribe, TypeMask};

/// The events recorded so far, oldest first.
pub type Recorded = Arc<Mutex<Vec<RawEnvelope>>>;

struct Recorder(Recorded);

impl Actor for Recorder {
    type Context = Context<Self>;
}

impl Handler<HubDelivery> for Recorder {
    type Result = ();

    fn handle(&mut self, msg: HubDelivery, _: &mut Context<Self>) {
        for ev in msg.live() {
            if let Ok(env) = serde_json::from_str(&ev.json) {
                self.0.lock().unwrap_or_else(|p| p.into_inner()).push(env);
            }
        }
    }
}

/// Records, from now on, every event of `mask` that `hub` publishes, as client
/// `client_id` (pick one no real client uses).
pub fn record_events(hub: &HubHandle, client_id: u64, mask: TypeMask) -> Recorded {
    let events = Recorded::default();
    let rec = Recorder(events.clone()).start();
    hub.addr().do_send(Register {
        client_id,
        recipient: rec.recipient(),
    });
    hub.addr().do_send(Subscribe {
        client_id,
        mask,
        start: StartAt::Live,
    });
    events
}
