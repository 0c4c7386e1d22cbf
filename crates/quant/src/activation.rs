//! The float kernels around a transformer's matrix products, over slices: the exact (erf) GELU
//! and a row softmax, each with a portable scalar path and an AVX2 one.
//!
//! ```
//! let mut values = [-1.0f32, 0.0, 1.0, 20.0];
//! lathe_quant::activation::gelu_f32(&mut values);
//! // x * Phi(x): Phi(1) = 0.841344746...
//! assert!((values[2] - 0.841_344_75).abs() < 1e-7);
//! assert_eq!((values[1], values[3]), (0.0, 20.0));
//!
//! let mut row = [1.0f32, 2.0, 3.0, f32::MIN];
//! lathe_quant::activation::softmax_f32(&mut row);
//! assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6 && row[3] == 0.0);
//! ```
//!
//! # GELU
//! `gelu(x) = x Phi(x)`, `Phi(x) = erfc(-x / sqrt 2) / 2`. Both paths compute `erfc` of
//! `|x| / sqrt 2 >= 0` (so `Phi` keeps its relative accuracy for `x < 0`, where `1 + erf` would
//! cancel) and take `Phi = 1 - erfc / 2` for `x >= 0`. `x <= -8` gives -0.0 (`|x Phi(x)|` is
//! below 5e-15 there), `x >= 8` gives `x`, NaN stays NaN and -0.0 stays -0.0.
//!
//! The scalar path is the reference, in f64: `erfc(z) = exp(-z^2) t P(s)` for `z = |x| / sqrt 2`,
//! `t = 3 / (3 + z)`, `s` the affine map of `t` onto `[-1, 1]` over `z` in `[0, 8 / sqrt 2]`, and
//! `P` a degree-10 polynomial fitted (weighted Chebyshev least squares, 2000 nodes, mpmath
//! references at 40 digits) to `erfc(z) exp(z^2) / t`, the scaled complementary error function
//! without its `1 / z` decay. The fit's relative error is below 2.3e-10 on that range; `exp` is
//! a degree-9 polynomial after reduction by `ln 2` (relative error below 1e-11). So `Phi` is
//! within 3e-10 relative of the truth for `x < 0` and within 3e-10 absolute for `x >= 0`, and
//! the f32 result is the correctly rounded `x Phi(x)` or a neighbour of it:
//! `|gelu(x) - x Phi(x)| <= 6.0e-8 |x Phi(x)| + 3e-10 |x|` (plus 1e-44, half the spacing of
//! f32's subnormals, where `x Phi(x)` is subnormal).
//!
//! The AVX2 path works in f32, eight lanes at a time, which is about three times cheaper than
//! four f64 lanes (GELU runs on every FFN neuron, a tenth of an int8 encoder's time in f64):
//! `erfc(a / sqrt 2) / 2 = exp(-a^2 / 2) N(a) / D(a)` for `a = |x|` clamped to 8, with `N / D`
//! a (4, 5) rational fit of positive coefficients (relative error below 1.4e-8 as rounded to
//! f32). The rational takes `a` itself, not a variable such as `3 / (3 + a)` whose f32 rounding
//! near `a = 0` would move the argument by an ulp of 3. `a^2` is split exactly into two f32
//! (an FMA gives the product's rounding error) so that the exponent is not rounded, and `exp`
//! is a degree-6 minimax polynomial after reduction by `ln 2`, evaluated by Estrin's scheme
//! (three steps deep), with `N / D` divided while `exp` is computed. The result is within
//! `4.7e-7 |x Phi(x)|` of the truth (the worst over every f32 in `(-8, 8.5]`, checked once with
//! the range test's stride set to 1, is 4.63e-7, at `x = -6.92`; a few f32 ulps), or within
//! 1e-44 where `x Phi(x)` is subnormal. The two paths differ by at most the sum of their bounds.
//!
//! # Softmax
//! `softmax_f32` subtracts the row maximum, exponentiates in f32 and scales by the inverse sum.
//! A shifted value below -87 (where `exp` leaves f32's normal range, below 1.7e-38 of the
//! largest term) counts as 0, which also makes masked scores (`f32::MIN`) exactly 0. The AVX2
//! `exp` is a degree-6 polynomial after reduction by `ln 2` (relative error below 3e-7); the
//! scalar path uses the standard library's `exp`. The results of the two paths differ by at most
//! `4e-7 + n * f32::EPSILON` relative per entry for a row of `n`.

#[cfg(target_arch = "x86_64")]
mod x86_64;

use crate::Isa;

/// Below this, `gelu` returns -0.0.
const GELU_LOW: f64 = -8.0;
/// The fit's variable: `t = C / (C + z)`.
const ERFC_C: f64 = 3.0;
/// `z` is clamped here (`8 / sqrt 2`), the end of the fitted range.
const ERFC_Z_MAX: f64 = 5.656_854_249_492_381;
/// `s = t * ERFC_SLOPE + ERFC_OFFSET` maps `t` in `[C / (C + Z_MAX), 1]` onto `[-1, 1]`.
const ERFC_SLOPE: f64 = 3.060_660_171_779_821;
const ERFC_OFFSET: f64 = -2.060_660_171_779_821;
/// `P(s)`, lowest degree first.
#[allow(clippy::excessive_precision)]
const ERFC_P: [f64; 11] = [
    0.488_600_673_317_291_46,
    0.310_628_147_332_668_97,
    0.143_713_774_907_449_74,
    0.047_036_856_671_334_45,
    0.009_667_188_406_299_678,
    0.000_634_678_310_911_533_8,
    -0.000_239_034_848_695_629_94,
    -5.085_216_358_514_479e-5,
    6.531_728_020_898_317_5e-6,
    2.262_339_135_539_01e-6,
    -2.258_018_541_442_059_8e-7,
];
/// Adding and subtracting this rounds an f64 of magnitude below 2^51 to an integer (ties to
/// even), leaving the integer in the low mantissa bits.
const ROUND_MAGIC: f64 = 6_755_399_441_055_744.0;
/// `ln 2` split so that `n * LN2_HIGH` is exact for the `n` that occur.
const LN2_HIGH: f64 = 0.693_147_180_369_123_8;
const LN2_LOW: f64 = 1.908_214_929_270_587_7e-10;
/// `1 / k!` for `k = 0 ..= 9`.
const EXP_TAYLOR: [f64; 10] =
    [1.0, 1.0, 0.5, 1.0 / 6.0, 1.0 / 24.0, 1.0 / 120.0, 1.0 / 720.0, 1.0 / 5040.0, 1.0 / 40320.0, 1.0 / 362_880.0];

/// Exact GELU (`x Phi(x)`, the erf form) in place; see the [module docs](self) for the error
/// bound. Runs the AVX2 path when the CPU has it (and `LATHE_FORCE_ISA` is not `scalar`).
pub fn gelu_f32(values: &mut [f32]) {
    gelu_f32_with(crate::isa::active(), values);
}

/// Softmax of one row in place (the maximum subtracted first); see the [module docs](self).
/// An empty row stays empty; a row holding NaN becomes NaN.
pub fn softmax_f32(row: &mut [f32]) {
    softmax_f32_with(crate::isa::active(), row);
}

/// [`gelu_f32`] on the path of `isa`, falling back to scalar when this CPU lacks it.
pub fn gelu_f32_with(isa: Isa, values: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 && x86_64::is_supported() {
        x86_64::gelu(values);
        return;
    }
    let _ = isa;
    values.iter_mut().for_each(|value| *value = gelu_scalar(*value));
}

/// [`softmax_f32`] on the path of `isa`, falling back to scalar when this CPU lacks it.
pub fn softmax_f32_with(isa: Isa, row: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 && x86_64::is_supported() {
        x86_64::softmax(row);
        return;
    }
    let _ = isa;
    softmax_scalar(row);
}

/// `erfc(z)` for `0 <= z <= ERFC_Z_MAX`, as the module docs describe.
fn erfc_scalar(z: f64) -> f64 {
    let t = ERFC_C / (ERFC_C + z);
    let s = t * ERFC_SLOPE + ERFC_OFFSET;
    let p = ERFC_P.iter().rev().fold(0.0, |acc, &c| acc * s + c);
    exp_scalar(-z * z) * t * p
}

/// `exp(a)` for `-708 < a <= 0`.
fn exp_scalar(a: f64) -> f64 {
    let shifted = a * std::f64::consts::LOG2_E + ROUND_MAGIC;
    let n = shifted - ROUND_MAGIC;
    let r = (a - n * LN2_HIGH) - n * LN2_LOW;
    let p = EXP_TAYLOR.iter().rev().fold(0.0, |acc, &c| acc * r + c);
    // The low bits of `shifted` hold `n` (two's complement); `n + 1023` is the biased exponent.
    let scale = f64::from_bits((shifted.to_bits().wrapping_add(1023)) << 52);
    p * scale
}

fn gelu_scalar(x: f32) -> f32 {
    let x64 = f64::from(x);
    if x64 <= GELU_LOW {
        return -0.0;
    }
    let z = (x64.abs() * std::f64::consts::FRAC_1_SQRT_2).min(ERFC_Z_MAX);
    let half_erfc = 0.5 * erfc_scalar(z);
    let phi = if x64 < 0.0 { half_erfc } else { 1.0 - half_erfc };
    (x64 * phi) as f32
}

/// Shifted values below this count as `exp = 0`.
const SOFTMAX_FLOOR: f32 = -87.0;

fn softmax_scalar(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for value in row.iter_mut() {
        let shifted = *value - max;
        *value = if shifted < SOFTMAX_FLOOR { 0.0 } else { shifted.exp() };
        sum += *value;
    }
    let inverse = 1.0 / sum;
    row.iter_mut().for_each(|value| *value *= inverse);
}

#[cfg(test)]
#[allow(clippy::excessive_precision)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `x Phi(x)` at the f32 argument, from mpmath at 40 digits.
    const GELU: [(f32, f64); 12] = [
        (-7.5, -2.393_168_754_683_172_2e-13),
        (-6.0, -5.919_525_870_226_188_8e-9),
        (-3.0, -4.049_694_094_890_283_6e-3),
        (-1.0, -0.158_655_253_931_457_05),
        (-0.1, -0.046_017_216_898_856_519),
        (-1e-3, -4.996_010_814_969_171_2e-4),
        (1e-3, 5.003_989_660_005_341_9e-4),
        (0.5, 0.345_731_230_637_006_55),
        (1.0, 0.841_344_746_068_542_95),
        (2.5, 2.484_475_836_685_559_7),
        (4.0, 3.999_873_315_032_667_5),
        (7.0, 6.999_999_999_991_041_3),
    ];

    /// The module docs' bound for the path of `isa`.
    fn bound(isa: Isa, x: f32, exact: f64) -> f64 {
        match isa {
            Isa::Avx2 => AVX2_GELU_RELATIVE * exact.abs() + 1e-44,
            _ => 6.0e-8 * exact.abs() + 3e-10 * f64::from(x).abs() + 1e-44,
        }
    }

    /// The AVX2 GELU's relative error bound against `x Phi(x)`.
    const AVX2_GELU_RELATIVE: f64 = 4.7e-7;

    #[test]
    fn gelu_matches_reference_values_on_every_path() {
        for isa in Isa::supported() {
            let mut values: Vec<f32> = GELU.iter().map(|(x, _)| *x).collect();
            gelu_f32_with(isa, &mut values);
            for (got, (x, want)) in values.iter().zip(GELU) {
                let error = (f64::from(*got) - want).abs();
                assert!(error <= bound(isa, x, want), "{isa:?} gelu({x}) = {got}, want {want}");
            }
        }
    }

    #[test]
    fn gelu_special_values_on_every_path() {
        for isa in Isa::supported() {
            let mut values = [f32::NEG_INFINITY, -1e30, -8.0, -0.0, 0.0, 8.0, 1e30, f32::INFINITY, f32::NAN];
            gelu_f32_with(isa, &mut values);
            let bits: Vec<u32> = values[..8].iter().map(|v| v.to_bits()).collect();
            let want: Vec<u32> =
                [-0.0f32, -0.0, -0.0, -0.0, 0.0, 8.0, 1e30, f32::INFINITY].iter().map(|v| v.to_bits()).collect();
            assert_eq!(bits, want, "{isa:?}");
            assert!(values[8].is_nan(), "{isa:?}");
        }
    }

    #[test]
    fn exp_is_accurate_over_the_range_gelu_uses() {
        for i in 0..=3200 {
            let a = -f64::from(i) / 100.0;
            let (got, want) = (exp_scalar(a), a.exp());
            assert!((got - want).abs() <= 1e-11 * want, "exp({a}) = {got}, want {want}");
        }
    }

    proptest! {
        #[test]
        fn simd_gelu_matches_scalar(values in prop::collection::vec(-12.0f32..12.0, 0..=4 * 8 + 3), start in 0usize..4) {
            let values = &values[start.min(values.len())..];
            for isa in Isa::supported() {
                let mut got = values.to_vec();
                gelu_f32_with(isa, &mut got);
                for (&x, &y) in values.iter().zip(&got) {
                    let scalar = gelu_scalar(x);
                    // The two bounds of the module docs, on either side of the truth.
                    let tolerance = f64::from(scalar).abs() * (AVX2_GELU_RELATIVE + 1.3e-7) + 1e-44;
                    prop_assert!((f64::from(y) - f64::from(scalar)).abs() <= tolerance, "{:?} {} -> {} vs {}", isa, x, y, scalar);
                    prop_assert_eq!(y.is_sign_negative(), scalar.is_sign_negative(), "{:?} {}", isa, x);
                }
            }
        }

        #[test]
        fn simd_softmax_matches_scalar(
            row in prop::collection::vec(-100.0f32..100.0, 1..=4 * 8 + 3),
            masked in prop::collection::vec(any::<bool>(), 4 * 8 + 3),
        ) {
            let row: Vec<f32> = row.iter().zip(&masked).enumerate()
                .map(|(i, (&v, &m))| if m && i > 0 { f32::MIN } else { v }).collect();
            let mut scalar = row.clone();
            softmax_scalar(&mut scalar);
            for isa in Isa::supported() {
                let mut got = row.clone();
                softmax_f32_with(isa, &mut got);
                let tolerance = 4e-7 + row.len() as f32 * f32::EPSILON;
                for (a, b) in got.iter().zip(&scalar) {
                    prop_assert!((a - b).abs() <= tolerance * b + 1e-38, "{:?}: {} vs {}", isa, a, b);
                    prop_assert!((*b == 0.0) == (*a == 0.0));
                }
            }
        }
    }

    /// Every 257th f32 bit pattern in `(-8, 8.5]` (about eight million values, every binade and
    /// every mantissa region) on every path against `x Phi(x)` from the scalar path's f64 `erfc`
    /// (within 3e-10 relative of the truth, far below the bounds checked). Run once with a stride
    /// of 1 (every f32 of the range, about three minutes in release), the AVX2 path's worst
    /// relative error on normal results was 4.63e-7, at x = -6.92.
    #[test]
    fn gelu_bound_holds_across_the_range() {
        const STRIDE: usize = 257;
        let exact = |x: f32| {
            let x64 = f64::from(x);
            let z = (x64.abs() * std::f64::consts::FRAC_1_SQRT_2).min(ERFC_Z_MAX);
            let half_erfc = 0.5 * erfc_scalar(z);
            x64 * if x64 < 0.0 { half_erfc } else { 1.0 - half_erfc }
        };
        let positive = (0..=8.5f32.to_bits()).step_by(STRIDE).map(f32::from_bits);
        let arguments = positive.clone().chain(positive.map(|x| -x).filter(|&x| x > -8.0));
        let mut block = Vec::with_capacity(1 << 16);
        let mut worst = [(0.0f64, 0.0f32); 2];
        let mut arguments = arguments.peekable();
        while arguments.peek().is_some() {
            block.clear();
            block.extend(arguments.by_ref().take(1 << 16));
            for isa in Isa::supported() {
                let mut got = block.clone();
                gelu_f32_with(isa, &mut got);
                for (&x, &y) in block.iter().zip(&got) {
                    let want = exact(x);
                    let error = (f64::from(y) - want).abs();
                    assert!(error <= bound(isa, x, want), "{isa:?} gelu({x}) = {y}, want {want}");
                    let slot = &mut worst[usize::from(isa == Isa::Avx2)];
                    if want.abs() >= f64::from(f32::MIN_POSITIVE) && error / want.abs() > slot.0 {
                        *slot = (error / want.abs(), x);
                    }
                }
            }
        }
        println!("worst relative error (normal results), scalar and AVX2: {worst:?}");
    }

    #[test]
    fn softmax_edge_cases_on_every_path() {
        for isa in Isa::supported() {
            let mut empty: [f32; 0] = [];
            softmax_f32_with(isa, &mut empty);
            let mut row = [1e30f32, 1e30, f32::MIN, 0.0];
            softmax_f32_with(isa, &mut row);
            assert_eq!(row, [0.5, 0.5, 0.0, 0.0], "{isa:?}");
            let mut masked = [f32::MIN; 11];
            softmax_f32_with(isa, &mut masked);
            assert!(masked.iter().all(|&p| (p - 1.0 / 11.0).abs() < 1e-7), "{isa:?} {masked:?}");
            let mut nan = [0.0f32, f32::NAN, 1.0];
            softmax_f32_with(isa, &mut nan);
            assert!(nan.iter().any(|v| v.is_nan()), "{isa:?}");
        }
    }
}
