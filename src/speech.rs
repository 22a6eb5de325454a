//! The configured speech engine, shared by `coda serve`, `coda say` and `coda bench tts`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use coda_actors::llm::http::HttpOptions;
use coda_actors::tts::espeak::{EspeakConfig, EspeakEngine};
use coda_actors::tts::remote::{
    ElevenLabsConfig, ElevenLabsEngine, FallbackEngine, OpenAiSpeechConfig, OpenAiSpeechEngine,
};
use coda_actors::tts::{TtsEngine, TtsOutput};

use crate::config::Settings;

/// Playback and `tts_audio` settings from `[tts]` and `[audio]`.
pub fn tts_output(s: &Settings) -> TtsOutput {
    TtsOutput {
        play: s.tts.play,
        device: s.audio.output_device.clone(),
        stream_audio: s.tts.stream_audio,
    }
}

fn env_key(var: &str) -> Option<String> {
    if var.is_empty() {
        return None;
    }
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

fn espeak(s: &Settings, voice: Option<&str>) -> Arc<dyn TtsEngine> {
    Arc::new(EspeakEngine::new(EspeakConfig {
        binary: PathBuf::from(&s.tts.binary),
        voice: voice.unwrap_or(&s.tts.voice).to_string(),
        rate: s.tts.rate,
    }))
}

/// The speech engine `[tts]` names (or `engine`), with espeak-ng behind a remote engine
/// when `tts.fallback` says so.
pub fn tts_engine(
    s: &Settings,
    engine: Option<&str>,
    voice: Option<&str>,
) -> anyhow::Result<Arc<dyn TtsEngine>> {
    let name = engine.unwrap_or(&s.tts.engine);
    let http = HttpOptions {
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Settings::secs(s.tts.timeout_s),
        max_retries: 0,
        ..Default::default()
    };
    let timeout = Settings::secs(s.tts.timeout_s);
    let remote: Arc<dyn TtsEngine> = match name {
        "espeak-ng" | "espeak" => return Ok(espeak(s, voice)),
        "elevenlabs" => {
            let e = &s.tts.elevenlabs;
            Arc::new(ElevenLabsEngine::new(ElevenLabsConfig {
                base_url: e.base_url.clone(),
                api_key: env_key(&e.api_key_env),
                voice_id: voice.unwrap_or(&e.voice_id).to_string(),
                model_id: e.model_id.clone(),
                output_format: e.output_format.clone(),
                timeout,
                http,
            })?)
        }
        "openai" => {
            let o = &s.tts.openai;
            Arc::new(OpenAiSpeechEngine::new(OpenAiSpeechConfig {
                base_url: o.base_url.clone(),
                api_key: env_key(&o.api_key_env),
                model: o.model.clone(),
                voice: voice.unwrap_or(&o.voice).to_string(),
                response_format: o.response_format.clone(),
                timeout,
                http,
            })?)
        }
        other => {
            anyhow::bail!("unknown speech engine {other:?} (known: espeak-ng, elevenlabs, openai)")
        }
    };
    if s.tts.fallback.is_empty() {
        Ok(remote)
    } else {
        Ok(Arc::new(FallbackEngine::new(remote, espeak(s, None))))
    }
}
