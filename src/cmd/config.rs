//! `coda config show`: the effective configuration and where each value came from.

use clap::Subcommand;

use crate::config::{self, Loaded};

/// `coda config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration, secrets redacted, with each value's source.
    Show {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// `coda config ...`
pub fn run(loaded: &Loaded, cmd: ConfigCommand) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Show { json } => show(loaded, json),
    }
}

fn show(loaded: &Loaded, json: bool) -> anyhow::Result<()> {
    let effective = loaded.redacted_json();
    if json {
        let out = serde_json::json!({
            "profile": loaded.profile,
            "config": effective,
            "sources": loaded.sources,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "# effective configuration (profile: {})",
        loaded.profile.as_deref().unwrap_or("none")
    );
    let flat = config::flatten_json(&effective);
    let width = flat
        .iter()
        .map(|(k, v)| k.len() + v.to_string().len() + 3)
        .max()
        .unwrap_or(0);
    for (k, v) in &flat {
        let line = format!("{k} = {v}");
        let src = loaded
            .sources
            .get(k)
            .map(String::as_str)
            .unwrap_or("default");
        println!("{line:<width$}  # {src}");
    }
    Ok(())
}
