//! Any `model.bin` in a CTranslate2 directory given to `coda models import-ct2`: converted
//! to ggml or refused with an error, never a panic.
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
    let out = dir.join("out.bin");
    let _ = coda_actors::models::whisper::convert_ct2(dir, &out, |_, _| {});
    let _ = std::fs::remove_file(&out);
});

#[path = "../common.rs"]
mod common;
