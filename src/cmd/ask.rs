//! `coda ask`: one question, the answer streamed to stdout as it comes. The prompt is the
//! arguments, plus standard input when it is piped (`git diff | coda ask review this`).
//! With `--tools` the model may call the project's tools (the calls are shown on stderr);
//! those that need permission run only with `--yes`.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use coda_actors::llm::{
    ChatMessage, ChatRequest, ChatRole, FinishReason, LlmProvider, StreamChunk, ToolCallRequest,
    Usage,
};
use coda_actors::tools::{Call, ToolContext, ToolFailure, ToolRegistry};
use futures_util::StreamExt;

use crate::config::Loaded;
use crate::llm_setup::{self, ProviderArgs};

/// Most requests one question makes while the model keeps calling tools.
const MAX_TOOL_ROUNDS: usize = 25;

/// `coda ask` flags.
#[derive(Debug, clap::Args)]
pub struct AskArgs {
    #[command(flatten)]
    pub provider: ProviderArgs,
    /// Print one JSON object (text, provider, model, usage, ...) at the end instead of
    /// streaming the text.
    #[arg(long)]
    pub json: bool,
    /// System prompt.
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Offer the model the tools (`coda tools list`) and run the calls it makes, with the
    /// usual permissions: calls that need confirmation are refused unless --yes.
    #[arg(long)]
    pub tools: bool,
    /// With --tools: confirm the calls that ask (writes, commands, commits).
    #[arg(long, short = 'y', requires = "tools")]
    pub yes: bool,
    /// With --tools: the project they work in (default: tools.project_root, else the
    /// working directory).
    #[arg(long, value_name = "DIR", requires = "tools")]
    pub root: Option<PathBuf>,
    /// The question (joined with spaces). Piped standard input is appended to it.
    #[arg(value_name = "PROMPT", trailing_var_arg = true)]
    pub prompt: Vec<String>,
}

/// The `--json` result.
#[derive(Debug, serde::Serialize)]
pub struct AskResult {
    pub provider: String,
    pub model: String,
    pub text: String,
    pub tool_calls: Vec<ToolCallRequest>,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub duration_ms: f64,
    pub first_token_ms: Option<f64>,
    /// With --tools: every call the model made and what it answered, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_results: Vec<ToolRun>,
}

/// One tool call made for the model.
#[derive(Debug, serde::Serialize)]
pub struct ToolRun {
    pub id: String,
    pub name: String,
    pub arguments: serde_json::Value,
    /// The result, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Why not, when it did not (`needs_confirmation`, `denied`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Builds the prompt from the arguments and (piped) standard input.
pub fn prompt_text(args: &[String], stdin: Option<String>) -> Option<String> {
    let arg = args.join(" ");
    let piped = stdin.filter(|s| !s.trim().is_empty());
    let text = match (arg.trim().is_empty(), piped) {
        (true, None) => return None,
        (false, None) => arg,
        (true, Some(p)) => p,
        (false, Some(p)) => format!("{arg}\n\n{p}"),
    };
    Some(text)
}

/// Runs `coda ask` with the loaded config.
pub fn run(loaded: &Loaded, args: AskArgs) -> anyhow::Result<()> {
    let cfg = &loaded.settings.llm;
    let stdin = if std::io::stdin().is_terminal() {
        None
    } else {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read standard input")?;
        Some(s)
    };
    let Some(prompt) = prompt_text(&args.prompt, stdin) else {
        return Err(crate::config::ConfigError::Invalid {
            key: "PROMPT".into(),
            problem: "nothing to ask: give a prompt or pipe text to standard input".into(),
        }
        .into());
    };
    let registry = if args.tools {
        Some(crate::cmd::tools::registry(loaded, None)?)
    } else {
        None
    };
    let settings = llm_setup::llm_settings(cfg, args.provider.model.clone());
    let chain = llm_setup::build_chain(&settings)?;
    let mut messages = Vec::new();
    if let Some(sys) = args.system.clone().filter(|s| !s.trim().is_empty()) {
        messages.push(ChatMessage::new(ChatRole::System, sys));
    }
    messages.push(ChatMessage::new(ChatRole::User, prompt));
    let rt = llm_setup::runtime()?;
    let mcp = match &registry {
        Some(r) => {
            let servers = crate::cmd::mcp::servers(loaded, &loaded.settings.tools.project_root())?;
            rt.block_on(crate::cmd::mcp::connect_all(servers, r))
        }
        None => Vec::new(),
    };
    let tools = registry
        .as_ref()
        .map(ToolRegistry::specs)
        .unwrap_or_default();
    let result = rt.block_on(async {
        let t0 = Instant::now();
        let mut out = std::io::stdout().lock();
        let mut text = String::new();
        let mut first_token_ms = None;
        let mut usage = Usage::default();
        let mut runs = Vec::new();
        let mut answered_by = (chain.name().to_string(), chain.default_model());
        let mut round = 0;
        let (finish_reason, tool_calls) = loop {
            round += 1;
            let req = ChatRequest {
                messages: messages.clone(),
                tools: tools.clone(),
                ..Default::default()
            };
            let mut stream = chain.chat_stream(req).await?;
            if let Some(by) = chain.answered_by() {
                answered_by = by;
            }
            let mut said = String::new();
            let mut calls = Vec::new();
            let mut tokens = 0u32;
            let mut end = (FinishReason::Stop, None);
            while let Some(chunk) = stream.next().await {
                match chunk? {
                    StreamChunk::Token(t) => {
                        first_token_ms.get_or_insert_with(|| t0.elapsed().as_secs_f64() * 1000.0);
                        tokens += 1;
                        if !args.json {
                            out.write_all(t.as_bytes())?;
                            out.flush()?;
                        }
                        said.push_str(&t);
                    }
                    StreamChunk::ToolCall(c) => calls.push(c),
                    StreamChunk::Done {
                        finish_reason,
                        usage,
                    } => {
                        end = (finish_reason, usage);
                        break;
                    }
                }
            }
            let u = end.1.unwrap_or(Usage {
                prompt_tokens: 0,
                completion_tokens: tokens,
            });
            usage.prompt_tokens += u.prompt_tokens;
            usage.completion_tokens += u.completion_tokens;
            text.push_str(&said);
            let Some(registry) = registry.as_ref().filter(|_| !calls.is_empty()) else {
                break (end.0, calls);
            };
            if round == MAX_TOOL_ROUNDS {
                eprintln!("coda: stopped after {MAX_TOOL_ROUNDS} rounds of tool calls");
                break (end.0, calls);
            }
            messages.push(ChatMessage {
                role: ChatRole::Assistant,
                content: said,
                tool_calls: calls.clone(),
                tool_call_id: None,
            });
            for c in &calls {
                let run = run_tool(registry, c, args.yes).await;
                let res = match (&run.result, &run.error) {
                    (Some(v), _) => Ok(v.clone()),
                    (None, e) => Err(e.clone().unwrap_or_default()),
                };
                let content = match res {
                    Ok(v) => v.to_string(),
                    Err(e) => serde_json::json!({"error": e}).to_string(),
                };
                messages.push(ChatMessage {
                    role: ChatRole::Tool,
                    content,
                    tool_calls: Vec::new(),
                    tool_call_id: Some(c.id.clone()),
                });
                runs.push(run);
            }
        };
        let (provider, model) = answered_by;
        if args.json {
            let result = AskResult {
                provider,
                model,
                text,
                tool_calls,
                finish_reason,
                usage,
                duration_ms: t0.elapsed().as_secs_f64() * 1000.0,
                first_token_ms,
                tool_results: runs,
            };
            writeln!(out, "{}", serde_json::to_string_pretty(&result)?)?;
        } else {
            if !text.ends_with('\n') {
                out.write_all(b"\n")?;
            }
            if finish_reason == FinishReason::Length {
                eprintln!(
                    "coda: the answer was cut at llm.max_tokens ({})",
                    cfg.max_tokens
                );
            }
        }
        out.flush()?;
        Ok(())
    });
    rt.block_on(crate::cmd::mcp::disconnect_all(mcp));
    result
}

/// Runs one call the model made, telling stderr; a call that asks runs only when `yes`.
async fn run_tool(registry: &ToolRegistry, c: &ToolCallRequest, yes: bool) -> ToolRun {
    let arguments = Call::from_request(c, None, None).arguments;
    eprintln!("⚙ {}({})", c.name, c.arguments);
    let ctx = ToolContext {
        call_id: c.id.clone(),
        ..ToolContext::default()
    };
    let res = registry.call(&c.name, arguments.clone(), ctx, yes).await;
    let (result, error) = match res {
        Ok(v) => (Some(v), None),
        Err(f @ ToolFailure::NeedsConfirmation { .. }) => {
            if let Some(p) = f.preview() {
                eprintln!("  {}", p.summary);
            }
            (
                None,
                Some(format!(
                    "not run: {f}; the user must run `coda ask --tools --yes` to allow it"
                )),
            )
        }
        Err(f) => (None, Some(format!("{}: {f}", f.code()))),
    };
    match &error {
        Some(e) => eprintln!("  → {e}"),
        None => eprintln!("  → ok"),
    }
    ToolRun {
        id: c.id.clone(),
        name: c.name.clone(),
        arguments,
        result,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_from_args_and_stdin() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            prompt_text(&a(&["what", "is", "2+2"]), None).unwrap(),
            "what is 2+2"
        );
        assert_eq!(
            prompt_text(&a(&["review"]), Some("diff\n".into())).unwrap(),
            "review\n\ndiff\n"
        );
        assert_eq!(
            prompt_text(&[], Some("only stdin".into())).unwrap(),
            "only stdin"
        );
        assert_eq!(prompt_text(&[], Some("  \n".into())), None);
        assert_eq!(prompt_text(&a(&[" "]), None), None);
    }
}
