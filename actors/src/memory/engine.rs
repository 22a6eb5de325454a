//! The memory engine: conversations and long-term memories on a [`Storage`], with the
//! search index and the session cache in memory. Synchronous and thread-safe: the Memory
//! actor runs it on a writer thread and the blocking pool, the CLI and the benchmark call
//! it directly.
//!
//! Writes go through [`MemoryEngine::commit`]: a group of jobs is turned into store
//! batches, written with *one* flush (group commit), and only then applied to the index
//! and the session cache — so nothing is visible, or acknowledged, before it is durable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use serde::{Deserialize, Serialize};

use crate::llm::{ChatRole, ToolCallRequest};
use crate::store::{Storage, StoreError, WriteGroup};

use super::context::{self, SessionState, TurnContext};
use super::index::{Hit, Index};
use super::records::{
    self, decode, encode, memory_key, message_key, message_prefix, session_key,
    validate_session_id, IdClock, MemoryRecord, MessageRecord, SessionMeta, CONVERSATIONS_TREE,
    MAX_MEMORY_CHARS, MAX_MESSAGE_CHARS, MAX_TAGS, MAX_TAG_CHARS, MEMORIES_TREE, RECORD_FORMAT,
    SESSION_PREFIX,
};

/// Tuning of the memory engine (the `[memory]` config section).
#[derive(Debug, Clone, PartialEq)]
pub struct MemorySettings {
    /// Turns kept verbatim in a session before older ones are summarised.
    pub recent_turns: usize,
    /// Largest rolling summary of older turns, in estimated tokens.
    pub summary_token_budget: usize,
    /// Memories searched for a turn's context.
    pub search_limit: usize,
    /// A turn's context budget when the caller gives none, in estimated tokens.
    pub context_token_budget: usize,
    /// Results of `memory_search` / `memory_list` when the caller gives no limit.
    pub default_limit: usize,
}

impl Default for MemorySettings {
    fn default() -> Self {
        MemorySettings {
            recent_turns: 6,
            summary_token_budget: 256,
            search_limit: 5,
            context_token_budget: 2048,
            default_limit: 20,
        }
    }
}

/// Sessions kept in the cache (least recently updated evicted first).
const SESSION_CACHE: usize = 1024;

/// Why a memory operation failed. Cheap to clone (every caller of a group commit gets it).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MemoryFailure {
    /// The request itself is invalid.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The memory or session does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The store failed; nothing was acknowledged.
    #[error("the memory store failed: {0}")]
    Storage(String),
    /// A stored record cannot be read.
    #[error("a stored record is unreadable: {0}")]
    Corrupt(String),
    /// The memory system is not running (writer gone, actor stopped, task panicked).
    #[error("the memory system is unavailable: {0}")]
    Unavailable(String),
}

impl MemoryFailure {
    /// The stable code (`memory_error.code`).
    pub fn code(&self) -> &'static str {
        match self {
            MemoryFailure::Invalid(_) => "invalid",
            MemoryFailure::NotFound(_) => "not_found",
            MemoryFailure::Storage(_) => "storage_failed",
            MemoryFailure::Corrupt(_) => "corrupt_record",
            MemoryFailure::Unavailable(_) => "unavailable",
        }
    }

    /// How bad it is (`memory_error.level`).
    pub fn level(&self) -> coda_protocol::Level {
        use coda_protocol::Level;
        match self {
            MemoryFailure::Invalid(_) | MemoryFailure::NotFound(_) => Level::Warning,
            MemoryFailure::Corrupt(_) | MemoryFailure::Unavailable(_) => Level::Error,
            MemoryFailure::Storage(_) => Level::Critical,
        }
    }
}

impl From<StoreError> for MemoryFailure {
    fn from(e: StoreError) -> Self {
        MemoryFailure::Storage(e.to_string())
    }
}

/// A memory to store.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NewMemory {
    /// What to remember (1–4000 characters).
    pub content: String,
    /// Labels (at most 16, each at most 64 characters; trimmed, lower-cased, de-duplicated).
    #[serde(default)]
    pub tags: Vec<String>,
    /// The session it came from.
    #[serde(default)]
    pub session_id: Option<String>,
    /// The turn it came from.
    #[serde(default)]
    pub turn_id: Option<String>,
    /// Who stores it (`user`, `tool`, `cli`, ...).
    #[serde(default)]
    pub source: String,
    /// Importance 0.0–1.0.
    #[serde(default)]
    pub importance: Option<f64>,
}

/// A conversation message to append.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewMessage {
    pub session_id: String,
    /// Who said it.
    pub role: ChatRole,
    /// The text (cut at 100,000 characters).
    pub content: String,
    /// The turn.
    #[serde(default)]
    pub turn_id: Option<String>,
    /// Tool calls (assistant messages).
    #[serde(default)]
    pub tool_calls: Vec<ToolCallRequest>,
    /// The call answered (tool messages).
    #[serde(default)]
    pub tool_call_id: Option<String>,
    /// Anything else (model, latency, input source...).
    #[serde(default)]
    pub metadata: serde_json::Value,
}

/// One write for [`MemoryEngine::commit`].
#[derive(Debug, Clone, PartialEq)]
pub enum WriteJob {
    /// Store a long-term memory.
    Store(NewMemory),
    /// Delete a memory by numeric id.
    Forget(u64),
    /// Append a message to a session.
    Append(NewMessage),
    /// Delete a session and all its messages.
    ForgetSession(String),
}

/// What an acknowledged write did.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOutcome {
    /// The stored memory.
    Stored(Arc<MemoryRecord>),
    /// The deleted memory (`None`: there was none with that id).
    Forgotten(Option<Arc<MemoryRecord>>),
    /// The stored message.
    Appended(MessageRecord),
    /// Messages deleted with the session (`None`: no such session).
    SessionForgotten(Option<u64>),
}

/// A session and its messages, for export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationExport {
    /// The session's meta record.
    pub session: SessionMeta,
    /// Every message, oldest first.
    pub messages: Vec<MessageRecord>,
}

/// Everything the memory room holds (`coda memory export`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryExport {
    /// Unix seconds of the export.
    pub exported_at: f64,
    /// Long-term memories, newest first.
    pub memories: Vec<MemoryRecord>,
    /// Conversations, by session id.
    pub conversations: Vec<ConversationExport>,
}

enum Prepared {
    Store(Arc<MemoryRecord>),
    Forget(Option<Arc<MemoryRecord>>),
    Append(MessageRecord),
    ForgetSession(Option<u64>),
}

/// The engine. Share it as `Arc<MemoryEngine>`.
pub struct MemoryEngine {
    storage: Arc<dyn Storage>,
    settings: MemorySettings,
    index: RwLock<Index>,
    sessions: Mutex<HashMap<String, SessionState>>,
    ids: IdClock,
    skipped: usize,
    /// Serialises commits (the actor has one writer; direct callers may have several).
    commit_lock: Mutex<()>,
}

impl std::fmt::Debug for MemoryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryEngine")
            .field("settings", &self.settings)
            .field("memories", &self.memory_count())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these maps half-written in a way that
    // matters more than refusing all later calls would.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemoryEngine {
    /// Opens the engine on `storage`, loading every memory into the search index.
    /// Unreadable memory records are skipped and logged ([`MemoryEngine::skipped_records`]).
    pub fn open(
        storage: Arc<dyn Storage>,
        settings: MemorySettings,
    ) -> Result<MemoryEngine, MemoryFailure> {
        let mut index = Index::new();
        let mut skipped = 0;
        for (key, value) in storage.scan_prefix(MEMORIES_TREE, b"")? {
            match decode::<MemoryRecord>("memory", &value) {
                Ok(r) => index.insert(Arc::new(r)),
                Err(e) => {
                    skipped += 1;
                    tracing::error!(key = %hex::encode(&key), error = %e, "skipping an unreadable memory");
                }
            }
        }
        let ids = IdClock::after(index.max_id());
        Ok(MemoryEngine {
            storage,
            settings,
            index: RwLock::new(index),
            sessions: Mutex::new(HashMap::new()),
            ids,
            skipped,
            commit_lock: Mutex::new(()),
        })
    }

    /// The settings in force.
    pub fn settings(&self) -> &MemorySettings {
        &self.settings
    }

    /// The storage underneath.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Memory records that could not be read at open.
    pub fn skipped_records(&self) -> usize {
        self.skipped
    }

    /// Live memories.
    pub fn memory_count(&self) -> usize {
        self.read_index().len()
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    // -----------------------------------------------------------------------------------
    // Writes
    // -----------------------------------------------------------------------------------

    /// Stores a memory; durable when it returns.
    pub fn store(&self, new: NewMemory) -> Result<Arc<MemoryRecord>, MemoryFailure> {
        match self.commit_one(WriteJob::Store(new))? {
            WriteOutcome::Stored(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// Deletes a memory; `None` if there was none with that id.
    pub fn forget(&self, id: u64) -> Result<Option<Arc<MemoryRecord>>, MemoryFailure> {
        match self.commit_one(WriteJob::Forget(id))? {
            WriteOutcome::Forgotten(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// Appends a message to its session; durable when it returns.
    pub fn append(&self, new: NewMessage) -> Result<MessageRecord, MemoryFailure> {
        match self.commit_one(WriteJob::Append(new))? {
            WriteOutcome::Appended(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// Deletes a session and its messages; the number of messages, `None` if unknown.
    pub fn forget_session(&self, session_id: &str) -> Result<Option<u64>, MemoryFailure> {
        match self.commit_one(WriteJob::ForgetSession(session_id.to_string()))? {
            WriteOutcome::SessionForgotten(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    fn commit_one(&self, job: WriteJob) -> Result<WriteOutcome, MemoryFailure> {
        self.commit(vec![job])
            .pop()
            .unwrap_or_else(|| Err(MemoryFailure::Unavailable("empty commit".into())))
    }

    /// Group commit: prepares every job in order, writes them all with one flush, then
    /// makes them visible. One result per job, in order. A job that is invalid fails alone;
    /// a store failure fails every job of the group (none is acknowledged).
    pub fn commit(&self, jobs: Vec<WriteJob>) -> Vec<Result<WriteOutcome, MemoryFailure>> {
        let _serial = lock(&self.commit_lock);
        let mut groups: Vec<WriteGroup> = Vec::new();
        let mut prepared: Vec<Result<Prepared, MemoryFailure>> = Vec::with_capacity(jobs.len());
        // Session states as they will be once this group is durable.
        let mut pending: HashMap<String, Option<SessionState>> = HashMap::new();
        let mut forgotten_now: Vec<u64> = Vec::new();
        let now = crate::hub::unix_now();
        for job in jobs {
            let result = match job {
                WriteJob::Store(new) => self.prepare_store(new, now, &mut groups),
                WriteJob::Forget(id) => {
                    let existing = if forgotten_now.contains(&id) {
                        None
                    } else {
                        self.read_index().get(id)
                    };
                    if existing.is_some() {
                        forgotten_now.push(id);
                        let mut g = WriteGroup::new(MEMORIES_TREE);
                        g.delete(memory_key(id).to_vec());
                        groups.push(g);
                    }
                    Ok(Prepared::Forget(existing))
                }
                WriteJob::Append(new) => self.prepare_append(new, now, &mut pending, &mut groups),
                WriteJob::ForgetSession(id) => {
                    self.prepare_forget_session(id, &mut pending, &mut groups)
                }
            };
            prepared.push(result);
        }
        if !groups.is_empty() {
            if let Err(e) = self.storage.write_groups(&groups) {
                let failure = MemoryFailure::from(e);
                tracing::error!(error = %failure, "memory write failed");
                return prepared
                    .into_iter()
                    .map(|p| p.and(Err(failure.clone())))
                    .collect();
            }
        }
        // Durable: make it visible.
        {
            let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
            for p in prepared.iter().flatten() {
                match p {
                    Prepared::Store(r) => index.insert(r.clone()),
                    Prepared::Forget(Some(r)) => {
                        index.remove(r.id);
                    }
                    _ => {}
                }
            }
        }
        if !pending.is_empty() {
            let mut cache = lock(&self.sessions);
            for (id, state) in pending {
                match state {
                    Some(s) => {
                        cache.insert(id, s);
                    }
                    None => {
                        cache.remove(&id);
                    }
                }
            }
            let excess = cache.len().saturating_sub(SESSION_CACHE);
            if excess > 0 {
                evict_oldest(&mut cache, excess);
            }
        }
        prepared
            .into_iter()
            .map(|p| {
                p.map(|p| match p {
                    Prepared::Store(r) => WriteOutcome::Stored(r),
                    Prepared::Forget(r) => WriteOutcome::Forgotten(r),
                    Prepared::Append(m) => WriteOutcome::Appended(m),
                    Prepared::ForgetSession(n) => WriteOutcome::SessionForgotten(n),
                })
            })
            .collect()
    }

    fn prepare_store(
        &self,
        new: NewMemory,
        now: f64,
        groups: &mut Vec<WriteGroup>,
    ) -> Result<Prepared, MemoryFailure> {
        let content = new.content.trim();
        if content.is_empty() {
            return Err(MemoryFailure::Invalid(
                "there is nothing to remember (empty text)".into(),
            ));
        }
        if content.chars().count() > MAX_MEMORY_CHARS {
            return Err(MemoryFailure::Invalid(format!(
                "a memory may hold at most {MAX_MEMORY_CHARS} characters"
            )));
        }
        let mut tags: Vec<String> = Vec::new();
        for tag in &new.tags {
            let t = tag.trim().to_lowercase();
            if t.is_empty() || tags.contains(&t) {
                continue;
            }
            if t.chars().count() > MAX_TAG_CHARS {
                return Err(MemoryFailure::Invalid(format!(
                    "tag `{}…` is longer than {MAX_TAG_CHARS} characters",
                    t.chars().take(20).collect::<String>()
                )));
            }
            tags.push(t);
        }
        if tags.len() > MAX_TAGS {
            return Err(MemoryFailure::Invalid(format!(
                "a memory may have at most {MAX_TAGS} tags"
            )));
        }
        if let Some(i) = new.importance {
            if !(0.0..=1.0).contains(&i) {
                return Err(MemoryFailure::Invalid(
                    "importance must be between 0.0 and 1.0".into(),
                ));
            }
        }
        if let Some(s) = &new.session_id {
            validate_session_id(s).map_err(MemoryFailure::Invalid)?;
        }
        let record = MemoryRecord {
            v: RECORD_FORMAT,
            id: self.ids.next(),
            content: content.to_string(),
            tags,
            session_id: new.session_id,
            turn_id: new.turn_id,
            source: if new.source.is_empty() {
                "unknown".into()
            } else {
                new.source
            },
            importance: new.importance,
            created_at: now,
        };
        let mut g = WriteGroup::new(MEMORIES_TREE);
        g.put(
            memory_key(record.id).to_vec(),
            encode(&record).map_err(MemoryFailure::Invalid)?,
        );
        groups.push(g);
        Ok(Prepared::Store(Arc::new(record)))
    }

    fn prepare_append(
        &self,
        new: NewMessage,
        now: f64,
        pending: &mut HashMap<String, Option<SessionState>>,
        groups: &mut Vec<WriteGroup>,
    ) -> Result<Prepared, MemoryFailure> {
        validate_session_id(&new.session_id).map_err(MemoryFailure::Invalid)?;
        if new.session_id == coda_protocol::SYSTEM_SESSION {
            return Err(MemoryFailure::Invalid(
                "the \"system\" session holds no conversation".into(),
            ));
        }
        let state = match pending.get_mut(&new.session_id) {
            Some(Some(s)) => s,
            Some(None) => {
                pending.insert(
                    new.session_id.clone(),
                    Some(SessionState::new(&new.session_id, now)),
                );
                pending
                    .get_mut(&new.session_id)
                    .and_then(Option::as_mut)
                    .ok_or_else(|| MemoryFailure::Unavailable("session state vanished".into()))?
            }
            None => {
                let cached = lock(&self.sessions).get(&new.session_id).cloned();
                let state = match cached {
                    Some(s) => s,
                    None => self
                        .load_session(&new.session_id)?
                        .unwrap_or_else(|| SessionState::new(&new.session_id, now)),
                };
                pending.insert(new.session_id.clone(), Some(state));
                pending
                    .get_mut(&new.session_id)
                    .and_then(Option::as_mut)
                    .ok_or_else(|| MemoryFailure::Unavailable("session state vanished".into()))?
            }
        };
        let content: String = if new.content.chars().count() > MAX_MESSAGE_CHARS {
            new.content.chars().take(MAX_MESSAGE_CHARS).collect()
        } else {
            new.content
        };
        let record = MessageRecord {
            v: RECORD_FORMAT,
            seq: state.meta.message_count + 1,
            role: new.role,
            content,
            turn_id: new.turn_id,
            created_at: now,
            tool_calls: new.tool_calls,
            tool_call_id: new.tool_call_id,
            metadata: new.metadata,
        };
        state.push(
            record.clone(),
            self.settings.recent_turns,
            self.settings.summary_token_budget,
        );
        let mut g = WriteGroup::new(CONVERSATIONS_TREE);
        g.put(
            message_key(&new.session_id, record.seq),
            encode(&record).map_err(MemoryFailure::Invalid)?,
        );
        g.put(
            session_key(&new.session_id),
            encode(&state.meta).map_err(MemoryFailure::Invalid)?,
        );
        groups.push(g);
        Ok(Prepared::Append(record))
    }

    fn prepare_forget_session(
        &self,
        session_id: String,
        pending: &mut HashMap<String, Option<SessionState>>,
        groups: &mut Vec<WriteGroup>,
    ) -> Result<Prepared, MemoryFailure> {
        validate_session_id(&session_id).map_err(MemoryFailure::Invalid)?;
        let meta = self
            .storage
            .get(CONVERSATIONS_TREE, &session_key(&session_id))?;
        let pending_count = pending
            .get(&session_id)
            .and_then(|s| s.as_ref().map(|s| s.meta.message_count));
        if meta.is_none() && pending_count.is_none() {
            return Ok(Prepared::ForgetSession(None));
        }
        let mut g = WriteGroup::new(CONVERSATIONS_TREE);
        let mut count = 0;
        for (key, _) in self
            .storage
            .scan_prefix(CONVERSATIONS_TREE, &message_prefix(&session_id))?
        {
            g.delete(key);
            count += 1;
        }
        // Messages appended earlier in this same group are not in the store yet.
        for seq in 1..=pending_count.unwrap_or(0) {
            g.delete(message_key(&session_id, seq));
        }
        g.delete(session_key(&session_id));
        groups.push(g);
        pending.insert(session_id.clone(), None);
        Ok(Prepared::ForgetSession(Some(
            pending_count.unwrap_or(count),
        )))
    }

    // -----------------------------------------------------------------------------------
    // Reads
    // -----------------------------------------------------------------------------------

    /// One memory.
    pub fn get(&self, id: u64) -> Option<Arc<MemoryRecord>> {
        self.read_index().get(id)
    }

    /// Newest first.
    pub fn list(&self, offset: usize, limit: usize) -> Vec<Arc<MemoryRecord>> {
        self.read_index().newest(offset, limit)
    }

    /// Best first (BM25 over text and tags).
    pub fn search(&self, query: &str, limit: usize) -> Vec<Hit> {
        self.read_index().search(query, limit)
    }

    /// A session's meta record.
    pub fn session(&self, session_id: &str) -> Result<Option<SessionMeta>, MemoryFailure> {
        if let Some(s) = lock(&self.sessions).get(session_id) {
            return Ok(Some(s.meta.clone()));
        }
        match self
            .storage
            .get(CONVERSATIONS_TREE, &session_key(session_id))?
        {
            None => Ok(None),
            Some(raw) => decode("session", &raw)
                .map(Some)
                .map_err(MemoryFailure::Corrupt),
        }
    }

    /// Every session, most recently updated first.
    pub fn sessions(&self) -> Result<Vec<SessionMeta>, MemoryFailure> {
        let mut out: Vec<SessionMeta> = self
            .storage
            .scan_prefix(CONVERSATIONS_TREE, SESSION_PREFIX)?
            .into_iter()
            .map(|(_, v)| decode("session", &v).map_err(MemoryFailure::Corrupt))
            .collect::<Result<_, _>>()?;
        out.sort_by(|a, b| b.updated_at.total_cmp(&a.updated_at));
        Ok(out)
    }

    /// The last `limit` messages of a session, oldest first.
    pub fn history(
        &self,
        session_id: &str,
        limit: usize,
    ) -> Result<Vec<MessageRecord>, MemoryFailure> {
        let mut out: Vec<MessageRecord> = self
            .storage
            .scan_prefix_rev(CONVERSATIONS_TREE, &message_prefix(session_id), limit)?
            .into_iter()
            .map(|(_, v)| decode("message", &v).map_err(MemoryFailure::Corrupt))
            .collect::<Result<_, _>>()?;
        out.reverse();
        Ok(out)
    }

    fn load_session(&self, session_id: &str) -> Result<Option<SessionState>, MemoryFailure> {
        let Some(raw) = self
            .storage
            .get(CONVERSATIONS_TREE, &session_key(session_id))?
        else {
            return Ok(None);
        };
        let meta: SessionMeta = decode("session", &raw).map_err(MemoryFailure::Corrupt)?;
        let through = meta.summary.as_ref().map_or(0, |s| s.through_seq);
        let unsummarised = meta.message_count.saturating_sub(through) as usize;
        let recent = self.history(session_id, unsummarised)?;
        Ok(Some(SessionState {
            meta,
            recent: recent.into_iter().filter(|m| m.seq > through).collect(),
        }))
    }

    /// The context of a turn: relevant memories, the summary of older turns and the recent
    /// turns within `token_budget` estimated tokens (the configured budget when `None`),
    /// ending with `user_text` as the user's message (it appears once whether or not the
    /// caller appended it to the session first).
    pub fn build_context(
        &self,
        session_id: &str,
        user_text: &str,
        token_budget: Option<usize>,
    ) -> Result<TurnContext, MemoryFailure> {
        let budget = token_budget.unwrap_or(self.settings.context_token_budget);
        let hits = self.search(user_text, self.settings.search_limit);
        let cached = lock(&self.sessions).get(session_id).cloned();
        let state = match cached {
            Some(s) => Some(s),
            None => self.load_session(session_id)?,
        };
        Ok(context::assemble(state.as_ref(), &hits, user_text, budget))
    }

    /// Everything: memories newest first, every conversation with its messages.
    pub fn export(&self) -> Result<MemoryExport, MemoryFailure> {
        let memories = self
            .list(0, usize::MAX)
            .into_iter()
            .map(|r| (*r).clone())
            .collect();
        let mut conversations = Vec::new();
        for session in self.sessions()? {
            let messages = self
                .storage
                .scan_prefix(CONVERSATIONS_TREE, &message_prefix(&session.session_id))?
                .into_iter()
                .map(|(_, v)| decode("message", &v).map_err(MemoryFailure::Corrupt))
                .collect::<Result<_, _>>()?;
            conversations.push(ConversationExport { session, messages });
        }
        Ok(MemoryExport {
            exported_at: crate::hub::unix_now(),
            memories,
            conversations,
        })
    }
}

fn evict_oldest(cache: &mut HashMap<String, SessionState>, n: usize) {
    let mut by_age: Vec<(f64, String)> = cache
        .iter()
        .map(|(k, s)| (s.meta.updated_at, k.clone()))
        .collect();
    by_age.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (_, k) in by_age.into_iter().take(n) {
        cache.remove(&k);
    }
}

fn unexpected(outcome: WriteOutcome) -> MemoryFailure {
    MemoryFailure::Unavailable(format!("unexpected write outcome {outcome:?}"))
}

/// Parses a memory id as users type it (see [`records::MemoryId`]).
pub fn parse_memory_id(text: &str) -> Result<u64, MemoryFailure> {
    text.parse::<records::MemoryId>()
        .map(|id| id.0)
        .map_err(MemoryFailure::Invalid)
}
