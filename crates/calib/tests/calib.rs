//! End-to-end checks of lathe-calib on a synthetic layer with outlier input channels: each
//! calibrated method against its calibration-free baseline, exactness on an identity Hessian,
//! grid and pattern invariants, dead columns and bad input.
//!
//! The reconstruction error is `||W X^T - W' X^T||_F`, computed as
//! `sqrt(sum_r (W - W')_r H (W - W')_r^T)` with `H = X^T X`. Run with `--nocapture` to see it.

use lathe_calib::{
    Error, LayerStats, Pattern, Quantized, SweepOptions, column_abs_max, gptq, round_to_nearest, smooth_activations,
    smooth_scales, smooth_weights, sparsegpt, wanda_n_m, wanda_unstructured,
};
use lathe_prune::{Amount, Mask, n_m, per_row_by_score};
use lathe_quant::Scheme;
use lathe_quant::linear::{IntMatrix, quantize_activations_i8};

const OUT: usize = 64;
const IN: usize = 256;
const TOKENS: usize = 2048;
const OUTLIERS: [usize; 4] = [3, 77, 140, 201];

/// SplitMix64 with Box-Muller normals.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn normal(&mut self) -> f32 {
        let mut uniform = || ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let (u, v) = (uniform(), uniform());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }
}

/// A layer: weights `[OUT, IN]` and activations `[TOKENS, IN]` that are correlated (8 shared
/// latent factors plus independent noise, as real hidden states are) with 4 channels x20.
struct Layer {
    weights: Vec<f32>,
    x: Vec<f32>,
    stats: LayerStats,
}

fn layer(seed: u64) -> Layer {
    let mut rng = Rng(seed);
    let weights: Vec<f32> = (0..OUT * IN).map(|_| rng.normal() * 0.05).collect();
    let factors: Vec<f32> = (0..IN * 8).map(|_| rng.normal()).collect();
    let mut x = vec![0.0f32; TOKENS * IN];
    for row in x.chunks_exact_mut(IN) {
        let latent: Vec<f32> = (0..8).map(|_| rng.normal()).collect();
        for (j, v) in row.iter_mut().enumerate() {
            let shared: f32 = (0..8).map(|f| factors[j * 8 + f] * latent[f]).sum();
            *v = 0.5 * shared + rng.normal();
            if OUTLIERS.contains(&j) {
                *v *= 20.0;
            }
        }
    }
    let mut stats = LayerStats::new(IN).unwrap();
    for batch in x.chunks(256 * IN) {
        stats.update(batch, batch.len() / IN).unwrap();
    }
    Layer { weights, x, stats }
}

impl Layer {
    fn hessian(&self) -> &[f64] {
        self.stats.hessian().unwrap()
    }

    /// `||W X^T - W' X^T||_F`.
    fn error(&self, other: &[f32]) -> f64 {
        let h = self.hessian();
        let mut total = 0.0;
        for r in 0..OUT {
            let delta: Vec<f64> =
                (0..IN).map(|c| f64::from(self.weights[r * IN + c]) - f64::from(other[r * IN + c])).collect();
            for i in 0..IN {
                let row: f64 = (0..IN).map(|j| h[i * IN + j] * delta[j]).sum();
                total += delta[i] * row;
            }
        }
        total.max(0.0).sqrt()
    }
}

fn masked(weights: &[f32], mask: &Mask) -> Vec<f32> {
    let mut out = weights.to_vec();
    mask.apply(&mut out).unwrap();
    out
}

fn magnitude_per_row(weights: &[f32], amount: f64) -> Mask {
    let scores: Vec<f32> = weights.iter().map(|w| w.abs()).collect();
    per_row_by_score(&scores, OUT, IN, Amount::Fraction(amount)).unwrap()
}

#[test]
fn wanda_and_sparsegpt_beat_magnitude_pruning() {
    let layer = layer(7);
    let options = SweepOptions::default();

    let magnitude = layer.error(&masked(&layer.weights, &magnitude_per_row(&layer.weights, 0.5)));
    let wanda_mask = wanda_unstructured(&layer.weights, OUT, IN, &layer.stats, Amount::Fraction(0.5)).unwrap();
    let wanda = layer.error(&masked(&layer.weights, &wanda_mask));
    let sparse = sparsegpt(&layer.weights, OUT, IN, layer.hessian(), Pattern::Unstructured(0.5), &options).unwrap();
    let sparse_error = layer.error(&sparse.weights);
    eprintln!("50 %: magnitude {magnitude:.4}  wanda {wanda:.4}  sparsegpt {sparse_error:.4}");
    assert!(wanda < magnitude, "wanda {wanda} vs magnitude {magnitude}");
    assert!(sparse_error < magnitude, "sparsegpt {sparse_error} vs magnitude {magnitude}");
    assert!(sparse_error < wanda, "sparsegpt {sparse_error} vs wanda {wanda}");

    // Exactly half of every 128-column slab is pruned, and pruned weights are exactly 0.
    assert_eq!(sparse.mask.n_pruned(), OUT * IN / 2);
    for block in 0..IN / 128 {
        let pruned = (0..OUT)
            .flat_map(|r| (block * 128..(block + 1) * 128).map(move |c| r * IN + c))
            .filter(|&i| !sparse.mask.is_kept(i))
            .count();
        assert_eq!(pruned, OUT * 128 / 2);
    }
    assert!(sparse.mask.pruned_indices().all(|i| sparse.weights[i] == 0.0));
    assert!(sparse.weights.iter().all(|w| w.is_finite()));

    let magnitude_24 = layer.error(&masked(&layer.weights, &n_m(&layer.weights, OUT, IN, 2, 4).unwrap()));
    let wanda_24 =
        layer.error(&masked(&layer.weights, &wanda_n_m(&layer.weights, OUT, IN, &layer.stats, 2, 4).unwrap()));
    let sparse_24 =
        sparsegpt(&layer.weights, OUT, IN, layer.hessian(), Pattern::NM { n_kept: 2, m: 4 }, &options).unwrap();
    let sparse_24_error = layer.error(&sparse_24.weights);
    eprintln!("2:4: magnitude {magnitude_24:.4}  wanda {wanda_24:.4}  sparsegpt {sparse_24_error:.4}");
    assert!(sparse_24_error < magnitude_24, "sparsegpt 2:4 {sparse_24_error} vs magnitude {magnitude_24}");
    assert!(wanda_24 < magnitude_24, "wanda 2:4 {wanda_24} vs magnitude {magnitude_24}");
    for group in 0..OUT * IN / 4 {
        let kept = (group * 4..group * 4 + 4).filter(|&i| sparse_24.mask.is_kept(i)).count();
        assert_eq!(kept, 2, "group {group}");
    }
    assert!(sparse_24.mask.pruned_indices().all(|i| sparse_24.weights[i] == 0.0));
}

/// Checks that `result` is exactly on its grid: the structures dequantize bit for bit to the
/// weights, and each integer value re-quantized with its own group's scale gives its own code.
fn assert_on_grid(result: &lathe_calib::Gptq, word: &str) {
    let restored = result.quantized.dequantize();
    assert!(restored.iter().zip(&result.weights).all(|(a, b)| a.to_bits() == b.to_bits()), "{word}");
    let matrix = result.quantized.to_matrix(OUT, IN).unwrap();
    let mut through_matrix = vec![0.0; OUT * IN];
    matrix.dequantize(&mut through_matrix);
    assert_eq!(through_matrix, result.weights, "{word}");
    if let Quantized::Int(int) = &result.quantized {
        let (qmin, qmax) = (f32::from(int.scheme().bits().qmin()), f32::from(int.scheme().bits().qmax()));
        for r in 0..OUT {
            for c in 0..IN {
                let (scale, zero_point) = int.group_params(int.group_index(r, c));
                let value = result.weights[r * IN + c];
                let code = (value / scale + f32::from(zero_point)).clamp(qmin, qmax).round_ties_even() as i8;
                assert_eq!(code, int.values()[r * IN + c], "{word} ({r}, {c})");
            }
        }
        let packed = int.to_pack_quantized();
        assert_eq!(&IntMatrix::from_pack_quantized(&packed).unwrap(), int, "{word}");
    }
    // GGML: each value divided by its block's stored scale lands back on its own code.
    let check = |b: usize, j: usize, code: i32, recomputed: i32| {
        assert_eq!(code, recomputed, "{word} block {b} value {j}");
    };
    let nibble = |qs: &[u8; 16], j: usize| i32::from((qs[j % 16] >> (4 * (j / 16))) & 15);
    match &result.quantized {
        Quantized::Q4_0(blocks) => {
            for (b, block) in blocks.iter().enumerate() {
                for j in 0..32 {
                    let v = result.weights[b * 32 + j];
                    check(b, j, nibble(&block.qs, j), (v / block.d.to_f32() + 8.5).floor() as i32);
                }
            }
        }
        Quantized::Q4_1(blocks) => {
            for (b, block) in blocks.iter().enumerate() {
                for j in 0..32 {
                    let v = result.weights[b * 32 + j];
                    let q = ((v - block.m.to_f32()) / block.d.to_f32() + 0.5).floor() as i32;
                    check(b, j, nibble(&block.qs, j), q);
                }
            }
        }
        Quantized::Q8_0(blocks) => {
            for (b, block) in blocks.iter().enumerate() {
                for j in 0..32 {
                    let v = result.weights[b * 32 + j];
                    check(b, j, i32::from(block.qs[j]), (v / block.d.to_f32()).round() as i32);
                }
            }
        }
        Quantized::Int(_) => {}
    }
}

#[test]
fn gptq_beats_round_to_nearest_and_stays_on_the_grid() {
    let layer = layer(11);
    let cases = [
        ("int4-channel", false),
        ("int4-g32", false),
        ("int4-g128", false),
        ("int8-channel", false),
        ("q4_0", false),
        ("q4_1", false),
        ("q8_0", false),
        ("int4-g128-asym", false),
        ("int8-tensor", false),
        ("int4-channel", true),
        ("int4-g32", true),
        ("q4_0", true),
    ];
    for (word, act_order) in cases {
        let scheme: Scheme = word.parse().unwrap();
        let rtn = round_to_nearest(&layer.weights, OUT, IN, scheme).unwrap().dequantize();
        let options = SweepOptions { act_order, ..SweepOptions::default() };
        let result = gptq(&layer.weights, OUT, IN, layer.hessian(), scheme, &options).unwrap();
        let (rtn_error, gptq_error) = (layer.error(&rtn), layer.error(&result.weights));
        eprintln!(
            "{word:>15}{}: rtn {rtn_error:.4}  gptq {gptq_error:.4}  ({:.1} % lower)",
            if act_order { " act_order" } else { "          " },
            100.0 * (1.0 - gptq_error / rtn_error)
        );
        assert!(gptq_error < rtn_error, "{word} act_order {act_order}: gptq {gptq_error} vs rtn {rtn_error}");
        assert_eq!(result.report.damp, 0.01);
        assert_on_grid(&result, word);
    }
}

/// With `X = 3 I` the Hessian is diagonal and equal: no error propagates, so GPTQ is
/// round-to-nearest and SparseGPT is magnitude pruning, bit for bit.
#[test]
fn an_identity_hessian_reduces_to_round_to_nearest_and_magnitude() {
    let weights = layer(5).weights;
    let x: Vec<f32> = (0..IN * IN).map(|i| if i / IN == i % IN { 3.0 } else { 0.0 }).collect();
    let mut stats = LayerStats::new(IN).unwrap();
    stats.update(&x, IN).unwrap();
    let hessian = stats.hessian().unwrap();
    for word in ["int4-channel", "int4-g32", "int4-g128-asym", "int8-channel", "int8-tensor", "q4_0", "q4_1", "q8_0"] {
        let scheme: Scheme = word.parse().unwrap();
        let rtn = round_to_nearest(&weights, OUT, IN, scheme).unwrap();
        for act_order in [false, true] {
            let options = SweepOptions { act_order, ..SweepOptions::default() };
            let result = gptq(&weights, OUT, IN, hessian, scheme, &options).unwrap();
            assert_eq!(result.quantized, rtn, "{word} act_order {act_order}");
            assert_eq!(result.weights, rtn.dequantize(), "{word} act_order {act_order}");
        }
    }

    let options = SweepOptions::default();
    let nm = sparsegpt(&weights, OUT, IN, hessian, Pattern::NM { n_kept: 2, m: 4 }, &options).unwrap();
    let magnitude_nm = n_m(&weights, OUT, IN, 2, 4).unwrap();
    assert_eq!(nm.mask, magnitude_nm);
    assert_eq!(nm.weights, masked(&weights, &magnitude_nm));

    // Unstructured: magnitude pruning of each [OUT, 128] slab as a whole.
    let unstructured = sparsegpt(&weights, OUT, IN, hessian, Pattern::Unstructured(0.5), &options).unwrap();
    let mut expected = Mask::all_kept(OUT * IN);
    for block in 0..IN / 128 {
        let indices: Vec<usize> =
            (0..OUT).flat_map(|r| (block * 128..(block + 1) * 128).map(move |c| r * IN + c)).collect();
        let slab: Vec<f32> = indices.iter().map(|&i| weights[i]).collect();
        let mask = lathe_prune::l1_unstructured(&slab, Amount::Fraction(0.5), None).unwrap();
        for pruned in mask.pruned_indices() {
            expected.set(indices[pruned], false);
        }
    }
    assert_eq!(unstructured.mask, expected);
    assert_eq!(unstructured.weights, masked(&weights, &expected));
}

#[test]
fn dead_input_channels_are_zeroed_without_nan() {
    let mut layer = layer(13);
    for row in layer.x.chunks_exact_mut(IN) {
        row[5] = 0.0;
        row[100] = 0.0;
    }
    let mut stats = LayerStats::new(IN).unwrap();
    stats.update(&layer.x, TOKENS).unwrap();
    let hessian = stats.hessian().unwrap();
    let options = SweepOptions { act_order: true, ..SweepOptions::default() };
    let quantized = gptq(&layer.weights, OUT, IN, hessian, "int4-g32".parse().unwrap(), &options).unwrap();
    let pruned = sparsegpt(&layer.weights, OUT, IN, hessian, Pattern::Unstructured(0.5), &options).unwrap();
    for weights in [&quantized.weights, &pruned.weights] {
        assert!(weights.iter().all(|w| w.is_finite()));
        assert!((0..OUT).all(|r| weights[r * IN + 5] == 0.0 && weights[r * IN + 100] == 0.0));
    }
    let mut dead = quantized.report.dead_columns.clone();
    dead.sort_unstable();
    assert_eq!(dead, [5, 100]);
    assert_eq!(pruned.report.dead_columns, [5, 100]);
    assert!(quantized.report.loss.is_finite() && pruned.report.loss.is_finite());
    // Wanda sees zero norms there and prunes those weights first.
    let mask = wanda_unstructured(&layer.weights, OUT, IN, &stats, Amount::Fraction(0.5)).unwrap();
    assert!((0..OUT).all(|r| !mask.is_kept(r * IN + 5) && !mask.is_kept(r * IN + 100)));
}

#[test]
fn smoothing_lowers_the_w8a8_error_on_outlier_channels() {
    let layer = layer(17);
    // W8A8: int8 per-channel weights, dynamic per-token int8 activations.
    let w8a8 = |weights: &[f32], x: &[f32]| -> f64 {
        let matrix = IntMatrix::quantize(weights, OUT, IN, "int8-channel".parse().unwrap()).unwrap();
        let mut wq = vec![0.0; OUT * IN];
        matrix.dequantize(&mut wq);
        let mut codes = vec![0i8; IN];
        let mut total = 0.0;
        for (t, row) in x.chunks_exact(IN).enumerate() {
            let scale = quantize_activations_i8(row, &mut codes);
            for r in 0..OUT {
                let exact: f64 =
                    (0..IN).map(|c| f64::from(layer.x[t * IN + c]) * f64::from(layer.weights[r * IN + c])).sum();
                let quantized: f64 =
                    (0..IN).map(|c| f64::from(f32::from(codes[c]) * scale) * f64::from(wq[r * IN + c])).sum();
                total += (exact - quantized).powi(2);
            }
        }
        total.sqrt()
    };
    let plain = w8a8(&layer.weights, &layer.x);
    let scales = smooth_scales(layer.stats.abs_max(), &column_abs_max(&layer.weights, OUT, IN).unwrap(), 0.5).unwrap();
    let (mut weights, mut x) = (layer.weights.clone(), layer.x.clone());
    smooth_weights(&mut weights, OUT, IN, &scales).unwrap();
    smooth_activations(&mut x, TOKENS, IN, &scales).unwrap();
    let smoothed = w8a8(&weights, &x);
    eprintln!("w8a8 output error: plain {plain:.4}  smoothquant(alpha 0.5) {smoothed:.4}");
    assert!(smoothed < plain, "{smoothed} vs {plain}");
    assert!(OUTLIERS.iter().all(|&j| scales[j] > 2.0));
}

#[test]
fn bad_input_is_an_error() {
    let layer = layer(19);
    let options = SweepOptions::default();
    let int4: Scheme = "int4-g32".parse().unwrap();
    let h = layer.hessian();
    assert!(matches!(
        gptq(&layer.weights, OUT, IN, &h[1..], int4, &options),
        Err(Error::ShapeMismatch { what: "hessian", .. })
    ));
    assert!(matches!(
        gptq(&layer.weights[1..], OUT, IN, h, int4, &options),
        Err(Error::ShapeMismatch { what: "weights", .. })
    ));
    let mut bad_h = h.to_vec();
    bad_h[IN + 3] = f64::INFINITY;
    assert!(matches!(
        gptq(&layer.weights, OUT, IN, &bad_h, int4, &options),
        Err(Error::NonFiniteHessian { row: 1, col: 3, .. })
    ));
    let negative: Vec<f64> = h.iter().map(|v| -v).collect();
    assert!(matches!(
        sparsegpt(&layer.weights, OUT, IN, &negative, Pattern::Unstructured(0.5), &options),
        Err(Error::NotPositiveDefinite { cols: IN, attempts: 4, .. })
    ));
    assert!(matches!(gptq(&layer.weights, OUT, IN, h, Scheme::F16, &options), Err(Error::UnsupportedScheme { .. })));
    assert!(matches!(
        gptq(&layer.weights[..OUT * 96], OUT, 96, &h[..96 * 96], "int4-g64".parse().unwrap(), &options),
        Err(Error::BlockMisfit { cols: 96, block: 64, .. })
    ));
    assert!(matches!(
        sparsegpt(&layer.weights, OUT, IN, h, Pattern::NM { n_kept: 3, m: 2 }, &options),
        Err(Error::BadPattern { n_kept: 3, m: 2, .. })
    ));
    assert!(matches!(
        sparsegpt(&layer.weights, OUT, IN, h, Pattern::Unstructured(1.5), &options),
        Err(Error::BadSparsity { .. })
    ));
    let narrow = LayerStats::without_hessian(IN - 1);
    assert!(matches!(
        wanda_unstructured(&layer.weights, OUT, IN, &narrow, Amount::Fraction(0.5)),
        Err(Error::ShapeMismatch { what: "activation norms", .. })
    ));
    assert!(matches!(
        wanda_unstructured(&layer.weights, OUT, IN, &layer.stats, Amount::Fraction(2.0)),
        Err(Error::Prune(lathe_prune::Error::BadFraction { .. }))
    ));
}
