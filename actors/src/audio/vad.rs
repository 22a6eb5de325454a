//! Voice activity detection for `continuous` listening: an energy detector on 20 ms frames
//! of 16 kHz audio, with an adaptive noise floor and hysteresis.
//!
//! - The noise floor follows the frame level down at once and up slowly (only while no one
//!   speaks), so a steady fan or hum raises the bar instead of counting as speech.
//! - Speech starts when the level stays `start_db` above the floor (and above an absolute
//!   minimum) for `start_ms`; it continues while the level stays `stop_db` above the floor
//!   (a lower bar: hysteresis, so word gaps do not end an utterance) and ends after
//!   `silence_ms` below it.
//!
//! Why not a model or a crate: `webrtc-vad` builds C code from 2016 and is unmaintained;
//! `voice_activity_detector` runs Silero through onnxruntime, whose binaries are
//! downloaded at build time (no network here) and weigh tens of MB. For a push-to-talk or
//! near-field microphone an energy detector with a tracked floor is reliable, costs
//! nothing, and whisper itself rejects non-speech that slips through.

use crate::voice::SPEECH_SAMPLE_RATE;

/// Samples per analysis frame (20 ms at 16 kHz).
pub const FRAME: usize = (SPEECH_SAMPLE_RATE as usize) / 50;

/// How fast the floor climbs under a sound louder than it, dB per frame (5 dB/s).
const FLOOR_RISE_DB: f32 = 0.1;

/// Detector settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VadSettings {
    /// Level above the noise floor that starts speech, dB.
    pub start_db: f32,
    /// Level above the noise floor that keeps speech going, dB (≤ `start_db`).
    pub stop_db: f32,
    /// Frames quieter than this (dBFS) are never speech.
    pub min_dbfs: f32,
    /// Speech must last this long to start an utterance, ms.
    pub start_ms: u32,
    /// Silence that ends an utterance, ms (the hangover).
    pub silence_ms: u32,
    /// The floor a fresh detector assumes, dBFS.
    pub initial_floor_dbfs: f32,
}

impl Default for VadSettings {
    fn default() -> Self {
        VadSettings {
            start_db: 12.0,
            stop_db: 6.0,
            min_dbfs: -50.0,
            start_ms: 60,
            silence_ms: 600,
            initial_floor_dbfs: -60.0,
        }
    }
}

/// What a frame changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VadEvent {
    /// Nothing changed.
    None,
    /// Speech began; it began `frames_ago` frames ago (this frame included), so the
    /// caller can keep those frames.
    SpeechStart {
        /// How many frames back (≥ 1) the speech began.
        frames_ago: usize,
    },
    /// Speech ended: the last voiced frame was `frames_ago` frames ago.
    SpeechEnd {
        /// Silent frames since the last voiced one (the hangover).
        frames_ago: usize,
    },
}

/// The detector. Feed it 16 kHz frames of [`FRAME`] samples.
#[derive(Debug, Clone)]
pub struct Vad {
    s: VadSettings,
    floor_db: f32,
    speaking: bool,
    above: usize,
    below: usize,
    voiced: bool,
}

/// Level of a frame in dBFS (a full-scale sine is -3 dBFS).
pub fn frame_dbfs(frame: &[f32]) -> f32 {
    let r = super::convert::rms(frame).max(1e-9);
    20.0 * r.log10()
}

impl Vad {
    /// A detector with `settings`.
    pub fn new(settings: VadSettings) -> Vad {
        Vad {
            s: settings,
            floor_db: settings.initial_floor_dbfs,
            speaking: false,
            above: 0,
            below: 0,
            voiced: false,
        }
    }

    /// Was the last frame loud enough to count as speech (while speaking: above the
    /// continue bar; before: above the start bar)?
    pub fn last_voiced(&self) -> bool {
        self.voiced
    }

    /// Is speech in progress?
    pub fn speaking(&self) -> bool {
        self.speaking
    }

    /// The current noise floor, dBFS.
    pub fn floor_dbfs(&self) -> f32 {
        self.floor_db
    }

    fn frames(ms: u32) -> usize {
        ((ms as usize) / 20).max(1)
    }

    /// Analyses one frame.
    pub fn push_frame(&mut self, frame: &[f32]) -> VadEvent {
        let db = frame_dbfs(frame);
        if !self.speaking {
            // Floor: down at once; towards quiet frames quickly, under loud ones slowly.
            if db < self.floor_db {
                self.floor_db = db;
            } else if db < self.floor_db + self.s.start_db {
                self.floor_db += (db - self.floor_db) * 0.05;
            } else {
                self.floor_db += FLOOR_RISE_DB;
            }
            let loud = db >= self.floor_db + self.s.start_db && db >= self.s.min_dbfs;
            self.voiced = loud;
            if loud {
                self.above += 1;
                if self.above >= Self::frames(self.s.start_ms) {
                    self.speaking = true;
                    self.below = 0;
                    let n = self.above;
                    self.above = 0;
                    return VadEvent::SpeechStart { frames_ago: n };
                }
            } else {
                self.above = 0;
            }
            VadEvent::None
        } else {
            // Speech dips to the floor between syllables, which pulls it back down; a
            // steady sound never does, so the floor climbs under it and the "speech" ends.
            if db < self.floor_db {
                self.floor_db = db;
            } else {
                self.floor_db += FLOOR_RISE_DB;
            }
            let voiced = db >= self.floor_db + self.s.stop_db && db >= self.s.min_dbfs;
            self.voiced = voiced;
            if voiced {
                self.below = 0;
            } else {
                self.below += 1;
                if self.below >= Self::frames(self.s.silence_ms) {
                    self.speaking = false;
                    let n = self.below;
                    self.below = 0;
                    return VadEvent::SpeechEnd { frames_ago: n };
                }
            }
            VadEvent::None
        }
    }

    /// Forgets the current utterance (keeps the floor).
    pub fn reset(&mut self) {
        self.speaking = false;
        self.above = 0;
        self.below = 0;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A 220 Hz tone of `ms` at amplitude `amp` (the audio tests' stand-in for a voice).
    pub(in crate::audio) fn tone(ms: u32, amp: f32) -> Vec<f32> {
        let n = (SPEECH_SAMPLE_RATE * ms / 1000) as usize;
        (0..n)
            .map(|i| amp * (2.0 * std::f32::consts::PI * 220.0 * i as f32 / 16_000.0).sin())
            .collect()
    }

    /// Deterministic white-ish noise (xorshift), amplitude `amp`.
    pub(crate) fn noise(ms: u32, amp: f32, seed: u32) -> Vec<f32> {
        let n = (SPEECH_SAMPLE_RATE * ms / 1000) as usize;
        let mut x = seed.max(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                amp * ((x as f32 / u32::MAX as f32) * 2.0 - 1.0)
            })
            .collect()
    }

    fn events(vad: &mut Vad, signal: &[f32]) -> Vec<(usize, VadEvent)> {
        signal
            .chunks_exact(FRAME)
            .enumerate()
            .map(|(i, f)| (i, vad.push_frame(f)))
            .filter(|(_, e)| *e != VadEvent::None)
            .collect()
    }

    #[test]
    fn tone_bursts_between_silences_are_two_utterances() {
        let mut s = Vec::new();
        s.extend(noise(400, 0.001, 7));
        s.extend(tone(800, 0.3));
        s.extend(noise(1_000, 0.001, 8));
        s.extend(tone(500, 0.3));
        s.extend(noise(1_000, 0.001, 9));
        let mut vad = Vad::new(VadSettings::default());
        let ev = events(&mut vad, &s);
        assert_eq!(ev.len(), 4, "{ev:?}");
        // Starts 60 ms into each burst (start_ms), ends 600 ms after (silence_ms).
        assert_eq!(ev[0].1, VadEvent::SpeechStart { frames_ago: 3 });
        assert_eq!(ev[0].0, 20 + 2);
        assert_eq!(ev[1].1, VadEvent::SpeechEnd { frames_ago: 30 });
        assert_eq!(ev[1].0, 20 + 40 + 29);
        assert!(matches!(ev[2].1, VadEvent::SpeechStart { .. }));
        assert!(matches!(ev[3].1, VadEvent::SpeechEnd { .. }));
    }

    #[test]
    fn short_gaps_do_not_end_an_utterance_and_clicks_do_not_start_one() {
        let mut s = Vec::new();
        s.extend(noise(300, 0.001, 1));
        s.extend(tone(40, 0.5)); // a click: shorter than start_ms
        s.extend(noise(500, 0.001, 2));
        s.extend(tone(400, 0.3));
        s.extend(noise(200, 0.001, 3)); // a pause between words
        s.extend(tone(400, 0.3));
        s.extend(noise(800, 0.001, 4));
        let mut vad = Vad::new(VadSettings::default());
        let ev = events(&mut vad, &s);
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert!(matches!(ev[0].1, VadEvent::SpeechStart { .. }));
        assert!(matches!(ev[1].1, VadEvent::SpeechEnd { .. }));
    }

    #[test]
    fn steady_noise_raises_the_floor_instead_of_counting_as_speech() {
        // Loud steady noise (-23 dBFS) from the start: the floor climbs to it (one early
        // false start allowed while it adapts), then only a much louder tone is speech.
        let mut vad = Vad::new(VadSettings::default());
        let _ = events(&mut vad, &noise(9_000, 0.12, 5));
        assert!(!vad.speaking(), "steady noise still counted as speech");
        assert!(vad.floor_dbfs() > -35.0, "floor {}", vad.floor_dbfs());
        let ev = events(&mut vad, &noise(2_000, 0.12, 6));
        assert!(ev.is_empty(), "noise after adaptation: {ev:?}");
        let mut loud = tone(500, 0.9);
        for (a, b) in loud.iter_mut().zip(noise(500, 0.12, 7)) {
            *a += b;
        }
        let ev = events(&mut vad, &loud);
        assert!(
            matches!(ev.first(), Some((_, VadEvent::SpeechStart { .. }))),
            "{ev:?}"
        );
    }

    #[test]
    fn digital_silence_never_starts() {
        let mut vad = Vad::new(VadSettings::default());
        assert!(events(&mut vad, &vec![0.0; 16_000]).is_empty());
        // Very quiet but above the floor: under min_dbfs, so still not speech.
        assert!(events(&mut vad, &tone(500, 0.002)).is_empty());
    }
}
