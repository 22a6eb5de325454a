//! Live latency and system metrics of a running `coda serve`: one line per turn's
//! `latency_trace`, per `system_metrics` sample, per `alert`.
//!
//! ```sh
//! cargo run --example perf_watch -- [ws://127.0.0.1:8765/ws]
//! ```

use coda_protocol::{RawEnvelope, PROTOCOL_VERSION};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws://127.0.0.1:8765/ws".into());
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    let hello = serde_json::json!({
        "type": "hello",
        "data": {
            "client": "perf_watch",
            "protocol_version": PROTOCOL_VERSION,
            "subscribe": ["latency_trace", "system_metrics", "alert", "component_status"]
        }
    });
    ws.send(Message::Text(hello.to_string().into())).await?;
    let f = |v: &serde_json::Value, k: &str| {
        v.get(k)
            .and_then(|x| x.as_f64())
            .map(|x| format!("{x:8.1}"))
            .unwrap_or_else(|| "       -".into())
    };
    println!(
        "{:<16} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "turn", "intent", "ttft", "llm", "audio1", "total", "kernel"
    );
    while let Some(msg) = ws.next().await {
        let Message::Text(text) = msg? else { continue };
        let ev: RawEnvelope = serde_json::from_str(&text)?;
        let d = &ev.data;
        match ev.event_type.as_str() {
            "latency_trace" => println!(
                "{:<16} {} {} {} {} {} {}",
                d["turn_id"].as_str().unwrap_or("?"),
                f(d, "intent_ms"),
                f(d, "llm_ttft_ms"),
                f(d, "llm_ms"),
                f(d, "tts_first_audio_ms"),
                f(d, "total_ms"),
                f(d, "kernel_ms"),
            ),
            "system_metrics" => println!(
                "  system: cpu {:.1}%  rss {:.1} MB{}",
                d["cpu_percent"].as_f64().unwrap_or(0.0),
                d["memory_mb"].as_f64().unwrap_or(0.0),
                d.get("gpu_vram_mb")
                    .and_then(|g| g.as_f64())
                    .map(|g| format!("  gpu {g:.0} MB"))
                    .unwrap_or_default()
            ),
            "alert" => println!(
                "  ALERT {} = {} (threshold {}) {}",
                d["metric"],
                d["value"],
                d["threshold"],
                if d["cleared"] == true {
                    "cleared"
                } else {
                    "firing"
                }
            ),
            "component_status" => println!(
                "  component {} → {} (restarts {})",
                d["component"], d["state"], d["restarts"]
            ),
            _ => {}
        }
    }
    Ok(())
}
