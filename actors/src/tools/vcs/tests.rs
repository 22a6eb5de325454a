//! Every operation on real repositories of every VCS, made in temp dirs with the real
//! programs (installed by `scripts/setup`).

use std::path::Path;
use std::process::Command;

use super::*;

fn run(dir: &Path, program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("USER", "tester")
        .env("HGPLAIN", "1")
        .output()
        .unwrap_or_else(|e| panic!("{program} (installed by scripts/setup): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh working copy of `kind` in `tmp`; returns its root.
fn working_copy(kind: VcsKind, tmp: &Path) -> std::path::PathBuf {
    let wc = tmp.join("wc");
    match kind {
        VcsKind::Git => {
            std::fs::create_dir(&wc).unwrap();
            run(&wc, "git", &["init", "-q"]);
        }
        VcsKind::Hg => {
            std::fs::create_dir(&wc).unwrap();
            run(&wc, "hg", &["init"]);
        }
        VcsKind::Svn => {
            run(tmp, "svnadmin", &["create", "repo"]);
            let url = format!("file://{}/repo", tmp.display());
            run(tmp, "svn", &["checkout", "-q", &url, "wc"]);
        }
        VcsKind::Fossil => {
            run(tmp, "fossil", &["init", "repo.fossil"]);
            std::fs::create_dir(&wc).unwrap();
            run(&wc, "fossil", &["open", "../repo.fossil"]);
        }
        VcsKind::Jj => unreachable!("not installed here"),
    }
    wc
}

async fn every_operation(kind: VcsKind) {
    let tmp = tempfile::tempdir().unwrap();
    let root = working_copy(kind, tmp.path());
    assert!(matches!(
        detect(&root).expect("detected").commit("empty").await,
        Err(VcsError::Invalid(m)) if m.contains("nothing to commit")
    ));
    std::fs::create_dir(root.join("src")).unwrap();
    // Found from a directory inside it.
    let repo = detect(&root.join("src")).expect("detected");
    assert_eq!(repo.kind(), kind);
    assert_eq!(repo.root(), root.canonicalize().unwrap());

    std::fs::write(root.join("src/a.txt"), "one\ntwo\n").unwrap();
    let first = repo
        .commit("First commit\n\nwith a body")
        .await
        .expect("commit");
    assert_eq!(first.summary, "First commit");
    assert!(
        repo.status().await.unwrap().is_empty(),
        "clean after a commit"
    );

    std::fs::write(root.join("src/a.txt"), "one\ntwo\nthree\n").unwrap();
    std::fs::write(root.join("new file.txt"), "new\n").unwrap();
    let status = repo.status().await.unwrap();
    let state = |p: &str| status.iter().find(|f| f.path == p).map(|f| f.state);
    assert_eq!(state("src/a.txt"), Some(FileState::Modified), "{status:?}");
    assert_eq!(
        state("new file.txt"),
        Some(FileState::Untracked),
        "{status:?}"
    );
    let diff = repo.diff(None).await.unwrap();
    assert!(diff.contains("+three"), "{diff}");

    let second = repo.commit("Second: three").await.unwrap();
    assert!(repo.status().await.unwrap().is_empty());
    let log = repo.log(10).await.unwrap();
    assert_eq!(log[0], second);
    assert_eq!(log[1].id, first.id);
    assert!(
        !second.author.is_empty() && !second.date.is_empty(),
        "{second:?}"
    );
    // Against the first commit, the working copy has the second's change.
    let since = repo.diff(Some(&first.id)).await.unwrap();
    assert!(since.contains("+three"), "{since}");

    let blame = repo.blame("src/a.txt").await.unwrap();
    assert_eq!(blame.len(), 3, "{blame:?}");
    assert_eq!(blame[2].text, "three");
    assert_eq!(blame[2].line, 3);
    assert!(same_id(&second.id, &blame[2].id), "{blame:?} vs {second:?}");
    assert!(same_id(&first.id, &blame[0].id), "{blame:?} vs {first:?}");

    let shown = repo.show(&second.id).await.unwrap();
    assert!(
        shown.contains("+three") && shown.contains("Second: three"),
        "{shown}"
    );

    // Only the last commit is undone, and only by its id.
    assert!(matches!(
        repo.undo_commit(&first.id).await,
        Err(VcsError::NotLastCommit { .. })
    ));
    let undone = repo.undo_commit(&second.id).await.expect("undo");
    let log = repo.log(10).await.unwrap();
    match kind {
        VcsKind::Git | VcsKind::Hg => {
            // Out of history, changes kept.
            assert_eq!(log[0].id, first.id, "{undone}");
            let status = repo.status().await.unwrap();
            assert!(status.iter().any(|f| f.path == "src/a.txt"), "{status:?}");
            assert_eq!(
                std::fs::read_to_string(root.join("src/a.txt")).unwrap(),
                "one\ntwo\nthree\n"
            );
        }
        _ => {
            // Reversed by a new commit.
            assert_eq!(log[1].id, second.id, "{undone}");
            assert!(repo.status().await.unwrap().is_empty());
            assert_eq!(
                std::fs::read_to_string(root.join("src/a.txt")).unwrap(),
                "one\ntwo\n"
            );
            assert!(!root.join("new file.txt").exists());
        }
    }

    // Nothing from a request reaches the program as an option or leaves the working copy.
    for bad in ["--output=/tmp/x", "HEAD; rm -rf /", "", "a b"] {
        assert!(
            matches!(repo.show(bad).await, Err(VcsError::Invalid(_))),
            "{bad}"
        );
    }
    for bad in ["../x", "/etc/passwd", "-rf", "src/../../x"] {
        assert!(
            matches!(repo.blame(bad).await, Err(VcsError::Invalid(_))),
            "{bad}"
        );
    }
    std::os::unix::fs::symlink("/etc", root.join("out")).unwrap();
    assert!(matches!(
        repo.blame("out/passwd").await,
        Err(VcsError::Invalid(_))
    ));
}

#[actix_rt::test]
async fn git_every_operation() {
    every_operation(VcsKind::Git).await;
}

#[actix_rt::test]
async fn mercurial_every_operation() {
    every_operation(VcsKind::Hg).await;
}

#[actix_rt::test]
async fn subversion_every_operation() {
    every_operation(VcsKind::Svn).await;
}

#[actix_rt::test]
async fn fossil_every_operation() {
    every_operation(VcsKind::Fossil).await;
}

#[test]
fn jj_is_detected_first_and_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join(".jj")).unwrap();
    std::fs::create_dir(tmp.path().join(".git")).unwrap();
    let e = detect(tmp.path()).unwrap_err();
    assert!(
        matches!(
            e,
            VcsError::NotInstalled {
                kind: VcsKind::Jj,
                ..
            } | VcsError::Unsupported(VcsKind::Jj)
        ),
        "{e}"
    );
}

#[test]
fn outside_any_working_copy_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let e = detect(tmp.path()).unwrap_err();
    // /tmp itself is in no working copy on a test machine.
    assert!(matches!(e, VcsError::NotARepository(_)), "{e}");
}

#[actix_rt::test]
async fn a_hung_program_is_stopped_at_the_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let root = working_copy(VcsKind::Git, tmp.path());
    let repo = detect(&root)
        .unwrap()
        .with_timeout(Duration::from_millis(300));
    // A command that waits for a lock nobody releases would hang; `git` reading a pipe
    // that never ends is the same.
    let t = std::time::Instant::now();
    let e = repo
        .run(&["-c", "alias.hang=!sleep 30", "hang"])
        .await
        .unwrap_err();
    assert!(matches!(e, VcsError::Timeout { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10));
}
