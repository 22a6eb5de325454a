//! The built-in tools: `clock`, `calculator`, `remember`, `recall`, `system_status`,
//! `timer`.

pub mod calculator;
pub mod clock;
pub mod memory;
pub mod system;
pub mod timer;

use std::sync::Arc;

use actix::Addr;

use crate::components::ComponentRegistry;
use crate::memory::MemoryActor;

use super::registry::{RegistryError, ToolRegistry};

/// Names of every built-in tool.
pub const BUILTIN_TOOLS: &[&str] = &[
    "calculator",
    "clock",
    "recall",
    "remember",
    "system_status",
    "timer",
];

/// What the built-ins need from the rest of the system. Without a memory actor,
/// `remember` and `recall` are not registered (and calling them is `unknown_tool`).
#[derive(Default, Clone)]
pub struct BuiltinDeps {
    /// For `remember`, `recall` and the memory count in `system_status`.
    pub memory: Option<Addr<MemoryActor>>,
    /// For component states in `system_status`.
    pub components: Option<ComponentRegistry>,
    /// For `timer` (without it, no `timer` tool).
    pub timers: Option<Addr<timer::TimerService>>,
}

/// Registers every built-in whose dependencies are present.
pub fn register_builtins(
    registry: &mut ToolRegistry,
    deps: BuiltinDeps,
) -> Result<(), RegistryError> {
    registry.register(Arc::new(clock::ClockTool))?;
    registry.register(Arc::new(calculator::CalculatorTool))?;
    registry.register(Arc::new(system::SystemStatusTool::new(
        deps.components.clone(),
        deps.memory.clone(),
    )))?;
    if let Some(m) = &deps.memory {
        registry.register(Arc::new(memory::RememberTool::new(m.clone())))?;
        registry.register(Arc::new(memory::RecallTool::new(m.clone())))?;
    }
    if let Some(t) = &deps.timers {
        registry.register(Arc::new(timer::TimerTool::new(t.clone())))?;
    }
    Ok(())
}
