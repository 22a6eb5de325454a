//! `coda bench voice`: the spoken turn end to end on the configured stack (by default the
//! shipped one: embedded model, whisper, espeak-ng). Starts a real `coda serve`, streams
//! WAVs as client audio over a real WebSocket in real time, and prints the waterfall
//! from the end of speech: end of the utterance (detector), transcript, first LLM token,
//! first audio — p50/p95 per listening mode. In wake mode each question follows "Hey
//! Coda." and the wake word's detection is timed from the end of the word.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::cmd::ConfigChoice;

/// `coda bench voice` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct VoiceBenchArgs {
    /// WAV files to stream, used in turn (default: spoken questions made with espeak-ng).
    #[arg(long = "wav", value_name = "FILE")]
    pub wavs: Vec<PathBuf>,
    /// Measured turns per mode (after one warm-up turn).
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// `push_to_talk`, `continuous`, `wake`, `both` (the first two) or `all`.
    #[arg(long, default_value = "both")]
    pub mode: String,
    /// Push-to-talk: silence sent after the speech before `stt_stop` (a person lets go of
    /// the button a moment after speaking), ms.
    #[arg(long, default_value_t = 250)]
    pub release_ms: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

const QUESTIONS: &[&str] = &[
    "What is the tallest mountain in the world?",
    "Tell me a fact about the moon.",
    "Why is the sky blue?",
    "Who wrote the book Moby Dick?",
];

/// One utterance: PCM s16le at 16 kHz and where its speech ends.
struct Utterance {
    pcm: Vec<u8>,
    speech_end_frame: usize,
}

fn utterance(path: &Path) -> anyhow::Result<Utterance> {
    let samples = coda_actors::audio::convert::read_wav_16k(path)?;
    // The last 20 ms frame louder than -45 dBFS ends the speech.
    let speech_end_frame = samples
        .chunks(320)
        .rposition(|f| coda_actors::audio::convert::rms(f) > 0.0056)
        .map_or(0, |i| i + 1);
    let pcm = samples
        .iter()
        .flat_map(|s| ((s.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes())
        .collect();
    Ok(Utterance {
        pcm,
        speech_end_frame,
    })
}

fn speak(path: &Path, text: &str) -> anyhow::Result<()> {
    super::espeak_wav(path, text).context("making the questions; pass --wav FILE")
}

fn spoken(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    QUESTIONS
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let path = dir.join(format!("q{i}.wav"));
            speak(&path, q)?;
            Ok(path)
        })
        .collect()
}

/// How a turn is listened for.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Listen {
    PushToTalk,
    Continuous,
    Wake,
}

impl Listen {
    fn name(self) -> &'static str {
        match self {
            Listen::PushToTalk => "push_to_talk",
            Listen::Continuous => "continuous",
            Listen::Wake => "wake",
        }
    }
}

/// One turn's waterfall, ms from the end of speech.
#[derive(Debug, Default, Clone, serde::Serialize)]
struct Waterfall {
    /// Wake mode: `wake_detected` at the client, from the end of the wake word.
    wake_ms: Option<f64>,
    endpoint_ms: Option<f64>,
    stt_wait_ms: Option<f64>,
    stt_ms: Option<f64>,
    transcript_ms: Option<f64>,
    llm_first_token_ms: Option<f64>,
    first_audio_ms: Option<f64>,
    text: String,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send_json(ws: &mut Ws, v: Value) -> anyhow::Result<()> {
    ws.send(Message::Text(v.to_string().into())).await?;
    Ok(())
}

/// Streams `u` in real time (then silence in continuous mode) and reads events until the
/// turn's `latency_trace`.
async fn run_turn(
    ws: &mut Ws,
    u: &Utterance,
    listen: Listen,
    wake: Option<&Utterance>,
    release_ms: usize,
) -> anyhow::Result<Waterfall> {
    let ptt = listen == Listen::PushToTalk;
    if ptt {
        send_json(
            ws,
            json!({"type":"stt_start","data":{"mode":"push_to_talk","source":"client"}}),
        )
        .await?;
    }
    let silence = vec![0u8; 640];
    // Wake mode: "Hey Coda.", a short pause, the question.
    let (mut frames, word_end, offset): (Vec<&[u8]>, Option<usize>, usize) = match wake {
        Some(word) if listen == Listen::Wake => {
            let mut f: Vec<&[u8]> = word.pcm.chunks(640).take(word.speech_end_frame).collect();
            let end = f.len();
            f.extend(std::iter::repeat_n(silence.as_slice(), 12));
            let offset = f.len();
            f.extend(u.pcm.chunks(640));
            (f, Some(end), offset)
        }
        _ => (u.pcm.chunks(640).collect(), None, 0),
    };
    let mut word_ended: Option<Instant> = None;
    if ptt {
        frames.truncate(u.speech_end_frame);
        frames.extend(std::iter::repeat_n(silence.as_slice(), release_ms / 20));
    }
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut speech_end: Option<Instant> = None;
    let mut w = Waterfall::default();
    let mut turn: Option<String> = None;
    let mut sent = 0usize;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if Instant::now() > deadline {
            bail!("no whole turn within 120 s");
        }
        tokio::select! {
            _ = tick.tick() => {
                if sent < frames.len() {
                    ws.send(Message::Binary(frames[sent].to_vec().into())).await?;
                    sent += 1;
                    if Some(sent) == word_end {
                        word_ended = Some(Instant::now());
                    }
                    if sent == offset + u.speech_end_frame && !ptt {
                        speech_end = Some(Instant::now());
                    }
                    if sent == frames.len() && ptt {
                        send_json(ws, json!({"type":"stt_stop","data":{}})).await?;
                        speech_end = Some(Instant::now());
                    }
                } else if !ptt {
                    ws.send(Message::Binary(silence.clone().into())).await?;
                }
            }
            msg = ws.next() => {
                let Some(msg) = msg else { bail!("the server closed the connection") };
                let Message::Text(text) = msg? else { continue };
                let v: Value = serde_json::from_str(&text)?;
                let at = speech_end.map(|e| Instant::now().saturating_duration_since(e).as_secs_f64() * 1000.0);
                let ty = v["type"].as_str().unwrap_or("");
                let of_turn = turn.as_deref().is_some_and(|t| v["data"]["turn_id"] == json!(t));
                match ty {
                    "stt_error" | "llm_error" if turn.is_none() || of_turn => {
                        bail!("{ty}: {}", v["data"]["message"]);
                    }
                    "command_error" => bail!("refused: {}", v["data"]["message"]),
                    "wake_detected" if w.wake_ms.is_none() => {
                        w.wake_ms = word_ended
                            .map(|e| Instant::now().saturating_duration_since(e).as_secs_f64() * 1000.0);
                    }
                    "stt_result" if turn.is_none() => {
                        turn = v["data"]["turn_id"].as_str().map(str::to_string);
                        w.transcript_ms = at;
                        w.text = v["data"]["text"].as_str().unwrap_or("").to_string();
                    }
                    "llm_token" if of_turn && w.llm_first_token_ms.is_none() => w.llm_first_token_ms = at,
                    "latency_trace" if of_turn => {
                        let d = &v["data"];
                        w.endpoint_ms = d["endpoint_ms"].as_f64();
                        w.stt_wait_ms = d["stt_wait_ms"].as_f64();
                        w.stt_ms = d["stt_ms"].as_f64();
                        w.first_audio_ms = d["tts_first_audio_ms"].as_f64();
                        if listen == Listen::Wake {
                            // The next question must need the wake word again: wait out
                            // the follow-up window.
                            follow_up_over(ws).await?;
                        }
                        return Ok(w);
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Reads events until the follow-up window after an answer has closed.
async fn follow_up_over(ws: &mut Ws) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(130);
    let mut opened = false;
    loop {
        let Ok(msg) = tokio::time::timeout_at(deadline, ws.next()).await else {
            bail!("the follow-up window did not close");
        };
        let Some(msg) = msg else {
            bail!("the server closed the connection")
        };
        let Message::Text(text) = msg? else { continue };
        let v: Value = serde_json::from_str(&text)?;
        if v["type"] == "mode_change" {
            match v["data"]["mode"].as_str() {
                Some("listening_follow_up") => opened = true,
                Some("idle") if opened => return Ok(()),
                _ => {}
            }
        }
    }
}

#[derive(Debug, serde::Serialize)]
struct Stage {
    stage: &'static str,
    p50_ms: f64,
    p95_ms: f64,
    n: usize,
}

fn stages(turns: &[Waterfall]) -> Vec<Stage> {
    type Pick = fn(&Waterfall) -> Option<f64>;
    let pick: [(&'static str, Pick); 7] = [
        ("wake word detected", |w| w.wake_ms),
        ("utterance end (detector)", |w| w.endpoint_ms),
        ("stt after the end", |w| w.stt_wait_ms),
        ("stt run (may start early)", |w| w.stt_ms),
        ("transcript at the client", |w| w.transcript_ms),
        ("first LLM token", |w| w.llm_first_token_ms),
        ("first audio", |w| w.first_audio_ms),
    ];
    pick.iter()
        .map(|(stage, f)| {
            let mut v: Vec<f64> = turns.iter().filter_map(f).collect();
            v.sort_by(f64::total_cmp);
            let q = |p: f64| {
                if v.is_empty() {
                    f64::NAN
                } else {
                    super::pct(&v, p)
                }
            };
            Stage {
                stage,
                p50_ms: q(0.5),
                p95_ms: q(0.95),
                n: v.len(),
            }
        })
        .collect()
}

/// `coda bench voice`.
pub fn run(choice: &ConfigChoice, args: &VoiceBenchArgs) -> anyhow::Result<()> {
    use Listen::*;
    let modes: &[Listen] = match args.mode.as_str() {
        "push_to_talk" => &[PushToTalk],
        "continuous" => &[Continuous],
        "wake" => &[Wake],
        "both" => &[PushToTalk, Continuous],
        "all" => &[PushToTalk, Continuous, Wake],
        other => bail!("--mode {other:?}: use push_to_talk, continuous, wake, both or all"),
    };
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    let tmp = tempfile::tempdir()?;
    let wavs = if args.wavs.is_empty() {
        spoken(tmp.path())?
    } else {
        args.wavs.clone()
    };
    let utterances: Vec<Utterance> = wavs
        .iter()
        .map(|p| utterance(p).with_context(|| format!("{}", p.display())))
        .collect::<anyhow::Result<_>>()?;
    let wake = if modes.contains(&Wake) {
        let path = tmp.path().join("wake.wav");
        speak(&path, "Hey Coda.")?;
        Some(utterance(&path)?)
    } else {
        None
    };
    let (_child, url) = super::spawn_server(tmp.path(), choice, &[])?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut report = serde_json::Map::new();
    rt.block_on(async {
        for &listen in modes {
            let ptt = listen == PushToTalk;
            let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
            if !ptt {
                send_json(
                    &mut ws,
                    json!({"type":"stt_start","data":{"mode":listen.name(),"source":"client"}}),
                )
                .await?;
            }
            let mut turns = Vec::new();
            for i in 0..=args.runs {
                let u = &utterances[i % utterances.len()];
                let w = run_turn(&mut ws, u, listen, wake.as_ref(), args.release_ms).await?;
                if i > 0 {
                    turns.push(w);
                }
            }
            let name = listen.name();
            let st = stages(&turns);
            if !args.json {
                if ptt {
                    println!(
                        "voice bench, {name}: {} turns, ms from stt_stop ({} ms after the last word)",
                        turns.len(),
                        args.release_ms
                    );
                } else {
                    println!(
                        "voice bench, {name}: {} turns, ms from the last voiced frame (the wake word: from its end)",
                        turns.len()
                    );
                }
                println!("  {:<28} {:>8} {:>8} {:>4}", "stage", "p50", "p95", "n");
                for s in st.iter().filter(|s| s.n > 0) {
                    println!(
                        "  {:<28} {:>8.0} {:>8.0} {:>4}",
                        s.stage, s.p50_ms, s.p95_ms, s.n
                    );
                }
                let heard: Vec<&str> = turns.iter().take(4).map(|w| w.text.as_str()).collect();
                println!("  heard: {heard:?}");
            }
            report.insert(name.into(), json!({"stages": st, "turns": turns}));
        }
        anyhow::Ok(())
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
