//! AVX2 + FMA + F16C kernels of the GGML formats, bit-identical with [`crate::ggml::scalar`], and
//! of [`crate::linear::quantize_activations_i8`], which shares their rounding and packing helpers.
//!
//! Every kernel here is a private `#[target_feature]` function; the only ways in are the table
//! that [`kernels`] returns and the pointer [`activation_quantizer`] returns, both after detection.
//!
//! Quantizers work on groups of eight blocks so that the per-block reductions (absolute
//! maximum, signed extremes) and the scales they give sit one block per lane of a single vector:
//! two divisions and one f16 conversion per group, no scalar work per block. The last, partial
//! group runs padded with zeros and its padding blocks are discarded. Each group is one long
//! dependency chain, so the quantizers prefetch a few groups ahead (twice the DRAM throughput).
//! Dequantizers go block by block.
//!
//! Exactness, lane by lane against the scalar code:
//! - The f32 operations are the scalar ones in the scalar order: `x * id` then `+ 8.5` or `+ 16.5`
//!   (never an FMA), `id = 1 / d` by true division, `(x - min) * id + 0.5`, `q * d + m`.
//! - `round()` (ties away from zero) is `trunc(p + copysign(0.49999997, p))`, with the sum rounded
//!   to nearest: exact for every f32 (checked exhaustively over all 2^32 inputs).
//! - `as i8` saturates and maps NaN to 0: NaN lanes are zeroed, the top is clamped in f32 and the
//!   bottom saturates in the `packs` to i8. Q8 groups with finite input and normal (or zero)
//!   scales, the usual case, skip both: their products cannot leave `-127.5..127.5`. Q5_1's
//!   `as u8` clamps both ends in f32 (`max_ps(t, 0)` also maps NaN to 0).
//! - Q5_0's `(t as i8).min(31)` is negative, so 128 or more as a byte, when the scale's inverse
//!   overflows (blocks of values below about 2^-124): the scalar packing then spills bits 5 to 7
//!   of such a byte into the next bits of `qh`, and so does [`pack_q5`], exactly.
//! - `f16::from_f32` is `vcvtps2ph` with round-to-nearest-even, which half itself uses on F16C
//!   machines and which equals half's software conversion for all 2^32 inputs (checked
//!   exhaustively, NaN payloads included); `to_f32` is `vcvtph2ps`.
//! - Reductions run in a different order than the scalar folds. Maxima and minima do not depend
//!   on order except for which of several equal values is kept, which matters in two places,
//!   both handled exactly by a scalar scan of the (rare) blocks concerned: Q4_0 keeps the sign of
//!   the *first* value of largest magnitude (when both `+a` and `-a` are at the top), and Q4_1
//!   keeps the first of `+0.0` and `-0.0` when the minimum or maximum is zero; Q5_0 and Q5_1
//!   share these reductions.
//!
//! Non-finite input: quantizers follow the scalar semantics for NaN and infinities too (NaN is
//! skipped by the reductions and quantizes to 0, infinities saturate), and the property tests
//! check them byte for byte. Dequantizers give identical bits wherever the scalar result is a
//! number; where it is NaN (a NaN or infinite f16 scale or minimum) they give NaN too, but when
//! both operands of Q4_1's or Q5_1's `q * d + m` are NaN, which payload survives is unspecified.
//!
//! Activations: the absolute maximum is a `max_ps` fold, which skips NaN as `f32::max` does and
//! does not depend on order (all operands are non-negative numbers); the scale is the scalar
//! code's own expression; `x / scale` is a true division, rounded half to even by `round_ps`, NaN
//! zeroed and clamped to `-127..=127` in f32, as `round_ties_even().clamp(..) as i8` does.

use core::arch::x86_64::*;

use bytemuck::Zeroable;
use half::f16;

use crate::Isa;
use crate::ggml::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1, Kernels, QK};
use crate::linear::{ActivationQuantizer, ActivationValue, SevenBitActivationQuantizer, WideActivationQuantizer};

/// Blocks per quantizer iteration: one block per f32 lane.
const GROUP: usize = 8;
/// Values per quantizer iteration.
const GROUP_LEN: usize = GROUP * QK;

/// The AVX2 kernels, or `None` when this CPU lacks AVX2, FMA or F16C.
pub(crate) fn kernels() -> Option<&'static Kernels> {
    // The safe entry points are nested here so that nothing else can name them: the only way to
    // call them is through `AVX2`, which is handed out below only after detection.
    macro_rules! entry_points {
        ($( $name:ident($src:ty, $dst:ty); )*) => {$(
            pub(super) fn $name(src: $src, dst: $dst) {
                // SAFETY: reachable only through `AVX2`, returned below only when
                // `Isa::Avx2.is_supported()` found AVX2, FMA and F16C on this CPU.
                unsafe { super::$name(src, dst) }
            }
        )*};
    }
    mod entry {
        use super::*;
        entry_points! {
            quantize_q8_0(&[f32], &mut [BlockQ8_0]);
            dequantize_q8_0(&[BlockQ8_0], &mut [f32]);
            quantize_q8_1(&[f32], &mut [BlockQ8_1]);
            quantize_q4_0(&[f32], &mut [BlockQ4_0]);
            dequantize_q4_0(&[BlockQ4_0], &mut [f32]);
            quantize_q4_1(&[f32], &mut [BlockQ4_1]);
            dequantize_q4_1(&[BlockQ4_1], &mut [f32]);
            quantize_q5_0(&[f32], &mut [BlockQ5_0]);
            dequantize_q5_0(&[BlockQ5_0], &mut [f32]);
            quantize_q5_1(&[f32], &mut [BlockQ5_1]);
            dequantize_q5_1(&[BlockQ5_1], &mut [f32]);
        }
    }
    static AVX2: Kernels = Kernels {
        isa: Isa::Avx2,
        quantize_q8_0: entry::quantize_q8_0,
        dequantize_q8_0: entry::dequantize_q8_0,
        quantize_q8_1: entry::quantize_q8_1,
        quantize_q4_0: entry::quantize_q4_0,
        dequantize_q4_0: entry::dequantize_q4_0,
        quantize_q4_1: entry::quantize_q4_1,
        dequantize_q4_1: entry::dequantize_q4_1,
        quantize_q5_0: entry::quantize_q5_0,
        dequantize_q5_0: entry::dequantize_q5_0,
        quantize_q5_1: entry::quantize_q5_1,
        dequantize_q5_1: entry::dequantize_q5_1,
    };
    Isa::Avx2.is_supported().then_some(&AVX2)
}

/// The AVX2 [`crate::linear::quantize_activations_i8`], or `None` when this CPU lacks AVX2, FMA or
/// F16C.
pub(crate) fn activation_quantizer() -> Option<ActivationQuantizer> {
    // Nested so that nothing else can name it, as in `kernels`.
    fn entry(x: &[f32], dst: &mut [i8]) -> f32 {
        // SAFETY: reachable only through the pointer returned below, only when
        // `Isa::Avx2.is_supported()` found AVX2, FMA and F16C on this CPU.
        unsafe { quantize_activations_i8(x, dst) }
    }
    Isa::Avx2.is_supported().then_some(entry as ActivationQuantizer)
}

/// The AVX2 [`crate::linear::quantize_activations_i16`], or `None` when this CPU lacks AVX2, FMA
/// or F16C.
pub(crate) fn wide_activation_quantizer() -> Option<WideActivationQuantizer> {
    fn entry(x: &[f32], input_scale: Option<&[f32]>, dst: &mut [i16]) -> f32 {
        // SAFETY: reachable only through the pointer returned below, only when
        // `Isa::Avx2.is_supported()` found AVX2, FMA and F16C on this CPU.
        unsafe { quantize_activations_scaled(x, input_scale, 127, dst) }
    }
    Isa::Avx2.is_supported().then_some(entry as WideActivationQuantizer)
}

/// The AVX2 [`crate::linear::quantize_activations_i7`], or `None` when this CPU lacks AVX2, FMA
/// or F16C.
pub(crate) fn seven_bit_activation_quantizer() -> Option<SevenBitActivationQuantizer> {
    fn entry(x: &[f32], input_scale: Option<&[f32]>, dst: &mut [i8]) -> f32 {
        // SAFETY: reachable only through the pointer returned below, only when
        // `Isa::Avx2.is_supported()` found AVX2, FMA and F16C on this CPU.
        unsafe { quantize_activations_scaled(x, input_scale, 63, dst) }
    }
    Isa::Avx2.is_supported().then_some(entry as SevenBitActivationQuantizer)
}

// ---------------------------------------------------------------------------------------------
// Helpers. All are `#[inline]` and share the kernels' features, so they fold into them.

/// The f32 sign bit.
const SIGN: f32 = -0.0;
/// The largest f32 below 0.5: adding it with its sign and truncating rounds half away from zero.
const BELOW_HALF: f32 = 0.499_999_97;

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load(x: &[f32; 8]) -> __m256 {
    // SAFETY: `x` is eight readable f32s and the load is unaligned.
    unsafe { _mm256_loadu_ps(x.as_ptr()) }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn store(y: &mut [f32; 8], v: __m256) {
    // SAFETY: `y` is eight writable f32s and the store is unaligned.
    unsafe { _mm256_storeu_ps(y.as_mut_ptr(), v) }
}

/// The four vectors of block `b` of a group.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn block_vectors(x: &[f32; GROUP_LEN], b: usize) -> [__m256; 4] {
    let (block, _) = x.as_chunks::<QK>();
    let (v, _) = block[b].as_chunks::<8>();
    [load(&v[0]), load(&v[1]), load(&v[2]), load(&v[3])]
}

/// Lane `b` of `v`, in every lane.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn broadcast(v: __m256, b: usize) -> __m256 {
    _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(b as i32))
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn max_i32(a: __m256, b: __m256) -> __m256 {
    _mm256_castsi256_ps(_mm256_max_epi32(_mm256_castps_si256(a), _mm256_castps_si256(b)))
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn add_i32(a: __m256, b: __m256) -> __m256 {
    _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(a), _mm256_castps_si256(b)))
}

macro_rules! transpose_reduce {
    ($( $(#[$doc:meta])* $name:ident = $op:ident; )*) => {$(
        $(#[$doc])*
        /// Lane `b` of the result reduces the eight lanes of `v[b]`.
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        fn $name(v: [__m256; 8]) -> __m256 {
            // Pairs of vectors: lanes (0, 2) and (1, 3) of each 128-bit half.
            let v01 = $op(_mm256_unpacklo_ps(v[0], v[1]), _mm256_unpackhi_ps(v[0], v[1]));
            let v23 = $op(_mm256_unpacklo_ps(v[2], v[3]), _mm256_unpackhi_ps(v[2], v[3]));
            let v45 = $op(_mm256_unpacklo_ps(v[4], v[5]), _mm256_unpackhi_ps(v[4], v[5]));
            let v67 = $op(_mm256_unpacklo_ps(v[6], v[7]), _mm256_unpackhi_ps(v[6], v[7]));
            // Quadruples: one lane per vector and 128-bit half.
            let v0123 = $op(_mm256_shuffle_ps::<0x44>(v01, v23), _mm256_shuffle_ps::<0xee>(v01, v23));
            let v4567 = $op(_mm256_shuffle_ps::<0x44>(v45, v67), _mm256_shuffle_ps::<0xee>(v45, v67));
            // The two halves.
            $op(_mm256_permute2f128_ps::<0x20>(v0123, v4567), _mm256_permute2f128_ps::<0x31>(v0123, v4567))
        }
    )*};
}

transpose_reduce! {
    /// Maximum of NaN-free lanes.
    reduce_max = _mm256_max_ps;
    /// Minimum of NaN-free lanes.
    reduce_min = _mm256_min_ps;
    /// Maximum of i32 lanes.
    reduce_max_i32 = max_i32;
    /// Wrapping sum of i32 lanes.
    reduce_add_i32 = add_i32;
}

/// `if d != 0.0 { 1.0 / d } else { 0.0 }` (so NaN gives `1.0 / NaN`, as `!=` is true for NaN).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn scale_inverse(d: __m256) -> __m256 {
    let nonzero = _mm256_cmp_ps::<_CMP_NEQ_UQ>(d, _mm256_setzero_ps());
    _mm256_and_ps(nonzero, _mm256_div_ps(_mm256_set1_ps(1.0), d))
}

/// `f16::from_f32(v).to_bits()` per lane.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn f16_bits(v: __m256) -> [u16; 8] {
    bytemuck::cast(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v))
}

/// `f16::to_f32`, in every lane.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn broadcast_f16(h: f16) -> __m256 {
    _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h.to_bits()))))
}

/// Zeroes NaN lanes, as `NaN as i8 == 0`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn zero_nan(v: __m256) -> __m256 {
    _mm256_and_ps(v, _mm256_cmp_ps::<_CMP_ORD_Q>(v, v))
}

/// `p.round() as i8` per lane, before the saturating pack: lanes within `-128..=127` are exact,
/// lanes below saturate to -128 in [`pack_i8`].
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn round_q8(p: __m256) -> __m256i {
    // Clamping before rounding is the same as after: the bound is an integer.
    round_q8_plain(_mm256_min_ps(_mm256_set1_ps(127.0), zero_nan(p)))
}

/// [`round_q8`] for lanes known to be numbers below 127.5 in magnitude: `trunc(p +
/// copysign(0.49999997, p))`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn round_q8_plain(p: __m256) -> __m256i {
    let below_half = _mm256_or_ps(_mm256_and_ps(p, _mm256_set1_ps(SIGN)), _mm256_set1_ps(BELOW_HALF));
    _mm256_cvttps_epi32(_mm256_add_ps(p, below_half))
}

/// `(t as i8).min(top)` per lane for an integer `top` below 128, before the saturating pack (as
/// [`round_q8`]): 15 for Q4, 31 for Q5_0.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn truncate_at_most(t: __m256, top: f32) -> __m256i {
    _mm256_cvttps_epi32(_mm256_min_ps(_mm256_set1_ps(top), zero_nan(t)))
}

/// `(t as u8).min(31)` per lane: both ends clamped in f32, NaN to 0 (`max_ps` returns its second
/// operand when the first is NaN).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn truncate_q5_1(t: __m256) -> __m256i {
    _mm256_cvttps_epi32(_mm256_min_ps(_mm256_set1_ps(31.0), _mm256_max_ps(t, _mm256_setzero_ps())))
}

/// Packs a block's four i32 vectors to i8 with signed saturation. The 32-bit groups come out as
/// elements `[0..4, 8..12, 16..20, 24..28, 4..8, 12..16, 20..24, 28..32]`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn pack_i8(q: [__m256i; 4]) -> __m256i {
    _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]))
}

/// The 32 bytes of [`pack_i8`] in element order.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn in_order(packed: __m256i) -> __m256i {
    _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// The 16 bytes `q[j] as u8 | (q[j + 16] as u8) << 4` (wrapping u8 arithmetic, as the scalar
/// code) of a block's four i32 vectors.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn pack_nibbles(q: [__m256i; 4]) -> __m128i {
    pair_nibbles(pack_i8(q))
}

/// The 16 bytes `b[j] | (b[j + 16] << 4)` of a block's 32 bytes `b` in [`pack_i8`] order.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn pair_nibbles(bytes: __m256i) -> __m128i {
    // Each 128-bit half of `pack_i8` holds 8 elements below 16, then their partners 16 further.
    let high = _mm256_and_si256(_mm256_slli_epi16::<4>(_mm256_srli_si256::<8>(bytes)), _mm256_set1_epi8(0xf0u8 as i8));
    let packed = _mm256_or_si256(bytes, high);
    // The low 8 bytes of each half are output bytes [0..4, 8..12] and [4..8, 12..16].
    _mm_unpacklo_epi32(_mm256_castsi256_si128(packed), _mm256_extracti128_si256::<1>(packed))
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn store_32(dst: &mut [i8; QK], v: __m256i) {
    // SAFETY: `dst` is 32 writable bytes and the store is unaligned.
    unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), v) }
}

/// Q5 packing of a block's 32 bytes `q` in [`pack_i8`] order, as the scalar `pack_q5`: `qs[j] =
/// (q[j] & 15) | (q[j + 16] & 15) << 4`, and `qh` ORs `(q[j] >> 4) << j` over the elements (bit
/// `j` is the fifth bit of element `j` when every byte is below 32).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn pack_q5(q: __m256i) -> ([u8; 4], __m128i) {
    let qs = pair_nibbles(_mm256_and_si256(q, _mm256_set1_epi8(0x0f)));
    let ordered = in_order(q);
    // Shifting 16-bit lanes left by 3 moves bit 4 of every byte to its bit 7.
    let fifth_bits = _mm256_movemask_epi8(_mm256_slli_epi16::<3>(ordered)) as u32;
    let qh = if _mm256_movemask_epi8(ordered) == 0 { fifth_bits } else { spilled_high_bits(ordered) };
    (qh.to_le_bytes(), qs)
}

/// `qh` of [`pack_q5`] when some byte is 128 or more (only Q5_0, from negative `as i8` values):
/// bits 4 to 7 of byte `j` land on bits `j` to `j + 3`, the ones past bit 31 dropped.
#[target_feature(enable = "avx2,fma,f16c")]
#[cold]
fn spilled_high_bits(ordered: __m256i) -> u32 {
    let bit_4 = _mm256_movemask_epi8(_mm256_slli_epi16::<3>(ordered)) as u32;
    let bit_5 = _mm256_movemask_epi8(_mm256_slli_epi16::<2>(ordered)) as u32;
    let bit_6 = _mm256_movemask_epi8(_mm256_slli_epi16::<1>(ordered)) as u32;
    let bit_7 = _mm256_movemask_epi8(ordered) as u32;
    bit_4 | (bit_5 << 1) | (bit_6 << 2) | (bit_7 << 3)
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn store_16(dst: &mut [u8; QK / 2], v: __m128i) {
    // SAFETY: `dst` is 16 writable bytes and the store is unaligned.
    unsafe { _mm_storeu_si128(dst.as_mut_ptr().cast(), v) }
}

/// Eight bytes widened to i32 lanes, sign- or zero-extended.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load_8_bytes(bytes: &[u8; 8]) -> __m128i {
    // SAFETY: `bytes` is 8 readable bytes; `movq` has no alignment requirement.
    unsafe { _mm_loadl_epi64(bytes.as_ptr().cast()) }
}

// ---------------------------------------------------------------------------------------------
// Quantizers.

/// How many groups ahead the quantizers prefetch: each group is a long dependency chain
/// (reductions, two divisions, rounding), which leaves the hardware prefetchers too few misses in
/// flight to stream from DRAM.
const PREFETCH_GROUPS: usize = 4;

/// Prefetches group `group` of `src` into L1, if it exists.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn prefetch_group(src: &[f32], group: usize) {
    if let Some(x) = src.get(group * GROUP_LEN..(group + 1) * GROUP_LEN) {
        for line in x.chunks_exact(16) {
            _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast());
        }
    }
}

/// Generates a slice quantizer over groups of [`GROUP`] blocks, padding the last group.
macro_rules! group_quantizer {
    ($( $name:ident: $block:ty = $group:ident; )*) => {$(
        /// Checks the lengths, then quantizes group by group.
        #[target_feature(enable = "avx2,fma,f16c")]
        fn $name(src: &[f32], dst: &mut [$block]) {
            assert_eq!(src.len(), dst.len() * QK, "source length must be 32 times the block count");
            let (groups, src_tail) = src.as_chunks::<GROUP_LEN>();
            let (dst_groups, dst_tail) = dst.as_chunks_mut::<GROUP>();
            for (i, (x, out)) in groups.iter().zip(dst_groups).enumerate() {
                prefetch_group(src, i + PREFETCH_GROUPS);
                $group(x, out);
            }
            if !dst_tail.is_empty() {
                // Padding with zeros keeps one code path; the padding blocks are discarded.
                let mut x = [0.0f32; GROUP_LEN];
                x[..src_tail.len()].copy_from_slice(src_tail);
                let mut out = [<$block>::zeroed(); GROUP];
                $group(&x, &mut out);
                dst_tail.copy_from_slice(&out[..dst_tail.len()]);
            }
        }
    )*};
}

group_quantizer! {
    quantize_q8_0: BlockQ8_0 = quantize_group_q8_0;
    quantize_q8_1: BlockQ8_1 = quantize_group_q8_1;
    quantize_q4_0: BlockQ4_0 = quantize_group_q4_0;
    quantize_q4_1: BlockQ4_1 = quantize_group_q4_1;
    quantize_q5_0: BlockQ5_0 = quantize_group_q5_0;
    quantize_q5_1: BlockQ5_1 = quantize_group_q5_1;
}

/// The per-block scales of Q8_0 and Q8_1, one block per lane.
struct Q8Scales {
    /// `amax / 127`, unrounded.
    d: __m256,
    /// `1 / d`, or 0.
    id: __m256,
    /// Whether every `x * id` is a number within 127.5 of zero, so that rounding needs no clamp
    /// and no NaN handling: all inputs finite, and every `d` zero or normal. (With a normal `d`,
    /// `|x * id| <= amax * id <= 127 * (1 + 2^-23)`; a subnormal `d` is imprecise or has an
    /// infinite inverse.)
    plain: bool,
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q8_scales(x: &[f32; GROUP_LEN]) -> Q8Scales {
    // The absolute maximum as an integer maximum of the magnitude bits: finite magnitudes order
    // as their bits do, and NaN sorts above infinity, which flags non-finite input for free.
    let magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let mut amax = [_mm256_setzero_ps(); GROUP];
    for (b, amax) in amax.iter_mut().enumerate() {
        for v in block_vectors(x, b) {
            *amax = max_i32(_mm256_and_ps(v, magnitude), *amax);
        }
    }
    let amax = reduce_max_i32(amax);
    let non_finite = _mm256_cmpgt_epi32(_mm256_castps_si256(amax), _mm256_set1_epi32(0x7f7f_ffff));
    let finite = _mm256_movemask_epi8(non_finite) == 0;
    let amax = if finite { amax } else { amax_skipping_nan(x) };
    let d = _mm256_div_ps(amax, _mm256_set1_ps(127.0));
    let subnormal = _mm256_and_ps(
        _mm256_cmp_ps::<_CMP_NEQ_OQ>(d, _mm256_setzero_ps()),
        _mm256_cmp_ps::<_CMP_LT_OQ>(d, _mm256_set1_ps(f32::MIN_POSITIVE)),
    );
    Q8Scales { d, id: scale_inverse(d), plain: finite && _mm256_movemask_ps(subnormal) == 0 }
}

/// The absolute maximum per block as the scalar fold takes it, NaN skipped, for groups holding
/// NaN or infinities.
#[target_feature(enable = "avx2,fma,f16c")]
#[cold]
fn amax_skipping_nan(x: &[f32; GROUP_LEN]) -> __m256 {
    let magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let mut amax = [_mm256_setzero_ps(); GROUP];
    for (b, amax) in amax.iter_mut().enumerate() {
        for v in block_vectors(x, b) {
            // `max_ps(v, acc)` returns `acc` when `v` is NaN, as `f32::max` skips NaN.
            *amax = _mm256_max_ps(_mm256_and_ps(v, magnitude), *amax);
        }
    }
    reduce_max(amax)
}

/// The 32 values of block `b` as i8 in pack order (see [`pack_i8`]).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q8_values(x: &[f32; GROUP_LEN], b: usize, scales: &Q8Scales) -> __m256i {
    let id = broadcast(scales.id, b);
    let v = block_vectors(x, b);
    let p = [_mm256_mul_ps(v[0], id), _mm256_mul_ps(v[1], id), _mm256_mul_ps(v[2], id), _mm256_mul_ps(v[3], id)];
    if scales.plain {
        pack_i8([round_q8_plain(p[0]), round_q8_plain(p[1]), round_q8_plain(p[2]), round_q8_plain(p[3])])
    } else {
        pack_i8([round_q8(p[0]), round_q8(p[1]), round_q8(p[2]), round_q8(p[3])])
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_group_q8_0(x: &[f32; GROUP_LEN], out: &mut [BlockQ8_0; GROUP]) {
    let scales = q8_scales(x);
    let d = f16_bits(scales.d);
    for (b, block) in out.iter_mut().enumerate() {
        store_32(&mut block.qs, in_order(q8_values(x, b, &scales)));
        block.d = f16::from_bits(d[b]);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_group_q8_1(x: &[f32; GROUP_LEN], out: &mut [BlockQ8_1; GROUP]) {
    let scales = q8_scales(x);
    let (ones_u8, ones_i16) = (_mm256_set1_epi8(1), _mm256_set1_epi16(1));
    let mut sums = [_mm256_setzero_ps(); GROUP];
    for (b, (block, sum)) in out.iter_mut().zip(&mut sums).enumerate() {
        let q = q8_values(x, b, &scales);
        *sum = _mm256_castsi256_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(ones_u8, q), ones_i16));
        store_32(&mut block.qs, in_order(q));
    }
    // `sum as f32 * d` with the unrounded `d`; the sums (at most 32 * 128) convert exactly.
    let s = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_castps_si256(reduce_add_i32(sums))), scales.d);
    let (d, s) = (f16_bits(scales.d), f16_bits(s));
    for (b, block) in out.iter_mut().enumerate() {
        block.d = f16::from_bits(d[b]);
        block.s = f16::from_bits(s[b]);
    }
}

/// Per block, the value of largest magnitude with its sign, NaN skipped, as the scalar
/// `signed_absmax` scan finds it (Q4_0 and Q5_0).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn signed_absmax(x: &[f32; GROUP_LEN]) -> __m256 {
    // The scalar code keeps the first value of largest magnitude, with its sign. Per block, the
    // largest value `high` (at least 0) and the smallest `low` (at most 0), NaN skipped, decide
    // it unless `high == -low != 0`: then both signs occur at the top and order decides.
    let zero = _mm256_setzero_ps();
    let (mut highs, mut lows) = ([zero; GROUP], [zero; GROUP]);
    for (b, (high, low)) in highs.iter_mut().zip(&mut lows).enumerate() {
        for v in block_vectors(x, b) {
            *high = _mm256_max_ps(v, *high);
            *low = _mm256_min_ps(v, *low);
        }
    }
    let (high, low) = (reduce_max(highs), reduce_min(lows));
    let minus_low = _mm256_xor_ps(low, _mm256_set1_ps(SIGN));
    let positive = _mm256_cmp_ps::<_CMP_GT_OQ>(high, minus_low);
    let negative = _mm256_cmp_ps::<_CMP_GT_OQ>(minus_low, high);
    // Neither: all zero (the scalar `max` stays +0.0) or a tie.
    let mut max = _mm256_or_ps(_mm256_and_ps(positive, high), _mm256_and_ps(negative, low));
    let tie = _mm256_andnot_ps(_mm256_or_ps(positive, negative), _mm256_cmp_ps::<_CMP_NEQ_OQ>(high, zero));
    let ties = _mm256_movemask_ps(tie);
    if ties != 0 {
        let mut max_lanes: [f32; 8] = bytemuck::cast(max);
        first_of_magnitude(x, ties, bytemuck::cast(high), &mut max_lanes);
        max = bytemuck::cast(max_lanes);
    }
    max
}

#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_group_q4_0(x: &[f32; GROUP_LEN], out: &mut [BlockQ4_0; GROUP]) {
    let d = _mm256_div_ps(signed_absmax(x), _mm256_set1_ps(-8.0));
    let id = scale_inverse(d);
    let d = f16_bits(d);
    let bias = _mm256_set1_ps(8.5);
    for (b, block) in out.iter_mut().enumerate() {
        let id = broadcast(id, b);
        let v = block_vectors(x, b);
        let q = |v: __m256| truncate_at_most(_mm256_add_ps(_mm256_mul_ps(v, id), bias), 15.0);
        store_16(&mut block.qs, pack_nibbles([q(v[0]), q(v[1]), q(v[2]), q(v[3])]));
        block.d = f16::from_bits(d[b]);
    }
}

/// For each block flagged in `ties`, the first value whose magnitude is `amax`, as the scalar
/// scan finds it.
#[cold]
fn first_of_magnitude(x: &[f32; GROUP_LEN], ties: i32, amax: [f32; 8], max: &mut [f32; 8]) {
    let (blocks, _) = x.as_chunks::<QK>();
    for (b, block) in blocks.iter().enumerate() {
        if ties & (1 << b) != 0 {
            max[b] = *block.iter().find(|v| v.abs() == amax[b]).expect("the largest magnitude occurs in its block");
        }
    }
}

/// Per block, the minimum and maximum as the scalar `min_max` fold finds them, NaN skipped and
/// the first of `+0.0` and `-0.0` kept (Q4_1 and Q5_1).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn min_max(x: &[f32; GROUP_LEN]) -> (__m256, __m256) {
    // `min_ps(v, acc)` is `if v < acc { v } else { acc }`, the scalar fold's step, NaN skipped.
    let (mut lows, mut highs) = ([_mm256_set1_ps(f32::MAX); GROUP], [_mm256_set1_ps(-f32::MAX); GROUP]);
    for (b, (low, high)) in lows.iter_mut().zip(&mut highs).enumerate() {
        for v in block_vectors(x, b) {
            *low = _mm256_min_ps(v, *low);
            *high = _mm256_max_ps(v, *high);
        }
    }
    let (mut min, mut max) = (reduce_min(lows), reduce_max(highs));
    // The fold keeps the first of equal values; only a zero extreme can differ (+0.0 or -0.0).
    let zero = _mm256_setzero_ps();
    let zeros = _mm256_movemask_ps(_mm256_or_ps(
        _mm256_cmp_ps::<_CMP_EQ_OQ>(min, zero),
        _mm256_cmp_ps::<_CMP_EQ_OQ>(max, zero),
    ));
    if zeros != 0 {
        let (mut min_lanes, mut max_lanes): ([f32; 8], [f32; 8]) = (bytemuck::cast(min), bytemuck::cast(max));
        first_zeros(x, zeros, &mut min_lanes, &mut max_lanes);
        (min, max) = (bytemuck::cast(min_lanes), bytemuck::cast(max_lanes));
    }
    (min, max)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_group_q4_1(x: &[f32; GROUP_LEN], out: &mut [BlockQ4_1; GROUP]) {
    let (min, max) = min_max(x);
    let d = _mm256_div_ps(_mm256_sub_ps(max, min), _mm256_set1_ps(15.0));
    let id = scale_inverse(d);
    let (d, m) = (f16_bits(d), f16_bits(min));
    let half = _mm256_set1_ps(0.5);
    for (b, block) in out.iter_mut().enumerate() {
        let (min, id) = (broadcast(min, b), broadcast(id, b));
        let v = block_vectors(x, b);
        let q = |v: __m256| truncate_at_most(_mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(v, min), id), half), 15.0);
        store_16(&mut block.qs, pack_nibbles([q(v[0]), q(v[1]), q(v[2]), q(v[3])]));
        block.d = f16::from_bits(d[b]);
        block.m = f16::from_bits(m[b]);
    }
}

/// For each block flagged in `zeros`, replaces a zero minimum or maximum by the block's first
/// zero, sign included, as the scalar fold keeps it.
#[cold]
fn first_zeros(x: &[f32; GROUP_LEN], zeros: i32, min: &mut [f32; 8], max: &mut [f32; 8]) {
    let (blocks, _) = x.as_chunks::<QK>();
    for (b, block) in blocks.iter().enumerate() {
        if zeros & (1 << b) != 0 {
            let first = *block.iter().find(|&&v| v == 0.0).expect("a zero extreme occurs in its block");
            if min[b] == 0.0 {
                min[b] = first;
            }
            if max[b] == 0.0 {
                max[b] = first;
            }
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_group_q5_0(x: &[f32; GROUP_LEN], out: &mut [BlockQ5_0; GROUP]) {
    let d = _mm256_div_ps(signed_absmax(x), _mm256_set1_ps(-16.0));
    let id = scale_inverse(d);
    let d = f16_bits(d);
    let bias = _mm256_set1_ps(16.5);
    for (b, block) in out.iter_mut().enumerate() {
        let id = broadcast(id, b);
        let v = block_vectors(x, b);
        let q = |v: __m256| truncate_at_most(_mm256_add_ps(_mm256_mul_ps(v, id), bias), 31.0);
        let (qh, qs) = pack_q5(pack_i8([q(v[0]), q(v[1]), q(v[2]), q(v[3])]));
        store_16(&mut block.qs, qs);
        block.qh = qh;
        block.d = f16::from_bits(d[b]);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_group_q5_1(x: &[f32; GROUP_LEN], out: &mut [BlockQ5_1; GROUP]) {
    let (min, max) = min_max(x);
    let d = _mm256_div_ps(_mm256_sub_ps(max, min), _mm256_set1_ps(31.0));
    let id = scale_inverse(d);
    let (d, m) = (f16_bits(d), f16_bits(min));
    let half = _mm256_set1_ps(0.5);
    for (b, block) in out.iter_mut().enumerate() {
        let (min, id) = (broadcast(min, b), broadcast(id, b));
        let v = block_vectors(x, b);
        let q = |v: __m256| truncate_q5_1(_mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(v, min), id), half));
        let (qh, qs) = pack_q5(pack_i8([q(v[0]), q(v[1]), q(v[2]), q(v[3])]));
        store_16(&mut block.qs, qs);
        block.qh = qh;
        block.d = f16::from_bits(d[b]);
        block.m = f16::from_bits(m[b]);
    }
}

// ---------------------------------------------------------------------------------------------
// Dequantizers.
//
// Each writes through [`put`]: plain stores, or, for an output of at least [`STREAM_MIN_BYTES`]
// starting on a 16-byte boundary, non-temporal ones. An output that large leaves the caches
// anyway; a plain store first reads each line it writes (DRAM then carries the output twice), a
// streaming one does not, and the values are the same.

/// Outputs from this size on are written with streaming stores (half the 32 MiB L3).
const STREAM_MIN_BYTES: usize = 16 << 20;

/// Whether [`put`] may stream into `dst`.
fn streams(dst: &[f32]) -> bool {
    size_of_val(dst) >= STREAM_MIN_BYTES && dst.as_ptr().addr().is_multiple_of(16)
}

/// Stores eight lanes at `y`: streaming (two 16-byte non-temporal stores) when `STREAM`.
///
/// # Safety
/// With `STREAM`, `y` is 16-byte aligned.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn put<const STREAM: bool>(y: &mut [f32; 8], v: __m256) {
    if STREAM {
        // SAFETY: `y` is eight writable f32s, 16-byte aligned (the caller's contract).
        unsafe {
            _mm_stream_ps(y.as_mut_ptr(), _mm256_castps256_ps128(v));
            _mm_stream_ps(y.as_mut_ptr().add(4), _mm256_extractf128_ps::<1>(v));
        }
    } else {
        store(y, v);
    }
}

/// One dequantizer body, with plain or streaming stores.
type Dequantizer<B> = unsafe fn(&[B], &mut [f32]);

/// Runs `dequantize::<true>` when `dst` [`streams`], then fences the streaming stores, else
/// `dequantize::<false>`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn dispatch_stores<B>(src: &[B], dst: &mut [f32], dequantize: [Dequantizer<B>; 2]) {
    if streams(dst) {
        // SAFETY: `dst` starts on a 16-byte boundary and every store is at a multiple of 8
        // floats from it; AVX2 is available (this function's features).
        unsafe { dequantize[1](src, dst) };
        _mm_sfence();
    } else {
        // SAFETY: plain stores; AVX2 is available.
        unsafe { dequantize[0](src, dst) };
    }
}

/// # Safety
/// AVX2, FMA and F16C are available; with `STREAM`, `dst` starts on a 16-byte boundary.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequantize_q8_0_with<const STREAM: bool>(src: &[BlockQ8_0], dst: &mut [f32]) {
    assert_eq!(dst.len(), src.len() * QK, "destination length must be 32 times the block count");
    let (dst, _) = dst.as_chunks_mut::<QK>();
    for (block, y) in src.iter().zip(dst) {
        let d = broadcast_f16(block.d);
        let qs: &[u8; QK] = bytemuck::cast_ref(&block.qs);
        let (q, _) = qs.as_chunks::<8>();
        let (y, _) = y.as_chunks_mut::<8>();
        for (q, y) in q.iter().zip(y) {
            let q = _mm256_cvtepi8_epi32(load_8_bytes(q));
            // SAFETY: with `STREAM`, `dst` is 16-byte aligned (the contract) and `y` a
            // multiple of 8 floats into it.
            unsafe { put::<STREAM>(y, _mm256_mul_ps(_mm256_cvtepi32_ps(q), d)) };
        }
    }
}

/// The 16 nibbles of eight packed bytes as i32 lanes: (elements `j`, elements `j + 16`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn nibbles(bytes: &[u8; 8]) -> (__m256i, __m256i) {
    let q = _mm256_cvtepu8_epi32(load_8_bytes(bytes));
    (_mm256_and_si256(q, _mm256_set1_epi32(0x0f)), _mm256_srli_epi32::<4>(q))
}

/// # Safety
/// AVX2, FMA and F16C are available; with `STREAM`, `dst` starts on a 16-byte boundary.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequantize_q4_0_with<const STREAM: bool>(src: &[BlockQ4_0], dst: &mut [f32]) {
    assert_eq!(dst.len(), src.len() * QK, "destination length must be 32 times the block count");
    let (dst, _) = dst.as_chunks_mut::<QK>();
    let eight = _mm256_set1_epi32(8);
    for (block, y) in src.iter().zip(dst) {
        let d = broadcast_f16(block.d);
        let (q, _) = block.qs.as_chunks::<8>();
        let (y, _) = y.as_chunks_mut::<8>();
        for half in 0..2 {
            let (low, high) = nibbles(&q[half]);
            // SAFETY: with `STREAM`, `dst` is 16-byte aligned (the contract) and `y` a
            // multiple of 8 floats into it.
            unsafe {
                put::<STREAM>(&mut y[half], _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(low, eight)), d));
                put::<STREAM>(&mut y[half + 2], _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(high, eight)), d));
            }
        }
    }
}

/// # Safety
/// AVX2, FMA and F16C are available; with `STREAM`, `dst` starts on a 16-byte boundary.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequantize_q4_1_with<const STREAM: bool>(src: &[BlockQ4_1], dst: &mut [f32]) {
    assert_eq!(dst.len(), src.len() * QK, "destination length must be 32 times the block count");
    let (dst, _) = dst.as_chunks_mut::<QK>();
    for (block, y) in src.iter().zip(dst) {
        let (d, m) = (broadcast_f16(block.d), broadcast_f16(block.m));
        let (q, _) = block.qs.as_chunks::<8>();
        let (y, _) = y.as_chunks_mut::<8>();
        for half in 0..2 {
            let (low, high) = nibbles(&q[half]);
            // `q * d + m`: two roundings, as the scalar code, never an FMA.
            // SAFETY: with `STREAM`, `dst` is 16-byte aligned (the contract) and `y` a
            // multiple of 8 floats into it.
            unsafe {
                put::<STREAM>(&mut y[half], _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(low), d), m));
                put::<STREAM>(&mut y[half + 2], _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(high), d), m));
            }
        }
    }
}

/// A Q5 block's 32 values `nibble | fifth_bit << 4` as i32 lanes, in element order.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q5_values(qh: [u8; 4], qs: &[u8; QK / 2]) -> [__m256i; 4] {
    let qh = _mm256_set1_epi32(u32::from_le_bytes(qh) as i32);
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    // Bit `j` of `qh`, moved to bit 4, for the eight elements from `first`.
    let fifth_bits = |first: i32| {
        let bit = _mm256_srlv_epi32(qh, _mm256_add_epi32(lanes, _mm256_set1_epi32(first)));
        _mm256_slli_epi32::<4>(_mm256_and_si256(bit, _mm256_set1_epi32(1)))
    };
    let (q, _) = qs.as_chunks::<8>();
    let (low_0, high_0) = nibbles(&q[0]);
    let (low_1, high_1) = nibbles(&q[1]);
    [
        _mm256_or_si256(low_0, fifth_bits(0)),
        _mm256_or_si256(low_1, fifth_bits(8)),
        _mm256_or_si256(high_0, fifth_bits(16)),
        _mm256_or_si256(high_1, fifth_bits(24)),
    ]
}

/// # Safety
/// AVX2, FMA and F16C are available; with `STREAM`, `dst` starts on a 16-byte boundary.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequantize_q5_0_with<const STREAM: bool>(src: &[BlockQ5_0], dst: &mut [f32]) {
    assert_eq!(dst.len(), src.len() * QK, "destination length must be 32 times the block count");
    let (dst, _) = dst.as_chunks_mut::<QK>();
    let sixteen = _mm256_set1_epi32(16);
    for (block, y) in src.iter().zip(dst) {
        let d = broadcast_f16(block.d);
        let (y, _) = y.as_chunks_mut::<8>();
        for (q, y) in q5_values(block.qh, &block.qs).into_iter().zip(y) {
            // SAFETY: with `STREAM`, `dst` is 16-byte aligned (the contract) and `y` a
            // multiple of 8 floats into it.
            unsafe { put::<STREAM>(y, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q, sixteen)), d)) };
        }
    }
}

/// # Safety
/// AVX2, FMA and F16C are available; with `STREAM`, `dst` starts on a 16-byte boundary.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequantize_q5_1_with<const STREAM: bool>(src: &[BlockQ5_1], dst: &mut [f32]) {
    assert_eq!(dst.len(), src.len() * QK, "destination length must be 32 times the block count");
    let (dst, _) = dst.as_chunks_mut::<QK>();
    for (block, y) in src.iter().zip(dst) {
        let (d, m) = (broadcast_f16(block.d), broadcast_f16(block.m));
        let (y, _) = y.as_chunks_mut::<8>();
        for (q, y) in q5_values(block.qh, &block.qs).into_iter().zip(y) {
            // `q * d + m`: two roundings, as the scalar code, never an FMA.
            // SAFETY: with `STREAM`, `dst` is 16-byte aligned (the contract) and `y` a
            // multiple of 8 floats into it.
            unsafe { put::<STREAM>(y, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(q), d), m)) };
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dequantize_q8_0(src: &[BlockQ8_0], dst: &mut [f32]) {
    dispatch_stores(src, dst, [dequantize_q8_0_with::<false>, dequantize_q8_0_with::<true>]);
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dequantize_q4_0(src: &[BlockQ4_0], dst: &mut [f32]) {
    dispatch_stores(src, dst, [dequantize_q4_0_with::<false>, dequantize_q4_0_with::<true>]);
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dequantize_q4_1(src: &[BlockQ4_1], dst: &mut [f32]) {
    dispatch_stores(src, dst, [dequantize_q4_1_with::<false>, dequantize_q4_1_with::<true>]);
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dequantize_q5_0(src: &[BlockQ5_0], dst: &mut [f32]) {
    dispatch_stores(src, dst, [dequantize_q5_0_with::<false>, dequantize_q5_0_with::<true>]);
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dequantize_q5_1(src: &[BlockQ5_1], dst: &mut [f32]) {
    dispatch_stores(src, dst, [dequantize_q5_1_with::<false>, dequantize_q5_1_with::<true>]);
}

// ---------------------------------------------------------------------------------------------
// Per-token int8 activations (`crate::linear`).

/// Values per activation iteration: four vectors, packed to one 32-byte store.
const ACTIVATION_CHUNK: usize = 32;

/// Folds `|v|` of 32 values into four accumulators; `max_ps(|v|, acc)` keeps `acc` when `v` is
/// NaN, as `f32::max` skips NaN.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn absmax_step(x: &[f32; ACTIVATION_CHUNK], acc: &mut [__m256; 4]) {
    let magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let (v, _) = x.as_chunks::<8>();
    for (v, acc) in v.iter().zip(acc) {
        *acc = _mm256_max_ps(_mm256_and_ps(load(v), magnitude), *acc);
    }
}

/// `v` times, or divided by, the broadcast `factor`, as [`crate::linear::activation_factor`] says.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn activation_quotient(v: __m256, factor: __m256, multiply: bool) -> __m256 {
    if multiply { _mm256_mul_ps(v, factor) } else { _mm256_div_ps(v, factor) }
}

/// The 32 values `activation_quotient(x).round_ties_even().clamp(-127.0, 127.0) as i8`, in order.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn activation_values(x: &[f32; ACTIVATION_CHUNK], factor: __m256, multiply: bool) -> __m256i {
    let (v, _) = x.as_chunks::<8>();
    let (low, high) = (_mm256_set1_ps(-127.0), _mm256_set1_ps(127.0));
    let q = |v: &[f32; 8]| {
        let rounded = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(activation_quotient(
            load(v),
            factor,
            multiply,
        ));
        // NaN becomes 0 (`NaN as i8`) before the clamp, which would otherwise keep a bound.
        _mm256_cvttps_epi32(_mm256_min_ps(high, _mm256_max_ps(low, zero_nan(rounded))))
    };
    in_order(pack_i8([q(&v[0]), q(&v[1]), q(&v[2]), q(&v[3])]))
}

/// [`crate::linear::quantize_activations_i8`]: 32 values per iteration, the last, partial chunk
/// padded with zeros (which change neither the maximum nor the kept values).
#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_activations_i8(x: &[f32], dst: &mut [i8]) -> f32 {
    assert_eq!(x.len(), dst.len(), "quantize_activations_i8: source and destination lengths differ");
    let (chunks, x_tail) = x.as_chunks::<ACTIVATION_CHUNK>();
    let mut padded = [0.0f32; ACTIVATION_CHUNK];
    padded[..x_tail.len()].copy_from_slice(x_tail);

    let mut acc = [_mm256_setzero_ps(); 4];
    for chunk in chunks {
        absmax_step(chunk, &mut acc);
    }
    absmax_step(&padded, &mut acc);
    let acc = _mm256_max_ps(_mm256_max_ps(acc[0], acc[1]), _mm256_max_ps(acc[2], acc[3]));
    let lanes: [f32; 8] = bytemuck::cast(acc);
    let amax = lanes.into_iter().fold(0.0f32, f32::max);

    let scale = crate::linear::activation_scale(amax, 127.0);
    if scale == 0.0 {
        dst.fill(0);
        return 0.0;
    }
    let (factor, multiply) = crate::linear::activation_factor(scale);
    let factor = _mm256_set1_ps(factor);
    let (dst_chunks, dst_tail) = dst.as_chunks_mut::<ACTIVATION_CHUNK>();
    for (x, q) in chunks.iter().zip(dst_chunks) {
        store_32(q, activation_values(x, factor, multiply));
    }
    if !dst_tail.is_empty() {
        let mut q = [0i8; ACTIVATION_CHUNK];
        store_32(&mut q, activation_values(&padded, factor, multiply));
        dst_tail.copy_from_slice(&q[..dst_tail.len()]);
    }
    scale
}

/// [`crate::linear::quantize_activations_i16`] (`qmax` 127, i16 values) and
/// [`crate::linear::quantize_activations_i7`] (`qmax` 63, i8 values): 16 values per step (two
/// vectors, packed to i16 together), the scaled values computed again in the second pass rather
/// than stored (the same product gives the same bits), the last partial step by the scalar
/// formulas.
#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_activations_scaled<V: ActivationValue>(
    x: &[f32],
    input_scale: Option<&[f32]>,
    qmax: i16,
    dst: &mut [V],
) -> f32 {
    crate::linear::check_wide_lengths(x, input_scale, dst.len());
    const STEP: usize = 16;
    let body = x.len() / STEP * STEP;
    let scaled = |i: usize| -> __m256 {
        // SAFETY: `i + 8 <= body <= x.len()`, and `input_scale` has `x.len()` values.
        unsafe {
            let v = _mm256_loadu_ps(x.as_ptr().add(i));
            match input_scale {
                Some(input_scale) => _mm256_mul_ps(v, _mm256_loadu_ps(input_scale.as_ptr().add(i))),
                None => v,
            }
        }
    };
    let value = |i: usize| input_scale.map_or(x[i], |input_scale| x[i] * input_scale[i]);
    let magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    // `max(|v|, acc)` keeps `acc` where `v` is NaN, as `f32::max` skips NaN.
    let (mut acc_low, mut acc_high) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for i in (0..body).step_by(STEP) {
        acc_low = _mm256_max_ps(_mm256_and_ps(scaled(i), magnitude), acc_low);
        acc_high = _mm256_max_ps(_mm256_and_ps(scaled(i + 8), magnitude), acc_high);
    }
    let lanes: [f32; 8] = bytemuck::cast(_mm256_max_ps(acc_low, acc_high));
    let amax = (body..x.len()).fold(lanes.into_iter().fold(0.0f32, f32::max), |amax, i| amax.max(value(i).abs()));
    let scale = crate::linear::activation_scale(amax, f32::from(qmax));
    if scale == 0.0 {
        dst.fill(V::from(0));
        return 0.0;
    }
    let (factor, multiply) = crate::linear::activation_factor(scale);
    let factor_vector = _mm256_set1_ps(factor);
    // Every finite quotient is small (about 127 at most, twice that for subnormal scales, whose
    // rounding is coarse), so converting with the default round-to-nearest-even gives the
    // rounded value; the one lane value it cannot give, NaN's `i32::MIN` (only from NaN or `inf *
    // 0`), saturates to `i16::MIN` in the pack and becomes 0 (`NaN as i8`) there. The clamp to
    // -qmax..=qmax is then done on i16 lanes, 16 at a time.
    let nan_lanes = _mm256_set1_epi16(i16::MIN);
    let (low, high) = (_mm256_set1_epi16(-qmax), _mm256_set1_epi16(qmax));
    let quantize = |v: __m256| _mm256_cvtps_epi32(activation_quotient(v, factor_vector, multiply));
    for i in (0..body).step_by(STEP) {
        // `packs` interleaves the two vectors' 128-bit halves; the permutation restores order.
        let packed = _mm256_packs_epi32(quantize(scaled(i)), quantize(scaled(i + 8)));
        let packed = _mm256_andnot_si256(_mm256_cmpeq_epi16(packed, nan_lanes), packed);
        let clamped = _mm256_min_epi16(high, _mm256_max_epi16(low, packed));
        let ordered = _mm256_permute4x64_epi64::<0b11_01_10_00>(clamped);
        // SAFETY: `i + 16 <= body <= dst.len()`.
        unsafe { V::store_16(dst.as_mut_ptr().add(i), ordered) };
    }
    let qmax = f32::from(qmax);
    for (i, dst) in dst.iter_mut().enumerate().skip(body) {
        let quotient = crate::linear::activation_quotient(value(i), (factor, multiply));
        *dst = V::from(quotient.round_ties_even().clamp(-qmax, qmax) as i8);
    }
    scale
}

impl ActivationValue for i16 {
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn store_16(dst: *mut i16, values: __m256i) {
        // SAFETY: the caller's 16 writable values; the store is unaligned.
        unsafe { _mm256_storeu_si256(dst.cast(), values) }
    }
}

impl ActivationValue for i8 {
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn store_16(dst: *mut i8, values: __m256i) {
        // Every lane is within -127..=127, so the pack keeps it.
        let bytes = _mm_packs_epi16(_mm256_castsi256_si128(values), _mm256_extracti128_si256::<1>(values));
        // SAFETY: the caller's 16 writable values; the store is unaligned.
        unsafe { _mm_storeu_si128(dst.cast(), bytes) }
    }
}
