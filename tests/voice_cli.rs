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

fn espeak(dir: &Path, name: &str, voice: &str, text: &str) -> String {
    let path = dir.join(name);
    let ok = Command::new("espeak-ng")
        .args(["-v", voice, "-w"])
        .arg(&path)
        .arg(text)
        .status()
        .unwrap()
        .success();
    assert!(ok, "espeak-ng runs (scripts/setup installs it)");
    path.to_str().unwrap().to_string()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn wake_train_test_and_info_from_recordings() {
    let h = null_home();
    let d = h.path();
    let examples: Vec<String> = ["en-us+m1", "en-gb+f2", "en-us+m3"]
        .iter()
        .enumerate()
        .map(|(i, v)| espeak(d, &format!("ex{i}.wav"), v, "hey coda"))
        .collect();
    let reference = d.join("mine.json");
    let mut args = vec![
        "wake",
        "train",
        "hey coda",
        "--out",
        reference.to_str().unwrap(),
    ];
    args.extend(examples.iter().map(String::as_str));
    let o = coda(d, &args);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("3 examples"), "{}", text(&o));
    let o = coda(d, &["wake", "info", reference.to_str().unwrap()]);
    assert!(
        o.status.success() && text(&o).contains("ex1.wav"),
        "{}",
        text(&o)
    );

    // A recording with the word in the middle of other speech.
    let before = espeak(d, "a.wav", "en-us+m1", "Good morning.");
    let word = espeak(d, "b.wav", "en-us+m1", "Hey Coda, what time is it?");
    let stream = d.join("stream.wav");
    let sox = Command::new("sox")
        .args([before.as_str(), word.as_str()])
        .arg(&stream)
        .status()
        .unwrap();
    assert!(sox.success());
    let r = ["--reference", reference.to_str().unwrap()];
    let o = coda(
        d,
        &[&["wake", "test", stream.to_str().unwrap()][..], &r[..]].concat(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let printed = text(&o);
    let lines: Vec<&str> = printed
        .lines()
        .filter(|l| l.contains("\"hey coda\""))
        .map(str::trim)
        .collect();
    assert_eq!(lines.len(), 1, "{}", text(&o));
    // After "Good morning." (about a second), with the time and the score.
    let at: f64 = lines[0].split_whitespace().next().unwrap().parse().unwrap();
    assert!((1.0..3.0).contains(&at), "{}", lines[0]);
    assert!(lines[0].contains("score"), "{}", lines[0]);
    let o = coda(d, &[&["wake", "test", &before][..], &r[..]].concat());
    assert!(text(&o).contains("no wake word detected"), "{}", text(&o));
}

#[test]
fn wake_commands_explain_bad_input() {
    let h = null_home();
    let d = h.path();
    // A click, not a word.
    let click = d.join("click.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&click, spec).unwrap();
    for i in 0..16_000 {
        w.write_sample(if (8_000..8_800).contains(&i) {
            9_000i16
        } else {
            0
        })
        .unwrap();
    }
    w.finalize().unwrap();
    let out = d.join("r.json");
    let o = coda(
        d,
        &[
            "wake",
            "train",
            "hey coda",
            "--out",
            out.to_str().unwrap(),
            click.to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("click.wav") && text(&o).contains("ms of sound"),
        "{}",
        text(&o)
    );
    assert!(!out.exists());
    let o = coda(
        d,
        &[
            "wake",
            "train",
            "hey coda",
            "--out",
            out.to_str().unwrap(),
            "nope.wav",
        ],
    );
    assert!(
        !o.status.success() && text(&o).contains("nope.wav"),
        "{}",
        text(&o)
    );
    let o = coda(
        d,
        &[
            "wake",
            "test",
            click.to_str().unwrap(),
            "--reference",
            "missing.json",
        ],
    );
    assert!(
        !o.status.success() && text(&o).contains("no wake word reference at"),
        "{}",
        text(&o)
    );
    std::fs::write(&out, "{\"format\":1}").unwrap();
    let o = coda(d, &["wake", "info", out.to_str().unwrap()]);
    assert!(
        !o.status.success() && text(&o).contains("not a wake word reference"),
        "{}",
        text(&o)
    );
}

/// A slow speaker's "hey coda" matches the examples before it ends ("hey co…"), dips at
/// the "d" and matches far better at its end: the whole word must still be reported (it
/// was lost once: the first, partial match cleared the matcher and whisper refused it).
#[test]
fn a_slow_speakers_word_is_read_to_its_end() {
    let h = null_home();
    let d = h.path();
    let reference = d.join("ref.json");
    let o = coda(
        d,
        &[
            "wake",
            "train",
            "hey coda",
            "--out",
            reference.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let said = d.join("said.wav");
    let ok = Command::new("espeak-ng")
        .args(["-v", "en-gb-x-gbcwmd+m2", "-s", "135", "-p", "45", "-w"])
        .arg(&said)
        .arg("hey coda, what time is it")
        .status()
        .unwrap()
        .success();
    assert!(ok, "espeak-ng runs");
    let clip = d.join("clip.wav");
    let sox = Command::new("sox")
        .arg(&said)
        .arg(&clip)
        .args(["pad", "1", "1"])
        .status()
        .unwrap();
    assert!(sox.success());
    let o = coda(
        d,
        &[
            "wake",
            "test",
            clip.to_str().unwrap(),
            "--reference",
            reference.to_str().unwrap(),
            "--no-verify",
            "--threshold",
            "0.035",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let printed = text(&o);
    // `1.80 s  "hey coda"  score 0.091  (word 0.97–1.75 s)`
    let words: Vec<(f64, f64)> = printed
        .lines()
        .filter(|l| l.contains("\"hey coda\""))
        .map(|l| {
            let num = |s: &str| {
                s.trim_matches(|c: char| !c.is_ascii_digit() && c != '.')
                    .parse::<f64>()
                    .unwrap()
            };
            let score = num(l
                .split("score")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap());
            let end = num(l
                .split('–')
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap());
            (score, end)
        })
        .collect();
    let last = words.last().copied().unwrap_or_default();
    assert!(last.0 >= 0.07 && last.1 >= 1.6, "{printed}");
}
