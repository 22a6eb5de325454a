//! The tool registry: what a tool is ([`Tool`]), what it may do ([`Permission`]), and how
//! a call is run so that a tool that panics, hangs or returns garbage is contained and
//! reported ([`ToolRegistry::call`]).

use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub use coda_protocol::ToolPreview;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::llm::ToolSpec;

/// What a tool is allowed to do without asking (the `tools.permissions` config map).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum Permission {
    /// Runs when called.
    Safe,
    /// Runs only on a call marked `confirmed` (the user said yes); otherwise the call fails
    /// with `needs_confirmation`, so the caller can ask.
    Ask,
    /// Never runs, and is not offered to the LLM.
    Deny,
}

impl std::str::FromStr for Permission {
    type Err = String;
    fn from_str(s: &str) -> Result<Permission, String> {
        match s {
            "safe" => Ok(Permission::Safe),
            "ask" => Ok(Permission::Ask),
            "deny" => Ok(Permission::Deny),
            other => Err(format!(
                "`{other}` is not a permission (use \"safe\", \"ask\" or \"deny\")"
            )),
        }
    }
}

impl TryFrom<String> for Permission {
    type Error = String;
    fn try_from(name: String) -> Result<Permission, String> {
        name.parse()
    }
}

/// Why a tool call failed. [`ToolFailure::code`] is the `tool_error.code`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ToolFailure {
    /// No tool by that name.
    #[error("there is no tool named `{0}`")]
    UnknownTool(String),
    /// The configuration denies it (the tool, or this call: a shell rule).
    #[error("the tool `{tool}` is not allowed to {why}")]
    Denied {
        tool: String,
        /// What was refused and by which setting, e.g. "run (tools.permissions.x is deny)".
        why: String,
    },
    /// Its permission is `ask` and the call was not confirmed. The preview says what the
    /// call would do (a write's diff, a command line), for the user to decide.
    #[error("the tool `{tool}` needs the user's confirmation before it runs{}", confirm_suffix(.preview.as_deref()))]
    NeedsConfirmation {
        tool: String,
        preview: Option<Box<ToolPreview>>,
    },
    /// The arguments do not match the tool's JSON Schema (or are not JSON).
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    /// The tool ran and reported a failure.
    #[error("{0}")]
    Failed(String),
    /// The tool did not answer in time.
    #[error("the tool did not answer within {:.1} s", .0.as_secs_f64())]
    Timeout(Duration),
    /// The tool panicked.
    #[error("the tool crashed: {0}")]
    Panicked(String),
    /// The tool answered something unusable (too large, or not what it declared).
    #[error("the tool returned an unusable result: {0}")]
    BadOutput(String),
    /// The tool system is not running.
    #[error("tools are unavailable: {0}")]
    Unavailable(String),
}

impl ToolFailure {
    /// The stable code for `tool_error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            ToolFailure::UnknownTool(_) => "unknown_tool",
            ToolFailure::Denied { .. } => "denied",
            ToolFailure::NeedsConfirmation { .. } => "needs_confirmation",
            ToolFailure::InvalidArguments(_) => "invalid_arguments",
            ToolFailure::Failed(_) => "failed",
            ToolFailure::Timeout(_) => "timeout",
            ToolFailure::Panicked(_) => "panicked",
            ToolFailure::BadOutput(_) => "bad_output",
            ToolFailure::Unavailable(_) => "unavailable",
        }
    }

    /// Severity for `tool_error.level`: the tool's own faults are errors, refusals are
    /// warnings.
    pub fn level(&self) -> coda_protocol::Level {
        use coda_protocol::Level;
        match self {
            ToolFailure::Timeout(_)
            | ToolFailure::Panicked(_)
            | ToolFailure::BadOutput(_)
            | ToolFailure::Unavailable(_)
            | ToolFailure::Failed(_) => Level::Error,
            _ => Level::Warning,
        }
    }

    /// A tool refused by its configured permission.
    pub fn denied_by_config(tool: &str) -> ToolFailure {
        ToolFailure::Denied {
            tool: tool.to_string(),
            why: format!("run (tools.permissions.{tool} is \"deny\")"),
        }
    }

    /// What the call would have done, for a `needs_confirmation`.
    pub fn preview(&self) -> Option<&ToolPreview> {
        match self {
            ToolFailure::NeedsConfirmation { preview, .. } => preview.as_deref(),
            _ => None,
        }
    }
}

fn confirm_suffix(preview: Option<&ToolPreview>) -> String {
    preview
        .map(|p| format!(": it would {}", p.summary))
        .unwrap_or_default()
}

/// Where a running tool reports progress (a command's output as it comes); the Tools
/// actor publishes it as `tool_progress`, `coda tools call` prints it.
#[derive(Clone)]
pub struct ProgressSink(Arc<ProgressFn>);

/// `(stream, text)`.
type ProgressFn = dyn Fn(&str, &str) + Send + Sync;

impl ProgressSink {
    /// A sink calling `f(stream, text)`.
    pub fn new(f: impl Fn(&str, &str) + Send + Sync + 'static) -> ProgressSink {
        ProgressSink(Arc::new(f))
    }
}

impl std::fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressSink")
    }
}

/// How one call is to be treated, when it depends on its arguments (the shell's rules).
#[derive(Debug, Clone, PartialEq)]
pub struct CallPermission {
    pub permission: Permission,
    /// Which rule decided, for the user ("tools.shell.allow `git diff *`").
    pub why: String,
}

/// What a running call knows about itself.
#[derive(Debug, Clone, Default)]
pub struct ToolContext {
    /// Id of this call (as in `tool_call` / `tool_result`).
    pub call_id: String,
    /// The conversation session, if any.
    pub session_id: Option<String>,
    /// The turn, if any.
    pub turn_id: Option<String>,
    /// Set when the caller gave up (timeout, interrupt): a long tool should check it and
    /// stop.
    pub cancelled: Arc<AtomicBool>,
    /// Where to report progress, if anyone listens.
    pub progress: Option<ProgressSink>,
}

impl ToolContext {
    /// Has the caller given up on this call?
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Reports progress (`stream`: e.g. `stdout`, `stderr`); nothing when nobody listens.
    pub fn report(&self, stream: &str, text: &str) {
        if let Some(p) = &self.progress {
            (p.0)(stream, text);
        }
    }
}

/// A tool. Implementations are shared (`Arc<dyn Tool>`).
///
/// `call` runs on a thread of its own (driven by `Handle::block_on`), so it may block or
/// compute without stalling any actor, and may also `.await` (actor messages, timers). It
/// is given up on after its timeout (an awaiting tool is dropped then; a blocking one
/// should check [`ToolContext::is_cancelled`]); a panic is caught.
#[async_trait::async_trait]
pub trait Tool: Send + Sync + 'static {
    /// Unique name (`[a-z0-9_]`, as function-calling APIs require).
    fn name(&self) -> &str;

    /// What it does, for the LLM and for people.
    fn description(&self) -> &str;

    /// JSON Schema of the arguments object.
    fn parameters(&self) -> Value;

    /// JSON Schema the result must match, when the tool declares one (checked: a result
    /// that does not match is reported as `bad_output`, never passed on).
    fn output_schema(&self) -> Option<Value> {
        None
    }

    /// This tool's timeout, when it needs another than `tools.default_timeout_s`.
    fn timeout(&self) -> Option<Duration> {
        None
    }

    /// The permission this call needs, when it depends on the arguments (`None`: the
    /// tool's configured one alone). The stricter of this and the configured permission
    /// applies. An error refuses the call (bad arguments found early).
    fn call_permission(&self, _args: &Value) -> Result<Option<CallPermission>, ToolFailure> {
        Ok(None)
    }

    /// What a call would do, shown when it needs confirmation (a write's diff). An error
    /// refuses the call at once (the edit cannot apply), instead of asking for nothing.
    fn preview(&self, _args: &Value) -> Result<Option<ToolPreview>, ToolFailure> {
        Ok(None)
    }

    /// Runs the tool on valid arguments.
    async fn call(&self, args: Value, ctx: ToolContext) -> Result<Value, ToolFailure>;
}

/// A registered tool, as listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolInfo {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments.
    pub parameters: Value,
    /// Permission in force.
    pub permission: Permission,
    /// Timeout, seconds.
    pub timeout_s: f64,
}

/// Problems registering a tool (programming or configuration errors, found at start).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegistryError {
    /// Two tools with one name.
    #[error("a tool named `{0}` is already registered")]
    Duplicate(String),
    /// A name function-calling APIs would refuse.
    #[error("tool name `{0}` must be 1-64 characters of a-z, 0-9 and _")]
    BadName(String),
    /// The tool's schema is not a valid JSON Schema.
    #[error("the {which} schema of tool `{tool}` is invalid: {message}")]
    BadSchema {
        tool: String,
        /// `arguments` or `output`.
        which: &'static str,
        /// Why.
        message: String,
    },
    /// A permission names a tool that does not exist (and is no built-in).
    #[error("tools.permissions names `{0}`, which is not a registered tool")]
    UnknownInPermissions(String),
    /// A tool of a group (an MCP server's) whose name does not fit.
    #[error("tool `{tool}` of {group}: {problem}")]
    BadGroupTool {
        group: String,
        tool: String,
        problem: String,
    },
}

/// A tool that joins the registry with a group (an MCP server's tools), with the
/// permission decided for it.
pub struct GroupTool {
    pub tool: Arc<dyn Tool>,
    pub permission: Permission,
}

/// The separator between a group's name and its tools' (`time__get_current_time`):
/// function-calling APIs accept only `[A-Za-z0-9_-]` in names, so no dot.
pub const GROUP_SEPARATOR: &str = "__";

struct Entry {
    tool: Arc<dyn Tool>,
    arguments: jsonschema::Validator,
    output: Option<jsonschema::Validator>,
    permission: Permission,
    timeout: Duration,
}

/// Registry settings (the `[tools]` config section).
#[derive(Debug, Clone, PartialEq)]
pub struct RegistrySettings {
    /// Timeout of a tool that names none.
    pub default_timeout: Duration,
    /// Permission of a tool the config does not name.
    pub default_permission: Permission,
    /// Largest result accepted, in bytes of JSON.
    pub max_output_bytes: usize,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            default_timeout: Duration::from_secs(5),
            default_permission: Permission::Ask,
            max_output_bytes: 64 * 1024,
        }
    }
}

/// The tools, their validators and permissions: the built-ins, fixed at start, and the
/// groups that come and go while it runs (each MCP server's tools).
pub struct ToolRegistry {
    entries: BTreeMap<String, Arc<Entry>>,
    groups: RwLock<BTreeMap<String, BTreeMap<String, Arc<Entry>>>>,
    settings: RegistrySettings,
}

impl std::fmt::Debug for ToolRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolRegistry")
            .field(
                "tools",
                &self.all().into_iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("settings", &self.settings)
            .finish()
    }
}

fn compile(
    tool: &str,
    which: &'static str,
    schema: &Value,
) -> Result<jsonschema::Validator, RegistryError> {
    jsonschema::validator_for(schema).map_err(|e| RegistryError::BadSchema {
        tool: tool.to_string(),
        which,
        message: e.to_string(),
    })
}

impl ToolRegistry {
    /// An empty registry.
    pub fn new(settings: RegistrySettings) -> ToolRegistry {
        ToolRegistry {
            entries: BTreeMap::new(),
            groups: RwLock::new(BTreeMap::new()),
            settings,
        }
    }

    /// Adds a tool (permission: the default until [`ToolRegistry::set_permissions`]).
    pub fn register(&mut self, tool: Arc<dyn Tool>) -> Result<(), RegistryError> {
        let name = tool.name().to_string();
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(RegistryError::BadName(name));
        }
        if self.entries.contains_key(&name) {
            return Err(RegistryError::Duplicate(name));
        }
        let arguments = compile(&name, "arguments", &tool.parameters())?;
        let output = match tool.output_schema() {
            Some(s) => Some(compile(&name, "output", &s)?),
            None => None,
        };
        let timeout = tool.timeout().unwrap_or(self.settings.default_timeout);
        self.entries.insert(
            name,
            Arc::new(Entry {
                tool,
                arguments,
                output,
                permission: self.settings.default_permission,
                timeout,
            }),
        );
        Ok(())
    }

    /// Puts `group`'s tools in place of the ones it had (an MCP server connected or its
    /// tools changed). Each name must be `group__…` of `[A-Za-z0-9_-]`, at most 64, and
    /// not a built-in's. A tool that does not fit is left out and reported; the others
    /// join. Returns the names that joined, and the problems.
    pub fn set_group(
        &self,
        group: &str,
        tools: Vec<GroupTool>,
    ) -> (Vec<String>, Vec<RegistryError>) {
        let mut joined = BTreeMap::new();
        let mut problems = Vec::new();
        for t in tools {
            let name = t.tool.name().to_string();
            let bad = |problem: &str| RegistryError::BadGroupTool {
                group: group.to_string(),
                tool: name.clone(),
                problem: problem.to_string(),
            };
            let prefix = format!("{group}{GROUP_SEPARATOR}");
            if !name.starts_with(&prefix) || name.len() == prefix.len() {
                problems.push(bad(&format!("its name must start with `{prefix}`")));
                continue;
            }
            if name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                problems.push(bad(
                    "a tool name must be 1-64 characters of A-Z, a-z, 0-9, _ and -",
                ));
                continue;
            }
            if self.entries.contains_key(&name) || joined.contains_key(&name) {
                problems.push(RegistryError::Duplicate(name));
                continue;
            }
            let arguments = match compile(&name, "arguments", &t.tool.parameters()) {
                Ok(v) => v,
                Err(e) => {
                    problems.push(e);
                    continue;
                }
            };
            let output = match t.tool.output_schema().map(|s| compile(&name, "output", &s)) {
                Some(Err(e)) => {
                    problems.push(e);
                    continue;
                }
                Some(Ok(v)) => Some(v),
                None => None,
            };
            let timeout = t.tool.timeout().unwrap_or(self.settings.default_timeout);
            joined.insert(
                name,
                Arc::new(Entry {
                    tool: t.tool,
                    arguments,
                    output,
                    permission: t.permission,
                    timeout,
                }),
            );
        }
        let names = joined.keys().cloned().collect();
        if let Ok(mut groups) = self.groups.write() {
            groups.insert(group.to_string(), joined);
        }
        (names, problems)
    }

    /// Takes `group`'s tools out (its server stopped or failed).
    pub fn remove_group(&self, group: &str) {
        if let Ok(mut groups) = self.groups.write() {
            groups.remove(group);
        }
    }

    /// A tool by name: a built-in, or one of a group's.
    fn entry(&self, name: &str) -> Option<Arc<Entry>> {
        if let Some(e) = self.entries.get(name) {
            return Some(e.clone());
        }
        let groups = self.groups.read().ok()?;
        groups.values().find_map(|g| g.get(name).cloned())
    }

    /// Every tool, built-ins first, then the groups', by name.
    fn all(&self) -> Vec<(String, Arc<Entry>)> {
        let mut all: Vec<(String, Arc<Entry>)> = self
            .entries
            .iter()
            .map(|(n, e)| (n.clone(), e.clone()))
            .collect();
        if let Ok(groups) = self.groups.read() {
            for g in groups.values() {
                all.extend(g.iter().map(|(n, e)| (n.clone(), e.clone())));
            }
        }
        all
    }

    /// Applies the configured permissions. A name that is not registered is an error,
    /// unless it is a built-in left out for want of its dependencies (`coda tools` has no
    /// memory store, for one).
    pub fn set_permissions(
        &mut self,
        permissions: &BTreeMap<String, Permission>,
    ) -> Result<(), RegistryError> {
        for (name, p) in permissions {
            match self.entries.get_mut(name).map(Arc::get_mut) {
                Some(Some(entry)) => entry.permission = *p,
                // Set before any call, so never shared yet; if it were, a clear error.
                Some(None) => return Err(RegistryError::Duplicate(name.clone())),
                None if super::builtin::is_builtin(name) => {}
                // An MCP server's tool: its server applies it when its tools join.
                None if name.contains(GROUP_SEPARATOR) => {}
                None => return Err(RegistryError::UnknownInPermissions(name.clone())),
            }
        }
        Ok(())
    }

    /// Every tool.
    pub fn list(&self) -> Vec<ToolInfo> {
        self.all()
            .into_iter()
            .map(|(name, e)| ToolInfo {
                name: name.clone(),
                description: e.tool.description().to_string(),
                parameters: e.tool.parameters(),
                permission: e.permission,
                timeout_s: e.timeout.as_secs_f64(),
            })
            .collect()
    }

    /// The tools offered to the LLM for function calling (every tool not denied).
    pub fn specs(&self) -> Vec<ToolSpec> {
        self.all()
            .into_iter()
            .filter(|(_, e)| e.permission != Permission::Deny)
            .map(|(name, e)| ToolSpec {
                name,
                description: e.tool.description().to_string(),
                parameters: e.tool.parameters(),
            })
            .collect()
    }

    /// Whether a tool exists, and its permission.
    pub fn permission(&self, name: &str) -> Option<Permission> {
        self.entry(name).map(|e| e.permission)
    }

    /// Checks a call without running it: the tool exists, the configuration does not deny
    /// it, the arguments are valid, and, when it would need confirmation that `confirmed`
    /// does not give, `needs_confirmation` with a preview of what it would do. Returns the
    /// arguments to run with (`null` made `{}`).
    pub fn check(
        &self,
        name: &str,
        arguments: Value,
        confirmed: bool,
    ) -> Result<Value, ToolFailure> {
        let entry = self
            .entry(name)
            .ok_or_else(|| ToolFailure::UnknownTool(name.to_string()))?;
        if entry.permission == Permission::Deny {
            return Err(ToolFailure::denied_by_config(name));
        }
        // Function-calling models sometimes send `null` for "no arguments".
        let arguments = if arguments.is_null() {
            Value::Object(Default::default())
        } else {
            arguments
        };
        let problems: Vec<String> = entry
            .arguments
            .iter_errors(&arguments)
            .take(3)
            .map(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() {
                    e.to_string()
                } else {
                    format!("{at}: {e}")
                }
            })
            .collect();
        if !problems.is_empty() {
            return Err(ToolFailure::InvalidArguments(problems.join("; ")));
        }
        let per_call = entry.tool.call_permission(&arguments)?;
        let permission = match &per_call {
            Some(c) => stricter(entry.permission, c.permission),
            None => entry.permission,
        };
        match permission {
            Permission::Deny => Err(ToolFailure::Denied {
                tool: name.to_string(),
                why: per_call.map(|c| c.why).unwrap_or_else(|| "run".to_string()),
            }),
            Permission::Ask if !confirmed => Err(ToolFailure::NeedsConfirmation {
                tool: name.to_string(),
                preview: entry.tool.preview(&arguments)?.map(Box::new),
            }),
            _ => Ok(arguments),
        }
    }

    /// Runs one call: [`ToolRegistry::check`], then the tool on a thread of its own under
    /// its timeout, with panics caught and the result checked (size, declared schema).
    /// Must be called inside a tokio runtime.
    pub async fn call(
        &self,
        name: &str,
        arguments: Value,
        ctx: ToolContext,
        confirmed: bool,
    ) -> Result<Value, ToolFailure> {
        let arguments = self.check(name, arguments, confirmed)?;
        let entry = self
            .entry(name)
            .ok_or_else(|| ToolFailure::UnknownTool(name.to_string()))?;

        let tool = entry.tool.clone();
        let cancelled = ctx.cancelled.clone();
        let timeout = entry.timeout;
        let handle = tokio::runtime::Handle::current();
        let (tx, rx) = tokio::sync::oneshot::channel();
        // A thread of its own, not the blocking pool: a runtime waits for its blocking
        // pool when it shuts down, so one tool stuck in a loop would hang `coda serve`'s
        // exit; a detached thread does not hold the process. The timeout also runs inside
        // the thread, so an async tool that never finishes is dropped and its thread ends.
        std::thread::Builder::new()
            .name(format!("coda-tool-{name}"))
            .spawn(move || {
                let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
                    // The timer is made inside `block_on`, where the runtime is entered.
                    handle.block_on(async move {
                        tokio::time::timeout(timeout, tool.call(arguments, ctx)).await
                    })
                }));
                let _ = tx.send(outcome);
            })
            .map_err(|e| {
                ToolFailure::Unavailable(format!("cannot start a thread for the call: {e}"))
            })?;
        let value = match tokio::time::timeout(timeout, rx).await {
            Err(_) | Ok(Ok(Ok(Err(_)))) => {
                cancelled.store(true, Ordering::Relaxed);
                tracing::warn!(tool = name, "tool call timed out");
                return Err(ToolFailure::Timeout(timeout));
            }
            Ok(Ok(Err(payload))) => {
                let message = panic_message(payload);
                tracing::error!(tool = name, panic = %message, "tool panicked");
                return Err(ToolFailure::Panicked(message));
            }
            Ok(Err(_)) => {
                return Err(ToolFailure::Unavailable(
                    "the tool's thread ended without an answer".into(),
                ))
            }
            Ok(Ok(Ok(Ok(result)))) => result?,
        };
        let size = serde_json::to_vec(&value)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > self.settings.max_output_bytes {
            return Err(ToolFailure::BadOutput(format!(
                "{size} bytes, more than the {} allowed (tools.max_output_bytes)",
                self.settings.max_output_bytes
            )));
        }
        if let Some(output) = &entry.output {
            if let Some(e) = output.iter_errors(&value).next() {
                return Err(ToolFailure::BadOutput(format!(
                    "it does not match the tool's declared result: {e}"
                )));
            }
        }
        Ok(value)
    }
}

/// The stricter of two permissions (deny > ask > safe).
pub fn stricter(a: Permission, b: Permission) -> Permission {
    let rank = |p: Permission| match p {
        Permission::Safe => 0,
        Permission::Ask => 1,
        Permission::Deny => 2,
    };
    if rank(a) >= rank(b) {
        a
    } else {
        b
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_string()
    }
}
