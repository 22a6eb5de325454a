//! Runs the scripted demo flow on a running `coda serve` and prints the turn's event
//! stream with timings (milliseconds since the command was sent).
//!
//! ```sh
//! coda serve &
//! cargo run --example demo_flow -- [ws://127.0.0.1:8765/ws] ["your demo sentence"]
//! ```

use std::time::Instant;

use coda_protocol::{RawEnvelope, PROTOCOL_VERSION};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:8765/ws".into());
    let text = args.next();
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    let hello = serde_json::json!({"type": "hello", "data": {"client": "demo_flow", "protocol_version": PROTOCOL_VERSION}});
    ws.send(Message::Text(hello.to_string().into())).await?;
    let mut data = serde_json::json!({});
    if let Some(t) = text {
        data["text"] = t.into();
    }
    let cmd = serde_json::json!({"id": "demo", "type": "demo_flow", "data": data});
    let sent = Instant::now();
    ws.send(Message::Text(cmd.to_string().into())).await?;
    let mut turn: Option<String> = None;
    while let Some(msg) = ws.next().await {
        let Message::Text(text) = msg? else { continue };
        let ev: RawEnvelope = serde_json::from_str(&text)?;
        let ms = sent.elapsed().as_secs_f64() * 1000.0;
        match ev.event_type.as_str() {
            "command_result" if ev.data["id"] == "demo" => {
                turn = ev.data["data"]["turn_id"].as_str().map(str::to_string);
                println!(
                    "{ms:>9.1} ms  demo started: turn {}",
                    turn.as_deref().unwrap_or("?")
                );
            }
            "command_error" => {
                anyhow::bail!("server refused: {}", ev.data["message"]);
            }
            _ => {
                let mine = ev.data.get("turn_id").and_then(|t| t.as_str()) == turn.as_deref()
                    || (ev.event_type == "mode_change" && ev.session_id.starts_with("demo-"));
                if !mine {
                    continue;
                }
                let detail = match ev.event_type.as_str() {
                    "llm_token" => format!("{:?}", ev.data["text"].as_str().unwrap_or("")),
                    "latency_trace" => ev.data.to_string(),
                    "mode_change" => ev.data["mode"].to_string(),
                    "conversation_message" => {
                        format!("{}: {}", ev.data["role"], ev.data["content"])
                    }
                    "tts_progress" | "tts_start" => ev.data["text"].to_string(),
                    "intent_result" => format!("{} ({})", ev.data["intent"], ev.data["route"]),
                    _ => String::new(),
                };
                println!(
                    "{ms:>9.1} ms  #{:<6} {:<22} {detail}",
                    ev.seq, ev.event_type
                );
                if ev.event_type == "latency_trace" {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}
