//! The assistant's answer to a turn, by turn id, for servers that answer a request with
//! it (Wyoming's `handled`): an observer of the hub's `conversation_message` events.

use std::collections::{HashMap, VecDeque};

use actix::prelude::*;
use coda_protocol::{ConversationMessage, EventType, Role};
use tokio::sync::oneshot;

use crate::hub::{EnvelopeRef, HubDelivery, HubHandle, Observe, TypeMask};

/// Answers kept for a request that asks after they came.
const KEPT: usize = 256;

/// Collects answers and hands them to whoever waits.
#[derive(Default)]
pub struct TurnAnswers {
    recent: VecDeque<(String, String)>,
    waiting: HashMap<String, Vec<oneshot::Sender<String>>>,
}

impl TurnAnswers {
    /// Starts observing `hub`.
    pub fn start(hub: &HubHandle) -> Addr<TurnAnswers> {
        TurnAnswers::create(|ctx| {
            hub.addr().do_send(Observe {
                name: "turn_answers",
                mask: TypeMask::from_type(EventType::ConversationMessage),
                recipient: ctx.address().recipient(),
            });
            TurnAnswers::default()
        })
    }
}

impl Actor for TurnAnswers {
    type Context = Context<Self>;
}

impl Handler<HubDelivery> for TurnAnswers {
    type Result = ();

    fn handle(&mut self, msg: HubDelivery, _: &mut Context<Self>) {
        for ev in msg.live() {
            let Some(env) = EnvelopeRef::read(ev.json.as_bytes()) else {
                continue;
            };
            let Ok(m) = serde_json::from_str::<ConversationMessage>(env.data.get()) else {
                continue;
            };
            let (Role::Assistant, Some(turn)) = (m.role, m.turn_id) else {
                continue;
            };
            for w in self.waiting.remove(&turn).unwrap_or_default() {
                let _ = w.send(m.content.clone());
            }
            self.recent.push_back((turn, m.content));
            while self.recent.len() > KEPT {
                self.recent.pop_front();
            }
        }
    }
}

/// Wait for the answer of a turn (at once when it already came).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AwaitAnswer {
    pub turn_id: String,
    pub reply: oneshot::Sender<String>,
}

impl Handler<AwaitAnswer> for TurnAnswers {
    type Result = ();

    fn handle(&mut self, msg: AwaitAnswer, _: &mut Context<Self>) {
        if let Some((_, text)) = self.recent.iter().find(|(t, _)| *t == msg.turn_id) {
            let _ = msg.reply.send(text.clone());
            return;
        }
        // Waiters whose requester went away go.
        self.waiting.retain(|_, ws| {
            ws.retain(|w| !w.is_closed());
            !ws.is_empty()
        });
        self.waiting.entry(msg.turn_id).or_default().push(msg.reply);
    }
}
