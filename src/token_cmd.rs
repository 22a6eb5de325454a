//! `coda token create|list|revoke|rotate`: tokens live hashed in the store; the secret is
//! printed once, at creation or rotation.

use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;
use coda_actors::auth::{TokenInfo, TokenStore};
use coda_actors::store::{SledStore, Storage, StoreError};

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

fn open(loaded: &Loaded) -> anyhow::Result<TokenStore> {
    let dir = loaded.settings.storage_dir();
    match SledStore::open(&dir) {
        Ok(s) => {
            let storage: Arc<dyn Storage> = Arc::new(s);
            Ok(TokenStore::new(storage))
        }
        Err(e @ StoreError::Locked { .. }) => Err(anyhow::anyhow!(
            "{e}\n  Token changes need the store: stop `coda serve`, run this again, then start it (tokens are checked on every new connection)."
        )),
        Err(e) => Err(e.into()),
    }
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
