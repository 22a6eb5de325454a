//! Subversion, through `svn --non-interactive` with XML output.

use super::{summary, BlameLine, Commit, FileState, FileStatus, Repo, VcsError};

async fn svn(repo: &Repo, args: &[&str]) -> Result<String, VcsError> {
    // Options right after the subcommand: after a `--` they would be paths.
    let (sub, rest) = args.split_first().unwrap_or((&"", &[]));
    let all: Vec<&str> = std::iter::once(*sub)
        .chain(["--non-interactive", "--no-auth-cache"])
        .chain(rest.iter().copied())
        .collect();
    repo.run(&all).await
}

fn parse<'a>(
    repo: &Repo,
    args: &[&str],
    xml: &'a str,
) -> Result<roxmltree::Document<'a>, VcsError> {
    roxmltree::Document::parse(xml).map_err(|e| repo.bad_output(args, e))
}

pub(super) async fn status(repo: &Repo) -> Result<Vec<FileStatus>, VcsError> {
    let args = ["status", "--xml"];
    let out = svn(repo, &args).await?;
    let doc = parse(repo, &args, &out)?;
    let mut files = Vec::new();
    for entry in doc.descendants().filter(|n| n.has_tag_name("entry")) {
        let Some(path) = entry.attribute("path") else {
            continue;
        };
        let Some(wc) = entry.children().find(|n| n.has_tag_name("wc-status")) else {
            continue;
        };
        let copied = wc.attribute("copied") == Some("true");
        let state = match wc.attribute("item").unwrap_or("") {
            "modified" | "replaced" => FileState::Modified,
            "added" if copied => FileState::Copied,
            "added" => FileState::Added,
            "deleted" => FileState::Deleted,
            "missing" => FileState::Missing,
            "unversioned" => FileState::Untracked,
            "conflicted" => FileState::Conflicted,
            // Property-only changes show as `normal` with props="modified".
            "normal" if wc.attribute("props") == Some("modified") => FileState::Modified,
            _ => continue,
        };
        files.push(FileStatus {
            path: path.replace('\\', "/"),
            state,
            from: None,
        });
    }
    Ok(files)
}

pub(super) async fn diff(repo: &Repo, rev: Option<&str>) -> Result<String, VcsError> {
    match rev {
        Some(r) => svn(repo, &["diff", "-r", r]).await,
        None => svn(repo, &["diff"]).await,
    }
}

pub(super) async fn log(repo: &Repo, limit: usize) -> Result<Vec<Commit>, VcsError> {
    let n = limit.to_string();
    // From the repository's newest revision, not the working copy's (which lags until
    // `svn update`).
    let args = ["log", "--xml", "-l", &n, "-r", "HEAD:1"];
    let out = match svn(repo, &args).await {
        Ok(out) => out,
        // No revision 1 yet: an empty repository.
        Err(VcsError::Failed { message, .. }) if message.contains("No such revision") => {
            return Ok(Vec::new())
        }
        Err(e) => return Err(e),
    };
    let doc = parse(repo, &args, &out)?;
    let text = |n: roxmltree::Node, tag: &str| {
        n.children()
            .find(|c| c.has_tag_name(tag))
            .and_then(|c| c.text())
            .unwrap_or("")
            .to_string()
    };
    Ok(doc
        .descendants()
        .filter(|n| n.has_tag_name("logentry"))
        .map(|e| Commit {
            id: e.attribute("revision").unwrap_or("").to_string(),
            author: text(e, "author"),
            date: text(e, "date"),
            summary: summary(&text(e, "msg")),
        })
        .collect())
}

pub(super) async fn blame(repo: &Repo, path: &str) -> Result<Vec<BlameLine>, VcsError> {
    let args = ["blame", "--xml", "--", path];
    let out = svn(repo, &args).await?;
    let doc = parse(repo, &args, &out)?;
    // The XML has no line text: read the file beside it (what blame annotated).
    let content = std::fs::read_to_string(repo.root().join(path))
        .map_err(|e| repo.bad_output(&args, format!("reading {path}: {e}")))?;
    let texts: Vec<&str> = content.lines().collect();
    Ok(doc
        .descendants()
        .filter(|n| n.has_tag_name("entry"))
        .filter_map(|e| {
            let line: usize = e.attribute("line-number")?.parse().ok()?;
            let commit = e.children().find(|c| c.has_tag_name("commit"));
            Some(BlameLine {
                line,
                id: commit
                    .and_then(|c| c.attribute("revision"))
                    .unwrap_or("")
                    .to_string(),
                author: commit
                    .and_then(|c| c.children().find(|a| a.has_tag_name("author")))
                    .and_then(|a| a.text())
                    .unwrap_or("")
                    .to_string(),
                text: texts.get(line - 1).unwrap_or(&"").to_string(),
            })
        })
        .collect())
}

pub(super) async fn show(repo: &Repo, rev: &str) -> Result<String, VcsError> {
    let log = svn(repo, &["log", "-v", "-r", rev]).await?;
    let diff = svn(repo, &["diff", "-c", rev]).await?;
    Ok(format!("{log}\n{diff}"))
}

pub(super) async fn commit(repo: &Repo, message: &str) -> Result<Commit, VcsError> {
    // New files join the commit, as in the other VCSs; files deleted from disk leave it.
    svn(repo, &["add", "--force", "--parents", "-q", "."]).await?;
    for f in status(repo).await? {
        if f.state == FileState::Missing {
            svn(repo, &["delete", "-q", "--", &f.path]).await?;
        }
    }
    let out = svn(repo, &["commit", "-m", message]).await?;
    let rev = out
        .lines()
        .rev()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Committed revision ")
                .map(|r| r.trim_end_matches('.').to_string())
        })
        .ok_or_else(|| repo.bad_output(&["commit"], format!("no revision in `{}`", out.trim())))?;
    // The working copy's revision follows the commit (blame and diff use it).
    svn(repo, &["update", "-q"]).await?;
    log(repo, 1)
        .await?
        .into_iter()
        .find(|c| c.id == rev)
        .ok_or_else(|| VcsError::Failed {
            command: "svn commit".into(),
            message: format!("revision {rev} is not in the log"),
        })
}

pub(super) async fn undo(repo: &Repo, last: &Commit) -> Result<String, VcsError> {
    if !status(repo).await?.is_empty() {
        return Err(VcsError::Invalid(
            "the working copy has changes; commit or revert them before undoing a commit".into(),
        ));
    }
    svn(repo, &["update", "-q"]).await?;
    let reverse = format!("-{}", last.id);
    svn(repo, &["merge", "-q", "-c", &reverse, "."]).await?;
    let message = format!("Undo r{}: {}", last.id, last.summary);
    let out = svn(repo, &["commit", "-m", &message]).await?;
    svn(repo, &["update", "-q"]).await?;
    Ok(format!(
        "r{} is shared as soon as it is made, so its reverse was committed: {}",
        last.id,
        out.lines().last().unwrap_or("").trim()
    ))
}
