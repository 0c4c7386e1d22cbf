//! The one error type of lathe-calib.

/// Errors from checking shapes and values, factoring Hessians, and the crates calib builds on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum Error {
    #[error("{what} holds {found} values, but {expected} are needed")]
    ShapeMismatch { what: &'static str, expected: usize, found: usize },

    #[error("a {rows} x {cols} matrix is too large to address")]
    TooLarge { rows: usize, cols: usize },

    #[error("weight at row {row}, column {col} is {value}: calibration needs finite weights")]
    NonFiniteWeight { row: usize, col: usize, value: f32 },

    #[error("activation at token {token}, channel {channel} is {value}: calibration needs finite activations")]
    NonFiniteActivation { token: usize, channel: usize, value: f32 },

    #[error("hessian entry ({row}, {col}) is {value}: the obs sweep needs a finite hessian")]
    NonFiniteHessian { row: usize, col: usize, value: f64 },

    #[error(
        "the {cols} x {cols} hessian is not positive definite even with damping {damp} of its mean diagonal \
         ({attempts} attempts)"
    )]
    NotPositiveDefinite { cols: usize, damp: f64, attempts: usize },

    #[error("damping {damp} is not a finite fraction above 0")]
    BadDamping { damp: f64 },

    #[error("block size {block_size} is not at least 1")]
    BadBlockSize { block_size: usize },

    #[error("sparsity {sparsity} is not a fraction in 0..=1")]
    BadSparsity { sparsity: f64 },

    #[error("cannot keep {n_kept} of every {m} columns of a row of {cols}: need 1 <= m, n <= m and m dividing cols")]
    BadPattern { n_kept: usize, m: usize, cols: usize },

    #[error("{cols} columns is not a multiple of the {scheme} block of {block}")]
    BlockMisfit { scheme: String, cols: usize, block: usize },

    #[error("gptq does not support scheme {scheme}: use an int scheme, q4_0, q4_1 or q8_0")]
    UnsupportedScheme { scheme: String },

    #[error("smoothing strength alpha {alpha} is not in 0..=1")]
    BadAlpha { alpha: f32 },

    #[error("{what} at index {index} is {value}: expected a finite value >= 0")]
    BadStatistic { what: &'static str, index: usize, value: f32 },

    #[error("percentile {percentile} is not in 0..=100")]
    BadPercentile { percentile: f64 },

    #[error("quantization grid of {levels} levels is not at least 1")]
    BadLevels { levels: u32 },

    #[error("the observer has seen no value")]
    EmptyObserver,

    #[error("merging statistics of {found} input channels into statistics of {expected}")]
    MergeMismatch { expected: usize, found: usize },

    #[error(transparent)]
    Quant(#[from] lathe_quant::Error),

    #[error(transparent)]
    Prune(#[from] lathe_prune::Error),
}

/// `Result` with lathe-calib's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `rows * cols`, or [`Error::TooLarge`].
pub(crate) fn checked_len(rows: usize, cols: usize) -> Result<usize> {
    rows.checked_mul(cols).ok_or(Error::TooLarge { rows, cols })
}

/// Checks that a slice named `what` holds `expected` values.
pub(crate) fn check_len(what: &'static str, expected: usize, found: usize) -> Result<()> {
    if expected == found { Ok(()) } else { Err(Error::ShapeMismatch { what, expected, found }) }
}

/// Checks a row-major `rows x cols` weight matrix: its length and that every weight is finite.
pub(crate) fn check_weights(weights: &[f32], rows: usize, cols: usize) -> Result<()> {
    check_len("weights", checked_len(rows, cols)?, weights.len())?;
    match weights.iter().position(|w| !w.is_finite()) {
        Some(index) => Err(Error::NonFiniteWeight { row: index / cols, col: index % cols, value: weights[index] }),
        None => Ok(()),
    }
}
