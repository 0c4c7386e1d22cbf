//! The decoded form every kernel reads: rows of `(column, value)` entries, sorted by column, cut
//! into column blocks.
//!
//! [`SparseRows`] owns the entries and is the only way to make a [`RowsView`]; its builder checks
//! every column against the matrix width as it is pushed, and bounds only ever grow. The SIMD
//! kernels rely on that invariant (every index `< cols`, every bound within the entries) to skip
//! bounds checks, so its fields stay private to this module.

use std::fmt::Debug;
use std::ops::Range;

use crate::kernels::{Kernels, SpmmKernel, SpmvKernel};

/// Columns per block of a [`SparseRows`]: the CSR SpMM kernel's column tile. Blocks do not enter
/// the [sum order](crate#sum-order): a row's two running sums carry over from one block to the
/// next, through memory, which at 90 % sparsity costs about as much as the L1 misses of a
/// 384-column slice of a 32-token panel (48 KiB) save.
pub(crate) const COL_BLOCK: usize = 384;

/// Columns per block of the direct N:M kernels: one 32-token panel's slice of 192 columns x 32
/// tokens x 4 bytes is 24 KiB, which leaves room in this CPU's 32 KiB L1 data cache for the
/// weights and the tile (a 2:4 row has ten times the entries of a 90 %-sparse one, so the carry
/// between blocks is cheap next to its L1 hits). A multiple of every group size the direct kernels
/// take (up to 64).
pub(crate) const NM_COL_BLOCK: usize = 192;

/// A column index as stored: `u16` while every column fits (`cols <= 65536`), else `u32`.
pub(crate) trait ColumnIndex: Copy + Send + Sync + Debug + Default + 'static {
    /// The widest matrix this type indexes.
    const MAX_COLS: usize;
    /// `col` as stored; only called with `col < MAX_COLS`.
    fn from_col(col: usize) -> Self;
    /// The stored column.
    fn col(self) -> usize;
    /// This type's SpMV kernel in `kernels`.
    fn spmv_kernel(kernels: &Kernels) -> SpmvKernel<Self>;
    /// This type's SpMM kernel in `kernels`.
    fn spmm_kernel(kernels: &Kernels) -> SpmmKernel<Self>;
}

impl ColumnIndex for u16 {
    const MAX_COLS: usize = 1 << 16;

    fn from_col(col: usize) -> Self {
        col as u16
    }

    #[inline(always)]
    fn col(self) -> usize {
        usize::from(self)
    }

    fn spmv_kernel(kernels: &Kernels) -> SpmvKernel<Self> {
        kernels.spmv_u16
    }

    fn spmm_kernel(kernels: &Kernels) -> SpmmKernel<Self> {
        kernels.spmm_u16
    }
}

impl ColumnIndex for u32 {
    const MAX_COLS: usize = 1 << 32;

    fn from_col(col: usize) -> Self {
        col as u32
    }

    #[inline(always)]
    fn col(self) -> usize {
        self as usize
    }

    fn spmv_kernel(kernels: &Kernels) -> SpmvKernel<Self> {
        kernels.spmv_u32
    }

    fn spmm_kernel(kernels: &Kernels) -> SpmmKernel<Self> {
        kernels.spmm_u32
    }
}

/// Rows of entries sorted by column, with the bound of every column block of every row.
///
/// Invariants (upheld by the builder, relied on by the SIMD kernels): every stored index is
/// `< cols`; `bounds` holds `n_blocks + 1` non-decreasing offsets per finished row, the first
/// being the row's start and the last its end, all `<= indices.len() == values.len()`; the
/// entries of block `b` have columns in `b * COL_BLOCK .. (b + 1) * COL_BLOCK`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SparseRows<I> {
    cols: usize,
    n_blocks: usize,
    n_rows: usize,
    bounds: Vec<usize>,
    indices: Vec<I>,
    values: Vec<f32>,
}

impl<I: ColumnIndex> SparseRows<I> {
    /// No rows yet, for a matrix `cols` wide.
    ///
    /// # Panics
    /// If `I` cannot index `cols` columns.
    pub(crate) fn new(cols: usize) -> Self {
        assert!(cols <= I::MAX_COLS, "{cols} columns do not fit the index type");
        SparseRows {
            cols,
            n_blocks: cols.div_ceil(COL_BLOCK).max(1),
            n_rows: 0,
            bounds: Vec::new(),
            indices: Vec::new(),
            values: Vec::new(),
        }
    }

    /// Forgets every row, keeping the allocations and the width.
    pub(crate) fn clear(&mut self) {
        self.n_rows = 0;
        self.bounds.clear();
        self.indices.clear();
        self.values.clear();
    }

    /// Reserves room for `rows` more rows holding `entries` entries in all.
    pub(crate) fn reserve(&mut self, rows: usize, entries: usize) {
        self.bounds.reserve(rows * (self.n_blocks + 1));
        self.indices.reserve(entries);
        self.values.reserve(entries);
    }

    /// Appends a row of at most `max_len` entries, `(column, value)` in increasing column order.
    ///
    /// # Panics
    /// As [`push_row_with`](Self::push_row_with).
    pub(crate) fn push_row(&mut self, max_len: usize, entries: impl IntoIterator<Item = (usize, f32)>) {
        self.push_row_with(max_len, |row| {
            for (col, value) in entries {
                row.put(col, value);
            }
        });
    }

    /// Appends a row of at most `max_len` entries, which `fill` writes through a [`RowWriter`]
    /// in increasing column order.
    ///
    /// The writer fills slots reserved up front, so a decoder's loop keeps no vector length in
    /// memory.
    ///
    /// # Panics
    /// If `fill` writes more than `max_len` entries, or a column that is not below `cols` or not
    /// greater than the one before it: the kernels' soundness rests on these checks.
    pub(crate) fn push_row_with(&mut self, max_len: usize, fill: impl FnOnce(&mut RowWriter<'_, I>)) {
        let start = self.indices.len();
        self.indices.resize(start + max_len, I::default());
        self.values.resize(start + max_len, 0.0);
        self.bounds.push(start);
        let bounds_len = self.bounds.len();
        let mut writer = RowWriter {
            cols: self.cols,
            start,
            indices: &mut self.indices[start..],
            values: &mut self.values[start..],
            bounds: &mut self.bounds,
            len: 0,
            block_end: COL_BLOCK,
            next_col: 0,
        };
        fill(&mut writer);
        let len = writer.len;
        self.indices.truncate(start + len);
        self.values.truncate(start + len);
        for _ in self.bounds.len() - bounds_len..self.n_blocks {
            self.bounds.push(start + len);
        }
        self.n_rows += 1;
    }

    pub(crate) fn n_rows(&self) -> usize {
        self.n_rows
    }

    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    /// Entries in all rows.
    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }

    pub(crate) fn indices(&self) -> &[I] {
        &self.indices
    }

    pub(crate) fn values(&self) -> &[f32] {
        &self.values
    }

    /// The finished rows in `range`.
    ///
    /// # Panics
    /// If `range` goes beyond the finished rows.
    pub(crate) fn view(&self, range: Range<usize>) -> RowsView<'_, I> {
        assert!(range.start <= range.end && range.end <= self.n_rows, "rows {range:?} of {}", self.n_rows);
        let stride = self.n_blocks + 1;
        RowsView {
            cols: self.cols,
            n_blocks: self.n_blocks,
            n_rows: range.len(),
            bounds: &self.bounds[range.start * stride..range.end * stride],
            indices: &self.indices,
            values: &self.values,
        }
    }
}

/// Writes one row of a [`SparseRows`] (see [`SparseRows::push_row_with`]).
#[derive(Debug)]
pub(crate) struct RowWriter<'a, I> {
    cols: usize,
    start: usize,
    indices: &'a mut [I],
    values: &'a mut [f32],
    bounds: &'a mut Vec<usize>,
    len: usize,
    /// The first column past the current block, and the least column the row may take next.
    block_end: usize,
    next_col: usize,
}

impl<I: ColumnIndex> RowWriter<'_, I> {
    /// Appends `(col, value)`.
    ///
    /// # Panics
    /// If `col` is not below `cols` or not greater than the row's previous column, or the row is
    /// full.
    #[inline]
    pub(crate) fn put(&mut self, col: usize, value: f32) {
        assert!(col >= self.next_col && col < self.cols, "column {col} out of order or beyond {}", self.cols);
        while col >= self.block_end {
            self.block_end += COL_BLOCK;
            self.bounds.push(self.start + self.len);
        }
        self.indices[self.len] = I::from_col(col);
        self.values[self.len] = value;
        self.len += 1;
        self.next_col = col + 1;
    }
}

/// Borrowed rows of a [`SparseRows`], with its invariants: what the kernels take.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowsView<'a, I> {
    cols: usize,
    n_blocks: usize,
    n_rows: usize,
    bounds: &'a [usize],
    indices: &'a [I],
    values: &'a [f32],
}

impl<'a, I: ColumnIndex> RowsView<'a, I> {
    pub(crate) fn n_rows(&self) -> usize {
        self.n_rows
    }

    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    pub(crate) fn n_blocks(&self) -> usize {
        self.n_blocks
    }

    /// Every stored index, `< cols` (the invariant); rows address it through their bounds.
    pub(crate) fn indices(&self) -> &'a [I] {
        self.indices
    }

    /// Every stored value, as long as [`indices`](Self::indices).
    pub(crate) fn values(&self) -> &'a [f32] {
        self.values
    }

    /// `start..end` of the entries of row `row` in column block `block`, with
    /// `start <= end <= values().len()`.
    #[inline(always)]
    pub(crate) fn segment(&self, row: usize, block: usize) -> (usize, usize) {
        let at = row * (self.n_blocks + 1) + block;
        let pair = &self.bounds[at..at + 2];
        (pair[0], pair[1])
    }

    /// `start..end` of all the entries of row `row`, with `start <= end <= values().len()`.
    #[inline(always)]
    pub(crate) fn row_range(&self, row: usize) -> (usize, usize) {
        let at = row * (self.n_blocks + 1);
        (self.bounds[at], self.bounds[at + self.n_blocks])
    }

    /// The `(column, value)` entries of row `row`, in column order.
    pub(crate) fn row_entries(&self, row: usize) -> impl Iterator<Item = (usize, f32)> + 'a {
        let (start, end) = self.row_range(row);
        self.indices[start..end].iter().zip(&self.values[start..end]).map(|(index, &value)| (index.col(), value))
    }
}

/// Rows of an [`NmMatrix`](crate::NmMatrix) as its direct kernels read them: `n` slots per group
/// of `m` columns, each a value (+0.0 for padding) and a `log2(m)`-bit position.
///
/// Invariants (checked by [`NmRows::new`], relied on by the SIMD kernels): `m` is a power of two
/// up to 64 (so it divides [`NM_COL_BLOCK`] and every position is `< m`), `n` a power of two up to
/// `m`, `cols` a multiple of `m`; `values` holds `per_row` slots per row and `packed` holds
/// `row_bytes` bytes per row plus 8 readable bytes after the last row, so that any slot's
/// position can be read as a whole 8-byte word.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NmRows<'a> {
    n_rows: usize,
    cols: usize,
    n: usize,
    m: usize,
    values: &'a [f32],
    packed: &'a [u8],
    /// Per row, whether every slot is nonzero (no padding): such rows take a loop without
    /// checks. A hint for speed, not for soundness.
    full: &'a [bool],
    lanes: Option<NmLanes<'a>>,
}

/// The rows of a 2:4 or 1:4 matrix again, eight side by side, for the SpMV kernel that keeps a
/// row in each lane of a vector (see [`NmRows::with_lanes`]).
///
/// For the `k`-th eight rows of the view and column group `g`: `values[((k * groups + g) * n +
/// s) * 8 + i]` is slot `s` of row `8 * k + i`, and `controls[(k * groups + g) * 8 + i]` holds its
/// positions, slot `s` in bits `2 * s ..`. `ready[k]` says whether all eight rows are full (no
/// padding slot), the only ones the lanes may serve: then a row's `j`-th nonzero is its `j`-th
/// slot, as the sum order needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NmLanes<'a> {
    pub(crate) values: &'a [f32],
    pub(crate) controls: &'a [u8],
    pub(crate) ready: &'a [bool],
}

/// Bytes of readable padding after the packed positions of an N:M matrix.
pub(crate) const NM_PADDING: usize = 8;

impl<'a> NmRows<'a> {
    /// `None` unless the pattern and lengths satisfy the invariants above.
    pub(crate) fn new(
        (n_rows, cols): (usize, usize),
        (n, m): (usize, usize),
        values: &'a [f32],
        packed: &'a [u8],
        full: &'a [bool],
    ) -> Option<Self> {
        let pattern_ok = m.is_power_of_two() && (2..=64).contains(&m) && n.is_power_of_two() && n <= m;
        if !pattern_ok || !cols.is_multiple_of(m) {
            return None;
        }
        let rows = NmRows { n_rows, cols, n, m, values, packed, full, lanes: None };
        let lengths_ok = values.len() == n_rows * rows.per_row()
            && packed.len() >= n_rows * rows.row_bytes() + NM_PADDING
            && full.len() == n_rows;
        lengths_ok.then_some(rows)
    }

    /// These rows with their `lanes`, or `None` unless the pattern is 2:4 or 1:4 and the lanes
    /// cover every whole eight rows of the view (lengths as [`NmLanes`] says).
    pub(crate) fn with_lanes(self, lanes: NmLanes<'a>) -> Option<Self> {
        let panels = self.n_rows / 8;
        let groups = self.cols / self.m;
        let ok = self.m == 4
            && self.n <= 2
            && lanes.ready.len() == panels
            && lanes.values.len() == panels * groups * self.n * 8
            && lanes.controls.len() == panels * groups * 8;
        ok.then_some(NmRows { lanes: Some(lanes), ..self })
    }

    /// The lanes, when [`with_lanes`](Self::with_lanes) gave them.
    pub(crate) fn lanes(&self) -> Option<NmLanes<'a>> {
        self.lanes
    }

    /// Whether every row is in ready lanes (so their number is a multiple of 8): what the
    /// kernels that read `x` straight through the lanes need.
    pub(crate) fn all_in_lanes(&self) -> bool {
        self.lanes.is_some_and(|lanes| self.n_rows.is_multiple_of(8) && lanes.ready.iter().all(|&ready| ready))
    }

    /// Column groups per row.
    pub(crate) fn groups(&self) -> usize {
        self.cols / self.m
    }

    /// Slots per group.
    pub(crate) fn n(&self) -> usize {
        self.n
    }

    /// Whether every slot of `row` holds a nonzero.
    pub(crate) fn is_full(&self, row: usize) -> bool {
        self.full[row]
    }

    pub(crate) fn n_rows(&self) -> usize {
        self.n_rows
    }

    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    pub(crate) fn n_blocks(&self) -> usize {
        self.cols.div_ceil(NM_COL_BLOCK).max(1)
    }

    /// `log2(n)`: slot `s` is in group `s >> group_shift`.
    pub(crate) fn group_shift(&self) -> u32 {
        self.n.trailing_zeros()
    }

    /// Bits per position, `log2(m)`.
    pub(crate) fn bits(&self) -> usize {
        self.m.trailing_zeros() as usize
    }

    /// Slots per row.
    pub(crate) fn per_row(&self) -> usize {
        self.cols / self.m * self.n
    }

    /// Bytes of positions per row.
    pub(crate) fn row_bytes(&self) -> usize {
        (self.per_row() * self.bits()).div_ceil(8)
    }

    /// The slots of column block `block` of every row: `first..last`.
    pub(crate) fn block_slots(&self, block: usize) -> (usize, usize) {
        let slots_per_block = NM_COL_BLOCK / self.m * self.n;
        (block * slots_per_block, ((block + 1) * slots_per_block).min(self.per_row()))
    }

    /// Every slot value, `per_row` per row.
    pub(crate) fn values(&self) -> &'a [f32] {
        self.values
    }

    /// The packed positions, `row_bytes` per row, with the padding.
    pub(crate) fn packed(&self) -> &'a [u8] {
        self.packed
    }
}
