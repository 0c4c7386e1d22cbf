//! Streaming calibration statistics of one linear layer's input.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

use crate::error::{check_len, checked_len};
use crate::{Error, Result};

/// Tokens converted to f64 at a time for the Hessian product: bounds the scratch buffer to
/// `CHUNK * in_features` f64 whatever the batch size.
const CHUNK: usize = 256;

/// Statistics of the activations `X` (`[tokens, in_features]`, row-major) entering one linear
/// layer, accumulated over any number of batches in f64:
///
/// - per input channel `j`: the sum of squares `||X_j||^2` (Wanda's norms are its square root)
///   and the largest magnitude `max |X_j|` (SmoothQuant's activation scale);
/// - optionally the Hessian `H = X^T X`, **unnormalised** (the plain sum over tokens). GPTQ's
///   reference scales it to `2/n X^T X`; the OBS sweep is invariant to a positive scale of `H`
///   (the damping is relative to its mean diagonal), so [`LayerStats::hessian`] returns the sum
///   and [`LayerStats::gptq_hessian`] the reference's scaling for whoever compares with it.
///
/// The Hessian costs `in_features^2` f64 (128 MiB for 4096 inputs); build with
/// [`LayerStats::without_hessian`] when only norms and maxima are needed (Wanda, SmoothQuant).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerStats {
    in_features: usize,
    tokens: u64,
    sq_norms: Vec<f64>,
    abs_max: Vec<f32>,
    hessian: Option<Vec<f64>>,
}

impl LayerStats {
    /// Statistics for a layer with `in_features` inputs, Hessian included.
    ///
    /// # Errors
    /// [`Error::TooLarge`] when `in_features^2` overflows.
    pub fn new(in_features: usize) -> Result<LayerStats> {
        let len = checked_len(in_features, in_features)?;
        Ok(LayerStats { hessian: Some(vec![0.0; len]), ..LayerStats::without_hessian(in_features) })
    }

    /// Statistics without the Hessian: norms and maxima only.
    pub fn without_hessian(in_features: usize) -> LayerStats {
        LayerStats {
            in_features,
            tokens: 0,
            sq_norms: vec![0.0; in_features],
            abs_max: vec![0.0; in_features],
            hessian: None,
        }
    }

    /// Adds a batch of `tokens` activations, row-major `[tokens, in_features]`.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `x.len() != tokens * in_features` and
    /// [`Error::NonFiniteActivation`] naming the first NaN or infinite value; the statistics
    /// are unchanged on error.
    pub fn update(&mut self, x: &[f32], tokens: usize) -> Result<()> {
        let cols = self.in_features;
        check_len("activations", checked_len(tokens, cols)?, x.len())?;
        if let Some(index) = x.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFiniteActivation { token: index / cols, channel: index % cols, value: x[index] });
        }
        if cols == 0 {
            self.tokens += tokens as u64;
            return Ok(());
        }
        for row in x.chunks_exact(cols) {
            for ((sq, max), &v) in self.sq_norms.iter_mut().zip(&mut self.abs_max).zip(row) {
                let v64 = f64::from(v);
                *sq += v64 * v64;
                *max = max.max(v.abs());
            }
        }
        if let Some(hessian) = &mut self.hessian {
            let mut scratch = vec![0.0f64; CHUNK.min(tokens) * cols];
            for chunk in x.chunks(CHUNK * cols) {
                let n = chunk.len() / cols;
                let scratch = &mut scratch[..chunk.len()];
                for (dst, &src) in scratch.iter_mut().zip(chunk) {
                    *dst = f64::from(src);
                }
                let chunk = MatRef::from_row_major_slice(scratch, n, cols);
                let dst = MatMut::from_row_major_slice_mut(hessian, cols, cols);
                matmul(dst, Accum::Add, chunk.transpose(), chunk, 1.0, Par::Seq);
            }
        }
        self.tokens += tokens as u64;
        Ok(())
    }

    /// Adds statistics gathered elsewhere (another thread or shard) on the same layer. The
    /// Hessian is kept only when both have one.
    ///
    /// # Errors
    /// [`Error::MergeMismatch`] when the input widths differ.
    pub fn merge(&mut self, other: &LayerStats) -> Result<()> {
        if other.in_features != self.in_features {
            return Err(Error::MergeMismatch { expected: self.in_features, found: other.in_features });
        }
        self.tokens += other.tokens;
        for (a, b) in self.sq_norms.iter_mut().zip(&other.sq_norms) {
            *a += b;
        }
        for (a, b) in self.abs_max.iter_mut().zip(&other.abs_max) {
            *a = a.max(*b);
        }
        match (&mut self.hessian, &other.hessian) {
            (Some(a), Some(b)) => a.iter_mut().zip(b).for_each(|(a, b)| *a += b),
            (hessian, _) => *hessian = None,
        }
        Ok(())
    }

    /// Number of input channels.
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// Number of tokens seen.
    pub fn count(&self) -> u64 {
        self.tokens
    }

    /// `||X_j||^2` per input channel, summed over all tokens.
    pub fn sq_norms(&self) -> &[f64] {
        &self.sq_norms
    }

    /// `||X_j||_2` per input channel in f32: the activation norms Wanda scores with.
    pub fn activation_norms(&self) -> Vec<f32> {
        self.sq_norms.iter().map(|&sq| sq.sqrt() as f32).collect()
    }

    /// `max |X_j|` per input channel (SmoothQuant's activation scales).
    pub fn abs_max(&self) -> &[f32] {
        &self.abs_max
    }

    /// The unnormalised Hessian `X^T X`, row-major `[in_features, in_features]`, or `None` for
    /// statistics built [without](LayerStats::without_hessian) it (or merged with such).
    pub fn hessian(&self) -> Option<&[f64]> {
        self.hessian.as_deref()
    }

    /// The Hessian as GPTQ's reference scales it, `2/n X^T X` (zeros before any token).
    pub fn gptq_hessian(&self) -> Option<Vec<f64>> {
        let scale = if self.tokens == 0 { 0.0 } else { 2.0 / self.tokens as f64 };
        self.hessian.as_ref().map(|h| h.iter().map(|v| v * scale).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;

    #[test]
    fn batches_accumulate_to_the_one_shot_statistics() {
        let (tokens, cols) = (300, 7);
        let mut rng = Rng::new(3);
        let x: Vec<f32> = (0..tokens * cols).map(|_| rng.normal()).collect();
        let mut one = LayerStats::new(cols).unwrap();
        one.update(&x, tokens).unwrap();
        let mut two = LayerStats::new(cols).unwrap();
        two.update(&x[..100 * cols], 100).unwrap();
        let mut other = LayerStats::new(cols).unwrap();
        other.update(&x[100 * cols..], 200).unwrap();
        two.merge(&other).unwrap();
        assert_eq!(one.count(), 300);
        assert_eq!(two.count(), 300);
        assert_eq!(one.abs_max(), two.abs_max());
        let hessian = one.hessian().unwrap();
        for i in 0..cols {
            for j in 0..cols {
                let naive: f64 = (0..tokens).map(|t| f64::from(x[t * cols + i]) * f64::from(x[t * cols + j])).sum();
                assert!((hessian[i * cols + j] - naive).abs() < 1e-9 * naive.abs().max(1.0));
                assert!((two.hessian().unwrap()[i * cols + j] - naive).abs() < 1e-9 * naive.abs().max(1.0));
            }
            assert!((hessian[i * cols + i] - one.sq_norms()[i]).abs() < 1e-9 * one.sq_norms()[i]);
            let max = (0..tokens).map(|t| x[t * cols + i].abs()).fold(0.0f32, f32::max);
            assert_eq!(one.abs_max()[i], max);
        }
        let gptq = one.gptq_hessian().unwrap();
        assert!((gptq[0] - 2.0 / 300.0 * hessian[0]).abs() < 1e-12);
    }

    #[test]
    fn bad_batches_are_errors_and_leave_the_statistics_alone() {
        let mut stats = LayerStats::without_hessian(3);
        assert_eq!(
            stats.update(&[0.0; 5], 2),
            Err(Error::ShapeMismatch { what: "activations", expected: 6, found: 5 })
        );
        let bad = [1.0, 2.0, 3.0, 4.0, f32::NAN, 6.0];
        assert!(matches!(stats.update(&bad, 2), Err(Error::NonFiniteActivation { token: 1, channel: 1, .. })));
        assert_eq!(stats.count(), 0);
        assert_eq!(stats.merge(&LayerStats::without_hessian(4)), Err(Error::MergeMismatch { expected: 3, found: 4 }));
        assert!(stats.hessian().is_none());
        assert!(matches!(LayerStats::new(usize::MAX), Err(Error::TooLarge { .. })));
        stats.update(&[3.0, 0.0, -4.0], 1).unwrap();
        assert_eq!(stats.activation_norms(), [3.0, 0.0, 4.0]);
    }
}
