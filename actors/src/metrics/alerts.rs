//! Threshold alerts with hysteresis. A rule fires once when its metric goes past the fire
//! threshold (and stays there for `for_s`), and clears once when the metric is back past
//! a separate clear threshold (for `for_s` as well). Between the two thresholds nothing
//! happens, so a value hovering around one threshold cannot make the alert flap.
//!
//! Rules watch the sampled system metrics, the connected-client count, and the latency
//! tracker's percentiles (`latency.STAGE.STAT`).

use std::time::{Duration, Instant};

use coda_protocol::{Alert, Level};

/// A statistic of one stage's latency over the tracker's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatencyStat {
    /// Median.
    P50,
    /// 95th percentile.
    P95,
    /// 99th percentile.
    P99,
    /// Largest sample.
    Max,
    Mean,
}

impl LatencyStat {
    const ALL: [(LatencyStat, &'static str); 5] = [
        (LatencyStat::P50, "p50"),
        (LatencyStat::P95, "p95"),
        (LatencyStat::P99, "p99"),
        (LatencyStat::Max, "max"),
        (LatencyStat::Mean, "mean"),
    ];

    /// The name used in `latency.STAGE.STAT`.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(s, _)| *s == self)
            .map(|(_, n)| *n)
            .unwrap_or("p50")
    }
}

/// What an alert rule watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertMetric {
    /// `memory_mb`: resident memory of the server process, MiB.
    MemoryMb,
    /// `cpu_percent`: CPU of the server process, percent of one core.
    CpuPercent,
    /// `system_cpu_percent`: CPU of the whole machine, percent of all cores.
    SystemCpuPercent,
    /// `system_memory_used_mb`: memory used on the machine, MiB.
    SystemMemoryUsedMb,
    /// `system_memory_percent`: memory used on the machine, percent of the total.
    SystemMemoryPercent,
    /// `gpu_vram_mb`: GPU memory used, MiB (only when a GPU is visible).
    GpuVramMb,
    /// `gpu_util`: GPU utilisation, percent (only when a GPU is visible).
    GpuUtil,
    /// `clients`: connected WebSocket clients.
    Clients,
    /// `latency.STAGE.STAT`: a latency statistic of a pipeline stage, ms.
    Latency {
        /// The stage, e.g. `total`.
        stage: String,
        /// The statistic.
        stat: LatencyStat,
    },
}

const SIMPLE: [(&str, AlertMetric); 8] = [
    ("memory_mb", AlertMetric::MemoryMb),
    ("cpu_percent", AlertMetric::CpuPercent),
    ("system_cpu_percent", AlertMetric::SystemCpuPercent),
    ("system_memory_used_mb", AlertMetric::SystemMemoryUsedMb),
    ("system_memory_percent", AlertMetric::SystemMemoryPercent),
    ("gpu_vram_mb", AlertMetric::GpuVramMb),
    ("gpu_util", AlertMetric::GpuUtil),
    ("clients", AlertMetric::Clients),
];

impl AlertMetric {
    /// Parses a metric name as written in `metrics.alerts[].metric`.
    pub fn parse(name: &str) -> Result<AlertMetric, String> {
        if let Some((_, m)) = SIMPLE.iter().find(|(n, _)| *n == name) {
            return Ok(m.clone());
        }
        if let Some(rest) = name.strip_prefix("latency.") {
            let (stage, stat) = rest.rsplit_once('.').unwrap_or(("", rest));
            let stat = LatencyStat::ALL
                .iter()
                .find(|(_, n)| *n == stat)
                .map(|(s, _)| *s);
            return match stat {
                Some(stat) if !stage.is_empty() => Ok(AlertMetric::Latency {
                    stage: stage.to_string(),
                    stat,
                }),
                _ => Err(format!(
                    "`{name}` is not latency.STAGE.STAT (STAT: p50, p95, p99, max, mean), e.g. latency.total.p95"
                )),
            };
        }
        let names: Vec<&str> = SIMPLE.iter().map(|(n, _)| *n).collect();
        Err(format!(
            "unknown metric `{name}`: expected one of {}, or latency.STAGE.STAT (e.g. latency.total.p95)",
            names.join(", ")
        ))
    }

    /// The name as written in config and in the `alert` event.
    pub fn name(&self) -> String {
        match self {
            AlertMetric::Latency { stage, stat } => format!("latency.{stage}.{}", stat.as_str()),
            other => SIMPLE
                .iter()
                .find(|(_, m)| m == other)
                .map(|(n, _)| n.to_string())
                .unwrap_or_default(),
        }
    }
}

/// Which side of the threshold is bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Fires when the metric rises above `fire`, clears when it drops below `clear`.
    Above,
    /// Fires when the metric drops below `fire`, clears when it rises above `clear`.
    Below,
}

/// A configuration problem in one alert rule: the field and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct RuleError {
    /// The field of the rule, e.g. `clear_below`.
    pub field: &'static str,
    /// What is wrong.
    pub problem: String,
}

fn rule_err(field: &'static str, problem: impl Into<String>) -> RuleError {
    RuleError {
        field,
        problem: problem.into(),
    }
}

/// The fields of one rule as written in config (`metrics.alerts`), before validation.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertSpec<'a> {
    /// The metric name.
    pub metric: &'a str,
    /// Fire when above this...
    pub above: Option<f64>,
    /// ...and clear when back below this.
    pub clear_below: Option<f64>,
    /// Or: fire when below this...
    pub below: Option<f64>,
    /// ...and clear when back above this.
    pub clear_above: Option<f64>,
    /// Seconds the condition must hold before firing (and before clearing).
    pub for_s: f64,
    /// Severity while active.
    pub level: Level,
}

/// One validated alert rule.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRule {
    /// What it watches.
    pub metric: AlertMetric,
    /// Which side is bad.
    pub direction: Direction,
    /// The fire threshold.
    pub fire: f64,
    /// The clear threshold (strictly on the good side of `fire`).
    pub clear: f64,
    /// How long a condition must hold before the state changes.
    pub hold: Duration,
    /// Severity while active.
    pub level: Level,
}

impl AlertRule {
    /// Validates a rule: exactly one of `above`/`below`, its clear threshold on the good
    /// side of it (the band is what stops flapping), finite numbers, a known metric.
    pub fn from_spec(spec: &AlertSpec<'_>) -> Result<AlertRule, RuleError> {
        let metric = AlertMetric::parse(spec.metric).map_err(|p| rule_err("metric", p))?;
        let finite = |field: &'static str, v: f64| {
            if v.is_finite() {
                Ok(v)
            } else {
                Err(rule_err(field, "must be a finite number"))
            }
        };
        let (direction, fire, clear) = match (spec.above, spec.below) {
            (Some(_), Some(_)) => {
                return Err(rule_err(
                    "above",
                    "set either `above` or `below`, not both (use two rules)",
                ))
            }
            (None, None) => {
                return Err(rule_err(
                    "above",
                    "set `above` (with `clear_below`) or `below` (with `clear_above`)",
                ))
            }
            (Some(above), None) => {
                if spec.clear_above.is_some() {
                    return Err(rule_err(
                        "clear_above",
                        "goes with `below`; an `above` rule clears with `clear_below`",
                    ));
                }
                let fire = finite("above", above)?;
                let clear = spec.clear_below.ok_or_else(|| {
                    rule_err(
                        "clear_below",
                        format!(
                            "missing: the value the metric must drop under to clear (below {fire})"
                        ),
                    )
                })?;
                let clear = finite("clear_below", clear)?;
                if clear >= fire {
                    return Err(rule_err(
                        "clear_below",
                        format!("must be less than `above` ({fire}), not {clear}: the band between them keeps the alert from flapping"),
                    ));
                }
                (Direction::Above, fire, clear)
            }
            (None, Some(below)) => {
                if spec.clear_below.is_some() {
                    return Err(rule_err(
                        "clear_below",
                        "goes with `above`; a `below` rule clears with `clear_above`",
                    ));
                }
                let fire = finite("below", below)?;
                let clear = spec.clear_above.ok_or_else(|| {
                    rule_err(
                        "clear_above",
                        format!(
                            "missing: the value the metric must rise over to clear (above {fire})"
                        ),
                    )
                })?;
                let clear = finite("clear_above", clear)?;
                if clear <= fire {
                    return Err(rule_err(
                        "clear_above",
                        format!("must be greater than `below` ({fire}), not {clear}: the band between them keeps the alert from flapping"),
                    ));
                }
                (Direction::Below, fire, clear)
            }
        };
        if !(spec.for_s.is_finite() && (0.0..=86_400.0).contains(&spec.for_s)) {
            return Err(rule_err(
                "for_s",
                format!("must be between 0 and 86400 seconds, not {}", spec.for_s),
            ));
        }
        Ok(AlertRule {
            metric,
            direction,
            fire,
            clear,
            hold: Duration::from_secs_f64(spec.for_s),
            level: spec.level,
        })
    }

    fn breached(&self, v: f64) -> bool {
        match self.direction {
            Direction::Above => v > self.fire,
            Direction::Below => v < self.fire,
        }
    }

    fn recovered(&self, v: f64) -> bool {
        match self.direction {
            Direction::Above => v < self.clear,
            Direction::Below => v > self.clear,
        }
    }
}

struct RuleState {
    rule: AlertRule,
    active: bool,
    /// When the pending change (fire when inactive, clear when active) was first seen,
    /// on consecutive samples.
    pending_since: Option<Instant>,
}

/// The state of every rule. Lives in the metrics actor and survives its restarts, so a
/// restart cannot fire an alert twice.
pub struct AlertEngine {
    states: Vec<RuleState>,
    fired: u64,
}

impl AlertEngine {
    /// All rules inactive.
    pub fn new(rules: Vec<AlertRule>) -> AlertEngine {
        AlertEngine {
            states: rules
                .into_iter()
                .map(|rule| RuleState {
                    rule,
                    active: false,
                    pending_since: None,
                })
                .collect(),
            fired: 0,
        }
    }

    /// Every rule and whether it is active now.
    pub fn rules(&self) -> impl Iterator<Item = (&AlertRule, bool)> {
        self.states.iter().map(|s| (&s.rule, s.active))
    }

    /// Does any rule watch a latency statistic?
    pub fn watches_latency(&self) -> bool {
        self.states
            .iter()
            .any(|s| matches!(s.rule.metric, AlertMetric::Latency { .. }))
    }

    /// Alerts fired since start.
    pub fn fired_total(&self) -> u64 {
        self.fired
    }

    /// Feeds one sample of every metric (`value_of` returns `None` for a metric that has
    /// no value now, e.g. a GPU metric without a GPU or a stage without samples: the rule
    /// keeps its state and any pending change starts over). Returns the alerts to publish:
    /// at most one per rule, a firing (`cleared: false`) or a clearing (`cleared: true`).
    pub fn evaluate(
        &mut self,
        now: Instant,
        mut value_of: impl FnMut(&AlertMetric) -> Option<f64>,
    ) -> Vec<Alert> {
        let mut out = Vec::new();
        for st in &mut self.states {
            let Some(v) = value_of(&st.rule.metric).filter(|v| v.is_finite()) else {
                st.pending_since = None;
                continue;
            };
            let changing = if st.active {
                st.rule.recovered(v)
            } else {
                st.rule.breached(v)
            };
            if !changing {
                st.pending_since = None;
                continue;
            }
            let since = *st.pending_since.get_or_insert(now);
            if now.saturating_duration_since(since) < st.rule.hold {
                continue;
            }
            st.pending_since = None;
            st.active = !st.active;
            if st.active {
                self.fired += 1;
            }
            out.push(alert(&st.rule, v, !st.active));
        }
        out
    }
}

fn alert(rule: &AlertRule, value: f64, cleared: bool) -> Alert {
    let name = rule.metric.name();
    let held = if rule.hold.is_zero() {
        String::new()
    } else {
        format!(" for {} s", rule.hold.as_secs_f64())
    };
    let (threshold, message) = match (cleared, rule.direction) {
        (false, Direction::Above) => (
            rule.fire,
            format!("{name} is {value:.1}, above {}{held}", rule.fire),
        ),
        (false, Direction::Below) => (
            rule.fire,
            format!("{name} is {value:.1}, below {}{held}", rule.fire),
        ),
        (true, Direction::Above) => (
            rule.clear,
            format!("{name} is back to {value:.1}, below {}{held}", rule.clear),
        ),
        (true, Direction::Below) => (
            rule.clear,
            format!("{name} is back to {value:.1}, above {}{held}", rule.clear),
        ),
    };
    Alert {
        metric: name,
        value,
        threshold,
        level: rule.level,
        cleared,
        message: Some(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(metric: &str) -> AlertSpec<'_> {
        AlertSpec {
            metric,
            above: None,
            clear_below: None,
            below: None,
            clear_above: None,
            for_s: 0.0,
            level: Level::Warning,
        }
    }

    fn above(fire: f64, clear: f64, for_s: f64) -> AlertRule {
        AlertRule::from_spec(&AlertSpec {
            above: Some(fire),
            clear_below: Some(clear),
            for_s,
            ..spec("cpu_percent")
        })
        .unwrap()
    }

    /// Feeds `values` one per second; returns (second, cleared) of every alert.
    fn run(engine: &mut AlertEngine, values: &[f64]) -> Vec<(usize, bool)> {
        let t0 = Instant::now();
        let mut out = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let now = t0 + Duration::from_secs(i as u64);
            for a in engine.evaluate(now, |_| Some(*v)) {
                out.push((i, a.cleared));
            }
        }
        out
    }

    #[test]
    fn fires_once_does_not_flap_in_the_band_clears_once() {
        let mut e = AlertEngine::new(vec![above(90.0, 80.0, 0.0)]);
        let seen = run(
            &mut e,
            &[
                50.0, 95.0, 97.0, 89.0, 91.0, 85.0, 92.0, 81.0, 79.0, 85.0, 89.0, 50.0,
            ],
        );
        assert_eq!(seen, vec![(1, false), (8, true)]);
        assert_eq!(e.fired_total(), 1);
        assert!(e.rules().all(|(_, active)| !active));
    }

    #[test]
    fn exactly_at_a_threshold_changes_nothing() {
        let mut e = AlertEngine::new(vec![above(90.0, 80.0, 0.0)]);
        assert!(run(&mut e, &[90.0, 90.0]).is_empty());
        let mut e = AlertEngine::new(vec![above(90.0, 80.0, 0.0)]);
        assert_eq!(
            run(&mut e, &[91.0, 80.0, 79.9]),
            vec![(0, false), (2, true)]
        );
    }

    #[test]
    fn minimum_duration_before_firing_and_clearing() {
        let mut e = AlertEngine::new(vec![above(90.0, 80.0, 3.0)]);
        // A 2-second spike is ignored; a dip back into the band restarts the count.
        let seen = run(
            &mut e,
            &[
                95.0, 95.0, 50.0, // spike of 2 s: nothing
                95.0, 95.0, 85.0, // interrupted: nothing
                95.0, 95.0, 95.0, 95.0, // 95 from 6 s: fires at 9 s (held 3 s)
                70.0, 70.0, 85.0, // clear pending interrupted by the band
                70.0, 70.0, 70.0, 70.0, // below 80 from 13 s: clears at 16 s
            ],
        );
        assert_eq!(seen, vec![(9, false), (16, true)]);
    }

    #[test]
    fn below_rules_and_missing_values() {
        let rule = AlertRule::from_spec(&AlertSpec {
            below: Some(1.0),
            clear_above: Some(2.0),
            ..spec("clients")
        })
        .unwrap();
        assert_eq!(rule.direction, Direction::Below);
        let mut e = AlertEngine::new(vec![rule]);
        let t0 = Instant::now();
        let a = e.evaluate(t0, |m| (*m == AlertMetric::Clients).then_some(0.0));
        assert_eq!(a.len(), 1);
        assert!(!a[0].cleared);
        assert_eq!(a[0].metric, "clients");
        assert_eq!(a[0].threshold, 1.0);
        assert_eq!(a[0].level, Level::Warning);
        assert!(a[0].message.as_deref().unwrap().contains("below 1"));
        // No value: nothing changes.
        assert!(e.evaluate(t0, |_| None).is_empty());
        assert!(e.evaluate(t0, |_| Some(f64::NAN)).is_empty());
        assert!(e.evaluate(t0, |_| Some(1.5)).is_empty(), "inside the band");
        let a = e.evaluate(t0, |_| Some(3.0));
        assert_eq!(a.len(), 1);
        assert!(a[0].cleared);
        assert_eq!(a[0].threshold, 2.0);
    }

    #[test]
    fn latency_metric_is_looked_up_by_stage_and_stat() {
        let rule = AlertRule::from_spec(&AlertSpec {
            above: Some(1000.0),
            clear_below: Some(800.0),
            level: Level::Error,
            ..spec("latency.total.p95")
        })
        .unwrap();
        let mut e = AlertEngine::new(vec![rule, above(90.0, 80.0, 0.0)]);
        assert!(e.watches_latency());
        let a = e.evaluate(Instant::now(), |m| match m {
            AlertMetric::Latency { stage, stat }
                if stage == "total" && *stat == LatencyStat::P95 =>
            {
                Some(1500.0)
            }
            _ => Some(10.0),
        });
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].metric, "latency.total.p95");
        assert_eq!(a[0].level, Level::Error);
    }

    #[test]
    fn metric_names_round_trip() {
        for (n, _) in SIMPLE.iter() {
            assert_eq!(AlertMetric::parse(n).unwrap().name(), *n);
        }
        for n in [
            "latency.total.p95",
            "latency.llm_ttft.p50",
            "latency.a.b.max",
        ] {
            assert_eq!(AlertMetric::parse(n).unwrap().name(), n);
        }
        for bad in [
            "latency.total",
            "latency..p95",
            "latency.total.p42",
            "mem",
            "",
        ] {
            assert!(AlertMetric::parse(bad).is_err(), "{bad}");
        }
        assert!(AlertMetric::parse("mem").unwrap_err().contains("memory_mb"));
    }

    #[test]
    fn invalid_rules_name_the_field() {
        let field = |s: AlertSpec<'_>| AlertRule::from_spec(&s).unwrap_err().field;
        assert_eq!(field(spec("nope")), "metric");
        assert_eq!(field(spec("memory_mb")), "above");
        assert_eq!(
            field(AlertSpec {
                above: Some(10.0),
                ..spec("memory_mb")
            }),
            "clear_below"
        );
        assert_eq!(
            field(AlertSpec {
                above: Some(10.0),
                clear_below: Some(10.0),
                ..spec("memory_mb")
            }),
            "clear_below"
        );
        assert_eq!(
            field(AlertSpec {
                below: Some(10.0),
                clear_above: Some(5.0),
                ..spec("memory_mb")
            }),
            "clear_above"
        );
        assert_eq!(
            field(AlertSpec {
                above: Some(10.0),
                below: Some(1.0),
                ..spec("memory_mb")
            }),
            "above"
        );
        assert_eq!(
            field(AlertSpec {
                above: Some(10.0),
                clear_below: Some(5.0),
                clear_above: Some(20.0),
                ..spec("memory_mb")
            }),
            "clear_above"
        );
        assert_eq!(
            field(AlertSpec {
                above: Some(f64::INFINITY),
                clear_below: Some(5.0),
                ..spec("memory_mb")
            }),
            "above"
        );
        assert_eq!(
            field(AlertSpec {
                above: Some(10.0),
                clear_below: Some(5.0),
                for_s: -1.0,
                ..spec("memory_mb")
            }),
            "for_s"
        );
    }
}
