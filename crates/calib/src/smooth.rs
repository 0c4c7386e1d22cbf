//! SmoothQuant scales: see [`smooth_scales`].

use crate::error::{check_len, check_weights};
use crate::{Error, Result};

/// `max_r |W[r, j]|` for each column of a row-major `[rows, cols]` weight.
///
/// # Errors
/// [`Error::ShapeMismatch`] / [`Error::TooLarge`] when `weights` is not `rows x cols`, and
/// [`Error::NonFiniteWeight`] for NaN or infinite weights.
pub fn column_abs_max(weights: &[f32], rows: usize, cols: usize) -> Result<Vec<f32>> {
    check_weights(weights, rows, cols)?;
    let mut max = vec![0.0f32; cols];
    for row in weights.chunks_exact(cols.max(1)) {
        for (m, &w) in max.iter_mut().zip(row) {
            *m = m.max(w.abs());
        }
    }
    Ok(max)
}

fn check_stat(what: &'static str, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
        Some(index) => Err(Error::BadStatistic { what, index, value: values[index] }),
        None => Ok(()),
    }
}

/// SmoothQuant (Xiao et al. 2023): move the difficulty of quantizing activation outliers into the
/// weights with a per-input-channel scale `s_j = max|X_j|^alpha / max|W[:, j]|^(1 - alpha)`.
///
/// The layer computes the same function with `X' = X / s` (fold the division into the preceding
/// LayerNorm's weight and bias) and `W'[:, j] = W[:, j] * s_j` ([`smooth_weights`]). When several
/// linears read the same input (q, k and v), take the elementwise maximum of their
/// [`column_abs_max`] and scale all of them with the same `s`.
///
/// Zeros: a channel whose activation maximum or weight maximum is 0 gets `s_j = 1` (nothing to
/// migrate, and the reference's clamp to 1e-5 would only rescale a dead channel).
///
/// SmoothQuant's scales from the activation maxima (e.g. [`crate::LayerStats::abs_max`]) and
/// the weight column maxima ([`column_abs_max`]), computed in f64 and rounded to f32.
///
/// # Errors
/// [`Error::BadAlpha`] outside `0..=1`, [`Error::ShapeMismatch`] when the lengths differ, and
/// [`Error::BadStatistic`] for a negative or non-finite maximum.
pub fn smooth_scales(act_abs_max: &[f32], weight_abs_max: &[f32], alpha: f32) -> Result<Vec<f32>> {
    if !(0.0..=1.0).contains(&alpha) {
        return Err(Error::BadAlpha { alpha });
    }
    check_len("weight maxima", act_abs_max.len(), weight_abs_max.len())?;
    check_stat("activation maximum", act_abs_max)?;
    check_stat("weight maximum", weight_abs_max)?;
    let alpha = f64::from(alpha);
    Ok(act_abs_max
        .iter()
        .zip(weight_abs_max)
        .map(|(&a, &w)| {
            if a == 0.0 || w == 0.0 {
                return 1.0;
            }
            let s = f64::from(a).powf(alpha) / f64::from(w).powf(1.0 - alpha);
            // A scale that over- or underflows f32 would turn the layer into inf or 0.
            if s.is_normal() && (s as f32).is_normal() { s as f32 } else { 1.0 }
        })
        .collect())
}

/// Multiplies column `j` of the row-major `[rows, cols]` weight by `scales[j]`.
///
/// # Errors
/// As [`column_abs_max`], plus [`Error::ShapeMismatch`] when `scales` does not hold `cols` values
/// and [`Error::BadStatistic`] for a scale that is not finite and above 0.
pub fn smooth_weights(weights: &mut [f32], rows: usize, cols: usize, scales: &[f32]) -> Result<()> {
    check_weights(weights, rows, cols)?;
    check_scales(scales, cols)?;
    for row in weights.chunks_exact_mut(cols.max(1)) {
        for (w, s) in row.iter_mut().zip(scales) {
            *w *= s;
        }
    }
    Ok(())
}

/// Divides channel `j` of the row-major `[tokens, cols]` activations by `scales[j]`: what the
/// folded LayerNorm does at run time (for checks and for callers without a LayerNorm to fold into).
///
/// # Errors
/// [`Error::ShapeMismatch`] / [`Error::TooLarge`] when `x` is not `tokens x cols` or `scales`
/// does not hold `cols` values, and [`Error::BadStatistic`] for a scale that is not finite and
/// above 0.
pub fn smooth_activations(x: &mut [f32], tokens: usize, cols: usize, scales: &[f32]) -> Result<()> {
    check_len("activations", crate::error::checked_len(tokens, cols)?, x.len())?;
    check_scales(scales, cols)?;
    for row in x.chunks_exact_mut(cols.max(1)) {
        for (v, s) in row.iter_mut().zip(scales) {
            *v /= s;
        }
    }
    Ok(())
}

fn check_scales(scales: &[f32], cols: usize) -> Result<()> {
    check_len("scales", cols, scales.len())?;
    match scales.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
        Some(index) => Err(Error::BadStatistic { what: "smoothing scale", index, value: scales[index] }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_follow_the_formula_and_guard_zeros() {
        let scales = smooth_scales(&[16.0, 0.0, 4.0, 9.0], &[1.0, 2.0, 0.0, 4.0], 0.5).unwrap();
        assert_eq!(scales, [4.0, 1.0, 1.0, 1.5]);
        assert_eq!(smooth_scales(&[8.0], &[2.0], 1.0).unwrap(), [8.0]);
        assert_eq!(smooth_scales(&[8.0], &[2.0], 0.0).unwrap(), [0.5]);
        assert_eq!(smooth_scales(&[1.0], &[1.0], 1.5), Err(Error::BadAlpha { alpha: 1.5 }));
        assert!(matches!(smooth_scales(&[1.0], &[1.0, 2.0], 0.5), Err(Error::ShapeMismatch { .. })));
        assert!(matches!(
            smooth_scales(&[1.0, -1.0], &[1.0, 2.0], 0.5),
            Err(Error::BadStatistic { what: "activation maximum", index: 1, .. })
        ));
    }

    #[test]
    fn smoothing_keeps_the_product() {
        let (rows, cols, tokens) = (2, 3, 2);
        let mut w = vec![1.0, -2.0, 0.5, 3.0, 0.25, -1.0];
        let mut x = vec![10.0, 0.1, 1.0, -20.0, 0.2, 2.0];
        let product = |w: &[f32], x: &[f32]| -> Vec<f32> {
            (0..tokens)
                .flat_map(|t| (0..rows).map(move |r| (0..cols).map(|c| x[t * cols + c] * w[r * cols + c]).sum::<f32>()))
                .collect()
        };
        let before = product(&w, &x);
        let act = [20.0, 0.2, 2.0];
        let scales = smooth_scales(&act, &column_abs_max(&w, rows, cols).unwrap(), 0.5).unwrap();
        smooth_weights(&mut w, rows, cols, &scales).unwrap();
        smooth_activations(&mut x, tokens, cols, &scales).unwrap();
        for (a, b) in before.iter().zip(product(&w, &x)) {
            assert!((a - b).abs() < 1e-5 * a.abs().max(1.0), "{a} vs {b}");
        }
        assert!(matches!(
            smooth_weights(&mut w, rows, cols, &[1.0, 0.0, 1.0]),
            Err(Error::BadStatistic { what: "smoothing scale", index: 1, .. })
        ));
    }
}
