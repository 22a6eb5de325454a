//! Saved chat sessions behind a small trait, so the JSON files used now
//! (`$XDG_DATA_HOME/coda/chat-sessions/NAME.json`) can be swapped for the memory store
//! later without touching the REPL.

use std::path::{Path, PathBuf};

use coda_actors::llm::ChatMessage;
use serde::{Deserialize, Serialize};

use super::UsageBook;

/// A conversation as saved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedSession {
    /// Its name (`[A-Za-z0-9._-]`, 1 to 64 characters).
    pub name: String,
    /// Unix seconds of the first save.
    pub created_at: u64,
    /// Unix seconds of the last save.
    pub updated_at: u64,
    /// Provider and model in use when saved.
    pub provider: String,
    /// The model override in use (`None`: the provider's default).
    pub model: Option<String>,
    /// The mode (code, debug, explain, review, refactor).
    pub mode: String,
    /// The conversation, oldest first (system prompts are not stored: they follow the mode).
    pub messages: Vec<ChatMessage>,
    /// Notes on the older turns compacted out of `messages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Token use so far.
    #[serde(default)]
    pub usage: UsageBook,
}

/// One line of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionSummary {
    pub name: String,
    /// Unix seconds of the last save.
    pub updated_at: u64,
    /// Messages in it.
    pub messages: usize,
}

/// Where sessions are kept.
pub trait SessionStore {
    /// Saves (replacing one of the same name); returns where it went.
    fn save(&self, s: &SavedSession) -> anyhow::Result<String>;
    /// Loads one by name.
    fn load(&self, name: &str) -> anyhow::Result<SavedSession>;
    /// Every saved session, most recent first.
    fn list(&self) -> anyhow::Result<Vec<SessionSummary>>;
}

/// Checks a session name (it becomes a file name).
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        anyhow::bail!("bad session name {name:?}: use 1-64 letters, digits, '.', '_' or '-'")
    }
}

/// One JSON file per session in a directory.
#[derive(Debug, Clone)]
pub struct JsonDirStore {
    dir: PathBuf,
}

impl JsonDirStore {
    /// A store in `dir` (created on first save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        JsonDirStore { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }
}

impl SessionStore for JsonDirStore {
    fn save(&self, s: &SavedSession) -> anyhow::Result<String> {
        check_name(&s.name)?;
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path(&s.name);
        let tmp = self.dir.join(format!(".{}.json.tmp", s.name));
        std::fs::write(&tmp, serde_json::to_vec_pretty(s)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(path.display().to_string())
    }

    fn load(&self, name: &str) -> anyhow::Result<SavedSession> {
        check_name(name)?;
        let path = self.path(name);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            anyhow::anyhow!(
                "no session {name:?} ({}: {e}); /session list shows them",
                path.display()
            )
        })?;
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("session file {} is damaged: {e}", path.display()))
    }

    fn list(&self) -> anyhow::Result<Vec<SessionSummary>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let p = entry.path();
            if p.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let Some(name) = p.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if check_name(name).is_err() {
                continue;
            }
            // A damaged file is listed by name rather than hidden.
            match self.load(name) {
                Ok(s) => out.push(SessionSummary {
                    name: s.name,
                    updated_at: s.updated_at,
                    messages: s.messages.len(),
                }),
                Err(_) => out.push(SessionSummary {
                    name: name.to_string(),
                    updated_at: 0,
                    messages: 0,
                }),
            }
        }
        out.sort_by(|a, b| b.updated_at.cmp(&a.updated_at).then(a.name.cmp(&b.name)));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coda_actors::llm::ChatRole;

    #[test]
    fn save_load_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = JsonDirStore::new(dir.path().join("s"));
        assert!(store.list().unwrap().is_empty());
        let mut s = SavedSession {
            name: "work-1".into(),
            created_at: 1,
            updated_at: 5,
            provider: "openai".into(),
            model: Some("m".into()),
            mode: "code".into(),
            messages: vec![ChatMessage::new(ChatRole::User, "hi")],
            summary: None,
            usage: UsageBook::default(),
        };
        store.save(&s).unwrap();
        s.name = "b".into();
        s.updated_at = 9;
        store.save(&s).unwrap();
        let l = store.list().unwrap();
        assert_eq!(
            l.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(),
            ["b", "work-1"]
        );
        assert_eq!(store.load("work-1").unwrap().messages.len(), 1);
        assert!(store
            .load("nope")
            .unwrap_err()
            .to_string()
            .contains("no session"));
        assert!(check_name("../etc").is_err());
        assert!(check_name(".hidden").is_err());
        assert!(store
            .save(&SavedSession {
                name: "a/b".into(),
                ..s
            })
            .is_err());
    }
}
