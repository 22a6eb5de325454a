//! `timer`: set, list and cancel countdown timers. The timers live in [`TimerService`], a
//! small actor (`run_later`); when one goes off it publishes a `conversation_message` from
//! the assistant ("Your 5 minute timer for tea is done.") to the session that set it, and
//! tells the optional [`TimerFired`] recipient (the Orchestrator, to speak it).
//!
//! Timers are not persisted: a restart forgets them (said in the tool's description).

use std::collections::BTreeMap;

use actix::prelude::*;
use coda_protocol::{ConversationMessage, Role, SYSTEM_SESSION};
use serde::Serialize;
use serde_json::{json, Value};

use crate::hub::{unix_now, HubHandle};
use crate::tools::registry::{Tool, ToolContext, ToolFailure};

/// Most timers at once.
pub const MAX_TIMERS: usize = 32;
/// Longest timer, seconds (a day).
pub const MAX_SECONDS: f64 = 86_400.0;

/// A timer went off (sent to the recipient given to [`TimerService::new`]).
#[derive(Message, Debug, Clone, PartialEq)]
#[rtype(result = "()")]
pub struct TimerFired {
    pub timer: TimerInfo,
    /// What the assistant says about it.
    pub text: String,
}

/// A timer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimerInfo {
    /// Id (`timer-N`).
    pub timer_id: String,
    /// Its label, if given.
    pub label: Option<String>,
    /// Length, seconds.
    pub seconds: f64,
    /// When it goes off, unix seconds.
    pub due_at: f64,
    /// Seconds left (at the time of the answer).
    pub remaining_s: f64,
    /// The session that set it.
    pub session_id: Option<String>,
}

struct Running {
    info: TimerInfo,
    handle: SpawnHandle,
}

/// Set a timer.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<TimerInfo, String>")]
pub struct SetTimer {
    /// Length, seconds (0 < s ≤ 86400).
    pub seconds: f64,
    /// A label ("tea").
    pub label: Option<String>,
    /// The session to tell when it goes off.
    pub session_id: Option<String>,
}

/// From now on, timers that go off are told to this recipient (the Orchestrator, wired
/// when the kernel starts, after the tools).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ConnectFired(pub Recipient<TimerFired>);

/// The running timers, soonest first.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Vec<TimerInfo>")]
pub struct ListTimers;

/// Cancel a timer by id or label; with neither, the only running timer (or the soonest).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<TimerInfo, String>")]
pub struct CancelTimer {
    /// `timer-N` or a label.
    pub which: Option<String>,
}

/// The timers.
pub struct TimerService {
    timers: BTreeMap<u64, Running>,
    next: u64,
    hub: Option<HubHandle>,
    fired: Option<Recipient<TimerFired>>,
}

impl TimerService {
    /// A service publishing through `hub` and telling `fired` when a timer goes off.
    pub fn new(hub: Option<HubHandle>, fired: Option<Recipient<TimerFired>>) -> TimerService {
        TimerService {
            timers: BTreeMap::new(),
            next: 1,
            hub,
            fired,
        }
    }

    fn snapshot(&self) -> Vec<TimerInfo> {
        let now = unix_now();
        let mut out: Vec<TimerInfo> = self
            .timers
            .values()
            .map(|r| TimerInfo {
                remaining_s: ((r.info.due_at - now).max(0.0) * 10.0).round() / 10.0,
                ..r.info.clone()
            })
            .collect();
        out.sort_by(|a, b| a.due_at.total_cmp(&b.due_at));
        out
    }
}

impl Actor for TimerService {
    type Context = Context<Self>;
}

impl Handler<ConnectFired> for TimerService {
    type Result = ();

    fn handle(&mut self, msg: ConnectFired, _: &mut Context<Self>) {
        self.fired = Some(msg.0);
    }
}

/// "5 minutes", "1 hour 30 minutes", "45 seconds".
pub fn spoken_duration(seconds: f64) -> String {
    let total = seconds.round() as u64;
    let (h, m, s) = (total / 3600, total % 3600 / 60, total % 60);
    let mut parts = Vec::new();
    for (n, unit) in [(h, "hour"), (m, "minute"), (s, "second")] {
        if n > 0 {
            parts.push(format!("{n} {unit}{}", if n == 1 { "" } else { "s" }));
        }
    }
    if parts.is_empty() {
        "0 seconds".into()
    } else {
        parts.join(" ")
    }
}

impl Handler<SetTimer> for TimerService {
    type Result = Result<TimerInfo, String>;

    fn handle(&mut self, msg: SetTimer, ctx: &mut Context<Self>) -> Self::Result {
        if !(msg.seconds.is_finite() && msg.seconds > 0.0 && msg.seconds <= MAX_SECONDS) {
            return Err(format!(
                "a timer must last between 1 second and {} hours",
                MAX_SECONDS / 3600.0
            ));
        }
        if self.timers.len() >= MAX_TIMERS {
            return Err(format!(
                "{MAX_TIMERS} timers are already running; cancel one first"
            ));
        }
        let n = self.next;
        self.next += 1;
        let info = TimerInfo {
            timer_id: format!("timer-{n}"),
            label: msg.label.filter(|l| !l.trim().is_empty()),
            seconds: msg.seconds,
            due_at: unix_now() + msg.seconds,
            remaining_s: msg.seconds,
            session_id: msg.session_id,
        };
        let handle = ctx.run_later(
            std::time::Duration::from_secs_f64(msg.seconds),
            move |act, _| {
                let Some(running) = act.timers.remove(&n) else {
                    return;
                };
                let timer = TimerInfo {
                    remaining_s: 0.0,
                    ..running.info
                };
                let text = match &timer.label {
                    Some(l) => format!(
                        "Your {} timer for {l} is done.",
                        spoken_duration(timer.seconds)
                    ),
                    None => format!("Your {} timer is done.", spoken_duration(timer.seconds)),
                };
                if let Some(hub) = &act.hub {
                    hub.publish(
                        timer.session_id.as_deref().unwrap_or(SYSTEM_SESSION),
                        &ConversationMessage {
                            turn_id: None,
                            message_id: timer.timer_id.clone(),
                            role: Role::Assistant,
                            content: text.clone(),
                            interrupted: None,
                            cut: None,
                        },
                    );
                }
                if let Some(r) = &act.fired {
                    r.do_send(TimerFired { timer, text });
                }
            },
        );
        self.timers.insert(
            n,
            Running {
                info: info.clone(),
                handle,
            },
        );
        Ok(info)
    }
}

impl Handler<ListTimers> for TimerService {
    type Result = MessageResult<ListTimers>;

    fn handle(&mut self, _: ListTimers, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.snapshot())
    }
}

impl Handler<CancelTimer> for TimerService {
    type Result = Result<TimerInfo, String>;

    fn handle(&mut self, msg: CancelTimer, ctx: &mut Context<Self>) -> Self::Result {
        let key = match msg
            .which
            .as_deref()
            .map(str::trim)
            .filter(|w| !w.is_empty())
        {
            Some(w) => self
                .timers
                .iter()
                .find(|(_, r)| {
                    r.info.timer_id == w
                        || r.info
                            .label
                            .as_deref()
                            .is_some_and(|l| l.eq_ignore_ascii_case(w))
                })
                .map(|(k, _)| *k)
                .ok_or_else(|| format!("no running timer is called \"{w}\""))?,
            None => self
                .timers
                .iter()
                .min_by(|a, b| a.1.info.due_at.total_cmp(&b.1.info.due_at))
                .map(|(k, _)| *k)
                .ok_or_else(|| "no timer is running".to_string())?,
        };
        let running = self
            .timers
            .remove(&key)
            .ok_or_else(|| "no timer is running".to_string())?;
        ctx.cancel_future(running.handle);
        let now = unix_now();
        Ok(TimerInfo {
            remaining_s: (running.info.due_at - now).max(0.0),
            ..running.info
        })
    }
}

/// The `timer` tool, over a [`TimerService`].
#[derive(Debug, Clone)]
pub struct TimerTool {
    service: Addr<TimerService>,
}

impl TimerTool {
    /// A tool using `service`.
    pub fn new(service: Addr<TimerService>) -> TimerTool {
        TimerTool { service }
    }
}

fn mailbox(e: MailboxError) -> ToolFailure {
    ToolFailure::Unavailable(format!("the timer service did not answer: {e}"))
}

#[async_trait::async_trait]
impl Tool for TimerTool {
    fn name(&self) -> &str {
        "timer"
    }

    fn description(&self) -> &str {
        "Countdown timers: action \"set\" (seconds, optional label), \"list\", or \"cancel\" (timer_id or label; default the soonest). The assistant announces a timer when it goes off. Timers do not survive a restart."
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "action": {"type": "string", "enum": ["set", "list", "cancel"]},
                "seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_SECONDS},
                "label": {"type": "string", "maxLength": 64},
                "timer_id": {"type": "string", "maxLength": 64}
            },
            "required": ["action"],
            "additionalProperties": false,
            "if": {"properties": {"action": {"const": "set"}}},
            "then": {"required": ["seconds"]}
        })
    }

    async fn call(&self, args: Value, ctx: ToolContext) -> Result<Value, ToolFailure> {
        match args["action"].as_str().unwrap_or_default() {
            "set" => {
                let info = self
                    .service
                    .send(SetTimer {
                        seconds: args["seconds"].as_f64().unwrap_or(0.0),
                        label: args["label"].as_str().map(str::to_string),
                        session_id: ctx.session_id.clone(),
                    })
                    .await
                    .map_err(mailbox)?
                    .map_err(ToolFailure::Failed)?;
                let text = format!("Timer set for {}.", spoken_duration(info.seconds));
                Ok(json!({"timer": info, "text": text}))
            }
            "list" => {
                let timers = self.service.send(ListTimers).await.map_err(mailbox)?;
                Ok(json!({"count": timers.len(), "timers": timers}))
            }
            "cancel" => {
                let which = args["timer_id"]
                    .as_str()
                    .or_else(|| args["label"].as_str())
                    .map(str::to_string);
                let info = self
                    .service
                    .send(CancelTimer { which })
                    .await
                    .map_err(mailbox)?
                    .map_err(ToolFailure::Failed)?;
                Ok(json!({"cancelled": info}))
            }
            other => Err(ToolFailure::InvalidArguments(format!(
                "unknown action `{other}`"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(spoken_duration(300.0), "5 minutes");
        assert_eq!(spoken_duration(5400.0), "1 hour 30 minutes");
        assert_eq!(spoken_duration(61.0), "1 minute 1 second");
    }
}
