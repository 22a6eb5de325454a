//! `coda bench llm`: the embedded (local) model's load time, time to first token, decode tokens/s
//! and memory, measured on the real model; with `--compare-llama-cpp`, the same GGUF and
//! the same prompt tokens run by llama.cpp (through llama-cpp-python) in the same run.

use std::path::PathBuf;
#[cfg(feature = "local-llm")]
use std::process::Command;
#[cfg(feature = "local-llm")]
use std::time::Instant;

#[cfg(feature = "local-llm")]
use anyhow::{anyhow, Context};
use serde::Serialize;

use crate::config::Loaded;

/// `coda bench llm` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct LlmBenchArgs {
    /// Model name or .gguf path (default: llm.model).
    #[arg(long)]
    pub model: Option<String>,
    /// The user message.
    #[arg(
        long,
        default_value = "Write a short story about a robot who learns to paint."
    )]
    pub prompt: String,
    /// Tokens to generate per run (fewer if the model ends its answer first).
    #[arg(long, default_value_t = 128)]
    pub tokens: u32,
    /// Inference threads (default: llm.threads; 0 = one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Measured runs (the median is reported), after one warm-up.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Also run llama.cpp (llama-cpp-python) on the same GGUF and prompt tokens.
    #[arg(long)]
    pub compare_llama_cpp: bool,
    /// The Python that has llama-cpp-python installed.
    #[arg(long, default_value = "python3", env = "CODA_BENCH_PYTHON")]
    pub python: String,
    /// A different GGUF for llama.cpp (e.g. the original Q4_1 before requantisation).
    #[arg(long)]
    pub llama_cpp_model: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One engine's figures.
#[derive(Debug, Clone, Serialize, Default)]
pub struct EngineFigures {
    pub engine: String,
    pub model_file: String,
    pub threads: usize,
    pub load_s: f64,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub ttft_ms: f64,
    /// Prompt tokens over the time to the first token (prompt processing speed).
    pub prompt_tok_s: f64,
    pub decode_tok_s: f64,
    pub rss_loaded_mb: f64,
    pub rss_peak_mb: f64,
    pub note: String,
}

/// The benchmark's result.
#[derive(Debug, Clone, Serialize)]
pub struct LlmBenchReport {
    pub coda: EngineFigures,
    pub llama_cpp: Option<EngineFigures>,
    pub decode_ratio_vs_llama_cpp: Option<f64>,
    pub prompt_ratio_vs_llama_cpp: Option<f64>,
    /// The matrices' types as the engine holds them (e.g. `Q4_K 11.5 MB, Q6_K …`).
    pub weight_types: String,
    pub sample_text: String,
}

/// (VmRSS, VmHWM) of this process in MB.
#[cfg(feature = "local-llm")]
fn rss_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[cfg(feature = "local-llm")]
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The llama.cpp side: loads the GGUF, then per run resets, feeds the same prompt token
/// ids and samples greedily until EOS or N tokens, timing the first token and the rest.
#[cfg(feature = "local-llm")]
const LLAMA_CPP_SCRIPT: &str = r#"
import json, sys, time
a = json.loads(sys.argv[1])
def rss():
    d = {}
    for l in open('/proc/self/status'):
        k, v = l.split(':', 1)
        d[k] = v
    return int(d['VmRSS'].split()[0]) / 1024, int(d['VmHWM'].split()[0]) / 1024
try:
    import llama_cpp
    from llama_cpp import Llama
except Exception as e:
    print(json.dumps({"error": "llama-cpp-python is not importable (%s); pip install llama-cpp-python" % e}))
    sys.exit(0)
t = time.perf_counter()
m = Llama(model_path=a["model"], n_ctx=2048, n_threads=a["threads"], n_threads_batch=a["threads"], verbose=False)
load = time.perf_counter() - t
rss_loaded = rss()[0]
eos = m.token_eos()
runs = []
for i in range(a["runs"] + 1):
    m.reset()
    t = time.perf_counter(); first = None; n = 0
    for tok in m.generate(a["prompt"], temp=0.0, reset=True):
        n += 1
        if first is None:
            first = time.perf_counter()
        if tok == eos or n >= a["tokens"]:
            break
    end = time.perf_counter()
    if i > 0:
        runs.append(((first - t) * 1e3, (n - 1) / max(end - first, 1e-9), n))
runs.sort(key=lambda r: r[1])
mid = runs[len(runs) // 2]
print(json.dumps({"version": llama_cpp.__version__, "load_s": load, "ttft_ms": sorted(r[0] for r in runs)[len(runs) // 2],
                  "decode_tok_s": mid[1], "generated": mid[2], "rss_loaded_mb": rss_loaded, "rss_peak_mb": rss()[1]}))
"#;

/// Runs the benchmark.
#[cfg(feature = "local-llm")]
pub fn run(loaded: &Loaded, args: LlmBenchArgs) -> anyhow::Result<()> {
    use coda_llm::template::TemplateMessage;
    use coda_llm::{Engine, GenParams};

    let s = &loaded.settings;
    let model = args.model.clone().unwrap_or_else(|| s.llm.model.clone());
    let path = s.model_store().resolve(&model)?;
    let threads = args.threads.unwrap_or(s.llm.threads);
    let runs = args.runs.max(1);

    let t = Instant::now();
    let engine = Engine::load(&path, threads)?;
    let load_s = t.elapsed().as_secs_f64();
    let rss_loaded = rss_mb().0;
    let prompt = engine.prompt_tokens(&[TemplateMessage {
        role: "user".into(),
        content: args.prompt.clone(),
    }])?;
    let params = GenParams {
        temperature: 0.0,
        top_p: 1.0,
        max_tokens: args.tokens.max(2),
        seed: 1,
        stop: Vec::new(),
    };
    let mut ttfts = Vec::new();
    let mut rates = Vec::new();
    let mut generated = 0;
    let mut sample_text = String::new();
    for i in 0..=runs {
        // Every run reads the whole prompt, as llama.cpp's side does.
        engine.clear_prefix();
        let out = engine.generate(&prompt, &params, &|| false, &mut |_| true)?;
        if i == 0 {
            sample_text = out.text.clone();
            continue;
        }
        generated = out.completion_tokens;
        ttfts.push(out.time_to_first_token.as_secs_f64() * 1e3);
        rates.push(
            out.completion_tokens.saturating_sub(1) as f64
                / out.decode_time.as_secs_f64().max(1e-9),
        );
    }
    let weight_types = engine
        .weight_types()
        .iter()
        .map(|(t, b)| format!("{t} {:.1} MB", *b as f64 / 1e6))
        .collect::<Vec<_>>()
        .join(", ");
    let ttft_ms = median(ttfts);
    let coda = EngineFigures {
        engine: format!("coda-llm ({:?} kernel)", engine.kernel()),
        model_file: path.display().to_string(),
        threads: engine.threads(),
        load_s,
        prompt_tokens: prompt.len(),
        generated_tokens: generated,
        ttft_ms,
        prompt_tok_s: prompt.len() as f64 / (ttft_ms / 1e3).max(1e-9),
        decode_tok_s: median(rates),
        rss_loaded_mb: rss_loaded,
        rss_peak_mb: rss_mb().1,
        note: String::new(),
    };
    drop(engine);

    let llama_cpp = if args.compare_llama_cpp {
        let gguf = args.llama_cpp_model.clone().unwrap_or_else(|| path.clone());
        Some(run_llama_cpp(&args, &gguf, coda.threads, &prompt, runs)?)
    } else {
        None
    };
    let ratio = llama_cpp
        .as_ref()
        .filter(|l| l.decode_tok_s > 0.0)
        .map(|l| coda.decode_tok_s / l.decode_tok_s);
    let prompt_ratio = llama_cpp
        .as_ref()
        .filter(|l| l.prompt_tok_s > 0.0)
        .map(|l| coda.prompt_tok_s / l.prompt_tok_s);
    let report = LlmBenchReport {
        coda,
        llama_cpp,
        decode_ratio_vs_llama_cpp: ratio,
        prompt_ratio_vs_llama_cpp: prompt_ratio,
        weight_types,
        sample_text,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

/// Without the engine there is nothing to measure.
#[cfg(not(feature = "local-llm"))]
pub fn run(_loaded: &Loaded, _args: LlmBenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("built without the local-llm feature: there is no embedded model to benchmark")
}

#[cfg(feature = "local-llm")]
fn run_llama_cpp(
    args: &LlmBenchArgs,
    gguf: &std::path::Path,
    threads: usize,
    prompt: &[u32],
    runs: usize,
) -> anyhow::Result<EngineFigures> {
    let input = serde_json::json!({
        "model": gguf,
        "threads": threads,
        "prompt": prompt,
        "tokens": args.tokens.max(2),
        "runs": runs,
    });
    let out = Command::new(&args.python)
        .arg("-c")
        .arg(LLAMA_CPP_SCRIPT)
        .arg(input.to_string())
        .output()
        .with_context(|| format!("cannot run {}", args.python))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(line).map_err(|_| {
        anyhow!(
            "llama-cpp-python run failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        )
    })?;
    if let Some(e) = v["error"].as_str() {
        return Err(anyhow!("{e}"));
    }
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    Ok(EngineFigures {
        engine: format!(
            "llama.cpp (llama-cpp-python {})",
            v["version"].as_str().unwrap_or("?")
        ),
        model_file: gguf.display().to_string(),
        threads,
        load_s: f("load_s"),
        prompt_tokens: prompt.len(),
        generated_tokens: f("generated") as usize,
        ttft_ms: f("ttft_ms"),
        prompt_tok_s: prompt.len() as f64 / (f("ttft_ms") / 1e3).max(1e-9),
        decode_tok_s: f("decode_tok_s"),
        rss_loaded_mb: f("rss_loaded_mb"),
        rss_peak_mb: f("rss_peak_mb"),
        note: "RSS includes the Python interpreter".into(),
    })
}

#[cfg(feature = "local-llm")]
fn print_report(r: &LlmBenchReport) {
    let row = |e: &EngineFigures| {
        println!("{}", e.engine);
        println!(
            "  model            {} ({} threads)",
            e.model_file, e.threads
        );
        println!("  load             {:.3} s", e.load_s);
        println!(
            "  first token      {:.1} ms ({} prompt tokens, {:.1} tokens/s)",
            e.ttft_ms, e.prompt_tokens, e.prompt_tok_s
        );
        println!(
            "  decode           {:.1} tokens/s ({} tokens)",
            e.decode_tok_s, e.generated_tokens
        );
        println!(
            "  RSS              {:.1} MB loaded, {:.1} MB peak{}",
            e.rss_loaded_mb,
            e.rss_peak_mb,
            if e.note.is_empty() {
                String::new()
            } else {
                format!(" ({})", e.note)
            }
        );
    };
    row(&r.coda);
    println!("  weights          {}", r.weight_types);
    if let Some(l) = &r.llama_cpp {
        row(l);
    }
    if let Some(ratio) = r.decode_ratio_vs_llama_cpp {
        println!("decode speed vs llama.cpp: {ratio:.2}x");
    }
    if let Some(ratio) = r.prompt_ratio_vs_llama_cpp {
        println!("prompt speed vs llama.cpp: {ratio:.2}x");
    }
}
