//! Wake word examples spoken by espeak-ng: the default reference (so a wake word works on
//! a fresh machine with nothing recorded) and, with other voices, the held-out set
//! `coda bench wake` measures on.

use std::path::Path;
use std::process::{Command, Stdio};

use super::template::Reference;
use super::WakeError;
use crate::audio::convert::to_speech_rate_i16;

/// One espeak-ng rendering: voice (with variant), words per minute, pitch (0–99).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Voice {
    pub voice: &'static str,
    pub variant: &'static str,
    pub wpm: u32,
    pub pitch: u32,
}

impl Voice {
    pub fn label(&self) -> String {
        format!(
            "{}+{} {} wpm p{}",
            self.voice, self.variant, self.wpm, self.pitch
        )
    }
}

const REFERENCE_VOICES: [&str; 3] = ["en-us", "en-gb", "en-gb-x-rp"];
const REFERENCE_VARIANTS: [&str; 8] = ["m1", "f2", "m3", "f4", "m5", "Annie", "m8", "belinda"];

/// The voices a synthesised reference is built from (48: 3 accents × 8 variants × 2
/// speeds, pitches spread).
pub fn reference_voices() -> Vec<Voice> {
    let mut out = Vec::new();
    for (i, voice) in REFERENCE_VOICES.iter().enumerate() {
        for (j, variant) in REFERENCE_VARIANTS.iter().enumerate() {
            for (k, wpm) in [145, 180].iter().enumerate() {
                out.push(Voice {
                    voice,
                    variant,
                    wpm: *wpm,
                    pitch: [35, 50, 65][(i + j + k) % 3],
                });
            }
        }
    }
    out
}

/// Voices none of which is in [`reference_voices`] (other accents and variants): the
/// held-out speakers of `coda bench wake`.
pub fn held_out_voices() -> Vec<Voice> {
    let voices = [
        "en-gb-scotland",
        "en-029",
        "en-gb-x-gbclan",
        "en-gb-x-gbcwmd",
    ];
    let variants = ["m2", "f1", "m4", "f3", "f5", "m6", "m7", "klatt"];
    let mut out = Vec::new();
    for (i, voice) in voices.iter().enumerate() {
        for (j, variant) in variants.iter().enumerate() {
            out.push(Voice {
                voice,
                variant,
                wpm: [135, 160, 190][(i + j) % 3],
                pitch: [30, 45, 60, 75][(i * 3 + j) % 4],
            });
        }
    }
    out
}

/// `text` spoken by `v`, 16 kHz mono.
pub fn speak(espeak: &Path, v: &Voice, text: &str) -> Result<Vec<f32>, WakeError> {
    let out = Command::new(espeak)
        .args([
            "--stdout",
            "-v",
            &format!("{}+{}", v.voice, v.variant),
            "-s",
            &v.wpm.to_string(),
            "-p",
            &v.pitch.to_string(),
            "--",
            text,
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                WakeError::Unavailable(format!(
                    "`{}` is not installed, and a wake word reference is built with it (Debian: apt-get install espeak-ng; ./scripts/setup does it), or record your own: coda wake train",
                    espeak.display()
                ))
            } else {
                WakeError::Unavailable(format!("cannot run {}: {e}", espeak.display()))
            }
        })?;
    if !out.status.success() {
        return Err(WakeError::Unavailable(format!(
            "espeak-ng {} failed: {}",
            v.label(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let audio = crate::tts::espeak::parse_wav(&out.stdout)
        .map_err(|e| WakeError::Unavailable(e.to_string()))?;
    to_speech_rate_i16(&audio.samples, audio.sample_rate, 1)
        .map_err(|e| WakeError::Unavailable(e.to_string()))
}

/// Phonetically varied sentences (from the Harvard sentences) for the codebook of speech
/// sounds.
const BACKGROUND: [&str; 12] = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.",
    "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.",
];

/// Other speech by the reference voices, for the codebook.
pub fn background(espeak: &Path) -> Result<Vec<Vec<f32>>, WakeError> {
    reference_voices()
        .iter()
        .step_by(2)
        .enumerate()
        .map(|(i, v)| speak(espeak, v, BACKGROUND[i % BACKGROUND.len()]))
        .collect()
}

/// A reference for `word` spoken by the [`reference_voices`].
pub fn reference(word: &str, espeak: &Path) -> Result<Reference, WakeError> {
    let clips = reference_voices()
        .iter()
        .map(|v| Ok((format!("espeak-ng {}", v.label()), speak(espeak, v, word)?)))
        .collect::<Result<Vec<_>, WakeError>>()?;
    Reference::build(word, &clips, &background(espeak)?)
}
