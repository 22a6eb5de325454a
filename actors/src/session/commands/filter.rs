//! The connection's event filter and delivery start: `hello`, `subscribe`,
//! `unsubscribe`, `resume`.

use actix::prelude::*;
use actix_ws::CloseCode;
use coda_protocol::{check_compatible, ErrorCode, HelloReply, PROTOCOL_VERSION};

use super::super::{to_value, WsSession};
use crate::hub::{StartAt, TypeMask};

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
        let start = match h.last_seq {
            Some(last_seq) => StartAt::Resume {
                epoch: h.epoch.clone(),
                last_seq,
            },
            None if self.subscribed => StartAt::Live,
            None => StartAt::Replay,
        };
        self.subscribe(start);
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
        match &mut self.include {
            Some(inc) => inc.extend(types.iter().cloned()),
            None => self.include = Some(types.clone()),
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
        self.subscribe(StartAt::Resume { epoch, last_seq });
        self.reply_ok(id, serde_json::json!({"resumed_from": last_seq}), ctx);
    }

    pub(in crate::session) fn recompute_mask(&mut self) -> Result<(), crate::hub::FilterError> {
        let include = match &self.include {
            Some(p) => TypeMask::from_patterns(p)?,
            None => TypeMask::DEFAULT,
        };
        let exclude = TypeMask::from_patterns(&self.exclude).unwrap_or(TypeMask::NONE);
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
        match self.recompute_mask() {
            Ok(()) => {
                self.subscribe(StartAt::Live);
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
