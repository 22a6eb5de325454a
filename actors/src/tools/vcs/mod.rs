//! Version control for the coding tools: git, Mercurial, Subversion and Fossil behind one
//! [`Repo`], found by walking up from a directory ([`detect`]).
//!
//! Every operation runs the VCS's own command-line program with machine-readable output
//! where it has one (`git status --porcelain=v2 -z`, `HGPLAIN=1 hg … -Tjson`, `svn … --xml`,
//! Fossil's plain listings) and hardened: no prompts (`GIT_TERMINAL_PROMPT=0`,
//! `--noninteractive`, `--non-interactive`), no pager, no external diff or fsmonitor, no
//! user configuration that changes output (`HGPLAIN`, `LC_ALL=C`), stdin closed, a timeout
//! that kills the program, and output capped. The CLIs rather than `gix`: one code path for
//! reads and writes in every VCS, and a status of this repository takes ~10 ms through
//! `git` (the reads are not where the time goes in a tool call).
//!
//! Jujutsu (`.jj`) is detected first, as its colocated repositories also hold `.git`, and
//! is refused with a clear error: `jj` is not packaged for this machine's Debian.

mod fossil;
mod git;
mod hg;
mod svn;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;

/// The version control systems Coda knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VcsKind {
    Jj,
    Git,
    Hg,
    Svn,
    Fossil,
}

impl VcsKind {
    /// The program that runs it.
    pub fn program(self) -> &'static str {
        match self {
            VcsKind::Jj => "jj",
            VcsKind::Git => "git",
            VcsKind::Hg => "hg",
            VcsKind::Svn => "svn",
            VcsKind::Fossil => "fossil",
        }
    }

    /// What marks a working copy's root, in the order they are looked for in one
    /// directory (`.jj` before `.git`: a colocated jj repository has both).
    const MARKERS: [(&'static str, VcsKind); 6] = [
        (".jj", VcsKind::Jj),
        (".git", VcsKind::Git),
        (".hg", VcsKind::Hg),
        (".svn", VcsKind::Svn),
        (".fslckout", VcsKind::Fossil),
        ("_FOSSIL_", VcsKind::Fossil),
    ];
}

impl std::fmt::Display for VcsKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.program())
    }
}

/// Why a VCS operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VcsError {
    /// No working copy at or above the directory.
    #[error("{0} is not inside a git, Mercurial, Subversion, Fossil or Jujutsu working copy")]
    NotARepository(PathBuf),
    /// The VCS's program is not installed.
    #[error("this is a {kind} working copy, but `{program}` is not installed (or not on PATH)")]
    NotInstalled { kind: VcsKind, program: String },
    /// Detected but not supported yet.
    #[error("{0} working copies are not supported yet")]
    Unsupported(VcsKind),
    /// The program ran and failed.
    #[error("`{command}` failed: {message}")]
    Failed { command: String, message: String },
    /// The program did not finish in time (it was killed).
    #[error("`{command}` did not finish within {:.0} s and was stopped", .after.as_secs_f64())]
    Timeout { command: String, after: Duration },
    /// The program's output could not be read.
    #[error("cannot read the output of `{command}`: {message}")]
    BadOutput { command: String, message: String },
    /// The request itself is wrong (an unsafe revision, a path outside the repository).
    #[error("{0}")]
    Invalid(String),
    /// Undo refused: the last commit is not the one the assistant made.
    #[error(
        "the last commit is {found}, not {expected} (the commit to undo); nothing was changed"
    )]
    NotLastCommit { expected: String, found: String },
}

/// One changed path of a working copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileStatus {
    /// Relative to the root, `/`-separated.
    pub path: String,
    pub state: FileState,
    /// Where a renamed or copied file came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// What happened to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileState {
    Modified,
    Added,
    Deleted,
    Renamed,
    Copied,
    /// Not under version control.
    Untracked,
    /// Tracked, gone from disk without the VCS being told.
    Missing,
    /// Merge conflict.
    Conflicted,
}

/// One commit (changeset, revision, check-in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Commit {
    /// Full id (hash, or the revision number for Subversion).
    pub id: String,
    pub author: String,
    /// As the VCS gives it (ISO 8601 where it can).
    pub date: String,
    /// The first line of the message.
    pub summary: String,
}

/// One line of a blame (annotate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlameLine {
    /// 1-based.
    pub line: usize,
    /// The commit that last changed it (may be abbreviated where the VCS only gives that).
    pub id: String,
    pub author: String,
    pub text: String,
}

/// A working copy and the VCS that manages it.
#[derive(Debug, Clone)]
pub struct Repo {
    kind: VcsKind,
    root: PathBuf,
    timeout: Duration,
    max_output: usize,
}

/// How long one VCS command may run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The most output read from one VCS command (the rest is cut, and said to be).
pub const DEFAULT_MAX_OUTPUT: usize = 4 << 20;
/// The author of the assistant's commits where the VCS has no identity configured.
pub const AUTHOR_NAME: &str = "Coda";
pub const AUTHOR_EMAIL: &str = "coda@localhost";

/// The working copy at or above `start`: the nearest directory holding a VCS's marker.
pub fn detect(start: &Path) -> Result<Repo, VcsError> {
    let start = start
        .canonicalize()
        .map_err(|e| VcsError::Invalid(format!("cannot open {}: {e}", start.display())))?;
    for dir in start.ancestors() {
        for (marker, kind) in VcsKind::MARKERS {
            if dir.join(marker).exists() {
                return Repo::open(kind, dir);
            }
        }
    }
    Err(VcsError::NotARepository(start))
}

impl Repo {
    /// A working copy of `kind` rooted at `root` (its program must be installed).
    pub fn open(kind: VcsKind, root: &Path) -> Result<Repo, VcsError> {
        if kind == VcsKind::Jj {
            return Err(if which(kind.program()) {
                VcsError::Unsupported(kind)
            } else {
                VcsError::NotInstalled {
                    kind,
                    program: kind.program().into(),
                }
            });
        }
        if !which(kind.program()) {
            return Err(VcsError::NotInstalled {
                kind,
                program: kind.program().into(),
            });
        }
        Ok(Repo {
            kind,
            root: root.to_path_buf(),
            timeout: DEFAULT_TIMEOUT,
            max_output: DEFAULT_MAX_OUTPUT,
        })
    }

    /// With another per-command timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Repo {
        self.timeout = timeout;
        self
    }

    pub fn kind(&self) -> VcsKind {
        self.kind
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Changed, added, removed, untracked and conflicted paths.
    pub async fn status(&self) -> Result<Vec<FileStatus>, VcsError> {
        match self.kind {
            VcsKind::Git => git::status(self).await,
            VcsKind::Hg => hg::status(self).await,
            VcsKind::Svn => svn::status(self).await,
            VcsKind::Fossil => fossil::status(self).await,
            VcsKind::Jj => Err(VcsError::Unsupported(self.kind)),
        }
    }

    /// The working copy's changes against `rev` (default: the commit it is based on), as
    /// a unified diff.
    pub async fn diff(&self, rev: Option<&str>) -> Result<String, VcsError> {
        let rev = rev.map(check_rev).transpose()?;
        match self.kind {
            VcsKind::Git => git::diff(self, rev).await,
            VcsKind::Hg => hg::diff(self, rev).await,
            VcsKind::Svn => svn::diff(self, rev).await,
            VcsKind::Fossil => fossil::diff(self, rev).await,
            VcsKind::Jj => Err(VcsError::Unsupported(self.kind)),
        }
    }

    /// The last `limit` commits, newest first.
    pub async fn log(&self, limit: usize) -> Result<Vec<Commit>, VcsError> {
        let limit = limit.clamp(1, 1000);
        match self.kind {
            VcsKind::Git => git::log(self, limit).await,
            VcsKind::Hg => hg::log(self, limit).await,
            VcsKind::Svn => svn::log(self, limit).await,
            VcsKind::Fossil => fossil::log(self, limit).await,
            VcsKind::Jj => Err(VcsError::Unsupported(self.kind)),
        }
    }

    /// Who last changed each line of `path` (relative to the root).
    pub async fn blame(&self, path: &str) -> Result<Vec<BlameLine>, VcsError> {
        let path = self.check_path(path)?;
        match self.kind {
            VcsKind::Git => git::blame(self, &path).await,
            VcsKind::Hg => hg::blame(self, &path).await,
            VcsKind::Svn => svn::blame(self, &path).await,
            VcsKind::Fossil => fossil::blame(self, &path).await,
            VcsKind::Jj => Err(VcsError::Unsupported(self.kind)),
        }
    }

    /// A commit: its message and its changes.
    pub async fn show(&self, rev: &str) -> Result<String, VcsError> {
        let rev = check_rev(rev)?;
        match self.kind {
            VcsKind::Git => git::show(self, rev).await,
            VcsKind::Hg => hg::show(self, rev).await,
            VcsKind::Svn => svn::show(self, rev).await,
            VcsKind::Fossil => fossil::show(self, rev).await,
            VcsKind::Jj => Err(VcsError::Unsupported(self.kind)),
        }
    }

    /// Commits every change of the working copy (new files included) with `message`;
    /// returns the new commit. Callers ask the user first (the commit tool's permission
    /// is always `ask`).
    pub async fn commit(&self, message: &str) -> Result<Commit, VcsError> {
        if message.trim().is_empty() {
            return Err(VcsError::Invalid("a commit needs a message".into()));
        }
        if self.status().await?.is_empty() {
            return Err(VcsError::Invalid("there is nothing to commit".into()));
        }
        match self.kind {
            VcsKind::Git => git::commit(self, message).await,
            VcsKind::Hg => hg::commit(self, message).await,
            VcsKind::Svn => svn::commit(self, message).await,
            VcsKind::Fossil => fossil::commit(self, message).await,
            VcsKind::Jj => Err(VcsError::Unsupported(self.kind)),
        }
    }

    /// Undoes commit `id`, which must be the last one (the assistant's own): git and
    /// Mercurial take it out of history and keep its changes in the working copy;
    /// Subversion and Fossil, whose commits are shared at once, commit its reverse.
    /// Returns what was done.
    pub async fn undo_commit(&self, id: &str) -> Result<String, VcsError> {
        let id = check_rev(id)?;
        let last = self
            .log(1)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| VcsError::Invalid("there is no commit to undo".into()))?;
        if !same_id(&last.id, id) {
            return Err(VcsError::NotLastCommit {
                expected: id.to_string(),
                found: last.id,
            });
        }
        match self.kind {
            VcsKind::Git => git::undo(self, &last).await,
            VcsKind::Hg => hg::undo(self, &last).await,
            VcsKind::Svn => svn::undo(self, &last).await,
            VcsKind::Fossil => fossil::undo(self, &last).await,
            VcsKind::Jj => Err(VcsError::Unsupported(self.kind)),
        }
    }

    /// The commit just made with `message`: the newest, carrying its first line.
    async fn just_committed(&self, message: &str) -> Result<Commit, VcsError> {
        self.log(1)
            .await?
            .into_iter()
            .next()
            .filter(|c| c.summary == summary(message))
            .ok_or_else(|| VcsError::Failed {
                command: format!("{} commit", self.kind.program()),
                message: "the commit is not in the log".into(),
            })
    }

    /// `path` relative to the root, refused when it leaves the working copy.
    fn check_path(&self, path: &str) -> Result<String, VcsError> {
        let p = Path::new(path);
        let bad = || VcsError::Invalid(format!("`{path}` is not a path inside the working copy"));
        if path.is_empty() || path.starts_with('-') {
            return Err(bad());
        }
        let rel = if p.is_absolute() {
            p.strip_prefix(&self.root).map_err(|_| bad())?
        } else {
            p
        };
        if rel.components().any(|c| {
            !matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        }) {
            return Err(bad());
        }
        // Symlinks out of the working copy are refused too.
        if let Ok(real) = self.root.join(rel).canonicalize() {
            let root = self
                .root
                .canonicalize()
                .unwrap_or_else(|_| self.root.clone());
            if !real.starts_with(&root) {
                return Err(bad());
            }
        }
        Ok(rel.to_string_lossy().replace('\\', "/"))
    }

    /// Runs the program with `args` in the root; stdout, or why not.
    async fn run(&self, args: &[&str]) -> Result<String, VcsError> {
        self.run_with(args, &[]).await
    }

    /// [`run`](Self::run) with `prefix` (global options) before `args`.
    async fn run_after(&self, prefix: &[&str], args: &[&str]) -> Result<String, VcsError> {
        let all: Vec<&str> = prefix.iter().chain(args).copied().collect();
        self.run(&all).await
    }

    async fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Result<String, VcsError> {
        let program = self.kind.program();
        let command = format!("{program} {}", args.join(" "));
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .env("LC_ALL", "C")
            .env("LANG", "C")
            .env_remove("PAGER");
        match self.kind {
            VcsKind::Git => {
                cmd.env("GIT_TERMINAL_PROMPT", "0")
                    .env("GIT_PAGER", "cat")
                    .env("GIT_OPTIONAL_LOCKS", "0")
                    .env("GIT_EXTERNAL_DIFF", "")
                    .env_remove("GIT_DIR")
                    .env_remove("GIT_WORK_TREE");
            }
            VcsKind::Hg => {
                cmd.env("HGPLAIN", "1").env("HGENCODING", "utf-8");
            }
            VcsKind::Svn => {
                cmd.env("SVN_EDITOR", "false");
            }
            VcsKind::Fossil | VcsKind::Jj => {}
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().map_err(|e| VcsError::Failed {
            command: command.clone(),
            message: e.to_string(),
        })?;
        let out = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                return Err(VcsError::Failed {
                    command,
                    message: e.to_string(),
                })
            }
            Err(_) => {
                return Err(VcsError::Timeout {
                    command,
                    after: self.timeout,
                })
            }
        };
        let text = |b: &[u8]| {
            let cut = b.len().min(self.max_output);
            let mut s = String::from_utf8_lossy(&b[..cut]).into_owned();
            if cut < b.len() {
                s.push_str(&format!("\n[… {} more bytes not shown]\n", b.len() - cut));
            }
            s
        };
        if !out.status.success() {
            let err = text(&out.stderr);
            let err = err.trim();
            return Err(VcsError::Failed {
                command,
                message: if err.is_empty() {
                    format!("exit status {}", out.status)
                } else {
                    err.to_string()
                },
            });
        }
        Ok(text(&out.stdout))
    }

    fn bad_output(&self, args: &[&str], message: impl std::fmt::Display) -> VcsError {
        VcsError::BadOutput {
            command: format!("{} {}", self.kind.program(), args.join(" ")),
            message: message.to_string(),
        }
    }
}

/// A revision as a user or model names it: never an option, a range or a shell word.
fn check_rev(rev: &str) -> Result<&str, VcsError> {
    let ok = !rev.is_empty()
        && rev.len() <= 100
        && !rev.starts_with('-')
        && rev
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/~^@:-".contains(c));
    if ok {
        Ok(rev)
    } else {
        Err(VcsError::Invalid(format!(
            "`{rev}` is not a revision (letters, digits and . _ / ~ ^ @ : - only)"
        )))
    }
}

/// Ids compare by prefix (an abbreviated hash names the full one).
fn same_id(full: &str, given: &str) -> bool {
    !given.is_empty() && full.starts_with(given)
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            let p = dir.join(program);
            p.is_file()
                && std::fs::metadata(&p)
                    .map(|m| {
                        use std::os::unix::fs::PermissionsExt;
                        m.permissions().mode() & 0o111 != 0
                    })
                    .unwrap_or(false)
        })
    })
}

/// The first line of a message.
fn summary(message: &str) -> String {
    message.lines().next().unwrap_or("").trim().to_string()
}

#[cfg(test)]
mod tests;
