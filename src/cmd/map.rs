//! `coda map`: the repo map of a project (what it defines, ranked by use, fitted to a
//! token budget), as `coda chat` puts it in the model's context.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use coda_actors::tools::repomap::{build, RepoMapSettings};

/// `coda map` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct MapArgs {
    /// The project (default: the current directory).
    pub path: Option<PathBuf>,
    /// The most tokens the map may take.
    #[arg(long, default_value_t = 1024)]
    pub tokens: usize,
    /// Files in the conversation: what they use ranks first (their own definitions are
    /// left out).
    #[arg(long, value_name = "FILE")]
    pub focus: Vec<PathBuf>,
    /// Do not read or write the tag cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Print the map, its files and definitions as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: MapArgs) -> anyhow::Result<()> {
    let root = match args.path {
        Some(p) => p,
        None => std::env::current_dir().context("the current directory")?,
    };
    let settings = RepoMapSettings {
        tokens: args.tokens,
        cache_dir: (!args.no_cache).then(|| crate::llm_setup::cache_dir().join("repomap")),
        ..Default::default()
    };
    let t = Instant::now();
    let map = build(&root, &args.focus, &settings)?;
    let took = t.elapsed();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&map)?);
        return Ok(());
    }
    print!("{}", map.text);
    eprintln!(
        "{} tokens of {}; {} files ({} parsed, the rest cached), {} definitions, {} references; {:.0} ms",
        map.tokens,
        args.tokens,
        map.stats.files,
        map.stats.parsed,
        map.stats.definitions,
        map.stats.references,
        took.as_secs_f64() * 1000.0
    );
    Ok(())
}
