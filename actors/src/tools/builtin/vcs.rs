//! The version-control tools (`vcs_status`, `vcs_diff`, `vcs_log`, `vcs_blame`,
//! `vcs_show`, `vcs_commit`, `vcs_undo_commit`) and `repo_map`, over the project's
//! working copy (found at each call by walking up from the project root: git, Mercurial,
//! Subversion or Fossil; see [`crate::tools::vcs`]).
//!
//! A commit and an undo always ask, whatever `tools.permissions` says; their confirmation
//! shows the diff stat and the message (or the commit to undo).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::tools::registry::{
    CallPermission, Permission, Tool, ToolContext, ToolFailure, ToolPreview,
};
use crate::tools::repomap::{self, RepoMapSettings};
use crate::tools::vcs::{self, Repo, VcsError};
use crate::tools::workspace::Workspace;

/// The version-control tools and `repo_map` for `ws`; `map_cache`: where the map's tags
/// are cached (`None`: not cached).
pub fn vcs_tools(ws: &Arc<Workspace>, map_cache: Option<std::path::PathBuf>) -> Vec<Arc<dyn Tool>> {
    let t = |op: Op| -> Arc<dyn Tool> { Arc::new(VcsTool { ws: ws.clone(), op }) };
    vec![
        t(Op::Status),
        t(Op::Diff),
        t(Op::Log),
        t(Op::Blame),
        t(Op::Show),
        t(Op::Commit),
        t(Op::UndoCommit),
        Arc::new(RepoMapTool {
            ws: ws.clone(),
            cache: map_cache,
        }),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Status,
    Diff,
    Log,
    Blame,
    Show,
    Commit,
    UndoCommit,
}

struct VcsTool {
    ws: Arc<Workspace>,
    op: Op,
}

fn failure(e: VcsError) -> ToolFailure {
    match e {
        VcsError::Invalid(m) => ToolFailure::InvalidArguments(m),
        other => ToolFailure::Failed(other.to_string()),
    }
}

fn str_arg<'a>(args: &'a Value, key: &str) -> &'a str {
    args.get(key).and_then(Value::as_str).unwrap_or("")
}

/// At most `max` bytes of `text` (on a character boundary), saying what was cut.
fn capped(text: String, max: usize) -> (String, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let end = text.floor_char_boundary(max);
    let cut = text.len() - end;
    (
        format!("{}\n[… {cut} more bytes not shown]\n", &text[..end]),
        true,
    )
}

/// Lines added and removed per file of a unified diff (any of the four VCSs' formats).
pub fn diff_stat(diff: &str) -> Vec<(String, usize, usize)> {
    let mut stat: Vec<(String, usize, usize)> = Vec::new();
    for line in diff.lines() {
        if let Some(path) = line.strip_prefix("+++ ") {
            let path = path.split('\t').next().unwrap_or("").trim();
            let path = path.strip_prefix("b/").unwrap_or(path);
            stat.push((path.to_string(), 0, 0));
        } else if line.starts_with("--- ") {
        } else if let Some(last) = stat.last_mut() {
            if line.starts_with('+') {
                last.1 += 1;
            } else if line.starts_with('-') {
                last.2 += 1;
            }
        }
    }
    stat
}

/// Runs a VCS future to its end from synchronous code (previews are synchronous): on a
/// thread of its own with a small runtime, so it works inside or outside one.
fn block_on<T: Send + 'static>(
    f: impl std::future::Future<Output = Result<T, VcsError>> + Send + 'static,
) -> Result<T, VcsError> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| VcsError::Invalid(format!("cannot run the VCS: {e}")))?
            .block_on(f)
    })
    .join()
    .unwrap_or_else(|_| Err(VcsError::Invalid("the VCS preview crashed".into())))
}

impl VcsTool {
    fn repo(&self) -> Result<Repo, ToolFailure> {
        vcs::detect(self.ws.root()).map_err(failure)
    }

    fn max_bytes(&self) -> usize {
        self.ws.settings().max_diff_bytes
    }
}

#[async_trait::async_trait]
impl Tool for VcsTool {
    fn name(&self) -> &str {
        match self.op {
            Op::Status => "vcs_status",
            Op::Diff => "vcs_diff",
            Op::Log => "vcs_log",
            Op::Blame => "vcs_blame",
            Op::Show => "vcs_show",
            Op::Commit => "vcs_commit",
            Op::UndoCommit => "vcs_undo_commit",
        }
    }

    fn description(&self) -> &str {
        match self.op {
            Op::Status => "List the project's changed, added, deleted and untracked files (git, Mercurial, Subversion or Fossil).",
            Op::Diff => "Show the project's uncommitted changes as a unified diff, against the current commit or a given revision.",
            Op::Log => "List the project's latest commits (id, author, date, summary).",
            Op::Blame => "Show who last changed each line of a file, and in which commit.",
            Op::Show => "Show one commit: its message and its changes.",
            Op::Commit => "Commit every change in the project (new files included) with a message. Always asks the user first.",
            Op::UndoCommit => "Undo the assistant's own last commit, given its id (refused if anything was committed since). Always asks the user first.",
        }
    }

    fn parameters(&self) -> Value {
        match self.op {
            Op::Status => {
                json!({"type": "object", "properties": {}, "additionalProperties": false})
            }
            Op::Diff => json!({
                "type": "object",
                "properties": {"revision": {"type": "string", "description": "Compare with this revision instead of the current commit."}},
                "additionalProperties": false
            }),
            Op::Log => json!({
                "type": "object",
                "properties": {"limit": {"type": "integer", "minimum": 1, "maximum": 100, "description": "How many commits (default 10)."}},
                "additionalProperties": false
            }),
            Op::Blame => json!({
                "type": "object",
                "properties": {"path": {"type": "string", "description": "File, relative to the project root."}},
                "required": ["path"],
                "additionalProperties": false
            }),
            Op::Show => json!({
                "type": "object",
                "properties": {"revision": {"type": "string"}},
                "required": ["revision"],
                "additionalProperties": false
            }),
            Op::Commit => json!({
                "type": "object",
                "properties": {"message": {"type": "string", "minLength": 1, "description": "The commit message."}},
                "required": ["message"],
                "additionalProperties": false
            }),
            Op::UndoCommit => json!({
                "type": "object",
                "properties": {"id": {"type": "string", "description": "The id of the commit to undo (as vcs_commit returned it)."}},
                "required": ["id"],
                "additionalProperties": false
            }),
        }
    }

    fn timeout(&self) -> Option<Duration> {
        // Subversion's undo is an update, a merge and a commit.
        Some(Duration::from_secs(120))
    }

    fn call_permission(&self, _args: &Value) -> Result<Option<CallPermission>, ToolFailure> {
        Ok(
            matches!(self.op, Op::Commit | Op::UndoCommit).then(|| CallPermission {
                permission: Permission::Ask,
                why: "a commit is always confirmed".into(),
            }),
        )
    }

    fn preview(&self, args: &Value) -> Result<Option<ToolPreview>, ToolFailure> {
        match self.op {
            Op::Commit => {
                let repo = self.repo()?;
                let message = str_arg(args, "message").to_string();
                let (status, diff) = block_on({
                    let repo = repo.clone();
                    async move { Ok((repo.status().await?, repo.diff(None).await?)) }
                })
                .map_err(failure)?;
                if status.is_empty() {
                    return Err(ToolFailure::Failed("there is nothing to commit".into()));
                }
                let stat = diff_stat(&diff);
                let mut text = String::new();
                for f in &status {
                    let lines = match stat.iter().find(|(p, _, _)| *p == f.path) {
                        Some((_, plus, minus)) => format!("+{plus} -{minus}"),
                        // Untracked files are in no diff.
                        None => "new".to_string(),
                    };
                    text.push_str(&format!(
                        "{:<10} {} ({lines})\n",
                        format!("{:?}", f.state).to_lowercase(),
                        f.path
                    ));
                }
                text.push_str(&format!("\nmessage:\n{message}\n"));
                Ok(Some(ToolPreview {
                    summary: format!(
                        "commit {} changed file(s) in {} with the message \"{}\"",
                        status.len(),
                        repo.kind(),
                        message.lines().next().unwrap_or("")
                    ),
                    diff: Some(capped(text, self.max_bytes()).0),
                }))
            }
            Op::UndoCommit => {
                let repo = self.repo()?;
                let id = str_arg(args, "id").to_string();
                let last = block_on({
                    let repo = repo.clone();
                    async move { repo.log(1).await }
                })
                .map_err(failure)?;
                let what = last
                    .first()
                    .map(|c| format!("{} \"{}\" by {}", c.id, c.summary, c.author))
                    .unwrap_or_else(|| "nothing (no commit yet)".into());
                Ok(Some(ToolPreview {
                    summary: format!(
                        "undo commit {id} in {} (the last commit is {what})",
                        repo.kind()
                    ),
                    diff: None,
                }))
            }
            _ => Ok(None),
        }
    }

    async fn call(&self, args: Value, _ctx: ToolContext) -> Result<Value, ToolFailure> {
        let repo = self.repo()?;
        let base = json!({"vcs": repo.kind(), "root": repo.root().display().to_string()});
        let mut out = match self.op {
            Op::Status => json!({"files": repo.status().await.map_err(failure)?}),
            Op::Diff => {
                let rev = args.get("revision").and_then(Value::as_str);
                let (diff, truncated) =
                    capped(repo.diff(rev).await.map_err(failure)?, self.max_bytes());
                json!({"diff": diff, "truncated": truncated})
            }
            Op::Log => {
                let limit = args.get("limit").and_then(Value::as_u64).unwrap_or(10) as usize;
                json!({"commits": repo.log(limit).await.map_err(failure)?})
            }
            Op::Blame => {
                let mut lines = repo.blame(str_arg(&args, "path")).await.map_err(failure)?;
                let total = lines.len();
                lines.truncate(2000);
                json!({"lines": lines, "total_lines": total})
            }
            Op::Show => {
                let (text, truncated) = capped(
                    repo.show(str_arg(&args, "revision"))
                        .await
                        .map_err(failure)?,
                    self.max_bytes(),
                );
                json!({"text": text, "truncated": truncated})
            }
            Op::Commit => {
                json!({"commit": repo.commit(str_arg(&args, "message")).await.map_err(failure)?})
            }
            Op::UndoCommit => {
                json!({"done": repo.undo_commit(str_arg(&args, "id")).await.map_err(failure)?})
            }
        };
        if let (Some(o), Some(b)) = (out.as_object_mut(), base.as_object()) {
            for (k, v) in b {
                o.insert(k.clone(), v.clone());
            }
        }
        Ok(out)
    }
}

/// `repo_map`: what the project defines, ranked by use, within a token budget.
struct RepoMapTool {
    ws: Arc<Workspace>,
    cache: Option<std::path::PathBuf>,
}

#[async_trait::async_trait]
impl Tool for RepoMapTool {
    fn name(&self) -> &str {
        "repo_map"
    }

    fn description(&self) -> &str {
        "Map the project's code: its functions, methods, types, traits, modules and constants with their doc comments, the most used first, within a token budget. Give the files being discussed as focus to rank what they use first."
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "tokens": {"type": "integer", "minimum": 64, "maximum": 8192, "description": "Budget (default 1024)."},
                "focus": {"type": "array", "items": {"type": "string"}, "maxItems": 50, "description": "Files being discussed, relative to the project root."}
            },
            "additionalProperties": false
        })
    }

    fn timeout(&self) -> Option<Duration> {
        Some(Duration::from_secs(60))
    }

    async fn call(&self, args: Value, _ctx: ToolContext) -> Result<Value, ToolFailure> {
        let tokens = args.get("tokens").and_then(Value::as_u64).unwrap_or(1024) as usize;
        let mut focus = Vec::new();
        for f in args
            .get("focus")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let rel = f.as_str().unwrap_or("");
            let resolved = self
                .ws
                .resolve(rel)
                .map_err(|e| ToolFailure::InvalidArguments(format!("focus `{rel}`: {e}")))?;
            focus.push(resolved.abs);
        }
        let settings = RepoMapSettings {
            tokens,
            cache_dir: self.cache.clone(),
            ..Default::default()
        };
        let root = self.ws.root().to_path_buf();
        // Parsing a large project is seconds of CPU: off the async threads.
        let map = tokio::task::spawn_blocking(move || repomap::build(&root, &focus, &settings))
            .await
            .map_err(|e| ToolFailure::Failed(format!("the repo map crashed: {e}")))?
            .map_err(|e| ToolFailure::Failed(e.to_string()))?;
        Ok(json!({"map": map.text, "tokens": map.tokens, "files": map.stats.files}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_stats_of_each_format() {
        let git = "diff --git a/src/a.rs b/src/a.rs\n--- a/src/a.rs\n+++ b/src/a.rs\n@@ -1 +1,2 @@\n one\n+two\n-three\n+four\n";
        assert_eq!(diff_stat(git), vec![("src/a.rs".to_string(), 2, 1)]);
        let svn = "Index: a.txt\n===\n--- a.txt\t(revision 1)\n+++ a.txt\t(working copy)\n@@ -1 +1,2 @@\n a\n+b\n";
        assert_eq!(diff_stat(svn), vec![("a.txt".to_string(), 1, 0)]);
    }

    #[test]
    fn long_output_is_cut_on_a_character_boundary_and_says_so() {
        let (text, cut) = capped("é".repeat(100), 51);
        assert!(
            cut && text.starts_with(&"é".repeat(25)) && text.contains("150 more bytes"),
            "{text}"
        );
        assert_eq!(capped("short".into(), 10), ("short".to_string(), false));
    }
}
