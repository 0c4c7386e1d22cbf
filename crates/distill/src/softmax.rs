//! Row-wise log-softmax in f64, the numerically careful core every logit loss shares.

/// Writes `log_softmax(row / temperature)` into `out`, computed in f64.
///
/// The maximum is subtracted before exponentiating, so the sum of exponentials lies in
/// `[1, row.len()]` and neither overflows nor underflows to zero; f64 keeps `row / temperature`
/// exact enough even for logits near `f32::MAX` divided by a tiny temperature. `row` must be
/// non-empty and finite (the public functions check both).
pub(crate) fn log_softmax(row: &[f32], temperature: f64, out: &mut [f64]) {
    debug_assert_eq!(row.len(), out.len());
    let mut max = f64::NEG_INFINITY;
    for (dst, &src) in out.iter_mut().zip(row) {
        *dst = f64::from(src) / temperature;
        max = max.max(*dst);
    }
    let mut sum = 0.0f64;
    for value in out.iter_mut() {
        *value -= max;
        sum += value.exp();
    }
    let log_sum = sum.ln();
    for value in out.iter_mut() {
        *value -= log_sum;
    }
}

/// `KL(p || q) = Σ p (log p − log q)` for one row given both log-probabilities.
///
/// Terms whose `p` underflows to zero contribute exactly zero (both logs are finite, so there is
/// no `0 · ∞`). The result is clamped at zero: KL is non-negative and rounding must not make a
/// near-identical pair report a tiny negative divergence.
pub(crate) fn kl_row(log_p: &[f64], log_q: &[f64]) -> f64 {
    let sum: f64 = log_p.iter().zip(log_q).map(|(&lp, &lq)| lp.exp() * (lp - lq)).sum();
    sum.max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_sum_to_one_for_extreme_logits() {
        let row = [1e30f32, -1e30, 0.0, 3.0e38, -3.0e38, 1e30];
        let mut out = [0.0f64; 6];
        log_softmax(&row, 1e-3, &mut out);
        assert!(out.iter().all(|value| value.is_finite()), "{out:?}");
        let total: f64 = out.iter().map(|value| value.exp()).sum();
        assert!((total - 1.0).abs() < 1e-12, "{total}");
        assert_eq!(out[3], 0.0);
    }

    #[test]
    fn matches_the_textbook_formula_on_small_logits() {
        let row = [0.5f32, -1.25, 2.0, 0.0];
        let mut out = [0.0f64; 4];
        log_softmax(&row, 2.0, &mut out);
        let scaled: Vec<f64> = row.iter().map(|&value| f64::from(value) / 2.0).collect();
        let log_sum = scaled.iter().map(|value| value.exp()).sum::<f64>().ln();
        for (got, value) in out.iter().zip(&scaled) {
            assert!((got - (value - log_sum)).abs() < 1e-15);
        }
    }

    #[test]
    fn kl_of_a_row_with_itself_is_zero_and_positive_otherwise() {
        let mut p = [0.0f64; 3];
        let mut q = [0.0f64; 3];
        log_softmax(&[1.0, 2.0, 3.0], 1.0, &mut p);
        log_softmax(&[3.0, 2.0, 1.0], 1.0, &mut q);
        assert_eq!(kl_row(&p, &p), 0.0);
        assert!(kl_row(&p, &q) > 0.1);
    }
}
