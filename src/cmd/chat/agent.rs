//! The tools in `coda chat`: which ones the model is offered (by mode, and `/tools`
//! toggles), `@path` mentions that attach files, and the files the conversation touches
//! (they steer the repo map). Calls go through the same registry and permission checks as
//! `coda tools call` and the server's: the REPL answers `ask` by asking the person.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use coda_actors::llm::ToolSpec;
use coda_actors::tools::registry::GROUP_SEPARATOR;
use coda_actors::tools::{Permission, ToolRegistry};
use serde_json::Value;

use super::Mode;

/// What a tool does to the project, for choosing what each mode offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Reads only (files, search, the map, version-control history).
    Read,
    /// Changes files in the working copy (undoable).
    Write,
    /// Runs commands.
    Shell,
    /// Records or rewrites version-control history.
    History,
    /// Touches nothing of the project (clock, calculator, …).
    Other,
}

/// How far `tool` reaches.
pub fn reach(tool: &str) -> Reach {
    match tool {
        "read_file" | "list_dir" | "search_files" | "repo_map" | "vcs_status" | "vcs_diff"
        | "vcs_log" | "vcs_blame" | "vcs_show" => Reach::Read,
        "write_file" | "edit_file" | "undo_last_write" => Reach::Write,
        "run_command" => Reach::Shell,
        "vcs_commit" | "vcs_undo_commit" => Reach::History,
        _ => Reach::Other,
    }
}

impl Mode {
    /// Does this mode offer the model `tool`? Explaining and reviewing read; debugging and
    /// refactoring also change files and run commands; only `code` commits.
    pub fn offers(self, tool: &str) -> bool {
        match reach(tool) {
            Reach::Read | Reach::Other => true,
            Reach::Write | Reach::Shell => !matches!(self, Mode::Explain | Mode::Review),
            Reach::History => self == Mode::Code,
        }
    }
}

/// Tools whose "yes" is never remembered for the session: each command and each commit is
/// its own decision.
const ASK_EACH_TIME: [&str; 3] = ["run_command", "vcs_commit", "vcs_undo_commit"];

/// The chat's tools and what the person decided about them.
pub struct ChatTools {
    pub registry: ToolRegistry,
    /// The project the file tools work in.
    pub root: PathBuf,
    /// Turned off with `/tools off`.
    off: BTreeSet<String>,
    /// Answered "always" this session.
    always: BTreeSet<String>,
    /// Files the conversation attached, read or changed, newest last (project-relative).
    touched: Vec<String>,
}

impl ChatTools {
    pub fn new(registry: ToolRegistry, root: PathBuf) -> ChatTools {
        ChatTools {
            registry,
            root,
            off: BTreeSet::new(),
            always: BTreeSet::new(),
            touched: Vec::new(),
        }
    }

    /// The tools offered to the model in `mode`.
    pub fn specs(&self, mode: Mode) -> Vec<ToolSpec> {
        self.registry
            .specs()
            .into_iter()
            .filter(|s| self.offered_in(mode, &s.name) && !self.off.contains(&s.name))
            .collect()
    }

    /// Does `mode` offer `tool`? An MCP server's tool (`NAME__tool`) counts as reading when
    /// it runs without asking (its server marks it read-only), as writing otherwise.
    fn offered_in(&self, mode: Mode, tool: &str) -> bool {
        if !tool.contains(GROUP_SEPARATOR) {
            return mode.offers(tool);
        }
        let reads = self.registry.permission(tool) == Some(Permission::Safe);
        reads || mode.offers("write_file")
    }

    /// `/tools on|off [NAME…]`: no names means every tool. Returns what changed, or an
    /// error naming tools that do not exist.
    pub fn toggle(&mut self, on: bool, names: &[String]) -> Result<String, String> {
        let known: Vec<String> = self.registry.list().into_iter().map(|t| t.name).collect();
        let unknown: Vec<&String> = names.iter().filter(|n| !known.contains(n)).collect();
        if !unknown.is_empty() {
            return Err(format!(
                "no tool named {} (/tools lists them)",
                unknown
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let targets: Vec<String> = if names.is_empty() {
            known
        } else {
            names.to_vec()
        };
        for n in &targets {
            if on {
                self.off.remove(n);
            } else {
                self.off.insert(n.clone());
            }
        }
        Ok(if names.is_empty() {
            format!("all tools {}", if on { "on" } else { "off" })
        } else {
            format!("{} {}", targets.join(", "), if on { "on" } else { "off" })
        })
    }

    /// The `/tools` listing: every tool, whether this mode offers it, on or off, and its
    /// permission.
    pub fn listing(&self, mode: Mode) -> String {
        let tools = self.registry.list();
        let width = tools.iter().map(|t| t.name.len()).max().unwrap_or(0);
        let mut out = String::new();
        for t in tools {
            let state = if self.off.contains(&t.name) {
                "off"
            } else if !self.offered_in(mode, &t.name) {
                "not in this mode"
            } else {
                "on"
            };
            let permission = match t.permission {
                Permission::Safe => "runs",
                Permission::Ask if self.always.contains(&t.name) => "runs (always, this session)",
                Permission::Ask => "asks",
                Permission::Deny => "denied by config",
            };
            let first = t.description.split(". ").next().unwrap_or_default();
            out.push_str(&format!(
                "  {:width$}  {:<16}  {:<10}  {}\n",
                t.name,
                state,
                permission,
                first.trim_end_matches('.')
            ));
        }
        out
    }

    /// May a "yes" to `tool` be kept for the session?
    pub fn can_always(&self, tool: &str) -> bool {
        !ASK_EACH_TIME.contains(&tool)
    }

    /// The person said "always" to `tool`.
    pub fn allow_always(&mut self, tool: &str) {
        if self.can_always(tool) {
            self.always.insert(tool.to_string());
        }
    }

    /// Is `tool` confirmed for the session already?
    pub fn confirmed(&self, tool: &str) -> bool {
        self.always.contains(tool)
    }

    /// Notes the file a call names (its `path`), so the map follows the conversation.
    /// Returns whether the set of files changed.
    pub fn note_call(&mut self, tool: &str, args: &Value) -> bool {
        if !matches!(reach(tool), Reach::Read | Reach::Write) {
            return false;
        }
        match args.get("path").and_then(Value::as_str) {
            Some(p) if !p.is_empty() && p != "." => self.touch(p),
            _ => false,
        }
    }

    /// Notes a file; returns whether it is new to the conversation.
    pub fn touch(&mut self, path: &str) -> bool {
        let p = path.trim_start_matches("./").to_string();
        if self.touched.contains(&p) {
            return false;
        }
        self.touched.push(p);
        true
    }

    /// The files the conversation touched, newest last.
    pub fn touched(&self) -> &[String] {
        &self.touched
    }
}

/// The `@path` mentions in `text`: words that start with `@` (at the start or after
/// white space, so `me@example.com` is none), without trailing punctuation.
pub fn mentions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for word in text.split_whitespace() {
        let Some(rest) = word.strip_prefix('@') else {
            continue;
        };
        let path = rest.trim_end_matches([',', '.', ';', ':', '!', '?', ')', '"', '\'']);
        if !path.is_empty() && !out.iter().any(|p| p == path) {
            out.push(path.to_string());
        }
    }
    out
}

/// Completions for the `@path` word ending at `pos`: `(start, candidates)` where `start`
/// is where the replaced part begins (after `@` and any directories typed).
pub fn complete_mention(root: &Path, line: &str, pos: usize) -> Option<(usize, Vec<String>)> {
    let head = line.get(..pos)?;
    let word_start = head
        .rfind(char::is_whitespace)
        .map(|i| i + head[i..].chars().next().map_or(1, char::len_utf8))
        .unwrap_or(0);
    let typed = head[word_start..].strip_prefix('@')?;
    let (dir, prefix) = match typed.rfind('/') {
        Some(i) => (&typed[..=i], &typed[i + 1..]),
        None => ("", typed),
    };
    if dir.split('/').any(|c| c == "..") || dir.starts_with('/') {
        return None;
    }
    let entries = std::fs::read_dir(root.join(dir)).ok()?;
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            if !name.starts_with(prefix)
                || (name.starts_with('.') && !prefix.starts_with('.'))
                || matches!(name.as_str(), ".git" | ".hg" | ".svn" | ".jj" | "_FOSSIL_")
            {
                return None;
            }
            let is_dir = e.file_type().ok()?.is_dir();
            Some(if is_dir { format!("{name}/") } else { name })
        })
        .collect();
    names.sort();
    names.truncate(200);
    Some((word_start + 1 + dir.len(), names))
}

/// One line that says what a tool answered, for the transcript.
pub fn result_line(tool: &str, v: &Value) -> String {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default();
    let n = |k: &str| v.get(k).and_then(Value::as_u64);
    match tool {
        "read_file" => format!(
            "read {} lines {}–{}{}",
            s("path"),
            n("start_line").unwrap_or(1),
            n("end_line").unwrap_or(0),
            if v["truncated"] == true {
                " (truncated)"
            } else {
                ""
            }
        ),
        "run_command" => format!(
            "exit {}",
            v.get("exit_code")
                .map(Value::to_string)
                .unwrap_or_else(|| "?".into())
        ),
        _ => {
            let text = v.to_string();
            let mut cut = text.len().min(160);
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            if cut < text.len() {
                format!("{}…", &text[..cut])
            } else {
                text
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_offer_what_they_need() {
        assert!(Mode::Explain.offers("read_file"));
        assert!(!Mode::Explain.offers("edit_file"));
        assert!(!Mode::Review.offers("run_command"));
        assert!(Mode::Debug.offers("run_command"));
        assert!(!Mode::Refactor.offers("vcs_commit"));
        assert!(Mode::Code.offers("vcs_commit"));
        assert!(Mode::Review.offers("vcs_diff"));
        assert!(Mode::Explain.offers("clock"));
    }

    #[test]
    fn mentions_are_words_that_start_with_at() {
        assert_eq!(
            mentions("look at @src/main.rs, and @Cargo.toml. mail me@example.com @src/main.rs"),
            vec!["src/main.rs".to_string(), "Cargo.toml".to_string()]
        );
        assert!(mentions("@ alone and @. too").is_empty());
    }

    #[test]
    fn mention_completion_lists_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("src/cmd")).unwrap();
        std::fs::write(dir.path().join("src/main.rs"), "").unwrap();
        std::fs::write(dir.path().join("src/.hidden"), "").unwrap();
        std::fs::create_dir(dir.path().join(".git")).unwrap();
        let line = "see @src/m";
        let (start, c) = complete_mention(dir.path(), line, line.len()).unwrap();
        assert_eq!(&line[start..], "m");
        assert_eq!(c, vec!["main.rs".to_string()]);
        let (start, c) = complete_mention(dir.path(), "@", 1).unwrap();
        assert_eq!(start, 1);
        assert_eq!(c, vec!["src/".to_string()]);
        let (_, c) = complete_mention(dir.path(), "@src/", 5).unwrap();
        assert_eq!(c, vec!["cmd/".to_string(), "main.rs".to_string()]);
        assert!(complete_mention(dir.path(), "@../", 4).is_none());
        assert!(complete_mention(dir.path(), "no mention", 10).is_none());
    }
}
