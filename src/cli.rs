//! The command line: `coda serve | events | token | memory | config | protocol | bench |
//! completions`.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::config::{self, ConfigError, LoadOptions, Loaded, OverrideValue};
use crate::server::{self, StartError};
use crate::synthetic::SyntheticOptions;

/// Coda: a voice-first AI assistant core that streams every internal event over a local
/// WebSocket.
#[derive(Debug, Parser)]
#[command(name = "coda", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Config file (default: $XDG_CONFIG_HOME/coda/config.toml if it exists).
    #[arg(long, global = true, env = "CODA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Profile: a built-in (dev, remote) or $XDG_CONFIG_HOME/coda/profiles/NAME.toml.
    /// Also CODA_PROFILE.
    #[arg(long, global = true, value_name = "NAME")]
    pub profile: Option<String>,
    #[command(subcommand)]
    pub command: Commands,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Run the assistant core: event hub, WebSocket server, HTTP endpoints.
    Serve(ServeArgs),
    /// Tail the event stream of a running server (reconnects and resumes).
    Events(crate::events::EventsArgs),
    /// Manage access tokens (stored hashed).
    Token {
        #[command(subcommand)]
        cmd: crate::token_cmd::TokenCommand,
    },
    /// Long-term memories and conversations in the store.
    Memory {
        #[command(subcommand)]
        cmd: crate::memory_cmd::MemoryCommand,
    },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        cmd: ConfigCommand,
    },
    /// Protocol tools.
    Protocol {
        #[command(subcommand)]
        cmd: ProtocolCommand,
    },
    /// Benchmarks against the real server.
    Bench {
        #[command(subcommand)]
        cmd: crate::bench::BenchCommand,
    },
    /// Ask the language model one question; the answer streams to stdout.
    Ask(crate::ask::AskArgs),
    /// Chat with the language model in the terminal.
    Chat(crate::chat::ChatArgs),
    /// List, inspect, health-check and pull language models.
    Models {
        #[command(subcommand)]
        cmd: crate::models_cmd::ModelsCommand,
    },
    /// Transcribe a WAV file with the speech-to-text model (stt.model).
    Transcribe(crate::stt_cmd::TranscribeArgs),
    /// Speak text with the configured (or chosen) engine: play it, or write a WAV file.
    Say(crate::speech::SayArgs),
    /// List the sound devices (inputs and outputs, defaults marked, supported configs).
    Devices {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `coda serve` flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to bind (server.host). Non-loopback requires --auth.
    #[arg(long)]
    pub host: Option<String>,
    /// Port (server.port; 0 picks a free one).
    #[arg(long)]
    pub port: Option<u16>,
    /// Require token auth (auth.required = true).
    #[arg(long)]
    pub auth: bool,
    /// Diagnostic load: publish RATE `diagnostic_tick` events per second.
    #[arg(long, value_name = "RATE")]
    pub emit_synthetic: Option<f64>,
    /// Size of each synthetic event envelope, in bytes.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub synthetic_bytes: usize,
    /// Start the synthetic load once N clients are receiving events.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub synthetic_wait_clients: usize,
}

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

/// `coda protocol ...`
#[derive(Debug, Subcommand)]
pub enum ProtocolCommand {
    /// Print the JSON Schema of the envelope, every event payload and every command.
    Schema,
}

/// Log filter of the LLM commands: warnings (retries) on stderr; fallbacks are printed by
/// the commands themselves, so the registry's own warning is not repeated.
const LLM_CLI_LOG: &str = "warn,coda_actors::llm::registry=error";

/// Exit codes.
pub mod exit {
    /// Runtime failure.
    pub const FAILURE: i32 = 1;
    /// Bad configuration or usage.
    pub const CONFIG: i32 = 2;
}

/// Parses the command line, runs the command, returns the exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    if !matches!(cli.command, Commands::Serve(_)) {
        restore_sigpipe();
    }
    match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            let code = exit_code(&e);
            eprintln!("error: {e:#}");
            code
        }
    }
}

fn exit_code(e: &anyhow::Error) -> i32 {
    if let Some(se) = e.downcast_ref::<StartError>() {
        return se.exit_code();
    }
    if e.downcast_ref::<ConfigError>().is_some() {
        return exit::CONFIG;
    }
    if e.downcast_ref::<crate::memory_cmd::StoreInUse>().is_some() {
        return 3;
    }
    exit::FAILURE
}

/// Loads the configuration for `cli` with extra flag overrides.
pub fn load_config(
    cli_config: &Option<PathBuf>,
    profile: &Option<String>,
    overrides: Vec<(String, OverrideValue, String)>,
) -> Result<Loaded, ConfigError> {
    let loaded = config::load(&LoadOptions {
        config_file: cli_config.clone(),
        profile: profile.clone(),
        overrides,
        ..Default::default()
    })?;
    // Every model name this process resolves (local provider, `coda models`) uses the
    // configured store.
    if !loaded.settings.models.dir.is_empty() {
        coda_actors::models::set_configured_dir(Some(loaded.settings.models.dir.clone().into()));
    }
    Ok(loaded)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Commands::Serve(args) => {
            let mut overrides = Vec::new();
            if let Some(h) = &args.host {
                overrides.push((
                    "server.host".into(),
                    OverrideValue::Str(h.clone()),
                    "--host".into(),
                ));
            }
            if let Some(p) = args.port {
                overrides.push((
                    "server.port".into(),
                    OverrideValue::Int(i64::from(p)),
                    "--port".into(),
                ));
            }
            if args.auth {
                overrides.push((
                    "auth.required".into(),
                    OverrideValue::Bool(true),
                    "--auth".into(),
                ));
            }
            let loaded = load_config(&cli.config, &cli.profile, overrides)?;
            init_logging(&loaded.settings.log.level, &loaded.settings.log.format);
            let synthetic = match args.emit_synthetic {
                Some(rate) if !(rate.is_finite() && rate > 0.0) => {
                    return Err(ConfigError::Invalid {
                        key: "--emit-synthetic".into(),
                        problem: "must be a positive rate (events per second)".into(),
                    }
                    .into())
                }
                Some(rate) => Some(SyntheticOptions {
                    rate,
                    bytes: args.synthetic_bytes,
                    wait_clients: args.synthetic_wait_clients,
                }),
                None => None,
            };
            coda_actors::supervise::install_panic_hook();
            let system = actix_rt::System::new();
            system.block_on(async move {
                let running = server::start(&loaded, synthetic).await?;
                // One machine-readable line on stdout: scripts and `coda bench` read it.
                println!("listening ws://{}/ws", running.addr);
                let _ = std::io::stdout().flush();
                running.serve_until_signal().await
            })
        }
        Commands::Events(args) => {
            init_logging("warn", "text");
            let loaded = load_config(&cli.config, &cli.profile, Vec::new())?;
            crate::events::run(&loaded, args)
        }
        Commands::Token { cmd } => {
            init_logging("warn", "text");
            let loaded = load_config(&cli.config, &cli.profile, Vec::new())?;
            crate::token_cmd::run(&loaded, cmd)
        }
        Commands::Memory { cmd } => {
            init_logging("warn", "text");
            let loaded = load_config(&cli.config, &cli.profile, Vec::new())?;
            crate::memory_cmd::run(&loaded, cmd)
        }
        Commands::Config {
            cmd: ConfigCommand::Show { json },
        } => {
            let loaded = load_config(&cli.config, &cli.profile, Vec::new())?;
            print_config(&loaded, json)
        }
        Commands::Protocol {
            cmd: ProtocolCommand::Schema,
        } => {
            let schema = coda_protocol::schema::schema_json();
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(())
        }
        Commands::Bench {
            cmd: crate::bench::BenchCommand::Llm(args),
        } => {
            init_logging("warn", "text");
            let loaded = load_config(&cli.config, &cli.profile, Vec::new())?;
            crate::bench_local::run(&loaded, args)
        }
        Commands::Bench {
            cmd: crate::bench::BenchCommand::Stt(args),
        } => {
            init_logging("warn,whisper_rs=error", "text");
            let loaded = load_config(&cli.config, &cli.profile, Vec::new())?;
            crate::stt_cmd::bench(&loaded, args)
        }
        Commands::Bench { cmd } => {
            init_logging("warn", "text");
            crate::bench::run(cmd)
        }
        Commands::Transcribe(args) => {
            init_logging("warn,whisper_rs=error", "text");
            let loaded = load_config(&cli.config, &cli.profile, Vec::new())?;
            crate::stt_cmd::transcribe(&loaded, args)
        }
        Commands::Ask(args) => {
            init_logging(LLM_CLI_LOG, "text");
            let loaded = load_config(&cli.config, &cli.profile, args.provider.overrides())?;
            crate::ask::run(&loaded.settings.llm, args)
        }
        Commands::Chat(args) => {
            init_logging(LLM_CLI_LOG, "text");
            let loaded = load_config(&cli.config, &cli.profile, args.provider.overrides())?;
            crate::chat::run(&loaded.settings.llm, args)
        }
        Commands::Models { cmd } => {
            init_logging(LLM_CLI_LOG, "text");
            let loaded = load_config(&cli.config, &cli.profile, cmd.overrides())?;
            crate::models_cmd::run(&loaded.settings.llm, &loaded.settings.model_store(), cmd)
        }
        Commands::Say(args) => {
            init_logging("warn", "text");
            let loaded = load_config(&cli.config, &cli.profile, Vec::new())?;
            crate::speech::say(&loaded.settings, args)
        }
        Commands::Devices { json } => {
            init_logging("warn", "text");
            crate::speech::devices(json)
        }
        Commands::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "coda", &mut std::io::stdout());
            Ok(())
        }
    }
}

fn print_config(loaded: &Loaded, json: bool) -> anyhow::Result<()> {
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

/// Terminal commands die quietly when their output pipe closes (`coda events | head`),
/// like other Unix tools, instead of panicking in `println!`. Not for `coda serve`.
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: setting a signal disposition to its default at start-up, before any thread
    // that could race on it is spawned.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Initialises `tracing` on stderr. `RUST_LOG` wins over the configured level.
pub fn init_logging(level: &str, format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
