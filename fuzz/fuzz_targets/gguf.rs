//! Any file given to `coda models import`: read as GGUF (header, metadata, tensor table),
//! and, when it reads, the model's settings and tokenizer taken from it; an error, never a
//! panic or an allocation the file's size does not justify.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(path) = common::scratch_file("gguf", data) else {
        return;
    };
    if let Ok(g) = coda_llm::gguf::Gguf::open(&path) {
        let _ = coda_llm::model::ModelConfig::from_gguf(&g);
        let _ = coda_llm::tokenizer::Tokenizer::from_gguf(&g);
    }
});

#[path = "../common.rs"]
mod common;
