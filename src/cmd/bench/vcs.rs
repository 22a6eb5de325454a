//! `coda bench vcs`: the coding tools' version control on a generated project, per VCS:
//! status and diff through Coda's `Repo` beside the same program run directly (what the
//! wrapper's hardening, parsing and process handling add), medians of interleaved runs.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use coda_actors::tools::vcs::{detect, VcsKind};
use serde::Serialize;

/// `coda bench vcs` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct VcsBenchArgs {
    /// Files in the generated project (in directories of 50).
    #[arg(long, default_value_t = 2000)]
    pub files: usize,
    /// Rounds (each runs every measurement once, interleaved).
    #[arg(long, default_value_t = 7)]
    pub rounds: usize,
    /// Which VCSs (git, hg, svn, fossil).
    #[arg(long, value_delimiter = ',', default_values_t = ["git".to_string(), "hg".to_string(), "svn".to_string(), "fossil".to_string()])]
    pub vcs: Vec<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Row {
    vcs: String,
    files: usize,
    changed: usize,
    /// Medians, ms.
    status_ms: f64,
    status_direct_ms: f64,
    diff_ms: f64,
    diff_direct_ms: f64,
}

fn sh(dir: &Path, program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("HGPLAIN", "1")
        .env(
            "USER",
            std::env::var("USER").unwrap_or_else(|_| "coda".into()),
        )
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program} (scripts/setup installs it)"))?;
    if !out.status.success() {
        bail!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A committed project of `files` files with 1 % of them then changed; its root.
fn project(tmp: &Path, kind: VcsKind, files: usize) -> anyhow::Result<std::path::PathBuf> {
    let wc = tmp.join("wc");
    let commit = |wc: &Path| -> anyhow::Result<()> {
        match kind {
            VcsKind::Git => {
                sh(wc, "git", &["add", "-A"])?;
                sh(
                    wc,
                    "git",
                    &[
                        "-c",
                        "user.name=b",
                        "-c",
                        "user.email=b@b",
                        "commit",
                        "-qm",
                        "base",
                    ],
                )
            }
            VcsKind::Hg => sh(wc, "hg", &["commit", "-A", "-q", "-u", "b", "-m", "base"]),
            VcsKind::Svn => {
                sh(wc, "svn", &["add", "-q", "--force", "."])?;
                sh(wc, "svn", &["commit", "-q", "-m", "base"])?;
                sh(wc, "svn", &["update", "-q"])
            }
            VcsKind::Fossil => {
                sh(wc, "fossil", &["addremove"])?;
                sh(wc, "fossil", &["commit", "-m", "base", "--no-warnings"])
            }
            VcsKind::Jj => bail!("jj is not installed here"),
        }
    };
    match kind {
        VcsKind::Svn => {
            sh(tmp, "svnadmin", &["create", "repo"])?;
            let url = format!("file://{}/repo", tmp.display());
            sh(tmp, "svn", &["checkout", "-q", &url, "wc"])?;
        }
        VcsKind::Fossil => {
            sh(tmp, "fossil", &["init", "repo.fossil"])?;
            std::fs::create_dir(&wc)?;
            sh(&wc, "fossil", &["open", "../repo.fossil"])?;
        }
        _ => {
            std::fs::create_dir(&wc)?;
            sh(&wc, kind.program(), &["init", "-q"])?;
        }
    }
    for i in 0..files {
        let dir = wc.join(format!("d{:03}", i / 50));
        std::fs::create_dir_all(&dir)?;
        let body: String = (0..40).map(|l| format!("line {l} of file {i}\n")).collect();
        std::fs::write(dir.join(format!("f{i}.txt")), body)?;
    }
    commit(&wc)?;
    for i in (0..files).step_by(100) {
        let p = wc.join(format!("d{:03}/f{i}.txt", i / 50));
        let mut body = std::fs::read_to_string(&p)?;
        body.push_str("changed\n");
        std::fs::write(p, body)?;
    }
    Ok(wc)
}

/// The same status and diff, by the program alone.
fn direct_status(k: VcsKind) -> &'static [&'static str] {
    match k {
        VcsKind::Git => &["status", "--porcelain=v2", "-z", "--untracked-files=all"],
        VcsKind::Hg => &["status", "--copies", "-Tjson"],
        VcsKind::Svn => &["status", "--xml"],
        _ => &["changes", "--differ", "--classify"],
    }
}

fn direct_diff(k: VcsKind) -> &'static [&'static str] {
    match k {
        VcsKind::Git => &["diff", "HEAD"],
        _ => &["diff"],
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn timed_ms(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

/// `coda bench vcs`.
pub fn run(args: &VcsBenchArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    let mut setups = Vec::new();
    for name in &args.vcs {
        let kind = match name.as_str() {
            "git" => VcsKind::Git,
            "hg" => VcsKind::Hg,
            "svn" => VcsKind::Svn,
            "fossil" => VcsKind::Fossil,
            other => bail!("unknown VCS `{other}` (git, hg, svn, fossil)"),
        };
        let tmp = tempfile::tempdir()?;
        let wc = project(tmp.path(), kind, args.files)
            .with_context(|| format!("making the {name} project"))?;
        let repo = detect(&wc)?;
        let changed = rt.block_on(repo.status())?.len();
        setups.push((tmp, wc, repo, changed));
    }
    let mut samples = vec![[Vec::new(), Vec::new(), Vec::new(), Vec::new()]; setups.len()];
    for _ in 0..args.rounds.max(1) {
        for (i, (_, wc, repo, _)) in setups.iter().enumerate() {
            let k = repo.kind();
            samples[i][0].push(timed_ms(|| {
                rt.block_on(repo.status()).map(drop).map_err(Into::into)
            })?);
            samples[i][1].push(timed_ms(|| sh(wc, k.program(), direct_status(k)))?);
            samples[i][2].push(timed_ms(|| {
                rt.block_on(repo.diff(None)).map(drop).map_err(Into::into)
            })?);
            samples[i][3].push(timed_ms(|| sh(wc, k.program(), direct_diff(k)))?);
        }
    }
    for ((_, _, repo, changed), s) in setups.iter().zip(samples) {
        let [a, b, c, d] = s;
        rows.push(Row {
            vcs: repo.kind().to_string(),
            files: args.files,
            changed: *changed,
            status_ms: median(a),
            status_direct_ms: median(b),
            diff_ms: median(c),
            diff_direct_ms: median(d),
        });
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "version control on {} files, {} changed (medians of {} interleaved rounds; direct = the program alone)",
        args.files,
        rows.first().map_or(0, |r| r.changed),
        args.rounds
    );
    println!("  vcs      status   (direct)   diff   (direct)");
    for r in &rows {
        println!(
            "  {:<7} {:>6.1} ms {:>6.1} ms {:>6.1} ms {:>6.1} ms",
            r.vcs, r.status_ms, r.status_direct_ms, r.diff_ms, r.diff_direct_ms
        );
    }
    Ok(())
}
