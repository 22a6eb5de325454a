//! Confinement, atomic writes, diffs and the undo journal, on real files in temp dirs.

use super::*;

struct Fixture {
    ws: Workspace,
    outside: tempfile::TempDir,
    _project: tempfile::TempDir,
    undo: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let project = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    let undo = tempfile::tempdir().expect("tempdir");
    fs::create_dir_all(project.path().join("src")).expect("mkdir");
    fs::write(project.path().join("src/lib.rs"), "fn a() {}\n").expect("write");
    fs::write(outside.path().join("secret.txt"), "secret\n").expect("write");
    let ws = Workspace::open(WorkspaceSettings::new(project.path(), undo.path())).expect("open");
    Fixture {
        ws,
        outside,
        _project: project,
        undo,
    }
}

fn escapes(e: PathError) -> bool {
    matches!(e, PathError::Escapes { .. })
}

#[test]
fn paths_inside_resolve_relative_to_the_root() {
    let f = fixture();
    let r = f.ws.resolve("src/lib.rs").expect("inside");
    assert_eq!(r.rel, "src/lib.rs");
    assert_eq!(r.abs, f.ws.root().join("src/lib.rs"));
    assert_eq!(
        f.ws.resolve("./src/../src/lib.rs")
            .expect("stays inside")
            .rel,
        "src/lib.rs"
    );
    assert_eq!(f.ws.resolve(".").expect("root").rel, ".");
    let abs = f.ws.root().join("src/lib.rs");
    assert_eq!(
        f.ws.resolve(&abs.display().to_string())
            .expect("absolute inside")
            .rel,
        "src/lib.rs"
    );
    // A file that does not exist yet, under directories that do not exist either.
    let r =
        f.ws.resolve("new/deeper/file.txt")
            .expect("non-existent parent");
    assert_eq!(r.rel, "new/deeper/file.txt");
    assert!(r.abs.starts_with(f.ws.root()));
}

#[test]
fn dot_dot_and_absolute_paths_outside_are_refused() {
    let f = fixture();
    assert!(escapes(f.ws.resolve("../x").expect_err("..")));
    assert!(escapes(f.ws.resolve("src/../../x").expect_err("src/../..")));
    assert!(escapes(
        f.ws.resolve("new/../../etc/passwd")
            .expect_err("via a missing dir")
    ));
    let secret = f.outside.path().join("secret.txt");
    let e =
        f.ws.resolve(&secret.display().to_string())
            .expect_err("absolute outside");
    assert!(escapes(e));
    assert!(escapes(f.ws.resolve("/etc/passwd").expect_err("/etc")));
    assert!(matches!(
        f.ws.resolve("").expect_err("empty"),
        PathError::Empty
    ));
    assert!(matches!(
        f.ws.resolve("a\0b").expect_err("nul"),
        PathError::Nul
    ));
    let msg = f.ws.resolve("../x").expect_err("..").to_string();
    assert!(msg.contains("outside the project"), "{msg}");
}

#[cfg(unix)]
#[test]
fn symlinks_that_lead_out_are_refused_and_inside_ones_followed() {
    use std::os::unix::fs::symlink;
    let f = fixture();
    let root = f.ws.root().to_path_buf();
    symlink(f.outside.path(), root.join("out_dir")).expect("symlink");
    symlink(f.outside.path().join("secret.txt"), root.join("out_file")).expect("symlink");
    symlink(root.join("src"), root.join("in_dir")).expect("symlink");
    symlink("/nonexistent/target", root.join("dangling")).expect("symlink");

    for p in [
        "out_dir/secret.txt",
        "out_file",
        "out_dir",
        "out_dir/new.txt",
    ] {
        let e = f.ws.resolve(p).expect_err(p);
        assert!(matches!(e, PathError::SymlinkEscape { .. }), "{p}: {e}");
        assert!(e.is_confinement());
    }
    assert_eq!(
        f.ws.resolve("in_dir/lib.rs").expect("inside").rel,
        "src/lib.rs"
    );
    let e = f.ws.resolve("dangling").expect_err("dangling");
    assert!(e.to_string().contains("does not exist"), "{e}");
}

#[test]
fn writes_into_vcs_metadata_are_refused() {
    let f = fixture();
    for p in [".git/config", "sub/.hg/hgrc", ".jj/repo"] {
        let e = f.ws.resolve_for_write(p).expect_err(p);
        assert!(matches!(e, PathError::VcsMetadata(..)), "{p}: {e}");
    }
    assert!(
        f.ws.resolve_for_write(".").is_err(),
        "the root is not a file"
    );
    assert!(f.ws.resolve_for_write(".gitignore").is_ok());
}

#[test]
fn write_journals_and_undo_restores_or_removes() {
    let f = fixture();
    let lib = f.ws.resolve_for_write("src/lib.rs").expect("lib");
    let id1 =
        f.ws.write(&lib, b"fn b() {}\n", "edit_file")
            .expect("write");
    assert_eq!(fs::read_to_string(&lib.abs).expect("read"), "fn b() {}\n");
    let new = f.ws.resolve_for_write("docs/new.md").expect("new");
    let id2 = f.ws.write(&new, b"# New\n", "write_file").expect("create");
    assert!(id2 > id1);
    assert_eq!(f.ws.undo_count().expect("count"), 2);

    // Another Workspace on the same project (another process) sees the same journal.
    let again = Workspace::open(WorkspaceSettings::new(f.ws.root(), f.undo.path())).expect("open");
    let plan = again.plan_undo(false).expect("plan");
    assert_eq!(plan.target.rel, "docs/new.md");
    assert!(plan.previous.is_none());
    assert!(
        plan.diff.diff.contains("+++ /dev/null"),
        "{}",
        plan.diff.diff
    );
    again.undo(false).expect("undo create");
    assert!(!new.abs.exists(), "the created file is removed");

    let plan = f.ws.undo(false).expect("undo edit");
    assert_eq!(plan.entry.tool, "edit_file");
    assert_eq!(fs::read_to_string(&lib.abs).expect("read"), "fn a() {}\n");
    assert_eq!(f.ws.undo_count().expect("count"), 0);
    let e = f.ws.undo(false).expect_err("nothing left");
    assert!(e.to_string().contains("nothing to undo"), "{e}");
}

#[test]
fn undo_refuses_to_lose_later_changes_unless_forced() {
    let f = fixture();
    let lib = f.ws.resolve_for_write("src/lib.rs").expect("lib");
    f.ws.write(&lib, b"fn b() {}\n", "write_file")
        .expect("write");
    fs::write(&lib.abs, "fn user_edit() {}\n").expect("user edit");
    let e = f.ws.undo(false).expect_err("changed since");
    assert!(e.to_string().contains("changed since"), "{e}");
    assert_eq!(
        fs::read_to_string(&lib.abs).expect("read"),
        "fn user_edit() {}\n",
        "untouched"
    );
    f.ws.undo(true).expect("forced");
    assert_eq!(fs::read_to_string(&lib.abs).expect("read"), "fn a() {}\n");
}

#[test]
fn the_journal_is_bounded() {
    let project = tempfile::tempdir().expect("tempdir");
    let undo = tempfile::tempdir().expect("tempdir");
    let mut s = WorkspaceSettings::new(project.path(), undo.path());
    s.undo_depth = 3;
    s.undo_bytes = 1000;
    let ws = Workspace::open(s).expect("open");
    let r = ws.resolve_for_write("f.txt").expect("f");
    for i in 0..6 {
        ws.write(&r, format!("v{i}\n").as_bytes(), "write_file")
            .expect("write");
    }
    assert_eq!(ws.undo_count().expect("count"), 3, "depth");
    // Big previous contents: the byte budget drops the older ones (the newest stays).
    let big = vec![b'x'; 600];
    ws.write(&r, &big, "write_file").expect("big");
    ws.write(&r, &big, "write_file").expect("big again");
    ws.write(&r, b"small\n", "write_file").expect("small");
    let kept = ws.undo_count().expect("count");
    assert!(kept <= 2, "600+600 bytes do not fit 1000: {kept}");
    ws.undo(false).expect("undo newest");
    assert_eq!(fs::read(&r.abs).expect("read"), big);
}

#[test]
fn files_over_the_limit_are_refused() {
    let project = tempfile::tempdir().expect("tempdir");
    let undo = tempfile::tempdir().expect("tempdir");
    let mut s = WorkspaceSettings::new(project.path(), undo.path());
    s.max_file_bytes = 10;
    let ws = Workspace::open(s).expect("open");
    fs::write(project.path().join("big.txt"), "0123456789abc").expect("write");
    let big = ws.resolve_for_write("big.txt").expect("big");
    assert!(ws
        .read_existing(&big)
        .expect_err("too big")
        .to_string()
        .contains("max_file_bytes"));
    let small = ws.resolve_for_write("small.txt").expect("small");
    assert!(ws.write(&small, b"0123456789abc", "write_file").is_err());
    assert!(!small.abs.exists());
    assert_eq!(
        ws.undo_count().expect("count"),
        0,
        "a refused write leaves no entry"
    );
}

#[test]
fn diffs_count_lines_and_are_cut_when_long() {
    let d = diff(
        "a.txt",
        Some(b"one\ntwo\nthree\n"),
        Some(b"one\n2\nthree\nfour\n"),
        10_000,
    );
    assert_eq!((d.added, d.removed), (2, 1));
    assert!(
        d.diff.starts_with("--- a/a.txt\n+++ b/a.txt\n"),
        "{}",
        d.diff
    );
    assert!(d.diff.contains("-two\n+2\n"), "{}", d.diff);
    let created = diff("n.txt", None, Some(b"x\n"), 10_000);
    assert!(
        created.diff.starts_with("--- /dev/null\n+++ b/n.txt\n"),
        "{}",
        created.diff
    );

    let long: String = (0..2000).map(|i| format!("line {i}\n")).collect();
    let cut = diff("l.txt", None, Some(long.as_bytes()), 1000);
    assert!(cut.diff.len() < 1100, "{}", cut.diff.len());
    assert!(cut.diff.contains("diff cut:"), "says so");
    assert_eq!(cut.added, 2000, "counts are of the whole diff");

    let bin = diff("b.bin", Some(b"\0\x01"), Some(b"text\n"), 1000);
    assert!(bin.diff.starts_with("Binary file b.bin"), "{}", bin.diff);
}

#[test]
fn binary_is_a_nul_in_the_first_8000_bytes() {
    assert!(is_binary(b"abc\0def"));
    assert!(!is_binary("héllo\n".as_bytes()));
    let mut late = vec![b'a'; 9000];
    late[8500] = 0;
    assert!(!is_binary(&late), "as Git: only the start is looked at");
}
