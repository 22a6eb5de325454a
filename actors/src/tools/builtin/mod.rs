//! The built-in tools: `clock`, `calculator`, `remember`, `recall`, `system_status`,
//! `timer`; and the coding tools over a project: the file tools (`read_file`,
//! `write_file`, `edit_file`, `list_dir`, `search_files`, `undo_last_write`), the
//! shell (`run_command`), version control (`vcs_status`, `vcs_diff`, `vcs_log`,
//! `vcs_blame`, `vcs_show`, `vcs_commit`, `vcs_undo_commit`) and `repo_map`.

pub mod calculator;
pub mod clock;
pub mod files;
pub mod memory;
pub mod shell;
pub mod shell_rules;
pub mod system;
pub mod timer;
pub mod vcs;

use std::sync::Arc;

use actix::Addr;

use crate::components::ComponentRegistry;
use crate::memory::MemoryActor;
use crate::tools::workspace::Workspace;

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

/// Names of the coding tools (registered when a project is given).
pub const CODING_TOOLS: &[&str] = &[
    "edit_file",
    "list_dir",
    "read_file",
    "repo_map",
    "run_command",
    "search_files",
    "undo_last_write",
    "vcs_blame",
    "vcs_commit",
    "vcs_diff",
    "vcs_log",
    "vcs_show",
    "vcs_status",
    "vcs_undo_commit",
    "write_file",
];

/// Is `name` a built-in or coding tool (registered or not)?
pub fn is_builtin(name: &str) -> bool {
    BUILTIN_TOOLS.contains(&name) || CODING_TOOLS.contains(&name)
}

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
    /// The project of the coding tools (without it, none of them).
    pub project: Option<Arc<Workspace>>,
    /// The shell's settings (with a project: `run_command`).
    pub shell: Option<shell::ShellSettings>,
    /// Where `repo_map` caches tags (`None`: not cached).
    pub map_cache: Option<std::path::PathBuf>,
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
    if let Some(ws) = &deps.project {
        for tool in files::file_tools(ws) {
            registry.register(tool)?;
        }
        for tool in vcs::vcs_tools(ws, deps.map_cache.clone()) {
            registry.register(tool)?;
        }
        if let Some(shell) = deps.shell {
            registry.register(Arc::new(shell::RunCommand::new(ws.clone(), shell)))?;
        }
    }
    Ok(())
}
