//! The `coda` binary's library half: configuration, server wiring and the commands
//! (`cmd`: one module per command, `cmd::bench` one per benchmark). The binary (`main.rs`)
//! only parses and dispatches.

pub mod client;
pub mod cmd;
pub mod config;
pub mod dashboard;
pub mod llm_setup;
pub mod server;
pub mod settings;
pub mod speech;
pub mod synthetic;
pub mod telemetry;
pub mod wer;

/// Unix seconds now (the clock `coda bench` compares event timestamps against).
pub fn bench_clock() -> f64 {
    coda_actors::hub::unix_now()
}
