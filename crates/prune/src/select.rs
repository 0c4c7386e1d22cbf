//! Shared pieces: shape and value checks, the deterministic selection order, L-p norms.

use std::cmp::Ordering;

use crate::{Error, Mask, Result};

/// Checks that `found` values hold a `rows x cols` matrix.
pub(crate) fn check_matrix(rows: usize, cols: usize, found: usize) -> Result<()> {
    let expected = rows.checked_mul(cols).ok_or(Error::TooLarge { rows, cols })?;
    if expected == found { Ok(()) } else { Err(Error::ShapeMismatch { rows, cols, expected, found }) }
}

/// Fails on the first NaN, naming its index.
pub(crate) fn check_not_nan(what: &'static str, values: &[f32]) -> Result<()> {
    match values.iter().position(|value| value.is_nan()) {
        Some(index) => Err(Error::NotANumber { what, index }),
        None => Ok(()),
    }
}

/// The order in which candidates are pruned: smaller score first, and among equal scores the
/// lower index first. `-0.0` and `+0.0` are equal (adding `+0.0` turns `-0.0` into `+0.0`).
/// Scores are never NaN here.
pub(crate) fn prune_order(score_a: f64, a: usize, score_b: f64, b: usize) -> Ordering {
    (score_a + 0.0).total_cmp(&(score_b + 0.0)).then(a.cmp(&b))
}

/// Reorders `candidates` so that its first `k` are the ones to prune (the `k` smallest in
/// [`prune_order`]) and returns them, in no particular order. `k <= candidates.len()`.
pub(crate) fn smallest(candidates: &mut [usize], k: usize, score: impl Fn(usize) -> f64) -> &[usize] {
    if k > 0 && k < candidates.len() {
        candidates.select_nth_unstable_by(k - 1, |&a, &b| prune_order(score(a), a, score(b), b));
    }
    &candidates[..k]
}

/// The L-`p` norm, accumulated in f64 (`p` is positive or `+inf`, as checked by [`Norm::new`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Norm(f64);

impl Norm {
    /// Checks a norm order: any `p > 0`, or `f64::INFINITY` for the largest magnitude.
    pub(crate) fn new(n: f64) -> Result<Norm> {
        if n > 0.0 { Ok(Norm(n)) } else { Err(Error::BadNorm { n }) }
    }

    /// Adds `|value|` to a running accumulator that starts at 0.
    pub(crate) fn add(self, acc: f64, value: f32) -> f64 {
        let magnitude = f64::from(value.abs());
        match self.0 {
            1.0 => acc + magnitude,
            2.0 => acc + magnitude * magnitude,
            f64::INFINITY => acc.max(magnitude),
            p => acc + magnitude.powf(p),
        }
    }

    /// Merges two accumulators (sums add; the max-norm takes the larger).
    pub(crate) fn merge(self, a: f64, b: f64) -> f64 {
        if self.0 == f64::INFINITY { a.max(b) } else { a + b }
    }

    /// Turns an accumulator into the norm.
    pub(crate) fn finish(self, acc: f64) -> f64 {
        match self.0 {
            1.0 | f64::INFINITY => acc,
            2.0 => acc.sqrt(),
            p => acc.powf(p.recip()),
        }
    }
}

/// For `1 <= k <= values.len()`: the k-th smallest of `values` (not NaN; `-0.0` counts as
/// `+0.0`), and how many of the values equal to it are among the `k` smallest. `None` for `k = 0`.
/// Reorders `values`.
pub(crate) fn kth_smallest(values: &mut [f32], k: usize) -> Option<(f32, usize)> {
    let cmp = |a: &f32, b: &f32| (a + 0.0).total_cmp(&(b + 0.0));
    let (below, &mut threshold, _) = values.select_nth_unstable_by(k.checked_sub(1)?, cmp);
    let n_less = below.iter().filter(|&&value| value < threshold).count();
    Some((threshold, k - n_less))
}

/// Checks `previous` against a tensor of `len` entries and returns the mask to start from.
pub(crate) fn start_mask(len: usize, previous: Option<&Mask>) -> Result<Mask> {
    match previous {
        Some(mask) => {
            crate::mask::check_len("previous mask", len, mask.len())?;
            Ok(mask.clone())
        }
        None => Ok(Mask::all_kept(len)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_prunes_smaller_scores_then_lower_indices() {
        let scores = [3.0, 1.0, 1.0, -0.0, 0.0, 2.0];
        let mut candidates: Vec<usize> = (0..6).collect();
        let mut chosen = smallest(&mut candidates, 3, |i| scores[i]).to_vec();
        chosen.sort_unstable();
        assert_eq!(chosen, [1, 3, 4]);
        let mut candidates: Vec<usize> = (0..6).collect();
        let mut chosen = smallest(&mut candidates, 1, |i| scores[i]).to_vec();
        chosen.sort_unstable();
        assert_eq!(chosen, [3]);
        let mut candidates: Vec<usize> = vec![5, 2, 1];
        assert!(smallest(&mut candidates, 0, |i| scores[i]).is_empty());
        assert_eq!(smallest(&mut candidates, 3, |i| scores[i]).len(), 3);
    }

    #[test]
    fn kth_smallest_counts_the_ties_it_takes() {
        let mut values = [3.0, 1.0, 2.0, 1.0, 2.0, -0.0, 0.0];
        assert_eq!(kth_smallest(&mut values, 0), None);
        assert_eq!(kth_smallest(&mut values, 1), Some((0.0, 1)));
        assert_eq!(kth_smallest(&mut values, 2), Some((0.0, 2)));
        assert_eq!(kth_smallest(&mut values, 3), Some((1.0, 1)));
        assert_eq!(kth_smallest(&mut values, 6), Some((2.0, 2)));
        assert_eq!(kth_smallest(&mut values, 7), Some((3.0, 1)));
        assert_eq!(kth_smallest(&mut [f32::INFINITY, 5.0], 2), Some((f32::INFINITY, 1)));
    }

    #[test]
    fn norms_match_their_definitions() {
        let values = [3.0f32, -4.0, 0.0];
        let norm = |n: f64| {
            let norm = Norm::new(n).unwrap();
            norm.finish(values.iter().fold(0.0, |acc, &v| norm.add(acc, v)))
        };
        assert_eq!(norm(1.0), 7.0);
        assert_eq!(norm(2.0), 5.0);
        assert_eq!(norm(f64::INFINITY), 4.0);
        assert!((norm(3.0) - 91f64.cbrt()).abs() < 1e-12);
        assert!((norm(0.5) - (3f64.sqrt() + 2.0).powi(2)).abs() < 1e-12);
        for bad in [0.0, -1.0, f64::NAN, f64::NEG_INFINITY] {
            assert!(matches!(Norm::new(bad), Err(Error::BadNorm { .. })));
        }
    }

    #[test]
    fn shapes_are_checked_without_overflow() {
        assert!(check_matrix(2, 3, 6).is_ok());
        assert_eq!(check_matrix(2, 3, 5), Err(Error::ShapeMismatch { rows: 2, cols: 3, expected: 6, found: 5 }));
        assert_eq!(check_matrix(usize::MAX, 2, 0), Err(Error::TooLarge { rows: usize::MAX, cols: 2 }));
        assert_eq!(check_not_nan("weight", &[0.0, f32::NAN]), Err(Error::NotANumber { what: "weight", index: 1 }));
    }
}
