//! The speech-engine registry, beside the LLM provider registry: builds the engine
//! `tts.engine` names from settings already resolved from config, environment and flags,
//! with espeak-ng behind a remote engine when `tts.fallback` asks for it.

use std::sync::Arc;

use super::espeak::{EspeakConfig, EspeakEngine};
use super::remote::{
    ElevenLabsConfig, ElevenLabsEngine, FallbackEngine, OpenAiSpeechConfig, OpenAiSpeechEngine,
};
use super::{TtsEngine, TtsEngineError};

/// The engines by name (`espeak` also means espeak-ng).
pub const ENGINES: &[&str] = &["espeak-ng", "elevenlabs", "openai"];

/// Everything the registry needs.
#[derive(Debug, Clone)]
pub struct TtsSettings {
    /// `espeak-ng`, `elevenlabs` or `openai`.
    pub engine: String,
    /// The local engine (and the fallback).
    pub espeak: EspeakConfig,
    /// ElevenLabs.
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
    let remote: Arc<dyn TtsEngine> = match s.engine.as_str() {
        "espeak-ng" | "espeak" => return Ok(espeak(voice)),
        "elevenlabs" => {
            let mut cfg = s.elevenlabs.clone();
            if let Some(v) = voice {
                cfg.voice_id = v.to_string();
            }
            Arc::new(ElevenLabsEngine::new(cfg)?)
        }
        "openai" => {
            let mut cfg = s.openai.clone();
            if let Some(v) = voice {
                cfg.voice = v.to_string();
            }
            Arc::new(OpenAiSpeechEngine::new(cfg)?)
        }
        other => return Err(TtsSetupError::Unknown(other.to_string())),
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
            engine: engine.into(),
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
        let err = build(&settings("festival", false), None).expect_err("unknown");
        assert_eq!(err, TtsSetupError::Unknown("festival".into()));
        assert!(err.to_string().contains("espeak-ng, elevenlabs, openai"));
        let mut s = settings("elevenlabs", false);
        s.elevenlabs.output_format = "mp3_44100".into();
        let err = build(&s, None).expect_err("not PCM");
        assert!(err.to_string().contains("not raw PCM"), "{err}");
    }
}
