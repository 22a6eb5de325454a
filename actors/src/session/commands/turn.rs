//! Turns: `text_input`, `demo_flow`, `interrupt`.

use actix::prelude::*;

use super::super::{to_value, WsSession};
use crate::orchestrator::TurnSource;

impl WsSession {
    /// `text_input`: a turn in the given session, or the connection's.
    pub(in crate::session) fn text_input(
        &mut self,
        id: Option<String>,
        t: coda_protocol::TextInput,
        ctx: &mut Context<Self>,
    ) {
        let session_id = t.session_id.unwrap_or_else(|| self.client_id.clone());
        self.start_turn(id, session_id, t.text, TurnSource::Text, ctx);
    }

    /// `demo_flow`: a scripted turn in a session of its own.
    pub(in crate::session) fn demo_flow(
        &mut self,
        id: Option<String>,
        d: coda_protocol::DemoFlow,
        ctx: &mut Context<Self>,
    ) {
        let text = d
            .text
            .unwrap_or_else(|| "Tell me one interesting fact about the planet Mars.".to_string());
        let session_id = format!("demo-{}", self.client_id);
        self.start_turn(id, session_id, text, TurnSource::Demo, ctx);
    }

    /// Hands a turn to the assistant and answers with its `turn_id` (in order).
    fn start_turn(
        &mut self,
        id: Option<String>,
        session_id: String,
        text: String,
        source: TurnSource,
        ctx: &mut Context<Self>,
    ) {
        let fut = self.shared.kernel.start_turn(session_id, text, source);
        ctx.wait(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok(started) => act.reply_ok(
                id,
                serde_json::json!({"turn_id": started.turn_id, "conversation_id": started.conversation_id}),
                ctx,
            ),
            Err(e) => act.reply_kernel_err(id, e, ctx),
        }));
    }

    /// `interrupt`: the assistant has one voice, so every turn in flight stops.
    pub(in crate::session) fn interrupt(&mut self, id: Option<String>, ctx: &mut Context<Self>) {
        let fut = self.shared.kernel.interrupt();
        ctx.wait(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok(report) => act.reply_ok(id, to_value(&report), ctx),
            Err(e) => act.reply_kernel_err(id, e, ctx),
        }));
    }
}
