//! `coda memory list|search|add|forget|sessions|export`: the memory store from the command
//! line. It opens the store directly, so it works while `coda serve` is stopped; while a
//! server holds the store it says so clearly (exit code 3) instead of waiting.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Subcommand;
use coda_actors::memory::{parse_memory_id, MemoryEngine, MemoryExport, MemoryRecord, NewMemory};
use coda_actors::store::{SledStore, Storage, StoreError};

use crate::config::Loaded;

/// `coda memory ...`
#[derive(Debug, Subcommand)]
pub enum MemoryCommand {
    /// List long-term memories, newest first.
    List {
        /// Most memories to show (default: memory.default_limit).
        #[arg(long)]
        limit: Option<usize>,
        /// Skip this many newest ones.
        #[arg(long, default_value_t = 0)]
        offset: usize,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Search long-term memories, best match first.
    Search {
        /// What to look for.
        #[arg(required = true, num_args = 1..)]
        query: Vec<String>,
        /// Most results (default: memory.default_limit).
        #[arg(long)]
        limit: Option<usize>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Store a long-term memory.
    Add {
        /// The text to remember.
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
        /// A label (repeat for several).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Delete memories by id, or a whole conversation with --session.
    Forget {
        /// Memory ids (m-...), as `coda memory list` shows them.
        ids: Vec<String>,
        /// Delete this conversation session and all its messages instead.
        #[arg(long, conflicts_with = "ids")]
        session: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// List conversation sessions, most recent first.
    Sessions {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Export every memory and conversation (Markdown; JSON with --json).
    Export {
        /// The whole store as JSON (memories and conversations with every field).
        #[arg(long)]
        json: bool,
        /// Write to this file instead of standard output.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

/// The store is held by a running server (exit code 3, like `coda serve`).
#[derive(Debug, thiserror::Error)]
#[error("{0}\n  `coda memory` needs the store, and a running `coda serve` holds it. Stop the server and run this again (while it runs, clients can use the `memory_search` and `memory_list` WebSocket commands).")]
pub struct StoreInUse(pub StoreError);

fn open(loaded: &Loaded) -> anyhow::Result<MemoryEngine> {
    let dir = loaded.settings.storage_dir();
    let store = match SledStore::open(&dir) {
        Ok(s) => s,
        Err(e @ StoreError::Locked { .. }) => return Err(StoreInUse(e).into()),
        Err(e) => return Err(e.into()),
    };
    let storage: Arc<dyn Storage> = Arc::new(store);
    Ok(MemoryEngine::open(
        storage,
        loaded.settings.memory.engine_settings(),
    )?)
}

/// Runs a memory command.
pub fn run(loaded: &Loaded, cmd: MemoryCommand) -> anyhow::Result<()> {
    let engine = open(loaded)?;
    let default_limit = loaded.settings.memory.default_limit;
    match cmd {
        MemoryCommand::List {
            limit,
            offset,
            json,
        } => {
            let records = engine.list(offset, limit.unwrap_or(default_limit));
            if json {
                let items: Vec<_> = records.iter().map(|r| r.to_item(None)).collect();
                print_json(&serde_json::json!({"total": engine.memory_count(), "items": items}))
            } else if records.is_empty() {
                println!("no memories (add one with `coda memory add TEXT`)");
                Ok(())
            } else {
                print_table(records.iter().map(|r| (&**r, None)));
                println!("{} of {} memories", records.len(), engine.memory_count());
                Ok(())
            }
        }
        MemoryCommand::Search { query, limit, json } => {
            let query = query.join(" ");
            let hits = engine.search(&query, limit.unwrap_or(default_limit));
            if json {
                let items: Vec<_> = hits
                    .iter()
                    .map(|h| h.record.to_item(Some(h.score)))
                    .collect();
                print_json(&serde_json::json!({"query": query, "items": items}))
            } else if hits.is_empty() {
                println!("nothing found for \"{query}\"");
                Ok(())
            } else {
                print_table(hits.iter().map(|h| (&*h.record, Some(h.score))));
                Ok(())
            }
        }
        MemoryCommand::Add { text, tags, json } => {
            let record = engine.store(NewMemory {
                content: text.join(" "),
                tags,
                source: "cli".into(),
                ..Default::default()
            })?;
            if json {
                print_json(&record.to_item(None))
            } else {
                println!("stored {}", record.memory_id());
                Ok(())
            }
        }
        MemoryCommand::Forget { ids, session, json } => {
            if let Some(session) = session {
                let n = engine.forget_session(&session)?;
                if json {
                    return print_json(
                        &serde_json::json!({"session_id": session, "forgotten": n.is_some(), "messages": n}),
                    );
                }
                match n {
                    Some(n) => println!("forgot session {session} ({n} messages)"),
                    None => anyhow::bail!("there is no conversation session named `{session}` (see `coda memory sessions`)"),
                }
                return Ok(());
            }
            if ids.is_empty() {
                anyhow::bail!(
                    "name the memories to forget (ids from `coda memory list`), or --session ID"
                );
            }
            let parsed: Vec<(String, u64)> = ids
                .iter()
                .map(|s| parse_memory_id(s).map(|id| (s.clone(), id)))
                .collect::<Result<_, _>>()?;
            let mut results = Vec::new();
            let mut missing = Vec::new();
            for (text, id) in parsed {
                let gone = engine.forget(id)?;
                if gone.is_none() {
                    missing.push(text.clone());
                }
                results.push(serde_json::json!({"memory_id": text, "forgotten": gone.is_some()}));
                if !json {
                    match gone {
                        Some(r) => {
                            println!("forgot {}: {}", r.memory_id(), one_line(&r.content, 60))
                        }
                        None => eprintln!("no memory {text}"),
                    }
                }
            }
            if json {
                print_json(&serde_json::json!({"results": results}))?;
            }
            if !missing.is_empty() {
                anyhow::bail!(
                    "{} of the ids named no memory: {}",
                    missing.len(),
                    missing.join(", ")
                );
            }
            Ok(())
        }
        MemoryCommand::Sessions { json } => {
            let sessions = engine.sessions()?;
            if json {
                return print_json(&sessions);
            }
            if sessions.is_empty() {
                println!("no conversation sessions");
                return Ok(());
            }
            println!("{:<32} {:>8}  UPDATED", "SESSION", "MESSAGES");
            for s in sessions {
                println!(
                    "{:<32} {:>8}  {}",
                    s.session_id,
                    s.message_count,
                    time(s.updated_at)
                );
            }
            Ok(())
        }
        MemoryCommand::Export { json, output } => {
            let export = engine.export()?;
            let text = if json {
                serde_json::to_string_pretty(&export)? + "\n"
            } else {
                markdown(&export)
            };
            match output {
                Some(path) => {
                    super::write_private(&path, text.as_bytes())
                        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
                    eprintln!(
                        "exported {} memories and {} conversations to {}",
                        export.memories.len(),
                        export.conversations.len(),
                        path.display()
                    );
                    Ok(())
                }
                None => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(text.as_bytes())?;
                    Ok(())
                }
            }
        }
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn print_table<'a>(rows: impl Iterator<Item = (&'a MemoryRecord, Option<f64>)>) {
    for (r, score) in rows {
        let tags = if r.tags.is_empty() {
            String::new()
        } else {
            format!(" [{}]", r.tags.join(", "))
        };
        let score = score.map(|s| format!(" ({s:.2})")).unwrap_or_default();
        println!(
            "{}  {}  {}{tags}{score}",
            r.memory_id(),
            time(r.created_at),
            one_line(&r.content, 70)
        );
    }
}

fn one_line(text: &str, max: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        format!("{}…", flat.chars().take(max - 1).collect::<String>())
    }
}

fn time(unix: f64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(unix.max(0.0)),
    )
    .to_string()
}

/// The export as a readable document.
pub fn markdown(export: &MemoryExport) -> String {
    let mut out = format!(
        "# Coda memory export\n\nExported {}.\n\n## Long-term memories ({})\n\n",
        time(export.exported_at),
        export.memories.len()
    );
    for m in &export.memories {
        let tags = if m.tags.is_empty() {
            String::new()
        } else {
            format!(" _[{}]_", m.tags.join(", "))
        };
        out.push_str(&format!(
            "- {} — {}{tags} (`{}`)\n",
            time(m.created_at),
            m.content,
            m.memory_id()
        ));
    }
    out.push_str(&format!(
        "\n## Conversations ({})\n",
        export.conversations.len()
    ));
    for c in &export.conversations {
        out.push_str(&format!(
            "\n### {} ({} messages)\n\n",
            c.session.session_id,
            c.messages.len()
        ));
        for m in &c.messages {
            let who = match m.role {
                coda_actors::llm::ChatRole::User => "User",
                coda_actors::llm::ChatRole::Assistant => "Assistant",
                coda_actors::llm::ChatRole::System => "System",
                coda_actors::llm::ChatRole::Tool => "Tool",
            };
            out.push_str(&format!("**{who}:** {}\n\n", m.content.trim()));
        }
    }
    out
}
