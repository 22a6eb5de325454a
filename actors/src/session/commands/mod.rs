//! The commands a session answers, one file per family. Each is an `impl WsSession`
//! block: the session keeps the socket, auth, rate limit and ordering; these turn a
//! command into requests to the hub or the assistant ([`crate::kernel::KernelHandle`])
//! and a reply.

mod cluster;
mod filter;
mod info;
mod memory;
mod stt;
mod tokens;
mod turn;
