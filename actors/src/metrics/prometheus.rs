//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4), every name
//! prefixed `coda_`.
//!
//! Hand-written rather than built on `prometheus-client`: that crate speaks OpenMetrics
//! and has no summary type, and the per-stage latency quantiles come from our own
//! windowed HDR histograms. The format is small (HELP/TYPE lines, samples, three escapes);
//! the tests check every line against the grammar with a strict parser.

use std::fmt::Write;

use coda_protocol::{ComponentInfo, ComponentState, Level, SystemMetrics, PROTOCOL_VERSION};

use super::perf::StageSummary;
use crate::hub::CounterSnapshot;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const MIB: f64 = 1024.0 * 1024.0;

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic since start.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Quantiles plus `_sum` and `_count`.
    Summary,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Summary => "summary",
        }
    }
}

/// Builds an exposition: a family header, then its samples.
#[derive(Default)]
pub struct Exposition {
    out: String,
    family: String,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Starts a family: `# HELP` and `# TYPE`. `name` must be a valid metric name (all
    /// of ours are constants).
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        debug_assert!(valid_name(name, true), "bad metric name {name}");
        self.family = name.to_string();
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
        self
    }

    /// A sample of the current family; `suffix` is `""`, `"_sum"` or `"_count"`.
    pub fn sample(&mut self, suffix: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.series(suffix, labels);
        self.out.push_str(&format_value(value));
        self.out.push('\n');
        self
    }

    /// A sample with a `u64` value (counters), written exactly (an f64 would round
    /// counters above 2^53).
    pub fn sample_u64(&mut self, suffix: &str, labels: &[(&str, &str)], value: u64) -> &mut Self {
        self.series(suffix, labels);
        let _ = writeln!(self.out, "{value}");
        self
    }

    /// `name{labels} ` of a sample.
    fn series(&mut self, suffix: &str, labels: &[(&str, &str)]) {
        self.out.push_str(&self.family);
        self.out.push_str(suffix);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                debug_assert!(valid_name(k, false), "bad label name {k}");
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_label_value(&mut self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

fn valid_name(name: &str, colons: bool) -> bool {
    let mut chars = name.chars();
    let ok_start = |c: char| c.is_ascii_alphabetic() || c == '_' || (colons && c == ':');
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':');
    chars.next().is_some_and(ok_start) && chars.all(ok)
}

fn escape_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A sample value as the format wants it (`NaN`, `+Inf`, `-Inf`, or a decimal number).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        // Rust's shortest round-trip decimal; never an exponent, always parseable.
        format!("{v}")
    }
}

/// One alert rule's state, for `coda_alert_active`.
#[derive(Debug, Clone)]
pub struct AlertState {
    /// The metric it watches.
    pub metric: String,
    /// Its severity.
    pub level: Level,
    /// Firing now?
    pub active: bool,
}

/// Everything `/metrics` shows, gathered by the metrics actor.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Seconds since the metrics actor started.
    pub uptime_s: f64,
    /// The latest sample (`None` before the first).
    pub latest: Option<SystemMetrics>,
    /// Per-stage latency in the window (with since-start totals).
    pub stages: Vec<StageSummary>,
    /// The hub's counters.
    pub counters: CounterSnapshot,
    /// Component states.
    pub components: Vec<ComponentInfo>,
    /// Alert rules in config order.
    pub alerts: Vec<AlertState>,
    /// Alerts fired since start.
    pub alerts_fired: u64,
    /// LLM usage by (provider, model) since start.
    pub llm_usage: Vec<((String, String), crate::hub::LlmUsageTotals)>,
}

/// Renders the exposition.
pub fn render(s: &Snapshot) -> String {
    let mut e = Exposition::new();
    e.family(
        "coda_build_info",
        Kind::Gauge,
        "Server and protocol version (always 1).",
    )
    .sample(
        "",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("protocol_version", PROTOCOL_VERSION),
        ],
        1.0,
    );
    e.family(
        "coda_uptime_seconds",
        Kind::Gauge,
        "Seconds since the metrics actor started.",
    )
    .sample("", &[], s.uptime_s);

    if let Some(m) = &s.latest {
        e.family(
            "coda_process_cpu_percent",
            Kind::Gauge,
            "CPU use of the server process, percent of one core (may exceed 100).",
        )
        .sample("", &[], m.cpu_percent);
        e.family(
            "coda_process_resident_memory_bytes",
            Kind::Gauge,
            "Resident memory of the server process.",
        )
        .sample("", &[], (m.memory_mb * MIB).round());
        let optional: [(&str, &str, Option<f64>); 5] = [
            (
                "coda_system_cpu_percent",
                "CPU use of the whole machine, percent of all cores.",
                m.system_cpu_percent,
            ),
            (
                "coda_system_memory_used_bytes",
                "Memory used on the machine.",
                m.system_memory_used_mb.map(|v| (v * MIB).round()),
            ),
            (
                "coda_system_memory_total_bytes",
                "Total memory of the machine.",
                m.system_memory_total_mb.map(|v| (v * MIB).round()),
            ),
            (
                "coda_gpu_memory_used_bytes",
                "GPU memory used, all visible NVIDIA GPUs together.",
                m.gpu_vram_mb.map(|v| (v * MIB).round()),
            ),
            (
                "coda_gpu_utilization_percent",
                "GPU utilisation, percent, averaged over the visible NVIDIA GPUs.",
                m.gpu_util,
            ),
        ];
        for (name, help, value) in optional {
            if let Some(v) = value {
                e.family(name, Kind::Gauge, help).sample("", &[], v);
            }
        }
    }

    let c = &s.counters;
    e.family("coda_clients", Kind::Gauge, "Connected WebSocket clients.")
        .sample_u64("", &[], c.clients);
    e.family(
        "coda_clients_subscribed",
        Kind::Gauge,
        "WebSocket clients receiving live events.",
    )
    .sample_u64("", &[], c.subscribed);
    e.family(
        "coda_events_total",
        Kind::Counter,
        "Events accepted by the event hub (and numbered), by type.",
    );
    for (t, n) in &c.events {
        if t.retention() != coda_protocol::Retention::Direct {
            e.sample_u64("", &[("type", t.as_str())], *n);
        }
    }
    e.family(
        "coda_event_seq",
        Kind::Gauge,
        "The latest seq the event hub assigned.",
    )
    .sample_u64("", &[], c.last_seq);
    e.family(
        "coda_slow_consumer_disconnects_total",
        Kind::Counter,
        "Clients cut off because their outbound queue filled.",
    )
    .sample_u64("", &[], c.slow_disconnects);
    e.family(
        "coda_refusals_total",
        Kind::Counter,
        "Requests refused by a limit, by kind.",
    );
    for (kind, n) in &c.refusals {
        e.sample_u64("", &[("kind", kind.as_str())], *n);
    }
    e.family(
        "coda_commands_total",
        Kind::Counter,
        "Commands received from clients and dispatched.",
    )
    .sample_u64("", &[], c.commands);
    e.family(
        "coda_command_errors_total",
        Kind::Counter,
        "command_error answers sent.",
    )
    .sample_u64("", &[], c.command_errors);

    if !s.stages.is_empty() {
        e.family(
            "coda_stage_latency_seconds",
            Kind::Summary,
            "Pipeline stage latency: quantiles over the tracker window, sum and count since start.",
        );
        for st in &s.stages {
            let stage = st.stage.as_str();
            if st.count > 0 {
                for (q, v) in [("0.5", st.p50_ms), ("0.95", st.p95_ms), ("0.99", st.p99_ms)] {
                    e.sample("", &[("stage", stage), ("quantile", q)], v / 1000.0);
                }
            }
            e.sample("_sum", &[("stage", stage)], st.total_sum_ms / 1000.0);
            e.sample_u64("_count", &[("stage", stage)], st.total_count);
        }
        e.family(
            "coda_stage_latency_max_seconds",
            Kind::Gauge,
            "Largest stage latency in the tracker window.",
        );
        for st in s.stages.iter().filter(|st| st.count > 0) {
            e.sample("", &[("stage", st.stage.as_str())], st.max_ms / 1000.0);
        }
    }

    if !s.alerts.is_empty() {
        e.family(
            "coda_alert_active",
            Kind::Gauge,
            "1 while the alert rule (metrics.alerts, by index) is firing.",
        );
        for (i, a) in s.alerts.iter().enumerate() {
            let rule = i.to_string();
            e.sample(
                "",
                &[
                    ("rule", rule.as_str()),
                    ("metric", a.metric.as_str()),
                    ("level", a.level.as_str()),
                ],
                if a.active { 1.0 } else { 0.0 },
            );
        }
    }
    e.family(
        "coda_alerts_fired_total",
        Kind::Counter,
        "Alerts fired since start.",
    )
    .sample_u64("", &[], s.alerts_fired);

    if !s.llm_usage.is_empty() {
        type Get = fn(&crate::hub::LlmUsageTotals) -> u64;
        let families: [(&str, &str, Get); 4] = [
            (
                "coda_llm_requests_total",
                "Generations answered, by provider and model.",
                |t| t.requests,
            ),
            (
                "coda_llm_prompt_tokens_total",
                "Prompt tokens sent, by provider and model (estimated where the provider reports none).",
                |t| t.prompt_tokens,
            ),
            (
                "coda_llm_completion_tokens_total",
                "Tokens generated, by provider and model (estimated where the provider reports none).",
                |t| t.completion_tokens,
            ),
            (
                "coda_llm_estimated_usage_total",
                "Generations whose token counts were estimated, by provider and model.",
                |t| t.estimated,
            ),
        ];
        for (name, help, get) in families {
            e.family(name, Kind::Counter, help);
            for ((provider, model), t) in &s.llm_usage {
                e.sample_u64("", &[("provider", provider), ("model", model)], get(t));
            }
        }
        e.family(
            "coda_llm_cost_total",
            Kind::Counter,
            "Cost of the generations at the configured prices (llm.prices), by provider, model and currency; 0 for local models; models without a price are absent.",
        );
        for ((provider, model), t) in &s.llm_usage {
            if t.pricing == coda_protocol::Pricing::Unknown {
                continue;
            }
            let currency = t.currency.as_deref().unwrap_or("");
            e.sample(
                "",
                &[
                    ("provider", provider),
                    ("model", model),
                    ("currency", currency),
                    ("pricing", t.pricing.as_str()),
                ],
                t.cost,
            );
        }
    }

    if !s.components.is_empty() {
        e.family(
            "coda_component_running",
            Kind::Gauge,
            "1 when the component is running.",
        );
        for ci in &s.components {
            let v = if ci.state == ComponentState::Running {
                1.0
            } else {
                0.0
            };
            e.sample("", &[("component", ci.name.as_str())], v);
        }
        e.family(
            "coda_component_restarts_total",
            Kind::Counter,
            "Restarts of the component by its supervisor.",
        );
        for ci in &s.components {
            e.sample_u64(
                "",
                &[("component", ci.name.as_str())],
                u64::from(ci.restarts),
            );
        }
    }
    e.finish()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::{BTreeMap, HashSet};

    use coda_protocol::EventType;

    use super::*;

    /// One parsed sample: name, labels (sorted), value.
    pub type Series = (String, Vec<(String, String)>, f64);

    /// A strict reader of the text format: every line must be a HELP, TYPE or sample line
    /// that follows the grammar; TYPE comes before a family's samples and once; a family's
    /// samples are contiguous; summary samples are the family name (with `quantile`),
    /// `_sum` or `_count`; no series twice; the text ends with a newline.
    pub fn parse_strict(text: &str) -> Result<Vec<Series>, String> {
        if !text.is_empty() && !text.ends_with('\n') {
            return Err("does not end with a newline".into());
        }
        let mut types: BTreeMap<String, String> = BTreeMap::new();
        let mut helps: HashSet<String> = HashSet::new();
        let mut done: HashSet<String> = HashSet::new();
        let mut current: Option<String> = None;
        let mut seen: HashSet<(String, Vec<(String, String)>)> = HashSet::new();
        let mut out = Vec::new();
        for (no, line) in text.lines().enumerate() {
            let err = |m: &str| format!("line {}: {m}: {line:?}", no + 1);
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, _) = rest
                    .split_once(' ')
                    .ok_or_else(|| err("HELP without text"))?;
                if !valid_name(name, true) || !helps.insert(name.to_string()) {
                    return Err(err("bad or repeated HELP"));
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest
                    .split_once(' ')
                    .ok_or_else(|| err("TYPE without type"))?;
                if !valid_name(name, true) {
                    return Err(err("bad metric name"));
                }
                if !["counter", "gauge", "summary", "histogram", "untyped"].contains(&kind) {
                    return Err(err("unknown type"));
                }
                if types.insert(name.to_string(), kind.to_string()).is_some() {
                    return Err(err("TYPE repeated"));
                }
                if let Some(prev) = current.replace(name.to_string()) {
                    done.insert(prev);
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                return Err(err("unexpected comment or blank line"));
            }
            // name{labels} value
            let name_end = line.find(['{', ' ']).ok_or_else(|| err("no value"))?;
            let name = &line[..name_end];
            if !valid_name(name, true) {
                return Err(err("bad metric name"));
            }
            let mut rest = &line[name_end..];
            let mut labels = Vec::new();
            if let Some(r) = rest.strip_prefix('{') {
                let (parsed, end) = parse_labels(r).map_err(|m| err(&m))?;
                labels = parsed;
                rest = &r[end..];
            }
            let value = rest
                .strip_prefix(' ')
                .ok_or_else(|| err("no space before value"))?;
            let value = value.split(' ').next().unwrap_or("");
            let v: f64 = match value {
                "NaN" => f64::NAN,
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                other => other.parse().map_err(|_| err("bad value"))?,
            };
            // Which family does it belong to?
            let family = current
                .clone()
                .ok_or_else(|| err("sample before any TYPE"))?;
            let kind = types[&family].as_str();
            let ok = match kind {
                "summary" => {
                    (name == family && labels.iter().any(|(k, _)| k == "quantile"))
                        || name == format!("{family}_sum")
                        || name == format!("{family}_count")
                }
                _ => name == family,
            };
            if !ok || done.contains(&family) {
                return Err(err("sample outside its family"));
            }
            labels.sort();
            if !seen.insert((name.to_string(), labels.clone())) {
                return Err(err("series repeated"));
            }
            out.push((name.to_string(), labels, v));
        }
        Ok(out)
    }

    /// Parses `k="v",k2="v2"}` (just after `{`); returns the labels and the offset just
    /// past `}`.
    fn parse_labels(s: &str) -> Result<(Vec<(String, String)>, usize), String> {
        let mut labels = Vec::new();
        let bytes = s.as_bytes();
        let mut i = 0;
        loop {
            if bytes.get(i) == Some(&b'}') {
                return Ok((labels, i + 1));
            }
            let eq = s[i..].find("=\"").ok_or("label without =\"")?;
            let name = &s[i..i + eq];
            if !valid_name(name, false) || name.starts_with("__") {
                return Err(format!("bad label name {name:?}"));
            }
            i += eq + 2;
            let mut value = String::new();
            loop {
                let c = s[i..].chars().next().ok_or("unterminated value")?;
                match c {
                    '\\' => {
                        value.push(match bytes.get(i + 1) {
                            Some(b'\\') => '\\',
                            Some(b'"') => '"',
                            Some(b'n') => '\n',
                            _ => return Err("bad escape".into()),
                        });
                        i += 2;
                    }
                    '"' => {
                        i += 1;
                        break;
                    }
                    c => {
                        value.push(c);
                        i += c.len_utf8();
                    }
                }
            }
            if labels.iter().any(|(k, _)| k == name) {
                return Err(format!("label {name} twice"));
            }
            labels.push((name.to_string(), value));
            match bytes.get(i) {
                Some(b',') => i += 1,
                Some(b'}') => {}
                _ => return Err("expected , or } after a label".into()),
            }
        }
    }

    fn find<'a>(series: &'a [Series], name: &str, labels: &[(&str, &str)]) -> Option<&'a Series> {
        series.iter().find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
    }

    fn snapshot() -> Snapshot {
        let mut counters = CounterSnapshot {
            last_seq: 7,
            clients: 2,
            subscribed: 1,
            slow_disconnects: 1,
            commands: 12,
            command_errors: 3,
            ..Default::default()
        };
        counters.events = EventType::ALL
            .iter()
            .map(|t| {
                let n = match t {
                    EventType::SystemMetrics => 5,
                    EventType::Alert => 2,
                    _ => 0,
                };
                (*t, n)
            })
            .collect();
        Snapshot {
            uptime_s: 12.5,
            latest: Some(SystemMetrics {
                memory_mb: 40.0,
                cpu_percent: 3.5,
                gpu_vram_mb: None,
                gpu_util: None,
                system_memory_used_mb: Some(1000.0),
                system_memory_total_mb: Some(4000.0),
                system_cpu_percent: Some(12.25),
            }),
            stages: vec![
                StageSummary {
                    stage: "total".into(),
                    count: 3,
                    p50_ms: 100.0,
                    p95_ms: 250.0,
                    p99_ms: 300.0,
                    max_ms: 300.0,
                    mean_ms: 150.0,
                    total_count: 10,
                    total_sum_ms: 1500.0,
                },
                StageSummary {
                    stage: "we\"ird\\stage\nname".into(),
                    count: 0,
                    p50_ms: 0.0,
                    p95_ms: 0.0,
                    p99_ms: 0.0,
                    max_ms: 0.0,
                    mean_ms: 0.0,
                    total_count: 1,
                    total_sum_ms: 2.0,
                },
            ],
            counters,
            components: vec![ComponentInfo {
                name: "metrics".into(),
                state: ComponentState::Running,
                restarts: 1,
                uptime_s: 3.0,
                reason: None,
            }],
            alerts: vec![AlertState {
                metric: "memory_mb".into(),
                level: Level::Warning,
                active: true,
            }],
            alerts_fired: 1,
            llm_usage: vec![
                (
                    ("openai".into(), "gpt-4o-mini".into()),
                    crate::hub::LlmUsageTotals {
                        requests: 2,
                        prompt_tokens: 300,
                        completion_tokens: 40,
                        estimated: 1,
                        cost: 0.000_069,
                        currency: Some("USD".into()),
                        pricing: coda_protocol::Pricing::Priced,
                    },
                ),
                (
                    ("openai".into(), "unpriced".into()),
                    crate::hub::LlmUsageTotals {
                        requests: 1,
                        prompt_tokens: 7,
                        completion_tokens: 3,
                        ..Default::default()
                    },
                ),
            ],
        }
    }

    #[test]
    fn render_follows_the_grammar_and_carries_the_values() {
        let text = render(&snapshot());
        let series = parse_strict(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(series.iter().all(|(n, _, _)| n.starts_with("coda_")));
        let v = |name: &str, labels: &[(&str, &str)]| {
            find(&series, name, labels)
                .unwrap_or_else(|| panic!("{name} {labels:?} missing\n{text}"))
                .2
        };
        assert_eq!(v("coda_process_resident_memory_bytes", &[]), 40.0 * MIB);
        assert_eq!(v("coda_process_cpu_percent", &[]), 3.5);
        assert_eq!(v("coda_system_cpu_percent", &[]), 12.25);
        assert!(find(&series, "coda_gpu_utilization_percent", &[]).is_none());
        assert_eq!(v("coda_events_total", &[("type", "system_metrics")]), 5.0);
        assert_eq!(v("coda_events_total", &[("type", "alert")]), 2.0);
        let gpt = [("provider", "openai"), ("model", "gpt-4o-mini")];
        assert_eq!(v("coda_llm_prompt_tokens_total", &gpt), 300.0);
        assert_eq!(v("coda_llm_completion_tokens_total", &gpt), 40.0);
        assert_eq!(v("coda_llm_estimated_usage_total", &gpt), 1.0);
        let priced = [
            ("provider", "openai"),
            ("model", "gpt-4o-mini"),
            ("currency", "USD"),
            ("pricing", "priced"),
        ];
        assert!((v("coda_llm_cost_total", &priced) - 0.000_069).abs() < 1e-12);
        assert_eq!(
            v(
                "coda_llm_prompt_tokens_total",
                &[("provider", "openai"), ("model", "unpriced")]
            ),
            7.0
        );
        // No price, no cost series (rather than a misleading zero).
        assert!(!text.contains("coda_llm_cost_total{provider=\"openai\",model=\"unpriced\""));
        assert_eq!(v("coda_events_total", &[("type", "llm_token")]), 0.0);
        assert!(
            find(&series, "coda_events_total", &[("type", "command_result")]).is_none(),
            "direct replies never pass the hub"
        );
        assert_eq!(v("coda_clients", &[]), 2.0);
        assert_eq!(v("coda_slow_consumer_disconnects_total", &[]), 1.0);
        assert_eq!(
            v(
                "coda_stage_latency_seconds",
                &[("stage", "total"), ("quantile", "0.95")]
            ),
            0.25
        );
        assert_eq!(
            v("coda_stage_latency_seconds_sum", &[("stage", "total")]),
            1.5
        );
        assert_eq!(
            v("coda_stage_latency_seconds_count", &[("stage", "total")]),
            10.0
        );
        // Escapes survive a round trip.
        assert_eq!(
            v(
                "coda_stage_latency_seconds_count",
                &[("stage", "we\"ird\\stage\nname")]
            ),
            1.0
        );
        assert_eq!(
            v(
                "coda_alert_active",
                &[("metric", "memory_mb"), ("rule", "0")]
            ),
            1.0
        );
        assert_eq!(
            v("coda_component_restarts_total", &[("component", "metrics")]),
            1.0
        );
        assert!(text.contains("# TYPE coda_stage_latency_seconds summary\n"));
        assert!(text.contains("# TYPE coda_events_total counter\n"));
    }

    #[test]
    fn empty_snapshot_still_valid() {
        let text = render(&Snapshot::default());
        let series = parse_strict(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(find(&series, "coda_build_info", &[]).is_some());
        assert!(find(&series, "coda_process_cpu_percent", &[]).is_none());
    }

    #[test]
    fn values_and_big_counters() {
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(0.1), "0.1");
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(1e21).parse::<f64>().unwrap(), 1e21);
        let mut e = Exposition::new();
        e.family("coda_x_total", Kind::Counter, "x")
            .sample_u64("", &[("a", "b")], u64::MAX)
            .sample_u64("", &[], 1);
        let text = e.finish();
        assert!(
            text.contains("coda_x_total{a=\"b\"} 18446744073709551615\n"),
            "{text}"
        );
        assert!(text.contains("coda_x_total 1\n"), "{text}");
        parse_strict(&text).unwrap();
    }

    #[test]
    fn the_strict_reader_rejects_what_it_should() {
        for bad in [
            "coda_x 1\n",                                           // no TYPE
            "# TYPE coda_x gauge\ncoda_x{a=\"b} 1\n",               // unterminated
            "# TYPE coda_x gauge\ncoda_x{a=\"\\t\"} 1\n",           // bad escape
            "# TYPE coda_x gauge\ncoda_x one\n",                    // bad value
            "# TYPE coda_x gauge\ncoda_x 1\ncoda_x 2\n",            // repeated series
            "# TYPE coda_x gauge\n# TYPE coda_y gauge\ncoda_x 1\n", // outside family
            "# TYPE coda_x gauge\ncoda_x 1",                        // no final newline
            "# TYPE coda_x summary\ncoda_x 1\n",                    // quantile missing
            "# TYPE coda_x gauge\ncoda_x{1a=\"b\"} 1\n",            // bad label name
        ] {
            assert!(parse_strict(bad).is_err(), "accepted {bad:?}");
        }
        parse_strict("# HELP coda_x h\n# TYPE coda_x gauge\ncoda_x{a=\"b\",c=\"d\"} 1\n").unwrap();
    }
}
