//! `coda tools list|call|undo` against the real binary: a real project in a temp dir, the
//! same permission checks as a model's call (ask shows the diff and stops without
//! --yes, deny refuses), the undo journal across processes, and real commands (timeouts
//! and Ctrl-C kill the whole process group, output is capped).

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Home, Output};
use serde_json::{json, Value};

struct Project {
    home: Arc<Home>,
    root: PathBuf,
}

impl Project {
    fn new() -> Project {
        let home = Home::new();
        let root = home.path().join("project");
        std::fs::create_dir_all(root.join("src")).expect("mkdir");
        std::fs::write(
            root.join("src/lib.rs"),
            "pub fn greet() -> &'static str {\n    \"hello\"\n}\n",
        )
        .expect("write");
        Project { home, root }
    }

    fn args(&self, rest: &[&str]) -> Vec<String> {
        let mut v = vec![
            "tools".to_string(),
            "--root".into(),
            self.root.display().to_string(),
        ];
        v.extend(rest.iter().map(|s| s.to_string()));
        v
    }

    fn run(&self, rest: &[&str]) -> Output {
        self.home.run(&self.args(rest), &[])
    }

    fn run_env(&self, rest: &[&str], env: &[(&str, &str)]) -> Output {
        self.home.run(&self.args(rest), env)
    }

    fn call(&self, tool: &str, args: Value, yes: bool) -> Output {
        let a = args.to_string();
        let mut rest = vec!["call", tool, "--args", a.as_str()];
        if yes {
            rest.push("--yes");
        }
        self.run(&rest)
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.root.join(rel)).expect("read")
    }
}

fn json_of(out: &Output) -> Value {
    assert_eq!(out.code, Some(0), "{out:?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"))
}

/// Live (not zombie) processes in process group `pgid`, from /proc.
fn group_members(pgid: i32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            let Some(close) = stat.rfind(')') else {
                return false;
            };
            let f: Vec<&str> = stat[close + 2..].split(' ').collect();
            f.len() > 2 && f[0] != "Z" && f[2] == pgid.to_string()
        })
        .collect()
}

fn pid_in(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .expect("pid file")
        .trim()
        .parse()
        .expect("a pid")
}

#[test]
fn tools_list_json_has_the_coding_tools_and_their_permissions() {
    let p = Project::new();
    let v = json_of(&p.run(&["list", "--json"]));
    let tools = v.as_array().expect("an array");
    let find = |name: &str| {
        tools
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {v}"))
    };
    for name in [
        "read_file",
        "write_file",
        "edit_file",
        "list_dir",
        "search_files",
        "undo_last_write",
        "run_command",
        "calculator",
    ] {
        assert!(find(name)["parameters"]["type"] == "object", "{name}");
    }
    assert_eq!(find("read_file")["permission"], "safe");
    assert_eq!(find("write_file")["permission"], "ask");
    assert_eq!(find("edit_file")["permission"], "ask");
    assert_eq!(
        find("run_command")["permission"],
        "safe",
        "the shell rules decide"
    );
    let text = p.run(&["list"]);
    assert_eq!(text.code, Some(0), "{text:?}");
    assert!(
        text.stdout
            .lines()
            .any(|l| l.starts_with("write_file") && l.contains("ask")),
        "{text:?}"
    );
}

#[test]
fn read_then_write_asks_with_the_diff_then_runs_with_yes_and_undo_restores() {
    let p = Project::new();
    let v = json_of(&p.call("read_file", json!({"path": "src/lib.rs"}), false));
    assert!(v["content"]
        .as_str()
        .expect("content")
        .contains("\"hello\""));

    // Without --yes: the diff on stdout, a clear message, exit 4, nothing written.
    let edit =
        json!({"path": "src/lib.rs", "edits": [{"search": "\"hello\"", "replace": "\"hi\""}]});
    let out = p.call("edit_file", edit.clone(), false);
    assert_eq!(out.code, Some(4), "{out:?}");
    assert!(
        out.stdout.starts_with("edit src/lib.rs (+1 -1)\n"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("--- a/src/lib.rs\n+++ b/src/lib.rs\n"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("-    \"hello\"\n+    \"hi\"\n"),
        "{out:?}"
    );
    assert!(out.stderr.contains("--yes"), "{out:?}");
    assert!(p.read("src/lib.rs").contains("\"hello\""), "unchanged");

    let out = p.call("edit_file", edit.clone(), false);
    assert_eq!(out.code, Some(4));
    let out = p.run(&[
        "call",
        "write_file",
        "--args",
        &json!({"path": "docs/notes.md", "content": "# Notes\n"}).to_string(),
        "--json",
    ]);
    assert_eq!(out.code, Some(4), "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).expect("JSON failure");
    assert_eq!(v["error"], "needs_confirmation");
    assert_eq!(v["preview"]["summary"], "create docs/notes.md (+1 -0)");
    assert!(!p.root.join("docs").exists());

    // With --yes: done, with the same diff in the result.
    let v = json_of(&p.call("edit_file", edit, true));
    assert_eq!(v["added"], 1);
    assert!(v["diff"].as_str().expect("diff").contains("+    \"hi\""));
    assert!(p.read("src/lib.rs").contains("\"hi\""));
    let v = json_of(&p.call(
        "write_file",
        json!({"path": "docs/notes.md", "content": "# Notes\n"}),
        true,
    ));
    assert_eq!(v["created"], true);

    // An ambiguous edit is refused, saying why, and changes nothing.
    let out = p.call(
        "edit_file",
        json!({"path": "src/lib.rs", "edits": [{"search": "\"", "replace": "'"}]}),
        true,
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("matches 2 times"), "{out:?}");

    // Undo, newest first, each in a new process (the journal is on disk).
    let out = p.run(&["undo"]);
    assert_eq!(out.code, Some(4), "undo asks too: {out:?}");
    assert!(out.stdout.starts_with("remove docs/notes.md"), "{out:?}");
    let v = json_of(&p.run(&["undo", "--yes"]));
    assert_eq!(v["path"], "docs/notes.md");
    assert!(!p.root.join("docs/notes.md").exists());
    let v = json_of(&p.call("undo_last_write", json!({}), true));
    assert_eq!(v["remaining"], 0);
    assert_eq!(
        p.read("src/lib.rs"),
        "pub fn greet() -> &'static str {\n    \"hello\"\n}\n",
        "restored byte for byte"
    );
    let out = p.run(&["undo", "--yes"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("nothing to undo"), "{out:?}");
}

#[test]
fn config_permissions_apply_to_direct_calls() {
    let p = Project::new();
    let args = json!({"path": "new.txt", "content": "x\n"}).to_string();
    let out = p.run_env(
        &["call", "write_file", "--args", &args],
        &[("CODA__TOOLS__PERMISSIONS__WRITE_FILE", "safe")],
    );
    assert_eq!(out.code, Some(0), "the config allows it: {out:?}");
    assert_eq!(p.read("new.txt"), "x\n");
    let out = p.run_env(
        &["call", "write_file", "--args", &args, "--yes"],
        &[("CODA__TOOLS__PERMISSIONS__WRITE_FILE", "deny")],
    );
    assert_eq!(out.code, Some(5), "deny wins over --yes: {out:?}");
    assert!(
        out.stderr.contains("tools.permissions.write_file"),
        "{out:?}"
    );
    let out = p.run(&["call", "no_such_tool"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("no tool named `no_such_tool`"),
        "{out:?}"
    );
    let out = p.run(&["call", "read_file", "--args", "{not json"]);
    assert_eq!(out.code, Some(2), "{out:?}");
}

#[cfg(unix)]
#[test]
fn paths_outside_the_project_are_refused() {
    let p = Project::new();
    std::fs::write(p.home.path().join("secret.txt"), "secret\n").expect("write");
    std::os::unix::fs::symlink(p.home.path().join("secret.txt"), p.root.join("link"))
        .expect("symlink");
    for path in [
        "../secret.txt".to_string(),
        p.home.path().join("secret.txt").display().to_string(),
        "link".to_string(),
    ] {
        let out = p.call("read_file", json!({"path": path}), true);
        assert_eq!(out.code, Some(5), "{path}: {out:?}");
        assert!(out.stderr.contains("outside the project"), "{out:?}");
        assert!(!out.stdout.contains("secret"), "{out:?}");
    }
    let out = p.call(
        "write_file",
        json!({"path": "../escape.txt", "content": "x"}),
        true,
    );
    assert_eq!(out.code, Some(5), "{out:?}");
    assert!(!p.home.path().join("escape.txt").exists());
}

#[test]
fn a_command_past_its_timeout_is_killed_with_its_whole_group() {
    let p = Project::new();
    let pid_file = p.root.join("pgid");
    let line = format!("echo $$ > {}; sleep 30 & sleep 30", pid_file.display());
    let started = Instant::now();
    let v = json_of(&p.call(
        "run_command",
        json!({"command": line, "timeout_s": 1}),
        true,
    ));
    assert_eq!(v["timed_out"], true, "{v}");
    assert_eq!(v["exit_code"], Value::Null);
    assert_eq!(v["signal"], "SIGTERM");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "not waited out"
    );
    let pgid = pid_in(&pid_file);
    assert!(
        group_members(pgid).is_empty(),
        "survivors of group {pgid}: {:?}",
        group_members(pgid)
    );
}

#[test]
fn command_output_is_capped_head_and_tail() {
    let p = Project::new();
    let v = json_of(&p.call("run_command", json!({"command": "seq 1 100000"}), true));
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["stdout_bytes"], 588_895);
    let out = v["stdout"].as_str().expect("stdout");
    assert!(out.starts_with("1\n2\n3\n"), "head kept");
    assert!(out.ends_with("99999\n100000\n"), "tail kept");
    let cut = v["cut_bytes"].as_u64().expect("cut_bytes");
    assert!(
        out.contains(&format!("[... {cut} bytes cut ...]")),
        "says so"
    );
    assert!(out.len() < 13_000, "{}", out.len());
}

#[test]
fn shell_rules_allow_ask_and_deny() {
    let p = Project::new();
    let v = json_of(&p.call("run_command", json!({"command": "ls src"}), false));
    assert_eq!(v["stdout"], "lib.rs\n", "allowed by `ls *` without --yes");

    let out = p.call("run_command", json!({"command": "touch made.txt"}), false);
    assert_eq!(out.code, Some(4), "no rule: ask: {out:?}");
    assert!(
        out.stdout
            .contains("run `touch made.txt` in the project root"),
        "{out:?}"
    );
    assert!(!p.root.join("made.txt").exists());

    let out = p.call("run_command", json!({"command": "ls && rm -rf src"}), true);
    assert_eq!(out.code, Some(5), "deny beats --yes: {out:?}");
    assert!(
        out.stderr.contains("tools.shell.deny `rm -rf *`"),
        "{out:?}"
    );
    assert!(p.root.join("src/lib.rs").exists());
}

#[cfg(unix)]
#[test]
fn ctrl_c_stops_the_command_and_its_group() {
    let p = Project::new();
    let pid_file = p.root.join("pgid");
    let line = format!("echo $$ > {}; sleep 30 & sleep 30", pid_file.display());
    let args = json!({"command": line}).to_string();
    let mut cmd = p.home.command(
        &p.args(&["call", "run_command", "--args", &args, "--yes"]),
        &[],
    );
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn coda");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pid_file.exists()
        || std::fs::read_to_string(&pid_file)
            .unwrap_or_default()
            .trim()
            .is_empty()
    {
        assert!(Instant::now() < deadline, "the command never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pgid = pid_in(&pid_file);
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let status = common::wait_bounded(&mut child, Duration::from_secs(30));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("coda did not stop after SIGINT");
    }
    let mut stdout = String::new();
    if let Some(mut o) = child.stdout.take() {
        std::io::Read::read_to_string(&mut o, &mut stdout).expect("read stdout");
    }
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{stdout}");
    let v: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(v["cancelled"], true);
    assert!(group_members(pgid).is_empty(), "{:?}", group_members(pgid));
}

/// Version control through the tools: a commit and its undo only once confirmed (the
/// confirmation shows the files and the message), the reads in between, and the repo map.
#[test]
fn version_control_commits_only_when_confirmed_and_undoes_its_own_commit() {
    let p = Project::new();
    let git = std::process::Command::new("git")
        .args(["init", "-q"])
        .current_dir(&p.root)
        .status()
        .expect("git");
    assert!(git.success());
    let status = json_of(&p.call("vcs_status", json!({}), false));
    assert_eq!(status["vcs"], "git", "{status}");
    assert_eq!(status["files"][0]["path"], "src/lib.rs", "{status}");
    assert_eq!(status["files"][0]["state"], "untracked", "{status}");

    let msg = json!({"message": "Add greet"});
    let asked = p.call("vcs_commit", msg.clone(), false);
    assert_eq!(asked.code, Some(4), "{asked:?}");
    assert!(
        asked.stdout.contains("commit 1 changed file(s) in git")
            && asked.stdout.contains("src/lib.rs")
            && asked.stdout.contains("Add greet"),
        "{asked:?}"
    );
    let log = json_of(&p.call("vcs_log", json!({}), false));
    assert_eq!(log["commits"], json!([]), "nothing committed: {log}");

    let done = json_of(&p.call("vcs_commit", msg, true));
    let id = done["commit"]["id"].as_str().expect("an id").to_string();
    assert_eq!(done["commit"]["summary"], "Add greet");
    let log = json_of(&p.call("vcs_log", json!({"limit": 5}), false));
    assert_eq!(log["commits"][0]["id"], id.as_str(), "{log}");

    std::fs::write(
        p.root.join("src/lib.rs"),
        "pub fn greet() -> &'static str {\n    \"hi\"\n}\n",
    )
    .expect("write");
    let diff = json_of(&p.call("vcs_diff", json!({}), false));
    assert!(
        diff["diff"].as_str().unwrap_or("").contains("+    \"hi\""),
        "{diff}"
    );
    let blame = json_of(&p.call("vcs_blame", json!({"path": "src/lib.rs"}), false));
    assert_eq!(
        blame["lines"][0]["text"], "pub fn greet() -> &'static str {",
        "{blame}"
    );
    let shown = json_of(&p.call("vcs_show", json!({"revision": id}), false));
    assert!(
        shown["text"].as_str().unwrap_or("").contains("Add greet"),
        "{shown}"
    );
    let bad = p.call("vcs_show", json!({"revision": "--output=/tmp/x"}), false);
    assert!(
        bad.code != Some(0) && bad.stderr.contains("is not a revision"),
        "{bad:?}"
    );

    let undo = json!({"id": id});
    let asked = p.call("vcs_undo_commit", undo.clone(), false);
    assert_eq!(asked.code, Some(4), "{asked:?}");
    assert!(asked.stdout.contains("Add greet"), "{asked:?}");
    json_of(&p.call("vcs_undo_commit", undo, true));
    let log = json_of(&p.call("vcs_log", json!({}), false));
    assert_eq!(log["commits"], json!([]), "{log}");
    assert!(
        p.read("src/lib.rs").contains("\"hi\""),
        "the change is kept"
    );

    let map = json_of(&p.call("repo_map", json!({"tokens": 200}), false));
    assert!(
        map["map"].as_str().unwrap_or("").contains("pub fn greet"),
        "{map}"
    );
}

/// `coda ask --tools`: the model (a scripted OpenAI-compatible server) reads a file and
/// edits it. The read runs; the edit needs confirmation, so without --yes the model is
/// told it did not run and the file is untouched; with --yes it is changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_with_tools_runs_reads_and_writes_only_with_yes() {
    use coda_actors::llm::scripted::{Reply, ScriptedServer, Step};
    let p = Project::new();
    let server = ScriptedServer::start(|r| {
        if r.path() != "/v1/chat/completions" {
            return Reply::json(404, r#"{"error":{"message":"not here"}}"#);
        }
        let body = r.json();
        let msgs = body["messages"].as_array().cloned().unwrap_or_default();
        let step = match msgs.iter().filter(|m| m["role"] == "tool").count() {
            0 => common::sse_tool_call("c1", "read_file", &json!({"path": "src/lib.rs"})),
            1 => common::sse_tool_call(
                "c2",
                "edit_file",
                &json!({"path": "src/lib.rs", "edits": [{"search": "\"hello\"", "replace": "\"howdy\""}]}),
            ),
            _ => [common::sse_delta("Done."), common::sse_stop()].concat(),
        };
        Reply::stream("text/event-stream", vec![Step::Write(step)])
    })
    .await
    .expect("server");
    let url = format!("{}/v1", server.url());
    let env = [
        ("CODA__LLM__PROVIDER", "openai"),
        ("CODA__LLM__OPENAI__BASE_URL", url.as_str()),
        ("CODA__LLM__OPENAI__MODEL", "m"),
    ];
    let root = p.root.display().to_string();
    let ask = |yes: bool| {
        let mut args = vec!["ask", "--tools", "--root", root.as_str(), "--json"];
        if yes {
            args.push("--yes");
        }
        args.push("say howdy instead");
        tokio::task::block_in_place(|| p.home.run(&args, &env))
    };

    let out = ask(false);
    assert_eq!(out.code, Some(0), "{out:?}");
    let v = json_of(&out);
    assert_eq!(v["text"], "Done.");
    let runs = v["tool_results"].as_array().expect("tool_results");
    assert_eq!(runs.len(), 2, "{v:#}");
    assert!(runs[0]["result"]["content"]
        .as_str()
        .unwrap()
        .contains("\"hello\""));
    let refused = runs[1]["error"].as_str().unwrap();
    assert!(
        refused.contains("not run") && refused.contains("--yes"),
        "{refused}"
    );
    assert!(p.read("src/lib.rs").contains("\"hello\""));
    assert!(out.stderr.contains("⚙ read_file"), "{}", out.stderr);
    // What the model was told, under the call's id.
    let sent = server.requests().last().map(|r| r.json()).unwrap();
    let told = sent["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(told["tool_call_id"], "c2");
    assert!(told["content"].as_str().unwrap().contains("not run"));

    let out = ask(true);
    assert_eq!(out.code, Some(0), "{out:?}");
    let v = json_of(&out);
    assert!(v["tool_results"][1]["result"].is_object(), "{v:#}");
    assert!(p.read("src/lib.rs").contains("\"howdy\""));
}
