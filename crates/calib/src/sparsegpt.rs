//! SparseGPT, unstructured and N:M: see [`sparsegpt`].

use lathe_prune::Mask;

use crate::error::check_weights;
use crate::obs::{ColumnRule, SweepOptions, SweepReport, SweepState, obs_sweep};
use crate::{Error, Result};

/// The sparsity pattern SparseGPT selects.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pattern {
    /// This fraction (`0..=1`) of each block of columns, over all rows.
    Unstructured(f64),
    /// `n_kept` kept in every `m` consecutive columns of each row (2:4 is `n_kept = 2, m = 4`).
    NM {
        /// Entries kept per group.
        n_kept: usize,
        /// Columns per group.
        m: usize,
    },
}

/// The result of [`sparsegpt`].
#[derive(Debug, Clone, PartialEq)]
pub struct SparseGpt {
    /// The pruned and compensated weights, row-major; pruned entries are exactly `0.0`.
    pub weights: Vec<f32>,
    /// The mask over the weights (kept = set), as lathe-prune's masks.
    pub mask: Mask,
    /// What the sweep did.
    pub report: SweepReport,
}

struct SparseRule {
    pattern: Pattern,
    cols: usize,
    /// One flag per weight, row-major in the original order: `true` = pruned.
    pruned: Vec<bool>,
    candidates: Vec<(f64, usize)>,
}

/// Sorts `candidates` so that the first `k` are the smallest saliencies (lower index first on
/// ties) and returns their indices.
fn smallest(candidates: &mut [(f64, usize)], k: usize) -> impl Iterator<Item = usize> + '_ {
    if k > 0 && k < candidates.len() {
        candidates.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    }
    candidates[..k].iter().map(|&(_, index)| index)
}

fn saliency(w: f64, d: f64) -> f64 {
    // `+ 0.0` folds -0.0 into 0.0 so that ties break by index only.
    w * w / (d * d) + 0.0
}

impl ColumnRule for SparseRule {
    fn column(&mut self, state: &SweepState<'_>, dst: &mut [f64]) {
        let k = state.position();
        let rows = state.rows();
        match self.pattern {
            Pattern::Unstructured(sparsity) if k == state.block().start => {
                let block = state.block();
                self.candidates.clear();
                for j in block.clone() {
                    let d = state.hinv_diag(j);
                    let column = state.column(j);
                    self.candidates.extend((0..rows).map(|r| (saliency(column[r], d), r * self.cols + j)));
                }
                let count = (sparsity * self.candidates.len() as f64).round_ties_even() as usize;
                for index in smallest(&mut self.candidates, count) {
                    self.pruned[index] = true;
                }
            }
            Pattern::NM { n_kept, m } if k.is_multiple_of(m) => {
                for r in 0..rows {
                    self.candidates.clear();
                    self.candidates.extend(
                        (k..k + m).map(|j| (saliency(state.column(j)[r], state.hinv_diag(j)), r * self.cols + j)),
                    );
                    for index in smallest(&mut self.candidates, m - n_kept) {
                        self.pruned[index] = true;
                    }
                }
            }
            _ => {}
        }
        for (r, dst) in dst.iter_mut().enumerate() {
            if self.pruned[r * self.cols + k] {
                *dst = 0.0;
            }
        }
    }
}

/// SparseGPT (Frantar & Alistarh 2023): prune with the OBS sweep, choosing the mask from the
/// saliency `w^2 / [H^-1]_jj^2` as the sweep goes and compensating the pruned weights on the
/// columns not yet visited.
///
/// - Unstructured: when the sweep enters a block (128 columns by default), it prunes the
///   `round_ties_even(sparsity * rows * block_cols)` weights of the whole `[rows, block]` slab
///   with the smallest saliency, as the paper does (so rows may differ in sparsity; the layer as a
///   whole has exactly the target, block by block). The reference's `tmp <= thresh` prunes one
///   more weight per block (and every tie of the threshold); here the count is exact and ties
///   prune the lower (row, column) first.
/// - N:M: when the sweep enters each group of `m` columns, every row keeps its `n_kept` entries
///   of largest saliency (ties: the lower column is pruned first, as in lathe-prune). The block is
///   rounded to a whole number of groups.
///
/// SparseGPT has no activation ordering: the columns are visited in their original order (an
/// N:M pattern is defined on that order).
///
/// SparseGPT-prunes the row-major `[rows, cols]` `weights` to `pattern`, given the layer's
/// Hessian (row-major `[cols, cols]`, any positive multiple of `X^T X`).
///
/// `options.act_order` is ignored (see above); `options.block_size` is rounded
/// to a whole number of N:M groups.
///
/// # Errors
/// [`Error::BadSparsity`] for a fraction outside `0..=1`, [`Error::BadPattern`] for an N:M
/// pattern with `m = 0`, `n_kept > m` or `m` not dividing `cols`, and everything [`obs_sweep`]
/// returns.
pub fn sparsegpt(
    weights: &[f32],
    rows: usize,
    cols: usize,
    hessian: &[f64],
    pattern: Pattern,
    options: &SweepOptions,
) -> Result<SparseGpt> {
    check_weights(weights, rows, cols)?;
    let mut options = SweepOptions { act_order: false, ..*options };
    match pattern {
        Pattern::Unstructured(sparsity) if !(0.0..=1.0).contains(&sparsity) => {
            return Err(Error::BadSparsity { sparsity });
        }
        Pattern::NM { n_kept, m } if m == 0 || n_kept > m || !cols.is_multiple_of(m) => {
            return Err(Error::BadPattern { n_kept, m, cols });
        }
        Pattern::NM { m, .. } => options.block_size = m * (options.block_size / m).max(1),
        Pattern::Unstructured(_) => {}
    }
    let mut rule = SparseRule { pattern, cols, pruned: vec![false; weights.len()], candidates: Vec::new() };
    let sweep = obs_sweep(weights, rows, cols, hessian, &options, &mut rule)?;
    let mask = rule.pruned.iter().map(|&pruned| !pruned).collect();
    Ok(SparseGpt { weights: sweep.weights, mask, report: sweep.report })
}
