//! The engine on real GGUFs, when the environment names them (scripts/test does):
//! `CODA_TEST_GEMMA` (Gemma 3 270M Q4_K_M as pulled by `coda models pull gemma3-270m`)
//! and `CODA_TEST_MODEL` (the stored SmolLM2, Q8_0). Without them these tests skip.
//!
//! The logits of the first decode step are compared with llama.cpp's: the fixtures in
//! `tests/fixtures/` were made by `scripts/llama-cpp-reference` (llama-cpp-python 0.3.36)
//! from the same files; with `CODA_TEST_LLAMA_PYTHON` naming a python that has
//! llama-cpp-python, the script is also run live and compared the same way.

use std::path::{Path, PathBuf};

use coda_llm::kernels::Kernel;
use coda_llm::{Engine, GenParams};
use sha2::{Digest, Sha256};

/// Largest difference allowed between our logit and llama.cpp's for each of its top
/// tokens (and for the mean and spread of all logits). Both quantise activations the same
/// way (Q8_0 / Q8_K) but sum in different orders and use their own GELU/exp; a last-bit
/// difference before a quantising step can move an activation by a whole step, and over
/// 18-30 layers that moves logits by tenths. Our own three kernels differ from each other
/// by as much as from llama.cpp (top 20, 2026-12-05: Gemma 3 0.51-0.63 between kernels
/// and 0.33-0.53 from llama.cpp; SmolLM2 0.26-0.38 and 0.28-0.62).
const LOGIT_TOLERANCE: f32 = 0.75;

fn model_from(var: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(p) if Path::new(&p).is_file() => Some(PathBuf::from(p)),
        Some(p) => panic!("{var}={} is not a file", Path::new(&p).display()),
        None => {
            eprintln!("skipped: set {var} to the model's GGUF to run this test");
            None
        }
    }
}

fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("model readable");
    hex::encode(Sha256::digest(&bytes))
}

#[derive(Debug)]
struct Reference {
    source: String,
    model_sha256: String,
    prompt: Option<String>,
    tokens: Vec<u32>,
    top: Vec<(u32, f32)>,
    mean: f32,
    std: f32,
}

fn parse_reference(text: &str, source: &str) -> Reference {
    let v: serde_json::Value = serde_json::from_str(text).expect("reference is JSON");
    let f = |k: &str| {
        v[k].as_f64()
            .unwrap_or_else(|| panic!("{source}: no `{k}`")) as f32
    };
    Reference {
        source: format!(
            "{source} (llama-cpp-python {})",
            v["llama_cpp_python"].as_str().unwrap_or("?")
        ),
        model_sha256: v["model_sha256"].as_str().unwrap_or("").to_string(),
        prompt: v["prompt"].as_str().map(str::to_string),
        tokens: v["tokens"]
            .as_array()
            .expect("tokens")
            .iter()
            .map(|t| t.as_u64().expect("token id") as u32)
            .collect(),
        top: v["top"]
            .as_array()
            .expect("top")
            .iter()
            .map(|p| {
                (
                    p[0].as_u64().expect("id") as u32,
                    p[1].as_f64().expect("logit") as f32,
                )
            })
            .collect(),
        mean: f("mean"),
        std: f("std"),
    }
}

fn fixture(name: &str) -> Reference {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("fixture readable");
    parse_reference(&text, &path.display().to_string())
}

/// llama.cpp run now, when a python with llama-cpp-python is named.
fn live_reference(model: &Path, prompt: &str) -> Option<Reference> {
    let python = std::env::var_os("CODA_TEST_LLAMA_PYTHON")?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/llama-cpp-reference");
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg(model)
        .args(["--prompt", prompt])
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(parse_reference(
        &String::from_utf8_lossy(&out.stdout),
        "live llama.cpp",
    ))
}

fn compare(engine: &Engine, r: &Reference) {
    if let Some(prompt) = &r.prompt {
        let ours = engine.encode(prompt).expect("encodes");
        assert_eq!(
            ours, r.tokens,
            "tokens of {prompt:?} differ from {}",
            r.source
        );
    }
    let logits = engine.first_logits(&r.tokens).expect("forward");
    let mut worst = (0u32, 0f32);
    for &(id, want) in &r.top {
        let d = (logits[id as usize] - want).abs();
        if d > worst.1 {
            worst = (id, d);
        }
    }
    let n = logits.len() as f64;
    let mean = logits.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let std = (logits
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n)
        .sqrt();
    let argmax = logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i as u32)
        .expect("logits");
    eprintln!(
        "vs {}: worst top-{} difference {:.4} (token {}), mean {:.4} vs {:.4}, std {:.4} vs {:.4}, argmax {} vs {}",
        r.source,
        r.top.len(),
        worst.1,
        worst.0,
        mean,
        r.mean,
        std,
        r.std,
        argmax,
        r.top[0].0
    );
    assert!(
        worst.1 <= LOGIT_TOLERANCE,
        "logit of token {} differs from {} by {} (> {LOGIT_TOLERANCE})",
        worst.0,
        r.source,
        worst.1
    );
    assert!(
        (mean as f32 - r.mean).abs() <= LOGIT_TOLERANCE,
        "mean logit"
    );
    assert!(
        (std as f32 - r.std).abs() <= LOGIT_TOLERANCE,
        "logit spread"
    );
    // The same first token, unless llama.cpp's own top two are within the tolerance.
    if r.top.len() > 1 && r.top[0].1 - r.top[1].1 > 2.0 * LOGIT_TOLERANCE {
        assert_eq!(argmax, r.top[0].0, "greedy token differs from {}", r.source);
    }
}

fn check_logits(var: &str, fixture_name: &str) {
    let Some(model) = model_from(var) else {
        return;
    };
    let r = fixture(fixture_name);
    let engine = Engine::load(&model, 2).expect("loads");
    let sha = sha256(&model);
    if sha == r.model_sha256 {
        compare(&engine, &r);
    } else {
        panic!(
            "{} has SHA-256 {sha}, but {} was made from {}: regenerate it with scripts/llama-cpp-reference",
            model.display(),
            r.source,
            r.model_sha256
        );
    }
    if let Some(live) = live_reference(&model, r.prompt.as_deref().unwrap_or("")) {
        compare(&engine, &live);
    }
}

/// The comparison again under each slower kernel this CPU has: this test run as a child
/// with `CODA_LLM_KERNEL` set (the kernel is chosen once per process).
fn under_slower_kernels(test: &str, var: &str) {
    if std::env::var_os("CODA_LLM_KERNEL").is_some() || model_from(var).is_none() {
        return;
    }
    let mut kernels = vec!["scalar"];
    if !matches!(Kernel::best(), Kernel::Scalar | Kernel::Avx2) {
        kernels.push("avx2");
    }
    for k in kernels {
        let exe = std::env::current_exe().expect("test binary");
        let out = std::process::Command::new(exe)
            .args([test, "--exact", "--nocapture", "--test-threads", "1"])
            .env("CODA_LLM_KERNEL", k)
            .output()
            .expect("test binary runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{test} under CODA_LLM_KERNEL={k}: {err}"
        );
        assert!(
            err.contains("worst top-"),
            "{test} under {k} compared nothing: {err}"
        );
        eprintln!(
            "under {k}: {}",
            err.lines()
                .filter(|l| l.contains("worst top-"))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
}

#[test]
fn gemma3_first_step_logits_match_llama_cpp() {
    check_logits("CODA_TEST_GEMMA", "gemma3-270m-q4_k_m.json");
    under_slower_kernels(
        "gemma3_first_step_logits_match_llama_cpp",
        "CODA_TEST_GEMMA",
    );
}

#[test]
fn smollm2_first_step_logits_match_llama_cpp() {
    check_logits("CODA_TEST_MODEL", "smollm2-q8_0.json");
    under_slower_kernels(
        "smollm2_first_step_logits_match_llama_cpp",
        "CODA_TEST_MODEL",
    );
}

#[test]
fn gemma3_answers_a_factual_question() {
    let Some(model) = model_from("CODA_TEST_GEMMA") else {
        return;
    };
    let engine = Engine::load(&model, 2).expect("loads");
    // The 270M file is a base model: a question-and-answer completion, greedy.
    let prompt = engine
        .encode("Q: What is the capital of France?\nA:")
        .expect("encodes");
    let params = GenParams {
        temperature: 0.0,
        max_tokens: 12,
        seed: 7,
        ..GenParams::default()
    };
    let mut text = String::new();
    engine
        .generate(&prompt, &params, &|| false, &mut |s| {
            text.push_str(s);
            true
        })
        .expect("generates");
    assert!(text.contains("Paris"), "answer: {text:?}");
    let types = engine.weight_types();
    for ty in ["Q4_K", "Q6_K", "Q5_0", "Q8_0"] {
        assert!(types.contains_key(ty), "{ty} kept as it is: {types:?}");
    }
}
