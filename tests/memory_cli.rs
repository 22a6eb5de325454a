//! `coda memory ...` against the real binary and a real store in a temporary home, and
//! the store lock: a second `coda serve`, and `coda memory` while a server runs, get a
//! clear "already running" error (exit code 3) at once, not a hang.

mod common;

use std::time::{Duration, Instant};

use common::{Home, Server};
use serde_json::Value;

fn json(out: &common::Output) -> Value {
    assert_eq!(out.code, Some(0), "{out:?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"))
}

#[test]
fn memory_cli_add_list_search_forget_export() {
    let home = Home::new();
    let out = home.run(&["memory", "list"], &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("no memories"), "{out:?}");

    let a = json(&home.run(
        &[
            "memory",
            "add",
            "The user prefers green tea",
            "--tag",
            "preference",
            "--json",
        ],
        &[],
    ));
    let b = json(&home.run(&["memory", "add", "Dentist", "on", "Friday", "--json"], &[]));
    assert_eq!(a["tags"][0], "preference");
    assert_eq!(b["content"], "Dentist on Friday");

    let list = json(&home.run(&["memory", "list", "--json"], &[]));
    assert_eq!(list["total"], 2);
    assert_eq!(
        list["items"][0]["memory_id"], b["memory_id"],
        "newest first"
    );

    let found = json(&home.run(&["memory", "search", "green", "teas", "--json"], &[]));
    assert_eq!(found["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(found["items"][0]["memory_id"], a["memory_id"]);
    let text = home.run(&["memory", "search", "tea"], &[]);
    assert!(
        text.stdout.contains("green tea") && text.stdout.contains("[preference]"),
        "{text:?}"
    );

    let export = json(&home.run(&["memory", "export", "--json"], &[]));
    assert_eq!(export["memories"].as_array().map(Vec::len), Some(2));
    let md = home.run(&["memory", "export"], &[]);
    assert!(md.stdout.starts_with("# Coda memory export"), "{md:?}");
    let file = home.path().join("export.json");
    let out = home.run(
        &[
            "memory",
            "export",
            "--json",
            "--output",
            file.to_str().unwrap_or_default(),
        ],
        &[],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let saved: Value =
        serde_json::from_slice(&std::fs::read(&file).expect("export file")).expect("json");
    assert_eq!(saved["memories"], export["memories"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file)
            .expect("export file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the export is private");
        // A symlink planted where the export goes is not followed.
        let target = home.path().join("elsewhere");
        let link = home.path().join("planted.json");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let out = home.run(
            &[
                "memory",
                "export",
                "--output",
                link.to_str().unwrap_or_default(),
            ],
            &[],
        );
        assert_eq!(out.code, Some(1), "{out:?}");
        assert!(out.stderr.contains("symbolic link"), "{out:?}");
        assert!(!target.exists(), "nothing written through the link");
    }

    let id = a["memory_id"].as_str().unwrap_or_default();
    let out = home.run(&["memory", "forget", id], &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("forgot"), "{out:?}");
    let out = home.run(&["memory", "forget", id], &[]);
    assert_eq!(
        out.code,
        Some(1),
        "forgetting twice names the missing id: {out:?}"
    );
    assert!(out.stderr.contains(id), "{out:?}");
    let out = home.run(&["memory", "forget", "garbage!"], &[]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("not a memory id"), "{out:?}");
    let list = json(&home.run(&["memory", "list", "--json"], &[]));
    assert_eq!(list["total"], 1);
    let out = home.run(&["memory", "forget", "--session", "nope"], &[]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(json(&home.run(&["memory", "sessions", "--json"], &[]))
        .as_array()
        .is_some_and(Vec::is_empty));
}

#[test]
fn store_held_by_a_server_is_a_clear_error() {
    let server = Server::start(&[], &[]);
    let home = server.home.clone();

    let started = Instant::now();
    let out = home.run(&["memory", "list"], &[]);
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(out.stderr.contains("already running"), "{out:?}");
    assert!(out.stderr.contains("Stop the server"), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(20), "no waiting");

    // A second server on the same store: refused at once, not a hang or a corruption.
    let out = home.run(&["serve", "--port", "0"], &[]);
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(out.stderr.contains("already running"), "{out:?}");

    drop(server);
    // Once the server is gone the store opens, intact.
    let out = home.run(&["memory", "add", "after the server", "--json"], &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
}
