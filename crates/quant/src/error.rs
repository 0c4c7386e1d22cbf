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

    #[error("a {rows} x {cols} matrix is too large to address")]
    TooLarge { rows: usize, cols: usize },

    #[error("{what} holds {found} values, but {expected} are needed")]
    LengthMismatch { what: &'static str, expected: usize, found: usize },

    #[error("{what} value {value} at index {index} is outside {min}..={max}")]
    OutOfRange { what: &'static str, index: usize, value: i64, min: i64, max: i64 },
}

/// `Result` with lathe-quant's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
