//! Speech in: `stt_start` / `stt_stop` and the binary audio frames between them.

use actix::prelude::*;
use coda_protocol::{AudioSource, ErrorCode, SttMode, SttStartCommand};

use super::super::{ClientAudio, ClientAudioError, WsSession};
use crate::hub::Refusal;
use crate::voice::{DeviceListen, SpeechAudio};

impl WsSession {
    pub(in crate::session) fn stt(&self) -> Option<Recipient<SpeechAudio>> {
        self.shared.kernel.speech_in()
    }

    /// Where client speech goes, or (`None`) the `command_error` that says it has nowhere.
    fn stt_or_reply(
        &mut self,
        id: &Option<String>,
        ctx: &mut Context<Self>,
    ) -> Option<Recipient<SpeechAudio>> {
        let stt = self.stt();
        if stt.is_none() {
            self.reply_err(
                id.clone(),
                ErrorCode::Unavailable,
                "speech-to-text is not running",
                ctx,
            );
        }
        stt
    }

    /// `stt_start`: client audio opens an utterance on this connection (its session is
    /// the connection's id); device audio is the AudioCapture actor's, when wired.
    pub(in crate::session) fn stt_start(
        &mut self,
        id: Option<String>,
        c: SttStartCommand,
        ctx: &mut Context<Self>,
    ) {
        let session_id = self.client_id.clone();
        let source = c.source.unwrap_or(AudioSource::Device);
        if source == AudioSource::Device {
            let fut = self.shared.kernel.device_listen(DeviceListen::Start {
                session_id,
                mode: c.mode,
            });
            // `spawn`, not `wait`: a wake start waits for the reference (seconds, right
            // after start), and events must keep flowing meanwhile — held in the mailbox
            // they would age past `server.max_lag_ms` and cut this client off as slow.
            ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| match res {
                Ok(()) => act.reply_ok(
                    id,
                    serde_json::json!({"listening": true, "source": "device"}),
                    ctx,
                ),
                Err(e) => act.reply_kernel_err(id, e, ctx),
            }));
            return;
        }
        if c.mode == SttMode::Wake {
            // Right after start the reference may still be loading: wait for it (audio
            // sent before the answer is not listened to).
            let loaded = self.shared.kernel.wake_loaded();
            ctx.spawn(
                loaded
                    .into_actor(self)
                    .map(move |(), act, ctx| act.client_stt_start(id, c, ctx)),
            );
            return;
        }
        self.client_stt_start(id, c, ctx);
    }

    /// `stt_start` with `source: "client"`.
    fn client_stt_start(
        &mut self,
        id: Option<String>,
        c: SttStartCommand,
        ctx: &mut Context<Self>,
    ) {
        let session_id = self.client_id.clone();
        let Some(stt) = self.stt_or_reply(&id, ctx) else {
            return;
        };
        let wake = if c.mode == SttMode::Wake {
            match self.shared.kernel.wake_listening(&session_id) {
                Ok(mut w) => {
                    // The word's check answers on Stt's thread: report it then, not with
                    // the client's next frame (up to 20 ms later).
                    w.detector
                        .wake_on_answer(crate::wake::actor_waker::<_, WakeAnswered>(
                            ctx.address().downgrade(),
                        ));
                    Some(w)
                }
                Err(e) => {
                    self.reply_err(id, ErrorCode::Unavailable, e.to_string(), ctx);
                    return;
                }
            }
        } else {
            None
        };
        // A second stt_start restarts the utterance (what came before is dropped) in the
        // same place among the server's streams.
        let slot = match self.audio.as_mut().and_then(ClientAudio::release) {
            Some(slot) => {
                stt.do_send(SpeechAudio::Cancelled {
                    session_id: session_id.clone(),
                    reason: "stt_start again before stt_stop".into(),
                });
                slot
            }
            None => match self.shared.client_streams.try_take() {
                Some(slot) => slot,
                None => {
                    self.shared.hub.counters().refused(Refusal::ClientAudio);
                    let msg = format!(
                        "{} client audio streams are open on this server (audio.max_client_streams); try again when one stops",
                        self.shared.client_streams.max()
                    );
                    self.reply_err(id, ErrorCode::Unavailable, msg, ctx);
                    return;
                }
            },
        };
        let (mut audio, started) = ClientAudio::start(
            session_id.clone(),
            c.mode,
            self.settings().client_audio.segment,
            wake,
        );
        audio.hold(slot);
        self.audio = Some(audio);
        if let Some(started) = started {
            stt.do_send(started);
        }
        self.reply_ok(
            id,
            serde_json::json!({"listening": true, "source": "client", "mode": c.mode, "session_id": session_id, "sample_rate": crate::voice::SPEECH_SAMPLE_RATE}),
            ctx,
        );
    }
    /// `stt_stop`: the client utterance ends and goes to Stt; else the device stops.
    pub(in crate::session) fn stt_stop(&mut self, id: Option<String>, ctx: &mut Context<Self>) {
        let session_id = self.client_id.clone();
        if let Some(audio) = self.audio.take() {
            let Some(stt) = self.stt_or_reply(&id, ctx) else {
                return;
            };
            let audio_ms = audio.utterance_ms();
            if let Some(report) = audio.stop() {
                stt.do_send(report);
            }
            self.reply_ok(
                id,
                serde_json::json!({"listening": false, "audio_ms": audio_ms}),
                ctx,
            );
            return;
        }
        if !self.shared.kernel.has_device() {
            self.reply_err(
                id,
                ErrorCode::InvalidData,
                "not listening: stt_stop without stt_start",
                ctx,
            );
            return;
        }
        let fut = self
            .shared
            .kernel
            .device_listen(DeviceListen::Stop { session_id });
        ctx.wait(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok(()) => act.reply_ok(id, serde_json::json!({"listening": false}), ctx),
            Err(e) => act.reply_kernel_err(id, e, ctx),
        }));
    }

    /// One binary frame of client audio (PCM s16le mono 16 kHz).
    pub(in crate::session) fn on_audio(&mut self, bin: &[u8], ctx: &mut Context<Self>) {
        let Some(audio) = self.audio.as_mut() else {
            return;
        };
        match audio.push(bin) {
            Ok(reports) => {
                self.violations = 0;
                self.to_stt(reports);
            }
            Err(e @ ClientAudioError::OddLength(_)) => {
                self.violation(None, ErrorCode::InvalidData, e.to_string(), ctx);
            }
            Err(e @ ClientAudioError::TooLong(_)) => {
                self.audio = None;
                if let Some(stt) = self.stt() {
                    stt.do_send(SpeechAudio::Cancelled {
                        session_id: self.client_id.clone(),
                        reason: "utterance too long".into(),
                    });
                }
                self.reply_err(None, ErrorCode::TooLarge, e.to_string(), ctx);
            }
        }
    }

    fn to_stt(&self, reports: Vec<SpeechAudio>) {
        if let Some(stt) = self.stt() {
            for r in reports {
                stt.do_send(r);
            }
        }
    }
}

/// The wake word's check answered for this session's client audio.
#[derive(Message, Default)]
#[rtype(result = "()")]
pub(in crate::session) struct WakeAnswered;

impl Handler<WakeAnswered> for WsSession {
    type Result = ();

    fn handle(&mut self, _: WakeAnswered, _: &mut Context<Self>) {
        let reports = self
            .audio
            .as_mut()
            .map(ClientAudio::poll)
            .unwrap_or_default();
        self.to_stt(reports);
    }
}
