//! The project the coding tools work in: every path confined to its root (no `..` past
//! it, no absolute path or symlink leading out of it), writes made atomically with a
//! unified diff, and the undo journal of the assistant's writes.
//!
//! The journal lives on disk (one directory per project under `tools.files.undo_dir`), so
//! a write made by `coda tools call` in one process can be undone by the next, or by a
//! chat. It is bounded in entries and bytes (oldest dropped first) and guarded by an
//! advisory lock, so two processes on one project do not interleave.

use std::fs;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::hgignore::HgIgnore;

/// Directories of version control metadata: never written by the tools.
pub const VCS_DIRS: &[&str] = &[".git", ".hg", ".svn", ".jj", ".fslckout", "_FOSSIL_"];

/// Limits and places of the file tools (the `[tools.files]` config section).
#[derive(Debug, Clone, PartialEq)]
pub struct WorkspaceSettings {
    /// The project root (made canonical when opened).
    pub root: PathBuf,
    /// Most bytes of text `read_file` returns in one call.
    pub max_read_bytes: usize,
    /// Largest file `write_file`/`edit_file` write or edit (and the undo journal keeps).
    pub max_file_bytes: u64,
    /// Most matches `search_files` returns.
    pub max_search_results: usize,
    /// Most entries `list_dir` returns.
    pub max_list_entries: usize,
    /// Most bytes of diff in a result or a confirmation (the rest is cut, and said so).
    pub max_diff_bytes: usize,
    /// Where undo journals live (one directory per project inside).
    pub undo_dir: PathBuf,
    /// Most writes kept for undo.
    pub undo_depth: usize,
    /// Most bytes of previous contents kept for undo.
    pub undo_bytes: u64,
}

impl WorkspaceSettings {
    /// Defaults for a project at `root`, journal under `undo_dir`.
    pub fn new(root: impl Into<PathBuf>, undo_dir: impl Into<PathBuf>) -> WorkspaceSettings {
        WorkspaceSettings {
            root: root.into(),
            max_read_bytes: 24 * 1024,
            max_file_bytes: 1024 * 1024,
            max_search_results: 100,
            max_list_entries: 500,
            max_diff_bytes: 24 * 1024,
            undo_dir: undo_dir.into(),
            undo_depth: 50,
            undo_bytes: 32 * 1024 * 1024,
        }
    }
}

/// Why a path or a file operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("the path is empty")]
    Empty,
    #[error("the path contains a NUL byte")]
    Nul,
    /// Outside the project root (`..` past it, or an absolute path elsewhere).
    #[error("`{path}` is outside the project {root}; paths are confined to the project root")]
    Escapes { path: String, root: String },
    /// A symlink inside the project leads out of it.
    #[error("`{path}` leads through a symlink to {target}, outside the project {root}")]
    SymlinkEscape {
        path: String,
        target: String,
        root: String,
    },
    /// Version control metadata (`.git/...`): the tools do not write there.
    #[error("`{0}` is inside version control metadata ({1}); the file tools do not write there")]
    VcsMetadata(String, String),
    #[error("{what} `{path}`: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    /// Anything else, said in full.
    #[error("{0}")]
    Other(String),
}

impl PathError {
    /// Refused for where it points (rather than failed)?
    pub fn is_confinement(&self) -> bool {
        matches!(
            self,
            PathError::Escapes { .. }
                | PathError::SymlinkEscape { .. }
                | PathError::VcsMetadata(..)
        )
    }

    fn io(what: &'static str, path: &str, source: std::io::Error) -> PathError {
        PathError::Io {
            what,
            path: path.to_string(),
            source,
        }
    }
}

/// A path inside the project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Absolute, symlinks resolved (for the parts that exist).
    pub abs: PathBuf,
    /// Relative to the root, `/`-separated (`.` for the root itself).
    pub rel: String,
}

/// The project: root, limits, undo journal.
#[derive(Debug)]
pub struct Workspace {
    root: PathBuf,
    settings: WorkspaceSettings,
    journal: PathBuf,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Workspace {
    /// Opens the project at `settings.root` (which must be a directory).
    pub fn open(settings: WorkspaceSettings) -> Result<Workspace, PathError> {
        let shown = settings.root.display().to_string();
        let root = fs::canonicalize(&settings.root)
            .map_err(|e| PathError::io("project root", &shown, e))?;
        if !root.is_dir() {
            return Err(PathError::Other(format!(
                "the project root {shown} is not a directory"
            )));
        }
        let id = hex::encode(&Sha256::digest(root.as_os_str().as_encoded_bytes())[..8]);
        let journal = settings.undo_dir.join(id);
        Ok(Workspace {
            root,
            settings,
            journal,
        })
    }

    /// The canonical root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The limits.
    pub fn settings(&self) -> &WorkspaceSettings {
        &self.settings
    }

    /// The project's undo journal directory.
    pub fn journal_dir(&self) -> &Path {
        &self.journal
    }

    /// Resolves `input` (relative to the root, or absolute) to a path inside the project.
    /// Refused: `..` past the root, an absolute path elsewhere, a symlink (anywhere on
    /// the way) that leads out. The path need not exist.
    pub fn resolve(&self, input: &str) -> Result<Resolved, PathError> {
        if input.trim().is_empty() {
            return Err(PathError::Empty);
        }
        if input.contains('\0') {
            return Err(PathError::Nul);
        }
        let escapes = || PathError::Escapes {
            path: input.to_string(),
            root: self.root.display().to_string(),
        };
        let given = Path::new(input);
        let start = if given.is_absolute() {
            PathBuf::new()
        } else {
            self.root.clone()
        };
        let mut lexical = start;
        for c in given.components() {
            match c {
                Component::Prefix(_) | Component::RootDir => lexical.push(c.as_os_str()),
                Component::CurDir => {}
                Component::ParentDir => {
                    // A relative path may use `..` only while it stays inside the root.
                    if !given.is_absolute() && lexical == self.root {
                        return Err(escapes());
                    }
                    if !lexical.pop() {
                        return Err(escapes());
                    }
                }
                Component::Normal(n) => lexical.push(n),
            }
        }
        // The longest existing ancestor, made canonical (symlinks resolved); the rest is
        // appended as it is (plain names: no `..` is left).
        let mut existing = lexical.clone();
        let mut rest = Vec::new();
        let canonical = loop {
            match fs::canonicalize(&existing) {
                Ok(c) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if let Ok(m) = fs::symlink_metadata(&existing) {
                        if m.file_type().is_symlink() {
                            let target = fs::read_link(&existing)
                                .map(|t| t.display().to_string())
                                .unwrap_or_default();
                            return Err(PathError::Other(format!(
                                "`{input}` is a symlink to {target}, which does not exist"
                            )));
                        }
                    }
                    match (existing.file_name(), existing.parent()) {
                        (Some(name), Some(parent)) => {
                            rest.push(name.to_os_string());
                            existing = parent.to_path_buf();
                        }
                        _ => return Err(escapes()),
                    }
                }
                Err(e) => return Err(PathError::io("cannot resolve", input, e)),
            }
        };
        let mut abs = canonical;
        for name in rest.iter().rev() {
            abs.push(name);
        }
        let Ok(rel) = abs.strip_prefix(&self.root) else {
            return Err(if lexical.starts_with(&self.root) {
                PathError::SymlinkEscape {
                    path: input.to_string(),
                    target: abs.display().to_string(),
                    root: self.root.display().to_string(),
                }
            } else {
                escapes()
            });
        };
        let rel = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        Ok(Resolved {
            abs,
            rel: if rel.is_empty() { ".".into() } else { rel },
        })
    }

    /// [`Workspace::resolve`] for a file to write: also refuses version control metadata
    /// and the root itself.
    pub fn resolve_for_write(&self, input: &str) -> Result<Resolved, PathError> {
        let r = self.resolve(input)?;
        if r.rel == "." {
            return Err(PathError::Other(format!(
                "`{input}` is the project root, not a file"
            )));
        }
        if let Some(dir) = r.rel.split('/').find(|c| VCS_DIRS.contains(c)) {
            return Err(PathError::VcsMetadata(r.rel.clone(), dir.to_string()));
        }
        Ok(r)
    }

    /// The `.hgignore` rules of the project (for walks).
    pub fn hgignore(&self) -> HgIgnore {
        HgIgnore::load(&self.root)
    }

    /// The root-relative `/` form of an absolute path inside the project.
    pub fn rel_of(&self, abs: &Path) -> String {
        abs.strip_prefix(&self.root)
            .map(|r| {
                r.components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .unwrap_or_else(|_| abs.display().to_string())
    }

    /// The bytes of a file to be replaced (`None`: it does not exist), refusing a
    /// directory and a file larger than `max_file_bytes`.
    pub fn read_existing(&self, r: &Resolved) -> Result<Option<Vec<u8>>, PathError> {
        match fs::metadata(&r.abs) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(PathError::io("cannot read", &r.rel, e)),
            Ok(m) if m.is_dir() => Err(PathError::Other(format!("`{}` is a directory", r.rel))),
            Ok(m) if m.len() > self.settings.max_file_bytes => Err(PathError::Other(format!(
                "`{}` is {} bytes, more than the {} the file tools write or edit (tools.files.max_file_bytes)",
                r.rel,
                m.len(),
                self.settings.max_file_bytes
            ))),
            Ok(_) => read_capped(&r.abs, self.settings.max_file_bytes)
                .map(Some)
                .map_err(|e| PathError::io("cannot read", &r.rel, e)),
        }
    }

    /// Writes `bytes` to `r` (creating parent directories), journalled for undo first.
    /// Returns the journal entry's id.
    pub fn write(&self, r: &Resolved, bytes: &[u8], tool: &str) -> Result<u64, PathError> {
        if bytes.len() as u64 > self.settings.max_file_bytes {
            return Err(PathError::Other(format!(
                "the new content is {} bytes, more than the {} allowed (tools.files.max_file_bytes)",
                bytes.len(),
                self.settings.max_file_bytes
            )));
        }
        let previous = self.read_existing(r)?;
        let journal = Journal::lock(self)?;
        let id = journal.record(&r.rel, previous.as_deref(), bytes, tool)?;
        if let Err(e) = write_atomic(&r.abs, bytes) {
            journal.remove(id);
            return Err(PathError::io("cannot write", &r.rel, e));
        }
        tracing::debug!(path = %r.rel, bytes = bytes.len(), undo = id, "file written");
        Ok(id)
    }

    /// The newest journalled write, if any.
    pub fn last_write(&self) -> Result<Option<UndoEntry>, PathError> {
        Journal::lock(self)?.newest()
    }

    /// Works out the undo of the newest journalled write without doing it.
    pub fn plan_undo(&self, force: bool) -> Result<UndoPlan, PathError> {
        Journal::lock(self)?.plan(self, force)
    }

    /// Undoes the newest journalled write: restores the previous content, or removes a
    /// file the write created. Refuses (unless `force`) when the file changed since.
    pub fn undo(&self, force: bool) -> Result<UndoPlan, PathError> {
        let journal = Journal::lock(self)?;
        let plan = journal.plan(self, force)?;
        match &plan.previous {
            Some(bytes) => write_atomic(&plan.target.abs, bytes)
                .map_err(|e| PathError::io("cannot restore", &plan.target.rel, e))?,
            None => match fs::remove_file(&plan.target.abs) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(PathError::io("cannot remove", &plan.target.rel, e)),
            },
        }
        journal.remove(plan.entry.id);
        tracing::debug!(path = %plan.target.rel, undo = plan.entry.id, "write undone");
        Ok(plan)
    }

    /// How many writes can be undone.
    pub fn undo_count(&self) -> Result<usize, PathError> {
        Ok(Journal::lock(self)?.ids()?.len())
    }

    /// A unified diff of `old` → `new` for `rel` (either side `None`: absent), cut at
    /// `max_diff_bytes`.
    pub fn diff(&self, rel: &str, old: Option<&[u8]>, new: Option<&[u8]>) -> DiffSummary {
        diff(rel, old, new, self.settings.max_diff_bytes)
    }
}

/// A diff and its counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiffSummary {
    /// The unified diff (cut when too long, with a last line saying so).
    pub diff: String,
    /// Lines added.
    pub added: usize,
    /// Lines removed.
    pub removed: usize,
}

/// A unified diff, `/dev/null` for an absent side; binary content is summarised.
pub fn diff(rel: &str, old: Option<&[u8]>, new: Option<&[u8]>, max_bytes: usize) -> DiffSummary {
    let text = |b: Option<&[u8]>| -> Option<String> {
        b.map(|b| {
            if is_binary(b) || std::str::from_utf8(b).is_err() {
                String::from("\u{0}binary")
            } else {
                String::from_utf8_lossy(b).into_owned()
            }
        })
    };
    let (o, n) = (text(old), text(new));
    if o.as_deref().is_some_and(|s| s.starts_with('\u{0}'))
        || n.as_deref().is_some_and(|s| s.starts_with('\u{0}'))
    {
        return DiffSummary {
            diff: format!(
                "Binary file {rel}: {} bytes -> {} bytes\n",
                old.map_or(0, <[u8]>::len),
                new.map_or(0, <[u8]>::len)
            ),
            added: 0,
            removed: 0,
        };
    }
    let (o, n) = (o.unwrap_or_default(), n.unwrap_or_default());
    let d = similar::TextDiff::configure()
        // Bounds the work on pathological inputs; the diff is then coarser, not wrong.
        .timeout(Duration::from_secs(2))
        .diff_lines(&o, &n);
    let (mut added, mut removed) = (0, 0);
    for change in d.iter_all_changes() {
        match change.tag() {
            similar::ChangeTag::Insert => added += 1,
            similar::ChangeTag::Delete => removed += 1,
            similar::ChangeTag::Equal => {}
        }
    }
    let a = if old.is_some() {
        format!("a/{rel}")
    } else {
        "/dev/null".into()
    };
    let b = if new.is_some() {
        format!("b/{rel}")
    } else {
        "/dev/null".into()
    };
    let mut text = d
        .unified_diff()
        .context_radius(3)
        .header(&a, &b)
        .to_string();
    if text.len() > max_bytes {
        let mut cut = max_bytes;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let cut = text[..cut].rfind('\n').map_or(0, |i| i + 1);
        let dropped = text[cut..].lines().count();
        text.truncate(cut);
        text.push_str(&format!("... diff cut: {dropped} more lines\n"));
    }
    DiffSummary {
        diff: text,
        added,
        removed,
    }
}

/// Binary, by Git's rule: a NUL byte in the first 8000 bytes.
pub fn is_binary(bytes: &[u8]) -> bool {
    bytes[..bytes.len().min(8000)].contains(&0)
}

/// Reads at most `max` bytes of a file.
pub fn read_capped(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    fs::File::open(path)?.take(max).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Writes through a temporary file in the same directory, then renames it over the
/// target, so a reader never sees half a file; keeps the old file's permissions.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("no parent directory"))?;
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.coda-{}-{}.tmp",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        if let Ok(m) = fs::metadata(path) {
            fs::set_permissions(&tmp, m.permissions())?;
        }
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One journalled write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UndoEntry {
    /// Its id (increasing).
    pub id: u64,
    /// Root-relative path.
    pub path: String,
    /// Did the file exist before the write?
    pub existed: bool,
    /// SHA-256 of what the write left, to notice later changes.
    pub after_sha256: String,
    /// The tool that wrote.
    pub tool: String,
    /// When, unix seconds.
    pub at: f64,
}

/// What undoing the newest write would do.
#[derive(Debug, Clone)]
pub struct UndoPlan {
    pub entry: UndoEntry,
    pub target: Resolved,
    /// Content to restore; `None`: remove the file (the write created it).
    pub previous: Option<Vec<u8>>,
    /// Current content → what undo leaves.
    pub diff: DiffSummary,
}

/// The journal directory, locked (`flock`) for as long as this lives.
struct Journal<'a> {
    dir: &'a Path,
    ws: &'a Workspace,
    _lock: fs::File,
}

impl<'a> Journal<'a> {
    fn lock(ws: &'a Workspace) -> Result<Journal<'a>, PathError> {
        let dir = ws.journal_dir();
        let shown = dir.display().to_string();
        fs::create_dir_all(dir)
            .map_err(|e| PathError::io("cannot create the undo journal", &shown, e))?;
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .map_err(|e| PathError::io("cannot open the undo journal's lock", &shown, e))?;
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: flock on a file descriptor this function owns; released on close.
            let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
            if rc != 0 {
                return Err(PathError::io(
                    "cannot lock the undo journal",
                    &shown,
                    std::io::Error::last_os_error(),
                ));
            }
        }
        Ok(Journal {
            dir,
            ws,
            _lock: lock,
        })
    }

    fn ids(&self) -> Result<Vec<u64>, PathError> {
        let shown = self.dir.display().to_string();
        let mut ids: Vec<u64> = fs::read_dir(self.dir)
            .map_err(|e| PathError::io("cannot read the undo journal", &shown, e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".json"))
                    .and_then(|n| n.parse().ok())
            })
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    fn meta_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:010}.json"))
    }

    fn prev_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:010}.prev"))
    }

    fn record(
        &self,
        rel: &str,
        previous: Option<&[u8]>,
        after: &[u8],
        tool: &str,
    ) -> Result<u64, PathError> {
        let ids = self.ids()?;
        let id = ids.last().map_or(1, |l| l + 1);
        let entry = UndoEntry {
            id,
            path: rel.to_string(),
            existed: previous.is_some(),
            after_sha256: sha256_hex(after),
            tool: tool.to_string(),
            at: crate::hub::unix_now(),
        };
        let err = |e| PathError::io("cannot write the undo journal", rel, e);
        if let Some(prev) = previous {
            write_atomic(&self.prev_path(id), prev).map_err(err)?;
        }
        let json = serde_json::to_vec(&entry).map_err(|e| PathError::Other(e.to_string()))?;
        write_atomic(&self.meta_path(id), &json).map_err(err)?;
        self.prune()?;
        Ok(id)
    }

    /// Drops the oldest entries past the depth or the byte budget.
    fn prune(&self) -> Result<(), PathError> {
        let ids = self.ids()?;
        let sizes: Vec<u64> = ids
            .iter()
            .map(|id| fs::metadata(self.prev_path(*id)).map_or(0, |m| m.len()))
            .collect();
        let mut total: u64 = sizes.iter().sum();
        let mut count = ids.len();
        for (id, size) in ids.iter().zip(&sizes) {
            // The newest entry always stays, whatever its size.
            if count <= 1
                || (count <= self.ws.settings.undo_depth && total <= self.ws.settings.undo_bytes)
            {
                break;
            }
            self.remove(*id);
            total -= size;
            count -= 1;
        }
        Ok(())
    }

    fn remove(&self, id: u64) {
        let _ = fs::remove_file(self.meta_path(id));
        let _ = fs::remove_file(self.prev_path(id));
    }

    fn newest(&self) -> Result<Option<UndoEntry>, PathError> {
        let Some(id) = self.ids()?.last().copied() else {
            return Ok(None);
        };
        let path = self.meta_path(id);
        let bytes = fs::read(&path).map_err(|e| {
            PathError::io(
                "cannot read the undo journal",
                &path.display().to_string(),
                e,
            )
        })?;
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            PathError::Other(format!(
                "the undo journal entry {} is damaged ({e}); remove it to go on",
                path.display()
            ))
        })
    }

    fn plan(&self, ws: &Workspace, force: bool) -> Result<UndoPlan, PathError> {
        let entry = self.newest()?.ok_or_else(|| {
            PathError::Other(
                "nothing to undo: no write by the assistant is journalled for this project".into(),
            )
        })?;
        let target = ws.resolve_for_write(&entry.path)?;
        let current = match fs::metadata(&target.abs) {
            Ok(m) if m.is_file() => Some(
                read_capped(&target.abs, ws.settings.max_file_bytes.saturating_add(1))
                    .map_err(|e| PathError::io("cannot read", &target.rel, e))?,
            ),
            Ok(_) => {
                return Err(PathError::Other(format!(
                    "`{}` is no longer a file",
                    target.rel
                )))
            }
            Err(_) => None,
        };
        let unchanged = current
            .as_deref()
            .is_some_and(|c| sha256_hex(c) == entry.after_sha256);
        if !unchanged && !force {
            return Err(PathError::Other(format!(
                "`{}` changed since the assistant's {} wrote it; undoing would lose those changes (pass \"force\": true to undo anyway)",
                target.rel, entry.tool
            )));
        }
        let previous = if entry.existed {
            let p = self.prev_path(entry.id);
            Some(fs::read(&p).map_err(|e| {
                PathError::io("cannot read the undo journal", &p.display().to_string(), e)
            })?)
        } else {
            None
        };
        let diff = ws.diff(&target.rel, current.as_deref(), previous.as_deref());
        Ok(UndoPlan {
            entry,
            target,
            previous,
            diff,
        })
    }
}

#[cfg(test)]
mod tests;
