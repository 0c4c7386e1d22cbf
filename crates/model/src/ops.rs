//! The element-wise and row-wise kernels of the encoder that are not in lathe-quant, over plain
//! slices: GELU's tanh form and layer normalisation; and, for the tests, a reference error
//! function in f64 that the exact GELU (`lathe_quant::activation::gelu_f32`) is checked against.

/// Rows handed to one rayon task by the row-wise kernels: enough work to amortise scheduling.
pub(crate) const ROWS_PER_TASK: usize = 64;

// The error function (test-only: the reference for GELU and for the model's tests) is a port of FreeBSD's `s_erf.c` (fdlibm, Sun Microsystems 1993: "Permission
// to use, copy, modify, and distribute this software is freely granted, provided that this notice
// is preserved"), evaluated in f64. Its rational approximations are accurate to about 2^-57, so
// the f32 results below are correctly rounded but for the last-bit ties of the final rounding.
// Evaluating in f64 also lets the tails use one `exp` where fdlibm splits the argument in two
// to keep its f64 result exact.

/// fdlibm's coefficients, digit for digit as in `s_erf.c` so the port can be checked line by line
/// (more digits than an f64 holds; the compiler rounds them as fdlibm's C compiler did).
#[cfg(test)]
#[allow(clippy::excessive_precision)]
mod fdlibm {
    pub(super) const ERX: f64 = 8.450_629_115_104_675_292_97e-1;
    pub(super) const EFX8: f64 = 1.027_033_336_764_100_690_53;
    pub(super) const PP: [f64; 5] = [
        1.283_791_670_955_125_585_61e-1,
        -3.250_421_072_470_014_993_70e-1,
        -2.848_174_957_559_851_047_66e-2,
        -5.770_270_296_489_441_591_57e-3,
        -2.376_301_665_665_016_260_84e-5,
    ];
    pub(super) const QQ: [f64; 6] = [
        1.0,
        3.979_172_239_591_553_528_19e-1,
        6.502_224_998_876_729_444_85e-2,
        5.081_306_281_875_765_627_76e-3,
        1.324_947_380_043_216_445_26e-4,
        -3.960_228_278_775_368_123_20e-6,
    ];
    pub(super) const PA: [f64; 7] = [
        -2.362_118_560_752_659_440_77e-3,
        4.148_561_186_837_483_316_66e-1,
        -3.722_078_760_357_013_238_47e-1,
        3.183_466_199_011_617_536_74e-1,
        -1.108_946_942_823_966_774_76e-1,
        3.547_830_432_561_823_593_71e-2,
        -2.166_375_594_868_790_843_00e-3,
    ];
    pub(super) const QA: [f64; 7] = [
        1.0,
        1.064_208_804_008_442_282_86e-1,
        5.403_979_177_021_710_489_37e-1,
        7.182_865_441_419_626_628_68e-2,
        1.261_712_198_087_616_421_12e-1,
        1.363_708_391_202_905_073_62e-2,
        1.198_449_984_679_910_741_70e-2,
    ];
    pub(super) const RA: [f64; 8] = [
        -9.864_944_034_847_148_227_05e-3,
        -6.938_585_727_071_817_643_72e-1,
        -1.055_862_622_532_329_098_14e1,
        -6.237_533_245_032_600_603_96e1,
        -1.623_966_694_625_734_703_55e2,
        -1.846_050_929_067_110_359_94e2,
        -8.128_743_550_630_659_342_46e1,
        -9.814_329_344_169_145_485_92,
    ];
    pub(super) const SA: [f64; 9] = [
        1.0,
        1.965_127_166_743_925_712_92e1,
        1.376_577_541_435_190_426_00e2,
        4.345_658_774_752_292_288_21e2,
        6.453_872_717_332_678_803_36e2,
        4.290_081_400_275_678_333_86e2,
        1.086_350_055_417_794_351_34e2,
        6.570_249_770_319_281_701_35,
        -6.042_441_521_485_809_874_38e-2,
    ];
    pub(super) const RB: [f64; 7] = [
        -9.864_942_924_700_099_285_97e-3,
        -7.992_832_376_805_230_065_74e-1,
        -1.775_795_491_775_475_198_89e1,
        -1.606_363_848_558_219_160_62e2,
        -6.375_664_433_683_896_277_22e2,
        -1.025_095_131_611_077_249_54e3,
        -4.835_191_916_086_513_970_19e2,
    ];
    pub(super) const SB: [f64; 8] = [
        1.0,
        3.033_806_074_348_245_829_24e1,
        3.257_925_129_965_739_188_26e2,
        1.536_729_586_084_436_959_94e3,
        3.199_858_219_508_595_539_08e3,
        2.553_050_406_433_164_425_83e3,
        4.745_285_412_069_553_672_15e2,
        -2.244_095_244_658_581_833_62e1,
    ];
}

#[cfg(test)]
use fdlibm::*;

#[cfg(test)]
/// Horner's rule, highest coefficient last.
fn poly(x: f64, coefficients: &[f64]) -> f64 {
    coefficients.iter().rev().fold(0.0, |acc, &c| acc * x + c)
}

#[cfg(test)]
/// `erfc(x)` for `x >= 0.84375` (NaN passes through).
fn erfc_tail(x: f64) -> f64 {
    if x < 1.25 {
        let s = x - 1.0;
        return 1.0 - ERX - poly(s, &PA) / poly(s, &QA);
    }
    if x >= 28.0 {
        return 0.0;
    }
    let s = 1.0 / (x * x);
    let ratio = if x < 1.0 / 0.35 { poly(s, &RA) / poly(s, &SA) } else { poly(s, &RB) / poly(s, &SB) };
    (-x * x - 0.5625 + ratio).exp() / x
}

#[cfg(test)]
/// `erf(x) - x` divided by `x`, for `|x| < 0.84375`.
fn erf_small_ratio(x: f64) -> f64 {
    let z = x * x;
    poly(z, &PP) / poly(z, &QQ)
}

#[cfg(test)]
/// The error function in f64, accurate to a few units in the last place.
pub(crate) fn erf_f64(x: f64) -> f64 {
    let magnitude = x.abs();
    if magnitude.is_nan() {
        return x;
    }
    if magnitude < 0.84375 {
        if magnitude < f64::powi(2.0, -28) {
            return 0.125 * (8.0 * x + EFX8 * x);
        }
        return x + x * erf_small_ratio(x);
    }
    let y = 1.0 - erfc_tail(magnitude);
    if x < 0.0 { -y } else { y }
}

#[cfg(test)]
/// The complementary error function `1 - erf(x)` in f64, without cancellation for large `x`.
pub(crate) fn erfc_f64(x: f64) -> f64 {
    let magnitude = x.abs();
    if magnitude.is_nan() {
        return x;
    }
    if magnitude < 0.84375 {
        return 1.0 - (x + x * erf_small_ratio(x));
    }
    let tail = erfc_tail(magnitude);
    if x < 0.0 { 2.0 - tail } else { tail }
}

/// The error function, correctly rounded to f32 but for rare last-bit ties.
#[cfg(test)]
pub(crate) fn erf(x: f32) -> f32 {
    erf_f64(f64::from(x)) as f32
}

#[cfg(test)]
/// The normal CDF `Phi(x) = erfc(-x / sqrt 2) / 2` in f64, straight from the error function
/// (`erfc` for negative `x` avoids the cancellation of `1 + erf`).
pub(crate) fn normal_cdf(x: f64) -> f64 {
    let u = x * std::f64::consts::FRAC_1_SQRT_2;
    0.5 * if u >= 0.0 { 1.0 + erf_f64(u) } else { erfc_f64(-u) }
}

/// GELU's tanh approximation (`gelu_new`, `gelu_pytorch_tanh`, `gelu_fast` in transformers).
pub(crate) fn gelu_tanh(x: f32) -> f32 {
    let x = f64::from(x);
    let inner = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044_715 * x * x * x);
    (0.5 * x * (1.0 + inner.tanh())) as f32
}

/// Layer normalisation of one row in place: `(x - mean) / sqrt(var + eps) * weight + bias`, with
/// the biased variance as PyTorch computes it. Mean and variance accumulate in f64, in eight
/// interleaved partial sums (which the compiler keeps in vector registers), so they are exact
/// but for the last bits whatever the row's offset. The output is computed in f32 from them, at
/// four lanes an operation where f64 takes two and a conversion each way: the mean is split
/// into two f32 (`x - high` is exact for `x` near the mean, `- low` restores the bits `high`
/// lost), so that centring stays accurate for a row far from 0 with a small spread; then scale,
/// weight and bias round once each, within a few ulps of the f64 expression.
///
/// # Panics
/// If `weight` or `bias` differ in length from `row`.
pub(crate) fn layer_norm(row: &mut [f32], weight: &[f32], bias: &[f32], eps: f64) {
    assert!(weight.len() == row.len() && bias.len() == row.len(), "layer norm parameters must match the row");
    if row.is_empty() {
        return;
    }
    let n = row.len() as f64;
    let mean = sum8(row, f64::from) / n;
    let variance = sum8(row, |v| (f64::from(v) - mean).powi(2)) / n;
    let mean_high = mean as f32;
    let mean_low = (mean - f64::from(mean_high)) as f32;
    let inverse_std = (1.0 / (variance + eps).sqrt()) as f32;
    for ((value, &w), &b) in row.iter_mut().zip(weight).zip(bias) {
        *value = ((*value - mean_high) - mean_low) * inverse_std * w + b;
    }
}

/// `sum f(v)` over `values` in f64, as eight partial sums combined at the end.
#[inline]
fn sum8(values: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut partial = [0.0f64; 8];
    let mut chunks = values.chunks_exact(8);
    for chunk in &mut chunks {
        for (sum, &value) in partial.iter_mut().zip(chunk) {
            *sum += f(value);
        }
    }
    for (sum, &value) in partial.iter_mut().zip(chunks.remainder()) {
        *sum += f(value);
    }
    partial.iter().sum()
}

// Reference values are quoted with the 17 digits mpmath printed.
#[cfg(test)]
#[allow(clippy::excessive_precision)]
mod tests {
    use super::*;
    use lathe_quant::Isa;
    use proptest::prelude::*;

    /// erf at points spread over every branch, from mpmath at 50 digits (`mpmath.erf`).
    const ERF: [(f64, f64); 16] = [
        (1e-30, 1.128_379_167_095_512_7e-30),
        (1e-5, 1.128_379_167_057_9e-5),
        (0.1, 0.112_462_916_018_284_9),
        (0.25, 0.276_326_390_168_236_93),
        (0.5, 0.520_499_877_813_046_54),
        (0.84375, 0.767_225_661_232_341_63),
        (1.0, 0.842_700_792_949_714_87),
        (1.2, 0.910_313_978_229_635_37),
        (1.5, 0.966_105_146_475_310_73),
        (2.0, 0.995_322_265_018_952_73),
        (2.5, 0.999_593_047_982_555_04),
        (3.0, 0.999_977_909_503_001_41),
        (4.0, 0.999_999_984_582_742_1),
        (5.5, 0.999_999_999_999_992_64),
        (-0.7, -0.677_801_193_837_418_44),
        (-3.5, -0.999_999_256_901_627_66),
    ];

    #[test]
    fn erf_matches_reference_values() {
        for (x, want) in ERF {
            let got = erf_f64(x);
            assert!((got - want).abs() <= 4.0 * f64::EPSILON * want.abs(), "erf_f64({x}) = {got}, want {want}");
            let got32 = erf(x as f32);
            // The f32 argument is itself rounded: compare with erf at that argument, using
            // erf' <= 2 / sqrt(pi) to bound the shift.
            let shift = (f64::from(x as f32) - x).abs() * 1.13;
            let error = (f64::from(got32) - want).abs();
            assert!(error <= 1e-7 * want.abs().max(1e-30) + shift, "erf({x}) = {got32}, want {want}");
            assert!(error <= 1e-7, "erf({x}) = {got32}: absolute error {error}");
        }
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erf(-0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!((erf(f32::INFINITY), erf(f32::NEG_INFINITY), erf(30.0)), (1.0, -1.0, 1.0));
        assert!(erf(f32::NAN).is_nan());
    }

    #[test]
    fn erfc_keeps_relative_accuracy_in_the_tail() {
        // erfc from mpmath: where 1 - erf has lost every digit.
        for (x, want) in
            [(3.0, 2.209_049_699_858_544_1e-5), (6.0, 2.151_973_671_249_891_3e-17), (10.0, 2.088_487_583_762_544_8e-45)]
        {
            let got = erfc_f64(x);
            assert!((got - want).abs() <= 1e-3 * want, "erfc({x}) = {got}, want {want}");
        }
        assert_eq!((erfc_f64(0.0), erfc_f64(-30.0), erfc_f64(30.0)), (1.0, 2.0, 0.0));
    }

    /// lathe-quant's exact GELU on both paths, one value at a time.
    fn gelu(x: f32) -> [f32; 2] {
        [Isa::Scalar, Isa::Avx2].map(|isa| {
            let mut value = [x];
            lathe_quant::activation::gelu_f32_with(isa, &mut value);
            value[0]
        })
    }

    #[test]
    fn gelu_matches_reference_values() {
        // x * Phi(x) from mpmath, at the f32 argument.
        for (x, want) in [
            (-6.0f32, -5.919_525_870_226_188_8e-9),
            (-3.0, -4.049_694_094_890_283_6e-3),
            (-1.0, -0.158_655_253_931_457_05),
            (-0.1, -0.046_017_216_898_856_519),
            (0.0, 0.0),
            (0.5, 0.345_731_230_637_006_55),
            (1.0, 0.841_344_746_068_542_95),
            (2.5, 2.484_475_836_685_559_7),
        ] {
            // The scalar path is within 6e-8 relative of the truth, the f32 AVX2 one 4.7e-7.
            for (got, relative) in gelu(x).into_iter().zip([1e-7, 4.7e-7]) {
                let got = f64::from(got);
                assert!((got - want).abs() <= relative * want.abs(), "gelu({x}) = {got}, want {want}");
            }
        }
        assert!((f64::from(gelu_tanh(1.0)) - 0.841_191_990_608).abs() < 1e-7, "{}", gelu_tanh(1.0));
        for (x, want) in [(-9.0f32, -0.0f32), (-8.0, -0.0), (8.0, 8.0), (100.0, 100.0), (f32::NEG_INFINITY, -0.0)] {
            assert_eq!(gelu(x).map(f32::to_bits), [want.to_bits(); 2], "gelu({x})");
        }
        assert_eq!(gelu(f32::INFINITY), [f32::INFINITY; 2]);
        assert!(gelu(f32::NAN).iter().all(|v| v.is_nan()));
    }

    proptest! {
        /// The bounds lathe-quant states for its two paths, against fdlibm's erf in f64 (an
        /// independent reference: lathe-quant evaluates its own fits of erfc).
        #[test]
        fn exact_gelu_is_within_its_stated_bound_of_erf(x in -10.0f32..10.0) {
            let x64 = f64::from(x);
            let direct = x64 * normal_cdf(x64);
            let flushed = if x64 <= -8.0 { 1e-14 } else { 0.0 };
            let scalar = 6.0e-8 * direct.abs() + 3e-10 * x64.abs() + flushed;
            let avx2 = 4.7e-7 * direct.abs() + 1e-44 + flushed;
            for (got, bound) in gelu(x).into_iter().zip([scalar, avx2]) {
                prop_assert!((f64::from(got) - direct).abs() <= bound, "gelu({}) = {} vs {}", x, got, direct);
            }
        }
    }

    proptest! {
        #[test]
        fn erf_is_odd_monotone_and_bounded(x in -8.0f32..8.0) {
            let (y, next) = (erf(x), erf(x + x.abs().max(1e-3) * 1e-3));
            prop_assert_eq!(erf(-x), -y);
            prop_assert!(y.abs() <= 1.0);
            prop_assert!(next >= y);
            prop_assert!((f64::from(erf(x)) + erfc_f64(f64::from(x)) - 1.0).abs() <= 2e-7);
        }
    }

    #[test]
    fn layer_norm_normalises_then_scales() {
        let mut row = [1.0f32, 2.0, 3.0, 4.0];
        layer_norm(&mut row, &[1.0, 1.0, 2.0, 2.0], &[0.0, 0.0, 0.0, 1.0], 1e-12);
        // mean 2.5, biased variance 1.25.
        let z = 1.0 / 1.25f64.sqrt();
        let want = [-1.5 * z, -0.5 * z, 2.0 * 0.5 * z, 2.0 * 1.5 * z + 1.0];
        for (got, want) in row.iter().zip(want) {
            assert!((f64::from(*got) - want).abs() < 1e-6, "{row:?}");
        }
        // A constant row: the variance is 0 and eps keeps it finite.
        let mut flat = [3.0f32; 4];
        layer_norm(&mut flat, &[1.0; 4], &[0.5; 4], 1e-5);
        assert_eq!(flat, [0.5; 4]);
    }

    proptest! {
        #[test]
        fn layer_norm_output_has_zero_mean_unit_variance(row in prop::collection::vec(-100.0f32..100.0, 2..64)) {
            let n = row.len();
            let spread = row.iter().fold(0.0f32, |m, v| m.max((v - row[0]).abs()));
            prop_assume!(spread > 1e-2);
            let mut normed = row.clone();
            layer_norm(&mut normed, &vec![1.0; n], &vec![0.0; n], 1e-12);
            let mean = normed.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
            let variance = normed.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n as f64;
            prop_assert!(mean.abs() < 1e-5, "mean {}", mean);
            prop_assert!((variance - 1.0).abs() < 1e-4, "variance {}", variance);
        }

        #[test]
        fn softmax_is_a_shift_invariant_distribution(
            row in prop::collection::vec(-50.0f32..50.0, 1..80),
            shift in -1000.0f32..1000.0,
        ) {
            let mut probabilities = row.clone();
            lathe_quant::activation::softmax_f32(&mut probabilities);
            let sum: f32 = probabilities.iter().sum();
            prop_assert!((sum - 1.0).abs() < 1e-5);
            prop_assert!(probabilities.iter().all(|&p| (0.0..=1.0).contains(&p)));
            let mut shifted: Vec<f32> = row.iter().map(|&v| v + shift).collect();
            lathe_quant::activation::softmax_f32(&mut shifted);
            let original: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
            let max = original.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = original.iter().map(|v| (v - max).exp()).sum();
            for (i, &v) in original.iter().enumerate() {
                let exact = (v - max).exp() / total;
                // Rounding of the shifted inputs (up to 1000 + 50) dominates for `shifted`.
                prop_assert!((f64::from(probabilities[i]) - exact).abs() < 1e-6);
                prop_assert!((f64::from(shifted[i]) - exact).abs() < 1e-4 * exact.max(1e-3) * 100.0);
            }
        }
    }

    #[test]
    fn softmax_handles_huge_and_masked_scores() {
        let mut row = [1e30f32, 1e30, f32::MIN, 0.0];
        lathe_quant::activation::softmax_f32(&mut row);
        assert_eq!(row, [0.5, 0.5, 0.0, 0.0]);
        let mut masked = [f32::MIN; 3];
        lathe_quant::activation::softmax_f32(&mut masked);
        assert_eq!(masked, [1.0 / 3.0; 3]);
    }
}
