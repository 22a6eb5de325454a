//! IntentRouter: decides, per turn, whether the input goes to a tool, to the LLM, or is a
//! system command (stop, help). Rules first (cheap, predictable), then the LLM.
//! Publishes `intent_result`.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use coda_protocol::{IntentResult, Route};

use crate::supervise::Supervision;

/// A system command recognised by rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemIntent {
    /// "stop", "cancel", "never mind": end what is being said, answer nothing.
    Stop,
    /// "help", "what can you do".
    Help,
}

/// Where a turn goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Answer with the language model.
    Llm,
    /// Run a tool with these arguments.
    Tool {
        /// Tool name.
        name: String,
        /// Arguments (JSON object).
        arguments: serde_json::Value,
    },
    /// A system command.
    System(SystemIntent),
}

impl Decision {
    /// `llm`, `tool` or `system` (trace attributes).
    pub fn kind(&self) -> &'static str {
        match self {
            Decision::Llm => "llm",
            Decision::Tool { .. } => "tool",
            Decision::System(_) => "system",
        }
    }
}

/// The router's answer.
#[derive(Debug, Clone, PartialEq, MessageResponse)]
pub struct IntentDecision {
    /// Intent name (`llm.chat`, `system.stop`, `tool.<name>`).
    pub intent: String,
    /// How sure the rule is, 0–1.
    pub confidence: f64,
    /// What to do.
    pub decision: Decision,
    /// Time spent deciding, ms.
    pub elapsed_ms: f64,
}

/// Matches text to a tool call: `(tool, arguments, confidence)`. The tools room supplies
/// it; without one, nothing routes to tools.
pub type ToolMatcher = Arc<dyn Fn(&str) -> Option<(String, serde_json::Value, f64)> + Send + Sync>;

/// Route one turn's text.
#[derive(Message)]
#[rtype(result = "IntentDecision")]
pub struct RouteText {
    pub turn_id: String,
    /// The conversation session (envelope `session_id`).
    pub session_id: String,
    /// The input.
    pub text: String,
}

/// The intent router actor.
pub struct IntentRouter {
    sup: Supervision,
    tools: Option<ToolMatcher>,
}

impl IntentRouter {
    /// A router; `tools` matches tool intents when given.
    pub fn new(sup: Supervision, tools: Option<ToolMatcher>) -> Self {
        IntentRouter { sup, tools }
    }
}

/// The rule-based decision (pure; the actor adds timing and the event).
pub fn decide(text: &str, tools: Option<&ToolMatcher>) -> (String, f64, Decision) {
    let norm: String = text
        .trim()
        .trim_end_matches(['.', '!', '?'])
        .to_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    const STOP: &[&str] = &[
        "stop",
        "cancel",
        "never mind",
        "nevermind",
        "be quiet",
        "shut up",
        "quiet",
        "enough",
        "stop talking",
    ];
    const HELP: &[&str] = &[
        "help",
        "what can you do",
        "what can you do for me",
        "how do i use you",
    ];
    let bare = norm
        .trim_start_matches("coda")
        .trim_start_matches([',', ' '])
        .trim_end_matches(" please")
        .trim();
    if STOP.contains(&bare) {
        return (
            "system.stop".into(),
            0.95,
            Decision::System(SystemIntent::Stop),
        );
    }
    if HELP.contains(&bare) {
        return (
            "system.help".into(),
            0.9,
            Decision::System(SystemIntent::Help),
        );
    }
    if let Some(m) = tools {
        if let Some((name, arguments, confidence)) = m(text) {
            return (
                format!("tool.{name}"),
                confidence,
                Decision::Tool { name, arguments },
            );
        }
    }
    ("llm.chat".into(), 0.5, Decision::Llm)
}

impl Actor for IntentRouter {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        self.sup.started();
    }
}

impl actix::Supervised for IntentRouter {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.sup.restarting();
    }
}

impl Handler<RouteText> for IntentRouter {
    type Result = IntentDecision;

    fn handle(&mut self, msg: RouteText, ctx: &mut Context<Self>) -> IntentDecision {
        let started = Instant::now();
        // A degraded router still answers: everything goes to the LLM (the safe default).
        let decided = if self.sup.is_degraded() {
            Ok(("llm.chat".to_string(), 0.0, Decision::Llm))
        } else {
            let tools = self.tools.clone();
            crate::supervise::catch(|| decide(&msg.text, tools.as_ref()))
        };
        let (intent, confidence, decision) = match decided {
            Ok(d) => d,
            Err(panic) => {
                self.sup.crashed(&panic);
                ctx.stop();
                ("llm.chat".to_string(), 0.0, Decision::Llm)
            }
        };
        let route = match &decision {
            Decision::Llm => Route::Llm,
            Decision::Tool { .. } => Route::Tool,
            Decision::System(_) => Route::System,
        };
        self.sup.hub().publish(
            &msg.session_id,
            &IntentResult {
                turn_id: Some(msg.turn_id),
                intent: intent.clone(),
                confidence,
                route,
            },
        );
        IntentDecision {
            intent,
            confidence,
            decision,
            elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
        }
    }
}

crate::impl_fault_injection!(IntentRouter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert_eq!(
            decide("Stop!", None).2,
            Decision::System(SystemIntent::Stop)
        );
        assert_eq!(
            decide("coda, never mind", None).2,
            Decision::System(SystemIntent::Stop)
        );
        assert_eq!(
            decide("What can you do?", None).2,
            Decision::System(SystemIntent::Help)
        );
        assert_eq!(decide("stop the car in the story", None).2, Decision::Llm);
        let m: ToolMatcher = Arc::new(|t: &str| {
            t.contains("time")
                .then(|| ("time".to_string(), serde_json::json!({}), 0.9))
        });
        let (intent, _, d) = decide("what time is it", Some(&m));
        assert_eq!(intent, "tool.time");
        assert!(matches!(d, Decision::Tool { .. }));
    }
}
