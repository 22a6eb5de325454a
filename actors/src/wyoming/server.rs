//! The Wyoming listener and its connections (one task each, bounded in number).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::{Addr, Recipient};
use serde_json::{json, Value};
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};

use super::answers::{AwaitAnswer, TurnAnswers};
use super::codec::{read_event, write_event, Event, FrameError, Limits};
use crate::audio::convert::Resampler16k;
use crate::kernel::KernelHandle;
use crate::orchestrator::TurnSource;
use crate::stt::Transcribe;
use crate::tts::TtsEngine;
use crate::voice::SPEECH_SAMPLE_RATE;

/// What the server offers and its limits.
#[derive(Debug, Clone)]
pub struct WyomingSettings {
    /// Connections served at once; more are told so and closed.
    pub max_connections: usize,
    /// Longest audio one request may send, s.
    pub max_audio_s: f64,
    /// A connection silent this long is closed.
    pub idle: Duration,
    /// How long a conversation turn may take to answer.
    pub answer_timeout: Duration,
    /// Names shown in `info`.
    pub stt_model: String,
    pub language: String,
    pub tts_voice: String,
}

impl Default for WyomingSettings {
    fn default() -> Self {
        WyomingSettings {
            max_connections: 16,
            max_audio_s: 30.0,
            idle: Duration::from_secs(300),
            answer_timeout: Duration::from_secs(60),
            stt_model: "whisper".into(),
            language: "en".into(),
            tts_voice: "default".into(),
        }
    }
}

/// The parts of Coda a connection uses; each absent one is not offered.
#[derive(Clone)]
pub struct WyomingServices {
    pub stt: Option<Recipient<Transcribe>>,
    pub tts: Option<Arc<dyn TtsEngine>>,
    pub kernel: KernelHandle,
    pub answers: Addr<TurnAnswers>,
    /// The wake word offered (the kernel has one), as configured.
    pub wake_word: Option<String>,
}

/// Serves connections on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, settings: WyomingSettings, services: WyomingServices) {
    let slots = Arc::new(Semaphore::new(settings.max_connections.max(1)));
    let settings = Arc::new(settings);
    let ids = AtomicU64::new(1);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "wyoming: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "wyoming: too many connections; refused");
            tokio::spawn(async move {
                let mut s = stream;
                let _ = write_event(
                    &mut s,
                    &error_event("too many connections; try again later", "busy"),
                )
                .await;
            });
            continue;
        };
        tracing::info!(%peer, id, "wyoming: connected");
        let (settings, services) = (settings.clone(), services.clone());
        tokio::spawn(async move {
            Connection::new(id, settings, services).run(stream).await;
            tracing::info!(%peer, id, "wyoming: closed");
            drop(slot);
        });
    }
}

fn error_event(text: &str, code: &str) -> Event {
    Event::new("error", json!({"text": text, "code": code}))
}

/// What the audio of the current request is for.
#[derive(Debug, Clone, PartialEq)]
enum Purpose {
    Transcribe,
    Detect,
}

/// Audio arriving between `audio-start` and `audio-stop`, as 16 kHz mono.
struct AudioIn {
    resampler: Resampler16k,
    width: u64,
    channels: u64,
    samples: Vec<f32>,
}

struct Connection {
    settings: Arc<WyomingSettings>,
    services: WyomingServices,
    session: String,
    purpose: Option<Purpose>,
    audio: Option<AudioIn>,
    wake: Option<Box<dyn crate::wake::WakeDetector>>,
    detected: bool,
}

/// A request that went wrong, said to the client as `error` (the connection goes on).
struct Refusal(String, &'static str);

impl Connection {
    fn new(id: u64, settings: Arc<WyomingSettings>, services: WyomingServices) -> Connection {
        Connection {
            settings,
            services,
            session: format!("wyoming-{id}"),
            purpose: None,
            audio: None,
            wake: None,
            detected: false,
        }
    }

    async fn run(mut self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let (rd, mut wr) = stream.into_split();
        let mut rd = BufReader::new(rd);
        loop {
            let event = match tokio::time::timeout(
                self.settings.idle,
                read_event(&mut rd, Limits::default()),
            )
            .await
            {
                Err(_) => break,
                Ok(Ok(Some(e))) => e,
                Ok(Ok(None)) | Ok(Err(FrameError::Io(_))) => break,
                Ok(Err(e)) => {
                    tracing::info!(session = %self.session, error = %e, "wyoming: unreadable frame; closing");
                    let _ = write_event(&mut wr, &error_event(&e.to_string(), "bad_frame")).await;
                    break;
                }
            };
            let replies = match self.handle(event).await {
                Ok(r) => r,
                Err(Refusal(text, code)) => vec![error_event(&text, code)],
            };
            for r in &replies {
                if write_event(&mut wr, r).await.is_err() {
                    return;
                }
            }
        }
    }

    async fn handle(&mut self, e: Event) -> Result<Vec<Event>, Refusal> {
        match e.kind.as_str() {
            "describe" => Ok(vec![self.info()]),
            "ping" => Ok(vec![Event::new(
                "pong",
                json!({"text": e.str("text").unwrap_or_default()}),
            )]),
            "transcribe" => {
                if self.services.stt.is_none() {
                    return Err(Refusal(
                        "speech-to-text is not running".into(),
                        "unavailable",
                    ));
                }
                self.purpose = Some(Purpose::Transcribe);
                Ok(vec![])
            }
            "detect" => {
                let listening = self
                    .services
                    .kernel
                    .wake_listening(&self.session)
                    .map_err(|e| Refusal(e.to_string(), "unavailable"))?;
                self.wake = Some(listening.detector);
                self.detected = false;
                self.purpose = Some(Purpose::Detect);
                Ok(vec![])
            }
            "audio-start" => {
                self.audio = Some(self.audio_start(&e)?);
                Ok(vec![])
            }
            "audio-chunk" => self.audio_chunk(&e),
            "audio-stop" => self.audio_stop().await,
            "synthesize" => self.synthesize(&e).await,
            "transcript" => self.handle_text(&e).await,
            other => {
                tracing::debug!(session = %self.session, kind = other, "wyoming: event not served; ignored");
                Ok(vec![])
            }
        }
    }

    fn info(&self) -> Event {
        let version = env!("CARGO_PKG_VERSION");
        let attribution = json!({"name": "Coda", "url": env!("CARGO_PKG_REPOSITORY")});
        let lang = json!([self.settings.language]);
        let program = |name: &str, description: &str, extra: Value| {
            let mut p = json!({
                "name": name, "description": description, "attribution": attribution,
                "installed": true, "version": version,
            });
            if let (Some(p), Value::Object(extra)) = (p.as_object_mut(), extra) {
                p.extend(extra);
            }
            p
        };
        let mut info = serde_json::Map::new();
        if self.services.stt.is_some() {
            let model = program(
                &self.settings.stt_model,
                "whisper.cpp model",
                json!({"languages": lang}),
            );
            info.insert(
                "asr".into(),
                json!([program(
                    "coda-stt",
                    "Coda speech-to-text (whisper.cpp)",
                    json!({
                        "models": [model], "supports_transcript_streaming": false,
                    })
                )]),
            );
        }
        if self.services.tts.is_some() {
            let voice = program(
                &self.settings.tts_voice,
                "Coda's voice",
                json!({"languages": lang}),
            );
            info.insert(
                "tts".into(),
                json!([program(
                    "coda-tts",
                    "Coda text-to-speech",
                    json!({
                        "voices": [voice], "supports_synthesize_streaming": false,
                    })
                )]),
            );
        }
        if let Some(word) = &self.services.wake_word {
            let model = program(
                &word.replace(' ', "_"),
                "wake word",
                json!({
                    "languages": lang, "phrase": word,
                }),
            );
            info.insert(
                "wake".into(),
                json!([program(
                    "coda-wake",
                    "Coda wake word",
                    json!({"models": [model]})
                )]),
            );
        }
        let model = program(
            "coda",
            "Coda's assistant (intents, tools, memory, LLM)",
            json!({"languages": lang}),
        );
        info.insert(
            "handle".into(),
            json!([program(
                "coda-assistant",
                "Coda conversation",
                json!({
                    "models": [model], "supports_handled_streaming": false,
                    "supports_home_control": false,
                })
            )]),
        );
        Event::new("info", Value::Object(info))
    }

    fn audio_start(&self, e: &Event) -> Result<AudioIn, Refusal> {
        let rate = e.u64("rate").unwrap_or(u64::from(SPEECH_SAMPLE_RATE));
        let width = e.u64("width").unwrap_or(2);
        let channels = e.u64("channels").unwrap_or(1);
        if width != 2 {
            return Err(Refusal(
                format!("audio width {width}: only 16-bit PCM (width 2) is accepted"),
                "bad_audio",
            ));
        }
        if !(1..=8).contains(&channels) || !(8_000..=48_000).contains(&rate) {
            return Err(Refusal(
                format!("audio of {channels} channels at {rate} Hz: 1–8 channels at 8–48 kHz are accepted"),
                "bad_audio",
            ));
        }
        let resampler = Resampler16k::new(rate as u32)
            .map_err(|e| Refusal(format!("cannot resample {rate} Hz: {e}"), "bad_audio"))?;
        Ok(AudioIn {
            resampler,
            width,
            channels,
            samples: Vec::new(),
        })
    }

    fn audio_chunk(&mut self, e: &Event) -> Result<Vec<Event>, Refusal> {
        if self.audio.is_none() {
            // A chunk without a start: its own fields describe it.
            self.audio = Some(self.audio_start(e)?);
        }
        let max = (self.settings.max_audio_s * f64::from(SPEECH_SAMPLE_RATE)) as usize;
        let Some(audio) = self.audio.as_mut() else {
            return Ok(vec![]);
        };
        let payload = e.payload.as_deref().unwrap_or_default();
        let frame = (audio.width * audio.channels) as usize;
        if !payload.len().is_multiple_of(frame) {
            return Err(Refusal(
                format!(
                    "audio chunk of {} bytes is not whole frames of {frame} bytes",
                    payload.len()
                ),
                "bad_audio",
            ));
        }
        let mono: Vec<f32> = payload
            .chunks_exact(frame)
            .map(|f| {
                let sum: f32 = f
                    .chunks_exact(2)
                    .map(|s| f32::from(i16::from_le_bytes([s[0], s[1]])) / 32768.0)
                    .sum();
                sum / audio.channels as f32
            })
            .collect();
        let samples = audio.resampler.push(&mono);
        if let (Some(Purpose::Detect), Some(wake)) = (&self.purpose, self.wake.as_mut()) {
            if !self.detected {
                if let Some(d) = wake.push(&samples) {
                    self.detected = true;
                    return Ok(vec![detection(&d)]);
                }
            }
            return Ok(vec![]);
        }
        if audio.samples.len() + samples.len() > max {
            self.audio = None;
            return Err(Refusal(
                format!(
                    "more than {:.0} s of audio in one request; dropped",
                    self.settings.max_audio_s
                ),
                "too_long",
            ));
        }
        audio.samples.extend(samples);
        Ok(vec![])
    }

    async fn audio_stop(&mut self) -> Result<Vec<Event>, Refusal> {
        let audio = self.audio.take();
        match self.purpose.take() {
            Some(Purpose::Detect) => {
                let Some(mut wake) = self.wake.take() else {
                    return Ok(vec![]);
                };
                if self.detected {
                    return Ok(vec![]);
                }
                // The word's check may still be running: give it trailing silence to
                // report on, as a live stream would.
                let quiet = vec![0.0f32; SPEECH_SAMPLE_RATE as usize / 20];
                for _ in 0..40 {
                    if let Some(d) = wake.push(&quiet) {
                        return Ok(vec![detection(&d)]);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(vec![Event::new("not-detected", json!({}))])
            }
            // Audio after `transcribe`, or audio alone (as `transcribe` is optional).
            Some(Purpose::Transcribe) | None => {
                let Some(audio) = audio else {
                    return Ok(vec![]);
                };
                let Some(stt) = self.services.stt.clone() else {
                    return Err(Refusal(
                        "speech-to-text is not running".into(),
                        "unavailable",
                    ));
                };
                let samples: Arc<[f32]> = audio.samples.into();
                let t = stt
                    .send(Transcribe { samples })
                    .await
                    .map_err(|_| Refusal("speech-to-text is restarting".into(), "unavailable"))?
                    .map_err(|e| Refusal(e, "stt_failed"))?;
                Ok(vec![Event::new(
                    "transcript",
                    json!({"text": t.text, "language": t.language}),
                )])
            }
        }
    }

    async fn synthesize(&mut self, e: &Event) -> Result<Vec<Event>, Refusal> {
        let Some(tts) = self.services.tts.clone() else {
            return Err(Refusal(
                "text-to-speech is not running".into(),
                "unavailable",
            ));
        };
        let text = e.str("text").unwrap_or_default().trim().to_string();
        if text.is_empty() {
            return Err(Refusal(
                "synthesize needs a non-empty `text`".into(),
                "bad_request",
            ));
        }
        let audio = tts
            .synthesize(&text)
            .await
            .map_err(|e| Refusal(e.to_string(), "tts_failed"))?;
        let format = json!({"rate": audio.sample_rate, "width": 2, "channels": 1});
        let mut out = vec![Event::new("audio-start", format.clone())];
        // Half a second a chunk.
        let per = (audio.sample_rate as usize / 2).max(1);
        for (i, chunk) in audio.samples.chunks(per).enumerate() {
            let mut data = format.clone();
            data["timestamp"] = json!((i * per * 1000) / audio.sample_rate.max(1) as usize);
            let bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
            out.push(Event::new("audio-chunk", data).with_payload(bytes));
        }
        out.push(Event::new("audio-stop", json!({})));
        Ok(out)
    }

    /// A transcript from the client: one turn of Coda's pipeline, answered `handled`.
    async fn handle_text(&mut self, e: &Event) -> Result<Vec<Event>, Refusal> {
        let text = e.str("text").unwrap_or_default().trim().to_string();
        if text.is_empty() {
            return Ok(vec![Event::new(
                "not-handled",
                json!({"text": "nothing was said"}),
            )]);
        }
        let started = self
            .services
            .kernel
            .start_turn(self.session.clone(), text, TurnSource::Text)
            .await;
        let turn = match started {
            Ok(t) => t,
            Err(e) => {
                return Ok(vec![Event::new(
                    "not-handled",
                    json!({"text": e.to_string()}),
                )]);
            }
        };
        let (tx, rx) = oneshot::channel();
        self.services.answers.do_send(AwaitAnswer {
            turn_id: turn.turn_id.clone(),
            reply: tx,
        });
        match tokio::time::timeout(self.settings.answer_timeout, rx).await {
            Ok(Ok(answer)) => Ok(vec![Event::new("handled", json!({"text": answer}))]),
            _ => Ok(vec![Event::new(
                "not-handled",
                json!({"text": format!("no answer within {} s", self.settings.answer_timeout.as_secs())}),
            )]),
        }
    }
}

fn detection(d: &crate::wake::Detection) -> Event {
    Event::new(
        "detection",
        json!({
            "name": d.word.replace(' ', "_"),
            "timestamp": d.end * 1000 / u64::from(SPEECH_SAMPLE_RATE),
        }),
    )
}
