//! `coda chat`: the interactive terminal assistant. Line editing and history (rustyline),
//! multi-line input (end a line with `\`, or wrap a block in `"""`), answers streamed as
//! they come (Ctrl-C stops one), slash commands, saved sessions and exports, and a token
//! usage summary at the end. In a project the model is offered the coding tools (by mode,
//! `/tools`), calls that need permission ask at the prompt, `@path` attaches a file, the
//! repo map follows the files in play, and long conversations are compacted.

mod agent;
mod compact;
mod project;
pub mod store;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Instant, UNIX_EPOCH};

use coda_actors::llm::registry::Chain;
use coda_actors::llm::{
    ChatMessage, ChatRequest, ChatRole, LlmError, LlmProvider, StreamChunk, ToolCallRequest, Usage,
};
use coda_actors::tools::{ProgressSink, ToolContext, ToolFailure};
use futures_util::StreamExt;
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Editor, Helper};
use serde::{Deserialize, Serialize};

use self::agent::ChatTools;
use self::store::{JsonDirStore, SavedSession, SessionStore};
use crate::config::{LlmConfig, Loaded};
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
    /// The model's context window in tokens, for compacting long conversations (0: as the
    /// provider reports it, else 8192).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub context_tokens: usize,
    /// Offer the model no tools (`/tools on` offers them again).
    #[arg(long)]
    pub no_tools: bool,
}

/// Most requests one turn makes while the model keeps calling tools.
const MAX_TOOL_ROUNDS: usize = 25;

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
    /// Some counts were estimated (the provider reported none).
    #[serde(default)]
    pub estimated: bool,
}

impl UsageBook {
    /// Adds one answer.
    pub fn add(&mut self, key: &str, prompt: u32, completion: u32, ms: f64, estimated: bool) {
        let r = self.rows.entry(key.to_string()).or_default();
        r.estimated |= estimated;
        r.requests += 1;
        r.prompt_tokens += u64::from(prompt);
        r.completion_tokens += u64::from(completion);
        r.model_ms += ms;
    }

    /// The summary table, with each row's cost at `prices` ("free" for local models,
    /// "unknown" without a price); `~` marks estimated counts.
    pub fn summary(&self, prices: &coda_actors::llm::usage::Prices) -> String {
        use coda_actors::llm::usage::accumulate;
        let w = self
            .rows
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(14)
            .max(14);
        let mut out = format!(
            "{:<w$}  {:>8}  {:>10}  {:>10}  {:>9}  {:>14}\n",
            "provider/model", "requests", "prompt", "completion", "time", "cost"
        );
        let mut total = UsageRow::default();
        let mut total_cost = coda_protocol::TokenUsage::default();
        let est = |e: bool| if e { "~" } else { "" };
        for (i, (k, r)) in self.rows.iter().enumerate() {
            let (provider, model) = k.split_once('/').unwrap_or((k.as_str(), ""));
            let mut u = coda_protocol::TokenUsage {
                input_tokens: r.prompt_tokens,
                output_tokens: r.completion_tokens,
                estimated: r.estimated,
                ..Default::default()
            };
            prices.price(provider, model, &mut u);
            accumulate(&mut total_cost, &u, i == 0);
            out.push_str(&format!(
                "{k:<w$}  {:>8}  {:>10}  {:>10}  {:>8.1}s  {:>14}\n",
                r.requests,
                format!("{}{}", est(r.estimated), r.prompt_tokens),
                format!("{}{}", est(r.estimated), r.completion_tokens),
                r.model_ms / 1000.0,
                cost_text(&u),
            ));
            total.requests += r.requests;
            total.prompt_tokens += r.prompt_tokens;
            total.completion_tokens += r.completion_tokens;
            total.model_ms += r.model_ms;
            total.estimated |= r.estimated;
        }
        if self.rows.len() > 1 {
            out.push_str(&format!(
                "{:<w$}  {:>8}  {:>10}  {:>10}  {:>8.1}s  {:>14}\n",
                "total",
                total.requests,
                format!("{}{}", est(total.estimated), total.prompt_tokens),
                format!("{}{}", est(total.estimated), total.completion_tokens),
                total.model_ms / 1000.0,
                cost_text(&total_cost),
            ));
        }
        if total.estimated {
            out.push_str("~ estimated: the provider reported no token counts\n");
        }
        out
    }
}

/// A cost for the table: `0.000123 USD`, `free`, `unknown`.
fn cost_text(u: &coda_protocol::TokenUsage) -> String {
    match (u.pricing, u.cost) {
        (coda_protocol::Pricing::Free, _) => "free".into(),
        (coda_protocol::Pricing::Priced, Some(c)) => {
            format!("{c:.6} {}", u.currency.as_deref().unwrap_or(""))
                .trim_end()
                .to_string()
        }
        _ => "unknown".into(),
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
    /// `/tools [on|off [NAME…]]`
    Tools(Vec<String>),
    /// `/undo`
    Undo,
    /// `/compact`
    Compact,
    /// `/clear`
    Clear,
    /// `/usage`
    Usage,
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
    (
        "/tools [on|off [NAME...]]",
        "list the tools, or turn them (or all) on or off",
    ),
    ("/undo", "undo the assistant's newest file change"),
    ("/compact", "summarise older turns now to free context"),
    ("/clear", "start the conversation over (usage is kept)"),
    ("/usage", "tokens in and out and their cost so far"),
    ("/exit", "quit with a usage summary (also /quit, Ctrl-D)"),
];

/// Keys and input forms, for `/help`.
const HELP_KEYS: &[(&str, &str)] = &[
    ("line ending in \\  or  \"\"\"...\"\"\"", "multi-line input"),
    (
        "Ctrl-C while answering",
        "stop the answer (and a running tool)",
    ),
    (
        "@path (Tab completes)",
        "attach a project file to the message",
    ),
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
        "tools" => Command::Tools(args),
        "undo" => Command::Undo,
        "compact" => Command::Compact,
        "clear" => Command::Clear,
        "usage" => Command::Usage,
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

struct ChatHelper {
    /// Where `@path` completes from.
    root: Option<std::path::PathBuf>,
}

impl Completer for ChatHelper {
    type Candidate = Pair;
    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        if let Some((start, names)) = self
            .root
            .as_deref()
            .and_then(|root| agent::complete_mention(root, line, pos))
        {
            let pairs = names
                .into_iter()
                .map(|n| Pair {
                    replacement: n.clone(),
                    display: n,
                })
                .collect();
            return Ok((start, pairs));
        }
        let Some(head) = line.get(..pos) else {
            return Ok((pos, Vec::new()));
        };
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
    /// The tools offered to the model, and the person's decisions about them.
    tools: Option<ChatTools>,
    /// Notes on the older turns compacted away, told to the model with each turn.
    summary: Option<String>,
    /// `--context-tokens` (0: ask the provider).
    context_tokens: usize,
    /// The window found for the current model.
    window: Option<usize>,
    /// The files in play changed since the map was last ranked.
    refocus: bool,
    /// The MCP servers whose tools are in `tools`, connected for the chat's life.
    mcp: Vec<coda_actors::mcp::Connection>,
}

/// One request's streamed answer.
#[derive(Default)]
struct Round {
    answer: String,
    calls: Vec<ToolCallRequest>,
    usage: Option<Usage>,
    tokens: u32,
    cancelled: bool,
}

/// What the model is told of a call that did not run.
fn refused(call_id: &str, code: &str, message: &str) -> ChatMessage {
    ChatMessage {
        role: ChatRole::Tool,
        content: serde_json::json!({"error": code, "message": message}).to_string(),
        tool_calls: Vec::new(),
        tool_call_id: Some(call_id.to_string()),
    }
}

/// `s` on one line, cut to about `max` characters.
fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        return flat;
    }
    let cut: String = flat.chars().take(max).collect();
    format!("{cut}…")
}

/// The longest run of backticks in `s` (a fence around it must be longer).
fn longest_backtick_run(s: &str) -> usize {
    s.split(|c| c != '`').map(str::len).max().unwrap_or(0)
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
            summary: self.summary.clone(),
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
        self.summary = s.summary;
        self.usage = s.usage;
        self.created_at = s.created_at;
        self.session = Some(s.name);
        Ok(())
    }

    /// The usage so far (`/usage`, and at the end).
    fn print_usage(&self) {
        if self.usage.rows.is_empty() {
            println!("no tokens used");
        } else {
            print!("{}", self.usage.summary(&self.prices()));
        }
    }

    /// `llm.prices`, looked up by lower-cased model name.
    fn prices(&self) -> coda_actors::llm::usage::Prices {
        coda_actors::llm::usage::Prices(
            self.cfg
                .prices
                .iter()
                .map(|(k, v)| (k.to_lowercase(), v.clone()))
                .collect(),
        )
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
                self.window = None;
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
                    self.window = None;
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
            Command::Tools(args) => self.tools_cmd(&args),
            Command::Undo => self.undo(),
            Command::Compact => self.compact(true),
            Command::Clear => {
                self.messages.clear();
                self.summary = None;
                println!("conversation cleared");
            }
            Command::Usage => self.print_usage(),
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

    /// The system prompt: the mode's, the project's, and the notes on compacted turns.
    fn system_prompt(&self) -> String {
        let mut system = self.mode.system_prompt().to_string();
        if let Some(p) = &self.project {
            system.push_str(&p.prompt());
        }
        if !self.offered().is_empty() {
            system.push_str(
                "\n\nUse the tools to look at the project before answering about it, and to \
                 make the changes asked for; paths are relative to the project. The user \
                 confirms changes, commands and commits.",
            );
        }
        if let Some(notes) = &self.summary {
            system.push_str(
                "\n\nNotes on the earlier conversation (its older turns were condensed):\n",
            );
            system.push_str(notes);
        }
        system
    }

    /// The tools offered with the next request. None to the embedded model: it does not
    /// call functions, and their schemas would only fill its small window.
    fn offered(&self) -> Vec<coda_actors::llm::ToolSpec> {
        match &self.tools {
            Some(t) if self.provider != "local" => t.specs(self.mode),
            _ => Vec::new(),
        }
    }

    /// The model's context window, in tokens.
    fn window(&mut self) -> usize {
        if self.context_tokens > 0 {
            return self.context_tokens;
        }
        if let Some(w) = self.window {
            return w;
        }
        let model = self
            .model
            .clone()
            .unwrap_or_else(|| self.chain.default_model());
        let known = (!model.is_empty())
            .then(|| self.rt.block_on(self.chain.model_info(&model)).ok())
            .flatten()
            .and_then(|i| i.context_length)
            .map(|c| c as usize)
            .filter(|&c| c > 0);
        let w = known.unwrap_or(compact::DEFAULT_WINDOW);
        self.window = Some(w);
        w
    }

    /// Compacts the older turns when the next request would fill most of the window
    /// (`force`: now, whatever the size).
    fn compact(&mut self, force: bool) {
        let specs = self.offered();
        let system = ChatMessage::new(ChatRole::System, self.system_prompt());
        let estimate = |msgs: &[ChatMessage], system: &ChatMessage| {
            compact::estimate_tokens(std::iter::once(system).chain(msgs))
                + serde_json::to_string(&specs).map_or(0, |s| s.len() / 4)
        };
        let before = estimate(&self.messages, &system);
        let window = self.window();
        if !force && (before as f64) < window as f64 * compact::COMPACT_AT {
            return;
        }
        let Some(cut) = compact::cut_point(&self.messages, compact::KEEP_TURNS) else {
            if force {
                println!(
                    "nothing to compact yet (the last {} turns are kept whole)",
                    compact::KEEP_TURNS
                );
            }
            return;
        };
        let req = ChatRequest {
            messages: compact::summary_request(self.summary.as_deref(), &self.messages[..cut]),
            model: self.model.clone(),
            max_tokens: Some(400),
            ..Default::default()
        };
        let t0 = Instant::now();
        let chain = self.chain.clone();
        match self.rt.block_on(chain.chat(req)) {
            Ok(r) if !r.text.trim().is_empty() => {
                let (provider, model) = self
                    .chain
                    .answered_by()
                    .unwrap_or_else(|| (self.provider.clone(), self.current_model()));
                self.usage.add(
                    &format!("{provider}/{model}"),
                    r.usage.prompt_tokens,
                    r.usage.completion_tokens,
                    t0.elapsed().as_secs_f64() * 1000.0,
                    false,
                );
                self.summary = Some(r.text.trim().to_string());
            }
            Ok(_) => println!(
                "{}",
                self.err("the model wrote no summary of the older turns; they are dropped")
            ),
            Err(e) => println!(
                "{}",
                self.err(&format!(
                    "could not summarise the older turns ({e}); they are dropped"
                ))
            ),
        }
        self.messages.drain(..cut);
        let system = ChatMessage::new(ChatRole::System, self.system_prompt());
        let after = estimate(&self.messages, &system);
        println!(
            "{}",
            self.dim(&format!(
                "[compacted {cut} older messages into notes: ~{before} → ~{after} of {window} tokens]"
            ))
        );
    }

    /// Attaches the files `@mentioned` in `text` (read through `read_file`, so confined to
    /// the project like the model's reads). A mention that is no file is left as written.
    fn attach(&mut self, text: String) -> String {
        let Some(tools) = self.tools.as_mut() else {
            return text;
        };
        let mut out = text.clone();
        let mut notes = Vec::new();
        for path in agent::mentions(&text) {
            let dir = tools.root.join(&path).is_dir();
            let (tool, args) = if dir {
                ("list_dir", serde_json::json!({ "path": path }))
            } else {
                ("read_file", serde_json::json!({ "path": path }))
            };
            let ctx = ToolContext {
                call_id: format!("attach-{path}"),
                ..ToolContext::default()
            };
            let res = self
                .rt
                .block_on(tools.registry.call(tool, args, ctx, false));
            let note = match res {
                Ok(v) if dir => {
                    let listing = serde_json::to_string_pretty(&v["entries"]).unwrap_or_default();
                    out.push_str(&format!("\n\nDirectory {path}:\n{listing}"));
                    format!("attached the listing of {path}/")
                }
                Ok(v) => {
                    let content = v["content"].as_str().unwrap_or_default();
                    let (a, b) = (
                        v["start_line"].as_u64().unwrap_or(1),
                        v["end_line"].as_u64().unwrap_or(0),
                    );
                    let total = v["total_lines"]
                        .as_u64()
                        .map(|t| format!(" of {t}"))
                        .unwrap_or_default();
                    let cut = if v["truncated"] == true {
                        ", truncated"
                    } else {
                        ""
                    };
                    let fence = "`".repeat(longest_backtick_run(content).max(2) + 1);
                    out.push_str(&format!(
                        "\n\nFile {path} (lines {a}–{b}{total}{cut}):\n{fence}\n{}\n{fence}",
                        content.trim_end_matches('\n')
                    ));
                    if tools.touch(&path) {
                        self.refocus = true;
                    }
                    format!("attached {path} (lines {a}–{b}{total}{cut})")
                }
                Err(e) => format!("@{path} not attached: {e}"),
            };
            notes.push(note);
        }
        for note in notes {
            println!("{}", self.dim(&note));
        }
        out
    }

    fn tools_cmd(&mut self, args: &[String]) {
        let mode = self.mode;
        let Some(tools) = self.tools.as_mut() else {
            println!("{}", self.err("no tools in this chat"));
            return;
        };
        match args.first().map(String::as_str) {
            None => {
                println!(
                    "tools in mode {} (/tools on|off [NAME...] to change):",
                    mode.name()
                );
                print!("{}", tools.listing(mode));
            }
            Some(w @ ("on" | "off")) => match tools.toggle(w == "on", &args[1..]) {
                Ok(said) => println!("{said}"),
                Err(e) => println!("{}", self.err(&e)),
            },
            Some(other) => println!(
                "{}",
                self.err(&format!(
                    "unknown /tools {other}: /tools, /tools on|off [NAME...]"
                ))
            ),
        }
    }

    /// `/undo`: the person typed it, so it is confirmed.
    fn undo(&mut self) {
        let Some(tools) = self.tools.as_ref() else {
            println!("{}", self.err("no tools in this chat"));
            return;
        };
        let ctx = ToolContext {
            call_id: "undo".into(),
            ..ToolContext::default()
        };
        let res = self.rt.block_on(tools.registry.call(
            "undo_last_write",
            serde_json::json!({}),
            ctx,
            true,
        ));
        match res {
            Ok(v) => println!("{}", agent::result_line("undo_last_write", &v)),
            Err(e) => println!("{}", self.err(&format!("undo: {e}"))),
        }
    }

    /// Sends `text`, streams the answer and runs the tools the model calls, until it
    /// answers without calling one.
    fn turn(&mut self, editor: &mut Editor<ChatHelper, DefaultHistory>, text: String) {
        let text = self.attach(text);
        self.messages.push(ChatMessage::new(ChatRole::User, text));
        let t0 = Instant::now();
        let mut tokens = 0u32;
        let mut last = (self.provider.clone(), self.current_model());
        for round in 0..MAX_TOOL_ROUNDS {
            self.compact(false);
            if std::mem::take(&mut self.refocus) {
                if let (Some(p), Some(t)) = (self.project.as_mut(), self.tools.as_ref()) {
                    p.refocus(t.touched(), Some(llm_setup::cache_dir().join("repomap")));
                }
            }
            let mut msgs = vec![ChatMessage::new(ChatRole::System, self.system_prompt())];
            msgs.extend(self.messages.iter().cloned());
            let req = ChatRequest {
                messages: msgs,
                model: self.model.clone(),
                tools: self.offered(),
                ..Default::default()
            };
            let started = Instant::now();
            let prompt_estimate = coda_actors::llm::usage::estimate_prompt(&req.messages);
            let (r, error) = self.stream_round(req);
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            let (provider, model) = self
                .chain
                .answered_by()
                .unwrap_or_else(|| (self.provider.clone(), self.current_model()));
            last = (provider.clone(), model.clone());
            if let Some(e) = error {
                if r.answer.is_empty() && round == 0 {
                    // Nothing came back: forget the question so a retry does not repeat it.
                    self.messages.pop();
                } else if !r.answer.is_empty() {
                    println!();
                    self.messages
                        .push(ChatMessage::new(ChatRole::Assistant, r.answer));
                }
                println!("{}", self.err(&format!("error: {e}")));
                return;
            }
            // Without counts from the provider: estimated, and marked so.
            let (p, c, estimated) = r.usage.map_or_else(
                || {
                    let c = coda_actors::llm::usage::estimate_completion(&r.answer, r.tokens);
                    (prompt_estimate, c, true)
                },
                |u| (u.prompt_tokens, u.completion_tokens, false),
            );
            self.usage
                .add(&format!("{provider}/{model}"), p, c, ms, estimated);
            tokens += c;
            let calls = if r.cancelled { Vec::new() } else { r.calls };
            if !r.answer.is_empty() || calls.is_empty() {
                println!();
            }
            self.messages.push(ChatMessage {
                role: ChatRole::Assistant,
                content: r.answer,
                tool_calls: calls.clone(),
                tool_call_id: None,
            });
            if r.cancelled {
                println!("{}", self.dim("[stopped]"));
                break;
            }
            if calls.is_empty() {
                break;
            }
            if !self.run_calls(editor, &calls) {
                println!("{}", self.dim("[stopped]"));
                break;
            }
            if round + 1 == MAX_TOOL_ROUNDS {
                println!(
                    "{}",
                    self.err(&format!(
                        "stopped after {MAX_TOOL_ROUNDS} rounds of tool calls; say how to go on"
                    ))
                );
            }
        }
        self.turns += 1;
        println!(
            "{}",
            self.dim(&format!(
                "· {}/{} · {tokens} tokens · {:.1} s",
                last.0,
                last.1,
                t0.elapsed().as_secs_f64()
            ))
        );
    }

    /// One request, its answer streamed to the terminal; Ctrl-C stops it.
    fn stream_round(&self, req: ChatRequest) -> (Round, Option<LlmError>) {
        let chain = self.chain.clone();
        self.rt.block_on(async move {
            let mut r = Round::default();
            // Subscribed before the request goes out: `tokio::signal::ctrl_c()` only
            // subscribes when first polled, so a Ctrl-C typed right after the first token
            // could be missed and the chat would hang on a stalled answer.
            let mut interrupt = Interrupt::subscribe();
            let mut stream = tokio::select! {
                _ = interrupt.recv() => {
                    r.cancelled = true;
                    return (r, None);
                }
                s = chain.chat_stream(req) => match s {
                    Ok(s) => s,
                    Err(e) => return (r, Some(e)),
                },
            };
            let mut out = std::io::stdout();
            loop {
                tokio::select! {
                    _ = interrupt.recv() => {
                        r.cancelled = true;
                        return (r, None);
                    }
                    next = stream.next() => match next {
                        Some(Ok(StreamChunk::Token(t))) => {
                            r.tokens += 1;
                            let _ = out.write_all(t.as_bytes());
                            let _ = out.flush();
                            r.answer.push_str(&t);
                        }
                        Some(Ok(StreamChunk::ToolCall(c))) => r.calls.push(c),
                        Some(Ok(StreamChunk::Done { usage, .. })) => {
                            r.usage = usage;
                            break;
                        }
                        Some(Err(e)) => return (r, Some(e)),
                        None => break,
                    }
                }
            }
            (r, None)
        })
    }

    /// Runs the model's calls in order, asking where the permission says to, and adds
    /// their results to the conversation. `false`: the person stopped the turn (Ctrl-C).
    fn run_calls(
        &mut self,
        editor: &mut Editor<ChatHelper, DefaultHistory>,
        calls: &[ToolCallRequest],
    ) -> bool {
        let mut stopped = false;
        for call in calls {
            if stopped {
                self.messages
                    .push(refused(&call.id, "cancelled", "the user stopped the turn"));
                continue;
            }
            let Some(tools) = self.tools.as_ref() else {
                self.messages
                    .push(refused(&call.id, "unavailable", "no tools in this chat"));
                continue;
            };
            let args = coda_actors::tools::Call::from_request(call, None, None).arguments;
            println!(
                "{}",
                self.dim(&format!(
                    "⚙ {}({})",
                    call.name,
                    one_line(&call.arguments, 200)
                ))
            );
            let confirmed = tools.confirmed(&call.name);
            let mut res = self.call_tool(&call.name, &call.id, args.clone(), confirmed);
            if let Err(ToolFailure::NeedsConfirmation { preview, .. }) = &res {
                if let Some(p) = preview {
                    println!("  {}", p.summary);
                    if let Some(diff) = &p.diff {
                        print!("{}", self.colour_diff(diff));
                    }
                }
                match self.confirm(editor, &call.name) {
                    Some(true) => {
                        res = self.call_tool(&call.name, &call.id, args.clone(), true);
                    }
                    Some(false) => {
                        println!("{}", self.dim("  → not allowed"));
                        self.messages.push(refused(
                            &call.id,
                            "refused",
                            "the user did not allow this call; ask them or do something else",
                        ));
                        continue;
                    }
                    None => {
                        stopped = true;
                        self.messages.push(refused(
                            &call.id,
                            "cancelled",
                            "the user stopped the turn",
                        ));
                        continue;
                    }
                }
            }
            match &res {
                Ok(v) => println!(
                    "{}",
                    self.dim(&format!("  → {}", agent::result_line(&call.name, v)))
                ),
                Err(ToolFailure::Unavailable(why)) if why == "interrupted" => stopped = true,
                Err(e) => println!("{}", self.err(&format!("  → {e}"))),
            }
            if res.is_ok() {
                if let Some(t) = self.tools.as_mut() {
                    if t.note_call(&call.name, &args) {
                        self.refocus = true;
                    }
                }
            }
            self.messages
                .push(coda_actors::tools::tool_message(&call.id, &res));
        }
        !stopped
    }

    /// Runs one call; Ctrl-C stops it (a command's process group is killed) and it answers
    /// `unavailable: interrupted`.
    fn call_tool(
        &self,
        name: &str,
        id: &str,
        args: serde_json::Value,
        confirmed: bool,
    ) -> Result<serde_json::Value, ToolFailure> {
        let Some(tools) = self.tools.as_ref() else {
            return Err(ToolFailure::Unavailable("no tools in this chat".into()));
        };
        let cancelled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let color = self.color;
        let ctx = ToolContext {
            call_id: id.to_string(),
            cancelled: cancelled.clone(),
            progress: Some(ProgressSink::new(move |_stream, text| {
                let mut out = std::io::stdout().lock();
                let _ = if color {
                    write!(out, "\x1b[2m{text}\x1b[0m")
                } else {
                    write!(out, "{text}")
                };
                let _ = out.flush();
            })),
            ..ToolContext::default()
        };
        self.rt.block_on(async {
            let mut interrupt = Interrupt::subscribe();
            let call = tools.registry.call(name, args, ctx, confirmed);
            tokio::pin!(call);
            tokio::select! {
                r = &mut call => r,
                _ = interrupt.recv() => {
                    cancelled.store(true, std::sync::atomic::Ordering::Relaxed);
                    let _ = call.await;
                    Err(ToolFailure::Unavailable("interrupted".into()))
                }
            }
        })
    }

    /// Asks whether `tool` may run: `Some(true)` yes, `Some(false)` no, `None` Ctrl-C/D.
    fn confirm(
        &mut self,
        editor: &mut Editor<ChatHelper, DefaultHistory>,
        tool: &str,
    ) -> Option<bool> {
        let always = self.tools.as_ref().is_some_and(|t| t.can_always(tool));
        let prompt = if always {
            format!("  allow {tool}? [y]es, [n]o, [a]lways this session: ")
        } else {
            format!("  allow {tool}? [y]es, [n]o: ")
        };
        loop {
            match editor.readline(&prompt) {
                Ok(a) => match a.trim().to_ascii_lowercase().as_str() {
                    "y" | "yes" => return Some(true),
                    "n" | "no" | "" => return Some(false),
                    "a" | "always" if always => {
                        if let Some(t) = self.tools.as_mut() {
                            t.allow_always(tool);
                        }
                        return Some(true);
                    }
                    _ => continue,
                },
                Err(_) => return None,
            }
        }
    }

    fn colour_diff(&self, diff: &str) -> String {
        if !self.color {
            return diff.to_string();
        }
        diff.lines()
            .map(|l| {
                let code = if l.starts_with("+++") || l.starts_with("---") {
                    "1"
                } else if l.starts_with('+') {
                    "32"
                } else if l.starts_with('-') {
                    "31"
                } else if l.starts_with("@@") {
                    "36"
                } else {
                    return format!("{l}\n");
                };
                format!("\x1b[{code}m{l}\x1b[0m\n")
            })
            .collect()
    }
}

/// Runs `coda chat`. `cfg` already has `--provider` applied.
pub fn run(loaded: &Loaded, args: ChatArgs) -> anyhow::Result<()> {
    let cfg = &loaded.settings.llm;
    let settings = llm_setup::llm_settings(cfg, args.provider.model.clone());
    let chain = llm_setup::build_chain(&settings)?;
    let data = llm_setup::data_dir();
    let cache = llm_setup::cache_dir().join("repomap");
    let project = std::env::current_dir()
        .ok()
        .and_then(|d| project::detect(&d, args.map_tokens, Some(cache.clone())));
    // The tools work in `tools.project_root` when it is set, else in the project the chat
    // started in (so the model's paths match the map's), else in the working directory.
    let root = (loaded.settings.tools.project_root.is_empty())
        .then(|| project.as_ref().map(|p| p.root.clone()))
        .flatten();
    let registry = crate::cmd::tools::registry(loaded, root.clone())?;
    let rt = llm_setup::background_runtime()?;
    let mcp_root = root.unwrap_or_else(|| loaded.settings.tools.project_root());
    let servers = crate::cmd::mcp::servers(loaded, &mcp_root)?;
    let mcp = rt.block_on(crate::cmd::mcp::connect_all(servers, &registry));
    let mut tools = ChatTools::new(registry, loaded.settings.tools.project_root());
    if let Some(p) = &project {
        if loaded.settings.tools.project_root.is_empty() {
            tools.root = p.root.clone();
        }
    }
    if args.no_tools {
        let _ = tools.toggle(false, &[]);
    }
    let helper_root = tools.root.clone();
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
        rt,
        color: std::io::stdout().is_terminal(),
        turns: 0,
        project,
        tools: Some(tools),
        summary: None,
        context_tokens: args.context_tokens,
        window: None,
        refocus: false,
        mcp,
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
    editor.set_helper(Some(ChatHelper {
        root: Some(helper_root),
    }));
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
                    repl.turn(&mut editor, text);
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
    let conns = std::mem::take(&mut repl.mcp);
    repl.rt.block_on(crate::cmd::mcp::disconnect_all(conns));
    println!("\n── session summary ──");
    println!(
        "turns: {} · time: {:.1} s",
        repl.turns,
        started.elapsed().as_secs_f64()
    );
    repl.print_usage();
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
        u.add("openai/m", 10, 5, 1000.0, false);
        u.add("openai/m", 20, 7, 500.0, false);
        u.add("ollama/l", 1, 2, 100.0, false);
        let none = coda_actors::llm::usage::Prices::default();
        let s = u.summary(&none);
        assert!(
            s.contains("openai/m") && s.contains("30") && s.contains("12"),
            "{s}"
        );
        assert!(s.contains("total"), "{s}");
        // Local models are free; a paid model without a price is unknown, and so is a
        // total that includes it.
        assert!(
            s.lines()
                .any(|l| l.starts_with("ollama/l") && l.ends_with("free")),
            "{s}"
        );
        assert!(
            s.lines()
                .any(|l| l.starts_with("openai/m") && l.ends_with("unknown")),
            "{s}"
        );
        assert!(
            s.lines()
                .any(|l| l.starts_with("total") && l.ends_with("unknown")),
            "{s}"
        );
        let mut priced = std::collections::BTreeMap::new();
        priced.insert(
            "m".to_string(),
            coda_actors::llm::usage::Price {
                input_per_mtok: 1_000_000.0,
                output_per_mtok: 0.0,
                currency: "USD".into(),
            },
        );
        let s = u.summary(&coda_actors::llm::usage::Prices(priced));
        // 30 prompt tokens at 1 per token; the free model adds nothing.
        assert!(
            s.lines()
                .any(|l| l.starts_with("openai/m") && l.ends_with("30.000000 USD")),
            "{s}"
        );
        assert!(
            s.lines()
                .any(|l| l.starts_with("total") && l.ends_with("30.000000 USD")),
            "{s}"
        );
        u.add("openai/m", 3, 3, 1.0, true);
        assert!(u.summary(&none).contains("~ estimated"));
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
            summary: None,
            usage: u,
        });
        assert!(
            md.contains("## You\n\nq")
                && md.contains("## Assistant\n\na")
                && md.contains("mode: review")
        );
    }
}
