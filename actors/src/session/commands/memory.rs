//! Long-term memory: `memory_search`, `memory_list`.

use actix::prelude::*;

use super::super::{to_value, WsSession};
use crate::kernel::KernelRequestError;

impl WsSession {
    /// `memory_search`.
    pub(in crate::session) fn memory_search(
        &mut self,
        id: Option<String>,
        q: coda_protocol::MemoryQuery,
        ctx: &mut Context<Self>,
    ) {
        let fut = self
            .shared
            .kernel
            .memory_search(crate::memory::Search::from_query(&q));
        self.memory_answer(id, fut, ctx);
    }

    /// `memory_list`.
    pub(in crate::session) fn memory_list(
        &mut self,
        id: Option<String>,
        q: coda_protocol::MemoryQuery,
        ctx: &mut Context<Self>,
    ) {
        let fut = self
            .shared
            .kernel
            .memory_list(crate::memory::List::from_query(&q));
        self.memory_answer(id, fut, ctx);
    }

    /// Answers in order (`ctx.wait`).
    fn memory_answer(
        &mut self,
        id: Option<String>,
        fut: impl std::future::Future<Output = Result<coda_protocol::MemoryItems, KernelRequestError>>
            + 'static,
        ctx: &mut Context<Self>,
    ) {
        ctx.wait(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok(items) => act.reply_ok(id, to_value(&items), ctx),
            Err(e) => act.reply_kernel_err(id, e, ctx),
        }));
    }
}
