//! Resource sampling: this process's CPU and resident memory and the machine's CPU and
//! memory through sysinfo, GPU memory and utilisation through NVML when an NVIDIA driver
//! is there (feature `gpu`).
//!
//! A sample reads `/proc/self/stat`, `/proc/self/statm`, `/proc/stat` and `/proc/meminfo`
//! (one process, no task list): well under a millisecond, so it runs on the actor's own thread instead of paying a `spawn_blocking`
//! round trip every interval.

use std::time::Duration;

use coda_protocol::SystemMetrics;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

const MIB: f64 = 1024.0 * 1024.0;

/// Why sampling is not possible on this machine.
#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    /// sysinfo could not start (e.g. `/proc` not readable).
    #[error("system information unavailable: {0}")]
    System(String),
}

/// The sysinfo half: process and machine CPU and memory.
pub struct Sampler {
    sys: System,
    pid: Pid,
    warned_missing: bool,
}

impl Sampler {
    /// Opens sysinfo and takes the first CPU reading (CPU use is a difference between two
    /// readings, so the first sample after this one is the first meaningful one).
    pub fn new() -> Result<Sampler, SamplerError> {
        let sys = System::new().map_err(|e| SamplerError::System(e.to_string()))?;
        let pid = sysinfo::get_current_pid().map_err(|e| SamplerError::System(e.to_string()))?;
        let mut s = Sampler {
            sys,
            pid,
            warned_missing: false,
        };
        s.refresh();
        Ok(s)
    }

    fn refresh(&mut self) {
        self.sys.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[self.pid]),
            false,
            ProcessRefreshKind::nothing()
                .with_cpu()
                .with_memory()
                .without_tasks(),
        );
        self.sys.refresh_cpu_usage();
        self.sys.refresh_memory();
    }

    /// One sample (GPU fields empty; see [`Gpu::fill`]).
    pub fn sample(&mut self) -> SystemMetrics {
        self.refresh();
        let (memory_mb, cpu_percent) = match self.sys.process(self.pid) {
            Some(p) => (p.memory() as f64 / MIB, f64::from(p.cpu_usage())),
            None => {
                if !self.warned_missing {
                    self.warned_missing = true;
                    tracing::warn!(pid = %self.pid, "own process not found by sysinfo; process metrics read 0");
                }
                (0.0, 0.0)
            }
        };
        let total = self.sys.total_memory();
        let (used_mb, total_mb) = if total > 0 {
            (
                Some(self.sys.used_memory() as f64 / MIB),
                Some(total as f64 / MIB),
            )
        } else {
            (None, None)
        };
        let cpus = self.sys.cpus().len();
        SystemMetrics {
            memory_mb,
            cpu_percent,
            gpu_vram_mb: None,
            gpu_util: None,
            system_memory_used_mb: used_mb,
            system_memory_total_mb: total_mb,
            system_cpu_percent: (cpus > 0).then(|| f64::from(self.sys.global_cpu_usage())),
        }
    }

    /// Logical CPUs seen (the bound of `cpu_percent` is 100 times this).
    pub fn cpu_count(&self) -> usize {
        self.sys.cpus().len()
    }
}

/// The shortest interval that gives meaningful CPU percentages.
pub const MIN_CPU_INTERVAL: Duration = sysinfo::MINIMUM_CPU_UPDATE_INTERVAL;

/// The NVML half. Initialised once; without a driver (or without the `gpu` feature) every
/// sample simply has no GPU fields.
pub struct Gpu {
    #[cfg(feature = "gpu")]
    nvml: Option<nvml_wrapper::Nvml>,
    #[cfg(feature = "gpu")]
    warned: bool,
}

impl Gpu {
    /// Loads NVML. Failure (no driver, no GPU) is one info log, not an error.
    #[cfg(feature = "gpu")]
    pub fn init() -> Gpu {
        match nvml_wrapper::Nvml::init() {
            Ok(nvml) => {
                let devices = nvml.device_count().unwrap_or(0);
                tracing::info!(
                    devices,
                    "NVML loaded: GPU memory and utilisation in system_metrics"
                );
                Gpu {
                    nvml: Some(nvml),
                    warned: false,
                }
            }
            Err(e) => {
                tracing::info!(reason = %e, "no NVIDIA GPU metrics (NVML not available); system_metrics will have no GPU fields");
                Gpu {
                    nvml: None,
                    warned: false,
                }
            }
        }
    }

    /// Without the `gpu` feature there is nothing to load.
    #[cfg(not(feature = "gpu"))]
    pub fn init() -> Gpu {
        tracing::info!("built without the `gpu` feature: system_metrics will have no GPU fields");
        Gpu {}
    }

    /// Is NVML loaded?
    pub fn available(&self) -> bool {
        #[cfg(feature = "gpu")]
        {
            self.nvml.is_some()
        }
        #[cfg(not(feature = "gpu"))]
        {
            false
        }
    }

    /// Adds GPU memory used (all devices together) and utilisation (their mean) to `m`.
    /// A failing query leaves the fields out and warns once.
    pub fn fill(&mut self, m: &mut SystemMetrics) {
        #[cfg(feature = "gpu")]
        {
            let Some(nvml) = &self.nvml else {
                return;
            };
            match read_gpus(nvml) {
                Ok(Some((vram_mb, util))) => {
                    m.gpu_vram_mb = Some(vram_mb);
                    m.gpu_util = Some(util);
                }
                Ok(None) => {}
                Err(e) => {
                    if !self.warned {
                        self.warned = true;
                        tracing::warn!(error = %e, "GPU query failed; GPU fields left out (not repeated)");
                    }
                }
            }
        }
        #[cfg(not(feature = "gpu"))]
        {
            let _ = m;
        }
    }
}

#[cfg(feature = "gpu")]
fn read_gpus(
    nvml: &nvml_wrapper::Nvml,
) -> Result<Option<(f64, f64)>, nvml_wrapper::error::NvmlError> {
    let n = nvml.device_count()?;
    if n == 0 {
        return Ok(None);
    }
    let (mut used, mut util) = (0u64, 0u64);
    for i in 0..n {
        let d = nvml.device_by_index(i)?;
        used += d.memory_info()?.used;
        util += u64::from(d.utilization_rates()?.gpu);
    }
    Ok(Some((used as f64 / MIB, util as f64 / f64::from(n))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_values() {
        let mut s = Sampler::new().unwrap();
        std::thread::sleep(MIN_CPU_INTERVAL);
        let m = s.sample();
        assert!(m.memory_mb > 1.0 && m.memory_mb < 4096.0, "{m:?}");
        let cores = s.cpu_count().max(1) as f64;
        assert!(
            m.cpu_percent >= 0.0 && m.cpu_percent <= 100.0 * cores,
            "{m:?}"
        );
        let total = m.system_memory_total_mb.unwrap();
        let used = m.system_memory_used_mb.unwrap();
        assert!(total > m.memory_mb && used > 0.0 && used <= total, "{m:?}");
        let sys = m.system_cpu_percent.unwrap();
        assert!((0.0..=100.0).contains(&sys), "{m:?}");
    }

    #[test]
    fn no_gpu_means_no_fields() {
        let mut g = Gpu::init();
        let mut m = SystemMetrics {
            memory_mb: 1.0,
            cpu_percent: 0.0,
            gpu_vram_mb: None,
            gpu_util: None,
            system_memory_used_mb: None,
            system_memory_total_mb: None,
            system_cpu_percent: None,
        };
        g.fill(&mut m);
        if g.available() {
            assert!(m.gpu_vram_mb.is_some() && m.gpu_util.is_some());
        } else {
            assert_eq!((m.gpu_vram_mb, m.gpu_util), (None, None));
            // Again: still nothing, no error.
            g.fill(&mut m);
            assert_eq!(m.gpu_vram_mb, None);
        }
    }
}
