//! The diagnostic load generator (`coda serve --emit-synthetic RATE`): publishes
//! `diagnostic_tick` events of a chosen size through the real hub, so load tests measure
//! the real path. Off unless asked for.

use std::time::{Duration, Instant};

use coda_actors::hub::{unix_now, GetStatus, HubHandle};
use coda_protocol::{EventType, SYSTEM_SESSION};
use serde_json::value::RawValue;

/// Load generator settings.
#[derive(Debug, Clone)]
pub struct SyntheticOptions {
    /// Events per second.
    pub rate: f64,
    /// Approximate size of each whole envelope, in bytes.
    pub bytes: usize,
    /// Wait until this many clients are receiving live events before starting.
    pub wait_clients: usize,
}

/// Envelope bytes around the padding (measured on a real tick, rounded up).
const OVERHEAD: usize = 150;

/// Runs the generator until the process ends.
pub async fn run(hub: HubHandle, opts: SyntheticOptions) {
    if opts.wait_clients > 0 {
        tracing::info!(
            clients = opts.wait_clients,
            "synthetic load: waiting for clients"
        );
        loop {
            match hub.addr().send(GetStatus).await {
                Ok(st) if st.subscribed >= opts.wait_clients => break,
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(_) => return,
            }
        }
    }
    tracing::info!(
        rate = opts.rate,
        bytes = opts.bytes,
        "synthetic load: started"
    );
    let padding = "x".repeat(opts.bytes.saturating_sub(OVERHEAD));
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * opts.rate) as u64;
        while sent < due {
            let json = format!(
                r#"{{"index":{sent},"emitted_at":{:.6},"padding":"{padding}"}}"#,
                unix_now()
            );
            match RawValue::from_string(json) {
                Ok(raw) => hub.publish_raw(SYSTEM_SESSION, EventType::DiagnosticTick, raw),
                Err(e) => {
                    tracing::error!(error = %e, "synthetic payload invalid; generator stopped");
                    return;
                }
            }
            sent += 1;
        }
    }
}
