//! A loaded model ready to chat: weights, tokenizer, chat template and a thread pool, and
//! the generation loop (prefill, sampling, stop sequences, max tokens, cancellation).
//!
//! Generation is synchronous and meant for a dedicated thread. One generation runs at a
//! time per engine (the pool already uses every core it was given); others wait their turn.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::gguf::{Gguf, GgufError};
use crate::kernels::Kernel;
use crate::model::{softmax, ForwardError, KvCache, Model, ModelConfig};
use crate::template::{ChatTemplate, TemplateMessage};
use crate::tokenizer::{Tokenizer, Utf8Stream};

/// Prompt tokens per forward pass while reading the prompt. Each pass unpacks every
/// weight row once and runs the output head for its last token (Gemma's is 262k rows), so
/// a prompt of up to 128 tokens in one pass reads 10% faster than in two; a pass still
/// takes well under a second, the granularity of cancelling.
const PREFILL_CHUNK: usize = 128;
/// Tokens per forward pass of [`Engine::warm`].
const WARM_CHUNK: usize = 32;

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file itself.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// Tokenizer or template.
    #[error("{path}: {what}")]
    Setup {
        /// The file.
        path: PathBuf,
        /// What failed.
        what: String,
    },
    /// The thread pool.
    #[error("cannot start the inference threads: {0}")]
    Threads(String),
}

/// Why a generation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GenError {
    /// The prompt could not be rendered or tokenised.
    #[error("{0}")]
    Prompt(String),
    /// The model could not run it (context full, ...).
    #[error(transparent)]
    Forward(#[from] ForwardError),
}

/// Sampling and stopping.
#[derive(Debug, Clone, PartialEq)]
pub struct GenParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// Nucleus mass (1 = off).
    pub top_p: f32,
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// RNG seed (same seed, same prompt, same params → same answer).
    pub seed: u64,
    /// Text that ends the answer (not included in it).
    pub stop: Vec<String>,
}

impl Default for GenParams {
    fn default() -> Self {
        GenParams {
            temperature: 0.2,
            top_p: 0.9,
            max_tokens: 512,
            seed: 0,
            stop: Vec::new(),
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// End-of-turn token or a stop sequence.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The caller cancelled.
    Cancelled,
}

/// What a generation produced, with timings.
#[derive(Debug, Clone, PartialEq)]
pub struct GenOutput {
    /// The answer (stop sequence excluded).
    pub text: String,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens sampled.
    pub completion_tokens: usize,
    /// Why it ended.
    pub finish: Finish,
    /// Waiting for the engine (another generation was running).
    pub queued: Duration,
    /// Reading the prompt (prefill) until the first token was sampled.
    pub time_to_first_token: Duration,
    /// Time spent after the first token.
    pub decode_time: Duration,
    /// Prompt tokens whose keys and values were reused from the previous generation
    /// (not computed again).
    pub reused_tokens: usize,
}

/// Counters, for observability and tests.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Tokens sampled, all generations.
    pub tokens: AtomicU64,
    /// Generations running or waiting.
    pub active: AtomicUsize,
    /// Generations ended by cancellation.
    pub cancelled: AtomicU64,
    /// Generations finished.
    pub finished: AtomicU64,
}

/// A model ready to chat.
pub struct Engine {
    /// The file it came from.
    pub path: PathBuf,
    /// Weights.
    pub model: Model,
    /// Tokenizer from the GGUF.
    pub tokenizer: Tokenizer,
    /// Chat template from the GGUF.
    pub template: ChatTemplate,
    /// `general.name`, when present.
    pub name: Option<String>,
    /// Counters.
    pub stats: EngineStats,
    pool: rayon::ThreadPool,
    busy: Mutex<()>,
    /// The previous generation's tokens and their keys and values. A conversation's next
    /// prompt starts with the same system prompt and history, so only the new tokens
    /// need a forward pass (what llama.cpp's server calls prompt caching).
    prefix: Mutex<Option<(Vec<u32>, KvCache)>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("path", &self.path)
            .field("model", &self.model)
            .field("threads", &self.threads())
            .finish()
    }
}

impl Engine {
    /// Loads `path` with `threads` inference threads (0 = one per core).
    pub fn load(path: &Path, threads: usize) -> Result<Engine, LoadError> {
        let gguf = Gguf::open(path)?;
        let setup = |what: String| LoadError::Setup {
            path: path.to_path_buf(),
            what,
        };
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        let model = Model::load(&gguf)?;
        if tokenizer.vocab_size() > model.config.vocab {
            return Err(setup(format!(
                "the tokenizer has {} tokens but the embeddings {}",
                tokenizer.vocab_size(),
                model.config.vocab
            )));
        }
        let text = |id: Option<u32>| {
            id.and_then(|i| tokenizer.text(i))
                .unwrap_or_default()
                .to_string()
        };
        let template = ChatTemplate::from_gguf(&gguf, &text(tokenizer.bos), &text(tokenizer.eos))
            .map_err(setup)?;
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("coda-llm-{i}"))
            .build()
            .map_err(|e| LoadError::Threads(e.to_string()))?;
        Ok(Engine {
            path: path.to_path_buf(),
            name: gguf
                .get("general.name")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            model,
            tokenizer,
            template,
            stats: EngineStats::default(),
            pool,
            busy: Mutex::new(()),
            prefix: Mutex::new(None),
        })
    }

    /// Shapes.
    pub fn config(&self) -> &ModelConfig {
        &self.model.config
    }

    /// Inference threads.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// The dot-product kernel in use.
    pub fn kernel(&self) -> Kernel {
        self.model.kernel()
    }

    /// Forgets the cached prefix: the next generation computes its whole prompt (for
    /// benchmarks that compare prompt processing).
    pub fn clear_prefix(&self) {
        *self.prefix.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Tokenises plain text (no chat template; BOS as the model asks), e.g. a completion
    /// prompt for a base model.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, GenError> {
        self.tokenizer.encode(text).map_err(GenError::Prompt)
    }

    /// A forward pass on one of the pool's threads: its matmuls then split from inside
    /// the pool, where idle workers are still spinning, instead of waking the pool from
    /// outside and sleeping (a third more decode speed at 2 threads).
    fn forward(&self, cache: &mut KvCache, tokens: &[u32]) -> Result<Vec<f32>, ForwardError> {
        self.pool
            .install(|| self.model.forward(&self.pool, cache, tokens))
    }

    /// The logits after `tokens` on a fresh cache: the distribution of the first token
    /// generated (what tests compare with llama.cpp).
    pub fn first_logits(&self, tokens: &[u32]) -> Result<Vec<f32>, GenError> {
        let _turn = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let mut cache = self.model.new_cache();
        Ok(self.forward(&mut cache, tokens)?)
    }

    /// The matrices' types as held in memory, with their bytes.
    pub fn weight_types(&self) -> std::collections::BTreeMap<&'static str, usize> {
        self.model.weight_types()
    }

    /// Renders and tokenises a conversation.
    pub fn prompt_tokens(&self, messages: &[TemplateMessage]) -> Result<Vec<u32>, GenError> {
        let text = self.template.render(messages).map_err(GenError::Prompt)?;
        let ids = self.tokenizer.encode(&text).map_err(GenError::Prompt)?;
        if ids.is_empty() {
            return Err(GenError::Prompt("the prompt is empty".into()));
        }
        Ok(ids)
    }

    /// Generates an answer to `prompt` (token ids). `cancelled` is polled before every
    /// forward pass; `on_text` gets each new piece of text and returns `false` to cancel.
    /// Either way generation stops within one token.
    pub fn generate(
        &self,
        prompt: &[u32],
        params: &GenParams,
        cancelled: &dyn Fn() -> bool,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<GenOutput, GenError> {
        self.stats.active.fetch_add(1, Ordering::SeqCst);
        let queued_at = Instant::now();
        // A poisoned lock only means another generation panicked; the model is immutable.
        let _turn = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let queued = queued_at.elapsed();
        let result = self.generate_locked(prompt, params, cancelled, on_text, queued);
        match &result {
            Ok(out) if out.finish == Finish::Cancelled => {
                self.stats.cancelled.fetch_add(1, Ordering::SeqCst);
            }
            _ => {}
        }
        self.stats.finished.fetch_add(1, Ordering::SeqCst);
        self.stats.active.fetch_sub(1, Ordering::SeqCst);
        result
    }

    fn generate_locked(
        &self,
        prompt: &[u32],
        params: &GenParams,
        cancelled: &dyn Fn() -> bool,
        on_text: &mut dyn FnMut(&str) -> bool,
        queued: Duration,
    ) -> Result<GenOutput, GenError> {
        let start = Instant::now();
        let mut out = GenOutput {
            text: String::new(),
            prompt_tokens: prompt.len(),
            completion_tokens: 0,
            finish: Finish::Cancelled,
            queued,
            time_to_first_token: Duration::ZERO,
            decode_time: Duration::ZERO,
            reused_tokens: 0,
        };
        // At least the last prompt token runs: its logits pick the first answer token.
        let (mut seq, mut cache) = self.take_prefix(prompt, prompt.len().saturating_sub(1));
        let common = seq.len();
        out.reused_tokens = common;
        let mut logits = Vec::new();
        for chunk in prompt[common..].chunks(PREFILL_CHUNK) {
            if cancelled() {
                self.keep_prefix(seq, cache);
                return Ok(out);
            }
            logits = self.forward(&mut cache, chunk)?;
            seq.extend_from_slice(chunk);
        }
        let mut sampler = Sampler::new(params);
        let mut utf8 = Utf8Stream::default();
        let mut stop = StopMatcher::new(&params.stop);
        let mut first_at = None;
        out.finish = Finish::Length;
        let mut sampled = 0u32;
        let mut hit_stop = false;
        while sampled < params.max_tokens {
            if cancelled() {
                out.finish = Finish::Cancelled;
                break;
            }
            let token = sampler.sample(&mut logits);
            sampled += 1;
            out.completion_tokens += 1;
            self.stats.tokens.fetch_add(1, Ordering::SeqCst);
            if first_at.is_none() {
                first_at = Some(Instant::now());
                out.time_to_first_token = start.elapsed();
            }
            if self.tokenizer.is_eog(token) {
                out.finish = Finish::Stop;
                break;
            }
            let piece = utf8.push(self.tokenizer.token_bytes(token));
            let (emit, hit) = stop.push(&piece);
            out.text.push_str(&emit);
            if !emit.is_empty() && !on_text(&emit) {
                out.finish = Finish::Cancelled;
                break;
            }
            if hit {
                out.finish = Finish::Stop;
                hit_stop = true;
                break;
            }
            if sampled == params.max_tokens {
                break;
            }
            if cancelled() {
                out.finish = Finish::Cancelled;
                break;
            }
            logits = self
                .pool
                .install(|| self.model.decode(&self.pool, &mut cache, token))?;
            seq.push(token);
        }
        // Only the prompt's positions are kept: the answer's ran the per-token kernels, and
        // the next prompt (which repeats the answer) must compute them as a prompt does, or
        // the cache would change what it answers.
        seq.truncate(prompt.len());
        cache.truncate(prompt.len());
        self.keep_prefix(seq, cache);
        if out.finish != Finish::Cancelled && !hit_stop {
            // Held-back text: a partial stop sequence that never completed, or bytes of an
            // unfinished character.
            let tail = stop.push(&utf8.finish()).0 + &stop.flush();
            if !tail.is_empty() {
                out.text.push_str(&tail);
                if !on_text(&tail) {
                    out.finish = Finish::Cancelled;
                }
            }
        }
        if let Some(t) = first_at {
            out.decode_time = t.elapsed();
        }
        Ok(out)
    }
}

impl Engine {
    /// Runs `tokens` through the prompt path into the kept prefix (past what it already
    /// holds), so that a next prompt starting with them — the conversation with the answer
    /// just given — computes only what is new. The answer's own positions ran the
    /// per-token kernels and are not kept ([`Engine::generate`]); computed here as a prompt
    /// computes them, the next answer is the one a cold cache gives. Stops between chunks
    /// once `cancelled` says so or a generation is waiting, keeping what is done. Returns
    /// how many tokens were computed.
    pub fn warm(&self, tokens: &[u32], cancelled: &dyn Fn() -> bool) -> Result<usize, GenError> {
        let _turn = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let (mut seq, mut cache) = self.take_prefix(tokens, tokens.len());
        let common = seq.len();
        // Small chunks: a generation asking for the engine waits at most one of them.
        for chunk in tokens[common..].chunks(WARM_CHUNK) {
            if cancelled() || self.stats.active.load(Ordering::SeqCst) > 0 {
                break;
            }
            // A failed pass leaves the cache in doubt: nothing is kept, as in `generate`.
            self.forward(&mut cache, chunk)?;
            seq.extend_from_slice(chunk);
        }
        let done = seq.len() - common;
        self.keep_prefix(seq, cache);
        Ok(done)
    }

    /// The kept prefix cut to what it shares with `tokens` (at most `limit` tokens), or
    /// an empty one; the engine holds none until it is kept again.
    fn take_prefix(&self, tokens: &[u32], limit: usize) -> (Vec<u32>, KvCache) {
        let cached = self.prefix.lock().unwrap_or_else(|p| p.into_inner()).take();
        let (mut seq, mut cache) = cached.unwrap_or_else(|| (Vec::new(), self.model.new_cache()));
        let common = seq
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count()
            .min(limit);
        seq.truncate(common);
        cache.truncate(common);
        (seq, cache)
    }

    /// Keeps `seq` (the tokens whose keys and values `cache` holds) for the next prompt.
    fn keep_prefix(&self, seq: Vec<u32>, cache: KvCache) {
        debug_assert_eq!(seq.len(), cache.len);
        *self.prefix.lock().unwrap_or_else(|p| p.into_inner()) = Some((seq, cache));
    }
}

/// Temperature and nucleus sampling with a seeded RNG.
#[derive(Debug)]
pub struct Sampler {
    rng: StdRng,
    temperature: f32,
    top_p: f32,
}

impl Sampler {
    /// A sampler for `params`.
    pub fn new(params: &GenParams) -> Sampler {
        Sampler {
            rng: StdRng::seed_from_u64(params.seed),
            temperature: params.temperature,
            top_p: params.top_p,
        }
    }

    /// Picks the next token (modifies `logits`).
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        if self.temperature.is_nan() || self.temperature <= 1e-4 || logits.len() < 2 {
            return argmax(logits);
        }
        for l in logits.iter_mut() {
            *l /= self.temperature;
        }
        softmax(logits);
        let r: f32 = self.rng.random();
        if self.top_p.is_nan() || self.top_p >= 1.0 {
            return pick(logits.iter().copied().enumerate(), 1.0, r).unwrap_or(0);
        }
        // The nucleus almost always lies among the few tokens above a tiny probability;
        // sort only those, and the whole vocabulary only if they fall short.
        let mut cand: Vec<(usize, f32)> = logits
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, p)| *p > 1e-5)
            .collect();
        let mass: f32 = cand.iter().map(|c| c.1).sum();
        if mass < self.top_p {
            cand = logits.iter().copied().enumerate().collect();
        }
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut total = 0f32;
        let mut keep = cand.len();
        for (i, c) in cand.iter().enumerate() {
            total += c.1;
            if total >= self.top_p {
                keep = i + 1;
                break;
            }
        }
        cand.truncate(keep);
        pick(cand.into_iter(), total.max(f32::MIN_POSITIVE), r).unwrap_or(0)
    }
}

fn pick(items: impl Iterator<Item = (usize, f32)>, total: f32, r: f32) -> Option<u32> {
    let target = r * total;
    let mut acc = 0f32;
    let mut last = None;
    for (i, p) in items {
        acc += p;
        last = Some(i as u32);
        if acc > target {
            return last;
        }
    }
    last
}

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

/// Finds stop sequences in streamed text, holding back any tail that could be the start of
/// one so a stop sequence is never streamed out.
#[derive(Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> StopMatcher {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    /// Adds text; returns what may be shown now, and whether a stop sequence was hit
    /// (the text before it is returned, the rest dropped).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        if self.stops.is_empty() {
            return (text.to_string(), false);
        }
        self.held.push_str(text);
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(i) = first {
            let out = self.held[..i].to_string();
            self.held.clear();
            return (out, true);
        }
        // Hold the longest tail that is a proper prefix of some stop sequence.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if i > keep && self.held.ends_with(&s[..i]) {
                    keep = i;
                }
            }
        }
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        (out, false)
    }

    /// Whatever is held (the stream ended without completing a stop sequence).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_sequences_are_never_streamed() {
        let mut m = StopMatcher::new(&["\nUser:".to_string(), "END".to_string()]);
        let mut shown = String::new();
        let mut hit = false;
        for piece in ["Hello", " there", "\nUs", "er", ": more"] {
            let (s, h) = m.push(piece);
            shown.push_str(&s);
            if h {
                hit = true;
                break;
            }
        }
        assert!(hit);
        assert_eq!(shown, "Hello there");

        let mut m = StopMatcher::new(&["END".to_string()]);
        assert_eq!(m.push("abcE"), ("abc".to_string(), false));
        assert_eq!(m.push("x"), ("Ex".to_string(), false));
        assert_eq!(m.push("EN"), (String::new(), false));
        assert_eq!(m.flush(), "EN");
    }

    #[test]
    fn sampling_is_seeded_and_greedy_at_zero() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let best = argmax(&logits);
        let mut g = Sampler::new(&GenParams {
            temperature: 0.0,
            ..GenParams::default()
        });
        assert_eq!(g.sample(&mut logits.clone()), best);
        let params = GenParams {
            temperature: 1.0,
            top_p: 0.95,
            seed: 7,
            ..GenParams::default()
        };
        let run = || {
            let mut s = Sampler::new(&params);
            (0..20)
                .map(|_| s.sample(&mut logits.clone()))
                .collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        assert!(
            a.iter().any(|&t| t != a[0]),
            "temperature 1 should vary: {a:?}"
        );
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Token 3 holds ~97% of the mass: with top_p 0.5 it is always chosen.
        let mut base = vec![0f32; 50];
        base[3] = 8.0;
        let mut s = Sampler::new(&GenParams {
            temperature: 1.0,
            top_p: 0.5,
            seed: 1,
            ..GenParams::default()
        });
        for _ in 0..50 {
            assert_eq!(s.sample(&mut base.clone()), 3);
        }
    }
}
