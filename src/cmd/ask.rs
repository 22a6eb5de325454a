//! `coda ask`: one question, the answer streamed to stdout as it comes. The prompt is the
//! arguments, plus standard input when it is piped (`git diff | coda ask review this`).

use std::io::{IsTerminal, Read, Write};
use std::time::Instant;

use anyhow::Context as _;
use coda_actors::llm::{
    ChatMessage, ChatRequest, ChatRole, FinishReason, LlmProvider, StreamChunk, ToolCallRequest,
    Usage,
};
use futures_util::StreamExt;

use crate::llm_setup::{self, ProviderArgs};

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

/// Runs `coda ask` with the loaded `[llm]` config.
pub fn run(cfg: &crate::config::LlmConfig, args: AskArgs) -> anyhow::Result<()> {
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
    let settings = llm_setup::llm_settings(cfg, args.provider.model.clone());
    let chain = llm_setup::build_chain(&settings)?;
    let mut messages = Vec::new();
    if let Some(sys) = args.system.filter(|s| !s.trim().is_empty()) {
        messages.push(ChatMessage::new(ChatRole::System, sys));
    }
    messages.push(ChatMessage::new(ChatRole::User, prompt));
    let req = ChatRequest {
        messages,
        ..Default::default()
    };
    let rt = llm_setup::runtime()?;
    rt.block_on(async {
        let t0 = Instant::now();
        let mut stream = chain.chat_stream(req).await?;
        let (provider, model) = chain
            .answered_by()
            .unwrap_or_else(|| (chain.name().to_string(), chain.default_model()));
        let mut out = std::io::stdout().lock();
        let mut text = String::new();
        let mut tool_calls = Vec::new();
        let mut first_token_ms = None;
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
                    text.push_str(&t);
                }
                StreamChunk::ToolCall(c) => tool_calls.push(c),
                StreamChunk::Done {
                    finish_reason,
                    usage,
                } => {
                    end = (finish_reason, usage);
                    break;
                }
            }
        }
        let usage = end.1.unwrap_or(Usage {
            prompt_tokens: 0,
            completion_tokens: tokens,
        });
        if args.json {
            let result = AskResult {
                provider,
                model,
                text,
                tool_calls,
                finish_reason: end.0,
                usage,
                duration_ms: t0.elapsed().as_secs_f64() * 1000.0,
                first_token_ms,
            };
            writeln!(out, "{}", serde_json::to_string_pretty(&result)?)?;
        } else {
            if !text.ends_with('\n') {
                out.write_all(b"\n")?;
            }
            if end.0 == FinishReason::Length {
                eprintln!(
                    "coda: the answer was cut at llm.max_tokens ({})",
                    cfg.max_tokens
                );
            }
        }
        out.flush()?;
        Ok(())
    })
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
