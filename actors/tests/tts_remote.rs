//! The remote speech engines against loopback servers speaking each API's wire format:
//! ElevenLabs `POST /v1/text-to-speech/{voice}/stream?output_format=pcm_*` with
//! `xi-api-key`, and OpenAI-compatible `POST /v1/audio/speech` with a Bearer key; PCM
//! streamed in chunks that split samples, error statuses, truncated and stalled streams,
//! and the espeak-ng fallback.

use std::sync::Arc;
use std::time::Duration;

use coda_actors::llm::http::HttpOptions;
use coda_actors::llm::scripted::{Reply, ScriptedServer, Step};
use coda_actors::tts::espeak::{EspeakConfig, EspeakEngine};
use coda_actors::tts::remote::{
    ElevenLabsConfig, ElevenLabsEngine, FallbackEngine, OpenAiSpeechConfig, OpenAiSpeechEngine,
};
use coda_actors::tts::{TtsEngine, TtsEngineError};

fn http() -> HttpOptions {
    HttpOptions {
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(2),
        max_retries: 0,
        ..Default::default()
    }
}

/// A known signal: a ramp of distinct samples.
fn samples(n: usize) -> Vec<i16> {
    (0..n)
        .map(|i| (((i * 37) % 60_000) as i32 - 30_000) as i16)
        .collect()
}

fn pcm(s: &[i16]) -> Vec<u8> {
    s.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The body in odd-sized chunks (so samples are split across chunks), paced.
fn chunked(body: Vec<u8>) -> Vec<Step> {
    body.chunks(1001)
        .flat_map(|c| {
            [
                Step::Write(c.to_vec()),
                Step::Sleep(Duration::from_millis(2)),
            ]
        })
        .collect()
}

fn eleven(server: &ScriptedServer, key: Option<&str>, format: &str) -> ElevenLabsEngine {
    ElevenLabsEngine::new(ElevenLabsConfig {
        base_url: server.url(),
        api_key: key.map(str::to_string),
        voice_id: "voice-123".into(),
        model_id: "eleven_flash_v2_5".into(),
        output_format: format.into(),
        timeout: Duration::from_secs(5),
        http: http(),
    })
    .unwrap()
}

fn openai(server: &ScriptedServer, format: &str, timeout: Duration) -> OpenAiSpeechEngine {
    OpenAiSpeechEngine::new(OpenAiSpeechConfig {
        base_url: format!("{}/v1", server.url()),
        api_key: Some("sk-test".into()),
        model: "gpt-4o-mini-tts".into(),
        voice: "alloy".into(),
        response_format: format.into(),
        timeout,
        http: http(),
    })
    .unwrap()
}

#[tokio::test]
async fn elevenlabs_streams_pcm_and_sends_the_documented_request() {
    let want = samples(16_000);
    let body = pcm(&want);
    let server = ScriptedServer::start(move |_| Reply::stream("audio/pcm", chunked(body.clone())))
        .await
        .unwrap();
    let e = eleven(&server, Some("xi-secret"), "pcm_16000");
    let audio = e.synthesize("Hello there.").await.unwrap();
    assert_eq!(audio.sample_rate, 16_000);
    assert_eq!(audio.samples, want);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path(), "/v1/text-to-speech/voice-123/stream");
    assert!(
        r.target.ends_with("?output_format=pcm_16000"),
        "{}",
        r.target
    );
    assert_eq!(r.header("xi-api-key"), Some("xi-secret"));
    assert_eq!(r.json()["text"], "Hello there.");
    assert_eq!(r.json()["model_id"], "eleven_flash_v2_5");
    assert_eq!(e.name(), "elevenlabs");
}

#[tokio::test]
async fn elevenlabs_errors_have_stable_codes() {
    let server = ScriptedServer::start(|r| {
        match r.header("xi-api-key") {
            Some("bad") => Reply::json(
                401,
                r#"{"detail":{"status":"invalid_api_key","message":"Invalid API key"}}"#,
            ),
            Some("busy") => Reply::json(
                429,
                r#"{"detail":{"status":"too_many_concurrent_requests","message":"Too many requests"}}"#,
            )
            .header("retry-after", "1"),
            // Half a stream, then the connection drops.
            Some("cut") => Reply::stream(
                "audio/pcm",
                vec![Step::Write(pcm(&samples(500))), Step::Close],
            ),
            // An odd number of bytes: not whole samples.
            _ => Reply::stream("audio/pcm", vec![Step::Write(vec![1, 2, 3])]),
        }
    })
    .await
    .unwrap();
    let code = |r: Result<_, TtsEngineError>| r.map(|_| ()).unwrap_err().code();
    assert_eq!(
        code(
            eleven(&server, Some("bad"), "pcm_22050")
                .synthesize("x")
                .await
        ),
        "auth_failed"
    );
    let busy = eleven(&server, Some("busy"), "pcm_22050")
        .synthesize("x")
        .await
        .unwrap_err();
    assert_eq!(busy.code(), "rate_limited");
    assert!(busy.to_string().contains("Too many requests"), "{busy}");
    assert_eq!(
        code(
            eleven(&server, Some("cut"), "pcm_22050")
                .synthesize("x")
                .await
        ),
        "bad_audio"
    );
    assert_eq!(
        code(
            eleven(&server, Some("odd"), "pcm_22050")
                .synthesize("x")
                .await
        ),
        "bad_audio"
    );
    // No key is reported by check() without spending a request.
    assert_eq!(
        eleven(&server, None, "pcm_22050")
            .check()
            .await
            .unwrap_err()
            .code(),
        "auth_failed"
    );
    // A compressed format is refused up front.
    assert!(ElevenLabsEngine::new(ElevenLabsConfig {
        base_url: server.url(),
        api_key: None,
        voice_id: "v".into(),
        model_id: "m".into(),
        output_format: "mp3_44100_128".into(),
        timeout: Duration::from_secs(1),
        http: http(),
    })
    .is_err());
}

#[tokio::test]
async fn openai_speech_pcm_and_wav() {
    let want = samples(24_000);
    let raw = pcm(&want);
    let mut wav = Vec::new();
    {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 24_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::new(std::io::Cursor::new(&mut wav), spec).unwrap();
        for s in &want {
            w.write_sample(*s).unwrap();
        }
        w.finalize().unwrap();
    }
    let server = ScriptedServer::start(move |r| {
        let body = if r.json()["response_format"] == "wav" {
            wav.clone()
        } else {
            raw.clone()
        };
        Reply::stream("application/octet-stream", chunked(body))
    })
    .await
    .unwrap();
    let e = openai(&server, "pcm", Duration::from_secs(5));
    let audio = e.synthesize("Second sentence here.").await.unwrap();
    assert_eq!(audio.sample_rate, 24_000);
    assert_eq!(audio.samples, want);
    let r = &server.requests()[0];
    assert_eq!(r.path(), "/v1/audio/speech");
    assert_eq!(r.header("authorization"), Some("Bearer sk-test"));
    let body = r.json();
    assert_eq!(body["model"], "gpt-4o-mini-tts");
    assert_eq!(body["input"], "Second sentence here.");
    assert_eq!(body["voice"], "alloy");
    assert_eq!(body["response_format"], "pcm");

    let audio = openai(&server, "wav", Duration::from_secs(5))
        .synthesize("x")
        .await
        .unwrap();
    assert_eq!(audio.sample_rate, 24_000);
    assert_eq!(audio.samples, want);
}

#[tokio::test]
async fn openai_statuses_and_a_stalled_stream() {
    let server = ScriptedServer::start(|r| match r.json()["input"].as_str() {
        Some("401") => Reply::json(401, r#"{"error":{"message":"Incorrect API key provided"}}"#),
        Some("429") => Reply::json(429, r#"{"error":{"message":"Rate limit reached"}}"#),
        Some("500") => Reply::json(500, r#"{"error":{"message":"boom"}}"#),
        _ => Reply::stream(
            "audio/pcm",
            vec![Step::Write(pcm(&samples(100))), Step::Stall],
        ),
    })
    .await
    .unwrap();
    let e = openai(&server, "pcm", Duration::from_millis(800));
    let err = e.synthesize("401").await.unwrap_err();
    assert_eq!(err.code(), "auth_failed");
    assert!(err.to_string().contains("Incorrect API key"), "{err}");
    assert_eq!(
        e.synthesize("429").await.unwrap_err().code(),
        "rate_limited"
    );
    assert_eq!(
        e.synthesize("500").await.unwrap_err().code(),
        "synthesis_failed"
    );
    let t = std::time::Instant::now();
    assert_eq!(e.synthesize("stall").await.unwrap_err().code(), "timeout");
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_failing_remote_engine_falls_back_to_espeak_and_says_so() {
    let server = ScriptedServer::start(|_| Reply::json(401, r#"{"detail":"bad key"}"#))
        .await
        .unwrap();
    let primary: Arc<dyn TtsEngine> = Arc::new(eleven(&server, Some("k"), "pcm_22050"));
    let fallback: Arc<dyn TtsEngine> = Arc::new(EspeakEngine::new(EspeakConfig {
        binary: "espeak-ng".into(),
        voice: "en-us".into(),
        rate: 175,
    }));
    let e = FallbackEngine::new(primary, fallback);
    let (audio, covered) = e.synthesize_reported("Fallback works.").await.unwrap();
    assert!(audio.duration_ms() > 300.0);
    assert_eq!(audio.sample_rate, 22_050);
    assert_eq!(covered.unwrap().code(), "auth_failed");
    assert_eq!(e.name(), "elevenlabs");
    assert_eq!(e.fallback_name(), Some("espeak-ng"));
    // Streamed: the fallback's audio, and the failure it covered.
    let (pieces, covered) = e.synthesize_stream("Fallback works.").await.unwrap();
    use futures_util::StreamExt;
    let pieces: Vec<_> = pieces.collect().await;
    assert_eq!(pieces.len(), 1);
    assert!(pieces[0].as_ref().is_ok_and(|a| a.duration_ms() > 300.0));
    assert_eq!(covered.unwrap().code(), "auth_failed");
}

/// The body in four pieces split mid-sample, 300 ms apart: a slow speech server.
fn slowly(body: Vec<u8>) -> Vec<Step> {
    let q = body.len() / 4 + 1;
    body.chunks(q)
        .flat_map(|c| {
            [
                Step::Write(c.to_vec()),
                Step::Sleep(Duration::from_millis(300)),
            ]
        })
        .collect()
}

async fn collect(
    e: &dyn TtsEngine,
    text: &str,
) -> (Duration, Duration, Vec<i16>, Option<TtsEngineError>) {
    use futures_util::StreamExt;
    let t = std::time::Instant::now();
    let (mut pieces, _) = e.synthesize_stream(text).await.unwrap();
    let mut first = None;
    let mut got = Vec::new();
    let mut error = None;
    while let Some(p) = pieces.next().await {
        match p {
            Ok(a) => {
                first.get_or_insert(t.elapsed());
                got.extend(a.samples);
            }
            Err(e) => error = Some(e),
        }
    }
    (first.unwrap_or_default(), t.elapsed(), got, error)
}

#[tokio::test]
async fn remote_speech_streams_pieces_as_they_arrive() {
    let want = samples(24_001);
    let body = pcm(&want);
    let server = ScriptedServer::start(move |_| {
        Reply::stream("application/octet-stream", slowly(body.clone()))
    })
    .await
    .unwrap();
    for engine in [
        Box::new(openai(&server, "pcm", Duration::from_secs(5))) as Box<dyn TtsEngine>,
        Box::new(eleven(&server, Some("k"), "pcm_24000")),
    ] {
        let (first, total, got, error) = collect(engine.as_ref(), "A sentence.").await;
        assert!(error.is_none(), "{error:?}");
        assert_eq!(got, want, "every sample, in order, across split chunks");
        // The first piece comes with the first chunk, not after the whole answer.
        assert!(
            first < Duration::from_millis(250),
            "first piece after {first:?}"
        );
        assert!(total >= Duration::from_millis(900), "{total:?}");
    }
}

#[tokio::test]
async fn a_stream_that_breaks_off_mid_sample_ends_with_bad_audio() {
    let mut body = pcm(&samples(1_000));
    body.push(7);
    let server = ScriptedServer::start(move |_| {
        Reply::stream("application/octet-stream", slowly(body.clone()))
    })
    .await
    .unwrap();
    let (_, _, got, error) = collect(&openai(&server, "pcm", Duration::from_secs(5)), "x").await;
    assert_eq!(got.len(), 1_000, "what came whole was given");
    assert!(
        matches!(error, Some(TtsEngineError::BadAudio(_))),
        "{error:?}"
    );
    // Nothing at all, and a stall past the time limit.
    let empty = ScriptedServer::start(|_| Reply::stream("application/octet-stream", vec![]))
        .await
        .unwrap();
    let (_, _, got, error) = collect(&openai(&empty, "pcm", Duration::from_secs(5)), "x").await;
    assert!(got.is_empty());
    assert!(
        matches!(error, Some(TtsEngineError::BadAudio(_))),
        "{error:?}"
    );
    let stall = ScriptedServer::start(|_| {
        Reply::stream(
            "application/octet-stream",
            vec![Step::Write(vec![1, 0, 2, 0]), Step::Stall],
        )
    })
    .await
    .unwrap();
    let (_, _, got, error) = collect(&openai(&stall, "pcm", Duration::from_millis(500)), "x").await;
    assert_eq!(got, vec![1, 2]);
    assert!(
        matches!(error, Some(TtsEngineError::Timeout(_))),
        "{error:?}"
    );
}
