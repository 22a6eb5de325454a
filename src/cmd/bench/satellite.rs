//! `coda bench satellite`: a spoken turn through a satellite against the same turn on the
//! core's own input device. A real nats-server, one core (`coda serve` on its defaults,
//! its "microphone" a `file:` WAV) and, per run, a fresh `coda satellite` hearing the same
//! WAV; runs interleaved. Measured: end of speech → first audio at the satellite (the
//! satellite's own clock: its segmenter's end of speech to the first answer chunk it
//! receives), the core's figure for the same satellite turn (`latency_trace`), and the
//! core's figure for the turn heard on its own device.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use coda_actors::wake::synth::{speak, Voice};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::cluster::{nats_binary, start_nats};
use super::{pct, spawn_server_env, write_wav_16k, ChildGuard};
use crate::cmd::ConfigChoice;
use crate::config::Loaded;

/// `coda bench satellite` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct SatelliteBenchArgs {
    /// Turns through each path.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// What is asked after the wake word.
    #[arg(long, default_value = "What time is it?")]
    pub question: String,
    /// The nats-server binary (default: the one scripts/setup installs, else PATH).
    #[arg(long)]
    pub nats_server: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

const VOICE: Voice = Voice {
    voice: "en-us",
    variant: "m3",
    wpm: 160,
    pitch: 50,
};

#[derive(Debug, serde::Serialize)]
struct Report {
    runs: usize,
    question: String,
    /// End of speech → first audio, ms, per run.
    device: Vec<f64>,
    satellite_at_satellite: Vec<f64>,
    satellite_at_core: Vec<f64>,
    device_p50_ms: f64,
    satellite_p50_ms: f64,
    satellite_at_core_p50_ms: f64,
    /// Satellite (at the satellite) minus device, medians, ms.
    difference_p50_ms: f64,
}

/// `coda bench satellite`.
pub fn run(
    loaded: &Loaded,
    choice: &ConfigChoice,
    args: &SatelliteBenchArgs,
) -> anyhow::Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let bin = nats_binary(args.nats_server.clone())?;
    let tmp = tempfile::tempdir()?;
    let espeak = &loaded.settings.wake_settings().espeak;
    let silence = |ms: usize| vec![0.0f32; ms * 16];
    let mut mic = silence(500);
    mic.extend(speak(espeak, &VOICE, "Hey Coda.").context("espeak-ng")?);
    mic.extend(silence(250));
    mic.extend(speak(espeak, &VOICE, &args.question).context("espeak-ng")?);
    mic.extend(silence(4000));
    let wav = tmp.path().join("mic.wav");
    write_wav_16k(&wav, &mic)?;
    let input = format!("file:{}", wav.display());

    let (_nats, port) = start_nats(&bin, tmp.path())?;
    let url = format!("nats://127.0.0.1:{port}");
    let core_dir = tmp.path().join("core");
    std::fs::create_dir_all(&core_dir)?;
    let env = [
        ("CODA__CLUSTER__NATS_URL", url.as_str()),
        ("CODA__CLUSTER__NODE", "core"),
        ("CODA__AUDIO__INPUT_DEVICE", input.as_str()),
        // The satellite has no model to check the word with: neither has the core here.
        ("CODA__WAKE__VERIFY", "false"),
    ];
    let (_core, ws_url) = spawn_server_env(&core_dir, choice, &[], &env)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut ws, _) = rt.block_on(tokio_tungstenite::connect_async(ws_url.as_str()))?;
    let hello = serde_json::json!({"type": "hello", "id": "h", "data": {
        "client": "bench-satellite", "protocol_version": coda_protocol::PROTOCOL_VERSION,
        "subscribe": ["latency_trace", "command_error"]}});
    rt.block_on(ws.send(Message::Text(hello.to_string().into())))?;

    let exe = std::env::current_exe()?;
    let mut report = Report {
        runs: args.runs,
        question: args.question.clone(),
        device: Vec::new(),
        satellite_at_satellite: Vec::new(),
        satellite_at_core: Vec::new(),
        device_p50_ms: 0.0,
        satellite_p50_ms: 0.0,
        satellite_at_core_p50_ms: 0.0,
        difference_p50_ms: 0.0,
    };
    for i in 0..args.runs {
        // The core's own device: listening from the start of the file.
        let cmd = |t: &str, id: &str, data: serde_json::Value| {
            serde_json::json!({"type": t, "id": id, "data": data}).to_string()
        };
        let start = cmd(
            "stt_start",
            "s",
            serde_json::json!({"mode": "wake", "source": "device"}),
        );
        rt.block_on(ws.send(Message::Text(start.into())))?;
        // (The turn is the connection's own conversation.)
        let d = rt.block_on(first_audio(&mut ws, |s| !s.starts_with("sat-")))?;
        rt.block_on(ws.send(Message::Text(
            cmd("stt_stop", "t", serde_json::json!({})).into(),
        )))?;
        report.device.push(d);

        // A fresh satellite hearing the same file.
        let dir = tmp.path().join(format!("sat-{i}"));
        let mut child = Command::new(&exe)
            .args(choice.as_args())
            .args(["satellite", "--core", &url, "--name", "bench", "--output"])
            .arg(format!("file:{}", dir.join("answer.wav").display()))
            .env("CODA__STORAGE__PATH", dir.join("store"))
            .env("CODA__AUDIO__INPUT_DEVICE", &input)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let out = child.stdout.take().context("satellite stdout")?;
        let guard = ChildGuard(child);
        let at_sat = read_first_audio(out)?;
        let at_core = rt.block_on(first_audio(&mut ws, |s| s == "sat-bench"))?;
        drop(guard);
        report.satellite_at_satellite.push(at_sat);
        report.satellite_at_core.push(at_core);
        if !args.json {
            println!(
                "  run {i}: device {d:.0} ms; satellite {at_sat:.0} ms at the satellite ({at_core:.0} ms at the core)"
            );
        }
    }
    let median = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        pct(&s, 0.5)
    };
    report.device_p50_ms = median(&report.device);
    report.satellite_p50_ms = median(&report.satellite_at_satellite);
    report.satellite_at_core_p50_ms = median(&report.satellite_at_core);
    report.difference_p50_ms = report.satellite_p50_ms - report.device_p50_ms;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "satellite: end of speech → first audio, median of {} interleaved runs: core's device {:.0} ms, satellite {:.0} ms ({:+.0} ms; {:.0} ms by the core's clock)",
            report.runs,
            report.device_p50_ms,
            report.satellite_p50_ms,
            report.difference_p50_ms,
            report.satellite_at_core_p50_ms
        );
    }
    Ok(())
}

/// `tts_first_audio_ms` of the next `latency_trace` of a session `session` accepts.
async fn first_audio(
    ws: &mut crate::client::Ws,
    session: impl Fn(&str) -> bool,
) -> anyhow::Result<f64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => bail!("no latency_trace within 90 s"),
            Ok(None) => bail!("the core closed the connection"),
            Ok(Some(m)) => m?,
        };
        let Message::Text(t) = msg else { continue };
        let v: serde_json::Value = serde_json::from_str(t.as_str())?;
        if v["type"] == "command_error" {
            bail!("the core refused: {t}");
        }
        if v["type"] == "latency_trace" && session(v["session_id"].as_str().unwrap_or("")) {
            return v["data"]["tts_first_audio_ms"]
                .as_f64()
                .with_context(|| format!("no first audio in {t}"));
        }
    }
}

/// The satellite's `first audio: N ms` line.
fn read_first_audio(out: std::process::ChildStdout) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(90);
    for line in BufReader::new(out).lines() {
        let line = line?;
        if let Some(ms) = line
            .strip_prefix("first audio: ")
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
        {
            return Ok(ms);
        }
        if Instant::now() > deadline {
            break;
        }
    }
    bail!("the satellite printed no first-audio line")
}
