//! Weights kept in the file's own block format: Q4_K, Q5_K and Q6_K dotted with Q8_K
//! activations (256 values, one f32 scale and sixteen 16-value sums, as llama.cpp does),
//! and Q5_0 dotted with Q8_0 activations (the 32-wide fallback type K-quant files use for
//! rows that are not a multiple of 256). A portable and an AVX2 version of each; the
//! layouts and arithmetic follow ggml's so results match llama.cpp's closely.

use half::f16;

use crate::kernels::Kernel;

/// Values per K-quant super-block.
pub const QK_K: usize = 256;

/// Bytes of one block of each type (for slicing rows).
pub const Q4_K_BYTES: usize = 144;
/// Bytes of one Q5_K block.
pub const Q5_K_BYTES: usize = 176;
/// Bytes of one Q6_K block.
pub const Q6_K_BYTES: usize = 210;
/// Bytes of one Q5_0 block.
pub const Q5_0_BYTES: usize = 22;

#[inline]
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Activations quantised to Q8_K: per 256 values one f32 scale, 256 int8, and the sums
/// of each 16 quants (the K-quant kernels subtract the mins with them).
#[derive(Debug, Clone, Default)]
pub struct QActsK {
    /// Vector length (a multiple of 256).
    pub cols: usize,
    /// Quants, vector-major.
    pub q: Vec<i8>,
    /// Scales, one per 256 values.
    pub d: Vec<f32>,
    /// Sums of each 16 quants.
    pub bsums: Vec<i16>,
    /// Per 256 values, 16 floats for the tiled (multi-token) kernels: the eight
    /// 32-value sums times the scale, then the scale, then zeros.
    pub psums: Vec<f32>,
}

impl QActsK {
    /// Quantises `x` (`n * cols` values, vector-major; `cols` a multiple of 256) the way
    /// ggml's `quantize_row_q8_K` does: the value of largest magnitude maps to -127.
    pub fn quantize(x: &[f32], cols: usize) -> QActsK {
        let nb = x.len() / QK_K;
        let mut q = vec![0i8; nb * QK_K];
        let mut d = vec![0f32; nb];
        let mut bsums = vec![0i16; nb * 16];
        let mut psums = vec![0f32; nb * 16];
        quantize_q8_k_into(x, &mut q, &mut d, &mut bsums, &mut psums);
        QActsK {
            cols,
            q,
            d,
            bsums,
            psums,
        }
    }

    /// The `v`-th vector's quants, scales and sums.
    #[inline]
    pub fn vector(&self, v: usize) -> (&[i8], &[f32], &[i16]) {
        let nb = self.cols / QK_K;
        (
            &self.q[v * self.cols..(v + 1) * self.cols],
            &self.d[v * nb..(v + 1) * nb],
            &self.bsums[v * nb * 16..(v + 1) * nb * 16],
        )
    }
}

/// [`QActsK::quantize`] into buffers: per 256 values of `x`, 256 quants in `q`, one scale
/// in `d`, 16 sums in `bsums` and 16 floats in `psums` (all written, zeros included).
pub(crate) fn quantize_q8_k_into(
    x: &[f32],
    q: &mut [i8],
    d: &mut [f32],
    bsums: &mut [i16],
    psums: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if Kernel::current() != Kernel::Scalar {
        // SAFETY: the non-scalar kernels exist only where AVX2 and FMA were detected.
        unsafe { quantize_q8_k_avx2(x, q, d, bsums, psums) };
        return;
    }
    quantize_q8_k_blocks(x, q, d, bsums, psums);
}

/// [`quantize_q8_k_blocks`] in AVX2: the same operations on each value, so the same
/// quants, scales and sums (the compiler's version moved values between lanes one by one).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_q8_k_avx2(
    x: &[f32],
    q: &mut [i8],
    d: &mut [f32],
    bsums: &mut [i16],
    psums: &mut [f32],
) {
    use std::arch::x86_64::*;
    let nb = (x.len() / QK_K)
        .min(q.len() / QK_K)
        .min(d.len())
        .min(bsums.len() / 16)
        .min(psums.len() / 16);
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let magic = _mm256_set1_ps(12_582_912.0);
    let top = _mm256_set1_ps(127.0);
    for b in 0..nb {
        let p = x.as_ptr().add(b * QK_K);
        let (mut hi, mut lo) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for i in 0..QK_K / 8 {
            let v = _mm256_loadu_ps(p.add(8 * i));
            hi = _mm256_max_ps(hi, v);
            lo = _mm256_min_ps(lo, v);
        }
        let h = _mm_max_ps(_mm256_castps256_ps128(hi), _mm256_extractf128_ps(hi, 1));
        let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        let hi = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
        let l = _mm_min_ps(_mm256_castps256_ps128(lo), _mm256_extractf128_ps(lo, 1));
        let l = _mm_min_ps(l, _mm_movehl_ps(l, l));
        let lo = _mm_cvtss_f32(_mm_min_ss(l, _mm_movehdup_ps(l)));
        let (amax, max) = if -lo > hi { (-lo, lo) } else { (hi, hi) };
        let qb = &mut q[b * QK_K..(b + 1) * QK_K];
        let bs = &mut bsums[b * 16..(b + 1) * 16];
        let ps = &mut psums[b * 16..(b + 1) * 16];
        if amax == 0.0 {
            d[b] = 0.0;
            zero_q8_k_block(qb, bs, ps);
            continue;
        }
        let iscale = -127.0 / max;
        let is = _mm256_set1_ps(iscale);
        // min(round_nearest(iscale · v), 127): exact integers, converted as they are.
        let r = |i: usize| {
            let v = _mm256_mul_ps(_mm256_loadu_ps(p.add(8 * i)), is);
            _mm256_cvttps_epi32(_mm256_min_ps(
                _mm256_sub_ps(_mm256_add_ps(v, magic), magic),
                top,
            ))
        };
        for g in 0..QK_K / 32 {
            let v = [r(4 * g), r(4 * g + 1), r(4 * g + 2), r(4 * g + 3)];
            for (k, pair) in v.chunks_exact(2).enumerate() {
                let s = _mm256_add_epi32(pair[0], pair[1]);
                let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
                let s = _mm_hadd_epi32(s, s);
                let s = _mm_hadd_epi32(s, s);
                bs[2 * g + k] = _mm_cvtsi128_si32(s) as i16;
            }
            let lo16 = _mm256_packs_epi32(v[0], v[1]);
            let hi16 = _mm256_packs_epi32(v[2], v[3]);
            // The packs interleave 128-bit lanes; put the 4-value groups back in order.
            let packed = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(lo16, hi16), order);
            _mm256_storeu_si256(qb.as_mut_ptr().add(32 * g) as *mut __m256i, packed);
        }
        d[b] = 1.0 / iscale;
        pair_sums(d[b], bs, ps);
    }
}

#[inline(always)]
fn quantize_q8_k_blocks(
    x: &[f32],
    q: &mut [i8],
    d: &mut [f32],
    bsums: &mut [i16],
    psums: &mut [f32],
) {
    for (b, xb) in x.chunks_exact(QK_K).enumerate() {
        // The value of largest magnitude, from lane-wise max and min (vectorises). On a
        // tie between +a and -a this takes +a where ggml takes the first; the products
        // come out the same (the quants and the scale both change sign).
        let (mut hi, mut lo) = ([0f32; 8], [0f32; 8]);
        for c in xb.chunks_exact(8) {
            for ((h, l), &v) in hi.iter_mut().zip(&mut lo).zip(c) {
                *h = h.max(v);
                *l = l.min(v);
            }
        }
        let hi = hi.iter().fold(0f32, |a, &b| a.max(b));
        let lo = lo.iter().fold(0f32, |a, &b| a.min(b));
        let (amax, max) = if -lo > hi { (-lo, lo) } else { (hi, hi) };
        let qb = &mut q[b * QK_K..(b + 1) * QK_K];
        let bs = &mut bsums[b * 16..(b + 1) * 16];
        let ps = &mut psums[b * 16..(b + 1) * 16];
        if amax == 0.0 {
            d[b] = 0.0;
            zero_q8_k_block(qb, bs, ps);
            continue;
        }
        let iscale = -127.0 / max;
        for (o, &v) in qb.iter_mut().zip(xb) {
            *o = crate::kernels::round_nearest(iscale * v).min(127.0) as i32 as i8;
        }
        for (s, g) in bs.iter_mut().zip(qb.chunks_exact(16)) {
            *s = g.iter().map(|&v| i16::from(v)).sum();
        }
        d[b] = 1.0 / iscale;
        pair_sums(d[b], bs, ps);
    }
}

/// A Q8_K block of zeros: no quants and no sums.
#[inline(always)]
fn zero_q8_k_block(q: &mut [i8], bsums: &mut [i16], psums: &mut [f32]) {
    q.fill(0);
    bsums.fill(0);
    psums.fill(0.0);
}

/// The block's 32-value sums times its scale `d`, and the scale after them.
#[inline(always)]
fn pair_sums(d: f32, bsums: &[i16], psums: &mut [f32]) {
    for (j, p) in psums[..8].iter_mut().enumerate() {
        *p = d * f32::from(bsums[2 * j] + bsums[2 * j + 1]);
    }
    psums[8] = d;
    psums[9..].fill(0.0);
}

/// The eight 6-bit scales and eight 6-bit mins of a Q4_K/Q5_K block (ggml's
/// `get_scale_min_k4` for all eight at once).
#[inline]
pub(crate) fn scales_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..8 {
        if j < 4 {
            sc[j] = s[j] & 63;
            m[j] = s[j + 4] & 63;
        } else {
            sc[j] = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
            m[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        }
    }
    (sc, m)
}

/// Dequantises Q4_K blocks.
pub fn dequantize_q4_k(data: &[u8], out: &mut [f32]) {
    for (b, o) in data
        .chunks_exact(Q4_K_BYTES)
        .zip(out.chunks_exact_mut(QK_K))
    {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (sc, m) = scales_mins(&b[4..16]);
        let qs = &b[16..144];
        for j in 0..4 {
            let q = &qs[32 * j..32 * j + 32];
            let (d1, m1) = (d * f32::from(sc[2 * j]), dmin * f32::from(m[2 * j]));
            let (d2, m2) = (d * f32::from(sc[2 * j + 1]), dmin * f32::from(m[2 * j + 1]));
            for l in 0..32 {
                o[64 * j + l] = d1 * f32::from(q[l] & 0x0f) - m1;
                o[64 * j + 32 + l] = d2 * f32::from(q[l] >> 4) - m2;
            }
        }
    }
}

/// Dequantises Q5_K blocks.
pub fn dequantize_q5_k(data: &[u8], out: &mut [f32]) {
    for (b, o) in data
        .chunks_exact(Q5_K_BYTES)
        .zip(out.chunks_exact_mut(QK_K))
    {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (sc, m) = scales_mins(&b[4..16]);
        let qh = &b[16..48];
        let qs = &b[48..176];
        for j in 0..4 {
            let q = &qs[32 * j..32 * j + 32];
            let (d1, m1) = (d * f32::from(sc[2 * j]), dmin * f32::from(m[2 * j]));
            let (d2, m2) = (d * f32::from(sc[2 * j + 1]), dmin * f32::from(m[2 * j + 1]));
            for l in 0..32 {
                let h1 = ((qh[l] >> (2 * j)) & 1) << 4;
                let h2 = ((qh[l] >> (2 * j + 1)) & 1) << 4;
                o[64 * j + l] = d1 * f32::from((q[l] & 0x0f) | h1) - m1;
                o[64 * j + 32 + l] = d2 * f32::from((q[l] >> 4) | h2) - m2;
            }
        }
    }
}

/// The 256 signed 6-bit values of a Q6_K block (before scaling), in element order.
#[inline]
pub(crate) fn q6_k_values(b: &[u8], a: &mut [i8; QK_K]) {
    let (ql, qh) = (&b[0..128], &b[128..192]);
    for n in 0..2 {
        let (ql, qh) = (&ql[64 * n..64 * n + 64], &qh[32 * n..32 * n + 32]);
        let a = &mut a[128 * n..128 * n + 128];
        for l in 0..32 {
            a[l] = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i8 - 32;
            a[l + 32] = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            a[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            a[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
        }
    }
}

/// Dequantises Q6_K blocks.
pub fn dequantize_q6_k(data: &[u8], out: &mut [f32]) {
    let mut a = [0i8; QK_K];
    for (b, o) in data
        .chunks_exact(Q6_K_BYTES)
        .zip(out.chunks_exact_mut(QK_K))
    {
        let d = f16_at(b, 208);
        q6_k_values(b, &mut a);
        for (i, (ov, &q)) in o.iter_mut().zip(&a).enumerate() {
            let sc = b[192 + i / 16] as i8;
            *ov = d * f32::from(sc) * f32::from(q);
        }
    }
}

/// Which kernel a row of each weight type runs with.
impl Kernel {
    /// Q4_K row · Q8_K vector. `w` is the row's blocks, `xq`/`xd`/`bs` the vector's.
    #[inline]
    pub fn dot_q4_k(self, w: &[u8], xq: &[i8], xd: &[f32], bs: &[i16]) -> f32 {
        let nb = xd.len();
        assert!(w.len() >= nb * Q4_K_BYTES && xq.len() >= nb * QK_K && bs.len() >= nb * 16);
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2, FMA and F16C were detected before these variants exist, and
            // the lengths were checked above.
            Kernel::Avx2 | Kernel::Avx512Vnni => unsafe {
                x86::dot_q4_k(w.as_ptr(), xq.as_ptr(), xd.as_ptr(), bs.as_ptr(), nb)
            },
            _ => dot_q4_k_scalar(w, xq, xd, bs),
        }
    }

    /// Q5_K row · Q8_K vector.
    #[inline]
    pub fn dot_q5_k(self, w: &[u8], xq: &[i8], xd: &[f32], bs: &[i16]) -> f32 {
        let nb = xd.len();
        assert!(w.len() >= nb * Q5_K_BYTES && xq.len() >= nb * QK_K && bs.len() >= nb * 16);
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as for dot_q4_k.
            Kernel::Avx2 | Kernel::Avx512Vnni => unsafe {
                x86::dot_q5_k(w.as_ptr(), xq.as_ptr(), xd.as_ptr(), bs.as_ptr(), nb)
            },
            _ => dot_q5_k_scalar(w, xq, xd, bs),
        }
    }

    /// Q6_K row · Q8_K vector (the sums are not needed: Q6_K has no mins).
    #[inline]
    pub fn dot_q6_k(self, w: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
        let nb = xd.len();
        assert!(w.len() >= nb * Q6_K_BYTES && xq.len() >= nb * QK_K);
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as for dot_q4_k.
            Kernel::Avx2 | Kernel::Avx512Vnni => unsafe {
                x86::dot_q6_k(w.as_ptr(), xq.as_ptr(), xd.as_ptr(), nb)
            },
            _ => dot_q6_k_scalar(w, xq, xd),
        }
    }

    /// Q5_0 row · Q8_0 vector (32-value blocks on both sides).
    #[inline]
    pub fn dot_q5_0(self, w: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
        let nb = xd.len();
        assert!(w.len() >= nb * Q5_0_BYTES && xq.len() >= nb * 32);
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as for dot_q4_k.
            Kernel::Avx2 | Kernel::Avx512Vnni => unsafe {
                x86::dot_q5_0(w.as_ptr(), xq.as_ptr(), xd.as_ptr(), nb)
            },
            _ => dot_q5_0_scalar(w, xq, xd),
        }
    }
}

/// Portable Q4_K · Q8_K.
pub fn dot_q4_k_scalar(w: &[u8], xq: &[i8], xd: &[f32], bs: &[i16]) -> f32 {
    let mut sum = 0f32;
    for (i, b) in w.chunks_exact(Q4_K_BYTES).take(xd.len()).enumerate() {
        let (sc, m) = scales_mins(&b[4..16]);
        let y = &xq[i * QK_K..(i + 1) * QK_K];
        let bs = &bs[i * 16..(i + 1) * 16];
        let mins: i32 = (0..8)
            .map(|j| i32::from(m[j]) * (i32::from(bs[2 * j]) + i32::from(bs[2 * j + 1])))
            .sum();
        let mut sumi = 0i32;
        for j in 0..4 {
            let q = &b[16 + 32 * j..16 + 32 * j + 32];
            let (lo, hi) = (&y[64 * j..64 * j + 32], &y[64 * j + 32..64 * j + 64]);
            let s_lo: i32 = q
                .iter()
                .zip(lo)
                .map(|(&a, &c)| i32::from(a & 0x0f) * i32::from(c))
                .sum();
            let s_hi: i32 = q
                .iter()
                .zip(hi)
                .map(|(&a, &c)| i32::from(a >> 4) * i32::from(c))
                .sum();
            sumi += i32::from(sc[2 * j]) * s_lo + i32::from(sc[2 * j + 1]) * s_hi;
        }
        let d = f16_at(b, 0) * xd[i];
        let dmin = f16_at(b, 2) * xd[i];
        sum += d * sumi as f32 - dmin * mins as f32;
    }
    sum
}

/// Portable Q5_K · Q8_K.
pub fn dot_q5_k_scalar(w: &[u8], xq: &[i8], xd: &[f32], bs: &[i16]) -> f32 {
    let mut sum = 0f32;
    for (i, b) in w.chunks_exact(Q5_K_BYTES).take(xd.len()).enumerate() {
        let (sc, m) = scales_mins(&b[4..16]);
        let qh = &b[16..48];
        let y = &xq[i * QK_K..(i + 1) * QK_K];
        let bs = &bs[i * 16..(i + 1) * 16];
        let mins: i32 = (0..8)
            .map(|j| i32::from(m[j]) * (i32::from(bs[2 * j]) + i32::from(bs[2 * j + 1])))
            .sum();
        let mut sumi = 0i32;
        for j in 0..4 {
            let q = &b[48 + 32 * j..48 + 32 * j + 32];
            let (mut s_lo, mut s_hi) = (0i32, 0i32);
            for l in 0..32 {
                let h1 = ((qh[l] >> (2 * j)) & 1) << 4;
                let h2 = ((qh[l] >> (2 * j + 1)) & 1) << 4;
                s_lo += i32::from((q[l] & 0x0f) | h1) * i32::from(y[64 * j + l]);
                s_hi += i32::from((q[l] >> 4) | h2) * i32::from(y[64 * j + 32 + l]);
            }
            sumi += i32::from(sc[2 * j]) * s_lo + i32::from(sc[2 * j + 1]) * s_hi;
        }
        let d = f16_at(b, 0) * xd[i];
        let dmin = f16_at(b, 2) * xd[i];
        sum += d * sumi as f32 - dmin * mins as f32;
    }
    sum
}

/// Portable Q6_K · Q8_K.
pub fn dot_q6_k_scalar(w: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
    let mut sum = 0f32;
    let mut a = [0i8; QK_K];
    for (i, b) in w.chunks_exact(Q6_K_BYTES).take(xd.len()).enumerate() {
        q6_k_values(b, &mut a);
        let y = &xq[i * QK_K..(i + 1) * QK_K];
        let mut sumi = 0i32;
        for g in 0..16 {
            let s: i32 = a[16 * g..16 * g + 16]
                .iter()
                .zip(&y[16 * g..16 * g + 16])
                .map(|(&p, &c)| i32::from(p) * i32::from(c))
                .sum();
            sumi += i32::from(b[192 + g] as i8) * s;
        }
        sum += f16_at(b, 208) * xd[i] * sumi as f32;
    }
    sum
}

/// Portable Q5_0 · Q8_0.
pub fn dot_q5_0_scalar(w: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
    let mut sum = 0f32;
    for (i, b) in w.chunks_exact(Q5_0_BYTES).take(xd.len()).enumerate() {
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let y = &xq[i * 32..(i + 1) * 32];
        let mut s = 0i32;
        for j in 0..16 {
            let q = b[6 + j];
            let lo = i32::from((q & 0x0f) | ((((qh >> j) & 1) as u8) << 4)) - 16;
            let hi = i32::from((q >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4)) - 16;
            s += lo * i32::from(y[j]) + hi * i32::from(y[j + 16]);
        }
        sum += f16_at(b, 0) * xd[i] * s as f32;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    use super::{scales_mins, Q4_K_BYTES, Q5_0_BYTES, Q5_K_BYTES, Q6_K_BYTES, QK_K};

    /// One f16 scale to f32 with the F16C instruction (a call into `half` here would
    /// spill the vector registers every block: it was half the time of the Q5_0 dot).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn f16_at(p: *const u8) -> f32 {
        let bits = u16::from_le_bytes([*p, *p.add(1)]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum(acc: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_extractf128_ps(acc, 1), _mm256_castps256_ps128(acc));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Σ over the block of mins[j] · (bsums[2j] + bsums[2j+1]), as i32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn mins_dot(m: &[u8; 8], bs: *const i16) -> i32 {
        let sums = _mm256_loadu_si256(bs as *const __m256i);
        // Pairwise sums of the sixteen 16-value sums give the eight 32-value sums.
        let pairs = _mm_hadd_epi16(
            _mm256_castsi256_si128(sums),
            _mm256_extracti128_si256(sums, 1),
        );
        let mins = _mm_cvtepu8_epi16(_mm_loadl_epi64(m.as_ptr() as *const __m128i));
        let p = _mm_madd_epi16(mins, pairs);
        let p = _mm_add_epi32(p, _mm_unpackhi_epi64(p, p));
        let p = _mm_add_epi32(p, _mm_shuffle_epi32(p, 1));
        _mm_cvtsi128_si32(p)
    }

    /// Q4_K · Q8_K: per 64 values, low and high nibbles times the activations
    /// (VPMADDUBSW, unsigned × signed), weighted by their 6-bit scales (VPMADDWD).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q4_k(
        w: *const u8,
        xq: *const i8,
        xd: *const f32,
        bs: *const i16,
        nb: usize,
    ) -> f32 {
        let m4 = _mm256_set1_epi8(0x0f);
        let mut acc = _mm256_setzero_ps();
        let mut acc_m = 0f32;
        for i in 0..nb {
            let b = w.add(i * Q4_K_BYTES);
            let y = xq.add(i * QK_K);
            let dy = *xd.add(i);
            let d = f16_at(b) * dy;
            let dmin = f16_at(b.add(2)) * dy;
            let (sc, m) = scales_mins(std::slice::from_raw_parts(b.add(4), 12));
            acc_m += dmin * mins_dot(&m, bs.add(i * 16)) as f32;
            let mut sumi = _mm256_setzero_si256();
            let q = b.add(16);
            for j in 0..4 {
                let bits = _mm256_loadu_si256(q.add(32 * j) as *const __m256i);
                let lo = _mm256_and_si256(bits, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
                let p = scaled_halves(lo, hi, y.add(64 * j), sc[2 * j], sc[2 * j + 1]);
                sumi = _mm256_add_epi32(sumi, p);
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum(acc) - acc_m
    }

    /// Q5_K · Q8_K: as Q4_K with each value's fifth bit from `qh` added as 16.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q5_k(
        w: *const u8,
        xq: *const i8,
        xd: *const f32,
        bs: *const i16,
        nb: usize,
    ) -> f32 {
        let m4 = _mm256_set1_epi8(0x0f);
        let mut acc = _mm256_setzero_ps();
        let mut acc_m = 0f32;
        for i in 0..nb {
            let b = w.add(i * Q5_K_BYTES);
            let y = xq.add(i * QK_K);
            let dy = *xd.add(i);
            let d = f16_at(b) * dy;
            let dmin = f16_at(b.add(2)) * dy;
            let (sc, m) = scales_mins(std::slice::from_raw_parts(b.add(4), 12));
            acc_m += dmin * mins_dot(&m, bs.add(i * 16)) as f32;
            let hbits = _mm256_loadu_si256(b.add(16) as *const __m256i);
            let q = b.add(48);
            let mut sumi = _mm256_setzero_si256();
            for j in 0..4 {
                let bits = _mm256_loadu_si256(q.add(32 * j) as *const __m256i);
                // Bit 2j (low half) and 2j+1 (high half) of each qh byte, moved to bit 4.
                let sh_lo = _mm_cvtsi32_si128(2 * j as i32);
                let sh_hi = _mm_cvtsi32_si128(2 * j as i32 + 1);
                let one = _mm256_set1_epi8(1);
                let h_lo =
                    _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(hbits, sh_lo), one), 4);
                let h_hi =
                    _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(hbits, sh_hi), one), 4);
                let lo = _mm256_or_si256(_mm256_and_si256(bits, m4), h_lo);
                let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bits, 4), m4), h_hi);
                let p = scaled_halves(lo, hi, y.add(64 * j), sc[2 * j], sc[2 * j + 1]);
                sumi = _mm256_add_epi32(sumi, p);
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum(acc) - acc_m
    }

    /// Q6_K · Q8_K: 6-bit values (0..63) times the activations, minus 32 × the
    /// activations, weighted by the signed 8-bit scale of each 16 values.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q6_k(w: *const u8, xq: *const i8, xd: *const f32, nb: usize) -> f32 {
        let m4 = _mm256_set1_epi8(0x0f);
        let m2 = _mm256_set1_epi8(3);
        let m32 = _mm256_set1_epi8(32);
        let mut acc = _mm256_setzero_ps();
        for i in 0..nb {
            let b = w.add(i * Q6_K_BYTES);
            let d = f16_at(b.add(208)) * *xd.add(i);
            let scales = b.add(192) as *const i8;
            let mut y = xq.add(i * QK_K);
            let mut ql = b;
            let mut qh = b.add(128);
            let mut sumi = _mm256_setzero_si256();
            for n in 0..2 {
                let bits1 = _mm256_loadu_si256(ql as *const __m256i);
                let bits2 = _mm256_loadu_si256(ql.add(32) as *const __m256i);
                let hb = _mm256_loadu_si256(qh as *const __m256i);
                let h0 = _mm256_slli_epi16(_mm256_and_si256(hb, m2), 4);
                let h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m2), 4);
                let h2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m2), 4);
                let h3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m2), 4);
                let q = [
                    _mm256_or_si256(_mm256_and_si256(bits1, m4), h0),
                    _mm256_or_si256(_mm256_and_si256(bits2, m4), h1),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bits1, 4), m4), h2),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bits2, 4), m4), h3),
                ];
                for (k, &qk) in q.iter().enumerate() {
                    let yk = _mm256_loadu_si256(y.add(32 * k) as *const __m256i);
                    let p = _mm256_sub_epi16(
                        _mm256_maddubs_epi16(qk, yk),
                        _mm256_maddubs_epi16(m32, yk),
                    );
                    // Scales 8n+2k and 8n+2k+1 cover this 32's two halves of 16.
                    let s0 = i16::from(*scales.add(8 * n + 2 * k));
                    let s1 = i16::from(*scales.add(8 * n + 2 * k + 1));
                    let sc = _mm256_set_m128i(_mm_set1_epi16(s1), _mm_set1_epi16(s0));
                    sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(sc, p));
                }
                ql = ql.add(64);
                qh = qh.add(32);
                y = y.add(128);
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum(acc)
    }

    /// Q5_0 · Q8_0: the nibbles with their fifth bit, as signed bytes (value - 16), then
    /// the sign trick and VPMADDUBSW/VPMADDWD as for Q8_0.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q5_0(w: *const u8, xq: *const i8, xd: *const f32, nb: usize) -> f32 {
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        for i in 0..nb {
            let b = w.add(i * Q5_0_BYTES);
            let qx = q5_0_values(b);
            let y = _mm256_loadu_si256(xq.add(i * 32) as *const __m256i);
            let p = _mm256_madd_epi16(
                _mm256_maddubs_epi16(_mm256_sign_epi8(qx, qx), _mm256_sign_epi8(y, qx)),
                ones,
            );
            let d = _mm256_set1_ps(f16_at(b) * *xd.add(i));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), d, acc);
        }
        hsum(acc)
    }

    /// Q4_K/Q5_K: 32 unsigned values `lo` times the 32 activations at `y`, scaled by
    /// `sc_lo`, plus `hi` times the next 32, scaled by `sc_hi`, as int32 lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn scaled_halves(
        lo: __m256i,
        hi: __m256i,
        y: *const i8,
        sc_lo: u8,
        sc_hi: u8,
    ) -> __m256i {
        let ylo = _mm256_loadu_si256(y as *const __m256i);
        let yhi = _mm256_loadu_si256(y.add(32) as *const __m256i);
        let plo = _mm256_madd_epi16(
            _mm256_set1_epi16(i16::from(sc_lo)),
            _mm256_maddubs_epi16(lo, ylo),
        );
        let phi = _mm256_madd_epi16(
            _mm256_set1_epi16(i16::from(sc_hi)),
            _mm256_maddubs_epi16(hi, yhi),
        );
        _mm256_add_epi32(plo, phi)
    }

    /// The 32 values of the Q5_0 block at `b` as signed bytes (value - 16).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn q5_0_values(b: *const u8) -> __m256i {
        let m4 = _mm256_set1_epi8(0x0f);
        let shuf = _mm256_set_epi64x(
            0x0303030303030303,
            0x0202020202020202,
            0x0101010101010101,
            0x0000000000000000,
        );
        let bitmask = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
        let f0 = _mm256_set1_epi8(0xf0u8 as i8);
        let qh = i32::from_le_bytes([*b.add(2), *b.add(3), *b.add(4), *b.add(5)]);
        let nib = _mm_loadu_si128(b.add(6) as *const __m128i);
        let qx = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(nib, 4), nib), m4);
        // Byte k is all ones when bit k of qh is set; where it is not, OR-ing 0xF0 makes
        // the nibble v into the signed byte v - 16.
        let high = _mm256_cmpeq_epi8(
            _mm256_or_si256(_mm256_shuffle_epi8(_mm256_set1_epi32(qh), shuf), bitmask),
            _mm256_set1_epi64x(-1),
        );
        _mm256_or_si256(qx, _mm256_andnot_si256(high, f0))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::kernels::QActs;
    use crate::quant::{dequantize, GgmlType};

    /// Random blocks of `ty` with small, sane f16 scales (random bytes elsewhere).
    pub(crate) fn random_blocks(ty: GgmlType, nb: usize, rng: &mut StdRng) -> Vec<u8> {
        let bytes = ty.block().1 as usize;
        let mut out = vec![0u8; nb * bytes];
        rng.fill(&mut out[..]);
        let put = |b: &mut [u8], at: usize, v: f32| {
            b[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
        };
        for b in out.chunks_exact_mut(bytes) {
            match ty {
                GgmlType::Q4_K | GgmlType::Q5_K => {
                    put(b, 0, rng.random_range(0.001..0.02));
                    put(b, 2, rng.random_range(0.001..0.02));
                }
                GgmlType::Q6_K => put(b, 208, rng.random_range(-0.01..0.01)),
                _ => put(b, 0, rng.random_range(-0.05..0.05)),
            }
        }
        out
    }

    fn random_vec(n: usize, rng: &mut StdRng) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect()
    }

    /// Dequantise both sides and dot in f64: the sum, and the sum of the terms' magnitudes
    /// (which bounds the rounding error of any order of summation).
    fn reference(ty: GgmlType, w: &[u8], xq: &[i8], xd: &[f32], block: usize) -> (f64, f64) {
        let mut wf = vec![0f32; xq.len()];
        assert!(dequantize(ty, w, &mut wf), "{ty:?} dequantises");
        wf.iter()
            .zip(xq)
            .enumerate()
            .map(|(i, (&a, &q))| f64::from(a) * f64::from(q) * f64::from(xd[i / block]))
            .fold((0.0, 0.0), |(s, m), t| (s + t, m + t.abs()))
    }

    fn kernels() -> Vec<Kernel> {
        let mut k = vec![Kernel::Scalar];
        if Kernel::best() != Kernel::Scalar {
            k.push(Kernel::Avx2);
        }
        k
    }

    fn close(got: f32, want: f64, mag: f64, what: &str) {
        let tol = 1e-5 * mag.max(1.0);
        assert!(
            (f64::from(got) - want).abs() <= tol,
            "{what}: {got} vs reference {want} (tolerance {tol})"
        );
    }

    #[test]
    fn k_quant_dots_match_the_dequantised_reference() {
        let mut rng = StdRng::seed_from_u64(19);
        for ty in [GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
            for nb in [1usize, 3, 8] {
                for _ in 0..8 {
                    let w = random_blocks(ty, nb, &mut rng);
                    let x = QActsK::quantize(&random_vec(nb * QK_K, &mut rng), nb * QK_K);
                    let (xq, xd, bs) = x.vector(0);
                    let (want, mag) = reference(ty, &w, xq, xd, QK_K);
                    for k in kernels() {
                        let got = match ty {
                            GgmlType::Q4_K => k.dot_q4_k(&w, xq, xd, bs),
                            GgmlType::Q5_K => k.dot_q5_k(&w, xq, xd, bs),
                            _ => k.dot_q6_k(&w, xq, xd),
                        };
                        close(got, want, mag, &format!("{ty:?} {k:?} nb={nb}"));
                    }
                }
            }
        }
    }

    #[test]
    fn q5_0_dot_matches_the_dequantised_reference() {
        let mut rng = StdRng::seed_from_u64(5);
        for nb in [1usize, 7, 20] {
            for _ in 0..8 {
                let w = random_blocks(GgmlType::Q5_0, nb, &mut rng);
                let x = QActs::quantize(&random_vec(nb * 32, &mut rng), nb * 32);
                let (want, mag) = reference(GgmlType::Q5_0, &w, &x.q, &x.d, 32);
                for k in kernels() {
                    let got = k.dot_q5_0(&w, &x.q, &x.d);
                    close(got, want, mag, &format!("Q5_0 {k:?} nb={nb}"));
                }
            }
        }
    }

    #[test]
    fn q8_k_quantisation_keeps_sums_and_values() {
        let mut rng = StdRng::seed_from_u64(8);
        let x = random_vec(2 * QK_K, &mut rng);
        let a = QActsK::quantize(&x, QK_K);
        for v in 0..2 {
            let (q, d, bs) = a.vector(v);
            for (g, &s) in bs.iter().enumerate() {
                let want: i16 = q[16 * g..16 * g + 16].iter().map(|&v| i16::from(v)).sum();
                assert_eq!(s, want);
            }
            for (j, &qv) in q.iter().enumerate() {
                let back = f32::from(qv) * d[0];
                assert!((back - x[v * QK_K + j]).abs() <= d[0].abs() * 0.51 + 1e-6);
            }
        }
        let zero = QActsK::quantize(&[0.0; QK_K], QK_K);
        assert_eq!(zero.d, vec![0.0]);
    }

    /// The AVX2 Q8_K quantising gives the portable loop's quants, scales and sums, bit for
    /// bit (a zero block, a block whose largest magnitude is negative, ties).
    #[test]
    fn q8_k_quantising_is_the_same_in_every_kernel() {
        let mut rng = StdRng::seed_from_u64(11);
        let mut x = random_vec(6 * QK_K, &mut rng);
        x[..QK_K].fill(0.0);
        x[QK_K + 7] = -40.0;
        x[2 * QK_K..3 * QK_K]
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = (i % 17) as f32 * 0.5 - 4.0);
        let n = x.len() / QK_K;
        let fresh = || {
            (
                vec![3i8; n * QK_K],
                vec![3f32; n],
                vec![3i16; n * 16],
                vec![3f32; n * 16],
            )
        };
        let (mut q, mut d, mut bs, mut ps) = fresh();
        let (mut q2, mut d2, mut bs2, mut ps2) = fresh();
        quantize_q8_k_into(&x, &mut q, &mut d, &mut bs, &mut ps);
        quantize_q8_k_blocks(&x, &mut q2, &mut d2, &mut bs2, &mut ps2);
        assert_eq!(q, q2);
        assert_eq!(bs, bs2);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&d), bits(&d2));
        assert_eq!(bits(&ps), bits(&ps2));
    }
}
