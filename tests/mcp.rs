//! MCP both ways against servers and clients nobody here wrote, installed by
//! scripts/setup: the reference "everything" server (npm; stdio and streamable HTTP),
//! mcp-server-time (PyPI), and the Python `mcp` SDK's client driving Coda's own server
//! (`coda mcp serve` on stdio, `/mcp` on `coda serve`), plus the rmcp client.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn everything() -> Option<PathBuf> {
    setup_tool(
        "mcp-everything/node_modules/@modelcontextprotocol/server-everything/dist/index.js",
        "CODA_REQUIRE_MCP",
    )
}

fn python_mcp() -> Option<PathBuf> {
    setup_tool("mcp-python/mcp", "CODA_REQUIRE_MCP").and_then(|p| p.parent().map(Path::to_path_buf))
}

fn write_config(home: &Home, toml: &str) {
    let dir = home.config_dir().join("coda");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("config.toml"), toml).expect("write config");
}

fn stdio_config(name: &str, index_js: &Path) -> String {
    format!(
        "[mcp.servers.{name}]\ncommand = \"node\"\nargs = [\"{}\", \"stdio\"]\n",
        index_js.display()
    )
}

fn json_of(out: &Output) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"))
}

/// The stdio server: `coda mcp list` starts it and counts its tools, `coda mcp tools` shows
/// them with the permission their annotations give, and a call goes through `coda tools`.
#[test]
fn the_everything_server_over_stdio() {
    let Some(index) = everything() else { return };
    let home = Home::new();
    write_config(&home, &stdio_config("everything", &index));

    let out = home.run(&["mcp", "list", "--json"], &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let list = json_of(&out);
    assert_eq!(list[0]["name"], "everything");
    assert_eq!(list[0]["state"], "ok", "{list:#}");
    assert!(list[0]["tools"].as_u64().unwrap() >= 5, "{list:#}");

    let out = home.run(&["mcp", "tools", "everything", "--json"], &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let tools = json_of(&out);
    let perm = |name: &str| {
        tools
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .map(|t| t["permission"].clone())
    };
    // echo says it is read-only; toggle-simulated-logging says nothing of the kind.
    assert_eq!(perm("everything__echo"), Some(json!("safe")), "{tools:#}");
    assert_eq!(
        perm("everything__toggle-simulated-logging"),
        Some(json!("ask")),
        "{tools:#}"
    );

    let out = home.run(
        &[
            "tools",
            "call",
            "everything__echo",
            "--args",
            r#"{"message":"hello from coda"}"#,
        ],
        &[],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(json_of(&out)["text"], "Echo: hello from coda");

    // The server checks arguments too: a wrong type is refused before it runs.
    let out = home.run(
        &[
            "tools",
            "call",
            "everything__echo",
            "--args",
            r#"{"message":5}"#,
        ],
        &[],
    );
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("invalid arguments"), "{out:?}");

    // A server that cannot start is named, and the others are not held up.
    write_config(
        &home,
        &format!(
            "{}[mcp.servers.broken]\ncommand = \"/nonexistent/mcp-server\"\n",
            stdio_config("everything", &index)
        ),
    );
    let out = home.run(&["mcp", "list"], &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains("broken") && out.stdout.contains("cannot start"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("everything") && out.stdout.contains(" ok "),
        "{out:?}"
    );
}

/// The same server over streamable HTTP on a loopback port.
#[test]
fn the_everything_server_over_streamable_http() {
    let Some(index) = everything() else { return };
    let port = free_port();
    let mut server = Command::new("node")
        .arg(&index)
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("node runs");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "server-everything did not listen"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let home = Home::new();
    write_config(
        &home,
        &format!("[mcp.servers.web]\nurl = \"http://127.0.0.1:{port}/mcp\"\n"),
    );
    let out = home.run(
        &[
            "tools",
            "call",
            "web__get-sum",
            "--args",
            r#"{"a":2,"b":40}"#,
        ],
        &[],
    );
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        json_of(&out)["text"].as_str().unwrap().contains("42"),
        "{out:?}"
    );
}

/// `mcp-server-time` (Python): its tools are read-only, so they run when called.
#[test]
fn mcp_server_time_from_pypi() {
    let Some(py) = python_mcp() else { return };
    let home = Home::new();
    write_config(
        &home,
        &format!(
            "[mcp.servers.time]\ncommand = \"python3\"\nargs = [\"-m\", \"mcp_server_time\", \"--local-timezone\", \"UTC\"]\nenv = {{ PYTHONPATH = \"{}\" }}\n",
            py.display()
        ),
    );
    let out = home.run(
        &[
            "tools",
            "call",
            "time__convert_time",
            "--args",
            r#"{"source_timezone":"UTC","time":"12:00","target_timezone":"Asia/Tokyo"}"#,
        ],
        &[],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let v = json_of(&out);
    assert_eq!(
        v["structured"]["target"]["datetime"]
            .as_str()
            .map(|d| &d[11..16]),
        Some("21:00"),
        "{v:#}"
    );
}

/// Pids of the processes whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(c.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    out
}

/// The server-everything program `coda serve` (`pid`) runs.
fn everything_child(pid: u32) -> Option<u32> {
    children(pid).into_iter().find(|p| {
        std::fs::read_to_string(format!("/proc/{p}/cmdline"))
            .is_ok_and(|c| c.contains("server-everything"))
    })
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// In `coda serve`: `mcp_status` says the server is ready with its tools; its
/// `list_changed` (it adds a tool once it knows Coda offers roots) lists them again; when
/// its program dies it is restarted; when Coda stops, the program goes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coda_serve_runs_supervises_and_stops_the_servers() {
    let Some(index) = everything() else { return };
    let home = Home::new();
    write_config(&home, &stdio_config("everything", &index));
    let mut server = Server::start_in(home.clone(), &[], &[]);
    let mut c = server.client().await;
    c.hello(json!({})).await;
    let mut ready = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready.len() < 2 && Instant::now() < deadline {
        let e = c.wait_type("mcp_status", Duration::from_secs(30)).await;
        if e["data"]["state"] == "ready" {
            ready.push(e["data"].clone());
        }
    }
    assert_eq!(ready.len(), 2, "{ready:#?}");
    assert_eq!(ready[0]["reason"], "connected");
    assert!(ready[0]["tools"]
        .as_array()
        .unwrap()
        .contains(&json!("everything__echo")));
    // The server registers get-roots-list when it sees that Coda offers roots, and says
    // so with list_changed (it may come before or after the first listing): the tools are
    // listed again.
    assert_eq!(ready[1]["reason"], "list_changed");
    assert!(ready[1]["tools"]
        .as_array()
        .unwrap()
        .contains(&json!("everything__get-roots-list")));

    // Its program dies: restarted, with its tools again.
    let node =
        everything_child(server.pid()).expect("the server's program is a child of coda serve");
    // SAFETY: a process of the server under test, by pid.
    unsafe {
        libc::kill(node as i32, libc::SIGKILL);
    }
    let restarting = c
        .wait_for("mcp_status restarting", Duration::from_secs(15), |e| {
            ty(e) == "mcp_status" && e["data"]["state"] == "restarting"
        })
        .await;
    assert_eq!(restarting["data"]["restarts"], 1);
    let again = c
        .wait_for("mcp_status ready again", Duration::from_secs(30), |e| {
            ty(e) == "mcp_status" && e["data"]["state"] == "ready"
        })
        .await;
    assert_eq!(again["data"]["restarts"], 1);
    let node = everything_child(server.pid()).expect("restarted");

    // Coda stops: so does the program.
    c.close().await;
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(node) {
        assert!(
            Instant::now() < deadline,
            "the MCP server outlived coda serve"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A Python program using the official `mcp` SDK's client, run with `args`; prints JSON.
const PY_CLIENT: &str = r#"
import asyncio, json, os, sys
import httpx2
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

async def use(read, write):
    async with ClientSession(read, write) as s:
        await s.initialize()
        tools = await s.list_tools()
        calc = await s.call_tool("calculator", {"expression": "6*7"})
        edit = await s.call_tool("write_file", {"path": "x.txt", "content": "hi\n"})
        ask = await s.call_tool("ask", {"question": "What is the capital of France? Answer in one word."})
        return {
            "ask": [c.text for c in ask.content], "ask_error": ask.is_error,
            "tools": {t.name: (t.annotations.read_only_hint if t.annotations else None) for t in tools.tools},
            "calc": [c.text for c in calc.content], "calc_error": calc.is_error,
            "edit": [c.text for c in edit.content], "edit_error": edit.is_error,
        }

async def main():
    if sys.argv[1] == "stdio":
        params = StdioServerParameters(command=sys.argv[2], args=["mcp", "serve"], env=dict(os.environ))
        async with stdio_client(params) as (read, write):
            out = await use(read, write)
    else:
        headers = {"Authorization": "Bearer " + sys.argv[3]} if len(sys.argv) > 3 else {}
        async with httpx2.AsyncClient(headers=headers, timeout=120) as http:
            async with streamable_http_client(sys.argv[2], http_client=http) as streams:
                out = await use(streams[0], streams[1])
    print(json.dumps(out))

asyncio.run(main())
"#;

/// The embedded model for `ask`: the model store scripts/setup fills.
fn model_env() -> (String, String) {
    ("CODA__MODELS__DIR".into(), store().display().to_string())
}

fn python_client(py: &Path, home: &Home, args: &[&str]) -> std::process::Output {
    let script = home.path().join("client.py");
    std::fs::write(&script, PY_CLIENT).expect("write client");
    // The same hermetic environment as `coda` gets (so `coda mcp serve` finds its home).
    let env = home.command(&[] as &[&str], &[]);
    let child = Command::new("python3")
        .arg(&script)
        .args(args)
        .env_clear()
        .envs(
            env.get_envs()
                .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))),
        )
        .env("PYTHONPATH", py)
        .env(model_env().0, model_env().1)
        .current_dir(home.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    run_bounded_child(child, Duration::from_secs(60))
}

fn run_bounded_child(child: std::process::Child, limit: Duration) -> std::process::Output {
    let pid = child.id();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = {
        let done = done.clone();
        std::thread::spawn(move || {
            let end = Instant::now() + limit;
            while Instant::now() < end {
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // SAFETY: the child this test started, by pid.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        })
    };
    let out = child.wait_with_output().expect("wait");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = watch.join();
    out
}

fn check_client_answer(out: &std::process::Output) {
    assert!(out.status.success(), "{out:?}");
    let v: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"));
    // Reading tools are marked read-only, writing ones not; `ask` is there.
    assert_eq!(v["tools"]["read_file"], true, "{v:#}");
    assert_eq!(v["tools"]["write_file"], false, "{v:#}");
    assert!(v["tools"].get("ask").is_some(), "{v:#}");
    // `ask` answers with the embedded model.
    assert_eq!(v["ask_error"], false, "{v:#}");
    assert!(!v["ask"][0].as_str().unwrap().trim().is_empty(), "{v:#}");
    // A command can change things: not read-only, whatever its permission.
    assert_eq!(v["tools"]["run_command"], false, "{v:#}");
    assert_eq!(v["calc_error"], false, "{v:#}");
    assert!(v["calc"][0].as_str().unwrap().contains("42"), "{v:#}");
    // A write asks; nobody at Coda's end can say yes, so it does not run.
    assert_eq!(v["edit_error"], true, "{v:#}");
    assert!(
        v["edit"][0].as_str().unwrap().contains("allow_ask"),
        "{v:#}"
    );
}

/// `coda mcp serve` driven by the Python SDK's client over stdio.
#[test]
fn coda_mcp_serve_over_stdio_with_the_python_client() {
    let Some(py) = python_mcp() else { return };
    let home = Home::new();
    let coda = env!("CARGO_BIN_EXE_coda");
    let out = python_client(&py, &home, &["stdio", coda]);
    check_client_answer(&out);
    assert!(!home.path().join("x.txt").exists());
}

/// `/mcp` on `coda serve --auth`, driven by the Python SDK's client: refused without the
/// token, served with it (without `--auth`, as the WebSocket, loopback needs none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coda_serve_answers_mcp_over_http_behind_its_token() {
    let Some(py) = python_mcp() else { return };
    let home = Home::new();
    let (k, v) = model_env();
    let server = Server::start_in(home.clone(), &["--auth"], &[(k.as_str(), v.as_str())]);
    let url = format!("http://127.0.0.1:{}/mcp", server.port);
    let token = server.boot_token();
    let (h2, p2, u2) = (home.clone(), py.clone(), url.clone());
    let out = tokio::task::spawn_blocking(move || python_client(&p2, &h2, &["http", &u2, &token]))
        .await
        .unwrap();
    check_client_answer(&out);
    let (h3, p3, u3) = (home.clone(), py.clone(), url.clone());
    let refused = tokio::task::spawn_blocking(move || python_client(&p3, &h3, &["http", &u3]))
        .await
        .unwrap();
    assert!(!refused.status.success(), "{refused:?}");
    assert!(refused.stdout.is_empty(), "{refused:?}");
    // What it was told: 401, asking for a bearer token.
    let port = server.port;
    let raw = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
        write!(
            s,
            "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
    .await
    .unwrap();
    assert!(raw.starts_with("HTTP/1.1 401"), "{raw}");
    assert!(
        raw.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{raw}"
    );
}

/// `coda mcp serve` driven by the rmcp client (the SDK Coda's own client uses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coda_mcp_serve_with_the_rmcp_client() {
    use rmcp::model::CallToolRequestParams;
    use rmcp::transport::TokioChildProcess;
    use rmcp::ServiceExt;
    let home = Home::new();
    let cmd = tokio::process::Command::from(home.command(&["mcp", "serve"], &[]));
    let transport = TokioChildProcess::new(cmd).expect("coda mcp serve starts");
    let client = ().serve(transport).await.expect("initialise");
    let tools = client.list_all_tools().await.expect("tools/list");
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    for t in ["read_file", "vcs_status", "calculator", "clock"] {
        assert!(names.contains(&t), "{t} not in {names:?}");
    }
    let mut args = serde_json::Map::new();
    args.insert("expression".into(), json!("2^10"));
    let r = client
        .call_tool(CallToolRequestParams::new("calculator").with_arguments(args))
        .await
        .expect("tools/call");
    assert_ne!(r.is_error, Some(true), "{r:?}");
    assert_eq!(
        r.structured_content
            .as_ref()
            .and_then(|v| v["result"].as_f64()),
        Some(1024.0),
        "{r:?}"
    );
    let unknown = client
        .call_tool(CallToolRequestParams::new("no_such_tool"))
        .await
        .expect("an answer");
    assert_eq!(unknown.is_error, Some(true));
    let _ = client.cancel().await;
}

/// A voice/text turn in `coda serve` offers the model the tools, an MCP server's among
/// them: the model (a scripted OpenAI-compatible server) calls `everything__echo`, the
/// Tools actor runs it (`tool_call`, `tool_result`), and the model answers from the
/// result. A tool that asks (`write_file`) is not run: the model is told it needs a yes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_lets_the_model_call_an_mcp_servers_tool() {
    use coda_actors::llm::scripted::{Reply, ScriptedServer, Step};
    let Some(index) = everything() else { return };
    let upstream = ScriptedServer::start(|r| {
        if r.path() != "/v1/chat/completions" {
            return Reply::json(404, r#"{"error":{"message":"not here"}}"#);
        }
        let body = r.json();
        let msgs = body["messages"].as_array().cloned().unwrap_or_default();
        let results: Vec<String> = msgs
            .iter()
            .filter(|m| m["role"] == "tool")
            .filter_map(|m| m["content"].as_str().map(str::to_string))
            .collect();
        let step = match results.len() {
            0 => sse_tool_call(
                "c1",
                "everything__echo",
                &json!({"message": "from the model"}),
            ),
            1 => sse_tool_call(
                "c2",
                "write_file",
                &json!({"path": "notes.txt", "content": "x"}),
            ),
            _ => {
                let echoed: Value = serde_json::from_str(&results[0]).unwrap_or(Value::Null);
                let text = format!("It said {}. ", echoed["text"].as_str().unwrap_or("nothing"));
                [sse_delta(&text), sse_stop()].concat()
            }
        };
        Reply::stream("text/event-stream", vec![Step::Write(step)])
    })
    .await
    .expect("upstream");
    let home = Home::new();
    write_config(&home, &stdio_config("everything", &index));
    let base = format!("{}/v1", upstream.url());
    let server = Server::start_in(
        home.clone(),
        &[],
        &[
            ("CODA__LLM__PROVIDER", "openai"),
            ("CODA__LLM__OPENAI__BASE_URL", base.as_str()),
            ("CODA__LLM__OPENAI__MODEL", "test-model"),
        ],
    );
    let mut c = server.client().await;
    c.hello(json!({})).await;
    c.wait_for("everything ready", Duration::from_secs(30), |e| {
        ty(e) == "mcp_status" && e["data"]["state"] == "ready"
    })
    .await;
    let r = c
        .request(
            "text_input",
            json!({"text": "please repeat something for me"}),
        )
        .await;
    assert_eq!(ty(&r), "command_result", "{r}");
    let turn = r["data"]["data"]["turn_id"]
        .as_str()
        .expect("turn_id")
        .to_string();
    let mut seen = Vec::new();
    let mut result = None;
    loop {
        let v = c.recv_json(Duration::from_secs(60)).await;
        if v["data"]["turn_id"] != json!(turn) {
            continue;
        }
        seen.push(v.clone());
        if ty(&v) == "llm_result" {
            result = Some(v["data"]["text"].as_str().unwrap_or_default().to_string());
        }
        if ty(&v) == "latency_trace" {
            break;
        }
    }
    let types: Vec<&str> = seen.iter().map(ty).collect();
    let call = seen
        .iter()
        .find(|v| ty(v) == "tool_result" && v["data"]["tool"] == "everything__echo")
        .unwrap_or_else(|| panic!("no echo result in {types:?}"));
    assert_eq!(call["data"]["result"]["text"], "Echo: from the model");
    let refused = seen
        .iter()
        .find(|v| ty(v) == "tool_error" && v["data"]["tool"] == "write_file")
        .unwrap_or_else(|| panic!("no write_file error in {types:?}"));
    assert_eq!(refused["data"]["code"], "needs_confirmation");
    assert!(!home.path().join("notes.txt").exists());
    assert_eq!(
        result.as_deref(),
        Some("It said Echo: from the model. "),
        "{types:?}"
    );
    // What the model was offered: the built-ins and the MCP server's tools.
    let first = upstream
        .requests()
        .into_iter()
        .find(|r| r.path() == "/v1/chat/completions")
        .map(|r| r.json())
        .expect("a request");
    let offered: Vec<&str> = first["tools"]
        .as_array()
        .expect("tools offered")
        .iter()
        .filter_map(|t| t["function"]["name"].as_str())
        .collect();
    assert!(offered.contains(&"everything__echo"), "{offered:?}");
    assert!(offered.contains(&"clock"), "{offered:?}");
}
