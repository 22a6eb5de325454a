//! PerfTracker: latency percentiles per pipeline stage over a sliding window.
//!
//! Each stage keeps a few HDR histograms, one per slice of the window (a sixth of it);
//! a query merges the slices still inside the window, so the percentiles cover between
//! five and six sixths of `window` and old samples fall out a slice at a time. Values are
//! recorded in microseconds with two significant digits (at most 1% off); count, mean and
//! max are exact. Since-start totals (count and sum) are kept too, for Prometheus
//! summaries.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use coda_protocol::StageTiming;
use hdrhistogram::Histogram;

/// Slices per window.
const SLICES: u32 = 6;
/// Distinct stage names kept; more are dropped (a stage name is not meant to carry ids).
pub const MAX_STAGES: usize = 64;
/// Longest latency recorded: one hour, in microseconds (larger values are clamped).
const HIGHEST_US: u64 = 3_600_000_000;

/// Percentiles of one stage over the window, plus its since-start totals.
#[derive(Debug, Clone, PartialEq)]
pub struct StageSummary {
    /// The stage name.
    pub stage: String,
    /// Samples in the window.
    pub count: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Largest sample in the window, ms.
    pub max_ms: f64,
    /// Mean over the window, ms.
    pub mean_ms: f64,
    /// Samples since the tracker started.
    pub total_count: u64,
    /// Sum of every sample since the tracker started, ms.
    pub total_sum_ms: f64,
}

impl StageSummary {
    /// The wire form inside `component_timing`.
    pub fn to_timing(&self) -> StageTiming {
        StageTiming {
            stage: self.stage.clone(),
            count: self.count,
            p50_ms: self.p50_ms,
            p95_ms: self.p95_ms,
            p99_ms: self.p99_ms,
            max_ms: self.max_ms,
        }
    }
}

/// Why a sample was not recorded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RecordError {
    /// Negative, NaN or infinite.
    #[error("latency {0} ms is not a finite, non-negative number")]
    BadValue(f64),
    /// Empty stage name.
    #[error("empty stage name")]
    EmptyStage,
    /// Too many distinct stages.
    #[error("stage `{0}` not recorded: already tracking {MAX_STAGES} stages")]
    TooManyStages(String),
    /// The histogram could not be created (not expected with fixed parameters).
    #[error("histogram: {0}")]
    Histogram(String),
}

struct Slice {
    start: Instant,
    hist: Histogram<u32>,
    sum_ms: f64,
    max_ms: f64,
}

#[derive(Default)]
struct Stage {
    /// Oldest first.
    slices: VecDeque<Slice>,
    total_count: u64,
    total_sum_ms: f64,
}

/// Per-stage latency percentiles over a sliding window. Not thread-safe on purpose: it
/// lives inside the metrics actor.
pub struct PerfTracker {
    window: Duration,
    slice: Duration,
    started: Instant,
    stages: BTreeMap<String, Stage>,
    /// Samples recorded since [`PerfTracker::take_dirty`] was last called.
    dirty: u64,
}

impl PerfTracker {
    /// A tracker whose percentiles cover about `window` of history.
    pub fn new(window: Duration, now: Instant) -> PerfTracker {
        let window = window.max(Duration::from_millis(SLICES as u64));
        PerfTracker {
            window,
            slice: window / SLICES,
            started: now,
            stages: BTreeMap::new(),
            dirty: 0,
        }
    }

    /// The configured window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Seconds of history the percentiles cover now: the window, or less right after start.
    pub fn covered_s(&self, now: Instant) -> f64 {
        now.saturating_duration_since(self.started)
            .min(self.window)
            .as_secs_f64()
    }

    /// Records one latency sample of `stage`, in milliseconds.
    pub fn record(&mut self, stage: &str, ms: f64, now: Instant) -> Result<(), RecordError> {
        if !(ms.is_finite() && ms >= 0.0) {
            return Err(RecordError::BadValue(ms));
        }
        if stage.is_empty() {
            return Err(RecordError::EmptyStage);
        }
        if !self.stages.contains_key(stage) && self.stages.len() >= MAX_STAGES {
            return Err(RecordError::TooManyStages(stage.to_string()));
        }
        let (window, slice_len) = (self.window, self.slice);
        let st = self.stages.entry(stage.to_string()).or_default();
        expire(st, window, now);
        let fresh = st
            .slices
            .back()
            .is_none_or(|s| now.saturating_duration_since(s.start) >= slice_len);
        if fresh {
            // Auto-resizing: memory follows the largest value seen, not the whole range.
            let hist =
                Histogram::<u32>::new(2).map_err(|e| RecordError::Histogram(e.to_string()))?;
            st.slices.push_back(Slice {
                start: now,
                hist,
                sum_ms: 0.0,
                max_ms: 0.0,
            });
        }
        let Some(slice) = st.slices.back_mut() else {
            return Ok(());
        };
        let us = ((ms * 1000.0).round() as u64).clamp(1, HIGHEST_US);
        // `record` grows the auto-resizing histogram (`saturating_record` would clamp to
        // its current range); with the value clamped to HIGHEST_US it cannot fail.
        if slice.hist.record(us).is_err() {
            slice.hist.saturating_record(us);
        }
        slice.sum_ms += ms;
        slice.max_ms = slice.max_ms.max(ms);
        st.total_count += 1;
        st.total_sum_ms += ms;
        self.dirty += 1;
        Ok(())
    }

    /// Samples recorded since the last call (and resets the count).
    pub fn take_dirty(&mut self) -> u64 {
        std::mem::take(&mut self.dirty)
    }

    /// One summary per stage that has samples in the window, sorted by stage name. Stages
    /// with none left in the window but recorded earlier are included with `count == 0`
    /// only when `with_idle` is set (Prometheus keeps reporting their totals).
    pub fn summaries(&mut self, now: Instant, with_idle: bool) -> Vec<StageSummary> {
        let window = self.window;
        let mut out = Vec::with_capacity(self.stages.len());
        for (name, st) in self.stages.iter_mut() {
            expire(st, window, now);
            match summarise(name, st) {
                Some(s) => out.push(s),
                None if with_idle => out.push(StageSummary {
                    stage: name.clone(),
                    count: 0,
                    p50_ms: 0.0,
                    p95_ms: 0.0,
                    p99_ms: 0.0,
                    max_ms: 0.0,
                    mean_ms: 0.0,
                    total_count: st.total_count,
                    total_sum_ms: st.total_sum_ms,
                }),
                None => {}
            }
        }
        out
    }

    /// The summary of one stage (`None`: no samples in the window).
    pub fn stage(&mut self, stage: &str, now: Instant) -> Option<StageSummary> {
        let window = self.window;
        let st = self.stages.get_mut(stage)?;
        expire(st, window, now);
        summarise(stage, st)
    }
}

/// Drops slices whose every sample is older than the window.
fn expire(st: &mut Stage, window: Duration, now: Instant) {
    let slice_len = window / SLICES;
    while let Some(front) = st.slices.front() {
        // A slice holds samples from [start, start + slice_len).
        if now.saturating_duration_since(front.start) >= window + slice_len {
            st.slices.pop_front();
        } else {
            break;
        }
    }
}

fn summarise(name: &str, st: &Stage) -> Option<StageSummary> {
    let mut iter = st.slices.iter().filter(|s| !s.hist.is_empty());
    let first = iter.next()?;
    let mut merged = first.hist.clone();
    let (mut sum, mut max) = (first.sum_ms, first.max_ms);
    for s in iter {
        // Both auto-resize: adding cannot fail on range; ignore the impossible error.
        let _ = merged.add(&s.hist);
        sum += s.sum_ms;
        max = max.max(s.max_ms);
    }
    let count = merged.len();
    let q = |p: f64| (merged.value_at_quantile(p) as f64 / 1000.0).min(max);
    Some(StageSummary {
        stage: name.to_string(),
        count,
        p50_ms: q(0.50),
        p95_ms: q(0.95),
        p99_ms: q(0.99),
        max_ms: max,
        mean_ms: sum / count as f64,
        total_count: st.total_count,
        total_sum_ms: st.total_sum_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= b.abs() * 0.01 + 0.001
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let t0 = Instant::now();
        let mut p = PerfTracker::new(Duration::from_secs(60), t0);
        // 1..=1000 ms, shuffled by a stride so the order is not sorted.
        for i in 0..1000u64 {
            let v = ((i * 389) % 1000 + 1) as f64;
            p.record("llm", v, t0).unwrap();
        }
        let s = p.stage("llm", t0).unwrap();
        assert_eq!(s.count, 1000);
        assert!(close(s.p50_ms, 500.0), "p50 {}", s.p50_ms);
        assert!(close(s.p95_ms, 950.0), "p95 {}", s.p95_ms);
        assert!(close(s.p99_ms, 990.0), "p99 {}", s.p99_ms);
        assert_eq!(s.max_ms, 1000.0);
        assert!((s.mean_ms - 500.5).abs() < 1e-9, "mean {}", s.mean_ms);
        assert_eq!(s.total_count, 1000);
        assert!((s.total_sum_ms - 500_500.0).abs() < 1e-6);
        let timing = s.to_timing();
        assert_eq!(timing.stage, "llm");
        assert_eq!(timing.count, 1000);
    }

    #[test]
    fn sub_millisecond_and_huge_values() {
        let t0 = Instant::now();
        let mut p = PerfTracker::new(Duration::from_secs(60), t0);
        p.record("kernel_overhead", 0.25, t0).unwrap();
        p.record("kernel_overhead", 0.25, t0).unwrap();
        let s = p.stage("kernel_overhead", t0).unwrap();
        assert!(close(s.p50_ms, 0.25), "{}", s.p50_ms);
        p.record("stt", 5.0e9, t0).unwrap();
        let s = p.stage("stt", t0).unwrap();
        assert_eq!(s.max_ms, 5.0e9, "exact max survives clamping");
        assert!(s.p99_ms <= s.max_ms);
    }

    #[test]
    fn samples_leave_the_window() {
        let t0 = Instant::now();
        let w = Duration::from_secs(60);
        let mut p = PerfTracker::new(w, t0);
        p.record("total", 1000.0, t0).unwrap();
        p.record("total", 10.0, t0 + Duration::from_secs(30))
            .unwrap();
        let s = p.stage("total", t0 + Duration::from_secs(40)).unwrap();
        assert_eq!(s.count, 2);
        // 71 s after the first sample its slice (0..10 s) is older than the window.
        let s = p.stage("total", t0 + Duration::from_secs(71)).unwrap();
        assert_eq!(s.count, 1);
        assert_eq!(s.max_ms, 10.0);
        assert_eq!(s.total_count, 2, "totals are since start");
        assert!(p.stage("total", t0 + Duration::from_secs(200)).is_none());
        let idle = p.summaries(t0 + Duration::from_secs(200), true);
        assert_eq!(idle.len(), 1);
        assert_eq!((idle[0].count, idle[0].total_count), (0, 2));
        assert!(p.summaries(t0 + Duration::from_secs(200), false).is_empty());
    }

    #[test]
    fn covered_window_and_dirty_count() {
        let t0 = Instant::now();
        let mut p = PerfTracker::new(Duration::from_secs(60), t0);
        assert!((p.covered_s(t0 + Duration::from_secs(5)) - 5.0).abs() < 1e-9);
        assert!((p.covered_s(t0 + Duration::from_secs(500)) - 60.0).abs() < 1e-9);
        assert_eq!(p.take_dirty(), 0);
        p.record("tts", 3.0, t0).unwrap();
        p.record("stt", 3.0, t0).unwrap();
        assert_eq!(p.take_dirty(), 2);
        assert_eq!(p.take_dirty(), 0);
        let names: Vec<_> = p
            .summaries(t0, false)
            .into_iter()
            .map(|s| s.stage)
            .collect();
        assert_eq!(names, ["stt", "tts"]);
    }

    #[test]
    fn bad_samples_are_refused() {
        let t0 = Instant::now();
        let mut p = PerfTracker::new(Duration::from_secs(60), t0);
        assert_eq!(
            p.record("x", f64::NAN, t0).unwrap_err().to_string(),
            "latency NaN ms is not a finite, non-negative number"
        );
        assert!(p.record("x", -1.0, t0).is_err());
        assert_eq!(p.record("", 1.0, t0), Err(RecordError::EmptyStage));
        for i in 0..MAX_STAGES {
            p.record(&format!("s{i}"), 1.0, t0).unwrap();
        }
        assert!(matches!(
            p.record("one_more", 1.0, t0),
            Err(RecordError::TooManyStages(_))
        ));
        p.record("s0", 2.0, t0).unwrap();
    }
}
