//! The kernels of one instruction set.
//!
//! All of them keep the [sum order](crate#sum-order) of the scalar reference.

pub(crate) mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86_64;

use std::sync::OnceLock;

use crate::Isa;
use crate::rows::{ColumnIndex, NmRows, RowsView};

/// Tokens per activation panel: four ymm registers of f32 per running sum, two cache lines per
/// column.
pub(crate) const TOKEN_BLOCK: usize = 32;

/// `y[r] = row r . x (+ bias[r])` for every row of the view (one token).
pub(crate) type SpmvKernel<I> = fn(RowsView<'_, I>, &[f32], Option<&[f32]>, &mut [f32]);

/// Every panel of a call: `tile[(p * n_rows + r) * TOKEN_BLOCK + j] = row r . panel p column j (+
/// bias[r])` for every row of the view, where `panels[(p * cols + c) * TOKEN_BLOCK + j]` is token
/// `p * TOKEN_BLOCK + j`'s activation `c`; the `usize` is the number of tokens (the panels are
/// `ceil(n_tokens / TOKEN_BLOCK)`, the last one zero past them). The tile is twice
/// that long: its second half is the kernel's scratch (a row's odd running sums wait there
/// between column blocks, the even ones in the first half).
pub(crate) type SpmmKernel<I> = fn(RowsView<'_, I>, &[f32], usize, Option<&[f32]>, &mut [f32]);

/// [`SpmvKernel`] reading N:M rows directly.
pub(crate) type NmSpmvKernel = fn(NmRows<'_>, &[f32], Option<&[f32]>, &mut [f32]);

/// [`SpmmKernel`] reading N:M rows directly.
pub(crate) type NmSpmmKernel = fn(NmRows<'_>, &[f32], usize, Option<&[f32]>, &mut [f32]);

/// `y[t * stride + r] = row r . x[t] (+ bias[r])` for every token `t` of `x` (`[n_tokens, cols]`,
/// the `usize` is `n_tokens`) and every row `r` of an N:M view whose rows are all in ready
/// lanes (see [`NmLanes`](crate::rows::NmLanes)), their number a multiple of 8; the last `usize`
/// is the stride.
pub(crate) type LanesSpmmKernel = fn(NmRows<'_>, &[f32], usize, Option<&[f32]>, &mut [f32], usize);

/// Transposes up to [`TOKEN_BLOCK`] tokens of `x` (`[n_tokens, cols]`) into a panel
/// (`[cols, TOKEN_BLOCK]`), zero past `n_tokens`.
pub(crate) type PackKernel = fn(&[f32], usize, usize, &mut [f32]);

/// Writes `tile` (`[n_rows, TOKEN_BLOCK]`) back token-major: `dst[j * stride + r] = tile[r *
/// TOKEN_BLOCK + j]` for `j < n_tokens`, `r < n_rows`.
pub(crate) type UnpackKernel = fn(&[f32], usize, usize, &mut [f32], usize);

/// The kernels of one instruction set, for [`CsrMatrix::spmm_with`](crate::CsrMatrix::spmm_with)
/// and its siblings. Get one from [`kernels`].
#[derive(Debug)]
pub struct Kernels {
    isa: Isa,
    pub(crate) spmv_u16: SpmvKernel<u16>,
    pub(crate) spmv_u32: SpmvKernel<u32>,
    pub(crate) spmm_u16: SpmmKernel<u16>,
    pub(crate) spmm_u32: SpmmKernel<u32>,
    /// Direct N:M kernels, where an instruction set has them; otherwise N:M rows are decoded
    /// into entries (which is also how the scalar reference reads them).
    pub(crate) spmv_nm: Option<NmSpmvKernel>,
    pub(crate) spmm_nm: Option<NmSpmmKernel>,
    /// A few tokens of a 2:4 or 1:4 matrix straight from `x`, where an instruction set has it.
    pub(crate) spmm_lanes: Option<LanesSpmmKernel>,
    pub(crate) pack: PackKernel,
    pub(crate) unpack: UnpackKernel,
}

impl Kernels {
    /// The instruction set these kernels use.
    pub fn isa(&self) -> Isa {
        self.isa
    }
}

static SCALAR: Kernels = Kernels {
    isa: Isa::Scalar,
    spmv_u16: scalar::spmv,
    spmv_u32: scalar::spmv,
    spmm_u16: scalar::spmm,
    spmm_u32: scalar::spmm,
    spmv_nm: None,
    spmm_nm: None,
    spmm_lanes: None,
    pack: scalar::pack,
    unpack: scalar::unpack,
};

/// The kernels of `isa`, or `None` when this CPU cannot run them.
pub fn kernels(isa: Isa) -> Option<&'static Kernels> {
    match isa {
        Isa::Scalar => Some(&SCALAR),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86_64::avx2::kernels(),
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 => None,
    }
}

/// The kernels of [`Isa::active`], chosen once.
pub(crate) fn dispatched() -> &'static Kernels {
    static DISPATCHED: OnceLock<&'static Kernels> = OnceLock::new();
    DISPATCHED.get_or_init(|| kernels(Isa::active()).unwrap_or(&SCALAR))
}

/// The length checks every SpMV kernel starts with.
#[track_caller]
pub(crate) fn check_spmv<I: ColumnIndex>(rows: &RowsView<'_, I>, x: &[f32], bias: Option<&[f32]>, y: &[f32]) {
    assert_eq!(x.len(), rows.cols(), "x has {} values, not cols = {}", x.len(), rows.cols());
    assert_eq!(y.len(), rows.n_rows(), "y has {} values, not rows = {}", y.len(), rows.n_rows());
    if let Some(bias) = bias {
        assert_eq!(bias.len(), rows.n_rows(), "bias has {} values, not rows = {}", bias.len(), rows.n_rows());
    }
}

/// The length checks every SpMM kernel starts with.
#[track_caller]
pub(crate) fn check_spmm<I: ColumnIndex>(
    rows: &RowsView<'_, I>,
    panels: &[f32],
    n_tokens: usize,
    bias: Option<&[f32]>,
    tile: &[f32],
) {
    check_panels((rows.n_rows(), rows.cols()), panels, n_tokens, bias, tile);
}

/// The panel, tile and bias lengths of an SpMM over `n_rows` rows of `cols` columns.
#[track_caller]
fn check_panels((n_rows, cols): (usize, usize), panels: &[f32], n_tokens: usize, bias: Option<&[f32]>, tile: &[f32]) {
    let n_panels = n_tokens.div_ceil(TOKEN_BLOCK);
    assert_eq!(panels.len(), n_panels * cols * TOKEN_BLOCK, "panels are not {n_panels} x cols x {TOKEN_BLOCK}");
    assert_eq!(tile.len(), 2 * n_panels * n_rows * TOKEN_BLOCK, "tile is not 2 x {n_panels} x rows x {TOKEN_BLOCK}");
    if let Some(bias) = bias {
        assert_eq!(bias.len(), n_rows, "bias has {} values, not rows = {n_rows}", bias.len());
    }
}

/// The length checks of [`NmSpmvKernel`].
#[track_caller]
pub(crate) fn check_spmv_nm(rows: &NmRows<'_>, x: &[f32], bias: Option<&[f32]>, y: &[f32]) {
    assert_eq!(x.len(), rows.cols(), "x has {} values, not cols = {}", x.len(), rows.cols());
    assert_eq!(y.len(), rows.n_rows(), "y has {} values, not rows = {}", y.len(), rows.n_rows());
    if let Some(bias) = bias {
        assert_eq!(bias.len(), rows.n_rows(), "bias has {} values, not rows = {}", bias.len(), rows.n_rows());
    }
}

/// The length checks of [`NmSpmmKernel`].
#[track_caller]
pub(crate) fn check_spmm_nm(rows: &NmRows<'_>, panels: &[f32], n_tokens: usize, bias: Option<&[f32]>, tile: &[f32]) {
    check_panels((rows.n_rows(), rows.cols()), panels, n_tokens, bias, tile);
}

/// The length checks of [`LanesSpmmKernel`].
#[track_caller]
pub(crate) fn check_spmm_lanes(
    rows: &NmRows<'_>,
    x: &[f32],
    n_tokens: usize,
    bias: Option<&[f32]>,
    y: &[f32],
    stride: usize,
) {
    assert!(rows.all_in_lanes(), "rows not all in ready lanes");
    assert_eq!(x.len(), n_tokens * rows.cols(), "x is not n_tokens x cols");
    assert!(rows.n_rows() <= stride, "{} rows do not fit a stride of {stride}", rows.n_rows());
    if n_tokens > 0 {
        assert!(y.len() >= (n_tokens - 1) * stride + rows.n_rows(), "y is too short for {n_tokens} tokens");
    }
    if let Some(bias) = bias {
        assert_eq!(bias.len(), rows.n_rows(), "bias has {} values, not rows = {}", bias.len(), rows.n_rows());
    }
}

/// The length checks of [`PackKernel`].
#[track_caller]
pub(crate) fn check_pack(x: &[f32], n_tokens: usize, cols: usize, panel: &[f32]) {
    assert!(n_tokens <= TOKEN_BLOCK, "{n_tokens} tokens do not fit one panel");
    assert_eq!(x.len(), n_tokens * cols, "x is not n_tokens x cols");
    assert_eq!(panel.len(), cols * TOKEN_BLOCK, "panel is not cols x {TOKEN_BLOCK}");
}

/// The length checks of [`UnpackKernel`].
#[track_caller]
pub(crate) fn check_unpack(tile: &[f32], n_rows: usize, n_tokens: usize, dst: &[f32], stride: usize) {
    assert!(n_tokens <= TOKEN_BLOCK, "{n_tokens} tokens do not fit one tile");
    assert_eq!(tile.len(), n_rows * TOKEN_BLOCK, "tile is not n_rows x {TOKEN_BLOCK}");
    assert!(n_rows <= stride, "{n_rows} rows do not fit a stride of {stride}");
    if n_tokens > 0 {
        assert!(dst.len() >= (n_tokens - 1) * stride + n_rows, "dst is too short for {n_tokens} tokens");
    }
}
