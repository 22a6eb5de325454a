//! Saved terminal chats (`/session save|load|list`, export) in the same store as the
//! rest of the memory room, tree `chat_sessions`, one record per name.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use coda_actors::store::{SledStore, Storage};
//! # use coda_actors::llm::{ChatMessage, ChatRole};
//! use coda_actors::memory::chat_sessions::{ChatExportFormat, ChatSessionStore};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let storage: Arc<dyn Storage> = Arc::new(SledStore::open("/tmp/store".as_ref())?);
//! let chats = ChatSessionStore::new(storage);
//! let messages = vec![ChatMessage::new(ChatRole::User, "hi")];
//! chats.save("groceries", &messages, Some("smollm2"))?;
//! let saved = chats.load("groceries")?;
//! println!("{}", chats.export("groceries", ChatExportFormat::Markdown)?);
//! for info in chats.list()? { println!("{} ({} messages)", info.name, info.message_count); }
//! # Ok(()) }
//! ```
//!
//! Like every store write, `save` and `delete` are durable when they return; they block
//! on disk I/O (call them from a blocking thread inside an async runtime).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::llm::{ChatMessage, ChatRole};
use crate::store::Storage;

use super::engine::MemoryFailure;
use super::records::{decode, encode, validate_session_id, CHAT_SESSIONS_TREE, RECORD_FORMAT};

/// A saved chat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedChat {
    /// Record format.
    pub v: u32,
    /// The name it was saved under.
    pub name: String,
    /// Unix seconds of the first save.
    pub created_at: f64,
    /// Unix seconds of the latest save.
    pub saved_at: f64,
    /// The model used, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The conversation, oldest first.
    pub messages: Vec<ChatMessage>,
}

/// A saved chat in a listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatSessionInfo {
    pub name: String,
    /// Unix seconds of the first save.
    pub created_at: f64,
    /// Unix seconds of the latest save.
    pub saved_at: f64,
    /// Messages in it.
    pub message_count: usize,
    /// The model used, when known.
    pub model: Option<String>,
}

impl SavedChat {
    fn info(&self) -> ChatSessionInfo {
        ChatSessionInfo {
            name: self.name.clone(),
            created_at: self.created_at,
            saved_at: self.saved_at,
            message_count: self.messages.len(),
            model: self.model.clone(),
        }
    }
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatExportFormat {
    /// The [`SavedChat`] record, pretty JSON.
    Json,
    /// A readable transcript.
    Markdown,
}

/// Saved chats on a [`Storage`].
#[derive(Clone)]
pub struct ChatSessionStore {
    storage: Arc<dyn Storage>,
}

impl std::fmt::Debug for ChatSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatSessionStore")
            .field("tree", &CHAT_SESSIONS_TREE)
            .finish()
    }
}

fn check_name(name: &str) -> Result<(), MemoryFailure> {
    validate_session_id(name)
        .map_err(|e| MemoryFailure::Invalid(e.replace("session id", "chat name")))
}

impl ChatSessionStore {
    /// The store of saved chats.
    pub fn new(storage: Arc<dyn Storage>) -> ChatSessionStore {
        ChatSessionStore { storage }
    }

    /// Saves (or replaces) the chat `name`; keeps the first save's `created_at`.
    pub fn save(
        &self,
        name: &str,
        messages: &[ChatMessage],
        model: Option<&str>,
    ) -> Result<ChatSessionInfo, MemoryFailure> {
        check_name(name)?;
        let now = crate::hub::unix_now();
        let created_at = match self.try_load(name)? {
            Some(old) => old.created_at,
            None => now,
        };
        let record = SavedChat {
            v: RECORD_FORMAT,
            name: name.to_string(),
            created_at,
            saved_at: now,
            model: model.map(str::to_string),
            messages: messages.to_vec(),
        };
        let bytes = encode(&record).map_err(MemoryFailure::Invalid)?;
        self.storage
            .put(CHAT_SESSIONS_TREE, name.as_bytes(), &bytes)?;
        Ok(record.info())
    }

    fn try_load(&self, name: &str) -> Result<Option<SavedChat>, MemoryFailure> {
        match self.storage.get(CHAT_SESSIONS_TREE, name.as_bytes())? {
            None => Ok(None),
            Some(raw) => decode("saved chat", &raw)
                .map(Some)
                .map_err(MemoryFailure::Corrupt),
        }
    }

    /// Loads the chat `name`.
    pub fn load(&self, name: &str) -> Result<SavedChat, MemoryFailure> {
        check_name(name)?;
        self.try_load(name)?.ok_or_else(|| {
            MemoryFailure::NotFound(format!(
                "no saved chat named `{name}` (see `/session list`)"
            ))
        })
    }

    /// Every saved chat, most recently saved first.
    pub fn list(&self) -> Result<Vec<ChatSessionInfo>, MemoryFailure> {
        let mut out = Vec::new();
        for (key, raw) in self.storage.scan_prefix(CHAT_SESSIONS_TREE, b"")? {
            match decode::<SavedChat>("saved chat", &raw) {
                Ok(c) => out.push(c.info()),
                Err(e) => tracing::error!(
                    name = %String::from_utf8_lossy(&key), error = %e,
                    "skipping an unreadable saved chat"
                ),
            }
        }
        out.sort_by(|a, b| b.saved_at.total_cmp(&a.saved_at));
        Ok(out)
    }

    /// Deletes the chat `name`; `true` if it existed.
    pub fn delete(&self, name: &str) -> Result<bool, MemoryFailure> {
        check_name(name)?;
        Ok(self.storage.delete(CHAT_SESSIONS_TREE, name.as_bytes())?)
    }

    /// The chat `name` as JSON or as a Markdown transcript.
    pub fn export(&self, name: &str, format: ChatExportFormat) -> Result<String, MemoryFailure> {
        let chat = self.load(name)?;
        Ok(match format {
            ChatExportFormat::Json => serde_json::to_string_pretty(&chat)
                .map_err(|e| MemoryFailure::Invalid(e.to_string()))?,
            ChatExportFormat::Markdown => markdown(&chat),
        })
    }
}

/// A readable transcript of a chat.
pub fn markdown(chat: &SavedChat) -> String {
    let mut out = format!("# Chat `{}`\n\n", chat.name);
    if let Some(model) = &chat.model {
        out.push_str(&format!("Model: {model}\n\n"));
    }
    for m in &chat.messages {
        let who = match m.role {
            ChatRole::System => "System",
            ChatRole::User => "You",
            ChatRole::Assistant => "Assistant",
            ChatRole::Tool => "Tool",
        };
        out.push_str(&format!("**{who}:** {}\n\n", m.content.trim()));
        for call in &m.tool_calls {
            out.push_str(&format!(
                "> called `{}` with `{}`\n\n",
                call.name, call.arguments
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    #[test]
    fn save_load_list_export_delete_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store");
        let messages = vec![
            ChatMessage::new(ChatRole::User, "What is 2+2?"),
            ChatMessage::new(ChatRole::Assistant, "4."),
        ];
        {
            let storage: Arc<dyn Storage> = Arc::new(SledStore::open(&path).expect("open"));
            let chats = ChatSessionStore::new(storage);
            let info = chats.save("maths", &messages, Some("m1")).expect("save");
            assert_eq!(info.message_count, 2);
            chats.save("other", &messages[..1], None).expect("save");
            let again = chats.save("maths", &messages, Some("m2")).expect("resave");
            assert_eq!(again.created_at, info.created_at, "first save time kept");
        }
        let storage: Arc<dyn Storage> = Arc::new(SledStore::open(&path).expect("reopen"));
        let chats = ChatSessionStore::new(storage);
        let loaded = chats.load("maths").expect("load");
        assert_eq!(loaded.messages, messages);
        assert_eq!(loaded.model.as_deref(), Some("m2"));
        let names: Vec<String> = chats
            .list()
            .expect("list")
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(names, ["maths", "other"], "most recently saved first");
        let md = chats
            .export("maths", ChatExportFormat::Markdown)
            .expect("md");
        assert!(
            md.contains("**You:** What is 2+2?") && md.contains("**Assistant:** 4."),
            "{md}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&chats.export("maths", ChatExportFormat::Json).expect("json"))
                .expect("valid json");
        assert_eq!(json["messages"][1]["content"], "4.");
        assert!(chats.delete("maths").expect("delete"));
        assert!(!chats.delete("maths").expect("delete again"));
        assert!(matches!(
            chats.load("maths"),
            Err(MemoryFailure::NotFound(_))
        ));
        assert!(matches!(
            chats.save("", &messages, None),
            Err(MemoryFailure::Invalid(_))
        ));
    }
}
