//! Memory room tests, on real sled stores in temp directories.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use serde_json::Value;

use super::*;
use crate::hub::{
    EventHub, HubDelivery, HubHandle, HubSettings, Register, StartAt, Subscribe, TypeMask,
};
use crate::llm::ChatRole;
use crate::store::{SledStore, Storage};

fn open_engine(dir: &Path, settings: MemorySettings) -> Arc<MemoryEngine> {
    // A store this test just dropped may still be held for a moment by the previous
    // actor's writer thread (it lets go of its engine when it exits): wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let store = loop {
        match SledStore::open(dir) {
            Err(crate::store::StoreError::Locked { .. })
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            other => break other.expect("open store"),
        }
    };
    let storage: Arc<dyn Storage> = Arc::new(store);
    Arc::new(MemoryEngine::open(storage, settings).expect("open engine"))
}

fn new_memory(content: &str, tags: &[&str]) -> NewMemory {
    NewMemory {
        content: content.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        source: "test".into(),
        ..Default::default()
    }
}

fn message(session: &str, role: ChatRole, content: &str) -> NewMessage {
    NewMessage {
        session_id: session.into(),
        role,
        content: content.into(),
        turn_id: None,
        tool_calls: Vec::new(),
        tool_call_id: None,
        metadata: Value::Null,
    }
}

#[test]
fn memories_store_search_list_forget_and_survive_reopen() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("store");
    let (tea, anna) = {
        let engine = open_engine(&dir, MemorySettings::default());
        let tea = engine
            .store(NewMemory {
                turn_id: Some("t-1".into()),
                session_id: Some("cli-01".into()),
                importance: Some(0.7),
                ..new_memory(
                    "The user prefers green tea",
                    &["Preference", "preference", " drinks "],
                )
            })
            .expect("store");
        assert_eq!(
            tea.tags,
            ["preference", "drinks"],
            "trimmed, lower-cased, de-duplicated"
        );
        let anna = engine
            .store(new_memory("The user's sister is called Anna", &["family"]))
            .expect("store");
        engine
            .store(new_memory("Dentist on Friday at 10", &[]))
            .expect("store");
        assert!(anna.id > tea.id, "ids grow");
        (tea, anna)
    };
    let engine = open_engine(&dir, MemorySettings::default());
    assert_eq!(engine.memory_count(), 3);
    let got = engine.get(tea.id).expect("tea survives");
    assert_eq!(
        *got, *tea,
        "every field survives: text, tags, source turn, time"
    );
    assert_eq!(got.turn_id.as_deref(), Some("t-1"));

    let hits = engine.search("what tea does the user like?", 5);
    assert_eq!(hits[0].record.id, tea.id, "the rare word wins");
    assert!(hits.iter().all(|h| h.record.content.contains("user")));
    assert_eq!(engine.search("family", 5)[0].record.id, anna.id);

    let listed: Vec<u64> = engine.list(0, 10).iter().map(|r| r.id).collect();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[1], anna.id, "newest first");

    assert_eq!(
        engine.forget(anna.id).expect("forget").map(|r| r.id),
        Some(anna.id)
    );
    assert_eq!(engine.forget(anna.id).expect("forget again"), None);
    drop(engine);
    let engine = open_engine(&dir, MemorySettings::default());
    assert_eq!(engine.memory_count(), 2, "the deletion is durable");
    assert!(engine.search("Anna", 5).is_empty());
    // New ids stay above every id seen, also after a restart.
    let next = engine.store(new_memory("later", &[])).expect("store");
    assert!(next.id > anna.id);
}

#[test]
fn invalid_memories_are_refused() {
    let engine = {
        let storage: Arc<dyn Storage> = Arc::new(SledStore::temporary().expect("tmp"));
        MemoryEngine::open(storage, MemorySettings::default()).expect("engine")
    };
    for bad in [
        new_memory("   ", &[]),
        new_memory(&"x".repeat(4001), &[]),
        new_memory("ok", &[&"t".repeat(65)]),
        NewMemory {
            importance: Some(1.5),
            ..new_memory("ok", &[])
        },
        NewMemory {
            session_id: Some("a\0b".into()),
            ..new_memory("ok", &[])
        },
    ] {
        let e = engine.store(bad).expect_err("refused");
        assert_eq!(e.code(), "invalid", "{e}");
    }
    let many: Vec<String> = (0..17).map(|i| format!("t{i}")).collect();
    let e = engine
        .store(NewMemory {
            tags: many,
            ..new_memory("ok", &[])
        })
        .expect_err("too many tags");
    assert_eq!(e.code(), "invalid");
    assert_eq!(engine.memory_count(), 0);
}

#[test]
fn group_commit_answers_each_job_and_fails_invalid_ones_alone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let engine = open_engine(&tmp.path().join("store"), MemorySettings::default());
    let results = engine.commit(vec![
        WriteJob::Store(new_memory("one", &[])),
        WriteJob::Store(new_memory("", &[])),
        WriteJob::Append(message("s", ChatRole::User, "hello")),
        WriteJob::Append(message("s", ChatRole::Assistant, "hi there")),
        WriteJob::Forget(12345),
    ]);
    assert_eq!(results.len(), 5);
    assert!(matches!(results[0], Ok(WriteOutcome::Stored(_))));
    assert!(matches!(results[1], Err(MemoryFailure::Invalid(_))));
    match (&results[2], &results[3]) {
        (Ok(WriteOutcome::Appended(a)), Ok(WriteOutcome::Appended(b))) => {
            assert_eq!((a.seq, b.seq), (1, 2), "in order within one group");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(results[4], Ok(WriteOutcome::Forgotten(None))));
    let history = engine.history("s", 10).expect("history");
    assert_eq!(history.len(), 2);
}

#[test]
fn conversations_persist_with_summary_and_build_context() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("store");
    let settings = MemorySettings {
        recent_turns: 2,
        ..MemorySettings::default()
    };
    {
        let engine = open_engine(&dir, settings.clone());
        engine
            .store(new_memory("The user's cat is named Miso", &["pets"]))
            .expect("store");
        for turn in 1..=4 {
            let user = engine
                .append(NewMessage {
                    turn_id: Some(format!("t-{turn}")),
                    metadata: serde_json::json!({"source": "text"}),
                    ..message(
                        "cli-01",
                        ChatRole::User,
                        &format!("Question number {turn}. Details."),
                    )
                })
                .expect("append");
            assert_eq!(user.seq, turn * 2 - 1);
            engine
                .append(message(
                    "cli-01",
                    ChatRole::Assistant,
                    &format!("Answer number {turn}."),
                ))
                .expect("append");
        }
        engine
            .append(message("other", ChatRole::User, "unrelated"))
            .expect("append");
    }
    // Reopened: the session's state comes from disk, not from a cache.
    let engine = open_engine(&dir, settings);
    let meta = engine.session("cli-01").expect("meta").expect("exists");
    assert_eq!(meta.message_count, 8);
    let summary = meta.summary.expect("summary of older turns");
    assert_eq!(summary.through_seq, 4);
    assert_eq!(summary.lines[0], "User: Question number 1.");

    let history = engine.history("cli-01", 100).expect("history");
    assert_eq!(history.len(), 8, "summarised messages stay stored");
    assert_eq!(history[0].metadata["source"], "text");
    assert_eq!(history[0].turn_id.as_deref(), Some("t-1"));

    let ctx = engine
        .build_context("cli-01", "What is my cat called?", Some(2000))
        .expect("context");
    let texts: Vec<&str> = ctx.messages.iter().map(|m| m.content.as_str()).collect();
    assert!(texts[0].contains("Miso"), "memories first: {texts:?}");
    assert!(
        texts[1].contains("Question number 2."),
        "then the summary: {texts:?}"
    );
    assert_eq!(
        &texts[2..],
        [
            "Question number 3. Details.",
            "Answer number 3.",
            "Question number 4. Details.",
            "Answer number 4.",
            "What is my cat called?"
        ]
    );
    assert_eq!(ctx.memories.len(), 1);
    assert!(ctx.summary_included);

    let sessions: Vec<String> = engine
        .sessions()
        .expect("sessions")
        .into_iter()
        .map(|s| s.session_id)
        .collect();
    assert_eq!(sessions, ["other", "cli-01"], "most recently updated first");

    let export = engine.export().expect("export");
    assert_eq!(export.memories.len(), 1);
    assert_eq!(export.conversations.len(), 2);

    assert_eq!(engine.forget_session("cli-01").expect("forget"), Some(8));
    assert_eq!(engine.forget_session("cli-01").expect("again"), None);
    assert!(engine.history("cli-01", 10).expect("history").is_empty());
    // A forgotten session starts again from 1.
    let m = engine
        .append(message("cli-01", ChatRole::User, "fresh start"))
        .expect("append");
    assert_eq!(m.seq, 1);
}

// ---------------------------------------------------------------------------------------
// The actor
// ---------------------------------------------------------------------------------------

/// Collects every event the hub publishes, as JSON.
struct Sink {
    seen: Arc<Mutex<Vec<Value>>>,
}

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Handler<HubDelivery> for Sink {
    type Result = ();
    fn handle(&mut self, msg: HubDelivery, _: &mut Context<Self>) {
        for e in msg.live() {
            if let Ok(v) = serde_json::from_str(&e.json) {
                if let Ok(mut seen) = self.seen.lock() {
                    seen.push(v);
                }
            }
        }
    }
}

/// A hub with a sink subscribed to every type.
async fn hub_with_sink() -> (HubHandle, Arc<Mutex<Vec<Value>>>) {
    let hub = EventHub::start_hub(HubSettings::default());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Sink { seen: seen.clone() }.start();
    hub.addr()
        .send(Register {
            client_id: 1,
            recipient: sink.recipient(),
        })
        .await
        .expect("register");
    hub.addr()
        .send(Subscribe {
            client_id: 1,
            mask: TypeMask::ALL,
            start: StartAt::Live,
        })
        .await
        .expect("subscribe");
    (hub, seen)
}

/// Waits (bounded) until `pred` holds for the events seen.
async fn wait_for(seen: &Arc<Mutex<Vec<Value>>>, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    for _ in 0..200 {
        let now = seen.lock().map(|s| s.clone()).unwrap_or_default();
        if pred(&now) {
            return now;
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "events never arrived: {:?}",
        seen.lock().map(|s| s.clone()).unwrap_or_default()
    );
}

fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == t).collect()
}

#[actix_rt::test]
async fn actor_stores_searches_and_publishes_events() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let engine = open_engine(&tmp.path().join("store"), MemorySettings::default());
    let (hub, seen) = hub_with_sink().await;
    let memory = MemoryActor::new(engine, Some(hub)).expect("actor").start();

    let item = memory
        .send(Store {
            content: "The user prefers green tea".into(),
            tags: vec!["preference".into()],
            session_id: Some("cli-01".into()),
            turn_id: Some("t-1".into()),
            source: "user".into(),
            importance: Some(0.7),
        })
        .await
        .expect("mailbox")
        .expect("stored");
    assert!(item.memory_id.starts_with("m-"));

    let found = memory
        .send(Search {
            query: "tea".into(),
            limit: Some(5),
            session_id: Some("cli-01".into()),
            turn_id: Some("t-2".into()),
        })
        .await
        .expect("mailbox")
        .expect("search");
    assert_eq!(found.items.len(), 1);
    assert_eq!(found.items[0].memory_id, item.memory_id);
    assert!(found.items[0].score.is_some_and(|s| s > 0.0));

    // The WebSocket command entry points.
    let q = coda_protocol::MemoryQuery {
        query: Some("green".into()),
        limit: None,
    };
    let via_cmd = memory
        .send(Search::from_query(&q))
        .await
        .expect("mailbox")
        .expect("ok");
    assert_eq!(via_cmd.items.len(), 1);
    let listed = memory
        .send(List::from_query(&q))
        .await
        .expect("mailbox")
        .expect("ok");
    assert_eq!(listed.items.len(), 1);
    let bad = memory
        .send(List {
            limit: Some(0),
            offset: 0,
        })
        .await
        .expect("mailbox");
    assert_eq!(bad.expect_err("limit 0").code(), "invalid");

    // An invalid store inside a turn is reported.
    let err = memory
        .send(Store {
            content: String::new(),
            session_id: Some("cli-01".into()),
            turn_id: Some("t-3".into()),
            ..Default::default()
        })
        .await
        .expect("mailbox")
        .expect_err("empty");
    assert_eq!(err.code(), "invalid");

    let events = wait_for(&seen, |e| {
        !of_type(e, "memory_store").is_empty()
            && !of_type(e, "memory_retrieve").is_empty()
            && !of_type(e, "memory_error").is_empty()
    })
    .await;
    let stored = of_type(&events, "memory_store")[0];
    assert_eq!(stored["session_id"], "cli-01");
    assert_eq!(stored["data"]["memory_id"], item.memory_id.as_str());
    assert_eq!(stored["data"]["turn_id"], "t-1");
    assert_eq!(stored["data"]["tags"][0], "preference");
    let retrieved = of_type(&events, "memory_retrieve");
    assert_eq!(
        retrieved.len(),
        1,
        "only the search on behalf of a session publishes"
    );
    assert_eq!(retrieved[0]["data"]["turn_id"], "t-2");
    assert_eq!(
        retrieved[0]["data"]["results"][0]["memory_id"],
        item.memory_id.as_str()
    );
    let error = of_type(&events, "memory_error")[0];
    assert_eq!(error["data"]["code"], "invalid");
    assert_eq!(error["data"]["turn_id"], "t-3");

    assert!(memory
        .send(Forget {
            memory_id: item.memory_id.clone()
        })
        .await
        .expect("mailbox")
        .expect("forget"));
    let e = memory
        .send(Forget {
            memory_id: "not-an-id".into(),
        })
        .await
        .expect("mailbox")
        .expect_err("bad id");
    assert_eq!(e.code(), "invalid");
    let stats = memory.send(Stats).await.expect("mailbox");
    assert_eq!(stats.memories, 0);
}

#[actix_rt::test]
async fn appends_keep_send_order_and_context_publishes_retrieve() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let engine = open_engine(&tmp.path().join("store"), MemorySettings::default());
    engine
        .store(new_memory("The user lives in Lisbon", &["home"]))
        .expect("store");
    let (hub, seen) = hub_with_sink().await;
    let memory = MemoryActor::new(engine, Some(hub)).expect("actor").start();

    // Fired without waiting: the writer must keep the order they were sent in.
    let pending: Vec<_> = (0..60)
        .map(|i| {
            let role = if i % 2 == 0 {
                ChatRole::User
            } else {
                ChatRole::Assistant
            };
            memory.send(AppendMessage::text(
                "s-1",
                role,
                format!("message {i}"),
                None,
            ))
        })
        .collect();
    for (i, p) in pending.into_iter().enumerate() {
        let appended = p.await.expect("mailbox").expect("appended");
        assert_eq!(appended.seq, i as u64 + 1);
        assert_eq!(appended.message_id, format!("s-1#{}", i + 1));
    }
    let history = memory
        .send(History {
            session_id: "s-1".into(),
            limit: 1000,
        })
        .await
        .expect("mailbox")
        .expect("history");
    let contents: Vec<String> = history.iter().map(|m| m.content.clone()).collect();
    let expected: Vec<String> = (0..60).map(|i| format!("message {i}")).collect();
    assert_eq!(contents, expected);

    let ctx = memory
        .send(BuildContext {
            session_id: "s-1".into(),
            user_text: "Where do I live?".into(),
            token_budget: Some(500),
            turn_id: Some("t-9".into()),
        })
        .await
        .expect("mailbox")
        .expect("context");
    assert!(ctx.messages[0].content.contains("Lisbon"));
    assert_eq!(
        ctx.messages.last().map(|m| m.content.as_str()),
        Some("Where do I live?")
    );
    assert!(ctx.estimated_tokens <= 500);

    let events = wait_for(&seen, |e| !of_type(e, "memory_retrieve").is_empty()).await;
    let r = of_type(&events, "memory_retrieve")[0];
    assert_eq!(r["session_id"], "s-1");
    assert_eq!(r["data"]["query"], "Where do I live?");
    assert_eq!(
        r["data"]["results"][0]["content"],
        "The user lives in Lisbon"
    );

    let sessions = memory
        .send(Sessions)
        .await
        .expect("mailbox")
        .expect("sessions");
    assert_eq!(sessions.len(), 1);
    let n = memory
        .send(ForgetSession {
            session_id: "s-1".into(),
        })
        .await
        .expect("mailbox")
        .expect("forget");
    assert_eq!(n, Some(60));
    let bad = memory
        .send(AppendMessage::text("system", ChatRole::User, "x", None))
        .await
        .expect("mailbox");
    assert_eq!(bad.expect_err("reserved").code(), "invalid");
}

#[test]
fn a_full_writer_queue_refuses_at_once_and_counts_it() {
    let counters = Arc::new(crate::hub::HubCounters::default());
    // No thread drains this queue of one.
    let (tx, _rx) = std::sync::mpsc::sync_channel(1);
    let writer = Writer {
        tx,
        counters: Some(counters.clone()),
    };
    let write = || {
        let msg: NewMessage = serde_json::from_value(serde_json::json!({
            "session_id": "s", "role": "user", "content": "hi"
        }))
        .expect("a message");
        PendingWrite {
            job: WriteJob::Append(msg),
            reply: tokio::sync::oneshot::channel().0,
        }
    };
    writer.enqueue(write()).expect("room for one");
    let e = writer.enqueue(write()).expect_err("full");
    assert_eq!(e.code(), "unavailable");
    assert!(e.to_string().contains("waiting for the disk"), "{e}");
    let refused = counters.snapshot(0).refusals;
    assert!(
        refused.contains(&(crate::hub::Refusal::MemoryWrite, 1)),
        "{refused:?}"
    );
}
