//! The file tools on real files: ranges and caps, binary refusal, edit ambiguity, diffs,
//! ignore files for listing and search.

use std::fs;

use super::*;
use crate::tools::workspace::WorkspaceSettings;

struct Fixture {
    ws: Arc<Workspace>,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Fixture {
    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.ws.root().join(rel)
    }
    fn write(&self, rel: &str, content: impl AsRef<[u8]>) {
        let p = self.path(rel);
        if let Some(d) = p.parent() {
            fs::create_dir_all(d).expect("mkdir");
        }
        fs::write(p, content).expect("write");
    }
}

fn fixture_with(tweak: impl FnOnce(&mut WorkspaceSettings)) -> Fixture {
    let project = tempfile::tempdir().expect("tempdir");
    let undo = tempfile::tempdir().expect("tempdir");
    let mut s = WorkspaceSettings::new(project.path(), undo.path());
    tweak(&mut s);
    let ws = Arc::new(Workspace::open(s).expect("open"));
    Fixture {
        ws,
        _dirs: (project, undo),
    }
}

fn fixture() -> Fixture {
    fixture_with(|_| {})
}

async fn call(tool: &dyn Tool, args: Value) -> Result<Value, ToolFailure> {
    tool.call(args, ToolContext::default()).await
}

fn numbered(n: usize) -> String {
    (1..=n).map(|i| format!("line {i}\n")).collect()
}

#[actix_rt::test]
async fn read_file_whole_ranges_and_past_the_end() {
    let f = fixture();
    f.write("a.txt", numbered(10));
    let t = ReadFile(f.ws.clone());
    let v = call(&t, json!({"path": "a.txt"})).await.expect("whole");
    assert_eq!(v["content"], numbered(10));
    assert_eq!(
        (v["start_line"].clone(), v["end_line"].clone()),
        (json!(1), json!(10))
    );
    assert_eq!(v["total_lines"], 10);
    assert_eq!(v["truncated"], false);

    let v = call(&t, json!({"path": "a.txt", "start_line": 3, "end_line": 4}))
        .await
        .expect("range");
    assert_eq!(v["content"], "line 3\nline 4\n");
    assert_eq!(v["end_line"], 4);
    assert_eq!(v["total_lines"], 10, "counted past the range");

    let e = call(&t, json!({"path": "a.txt", "start_line": 20}))
        .await
        .expect_err("past");
    assert!(
        e.to_string().contains("past the end") && e.to_string().contains("10 lines"),
        "{e}"
    );
    let e = call(&t, json!({"path": "a.txt", "start_line": 5, "end_line": 2}))
        .await
        .expect_err("backwards");
    assert_eq!(e.code(), "invalid_arguments");
    let e = call(&t, json!({"path": "missing.txt"}))
        .await
        .expect_err("missing");
    assert_eq!(e.code(), "failed");
    let e = call(&t, json!({"path": "../etc/passwd"}))
        .await
        .expect_err("escape");
    assert_eq!(e.code(), "denied", "{e}");
    f.write("empty.txt", "");
    let v = call(&t, json!({"path": "empty.txt"})).await.expect("empty");
    assert_eq!(v["content"], "");
    assert_eq!(v["total_lines"], 0);
}

#[actix_rt::test]
async fn read_file_is_capped_and_says_where_to_go_on() {
    let f = fixture_with(|s| s.max_read_bytes = 100);
    f.write("long.txt", numbered(100));
    let t = ReadFile(f.ws.clone());
    let v = call(&t, json!({"path": "long.txt"})).await.expect("capped");
    let content = v["content"].as_str().expect("content");
    assert!(content.len() <= 100, "{}", content.len());
    assert_eq!(v["truncated"], true);
    let next = v["next_line"].as_u64().expect("next_line");
    assert_eq!(v["end_line"].as_u64(), Some(next - 1));
    assert!(
        content.ends_with(&format!("line {}\n", next - 1)),
        "whole lines: {content:?}"
    );
    let v = call(&t, json!({"path": "long.txt", "start_line": next}))
        .await
        .expect("next page");
    assert!(v["content"]
        .as_str()
        .expect("content")
        .starts_with(&format!("line {next}\n")));

    // One line longer than the whole budget is cut inside the line.
    f.write("wide.txt", format!("{}\nshort\n", "é".repeat(200)));
    let v = call(&t, json!({"path": "wide.txt"})).await.expect("wide");
    assert!(v["content"].as_str().expect("content").len() <= 100);
    assert_eq!(v["truncated"], true);
    assert_eq!(v["next_line"], 2);
}

#[actix_rt::test]
async fn read_file_refuses_binary_and_non_utf8_and_directories() {
    let f = fixture();
    f.write("img.png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR");
    f.write("latin1.txt", b"caf\xe9\n");
    fs::create_dir_all(f.path("dir")).expect("mkdir");
    let t = ReadFile(f.ws.clone());
    let e = call(&t, json!({"path": "img.png"}))
        .await
        .expect_err("binary");
    assert!(e.to_string().contains("binary file"), "{e}");
    let e = call(&t, json!({"path": "latin1.txt"}))
        .await
        .expect_err("latin1");
    assert!(e.to_string().contains("not UTF-8"), "{e}");
    let e = call(&t, json!({"path": "dir"})).await.expect_err("dir");
    assert!(e.to_string().contains("list_dir"), "{e}");
}

#[test]
fn edits_must_match_exactly_once() {
    let text = "fn a() {}\nfn b() {}\nfn a() {}\n";
    let e = apply_edits(text, &[("fn a() {}".into(), "x".into())]).expect_err("twice");
    assert!(
        e.contains("edit 1") && e.contains("matches 2 times") && e.contains("lines 1, 3"),
        "{e}"
    );
    let e = apply_edits(text, &[("fn c() {}".into(), "x".into())]).expect_err("none");
    assert!(e.contains("edit 1") && e.contains("not found"), "{e}");
    let e = apply_edits(text, &[("fn  b()  {}".into(), "x".into())]).expect_err("spacing");
    assert!(e.contains("line 2 if whitespace were ignored"), "{e}");

    let out = apply_edits(
        text,
        &[
            ("fn b() {}".into(), "fn c() {}".into()),
            // The second edit sees the first one's result.
            ("fn c() {}\nfn a".into(), "fn c() {}\nfn z".into()),
        ],
    )
    .expect("sequential");
    assert_eq!(out, "fn a() {}\nfn c() {}\nfn z() {}\n");
    let e = apply_edits(
        text,
        &[
            ("fn b() {}".into(), "fn a() {}".into()),
            ("fn a() {}".into(), "y".into()),
        ],
    )
    .expect_err("made ambiguous by the first");
    assert!(e.contains("edit 2") && e.contains("3 times"), "{e}");

    let crlf = "one\r\ntwo\r\n";
    assert_eq!(
        apply_edits(crlf, &[("one\ntwo".into(), "1\n2".into())]).expect("crlf"),
        "1\r\n2\r\n"
    );
}

#[actix_rt::test]
async fn edit_and_write_preview_then_write_with_diff_and_undo() {
    let f = fixture();
    f.write("src/lib.rs", "pub fn a() {}\npub fn b() {}\n");
    let edit = EditFile(f.ws.clone());
    let args = json!({"path": "src/lib.rs", "edits": [{"search": "pub fn b() {}", "replace": "pub fn c() {}"}]});
    let p = edit.preview(&args).expect("preview").expect("some");
    assert_eq!(p.summary, "edit src/lib.rs (+1 -1)");
    assert!(p
        .diff
        .as_deref()
        .expect("diff")
        .contains("-pub fn b() {}\n+pub fn c() {}\n"));
    assert_eq!(
        fs::read_to_string(f.path("src/lib.rs")).expect("read"),
        "pub fn a() {}\npub fn b() {}\n",
        "a preview writes nothing"
    );
    let v = call(&edit, args).await.expect("edit");
    assert_eq!(v["path"], "src/lib.rs");
    assert_eq!(
        (v["added"].clone(), v["removed"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(
        fs::read_to_string(f.path("src/lib.rs")).expect("read"),
        "pub fn a() {}\npub fn c() {}\n"
    );

    let bad = json!({"path": "src/lib.rs", "edits": [{"search": "pub fn", "replace": "x"}]});
    let e = edit
        .preview(&bad)
        .expect_err("ambiguous in preview already");
    assert!(e.to_string().contains("matches 2 times"), "{e}");
    let e = call(
        &edit,
        json!({"path": "nope.rs", "edits": [{"search": "a", "replace": "b"}]}),
    )
    .await
    .expect_err("missing");
    assert!(e.to_string().contains("write_file"), "{e}");

    let write = WriteFile(f.ws.clone());
    let args = json!({"path": "notes/todo.md", "content": "- one\n"});
    let p = write.preview(&args).expect("preview").expect("some");
    assert_eq!(p.summary, "create notes/todo.md (+1 -0)");
    let v = call(&write, args).await.expect("create");
    assert_eq!(v["created"], true);
    assert!(v["diff"]
        .as_str()
        .expect("diff")
        .starts_with("--- /dev/null"));
    let e = call(&write, json!({"path": ".git/config", "content": "x"}))
        .await
        .expect_err("vcs");
    assert_eq!(e.code(), "denied");

    let undo = UndoLastWrite(f.ws.clone());
    let p = undo.preview(&json!({})).expect("preview").expect("some");
    assert!(
        p.summary.starts_with("remove notes/todo.md"),
        "{}",
        p.summary
    );
    let v = call(&undo, json!({})).await.expect("undo create");
    assert_eq!(v["remaining"], 1);
    assert!(!f.path("notes/todo.md").exists());
    call(&undo, json!({})).await.expect("undo edit");
    assert_eq!(
        fs::read_to_string(f.path("src/lib.rs")).expect("read"),
        "pub fn a() {}\npub fn b() {}\n"
    );
    assert!(call(&undo, json!({})).await.is_err(), "nothing left");
}

fn paths(v: &Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["path"].as_str().expect("path").to_string())
        .collect()
}

fn ignore_fixture() -> Fixture {
    let f = fixture();
    f.write(".gitignore", "target/\n*.log\n");
    f.write(".hgignore", "syntax: glob\n*.orig\nre:^generated/\n");
    f.write(".ignore", "scratch.txt\n");
    f.write("src/main.rs", "fn main() { needle(); }\n");
    f.write("src/util.rs", "pub fn needle() {}\n// NEEDLE in caps\n");
    f.write("target/debug/out.rs", "needle\n");
    f.write("build.log", "needle\n");
    f.write("src/main.rs.orig", "needle\n");
    f.write("generated/api.rs", "needle\n");
    f.write("scratch.txt", "needle\n");
    f.write(".hidden/x.rs", "needle\n");
    f.write("data.bin", b"needle\0\x01\x02");
    f
}

#[actix_rt::test]
async fn list_dir_honours_ignore_files_unless_all() {
    let f = ignore_fixture();
    let t = ListDir(f.ws.clone());
    let v = call(&t, json!({"depth": 3})).await.expect("list");
    assert_eq!(
        paths(&v, "entries"),
        ["data.bin", "src", "src/main.rs", "src/util.rs"]
    );
    assert_eq!(v["entries"][0]["kind"], "file");
    assert_eq!(v["entries"][1]["kind"], "dir");
    let v = call(&t, json!({"path": "src"})).await.expect("src");
    assert_eq!(paths(&v, "entries"), ["src/main.rs", "src/util.rs"]);
    let v = call(&t, json!({"all": true})).await.expect("all");
    let all = paths(&v, "entries");
    for p in [
        ".gitignore",
        ".hidden",
        "build.log",
        "generated",
        "target",
        "scratch.txt",
    ] {
        assert!(all.contains(&p.to_string()), "{p} in {all:?}");
    }
    let f2 = fixture_with(|s| s.max_list_entries = 2);
    f2.write("a", "");
    f2.write("b", "");
    f2.write("c", "");
    let v = call(&ListDir(f2.ws.clone()), json!({}))
        .await
        .expect("capped");
    assert_eq!(v["truncated"], true);
    assert_eq!(paths(&v, "entries").len(), 2);
    let e = call(&t, json!({"path": "src/main.rs"}))
        .await
        .expect_err("a file");
    assert!(e.to_string().contains("not a directory"), "{e}");
}

#[actix_rt::test]
async fn search_files_honours_ignore_files_and_skips_binary() {
    let f = ignore_fixture();
    let t = SearchFiles(f.ws.clone());
    let v = call(&t, json!({"pattern": "needle"}))
        .await
        .expect("search");
    assert_eq!(paths(&v, "matches"), ["src/main.rs", "src/util.rs"], "{v}");
    assert_eq!(v["matches"][1]["line"], 1);
    assert_eq!(v["matches"][1]["text"], "pub fn needle() {}");

    let v = call(&t, json!({"pattern": "needle", "case_insensitive": true}))
        .await
        .expect("ci");
    assert_eq!(v["count"], 3);
    let v = call(&t, json!({"pattern": "needle();", "literal": true}))
        .await
        .expect("literal");
    assert_eq!(paths(&v, "matches"), ["src/main.rs"]);
    let v = call(&t, json!({"pattern": r"fn \w+\(\)", "glob": "*util*"}))
        .await
        .expect("glob");
    assert_eq!(paths(&v, "matches"), ["src/util.rs"]);
    let v = call(&t, json!({"pattern": "needle", "path": "src/util.rs"}))
        .await
        .expect("one file");
    assert_eq!(v["count"], 1);
    let e = call(&t, json!({"pattern": "(unclosed"}))
        .await
        .expect_err("bad regex");
    assert_eq!(e.code(), "invalid_arguments");
    let e = call(&t, json!({"pattern": "x", "path": "../"}))
        .await
        .expect_err("escape");
    assert_eq!(e.code(), "denied");
}

#[actix_rt::test]
async fn search_files_stops_at_its_cap() {
    let f = fixture_with(|s| s.max_search_results = 5);
    f.write("many.txt", "hit\n".repeat(50));
    f.write("more.txt", "hit\n".repeat(50));
    let t = SearchFiles(f.ws.clone());
    let v = call(&t, json!({"pattern": "hit"})).await.expect("capped");
    assert_eq!(v["count"], 5);
    assert_eq!(v["truncated"], true);
    let v = call(&t, json!({"pattern": "hit", "max_results": 2}))
        .await
        .expect("asked fewer");
    assert_eq!(v["count"], 2);
}
