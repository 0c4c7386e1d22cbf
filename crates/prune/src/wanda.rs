//! Wanda (Sun et al., 2023, "A Simple and Effective Pruning Approach for Large Language Models"):
//! score each weight by `|W[r, c]| * ||X[:, c]||_2` and prune within each output row.
//!
//! Only the scoring and the masks live here: the caller gathers the activation norms (the L2 norm
//! of each input feature over the calibration tokens) however it runs the model.

use crate::nm::check_pattern;
use crate::select::{check_matrix, check_not_nan, smallest};
use crate::{Amount, Error, Mask, Result};

/// Wanda's scores `|W[r, c]| * activation_norms[c]` for a row-major `[out, in]` = `rows x cols`
/// weight, in f32 as the reference implementation computes them.
///
/// Errors on a NaN weight, an activation norm that is negative, infinite or NaN, or a score that
/// comes out NaN (an infinite weight times a zero norm).
pub fn wanda_scores(weights: &[f32], rows: usize, cols: usize, activation_norms: &[f32]) -> Result<Vec<f32>> {
    check_matrix(rows, cols, weights.len())?;
    crate::mask::check_len("activation norms", cols, activation_norms.len())?;
    check_not_nan("weight", weights)?;
    if let Some((index, &value)) =
        activation_norms.iter().enumerate().find(|&(_, &norm)| !(norm.is_finite() && norm >= 0.0))
    {
        return Err(Error::BadActivationNorm { index, value });
    }
    let scores: Vec<f32> = weights
        .chunks_exact(cols.max(1))
        .flat_map(|row| row.iter().zip(activation_norms).map(|(weight, norm)| weight.abs() * norm))
        .collect();
    check_not_nan("wanda score", &scores)?;
    Ok(scores)
}

/// Wanda's unstructured mask: prunes `amount` of the entries of each output row with the
/// smallest score (so every row ends with the same sparsity).
///
/// A fraction becomes a per-row count with this crate's rule (`round_ties_even(fraction * cols)`);
/// the reference code truncates (`int(cols * sparsity)`), so pass [`Amount::Count`] to match it
/// where the two differ.
pub fn wanda_unstructured(
    weights: &[f32],
    rows: usize,
    cols: usize,
    activation_norms: &[f32],
    amount: Amount,
) -> Result<Mask> {
    amount.validate()?;
    per_row_by_score(&wanda_scores(weights, rows, cols, activation_norms)?, rows, cols, amount)
}

/// Wanda's N:M mask: keeps the `n_kept` best-scored entries of every `m` consecutive columns.
pub fn wanda_n_m(
    weights: &[f32],
    rows: usize,
    cols: usize,
    activation_norms: &[f32],
    n_kept: usize,
    m: usize,
) -> Result<Mask> {
    check_pattern(cols, n_kept, m)?;
    crate::n_m_by_score(&wanda_scores(weights, rows, cols, activation_norms)?, rows, cols, n_kept, m)
}

/// Unstructured pruning within each row of a row-major `rows x cols` score matrix: prunes
/// `amount` of each row's entries with the smallest score (the lower column first among equal
/// scores).
pub fn per_row_by_score(scores: &[f32], rows: usize, cols: usize, amount: Amount) -> Result<Mask> {
    amount.validate()?;
    check_matrix(rows, cols, scores.len())?;
    check_not_nan("score", scores)?;
    let k = amount.count_of(cols, "entries per row")?;
    let mut mask = Mask::all_kept(scores.len());
    let mut candidates = Vec::with_capacity(cols);
    for row in 0..rows {
        candidates.clear();
        candidates.extend(row * cols..(row + 1) * cols);
        for &index in smallest(&mut candidates, k, |i| f64::from(scores[i])) {
            mask.prune(index);
        }
    }
    Ok(mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEIGHTS: [f32; 8] = [1.0, -2.0, 3.0, -4.0, 4.0, 3.0, -2.0, 1.0];

    #[test]
    fn activation_norms_reweigh_magnitudes() {
        let norms = [10.0, 1.0, 1.0, 0.1];
        let scores = wanda_scores(&WEIGHTS, 2, 4, &norms).unwrap();
        assert_eq!(scores, [10.0, 2.0, 3.0, 0.4, 40.0, 3.0, 2.0, 0.1]);
        let mask = wanda_unstructured(&WEIGHTS, 2, 4, &norms, Amount::Fraction(0.5)).unwrap();
        assert_eq!(mask.kept_indices().collect::<Vec<_>>(), [0, 2, 4, 5]);
        let nm = wanda_n_m(&WEIGHTS, 2, 4, &norms, 1, 2).unwrap();
        assert_eq!(nm.kept_indices().collect::<Vec<_>>(), [0, 2, 4, 6]);
        // Plain magnitude would keep other entries.
        assert_eq!(crate::n_m(&WEIGHTS, 2, 4, 1, 2).unwrap().kept_indices().collect::<Vec<_>>(), [1, 3, 4, 6]);
    }

    #[test]
    fn per_row_prunes_within_each_row() {
        let scores = [4.0, 3.0, 2.0, 1.0, 1.0, 2.0, 3.0, 4.0];
        let mask = per_row_by_score(&scores, 2, 4, Amount::Fraction(0.5)).unwrap();
        assert_eq!(mask.pruned_indices().collect::<Vec<_>>(), [2, 3, 4, 5]);
        assert!(matches!(per_row_by_score(&scores, 3, 4, Amount::Count(1)), Err(Error::ShapeMismatch { .. })));
        assert!(matches!(per_row_by_score(&scores, 2, 4, Amount::Count(5)), Err(Error::PruneTooMany { .. })));
        assert_eq!(per_row_by_score(&[], 0, 3, Amount::Count(2)).unwrap().len(), 0);
    }

    #[test]
    fn bad_input_is_an_error() {
        let norms = [1.0f32; 4];
        assert!(matches!(wanda_scores(&WEIGHTS, 2, 4, &norms[..3]), Err(Error::LengthMismatch { .. })));
        for bad in [-1.0, f32::NAN, f32::INFINITY] {
            let mut norms = norms;
            norms[2] = bad;
            assert!(matches!(wanda_scores(&WEIGHTS, 2, 4, &norms), Err(Error::BadActivationNorm { index: 2, .. })));
        }
        let mut weights = WEIGHTS;
        weights[1] = f32::INFINITY;
        let zero_norm = [1.0, 0.0, 1.0, 1.0];
        assert_eq!(wanda_scores(&weights, 2, 4, &zero_norm), Err(Error::NotANumber { what: "wanda score", index: 1 }));
        weights[1] = f32::NAN;
        assert_eq!(wanda_scores(&weights, 2, 4, &norms), Err(Error::NotANumber { what: "weight", index: 1 }));
        assert!(matches!(wanda_n_m(&WEIGHTS, 2, 4, &norms, 2, 3), Err(Error::GroupMisfit { .. })));
        assert!(matches!(
            wanda_unstructured(&WEIGHTS, 2, 4, &norms, Amount::Fraction(2.0)),
            Err(Error::BadFraction { .. })
        ));
    }
}
