//! git, through `git` with porcelain output.

use super::{BlameLine, Commit, FileState, FileStatus, Repo, VcsError};

/// Options before every subcommand: no fsmonitor hook, no external diff, no colour, and
/// paths printed as they are (not quoted octal).
const HARDENED: [&str; 8] = [
    "-c",
    "core.fsmonitor=false",
    "-c",
    "diff.external=",
    "-c",
    "color.ui=false",
    "-c",
    "core.quotepath=false",
];

async fn git(repo: &Repo, args: &[&str]) -> Result<String, VcsError> {
    repo.run_after(&HARDENED, args).await
}

pub(super) async fn status(repo: &Repo) -> Result<Vec<FileStatus>, VcsError> {
    let args = ["status", "--porcelain=v2", "-z", "--untracked-files=all"];
    let out = git(repo, &args).await?;
    parse_status(&out).map_err(|e| repo.bad_output(&args, e))
}

/// `git status --porcelain=v2 -z`: NUL-ended records; a rename's record is followed by
/// its original path.
fn parse_status(out: &str) -> Result<Vec<FileStatus>, String> {
    let mut files = Vec::new();
    let mut records = out.split('\0').filter(|r| !r.is_empty());
    while let Some(r) = records.next() {
        let (tag, rest) = r.split_at(1);
        let rest = rest.trim_start();
        match tag {
            "1" => {
                // XY sub mH mI mW hH hI path
                let f: Vec<&str> = rest.splitn(8, ' ').collect();
                let [xy, .., path] = f.as_slice() else {
                    return Err(format!("short record `{r}`"));
                };
                files.push(FileStatus {
                    path: path.to_string(),
                    state: state_of(xy),
                    from: None,
                });
            }
            "2" => {
                // XY sub mH mI mW hH hI Xscore path, then the original path.
                let f: Vec<&str> = rest.splitn(9, ' ').collect();
                let [xy, .., path] = f.as_slice() else {
                    return Err(format!("short record `{r}`"));
                };
                let from = records.next().map(str::to_string);
                let copied = xy.contains('C');
                files.push(FileStatus {
                    path: path.to_string(),
                    state: if copied {
                        FileState::Copied
                    } else {
                        FileState::Renamed
                    },
                    from,
                });
            }
            "u" => {
                let f: Vec<&str> = rest.splitn(10, ' ').collect();
                let Some(path) = f.last() else {
                    return Err(format!("short record `{r}`"));
                };
                files.push(FileStatus {
                    path: path.to_string(),
                    state: FileState::Conflicted,
                    from: None,
                });
            }
            "?" => files.push(FileStatus {
                path: rest.to_string(),
                state: FileState::Untracked,
                from: None,
            }),
            "!" | "#" => {}
            _ => return Err(format!("unknown record `{r}`")),
        }
    }
    Ok(files)
}

fn state_of(xy: &str) -> FileState {
    let (x, y) = (xy.chars().next(), xy.chars().nth(1));
    if x == Some('A') {
        FileState::Added
    } else if x == Some('D') {
        FileState::Deleted
    } else if y == Some('D') {
        FileState::Missing
    } else {
        FileState::Modified
    }
}

pub(super) async fn diff(repo: &Repo, rev: Option<&str>) -> Result<String, VcsError> {
    match git(
        repo,
        &["diff", "--no-ext-diff", rev.unwrap_or("HEAD"), "--"],
    )
    .await
    {
        // No commit yet: everything staged is new.
        Err(VcsError::Failed { .. }) if rev.is_none() && head(repo).await.is_err() => {
            git(repo, &["diff", "--no-ext-diff", "--cached"]).await
        }
        other => other,
    }
}

async fn head(repo: &Repo) -> Result<String, VcsError> {
    Ok(git(repo, &["rev-parse", "--verify", "-q", "HEAD"])
        .await?
        .trim()
        .to_string())
}

pub(super) async fn log(repo: &Repo, limit: usize) -> Result<Vec<Commit>, VcsError> {
    if head(repo).await.is_err() {
        return Ok(Vec::new());
    }
    let n = format!("-n{limit}");
    let args = ["log", &n, "-z", "--format=%H%x1f%an%x1f%aI%x1f%s"];
    let out = git(repo, &args).await?;
    out.split('\0')
        .filter(|r| !r.trim().is_empty())
        .map(|r| {
            let f: Vec<&str> = r.trim_start_matches('\n').split('\x1f').collect();
            match f.as_slice() {
                [id, author, date, subject] => Ok(Commit {
                    id: id.to_string(),
                    author: author.to_string(),
                    date: date.to_string(),
                    summary: subject.to_string(),
                }),
                _ => Err(repo.bad_output(&args, format!("record `{r}`"))),
            }
        })
        .collect()
}

pub(super) async fn blame(repo: &Repo, path: &str) -> Result<Vec<BlameLine>, VcsError> {
    let args = ["blame", "--line-porcelain", "--", path];
    let out = git(repo, &args).await?;
    // Per line: "<sha> <orig> <final> [<n>]", header lines, then "\t<text>".
    let mut lines = Vec::new();
    let (mut id, mut author, mut line) = (String::new(), String::new(), 0usize);
    for l in out.lines() {
        if let Some(text) = l.strip_prefix('\t') {
            lines.push(BlameLine {
                line,
                id: std::mem::take(&mut id),
                author: std::mem::take(&mut author),
                text: text.to_string(),
            });
        } else if let Some(a) = l.strip_prefix("author ") {
            author = a.to_string();
        } else if id.is_empty() {
            let mut f = l.split(' ');
            id = f.next().unwrap_or("").to_string();
            line = f.nth(1).and_then(|n| n.parse().ok()).unwrap_or(0);
        }
    }
    if lines.is_empty() && !out.trim().is_empty() {
        return Err(repo.bad_output(&args, "no lines in the blame"));
    }
    Ok(lines)
}

pub(super) async fn show(repo: &Repo, rev: &str) -> Result<String, VcsError> {
    git(
        repo,
        &["show", "--no-ext-diff", "--stat", "--patch", rev, "--"],
    )
    .await
}

pub(super) async fn commit(repo: &Repo, message: &str) -> Result<Commit, VcsError> {
    git(repo, &["add", "--all"]).await?;
    let identity = git(repo, &["config", "user.email"]).await.is_ok();
    let env: &[(&str, &str)] = if identity {
        &[]
    } else {
        &[
            ("GIT_AUTHOR_NAME", super::AUTHOR_NAME),
            ("GIT_AUTHOR_EMAIL", super::AUTHOR_EMAIL),
            ("GIT_COMMITTER_NAME", super::AUTHOR_NAME),
            ("GIT_COMMITTER_EMAIL", super::AUTHOR_EMAIL),
        ]
    };
    let all: Vec<&str> = HARDENED
        .iter()
        .copied()
        .chain([
            "commit",
            "--no-verify",
            "--no-gpg-sign",
            "-q",
            "-m",
            message,
        ])
        .collect();
    repo.run_with(&all, env).await?;
    repo.just_committed(message).await
}

pub(super) async fn undo(repo: &Repo, last: &Commit) -> Result<String, VcsError> {
    let parent = format!("{}^", last.id);
    if git(repo, &["rev-parse", "--verify", "-q", &parent])
        .await
        .is_err()
    {
        // The first commit: remove the branch's only commit, keep the files staged.
        git(repo, &["update-ref", "-d", "HEAD"]).await?;
    } else {
        git(repo, &["reset", "--soft", "-q", &parent]).await?;
    }
    Ok(format!(
        "removed commit {} (\"{}\") from history; its changes are kept in the working copy",
        short(&last.id),
        last.summary
    ))
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn porcelain_v2_records_parse() {
        let out = "1 .M N... 100644 100644 100644 aa bb src/a b.rs\0\
                   1 A. N... 000000 100644 100644 00 cc new.rs\0\
                   2 R. N... 100644 100644 100644 dd dd R100 moved.rs\0old.rs\0\
                   u UU N... 100644 100644 100644 100644 e1 e2 e3 both.rs\0\
                   ? notes.txt\0\
                   1 .D N... 100644 100644 000000 ff ff gone.rs\0";
        let s = parse_status(out).unwrap();
        let got: Vec<(&str, FileState, Option<&str>)> = s
            .iter()
            .map(|f| (f.path.as_str(), f.state, f.from.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("src/a b.rs", FileState::Modified, None),
                ("new.rs", FileState::Added, None),
                ("moved.rs", FileState::Renamed, Some("old.rs")),
                ("both.rs", FileState::Conflicted, None),
                ("notes.txt", FileState::Untracked, None),
                ("gone.rs", FileState::Missing, None),
            ]
        );
        assert!(parse_status("1 .M\0").is_err());
        assert!(parse_status("Z what\0").is_err());
    }
}
