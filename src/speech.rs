//! Speech output and sound devices from the command line: building the configured speech
//! engine, `coda say`, `coda devices`, `coda bench tts` and `coda bench audio`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use coda_actors::llm::http::HttpOptions;
use coda_actors::tts::espeak::{EspeakConfig, EspeakEngine};
use coda_actors::tts::remote::{
    ElevenLabsConfig, ElevenLabsEngine, FallbackEngine, OpenAiSpeechConfig, OpenAiSpeechEngine,
};
use coda_actors::tts::{Audio, SentenceSplitter, TtsEngine, TtsOutput};

use crate::config::Settings;

/// Playback and `tts_audio` settings from `[tts]` and `[audio]`.
pub fn tts_output(s: &Settings) -> TtsOutput {
    TtsOutput {
        play: s.tts.play,
        device: s.audio.output_device.clone(),
        stream_audio: s.tts.stream_audio,
    }
}

fn env_key(var: &str) -> Option<String> {
    if var.is_empty() {
        return None;
    }
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

fn espeak(s: &Settings, voice: Option<&str>) -> Arc<dyn TtsEngine> {
    Arc::new(EspeakEngine::new(EspeakConfig {
        binary: PathBuf::from(&s.tts.binary),
        voice: voice.unwrap_or(&s.tts.voice).to_string(),
        rate: s.tts.rate,
    }))
}

/// The speech engine `[tts]` names (or `engine`), with espeak-ng behind a remote engine
/// when `tts.fallback` says so.
pub fn tts_engine(
    s: &Settings,
    engine: Option<&str>,
    voice: Option<&str>,
) -> anyhow::Result<Arc<dyn TtsEngine>> {
    let name = engine.unwrap_or(&s.tts.engine);
    let http = HttpOptions {
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Settings::secs(s.tts.timeout_s),
        max_retries: 0,
        ..Default::default()
    };
    let timeout = Settings::secs(s.tts.timeout_s);
    let remote: Arc<dyn TtsEngine> = match name {
        "espeak-ng" | "espeak" => return Ok(espeak(s, voice)),
        "elevenlabs" => {
            let e = &s.tts.elevenlabs;
            Arc::new(ElevenLabsEngine::new(ElevenLabsConfig {
                base_url: e.base_url.clone(),
                api_key: env_key(&e.api_key_env),
                voice_id: voice.unwrap_or(&e.voice_id).to_string(),
                model_id: e.model_id.clone(),
                output_format: e.output_format.clone(),
                timeout,
                http,
            })?)
        }
        "openai" => {
            let o = &s.tts.openai;
            Arc::new(OpenAiSpeechEngine::new(OpenAiSpeechConfig {
                base_url: o.base_url.clone(),
                api_key: env_key(&o.api_key_env),
                model: o.model.clone(),
                voice: voice.unwrap_or(&o.voice).to_string(),
                response_format: o.response_format.clone(),
                timeout,
                http,
            })?)
        }
        other => {
            anyhow::bail!("unknown speech engine {other:?} (known: espeak-ng, elevenlabs, openai)")
        }
    };
    if s.tts.fallback.is_empty() {
        Ok(remote)
    } else {
        Ok(Arc::new(FallbackEngine::new(remote, espeak(s, None))))
    }
}

/// `coda say` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct SayArgs {
    /// What to say.
    pub text: String,
    /// Write a WAV file (16-bit mono) instead of playing.
    #[arg(short, long, value_name = "FILE.wav")]
    pub output: Option<PathBuf>,
    /// Engine: espeak-ng, elevenlabs, openai (default: tts.engine).
    #[arg(long)]
    pub engine: Option<String>,
    /// Voice (engine-specific; default: the engine's configured voice).
    #[arg(long)]
    pub voice: Option<String>,
}

/// Linear-interpolation rate change (only when sentences came back at different rates,
/// e.g. a fallback engine spoke one of them).
fn retime(samples: &[i16], from: u32, to: u32) -> Vec<i16> {
    if from == to || samples.is_empty() {
        return samples.to_vec();
    }
    let n = (samples.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    (0..n)
        .map(|i| {
            let x = i as f64 * f64::from(from) / f64::from(to);
            let j = x.floor() as usize;
            let f = x - j as f64;
            let a = f64::from(samples[j.min(samples.len() - 1)]);
            let b = f64::from(samples[(j + 1).min(samples.len() - 1)]);
            (a + (b - a) * f).round() as i16
        })
        .collect()
}

/// Writes 16-bit mono PCM as a WAV file.
pub fn write_wav(path: &std::path::Path, audio: &Audio) -> anyhow::Result<()> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: audio.sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec)
        .with_context(|| format!("cannot create {}", path.display()))?;
    for &s in &audio.samples {
        w.write_sample(s)?;
    }
    w.finalize()
        .with_context(|| format!("cannot finish {}", path.display()))?;
    Ok(())
}

/// `coda say`.
pub fn say(s: &Settings, args: SayArgs) -> anyhow::Result<()> {
    let engine = tts_engine(s, args.engine.as_deref(), args.voice.as_deref())?;
    let mut splitter = SentenceSplitter::new();
    let mut sentences = splitter.push(&args.text);
    sentences.extend(splitter.finish());
    if sentences.is_empty() {
        anyhow::bail!("nothing to say");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let speak = |text: String| {
            let engine = engine.clone();
            async move {
                match engine.synthesize_reported(&text).await {
                    Ok((audio, covered)) => {
                        if let Some(e) = covered {
                            eprintln!(
                                "note: {} failed ({e}); spoke with {}",
                                engine.name(),
                                engine.fallback_name().unwrap_or("the fallback")
                            );
                        }
                        Ok(audio)
                    }
                    Err(e) => Err(anyhow::anyhow!("{}: {e}", engine.name())),
                }
            }
        };
        match args.output {
            Some(path) => {
                let mut all = Audio {
                    samples: Vec::new(),
                    sample_rate: 0,
                };
                for text in sentences {
                    let a = speak(text).await?;
                    if all.sample_rate == 0 {
                        all.sample_rate = a.sample_rate;
                    }
                    all.samples
                        .extend(retime(&a.samples, a.sample_rate, all.sample_rate));
                }
                write_wav(&path, &all)?;
                eprintln!(
                    "wrote {} ({:.2} s at {} Hz)",
                    path.display(),
                    all.duration_ms() / 1000.0,
                    all.sample_rate
                );
                Ok(())
            }
            None => play_sentences(s, sentences, speak).await,
        }
    })
}

#[cfg(feature = "audio")]
async fn play_sentences<F, Fut>(
    s: &Settings,
    sentences: Vec<String>,
    speak: F,
) -> anyhow::Result<()>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Audio>>,
{
    let device = s.audio.output_device.clone();
    let speaker = tokio::task::spawn_blocking(move || coda_actors::audio::Speaker::open(&device))
        .await?
        .map_err(|e| {
            anyhow::anyhow!("cannot play: {e}. Write a file instead: coda say TEXT -o out.wav")
        })?;
    // The next sentence is synthesised while the previous one plays.
    let mut playing: Option<tokio::task::JoinHandle<coda_actors::audio::PlayOutcome>> = None;
    for text in sentences {
        let audio = speak(text).await?;
        if let Some(p) = playing.take() {
            p.await?;
        }
        let sp = speaker.clone();
        let samples = coda_actors::audio::convert::i16_to_f32(&audio.samples);
        playing = Some(tokio::spawn(async move {
            sp.play(samples, audio.sample_rate).await
        }));
    }
    if let Some(p) = playing {
        if let coda_actors::audio::PlayOutcome::Failed(why) = p.await? {
            anyhow::bail!("playback failed: {why}");
        }
    }
    Ok(())
}

#[cfg(not(feature = "audio"))]
async fn play_sentences<F, Fut>(_: &Settings, _: Vec<String>, _: F) -> anyhow::Result<()>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Audio>>,
{
    anyhow::bail!(
        "{}; write a file instead: coda say TEXT -o out.wav",
        coda_actors::audio::NO_AUDIO_BUILD
    )
}

/// `coda devices`.
pub fn devices(json: bool) -> anyhow::Result<()> {
    let list = match coda_actors::audio::list_devices() {
        Ok(l) => l,
        Err(e) => anyhow::bail!("cannot list sound devices: {e}"),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!("audio host: {}", list.host);
    for (title, devs) in [("inputs", &list.inputs), ("outputs", &list.outputs)] {
        println!("{title}:");
        if devs.is_empty() {
            println!("  (none)");
        }
        for d in devs.iter() {
            let mark = if d.is_default { "*" } else { " " };
            let name = if d.name != d.id {
                format!("{}  ({})", d.id, d.name)
            } else {
                d.id.clone()
            };
            match &d.default_config {
                Some(c) => println!(
                    "  {mark} {name}: default {} ch, {} Hz, {}",
                    c.channels, c.min_rate, c.format
                ),
                None => println!("  {mark} {name}: not usable now"),
            }
            // One line per sample format: channel and rate ranges (plugins such as
            // ALSA's `null` list every channel count separately).
            let mut formats: Vec<(String, u16, u16, u32, u32)> = Vec::new();
            for c in &d.configs {
                match formats.iter_mut().find(|f| f.0 == c.format) {
                    Some(f) => {
                        f.1 = f.1.min(c.channels);
                        f.2 = f.2.max(c.channels);
                        f.3 = f.3.min(c.min_rate);
                        f.4 = f.4.max(c.max_rate);
                    }
                    None => formats.push((
                        c.format.clone(),
                        c.channels,
                        c.channels,
                        c.min_rate,
                        c.max_rate,
                    )),
                }
            }
            for (format, ch_lo, ch_hi, lo, hi) in formats {
                let ch = if ch_lo == ch_hi {
                    format!("{ch_lo}")
                } else {
                    format!("{ch_lo}-{ch_hi}")
                };
                println!("        {format}: {ch} ch, {lo}-{hi} Hz");
            }
            if let Some(e) = &d.error {
                println!("        (configs unavailable: {e})");
            }
        }
    }
    let usable =
        |v: &Vec<coda_actors::audio::DeviceInfo>| v.iter().any(|d| d.default_config.is_some());
    if !usable(&list.inputs) && !usable(&list.outputs) {
        println!(
            "no usable sound device: this machine has no sound card (or ALSA cannot reach it). \
Speech is still synthesised (coda say -o FILE.wav) and clients can send audio frames."
        );
    }
    println!("(* = default; put an id in audio.input_device / audio.output_device)");
    Ok(())
}

/// `coda bench tts` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct TtsBenchArgs {
    /// Engine: espeak-ng, elevenlabs, openai (default: tts.engine).
    #[arg(long)]
    pub engine: Option<String>,
    /// Measured runs (after one warm-up).
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// For elevenlabs/openai: talk to an in-process loopback server speaking the API's
    /// wire format (measures the client's own overhead; no network, no key).
    #[arg(long)]
    pub loopback: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// The two-sentence answer every run speaks.
pub const BENCH_ANSWER: &str =
    "The weather today is sunny and warm. You might want to bring your sunglasses.";

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(|a, b| a.total_cmp(b));
    serde_json::json!({"p50_ms": pct(&v, 0.5), "p95_ms": pct(&v, 0.95), "max_ms": v.last().copied().unwrap_or(0.0), "n": v.len()})
}

/// `coda bench tts`.
pub fn bench_tts(s: &Settings, args: TtsBenchArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut settings = s.clone();
        let name = args.engine.clone().unwrap_or_else(|| s.tts.engine.clone());
        // The loopback server must outlive the runs.
        let mut _server = None;
        if args.loopback && (name == "elevenlabs" || name == "openai") {
            use coda_actors::llm::scripted::{Reply, ScriptedServer, Step};
            // 1.5 s of a tone as s16le, streamed in 20 chunks.
            let rate = if name == "openai" { 24_000 } else { 22_050 };
            let pcm: Vec<u8> = (0..rate * 3 / 2)
                .flat_map(|i| {
                    let v = (8000.0
                        * (2.0 * std::f32::consts::PI * 200.0 * i as f32 / rate as f32).sin())
                        as i16;
                    v.to_le_bytes()
                })
                .collect();
            let server = ScriptedServer::start(move |_| {
                let steps = pcm
                    .chunks(pcm.len() / 20 + 1)
                    .map(|c| Step::Write(c.to_vec()))
                    .collect();
                Reply::stream("audio/pcm", steps)
            })
            .await?;
            settings.tts.elevenlabs.base_url = server.url();
            settings.tts.openai.base_url = format!("{}/v1", server.url());
            settings.tts.fallback = String::new();
            _server = Some(server);
        }
        let engine = tts_engine(&settings, Some(&name), None)?;
        let mut splitter = SentenceSplitter::new();
        let mut sentences = splitter.push(BENCH_ANSWER);
        sentences.extend(splitter.finish());
        let mut first = Vec::new();
        let mut total = Vec::new();
        for run in 0..=args.runs {
            let t0 = Instant::now();
            let mut ttfa = 0.0;
            for (i, text) in sentences.iter().enumerate() {
                engine
                    .synthesize(text)
                    .await
                    .map_err(|e| anyhow::anyhow!("{}: {e}", engine.name()))?;
                if i == 0 {
                    ttfa = t0.elapsed().as_secs_f64() * 1000.0;
                }
            }
            if run > 0 {
                first.push(ttfa);
                total.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
        }
        let report = serde_json::json!({
            "engine": engine.name(),
            "loopback": args.loopback,
            "sentences": sentences.len(),
            "first_audio": summary(first),
            "total": summary(total),
        });
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!(
                "tts {}{}: {} runs of a {}-sentence answer",
                engine.name(),
                if args.loopback {
                    " (loopback server)"
                } else {
                    ""
                },
                args.runs,
                sentences.len()
            );
            for k in ["first_audio", "total"] {
                println!(
                    "  {k:<12} p50 {:>8.1} ms  p95 {:>8.1} ms  max {:>8.1} ms",
                    report[k]["p50_ms"].as_f64().unwrap_or(0.0),
                    report[k]["p95_ms"].as_f64().unwrap_or(0.0),
                    report[k]["max_ms"].as_f64().unwrap_or(0.0)
                );
            }
        }
        Ok(())
    })
}

/// `coda bench audio` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct AudioBenchArgs {
    /// Measured runs of each figure.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `coda bench audio`: interrupt → playback stopped on the output device, and end of
/// speech → `SpeechAudio::Ended` through AudioCapture's VAD (espeak-ng speech fed in real
/// time).
pub fn bench_audio(s: &Settings, args: AudioBenchArgs) -> anyhow::Result<()> {
    let mut report = serde_json::Map::new();
    match bench_interrupt(s, args.runs) {
        Ok(v) => {
            report.insert("interrupt".into(), v);
        }
        Err(e) => {
            report.insert(
                "interrupt".into(),
                serde_json::json!({"error": e.to_string()}),
            );
        }
    }
    report.insert(
        "end_of_speech".into(),
        bench_end_of_speech(s, args.runs.min(5))?,
    );
    let report = serde_json::Value::Object(report);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let ms = |v: &serde_json::Value| {
            format!(
                "p50 {:.2} ms  p95 {:.2} ms  max {:.2} ms  (n={})",
                v["p50_ms"].as_f64().unwrap_or(0.0),
                v["p95_ms"].as_f64().unwrap_or(0.0),
                v["max_ms"].as_f64().unwrap_or(0.0),
                v["n"].as_u64().unwrap_or(0)
            )
        };
        let i = &report["interrupt"];
        match i["error"].as_str() {
            Some(e) => println!("interrupt: not measured ({e})"),
            None => {
                println!(
                    "interrupt on output `{}`:",
                    i["device"].as_str().unwrap_or("?")
                );
                println!(
                    "  stop acknowledged          {}",
                    ms(&i["stop_acknowledged"])
                );
                println!(
                    "  last sample pulled after   {}",
                    ms(&i["last_sample_pulled_after_interrupt"])
                );
            }
        }
        let e = &report["end_of_speech"];
        println!(
            "end of speech -> Ended (audio.silence_ms = {}): {}",
            e["silence_ms"],
            ms(&e["speech_end_to_ended"])
        );
    }
    Ok(())
}

#[cfg(feature = "audio")]
fn bench_interrupt(s: &Settings, runs: usize) -> anyhow::Result<serde_json::Value> {
    let speaker = coda_actors::audio::Speaker::open(&s.audio.output_device)
        .map_err(|e| anyhow::anyhow!("no output device: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut ack, mut silent) = (Vec::new(), Vec::new());
    rt.block_on(async {
        for _ in 0..runs {
            // A minute of tone: far longer than any run, so only the stop can end it.
            let tone: Vec<f32> = (0..22_050 * 60)
                .map(|i| 0.2 * (2.0 * std::f32::consts::PI * 220.0 * i as f32 / 22_050.0).sin())
                .collect();
            let sp = speaker.clone();
            let playing = tokio::spawn(async move { sp.play(tone, 22_050).await });
            // Until the device pulls our samples.
            let deadline = Instant::now() + Duration::from_secs(3);
            let start = speaker.last_pull();
            while speaker.last_pull() == start && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            let t = Instant::now();
            let took = speaker.stop().await;
            ack.push(took.as_secs_f64() * 1000.0);
            // The last pull of our samples after the stop, once pulls have ceased.
            let mut last = speaker.last_pull();
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let now = speaker.last_pull();
                if now == last {
                    break;
                }
                last = now;
            }
            let after = last
                .map(|l| l.saturating_duration_since(t).as_secs_f64() * 1000.0)
                .unwrap_or(0.0);
            silent.push(after);
            let _ = playing.await;
        }
    });
    Ok(serde_json::json!({
        "device": speaker.device(),
        "stop_acknowledged": summary(ack),
        "last_sample_pulled_after_interrupt": summary(silent),
    }))
}

#[cfg(not(feature = "audio"))]
fn bench_interrupt(_: &Settings, _: usize) -> anyhow::Result<serde_json::Value> {
    anyhow::bail!(coda_actors::audio::NO_AUDIO_BUILD)
}

fn bench_end_of_speech(s: &Settings, runs: usize) -> anyhow::Result<serde_json::Value> {
    use actix::Actor as _;
    use coda_actors::audio::{AudioCapture, FeedAudio, StartFeed, StopCapture};
    use coda_actors::voice::SpeechAudio;
    let out = std::process::Command::new(&s.tts.binary)
        .args([
            "--stdout",
            "-v",
            &s.tts.voice,
            "Turn on the kitchen lights please.",
        ])
        .output()
        .context("espeak-ng is needed for this benchmark")?;
    let audio = coda_actors::tts::espeak::parse_wav(&out.stdout)
        .map_err(|e| anyhow::anyhow!("espeak-ng: {e}"))?;
    let speech =
        coda_actors::audio::convert::to_speech_rate_i16(&audio.samples, audio.sample_rate, 1)?;
    // The last sample louder than -40 dBFS ends the speech.
    let end = speech
        .iter()
        .rposition(|x| x.abs() > 0.01)
        .unwrap_or(speech.len());
    let speech = speech[..end].to_vec();
    let settings = s.audio_settings();
    let system = actix_rt::System::new();
    let lat = system.block_on(async move {
        let hub = coda_actors::hub::EventHub::start_hub(coda_actors::hub::HubSettings::default());
        let components = coda_actors::components::ComponentRegistry::new();
        let sup = coda_actors::supervise::Supervision::new(
            "audio",
            Default::default(),
            hub.clone(),
            components.clone(),
        );
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(SpeechAudio, Instant)>();
        let sink = Collector(tx).start();
        let capture = AudioCapture::new(sup, components, settings, Some(sink.recipient())).start();
        let mut lat = Vec::new();
        for run in 0..runs {
            let session = format!("bench-{run}");
            let _ = capture
                .send(StartFeed {
                    session_id: session.clone(),
                    mode: coda_protocol::SttMode::Continuous,
                })
                .await;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let silence = vec![0.0f32; 320];
            for _ in 0..25 {
                tick.tick().await;
                capture.do_send(FeedAudio {
                    samples: silence.clone(),
                });
            }
            for c in speech.chunks(320) {
                tick.tick().await;
                capture.do_send(FeedAudio {
                    samples: c.to_vec(),
                });
            }
            let spoken_end = Instant::now();
            let mut ended = None;
            for _ in 0..150 {
                tick.tick().await;
                capture.do_send(FeedAudio {
                    samples: silence.clone(),
                });
                while let Ok((m, at)) = rx.try_recv() {
                    if matches!(m, SpeechAudio::Ended { .. }) {
                        ended = Some(at);
                    }
                }
                if ended.is_some() {
                    break;
                }
            }
            let _ = capture
                .send(StopCapture {
                    session_id: session,
                })
                .await;
            if let Some(at) = ended {
                lat.push(at.duration_since(spoken_end).as_secs_f64() * 1000.0);
            }
        }
        lat
    });
    Ok(serde_json::json!({
        "silence_ms": s.audio.silence_ms,
        "speech_end_to_ended": summary(lat),
    }))
}

struct Collector(tokio::sync::mpsc::UnboundedSender<(coda_actors::voice::SpeechAudio, Instant)>);

impl actix::Actor for Collector {
    type Context = actix::Context<Self>;
}

impl actix::Handler<coda_actors::voice::SpeechAudio> for Collector {
    type Result = ();

    fn handle(&mut self, msg: coda_actors::voice::SpeechAudio, _: &mut actix::Context<Self>) {
        let _ = self.0.send((msg, Instant::now()));
    }
}
