//! Coda's actors: the event hub, the WebSocket sessions, storage and authentication, and
//! (as they land) the subsystem actors. One module ("room") per actor: its state, its
//! messages and its tests live together.

pub mod audio;
pub mod auth;
pub mod cluster;
pub mod components;
pub mod hub;
pub mod intent;
pub mod kernel;
pub mod llm;
pub mod mcp;
pub mod memory;
pub mod metrics;
pub mod models;
pub mod orchestrator;
pub mod session;
pub mod store;
pub mod stt;
pub mod supervise;
pub mod tools;
pub mod tts;
pub mod voice;
pub mod wake;
pub mod wyoming;
