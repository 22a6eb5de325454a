//! The `coda` binary's library half: CLI, configuration, server wiring and the built-in
//! clients (`coda events`, `coda bench`). The binary (`main.rs`) only parses and dispatches.

pub mod ask;
pub mod bench;
pub mod bench_llm;
pub mod bench_local;
pub mod bench_memory;
pub mod bench_voice;
pub mod chat;
pub mod cli;
pub mod client;
pub mod config;
pub mod dashboard;
pub mod events;
pub mod llm_setup;
pub mod memory_cmd;
pub mod models;
pub mod models_cmd;
pub mod server;
pub mod speech;
pub mod stt_cmd;
pub mod synthetic;
pub mod token_cmd;
pub mod wer;

/// Unix seconds now (the clock `coda bench` compares event timestamps against).
pub fn bench_clock() -> f64 {
    coda_actors::hub::unix_now()
}
