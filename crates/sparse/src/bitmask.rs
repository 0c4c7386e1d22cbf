//! The row bitmask format of compressed-tensors' legacy `sparse-bitmask` compressor.

use std::marker::PhantomData;
use std::ops::Range;

use crate::csr::{check_dense, density};
use crate::kernels::Kernels;
use crate::product::{self, RowSource, products};
use crate::rows::{ColumnIndex, RowsView, SparseRows};
use crate::{Error, Result};

/// A `[rows, cols]` f32 matrix in compressed-tensors' `sparse-bitmask` layout, for importing
/// checkpoints written by its legacy compressor (`BitmaskCompressor`):
///
/// - `compressed`: the nonzeros in row-major order (`tensor[tensor != 0]`);
/// - `bitmask`: `[rows, ceil(cols / 8)]` bytes, `numpy.packbits(mask, axis=-1,
///   bitorder="little")`: column `c` of a row is bit `c % 8` of byte `c / 8`, least significant
///   bit first, each row padded to a whole byte with zero bits;
/// - `row_offsets`: `[rows]`, the offset of each row's first value in `compressed` (int64 in
///   the files);
/// - `shape`: `[rows, cols]`.
///
/// ```
/// use lathe_sparse::BitmaskMatrix;
/// let mut w = vec![0.0f32; 2 * 10];
/// (w[0], w[2], w[9]) = (2.0, 5.0, 1.0); // row 0; row 1 stays empty
/// let matrix = BitmaskMatrix::from_dense(&w, 2, 10)?;
/// assert_eq!(matrix.compressed(), [2.0, 5.0, 1.0]);
/// assert_eq!(matrix.bitmask(), [0b101, 0b10, 0, 0]);
/// assert_eq!(matrix.row_offsets(), [0, 3]);
/// let imported =
///     BitmaskMatrix::from_compressed_tensors([2, 10], vec![2.0, 5.0, 1.0], vec![0b101, 0b10, 0, 0], Some(&[0, 3]))?;
/// assert_eq!(imported, matrix);
/// assert_eq!(imported.to_dense(), w);
/// # Ok::<(), lathe_sparse::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BitmaskMatrix {
    rows: usize,
    cols: usize,
    compressed: Vec<f32>,
    bitmask: Vec<u8>,
    row_offsets: Vec<usize>,
}

impl BitmaskMatrix {
    /// Compresses a dense row-major `[rows, cols]` matrix, as compressed-tensors'
    /// `bitmask_compress` does (zeros of both signs are dropped).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `weights.len() != rows * cols`, [`Error::TooLarge`] if the
    /// shape overflows, [`Error::NotANumber`] for a NaN weight.
    pub fn from_dense(weights: &[f32], rows: usize, cols: usize) -> Result<Self> {
        check_dense(weights, rows, cols)?;
        let row_bytes = cols.div_ceil(8);
        let mut bitmask = vec![0u8; rows * row_bytes];
        let mut compressed = Vec::new();
        let mut row_offsets = Vec::with_capacity(rows);
        for row in 0..rows {
            row_offsets.push(compressed.len());
            let mask = &mut bitmask[row * row_bytes..][..row_bytes];
            for (col, &weight) in weights[row * cols..][..cols].iter().enumerate() {
                if weight.is_nan() {
                    return Err(Error::NotANumber { row, col });
                }
                if weight != 0.0 {
                    mask[col / 8] |= 1 << (col % 8);
                    compressed.push(weight);
                }
            }
        }
        Ok(BitmaskMatrix { rows, cols, compressed, bitmask, row_offsets })
    }

    /// Imports the tensors of one compressed weight: `shape` (`[rows, cols]`), `compressed`,
    /// `bitmask` and, when the file has it, `row_offsets`, which must then agree with the
    /// bitmask. Every value the bitmask points to must not be NaN; stored zeros are accepted and
    /// contribute nothing.
    ///
    /// # Errors
    /// [`Error::TooLarge`], [`Error::LengthMismatch`] (bitmask bytes, value count, row_offsets
    /// length), [`Error::BitmaskPadding`] when a row sets bits past its last column,
    /// [`Error::RowOffset`] naming the first row whose offset disagrees, [`Error::NotANumber`].
    pub fn from_compressed_tensors(
        shape: [usize; 2],
        compressed: Vec<f32>,
        bitmask: Vec<u8>,
        row_offsets: Option<&[i64]>,
    ) -> Result<Self> {
        let [rows, cols] = shape;
        if rows.checked_mul(cols).is_none() || cols > u32::MAX as usize + 1 {
            return Err(Error::TooLarge { rows, cols });
        }
        let row_bytes = cols.div_ceil(8);
        let expected = rows.checked_mul(row_bytes).ok_or(Error::TooLarge { rows, cols })?;
        if bitmask.len() != expected {
            return Err(Error::LengthMismatch { what: "bitmask", expected, found: bitmask.len() });
        }
        if let Some(offsets) = row_offsets
            && offsets.len() != rows
        {
            return Err(Error::LengthMismatch { what: "row_offsets", expected: rows, found: offsets.len() });
        }
        let padding_mask = if cols.is_multiple_of(8) { 0 } else { 0xffu8 << (cols % 8) };
        let mut offsets = Vec::with_capacity(rows);
        let mut count = 0usize;
        for row in 0..rows {
            let mask = &bitmask[row * row_bytes..][..row_bytes];
            if mask.last().is_some_and(|&last| last & padding_mask != 0) {
                return Err(Error::BitmaskPadding { row, cols });
            }
            offsets.push(count);
            count += mask.iter().map(|byte| byte.count_ones() as usize).sum::<usize>();
        }
        if compressed.len() != count {
            return Err(Error::LengthMismatch { what: "compressed values", expected: count, found: compressed.len() });
        }
        if let Some(found) = row_offsets {
            for (row, (&expected, &found)) in offsets.iter().zip(found).enumerate() {
                if i64::try_from(expected).ok() != Some(found) {
                    return Err(Error::RowOffset { row, expected, found });
                }
            }
        }
        let matrix = BitmaskMatrix { rows, cols, compressed, bitmask, row_offsets: offsets };
        for row in 0..rows {
            for (col, value) in matrix.entries(row) {
                if value.is_nan() {
                    return Err(Error::NotANumber { row, col });
                }
            }
        }
        Ok(matrix)
    }

    /// Output features (rows of `W`).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features (columns of `W`).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Stored values (the set bits of the bitmask).
    pub fn nnz(&self) -> usize {
        self.compressed.len()
    }

    /// `nnz / (rows * cols)`, 0 for an empty shape.
    pub fn density(&self) -> f64 {
        density(self.nnz(), self.rows, self.cols)
    }

    /// The stored values, row-major: compressed-tensors' `compressed`.
    pub fn compressed(&self) -> &[f32] {
        &self.compressed
    }

    /// `[rows, ceil(cols / 8)]` mask bytes, least significant bit first: compressed-tensors'
    /// `bitmask`.
    pub fn bitmask(&self) -> &[u8] {
        &self.bitmask
    }

    /// `[rows]` offsets of each row's first value: compressed-tensors' `row_offsets`.
    pub fn row_offsets(&self) -> &[usize] {
        &self.row_offsets
    }

    /// `(column, value)` of every stored entry of `row`, in column order.
    fn entries(&self, row: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
        let row_bytes = self.cols.div_ceil(8);
        let mask = &self.bitmask[row * row_bytes..][..row_bytes];
        let columns = mask.iter().enumerate().flat_map(|(byte_idx, &byte)| {
            (0..8).filter(move |bit| byte >> bit & 1 == 1).map(move |bit| byte_idx * 8 + bit)
        });
        columns.zip(&self.compressed[self.row_offsets[row]..]).map(|(col, &value)| (col, value))
    }

    /// The dense row-major matrix: every stored value in place, +0.0 elsewhere.
    pub fn to_dense(&self) -> Vec<f32> {
        let mut dense = vec![0.0; self.rows * self.cols];
        for row in 0..self.rows {
            for (col, value) in self.entries(row) {
                dense[row * self.cols + col] = value;
            }
        }
        dense
    }

    #[track_caller]
    fn source_multiply(&self, kernels: &Kernels, x: &[f32], n_tokens: usize, bias: Option<&[f32]>, y: &mut [f32]) {
        if self.cols <= u16::MAX_COLS {
            product::multiply(kernels, &Decoded::<u16>(self, PhantomData), x, n_tokens, bias, y);
        } else {
            product::multiply(kernels, &Decoded::<u32>(self, PhantomData), x, n_tokens, bias, y);
        }
    }
}

products!(BitmaskMatrix);

/// A [`BitmaskMatrix`] decoded chunk by chunk for the kernels, with index type `I`.
struct Decoded<'a, I>(&'a BitmaskMatrix, PhantomData<I>);

impl<I: ColumnIndex> RowSource for Decoded<'_, I> {
    type Index = I;

    fn n_rows(&self) -> usize {
        self.0.rows
    }

    fn cols(&self) -> usize {
        self.0.cols
    }

    fn n_entries(&self) -> usize {
        self.0.nnz()
    }

    fn view<'a>(&'a self, range: Range<usize>, scratch: &'a mut SparseRows<I>) -> RowsView<'a, I> {
        let matrix = self.0;
        let row_bytes = matrix.cols.div_ceil(8);
        let n_rows = range.len();
        scratch.clear();
        let end = matrix.row_offsets.get(range.end).copied().unwrap_or(matrix.compressed.len());
        let first = matrix.row_offsets.get(range.start).copied().unwrap_or(end);
        scratch.reserve(n_rows, end - first);
        for row in range {
            let mask = &matrix.bitmask[row * row_bytes..][..row_bytes];
            let first = matrix.row_offsets[row];
            let count = mask.iter().map(|byte| byte.count_ones() as usize).sum();
            let values = &matrix.compressed[first..first + count];
            scratch.push_row_with(count, |out| {
                let mut next = 0;
                for (word_idx, bytes) in mask.chunks(8).enumerate() {
                    let mut word_bytes = [0u8; 8];
                    word_bytes[..bytes.len()].copy_from_slice(bytes);
                    let mut word = u64::from_le_bytes(word_bytes);
                    while word != 0 {
                        let col = word_idx * 64 + word.trailing_zeros() as usize;
                        word &= word - 1;
                        let value = values[next];
                        next += 1;
                        if value != 0.0 {
                            out.put(col, value);
                        }
                    }
                }
            });
        }
        scratch.view(0..n_rows)
    }
}
