//! The one error type of lathe-quant.

/// Errors from parsing schemes and quantizing matrices.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum Error {
    #[error("invalid scheme `{input}`: {reason}")]
    BadScheme { input: String, reason: String },

    #[error("weights hold {found} values, but {rows} x {cols} needs {expected}")]
    ShapeMismatch { rows: usize, cols: usize, expected: usize, found: usize },

    #[error("{cols} columns is not a multiple of the {scheme} block of {block}")]
    BlockMisfit { scheme: String, cols: usize, block: usize },

    #[error("weight at row {row}, column {col} is {value}: quantization needs finite weights")]
    NonFinite { row: usize, col: usize, value: f32 },
}

/// `Result` with lathe-quant's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
