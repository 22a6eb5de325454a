//! What the server is: `ping`, `get_system_info`, `get_config`,
//! `get_performance_metrics`.

use std::time::Duration;

use actix::prelude::*;
use coda_protocol::ErrorCode;

use super::super::{to_value, WsSession};
use crate::hub::{GetStatus, HubStatus};
use crate::metrics::GetPerformance;

impl WsSession {
    /// `ping`.
    pub(in crate::session) fn ping(&mut self, id: Option<String>, ctx: &mut Context<Self>) {
        self.reply_ok(id, serde_json::json!({"pong": crate::hub::unix_now()}), ctx);
    }

    /// `get_system_info` (answered in order, after the hub's status).
    pub(in crate::session) fn get_system_info(
        &mut self,
        id: Option<String>,
        ctx: &mut Context<Self>,
    ) {
        self.answer_with_hub_status(ctx, move |act, status, ctx| {
            let info = act.shared.system_info(&status);
            match id {
                Some(id) => act.reply_ok(Some(id), to_value(&info), ctx),
                None => act.direct(&info, ctx),
            }
        });
    }

    /// `get_config`: the effective configuration, secrets redacted.
    pub(in crate::session) fn get_config(&mut self, id: Option<String>, ctx: &mut Context<Self>) {
        let cfg = coda_protocol::Config {
            config: self.shared.facts.config.clone(),
            profile: self.shared.facts.profile.clone(),
        };
        match id {
            Some(id) => self.reply_ok(Some(id), to_value(&cfg), ctx),
            None => self.direct(&cfg, ctx),
        }
    }

    /// Asks the hub for its status and answers in order: `ctx.wait` holds every other
    /// message (live events included) until the answer is queued.
    pub(in crate::session) fn answer_with_hub_status<F>(&mut self, ctx: &mut Context<Self>, f: F)
    where
        F: FnOnce(&mut Self, HubStatus, &mut Context<Self>) + 'static,
    {
        let fut = self.shared.hub.addr().send(GetStatus);
        ctx.wait(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok(status) => f(act, status, ctx),
            Err(_) => act.reply_err(None, ErrorCode::Internal, "event hub unavailable", ctx),
        }));
    }
    /// `get_performance_metrics`: the metrics actor's `component_timing`, answered in order
    /// like `get_system_info` (`ctx.wait`).
    pub(in crate::session) fn answer_performance(
        &mut self,
        id: Option<String>,
        ctx: &mut Context<Self>,
    ) {
        let Some(metrics) = self.shared.metrics.get() else {
            self.reply_err(
                id,
                ErrorCode::Unavailable,
                "performance metrics are not running in this server",
                ctx,
            );
            return;
        };
        let fut = metrics.send(GetPerformance).timeout(Duration::from_secs(5));
        ctx.wait(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok(timing) => match id {
                Some(id) => act.reply_ok(Some(id), to_value(&timing), ctx),
                None => act.direct(&timing, ctx),
            },
            Err(e) => act.reply_err(
                id,
                ErrorCode::Unavailable,
                format!("the metrics component did not answer ({e}); it may be restarting"),
                ctx,
            ),
        }));
    }
}
