//! The hot loops: Q8_0 weight rows dotted with Q8-quantised activations (int8 × int8 with
//! one f32 scale per 32 values on each side, as llama.cpp does), with an AVX-512 VNNI path,
//! an AVX2 path and a portable one, chosen once at run time; and [`Linear`] /
//! [`matmul_linear`], which run each weight row with its own type's kernel (the K-quant
//! and Q5_0 ones are in [`crate::kquants`]).

use std::sync::OnceLock;

use rayon::prelude::*;

use crate::arena::{Buf, Packer};
use crate::kquants::{QActsK, QK_K};
use crate::quant::{dequantize, quantize_block_q8, GgmlType, QK};
use crate::rows::{Rows, Split};

/// A Q8_0 matrix in the engine's layout: int8 quants row-major, and one f32 scale per
/// 32-value block (row-major too). Separate arrays keep the SIMD loads aligned to blocks.
#[derive(Debug, Clone, Default)]
pub struct QMatrix {
    /// Output size.
    pub rows: usize,
    /// Input size (a multiple of 32).
    pub cols: usize,
    /// `rows * cols` quants.
    pub q: Buf<i8>,
    /// `rows * cols / 32` scales.
    pub d: Buf<f32>,
}

impl QMatrix {
    /// Quantises a row-major f32 matrix.
    pub fn from_f32(rows: usize, cols: usize, x: &[f32]) -> QMatrix {
        debug_assert_eq!(x.len(), rows * cols);
        let mut q = vec![0i8; rows * cols];
        let mut d = vec![0f32; rows * cols / QK];
        for ((xb, qb), db) in x.chunks_exact(QK).zip(q.chunks_exact_mut(QK)).zip(&mut d) {
            *db = quantize_block_q8(xb, qb);
        }
        QMatrix {
            rows,
            cols,
            q: q.into(),
            d: d.into(),
        }
    }

    /// From GGUF Q8_0 blocks (f16 scale + 32 int8 each), without requantising. The quants
    /// are moved down inside `data` itself, so a large matrix (Gemma 3's 262k-row
    /// embeddings, 178 MB) is never held twice while loading.
    pub fn from_q8_0_blocks(rows: usize, cols: usize, mut data: Vec<u8>) -> QMatrix {
        let nb = (rows * cols / QK).min(data.len() / 34);
        let mut d = Vec::with_capacity(nb);
        for b in 0..nb {
            let at = b * 34;
            d.push(half::f16::from_le_bytes([data[at], data[at + 1]]).to_f32());
            data.copy_within(at + 2..at + 34, b * QK);
        }
        data.truncate(nb * QK);
        // A large buffer is its own mapping, which glibc shrinks with mremap (no copy).
        data.shrink_to_fit();
        let mut data = std::mem::ManuallyDrop::new(data);
        // SAFETY: u8 and i8 have the same size and alignment, and the allocation's
        // pointer, length and capacity pass unchanged to the new Vec, which owns it.
        let q = unsafe {
            Vec::from_raw_parts(data.as_mut_ptr().cast::<i8>(), data.len(), data.capacity())
        };
        QMatrix {
            rows,
            cols,
            q: q.into(),
            d: d.into(),
        }
    }

    /// Stacks matrices with the same `cols` (e.g. Q, K and V into one QKV projection).
    pub fn concat(parts: &[QMatrix]) -> QMatrix {
        let cols = parts.first().map(|p| p.cols).unwrap_or(0);
        let mut out = QMatrix {
            rows: 0,
            cols,
            q: Buf::default(),
            d: Buf::default(),
        };
        for p in parts {
            debug_assert_eq!(p.cols, cols);
            out.rows += p.rows;
            out.q.extend_from_slice(&p.q);
            out.d.extend_from_slice(&p.d);
        }
        out
    }

    /// One row, dequantised (embedding lookup).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        let q = &self.q[r * self.cols..(r + 1) * self.cols];
        let d = &self.d[r * self.cols / QK..(r + 1) * self.cols / QK];
        for ((o, qb), &db) in out.chunks_exact_mut(QK).zip(q.chunks_exact(QK)).zip(d) {
            for (ov, &qv) in o.iter_mut().zip(qb) {
                *ov = f32::from(qv) * db;
            }
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.q.len() + self.d.len() * 4
    }
}

/// Activations quantised to Q8 blocks: `n` vectors of `cols` values.
#[derive(Debug, Clone, Default)]
pub struct QActs {
    /// Vector length.
    pub cols: usize,
    /// Quants, vector-major.
    pub q: Vec<i8>,
    /// Scales, one per block.
    pub d: Vec<f32>,
}

impl QActs {
    /// Quantises `x` (`n * cols` values, vector-major).
    pub fn quantize(x: &[f32], cols: usize) -> QActs {
        let mut q = vec![0i8; x.len()];
        let mut d = vec![0f32; x.len() / QK];
        quantize_q8_into(x, &mut q, &mut d);
        QActs { cols, q, d }
    }

    /// Number of vectors.
    pub fn n(&self) -> usize {
        self.q.len().checked_div(self.cols).unwrap_or(0)
    }
}

/// Quantises `x` into Q8_0 blocks: `q` as long as `x`, one scale in `d` per 32 values.
pub(crate) fn quantize_q8_into(x: &[f32], q: &mut [i8], d: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if Kernel::current() != Kernel::Scalar {
        // SAFETY: the non-scalar kernels exist only where AVX2 and FMA were detected.
        unsafe { quantize_q8_avx2(x, q, d) };
        return;
    }
    quantize_q8_blocks(x, q, d);
}

#[inline(always)]
fn quantize_q8_blocks(x: &[f32], q: &mut [i8], d: &mut [f32]) {
    for ((xb, qb), db) in x.chunks_exact(QK).zip(q.chunks_exact_mut(QK)).zip(d) {
        *db = quantize_acts_q8(xb, qb);
    }
}

/// [`quantize_q8_blocks`] in AVX2 (as ggml's `quantize_row_q8_0`): the same operations
/// on each value, so the same quants and scales; the compiler's version of the loop
/// moved values between lanes one at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_q8_avx2(x: &[f32], q: &mut [i8], d: &mut [f32]) {
    use std::arch::x86_64::*;
    let nb = (x.len() / QK).min(q.len() / QK);
    let sign = _mm256_set1_ps(-0.0);
    let magic = _mm256_set1_ps(12_582_912.0);
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (b, db) in d.iter_mut().enumerate().take(nb) {
        let p = x.as_ptr().add(b * QK);
        let v = [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ];
        let a = _mm256_max_ps(
            _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
            _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
        );
        let m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        *db = amax / 127.0;
        let id = _mm256_set1_ps(if *db != 0.0 { 1.0 / *db } else { 0.0 });
        // round_nearest(x · id), exact integers, so truncating converts them as they are.
        let r = |v: __m256| {
            _mm256_cvttps_epi32(_mm256_sub_ps(
                _mm256_add_ps(_mm256_mul_ps(v, id), magic),
                magic,
            ))
        };
        let lo = _mm256_packs_epi32(r(v[0]), r(v[1]));
        let hi = _mm256_packs_epi32(r(v[2]), r(v[3]));
        // The packs interleave 128-bit lanes; put the 4-value groups back in order.
        let packed = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(lo, hi), order);
        _mm256_storeu_si256(q.as_mut_ptr().add(b * QK) as *mut __m256i, packed);
    }
}

/// Rounds to nearest, ties to even, for |v| < 2^22: adding and removing 1.5 · 2^23 leaves
/// the float's mantissa no fraction bits. `round_ties_even`/`round` are libm calls on
/// baseline x86-64 (no SSE4.1), a tenth of prompt time; this vectorises.
#[inline(always)]
pub(crate) fn round_nearest(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// Quantises one block of 32 activations to Q8_0 (scale max|x| / 127), rounding to
/// nearest even as llama.cpp's SIMD `quantize_row_q8_0` does. Returns the scale.
#[inline(always)]
fn quantize_acts_q8(x: &[f32], q: &mut [i8]) -> f32 {
    let mut m = [0f32; 8];
    for c in x.chunks_exact(8) {
        for (mi, &v) in m.iter_mut().zip(c) {
            *mi = mi.max(v.abs());
        }
    }
    let amax = m.iter().fold(0f32, |a, &b| a.max(b));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (qi, &xi) in q.iter_mut().zip(x) {
        // |xi · id| <= 127: the i32 conversion vectorises, the saturating i8 one did not.
        *qi = round_nearest(xi * id) as i32 as i8;
    }
    d
}

/// Which dot-product implementation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512 BW + VNNI (64 int8 products per instruction).
    Avx512Vnni,
    /// AVX2 + FMA (+ F16C).
    Avx2,
    /// Portable Rust.
    Scalar,
}

impl Kernel {
    /// The best one this CPU runs, unless `CODA_LLM_KERNEL` (`scalar`, `avx2`, `avx512`)
    /// asks for a slower one (benchmarks and tests).
    pub fn detect() -> Kernel {
        let best = Kernel::best();
        match std::env::var("CODA_LLM_KERNEL").as_deref() {
            Ok("scalar") => Kernel::Scalar,
            Ok("avx2") if best != Kernel::Scalar => Kernel::Avx2,
            _ => best,
        }
    }

    /// The fastest kernel this CPU supports.
    pub fn best() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                return Kernel::Avx512Vnni;
            }
            // F16C converts the K-quant and Q5_0 blocks' f16 scales (every AVX2 CPU has it).
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                return Kernel::Avx2;
            }
        }
        Kernel::Scalar
    }

    /// The kernel used by this process (detected once).
    pub fn current() -> Kernel {
        static K: OnceLock<Kernel> = OnceLock::new();
        *K.get_or_init(Kernel::detect)
    }

    /// Σ over blocks of wd·xd·(wq·xq) for one row: `wq`/`xq` are `nb * 32` long, `wd`/`xd`
    /// `nb` long. The caller guarantees the lengths (checked in debug builds).
    #[inline]
    pub fn dot(self, wq: &[i8], wd: &[f32], xq: &[i8], xd: &[f32]) -> f32 {
        let nb = wd.len();
        debug_assert!(wq.len() >= nb * QK && xq.len() >= nb * QK && xd.len() >= nb);
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: this variant is only constructed after the CPU features were detected,
            // and the slices hold nb blocks (asserted above in debug builds, guaranteed by
            // the callers' shapes).
            Kernel::Avx512Vnni => unsafe {
                x86::dot_avx512(wq.as_ptr(), wd.as_ptr(), xq.as_ptr(), xd.as_ptr(), nb)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above, AVX2 and FMA were detected.
            Kernel::Avx2 => unsafe {
                x86::dot_avx2(wq.as_ptr(), wd.as_ptr(), xq.as_ptr(), xd.as_ptr(), nb)
            },
            _ => dot_scalar(wq, wd, xq, xd),
        }
    }
}

/// The portable dot product.
pub fn dot_scalar(wq: &[i8], wd: &[f32], xq: &[i8], xd: &[f32]) -> f32 {
    let mut sum = 0f32;
    for (b, (&dw, &dx)) in wd.iter().zip(xd).enumerate() {
        let w = &wq[b * QK..(b + 1) * QK];
        let x = &xq[b * QK..(b + 1) * QK];
        let s: i32 = w
            .iter()
            .zip(x)
            .map(|(&a, &c)| i32::from(a) * i32::from(c))
            .sum();
        sum += dw * dx * s as f32;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Two blocks per 512-bit step: |x| (u8) · (w with x's sign) (i8) summed in groups of 4
    /// by VPDPBUSD, then each half scaled by its blocks' scales.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,avx512dq,avx2,fma")]
    pub unsafe fn dot_avx512(
        wq: *const i8,
        wd: *const f32,
        xq: *const i8,
        xd: *const f32,
        nb: usize,
    ) -> f32 {
        let zero = _mm512_setzero_si512();
        let mut acc0 = _mm512_setzero_ps();
        let mut acc1 = _mm512_setzero_ps();
        let mut b = 0;
        while b + 4 <= nb {
            let w0 = _mm512_loadu_si512(wq.add(b * 32) as *const _);
            let x0 = _mm512_loadu_si512(xq.add(b * 32) as *const _);
            let w1 = _mm512_loadu_si512(wq.add(b * 32 + 64) as *const _);
            let x1 = _mm512_loadu_si512(xq.add(b * 32 + 64) as *const _);
            let s0 = _mm512_dpbusd_epi32(
                zero,
                _mm512_abs_epi8(x0),
                _mm512_mask_sub_epi8(w0, _mm512_movepi8_mask(x0), zero, w0),
            );
            let s1 = _mm512_dpbusd_epi32(
                zero,
                _mm512_abs_epi8(x1),
                _mm512_mask_sub_epi8(w1, _mm512_movepi8_mask(x1), zero, w1),
            );
            let d0 = _mm512_insertf32x8(
                _mm512_set1_ps(*wd.add(b) * *xd.add(b)),
                _mm256_set1_ps(*wd.add(b + 1) * *xd.add(b + 1)),
                1,
            );
            let d1 = _mm512_insertf32x8(
                _mm512_set1_ps(*wd.add(b + 2) * *xd.add(b + 2)),
                _mm256_set1_ps(*wd.add(b + 3) * *xd.add(b + 3)),
                1,
            );
            acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0), d0, acc0);
            acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1), d1, acc1);
            b += 4;
        }
        while b + 2 <= nb {
            let w0 = _mm512_loadu_si512(wq.add(b * 32) as *const _);
            let x0 = _mm512_loadu_si512(xq.add(b * 32) as *const _);
            let s0 = _mm512_dpbusd_epi32(
                zero,
                _mm512_abs_epi8(x0),
                _mm512_mask_sub_epi8(w0, _mm512_movepi8_mask(x0), zero, w0),
            );
            let d0 = _mm512_insertf32x8(
                _mm512_set1_ps(*wd.add(b) * *xd.add(b)),
                _mm256_set1_ps(*wd.add(b + 1) * *xd.add(b + 1)),
                1,
            );
            acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0), d0, acc0);
            b += 2;
        }
        let mut sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
        if b < nb {
            sum += dot_avx2(wq.add(b * 32), wd.add(b), xq.add(b * 32), xd.add(b), nb - b);
        }
        sum
    }

    /// One block per 256-bit step: sign trick, VPMADDUBSW then VPMADDWD to int32.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_avx2(
        wq: *const i8,
        wd: *const f32,
        xq: *const i8,
        xd: *const f32,
        nb: usize,
    ) -> f32 {
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        for b in 0..nb {
            let w = _mm256_loadu_si256(wq.add(b * 32) as *const __m256i);
            let x = _mm256_loadu_si256(xq.add(b * 32) as *const __m256i);
            let ax = _mm256_sign_epi8(x, x);
            let sw = _mm256_sign_epi8(w, x);
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sw), ones);
            let d = _mm256_set1_ps(*wd.add(b) * *xd.add(b));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), d, acc);
        }
        let hi = _mm256_extractf128_ps(acc, 1);
        let lo = _mm256_castps256_ps128(acc);
        let s = _mm_add_ps(hi, lo);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}

/// A raw pointer that may cross threads: each worker writes a disjoint set of elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: used only in `matmul`, where every (vector, row) element is written by exactly
// one task and the buffer outlives the parallel loop.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Taking `self` makes closures capture the whole (Send) wrapper, not the raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// How `rows` are split over the pool: chunks and rows per chunk. A few chunks per thread
/// balance a core that another process is also using.
fn row_chunks(rows: usize, pool: &rayon::ThreadPool) -> (usize, usize) {
    let threads = pool.current_num_threads().max(1);
    let chunks = if rows >= 64 * threads {
        threads * 4
    } else {
        threads
    };
    (chunks, rows.div_ceil(chunks))
}

/// `out[v][r] = W[r] · x[v]` for every activation vector `v` and row `r`, rows split across
/// the pool's threads. `out` is `x.n() * w.rows` long.
pub fn matmul(pool: &rayon::ThreadPool, kernel: Kernel, w: &QMatrix, x: &QActs, out: &mut [f32]) {
    let n = x.n();
    assert_eq!(w.cols, x.cols, "matmul shape mismatch");
    assert_eq!(out.len(), n * w.rows, "matmul output size");
    let nb = w.cols / QK;
    let (chunks, per) = row_chunks(w.rows, pool);
    let ptr = OutPtr(out.as_mut_ptr());
    let rows = w.rows;
    pool.install(|| {
        (0..chunks).into_par_iter().for_each(|c| {
            let start = c * per;
            let end = ((c + 1) * per).min(rows);
            for r in start..end {
                let wq = &w.q[r * w.cols..(r + 1) * w.cols];
                let wd = &w.d[r * nb..(r + 1) * nb];
                for v in 0..n {
                    let xq = &x.q[v * x.cols..(v + 1) * x.cols];
                    let xd = &x.d[v * nb..(v + 1) * nb];
                    let y = kernel.dot(wq, wd, xq, xd);
                    // SAFETY: v < n and r < rows, so the index is inside `out`; each
                    // (v, r) is written by this task only.
                    unsafe { *ptr.get().add(v * rows + r) = y };
                }
            }
        });
    });
}

/// One weight matrix in the form the kernels read: Q8_0 in the split layout above, or
/// the file's own blocks (Q5_0, Q4_K, Q5_K, Q6_K) row-major as stored.
#[derive(Debug, Clone)]
pub enum Weight {
    /// Q8_0 (also what other formats are converted to at load).
    Q8(QMatrix),
    /// Blocks of a type with its own kernel.
    Blocks {
        /// `Q5_0`, `Q4_K`, `Q5_K` or `Q6_K`.
        ty: GgmlType,
        /// Output size.
        rows: usize,
        /// Input size (a multiple of the type's block).
        cols: usize,
        /// `rows * row_bytes` bytes.
        data: Buf<u8>,
    },
}

impl Weight {
    /// Output size.
    pub fn rows(&self) -> usize {
        match self {
            Weight::Q8(m) => m.rows,
            Weight::Blocks { rows, .. } => *rows,
        }
    }

    /// Input size.
    pub fn cols(&self) -> usize {
        match self {
            Weight::Q8(m) => m.cols,
            Weight::Blocks { cols, .. } => *cols,
        }
    }

    /// Hands its buffers to `p` (see [`crate::arena`]).
    pub fn pack(&mut self, p: &mut Packer) {
        match self {
            Weight::Q8(m) => {
                p.visit(&mut m.q);
                p.visit(&mut m.d);
            }
            Weight::Blocks { data, .. } => p.visit(data),
        }
    }

    /// The element type held.
    pub fn ty(&self) -> GgmlType {
        match self {
            Weight::Q8(_) => GgmlType::Q8_0,
            Weight::Blocks { ty, .. } => *ty,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            Weight::Q8(m) => m.bytes(),
            Weight::Blocks { data, .. } => data.len(),
        }
    }

    /// One row, dequantised (embedding lookup).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        match self {
            Weight::Q8(m) => m.row_f32(r, out),
            Weight::Blocks { ty, data, cols, .. } => {
                let rb = ty.byte_size(*cols as u64) as usize;
                // The shape was checked at load, so the row's bytes match `out`.
                let ok = dequantize(*ty, &data[r * rb..(r + 1) * rb], out);
                debug_assert!(ok);
            }
        }
    }
}

/// A projection: one or more weight matrices with the same input size whose outputs are
/// stacked (Q, K and V; gate and up). Parts of one type are merged, so a file whose
/// parts share a type runs one matrix.
#[derive(Debug, Clone)]
pub struct Linear {
    parts: Vec<Weight>,
    /// First output row of each part.
    starts: Vec<usize>,
    /// Total output size.
    pub rows: usize,
    /// Input size.
    pub cols: usize,
}

impl Linear {
    /// Stacks `parts` (same `cols`, checked by the loader).
    pub fn new(parts: Vec<Weight>) -> Linear {
        let mut merged: Vec<Weight> = Vec::with_capacity(parts.len());
        for p in parts {
            match (merged.last_mut(), p) {
                (Some(Weight::Q8(a)), Weight::Q8(b)) => *a = QMatrix::concat(&[a.clone(), b]),
                (
                    Some(Weight::Blocks { ty, rows, data, .. }),
                    Weight::Blocks {
                        ty: t2,
                        rows: r2,
                        data: d2,
                        ..
                    },
                ) if *ty == t2 => {
                    *rows += r2;
                    data.extend_from_slice(&d2);
                }
                (_, p) => merged.push(p),
            }
        }
        let cols = merged.first().map_or(0, Weight::cols);
        let mut starts = Vec::with_capacity(merged.len());
        let mut rows = 0;
        for p in &merged {
            starts.push(rows);
            rows += p.rows();
        }
        Linear {
            parts: merged,
            starts,
            rows,
            cols,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.parts.iter().map(Weight::bytes).sum()
    }

    /// Hands its matrices' buffers to `p` (see [`crate::arena`]).
    pub fn pack(&mut self, p: &mut Packer) {
        self.parts.iter_mut().for_each(|w| w.pack(p));
    }

    /// The matrices held (one per type run).
    pub fn parts(&self) -> &[Weight] {
        &self.parts
    }

    /// One row, dequantised.
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        let p = self.starts.partition_point(|&s| s <= r) - 1;
        self.parts[p].row_f32(r - self.starts[p], out);
    }

    fn needs_q8_0(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p.ty(), GgmlType::Q8_0 | GgmlType::Q5_0))
    }

    fn needs_q8_k(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p.ty(), GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K))
    }
}

/// Activations quantised in every form a [`Linear`] needs: Q8_0 (for Q8_0 and Q5_0
/// weights) and Q8_K (for K-quant weights).
#[derive(Debug, Clone, Default)]
pub struct Acts {
    pub(crate) q8: Option<QActs>,
    pub(crate) q8k: Option<QActsK>,
    pub(crate) n: usize,
}

impl Acts {
    /// Quantises `x` (`n * w.cols` values) for `w`.
    pub fn for_linear(x: &[f32], w: &Linear) -> Acts {
        let mut a = Acts::alloc(w, x.len().checked_div(w.cols).unwrap_or(0));
        a.rows().quantize(x);
        a
    }

    /// Room for `n` vectors quantised for `w`, filled through [`Acts::rows`].
    pub(crate) fn alloc(w: &Linear, n: usize) -> Acts {
        let cols = w.cols;
        let len = n * cols;
        Acts {
            q8: w.needs_q8_0().then(|| QActs {
                cols,
                q: vec![0; len],
                d: vec![0.0; len / QK],
            }),
            q8k: w.needs_q8_k().then(|| QActsK {
                cols,
                q: vec![0; len],
                d: vec![0.0; len / QK_K],
                bsums: vec![0; len / QK_K * 16],
                psums: vec![0.0; len / QK_K * 16],
            }),
            n,
        }
    }

    /// The buffers, to be split by tokens and filled by [`ActsRows::quantize`].
    pub(crate) fn rows(&mut self) -> ActsRows<'_> {
        ActsRows {
            q8: self.q8.as_mut().map(|a| {
                let nb = a.cols / QK;
                (Rows::new(&mut a.q, a.cols), Rows::new(&mut a.d, nb))
            }),
            q8k: self.q8k.as_mut().map(|a| {
                let nb = a.cols / QK_K;
                (
                    Rows::new(&mut a.q, a.cols),
                    Rows::new(&mut a.d, nb),
                    Rows::new(&mut a.bsums, nb * 16),
                    Rows::new(&mut a.psums, nb * 16),
                )
            }),
        }
    }
}

/// Some tokens' rows of an [`Acts`].
pub(crate) struct ActsRows<'a> {
    q8: Option<(Rows<'a, i8>, Rows<'a, f32>)>,
    q8k: Option<ActsKRows<'a>>,
}

type ActsKRows<'a> = (Rows<'a, i8>, Rows<'a, f32>, Rows<'a, i16>, Rows<'a, f32>);

impl Split for ActsRows<'_> {
    fn split(self, tokens: usize) -> (Self, Self) {
        let (a8, b8) = self.q8.split(tokens);
        let (ak, bk) = self.q8k.split(tokens);
        (ActsRows { q8: a8, q8k: ak }, ActsRows { q8: b8, q8k: bk })
    }
}

impl ActsRows<'_> {
    /// Quantises `x`, these rows' tokens, in every form held.
    pub(crate) fn quantize(&mut self, x: &[f32]) {
        if let Some((q, d)) = &mut self.q8 {
            quantize_q8_into(x, q.data, d.data);
        }
        if let Some((q, d, bsums, psums)) = &mut self.q8k {
            crate::kquants::quantize_q8_k_into(x, q.data, d.data, bsums.data, psums.data);
        }
    }
}

impl Kernel {
    /// Row `r` of `w` dotted with vector `v` of `x`.
    #[inline]
    pub(crate) fn dot_weight(self, w: &Weight, r: usize, x: &Acts, v: usize) -> f32 {
        match w {
            // `Acts::for_linear` quantised every form the Linear's parts need, so the
            // `else` arms are unreachable for activations made for this matrix.
            Weight::Q8(m) => {
                let nb = m.cols / QK;
                let Some(a) = &x.q8 else { return 0.0 };
                self.dot(
                    &m.q[r * m.cols..(r + 1) * m.cols],
                    &m.d[r * nb..(r + 1) * nb],
                    &a.q[v * a.cols..(v + 1) * a.cols],
                    &a.d[v * nb..(v + 1) * nb],
                )
            }
            Weight::Blocks { ty, cols, data, .. } => {
                let rb = ty.byte_size(*cols as u64) as usize;
                let row = &data[r * rb..(r + 1) * rb];
                match ty {
                    GgmlType::Q5_0 => {
                        let Some(a) = &x.q8 else { return 0.0 };
                        let nb = cols / QK;
                        self.dot_q5_0(
                            row,
                            &a.q[v * a.cols..(v + 1) * a.cols],
                            &a.d[v * nb..(v + 1) * nb],
                        )
                    }
                    _ => {
                        let Some(a) = &x.q8k else { return 0.0 };
                        let (xq, xd, bs) = a.vector(v);
                        match ty {
                            GgmlType::Q4_K => self.dot_q4_k(row, xq, xd, bs),
                            GgmlType::Q5_K => self.dot_q5_k(row, xq, xd, bs),
                            _ => self.dot_q6_k(row, xq, xd),
                        }
                    }
                }
            }
        }
    }
}

/// `out[v][r] = W[r] · x[v]` for a [`Linear`], rows split across the pool's threads as in
/// [`matmul`]; each row runs its part's kernel, the tiled one when `tiled` (prompts) and the
/// CPU has it. The two sum in different orders: one position must always take the same
/// path, or its keys and values (and an answer) would depend on how it was computed.
pub fn matmul_linear(
    pool: &rayon::ThreadPool,
    kernel: Kernel,
    w: &Linear,
    x: &Acts,
    out: &mut [f32],
    tiled: bool,
) {
    let n = x.n;
    assert_eq!(out.len(), n * w.rows, "matmul output size");
    let (chunks, per) = row_chunks(w.rows, pool);
    let ptr = OutPtr(out.as_mut_ptr());
    let rows = w.rows;
    let run = |c: usize| {
        let start = c * per;
        let end = ((c + 1) * per).min(rows);
        let mut r = start;
        while r < end {
            let p = w.starts.partition_point(|&s| s <= r) - 1;
            let part = &w.parts[p];
            let part_end = (w.starts[p] + part.rows()).min(end);
            let base = w.starts[p];
            // Prompt tokens: unpack each weight row once for all of them.
            if tiled
                && crate::tiled::run(
                    kernel,
                    part,
                    r - base..part_end - base,
                    x,
                    &mut |lr, v0, ys| {
                        for (v, &y) in (v0..).zip(ys) {
                            // SAFETY: as below; the tile reports rows of this chunk and
                            // tokens below n only.
                            unsafe { *ptr.get().add(v * rows + base + lr) = y }
                        }
                    },
                )
            {
                r = part_end;
                continue;
            }
            for rr in r..part_end {
                let local = rr - w.starts[p];
                for v in 0..n {
                    let y = kernel.dot_weight(part, local, x, v);
                    // SAFETY: v < n and rr < rows, so the index is inside `out`; each
                    // (v, rr) is written by this task only.
                    unsafe { *ptr.get().add(v * rows + rr) = y };
                }
            }
            r = part_end;
        }
    };
    if pool.current_num_threads() <= 1 {
        // One thread: run here. A trip through the pool wakes its worker and puts this
        // thread to sleep, twice per projection, a sixth of a decode step on small models.
        (0..chunks).for_each(run);
    } else {
        pool.install(|| (0..chunks).into_par_iter().for_each(run));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((s >> 8) as f32 / (1u32 << 24) as f32) - 0.5
            })
            .collect()
    }

    #[test]
    fn every_kernel_matches_scalar() {
        // 9, 24 and 3 blocks: exercises the 4-, 2- and 1-block tails of the SIMD paths.
        for cols in [288usize, 768, 96] {
            let w = QMatrix::from_f32(5, cols, &data(5 * cols, 1));
            let x = QActs::quantize(&data(cols, 2), cols);
            let nb = cols / QK;
            for r in 0..5 {
                let wq = &w.q[r * cols..(r + 1) * cols];
                let wd = &w.d[r * nb..(r + 1) * nb];
                let want = dot_scalar(wq, wd, &x.q, &x.d);
                for k in [Kernel::best(), Kernel::Avx2, Kernel::Scalar] {
                    if k == Kernel::Avx2 && Kernel::best() == Kernel::Scalar {
                        continue;
                    }
                    let got = k.dot(wq, wd, &x.q, &x.d);
                    assert!(
                        (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                        "{k:?}: {got} vs {want}"
                    );
                }
            }
        }
    }

    /// The AVX2 activation quantising gives the portable loop's quants and scales, bit for
    /// bit (zero blocks, ties and full-scale values included).
    #[test]
    fn q8_activation_quantising_is_the_same_in_every_kernel() {
        let mut x = data(32 * 40, 9);
        x[..32].fill(0.0);
        x[32..64]
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = i as f32 * 0.5 - 8.0);
        x[64] = 1e-30;
        let (mut q, mut d) = (vec![0i8; x.len()], vec![0f32; x.len() / QK]);
        let (mut q2, mut d2) = (vec![1i8; x.len()], vec![1f32; x.len() / QK]);
        quantize_q8_into(&x, &mut q, &mut d);
        quantize_q8_blocks(&x, &mut q2, &mut d2);
        assert_eq!(q, q2);
        assert!(d.iter().zip(&d2).all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    /// Blocks read from a file become the same quants and scales ggml's own dequantiser
    /// gives (the quants are moved inside the read buffer).
    #[test]
    fn q8_0_blocks_are_read_in_place_as_ggml_lays_them_out() {
        let (rows, cols) = (3, 96);
        let mut raw = Vec::new();
        for (b, q) in data(rows * cols, 6).chunks_exact(QK).enumerate() {
            raw.extend_from_slice(&half::f16::from_f32(0.01 * (b + 1) as f32).to_le_bytes());
            raw.extend(q.iter().map(|v| (v * 250.0) as i8 as u8));
        }
        let mut want = vec![0f32; rows * cols];
        assert!(dequantize(GgmlType::Q8_0, &raw, &mut want));
        let m = QMatrix::from_q8_0_blocks(rows, cols, raw);
        assert_eq!((m.q.len(), m.d.len()), (rows * cols, rows * cols / QK));
        let mut got = vec![0f32; cols];
        for r in 0..rows {
            m.row_f32(r, &mut got);
            assert_eq!(got, want[r * cols..(r + 1) * cols]);
        }
    }

    #[test]
    fn matmul_matches_f32_reference() {
        let (rows, cols, n) = (70, 128, 3);
        let wf = data(rows * cols, 3);
        let xf = data(n * cols, 4);
        let w = QMatrix::from_f32(rows, cols, &wf);
        let x = QActs::quantize(&xf, cols);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("pool");
        let mut out = vec![0f32; n * rows];
        matmul(&pool, Kernel::current(), &w, &x, &mut out);
        for v in 0..n {
            for r in 0..rows {
                let want: f32 = (0..cols).map(|c| wf[r * cols + c] * xf[v * cols + c]).sum();
                let got = out[v * rows + r];
                assert!((got - want).abs() < 0.05, "({v},{r}): {got} vs {want}");
            }
        }
    }
}
