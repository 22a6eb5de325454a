//! `[tts]` → the speech-engine registry's settings (`coda_actors::tts::registry`), shared
//! by `coda serve`, `coda say` and `coda bench tts`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use coda_actors::llm::http::HttpOptions;
use coda_actors::tts::espeak::EspeakConfig;
use coda_actors::tts::registry::{self, TtsSettings};
use coda_actors::tts::remote::{ElevenLabsConfig, OpenAiSpeechConfig};
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

/// The registry's settings from `[tts]` (keys from their environment variables).
pub fn tts_settings(s: &Settings) -> TtsSettings {
    let http = HttpOptions {
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Settings::secs(s.tts.timeout_s),
        max_retries: 0,
        ..Default::default()
    };
    let timeout = Settings::secs(s.tts.timeout_s);
    let (e, o) = (&s.tts.elevenlabs, &s.tts.openai);
    TtsSettings {
        engine: s.tts.engine.clone(),
        espeak: EspeakConfig {
            binary: PathBuf::from(&s.tts.binary),
            voice: s.tts.voice.clone(),
            rate: s.tts.rate,
        },
        elevenlabs: ElevenLabsConfig {
            base_url: e.base_url.clone(),
            api_key: env_key(&e.api_key_env),
            voice_id: e.voice_id.clone(),
            model_id: e.model_id.clone(),
            output_format: e.output_format.clone(),
            timeout,
            http: http.clone(),
        },
        openai: OpenAiSpeechConfig {
            base_url: o.base_url.clone(),
            api_key: env_key(&o.api_key_env),
            model: o.model.clone(),
            voice: o.voice.clone(),
            response_format: o.response_format.clone(),
            timeout,
            http,
        },
        fallback: !s.tts.fallback.is_empty(),
    }
}

/// The speech engine `[tts]` names (or `engine`), speaking with `voice` when given.
pub fn tts_engine(
    s: &Settings,
    engine: Option<&str>,
    voice: Option<&str>,
) -> anyhow::Result<Arc<dyn TtsEngine>> {
    let mut settings = tts_settings(s);
    if let Some(e) = engine {
        settings.engine = e.to_string();
    }
    Ok(registry::build(&settings, voice)?)
}
