//! No sound device: a temp HOME whose `.asoundrc` points the default PCM at a sound card
//! that does not exist. Capture reports one clear `stt_error` (`device_unavailable`) and
//! `component_status` degraded for `audio`; playback falls back to `played: false`;
//! nothing panics, and speech is still synthesised.
#![cfg(feature = "audio")]

mod audio_common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use audio_common::{alsa_home, hub_with_events, Sink};
use coda_actors::audio::{AudioCapture, AudioError, AudioSettings, Speaker, StartCapture};
use coda_actors::components::ComponentRegistry;
use coda_actors::hub::TypeMask;
use coda_actors::supervise::Supervision;
use coda_actors::tts::espeak::{EspeakConfig, EspeakEngine};
use coda_actors::tts::{FinishTurn, Speak, TtsActor, TtsOutput, TtsUpdate};
use coda_protocol::{RawEnvelope, SttMode};

fn missing_device_home() {
    alsa_home("pcm.!default { type hw card 57 }\nctl.!default { type hw card 57 }\n");
}

const WAIT: Duration = Duration::from_secs(10);

struct Updates;
impl Actor for Updates {
    type Context = Context<Self>;
}
impl Handler<TtsUpdate> for Updates {
    type Result = ();
    fn handle(&mut self, _: TtsUpdate, _: &mut Context<Self>) {}
}

async fn wait_for(
    events: &Arc<Mutex<Vec<RawEnvelope>>>,
    pred: impl Fn(&RawEnvelope) -> bool,
) -> RawEnvelope {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(e) = events.lock().unwrap().iter().find(|e| pred(e)) {
            return e.clone();
        }
        assert!(Instant::now() < deadline, "timed out waiting for an event");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[actix_rt::test]
async fn capture_without_a_device_is_one_clear_error_and_degraded_status() {
    missing_device_home();
    let (hub, events) = hub_with_events(TypeMask::ALL);
    tokio::time::sleep(Duration::from_millis(30)).await;
    let components = ComponentRegistry::new();
    let sup = Supervision::new("audio", Default::default(), hub.clone(), components.clone());
    let got = Arc::new(Mutex::new(Vec::new()));
    let cap = AudioCapture::new(
        sup,
        components,
        AudioSettings::default(),
        Some(Sink(got.clone()).start().recipient()),
    )
    .start();
    let status = wait_for(&events, |e| {
        e.event_type == "component_status"
            && e.data["component"] == "audio"
            && e.data["state"] == "degraded"
    })
    .await;
    assert!(
        status.data["reason"]
            .as_str()
            .unwrap_or("")
            .contains("input device"),
        "{}",
        status.data
    );
    let res = cap
        .send(StartCapture {
            session_id: "s1".into(),
            mode: SttMode::PushToTalk,
        })
        .await
        .unwrap();
    assert!(matches!(res, Err(AudioError::Unavailable(_))), "{res:?}");
    let err = wait_for(&events, |e| e.event_type == "stt_error").await;
    assert_eq!(err.data["code"], "device_unavailable");
    assert_eq!(err.session_id, "s1");
    // No speech was reported, and the actor is still alive and answering.
    assert!(got.lock().unwrap().is_empty());
    assert!(cap.connected());
    let again = cap
        .send(StartCapture {
            session_id: "s1".into(),
            mode: SttMode::Continuous,
        })
        .await
        .unwrap();
    assert!(again.is_err());
}

#[actix_rt::test]
async fn playback_without_a_device_is_an_error_and_speech_is_not_played() {
    missing_device_home();
    let err = tokio::task::spawn_blocking(|| Speaker::open("", None))
        .await
        .unwrap()
        .expect_err("no device to open");
    assert!(matches!(err, AudioError::Unavailable(_)));
    let named = tokio::task::spawn_blocking(|| Speaker::open("no-such-card-xyz", None))
        .await
        .unwrap()
        .expect_err("no such device");
    assert!(named.to_string().contains("no-such-card-xyz"), "{named}");

    let (hub, events) = hub_with_events(TypeMask::ALL);
    tokio::time::sleep(Duration::from_millis(30)).await;
    let sup = Supervision::new("tts", Default::default(), hub, ComponentRegistry::new());
    let engine = Arc::new(EspeakEngine::new(EspeakConfig {
        binary: "espeak-ng".into(),
        voice: "en-us".into(),
        rate: 175,
    }));
    let tts = TtsActor::new(sup, engine)
        .with_output(TtsOutput {
            play: true,
            device: String::new(),
            stream_audio: false,
        })
        .start();
    let rec = Updates.start().recipient();
    tts.send(Speak {
        turn_id: "t1".into(),
        session_id: "s1".into(),
        index: 0,
        text: "Nobody hears this.".into(),
        progress: Default::default(),
        reply_to: rec,
    })
    .await
    .unwrap()
    .unwrap();
    tts.do_send(FinishTurn {
        turn_id: "t1".into(),
    });
    let result = wait_for(&events, |e| e.event_type == "tts_result").await;
    assert_eq!(result.data["played"], false);
    assert!(result.data["audio_ms"].as_f64().unwrap() > 300.0);
    // Synthesis worked; no tts_error for a missing speaker.
    assert!(!events
        .lock()
        .unwrap()
        .iter()
        .any(|e| e.event_type == "tts_error"));
}
