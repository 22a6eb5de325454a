//! Satellites: small machines with a microphone and a speaker and no models. A satellite
//! (`coda satellite`) listens for the wake word itself; when it hears it, it asks the
//! core whether it answers (several satellites may hear one person: the best wake score
//! does, the others stand down), then streams the utterance to the core over core NATS
//! (not the persisted stream) and plays the answer the core streams back.
//!
//! Subjects (under `coda-sat.`, outside the event stream's `coda.*.*`):
//! - `coda-sat.claim` (request): `{satellite, word, score}` → `{go, winner}`, decided by
//!   the core after [`CLAIM_WINDOW`] from the first claim of a wake;
//! - `coda-sat.<name>.speech`: the utterance as the satellite's segmenter cut it
//!   ([`SpeechWire`]); the core hands it to its speech-to-text as session `sat-<name>`;
//! - `coda-sat.<name>.settled`: the core's transcriber found the audio up to a pause a
//!   complete request (the satellite may end the utterance after a shorter silence);
//! - `coda-sat.<name>.play`: the answer's audio (`tts_audio` payloads) and alarms;
//! - `coda-sat.ping` (request): is a core there?

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use base64::Engine as _;
use coda_protocol::{AudioSource, EventType, SttMode, TtsAudio};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::Cluster;
use crate::hub::{EnvelopeRef, HubDelivery, HubHandle, Observe, TypeMask};
use crate::voice::{FollowUp, FollowUps, Settle, SpeechAudio};

/// How long the core collects claims of one wake before it decides.
pub const CLAIM_WINDOW: Duration = Duration::from_millis(150);
/// A claim this soon after a decision belongs to the same wake (a slow satellite): it
/// loses.
const SAME_WAKE: Duration = Duration::from_secs(2);
/// The conversation session of a satellite's speech on the core.
pub fn session_of(satellite: &str) -> String {
    format!("sat-{satellite}")
}

const CLAIM_SUBJECT: &str = "coda-sat.claim";
const PING_SUBJECT: &str = "coda-sat.ping";
/// Queue group of the cores: one of them answers each request.
const CORES: &str = "coda-cores";

fn subject(satellite: &str, what: &str) -> String {
    format!("coda-sat.{satellite}.{what}")
}

/// A wake claim.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claim {
    pub satellite: String,
    pub word: String,
    pub score: f32,
}

/// The core's decision on a claim.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decision {
    pub go: bool,
    pub winner: String,
}

/// The utterance on the wire: what the satellite's segmenter reported.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SpeechWire {
    Wake {
        word: String,
        score: f32,
    },
    Started {
        mode: SttMode,
    },
    /// The utterance so far: the samples from `from` on (s16le, base64; what came
    /// before was sent already), so every message stays small; `settle`: the speaker
    /// paused here.
    Partial {
        from: usize,
        pcm: String,
        settle: Option<usize>,
    },
    /// The whole utterance, the same way (it may be shorter than the last partial: the
    /// silence that ended it is trimmed).
    Ended {
        from: usize,
        pcm: String,
        settle: Option<usize>,
        /// How long before sending the speaker stopped, ms (no shared clock needed).
        ended_ms_ago: f64,
    },
    Cancelled {
        reason: String,
    },
}

/// The `settled` message.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Settled {
    len: usize,
}

fn pcm_of(samples: &[f32]) -> String {
    let bytes: Vec<u8> = samples
        .iter()
        .flat_map(|s| ((s.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes())
        .collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn samples_of(pcm: &str) -> Option<Vec<f32>> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(pcm).ok()?;
    Some(
        bytes
            .chunks_exact(2)
            .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) / 32768.0)
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------
// The core's side
// ---------------------------------------------------------------------------------------

/// On the core: takes satellites' claims and speech, and streams their answers back.
pub struct SatelliteGateway {
    cluster: Cluster,
    stt: Recipient<SpeechAudio>,
    follow_ups: FollowUps,
    play: Option<Publisher>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SatelliteGateway {
    /// Starts serving satellites on `cluster`; speech goes to `stt`, answers are taken
    /// from `hub`.
    pub fn start(
        cluster: Cluster,
        hub: HubHandle,
        stt: Recipient<SpeechAudio>,
        follow_ups: FollowUps,
    ) -> Addr<SatelliteGateway> {
        SatelliteGateway::create(|ctx| {
            hub.addr().do_send(Observe {
                name: "satellites",
                mask: TypeMask::from_type(EventType::TtsAudio),
                recipient: ctx.address().recipient(),
            });
            SatelliteGateway {
                cluster,
                stt,
                follow_ups,
                play: None,
                tasks: Vec::new(),
            }
        })
    }
}

impl Actor for SatelliteGateway {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        let client = self.cluster.client.clone();
        let node = self.cluster.settings.node.clone();
        let (play, sender) = in_order(client.clone());
        self.play = Some(play);
        self.tasks.push(sender);
        self.tasks.push(tokio::spawn(arbitrate(client.clone())));
        self.tasks
            .push(tokio::spawn(answer_pings(client.clone(), node)));
        self.tasks.push(tokio::spawn(take_speech(
            client,
            self.stt.clone(),
            self.follow_ups.clone(),
        )));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Handler<HubDelivery> for SatelliteGateway {
    type Result = ();

    fn handle(&mut self, msg: HubDelivery, _: &mut Context<Self>) {
        let Some(play) = &self.play else { return };
        for ev in msg.live() {
            let Some(env) = EnvelopeRef::read(ev.json.as_bytes()) else {
                continue;
            };
            let Some(sat) = env.session_id.strip_prefix("sat-") else {
                continue;
            };
            let _ = play.send((subject(sat, "play"), env.data.get().as_bytes().to_vec()));
        }
    }
}

/// Messages (subject, body) published in the order they were handed over.
type Publisher = tokio::sync::mpsc::UnboundedSender<(String, Vec<u8>)>;

/// A [`Publisher`] and the one task sending for it (a task per message could reorder).
fn in_order(client: async_nats::Client) -> (Publisher, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Vec<u8>)>();
    let task = tokio::spawn(async move {
        while let Some((subject, body)) = rx.recv().await {
            if let Err(e) = client.publish(subject, body.into()).await {
                tracing::debug!(error = %e, "satellite message not sent");
            }
        }
    });
    (tx, task)
}

/// Decides claims: the best score among those of one wake goes.
async fn arbitrate(client: async_nats::Client) {
    let Ok(mut sub) = client
        .queue_subscribe(CLAIM_SUBJECT.to_string(), CORES.to_string())
        .await
    else {
        tracing::warn!("satellites: cannot take wake claims");
        return;
    };
    let mut pending: Vec<(Claim, async_nats::Subject)> = Vec::new();
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut last: Option<(Instant, String)> = None;
    loop {
        let next = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            m = sub.next() => {
                let Some(m) = m else { return };
                let (Some(reply), Ok(claim)) = (m.reply, serde_json::from_slice::<Claim>(&m.payload)) else {
                    continue;
                };
                if let Some((at, winner)) = &last {
                    if at.elapsed() < SAME_WAKE && deadline.is_none() {
                        let d = Decision { go: false, winner: winner.clone() };
                        let _ = client.publish(reply, serde_json::to_vec(&d).unwrap_or_default().into()).await;
                        continue;
                    }
                }
                deadline.get_or_insert_with(|| tokio::time::Instant::now() + CLAIM_WINDOW);
                pending.push((claim, reply));
            }
            _ = next => {
                deadline = None;
                let best = pending
                    .iter()
                    .max_by(|a, b| a.0.score.total_cmp(&b.0.score))
                    .map(|(c, _)| c.satellite.clone())
                    .unwrap_or_default();
                tracing::info!(winner = %best, claims = pending.len(), "wake claims decided");
                for (claim, reply) in pending.drain(..) {
                    let d = Decision { go: claim.satellite == best, winner: best.clone() };
                    let _ = client.publish(reply, serde_json::to_vec(&d).unwrap_or_default().into()).await;
                }
                last = Some((Instant::now(), best));
            }
        }
    }
}

async fn answer_pings(client: async_nats::Client, node: String) {
    let Ok(mut sub) = client
        .queue_subscribe(PING_SUBJECT.to_string(), CORES.to_string())
        .await
    else {
        return;
    };
    while let Some(m) = sub.next().await {
        if let Some(reply) = m.reply {
            let body = serde_json::json!({"core": node}).to_string();
            let _ = client.publish(reply, body.into()).await;
        }
    }
}

/// Satellites' speech → the core's speech-to-text, as session `sat-<name>`.
async fn take_speech(
    client: async_nats::Client,
    stt: Recipient<SpeechAudio>,
    follow_ups: FollowUps,
) {
    let Ok(mut sub) = client.subscribe("coda-sat.*.speech".to_string()).await else {
        tracing::warn!("satellites: cannot take speech");
        return;
    };
    // Each satellite's last settle point, shared with the transcriber, and its utterance.
    let mut settles: HashMap<String, Settle> = HashMap::new();
    let mut utterances: HashMap<String, Vec<f32>> = HashMap::new();
    // Each satellite's follow-up window on the core (the Orchestrator opens it after an
    // answer), watched and passed on.
    let mut windows: HashMap<String, Aborting> = HashMap::new();
    while let Some(m) = sub.next().await {
        let Some(sat) = m.subject.as_str().split('.').nth(1).map(str::to_string) else {
            continue;
        };
        let wire: SpeechWire = match serde_json::from_slice(&m.payload) {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(satellite = %sat, error = %e, "satellite speech unreadable");
                continue;
            }
        };
        let session_id = session_of(&sat);
        if !windows.contains_key(&sat) {
            let window = follow_ups.register(&session_id);
            let watch = tokio::spawn(pass_follow_ups(client.clone(), sat.clone(), window));
            windows.insert(sat.clone(), Aborting(watch));
        }
        let mut settle_for = |len: Option<usize>| -> Option<Settle> {
            let len = len?;
            let s = settles
                .entry(sat.clone())
                .and_modify(|s| {
                    if s.len != len {
                        *s = new_settle(len, &client, &sat);
                    }
                })
                .or_insert_with(|| new_settle(len, &client, &sat));
            Some(s.clone())
        };
        let report = match wire {
            SpeechWire::Wake { word, score } => SpeechAudio::Wake {
                session_id,
                word,
                score,
                verified: None,
                source: AudioSource::Client,
            },
            SpeechWire::Started { mode } => {
                settles.remove(&sat);
                utterances.remove(&sat);
                SpeechAudio::Started {
                    session_id,
                    mode,
                    source: AudioSource::Client,
                }
            }
            SpeechWire::Partial { from, pcm, settle } => {
                let Some(samples) = extend(&mut utterances, &sat, from, &pcm) else {
                    continue;
                };
                SpeechAudio::Partial {
                    session_id,
                    samples,
                    settle: settle_for(settle),
                }
            }
            SpeechWire::Ended {
                from,
                pcm,
                settle,
                ended_ms_ago,
            } => {
                let Some(samples) = extend(&mut utterances, &sat, from, &pcm) else {
                    continue;
                };
                utterances.remove(&sat);
                let ago = Duration::from_secs_f64((ended_ms_ago / 1000.0).clamp(0.0, 60.0));
                SpeechAudio::Ended {
                    session_id,
                    samples,
                    speech_ended: Instant::now().checked_sub(ago).unwrap_or_else(Instant::now),
                    settle: settle_for(settle),
                }
            }
            SpeechWire::Cancelled { reason } => SpeechAudio::Cancelled { session_id, reason },
        };
        stt.do_send(report);
    }
}

/// Tells satellite `sat` each time the core opens its follow-up window (for as long as
/// the gateway runs: the window is the satellite's for good).
async fn pass_follow_ups(client: async_nats::Client, sat: String, window: Arc<FollowUp>) {
    let mut told = None;
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let until = window.until();
        if until == told {
            continue;
        }
        told = until;
        let Some(until) = until else { continue };
        let ms = until.saturating_duration_since(Instant::now()).as_millis() as u64;
        if ms == 0 {
            continue;
        }
        let body = serde_json::to_vec(&FollowUpWire { ms }).unwrap_or_default();
        let _ = client
            .publish(subject(&sat, "follow_up"), body.into())
            .await;
    }
}

/// A task that ends with its owner.
struct Aborting(tokio::task::JoinHandle<()>);

impl Drop for Aborting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The `follow_up` message: the window is open for `ms` more.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FollowUpWire {
    ms: u64,
}

/// Adds a message's samples to `sat`'s utterance at `from`; the utterance so far. A gap
/// (a message lost: core NATS delivers at most once) is filled with silence, and said.
fn extend(
    utterances: &mut HashMap<String, Vec<f32>>,
    sat: &str,
    from: usize,
    pcm: &str,
) -> Option<Arc<[f32]>> {
    let add = samples_of(pcm)?;
    let max = crate::voice::SPEECH_SAMPLE_RATE as usize * 120;
    if from > max {
        return None;
    }
    let u = utterances.entry(sat.to_string()).or_default();
    if from > u.len() {
        tracing::warn!(satellite = %sat, missing = from - u.len(), "satellite speech lost on the way; filled with silence");
        u.resize(from, 0.0);
    }
    u.truncate(from);
    u.extend_from_slice(&add[..add.len().min(max - from)]);
    Some(u.as_slice().into())
}

/// A settle point whose completion the transcriber marks; told to the satellite when it
/// does (watched for a few seconds).
fn new_settle(len: usize, client: &async_nats::Client, sat: &str) -> Settle {
    let complete = Arc::new(AtomicUsize::new(0));
    let (c, watch, subject) = (client.clone(), complete.clone(), subject(sat, "settled"));
    tokio::spawn(async move {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if watch.load(Ordering::Relaxed) == len {
                let body = serde_json::to_vec(&Settled { len }).unwrap_or_default();
                let _ = c.publish(subject, body.into()).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    Settle { len, complete }
}

// ---------------------------------------------------------------------------------------
// The satellite's side
// ---------------------------------------------------------------------------------------

/// Where a satellite plays what the core sends.
pub enum PlaySink {
    /// An output device.
    #[cfg(feature = "audio")]
    Speaker(Arc<crate::audio::Speaker>),
    /// A WAV file, rewritten with each answer (machines without a sound card, tests).
    File(std::path::PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Claiming {
    Idle,
    Asking,
    Go,
    StandDown,
}

/// On the satellite: reports the segmenter's speech to the core, and plays the answers.
pub struct SatelliteLink {
    name: String,
    cluster: Cluster,
    state: Claiming,
    held: Vec<SpeechWire>,
    /// Samples of the current utterance already put in a message.
    sent: usize,
    settles: Arc<std::sync::Mutex<Vec<Settle>>>,
    /// When the speaker last stopped (the utterance sent to the core), for the end of
    /// speech → first audio figure the satellite prints.
    speech_end: Arc<std::sync::Mutex<Option<Instant>>>,
    sink: Option<Arc<PlaySink>>,
    /// The local listening's follow-up windows (opened when the core says so).
    follow_ups: FollowUps,
    listening: String,
    /// Speech to the core, in order.
    out: Option<Publisher>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SatelliteLink {
    /// A link for satellite `name` on `cluster`, playing into `sink`; the core's
    /// follow-up windows open the local listening's (`follow_ups`, session `listening`).
    pub fn new(
        name: String,
        cluster: Cluster,
        sink: PlaySink,
        follow_ups: FollowUps,
        listening: String,
    ) -> SatelliteLink {
        SatelliteLink {
            name,
            cluster,
            state: Claiming::Idle,
            held: Vec::new(),
            sent: 0,
            settles: Arc::default(),
            speech_end: Arc::default(),
            sink: Some(Arc::new(sink)),
            follow_ups,
            listening,
            out: None,
            tasks: Vec::new(),
        }
    }

    fn send(&self, w: &SpeechWire) {
        if let Some(out) = &self.out {
            let body = serde_json::to_vec(w).unwrap_or_default();
            let _ = out.send((subject(&self.name, "speech"), body));
        }
    }
}

impl Actor for SatelliteLink {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        let client = self.cluster.client.clone();
        let (out, sender) = in_order(client.clone());
        self.out = Some(out);
        self.tasks.push(sender);
        let (name, settles) = (self.name.clone(), self.settles.clone());
        let c = client.clone();
        self.tasks.push(tokio::spawn(async move {
            let Ok(mut sub) = c.subscribe(subject(&name, "settled")).await else {
                return;
            };
            while let Some(m) = sub.next().await {
                let Ok(s) = serde_json::from_slice::<Settled>(&m.payload) else {
                    continue;
                };
                if let Ok(list) = settles.lock() {
                    for st in list.iter().filter(|st| st.len == s.len) {
                        st.complete.store(s.len, Ordering::Relaxed);
                    }
                }
            }
        }));
        if let Some(sink) = self.sink.take() {
            self.tasks.push(tokio::spawn(play_answers(
                client.clone(),
                self.name.clone(),
                sink,
                self.speech_end.clone(),
            )));
        }
        let (c, name) = (client.clone(), self.name.clone());
        let (follow_ups, listening) = (self.follow_ups.clone(), self.listening.clone());
        self.tasks.push(tokio::spawn(async move {
            let Ok(mut sub) = c.subscribe(subject(&name, "follow_up")).await else {
                return;
            };
            while let Some(m) = sub.next().await {
                if let Ok(w) = serde_json::from_slice::<FollowUpWire>(&m.payload) {
                    let until = Instant::now() + Duration::from_millis(w.ms.min(600_000));
                    if follow_ups.open(&listening, until) {
                        tracing::debug!(ms = w.ms, "follow-up window open");
                    }
                }
            }
        }));
        self.tasks.push(tokio::spawn(watch_core(client)));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Handler<SpeechAudio> for SatelliteLink {
    type Result = ();

    fn handle(&mut self, msg: SpeechAudio, ctx: &mut Context<Self>) {
        let wire = match msg {
            SpeechAudio::Wake { word, score, .. } => {
                self.state = Claiming::Asking;
                self.held.clear();
                let claim = Claim {
                    satellite: self.name.clone(),
                    word: word.clone(),
                    score,
                };
                let client = self.cluster.client.clone();
                let ask = async move {
                    let body = serde_json::to_vec(&claim).unwrap_or_default();
                    let reply = tokio::time::timeout(
                        Duration::from_secs(2),
                        client.request(CLAIM_SUBJECT.to_string(), body.into()),
                    )
                    .await;
                    match reply {
                        Ok(Ok(m)) => match serde_json::from_slice::<Decision>(&m.payload) {
                            Ok(d) => Some(d),
                            Err(e) => {
                                tracing::warn!(error = %e, payload = %String::from_utf8_lossy(&m.payload), status = ?m.status, "wake claim answer unreadable");
                                None
                            }
                        },
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "wake claim failed");
                            None
                        }
                        Err(_) => {
                            tracing::warn!("wake claim: no answer within 2 s");
                            None
                        }
                    }
                };
                self.held.push(SpeechWire::Wake { word, score });
                ctx.spawn(ask.into_actor(self).map(|decision, act, _| {
                    match decision {
                        Some(d) if d.go => {
                            act.state = Claiming::Go;
                            for w in std::mem::take(&mut act.held) {
                                act.send(&w);
                            }
                        }
                        Some(d) => {
                            tracing::info!(winner = %d.winner, "another satellite heard it better; standing down");
                            println!("stood down: {} answers", d.winner);
                            act.state = Claiming::StandDown;
                            act.held.clear();
                        }
                        None => {
                            tracing::warn!("no core answered the wake word; not listening to this one");
                            act.state = Claiming::StandDown;
                            act.held.clear();
                        }
                    }
                }));
                return;
            }
            SpeechAudio::Started { mode, .. } => {
                self.sent = 0;
                SpeechWire::Started { mode }
            }
            SpeechAudio::Partial {
                samples, settle, ..
            } => {
                let (from, pcm) = self.delta(&samples);
                SpeechWire::Partial {
                    from,
                    pcm,
                    settle: settle.map(|s| self.keep(s)),
                }
            }
            SpeechAudio::Ended {
                samples,
                speech_ended,
                settle,
                ..
            } => {
                if self.state != Claiming::StandDown {
                    if let Ok(mut end) = self.speech_end.lock() {
                        *end = Some(speech_ended);
                    }
                }
                let (from, pcm) = self.delta(&samples);
                self.sent = 0;
                SpeechWire::Ended {
                    from,
                    pcm,
                    settle: settle.map(|s| self.keep(s)),
                    ended_ms_ago: speech_ended.elapsed().as_secs_f64() * 1000.0,
                }
            }
            SpeechAudio::Cancelled { reason, .. } => SpeechWire::Cancelled { reason },
        };
        let last = matches!(
            wire,
            SpeechWire::Ended { .. } | SpeechWire::Cancelled { .. }
        );
        match self.state {
            Claiming::Go => self.send(&wire),
            Claiming::Asking => self.held.push(wire),
            // Follow-up speech (no wake word) of the satellite's own conversation.
            Claiming::Idle => self.send(&wire),
            Claiming::StandDown => {}
        }
        if last && self.state != Claiming::Asking {
            self.state = Claiming::Idle;
        }
    }
}

impl SatelliteLink {
    fn delta(&mut self, samples: &[f32]) -> (usize, String) {
        delta(&mut self.sent, samples)
    }

    fn keep(&mut self, s: Settle) -> usize {
        let len = s.len;
        if let Ok(mut list) = self.settles.lock() {
            list.retain(|k| k.len < len);
            list.push(s);
            if list.len() > 8 {
                list.remove(0);
            }
        }
        len
    }
}

/// What of the utterance `samples` is new since `sent` samples went out, and where it
/// starts (`sent` moves on).
fn delta(sent: &mut usize, samples: &[f32]) -> (usize, String) {
    let from = (*sent).min(samples.len());
    *sent = samples.len();
    (from, pcm_of(&samples[from..]))
}

/// Plays what the core sends for this satellite, answer by answer.
async fn play_answers(
    client: async_nats::Client,
    name: String,
    sink: Arc<PlaySink>,
    speech_end: Arc<std::sync::Mutex<Option<Instant>>>,
) {
    let Ok(mut sub) = client.subscribe(subject(&name, "play")).await else {
        return;
    };
    let mut answer: Vec<f32> = Vec::new();
    let mut rate = 0;
    while let Some(m) = sub.next().await {
        let Ok(chunk) = serde_json::from_slice::<TtsAudio>(&m.payload) else {
            continue;
        };
        if chunk.index == 0 && !chunk.audio.is_empty() {
            let since = speech_end.lock().ok().and_then(|mut e| e.take());
            if let Some(end) = since {
                let ms = end.elapsed().as_secs_f64() * 1000.0;
                tracing::info!(ms, "end of speech → first audio");
                println!("first audio: {ms:.0} ms after the end of speech");
            }
        }
        let samples: Vec<f32> = base64::engine::general_purpose::STANDARD
            .decode(&chunk.audio)
            .unwrap_or_default()
            .chunks_exact(2)
            .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) / 32768.0)
            .collect();
        match sink.as_ref() {
            #[cfg(feature = "audio")]
            PlaySink::Speaker(s) => {
                if !samples.is_empty() {
                    // Queued, not awaited: the next chunk follows without a gap.
                    let (s, r) = (s.clone(), chunk.sample_rate);
                    tokio::spawn(async move { s.play(samples, r).await });
                }
            }
            PlaySink::File(_) => {
                if !samples.is_empty() {
                    rate = chunk.sample_rate;
                }
                answer.extend(samples);
            }
        }
        if chunk.last {
            let ms = if rate > 0 {
                answer.len() as f64 * 1000.0 / f64::from(rate)
            } else {
                0.0
            };
            // The only kind without the `audio` feature.
            #[allow(irrefutable_let_patterns)]
            if let PlaySink::File(path) = sink.as_ref() {
                if let Err(e) = write_wav(path, &answer, rate) {
                    tracing::warn!(error = %e, path = %path.display(), "answer not written");
                }
            }
            tracing::info!(turn = ?chunk.turn_id, ms, "answer played");
            println!("answer played: {:.0} ms", ms);
            answer.clear();
        }
    }
}

fn write_wav(path: &std::path::Path, samples: &[f32], rate: u32) -> Result<(), hound::Error> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate.max(1),
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec)?;
    for s in samples {
        w.write_sample((s.clamp(-1.0, 1.0) * 32767.0) as i16)?;
    }
    w.finalize()
}

/// Asks for a core every 2 s; says once when it is lost and once when it is back.
async fn watch_core(client: async_nats::Client) {
    let mut up: Option<bool> = None;
    loop {
        let ok = tokio::time::timeout(
            Duration::from_secs(1),
            client.request(PING_SUBJECT.to_string(), Vec::new().into()),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        match (up, ok) {
            (Some(true) | None, false) => {
                tracing::warn!("lost the core: no answer on NATS; retrying");
                println!("core lost");
            }
            (Some(false) | None, true) => {
                tracing::info!("the core answers");
                println!("core reachable");
            }
            _ => {}
        }
        up = Some(ok);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_utterance_is_rebuilt_from_its_pieces() {
        let mut u = HashMap::new();
        let piece = |v: &[f32]| pcm_of(v);
        let a = extend(&mut u, "k", 0, &piece(&[0.5; 4])).unwrap();
        assert_eq!(a.len(), 4);
        let b = extend(&mut u, "k", 4, &piece(&[0.25; 2])).unwrap();
        assert_eq!(b.len(), 6);
        // The end trims the trailing silence: shorter than the last piece.
        let c = extend(&mut u, "k", 5, &piece(&[])).unwrap();
        assert_eq!(c.len(), 5);
        // A lost piece: the gap is silence.
        let d = extend(&mut u, "k", 8, &piece(&[0.5])).unwrap();
        assert_eq!(d.len(), 9);
        assert_eq!(d[6], 0.0);
        assert!(extend(&mut u, "k", 0, "not base64!").is_none());
    }

    #[test]
    fn the_satellite_sends_only_what_is_new_and_the_core_rebuilds_it() {
        let utterance: Vec<f32> = (0..160).map(|i| i as f32 / 200.0).collect();
        let (mut sent, mut core) = (0usize, HashMap::new());
        let mut last = None;
        // Two partials, then the end trimmed to 150 samples.
        for upto in [100, 160, 150] {
            let (from, pcm) = delta(&mut sent, &utterance[..upto]);
            assert_eq!(samples_of(&pcm).unwrap().len(), upto - from.min(upto));
            last = extend(&mut core, "k", from, &pcm);
        }
        let rebuilt = last.unwrap();
        assert_eq!(rebuilt.len(), 150);
        let err = rebuilt
            .iter()
            .zip(&utterance)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 1e-4, "{err}");
    }
}
