//! Integration tests: every loss against PyTorch's golden values, then property tests (finite
//! differences for every gradient, the invariants of KL and softmax, extreme inputs).

use lathe_distill::{
    AttentionShape, IGNORE_INDEX, Loss, Shape, attention_kl, cosine_embedding, cross_entropy, kd_kl, kd_mix, mse,
    soft_cross_entropy,
};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use safetensors::{Dtype, SafeTensors};

// ---------------------------------------------------------------------------------------------
// Golden values from torch 2.15 (tests/data/README.md).

const GOLDEN: &[u8] = include_bytes!("data/torch_distill.safetensors");
const LOGITS: Shape = Shape { rows: 24, cols: 50 };
const HIDDEN: Shape = Shape { rows: 8, cols: 384 };
/// The acceptance tolerance: relative 1e-5 against torch's f32 results.
const GOLDEN_RTOL: f64 = 1e-5;

fn tensor(golden: &SafeTensors<'_>, name: &str, dtype: Dtype, shape: &[usize]) -> Vec<u8> {
    let view = golden.tensor(name).unwrap_or_else(|err| panic!("golden tensor {name}: {err}"));
    assert_eq!(view.dtype(), dtype, "{name}");
    assert_eq!(view.shape(), shape, "{name}");
    view.data().to_vec()
}

fn f32s(golden: &SafeTensors<'_>, name: &str, shape: &[usize]) -> Vec<f32> {
    let bytes = tensor(golden, name, Dtype::F32, shape);
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn i64s(golden: &SafeTensors<'_>, name: &str, shape: &[usize]) -> Vec<i64> {
    let bytes = tensor(golden, name, Dtype::I64, shape);
    bytes.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect()
}

/// Asserts `loss` equals torch's `<case>.loss` and `<case>.grad` within [`GOLDEN_RTOL`].
///
/// The value is compared relative to itself. The gradient is compared element by element
/// relative to the tensor's largest magnitude (a max-norm relative error): torch computes
/// `p_s - p_t` in f32, so its absolute error is about 1e-7 of the largest element everywhere, and
/// the smallest elements (1e-10 next to 0.04) carry a relative error of up to 1e-4 in torch's own
/// numbers while ours, computed in f64, are closer to the truth.
fn assert_golden(golden: &SafeTensors<'_>, case: &str, grad_shape: &[usize], loss: &Loss) {
    let value = f64::from(f32s(golden, &format!("{case}.loss"), &[1])[0]);
    let value_err = (loss.value - value).abs() / value.abs();
    assert!(value_err <= GOLDEN_RTOL, "{case}: loss {} vs torch {value} (rel {value_err:.2e})", loss.value);

    let expected = f32s(golden, &format!("{case}.grad"), grad_shape);
    assert_eq!(loss.grad.len(), expected.len(), "{case}");
    let largest = expected.iter().fold(0.0f64, |acc, &g| acc.max(f64::from(g).abs()));
    assert!(largest > 0.0, "{case}: torch's gradient is all zeros");
    let mut worst = 0.0f64;
    for (index, (&got, &want)) in loss.grad.iter().zip(&expected).enumerate() {
        let err = (f64::from(got) - f64::from(want)).abs() / largest;
        assert!(err <= GOLDEN_RTOL, "{case}: grad[{index}] {got} vs torch {want} (rel to max {err:.2e})");
        worst = worst.max(err);
    }
    println!("{case}: loss {:.9} (torch {value:.9}, rel {value_err:.1e}), grad max-norm rel {worst:.1e}", loss.value);
}

#[test]
fn every_loss_matches_torch() {
    let golden = SafeTensors::deserialize(GOLDEN).expect("the golden file parses");
    let student = f32s(&golden, "logits.student", &[4, 6, 50]);
    let teacher = f32s(&golden, "logits.teacher", &[4, 6, 50]);
    let labels = i64s(&golden, "labels", &[4, 6]);
    // The fixture has no ignored (-100) rows; ignore_index is covered by the unit tests and the
    // properties below.
    assert!(labels.iter().all(|&label| (0..50).contains(&label)), "{labels:?}");

    for temperature in [1u8, 2, 4] {
        let loss = kd_kl(&student, &teacher, LOGITS, f32::from(temperature)).unwrap();
        assert_golden(&golden, &format!("kd.T{temperature}"), &[4, 6, 50], &loss);
    }
    let ce = cross_entropy(&student, &labels, LOGITS, IGNORE_INDEX).unwrap();
    assert_golden(&golden, "ce", &[4, 6, 50], &ce);
    let mix = kd_mix(&student, &teacher, &labels, LOGITS, 2.0, 0.7, IGNORE_INDEX).unwrap();
    assert_golden(&golden, "mix", &[4, 6, 50], &mix);

    let hidden_student = f32s(&golden, "hidden.student", &[8, 384]);
    let hidden_teacher = f32s(&golden, "hidden.teacher", &[8, 384]);
    assert_golden(&golden, "mse", &[8, 384], &mse(&hidden_student, &hidden_teacher).unwrap());
    let cos = cosine_embedding(&hidden_student, &hidden_teacher, HIDDEN).unwrap();
    assert_golden(&golden, "cos", &[8, 384], &cos);
}

// ---------------------------------------------------------------------------------------------
// Property tests.

/// Values on a grid of 2^-7 within ±4: exactly representable, and so are `x ± FD_STEP` and
/// `x + c` for small integers `c`, which keeps finite differences and shifts free of input
/// rounding.
fn grid_value() -> impl Strategy<Value = f32> {
    (-512i32..=512).prop_map(|i| i as f32 / 128.0)
}

fn matrix(shape: Shape) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(grid_value(), shape.rows * shape.cols)
}

fn small_shape() -> impl Strategy<Value = Shape> {
    (1usize..=4, 1usize..=6).prop_map(|(rows, cols)| Shape { rows, cols })
}

/// A student/teacher pair of logits with their shape.
fn logit_pair() -> impl Strategy<Value = (Shape, Vec<f32>, Vec<f32>)> {
    small_shape().prop_flat_map(|shape| (Just(shape), matrix(shape), matrix(shape)))
}

/// Labels for `rows` rows over `cols` classes, about one in `cols + 1` ignored.
fn labels(shape: Shape) -> impl Strategy<Value = Vec<i64>> {
    prop::collection::vec((-1..shape.cols as i64).prop_map(|l| if l < 0 { IGNORE_INDEX } else { l }), shape.rows)
}

fn temperature() -> impl Strategy<Value = f32> {
    prop::sample::select(vec![0.5f32, 1.0, 2.0, 3.0, 4.0])
}

/// Finite-difference step: a power of two, so `x ± FD_STEP` is exact on the grid.
const FD_STEP: f32 = 1.0 / 4096.0;

/// Compares `grad` with f64 central differences of `loss` at `input`.
fn check_gradient(input: &[f32], grad: &[f32], loss: impl Fn(&[f32]) -> f64) -> Result<(), TestCaseError> {
    prop_assert_eq!(input.len(), grad.len());
    let mut probe = input.to_vec();
    for index in 0..input.len() {
        probe[index] = input[index] + FD_STEP;
        let plus = loss(&probe);
        probe[index] = input[index] - FD_STEP;
        let minus = loss(&probe);
        probe[index] = input[index];
        let numeric = (plus - minus) / (2.0 * f64::from(FD_STEP));
        let analytic = f64::from(grad[index]);
        let tolerance = 1e-6 + 1e-4 * analytic.abs();
        prop_assert!(
            (numeric - analytic).abs() <= tolerance,
            "grad[{}]: analytic {} vs central difference {}",
            index,
            analytic,
            numeric
        );
    }
    Ok(())
}

/// An attention case: shape, valid length, student and teacher scores.
fn attention_case() -> impl Strategy<Value = (AttentionShape, usize, Vec<f32>, Vec<f32>)> {
    (1usize..=3, 1usize..=5)
        .prop_flat_map(|(heads, len)| (Just(AttentionShape { heads, queries: len, keys: len }), 1..=len))
        .prop_flat_map(|(shape, valid_len)| {
            let count = shape.heads * shape.queries * shape.keys;
            let scores = || prop::collection::vec(grid_value(), count);
            (Just(shape), Just(valid_len), scores(), scores())
        })
}

/// Logits mixing ordinary values with ±1e30 and the extremes of f32.
fn extreme_value() -> impl Strategy<Value = f32> {
    prop_oneof![
        grid_value(),
        prop::sample::select(vec![1e30f32, -1e30, f32::MAX, f32::MIN, 0.0, -0.0, f32::MIN_POSITIVE, 1e-30]),
    ]
}

fn all_finite(loss: &Loss) -> bool {
    loss.value.is_finite() && loss.grad.iter().all(|g| g.is_finite())
}

/// 128 cases per property; failures are saved to `proptest-regressions/losses.txt` (proptest
/// cannot place them beside an integration test's source on its own).
fn config() -> ProptestConfig {
    let persistence = FileFailurePersistence::Direct("proptest-regressions/losses.txt");
    ProptestConfig { cases: 128, failure_persistence: Some(Box::new(persistence)), ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn kd_gradient_matches_finite_differences((shape, student, teacher) in logit_pair(), t in temperature()) {
        let loss = kd_kl(&student, &teacher, shape, t).unwrap();
        check_gradient(&student, &loss.grad, |s| kd_kl(s, &teacher, shape, t).unwrap().value)?;
    }

    #[test]
    fn soft_cross_entropy_gradient_matches_finite_differences(
        (shape, student, teacher) in logit_pair(),
        t in temperature(),
    ) {
        let loss = soft_cross_entropy(&student, &teacher, shape, t).unwrap();
        check_gradient(&student, &loss.grad, |s| soft_cross_entropy(s, &teacher, shape, t).unwrap().value)?;
        // It is KD plus a teacher-only constant, so it never drops below KD.
        prop_assert!(loss.value >= kd_kl(&student, &teacher, shape, t).unwrap().value - 1e-12);
    }

    #[test]
    fn cross_entropy_gradient_matches_finite_differences(
        (shape, student, labels) in small_shape().prop_flat_map(|shape| (Just(shape), matrix(shape), labels(shape))),
    ) {
        let loss = cross_entropy(&student, &labels, shape, IGNORE_INDEX).unwrap();
        prop_assert!(loss.value >= 0.0);
        check_gradient(&student, &loss.grad, |s| cross_entropy(s, &labels, shape, IGNORE_INDEX).unwrap().value)?;
    }

    #[test]
    fn mix_gradient_matches_finite_differences(
        (shape, student, teacher, labels) in small_shape()
            .prop_flat_map(|shape| (Just(shape), matrix(shape), matrix(shape), labels(shape))),
        t in temperature(),
        alpha in 0.0f32..=1.0,
    ) {
        let loss = kd_mix(&student, &teacher, &labels, shape, t, alpha, IGNORE_INDEX).unwrap();
        check_gradient(&student, &loss.grad, |s| {
            kd_mix(s, &teacher, &labels, shape, t, alpha, IGNORE_INDEX).unwrap().value
        })?;
    }

    #[test]
    fn mse_gradient_matches_finite_differences((_, student, teacher) in logit_pair()) {
        let loss = mse(&student, &teacher).unwrap();
        check_gradient(&student, &loss.grad, |s| mse(s, &teacher).unwrap().value)?;
    }

    #[test]
    fn cosine_gradient_matches_finite_differences((shape, student, teacher) in logit_pair()) {
        // Near a zero row the cosine bends too sharply for a finite difference of this step.
        let norms_ok = student.chunks(shape.cols).all(|row| row.iter().map(|v| v * v).sum::<f32>() >= 0.25);
        prop_assume!(norms_ok);
        let loss = cosine_embedding(&student, &teacher, shape).unwrap();
        prop_assert!((0.0..=2.0).contains(&loss.value));
        check_gradient(&student, &loss.grad, |s| cosine_embedding(s, &teacher, shape).unwrap().value)?;
    }

    #[test]
    fn attention_gradient_matches_finite_differences((shape, valid_len, student, teacher) in attention_case()) {
        let loss = attention_kl(&student, &teacher, shape, valid_len).unwrap();
        prop_assert!(loss.value >= 0.0);
        check_gradient(&student, &loss.grad, |s| attention_kl(s, &teacher, shape, valid_len).unwrap().value)?;
    }

    #[test]
    fn kl_is_non_negative_and_zero_only_against_itself((shape, student, teacher) in logit_pair(), t in temperature()) {
        prop_assert!(kd_kl(&student, &teacher, shape, t).unwrap().value >= 0.0);
        let same = kd_kl(&student, &student, shape, t).unwrap();
        prop_assert_eq!(same.value, 0.0);
        prop_assert!(same.grad.iter().all(|&g| g == 0.0));
        prop_assert_eq!(mse(&student, &student).unwrap().value, 0.0);
    }

    #[test]
    fn attention_kl_is_zero_against_itself((shape, valid_len, student, _) in attention_case()) {
        let same = attention_kl(&student, &student, shape, valid_len).unwrap();
        prop_assert_eq!(same.value, 0.0);
        prop_assert!(same.grad.iter().all(|&g| g == 0.0));
    }

    #[test]
    fn adding_a_constant_to_a_row_changes_nothing(
        (shape, student, teacher, labels) in small_shape()
            .prop_flat_map(|shape| (Just(shape), matrix(shape), matrix(shape), labels(shape))),
        row_pick in any::<prop::sample::Index>(),
        shift in -64i32..=64,
        t in temperature(),
    ) {
        let row = row_pick.index(shape.rows);
        let shifted = |values: &[f32]| {
            let mut out = values.to_vec();
            for value in &mut out[row * shape.cols..(row + 1) * shape.cols] {
                *value += shift as f32;
            }
            out
        };
        let close = |a: &Loss, b: &Loss| {
            (a.value - b.value).abs() <= 1e-9 * (1.0 + a.value.abs())
                && a.grad.iter().zip(&b.grad).all(|(x, y)| (x - y).abs() <= 1e-6)
        };
        let base = kd_kl(&student, &teacher, shape, t).unwrap();
        prop_assert!(close(&base, &kd_kl(&shifted(&student), &teacher, shape, t).unwrap()));
        prop_assert!(close(&base, &kd_kl(&student, &shifted(&teacher), shape, t).unwrap()));
        let ce = cross_entropy(&student, &labels, shape, IGNORE_INDEX).unwrap();
        prop_assert!(close(&ce, &cross_entropy(&shifted(&student), &labels, shape, IGNORE_INDEX).unwrap()));
        let attention = AttentionShape { heads: 1, queries: shape.rows, keys: shape.cols };
        if shape.rows <= shape.cols {
            let base = attention_kl(&student, &teacher, attention, shape.rows).unwrap();
            let moved = attention_kl(&shifted(&student), &shifted(&teacher), attention, shape.rows).unwrap();
            prop_assert!(close(&base, &moved));
        }
    }

    #[test]
    fn extreme_logits_never_give_nan_or_infinity(
        (shape, student, teacher, labels) in small_shape().prop_flat_map(|shape| {
            let count = shape.rows * shape.cols;
            let values = || prop::collection::vec(extreme_value(), count);
            (Just(shape), values(), values(), labels(shape))
        }),
        t in prop::sample::select(vec![1e-3f32, 0.5, 1.0, 4.0, 100.0]),
        alpha in 0.0f32..=1.0,
    ) {
        for loss in [
            kd_kl(&student, &teacher, shape, t).unwrap(),
            soft_cross_entropy(&student, &teacher, shape, t).unwrap(),
            cross_entropy(&student, &labels, shape, IGNORE_INDEX).unwrap(),
            kd_mix(&student, &teacher, &labels, shape, t, alpha, IGNORE_INDEX).unwrap(),
            cosine_embedding(&student, &teacher, shape).unwrap(),
        ] {
            prop_assert!(all_finite(&loss), "{:?}", loss);
        }
        // The MSE gradient 2 (s - t) / n is only representable in f32 while |s - t| stays below
        // about f32::MAX; at ±1e30 it is, beyond that only the f64 value is promised.
        let squared = mse(&student, &teacher).unwrap();
        prop_assert!(squared.value.is_finite());
        if student.iter().chain(&teacher).all(|v| v.abs() <= 1e30) {
            prop_assert!(all_finite(&squared), "{:?}", squared);
        }
        prop_assert!(kd_kl(&student, &teacher, shape, t).unwrap().value >= 0.0);
        if shape.rows <= shape.cols {
            let attention = AttentionShape { heads: 1, queries: shape.rows, keys: shape.cols };
            let loss = attention_kl(&student, &teacher, attention, shape.rows).unwrap();
            prop_assert!(all_finite(&loss) && loss.value >= 0.0, "{:?}", loss);
        }
    }
}
