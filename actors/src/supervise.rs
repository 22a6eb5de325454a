//! Supervision glue shared by every subsystem actor.
//!
//! actix does not restart an actor whose handler panics (tokio catches the panic and drops
//! the actor; see CRATES.md). So each subsystem actor is a [`actix::Supervised`] actor
//! started with [`actix::Supervisor`], and runs its handler bodies through [`catch`] and
//! its blocking work through [`blocking`]: a panic becomes an `Err`, the actor calls
//! `ctx.stop()`, the Supervisor restarts it, and [`Supervision::restarting`] counts the
//! restart against an OTP-style budget (at most `max_restarts` in `period`). Over budget,
//! the actor stays up but `degraded`: it answers every request with a clear `unavailable`
//! error while the rest of the system keeps serving.

use std::any::Any;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use coda_protocol::{ComponentState, Level, SystemError, SYSTEM_SESSION};

use crate::components::ComponentRegistry;
use crate::hub::HubHandle;

/// At most `max_restarts` restarts within `period`, then `degraded`.
#[derive(Debug, Clone, Copy)]
pub struct RestartBudget {
    /// Restarts tolerated inside the period.
    pub max_restarts: u32,
    /// The sliding window.
    pub period: Duration,
}

impl RestartBudget {
    /// Counts a restart at `now` in `recent` (the restarts inside the sliding window);
    /// `true` when that is more than the budget allows.
    pub fn spend(&self, recent: &mut std::collections::VecDeque<Instant>, now: Instant) -> bool {
        recent.push_back(now);
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.period)
        {
            recent.pop_front();
        }
        recent.len() as u32 > self.max_restarts
    }
}

impl Default for RestartBudget {
    fn default() -> Self {
        RestartBudget {
            max_restarts: 5,
            period: Duration::from_secs(60),
        }
    }
}

/// One actor's supervision record. Lives inside the actor, so it survives Supervisor
/// restarts (actix keeps the same actor value and calls `restarting()`).
#[derive(Clone)]
pub struct Supervision {
    name: &'static str,
    budget: RestartBudget,
    recent: VecDeque<Instant>,
    degraded: bool,
    last_crash: Option<String>,
    restart_began: Option<Instant>,
    hub: HubHandle,
    components: ComponentRegistry,
}

impl Supervision {
    /// A record for the component `name`.
    pub fn new(
        name: &'static str,
        budget: RestartBudget,
        hub: HubHandle,
        components: ComponentRegistry,
    ) -> Self {
        Supervision {
            name,
            budget,
            recent: VecDeque::new(),
            degraded: false,
            last_crash: None,
            restart_began: None,
            hub,
            components,
        }
    }

    /// A record for the component `name`, reported `starting` now: what every supervised
    /// actor is started with.
    pub fn starting(
        name: &'static str,
        budget: RestartBudget,
        hub: &HubHandle,
        components: &ComponentRegistry,
    ) -> Self {
        components.set(hub, name, coda_protocol::ComponentState::Starting, None);
        Supervision::new(name, budget, hub.clone(), components.clone())
    }

    /// The component name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The hub (for the actor's own events).
    pub fn hub(&self) -> &HubHandle {
        &self.hub
    }

    /// Call from `Actor::started`: the component is running (or still degraded).
    pub fn started(&mut self) {
        if self.degraded {
            return;
        }
        if let Some(t) = self.restart_began.take() {
            tracing::info!(
                component = self.name,
                restart_ms = t.elapsed().as_secs_f64() * 1000.0,
                "restarted"
            );
        }
        self.components
            .set(&self.hub, self.name, ComponentState::Running, None);
    }

    /// Records a crash (before `ctx.stop()`): logs it and emits `system_error`.
    pub fn crashed(&mut self, what: &str) {
        tracing::error!(
            component = self.name,
            panic = what,
            "component crashed; restarting"
        );
        self.hub.publish(
            SYSTEM_SESSION,
            &SystemError {
                level: Level::Error,
                component: self.name.to_string(),
                code: "crashed".into(),
                message: format!("{} crashed: {what}", self.name),
            },
        );
        self.last_crash = Some(what.to_string());
    }

    /// Call from `Supervised::restarting`: counts the restart; over budget → degraded.
    pub fn restarting(&mut self) {
        let now = Instant::now();
        self.restart_began = Some(now);
        let reason = self.last_crash.take();
        if self.budget.spend(&mut self.recent, now) {
            self.degraded = true;
            let why = format!(
                "more than {} restarts in {:.0} s{}",
                self.budget.max_restarts,
                self.budget.period.as_secs_f64(),
                reason.map(|r| format!("; last: {r}")).unwrap_or_default()
            );
            tracing::error!(component = self.name, %why, "component degraded");
            self.components
                .set(&self.hub, self.name, ComponentState::Degraded, Some(why));
        } else {
            self.components
                .set(&self.hub, self.name, ComponentState::Restarting, reason);
        }
    }

    /// Reports a state the component itself found (e.g. `degraded`: its model is
    /// missing) without counting a restart.
    pub fn report(&self, state: ComponentState, reason: Option<String>) {
        self.components.set(&self.hub, self.name, state, reason);
    }

    /// Is the component out of restarts?
    pub fn is_degraded(&self) -> bool {
        self.degraded
    }

    /// The error text requests get while degraded.
    pub fn unavailable(&self) -> String {
        format!(
            "{} is degraded (it kept crashing) and is not taking requests; restart coda serve",
            self.name
        )
    }
}

/// Runs `f`, turning a panic into `Err(message)`.
pub fn catch<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| panic_message(p.as_ref()))
}

/// Runs blocking work on the blocking pool; a panic there comes back as `Err(message)`.
pub async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => Ok(r),
        Err(e) if e.is_panic() => Err(panic_message(e.into_panic().as_ref())),
        Err(e) => Err(format!("blocking task failed: {e}")),
    }
}

/// Runs `f` on a thread of its own (named `name`), turning a panic into `Err(message)`.
/// For work that must not run on the shared blocking pool: sound-device calls (ALSA) left
/// state behind on a pool thread, and whisper.cpp, run on that thread later, failed to
/// encode (error -6) — seen with the input-device probe, gone on a dedicated thread.
pub async fn dedicated<R: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let _ = tx.send(catch(f));
        });
    match spawned {
        Ok(_) => rx
            .await
            .unwrap_or_else(|_| Err(format!("the {name} thread ended without an answer"))),
        Err(e) => Err(format!("cannot start the {name} thread: {e}")),
    }
}

/// The text of a panic payload.
pub fn panic_message(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_string()
    }
}

/// Logs panics through `tracing` (with their location) instead of raw stderr lines, so a
/// contained crash is one structured log record.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let msg = panic_message(info.payload());
        let thread = std::thread::current();
        tracing::error!(thread = thread.name().unwrap_or("?"), %location, "panic: {msg}");
    }));
}

/// A fault the tests inject into an actor (compiled only with the `fault-injection`
/// feature, which tests turn on; never in a default build).
#[cfg(feature = "fault-injection")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, actix::Message)]
#[rtype(result = "()")]
pub enum InjectFault {
    /// Panic inside the message handler.
    PanicInHandler,
    /// Panic inside the actor's blocking work.
    PanicInBlocking,
}

/// Implements the test-only [`InjectFault`] handler for a supervised actor whose
/// [`Supervision`] is in a field named `sup` (`impl_fault_injection!(Actor)`), or in an
/// `Option<Supervision>` field named `sup` for rooms that also run unsupervised, in the
/// CLI and benchmarks (`impl_fault_injection!(Actor, optional)`): a panic in the handler
/// or in blocking work, caught, reported, and followed by `ctx.stop()` so the Supervisor
/// restarts the actor.
#[macro_export]
macro_rules! impl_fault_injection {
    ($actor:ty) => {
        $crate::impl_fault_injection!(@impl $actor, |a: &mut $actor| Some(&mut a.sup));
    };
    ($actor:ty, optional) => {
        $crate::impl_fault_injection!(@impl $actor, |a: &mut $actor| a.sup.as_mut());
    };
    (@impl $actor:ty, $sup:expr) => {
        #[cfg(feature = "fault-injection")]
        impl actix::Handler<$crate::supervise::InjectFault> for $actor {
            type Result = ();

            fn handle(
                &mut self,
                msg: $crate::supervise::InjectFault,
                ctx: &mut actix::Context<Self>,
            ) {
                use actix::{ActorContext, ActorFutureExt, AsyncContext, WrapFuture};
                use $crate::supervise::{blocking, catch, InjectFault, Supervision};
                let sup: fn(&mut $actor) -> Option<&mut Supervision> = $sup;
                let name = sup(self).map(|s| s.name()).unwrap_or("actor");
                match msg {
                    InjectFault::PanicInHandler => {
                        if let Err(p) = catch(|| panic!("injected fault in the {name} handler")) {
                            if let Some(s) = sup(self) {
                                s.crashed(&p);
                            }
                            ctx.stop();
                        }
                    }
                    InjectFault::PanicInBlocking => {
                        let fut =
                            blocking(move || panic!("injected fault in {name} blocking work"));
                        ctx.spawn(fut.into_actor(self).map(move |r: Result<(), String>, act, ctx| {
                            if let Err(p) = r {
                                if let Some(s) = sup(act) {
                                    s.crashed(&p);
                                }
                                ctx.stop();
                            }
                        }));
                    }
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catch_turns_panics_into_errors() {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        assert_eq!(catch(|| 2 + 2), Ok(4));
        assert_eq!(catch(|| -> u8 { panic!("boom") }), Err("boom".to_string()));
        let n = 3;
        assert_eq!(
            catch(|| -> u8 { panic!("{n} bad") }),
            Err("3 bad".to_string())
        );
        std::panic::set_hook(prev);
    }

    #[actix_rt::test]
    async fn blocking_reports_panics() {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        assert_eq!(blocking(|| 5).await, Ok(5));
        assert_eq!(
            blocking(|| -> u8 { panic!("deep") }).await,
            Err("deep".into())
        );
        std::panic::set_hook(prev);
    }
}
