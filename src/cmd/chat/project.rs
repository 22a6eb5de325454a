//! What `coda chat` knows of the project it starts in: its kind (language, build tool,
//! version control) shown at start, and its repo map in the model's context.

use std::path::{Path, PathBuf};

use coda_actors::tools::repomap::{build, RepoMapSettings};
use coda_actors::tools::vcs;

/// The project around a directory.
#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    pub root: PathBuf,
    /// e.g. "Rust (cargo)".
    pub kind: Option<String>,
    /// "git", "hg", …
    pub vcs: Option<String>,
    /// The repo map, when one was asked for and has something in it.
    pub map: Option<Map>,
    /// Its budget, when a map was asked for.
    pub map_tokens: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Map {
    pub text: String,
    pub tokens: usize,
    pub files: usize,
}

/// Build files that name a project's language and tool, in the order looked for.
const MARKERS: [(&str, &str); 8] = [
    ("Cargo.toml", "Rust (cargo)"),
    ("go.mod", "Go (go)"),
    ("package.json", "JavaScript/TypeScript (npm)"),
    ("pyproject.toml", "Python (pyproject)"),
    ("setup.py", "Python (setuptools)"),
    ("CMakeLists.txt", "C/C++ (cmake)"),
    ("meson.build", "C/C++ (meson)"),
    ("Makefile", "make"),
];

/// The project `dir` is in: the working copy's root if it is in one, else `dir` if it
/// holds a build file; `None` elsewhere (a chat started in a home directory does not
/// map the home directory). `map_tokens` 0: no map.
pub fn detect(dir: &Path, map_tokens: usize, cache: Option<PathBuf>) -> Option<Project> {
    let repo = vcs::detect(dir).ok();
    let root = repo
        .as_ref()
        .map(|r| r.root().to_path_buf())
        .unwrap_or_else(|| dir.to_path_buf());
    let kind = MARKERS
        .iter()
        .find(|(file, _)| root.join(file).is_file() || dir.join(file).is_file())
        .map(|(_, kind)| kind.to_string());
    if repo.is_none() && kind.is_none() {
        return None;
    }
    let map = map_of(&root, &[], map_tokens, cache);
    Some(Project {
        root,
        kind,
        vcs: repo.map(|r| r.kind().to_string()),
        map,
        map_tokens: (map_tokens > 0).then_some(map_tokens),
    })
}

/// The map of `root` personalised to `focus` (project-relative paths), when one is
/// asked for (`tokens` > 0) and has something in it.
fn map_of(root: &Path, focus: &[String], tokens: usize, cache: Option<PathBuf>) -> Option<Map> {
    if tokens == 0 {
        return None;
    }
    let settings = RepoMapSettings {
        tokens,
        cache_dir: cache,
        ..Default::default()
    };
    let focus: Vec<PathBuf> = focus.iter().map(PathBuf::from).collect();
    build(root, &focus, &settings)
        .ok()
        .filter(|m| !m.text.is_empty())
        .map(|m| Map {
            tokens: m.tokens,
            files: m.stats.files,
            text: m.text,
        })
}

impl Project {
    /// Ranks the map again around the files the conversation is about (`focus`), keeping
    /// its size; the old map stays if the new one cannot be built.
    pub fn refocus(&mut self, focus: &[String], cache: Option<PathBuf>) {
        let Some(tokens) = self.map_tokens else {
            return;
        };
        if let Some(map) = map_of(&self.root, focus, tokens, cache) {
            self.map = Some(map);
        }
    }

    /// The line shown at start.
    pub fn line(&self) -> String {
        let mut parts = vec![format!("project {}", self.root.display())];
        parts.extend(self.kind.clone());
        parts.extend(self.vcs.clone());
        if let Some(m) = &self.map {
            parts.push(format!("map {} tokens of {} files", m.tokens, m.files));
        }
        parts.join(" · ")
    }

    /// What the model is told of the project, after the mode's instructions.
    pub fn prompt(&self) -> String {
        let mut p = format!(
            "\n\nThe user works in the project at {}",
            self.root.display()
        );
        if let Some(k) = &self.kind {
            p.push_str(&format!(", a {k} project"));
        }
        if let Some(v) = &self.vcs {
            p.push_str(&format!(" under {v}"));
        }
        p.push('.');
        if let Some(m) = &self.map {
            p.push_str(
                "\nIts code, the most used definitions first (path, then line: first line of \
                 source // doc):\n",
            );
            p.push_str(&m.text);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cargo_project_in_git_is_named_and_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("Cargo.toml"), "[package]\nname = \"x\"\n").unwrap();
        std::fs::create_dir(root.join("src")).unwrap();
        std::fs::write(root.join("src/lib.rs"), "/// Says hi.\npub fn greet() {}\n").unwrap();
        let git = std::process::Command::new("git")
            .args(["init", "-q"])
            .current_dir(root)
            .status()
            .unwrap();
        assert!(git.success());
        let p = detect(&root.join("src"), 256, None).expect("a project");
        assert_eq!(p.root, root.canonicalize().unwrap());
        assert_eq!(p.kind.as_deref(), Some("Rust (cargo)"));
        assert_eq!(p.vcs.as_deref(), Some("git"));
        assert!(
            p.line().contains("Rust (cargo) · git · map"),
            "{}",
            p.line()
        );
        let prompt = p.prompt();
        assert!(
            prompt.contains("pub fn greet() {}  // Says hi."),
            "{prompt}"
        );
        // No map asked for: none given.
        assert_eq!(detect(root, 0, None).and_then(|p| p.map), None);
    }

    #[test]
    fn a_directory_that_is_no_project_is_not_mapped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.rs"), "fn x() {}\n").unwrap();
        assert_eq!(detect(dir.path(), 256, None), None);
    }
}
