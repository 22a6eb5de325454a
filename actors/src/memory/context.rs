//! A turn's context for the LLM: token estimates, the rolling extractive summary of older
//! turns, and the assembly of memories + summary + recent turns within a token budget.

use std::collections::VecDeque;

use crate::llm::{ChatMessage, ChatRole};

use super::index::Hit;
use super::records::{MessageRecord, SessionMeta, Summary};

/// Estimated tokens of `text`: about four characters per token (OpenAI's rule of thumb
/// for English; BPE tokenizers of small models are in the same range). An estimate, not
/// a count: keep a margin in the budget.
pub fn estimate_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4)
}

/// Per-message framing overhead (role markers, separators), in tokens.
pub const MESSAGE_OVERHEAD_TOKENS: usize = 4;

/// Estimated tokens of one chat message.
pub fn message_tokens(m: &ChatMessage) -> usize {
    let calls: usize = m
        .tool_calls
        .iter()
        .map(|c| estimate_tokens(&c.name) + estimate_tokens(&c.arguments))
        .sum();
    estimate_tokens(&m.content) + calls + MESSAGE_OVERHEAD_TOKENS
}

/// Longest gist of one message in the summary, in characters.
const GIST_CHARS: usize = 160;

/// The gist of a message: its first sentence, cut at a word boundary.
pub fn gist(text: &str) -> String {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let end = text
        .char_indices()
        .find(|&(i, c)| {
            matches!(c, '.' | '!' | '?')
                && text[i + c.len_utf8()..]
                    .chars()
                    .next()
                    .is_none_or(char::is_whitespace)
        })
        .map(|(i, c)| i + c.len_utf8())
        .unwrap_or(text.len());
    let first = &text[..end];
    if first.chars().count() <= GIST_CHARS {
        return first.to_string();
    }
    let cut: String = first.chars().take(GIST_CHARS).collect();
    let cut = match cut.rfind(' ') {
        Some(i) if i > GIST_CHARS / 2 => &cut[..i],
        _ => &cut,
    };
    format!("{cut}…")
}

fn summary_line(m: &MessageRecord) -> Option<String> {
    let who = match m.role {
        ChatRole::User => "User",
        ChatRole::Assistant => "Assistant",
        ChatRole::Tool => "Tool",
        ChatRole::System => return None,
    };
    let text = gist(&m.content);
    if !text.is_empty() {
        return Some(format!("{who}: {text}"));
    }
    if !m.tool_calls.is_empty() {
        let names: Vec<&str> = m.tool_calls.iter().map(|c| c.name.as_str()).collect();
        return Some(format!("{who} called {}", names.join(", ")));
    }
    None
}

/// A session's working state: its meta record and the messages not yet summarised.
#[derive(Debug, Clone)]
pub struct SessionState {
    /// The meta record (count, times, summary).
    pub meta: SessionMeta,
    /// Messages after the summary, oldest first.
    pub recent: VecDeque<MessageRecord>,
}

impl SessionState {
    /// A new, empty session.
    pub fn new(session_id: &str, now: f64) -> SessionState {
        SessionState {
            meta: SessionMeta {
                v: super::records::RECORD_FORMAT,
                session_id: session_id.to_string(),
                created_at: now,
                updated_at: now,
                message_count: 0,
                summary: None,
            },
            recent: VecDeque::new(),
        }
    }

    fn turns(&self) -> usize {
        self.recent
            .iter()
            .filter(|m| m.role == ChatRole::User)
            .count()
    }

    /// Adds a message; once more than `recent_turns` turns (or `4 * recent_turns + 4`
    /// messages) are kept verbatim, folds the oldest into the summary until half of them
    /// remain. Folding in halves, not a turn at a time, keeps the start of the prompt (the
    /// summary and the oldest recent turns) the same for several turns, so a model that
    /// reuses the previous prompt's keys and values (the embedded one does) only reads the
    /// new turn: folding one turn per turn changed the prompt near its start every time and
    /// cost the full prompt again (3 s to the first token after six spoken turns).
    pub fn push(&mut self, m: MessageRecord, recent_turns: usize, summary_budget: usize) {
        self.meta.message_count = self.meta.message_count.max(m.seq);
        self.meta.updated_at = m.created_at;
        self.recent.push_back(m);
        let max_turns = recent_turns.max(1);
        let max_messages = max_turns * 4 + 4;
        if self.turns() <= max_turns && self.recent.len() <= max_messages {
            return;
        }
        let keep_turns = max_turns.div_ceil(2);
        let keep_messages = max_messages / 2;
        while self.turns() > keep_turns || self.recent.len() > keep_messages {
            let Some(first) = self.recent.pop_front() else {
                break;
            };
            self.fold(&first, summary_budget);
            // Keep whole turns: the rest of the folded turn goes too.
            while self
                .recent
                .front()
                .is_some_and(|m| m.role != ChatRole::User)
                && self.recent.len() > 1
            {
                if let Some(m) = self.recent.pop_front() {
                    self.fold(&m, summary_budget);
                }
            }
        }
    }

    fn fold(&mut self, m: &MessageRecord, budget: usize) {
        let summary = self.meta.summary.get_or_insert(Summary {
            lines: Vec::new(),
            through_seq: 0,
        });
        summary.through_seq = summary.through_seq.max(m.seq);
        if let Some(line) = summary_line(m) {
            summary.lines.push(line);
        }
        let mut total: usize = summary.lines.iter().map(|l| estimate_tokens(l) + 1).sum();
        while total > budget && !summary.lines.is_empty() {
            total -= estimate_tokens(&summary.lines[0]) + 1;
            summary.lines.remove(0);
        }
    }
}

/// Heading of the memories message.
pub const MEMORIES_HEADING: &str =
    "Things you remember from earlier conversations (long-term memory; use them when relevant):";
/// Heading of the summary message.
pub const SUMMARY_HEADING: &str = "Summary of the earlier part of this conversation:";

/// Share of the budget long-term memories may take.
const MEMORY_SHARE: f64 = 0.3;
/// Share of the budget the summary may take.
const SUMMARY_SHARE: f64 = 0.2;

/// A turn's context, ready for a provider.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnContext {
    /// System message with memories (if any), system message with the summary (if any),
    /// the recent turns oldest first, and last the user's message.
    pub messages: Vec<ChatMessage>,
    /// The memories included, best first.
    pub memories: Vec<coda_protocol::MemoryItem>,
    /// Estimated tokens of `messages`.
    pub estimated_tokens: usize,
    /// Recent messages left out for lack of budget.
    pub dropped_messages: usize,
    /// Whether the summary of older turns was included.
    pub summary_included: bool,
}

/// Assembles the context (see [`TurnContext`]).
///
/// The user's message is always included. Memories may take up to 30 % of the budget and
/// the summary up to 20 %, each only as much as it needs; the recent turns get the rest,
/// newest first, and whatever they leave goes back to memories and summary (still within
/// their shares).
pub fn assemble(
    state: Option<&SessionState>,
    hits: &[Hit],
    user_text: &str,
    token_budget: usize,
) -> TurnContext {
    let user = ChatMessage::new(ChatRole::User, user_text);
    let user_tokens = message_tokens(&user);
    let avail = token_budget.saturating_sub(user_tokens);

    // Recent messages, minus the current one if the caller stored it already.
    let mut recent: Vec<&MessageRecord> =
        state.map(|s| s.recent.iter().collect()).unwrap_or_default();
    if recent
        .last()
        .is_some_and(|m| m.role == ChatRole::User && m.content.trim() == user_text.trim())
    {
        recent.pop();
    }

    let memory_lines: Vec<String> = hits
        .iter()
        .map(|hit| {
            if hit.record.tags.is_empty() {
                format!("- {}", hit.record.content)
            } else {
                format!("- {} [{}]", hit.record.content, hit.record.tags.join(", "))
            }
        })
        .collect();
    let summary_lines: &[String] = state
        .and_then(|s| s.meta.summary.as_ref())
        .map(|s| s.lines.as_slice())
        .unwrap_or_default();

    let memory_cap = (token_budget as f64 * MEMORY_SHARE) as usize;
    let summary_cap = (token_budget as f64 * SUMMARY_SHARE) as usize;
    let memory_reserve = block_cost(MEMORIES_HEADING, memory_lines.iter()).min(memory_cap);
    let summary_reserve = block_cost(SUMMARY_HEADING, summary_lines.iter()).min(summary_cap);

    // Recent turns, newest first, while they fit in what the reserves leave.
    let recent_room = avail.saturating_sub(memory_reserve + summary_reserve);
    let mut recent_used = 0;
    let mut kept: Vec<ChatMessage> = Vec::new();
    let mut dropped = 0;
    for (i, m) in recent.iter().enumerate().rev() {
        let chat = m.to_chat();
        let t = message_tokens(&chat);
        if recent_used + t > recent_room {
            dropped = i + 1;
            break;
        }
        recent_used += t;
        kept.push(chat);
    }
    kept.reverse();
    // A tool answer without the assistant message that asked for it confuses providers.
    while kept.first().is_some_and(|m| m.role == ChatRole::Tool) {
        recent_used -= message_tokens(&kept[0]);
        kept.remove(0);
        dropped += 1;
    }

    // Memories (best first), then the summary (newest lines kept).
    let memory_room = memory_cap.min(avail.saturating_sub(recent_used + summary_reserve));
    let taken = fit_lines(MEMORIES_HEADING, &memory_lines, memory_room, false);
    let memories: Vec<coda_protocol::MemoryItem> = hits[..taken.count]
        .iter()
        .map(|hit| hit.record.to_item(Some(hit.score)))
        .collect();
    let memory_used = taken.tokens;
    let memory_msg = taken.message;

    let summary_room = summary_cap.min(avail.saturating_sub(recent_used + memory_used));
    let taken = fit_lines(SUMMARY_HEADING, summary_lines, summary_room, true);
    let summary_used = taken.tokens;
    let summary_msg = taken.message;

    let summary_included = summary_msg.is_some();
    let mut messages = Vec::with_capacity(kept.len() + 3);
    messages.extend(memory_msg);
    messages.extend(summary_msg);
    messages.extend(kept);
    messages.push(user);
    TurnContext {
        messages,
        memories,
        estimated_tokens: user_tokens + recent_used + memory_used + summary_used,
        dropped_messages: dropped,
        summary_included,
    }
}

/// Tokens of a system message made of `heading` and every line (0 when there is none).
fn block_cost<'a>(heading: &str, lines: impl Iterator<Item = &'a String>) -> usize {
    let mut cost = 0;
    for line in lines {
        cost += estimate_tokens(line) + 1;
    }
    if cost == 0 {
        0
    } else {
        cost + estimate_tokens(heading) + MESSAGE_OVERHEAD_TOKENS
    }
}

struct Fitted {
    message: Option<ChatMessage>,
    tokens: usize,
    count: usize,
}

/// The system message of `heading` + as many `lines` as fit in `room` tokens: the first
/// ones, or with `newest` the last ones (kept in order).
fn fit_lines(heading: &str, lines: &[String], room: usize, newest: bool) -> Fitted {
    let mut tokens = estimate_tokens(heading) + MESSAGE_OVERHEAD_TOKENS;
    let mut chosen: Vec<&str> = Vec::new();
    let order: Box<dyn Iterator<Item = &String>> = if newest {
        Box::new(lines.iter().rev())
    } else {
        Box::new(lines.iter())
    };
    for line in order {
        let t = estimate_tokens(line) + 1;
        if tokens + t > room {
            break;
        }
        tokens += t;
        chosen.push(line);
    }
    if chosen.is_empty() {
        return Fitted {
            message: None,
            tokens: 0,
            count: 0,
        };
    }
    if newest {
        chosen.reverse();
    }
    let count = chosen.len();
    Fitted {
        message: Some(ChatMessage::new(
            ChatRole::System,
            format!("{heading}\n{}", chosen.join("\n")),
        )),
        tokens,
        count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, role: ChatRole, content: &str) -> MessageRecord {
        MessageRecord {
            v: 1,
            seq,
            role,
            content: content.into(),
            turn_id: None,
            created_at: seq as f64,
            tool_calls: Vec::new(),
            tool_call_id: None,
            metadata: serde_json::Value::Null,
        }
    }

    #[test]
    fn gist_takes_the_first_sentence() {
        assert_eq!(gist("Hello there. How are you?"), "Hello there.");
        assert_eq!(gist("  spaced   out  "), "spaced out");
        assert_eq!(gist("Version 1.5 is out! Yes"), "Version 1.5 is out!");
        let long = "word ".repeat(100);
        let g = gist(&long);
        assert!(
            g.ends_with('…') && g.chars().count() <= GIST_CHARS + 1,
            "{g}"
        );
    }

    #[test]
    fn the_start_of_the_context_stays_the_same_between_folds() {
        let mut s = SessionState::new("s", 0.0);
        let mut firsts = Vec::new();
        for turn in 0..12u64 {
            s.push(
                msg(turn * 2 + 1, ChatRole::User, &format!("Q{turn}")),
                6,
                1000,
            );
            s.push(
                msg(turn * 2 + 2, ChatRole::Assistant, &format!("A{turn}")),
                6,
                1000,
            );
            firsts.push(s.recent[0].seq);
            assert!(s.turns() <= 6);
        }
        // The oldest verbatim message changes at 2 of 12 turns (a fold each), not at 6.
        let changes = firsts.windows(2).filter(|w| w[0] != w[1]).count();
        assert_eq!(changes, 2, "{firsts:?}");
    }

    #[test]
    fn push_folds_old_turns_into_the_summary() {
        let mut s = SessionState::new("s", 0.0);
        let mut seq = 0;
        for turn in 0..5 {
            seq += 1;
            s.push(
                msg(seq, ChatRole::User, &format!("Question {turn}. More.")),
                2,
                1000,
            );
            seq += 1;
            s.push(
                msg(seq, ChatRole::Assistant, &format!("Answer {turn}.")),
                2,
                1000,
            );
        }
        assert_eq!(s.meta.message_count, 10);
        // A third turn folds the oldest down to one (half of two): turns 0–1 at turn 2,
        // turns 2–3 at turn 4; turn 4 is left verbatim.
        assert_eq!(s.recent.len(), 2, "one turn verbatim after a fold");
        assert_eq!(s.recent[0].content, "Question 4. More.");
        let summary = s.meta.summary.as_ref().expect("summary");
        assert_eq!(summary.through_seq, 8);
        assert_eq!(
            summary.lines,
            [
                "User: Question 0.",
                "Assistant: Answer 0.",
                "User: Question 1.",
                "Assistant: Answer 1.",
                "User: Question 2.",
                "Assistant: Answer 2.",
                "User: Question 3.",
                "Assistant: Answer 3."
            ]
        );
        // A small summary budget keeps the newest lines.
        let mut s2 = SessionState::new("s", 0.0);
        for (seq, role, text) in [
            (7, ChatRole::User, "Question 3. More."),
            (8, ChatRole::Assistant, "Answer 3."),
            (9, ChatRole::User, "Question 4. More."),
            (10, ChatRole::Assistant, "Answer 4."),
        ] {
            s2.push(msg(seq, role, text), 1, 6);
        }
        let lines = &s2.meta.summary.as_ref().expect("summary").lines;
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0], "Assistant: Answer 3.");
    }

    #[test]
    fn assemble_orders_and_dedupes_the_current_message() {
        let mut s = SessionState::new("s", 0.0);
        s.push(msg(1, ChatRole::User, "hi"), 4, 100);
        s.push(msg(2, ChatRole::Assistant, "hello"), 4, 100);
        s.push(msg(3, ChatRole::User, "what now"), 4, 100);
        let ctx = assemble(Some(&s), &[], "what now", 1000);
        let roles: Vec<ChatRole> = ctx.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, [ChatRole::User, ChatRole::Assistant, ChatRole::User]);
        assert_eq!(ctx.messages[2].content, "what now");
        assert_eq!(ctx.dropped_messages, 0);
        assert!(!ctx.summary_included);
        let total: usize = ctx.messages.iter().map(message_tokens).sum();
        assert_eq!(ctx.estimated_tokens, total);
    }

    #[test]
    fn assemble_stays_within_the_budget() {
        let mut s = SessionState::new("s", 0.0);
        for seq in 1..=20u64 {
            let role = if seq % 2 == 1 {
                ChatRole::User
            } else {
                ChatRole::Assistant
            };
            s.push(msg(seq, role, &"x".repeat(200)), 3, 200);
        }
        for budget in [10usize, 60, 120, 300, 2000] {
            let ctx = assemble(Some(&s), &[], "question", budget);
            let total: usize = ctx.messages.iter().map(message_tokens).sum();
            assert!(total <= ctx.estimated_tokens, "estimate is an upper bound");
            let floor = message_tokens(&ChatMessage::new(ChatRole::User, "question"));
            assert!(
                ctx.estimated_tokens <= budget.max(floor),
                "budget {budget}: {}",
                ctx.estimated_tokens
            );
            assert_eq!(
                ctx.messages.last().map(|m| m.content.as_str()),
                Some("question")
            );
        }
        let roomy = assemble(Some(&s), &[], "question", 5000);
        assert!(roomy.summary_included);
        assert_eq!(roomy.dropped_messages, 0);
        let tight = assemble(Some(&s), &[], "question", 120);
        assert!(tight.dropped_messages > 0);
    }
}
