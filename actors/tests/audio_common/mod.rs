//! What the audio tests share: a temp HOME whose `.asoundrc` picks the ALSA device, a hub
//! that records every event, and a sink for AudioCapture's reports.
#![allow(dead_code)]

use std::sync::{Arc, Mutex, Once};

use actix::prelude::*;
use coda_actors::hub::{record_events, EventHub, HubHandle, HubSettings, TypeMask};
use coda_actors::voice::SpeechAudio;
use coda_protocol::RawEnvelope;

static HOME: Once = Once::new();

/// Points `$HOME` at a temp dir whose `.asoundrc` is `asoundrc`. Set once per test binary,
/// before any of its threads touches ALSA (ALSA reads its configuration once).
pub fn alsa_home(asoundrc: &'static str) {
    HOME.call_once(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        std::fs::write(dir.join(".asoundrc"), asoundrc).unwrap();
        std::env::set_var("HOME", &dir);
    });
}

/// Records what AudioCapture reports.
pub struct Sink(pub Arc<Mutex<Vec<SpeechAudio>>>);
impl Actor for Sink {
    type Context = Context<Self>;
}
impl Handler<SpeechAudio> for Sink {
    type Result = ();
    fn handle(&mut self, m: SpeechAudio, _: &mut Context<Self>) {
        self.0.lock().unwrap().push(m);
    }
}

/// A hub and the events of the types in `mask`, recorded from now on.
pub fn hub_with_events(mask: TypeMask) -> (HubHandle, Arc<Mutex<Vec<RawEnvelope>>>) {
    let hub = EventHub::start_hub(HubSettings::default());
    let events = record_events(&hub, 1, mask);
    (hub, events)
}
