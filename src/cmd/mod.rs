//! The command line: one module per command (its flags and its `run`), `bench/` one per
//! benchmark; this module parses, loads the configuration once and dispatches.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

use crate::config::{ConfigError, LoadOptions, Loaded, LogFormat, OverrideValue};
use crate::server::StartError;

pub mod ask;
pub mod bench;
pub mod chat;
pub mod config;
pub mod devices;
pub mod events;
pub mod map;
pub mod mcp;
pub mod memory;
pub mod models;
pub mod protocol;
pub mod satellite;
pub mod say;
pub mod serve;
pub mod token;
pub mod tools;
pub mod transcribe;
pub mod wake;

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
    Serve(serve::ServeArgs),
    /// A room's microphone and speaker for a core elsewhere (over NATS: docs/cluster.md).
    Satellite(satellite::SatelliteArgs),
    /// Tail the event stream of a running server (reconnects and resumes).
    Events(events::EventsArgs),
    /// Manage access tokens (stored hashed).
    Token {
        #[command(subcommand)]
        cmd: token::TokenCommand,
    },
    /// Long-term memories and conversations in the store.
    Memory {
        #[command(subcommand)]
        cmd: memory::MemoryCommand,
    },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        cmd: config::ConfigCommand,
    },
    /// Protocol tools.
    Protocol {
        #[command(subcommand)]
        cmd: protocol::ProtocolCommand,
    },
    /// Benchmarks against the real server.
    Bench {
        #[command(subcommand)]
        cmd: bench::BenchCommand,
    },
    /// Ask the language model one question; the answer streams to stdout.
    Ask(ask::AskArgs),
    /// Chat with the language model in the terminal.
    Chat(chat::ChatArgs),
    /// List, inspect, health-check and pull language models.
    Models {
        #[command(subcommand)]
        cmd: models::ModelsCommand,
    },
    /// Transcribe a WAV file with the speech-to-text model (stt.model).
    Transcribe(transcribe::TranscribeArgs),
    /// Speak text with the configured (or chosen) engine: play it, or write a WAV file.
    Say(say::SayArgs),
    /// The wake word: build a reference (`train`), try it on a recording (`test`).
    Wake {
        #[command(subcommand)]
        cmd: wake::WakeCommand,
    },
    /// The repo map of a project: what it defines, ranked by use, fitted to a token
    /// budget (what `coda chat` gives the model).
    Map(map::MapArgs),
    /// List the sound devices (inputs and outputs, defaults marked, supported configs).
    Devices {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// The assistant's tools without a model or a server: list them, call one (files,
    /// shell, ...) with the same permission checks, undo the last write.
    Tools(tools::ToolsArgs),
    /// MCP: the servers whose tools Coda uses (list, their tools), and Coda as an MCP
    /// server on stdio.
    Mcp {
        #[command(subcommand)]
        cmd: mcp::McpCommand,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
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
    if !matches!(cli.command, Commands::Serve(_) | Commands::Satellite(_)) {
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
    if e.downcast_ref::<memory::StoreInUse>().is_some() {
        return 3;
    }
    if let Some(r) = e.downcast_ref::<tools::CallRefused>() {
        return r.exit_code();
    }
    exit::FAILURE
}

/// Loads the configuration for `cli` with extra flag overrides.
pub fn load_config(
    cli_config: &Option<PathBuf>,
    profile: &Option<String>,
    overrides: Vec<(String, OverrideValue, String)>,
) -> Result<Loaded, ConfigError> {
    let loaded = crate::config::load(&LoadOptions {
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

/// The global `--config` / `--profile` flags: the configuration every command loads.
#[derive(Debug, Clone, Default)]
pub struct ConfigChoice {
    pub file: Option<PathBuf>,
    pub profile: Option<String>,
}

impl ConfigChoice {
    /// Loads the chosen configuration with extra flag overrides.
    pub fn load(
        &self,
        overrides: Vec<(String, OverrideValue, String)>,
    ) -> Result<Loaded, ConfigError> {
        load_config(&self.file, &self.profile, overrides)
    }

    /// The same choice as flags for a child `coda` process (a benchmark's server).
    pub fn as_args(&self) -> Vec<OsString> {
        let mut args = Vec::new();
        if let Some(f) = &self.file {
            args.extend([OsString::from("--config"), f.clone().into_os_string()]);
        }
        if let Some(p) = &self.profile {
            args.extend([OsString::from("--profile"), OsString::from(p)]);
        }
        args
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let choice = ConfigChoice {
        file: cli.config,
        profile: cli.profile,
    };
    match cli.command {
        Commands::Serve(args) => serve::run(&choice, args),
        Commands::Satellite(args) => satellite::run(&choice, args),
        Commands::Events(args) => {
            init_logging("warn", LogFormat::Text);
            events::run(&choice.load(Vec::new())?, args)
        }
        Commands::Token { cmd } => {
            init_logging("warn", LogFormat::Text);
            token::run(&choice.load(Vec::new())?, cmd)
        }
        Commands::Memory { cmd } => {
            init_logging("warn", LogFormat::Text);
            memory::run(&choice.load(Vec::new())?, cmd)
        }
        Commands::Config { cmd } => config::run(&choice.load(Vec::new())?, cmd),
        Commands::Protocol { cmd } => protocol::run(cmd),
        Commands::Map(args) => {
            init_logging("warn", LogFormat::Text);
            map::run(args)
        }
        Commands::Bench { cmd } => {
            // whisper.cpp reports every model load at INFO.
            let level = if matches!(cmd, bench::BenchCommand::Stt(_)) {
                "warn,whisper_rs=error"
            } else {
                "warn"
            };
            init_logging(level, LogFormat::Text);
            bench::run(&choice.load(Vec::new())?, &choice, cmd)
        }
        Commands::Transcribe(args) => {
            init_logging("warn,whisper_rs=error", LogFormat::Text);
            transcribe::run(&choice.load(Vec::new())?, args)
        }
        Commands::Ask(args) => {
            init_logging(LLM_CLI_LOG, LogFormat::Text);
            let mut overrides = args.provider.overrides();
            if let Some(root) = &args.root {
                overrides.push((
                    "tools.project_root".to_string(),
                    OverrideValue::Str(root.display().to_string()),
                    "--root".to_string(),
                ));
            }
            let loaded = choice.load(overrides)?;
            ask::run(&loaded, args)
        }
        Commands::Chat(args) => {
            init_logging(LLM_CLI_LOG, LogFormat::Text);
            let loaded = choice.load(args.provider.overrides())?;
            chat::run(&loaded, args)
        }
        Commands::Models { cmd } => {
            init_logging(LLM_CLI_LOG, LogFormat::Text);
            let loaded = choice.load(cmd.overrides())?;
            models::run(&loaded.settings.llm, &loaded.settings.model_store(), cmd)
        }
        Commands::Wake { cmd } => {
            init_logging("warn", LogFormat::Text);
            wake::run(&choice.load(Vec::new())?, cmd)
        }
        Commands::Say(args) => {
            init_logging("warn", LogFormat::Text);
            say::run(&choice.load(Vec::new())?.settings, args)
        }
        Commands::Tools(args) => {
            init_logging("warn", LogFormat::Text);
            let loaded = choice.load(args.overrides())?;
            tools::run(&loaded, args)
        }
        Commands::Mcp { cmd } => {
            // stdout is the protocol for `serve`: logs go to stderr, as always.
            init_logging("warn", LogFormat::Text);
            mcp::run(&choice.load(Vec::new())?, cmd)
        }
        Commands::Devices { json } => {
            init_logging("warn", LogFormat::Text);
            devices::run(json)
        }
        Commands::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "coda", &mut std::io::stdout());
            Ok(())
        }
    }
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

/// Writes an export: owner-only (0600) and never through a symlink at `path`, since what
/// is exported (memories, conversations) is private and the directory may be shared.
pub fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        opts.mode(0o600).custom_flags(libc::O_NOFOLLOW);
        let mut f = opts.open(path).map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                std::io::Error::other("it is a symbolic link; give the real path")
            } else {
                e
            }
        })?;
        // A file that already existed keeps its mode unless told otherwise.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)
    }
    #[cfg(not(unix))]
    {
        opts.open(path)?.write_all(bytes)
    }
}

/// Initialises `tracing` on stderr. `RUST_LOG` wins over the configured level.
pub fn init_logging(level: &str, format: LogFormat) {
    init_logging_with(level, format, None);
}

/// [`init_logging`] plus another layer (the OpenTelemetry one) with its own filter: the
/// log level filters only the log lines.
pub fn init_logging_with(
    level: &str,
    format: LogFormat,
    extra: Option<crate::telemetry::BoxedLayer>,
) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt: crate::telemetry::BoxedLayer = if format == LogFormat::Json {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    // Boxed layers over the bare registry, in a Vec: one subscriber type with or without
    // the extra layer.
    let mut layers = vec![fmt];
    layers.extend(extra);
    let _ = tracing_subscriber::registry().with(layers).try_init();
}
