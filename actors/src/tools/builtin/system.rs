//! `system_status`: how the assistant is doing — uptime, its memory and CPU, the machine's
//! load, component states, stored memories.

use std::sync::Mutex;
use std::time::Instant;

use actix::Addr;
use serde_json::{json, Value};

use crate::components::ComponentRegistry;
use crate::memory::{MemoryActor, Stats};
use crate::tools::registry::{Tool, ToolContext, ToolFailure};

/// The assistant's own status.
pub struct SystemStatusTool {
    started: Instant,
    /// `None` where sysinfo cannot read this platform (the status then omits it).
    system: Mutex<Option<sysinfo::System>>,
    components: Option<ComponentRegistry>,
    memory: Option<Addr<MemoryActor>>,
}

impl std::fmt::Debug for SystemStatusTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemStatusTool").finish_non_exhaustive()
    }
}

impl SystemStatusTool {
    /// A status tool; uptime counts from now. Components and memory are reported when given.
    pub fn new(
        components: Option<ComponentRegistry>,
        memory: Option<Addr<MemoryActor>>,
    ) -> SystemStatusTool {
        SystemStatusTool {
            started: Instant::now(),
            system: Mutex::new(sysinfo::System::new().ok()),
            components,
            memory,
        }
    }
}

fn mb(bytes: u64) -> f64 {
    (bytes as f64 / (1024.0 * 1024.0) * 10.0).round() / 10.0
}

#[async_trait::async_trait]
impl Tool for SystemStatusTool {
    fn name(&self) -> &str {
        "system_status"
    }

    fn description(&self) -> &str {
        "The assistant's status: uptime, its memory and CPU use, the machine's load and memory, component states and how many long-term memories are stored."
    }

    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {}, "additionalProperties": false})
    }

    fn output_schema(&self) -> Option<Value> {
        Some(json!({"type": "object", "required": ["uptime_s", "process", "machine"]}))
    }

    async fn call(&self, _: Value, _: ToolContext) -> Result<Value, ToolFailure> {
        let (process, machine) = {
            let mut guard = self
                .system
                .lock()
                .map_err(|_| ToolFailure::Failed("system sampler unavailable".into()))?;
            let sys = guard.as_mut().ok_or_else(|| {
                ToolFailure::Failed("system statistics are not available on this platform".into())
            })?;
            sys.refresh_memory();
            let pid = sysinfo::get_current_pid().map_err(|e| ToolFailure::Failed(e.to_string()))?;
            sys.refresh_processes(sysinfo::ProcessesToUpdate::Some(&[pid]), true);
            let process = sys
                .process(pid)
                .map(|p| json!({"memory_mb": mb(p.memory()), "cpu_percent": p.cpu_usage()}));
            let load = sysinfo::System::load_average()
                .map(|l| json!([l.one, l.five, l.fifteen]))
                .unwrap_or(Value::Null);
            let machine = json!({
                "memory_used_mb": mb(sys.used_memory()),
                "memory_total_mb": mb(sys.total_memory()),
                "load_average": load,
                "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            });
            (process.unwrap_or(Value::Null), machine)
        };
        let memories = match &self.memory {
            Some(m) => m.send(Stats).await.ok().map(|s| s.memories),
            None => None,
        };
        let components = self.components.as_ref().map(|c| c.snapshot());
        Ok(json!({
            "uptime_s": (self.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            "process": process,
            "machine": machine,
            "components": components,
            "memories": memories,
        }))
    }
}
