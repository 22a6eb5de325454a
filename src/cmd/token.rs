//! `coda token create|list|revoke|rotate`: tokens live hashed in the store; the secret is
//! printed once, at creation or rotation.

use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;
use coda_actors::auth::{TokenInfo, TokenStore};
use coda_actors::store::{SledStore, Storage, StoreError};

use crate::client::{self, Target};
use crate::config::Loaded;

/// `coda token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print its secret (shown only this once).
    Create {
        /// A name for the token (e.g. the dashboard or machine using it).
        name: String,
        /// Lifetime, e.g. `30d`, `12h`, `90m` (default: no expiry).
        #[arg(long, value_parser = parse_duration)]
        expires: Option<Duration>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// List tokens (never their secrets).
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id or name.
    Revoke {
        /// Token id (from `coda token list`) or name.
        token: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Replace a token's secret (the old one stops working at once).
    Rotate {
        /// Token id or name.
        token: String,
        /// Lifetime of the new secret.
        #[arg(long, value_parser = parse_duration)]
        expires: Option<Duration>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 30d, 12h, 90m)"))
}

/// Where token operations go: the store itself, or — while `coda serve` holds the store
/// — the running server, over its WebSocket with the per-boot token.
enum Backend {
    Local(TokenStore),
    Server(Target),
}

fn open(loaded: &Loaded) -> anyhow::Result<Backend> {
    let dir = loaded.settings.storage_dir();
    match SledStore::open(&dir) {
        Ok(s) => {
            let storage: Arc<dyn Storage> = Arc::new(s);
            Ok(Backend::Local(TokenStore::new(storage)))
        }
        Err(e @ StoreError::Locked { .. }) => {
            let target = client::resolve(loaded, None, None);
            if target.token.is_none() {
                anyhow::bail!(
                    "{e}\n  A server holds the store, but its per-boot token file ({}) cannot be read: run this as the user running `coda serve`, or stop it first.",
                    loaded.settings.token_file(loaded.settings.server.port).display()
                );
            }
            Ok(Backend::Server(target))
        }
        Err(e) => Err(e.into()),
    }
}

impl Backend {
    fn create(&self, name: &str, ttl: Option<Duration>) -> anyhow::Result<(TokenInfo, String)> {
        match self {
            Backend::Local(s) => Ok(s.create(name, ttl)?),
            Backend::Server(t) => with_secret(admin(
                t,
                serde_json::json!({"type": "token_create", "data": {"name": name, "expires_s": ttl.map(|d| d.as_secs_f64())}}),
            )?),
        }
    }

    fn rotate(&self, token: &str, ttl: Option<Duration>) -> anyhow::Result<(TokenInfo, String)> {
        match self {
            Backend::Local(s) => Ok(s.rotate(token, ttl)?),
            Backend::Server(t) => with_secret(admin(
                t,
                serde_json::json!({"type": "token_rotate", "data": {"token": token, "expires_s": ttl.map(|d| d.as_secs_f64())}}),
            )?),
        }
    }

    fn revoke(&self, token: &str) -> anyhow::Result<TokenInfo> {
        match self {
            Backend::Local(s) => Ok(s.revoke(token)?),
            Backend::Server(t) => {
                let data = admin(
                    t,
                    serde_json::json!({"type": "token_revoke", "data": {"token": token}}),
                )?;
                Ok(serde_json::from_value(data["token"].clone())?)
            }
        }
    }

    fn list(&self) -> anyhow::Result<Vec<TokenInfo>> {
        match self {
            Backend::Local(s) => Ok(s.list()?),
            Backend::Server(t) => {
                let data = admin(t, serde_json::json!({"type": "token_list"}))?;
                Ok(serde_json::from_value(data["tokens"].clone())?)
            }
        }
    }
}

fn with_secret(data: serde_json::Value) -> anyhow::Result<(TokenInfo, String)> {
    let info: TokenInfo = serde_json::from_value(data["token"].clone())?;
    let secret = data["secret"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("server answered without a secret"))?
        .to_string();
    Ok((info, secret))
}

/// Sends one admin command to the running server and returns its `command_result` data.
fn admin(target: &Target, mut command: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    command["id"] = serde_json::json!("admin-1");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut ws = client::connect(target).await?;
        ws.send(Message::Text(command.to_string().into())).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let msg = tokio::time::timeout_at(deadline, ws.next())
                .await
                .map_err(|_| anyhow::anyhow!("the server did not answer within 10 s"))?;
            let Some(msg) = msg else {
                anyhow::bail!("the server closed the connection")
            };
            let Message::Text(text) = msg? else { continue };
            let env: coda_protocol::RawEnvelope = serde_json::from_str(&text)?;
            if env.data.get("id").and_then(|i| i.as_str()) != Some("admin-1") {
                continue;
            }
            let _ = ws.close(None).await;
            return match env.event_type.as_str() {
                "command_result" => Ok(env.data["data"].clone()),
                _ => Err(anyhow::anyhow!(
                    "server refused: {}",
                    env.data["message"].as_str().unwrap_or("unknown error")
                )),
            };
        }
    })
}

/// Runs a token command.
pub fn run(loaded: &Loaded, cmd: TokenCommand) -> anyhow::Result<()> {
    let store = open(loaded)?;
    match cmd {
        TokenCommand::Create {
            name,
            expires,
            json,
        } => {
            let (info, secret) = store.create(&name, expires)?;
            print_secret(&info, &secret, json, "created")
        }
        TokenCommand::Rotate {
            token,
            expires,
            json,
        } => {
            let (info, secret) = store.rotate(&token, expires)?;
            print_secret(&info, &secret, json, "rotated")
        }
        TokenCommand::Revoke { token, json } => {
            let info = store.revoke(&token)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!("revoked token {} ({})", info.id, info.name);
            }
            Ok(())
        }
        TokenCommand::List { json } => {
            let list = store.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            if list.is_empty() {
                println!("no tokens (create one with `coda token create NAME`)");
                return Ok(());
            }
            println!(
                "{:<10} {:<24} {:<22} {:<22} STATUS",
                "ID", "NAME", "CREATED", "EXPIRES"
            );
            let now = coda_actors::hub::unix_now();
            for t in list {
                let status = if t.revoked_at.is_some() {
                    "revoked"
                } else if t.expires_at.is_some_and(|e| e <= now) {
                    "expired"
                } else {
                    "active"
                };
                println!(
                    "{:<10} {:<24} {:<22} {:<22} {status}",
                    t.id,
                    t.name,
                    time(t.created_at),
                    t.expires_at.map(time).unwrap_or_else(|| "never".into())
                );
            }
            Ok(())
        }
    }
}

fn print_secret(info: &TokenInfo, secret: &str, json: bool, verb: &str) -> anyhow::Result<()> {
    if json {
        let mut v = serde_json::to_value(info)?;
        v["secret"] = serde_json::Value::String(secret.to_string());
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{verb} token {} ({})", info.id, info.name);
        println!("{secret}");
        eprintln!("This secret is shown once. Clients send it as `Authorization: Bearer <secret>`, as the `coda.token.<secret>` WebSocket subprotocol, or in a first `auth` message.");
    }
    Ok(())
}

fn time(unix: f64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_secs_f64(unix.max(0.0)),
    )
    .to_string()
}
