//! `hello {"scope":"cluster"}`: the connection reads every node's events from the
//! cluster stream ([`crate::cluster::open_view`]) instead of this node's hub.

use std::time::Duration;

use actix::prelude::*;
use coda_protocol::{ErrorCode, HelloReply, PROTOCOL_VERSION};

use super::super::{to_value, WsSession};
use crate::hub::{StartAt, Subscribe, TypeMask};

/// The longest opening a view may take (NATS unreachable: the client is told, not kept
/// waiting).
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

impl WsSession {
    /// Switches the connection to the cluster stream from `start`; answers the `hello`
    /// `id` with the stream's epoch and last sequence once the view is open.
    pub(in crate::session) fn enter_cluster_scope(
        &mut self,
        id: Option<String>,
        start: StartAt,
        ctx: &mut Context<Self>,
    ) {
        if self.shared.cluster.get().is_none() {
            self.reply_err(
                id,
                ErrorCode::Unavailable,
                "this node is not part of a cluster: set [cluster] nats_url and node to use scope \"cluster\"",
                ctx,
            );
            return;
        }
        if self.subscribed && !self.cluster_scope {
            // Local delivery stops: the cluster stream carries this node's events too.
            self.shared.hub.addr().do_send(Subscribe {
                client_id: self.id,
                mask: TypeMask::NONE,
                start: StartAt::Live,
            });
        }
        self.cluster_scope = true;
        self.subscribed = true;
        self.open_cluster_view(Some(id), start, ctx);
    }

    /// Leaves the cluster scope (a later `hello` without it).
    pub(in crate::session) fn leave_cluster_scope(&mut self) {
        if let Some(view) = self.cluster_view.take() {
            view.abort();
        }
        self.cluster_scope = false;
        self.subscribed = false;
    }

    /// Opens (or reopens) the view from `start`. With `hello: Some(id)` the hello is
    /// answered; the commands after it wait (`ctx.wait`), so their answers follow.
    pub(in crate::session) fn open_cluster_view(
        &mut self,
        hello: Option<Option<String>>,
        start: StartAt,
        ctx: &mut Context<Self>,
    ) {
        let Some(cluster) = self.shared.cluster.get().cloned() else {
            return;
        };
        if let Some(view) = self.cluster_view.take() {
            view.abort();
        }
        self.awaiting_replay = true;
        let recipient = ctx.address().recipient();
        let open = tokio::time::timeout(
            OPEN_TIMEOUT,
            crate::cluster::open_view(cluster, start, recipient),
        );
        ctx.wait(open.into_actor(self).map(move |res, act, ctx| {
            let res = match res {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!(
                    "the cluster stream did not answer within {} s (is NATS reachable?)",
                    OPEN_TIMEOUT.as_secs()
                )),
            };
            match res {
                Ok(view) => {
                    act.cluster_view = Some(view.task);
                    if let Some(id) = hello {
                        let reply = HelloReply {
                            protocol_version: PROTOCOL_VERSION.to_string(),
                            server_version: env!("CARGO_PKG_VERSION").to_string(),
                            epoch: view.epoch,
                            last_seq: view.last_seq,
                        };
                        act.reply_ok(id, to_value(&reply), ctx);
                    }
                }
                Err(e) => {
                    tracing::warn!(client = %act.client_id, error = %e, "cluster view failed");
                    act.release_deferred(ctx);
                    act.cluster_scope = false;
                    act.subscribed = false;
                    act.reply_err(hello.flatten(), ErrorCode::Unavailable, e, ctx);
                }
            }
        }));
    }
}
