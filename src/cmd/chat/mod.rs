//! `coda chat`: the interactive terminal assistant. Line editing and history (rustyline),
//! multi-line input (end a line with `\`, or wrap a block in `"""`), answers streamed as
//! they come (Ctrl-C stops one), slash commands, saved sessions and exports, and a token
//! usage summary at the end.

mod project;
pub mod store;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Instant, UNIX_EPOCH};

use coda_actors::llm::registry::Chain;
use coda_actors::llm::{ChatMessage, ChatRequest, ChatRole, LlmProvider, StreamChunk};
use futures_util::StreamExt;
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Editor, Helper};
use serde::{Deserialize, Serialize};

use self::store::{JsonDirStore, SavedSession, SessionStore};
use crate::config::LlmConfig;
use crate::llm_setup::{self, ProviderArgs};

/// `coda chat` flags.
#[derive(Debug, clap::Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub provider: ProviderArgs,
    /// Starting mode.
    #[arg(long, value_enum, default_value_t = Mode::Code)]
    pub mode: Mode,
    /// Load this saved session first.
    #[arg(long, value_name = "NAME")]
    pub session: Option<String>,
    /// Tokens of the project's repo map in the model's context (0: none). The project is
    /// the working copy or build-file directory the chat starts in.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub map_tokens: usize,
}

/// How the assistant behaves: each mode is a system prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Writing new code.
    Code,
    /// Finding and fixing the cause of an error.
    Debug,
    /// Explaining code and concepts.
    Explain,
    /// Reviewing for bugs, security and style.
    Review,
    /// Improving existing code without changing behaviour.
    Refactor,
}

impl Mode {
    /// Every mode.
    pub const ALL: [Mode; 5] = [
        Mode::Code,
        Mode::Debug,
        Mode::Explain,
        Mode::Review,
        Mode::Refactor,
    ];

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Code => "code",
            Mode::Debug => "debug",
            Mode::Explain => "explain",
            Mode::Review => "review",
            Mode::Refactor => "refactor",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == s.trim())
    }

    /// The system prompt.
    pub fn system_prompt(self) -> &'static str {
        match self {
            Mode::Code => "You are Coda, a senior software engineer. Write correct, idiomatic, complete code for what is asked. Prefer small, clear functions; include only the explanation that is needed.",
            Mode::Debug => "You are Coda, a debugging expert. Find the root cause of the problem described: reason from the error and the code, say what is wrong and why, then give the smallest fix and how to verify it.",
            Mode::Explain => "You are Coda, a patient teacher. Explain the code or concept step by step, from what it does to how it works, with short examples where they help.",
            Mode::Review => "You are Coda, a careful code reviewer. Review the code for bugs, security problems, error handling, performance and readability. List findings by severity, each with the line or construct and a concrete fix.",
            Mode::Refactor => "You are Coda, a refactoring expert. Improve the structure, naming and clarity of the code without changing its behaviour. Show the refactored code and list what changed and why.",
        }
    }
}

/// Token use per `provider/model`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageBook {
    /// Rows by `provider/model`.
    pub rows: BTreeMap<String, UsageRow>,
}

/// One row of the usage book.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    /// Answers.
    pub requests: u32,
    /// Prompt tokens (as the provider reported them).
    pub prompt_tokens: u64,
    /// Generated tokens.
    pub completion_tokens: u64,
    /// Time spent answering, ms.
    pub model_ms: f64,
}

impl UsageBook {
    /// Adds one answer.
    pub fn add(&mut self, key: &str, prompt: u32, completion: u32, ms: f64) {
        let r = self.rows.entry(key.to_string()).or_default();
        r.requests += 1;
        r.prompt_tokens += u64::from(prompt);
        r.completion_tokens += u64::from(completion);
        r.model_ms += ms;
    }

    /// The summary table.
    pub fn summary(&self) -> String {
        let w = self
            .rows
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(14)
            .max(14);
        let mut out = format!(
            "{:<w$}  {:>8}  {:>10}  {:>10}  {:>9}\n",
            "provider/model", "requests", "prompt", "completion", "time"
        );
        let mut total = UsageRow::default();
        for (k, r) in &self.rows {
            out.push_str(&format!(
                "{k:<w$}  {:>8}  {:>10}  {:>10}  {:>8.1}s\n",
                r.requests,
                r.prompt_tokens,
                r.completion_tokens,
                r.model_ms / 1000.0
            ));
            total.requests += r.requests;
            total.prompt_tokens += r.prompt_tokens;
            total.completion_tokens += r.completion_tokens;
            total.model_ms += r.model_ms;
        }
        if self.rows.len() > 1 {
            out.push_str(&format!(
                "{:<w$}  {:>8}  {:>10}  {:>10}  {:>8.1}s\n",
                "total",
                total.requests,
                total.prompt_tokens,
                total.completion_tokens,
                total.model_ms / 1000.0
            ));
        }
        out
    }
}

/// A slash command.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `/help`
    Help,
    /// `/model [NAME|list|default]`
    Model(Option<String>),
    /// `/provider [NAME]`
    Provider(Option<String>),
    /// `/mode [NAME]`
    Mode(Option<String>),
    /// `/session [save [NAME]|load NAME|list]`
    Session(Vec<String>),
    /// `/export markdown|json [FILE]`
    Export(Vec<String>),
    /// `/clear`
    Clear,
    /// `/exit`, `/quit`
    Exit,
    /// Anything else starting with `/`.
    Unknown(String),
}

/// The commands, for `/help` and completion.
pub const COMMANDS: &[(&str, &str)] = &[
    ("/help", "this list"),
    (
        "/model [NAME|list|default]",
        "show, list or switch the model",
    ),
    (
        "/provider [NAME]",
        "show or switch the provider (local, ollama, openai, oci)",
    ),
    (
        "/mode [code|debug|explain|review|refactor]",
        "show or switch the mode",
    ),
    (
        "/session save [NAME] | load NAME | list",
        "save, load or list conversations",
    ),
    (
        "/export markdown|json [FILE]",
        "write the conversation to a file",
    ),
    ("/clear", "start the conversation over (usage is kept)"),
    ("/exit", "quit with a usage summary (also /quit, Ctrl-D)"),
];

/// Keys and input forms, for `/help`.
const HELP_KEYS: &[(&str, &str)] = &[
    ("line ending in \\  or  \"\"\"...\"\"\"", "multi-line input"),
    ("Ctrl-C while answering", "stop the answer"),
];

/// Parses a line: `None` when it is not a command.
pub fn parse_command(line: &str) -> Option<Command> {
    let line = line.trim();
    let rest = line.strip_prefix('/')?;
    let mut words = rest.split_whitespace();
    let cmd = words.next().unwrap_or_default();
    let args: Vec<String> = words.map(str::to_string).collect();
    let first = args.first().cloned();
    Some(match cmd {
        "help" | "?" => Command::Help,
        "model" => Command::Model(first),
        "provider" => Command::Provider(first),
        "mode" => Command::Mode(first),
        "session" => Command::Session(args),
        "export" => Command::Export(args),
        "clear" => Command::Clear,
        "exit" | "quit" | "q" => Command::Exit,
        other => Command::Unknown(other.to_string()),
    })
}

/// Joins multi-line input: a trailing `\` continues a line, `"""` blocks are taken as is.
pub fn join_input(raw: &str) -> String {
    let t = raw.trim();
    if let Some(inner) = t.strip_prefix("\"\"\"") {
        return inner
            .strip_suffix("\"\"\"")
            .unwrap_or(inner)
            .trim()
            .to_string();
    }
    raw.lines()
        .map(|l| l.strip_suffix('\\').unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
}

/// Is `raw` still being typed?
pub fn incomplete(raw: &str) -> bool {
    let t = raw.trim_start();
    if t.starts_with("\"\"\"") {
        return !(t.len() >= 6 && t.trim_end().ends_with("\"\"\""));
    }
    raw.ends_with('\\')
}

/// The conversation as Markdown.
pub fn to_markdown(s: &SavedSession) -> String {
    let mut out = format!(
        "# Coda chat: {}\n\n- provider: {}\n- model: {}\n- mode: {}\n\n",
        s.name,
        s.provider,
        s.model.as_deref().unwrap_or("(provider default)"),
        s.mode
    );
    for m in &s.messages {
        let who = match m.role {
            ChatRole::User => "You",
            ChatRole::Assistant => "Assistant",
            ChatRole::System => "System",
            ChatRole::Tool => "Tool",
        };
        out.push_str(&format!("## {who}\n\n{}\n\n", m.content.trim_end()));
    }
    out
}

struct ChatHelper;

impl Completer for ChatHelper {
    type Candidate = Pair;
    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let head = &line[..pos];
        if !head.starts_with('/') || head.contains(' ') {
            return Ok((pos, Vec::new()));
        }
        let names = COMMANDS
            .iter()
            .map(|(c, _)| c.split(' ').next().unwrap_or(c))
            .chain(["/quit"])
            .filter(|c| c.starts_with(head))
            .map(|c| Pair {
                display: c.to_string(),
                replacement: format!("{c} "),
            })
            .collect();
        Ok((0, names))
    }
}

impl Hinter for ChatHelper {
    type Hint = String;
}

impl Highlighter for ChatHelper {}

impl Validator for ChatHelper {
    fn validate(&self, ctx: &mut ValidationContext<'_>) -> rustyline::Result<ValidationResult> {
        Ok(if incomplete(ctx.input()) {
            ValidationResult::Incomplete
        } else {
            ValidationResult::Valid(None)
        })
    }
}

impl Helper for ChatHelper {}

/// Unix seconds, whole.
fn unix_now() -> u64 {
    coda_actors::hub::unix_now() as u64
}

/// The REPL's state.
struct Repl {
    cfg: LlmConfig,
    provider: String,
    model: Option<String>,
    mode: Mode,
    chain: Arc<Chain>,
    messages: Vec<ChatMessage>,
    usage: UsageBook,
    session: Option<String>,
    created_at: u64,
    store: Box<dyn SessionStore>,
    rt: tokio::runtime::Runtime,
    color: bool,
    turns: u32,
    /// The project the chat started in, told to the model with each turn.
    project: Option<project::Project>,
}

impl Repl {
    fn dim(&self, s: &str) -> String {
        if self.color {
            format!("\x1b[2m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    fn err(&self, s: &str) -> String {
        if self.color {
            format!("\x1b[31m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    fn current_model(&self) -> String {
        self.model.clone().unwrap_or_else(|| {
            let m = self.chain.default_model();
            if m.is_empty() {
                "(server default)".into()
            } else {
                m
            }
        })
    }

    fn build(&self, provider: &str, model: Option<String>) -> anyhow::Result<Arc<Chain>> {
        let mut cfg = self.cfg.clone();
        cfg.provider = provider.parse()?;
        llm_setup::build_chain(&llm_setup::llm_settings(&cfg, model))
    }

    fn snapshot(&self, name: &str) -> SavedSession {
        SavedSession {
            name: name.to_string(),
            created_at: self.created_at,
            updated_at: unix_now(),
            provider: self.provider.clone(),
            model: self.model.clone(),
            mode: self.mode.name().to_string(),
            messages: self.messages.clone(),
            usage: self.usage.clone(),
        }
    }

    fn load(&mut self, name: &str) -> anyhow::Result<()> {
        let s = self.store.load(name)?;
        if s.provider != self.provider {
            match self.build(&s.provider, s.model.clone()) {
                Ok(c) => {
                    self.chain = c;
                    self.provider = s.provider.clone();
                }
                Err(e) => println!(
                    "{}",
                    self.err(&format!(
                        "session used provider {} ({e}); staying on {}",
                        s.provider, self.provider
                    ))
                ),
            }
        }
        if s.provider == self.provider {
            self.model = s.model.clone();
        }
        self.mode = Mode::parse(&s.mode).unwrap_or(self.mode);
        self.messages = s.messages;
        self.usage = s.usage;
        self.created_at = s.created_at;
        self.session = Some(s.name);
        Ok(())
    }

    /// Runs a command; `false` means quit.
    fn command(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Help => {
                for (c, what) in COMMANDS {
                    println!("  {c:<44} {what}");
                }
                for (keys, what) in HELP_KEYS {
                    println!("  {keys:<44} {what}");
                }
            }
            Command::Model(None) => {
                println!("model: {} on {}", self.current_model(), self.provider)
            }
            Command::Model(Some(m)) if m == "list" => {
                match self.rt.block_on(self.chain.list_models()) {
                    Ok(models) if models.is_empty() => {
                        println!("{} lists no models", self.provider)
                    }
                    Ok(models) => {
                        for m in models {
                            println!("  {}", m.id);
                        }
                    }
                    Err(e) => println!("{}", self.err(&format!("error: {e}"))),
                }
            }
            Command::Model(Some(m)) => {
                self.model = (m != "default").then_some(m);
                match self.build(&self.provider, self.model.clone()) {
                    Ok(c) => self.chain = c,
                    Err(e) => println!("{}", self.err(&format!("error: {e}"))),
                }
                println!("model: {}", self.current_model());
            }
            Command::Provider(None) => println!(
                "provider: {} (available: {})",
                self.provider,
                coda_actors::llm::registry::ProviderKind::known()
            ),
            Command::Provider(Some(p)) => match self.build(&p, None) {
                Ok(c) => {
                    self.chain = c;
                    self.provider = p;
                    self.model = None;
                    println!(
                        "provider: {} (model {})",
                        self.provider,
                        self.current_model()
                    );
                }
                Err(e) => println!(
                    "{}",
                    self.err(&format!(
                        "cannot use provider {p}: {e}; staying on {}",
                        self.provider
                    ))
                ),
            },
            Command::Mode(None) => println!(
                "mode: {} (available: {})",
                self.mode.name(),
                Mode::ALL.map(Mode::name).join(", ")
            ),
            Command::Mode(Some(m)) => match Mode::parse(&m) {
                Some(mode) => {
                    self.mode = mode;
                    println!("mode: {}", mode.name());
                }
                None => println!(
                    "{}",
                    self.err(&format!(
                        "unknown mode {m:?} (available: {})",
                        Mode::ALL.map(Mode::name).join(", ")
                    ))
                ),
            },
            Command::Session(args) => self.session_cmd(&args),
            Command::Export(args) => self.export(&args),
            Command::Clear => {
                self.messages.clear();
                println!("conversation cleared");
            }
            Command::Exit => return false,
            Command::Unknown(c) => {
                println!(
                    "{}",
                    self.err(&format!("unknown command /{c}; /help lists them"))
                )
            }
        }
        true
    }

    fn session_cmd(&mut self, args: &[String]) {
        let res: anyhow::Result<()> = (|| {
            match args.first().map(String::as_str) {
                None => println!(
                    "session: {} ({} messages)",
                    self.session.as_deref().unwrap_or("(unsaved)"),
                    self.messages.len()
                ),
                Some("save") => {
                    let name = args
                        .get(1)
                        .cloned()
                        .or_else(|| self.session.clone())
                        .unwrap_or_else(|| format!("chat-{}", unix_now()));
                    let where_ = self.store.save(&self.snapshot(&name))?;
                    self.session = Some(name.clone());
                    println!("saved session {name} ({where_})");
                }
                Some("load") => {
                    let name = args
                        .get(1)
                        .ok_or_else(|| anyhow::anyhow!("usage: /session load NAME"))?;
                    self.load(name)?;
                    println!(
                        "loaded session {name}: {} messages, provider {}, model {}, mode {}",
                        self.messages.len(),
                        self.provider,
                        self.current_model(),
                        self.mode.name()
                    );
                }
                Some("list") => {
                    let list = self.store.list()?;
                    if list.is_empty() {
                        println!("no saved sessions");
                    }
                    for s in list {
                        let when = humantime::format_rfc3339_seconds(
                            UNIX_EPOCH + std::time::Duration::from_secs(s.updated_at),
                        );
                        println!("  {:<24} {:>4} messages  {when}", s.name, s.messages);
                    }
                }
                Some(other) => {
                    anyhow::bail!("unknown /session {other}: save [NAME], load NAME, list")
                }
            }
            Ok(())
        })();
        if let Err(e) = res {
            println!("{}", self.err(&format!("error: {e:#}")));
        }
    }

    fn export(&self, args: &[String]) {
        let res: anyhow::Result<String> = (|| {
            let format = args.first().map(String::as_str).unwrap_or("markdown");
            let name = self.session.clone().unwrap_or_else(|| "chat".into());
            let snap = self.snapshot(&name);
            let (text, ext) = match format {
                "markdown" | "md" => (to_markdown(&snap), "md"),
                "json" => (serde_json::to_string_pretty(&snap)?, "json"),
                other => anyhow::bail!("unknown export format {other:?}: markdown or json"),
            };
            let path = args
                .get(1)
                .cloned()
                .unwrap_or_else(|| format!("coda-{name}-{}.{ext}", unix_now()));
            crate::cmd::write_private(std::path::Path::new(&path), text.as_bytes())
                .map_err(|e| anyhow::anyhow!("cannot write {path}: {e}"))?;
            Ok(path)
        })();
        match res {
            Ok(p) => println!("exported to {p}"),
            Err(e) => println!("{}", self.err(&format!("error: {e:#}"))),
        }
    }

    /// Sends `text` and streams the answer.
    fn turn(&mut self, text: String) {
        self.messages.push(ChatMessage::new(ChatRole::User, text));
        let system = match &self.project {
            Some(p) => format!("{}{}", self.mode.system_prompt(), p.prompt()),
            None => self.mode.system_prompt().to_string(),
        };
        let mut msgs = vec![ChatMessage::new(ChatRole::System, system)];
        msgs.extend(self.messages.iter().cloned());
        let req = ChatRequest {
            messages: msgs,
            ..Default::default()
        };
        let chain = self.chain.clone();
        let t0 = Instant::now();
        let outcome = self.rt.block_on(async move {
            let mut answer = String::new();
            // Subscribed before the request goes out: `tokio::signal::ctrl_c()` only
            // subscribes when first polled, so a Ctrl-C typed right after the first token
            // could be missed and the chat would hang on a stalled answer.
            let mut interrupt = Interrupt::subscribe();
            let mut stream = tokio::select! {
                _ = interrupt.recv() => return (answer, None, Ok(0), true),
                s = chain.chat_stream(req) => match s {
                    Ok(s) => s,
                    Err(e) => return (answer, None, Err(e), false),
                },
            };
            let mut out = std::io::stdout();
            let mut tokens = 0u32;
            let mut usage = None;
            loop {
                tokio::select! {
                    _ = interrupt.recv() => return (answer, usage, Ok(tokens), true),
                    next = stream.next() => match next {
                        Some(Ok(StreamChunk::Token(t))) => {
                            tokens += 1;
                            let _ = out.write_all(t.as_bytes());
                            let _ = out.flush();
                            answer.push_str(&t);
                        }
                        Some(Ok(StreamChunk::ToolCall(c))) => {
                            let _ = writeln!(out, "\n[tool call {}({})]", c.name, c.arguments);
                        }
                        Some(Ok(StreamChunk::Done { usage: u, .. })) => {
                            usage = u;
                            break;
                        }
                        Some(Err(e)) => return (answer, usage, Err(e), false),
                        None => break,
                    }
                }
            }
            (answer, usage, Ok(tokens), false)
        });
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        let (answer, usage, result, cancelled) = outcome;
        let (provider, model) = self
            .chain
            .answered_by()
            .unwrap_or_else(|| (self.provider.clone(), self.current_model()));
        match result {
            Ok(tokens) => {
                println!();
                if cancelled {
                    println!("{}", self.dim("[stopped]"));
                }
                let (p, c) = usage
                    .map(|u| (u.prompt_tokens, u.completion_tokens))
                    .unwrap_or((0, tokens));
                self.usage.add(&format!("{provider}/{model}"), p, c, ms);
                self.turns += 1;
                println!(
                    "{}",
                    self.dim(&format!(
                        "· {provider}/{model} · {c} tokens · {:.1} s",
                        ms / 1000.0
                    ))
                );
                self.messages
                    .push(ChatMessage::new(ChatRole::Assistant, answer));
            }
            Err(e) => {
                if !answer.is_empty() {
                    println!();
                    self.messages
                        .push(ChatMessage::new(ChatRole::Assistant, answer));
                } else {
                    // Nothing came back: forget the question so a retry does not repeat it.
                    self.messages.pop();
                }
                println!("{}", self.err(&format!("error: {e}")));
            }
        }
    }
}

/// Runs `coda chat`. `cfg` already has `--provider` applied.
pub fn run(cfg: &LlmConfig, args: ChatArgs) -> anyhow::Result<()> {
    let settings = llm_setup::llm_settings(cfg, args.provider.model.clone());
    let chain = llm_setup::build_chain(&settings)?;
    let data = llm_setup::data_dir();
    let mut repl = Repl {
        cfg: cfg.clone(),
        provider: cfg.provider.to_string(),
        model: args.provider.model.clone(),
        mode: args.mode,
        chain,
        messages: Vec::new(),
        usage: UsageBook::default(),
        session: None,
        created_at: unix_now(),
        store: Box::new(JsonDirStore::new(data.join("chat-sessions"))),
        rt: llm_setup::background_runtime()?,
        color: std::io::stdout().is_terminal(),
        turns: 0,
        project: std::env::current_dir().ok().and_then(|d| {
            project::detect(
                &d,
                args.map_tokens,
                Some(llm_setup::cache_dir().join("repomap")),
            )
        }),
    };
    if let Some(name) = &args.session {
        repl.load(name)?;
    }
    let started = Instant::now();
    let mut editor: Editor<ChatHelper, DefaultHistory> = Editor::with_config(
        rustyline::Config::builder()
            .max_history_size(1000)?
            .auto_add_history(false)
            .build(),
    )?;
    editor.set_helper(Some(ChatHelper));
    let history = data.join("chat_history");
    let _ = editor.load_history(&history);
    println!(
        "coda chat · {}/{} · mode {} · /help for commands, Ctrl-D to quit",
        repl.provider,
        repl.current_model(),
        repl.mode.name()
    );
    if let Some(p) = &repl.project {
        println!("{}", repl.dim(&p.line()));
    }
    loop {
        match editor.readline("you> ") {
            Ok(line) => {
                if line.trim().is_empty() {
                    continue;
                }
                let _ = editor.add_history_entry(line.as_str());
                if let Some(cmd) = parse_command(&line) {
                    if !repl.command(cmd) {
                        break;
                    }
                    continue;
                }
                let text = join_input(&line);
                if !text.is_empty() {
                    repl.turn(text);
                }
            }
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(dir) = history.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = editor.save_history(&history);
    println!("\n── session summary ──");
    println!(
        "turns: {} · time: {:.1} s",
        repl.turns,
        started.elapsed().as_secs_f64()
    );
    if repl.usage.rows.is_empty() {
        println!("no tokens used");
    } else {
        print!("{}", repl.usage.summary());
    }
    Ok(())
}

/// Ctrl-C while an answer streams. Without a SIGINT subscription (it could not be made)
/// an answer simply cannot be stopped, and the default disposition ends the chat.
struct Interrupt {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Interrupt {
    fn subscribe() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let signal = signal(SignalKind::interrupt())
                .map_err(|e| tracing::warn!("Ctrl-C cannot stop an answer: {e}"))
                .ok();
            Self { signal }
        }
        #[cfg(not(unix))]
        Self {}
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        match self.signal.as_mut() {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(parse_command("hello"), None);
        assert_eq!(parse_command("/help"), Some(Command::Help));
        assert_eq!(
            parse_command(" /model gpt-4o "),
            Some(Command::Model(Some("gpt-4o".into())))
        );
        assert_eq!(parse_command("/provider"), Some(Command::Provider(None)));
        assert_eq!(
            parse_command("/session save work"),
            Some(Command::Session(vec!["save".into(), "work".into()]))
        );
        assert_eq!(parse_command("/quit"), Some(Command::Exit));
        assert_eq!(
            parse_command("/frobnicate"),
            Some(Command::Unknown("frobnicate".into()))
        );
        assert_eq!(Mode::parse("review"), Some(Mode::Review));
        assert_eq!(Mode::parse("poetry"), None);
    }

    #[test]
    fn multi_line_input() {
        assert!(incomplete("first line\\"));
        assert!(!incomplete("done"));
        assert!(incomplete("\"\"\"\nfn main() {}"));
        assert!(!incomplete("\"\"\"\nfn main() {}\n\"\"\""));
        assert!(incomplete("\"\"\""));
        assert_eq!(join_input("a\\\nb"), "a\nb");
        assert_eq!(join_input("\"\"\"\nfn x() {\n}\n\"\"\""), "fn x() {\n}");
    }

    #[test]
    fn usage_and_markdown() {
        let mut u = UsageBook::default();
        u.add("openai/m", 10, 5, 1000.0);
        u.add("openai/m", 20, 7, 500.0);
        u.add("ollama/l", 1, 2, 100.0);
        let s = u.summary();
        assert!(
            s.contains("openai/m") && s.contains("30") && s.contains("12"),
            "{s}"
        );
        assert!(s.contains("total"), "{s}");
        let md = to_markdown(&SavedSession {
            name: "n".into(),
            created_at: 0,
            updated_at: 0,
            provider: "openai".into(),
            model: None,
            mode: "review".into(),
            messages: vec![
                ChatMessage::new(ChatRole::User, "q"),
                ChatMessage::new(ChatRole::Assistant, "a"),
            ],
            usage: u,
        });
        assert!(
            md.contains("## You\n\nq")
                && md.contains("## Assistant\n\na")
                && md.contains("mode: review")
        );
    }
}
