//! `Y = X W^T (+ b)` for every format: shape checks, activation panels, row chunks, rayon.
//!
//! A format is a [`RowSource`]: it hands the kernels a chunk of rows as a [`RowsView`], either
//! its own storage (CSR) or rows decoded into a scratch buffer (N:M, bitmask) once per chunk
//! and reused for every token block. One token goes to the SpMV kernel; more are transposed into
//! panels of 32 tokens (`[cols, 32]`, zero-padded) once per call, and every chunk of rows runs
//! the SpMM kernel over every panel, writing its tile back to `y` with register transposes.
//! Each output is computed by one kernel call in the fixed [sum order](crate#sum-order), so the
//! chunking and the thread count never change a result.

use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use crate::kernels::{Kernels, LanesSpmmKernel, TOKEN_BLOCK};
use crate::rows::{COL_BLOCK, ColumnIndex, NmRows, RowsView, SparseRows};

/// A sparse matrix as the kernels see it.
pub(crate) trait RowSource: Sync {
    type Index: ColumnIndex;

    fn n_rows(&self) -> usize;

    fn cols(&self) -> usize;

    /// Entries the kernels will visit (for sizing chunks).
    fn n_entries(&self) -> usize;

    /// The rows in `range`, decoded into `scratch` (as wide as the matrix) if the format needs
    /// it.
    fn view<'a>(&'a self, range: Range<usize>, scratch: &'a mut SparseRows<Self::Index>) -> RowsView<'a, Self::Index>;

    /// SpMV over the rows in `range` (see [`SpmvKernel`](crate::kernels::SpmvKernel)); formats
    /// with their own kernels override it.
    fn spmv(
        &self,
        kernels: &Kernels,
        range: Range<usize>,
        scratch: &mut SparseRows<Self::Index>,
        x: &[f32],
        bias: Option<&[f32]>,
        y: &mut [f32],
    ) {
        (Self::Index::spmv_kernel(kernels))(self.view(range, scratch), x, bias, y);
    }

    /// SpMM over the rows in `range` (see [`SpmmKernel`](crate::kernels::SpmmKernel)); formats
    /// with their own kernels override it.
    #[allow(clippy::too_many_arguments)]
    fn spmm(
        &self,
        kernels: &Kernels,
        range: Range<usize>,
        scratch: &mut SparseRows<Self::Index>,
        panels: &[f32],
        n_tokens: usize,
        bias: Option<&[f32]>,
        tile: &mut [f32],
    ) {
        (Self::Index::spmm_kernel(kernels))(self.view(range, scratch), panels, n_tokens, bias, tile);
    }
}

impl<I: ColumnIndex> RowSource for SparseRows<I> {
    type Index = I;

    fn n_rows(&self) -> usize {
        SparseRows::n_rows(self)
    }

    fn cols(&self) -> usize {
        SparseRows::cols(self)
    }

    fn n_entries(&self) -> usize {
        self.len()
    }

    fn view<'a>(&'a self, range: Range<usize>, _scratch: &'a mut SparseRows<I>) -> RowsView<'a, I> {
        SparseRows::view(self, range)
    }
}

/// Bytes of weights (values and indices) per column block of a chunk of rows: they are read once
/// per panel, from L2.
const CHUNK_BLOCK_BYTES: usize = 128 << 10;
/// Bytes of running sums per chunk (rows x panels x 32 tokens x 2 sums x 4 bytes), kept in L2 between
/// column blocks.
const CHUNK_TILE_BYTES: usize = 256 << 10;
/// Up to this many tokens a product is that many SpMVs (the same sums): they read the weights once
/// per token, but for two tokens that still beats the panel kernel's transposes and partial
/// panel (1.5x against the packed dense GEMM at 90 % sparsity, where the panel kernel gave 1.1x;
/// from 3 tokens the two are even, from 4 the panel kernel leads).
const SPMV_TOKENS: usize = 2;
/// Below this many multiply-adds a call stays on the calling thread.
const PARALLEL_MIN_FMAS: usize = 1 << 18;

/// Rows per chunk: as many as the two budgets above allow (a chunk reads every panel once, so
/// fewer chunks stream the panels fewer times), a multiple of 8 (the unpack transposes), and at
/// least four chunks per thread.
fn chunk_rows<S: RowSource>(source: &S, n_panels: usize, threads: usize) -> usize {
    let (n_rows, cols) = (source.n_rows(), source.cols());
    let n_blocks = cols.div_ceil(COL_BLOCK).max(1);
    let entry_bytes = size_of::<f32>() + size_of::<S::Index>();
    let block_bytes = (source.n_entries() * entry_bytes).div_ceil(n_rows.max(1) * n_blocks).max(1);
    let tile_bytes = 2 * n_panels.max(1) * TOKEN_BLOCK * size_of::<f32>();
    let mut rows = (CHUNK_BLOCK_BYTES / block_bytes).min(CHUNK_TILE_BYTES / tile_bytes);
    if threads > 1 {
        rows = rows.min(n_rows.div_ceil(4 * threads));
    }
    rows.next_multiple_of(8).max(8)
}

/// `y = x W^T (+ bias)` with `x` `[n_tokens, cols]` and `y` `[n_tokens, rows]`, both row-major.
///
/// # Panics
/// If a slice length does not match the shapes.
#[track_caller]
pub(crate) fn multiply<S: RowSource>(
    kernels: &Kernels,
    source: &S,
    x: &[f32],
    n_tokens: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let (rows, cols) = (source.n_rows(), source.cols());
    if !check_shapes((rows, cols), x, n_tokens, bias, y) {
        return;
    }
    let threads = rayon::current_num_threads();
    let parallel = threads > 1 && source.n_entries().saturating_mul(n_tokens) >= PARALLEL_MIN_FMAS;
    let one_by_one = n_tokens <= SPMV_TOKENS;
    let n_panels = if one_by_one { 0 } else { n_tokens.div_ceil(TOKEN_BLOCK) };
    let chunk = chunk_rows(source, n_panels, if parallel { threads } else { 1 });
    if one_by_one {
        for token in 0..n_tokens {
            let (x, y) = (&x[token * cols..][..cols], &mut y[token * rows..][..rows]);
            spmv(kernels, source, x, bias, y, chunk, parallel);
        }
    } else {
        spmm(kernels, source, x, n_tokens, bias, y, chunk, parallel);
    }
}

/// The shape checks of a product; `false` when there is nothing to compute.
///
/// # Panics
/// If a slice length does not match the shapes.
#[track_caller]
fn check_shapes((rows, cols): (usize, usize), x: &[f32], n_tokens: usize, bias: Option<&[f32]>, y: &[f32]) -> bool {
    let x_len = n_tokens.checked_mul(cols).expect("n_tokens * cols overflows");
    let y_len = n_tokens.checked_mul(rows).expect("n_tokens * rows overflows");
    assert_eq!(x.len(), x_len, "x has {} values, not n_tokens x cols = {n_tokens} x {cols}", x.len());
    assert_eq!(y.len(), y_len, "y has {} values, not n_tokens x rows = {n_tokens} x {rows}", y.len());
    if let Some(bias) = bias {
        assert_eq!(bias.len(), rows, "bias has {} values, not rows = {rows}", bias.len());
    }
    y_len > 0
}

/// `y = x W^T (+ bias)` with a [`LanesSpmmKernel`], for an N:M matrix whose every row is in ready
/// lanes: `view` hands out the rows of a range (starting on a multiple of 8, as every chunk
/// here does), which go straight from `x` to `y`, no panels. Chunks over rayon as [`multiply`]
/// does; each output is computed whole by one call, so neither changes a result.
///
/// # Panics
/// If a slice length does not match the shapes.
#[track_caller]
pub(crate) fn multiply_lanes<'a>(
    kernel: LanesSpmmKernel,
    view: impl Fn(Range<usize>) -> NmRows<'a> + Sync,
    (rows, cols, n_entries): (usize, usize, usize),
    x: &[f32],
    n_tokens: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    if !check_shapes((rows, cols), x, n_tokens, bias, y) {
        return;
    }
    let run = |range: Range<usize>, out: &mut [f32], stride: usize| {
        let bias = bias.map(|bias| &bias[range.clone()]);
        kernel(view(range), x, n_tokens, bias, out, stride);
    };
    let threads = rayon::current_num_threads();
    if threads > 1 && n_entries.saturating_mul(n_tokens) >= PARALLEL_MIN_FMAS {
        let chunk = rows.div_ceil(4 * threads).next_multiple_of(8);
        let ranges: Vec<Range<usize>> =
            (0..rows).step_by(chunk).map(|start| start..(start + chunk).min(rows)).collect();
        let outputs = ranges
            .into_par_iter()
            .map(|range| {
                let mut out = vec![0.0; n_tokens * range.len()];
                run(range.clone(), &mut out, range.len());
                (range, out)
            })
            .collect();
        place_chunks(y, rows, outputs);
    } else {
        run(0..rows, y, rows);
    }
}

fn spmv<S: RowSource>(
    kernels: &Kernels,
    source: &S,
    x: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    chunk: usize,
    parallel: bool,
) {
    let run = |scratch: &mut SparseRows<S::Index>, (chunk_idx, y): (usize, &mut [f32])| {
        let range = chunk_idx * chunk..chunk_idx * chunk + y.len();
        let bias = bias.map(|bias| &bias[range.clone()]);
        source.spmv(kernels, range, scratch, x, bias, y);
    };
    if parallel {
        y.par_chunks_mut(chunk).enumerate().for_each_init(|| SparseRows::new(source.cols()), run);
    } else {
        let mut scratch = SparseRows::new(source.cols());
        y.chunks_mut(chunk).enumerate().for_each(|item| run(&mut scratch, item));
    }
}

#[allow(clippy::too_many_arguments)]
fn spmm<S: RowSource>(
    kernels: &Kernels,
    source: &S,
    x: &[f32],
    n_tokens: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    chunk: usize,
    parallel: bool,
) {
    let (rows, cols) = (source.n_rows(), source.cols());
    let panel_len = cols * TOKEN_BLOCK;
    let n_panels = n_tokens.div_ceil(TOKEN_BLOCK);
    with_panels(n_panels * panel_len, |panels| {
        for (panel_idx, first_token) in (0..n_tokens).step_by(TOKEN_BLOCK).enumerate() {
            let panel_tokens = (n_tokens - first_token).min(TOKEN_BLOCK);
            let x = &x[first_token * cols..(first_token + panel_tokens) * cols];
            (kernels.pack)(x, panel_tokens, cols, &mut panels[panel_idx * panel_len..][..panel_len]);
        }
        let panels = &*panels;
        // Runs every panel over the rows in `range`, writing token `t`'s outputs to
        // `out[t * stride ..][..range.len()]`.
        let run_chunk = |scratch: &mut SparseRows<S::Index>,
                         tile: &mut Vec<f32>,
                         range: Range<usize>,
                         out: &mut [f32],
                         stride: usize| {
            let n_rows = range.len();
            let bias = bias.map(|bias| &bias[range.clone()]);
            let outputs = n_panels * n_rows * TOKEN_BLOCK;
            // The kernel writes every float before it reads it: grow, never clear.
            if tile.len() < 2 * outputs {
                tile.resize(2 * outputs, 0.0);
            }
            let tile = &mut tile[..2 * outputs];
            source.spmm(kernels, range, scratch, panels, n_tokens, bias, tile);
            let outputs = &tile[..outputs];
            for (tile, first_token) in
                outputs.chunks_exact(n_rows * TOKEN_BLOCK).zip((0..n_tokens).step_by(TOKEN_BLOCK))
            {
                let panel_tokens = (n_tokens - first_token).min(TOKEN_BLOCK);
                (kernels.unpack)(tile, n_rows, panel_tokens, &mut out[first_token * stride..], stride);
            }
        };
        let ranges = (0..rows).step_by(chunk).map(|start| start..(start + chunk).min(rows));
        if parallel {
            // Chunks of rows are strided in `y`, so each task fills its own token-major block
            // and the blocks are copied into place afterwards.
            let outputs: Vec<(Range<usize>, Vec<f32>)> = ranges
                .collect::<Vec<_>>()
                .into_par_iter()
                .map_init(
                    || SparseRows::new(cols),
                    |scratch, range| {
                        let mut out = vec![0.0; n_tokens * range.len()];
                        with_tile(|tile| run_chunk(scratch, tile, range.clone(), &mut out, range.len()));
                        (range, out)
                    },
                )
                .collect();
            place_chunks(y, rows, outputs);
        } else {
            let mut scratch = SparseRows::new(cols);
            with_tile(|tile| {
                for range in ranges {
                    let start = range.start;
                    run_chunk(&mut scratch, tile, range, &mut y[start..], rows);
                }
            });
        }
    });
}

/// Copies each chunk's token-major outputs (rows `range` of every token, `[n_tokens,
/// range.len()]`) into place in `y` (`[n_tokens, rows]`): chunks of rows are strided in `y`, so
/// parallel tasks fill blocks of their own.
fn place_chunks(y: &mut [f32], rows: usize, outputs: Vec<(Range<usize>, Vec<f32>)>) {
    for (range, out) in outputs {
        for (token, out) in out.chunks_exact(range.len()).enumerate() {
            y[token * rows + range.start..][..range.len()].copy_from_slice(out);
        }
    }
}

thread_local! {
    /// The panels of the last call on this thread, kept so that repeated products neither
    /// allocate nor fault in fresh pages.
    static PANELS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The tile of the last chunk on this thread, kept for the same reason (it is twice the
    /// outputs of a chunk; a fresh one per call cost about 2 % of a 95 %-sparse 384 x 384 x 128
    /// product).
    static TILE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's tile buffer (or a fresh one inside a nested product).
fn with_tile<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    TILE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => f(&mut buffer),
        Err(_) => f(&mut Vec::new()),
    })
}

/// Runs `f` on `len` floats of panel scratch, starting on a 64-byte boundary so that each
/// column's 32 activations are two whole cache lines.
fn with_panels<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    fn aligned<R>(buffer: &mut Vec<f32>, len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
        const SLACK: usize = 64 / size_of::<f32>();
        if buffer.len() < len + SLACK {
            buffer.resize(len + SLACK, 0.0);
        }
        let offset = buffer.as_ptr().align_offset(64);
        let offset = if offset < SLACK { offset } else { 0 };
        f(&mut buffer[offset..offset + len])
    }
    PANELS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => aligned(&mut buffer, len, f),
        // A product nested in another on this thread (rayon work stealing): fresh scratch.
        Err(_) => aligned(&mut Vec::new(), len, f),
    })
}

/// Generates the product methods of a format (which has `fn source_multiply`).
macro_rules! products {
    ($format:ident) => {
        impl $format {
            /// One token: `y = W x`, with `x` `[cols]` and `y` `[rows]`.
            ///
            /// # Panics
            /// If `x.len() != cols` or `y.len() != rows`.
            #[track_caller]
            pub fn spmv(&self, x: &[f32], y: &mut [f32]) {
                self.source_multiply($crate::kernels::dispatched(), x, 1, None, y);
            }

            /// `y = x W^T` with `x` `[n_tokens, cols]` and `y` `[n_tokens, rows]`, both row-major
            /// (the layout of `lathe_quant::dense::linear`); `y` is overwritten. One token takes
            /// the SpMV path.
            ///
            /// # Panics
            /// If `x.len() != n_tokens * cols` or `y.len() != n_tokens * rows`.
            #[track_caller]
            pub fn spmm(&self, x: &[f32], n_tokens: usize, y: &mut [f32]) {
                self.source_multiply($crate::kernels::dispatched(), x, n_tokens, None, y);
            }

            /// `y = x W^T + bias`, as [`spmm`](Self::spmm) with `bias` `[rows]` added to every
            /// token.
            ///
            /// # Panics
            /// If a slice length does not match the shapes.
            #[track_caller]
            pub fn spmm_bias(&self, x: &[f32], n_tokens: usize, bias: &[f32], y: &mut [f32]) {
                self.source_multiply($crate::kernels::dispatched(), x, n_tokens, Some(bias), y);
            }

            /// [`spmm`](Self::spmm) with an optional bias on the given kernels, for benches and
            /// tests that compare instruction sets (see [`kernels`](crate::kernels())).
            ///
            /// # Panics
            /// If a slice length does not match the shapes.
            #[track_caller]
            pub fn spmm_with(
                &self,
                kernels: &$crate::Kernels,
                x: &[f32],
                n_tokens: usize,
                bias: Option<&[f32]>,
                y: &mut [f32],
            ) {
                self.source_multiply(kernels, x, n_tokens, bias, y);
            }
        }
    };
}

pub(crate) use products;
