//! Loads a GGUF and answers one prompt, printing tokens as they come and the timings:
//! `cargo run --release -p coda-llm --example generate -- MODEL.gguf "Your question"`.

use std::io::Write;
use std::time::Instant;

use coda_llm::template::TemplateMessage;
use coda_llm::{Engine, GenParams};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: generate MODEL.gguf [PROMPT] [MAX_TOKENS]")?;
    let prompt = args
        .next()
        .unwrap_or_else(|| "What is the capital of France?".into());
    let max_tokens = args.next().and_then(|s| s.parse().ok()).unwrap_or(64);
    let t = Instant::now();
    let engine = Engine::load(path.as_ref(), 0)?;
    eprintln!(
        "loaded in {:.3} s ({:?}, {} threads, kernel {:?})",
        t.elapsed().as_secs_f64(),
        engine.config().arch,
        engine.threads(),
        engine.kernel()
    );
    let ids = engine.prompt_tokens(&[TemplateMessage {
        role: "user".into(),
        content: prompt,
    }])?;
    if std::env::var_os("CODA_DEBUG_TOKENS").is_some() {
        eprintln!("{ids:?}");
    }
    let params = GenParams {
        temperature: 0.0,
        max_tokens,
        ..GenParams::default()
    };
    let out = engine.generate(&ids, &params, &|| false, &mut |s| {
        print!("{s}");
        let _ = std::io::stdout().flush();
        true
    })?;
    println!();
    eprintln!(
        "prompt {} tokens, ttft {:.1} ms, {} tokens in {:.3} s = {:.1} tok/s ({:?})",
        out.prompt_tokens,
        out.time_to_first_token.as_secs_f64() * 1e3,
        out.completion_tokens,
        out.decode_time.as_secs_f64(),
        (out.completion_tokens.saturating_sub(1)) as f64 / out.decode_time.as_secs_f64().max(1e-9),
        out.finish
    );
    Ok(())
}
