//! Rules that map an utterance straight to a tool call, for the IntentRouter: fast, no
//! LLM, and only for phrasings that are not ambiguous. Anything else goes to the LLM
//! (which may still call tools by function calling).
//!
//! | says | tool | arguments |
//! |---|---|---|
//! | "what time is it", "what's the date", "what day is it" | `clock` | `{}` |
//! | "what is 12*7", "calculate 3 plus 4", "how much is 20% of 80" | `calculator` | `{expression}` |
//! | "remember that ...", "don't forget ..." | `remember` | `{content}` |
//! | "what do you remember about X", "do you remember X" | `recall` | `{query}` |
//! | "set a timer for 5 minutes (for tea)", "cancel the timer", "list my timers" | `timer` | `{action, ...}` |
//! | "system status", "how are you running" | `system_status` | `{}` |

use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;
use serde_json::{json, Value};

use super::builtin::calculator;

/// A rule's decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IntentMatch {
    /// Intent name for `intent_result` (e.g. `get_time`).
    pub intent: &'static str,
    /// The tool to call.
    pub tool: &'static str,
    /// Its arguments (valid for the tool's schema).
    pub arguments: Value,
    /// 0.0–1.0.
    pub confidence: f64,
}

fn re(pattern: &str) -> Regex {
    Regex::new(pattern).unwrap_or_else(|e| panic!("built-in intent pattern {pattern:?}: {e}"))
}

static TIME: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"^(?:hey |ok |okay )?(?:what(?:'s| is) the (?:current )?(?:time|date|day)(?: (?:now|today|right now))?|what time is it(?: now| right now)?|what(?:'s| is) the time(?: now)?|what day is (?:it|today)|what(?:'s| is) today(?:'s date)?|what(?:'s| is) today's date|(?:tell me )?the (?:current )?time|current time|what date is it(?: today)?)(?: please)?$",
    )
});
static TIME_IN: LazyLock<Regex> = LazyLock::new(|| {
    re(r"^what(?:'s| is) the time in ([a-z]+/[a-z_]+)$|^what time is it in ([a-z]+/[a-z_]+)$")
});
static CALC: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"^(?:what(?:'s| is)|calculate|compute|how much is|what does|evaluate)\s+(.+?)(?:\s+(?:equal|make|come to))?$",
    )
});
static REMEMBER: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"^(?:please )?(?:remember|don't forget|do not forget|note|keep in mind)(?: that)?[, ]+(.{3,})$",
    )
});
static RECALL: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"^(?:what do you (?:remember|know) about|do you remember|what did i (?:tell|say to) you about|recall)\s+(.{2,})$",
    )
});
static TIMER_SET: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"^(?:please )?(?:set|start|create|make)(?: me)? (?:a |an )?(?:(.+?) )?timer(?: for (.+?))?(?: (?:called|named|for) (.+))?$",
    )
});
static TIMER_FOR: LazyLock<Regex> = LazyLock::new(|| re(r"^timer for (.+)$"));
static TIMER_CANCEL: LazyLock<Regex> = LazyLock::new(|| {
    re(r"^(?:please )?(?:cancel|stop|delete|remove) (?:the |my |all )?(?:(.+?) )?timers?$")
});
static TIMER_LIST: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"^(?:list|show)(?: me)? (?:my |the |all )?timers$|^(?:what|which) timers are (?:running|set)$|^how (?:much|long) (?:time )?(?:is )?left on (?:the|my) timer$",
    )
});
static STATUS: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"^(?:system status|status report|how are you running|how is the system(?: doing)?|how much memory are you using|what(?:'s| is) your (?:status|uptime))$",
    )
});
const NUMBER_WORDS: &str = "a|an|half|zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety";
static DURATION_PART: LazyLock<Regex> = LazyLock::new(|| {
    re(&format!(
        r"\b(\d+(?:\.\d+)?|(?:{NUMBER_WORDS})(?:[ -](?:one|two|three|four|five|six|seven|eight|nine))?)\s*(hours?|hrs?|h|minutes?|mins?|m|seconds?|secs?|s)\b"
    ))
});

/// Lower-case, apostrophes unified, trailing punctuation and fillers dropped.
fn normalize(text: &str) -> String {
    let t = text.trim().to_lowercase().replace(['\u{2019}', '`'], "'");
    let t = t.trim_end_matches(['?', '.', '!', ' ']);
    let t = t.strip_prefix("hey coda").unwrap_or(t);
    t.trim_matches([',', ' '])
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A spoken number ("five", "twenty five", "a", "an", "half").
fn number_word(w: &str) -> Option<f64> {
    const UNITS: [&str; 20] = [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
    ];
    const TENS: [&str; 8] = [
        "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
    ];
    let w = w.trim();
    if let Ok(n) = w.parse::<f64>() {
        return Some(n);
    }
    match w {
        "a" | "an" => return Some(1.0),
        "half" | "half a" | "half an" => return Some(0.5),
        _ => {}
    }
    let mut parts = w.split([' ', '-']);
    let first = parts.next()?;
    let second = parts.next();
    if let Some(i) = UNITS.iter().position(|u| *u == first) {
        return second.is_none().then_some(i as f64);
    }
    let tens = TENS.iter().position(|t| *t == first)? as f64 * 10.0 + 20.0;
    match second {
        None => Some(tens),
        Some(u) => UNITS[1..10]
            .iter()
            .position(|x| *x == u)
            .map(|i| tens + i as f64 + 1.0),
    }
}

/// Seconds in a spoken duration: "5 minutes", "an hour and a half", "1 hour 30 minutes",
/// "ninety seconds", "half an hour".
pub fn parse_duration(text: &str) -> Option<f64> {
    let t = normalize(text);
    match t.as_str() {
        "half an hour" | "half hour" => return Some(1800.0),
        "an hour and a half" | "one and a half hours" => return Some(5400.0),
        _ => {}
    }
    let mut total = 0.0;
    let mut matched = 0;
    for c in DURATION_PART.captures_iter(&t) {
        let n = number_word(&c[1])?;
        let unit = match &c[2] {
            u if u.starts_with('h') => 3600.0,
            u if u.starts_with('m') => 60.0,
            _ => 1.0,
        };
        total += n * unit;
        matched += 1;
    }
    if t.ends_with("and a half") && matched == 1 {
        // "5 minutes and a half"
        let unit = if t.contains("hour") {
            3600.0
        } else if t.contains("min") {
            60.0
        } else {
            1.0
        };
        total += unit / 2.0;
    }
    (matched > 0 && total > 0.0).then_some(total)
}

/// The tool call an utterance asks for, if a rule recognises it.
pub fn match_intent(text: &str) -> Option<IntentMatch> {
    let t = normalize(text);
    if t.is_empty() || t.chars().count() > 300 {
        return None;
    }
    let hit = |intent, tool, arguments, confidence| {
        Some(IntentMatch {
            intent,
            tool,
            arguments,
            confidence,
        })
    };
    if TIME.is_match(&t) {
        return hit("get_time", "clock", json!({}), 0.95);
    }
    if let Some(c) = TIME_IN.captures(&t) {
        let zone = c
            .get(1)
            .or_else(|| c.get(2))
            .map(|m| m.as_str())
            .unwrap_or_default();
        // IANA names are capitalised per part ("america/new_york" → "America/New_York").
        let zone: String = zone
            .split('/')
            .map(|p| p.split('_').map(capitalise).collect::<Vec<_>>().join("_"))
            .collect::<Vec<_>>()
            .join("/");
        return hit("get_time", "clock", json!({"timezone": zone}), 0.9);
    }
    if TIMER_LIST.is_match(&t) {
        return hit("list_timers", "timer", json!({"action": "list"}), 0.9);
    }
    if let Some(c) = TIMER_CANCEL.captures(&t) {
        let mut args = json!({"action": "cancel"});
        if let Some(label) = c
            .get(1)
            .map(|m| m.as_str())
            .filter(|l| parse_duration(l).is_none())
        {
            args["label"] = json!(label);
        }
        return hit("cancel_timer", "timer", args, 0.9);
    }
    if let Some(m) = timer_set(&t) {
        return Some(m);
    }
    if let Some(c) = REMEMBER.captures(&t) {
        // Keep the user's own casing for what is stored.
        let content = original_tail(text, c[1].len()).unwrap_or_else(|| c[1].to_string());
        return hit("remember", "remember", json!({"content": content}), 0.9);
    }
    if let Some(c) = RECALL.captures(&t) {
        return hit("recall", "recall", json!({"query": c[1].to_string()}), 0.85);
    }
    if STATUS.is_match(&t) {
        return hit("system_status", "system_status", json!({}), 0.9);
    }
    if let Some(c) = CALC.captures(&t) {
        let expression = c[1].trim().to_string();
        // Only real arithmetic: it must evaluate and contain an operator or a function.
        let has_math = expression.chars().any(|ch| ch.is_ascii_digit())
            && (expression.chars().any(|ch| "+-*/%^x×÷(".contains(ch))
                || calculator::normalize_spoken(&expression) != expression);
        if has_math && calculator::evaluate(&expression).is_ok() {
            return hit(
                "calculate",
                "calculator",
                json!({"expression": expression}),
                0.95,
            );
        }
    }
    None
}

fn timer_set(t: &str) -> Option<IntentMatch> {
    let (duration_text, label) = if let Some(c) = TIMER_SET.captures(t) {
        // "set a 5 minute timer (for tea)" or "set a timer for 5 minutes (called tea)"
        match (c.get(1), c.get(2)) {
            (Some(pre), post)
                if parse_duration(&format!("{}s", pre.as_str())).is_some()
                    || parse_duration(pre.as_str()).is_some() =>
            {
                let d = pre.as_str().to_string();
                let label = post.or(c.get(3)).map(|m| m.as_str().to_string());
                (
                    if parse_duration(&d).is_some() {
                        d
                    } else {
                        format!("{d}s")
                    },
                    label,
                )
            }
            (_, Some(post)) => split_label(post.as_str(), c.get(3).map(|m| m.as_str())),
            _ => return None,
        }
    } else if let Some(c) = TIMER_FOR.captures(t) {
        split_label(&c[1], None)
    } else {
        return None;
    };
    let seconds = parse_duration(&duration_text)?;
    let mut args = json!({"action": "set", "seconds": seconds});
    if let Some(l) = label.filter(|l| !l.is_empty()) {
        args["label"] = json!(l);
    }
    Some(IntentMatch {
        intent: "set_timer",
        tool: "timer",
        arguments: args,
        confidence: 0.95,
    })
}

/// "5 minutes for tea" → ("5 minutes", Some("tea")).
fn split_label(text: &str, named: Option<&str>) -> (String, Option<String>) {
    if let Some((d, l)) = text
        .split_once(" for ")
        .or_else(|| text.split_once(" called "))
    {
        return (d.to_string(), Some(l.to_string()));
    }
    (text.to_string(), named.map(str::to_string))
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// The last `len` bytes' worth of the original text (same words, original case).
fn original_tail(original: &str, len: usize) -> Option<String> {
    let trimmed = original.trim().trim_end_matches(['?', '.', '!', ' ']);
    let words: Vec<&str> = trimmed.split_whitespace().collect();
    let mut acc = String::new();
    for w in words.iter().rev() {
        if acc.is_empty() {
            acc = (*w).to_string();
        } else {
            acc = format!("{w} {acc}");
        }
        if acc.len() >= len {
            return (acc.len() == len).then_some(acc);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(text: &str) -> Option<(&'static str, Value)> {
        match_intent(text).map(|m| (m.tool, m.arguments))
    }

    #[test]
    fn time_and_date() {
        for t in [
            "What time is it?",
            "what's the time",
            "What is the date today",
            "what day is it",
            "Hey Coda, what time is it right now?",
        ] {
            assert_eq!(tool(t), Some(("clock", json!({}))), "{t}");
        }
        assert_eq!(
            tool("What time is it in america/new_york?"),
            Some(("clock", json!({"timezone": "America/New_York"})))
        );
    }

    #[test]
    fn arithmetic() {
        assert_eq!(
            tool("what is 12*7"),
            Some(("calculator", json!({"expression": "12*7"})))
        );
        assert_eq!(
            tool("What's 12 times 7?"),
            Some(("calculator", json!({"expression": "12 times 7"})))
        );
        assert_eq!(
            tool("calculate (3+4)^2"),
            Some(("calculator", json!({"expression": "(3+4)^2"})))
        );
        assert_eq!(
            tool("how much is 20 percent of 80"),
            Some(("calculator", json!({"expression": "20 percent of 80"})))
        );
        // Not arithmetic: left to the LLM.
        assert_eq!(tool("what is the capital of France"), None);
        assert_eq!(
            tool("what is 2024"),
            None,
            "a bare number is not a calculation"
        );
        assert_eq!(tool("what is love"), None);
    }

    #[test]
    fn remember_and_recall() {
        assert_eq!(
            tool("Remember that my sister is called Anna."),
            Some(("remember", json!({"content": "my sister is called Anna"})))
        );
        assert_eq!(
            tool("please don't forget I parked on level 3"),
            Some(("remember", json!({"content": "I parked on level 3"})))
        );
        assert_eq!(
            tool("What do you remember about my sister?"),
            Some(("recall", json!({"query": "my sister"})))
        );
    }

    #[test]
    fn timers() {
        let set = |t: &str| tool(t).map(|(_, a)| a);
        assert_eq!(
            set("Set a timer for 5 minutes"),
            Some(json!({"action": "set", "seconds": 300.0}))
        );
        assert_eq!(
            set("set a timer for five minutes for tea"),
            Some(json!({"action": "set", "seconds": 300.0, "label": "tea"}))
        );
        assert_eq!(
            set("start a 10 minute timer for pasta"),
            Some(json!({"action": "set", "seconds": 600.0, "label": "pasta"}))
        );
        assert_eq!(
            set("timer for 1 hour and 30 minutes"),
            Some(json!({"action": "set", "seconds": 5400.0}))
        );
        assert_eq!(
            set("set a timer for half an hour"),
            Some(json!({"action": "set", "seconds": 1800.0}))
        );
        assert_eq!(
            set("set a timer for twenty five seconds"),
            Some(json!({"action": "set", "seconds": 25.0}))
        );
        assert_eq!(set("cancel the timer"), Some(json!({"action": "cancel"})));
        assert_eq!(
            set("cancel the tea timer"),
            Some(json!({"action": "cancel", "label": "tea"}))
        );
        assert_eq!(set("list my timers"), Some(json!({"action": "list"})));
        assert_eq!(
            set("set a timer"),
            None,
            "no duration: ask the LLM (or the user)"
        );
    }

    #[test]
    fn status_and_nothing() {
        assert_eq!(tool("system status"), Some(("system_status", json!({}))));
        assert_eq!(tool("tell me a joke"), None);
        assert_eq!(tool(""), None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90 seconds"), Some(90.0));
        assert_eq!(parse_duration("an hour"), Some(3600.0));
        assert_eq!(parse_duration("2.5 minutes"), Some(150.0));
        assert_eq!(parse_duration("1 hour 15 minutes"), Some(4500.0));
        assert_eq!(parse_duration("a while"), None);
    }
}
