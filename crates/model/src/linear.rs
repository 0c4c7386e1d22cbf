//! `Linear`: one layer's `y = x W^T + b`, run by whichever kernel holds its weights.

use std::borrow::Cow;
use std::fmt;

use lathe_quant::dense::PackedWeights;
use lathe_quant::{ActivationBits, QuantizedMatrix, Scheme};
use lathe_sparse::{CsrMatrix, Format, NmMatrix, prefer_sparse};

use crate::{Error, Result};

/// A linear layer `y = x W^T + b` with `W` of shape `[out_features, in_features]` (PyTorch's
/// layout), whose weights are stored dense in f32 or quantized.
///
/// Every kind takes and returns the same row-major f32 layout, `x` `[n_tokens, in_features]`
/// and `y` `[n_tokens, out_features]`, so the model code calls [`forward`](Self::forward) and
/// never looks at the storage. The storage is private: a new kind (a sparse CSR matrix, say)
/// is one more constructor and one more [`LinearKind`], and no caller changes.
///
/// ```
/// use lathe_model::{Linear, LinearKind};
/// // 2 outputs x 3 inputs.
/// let dense = Linear::dense(vec![1.0, 0.0, 2.0, 0.0, 1.0, 0.0], 2, 3, Some(vec![0.5, -0.5]))?;
/// let mut y = [0.0; 2];
/// dense.forward(&[1.0, 2.0, 3.0], 1, &mut y);
/// assert_eq!(y, [7.5, 1.5]);
/// assert_eq!(dense.kind(), LinearKind::DenseF32);
///
/// let weights: Vec<f32> = (0..4 * 64).map(|i| (i % 7) as f32 - 3.0).collect();
/// let q8 = Linear::dense(weights, 4, 64, None)?.quantize("q8_0".parse()?)?;
/// assert_eq!(q8.description(), "q8_0");
/// # Ok::<(), lathe_model::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Linear {
    out_features: usize,
    in_features: usize,
    bias: Option<Vec<f32>>,
    /// SmoothQuant's per-input-channel factors `1/s`, applied to the input before the kernel
    /// (the stored weights have their columns multiplied by `s`).
    input_scale: Option<Vec<f32>>,
    kernel: Kernel,
}

#[derive(Debug, Clone)]
enum Kernel {
    /// Row-major `[out_features, in_features]`, run by lathe-quant's dense product on a packed
    /// copy kept with them.
    Dense(PackedWeights),
    /// Run by `QuantizedMatrix::gemm` (activations quantized on the fly), then the bias added.
    Quantized(QuantizedMatrix),
    /// Run by `QuantizedMatrix::gemm_weight_only` (activations stay f32), then the bias added.
    WeightOnly(QuantizedMatrix),
    /// Run by lathe-sparse's CSR product, or on the dense copy for calls with more tokens than
    /// the rule gives to the sparse kernel.
    Csr(CsrMatrix, DenseCopy),
    /// Run by lathe-sparse's N:M product, or on the dense copy as [`Kernel::Csr`].
    Nm(NmMatrix, DenseCopy),
}

/// The dense f32 weights of a sparse linear, made from the sparse matrix at the first call that
/// [`prefer_sparse`] gives to the dense GEMM (batches of many tokens), and kept for the next.
type DenseCopy = std::sync::OnceLock<PackedWeights>;

/// Which kernel runs a [`Linear`]. Displays as `dense f32`, or as the quantization scheme
/// (`q8_0`, `int8-channel` ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LinearKind {
    /// f32 weights through the dense GEMM.
    DenseF32,
    /// Quantized weights through lathe-quant's GEMM, activations quantized per token on the fly.
    Quantized(Scheme),
    /// Integer weights through lathe-quant's 7-bit activation GEMM (`maddubs`), activations
    /// quantized per token to 7 bits on the fly.
    QuantizedSevenBit(Scheme),
    /// Quantized weights through lathe-quant's weight-only GEMM (f32 activations).
    WeightOnly(Scheme),
    /// Sparse weights in CSR through lathe-sparse's product.
    SparseCsr,
    /// N:M sparse weights through lathe-sparse's product.
    SparseNm {
        /// Nonzeros per group at most.
        n: usize,
        /// Columns per group.
        m: usize,
    },
}

impl fmt::Display for LinearKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinearKind::DenseF32 => f.write_str("dense f32"),
            LinearKind::Quantized(scheme) => fmt::Display::fmt(scheme, f),
            LinearKind::QuantizedSevenBit(scheme) => write!(f, "{scheme} (7-bit activations)"),
            LinearKind::WeightOnly(scheme) => write!(f, "{scheme} weight-only"),
            LinearKind::SparseCsr => f.write_str("sparse csr"),
            LinearKind::SparseNm { n, m } => write!(f, "sparse {n}:{m}"),
        }
    }
}

fn check_bias(bias: Option<&Vec<f32>>, out_features: usize) -> Result<()> {
    match bias {
        Some(bias) if bias.len() != out_features => {
            Err(Error::LinearSize { what: "bias", expected: out_features, found: bias.len() })
        }
        _ => Ok(()),
    }
}

impl Linear {
    /// A dense f32 linear from row-major `[out_features, in_features]` weights and an optional
    /// bias of `out_features` values.
    ///
    /// # Errors
    /// [`Error::LinearSize`] when a length does not match the shape.
    pub fn dense(weights: Vec<f32>, out_features: usize, in_features: usize, bias: Option<Vec<f32>>) -> Result<Linear> {
        let expected = out_features.saturating_mul(in_features);
        if weights.len() != expected {
            return Err(Error::LinearSize { what: "weights", expected, found: weights.len() });
        }
        check_bias(bias.as_ref(), out_features)?;
        Ok(Linear {
            out_features,
            in_features,
            bias,
            input_scale: None,
            kernel: Kernel::Dense(PackedWeights::new(weights, out_features, in_features)),
        })
    }

    /// A quantized linear from a [`QuantizedMatrix`] (its rows are the outputs) and an optional
    /// f32 bias.
    ///
    /// # Errors
    /// [`Error::LinearSize`] when the bias length differs from the matrix rows.
    pub fn quantized(matrix: QuantizedMatrix, bias: Option<Vec<f32>>) -> Result<Linear> {
        check_bias(bias.as_ref(), matrix.rows())?;
        Ok(Linear {
            out_features: matrix.rows(),
            in_features: matrix.cols(),
            bias,
            input_scale: None,
            kernel: Kernel::Quantized(matrix),
        })
    }

    /// A quantized linear whose activations stay f32 (weight-only quantization: the weights are
    /// dequantized tile by tile inside the product).
    ///
    /// # Errors
    /// [`Error::LinearSize`] when the bias length differs from the matrix rows.
    pub fn weight_only(matrix: QuantizedMatrix, bias: Option<Vec<f32>>) -> Result<Linear> {
        check_bias(bias.as_ref(), matrix.rows())?;
        Ok(Linear {
            out_features: matrix.rows(),
            in_features: matrix.cols(),
            bias,
            input_scale: None,
            kernel: Kernel::WeightOnly(matrix),
        })
    }

    /// The same linear with SmoothQuant's smoothing: its stored (quantized) weights have column
    /// `j` multiplied by `s[j]`, so the input's channel `j` is divided by `s[j]` before the
    /// product (`x W^T = (x / s)(W s)^T`). Moves activation outliers into the weights, where
    /// per-channel weight scales absorb them.
    ///
    /// # Errors
    /// [`Error::LinearSize`] when `s` is not one factor per input feature, and
    /// [`Error::BadSmoothing`] for a factor that is not finite and positive or a linear whose
    /// weights are not quantized.
    pub fn smoothed(mut self, s: &[f32]) -> Result<Linear> {
        if s.len() != self.in_features {
            return Err(Error::LinearSize { what: "smoothing factors", expected: self.in_features, found: s.len() });
        }
        if let Some(index) = s.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(Error::BadSmoothing(format!(
                "factor {index} is {}: factors must be finite and positive",
                s[index]
            )));
        }
        if !matches!(self.kernel, Kernel::Quantized(_) | Kernel::WeightOnly(_)) {
            return Err(Error::BadSmoothing(format!("a {} linear: only quantized linears are smoothed", self.kind())));
        }
        self.input_scale = Some(s.iter().map(|s| 1.0 / s).collect());
        Ok(self)
    }

    /// SmoothQuant's factors `s` when the linear is [`smoothed`](Self::smoothed).
    pub fn smoothing(&self) -> Option<Vec<f32>> {
        self.input_scale.as_ref().map(|inverse| inverse.iter().map(|v| 1.0 / v).collect())
    }

    /// A linear over CSR weights.
    ///
    /// # Errors
    /// [`Error::LinearSize`] when the bias length differs from the matrix rows.
    pub fn csr(matrix: CsrMatrix, bias: Option<Vec<f32>>) -> Result<Linear> {
        check_bias(bias.as_ref(), matrix.rows())?;
        Ok(Linear {
            out_features: matrix.rows(),
            in_features: matrix.cols(),
            bias,
            input_scale: None,
            kernel: Kernel::Csr(matrix, DenseCopy::new()),
        })
    }

    /// A linear over N:M sparse weights.
    ///
    /// # Errors
    /// [`Error::LinearSize`] when the bias length differs from the matrix rows.
    pub fn n_m(matrix: NmMatrix, bias: Option<Vec<f32>>) -> Result<Linear> {
        check_bias(bias.as_ref(), matrix.rows())?;
        Ok(Linear {
            out_features: matrix.rows(),
            in_features: matrix.cols(),
            bias,
            input_scale: None,
            kernel: Kernel::Nm(matrix, DenseCopy::new()),
        })
    }

    /// A linear over f32 weights that runs on whichever kernel lathe-sparse's rule
    /// ([`prefer_sparse`]) says is fastest for calls of about `n_tokens` tokens: N:M when every
    /// group of `m` columns holds at most `n` nonzeros (2:4, then 4:8), else CSR, else dense.
    /// Exact zeros are what counts as pruned.
    ///
    /// A sparse linear (from here, [`csr`](Self::csr) or [`n_m`](Self::n_m)) asks the rule
    /// again on every call with that call's tokens: a batch too large for the sparse kernel to
    /// win runs the dense GEMM on a dense copy of the weights, made from the sparse matrix at the
    /// first such call and kept (the f32 size of the layer, once).
    ///
    /// # Errors
    /// [`Error::LinearSize`] when a length does not match the shape.
    pub fn dense_or_sparse(
        weights: Vec<f32>,
        out_features: usize,
        in_features: usize,
        bias: Option<Vec<f32>>,
        n_tokens: usize,
    ) -> Result<Linear> {
        let dense = Linear::dense(weights, out_features, in_features, bias)?;
        let Kernel::Dense(weights) = &dense.kernel else { unreachable!("built dense") };
        let weights = weights.weights();
        let zeros = weights.iter().filter(|&&w| w == 0.0).count();
        if zeros == 0 {
            return Ok(dense);
        }
        let density = 1.0 - zeros as f64 / weights.len().max(1) as f64;
        for (n, m) in [(2, 4), (4, 8)] {
            let fits = in_features.is_multiple_of(m)
                && weights.chunks_exact(m).all(|group| group.iter().filter(|&&w| w != 0.0).count() <= n);
            if fits && prefer_sparse(Format::Nm { n, m }, out_features, in_features, density, n_tokens) {
                let matrix =
                    NmMatrix::from_dense(weights, out_features, in_features, n, m).expect("the pattern was checked");
                return Linear::n_m(matrix, dense.bias.clone());
            }
        }
        if prefer_sparse(Format::Csr, out_features, in_features, density, n_tokens) {
            let matrix = CsrMatrix::from_dense(weights, out_features, in_features).expect("shapes were checked");
            return Linear::csr(matrix, dense.bias.clone());
        }
        Ok(dense)
    }

    /// This linear's weights (dequantized if need be) quantized to `scheme`, with the same bias.
    ///
    /// # Errors
    /// What [`QuantizedMatrix::quantize`] reports: a row length that is not a whole number of
    /// the scheme's blocks, or a non-finite weight.
    pub fn quantize(&self, scheme: Scheme) -> Result<Linear> {
        let weights = self.weights_f32();
        let matrix = QuantizedMatrix::quantize(&weights, self.out_features, self.in_features, scheme)?;
        Linear::quantized(matrix, self.bias.clone())
    }

    /// Output features (rows of `W`).
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// Input features (columns of `W`).
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&[f32]> {
        self.bias.as_deref()
    }

    /// Which kernel runs this linear.
    pub fn kind(&self) -> LinearKind {
        match &self.kernel {
            Kernel::Dense(_) => LinearKind::DenseF32,
            Kernel::Quantized(matrix) => match matrix.activation_bits() {
                ActivationBits::Eight => LinearKind::Quantized(matrix.scheme()),
                ActivationBits::Seven => LinearKind::QuantizedSevenBit(matrix.scheme()),
            },
            Kernel::WeightOnly(matrix) => LinearKind::WeightOnly(matrix.scheme()),
            Kernel::Csr(..) => LinearKind::SparseCsr,
            Kernel::Nm(matrix, _) => LinearKind::SparseNm { n: matrix.n(), m: matrix.m() },
        }
    }

    /// [`kind`](Self::kind) as text: `dense f32`, `q8_0`, `int8-channel` ..., and for a sparse
    /// linear whose larger batches run on the dense GEMM, from how many tokens on: `sparse csr
    /// (dense from 129 tokens)`.
    pub fn description(&self) -> String {
        match self.dense_from() {
            Some(tokens) => format!("{} (dense from {tokens} tokens)", self.kind()),
            None => self.kind().to_string(),
        }
    }

    /// For a sparse linear, the fewest tokens above the 32 it was chosen for from which calls
    /// run on the dense copy ([`prefer_sparse`] asked per call); `None` for the other kinds and
    /// for sparse ones that stay sparse up to 4096 tokens.
    pub fn dense_from(&self) -> Option<usize> {
        self.sparse_format()?;
        (33..=4096).find(|&tokens| !self.runs_sparse(tokens))
    }

    /// The sparse format and density the rule weighs, for a sparse linear.
    fn sparse_format(&self) -> Option<(Format, f64)> {
        match &self.kernel {
            Kernel::Csr(matrix, _) => Some((Format::Csr, matrix.density())),
            Kernel::Nm(matrix, _) => Some((Format::Nm { n: matrix.n(), m: matrix.m() }, matrix.density())),
            _ => None,
        }
    }

    /// Whether a call of `n_tokens` runs on this sparse linear's own kernel ([`prefer_sparse`]).
    fn runs_sparse(&self, n_tokens: usize) -> bool {
        self.sparse_format().is_some_and(|(format, density)| {
            prefer_sparse(format, self.out_features, self.in_features, density, n_tokens)
        })
    }

    /// The f32 weights when stored dense, row-major `[out_features, in_features]`.
    pub fn dense_weights(&self) -> Option<&[f32]> {
        match &self.kernel {
            Kernel::Dense(weights) => Some(weights.weights()),
            _ => None,
        }
    }

    /// The weights as f32 (a copy; dequantized when stored quantized), row-major
    /// `[out_features, in_features]`.
    pub fn weights_f32(&self) -> Vec<f32> {
        match &self.kernel {
            Kernel::Dense(weights) => weights.weights().to_vec(),
            Kernel::Quantized(matrix) | Kernel::WeightOnly(matrix) => {
                let mut weights = vec![0.0; self.out_features * self.in_features];
                matrix.dequantize(&mut weights);
                if let Some(inverse) = &self.input_scale {
                    for row in weights.chunks_exact_mut(self.in_features) {
                        row.iter_mut().zip(inverse).for_each(|(w, v)| *w *= v);
                    }
                }
                weights
            }
            Kernel::Csr(matrix, _) => matrix.to_dense(),
            Kernel::Nm(matrix, _) => matrix.to_dense(),
        }
    }

    /// `y = x W^T + b` for `n_tokens` rows: `x` is row-major `[n_tokens, in_features]`, `y`
    /// `[n_tokens, out_features]` and is overwritten.
    ///
    /// # Panics
    /// If `x` or `y` do not hold `n_tokens` rows of the right width.
    pub fn forward(&self, x: &[f32], n_tokens: usize, y: &mut [f32]) {
        match &self.kernel {
            // SmoothQuant's input scale and the bias are fused into the quantized GEMM (same bits
            // as scaling, multiplying and adding one after the other).
            Kernel::Quantized(matrix) => {
                matrix.linear(x, n_tokens, self.input_scale.as_deref(), self.bias.as_deref(), y)
            }
            Kernel::Dense(weights) => {
                weights.linear(&self.smoothed_input(x, n_tokens), n_tokens, self.bias.as_deref(), y)
            }
            Kernel::WeightOnly(matrix) => {
                matrix.gemm_weight_only(&self.smoothed_input(x, n_tokens), n_tokens, y);
                self.add_bias(y);
            }
            Kernel::Csr(matrix, dense) => {
                let x = self.smoothed_input(x, n_tokens);
                if !self.runs_sparse(n_tokens) {
                    return self.dense_copy_forward(dense, || matrix.to_dense(), &x, n_tokens, y);
                }
                match &self.bias {
                    Some(bias) => matrix.spmm_bias(&x, n_tokens, bias, y),
                    None => matrix.spmm(&x, n_tokens, y),
                }
            }
            Kernel::Nm(matrix, dense) => {
                let x = self.smoothed_input(x, n_tokens);
                if !self.runs_sparse(n_tokens) {
                    return self.dense_copy_forward(dense, || matrix.to_dense(), &x, n_tokens, y);
                }
                match &self.bias {
                    Some(bias) => matrix.spmm_bias(&x, n_tokens, bias, y),
                    None => matrix.spmm(&x, n_tokens, y),
                }
            }
        }
    }

    /// A sparse linear's product on the dense GEMM, over its dense copy (made by `to_dense` at the
    /// first such call).
    fn dense_copy_forward(
        &self,
        dense: &DenseCopy,
        to_dense: impl FnOnce() -> Vec<f32>,
        x: &[f32],
        n_tokens: usize,
        y: &mut [f32],
    ) {
        let weights = dense.get_or_init(|| PackedWeights::new(to_dense(), self.out_features, self.in_features));
        weights.linear(x, n_tokens, self.bias.as_deref(), y);
    }

    /// `x` with channel `j` multiplied by SmoothQuant's `1 / s[j]` when the linear is smoothed.
    fn smoothed_input<'a>(&self, x: &'a [f32], n_tokens: usize) -> Cow<'a, [f32]> {
        match &self.input_scale {
            Some(inverse) if !inverse.is_empty() => {
                assert_eq!(x.len(), n_tokens * self.in_features, "input of {n_tokens} rows of {}", self.in_features);
                let mut scaled = vec![0.0f32; x.len()];
                for (dst, src) in scaled.chunks_exact_mut(inverse.len()).zip(x.chunks_exact(inverse.len())) {
                    for ((dst, &value), &factor) in dst.iter_mut().zip(src).zip(inverse) {
                        *dst = value * factor;
                    }
                }
                Cow::Owned(scaled)
            }
            _ => Cow::Borrowed(x),
        }
    }

    fn add_bias(&self, y: &mut [f32]) {
        if let Some(bias) = &self.bias
            && !bias.is_empty()
        {
            for row in y.chunks_exact_mut(bias.len()) {
                row.iter_mut().zip(bias).for_each(|(value, b)| *value += b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn sparse_linears_run_dense_where_the_rule_says_on_a_copy_of_their_weights() {
        // A half-pruned CSR layer runs dense from 129 tokens; a 2:4 one stays sparse.
        let (rows, cols) = (384, 384);
        let mut weights = values(rows * cols, 3);
        // 2:4: the second and fourth of every group pruned.
        weights.chunks_mut(2).for_each(|pair| pair[1] = 0.0);
        let bias = values(rows, 4);
        let dense = Linear::dense(weights.clone(), rows, cols, Some(bias.clone())).unwrap();
        let n_m = Linear::dense_or_sparse(weights.clone(), rows, cols, Some(bias.clone()), 32).unwrap();
        let csr = Linear::csr(CsrMatrix::from_dense(&weights, rows, cols).unwrap(), Some(bias)).unwrap();
        assert_eq!(n_m.kind(), LinearKind::SparseNm { n: 2, m: 4 });
        for linear in [&n_m, &csr] {
            let (Kernel::Csr(_, copy) | Kernel::Nm(_, copy)) = &linear.kernel else { unreachable!() };
            for tokens in [32, 300] {
                let x = values(tokens * cols, 5);
                let (mut want, mut got) = (vec![0.0; tokens * rows], vec![0.0; tokens * rows]);
                dense.forward(&x, tokens, &mut want);
                linear.forward(&x, tokens, &mut got);
                let error = want.iter().zip(&got).map(|(w, g)| (w - g).abs()).fold(0.0f32, f32::max);
                assert!(error < 1e-4, "{} at {tokens} tokens: {error}", linear.kind());
                // The dense copy exists once a call has had more tokens than the rule gives the
                // sparse kernel, and holds exactly the sparse weights.
                let is_csr = std::ptr::eq(linear, &csr);
                assert_eq!(copy.get().is_some(), is_csr && tokens == 300, "{} at {tokens} tokens", linear.kind());
            }
            if std::ptr::eq(linear, &csr) {
                assert_eq!(copy.get().unwrap().weights(), weights.as_slice());
                assert_eq!(linear.dense_from(), Some(129));
                assert!(linear.description().ends_with(" (dense from 129 tokens)"), "{}", linear.description());
            } else {
                assert_eq!((linear.dense_from(), linear.description()), (None, "sparse 2:4".to_owned()));
            }
            assert_eq!(linear.kind(), if std::ptr::eq(linear, &csr) { LinearKind::SparseCsr } else { n_m.kind() });
        }
    }

    #[test]
    fn a_smoothed_linear_computes_what_its_unsmoothed_weights_do() {
        let (rows, cols, tokens) = (8, 64, 3);
        let weights = values(rows * cols, 1);
        let x: Vec<f32> = values(tokens * cols, 2)
            .iter()
            .enumerate()
            .map(|(i, v)| if i % cols == 5 { v * 40.0 } else { *v })
            .collect();
        let s: Vec<f32> = (0..cols).map(|j| if j == 5 { 8.0 } else { 0.5 + (j % 3) as f32 * 0.25 }).collect();
        let scaled: Vec<f32> = weights.chunks(cols).flat_map(|row| row.iter().zip(&s).map(|(w, s)| w * s)).collect();
        let scheme: Scheme = "int8-channel".parse().unwrap();
        let smoothed = Linear::quantized(QuantizedMatrix::quantize(&scaled, rows, cols, scheme).unwrap(), None)
            .unwrap()
            .smoothed(&s)
            .unwrap();
        assert_eq!(smoothed.smoothing().unwrap().len(), cols);
        let dense = Linear::dense(weights.clone(), rows, cols, None).unwrap();
        let (mut want, mut got) = (vec![0.0; tokens * rows], vec![0.0; tokens * rows]);
        dense.forward(&x, tokens, &mut want);
        smoothed.forward(&x, tokens, &mut got);
        // Against plain W8A8 on the same weights: the outlier channel no longer sets every
        // token's activation scale, so the error drops.
        let plain = Linear::quantized(QuantizedMatrix::quantize(&weights, rows, cols, scheme).unwrap(), None).unwrap();
        let mut unsmoothed = vec![0.0; tokens * rows];
        plain.forward(&x, tokens, &mut unsmoothed);
        let error = |y: &[f32]| want.iter().zip(y).map(|(w, y)| (w - y).abs()).fold(0.0f32, f32::max);
        assert!(error(&got) < 0.5 * error(&unsmoothed), "{} vs {}", error(&got), error(&unsmoothed));
        // The effective weights: the rounding of W s, divided back by s.
        for (i, (w, g)) in weights.iter().zip(smoothed.weights_f32()).enumerate() {
            let row = &scaled[i / cols * cols..][..cols];
            let step = row.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
            assert!((w - g).abs() <= step / 2.0 / s[i % cols] + 1e-6, "{i}: {w} vs {g}");
        }

        let err = Linear::dense(weights.clone(), rows, cols, None).unwrap().smoothed(&s).unwrap_err();
        assert!(err.to_string().contains("dense f32"), "{err}");
        let quantized =
            || Linear::quantized(QuantizedMatrix::quantize(&scaled, rows, cols, scheme).unwrap(), None).unwrap();
        let mut bad = s.clone();
        bad[3] = 0.0;
        assert!(quantized().smoothed(&bad).unwrap_err().to_string().contains("factor 3"));
        assert!(matches!(quantized().smoothed(&s[1..]), Err(Error::LinearSize { .. })));
    }

    #[test]
    fn dense_and_quantized_agree_within_quantization_error() {
        let (n_tokens, rows, cols) = (5, 24, 64);
        let (x, w, b) = (values(n_tokens * cols, 1), values(rows * cols, 2), values(rows, 3));
        let dense = Linear::dense(w.clone(), rows, cols, Some(b.clone())).unwrap();
        let mut exact = vec![0.0; n_tokens * rows];
        dense.forward(&x, n_tokens, &mut exact);
        for t in 0..n_tokens {
            for r in 0..rows {
                let dot: f64 = (0..cols).map(|c| f64::from(x[t * cols + c]) * f64::from(w[r * cols + c])).sum();
                assert!((dot + f64::from(b[r]) - f64::from(exact[t * rows + r])).abs() < 1e-5);
            }
        }
        // Outputs are sums of 64 products of values in -1..1 (typically about 2.5 in magnitude);
        // 8-bit weights and activations put about 0.03 of error on them, 4-bit weights about 0.3, f16 weights about 1e-3.
        for (scheme, tolerance) in [("q8_0", 0.1), ("int8-channel", 0.1), ("q4_0", 0.8), ("f16", 5e-3)] {
            let quantized = dense.quantize(scheme.parse().unwrap()).unwrap();
            assert_eq!(quantized.description(), scheme);
            assert_eq!(
                (quantized.out_features(), quantized.in_features(), quantized.bias()),
                (rows, cols, Some(&b[..]))
            );
            assert!(quantized.dense_weights().is_none());
            let mut y = vec![f32::NAN; n_tokens * rows];
            quantized.forward(&x, n_tokens, &mut y);
            let worst = y.iter().zip(&exact).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(worst < tolerance, "{scheme}: max error {worst}");
        }
        assert_eq!(dense.description(), "dense f32");
        assert_eq!(dense.weights_f32(), w);
    }

    #[test]
    fn mismatched_lengths_are_errors() {
        let error = Linear::dense(vec![0.0; 5], 2, 3, None).unwrap_err();
        assert_eq!(error.to_string(), "linear weights: 5 values where 6 are needed");
        let error = Linear::dense(vec![0.0; 6], 2, 3, Some(vec![0.0; 3])).unwrap_err();
        assert_eq!(error.to_string(), "linear bias: 3 values where 2 are needed");
        let error = Linear::dense(vec![0.0; 6], 2, 3, None).unwrap().quantize("q8_0".parse().unwrap()).unwrap_err();
        assert!(error.to_string().contains("not a multiple"), "{error}");
    }
}
