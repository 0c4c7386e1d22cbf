//! The one error type of lathe-sparse.

/// Errors from building or importing sparse matrices.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum Error {
    #[error("{what} holds {found} values, but a {rows} x {cols} matrix needs {expected}")]
    ShapeMismatch { what: &'static str, rows: usize, cols: usize, expected: usize, found: usize },

    #[error("a {rows} x {cols} matrix is too large to address")]
    TooLarge { rows: usize, cols: usize },

    #[error("weight at row {row}, column {col} is NaN")]
    NotANumber { row: usize, col: usize },

    #[error("{n}:{m} is not a supported pattern: it needs 1 <= n <= m with m a power of two from 2 to 128")]
    BadPattern { n: usize, m: usize },

    #[error("{cols} columns is not a multiple of the {n}:{m} group size {m}")]
    GroupMisfit { cols: usize, n: usize, m: usize },

    #[error("row {row}, columns {col}..{end} hold {found} nonzeros, more than {n}:{m} allows")]
    TooDense { row: usize, col: usize, end: usize, found: usize, n: usize, m: usize },

    #[error("{what} holds {found} values, but {expected} are needed")]
    LengthMismatch { what: &'static str, expected: usize, found: usize },

    #[error("bitmask row {row} sets padding bits beyond its {cols} columns")]
    BitmaskPadding { row: usize, cols: usize },

    #[error("row_offsets[{row}] is {found}, but the bitmask puts row {row} at offset {expected}")]
    RowOffset { row: usize, expected: usize, found: i64 },
}

/// `Result` with lathe-sparse's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
