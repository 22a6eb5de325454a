//! The connection's event filter and delivery start: `hello`, `subscribe`,
//! `unsubscribe`, `resume`.

use actix::prelude::*;
use actix_ws::CloseCode;
use coda_protocol::{check_compatible, ErrorCode, HelloReply, Scope, PROTOCOL_VERSION};

use super::super::{to_value, WsSession};
use crate::hub::{StartAt, TypeMask};

/// Most patterns one connection's include (or exclude) list holds: enough for every event
/// type by name, and a bound on what a client can make the session keep and echo.
const MAX_FILTER_PATTERNS: usize = 128;

impl WsSession {
    /// `hello`: version check, filter, and where delivery starts (replay, resume, live).
    pub(in crate::session) fn hello(
        &mut self,
        id: Option<String>,
        h: coda_protocol::Hello,
        ctx: &mut Context<Self>,
    ) {
        if let Err(e) = check_compatible(&h.protocol_version) {
            let msg = e.to_string();
            self.direct(
                &coda_protocol::SystemError {
                    level: coda_protocol::Level::Error,
                    component: "server".into(),
                    code: ErrorCode::VersionMismatch.as_str().into(),
                    message: msg.clone(),
                },
                ctx,
            );
            self.reply_err(id, ErrorCode::VersionMismatch, msg, ctx);
            self.close(CloseCode::Protocol, "protocol version mismatch", ctx);
            return;
        }
        if let Some(types) = &h.subscribe {
            let prev = self.include.replace(types.clone());
            if let Err(e) = self.recompute_mask() {
                self.include = prev;
                let _ = self.recompute_mask();
                self.reply_err(id, ErrorCode::InvalidData, e.to_string(), ctx);
                return;
            }
        }
        if let Some(c) = &h.client {
            tracing::debug!(client = %self.client_id, name = %c, "hello");
        }
        if h.last_seq.is_some() && self.refuse_second_replay(&id, ctx) {
            return;
        }
        let cluster = h.scope == Some(Scope::Cluster);
        let start = match h.last_seq {
            Some(last_seq) => StartAt::Resume {
                epoch: h.epoch.clone(),
                last_seq,
            },
            None if self.subscribed && cluster == self.cluster_scope => StartAt::Live,
            None => StartAt::Replay,
        };
        if cluster {
            self.enter_cluster_scope(id, start, ctx);
            return;
        }
        if self.cluster_scope {
            self.leave_cluster_scope();
        }
        self.subscribe(start, ctx);
        self.answer_with_hub_status(ctx, move |act, status, ctx| {
            let reply = HelloReply {
                protocol_version: PROTOCOL_VERSION.to_string(),
                server_version: env!("CARGO_PKG_VERSION").to_string(),
                epoch: status.epoch.to_string(),
                last_seq: status.last_seq,
            };
            act.reply_ok(id, to_value(&reply), ctx);
        });
    }

    /// `subscribe`: more types.
    pub(in crate::session) fn add_types(
        &mut self,
        id: Option<String>,
        types: Vec<String>,
        ctx: &mut Context<Self>,
    ) {
        let prev = (self.include.clone(), self.exclude.clone());
        let inc = self.include.get_or_insert_with(Vec::new);
        for p in &types {
            if !inc.contains(p) {
                inc.push(p.clone());
            }
        }
        self.exclude.retain(|p| !types.contains(p));
        self.after_filter_change(id, prev, ctx);
    }

    /// `unsubscribe`: fewer types.
    pub(in crate::session) fn remove_types(
        &mut self,
        id: Option<String>,
        types: Vec<String>,
        ctx: &mut Context<Self>,
    ) {
        let prev = (self.include.clone(), self.exclude.clone());
        if let Some(inc) = &mut self.include {
            inc.retain(|p| !types.contains(p));
        }
        for p in &types {
            if !self.exclude.contains(p) {
                self.exclude.push(p.clone());
            }
        }
        self.after_filter_change(id, prev, ctx);
    }

    /// `resume`: replay from a position; the replay arrives through the hub, ahead of
    /// this answer's successors.
    pub(in crate::session) fn resume(
        &mut self,
        id: Option<String>,
        epoch: Option<String>,
        last_seq: u64,
        ctx: &mut Context<Self>,
    ) {
        if self.refuse_second_replay(&id, ctx) {
            return;
        }
        self.subscribe(StartAt::Resume { epoch, last_seq }, ctx);
        self.reply_ok(id, serde_json::json!({"resumed_from": last_seq}), ctx);
    }

    /// A replay is built whole for each request: while one is on its way, another is
    /// refused rather than built again.
    fn refuse_second_replay(&mut self, id: &Option<String>, ctx: &mut Context<Self>) -> bool {
        if !self.awaiting_replay {
            return false;
        }
        self.reply_err(
            id.clone(),
            ErrorCode::RateLimited,
            "a replay is already on its way to this connection; resume again after it arrives",
            ctx,
        );
        true
    }

    pub(in crate::session) fn recompute_mask(&mut self) -> Result<(), crate::hub::FilterError> {
        let include = match &self.include {
            Some(p) => TypeMask::from_patterns(p)?,
            None => TypeMask::DEFAULT,
        };
        let exclude = TypeMask::from_patterns(&self.exclude)?;
        self.mask = include.minus(exclude);
        Ok(())
    }
    fn filter_json(&self) -> serde_json::Value {
        serde_json::json!({
            "include": self.include.clone().unwrap_or_else(|| vec!["*".to_string()]),
            "exclude": self.exclude,
            "types": self.mask.names(),
        })
    }
    fn after_filter_change(
        &mut self,
        id: Option<String>,
        prev: (Option<Vec<String>>, Vec<String>),
        ctx: &mut Context<Self>,
    ) {
        let too_many = [self.include.as_deref().unwrap_or_default(), &self.exclude]
            .into_iter()
            .any(|list| list.len() > MAX_FILTER_PATTERNS);
        if too_many {
            (self.include, self.exclude) = prev;
            let msg = format!(
                "a connection's filter holds at most {MAX_FILTER_PATTERNS} included and {MAX_FILTER_PATTERNS} excluded patterns; send `hello` with `subscribe` to start over"
            );
            self.reply_err(id, ErrorCode::InvalidData, msg, ctx);
            return;
        }
        match self.recompute_mask() {
            Ok(()) => {
                self.subscribe(StartAt::Live, ctx);
                let f = self.filter_json();
                self.reply_ok(id, f, ctx);
            }
            Err(e) => {
                (self.include, self.exclude) = prev;
                let _ = self.recompute_mask();
                self.reply_err(id, ErrorCode::InvalidData, e.to_string(), ctx);
            }
        }
    }
}
