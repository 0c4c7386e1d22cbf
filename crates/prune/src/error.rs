//! The one error type of lathe-prune.

/// Errors from validating shapes, amounts, scores and masks.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum Error {
    #[error("amount {amount} is not a fraction in 0..=1")]
    BadFraction { amount: f64 },

    #[error("cannot prune {count} of {available} {what}")]
    PruneTooMany { what: &'static str, count: usize, available: usize },

    #[error("cannot keep {count} of {available} {what}")]
    KeepTooMany { what: &'static str, count: usize, available: usize },

    #[error("weights hold {found} values, but {rows} x {cols} needs {expected}")]
    ShapeMismatch { rows: usize, cols: usize, expected: usize, found: usize },

    #[error("a {rows} x {cols} matrix is too large to address")]
    TooLarge { rows: usize, cols: usize },

    #[error("{what} holds {found} values, but {expected} are needed")]
    LengthMismatch { what: &'static str, expected: usize, found: usize },

    #[error("{what} at index {index} is nan")]
    NotANumber { what: &'static str, index: usize },

    #[error("activation norm at index {index} is {value}: norms must be finite and not negative")]
    BadActivationNorm { index: usize, value: f32 },

    #[error("tensor {tensor}: {source}")]
    InTensor {
        tensor: usize,
        #[source]
        source: Box<Error>,
    },

    #[error("{name}: {source}")]
    InMatrix {
        name: &'static str,
        #[source]
        source: Box<Error>,
    },

    #[error("norm order {n} is not a positive number or infinity")]
    BadNorm { n: f64 },

    #[error("dim {dim} does not exist in a matrix: use 0 for rows or 1 for columns")]
    BadDim { dim: usize },

    #[error("cannot keep {n} of every {m} values: the group needs 1 <= m and n <= m")]
    BadPattern { n: usize, m: usize },

    #[error("{cols} columns is not a multiple of the group size {m}")]
    GroupMisfit { cols: usize, m: usize },

    #[error("hidden size {hidden} does not split into {n_heads} heads")]
    BadHeads { hidden: usize, n_heads: usize },

    #[error("{what} index {index} is out of range for {len} {what}s")]
    IndexOutOfRange { what: &'static str, index: usize, len: usize },
}

/// `Result` with lathe-prune's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The tensor an error from a multi-tensor function came from, if it says.
    pub fn tensor(&self) -> Option<usize> {
        match self {
            Error::InTensor { tensor, .. } => Some(*tensor),
            _ => None,
        }
    }

    /// Wraps `self` with the name of the matrix it came from.
    pub(crate) fn in_matrix(self, name: &'static str) -> Error {
        Error::InMatrix { name, source: Box::new(self) }
    }

    /// Wraps `self` with the position of the tensor it came from (for functions over many tensors).
    pub(crate) fn in_tensor(self, tensor: usize) -> Error {
        Error::InTensor { tensor, source: Box::new(self) }
    }
}
