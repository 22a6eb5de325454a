//! `coda chat` driven in a pseudo-terminal, as a person would: typing questions and slash
//! commands, multi-line input, Ctrl-C during an answer, Ctrl-D to quit — against a
//! loopback OpenAI-compatible server.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coda_actors::llm::scripted::{Reply, ScriptedServer, Step};
use expectrl::session::OsSession;
use expectrl::{ControlCode, Eof, Expect, Session};
use serde_json::json;

const CODA: &str = env!("CARGO_BIN_EXE_coda");

fn delta(content: &str) -> Vec<u8> {
    format!(
        "data: {}\n\n",
        json!({"choices":[{"index":0,"delta":{"content":content},"finish_reason":null}]})
    )
    .into_bytes()
}

/// Answers `Answer-N.` (N counts chat requests); a question containing "slow" gets one
/// token and then nothing until the client hangs up.
async fn server() -> ScriptedServer {
    let n = Arc::new(AtomicUsize::new(0));
    ScriptedServer::start(move |r| {
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
                vec![Step::Write(delta("Thinking")), Step::Stall],
            );
        }
        let i = n.fetch_add(1, Ordering::SeqCst) + 1;
        Reply::stream(
            "text/event-stream",
            vec![
                Step::Write(delta("Answer")),
                Step::Sleep(Duration::from_millis(10)),
                Step::Write(delta(&format!("-{i}."))),
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
        .current_dir(home);
    let mut s = Session::spawn(c).expect("spawn coda chat in a pty");
    s.set_expect_timeout(Some(Duration::from_secs(30)));
    s
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
    let chats: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.path() == "/v1/chat/completions")
        .map(|r| r.json())
        .collect();
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
    p.send(ControlCode::EndOfTransmission).unwrap();
    p.expect("session summary").unwrap();
    p.expect(Eof).unwrap();
    assert!(exited_ok(&p));
}
