//! N:M semi-structured sparsity: at most `n` nonzeros in every group of `m` consecutive columns.

use std::marker::PhantomData;
use std::ops::Range;

use crate::csr::{check_dense, density};
use crate::kernels::Kernels;
use crate::product::{self, RowSource, products};
use crate::rows::{ColumnIndex, NM_PADDING, NmLanes, NmRows, RowsView, SparseRows};
use crate::{Error, Result};

/// A `[rows, cols]` f32 matrix with at most `n` nonzeros in every group of `m` consecutive
/// columns of a row (2:4 is the common case), stored compressed.
///
/// Every group keeps exactly `n` slots: its nonzeros and, when it has fewer, explicit zeros at
/// its lowest free positions, all in increasing position. `values` holds the slots row by row
/// (`rows * cols / m * n` of them); `packed_indices` holds each slot's position in its group in
/// `log2(m)` bits (2 bits for 2:4), slot `i` of a row at bit `i * bits` of the row's bytes,
/// least significant bit first, every row padded to whole bytes. Padding slots are skipped by
/// the products and by [`nnz`](Self::nnz).
///
/// ```
/// use lathe_sparse::NmMatrix;
/// let w = [0.0, 3.0, 0.0, -1.0, /* row 1 */ 2.0, 0.0, 0.0, 0.0];
/// let nm = NmMatrix::from_dense(&w, 2, 4, 2, 4)?;
/// assert_eq!(nm.values(), [3.0, -1.0, 2.0, 0.0]);
/// // Positions 1 and 3 (0b11_01), then 0 and the padding at 1 (0b01_00).
/// assert_eq!(nm.packed_indices(), [0b1101, 0b0100]);
/// assert_eq!((nm.nnz(), nm.to_dense()), (3, w.to_vec()));
/// # Ok::<(), lathe_sparse::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct NmMatrix {
    rows: usize,
    cols: usize,
    n: usize,
    m: usize,
    values: Vec<f32>,
    packed_indices: Vec<u8>,
    nnz: usize,
    /// Per row, whether no slot is padding (the kernels' fast path).
    full_rows: Vec<bool>,
    /// 2:4 and 1:4: the rows eight side by side, for the SpMV kernel (see `NmLanes`).
    lanes: Option<Lanes>,
}

/// The owned data of an `NmLanes`, for every whole eight rows of the matrix.
#[derive(Debug, Clone, PartialEq)]
struct Lanes {
    values: Vec<f32>,
    controls: Vec<u8>,
    ready: Vec<bool>,
}

impl NmMatrix {
    /// Compresses a dense row-major `[rows, cols]` matrix whose every group of `m` columns holds
    /// at most `n` nonzeros. `m` must be a power of two from 2 to 128, `1 <= n <= m`, and `cols`
    /// a multiple of `m`. Zeros of both signs count as zero.
    ///
    /// # Errors
    /// [`Error::BadPattern`], [`Error::GroupMisfit`], [`Error::ShapeMismatch`],
    /// [`Error::TooLarge`], [`Error::NotANumber`], or [`Error::TooDense`] naming the first group
    /// with more than `n` nonzeros.
    pub fn from_dense(weights: &[f32], rows: usize, cols: usize, n: usize, m: usize) -> Result<Self> {
        if !(2..=128).contains(&m) || !m.is_power_of_two() || n == 0 || n > m {
            return Err(Error::BadPattern { n, m });
        }
        if !cols.is_multiple_of(m) {
            return Err(Error::GroupMisfit { cols, n, m });
        }
        check_dense(weights, rows, cols)?;
        let bits = m.trailing_zeros() as usize;
        let slots_per_row = cols / m * n;
        let row_bytes = (slots_per_row * bits).div_ceil(8);
        let mut values = Vec::with_capacity(rows * slots_per_row);
        // Zero bytes after the last row let the kernels read any position as a whole word.
        let mut packed_indices = vec![0u8; rows * row_bytes + NM_PADDING];
        let mut nnz = 0;
        let mut positions = Vec::with_capacity(n);
        let mut full_rows = vec![true; rows];
        for row in 0..rows {
            let packed = &mut packed_indices[row * row_bytes..][..row_bytes];
            for (group, weights) in weights[row * cols..][..cols].chunks_exact(m).enumerate() {
                let first = group * m;
                positions.clear();
                for (position, &weight) in weights.iter().enumerate() {
                    if weight.is_nan() {
                        return Err(Error::NotANumber { row, col: first + position });
                    }
                    if weight != 0.0 {
                        positions.push(position);
                    }
                }
                let found = positions.len();
                if found > n {
                    return Err(Error::TooDense { row, col: first, end: first + m, found, n, m });
                }
                nnz += found;
                full_rows[row] &= found == n;
                // Pad with the lowest free positions, then keep every slot in position order.
                let mut free = (0..m).filter(|position| weights[*position] == 0.0);
                while positions.len() < n {
                    positions.push(free.next().expect("a group with fewer than n nonzeros has a free position"));
                }
                positions.sort_unstable();
                for (slot_in_group, &position) in positions.iter().enumerate() {
                    let slot = group * n + slot_in_group;
                    values.push(weights[position]);
                    write_bits(packed, slot * bits, bits, position);
                }
            }
        }
        let mut matrix = NmMatrix { rows, cols, n, m, values, packed_indices, nnz, full_rows, lanes: None };
        if m == 4 && n <= 2 {
            matrix.lanes = Some(matrix.side_by_side());
        }
        Ok(matrix)
    }

    /// The rows eight side by side (see `NmLanes`); only called for `m == 4`, `n <= 2`.
    fn side_by_side(&self) -> Lanes {
        let (groups, panels) = (self.cols / 4, self.rows / 8);
        let mut lanes = Lanes {
            values: vec![0.0; panels * groups * self.n * 8],
            controls: vec![0; panels * groups * 8],
            ready: (0..panels).map(|panel| self.full_rows[8 * panel..][..8].iter().all(|&full| full)).collect(),
        };
        let (bits, per_row) = (self.index_bits(), self.slots_per_row());
        for row in 0..panels * 8 {
            let (panel, lane) = (row / 8, row % 8);
            let packed = &self.packed_indices[row * self.row_bytes()..][..self.row_bytes()];
            for slot in 0..per_row {
                let (group, in_group) = (slot / self.n, slot % self.n);
                let at = (panel * groups + group) * 8 + lane;
                lanes.values[((panel * groups + group) * self.n + in_group) * 8 + lane] =
                    self.values[row * per_row + slot];
                lanes.controls[at] |= (read_bits(packed, slot * bits, bits) as u8) << (2 * in_group);
            }
        }
        lanes
    }

    /// Output features (rows of `W`).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features (columns of `W`).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Slots per group.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Columns per group.
    pub fn m(&self) -> usize {
        self.m
    }

    /// Nonzeros (padding slots excluded).
    pub fn nnz(&self) -> usize {
        self.nnz
    }

    /// `nnz / (rows * cols)`, 0 for an empty shape.
    pub fn density(&self) -> f64 {
        density(self.nnz, self.rows, self.cols)
    }

    /// Every slot's value, row by row and group by group (padding slots are +0.0).
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// Bits per in-group position: `log2(m)`.
    pub fn index_bits(&self) -> usize {
        self.m.trailing_zeros() as usize
    }

    /// The in-group positions, packed as the [type docs](Self) say.
    pub fn packed_indices(&self) -> &[u8] {
        &self.packed_indices[..self.rows * self.row_bytes()]
    }

    /// The rows in `range` for the direct kernels, when the pattern has them (`n` a power of two,
    /// `m` up to 64).
    fn direct_rows(&self, range: Range<usize>) -> Option<NmRows<'_>> {
        let (per_row, row_bytes) = (self.slots_per_row(), self.row_bytes());
        let values = &self.values[range.start * per_row..range.end * per_row];
        let packed = &self.packed_indices[range.start * row_bytes..range.end * row_bytes + NM_PADDING];
        let rows =
            NmRows::new((range.len(), self.cols), (self.n, self.m), values, packed, &self.full_rows[range.clone()])?;
        match &self.lanes {
            // The lanes start on a whole eight rows.
            Some(lanes) if range.start.is_multiple_of(8) => {
                let groups = self.cols / self.m;
                let panels = range.start / 8..range.start / 8 + range.len() / 8;
                let per_panel = groups * self.n * 8;
                let lanes = NmLanes {
                    values: &lanes.values[panels.start * per_panel..panels.end * per_panel],
                    controls: &lanes.controls[panels.start * groups * 8..panels.end * groups * 8],
                    ready: &lanes.ready[panels],
                };
                Some(rows.with_lanes(lanes).unwrap_or(rows))
            }
            _ => Some(rows),
        }
    }

    /// Bytes of [`packed_indices`](Self::packed_indices) per row.
    fn row_bytes(&self) -> usize {
        (self.slots_per_row() * self.index_bits()).div_ceil(8)
    }

    fn slots_per_row(&self) -> usize {
        self.cols / self.m * self.n
    }

    /// `(column, value)` of every slot of `row`, in column order, padding included.
    fn slots(&self, row: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
        let (bits, per_row) = (self.index_bits(), self.slots_per_row());
        let packed = &self.packed_indices[row * self.row_bytes()..][..self.row_bytes()];
        self.values[row * per_row..][..per_row]
            .iter()
            .enumerate()
            .map(move |(slot, &value)| ((slot / self.n) * self.m + read_bits(packed, slot * bits, bits), value))
    }

    /// The dense row-major matrix: every nonzero in place, +0.0 elsewhere.
    pub fn to_dense(&self) -> Vec<f32> {
        let mut dense = vec![0.0; self.rows * self.cols];
        for row in 0..self.rows {
            for (col, value) in self.slots(row) {
                if value != 0.0 {
                    dense[row * self.cols + col] = value;
                }
            }
        }
        dense
    }

    #[track_caller]
    fn source_multiply(&self, kernels: &Kernels, x: &[f32], n_tokens: usize, bias: Option<&[f32]>, y: &mut [f32]) {
        if let Some(kernel) = kernels.spmm_lanes
            && (2..=LANES_MAX_TOKENS).contains(&n_tokens)
            && self.direct_rows(0..self.rows).is_some_and(|rows| rows.all_in_lanes())
        {
            // Every chunk `multiply_lanes` asks for starts on a multiple of 8, where the lanes do.
            let view = |range: Range<usize>| self.direct_rows(range).expect("a 2:4 or 1:4 view");
            product::multiply_lanes(kernel, view, (self.rows, self.cols, self.nnz), x, n_tokens, bias, y);
            return;
        }
        if self.cols <= u16::MAX_COLS {
            product::multiply(kernels, &Decoded::<u16>(self, PhantomData), x, n_tokens, bias, y);
        } else {
            product::multiply(kernels, &Decoded::<u32>(self, PhantomData), x, n_tokens, bias, y);
        }
    }
}

products!(NmMatrix);

/// Up to this many tokens a 2:4 or 1:4 product whose rows are all in lanes reads `x` directly
/// (see `LanesSpmmKernel`); beyond, the panel kernels, whose 32 tokens share each weight
/// broadcast, are as fast or faster. Against the dense GEMM on MiniLM's three shapes (one
/// thread, best of 7 interleaved runs, 2026-11-29): lanes 5.7 - 6.2x at 2 tokens, 2.6 - 2.8x at 8,
/// 1.8x at 16, 1.5 - 1.8x at 17 to 32 (panels 0.9 - 1.6x), 1.3 - 1.4x at 64 (panels alike), 1.21
/// - 1.28x at 128 (panels 1.27 - 1.31x).
const LANES_MAX_TOKENS: usize = 64;

/// Writes the low `bits` bits of `value` at bit `at` of `bytes`, least significant bit first.
fn write_bits(bytes: &mut [u8], at: usize, bits: usize, value: usize) {
    for bit in 0..bits {
        if value >> bit & 1 == 1 {
            bytes[(at + bit) / 8] |= 1 << ((at + bit) % 8);
        }
    }
}

/// The `bits`-bit field at bit `at` of `bytes`, least significant bit first (`bits <= 8`).
#[inline]
fn read_bits(bytes: &[u8], at: usize, bits: usize) -> usize {
    let low = usize::from(bytes[at / 8]);
    let high = bytes.get(at / 8 + 1).map_or(0, |&byte| usize::from(byte));
    ((low | high << 8) >> (at % 8)) & ((1 << bits) - 1)
}

/// An [`NmMatrix`] decoded chunk by chunk for the kernels, with index type `I`.
struct Decoded<'a, I>(&'a NmMatrix, PhantomData<I>);

impl<I: ColumnIndex> RowSource for Decoded<'_, I> {
    type Index = I;

    fn n_rows(&self) -> usize {
        self.0.rows
    }

    fn cols(&self) -> usize {
        self.0.cols
    }

    fn n_entries(&self) -> usize {
        self.0.nnz
    }

    fn spmv(
        &self,
        kernels: &Kernels,
        range: Range<usize>,
        scratch: &mut SparseRows<I>,
        x: &[f32],
        bias: Option<&[f32]>,
        y: &mut [f32],
    ) {
        match (kernels.spmv_nm, self.0.direct_rows(range.clone())) {
            (Some(kernel), Some(rows)) => kernel(rows, x, bias, y),
            _ => (I::spmv_kernel(kernels))(self.view(range, scratch), x, bias, y),
        }
    }

    fn spmm(
        &self,
        kernels: &Kernels,
        range: Range<usize>,
        scratch: &mut SparseRows<I>,
        panels: &[f32],
        n_tokens: usize,
        bias: Option<&[f32]>,
        tile: &mut [f32],
    ) {
        match (kernels.spmm_nm, self.0.direct_rows(range.clone())) {
            (Some(kernel), Some(rows)) => kernel(rows, panels, n_tokens, bias, tile),
            _ => (I::spmm_kernel(kernels))(self.view(range, scratch), panels, n_tokens, bias, tile),
        }
    }

    fn view<'a>(&'a self, range: Range<usize>, scratch: &'a mut SparseRows<I>) -> RowsView<'a, I> {
        let matrix = self.0;
        let (n, m, bits) = (matrix.n, matrix.m, matrix.index_bits());
        let (per_row, row_bytes) = (matrix.slots_per_row(), matrix.row_bytes());
        let n_rows = range.len();
        scratch.clear();
        scratch.reserve(n_rows, n_rows * per_row);
        for row in range {
            let packed = &matrix.packed_indices[row * row_bytes..][..row_bytes];
            let values = &matrix.values[row * per_row..][..per_row];
            let slots = values
                .iter()
                .enumerate()
                .map(|(slot, &value)| ((slot / n) * m + read_bits(packed, slot * bits, bits), value));
            scratch.push_row(per_row, slots.filter(|&(_, value)| value != 0.0));
        }
        scratch.view(0..n_rows)
    }
}
