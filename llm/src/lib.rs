//! Coda's embedded LLM engine, in pure Rust (no C, so nothing clashes with the ggml that
//! whisper.cpp links): GGUF files ([`gguf`]), ggml block formats ([`quant`]), int8 dot
//! kernels ([`kernels`]), a llama-family transformer ([`model`]), the model's own
//! tokenizer and chat template ([`tokenizer`], [`template`]) and the generation loop
//! ([`engine`]).
//!
//! Weights are held as Q8_0 whatever the file stores (Q4_0/Q4_1/Q5_x/F16/BF16/F32 are
//! requantised at load), because the Q8_0 × Q8 kernels are the fast path on CPUs.

#![warn(missing_docs)]

pub mod engine;
pub mod gguf;
pub mod kernels;
pub mod kquants;
pub mod model;
pub mod quant;
pub mod requant;
pub mod template;
pub mod tokenizer;

pub use engine::{Engine, Finish, GenError, GenOutput, GenParams, LoadError};
