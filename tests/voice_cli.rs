//! `coda say` and `coda devices` as a user runs them: the real binary, a temp HOME whose
//! `.asoundrc` makes ALSA's null device the default (or points at a missing card), and
//! espeak-ng.

use std::path::Path;
use std::process::{Command, Output};

const CODA: &str = env!("CARGO_BIN_EXE_coda");

fn home(asoundrc: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".asoundrc"), asoundrc).unwrap();
    dir
}

fn null_home() -> tempfile::TempDir {
    home("pcm.!default { type plug slave.pcm \"null\" }\n")
}

fn coda(home: &Path, args: &[&str]) -> Output {
    Command::new(CODA)
        .args(args)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .env_remove("CODA_CONFIG")
        .env_remove("CODA_PROFILE")
        .output()
        .unwrap()
}

#[test]
fn say_writes_a_valid_wav() {
    let h = null_home();
    let out = h.path().join("out.wav");
    let o = coda(
        h.path(),
        &[
            "say",
            "Hello from Coda. This is the second sentence.",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = hound::WavReader::open(&out).unwrap();
    let spec = r.spec();
    assert_eq!(spec.channels, 1);
    assert_eq!(spec.bits_per_sample, 16);
    assert_eq!(spec.sample_rate, 22_050);
    let samples: Vec<i16> = r.into_samples::<i16>().map(|s| s.unwrap()).collect();
    // Two sentences of speech: well over a second, and not silence.
    assert!(samples.len() > 22_050, "{} samples", samples.len());
    assert!(samples.iter().any(|s| s.unsigned_abs() > 1000));
}

#[test]
fn say_plays_on_the_null_device_and_explains_when_there_is_none() {
    let h = null_home();
    let o = coda(h.path(), &["say", "Short one."]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let h = home("pcm.!default { type hw card 57 }\n");
    let o = coda(h.path(), &["say", "Nobody hears this."]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("-o"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn say_with_an_unknown_engine_is_refused() {
    let h = null_home();
    let o = coda(
        h.path(),
        &["say", "x", "--engine", "festival", "-o", "/dev/null"],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("festival"));
}

#[test]
fn devices_lists_inputs_and_outputs() {
    let h = null_home();
    let o = coda(h.path(), &["devices"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("inputs:") && text.contains("outputs:"),
        "{text}"
    );
    let o = coda(h.path(), &["devices", "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["inputs"].is_array() && v["outputs"].is_array(), "{v}");
    assert!(v["host"].is_string());
}
