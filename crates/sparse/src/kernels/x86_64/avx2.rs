//! AVX2 + FMA kernels, in the [sum order](crate#sum-order) of the scalar ones.
//!
//! SpMM works on a panel of 16 tokens stored token-minor (`panel[c * 16 + j]`): a nonzero
//! `(c, w)` is one broadcast of `w` and two fused multiply-adds of it against the 16 contiguous
//! activations of column `c` (one cache line), no gather. A row's four running sums take eight
//! ymm registers, enough independent chains to hide the FMA latency. The loops run column block
//! (384 columns), then panel, then row: a block's weights come from memory once and from cache
//! for every further panel, and each panel's 24 KiB slice stays in L1 across the rows; each row's
//! running value waits in the tile between blocks. Four column indices are read as one word;
//! each weight is broadcast straight from memory (`vbroadcastss`), which measured 0 to 15 %
//! faster than loading four weights as a vector and permuting each lane out of it.
//! Panels are made and tiles written back with 8 x 8 register transposes.
//!
//! SpMV has one token: the four running sums of a row are the lanes of one xmm register, each
//! step four fused multiply-adds against activations loaded one by one (AVX2 gathers are slower
//! than scalar loads on this Zen 3). On cache-resident matrices four rows advance together, so
//! that four dependency chains are in flight, and the next rows' entries are prefetched; above
//! 1 MiB of entries rows run one at a time, one sequential stream that the hardware prefetchers
//! follow, and a segment's last entries take one masked step (lanes past the end add -0.0).
//!
//! N:M matrices have their own kernels, which read the packed positions directly (no decoding):
//! four consecutive nonzero slots take the same path as four CSR entries; padding slots (zeros)
//! fall back to one slot at a time, which keeps the sum order of the CSR kernels exactly.

use std::arch::x86_64::*;

use crate::Isa;
use crate::kernels::{
    Kernels, TOKEN_BLOCK, check_pack, check_spmm, check_spmm_nm, check_spmv, check_spmv_nm, check_unpack,
};
use crate::rows::{ColumnIndex, NmRows, RowsView};

static AVX2: Kernels = Kernels {
    isa: Isa::Avx2,
    spmv_u16: spmv::<u16>,
    spmv_u32: spmv::<u32>,
    spmm_u16: spmm::<u16>,
    spmm_u32: spmm::<u32>,
    spmv_nm: Some(spmv_nm),
    spmm_nm: Some(spmm_nm),
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
    /// fill whole bytes and a block's slots (`384 / m * n`) do too.
    fn byte_steps(self) -> bool {
        let bits = self.bits();
        let slots_per_block = (crate::rows::COL_BLOCK >> bits) << self.group_shift();
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
    unsafe {
        if bytes > SPMV_STREAM_BYTES { spmv_streaming_avx2(rows, x, bias, y) } else { spmv_avx2(rows, x, bias, y) }
    }
}

fn spmm<I: ColumnIndex + LoadFour>(
    rows: RowsView<'_, I>,
    panels: &[f32],
    n_panels: usize,
    bias: Option<&[f32]>,
    tile: &mut [f32],
) {
    check_spmm(&rows, panels, n_panels, bias, tile);
    // SAFETY: AVX2 and FMA were detected (see above); the lengths were checked.
    unsafe { spmm_avx2(rows, panels, n_panels, bias, tile) }
}

fn spmv_nm(rows: NmRows<'_>, x: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    check_spmv_nm(&rows, x, bias, y);
    // SAFETY: AVX2 and FMA were detected (see above); the lengths were checked.
    unsafe { with_pattern!(rows, spmv_nm_avx2(rows, x, bias, y)) }
}

fn spmm_nm(rows: NmRows<'_>, panels: &[f32], n_panels: usize, bias: Option<&[f32]>, tile: &mut [f32]) {
    check_spmm_nm(&rows, panels, n_panels, bias, tile);
    // SAFETY: AVX2 and FMA were detected (see above); the lengths were checked.
    unsafe { with_pattern!(rows, spmm_nm_avx2(rows, panels, n_panels, bias, tile)) }
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

/// Lane masks for the last `r` (0 to 3) entries of a segment: lanes `0..r` set.
static TAIL_MASKS: [[i32; 4]; 4] = [[0, 0, 0, 0], [-1, 0, 0, 0], [-1, -1, 0, 0], [-1, -1, -1, 0]];

/// `(s_0 + s_1) + (s_2 + s_3)` of the four lanes.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn sum_lanes(sums: __m128) -> f32 {
    // hadd gives (s_0 + s_1, s_2 + s_3, ..); the second hadd adds those two.
    let pairs = _mm_hadd_ps(sums, sums);
    _mm_cvtss_f32(_mm_hadd_ps(pairs, pairs))
}

/// The four running sums of a segment, advanced by four entries from `k` (all in the segment).
///
/// # Safety
/// Entries `k..k + 4` must exist, and their indices be `< x`'s length.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn spmv_quad<I: ColumnIndex + LoadFour>(
    sums: __m128,
    indices: *const I,
    values: *const f32,
    x: *const f32,
    k: usize,
) -> __m128 {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let [col0, col1, col2, col3] = I::load_four(indices.add(k));
        let activations = _mm_setr_ps(*x.add(col0), *x.add(col1), *x.add(col2), *x.add(col3));
        _mm_fmadd_ps(_mm_loadu_ps(values.add(k)), activations, sums)
    }
}

/// The last zero to three entries `k..end` of a non-empty segment, without a branch on their
/// number: lanes past the segment compute on its last entry and are then discarded.
///
/// # Safety
/// `start < end`, `k <= end`, entries `..end` must exist and their indices be `< x`'s length.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn spmv_tail<I: ColumnIndex>(
    sums: __m128,
    indices: *const I,
    values: *const f32,
    x: *const f32,
    k: usize,
    end: usize,
) -> __m128 {
    let entry = |j: usize| (k + j).min(end - 1);
    // SAFETY: every entry read is `<= end - 1`, which exists; see the caller's guarantee.
    unsafe {
        let weights = _mm_setr_ps(*values.add(entry(0)), *values.add(entry(1)), *values.add(entry(2)), 0.0);
        let activations = _mm_setr_ps(
            *x.add((*indices.add(entry(0))).col()),
            *x.add((*indices.add(entry(1))).col()),
            *x.add((*indices.add(entry(2))).col()),
            0.0,
        );
        let keep = _mm_castsi128_ps(_mm_loadu_si128(TAIL_MASKS[end - k].as_ptr().cast()));
        _mm_blendv_ps(sums, _mm_fmadd_ps(weights, activations, sums), keep)
    }
}

/// Finishes one row's segment from entry `k` (quads, then the tail) and returns the new running
/// value; an empty segment adds `(+0.0 + +0.0) + (+0.0 + +0.0)`.
///
/// # Safety
/// Entries `start..end` must exist, with indices `< x`'s length, and `start <= k <= end`.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn spmv_finish<I: ColumnIndex + LoadFour>(
    mut sums: __m128,
    indices: *const I,
    values: *const f32,
    x: *const f32,
    (start, end): (usize, usize),
    mut k: usize,
) -> f32 {
    if start == end {
        return _mm_cvtss_f32(sums) + 0.0;
    }
    while k + 4 <= end {
        // SAFETY: entries `k..k + 4` are in the segment; see the caller's guarantee.
        sums = unsafe { spmv_quad(sums, indices, values, x, k) };
        k += 4;
    }
    // SAFETY: the segment is not empty and `k <= end`; see the caller's guarantee.
    sum_lanes(unsafe { spmv_tail(sums, indices, values, x, k, end) })
}

/// # Safety
/// The CPU must support AVX2 and FMA, and the lengths must pass [`check_spmv`].
#[target_feature(enable = "avx2,fma")]
unsafe fn spmv_avx2<I: ColumnIndex + LoadFour>(rows: RowsView<'_, I>, x: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let indices = rows.indices().as_ptr();
    let values = rows.values().as_ptr();
    let x = x.as_ptr();
    let start_value = |row: usize| _mm_setr_ps(bias.map_or(0.0, |bias| bias[row]), 0.0, 0.0, 0.0);
    // SAFETY (every call below): segments come from the `RowsView`, whose entries exist and
    // whose indices are `< cols == x.len()` (its invariant, with `check_spmv`).
    let first_rest = y.len() - y.len() % 4;
    let (out4, rest) = y.as_chunks_mut::<4>();
    // Four rows at a time: four latency chains in flight instead of one. Lane j of a row's sums
    // is the running sum s_j of the sum order.
    for (group, out) in out4.iter_mut().enumerate() {
        let row = 4 * group;
        let mut running = [start_value(row), start_value(row + 1), start_value(row + 2), start_value(row + 3)];
        for block in 0..rows.n_blocks() {
            let segments = [
                rows.segment(row, block),
                rows.segment(row + 1, block),
                rows.segment(row + 2, block),
                rows.segment(row + 3, block),
            ];
            // The next group's entries in this block, ahead of time: interleaving four rows
            // defeats the hardware prefetchers, and a small SpMV is bound by L2 latency.
            if row + 8 <= rows.n_rows() {
                let (next_start, next_end) = (rows.segment(row + 4, block).0, rows.segment(row + 7, block).1);
                let next_end = next_end.min(next_start + 256);
                for entry in (next_start..next_end).step_by(16) {
                    // SAFETY: `entry < next_end <= values.len() == indices.len()`.
                    unsafe {
                        _mm_prefetch::<_MM_HINT_T0>(values.add(entry).cast());
                        if entry % 32 < 16 {
                            _mm_prefetch::<_MM_HINT_T0>(indices.add(entry).cast());
                        }
                    }
                }
            }
            let [mut sums0, mut sums1, mut sums2, mut sums3] = running;
            let quads = segments.map(|(start, end)| (end - start) / 4);
            let common = quads[0].min(quads[1]).min(quads[2]).min(quads[3]);
            for quad in 0..common {
                // SAFETY: `quad < common`, so entries `start + 4 * quad ..` plus four are in each
                // segment; see above for the indices.
                unsafe {
                    sums0 = spmv_quad(sums0, indices, values, x, segments[0].0 + 4 * quad);
                    sums1 = spmv_quad(sums1, indices, values, x, segments[1].0 + 4 * quad);
                    sums2 = spmv_quad(sums2, indices, values, x, segments[2].0 + 4 * quad);
                    sums3 = spmv_quad(sums3, indices, values, x, segments[3].0 + 4 * quad);
                }
            }
            // SAFETY: each segment's own entries, from past its common quads; see above.
            let finish = |sums, i: usize| unsafe {
                let value = spmv_finish(sums, indices, values, x, segments[i], segments[i].0 + 4 * common);
                _mm_setr_ps(value, 0.0, 0.0, 0.0)
            };
            running = [finish(sums0, 0), finish(sums1, 1), finish(sums2, 2), finish(sums3, 3)];
        }
        *out = running.map(|sums| _mm_cvtss_f32(sums));
    }
    for (i, out) in rest.iter_mut().enumerate() {
        let row = first_rest + i;
        let mut running = start_value(row);
        for block in 0..rows.n_blocks() {
            let segment = rows.segment(row, block);
            // SAFETY: the row's own segment; see above.
            let value = unsafe { spmv_finish(running, indices, values, x, segment, segment.0) };
            running = _mm_setr_ps(value, 0.0, 0.0, 0.0);
        }
        *out = _mm_cvtss_f32(running);
    }
}

/// Above this many bytes of entries SpMV reads them from memory rather than from the caches, and
/// one row at a time (one sequential stream for the hardware prefetchers) beats four interleaved
/// rows with software prefetches: 1.5 to 1.7x faster at 4096 x 4096, 10 % slower on the
/// cache-resident MiniLM layers.
const SPMV_STREAM_BYTES: usize = 1 << 20;

/// A weight of -0.0 and an activation of +0.0 for the lanes past a segment's end: their product,
/// -0.0, leaves every sum as it is (`s + -0.0 == s` for every `s`, -0.0 included).
static NEG_ZERO: f32 = -0.0;
static ZERO: f32 = 0.0;

/// SpMV one row at a time, for matrices larger than the caches (see [`SPMV_STREAM_BYTES`]): the
/// entries stream in order, and a segment's last zero to three entries take one masked step
/// without a branch on their number.
///
/// # Safety
/// The CPU must support AVX2 and FMA, and the lengths must pass [`check_spmv`].
#[target_feature(enable = "avx2,fma")]
unsafe fn spmv_streaming_avx2<I: ColumnIndex + LoadFour>(
    rows: RowsView<'_, I>,
    x: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let indices = rows.indices().as_ptr();
    let values = rows.values().as_ptr();
    let x = x.as_ptr();
    for (row, out) in y.iter_mut().enumerate() {
        let mut running = bias.map_or(0.0, |bias| bias[row]);
        for block in 0..rows.n_blocks() {
            let (start, end) = rows.segment(row, block);
            let mut sums = _mm_setr_ps(running, 0.0, 0.0, 0.0);
            if start < end {
                let mut k = start;
                // Segments come from the `RowsView`, whose entries exist and whose indices are
                // `< cols == x.len()` (its invariant, with `check_spmv`).
                while k + 4 <= end {
                    // SAFETY: entries `k..k + 4` are in the segment (see above).
                    sums = unsafe { spmv_quad(sums, indices, values, x, k) };
                    k += 4;
                }
                // Lanes past the end read entry `end - 1` (in the segment) and then take
                // `NEG_ZERO * ZERO` instead, without a branch.
                // SAFETY: every entry read is `<= end - 1`, in the segment, and every pointer
                // dereferenced is either such an entry's weight and activation or a static.
                unsafe {
                    let lane = |i: usize| {
                        let entry = (k + i).min(end - 1);
                        let (weight, activation) = (values.add(entry), x.add((*indices.add(entry)).col()));
                        if k + i < end { (weight, activation) } else { (&raw const NEG_ZERO, &raw const ZERO) }
                    };
                    let ((w0, a0), (w1, a1), (w2, a2)) = (lane(0), lane(1), lane(2));
                    let weights = _mm_setr_ps(*w0, *w1, *w2, -0.0);
                    let activations = _mm_setr_ps(*a0, *a1, *a2, 0.0);
                    sums = _mm_fmadd_ps(weights, activations, sums);
                }
            }
            running = sum_lanes(sums);
        }
        *out = running;
    }
}

/// Two ymm registers: one running sum over a panel's 16 tokens.
type Sum16 = [__m256; 2];

/// `sum += weight * panel column` for the 16 floats at `column`.
///
/// # Safety
/// `column` must point to 16 readable f32.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn fma16(sum: &mut Sum16, weight: *const f32, column: *const f32) {
    // SAFETY: the caller guarantees a readable `weight` and 16 readable f32 from `column`.
    unsafe {
        let weight = _mm256_broadcast_ss(&*weight);
        sum[0] = _mm256_fmadd_ps(weight, _mm256_loadu_ps(column), sum[0]);
        sum[1] = _mm256_fmadd_ps(weight, _mm256_loadu_ps(column.add(8)), sum[1]);
    }
}

#[target_feature(enable = "avx2,fma")]
#[inline]
fn add16(a: Sum16, b: Sum16) -> Sum16 {
    [_mm256_add_ps(a[0], b[0]), _mm256_add_ps(a[1], b[1])]
}

/// Four consecutive stored indices at once, read as whole words: scalar loads and shifts, which
/// beat the vector loads and lane extractions the compiler otherwise emits.
trait LoadFour: Copy {
    /// # Safety
    /// `at` must point to four readable indices.
    unsafe fn load_four(at: *const Self) -> [usize; 4];
}

impl LoadFour for u16 {
    #[inline(always)]
    unsafe fn load_four(at: *const u16) -> [usize; 4] {
        // SAFETY: the caller guarantees 4 readable u16, which are 8 bytes.
        let word = unsafe { at.cast::<u64>().read_unaligned() };
        std::array::from_fn(|i| (word >> (16 * i)) as u16 as usize)
    }
}

impl LoadFour for u32 {
    #[inline(always)]
    unsafe fn load_four(at: *const u32) -> [usize; 4] {
        // SAFETY: the caller guarantees 4 readable u32, which are two 8-byte words.
        let (low, high) = unsafe { (at.cast::<u64>().read_unaligned(), at.add(2).cast::<u64>().read_unaligned()) };
        [low as u32 as usize, (low >> 32) as usize, high as u32 as usize, (high >> 32) as usize]
    }
}

/// # Safety
/// The CPU must support AVX2 and FMA, and the lengths must pass [`check_spmm`].
#[target_feature(enable = "avx2,fma")]
unsafe fn spmm_avx2<I: ColumnIndex + LoadFour>(
    rows: RowsView<'_, I>,
    panels: &[f32],
    n_panels: usize,
    bias: Option<&[f32]>,
    tile: &mut [f32],
) {
    let indices = rows.indices().as_ptr();
    let values = rows.values().as_ptr();
    let n_rows = rows.n_rows();
    let panel_len = rows.cols() * TOKEN_BLOCK;
    // Column block outermost: the block's weights are read once from memory and then from cache
    // for every panel, and each panel's 24 KiB slice stays in L1 across the rows.
    for block in 0..rows.n_blocks() {
        for panel_idx in 0..n_panels {
            // SAFETY: `check_spmm` made `panels` hold `n_panels` panels of `panel_len` floats.
            let panel = unsafe { panels.as_ptr().add(panel_idx * panel_len) };
            let tile = &mut tile[panel_idx * n_rows * TOKEN_BLOCK..][..n_rows * TOKEN_BLOCK];
            for (row, out) in tile.chunks_exact_mut(TOKEN_BLOCK).enumerate() {
                let out = out.as_mut_ptr();
                let running: Sum16 = if block == 0 {
                    [_mm256_set1_ps(bias.map_or(0.0, |bias| bias[row])); 2]
                } else {
                    // SAFETY: `out` is this row's 16 floats of the tile.
                    unsafe { [_mm256_loadu_ps(out), _mm256_loadu_ps(out.add(8))] }
                };
                let zero = [_mm256_setzero_ps(); 2];
                let (mut sum0, mut sum1, mut sum2, mut sum3) = (running, zero, zero, zero);
                let (start, end) = rows.segment(row, block);
                let mut k = start;
                // Every entry used below is `< end <= values.len() == indices.len()` by the
                // `RowsView` invariant, and every stored index is `< cols`, so
                // `col * 16 + 16 <= panel_len`.
                // SAFETY: callers pass stored columns, within the panel as just said.
                let column = |col: usize| unsafe { panel.add(col * TOKEN_BLOCK) };
                while k + 4 <= end {
                    // SAFETY: entries `k..k + 4` are in the segment (see above).
                    unsafe {
                        let [col0, col1, col2, col3] = I::load_four(indices.add(k));
                        fma16(&mut sum0, values.add(k), column(col0));
                        fma16(&mut sum1, values.add(k + 1), column(col1));
                        fma16(&mut sum2, values.add(k + 2), column(col2));
                        fma16(&mut sum3, values.add(k + 3), column(col3));
                    }
                    k += 4;
                }
                // The last one to three entries, in sums 0, 1 and 2.
                // SAFETY: each entry is read only when it is before `end` (see above).
                unsafe {
                    if k < end {
                        fma16(&mut sum0, values.add(k), column((*indices.add(k)).col()));
                        if k + 1 < end {
                            fma16(&mut sum1, values.add(k + 1), column((*indices.add(k + 1)).col()));
                            if k + 2 < end {
                                fma16(&mut sum2, values.add(k + 2), column((*indices.add(k + 2)).col()));
                            }
                        }
                    }
                }
                let total = add16(add16(sum0, sum1), add16(sum2, sum3));
                // SAFETY: `out` is this row's 16 floats of the tile.
                unsafe {
                    _mm256_storeu_ps(out, total[0]);
                    _mm256_storeu_ps(out.add(8), total[1]);
                }
            }
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
    /// `min(n, 4)`, which every four-slot step is: a block starts on a multiple of its slots
    /// (`384 / m * n`, itself a multiple of `min(n, 4)`), and steps never split.
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

/// One N:M row's SpMV state within a column block: its four running sums as xmm lanes, and the
/// lane the next nonzero goes to.
#[derive(Clone, Copy)]
struct NmLanes {
    sums: __m128,
    phase: usize,
}

/// Advances `lanes` by one slot: skipped when zero, else added into lane `phase`. Through
/// memory, as the lane is only known at run time: the path of padding slots and block ends.
///
/// # Safety
/// `values.add(slot)` must be readable, `positions.word(slot)` safe, and the slot's column `<`
/// the length of `x`.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn nm_spmv_slot<P: Pattern>(
    lanes: &mut NmLanes,
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
            let mut sums = [0.0f32; 4];
            _mm_storeu_ps(sums.as_mut_ptr(), lanes.sums);
            sums[lanes.phase] = weight.mul_add(*x.add(col), sums[lanes.phase]);
            lanes.sums = _mm_loadu_ps(sums.as_ptr());
            lanes.phase = (lanes.phase + 1) % 4;
        }
    }
}

/// Advances `lanes` by the four slots from `slot`: one vector fused multiply-add when they are
/// all nonzero and start at lane 0 (always so in a `full` row), else slot by slot.
///
/// # Safety
/// Slots `slot..slot + 4` must be in the row, with columns `<` the length of `x`.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn nm_spmv_quad<P: Pattern>(
    lanes: &mut NmLanes,
    full: bool,
    values: *const f32,
    positions: Positions<P>,
    x: *const f32,
    slot: usize,
) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let weights = _mm_loadu_ps(values.add(slot));
        if full || (lanes.phase == 0 && _mm_movemask_ps(_mm_cmpneq_ps(weights, _mm_setzero_ps())) == 0b1111) {
            let (word, base) = (positions.step_word(slot), positions.group_col(slot));
            let activation = |i: usize| *x.add(base + positions.quad_offset(i) + positions.get(word, i));
            let activations = _mm_setr_ps(activation(0), activation(1), activation(2), activation(3));
            lanes.sums = _mm_fmadd_ps(weights, activations, lanes.sums);
        } else {
            for slot in slot..slot + 4 {
                nm_spmv_slot(lanes, values, positions, x, slot);
            }
        }
    }
}

/// # Safety
/// The CPU must support AVX2 and FMA, and the lengths must pass [`check_spmv_nm`].
#[target_feature(enable = "avx2,fma")]
unsafe fn spmv_nm_avx2<P: Pattern>(pattern: P, rows: NmRows<'_>, x: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let (per_row, row_bytes) = (rows.per_row(), rows.row_bytes());
    let x = x.as_ptr();
    let row_data = |row: usize| {
        let values = rows.values()[row * per_row..][..per_row].as_ptr();
        // SAFETY: `row < n_rows`, and the packed positions hold `row_bytes` per row plus padding.
        let packed = unsafe { rows.packed().as_ptr().add(row * row_bytes) };
        (values, Positions { packed, pattern }, rows.is_full(row))
    };
    let start = |row: usize| NmLanes { sums: _mm_setr_ps(bias.map_or(0.0, |bias| bias[row]), 0.0, 0.0, 0.0), phase: 0 };
    // Each block restarts the lanes from the running value, as the sum order says.
    let restart = |lanes: NmLanes| NmLanes { sums: _mm_setr_ps(sum_lanes(lanes.sums), 0.0, 0.0, 0.0), phase: 0 };
    // Every slot below comes from `block_slots`, so it is in the row and its position word within
    // the row's bytes plus padding; every position is `< m`, so every column is `< cols ==
    // x.len()` (the `NmRows` invariants, with `check_spmv_nm`).
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
        // Four named states (not an array walked by a loop), so that they stay in registers.
        let (mut lanes0, mut lanes1, mut lanes2, mut lanes3) =
            (start(row), start(row + 1), start(row + 2), start(row + 3));
        for block in 0..rows.n_blocks() {
            if block > 0 {
                (lanes0, lanes1, lanes2, lanes3) = (restart(lanes0), restart(lanes1), restart(lanes2), restart(lanes3));
            }
            let (first, last) = rows.block_slots(block);
            let mut slot = first;
            while slot + 4 <= last {
                // SAFETY: slots `slot..slot + 4` are in the block (see above).
                unsafe {
                    nm_spmv_quad(&mut lanes0, full0, values0, positions0, x, slot);
                    nm_spmv_quad(&mut lanes1, full1, values1, positions1, x, slot);
                    nm_spmv_quad(&mut lanes2, full2, values2, positions2, x, slot);
                    nm_spmv_quad(&mut lanes3, full3, values3, positions3, x, slot);
                }
                slot += 4;
            }
            for slot in slot..last {
                // SAFETY: `slot` is in the block (see above).
                unsafe {
                    nm_spmv_slot(&mut lanes0, values0, positions0, x, slot);
                    nm_spmv_slot(&mut lanes1, values1, positions1, x, slot);
                    nm_spmv_slot(&mut lanes2, values2, positions2, x, slot);
                    nm_spmv_slot(&mut lanes3, values3, positions3, x, slot);
                }
            }
        }
        *out = [lanes0, lanes1, lanes2, lanes3].map(|lanes| sum_lanes(lanes.sums));
    }
    for (i, out) in rest.iter_mut().enumerate() {
        let row = first_rest + i;
        let (values, positions, full) = row_data(row);
        let mut lanes = start(row);
        for block in 0..rows.n_blocks() {
            if block > 0 {
                lanes = restart(lanes);
            }
            let (first, last) = rows.block_slots(block);
            let mut slot = first;
            while slot + 4 <= last {
                // SAFETY: slots `slot..slot + 4` are in the block (see above).
                unsafe { nm_spmv_quad(&mut lanes, full, values, positions, x, slot) };
                slot += 4;
            }
            for slot in slot..last {
                // SAFETY: `slot` is in the block (see above).
                unsafe { nm_spmv_slot(&mut lanes, values, positions, x, slot) };
            }
        }
        *out = sum_lanes(lanes.sums);
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
    for block in 0..rows.n_blocks() {
        let (first, last) = rows.block_slots(block);
        for panel_idx in 0..n_panels {
            // SAFETY: `check_spmm_nm` made `panels` hold `n_panels` panels of `panel_len` floats.
            let panel = unsafe { panels.as_ptr().add(panel_idx * panel_len) };
            let tile = &mut tile[panel_idx * n_rows * TOKEN_BLOCK..][..n_rows * TOKEN_BLOCK];
            for (row, out) in tile.chunks_exact_mut(TOKEN_BLOCK).enumerate() {
                let out = out.as_mut_ptr();
                let running: Sum16 = if block == 0 {
                    [_mm256_set1_ps(bias.map_or(0.0, |bias| bias[row])); 2]
                } else {
                    // SAFETY: `out` is this row's 16 floats of the tile.
                    unsafe { [_mm256_loadu_ps(out), _mm256_loadu_ps(out.add(8))] }
                };
                let zero = [_mm256_setzero_ps(); 2];
                let (mut sum0, mut sum1, mut sum2, mut sum3) = (running, zero, zero, zero);
                let values = rows.values()[row * per_row..][..per_row].as_ptr();
                let positions = Positions {
                    // SAFETY: `row < n_rows`; the positions hold `row_bytes` per row plus padding.
                    packed: unsafe { rows.packed().as_ptr().add(row * row_bytes) },
                    pattern,
                };
                // Every slot used below is `< last <= per_row`, so its value is in the row and its
                // position word within the row's bytes plus padding; every position is `< m`, so
                // `col < cols` and `col * 16 + 16 <= panel_len` (the `NmRows` invariants, with
                // `check_spmm_nm`).
                // SAFETY: callers pass slot columns, within the panel as just said.
                let column = |col: usize| unsafe { panel.add(col * TOKEN_BLOCK) };
                // The next nonzero goes to sum `phase`; zero (padding) slots are skipped. The
                // sums stay in registers: every access names one of them.
                let mut phase = 0;
                // One slot, the slow path: skipped when zero, else added into sum `phase`. Each
                // arm names its sum, which keeps all four in registers.
                macro_rules! one_slot {
                    ($slot:expr) => {{
                        let slot = $slot;
                        // SAFETY: `slot` is in the block (see above).
                        unsafe {
                            if *values.add(slot) != 0.0 {
                                let column = column(positions.group_col(slot) + positions.get(positions.word(slot), 0));
                                let weight = values.add(slot);
                                match phase {
                                    0 => fma16(&mut sum0, weight, column),
                                    1 => fma16(&mut sum1, weight, column),
                                    2 => fma16(&mut sum2, weight, column),
                                    _ => fma16(&mut sum3, weight, column),
                                }
                                phase = (phase + 1) % 4;
                            }
                        }
                    }};
                }
                // Four consecutive slots from sum 0.
                macro_rules! quad {
                    ($slot:expr) => {{
                        let slot = $slot;
                        // SAFETY: slots `slot..slot + 4` are in the block, starting a step (see
                        // above and `Positions::quad_offset`).
                        unsafe {
                            let (word, base) = (positions.step_word(slot), positions.group_col(slot));
                            let at = |i: usize| column(base + positions.quad_offset(i) + positions.get(word, i));
                            fma16(&mut sum0, values.add(slot), at(0));
                            fma16(&mut sum1, values.add(slot + 1), at(1));
                            fma16(&mut sum2, values.add(slot + 2), at(2));
                            fma16(&mut sum3, values.add(slot + 3), at(3));
                        }
                    }};
                }
                let mut slot = first;
                if rows.is_full(row) {
                    // No padding: every step is four nonzeros from sum 0, as in CSR.
                    while slot + 4 <= last {
                        quad!(slot);
                        slot += 4;
                    }
                } else {
                    while slot + 4 <= last {
                        // SAFETY: slots `slot..slot + 4` are in the block (see above).
                        let weights = unsafe { _mm_loadu_ps(values.add(slot)) };
                        let nonzero = _mm_movemask_ps(_mm_cmpneq_ps(weights, _mm_setzero_ps()));
                        if phase == 0 && nonzero == 0b1111 {
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
                let total = add16(add16(sum0, sum1), add16(sum2, sum3));
                // SAFETY: `out` is this row's 16 floats of the tile.
                unsafe {
                    _mm256_storeu_ps(out, total[0]);
                    _mm256_storeu_ps(out.add(8), total[1]);
                }
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
    // SAFETY: the slice is indexed (and bounds-checked) to exactly 8 floats before the load.
    std::array::from_fn(|i| unsafe { _mm256_loadu_ps(src[at + i * stride..][..8].as_ptr()) })
}

/// Stores `rows[i]` to `dst[at + i * stride ..][..8]` for `i` in `0..8`.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn store8x8(rows: [__m256; 8], dst: &mut [f32], at: usize, stride: usize) {
    for (i, row) in rows.into_iter().enumerate() {
        // SAFETY: the slice is indexed (and bounds-checked) to exactly 8 floats before the store.
        unsafe { _mm256_storeu_ps(dst[at + i * stride..][..8].as_mut_ptr(), row) };
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
            unsafe { spmv_streaming_avx2(rows.view(0..rows.n_rows()), &x, bias, &mut found) };
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
