//! Requantisation at import: matrices in a type the engine has no kernel for
//! (Q4_0/Q4_1/Q5_1/F16/BF16/F32) are rewritten as Q8_0 and vectors as F32, keeping every
//! metadata key (tokenizer and chat template included). Matrices in a type with its own
//! kernel (Q8_0, Q5_0, Q4_K, Q5_K, Q6_K) stay as they are, unless everything is asked to
//! become Q8_0 ([`Requant::AllQ8_0`], `coda models import --requantize q8_0`).

use std::path::Path;

use crate::gguf::{self, Gguf, GgufError, TensorSpec, Value};
use crate::quant::{dequantize, quantize_q8_0, GgmlType, QK};

/// `general.file_type` for "mostly Q8_0" (llama.cpp's LLAMA_FTYPE_MOSTLY_Q8_0).
const FILE_TYPE_Q8_0: u32 = 7;

/// What a conversion did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequantReport {
    /// Tensors rewritten to Q8_0.
    pub requantized: usize,
    /// Tensors converted to F32.
    pub to_f32: usize,
    /// Tensors copied as they were.
    pub copied: usize,
    /// The types of the matrices rewritten as Q8_0 (e.g. `Q4_1`, `Q5_0/Q4_K/Q6_K`).
    pub from: Option<String>,
}

/// Which matrices become Q8_0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requant {
    /// Only those in a type the engine has no kernel for.
    Needed,
    /// Every matrix (the engine's behaviour before it kept K-quants).
    AllQ8_0,
}

/// Does `g` need rewriting for the engine under `mode`?
pub fn needs_requant(g: &Gguf, mode: Requant) -> bool {
    g.tensors
        .iter()
        .any(|t| target(t.ty, &t.dims, mode) != t.ty)
}

/// The first tensor in a type nothing here can read, as an error naming it.
pub fn check_types(g: &Gguf) -> Result<(), GgufError> {
    match g.tensors.iter().find(|t| !t.ty.readable()) {
        Some(t) => Err(GgufError::UnsupportedType {
            path: g.path.clone(),
            tensor: t.name.clone(),
            ty: t.ty.name().to_string(),
        }),
        None => Ok(()),
    }
}

fn target(ty: GgmlType, dims: &[u64], mode: Requant) -> GgmlType {
    let row = dims.first().copied().unwrap_or(0);
    if dims.len() >= 2 && row.is_multiple_of(QK as u64) {
        if mode == Requant::Needed && ty.native() && row.is_multiple_of(ty.block_elems()) {
            ty
        } else {
            GgmlType::Q8_0
        }
    } else if ty == GgmlType::Q8_0 && dims.len() >= 2 {
        ty
    } else {
        GgmlType::F32
    }
}

/// Rewrites `src` to `dst` with the matrices `mode` names as Q8_0. `progress(done,
/// total)` is called with source bytes processed.
pub fn requantize(
    src: &Path,
    dst: &Path,
    mode: Requant,
    mut progress: impl FnMut(u64, u64),
) -> Result<RequantReport, GgufError> {
    let g = Gguf::open(src)?;
    let mut file = g.open_data()?;
    let mut report = RequantReport {
        requantized: 0,
        to_f32: 0,
        copied: 0,
        from: None,
    };
    let specs: Vec<TensorSpec> = g
        .tensors
        .iter()
        .map(|t| {
            if !t.ty.readable() {
                return Err(GgufError::UnsupportedType {
                    path: g.path.clone(),
                    tensor: t.name.clone(),
                    ty: t.ty.name().to_string(),
                });
            }
            Ok(TensorSpec {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ty: target(t.ty, &t.dims, mode),
            })
        })
        .collect::<Result<_, _>>()?;
    let mut from: Vec<&str> = Vec::new();
    for (t, s) in g.tensors.iter().zip(&specs) {
        if s.ty == GgmlType::Q8_0 && t.ty != GgmlType::Q8_0 && !from.contains(&t.ty.name()) {
            from.push(t.ty.name());
        }
    }
    report.from = (!from.is_empty()).then(|| from.join("/"));
    let mut metadata = g.metadata.clone();
    if specs
        .iter()
        .all(|s| s.ty == GgmlType::Q8_0 || s.dims.len() < 2)
    {
        metadata.insert("general.file_type".into(), Value::U32(FILE_TYPE_Q8_0));
    }
    if let Some(from) = &report.from {
        metadata.insert("coda.requantized_from".into(), Value::String(from.clone()));
    }
    let total: u64 = g.tensors.iter().map(|t| t.byte_size()).sum();
    let mut done = 0u64;
    gguf::write(dst, &metadata, &specs, |i| {
        let (t, s) = (&g.tensors[i], &specs[i]);
        let raw = g.read_raw(&mut file, t)?;
        done += raw.len() as u64;
        progress(done, total);
        if s.ty == t.ty {
            report.copied += 1;
            return Ok(raw);
        }
        let mut f = vec![0f32; t.elements() as usize];
        if !dequantize(t.ty, &raw, &mut f) {
            return Err(GgufError::Corrupt {
                path: g.path.clone(),
                what: format!("tensor `{}` has the wrong size", t.name),
            });
        }
        Ok(if s.ty == GgmlType::Q8_0 {
            report.requantized += 1;
            quantize_q8_0(&f)
        } else {
            report.to_f32 += 1;
            f.iter().flat_map(|v| v.to_le_bytes()).collect()
        })
    })?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use half::f16;

    use super::*;
    use crate::gguf::ValueType;

    /// Q4_1 blocks for `rows × 32` values v[i] = (i % 16) * 0.25 - 1.0.
    fn q4_1_rows(rows: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..rows {
            out.extend_from_slice(&f16::from_f32(0.25).to_le_bytes());
            out.extend_from_slice(&f16::from_f32(-1.0).to_le_bytes());
            for j in 0..16u8 {
                out.push(j | (j << 4));
            }
        }
        out
    }

    #[test]
    fn q4_1_file_becomes_q8_0_with_metadata_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src.gguf");
        let dst = dir.path().join("dst.gguf");
        let mut meta = BTreeMap::new();
        meta.insert("general.architecture".into(), Value::String("llama".into()));
        meta.insert(
            "tokenizer.ggml.tokens".into(),
            Value::Array(
                ValueType::String,
                vec![Value::String("a".into()), Value::String("b".into())],
            ),
        );
        meta.insert("llama.rope.freq_base".into(), Value::F32(100000.0));
        meta.insert("x.flag".into(), Value::Bool(true));
        let specs = vec![
            TensorSpec {
                name: "w".into(),
                dims: vec![32, 3],
                ty: GgmlType::Q4_1,
            },
            TensorSpec {
                name: "norm".into(),
                dims: vec![5],
                ty: GgmlType::F32,
            },
        ];
        let norm: Vec<u8> = (0..5).flat_map(|i| (i as f32).to_le_bytes()).collect();
        gguf::write(&src, &meta, &specs, |i| {
            Ok(if i == 0 { q4_1_rows(3) } else { norm.clone() })
        })
        .expect("write");
        let g = Gguf::open(&src).expect("reads back");
        assert!(needs_requant(&g, Requant::Needed));
        assert_eq!(g.metadata, meta);

        let report = requantize(&src, &dst, Requant::Needed, |_, _| {}).expect("requantises");
        assert_eq!(report.requantized, 1);
        assert_eq!(report.copied, 1);
        assert_eq!(report.from.as_deref(), Some("Q4_1"));
        let out = Gguf::open(&dst).expect("output reads");
        assert!(!needs_requant(&out, Requant::Needed));
        assert!(!needs_requant(&out, Requant::AllQ8_0));
        assert_eq!(
            out.get("coda.requantized_from"),
            Some(&Value::String("Q4_1".into()))
        );
        assert_eq!(
            out.get("tokenizer.ggml.tokens"),
            meta.get("tokenizer.ggml.tokens")
        );
        let w = out.tensor("w").expect("w");
        assert_eq!(w.ty, GgmlType::Q8_0);
        let mut f = out.open_data().expect("open");
        let raw = out.read_raw(&mut f, w).expect("raw");
        let mut vals = vec![0f32; 96];
        assert!(dequantize(GgmlType::Q8_0, &raw, &mut vals));
        for (i, v) in vals.iter().enumerate() {
            let want = ((i % 32) % 16) as f32 * 0.25 - 1.0;
            assert!((v - want).abs() < 0.02, "{i}: {v} vs {want}");
        }
        let n = out.tensor("norm").expect("norm");
        assert_eq!(out.read_raw(&mut f, n).expect("raw"), norm);
    }

    #[test]
    fn k_quants_are_kept_unless_everything_is_asked_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src.gguf");
        let mut meta = BTreeMap::new();
        meta.insert("general.architecture".into(), Value::String("llama".into()));
        let specs = vec![
            TensorSpec {
                name: "k".into(),
                dims: vec![256, 2],
                ty: GgmlType::Q4_K,
            },
            TensorSpec {
                name: "w".into(),
                dims: vec![32, 3],
                ty: GgmlType::Q4_1,
            },
        ];
        // Two Q4_K blocks: d = 0.5, dmin = 0, every scale 1, nibbles 0..15.
        let mut k = Vec::new();
        for _ in 0..2 {
            k.extend_from_slice(&f16::from_f32(0.5).to_le_bytes());
            k.extend_from_slice(&f16::from_f32(0.0).to_le_bytes());
            k.extend_from_slice(&[1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1]);
            k.extend((0..128u32).map(|i| (i % 16) as u8 | (((i + 1) % 16) as u8) << 4));
        }
        gguf::write(&src, &meta, &specs, |i| {
            Ok(if i == 0 { k.clone() } else { q4_1_rows(3) })
        })
        .expect("write");
        let g = Gguf::open(&src).expect("reads");
        let mut want = vec![0f32; 512];
        assert!(dequantize(GgmlType::Q4_K, &k, &mut want));

        let kept = dir.path().join("kept.gguf");
        let r = requantize(&src, &kept, Requant::Needed, |_, _| {}).expect("requantises");
        assert_eq!(r.from.as_deref(), Some("Q4_1"));
        let out = Gguf::open(&kept).expect("reads");
        assert_eq!(out.tensor("k").map(|t| t.ty), Some(GgmlType::Q4_K));
        assert_eq!(out.tensor("w").map(|t| t.ty), Some(GgmlType::Q8_0));
        assert!(needs_requant(&g, Requant::Needed));
        assert!(!needs_requant(&out, Requant::Needed));

        let all = dir.path().join("all.gguf");
        let r = requantize(&src, &all, Requant::AllQ8_0, |_, _| {}).expect("requantises");
        assert_eq!(r.from.as_deref(), Some("Q4_K/Q4_1"));
        let out = Gguf::open(&all).expect("reads");
        let t = out.tensor("k").expect("k");
        assert_eq!(t.ty, GgmlType::Q8_0);
        let mut f = out.open_data().expect("open");
        let mut got = vec![0f32; 512];
        assert!(dequantize(
            GgmlType::Q8_0,
            &out.read_raw(&mut f, t).expect("raw"),
            &mut got
        ));
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 0.04, "{a} vs {b}");
        }
    }
}
