//! `coda chat` driven in a pseudo-terminal, as a person would: typing questions and slash
//! commands, multi-line input, Ctrl-C during an answer, Ctrl-D to quit — against a
//! loopback OpenAI-compatible server.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coda_actors::llm::scripted::{Reply, ScriptedServer, Step};
use expectrl::session::OsSession;
use expectrl::{ControlCode, Eof, Expect, Session};
use serde_json::json;

const CODA: &str = env!("CARGO_BIN_EXE_coda");

/// Answers `Answer-N.` (N counts chat requests); a question containing "slow" gets one
/// token and then nothing until the client hangs up.
async fn server() -> ScriptedServer {
    let n = Arc::new(AtomicUsize::new(0));
    ScriptedServer::start(move |r| {
        if r.path() != "/v1/chat/completions" {
            return Reply::json(404, r#"{"error":{"message":"not here"}}"#);
        }
        let body = r.json();
        let last = body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_string();
        if last.contains("slow") {
            return Reply::stream(
                "text/event-stream",
                vec![Step::Write(common::sse_delta("Thinking")), Step::Stall],
            );
        }
        let i = n.fetch_add(1, Ordering::SeqCst) + 1;
        Reply::stream(
            "text/event-stream",
            vec![
                Step::Write(common::sse_delta("Answer")),
                Step::Sleep(Duration::from_millis(10)),
                Step::Write(common::sse_delta(&format!("-{i}."))),
                Step::Write(
                    format!(
                        "data: {}\n\ndata: [DONE]\n\n",
                        json!({"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":10*i,"completion_tokens":2}})
                    )
                    .into_bytes(),
                ),
            ],
        )
    })
    .await
    .unwrap()
}

fn spawn(home: &std::path::Path, server: &ScriptedServer, args: &[&str]) -> OsSession {
    spawn_in(home, home, server, args)
}

/// `coda chat` started in `dir`.
fn spawn_in(
    home: &std::path::Path,
    dir: &std::path::Path,
    server: &ScriptedServer,
    args: &[&str],
) -> OsSession {
    let mut c = Command::new(CODA);
    c.arg("chat")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TERM", "xterm")
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("CODA__LLM__PROVIDER", "openai")
        .env(
            "CODA__LLM__OPENAI__BASE_URL",
            format!("{}/v1", server.url()),
        )
        .env("CODA__LLM__OPENAI__MODEL", "test-model")
        .current_dir(dir);
    let mut s = Session::spawn(c).expect("spawn coda chat in a pty");
    s.set_expect_timeout(Some(Duration::from_secs(30)));
    s
}

/// Ctrl-D at the next prompt. Sent before the line editor is back in raw mode, the
/// terminal's cooked mode turns it into an end-of-file mark the editor then reads as a NUL
/// byte, and the chat never sees it — so wait for the prompt, which is drawn in raw mode.
fn ctrl_d(p: &mut OsSession) {
    p.expect("you> ").unwrap();
    p.send(ControlCode::EndOfTransmission).unwrap();
}

/// The chat requests the server got, as JSON, in order.
fn chat_requests(server: &ScriptedServer) -> Vec<serde_json::Value> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.path() == "/v1/chat/completions")
        .map(|r| r.json())
        .collect()
}

fn exited_ok(s: &OsSession) -> bool {
    let status = s.get_process().wait().expect("wait for coda chat");
    format!("{status:?}").ends_with(", 0)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_session_in_a_terminal() {
    let server = server().await;
    let home = tempfile::tempdir().unwrap();
    let mut p = spawn(home.path(), &server, &[]);
    p.expect("mode code").unwrap();
    p.expect("you> ").unwrap();

    p.send_line("hello there").unwrap();
    p.expect("Answer-1.").unwrap();
    p.expect("openai/test-model").unwrap();
    p.expect("you> ").unwrap();

    // Multi-line: a trailing backslash continues the question.
    p.send("first line\\").unwrap();
    p.send("\r").unwrap();
    p.send("second line\r").unwrap();
    p.expect("Answer-2.").unwrap();
    p.expect("you> ").unwrap();

    p.send_line("/mode review").unwrap();
    p.expect("mode: review").unwrap();
    p.send_line("look at this").unwrap();
    p.expect("Answer-3.").unwrap();

    p.send_line("/session save s1").unwrap();
    p.expect("saved session s1").unwrap();
    p.send_line("/session list").unwrap();
    p.expect("s1").unwrap();
    p.expect("6 messages").unwrap();
    p.send_line("/export markdown out.md").unwrap();
    p.expect("exported to out.md").unwrap();
    p.send_line("/model other-model").unwrap();
    p.expect("model: other-model").unwrap();
    p.send_line("/bogus").unwrap();
    p.expect("unknown command /bogus").unwrap();
    p.send_line("/help").unwrap();
    p.expect("/session save").unwrap();

    // Ctrl-C stops an answer; the request is cancelled; the chat goes on. Repeated: a
    // Ctrl-C typed the instant the first token shows was once missed now and then.
    for stop in 1..=3 {
        p.send_line("a slow one").unwrap();
        p.expect("Thinking").unwrap();
        p.send(ControlCode::EndOfText).unwrap();
        p.expect("[stopped]").unwrap();
        assert!(
            server
                .wait_for(Duration::from_secs(10), |s| s.hangups() == stop)
                .await
        );
        p.expect("you> ").unwrap();
    }

    p.send_line("/exit").unwrap();
    p.expect("session summary").unwrap();
    p.expect("openai/test-model").unwrap();
    p.expect(Eof).unwrap();
    assert!(exited_ok(&p));

    // What went over the wire.
    let chats = chat_requests(&server);
    assert_eq!(chats.len(), 6);
    assert!(chats[0]["messages"][0]["content"]
        .as_str()
        .unwrap()
        .contains("senior software engineer"));
    assert_eq!(
        chats[1]["messages"][3]["content"],
        "first line\nsecond line"
    );
    // History carries over, the mode's system prompt changed.
    assert!(chats[2]["messages"][0]["content"]
        .as_str()
        .unwrap()
        .contains("code reviewer"));
    assert_eq!(chats[2]["messages"][2]["content"], "Answer-1.");
    assert!(chats[3..].iter().all(|c| c["model"] == "other-model"));

    let md = std::fs::read_to_string(home.path().join("out.md")).unwrap();
    assert!(
        md.contains("## You\n\nhello there") && md.contains("## Assistant\n\nAnswer-3."),
        "{md}"
    );
    let saved = home.path().join("data/coda/chat-sessions/s1.json");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(saved).unwrap()).unwrap();
    assert_eq!(saved["mode"], "review");
    assert_eq!(saved["messages"].as_array().unwrap().len(), 6);

    // A new chat picks the session up again; Ctrl-D quits.
    let mut p = spawn(home.path(), &server, &["--session", "s1"]);
    p.expect("you> ").unwrap();
    p.send_line("/session").unwrap();
    p.expect("session: s1 (6 messages)").unwrap();
    p.send_line("/mode").unwrap();
    p.expect("mode: review").unwrap();
    ctrl_d(&mut p);
    p.expect("session summary").unwrap();
    p.expect(Eof).unwrap();
    assert!(exited_ok(&p));
}

fn stop(usage: (u32, u32)) -> Vec<u8> {
    format!(
        "data: {}\n\ndata: [DONE]\n\n",
        json!({"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":usage.0,"completion_tokens":usage.1}})
    )
    .into_bytes()
}

/// A streamed answer that is one tool call.
fn tool_call(id: &str, name: &str, args: serde_json::Value) -> Reply {
    Reply::stream(
        "text/event-stream",
        vec![Step::Write(common::sse_tool_call(id, name, &args))],
    )
}

fn text(answer: &str) -> Reply {
    Reply::stream(
        "text/event-stream",
        vec![
            Step::Write(common::sse_delta(answer)),
            Step::Write(stop((5, 3))),
        ],
    )
}

fn git(dir: &std::path::Path, home: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("HOME", home)
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tool_names(request: &serde_json::Value) -> Vec<String> {
    request["tools"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|t| t["function"]["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The model (a scripted OpenAI-compatible server) reads a file, edits it, looks at the
/// diff and tries to commit; the person allows the edit at the prompt and refuses the
/// commit. Then `/tools`, a mode that offers only reading, `/undo`, `/tools off`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_reads_edits_and_asks_before_committing() {
    let home = tempfile::tempdir().unwrap();
    let proj = home.path().join("proj");
    std::fs::create_dir_all(proj.join("src")).unwrap();
    std::fs::write(
        home.path().join(".gitconfig"),
        "[user]\n\tname = Test\n\temail = test@example.com\n",
    )
    .unwrap();
    std::fs::write(proj.join("Cargo.toml"), "[package]\nname = \"greet\"\n").unwrap();
    std::fs::write(
        proj.join("src/lib.rs"),
        "/// Says hello.\npub fn greet() -> &'static str {\n    \"helo\"\n}\n",
    )
    .unwrap();
    git(&proj, home.path(), &["init", "-q"]);
    git(&proj, home.path(), &["add", "."]);
    git(&proj, home.path(), &["commit", "-qm", "start"]);

    let server = ScriptedServer::start(|r| {
        let body = r.json();
        let msgs = body["messages"].as_array().cloned().unwrap_or_default();
        let last_user = msgs
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_string();
        if !last_user.starts_with("fix the typo") {
            return text("Nothing to do.");
        }
        let results = msgs.iter().filter(|m| m["role"] == "tool").count();
        match results {
            0 => tool_call("c1", "read_file", json!({"path": "src/lib.rs"})),
            1 => tool_call(
                "c2",
                "edit_file",
                json!({"path": "src/lib.rs", "edits": [{"search": "\"helo\"", "replace": "\"hello\""}]}),
            ),
            2 => tool_call("c3", "vcs_diff", json!({})),
            3 => tool_call("c4", "vcs_commit", json!({"message": "Fix the greeting"})),
            _ => text("Fixed, not committed."),
        }
    })
    .await
    .unwrap();
    let mut p = spawn_in(home.path(), &proj, &server, &[]);
    p.expect("git · map").unwrap();
    p.expect("you> ").unwrap();

    p.send_line("fix the typo in @src/lib.rs please").unwrap();
    p.expect("attached src/lib.rs (lines 1–4 of 4)").unwrap();
    p.expect("⚙ read_file").unwrap();
    p.expect("→ read src/lib.rs lines 1–4").unwrap();
    p.expect("⚙ edit_file").unwrap();
    p.expect("+    \"hello\"").unwrap();
    p.expect("allow edit_file? [y]es, [n]o, [a]lways this session: ")
        .unwrap();
    p.send_line("y").unwrap();
    p.expect("⚙ vcs_diff").unwrap();
    p.expect("⚙ vcs_commit").unwrap();
    p.expect("allow vcs_commit? [y]es, [n]o: ").unwrap();
    p.send_line("n").unwrap();
    p.expect("not allowed").unwrap();
    p.expect("Fixed, not committed.").unwrap();
    p.expect("you> ").unwrap();
    let lib = std::fs::read_to_string(proj.join("src/lib.rs")).unwrap();
    assert!(lib.contains("\"hello\""), "{lib}");
    assert_eq!(
        git(&proj, home.path(), &["rev-list", "--count", "HEAD"]).trim(),
        "1"
    );

    p.send_line("/tools").unwrap();
    p.expect("vcs_commit").unwrap();
    p.expect("you> ").unwrap();
    p.send_line("/mode explain").unwrap();
    p.expect("mode: explain").unwrap();
    p.send_line("/tools").unwrap();
    p.expect("edit_file").unwrap();
    p.expect("not in this mode").unwrap();
    p.expect("you> ").unwrap();
    p.send_line("what does it do").unwrap();
    p.expect("Nothing to do.").unwrap();
    p.send_line("/undo").unwrap();
    p.expect("src/lib.rs").unwrap();
    p.expect("you> ").unwrap();
    assert!(std::fs::read_to_string(proj.join("src/lib.rs"))
        .unwrap()
        .contains("\"helo\""));
    p.send_line("/tools off").unwrap();
    p.expect("all tools off").unwrap();
    p.send_line("and now").unwrap();
    p.expect("Nothing to do.").unwrap();
    p.send_line("/tools on nosuchtool").unwrap();
    p.expect("no tool named `nosuchtool`").unwrap();
    ctrl_d(&mut p);
    p.expect("session summary").unwrap();
    p.expect(Eof).unwrap();
    assert!(exited_ok(&p));

    let chats = chat_requests(&server);
    assert_eq!(chats.len(), 7, "{chats:#?}");
    let first = &chats[0];
    let offered = tool_names(first);
    for t in [
        "read_file",
        "edit_file",
        "run_command",
        "vcs_diff",
        "vcs_commit",
    ] {
        assert!(offered.contains(&t.to_string()), "{t} not in {offered:?}");
    }
    let last = |c: &serde_json::Value| c["messages"].as_array().unwrap().last().unwrap().clone();
    // The attachment went with the question, fenced.
    let asked = last(first)["content"].as_str().unwrap().to_string();
    assert!(
        asked.contains("File src/lib.rs (lines 1–4 of 4):\n```\n/// Says hello."),
        "{asked}"
    );
    // Each call's result went back to the model under its call id.
    assert_eq!(last(&chats[1])["tool_call_id"], "c1");
    assert!(last(&chats[1])["content"]
        .as_str()
        .unwrap()
        .contains("helo"));
    assert!(last(&chats[2])["content"].as_str().unwrap().contains("+++"));
    assert!(last(&chats[3])["content"]
        .as_str()
        .unwrap()
        .contains("+    \\\"hello\\\""));
    let refusal: serde_json::Value =
        serde_json::from_str(last(&chats[4])["content"].as_str().unwrap()).unwrap();
    assert_eq!(refusal["error"], "refused");
    // Explain mode offers reading, not writing; with the tools off, none.
    let explain = tool_names(&chats[5]);
    assert!(explain.contains(&"read_file".to_string()), "{explain:?}");
    assert!(!explain
        .iter()
        .any(|t| t == "edit_file" || t == "run_command" || t == "vcs_commit"));
    assert!(chats[6].get("tools").is_none(), "{:?}", chats[6]["tools"]);
}

/// Past three quarters of the window (`--context-tokens`), older turns are summarised by
/// the model and replaced by the notes; the latest two turns are kept whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_conversations_are_compacted_into_notes() {
    let server = ScriptedServer::start(|r| {
        let body = r.json();
        let system = body["messages"][0]["content"].as_str().unwrap_or_default();
        if system.contains("condense a conversation") {
            return text("NOTES: the user is planning a trip to Oslo.");
        }
        text(&"Sure. ".repeat(40))
    })
    .await
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    let mut p = spawn(
        home.path(),
        &server,
        &["--context-tokens", "600", "--no-tools"],
    );
    p.expect("you> ").unwrap();
    p.send_line("/compact").unwrap();
    p.expect("nothing to compact yet").unwrap();
    for i in 1..=4 {
        p.send_line(format!(
            "question {i}: {}",
            "tell me about Oslo ".repeat(12)
        ))
        .unwrap();
        p.expect("Sure.").unwrap();
        p.expect("you> ").unwrap();
    }
    p.send_line("/session save long").unwrap();
    p.expect("saved session long").unwrap();
    ctrl_d(&mut p);
    p.expect(Eof).unwrap();
    assert!(exited_ok(&p));

    let chats = chat_requests(&server);
    let summaries: Vec<usize> = chats
        .iter()
        .enumerate()
        .filter(|(_, c)| {
            c["messages"][0]["content"]
                .as_str()
                .unwrap_or_default()
                .contains("condense a conversation")
        })
        .map(|(i, _)| i)
        .collect();
    assert!(
        !summaries.is_empty(),
        "never compacted: {} requests",
        chats.len()
    );
    let after = &chats[summaries[0] + 1];
    let system = after["messages"][0]["content"].as_str().unwrap();
    assert!(
        system.contains("NOTES: the user is planning a trip to Oslo."),
        "{system}"
    );
    let users = after["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .count();
    assert_eq!(users, 2, "{after:#?}");
    // The summariser saw the first question, which the kept turns no longer carry.
    let asked = chats[summaries[0]]["messages"][1]["content"]
        .as_str()
        .unwrap();
    assert!(asked.contains("question 1"), "{asked}");
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(home.path().join("data/coda/chat-sessions/long.json")).unwrap(),
    )
    .unwrap();
    assert!(saved["summary"].as_str().unwrap().contains("Oslo"));
}

/// `/usage` and the end summary price the provider's counts at `[llm.prices]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_priced_from_the_config() {
    let server = server().await;
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("config/coda");
    std::fs::create_dir_all(&config).unwrap();
    // One unit per prompt token, generated tokens free: the cost is the prompt count.
    std::fs::write(
        config.join("config.toml"),
        "[llm.prices.\"test-model\"]\ninput_per_mtok = 1000000.0\noutput_per_mtok = 0.0\ncurrency = \"EUR\"\n",
    )
    .unwrap();
    let mut p = spawn(home.path(), &server, &[]);
    p.expect("you> ").unwrap();
    p.send_line("hello").unwrap();
    p.expect("Answer-1.").unwrap();
    p.expect("you> ").unwrap();
    // The scripted server reported 10 prompt tokens for the first answer.
    p.send_line("/usage").unwrap();
    p.expect("10.000000 EUR").unwrap();
    p.expect("you> ").unwrap();
    p.send_line("again").unwrap();
    p.expect("Answer-2.").unwrap();
    p.expect("you> ").unwrap();
    p.send_line("/exit").unwrap();
    p.expect("session summary").unwrap();
    // 10 + 20 prompt tokens.
    p.expect("30.000000 EUR").unwrap();
    p.expect(Eof).unwrap();
    assert!(exited_ok(&p));
}
