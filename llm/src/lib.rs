//! Coda's embedded LLM engine, in pure Rust (no C, so nothing clashes with the ggml that
//! whisper.cpp links): GGUF files ([`gguf`]), ggml block formats ([`quant`]), int8 dot
//! kernels ([`kernels`] for Q8_0, [`kquants`] for Q4_K/Q5_K/Q6_K and Q5_0, and `tiled`,
//! which runs prompts several rows × several tokens at a time), llama-family, Qwen 2/3,
//! Phi-3 and Gemma 2/3 transformers ([`model`]), the model's own tokenizer and chat template
//! ([`tokenizer`], [`template`]) and the generation loop ([`engine`]).
//!
//! Weights are held in the file's own type when a kernel runs it (Q8_0, Q5_0, Q4_K, Q5_K,
//! Q6_K: a Q4_K_M model takes about half the memory and bandwidth of its Q8_0
//! requantisation); F32/F16/BF16/Q4_0/Q4_1/Q5_1 matrices become Q8_0 at load.

#![warn(missing_docs)]

pub mod arena;
pub mod engine;
pub mod gguf;
mod glu;
pub mod kernels;
pub mod kquants;
pub mod model;
pub mod quant;
pub mod requant;
mod rows;
pub mod template;
mod tiled;
pub mod tokenizer;

pub use engine::{Engine, Finish, GenError, GenOutput, GenParams, LoadError};
