//! MetricsActor: samples this process and the machine every `interval` and publishes
//! `system_metrics`; keeps per-stage latency percentiles (PerfTracker) and answers
//! `get_performance_metrics`; evaluates the alert rules; renders `GET /metrics`.
//!
//! Latency reaches the tracker two ways: every `latency_trace` event published on the hub
//! is observed and recorded stage by stage (so a turn's trace cannot drift from the
//! percentiles; stages are named like its fields without `_ms`: `stt`, `intent`,
//! `llm_ttft`, `llm`, `tts_first_audio`, `tts`, `total`, `kernel`), and [`RecordStage`]
//! records any other stage directly. Do not send `RecordStage` for a stage that is also
//! in a published `latency_trace`: it would be counted twice.
//!
//! ```no_run
//! # use coda_actors::components::ComponentRegistry;
//! # use coda_actors::hub::{EventHub, HubSettings};
//! # use coda_actors::metrics::{GetPerformance, MetricsActor, MetricsSettings, RecordStage};
//! # async fn demo() -> Result<(), actix::MailboxError> {
//! let hub = EventHub::start_hub(HubSettings::default());
//! let metrics = actix::Supervisor::start(|_| {
//!     MetricsActor::new(hub, MetricsSettings::default(), ComponentRegistry::new())
//! });
//! metrics.do_send(RecordStage { stage: "kernel_overhead".into(), ms: 0.4 });
//! let timing = metrics.send(GetPerformance).await?;
//! println!("{} turns, {} stages", timing.turns, timing.stages.len());
//! # Ok(())
//! # }
//! ```

pub mod alerts;
pub mod perf;
pub mod prometheus;
pub mod sampler;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use actix::prelude::*;
use coda_protocol::{
    Alert, ComponentState, ComponentTiming, EventType, LatencyTrace, Level, SystemMetrics,
    SYSTEM_SESSION,
};

use crate::components::ComponentRegistry;
use crate::hub::{GetCounters, HubDelivery, HubHandle, Observe, TypeMask};
use crate::supervise::{catch, RestartBudget, Supervision};
use alerts::{AlertEngine, AlertMetric, AlertRule, LatencyStat};
use perf::{PerfTracker, StageSummary};
use sampler::{Gpu, Sampler};

/// The component name in the registry.
pub const COMPONENT: &str = "metrics";

/// Settings (from the `[metrics]` config section).
#[derive(Debug, Clone)]
pub struct MetricsSettings {
    /// How often `system_metrics` is sampled and published (and alerts evaluated).
    pub interval: Duration,
    /// How often `component_timing` is published (only when something was recorded).
    pub timing_interval: Duration,
    /// History the latency percentiles cover.
    pub window: Duration,
    /// Alert rules.
    pub alerts: Vec<AlertRule>,
    /// Restarts tolerated before the component is marked degraded (sampling stops;
    /// latency answers go on).
    pub budget: RestartBudget,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            interval: Duration::from_secs(5),
            timing_interval: Duration::from_secs(30),
            window: Duration::from_secs(300),
            alerts: Vec::new(),
            budget: RestartBudget::default(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------

/// Record one latency sample of a pipeline stage, in milliseconds. Any stage name is
/// accepted (`stt`, `intent`, `llm_ttft`, `llm`, `tts_first_audio`, `tts`, `total`,
/// `kernel_overhead`, ...); negative or non-finite values are dropped with a debug log.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct RecordStage {
    pub stage: String,
    /// Its latency, ms.
    pub ms: f64,
}

/// The latency summary and counters: the `component_timing` payload.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "ComponentTiming")]
pub struct GetPerformance;

/// Renders the Prometheus text exposition for `GET /metrics`.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "String")]
pub struct RenderPrometheus;

/// Everything `/metrics` shows, as data (the OpenTelemetry export reads it).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "prometheus::Snapshot")]
pub struct GetSnapshot;

/// The latest `system_metrics` sample (`None` before the first interval has passed).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Option<SystemMetrics>")]
pub struct LatestSample;

// ---------------------------------------------------------------------------------------
// The actor
// ---------------------------------------------------------------------------------------

/// The metrics actor. Start it under a supervisor: `actix::Supervisor::start(|_| actor)`.
pub struct MetricsActor {
    /// Restart budget and `component_status` (the kernel's supervision glue).
    sup: Supervision,
    hub: HubHandle,
    settings: MetricsSettings,
    components: ComponentRegistry,
    started: Instant,
    /// `None` when sysinfo cannot start; the rest (latency, alerts on clients) works on.
    sampler: Option<Sampler>,
    sampler_error: Option<String>,
    gpu: Gpu,
    tracker: PerfTracker,
    alerts: AlertEngine,
    latest: Option<SystemMetrics>,
}

impl MetricsActor {
    /// A metrics actor publishing through `hub` and reporting its state in `components`.
    /// Opens sysinfo and NVML here (NVML once for the actor's whole life).
    pub fn new(
        hub: HubHandle,
        settings: MetricsSettings,
        components: ComponentRegistry,
    ) -> MetricsActor {
        let now = Instant::now();
        let (sampler, sampler_error) = match Sampler::new() {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(e.to_string())),
        };
        MetricsActor {
            sup: Supervision::new(COMPONENT, settings.budget, hub.clone(), components.clone()),
            tracker: PerfTracker::new(settings.window, now),
            alerts: AlertEngine::new(settings.alerts.clone()),
            hub,
            settings,
            components,
            started: now,
            sampler,
            sampler_error,
            gpu: Gpu::init(),
            latest: None,
        }
    }

    /// One sampling round: sample, publish, evaluate the alerts. sysinfo and NVML are
    /// foreign code: a panic in them is caught and restarts the actor.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.sup.is_degraded() {
            return;
        }
        if let Some(sampler) = self.sampler.as_mut() {
            let gpu = &mut self.gpu;
            match catch(|| {
                let mut m = sampler.sample();
                gpu.fill(&mut m);
                m
            }) {
                Ok(m) => {
                    self.hub.publish(SYSTEM_SESSION, &m);
                    self.latest = Some(m);
                }
                Err(panic) => {
                    self.sup.crashed(&panic);
                    ctx.stop();
                    return;
                }
            }
        }
        self.check_alerts(Instant::now());
    }

    fn check_alerts(&mut self, now: Instant) {
        let latency: HashMap<String, StageSummary> = if self.alerts.watches_latency() {
            self.tracker
                .summaries(now, false)
                .into_iter()
                .map(|s| (s.stage.clone(), s))
                .collect()
        } else {
            HashMap::new()
        };
        let latest = self.latest.as_ref();
        let clients = self.hub.counters().clients() as f64;
        let fired = self.alerts.evaluate(now, |metric| match metric {
            AlertMetric::MemoryMb => latest.map(|m| m.memory_mb),
            AlertMetric::CpuPercent => latest.map(|m| m.cpu_percent),
            AlertMetric::SystemCpuPercent => latest.and_then(|m| m.system_cpu_percent),
            AlertMetric::SystemMemoryUsedMb => latest.and_then(|m| m.system_memory_used_mb),
            AlertMetric::SystemMemoryPercent => latest.and_then(|m| {
                let (used, total) = (m.system_memory_used_mb?, m.system_memory_total_mb?);
                (total > 0.0).then(|| used / total * 100.0)
            }),
            AlertMetric::GpuVramMb => latest.and_then(|m| m.gpu_vram_mb),
            AlertMetric::GpuUtil => latest.and_then(|m| m.gpu_util),
            AlertMetric::Clients => Some(clients),
            AlertMetric::Latency { stage, stat } => latency.get(stage).map(|s| match stat {
                LatencyStat::P50 => s.p50_ms,
                LatencyStat::P95 => s.p95_ms,
                LatencyStat::P99 => s.p99_ms,
                LatencyStat::Max => s.max_ms,
                LatencyStat::Mean => s.mean_ms,
            }),
        });
        for a in fired {
            log_alert(&a);
            self.hub.publish(SYSTEM_SESSION, &a);
        }
    }

    fn record(&mut self, stage: &str, ms: f64) {
        if let Err(e) = self.tracker.record(stage, ms, Instant::now()) {
            tracing::debug!(stage, ms, error = %e, "latency sample dropped");
        }
    }

    fn record_trace(&mut self, t: &LatencyTrace) {
        let stages = [
            ("stt", t.stt_ms),
            ("intent", t.intent_ms),
            ("llm_ttft", t.llm_ttft_ms),
            ("llm", t.llm_ms),
            ("tts_first_audio", t.tts_first_audio_ms),
            ("tts", t.tts_ms),
            ("total", Some(t.total_ms)),
            ("kernel", t.kernel_ms),
        ];
        for (stage, ms) in stages {
            if let Some(ms) = ms {
                self.record(stage, ms);
            }
        }
    }

    fn counters(&self) -> BTreeMap<String, u64> {
        let c = self.hub.counters();
        let s = c.snapshot(0);
        let mut map = BTreeMap::from([
            ("events_published".to_string(), s.events_total()),
            ("clients_dropped_slow".to_string(), s.slow_disconnects),
            ("commands_received".to_string(), s.commands),
            ("commands_rejected".to_string(), s.command_errors),
            ("alerts_fired".to_string(), self.alerts.fired_total()),
        ]);
        for (kind, n) in s.refusals {
            map.insert(format!("{}_refused", kind.as_str()), n);
        }
        map
    }

    /// The `component_timing` payload now.
    fn timing(&mut self, now: Instant) -> ComponentTiming {
        let summaries = self.tracker.summaries(now, false);
        let turns = summaries
            .iter()
            .find(|s| s.stage == "total")
            .map_or(0, |s| s.count);
        ComponentTiming {
            window_s: self.tracker.covered_s(now),
            turns,
            stages: summaries.iter().map(StageSummary::to_timing).collect(),
            counters: self.counters(),
        }
    }

    fn snapshot(&mut self, now: Instant) -> prometheus::Snapshot {
        prometheus::Snapshot {
            uptime_s: now.saturating_duration_since(self.started).as_secs_f64(),
            latest: self.latest.clone(),
            stages: self.tracker.summaries(now, true),
            counters: self.hub.counters().snapshot(self.hub.last_seq()),
            components: self.components.snapshot(),
            alerts: self
                .alerts
                .rules()
                .map(|(rule, active)| prometheus::AlertState {
                    metric: rule.metric.name(),
                    level: rule.level,
                    active,
                })
                .collect(),
            alerts_fired: self.alerts.fired_total(),
            llm_usage: self.hub.counters().llm_usage_snapshot(),
        }
    }
}

fn log_alert(a: &Alert) {
    let msg = a.message.as_deref().unwrap_or("");
    if a.cleared {
        tracing::info!(metric = %a.metric, value = a.value, "alert cleared: {msg}");
        return;
    }
    match a.level {
        Level::Critical | Level::Error => {
            tracing::error!(metric = %a.metric, value = a.value, level = %a.level, "alert: {msg}")
        }
        Level::Warning => {
            tracing::warn!(metric = %a.metric, value = a.value, "alert: {msg}")
        }
        Level::Info | Level::Debug => {
            tracing::info!(metric = %a.metric, value = a.value, level = %a.level, "alert: {msg}")
        }
    }
}

impl Actor for MetricsActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Runs again after every restart: timers and the hub registration are renewed.
        let latency_mask =
            TypeMask::from_pattern(EventType::LatencyTrace.as_str()).unwrap_or(TypeMask::NONE);
        self.hub.addr().do_send(Observe {
            name: COMPONENT,
            mask: latency_mask,
            recipient: ctx.address().recipient(),
        });
        ctx.run_interval(self.settings.interval, |act, ctx| act.tick(ctx));
        ctx.run_interval(self.settings.timing_interval, |act, _| {
            if act.tracker.take_dirty() > 0 {
                let timing = act.timing(Instant::now());
                act.hub.publish(SYSTEM_SESSION, &timing);
            }
        });
        self.sup.started();
        match &self.sampler_error {
            None => {}
            Some(_) if self.sup.is_degraded() => {}
            Some(e) => {
                tracing::warn!(error = %e, "no system_metrics: cannot read system information");
                self.components.set(
                    &self.hub,
                    COMPONENT,
                    ComponentState::Degraded,
                    Some(format!("no system_metrics: {e}")),
                );
            }
        }
        tracing::debug!(
            interval_s = self.settings.interval.as_secs_f64(),
            alerts = self.settings.alerts.len(),
            gpu = self.gpu.available(),
            "metrics actor started"
        );
    }
}

impl Supervised for MetricsActor {
    /// Counts the restart against the budget and re-opens sysinfo (its CPU baseline
    /// restarts). The latency history, the alert states (so an active alert is not fired
    /// twice) and NVML are kept.
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.sup.restarting();
        (self.sampler, self.sampler_error) = match Sampler::new() {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(e.to_string())),
        };
    }
}

impl Handler<RecordStage> for MetricsActor {
    type Result = ();

    fn handle(&mut self, msg: RecordStage, _: &mut Context<Self>) {
        self.record(&msg.stage, msg.ms);
    }
}

impl Handler<GetPerformance> for MetricsActor {
    type Result = MessageResult<GetPerformance>;

    fn handle(&mut self, _: GetPerformance, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.timing(Instant::now()))
    }
}

impl Handler<LatestSample> for MetricsActor {
    type Result = Option<SystemMetrics>;

    fn handle(&mut self, _: LatestSample, _: &mut Context<Self>) -> Option<SystemMetrics> {
        self.latest.clone()
    }
}

impl Handler<GetSnapshot> for MetricsActor {
    type Result = MessageResult<GetSnapshot>;

    fn handle(&mut self, _: GetSnapshot, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.snapshot(Instant::now()))
    }
}

impl Handler<RenderPrometheus> for MetricsActor {
    type Result = ResponseFuture<String>;

    fn handle(&mut self, _: RenderPrometheus, _: &mut Context<Self>) -> Self::Result {
        let mut snap = self.snapshot(Instant::now());
        // Counters read inside the hub, between two events, so per-type counts add up to
        // the seq exactly; if the hub is gone, the relaxed reads taken above stand.
        let counters = self.hub.addr().send(GetCounters);
        Box::pin(async move {
            if let Ok(c) = counters.await {
                snap.counters = c;
            }
            prometheus::render(&snap)
        })
    }
}

impl Handler<HubDelivery> for MetricsActor {
    type Result = ();

    fn handle(&mut self, msg: HubDelivery, _: &mut Context<Self>) {
        let HubDelivery::Event(ev) = msg else {
            return;
        };
        if ev.event_type != EventType::LatencyTrace {
            return;
        }
        #[derive(serde::Deserialize)]
        struct Envelope {
            data: LatencyTrace,
        }
        match serde_json::from_str::<Envelope>(&ev.json) {
            Ok(env) => self.record_trace(&env.data),
            Err(e) => tracing::warn!(seq = ev.seq, error = %e, "latency_trace not recorded"),
        }
    }
}

crate::impl_fault_injection!(MetricsActor);

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use coda_protocol::ComponentState;

    use super::*;
    use crate::hub::{EventHub, HubSettings, Register, SharedEvent, Unregister};

    /// Collects what the hub delivers.
    struct Collector(Arc<Mutex<Vec<SharedEvent>>>);

    impl Actor for Collector {
        type Context = Context<Self>;
    }

    impl Handler<HubDelivery> for Collector {
        type Result = ();
        fn handle(&mut self, msg: HubDelivery, _: &mut Context<Self>) {
            self.0.lock().unwrap().extend(msg.live().iter().cloned());
        }
    }

    fn collect(hub: &HubHandle, types: &[&str]) -> Arc<Mutex<Vec<SharedEvent>>> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let addr = Collector(seen.clone()).start();
        hub.addr().do_send(Observe {
            name: "test-collector",
            mask: TypeMask::from_patterns(types).unwrap(),
            recipient: addr.recipient(),
        });
        seen
    }

    fn data(ev: &SharedEvent) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(&ev.json).unwrap();
        v["data"].clone()
    }

    async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "{what}: not within 10 s");
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn settings(interval_ms: u64, alerts: Vec<AlertRule>) -> MetricsSettings {
        MetricsSettings {
            interval: Duration::from_millis(interval_ms),
            timing_interval: Duration::from_millis(interval_ms),
            window: Duration::from_secs(60),
            alerts,
            budget: RestartBudget::default(),
        }
    }

    #[actix_rt::test]
    async fn publishes_system_metrics_at_the_interval() {
        let hub = EventHub::start_hub(HubSettings::default());
        let seen = collect(&hub, &["system_metrics", "component_status"]);
        let components = ComponentRegistry::new();
        let t0 = Instant::now();
        let m = Supervisor::start({
            let (hub, components) = (hub.clone(), components.clone());
            move |_| MetricsActor::new(hub, settings(100, vec![]), components)
        });
        let count = |t: EventType| {
            seen.lock()
                .unwrap()
                .iter()
                .filter(|e| e.event_type == t)
                .count()
        };
        wait_until("5 system_metrics", || count(EventType::SystemMetrics) >= 5).await;
        let elapsed = t0.elapsed();
        // 5 samples at 100 ms take at least 500 ms; a loose upper bound catches a
        // runaway or stalled timer without timing the machine.
        assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
        let events = seen.lock().unwrap().clone();
        for ev in events
            .iter()
            .filter(|e| e.event_type == EventType::SystemMetrics)
        {
            let d: SystemMetrics = serde_json::from_value(data(ev)).unwrap();
            assert!(d.memory_mb > 1.0 && d.memory_mb < 4096.0, "{d:?}");
            assert!(d.cpu_percent >= 0.0, "{d:?}");
            assert!(ev.json.contains("\"session_id\":\"system\""), "{}", ev.json);
        }
        let status = events
            .iter()
            .find(|e| e.event_type == EventType::ComponentStatus)
            .map(data)
            .expect("component_status");
        assert_eq!(status["component"], "metrics");
        assert_eq!(status["state"], "running");
        assert!(components
            .snapshot()
            .iter()
            .any(|c| c.name == "metrics" && c.state == ComponentState::Running));
        let latest = m.send(LatestSample).await.unwrap().expect("a sample");
        assert!(latest.memory_mb > 1.0);
    }

    #[actix_rt::test]
    async fn latency_from_traces_and_record_stage() {
        let hub = EventHub::start_hub(HubSettings::default());
        let seen = collect(&hub, &["component_timing"]);
        let m = Supervisor::start({
            let hub = hub.clone();
            move |_| MetricsActor::new(hub, settings(100, vec![]), ComponentRegistry::new())
        });
        // Nothing recorded yet: no component_timing.
        actix_rt::time::sleep(Duration::from_millis(350)).await;
        assert!(seen.lock().unwrap().is_empty());
        let t = m.send(GetPerformance).await.unwrap();
        assert!(t.stages.is_empty() && t.turns == 0);

        for i in 1..=10 {
            hub.publish(
                "s1",
                &LatencyTrace {
                    turn_id: format!("t{i}"),
                    stt_ms: None,
                    endpoint_ms: None,
                    stt_wait_ms: None,
                    intent_ms: Some(2.0),
                    llm_ttft_ms: None,
                    llm_ms: Some(100.0 * i as f64),
                    tts_first_audio_ms: None,
                    tts_ms: None,
                    total_ms: 200.0 * i as f64,
                    kernel_ms: Some(1.5),
                },
            );
        }
        m.do_send(RecordStage {
            stage: "kernel_overhead".into(),
            ms: 0.5,
        });
        m.do_send(RecordStage {
            stage: "kernel_overhead".into(),
            ms: f64::NAN,
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let t = loop {
            let t = m.send(GetPerformance).await.unwrap();
            if t.turns == 10 {
                break t;
            }
            assert!(Instant::now() < deadline, "10 turns not recorded: {t:?}");
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(t.turns, 10);
        let stage = |n: &str| t.stages.iter().find(|s| s.stage == n).cloned();
        let total = stage("total").unwrap();
        assert_eq!(total.count, 10);
        assert_eq!(total.max_ms, 2000.0);
        assert!((total.p50_ms - 1000.0).abs() <= 10.0, "{total:?}");
        assert_eq!(stage("llm").unwrap().count, 10);
        assert_eq!(stage("intent").unwrap().count, 10);
        assert_eq!(stage("kernel").unwrap().max_ms, 1.5);
        assert_eq!(stage("kernel_overhead").unwrap().count, 1, "NaN dropped");
        assert!(stage("stt").is_none(), "absent stages are not invented");
        assert!(t.counters["events_published"] >= 10);
        assert!(t.window_s > 0.0 && t.window_s <= 60.0);
        // And it is published periodically now that something was recorded.
        wait_until("component_timing published", || {
            !seen.lock().unwrap().is_empty()
        })
        .await;
        let published: ComponentTiming =
            serde_json::from_value(data(&seen.lock().unwrap()[0])).unwrap();
        assert_eq!(published.turns, 10);
    }

    #[actix_rt::test]
    async fn clients_alert_fires_and_clears_once() {
        let hub = EventHub::start_hub(HubSettings::default());
        let seen = collect(&hub, &["alert"]);
        let rule = AlertRule::from_spec(&alerts::AlertSpec {
            metric: "clients",
            above: Some(1.5),
            clear_below: Some(0.5),
            below: None,
            clear_above: None,
            for_s: 0.0,
            level: Level::Warning,
        })
        .unwrap();
        let m = Supervisor::start({
            let hub = hub.clone();
            move |_| MetricsActor::new(hub, settings(50, vec![rule]), ComponentRegistry::new())
        });
        // Two fake connections: above 1.5.
        let sink = Collector(Arc::new(Mutex::new(Vec::new()))).start();
        for id in [1, 2] {
            hub.addr().do_send(Register {
                client_id: id,
                recipient: sink.clone().recipient(),
            });
        }
        wait_until("alert fired", || seen.lock().unwrap().len() == 1).await;
        // One leaves: 1 is inside the band; nothing happens for a while.
        hub.addr().do_send(Unregister { client_id: 1 });
        actix_rt::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(seen.lock().unwrap().len(), 1, "no flap inside the band");
        hub.addr().do_send(Unregister { client_id: 2 });
        wait_until("alert cleared", || seen.lock().unwrap().len() == 2).await;
        actix_rt::time::sleep(Duration::from_millis(300)).await;
        let alerts: Vec<Alert> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|e| serde_json::from_value(data(e)).unwrap())
            .collect();
        assert_eq!(alerts.len(), 2, "{alerts:?}");
        assert_eq!((alerts[0].cleared, alerts[0].value), (false, 2.0));
        assert_eq!((alerts[1].cleared, alerts[1].value), (true, 0.0));
        assert_eq!(alerts[0].metric, "clients");
        assert_eq!(alerts[1].threshold, 0.5);
        let text = m.send(RenderPrometheus).await.unwrap();
        assert!(text.contains("coda_alerts_fired_total 1\n"), "{text}");
        assert!(
            text.contains("coda_alert_active{rule=\"0\",metric=\"clients\",level=\"warning\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("coda_events_total{type=\"alert\"} 2\n"),
            "{text}"
        );
    }

    #[actix_rt::test]
    async fn a_restart_keeps_history_and_alert_state_and_resumes_sampling() {
        let hub = EventHub::start_hub(HubSettings::default());
        let seen = collect(&hub, &["component_status", "alert", "system_metrics"]);
        let rule = AlertRule::from_spec(&alerts::AlertSpec {
            metric: "memory_mb",
            above: Some(1.0),
            clear_below: Some(0.5),
            below: None,
            clear_above: None,
            for_s: 0.0,
            level: Level::Info,
        })
        .unwrap();
        let components = ComponentRegistry::new();
        let m = Supervisor::start({
            let (hub, components) = (hub.clone(), components.clone());
            move |_| MetricsActor::new(hub, settings(50, vec![rule]), components)
        });
        let count = |t: EventType| {
            seen.lock()
                .unwrap()
                .iter()
                .filter(|e| e.event_type == t)
                .count()
        };
        wait_until("the memory alert", || count(EventType::Alert) == 1).await;
        m.do_send(RecordStage {
            stage: "total".into(),
            ms: 42.0,
        });
        m.do_send(crate::supervise::InjectFault::PanicInHandler);
        let before = count(EventType::SystemMetrics);
        wait_until("sampling resumes", || {
            count(EventType::SystemMetrics) >= before + 3
        })
        .await;
        let states: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.event_type == EventType::ComponentStatus)
            .map(|e| data(e)["state"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(states, ["running", "restarting", "running"]);
        let info = components.snapshot();
        assert_eq!(info[0].restarts, 1);
        assert_eq!(
            count(EventType::Alert),
            1,
            "the active alert is not fired again"
        );
        let t = m.send(GetPerformance).await.unwrap();
        assert_eq!(t.turns, 1, "latency history kept: {t:?}");
        // The hub observer was renewed: a trace after the restart is recorded.
        hub.publish(
            "s",
            &LatencyTrace {
                turn_id: "t".into(),
                stt_ms: None,
                endpoint_ms: None,
                stt_wait_ms: None,
                intent_ms: None,
                llm_ttft_ms: None,
                llm_ms: None,
                tts_first_audio_ms: None,
                tts_ms: None,
                total_ms: 10.0,
                kernel_ms: None,
            },
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while m.send(GetPerformance).await.unwrap().turns != 2 {
            assert!(
                Instant::now() < deadline,
                "trace after restart not recorded"
            );
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[actix_rt::test]
    async fn prometheus_counts_match_the_seq() {
        let hub = EventHub::start_hub(HubSettings::default());
        let m = Supervisor::start({
            let hub = hub.clone();
            move |_| MetricsActor::new(hub, settings(3_600_000, vec![]), ComponentRegistry::new())
        });
        for _ in 0..7 {
            hub.publish(
                SYSTEM_SESSION,
                &coda_protocol::SystemError {
                    level: Level::Warning,
                    component: "test".into(),
                    code: "x".into(),
                    message: "m".into(),
                },
            );
        }
        let text = m.send(RenderPrometheus).await.unwrap();
        prometheus::tests::parse_strict(&text).unwrap();
        let seq_line = text
            .lines()
            .find(|l| l.starts_with("coda_event_seq "))
            .unwrap();
        let seq: u64 = seq_line["coda_event_seq ".len()..].parse().unwrap();
        let sum: u64 = text
            .lines()
            .filter(|l| l.starts_with("coda_events_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(sum, seq, "{text}");
        assert!(
            text.contains("coda_events_total{type=\"system_error\"} 7\n"),
            "{text}"
        );
        // component_status (metrics running) came first.
        assert!(seq >= 8, "{text}");
    }
}
