//! AVX2 + FMA GELU and softmax: the scalar algorithms of the parent module, four f64 or eight
//! f32 lanes at a time, with the tail run through a padded block of eight.

use std::arch::x86_64::*;

use super::{
    ERFC_C, ERFC_OFFSET, ERFC_P, ERFC_SLOPE, ERFC_Z_MAX, EXP_TAYLOR, GELU_LOW, LN2_HIGH, LN2_LOW, ROUND_MAGIC,
    SOFTMAX_FLOOR,
};

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

#[inline]
#[target_feature(enable = "avx2,fma")]
fn gelu8(x: __m256) -> __m256 {
    let low = gelu4(_mm256_cvtps_pd(_mm256_castps256_ps128(x)));
    let high = gelu4(_mm256_cvtps_pd(_mm256_extractf128_ps::<1>(x)));
    _mm256_set_m128(_mm256_cvtpd_ps(high), _mm256_cvtpd_ps(low))
}

/// `x Phi(x)` in four f64 lanes, as `gelu_scalar` computes it.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn gelu4(x: __m256d) -> __m256d {
    let sign_bit = _mm256_set1_pd(-0.0);
    let magnitude = _mm256_andnot_pd(sign_bit, x);
    let z = _mm256_min_pd(
        _mm256_mul_pd(magnitude, _mm256_set1_pd(std::f64::consts::FRAC_1_SQRT_2)),
        _mm256_set1_pd(ERFC_Z_MAX),
    );
    let t = _mm256_div_pd(_mm256_set1_pd(ERFC_C), _mm256_add_pd(_mm256_set1_pd(ERFC_C), z));
    let s = _mm256_fmadd_pd(t, _mm256_set1_pd(ERFC_SLOPE), _mm256_set1_pd(ERFC_OFFSET));
    let mut p = _mm256_set1_pd(ERFC_P[ERFC_P.len() - 1]);
    for &c in ERFC_P.iter().rev().skip(1) {
        p = _mm256_fmadd_pd(p, s, _mm256_set1_pd(c));
    }
    let minus_z_squared = _mm256_mul_pd(_mm256_xor_pd(z, sign_bit), z);
    let erfc = _mm256_mul_pd(_mm256_mul_pd(exp4(minus_z_squared), t), p);
    let half_erfc = _mm256_mul_pd(erfc, _mm256_set1_pd(0.5));
    let negative = _mm256_cmp_pd::<_CMP_LT_OQ>(x, _mm256_setzero_pd());
    let phi = _mm256_blendv_pd(_mm256_sub_pd(_mm256_set1_pd(1.0), half_erfc), half_erfc, negative);
    let product = _mm256_mul_pd(x, phi);
    let flushed = _mm256_cmp_pd::<_CMP_LE_OQ>(x, _mm256_set1_pd(GELU_LOW));
    _mm256_blendv_pd(product, sign_bit, flushed)
}

/// `exp(a)` in four f64 lanes for `-708 < a <= 0`, as `exp_scalar` computes it.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn exp4(a: __m256d) -> __m256d {
    let magic = _mm256_set1_pd(ROUND_MAGIC);
    let shifted = _mm256_fmadd_pd(a, _mm256_set1_pd(std::f64::consts::LOG2_E), magic);
    let n = _mm256_sub_pd(shifted, magic);
    let r = _mm256_fnmadd_pd(n, _mm256_set1_pd(LN2_LOW), _mm256_fnmadd_pd(n, _mm256_set1_pd(LN2_HIGH), a));
    let mut p = _mm256_set1_pd(EXP_TAYLOR[EXP_TAYLOR.len() - 1]);
    for &c in EXP_TAYLOR.iter().rev().skip(1) {
        p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(c));
    }
    let exponent = _mm256_slli_epi64::<52>(_mm256_add_epi64(_mm256_castpd_si256(shifted), _mm256_set1_epi64x(1023)));
    _mm256_mul_pd(p, _mm256_castsi256_pd(exponent))
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
