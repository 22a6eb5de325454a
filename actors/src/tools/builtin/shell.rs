//! `run_command`: a shell command line (`sh -c`) in the project, under the shell rules
//! ([`ShellRules`]), a timeout and an output cap, with a clean environment and no input.
//!
//! The command runs in a process group of its own; when it times out, is cancelled (the
//! caller's interrupt) or ends leaving background processes, the whole group gets SIGTERM,
//! then SIGKILL after a grace period. The group leader is not reaped until then (it is
//! watched with `waitid(WNOWAIT)`), so its id cannot be reused by an unrelated group while
//! signals go to it. Output streams as `tool_progress` while it runs; the result keeps the
//! head and the tail of each stream and says how much was cut.

use std::collections::VecDeque;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::shell_rules::ShellRules;
use crate::tools::registry::{CallPermission, Tool, ToolContext, ToolFailure, ToolPreview};
use crate::tools::workspace::Workspace;

/// The `[tools.shell]` settings.
#[derive(Debug, Clone)]
pub struct ShellSettings {
    /// Timeout of a command that names none.
    pub timeout: Duration,
    /// Longest timeout a call may ask for.
    pub max_timeout: Duration,
    /// Bytes kept of each of stdout and stderr (half head, half tail).
    pub max_output_bytes: usize,
    /// Most bytes streamed as progress per call (the result still has head and tail).
    pub max_stream_bytes: usize,
    /// Between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// Variables passed on from Coda's environment, besides PATH, HOME and LANG.
    pub pass_env: Vec<String>,
    pub rules: ShellRules,
}

impl Default for ShellSettings {
    fn default() -> Self {
        ShellSettings {
            timeout: Duration::from_secs(60),
            max_timeout: Duration::from_secs(600),
            max_output_bytes: 12 * 1024,
            max_stream_bytes: 1024 * 1024,
            kill_grace: Duration::from_secs(2),
            pass_env: Vec::new(),
            rules: ShellRules::none(crate::tools::Permission::Ask),
        }
    }
}

/// Keeps the first and the last bytes of a stream, counting all.
#[derive(Debug)]
pub struct HeadTail {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    half: usize,
    total: u64,
}

impl HeadTail {
    /// Keeps at most `cap` bytes (half head, half tail).
    pub fn new(cap: usize) -> HeadTail {
        HeadTail {
            head: Vec::new(),
            tail: VecDeque::new(),
            half: cap / 2,
            total: 0,
        }
    }

    pub fn push(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len() as u64;
        let room = self.half.saturating_sub(self.head.len());
        let take = room.min(bytes.len());
        self.head.extend_from_slice(&bytes[..take]);
        bytes = &bytes[take..];
        if bytes.len() >= self.half {
            self.tail.clear();
            self.tail.extend(&bytes[bytes.len() - self.half..]);
        } else {
            let overflow = (self.tail.len() + bytes.len()).saturating_sub(self.half);
            self.tail.drain(..overflow);
            self.tail.extend(bytes);
        }
    }

    /// Bytes seen.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes left out of [`HeadTail::text`].
    pub fn cut(&self) -> u64 {
        self.total - (self.head.len() + self.tail.len()) as u64
    }

    /// The kept text (invalid UTF-8 replaced), with a line saying how much was cut.
    pub fn text(&self) -> String {
        let head = String::from_utf8_lossy(&self.head);
        if self.cut() == 0 {
            let tail: Vec<u8> = self.tail.iter().copied().collect();
            return format!("{head}{}", String::from_utf8_lossy(&tail));
        }
        let tail: Vec<u8> = self.tail.iter().copied().collect();
        format!(
            "{head}\n[... {} bytes cut ...]\n{}",
            self.cut(),
            String::from_utf8_lossy(&tail)
        )
    }
}

/// Why a command stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Finished,
    TimedOut,
    Cancelled,
}

/// Kills the group if the runner is left early (a panic).
struct GroupGuard {
    pgid: i32,
    armed: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            signal_group(self.pgid, libc::SIGKILL);
        }
    }
}

fn signal_group(pgid: i32, signal: i32) {
    // SAFETY: plain syscall; the group is one this runner created (process_group(0))
    // and whose leader it has not reaped, so the id is still that group's.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Has the leader exited? Leaves it unreaped (`WNOWAIT`).
fn leader_exited(pid: i32) -> bool {
    // SAFETY: `info` is a plain C struct filled by the kernel.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let rc = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        rc == 0 && info.si_pid() != 0
    }
}

/// Is a process of the group still alive (not a zombie)? Linux reads /proc; elsewhere
/// this cannot tell and says yes, so the full grace period is waited.
fn group_alive(pgid: i32) -> bool {
    #[cfg(target_os = "linux")]
    {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return true;
        };
        dir.filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
            .any(|e| {
                std::fs::read_to_string(e.path().join("stat"))
                    .ok()
                    .and_then(|stat| {
                        // After the `(comm)`, which may hold spaces: state ppid pgrp ...
                        let rest = &stat[stat.rfind(')')? + 2..];
                        let mut f = rest.split(' ');
                        let state = f.next()?;
                        let pgrp: i32 = f.nth(1)?.parse().ok()?;
                        Some(pgrp == pgid && state != "Z" && state != "X")
                    })
                    .unwrap_or(false)
            })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pgid;
        true
    }
}

/// SIGTERM to the group, SIGKILL after `grace` if any member is left.
fn terminate_group(pgid: i32, grace: Duration) {
    signal_group(pgid, libc::SIGTERM);
    let until = Instant::now() + grace;
    while Instant::now() < until && group_alive(pgid) {
        std::thread::sleep(Duration::from_millis(20));
    }
    signal_group(pgid, libc::SIGKILL);
    // SIGKILL is not instant: wait (bounded) until the members are gone.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until && group_alive(pgid) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The environment of a command: PATH, HOME, LANG, the pass-through names, and settings
/// that keep tools from waiting on a terminal that is not there.
fn clean_env(pass: &[String]) -> Vec<(String, String)> {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let mut env = vec![
        (
            "PATH".to_string(),
            get("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
        ),
        (
            "LANG".to_string(),
            get("LANG").unwrap_or_else(|| "C.UTF-8".into()),
        ),
        ("TERM".to_string(), "dumb".into()),
        ("PAGER".to_string(), "cat".into()),
        ("GIT_PAGER".to_string(), "cat".into()),
        ("GIT_TERMINAL_PROMPT".to_string(), "0".into()),
    ];
    if let Some(home) = get("HOME") {
        env.push(("HOME".into(), home));
    }
    for name in pass {
        if let Some(v) = get(name) {
            env.retain(|(k, _)| k != name);
            env.push((name.clone(), v));
        }
    }
    env
}

/// How a command ended.
#[derive(Debug)]
pub struct Outcome {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub cancelled: bool,
    pub stdout: HeadTail,
    pub stderr: HeadTail,
    pub duration: Duration,
}

/// Runs `line` with `sh -c` in `cwd`; blocks the calling thread until it ends.
pub fn run_shell(
    line: &str,
    cwd: &std::path::Path,
    timeout: Duration,
    settings: &ShellSettings,
    ctx: &ToolContext,
) -> std::io::Result<Outcome> {
    let started = Instant::now();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(line)
        .current_dir(cwd)
        .env_clear()
        .envs(clean_env(&settings.pass_env))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn()?;
    let pid = child.id() as i32;
    let mut guard = GroupGuard {
        pgid: pid,
        armed: true,
    };
    tracing::debug!(pid, command = line, "run_command started");

    let (tx, rx) = mpsc::channel::<(usize, Vec<u8>)>();
    let pipes: Vec<Box<dyn Read + Send>> = vec![
        Box::new(
            child
                .stdout
                .take()
                .ok_or_else(|| std::io::Error::other("no stdout pipe"))?,
        ),
        Box::new(
            child
                .stderr
                .take()
                .ok_or_else(|| std::io::Error::other("no stderr pipe"))?,
        ),
    ];
    for (i, mut pipe) in pipes.into_iter().enumerate() {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("coda-shell-pipe".into())
            .spawn(move || {
                let mut buf = vec![0u8; 4096];
                loop {
                    match pipe.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if tx.send((i, buf[..n].to_vec())).is_err() {
                                break;
                            }
                        }
                    }
                }
            })?;
    }
    drop(tx);

    const NAMES: [&str; 2] = ["stdout", "stderr"];
    let mut kept = [
        HeadTail::new(settings.max_output_bytes),
        HeadTail::new(settings.max_output_bytes),
    ];
    let mut pending: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut streamed = 0usize;
    let mut last_flush = Instant::now();
    let flush = |pending: &mut [Vec<u8>; 2], streamed: &mut usize, all: bool| {
        for (i, p) in pending.iter_mut().enumerate() {
            if p.is_empty() || (!all && p.len() < 4096) {
                continue;
            }
            if *streamed < settings.max_stream_bytes {
                let take = p.len().min(settings.max_stream_bytes - *streamed);
                ctx.report(NAMES[i], &String::from_utf8_lossy(&p[..take]));
                *streamed += take;
                if *streamed >= settings.max_stream_bytes {
                    ctx.report(NAMES[i], "\n[... no more output is streamed; the result keeps its head and tail ...]\n");
                }
            }
            p.clear();
        }
    };
    let deadline = started + timeout;
    let mut pipes_open = true;
    let stop = loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok((i, bytes)) => {
                kept[i].push(&bytes);
                pending[i].extend_from_slice(&bytes);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => pipes_open = false,
        }
        let stale = last_flush.elapsed() >= Duration::from_millis(50);
        flush(&mut pending, &mut streamed, stale);
        if stale {
            last_flush = Instant::now();
        }
        // The leader's own output is in the pipes already (a write returns once it is
        // there); it is drained below, after the background processes are stopped.
        if leader_exited(pid) {
            break Stop::Finished;
        }
        if ctx.is_cancelled() {
            break Stop::Cancelled;
        }
        if Instant::now() >= deadline {
            break Stop::TimedOut;
        }
    };
    // Whatever is left of the group (the whole command on timeout or cancel, background
    // processes after a normal end) goes now.
    terminate_group(pid, settings.kill_grace);
    guard.armed = false;
    // The pipes close once every holder is dead; one that escaped the group (setsid)
    // may keep them open, so the rest of the output is waited for a little only.
    let drain_until = Instant::now() + Duration::from_millis(500);
    while pipes_open {
        let left = drain_until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, bytes)) => {
                kept[i].push(&bytes);
                pending[i].extend_from_slice(&bytes);
            }
            Err(_) => pipes_open = false,
        }
    }
    flush(&mut pending, &mut streamed, true);
    let status = child.wait()?;
    let [stdout, stderr] = kept;
    tracing::debug!(pid, ?status, ?stop, "run_command ended");
    Ok(Outcome {
        exit_code: status.code(),
        signal: status.signal(),
        timed_out: stop == Stop::TimedOut,
        cancelled: stop == Stop::Cancelled,
        stdout,
        stderr,
        duration: started.elapsed(),
    })
}

fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGABRT => "SIGABRT".into(),
        libc::SIGPIPE => "SIGPIPE".into(),
        n => format!("signal {n}"),
    }
}

/// The shell tool.
pub struct RunCommand {
    ws: Arc<Workspace>,
    settings: ShellSettings,
}

impl RunCommand {
    pub fn new(ws: Arc<Workspace>, settings: ShellSettings) -> RunCommand {
        RunCommand { ws, settings }
    }

    fn cwd(&self, args: &Value) -> Result<(PathBuf, String), ToolFailure> {
        let given = args["cwd"]
            .as_str()
            .filter(|c| !c.is_empty())
            .unwrap_or(".");
        let r = self.ws.resolve(given).map_err(|e| {
            if e.is_confinement() {
                ToolFailure::Denied {
                    tool: self.name().into(),
                    why: format!("run there: {e}"),
                }
            } else {
                ToolFailure::Failed(e.to_string())
            }
        })?;
        if !r.abs.is_dir() {
            return Err(ToolFailure::Failed(format!(
                "cwd `{}` is not a directory",
                r.rel
            )));
        }
        Ok((r.abs, r.rel))
    }

    fn timeout(&self, args: &Value) -> Result<Duration, ToolFailure> {
        match args["timeout_s"].as_f64() {
            None => Ok(self.settings.timeout),
            Some(t) if t > 0.0 && t <= self.settings.max_timeout.as_secs_f64() => {
                Ok(Duration::from_secs_f64(t))
            }
            Some(t) => Err(ToolFailure::InvalidArguments(format!(
                "timeout_s {t} is not between 0 and {} (tools.shell.max_timeout_s)",
                self.settings.max_timeout.as_secs_f64()
            ))),
        }
    }
}

fn command_arg(args: &Value) -> Result<&str, ToolFailure> {
    let c = args["command"].as_str().unwrap_or_default();
    if c.trim().is_empty() {
        return Err(ToolFailure::InvalidArguments("the command is empty".into()));
    }
    Ok(c)
}

#[async_trait::async_trait]
impl Tool for RunCommand {
    fn name(&self) -> &str {
        "run_command"
    }

    fn description(&self) -> &str {
        "Runs a shell command line (sh -c) in the project root (or cwd inside it), without input, under a timeout. Answers its exit code and output (long output keeps its head and tail). Whether it runs at once, asks the user, or is refused depends on the configured shell rules."
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "command": {"type": "string", "minLength": 1, "maxLength": 8192,
                            "description": "The command line, e.g. \"cargo test --lib\""},
                "cwd": {"type": "string", "maxLength": 4096,
                        "description": "Directory relative to the project root, default the root"},
                "timeout_s": {"type": "number", "exclusiveMinimum": 0,
                              "description": "Seconds before the command is stopped"}
            },
            "required": ["command"],
            "additionalProperties": false
        })
    }

    fn timeout(&self) -> Option<Duration> {
        // The command's own timeout comes first; this only catches a runner that hangs.
        Some(self.settings.max_timeout + self.settings.kill_grace * 2 + Duration::from_secs(10))
    }

    fn call_permission(&self, args: &Value) -> Result<Option<CallPermission>, ToolFailure> {
        let line = command_arg(args)?;
        self.timeout(args)?;
        Ok(Some(self.settings.rules.decide(line)))
    }

    fn preview(&self, args: &Value) -> Result<Option<ToolPreview>, ToolFailure> {
        let line = command_arg(args)?;
        let (_, rel) = self.cwd(args)?;
        let why = self.settings.rules.decide(line).why;
        let place = if rel == "." {
            "the project root".to_string()
        } else {
            format!("`{rel}`")
        };
        Ok(Some(ToolPreview {
            summary: format!("run `{line}` in {place} ({why})"),
            diff: None,
        }))
    }

    async fn call(&self, args: Value, ctx: ToolContext) -> Result<Value, ToolFailure> {
        let line = command_arg(&args)?;
        let (cwd, rel) = self.cwd(&args)?;
        let timeout = self.timeout(&args)?;
        let o = run_shell(line, &cwd, timeout, &self.settings, &ctx)
            .map_err(|e| ToolFailure::Failed(format!("cannot run the command: {e}")))?;
        Ok(json!({
            "command": line,
            "cwd": rel,
            "exit_code": o.exit_code,
            "signal": o.signal.map(signal_name),
            "timed_out": o.timed_out,
            "cancelled": o.cancelled,
            "stdout": o.stdout.text(),
            "stderr": o.stderr.text(),
            "stdout_bytes": o.stdout.total(),
            "stderr_bytes": o.stderr.total(),
            "cut_bytes": o.stdout.cut() + o.stderr.cut(),
            "duration_ms": (o.duration.as_secs_f64() * 1e4).round() / 10.0,
        }))
    }
}

#[cfg(test)]
mod tests;
