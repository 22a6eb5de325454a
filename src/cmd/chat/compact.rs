//! Keeping a long `coda chat` inside the model's context window: before a request that
//! would fill most of it, the older turns are summarised by the model itself and replaced
//! by that summary (kept in the system prompt), the latest turns kept whole.

use coda_actors::llm::{ChatMessage, ChatRole};

/// Compact once the conversation is estimated to fill this share of the window.
pub const COMPACT_AT: f64 = 0.75;
/// Whole user turns kept after compacting (with their answers and tool calls).
pub const KEEP_TURNS: usize = 2;
/// Window assumed when neither `--context-tokens` nor the provider says.
pub const DEFAULT_WINDOW: usize = 8192;
/// Characters of one message given to the summariser (tool output is the bulk).
const SUMMARY_MESSAGE_CHARS: usize = 2000;

/// Tokens of `messages`, estimated: four characters a token plus a few for each message's
/// framing. Providers count differently; this only has to say when to compact, early
/// rather than late.
pub fn estimate_tokens<'a>(messages: impl IntoIterator<Item = &'a ChatMessage>) -> usize {
    messages
        .into_iter()
        .map(|m| {
            let calls: usize = m
                .tool_calls
                .iter()
                .map(|c| c.name.len() + c.arguments.len())
                .sum();
            (m.content.chars().count() + calls).div_ceil(4) + 4
        })
        .sum()
}

/// Where the kept part of `messages` starts: at the user message that opens the
/// `keep`-th turn from the end. `None` when there is nothing older to compact. Cuts only
/// before a user message, so a tool call is never parted from its result.
pub fn cut_point(messages: &[ChatMessage], keep: usize) -> Option<usize> {
    let users: Vec<usize> = messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m.role == ChatRole::User)
        .map(|(i, _)| i)
        .collect();
    let keep = keep.max(1);
    if users.len() <= keep {
        return None;
    }
    Some(users[users.len() - keep]).filter(|&i| i > 0)
}

/// The request that asks the model for the summary of `old` (and of an earlier summary).
pub fn summary_request(previous: Option<&str>, old: &[ChatMessage]) -> Vec<ChatMessage> {
    let mut transcript = String::new();
    if let Some(p) = previous {
        transcript.push_str(&format!("(Summary of what came before)\n{p}\n\n"));
    }
    for m in old {
        let who = match m.role {
            ChatRole::User => "User",
            ChatRole::Assistant => "Assistant",
            ChatRole::System => "System",
            ChatRole::Tool => "Tool result",
        };
        let mut text: String = m.content.chars().take(SUMMARY_MESSAGE_CHARS).collect();
        if text.len() < m.content.len() {
            text.push_str(" […]");
        }
        for c in &m.tool_calls {
            text.push_str(&format!("\n[calls {}({})]", c.name, c.arguments));
        }
        transcript.push_str(&format!("{who}: {}\n\n", text.trim_end()));
    }
    vec![
        ChatMessage::new(
            ChatRole::System,
            "You condense a conversation between a user and a coding assistant into notes the \
             assistant will rely on later. Keep: the user's goals and preferences, decisions \
             made, files read or changed (with paths), commands run and their outcome, open \
             problems and next steps. Drop pleasantries and text the notes make redundant. \
             Write plain prose or bullets, at most 250 words.",
        ),
        ChatMessage::new(
            ChatRole::User,
            format!("The conversation so far:\n\n{transcript}Write the notes."),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use coda_actors::llm::ToolCallRequest;

    fn m(role: ChatRole, text: &str) -> ChatMessage {
        ChatMessage::new(role, text)
    }

    #[test]
    fn cuts_before_the_kept_turns_never_inside_a_tool_exchange() {
        let mut call = m(ChatRole::Assistant, "");
        call.tool_calls.push(ToolCallRequest {
            id: "c1".into(),
            name: "read_file".into(),
            arguments: "{}".into(),
        });
        let msgs = vec![
            m(ChatRole::User, "one"),
            m(ChatRole::Assistant, "a1"),
            m(ChatRole::User, "two"),
            call,
            m(ChatRole::Tool, "{}"),
            m(ChatRole::Assistant, "a2"),
            m(ChatRole::User, "three"),
            m(ChatRole::Assistant, "a3"),
        ];
        assert_eq!(cut_point(&msgs, 2), Some(2));
        assert_eq!(cut_point(&msgs, 1), Some(6));
        assert_eq!(cut_point(&msgs, 3), None);
        assert_eq!(cut_point(&msgs[..2], 2), None);
    }

    #[test]
    fn estimates_grow_with_the_text_and_the_summary_request_is_bounded() {
        let short = [m(ChatRole::User, "hi")];
        let long = [m(ChatRole::User, &"x".repeat(4000))];
        assert!(estimate_tokens(&short) < 10);
        assert_eq!(estimate_tokens(&long), 1004);
        let req = summary_request(Some("earlier notes"), &long);
        assert_eq!(req.len(), 2);
        assert!(req[1].content.contains("earlier notes"));
        assert!(req[1].content.len() < 2200, "{}", req[1].content.len());
    }
}
