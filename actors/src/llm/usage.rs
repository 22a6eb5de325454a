//! Token usage and its cost: prices per model (`[llm.prices."MODEL"]` in config), the
//! estimate used when a provider reports no counts, and running totals per session.
//!
//! Which providers report counts: the embedded engine (exact, its own tokenizer), Ollama
//! (`prompt_eval_count`/`eval_count`), OpenAI-compatible servers that honour
//! `stream_options.include_usage`, OCI. For the rest the counts are estimated from the
//! text (about four characters a token, the rule the context budget uses too) and marked
//! `estimated`: a remote model's tokenizer is not available here.

use std::collections::{BTreeMap, HashMap};

use coda_protocol::{Pricing, TokenUsage};

use super::{ChatMessage, Usage};

/// The price of one model, per million tokens.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Per million prompt tokens.
    pub input_per_mtok: f64,
    /// Per million generated tokens.
    pub output_per_mtok: f64,
    /// The currency of both (default `USD`).
    #[serde(default = "default_currency")]
    pub currency: String,
}

fn default_currency() -> String {
    "USD".into()
}

/// Prices by model name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prices(pub BTreeMap<String, Price>);

/// Providers whose models run on this machine (or the user's own): nothing to pay.
const LOCAL_PROVIDERS: &[&str] = &["local", "ollama"];

impl Prices {
    /// The usage of one generation by `provider`'s `model`, with its cost.
    pub fn usage(&self, provider: &str, model: &str, counts: Usage, estimated: bool) -> TokenUsage {
        let mut u = TokenUsage {
            input_tokens: u64::from(counts.prompt_tokens),
            output_tokens: u64::from(counts.completion_tokens),
            estimated,
            ..Default::default()
        };
        self.price(provider, model, &mut u);
        u
    }

    /// Sets `u`'s pricing, cost and currency from its counts. A configured price wins
    /// (someone may pay for a hosted Ollama); otherwise local providers are free and the
    /// rest unknown.
    pub fn price(&self, provider: &str, model: &str, u: &mut TokenUsage) {
        // Config keys are lower-cased on load; model names keep the provider's case.
        let price = self
            .0
            .get(model)
            .or_else(|| self.0.get(&model.to_lowercase()));
        if let Some(p) = price {
            u.pricing = Pricing::Priced;
            u.cost = Some(
                u.input_tokens as f64 * p.input_per_mtok / 1e6
                    + u.output_tokens as f64 * p.output_per_mtok / 1e6,
            );
            u.currency = Some(p.currency.clone());
        } else if LOCAL_PROVIDERS.contains(&provider) {
            u.pricing = Pricing::Free;
            u.cost = Some(0.0);
            u.currency = None;
        } else {
            u.pricing = Pricing::Unknown;
            u.cost = None;
            u.currency = None;
        }
    }
}

/// Estimated prompt tokens of `messages` (the context budget's estimate).
pub fn estimate_prompt(messages: &[ChatMessage]) -> u32 {
    let n: usize = messages
        .iter()
        .map(crate::memory::context::message_tokens)
        .sum();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Estimated tokens of generated `text`; at least the number of streamed pieces, which
/// most servers send one token at a time.
pub fn estimate_completion(text: &str, pieces: u32) -> u32 {
    let n = u32::try_from(crate::memory::context::estimate_tokens(text)).unwrap_or(u32::MAX);
    n.max(pieces)
}

/// Adds `add` to `total` (a session's running sum); the sum is priced if every part was,
/// free if every part was, else unknown; estimated if any part was.
pub fn accumulate(total: &mut TokenUsage, add: &TokenUsage, first: bool) {
    total.input_tokens += add.input_tokens;
    total.output_tokens += add.output_tokens;
    total.estimated |= add.estimated;
    if first {
        total.pricing = add.pricing;
        total.cost = add.cost;
        total.currency = add.currency.clone();
        return;
    }
    let same_currency = total.currency == add.currency;
    match (total.pricing, add.pricing) {
        (Pricing::Free, Pricing::Free) => {}
        (Pricing::Priced | Pricing::Free, Pricing::Priced | Pricing::Free)
            if same_currency || total.currency.is_none() || add.currency.is_none() =>
        {
            total.pricing = Pricing::Priced;
            total.cost = Some(total.cost.unwrap_or(0.0) + add.cost.unwrap_or(0.0));
            total.currency = total.currency.take().or_else(|| add.currency.clone());
        }
        _ => {
            total.pricing = Pricing::Unknown;
            total.cost = None;
            total.currency = None;
        }
    }
}

/// Most sessions whose totals are kept; beyond it the oldest entry goes.
const MAX_SESSIONS: usize = 4096;

/// Running totals per session.
#[derive(Debug, Default)]
pub struct SessionBook {
    totals: HashMap<String, (u64, TokenUsage)>,
    tick: u64,
}

impl SessionBook {
    /// Adds one generation to `session`'s total and returns the new total.
    pub fn add(&mut self, session: &str, usage: &TokenUsage) -> TokenUsage {
        self.tick += 1;
        if !self.totals.contains_key(session) && self.totals.len() >= MAX_SESSIONS {
            if let Some(oldest) = self
                .totals
                .iter()
                .min_by_key(|(_, (t, _))| *t)
                .map(|(k, _)| k.clone())
            {
                self.totals.remove(&oldest);
            }
        }
        let first = !self.totals.contains_key(session);
        let entry = self
            .totals
            .entry(session.to_string())
            .or_insert_with(|| (0, TokenUsage::default()));
        entry.0 = self.tick;
        accumulate(&mut entry.1, usage, first);
        entry.1.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prices() -> Prices {
        let mut m = BTreeMap::new();
        m.insert(
            "gpt-4o-mini".to_string(),
            Price {
                input_per_mtok: 0.15,
                output_per_mtok: 0.6,
                currency: "USD".into(),
            },
        );
        Prices(m)
    }

    #[test]
    fn priced_free_and_unknown() {
        let counts = Usage {
            prompt_tokens: 1_000_000,
            completion_tokens: 500_000,
        };
        let u = prices().usage("openai", "gpt-4o-mini", counts, false);
        assert_eq!(u.pricing, Pricing::Priced);
        assert!((u.cost.unwrap_or(-1.0) - 0.45).abs() < 1e-9, "{u:?}");
        assert_eq!(u.currency.as_deref(), Some("USD"));
        let u = prices().usage("local", "smollm2", counts, false);
        assert_eq!((u.pricing, u.cost), (Pricing::Free, Some(0.0)));
        let u = prices().usage("openai", "gpt-5", counts, true);
        assert_eq!((u.pricing, u.cost), (Pricing::Unknown, None));
        assert!(u.estimated);
    }

    #[test]
    fn session_totals_add_up_and_unknown_spoils_the_sum() {
        let mut book = SessionBook::default();
        let p = prices();
        let a = p.usage(
            "openai",
            "gpt-4o-mini",
            Usage {
                prompt_tokens: 100,
                completion_tokens: 10,
            },
            false,
        );
        book.add("s", &a);
        let t = book.add("s", &a);
        assert_eq!((t.input_tokens, t.output_tokens), (200, 20));
        assert_eq!(t.pricing, Pricing::Priced);
        assert!((t.cost.unwrap_or(0.0) - 2.0 * a.cost.unwrap_or(0.0)).abs() < 1e-12);
        let other = book.add("other", &a);
        assert_eq!(other.input_tokens, 100);
        let b = p.usage("openai", "unpriced", Usage::default(), true);
        let t = book.add("s", &b);
        assert_eq!(
            (t.pricing, t.cost, t.estimated),
            (Pricing::Unknown, None, true)
        );
    }

    #[test]
    fn estimates_grow_with_the_text() {
        assert!(estimate_completion("a b c d e f g h i j k l", 1) >= 3);
        assert_eq!(estimate_completion("", 5), 5);
        let short = estimate_prompt(&[ChatMessage::new(super::super::ChatRole::User, "hi")]);
        let long = estimate_prompt(&[ChatMessage::new(
            super::super::ChatRole::User,
            "hi ".repeat(100),
        )]);
        assert!(long > short);
    }
}
