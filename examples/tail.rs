//! A minimal client of a running `coda serve`: says hello, prints the replay and the live
//! stream, and shows how a client tracks `{epoch, last_seq}` to resume later.
//!
//! ```sh
//! cargo run --example tail -- ws://127.0.0.1:8765/ws
//! ```

use coda_protocol::{HelloReply, RawEnvelope, PROTOCOL_VERSION};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws://127.0.0.1:8765/ws".to_string());
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    let hello = serde_json::json!({
        "id": "hello-1",
        "type": "hello",
        "data": {"client": "example-tail", "protocol_version": PROTOCOL_VERSION}
    });
    ws.send(Message::Text(hello.to_string().into())).await?;

    let mut last_seq = 0u64;
    while let Some(msg) = ws.next().await {
        let Message::Text(text) = msg? else { continue };
        let env: RawEnvelope = serde_json::from_str(&text)?;
        match env.event_type.as_str() {
            "command_result" if env.data["id"] == "hello-1" => {
                let reply: HelloReply = serde_json::from_value(env.data["data"].clone())?;
                println!(
                    "connected: server {} epoch {} at seq {}",
                    reply.server_version, reply.epoch, reply.last_seq
                );
            }
            "replay" => {
                let events: Vec<RawEnvelope> = serde_json::from_value(env.data["events"].clone())?;
                println!("replay: {} recent events", events.len());
                for e in events {
                    println!("  #{} {}", e.seq, e.event_type);
                }
                last_seq = env.seq;
            }
            _ => {
                if env.seq > last_seq + 1 && last_seq > 0 {
                    println!("(filtered or missed: {} events)", env.seq - last_seq - 1);
                }
                last_seq = env.seq;
                println!("#{} {} {}", env.seq, env.event_type, env.data);
            }
        }
    }
    Ok(())
}
