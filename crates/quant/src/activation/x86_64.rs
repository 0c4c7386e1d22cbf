//! AVX2 + FMA GELU and softmax, eight f32 lanes at a time, with the tail run through a padded
//! block of eight: the softmax is the scalar algorithm of the parent module, the GELU its own
//! f32 one (see the parent module's docs for both and their error bounds).

use std::arch::x86_64::*;

use super::{GELU_LOW, SOFTMAX_FLOOR};

/// Whether this CPU can run the kernels here.
pub(super) fn is_supported() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

pub(super) fn gelu(values: &mut [f32]) {
    assert!(is_supported(), "the AVX2 GELU needs AVX2 and FMA");
    // SAFETY: AVX2 and FMA were found just above.
    unsafe { gelu_avx2(values) }
}

pub(super) fn softmax(row: &mut [f32]) {
    assert!(is_supported(), "the AVX2 softmax needs AVX2 and FMA");
    // SAFETY: AVX2 and FMA were found just above.
    unsafe { softmax_avx2(row) }
}

#[target_feature(enable = "avx2,fma")]
fn gelu_avx2(values: &mut [f32]) {
    let mut chunks = values.chunks_exact_mut(8);
    for chunk in &mut chunks {
        // SAFETY: `chunk` is 8 floats, read and written unaligned.
        unsafe { _mm256_storeu_ps(chunk.as_mut_ptr(), gelu8(_mm256_loadu_ps(chunk.as_ptr()))) };
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let mut padded = [0.0f32; 8];
        padded[..tail.len()].copy_from_slice(tail);
        // SAFETY: `padded` is 8 floats.
        unsafe { _mm256_storeu_ps(padded.as_mut_ptr(), gelu8(_mm256_loadu_ps(padded.as_ptr()))) };
        tail.copy_from_slice(&padded[..tail.len()]);
    }
}

/// `|x|` is clamped here, the end of the fitted range (`x Phi(x)` rounds to `x` beyond it, and
/// `x <= GELU_LOW` is flushed to -0.0).
const GELU8_A_MAX: f32 = 8.0;
/// `R(a) = N(a) / D(a)` approximates `erfc(a / sqrt 2) exp(a^2 / 2) / 2` on `0 <= a <= 8`; `N`
/// here, lowest degree first. A (4, 5) rational fit of relative error below 1.4e-8 with the
/// coefficients as rounded to f32 (linearised least squares on 2500 Chebyshev nodes, iterated
/// towards minimax, mpmath references at 40 digits, each coefficient rounded to f32 before the
/// others were refitted). Every coefficient is positive, so Horner's rule adds no cancellation,
/// and `R(0) = 1/2` exactly.
#[allow(clippy::excessive_precision)]
const GELU8_N: [f32; 5] = [0.5, 0.417_307_08, 0.168_064_37, 0.035_611_92, 0.003_392_672_2];
/// `D(a)`, lowest degree first.
#[allow(clippy::excessive_precision)]
const GELU8_D: [f32; 6] = [1.0, 1.632_498_7, 1.138_673_4, 0.429_471_52, 0.089_282_83, 0.008_503_741];
/// `exp(r)` for `|r| <= ln 2 / 2`, lowest degree first: a degree-6 minimax fit (the first two
/// coefficients held at 1) of relative error below 3.2e-9 with f32 coefficients.
#[allow(clippy::excessive_precision)]
const GELU8_EXP: [f32; 7] = [1.0, 1.0, 0.499_999_94, 0.166_665_21, 0.041_668_277, 0.008_368_687, 0.001_381_982_6];
/// Adding and subtracting this (`1.5 * 2^23`) rounds an f32 of magnitude below 2^22 to an
/// integer, leaving it in the low mantissa bits.
const ROUND_MAGIC_F32: f32 = 12_582_912.0;

/// `x Phi(x)` in eight f32 lanes, by the f32 algorithm of the module docs.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn gelu8(x: __m256) -> __m256 {
    let sign_bit = _mm256_set1_ps(-0.0);
    let a = _mm256_min_ps(_mm256_andnot_ps(sign_bit, x), _mm256_set1_ps(GELU8_A_MAX));
    // a^2 = high + low exactly (an FMA recovers the product's rounding error), so that the
    // exponent -a^2 / 2 is not rounded: at a = 8 one f32 ulp of it would cost 2e-6 of `exp`.
    let high = _mm256_mul_ps(a, a);
    let low = _mm256_fmsub_ps(a, a, high);
    let exponent = _mm256_mul_ps(high, _mm256_set1_ps(-0.5));
    // exp(exponent - low / 2) = 2^n exp(r), n = round(exponent / ln 2).
    let magic = _mm256_set1_ps(ROUND_MAGIC_F32);
    let shifted = _mm256_fmadd_ps(exponent, _mm256_set1_ps(std::f32::consts::LOG2_E), magic);
    let n = _mm256_sub_ps(shifted, magic);
    // ln 2 in two parts: the high one has 9 significant bits, so `n * high` is exact.
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), exponent);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let r = _mm256_fmadd_ps(low, _mm256_set1_ps(-0.5), r);
    // Estrin's scheme: `(c0 + c1 r) + r^2 (c2 + c3 r) + r^4 (c4 + c5 r + c6 r^2)`, three steps
    // deep instead of Horner's six; `exp` is on the critical path of the whole function.
    let c = |i: usize| _mm256_set1_ps(GELU8_EXP[i]);
    let r2 = _mm256_mul_ps(r, r);
    let r4 = _mm256_mul_ps(r2, r2);
    let p01 = _mm256_fmadd_ps(c(1), r, c(0));
    let p23 = _mm256_fmadd_ps(c(3), r, c(2));
    let p456 = _mm256_fmadd_ps(c(6), r2, _mm256_fmadd_ps(c(5), r, c(4)));
    let e = _mm256_fmadd_ps(p456, r4, _mm256_fmadd_ps(p23, r2, p01));
    // The low bits of `shifted` hold `n` (two's complement, -47 <= n <= 0); `n + 127` is the
    // biased exponent of 2^n.
    let scale = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_castps_si256(shifted), _mm256_set1_epi32(127)));
    let e = _mm256_mul_ps(e, _mm256_castsi256_ps(scale));
    let mut numerator = _mm256_set1_ps(GELU8_N[GELU8_N.len() - 1]);
    for &c in GELU8_N.iter().rev().skip(1) {
        numerator = _mm256_fmadd_ps(numerator, a, _mm256_set1_ps(c));
    }
    let mut denominator = _mm256_set1_ps(GELU8_D[GELU8_D.len() - 1]);
    for &c in GELU8_D.iter().rev().skip(1) {
        denominator = _mm256_fmadd_ps(denominator, a, _mm256_set1_ps(c));
    }
    // Phi(-a) = erfc(a / sqrt 2) / 2, computed without cancellation; Phi(a) = 1 - Phi(-a). The
    // division depends on `a` alone, so it runs while `exp` is still being computed.
    let half_erfc = _mm256_mul_ps(e, _mm256_div_ps(numerator, denominator));
    let negative = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_setzero_ps());
    let phi = _mm256_blendv_ps(_mm256_sub_ps(_mm256_set1_ps(1.0), half_erfc), half_erfc, negative);
    let product = _mm256_mul_ps(x, phi);
    let flushed = _mm256_cmp_ps::<_CMP_LE_OQ>(x, _mm256_set1_ps(GELU_LOW as f32));
    _mm256_blendv_ps(product, sign_bit, flushed)
}

/// Degree-6 Taylor coefficients of `exp` for the f32 softmax: `1 / k!`.
const EXP_F32: [f32; 7] = [1.0, 1.0, 0.5, 1.0 / 6.0, 1.0 / 24.0, 1.0 / 120.0, 1.0 / 720.0];

/// `exp(a)` in eight f32 lanes for `-87 <= a <= 0` (0 below `SOFTMAX_FLOOR`).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn exp8(a: __m256) -> __m256 {
    let floor = _mm256_set1_ps(SOFTMAX_FLOOR);
    let below = _mm256_cmp_ps::<_CMP_LT_OQ>(a, floor);
    let clamped = _mm256_max_ps(a, floor);
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        clamped,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    // ln 2 in two parts: the high one has 16 significant bits, so `n * high` is exact.
    let r =
        _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), clamped));
    let mut p = _mm256_set1_ps(EXP_F32[EXP_F32.len() - 1]);
    for &c in EXP_F32.iter().rev().skip(1) {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let exponent = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
    let value = _mm256_mul_ps(p, _mm256_castsi256_ps(exponent));
    _mm256_andnot_ps(below, value)
}

#[target_feature(enable = "avx2,fma")]
fn softmax_avx2(row: &mut [f32]) {
    if row.is_empty() {
        return;
    }
    let full = row.len() / 8 * 8;
    let mut max8 = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut has_nan = _mm256_setzero_ps();
    for chunk in row[..full].chunks_exact(8) {
        // SAFETY: `chunk` is 8 readable floats.
        let v = unsafe { _mm256_loadu_ps(chunk.as_ptr()) };
        max8 = _mm256_max_ps(max8, v);
        has_nan = _mm256_or_ps(has_nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
    }
    let mut lanes = [0.0f32; 8];
    // SAFETY: `lanes` is 8 writable floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), max8) };
    let max = lanes.iter().chain(&row[full..]).copied().fold(f32::NEG_INFINITY, f32::max);
    if _mm256_movemask_ps(has_nan) != 0 || row[full..].iter().any(|v| v.is_nan()) {
        // `exp8` clamps, which would hide the NaN: the scalar path's answer is all NaN.
        row.fill(f32::NAN);
        return;
    }
    let max8 = _mm256_set1_ps(max);
    let mut sum8 = _mm256_setzero_ps();
    let (body, tail) = row.split_at_mut(full);
    for chunk in body.chunks_exact_mut(8) {
        // SAFETY: `chunk` is 8 floats, read and written unaligned.
        unsafe {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(chunk.as_ptr()), max8));
            sum8 = _mm256_add_ps(sum8, e);
            _mm256_storeu_ps(chunk.as_mut_ptr(), e);
        }
    }
    let mut padded = [f32::NEG_INFINITY; 8];
    padded[..tail.len()].copy_from_slice(tail);
    // SAFETY: `padded` is 8 floats; the padding is -inf, whose `exp` is 0 and adds nothing.
    unsafe {
        let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(padded.as_ptr()), max8));
        sum8 = _mm256_add_ps(sum8, e);
        _mm256_storeu_ps(padded.as_mut_ptr(), e);
    }
    tail.copy_from_slice(&padded[..tail.len()]);
    // SAFETY: `lanes` is 8 writable floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum8) };
    let sum: f32 = lanes.iter().sum();
    let inverse = _mm256_set1_ps(1.0 / sum);
    for chunk in row.chunks_exact_mut(8) {
        // SAFETY: `chunk` is 8 floats, read and written unaligned.
        unsafe { _mm256_storeu_ps(chunk.as_mut_ptr(), _mm256_mul_ps(_mm256_loadu_ps(chunk.as_ptr()), inverse)) };
    }
    let scalar_inverse = 1.0 / sum;
    let tail_start = row.len() / 8 * 8;
    row[tail_start..].iter_mut().for_each(|value| *value *= scalar_inverse);
}
