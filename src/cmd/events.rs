//! `coda events`: a terminal client that tails the event stream, reconnecting with
//! backoff and resuming from its `{epoch, last_seq}` so nothing inside the server's resume
//! window is missed.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use coda_protocol::{RawEnvelope, PROTOCOL_VERSION};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, ClientError, Target};
use crate::config::Loaded;

/// `coda events` flags.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only these event types; `*` suffix patterns allowed (repeatable), e.g. `stt_*`.
    #[arg(long = "type", short = 't', value_name = "PATTERN")]
    pub types: Vec<String>,
    /// Print each event as one JSON line (the exact envelope).
    #[arg(long)]
    pub json: bool,
    /// Server URL (default: ws://<server.host>:<server.port>/ws).
    #[arg(long)]
    pub url: Option<String>,
    /// Token (default: CODA_TOKEN, else the local server's per-boot token file).
    #[arg(long, env = "CODA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Exit after printing N events.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Exit when the connection drops instead of reconnecting.
    #[arg(long)]
    pub no_reconnect: bool,
    /// Do not print the replay of recent events sent on connect.
    #[arg(long)]
    pub no_replay: bool,
    /// Every node's events from the cluster stream (the server must be in a cluster:
    /// `[cluster]`), numbered by the stream; each line names its node.
    #[arg(long)]
    pub cluster: bool,
}

/// Runs the tail until Ctrl-C, `--count`, or (with `--no-reconnect`) a disconnect.
pub fn run(loaded: &Loaded, args: EventsArgs) -> anyhow::Result<()> {
    let target = client::resolve(loaded, args.url.clone(), args.token.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        tokio::select! {
            r = tail(&target, &args) => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

struct Position {
    epoch: Option<String>,
    last_seq: Option<u64>,
    printed: u64,
}

async fn tail(target: &Target, args: &EventsArgs) -> anyhow::Result<()> {
    let mut pos = Position {
        epoch: None,
        last_seq: None,
        printed: 0,
    };
    let mut backoff = Duration::from_millis(250);
    let mut ever_connected = false;
    loop {
        match client::connect(target).await {
            Ok(ws) => {
                ever_connected = true;
                backoff = Duration::from_millis(250);
                match session(ws, args, &mut pos).await {
                    Ok(Done::Finished) => return Ok(()),
                    Ok(Done::Disconnected(why)) => eprintln!("coda events: disconnected: {why}"),
                    Err(e) => eprintln!("coda events: {e}"),
                }
            }
            Err(e @ ClientError::Refused { .. }) | Err(e @ ClientError::BadUrl { .. }) => {
                return Err(e.into())
            }
            Err(e) if !ever_connected && args.no_reconnect => return Err(e.into()),
            Err(e) => eprintln!("coda events: {e}"),
        }
        if args.no_reconnect {
            return Ok(());
        }
        eprintln!(
            "coda events: reconnecting in {:.1} s",
            backoff.as_secs_f64()
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

enum Done {
    Finished,
    Disconnected(String),
}

async fn session(
    mut ws: client::Ws,
    args: &EventsArgs,
    pos: &mut Position,
) -> anyhow::Result<Done> {
    let mut hello = serde_json::json!({
        "id": "hello",
        "type": "hello",
        "data": {"client": "coda-events", "protocol_version": PROTOCOL_VERSION},
    });
    if !args.types.is_empty() {
        hello["data"]["subscribe"] = serde_json::json!(args.types);
    }
    if args.cluster {
        hello["data"]["scope"] = serde_json::json!("cluster");
    }
    if let Some(seq) = pos.last_seq {
        hello["data"]["last_seq"] = serde_json::json!(seq);
        hello["data"]["epoch"] = serde_json::json!(pos.epoch);
    }
    ws.send(Message::Text(hello.to_string().into())).await?;
    let resuming = pos.last_seq.is_some();
    let mut stdout = std::io::stdout();
    while let Some(msg) = ws.next().await {
        let text = match msg? {
            Message::Text(t) => t,
            Message::Close(frame) => {
                let why = frame
                    .map(|f| format!("{} ({})", f.reason, u16::from(f.code)))
                    .unwrap_or_else(|| "closed".into());
                return Ok(Done::Disconnected(why));
            }
            _ => continue,
        };
        let env: RawEnvelope = match serde_json::from_str(&text) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("coda events: unreadable message from server: {e}");
                continue;
            }
        };
        match env.event_type.as_str() {
            "replay" => {
                if let Some(epoch) = env.data.get("epoch").and_then(|e| e.as_str()) {
                    if pos.epoch.as_deref().is_some_and(|old| old != epoch) {
                        eprintln!("coda events: the server's stream changed (new epoch {epoch}): events since the last one seen may be missing");
                        pos.last_seq = None;
                    }
                    pos.epoch = Some(epoch.to_string());
                }
                let complete = env
                    .data
                    .get("complete")
                    .and_then(|c| c.as_bool())
                    .unwrap_or(true);
                if resuming && !complete {
                    eprintln!("coda events: resume incomplete: some events were no longer retained by the server");
                }
                let events: Vec<RawEnvelope> = env
                    .data
                    .get("events")
                    .and_then(|e| serde_json::from_value(e.clone()).ok())
                    .unwrap_or_default();
                let show = resuming || !args.no_replay;
                for ev in events {
                    if pos.last_seq.is_some_and(|s| ev.seq <= s) {
                        continue;
                    }
                    pos.last_seq = Some(ev.seq);
                    if show && print(&mut stdout, &ev, None, args, pos)? {
                        return Ok(Done::Finished);
                    }
                }
                if let Some(last) = env.data.get("last_seq").and_then(|s| s.as_u64()) {
                    pos.last_seq = Some(pos.last_seq.map_or(last, |s| s.max(last)));
                }
            }
            "command_result" => {
                if let Some(epoch) = env.data.pointer("/data/epoch").and_then(|e| e.as_str()) {
                    pos.epoch = Some(epoch.to_string());
                }
            }
            "command_error" | "system_error" => {
                eprintln!(
                    "coda events: server says: {}",
                    env.data
                        .get("message")
                        .and_then(|m| m.as_str())
                        .unwrap_or("?")
                );
            }
            _ => {
                if pos.last_seq.is_some_and(|s| env.seq <= s) {
                    continue;
                }
                pos.last_seq = Some(env.seq);
                if print(&mut stdout, &env, Some(&text), args, pos)? {
                    return Ok(Done::Finished);
                }
            }
        }
    }
    Ok(Done::Disconnected("connection lost".into()))
}

/// Prints one event; true when `--count` is reached.
fn print(
    out: &mut std::io::Stdout,
    ev: &RawEnvelope,
    raw: Option<&str>,
    args: &EventsArgs,
    pos: &mut Position,
) -> anyhow::Result<bool> {
    let line = if args.json {
        match raw {
            Some(r) => r.to_string(),
            None => serde_json::to_string(ev)?,
        }
    } else {
        let mut data = ev.data.to_string();
        if data.len() > 160 {
            let mut cut = 157;
            while !data.is_char_boundary(cut) {
                cut -= 1;
            }
            data.truncate(cut);
            data.push_str("...");
        }
        let node = ev
            .node
            .as_deref()
            .map(|n| format!("{n:<10} "))
            .unwrap_or_default();
        format!(
            "{:>7} {} {node}{:<20} {:<10} {}",
            ev.seq,
            clock(ev.timestamp),
            ev.event_type,
            ev.session_id,
            data
        )
    };
    let mut lock = out.lock();
    if writeln!(lock, "{line}").is_err() {
        // stdout closed (e.g. piped into `head`): stop quietly.
        return Ok(true);
    }
    let _ = lock.flush();
    pos.printed += 1;
    Ok(args.count.is_some_and(|n| pos.printed >= n))
}

/// `HH:MM:SS.mmm` UTC.
fn clock(ts: f64) -> String {
    let ms = (ts * 1000.0).max(0.0) as u64;
    let day_ms = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}
