//! Durability under `kill -9`: a child process writes memories and conversation messages
//! through the memory engine (group commits of 1–4 jobs, each acknowledged only after the
//! store's flush) and prints every acknowledged record; the parent kills it with SIGKILL
//! mid-stream, reopens the store and checks every acknowledged record is there, intact.
//!
//! The same store goes through every round, so later rounds also check that earlier
//! crashes left nothing behind that breaks the next open. Rounds: `CODA_KILL9_ROUNDS`
//! (default 20).

#![cfg(unix)]

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coda_actors::llm::ChatRole;
use coda_actors::memory::{
    MemoryEngine, MemorySettings, NewMemory, NewMessage, WriteJob, WriteOutcome,
};
use coda_actors::store::{SledStore, Storage};

const CHILD_ENV: &str = "CODA_KILL9_CHILD_DIR";
const ROUND_ENV: &str = "CODA_KILL9_CHILD_ROUND";

fn open(dir: &Path) -> Arc<MemoryEngine> {
    let storage: Arc<dyn Storage> =
        Arc::new(SledStore::open(dir).expect("store opens after kill -9"));
    Arc::new(MemoryEngine::open(storage, MemorySettings::default()).expect("engine"))
}

fn content(round: u64, i: u64) -> String {
    // Varied sizes, so records straddle sled's pages and segments differently.
    format!(
        "round {round} record {i} {}",
        "payload ".repeat((i % 37) as usize * 7)
    )
    .trim_end()
    .to_string()
}

/// Not a test on its own: the child half of `acknowledged_writes_survive_kill_9`.
#[test]
fn kill9_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let round: u64 = std::env::var(ROUND_ENV)
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let engine = open(Path::new(&dir));
    println!("READY");
    let session = format!("round-{round}");
    let mut i = 0u64;
    // Bounded: the parent kills it long before this.
    while i < 100_000 {
        let n = 1 + (i % 4);
        let mut jobs = Vec::new();
        for k in 0..n {
            let j = i + k;
            jobs.push(if j.is_multiple_of(2) {
                WriteJob::Store(NewMemory {
                    content: content(round, j),
                    tags: vec![format!("r{round}")],
                    source: "kill9".into(),
                    ..Default::default()
                })
            } else {
                WriteJob::Append(NewMessage {
                    session_id: session.clone(),
                    role: ChatRole::User,
                    content: content(round, j),
                    turn_id: Some(format!("t-{j}")),
                    tool_calls: Vec::new(),
                    tool_call_id: None,
                    metadata: serde_json::Value::Null,
                })
            });
        }
        let results = engine.commit(jobs);
        let mut out = String::new();
        for (k, r) in results.into_iter().enumerate() {
            let j = i + k as u64;
            match r {
                Ok(WriteOutcome::Stored(m)) => out.push_str(&format!("ACK M {} {j}\n", m.id)),
                Ok(WriteOutcome::Appended(m)) => out.push_str(&format!("ACK C {} {j}\n", m.seq)),
                other => panic!("unexpected {other:?}"),
            }
        }
        print!("{out}");
        let _ = std::io::Write::flush(&mut std::io::stdout());
        i += n;
    }
}

fn tracing_free_note(round: u64, reopen_and_check: Duration) {
    if std::env::var_os("CODA_KILL9_VERBOSE").is_some() {
        eprintln!("round {round}: reopened and checked in {reopen_and_check:?}");
    }
}

#[derive(Debug)]
enum Acked {
    Memory {
        id: u64,
        round: u64,
        i: u64,
    },
    Message {
        session: String,
        seq: u64,
        round: u64,
        i: u64,
    },
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let rounds: u64 = std::env::var("CODA_KILL9_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    let tmp = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut acked: Vec<Acked> = Vec::new();
    let mut total_acked = 0usize;
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let started = Instant::now();
    for round in 0..rounds {
        // Each store goes through five crashes. (sled's recovery after an unclean stop
        // reads its whole log: opens get slower as a crashed store grows, and one store
        // for all rounds would make this test slow without testing more.)
        let dir = tmp.path().join(format!("store-{}", round / 5));
        if round.is_multiple_of(5) {
            acked.clear();
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let kill_after = 1 + (seed % 150) as usize;
        let extra_delay_us = (seed >> 20) % 3000;

        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "kill9_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_ENV, &dir)
            .env(ROUND_ENV, round.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut lines: Vec<String> = Vec::new();
        let mut line = String::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = 0;
        while seen < kill_after && Instant::now() < deadline {
            line.clear();
            if stdout.read_line(&mut line).expect("child output") == 0 {
                break;
            }
            if line.contains("ACK ") {
                seen += 1;
            }
            lines.push(line.clone());
        }
        // Kill at a varied point: right after an ack, or a little later, mid-write.
        std::thread::sleep(Duration::from_micros(extra_delay_us));
        child.kill().expect("SIGKILL");
        // Whatever the child printed before it died was acknowledged too.
        let mut rest = String::new();
        let _ = stdout.read_to_string(&mut rest);
        lines.extend(rest.lines().map(|l| format!("{l}\n")));
        let status = child.wait().expect("wait");
        let killed_at = Instant::now();
        assert!(
            !status.success(),
            "round {round}: the child must have been killed"
        );
        assert!(
            lines.iter().any(|l| l.contains("READY")),
            "round {round}: the child never opened the store: {lines:?}"
        );

        for l in &lines {
            // The harness may print its own text on the same line before ours.
            let Some(at) = l.find("ACK ") else { continue };
            let parts: Vec<&str> = l[at..].split_whitespace().collect();
            match parts.as_slice() {
                ["ACK", "M", id, i] => acked.push(Acked::Memory {
                    id: id.parse().expect("id"),
                    round,
                    i: i.parse().expect("i"),
                }),
                ["ACK", "C", seq, i] => acked.push(Acked::Message {
                    session: format!("round-{round}"),
                    seq: seq.parse().expect("seq"),
                    round,
                    i: i.parse().expect("i"),
                }),
                _ => {}
            }
        }

        total_acked += lines.iter().filter(|l| l.contains("ACK ")).count();
        // Reopen and check every acknowledged record of every round so far.
        let engine = open(&dir);
        assert_eq!(
            engine.skipped_records(),
            0,
            "round {round}: unreadable records"
        );
        let mut histories = std::collections::HashMap::new();
        for a in &acked {
            match a {
                Acked::Memory { id, round: r, i } => {
                    let m = engine
                        .get(*id)
                        .unwrap_or_else(|| panic!("round {round}: acknowledged memory {id} lost"));
                    assert_eq!(
                        m.content,
                        content(*r, *i),
                        "round {round}: memory {id} changed"
                    );
                    assert_eq!(m.tags, [format!("r{r}")]);
                }
                Acked::Message {
                    session,
                    seq,
                    round: r,
                    i,
                } => {
                    let history = histories
                        .entry(session.clone())
                        .or_insert_with(|| engine.history(session, 100_000).expect("history"));
                    let m = history.iter().find(|m| m.seq == *seq).unwrap_or_else(|| {
                        panic!("round {round}: acknowledged message {session}#{seq} lost")
                    });
                    assert_eq!(m.content, content(*r, *i));
                    assert_eq!(m.turn_id.as_deref(), Some(format!("t-{i}").as_str()));
                }
            }
        }
        tracing_free_note(round, killed_at.elapsed());
        // The session record agrees with its messages (both in one atomic batch).
        let session = format!("round-{round}");
        if let Some(meta) = engine.session(&session).expect("meta") {
            let history = engine.history(&session, 100_000).expect("history");
            assert_eq!(meta.message_count, history.len() as u64, "round {round}");
        }
    }
    eprintln!(
        "kill -9: {rounds} rounds, {total_acked} acknowledged records checked, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        total_acked as u64 >= rounds,
        "every round acknowledged something"
    );
}
