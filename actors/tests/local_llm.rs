//! The `local` provider with the real model (SmolLM2-135M-Instruct, installed by
//! `scripts/setup` through `coda models pull smollm2`): determinism, streaming, stop
//! sequences, cancellation, and clean errors for broken files.
//!
//! The model comes from `CODA_TEST_MODEL` (a .gguf path, set by scripts/test) or the
//! default model store. Without it these tests fail, naming the command that installs it.

#![cfg(feature = "local-llm")]

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use coda_actors::llm::local::{local_provider, LocalLlmConfig, LocalProvider};
use coda_actors::llm::{
    ChatMessage, ChatRequest, ChatRole, FinishReason, LlmError, LlmProvider, StreamChunk,
};
use coda_actors::models::ModelStore;
use futures_util::StreamExt;

fn model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("CODA_TEST_MODEL").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "CODA_TEST_MODEL={} does not exist; run `coda models pull smollm2` (scripts/setup does)",
            p.display()
        );
        return p;
    }
    ModelStore::new(ModelStore::default_dir())
        .resolve("smollm2")
        .unwrap_or_else(|e| {
            panic!("the test model is missing ({e}); run `coda models pull smollm2` (scripts/setup does), or set CODA_TEST_MODEL")
        })
}

fn config() -> LocalLlmConfig {
    LocalLlmConfig {
        model: model_path().to_string_lossy().into_owned(),
        ..LocalLlmConfig::default()
    }
}

fn provider() -> LocalProvider {
    LocalProvider::new(&config()).expect("the local model loads")
}

fn ask(text: &str, seed: u64, max_tokens: u32) -> ChatRequest {
    ChatRequest {
        messages: vec![ChatMessage::new(ChatRole::User, text)],
        temperature: Some(0.8),
        top_p: Some(0.95),
        max_tokens: Some(max_tokens),
        seed: Some(seed),
        ..ChatRequest::default()
    }
}

/// Bounds a future so a hung generation fails the test instead of the suite.
async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(120), f)
        .await
        .expect("generation took over 120 s")
}

#[tokio::test]
async fn fixed_seed_gives_the_same_nonempty_answer_twice() {
    let p = provider();
    let a = bounded(p.chat(ask("Name three colours.", 42, 24)))
        .await
        .expect("answer");
    let b = bounded(p.chat(ask("Name three colours.", 42, 24)))
        .await
        .expect("answer");
    assert!(!a.text.trim().is_empty(), "empty answer: {a:?}");
    assert_eq!(a.text, b.text);
    assert_eq!(a.usage, b.usage);
    assert!(a.usage.prompt_tokens > 10, "{:?}", a.usage);
    assert!(
        a.usage.completion_tokens >= 1 && a.usage.completion_tokens <= 24,
        "{:?}",
        a.usage
    );
}

#[tokio::test]
async fn streamed_tokens_concatenate_to_the_final_text() {
    let p = provider();
    let req = ask("Say hello to Ada in one sentence.", 7, 20);
    let whole = bounded(p.chat(req.clone())).await.expect("answer");
    let mut stream = p.chat_stream(req).await.expect("stream");
    let mut pieces = Vec::new();
    let mut done = None;
    while let Some(chunk) = bounded(stream.next()).await {
        match chunk.expect("chunk") {
            StreamChunk::Token(t) => pieces.push(t),
            StreamChunk::Done {
                finish_reason,
                usage,
            } => {
                done = Some((finish_reason, usage));
                break;
            }
            StreamChunk::ToolCall(c) => panic!("unexpected tool call {c:?}"),
        }
    }
    let (finish, usage) = done.expect("a Done chunk ends the stream");
    assert!(pieces.len() > 1, "expected several pieces: {pieces:?}");
    assert_eq!(pieces.concat(), whole.text);
    assert_eq!(finish, whole.finish_reason);
    assert_eq!(usage, Some(whole.usage));
}

#[tokio::test]
async fn stop_sequences_end_the_answer_and_are_not_shown() {
    let p = provider();
    // Greedy, so the unstopped answer is fixed; stop at its second word.
    let mut req = ask("What is the capital of France?", 1, 24);
    req.temperature = Some(0.0);
    let full = bounded(p.chat(req.clone())).await.expect("answer").text;
    let words: Vec<&str> = full.split_whitespace().collect();
    assert!(words.len() >= 3, "answer too short to test stops: {full:?}");
    req.stop = vec![words[1].to_string()];
    let stopped = bounded(p.chat(req)).await.expect("answer");
    assert_eq!(stopped.finish_reason, FinishReason::Stop);
    assert!(!stopped.text.contains(words[1]), "{stopped:?}");
    let cut = full.find(words[1]).expect("word in answer");
    assert_eq!(stopped.text, full[..cut]);
}

#[tokio::test]
async fn dropping_the_stream_stops_generation_within_one_token() {
    let p = provider();
    let engine = p.engine().clone();
    let cancelled_before = engine.stats.cancelled.load(Ordering::SeqCst);
    let mut req = ask("Count from one to one hundred, in words.", 3, 400);
    req.temperature = Some(0.0);
    let mut stream = p.chat_stream(req).await.expect("stream");
    let mut got = 0;
    while got < 3 {
        match bounded(stream.next()).await {
            Some(Ok(StreamChunk::Token(_))) => got += 1,
            other => panic!("expected tokens, got {other:?}"),
        }
    }
    drop(stream);
    let at_drop = engine.stats.tokens.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    while engine.stats.cancelled.load(Ordering::SeqCst) == cancelled_before {
        assert!(
            Instant::now() < deadline,
            "generation did not stop after the stream was dropped"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after = engine.stats.tokens.load(Ordering::SeqCst);
    assert!(
        after - at_drop <= 1,
        "{} tokens were generated after the drop",
        after - at_drop
    );
}

fn expect_load_error(path: &std::path::Path, wanted: &[&str]) {
    let cfg = LocalLlmConfig {
        model: path.to_string_lossy().into_owned(),
        ..LocalLlmConfig::default()
    };
    match local_provider(&cfg) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(LlmError::Unavailable(msg)) => assert!(
            wanted.iter().any(|w| msg.contains(w)),
            "message {msg:?} does not say any of {wanted:?}"
        ),
        Err(other) => panic!("unexpected error kind: {other:?}"),
    }
}

#[test]
fn broken_files_give_clear_errors() {
    let real = std::fs::read(model_path()).expect("read model");
    let dir = tempfile::tempdir().expect("tempdir");

    let text = dir.path().join("notes.gguf");
    std::fs::write(&text, "this is a text file, not a model\n").expect("write");
    expect_load_error(&text, &["not a GGUF"]);

    let header_cut = dir.path().join("header-cut.gguf");
    std::fs::write(&header_cut, &real[..4096]).expect("write");
    expect_load_error(&header_cut, &["truncated"]);

    let data_cut = dir.path().join("data-cut.gguf");
    std::fs::write(&data_cut, &real[..real.len() / 2]).expect("write");
    expect_load_error(&data_cut, &["truncated"]);

    // A version no reader knows, and a tensor count larger than the file could hold.
    let mut bad = real[..1 << 20].to_vec();
    bad[4..8].copy_from_slice(&99u32.to_le_bytes());
    let version = dir.path().join("version.gguf");
    std::fs::write(&version, &bad).expect("write");
    expect_load_error(&version, &["version 99"]);
    let mut bad = real[..1 << 20].to_vec();
    bad[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    let count = dir.path().join("count.gguf");
    std::fs::write(&count, &bad).expect("write");
    expect_load_error(&count, &["corrupt"]);

    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").expect("write");
    expect_load_error(&empty, &["not a GGUF"]);
}

#[test]
fn a_missing_model_names_the_command_that_installs_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = LocalLlmConfig {
        models_dir: Some(dir.path().to_path_buf()),
        ..LocalLlmConfig::default()
    };
    match local_provider(&cfg) {
        Err(LlmError::Unavailable(msg)) => {
            assert!(msg.contains("coda models pull smollm2"), "{msg}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn the_model_is_loaded_once_and_shared() {
    let a = provider();
    let b = provider();
    assert!(std::sync::Arc::ptr_eq(a.engine(), b.engine()));
    let models = a.list_models().await.expect("models");
    assert_eq!(models[0].context_length, Some(8192));
    assert!(a.health().await.expect("health").ok);
}

/// Sampling that always picks the likeliest token, so answers compare.
fn greedy(max_tokens: u32) -> coda_llm::GenParams {
    coda_llm::GenParams {
        temperature: 0.0,
        top_p: 1.0,
        max_tokens,
        seed: 1,
        stop: Vec::new(),
    }
}

fn msg(role: &str, content: &str) -> coda_llm::template::TemplateMessage {
    coda_llm::template::TemplateMessage {
        role: role.into(),
        content: content.into(),
    }
}

/// The answer to `prompt` with nothing cached.
fn from_a_cleared_cache(
    engine: &coda_llm::Engine,
    prompt: &[u32],
    params: &coda_llm::GenParams,
) -> String {
    engine.clear_prefix();
    let full = engine
        .generate(prompt, params, &|| false, &mut |_| true)
        .expect("full prompt");
    assert_eq!(full.reused_tokens, 0);
    full.text
}

/// The next turn of a conversation reuses the keys and values of the one before (its
/// prompt starts the same way), and the answer is exactly what a full prompt gives.
#[test]
fn a_follow_up_reuses_the_shared_prefix_and_answers_the_same() {
    let engine = coda_llm::Engine::load(&model_path(), 1).expect("load");
    let greedy = greedy(12);
    let first = vec![msg("user", "Name a colour.")];
    let p1 = engine.prompt_tokens(&first).expect("prompt");
    let out1 = engine
        .generate(&p1, &greedy, &|| false, &mut |_| true)
        .expect("first");
    assert_eq!(out1.reused_tokens, 0);
    let second = vec![
        msg("user", "Name a colour."),
        msg("assistant", &out1.text),
        msg("user", "And another one?"),
    ];
    let p2 = engine.prompt_tokens(&second).expect("prompt");
    let cached = engine
        .generate(&p2, &greedy, &|| false, &mut |_| true)
        .expect("follow-up");
    assert!(
        cached.reused_tokens >= p1.len() - 1,
        "reused {} of a {}-token shared start",
        cached.reused_tokens,
        p1.len()
    );
    let full = from_a_cleared_cache(&engine, &p2, &greedy);
    assert!(!full.is_empty());
    assert_eq!(cached.text, full, "the cache changed the answer");
}

/// The answer, computed into the cache as a prompt computes it while it is read out
/// (`Engine::warm`), is reused by the next turn, and the next answer is still exactly what
/// a full prompt gives; a generation waiting for the engine stops the warming.
#[test]
fn a_warmed_answer_is_reused_and_answers_the_same() {
    let engine = coda_llm::Engine::load(&model_path(), 1).expect("load");
    let greedy = greedy(40);
    let first = vec![msg("user", "Tell me about the moon.")];
    let p1 = engine.prompt_tokens(&first).expect("prompt");
    let out1 = engine
        .generate(&p1, &greedy, &|| false, &mut |_| true)
        .expect("first");
    let mut said = first.clone();
    said.push(msg("assistant", &out1.text));
    let warm = engine.prompt_tokens(&said).expect("prompt");
    let computed = engine.warm(&warm, &|| false).expect("warmed");
    assert!(
        computed >= warm.len() - p1.len(),
        "computed {computed} of {} tokens past the first prompt's {}",
        warm.len(),
        p1.len()
    );
    assert_eq!(
        engine.warm(&warm, &|| false).expect("again"),
        0,
        "already there"
    );
    let mut second = said.clone();
    second.push(msg("user", "And the sun?"));
    let p2 = engine.prompt_tokens(&second).expect("prompt");
    let cached = engine
        .generate(&p2, &greedy, &|| false, &mut |_| true)
        .expect("follow-up");
    let shared = warm.iter().zip(&p2).take_while(|(a, b)| a == b).count();
    assert!(
        shared > p1.len() + out1.completion_tokens / 2,
        "the answer is in the next prompt: {shared} shared tokens"
    );
    assert_eq!(
        cached.reused_tokens, shared,
        "the next turn reuses everything warmed that it repeats"
    );
    let full = from_a_cleared_cache(&engine, &p2, &greedy);
    assert_eq!(cached.text, full, "the warmed cache changed the answer");

    // Told to stop, it computes nothing more and keeps the cache as it was.
    engine.clear_prefix();
    assert_eq!(engine.warm(&warm, &|| true).expect("cancelled"), 0);
}
