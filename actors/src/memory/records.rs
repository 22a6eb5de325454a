//! What the memory room keeps on disk: record types, their keys, ids and encoding.
//!
//! Trees (created by store schema migration 1 → 2):
//!
//! | tree | key | value |
//! |---|---|---|
//! | `memories` | memory id, 8 bytes big-endian (time-ordered) | [`MemoryRecord`] (JSON) |
//! | `conversations` | `s\0<session>` | [`SessionMeta`] (JSON) |
//! | `conversations` | `m\0<session>\0<seq, 8 bytes BE>` | [`MessageRecord`] (JSON) |
//! | `chat_sessions` | `<name>` | a saved terminal chat ([`super::chat_sessions`]) |
//!
//! A session's messages and its meta record share a tree so one append (message + meta +
//! summary) is a single atomic batch. Every record carries `v`, its format number, so a
//! later format can be read beside this one and upgraded in place.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::llm::{ChatMessage, ChatRole, ToolCallRequest};

/// Tree of long-term memories.
pub const MEMORIES_TREE: &str = "memories";
/// Tree of conversation sessions and their messages.
pub const CONVERSATIONS_TREE: &str = "conversations";
/// Tree of saved terminal chat sessions.
pub const CHAT_SESSIONS_TREE: &str = "chat_sessions";

/// Record format written by this build.
pub const RECORD_FORMAT: u32 = 1;

/// Longest memory text, in characters.
pub const MAX_MEMORY_CHARS: usize = 4_000;
/// Most tags on one memory.
pub const MAX_TAGS: usize = 16;
/// Longest tag, in characters.
pub const MAX_TAG_CHARS: usize = 64;
/// Longest session id or chat name, in bytes.
pub const MAX_SESSION_ID_BYTES: usize = 128;
/// Longest conversation message, in characters (a pasted document is cut, not refused).
pub const MAX_MESSAGE_CHARS: usize = 100_000;

fn format_one() -> u32 {
    RECORD_FORMAT
}

/// A long-term memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryRecord {
    /// Record format.
    #[serde(default = "format_one")]
    pub v: u32,
    /// Numeric id (unix microseconds at creation, made unique); shown as [`MemoryId`].
    pub id: u64,
    /// What is remembered.
    pub content: String,
    /// Labels.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Session it came from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The turn it came from (its source turn), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
    /// Who stored it: `user` (asked to remember), `tool`, `cli`, `auto`, ...
    #[serde(default)]
    pub source: String,
    /// Importance 0.0–1.0, when rated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub importance: Option<f64>,
    /// Unix seconds when stored.
    pub created_at: f64,
}

impl MemoryRecord {
    /// The id as users see it.
    pub fn memory_id(&self) -> String {
        MemoryId(self.id).to_string()
    }

    /// The wire form (for events and command answers).
    pub fn to_item(&self, score: Option<f64>) -> coda_protocol::MemoryItem {
        coda_protocol::MemoryItem {
            memory_id: self.memory_id(),
            content: self.content.clone(),
            tags: self.tags.clone(),
            score,
            created_at: Some(self.created_at),
        }
    }
}

/// A memory id: `m-` followed by the numeric id in lower-case Crockford base 32 (13
/// characters, sorts like the number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemoryId(pub u64);

const CROCKFORD: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

impl std::fmt::Display for MemoryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = [0u8; 13];
        let mut n = self.0;
        for slot in out.iter_mut().rev() {
            *slot = CROCKFORD[(n & 31) as usize];
            n >>= 5;
        }
        // Every byte comes from the ASCII alphabet above.
        f.write_str("m-")?;
        f.write_str(std::str::from_utf8(&out).map_err(|_| std::fmt::Error)?)
    }
}

impl std::str::FromStr for MemoryId {
    type Err = String;

    /// Accepts `m-xxxxxxxxxxxxx` or the bare 13 characters (Crockford's aliases: `o` = 0,
    /// `i`/`l` = 1; any case).
    fn from_str(s: &str) -> Result<MemoryId, String> {
        let body = s.trim();
        let body = body
            .strip_prefix("m-")
            .or_else(|| body.strip_prefix("M-"))
            .unwrap_or(body);
        if body.is_empty() || body.len() > 13 {
            return Err(format!(
                "`{s}` is not a memory id (ids look like m-0000000000001)"
            ));
        }
        let mut n: u64 = 0;
        for (i, c) in body.chars().enumerate() {
            let c = match c.to_ascii_lowercase() {
                'o' => '0',
                'i' | 'l' => '1',
                c => c,
            };
            let Some(d) = CROCKFORD.iter().position(|&a| a as char == c) else {
                return Err(format!("`{s}` is not a memory id (bad character `{c}`)"));
            };
            // 13 digits of 5 bits = 65 bits: the first digit may only hold 4.
            if i == 0 && body.len() == 13 && d > 15 {
                return Err(format!("`{s}` is not a memory id (out of range)"));
            }
            n = (n << 5) | d as u64;
        }
        Ok(MemoryId(n))
    }
}

/// Key of a memory in [`MEMORIES_TREE`].
pub fn memory_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

/// Hands out memory ids: unix microseconds, bumped to stay strictly increasing (so ids are
/// unique and sort by creation even when the clock repeats or steps back a little).
#[derive(Debug, Default)]
pub struct IdClock {
    last: AtomicU64,
}

impl IdClock {
    /// A clock that never returns `last` or anything below it.
    pub fn after(last: u64) -> IdClock {
        IdClock {
            last: AtomicU64::new(last),
        }
    }

    /// The next id.
    pub fn next(&self) -> u64 {
        let now = (crate::hub::unix_now() * 1e6) as u64;
        let mut prev = self.last.load(Ordering::Relaxed);
        loop {
            let next = now.max(prev + 1);
            match self
                .last
                .compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(actual) => prev = actual,
            }
        }
    }
}

/// Metadata of a conversation session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionMeta {
    /// Record format.
    #[serde(default = "format_one")]
    pub v: u32,
    pub session_id: String,
    /// Unix seconds of the first message.
    pub created_at: f64,
    /// Unix seconds of the latest message.
    pub updated_at: f64,
    /// Messages stored (the next message gets `seq = message_count + 1`).
    pub message_count: u64,
    /// Extractive summary of the messages that left the recent window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
}

/// A rolling summary of older turns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// One line per folded message, oldest first (the oldest are dropped past the budget).
    pub lines: Vec<String>,
    /// Messages with `seq <= through_seq` are covered by the summary, not the window.
    pub through_seq: u64,
}

/// One stored conversation message with its metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// Record format.
    #[serde(default = "format_one")]
    pub v: u32,
    /// Position in the session, from 1.
    pub seq: u64,
    /// Who said it.
    pub role: ChatRole,
    /// The text.
    pub content: String,
    /// The turn it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
    /// Unix seconds when stored.
    pub created_at: f64,
    /// Tool calls the assistant asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallRequest>,
    /// Which tool call this answers (tool messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// Anything else worth keeping (model, latency, source: stt/text, ...).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub metadata: serde_json::Value,
}

impl MessageRecord {
    /// The message id used in events: `<session>#<seq>`.
    pub fn message_id(&self, session_id: &str) -> String {
        format!("{session_id}#{}", self.seq)
    }

    /// As a chat message for a provider.
    pub fn to_chat(&self) -> ChatMessage {
        ChatMessage {
            role: self.role,
            content: self.content.clone(),
            tool_calls: self.tool_calls.clone(),
            tool_call_id: self.tool_call_id.clone(),
        }
    }
}

/// Key of a session's meta record.
pub fn session_key(session_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + session_id.len());
    k.extend_from_slice(b"s\0");
    k.extend_from_slice(session_id.as_bytes());
    k
}

/// Prefix of every message key of a session.
pub fn message_prefix(session_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + session_id.len() + 8);
    k.extend_from_slice(b"m\0");
    k.extend_from_slice(session_id.as_bytes());
    k.push(0);
    k
}

/// Key of one message.
pub fn message_key(session_id: &str, seq: u64) -> Vec<u8> {
    let mut k = message_prefix(session_id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Prefix of every session meta key.
pub const SESSION_PREFIX: &[u8] = b"s\0";

/// Checks a session id (or chat name): 1–128 bytes, no control characters (NUL separates
/// key parts).
pub fn validate_session_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("the session id is empty".into());
    }
    if id.len() > MAX_SESSION_ID_BYTES {
        return Err(format!(
            "the session id is longer than {MAX_SESSION_ID_BYTES} bytes"
        ));
    }
    if id.chars().any(char::is_control) {
        return Err("the session id contains control characters".into());
    }
    Ok(())
}

/// Encodes a record.
pub fn encode<T: Serialize>(record: &T) -> Result<Vec<u8>, String> {
    serde_json::to_vec(record).map_err(|e| format!("cannot encode a record: {e}"))
}

/// Decodes a record, naming what it is when it cannot.
pub fn decode<T: for<'de> Deserialize<'de>>(what: &str, raw: &[u8]) -> Result<T, String> {
    serde_json::from_slice(raw).map_err(|e| format!("unreadable {what} record: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_ids_round_trip_and_sort() {
        for n in [0u64, 1, 31, 32, 1_713_943_210_123_456, u64::MAX] {
            let id = MemoryId(n);
            let text = id.to_string();
            assert_eq!(text.len(), 15, "{text}");
            assert_eq!(text.parse::<MemoryId>(), Ok(id), "{text}");
            assert_eq!(text[2..].parse::<MemoryId>(), Ok(id), "bare form");
            assert_eq!(text.to_uppercase().parse::<MemoryId>(), Ok(id), "any case");
        }
        assert!(MemoryId(5).to_string() < MemoryId(40).to_string());
        assert!("m-".parse::<MemoryId>().is_err());
        assert!("m-!!".parse::<MemoryId>().is_err());
        assert!(
            "m-zzzzzzzzzzzzz".parse::<MemoryId>().is_err(),
            "over 64 bits"
        );
        assert!("m-00000000000000".parse::<MemoryId>().is_err(), "too long");
    }

    #[test]
    fn id_clock_is_strictly_increasing() {
        let clock = IdClock::after(u64::MAX / 2);
        let a = clock.next();
        let b = clock.next();
        assert!(a > u64::MAX / 2 && b > a);
        let clock = IdClock::default();
        let first = clock.next();
        assert!(first > 1_600_000_000_000_000, "microseconds since 1970");
    }

    #[test]
    fn message_keys_sort_by_seq_within_a_session() {
        let a = message_key("s1", 2);
        let b = message_key("s1", 10);
        let other = message_key("s10", 1);
        assert!(a < b);
        assert!(a.starts_with(&message_prefix("s1")));
        assert!(
            !other.starts_with(&message_prefix("s1")),
            "prefix ends in NUL"
        );
    }

    #[test]
    fn session_ids_are_checked() {
        assert!(validate_session_id("cli-01").is_ok());
        assert!(validate_session_id("").is_err());
        assert!(validate_session_id("a\0b").is_err());
        assert!(validate_session_id(&"x".repeat(129)).is_err());
    }
}
