//! Structured pruning of transformer blocks: rank attention heads and FFN neurons, return the
//! ones to keep, and gather the kept rows and columns into smaller dense matrices.

use crate::select::{Norm, check_matrix, check_not_nan, smallest};
use crate::structured::accumulate_channels;
use crate::{Error, Result, Target};

/// The four `[out, in]` projections of one multi-head attention block, row-major.
///
/// Head `h` owns rows `h * head_dim .. (h + 1) * head_dim` of `q`, `k` and `v` (each
/// `[hidden, hidden]`) and the same columns of `o` (`[hidden, hidden]`), with
/// `head_dim = hidden / n_heads`. Removing a head removes all of them together.
#[derive(Debug, Clone, Copy)]
pub struct AttentionWeights<'a> {
    /// The query projection, `[hidden, hidden]`.
    pub q: &'a [f32],
    /// The key projection, `[hidden, hidden]`.
    pub k: &'a [f32],
    /// The value projection, `[hidden, hidden]`.
    pub v: &'a [f32],
    /// The output projection, `[hidden, hidden]`.
    pub o: &'a [f32],
    /// The model width.
    pub hidden: usize,
    /// The number of heads; must divide `hidden`.
    pub n_heads: usize,
}

impl AttentionWeights<'_> {
    /// The width of one head, after checking that `n_heads` divides `hidden`.
    pub fn head_dim(&self) -> Result<usize> {
        if self.n_heads == 0 || !self.hidden.is_multiple_of(self.n_heads) {
            return Err(Error::BadHeads { hidden: self.hidden, n_heads: self.n_heads });
        }
        Ok(self.hidden / self.n_heads)
    }

    /// The L-`n` norm of each head over its coupled weights (its rows of `q`, `k`, `v` and its
    /// columns of `o`, as one vector), accumulated in f64.
    pub fn head_norms(&self, n: f64) -> Result<Vec<f64>> {
        let norm = Norm::new(n)?;
        let head_dim = self.head_dim()?;
        let mut acc = vec![0.0; self.n_heads];
        let mut per_channel = vec![0.0; self.hidden];
        for (name, weights, dim) in [("q", self.q, 0), ("k", self.k, 0), ("v", self.v, 0), ("o", self.o, 1)] {
            check_matrix(self.hidden, self.hidden, weights.len())
                .and_then(|()| check_not_nan("weight", weights))
                .map_err(|error| error.in_matrix(name))?;
            per_channel.fill(0.0);
            accumulate_channels(weights, self.hidden, norm, dim, None, &mut per_channel);
            for (channel, &sum) in per_channel.iter().enumerate() {
                acc[channel / head_dim] = norm.merge(acc[channel / head_dim], sum);
            }
        }
        Ok(acc.into_iter().map(|sum| norm.finish(sum)).collect())
    }

    /// The heads to keep (ascending) after pruning `target` by the L-`n` norm of
    /// [`head_norms`](Self::head_norms); among equal norms the lower head is pruned first.
    pub fn heads_to_keep(&self, n: f64, target: Target) -> Result<Vec<usize>> {
        keep(&self.head_norms(n)?, target, "heads")
    }

    /// The rows of `q`, `k`, `v` (and columns of `o`) that the given heads own, ascending when
    /// the heads are: pass it to [`select_rows`] and [`select_cols`].
    pub fn head_channels(&self, heads: &[usize]) -> Result<Vec<usize>> {
        let head_dim = self.head_dim()?;
        let mut channels = Vec::with_capacity(heads.len().saturating_mul(head_dim));
        for &head in heads {
            if head >= self.n_heads {
                return Err(Error::IndexOutOfRange { what: "head", index: head, len: self.n_heads });
            }
            channels.extend(head * head_dim..(head + 1) * head_dim);
        }
        Ok(channels)
    }
}

/// The projections of one feed-forward block, row-major `[out, in]`.
///
/// Neuron `i` owns row `i` of `up` (and of `gate`, for gated FFNs such as SwiGLU), both
/// `[intermediate, hidden]`, and column `i` of `down`, `[hidden, intermediate]`.
#[derive(Debug, Clone, Copy)]
pub struct FfnWeights<'a> {
    /// The input projection, `[intermediate, hidden]`.
    pub up: &'a [f32],
    /// The gate projection of a gated FFN, `[intermediate, hidden]`.
    pub gate: Option<&'a [f32]>,
    /// The output projection, `[hidden, intermediate]`.
    pub down: &'a [f32],
    /// The model width.
    pub hidden: usize,
    /// The number of neurons.
    pub intermediate: usize,
}

impl FfnWeights<'_> {
    /// The L-`n` norm of each neuron over its coupled weights (its rows of `up` and `gate` and its
    /// column of `down`, as one vector), accumulated in f64.
    pub fn neuron_norms(&self, n: f64) -> Result<Vec<f64>> {
        let norm = Norm::new(n)?;
        let (hidden, intermediate) = (self.hidden, self.intermediate);
        let mut acc = vec![0.0; intermediate];
        let matrices = [("up", Some(self.up), intermediate, hidden, 0), ("gate", self.gate, intermediate, hidden, 0)];
        for (name, weights, rows, cols, dim) in
            matrices.into_iter().chain([("down", Some(self.down), hidden, intermediate, 1)])
        {
            let Some(weights) = weights else { continue };
            check_matrix(rows, cols, weights.len())
                .and_then(|()| check_not_nan("weight", weights))
                .map_err(|error| error.in_matrix(name))?;
            accumulate_channels(weights, cols, norm, dim, None, &mut acc);
        }
        Ok(acc.into_iter().map(|sum| norm.finish(sum)).collect())
    }

    /// The neurons to keep (ascending) after pruning `target` by the L-`n` norm of
    /// [`neuron_norms`](Self::neuron_norms); among equal norms the lower neuron is pruned first.
    pub fn neurons_to_keep(&self, n: f64, target: Target) -> Result<Vec<usize>> {
        keep(&self.neuron_norms(n)?, target, "neurons")
    }
}

/// The indices to keep (ascending) out of `scores.len()` heads, neurons or channels, by a
/// caller-given importance (larger is more important): prunes `target` of the smallest, the
/// lower index first among equal scores. NaN scores are errors.
pub fn keep_by_score(scores: &[f64], target: Target) -> Result<Vec<usize>> {
    if let Some(index) = scores.iter().position(|score| score.is_nan()) {
        return Err(Error::NotANumber { what: "score", index });
    }
    keep(scores, target, "channels")
}

fn keep(scores: &[f64], target: Target, what: &'static str) -> Result<Vec<usize>> {
    let n_kept = target.n_kept_of(scores.len(), what)?;
    let mut candidates: Vec<usize> = (0..scores.len()).collect();
    let mut pruned = vec![false; scores.len()];
    for &index in smallest(&mut candidates, scores.len() - n_kept, |i| scores[i]) {
        pruned[index] = true;
    }
    Ok((0..scores.len()).filter(|&index| !pruned[index]).collect())
}

/// The rows `indices` (in that order, repeats allowed) of a row-major `rows x cols` matrix, as a
/// new `indices.len() x cols` matrix: physically drops pruned output channels (and the matching
/// bias entries, with `cols = 1`).
pub fn select_rows<T: Copy>(data: &[T], rows: usize, cols: usize, indices: &[usize]) -> Result<Vec<T>> {
    check_matrix(rows, cols, data.len())?;
    let len = indices.len().checked_mul(cols).ok_or(Error::TooLarge { rows: indices.len(), cols })?;
    let mut out = Vec::with_capacity(len);
    for &row in indices {
        if row >= rows {
            return Err(Error::IndexOutOfRange { what: "row", index: row, len: rows });
        }
        out.extend_from_slice(&data[row * cols..(row + 1) * cols]);
    }
    Ok(out)
}

/// The columns `indices` (in that order, repeats allowed) of a row-major `rows x cols` matrix,
/// as a new `rows x indices.len()` matrix: physically drops pruned input channels.
pub fn select_cols<T: Copy>(data: &[T], rows: usize, cols: usize, indices: &[usize]) -> Result<Vec<T>> {
    check_matrix(rows, cols, data.len())?;
    if let Some(&col) = indices.iter().find(|&&col| col >= cols) {
        return Err(Error::IndexOutOfRange { what: "column", index: col, len: cols });
    }
    let len = rows.checked_mul(indices.len()).ok_or(Error::TooLarge { rows, cols: indices.len() })?;
    let mut out = Vec::with_capacity(len);
    for row in data.chunks_exact(cols.max(1)).take(rows) {
        out.extend(indices.iter().map(|&col| row[col]));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Amount;

    /// hidden 4, 2 heads of 2: head 0 gets weight `a` everywhere it owns, head 1 gets `b`.
    fn attention(a: f32, b: f32) -> [Vec<f32>; 4] {
        let rows = |_| (0..16).map(|i| if i / 8 == 0 { a } else { b }).collect::<Vec<f32>>();
        let o = (0..16).map(|i| if i % 4 < 2 { a } else { b }).collect();
        [rows(0), rows(1), rows(2), o]
    }

    #[test]
    fn heads_are_ranked_over_coupled_weights() {
        let [q, k, v, o] = attention(1.0, -2.0);
        let block = AttentionWeights { q: &q, k: &k, v: &v, o: &o, hidden: 4, n_heads: 2 };
        // Each head owns 2 rows x 4 of q, k, v and 4 rows x 2 of o: 32 values.
        assert_eq!(block.head_norms(1.0).unwrap(), [32.0, 64.0]);
        assert_eq!(block.head_norms(2.0).unwrap(), [32f64.sqrt(), 128f64.sqrt()]);
        assert_eq!(block.head_norms(f64::INFINITY).unwrap(), [1.0, 2.0]);
        assert_eq!(block.heads_to_keep(2.0, Target::Keep(1)).unwrap(), [1]);
        assert_eq!(block.heads_to_keep(2.0, Target::Prune(Amount::Fraction(0.0))).unwrap(), [0, 1]);
        assert_eq!(block.head_channels(&[1]).unwrap(), [2, 3]);
        assert_eq!(block.head_channels(&[0, 1]).unwrap(), [0, 1, 2, 3]);
        assert!(matches!(block.head_channels(&[2]), Err(Error::IndexOutOfRange { what: "head", .. })));
    }

    #[test]
    fn attention_input_is_checked() {
        let [q, k, v, o] = attention(1.0, 1.0);
        let block = AttentionWeights { q: &q, k: &k, v: &v, o: &o, hidden: 4, n_heads: 3 };
        assert_eq!(block.head_norms(2.0), Err(Error::BadHeads { hidden: 4, n_heads: 3 }));
        assert!(AttentionWeights { n_heads: 0, ..block }.head_dim().is_err());
        let short = &o[..15];
        let error = AttentionWeights { o: short, n_heads: 2, ..block }.head_norms(2.0).unwrap_err();
        assert_eq!(error.to_string(), "o: weights hold 15 values, but 4 x 4 needs 16");
        let mut nan = k.clone();
        nan[5] = f32::NAN;
        let error = AttentionWeights { k: &nan, n_heads: 2, ..block }.heads_to_keep(2.0, Target::Keep(1)).unwrap_err();
        assert_eq!(error.to_string(), "k: weight at index 5 is nan");
        let error = AttentionWeights { n_heads: 2, ..block }.heads_to_keep(2.0, Target::Keep(3)).unwrap_err();
        assert_eq!(error, Error::KeepTooMany { what: "heads", count: 3, available: 2 });
    }

    #[test]
    fn neurons_are_ranked_over_up_gate_and_down() {
        // hidden 2, intermediate 3. Neuron 1 is small in up but large in down.
        let up = [1.0, 1.0, 0.5, 0.5, 2.0, 2.0];
        let down = [0.0, 5.0, 0.0, 0.0, 5.0, 0.0];
        let ffn = FfnWeights { up: &up, gate: None, down: &down, hidden: 2, intermediate: 3 };
        assert_eq!(ffn.neuron_norms(1.0).unwrap(), [2.0, 11.0, 4.0]);
        assert_eq!(ffn.neurons_to_keep(1.0, Target::Keep(2)).unwrap(), [1, 2]);
        let gate = [9.0, 9.0, 0.0, 0.0, 0.0, 0.0];
        let gated = FfnWeights { gate: Some(&gate), ..ffn };
        assert_eq!(gated.neuron_norms(f64::INFINITY).unwrap(), [9.0, 5.0, 2.0]);
        assert_eq!(gated.neurons_to_keep(1.0, Target::Prune(Amount::Count(1))).unwrap(), [0, 1]);
        let error = FfnWeights { gate: Some(&gate[..4]), ..ffn }.neuron_norms(1.0).unwrap_err();
        assert_eq!(error.to_string(), "gate: weights hold 4 values, but 3 x 2 needs 6");
        assert!(FfnWeights { down: &up[..5], ..ffn }.neuron_norms(1.0).is_err());
        assert!(matches!(ffn.neuron_norms(-1.0), Err(Error::BadNorm { .. })));
    }

    #[test]
    fn caller_scores_pick_the_kept_indices() {
        let scores = [0.5, 3.0, 0.5, 1.0, -1.0];
        assert_eq!(keep_by_score(&scores, Target::Keep(3)).unwrap(), [1, 2, 3]);
        assert_eq!(keep_by_score(&scores, Target::Prune(Amount::Fraction(0.2))).unwrap(), [0, 1, 2, 3]);
        assert_eq!(keep_by_score(&scores, Target::Keep(0)).unwrap(), [] as [usize; 0]);
        assert_eq!(
            keep_by_score(&[1.0, f64::NAN], Target::Keep(1)),
            Err(Error::NotANumber { what: "score", index: 1 })
        );
        assert!(keep_by_score(&scores, Target::Keep(6)).is_err());
    }

    #[test]
    fn rows_and_columns_are_gathered() {
        let matrix: Vec<u16> = (0..12).collect(); // 3 x 4
        assert_eq!(select_rows(&matrix, 3, 4, &[2, 0]).unwrap(), [8, 9, 10, 11, 0, 1, 2, 3]);
        assert_eq!(select_cols(&matrix, 3, 4, &[1, 3]).unwrap(), [1, 3, 5, 7, 9, 11]);
        assert_eq!(select_cols(&matrix, 3, 4, &[]).unwrap(), [] as [u16; 0]);
        assert_eq!(select_rows(&matrix, 3, 4, &[3]), Err(Error::IndexOutOfRange { what: "row", index: 3, len: 3 }));
        assert_eq!(select_cols(&matrix, 3, 4, &[4]), Err(Error::IndexOutOfRange { what: "column", index: 4, len: 4 }));
        assert!(matches!(select_rows(&matrix, 4, 4, &[0]), Err(Error::ShapeMismatch { .. })));
        assert_eq!(select_rows::<f32>(&[], 0, 5, &[]).unwrap(), [] as [f32; 0]);
    }
}
