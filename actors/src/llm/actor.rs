//! LlmActor: holds the configured provider and runs generations for turns, streaming.
//! Publishes `llm_start`, one `llm_token` per piece of text, then `llm_result` or
//! `llm_error`; forwards every token to the turn's owner ([`LlmUpdate`]) so speech can
//! start on the first sentence. Dropping a generation (barge-in) drops the provider's
//! stream, which cancels it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use coda_protocol::{LlmResult, LlmStart, LlmToken};
use futures_util::{FutureExt, StreamExt};

use super::usage::{self, Prices, SessionBook};
use super::{ChatRequest, LlmError, LlmProvider, StreamChunk, Usage};
use crate::supervise::{panic_message, Supervision};

/// What the LlmActor tells a turn's owner.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub enum LlmUpdate {
    /// A piece of the answer.
    Token { turn_id: String, text: String },
    /// The answer is complete.
    Done {
        turn_id: String,
        /// The whole text.
        text: String,
        /// From request to first token, ms.
        ttft_ms: Option<f64>,
        /// From request to the end, ms.
        total_ms: f64,
        /// The tools the model asked to call (function calling), in order.
        tool_calls: Vec<super::ToolCallRequest>,
    },
    /// Generation failed.
    Failed {
        turn_id: String,
        /// Why.
        error: LlmError,
    },
}

/// Generate an answer for a turn.
#[derive(Message)]
#[rtype(result = "Result<(), LlmError>")]
pub struct Generate {
    pub turn_id: String,
    /// The conversation session (envelope `session_id`).
    pub session_id: String,
    /// The request (messages and sampling).
    pub request: ChatRequest,
    /// Where updates go.
    pub reply_to: Recipient<LlmUpdate>,
    /// The turn's trace span: the generation's span is its child (`Span::none()`: none).
    pub span: tracing::Span,
}

/// Stop a turn's generation now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CancelGeneration {
    pub turn_id: String,
}

/// The provider, or why there is none.
pub type ProviderSlot = Result<Arc<dyn LlmProvider>, LlmError>;

pub struct LlmActor {
    sup: Supervision,
    provider: ProviderSlot,
    active: HashMap<String, SpawnHandle>,
    prices: Arc<Prices>,
    /// Usage per session (kept across restarts: the actor is reused).
    sessions: SessionBook,
}

impl LlmActor {
    /// An actor using `provider` (an `Err` makes every request fail with that error).
    pub fn new(sup: Supervision, provider: ProviderSlot) -> Self {
        LlmActor {
            sup,
            provider,
            active: HashMap::new(),
            prices: Arc::new(Prices::default()),
            sessions: SessionBook::default(),
        }
    }

    /// Prices the usage of generations with these prices (default: none configured).
    pub fn with_prices(mut self, prices: Prices) -> Self {
        self.prices = Arc::new(prices);
        self
    }
}

/// A finish reason as the GenAI conventions (and OpenAI) spell it.
fn finish_name(f: &super::FinishReason) -> &str {
    use super::FinishReason as F;
    match f {
        F::Stop => "stop",
        F::Length => "length",
        F::ToolCalls => "tool_calls",
        F::Cancelled => "cancelled",
        F::Other(s) => s,
    }
}

/// A generation's outcome, as the work future hands it back to the actor.
struct Generated {
    text: String,
    ttft_ms: Option<f64>,
    total_ms: f64,
    result: LlmResult,
    /// The tool calls the model asked for.
    tool_calls: Vec<super::ToolCallRequest>,
}

impl Actor for LlmActor {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        self.sup.started();
    }
}

impl actix::Supervised for LlmActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.active.clear();
        self.sup.restarting();
    }
}

impl Handler<Generate> for LlmActor {
    type Result = Result<(), LlmError>;

    fn handle(&mut self, msg: Generate, ctx: &mut Context<Self>) -> Self::Result {
        let provider = if self.sup.is_degraded() {
            Err(LlmError::Unavailable(self.sup.unavailable()))
        } else {
            self.provider.clone()
        };
        let provider = match provider {
            Ok(p) => p,
            Err(error) => {
                // Every failure is an event, not only a reply.
                self.sup
                    .hub()
                    .publish(&msg.session_id, &error.event(&msg.turn_id));
                return Err(error);
            }
        };
        let hub = self.sup.hub().clone();
        let turn_id = msg.turn_id.clone();
        let session = msg.session_id.clone();
        let reply_to = msg.reply_to.clone();
        let model = msg
            .request
            .model
            .clone()
            .unwrap_or_else(|| provider.default_model());
        let prompt = msg
            .request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == super::ChatRole::User)
            .map(|m| m.content.clone())
            .unwrap_or_default();
        // The GenAI semantic conventions' client span; its end-of-answer attributes are
        // recorded when the stream ends, its timing is the same `started` as `total_ms`.
        let span = tracing::debug_span!(
            parent: &msg.span,
            "gen_ai.chat",
            otel.name = format!("chat {model}"),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            gen_ai.operation.name = "chat",
            gen_ai.system = provider.name(),
            gen_ai.provider.name = provider.name(),
            gen_ai.request.model = model.as_str(),
            gen_ai.request.max_tokens = msg.request.max_tokens.map(i64::from),
            gen_ai.response.model = tracing::field::Empty,
            gen_ai.usage.input_tokens = tracing::field::Empty,
            gen_ai.usage.output_tokens = tracing::field::Empty,
            gen_ai.response.finish_reasons = tracing::field::Empty,
            coda.turn_id = turn_id.as_str(),
            coda.session_id = session.as_str(),
            coda.usage.estimated = tracing::field::Empty,
            coda.provider = tracing::field::Empty,
            coda.llm.ttft_ms = tracing::field::Empty,
        );
        hub.publish(
            &session,
            &LlmStart {
                turn_id: Some(turn_id.clone()),
                provider: provider.name().to_string(),
                model,
                prompt,
            },
        );
        let request = msg.request;
        let prompt_estimate = usage::estimate_prompt(&request.messages);
        let prices = self.prices.clone();
        let llm_span = span.clone();
        let t_id = turn_id.clone();
        let work = async move {
            let started = Instant::now();
            let served = provider.chat_stream_served(request).await?;
            let (by, model) = (served.provider, served.model);
            let mut stream = served.stream;
            let mut text = String::new();
            let mut index = 0u32;
            let mut ttft = None;
            let mut reported: Option<Usage> = None;
            let mut finish = None;
            let mut calls = Vec::new();
            while let Some(chunk) = stream.next().await {
                match chunk? {
                    StreamChunk::Token(piece) => {
                        if ttft.is_none() {
                            ttft = Some(started.elapsed().as_secs_f64() * 1000.0);
                        }
                        hub.publish(
                            &session,
                            &LlmToken {
                                turn_id: t_id.clone(),
                                index,
                                text: piece.clone(),
                            },
                        );
                        index += 1;
                        text.push_str(&piece);
                        reply_to.do_send(LlmUpdate::Token {
                            turn_id: t_id.clone(),
                            text: piece,
                        });
                    }
                    StreamChunk::ToolCall(c) => calls.push(c),
                    StreamChunk::Done {
                        finish_reason,
                        usage,
                    } => {
                        reported = usage;
                        finish = Some(finish_reason);
                        break;
                    }
                }
            }
            let total_ms = started.elapsed().as_secs_f64() * 1000.0;
            let secs = (total_ms / 1000.0).max(1e-9);
            // A provider that reports no counts (or zeros for a non-empty exchange) is
            // estimated, and said to be.
            let counts = reported.filter(|u| u.prompt_tokens > 0 || u.completion_tokens > 0);
            let estimated = counts.is_none();
            let counts = counts.unwrap_or(Usage {
                prompt_tokens: prompt_estimate,
                completion_tokens: usage::estimate_completion(&text, index),
            });
            let token_usage = prices.usage(&by, &model, counts, estimated);
            llm_span.record("gen_ai.response.model", model.as_str());
            llm_span.record("coda.provider", by.as_str());
            // i64: u64 values become strings in OTLP.
            let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            llm_span.record("gen_ai.usage.input_tokens", int(token_usage.input_tokens));
            llm_span.record("gen_ai.usage.output_tokens", int(token_usage.output_tokens));
            llm_span.record("coda.usage.estimated", estimated);
            if let Some(f) = &finish {
                llm_span.record("gen_ai.response.finish_reasons", finish_name(f));
            }
            if let Some(t) = ttft {
                llm_span.record("coda.llm.ttft_ms", t);
            }
            let result = LlmResult {
                turn_id: Some(t_id.clone()),
                text: text.clone(),
                duration_ms: total_ms,
                tokens: index,
                tokens_per_second: f64::from(index) / secs,
                provider: Some(by),
                model: Some(model),
                usage: Some(token_usage),
                session_usage: None,
            };
            Ok::<_, LlmError>(Generated {
                text,
                ttft_ms: ttft,
                total_ms,
                result,
                tool_calls: calls,
            })
        };
        let reply = msg.reply_to;
        let session = msg.session_id;
        let id = turn_id.clone();
        // A panic while polling the provider's stream must not kill the actor silently.
        let handle = ctx.spawn(
            std::panic::AssertUnwindSafe(work)
                .catch_unwind()
                .into_actor(self)
                .map(move |outcome, act, ctx| {
                    act.active.remove(&id);
                    match outcome {
                        Ok(Ok(mut g)) => {
                            // Published here, not in the work, so the session's running
                            // total (actor state) goes with it.
                            if let Some(u) = &g.result.usage {
                                g.result.session_usage = Some(act.sessions.add(&session, u));
                                act.sup.hub().counters().llm_usage(
                                    g.result.provider.as_deref().unwrap_or(""),
                                    g.result.model.as_deref().unwrap_or(""),
                                    u,
                                );
                            }
                            act.sup.hub().publish(&session, &g.result);
                            drop(span);
                            reply.do_send(LlmUpdate::Done {
                                turn_id: id,
                                text: g.text,
                                ttft_ms: g.ttft_ms,
                                total_ms: g.total_ms,
                                tool_calls: g.tool_calls,
                            })
                        }
                        Ok(Err(error)) => {
                            span.record("otel.status_code", "error");
                            act.sup.hub().publish(&session, &error.event(&id));
                            reply.do_send(LlmUpdate::Failed { turn_id: id, error });
                        }
                        Err(panic) => {
                            span.record("otel.status_code", "error");
                            let what = panic_message(panic.as_ref());
                            act.sup.crashed(&what);
                            reply.do_send(LlmUpdate::Failed {
                                turn_id: id,
                                error: LlmError::Unavailable(format!(
                                    "the llm component crashed: {what}"
                                )),
                            });
                            ctx.stop();
                        }
                    }
                }),
        );
        self.active.insert(turn_id, handle);
        Ok(())
    }
}

impl Handler<CancelGeneration> for LlmActor {
    type Result = ();

    fn handle(&mut self, msg: CancelGeneration, ctx: &mut Context<Self>) {
        if let Some(h) = self.active.remove(&msg.turn_id) {
            // Drops the stream: the provider stops (HTTP request closed / local loop told).
            ctx.cancel_future(h);
        }
    }
}

crate::impl_fault_injection!(LlmActor);
