//! Prompt processing: weight rows times several tokens at once. A tile of rows is unpacked
//! once (Q5_0 and the K-quants to int8 values with their scales; Q8_0 is read as is) and
//! each of its blocks is dotted with a tile of tokens' quantised activations, with one
//! accumulator register per (row, token) and a single horizontal sum per output. The
//! per-token kernels re-unpack every weight block for every token and sum each dot
//! horizontally, which made prompts several times slower than llama.cpp.
//!
//! AVX-512 VNNI: the activations are offset to unsigned (x + 128, VPDPBUSD multiplies
//! u8 × i8) and the offset's contribution, 128 · Σw, is taken back per block. AVX2: the
//! sign trick of the per-token kernels. Other CPUs use the per-token kernels.

use crate::kernels::{Acts, Kernel, Weight};
use crate::kquants::{
    f16_at, q6_k_values, scales_mins, QActsK, Q4_K_BYTES, Q5_0_BYTES, Q5_K_BYTES, Q6_K_BYTES, QK_K,
};
use crate::quant::{GgmlType, QK};

/// Weight rows unpacked for the K-quant tile kernel: int8 values in element order, one
/// f32 scale per 4 values (VPDPBUSD/VPMADDWD lane), and per 256 values 16 floats dotted
/// with [`QActsK::psums`]: the mins (negated, times `dmin`), then the offset correction,
/// then zeros.
#[derive(Default)]
struct KRows {
    q: Vec<i8>,
    ws: Vec<f32>,
    extra: Vec<f32>,
}

/// Q5_0 rows unpacked to Q8_0 form (int8 values, one f32 scale per 32).
#[derive(Default)]
struct Q8Rows {
    q: Vec<i8>,
    d: Vec<f32>,
}

fn unpack_q5_0(kernel: Kernel, row: &[u8], q: &mut [i8], d: &mut [f32]) {
    let nb = d.len();
    assert!(row.len() >= nb * Q5_0_BYTES && q.len() >= nb * QK);
    #[cfg(target_arch = "x86_64")]
    if kernel != Kernel::Scalar {
        // SAFETY: AVX2 and F16C were detected before these variants exist; the lengths
        // were checked above.
        unsafe { x86::unpack_q5_0(row.as_ptr(), q.as_mut_ptr(), d.as_mut_ptr(), nb) };
        return;
    }
    for ((b, q), d) in row
        .chunks_exact(Q5_0_BYTES)
        .zip(q.chunks_exact_mut(QK))
        .zip(d.iter_mut())
    {
        *d = f16_at(b, 0);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        for j in 0..16 {
            let v = b[6 + j];
            let h0 = (((qh >> j) << 4) & 0x10) as u8;
            let h1 = ((qh >> (j + 12)) & 0x10) as u8;
            q[j] = ((v & 0x0f) | h0) as i8 - 16;
            q[j + 16] = ((v >> 4) | h1) as i8 - 16;
        }
    }
}

/// The offset correction of one 256-value block: Σ over lanes of scale × (-128 · Σ values).
fn correction(q: &[i8], ws: &[f32]) -> f32 {
    q.chunks_exact(4)
        .zip(ws)
        .map(|(l, &s)| s * (-128 * l.iter().map(|&v| i32::from(v)).sum::<i32>()) as f32)
        .sum()
}

/// Unpacks one K-quant row (`nb` blocks) into `q` (256 per block), `ws` (64 per block) and
/// `extra` (16 per block).
fn unpack_k(
    kernel: Kernel,
    ty: GgmlType,
    row: &[u8],
    q: &mut [i8],
    ws: &mut [f32],
    extra: &mut [f32],
) {
    let bytes = match ty {
        GgmlType::Q4_K => Q4_K_BYTES,
        GgmlType::Q5_K => Q5_K_BYTES,
        _ => Q6_K_BYTES,
    };
    let nb = extra.len() / 16;
    assert!(row.len() >= nb * bytes && q.len() >= nb * QK_K && ws.len() >= nb * QK_K / 4);
    #[cfg(target_arch = "x86_64")]
    if kernel != Kernel::Scalar {
        for i in 0..nb {
            let ex = &mut extra[i * 16..(i + 1) * 16];
            ex.fill(0.0);
            if ty != GgmlType::Q6_K {
                let (sc, m) = scales_mins(&row[i * bytes + 4..i * bytes + 16]);
                let (d, dmin) = (f16_at(row, i * bytes), f16_at(row, i * bytes + 2));
                for (g, w) in ws[i * 64..(i + 1) * 64].chunks_exact_mut(8).enumerate() {
                    w.fill(d * f32::from(sc[g]));
                }
                for (e, &mv) in ex[..8].iter_mut().zip(&m) {
                    *e = -dmin * f32::from(mv);
                }
            } else {
                let b = &row[i * bytes..(i + 1) * bytes];
                let d = f16_at(b, 208);
                for (g, w) in ws[i * 64..(i + 1) * 64].chunks_exact_mut(4).enumerate() {
                    w.fill(d * f32::from(b[192 + g] as i8));
                }
            }
            // SAFETY: AVX2 was detected before these variants exist; block `i` of the row,
            // its 256 values and 64 scales are in bounds (asserted above).
            ex[8] = unsafe {
                x86::unpack_k_values(
                    ty,
                    row.as_ptr().add(i * bytes),
                    q.as_mut_ptr().add(i * QK_K),
                    ws.as_ptr().add(i * 64),
                )
            };
        }
        return;
    }
    for (((b, q), ws), ex) in row
        .chunks_exact(bytes)
        .zip(q.chunks_exact_mut(QK_K))
        .zip(ws.chunks_exact_mut(QK_K / 4))
        .zip(extra.chunks_exact_mut(16))
    {
        ex.fill(0.0);
        if ty == GgmlType::Q6_K {
            let mut a = [0i8; QK_K];
            q6_k_values(b, &mut a);
            q.copy_from_slice(&a);
            let d = f16_at(b, 208);
            for (g, w) in ws.chunks_exact_mut(4).enumerate() {
                w.fill(d * f32::from(b[192 + g] as i8));
            }
        } else {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let (sc, m) = scales_mins(&b[4..16]);
            let (qs, qh) = if ty == GgmlType::Q4_K {
                (&b[16..144], None)
            } else {
                (&b[48..176], Some(&b[16..48]))
            };
            for j in 0..4 {
                let src = &qs[32 * j..32 * j + 32];
                let (lo, hi) = q[64 * j..64 * j + 64].split_at_mut(32);
                for l in 0..32 {
                    let (h1, h2) = match qh {
                        Some(h) => (
                            ((h[l] >> (2 * j)) & 1) << 4,
                            ((h[l] >> (2 * j + 1)) & 1) << 4,
                        ),
                        None => (0, 0),
                    };
                    lo[l] = ((src[l] & 0x0f) | h1) as i8;
                    hi[l] = ((src[l] >> 4) | h2) as i8;
                }
            }
            for (g, w) in ws.chunks_exact_mut(8).enumerate() {
                w.fill(d * f32::from(sc[g]));
            }
            for (e, &mv) in ex[..8].iter_mut().zip(&m) {
                *e = -dmin * f32::from(mv);
            }
        }
        ex[8] = correction(q, ws);
    }
}

/// Hands on a tile's results: first and end token, then the (row, token) values.
type Emit<'a, const R: usize, const T: usize> = dyn FnMut(usize, usize, &[[f32; T]; R]) + 'a;

/// Writes one row's results for consecutive tokens: local row, first token, values.
pub(crate) type Store<'a> = dyn FnMut(usize, usize, &[f32]) + 'a;

/// `store(r, v0, [W[r] · x[v0], …])` for the local rows `rows` of `w` and every token of `x`, or
/// `false` (nothing done) when this kernel has no tiled path for it.
pub(crate) fn run(
    kernel: Kernel,
    w: &Weight,
    rows: std::ops::Range<usize>,
    x: &Acts,
    store: &mut Store<'_>,
) -> bool {
    match kernel {
        // One token (the last layer's feed-forward, the output head): no padded tile.
        // Q8_0 weights in tiles of 8 tokens: each row's offset sums are shared by more
        // tokens (SmolLM2's prompt +1 to +6 %). Unpacked Q5_0 and K-quant rows keep 4
        // (8 cost Gemma 3 4 to 7 %). Each (row, token) sums the same way in every shape.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => match (w, x.n) {
            (_, 1) => run_with::<3, 1>(kernel, w, rows, x, store),
            (Weight::Q8(_), n) if n >= 8 => run_with::<3, 8>(kernel, w, rows, x, store),
            _ => run_with::<3, 4>(kernel, w, rows, x, store),
        },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => match x.n {
            1 => run_with::<2, 1>(kernel, w, rows, x, store),
            _ => run_with::<2, 4>(kernel, w, rows, x, store),
        },
        _ => false,
    }
}

/// Row and token indices of a tile: `start..end` padded to `N` by repeating the last one
/// (the padded results are computed and dropped).
fn padded<const N: usize>(start: usize, end: usize) -> [usize; N] {
    std::array::from_fn(|i| (start + i).min(end - 1))
}

fn run_with<const R: usize, const T: usize>(
    kernel: Kernel,
    w: &Weight,
    rows: std::ops::Range<usize>,
    x: &Acts,
    store: &mut Store<'_>,
) -> bool {
    let n = x.n;
    let cols = w.cols();
    let mut res = [[0f32; T]; R];
    let mut emit = |r0: usize, r1: usize, t0: usize, t1: usize, res: &[[f32; T]; R]| {
        for (i, rr) in res.iter().enumerate().take(r1 - r0) {
            store(r0 + i, t0, &rr[..t1 - t0]);
        }
    };
    match w {
        Weight::Q8(m) => {
            let Some(a) = &x.q8 else { return false };
            let nb = cols / QK;
            let mut r0 = rows.start;
            while r0 < rows.end {
                let r1 = (r0 + R).min(rows.end);
                let ri = padded::<R>(r0, r1);
                let wq = ri.map(|r| m.q[r * cols..].as_ptr());
                let wd = ri.map(|r| m.d[r * nb..].as_ptr());
                tokens_q8::<R, T>(kernel, wq, wd, a, nb, n, &mut res, &mut |t0, t1, res| {
                    emit(r0, r1, t0, t1, res)
                });
                r0 = r1;
            }
        }
        Weight::Blocks { ty, data, .. } => {
            let rb = ty.byte_size(cols as u64) as usize;
            match ty {
                GgmlType::Q5_0 => {
                    let Some(a) = &x.q8 else { return false };
                    let nb = cols / QK;
                    let mut buf = Q8Rows {
                        q: vec![0; R * cols],
                        d: vec![0.0; R * nb],
                    };
                    let mut r0 = rows.start;
                    while r0 < rows.end {
                        let r1 = (r0 + R).min(rows.end);
                        for (i, r) in (r0..r1).enumerate() {
                            unpack_q5_0(
                                kernel,
                                &data[r * rb..(r + 1) * rb],
                                &mut buf.q[i * cols..(i + 1) * cols],
                                &mut buf.d[i * nb..(i + 1) * nb],
                            );
                        }
                        let li = padded::<R>(0, r1 - r0);
                        let wq = li.map(|i| buf.q[i * cols..].as_ptr());
                        let wd = li.map(|i| buf.d[i * nb..].as_ptr());
                        tokens_q8::<R, T>(
                            kernel,
                            wq,
                            wd,
                            a,
                            nb,
                            n,
                            &mut res,
                            &mut |t0, t1, res| emit(r0, r1, t0, t1, res),
                        );
                        r0 = r1;
                    }
                }
                GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => {
                    let Some(a) = &x.q8k else { return false };
                    let nb = cols / QK_K;
                    let mut buf = KRows {
                        q: vec![0; R * cols],
                        ws: vec![0.0; R * cols / 4],
                        extra: vec![0.0; R * nb * 16],
                    };
                    let mut r0 = rows.start;
                    while r0 < rows.end {
                        let r1 = (r0 + R).min(rows.end);
                        for (i, r) in (r0..r1).enumerate() {
                            unpack_k(
                                kernel,
                                *ty,
                                &data[r * rb..(r + 1) * rb],
                                &mut buf.q[i * cols..(i + 1) * cols],
                                &mut buf.ws[i * cols / 4..(i + 1) * cols / 4],
                                &mut buf.extra[i * nb * 16..(i + 1) * nb * 16],
                            );
                        }
                        let li = padded::<R>(0, r1 - r0);
                        let wq = li.map(|i| buf.q[i * cols..].as_ptr());
                        let ws = li.map(|i| buf.ws[i * cols / 4..].as_ptr());
                        let ex = li.map(|i| buf.extra[i * nb * 16..].as_ptr());
                        tokens_k::<R, T>(
                            kernel,
                            wq,
                            ws,
                            ex,
                            a,
                            nb,
                            n,
                            &mut res,
                            &mut |t0, t1, res| emit(r0, r1, t0, t1, res),
                        );
                        r0 = r1;
                    }
                }
                _ => return false,
            }
        }
    }
    true
}

/// Runs the Q8_0 tile kernel over every token tile of `a` for one tile of rows.
#[allow(clippy::too_many_arguments)]
fn tokens_q8<const R: usize, const T: usize>(
    kernel: Kernel,
    wq: [*const i8; R],
    wd: [*const f32; R],
    a: &crate::kernels::QActs,
    nb: usize,
    n: usize,
    res: &mut [[f32; T]; R],
    emit: &mut Emit<'_, R, T>,
) {
    let mut t0 = 0;
    while t0 < n {
        let t1 = (t0 + T).min(n);
        let ti = padded::<T>(t0, t1);
        let xq = ti.map(|v| a.q[v * a.cols..].as_ptr());
        let xd = ti.map(|v| a.d[v * nb..].as_ptr());
        match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the variant exists only on CPUs with these features; every pointer
            // starts a row or vector of `nb` whole blocks (the shapes were checked by the
            // loader and `matmul_linear`).
            Kernel::Avx512Vnni => unsafe { x86::q8_avx512::<R, T>(wq, wd, xq, xd, nb, res) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above, AVX2 and FMA were detected.
            Kernel::Avx2 => unsafe { x86::q8_avx2::<R, T>(wq, wd, xq, xd, nb, res) },
            _ => return,
        }
        emit(t0, t1, res);
        t0 = t1;
    }
}

/// Runs the K-quant tile kernel over every token tile of `a` for one tile of rows.
#[allow(clippy::too_many_arguments)]
fn tokens_k<const R: usize, const T: usize>(
    kernel: Kernel,
    wq: [*const i8; R],
    ws: [*const f32; R],
    ex: [*const f32; R],
    a: &QActsK,
    nb: usize,
    n: usize,
    res: &mut [[f32; T]; R],
    emit: &mut Emit<'_, R, T>,
) {
    let mut t0 = 0;
    while t0 < n {
        let t1 = (t0 + T).min(n);
        let ti = padded::<T>(t0, t1);
        let xq = ti.map(|v| a.q[v * a.cols..].as_ptr());
        let xd = ti.map(|v| a.d[v * nb..].as_ptr());
        let ps = ti.map(|v| a.psums[v * nb * 16..].as_ptr());
        match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in `tokens_q8`; `ws` holds 64 and `ex`/`ps` 16 floats per block.
            Kernel::Avx512Vnni => unsafe { x86::k_avx512::<R, T>(wq, ws, ex, xq, ps, xd, nb, res) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above, AVX2 and FMA were detected.
            Kernel::Avx2 => unsafe { x86::k_avx2::<R, T>(wq, ws, ex, xq, ps, xd, nb, res) },
            _ => return,
        }
        emit(t0, t1, res);
        t0 = t1;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::kquants::x86 as kx86;

    /// Two floats (`p[0]`, `p[1]`) spread over the low and high halves of a register.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,avx512dq,avx2,fma")]
    unsafe fn pair(p: *const f32) -> __m512 {
        let idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        let two = _mm_castpd_ps(_mm_load_sd(p as *const f64));
        _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(two))
    }

    /// Q5_0 blocks to int8 (value - 16) and f32 scales, as the Q5_0 dot unpacks them.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn unpack_q5_0(w: *const u8, q: *mut i8, d: *mut f32, nb: usize) {
        for i in 0..nb {
            let b = w.add(i * super::Q5_0_BYTES);
            *d.add(i) = kx86::f16_at(b);
            _mm256_storeu_si256(q.add(i * 32) as *mut __m256i, kx86::q5_0_values(b));
        }
    }

    /// The int8 values of one Q4_K, Q5_K or Q6_K block (as the per-token kernels unpack
    /// them) into `q`; returns the block's offset correction, Σ over 4-value lanes of
    /// `ws[lane]` · -128 · (the lane's sum).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn unpack_k_values(
        ty: super::GgmlType,
        b: *const u8,
        q: *mut i8,
        ws: *const f32,
    ) -> f32 {
        let m4 = _mm256_set1_epi8(0x0f);
        let mut out = [_mm256_setzero_si256(); 8];
        match ty {
            super::GgmlType::Q6_K => {
                let m2 = _mm256_set1_epi8(3);
                let m32 = _mm256_set1_epi8(32);
                for n in 0..2 {
                    let ql = b.add(64 * n);
                    let qh = b.add(128 + 32 * n);
                    let bits1 = _mm256_loadu_si256(ql as *const __m256i);
                    let bits2 = _mm256_loadu_si256(ql.add(32) as *const __m256i);
                    let hb = _mm256_loadu_si256(qh as *const __m256i);
                    let h = |s: i32| {
                        let v = match s {
                            0 => hb,
                            2 => _mm256_srli_epi16(hb, 2),
                            4 => _mm256_srli_epi16(hb, 4),
                            _ => _mm256_srli_epi16(hb, 6),
                        };
                        _mm256_slli_epi16(_mm256_and_si256(v, m2), 4)
                    };
                    let lo1 = _mm256_and_si256(bits1, m4);
                    let lo2 = _mm256_and_si256(bits2, m4);
                    let hi1 = _mm256_and_si256(_mm256_srli_epi16(bits1, 4), m4);
                    let hi2 = _mm256_and_si256(_mm256_srli_epi16(bits2, 4), m4);
                    out[4 * n] = _mm256_sub_epi8(_mm256_or_si256(lo1, h(0)), m32);
                    out[4 * n + 1] = _mm256_sub_epi8(_mm256_or_si256(lo2, h(2)), m32);
                    out[4 * n + 2] = _mm256_sub_epi8(_mm256_or_si256(hi1, h(4)), m32);
                    out[4 * n + 3] = _mm256_sub_epi8(_mm256_or_si256(hi2, h(6)), m32);
                }
            }
            super::GgmlType::Q4_K => {
                for j in 0..4 {
                    let bits = _mm256_loadu_si256(b.add(16 + 32 * j) as *const __m256i);
                    out[2 * j] = _mm256_and_si256(bits, m4);
                    out[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
                }
            }
            _ => {
                let hbits = _mm256_loadu_si256(b.add(16) as *const __m256i);
                let one = _mm256_set1_epi8(1);
                for j in 0..4 {
                    let bits = _mm256_loadu_si256(b.add(48 + 32 * j) as *const __m256i);
                    let sh_lo = _mm_cvtsi32_si128(2 * j as i32);
                    let sh_hi = _mm_cvtsi32_si128(2 * j as i32 + 1);
                    let h_lo =
                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(hbits, sh_lo), one), 4);
                    let h_hi =
                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(hbits, sh_hi), one), 4);
                    out[2 * j] = _mm256_or_si256(_mm256_and_si256(bits, m4), h_lo);
                    out[2 * j + 1] =
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bits, 4), m4), h_hi);
                }
            }
        }
        let ones8 = _mm256_set1_epi8(1);
        let ones16 = _mm256_set1_epi16(1);
        let mut corr = _mm256_setzero_ps();
        for (k, &v) in out.iter().enumerate() {
            _mm256_storeu_si256(q.add(32 * k) as *mut __m256i, v);
            let lanes = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, v), ones16);
            corr = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(lanes),
                _mm256_loadu_ps(ws.add(8 * k)),
                corr,
            );
        }
        -128.0 * hsum(corr)
    }

    /// Q8_0 rows × Q8_0 tokens, two blocks per 512-bit step.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,avx512dq,avx2,fma")]
    pub unsafe fn q8_avx512<const R: usize, const T: usize>(
        wq: [*const i8; R],
        wd: [*const f32; R],
        xq: [*const i8; T],
        xd: [*const f32; T],
        nb: usize,
        out: &mut [[f32; T]; R],
    ) {
        let zero = _mm512_setzero_si512();
        let off = _mm512_set1_epi8(-128);
        let mut acc = [[_mm512_setzero_ps(); T]; R];
        let mut b = 0;
        while b < nb {
            // The last odd block reads only its 32 bytes; the zeroed upper weights add 0.
            let two = b + 2 <= nb;
            let mask: u64 = if two { !0 } else { 0xffff_ffff };
            let mut w = [zero; R];
            let mut neg = [zero; R];
            let mut dw = [_mm512_setzero_ps(); R];
            for r in 0..R {
                w[r] = _mm512_maskz_loadu_epi8(mask, wq[r].add(b * 32));
                // -128 · Σw per lane: takes the activations' +128 offset back out.
                neg[r] = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, off, w[r]));
                dw[r] = if two {
                    pair(wd[r].add(b))
                } else {
                    _mm512_set1_ps(*wd[r].add(b))
                };
            }
            for t in 0..T {
                let xu = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, xq[t].add(b * 32)), off);
                let dx = if two {
                    pair(xd[t].add(b))
                } else {
                    _mm512_set1_ps(*xd[t].add(b))
                };
                for r in 0..R {
                    let s = _mm512_dpbusd_epi32(neg[r], xu, w[r]);
                    acc[r][t] =
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw[r], dx), acc[r][t]);
                }
            }
            b += 2;
        }
        for r in 0..R {
            for t in 0..T {
                out[r][t] = _mm512_reduce_add_ps(acc[r][t]);
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(acc: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_extractf128_ps(acc, 1), _mm256_castps256_ps128(acc));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Q8_0 rows × Q8_0 tokens, one block per 256-bit step (sign trick).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn q8_avx2<const R: usize, const T: usize>(
        wq: [*const i8; R],
        wd: [*const f32; R],
        xq: [*const i8; T],
        xd: [*const f32; T],
        nb: usize,
        out: &mut [[f32; T]; R],
    ) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); T]; R];
        for b in 0..nb {
            let mut w = [_mm256_setzero_si256(); R];
            let mut dw = [_mm256_setzero_ps(); R];
            for r in 0..R {
                w[r] = _mm256_loadu_si256(wq[r].add(b * 32) as *const __m256i);
                dw[r] = _mm256_set1_ps(*wd[r].add(b));
            }
            for t in 0..T {
                let x = _mm256_loadu_si256(xq[t].add(b * 32) as *const __m256i);
                let ax = _mm256_sign_epi8(x, x);
                let dx = _mm256_set1_ps(*xd[t].add(b));
                for r in 0..R {
                    let p = _mm256_madd_epi16(
                        _mm256_maddubs_epi16(ax, _mm256_sign_epi8(w[r], x)),
                        ones,
                    );
                    acc[r][t] =
                        _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(dw[r], dx), acc[r][t]);
                }
            }
        }
        for r in 0..R {
            for t in 0..T {
                out[r][t] = hsum(acc[r][t]);
            }
        }
    }

    /// Unpacked K-quant rows × Q8_K tokens: per 64 values one VPDPBUSD per (row, token),
    /// scaled per lane; per block the mins and offset correction as one 16-float FMA.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,avx512dq,avx2,fma")]
    pub unsafe fn k_avx512<const R: usize, const T: usize>(
        wq: [*const i8; R],
        ws: [*const f32; R],
        ex: [*const f32; R],
        xq: [*const i8; T],
        ps: [*const f32; T],
        xd: [*const f32; T],
        nb: usize,
        out: &mut [[f32; T]; R],
    ) {
        let zero = _mm512_setzero_si512();
        let off = _mm512_set1_epi8(-128);
        let mut acc = [[_mm512_setzero_ps(); T]; R];
        for i in 0..nb {
            let mut dx = [_mm512_setzero_ps(); T];
            for t in 0..T {
                dx[t] = _mm512_set1_ps(*xd[t].add(i));
            }
            for k in 0..4 {
                let at = i * 256 + 64 * k;
                let mut w = [zero; R];
                for r in 0..R {
                    w[r] = _mm512_loadu_si512(wq[r].add(at) as *const _);
                }
                for t in 0..T {
                    let xu = _mm512_xor_si512(_mm512_loadu_si512(xq[t].add(at) as *const _), off);
                    for r in 0..R {
                        let s = _mm512_dpbusd_epi32(zero, xu, w[r]);
                        let sc = _mm512_mul_ps(_mm512_loadu_ps(ws[r].add(at / 4)), dx[t]);
                        acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), sc, acc[r][t]);
                    }
                }
            }
            for r in 0..R {
                let e = _mm512_loadu_ps(ex[r].add(i * 16));
                for t in 0..T {
                    acc[r][t] = _mm512_fmadd_ps(e, _mm512_loadu_ps(ps[t].add(i * 16)), acc[r][t]);
                }
            }
        }
        for r in 0..R {
            for t in 0..T {
                out[r][t] = _mm512_reduce_add_ps(acc[r][t]);
            }
        }
    }

    /// As [`k_avx512`] with 256-bit registers and the sign trick (no offset, so only the
    /// mins of `ex`).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn k_avx2<const R: usize, const T: usize>(
        wq: [*const i8; R],
        ws: [*const f32; R],
        ex: [*const f32; R],
        xq: [*const i8; T],
        ps: [*const f32; T],
        xd: [*const f32; T],
        nb: usize,
        out: &mut [[f32; T]; R],
    ) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); T]; R];
        for i in 0..nb {
            let mut dx = [_mm256_setzero_ps(); T];
            for t in 0..T {
                dx[t] = _mm256_set1_ps(*xd[t].add(i));
            }
            for k in 0..8 {
                let at = i * 256 + 32 * k;
                let mut w = [_mm256_setzero_si256(); R];
                for r in 0..R {
                    w[r] = _mm256_loadu_si256(wq[r].add(at) as *const __m256i);
                }
                for t in 0..T {
                    let x = _mm256_loadu_si256(xq[t].add(at) as *const __m256i);
                    let ax = _mm256_sign_epi8(x, x);
                    for r in 0..R {
                        let p = _mm256_madd_epi16(
                            _mm256_maddubs_epi16(ax, _mm256_sign_epi8(w[r], x)),
                            ones,
                        );
                        let sc = _mm256_mul_ps(_mm256_loadu_ps(ws[r].add(at / 4)), dx[t]);
                        acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sc, acc[r][t]);
                    }
                }
            }
            for r in 0..R {
                let e = _mm256_loadu_ps(ex[r].add(i * 16));
                for t in 0..T {
                    acc[r][t] = _mm256_fmadd_ps(e, _mm256_loadu_ps(ps[t].add(i * 16)), acc[r][t]);
                }
            }
        }
        for r in 0..R {
            for t in 0..T {
                out[r][t] = hsum(acc[r][t]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::kernels::{Linear, QMatrix};
    use crate::kquants::tests::random_blocks;

    /// The SIMD unpacking gives the portable unpacking's values and scales.
    #[test]
    fn simd_unpacking_matches_portable() {
        if Kernel::best() == Kernel::Scalar {
            return;
        }
        let mut rng = StdRng::seed_from_u64(7);
        let nb = 3;
        let b = random_blocks(GgmlType::Q5_0, nb * 8, &mut rng);
        let (mut q1, mut d1) = (vec![0i8; nb * 256], vec![0f32; nb * 8]);
        let (mut q2, mut d2) = (q1.clone(), d1.clone());
        unpack_q5_0(Kernel::Scalar, &b, &mut q1, &mut d1);
        unpack_q5_0(Kernel::Avx2, &b, &mut q2, &mut d2);
        assert_eq!((q1, d1), (q2, d2));
        for ty in [GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
            let b = random_blocks(ty, nb, &mut rng);
            let mut one = (
                vec![0i8; nb * 256],
                vec![0f32; nb * 64],
                vec![0f32; nb * 16],
            );
            let mut two = one.clone();
            unpack_k(Kernel::Scalar, ty, &b, &mut one.0, &mut one.1, &mut one.2);
            unpack_k(Kernel::Avx2, ty, &b, &mut two.0, &mut two.1, &mut two.2);
            assert_eq!((&one.0, &one.1), (&two.0, &two.1), "{ty:?}");
            for (a, c) in one.2.iter().zip(&two.2) {
                assert!(
                    (a - c).abs() <= 1e-5 * a.abs().max(1.0),
                    "{ty:?}: {a} vs {c}"
                );
            }
        }
    }

    /// For every weight type and token counts 1, 3, 8 and 13: the tiled kernel equals the
    /// per-token kernel (rows 0..7 and a ragged middle range, so row tiles are padded too).
    #[test]
    fn tiled_matches_per_token_kernel() {
        let mut rng = StdRng::seed_from_u64(42);
        let mut kernels = Vec::new();
        if Kernel::best() == Kernel::Avx512Vnni {
            kernels.push(Kernel::Avx512Vnni);
        }
        if Kernel::best() != Kernel::Scalar {
            kernels.push(Kernel::Avx2);
        }
        let rows = 7;
        for ty in [
            GgmlType::Q8_0,
            GgmlType::Q5_0,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ] {
            // An odd number of 32-blocks for the 32-wide types (the 512-bit tail).
            let cols = if ty.block_elems() == 32 { 32 * 19 } else { 512 };
            let nb = cols / ty.block_elems() as usize;
            let w = if ty == GgmlType::Q8_0 {
                let f: Vec<f32> = (0..rows * cols)
                    .map(|_| rng.random_range(-1.0..1.0))
                    .collect();
                Weight::Q8(QMatrix::from_f32(rows, cols, &f))
            } else {
                Weight::Blocks {
                    ty,
                    rows,
                    cols,
                    data: random_blocks(ty, rows * nb, &mut rng).into(),
                }
            };
            let lin = Linear::new(vec![w.clone()]);
            for n in [1usize, 3, 8, 13] {
                let xf: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-2.0..2.0)).collect();
                let acts = Acts::for_linear(&xf, &lin);
                for &k in &kernels {
                    for range in [0..rows, 2..5] {
                        let mut got = vec![f32::NAN; n * rows];
                        let done = run(k, &w, range.clone(), &acts, &mut |r, v0, ys| {
                            for (v, &y) in (v0..).zip(ys) {
                                got[v * rows + r] = y;
                            }
                        });
                        assert!(done, "{ty:?} {k:?} has a tiled path");
                        for v in 0..n {
                            for r in range.clone() {
                                let want = k.dot_weight(&w, r, &acts, v);
                                let g = got[v * rows + r];
                                // Both sum thousands of products in f32, in different
                                // orders: allow a few ulps of the terms' total magnitude.
                                let mut wr = vec![0f32; cols];
                                w.row_f32(r, &mut wr);
                                let mag: f32 = wr
                                    .iter()
                                    .zip(&xf[v * cols..(v + 1) * cols])
                                    .map(|(a, b)| (a * b).abs())
                                    .sum();
                                assert!(
                                    (g - want).abs() <= 1e-5 * mag.max(1.0),
                                    "{ty:?} {k:?} n={n} token {v} row {r}: {g} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
