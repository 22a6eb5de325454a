//! Prompt and decode speed of one GGUF, for comparing kernels (and with llama.cpp on the
//! same tokens): `cargo run --release -p coda-llm --example bench -- MODEL.gguf THREADS
//! [DECODE_TOKENS] [TOKENS_OUT.json|-] [PROMPT_REPS]`. Prints one JSON line (the prompt
//! figure is the median of the repetitions).

use std::time::Instant;

use coda_llm::model::Model;
use coda_llm::template::TemplateMessage;
use coda_llm::Engine;

/// As the engine's prefill: the prompt runs in chunks of this many tokens.
const PREFILL_CHUNK: usize = 128;

const PROMPT: &str = "You are helping plan a small garden behind a terraced house in a \
rainy northern city. The plot is about six metres by four, gets sun only in the afternoon, \
and the soil is heavy clay. The owners want vegetables, a few herbs, somewhere to sit, and \
something for bees. Describe a layout, which plants to choose and why, and what to do in \
each season of the first year.";

/// On-CPU time of all this process's threads (Linux schedstat), so a tuning run on a
/// shared machine can ignore the time other processes held the cores.
fn cpu_s() -> f64 {
    let mut ns = 0u64;
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for e in dir.flatten() {
            if let Ok(s) = std::fs::read_to_string(e.path().join("schedstat")) {
                ns += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    ns as f64 / 1e9
}

/// A `Name:  N kB` field of a /proc file of this process, in MB (0 when absent).
fn proc_mb(file: &str, name: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/self/{file}"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// (VmRSS, VmHWM) of this process in MB: now, and the peak so far (load included).
fn rss_mb() -> (f64, f64) {
    (proc_mb("status", "VmRSS:"), proc_mb("status", "VmHWM:"))
}

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
    let tokens_out = args.next().filter(|s| s != "-");
    let reps: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1).max(1);
    // The engine only for the tokenizer and template; the model runs on our own pool.
    let engine = Engine::load(path.as_ref(), 1)?;
    let (rss_loaded, hwm_loaded) = rss_mb();
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
    // As the engine: each pass runs on a pool thread (CODA_BENCH_OUTSIDE_POOL: from
    // this thread, as before, for comparison).
    let outside = std::env::var_os("CODA_BENCH_OUTSIDE_POOL").is_some();
    let fwd = |pool: &rayon::ThreadPool, cache: &mut _, toks: &[u32]| {
        if outside {
            model.forward(pool, cache, toks)
        } else {
            pool.install(|| model.forward(pool, cache, toks))
        }
    };
    // Warm-up (page in the weights).
    let mut cache = model.new_cache();
    fwd(&pool, &mut cache, &prompt[..8])?;

    let mut times = Vec::new();
    let mut cpu = Vec::new();
    let (mut cache, mut logits) = (model.new_cache(), Vec::new());
    for _ in 0..reps {
        cache = model.new_cache();
        let (t, c) = (Instant::now(), cpu_s());
        for chunk in prompt.chunks(PREFILL_CHUNK) {
            logits = fwd(&pool, &mut cache, chunk)?;
        }
        times.push(t.elapsed().as_secs_f64());
        cpu.push(cpu_s() - c);
    }
    times.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    let prompt_s = times[times.len() / 2];
    let (t, c) = (Instant::now(), cpu_s());
    for _ in 0..decode {
        let tok = argmax(&logits);
        logits = if outside {
            model.decode(&pool, &mut cache, tok)
        } else {
            pool.install(|| model.decode(&pool, &mut cache, tok))
        }?;
    }
    let decode_s = t.elapsed().as_secs_f64();
    let decode_cpu = cpu_s() - c;
    // The *_cpu figures: tokens per second of CPU time (all threads together).
    println!(
        "{{\"engine\":\"coda\",\"kernel\":\"{:?}\",\"threads\":{threads},\"prompt_tokens\":{},\"prompt_tok_s\":{:.2},\"decode_tok_s\":{:.2},\"prompt_tok_cpu_s\":{:.2},\"decode_tok_cpu_s\":{:.2},\"rss_loaded_mb\":{rss_loaded:.1},\"rss_peak_after_load_mb\":{hwm_loaded:.1},\"rss_peak_mb\":{:.1},\"huge_mb\":{:.1}}}",
        model.kernel(),
        prompt.len(),
        prompt.len() as f64 / prompt_s,
        decode as f64 / decode_s,
        prompt.len() as f64 / cpu[cpu.len() / 2],
        decode as f64 / decode_cpu,
        rss_mb().1,
        // Memory in transparent huge pages.
        proc_mb("smaps_rollup", "AnonHugePages:")
    );
    Ok(())
}
