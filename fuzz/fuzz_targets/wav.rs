//! Any WAV file (`coda bench stt`, `audio.input_device = "file:…"`): 16 kHz mono samples or
//! an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(path) = common::scratch_file("wav", data) else {
        return;
    };
    if let Ok(samples) = coda_actors::audio::convert::read_wav_16k(&path) {
        assert!(samples.iter().all(|s| s.is_finite()));
    }
});

#[path = "../common.rs"]
mod common;
