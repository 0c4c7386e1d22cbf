//! Structured pruning of whole rows or columns of a matrix: `torch.nn.utils.prune`'s
//! `ln_structured` and `random_structured`.

use crate::rng::SplitMix64;
use crate::select::{Norm, check_matrix, check_not_nan, smallest, start_mask};
use crate::{Amount, Error, Mask, Result};

/// Prunes the `amount` channels of a row-major `rows x cols` matrix with the smallest L-`n`
/// norm, keeping those with the largest (torch's `ln_structured`).
///
/// `dim` 0 prunes rows (output channels of a `[out, in]` linear weight), `dim` 1 columns. `n` is
/// any `p > 0` or `f64::INFINITY` (largest magnitude), as `torch.norm` reads it; norms are
/// accumulated in f64. Among equal norms the lower channel is pruned first.
///
/// With `previous` this is torch's `PruningContainer`: the candidates are the channels along
/// `dim` that still keep at least one entry, the amount is relative to their number, norms are
/// taken over the weights with `previous`'s pruned entries counted as zero (torch ranks the
/// already-masked weight), and the result also prunes everything `previous` pruned. So pruning
/// 8 of 32 rows and then half the columns ranks each column over its 24 surviving rows and
/// prunes 12 of 24 columns.
pub fn ln_structured(
    weights: &[f32],
    rows: usize,
    cols: usize,
    amount: Amount,
    n: f64,
    dim: usize,
    previous: Option<&Mask>,
) -> Result<Mask> {
    amount.validate()?;
    let norm = Norm::new(n)?;
    check_matrix(rows, cols, weights.len())?;
    check_dim(dim)?;
    check_not_nan("weight", weights)?;
    let mut mask = start_mask(weights.len(), previous)?;
    let norms = channel_norms_masked(weights, rows, cols, norm, dim, previous);
    let mut candidates = candidate_channels(rows, cols, dim, previous);
    let k = amount.count_of(candidates.len(), "channels")?;
    for &channel in smallest(&mut candidates, k, |c| norms[c]) {
        prune_channel(&mut mask, rows, cols, dim, channel);
    }
    Ok(mask)
}

/// Prunes `amount` channels (rows for `dim` 0, columns for `dim` 1) of a `rows x cols` matrix
/// chosen uniformly at random (torch's `random_structured`), reproducibly from `seed` (the draw
/// of `random_unstructured`, over channels). `previous` works as in [`ln_structured`].
pub fn random_structured(
    rows: usize,
    cols: usize,
    amount: Amount,
    dim: usize,
    seed: u64,
    previous: Option<&Mask>,
) -> Result<Mask> {
    amount.validate()?;
    let len = rows.checked_mul(cols).ok_or(Error::TooLarge { rows, cols })?;
    check_dim(dim)?;
    let mut mask = start_mask(len, previous)?;
    let candidates = candidate_channels(rows, cols, dim, previous);
    let k = amount.count_of(candidates.len(), "channels")?;
    for channel in SplitMix64::new(seed).sample(candidates.iter().copied(), candidates.len(), k) {
        prune_channel(&mut mask, rows, cols, dim, channel);
    }
    Ok(mask)
}

/// The L-`n` norm of every channel of a `rows x cols` matrix: of each row for `dim` 0, of each
/// column for `dim` 1 (torch's `_compute_norm`, accumulated in f64).
pub fn channel_norms(weights: &[f32], rows: usize, cols: usize, n: f64, dim: usize) -> Result<Vec<f64>> {
    let norm = Norm::new(n)?;
    check_matrix(rows, cols, weights.len())?;
    check_dim(dim)?;
    check_not_nan("weight", weights)?;
    Ok(channel_norms_masked(weights, rows, cols, norm, dim, None))
}

/// Adds the kept entries of each channel into its accumulator (no finish, no checks).
pub(crate) fn accumulate_channels(
    weights: &[f32],
    cols: usize,
    norm: Norm,
    dim: usize,
    kept: Option<&Mask>,
    acc: &mut [f64],
) {
    let is_kept = |index: usize| kept.is_none_or(|mask| mask.is_kept(index));
    for (row, values) in weights.chunks_exact(cols.max(1)).enumerate() {
        for (col, &value) in values.iter().enumerate() {
            if is_kept(row * cols + col) {
                let channel = if dim == 0 { row } else { col };
                acc[channel] = norm.add(acc[channel], value);
            }
        }
    }
}

fn channel_norms_masked(
    weights: &[f32],
    rows: usize,
    cols: usize,
    norm: Norm,
    dim: usize,
    kept: Option<&Mask>,
) -> Vec<f64> {
    let mut acc = vec![0.0; if dim == 0 { rows } else { cols }];
    accumulate_channels(weights, cols, norm, dim, kept, &mut acc);
    acc.into_iter().map(|sum| norm.finish(sum)).collect()
}

pub(crate) fn check_dim(dim: usize) -> Result<()> {
    if dim <= 1 { Ok(()) } else { Err(Error::BadDim { dim }) }
}

/// All channels along `dim` without `previous`; with it, those that keep at least one entry.
fn candidate_channels(rows: usize, cols: usize, dim: usize, previous: Option<&Mask>) -> Vec<usize> {
    let n_channels = if dim == 0 { rows } else { cols };
    let Some(mask) = previous else {
        return (0..n_channels).collect();
    };
    let mut alive = vec![false; n_channels];
    for index in mask.kept_indices() {
        alive[if dim == 0 { index / cols } else { index % cols }] = true;
    }
    (0..n_channels).filter(|&channel| alive[channel]).collect()
}

fn prune_channel(mask: &mut Mask, rows: usize, cols: usize, dim: usize, channel: usize) {
    if dim == 0 {
        (channel * cols..(channel + 1) * cols).for_each(|index| mask.prune(index));
    } else {
        (0..rows).for_each(|row| mask.prune(row * cols + channel));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of norm 3, 1, 2 (L1) laid out in a 3 x 2 matrix.
    const WEIGHTS: [f32; 6] = [1.0, -2.0, 0.5, 0.5, 0.0, -2.0];

    #[test]
    fn prunes_the_rows_or_columns_of_smallest_norm() {
        let rows = ln_structured(&WEIGHTS, 3, 2, Amount::Count(1), 1.0, 0, None).unwrap();
        assert_eq!(rows.iter().collect::<Vec<_>>(), [true, true, false, false, true, true]);
        // Column L2 norms: sqrt(1.25) and sqrt(8.25).
        let cols = ln_structured(&WEIGHTS, 3, 2, Amount::Fraction(0.5), 2.0, 1, None).unwrap();
        assert_eq!(cols.iter().collect::<Vec<_>>(), [false, true, false, true, false, true]);
        // Max-norm: rows 2, 0.5, 2 tie between rows 0 and 2: the lower one goes first.
        let inf = ln_structured(&WEIGHTS, 3, 2, Amount::Count(2), f64::INFINITY, 0, None).unwrap();
        assert_eq!(inf.kept_indices().collect::<Vec<_>>(), [4, 5]);
        assert_eq!(channel_norms(&WEIGHTS, 3, 2, 1.0, 0).unwrap(), [3.0, 1.0, 2.0]);
        assert_eq!(channel_norms(&WEIGHTS, 3, 2, f64::INFINITY, 1).unwrap(), [1.0, 2.0]);
    }

    #[test]
    fn repeated_pruning_ranks_surviving_channels_over_masked_weights() {
        // Column 0 is large only in row 0: over all rows column 1 is the smallest, but once row 0
        // is pruned, column 0 is.
        let weights = [3.5, 0.0, 0.0, 0.1, 1.0, 3.0, 0.2, 1.0, 4.0];
        let first = ln_structured(&weights, 3, 3, Amount::Count(1), 1.0, 0, None).unwrap();
        assert_eq!(first.pruned_indices().collect::<Vec<_>>(), [0, 1, 2]);
        let second = ln_structured(&weights, 3, 3, Amount::Count(1), 1.0, 1, Some(&first)).unwrap();
        assert_eq!(second.kept_indices().collect::<Vec<_>>(), [4, 5, 7, 8]);
        // Fully pruned rows are not candidates any more: 2 surviving rows, 50 % is 1.
        let third = ln_structured(&weights, 3, 3, Amount::Fraction(0.5), 1.0, 0, Some(&second)).unwrap();
        assert_eq!(third.kept_indices().collect::<Vec<_>>(), [7, 8]);
        assert!(matches!(
            ln_structured(&weights, 3, 3, Amount::Count(3), 1.0, 0, Some(&first)),
            Err(Error::PruneTooMany { what: "channels", count: 3, available: 2 })
        ));
    }

    #[test]
    fn random_structured_prunes_whole_channels() {
        let mask = random_structured(6, 5, Amount::Fraction(0.5), 1, 9, None).unwrap();
        let pruned_cols: Vec<usize> = (0..5).filter(|&c| !mask.is_kept(c)).collect();
        assert_eq!(pruned_cols.len(), 2);
        for index in 0..30 {
            assert_eq!(mask.is_kept(index), !pruned_cols.contains(&(index % 5)));
        }
        let again = random_structured(6, 5, Amount::Count(3), 1, 9, Some(&mask)).unwrap();
        assert_eq!(again.n_kept(), 0);
        assert_eq!(mask, random_structured(6, 5, Amount::Fraction(0.5), 1, 9, None).unwrap());
        assert!(matches!(random_structured(usize::MAX, 2, Amount::Count(0), 0, 0, None), Err(Error::TooLarge { .. })));
    }

    #[test]
    fn bad_input_is_an_error() {
        let bad = |r: Result<Mask>| r.unwrap_err();
        assert!(matches!(
            bad(ln_structured(&WEIGHTS, 3, 3, Amount::Count(1), 1.0, 0, None)),
            Error::ShapeMismatch { .. }
        ));
        assert_eq!(bad(ln_structured(&WEIGHTS, 3, 2, Amount::Count(1), 1.0, 2, None)), Error::BadDim { dim: 2 });
        assert!(matches!(bad(ln_structured(&WEIGHTS, 3, 2, Amount::Count(1), 0.0, 0, None)), Error::BadNorm { .. }));
        assert!(matches!(
            bad(ln_structured(&WEIGHTS, 3, 2, Amount::Count(4), 1.0, 0, None)),
            Error::PruneTooMany { .. }
        ));
        let mut nan = WEIGHTS;
        nan[4] = f32::NAN;
        assert_eq!(
            bad(ln_structured(&nan, 3, 2, Amount::Count(1), 1.0, 0, None)),
            Error::NotANumber { what: "weight", index: 4 }
        );
        assert!(matches!(
            bad(ln_structured(&WEIGHTS, 3, 2, Amount::Count(1), 1.0, 0, Some(&Mask::all_kept(5)))),
            Error::LengthMismatch { .. }
        ));
        assert_eq!(ln_structured(&[], 0, 4, Amount::Fraction(0.5), 2.0, 1, None).unwrap().len(), 0);
    }
}
