//! Long-term memory: `memory_search`, `memory_list`.

use actix::prelude::*;

use super::super::{to_value, WsSession};
use crate::kernel::KernelRequestError;

impl WsSession {
    /// `memory_search` / `memory_list`: `query` is the matching memory request.
    pub(in crate::session) fn memory<M>(
        &mut self,
        id: Option<String>,
        query: M,
        ctx: &mut Context<Self>,
    ) where
        M: Message<Result = Result<coda_protocol::MemoryItems, crate::memory::MemoryFailure>>
            + Send
            + 'static,
        crate::memory::MemoryActor: Handler<M>,
    {
        let fut = self.shared.kernel.memory(query);
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
