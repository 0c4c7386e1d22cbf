//! AVX2 + FMA kernels, in the [sum order](crate#sum-order) of the scalar ones.
//!
//! SpMM works on a panel of 32 tokens stored token-minor (`panel[c * 32 + j]`): a nonzero
//! `(c, w)` is one broadcast of `w` and four fused multiply-adds of it against the 32 contiguous
//! activations of column `c` (two cache lines), no gather. A row's two running sums take eight
//! ymm registers, enough independent chains to hide the FMA latency; against the 16-token panels
//! with four sums this replaced, each entry's broadcast and index serve four multiply-adds instead
//! of two (1.1 to 1.35x faster). The loops run column block (192 columns), then panel, then row:
//! a block's weights come from memory once and from cache for every further panel, and each
//! panel's 24 KiB slice stays in L1 across the rows (it is prefetched in one sweep first, as the
//! rows touch it in no order a hardware prefetcher follows). A row's two sums wait in the two
//! halves of the tile between blocks; when an odd number of its nonzeros came before a block, the
//! block starts on the odd sum, which the kernel handles by swapping the two. Four column
//! indices are read as one word; each weight is broadcast straight from memory (`vbroadcastss`).
//! A last panel with fewer than 32 tokens computes only its live registers (8 tokens each) and
//! takes two or four rows together, so that eight dependency chains stay in flight: 2 to 3x
//! faster than the full panel at 2 to 16 tokens. Panels are made and tiles written back with
//! 8 x 8 register transposes.
//!
//! SpMV has one token and no blocks: rows go in pairs, whose four running sums (`[a even, a odd,
//! b even, b odd]`) are the lanes of one xmm register, and each step is one vector fused
//! multiply-add over two entries of each row against activations loaded one by one (AVX2 gathers
//! are slower than scalar loads on this Zen 3). Two pairs advance together, two dependency
//! chains in flight, through the entries all four rows have; each row then finishes alone. On
//! cache-resident matrices the next rows' entries are prefetched; above 1 MiB of entries the
//! hardware prefetchers, following four sequential streams, do better alone.
//!
//! N:M matrices have their own kernels, which read the packed positions directly (no decoding):
//! four consecutive nonzero slots take the same path as four CSR entries; padding slots (zeros)
//! fall back to one slot at a time, which keeps the sum order of the CSR kernels exactly. SpMV of
//! 2:4 and 1:4 matrices turns the layout around: a copy of the values holds eight rows side by
//! side, each row a lane of two ymm sums, and every group's four activations are broadcast and
//! permuted into the lanes by the rows' positions (`vpermilps`), so a row's step costs no load
//! of its own activation: 1.6 to 2.7x the dense GEMV where one row at a time was 0.26x.

use std::arch::x86_64::*;
use std::ops::Range;

use crate::Isa;
use crate::kernels::{
    Kernels, TOKEN_BLOCK, check_pack, check_spmm, check_spmm_lanes, check_spmm_nm, check_spmv, check_spmv_nm,
    check_unpack,
};
use crate::rows::{COL_BLOCK, ColumnIndex, NM_COL_BLOCK, NmLanes, NmRows, RowsView};

static AVX2: Kernels = Kernels {
    isa: Isa::Avx2,
    spmv_u16: spmv::<u16>,
    spmv_u32: spmv::<u32>,
    spmm_u16: spmm::<u16>,
    spmm_u32: spmm::<u32>,
    spmv_nm: Some(spmv_nm),
    spmm_nm: Some(spmm_nm),
    spmm_lanes: Some(spmm_lanes),
    pack,
    unpack,
};

/// The AVX2 table, or `None` when this CPU lacks AVX2 or FMA.
pub(in crate::kernels) fn kernels() -> Option<&'static Kernels> {
    Isa::Avx2.is_supported().then_some(&AVX2)
}

/// An N:M pattern as the kernels need it: `log2(n)` and `log2(m)` (the position width), as
/// constants for the common patterns so that the index arithmetic compiles to fixed shifts.
trait Pattern: Copy {
    fn group_shift(self) -> u32;
    fn bits(self) -> usize;
    /// Whether every four-slot step starts on a byte of the packed positions: four positions
    /// fill whole bytes and a block's slots (`192 / m * n`) do too.
    fn byte_steps(self) -> bool {
        let bits = self.bits();
        let slots_per_block = (NM_COL_BLOCK >> bits) << self.group_shift();
        (4 * bits).is_multiple_of(8) && (slots_per_block * bits).is_multiple_of(8)
    }
}

/// A pattern known at compile time: `n = 2^G`, `m = 2^B`.
#[derive(Clone, Copy)]
struct Fixed<const G: u32, const B: usize>;

impl<const G: u32, const B: usize> Pattern for Fixed<G, B> {
    #[inline(always)]
    fn group_shift(self) -> u32 {
        G
    }

    #[inline(always)]
    fn bits(self) -> usize {
        B
    }
}

/// Any other power-of-two pattern.
#[derive(Clone, Copy)]
struct Runtime {
    group_shift: u32,
    bits: usize,
}

impl Pattern for Runtime {
    #[inline(always)]
    fn group_shift(self) -> u32 {
        self.group_shift
    }

    #[inline(always)]
    fn bits(self) -> usize {
        self.bits
    }
}

/// Calls `$kernel(pattern, $args..)` with the pattern of `$rows`: fixed for 2:4, 1:4, 4:8, 1:2
/// and 8:16, read at run time for the others.
macro_rules! with_pattern {
    ($rows:expr, $kernel:ident($($arg:expr),*)) => {
        match ($rows.group_shift(), $rows.bits()) {
            (1, 2) => $kernel(Fixed::<1, 2>, $($arg),*),
            (0, 2) => $kernel(Fixed::<0, 2>, $($arg),*),
            (2, 3) => $kernel(Fixed::<2, 3>, $($arg),*),
            (0, 1) => $kernel(Fixed::<0, 1>, $($arg),*),
            (3, 4) => $kernel(Fixed::<3, 4>, $($arg),*),
            (group_shift, bits) => $kernel(Runtime { group_shift, bits }, $($arg),*),
        }
    };
}

// The safe entries of the table. Each is reachable only through `AVX2`, which `kernels` hands
// out after `Isa::Avx2.is_supported()` found AVX2 and FMA on this CPU.

fn spmv<I: ColumnIndex + LoadFour>(rows: RowsView<'_, I>, x: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    check_spmv(&rows, x, bias, y);
    let bytes = rows.values().len() * (size_of::<f32>() + size_of::<I>());
    // SAFETY: AVX2 and FMA were detected (see above); the lengths were checked.
    unsafe { spmv_avx2::<I, SPMV_PAIRS>(rows, x, bias, y, bytes <= SPMV_STREAM_BYTES) }
}

fn spmm<I: ColumnIndex + LoadFour>(
    rows: RowsView<'_, I>,
    panels: &[f32],
    n_tokens: usize,
    bias: Option<&[f32]>,
    tile: &mut [f32],
) {
    check_spmm(&rows, panels, n_tokens, bias, tile);
    // SAFETY: AVX2 and FMA were detected (see above); the lengths were checked.
    unsafe { spmm_avx2(rows, panels, n_tokens, bias, tile) }
}

fn spmv_nm(rows: NmRows<'_>, x: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    check_spmv_nm(&rows, x, bias, y);
    // SAFETY: AVX2 and FMA were detected (see above); the lengths were checked.
    unsafe { with_pattern!(rows, spmv_nm_avx2(rows, x, bias, y)) }
}

fn spmm_nm(rows: NmRows<'_>, panels: &[f32], n_tokens: usize, bias: Option<&[f32]>, tile: &mut [f32]) {
    check_spmm_nm(&rows, panels, n_tokens, bias, tile);
    // SAFETY: AVX2 and FMA were detected (see above); the lengths were checked.
    unsafe { with_pattern!(rows, spmm_nm_avx2(rows, panels, n_tokens.div_ceil(TOKEN_BLOCK), bias, tile)) }
}

fn spmm_lanes(rows: NmRows<'_>, x: &[f32], n_tokens: usize, bias: Option<&[f32]>, y: &mut [f32], stride: usize) {
    check_spmm_lanes(&rows, x, n_tokens, bias, y, stride);
    // SAFETY: AVX2 and FMA were detected (see above); the lengths and lanes were checked.
    unsafe { spmm_lanes_avx2(rows, x, n_tokens, bias, y, stride) }
}

fn pack(x: &[f32], n_tokens: usize, cols: usize, panel: &mut [f32]) {
    check_pack(x, n_tokens, cols, panel);
    // SAFETY: AVX2 and FMA were detected (see above); the lengths were checked.
    unsafe { pack_avx2(x, n_tokens, cols, panel) }
}

fn unpack(tile: &[f32], n_rows: usize, n_tokens: usize, dst: &mut [f32], stride: usize) {
    check_unpack(tile, n_rows, n_tokens, dst, stride);
    // SAFETY: AVX2 and FMA were detected (see above); the lengths were checked.
    unsafe { unpack_avx2(tile, n_rows, n_tokens, dst, stride) }
}

/// Pairs of rows per step of SpMV: two xmm registers of running sums, two dependency chains of
/// four entries per step.
const SPMV_PAIRS: usize = 2;

/// Above this many bytes of entries SpMV reads them from memory rather than from the caches, and
/// the hardware prefetchers do better without software prefetches.
const SPMV_STREAM_BYTES: usize = 1 << 20;

/// Advances the running sums of rows `a` and `b`, lanes `[a even, a odd, b even, b odd]`, by
/// their entries `ka, ka + 1` and `kb, kb + 1`: one vector fused multiply-add.
///
/// # Safety
/// The four entries must exist, with indices `<` the length of `x`.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn spmv_pair_step<I: ColumnIndex + LoadFour>(
    sums: __m128,
    indices: *const I,
    values: *const f32,
    x: *const f32,
    (ka, kb): (usize, usize),
) -> __m128 {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let [a0, a1] = I::load_two(indices.add(ka));
        let [b0, b1] = I::load_two(indices.add(kb));
        let low = _mm_load_sd(values.add(ka).cast::<f64>());
        let weights = _mm_castpd_ps(_mm_loadh_pd(low, values.add(kb).cast::<f64>()));
        let activations = _mm_setr_ps(*x.add(a0), *x.add(a1), *x.add(b0), *x.add(b1));
        _mm_fmadd_ps(weights, activations, sums)
    }
}

/// Finishes one row from entry `k` with its two sums as scalars, and returns its value
/// `even + odd`.
///
/// # Safety
/// Entries `k..end` must exist, with indices `<` the length of `x`, and `end - k` must have the
/// parity that puts entry `k` on the even sum (the caller's pairs keep it so).
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn spmv_finish<I: ColumnIndex + LoadFour>(
    (mut even, mut odd): (f32, f32),
    indices: *const I,
    values: *const f32,
    x: *const f32,
    mut k: usize,
    end: usize,
) -> f32 {
    // SAFETY: every entry read is before `end`; see the caller's guarantee.
    unsafe {
        while k + 2 <= end {
            let [col0, col1] = I::load_two(indices.add(k));
            even = (*values.add(k)).mul_add(*x.add(col0), even);
            odd = (*values.add(k + 1)).mul_add(*x.add(col1), odd);
            k += 2;
        }
        if k < end {
            even = (*values.add(k)).mul_add(*x.add((*indices.add(k)).col()), even);
        }
    }
    even + odd
}

/// Rows `first .. first + 2 * P` times `x`, from `start`, in the [sum order](crate#sum-order):
/// rows in pairs whose four sums are the lanes of one xmm register. The pairs advance together
/// through the pairs of entries all their rows have, then each pair through those both its rows
/// have, then each row finishes alone. With
/// `ahead`, the next rows' entries are prefetched.
///
/// # Safety
/// Rows `first .. first + 2 * P` must be in the view, and `x` must hold `cols` floats.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn spmv_rows<I: ColumnIndex + LoadFour, const P: usize>(
    rows: &RowsView<'_, I>,
    x: *const f32,
    first: usize,
    start: [[f32; 2]; P],
    ahead: bool,
) -> [[f32; 2]; P] {
    let indices = rows.indices().as_ptr();
    let values = rows.values().as_ptr();
    // Every entry read below is in its row, so `< values.len() == indices.len()`, and its index
    // is `< cols` (the `RowsView` invariant), which `x` holds (the caller).
    // Plain loops below rather than `array::from_fn`: closures do not inherit `target_feature`,
    // so the intrinsics and kernels called in them would not be inlined.
    let mut ranges = [[(0, 0); 2]; P];
    let mut sums = [_mm_setzero_ps(); P];
    for p in 0..P {
        ranges[p] = [rows.row_range(first + 2 * p), rows.row_range(first + 2 * p + 1)];
        sums[p] = _mm_setr_ps(start[p][0], 0.0, start[p][1], 0.0);
    }
    if ahead && first + 4 * P <= rows.n_rows() {
        // The next rows' entries, ahead of time: interleaved rows defeat the hardware
        // prefetchers, and a small SpMV is bound by L2 latency.
        let (next_start, next_end) = (rows.row_range(first + 2 * P).0, rows.row_range(first + 4 * P - 1).1);
        for entry in (next_start..next_end.min(next_start + 256)).step_by(16) {
            // SAFETY: `entry < next_end <= values.len() == indices.len()`.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(values.add(entry).cast());
                if entry % 32 < 16 {
                    _mm_prefetch::<_MM_HINT_T0>(indices.add(entry).cast());
                }
            }
        }
    }
    let common = ranges.iter().flatten().map(|(start, end)| (end - start) / 2).min().unwrap_or(0);
    for pair in 0..common {
        for p in 0..P {
            let [(a, _), (b, _)] = ranges[p];
            // SAFETY: entries `a + 2 * pair` and `b + 2 * pair`, and the ones after them, are in
            // their rows (`pair < common`).
            sums[p] = unsafe { spmv_pair_step(sums[p], indices, values, x, (a + 2 * pair, b + 2 * pair)) };
        }
    }
    for p in 0..P {
        // The pair's own common entries past those of all the rows.
        let [(a, end_a), (b, end_b)] = ranges[p];
        for pair in common..((end_a - a) / 2).min((end_b - b) / 2) {
            // SAFETY: as above, for the pair's two rows.
            sums[p] = unsafe { spmv_pair_step(sums[p], indices, values, x, (a + 2 * pair, b + 2 * pair)) };
        }
    }
    let mut done = [[0.0; 2]; P];
    for p in 0..P {
        let [(a, end_a), (b, end_b)] = ranges[p];
        let paired = ((end_a - a) / 2).min((end_b - b) / 2);
        let mut lanes = [0.0f32; 4];
        // SAFETY: four floats to a four-float array.
        unsafe { _mm_storeu_ps(lanes.as_mut_ptr(), sums[p]) };
        // SAFETY: the rest of each row, from an even count of its entries.
        done[p] = unsafe {
            [
                spmv_finish((lanes[0], lanes[1]), indices, values, x, a + 2 * paired, end_a),
                spmv_finish((lanes[2], lanes[3]), indices, values, x, b + 2 * paired, end_b),
            ]
        };
    }
    done
}

/// SpMV `2 * P` rows at a time (see [`spmv_rows`]), the last `n_rows % (2 * P)` one pair, then
/// one row, at a time.
///
/// # Safety
/// The CPU must support AVX2 and FMA, and the lengths must pass [`check_spmv`].
#[target_feature(enable = "avx2,fma")]
unsafe fn spmv_avx2<I: ColumnIndex + LoadFour, const P: usize>(
    rows: RowsView<'_, I>,
    x: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    ahead: bool,
) {
    let x_ptr = x.as_ptr();
    let start = |row: usize| bias.map_or(0.0, |bias| bias[row]);
    let mut row = 0;
    // The rows of each call below are in the view (`y` has one value per row), and `x` holds
    // `cols` floats (`check_spmv`).
    while row + 2 * P <= y.len() {
        let first = std::array::from_fn(|p| [start(row + 2 * p), start(row + 2 * p + 1)]);
        // SAFETY: rows `row .. row + 2 * P`, as just said.
        let done = unsafe { spmv_rows::<I, P>(&rows, x_ptr, row, first, ahead) };
        y[row..row + 2 * P].copy_from_slice(done.as_flattened());
        row += 2 * P;
    }
    while row + 2 <= y.len() {
        // SAFETY: rows `row` and `row + 1`, as said above.
        let done = unsafe { spmv_rows::<I, 1>(&rows, x_ptr, row, [[start(row), start(row + 1)]], false) };
        y[row..row + 2].copy_from_slice(&done[0]);
        row += 2;
    }
    if row < y.len() {
        let indices = rows.indices().as_ptr();
        let values = rows.values().as_ptr();
        let (first, end) = rows.row_range(row);
        // SAFETY: the row's own entries, from its first.
        y[row] = unsafe { spmv_finish((start(row), 0.0), indices, values, x_ptr, first, end) };
    }
}

/// Four ymm registers: one running sum over a panel's 32 tokens.
type Sum32 = [__m256; 4];

/// `sum += weight * panel column` for the first `8 * V` floats at `column`.
///
/// # Safety
/// `column` must point to `8 * V` readable f32.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn fma_v<const V: usize>(sum: &mut [__m256; V], weight: *const f32, column: *const f32) {
    // SAFETY: the caller guarantees a readable `weight` and `8 * V` readable f32 from `column`.
    unsafe {
        let weight = _mm256_broadcast_ss(&*weight);
        for (i, sum) in sum.iter_mut().enumerate() {
            *sum = _mm256_fmadd_ps(weight, _mm256_loadu_ps(column.add(8 * i)), *sum);
        }
    }
}

/// A row's two running sums (first `8 * V` tokens) at the start of column block `block`: the
/// bias and zero at the first, else what the two halves of the tile hold.
///
/// # Safety
/// `even` and `odd` must each point to `8 * V` readable f32.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn sums<const V: usize>(
    block: usize,
    bias: f32,
    (even, odd): (*mut f32, *mut f32),
) -> ([__m256; V], [__m256; V]) {
    if block == 0 {
        ([_mm256_set1_ps(bias); V], [_mm256_setzero_ps(); V])
    } else {
        // SAFETY: guaranteed by the caller.
        unsafe {
            (
                std::array::from_fn(|i| _mm256_loadu_ps(even.add(8 * i))),
                std::array::from_fn(|i| _mm256_loadu_ps(odd.add(8 * i))),
            )
        }
    }
}

/// Stores a row's two running sums after a column block: their total, the output, after the last
/// block, else each to its half of the tile.
///
/// # Safety
/// `even_out` and `odd_out` must each point to `8 * V` writable f32.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn finish<const V: usize>(
    last_block: bool,
    even: [__m256; V],
    odd: [__m256; V],
    (even_out, odd_out): (*mut f32, *mut f32),
) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        if last_block {
            for i in 0..V {
                _mm256_storeu_ps(even_out.add(8 * i), _mm256_add_ps(even[i], odd[i]));
            }
        } else {
            for i in 0..V {
                _mm256_storeu_ps(even_out.add(8 * i), even[i]);
                _mm256_storeu_ps(odd_out.add(8 * i), odd[i]);
            }
        }
    }
}

/// Four (or two) consecutive stored indices at once, read as whole words: scalar loads and
/// shifts, which beat the vector loads and lane extractions the compiler otherwise emits.
trait LoadFour: Copy {
    /// # Safety
    /// `at` must point to four readable indices.
    unsafe fn load_four(at: *const Self) -> [usize; 4];

    /// # Safety
    /// `at` must point to two readable indices.
    unsafe fn load_two(at: *const Self) -> [usize; 2];
}

impl LoadFour for u16 {
    #[inline(always)]
    unsafe fn load_four(at: *const u16) -> [usize; 4] {
        // SAFETY: the caller guarantees 4 readable u16, which are 8 bytes.
        let word = unsafe { at.cast::<u64>().read_unaligned() };
        std::array::from_fn(|i| (word >> (16 * i)) as u16 as usize)
    }

    #[inline(always)]
    unsafe fn load_two(at: *const u16) -> [usize; 2] {
        // SAFETY: the caller guarantees 2 readable u16, which are 4 bytes.
        let word = unsafe { at.cast::<u32>().read_unaligned() };
        [word as u16 as usize, (word >> 16) as usize]
    }
}

impl LoadFour for u32 {
    #[inline(always)]
    unsafe fn load_four(at: *const u32) -> [usize; 4] {
        // SAFETY: the caller guarantees 4 readable u32, which are two 8-byte words.
        let (low, high) = unsafe { (at.cast::<u64>().read_unaligned(), at.add(2).cast::<u64>().read_unaligned()) };
        [low as u32 as usize, (low >> 32) as usize, high as u32 as usize, (high >> 32) as usize]
    }

    #[inline(always)]
    unsafe fn load_two(at: *const u32) -> [usize; 2] {
        // SAFETY: the caller guarantees 2 readable u32, which are 8 bytes.
        let word = unsafe { at.cast::<u64>().read_unaligned() };
        [word as u32 as usize, (word >> 32) as usize]
    }
}

/// Asks for column block `block` (of `width` columns) of the panel at `panels[at..]` (its
/// `width x TOKEN_BLOCK` activations, contiguous) in one sweep before the rows read it. The rows
/// touch its cache lines in the order of their columns, which the hardware prefetchers cannot
/// follow; when the panels have outgrown L2 (4096 columns x 128 tokens is 2 MiB) each line would
/// otherwise be a separate wait on L3, and the sweep keeps many of them in flight at once.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn prefetch_block(panels: &[f32], at: usize, (block, width): (usize, usize), cols: usize) {
    let first = at + block * width * TOKEN_BLOCK;
    let last = at + cols.min((block + 1) * width) * TOKEN_BLOCK;
    for line in (first..last).step_by(16) {
        // SAFETY: `line < last <= panels.len()`; a prefetch does not fault in any case.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(panels.as_ptr().add(line).cast()) };
    }
}

/// Rows ahead whose weights the first panel of a block prefetches.
const AHEAD: usize = 4;

/// # Safety
/// The CPU must support AVX2 and FMA, and the lengths must pass [`check_spmm`].
#[target_feature(enable = "avx2,fma")]
unsafe fn spmm_avx2<I: ColumnIndex + LoadFour>(
    rows: RowsView<'_, I>,
    panels: &[f32],
    n_tokens: usize,
    bias: Option<&[f32]>,
    tile: &mut [f32],
) {
    let n_panels = n_tokens.div_ceil(TOKEN_BLOCK);
    let n_rows = rows.n_rows();
    let panel_len = rows.cols() * TOKEN_BLOCK;
    let (evens, odds) = tile.split_at_mut(n_panels * n_rows * TOKEN_BLOCK);
    let n_blocks = rows.n_blocks();
    // Column block outermost: the block's weights are read once from memory and then from cache
    // for every panel, and each panel's 24 KiB slice stays in L1 across the rows. A row's two
    // running sums wait in the two halves of the tile between blocks.
    for block in 0..n_blocks {
        for panel_idx in 0..n_panels {
            prefetch_block(panels, panel_idx * panel_len, (block, COL_BLOCK), rows.cols());
            let pass = PanelPass {
                rows: &rows,
                block,
                last_block: block + 1 == n_blocks,
                // SAFETY: `check_spmm` made `panels` hold `n_panels` panels of `panel_len` floats.
                panel: unsafe { panels.as_ptr().add(panel_idx * panel_len) },
                evens: evens[panel_idx * n_rows * TOKEN_BLOCK..][..n_rows * TOKEN_BLOCK].as_mut_ptr(),
                odds: odds[panel_idx * n_rows * TOKEN_BLOCK..][..n_rows * TOKEN_BLOCK].as_mut_ptr(),
                bias,
                ahead: panel_idx == 0,
            };
            // Only the panel's live tokens, in whole ymm registers; with fewer registers per
            // row, more rows go together, so that eight dependency chains stay in flight.
            let live = (n_tokens - panel_idx * TOKEN_BLOCK).min(TOKEN_BLOCK).div_ceil(8);
            // SAFETY: the pass's pointers are this panel's and its tile's (see `PanelPass`).
            unsafe {
                match live {
                    4 => pass.run::<4, 1>(),
                    3 => pass.run::<3, 1>(),
                    2 => pass.run::<2, 2>(),
                    _ => pass.run::<1, 4>(),
                }
            }
        }
    }
}

/// One panel of [`spmm_avx2`] over one column block, for every row of the view.
struct PanelPass<'a, 'r, I> {
    rows: &'r RowsView<'a, I>,
    block: usize,
    last_block: bool,
    /// The panel, `cols x TOKEN_BLOCK` floats.
    panel: *const f32,
    /// The panel's two halves of the tile, `n_rows x TOKEN_BLOCK` floats each.
    evens: *mut f32,
    odds: *mut f32,
    bias: Option<&'r [f32]>,
    /// Whether to prefetch rows ahead (the first panel, which meets the weights in memory).
    ahead: bool,
}

impl<I: ColumnIndex + LoadFour> PanelPass<'_, '_, I> {
    /// Every row, `R` at a time (then one at a time), each over the first `V` ymm registers of
    /// its 32 tokens.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; the pointers must be as the fields say.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run<const V: usize, const R: usize>(&self) {
        let n_rows = self.rows.n_rows();
        let whole = n_rows - n_rows % R;
        // SAFETY: rows within the view; the caller's guarantee for the rest.
        unsafe {
            self.rows_together::<V, R>(0..whole);
            self.rows_together::<V, 1>(whole..n_rows);
        }
    }

    /// The rows of `range`, `R` at a time: their common quads of entries interleaved, then each
    /// row's rest alone.
    ///
    /// # Safety
    /// As for [`run`](Self::run); the rows of `range` must be in the view and their number a
    /// multiple of `R`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows_together<const V: usize, const R: usize>(&self, range: Range<usize>) {
        for first in range.step_by(R) {
            // SAFETY: as for this function, for rows `first .. first + R`.
            unsafe { self.rows_at::<V, R>(first) };
        }
    }

    /// Entries `k .. k + 4` of a row into its sums: even, odd, even, odd.
    ///
    /// # Safety
    /// As for [`run`](Self::run), and the four entries must be in one row's segment of this
    /// block.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn quad<const V: usize>(&self, even: &mut [__m256; V], odd: &mut [__m256; V], k: usize) {
        let (indices, values) = (self.rows.indices().as_ptr(), self.rows.values().as_ptr());
        // SAFETY: the entries exist and their indices are `< cols` (the `RowsView` invariant), so
        // each column's 32 floats are in the panel.
        unsafe {
            let [col0, col1, col2, col3] = I::load_four(indices.add(k));
            fma_v(even, values.add(k), self.panel.add(col0 * TOKEN_BLOCK));
            fma_v(odd, values.add(k + 1), self.panel.add(col1 * TOKEN_BLOCK));
            fma_v(even, values.add(k + 2), self.panel.add(col2 * TOKEN_BLOCK));
            fma_v(odd, values.add(k + 3), self.panel.add(col3 * TOKEN_BLOCK));
        }
    }

    /// Rows `first .. first + R` (see [`rows_together`](Self::rows_together)).
    ///
    /// # Safety
    /// As for [`run`](Self::run), and rows `first .. first + R` must be in the view.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn rows_at<const V: usize, const R: usize>(&self, first: usize) {
        let rows = self.rows;
        let (indices, values) = (rows.indices().as_ptr(), rows.values().as_ptr());
        // Every entry read below is in its row's segment, so `< values.len() == indices.len()`,
        // and its index is `< cols`, so `col * 32 + 32 <= cols * 32` floats of the panel (the
        // `RowsView` invariant).
        // (A macro, not a closure: closures do not inherit `target_feature`, and their calls
        // would not be inlined.)
        macro_rules! column {
            ($col:expr) => {
                self.panel.add($col * TOKEN_BLOCK)
            };
        }
        // Plain loops rather than `array::from_fn`, for the same reason.
        let mut outs = [(std::ptr::null_mut::<f32>(), std::ptr::null_mut::<f32>()); R];
        let mut segments = [(0, 0); R];
        // An odd number of a row's entries before this block puts its first one on the odd sum.
        let mut swapped = [false; R];
        let mut even = [[_mm256_setzero_ps(); V]; R];
        let mut odd = [[_mm256_setzero_ps(); V]; R];
        for i in 0..R {
            // SAFETY: rows of the view, whose 32 floats of each half are in the tile.
            outs[i] = unsafe { (self.evens.add((first + i) * TOKEN_BLOCK), self.odds.add((first + i) * TOKEN_BLOCK)) };
            segments[i] = rows.segment(first + i, self.block);
            swapped[i] = self.block > 0 && (segments[i].0 - rows.row_range(first + i).0) % 2 == 1;
            let bias = match self.bias {
                Some(bias) => bias[first + i],
                None => 0.0,
            };
            // SAFETY: `outs[i]` are this row's floats of the tile.
            (even[i], odd[i]) = unsafe { sums(self.block, bias, outs[i]) };
            if swapped[i] {
                (even[i], odd[i]) = (odd[i], even[i]);
            }
        }
        if self.ahead && first + R + AHEAD <= rows.n_rows() {
            // The first panel meets the block's weights in memory, a row at a time: ask for
            // later rows' segments now.
            for i in 0..R {
                let (next, next_end) = rows.segment(first + i + AHEAD, self.block);
                for entry in (next..next_end).step_by(16) {
                    // SAFETY: `entry < next_end <= values.len() == indices.len()`.
                    unsafe {
                        _mm_prefetch::<_MM_HINT_T0>(values.add(entry).cast());
                        _mm_prefetch::<_MM_HINT_T0>(indices.add(entry).cast());
                    }
                }
            }
        }
        let mut common = usize::MAX;
        for (start, end) in segments {
            common = common.min((end - start) / 4);
        }
        for quad in 0..common {
            for i in 0..R {
                // SAFETY: entries `k..k + 4` are in row `i`'s segment (`quad < common`).
                unsafe { self.quad(&mut even[i], &mut odd[i], segments[i].0 + 4 * quad) };
            }
        }
        for i in 0..R {
            let (start, end) = segments[i];
            let mut k = start + 4 * common;
            // SAFETY: entries `k..k + 4`, then each single entry, are read only before `end`.
            unsafe {
                while k + 4 <= end {
                    self.quad(&mut even[i], &mut odd[i], k);
                    k += 4;
                }
                // The last one to three entries, alternating from the even sum.
                if k < end {
                    fma_v(&mut even[i], values.add(k), column!((*indices.add(k)).col()));
                    if k + 1 < end {
                        fma_v(&mut odd[i], values.add(k + 1), column!((*indices.add(k + 1)).col()));
                        if k + 2 < end {
                            fma_v(&mut even[i], values.add(k + 2), column!((*indices.add(k + 2)).col()));
                        }
                    }
                }
            }
            if swapped[i] {
                (even[i], odd[i]) = (odd[i], even[i]);
            }
            // SAFETY: `outs[i]` are this row's floats of the tile.
            unsafe { finish(self.last_block, even[i], odd[i], outs[i]) };
        }
    }
}

/// Reads N:M slot positions of one row: `bits`-bit fields packed least significant bit first.
#[derive(Clone, Copy)]
struct Positions<P> {
    packed: *const u8,
    pattern: P,
}

impl<P: Pattern> Positions<P> {
    /// The first column of the group of `slot`.
    #[inline(always)]
    fn group_col(self, slot: usize) -> usize {
        (slot >> self.pattern.group_shift()) << self.pattern.bits()
    }

    /// `group_col(slot + i) - group_col(slot)` for `i < 4` when `slot` is a multiple of
    /// `min(n, 4)`, which every four-slot step is: steps go by four from a row's first slot
    /// (SpMV) or from a block's (SpMM; a block starts on a multiple of its `192 / m * n` slots,
    /// itself a multiple of `min(n, 4)`), and never split.
    #[inline(always)]
    fn quad_offset(self, i: usize) -> usize {
        (i >> self.pattern.group_shift()) << self.pattern.bits()
    }

    /// The positions of slots `slot .. slot + 4`, as bits `i * bits ..` of the result.
    ///
    /// # Safety
    /// `packed` must have 8 readable bytes from byte `slot * bits / 8` (the `NmRows` padding
    /// guarantees this for every slot of its rows).
    #[inline(always)]
    unsafe fn word(self, slot: usize) -> u64 {
        let bit = slot * self.pattern.bits();
        // SAFETY: the caller guarantees 8 readable bytes there.
        unsafe { self.packed.add(bit >> 3).cast::<u64>().read_unaligned() >> (bit & 7) }
    }

    /// [`word`](Self::word) for a four-slot step: a plain load when steps start on bytes.
    ///
    /// # Safety
    /// As for [`word`](Self::word).
    #[inline(always)]
    unsafe fn step_word(self, slot: usize) -> u64 {
        if self.pattern.byte_steps() {
            // SAFETY: as for `word`, whose byte this is.
            unsafe { self.packed.add((slot * self.pattern.bits()) >> 3).cast::<u64>().read_unaligned() }
        } else {
            // SAFETY: guaranteed by the caller.
            unsafe { self.word(slot) }
        }
    }

    /// Position `i` (0 to 3) of a [`word`](Self::word).
    #[inline(always)]
    fn get(self, word: u64, i: usize) -> usize {
        let bits = self.pattern.bits();
        ((word >> (i * bits)) & ((1 << bits) - 1)) as usize
    }
}

/// One N:M row's SpMV state within a column block: its two running sums, and whether the next
/// nonzero goes to the odd one.
#[derive(Clone, Copy)]
struct NmSums {
    even: f32,
    odd: f32,
    phase: bool,
}

impl NmSums {
    fn start(running: f32) -> Self {
        NmSums { even: running, odd: 0.0, phase: false }
    }

    fn total(self) -> f32 {
        self.even + self.odd
    }
}

/// Advances `sums` by one slot: skipped when zero, else added into the sum `phase` names. The
/// path of padding slots and block ends.
///
/// # Safety
/// `values.add(slot)` must be readable, `positions.word(slot)` safe, and the slot's column `<`
/// the length of `x`.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn nm_spmv_slot<P: Pattern>(
    sums: &mut NmSums,
    values: *const f32,
    positions: Positions<P>,
    x: *const f32,
    slot: usize,
) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let weight = *values.add(slot);
        if weight != 0.0 {
            let col = positions.group_col(slot) + positions.get(positions.word(slot), 0);
            let sum = if sums.phase { &mut sums.odd } else { &mut sums.even };
            *sum = weight.mul_add(*x.add(col), *sum);
            sums.phase = !sums.phase;
        }
    }
}

/// Advances `sums` by the four slots from `slot`: straight into even, odd, even, odd when they
/// are all nonzero and start on the even sum (always so in a `full` row), else slot by slot.
///
/// # Safety
/// Slots `slot..slot + 4` must be in the row, with columns `<` the length of `x`.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn nm_spmv_quad<P: Pattern>(
    sums: &mut NmSums,
    full: bool,
    values: *const f32,
    positions: Positions<P>,
    x: *const f32,
    slot: usize,
) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let all_nonzero = || _mm_movemask_ps(_mm_cmpneq_ps(_mm_loadu_ps(values.add(slot)), _mm_setzero_ps())) == 0b1111;
        if full || (!sums.phase && all_nonzero()) {
            let (word, base) = (positions.step_word(slot), positions.group_col(slot));
            let activation = |i: usize| *x.add(base + positions.quad_offset(i) + positions.get(word, i));
            let weight = |i: usize| *values.add(slot + i);
            sums.even = weight(0).mul_add(activation(0), sums.even);
            sums.odd = weight(1).mul_add(activation(1), sums.odd);
            sums.even = weight(2).mul_add(activation(2), sums.even);
            sums.odd = weight(3).mul_add(activation(3), sums.odd);
        } else {
            for slot in slot..slot + 4 {
                nm_spmv_slot(sums, values, positions, x, slot);
            }
        }
    }
}

/// # Safety
/// The CPU must support AVX2 and FMA, and the lengths must pass [`check_spmv_nm`].
#[target_feature(enable = "avx2,fma")]
unsafe fn spmv_nm_avx2<P: Pattern>(pattern: P, rows: NmRows<'_>, x: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let mut first = 0;
    if let Some(lanes) = rows.lanes() {
        let mut panel = 0;
        while panel < lanes.ready.len() {
            let run = lanes.ready[panel..].iter().take(LANE_PANELS).take_while(|&&ready| ready).count();
            // SAFETY: the lanes' panels are ready where they serve, every panel is in the view,
            // and the lengths passed `check_spmv_nm`.
            unsafe {
                if run == LANE_PANELS {
                    lanes_tile::<LANE_PANELS, 1>(rows, lanes, panel, x, 0, bias, y, 0);
                } else if run > 0 {
                    for panel in panel..panel + run {
                        lanes_tile::<1, 1>(rows, lanes, panel, x, 0, bias, y, 0);
                    }
                } else {
                    spmv_nm_rows(pattern, rows, x, bias, y, 8 * panel..8 * panel + 8);
                }
            }
            panel += run.max(1);
        }
        first = 8 * lanes.ready.len();
    }
    // SAFETY: the lengths passed `check_spmv_nm`.
    unsafe { spmv_nm_rows(pattern, rows, x, bias, y, first..rows.n_rows()) };
}

/// Eight-row groups per SpMV step of [`lanes_tile`]: eight dependency chains.
const LANE_PANELS: usize = 4;

/// Tokens per step of [`spmm_lanes_avx2`]: two sums each, eight ymm accumulators.
const LANE_TOKENS: usize = 4;

/// # Safety
/// The CPU must support AVX2 and FMA, and the arguments must pass [`check_spmm_lanes`].
#[target_feature(enable = "avx2,fma")]
unsafe fn spmm_lanes_avx2(
    rows: NmRows<'_>,
    x: &[f32],
    n_tokens: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    stride: usize,
) {
    let lanes = rows.lanes().expect("checked by check_spmm_lanes");
    for panel in 0..rows.n_rows() / 8 {
        let mut token = 0;
        // Each call's panel is ready and its tokens are in `x`; the lengths passed
        // `check_spmm_lanes`.
        while token + LANE_TOKENS <= n_tokens {
            // SAFETY: as just said.
            unsafe { lanes_tile::<1, LANE_TOKENS>(rows, lanes, panel, x, token, bias, y, stride) };
            token += LANE_TOKENS;
        }
        // SAFETY: as said above, for the last zero to three tokens.
        unsafe {
            match n_tokens - token {
                3 => lanes_tile::<1, 3>(rows, lanes, panel, x, token, bias, y, stride),
                2 => lanes_tile::<1, 2>(rows, lanes, panel, x, token, bias, y, stride),
                1 => lanes_tile::<1, 1>(rows, lanes, panel, x, token, bias, y, stride),
                _ => {}
            }
        }
    }
}

/// Tokens `first .. first + T` of `x` times the `8 * K` rows from `8 * panel`, from their lanes:
/// each row in a lane of two ymm registers (its even and its odd sum), each group of four
/// activations broadcast to both halves of a register and permuted by every row's positions
/// (`vpermilps`) into the lanes. In a full row of a 2:4 matrix slot `s` of every group is a
/// nonzero of parity `s`; in one of 1:4 the only slot of group `g` is nonzero `g`. A group's
/// positions and weights are loaded once for the `T` tokens, its activations (one token) once
/// for the `K` groups of rows. Writes `y[(first + t) * stride + r]`.
///
/// # Safety
/// The CPU must support AVX2 and FMA, panels `panel .. panel + K` must be ready in `lanes`
/// (which `rows.with_lanes` checked), tokens `first .. first + T` in `x`, and `y` long enough
/// (as [`check_spmm_lanes`] or [`check_spmv_nm`] checked).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn lanes_tile<const K: usize, const T: usize>(
    rows: NmRows<'_>,
    lanes: NmLanes<'_>,
    panel: usize,
    x: &[f32],
    first: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    stride: usize,
) {
    let (groups, n, cols) = (rows.groups(), rows.n(), rows.cols());
    let first_row = 8 * panel;
    let mut even = [[_mm256_setzero_ps(); T]; K];
    let mut odd = [[_mm256_setzero_ps(); T]; K];
    if let Some(bias) = bias {
        for (k, even) in even.iter_mut().enumerate() {
            // SAFETY: the slice is indexed (and bounds-checked) to exactly 8 floats before the load.
            *even = [unsafe { _mm256_loadu_ps(bias[first_row + 8 * k..][..8].as_ptr()) }; T];
        }
    }
    let values = lanes.values[panel * groups * n * 8..][..K * groups * n * 8].as_ptr();
    let controls = lanes.controls[panel * groups * 8..][..K * groups * 8].as_ptr();
    let x = x[first * cols..][..T * cols].as_ptr();
    // Every read below is within the slices just taken (`g < groups`, `k < K`, `t < T`, `cols ==
    // 4 * groups`).
    // SAFETY: as just said.
    unsafe {
        for g in 0..groups {
            // One token's activations serve every group of rows.
            let single = _mm256_broadcast_ps(&*x.add(4 * g).cast::<__m128>());
            for k in 0..K {
                let at = (k * groups + g) * 8;
                let control = _mm256_cvtepu8_epi32(_mm_loadl_epi64(controls.add(at).cast()));
                // (A macro, not a closure: closures do not inherit `target_feature`.)
                macro_rules! quad {
                    ($t:expr) => {
                        if T == 1 { single } else { _mm256_broadcast_ps(&*x.add($t * cols + 4 * g).cast::<__m128>()) }
                    };
                }
                if n == 2 {
                    let (w0, w1) = (_mm256_loadu_ps(values.add(2 * at)), _mm256_loadu_ps(values.add(2 * at + 8)));
                    let control1 = _mm256_srli_epi32::<2>(control);
                    for t in 0..T {
                        let quad = quad!(t);
                        even[k][t] = _mm256_fmadd_ps(w0, _mm256_permutevar_ps(quad, control), even[k][t]);
                        odd[k][t] = _mm256_fmadd_ps(w1, _mm256_permutevar_ps(quad, control1), odd[k][t]);
                    }
                } else {
                    let w0 = _mm256_loadu_ps(values.add(at));
                    for t in 0..T {
                        let sum = if g % 2 == 0 { &mut even[k][t] } else { &mut odd[k][t] };
                        *sum = _mm256_fmadd_ps(w0, _mm256_permutevar_ps(quad!(t), control), *sum);
                    }
                }
            }
        }
    }
    for k in 0..K {
        for t in 0..T {
            let out = &mut y[(first + t) * stride + first_row + 8 * k..][..8];
            // SAFETY: the slice is indexed (and bounds-checked) to exactly 8 floats before the store.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), _mm256_add_ps(even[k][t], odd[k][t])) };
        }
    }
}

/// SpMV of the rows in `range` from their packed slots, four rows at a time.
///
/// # Safety
/// The CPU must support AVX2 and FMA, and the lengths must pass [`check_spmv_nm`].
#[target_feature(enable = "avx2,fma")]
unsafe fn spmv_nm_rows<P: Pattern>(
    pattern: P,
    rows: NmRows<'_>,
    x: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    range: Range<usize>,
) {
    let offset = range.start;
    let y = &mut y[range];
    let (per_row, row_bytes) = (rows.per_row(), rows.row_bytes());
    let x = x.as_ptr();
    let row_data = |row: usize| {
        let row = offset + row;
        let values = rows.values()[row * per_row..][..per_row].as_ptr();
        // SAFETY: `row < n_rows`, and the packed positions hold `row_bytes` per row plus padding.
        let packed = unsafe { rows.packed().as_ptr().add(row * row_bytes) };
        (values, Positions { packed, pattern }, rows.is_full(row))
    };
    let start = |row: usize| NmSums::start(bias.map_or(0.0, |bias| bias[offset + row]));
    // Every slot below is `< per_row`, so it is in the row and its position word within the
    // row's bytes plus padding; every position is `< m`, so every column is `< cols == x.len()`
    // (the `NmRows` invariants, with `check_spmv_nm`). Steps of four start on multiples of four
    // from the row's first slot, so they never split (see `Positions::quad_offset`); SpMV has no
    // column blocks (the running sums carry over them).
    let first_rest = y.len() - y.len() % 4;
    let (out4, rest) = y.as_chunks_mut::<4>();
    // Four rows at a time, as in the CSR kernel: every row has the same slots, so they advance
    // in lockstep.
    for (group, out) in out4.iter_mut().enumerate() {
        let row = 4 * group;
        let [
            (values0, positions0, full0),
            (values1, positions1, full1),
            (values2, positions2, full2),
            (values3, positions3, full3),
        ] = [row_data(row), row_data(row + 1), row_data(row + 2), row_data(row + 3)];
        // Four named states (not an array walked by a loop), so that they stay in registers:
        // eight dependency chains.
        let (mut sums0, mut sums1, mut sums2, mut sums3) = (start(row), start(row + 1), start(row + 2), start(row + 3));
        let mut slot = 0;
        while slot + 4 <= per_row {
            // SAFETY: slots `slot..slot + 4` are in the rows (see above).
            unsafe {
                nm_spmv_quad(&mut sums0, full0, values0, positions0, x, slot);
                nm_spmv_quad(&mut sums1, full1, values1, positions1, x, slot);
                nm_spmv_quad(&mut sums2, full2, values2, positions2, x, slot);
                nm_spmv_quad(&mut sums3, full3, values3, positions3, x, slot);
            }
            slot += 4;
        }
        for slot in slot..per_row {
            // SAFETY: `slot` is in the rows (see above).
            unsafe {
                nm_spmv_slot(&mut sums0, values0, positions0, x, slot);
                nm_spmv_slot(&mut sums1, values1, positions1, x, slot);
                nm_spmv_slot(&mut sums2, values2, positions2, x, slot);
                nm_spmv_slot(&mut sums3, values3, positions3, x, slot);
            }
        }
        *out = [sums0, sums1, sums2, sums3].map(NmSums::total);
    }
    for (i, out) in rest.iter_mut().enumerate() {
        let row = first_rest + i;
        let (values, positions, full) = row_data(row);
        let mut sums = start(row);
        let mut slot = 0;
        while slot + 4 <= per_row {
            // SAFETY: slots `slot..slot + 4` are in the row (see above).
            unsafe { nm_spmv_quad(&mut sums, full, values, positions, x, slot) };
            slot += 4;
        }
        for slot in slot..per_row {
            // SAFETY: `slot` is in the row (see above).
            unsafe { nm_spmv_slot(&mut sums, values, positions, x, slot) };
        }
        *out = sums.total();
    }
}

/// # Safety
/// The CPU must support AVX2 and FMA, and the lengths must pass [`check_spmm_nm`].
#[target_feature(enable = "avx2,fma")]
unsafe fn spmm_nm_avx2<P: Pattern>(
    pattern: P,
    rows: NmRows<'_>,
    panels: &[f32],
    n_panels: usize,
    bias: Option<&[f32]>,
    tile: &mut [f32],
) {
    let (n_rows, per_row, row_bytes) = (rows.n_rows(), rows.per_row(), rows.row_bytes());
    let panel_len = rows.cols() * TOKEN_BLOCK;
    let (evens, odds) = tile.split_at_mut(n_panels * n_rows * TOKEN_BLOCK);
    let n_blocks = rows.n_blocks();
    // Per row, whether an odd number of nonzeros came before the current block (padding slots
    // do not count), which puts the block's first nonzero on the odd sum.
    let mut odd_before = vec![false; n_rows];
    for block in 0..n_blocks {
        let last_block = block + 1 == n_blocks;
        let (first, last) = rows.block_slots(block);
        for panel_idx in 0..n_panels {
            // SAFETY: `check_spmm_nm` made `panels` hold `n_panels` panels of `panel_len` floats.
            let panel = unsafe { panels.as_ptr().add(panel_idx * panel_len) };
            prefetch_block(panels, panel_idx * panel_len, (block, NM_COL_BLOCK), rows.cols());
            let evens = &mut evens[panel_idx * n_rows * TOKEN_BLOCK..][..n_rows * TOKEN_BLOCK];
            let odds = &mut odds[panel_idx * n_rows * TOKEN_BLOCK..][..n_rows * TOKEN_BLOCK];
            for (row, (even_out, odd_out)) in
                evens.chunks_exact_mut(TOKEN_BLOCK).zip(odds.chunks_exact_mut(TOKEN_BLOCK)).enumerate()
            {
                let (even_out, odd_out) = (even_out.as_mut_ptr(), odd_out.as_mut_ptr());
                // SAFETY: both are this row's 32 floats of their half of the tile.
                let (mut even, mut odd): (Sum32, Sum32) =
                    unsafe { sums(block, bias.map_or(0.0, |bias| bias[row]), (even_out, odd_out)) };
                let swapped = odd_before[row];
                if swapped {
                    (even, odd) = (odd, even);
                }
                let values = rows.values()[row * per_row..][..per_row].as_ptr();
                let positions = Positions {
                    // SAFETY: `row < n_rows`; the positions hold `row_bytes` per row plus padding.
                    packed: unsafe { rows.packed().as_ptr().add(row * row_bytes) },
                    pattern,
                };
                // Every slot used below is `< last <= per_row`, so its value is in the row and its
                // position word within the row's bytes plus padding; every position is `< m`, so
                // `col < cols` and `col * 32 + 32 <= panel_len` (the `NmRows` invariants, with
                // `check_spmm_nm`).
                // SAFETY: callers pass slot columns, within the panel as just said.
                let column = |col: usize| unsafe { panel.add(col * TOKEN_BLOCK) };
                // The next nonzero goes to the odd sum when `phase` is set; zero (padding) slots
                // are skipped.
                let mut phase = false;
                // One slot, the slow path: skipped when zero, else added into the sum `phase`
                // names. Each arm names its sum, which keeps both in registers.
                macro_rules! one_slot {
                    ($slot:expr) => {{
                        let slot = $slot;
                        // SAFETY: `slot` is in the block (see above).
                        unsafe {
                            if *values.add(slot) != 0.0 {
                                let column = column(positions.group_col(slot) + positions.get(positions.word(slot), 0));
                                let weight = values.add(slot);
                                if phase {
                                    fma_v(&mut odd, weight, column);
                                } else {
                                    fma_v(&mut even, weight, column);
                                }
                                phase = !phase;
                            }
                        }
                    }};
                }
                // Four consecutive slots from the even sum.
                macro_rules! quad {
                    ($slot:expr) => {{
                        let slot = $slot;
                        // SAFETY: slots `slot..slot + 4` are in the block, starting a step (see
                        // above and `Positions::quad_offset`).
                        unsafe {
                            let (word, base) = (positions.step_word(slot), positions.group_col(slot));
                            let at = |i: usize| column(base + positions.quad_offset(i) + positions.get(word, i));
                            fma_v(&mut even, values.add(slot), at(0));
                            fma_v(&mut odd, values.add(slot + 1), at(1));
                            fma_v(&mut even, values.add(slot + 2), at(2));
                            fma_v(&mut odd, values.add(slot + 3), at(3));
                        }
                    }};
                }
                let mut slot = first;
                if rows.is_full(row) {
                    // No padding: every step is four nonzeros from the even sum, as in CSR.
                    while slot + 4 <= last {
                        quad!(slot);
                        slot += 4;
                    }
                } else {
                    while slot + 4 <= last {
                        // SAFETY: slots `slot..slot + 4` are in the block (see above).
                        let weights = unsafe { _mm_loadu_ps(values.add(slot)) };
                        let nonzero = _mm_movemask_ps(_mm_cmpneq_ps(weights, _mm_setzero_ps()));
                        if !phase && nonzero == 0b1111 {
                            quad!(slot);
                        } else {
                            // Slot by slot, keeping the steps whole (see `Positions::quad_offset`).
                            for slot in slot..slot + 4 {
                                one_slot!(slot);
                            }
                        }
                        slot += 4;
                    }
                }
                for slot in slot..last {
                    one_slot!(slot);
                }
                if panel_idx + 1 == n_panels {
                    // The next block's; every panel of this one has read this block's.
                    odd_before[row] = swapped != phase;
                }
                if swapped {
                    (even, odd) = (odd, even);
                }
                // SAFETY: as for `sums`.
                unsafe { finish(last_block, even, odd, (even_out, odd_out)) };
            }
        }
    }
}

/// The 8 x 8 transpose: lane `i` of output `k` is lane `k` of input `i`.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn transpose8(rows: [__m256; 8]) -> [__m256; 8] {
    let [r0, r1, r2, r3, r4, r5, r6, r7] = rows;
    let t0 = _mm256_unpacklo_ps(r0, r1);
    let t1 = _mm256_unpackhi_ps(r0, r1);
    let t2 = _mm256_unpacklo_ps(r2, r3);
    let t3 = _mm256_unpackhi_ps(r2, r3);
    let t4 = _mm256_unpacklo_ps(r4, r5);
    let t5 = _mm256_unpackhi_ps(r4, r5);
    let t6 = _mm256_unpacklo_ps(r6, r7);
    let t7 = _mm256_unpackhi_ps(r6, r7);
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xee>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xee>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xee>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xee>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ]
}

/// Loads `src[at + i * stride ..][..8]` for `i` in `0..8`.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn load8x8(src: &[f32], at: usize, stride: usize) -> [__m256; 8] {
    assert!(stride >= 8, "rows of 8 overlap at stride {stride}");
    // One bounds check for the whole block: every row `i` is in it.
    let block = &src[at..at + 7 * stride + 8];
    // SAFETY: `i * stride + 8 <= block.len()` for `i < 8`.
    std::array::from_fn(|i| unsafe { _mm256_loadu_ps(block.as_ptr().add(i * stride)) })
}

/// Stores `rows[i]` to `dst[at + i * stride ..][..8]` for `i` in `0..8`.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn store8x8(rows: [__m256; 8], dst: &mut [f32], at: usize, stride: usize) {
    assert!(stride >= 8, "rows of 8 overlap at stride {stride}");
    // One bounds check for the whole block, as in `load8x8`.
    let block = &mut dst[at..at + 7 * stride + 8];
    for (i, row) in rows.into_iter().enumerate() {
        // SAFETY: `i * stride + 8 <= block.len()` for `i < 8`.
        unsafe { _mm256_storeu_ps(block.as_mut_ptr().add(i * stride), row) };
    }
}

/// # Safety
/// The CPU must support AVX2 and FMA, and the lengths must pass [`check_pack`].
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_avx2(x: &[f32], n_tokens: usize, cols: usize, panel: &mut [f32]) {
    let full_cols = cols - cols % 8;
    for first_token in (0..TOKEN_BLOCK).step_by(8) {
        if first_token + 8 <= n_tokens {
            for col in (0..full_cols).step_by(8) {
                let columns = transpose8(load8x8(x, first_token * cols + col, cols));
                store8x8(columns, panel, col * TOKEN_BLOCK + first_token, TOKEN_BLOCK);
            }
            for col in full_cols..cols {
                for token in first_token..first_token + 8 {
                    panel[col * TOKEN_BLOCK + token] = x[token * cols + col];
                }
            }
        } else {
            // The partial or empty group of tokens: zeros past `n_tokens`.
            for col in 0..cols {
                for token in first_token..first_token + 8 {
                    panel[col * TOKEN_BLOCK + token] = if token < n_tokens { x[token * cols + col] } else { 0.0 };
                }
            }
        }
    }
}

/// # Safety
/// The CPU must support AVX2 and FMA, and the lengths must pass [`check_unpack`].
#[target_feature(enable = "avx2,fma")]
unsafe fn unpack_avx2(tile: &[f32], n_rows: usize, n_tokens: usize, dst: &mut [f32], stride: usize) {
    let full_rows = n_rows - n_rows % 8;
    let full_tokens = n_tokens - n_tokens % 8;
    for first_token in (0..full_tokens).step_by(8) {
        for first_row in (0..full_rows).step_by(8) {
            let tokens = transpose8(load8x8(tile, first_row * TOKEN_BLOCK + first_token, TOKEN_BLOCK));
            store8x8(tokens, dst, first_token * stride + first_row, stride);
        }
    }
    // The tails: rows past the last full group of 8 for every token, then tokens past the last
    // full group of 8 for the full rows.
    for token in 0..n_tokens {
        for row in full_rows..n_rows {
            dst[token * stride + row] = tile[row * TOKEN_BLOCK + token];
        }
    }
    for token in full_tokens..n_tokens {
        for row in 0..full_rows {
            dst[token * stride + row] = tile[row * TOKEN_BLOCK + token];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::scalar;
    use crate::rows::SparseRows;

    /// Deterministic values in [-1, 1) (xorshift64*).
    fn values(n: usize, mut seed: u64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed ^= seed >> 12;
                seed ^= seed << 25;
                seed ^= seed >> 27;
                (seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// Rows of 0 to 40 % density (empty rows and every tail length included) over 1000
    /// columns, with signed zeros and infinities among the activations and biases.
    fn case(n_rows: usize) -> (SparseRows<u16>, Vec<f32>, Vec<f32>) {
        let cols = 1000;
        let draws = values(n_rows * cols, 7);
        let weights = values(n_rows * cols, 8);
        let mut rows = SparseRows::new(cols);
        for row in 0..n_rows {
            let keep = (row % 41) as f32 / 100.0;
            let entries = (0..cols)
                .filter(|&col| (draws[row * cols + col] + 1.0) / 2.0 < keep)
                .map(|col| (col, weights[row * cols + col]));
            rows.push_row(cols, entries);
        }
        let mut x = values(cols, 9);
        (x[3], x[500], x[999]) = (-0.0, f32::INFINITY, 0.0);
        let mut bias = values(n_rows, 10);
        (bias[0], bias[1]) = (-0.0, 0.0);
        (rows, x, bias)
    }

    #[test]
    fn streaming_spmv_matches_the_scalar_reference_bit_for_bit() {
        if !Isa::Avx2.is_supported() {
            return;
        }
        let (rows, x, bias) = case(300);
        for bias in [None, Some(&bias[..])] {
            let mut expected = vec![f32::NAN; rows.n_rows()];
            scalar::spmv(rows.view(0..rows.n_rows()), &x, bias, &mut expected);
            let mut found = vec![f32::NAN; rows.n_rows()];
            // SAFETY: AVX2 and FMA were detected; the lengths match.
            unsafe { spmv_avx2::<u16, SPMV_PAIRS>(rows.view(0..rows.n_rows()), &x, bias, &mut found, false) };
            let bits = |v: &[f32]| v.iter().map(|value| value.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&found), bits(&expected));
            assert!(expected.iter().any(|value| value.is_infinite()), "the case has no infinite output");
        }
    }

    #[test]
    fn large_spmv_takes_the_streaming_path_and_matches() {
        let Some(table) = kernels() else { return };
        let (rows, x, bias) = case(1600);
        let bytes = rows.len() * (size_of::<f32>() + size_of::<u16>());
        assert!(bytes > SPMV_STREAM_BYTES, "{bytes} bytes stay below the streaming threshold");
        let view = rows.view(0..rows.n_rows());
        let mut expected = vec![f32::NAN; rows.n_rows()];
        scalar::spmv(view, &x, Some(&bias), &mut expected);
        let mut found = vec![f32::NAN; rows.n_rows()];
        (table.spmv_u16)(view, &x, Some(&bias), &mut found);
        assert_eq!(
            found.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            expected.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
}
