//! Glue from [`LayerStats`] to lathe-prune's Wanda (Sun et al. 2023): the norms accumulated here
//! are the `||X_j||_2` its scores multiply the weight magnitudes by.

use lathe_prune::{Amount, Mask};

use crate::error::check_len;
use crate::{LayerStats, Result};

/// Wanda's unstructured mask for the row-major `[rows, cols]` weight of the layer `stats` was
/// gathered on: prunes `amount` of each output row by `|W| * ||X_j||`.
///
/// # Errors
/// [`crate::Error::ShapeMismatch`] when `stats` has another width than `cols`, and
/// lathe-prune's errors (wrapped in [`crate::Error::Prune`]).
pub fn wanda_unstructured(
    weights: &[f32],
    rows: usize,
    cols: usize,
    stats: &LayerStats,
    amount: Amount,
) -> Result<Mask> {
    check_len("activation norms", cols, stats.in_features())?;
    Ok(lathe_prune::wanda_unstructured(weights, rows, cols, &stats.activation_norms(), amount)?)
}

/// Wanda's N:M mask (`n_kept` of every `m` consecutive inputs of each row), scored as
/// [`wanda_unstructured`].
///
/// # Errors
/// As [`wanda_unstructured`].
pub fn wanda_n_m(
    weights: &[f32],
    rows: usize,
    cols: usize,
    stats: &LayerStats,
    n_kept: usize,
    m: usize,
) -> Result<Mask> {
    check_len("activation norms", cols, stats.in_features())?;
    Ok(lathe_prune::wanda_n_m(weights, rows, cols, &stats.activation_norms(), n_kept, m)?)
}
