//! Audio I/O: the AudioCapture actor (the server's own microphone → [`SpeechAudio`]),
//! sample conversion to 16 kHz mono, voice activity detection, playback and device
//! listing.
//!
//! Devices need the `audio` feature (cpal and rodio, on by default). Without it the
//! conversion and VAD still build, and capture and playback answer with a clear
//! "unavailable in this build" error.
//!
//! AudioCapture listens for one session at a time, cutting the audio into utterances with
//! a [`Segmenter`] (the same one client audio goes through):
//! - push-to-talk: [`StartCapture`] opens the device and reports `Started`; audio
//!   accumulates (`Partial` while speaking, a settled one at each pause) until
//!   [`StopCapture`] (`Ended`) or `max_utterance_s`.
//! - continuous: the device stays open; the VAD splits the audio into utterances, each
//!   `Started` → `Partial`… → `Ended` (with `speech_ended` at the last voiced frame).
//!
//! The device lives on its own thread (a cpal stream is `!Send`) and feeds the actor
//! through a bounded channel; the actor never blocks.

pub mod convert;
#[cfg(feature = "audio")]
pub mod device;
pub mod echo;
#[cfg(feature = "audio")]
pub mod playback;
pub mod segment;
pub mod vad;

use std::time::Instant;

use actix::prelude::*;
use coda_protocol::{AudioSource, ComponentState, Level, SttError, SttMode};
use serde::Serialize;

use crate::components::ComponentRegistry;
use crate::supervise::Supervision;
use crate::voice::{SpeechAudio, SPEECH_SAMPLE_RATE};
pub use segment::{EndCause, Segment, SegmentSettings, Segmenter};

#[cfg(feature = "audio")]
pub use playback::Speaker;

/// An audio failure.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AudioError {
    /// No usable device (or no audio support in this build).
    #[error("{0}")]
    Unavailable(String),
    /// Another session is listening.
    #[error("the input device is in use by session `{0}`")]
    Busy(String),
    /// Nothing is listening for that session.
    #[error("not listening for session `{0}`")]
    NotListening(String),
}

impl AudioError {
    /// Stable code for `stt_error` / `command_error`.
    pub fn code(&self) -> &'static str {
        match self {
            AudioError::Unavailable(_) => "device_unavailable",
            AudioError::Busy(_) => "device_busy",
            AudioError::NotListening(_) => "not_listening",
        }
    }
}

/// The message for a build without the `audio` feature.
pub const NO_AUDIO_BUILD: &str =
    "this build of coda has no sound device support (built without the `audio` feature)";

/// One supported stream configuration of a device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigRange {
    pub channels: u16,
    /// Lowest rate, Hz.
    pub min_rate: u32,
    /// Highest rate, Hz.
    pub max_rate: u32,
    /// Sample format, e.g. `i16`, `f32`.
    pub format: String,
}

/// One device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceInfo {
    /// The name to put in `audio.input_device` / `audio.output_device`.
    pub id: String,
    /// A readable name.
    pub name: String,
    /// The host's default device?
    pub is_default: bool,
    /// Its default configuration, when it can be opened at all.
    pub default_config: Option<ConfigRange>,
    /// Everything it supports.
    pub configs: Vec<ConfigRange>,
    /// Why its configurations could not be read.
    pub error: Option<String>,
}

/// The devices of the audio host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceList {
    /// Host API, e.g. `ALSA`.
    pub host: String,
    /// Capture devices.
    pub inputs: Vec<DeviceInfo>,
    /// Playback devices.
    pub outputs: Vec<DeviceInfo>,
}

/// Lists the sound devices (an error in a build without the `audio` feature).
pub fn list_devices() -> Result<DeviceList, AudioError> {
    #[cfg(feature = "audio")]
    {
        device::list_devices()
    }
    #[cfg(not(feature = "audio"))]
    {
        Err(AudioError::Unavailable(NO_AUDIO_BUILD.into()))
    }
}

/// How one queued sound ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlayOutcome {
    /// Played to the end on a device.
    Played,
    /// Stopped (interrupt) before the end.
    Stopped,
    /// Not played.
    Failed(String),
}

/// AudioCapture settings (the `[audio]` config section).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AudioSettings {
    /// Input device name (empty: the default; `file:PATH` plays a WAV file as if spoken
    /// into a microphone, then silence: for tests and demos on machines without one).
    pub input_device: String,
    /// How the audio is cut into utterances.
    pub segment: SegmentSettings,
    /// Remove what the speaker plays from the input device's audio (feature `echo`).
    pub echo_cancel: bool,
}

/// Start listening on the input device for `session_id`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<CaptureStarted, AudioError>")]
pub struct StartCapture {
    /// The conversation session the speech belongs to.
    pub session_id: String,
    /// Push-to-talk or continuous.
    pub mode: SttMode,
}

/// Start listening to audio the caller sends with [`FeedAudio`] instead of the device
/// (a file, a test signal, a benchmark): the same pipeline, VAD and reports.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<CaptureStarted, AudioError>")]
pub struct StartFeed {
    pub session_id: String,
    /// Push-to-talk or continuous.
    pub mode: SttMode,
}

/// 16 kHz mono samples for a [`StartFeed`] listening.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct FeedAudio {
    /// Samples in [-1, 1].
    pub samples: Vec<f32>,
}

/// Stop listening for `session_id` (push-to-talk: the utterance ends here).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), AudioError>")]
pub struct StopCapture {
    pub session_id: String,
}

/// Where speech reports go from now on (the Stt actor, wired at start-up).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ConnectSpeech(pub Recipient<SpeechAudio>);

/// What a started capture opened.
#[derive(Debug, Clone, PartialEq, Serialize, MessageResponse)]
pub struct CaptureStarted {
    /// Device id (`feed` for [`StartFeed`]).
    pub device: String,
    /// Device sample rate, Hz.
    pub rate: u32,
    /// Device channels.
    pub channels: u16,
}

/// 16 kHz chunks from the capture thread, tagged with the listening they belong to.
#[derive(Message)]
#[rtype(result = "()")]
struct Chunk {
    generation: u64,
    samples: Vec<f32>,
    /// What the utterance carries instead, when echo cancellation made two versions.
    keep: Option<Vec<f32>>,
}

struct Listening {
    session_id: String,
    mode: SttMode,
    generation: u64,
    #[cfg(feature = "audio")]
    _device: Option<device::CaptureHandle>,
    seg: Segmenter,
}

/// The AudioCapture actor.
pub struct AudioCapture {
    sup: Supervision,
    components: ComponentRegistry,
    settings: AudioSettings,
    sink: Option<Recipient<SpeechAudio>>,
    listening: Option<Listening>,
    generation: u64,
    dropped_notice: bool,
    hands: crate::voice::Hands,
}

/// Capacity of the device → actor channel (chunks of ≈20 ms: about 5 s).
const CHANNEL_CHUNKS: usize = 256;

impl AudioCapture {
    /// An actor reporting to `sink` (`None` until [`ConnectSpeech`]: reports are logged
    /// and dropped).
    pub fn new(
        sup: Supervision,
        components: ComponentRegistry,
        settings: AudioSettings,
        sink: Option<Recipient<SpeechAudio>>,
    ) -> Self {
        AudioCapture {
            sup,
            components,
            settings,
            sink,
            listening: None,
            generation: 0,
            dropped_notice: false,
            hands: crate::voice::Hands::default(),
        }
    }

    /// Wake-mode listening makes its detectors from `hands`.
    pub fn with_hands(mut self, hands: crate::voice::Hands) -> Self {
        self.hands = hands;
        self
    }

    /// The wake word parts of a listening in `mode` (none unless wake mode).
    fn wake_for(
        &self,
        session_id: &str,
        mode: SttMode,
        ctx: &Context<Self>,
    ) -> Result<Option<crate::voice::WakeListening>, AudioError> {
        if mode != SttMode::Wake {
            return Ok(None);
        }
        let mut w = self
            .hands
            .listen(session_id)
            .map_err(|e| AudioError::Unavailable(e.to_string()))?;
        // Reported when the word's check answers, not with the device's next chunk.
        w.detector
            .wake_on_answer(crate::wake::actor_waker::<_, WakeAnswered>(
                ctx.address().downgrade(),
            ));
        Ok(Some(w))
    }

    fn report(&mut self, msg: SpeechAudio) {
        match &self.sink {
            Some(s) => s.do_send(msg),
            None => {
                if !self.dropped_notice {
                    self.dropped_notice = true;
                    tracing::info!("speech captured but nothing transcribes it yet (no Stt connected); dropped");
                }
                tracing::debug!(session = msg.session_id(), "speech report dropped");
            }
        }
    }

    fn device_error(&self, session_id: &str, e: &AudioError) {
        self.sup.hub().publish(
            session_id,
            &SttError {
                turn_id: None,
                code: e.code().to_string(),
                message: e.to_string(),
                level: Level::Error,
            },
        );
    }

    /// Begins a listening (the device, if any, is already open).
    fn begin(
        &mut self,
        session_id: String,
        mode: SttMode,
        generation: u64,
        wake: Option<crate::voice::WakeListening>,
    ) -> Listening {
        let now = Instant::now();
        let seg = match wake {
            Some(w) => Segmenter::with_wake(self.settings.segment, w, now),
            None => Segmenter::new(self.settings.segment, mode, now),
        };
        Listening {
            session_id,
            mode,
            generation,
            #[cfg(feature = "audio")]
            _device: None,
            seg,
        }
    }

    fn started_report(&mut self, session_id: &str, mode: SttMode, source: AudioSource) {
        self.report(SpeechAudio::Started {
            session_id: session_id.to_string(),
            mode,
            source,
        });
    }

    fn on_samples(&mut self, samples: &[f32], keep: Option<&[f32]>) {
        let Some(l) = self.listening.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        l.seg
            .push_split(samples, keep.unwrap_or(samples), Instant::now(), &mut out);
        for segment in out {
            self.on_segment(segment);
        }
    }

    fn on_segment(&mut self, segment: Segment) {
        let Some(l) = self.listening.as_ref() else {
            return;
        };
        let (session_id, mode) = (l.session_id.clone(), l.mode);
        let at_max = matches!(
            segment,
            Segment::Ended {
                cause: EndCause::MaxLength,
                ..
            }
        );
        if let Some(msg) = speech_report(&session_id, mode, AudioSource::Device, segment) {
            self.report(msg);
        }
        if at_max {
            tracing::info!(
                session = %session_id,
                max_s = self.settings.segment.max_utterance_s,
                "utterance reached audio.max_utterance_s; ended there"
            );
            if mode == SttMode::PushToTalk {
                // Push-to-talk listens for one utterance: the device closes.
                self.listening = None;
            }
        }
    }
}

/// What a producer reports to Stt for one [`Segment`] of `session_id`'s audio.
pub fn speech_report(
    session_id: &str,
    mode: SttMode,
    source: AudioSource,
    segment: Segment,
) -> Option<SpeechAudio> {
    let session_id = session_id.to_string();
    Some(match segment {
        Segment::Started => SpeechAudio::Started {
            session_id,
            mode,
            source,
        },
        Segment::Partial { samples, settle } => SpeechAudio::Partial {
            session_id,
            samples,
            settle,
        },
        Segment::Ended {
            samples,
            speech_ended,
            settle,
            ..
        } => SpeechAudio::Ended {
            session_id,
            samples,
            speech_ended,
            settle,
        },
        Segment::Wake {
            word,
            score,
            verified,
        } => SpeechAudio::Wake {
            session_id,
            word,
            score,
            verified,
            source,
        },
        Segment::Empty if mode == SttMode::Wake => SpeechAudio::Cancelled {
            session_id,
            reason: "nothing was said after the wake word".into(),
        },
        Segment::Empty => SpeechAudio::Cancelled {
            session_id,
            reason: "no audio was captured".into(),
        },
    })
}

impl Actor for AudioCapture {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.sup.started();
        // Is there an input device at all? Say so once, up front (no log spam later).
        let name = self.settings.input_device.clone();
        // Not on the shared blocking pool (see `supervise::dedicated`).
        let fut = crate::supervise::dedicated("coda-audio-probe", move || probe_input(&name));
        ctx.spawn(fut.into_actor(self).map(|res, act, _| {
            let problem = match res {
                Ok(Ok(device)) => {
                    tracing::debug!(%device, "input device available");
                    return;
                }
                Ok(Err(e)) => e.to_string(),
                Err(panic) => format!("probing the input device panicked: {panic}"),
            };
            let state = if cfg!(feature = "audio") {
                ComponentState::Degraded
            } else {
                ComponentState::Stopped
            };
            tracing::warn!(reason = %problem, "no usable input device: listening on the device is off (everything else works)");
            act.components
                .set(act.sup.hub(), act.sup.name(), state, Some(problem));
        }));
    }
}

/// Checks that the input device `name` can be opened; returns its id.
pub fn probe_input(name: &str) -> Result<String, AudioError> {
    #[cfg(feature = "audio")]
    {
        device::probe_input(name)
    }
    #[cfg(not(feature = "audio"))]
    {
        let _ = name;
        Err(AudioError::Unavailable(NO_AUDIO_BUILD.into()))
    }
}

impl actix::Supervised for AudioCapture {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // The device thread of the old context is closed with its handle.
        if let Some(l) = self.listening.take() {
            self.report(SpeechAudio::Cancelled {
                session_id: l.session_id,
                reason: "the audio component restarted".into(),
            });
        }
        self.sup.restarting();
    }
}

impl AudioCapture {
    /// Checks whether a new listening for `session_id` may start; an earlier one of the
    /// same session is closed first.
    fn may_start(&mut self, session_id: &str) -> Result<(), AudioError> {
        if self.sup.is_degraded() {
            return Err(AudioError::Unavailable(self.sup.unavailable()));
        }
        if let Some(l) = &self.listening {
            if l.session_id != session_id {
                return Err(AudioError::Busy(l.session_id.clone()));
            }
            self.close_listening("restarted by a new stt_start");
        }
        Ok(())
    }

    fn close_listening(&mut self, why: &str) {
        if let Some(l) = self.listening.take() {
            if l.seg.utterance_len() > 0 {
                self.report(SpeechAudio::Cancelled {
                    session_id: l.session_id,
                    reason: why.to_string(),
                });
            }
        }
    }
}

impl Handler<StartCapture> for AudioCapture {
    type Result = AtomicResponse<Self, Result<CaptureStarted, AudioError>>;

    fn handle(&mut self, msg: StartCapture, ctx: &mut Context<Self>) -> Self::Result {
        let wake = self
            .may_start(&msg.session_id)
            .and_then(|()| self.wake_for(&msg.session_id, msg.mode, ctx));
        let wake = match wake {
            Ok(w) => w,
            Err(e) => {
                self.device_error(&msg.session_id, &e);
                return AtomicResponse::new(Box::pin(fut::ready(Err(e))));
            }
        };
        self.generation += 1;
        let generation = self.generation;
        #[cfg(feature = "audio")]
        {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<device::Captured>(CHANNEL_CHUNKS);
            let name = self.settings.input_device.clone();
            let echo = self.settings.echo_cancel.then(|| self.hands.echo.clone());
            // Opening a device can take a while (ALSA): off the event loop; `AtomicResponse`
            // holds later messages (a quick stt_stop) until it is done.
            let open = crate::supervise::dedicated("coda-audio-open", move || {
                device::start_capture(&name, tx, echo)
            });
            AtomicResponse::new(Box::pin(open.into_actor(self).map(
                move |res, act, ctx| {
                    let handle = match res {
                        Ok(Ok(h)) => h,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "input device did not open");
                            act.device_error(&msg.session_id, &e);
                            return Err(e);
                        }
                        Err(panic) => {
                            let e = AudioError::Unavailable(format!(
                                "opening the input device panicked: {panic}"
                            ));
                            act.device_error(&msg.session_id, &e);
                            return Err(e);
                        }
                    };
                    let started = CaptureStarted {
                        device: handle.info.device.clone(),
                        rate: handle.info.rate,
                        channels: handle.info.channels,
                    };
                    tracing::info!(session = %msg.session_id, device = %started.device, rate = started.rate, channels = started.channels, mode = %msg.mode, "listening on the input device");
                    let mut l = act.begin(msg.session_id.clone(), msg.mode, generation, wake);
                    l._device = Some(handle);
                    act.listening = Some(l);
                    let addr = ctx.address();
                    ctx.spawn(
                        async move {
                            while let Some(c) = rx.recv().await {
                                let chunk = Chunk {
                                    generation,
                                    samples: c.samples,
                                    keep: c.keep,
                                };
                                if addr.try_send(chunk).is_err() {
                                    // The actor is gone or its mailbox full: drop.
                                    tracing::trace!("capture chunk dropped");
                                }
                            }
                        }
                        .into_actor(act),
                    );
                    if msg.mode == SttMode::PushToTalk {
                        act.started_report(&msg.session_id, msg.mode, AudioSource::Device);
                    }
                    Ok(started)
                },
            )))
        }
        #[cfg(not(feature = "audio"))]
        {
            let _ = (generation, CHANNEL_CHUNKS, wake);
            let e = AudioError::Unavailable(NO_AUDIO_BUILD.into());
            self.device_error(&msg.session_id, &e);
            AtomicResponse::new(Box::pin(fut::ready(Err(e))))
        }
    }
}

impl Handler<StartFeed> for AudioCapture {
    type Result = Result<CaptureStarted, AudioError>;

    fn handle(&mut self, msg: StartFeed, ctx: &mut Context<Self>) -> Self::Result {
        self.may_start(&msg.session_id)?;
        let wake = self.wake_for(&msg.session_id, msg.mode, ctx)?;
        self.generation += 1;
        let l = self.begin(msg.session_id.clone(), msg.mode, self.generation, wake);
        self.listening = Some(l);
        if msg.mode == SttMode::PushToTalk {
            self.started_report(&msg.session_id, msg.mode, AudioSource::Device);
        }
        Ok(CaptureStarted {
            device: "feed".into(),
            rate: SPEECH_SAMPLE_RATE,
            channels: 1,
        })
    }
}

/// The wake word's check answered (see [`AudioCapture::wake_for`]).
#[derive(Message, Default)]
#[rtype(result = "()")]
struct WakeAnswered;

impl Handler<WakeAnswered> for AudioCapture {
    type Result = ();

    fn handle(&mut self, _: WakeAnswered, _: &mut Context<Self>) {
        let Some(l) = self.listening.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        l.seg.poll(Instant::now(), &mut out);
        for segment in out {
            self.on_segment(segment);
        }
    }
}

impl Handler<FeedAudio> for AudioCapture {
    type Result = ();

    fn handle(&mut self, msg: FeedAudio, _: &mut Context<Self>) {
        self.on_samples(&msg.samples, None);
    }
}

impl Handler<Chunk> for AudioCapture {
    type Result = ();

    fn handle(&mut self, msg: Chunk, _: &mut Context<Self>) {
        if self
            .listening
            .as_ref()
            .is_some_and(|l| l.generation == msg.generation)
        {
            self.on_samples(&msg.samples, msg.keep.as_deref());
        }
    }
}

/// A session's `stt_start` / `stt_stop` with `source: "device"` (the kernel wires this
/// actor as [`crate::kernel::Rooms::device_audio`]): the same as [`StartCapture`] /
/// [`StopCapture`], answered with the text the client's `command_error` carries.
impl Handler<crate::voice::DeviceListen> for AudioCapture {
    type Result = ResponseFuture<Result<(), String>>;

    fn handle(&mut self, msg: crate::voice::DeviceListen, ctx: &mut Context<Self>) -> Self::Result {
        use crate::voice::DeviceListen;
        let me = ctx.address();
        Box::pin(async move {
            let answer = match msg {
                DeviceListen::Start { session_id, mode } => me
                    .send(StartCapture { session_id, mode })
                    .await
                    .map(|r| r.map(|_| ())),
                DeviceListen::Stop { session_id } => me.send(StopCapture { session_id }).await,
            };
            match answer {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("{}: {e}", e.code())),
                Err(_) => Err("audio capture is restarting".into()),
            }
        })
    }
}

impl Handler<StopCapture> for AudioCapture {
    type Result = Result<(), AudioError>;

    fn handle(&mut self, msg: StopCapture, _: &mut Context<Self>) -> Self::Result {
        match &self.listening {
            Some(l) if l.session_id == msg.session_id => {}
            // Push-to-talk that already ended at max_utterance_s, or never started.
            _ => return Err(AudioError::NotListening(msg.session_id)),
        }
        // Ended (push-to-talk: now is when the speaker stopped; continuous: mid-utterance).
        let ended = self
            .listening
            .as_mut()
            .and_then(|l| l.seg.stop(Instant::now()));
        if let Some(segment) = ended {
            self.on_segment(segment);
        }
        // Dropping the listening closes the device (its thread joins).
        self.listening = None;
        Ok(())
    }
}

impl Handler<ConnectSpeech> for AudioCapture {
    type Result = ();

    fn handle(&mut self, msg: ConnectSpeech, _: &mut Context<Self>) {
        self.sink = Some(msg.0);
    }
}

crate::impl_fault_injection!(AudioCapture);

/// What the WebSocket session does with `stt_start {source:"device"}` / `stt_stop`: one
/// call for the lead to route them here. `start: Some(mode)` starts, `None` stops. The
/// answer is the `command_result` data (or the error for `command_error`; `stt_error` is
/// already published).
pub async fn route_device_command(
    capture: Option<&Addr<AudioCapture>>,
    session_id: &str,
    start: Option<SttMode>,
) -> Result<serde_json::Value, AudioError> {
    let Some(capture) = capture else {
        return Err(AudioError::Unavailable(
            "audio capture is not running (audio.enabled = false)".into(),
        ));
    };
    let mailbox = |_| AudioError::Unavailable("audio capture is restarting".into());
    match start {
        Some(mode) => {
            let started = capture
                .send(StartCapture {
                    session_id: session_id.to_string(),
                    mode,
                })
                .await
                .map_err(mailbox)??;
            Ok(
                serde_json::json!({"listening": true, "source": "device", "device": started.device, "rate": started.rate, "channels": started.channels}),
            )
        }
        None => {
            capture
                .send(StopCapture {
                    session_id: session_id.to_string(),
                })
                .await
                .map_err(mailbox)??;
            Ok(serde_json::json!({"listening": false}))
        }
    }
}
