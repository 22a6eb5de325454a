//! Fossil, through `fossil` and its plain listings (`changes`, `extras`, `timeline -F`).

use super::{BlameLine, Commit, FileState, FileStatus, Repo, VcsError};

async fn fossil(repo: &Repo, args: &[&str]) -> Result<String, VcsError> {
    // Fossil refuses to work without a user name; a service may have none in its
    // environment.
    let user = std::env::var("USER").unwrap_or_else(|_| super::AUTHOR_NAME.to_string());
    repo.run_with(args, &[("USER", user.as_str())]).await
}

pub(super) async fn status(repo: &Repo) -> Result<Vec<FileStatus>, VcsError> {
    // `--differ`: the changes and the unmanaged files, in one run.
    let args = ["changes", "--differ", "--classify"];
    let out = fossil(repo, &args).await?;
    parse_changes(&out).map_err(|e| repo.bad_output(&args, e))
}

/// `fossil changes`: a state word, spaces, the path (`RENAMED` ones as `old -> new`).
fn parse_changes(out: &str) -> Result<Vec<FileStatus>, String> {
    let mut files = Vec::new();
    for l in out.lines().filter(|l| !l.trim().is_empty()) {
        let (word, path) = l
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("line `{l}`"))?;
        let path = path.trim();
        let (state, path, from) = match word {
            "EDITED"
            | "UPDATED_BY_MERGE"
            | "UPDATED_BY_INTEGRATE"
            | "EXECUTABLE"
            | "UNEXEC"
            | "SYMLINK"
            | "UNLINK" => (FileState::Modified, path, None),
            "ADDED" | "ADDED_BY_MERGE" | "ADDED_BY_INTEGRATE" => (FileState::Added, path, None),
            "DELETED" => (FileState::Deleted, path, None),
            "MISSING" | "NOT_A_FILE" => (FileState::Missing, path, None),
            "CONFLICT" => (FileState::Conflicted, path, None),
            "EXTRA" => (FileState::Untracked, path, None),
            "RENAMED" => match path.split_once(" -> ") {
                Some((from, to)) => (FileState::Renamed, to, Some(from.to_string())),
                None => (FileState::Renamed, path, None),
            },
            other => return Err(format!("unknown state `{other}` in `{l}`")),
        };
        files.push(FileStatus {
            path: path.to_string(),
            state,
            from,
        });
    }
    Ok(files)
}

pub(super) async fn diff(repo: &Repo, rev: Option<&str>) -> Result<String, VcsError> {
    match rev {
        Some(r) => fossil(repo, &["diff", "--from", r]).await,
        None => fossil(repo, &["diff"]).await,
    }
}

pub(super) async fn log(repo: &Repo, limit: usize) -> Result<Vec<Commit>, VcsError> {
    let n = limit.to_string();
    let args = ["timeline", "-n", &n, "-t", "ci", "-F", "%H|%a|%d|%c"];
    let out = fossil(repo, &args).await?;
    out.lines()
        // Trailers: "--- entry limit (N) reached ---", "+++ no more data (N) +++".
        .filter(|l| !l.trim().is_empty() && !l.starts_with("--- ") && !l.starts_with("+++ "))
        .map(|l| match l.splitn(4, '|').collect::<Vec<_>>().as_slice() {
            [id, author, date, comment] => Ok(Commit {
                id: id.to_string(),
                author: author.to_string(),
                date: date.to_string(),
                // The timeline joins a message's lines with spaces: a blank line
                // between the subject and the body becomes two.
                summary: comment.split("  ").next().unwrap_or("").trim().to_string(),
            }),
            _ => Err(repo.bad_output(&args, format!("line `{l}`"))),
        })
        .take(limit)
        .collect()
}

pub(super) async fn blame(repo: &Repo, path: &str) -> Result<Vec<BlameLine>, VcsError> {
    let args = ["blame", "--", path];
    let out = fossil(repo, &args).await?;
    // "<hash> <date> <user>: <text>", the user right-aligned.
    out.lines()
        .enumerate()
        .map(|(i, l)| {
            let (head, text) = l
                .split_once(": ")
                .or_else(|| l.strip_suffix(':').map(|h| (h, "")))
                .ok_or_else(|| repo.bad_output(&args, format!("line `{l}`")))?;
            let mut f = head.split_whitespace();
            let id = f.next().unwrap_or("").to_string();
            let author = f.nth(1).unwrap_or("").to_string();
            Ok(BlameLine {
                line: i + 1,
                id,
                author,
                text: text.to_string(),
            })
        })
        .collect()
}

pub(super) async fn show(repo: &Repo, rev: &str) -> Result<String, VcsError> {
    let info = fossil(repo, &["info", rev]).await?;
    let diff = fossil(repo, &["diff", "--checkin", rev]).await?;
    Ok(format!("{info}\n{diff}"))
}

/// The repository user to check in as: `$USER` where the repository knows it, else its
/// first own user (Fossil refuses a user it does not know; `fossil init` made one).
async fn login(repo: &Repo) -> Result<String, VcsError> {
    const ROLES: [&str; 4] = ["anonymous", "developer", "nobody", "reader"];
    let list = fossil(repo, &["user", "list"]).await?;
    let names: Vec<&str> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    if let Ok(me) = std::env::var("USER") {
        if names.contains(&me.as_str()) {
            return Ok(me);
        }
    }
    names
        .into_iter()
        .find(|n| !ROLES.contains(n))
        .map(str::to_string)
        .ok_or_else(|| {
            VcsError::Invalid(
                "the Fossil repository has no user to check in as (add one: fossil user new)"
                    .into(),
            )
        })
}

pub(super) async fn commit(repo: &Repo, message: &str) -> Result<Commit, VcsError> {
    let user = login(repo).await?;
    fossil(repo, &["addremove"]).await?;
    let args = ["commit", "-U", &user, "-m", message, "--no-warnings"];
    let out = fossil(repo, &args).await?;
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("New_Version: "))
        .map(str::trim)
        .ok_or_else(|| {
            repo.bad_output(&args[..1], format!("no New_Version in `{}`", out.trim()))
        })?;
    log(repo, 1)
        .await?
        .into_iter()
        .next()
        .filter(|c| c.id == id)
        .ok_or_else(|| VcsError::Failed {
            command: "fossil commit".into(),
            message: format!("check-in {id} is not in the timeline"),
        })
}

pub(super) async fn undo(repo: &Repo, last: &Commit) -> Result<String, VcsError> {
    if !status(repo).await?.is_empty() {
        return Err(VcsError::Invalid(
            "the working copy has changes; commit or revert them before undoing a commit".into(),
        ));
    }
    let user = login(repo).await?;
    fossil(repo, &["merge", "--backout", &last.id]).await?;
    let message = format!(
        "Back out {}: {}",
        &last.id[..last.id.len().min(10)],
        last.summary
    );
    fossil(
        repo,
        &["commit", "-U", &user, "-m", &message, "--no-warnings"],
    )
    .await?;
    Ok(format!(
        "check-ins are kept for good in Fossil, so {} was backed out by a new check-in (\"{message}\")",
        &last.id[..last.id.len().min(10)]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_lines_parse() {
        let out = "EDITED     src/a.rs\nADDED      b.rs\nRENAMED    old.rs -> new.rs\nMISSING    gone.rs\nEXTRA      n.txt\n";
        let got: Vec<(String, FileState, Option<String>)> = parse_changes(out)
            .unwrap()
            .into_iter()
            .map(|f| (f.path, f.state, f.from))
            .collect();
        assert_eq!(
            got,
            vec![
                ("src/a.rs".into(), FileState::Modified, None),
                ("b.rs".into(), FileState::Added, None),
                ("new.rs".into(), FileState::Renamed, Some("old.rs".into())),
                ("gone.rs".into(), FileState::Missing, None),
                ("n.txt".into(), FileState::Untracked, None),
            ]
        );
        assert!(parse_changes("WHATEVER x\n").is_err());
    }
}
