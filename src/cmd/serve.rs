//! `coda serve`: the assistant core (event hub, WebSocket server, HTTP endpoints).

use std::io::Write;

use clap::Args;

use super::{init_logging, ConfigChoice};
use crate::config::{ConfigError, OverrideValue};
use crate::server;
use crate::synthetic::SyntheticOptions;

/// `coda serve` flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to bind (server.host). Non-loopback requires --auth.
    #[arg(long)]
    pub host: Option<String>,
    /// Port (server.port; 0 picks a free one).
    #[arg(long)]
    pub port: Option<u16>,
    /// Require token auth (auth.required = true).
    #[arg(long)]
    pub auth: bool,
    /// Diagnostic load: publish RATE `diagnostic_tick` events per second.
    #[arg(long, value_name = "RATE")]
    pub emit_synthetic: Option<f64>,
    /// Size of each synthetic event envelope, in bytes.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub synthetic_bytes: usize,
    /// Start the synthetic load once N clients are receiving events.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub synthetic_wait_clients: usize,
}

/// `coda serve`: loads the configuration with the flags' overrides, then serves until a
/// signal.
pub fn run(choice: &ConfigChoice, args: ServeArgs) -> anyhow::Result<()> {
    let mut overrides = Vec::new();
    if let Some(h) = &args.host {
        overrides.push((
            "server.host".into(),
            OverrideValue::Str(h.clone()),
            "--host".into(),
        ));
    }
    if let Some(p) = args.port {
        overrides.push((
            "server.port".into(),
            OverrideValue::Int(i64::from(p)),
            "--port".into(),
        ));
    }
    if args.auth {
        overrides.push((
            "auth.required".into(),
            OverrideValue::Bool(true),
            "--auth".into(),
        ));
    }
    let loaded = choice.load(overrides)?;
    init_logging(&loaded.settings.log.level, loaded.settings.log.format);
    let synthetic = match args.emit_synthetic {
        Some(rate) if !(rate.is_finite() && rate > 0.0) => {
            return Err(ConfigError::Invalid {
                key: "--emit-synthetic".into(),
                problem: "must be a positive rate (events per second)".into(),
            }
            .into())
        }
        Some(rate) => Some(SyntheticOptions {
            rate,
            bytes: args.synthetic_bytes,
            wait_clients: args.synthetic_wait_clients,
        }),
        None => None,
    };
    coda_actors::supervise::install_panic_hook();
    let system = actix_rt::System::new();
    system.block_on(async move {
        let running = server::start(&loaded, synthetic).await?;
        // One machine-readable line on stdout: scripts and `coda bench` read it.
        println!("listening ws://{}/ws", running.addr);
        let _ = std::io::stdout().flush();
        running.serve_until_signal().await
    })
}
