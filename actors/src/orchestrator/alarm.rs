//! Timers that go off ring in the session that set them: the `alarm` event, then the
//! timer's text spoken there (its speech events and `tts_audio` go to that session; the
//! server's speaker plays it when playback is on) up to [`RINGS`] times, [`RING_GAP`]
//! apart. An interrupt, speech heard in the session or any new input there silences it.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use coda_protocol::{Alarm, SYSTEM_SESSION};

use super::Orchestrator;
use crate::tools::builtin::timer::{TimerFired, TimerInfo};
use crate::tts::{CancelTurn, FinishTurn, SentenceProgress, Speak};

/// How many times an alarm says its text before it stops by itself.
pub const RINGS: u32 = 3;
/// The pause between two rings.
pub const RING_GAP: Duration = Duration::from_secs(2);

/// A ringing alarm of a session.
pub(super) struct Ringing {
    timer: TimerInfo,
    text: String,
    /// Rings started so far.
    rung: u32,
    /// The speech turn of the ring now speaking (`<timer>-ring-<n>`).
    speech: Option<String>,
}

/// The next ring of `session_id`'s alarm, after the pause.
#[derive(Message)]
#[rtype(result = "()")]
struct RingAgain {
    session_id: String,
    timer_id: String,
    rung: u32,
}

impl Orchestrator {
    fn ring(&mut self, session_id: &str, ctx: &mut Context<Self>) {
        let Some(a) = self.alarms.get_mut(session_id) else {
            return;
        };
        a.rung += 1;
        let turn_id = format!("{}-ring-{}", a.timer.timer_id, a.rung);
        a.speech = Some(turn_id.clone());
        self.engines.speak.do_send(Speak {
            turn_id: turn_id.clone(),
            session_id: session_id.to_string(),
            index: 0,
            text: a.text.clone(),
            reply_to: ctx.address().recipient(),
            progress: Arc::new(SentenceProgress::default()),
        });
        self.engines.finish_speech.do_send(FinishTurn { turn_id });
    }

    /// The speech turn `turn_id` ended: when it was a ring, the next one after the pause,
    /// or the alarm has rung out. Returns whether it was a ring.
    pub(super) fn ring_done(&mut self, turn_id: &str, ctx: &mut Context<Self>) -> bool {
        let Some((session_id, a)) = self
            .alarms
            .iter()
            .find(|(_, a)| a.speech.as_deref() == Some(turn_id))
        else {
            return false;
        };
        let (session_id, timer_id, rung) = (session_id.clone(), a.timer.timer_id.clone(), a.rung);
        if rung >= RINGS {
            self.silence(&session_id, "rang_out");
        } else {
            ctx.notify_later(
                RingAgain {
                    session_id,
                    timer_id,
                    rung,
                },
                RING_GAP,
            );
        }
        true
    }

    /// Stops `session_id`'s alarm, if one rings; `reason` goes in the `alarm` event.
    pub(super) fn silence(&mut self, session_id: &str, reason: &str) {
        let Some(a) = self.alarms.remove(session_id) else {
            return;
        };
        if let Some(turn_id) = a.speech {
            self.engines.cancel_speech.do_send(CancelTurn { turn_id });
        }
        tracing::info!(session = session_id, timer = %a.timer.timer_id, reason, "alarm stopped");
        self.sup.hub().publish(
            session_id,
            &Alarm {
                timer_id: a.timer.timer_id,
                label: a.timer.label,
                text: a.text,
                ringing: false,
                reason: Some(reason.to_string()),
            },
        );
    }
}

impl Handler<TimerFired> for Orchestrator {
    type Result = ();

    fn handle(&mut self, msg: TimerFired, ctx: &mut Context<Self>) {
        self.guarded(
            ctx,
            |_| (),
            |act, ctx| {
                let session_id = msg
                    .timer
                    .session_id
                    .clone()
                    .unwrap_or_else(|| SYSTEM_SESSION.to_string());
                // One alarm rings at a time in a session: the newer one.
                act.silence(&session_id, "stopped");
                tracing::info!(session = %session_id, timer = %msg.timer.timer_id, "alarm rings");
                act.sup.hub().publish(
                    &session_id,
                    &Alarm {
                        timer_id: msg.timer.timer_id.clone(),
                        label: msg.timer.label.clone(),
                        text: msg.text.clone(),
                        ringing: true,
                        reason: None,
                    },
                );
                act.alarms.insert(
                    session_id.clone(),
                    Ringing {
                        timer: msg.timer,
                        text: msg.text,
                        rung: 0,
                        speech: None,
                    },
                );
                act.ring(&session_id, ctx);
            },
        );
    }
}

impl Handler<RingAgain> for Orchestrator {
    type Result = ();

    fn handle(&mut self, msg: RingAgain, ctx: &mut Context<Self>) {
        // Only the alarm that scheduled it, and only if it was not silenced meanwhile.
        let current = self
            .alarms
            .get(&msg.session_id)
            .is_some_and(|a| a.timer.timer_id == msg.timer_id && a.rung == msg.rung);
        if current {
            self.guarded(ctx, |_| (), |act, ctx| act.ring(&msg.session_id, ctx));
        }
    }
}
