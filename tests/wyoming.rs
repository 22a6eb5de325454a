//! The Wyoming server (Home Assistant's voice protocol) of the real binary on its shipped
//! defaults (whisper tiny.en, espeak-ng, the "hey coda" reference, the embedded model),
//! driven by the reference Python client from PyPI (`wyoming`, installed by
//! scripts/setup) as Home Assistant drives it: describe, speech-to-text, text-to-speech,
//! the wake word and conversation; and by hand with frames no client should send.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Where scripts/setup installs the Python `wyoming` package; `None` (skipped) unless
/// `CODA_REQUIRE_WYOMING` is set, as scripts/test does.
fn wyoming_python() -> Option<PathBuf> {
    setup_tool("python/wyoming", "CODA_REQUIRE_WYOMING")
        .and_then(|p| p.parent().map(Path::to_path_buf))
}

/// `coda serve` on the defaults with the Wyoming server on `port`.
fn server(port: u16) -> Server {
    let store = store();
    let port = port.to_string();
    Server::start(
        &[],
        &[
            ("CODA__MODELS__DIR", store.to_str().expect("utf-8")),
            ("CODA__WYOMING__ENABLED", "true"),
            ("CODA__WYOMING__PORT", &port),
        ],
    )
}

/// Runs tests/wyoming/client.py; its JSON answer.
fn client(python: &Path, port: u16, args: &[&str]) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/wyoming/client.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .arg(port.to_string())
        .args(args)
        .env("PYTHONPATH", python);
    let out = run_bounded(cmd, Duration::from_secs(120));
    assert_eq!(out.code, Some(0), "client {args:?}: {}", out.stderr);
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("client {args:?} printed {:?}: {e}", out.stdout))
}

/// espeak-ng's voice saying `text`, padded with silence, at `rate`.
fn wav(dir: &Path, name: &str, text: &str, rate: u32) -> PathBuf {
    let raw = dir.join(format!("{name}-raw.wav"));
    let ok = Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "160", "-w"])
        .arg(&raw)
        .arg(text)
        .status()
        .expect("espeak-ng runs (scripts/setup installs it)");
    assert!(ok.success());
    let out = dir.join(format!("{name}.wav"));
    let ok = Command::new("sox")
        .arg(&raw)
        .args(["-r", &rate.to_string()])
        .arg(&out)
        .args(["pad", "0.3", "1.0"])
        .status()
        .expect("sox runs (scripts/setup installs it)");
    assert!(ok.success());
    out
}

#[test]
fn home_assistant_can_use_every_service() {
    let Some(py) = wyoming_python() else { return };
    let port = free_port();
    let _server = server(port);
    let dir = tempfile::tempdir().unwrap();

    let info = client(&py, port, &["describe"]);
    assert_eq!(info["asr"], json!(["whisper-tiny.en"]), "{info}");
    assert_eq!(info["wake"], json!(["hey coda"]), "{info}");
    assert_eq!(info["handle"], json!(["coda"]), "{info}");
    assert_eq!(info["tts"].as_array().map(Vec::len), Some(1), "{info}");

    // Speech-to-text, from 22.05 kHz audio (resampled by the server).
    let said = wav(dir.path(), "timer", "Set a timer for ten minutes.", 22_050);
    let t = client(&py, port, &["transcribe", said.to_str().unwrap()]);
    assert_eq!(t["type"], json!("transcript"), "{t}");
    let text = t["data"]["text"].as_str().unwrap().to_lowercase();
    assert!(text.contains("timer") && text.contains("minutes"), "{t}");
    println!(
        "transcribe: {text:?} in {:.0} ms after audio-stop",
        t["ms"].as_f64().unwrap()
    );

    // Text-to-speech: real audio, which the speech-to-text service understands again.
    let out = dir.path().join("tts.wav");
    let s = client(
        &py,
        port,
        &[
            "synthesize",
            "Turn on the kitchen lights.",
            out.to_str().unwrap(),
        ],
    );
    assert!(s["seconds"].as_f64().unwrap() > 0.8, "{s}");
    assert!(s["chunks"].as_u64().unwrap() >= 2, "{s}");
    let back = client(&py, port, &["transcribe", out.to_str().unwrap()]);
    let back = back["data"]["text"].as_str().unwrap().to_lowercase();
    assert!(
        back.contains("kitchen") || back.contains("lights"),
        "{back:?}"
    );

    // The wake word: heard in "hey coda", not in other speech.
    let word = wav(dir.path(), "wake", "hey coda", 16_000);
    let d = client(&py, port, &["detect", word.to_str().unwrap()]);
    assert_eq!(d["type"], json!("detection"), "{d}");
    assert_eq!(d["data"]["name"], json!("hey_coda"));
    assert!(d["data"]["timestamp"].as_u64().unwrap() > 300, "{d}");
    let other = wav(dir.path(), "other", "The weather is nice today.", 16_000);
    let d = client(&py, port, &["detect", other.to_str().unwrap()]);
    assert_eq!(d["type"], json!("not-detected"), "{d}");

    // Conversation: a turn of Coda's own pipeline (the time tool answers).
    let h = client(&py, port, &["handle", "What time is it?"]);
    assert_eq!(h["type"], json!("handled"), "{h}");
    assert!(
        h["data"]["text"].as_str().unwrap().starts_with("It is"),
        "{h}"
    );
}

/// One raw event, written by hand.
fn send_raw(s: &mut TcpStream, bytes: &[u8]) {
    s.write_all(bytes).expect("write");
}

/// The next event's header and data (payload skipped).
fn read_raw(r: &mut BufReader<TcpStream>) -> Option<Value> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut h: Value = serde_json::from_str(&line).expect("header JSON");
    if let Some(n) = h["data_length"].as_u64() {
        let mut buf = vec![0; n as usize];
        r.read_exact(&mut buf).expect("data");
        h["data"] = serde_json::from_slice(&buf).expect("data JSON");
    }
    if let Some(n) = h["payload_length"].as_u64() {
        let mut buf = vec![0; n as usize];
        r.read_exact(&mut buf).expect("payload");
    }
    Some(h)
}

fn connect(port: u16) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

#[test]
fn bad_frames_get_a_clear_error_and_the_server_goes_on() {
    let port = free_port();
    let _server = server(port);

    for (wire, code, says) in [
        (&b"this is not json\n"[..], "bad_frame", "JSON"),
        (
            b"{\"type\":\"audio-chunk\",\"payload_length\":999999999}\n",
            "bad_frame",
            "exceeds the limit",
        ),
        (b"{\"data\":{}}\n", "bad_frame", "type"),
    ] {
        let (mut s, mut r) = connect(port);
        send_raw(&mut s, wire);
        let e = read_raw(&mut r).expect("an error event");
        assert_eq!(e["type"], json!("error"), "{e}");
        assert_eq!(e["data"]["code"], json!(code), "{e}");
        assert!(e["data"]["text"].as_str().unwrap().contains(says), "{e}");
        assert!(
            read_raw(&mut r).is_none(),
            "the connection is closed after it"
        );
    }

    // A request that cannot be served is refused and the connection goes on.
    let (mut s, mut r) = connect(port);
    send_raw(
        &mut s,
        b"{\"type\":\"audio-start\",\"data\":{\"rate\":16000,\"width\":4,\"channels\":1}}\n",
    );
    let e = read_raw(&mut r).unwrap();
    assert_eq!(e["data"]["code"], json!("bad_audio"), "{e}");
    assert!(
        e["data"]["text"].as_str().unwrap().contains("16-bit"),
        "{e}"
    );
    // Unknown events are ignored; a ping still answers.
    send_raw(
        &mut s,
        b"{\"type\":\"run-satellite\"}\n{\"type\":\"ping\",\"data\":{\"text\":\"hi\"}}\n",
    );
    let p = read_raw(&mut r).unwrap();
    assert_eq!(p["type"], json!("pong"), "{p}");
    assert_eq!(p["data"]["text"], json!("hi"));
    send_raw(
        &mut s,
        b"{\"type\":\"synthesize\",\"data\":{\"text\":\"  \"}}\n",
    );
    let e = read_raw(&mut r).unwrap();
    assert_eq!(e["data"]["code"], json!("bad_request"), "{e}");
}

#[test]
fn an_exposed_wyoming_port_needs_an_explicit_yes() {
    let home = Home::new();
    let out = home.run(
        &["serve", "--port", "0"],
        &[
            ("CODA__WYOMING__ENABLED", "true"),
            ("CODA__WYOMING__HOST", "0.0.0.0"),
        ],
    );
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("wyoming.allow_remote"),
        "{}",
        out.stderr
    );
}
