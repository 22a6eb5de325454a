//! Config → the actors' settings: every conversion from the loaded [`Settings`] (and its
//! sections) into what an actor or engine takes, in one place. Values were validated at
//! load; nothing here fails except where a section still parses (alert rules).

use std::path::PathBuf;
use std::time::Duration;

use coda_actors::cluster::ClusterSettings;
use coda_actors::hub::HubSettings;
use coda_actors::llm::http::HttpOptions;
use coda_actors::metrics::MetricsSettings;
use coda_actors::session::SessionSettings;
use coda_actors::supervise::RestartBudget;
use coda_actors::tts::espeak::EspeakConfig;
use coda_actors::tts::registry::TtsSettings;
use coda_actors::tts::remote::{ElevenLabsConfig, OpenAiSpeechConfig};
use coda_actors::tts::TtsOutput;

use crate::config::{MemoryConfig, Settings};

impl Settings {
    /// What the local LLM provider needs from `[llm]` and `[models]`.
    pub fn local_llm(&self) -> coda_actors::llm::local::LocalLlmConfig {
        coda_actors::llm::local::LocalLlmConfig {
            model: self.llm.model.clone(),
            models_dir: Some(self.model_store().dir().to_path_buf()),
            temperature: self.llm.temperature,
            top_p: self.llm.top_p,
            max_tokens: self.llm.max_tokens,
            seed: self.llm.seed,
            threads: self.llm.threads,
        }
    }

    /// What the Stt actor needs from `[stt]` and `[models]`.
    pub fn stt_settings(&self) -> coda_actors::stt::SttSettings {
        coda_actors::stt::SttSettings {
            model: self.stt.model.clone(),
            models_dir: Some(self.model_store().dir().to_path_buf()),
            language: self.stt.language.clone(),
            threads: self.stt.threads,
            preload: self.stt.preload,
        }
    }

    /// WakeWord's settings from `[wake]`.
    pub fn wake_settings(&self) -> coda_actors::wake::WakeSettings {
        let w = &self.wake;
        coda_actors::wake::WakeSettings {
            word: w.word.trim().to_string(),
            reference: (!w.reference.is_empty()).then(|| w.reference.clone().into()),
            models_dir: Some(self.model_store().dir().to_path_buf()),
            threshold: w.threshold,
            verify: w
                .verify
                .then_some(coda_actors::wake::verify::VerifySettings {
                    candidate_threshold: w.candidate_threshold,
                    threshold: w.verify_threshold,
                    early: w.early_check,
                }),
            synthesize_missing: w.synthesize_missing,
            espeak: PathBuf::from(&self.tts.binary),
        }
    }

    /// AudioCapture's settings from `[audio]`.
    pub fn audio_settings(&self) -> coda_actors::audio::AudioSettings {
        let a = &self.audio;
        coda_actors::audio::AudioSettings {
            input_device: a.input_device.clone(),
            echo_cancel: a.echo_cancel,
            segment: coda_actors::audio::SegmentSettings {
                vad: coda_actors::audio::vad::VadSettings {
                    start_db: a.vad_start_db,
                    stop_db: a.vad_stop_db,
                    min_dbfs: a.vad_min_dbfs,
                    start_ms: a.vad_start_ms,
                    silence_ms: a.silence_ms,
                    ..Default::default()
                },
                preroll_ms: a.preroll_ms,
                max_utterance_s: a.max_utterance_s,
                interim_ms: a.interim_ms,
                settle_ms: a.settle_ms,
                quick_silence_ms: a.quick_silence_ms,
            },
        }
    }

    pub fn restart_budget(&self) -> RestartBudget {
        RestartBudget {
            max_restarts: self.kernel.max_restarts,
            period: Settings::secs(self.kernel.restart_period_s),
        }
    }

    pub fn hub_settings(&self) -> HubSettings {
        HubSettings {
            replay_size: self.events.replay_size,
            resume_max_events: self.events.resume_max_events,
            resume_max_age: Settings::secs(self.events.resume_max_age_s),
        }
    }

    /// The cluster link's settings, or `None` when `cluster.nats_url` is empty.
    pub fn cluster_settings(&self) -> Option<ClusterSettings> {
        let c = &self.cluster;
        if c.nats_url.trim().is_empty() {
            return None;
        }
        let node = if c.node.is_empty() {
            host_node_name()
        } else {
            c.node.clone()
        };
        let outbox_dir = if c.outbox_dir.is_empty() {
            self.storage_dir().join("cluster-outbox")
        } else {
            PathBuf::from(&c.outbox_dir)
        };
        Some(ClusterSettings {
            nats_url: c.nats_url.trim().to_string(),
            node,
            stream: c.stream.clone(),
            outbox_dir,
            outbox_max_events: c.outbox_max_events,
            max_events: c.max_events,
            max_age: Settings::secs(c.max_age_s),
            replay_size: self.events.replay_size,
            replay_max: self.events.resume_max_events,
        })
    }

    /// Prices per model (`llm.prices`), looked up by the lower-cased model name.
    pub fn prices(&self) -> coda_actors::llm::usage::Prices {
        coda_actors::llm::usage::Prices(
            self.llm
                .prices
                .iter()
                .map(|(k, v)| (k.to_lowercase(), v.clone()))
                .collect(),
        )
    }

    /// The metrics actor's settings from config (the rules were validated at load time).
    pub fn metrics_settings(&self) -> anyhow::Result<MetricsSettings> {
        Ok(MetricsSettings {
            interval: Settings::secs(self.metrics.interval_s),
            timing_interval: Settings::secs(self.metrics.timing_interval_s),
            window: Settings::secs(self.metrics.window_s),
            alerts: self.metrics.alert_rules()?,
            budget: self.restart_budget(),
        })
    }

    /// The session limits from config.
    pub fn session_settings(&self) -> SessionSettings {
        SessionSettings {
            max_frame_bytes: self.server.max_frame_bytes,
            max_queue: self.server.max_queue,
            max_queue_bytes: self.server.max_queue_bytes,
            max_lag: Duration::from_millis(self.server.max_lag_ms),
            admission: coda_actors::session::admission::AdmissionSettings {
                max_per_ip: self.server.max_connections_per_ip,
                connects_per_s: self.server.connect_rate_per_ip,
            },
            rate_per_s: self.server.rate_limit_per_s,
            rate_burst: f64::from(self.server.rate_limit_burst),
            ping_interval: Settings::secs(self.server.ping_interval_s),
            ping_timeout: Settings::secs(self.server.ping_timeout_s),
            hello_wait: Duration::from_millis(self.server.hello_wait_ms),
            auth_timeout: Settings::secs(self.auth.timeout_s),
            auth_required: self.auth.required,
            max_violations: self.server.max_violations,
            client_audio: coda_actors::session::ClientAudioSettings {
                segment: coda_actors::audio::SegmentSettings {
                    interim_ms: self.stt.interim_interval_ms.clamp(100, 10_000) as u32,
                    max_utterance_s: self.stt.max_utterance_s,
                    ..self.audio_settings().segment
                },
                max_streams: self.audio.max_client_streams,
            },
        }
    }

    /// Playback and `tts_audio` settings from `[tts]` and `[audio]`.
    pub fn tts_output(&self) -> TtsOutput {
        TtsOutput {
            play: self.tts.play,
            device: self.audio.output_device.clone(),
            stream_audio: self.tts.stream_audio,
        }
    }

    /// The registry's settings from `[tts]` (keys from their environment variables).
    pub fn tts_settings(&self) -> TtsSettings {
        let http = HttpOptions {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Settings::secs(self.tts.timeout_s),
            max_retries: 0,
            ..Default::default()
        };
        let timeout = Settings::secs(self.tts.timeout_s);
        let (e, o) = (&self.tts.elevenlabs, &self.tts.openai);
        TtsSettings {
            engine: self.tts.engine,
            espeak: EspeakConfig {
                binary: PathBuf::from(&self.tts.binary),
                voice: self.tts.voice.clone(),
                rate: self.tts.rate,
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
            fallback: self.tts.fallback != crate::config::SpeechFallback::None,
        }
    }
}

impl MemoryConfig {
    /// The engine's settings.
    pub fn engine_settings(&self) -> coda_actors::memory::MemorySettings {
        coda_actors::memory::MemorySettings {
            recent_turns: self.recent_turns,
            summary_token_budget: self.summary_token_budget,
            search_limit: self.search_limit,
            context_token_budget: self.context_token_budget,
            default_limit: self.default_limit,
        }
    }
}

fn env_key(var: &str) -> Option<String> {
    if var.is_empty() {
        return None;
    }
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

/// The host name as a node name: what a subject token may hold, the rest as `-`.
fn host_node_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.is_empty() {
        "node".to_string()
    } else {
        name
    }
}
