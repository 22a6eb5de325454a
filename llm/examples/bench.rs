//! Prompt and decode speed of one GGUF, for comparing kernels (and with llama.cpp on the
//! same tokens): `cargo run --release -p coda-llm --example bench -- MODEL.gguf THREADS
//! [DECODE_TOKENS] [TOKENS_OUT.json]`. Prints one JSON line.

use std::time::Instant;

use coda_llm::model::Model;
use coda_llm::template::TemplateMessage;
use coda_llm::Engine;

/// As the engine's prefill: the prompt runs in chunks of this many tokens.
const PREFILL_CHUNK: usize = 64;

const PROMPT: &str = "You are helping plan a small garden behind a terraced house in a \
rainy northern city. The plot is about six metres by four, gets sun only in the afternoon, \
and the soil is heavy clay. The owners want vegetables, a few herbs, somewhere to sit, and \
something for bees. Describe a layout, which plants to choose and why, and what to do in \
each season of the first year.";

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: bench MODEL.gguf THREADS [DECODE_TOKENS] [TOKENS_OUT]")?;
    let threads: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let decode: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(64);
    let tokens_out = args.next();
    // The engine only for the tokenizer and template; the model runs on our own pool.
    let engine = Engine::load(path.as_ref(), 1)?;
    let prompt = engine.prompt_tokens(&[TemplateMessage {
        role: "user".into(),
        content: PROMPT.into(),
    }])?;
    if let Some(p) = tokens_out {
        std::fs::write(p, format!("{prompt:?}"))?;
    }
    let model: &Model = &engine.model;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    // Warm-up (page in the weights).
    let mut cache = model.new_cache();
    model.forward(&pool, &mut cache, &prompt[..8])?;

    let mut cache = model.new_cache();
    let t = Instant::now();
    let mut logits = Vec::new();
    for chunk in prompt.chunks(PREFILL_CHUNK) {
        logits = model.forward(&pool, &mut cache, chunk)?;
    }
    let prompt_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..decode {
        let tok = argmax(&logits);
        logits = model.forward(&pool, &mut cache, &[tok])?;
    }
    let decode_s = t.elapsed().as_secs_f64();
    println!(
        "{{\"engine\":\"coda\",\"kernel\":\"{:?}\",\"threads\":{threads},\"prompt_tokens\":{},\"prompt_tok_s\":{:.2},\"decode_tok_s\":{:.2}}}",
        model.kernel(),
        prompt.len(),
        prompt.len() as f64 / prompt_s,
        decode as f64 / decode_s
    );
    Ok(())
}
