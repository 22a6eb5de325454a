//! The espeak-ng engine: Debian's `espeak-ng` program, spawned per sentence (linking
//! libespeak-ng would make the binary GPL). `--stdout` gives 16-bit mono WAV whose
//! streamed header has placeholder sizes, so the PCM is read after the header.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::{Audio, TtsEngine, TtsEngineError};

/// espeak-ng settings.
#[derive(Debug, Clone)]
pub struct EspeakConfig {
    /// The program (a name on PATH or a path).
    pub binary: PathBuf,
    /// Voice, e.g. `en-us`.
    pub voice: String,
    /// Words per minute.
    pub rate: u32,
}

/// Speaks with espeak-ng.
#[derive(Debug, Clone)]
pub struct EspeakEngine {
    cfg: EspeakConfig,
}

impl EspeakEngine {
    /// An engine with these settings (nothing is checked until [`TtsEngine::check`]).
    pub fn new(cfg: EspeakConfig) -> Self {
        EspeakEngine { cfg }
    }
}

#[async_trait::async_trait]
impl TtsEngine for EspeakEngine {
    fn name(&self) -> &str {
        "espeak-ng"
    }

    fn voice(&self) -> &str {
        &self.cfg.voice
    }

    async fn check(&self) -> Result<(), TtsEngineError> {
        self.synthesize("ok").await.map(|_| ())
    }

    async fn synthesize(&self, text: &str) -> Result<Audio, TtsEngineError> {
        // Text goes through stdin: no argument parsing surprises (a sentence starting
        // with "-"), no length limit of the command line. kill_on_drop: a cancelled
        // synthesis (barge-in) kills the process.
        let mut child = Command::new(&self.cfg.binary)
            .args(["--stdout", "-v", &self.cfg.voice, "-s", &self.cfg.rate.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    TtsEngineError::Unavailable(format!(
                        "`{}` is not installed (Debian: apt-get install espeak-ng; ./scripts/setup does it)",
                        self.cfg.binary.display()
                    ))
                } else {
                    TtsEngineError::Failed(format!("cannot start {}: {e}", self.cfg.binary.display()))
                }
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(text.as_bytes())
                .await
                .map_err(|e| TtsEngineError::Failed(format!("writing to espeak-ng: {e}")))?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| TtsEngineError::Failed(format!("espeak-ng: {e}")))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(TtsEngineError::Failed(format!(
                "espeak-ng exited with {}: {}",
                out.status,
                err.trim()
            )));
        }
        parse_wav(&out.stdout)
    }
}

/// Reads 16-bit mono PCM from espeak-ng's streamed WAV.
pub fn parse_wav(bytes: &[u8]) -> Result<Audio, TtsEngineError> {
    if bytes.len() < 44 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(TtsEngineError::Failed(format!(
            "espeak-ng did not produce WAV ({} bytes)",
            bytes.len()
        )));
    }
    let channels = u16::from_le_bytes([bytes[22], bytes[23]]);
    let sample_rate = u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]);
    let bits = u16::from_le_bytes([bytes[34], bytes[35]]);
    if channels != 1 || bits != 16 || sample_rate == 0 {
        return Err(TtsEngineError::Failed(format!(
            "unexpected WAV format: {channels} channels, {bits} bits, {sample_rate} Hz"
        )));
    }
    let samples = bytes[44..]
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect();
    Ok(Audio {
        samples,
        sample_rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wav_parsing() {
        let mut wav = Vec::new();
        wav.extend_from_slice(b"RIFF\xff\xff\xff\xffWAVEfmt ");
        wav.extend_from_slice(&16u32.to_le_bytes());
        wav.extend_from_slice(&1u16.to_le_bytes());
        wav.extend_from_slice(&1u16.to_le_bytes());
        wav.extend_from_slice(&22050u32.to_le_bytes());
        wav.extend_from_slice(&44100u32.to_le_bytes());
        wav.extend_from_slice(&2u16.to_le_bytes());
        wav.extend_from_slice(&16u16.to_le_bytes());
        wav.extend_from_slice(b"data\xff\xff\xff\xff");
        wav.extend_from_slice(&[1, 0, 255, 255]);
        let a = parse_wav(&wav).unwrap();
        assert_eq!(a.sample_rate, 22050);
        assert_eq!(a.samples, vec![1, -1]);
        assert!(parse_wav(b"nope").is_err());
    }
}
