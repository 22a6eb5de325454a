//! The speech-engine registry, beside the LLM provider registry: builds the engine
//! `tts.engine` names from settings already resolved from config, environment and flags,
//! with espeak-ng behind a remote engine when `tts.fallback` asks for it.

use std::sync::Arc;

use super::espeak::{EspeakConfig, EspeakEngine};
use super::remote::{
    ElevenLabsConfig, ElevenLabsEngine, FallbackEngine, OpenAiSpeechConfig, OpenAiSpeechEngine,
};
use super::{TtsEngine, TtsEngineError};

/// A speech engine `tts.engine` (and `--engine`) can name; `espeak` also means espeak-ng.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum EngineKind {
    #[serde(rename = "espeak-ng")]
    EspeakNg,
    #[serde(rename = "elevenlabs")]
    ElevenLabs,
    /// An OpenAI-compatible `/v1/audio/speech`.
    #[serde(rename = "openai")]
    OpenAi,
}

impl EngineKind {
    pub const ALL: [EngineKind; 3] = [
        EngineKind::EspeakNg,
        EngineKind::ElevenLabs,
        EngineKind::OpenAi,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::EspeakNg => "espeak-ng",
            EngineKind::ElevenLabs => "elevenlabs",
            EngineKind::OpenAi => "openai",
        }
    }
}

// Through `FromStr`, so a bad config value is answered with the known names.
impl TryFrom<String> for EngineKind {
    type Error = TtsSetupError;
    fn try_from(name: String) -> Result<EngineKind, TtsSetupError> {
        name.parse()
    }
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EngineKind {
    type Err = TtsSetupError;
    fn from_str(name: &str) -> Result<EngineKind, TtsSetupError> {
        if name == "espeak" {
            return Ok(EngineKind::EspeakNg);
        }
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == name)
            .ok_or_else(|| TtsSetupError::Unknown(name.to_string()))
    }
}

/// Everything the registry needs.
#[derive(Debug, Clone)]
pub struct TtsSettings {
    pub engine: EngineKind,
    /// The local engine (and the fallback).
    pub espeak: EspeakConfig,
    pub elevenlabs: ElevenLabsConfig,
    /// An OpenAI-compatible speech endpoint.
    pub openai: OpenAiSpeechConfig,
    /// Speak with espeak-ng when the remote engine fails.
    pub fallback: bool,
}

/// Why no engine was built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TtsSetupError {
    /// No engine of that name.
    #[error("unknown speech engine {0:?} (known: espeak-ng, elevenlabs, openai)")]
    Unknown(String),
    /// The engine refused its settings.
    #[error("{0}")]
    Engine(#[from] TtsEngineError),
}

/// The engine `s.engine` names, speaking with `voice` when given (else the engine's own).
pub fn build(s: &TtsSettings, voice: Option<&str>) -> Result<Arc<dyn TtsEngine>, TtsSetupError> {
    let espeak = |voice: Option<&str>| -> Arc<dyn TtsEngine> {
        let mut cfg = s.espeak.clone();
        if let Some(v) = voice {
            cfg.voice = v.to_string();
        }
        Arc::new(EspeakEngine::new(cfg))
    };
    let remote: Arc<dyn TtsEngine> = match s.engine {
        EngineKind::EspeakNg => return Ok(espeak(voice)),
        EngineKind::ElevenLabs => {
            let mut cfg = s.elevenlabs.clone();
            if let Some(v) = voice {
                cfg.voice_id = v.to_string();
            }
            Arc::new(ElevenLabsEngine::new(cfg)?)
        }
        EngineKind::OpenAi => {
            let mut cfg = s.openai.clone();
            if let Some(v) = voice {
                cfg.voice = v.to_string();
            }
            Arc::new(OpenAiSpeechEngine::new(cfg)?)
        }
    };
    if s.fallback {
        Ok(Arc::new(FallbackEngine::new(remote, espeak(None))))
    } else {
        Ok(remote)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::http::HttpOptions;
    use std::time::Duration;

    fn settings(engine: &str, fallback: bool) -> TtsSettings {
        TtsSettings {
            engine: engine.parse().expect("a known engine"),
            espeak: EspeakConfig {
                binary: "espeak-ng".into(),
                voice: "en-us".into(),
                rate: 175,
            },
            elevenlabs: ElevenLabsConfig {
                base_url: "http://127.0.0.1:9".into(),
                api_key: None,
                voice_id: "v".into(),
                model_id: "m".into(),
                output_format: "pcm_16000".into(),
                timeout: Duration::from_secs(1),
                http: HttpOptions::default(),
            },
            openai: OpenAiSpeechConfig {
                base_url: "http://127.0.0.1:9/v1".into(),
                api_key: None,
                model: "tts-1".into(),
                voice: "alloy".into(),
                response_format: "pcm".into(),
                timeout: Duration::from_secs(1),
                http: HttpOptions::default(),
            },
            fallback,
        }
    }

    #[test]
    fn engines_by_name_with_the_voice_asked_for() {
        let e = build(&settings("espeak", false), Some("en-gb")).expect("espeak-ng");
        assert_eq!(e.voice(), "en-gb");
        let e = build(&settings("openai", false), None).expect("openai");
        assert_eq!(e.voice(), "alloy");
        let e = build(&settings("elevenlabs", true), Some("x")).expect("elevenlabs");
        assert!(e.name().contains("elevenlabs"), "{}", e.name());
    }

    #[test]
    fn unknown_names_and_bad_settings_are_clear_errors() {
        let err = "festival".parse::<EngineKind>().expect_err("unknown");
        assert_eq!(err, TtsSetupError::Unknown("festival".into()));
        assert!(err.to_string().contains("espeak-ng, elevenlabs, openai"));
        let mut s = settings("elevenlabs", false);
        s.elevenlabs.output_format = "mp3_44100".into();
        let err = build(&s, None).expect_err("not PCM");
        assert!(err.to_string().contains("not raw PCM"), "{err}");
    }
}
