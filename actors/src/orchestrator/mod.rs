//! Orchestrator: the turn state machine. Owns every session's mode (idle → thinking →
//! speaking → idle), its conversation context, and the turns in flight; drives each turn
//! through the stages in order, one method per stage:
//!
//! `start_turn` (conversation_turn, the user's message, mode thinking) → `route`
//! (IntentRouter: intent_result) → `start_llm` / `run_tool` / `run_system` → `on_token`
//! (sentences to Tts as they complete) → `on_spoken` (mode speaking at the first audio) →
//! `complete_turn` (the assistant's message, latency_trace, mode idle).
//!
//! `interrupt` (barge-in) cancels generation and speech at once and keeps only what was
//! actually spoken in the context. A new input in a session interrupts that session's
//! turn in flight. Turns of different sessions run side by side.

use std::collections::HashMap;
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
use crate::tts::{CancelTurn, FinishTurn, SentenceSplitter, Speak, TtsActor, TtsUpdate};

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
}

impl Default for ConversationSettings {
    fn default() -> Self {
        ConversationSettings {
            system_prompt: "You are Coda, a helpful voice assistant. Answer briefly, in plain spoken sentences.".into(),
            history_turns: 8,
            max_tokens: Some(128),
            speak_first_clause: true,
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
pub enum KernelError {
    /// The orchestrator is degraded.
    #[error("{0}")]
    Unavailable(String),
    /// The input is unusable.
    #[error("invalid input: {0}")]
    Invalid(String),
}

/// Start a turn from text.
#[derive(Message)]
#[rtype(result = "Result<TurnStarted, KernelError>")]
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
#[rtype(result = "Result<TurnStarted, KernelError>")]
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
}

/// Speech capture started (`on`) or stopped with nothing to say in a session: mode
/// `listening`, or back to `idle`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Listening {
    /// The session.
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
}

struct Turn {
    id: String,
    session_id: String,
    user_text: String,
    t0: Instant,
    /// End of the input: `t0` for text, the end of speech for voice.
    input_end: Instant,
    stt_ms: Option<f64>,
    endpoint_ms: Option<f64>,
    stt_wait_ms: Option<f64>,
    intent_ms: Option<f64>,
    llm_ttft_ms: Option<f64>,
    llm_ms: Option<f64>,
    tts_first_audio_ms: Option<f64>,
    tts_ms: Option<f64>,
    /// When generation ended (speech after it is on the critical path).
    llm_done_at: Option<Instant>,
    /// Synthesis time on the critical path after generation ended.
    tts_tail_ms: f64,
    answer: String,
    splitter: SentenceSplitter,
    queued: u32,
    spoken: Vec<String>,
    generating: bool,
    speech_failed: bool,
    finishing_speech: bool,
}

/// The orchestrator actor.
pub struct Orchestrator {
    sup: Supervision,
    router: Addr<IntentRouter>,
    llm: Addr<LlmActor>,
    tts: Addr<TtsActor>,
    settings: ConversationSettings,
    sessions: HashMap<String, SessionState>,
    turns: HashMap<String, Turn>,
    next_id: u64,
    memory: Option<Addr<crate::memory::MemoryActor>>,
    tools: Option<Addr<crate::tools::ToolsActor>>,
}

impl Orchestrator {
    /// An orchestrator driving these actors.
    pub fn new(
        sup: Supervision,
        router: Addr<IntentRouter>,
        llm: Addr<LlmActor>,
        tts: Addr<TtsActor>,
        settings: ConversationSettings,
    ) -> Self {
        Orchestrator {
            sup,
            router,
            llm,
            tts,
            settings,
            sessions: HashMap::new(),
            turns: HashMap::new(),
            next_id: 1,
            memory: None,
            tools: None,
        }
    }

    /// Conversations and context come from the Memory actor (else: in-process history).
    pub fn with_memory(mut self, memory: Option<Addr<crate::memory::MemoryActor>>) -> Self {
        self.memory = memory;
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
        if !self.sessions.contains_key(session_id) {
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
                },
            );
        }
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
                stt_ms: voice.as_ref().map(|v| v.stt_ms),
                endpoint_ms: voice.as_ref().map(|v| {
                    v.utterance_ended
                        .saturating_duration_since(v.speech_ended)
                        .as_secs_f64()
                        * 1000.0
                }),
                stt_wait_ms: voice
                    .as_ref()
                    .map(|v| v.utterance_ended.elapsed().as_secs_f64() * 1000.0),
                intent_ms: None,
                llm_ttft_ms: None,
                llm_ms: None,
                tts_first_audio_ms: None,
                tts_ms: None,
                llm_done_at: None,
                tts_tail_ms: 0.0,
                answer: String::new(),
                splitter: SentenceSplitter::new().first_clause(self.settings.speak_first_clause),
                queued: 0,
                spoken: Vec::new(),
                generating: false,
                speech_failed: false,
                finishing_speech: false,
            },
        );
        self.route(&turn_id, &session_id, msg.text, ctx);
        TurnStarted {
            turn_id,
            conversation_id,
        }
    }

    // ---- stage 2: intent ----------------------------------------------------------------

    fn route(&mut self, turn_id: &str, session_id: &str, text: String, ctx: &mut Context<Self>) {
        let id = turn_id.to_string();
        let fut = self.router.send(RouteText {
            turn_id: turn_id.to_string(),
            session_id: session_id.to_string(),
            text,
        });
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok(decision) => act.on_route(&id, decision, ctx),
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
        turn.intent_ms = Some(turn.t0.elapsed().as_secs_f64() * 1000.0);
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
        let fut = tools.send(crate::tools::Call {
            name: name.clone(),
            arguments,
            turn_id: Some(turn_id.to_string()),
            session_id: Some(turn.session_id.clone()),
            ..Default::default()
        });
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
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
        let Some(turn) = self.turns.get_mut(turn_id) else {
            return;
        };
        turn.generating = true;
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
        let fut = memory.send(crate::memory::BuildContext {
            session_id,
            user_text: user_text.clone(),
            token_budget: None,
            turn_id: Some(turn_id.to_string()),
        });
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            let messages = match res {
                Ok(Ok(context)) => context.messages,
                _ => {
                    tracing::warn!(turn = %id, "memory context unavailable; answering without it");
                    vec![ChatMessage::new(ChatRole::User, &user_text)]
                }
            };
            act.generate(&id, messages, ctx);
        }));
    }

    fn generate(&mut self, turn_id: &str, context: Vec<ChatMessage>, ctx: &mut Context<Self>) {
        let Some(turn) = self.turns.get(turn_id) else {
            return;
        };
        let session_id = turn.session_id.clone();
        let mut messages = vec![ChatMessage::new(
            ChatRole::System,
            &self.settings.system_prompt,
        )];
        messages.extend(context);
        let request = ChatRequest {
            messages,
            max_tokens: self.settings.max_tokens,
            ..Default::default()
        };
        let id = turn_id.to_string();
        let fut = self.llm.send(Generate {
            turn_id: turn_id.to_string(),
            session_id,
            request,
            reply_to: ctx.address().recipient(),
        });
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            let error = match res {
                Ok(Ok(())) => return,
                // The llm actor published its llm_error.
                Ok(Err(e)) => e,
                Err(_) => {
                    let e = LlmError::Unavailable("the llm component is restarting".into());
                    if let Some(turn) = act.turns.get(&id) {
                        act.sup.hub().publish(
                            &turn.session_id,
                            &coda_protocol::LlmError {
                                turn_id: Some(id.clone()),
                                code: e.code().to_string(),
                                message: e.to_string(),
                                level: Level::Error,
                            },
                        );
                    }
                    e
                }
            };
            act.llm_failed(&id, error, ctx);
        }));
    }

    fn run_system(&mut self, turn_id: &str, intent: SystemIntent, ctx: &mut Context<Self>) {
        match intent {
            // The barge-in already happened when this input arrived; nothing to say.
            SystemIntent::Stop => self.complete_turn(turn_id),
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
        if turn.llm_ttft_ms.is_none() {
            turn.llm_ttft_ms = Some(turn.t0.elapsed().as_secs_f64() * 1000.0);
        }
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
        if turn.speech_failed {
            return;
        }
        let index = turn.queued;
        turn.queued += 1;
        let id = turn_id.to_string();
        let fut = self.tts.send(Speak {
            turn_id: turn_id.to_string(),
            session_id: turn.session_id.clone(),
            index,
            text: sentence,
            reply_to: ctx.address().recipient(),
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
        let Some(turn) = self.turns.get_mut(turn_id) else {
            return;
        };
        if turn.queued == 0 || turn.speech_failed {
            self.complete_turn(turn_id);
        } else {
            turn.finishing_speech = true;
            self.tts.do_send(FinishTurn {
                turn_id: turn_id.to_string(),
            });
        }
    }

    fn llm_failed(&mut self, turn_id: &str, error: LlmError, _: &mut Context<Self>) {
        if let Some(turn) = self.turns.get_mut(turn_id) {
            turn.generating = false;
            tracing::warn!(turn = turn_id, %error, "turn failed in the llm stage");
            if turn.queued > 0 {
                // Part of the answer is being spoken: let it finish, then close the turn.
                turn.finishing_speech = true;
                self.tts.do_send(FinishTurn {
                    turn_id: turn_id.to_string(),
                });
            } else {
                self.complete_turn(turn_id);
            }
        }
    }

    fn speech_failed(&mut self, turn_id: &str, why: &str) {
        if let Some(turn) = self.turns.get_mut(turn_id) {
            if !turn.speech_failed {
                turn.speech_failed = true;
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
            if !turn.generating {
                self.complete_turn(turn_id);
            }
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
        let first = turn.tts_first_audio_ms.is_none();
        if first {
            turn.tts_first_audio_ms = Some(turn.input_end.elapsed().as_secs_f64() * 1000.0);
        }
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
        self.close(turn);
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
        self.sup.hub().publish(
            &turn.session_id,
            &LatencyTrace {
                turn_id: turn.id.clone(),
                stt_ms: turn.stt_ms,
                endpoint_ms: turn.endpoint_ms,
                stt_wait_ms: turn.stt_wait_ms,
                intent_ms: turn.intent_ms,
                llm_ttft_ms: turn.llm_ttft_ms,
                llm_ms: turn.llm_ms,
                tts_first_audio_ms: turn.tts_first_audio_ms,
                tts_ms: turn.tts_ms,
                total_ms,
                kernel_ms: Some(
                    (total_ms
                        - turn.llm_ms.unwrap_or(0.0)
                        - turn.tts_tail_ms
                        // What the speaker waited for before the turn began: the detector's
                        // silence and the transcription still running after it.
                        - turn.endpoint_ms.unwrap_or(0.0)
                        - turn.stt_wait_ms.unwrap_or(0.0))
                    .max(0.0),
                ),
            },
        );
        if let Some(s) = self.sessions.get_mut(&turn.session_id) {
            if s.active.as_deref() == Some(turn.id.as_str()) {
                s.active = None;
            }
        }
        self.set_mode(&turn.session_id, Mode::Idle);
    }

    // ---- barge-in -------------------------------------------------------------------------

    fn interrupt_session(&mut self, session_id: &str) -> Option<(String, String, String)> {
        let active = self.sessions.get_mut(session_id)?.active.take()?;
        let turn = self.turns.remove(&active)?;
        self.llm.do_send(CancelGeneration {
            turn_id: active.clone(),
        });
        self.tts.do_send(CancelTurn {
            turn_id: active.clone(),
        });
        let spoken = turn.spoken.join(" ");
        let cut = cut_part(&turn.answer, &turn.spoken);
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

/// What to say for a tool's answer: its `spoken` or `text` field, else compact JSON.
fn spoken_tool_answer(value: &serde_json::Value) -> String {
    ["spoken", "text", "message", "summary"]
        .iter()
        .find_map(|k| value.get(k).and_then(|v| v.as_str()))
        .map(str::to_string)
        .unwrap_or_else(|| value.to_string())
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

    fn started(&mut self, _: &mut Context<Self>) {
        self.sup.started();
    }
}

impl actix::Supervised for Orchestrator {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // Turns in flight died with the old context: close them so no session is stuck
        // in `thinking`, and say so.
        let turns: Vec<Turn> = self.turns.drain().map(|(_, t)| t).collect();
        for turn in turns {
            self.llm.do_send(CancelGeneration {
                turn_id: turn.id.clone(),
            });
            self.tts.do_send(CancelTurn {
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

impl Handler<TextTurn> for Orchestrator {
    type Result = Result<TurnStarted, KernelError>;

    fn handle(&mut self, msg: TextTurn, ctx: &mut Context<Self>) -> Self::Result {
        self.begin(msg, None, ctx)
    }
}

impl Orchestrator {
    fn begin(
        &mut self,
        msg: TextTurn,
        voice: Option<VoiceInput>,
        ctx: &mut Context<Self>,
    ) -> Result<TurnStarted, KernelError> {
        if self.sup.is_degraded() {
            return Err(KernelError::Unavailable(self.sup.unavailable()));
        }
        if msg.text.trim().is_empty() {
            return Err(KernelError::Invalid("empty text".into()));
        }
        match crate::supervise::catch(std::panic::AssertUnwindSafe(|| {
            self.start_turn(msg, voice, ctx)
        })) {
            Ok(started) => Ok(started),
            Err(panic) => {
                self.sup.crashed(&panic);
                ctx.stop();
                Err(KernelError::Unavailable(format!(
                    "the orchestrator crashed: {panic}"
                )))
            }
        }
    }
}

impl Handler<VoiceTurn> for Orchestrator {
    type Result = Result<TurnStarted, KernelError>;

    fn handle(&mut self, msg: VoiceTurn, ctx: &mut Context<Self>) -> Self::Result {
        let voice = VoiceInput {
            turn_id: msg.turn_id,
            stt_ms: msg.stt_ms,
            speech_ended: msg.speech_ended,
            utterance_ended: msg.utterance_ended,
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

    fn handle(&mut self, msg: Listening, _: &mut Context<Self>) {
        if msg.on {
            self.ensure_session(&msg.session_id);
            self.set_mode(&msg.session_id, Mode::Listening);
        } else if self
            .sessions
            .get(&msg.session_id)
            .is_some_and(|s| s.mode == Mode::Listening)
        {
            self.set_mode(&msg.session_id, Mode::Idle);
        }
    }
}

impl Handler<Interrupt> for Orchestrator {
    type Result = InterruptReport;

    fn handle(&mut self, msg: Interrupt, _: &mut Context<Self>) -> InterruptReport {
        let sessions: Vec<String> = match msg.session_id {
            Some(s) => vec![s],
            None => self.sessions.keys().cloned().collect(),
        };
        let mut report = InterruptReport::default();
        for s in sessions {
            if let Some((turn, spoken, cut)) = self.interrupt_session(&s) {
                report.turns.push(turn);
                report.spoken.push(spoken);
                report.cut.push(cut);
            }
        }
        report
    }
}

impl Handler<LlmUpdate> for Orchestrator {
    type Result = ();

    fn handle(&mut self, msg: LlmUpdate, ctx: &mut Context<Self>) {
        match msg {
            LlmUpdate::Token { turn_id, text } => self.on_token(&turn_id, &text, ctx),
            LlmUpdate::Done {
                turn_id, total_ms, ..
            } => {
                if let Some(turn) = self.turns.get_mut(&turn_id) {
                    turn.generating = false;
                    turn.llm_ms = Some(total_ms);
                    turn.llm_done_at = Some(Instant::now());
                }
                self.answer_done(&turn_id, ctx);
            }
            LlmUpdate::Failed { turn_id, error } => self.llm_failed(&turn_id, error, ctx),
        }
    }
}

impl Handler<TtsUpdate> for Orchestrator {
    type Result = ();

    fn handle(&mut self, msg: TtsUpdate, _: &mut Context<Self>) {
        match msg {
            TtsUpdate::Spoken {
                turn_id,
                text,
                synth_ms,
                ..
            } => self.on_spoken(&turn_id, text, synth_ms),
            TtsUpdate::Done {
                turn_id,
                duration_ms,
                ..
            } => {
                if let Some(turn) = self.turns.get_mut(&turn_id) {
                    turn.tts_ms = Some(duration_ms);
                    if !turn.generating {
                        self.complete_turn(&turn_id);
                    }
                }
            }
            TtsUpdate::Failed { turn_id, error } => {
                if let Some(turn) = self.turns.get_mut(&turn_id) {
                    turn.speech_failed = true;
                    tracing::warn!(turn = %turn_id, %error, "speech failed; the text answer stands");
                    if !turn.generating {
                        self.complete_turn(&turn_id);
                    }
                }
            }
        }
    }
}

crate::impl_fault_injection!(Orchestrator);

#[cfg(test)]
mod tests {
    #[test]
    fn cut_part_is_the_unspoken_rest() {
        let spoken = vec!["One.".to_string(), "Two.".to_string()];
        assert_eq!(
            super::cut_part("One. Two. Three. Four.", &spoken),
            "Three. Four."
        );
        assert_eq!(super::cut_part("One.", &[]), "One.");
    }
}
