//! The dense f32 product the whole project uses: `Y = X W^T (+ b)`, PyTorch's `F.linear`.
//!
//! `x` is row-major `[n_tokens, cols]`, `weights` row-major `[rows, cols]` (a linear layer's
//! `[out, in]`, as checkpoints store it), `y` row-major `[n_tokens, rows]`: the same layout as
//! [`QuantizedMatrix::gemm`](crate::QuantizedMatrix::gemm), so a dense layer and a quantized
//! one are interchangeable.
//!
//! On x86_64 with AVX2 and FMA, from 8 tokens, and from 2 tokens on matrices of at least 32768
//! weights with more than 128 outputs, the product is lathe's own packed kernel
//! (`dense/x86_64.rs`: BLIS's loop nest, a 6 x 16 register tile, weights packed a chunk of
//! outputs at a time with 8 x 8 register transposes into a buffer each thread keeps). On the
//! shapes of a padded MiniLM batch (3264 tokens through 384 x 384, 384 x 1536 and 1536 x 384)
//! the `gemm` crate reached only 50 to 65 % of the FMA peak, as packed panels streamed from L3;
//! from 2 to 16 tokens on a 4096 x 4096 layer it runs at half the packed kernel's speed (it is
//! faster on small matrices with few tokens, whence the second condition). For a single token
//! (a GEMV: a packed tile would waste 5 of its 6 rows), without AVX2 and with
//! `LATHE_FORCE_ISA=scalar`, the work is done by the `gemm` crate (0.19), chosen over
//! `matrixmultiply` and `faer` by the `dense_gemm` bench in `benches/peers` (figures in
//! ARCHITECTURE.md): it leads on the single-token GEMV and has no system dependencies. Both are
//! threaded with rayon when the current pool has more than one thread; both split the output,
//! never the inner dimension, so results do not depend on the thread count (each output sums its
//! products in the same order).
//!
//! ```
//! // y = x W^T + b for two tokens through a 3 x 2 layer.
//! let x = [1.0, 2.0, /* token 1 */ 3.0, 4.0];
//! let w = [1.0, 0.0, /* row 1 */ 0.0, 1.0, /* row 2 */ 1.0, 1.0];
//! let b = [0.5, 0.0, -1.0];
//! let mut y = [0.0; 6];
//! lathe_quant::dense::linear(&x, 2, &w, 3, 2, Some(&b), &mut y);
//! assert_eq!(y, [1.5, 2.0, 2.0, 3.5, 4.0, 6.0]);
//! ```

#[cfg(target_arch = "x86_64")]
mod x86_64;

/// `y = x weights^T (+ bias)`: `x` is `[n_tokens, cols]`, `weights` `[rows, cols]`, `bias`
/// `[rows]`, `y` `[n_tokens, rows]`, all row-major. `y` is overwritten.
///
/// # Panics
/// If a slice length does not match the shapes (or a shape product overflows).
pub fn linear(
    x: &[f32],
    n_tokens: usize,
    weights: &[f32],
    rows: usize,
    cols: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    product(x, n_tokens, weights, rows, cols, bias, y, None);
}

/// Where a [`PackedWeights`] keeps its packed copy (nothing off x86_64, where no path reads one).
#[cfg(target_arch = "x86_64")]
type PackedCache = std::sync::OnceLock<x86_64::Packed>;
#[cfg(not(target_arch = "x86_64"))]
type PackedCache = ();

/// The checks and the choice of path of [`linear`] and [`PackedWeights::linear`]. With `kept`,
/// the packed AVX2 product reads the whole matrix packed once (made at the first call that
/// needs it) where [`x86_64::prepacked_pays`] says so, instead of packing it again.
#[allow(clippy::too_many_arguments)]
fn product(
    x: &[f32],
    n_tokens: usize,
    weights: &[f32],
    rows: usize,
    cols: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    kept: Option<&PackedCache>,
) {
    let x_len = n_tokens.checked_mul(cols).expect("n_tokens * cols overflows");
    let w_len = rows.checked_mul(cols).expect("rows * cols overflows");
    let y_len = n_tokens.checked_mul(rows).expect("n_tokens * rows overflows");
    assert_eq!(x.len(), x_len, "x has {} values, not n_tokens x cols = {n_tokens} x {cols}", x.len());
    assert_eq!(weights.len(), w_len, "weights have {} values, not rows x cols = {rows} x {cols}", weights.len());
    assert_eq!(y.len(), y_len, "y has {} values, not n_tokens x rows = {n_tokens} x {rows}", y.len());
    if let Some(bias) = bias {
        assert_eq!(bias.len(), rows, "bias has {} values, not rows = {rows}", bias.len());
    }
    if y_len == 0 {
        return;
    }
    if cols == 0 {
        // An empty inner dimension: the product is zero (gemm would leave `y` untouched).
        fill_bias(y, rows, bias);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if packed_pays(n_tokens, rows, cols) && crate::isa::active() == crate::Isa::Avx2 && x86_64::is_supported() {
        match kept {
            Some(kept) if x86_64::prepacked_pays(rows, cols, n_tokens, rayon::current_num_threads()) => {
                let packed = kept.get_or_init(|| x86_64::Packed::new(weights, rows, cols));
                x86_64::linear_packed(x, n_tokens, packed, bias, y);
            }
            _ => x86_64::linear(x, n_tokens, weights, rows, cols, bias, y),
        }
        return;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = kept;
    gemm_crate(x, n_tokens, weights, rows, cols, bias, y);
}

/// A dense layer's weights (`[rows, cols]`, row-major) with the packed copy lathe's AVX2 product
/// reads, made at the first call that uses it and kept: [`linear`] packs the weights on every
/// call, which for a sentence of about 20 tokens through MiniLM costs about as much as the
/// arithmetic. [`PackedWeights::linear`] computes exactly what [`linear`] computes (the same
/// bits); it reads the packed copy on one thread when the tokens fit one block of the tile's
/// loop nest or the matrix fits the budget [`linear`] would pack whole, and is [`linear`]
/// otherwise. The copy takes as much memory as the weights.
///
/// ```
/// use lathe_quant::dense::PackedWeights;
/// let layer = PackedWeights::new(vec![1.0, 0.0, /* row 1 */ 0.0, 1.0, /* row 2 */ 1.0, 1.0], 3, 2);
/// let mut y = [0.0; 6];
/// layer.linear(&[1.0, 2.0, /* token 1 */ 3.0, 4.0], 2, Some(&[0.5, 0.0, -1.0]), &mut y);
/// assert_eq!(y, [1.5, 2.0, 2.0, 3.5, 4.0, 6.0]);
/// ```
#[derive(Clone)]
pub struct PackedWeights {
    weights: Vec<f32>,
    rows: usize,
    cols: usize,
    packed: PackedCache,
}

impl std::fmt::Debug for PackedWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedWeights").field("rows", &self.rows).field("cols", &self.cols).finish_non_exhaustive()
    }
}

impl PackedWeights {
    /// Keeps `weights` (`[rows, cols]`, row-major) for [`linear`](Self::linear); nothing is
    /// packed yet.
    ///
    /// # Panics
    /// If `weights.len() != rows * cols` (or the product overflows).
    pub fn new(weights: Vec<f32>, rows: usize, cols: usize) -> PackedWeights {
        let len = rows.checked_mul(cols).expect("rows * cols overflows");
        assert_eq!(weights.len(), len, "weights have {} values, not rows x cols = {rows} x {cols}", weights.len());
        PackedWeights { weights, rows, cols, packed: PackedCache::default() }
    }

    /// The weights, row-major `[rows, cols]`.
    pub fn weights(&self) -> &[f32] {
        &self.weights
    }

    /// The weights back, dropping the packed copy.
    pub fn into_weights(self) -> Vec<f32> {
        self.weights
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// [`linear`] with these weights: `y = x weights^T (+ bias)`, the same bits.
    ///
    /// # Panics
    /// If a slice length does not match the shapes.
    pub fn linear(&self, x: &[f32], n_tokens: usize, bias: Option<&[f32]>, y: &mut [f32]) {
        product(x, n_tokens, &self.weights, self.rows, self.cols, bias, y, Some(&self.packed));
    }
}

/// Whether the packed AVX2 product beats the `gemm` crate on `n_tokens x cols` times `rows x
/// cols`, as measured on one thread (Zen 3): from 8 tokens it is 1.1 to 2x faster on every shape
/// tried, down to 8 x 32 x 32; from 2 tokens it is 1.2 to 3x faster on matrices of 32768 weights
/// and more (2x on 4096 x 4096), except where the `gemm` crate has a fast path for a few tokens
/// and narrow outputs (2 tokens with at most 128 outputs, up to 4 with at most 64: there it is 2
/// to 4x faster). For one token the `gemm` crate's GEMV is 1.7x (4096 x 4096) to 4x (384 x 384)
/// faster.
#[cfg(target_arch = "x86_64")]
fn packed_pays(n_tokens: usize, rows: usize, cols: usize) -> bool {
    n_tokens >= 8 || (n_tokens >= 2 && rows > 128 && rows.saturating_mul(cols) >= 1 << 15)
}

/// The portable path (and the one for a few tokens): the `gemm` crate. Shapes are checked and
/// non-empty.
fn gemm_crate(
    x: &[f32],
    n_tokens: usize,
    weights: &[f32],
    rows: usize,
    cols: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    if let Some(bias) = bias {
        fill_bias(y, rows, Some(bias));
    }
    let parallelism = if rayon::current_num_threads() > 1 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the three lengths were checked above against the shapes. gemm's strides are
    // (column stride, row stride): y is [n_tokens, rows] row-major (1, rows); x is [n_tokens, cols]
    // row-major (1, cols); the right-hand side is W^T, [cols, rows], read from W's row-major
    // storage with column stride `cols` and row stride 1. Every index formed is inside its slice,
    // and `y` is the only matrix written and the only one borrowed mutably. With `read_dst` the
    // kernel computes y = 1 * y + 1 * x W^T (the bias pre-filled above); without it y = x W^T.
    unsafe {
        gemm::gemm(
            n_tokens,
            rows,
            cols,
            y.as_mut_ptr(),
            1,
            rows as isize,
            bias.is_some(),
            x.as_ptr(),
            1,
            cols as isize,
            weights.as_ptr(),
            cols as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

fn fill_bias(y: &mut [f32], rows: usize, bias: Option<&[f32]>) {
    for row in y.chunks_exact_mut(rows) {
        match bias {
            Some(bias) => row.copy_from_slice(bias),
            None => row.fill(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::linear;

    fn reference(x: &[f32], n_tokens: usize, w: &[f32], rows: usize, cols: usize, bias: Option<&[f32]>) -> Vec<f64> {
        let mut y = vec![0.0f64; n_tokens * rows];
        for t in 0..n_tokens {
            for r in 0..rows {
                let dot: f64 = (0..cols).map(|c| f64::from(x[t * cols + c]) * f64::from(w[r * cols + c])).sum();
                y[t * rows + r] = dot + bias.map_or(0.0, |b| f64::from(b[r]));
            }
        }
        y
    }

    /// Deterministic values in [-1, 1] (xorshift), shared with the AVX2 kernel's tests.
    pub(super) fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
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
    fn matches_an_f64_reference_on_awkward_shapes() {
        // From one token (the gemm crate) to several blocks of tokens and of the inner dimension
        // with ragged edges everywhere (the packed AVX2 product: 6 x 16 tiles, blocks of 72
        // tokens, inner blocks of at most 256, 8 x 8 packing transposes), and the packed product
        // from 2 tokens on a larger matrix.
        for &(n_tokens, rows, cols) in &[
            (1, 1, 1),
            (1, 7, 33),
            (3, 17, 5),
            (32, 40, 64),
            (5, 384, 100),
            (129, 9, 31),
            (8, 16, 8),
            (13, 33, 300),
            (150, 50, 517),
            (73, 16, 7),
            (200, 31, 1),
            (2, 200, 300),
            (5, 300, 130),
        ] {
            let x = values(n_tokens * cols, 1);
            let w = values(rows * cols, 2);
            let b = values(rows, 3);
            for bias in [None, Some(b.as_slice())] {
                let mut y = vec![f32::NAN; n_tokens * rows];
                linear(&x, n_tokens, &w, rows, cols, bias, &mut y);
                let expected = reference(&x, n_tokens, &w, rows, cols, bias);
                for (i, (got, want)) in y.iter().zip(&expected).enumerate() {
                    let tolerance = 1e-6 * cols as f64 + 1e-6;
                    assert!(
                        (f64::from(*got) - want).abs() <= tolerance,
                        "{n_tokens}x{rows}x{cols} [{i}]: {got} vs {want}"
                    );
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn the_packed_product_matches_the_gemm_crate(
            n_tokens in 1usize..90,
            rows in 1usize..40,
            cols in 1usize..300,
            with_bias in proptest::bool::ANY,
        ) {
            let (x, w, b) = (values(n_tokens * cols, 4), values(rows * cols, 5), values(rows, 6));
            let bias = with_bias.then_some(b.as_slice());
            let mut dispatched = vec![f32::NAN; n_tokens * rows];
            let mut portable = vec![f32::NAN; n_tokens * rows];
            linear(&x, n_tokens, &w, rows, cols, bias, &mut dispatched);
            super::gemm_crate(&x, n_tokens, &w, rows, cols, bias, &mut portable);
            // Both sum `cols` products of values in -1..1 in f32, in different orders.
            let tolerance = 2.0 * cols as f32 * f32::EPSILON + 1e-6;
            for (got, want) in dispatched.iter().zip(&portable) {
                proptest::prop_assert!((got - want).abs() <= tolerance, "{}x{}x{}: {} vs {}", n_tokens, rows, cols, got, want);
            }
        }
    }

    #[test]
    fn packed_weights_compute_the_bits_of_linear() {
        // Token counts below the packed product (the gemm crate), within one block of 72
        // tokens, and beyond it on a matrix small enough to be packed whole (1536 x 384, as
        // MiniLM's) and on one that is not (300 x 4000: `linear` itself, in chunks); one thread
        // (the packed copy) and three (`linear` splitting the work).
        for &(rows, cols) in &[(1536, 384), (40, 300), (300, 4000), (16, 8)] {
            let w = values(rows * cols, 7);
            let b = values(rows, 8);
            let layer = super::PackedWeights::new(w.clone(), rows, cols);
            for n_tokens in [1, 3, 8, 21, 72, 73, 150] {
                let x = values(n_tokens * cols, 9 + n_tokens as u32);
                for bias in [None, Some(b.as_slice())] {
                    let mut expected = vec![f32::NAN; n_tokens * rows];
                    linear(&x, n_tokens, &w, rows, cols, bias, &mut expected);
                    for threads in [1, 3] {
                        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                        let mut y = vec![f32::NAN; n_tokens * rows];
                        pool.install(|| layer.linear(&x, n_tokens, bias, &mut y));
                        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&y), bits(&expected), "{n_tokens}x{rows}x{cols}, {threads} threads");
                    }
                }
            }
        }
        assert_eq!(super::PackedWeights::new(vec![1.0; 6], 3, 2).into_weights(), vec![1.0; 6]);
    }

    #[test]
    fn empty_inner_dimension_gives_the_bias() {
        let mut y = [f32::NAN; 4];
        linear(&[], 2, &[], 2, 0, Some(&[1.0, 2.0]), &mut y);
        assert_eq!(y, [1.0, 2.0, 1.0, 2.0]);
        linear(&[], 2, &[], 2, 0, None, &mut y);
        assert_eq!(y, [0.0; 4]);
    }

    #[test]
    #[should_panic(expected = "weights have 5 values")]
    fn mismatched_lengths_panic() {
        linear(&[0.0; 4], 2, &[0.0; 5], 3, 2, None, &mut [0.0; 6]);
    }
}
