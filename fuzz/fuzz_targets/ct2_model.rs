//! Any `model.bin` in a CTranslate2 directory given to `coda models import-ct2`: converted
//! to ggml (f16 or Q8_0 matrices) or refused with an error, never a panic; what converts
//! is requantised (`coda models import --requantize q8_0`) the same way.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(path) = common::scratch_file("model.bin", data) else {
        return;
    };
    let Some(dir) = path.parent() else {
        return;
    };
    let _ = std::fs::write(dir.join("vocabulary.txt"), "a\nb\n<|endoftext|>\n");
    use coda_actors::models::whisper::{convert_ct2, requantize_ggml, WhisperWeights};
    let out = dir.join("out.bin");
    let q8 = dir.join("q8.bin");
    let _ = convert_ct2(dir, &q8, WhisperWeights::Q8_0, |_, _| {});
    if convert_ct2(dir, &out, WhisperWeights::F16, |_, _| {}).is_ok() {
        let _ = requantize_ggml(&out, &q8, |_, _| {});
    }
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(&q8);
});

#[path = "../common.rs"]
mod common;
