//! Compressed sparse rows: values, column indices (`u16` when every column fits), row offsets.

use crate::kernels::Kernels;
use crate::product::{self, products};
use crate::rows::{ColumnIndex, SparseRows};
use crate::{Error, Result};

/// A `[rows, cols]` f32 matrix in compressed sparse rows, for `Y = X W^T` products.
///
/// Row `r` holds the entries `row_offsets[r]..row_offsets[r + 1]` of the column indices and
/// values, sorted by column. Indices are `u16` when `cols <= 65536` (6 bytes per nonzero with
/// the value) and `u32` above.
///
/// ```
/// use lathe_sparse::CsrMatrix;
/// let w = [0.0, 2.0, 0.0, /* row 1 */ 1.0, 0.0, -1.0];
/// let csr = CsrMatrix::from_dense(&w, 2, 3)?;
/// assert_eq!((csr.nnz(), csr.row_offsets()), (3, &[0, 1, 3][..]));
/// let x = [1.0, 2.0, 3.0, /* token 1 */ 0.5, 0.5, 0.5];
/// let mut y = [0.0; 4];
/// csr.spmm(&x, 2, &mut y);
/// assert_eq!(y, [4.0, -2.0, 1.0, 0.0]);
/// assert_eq!(csr.to_dense(), w);
/// # Ok::<(), lathe_sparse::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct CsrMatrix {
    rows: usize,
    row_offsets: Vec<usize>,
    entries: Entries,
}

#[derive(Debug, Clone, PartialEq)]
enum Entries {
    U16(SparseRows<u16>),
    U32(SparseRows<u32>),
}

/// A [`CsrMatrix`]'s column indices, at their stored width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnIndices<'a> {
    /// Matrices up to 65536 columns.
    U16(&'a [u16]),
    /// Wider matrices.
    U32(&'a [u32]),
}

/// Checks `weights.len() == rows * cols` and that the shape is addressable.
pub(crate) fn check_dense(weights: &[f32], rows: usize, cols: usize) -> Result<()> {
    let expected = rows.checked_mul(cols).ok_or(Error::TooLarge { rows, cols })?;
    if cols > u32::MAX as usize + 1 {
        return Err(Error::TooLarge { rows, cols });
    }
    if weights.len() != expected {
        return Err(Error::ShapeMismatch { what: "weights", rows, cols, expected, found: weights.len() });
    }
    Ok(())
}

/// The nonzeros of a dense row-major matrix as [`SparseRows`], plus the row offsets; NaN is an
/// error naming its place.
fn compress<I: ColumnIndex>(weights: &[f32], rows: usize, cols: usize) -> Result<(SparseRows<I>, Vec<usize>)> {
    let mut entries = SparseRows::new(cols);
    let nnz = weights.iter().filter(|&&weight| weight != 0.0).count();
    entries.reserve(rows, nnz);
    let mut row_offsets = Vec::with_capacity(rows + 1);
    row_offsets.push(0);
    for (row, weights) in weights.chunks_exact(cols.max(1)).take(rows).enumerate() {
        if let Some(col) = weights.iter().position(|weight| weight.is_nan()) {
            return Err(Error::NotANumber { row, col });
        }
        let nonzeros = weights.iter().enumerate().filter(|&(_, &weight)| weight != 0.0);
        entries.push_row(cols, nonzeros.map(|(col, &weight)| (col, weight)));
        row_offsets.push(entries.len());
    }
    // Zero columns: `chunks_exact` saw no weights, and every row is empty.
    for _ in row_offsets.len() - 1..rows {
        entries.push_row(0, []);
        row_offsets.push(entries.len());
    }
    Ok((entries, row_offsets))
}

impl CsrMatrix {
    /// Compresses a dense row-major `[rows, cols]` matrix, dropping exact zeros (of both signs).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `weights.len() != rows * cols`, [`Error::TooLarge`] if the
    /// shape overflows, [`Error::NotANumber`] for a NaN weight.
    pub fn from_dense(weights: &[f32], rows: usize, cols: usize) -> Result<Self> {
        check_dense(weights, rows, cols)?;
        let (entries, row_offsets) = if cols <= u16::MAX_COLS {
            let (entries, offsets) = compress::<u16>(weights, rows, cols)?;
            (Entries::U16(entries), offsets)
        } else {
            let (entries, offsets) = compress::<u32>(weights, rows, cols)?;
            (Entries::U32(entries), offsets)
        };
        Ok(CsrMatrix { rows, row_offsets, entries })
    }

    /// Output features (rows of `W`).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features (columns of `W`).
    pub fn cols(&self) -> usize {
        match &self.entries {
            Entries::U16(entries) => entries.cols(),
            Entries::U32(entries) => entries.cols(),
        }
    }

    /// Stored nonzeros.
    pub fn nnz(&self) -> usize {
        self.values().len()
    }

    /// `nnz / (rows * cols)`, 0 for an empty shape.
    pub fn density(&self) -> f64 {
        density(self.nnz(), self.rows, self.cols())
    }

    /// `rows + 1` offsets: row `r` is entries `row_offsets[r]..row_offsets[r + 1]`.
    pub fn row_offsets(&self) -> &[usize] {
        &self.row_offsets
    }

    /// The column of every entry, row by row.
    pub fn col_indices(&self) -> ColumnIndices<'_> {
        match &self.entries {
            Entries::U16(entries) => ColumnIndices::U16(entries.indices()),
            Entries::U32(entries) => ColumnIndices::U32(entries.indices()),
        }
    }

    /// The value of every entry, row by row.
    pub fn values(&self) -> &[f32] {
        match &self.entries {
            Entries::U16(entries) => entries.values(),
            Entries::U32(entries) => entries.values(),
        }
    }

    /// The dense row-major matrix: every stored value in place, +0.0 elsewhere.
    pub fn to_dense(&self) -> Vec<f32> {
        let cols = self.cols();
        let mut dense = vec![0.0; self.rows * cols];
        for row in 0..self.rows {
            let range = self.row_offsets[row]..self.row_offsets[row + 1];
            let values = &self.values()[range.clone()];
            match self.col_indices() {
                ColumnIndices::U16(indices) => {
                    for (&col, &value) in indices[range].iter().zip(values) {
                        dense[row * cols + usize::from(col)] = value;
                    }
                }
                ColumnIndices::U32(indices) => {
                    for (&col, &value) in indices[range].iter().zip(values) {
                        dense[row * cols + col as usize] = value;
                    }
                }
            }
        }
        dense
    }

    #[track_caller]
    fn source_multiply(&self, kernels: &Kernels, x: &[f32], n_tokens: usize, bias: Option<&[f32]>, y: &mut [f32]) {
        match &self.entries {
            Entries::U16(entries) => product::multiply(kernels, entries, x, n_tokens, bias, y),
            Entries::U32(entries) => product::multiply(kernels, entries, x, n_tokens, bias, y),
        }
    }
}

products!(CsrMatrix);

/// `nnz / (rows * cols)` in f64, 0 for an empty shape.
pub(crate) fn density(nnz: usize, rows: usize, cols: usize) -> f64 {
    let size = rows as f64 * cols as f64;
    if size == 0.0 { 0.0 } else { nnz as f64 / size }
}
