//! Remote speech engines over HTTP: ElevenLabs' streaming text-to-speech and the
//! OpenAI-compatible `/v1/audio/speech`. Both are asked for raw 16-bit PCM (no decoder
//! needed), read as it streams in, and checked: an odd byte count or a body that breaks
//! off is `bad_audio`, never half a sentence played as if whole.
//!
//! [`FallbackEngine`] puts espeak-ng (or any engine) behind a remote one: when the remote
//! engine fails, the sentence is spoken by the fallback and the failure is reported.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;

use super::{one_piece, Audio, AudioStream, TtsEngine, TtsEngineError};
use crate::llm::http::HttpOptions;

/// ElevenLabs settings.
#[derive(Debug, Clone)]
pub struct ElevenLabsConfig {
    /// API root, e.g. `https://api.elevenlabs.io` (no `/v1`).
    pub base_url: String,
    /// The `xi-api-key`.
    pub api_key: Option<String>,
    /// Voice id (path parameter).
    pub voice_id: String,
    /// Model, e.g. `eleven_flash_v2_5`.
    pub model_id: String,
    /// `pcm_16000`, `pcm_22050`, `pcm_24000` or `pcm_44100` (raw s16le mono).
    pub output_format: String,
    /// Whole-request time limit.
    pub timeout: Duration,
    /// Connect and idle timeouts.
    pub http: HttpOptions,
}

/// OpenAI-compatible speech settings.
#[derive(Debug, Clone)]
pub struct OpenAiSpeechConfig {
    /// API root including the version, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// Bearer key (none for local servers).
    pub api_key: Option<String>,
    /// Model, e.g. `gpt-4o-mini-tts`, `tts-1`.
    pub model: String,
    /// Voice, e.g. `alloy`.
    pub voice: String,
    /// `pcm` (24 kHz s16le mono) or `wav`.
    pub response_format: String,
    /// Whole-request time limit.
    pub timeout: Duration,
    /// Connect and idle timeouts.
    pub http: HttpOptions,
}

/// The rate of an ElevenLabs `pcm_<rate>` output format.
pub fn elevenlabs_pcm_rate(format: &str) -> Option<u32> {
    format.strip_prefix("pcm_")?.parse().ok().filter(|r| *r > 0)
}

/// Speaks through ElevenLabs.
#[derive(Debug, Clone)]
pub struct ElevenLabsEngine {
    cfg: ElevenLabsConfig,
    rate: u32,
    client: reqwest::Client,
}

impl ElevenLabsEngine {
    /// An engine; fails on an output format that is not raw PCM.
    pub fn new(cfg: ElevenLabsConfig) -> Result<Self, TtsEngineError> {
        let rate = elevenlabs_pcm_rate(&cfg.output_format).ok_or_else(|| {
            TtsEngineError::Unavailable(format!(
                "tts.elevenlabs.output_format `{}` is not raw PCM; use pcm_16000, pcm_22050, pcm_24000 or pcm_44100",
                cfg.output_format
            ))
        })?;
        let client = crate::llm::http::client(&cfg.http)
            .map_err(|e| TtsEngineError::Unavailable(e.to_string()))?;
        Ok(ElevenLabsEngine { cfg, rate, client })
    }
}

/// Speaks through an OpenAI-compatible `/audio/speech`.
#[derive(Debug, Clone)]
pub struct OpenAiSpeechEngine {
    cfg: OpenAiSpeechConfig,
    client: reqwest::Client,
}

impl OpenAiSpeechEngine {
    /// An engine; fails on a response format other than `pcm` or `wav`.
    pub fn new(cfg: OpenAiSpeechConfig) -> Result<Self, TtsEngineError> {
        if cfg.response_format != "pcm" && cfg.response_format != "wav" {
            return Err(TtsEngineError::Unavailable(format!(
                "tts.openai.response_format `{}` is not supported; use pcm or wav",
                cfg.response_format
            )));
        }
        let client = crate::llm::http::client(&cfg.http)
            .map_err(|e| TtsEngineError::Unavailable(e.to_string()))?;
        Ok(OpenAiSpeechEngine { cfg, client })
    }
}

/// Sample rate of OpenAI's `pcm` format.
pub const OPENAI_PCM_RATE: u32 = 24_000;

fn status_error(engine: &str, status: StatusCode, body: &str) -> TtsEngineError {
    let detail = crate::llm::http::error_message(body);
    let msg = format!("{engine}: HTTP {}: {detail}", status.as_u16());
    match status.as_u16() {
        401 | 403 => TtsEngineError::Auth(msg),
        429 => TtsEngineError::RateLimited(msg),
        408 | 504 => TtsEngineError::Timeout(msg),
        _ => TtsEngineError::Failed(msg),
    }
}

fn transport_error(engine: &str, url: &str, e: &reqwest::Error) -> TtsEngineError {
    if e.is_timeout() {
        TtsEngineError::Timeout(format!("{engine}: no answer from {url} in time"))
    } else if e.is_connect() {
        TtsEngineError::Unavailable(format!("{engine}: cannot connect to {url}: {e}"))
    } else if e.is_body() || e.is_decode() {
        TtsEngineError::BadAudio(format!(
            "{engine}: the audio stream from {url} broke off: {e}"
        ))
    } else {
        TtsEngineError::Failed(format!("{engine}: request to {url} failed: {e}"))
    }
}

/// Sends `req` and reads the streamed body whole, within `timeout`.
async fn fetch_audio(
    engine: &str,
    url: &str,
    req: reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<Vec<u8>, TtsEngineError> {
    let work = async {
        let mut resp = req
            .send()
            .await
            .map_err(|e| transport_error(engine, url, &e))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(status_error(engine, status, &body));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| transport_error(engine, url, &e))?
        {
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| {
        TtsEngineError::Timeout(format!(
            "{engine}: no complete answer from {url} within {:.0} s",
            timeout.as_secs_f64()
        ))
    })?
}

/// Sends `req` and yields its raw s16le body as audio pieces as they arrive (a sample split
/// between network chunks is joined), all within `timeout`: an error status before any
/// audio is the request's error; a body that ends mid-sample, carries nothing or stalls is
/// the stream's last item.
async fn stream_pcm(
    engine: &'static str,
    url: &str,
    req: reqwest::RequestBuilder,
    timeout: Duration,
    rate: u32,
) -> Result<AudioStream, TtsEngineError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let too_slow = move |url: &str| {
        TtsEngineError::Timeout(format!(
            "{engine}: no complete answer from {url} within {:.0} s",
            timeout.as_secs_f64()
        ))
    };
    let resp = match tokio::time::timeout_at(deadline, req.send()).await {
        Err(_) => return Err(too_slow(url)),
        Ok(Err(e)) => return Err(transport_error(engine, url, &e)),
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    if !status.is_success() {
        let body = tokio::time::timeout_at(deadline, resp.text())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        return Err(status_error(engine, status, &body));
    }
    struct State {
        resp: Option<reqwest::Response>,
        carry: Option<u8>,
        samples: usize,
        url: String,
    }
    let state = State {
        resp: Some(resp),
        carry: None,
        samples: 0,
        url: url.to_string(),
    };
    let pieces = futures_util::stream::unfold(state, move |mut st| async move {
        loop {
            let resp = st.resp.as_mut()?;
            let next = match tokio::time::timeout_at(deadline, resp.chunk()).await {
                Err(_) => Err(too_slow(&st.url)),
                Ok(Err(e)) => Err(transport_error(engine, &st.url, &e)),
                Ok(Ok(c)) => Ok(c),
            };
            let bytes = match next {
                Ok(Some(b)) => b,
                Ok(None) => {
                    st.resp = None;
                    let err = if st.carry.is_some() {
                        TtsEngineError::BadAudio(format!(
                            "{engine}: {} bytes is not whole 16-bit samples (truncated stream?)",
                            st.samples * 2 + 1
                        ))
                    } else if st.samples == 0 {
                        TtsEngineError::BadAudio(format!("{engine}: no audio in the answer"))
                    } else {
                        return None;
                    };
                    return Some((Err(err), st));
                }
                Err(e) => {
                    st.resp = None;
                    return Some((Err(e), st));
                }
            };
            let mut joined = Vec::with_capacity(bytes.len() + 1);
            joined.extend(st.carry.take());
            joined.extend_from_slice(&bytes);
            if joined.len() % 2 == 1 {
                st.carry = joined.pop();
            }
            if joined.is_empty() {
                continue;
            }
            let samples: Vec<i16> = joined
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect();
            st.samples += samples.len();
            let piece = Audio {
                samples,
                sample_rate: rate,
            };
            return Some((Ok(piece), st));
        }
    });
    Ok(Box::pin(pieces))
}

/// A sentence's pieces joined (the first error is the sentence's).
async fn whole(mut pieces: AudioStream, rate: u32) -> Result<Audio, TtsEngineError> {
    use futures_util::StreamExt;
    let mut samples = Vec::new();
    while let Some(piece) = pieces.next().await {
        samples.extend(piece?.samples);
    }
    Ok(Audio {
        samples,
        sample_rate: rate,
    })
}

#[async_trait::async_trait]
impl TtsEngine for ElevenLabsEngine {
    fn name(&self) -> &str {
        "elevenlabs"
    }

    fn voice(&self) -> &str {
        &self.cfg.voice_id
    }

    async fn check(&self) -> Result<(), TtsEngineError> {
        // A request costs credits: only the configuration is checked.
        if self.cfg.api_key.is_none() {
            return Err(TtsEngineError::Auth(
                "elevenlabs: no API key (set the variable named by tts.elevenlabs.api_key_env)"
                    .into(),
            ));
        }
        Ok(())
    }

    async fn synthesize(&self, text: &str) -> Result<Audio, TtsEngineError> {
        let (url, req) = self.request(text);
        let pieces = stream_pcm("elevenlabs", &url, req, self.cfg.timeout, self.rate).await?;
        whole(pieces, self.rate).await
    }

    async fn synthesize_stream(
        &self,
        text: &str,
    ) -> Result<(AudioStream, Option<TtsEngineError>), TtsEngineError> {
        let (url, req) = self.request(text);
        let pieces = stream_pcm("elevenlabs", &url, req, self.cfg.timeout, self.rate).await?;
        Ok((pieces, None))
    }
}

impl ElevenLabsEngine {
    /// The streaming endpoint's URL and request for `text`.
    fn request(&self, text: &str) -> (String, reqwest::RequestBuilder) {
        // output_format was checked to be `pcm_<digits>`: nothing to escape.
        let url = format!(
            "{}/v1/text-to-speech/{}/stream?output_format={}",
            self.cfg.base_url.trim_end_matches('/'),
            self.cfg.voice_id,
            self.cfg.output_format
        );
        let mut req = self
            .client
            .post(&url)
            .json(&serde_json::json!({"text": text, "model_id": self.cfg.model_id}));
        if let Some(k) = &self.cfg.api_key {
            req = req.header("xi-api-key", k);
        }
        (url, req)
    }
}

#[async_trait::async_trait]
impl TtsEngine for OpenAiSpeechEngine {
    fn name(&self) -> &str {
        "openai"
    }

    fn voice(&self) -> &str {
        &self.cfg.voice
    }

    async fn check(&self) -> Result<(), TtsEngineError> {
        Ok(())
    }

    async fn synthesize_stream(
        &self,
        text: &str,
    ) -> Result<(AudioStream, Option<TtsEngineError>), TtsEngineError> {
        if self.cfg.response_format == "wav" {
            // A WAV's header comes first and may claim sizes it does not have: whole.
            return Ok((one_piece(self.synthesize(text).await?), None));
        }
        let (url, req) = self.request(text);
        let pieces = stream_pcm("openai", &url, req, self.cfg.timeout, OPENAI_PCM_RATE).await?;
        Ok((pieces, None))
    }

    async fn synthesize(&self, text: &str) -> Result<Audio, TtsEngineError> {
        let (url, req) = self.request(text);
        if self.cfg.response_format == "wav" {
            let bytes = fetch_audio("openai", &url, req, self.cfg.timeout).await?;
            super::espeak::parse_wav(&bytes)
                .map_err(|e| TtsEngineError::BadAudio(format!("openai: {}", e.detail())))
        } else {
            let pieces = stream_pcm("openai", &url, req, self.cfg.timeout, OPENAI_PCM_RATE).await?;
            whole(pieces, OPENAI_PCM_RATE).await
        }
    }
}

impl OpenAiSpeechEngine {
    /// The speech endpoint's URL and request for `text`.
    fn request(&self, text: &str) -> (String, reqwest::RequestBuilder) {
        let url = format!("{}/audio/speech", self.cfg.base_url.trim_end_matches('/'));
        let mut req = self.client.post(&url).json(&serde_json::json!({
            "model": self.cfg.model,
            "input": text,
            "voice": self.cfg.voice,
            "response_format": self.cfg.response_format,
        }));
        if let Some(k) = &self.cfg.api_key {
            req = req.bearer_auth(k);
        }
        (url, req)
    }
}

/// A primary engine with a fallback for when it fails.
#[derive(Debug, Clone)]
pub struct FallbackEngine {
    primary: Arc<dyn TtsEngine>,
    fallback: Arc<dyn TtsEngine>,
}

impl FallbackEngine {
    /// `primary`, falling back to `fallback`.
    pub fn new(primary: Arc<dyn TtsEngine>, fallback: Arc<dyn TtsEngine>) -> Self {
        FallbackEngine { primary, fallback }
    }
}

#[async_trait::async_trait]
impl TtsEngine for FallbackEngine {
    fn name(&self) -> &str {
        self.primary.name()
    }

    fn voice(&self) -> &str {
        self.primary.voice()
    }

    async fn check(&self) -> Result<(), TtsEngineError> {
        match self.primary.check().await {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(engine = self.primary.name(), error = %e, fallback = self.fallback.name(), "speech engine not usable; its sentences will be spoken by the fallback");
                self.fallback.check().await
            }
        }
    }

    async fn synthesize(&self, text: &str) -> Result<Audio, TtsEngineError> {
        self.synthesize_reported(text).await.map(|(a, _)| a)
    }

    async fn synthesize_reported(
        &self,
        text: &str,
    ) -> Result<(Audio, Option<TtsEngineError>), TtsEngineError> {
        match self.primary.synthesize(text).await {
            Ok(a) => Ok((a, None)),
            Err(e) => {
                tracing::warn!(engine = self.primary.name(), error = %e, fallback = self.fallback.name(), "speech engine failed; using the fallback");
                let audio = self.fallback.synthesize(text).await?;
                Ok((audio, Some(e)))
            }
        }
    }

    /// The primary engine's stream when its first piece arrives; the fallback's audio when
    /// it fails before that (after it, the sentence has been partly heard: the error
    /// stands).
    async fn synthesize_stream(
        &self,
        text: &str,
    ) -> Result<(AudioStream, Option<TtsEngineError>), TtsEngineError> {
        use futures_util::StreamExt;
        let failed = match self.primary.synthesize_stream(text).await {
            Ok((mut pieces, covered)) => match pieces.next().await {
                Some(Ok(first)) => {
                    let rest = futures_util::stream::once(async move { Ok(first) }).chain(pieces);
                    return Ok((Box::pin(rest), covered));
                }
                Some(Err(e)) => e,
                None => TtsEngineError::BadAudio(format!(
                    "{}: no audio in the answer",
                    self.primary.name()
                )),
            },
            Err(e) => e,
        };
        tracing::warn!(engine = self.primary.name(), error = %failed, fallback = self.fallback.name(), "speech engine failed; using the fallback");
        let audio = self.fallback.synthesize(text).await?;
        Ok((one_piece(audio), Some(failed)))
    }

    fn fallback_name(&self) -> Option<&str> {
        Some(self.fallback.name())
    }
}
