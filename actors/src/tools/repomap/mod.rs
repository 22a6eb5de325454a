//! The repo map: what a project defines — functions, methods, structs, classes, enums,
//! traits and interfaces, modules, constants, macros, with the first line of their doc
//! comments — ranked by how much the rest of the project (and the files in the
//! conversation above all) uses them, fitted to a token budget.
//!
//! As aider does it: tree-sitter tags (definitions and references) per file
//! (`tree-sitter-tags` with each grammar's tag query, extended in [`lang`]); a graph
//! of files where a file that references a name points to the files that define it;
//! PageRank over it, personalised to the focus files (the conversation's) when there are
//! any; each definition ranked by the rank flowing into it along its name's edges; then
//! as many of the best as fit the budget (binary search over how many), grouped by file.
//! Tags are cached per file by size and modification time, on disk, so a second map of a
//! project reads only what changed.

// Without the feature only the types and the refusal remain.
#![cfg_attr(not(feature = "repomap"), allow(dead_code))]

#[cfg(feature = "repomap")]
mod lang;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Limits of one map.
#[derive(Debug, Clone, PartialEq)]
pub struct RepoMapSettings {
    /// The most tokens the map may take (estimated at 4 bytes a token).
    pub tokens: usize,
    /// Where tags are cached between runs (`None`: not cached).
    pub cache_dir: Option<PathBuf>,
    /// Files larger than this are left out (generated code, bundles).
    pub max_file_bytes: u64,
    /// The most source files read.
    pub max_files: usize,
}

impl Default for RepoMapSettings {
    fn default() -> Self {
        RepoMapSettings {
            tokens: 1024,
            cache_dir: None,
            max_file_bytes: 1 << 20,
            max_files: 20_000,
        }
    }
}

/// Why there is no map.
#[derive(Debug, thiserror::Error)]
pub enum RepoMapError {
    #[error("this build of coda has no repo map (built without the `repomap` feature)")]
    NotBuilt,
    #[error("cannot read the project at {path}: {message}")]
    Unreadable { path: PathBuf, message: String },
}

/// One definition in the map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    pub name: String,
    /// `function`, `method`, `struct`, `class`, `enum`, `trait`, `interface`, `module`,
    /// `constant`, `macro`, `type`, …
    pub kind: String,
    /// 1-based.
    pub line: usize,
    /// Its first line of source, trimmed.
    pub signature: String,
    /// The first line of its doc comment, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub doc: Option<String>,
    pub rank: f64,
}

/// A file of the map with the definitions of it that made the cut.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MappedFile {
    /// Relative to the root, `/`-separated.
    pub path: String,
    pub rank: f64,
    pub definitions: Vec<Definition>,
}

/// What building a map did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct MapStats {
    /// Source files seen.
    pub files: usize,
    /// Files parsed this time (the rest came from the cache).
    pub parsed: usize,
    /// Definitions and references found.
    pub definitions: usize,
    pub references: usize,
}

/// A map of a project.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RepoMap {
    /// The map as text, for a model's context.
    pub text: String,
    /// Its estimated size (≤ the budget).
    pub tokens: usize,
    pub files: Vec<MappedFile>,
    pub stats: MapStats,
}

/// Estimated tokens of `text` (4 bytes a token, rounded up: a model's tokenizer on code
/// averages 3.5–4.5).
pub fn estimate_tokens(text: &str) -> usize {
    text.len().div_ceil(4)
}

/// One tag of a file, as cached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Tag {
    name: String,
    kind: String,
    is_def: bool,
    line: usize,
    signature: String,
    doc: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CachedFile {
    size: u64,
    mtime_ns: u128,
    tags: Vec<Tag>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Cache {
    /// Coda's version and the tag queries' fingerprint the tags were made with.
    version: String,
    files: HashMap<String, CachedFile>,
}

/// The map of the project at `root`, personalised to `focus` (paths relative to the root
/// or absolute; their own definitions are left out: they are in the conversation).
pub fn build(
    root: &Path,
    focus: &[PathBuf],
    settings: &RepoMapSettings,
) -> Result<RepoMap, RepoMapError> {
    #[cfg(feature = "repomap")]
    {
        build_with_tags(root, focus, settings)
    }
    #[cfg(not(feature = "repomap"))]
    {
        let _ = (root, focus, settings);
        Err(RepoMapError::NotBuilt)
    }
}

#[cfg(feature = "repomap")]
fn build_with_tags(
    root: &Path,
    focus: &[PathBuf],
    settings: &RepoMapSettings,
) -> Result<RepoMap, RepoMapError> {
    let root = root.canonicalize().map_err(|e| RepoMapError::Unreadable {
        path: root.to_path_buf(),
        message: e.to_string(),
    })?;
    let cache_path = settings.cache_dir.as_ref().map(|d| cache_file(d, &root));
    let version = format!(
        "{}-{}",
        env!("CARGO_PKG_VERSION"),
        lang::Lang::queries_fingerprint()
    );
    let mut cache: Cache = cache_path
        .as_ref()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice::<Cache>(&b).ok())
        .filter(|c| c.version == version)
        .unwrap_or_default();
    cache.version = version;
    let mut stats = MapStats::default();
    let mut tagger = Tagger::default();
    let mut seen = HashSet::new();
    let mut tags_of: BTreeMap<String, Vec<Tag>> = BTreeMap::new();
    for entry in ignore::WalkBuilder::new(&root)
        .hidden(true)
        // .gitignore counts in any project, not only in a git working copy.
        .require_git(false)
        .add_custom_ignore_filename(".hgignore")
        .build()
        .filter_map(Result::ok)
    {
        if stats.files >= settings.max_files {
            break;
        }
        let path = entry.path();
        let Some(lang) = lang::Lang::of(path) else {
            continue;
        };
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if !meta.is_file() || meta.len() > settings.max_file_bytes {
            continue;
        }
        let Ok(rel) = path.strip_prefix(&root) else {
            continue;
        };
        let rel = rel.to_string_lossy().replace('\\', "/");
        stats.files += 1;
        seen.insert(rel.clone());
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let fresh = cache
            .files
            .get(&rel)
            .is_some_and(|c| c.size == meta.len() && c.mtime_ns == mtime_ns);
        if !fresh {
            let Ok(source) = std::fs::read(path) else {
                continue;
            };
            stats.parsed += 1;
            let tags = tagger.tags(lang, &source);
            cache.files.insert(
                rel.clone(),
                CachedFile {
                    size: meta.len(),
                    mtime_ns,
                    tags,
                },
            );
        }
        if let Some(c) = cache.files.get(&rel) {
            tags_of.insert(rel, c.tags.clone());
        }
    }
    cache.files.retain(|k, _| seen.contains(k));
    if let Some(p) = &cache_path {
        if stats.parsed > 0 || cache.files.len() != seen.len() {
            save_cache(p, &cache);
        }
    }
    let focus: HashSet<String> = focus
        .iter()
        .filter_map(|f| {
            let abs = if f.is_absolute() {
                f.clone()
            } else {
                root.join(f)
            };
            let abs = abs.canonicalize().unwrap_or(abs);
            abs.strip_prefix(&root)
                .ok()
                .map(|r| r.to_string_lossy().replace('\\', "/"))
        })
        .collect();
    for tags in tags_of.values() {
        for t in tags {
            if t.is_def {
                stats.definitions += 1;
            } else {
                stats.references += 1;
            }
        }
    }
    let ranked = rank(&tags_of, &focus);
    let (text, files) = fit(&ranked, settings.tokens);
    Ok(RepoMap {
        tokens: estimate_tokens(&text),
        text,
        files,
        stats,
    })
}

fn cache_file(dir: &Path, root: &Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(root.to_string_lossy().as_bytes());
    let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    dir.join(format!("{name}.json"))
}

/// Written to a temporary file and renamed, so a reader never sees half of it; a cache
/// that cannot be written only costs the next run its parsing.
fn save_cache(path: &Path, cache: &Cache) {
    let Ok(bytes) = serde_json::to_vec(cache) else {
        return;
    };
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

#[cfg(feature = "repomap")]
#[derive(Default)]
struct Tagger {
    context: Option<tree_sitter_tags::TagsContext>,
    configs: HashMap<lang::Lang, Option<tree_sitter_tags::TagsConfiguration>>,
}

#[cfg(feature = "repomap")]
impl Tagger {
    fn tags(&mut self, lang: lang::Lang, source: &[u8]) -> Vec<Tag> {
        let config = self
            .configs
            .entry(lang)
            .or_insert_with(|| match lang.config() {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(?lang, error = %e, "the repo map cannot read this language");
                    None
                }
            });
        let Some(config) = config.as_ref() else {
            return Vec::new();
        };
        let context = self
            .context
            .get_or_insert_with(tree_sitter_tags::TagsContext::new);
        let Ok((found, _)) = context.generate_tags(config, source, None) else {
            return Vec::new();
        };
        let text = String::from_utf8_lossy(source);
        let lines: Vec<&str> = text.lines().collect();
        let mut out = Vec::new();
        for tag in found.filter_map(Result::ok) {
            let Some(name) = source
                .get(tag.name_range.clone())
                .and_then(|b| std::str::from_utf8(b).ok())
            else {
                continue;
            };
            let line = tag.span.start.row + 1;
            let (signature, doc) = if tag.is_definition {
                let sig = lines.get(line - 1).map_or("", |l| l.trim());
                let doc = tag
                    .docs
                    .as_deref()
                    .and_then(first_doc_line)
                    .or_else(|| doc_above(&lines, line - 1, lang))
                    .or_else(|| docstring_below(&lines, line - 1, lang));
                (clip(sig, 120), doc)
            } else {
                (String::new(), None)
            };
            out.push(Tag {
                name: name.to_string(),
                kind: config.syntax_type_name(tag.syntax_type_id).to_string(),
                is_def: tag.is_definition,
                line,
                signature,
                doc,
            });
        }
        out
    }
}

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    format!("{}…", &s[..s.floor_char_boundary(max)])
}

fn first_doc_line(doc: &str) -> Option<String> {
    doc.lines()
        .map(|l| l.trim().trim_start_matches(['/', '*', '#', '!']).trim())
        .find(|l| !l.is_empty())
        .map(|l| clip(l, 100))
}

/// The comment block right above line `at` (0-based), attributes and decorators skipped.
#[cfg(feature = "repomap")]
fn doc_above(lines: &[&str], at: usize, lang: lang::Lang) -> Option<String> {
    let mut block = Vec::new();
    for l in lines[..at.min(lines.len())].iter().rev() {
        let t = l.trim();
        if t.starts_with("#[") || t.starts_with('@') {
            continue;
        }
        if t == "*/" || lang.doc_prefixes().iter().any(|p| t.starts_with(p)) {
            block.push(t);
        } else {
            break;
        }
    }
    block.reverse();
    first_doc_line(&block.join("\n"))
}

/// Python's docstring: the string that opens the body.
#[cfg(feature = "repomap")]
fn docstring_below(lines: &[&str], at: usize, lang: lang::Lang) -> Option<String> {
    if lang != lang::Lang::Python {
        return None;
    }
    let next = lines.get(at + 1)?.trim();
    let body = next
        .strip_prefix("\"\"\"")
        .or_else(|| next.strip_prefix("'''"))?;
    first_doc_line(body.trim_end_matches("\"\"\"").trim_end_matches("'''"))
}

/// A definition with its file and rank, before fitting.
#[derive(Debug, Clone)]
struct Ranked {
    file: String,
    file_rank: f64,
    def: Definition,
}

/// Personalised PageRank over files (edges: references to the files defining the name),
/// then each definition's share of the rank flowing along its name.
fn rank(tags_of: &BTreeMap<String, Vec<Tag>>, focus: &HashSet<String>) -> Vec<Ranked> {
    let files: Vec<&String> = tags_of.keys().collect();
    let index: HashMap<&str, usize> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.as_str(), i))
        .collect();
    let mut definers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (f, tags) in tags_of {
        for t in tags.iter().filter(|t| t.is_def) {
            let list = definers.entry(t.name.as_str()).or_default();
            if list.last() != Some(&index[f.as_str()]) {
                list.push(index[f.as_str()]);
            }
        }
    }
    // (from, to, name) → weight: a name defined in n files splits its reference n ways;
    // names the focus files use count ten times (so the files they lead to rank higher).
    let focus_names: HashSet<&str> = tags_of
        .iter()
        .filter(|(f, _)| focus.contains(*f))
        .flat_map(|(_, tags)| tags.iter().filter(|t| !t.is_def).map(|t| t.name.as_str()))
        .collect();
    // A file calling a name ten times is not ten times the evidence (`.collect()` on every
    // other line): references count by their square root, as aider counts them; and a
    // name that many files define says little about which one is meant.
    // A method called on a value (`x.filter()`) may be anyone's method, the standard
    // library's most of all: such a call counts a tenth.
    let mut counts: HashMap<(usize, &str), f64> = HashMap::new();
    for (f, tags) in tags_of {
        let from = index[f.as_str()];
        for t in tags.iter().filter(|t| !t.is_def) {
            if definers.contains_key(t.name.as_str()) {
                let w = if t.kind == "method_call" { 0.1 } else { 1.0 };
                *counts.entry((from, t.name.as_str())).or_default() += w;
            }
        }
    }
    let mut edges: HashMap<(usize, usize, &str), f64> = HashMap::new();
    for (&(from, name), &count) in &counts {
        let defs = &definers[name];
        let mut weight = count.sqrt() / defs.len() as f64;
        if focus_names.contains(name) {
            weight *= 10.0;
        }
        if defs.len() > 5 {
            weight *= 0.1;
        }
        for &to in defs.iter().filter(|&&to| to != from) {
            *edges.entry((from, to, name)).or_default() += weight;
        }
    }
    let n = files.len();
    if n == 0 {
        return Vec::new();
    }
    let personal: Vec<f64> = if files.iter().any(|f| focus.contains(*f)) {
        let k = files.iter().filter(|f| focus.contains(**f)).count() as f64;
        files
            .iter()
            .map(|f| if focus.contains(*f) { 1.0 / k } else { 0.0 })
            .collect()
    } else {
        vec![1.0 / n as f64; n]
    };
    let mut out_weight = vec![0.0; n];
    for (&(from, _, _), w) in &edges {
        out_weight[from] += w;
    }
    let mut pr = personal.clone();
    for _ in 0..50 {
        let mut next: Vec<f64> = personal.iter().map(|p| 0.15 * p).collect();
        let dangling: f64 = (0..n)
            .filter(|&i| out_weight[i] == 0.0)
            .map(|i| pr[i])
            .sum();
        for (i, p) in personal.iter().enumerate() {
            next[i] += 0.85 * dangling * p;
        }
        for (&(from, to, _), w) in &edges {
            next[to] += 0.85 * pr[from] * w / out_weight[from];
        }
        pr = next;
    }
    // A definition's rank: what flows to it along its name (ten times over for the names
    // the focus files use), plus a little of its file's own rank so unreferenced
    // definitions still order by file.
    let mut def_rank: HashMap<(usize, &str), f64> = HashMap::new();
    for (&(from, to, name), w) in &edges {
        let boost = if focus_names.contains(name) {
            10.0
        } else {
            1.0
        };
        *def_rank.entry((to, name)).or_default() += boost * pr[from] * w / out_weight[from];
    }
    let mut ranked = Vec::new();
    for (f, tags) in tags_of {
        if focus.contains(f) {
            continue;
        }
        let i = index[f.as_str()];
        for t in tags.iter().filter(|t| t.is_def) {
            let r = def_rank.get(&(i, t.name.as_str())).copied().unwrap_or(0.0) + pr[i] * 1e-3;
            ranked.push(Ranked {
                file: f.clone(),
                file_rank: pr[i],
                def: Definition {
                    name: t.name.clone(),
                    kind: t.kind.clone(),
                    line: t.line,
                    signature: t.signature.clone(),
                    doc: t.doc.clone(),
                    rank: r,
                },
            });
        }
    }
    ranked.sort_by(|a, b| {
        b.def
            .rank
            .total_cmp(&a.def.rank)
            .then_with(|| a.file.cmp(&b.file))
            .then(a.def.line.cmp(&b.def.line))
    });
    ranked
}

/// The best `k` definitions as text, files in rank order, definitions by line.
fn render(ranked: &[Ranked]) -> (String, Vec<MappedFile>) {
    let mut files: Vec<MappedFile> = Vec::new();
    for r in ranked {
        match files.iter_mut().find(|f| f.path == r.file) {
            Some(f) => f.definitions.push(r.def.clone()),
            None => files.push(MappedFile {
                path: r.file.clone(),
                rank: r.file_rank,
                definitions: vec![r.def.clone()],
            }),
        }
    }
    let mut text = String::new();
    for f in files.iter_mut() {
        f.definitions.sort_by_key(|d| d.line);
        text.push_str(&f.path);
        text.push_str(":\n");
        for d in &f.definitions {
            text.push_str(&format!("{:>5}│ {}", d.line, d.signature));
            if let Some(doc) = &d.doc {
                text.push_str(&format!("  // {doc}"));
            }
            text.push('\n');
        }
    }
    (text, files)
}

/// As many of the best definitions as fit `tokens` (never more).
fn fit(ranked: &[Ranked], tokens: usize) -> (String, Vec<MappedFile>) {
    let (mut lo, mut hi) = (0usize, ranked.len());
    // The largest k whose rendering fits.
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if estimate_tokens(&render(&ranked[..mid]).0) <= tokens {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    render(&ranked[..lo])
}

#[cfg(all(test, feature = "repomap"))]
mod tests;
