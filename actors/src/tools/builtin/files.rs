//! The file tools: `read_file`, `write_file`, `edit_file`, `list_dir`, `search_files` and
//! `undo_last_write`, all inside one project ([`Workspace`]: paths confined to its root).
//! Writes and edits are journalled for undo and answer with a unified diff; while their
//! permission is `ask`, the confirmation shows that diff ([`Tool::preview`]).

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use grep_regex::RegexMatcherBuilder;
use grep_searcher::sinks::Lossy;
use grep_searcher::{BinaryDetection, SearcherBuilder};
use serde_json::{json, Value};

use crate::tools::registry::{Tool, ToolContext, ToolFailure, ToolPreview};
use crate::tools::workspace::{is_binary, DiffSummary, PathError, Resolved, Workspace};

/// Names of the file tools.
pub const FILE_TOOLS: &[&str] = &[
    "edit_file",
    "list_dir",
    "read_file",
    "search_files",
    "undo_last_write",
    "write_file",
];

/// Registers every file tool over `ws`.
pub fn file_tools(ws: &Arc<Workspace>) -> Vec<Arc<dyn Tool>> {
    vec![
        Arc::new(ReadFile(ws.clone())),
        Arc::new(WriteFile(ws.clone())),
        Arc::new(EditFile(ws.clone())),
        Arc::new(ListDir(ws.clone())),
        Arc::new(SearchFiles(ws.clone())),
        Arc::new(UndoLastWrite(ws.clone())),
    ]
}

/// A path problem as the tool's failure: confinement is a refusal (`denied`), the rest a
/// failure.
fn path_failure(tool: &str, e: PathError) -> ToolFailure {
    if e.is_confinement() {
        ToolFailure::Denied {
            tool: tool.to_string(),
            why: format!("go there: {e}"),
        }
    } else {
        ToolFailure::Failed(e.to_string())
    }
}

fn str_arg<'a>(args: &'a Value, key: &str) -> &'a str {
    args[key].as_str().unwrap_or_default()
}

fn change_summary(verb: &str, rel: &str, d: &DiffSummary) -> String {
    format!("{verb} {rel} (+{} -{})", d.added, d.removed)
}

// ---------------------------------------------------------------------------------------
// read_file
// ---------------------------------------------------------------------------------------

/// Reads a text file, whole or a range of lines.
pub struct ReadFile(pub Arc<Workspace>);

/// Lines past the range are counted (for `total_lines`) only this far into a file.
const COUNT_LIMIT: u64 = 64 * 1024 * 1024;

#[async_trait::async_trait]
impl Tool for ReadFile {
    fn name(&self) -> &str {
        "read_file"
    }

    fn description(&self) -> &str {
        "Reads a text file of the project, whole or lines start_line..end_line (1-based, inclusive). Long files are cut at a size limit: the answer says `truncated` and the `next_line` to ask for. Binary files are refused."
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "path": {"type": "string", "minLength": 1, "maxLength": 4096,
                         "description": "Path relative to the project root"},
                "start_line": {"type": "integer", "minimum": 1, "description": "First line (1-based), default 1"},
                "end_line": {"type": "integer", "minimum": 1, "description": "Last line (inclusive), default the end"}
            },
            "required": ["path"],
            "additionalProperties": false
        })
    }

    async fn call(&self, args: Value, _ctx: ToolContext) -> Result<Value, ToolFailure> {
        let ws = &self.0;
        let r = ws
            .resolve(str_arg(&args, "path"))
            .map_err(|e| path_failure(self.name(), e))?;
        let start = args["start_line"].as_u64().unwrap_or(1);
        let end = args["end_line"].as_u64().unwrap_or(u64::MAX);
        if end < start {
            return Err(ToolFailure::InvalidArguments(format!(
                "end_line {end} is before start_line {start}"
            )));
        }
        read_lines(&r, start, end, ws.settings().max_read_bytes)
    }
}

fn read_lines(r: &Resolved, start: u64, end: u64, max_bytes: usize) -> Result<Value, ToolFailure> {
    let failed = |e: std::io::Error| ToolFailure::Failed(format!("cannot read `{}`: {e}", r.rel));
    let meta = std::fs::metadata(&r.abs).map_err(failed)?;
    if meta.is_dir() {
        return Err(ToolFailure::Failed(format!(
            "`{}` is a directory; list it with list_dir",
            r.rel
        )));
    }
    let mut file = std::fs::File::open(&r.abs).map_err(failed)?;
    let mut head = Vec::with_capacity(8000);
    (&mut file)
        .take(8000)
        .read_to_end(&mut head)
        .map_err(failed)?;
    if is_binary(&head) {
        return Err(ToolFailure::Failed(format!(
            "`{}` is a binary file ({} bytes: a NUL byte in its first 8000); read_file shows text only",
            r.rel,
            meta.len()
        )));
    }
    let mut reader = BufReader::new(std::io::Cursor::new(head).chain(file));
    let mut content = String::new();
    let mut line_no = 0u64;
    let mut last_included = start.saturating_sub(1);
    let mut truncated = false;
    let mut next_line = None;
    let mut scanned = 0u64;
    let mut total = None;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(failed)?;
        if n == 0 {
            total = Some(line_no);
            break;
        }
        line_no += 1;
        scanned += n as u64;
        if line_no < start || line_no > end || truncated {
            if line_no > end || truncated {
                // Past the range: only counting lines, up to a limit.
                if scanned > COUNT_LIMIT {
                    break;
                }
            }
            continue;
        }
        let text = std::str::from_utf8(&buf).map_err(|_| {
            ToolFailure::Failed(format!(
                "`{}` is not UTF-8 text (line {line_no}); read_file shows text only",
                r.rel
            ))
        })?;
        if content.len() + text.len() > max_bytes && line_no > start {
            truncated = true;
            next_line = Some(line_no);
            continue;
        }
        if text.len() > max_bytes {
            // One line longer than the whole budget: cut it, on a character boundary.
            let mut cut = max_bytes;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            content.push_str(&text[..cut]);
            truncated = true;
            next_line = Some(line_no + 1);
            last_included = line_no;
            continue;
        }
        content.push_str(text);
        last_included = line_no;
    }
    if let Some(t) = total {
        if start > t.max(1) {
            return Err(ToolFailure::Failed(format!(
                "start_line {start} is past the end of `{}` ({t} lines)",
                r.rel
            )));
        }
    }
    Ok(json!({
        "path": r.rel,
        "content": content,
        "start_line": start,
        "end_line": last_included,
        "total_lines": total,
        "truncated": truncated,
        "next_line": next_line,
        "bytes": meta.len(),
    }))
}

// ---------------------------------------------------------------------------------------
// write_file, edit_file
// ---------------------------------------------------------------------------------------

/// What a write would do: the target, its old and new bytes, the diff.
struct Planned {
    target: Resolved,
    old: Option<Vec<u8>>,
    new: Vec<u8>,
    diff: DiffSummary,
}

fn commit(ws: &Workspace, tool: &str, p: Planned) -> Result<Value, ToolFailure> {
    let undo_id = ws
        .write(&p.target, &p.new, tool)
        .map_err(|e| path_failure(tool, e))?;
    Ok(json!({
        "path": p.target.rel,
        "created": p.old.is_none(),
        "bytes": p.new.len(),
        "added": p.diff.added,
        "removed": p.diff.removed,
        "diff": p.diff.diff,
        "undo_id": undo_id,
    }))
}

/// Creates or replaces a whole file.
pub struct WriteFile(pub Arc<Workspace>);

impl WriteFile {
    fn plan(&self, args: &Value) -> Result<Planned, ToolFailure> {
        let ws = &self.0;
        let target = ws
            .resolve_for_write(str_arg(args, "path"))
            .map_err(|e| path_failure(self.name(), e))?;
        let new = str_arg(args, "content").as_bytes().to_vec();
        if new.len() as u64 > ws.settings().max_file_bytes {
            return Err(ToolFailure::InvalidArguments(format!(
                "the content is {} bytes, more than the {} allowed (tools.files.max_file_bytes)",
                new.len(),
                ws.settings().max_file_bytes
            )));
        }
        let old = ws
            .read_existing(&target)
            .map_err(|e| path_failure(self.name(), e))?;
        let diff = ws.diff(&target.rel, old.as_deref(), Some(&new));
        Ok(Planned {
            target,
            old,
            new,
            diff,
        })
    }
}

#[async_trait::async_trait]
impl Tool for WriteFile {
    fn name(&self) -> &str {
        "write_file"
    }

    fn description(&self) -> &str {
        "Creates a file of the project or replaces its whole content (parent directories are made). Prefer edit_file to change part of an existing file. Answers with the unified diff; undo with undo_last_write."
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "path": {"type": "string", "minLength": 1, "maxLength": 4096,
                         "description": "Path relative to the project root"},
                "content": {"type": "string", "description": "The whole new content"}
            },
            "required": ["path", "content"],
            "additionalProperties": false
        })
    }

    fn preview(&self, args: &Value) -> Result<Option<ToolPreview>, ToolFailure> {
        let p = self.plan(args)?;
        let verb = if p.old.is_some() { "write" } else { "create" };
        Ok(Some(ToolPreview {
            summary: change_summary(verb, &p.target.rel, &p.diff),
            diff: Some(p.diff.diff),
        }))
    }

    async fn call(&self, args: Value, _ctx: ToolContext) -> Result<Value, ToolFailure> {
        let p = self.plan(&args)?;
        commit(&self.0, self.name(), p)
    }
}

/// Applies exact search/replace edits to a file.
pub struct EditFile(pub Arc<Workspace>);

/// Applies `edits` (search, replace) in order; each search text must occur exactly once
/// in the text as the previous edits left it.
pub fn apply_edits(text: &str, edits: &[(String, String)]) -> Result<String, String> {
    let crlf = text.contains("\r\n");
    let mut out = text.to_string();
    for (i, (search, replace)) in edits.iter().enumerate() {
        let n = i + 1;
        if search.is_empty() {
            return Err(format!("edit {n}: the search text is empty"));
        }
        // A model writes `\n`; a file with CRLF line ends gets its edits in CRLF.
        let (search, replace) = if crlf && !search.contains("\r\n") {
            (search.replace('\n', "\r\n"), replace.replace('\n', "\r\n"))
        } else {
            (search.clone(), replace.clone())
        };
        let found: Vec<usize> = out.match_indices(&search).map(|(at, _)| at).collect();
        match found.len() {
            1 => out.replace_range(found[0]..found[0] + search.len(), &replace),
            0 => {
                let hint = whitespace_hint(&out, &search)
                    .map(|line| format!(" (it would match at line {line} if whitespace were ignored: copy the text exactly)"))
                    .unwrap_or_default();
                return Err(format!(
                    "edit {n}: the search text was not found{hint}; read the file again and copy the lines exactly"
                ));
            }
            many => {
                let lines: Vec<String> = found
                    .iter()
                    .take(5)
                    .map(|at| (out[..*at].matches('\n').count() + 1).to_string())
                    .collect();
                return Err(format!(
                    "edit {n}: the search text matches {many} times (lines {}); add surrounding lines so it matches once",
                    lines.join(", ")
                ));
            }
        }
    }
    Ok(out)
}

/// The line where `search` occurs when runs of whitespace are ignored, if it does.
fn whitespace_hint(text: &str, search: &str) -> Option<usize> {
    let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let want = squash(search);
    if want.is_empty() {
        return None;
    }
    let lines: Vec<&str> = text.lines().collect();
    let span = search.lines().count().max(1);
    (0..lines.len()).find_map(|i| {
        let end = (i + span).min(lines.len());
        squash(&lines[i..end].join("\n"))
            .contains(&want)
            .then_some(i + 1)
    })
}

impl EditFile {
    fn plan(&self, args: &Value) -> Result<Planned, ToolFailure> {
        let ws = &self.0;
        let target = ws
            .resolve_for_write(str_arg(args, "path"))
            .map_err(|e| path_failure(self.name(), e))?;
        let old = ws
            .read_existing(&target)
            .map_err(|e| path_failure(self.name(), e))?
            .ok_or_else(|| {
                ToolFailure::Failed(format!(
                    "`{}` does not exist; create it with write_file",
                    target.rel
                ))
            })?;
        if is_binary(&old) {
            return Err(ToolFailure::Failed(format!(
                "`{}` is a binary file; edit_file edits text only",
                target.rel
            )));
        }
        let text = std::str::from_utf8(&old)
            .map_err(|_| ToolFailure::Failed(format!("`{}` is not UTF-8 text", target.rel)))?;
        let edits: Vec<(String, String)> = args["edits"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        (
                            str_arg(e, "search").to_string(),
                            str_arg(e, "replace").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let new = apply_edits(text, &edits)
            .map_err(|e| ToolFailure::Failed(format!("`{}`: {e}", target.rel)))?
            .into_bytes();
        if new.len() as u64 > ws.settings().max_file_bytes {
            return Err(ToolFailure::Failed(format!(
                "`{}` would be {} bytes, more than the {} allowed (tools.files.max_file_bytes)",
                target.rel,
                new.len(),
                ws.settings().max_file_bytes
            )));
        }
        let diff = ws.diff(&target.rel, Some(&old), Some(&new));
        Ok(Planned {
            target,
            old: Some(old),
            new,
            diff,
        })
    }
}

#[async_trait::async_trait]
impl Tool for EditFile {
    fn name(&self) -> &str {
        "edit_file"
    }

    fn description(&self) -> &str {
        "Changes part of an existing file of the project: each edit replaces an exact search text, which must occur exactly once (include enough surrounding lines), with its replacement. Edits apply in order. Answers with the unified diff; undo with undo_last_write."
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "path": {"type": "string", "minLength": 1, "maxLength": 4096,
                         "description": "Path relative to the project root"},
                "edits": {
                    "type": "array", "minItems": 1, "maxItems": 50,
                    "items": {
                        "type": "object",
                        "properties": {
                            "search": {"type": "string", "minLength": 1, "description": "Exact text to find (whitespace included)"},
                            "replace": {"type": "string", "description": "Text to put in its place"}
                        },
                        "required": ["search", "replace"],
                        "additionalProperties": false
                    }
                }
            },
            "required": ["path", "edits"],
            "additionalProperties": false
        })
    }

    fn preview(&self, args: &Value) -> Result<Option<ToolPreview>, ToolFailure> {
        let p = self.plan(args)?;
        Ok(Some(ToolPreview {
            summary: change_summary("edit", &p.target.rel, &p.diff),
            diff: Some(p.diff.diff),
        }))
    }

    async fn call(&self, args: Value, _ctx: ToolContext) -> Result<Value, ToolFailure> {
        let p = self.plan(&args)?;
        commit(&self.0, self.name(), p)
    }
}

// ---------------------------------------------------------------------------------------
// undo_last_write
// ---------------------------------------------------------------------------------------

/// Undoes the newest write of the assistant in this project.
pub struct UndoLastWrite(pub Arc<Workspace>);

#[async_trait::async_trait]
impl Tool for UndoLastWrite {
    fn name(&self) -> &str {
        "undo_last_write"
    }

    fn description(&self) -> &str {
        "Undoes the assistant's newest write_file or edit_file in this project: restores the previous content, or removes a file the write created. Refused when the file changed since, unless force is true. Call again to undo the one before."
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "force": {"type": "boolean", "description": "Undo even though the file changed since the write"}
            },
            "additionalProperties": false
        })
    }

    fn preview(&self, args: &Value) -> Result<Option<ToolPreview>, ToolFailure> {
        let plan = self
            .0
            .plan_undo(args["force"].as_bool().unwrap_or(false))
            .map_err(|e| path_failure(self.name(), e))?;
        let verb = if plan.previous.is_some() {
            format!(
                "restore {} as it was before {}",
                plan.target.rel, plan.entry.tool
            )
        } else {
            format!(
                "remove {} (created by {})",
                plan.target.rel, plan.entry.tool
            )
        };
        Ok(Some(ToolPreview {
            summary: format!("{verb} (+{} -{})", plan.diff.added, plan.diff.removed),
            diff: Some(plan.diff.diff),
        }))
    }

    async fn call(&self, args: Value, _ctx: ToolContext) -> Result<Value, ToolFailure> {
        let ws = &self.0;
        let plan = ws
            .undo(args["force"].as_bool().unwrap_or(false))
            .map_err(|e| path_failure(self.name(), e))?;
        let remaining = ws.undo_count().map_err(|e| path_failure(self.name(), e))?;
        Ok(json!({
            "path": plan.target.rel,
            "undone": plan.entry.id,
            "tool": plan.entry.tool,
            "restored": if plan.previous.is_some() { "previous content" } else { "removed (the write created it)" },
            "diff": plan.diff.diff,
            "remaining": remaining,
        }))
    }
}

// ---------------------------------------------------------------------------------------
// list_dir, search_files
// ---------------------------------------------------------------------------------------

/// A walk under `start` honouring .gitignore, .ignore and .hgignore (and skipping hidden
/// files) unless `all`; symlinks are listed, not followed.
fn walker(ws: &Workspace, start: &Path, all: bool) -> ignore::WalkBuilder {
    let mut b = ignore::WalkBuilder::new(start);
    b.hidden(!all)
        .ignore(!all)
        .git_ignore(!all)
        .git_global(false)
        .git_exclude(!all)
        .parents(!all)
        // Ignore files count without a .git directory: the project may use another VCS.
        .require_git(false)
        .follow_links(false);
    if !all {
        let hg = ws.hgignore();
        if !hg.is_empty() {
            let root = ws.root().to_path_buf();
            b.filter_entry(move |e| {
                let rel = e
                    .path()
                    .strip_prefix(&root)
                    .map(|r| r.to_string_lossy().replace('\\', "/"))
                    .unwrap_or_default();
                !hg.is_ignored(&rel, e.file_type().is_some_and(|t| t.is_dir()))
            });
        }
    }
    b
}

/// Walks of a large project take longer than the default tool timeout.
const WALK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Lists a directory of the project.
pub struct ListDir(pub Arc<Workspace>);

#[async_trait::async_trait]
impl Tool for ListDir {
    fn name(&self) -> &str {
        "list_dir"
    }

    fn timeout(&self) -> Option<std::time::Duration> {
        Some(WALK_TIMEOUT)
    }

    fn description(&self) -> &str {
        "Lists a directory of the project (default: its root), depth levels deep, skipping hidden files and what .gitignore/.ignore/.hgignore exclude unless all is true."
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "path": {"type": "string", "maxLength": 4096, "description": "Directory relative to the project root, default the root"},
                "depth": {"type": "integer", "minimum": 1, "maximum": 10, "description": "Levels to go down, default 1"},
                "all": {"type": "boolean", "description": "Include hidden and ignored files"}
            },
            "additionalProperties": false
        })
    }

    async fn call(&self, args: Value, ctx: ToolContext) -> Result<Value, ToolFailure> {
        let ws = &self.0;
        let path = args["path"]
            .as_str()
            .filter(|p| !p.is_empty())
            .unwrap_or(".");
        let r = ws.resolve(path).map_err(|e| path_failure(self.name(), e))?;
        if !r.abs.is_dir() {
            return Err(ToolFailure::Failed(format!(
                "`{}` is not a directory",
                r.rel
            )));
        }
        let depth = args["depth"].as_u64().unwrap_or(1) as usize;
        let all = args["all"].as_bool().unwrap_or(false);
        let max = ws.settings().max_list_entries;
        let mut entries = Vec::new();
        let mut truncated = false;
        let mut walk = walker(ws, &r.abs, all);
        walk.max_depth(Some(depth))
            .sort_by_file_name(|a, b| a.cmp(b));
        for entry in walk.build().filter_map(Result::ok) {
            if entry.depth() == 0 {
                continue;
            }
            if ctx.is_cancelled() {
                break;
            }
            if entries.len() >= max {
                truncated = true;
                break;
            }
            let kind = match entry.file_type() {
                Some(t) if t.is_symlink() => "symlink",
                Some(t) if t.is_dir() => "dir",
                _ => "file",
            };
            let mut e = json!({"path": ws.rel_of(entry.path()), "kind": kind});
            if kind == "file" {
                if let Ok(m) = entry.metadata() {
                    e["size"] = json!(m.len());
                }
            }
            entries.push(e);
        }
        Ok(json!({"path": r.rel, "entries": entries, "truncated": truncated}))
    }
}

/// Searches the project's files for a regex or a literal text.
pub struct SearchFiles(pub Arc<Workspace>);

/// Longest line text in a match (longer lines are cut, said with `…`).
const MAX_MATCH_CHARS: usize = 300;

#[async_trait::async_trait]
impl Tool for SearchFiles {
    fn name(&self) -> &str {
        "search_files"
    }

    fn timeout(&self) -> Option<std::time::Duration> {
        Some(WALK_TIMEOUT)
    }

    fn description(&self) -> &str {
        "Searches the project's text files for a regular expression (Rust regex syntax) or, with literal, an exact text; skips hidden, binary and ignored files (.gitignore/.ignore/.hgignore). Answers matching lines with their path and line number."
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "pattern": {"type": "string", "minLength": 1, "maxLength": 1000},
                "literal": {"type": "boolean", "description": "The pattern is plain text, not a regex"},
                "case_insensitive": {"type": "boolean"},
                "path": {"type": "string", "maxLength": 4096, "description": "Directory or file to search, default the whole project"},
                "glob": {"type": "string", "maxLength": 200, "description": "Only files whose path matches, e.g. \"*.rs\" or \"src/**/*.py\""},
                "max_results": {"type": "integer", "minimum": 1, "maximum": 1000}
            },
            "required": ["pattern"],
            "additionalProperties": false
        })
    }

    async fn call(&self, args: Value, ctx: ToolContext) -> Result<Value, ToolFailure> {
        let ws = &self.0;
        let path = args["path"]
            .as_str()
            .filter(|p| !p.is_empty())
            .unwrap_or(".");
        let r = ws.resolve(path).map_err(|e| path_failure(self.name(), e))?;
        if !r.abs.exists() {
            return Err(ToolFailure::Failed(format!("`{}` does not exist", r.rel)));
        }
        let matcher = RegexMatcherBuilder::new()
            .fixed_strings(args["literal"].as_bool().unwrap_or(false))
            .case_insensitive(args["case_insensitive"].as_bool().unwrap_or(false))
            .build(str_arg(&args, "pattern"))
            .map_err(|e| ToolFailure::InvalidArguments(format!("pattern: {e}")))?;
        let max = args["max_results"]
            .as_u64()
            .map_or(ws.settings().max_search_results, |m| {
                (m as usize).min(ws.settings().max_search_results)
            });
        let mut walk = walker(ws, &r.abs, false);
        walk.sort_by_file_name(|a, b| a.cmp(b));
        if let Some(g) = args["glob"].as_str().filter(|g| !g.is_empty()) {
            let mut o = ignore::overrides::OverrideBuilder::new(ws.root());
            o.add(g)
                .map_err(|e| ToolFailure::InvalidArguments(format!("glob: {e}")))?;
            walk.overrides(
                o.build()
                    .map_err(|e| ToolFailure::InvalidArguments(format!("glob: {e}")))?,
            );
        }
        let mut searcher = SearcherBuilder::new()
            .binary_detection(BinaryDetection::quit(0))
            .line_number(true)
            .build();
        let mut matches = Vec::new();
        let mut files = 0usize;
        let mut truncated = false;
        for entry in walk.build().filter_map(Result::ok) {
            if ctx.is_cancelled() || truncated {
                break;
            }
            if !entry.file_type().is_some_and(|t| t.is_file()) {
                continue;
            }
            files += 1;
            let rel = ws.rel_of(entry.path());
            let result = searcher.search_path(
                &matcher,
                entry.path(),
                Lossy(|line_no, line| {
                    if matches.len() >= max {
                        truncated = true;
                        return Ok(false);
                    }
                    let line = line.trim_end_matches(['\n', '\r']);
                    let text: String = if line.chars().count() > MAX_MATCH_CHARS {
                        line.chars().take(MAX_MATCH_CHARS).chain(['…']).collect()
                    } else {
                        line.to_string()
                    };
                    matches.push(json!({"path": rel, "line": line_no, "text": text}));
                    Ok(true)
                }),
            );
            if let Err(e) = result {
                tracing::debug!(path = %rel, error = %e, "search_files: file skipped");
            }
        }
        Ok(json!({
            "matches": matches,
            "count": matches.len(),
            "files_searched": files,
            "truncated": truncated,
        }))
    }
}

#[cfg(test)]
mod tests;
