//! The portable kernels: the readable statement of the [sum order](crate#sum-order) that every
//! other path reproduces bit for bit.

use super::{TOKEN_BLOCK, check_pack, check_spmm, check_spmv, check_unpack};
use crate::rows::{ColumnIndex, RowsView};

/// Row `row` times one token whose activation `c` is `x(c)`, plus `start`, in the sum order.
pub(crate) fn row_dot<I: ColumnIndex>(rows: &RowsView<'_, I>, row: usize, x: impl Fn(usize) -> f32, start: f32) -> f32 {
    let mut sums = [start, 0.0];
    for (j, (col, weight)) in rows.row_entries(row).enumerate() {
        sums[j % 2] = weight.mul_add(x(col), sums[j % 2]);
    }
    sums[0] + sums[1]
}

pub(crate) fn spmv<I: ColumnIndex>(rows: RowsView<'_, I>, x: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    check_spmv(&rows, x, bias, y);
    for (row, out) in y.iter_mut().enumerate() {
        *out = row_dot(&rows, row, |col| x[col], bias.map_or(0.0, |bias| bias[row]));
    }
}

pub(crate) fn spmm<I: ColumnIndex>(
    rows: RowsView<'_, I>,
    panels: &[f32],
    n_tokens: usize,
    bias: Option<&[f32]>,
    tile: &mut [f32],
) {
    check_spmm(&rows, panels, n_tokens, bias, tile);
    let n_panels = n_tokens.div_ceil(TOKEN_BLOCK);
    let panel_len = rows.cols() * TOKEN_BLOCK;
    let outputs = n_panels * rows.n_rows() * TOKEN_BLOCK;
    for (index, out) in tile[..outputs].chunks_exact_mut(TOKEN_BLOCK).enumerate() {
        let (panel, row) = (index / rows.n_rows(), index % rows.n_rows());
        let panel = &panels[panel * panel_len..][..panel_len];
        let start = bias.map_or(0.0, |bias| bias[row]);
        for (token, out) in out.iter_mut().enumerate() {
            *out = row_dot(&rows, row, |col| panel[col * TOKEN_BLOCK + token], start);
        }
    }
}

pub(crate) fn pack(x: &[f32], n_tokens: usize, cols: usize, panel: &mut [f32]) {
    check_pack(x, n_tokens, cols, panel);
    for (col, out) in panel.chunks_exact_mut(TOKEN_BLOCK).enumerate() {
        for (token, out) in out.iter_mut().enumerate() {
            *out = if token < n_tokens { x[token * cols + col] } else { 0.0 };
        }
    }
}

pub(crate) fn unpack(tile: &[f32], n_rows: usize, n_tokens: usize, dst: &mut [f32], stride: usize) {
    check_unpack(tile, n_rows, n_tokens, dst, stride);
    for token in 0..n_tokens {
        for row in 0..n_rows {
            dst[token * stride + row] = tile[row * TOKEN_BLOCK + token];
        }
    }
}
