//! Orchestrator: the turn state machine. Owns every session's mode (idle → thinking →
//! speaking → idle), its conversation context, and the turns in flight; drives each turn
//! through the stages in order, one method per stage:
//!
//! `start_turn` (conversation_turn, the user's message, mode thinking) → `route`
//! (IntentRouter: intent_result) → `start_llm` / `run_tool` / `run_system` → `on_token`
//! (sentences to Tts as they complete) → `on_spoken` (mode speaking at the first audio) →
//! `complete_turn` (the assistant's message, latency_trace, mode idle).
//!
//! A turn's phase ([`phase::Phase`]: routing → answering → draining speech → done, or
//! interrupted / failed) changes only through [`Orchestrator::transition`], and
//! [`Orchestrator::try_complete`] is the one place that ends a turn. The router, the model
//! and speech are [`Engines`] recipients: the kernel wires the real actors, the tests
//! fakes. Every handler runs under the same panic guard (a panic restarts the actor
//! under the kernel's budget instead of unwinding through the event loop).
//!
//! `interrupt` (barge-in) cancels generation and speech at once and keeps only what was
//! actually spoken in the context. A new input in a session interrupts that session's
//! turn in flight. Speech heard over an answer being spoken first only pauses its playback
//! (`hold`): its transcript is the new input that interrupts it; no speech (a cough, the
//! assistant's own voice let through by echo cancellation) resumes it (`release`).
//! Turns of different sessions run side by side.

mod alarm;
pub mod own_voice;
pub mod phase;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use coda_protocol::{
    ConversationMessage, ConversationStart, ConversationTurn, LatencyTrace, Level, Mode,
    ModeChange, Role, SystemError,
};

use crate::intent::{Decision, IntentDecision, IntentRouter, RouteText, SystemIntent};
use crate::llm::actor::{CancelGeneration, Generate, LlmActor, LlmUpdate};
use crate::llm::{ChatMessage, ChatRequest, ChatRole, LlmError};
use crate::supervise::Supervision;
use crate::tts::{
    CancelTurn, FinishTurn, Hold, HoldTurn, SentenceProgress, SentenceSplitter, Speak, TtsActor,
    TtsUpdate,
};
use phase::{Latency, Phase, Speech, Stage, TurnEvent};

/// Conversation settings (from the `[conversation]` config section).
#[derive(Debug, Clone)]
pub struct ConversationSettings {
    /// The system prompt opening every LLM request.
    pub system_prompt: String,
    /// How many past turns (user + assistant) go into the context.
    pub history_turns: usize,
    /// Most tokens per answer (`None`: the provider's default).
    pub max_tokens: Option<u32>,
    /// Speak the first clause of an answer as soon as it is complete, not only whole
    /// sentences (see [`SentenceSplitter::first_clause`]).
    pub speak_first_clause: bool,
    /// Conversations kept in memory; beyond it the least recently used idle one is
    /// forgotten (its next turn starts a new conversation).
    pub max_sessions: usize,
    /// Turns being answered at once, across all sessions; beyond it a new turn is
    /// refused as unavailable (a session's new turn replacing its own still starts).
    pub max_turns_in_flight: usize,
    /// After an answer to speech, how long a session listening in wake mode takes speech
    /// without the wake word (zero: never).
    pub follow_up: std::time::Duration,
    /// Speech heard while the session's answer is being spoken pauses it; its transcript
    /// interrupts it as the `interrupt` command does, no speech resumes it (barge-in by
    /// voice).
    pub barge_in: bool,
    /// Longest an answer stays paused for an utterance over it that never ends in a
    /// transcript or in nothing; then it goes on.
    pub hold_max: std::time::Duration,
    /// Offer the model the tools (function calling, where the provider does it): its
    /// calls run through the Tools actor, with their permissions, and it answers from the
    /// results. At most `max_tool_rounds` rounds of calls per turn.
    pub llm_tools: bool,
    pub max_tool_rounds: u32,
}

impl Default for ConversationSettings {
    fn default() -> Self {
        ConversationSettings {
            system_prompt: "You are Coda, a helpful voice assistant. Answer briefly, in plain spoken sentences.".into(),
            history_turns: 8,
            max_tokens: Some(128),
            speak_first_clause: true,
            max_sessions: 1000,
            max_turns_in_flight: 16,
            follow_up: std::time::Duration::from_secs(5),
            barge_in: true,
            hold_max: HOLD_MAX,
            llm_tools: true,
            max_tool_rounds: 5,
        }
    }
}

/// Where a turn's input came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnSource {
    /// `text_input`.
    Text,
    /// Speech.
    Voice,
    /// `demo_flow`.
    Demo,
}

impl TurnSource {
    fn as_str(self) -> &'static str {
        match self {
            TurnSource::Text => "text",
            TurnSource::Voice => "voice",
            TurnSource::Demo => "demo",
        }
    }
}

/// Why a turn could not start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TurnStartError {
    /// The orchestrator is degraded.
    #[error("{0}")]
    Unavailable(String),
    /// The input is unusable.
    #[error("invalid input: {0}")]
    Invalid(String),
}

/// Start a turn from text.
#[derive(Message)]
#[rtype(result = "Result<TurnStarted, TurnStartError>")]
pub struct TextTurn {
    /// The conversation session (`text_input.session_id`, or the connection's id).
    pub session_id: String,
    /// The input.
    pub text: String,
    /// Where it came from.
    pub source: TurnSource,
}

/// Start a turn from a transcript (the Stt actor): the turn keeps the `turn_id` its
/// `stt_*` events carried, and its `latency_trace` carries `stt_ms` and measures
/// `tts_first_audio_ms` and `total_ms` from the end of speech.
#[derive(Message)]
#[rtype(result = "Result<TurnStarted, TurnStartError>")]
pub struct VoiceTurn {
    /// The conversation session.
    pub session_id: String,
    /// The transcript.
    pub text: String,
    /// The turn id the Stt actor gave the utterance.
    pub turn_id: String,
    /// Transcription time.
    pub stt_ms: f64,
    /// When the speaker stopped.
    pub speech_ended: Instant,
    /// When the utterance was declared over (push-to-talk released, or the silence after
    /// speech long enough).
    pub utterance_ended: Instant,
    /// The turn's trace span, opened by the Stt actor around the transcription
    /// (`Span::none()`: the orchestrator opens one).
    pub span: tracing::Span,
}

/// Speech capture started (`on`) or stopped with nothing to say in a session: mode
/// `listening`, or back to `idle` (or to `speaking`, when the answer paused for it goes
/// on).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Listening {
    pub session_id: String,
    /// Listening now?
    pub on: bool,
}

/// What a voice turn adds to a text turn.
struct VoiceInput {
    turn_id: String,
    stt_ms: f64,
    speech_ended: Instant,
    utterance_ended: Instant,
    span: tracing::Span,
}

/// A started turn.
#[derive(Debug, Clone, PartialEq, MessageResponse)]
pub struct TurnStarted {
    /// The turn id every event of the turn carries.
    pub turn_id: String,
    /// The conversation it belongs to.
    pub conversation_id: String,
}

/// Barge-in: stop the turn in flight (of one session, or of every session).
#[derive(Message)]
#[rtype(result = "InterruptReport")]
pub struct Interrupt {
    /// The session; `None`: every session.
    pub session_id: Option<String>,
}

/// What an interrupt stopped.
#[derive(Debug, Clone, Default, PartialEq, MessageResponse, serde::Serialize)]
pub struct InterruptReport {
    /// Turns stopped.
    pub turns: Vec<String>,
    /// What had been spoken of each (kept in the context).
    pub spoken: Vec<String>,
    /// What was cut from each (dropped).
    pub cut: Vec<String>,
}

struct SessionState {
    conversation_id: String,
    turns: u32,
    mode: Mode,
    history: Vec<ChatMessage>,
    active: Option<String>,
    last_used: std::time::Instant,
    /// When the open follow-up window closes.
    follow_up_until: Option<Instant>,
    /// The `active` turn's speech is paused while someone talks over it: this pause's
    /// number, which tells it from a later pause of the same turn (so the first one's guard
    /// cannot end the second).
    held: Option<u64>,
}

/// Default [`ConversationSettings::hold_max`]: the longest utterance (30 s by default) and
/// its transcription.
pub const HOLD_MAX: std::time::Duration = std::time::Duration::from_secs(45);

struct Turn {
    id: String,
    session_id: String,
    user_text: String,
    t0: Instant,
    /// End of the input: `t0` for text, the end of speech for voice.
    input_end: Instant,
    phase: Phase,
    speech: Speech,
    latency: Latency,
    /// When generation ended (speech after it is on the critical path).
    llm_done_at: Option<Instant>,
    /// Synthesis time on the critical path after generation ended.
    tts_tail_ms: f64,
    answer: String,
    splitter: SentenceSplitter,
    spoken: Vec<String>,
    /// How many of `spoken` there were when its playback was held: what is synthesised
    /// while held is not heard.
    spoken_at_hold: Option<usize>,
    /// Every sentence sent to speech, with how much of it was played.
    sentences: Vec<(String, Arc<SentenceProgress>)>,
    /// The input was speech.
    voice: bool,
    /// The turn's trace span (the root of its stages' spans; closed with the turn).
    span: tracing::Span,
    /// Speech's span: from the first sentence queued to the last one spoken.
    tts_span: Option<tracing::Span>,
    /// The request of the last generation (with the tool calls and results so far), for
    /// the next round.
    messages: Vec<ChatMessage>,
    /// Rounds of tool calls the model made.
    tool_rounds: u32,
}

/// Where the orchestrator sends work. The kernel wires the real actors
/// ([`Engines::of`]); tests wire fakes.
#[derive(Clone)]
pub struct Engines {
    /// The intent router.
    pub route: Recipient<RouteText>,
    /// The model: generate an answer.
    pub generate: Recipient<Generate>,
    /// The model: stop a generation.
    pub cancel_generation: Recipient<CancelGeneration>,
    /// Speech: say a sentence.
    pub speak: Recipient<Speak>,
    /// Speech: no more sentences for a turn; report when the queued ones are spoken.
    pub finish_speech: Recipient<FinishTurn>,
    /// Speech: drop a turn's speech now.
    pub cancel_speech: Recipient<CancelTurn>,
    /// Speech: pause a turn's playback, or go on with it.
    pub hold_speech: Recipient<HoldTurn>,
}

impl Engines {
    /// The router, model and speech actors.
    pub fn of(router: &Addr<IntentRouter>, llm: &Addr<LlmActor>, tts: &Addr<TtsActor>) -> Self {
        Engines {
            route: router.clone().recipient(),
            generate: llm.clone().recipient(),
            cancel_generation: llm.clone().recipient(),
            speak: tts.clone().recipient(),
            finish_speech: tts.clone().recipient(),
            cancel_speech: tts.clone().recipient(),
            hold_speech: tts.clone().recipient(),
        }
    }
}

/// The orchestrator actor.
pub struct Orchestrator {
    sup: Supervision,
    engines: Engines,
    settings: ConversationSettings,
    sessions: HashMap<String, SessionState>,
    turns: HashMap<String, Turn>,
    next_id: u64,
    memory: Option<Addr<crate::memory::MemoryActor>>,
    tools: Option<Addr<crate::tools::ToolsActor>>,
    follow_ups: crate::voice::FollowUps,
    me: Option<Addr<Orchestrator>>,
    /// Alarms ringing, by session.
    alarms: HashMap<String, alarm::Ringing>,
    holds: u64,
}

/// A follow-up window closed: mode back to idle unless something happened since.
#[derive(Message)]
#[rtype(result = "()")]
struct FollowUpOver {
    session_id: String,
    until: Instant,
}

impl Handler<FollowUpOver> for Orchestrator {
    type Result = ();

    fn handle(&mut self, msg: FollowUpOver, _: &mut Context<Self>) {
        // A later window (a follow-up answered in time) outlives this one.
        if self.sessions.get(&msg.session_id).is_some_and(|s| {
            s.mode == Mode::ListeningFollowUp && s.follow_up_until == Some(msg.until)
        }) {
            self.set_mode(&msg.session_id, Mode::Idle);
        }
    }
}

impl Orchestrator {
    /// An orchestrator driving these actors.
    pub fn new(sup: Supervision, engines: Engines, settings: ConversationSettings) -> Self {
        Orchestrator {
            sup,
            engines,
            settings,
            sessions: HashMap::new(),
            turns: HashMap::new(),
            next_id: 1,
            memory: None,
            tools: None,
            follow_ups: crate::voice::FollowUps::default(),
            me: None,
            alarms: HashMap::new(),
            holds: 0,
        }
    }

    /// Conversations and context come from the Memory actor (else: in-process history).
    pub fn with_memory(mut self, memory: Option<Addr<crate::memory::MemoryActor>>) -> Self {
        self.memory = memory;
        self
    }

    /// Answers to speech open the follow-up window of sessions listening in wake mode.
    pub fn with_follow_ups(mut self, follow_ups: crate::voice::FollowUps) -> Self {
        self.follow_ups = follow_ups;
        self
    }

    /// Tool turns run on the Tools actor (else: the LLM answers them).
    pub fn with_tools(mut self, tools: Option<Addr<crate::tools::ToolsActor>>) -> Self {
        self.tools = tools;
        self
    }

    fn next(&mut self, prefix: &str) -> String {
        let id = format!("{prefix}-{:04}", self.next_id);
        self.next_id += 1;
        id
    }

    fn set_mode(&mut self, session_id: &str, mode: Mode) {
        if let Some(s) = self.sessions.get_mut(session_id) {
            if s.mode != mode {
                let previous = Some(s.mode);
                s.mode = mode;
                self.sup
                    .hub()
                    .publish(session_id, &ModeChange { mode, previous });
            }
        }
    }

    fn message(
        &mut self,
        session_id: &str,
        turn_id: &str,
        role: Role,
        content: &str,
        cut: Option<String>,
    ) {
        let message_id = self.next("m");
        self.sup.hub().publish(
            session_id,
            &ConversationMessage {
                turn_id: Some(turn_id.to_string()),
                message_id,
                role,
                content: content.to_string(),
                interrupted: cut.as_ref().map(|_| true),
                cut,
            },
        );
    }

    // ---- stage 1: the turn begins ------------------------------------------------------

    fn ensure_session(&mut self, session_id: &str) {
        if let Some(s) = self.sessions.get_mut(session_id) {
            s.last_used = std::time::Instant::now();
        } else {
            if self.sessions.len() >= self.settings.max_sessions.max(1) {
                let idle = self
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.active.is_none())
                    .min_by_key(|(_, s)| s.last_used)
                    .map(|(id, _)| id.clone());
                if let Some(id) = idle {
                    tracing::debug!(session = %id, "forgetting the least recently used conversation");
                    self.sessions.remove(&id);
                }
            }
            let conversation_id = self.next("v");
            self.sup.hub().publish(
                session_id,
                &ConversationStart {
                    conversation_id: conversation_id.clone(),
                    client_id: None,
                },
            );
            self.sessions.insert(
                session_id.to_string(),
                SessionState {
                    conversation_id,
                    turns: 0,
                    mode: Mode::Idle,
                    history: Vec::new(),
                    active: None,
                    last_used: std::time::Instant::now(),
                    follow_up_until: None,
                    held: None,
                },
            );
        }
    }

    /// The turn's root span: the Stt actor's for speech (it opened it around the
    /// transcription), else a new one. Spans cost next to nothing without an exporter:
    /// no subscriber layer is interested, so nothing is recorded.
    fn turn_span(
        &self,
        turn_id: &str,
        session_id: &str,
        conversation_id: &str,
        source: TurnSource,
        voice: &Option<VoiceInput>,
    ) -> tracing::Span {
        let span = match voice {
            Some(v) if !v.span.is_disabled() => v.span.clone(),
            _ => turn_span(turn_id, session_id),
        };
        span.record("coda.conversation_id", conversation_id);
        span.record("coda.source", source.as_str());
        span
    }

    fn start_turn(
        &mut self,
        msg: TextTurn,
        voice: Option<VoiceInput>,
        ctx: &mut Context<Self>,
    ) -> TurnStarted {
        let session_id = msg.session_id.clone();
        // New input in a session barges in on whatever it was saying.
        self.interrupt_session(&session_id);
        self.ensure_session(&session_id);
        let turn_id = match &voice {
            Some(v) => v.turn_id.clone(),
            None => self.next("t"),
        };
        // Every event of this turn is numbered after this one (the hub numbers in order).
        let seq_before = self.sup.hub().last_seq();
        let (conversation_id, index) = match self.sessions.get_mut(&session_id) {
            Some(s) => {
                s.active = Some(turn_id.clone());
                s.turns += 1;
                (s.conversation_id.clone(), s.turns - 1)
            }
            None => (String::new(), 0),
        };
        self.sup.hub().publish(
            &session_id,
            &ConversationTurn {
                conversation_id: conversation_id.clone(),
                turn_id: turn_id.clone(),
                index,
                user_text: msg.text.clone(),
                source: msg.source.as_str().to_string(),
            },
        );
        let span = self.turn_span(&turn_id, &session_id, &conversation_id, msg.source, &voice);
        self.message(&session_id, &turn_id, Role::User, &msg.text, None);
        self.set_mode(&session_id, Mode::Thinking);
        self.turns.insert(
            turn_id.clone(),
            Turn {
                id: turn_id.clone(),
                session_id: session_id.clone(),
                user_text: msg.text.clone(),
                t0: Instant::now(),
                input_end: voice.as_ref().map_or_else(Instant::now, |v| v.speech_ended),
                phase: Phase::Routing,
                speech: Speech::default(),
                latency: voice.as_ref().map(VoiceInput::latency).unwrap_or_default(),
                llm_done_at: None,
                tts_tail_ms: 0.0,
                answer: String::new(),
                splitter: SentenceSplitter::new().first_clause(self.settings.speak_first_clause),
                spoken: Vec::new(),
                spoken_at_hold: None,
                sentences: Vec::new(),
                voice: voice.is_some(),
                span,
                tts_span: None,
                messages: Vec::new(),
                tool_rounds: 0,
            },
        );
        if let Some(t) = self.turns.get(&turn_id) {
            // i64: u64 values become strings in OTLP.
            t.span
                .record("coda.seq", i64::try_from(seq_before).unwrap_or(i64::MAX));
        }
        self.route(&turn_id, &session_id, msg.text, ctx);
        TurnStarted {
            turn_id,
            conversation_id,
        }
    }

    // ---- stage 2: intent ----------------------------------------------------------------

    fn route(&mut self, turn_id: &str, session_id: &str, text: String, ctx: &mut Context<Self>) {
        let id = turn_id.to_string();
        let parent = self.turns.get(turn_id).map(|t| t.span.clone());
        let span = tracing::debug_span!(
            parent: parent.as_ref().and_then(|p| p.id()),
            "coda.intent",
            otel.name = "intent",
            coda.turn_id = turn_id,
            coda.intent = tracing::field::Empty,
            coda.decision = tracing::field::Empty,
            coda.confidence = tracing::field::Empty,
        );
        let fut = self.engines.route.send(RouteText {
            turn_id: turn_id.to_string(),
            session_id: session_id.to_string(),
            text,
        });
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok(decision) => {
                span.record("coda.intent", decision.intent.as_str());
                span.record("coda.decision", decision.decision.kind());
                span.record("coda.confidence", decision.confidence);
                drop(span);
                act.on_route(&id, decision, ctx)
            }
            // The router crashed mid-request (it is being restarted): the LLM answers.
            Err(_) => act.on_route(
                &id,
                IntentDecision {
                    intent: "llm.chat".into(),
                    confidence: 0.0,
                    decision: Decision::Llm,
                    elapsed_ms: 0.0,
                },
                ctx,
            ),
        }));
    }

    fn on_route(&mut self, turn_id: &str, d: IntentDecision, ctx: &mut Context<Self>) {
        let Some(turn) = self.turns.get_mut(turn_id) else {
            return;
        };
        turn.latency
            .set(Stage::Intent, turn.t0.elapsed().as_secs_f64() * 1000.0);
        self.transition(turn_id, TurnEvent::Routed);
        match d.decision {
            Decision::Llm => self.start_llm(turn_id, ctx),
            Decision::System(intent) => self.run_system(turn_id, intent, ctx),
            Decision::Tool { name, arguments } => match self.tools.clone() {
                Some(tools) => self.run_tool(turn_id, tools, name, arguments, ctx),
                None => {
                    tracing::warn!(tool = %name, "tool route without a tools component; using the LLM");
                    self.start_llm(turn_id, ctx)
                }
            },
        }
    }

    // ---- stage 3: the answer ------------------------------------------------------------

    /// Runs a tool; its answer is spoken like a model's.
    fn run_tool(
        &mut self,
        turn_id: &str,
        tools: Addr<crate::tools::ToolsActor>,
        name: String,
        arguments: serde_json::Value,
        ctx: &mut Context<Self>,
    ) {
        let Some(turn) = self.turns.get(turn_id) else {
            return;
        };
        let id = turn_id.to_string();
        // Our own call id, so the span and the tool_result event name the same call.
        let call_id = format!("k-{turn_id}");
        let span = tool_span(&turn.span, &name, &call_id, turn_id, &turn.session_id);
        let fut = tools.send(crate::tools::Call {
            name: name.clone(),
            arguments,
            turn_id: Some(turn_id.to_string()),
            session_id: Some(turn.session_id.clone()),
            call_id: Some(call_id),
            ..Default::default()
        });
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            if !matches!(res, Ok(Ok(_))) {
                span.record("otel.status_code", "error");
            }
            drop(span);
            // The Tools actor published tool_result / tool_error itself.
            let text = match res {
                Ok(Ok(value)) => spoken_tool_answer(&value),
                Ok(Err(failure)) => format!("Sorry, the {name} tool failed: {failure}."),
                Err(_) => format!("Sorry, the {name} tool is not available right now."),
            };
            if let Some(turn) = act.turns.get_mut(&id) {
                turn.answer = text.clone();
            }
            act.on_answer_text(&id, &text, ctx);
            act.answer_done(&id, ctx);
        }));
    }

    fn start_llm(&mut self, turn_id: &str, ctx: &mut Context<Self>) {
        let Some(turn) = self.turns.get(turn_id) else {
            return;
        };
        let session_id = turn.session_id.clone();
        let user_text = turn.user_text.clone();
        let Some(memory) = self.memory.clone() else {
            let mut messages = Vec::new();
            if let Some(s) = self.sessions.get(&session_id) {
                let keep = self.settings.history_turns * 2;
                let start = s.history.len().saturating_sub(keep);
                messages.extend(s.history[start..].iter().cloned());
            }
            messages.push(ChatMessage::new(ChatRole::User, &user_text));
            self.generate(turn_id, messages, ctx);
            return;
        };
        // Recent turns and relevant memories within the budget, from the Memory actor.
        let id = turn_id.to_string();
        let span = tracing::debug_span!(
            parent: &turn.span,
            "coda.memory",
            otel.name = "memory context",
            coda.turn_id = turn_id,
            coda.memory.messages = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let fut = memory.send(crate::memory::BuildContext {
            session_id,
            user_text: user_text.clone(),
            token_budget: None,
            turn_id: Some(turn_id.to_string()),
        });
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            let messages = match res {
                Ok(Ok(context)) => {
                    span.record("coda.memory.messages", context.messages.len() as i64);
                    context.messages
                }
                _ => {
                    span.record("otel.status_code", "error");
                    tracing::warn!(turn = %id, "memory context unavailable; answering without it");
                    vec![ChatMessage::new(ChatRole::User, &user_text)]
                }
            };
            drop(span);
            act.generate(&id, messages, ctx);
        }));
    }

    fn generate(&mut self, turn_id: &str, context: Vec<ChatMessage>, ctx: &mut Context<Self>) {
        let Some(turn) = self.turns.get_mut(turn_id) else {
            return;
        };
        let mut messages = vec![ChatMessage::new(
            ChatRole::System,
            &self.settings.system_prompt,
        )];
        messages.extend(context);
        turn.messages = messages;
        self.generate_round(turn_id, ctx);
    }

    /// Asks the model with the turn's messages, offering the tools when configured.
    fn generate_round(&mut self, turn_id: &str, ctx: &mut Context<Self>) {
        let tools = self.tools.clone().filter(|_| self.settings.llm_tools);
        let Some(tools) = tools else {
            self.send_generate(turn_id, Vec::new(), ctx);
            return;
        };
        let id = turn_id.to_string();
        ctx.spawn(
            tools
                .send(crate::tools::Specs)
                .into_actor(self)
                .map(move |specs, act, ctx| act.send_generate(&id, specs.unwrap_or_default(), ctx)),
        );
    }

    fn send_generate(
        &mut self,
        turn_id: &str,
        tools: Vec<crate::llm::ToolSpec>,
        ctx: &mut Context<Self>,
    ) {
        let Some(turn) = self.turns.get(turn_id) else {
            return;
        };
        if turn.phase.is_over() {
            return;
        }
        let session_id = turn.session_id.clone();
        let request = ChatRequest {
            messages: turn.messages.clone(),
            max_tokens: self.settings.max_tokens,
            tools,
            ..Default::default()
        };
        let id = turn_id.to_string();
        let fut = self.engines.generate.send(Generate {
            turn_id: turn_id.to_string(),
            session_id,
            request,
            reply_to: ctx.address().recipient(),
            span: turn.span.clone(),
        });
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            let error = match res {
                Ok(Ok(())) => return,
                // The llm actor published its llm_error.
                Ok(Err(e)) => e,
                Err(_) => {
                    let e = LlmError::Unavailable("the llm component is restarting".into());
                    if let Some(turn) = act.turns.get(&id) {
                        act.sup.hub().publish(&turn.session_id, &e.event(&id));
                    }
                    e
                }
            };
            act.llm_failed(&id, error, ctx);
        }));
    }

    /// The model asked for tools: they run one after another through the Tools actor
    /// (`tool_call`, `tool_result`/`tool_error` events; a tool that asks is not confirmed,
    /// so the model hears that it needs the user's yes), and the model is asked again
    /// with the results. `false`: no more rounds (none configured, the turn is over, or
    /// the budget is spent), so the answer so far stands.
    fn tool_round(
        &mut self,
        turn_id: &str,
        text: String,
        calls: Vec<crate::llm::ToolCallRequest>,
        ctx: &mut Context<Self>,
    ) -> bool {
        let Some(tools) = self.tools.clone().filter(|_| self.settings.llm_tools) else {
            return false;
        };
        let max = self.settings.max_tool_rounds;
        let Some(turn) = self.turns.get_mut(turn_id) else {
            return false;
        };
        if turn.phase.is_over() || turn.tool_rounds >= max {
            if turn.tool_rounds >= max {
                tracing::warn!(turn = %turn_id, "the model still calls tools after {max} rounds; answering with what it said");
            }
            return false;
        }
        turn.tool_rounds += 1;
        turn.messages.push(ChatMessage {
            role: ChatRole::Assistant,
            content: text,
            tool_calls: calls.clone(),
            tool_call_id: None,
        });
        let session = turn.session_id.clone();
        let id = turn_id.to_string();
        let parent = turn.span.clone();
        let run = async move {
            let mut results = Vec::new();
            for c in &calls {
                let span = tool_span(&parent, &c.name, &c.id, &id, &session);
                let call =
                    crate::tools::Call::from_request(c, Some(id.clone()), Some(session.clone()));
                let result = match tools.send(call).await {
                    Ok(r) => r,
                    Err(_) => Err(crate::tools::ToolFailure::Unavailable(
                        "the tools component is restarting".into(),
                    )),
                };
                if result.is_err() {
                    span.record("otel.status_code", "error");
                }
                drop(span);
                results.push(crate::tools::tool_message(&c.id, &result));
            }
            results
        };
        let id = turn_id.to_string();
        ctx.spawn(run.into_actor(self).map(move |results, act, ctx| {
            let Some(turn) = act.turns.get_mut(&id) else {
                return;
            };
            turn.messages.extend(results);
            act.generate_round(&id, ctx);
        }));
        true
    }

    fn run_system(&mut self, turn_id: &str, intent: SystemIntent, ctx: &mut Context<Self>) {
        match intent {
            // The barge-in already happened when this input arrived; nothing to say.
            SystemIntent::Stop => self.transition(turn_id, TurnEvent::AnswerComplete),
            SystemIntent::Help => {
                let text = "I can answer questions, keep track of our conversation, and tell you the time. Say stop to interrupt me.";
                if let Some(turn) = self.turns.get_mut(turn_id) {
                    turn.answer = text.to_string();
                }
                self.on_answer_text(turn_id, text, ctx);
                self.answer_done(turn_id, ctx);
            }
        }
    }

    fn on_token(&mut self, turn_id: &str, text: &str, ctx: &mut Context<Self>) {
        let Some(turn) = self.turns.get_mut(turn_id) else {
            return;
        };
        let ms = turn.t0.elapsed().as_secs_f64() * 1000.0;
        turn.latency.first(Stage::LlmFirstToken, ms);
        turn.answer.push_str(text);
        self.on_answer_text(turn_id, text, ctx);
    }

    /// Feeds answer text to the sentence splitter; complete sentences go to speech.
    fn on_answer_text(&mut self, turn_id: &str, text: &str, ctx: &mut Context<Self>) {
        let Some(turn) = self.turns.get_mut(turn_id) else {
            return;
        };
        for sentence in turn.splitter.push(text) {
            self.speak(turn_id, sentence, ctx);
        }
    }

    fn speak(&mut self, turn_id: &str, sentence: String, ctx: &mut Context<Self>) {
        let Some(turn) = self.turns.get_mut(turn_id) else {
            return;
        };
        if turn.speech.failed || turn.phase.is_over() {
            return;
        }
        let index = turn.speech.queued;
        turn.speech.queued += 1;
        if turn.tts_span.is_none() {
            turn.tts_span = Some(tracing::debug_span!(
                parent: &turn.span,
                "coda.tts",
                otel.name = "tts",
                coda.turn_id = turn_id,
                coda.tts.sentences = tracing::field::Empty,
                coda.tts.duration_ms = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            ));
        }
        let id = turn_id.to_string();
        let progress = Arc::new(SentenceProgress::default());
        turn.sentences.push((sentence.clone(), progress.clone()));
        let fut = self.engines.speak.send(Speak {
            turn_id: turn_id.to_string(),
            session_id: turn.session_id.clone(),
            index,
            text: sentence,
            reply_to: ctx.address().recipient(),
            progress,
        });
        ctx.spawn(fut.into_actor(self).map(move |res, act, _| {
            let failed = match res {
                Ok(Ok(())) => return,
                Ok(Err(why)) => why,
                Err(_) => "the tts component is restarting".to_string(),
            };
            act.speech_failed(&id, &failed);
        }));
    }

    /// The answer text is complete (LLM done, or a canned answer).
    fn answer_done(&mut self, turn_id: &str, ctx: &mut Context<Self>) {
        let Some(turn) = self.turns.get_mut(turn_id) else {
            return;
        };
        if let Some(rest) = turn.splitter.finish() {
            self.speak(turn_id, rest, ctx);
        }
        self.transition(turn_id, TurnEvent::AnswerComplete);
    }

    fn llm_failed(&mut self, turn_id: &str, error: LlmError, _: &mut Context<Self>) {
        tracing::warn!(turn = turn_id, %error, "turn failed in the llm stage");
        // Whatever part of the answer is being spoken finishes; then the turn closes.
        self.transition(turn_id, TurnEvent::AnswerComplete);
    }

    /// A sentence could not be handed to speech: said once, and the text answer stands.
    fn speech_failed(&mut self, turn_id: &str, why: &str) {
        let Some(turn) = self.turns.get_mut(turn_id) else {
            return;
        };
        if !turn.speech.failed {
            turn.speech.failed = true;
            self.sup.hub().publish(
                &turn.session_id,
                &coda_protocol::TtsError {
                    turn_id: Some(turn_id.to_string()),
                    code: "unavailable".into(),
                    message: why.to_string(),
                    level: Level::Error,
                },
            );
        }
        self.transition(turn_id, TurnEvent::SpeechFailed);
    }

    // ---- the phase ----------------------------------------------------------------------

    /// The one way a turn's phase changes ([`phase::next`]); entering `DrainingSpeech`
    /// asks speech to report when it is done, and a turn that is over is completed.
    fn transition(&mut self, turn_id: &str, event: TurnEvent) {
        let Some(turn) = self.turns.get_mut(turn_id) else {
            return;
        };
        let from = turn.phase;
        turn.phase = phase::next(from, event, turn.speech);
        if turn.phase != from {
            tracing::debug!(turn = turn_id, ?from, to = ?turn.phase, ?event, "turn phase");
        }
        if turn.phase == Phase::DrainingSpeech && from != Phase::DrainingSpeech {
            self.engines.finish_speech.do_send(FinishTurn {
                turn_id: turn_id.to_string(),
            });
        }
        self.try_complete(turn_id);
    }

    /// Ends the turn if its phase says it is over: the one place a turn completes.
    fn try_complete(&mut self, turn_id: &str) {
        if self
            .turns
            .get(turn_id)
            .is_some_and(|t| t.phase == Phase::Done)
        {
            self.complete_turn(turn_id);
        }
    }

    // ---- stage 4: speech ----------------------------------------------------------------

    fn on_spoken(&mut self, turn_id: &str, text: String, synth_ms: f64) {
        let Some(turn) = self.turns.get_mut(turn_id) else {
            return;
        };
        if let Some(done) = turn.llm_done_at {
            // Only the part of this synthesis after generation ended was on the critical path.
            turn.tts_tail_ms += synth_ms.min(done.elapsed().as_secs_f64() * 1000.0);
        }
        let ms = turn.input_end.elapsed().as_secs_f64() * 1000.0;
        let first = turn.latency.first(Stage::FirstAudio, ms);
        turn.spoken.push(text);
        let session = turn.session_id.clone();
        if first {
            self.set_mode(&session, Mode::Speaking);
        }
    }

    // ---- stage 5: the turn ends ---------------------------------------------------------

    fn complete_turn(&mut self, turn_id: &str) {
        let Some(turn) = self.turns.remove(turn_id) else {
            return;
        };
        if !turn.answer.is_empty() {
            self.message(
                &turn.session_id,
                turn_id,
                Role::Assistant,
                &turn.answer,
                None,
            );
        }
        self.remember(&turn, turn.answer.clone());
        let (session, voice) = (turn.session_id.clone(), turn.voice);
        self.close(turn);
        if voice {
            self.follow_up(&session);
        }
    }

    /// Opens `session_id`'s follow-up window (when it listens in wake mode): mode
    /// `listening_follow_up` until it closes or something else happens.
    fn follow_up(&mut self, session_id: &str) {
        let d = self.settings.follow_up;
        let until = Instant::now() + d;
        if d.is_zero() || !self.follow_ups.open(session_id, until) {
            return;
        }
        if let Some(s) = self.sessions.get_mut(session_id) {
            s.follow_up_until = Some(until);
        }
        self.set_mode(session_id, Mode::ListeningFollowUp);
        let (me, session) = (self.me.clone(), session_id.to_string());
        if let Some(me) = me {
            actix_rt::spawn(async move {
                tokio::time::sleep(d).await;
                me.do_send(FollowUpOver {
                    session_id: session,
                    until,
                });
            });
        }
    }

    /// Keeps the exchange in the session's context (and in the Memory actor's store).
    fn remember(&mut self, turn: &Turn, said: String) {
        if let Some(memory) = &self.memory {
            let pair = [
                (ChatRole::User, turn.user_text.clone()),
                (ChatRole::Assistant, said.clone()),
            ];
            for (role, content) in pair {
                if content.is_empty() {
                    continue;
                }
                memory.do_send(crate::memory::AppendMessage {
                    session_id: turn.session_id.clone(),
                    role,
                    content,
                    turn_id: Some(turn.id.clone()),
                    tool_calls: Vec::new(),
                    tool_call_id: None,
                    metadata: serde_json::Value::Null,
                });
            }
        }
        if let Some(s) = self.sessions.get_mut(&turn.session_id) {
            s.history
                .push(ChatMessage::new(ChatRole::User, &turn.user_text));
            if !said.is_empty() {
                s.history.push(ChatMessage::new(ChatRole::Assistant, said));
            }
            // Over the limit, half of it goes at once: the prompt's start then stays the
            // same for several turns, which a prompt-caching model reads only once.
            let keep = self.settings.history_turns * 2;
            if s.history.len() > keep {
                let drop = s.history.len() - (keep / 2).max(2);
                s.history.drain(..drop);
            }
        }
    }

    fn close(&mut self, turn: Turn) {
        let total_ms = turn.input_end.elapsed().as_secs_f64() * 1000.0;
        let l = turn.latency;
        // The latency_trace's figures on the root span too, so a trace viewer and the
        // event stream agree.
        let span = &turn.span;
        span.record("coda.outcome", format!("{:?}", turn.phase).to_lowercase());
        span.record("coda.latency.total_ms", total_ms);
        for (field, stage) in [
            ("coda.latency.intent_ms", Stage::Intent),
            ("coda.latency.llm_ttft_ms", Stage::LlmFirstToken),
            ("coda.latency.llm_ms", Stage::Llm),
            ("coda.latency.tts_first_audio_ms", Stage::FirstAudio),
            ("coda.latency.stt_ms", Stage::Stt),
        ] {
            if let Some(ms) = l.get(stage) {
                span.record(field, ms);
            }
        }
        self.sup.hub().publish(
            &turn.session_id,
            &LatencyTrace {
                turn_id: turn.id.clone(),
                stt_ms: l.get(Stage::Stt),
                endpoint_ms: l.get(Stage::Endpoint),
                stt_wait_ms: l.get(Stage::SttWait),
                intent_ms: l.get(Stage::Intent),
                llm_ttft_ms: l.get(Stage::LlmFirstToken),
                llm_ms: l.get(Stage::Llm),
                tts_first_audio_ms: l.get(Stage::FirstAudio),
                tts_ms: l.get(Stage::Tts),
                total_ms,
                kernel_ms: Some(
                    (total_ms
                        - l.get(Stage::Llm).unwrap_or(0.0)
                        - turn.tts_tail_ms
                        // What the speaker waited for before the turn began: the detector's
                        // silence and the transcription still running after it.
                        - l.get(Stage::Endpoint).unwrap_or(0.0)
                        - l.get(Stage::SttWait).unwrap_or(0.0))
                    .max(0.0),
                ),
            },
        );
        let mut listening = false;
        if let Some(s) = self.sessions.get_mut(&turn.session_id) {
            if s.active.as_deref() == Some(turn.id.as_str()) {
                s.active = None;
                s.held = None;
            }
            listening = matches!(s.mode, Mode::Listening | Mode::ListeningFollowUp);
        }
        // Someone is talking (over the answer, or after it): that decides the mode.
        if !listening {
            self.set_mode(&turn.session_id, Mode::Idle);
        }
    }

    // ---- barge-in -------------------------------------------------------------------------

    /// Someone started talking over the session's answer: its playback pauses until what
    /// they said is known (a transcript interrupts it, no speech resumes it).
    fn hold(&mut self, session_id: &str, ctx: &mut Context<Self>) {
        let Some(s) = self.sessions.get_mut(session_id) else {
            return;
        };
        let Some(turn_id) = s.active.clone() else {
            return;
        };
        tracing::info!(session = %session_id, turn = %turn_id, "barge-in: speech over the answer; its playback pauses");
        self.holds += 1;
        let seq = self.holds;
        s.held = Some(seq);
        if let Some(turn) = self.turns.get_mut(&turn_id) {
            turn.spoken_at_hold = Some(turn.spoken.len());
        }
        self.engines.hold_speech.do_send(HoldTurn {
            turn_id: turn_id.clone(),
            hold: Hold::Pause,
        });
        let session = session_id.to_string();
        ctx.run_later(self.settings.hold_max, move |act, _| {
            if act
                .sessions
                .get(&session)
                .is_some_and(|s| s.held == Some(seq))
            {
                tracing::warn!(session = %session, turn = %turn_id, "no end to the utterance over the answer; it goes on");
                act.release(&session, "timeout", None);
            }
        });
    }

    /// What was said over the answer was not someone speaking to the assistant (`reason`,
    /// for `tts_resumed`): it goes on. False when nothing was held.
    fn release(&mut self, session_id: &str, reason: &'static str, heard: Option<String>) -> bool {
        let Some(s) = self.sessions.get_mut(session_id) else {
            return false;
        };
        let Some(turn_id) = s.held.take().and(s.active.clone()) else {
            return false;
        };
        let Some(turn) = self.turns.get_mut(&turn_id) else {
            return false;
        };
        turn.spoken_at_hold = None;
        tracing::info!(session = %session_id, turn = %turn_id, reason, "nobody spoke over the answer; it goes on");
        self.engines.hold_speech.do_send(HoldTurn {
            turn_id,
            hold: Hold::Resume { reason, heard },
        });
        self.set_mode(session_id, Mode::Speaking);
        true
    }

    /// `text`, heard over the session's held answer, is that answer's own voice: garbled
    /// words of the sentences being played when it was held.
    fn own_voice(&self, session_id: &str, text: &str) -> bool {
        let Some(turn) = self
            .sessions
            .get(session_id)
            .filter(|s| s.held.is_some())
            .and_then(|s| s.active.as_ref())
            .and_then(|id| self.turns.get(id))
        else {
            return false;
        };
        let n = turn.spoken_at_hold.unwrap_or(turn.spoken.len());
        let recent = turn.spoken[n.saturating_sub(3)..n.min(turn.spoken.len())].join(" ");
        own_voice::is_own_voice(text, &recent)
    }

    fn interrupt_session(&mut self, session_id: &str) -> Option<(String, String, String)> {
        let session = self.sessions.get_mut(session_id)?;
        session.held = None;
        let active = session.active.take()?;
        let mut turn = self.turns.remove(&active)?;
        turn.phase = phase::next(turn.phase, TurnEvent::Interrupted, turn.speech);
        self.engines.cancel_generation.do_send(CancelGeneration {
            turn_id: active.clone(),
        });
        self.engines.cancel_speech.do_send(CancelTurn {
            turn_id: active.clone(),
        });
        // What the listener heard when the speech went to a device; otherwise (a client
        // plays the audio, or nothing does) the sentences whose audio was produced.
        let said = heard(&turn.sentences).unwrap_or_else(|| {
            let n = turn.spoken_at_hold.unwrap_or(turn.spoken.len());
            turn.spoken[..n.min(turn.spoken.len())].to_vec()
        });
        let spoken = said.join(" ");
        let cut = cut_part(&turn.answer, &said);
        tracing::info!(turn = %active, spoken_chars = spoken.len(), cut_chars = cut.len(), "interrupted");
        if !turn.answer.is_empty() || !spoken.is_empty() {
            self.message(
                session_id,
                &active,
                Role::Assistant,
                &spoken,
                Some(cut.clone()),
            );
        }
        self.remember(&turn, spoken.clone());
        self.close(turn);
        Some((active, spoken, cut))
    }
}

/// A turn's root trace span (named `turn`; the stages' spans are its children). The
/// Stt actor opens it for speech, around the transcription; the orchestrator otherwise.
pub fn turn_span(turn_id: &str, session_id: &str) -> tracing::Span {
    tracing::debug_span!(
        parent: None,
        "coda.turn",
        otel.name = "turn",
        coda.turn_id = turn_id,
        coda.session_id = session_id,
        coda.conversation_id = tracing::field::Empty,
        coda.source = tracing::field::Empty,
        coda.seq = tracing::field::Empty,
        coda.outcome = tracing::field::Empty,
        coda.latency.intent_ms = tracing::field::Empty,
        coda.latency.llm_ttft_ms = tracing::field::Empty,
        coda.latency.llm_ms = tracing::field::Empty,
        coda.latency.tts_first_audio_ms = tracing::field::Empty,
        coda.latency.total_ms = tracing::field::Empty,
        coda.latency.stt_ms = tracing::field::Empty,
    )
}

/// A tool call's span (GenAI `execute_tool`) under the turn's span.
fn tool_span(
    parent: &tracing::Span,
    name: &str,
    call_id: &str,
    turn_id: &str,
    session_id: &str,
) -> tracing::Span {
    tracing::debug_span!(
        parent: parent,
        "gen_ai.execute_tool",
        otel.name = format!("execute_tool {name}"),
        otel.status_code = tracing::field::Empty,
        gen_ai.operation.name = "execute_tool",
        gen_ai.tool.name = name,
        gen_ai.tool.call.id = call_id,
        gen_ai.tool.type = "function",
        coda.turn_id = turn_id,
        coda.session_id = session_id,
    )
}

/// What to say for a tool's answer: its `spoken` or `text` field, else compact JSON.
fn spoken_tool_answer(value: &serde_json::Value) -> String {
    ["spoken", "text", "message", "summary"]
        .iter()
        .find_map(|k| value.get(k).and_then(|v| v.as_str()))
        .map(str::to_string)
        .unwrap_or_else(|| value.to_string())
}

/// What of `sentences` was heard: those played to the end, then the words of the one
/// playing in proportion to its samples played. `None` when none went to a device.
fn heard(sentences: &[(String, Arc<SentenceProgress>)]) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut any = false;
    for (text, progress) in sentences {
        let Some(fraction) = progress.heard() else {
            break;
        };
        any = true;
        if fraction >= 1.0 {
            parts.push(text.clone());
            continue;
        }
        let part = words_up_to(text, fraction);
        if !part.is_empty() {
            parts.push(part.to_string());
        }
        break;
    }
    any.then_some(parts)
}

/// The words of `text` that end within its first `fraction` (of characters).
fn words_up_to(text: &str, fraction: f64) -> &str {
    let limit = (text.chars().count() as f64 * fraction.clamp(0.0, 1.0)).floor() as usize;
    let Some((cut, next)) = text.char_indices().nth(limit) else {
        return text.trim_end();
    };
    let whole = if next.is_whitespace() {
        &text[..cut]
    } else {
        text[..cut]
            .rfind(char::is_whitespace)
            .map_or("", |i| &text[..i])
    };
    whole.trim_end()
}

/// The unspoken rest of `answer` given the sentences spoken so far.
fn cut_part(answer: &str, spoken: &[String]) -> String {
    let mut rest = answer;
    for s in spoken {
        if let Some(i) = rest.find(s.as_str()) {
            rest = &rest[i + s.len()..];
        }
    }
    rest.trim().to_string()
}

impl Actor for Orchestrator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.me = Some(ctx.address());
        self.sup.started();
    }
}

impl actix::Supervised for Orchestrator {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // Turns in flight died with the old context: close them so no session is stuck
        // in `thinking`, and say so.
        let turns: Vec<Turn> = self.turns.drain().map(|(_, t)| t).collect();
        for mut turn in turns {
            turn.phase = phase::next(turn.phase, TurnEvent::Aborted, turn.speech);
            self.engines.cancel_generation.do_send(CancelGeneration {
                turn_id: turn.id.clone(),
            });
            self.engines.cancel_speech.do_send(CancelTurn {
                turn_id: turn.id.clone(),
            });
            self.sup.hub().publish(
                &turn.session_id,
                &SystemError {
                    level: Level::Error,
                    component: "orchestrator".into(),
                    code: "turn_aborted".into(),
                    message: format!("turn {} was aborted by an orchestrator restart", turn.id),
                },
            );
            self.close(turn);
        }
        self.sup.restarting();
    }
}

impl Orchestrator {
    /// Runs a handler's body; a panic in it restarts the actor (under the kernel's
    /// budget) and answers `fallback` instead of unwinding through the event loop.
    fn guarded<R>(
        &mut self,
        ctx: &mut Context<Self>,
        fallback: impl FnOnce(String) -> R,
        body: impl FnOnce(&mut Self, &mut Context<Self>) -> R,
    ) -> R {
        match crate::supervise::catch(std::panic::AssertUnwindSafe(|| body(self, ctx))) {
            Ok(r) => r,
            Err(panic) => {
                self.sup.crashed(&panic);
                ctx.stop();
                fallback(format!("the orchestrator crashed: {panic}"))
            }
        }
    }

    fn begin(
        &mut self,
        msg: TextTurn,
        voice: Option<VoiceInput>,
        ctx: &mut Context<Self>,
    ) -> Result<TurnStarted, TurnStartError> {
        if self.sup.is_degraded() {
            return Err(TurnStartError::Unavailable(self.sup.unavailable()));
        }
        if msg.text.trim().is_empty() {
            return Err(TurnStartError::Invalid("empty text".into()));
        }
        self.silence(&msg.session_id, "stopped");
        let replaces_own = self
            .sessions
            .get(&msg.session_id)
            .is_some_and(|s| s.active.is_some());
        let max = self.settings.max_turns_in_flight.max(1);
        if self.turns.len() >= max && !replaces_own {
            self.sup.hub().counters().refused(crate::hub::Refusal::Turn);
            return Err(TurnStartError::Unavailable(format!(
                "{} turns are already being answered (conversation.max_turns_in_flight); try again when one ends",
                self.turns.len()
            )));
        }
        self.guarded(
            ctx,
            |why| Err(TurnStartError::Unavailable(why)),
            |act, ctx| Ok(act.start_turn(msg, voice, ctx)),
        )
    }
}

impl VoiceInput {
    /// The stages a voice turn measured before it began.
    fn latency(&self) -> Latency {
        let mut l = Latency::default();
        l.set(Stage::Stt, self.stt_ms);
        l.set(
            Stage::Endpoint,
            self.utterance_ended
                .saturating_duration_since(self.speech_ended)
                .as_secs_f64()
                * 1000.0,
        );
        l.set(
            Stage::SttWait,
            self.utterance_ended.elapsed().as_secs_f64() * 1000.0,
        );
        l
    }
}

impl Handler<TextTurn> for Orchestrator {
    type Result = Result<TurnStarted, TurnStartError>;

    fn handle(&mut self, msg: TextTurn, ctx: &mut Context<Self>) -> Self::Result {
        self.begin(msg, None, ctx)
    }
}

impl Handler<VoiceTurn> for Orchestrator {
    type Result = Result<TurnStarted, TurnStartError>;

    fn handle(&mut self, msg: VoiceTurn, ctx: &mut Context<Self>) -> Self::Result {
        if self.own_voice(&msg.session_id, &msg.text) {
            self.release(&msg.session_id, "own_voice", Some(msg.text));
            return Err(TurnStartError::Invalid(
                "the answer's own voice, heard over it".into(),
            ));
        }
        let voice = VoiceInput {
            turn_id: msg.turn_id,
            stt_ms: msg.stt_ms,
            speech_ended: msg.speech_ended,
            utterance_ended: msg.utterance_ended,
            span: msg.span,
        };
        let turn = TextTurn {
            session_id: msg.session_id,
            text: msg.text,
            source: TurnSource::Voice,
        };
        self.begin(turn, Some(voice), ctx)
    }
}

impl Handler<Listening> for Orchestrator {
    type Result = ();

    fn handle(&mut self, msg: Listening, ctx: &mut Context<Self>) {
        self.guarded(
            ctx,
            |_| (),
            |act, ctx| {
                if msg.on {
                    act.silence(&msg.session_id, "stopped");
                    act.ensure_session(&msg.session_id);
                    let speaking = act
                        .sessions
                        .get(&msg.session_id)
                        .is_some_and(|s| s.mode == Mode::Speaking && s.active.is_some());
                    if speaking && act.settings.barge_in {
                        act.hold(&msg.session_id, ctx);
                    }
                    act.set_mode(&msg.session_id, Mode::Listening);
                } else if !act.release(&msg.session_id, "no_speech", None)
                    && act.sessions.get(&msg.session_id).is_some_and(|s| {
                        matches!(s.mode, Mode::Listening | Mode::ListeningFollowUp)
                    })
                {
                    act.set_mode(&msg.session_id, Mode::Idle);
                }
            },
        );
    }
}

impl Handler<Interrupt> for Orchestrator {
    type Result = InterruptReport;

    fn handle(&mut self, msg: Interrupt, ctx: &mut Context<Self>) -> InterruptReport {
        self.guarded(
            ctx,
            |_| InterruptReport::default(),
            |act, _| {
                let sessions: Vec<String> = match msg.session_id {
                    Some(s) => vec![s],
                    None => act
                        .sessions
                        .keys()
                        .chain(act.alarms.keys())
                        .cloned()
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect(),
                };
                let mut report = InterruptReport::default();
                for s in sessions {
                    act.silence(&s, "stopped");
                    if let Some((turn, spoken, cut)) = act.interrupt_session(&s) {
                        report.turns.push(turn);
                        report.spoken.push(spoken);
                        report.cut.push(cut);
                    }
                }
                report
            },
        )
    }
}

impl Handler<LlmUpdate> for Orchestrator {
    type Result = ();

    fn handle(&mut self, msg: LlmUpdate, ctx: &mut Context<Self>) {
        self.guarded(
            ctx,
            |_| (),
            |act, ctx| match msg {
                LlmUpdate::Token { turn_id, text } => act.on_token(&turn_id, &text, ctx),
                LlmUpdate::Done {
                    turn_id,
                    total_ms,
                    text,
                    tool_calls,
                    ..
                } => {
                    if !tool_calls.is_empty() && act.tool_round(&turn_id, text, tool_calls, ctx) {
                        return;
                    }
                    if let Some(turn) = act.turns.get_mut(&turn_id) {
                        turn.latency.set(Stage::Llm, total_ms);
                        turn.llm_done_at = Some(Instant::now());
                    }
                    act.answer_done(&turn_id, ctx);
                }
                LlmUpdate::Failed { turn_id, error } => act.llm_failed(&turn_id, error, ctx),
            },
        );
    }
}

impl Handler<TtsUpdate> for Orchestrator {
    type Result = ();

    fn handle(&mut self, msg: TtsUpdate, ctx: &mut Context<Self>) {
        self.guarded(ctx, |_| (), |act, ctx| match msg {
            TtsUpdate::Spoken {
                turn_id,
                text,
                synth_ms,
                ..
            } => act.on_spoken(&turn_id, text, synth_ms),
            TtsUpdate::Done { turn_id, .. } | TtsUpdate::Failed { turn_id, .. }
                if act.ring_done(&turn_id, ctx) => {}
            TtsUpdate::Done {
                turn_id,
                duration_ms,
                ..
            } => {
                if let Some(turn) = act.turns.get_mut(&turn_id) {
                    turn.latency.set(Stage::Tts, duration_ms);
                    if let Some(span) = turn.tts_span.take() {
                        span.record("coda.tts.sentences", i64::from(turn.speech.queued));
                        span.record("coda.tts.duration_ms", duration_ms);
                    }
                }
                act.transition(&turn_id, TurnEvent::SpeechDone);
            }
            TtsUpdate::Failed { turn_id, error } => {
                if let Some(turn) = act.turns.get_mut(&turn_id) {
                    turn.speech.failed = true;
                    if let Some(span) = turn.tts_span.take() {
                        span.record("otel.status_code", "error");
                    }
                    tracing::warn!(turn = %turn_id, %error, "speech failed; the text answer stands");
                }
                act.transition(&turn_id, TurnEvent::SpeechFailed);
            }
        });
    }
}

crate::impl_fault_injection!(Orchestrator);
