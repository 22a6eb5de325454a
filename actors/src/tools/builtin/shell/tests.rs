//! The shell: rule matching, the head/tail cap, and real processes (timeouts kill the
//! whole group, cancellation, leftovers, a clean environment, progress).

use std::sync::atomic::Ordering;
use std::sync::Mutex;

use super::*;
use crate::tools::builtin::shell_rules::{split_command, ShellRules};
use crate::tools::registry::Permission;
use crate::tools::workspace::WorkspaceSettings;

fn rules(allow: &[&str], ask: &[&str], deny: &[&str]) -> ShellRules {
    let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    ShellRules::new(&v(allow), &v(ask), &v(deny), Permission::Ask).expect("rules")
}

#[test]
fn deny_beats_allow_and_the_most_specific_rule_wins() {
    let r = rules(
        &["git *", "ls *", "cargo test *", "echo *"],
        &["git push *", "cargo *"],
        &["rm -rf *", "git push --force *"],
    );
    let p = |c: &str| r.decide(c).permission;
    assert_eq!(p("git status"), Permission::Safe);
    assert_eq!(
        p("git"),
        Permission::Safe,
        "a trailing ` *` also matches no arguments"
    );
    assert_eq!(
        p("git push origin main"),
        Permission::Ask,
        "more specific than `git *`"
    );
    assert_eq!(p("git push --force origin"), Permission::Deny);
    assert_eq!(p("cargo build"), Permission::Ask);
    assert_eq!(
        p("cargo test --lib"),
        Permission::Safe,
        "`cargo test *` beats `cargo *`"
    );
    assert_eq!(p("make"), Permission::Ask, "no rule: the default");
    assert_eq!(
        p("  ls    -la  "),
        Permission::Safe,
        "whitespace is squashed"
    );
    assert_eq!(p("rm -rf target"), Permission::Deny);
    let d = r.decide("rm -rf /");
    assert!(d.why.contains("tools.shell.deny `rm -rf *`"), "{}", d.why);
    let d = r.decide("git log");
    assert!(d.why.contains("tools.shell.allow `git *`"), "{}", d.why);

    // Deny beats allow even when the allow rule is more specific.
    let r2 = rules(&["rm -rf target/debug"], &[], &["rm *"]);
    assert_eq!(
        r2.decide("rm -rf target/debug").permission,
        Permission::Deny
    );
    // A tie between allow and ask goes to ask.
    let r3 = rules(&["make *"], &["make *"], &[]);
    assert_eq!(r3.decide("make all").permission, Permission::Ask);
}

#[test]
fn compound_commands_are_judged_part_by_part() {
    let r = rules(&["ls *", "echo *", "cat *"], &[], &["rm -rf *"]);
    let p = |c: &str| r.decide(c).permission;
    assert_eq!(p("ls; rm -rf /"), Permission::Deny);
    assert_eq!(p("ls && rm -rf /"), Permission::Deny);
    assert_eq!(p("echo hi | rm -rf /"), Permission::Deny);
    assert_eq!(
        p("ls & make"),
        Permission::Ask,
        "each part needs its own rule"
    );
    assert_eq!(p("ls | cat"), Permission::Safe);
    assert_eq!(
        p("echo 'a; rm -rf /'"),
        Permission::Safe,
        "quoted text is not an operator"
    );
    assert_eq!(
        p("FOO=1 rm -rf /"),
        Permission::Deny,
        "assignments are stripped"
    );
    assert_eq!(
        p("echo $(rm x)"),
        Permission::Ask,
        "substitution cannot be judged"
    );
    assert_eq!(p("echo `id`"), Permission::Ask);
    assert_eq!(p("echo hi > out.txt"), Permission::Ask, "writes a file");
    assert_eq!(p("ls 2>&1"), Permission::Safe, "fd duplication is harmless");
    assert_eq!(p("ls 2>/dev/null"), Permission::Safe);
    assert_eq!(p("echo 'unclosed"), Permission::Ask);

    assert_eq!(
        split_command("a && b || c; d | e & f\ng").parts,
        ["a", "b", "c", "d", "e", "f", "g"]
    );
}

#[test]
fn head_tail_keeps_both_ends_and_counts_the_cut() {
    let mut h = HeadTail::new(10);
    h.push(b"0123");
    assert_eq!(h.text(), "0123");
    h.push(b"456789abcdefghij");
    assert_eq!(h.total(), 20);
    assert_eq!(h.cut(), 10);
    assert_eq!(h.text(), "01234\n[... 10 bytes cut ...]\nfghij");
    for _ in 0..1000 {
        h.push(b"xyz");
    }
    assert_eq!(h.text(), "01234\n[... 3010 bytes cut ...]\nyzxyz");
}

struct Sh {
    ws: Arc<Workspace>,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

fn project() -> Sh {
    let p = tempfile::tempdir().expect("tempdir");
    let u = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(p.path().join("sub")).expect("mkdir");
    let ws = Arc::new(Workspace::open(WorkspaceSettings::new(p.path(), u.path())).expect("open"));
    Sh { ws, _dirs: (p, u) }
}

fn settings() -> ShellSettings {
    ShellSettings {
        kill_grace: Duration::from_millis(300),
        ..ShellSettings::default()
    }
}

/// Live (not zombie) processes whose process group is `pgid`.
fn group_members(pgid: i32) -> usize {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            let Some(close) = stat.rfind(')') else {
                return false;
            };
            let f: Vec<&str> = stat[close + 2..].split(' ').collect();
            f.len() > 2 && f[0] != "Z" && f[2] == pgid.to_string()
        })
        .count()
}

#[test]
fn a_command_that_outlives_its_timeout_is_killed_with_its_children() {
    let sh = project();
    let s = settings();
    let pids = sh.ws.root().join("pids");
    // The shell and a background child both sleep; the group's id is the shell's pid.
    let line = format!(
        "echo started; echo $$ > {}; sleep 30 & sleep 30",
        pids.display()
    );
    let o = run_shell(
        &line,
        sh.ws.root(),
        Duration::from_millis(500),
        &s,
        &ToolContext::default(),
    )
    .expect("run");
    assert!(o.timed_out);
    assert_eq!(o.exit_code, None);
    assert_eq!(o.signal, Some(libc::SIGTERM));
    assert_eq!(
        o.stdout.text(),
        "started\n",
        "output before the kill is kept"
    );
    let pgid: i32 = std::fs::read_to_string(&pids)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    assert_eq!(group_members(pgid), 0, "no process of the group survives");
}

#[test]
fn a_command_that_ignores_sigterm_gets_sigkill() {
    let sh = project();
    let s = settings();
    let o = run_shell(
        "trap '' TERM; echo $$; sleep 30 & trap '' TERM; sleep 30",
        sh.ws.root(),
        Duration::from_millis(300),
        &s,
        &ToolContext::default(),
    )
    .expect("run");
    assert!(o.timed_out);
    assert_eq!(o.signal, Some(libc::SIGKILL));
    let pgid: i32 = o.stdout.text().trim().parse().expect("pid");
    assert_eq!(group_members(pgid), 0);
}

#[test]
fn cancelling_kills_the_group_and_background_leftovers_go_too() {
    let sh = project();
    let s = settings();
    let ctx = ToolContext::default();
    let flag = ctx.cancelled.clone();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        flag.store(true, Ordering::Relaxed);
    });
    let o = run_shell(
        "echo $$; sleep 30",
        sh.ws.root(),
        Duration::from_secs(60),
        &s,
        &ctx,
    )
    .expect("run");
    canceller.join().expect("join");
    assert!(o.cancelled && !o.timed_out);
    let pgid: i32 = o.stdout.text().trim().parse().expect("pid");
    assert_eq!(group_members(pgid), 0);

    // The shell ends at once, leaving a background sleeper: it does not outlive the call.
    let o = run_shell(
        "echo $$; sleep 30 &",
        sh.ws.root(),
        Duration::from_secs(60),
        &s,
        &ctx_default(),
    )
    .expect("run");
    assert_eq!(o.exit_code, Some(0));
    assert!(!o.timed_out);
    let pgid: i32 = o.stdout.text().trim().parse().expect("pid");
    assert_eq!(group_members(pgid), 0);
}

fn ctx_default() -> ToolContext {
    ToolContext::default()
}

#[test]
fn exit_codes_output_caps_environment_and_cwd() {
    let sh = project();
    let mut s = settings();
    s.max_output_bytes = 100;
    let ctx = ToolContext::default();
    let o = run_shell(
        "echo out; echo err >&2; exit 3",
        sh.ws.root(),
        Duration::from_secs(30),
        &s,
        &ctx,
    )
    .expect("run");
    assert_eq!(o.exit_code, Some(3));
    assert_eq!(o.stdout.text(), "out\n");
    assert_eq!(o.stderr.text(), "err\n");

    let o = run_shell(
        "seq 1 10000",
        sh.ws.root(),
        Duration::from_secs(30),
        &s,
        &ctx,
    )
    .expect("seq");
    let text = o.stdout.text();
    assert!(text.starts_with("1\n2\n3\n"), "{text}");
    assert!(text.ends_with("9999\n10000\n"), "{text}");
    assert_eq!(o.stdout.total(), 48_894);
    assert!(
        text.contains(&format!("[... {} bytes cut ...]", 48_894 - 100)),
        "{text}"
    );

    // Only PATH, HOME, LANG and the settings' own are passed; no input.
    std::env::set_var("CODA_TEST_LEAK", "leaked");
    let o = run_shell(
        "env; cat; pwd",
        &sh.ws.root().join("sub"),
        Duration::from_secs(30),
        &settings(),
        &ctx,
    )
    .expect("env");
    std::env::remove_var("CODA_TEST_LEAK");
    let out = o.stdout.text();
    assert!(!out.contains("CODA_TEST_LEAK"), "{out}");
    assert!(
        out.contains("PATH=") && out.contains("GIT_TERMINAL_PROMPT=0"),
        "{out}"
    );
    assert!(out.trim_end().ends_with("/sub"), "cwd: {out}");
}

#[test]
fn output_streams_as_progress() {
    let sh = project();
    let seen = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let sink = seen.clone();
    let ctx = ToolContext {
        progress: Some(crate::tools::ProgressSink::new(move |stream, text| {
            if let Ok(mut s) = sink.lock() {
                s.push((stream.to_string(), text.to_string()));
            }
        })),
        ..ToolContext::default()
    };
    let o = run_shell(
        "echo one; echo two >&2; echo three",
        sh.ws.root(),
        Duration::from_secs(30),
        &settings(),
        &ctx,
    )
    .expect("run");
    assert_eq!(o.exit_code, Some(0));
    let seen = seen.lock().expect("lock").clone();
    let join = |s: &str| -> String {
        seen.iter()
            .filter(|(k, _)| k == s)
            .map(|(_, t)| t.as_str())
            .collect()
    };
    assert_eq!(join("stdout"), "one\nthree\n");
    assert_eq!(join("stderr"), "two\n");
}

#[actix_rt::test]
async fn the_tool_checks_its_arguments_and_previews() {
    let sh = project();
    let mut s = settings();
    s.rules = rules(&["echo *"], &[], &["rm *"]);
    s.max_timeout = Duration::from_secs(5);
    let t = RunCommand::new(sh.ws.clone(), s);
    let perm = |c: &str| {
        t.call_permission(&json!({"command": c}))
            .expect("ok")
            .expect("some")
    };
    assert_eq!(perm("echo hi").permission, Permission::Safe);
    assert_eq!(perm("rm x").permission, Permission::Deny);
    assert_eq!(
        t.call_permission(&json!({"command": "  "}))
            .expect_err("empty")
            .code(),
        "invalid_arguments"
    );
    assert_eq!(
        t.call_permission(&json!({"command": "echo", "timeout_s": 60}))
            .expect_err("too long")
            .code(),
        "invalid_arguments"
    );
    let p = t
        .preview(&json!({"command": "make", "cwd": "sub"}))
        .expect("ok")
        .expect("some");
    assert!(
        p.summary.starts_with("run `make` in `sub`"),
        "{}",
        p.summary
    );
    let e = t
        .preview(&json!({"command": "make", "cwd": "../.."}))
        .expect_err("escape");
    assert_eq!(e.code(), "denied");

    let v = t
        .call(
            json!({"command": "echo hi; exit 2"}),
            ToolContext::default(),
        )
        .await
        .expect("run");
    assert_eq!(v["exit_code"], 2);
    assert_eq!(v["stdout"], "hi\n");
    assert_eq!(v["timed_out"], false);
    assert_eq!(v["cwd"], ".");
}
