//! The AVX2 + FMA dense product: packed panels and a 6 x 16 register tile.
//!
//! The loop nest is the one BLIS uses. All weights are packed once per call into strips of
//! [`NR`] outputs, k-major (one step of the tile reads 16 consecutive floats), block after block
//! of the inner dimension, which is cut into blocks of at most [`KC`] (evenly: 384 becomes two
//! blocks of 192). The tokens are taken [`MC`] rows at a time; for each block of the inner
//! dimension their columns are packed into strips of [`MR`] rows, k-major with a stride of 8 (so
//! that 8 x 8 register transposes do the packing; two lanes of each step are zero). A weight
//! strip (`kc x 16` floats, at most 16 KiB) stays in L1 while the token strips of the block
//! stream from L2, and the block's outputs stay in L2 across the blocks of the inner dimension.
//! The tile keeps 12 accumulators of 8 lanes, enough to cover the FMA latency on two pipes.
//!
//! Each output is the bias (or 0) plus its products in increasing `k`, whatever the thread
//! count: threads split the token blocks only. Edge tiles (fewer than 6 tokens or 16 outputs
//! left) run the same tile on zero-padded panels into a local buffer and copy back the part
//! that exists.

use std::arch::x86_64::*;

use rayon::prelude::*;

/// Rows (tokens) per register tile.
const MR: usize = 6;
/// Columns (outputs) per register tile: two vectors of 8.
const NR: usize = 16;
/// Largest block of the inner dimension.
const KC: usize = 256;
/// Largest block of tokens packed at once (a multiple of [`MR`]).
const MC: usize = 72;
/// Floats per step of a packed token strip: [`MR`] rows and two zero lanes.
const MR_STRIDE: usize = 8;

/// Whether this CPU can run [`linear`].
pub(super) fn is_supported() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Floats in 32-byte aligned storage, so that every vector load of a packed panel stays within
/// one cache line.
struct Aligned {
    storage: Vec<__m256>,
    len: usize,
}

impl Aligned {
    fn zeroed(len: usize) -> Aligned {
        // SAFETY: all-zero bits are a valid `__m256` (eight 0.0 lanes); `_mm256_setzero_ps`
        // would need AVX in this safe context.
        let zero = unsafe { std::mem::zeroed::<__m256>() };
        Aligned { storage: vec![zero; len.div_ceil(8)], len }
    }

    fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: the storage holds `storage.len() * 8 >= len` initialised f32 lanes, borrowed
        // mutably through `self` for the returned lifetime.
        unsafe { std::slice::from_raw_parts_mut(self.storage.as_mut_ptr().cast::<f32>(), self.len) }
    }
}

/// Splits `total` into blocks of at most `max`, as even as possible: (block count, block size).
fn even_blocks(total: usize, max: usize) -> (usize, usize) {
    let count = total.div_ceil(max).max(1);
    (count, total.div_ceil(count))
}

/// `y = x weights^T + bias` (or without the bias); the shapes and lengths have been checked by
/// the caller, `n_tokens`, `rows` and `cols` are non-zero.
///
/// # Panics
/// If the slices are shorter than the shapes say (the caller checked they are not).
pub(super) fn linear(
    x: &[f32],
    n_tokens: usize,
    weights: &[f32],
    rows: usize,
    cols: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    assert!(is_supported(), "the AVX2 dense product needs AVX2 and FMA");
    assert!(x.len() >= n_tokens * cols && weights.len() >= rows * cols && y.len() >= n_tokens * rows);
    let (k_blocks, kc_max) = even_blocks(cols, KC);
    let n_strips = rows.div_ceil(NR);
    // Every block of the inner dimension is packed up front (block after block, each
    // `n_strips * NR * kc` floats), so that a block of tokens runs all of them while its
    // outputs stay in L2.
    let mut packed_weights = Aligned::zeroed(n_strips * NR * cols);
    for k_block in 0..k_blocks {
        let k_start = k_block * kc_max;
        let kc = kc_max.min(cols - k_start);
        let b = &mut packed_weights.as_mut_slice()[n_strips * NR * k_start..][..n_strips * NR * kc];
        // SAFETY: `linear` asserted AVX2 and FMA above.
        unsafe { pack_weights(weights, rows, cols, k_start, kc, b) };
    }
    let packed_weights = packed_weights.as_mut_slice();
    let block = |(index, y_block): (usize, &mut [f32])| {
        let mc = y_block.len() / rows;
        let x_block = &x[index * MC * cols..][..mc * cols];
        let mut packed_tokens = Aligned::zeroed(mc.div_ceil(MR) * MR_STRIDE * kc_max);
        for k_block in 0..k_blocks {
            let k_start = k_block * kc_max;
            let kc = kc_max.min(cols - k_start);
            let a = &mut packed_tokens.as_mut_slice()[..mc.div_ceil(MR) * MR_STRIDE * kc];
            // SAFETY: `linear` asserted AVX2 and FMA above.
            unsafe { pack_tokens(x_block, mc, cols, k_start, kc, a) };
            let b = &packed_weights[n_strips * NR * k_start..][..n_strips * NR * kc];
            let start = match (k_block, bias) {
                (0, Some(_)) => Start::Bias,
                (0, None) => Start::Zero,
                _ => Start::Accumulate,
            };
            // SAFETY: `linear` asserted AVX2 and FMA above; `a` holds `ceil(mc / MR) *
            // MR_STRIDE * kc` floats, `b` holds `n_strips * NR * kc`, `y_block` is `mc x rows`
            // and the bias (when `start` is `Bias`) has `rows` values, as `block_product`
            // requires.
            unsafe { block_product(a, b, kc, mc, rows, bias, start, y_block) };
        }
    };
    if rayon::current_num_threads() > 1 {
        y.par_chunks_mut(MC * rows).enumerate().for_each(block);
    } else {
        y.chunks_mut(MC * rows).enumerate().for_each(block);
    }
}

/// Packs columns `k_start .. k_start + kc` of every weight row into strips of [`NR`] rows,
/// k-major: `b[strip * NR * kc + k * NR + r]` = `weights[(strip * NR + r) * cols + k_start + k]`,
/// 0 past the last row. Whole 8 x 8 squares are transposed in registers, the rest one by one.
///
/// # Safety
/// AVX2 is available.
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_weights(weights: &[f32], rows: usize, cols: usize, k_start: usize, kc: usize, b: &mut [f32]) {
    assert!(k_start + kc <= cols && weights.len() >= rows * cols && b.len() >= rows.div_ceil(NR) * NR * kc);
    for (strip, panel) in b.chunks_exact_mut(NR * kc).enumerate() {
        for half in 0..2 {
            let first_row = strip * NR + half * 8;
            let whole_rows = rows.saturating_sub(first_row).min(8);
            let mut k = 0;
            if whole_rows == 8 {
                while k + 8 <= kc {
                    let src = |r: usize| weights[(first_row + r) * cols + k_start + k..][..8].as_ptr();
                    // SAFETY: each `src(r)` is 8 readable floats of row `first_row + r < rows`,
                    // columns `k_start + k .. + 8 <= cols` (asserted above); the destination
                    // rows `k .. k + 8` of the panel, 8 floats at offset `half * 8` of each
                    // 16, are inside `panel` (`kc * NR` floats).
                    unsafe {
                        let rows_in = [0, 1, 2, 3, 4, 5, 6, 7].map(|r| _mm256_loadu_ps(src(r)));
                        let columns = transpose_8x8(rows_in);
                        for (j, column) in columns.iter().enumerate() {
                            _mm256_storeu_ps(panel.as_mut_ptr().add((k + j) * NR + half * 8), *column);
                        }
                    }
                    k += 8;
                }
            }
            for r in 0..8 {
                let row = first_row + r;
                for step in k..kc {
                    panel[step * NR + half * 8 + r] =
                        if row < rows { weights[row * cols + k_start + step] } else { 0.0 };
                }
            }
        }
    }
}

/// Packs columns `k_start .. k_start + kc` of `mc` token rows into strips of [`MR`] rows,
/// k-major with [`MR_STRIDE`] floats a step: `a[strip * 8 * kc + k * 8 + r]` = `x[(strip * 6 + r)
/// * cols + k_start + k]`, 0 for `r >= 6` and past the last row.
///
/// # Safety
/// AVX2 is available.
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_tokens(x: &[f32], mc: usize, cols: usize, k_start: usize, kc: usize, a: &mut [f32]) {
    assert!(k_start + kc <= cols && x.len() >= mc * cols && a.len() >= mc.div_ceil(MR) * MR_STRIDE * kc);
    for (strip, panel) in a.chunks_exact_mut(MR_STRIDE * kc).enumerate() {
        let first_row = strip * MR;
        let height = MR.min(mc - first_row);
        let mut k = 0;
        while k + 8 <= kc {
            let mut rows_in = [_mm256_setzero_ps(); 8];
            for (r, lanes) in rows_in.iter_mut().enumerate().take(height) {
                let src = &x[(first_row + r) * cols + k_start + k..][..8];
                // SAFETY: `src` is 8 readable floats.
                *lanes = unsafe { _mm256_loadu_ps(src.as_ptr()) };
            }
            let columns = transpose_8x8(rows_in);
            for (j, column) in columns.iter().enumerate() {
                let dst = &mut panel[(k + j) * MR_STRIDE..][..8];
                // SAFETY: `dst` is 8 writable floats.
                unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), *column) };
            }
            k += 8;
        }
        for step in k..kc {
            for r in 0..MR_STRIDE {
                panel[step * MR_STRIDE + r] = if r < height { x[(first_row + r) * cols + k_start + step] } else { 0.0 };
            }
        }
    }
}

/// The transpose of an 8 x 8 block held as 8 row vectors.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn transpose_8x8(rows: [__m256; 8]) -> [__m256; 8] {
    let [r0, r1, r2, r3, r4, r5, r6, r7] = rows;
    // Pairs of rows interleaved, then pairs of pairs, then the 128-bit halves exchanged.
    let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
    let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
    let (t4, t5) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5));
    let (t6, t7) = (_mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
    let (u0, u1) = (_mm256_shuffle_ps::<0x44>(t0, t2), _mm256_shuffle_ps::<0xEE>(t0, t2));
    let (u2, u3) = (_mm256_shuffle_ps::<0x44>(t1, t3), _mm256_shuffle_ps::<0xEE>(t1, t3));
    let (u4, u5) = (_mm256_shuffle_ps::<0x44>(t4, t6), _mm256_shuffle_ps::<0xEE>(t4, t6));
    let (u6, u7) = (_mm256_shuffle_ps::<0x44>(t5, t7), _mm256_shuffle_ps::<0xEE>(t5, t7));
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

/// What a tile's accumulators start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Zero (the first block of the inner dimension, no bias).
    Zero,
    /// The bias of the tile's outputs (first block, with a bias).
    Bias,
    /// The outputs already in `y` (every later block).
    Accumulate,
}

/// One block of `mc` packed tokens against every weight strip.
///
/// # Safety
/// AVX2 and FMA are available; `a` holds `ceil(mc / MR) * MR_STRIDE * kc` floats and `b` holds
/// `ceil(rows / NR) * NR * kc`; `y` holds `mc * rows`; with [`Start::Bias`], `bias` is `Some`
/// with `rows` values.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_product(
    a: &[f32],
    b: &[f32],
    kc: usize,
    mc: usize,
    rows: usize,
    bias: Option<&[f32]>,
    start: Start,
    y: &mut [f32],
) {
    assert!(a.len() >= mc.div_ceil(MR) * MR_STRIDE * kc && b.len() >= rows.div_ceil(NR) * NR * kc);
    assert!(y.len() >= mc * rows && (start != Start::Bias || bias.is_some_and(|bias| bias.len() >= rows)));
    let mut edge = [0.0f32; MR * NR];
    let mut edge_bias = [0.0f32; NR];
    for (strip, b_strip) in b.chunks_exact(NR * kc).enumerate() {
        let column = strip * NR;
        let width = NR.min(rows - column);
        let strip_bias = match (start, bias) {
            (Start::Bias, Some(bias)) if width == NR => bias[column..][..NR].as_ptr(),
            (Start::Bias, Some(bias)) => {
                edge_bias[..width].copy_from_slice(&bias[column..][..width]);
                edge_bias.as_ptr()
            }
            _ => std::ptr::null(),
        };
        for (token_strip, a_strip) in a.chunks_exact(MR_STRIDE * kc).enumerate() {
            let row = token_strip * MR;
            let height = MR.min(mc - row);
            if height == MR && width == NR {
                // SAFETY: the tile's rows `row .. row + 6` and columns `column .. column + 16`
                // lie inside `y` (mc x rows); the panels hold `kc` steps; the bias pointer is
                // 16 readable values when `start` is `Bias`.
                unsafe {
                    let c = y.as_mut_ptr().add(row * rows + column);
                    tile(kc, a_strip.as_ptr(), b_strip.as_ptr(), c, rows, start, strip_bias);
                }
            } else {
                if start == Start::Accumulate {
                    for r in 0..height {
                        edge[r * NR..][..width].copy_from_slice(&y[(row + r) * rows + column..][..width]);
                    }
                }
                // SAFETY: `edge` is a full 6 x 16 tile with row stride 16; the panels hold `kc`
                // steps (zero-padded past the matrices); `edge_bias` is 16 values.
                unsafe { tile(kc, a_strip.as_ptr(), b_strip.as_ptr(), edge.as_mut_ptr(), NR, start, strip_bias) };
                for r in 0..height {
                    y[(row + r) * rows + column..][..width].copy_from_slice(&edge[r * NR..][..width]);
                }
            }
        }
    }
}

/// `c[6 x 16] = start + a b` over `kc` steps: `a` is a packed token strip ([`MR_STRIDE`] floats
/// a step), `b` a weight strip (16 floats a step), `c` has row stride `ldc`.
///
/// # Safety
/// AVX2 and FMA are available; `a` points to `8 * kc` readable floats, `b` to `16 * kc`; `c`
/// points to 6 rows of 16 writable (and, with [`Start::Accumulate`], readable) floats at stride
/// `ldc`; with [`Start::Bias`], `bias` points to 16 readable floats.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, start: Start, bias: *const f32) {
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    match start {
        Start::Zero => {}
        Start::Bias => {
            // SAFETY: `bias` points to 16 readable floats (the caller's contract).
            let (low, high) = unsafe { (_mm256_loadu_ps(bias), _mm256_loadu_ps(bias.add(8))) };
            acc = [[low, high]; MR];
        }
        Start::Accumulate => {
            for (r, lanes) in acc.iter_mut().enumerate() {
                // SAFETY: row `r < 6` of `c` holds 16 readable floats (the caller's contract).
                unsafe { *lanes = [_mm256_loadu_ps(c.add(r * ldc)), _mm256_loadu_ps(c.add(r * ldc + 8))] };
            }
        }
    }
    for k in 0..kc {
        // SAFETY: step `k < kc` reads floats `16k .. 16k + 16` of `b` and `8k .. 8k + 6` of
        // `a`, inside the caller's contract.
        unsafe {
            let b_step = b.add(k * NR);
            let (low, high) = (_mm256_loadu_ps(b_step), _mm256_loadu_ps(b_step.add(8)));
            let a_step = a.add(k * MR_STRIDE);
            for (r, lanes) in acc.iter_mut().enumerate() {
                let value = _mm256_broadcast_ss(&*a_step.add(r));
                lanes[0] = _mm256_fmadd_ps(value, low, lanes[0]);
                lanes[1] = _mm256_fmadd_ps(value, high, lanes[1]);
            }
        }
    }
    for (r, lanes) in acc.iter().enumerate() {
        // SAFETY: row `r < 6` of `c` holds 16 writable floats (the caller's contract).
        unsafe {
            _mm256_storeu_ps(c.add(r * ldc), lanes[0]);
            _mm256_storeu_ps(c.add(r * ldc + 8), lanes[1]);
        }
    }
}
