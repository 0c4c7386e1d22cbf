//! The AVX2 + FMA dense product: packed panels and a 6 x 16 register tile.
//!
//! The loop nest is the one BLIS uses, with the weights packed a chunk of outputs at a time. The
//! outputs are cut (evenly) into chunks of whole strips of [`NR`] outputs whose packed weights
//! take at most 1 MiB ([`BUDGET`]: all of a 384 x 384 layer, 512 outputs of a `[1536, 384]` one,
//! 64 of a 4096 x 4096 one). A buffer kept by each thread and reused from call to call holds the
//! chunk being worked on: no call allocates or zeroes a copy of the whole matrix, the weights are
//! read from memory once (by the packing), and the packed chunk is read from cache by every
//! block of tokens.
//!
//! With one chunk, each block of [`MC`] tokens is packed just before use, one block of the inner
//! dimension at a time (so it is still in L2). With several, the tokens are packed once, in
//! groups of at most 4 MiB of whole blocks, and every chunk reads them; a second group means
//! packing every chunk again (a group holds at least 144 tokens up to 4096 inputs, where one
//! more pass over the weights costs well under a tenth of a group's arithmetic). A matrix whose
//! packed copy fits in 4 MiB (every MiniLM and BERT-base layer) and whose tokens take more than
//! one group is therefore packed whole, as one chunk: on 3264 tokens through a `[384, 1536]`
//! layer, chunks cost about 10 % (the weights packed 7 times, the tokens read back from L3).
//!
//! In a chunk, block after block of the inner dimension (cut into blocks of at most [`KC`],
//! evenly: 384 becomes two blocks of 192), each strip is k-major: one step of the tile reads 16
//! consecutive floats. The columns of a block of tokens are packed into strips of [`MR`] rows,
//! k-major with a stride of 8 (so that 8 x 8 register transposes do the packing; two lanes of
//! each step are zero). A weight strip (`kc x 16` floats, at most 16 KiB) stays in L1 while the
//! token strips of the block stream from L2, and the block's outputs in the chunk stay in L2
//! across the blocks of the inner dimension. The tile keeps 12 accumulators of 8 lanes, enough
//! to cover the FMA latency on two pipes.
//!
//! Each output is the bias (or 0) followed by one fused multiply-add per product in increasing
//! `k`, whatever the chunks, the groups and the thread count; outputs leave the registers between
//! blocks of the inner dimension as f32, which rounds nothing. Threads take the token blocks of
//! each chunk or, when there are fewer token blocks than threads, whole chunks (each into an
//! output of its own, copied into `y` afterwards); either way one thread computes each output.
//! Edge tiles (fewer than 6 tokens or 16 outputs left) run the same tile on zero-padded panels
//! into a local buffer and copy back the part that exists.
//!
//! The buffers a thread keeps hold at most 4 MiB of weights and 4 MiB of tokens (more only for
//! inner dimensions above 10922), the largest that thread has needed; rayon workers that only
//! help another thread's call keep at most 1 MiB of weights and 96 KiB of tokens.

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::thread::LocalKey;

use rayon::prelude::*;

/// Rows (tokens) per register tile.
const MR: usize = 6;
/// Columns (outputs) per register tile: two vectors of 8.
const NR: usize = 16;
/// Largest block of the inner dimension.
const KC: usize = 256;
/// Largest block of tokens packed at once (a multiple of [`MR`]).
const MC: usize = 72;
/// Floats per step of a packed token strip: [`MR`] rows and two zero lanes.
const MR_STRIDE: usize = 8;
/// How much packed data a call keeps at once.
const BUDGET: Budget = Budget { chunk_floats: 1 << 18, token_floats: 1 << 20, whole_floats: 1 << 20 };

/// Bounds on the packed buffers, in floats.
#[derive(Debug, Clone, Copy)]
struct Budget {
    /// Most packed weights in one chunk (1 MiB), unless a single strip is larger.
    chunk_floats: usize,
    /// Most packed tokens kept for the chunks to share (4 MiB), unless a single block of [`MC`]
    /// tokens is larger.
    token_floats: usize,
    /// Most packed weights in the one chunk of a matrix whose tokens take several groups (4 MiB).
    whole_floats: usize,
}

thread_local! {
    /// This thread's packed weights, reused from call to call.
    static PACKED_WEIGHTS: RefCell<Aligned> = const { RefCell::new(Aligned::new()) };
    /// This thread's packed tokens, reused from call to call.
    static PACKED_TOKENS: RefCell<Aligned> = const { RefCell::new(Aligned::new()) };
}

/// Whether this CPU can run [`linear`].
pub(super) fn is_supported() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Floats in 32-byte aligned storage, so that every vector load of a packed panel stays within
/// one cache line.
#[derive(Clone)]
struct Aligned {
    storage: Vec<__m256>,
}

impl Aligned {
    const fn new() -> Aligned {
        Aligned { storage: Vec::new() }
    }

    fn zeroed(len: usize) -> Aligned {
        // SAFETY: all-zero bits are a valid `__m256` (eight 0.0 lanes); `_mm256_setzero_ps`
        // would need AVX in this safe context.
        let zero = unsafe { std::mem::zeroed::<__m256>() };
        Aligned { storage: vec![zero; len.div_ceil(8)] }
    }

    /// The first `len` floats, after growing the storage (zeroed) if it is shorter.
    fn floats(&mut self, len: usize) -> &mut [f32] {
        if self.storage.len() * 8 < len {
            self.storage = Vec::new();
            *self = Aligned::zeroed(len);
        }
        // SAFETY: the storage holds `storage.len() * 8 >= len` initialised f32 lanes (a
        // `__m256` is eight f32 without padding, and its alignment exceeds an f32's), borrowed
        // mutably through `self` for the returned lifetime.
        unsafe { std::slice::from_raw_parts_mut(self.storage.as_mut_ptr().cast::<f32>(), len) }
    }

    /// All the floats of the storage.
    fn all(&self) -> &[f32] {
        // SAFETY: as in `floats`, the storage holds `storage.len() * 8` initialised f32 lanes,
        // borrowed shared through `self`.
        unsafe { std::slice::from_raw_parts(self.storage.as_ptr().cast::<f32>(), self.storage.len() * 8) }
    }
}

/// Runs `f` on `len` floats of this thread's buffer `key`, or of a fresh one when that buffer is
/// in use: rayon may run another product on this thread while it waits inside this one.
fn with_scratch<R>(key: &'static LocalKey<RefCell<Aligned>>, len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => f(buffer.floats(len)),
        Err(_) => f(Aligned::zeroed(len).floats(len)),
    })
}

/// Splits `total` into blocks of at most `max`, as even as possible: (block count, block size).
/// For `total > 0` every block is non-empty: `(count - 1) * size <= (count - 1) * max < total`.
fn even_blocks(total: usize, max: usize) -> (usize, usize) {
    let count = total.div_ceil(max).max(1);
    (count, total.div_ceil(count))
}

/// How the inner dimension (`cols`) is cut into blocks.
#[derive(Debug, Clone, Copy)]
struct InnerBlocks {
    cols: usize,
    count: usize,
    /// The length of every block but maybe the last, which is shorter.
    max: usize,
}

impl InnerBlocks {
    fn new(cols: usize) -> InnerBlocks {
        let (count, max) = even_blocks(cols, KC);
        InnerBlocks { cols, count, max }
    }

    /// The blocks in increasing order, as (first column, length).
    fn iter(self) -> impl Iterator<Item = (usize, usize)> {
        (0..self.count).map(move |block| {
            let start = block * self.max;
            (start, self.max.min(self.cols - start))
        })
    }
}

/// `y = x weights^T + bias` (or without the bias); the shapes and lengths have been checked by
/// the caller, `n_tokens`, `rows` and `cols` are non-zero.
///
/// # Panics
/// If the slices are shorter than the shapes say (the caller checked they are not).
pub(super) fn linear(
    x: &[f32],
    n_tokens: usize,
    weights: &[f32],
    rows: usize,
    cols: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    linear_in_chunks(x, n_tokens, weights, rows, cols, bias, y, BUDGET);
}

/// A whole weight matrix packed once for the tile (one chunk of every row, as [`pack_chunk`]
/// lays it out), for products that would otherwise pack it on every call.
#[derive(Clone)]
pub(super) struct Packed {
    data: Aligned,
    rows: usize,
    cols: usize,
}

impl Packed {
    /// Packs `weights` (`[rows, cols]`, non-empty, lengths checked by the caller).
    pub(super) fn new(weights: &[f32], rows: usize, cols: usize) -> Packed {
        assert!(is_supported(), "the AVX2 dense product needs AVX2 and FMA");
        assert!(rows > 0 && cols > 0 && weights.len() >= rows * cols);
        let mut data = Aligned::zeroed(rows.div_ceil(NR) * NR * cols);
        let packed = data.floats(rows.div_ceil(NR) * NR * cols);
        // SAFETY: AVX2 and FMA were asserted above.
        unsafe { pack_chunk(weights, rows, InnerBlocks::new(cols), packed) };
        Packed { data, rows, cols }
    }
}

/// Whether [`linear_packed`] should run `n_tokens` through a `[rows, cols]` matrix on `threads`
/// threads: on one thread, when the tokens take one block (the packed matrix is read once, as a
/// chunked product would read its chunks) or the matrix is small enough for [`linear`] to pack
/// it whole itself. Elsewhere [`linear`] chunks the weights (to keep them in L2 across many
/// tokens) or splits them over the threads.
pub(super) fn prepacked_pays(rows: usize, cols: usize, n_tokens: usize, threads: usize) -> bool {
    threads == 1 && (n_tokens <= MC || rows.div_ceil(NR) * NR * cols <= BUDGET.whole_floats)
}

/// [`linear`] on weights packed beforehand: the one-chunk path of [`linear_in_chunks`] without
/// its packing, so every output takes the same operations (the same bits). Lengths are checked
/// by the caller; `n_tokens` is non-zero.
pub(super) fn linear_packed(x: &[f32], n_tokens: usize, weights: &Packed, bias: Option<&[f32]>, y: &mut [f32]) {
    let (rows, cols) = (weights.rows, weights.cols);
    assert!(n_tokens > 0 && x.len() >= n_tokens * cols && y.len() >= n_tokens * rows);
    assert!(bias.is_none_or(|bias| bias.len() >= rows));
    let (x, y) = (&x[..n_tokens * cols], &mut y[..n_tokens * rows]);
    // `Packed::new` asserted AVX2 and FMA.
    whole_matrix_blocks(x, InnerBlocks::new(cols), weights.data.all(), rows, bias, y, false);
}

/// Every block of [`MC`] tokens of `x` (`[n_tokens, inner.cols]`) against all `rows` outputs
/// packed as one chunk (`packed`, laid out by [`pack_chunk`]), each block packed just before use
/// one block of the inner dimension at a time (so that it is still in L2, at most 96 KiB); the
/// blocks go to the current pool's threads when `parallel`. AVX2 and FMA must be available (the
/// callers assert it).
fn whole_matrix_blocks(
    x: &[f32],
    inner: InnerBlocks,
    packed: &[f32],
    rows: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    parallel: bool,
) {
    let cols = inner.cols;
    let block = |(block, y_block): (usize, &mut [f32])| {
        let mc = y_block.len() / rows;
        let tokens = Tokens::Rows(&x[block * MC * cols..][..mc * cols]);
        // SAFETY: AVX2 and FMA are available (the callers asserted it).
        unsafe { token_block(tokens, mc, inner, packed, rows, bias, y_block, rows, 0) };
    };
    if parallel {
        y.par_chunks_mut(MC * rows).enumerate().for_each(block);
    } else {
        y.chunks_mut(MC * rows).enumerate().for_each(block);
    }
}

/// [`linear`] within `budget` (at least one strip of weights and one block of tokens).
#[allow(clippy::too_many_arguments)]
fn linear_in_chunks(
    x: &[f32],
    n_tokens: usize,
    weights: &[f32],
    rows: usize,
    cols: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    budget: Budget,
) {
    assert!(is_supported(), "the AVX2 dense product needs AVX2 and FMA");
    assert!(n_tokens > 0 && rows > 0 && cols > 0, "the AVX2 dense product needs non-empty shapes");
    assert!(x.len() >= n_tokens * cols && weights.len() >= rows * cols && y.len() >= n_tokens * rows);
    assert!(bias.is_none_or(|bias| bias.len() >= rows));
    let (x, y) = (&x[..n_tokens * cols], &mut y[..n_tokens * rows]);
    let inner = InnerBlocks::new(cols);
    let n_strips = rows.div_ceil(NR);
    // Floats of one packed block of [`MC`] tokens, and tokens in one group shared by the chunks.
    let block_floats = MC / MR * MR_STRIDE * cols;
    let group_tokens = (budget.token_floats / block_floats).max(1) * MC;
    // With more tokens than one group, chunks would pack the weights again for every group and
    // read the packed tokens back from L3: a matrix small enough is then packed whole, once.
    let max_strips = if n_tokens > group_tokens && n_strips * NR * cols <= budget.whole_floats {
        n_strips
    } else {
        (budget.chunk_floats / (NR * cols)).max(1)
    };
    let (n_chunks, chunk_strips) = even_blocks(n_strips, max_strips);
    let threads = rayon::current_num_threads();
    if n_chunks == 1 {
        // The weights are packed once, then every block of tokens reads them.
        with_scratch(&PACKED_WEIGHTS, rows.div_ceil(NR) * NR * cols, |packed| {
            // SAFETY: `linear_in_chunks` asserted AVX2 and FMA above.
            unsafe { pack_chunk(weights, rows, inner, packed) };
            whole_matrix_blocks(x, inner, packed, rows, bias, y, threads > 1);
        });
        return;
    }
    // Several chunks: the tokens are packed once, a group of whole blocks at a time, and used by
    // every chunk; each group packs every chunk again.
    let chunk = |index: usize| {
        let first = index * chunk_strips * NR;
        (first, (chunk_strips * NR).min(rows - first))
    };
    with_scratch(&PACKED_TOKENS, n_tokens.min(group_tokens).div_ceil(MR) * MR_STRIDE * cols, |packed_tokens| {
        for (x_group, y_group) in x.chunks(group_tokens * cols).zip(y.chunks_mut(group_tokens * rows)) {
            let group_len = x_group.len() / cols;
            let packed_tokens = &mut packed_tokens[..group_len.div_ceil(MR) * MR_STRIDE * cols];
            let pack = |(dst, x_block): (&mut [f32], &[f32])| {
                // SAFETY: `linear_in_chunks` asserted AVX2 and FMA above.
                unsafe { pack_token_block(x_block, x_block.len() / cols, inner, dst) };
            };
            if threads > 1 {
                packed_tokens.par_chunks_mut(block_floats).zip(x_group.par_chunks(MC * cols)).for_each(pack);
            } else {
                packed_tokens.chunks_mut(block_floats).zip(x_group.chunks(MC * cols)).for_each(pack);
            }
            let packed_tokens = &*packed_tokens;
            if threads > 1 && group_len.div_ceil(MC) < threads {
                // Too few blocks of tokens to go round: the threads take whole chunks instead,
                // each packing its own and writing an output of its own ([group_len, width]).
                let outputs: Vec<Vec<f32>> = (0..n_chunks)
                    .into_par_iter()
                    .map(|index| {
                        let (first, width) = chunk(index);
                        let mut y_chunk = vec![0.0f32; group_len * width];
                        with_scratch(&PACKED_WEIGHTS, width.div_ceil(NR) * NR * cols, |packed| {
                            // SAFETY: `linear_in_chunks` asserted AVX2 and FMA above.
                            unsafe { pack_chunk(&weights[first * cols..][..width * cols], width, inner, packed) };
                            let bias = bias.map(|bias| &bias[first..][..width]);
                            for (y_block, a) in y_chunk.chunks_mut(MC * width).zip(packed_tokens.chunks(block_floats)) {
                                let mc = y_block.len() / width;
                                // SAFETY: as above.
                                unsafe {
                                    token_block(Tokens::Packed(a), mc, inner, packed, width, bias, y_block, width, 0)
                                };
                            }
                        });
                        y_chunk
                    })
                    .collect();
                for (index, y_chunk) in outputs.iter().enumerate() {
                    let (first, width) = chunk(index);
                    for (y_row, chunk_row) in y_group.chunks_exact_mut(rows).zip(y_chunk.chunks_exact(width)) {
                        y_row[first..][..width].copy_from_slice(chunk_row);
                    }
                }
                continue;
            }
            with_scratch(&PACKED_WEIGHTS, chunk_strips * NR * cols, |packed| {
                for index in 0..n_chunks {
                    let (first, width) = chunk(index);
                    let packed = &mut packed[..width.div_ceil(NR) * NR * cols];
                    // SAFETY: `linear_in_chunks` asserted AVX2 and FMA above.
                    unsafe { pack_chunk(&weights[first * cols..][..width * cols], width, inner, packed) };
                    let packed = &*packed;
                    let bias = bias.map(|bias| &bias[first..][..width]);
                    let block = |(y_block, a): (&mut [f32], &[f32])| {
                        let mc = y_block.len() / rows;
                        // SAFETY: as above.
                        unsafe { token_block(Tokens::Packed(a), mc, inner, packed, width, bias, y_block, rows, first) };
                    };
                    if threads > 1 {
                        y_group.par_chunks_mut(MC * rows).zip(packed_tokens.par_chunks(block_floats)).for_each(block);
                    } else {
                        y_group.chunks_mut(MC * rows).zip(packed_tokens.chunks(block_floats)).for_each(block);
                    }
                }
            });
        }
    });
}

/// Packs the `width` weight rows of a chunk (`weights` is `[width, cols]`) for the tile: block
/// after block of the inner dimension, each holding the chunk's `strips = ceil(width / NR)`
/// strips k-major, `packed[strips * NR * k_start + strip * NR * kc + k * NR + r]` =
/// `weights[(strip * NR + r) * cols + k_start + k]`, 0 past the last row.
///
/// # Safety
/// AVX2 and FMA are available.
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_chunk(weights: &[f32], width: usize, inner: InnerBlocks, packed: &mut [f32]) {
    let strips = width.div_ceil(NR);
    assert!(weights.len() >= width * inner.cols && packed.len() >= strips * NR * inner.cols);
    // Eight rows at a time, each set across the whole inner dimension: the rows are read from
    // front to back, eight streams at once, as the prefetchers like it when the weights come
    // from DRAM.
    for eight in 0..2 * strips {
        let (strip, half) = (eight / 2, eight % 2);
        for (k_start, kc) in inner.iter() {
            let panel = &mut packed[strips * NR * k_start + strip * NR * kc..][..NR * kc];
            // SAFETY: AVX2 and FMA are available (this function's contract).
            unsafe { pack_eight(weights, width, inner.cols, eight * 8, k_start, kc, &mut panel[half * 8..]) };
        }
    }
}

/// Packs columns `k_start .. k_start + kc` of weight rows `first_row .. first_row + 8` into
/// half a strip, k-major: `dst[k * NR + r]` = `weights[(first_row + r) * cols + k_start + k]`,
/// 0 past the last row. Whole 8 x 8 squares are transposed in registers, the rest one by one.
///
/// # Safety
/// AVX2 is available.
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_eight(
    weights: &[f32],
    rows: usize,
    cols: usize,
    first_row: usize,
    k_start: usize,
    kc: usize,
    dst: &mut [f32],
) {
    assert!(k_start + kc <= cols && weights.len() >= rows * cols && kc > 0 && dst.len() > (kc - 1) * NR + 7);
    let mut k = 0;
    if first_row + 8 <= rows {
        // Row `r`'s floats `k .. k + 8` are `src[r * cols + k ..][..8]`.
        let src = &weights[first_row * cols + k_start..][..7 * cols + kc];
        while k + 8 <= kc {
            // SAFETY: `r * cols + k + 8 <= 7 * cols + kc = src.len()` for every `r < 8`; the
            // stores write floats `(k + j) * NR .. + 8` for `j < 8`, the last at `(k + 7) * NR +
            // 7 <= (kc - 1) * NR + 7 < dst.len()`.
            unsafe {
                let p = src.as_ptr().add(k);
                let rows_in = [
                    _mm256_loadu_ps(p),
                    _mm256_loadu_ps(p.add(cols)),
                    _mm256_loadu_ps(p.add(2 * cols)),
                    _mm256_loadu_ps(p.add(3 * cols)),
                    _mm256_loadu_ps(p.add(4 * cols)),
                    _mm256_loadu_ps(p.add(5 * cols)),
                    _mm256_loadu_ps(p.add(6 * cols)),
                    _mm256_loadu_ps(p.add(7 * cols)),
                ];
                let columns = transpose_8x8(rows_in);
                for (j, column) in columns.iter().enumerate() {
                    _mm256_storeu_ps(dst.as_mut_ptr().add((k + j) * NR), *column);
                }
            }
            k += 8;
        }
    }
    for r in 0..8 {
        let row = first_row + r;
        for step in k..kc {
            dst[step * NR + r] = if row < rows { weights[row * cols + k_start + step] } else { 0.0 };
        }
    }
}

/// The tokens of one block, as [`token_block`] takes them.
#[derive(Clone, Copy)]
enum Tokens<'a> {
    /// `[mc, cols]` rows of `x`, packed one block of the inner dimension at a time just before
    /// use.
    Rows(&'a [f32]),
    /// Packed by [`pack_token_block`].
    Packed(&'a [f32]),
}

/// One block of `mc` tokens against a packed chunk of `width` outputs, whose results go to
/// columns `column .. column + width` of `y` (rows `ldc` apart); `bias`, when given, is the
/// chunk's `width` values.
///
/// # Safety
/// AVX2 and FMA are available.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn token_block(
    tokens: Tokens<'_>,
    mc: usize,
    inner: InnerBlocks,
    packed: &[f32],
    width: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    ldc: usize,
    column: usize,
) {
    let strips = width.div_ceil(NR);
    let a_floats = |kc: usize| mc.div_ceil(MR) * MR_STRIDE * kc;
    // The products of inner block `k_block` (`kc` columns from `k_start`), `a` being the packed
    // tokens' columns.
    let mut step = |k_block: usize, k_start: usize, kc: usize, a: &[f32]| {
        let b = &packed[strips * NR * k_start..][..strips * NR * kc];
        let start = match (k_block, bias) {
            (0, Some(_)) => Start::Bias,
            (0, None) => Start::Zero,
            _ => Start::Accumulate,
        };
        // SAFETY: AVX2 and FMA are available (this function's contract); `block_product`
        // asserts the lengths it relies on.
        unsafe { block_product(a, b, kc, mc, width, bias, start, y, ldc, column) };
    };
    match tokens {
        Tokens::Rows(x_block) => with_scratch(&PACKED_TOKENS, a_floats(inner.max), |scratch| {
            for (k_block, (k_start, kc)) in inner.iter().enumerate() {
                let a = &mut scratch[..a_floats(kc)];
                // SAFETY: AVX2 and FMA are available (this function's contract).
                unsafe { pack_tokens(x_block, mc, inner.cols, k_start, kc, a) };
                step(k_block, k_start, kc, a);
            }
        }),
        Tokens::Packed(packed_tokens) => {
            for (k_block, (k_start, kc)) in inner.iter().enumerate() {
                step(k_block, k_start, kc, &packed_tokens[a_floats(k_start)..][..a_floats(kc)]);
            }
        }
    }
}

/// Packs a block of `mc` tokens (`x_block` is `[mc, cols]`) for every block of the inner
/// dimension, one after the other: the block starting at `k_start` is at `ceil(mc / MR) *
/// MR_STRIDE * k_start`, laid out as [`pack_tokens`] does.
///
/// # Safety
/// AVX2 and FMA are available.
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_token_block(x_block: &[f32], mc: usize, inner: InnerBlocks, dst: &mut [f32]) {
    let strip_floats = mc.div_ceil(MR) * MR_STRIDE;
    for (k_start, kc) in inner.iter() {
        // SAFETY: AVX2 and FMA are available (this function's contract).
        unsafe {
            pack_tokens(x_block, mc, inner.cols, k_start, kc, &mut dst[strip_floats * k_start..][..strip_floats * kc])
        };
    }
}

/// Packs columns `k_start .. k_start + kc` of `mc` token rows into strips of [`MR`] rows,
/// k-major with [`MR_STRIDE`] floats a step: `a[strip * 8 * kc + k * 8 + r]` = `x[(strip * 6 + r)
/// * cols + k_start + k]`, 0 for `r >= 6` and past the last row.
///
/// # Safety
/// AVX2 is available.
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_tokens(x: &[f32], mc: usize, cols: usize, k_start: usize, kc: usize, a: &mut [f32]) {
    assert!(k_start + kc <= cols && x.len() >= mc * cols && a.len() >= mc.div_ceil(MR) * MR_STRIDE * kc);
    for (strip, panel) in a.chunks_exact_mut(MR_STRIDE * kc).enumerate() {
        let first_row = strip * MR;
        let height = MR.min(mc - first_row);
        let mut k = 0;
        while k + 8 <= kc {
            let mut rows_in = [_mm256_setzero_ps(); 8];
            for (r, lanes) in rows_in.iter_mut().enumerate().take(height) {
                let src = &x[(first_row + r) * cols + k_start + k..][..8];
                // SAFETY: `src` is 8 readable floats.
                *lanes = unsafe { _mm256_loadu_ps(src.as_ptr()) };
            }
            let columns = transpose_8x8(rows_in);
            for (j, column) in columns.iter().enumerate() {
                let dst = &mut panel[(k + j) * MR_STRIDE..][..8];
                // SAFETY: `dst` is 8 writable floats.
                unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), *column) };
            }
            k += 8;
        }
        for step in k..kc {
            for r in 0..MR_STRIDE {
                panel[step * MR_STRIDE + r] = if r < height { x[(first_row + r) * cols + k_start + step] } else { 0.0 };
            }
        }
    }
}

/// The transpose of an 8 x 8 block held as 8 row vectors.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn transpose_8x8(rows: [__m256; 8]) -> [__m256; 8] {
    let [r0, r1, r2, r3, r4, r5, r6, r7] = rows;
    // Pairs of rows interleaved, then pairs of pairs, then the 128-bit halves exchanged.
    let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
    let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
    let (t4, t5) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5));
    let (t6, t7) = (_mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
    let (u0, u1) = (_mm256_shuffle_ps::<0x44>(t0, t2), _mm256_shuffle_ps::<0xEE>(t0, t2));
    let (u2, u3) = (_mm256_shuffle_ps::<0x44>(t1, t3), _mm256_shuffle_ps::<0xEE>(t1, t3));
    let (u4, u5) = (_mm256_shuffle_ps::<0x44>(t4, t6), _mm256_shuffle_ps::<0xEE>(t4, t6));
    let (u6, u7) = (_mm256_shuffle_ps::<0x44>(t5, t7), _mm256_shuffle_ps::<0xEE>(t5, t7));
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

/// What a tile's accumulators start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Zero (the first block of the inner dimension, no bias).
    Zero,
    /// The bias of the tile's outputs (first block, with a bias).
    Bias,
    /// The outputs already in `y` (every later block).
    Accumulate,
}

/// One block of `mc` packed tokens against the `ceil(width / NR)` strips of a packed chunk, into
/// columns `column .. column + width` of the first `mc` rows of `y` (rows `ldc` apart).
///
/// # Safety
/// AVX2 and FMA are available.
///
/// # Panics
/// If `a` holds fewer than `ceil(mc / MR) * MR_STRIDE * kc` floats, `b` fewer than
/// `ceil(width / NR) * NR * kc`, `y` fewer than `(mc - 1) * ldc + column + width` or
/// `column + width > ldc`; with [`Start::Bias`], if `bias` is not `Some` with `width` values.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_product(
    a: &[f32],
    b: &[f32],
    kc: usize,
    mc: usize,
    width: usize,
    bias: Option<&[f32]>,
    start: Start,
    y: &mut [f32],
    ldc: usize,
    column: usize,
) {
    let strips = width.div_ceil(NR);
    assert!(a.len() >= mc.div_ceil(MR) * MR_STRIDE * kc && b.len() >= strips * NR * kc);
    assert!(mc > 0 && column + width <= ldc && y.len() >= (mc - 1) * ldc + column + width);
    assert!(start != Start::Bias || bias.is_some_and(|bias| bias.len() >= width));
    let mut edge = [0.0f32; MR * NR];
    let mut edge_bias = [0.0f32; NR];
    for (strip, b_strip) in b.chunks_exact(NR * kc).take(strips).enumerate() {
        // The strip's first output, within the chunk and within `y`.
        let first = strip * NR;
        let y_column = column + first;
        let strip_width = NR.min(width - first);
        let strip_bias = match (start, bias) {
            (Start::Bias, Some(bias)) if strip_width == NR => bias[first..][..NR].as_ptr(),
            (Start::Bias, Some(bias)) => {
                edge_bias[..strip_width].copy_from_slice(&bias[first..][..strip_width]);
                edge_bias.as_ptr()
            }
            _ => std::ptr::null(),
        };
        for (token_strip, a_strip) in a.chunks_exact(MR_STRIDE * kc).take(mc.div_ceil(MR)).enumerate() {
            let row = token_strip * MR;
            let height = MR.min(mc - row);
            if height == MR && strip_width == NR {
                // SAFETY: the tile's last float, row `row + 5 <= mc - 1` and column `y_column + 15
                // <= column + width - 1`, is at `(mc - 1) * ldc + column + width - 1 < y.len()`
                // (asserted above), and its rows (16 floats from `y_column`, `y_column + 16 <=
                // ldc`) do not reach the next row; the panels hold `kc` steps; the bias pointer
                // is 16 readable values when `start` is `Bias`.
                unsafe {
                    let c = y.as_mut_ptr().add(row * ldc + y_column);
                    tile(kc, a_strip.as_ptr(), b_strip.as_ptr(), c, ldc, start, strip_bias);
                }
            } else {
                if start == Start::Accumulate {
                    for r in 0..height {
                        edge[r * NR..][..strip_width].copy_from_slice(&y[(row + r) * ldc + y_column..][..strip_width]);
                    }
                }
                // SAFETY: `edge` is a full 6 x 16 tile with row stride 16; the panels hold `kc`
                // steps (zero-padded past the matrices); `edge_bias` is 16 values.
                unsafe { tile(kc, a_strip.as_ptr(), b_strip.as_ptr(), edge.as_mut_ptr(), NR, start, strip_bias) };
                for r in 0..height {
                    y[(row + r) * ldc + y_column..][..strip_width].copy_from_slice(&edge[r * NR..][..strip_width]);
                }
            }
        }
    }
}

/// `c[6 x 16] = start + a b` over `kc` steps: `a` is a packed token strip ([`MR_STRIDE`] floats
/// a step), `b` a weight strip (16 floats a step), `c` has row stride `ldc`.
///
/// # Safety
/// AVX2 and FMA are available; `a` points to `8 * kc` readable floats, `b` to `16 * kc`; `c`
/// points to 6 rows of 16 writable (and, with [`Start::Accumulate`], readable) floats at stride
/// `ldc`; with [`Start::Bias`], `bias` points to 16 readable floats.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, start: Start, bias: *const f32) {
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    match start {
        Start::Zero => {}
        Start::Bias => {
            // SAFETY: `bias` points to 16 readable floats (the caller's contract).
            let (low, high) = unsafe { (_mm256_loadu_ps(bias), _mm256_loadu_ps(bias.add(8))) };
            acc = [[low, high]; MR];
        }
        Start::Accumulate => {
            for (r, lanes) in acc.iter_mut().enumerate() {
                // SAFETY: row `r < 6` of `c` holds 16 readable floats (the caller's contract).
                unsafe { *lanes = [_mm256_loadu_ps(c.add(r * ldc)), _mm256_loadu_ps(c.add(r * ldc + 8))] };
            }
        }
    }
    for k in 0..kc {
        // SAFETY: step `k < kc` reads floats `16k .. 16k + 16` of `b` and `8k .. 8k + 6` of
        // `a`, inside the caller's contract.
        unsafe {
            let b_step = b.add(k * NR);
            let (low, high) = (_mm256_loadu_ps(b_step), _mm256_loadu_ps(b_step.add(8)));
            let a_step = a.add(k * MR_STRIDE);
            for (r, lanes) in acc.iter_mut().enumerate() {
                let value = _mm256_broadcast_ss(&*a_step.add(r));
                lanes[0] = _mm256_fmadd_ps(value, low, lanes[0]);
                lanes[1] = _mm256_fmadd_ps(value, high, lanes[1]);
            }
        }
    }
    for (r, lanes) in acc.iter().enumerate() {
        // SAFETY: row `r < 6` of `c` holds 16 writable floats (the caller's contract).
        unsafe {
            _mm256_storeu_ps(c.add(r * ldc), lanes[0]);
            _mm256_storeu_ps(c.add(r * ldc + 8), lanes[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{BUDGET, Budget, MC, MR, MR_STRIDE, NR, is_supported, linear_in_chunks};

    use crate::dense::tests::values;

    /// The order the kernel promises: the bias (or 0), then one fused multiply-add per product in
    /// increasing `k`.
    fn fused_chain(x: &[f32], n_tokens: usize, w: &[f32], rows: usize, cols: usize, bias: Option<&[f32]>) -> Vec<f32> {
        let mut y = vec![0.0; n_tokens * rows];
        for (token, y_row) in y.chunks_exact_mut(rows).enumerate() {
            let x_row = &x[token * cols..][..cols];
            for (row, out) in y_row.iter_mut().enumerate() {
                let w_row = &w[row * cols..][..cols];
                let start = bias.map_or(0.0, |bias| bias[row]);
                *out = x_row.iter().zip(w_row).fold(start, |acc, (a, b)| a.mul_add(*b, acc));
            }
        }
        y
    }

    /// Runs the kernel within `budget` and checks every output bit for bit against
    /// [`fused_chain`], with and without a bias.
    fn check(n_tokens: usize, rows: usize, cols: usize, budget: Budget) {
        let (x, w, b) = (values(n_tokens * cols, 7), values(rows * cols, 8), values(rows, 9));
        for bias in [None, Some(b.as_slice())] {
            let mut y = vec![f32::NAN; n_tokens * rows];
            linear_in_chunks(&x, n_tokens, &w, rows, cols, bias, &mut y, budget);
            let expected = fused_chain(&x, n_tokens, &w, rows, cols, bias);
            for (i, (got, want)) in y.iter().zip(&expected).enumerate() {
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "{n_tokens}x{rows}x{cols} within {budget:?}, bias {}: [{i}] {got} vs {want}",
                    bias.is_some()
                );
            }
        }
    }

    /// Chunks of at most `strips` strips of weights, tokens shared in groups of at most `blocks`
    /// blocks of [`MC`] (0 rounds up to 1 in both).
    fn budget(strips: usize, blocks: usize, cols: usize) -> Budget {
        Budget { chunk_floats: strips * NR * cols, token_floats: blocks * MC / MR * MR_STRIDE * cols, whole_floats: 0 }
    }

    #[test]
    fn every_output_is_one_fused_chain_in_increasing_k_whatever_the_budget() {
        if !is_supported() {
            return;
        }
        // (tokens, rows, cols, strips, blocks): one chunk; one strip per chunk; even chunks; a
        // ragged last chunk and strip; one or several groups of shared tokens, the last one
        // ragged; token blocks of 72 in strips of 6 with ragged ends; inner blocks of at most
        // 256 with tails that are not a multiple of 8.
        for &(n_tokens, rows, cols, strips, blocks) in &[
            (1, 1, 1, 1, 1),
            (8, 16, 8, 1, 1),
            (13, 33, 300, 0, 0),
            (13, 33, 300, 3, 1),
            (150, 50, 517, 2, 1),
            (150, 50, 517, 2, 2),
            (150, 50, 517, 2, 3),
            (73, 100, 64, 3, 9),
            (300, 100, 64, 3, 2),
            (200, 31, 1, 0, 0),
            (7, 40, 1000, 0, 1),
            (145, 384, 384, 24, 1),
            (20, 300, 1536, 10, 9),
        ] {
            check(n_tokens, rows, cols, budget(strips, blocks, cols));
        }
        check(145, 384, 384, BUDGET);
        check(20, 300, 1536, BUDGET);
        // More tokens than a group: a small enough matrix is packed whole.
        check(300, 100, 64, Budget { whole_floats: 7 * NR * 64, ..budget(3, 2, 64) });
    }

    #[test]
    fn threads_split_the_work_without_changing_a_bit() {
        if !is_supported() {
            return;
        }
        // One chunk; several chunks with few tokens (the threads take chunks) and with many
        // blocks of tokens (the threads take blocks); several groups of shared tokens.
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            for &(n_tokens, rows, cols, strips, blocks) in &[
                (400, 70, 40, 5, 1),
                (10, 70, 40, 2, 1),
                (400, 70, 40, 2, 9),
                (100, 90, 600, 0, 1),
                (300, 50, 40, 1, 1),
            ] {
                pool.install(|| check(n_tokens, rows, cols, budget(strips, blocks, cols)));
            }
        }
    }

    #[test]
    fn a_buffer_in_use_gives_way_to_a_fresh_one() {
        if !is_supported() {
            return;
        }
        // As when rayon runs another product on a thread waiting inside one: both buffers are
        // borrowed, so every path falls back to fresh storage and still gets the same bits.
        super::PACKED_WEIGHTS.with(|weights| {
            super::PACKED_TOKENS.with(|tokens| {
                let (_weights, _tokens) = (weights.borrow_mut(), tokens.borrow_mut());
                check(100, 40, 300, budget(1, 1, 300));
                check(100, 40, 300, BUDGET);
            })
        });
    }
}
