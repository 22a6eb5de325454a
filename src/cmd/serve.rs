//! `coda serve`: the assistant core (event hub, WebSocket server, HTTP endpoints).

use std::io::Write;

use clap::Args;

use super::{init_logging_with, ConfigChoice};
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
    // OpenTelemetry only when an endpoint is configured: otherwise no layer, no threads.
    let otel = crate::telemetry::TelemetrySettings::resolve(&loaded.settings.telemetry, |k| {
        std::env::var(k).ok()
    });
    let (telemetry, layer, otel_error) = match otel.as_ref().map(crate::telemetry::Telemetry::start)
    {
        Some(Ok((t, layer))) => (Some(t), Some(layer), None),
        Some(Err(e)) => (None, None, Some(e.to_string())),
        None => (None, None, None),
    };
    init_logging_with(
        &loaded.settings.log.level,
        loaded.settings.log.format,
        layer,
    );
    if let Some(e) = otel_error {
        tracing::warn!(error = %e, "OpenTelemetry export is off");
    } else if let Some(s) = &otel {
        tracing::info!(endpoint = %s.endpoint, service = %s.service_name, "exporting OpenTelemetry traces and metrics");
    }
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
    let result = system.block_on(async {
        let running = server::start(&loaded, synthetic).await?;
        let metrics = running.metrics.clone();
        if let Some(t) = &telemetry {
            t.follow_metrics(metrics.clone());
        }
        // One machine-readable line on stdout: scripts and `coda bench` read it.
        println!("listening ws://{}/ws", running.addr);
        let _ = std::io::stdout().flush();
        let r = running.serve_until_signal().await;
        if let Some(t) = &telemetry {
            t.refresh(&metrics).await;
        }
        r
    });
    // After the server stopped: every turn's spans are closed; export them and the last
    // metrics before exiting (SIGTERM included).
    if let Some(t) = telemetry {
        t.shutdown();
    }
    result
}
