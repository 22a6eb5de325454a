//! Client audio: PCM s16le mono 16 kHz in binary frames between `stt_start
//! {"source":"client"}` and `stt_stop`, cut into utterances by the same [`Segmenter`] as
//! the server's own microphone, so push-to-talk and hands-free (`continuous`) listening
//! work the same for a browser or a satellite as for the device.

use std::time::Instant;

use coda_protocol::{AudioSource, SttMode};

use crate::audio::{speech_report, EndCause, Segment, SegmentSettings, Segmenter};
use crate::voice::{SpeechAudio, SPEECH_SAMPLE_RATE};

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientAudioError {
    /// PCM s16le carries whole 2-byte samples.
    #[error("binary audio frame of {0} bytes: PCM s16le frames carry whole 2-byte samples (even length)")]
    OddLength(usize),
    /// A push-to-talk utterance over the limit (dropped).
    #[error("utterance longer than stt.max_utterance_s ({0:.0} s): dropped; send stt_start again")]
    TooLong(f64),
}

/// One listening on client audio.
pub struct ClientAudio {
    session_id: String,
    mode: SttMode,
    seg: Segmenter,
    max_samples: usize,
    /// Its place among the server's client-audio streams, given back when it ends.
    slot: Option<super::admission::LimitSlot>,
}

impl ClientAudio {
    /// Starts listening for `session_id`; push-to-talk reports `Started` at once (returned),
    /// continuous when speech begins.
    pub fn start(
        session_id: String,
        mode: SttMode,
        settings: SegmentSettings,
        wake: Option<crate::voice::WakeListening>,
    ) -> (ClientAudio, Option<SpeechAudio>) {
        let max_samples = (settings.max_utterance_s * f64::from(SPEECH_SAMPLE_RATE)) as usize;
        let started = (mode == SttMode::PushToTalk).then(|| SpeechAudio::Started {
            session_id: session_id.clone(),
            mode,
            source: AudioSource::Client,
        });
        let seg = match wake {
            Some(w) => Segmenter::with_wake(settings, w, Instant::now()),
            None => Segmenter::new(settings, mode, Instant::now()),
        };
        let audio = ClientAudio {
            session_id,
            mode,
            seg,
            max_samples,
            slot: None,
        };
        (audio, started)
    }

    /// The listening's mode.
    pub fn mode(&self) -> SttMode {
        self.mode
    }

    /// Takes one binary frame; returns the reports for Stt it causes. A push-to-talk
    /// utterance over `max_utterance_s` is an error (the caller drops the listening); a
    /// continuous one is ended there and listening goes on.
    pub fn push(&mut self, bin: &[u8]) -> Result<Vec<SpeechAudio>, ClientAudioError> {
        if !bin.len().is_multiple_of(2) {
            return Err(ClientAudioError::OddLength(bin.len()));
        }
        let samples: Vec<f32> = bin
            .chunks_exact(2)
            .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) / 32768.0)
            .collect();
        if self.mode == SttMode::PushToTalk
            && self.seg.utterance_len() + samples.len() >= self.max_samples
        {
            return Err(ClientAudioError::TooLong(
                self.max_samples as f64 / f64::from(SPEECH_SAMPLE_RATE),
            ));
        }
        let mut out = Vec::new();
        self.seg.push(&samples, Instant::now(), &mut out);
        Ok(out
            .into_iter()
            .filter_map(|segment| self.report(segment))
            .collect())
    }

    /// What the wake word's detector decided since the last frame (its check answered),
    /// without waiting for the next frame.
    pub fn poll(&mut self) -> Vec<SpeechAudio> {
        let mut out = Vec::new();
        self.seg.poll(Instant::now(), &mut out);
        out.into_iter()
            .filter_map(|segment| self.report(segment))
            .collect()
    }

    fn report(&self, segment: Segment) -> Option<SpeechAudio> {
        if let Segment::Ended {
            cause: EndCause::MaxLength,
            ..
        } = &segment
        {
            tracing::info!(session = %self.session_id, "client utterance reached stt.max_utterance_s; ended there");
        }
        speech_report(&self.session_id, self.mode, AudioSource::Client, segment)
    }

    /// `stt_stop`: the open utterance ends (push-to-talk: always one; continuous: the one
    /// in progress, if any).
    pub fn stop(mut self) -> Option<SpeechAudio> {
        let segment = self.seg.stop(Instant::now())?;
        self.report(segment)
    }

    /// Holds `slot` for as long as this stream lives.
    pub fn hold(&mut self, slot: super::admission::LimitSlot) {
        self.slot = Some(slot);
    }

    /// Gives its slot up (to a stream replacing it).
    pub fn release(&mut self) -> Option<super::admission::LimitSlot> {
        self.slot.take()
    }

    /// Audio in the open utterance, ms.
    pub fn utterance_ms(&self) -> f64 {
        self.seg.utterance_len() as f64 * 1000.0 / f64::from(SPEECH_SAMPLE_RATE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcm(samples: impl Iterator<Item = f32>) -> Vec<u8> {
        samples
            .flat_map(|s| ((s * 32767.0) as i16).to_le_bytes())
            .collect()
    }

    fn tone(ms: usize) -> Vec<u8> {
        pcm((0..ms * 16).map(|i| 0.3 * (i as f32 * 0.0864).sin()))
    }

    fn hush(ms: usize) -> Vec<u8> {
        pcm((0..ms * 16).map(|i| if i % 2 == 0 { 0.0005 } else { -0.0005 }))
    }

    #[test]
    fn continuous_client_audio_makes_one_utterance_per_phrase() {
        let settings = SegmentSettings::default();
        let (mut a, started) = ClientAudio::start("s".into(), SttMode::Continuous, settings, None);
        assert!(started.is_none());
        let mut reports = Vec::new();
        for chunk in [hush(400), tone(800), hush(900), tone(600), hush(900)] {
            for frame in chunk.chunks(640) {
                reports.extend(a.push(frame).expect("even frames"));
            }
        }
        let kinds: Vec<&str> = reports
            .iter()
            .map(|r| match r {
                SpeechAudio::Started { .. } => "started",
                SpeechAudio::Partial { .. } => "partial",
                SpeechAudio::Ended { .. } => "ended",
                SpeechAudio::Cancelled { .. } => "cancelled",
                SpeechAudio::Wake { .. } => "wake",
            })
            .collect();
        assert_eq!(
            kinds.iter().filter(|k| **k == "started").count(),
            2,
            "{kinds:?}"
        );
        assert_eq!(
            kinds.iter().filter(|k| **k == "ended").count(),
            2,
            "{kinds:?}"
        );
        assert!(a.stop().is_none(), "nothing open after the second phrase");
    }

    #[test]
    fn odd_frames_and_long_push_to_talk_are_refused() {
        let settings = SegmentSettings {
            max_utterance_s: 1.0,
            ..Default::default()
        };
        let (mut a, started) = ClientAudio::start("s".into(), SttMode::PushToTalk, settings, None);
        assert!(matches!(started, Some(SpeechAudio::Started { .. })));
        assert!(matches!(
            a.push(&[0, 0, 0]),
            Err(ClientAudioError::OddLength(3))
        ));
        assert!(a.push(&tone(900)).is_ok());
        assert!(matches!(
            a.push(&tone(200)),
            Err(ClientAudioError::TooLong(_))
        ));
        assert!(matches!(a.stop(), Some(SpeechAudio::Ended { .. })));
    }
}
