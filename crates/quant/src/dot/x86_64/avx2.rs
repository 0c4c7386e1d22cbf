//! AVX2 + FMA + F16C dot products.
//!
//! The integer part of every kernel is exact for every input, -128 included. Signed bytes
//! against signed bytes (Q8_0 x Q8_0, int8) are sign-extended to i16 and multiplied with `madd`,
//! except in the four-row kernels: there the activations, shared by the four rows, are checked
//! once for -128, and without one each row takes `maddubs(|x|, y * sign(x))` (ggml's `sign` trick
//! with the roles that keep it exact for a weight of -128); a block with -128 takes the widening
//! path. The int8 GEMM kernel (a packed panel of sixteen rows by up to six tokens at a time) takes
//! the activations widened to i16 once per GEMM and sign-extends each weight vector once for six
//! tokens: one `madd` per 16 MACs, exact for every input, with no sign trick and no -128 check.
//! The 4- and 5-bit weights are
//! unsigned operands of at most 31 in `maddubs`, whose pair sums (at most 31 * 128 * 2) cannot
//! saturate. The offsets of Q4_0 and Q5_0 are subtracted as a second `maddubs` of the activations
//! against the offset.
//!
//! The GGML kernels take four blocks per step, each into its own accumulator of eight lanes, and
//! convert the step's eight f16 scales with one instruction. Only the f32 accumulation order
//! differs from the scalar reference.

use std::arch::x86_64::*;

use crate::Isa;
use crate::dot::{
    DotKernels, PANEL_PAIR_BYTES, PANEL_QUAD_BYTES, PANEL_ROWS, PanelOutput, PanelScales, PanelShape,
    assert_panel_shape, assert_same_len,
};
use half::f16;

use crate::ggml::{BlockQ4_0, BlockQ4_0x4, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_0x4, BlockQ8_1, QK};

static AVX2: DotKernels = DotKernels {
    isa: Isa::Avx2,
    q8_0_q8_0,
    q4_0_q8_0,
    q4_1_q8_1,
    q5_0_q8_0,
    q5_1_q8_1,
    i8_i8,
    f32_f32,
    q8_0x4_q8_0,
    q4_0x4_q8_0,
    i8_i8_x4,
    i8_i8_4x2,
    i8_i16_f32_panel,
    u8_i8_f32_panel,
};

/// The AVX2 table, or `None` when this CPU lacks AVX2, FMA or F16C.
pub(in crate::dot) fn kernels() -> Option<&'static DotKernels> {
    Isa::Avx2.is_supported().then_some(&AVX2)
}

macro_rules! safe_entries {
    ($( $name:ident($x:ty, $y:ty) -> $out:ty = $target:ident; )*) => {$(
        fn $name(x: $x, y: $y) -> $out {
            assert_same_len(x.len(), y.len());
            // SAFETY: this function is reachable only through `AVX2`, which `kernels` hands out
            // after `Isa::Avx2.is_supported()` found AVX2, FMA and F16C on this CPU.
            unsafe { $target(x, y) }
        }
    )*};
}

safe_entries! {
    q8_0_q8_0(&[BlockQ8_0], &[BlockQ8_0]) -> f32 = dot_q8_0_q8_0;
    q4_0_q8_0(&[BlockQ4_0], &[BlockQ8_0]) -> f32 = dot_q4_0_q8_0;
    q4_1_q8_1(&[BlockQ4_1], &[BlockQ8_1]) -> f32 = dot_q4_1_q8_1;
    q5_0_q8_0(&[BlockQ5_0], &[BlockQ8_0]) -> f32 = dot_q5_0_q8_0;
    q5_1_q8_1(&[BlockQ5_1], &[BlockQ8_1]) -> f32 = dot_q5_1_q8_1;
    i8_i8(&[i8], &[i8]) -> i32 = dot_i8_i8;
    f32_f32(&[f32], &[f32]) -> f32 = dot_f32_f32;
}

safe_entries! {
    q8_0x4_q8_0(&[BlockQ8_0x4], &[BlockQ8_0]) -> [f32; 4] = dot_q8_0x4_q8_0;
    q4_0x4_q8_0(&[BlockQ4_0x4], &[BlockQ8_0]) -> [f32; 4] = dot_q4_0x4_q8_0;
}

fn i8_i8_4x2(rows: [&[i8]; 4], tokens: [&[i8]; 2]) -> [[i32; 4]; 2] {
    for row in rows {
        for token in tokens {
            assert_same_len(row.len(), token.len());
        }
    }
    // SAFETY: as for `safe_entries`; the lengths were checked above.
    unsafe { dot_i8_i8_4x2(rows, tokens) }
}

fn i8_i16_f32_panel(panels: &[i8], shape: PanelShape, tokens: &[i16], scales: PanelScales<'_>, out: PanelOutput<'_>) {
    assert_panel_shape(panels.len(), 2, shape, tokens.len(), &scales, &out);
    // SAFETY: as for `safe_entries`; the shapes were checked above.
    unsafe { gemm_i8_i16_f32(panels, shape, tokens, scales, out) }
}

fn u8_i8_f32_panel(panels: &[u8], shape: PanelShape, tokens: &[i8], scales: PanelScales<'_>, out: PanelOutput<'_>) {
    assert_panel_shape(panels.len(), 4, shape, tokens.len(), &scales, &out);
    // SAFETY: as for `safe_entries`; the shapes were checked above.
    unsafe { gemm_u8_i8_f32(panels, shape, tokens, scales, out) }
}

fn i8_i8_x4(rows: [&[i8]; 4], y: &[i8]) -> [i32; 4] {
    for row in rows {
        assert_same_len(row.len(), y.len());
    }
    // SAFETY: as for `safe_entries`: reachable only through `AVX2`, handed out after
    // `Isa::Avx2.is_supported()` found AVX2, FMA and F16C.
    unsafe { dot_i8_i8_x4(rows, y) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q8_0_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    sum_blocks::<_, _, false>(
        x,
        y,
        |bx, by| [bx.d.to_bits(), by.d.to_bits(), 0, 0],
        |bx, by| {
            let (x_low, x_high) = widen_i8x32(&bx.qs);
            let (y_low, y_high) = widen_i8x32(&by.qs);
            _mm256_add_epi32(_mm256_madd_epi16(x_low, y_low), _mm256_madd_epi16(x_high, y_high))
        },
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_0_q8_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    sum_blocks::<_, _, false>(
        x,
        y,
        |bx, by| [bx.d.to_bits(), by.d.to_bits(), 0, 0],
        |bx, by| {
            let activations = load_i8x32(&by.qs);
            // (q - 8) * y as q * y - 8 * y: both pair sums stay within i16 (|15 * 128 * 2| < 2^15),
            // and so does their difference, the true pair sum (at most 8 * 128 * 2).
            let with_offset = _mm256_maddubs_epi16(nibbles(&bx.qs), activations);
            let offset = _mm256_maddubs_epi16(_mm256_set1_epi8(8), activations);
            sum_pairs(_mm256_sub_epi16(with_offset, offset))
        },
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_1_q8_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    let scales = |bx: &BlockQ4_1, by: &BlockQ8_1| [bx.d.to_bits(), by.d.to_bits(), bx.m.to_bits(), by.s.to_bits()];
    sum_blocks::<_, _, true>(x, y, scales, |bx, by| {
        sum_pairs(_mm256_maddubs_epi16(nibbles(&bx.qs), load_i8x32(&by.qs)))
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q5_0_q8_0(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
    sum_blocks::<_, _, false>(
        x,
        y,
        |bx, by| [bx.d.to_bits(), by.d.to_bits(), 0, 0],
        |bx, by| {
            let activations = load_i8x32(&by.qs);
            // q - 16 = nibble - 16 * (1 - fifth bit): subtract 16 where the fifth bit is clear.
            let offsets = _mm256_andnot_si256(fifth_bits(bx.qh), _mm256_set1_epi8(16));
            let low = _mm256_maddubs_epi16(nibbles(&bx.qs), activations);
            let offset = _mm256_maddubs_epi16(offsets, activations);
            sum_pairs(_mm256_sub_epi16(low, offset))
        },
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q5_1_q8_1(x: &[BlockQ5_1], y: &[BlockQ8_1]) -> f32 {
    let scales = |bx: &BlockQ5_1, by: &BlockQ8_1| [bx.d.to_bits(), by.d.to_bits(), bx.m.to_bits(), by.s.to_bits()];
    sum_blocks::<_, _, true>(x, y, scales, |bx, by| {
        let high = _mm256_and_si256(fifth_bits(bx.qh), _mm256_set1_epi8(16));
        let values = _mm256_or_si256(nibbles(&bx.qs), high);
        sum_pairs(_mm256_maddubs_epi16(values, load_i8x32(&by.qs)))
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_i8_i8(x: &[i8], y: &[i8]) -> i32 {
    let (x_chunks, x_rest) = x.as_chunks::<QK>();
    let (y_chunks, y_rest) = y.as_chunks::<QK>();
    let mut acc_low = _mm256_setzero_si256();
    let mut acc_high = _mm256_setzero_si256();
    for (x_chunk, y_chunk) in x_chunks.iter().zip(y_chunks) {
        let (x_low, x_high) = widen_i8x32(x_chunk);
        let (y_low, y_high) = widen_i8x32(y_chunk);
        // `madd` pair sums reach at most 2 * 128 * 128 = 2^15; the i32 lanes wrap like the
        // scalar reference's `wrapping_add`, so every order of summation agrees.
        acc_low = _mm256_add_epi32(acc_low, _mm256_madd_epi16(x_low, y_low));
        acc_high = _mm256_add_epi32(acc_high, _mm256_madd_epi16(x_high, y_high));
    }
    let mut sum = hsum_epi32(_mm256_add_epi32(acc_low, acc_high));
    for (&a, &b) in x_rest.iter().zip(y_rest) {
        sum = sum.wrapping_add(i32::from(a) * i32::from(b));
    }
    sum
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_f32_f32(x: &[f32], y: &[f32]) -> f32 {
    let (x_vectors, x_tail) = x.as_chunks::<8>();
    let (y_vectors, y_tail) = y.as_chunks::<8>();
    let (x_quads, x_rest) = x_vectors.as_chunks::<4>();
    let (y_quads, y_rest) = y_vectors.as_chunks::<4>();
    let mut acc = [_mm256_setzero_ps(); 4];
    for (xq, yq) in x_quads.iter().zip(y_quads) {
        for k in 0..4 {
            acc[k] = _mm256_fmadd_ps(load_f32x8(&xq[k]), load_f32x8(&yq[k]), acc[k]);
        }
    }
    for (xv, yv) in x_rest.iter().zip(y_rest) {
        acc[0] = _mm256_fmadd_ps(load_f32x8(xv), load_f32x8(yv), acc[0]);
    }
    let mut sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (&a, &b) in x_tail.iter().zip(y_tail) {
        sum += a * b;
    }
    sum
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q8_0x4_q8_0(x: &[BlockQ8_0x4], y: &[BlockQ8_0]) -> [f32; 4] {
    let mut acc = _mm256_setzero_ps();
    for (bx, by) in x.iter().zip(y) {
        prefetch_ahead(bx);
        let activations = load_i8x32(&by.qs);
        let rows = if has_minus_128(activations) {
            // Rare (ggml's and lathe's quantizers never write -128): the exact widening path.
            let (y_low, y_high) = widen_i8x32(&by.qs);
            bx.qs.each_ref().map(|qs| {
                let (x_low, x_high) = widen_i8x32(qs);
                _mm256_add_epi32(_mm256_madd_epi16(x_low, y_low), _mm256_madd_epi16(x_high, y_high))
            })
        } else {
            bx.qs.each_ref().map(|qs| signed_products(load_i8x32(qs), activations))
        };
        // Three horizontal adds leave, in each 128-bit half, a partial sum of rows 0, 1, 2, 3.
        let pairs01 = _mm256_hadd_epi32(rows[0], rows[1]);
        let pairs23 = _mm256_hadd_epi32(rows[2], rows[3]);
        let sums = _mm256_cvtepi32_ps(_mm256_hadd_epi32(pairs01, pairs23));
        let scales = _mm_mul_ps(half4(&bx.d), _mm_set1_ps(half1(by.d.to_bits())));
        acc = _mm256_fmadd_ps(_mm256_set_m128(scales, scales), sums, acc);
    }
    let rows = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
    store4(rows)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_0x4_q8_0(x: &[BlockQ4_0x4], y: &[BlockQ8_0]) -> [f32; 4] {
    let low_nibbles = _mm256_set1_epi8(0x0f);
    // Lanes of the sums below: rows 0, 0, 2, 2 in the low half and 1, 1, 3, 3 in the high one.
    let spread = _mm256_setr_epi32(0, 0, 2, 2, 1, 1, 3, 3);
    let mut acc = _mm256_setzero_ps();
    for (bx, by) in x.iter().zip(y) {
        prefetch_ahead(bx);
        // Elements 0..16 of the activations in both halves, and elements 16..32.
        let (y_low, y_high) = (broadcast_i8x16(&by.qs, 0), broadcast_i8x16(&by.qs, 16));
        // The `8 * y` of `(q - 8) * y = q * y - 8 * y`, paired as the products below are.
        let eight = _mm256_set1_epi8(8);
        let offset = _mm256_add_epi16(_mm256_maddubs_epi16(eight, y_low), _mm256_maddubs_epi16(eight, y_high));
        // Two rows per register: row 0 (or 2) in the low half, row 1 (or 3) in the high half.
        // Every i16 below stays within 2 * 15 * 128 * 2 + 8 * 128 * 4 < 2^15.
        let two_rows = |packed: __m256i| {
            let low = _mm256_and_si256(packed, low_nibbles);
            let high = _mm256_and_si256(_mm256_srli_epi16::<4>(packed), low_nibbles);
            let products = _mm256_add_epi16(_mm256_maddubs_epi16(low, y_low), _mm256_maddubs_epi16(high, y_high));
            sum_pairs(_mm256_sub_epi16(products, offset))
        };
        let (rows01, rows23) = load_q4_0x4(bx);
        let sums = _mm256_cvtepi32_ps(_mm256_hadd_epi32(two_rows(rows01), two_rows(rows23)));
        let d_x = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(half4(&bx.d)), spread);
        let scales = _mm256_mul_ps(d_x, _mm256_set1_ps(half1(by.d.to_bits())));
        acc = _mm256_fmadd_ps(scales, sums, acc);
    }
    // [r0 + r0, r2 + r2, .., ..] in the low half and [r1 + r1, r3 + r3, .., ..] in the high one.
    let folded = _mm256_hadd_ps(acc, acc);
    let (even, odd) = (_mm256_castps256_ps128(folded), _mm256_extractf128_ps::<1>(folded));
    store4(_mm_unpacklo_ps(even, odd))
}

/// How far ahead of the block being read the four-row kernels prefetch: the quads of a matrix are
/// one stream of bytes, and the hardware prefetchers stop at every 4 KiB page, which leaves a cold
/// GEMV waiting on DRAM at each page start. 2 KiB ahead measured best of 0.5 to 4 KiB (4096 x 4096,
/// weights from DRAM: Q4_0 0.96 -> 0.76 ms, Q8_0 1.53 -> 1.30 ms).
const PREFETCH_BYTES: usize = 2048;

/// Prefetches the cache lines `PREFETCH_BYTES` past the start of `block` (one per 64 bytes of the
/// block). Past the end of a quad this is the next quad, or memory no one reads: a prefetch is a
/// hint that never faults and changes nothing visible.
#[inline]
#[target_feature(enable = "avx2")]
fn prefetch_ahead<B>(block: &B) {
    let ahead = (block as *const B).cast::<i8>().wrapping_add(PREFETCH_BYTES);
    for line in (0..size_of::<B>()).step_by(64) {
        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line));
    }
}

/// Whether any byte of `bytes` is -128.
#[inline]
#[target_feature(enable = "avx2")]
fn has_minus_128(bytes: __m256i) -> bool {
    _mm256_movemask_epi8(_mm256_cmpeq_epi8(bytes, _mm256_set1_epi8(i8::MIN))) != 0
}

/// The eight i32 pair sums of `x * y` for signed bytes, exact when `y` holds no -128:
/// `maddubs(|x|, y * sign(x))`. `|x|` (128 for -128) is read unsigned and `y * sign(x)` cannot
/// wrap without a -128 in `y`, so each pair sum stays within `2 * 128 * 127 < 2^15`.
#[inline]
#[target_feature(enable = "avx2")]
fn signed_products(x: __m256i, y: __m256i) -> __m256i {
    sum_pairs(_mm256_maddubs_epi16(_mm256_abs_epi8(x), _mm256_sign_epi8(y, x)))
}

/// The four f16 scales in f32.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn half4(d: &[f16; 4]) -> __m128 {
    // SAFETY: `d` is eight readable bytes, exactly what `loadl_epi64` reads; no alignment needed.
    _mm_cvtph_ps(unsafe { _mm_loadl_epi64(d.as_ptr().cast()) })
}

/// One f16 (as bits) in f32.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn half1(bits: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

/// Sixteen bytes from `start` in both 128-bit halves.
#[inline]
#[target_feature(enable = "avx2")]
fn broadcast_i8x16(bytes: &[i8; QK], start: usize) -> __m256i {
    let half = &bytes[start..start + 16];
    // SAFETY: `half` is 16 readable bytes and `loadu` needs no alignment.
    _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(half.as_ptr().cast()) })
}

/// The packed nibbles of rows 0 and 1, and of rows 2 and 3.
#[inline]
#[target_feature(enable = "avx2")]
fn load_q4_0x4(block: &BlockQ4_0x4) -> (__m256i, __m256i) {
    let bytes: &[u8; 64] = bytemuck::cast_ref(&block.qs);
    // SAFETY: both 32-byte loads lie within the 64 bytes of `qs`; `loadu` needs no alignment.
    unsafe { (_mm256_loadu_si256(bytes.as_ptr().cast()), _mm256_loadu_si256(bytes.as_ptr().add(32).cast())) }
}

#[inline]
#[target_feature(enable = "avx")]
fn store4(values: __m128) -> [f32; 4] {
    let mut out = [0.0f32; 4];
    // SAFETY: `out` has room for the four f32 of `storeu`, which needs no alignment.
    unsafe { _mm_storeu_ps(out.as_mut_ptr(), values) };
    out
}

#[target_feature(enable = "avx2")]
fn dot_i8_i8_x4(rows: [&[i8]; 4], y: &[i8]) -> [i32; 4] {
    let n_chunks = y.len() / QK;
    let mut acc = [_mm256_setzero_si256(); 4];
    for chunk in 0..n_chunks {
        let span = chunk * QK..(chunk + 1) * QK;
        let y_chunk = y[span.clone()].as_array().expect("a whole chunk");
        let activations = load_i8x32(y_chunk);
        if has_minus_128(activations) {
            let (y_low, y_high) = widen_i8x32(y_chunk);
            for (acc, row) in acc.iter_mut().zip(rows) {
                let (x_low, x_high) = widen_i8x32(row[span.clone()].as_array().expect("a whole chunk"));
                // Exact pair sums (at most 2^15), wrapping i32 lanes, as in `dot_i8_i8`.
                let products = _mm256_add_epi32(_mm256_madd_epi16(x_low, y_low), _mm256_madd_epi16(x_high, y_high));
                *acc = _mm256_add_epi32(*acc, products);
            }
        } else {
            for (acc, row) in acc.iter_mut().zip(rows) {
                let weights = load_i8x32(row[span.clone()].as_array().expect("a whole chunk"));
                *acc = _mm256_add_epi32(*acc, signed_products(weights, activations));
            }
        }
    }
    std::array::from_fn(|r| {
        let tail = n_chunks * QK;
        rows[r][tail..]
            .iter()
            .zip(&y[tail..])
            .fold(hsum_epi32(acc[r]), |sum, (&a, &b)| sum.wrapping_add(i32::from(a) * i32::from(b)))
    })
}

/// Four weight rows times two tokens: every weight chunk is loaded once for the two tokens and
/// every token chunk once for the four rows, eight accumulators in registers.
///
/// # Safety
/// Every row and token must have the same length (AVX2 must be available, as the feature says).
#[target_feature(enable = "avx2")]
unsafe fn dot_i8_i8_4x2(rows: [&[i8]; 4], tokens: [&[i8]; 2]) -> [[i32; 4]; 2] {
    let len = tokens[0].len();
    let n_chunks = len / QK;
    let ones = _mm256_set1_epi16(1);
    let minus_128 = _mm256_set1_epi8(i8::MIN);
    // Eight named accumulators (token, row) so that they stay in registers.
    let zero = _mm256_setzero_si256();
    let (mut acc00, mut acc01, mut acc02, mut acc03) = (zero, zero, zero, zero);
    let (mut acc10, mut acc11, mut acc12, mut acc13) = (zero, zero, zero, zero);
    let mut chunk = 0;
    while chunk < n_chunks {
        let offset = chunk * QK;
        // SAFETY: `offset + QK <= len` and every slice holds `len` bytes; `loadu` needs no alignment.
        let load = |bytes: &[i8]| unsafe { _mm256_loadu_si256(bytes.as_ptr().add(offset).cast()) };
        let (token0, token1) = (load(tokens[0]), load(tokens[1]));
        let found = _mm256_or_si256(_mm256_cmpeq_epi8(token0, minus_128), _mm256_cmpeq_epi8(token1, minus_128));
        if _mm256_testz_si256(found, found) == 0 {
            // Rare (lathe's activation quantizer never writes -128): the rest takes the exact path.
            break;
        }
        // `|w| * (a * sign(w))`: exact with no -128 among the activations (see `signed_products`).
        macro_rules! row {
            ($r:expr, $acc0:ident, $acc1:ident) => {{
                let weights = load(rows[$r]);
                let magnitudes = _mm256_abs_epi8(weights);
                let products0 = _mm256_maddubs_epi16(magnitudes, _mm256_sign_epi8(token0, weights));
                let products1 = _mm256_maddubs_epi16(magnitudes, _mm256_sign_epi8(token1, weights));
                $acc0 = _mm256_add_epi32($acc0, _mm256_madd_epi16(products0, ones));
                $acc1 = _mm256_add_epi32($acc1, _mm256_madd_epi16(products1, ones));
            }};
        }
        row!(0, acc00, acc10);
        row!(1, acc01, acc11);
        row!(2, acc02, acc12);
        row!(3, acc03, acc13);
        chunk += 1;
    }
    let sums = [hsum4_epi32([acc00, acc01, acc02, acc03]), hsum4_epi32([acc10, acc11, acc12, acc13])];
    // The chunks after a -128 (if any) and the tail, exactly.
    let rest = chunk * QK;
    if rest == len {
        return sums;
    }
    std::array::from_fn(|t| {
        // Every slice holds `len >= rest` bytes, so the rests have equal lengths.
        let rest_sums = dot_i8_i8_x4(rows.map(|row| &row[rest..]), &tokens[t][rest..]);
        std::array::from_fn(|r| sums[t][r].wrapping_add(rest_sums[r]))
    })
}

/// Most tokens of one tile of the int8 GEMM: sixteen rows by six tokens take twelve accumulators,
/// the two weight vectors, one broadcast and one product, the sixteen registers.
const TILE_TOKENS: usize = 6;

/// Most tokens of one tile of the 7-bit activation GEMM: five tokens take ten accumulators, and
/// with the two weight vectors, a broadcast, a product and the ones of `madd` fifteen registers.
/// Six would need seventeen, and the spills and register moves the compiler then made cost a
/// quarter of the speed (MiniLM's 384 x 384 with 128 tokens, one thread: 45 -> 57 GMAC/s with
/// five).
const QUAD_TILE_TOKENS: usize = 5;

/// `$tile::<n>(args)` for a tile of `n` tokens, `n` one of the sizes listed or else 1.
macro_rules! tile_of_size {
    ($n:expr, $tile:ident $args:tt, [$($size:literal),*]) => {
        match $n {
            $($size => $tile::<$size> $args,)*
            _ => $tile::<1> $args,
        }
    };
}

/// Panels of sixteen weight rows times up to six tokens at a time, the int8 GEMM's kernel.
///
/// Each panel goes through all the tokens before the next one, so it is read from memory once.
/// The tokens go in tiles of six ([`panel_tile`]), but seven or eight left as four and the rest
/// rather than six and a tile of one or two, whose two sign extensions per column pair would
/// serve two or four products. Every tile is exactly its tokens: none is computed twice or for
/// nothing. (Tiles of five measured 5% slower than of six, so the rest is not split evenly.)
///
/// # Safety
/// The operands must have the shape `assert_panel_shape` checks (AVX2 must be available, as the
/// feature says).
#[target_feature(enable = "avx2")]
unsafe fn gemm_i8_i16_f32(
    panels: &[i8],
    shape: PanelShape,
    tokens: &[i16],
    scales: PanelScales<'_>,
    mut out: PanelOutput<'_>,
) {
    for_each_tile(shape.rows, scales.token_scales.len(), TILE_TOKENS, |n, tile| {
        // SAFETY: the caller's shapes hold, and the tile's tokens are among the tokens.
        unsafe { tile_of_size!(n, panel_tile(panels, shape, tokens, &scales, &mut out, tile), [6, 5, 4, 3, 2]) }
    });
}

/// The 7-bit activation GEMM's kernel: as [`gemm_i8_i16_f32`], panel by panel, in tiles of up to
/// [`QUAD_TILE_TOKENS`] tokens ([`quad_tile`]).
///
/// # Safety
/// The operands must have the shape `assert_panel_shape` checks (AVX2 must be available, as the
/// feature says).
#[target_feature(enable = "avx2")]
unsafe fn gemm_u8_i8_f32(
    panels: &[u8],
    shape: PanelShape,
    tokens: &[i8],
    scales: PanelScales<'_>,
    mut out: PanelOutput<'_>,
) {
    for_each_tile(shape.rows, scales.token_scales.len(), QUAD_TILE_TOKENS, |n, tile| {
        // SAFETY: the caller's shapes hold, and the tile's tokens are among the tokens.
        unsafe { tile_of_size!(n, quad_tile(panels, shape, tokens, &scales, &mut out, tile), [5, 4, 3, 2]) }
    });
}

/// The tiles of a panel kernel, panel by panel: `run(n, tile)` for tiles of `n` tokens, `most`
/// at a time (with the int8 kernel's six, seven or eight left go as four and the rest).
#[inline]
fn for_each_tile(rows: usize, n_tokens: usize, most: usize, mut run: impl FnMut(usize, Tile)) {
    for first_row in (0..rows).step_by(PANEL_ROWS) {
        let mut first = 0;
        while first < n_tokens {
            let left = n_tokens - first;
            let n = if most == TILE_TOKENS && (TILE_TOKENS + 1..=8).contains(&left) { 4 } else { left.min(most) };
            run(n, Tile { first_row, first_token: first });
            first += n;
        }
    }
}

/// Where one tile of [`gemm_i8_i16_f32`] starts: its panel's first row and its first token.
#[derive(Clone, Copy)]
struct Tile {
    first_row: usize,
    first_token: usize,
}

/// One panel (sixteen rows) times the `T` tokens from `tile.first_token`, written to `out`.
///
/// Each step takes one column pair: the panel's 32 bytes for it, sign-extended, are two vectors
/// of eight rows' weight pairs, and each token's two activations (i16) are broadcast as one i32,
/// so that `madd` gives eight rows' products of the pair, already in the lanes of their rows: no
/// horizontal sums. Exact for every input (each pair sum is at most `2 * 128 * 32768 = 2^24`; the
/// i32 lanes wrap like the scalar reference's `wrapping_add`). With six tokens, the twelve
/// accumulators, the two weight vectors, a broadcast and a product fill the sixteen registers;
/// each weight load (and its two sign extensions, the only work besides `madd` and `add`)
/// serves six tokens and each broadcast sixteen rows. On Zen 3, `madd` and `add` alone then
/// bound the loop. After each group, the sums are scaled in the lanes of their rows with the
/// scalar reference's f32 operations (no FMA), and after the last, each token's sixteen outputs
/// are written with two stores.
///
/// # Safety
/// As [`gemm_i8_i16_f32`], with `tile.first_row` a multiple of [`PANEL_ROWS`] below the rows and
/// `tile.first_token + T` at most the tokens.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn panel_tile<const T: usize>(
    panels: &[i8],
    shape: PanelShape,
    tokens: &[i16],
    scales: &PanelScales<'_>,
    out: &mut PanelOutput<'_>,
    tile: Tile,
) {
    let TileParts { panel_ptr, token_ptrs, weight_scales, zero_points, n_rows } =
        tile_parts::<_, _, T>(panels, shape, tokens, scales, tile);
    let pairs_per_group = shape.group_len / 2;
    let zero = _mm256_setzero_si256();
    // Per token, the f32 outputs so far of rows 0..8 and 8..16.
    let mut values = [[_mm256_setzero_ps(); 2]; T];
    for (group, group_scales) in weight_scales.iter().enumerate() {
        // `low[k]` holds rows 0..8 of token `k`, `high[k]` rows 8..16.
        let mut low = [zero; T];
        let mut high = [zero; T];
        for pair in group * pairs_per_group..(group + 1) * pairs_per_group {
            // SAFETY: `pair < cols / 2`: the panel holds `PANEL_PAIR_BYTES * cols / 2` bytes and
            // every token `cols` activations, so the 32 bytes from `PANEL_PAIR_BYTES * pair` and
            // the two i16 from `2 * pair` are in bounds; the loads need no alignment.
            unsafe {
                let weights = panel_ptr.add(PANEL_PAIR_BYTES * pair);
                if T == 1 {
                    // One token (a GEMV) streams the panels once, from DRAM when they are cold:
                    // prefetch ahead as the four-row kernels do (4096 x 4096 from DRAM, one
                    // thread: 12.6-14.3 -> 15.2-16.3 GB/s).
                    _mm_prefetch::<_MM_HINT_T0>(weights.wrapping_add(PREFETCH_BYTES));
                }
                let weights_low = _mm256_cvtepi8_epi16(_mm_loadu_si128(weights.cast()));
                let weights_high = _mm256_cvtepi8_epi16(_mm_loadu_si128(weights.add(16).cast()));
                for k in 0..T {
                    let activations = _mm256_set1_epi32(token_ptrs[k].add(2 * pair).cast::<i32>().read_unaligned());
                    low[k] = _mm256_add_epi32(low[k], _mm256_madd_epi16(weights_low, activations));
                    high[k] = _mm256_add_epi32(high[k], _mm256_madd_epi16(weights_high, activations));
                }
            }
        }
        scale_group(&mut values, low, high, group_scales, zero_points, (group, weight_scales.len()), tile.first_token);
    }
    store_tile(values, scales, out, tile, n_rows);
}

/// Where a tile of either panel kernel reads: its panel's first weight, each token's first
/// activation, the panel's scale and zero point tables (one entry a group), and how many of its
/// sixteen rows are real.
struct TileParts<'a, W, E, const T: usize> {
    panel_ptr: *const W,
    token_ptrs: [*const E; T],
    weight_scales: &'a [[f32; PANEL_ROWS]],
    zero_points: Option<(&'a [[i32; PANEL_ROWS]], &'a [i32])>,
    n_rows: usize,
}

/// The [`TileParts`] of `tile` (both layouts hold `cols * PANEL_ROWS` bytes a panel).
#[inline]
fn tile_parts<'a, W, E, const T: usize>(
    panels: &'a [W],
    shape: PanelShape,
    tokens: &'a [E],
    scales: &PanelScales<'a>,
    tile: Tile,
) -> TileParts<'a, W, E, T> {
    let PanelShape { rows, cols, group_len } = shape;
    let Tile { first_row, first_token } = tile;
    let n_groups = cols / group_len;
    let panel = first_row / PANEL_ROWS;
    let tables = panel * n_groups..(panel + 1) * n_groups;
    TileParts {
        panel_ptr: panels[panel * cols * PANEL_ROWS..].as_ptr(),
        // Opaque to the optimizer: seeing the tokens `cols` apart, it would keep one pointer and
        // step it from token to token with an add per broadcast, which on Zen 3 leaves the loop
        // bound by instruction dispatch (six per cycle) before `madd` and `add`; one register
        // per token indexed by the step takes no instruction at all.
        token_ptrs: std::hint::black_box(std::array::from_fn(|k| tokens[(first_token + k) * cols..].as_ptr())),
        weight_scales: &scales.weight_scales[tables.clone()],
        zero_points: scales.zero_points.map(|(zero_points, activation_sums)| (&zero_points[tables], activation_sums)),
        n_rows: PANEL_ROWS.min(rows - first_row),
    }
}

/// One panel (sixteen rows) times the `T` tokens from `tile.first_token` of the 7-bit
/// activation kernel, written to `out`.
///
/// Each step takes one column quad: the panel's 64 bytes for it are two vectors of eight rows'
/// four weights (one i32 lane a row), and each token's four activations are broadcast as one
/// i32, so that `maddubs` gives each row's two pair sums (exact, see [`super::gemm_u8_i8_f32`])
/// and `madd` with ones their i32 sum, in the lane of its row. Against the int8 kernel's
/// [`panel_tile`], each `madd`, `add` and broadcast serves twice the columns (for one more
/// `maddubs` each), and no sign extension is needed.
///
/// # Safety
/// As [`panel_tile`].
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn quad_tile<const T: usize>(
    panels: &[u8],
    shape: PanelShape,
    tokens: &[i8],
    scales: &PanelScales<'_>,
    out: &mut PanelOutput<'_>,
    tile: Tile,
) {
    let TileParts { panel_ptr, token_ptrs, weight_scales, zero_points, n_rows } =
        tile_parts::<_, _, T>(panels, shape, tokens, scales, tile);
    let quads_per_group = shape.group_len / 4;
    let zero = _mm256_setzero_si256();
    let ones = _mm256_set1_epi16(1);
    let mut values = [[_mm256_setzero_ps(); 2]; T];
    for (group, group_scales) in weight_scales.iter().enumerate() {
        let mut low = [zero; T];
        let mut high = [zero; T];
        for quad in group * quads_per_group..(group + 1) * quads_per_group {
            // SAFETY: `quad < cols / 4`: the panel holds `PANEL_QUAD_BYTES * cols / 4` bytes and
            // every token `cols` activations, so the 64 bytes from `PANEL_QUAD_BYTES * quad` and
            // the four i8 from `4 * quad` are in bounds; the loads need no alignment.
            unsafe {
                let weights = panel_ptr.add(PANEL_QUAD_BYTES * quad);
                if T == 1 {
                    _mm_prefetch::<_MM_HINT_T0>(weights.wrapping_add(PREFETCH_BYTES).cast());
                }
                let weights_low = _mm256_loadu_si256(weights.cast());
                let weights_high = _mm256_loadu_si256(weights.add(32).cast());
                for k in 0..T {
                    let activations = _mm256_set1_epi32(token_ptrs[k].add(4 * quad).cast::<i32>().read_unaligned());
                    let pairs_low = _mm256_maddubs_epi16(weights_low, activations);
                    let pairs_high = _mm256_maddubs_epi16(weights_high, activations);
                    low[k] = _mm256_add_epi32(low[k], _mm256_madd_epi16(pairs_low, ones));
                    high[k] = _mm256_add_epi32(high[k], _mm256_madd_epi16(pairs_high, ones));
                }
            }
        }
        scale_group(&mut values, low, high, group_scales, zero_points, (group, weight_scales.len()), tile.first_token);
    }
    store_tile(values, scales, out, tile, n_rows);
}

/// Group `group` (of `n_groups`, the zero point table being the panel's) of a tile: its integer
/// sums (rows 0..8 of token `k` in `low[k]`, rows 8..16 in `high[k]`), less the zero points' share, scaled in the lanes of their rows and added to each
/// token's f32 outputs so far, with the scalar reference's f32 operations (no FMA).
#[inline]
#[target_feature(enable = "avx2")]
fn scale_group<const T: usize>(
    values: &mut [[__m256; 2]; T],
    low: [__m256i; T],
    high: [__m256i; T],
    group_scales: &[f32; PANEL_ROWS],
    zero_points: Option<(&[[i32; PANEL_ROWS]], &[i32])>,
    (group, n_groups): (usize, usize),
    first_token: usize,
) {
    let (scales_low, scales_high) = (load_panel_f32(group_scales, 0), load_panel_f32(group_scales, 8));
    let offsets = zero_points.map(|(zero_points, activation_sums)| {
        let zero_points = &zero_points[group];
        (load_panel_i32(zero_points, 0), load_panel_i32(zero_points, 8), activation_sums)
    });
    for k in 0..T {
        let (mut integers_low, mut integers_high) = (low[k], high[k]);
        if let Some((zero_points_low, zero_points_high, activation_sums)) = offsets {
            // `integer - zero_point * activation_sum`, wrapping like the reference.
            let sum = _mm256_set1_epi32(activation_sums[(first_token + k) * n_groups + group]);
            integers_low = _mm256_sub_epi32(integers_low, _mm256_mullo_epi32(zero_points_low, sum));
            integers_high = _mm256_sub_epi32(integers_high, _mm256_mullo_epi32(zero_points_high, sum));
        }
        let [value_low, value_high] = &mut values[k];
        *value_low = _mm256_add_ps(*value_low, _mm256_mul_ps(scales_low, _mm256_cvtepi32_ps(integers_low)));
        *value_high = _mm256_add_ps(*value_high, _mm256_mul_ps(scales_high, _mm256_cvtepi32_ps(integers_high)));
    }
}

/// A tile's f32 outputs times each token's scale, plus the bias, written: two stores a token
/// (through a buffer for a last panel of fewer than sixteen rows, whose padding is never
/// stored).
#[inline]
#[target_feature(enable = "avx2")]
fn store_tile<const T: usize>(
    values: [[__m256; 2]; T],
    scales: &PanelScales<'_>,
    out: &mut PanelOutput<'_>,
    tile: Tile,
    n_rows: usize,
) {
    let Tile { first_row, first_token } = tile;
    let bias = scales.bias.map(|bias| {
        let mut padded = [0.0f32; PANEL_ROWS];
        padded[..n_rows].copy_from_slice(&bias[first_row..first_row + n_rows]);
        (load_panel_f32(&padded, 0), load_panel_f32(&padded, 8))
    });
    for (k, [value_low, value_high]) in values.into_iter().enumerate() {
        let token = first_token + k;
        let token_scale = _mm256_set1_ps(scales.token_scales[token]);
        let (mut value_low, mut value_high) =
            (_mm256_mul_ps(value_low, token_scale), _mm256_mul_ps(value_high, token_scale));
        if let Some((bias_low, bias_high)) = bias {
            value_low = _mm256_add_ps(value_low, bias_low);
            value_high = _mm256_add_ps(value_high, bias_high);
        }
        let dst = &mut out.values[token * out.stride + first_row..][..n_rows];
        let mut partial = [0.0f32; PANEL_ROWS];
        let full = dst.len() == PANEL_ROWS;
        let target = if full { dst.as_mut_ptr() } else { partial.as_mut_ptr() };
        // SAFETY: `target` is `dst` when it holds sixteen f32, else `partial`, which does: room
        // for the sixteen f32 of the two `storeu`, which need no alignment.
        unsafe {
            _mm256_storeu_ps(target, value_low);
            _mm256_storeu_ps(target.add(8), value_high);
        }
        if !full {
            dst.copy_from_slice(&partial[..dst.len()]);
        }
    }
}

/// Eight f32 from `start`.
#[inline]
#[target_feature(enable = "avx")]
fn load_panel_f32(values: &[f32; PANEL_ROWS], start: usize) -> __m256 {
    let values = &values[start..start + 8];
    // SAFETY: `values` is eight readable f32 and `loadu` needs no alignment.
    unsafe { _mm256_loadu_ps(values.as_ptr()) }
}

/// Eight i32 from `start`.
#[inline]
#[target_feature(enable = "avx")]
fn load_panel_i32(values: &[i32; PANEL_ROWS], start: usize) -> __m256i {
    let values = &values[start..start + 8];
    // SAFETY: `values` is eight readable i32 and `loadu` needs no alignment.
    unsafe { _mm256_loadu_si256(values.as_ptr().cast()) }
}

/// The lane sums of four vectors.
#[inline]
#[target_feature(enable = "avx2")]
fn hsum4_epi32(v: [__m256i; 4]) -> [i32; 4] {
    let quad = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    let sums = _mm_add_epi32(_mm256_castsi256_si128(quad), _mm256_extracti128_si256::<1>(quad));
    let mut out = [0i32; 4];
    // SAFETY: `out` has room for the 16 bytes of `storeu`, which needs no alignment.
    unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), sums) };
    out
}

/// The loop every GGML kernel shares: four blocks per step, each scaled by `d_x * d_y` into its
/// own accumulator of eight lanes, then the rest one by one.
///
/// `scales` gives the f16 bits of `[d_x, d_y, m_x, s_y]` (the last two read only with `MINS`,
/// which adds `m_x * s_y` per block), and `products` eight i32 lanes summing to the block's
/// integer dot product. Lane sums stay below 2^24, so their conversion to f32 is exact.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn sum_blocks<X, Y, const MINS: bool>(
    x: &[X],
    y: &[Y],
    scales: impl Fn(&X, &Y) -> [u16; 4],
    products: impl Fn(&X, &Y) -> __m256i,
) -> f32 {
    let (x_quads, x_rest) = x.as_chunks::<4>();
    let (y_quads, y_rest) = y.as_chunks::<4>();
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut mins = _mm_setzero_ps();
    for (xq, yq) in x_quads.iter().zip(y_quads) {
        let bits: [[u16; 4]; 4] = std::array::from_fn(|k| scales(&xq[k], &yq[k]));
        let column = |i: usize| bits.map(|block| block[i]);
        let block_scales = half_products(column(0), column(1));
        let d = _mm256_set_m128(block_scales, block_scales);
        let terms = |k: usize| _mm256_cvtepi32_ps(products(&xq[k], &yq[k]));
        acc[0] = _mm256_fmadd_ps(_mm256_permute_ps::<0x00>(d), terms(0), acc[0]);
        acc[1] = _mm256_fmadd_ps(_mm256_permute_ps::<0x55>(d), terms(1), acc[1]);
        acc[2] = _mm256_fmadd_ps(_mm256_permute_ps::<0xaa>(d), terms(2), acc[2]);
        acc[3] = _mm256_fmadd_ps(_mm256_permute_ps::<0xff>(d), terms(3), acc[3]);
        if MINS {
            mins = _mm_add_ps(mins, half_products(column(2), column(3)));
        }
    }
    for (bx, by) in x_rest.iter().zip(y_rest) {
        let [dx, dy, m, s] = scales(bx, by);
        let d = _mm256_set1_ps(_mm_cvtss_f32(half_products([dx, 0, 0, 0], [dy, 0, 0, 0])));
        acc[0] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(products(bx, by)), acc[0]);
        if MINS {
            mins = _mm_add_ps(mins, half_products([m, 0, 0, 0], [s, 0, 0, 0]));
        }
    }
    let blocks = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    if MINS { blocks + hsum_ps128(mins) } else { blocks }
}

/// The four products `a[k] * b[k]` of f16 bit patterns, in f32. The bits are packed in general
/// registers so one conversion serves eight halves.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn half_products(a: [u16; 4], b: [u16; 4]) -> __m128 {
    let pack = |bits: [u16; 4]| bits.iter().rev().fold(0u64, |word, &half| (word << 16) | u64::from(half)) as i64;
    let floats = _mm256_cvtph_ps(_mm_set_epi64x(pack(b), pack(a)));
    _mm_mul_ps(_mm256_castps256_ps128(floats), _mm256_extractf128_ps::<1>(floats))
}

/// Sums adjacent i16 pairs into i32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn sum_pairs(pairs: __m256i) -> __m256i {
    _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
}

/// The 32 nibbles of a Q4/Q5 block as bytes in element order: low nibbles (elements 0..16) in
/// the low lane, high nibbles (elements 16..32) in the high one.
#[inline]
#[target_feature(enable = "avx2")]
fn nibbles(qs: &[u8; QK / 2]) -> __m256i {
    // SAFETY: `qs` is 16 readable bytes and `loadu` needs no alignment.
    let packed = unsafe { _mm_loadu_si128(qs.as_ptr().cast()) };
    let shifted = _mm256_srlv_epi64(_mm256_broadcastsi128_si256(packed), _mm256_setr_epi64x(0, 0, 4, 4));
    _mm256_and_si256(shifted, _mm256_set1_epi8(0x0f))
}

/// 0xff in byte `j` where bit `j` of the little-endian `qh` is set, else 0.
#[inline]
#[target_feature(enable = "avx2")]
fn fifth_bits(qh: [u8; 4]) -> __m256i {
    let word = _mm256_set1_epi32(i32::from_le_bytes(qh));
    // Byte j takes byte j / 8 of the word, which every 128-bit lane holds.
    #[rustfmt::skip]
    let spread = _mm256_shuffle_epi8(word, _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
        2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
    ));
    let select = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select)
}

#[inline]
#[target_feature(enable = "avx2")]
fn load_i8x32(bytes: &[i8; QK]) -> __m256i {
    // SAFETY: `bytes` is 32 readable bytes and `loadu` needs no alignment.
    unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
}

/// The 32 bytes sign-extended to i16: elements 0..16, then 16..32.
#[inline]
#[target_feature(enable = "avx2")]
fn widen_i8x32(bytes: &[i8; QK]) -> (__m256i, __m256i) {
    // SAFETY: both 16-byte loads lie within the 32 bytes of `bytes`; `loadu` needs no alignment.
    let (low, high) =
        unsafe { (_mm_loadu_si128(bytes.as_ptr().cast()), _mm_loadu_si128(bytes.as_ptr().add(16).cast())) };
    (_mm256_cvtepi8_epi16(low), _mm256_cvtepi8_epi16(high))
}

#[inline]
#[target_feature(enable = "avx")]
fn load_f32x8(values: &[f32; 8]) -> __m256 {
    // SAFETY: `values` is eight readable f32 and `loadu` needs no alignment.
    unsafe { _mm256_loadu_ps(values.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx")]
fn hsum_ps(v: __m256) -> f32 {
    hsum_ps128(_mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v)))
}

#[inline]
#[target_feature(enable = "avx")]
fn hsum_ps128(quad: __m128) -> f32 {
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)))
}

#[inline]
#[target_feature(enable = "avx2")]
fn hsum_epi32(v: __m256i) -> i32 {
    let quad = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let pair = _mm_add_epi32(quad, _mm_shuffle_epi32::<0b01_00_11_10>(quad));
    _mm_cvtsi128_si32(_mm_add_epi32(pair, _mm_shuffle_epi32::<0b10_11_00_01>(pair)))
}
