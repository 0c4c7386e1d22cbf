//! N:M semi-structured masks: at most N kept in every M consecutive inputs (2:4, 4:8, 1:4 ...).

use crate::select::{check_matrix, check_not_nan, smallest};
use crate::{Error, Mask, Result};

/// Keeps the `n_kept` entries of largest magnitude in every group of `m` consecutive columns of
/// each row of a row-major `[out, in]` matrix (the 2:4 pattern sparse tensor cores and
/// `to_sparse_semi_structured` take, for `n_kept = 2, m = 4`).
///
/// Exactly `n_kept` entries of each group are kept, zeros included; among equal magnitudes the
/// lower column is pruned first. `cols` must be a multiple of `m`.
pub fn n_m(weights: &[f32], rows: usize, cols: usize, n_kept: usize, m: usize) -> Result<Mask> {
    check_not_nan("weight", weights)?;
    nm_mask(weights, rows, cols, n_kept, m, |value| f64::from(value.abs()))
}

/// [`n_m`] ranked by caller-given scores (one per weight, larger is more important, e.g. Wanda's
/// or a second-order saliency) instead of magnitudes.
pub fn n_m_by_score(scores: &[f32], rows: usize, cols: usize, n_kept: usize, m: usize) -> Result<Mask> {
    check_not_nan("score", scores)?;
    nm_mask(scores, rows, cols, n_kept, m, f64::from)
}

pub(crate) fn check_pattern(cols: usize, n_kept: usize, m: usize) -> Result<()> {
    if m == 0 || n_kept > m {
        return Err(Error::BadPattern { n: n_kept, m });
    }
    if !cols.is_multiple_of(m) {
        return Err(Error::GroupMisfit { cols, m });
    }
    Ok(())
}

fn nm_mask(
    values: &[f32],
    rows: usize,
    cols: usize,
    n_kept: usize,
    m: usize,
    score: impl Fn(f32) -> f64,
) -> Result<Mask> {
    check_pattern(cols, n_kept, m)?;
    check_matrix(rows, cols, values.len())?;
    let mut mask = Mask::all_kept(values.len());
    let mut candidates = Vec::with_capacity(m);
    for start in (0..values.len()).step_by(m) {
        candidates.clear();
        candidates.extend(start..start + m);
        for &index in smallest(&mut candidates, m - n_kept, |i| score(values[i])) {
            mask.prune(index);
        }
    }
    Ok(mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_of_four_keeps_the_largest_per_group() {
        let weights = [0.1, -0.9, 0.5, 0.2, 1.0, 2.0, -3.0, 4.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, -1.0];
        let mask = n_m(&weights, 2, 8, 2, 4).unwrap();
        let kept: Vec<usize> = mask.kept_indices().collect();
        // Groups of zeros or ties keep the higher columns (the lower ones are pruned first).
        assert_eq!(kept, [1, 2, 6, 7, 10, 11, 14, 15]);
        assert_eq!(n_m(&weights, 4, 4, 4, 4).unwrap(), Mask::all_kept(16));
        assert_eq!(n_m(&weights, 4, 4, 0, 4).unwrap(), Mask::all_pruned(16));
        assert_eq!(n_m(&weights, 16, 1, 1, 1).unwrap(), Mask::all_kept(16));
    }

    #[test]
    fn scores_rank_instead_of_magnitudes() {
        let scores = [-5.0, 1.0, 0.0, 3.0];
        let mask = n_m_by_score(&scores, 1, 4, 1, 4).unwrap();
        assert_eq!(mask.kept_indices().collect::<Vec<_>>(), [3]);
        let by_magnitude = n_m(&scores, 1, 4, 1, 4).unwrap();
        assert_eq!(by_magnitude.kept_indices().collect::<Vec<_>>(), [0]);
    }

    #[test]
    fn bad_patterns_and_shapes_are_errors() {
        let weights = [0.0f32; 12];
        assert_eq!(n_m(&weights, 2, 6, 2, 4), Err(Error::GroupMisfit { cols: 6, m: 4 }));
        assert_eq!(n_m(&weights, 3, 4, 5, 4), Err(Error::BadPattern { n: 5, m: 4 }));
        assert_eq!(n_m(&weights, 3, 4, 0, 0), Err(Error::BadPattern { n: 0, m: 0 }));
        assert!(matches!(n_m(&weights, 2, 4, 2, 4), Err(Error::ShapeMismatch { .. })));
        assert!(matches!(n_m(&weights, usize::MAX, 4, 2, 4), Err(Error::TooLarge { .. })));
        assert_eq!(n_m_by_score(&[0.0, f32::NAN], 1, 2, 1, 2), Err(Error::NotANumber { what: "score", index: 1 }));
    }
}
