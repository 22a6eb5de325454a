//! Mercurial, through `hg` with `HGPLAIN=1` and JSON or template output.

use serde::Deserialize;

use super::{BlameLine, Commit, FileState, FileStatus, Repo, VcsError};

/// Options before every command: never prompt, no pager, no colour.
const HARDENED: [&str; 5] = [
    "--noninteractive",
    "--config",
    "ui.paginate=false",
    "--config",
    "ui.color=never",
];

async fn hg(repo: &Repo, args: &[&str]) -> Result<String, VcsError> {
    repo.run_after(&HARDENED, args).await
}

#[derive(Deserialize)]
struct StatusEntry {
    path: String,
    status: String,
    #[serde(default)]
    source: Option<String>,
}

pub(super) async fn status(repo: &Repo) -> Result<Vec<FileStatus>, VcsError> {
    let args = ["status", "--copies", "-Tjson"];
    let out = hg(repo, &args).await?;
    let entries: Vec<StatusEntry> =
        serde_json::from_str(&out).map_err(|e| repo.bad_output(&args, e))?;
    let mut files: Vec<FileStatus> = Vec::new();
    for e in entries {
        let state = match e.status.as_str() {
            "M" => FileState::Modified,
            "A" if e.source.is_some() => FileState::Copied,
            "A" => FileState::Added,
            "R" => FileState::Deleted,
            "!" => FileState::Missing,
            "?" => FileState::Untracked,
            // Clean and ignored files are not listed without asking.
            _ => continue,
        };
        files.push(FileStatus {
            path: e.path,
            state,
            from: e.source,
        });
    }
    // A rename is a copy whose source was removed.
    let removed: Vec<String> = files
        .iter()
        .filter(|f| f.state == FileState::Deleted)
        .map(|f| f.path.clone())
        .collect();
    for f in files.iter_mut() {
        if f.state == FileState::Copied && f.from.as_ref().is_some_and(|s| removed.contains(s)) {
            f.state = FileState::Renamed;
        }
    }
    let renamed: Vec<String> = files
        .iter()
        .filter(|f| f.state == FileState::Renamed)
        .filter_map(|f| f.from.clone())
        .collect();
    files.retain(|f| !(f.state == FileState::Deleted && renamed.contains(&f.path)));
    // Conflicts exist only during a merge (another `hg` start costs ~100 ms).
    if !repo.root().join(".hg/merge/state").exists() {
        return Ok(files);
    }
    let conflicts = hg(repo, &["resolve", "--list", "-Tjson"]).await?;
    if let Ok(list) = serde_json::from_str::<Vec<StatusEntry>>(&conflicts) {
        for c in list.into_iter().filter(|c| c.status == "U") {
            match files.iter_mut().find(|f| f.path == c.path) {
                Some(f) => f.state = FileState::Conflicted,
                None => files.push(FileStatus {
                    path: c.path,
                    state: FileState::Conflicted,
                    from: None,
                }),
            }
        }
    }
    Ok(files)
}

pub(super) async fn diff(repo: &Repo, rev: Option<&str>) -> Result<String, VcsError> {
    match rev {
        Some(r) => hg(repo, &["diff", "--git", "-r", r]).await,
        None => hg(repo, &["diff", "--git"]).await,
    }
}

/// `{node}`, author, ISO date and first line, as unit-separated fields of NUL-ended records.
const LOG_TEMPLATE: &str = "{node}\\x1f{author}\\x1f{date|isodatesec}\\x1f{desc|firstline}\\0";

pub(super) async fn log(repo: &Repo, limit: usize) -> Result<Vec<Commit>, VcsError> {
    let n = limit.to_string();
    let args = ["log", "-l", &n, "-T", LOG_TEMPLATE];
    let out = hg(repo, &args).await?;
    out.split('\0')
        .filter(|r| !r.is_empty())
        .map(|r| match r.split('\x1f').collect::<Vec<_>>().as_slice() {
            [id, author, date, subject] => Ok(Commit {
                id: id.to_string(),
                author: author.to_string(),
                date: date.to_string(),
                summary: subject.to_string(),
            }),
            _ => Err(repo.bad_output(&args, format!("record `{r}`"))),
        })
        .collect()
}

#[derive(Deserialize)]
struct Annotated {
    lines: Vec<AnnotatedLine>,
}

#[derive(Deserialize)]
struct AnnotatedLine {
    line: String,
    node: String,
    user: String,
}

pub(super) async fn blame(repo: &Repo, path: &str) -> Result<Vec<BlameLine>, VcsError> {
    let args = ["annotate", "-Tjson", "-u", "-c", "--", path];
    let out = hg(repo, &args).await?;
    let files: Vec<Annotated> =
        serde_json::from_str(&out).map_err(|e| repo.bad_output(&args, e))?;
    Ok(files
        .into_iter()
        .flat_map(|f| f.lines)
        .enumerate()
        .map(|(i, l)| BlameLine {
            line: i + 1,
            id: l.node,
            author: l.user,
            text: l.line.trim_end_matches('\n').to_string(),
        })
        .collect())
}

pub(super) async fn show(repo: &Repo, rev: &str) -> Result<String, VcsError> {
    hg(repo, &["log", "-r", rev, "-p", "--git", "-v"]).await
}

pub(super) async fn commit(repo: &Repo, message: &str) -> Result<Commit, VcsError> {
    let configured = hg(repo, &["config", "ui.username"]).await.is_ok();
    let author = format!("{} <{}>", super::AUTHOR_NAME, super::AUTHOR_EMAIL);
    let mut args = vec!["commit", "--addremove", "-m", message];
    if !configured {
        args.extend(["-u", &author]);
    }
    hg(repo, &args).await?;
    repo.just_committed(message).await
}

pub(super) async fn undo(repo: &Repo, last: &Commit) -> Result<String, VcsError> {
    let phase = hg(repo, &["phase", "-r", &last.id]).await?;
    if !phase.contains("draft") {
        return Err(VcsError::Invalid(format!(
            "commit {} is already shared ({}); it is not taken back",
            &last.id[..last.id.len().min(12)],
            phase.trim()
        )));
    }
    hg(
        repo,
        &[
            "--config",
            "extensions.strip=",
            "strip",
            "--keep",
            "-r",
            &last.id,
        ],
    )
    .await?;
    Ok(format!(
        "removed commit {} (\"{}\") from history (a backup bundle is in .hg/strip-backup); its changes are kept in the working copy",
        &last.id[..last.id.len().min(12)],
        last.summary
    ))
}
