//! A llama-architecture transformer (Llama, SmolLM, Mistral-style GGUFs): weights loaded
//! from a GGUF into Q8_0, and a forward pass over a batch of tokens with a per-sequence
//! KV cache. Matrix products run on a rayon pool; Q/K/V and gate/up are fused so a decode
//! step is five parallel regions per layer.

use std::path::Path;

use rayon::prelude::*;

use crate::gguf::{Gguf, GgufError, TensorInfo};
use crate::kernels::{matmul, Kernel, QActs, QMatrix};
use crate::quant::{dequantize, GgmlType, QK};

/// Shapes and constants from the GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// `general.architecture`.
    pub arch: String,
    /// Hidden size.
    pub dim: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention).
    pub kv_heads: usize,
    /// Per-head size.
    pub head_dim: usize,
    /// Feed-forward hidden size.
    pub ffn: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Trained context length.
    pub context: usize,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// RoPE base.
    pub rope_base: f32,
}

struct Layer {
    attn_norm: Vec<f32>,
    /// Q, K and V stacked: `dim + 2 * kv_dim` rows.
    qkv: QMatrix,
    wo: QMatrix,
    ffn_norm: Vec<f32>,
    /// Gate and up stacked: `2 * ffn` rows.
    gate_up: QMatrix,
    down: QMatrix,
}

/// A loaded model. Immutable and shared by all generations.
pub struct Model {
    /// Shapes.
    pub config: ModelConfig,
    embed: QMatrix,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    /// The output projection; `None` when tied to the embeddings.
    output: Option<QMatrix>,
    rope_inv_freq: Vec<f32>,
    kernel: Kernel,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", &self.config)
            .field("kernel", &self.kernel)
            .finish()
    }
}

/// The per-sequence state: keys and values of every position so far.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    /// Per layer: positions × kv_dim keys.
    k: Vec<Vec<f32>>,
    /// Per layer: positions × kv_dim values.
    v: Vec<Vec<f32>>,
    /// Positions filled.
    pub len: usize,
}

impl KvCache {
    /// Keeps the first `len` positions (a shared prefix), dropping the rest.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        for layer in self.k.iter_mut().chain(self.v.iter_mut()) {
            let per_position = layer.len() / self.len.max(1);
            layer.truncate(len * per_position);
        }
        self.len = len;
    }
}

/// Why a forward pass could not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ForwardError {
    /// The sequence would exceed the model's context.
    #[error("the conversation needs {needed} tokens but the model's context is {context}")]
    ContextFull {
        /// Tokens needed.
        needed: usize,
        /// The limit.
        context: usize,
    },
    /// A token id outside the vocabulary.
    #[error("token id {0} is outside the vocabulary")]
    BadToken(u32),
}

fn load_matrix(
    gguf: &Gguf,
    file: &mut std::fs::File,
    t: &TensorInfo,
    rows: usize,
    cols: usize,
) -> Result<QMatrix, GgufError> {
    check_shape(gguf, t, &[cols, rows])?;
    if !cols.is_multiple_of(QK) {
        return Err(gguf.missing(format!(
            "tensor `{}` has rows of {cols}, not a multiple of {QK}",
            t.name
        )));
    }
    let raw = gguf.read_raw(file, t)?;
    if t.ty == GgmlType::Q8_0 {
        return Ok(QMatrix::from_q8_0_blocks(rows, cols, &raw));
    }
    let f = dequantize_tensor(gguf, t, &raw)?;
    Ok(QMatrix::from_f32(rows, cols, &f))
}

fn dequantize_tensor(gguf: &Gguf, t: &TensorInfo, raw: &[u8]) -> Result<Vec<f32>, GgufError> {
    if !t.ty.readable() {
        return Err(GgufError::UnsupportedType {
            path: gguf.path.clone(),
            tensor: t.name.clone(),
            ty: t.ty.name().to_string(),
        });
    }
    let mut f = vec![0f32; t.elements() as usize];
    if !dequantize(t.ty, raw, &mut f) {
        return Err(gguf.missing(format!("tensor `{}` has the wrong size", t.name)));
    }
    Ok(f)
}

fn check_shape(gguf: &Gguf, t: &TensorInfo, want: &[usize]) -> Result<(), GgufError> {
    let got: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    if got != want {
        return Err(gguf.missing(format!(
            "tensor `{}` has shape {got:?}, expected {want:?}",
            t.name
        )));
    }
    Ok(())
}

fn tensor<'a>(gguf: &'a Gguf, name: &str) -> Result<&'a TensorInfo, GgufError> {
    gguf.tensor(name)
        .ok_or_else(|| gguf.missing(format!("tensor `{name}` is missing")))
}

fn load_vector(
    gguf: &Gguf,
    file: &mut std::fs::File,
    name: &str,
    len: usize,
) -> Result<Vec<f32>, GgufError> {
    let t = tensor(gguf, name)?;
    check_shape(gguf, t, &[len])?;
    let raw = gguf.read_raw(file, t)?;
    dequantize_tensor(gguf, t, &raw)
}

impl ModelConfig {
    /// Reads the shapes from the metadata.
    pub fn from_gguf(g: &Gguf) -> Result<ModelConfig, GgufError> {
        let arch = g.str("general.architecture")?.to_string();
        if !matches!(arch.as_str(), "llama" | "mistral") {
            return Err(g.missing(format!(
                "architecture `{arch}` is not supported by the embedded engine (it runs llama-family models: llama, mistral)"
            )));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let usize_of = |k: &str| -> Result<usize, GgufError> {
            let v = g.u64(&key(k))?;
            usize::try_from(v)
                .ok()
                .filter(|&v| v > 0 && v < 1 << 24)
                .ok_or_else(|| g.missing(format!("metadata `{}` = {v} is out of range", key(k))))
        };
        let dim = usize_of("embedding_length")?;
        let heads = usize_of("attention.head_count")?;
        let kv_heads = match g.get(&key("attention.head_count_kv")) {
            Some(_) => usize_of("attention.head_count_kv")?,
            None => heads,
        };
        if dim % heads != 0 || heads % kv_heads != 0 {
            return Err(g.missing(format!(
                "inconsistent attention shape: {dim} dims, {heads} heads, {kv_heads} kv heads"
            )));
        }
        let head_dim = dim / heads;
        if head_dim % 2 != 0 {
            return Err(g.missing(format!("odd head size {head_dim}")));
        }
        let vocab = tensor(g, "token_embd.weight")?
            .dims
            .get(1)
            .copied()
            .unwrap_or(0) as usize;
        Ok(ModelConfig {
            dim,
            layers: usize_of("block_count")?,
            heads,
            kv_heads,
            head_dim,
            ffn: usize_of("feed_forward_length")?,
            vocab,
            context: usize_of("context_length")?,
            eps: g.f64_or(&key("attention.layer_norm_rms_epsilon"), 1e-5) as f32,
            rope_base: g.f64_or(&key("rope.freq_base"), 10_000.0) as f32,
            arch,
        })
    }

    /// Size of the keys (and values) of one position in one layer.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

impl Model {
    /// Loads the weights of an already parsed GGUF.
    pub fn load(gguf: &Gguf) -> Result<Model, GgufError> {
        let c = ModelConfig::from_gguf(gguf)?;
        let mut file = gguf.open_data()?;
        let f = &mut file;
        let kv = c.kv_dim();
        let embed = load_matrix(gguf, f, tensor(gguf, "token_embd.weight")?, c.vocab, c.dim)?;
        let mut layers = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let t = |n: &str| tensor(gguf, &format!("blk.{i}.{n}.weight"));
            let q = load_matrix(gguf, f, t("attn_q")?, c.dim, c.dim)?;
            let k = load_matrix(gguf, f, t("attn_k")?, kv, c.dim)?;
            let v = load_matrix(gguf, f, t("attn_v")?, kv, c.dim)?;
            let gate = load_matrix(gguf, f, t("ffn_gate")?, c.ffn, c.dim)?;
            let up = load_matrix(gguf, f, t("ffn_up")?, c.ffn, c.dim)?;
            layers.push(Layer {
                attn_norm: load_vector(gguf, f, &format!("blk.{i}.attn_norm.weight"), c.dim)?,
                qkv: QMatrix::concat(&[q, k, v]),
                wo: load_matrix(gguf, f, t("attn_output")?, c.dim, c.dim)?,
                ffn_norm: load_vector(gguf, f, &format!("blk.{i}.ffn_norm.weight"), c.dim)?,
                gate_up: QMatrix::concat(&[gate, up]),
                down: load_matrix(gguf, f, t("ffn_down")?, c.dim, c.ffn)?,
            });
        }
        let out_norm = load_vector(gguf, f, "output_norm.weight", c.dim)?;
        let output = match gguf.tensor("output.weight") {
            Some(t) => Some(load_matrix(gguf, f, t, c.vocab, c.dim)?),
            None => None,
        };
        let half = c.head_dim / 2;
        let rope_inv_freq = (0..half)
            .map(|i| c.rope_base.powf(-(2.0 * i as f32) / c.head_dim as f32))
            .collect();
        Ok(Model {
            config: c,
            embed,
            layers,
            out_norm,
            output,
            rope_inv_freq,
            kernel: Kernel::current(),
        })
    }

    /// Opens and loads a GGUF file.
    pub fn open(path: &Path) -> Result<Model, GgufError> {
        Model::load(&Gguf::open(path)?)
    }

    /// The kernel in use.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Bytes of weights held in memory.
    pub fn weight_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                l.qkv.bytes()
                    + l.wo.bytes()
                    + l.gate_up.bytes()
                    + l.down.bytes()
                    + (l.attn_norm.len() + l.ffn_norm.len()) * 4
            })
            .sum();
        layers + self.embed.bytes() + self.output.as_ref().map_or(0, QMatrix::bytes)
    }

    /// An empty cache for a new sequence.
    pub fn new_cache(&self) -> KvCache {
        KvCache {
            k: vec![Vec::new(); self.config.layers],
            v: vec![Vec::new(); self.config.layers],
            len: 0,
        }
    }

    /// Runs `tokens` (appended after the cache's positions) through the model and returns
    /// the logits of the last one.
    pub fn forward(
        &self,
        pool: &rayon::ThreadPool,
        cache: &mut KvCache,
        tokens: &[u32],
    ) -> Result<Vec<f32>, ForwardError> {
        let c = &self.config;
        let n = tokens.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        if cache.len + n > c.context {
            return Err(ForwardError::ContextFull {
                needed: cache.len + n,
                context: c.context,
            });
        }
        let (dim, kv, hd) = (c.dim, c.kv_dim(), c.head_dim);
        let qkv_rows = dim + 2 * kv;
        let mut x = vec![0f32; n * dim];
        for (i, &t) in tokens.iter().enumerate() {
            if t as usize >= c.vocab {
                return Err(ForwardError::BadToken(t));
            }
            self.embed
                .row_f32(t as usize, &mut x[i * dim..(i + 1) * dim]);
        }
        let pos0 = cache.len;
        let mut xn = vec![0f32; n * dim];
        let mut qkv = vec![0f32; n * qkv_rows];
        let mut att = vec![0f32; n * dim];
        let mut proj = vec![0f32; n * dim];
        let mut gu = vec![0f32; n * 2 * c.ffn];
        let mut h = vec![0f32; n * c.ffn];
        for (li, layer) in self.layers.iter().enumerate() {
            rmsnorm(&x, &layer.attn_norm, c.eps, &mut xn);
            matmul(
                pool,
                self.kernel,
                &layer.qkv,
                &QActs::quantize(&xn, dim),
                &mut qkv,
            );
            for i in 0..n {
                let row = &mut qkv[i * qkv_rows..(i + 1) * qkv_rows];
                let pos = (pos0 + i) as f32;
                let (q, rest) = row.split_at_mut(dim);
                rope(q, hd, pos, &self.rope_inv_freq);
                rope(&mut rest[..kv], hd, pos, &self.rope_inv_freq);
                cache.k[li].extend_from_slice(&rest[..kv]);
                cache.v[li].extend_from_slice(&rest[kv..2 * kv]);
            }
            self.attention(pool, &qkv, &cache.k[li], &cache.v[li], pos0, n, &mut att);
            matmul(
                pool,
                self.kernel,
                &layer.wo,
                &QActs::quantize(&att, dim),
                &mut proj,
            );
            for (a, b) in x.iter_mut().zip(&proj) {
                *a += b;
            }
            rmsnorm(&x, &layer.ffn_norm, c.eps, &mut xn);
            matmul(
                pool,
                self.kernel,
                &layer.gate_up,
                &QActs::quantize(&xn, dim),
                &mut gu,
            );
            for i in 0..n {
                let g = &gu[i * 2 * c.ffn..i * 2 * c.ffn + c.ffn];
                let u = &gu[i * 2 * c.ffn + c.ffn..(i + 1) * 2 * c.ffn];
                for ((o, &gv), &uv) in h[i * c.ffn..(i + 1) * c.ffn].iter_mut().zip(g).zip(u) {
                    *o = gv / (1.0 + (-gv).exp()) * uv;
                }
            }
            matmul(
                pool,
                self.kernel,
                &layer.down,
                &QActs::quantize(&h, c.ffn),
                &mut proj,
            );
            for (a, b) in x.iter_mut().zip(&proj) {
                *a += b;
            }
        }
        cache.len += n;
        let last = &x[(n - 1) * dim..];
        let mut normed = vec![0f32; dim];
        rmsnorm(last, &self.out_norm, c.eps, &mut normed);
        let mut logits = vec![0f32; c.vocab];
        let head = self.output.as_ref().unwrap_or(&self.embed);
        matmul(
            pool,
            self.kernel,
            head,
            &QActs::quantize(&normed, dim),
            &mut logits,
        );
        Ok(logits)
    }

    /// Causal attention of the `n` new positions over the cache, one task per (token, head).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        pool: &rayon::ThreadPool,
        qkv: &[f32],
        kc: &[f32],
        vc: &[f32],
        pos0: usize,
        n: usize,
        out: &mut [f32],
    ) {
        let c = &self.config;
        let (dim, kv, hd) = (c.dim, c.kv_dim(), c.head_dim);
        let qkv_rows = dim + 2 * kv;
        let group = c.heads / c.kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let task = |(idx, o): (usize, &mut [f32])| {
            let (i, hh) = (idx / c.heads, idx % c.heads);
            let q = &qkv[i * qkv_rows + hh * hd..i * qkv_rows + (hh + 1) * hd];
            let kvh = hh / group;
            let upto = pos0 + i + 1;
            let mut scores: Vec<f32> = (0..upto)
                .map(|t| {
                    let k = &kc[t * kv + kvh * hd..t * kv + (kvh + 1) * hd];
                    dot_f32(q, k) * scale
                })
                .collect();
            softmax(&mut scores);
            o.fill(0.0);
            for (t, &p) in scores.iter().enumerate() {
                let v = &vc[t * kv + kvh * hd..t * kv + (kvh + 1) * hd];
                for (ov, &vv) in o.iter_mut().zip(v) {
                    *ov += p * vv;
                }
            }
        };
        // Very short sequences are cheaper on this thread than a trip through the pool.
        if n * c.heads * (pos0 + n) < 256 {
            out.chunks_mut(hd).enumerate().for_each(task);
        } else {
            pool.install(|| out.par_chunks_mut(hd).enumerate().for_each(task));
        }
    }
}

/// A dot product with eight independent partial sums, so it vectorises (a single running
/// float sum cannot be reordered by the compiler).
#[inline]
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn rmsnorm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (xi, oi) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ms = dot_f32(xi, xi) / d as f32;
        let s = 1.0 / (ms + eps).sqrt();
        for ((o, &v), &g) in oi.iter_mut().zip(xi).zip(w) {
            *o = v * s * g;
        }
    }
}

/// Rotates adjacent pairs of each head (ggml's "normal" RoPE, which llama GGUFs use: their
/// Q/K weights are permuted at conversion to match).
fn rope(x: &mut [f32], head_dim: usize, pos: f32, inv_freq: &[f32]) {
    for head in x.chunks_exact_mut(head_dim) {
        for (pair, &f) in head.chunks_exact_mut(2).zip(inv_freq) {
            let (s, c) = (pos * f).sin_cos();
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * c - b * s;
            pair[1] = a * s + b * c;
        }
    }
}

/// In-place softmax.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    if sum > 0.0 {
        for v in x.iter_mut() {
            *v /= sum;
        }
    }
}
