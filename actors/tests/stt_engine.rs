//! The whisper engine with the real tiny.en model (`CODA_TEST_WHISPER`, set by
//! scripts/test, or the default store): an abort flag that is never set never aborts
//! (whisper-rs 0.16's own abort setter made about half of all processes fail every
//! transcription with "failed to encode"), a set flag stops the run, and short commands
//! do not loop.
#![cfg(feature = "stt")]

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coda_actors::stt::{SttFailure, WhisperEngine};

fn model() -> PathBuf {
    let p = std::env::var_os("CODA_TEST_WHISPER")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".local/share/coda/models/whisper-tiny.en.bin"))
        })
        .expect("HOME or CODA_TEST_WHISPER");
    assert!(
        p.is_file(),
        "{} is missing: run `coda models pull whisper-tiny.en` (scripts/setup does)",
        p.display()
    );
    p
}

/// espeak-ng's speech of `text` at 16 kHz.
fn spoken(text: &str, voice: &str, speed: u32) -> Vec<f32> {
    let dir = tempfile::tempdir().expect("temp dir");
    let wav = dir.path().join("s.wav");
    let status = Command::new("espeak-ng")
        .args(["-v", voice, "-s", &speed.to_string(), "-w"])
        .arg(&wav)
        .arg(text)
        .status()
        .expect("espeak-ng runs (scripts/setup installs it)");
    assert!(status.success());
    let mut r = hound::WavReader::open(&wav).expect("espeak-ng writes a WAV");
    let rate = r.spec().sample_rate;
    let pcm: Vec<f32> = r
        .samples::<i16>()
        .map(|s| f32::from(s.expect("sample")) / 32768.0)
        .collect();
    coda_actors::audio::convert::to_speech_rate(&pcm, rate).expect("resample")
}

#[test]
fn a_flag_that_is_never_set_never_aborts() {
    let engine = WhisperEngine::load(&model(), "en", 2).expect("the model loads");
    let audio = spoken("What is the capital of France?", "en-us", 160);
    let flag = Arc::new(AtomicBool::new(false));
    for i in 0..12 {
        let t = engine
            .transcribe(&audio, Some(flag.clone()))
            .unwrap_or_else(|e| panic!("transcription {i} failed: {e}"));
        assert!(
            t.text.to_lowercase().contains("capital"),
            "run {i}: {:?}",
            t.text
        );
    }
    // Nothing holds on to the flag after the calls (no per-call leak of a callback box).
    assert_eq!(Arc::strong_count(&flag), 1);
    // Without a flag at all, too.
    let t = engine.transcribe(&audio, None).expect("transcribes");
    assert!(!t.text.is_empty());
}

#[test]
fn a_set_flag_stops_the_transcription() {
    let engine = Arc::new(WhisperEngine::load(&model(), "en", 2).expect("the model loads"));
    // Long audio: a full window, so there is time to abort.
    let mut audio = spoken(
        "Set a timer for ten minutes and remind me to check the oven when it rings.",
        "en-us",
        140,
    );
    audio.resize(16_000 * 28, 0.0);
    let flag = Arc::new(AtomicBool::new(false));
    let (e, f) = (engine.clone(), flag.clone());
    let started = Instant::now();
    let run = std::thread::spawn(move || e.transcribe(&audio, Some(f)));
    std::thread::sleep(Duration::from_millis(50));
    flag.store(true, Ordering::Relaxed);
    let res = run.join().expect("no panic");
    assert!(matches!(res, Err(SttFailure::Cancelled)), "{res:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
    // The engine still works after an abort.
    let t = engine
        .transcribe(&spoken("Stop.", "en-us", 160), None)
        .expect("transcribes after an abort");
    assert!(t.text.to_lowercase().contains("stop"), "{:?}", t.text);
}

#[test]
fn one_word_commands_do_not_loop() {
    let engine = WhisperEngine::load(&model(), "en", 2).expect("the model loads");
    for (text, voice, speed) in [
        ("stop", "en-us", 160),
        ("pause", "en", 175),
        ("turn on the kitchen lights please", "en-us", 160),
        ("next", "en-us", 150),
    ] {
        let audio = spoken(text, voice, speed);
        let t = engine.transcribe(&audio, None).expect("transcribes");
        let words = t.text.split_whitespace().count();
        let said = text.split_whitespace().count();
        assert!(
            words <= said + 1,
            "{text:?} was heard as {:?} (window {}, {} decodings)",
            t.text,
            t.audio_ctx,
            t.attempts
        );
        assert!(
            coda_actors::stt::degenerate(&t.text, t.audio_ms / 1000.0, false).is_none(),
            "{:?}",
            t.text
        );
    }
}

/// tiny.en loops on this question's trimmed window ("Who wrote the book Moby Dick? Who
/// wrote the book…" to the token cap); the first copy is the question, kept without a
/// second decoding on a wider window (which gives the same text, ~500 ms later).
#[test]
fn a_looping_question_is_read_in_one_decoding() {
    let engine = WhisperEngine::load(&model(), "en", 2).expect("the model loads");
    let t = engine
        .transcribe(&spoken("Who wrote the book Moby Dick?", "en", 175), None)
        .expect("transcribes");
    assert_eq!(t.text, "Who wrote the book Moby Dick?");
    assert_eq!(t.attempts, 1, "{t:?}");
}
