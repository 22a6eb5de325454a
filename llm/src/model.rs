//! The transformer: llama-family models (Llama, SmolLM, Mistral), Qwen 2/2.5 and 3, Phi-3
//! and Gemma 2 and 3, weights
//! loaded from a GGUF in their own block formats where the engine has a kernel for them
//! (Q8_0, Q5_0, Q4_K, Q5_K, Q6_K; anything else readable becomes Q8_0 at load), and a
//! forward pass over a batch of tokens with a per-sequence KV cache. Matrix products run
//! on a rayon pool; Q/K/V and gate/up are fused where their types agree.

use std::collections::BTreeMap;
use std::path::Path;

use rayon::prelude::*;

use crate::arena::Packer;
use crate::gguf::{Gguf, GgufError, TensorInfo, Value};
use crate::kernels::{matmul_linear, Acts, ActsRows, Kernel, Linear, QMatrix, Weight};
use crate::quant::{dequantize, GgmlType};
use crate::rows::{self, Rows, RowsRef};

/// Architectures the engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// llama, mistral (and SmolLM, which is llama).
    Llama,
    /// qwen2 (Qwen 2 and 2.5): llama with Q/K/V biases and NeoX RoPE.
    Qwen2,
    /// qwen3: llama with per-head QK-norm and NeoX RoPE, heads wider than dim / heads.
    Qwen3,
    /// phi3: fused QKV and gate+up matrices, NeoX RoPE.
    Phi3,
    /// gemma2: GELU(tanh) FFN, post-attention and post-FFN norms, scaled embeddings,
    /// alternating sliding-window layers, attention and final logit soft-capping.
    Gemma2,
    /// gemma3: GELU(tanh) FFN, QK-norm, post-attention and post-FFN norms, scaled
    /// embeddings, sliding-window layers with their own RoPE base, NeoX RoPE.
    Gemma3,
}

/// What the engine would need for an architecture it does not run, for the error message.
fn missing_for(arch: &str) -> &'static str {
    if arch.contains("moe") || arch == "mixtral" || arch.starts_with("deepseek") {
        "mixture-of-experts layers"
    } else if arch.contains("mamba") || arch.contains("rwkv") {
        "recurrent (state-space) layers"
    } else if arch.starts_with("bert") || arch.starts_with("nomic") || arch.contains("t5") {
        "encoder models"
    } else {
        "this architecture's forward pass"
    }
}

/// Shapes and constants from the GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// `general.architecture`.
    pub arch: String,
    /// Which forward pass.
    pub kind: Arch,
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
    /// Trained context length (for LongRoPE models, the original one: see `from_gguf`).
    pub context: usize,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// RoPE base (of the global layers).
    pub rope_base: f32,
    /// RoPE base of the sliding-window layers.
    pub rope_base_local: f32,
    /// Linear RoPE scaling factor of the global layers (1 = none).
    pub rope_scale: f32,
    /// Sliding window (positions a local layer sees), 0 = none.
    pub sliding_window: usize,
    /// Every `n`-th layer is global, the others local (0 = all global).
    pub sliding_pattern: usize,
    /// NeoX RoPE (rotate i with i + head_dim/2) rather than adjacent pairs.
    pub rope_neox: bool,
    /// GELU(tanh) gating in the FFN rather than SiLU.
    pub gelu: bool,
    /// Embeddings multiplied by √dim (Gemma).
    pub embed_scale: bool,
    /// Attention scores are `q·k × query_scale`.
    pub query_scale: f32,
    /// Attention scores become `cap × tanh(s / cap)` (0 = none).
    pub attn_softcap: f32,
    /// Output logits become `cap × tanh(l / cap)` (0 = none).
    pub final_softcap: f32,
}

struct Layer {
    attn_norm: Vec<f32>,
    /// Q, K and V stacked: `q_dim + 2 * kv_dim` rows.
    qkv: Linear,
    /// Their biases, stacked the same way (Qwen 2).
    qkv_bias: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    wo: Linear,
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    /// Gate and up stacked: `2 * ffn` rows.
    gate_up: Linear,
    down: Linear,
    post_ffn_norm: Option<Vec<f32>>,
    /// A sliding-window layer (its window, and the local RoPE).
    local: bool,
}

/// A loaded model. Immutable and shared by all generations.
pub struct Model {
    /// Shapes.
    pub config: ModelConfig,
    embed: Linear,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    /// The output projection; `None` when tied to the embeddings.
    output: Option<Linear>,
    rope_inv_freq: Vec<f32>,
    rope_inv_freq_local: Vec<f32>,
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

/// Reads a matrix: kept in its own type when a kernel runs it, else converted to Q8_0.
fn load_weight(
    gguf: &Gguf,
    file: &mut std::fs::File,
    t: &TensorInfo,
    rows: usize,
    cols: usize,
) -> Result<Weight, GgufError> {
    check_shape(gguf, t, &[cols, rows])?;
    let block = t.ty.block_elems() as usize;
    let q8_block = crate::quant::QK;
    if !cols.is_multiple_of(block) || !cols.is_multiple_of(q8_block) {
        return Err(gguf.missing(format!(
            "tensor `{}` has rows of {cols}, not a multiple of {}",
            t.name,
            block.max(q8_block)
        )));
    }
    if !t.ty.readable() {
        return Err(unsupported(gguf, t));
    }
    let raw = gguf.read_raw(file, t)?;
    match t.ty {
        GgmlType::Q8_0 => Ok(Weight::Q8(QMatrix::from_q8_0_blocks(rows, cols, raw))),
        ty if ty.native() => Ok(Weight::Blocks {
            ty,
            rows,
            cols,
            data: raw.into(),
        }),
        _ => {
            let f = dequantize_tensor(gguf, t, &raw)?;
            Ok(Weight::Q8(QMatrix::from_f32(rows, cols, &f)))
        }
    }
}

fn unsupported(gguf: &Gguf, t: &TensorInfo) -> GgufError {
    GgufError::UnsupportedType {
        path: gguf.path.clone(),
        tensor: t.name.clone(),
        ty: t.ty.name().to_string(),
    }
}

fn dequantize_tensor(gguf: &Gguf, t: &TensorInfo, raw: &[u8]) -> Result<Vec<f32>, GgufError> {
    if !t.ty.readable() {
        return Err(unsupported(gguf, t));
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
        let kind = match arch.as_str() {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "phi3" => Arch::Phi3,
            "gemma2" => Arch::Gemma2,
            "gemma3" => Arch::Gemma3,
            _ => {
                return Err(g.missing(format!(
                    "architecture `{arch}` is not supported by the embedded engine: it lacks {} (it runs llama, mistral, qwen2, qwen3, phi3, gemma2 and gemma3)",
                    missing_for(&arch)
                )))
            }
        };
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
        if heads % kv_heads != 0 {
            return Err(g.missing(format!(
                "inconsistent attention shape: {heads} heads, {kv_heads} kv heads"
            )));
        }
        // Gemma's heads are wider than dim / heads; the file says so.
        let head_dim = match g.get(&key("attention.key_length")) {
            Some(_) => usize_of("attention.key_length")?,
            None if dim % heads == 0 => dim / heads,
            None => {
                return Err(g.missing(format!(
                    "inconsistent attention shape: {dim} dims, {heads} heads"
                )))
            }
        };
        if g.get(&key("attention.value_length")).is_some()
            && usize_of("attention.value_length")? != head_dim
        {
            return Err(g.missing(format!(
                "metadata `{}` differs from the key length (not supported)",
                key("attention.value_length")
            )));
        }
        if head_dim % 2 != 0 {
            return Err(g.missing(format!("odd head size {head_dim}")));
        }
        // Phi-2, StableLM and others rotate only part of each head.
        if g.get(&key("rope.dimension_count")).is_some()
            && usize_of("rope.dimension_count")? != head_dim
        {
            return Err(g.missing(format!(
                "metadata `{}` = {}: RoPE over part of each head ({head_dim}) is not supported",
                key("rope.dimension_count"),
                usize_of("rope.dimension_count")?
            )));
        }
        let vocab = tensor(g, "token_embd.weight")?
            .dims
            .get(1)
            .copied()
            .unwrap_or(0) as usize;
        // As llama.cpp: no type means linear, and older files name the factor
        // `rope.scale_linear`. (Llama 3.x's own scaling is the `rope_freqs` tensor, below.)
        let rope_scale = match g.get(&key("rope.scaling.type")).and_then(Value::as_str) {
            Some("none") => 1.0,
            None | Some("linear") => {
                let factor_key = [key("rope.scaling.factor"), key("rope.scale_linear")]
                    .into_iter()
                    .find(|k| g.get(k).is_some())
                    .unwrap_or_else(|| key("rope.scaling.factor"));
                let f = g.f64_or(&factor_key, 1.0) as f32;
                if !(f.is_finite() && f >= 0.0) {
                    return Err(g.missing(format!("metadata `{factor_key}` = {f} is out of range")));
                }
                // llama.cpp reads a factor of 0 as none.
                if f == 0.0 {
                    1.0
                } else {
                    1.0 / f
                }
            }
            Some(other) => {
                return Err(g.missing(format!(
                "metadata `{}` = `{other}`: this RoPE scaling is not supported (none, linear are)",
                key("rope.scaling.type")
            )))
            }
        };
        // Phi-3.5 and Phi-3 128k (LongRoPE) divide each RoPE frequency by a factor: one set
        // for contexts up to the original length, one beyond, and scale the rotated Q and K
        // by `rope.scaling.attn_factor`. llama.cpp picks the set by the context it is given;
        // this engine takes the short set and stops at the original length, which is what
        // a conversation of a voice assistant needs and what the model was trained for.
        let mut context = usize_of("context_length")?;
        let mut rope_mscale = 1.0f32;
        match (
            g.tensor("rope_factors_short.weight"),
            g.tensor("rope_factors_long.weight"),
        ) {
            (None, None) => {}
            (Some(_), _) => {
                if g.get(&key("rope.scaling.original_context_length")).is_some() {
                    context = context.min(usize_of("rope.scaling.original_context_length")?);
                }
                rope_mscale = g.f64_or(&key("rope.scaling.attn_factor"), 1.0) as f32;
                if !(rope_mscale.is_finite() && rope_mscale > 0.0) {
                    return Err(g.missing(format!(
                        "metadata `{}` = {rope_mscale} is out of range",
                        key("rope.scaling.attn_factor")
                    )));
                }
            }
            (None, Some(_)) => {
                return Err(g.missing(
                    "tensor `rope_factors_long.weight` without `rope_factors_short.weight`: LongRoPE needs both (only the short set is supported)".into(),
                ))
            }
        }
        let rope_base = g.f64_or(&key("rope.freq_base"), 10_000.0) as f32;
        let (sliding_window, sliding_pattern, local_base) = match kind {
            Arch::Llama | Arch::Qwen2 | Arch::Qwen3 => {
                if g.get(&key("attention.sliding_window")).is_some() {
                    return Err(g.missing(format!(
                        "metadata `{}`: sliding-window attention is not supported for `{arch}`",
                        key("attention.sliding_window")
                    )));
                }
                (0, 0, 0.0)
            }
            // Phi-3's window is as long as most of its context; llama.cpp ignores it too.
            Arch::Phi3 => (0, 0, 0.0),
            // llama.cpp's gemma2: every other layer local (window 4096 unless the file says),
            // one RoPE base for all.
            Arch::Gemma2 => (
                match g.get(&key("attention.sliding_window")) {
                    Some(_) => usize_of("attention.sliding_window")?,
                    None => 4096,
                },
                2,
                rope_base,
            ),
            // llama.cpp's gemma3: five local layers then one global, local RoPE base 10000.
            Arch::Gemma3 => (
                usize_of("attention.sliding_window")?,
                match g.get(&key("attention.sliding_window_pattern")) {
                    Some(_) => usize_of("attention.sliding_window_pattern")?,
                    None => 6,
                },
                g.f64_or(&key("rope.freq_base_swa"), 10_000.0) as f32,
            ),
        };
        let layers = usize_of("block_count")?;
        let gemma = matches!(kind, Arch::Gemma2 | Arch::Gemma3);
        // Gemma's query_pre_attn_scalar is not in the GGUF; llama.cpp takes dim / heads for
        // the 27B models (46 and 62 layers) and the head size for the others.
        // LongRoPE's attention factor scales both Q and K, so the scores by its square.
        let query_scale = if gemma && (layers == 46 || layers == 62) {
            1.0 / ((dim / heads) as f32).sqrt()
        } else {
            1.0 / (head_dim as f32).sqrt()
        } * rope_mscale
            * rope_mscale;
        let softcap = |k: &str, default: f64| -> Result<f32, GgufError> {
            let v = g.f64_or(&key(k), default) as f32;
            if v.is_finite() && v >= 0.0 {
                Ok(v)
            } else {
                Err(g.missing(format!("metadata `{}` = {v} is out of range", key(k))))
            }
        };
        // llama.cpp's defaults when a gemma2 file does not say.
        let (attn_softcap, final_softcap) = if kind == Arch::Gemma2 {
            (
                softcap("attn_logit_softcapping", 50.0)?,
                softcap("final_logit_softcapping", 30.0)?,
            )
        } else {
            (0.0, 0.0)
        };
        Ok(ModelConfig {
            kind,
            dim,
            layers,
            heads,
            kv_heads,
            head_dim,
            ffn: usize_of("feed_forward_length")?,
            vocab,
            context,
            eps: g.f64_or(&key("attention.layer_norm_rms_epsilon"), 1e-5) as f32,
            rope_base,
            rope_base_local: local_base,
            rope_scale,
            sliding_window,
            sliding_pattern,
            rope_neox: kind != Arch::Llama,
            gelu: gemma,
            embed_scale: gemma,
            query_scale,
            attn_softcap,
            final_softcap,
            arch,
        })
    }

    /// Size of the keys (and values) of one position in one layer.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Size of the queries of one position.
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Is layer `i` a sliding-window layer?
    pub fn is_local(&self, i: usize) -> bool {
        self.sliding_window > 0
            && self.sliding_pattern > 0
            && !(i + 1).is_multiple_of(self.sliding_pattern)
    }
}

impl Model {
    /// Loads the weights of an already parsed GGUF.
    pub fn load(gguf: &Gguf) -> Result<Model, GgufError> {
        let c = ModelConfig::from_gguf(gguf)?;
        let mut file = gguf.open_data()?;
        let f = &mut file;
        let (kv, qd) = (c.kv_dim(), c.q_dim());
        let embed = Linear::new(vec![load_weight(
            gguf,
            f,
            tensor(gguf, "token_embd.weight")?,
            c.vocab,
            c.dim,
        )?]);
        let mut layers = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let t = |n: &str| tensor(gguf, &format!("blk.{i}.{n}.weight"));
            let vector = |f: &mut std::fs::File, n: &str, len: usize| {
                load_vector(gguf, f, &format!("blk.{i}.{n}.weight"), len)
            };
            // Phi-3 stores Q, K and V as one matrix, and gate and up as one `ffn_up` of
            // twice the rows (gate first), which is the layout the forward pass uses.
            let qkv = match gguf.tensor(&format!("blk.{i}.attn_qkv.weight")) {
                Some(fused) => vec![load_weight(gguf, f, fused, qd + 2 * kv, c.dim)?],
                None => vec![
                    load_weight(gguf, f, t("attn_q")?, qd, c.dim)?,
                    load_weight(gguf, f, t("attn_k")?, kv, c.dim)?,
                    load_weight(gguf, f, t("attn_v")?, kv, c.dim)?,
                ],
            };
            let gate_up = if c.kind == Arch::Phi3 {
                vec![load_weight(gguf, f, t("ffn_up")?, 2 * c.ffn, c.dim)?]
            } else {
                vec![
                    load_weight(gguf, f, t("ffn_gate")?, c.ffn, c.dim)?,
                    load_weight(gguf, f, t("ffn_up")?, c.ffn, c.dim)?,
                ]
            };
            let qkv_bias = if c.kind == Arch::Qwen2 {
                let bias = |f: &mut std::fs::File, n: &str, len: usize| {
                    load_vector(gguf, f, &format!("blk.{i}.{n}.bias"), len)
                };
                let mut b = bias(f, "attn_q", qd)?;
                b.extend(bias(f, "attn_k", kv)?);
                b.extend(bias(f, "attn_v", kv)?);
                Some(b)
            } else {
                None
            };
            // A bias this forward pass would ignore must not be silently dropped.
            let used = ["attn_q.bias", "attn_k.bias", "attn_v.bias"];
            if let Some(t) = gguf.tensors.iter().find(|t| {
                t.name.strip_prefix(&format!("blk.{i}.")).is_some_and(|n| {
                    n.ends_with(".bias") && !(qkv_bias.is_some() && used.contains(&n))
                })
            }) {
                return Err(gguf.missing(format!(
                    "tensor `{}`: biases are not supported for `{}`",
                    t.name, c.arch
                )));
            }
            let qk_norm = matches!(c.kind, Arch::Gemma3 | Arch::Qwen3);
            let (q_norm, k_norm) = if qk_norm {
                (
                    Some(vector(f, "attn_q_norm", c.head_dim)?),
                    Some(vector(f, "attn_k_norm", c.head_dim)?),
                )
            } else {
                (None, None)
            };
            let (post_attn_norm, post_ffn_norm) = if matches!(c.kind, Arch::Gemma2 | Arch::Gemma3) {
                (
                    Some(vector(f, "post_attention_norm", c.dim)?),
                    Some(vector(f, "post_ffw_norm", c.dim)?),
                )
            } else {
                (None, None)
            };
            layers.push(Layer {
                attn_norm: vector(f, "attn_norm", c.dim)?,
                qkv: Linear::new(qkv),
                qkv_bias,
                q_norm,
                k_norm,
                wo: Linear::new(vec![load_weight(gguf, f, t("attn_output")?, c.dim, qd)?]),
                post_attn_norm,
                ffn_norm: vector(f, "ffn_norm", c.dim)?,
                gate_up: Linear::new(gate_up),
                down: Linear::new(vec![load_weight(gguf, f, t("ffn_down")?, c.dim, c.ffn)?]),
                post_ffn_norm,
                local: c.is_local(i),
            });
        }
        let out_norm = load_vector(gguf, f, "output_norm.weight", c.dim)?;
        let output = match gguf.tensor("output.weight") {
            Some(t) => Some(Linear::new(vec![load_weight(gguf, f, t, c.vocab, c.dim)?])),
            None => None,
        };
        let half = c.head_dim / 2;
        let inv_freq = |base: f32, scale: f32| -> Vec<f32> {
            (0..half)
                .map(|i| scale * base.powf(-(2.0 * i as f32) / c.head_dim as f32))
                .collect()
        };
        let mut rope_inv_freq = inv_freq(c.rope_base, c.rope_scale);
        // Llama 3.x's long-context RoPE and LongRoPE's short set (see `ModelConfig`):
        // per-frequency divisors stored as a tensor.
        if let Some(t) = ["rope_freqs.weight", "rope_factors_short.weight"]
            .iter()
            .find_map(|n| gguf.tensor(n))
        {
            let factors = load_vector(gguf, f, &t.name, half)?;
            for (v, ff) in rope_inv_freq.iter_mut().zip(&factors) {
                if *ff > 0.0 {
                    *v /= ff;
                }
            }
        }
        let rope_inv_freq_local = inv_freq(c.rope_base_local, 1.0);
        let mut model = Model {
            config: c,
            embed,
            layers,
            out_norm,
            output,
            rope_inv_freq,
            rope_inv_freq_local,
            kernel: Kernel::current(),
        };
        model.pack();
        Ok(model)
    }

    /// Moves the layers' matrices into one arena in huge pages ([`crate::arena`]).
    fn pack(&mut self) {
        let mut walk = |p: &mut Packer| {
            for l in &mut self.layers {
                for w in [&mut l.qkv, &mut l.wo, &mut l.gate_up, &mut l.down] {
                    w.pack(p);
                }
            }
            self.embed.pack(p);
            if let Some(o) = &mut self.output {
                o.pack(p);
            }
        };
        let mut p = Packer::measure();
        walk(&mut p);
        if let Some(mut p) = p.into_placing() {
            walk(&mut p);
            tracing::debug!(bytes = p.finish(), "weights packed");
        }
    }

    /// Opens and loads a GGUF file.
    pub fn open(path: &Path) -> Result<Model, GgufError> {
        Model::load(&Gguf::open(path)?)
    }

    /// The kernel in use.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    fn linears(&self) -> impl Iterator<Item = &Linear> {
        self.layers
            .iter()
            .flat_map(|l| [&l.qkv, &l.wo, &l.gate_up, &l.down])
            .chain(std::iter::once(&self.embed))
            .chain(self.output.as_ref())
    }

    /// Bytes of weights held in memory.
    pub fn weight_bytes(&self) -> usize {
        let norms: usize = self
            .layers
            .iter()
            .map(|l| {
                (l.attn_norm.len() + l.ffn_norm.len() + l.qkv_bias.as_ref().map_or(0, Vec::len)) * 4
                    + [&l.q_norm, &l.k_norm, &l.post_attn_norm, &l.post_ffn_norm]
                        .iter()
                        .map(|n| n.as_ref().map_or(0, Vec::len) * 4)
                        .sum::<usize>()
            })
            .sum();
        norms + self.linears().map(Linear::bytes).sum::<usize>()
    }

    /// The matrices' types as held, each with its bytes (e.g. Q4_K, Q6_K, Q8_0).
    pub fn weight_types(&self) -> BTreeMap<&'static str, usize> {
        let mut out = BTreeMap::new();
        for w in self.linears().flat_map(Linear::parts) {
            *out.entry(w.ty().name()).or_default() += w.bytes();
        }
        out
    }

    /// An empty cache for a new sequence.
    pub fn new_cache(&self) -> KvCache {
        KvCache {
            k: vec![Vec::new(); self.config.layers],
            v: vec![Vec::new(); self.config.layers],
            len: 0,
        }
    }

    fn project(
        &self,
        pool: &rayon::ThreadPool,
        w: &Linear,
        x: &[f32],
        out: &mut [f32],
        tiled: bool,
    ) {
        matmul_linear(pool, self.kernel, w, &Acts::for_linear(x, w), out, tiled);
    }

    /// Runs prompt `tokens` (appended after the cache's positions) through the model and
    /// returns the logits of the last one. Every prompt token, even a single one, goes
    /// through the tiled kernels, so a position's keys and values do not depend on how
    /// the prompt was split into passes.
    pub fn forward(
        &self,
        pool: &rayon::ThreadPool,
        cache: &mut KvCache,
        tokens: &[u32],
    ) -> Result<Vec<f32>, ForwardError> {
        self.pass(pool, cache, tokens, true)
    }

    /// One generated token through the per-token kernels (they read each weight once and
    /// need no unpacking); returns its logits.
    pub fn decode(
        &self,
        pool: &rayon::ThreadPool,
        cache: &mut KvCache,
        token: u32,
    ) -> Result<Vec<f32>, ForwardError> {
        self.pass(pool, cache, &[token], false)
    }

    fn pass(
        &self,
        pool: &rayon::ThreadPool,
        cache: &mut KvCache,
        tokens: &[u32],
        tiled: bool,
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
        let (dim, kv, qd) = (c.dim, c.kv_dim(), c.q_dim());
        let qkv_rows = qd + 2 * kv;
        let mut x = vec![0f32; n * dim];
        for (i, &t) in tokens.iter().enumerate() {
            if t as usize >= c.vocab {
                return Err(ForwardError::BadToken(t));
            }
            self.embed
                .row_f32(t as usize, &mut x[i * dim..(i + 1) * dim]);
        }
        if c.embed_scale {
            let s = (dim as f32).sqrt();
            x.iter_mut().for_each(|v| *v *= s);
        }
        let pos0 = cache.len;
        let piece = rows::piece(pool, n);
        let ffn = c.ffn;
        let mut xn = vec![0f32; n * dim];
        let mut qkv = vec![0f32; n * qkv_rows];
        let mut att = vec![0f32; n * qd];
        let mut proj = vec![0f32; n * dim];
        let mut gu = vec![0f32; n * 2 * ffn];
        let mut h = vec![0f32; n * ffn];
        let last = self.layers.len().saturating_sub(1);
        // The previous layer's output waits in `proj` (with its post-FFN norm, if any) to
        // be added to `x` by the next norm.
        let mut pending: Option<Option<&[f32]>> = None;
        for (li, layer) in self.layers.iter().enumerate() {
            let mut acts = Acts::alloc(&layer.qkv, n);
            let add = pending.map(|w| (&mut proj[..], w));
            self.residual_norm(
                pool,
                piece,
                n,
                &mut x,
                add,
                &layer.attn_norm,
                &mut xn,
                Some(&mut acts),
            );
            matmul_linear(pool, self.kernel, &layer.qkv, &acts, &mut qkv, tiled);
            self.bias_norm_rope(pool, piece, layer, pos0, &mut qkv);
            for row in qkv.chunks_exact(qkv_rows) {
                cache.k[li].extend_from_slice(&row[qd..qd + kv]);
                cache.v[li].extend_from_slice(&row[qd + kv..]);
            }
            // Past the last layer's attention only the last token matters (its logits);
            // the others' keys and values are in the cache. Each token's values do not
            // depend on the others', so the last one's come out the same.
            let m = if li == last { 1 } else { n };
            let first = n - m;
            x.drain(..first * dim);
            let window = if layer.local { c.sliding_window } else { 0 };
            self.attention(
                pool,
                &qkv[first * qkv_rows..],
                &cache.k[li],
                &cache.v[li],
                pos0 + first,
                m,
                window,
                &mut att[..m * qd],
            );
            let acts = self.quantized(pool, piece, &layer.wo, &att[..m * qd]);
            matmul_linear(
                pool,
                self.kernel,
                &layer.wo,
                &acts,
                &mut proj[..m * dim],
                tiled,
            );
            let mut acts = Acts::alloc(&layer.gate_up, m);
            let add = Some((&mut proj[..m * dim], layer.post_attn_norm.as_deref()));
            self.residual_norm(
                pool,
                piece,
                m,
                &mut x,
                add,
                &layer.ffn_norm,
                &mut xn[..m * dim],
                Some(&mut acts),
            );
            let gu = &mut gu[..m * 2 * ffn];
            matmul_linear(pool, self.kernel, &layer.gate_up, &acts, gu, tiled);
            let mut acts = Acts::alloc(&layer.down, m);
            self.gate(pool, piece, gu, &mut h[..m * ffn], &mut acts);
            matmul_linear(
                pool,
                self.kernel,
                &layer.down,
                &acts,
                &mut proj[..m * dim],
                tiled,
            );
            pending = Some(layer.post_ffn_norm.as_deref());
        }
        cache.len += n;
        // `x` now holds the last token only.
        let mut normed = vec![0f32; dim];
        let add = pending.map(|w| (&mut proj[..dim], w));
        self.residual_norm(
            pool,
            piece,
            1,
            &mut x[..dim],
            add,
            &self.out_norm,
            &mut normed,
            None,
        );
        let mut logits = vec![0f32; c.vocab];
        let head = self.output.as_ref().unwrap_or(&self.embed);
        self.project(pool, head, &normed, &mut logits, tiled);
        if c.final_softcap > 0.0 {
            let cap = c.final_softcap;
            logits.iter_mut().for_each(|l| *l = cap * (*l / cap).tanh());
        }
        Ok(logits)
    }

    /// For each of `n` tokens: `x += add` (first RMS-normed by its weight, if any), `out =`
    /// `x` RMS-normed by `norm`, and `out` quantised into `acts`; split over the pool.
    #[allow(clippy::too_many_arguments)]
    fn residual_norm(
        &self,
        pool: &rayon::ThreadPool,
        piece: usize,
        n: usize,
        x: &mut [f32],
        add: Option<(&mut [f32], Option<&[f32]>)>,
        norm: &[f32],
        out: &mut [f32],
        acts: Option<&mut Acts>,
    ) {
        let (dim, eps) = (self.config.dim, self.config.eps);
        let (add, post) = match add {
            Some((a, w)) => (Some(Rows::new(a, dim)), w),
            None => (None, None),
        };
        let bufs = (
            Rows::new(x, dim),
            add,
            Rows::new(out, dim),
            acts.map(Acts::rows),
        );
        let kernel = self.kernel;
        rows::for_tokens(pool, n, piece, bufs, &|_, (x, add, out, acts)| {
            #[cfg(target_arch = "x86_64")]
            if kernel != Kernel::Scalar {
                // SAFETY: the non-scalar kernels exist only where AVX2 and FMA were detected.
                unsafe { residual_norm_rows_avx2(x, add, post, norm, eps, out, acts) };
                return;
            }
            residual_norm_rows(x, add, post, norm, eps, out, acts)
        });
    }

    /// Q/K/V biases, QK-norm and RoPE of each token's `qkv` row; split over the pool.
    fn bias_norm_rope(
        &self,
        pool: &rayon::ThreadPool,
        piece: usize,
        layer: &Layer,
        pos0: usize,
        qkv: &mut [f32],
    ) {
        let c = &self.config;
        let (kv, hd, qd) = (c.kv_dim(), c.head_dim, c.q_dim());
        let qkv_rows = qd + 2 * kv;
        let n = qkv.len() / qkv_rows;
        let inv_freq = if layer.local {
            &self.rope_inv_freq_local
        } else {
            &self.rope_inv_freq
        };
        let task = |t0: usize, rows: Rows<f32>| {
            for (i, row) in rows.data.chunks_exact_mut(qkv_rows).enumerate() {
                if let Some(b) = &layer.qkv_bias {
                    for (v, bv) in row.iter_mut().zip(b) {
                        *v += bv;
                    }
                }
                let pos = (pos0 + t0 + i) as f32;
                let (q, rest) = row.split_at_mut(qd);
                let k = &mut rest[..kv];
                if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                    rmsnorm_inplace(q, qn, c.eps);
                    rmsnorm_inplace(k, kn, c.eps);
                }
                if c.rope_neox {
                    rope_neox(q, hd, pos, inv_freq);
                    rope_neox(k, hd, pos, inv_freq);
                } else {
                    rope(q, hd, pos, inv_freq);
                    rope(k, hd, pos, inv_freq);
                }
            }
        };
        rows::for_tokens(pool, n, piece, Rows::new(qkv, qkv_rows), &task);
    }

    /// `x` (whole vectors of `w.cols`) quantised for `w`; split over the pool.
    fn quantized(&self, pool: &rayon::ThreadPool, piece: usize, w: &Linear, x: &[f32]) -> Acts {
        let n = x.len() / w.cols;
        let mut acts = Acts::alloc(w, n);
        let bufs = (RowsRef::new(x, w.cols), acts.rows());
        rows::for_tokens(pool, n, piece, bufs, &|_, (x, mut a)| a.quantize(x.data));
        acts
    }

    /// `h = act(gate) · up` per token from the stacked `gu`, quantised into `acts`; split
    /// over the pool.
    fn gate(
        &self,
        pool: &rayon::ThreadPool,
        piece: usize,
        gu: &[f32],
        h: &mut [f32],
        acts: &mut Acts,
    ) {
        let (ffn, gelu) = (self.config.ffn, self.config.gelu);
        let n = h.len() / ffn;
        let bufs = (RowsRef::new(gu, 2 * ffn), Rows::new(h, ffn), acts.rows());
        rows::for_tokens(pool, n, piece, bufs, &|_, (gu, h, mut acts)| {
            for (gu, o) in gu
                .data
                .chunks_exact(2 * ffn)
                .zip(h.data.chunks_exact_mut(ffn))
            {
                let (g, u) = gu.split_at(ffn);
                if gelu {
                    crate::glu::gelu_mul(g, u, o);
                } else {
                    crate::glu::silu_mul(g, u, o);
                }
            }
            acts.quantize(h.data);
        });
    }

    /// Causal attention of the `n` new positions over the cache, one task per (token, head);
    /// `window` > 0 limits each position to that many latest positions (itself included).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        pool: &rayon::ThreadPool,
        qkv: &[f32],
        kc: &[f32],
        vc: &[f32],
        pos0: usize,
        n: usize,
        window: usize,
        out: &mut [f32],
    ) {
        let c = &self.config;
        let (kv, hd, qd) = (c.kv_dim(), c.head_dim, c.q_dim());
        let qkv_rows = qd + 2 * kv;
        let group = c.heads / c.kv_heads;
        let (scale, cap) = (c.query_scale, c.attn_softcap);
        let head = |idx: usize, o: &mut [f32]| {
            let (i, hh) = (idx / c.heads, idx % c.heads);
            let q = &qkv[i * qkv_rows + hh * hd..i * qkv_rows + (hh + 1) * hd];
            let kvh = hh / group;
            let upto = pos0 + i + 1;
            let from = if window > 0 {
                upto.saturating_sub(window)
            } else {
                0
            };
            let k = &kc[from * kv..upto * kv];
            let v = &vc[from * kv..upto * kv];
            #[cfg(target_arch = "x86_64")]
            if self.kernel != Kernel::Scalar {
                // SAFETY: the non-scalar kernels exist only where AVX2 and FMA were detected.
                unsafe { attend_avx2(q, k, v, kv, kvh * hd, scale, cap, o) };
                return;
            }
            attend(q, k, v, kv, kvh * hd, scale, cap, o);
        };
        let task = |(idx, o): (usize, &mut [f32])| head(idx, o);
        // Very short sequences are cheaper on this thread than a trip through the pool.
        if n * c.heads * (pos0 + n) < 256 {
            out.chunks_mut(hd).enumerate().for_each(task);
        } else {
            pool.install(|| out.par_chunks_mut(hd).enumerate().for_each(task));
        }
    }
}

/// One query over the keys and values of its positions (rows of `stride` values, this
/// head's at `offset`) into `o`. Plain loops, all inlined, so `attend_avx2` compiles the
/// whole of it for 256-bit registers.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    stride: usize,
    offset: usize,
    scale: f32,
    cap: f32,
    o: &mut [f32],
) {
    let hd = q.len();
    let mut scores = Vec::with_capacity(k.len() / stride);
    for kt in k.chunks_exact(stride) {
        let s = dot_f32(q, &kt[offset..offset + hd]) * scale;
        scores.push(if cap > 0.0 { cap * (s / cap).tanh() } else { s });
    }
    softmax(&mut scores);
    o.fill(0.0);
    for (vt, &p) in v.chunks_exact(stride).zip(&scores) {
        for (ov, &vv) in o.iter_mut().zip(&vt[offset..offset + hd]) {
            *ov += p * vv;
        }
    }
}

/// [`attend`] compiled for AVX2: the same float operations in the same order (Rust fuses
/// no multiply-add by itself), so the same values, in 256-bit registers.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    stride: usize,
    offset: usize,
    scale: f32,
    cap: f32,
    o: &mut [f32],
) {
    attend(q, k, v, stride, offset, scale, cap, o)
}

/// [`residual_norm_rows`] compiled for AVX2, as [`attend_avx2`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn residual_norm_rows_avx2(
    x: Rows<f32>,
    add: Option<Rows<f32>>,
    post: Option<&[f32]>,
    norm: &[f32],
    eps: f32,
    out: Rows<f32>,
    acts: Option<ActsRows>,
) {
    residual_norm_rows(x, add, post, norm, eps, out, acts)
}

/// A dot product with eight independent partial sums, so it vectorises (a single running
/// float sum cannot be reordered by the compiler).
#[inline(always)]
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

#[inline(always)]
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

/// [`Model::residual_norm`] for some tokens' rows.
#[inline(always)]
fn residual_norm_rows(
    x: Rows<f32>,
    add: Option<Rows<f32>>,
    post: Option<&[f32]>,
    norm: &[f32],
    eps: f32,
    out: Rows<f32>,
    acts: Option<ActsRows>,
) {
    if let Some(a) = add {
        if let Some(w) = post {
            rmsnorm_self(a.data, w, eps);
        }
        for (xv, av) in x.data.iter_mut().zip(a.data.iter()) {
            *xv += av;
        }
    }
    rmsnorm(x.data, norm, eps, out.data);
    if let Some(mut acts) = acts {
        acts.quantize(out.data);
    }
}

/// [`rmsnorm`] of `x` into itself, with the same arithmetic.
#[inline(always)]
fn rmsnorm_self(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    for xi in x.chunks_exact_mut(d) {
        let ms = dot_f32(xi, xi) / d as f32;
        let s = 1.0 / (ms + eps).sqrt();
        for (v, &g) in xi.iter_mut().zip(w) {
            *v = *v * s * g;
        }
    }
}

/// RMS-normalises each `w.len()`-wide piece of `x` in place (Gemma's per-head QK-norm).
fn rmsnorm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    for xi in x.chunks_exact_mut(d) {
        let s = 1.0 / (dot_f32(xi, xi) / d as f32 + eps).sqrt();
        for (v, &g) in xi.iter_mut().zip(w) {
            *v *= s * g;
        }
    }
}

/// Rotates element i with element i + head_dim/2 of each head (ggml's NeoX RoPE, which
/// Gemma and Qwen GGUFs use).
fn rope_neox(x: &mut [f32], head_dim: usize, pos: f32, inv_freq: &[f32]) {
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim) {
        let (a, b) = head.split_at_mut(half);
        for ((a, b), &f) in a.iter_mut().zip(b.iter_mut()).zip(inv_freq) {
            let (s, c) = (pos * f).sin_cos();
            let (x0, x1) = (*a, *b);
            *a = x0 * c - x1 * s;
            *b = x0 * s + x1 * c;
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
