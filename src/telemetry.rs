//! OpenTelemetry export for `coda serve`: the turns' `tracing` spans (opened by the
//! actors, see `coda_actors::orchestrator::turn_span`) become OTLP traces through
//! `tracing-opentelemetry`, and the `/metrics` figures become OTLP metrics, both over
//! OTLP/HTTP with protobuf bodies.
//!
//! Off unless an endpoint is configured (`[telemetry] endpoint` or
//! `$OTEL_EXPORTER_OTLP_ENDPOINT`): then no layer is installed, no span is recorded and no
//! exporter thread runs. The SDK's batch span processor and periodic metric reader each
//! run on a thread of their own with reqwest's blocking client, so exporting never waits
//! on the actix event loops.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::TelemetryConfig;

/// The resolved export settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySettings {
    /// The collector's base URL (no trailing `/`).
    pub endpoint: String,
    /// Headers on every export.
    pub headers: BTreeMap<String, String>,
    /// `service.name`.
    pub service_name: String,
    /// Fraction of turns traced.
    pub sampling_ratio: f64,
    /// Between metric exports.
    pub export_interval: Duration,
}

impl TelemetrySettings {
    /// The settings from config and the standard `OTEL_*` variables (config wins);
    /// `None` when no endpoint is set anywhere.
    pub fn resolve(
        cfg: &TelemetryConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Option<TelemetrySettings> {
        let endpoint = Some(cfg.endpoint.trim().to_string())
            .filter(|e| !e.is_empty())
            .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT").filter(|e| !e.trim().is_empty()))?;
        let mut headers = BTreeMap::new();
        // `k=v,k2=v2`, as the OTLP exporter specification has it.
        if let Some(h) = env("OTEL_EXPORTER_OTLP_HEADERS") {
            for pair in h.split(',') {
                if let Some((k, v)) = pair.split_once('=') {
                    headers.insert(k.trim().to_string(), v.trim().to_string());
                }
            }
        }
        headers.extend(cfg.headers.clone());
        let service_name = Some(cfg.service_name.trim().to_string())
            .filter(|s| !s.is_empty())
            .or_else(|| env("OTEL_SERVICE_NAME").filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "coda".into());
        Some(TelemetrySettings {
            endpoint: endpoint.trim().trim_end_matches('/').to_string(),
            headers,
            service_name,
            sampling_ratio: cfg.sampling_ratio.clamp(0.0, 1.0),
            export_interval: Duration::from_secs_f64(cfg.export_interval_s.max(0.1)),
        })
    }
}

/// A boxed `tracing` layer for the subscriber `init_logging` builds.
pub type BoxedLayer =
    Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync + 'static>;

#[cfg(feature = "otel")]
mod otel {
    use std::sync::{Arc, Mutex};

    use actix::Addr;
    use coda_actors::metrics::prometheus::Snapshot;
    use coda_actors::metrics::{GetSnapshot, MetricsActor};
    use opentelemetry::metrics::{Meter, MeterProvider as _};
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry::KeyValue;
    use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
    use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
    use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
    use opentelemetry_sdk::Resource;
    use tracing_subscriber::Layer;

    use super::{BoxedLayer, TelemetrySettings};

    /// Why export could not start.
    #[derive(Debug, thiserror::Error)]
    #[error("OpenTelemetry export: {0}")]
    pub struct TelemetryError(String);

    /// The running exporters. [`Telemetry::shutdown`] flushes them.
    pub struct Telemetry {
        tracer: SdkTracerProvider,
        meter: SdkMeterProvider,
        /// What the metric callbacks read: the metrics actor's latest snapshot.
        snapshot: Arc<Mutex<Option<Snapshot>>>,
        interval: std::time::Duration,
    }

    impl Telemetry {
        /// Builds the exporters and the layer that feeds spans to them.
        pub fn start(s: &TelemetrySettings) -> Result<(Telemetry, BoxedLayer), TelemetryError> {
            let err = |e: &dyn std::fmt::Display| TelemetryError(e.to_string());
            coda_actors::llm::http::install_tls_provider();
            let headers: std::collections::HashMap<String, String> =
                s.headers.clone().into_iter().collect();
            let resource = Resource::builder()
                .with_service_name(s.service_name.clone())
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build();
            let spans = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(format!("{}/v1/traces", s.endpoint))
                .with_headers(headers.clone())
                .build()
                .map_err(|e| err(&e))?;
            let tracer = SdkTracerProvider::builder()
                .with_batch_exporter(spans)
                // Decided at the turn's root; its stages follow it.
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                    s.sampling_ratio,
                ))))
                .with_resource(resource.clone())
                .build();
            let metrics = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(format!("{}/v1/metrics", s.endpoint))
                .with_headers(headers)
                .build()
                .map_err(|e| err(&e))?;
            let reader = PeriodicReader::builder(metrics)
                .with_interval(s.export_interval)
                .build();
            let meter = SdkMeterProvider::builder()
                .with_reader(reader)
                .with_resource(resource)
                .build();
            let snapshot = Arc::new(Mutex::new(None));
            register_instruments(&meter.meter("coda"), &snapshot);
            // Only the actors' spans (not log events, not other crates' spans): a turn's
            // trace is its spans and their attributes.
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer.tracer("coda"))
                .with_tracked_inactivity(false)
                .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                    m.is_span() && m.target().starts_with("coda")
                }))
                .boxed();
            Ok((
                Telemetry {
                    tracer,
                    meter,
                    snapshot,
                    interval: s.export_interval,
                },
                layer,
            ))
        }

        /// Keeps the metric callbacks' snapshot fresh from the metrics actor (on the
        /// current actix arbiter), one read per export interval.
        pub fn follow_metrics(&self, metrics: Addr<MetricsActor>) {
            let (snapshot, every) = (self.snapshot.clone(), self.interval);
            actix_rt::spawn(async move {
                // Half the export interval: each export sees a snapshot at most that old.
                let mut tick =
                    tokio::time::interval((every / 2).max(std::time::Duration::from_millis(50)));
                loop {
                    tick.tick().await;
                    match metrics.send(GetSnapshot).await {
                        Ok(s) => *snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Some(s),
                        Err(_) => break,
                    }
                }
            });
        }

        /// A last snapshot before the final export.
        pub async fn refresh(&self, metrics: &Addr<MetricsActor>) {
            if let Ok(s) = metrics.send(GetSnapshot).await {
                *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
            }
        }

        /// Exports what is pending and stops the exporters (blocks up to their timeouts).
        pub fn shutdown(self) {
            if let Err(e) = self.tracer.force_flush() {
                tracing::warn!(error = %e, "trace export at shutdown failed");
            }
            if let Err(e) = self.tracer.shutdown() {
                tracing::debug!(error = %e, "trace exporter shutdown");
            }
            if let Err(e) = self.meter.force_flush() {
                tracing::warn!(error = %e, "metric export at shutdown failed");
            }
            if let Err(e) = self.meter.shutdown() {
                tracing::debug!(error = %e, "metric exporter shutdown");
            }
        }
    }

    type Shared = Arc<Mutex<Option<Snapshot>>>;

    /// Reads the snapshot in a callback (nothing observed before the first one).
    fn with(s: &Shared, f: impl FnOnce(&Snapshot)) {
        if let Some(snap) = s.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            f(snap);
        }
    }

    /// The `/metrics` figures as observable instruments (the SDK keeps the callbacks).
    fn register_instruments(m: &Meter, snap: &Shared) {
        let s = snap.clone();
        m.f64_observable_gauge("coda.uptime")
            .with_unit("s")
            .with_description("Seconds since the metrics actor started.")
            .with_callback(move |o| with(&s, |x| o.observe(x.uptime_s, &[])))
            .build();
        let s = snap.clone();
        m.f64_observable_gauge("coda.process.cpu")
            .with_unit("%")
            .with_description("CPU use of the server process, percent of one core.")
            .with_callback(move |o| {
                with(&s, |x| {
                    if let Some(l) = &x.latest {
                        o.observe(l.cpu_percent, &[]);
                    }
                })
            })
            .build();
        let s = snap.clone();
        m.f64_observable_gauge("coda.process.memory.resident")
            .with_unit("By")
            .with_description("Resident memory of the server process.")
            .with_callback(move |o| {
                with(&s, |x| {
                    if let Some(l) = &x.latest {
                        o.observe((l.memory_mb * 1024.0 * 1024.0).round(), &[]);
                    }
                })
            })
            .build();
        let s = snap.clone();
        m.u64_observable_gauge("coda.clients")
            .with_description("Connected WebSocket clients.")
            .with_callback(move |o| with(&s, |x| o.observe(x.counters.clients, &[])))
            .build();
        let s = snap.clone();
        m.u64_observable_counter("coda.events")
            .with_description("Events accepted by the event hub, by type.")
            .with_callback(move |o| {
                with(&s, |x| {
                    for (t, n) in &x.counters.events {
                        if *n > 0 {
                            o.observe(*n, &[KeyValue::new("type", t.as_str())]);
                        }
                    }
                })
            })
            .build();
        let s = snap.clone();
        m.u64_observable_counter("coda.commands")
            .with_description("Commands received from clients and dispatched.")
            .with_callback(move |o| with(&s, |x| o.observe(x.counters.commands, &[])))
            .build();
        let s = snap.clone();
        m.f64_observable_gauge("coda.stage.latency")
            .with_unit("ms")
            .with_description("Pipeline stage latency quantiles over the tracker window.")
            .with_callback(move |o| {
                with(&s, |x| {
                    for st in x.stages.iter().filter(|st| st.count > 0) {
                        for (q, v) in [("0.5", st.p50_ms), ("0.95", st.p95_ms), ("0.99", st.p99_ms)]
                        {
                            o.observe(
                                v,
                                &[
                                    KeyValue::new("stage", st.stage.clone()),
                                    KeyValue::new("quantile", q),
                                ],
                            );
                        }
                    }
                })
            })
            .build();
        let s = snap.clone();
        m.u64_observable_counter("coda.stage.count")
            .with_description("Pipeline stage samples since start.")
            .with_callback(move |o| {
                with(&s, |x| {
                    for st in &x.stages {
                        o.observe(st.total_count, &[KeyValue::new("stage", st.stage.clone())]);
                    }
                })
            })
            .build();
        let s = snap.clone();
        m.u64_observable_counter("coda.component.restarts")
            .with_description("Restarts of the component by its supervisor.")
            .with_callback(move |o| {
                with(&s, |x| {
                    for c in &x.components {
                        o.observe(
                            u64::from(c.restarts),
                            &[KeyValue::new("component", c.name.clone())],
                        );
                    }
                })
            })
            .build();
        let s = snap.clone();
        m.u64_observable_counter("coda.alerts.fired")
            .with_description("Alerts fired since start.")
            .with_callback(move |o| with(&s, |x| o.observe(x.alerts_fired, &[])))
            .build();
        type Get = fn(&coda_actors::hub::LlmUsageTotals) -> u64;
        let usage: [(&'static str, &'static str, Get); 3] = [
            (
                "gen_ai.client.token.usage.input",
                "Prompt tokens sent, by provider and model.",
                |t| t.prompt_tokens,
            ),
            (
                "gen_ai.client.token.usage.output",
                "Tokens generated, by provider and model.",
                |t| t.completion_tokens,
            ),
            (
                "coda.llm.requests",
                "Generations answered, by provider and model.",
                |t| t.requests,
            ),
        ];
        for (name, help, get) in usage {
            let s = snap.clone();
            m.u64_observable_counter(name)
                .with_unit("{token}")
                .with_description(help)
                .with_callback(move |o| {
                    with(&s, |x| {
                        for ((p, model), t) in &x.llm_usage {
                            o.observe(
                                get(t),
                                &[
                                    KeyValue::new("gen_ai.provider.name", p.clone()),
                                    KeyValue::new("gen_ai.request.model", model.clone()),
                                ],
                            );
                        }
                    })
                })
                .build();
        }
        let s = snap.clone();
        m.f64_observable_counter("coda.llm.cost")
            .with_description("Cost at the configured prices, by provider, model and currency.")
            .with_callback(move |o| {
                with(&s, |x| {
                    for ((p, model), t) in &x.llm_usage {
                        if t.pricing == coda_protocol::Pricing::Unknown {
                            continue;
                        }
                        o.observe(
                            t.cost,
                            &[
                                KeyValue::new("gen_ai.provider.name", p.clone()),
                                KeyValue::new("gen_ai.request.model", model.clone()),
                                KeyValue::new("currency", t.currency.clone().unwrap_or_default()),
                            ],
                        );
                    }
                })
            })
            .build();
    }
}

#[cfg(feature = "otel")]
pub use otel::{Telemetry, TelemetryError};

/// Without the `otel` feature: nothing to run.
#[cfg(not(feature = "otel"))]
pub struct Telemetry;

#[cfg(not(feature = "otel"))]
impl Telemetry {
    /// Says that this build cannot export; never starts.
    pub fn start(_: &TelemetrySettings) -> Result<(Telemetry, BoxedLayer), std::io::Error> {
        Err(std::io::Error::other(
            "this build has no OpenTelemetry export (cargo feature `otel`)",
        ))
    }
    pub fn follow_metrics(&self, _: actix::Addr<coda_actors::metrics::MetricsActor>) {}
    pub async fn refresh(&self, _: &actix::Addr<coda_actors::metrics::MetricsActor>) {}
    pub fn shutdown(self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> TelemetryConfig {
        TelemetryConfig {
            endpoint: String::new(),
            headers: BTreeMap::new(),
            service_name: String::new(),
            sampling_ratio: 1.0,
            export_interval_s: 10.0,
        }
    }

    #[test]
    fn off_without_an_endpoint_and_config_wins_over_the_environment() {
        assert_eq!(TelemetrySettings::resolve(&cfg(), |_| None), None);
        let env = |k: &str| match k {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://env:4318/".to_string()),
            "OTEL_EXPORTER_OTLP_HEADERS" => Some("a=1, b = 2".to_string()),
            "OTEL_SERVICE_NAME" => Some("from-env".to_string()),
            _ => None,
        };
        let s = TelemetrySettings::resolve(&cfg(), env).expect("on");
        assert_eq!(s.endpoint, "http://env:4318");
        assert_eq!(s.service_name, "from-env");
        assert_eq!(s.headers.get("b").map(String::as_str), Some("2"));
        let mut c = cfg();
        c.endpoint = "http://cfg:4318".into();
        c.service_name = "mine".into();
        c.sampling_ratio = 7.0;
        let s = TelemetrySettings::resolve(&c, env).expect("on");
        assert_eq!(
            (
                s.endpoint.as_str(),
                s.service_name.as_str(),
                s.sampling_ratio
            ),
            ("http://cfg:4318", "mine", 1.0)
        );
    }
}
