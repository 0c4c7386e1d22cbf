//! Dot products of quantized blocks, the inner loop of quantized GEMV and GEMM.
//!
//! The GGML kernels follow ggml's reference (`ggml_vec_dot_*_generic`): per block the exact
//! integer dot product `sumi` of the stored values (Q4_0 as `nibble - 8`, Q5_0 as `q - 16`,
//! Q4_1 and Q5_1 unsigned), times `d_x * d_y` (the f16 scales in f32), plus `m_x * s_y` for the
//! formats with a minimum (`s_y` is the Q8_1 block's stored `d * sum(q)`), summed in f32 over
//! the blocks. The [`scalar`] kernels keep the f32 operation order of ggml's reference.
//!
//! ```
//! use lathe_quant::{dot, ggml};
//! let weights: Vec<f32> = (0..64).map(|i| ((i % 7) as f32 - 3.0) / 4.0).collect();
//! let activations: Vec<f32> = (0..64).map(|i| (i % 5) as f32 / 2.0).collect();
//! let mut w = vec![bytemuck::Zeroable::zeroed(); 2];
//! let mut a = vec![bytemuck::Zeroable::zeroed(); 2];
//! ggml::quantize_q4_0(&weights, &mut w);
//! ggml::quantize_q8_0(&activations, &mut a);
//! let exact: f32 = weights.iter().zip(&activations).map(|(w, a)| w * a).sum();
//! assert!((dot::dot_q4_0_q8_0(&w, &a) - exact).abs() < 0.5);
//! ```
//!
//! # Exactness and tolerance
//! Every path computes the integer parts exactly for every input, including -128 in an
//! activation block (which ggml's AVX2 `sign` trick gets wrong against a negative weight; its
//! quantizers never write -128), and [`dot_i8_i8`] is identical on every path: the i32 sum is
//! exact while it fits and otherwise wraps modulo 2^32. So is every integer sum of the int8 GEMM
//! kernel [`gemm_i8_i16_f32`], whose f32 outputs are then identical on every path too (each
//! takes the same f32 operations in the same order).
//!
//! The f32 results of a SIMD path differ from the scalar reference only in the order of the f32
//! operations. For `n` blocks, with `A` the sum over blocks of
//! `|d_x * d_y| * sum_j |q_x[j] * q_y[j]|  +  |m_x * s_y|`,
//! the two results differ by at most `(n + 8) * f32::EPSILON * A`. No absolute
//! term is needed: nonzero f16 scales keep every term at or above 2^-48 in magnitude, far from
//! the f32 subnormals. When the scales are 1 and `A < 2^24`, every partial sum is an exact
//! integer and all paths agree exactly.
//!
//! For [`dot_f32_f32`] of length `n` with finite products and a finite `sum |x[i] * y[i]|`, the
//! paths differ by at most `(n + 16) * f32::EPSILON * sum |x[i] * y[i]| + n * 2^-149` (the last
//! term for products that underflow). A NaN input gives NaN and an infinite input a non-finite
//! result on every path.

pub mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86_64;

use std::sync::OnceLock;

use crate::Isa;
use crate::ggml::{BlockQ4_0, BlockQ4_0x4, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_0x4, BlockQ8_1};

/// Four int8 weight rows times two int8 tokens, `result[token][row]` (see [`dot_i8_i8_4x2`]).
pub type I8Tile = fn([&[i8]; 4], [&[i8]; 2]) -> [[i32; 4]; 2];

/// Weight rows in one panel of the int8 GEMM (see [`gemm_i8_i16_f32`]).
pub const PANEL_ROWS: usize = 16;

/// Bytes of one column pair of a panel: two columns of [`PANEL_ROWS`] weights.
pub const PANEL_PAIR_BYTES: usize = 2 * PANEL_ROWS;

/// Bytes of one column quad of a panel of the 7-bit activation kernel ([`gemm_u8_i8_f32`]):
/// four columns of [`PANEL_ROWS`] weights.
pub const PANEL_QUAD_BYTES: usize = 4 * PANEL_ROWS;

/// The largest activation magnitude [`gemm_u8_i8_f32`] takes exactly: each pair of products
/// `u0 * a0 + u1 * a1` of weight bytes (at most 255) and activations stays within the i16 that
/// `maddubs` sums it in (`2 * 255 * 64 = 32640`).
pub const QUAD_MAX_ACTIVATION: i8 = 64;

/// The layout of int8 weights packed for [`gemm_i8_i16_f32`] (or [`gemm_u8_i8_f32`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PanelShape {
    /// Output rows; the weights hold `rows.div_ceil(PANEL_ROWS)` panels, the last one padded
    /// with rows of zeros.
    pub rows: usize,
    /// Columns of every row (and every token), even (a multiple of four for
    /// [`gemm_u8_i8_f32`]): each group padded to that length.
    pub cols: usize,
    /// Columns of a group of weights sharing a scale: even (a multiple of four for
    /// [`gemm_u8_i8_f32`]), non-zero, a divisor of `cols`.
    pub group_len: usize,
}

/// The f32 side of the int8 GEMM kernel ([`gemm_i8_i16_f32`]): what turns each group's integer
/// sums into outputs.
#[derive(Debug, Clone, Copy)]
pub struct PanelScales<'a> {
    /// `[n_panels, n_groups]`: the weight scales of each panel's rows in each group of columns.
    pub weight_scales: &'a [[f32; PANEL_ROWS]],
    /// For asymmetric weights: `[n_panels, n_groups]` zero points of each panel's rows, and
    /// `[n_tokens, n_groups]` sums of each token's (int8) activations over each group.
    pub zero_points: Option<(&'a [[i32; PANEL_ROWS]], &'a [i32])>,
    /// `[n_tokens]`: each token's activation scale (this also gives the number of tokens).
    pub token_scales: &'a [f32],
    /// `[rows]`: the bias, added last.
    pub bias: Option<&'a [f32]>,
}

/// Where [`gemm_i8_i16_f32`] writes: token `t`'s output of row `r` at `values[t * stride + r]`.
#[derive(Debug)]
pub struct PanelOutput<'a> {
    /// The outputs, from token 0's first row.
    pub values: &'a mut [f32],
    /// Distance between two tokens' outputs, at least the rows.
    pub stride: usize,
}

/// The int8 GEMM's kernel: packed int8 weights times every token (widened to i16), scaled to
/// f32 (see [`gemm_i8_i16_f32`]).
pub type I8PanelKernel = fn(&[i8], PanelShape, &[i16], PanelScales<'_>, PanelOutput<'_>);

/// The 7-bit activation GEMM's kernel: packed weight bytes times every token's int8 activations
/// (in `-64..=64`), scaled to f32 (see [`gemm_u8_i8_f32`]).
pub type U8PanelKernel = fn(&[u8], PanelShape, &[i8], PanelScales<'_>, PanelOutput<'_>);

/// The dot-product kernels of one instruction set. Every kernel panics when its operands differ
/// in length; otherwise all agree with the scalar ones as the [module docs](self) state.
#[derive(Debug, Clone, Copy)]
#[allow(missing_docs)]
pub struct DotKernels {
    pub isa: Isa,
    pub q8_0_q8_0: fn(&[BlockQ8_0], &[BlockQ8_0]) -> f32,
    pub q4_0_q8_0: fn(&[BlockQ4_0], &[BlockQ8_0]) -> f32,
    pub q4_1_q8_1: fn(&[BlockQ4_1], &[BlockQ8_1]) -> f32,
    pub q5_0_q8_0: fn(&[BlockQ5_0], &[BlockQ8_0]) -> f32,
    pub q5_1_q8_1: fn(&[BlockQ5_1], &[BlockQ8_1]) -> f32,
    pub i8_i8: fn(&[i8], &[i8]) -> i32,
    pub f32_f32: fn(&[f32], &[f32]) -> f32,
    pub q8_0x4_q8_0: fn(&[BlockQ8_0x4], &[BlockQ8_0]) -> [f32; 4],
    pub q4_0x4_q8_0: fn(&[BlockQ4_0x4], &[BlockQ8_0]) -> [f32; 4],
    pub i8_i8_x4: fn([&[i8]; 4], &[i8]) -> [i32; 4],
    pub i8_i8_4x2: I8Tile,
    pub i8_i16_f32_panel: I8PanelKernel,
    pub u8_i8_f32_panel: U8PanelKernel,
}

const SCALAR: DotKernels = DotKernels {
    isa: Isa::Scalar,
    q8_0_q8_0: scalar::dot_q8_0_q8_0,
    q4_0_q8_0: scalar::dot_q4_0_q8_0,
    q4_1_q8_1: scalar::dot_q4_1_q8_1,
    q5_0_q8_0: scalar::dot_q5_0_q8_0,
    q5_1_q8_1: scalar::dot_q5_1_q8_1,
    i8_i8: scalar::dot_i8_i8,
    f32_f32: scalar::dot_f32_f32,
    q8_0x4_q8_0: scalar::dot_q8_0x4_q8_0,
    q4_0x4_q8_0: scalar::dot_q4_0x4_q8_0,
    i8_i8_x4: scalar::dot_i8_i8_x4,
    i8_i8_4x2: scalar::dot_i8_i8_4x2,
    i8_i16_f32_panel: scalar::gemm_i8_i16_f32,
    u8_i8_f32_panel: scalar::gemm_u8_i8_f32,
};

/// The kernels of `isa`, or `None` when this CPU cannot run them.
pub fn kernels(isa: Isa) -> Option<&'static DotKernels> {
    match isa {
        Isa::Scalar => Some(&SCALAR),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86_64::avx2::kernels(),
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 => None,
    }
}

/// The kernels of [`crate::isa::active`], chosen once.
pub(crate) fn dispatched() -> &'static DotKernels {
    static DISPATCHED: OnceLock<&'static DotKernels> = OnceLock::new();
    DISPATCHED.get_or_init(|| kernels(crate::isa::active()).unwrap_or(&SCALAR))
}

/// The shape check of [`gemm_i8_i16_f32`] (whose panels hold column pairs: `step` 2) and
/// [`gemm_u8_i8_f32`] (column quads: `step` 4), given the lengths of the panels and of the
/// activations; gives the number of panels, of tokens and of groups.
#[track_caller]
pub(crate) fn assert_panel_shape(
    panel_bytes: usize,
    step: usize,
    shape: PanelShape,
    n_activations: usize,
    scales: &PanelScales<'_>,
    out: &PanelOutput<'_>,
) -> (usize, usize, usize) {
    let PanelShape { rows, cols, group_len } = shape;
    assert!(cols % step == 0, "{cols} columns are not whole steps of {step}");
    assert!(group_len > 0 && group_len % step == 0, "groups of {group_len} columns are not whole steps of {step}");
    let n_groups = cols / group_len;
    assert!(n_groups * group_len == cols, "groups of {group_len} columns do not cover {cols}");
    let n_panels = rows.div_ceil(PANEL_ROWS);
    let expected = n_panels * cols * PANEL_ROWS;
    assert!(panel_bytes == expected, "{panel_bytes} bytes of panels for {rows} rows of {cols} (expected {expected})");
    let n_tokens = scales.token_scales.len();
    assert!(n_activations == n_tokens * cols, "{n_activations} activations are not {n_tokens} tokens of {cols}");
    let n_tables = n_panels * n_groups;
    assert!(
        scales.weight_scales.len() == n_tables,
        "{} groups of weight scales for {n_panels} panels of {n_groups} groups",
        scales.weight_scales.len()
    );
    if let Some((zero_points, activation_sums)) = scales.zero_points {
        assert!(
            zero_points.len() == n_tables,
            "{} groups of zero points for {n_panels} panels of {n_groups} groups",
            zero_points.len()
        );
        assert!(
            activation_sums.len() == n_tokens * n_groups,
            "{} activation sums for {n_tokens} tokens and {n_groups} groups",
            activation_sums.len()
        );
    }
    if let Some(bias) = scales.bias {
        assert!(bias.len() == rows, "{} bias values for {rows} rows", bias.len());
    }
    if n_tokens > 0 {
        assert!(n_tokens == 1 || out.stride >= rows, "outputs of {rows} rows overlap at stride {}", out.stride);
        let needed = (n_tokens - 1) * out.stride + rows;
        assert!(out.values.len() >= needed, "{} outputs where {needed} are written", out.values.len());
    }
    (n_panels, n_tokens, n_groups)
}

/// Weight `(row, col)` of a packed panel (see [`gemm_i8_i16_f32`] for the layout).
#[inline]
pub(crate) fn panel_index(row: usize, col: usize) -> usize {
    col / 2 * PANEL_PAIR_BYTES + row / 8 * 16 + row % 8 * 2 + col % 2
}

/// Weight `(row, col)` of a panel packed by column quads (see [`gemm_u8_i8_f32`]).
#[inline]
pub(crate) fn quad_panel_index(row: usize, col: usize) -> usize {
    col / 4 * PANEL_QUAD_BYTES + row / 8 * 32 + row % 8 * 4 + col % 4
}

/// The length check every kernel starts with.
#[track_caller]
pub(crate) fn assert_same_len(x: usize, y: usize) {
    assert!(x == y, "dot product operands differ in length: {x} and {y}");
}

macro_rules! dispatched_kernels {
    ($( $name:ident: $field:ident($x:ty, $y:ty) -> $out:ty, $what:literal; )*) => {$(
        #[doc = concat!($what, ", on the fastest kernels this CPU runs (see the [module docs](self) for how \
            they agree with [`scalar::", stringify!($name), "`]).\n\n# Panics\nIf `x.len() != y.len()`.")]
        pub fn $name(x: $x, y: $y) -> $out {
            (dispatched().$field)(x, y)
        }
    )*};
}

dispatched_kernels! {
    dot_q8_0_q8_0: q8_0_q8_0(&[BlockQ8_0], &[BlockQ8_0]) -> f32, "Q8_0 weights times Q8_0 activations";
    dot_q4_0_q8_0: q4_0_q8_0(&[BlockQ4_0], &[BlockQ8_0]) -> f32, "Q4_0 weights times Q8_0 activations";
    dot_q4_1_q8_1: q4_1_q8_1(&[BlockQ4_1], &[BlockQ8_1]) -> f32, "Q4_1 weights times Q8_1 activations";
    dot_q5_0_q8_0: q5_0_q8_0(&[BlockQ5_0], &[BlockQ8_0]) -> f32, "Q5_0 weights times Q8_0 activations";
    dot_q5_1_q8_1: q5_1_q8_1(&[BlockQ5_1], &[BlockQ8_1]) -> f32, "Q5_1 weights times Q8_1 activations";
    dot_i8_i8: i8_i8(&[i8], &[i8]) -> i32, "Int8 times int8, summed exactly in i32 (wrapping on overflow)";
    dot_f32_f32: f32_f32(&[f32], &[f32]) -> f32, "f32 times f32";
    dot_q8_0x4_q8_0: q8_0x4_q8_0(&[BlockQ8_0x4], &[BlockQ8_0]) -> [f32; 4],
        "Four interleaved rows of Q8_0 weights times the same Q8_0 activations: `dot_q8_0_q8_0` of each row";
    dot_q4_0x4_q8_0: q4_0x4_q8_0(&[BlockQ4_0x4], &[BlockQ8_0]) -> [f32; 4],
        "Four interleaved rows of Q4_0 weights times the same Q8_0 activations: `dot_q4_0_q8_0` of each row";
}

macro_rules! dispatched_kernels_x4 {
    ($( $name:ident: $field:ident($x:ty, $y:ty) -> $out:ty, $single:ident; )*) => {$(
        #[doc = concat!("Four rows at once: [`", stringify!($single), "`] of each of `rows` with the same `y`, \
            which is loaded once for the four (the inner loop of GEMV and GEMM). Each result agrees with \
            [`scalar::", stringify!($single), "`] as the [module docs](self) state.\n\n# Panics\n\
            If a row's length differs from `y.len()`.")]
        pub fn $name(rows: [&[$x]; 4], y: &[$y]) -> [$out; 4] {
            (dispatched().$field)(rows, y)
        }
    )*};
}

dispatched_kernels_x4! {
    dot_i8_i8_x4: i8_i8_x4(i8, i8) -> i32, dot_i8_i8;
}

/// Four int8 rows times two int8 tokens: `result[t][r]` is [`dot_i8_i8`] of `rows[r]` and
/// `tokens[t]`, identical on every path.
///
/// # Panics
/// If the rows and tokens differ in length.
pub fn dot_i8_i8_4x2(rows: [&[i8]; 4], tokens: [&[i8]; 2]) -> [[i32; 4]; 2] {
    (dispatched().i8_i8_4x2)(rows, tokens)
}

/// The int8 GEMM's kernel: int8 weight rows packed in panels of [`PANEL_ROWS`] times every token
/// of `tokens` (row-major i16 of `shape.cols`: int8 activations widened once per GEMM), scaled
/// to f32 and written to `out`.
///
/// For token `t` and row `r`, with `integer[g]` the wrapping i32 sum of `w[r][c] * tokens[t][c]`
/// over the columns `c` of group `g` (for int8 activations, [`dot_i8_i8`] of the group's spans),
/// minus `zero_point[g][r] * activation_sum[t][g]` (wrapping) for asymmetric weights, the output
/// is `((0.0 + s[0][r] * integer[0] as f32) + s[1][r] * integer[1] as f32 + ...) *
/// token_scale[t]`, plus `bias[r]` if any: one f32 product and one sum per group in group
/// order, then one product and one sum, as the GEMV's scalar steps. Identical on every path.
///
/// Each panel holds `cols / 2` column pairs of [`PANEL_PAIR_BYTES`], so that one vector holds
/// eight rows' weights of two adjacent columns (the operand `madd` multiplies with a broadcast
/// pair of activations): weight `(r, c)` of a panel is its byte `c / 2 * 32 + r / 8 * 16 + r % 8 *
/// 2 + c % 2`, that is, per column pair, rows 0..8 then rows 8..16, each row's two weights side
/// by side. Panel `p` holds rows `16 p..16 p + 16`.
///
/// # Panics
/// If the shape's columns or group length are odd (or the group length zero or not a divisor of
/// the columns), `panels` does not hold the shape's panels, `tokens` is not one row of `cols` per
/// token scale, a scale or zero point table is not one entry per panel and group, the
/// activation sums are not one per token and group, the bias is not one value per row, or `out`
/// is too short for the rows at its stride (or its stride below the rows).
pub fn gemm_i8_i16_f32(
    panels: &[i8],
    shape: PanelShape,
    tokens: &[i16],
    scales: PanelScales<'_>,
    out: PanelOutput<'_>,
) {
    (dispatched().i8_i16_f32_panel)(panels, shape, tokens, scales, out)
}

/// The 7-bit activation GEMM's kernel: weight bytes `u` (unsigned, 0..=255) packed in panels of
/// [`PANEL_ROWS`] rows times every token's int8 activations `a`, scaled to f32 and written to
/// `out`, as [`gemm_i8_i16_f32`] does with its integer sums (zero points, scales, bias and the
/// f32 operation order are the same; a caller stores int8 weights `q` as `u = q + 128` and gives
/// zero points `z + 128`, so that `sum(u * a) - (z + 128) * sum(a) = sum((q - z) * a)`).
///
/// The integer sum of a group is the wrapping i32 sum, over its column pairs `(c, c + 1)`
/// (`c` even), of `u[c] * a[c] + u[c + 1] * a[c + 1]` saturated to i16 (what `maddubs`
/// computes): exact, with no saturation, when every activation lies in `-64..=64`
/// ([`QUAD_MAX_ACTIVATION`]), which is why lathe quantizes these activations to 7 bits
/// (`-63..=63`). Identical on every path for every input.
///
/// Each panel holds `cols / 4` column quads of [`PANEL_QUAD_BYTES`]: weight `(r, c)` of a panel
/// is its byte `c / 4 * 64 + r / 8 * 32 + r % 8 * 4 + c % 4`, that is, per column quad, rows
/// 0..8 then rows 8..16, each row's four weights side by side (one i32 lane a row, which a
/// broadcast quad of activations multiplies).
///
/// # Panics
/// As [`gemm_i8_i16_f32`], with the columns and group length multiples of four.
pub fn gemm_u8_i8_f32(panels: &[u8], shape: PanelShape, tokens: &[i8], scales: PanelScales<'_>, out: PanelOutput<'_>) {
    (dispatched().u8_i8_f32_panel)(panels, shape, tokens, scales, out)
}

#[cfg(test)]
mod tests {
    use std::fmt::Debug;
    use std::panic::{AssertUnwindSafe, catch_unwind};

    use half::f16;
    use proptest::array::{uniform4, uniform16, uniform32};
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::scalar::{integer_dot, q4_0_values, q4_1_values, q5_0_values, q5_1_values};
    use super::*;
    use crate::ggml::{self, Interleaved, QK};

    /// Every table this CPU runs, scalar first.
    fn tables() -> Vec<&'static DotKernels> {
        Isa::supported().into_iter().map(|isa| kernels(isa).expect("supported isa has a table")).collect()
    }

    fn h(value: f32) -> f16 {
        f16::from_f32(value)
    }

    /// The bound of the module docs: `(n + 8) * EPSILON * A` for `n` blocks.
    fn block_tolerance(n_blocks: usize, magnitude: f64) -> f64 {
        (n_blocks as f64 + 8.0) * f64::from(f32::EPSILON) * magnitude
    }

    /// One block's share of `A`: `|d_x * d_y| * sum_j |q_x[j] * q_y[j]|  +  |m_x * s_y|`.
    fn block_magnitude(dx: f16, dy: f16, qx: &[i8; QK], qy: &[i8; QK], min_term: f64) -> f64 {
        let abs_dot: i64 = qx.iter().zip(qy).map(|(&a, &b)| (i64::from(a) * i64::from(b)).abs()).sum();
        (f64::from(dx.to_f32()) * f64::from(dy.to_f32())).abs() * abs_dot as f64 + min_term.abs()
    }

    fn min_term(m: f16, s: f16) -> f64 {
        f64::from(m.to_f32()) * f64::from(s.to_f32())
    }

    /// `A` and the exact real-number result for each format.
    trait Pair {
        fn magnitude_and_exact(&self) -> (f64, f64);
    }

    macro_rules! impl_pair {
        ($x:ty, $y:ty, |$bx:ident, $by:ident| $values:expr, $min:expr) => {
            impl Pair for ($x, $y) {
                fn magnitude_and_exact(&self) -> (f64, f64) {
                    let ($bx, $by) = self;
                    let values = $values;
                    let min = $min;
                    let d = f64::from($bx.d.to_f32()) * f64::from($by.d.to_f32());
                    let exact = d * f64::from(integer_dot(&values, &$by.qs)) + min;
                    (block_magnitude($bx.d, $by.d, &values, &$by.qs, min), exact)
                }
            }
        };
    }

    impl_pair!(BlockQ8_0, BlockQ8_0, |bx, by| bx.qs, 0.0);
    impl_pair!(BlockQ4_0, BlockQ8_0, |bx, by| q4_0_values(bx), 0.0);
    impl_pair!(BlockQ4_1, BlockQ8_1, |bx, by| q4_1_values(bx.qs), min_term(bx.m, by.s));
    impl_pair!(BlockQ5_0, BlockQ8_0, |bx, by| q5_0_values(bx), 0.0);
    impl_pair!(BlockQ5_1, BlockQ8_1, |bx, by| q5_1_values(bx.qh, bx.qs), min_term(bx.m, by.s));

    type Kernel<X, Y> = fn(&DotKernels) -> fn(&[X], &[Y]) -> f32;

    /// Checks every table against the scalar one within the documented bound, and against the
    /// exact result within half of it (the scalar path's own share).
    fn check_blocks<X: Copy, Y: Copy>(x: &[X], y: &[Y], kernel: Kernel<X, Y>) -> Result<(), TestCaseError>
    where
        (X, Y): Pair,
    {
        let (magnitude, exact) = x
            .iter()
            .zip(y)
            .map(|(&bx, &by)| (bx, by).magnitude_and_exact())
            .fold((0.0, 0.0), |(m, e), (bm, be)| (m + bm, e + be));
        let bound = block_tolerance(x.len(), magnitude);
        let reference = kernel(&SCALAR)(x, y);
        prop_assert!((f64::from(reference) - exact).abs() <= bound / 2.0, "scalar {reference} vs exact {exact}");
        for table in tables() {
            let fast = kernel(table)(x, y);
            let error = (f64::from(fast) - f64::from(reference)).abs();
            prop_assert!(error <= bound, "{}: {fast} vs scalar {reference}, bound {bound}", table.isa.name());
        }
        Ok(())
    }

    /// Checks that every table reproduces the exact result, for blocks whose terms and partial
    /// sums are integers below 2^24.
    fn check_blocks_exact<X: Copy, Y: Copy>(x: &[X], y: &[Y], kernel: Kernel<X, Y>) -> Result<(), TestCaseError>
    where
        (X, Y): Pair,
    {
        let (magnitude, exact) = x
            .iter()
            .zip(y)
            .map(|(&bx, &by)| (bx, by).magnitude_and_exact())
            .fold((0.0, 0.0), |(m, e), (bm, be)| (m + bm, e + be));
        prop_assert!(magnitude < f64::from(1u32 << 24));
        for table in tables() {
            prop_assert_eq!(f64::from(kernel(table)(x, y)), exact, "{}", table.isa.name());
        }
        Ok(())
    }

    /// Finite f16 scales with the extremes: large, subnormal, zero of both signs.
    fn scale() -> impl Strategy<Value = f16> {
        prop_oneof![
            6 => (-8.0f32..8.0).prop_map(h),
            1 => Just(f16::MAX),
            1 => Just(f16::MIN),
            1 => (1u16..0x400).prop_map(f16::from_bits),
            1 => (0x8001u16..0x8400).prop_map(f16::from_bits),
            1 => Just(f16::ZERO),
            1 => Just(f16::NEG_ZERO),
        ]
    }

    fn unit() -> impl Strategy<Value = f16> + Clone {
        Just(f16::ONE)
    }

    /// Small integers for `m` and `s` in the exact tests.
    fn small_integer() -> impl Strategy<Value = f16> + Clone {
        (-64i8..=64).prop_map(|v| h(f32::from(v)))
    }

    /// The whole i8 range, with the extremes often.
    fn int8() -> impl Strategy<Value = i8> + Clone {
        prop_oneof![4 => any::<i8>(), 1 => Just(i8::MIN), 1 => Just(i8::MAX)]
    }

    fn activations() -> impl Strategy<Value = [i8; QK]> + Clone {
        uniform32(int8())
    }

    /// `rows` (each `len` weights) packed in panels as [`gemm_i8_i16_f32`] reads them.
    fn pack_panels(rows: &[Vec<i8>], len: usize) -> Vec<i8> {
        let panel_len = len / 2 * PANEL_PAIR_BYTES;
        let mut panels = vec![0i8; rows.len().div_ceil(PANEL_ROWS) * panel_len];
        for (r, row) in rows.iter().enumerate() {
            for (c, &w) in row.iter().enumerate() {
                panels[r / PANEL_ROWS * panel_len + panel_index(r % PANEL_ROWS, c)] = w;
            }
        }
        panels
    }

    /// One case of the int8 GEMM kernel: weights, activations and everything that scales them.
    #[derive(Debug, Clone)]
    struct PanelCase {
        rows: Vec<Vec<i8>>,
        len: usize,
        group_len: usize,
        tokens: Vec<i16>,
        weight_scales: Vec<[f32; PANEL_ROWS]>,
        zero_points: Option<(Vec<[i32; PANEL_ROWS]>, Vec<i32>)>,
        token_scales: Vec<f32>,
        bias: Option<Vec<f32>>,
        stride: usize,
    }

    impl PanelCase {
        fn shape(&self) -> PanelShape {
            PanelShape { rows: self.rows.len(), cols: self.len, group_len: self.group_len }
        }

        fn scales(&self) -> PanelScales<'_> {
            PanelScales {
                weight_scales: &self.weight_scales,
                zero_points: self.zero_points.as_ref().map(|(z, sums)| (&z[..], &sums[..])),
                token_scales: &self.token_scales,
                bias: self.bias.as_deref(),
            }
        }

        /// The outputs by the formula of [`gemm_i8_i16_f32`], with the integer sums taken exactly
        /// in i64 and then wrapped, and `NAN_PATTERN` wherever nothing is written.
        fn expected(&self) -> Vec<u32> {
            expected_outputs(&self.scales(), self.rows.len(), self.len / self.group_len, self.stride, |t, r, g| {
                let span = g * self.group_len..(g + 1) * self.group_len;
                span.map(|c| i64::from(self.rows[r][c]) * i64::from(self.tokens[t * self.len + c])).sum::<i64>() as i32
            })
        }

        fn out_len(&self) -> usize {
            // Room past the last token's rows, to see that nothing is written there.
            self.token_scales.len() * self.stride + 3
        }
    }

    /// What the outputs hold before the kernel runs: a NaN no kernel computes.
    const NAN_PATTERN: u32 = 0x7fc0_1234;

    /// The f32 steps of the panel kernels' formula for every token and row, from each group's
    /// integer sum `integer(token, row, group)`; `NAN_PATTERN` wherever nothing is written.
    fn expected_outputs(
        scales: &PanelScales<'_>,
        n_rows: usize,
        n_groups: usize,
        stride: usize,
        integer: impl Fn(usize, usize, usize) -> i32,
    ) -> Vec<u32> {
        let mut out = vec![NAN_PATTERN; scales.token_scales.len() * stride + 3];
        for (t, &token_scale) in scales.token_scales.iter().enumerate() {
            for r in 0..n_rows {
                let mut acc = 0.0f32;
                for g in 0..n_groups {
                    let table = r / PANEL_ROWS * n_groups + g;
                    let mut integer = integer(t, r, g);
                    if let Some((zero_points, sums)) = scales.zero_points {
                        let offset = i64::from(zero_points[table][r % PANEL_ROWS]) * i64::from(sums[t * n_groups + g]);
                        integer = (i64::from(integer) - offset) as i32;
                    }
                    acc += scales.weight_scales[table][r % PANEL_ROWS] * integer as f32;
                }
                let mut value = acc * token_scale;
                if let Some(bias) = scales.bias {
                    value += bias[r];
                }
                out[t * stride + r] = value.to_bits();
            }
        }
        out
    }

    /// One case of the 7-bit activation kernel: the int8 case's weights as bytes and its tokens
    /// as i8, mostly within `-64..=64` (exact), sometimes anywhere (saturating pairs).
    #[derive(Debug, Clone)]
    struct QuadCase {
        common: PanelCase,
        weights: Vec<Vec<u8>>,
        tokens: Vec<i8>,
    }

    impl QuadCase {
        /// The formula of [`gemm_u8_i8_f32`]: each column pair's products saturated to i16,
        /// summed in i64 and wrapped.
        fn expected(&self) -> Vec<u32> {
            let case = &self.common;
            expected_outputs(&case.scales(), self.weights.len(), case.len / case.group_len, case.stride, |t, r, g| {
                let product = |c: usize| i64::from(self.weights[r][c]) * i64::from(self.tokens[t * case.len + c]);
                let pairs = (g * case.group_len..(g + 1) * case.group_len).step_by(2);
                pairs.map(|c| (product(c) + product(c + 1)).clamp(-32768, 32767)).sum::<i64>() as i32
            })
        }
    }

    /// Quad cases: the panel cases with groups of an even number of pairs.
    fn quad_case() -> impl Strategy<Value = QuadCase> {
        (panel_case(), any::<bool>()).prop_filter("whole quads", |(case, _)| case.group_len % 4 == 0).prop_flat_map(
            |(common, anywhere)| {
                let n_weights = common.rows.len() * common.len;
                let token = if anywhere { (-128i8..=127).boxed() } else { (-64i8..=64).boxed() };
                let (n_rows, cols) = (common.rows.len(), common.len);
                (vec(any::<u8>(), n_weights), vec(token, common.tokens.len())).prop_map(move |(weights, tokens)| {
                    let weights = (0..n_rows).map(|r| weights[r * cols..(r + 1) * cols].to_vec()).collect();
                    QuadCase { common: common.clone(), weights, tokens }
                })
            },
        )
    }

    /// Checks every table's 7-bit activation kernel bit for bit against the formula, and that
    /// nothing outside the outputs' rows is written.
    fn check_quad_panels(case: &QuadCase) -> Result<(), TestCaseError> {
        let common = &case.common;
        let panel_len = common.len * PANEL_ROWS;
        let mut panels = vec![0u8; case.weights.len().div_ceil(PANEL_ROWS) * panel_len];
        for (r, row) in case.weights.iter().enumerate() {
            for (c, &w) in row.iter().enumerate() {
                panels[r / PANEL_ROWS * panel_len + quad_panel_index(r % PANEL_ROWS, c)] = w;
            }
        }
        let expected = case.expected();
        for table in tables() {
            let mut out: Vec<f32> = vec![f32::from_bits(NAN_PATTERN); expected.len()];
            let output = PanelOutput { values: &mut out, stride: common.stride };
            (table.u8_i8_f32_panel)(&panels, common.shape(), &case.tokens, common.scales(), output);
            let found: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
            prop_assert_eq!(&found, &expected, "{}", table.isa.name());
        }
        Ok(())
    }

    /// Finite scales with the extremes (zero, both signs, tiny and huge); the f32 steps are
    /// compared bit for bit, overflow and NaN included.
    fn panel_scale() -> impl Strategy<Value = f32> + Clone {
        prop_oneof![
            6 => -2.0f32..2.0,
            1 => Just(0.0f32),
            1 => Just(-0.0f32),
            1 => Just(f32::MIN_POSITIVE),
            1 => Just(1e30f32),
            1 => Just(f32::from_bits(1)),
        ]
    }

    /// Panel cases: 1..=20 pairs per group, 0..=4 groups, 0..=19 tokens (every tile size of the
    /// AVX2 kernel, one to six tokens, and every rest after tiles of six: 14 tokens as 6 + 4 + 4,
    /// 19 as 6 + 6 + 4 + 3), 0..=40 rows (up to three panels, the last one partial), optional zero points
    /// and bias, a stride of at least the rows.
    fn panel_case() -> impl Strategy<Value = PanelCase> {
        (1usize..=20, 0usize..=4, 0usize..=19, 0usize..=40, 0usize..=3).prop_flat_map(
            |(pairs_per_group, n_groups, n_tokens, n_rows, extra)| {
                let len = 2 * pairs_per_group * n_groups;
                let n_tables = n_rows.div_ceil(PANEL_ROWS) * n_groups;
                let token = prop_oneof![
                    4 => any::<i16>(), 1 => Just(i16::MIN), 1 => Just(i16::MAX), 4 => int8().prop_map(i16::from)
                ];
                let zero_points = (
                    vec(uniform16(any::<i8>().prop_map(i32::from)), n_tables),
                    vec(prop_oneof![any::<i32>(), (-4064i32..=4064)], n_tokens * n_groups),
                );
                (
                    vec(vec(int8(), len), n_rows),
                    vec(token, len * n_tokens),
                    vec(uniform16(panel_scale()), n_tables),
                    proptest::option::of(zero_points),
                    vec(panel_scale(), n_tokens),
                    proptest::option::of(vec(panel_scale(), n_rows)),
                )
                    .prop_map(move |(rows, tokens, weight_scales, zero_points, token_scales, bias)| {
                        PanelCase {
                            rows,
                            len,
                            group_len: 2 * pairs_per_group,
                            tokens,
                            weight_scales,
                            zero_points,
                            token_scales,
                            bias,
                            stride: n_rows + extra,
                        }
                    })
            },
        )
    }

    /// Checks every table's int8 GEMM kernel bit for bit against the formula, and that nothing
    /// outside the outputs' rows is written.
    fn check_panels(case: &PanelCase) -> Result<(), TestCaseError> {
        let panels = pack_panels(&case.rows, case.len);
        let expected = case.expected();
        for table in tables() {
            let mut out: Vec<f32> = vec![f32::from_bits(NAN_PATTERN); case.out_len()];
            let output = PanelOutput { values: &mut out, stride: case.stride };
            (table.i8_i16_f32_panel)(&panels, case.shape(), &case.tokens, case.scales(), output);
            let found: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
            prop_assert_eq!(&found, &expected, "{}", table.isa.name());
        }
        Ok(())
    }

    fn q8_0(d: impl Strategy<Value = f16>) -> impl Strategy<Value = BlockQ8_0> {
        (d, activations()).prop_map(|(d, qs)| BlockQ8_0 { d, qs })
    }

    fn q8_1(d: impl Strategy<Value = f16>, s: impl Strategy<Value = f16>) -> impl Strategy<Value = BlockQ8_1> {
        (d, s, activations()).prop_map(|(d, s, qs)| BlockQ8_1 { d, s, qs })
    }

    fn q4_0(d: impl Strategy<Value = f16>) -> impl Strategy<Value = BlockQ4_0> {
        (d, uniform16(any::<u8>())).prop_map(|(d, qs)| BlockQ4_0 { d, qs })
    }

    fn q4_1(d: impl Strategy<Value = f16>, m: impl Strategy<Value = f16>) -> impl Strategy<Value = BlockQ4_1> {
        (d, m, uniform16(any::<u8>())).prop_map(|(d, m, qs)| BlockQ4_1 { d, m, qs })
    }

    fn q5_0(d: impl Strategy<Value = f16>) -> impl Strategy<Value = BlockQ5_0> {
        (d, uniform4(any::<u8>()), uniform16(any::<u8>())).prop_map(|(d, qh, qs)| BlockQ5_0 { d, qh, qs })
    }

    fn q5_1(d: impl Strategy<Value = f16>, m: impl Strategy<Value = f16>) -> impl Strategy<Value = BlockQ5_1> {
        (d, m, uniform4(any::<u8>()), uniform16(any::<u8>())).prop_map(|(d, m, qh, qs)| BlockQ5_1 { d, m, qh, qs })
    }

    /// Weight and activation blocks starting `offset` blocks into their vectors (so the slices
    /// start at varying addresses), sometimes all equal; 0 to 12 pairs.
    fn pairs<X: Clone + Debug, Y: Clone + Debug>(
        x: impl Strategy<Value = X>,
        y: impl Strategy<Value = Y>,
    ) -> impl Strategy<Value = (Vec<X>, Vec<Y>, usize)> {
        (vec((x, y), 0..=12), 0usize..=3, any::<bool>()).prop_map(|(pairs, offset, all_equal)| {
            let pairs = match pairs.first() {
                Some(first) if all_equal => vec![first.clone(); pairs.len()],
                _ => pairs,
            };
            let offset = offset.min(pairs.len());
            let (x, y) = pairs.into_iter().unzip();
            (x, y, offset)
        })
    }

    /// The slices proptest hands to the f32 and int8 kernels: lengths 0..=4*32+3 after an
    /// offset of up to three elements.
    fn offset_pair<T: Clone + Debug>(
        value: impl Strategy<Value = T> + Clone,
    ) -> impl Strategy<Value = (Vec<T>, Vec<T>)> {
        (0usize..=3, 0usize..=4 * 32 + 3).prop_flat_map(move |(offset, len)| {
            (vec(value.clone(), offset + len), vec(value.clone(), offset + len))
                .prop_map(move |(x, y)| (x[offset..].to_vec(), y[offset..].to_vec()))
        })
    }

    type FourRowKernel<Q, Y> = fn(&DotKernels) -> fn(&[Q], &[Y]) -> [f32; 4];

    /// Four rows of weight blocks and one of activations, each row starting `offset` blocks in.
    fn quads<X: Clone + Debug, Y: Clone + Debug>(
        x: impl Strategy<Value = X>,
        y: impl Strategy<Value = Y>,
    ) -> impl Strategy<Value = (Vec<[X; 4]>, Vec<Y>, usize)> {
        (vec((uniform4(x), y), 0..=12), 0usize..=3).prop_map(|(blocks, offset)| {
            let offset = offset.min(blocks.len());
            let (x, y) = blocks.into_iter().unzip();
            (x, y, offset)
        })
    }

    /// Every table's four-row kernel against the scalar single-row one, row by row, within the
    /// documented bound; the scalar four-row kernel must equal the single-row one exactly.
    fn check_quads<Q: Interleaved, Y: Copy>(
        x: &[[Q::Block; 4]],
        y: &[Y],
        single: fn(&[Q::Block], &[Y]) -> f32,
        four: FourRowKernel<Q, Y>,
    ) -> Result<(), TestCaseError>
    where
        (Q::Block, Y): Pair,
    {
        let interleaved: Vec<Q> = x.iter().map(|&blocks| Q::from_blocks(blocks)).collect();
        for table in tables() {
            let fast = four(table)(&interleaved, y);
            for r in 0..4 {
                let row: Vec<Q::Block> = x.iter().map(|blocks| blocks[r]).collect();
                let reference = single(&row, y);
                let magnitude: f64 = row.iter().zip(y).map(|(&bx, &by)| (bx, by).magnitude_and_exact().0).sum();
                let error = (f64::from(fast[r]) - f64::from(reference)).abs();
                let bound = if table.isa == Isa::Scalar { 0.0 } else { block_tolerance(x.len(), magnitude) };
                prop_assert!(error <= bound, "{} row {r}: {} vs {reference}", table.isa.name(), fast[r]);
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn q8_0x4_q8_0_matches_scalar((x, y, offset) in quads(q8_0(scale()), q8_0(scale()))) {
            check_quads::<BlockQ8_0x4, _>(&x[offset..], &y[offset..], scalar::dot_q8_0_q8_0, |k| k.q8_0x4_q8_0)?;
        }

        #[test]
        fn q4_0x4_q8_0_matches_scalar((x, y, offset) in quads(q4_0(scale()), q8_0(scale()))) {
            check_quads::<BlockQ4_0x4, _>(&x[offset..], &y[offset..], scalar::dot_q4_0_q8_0, |k| k.q4_0x4_q8_0)?;
        }

        #[test]
        fn i8_i8_4x2_is_exact(
            (rows, tokens) in (0usize..=4 * 32 + 3)
                .prop_flat_map(|len| (uniform4(vec(int8(), len)), proptest::array::uniform2(vec(int8(), len))))
        ) {
            for table in tables() {
                let tile = (table.i8_i8_4x2)(rows.each_ref().map(Vec::as_slice), tokens.each_ref().map(Vec::as_slice));
                for (t, token) in tokens.iter().enumerate() {
                    for (r, row) in rows.iter().enumerate() {
                        prop_assert_eq!(tile[t][r], scalar::dot_i8_i8(row, token), "{} row {} token {}", table.isa.name(), r, t);
                    }
                }
            }
        }

        #[test]
        fn i8_i16_f32_panel_matches_the_formula(case in panel_case()) {
            check_panels(&case)?;
        }

        #[test]
        fn u8_i8_f32_panel_matches_the_formula(case in quad_case()) {
            check_quad_panels(&case)?;
        }

        #[test]
        fn i8_i8_x4_is_exact(
            (rows, y) in (0usize..=4 * 32 + 3).prop_flat_map(|len| (uniform4(vec(int8(), len)), vec(int8(), len)))
        ) {
            for table in tables() {
                let four = (table.i8_i8_x4)(rows.each_ref().map(Vec::as_slice), &y);
                for (r, row) in rows.iter().enumerate() {
                    prop_assert_eq!(four[r], scalar::dot_i8_i8(row, &y), "{} row {}", table.isa.name(), r);
                }
            }
        }

        #[test]
        fn q8_0_q8_0_matches_scalar((x, y, offset) in pairs(q8_0(scale()), q8_0(scale()))) {
            check_blocks(&x[offset..], &y[offset..], |k| k.q8_0_q8_0)?;
        }

        #[test]
        fn q4_0_q8_0_matches_scalar((x, y, offset) in pairs(q4_0(scale()), q8_0(scale()))) {
            check_blocks(&x[offset..], &y[offset..], |k| k.q4_0_q8_0)?;
        }

        #[test]
        fn q4_1_q8_1_matches_scalar((x, y, offset) in pairs(q4_1(scale(), scale()), q8_1(scale(), scale()))) {
            check_blocks(&x[offset..], &y[offset..], |k| k.q4_1_q8_1)?;
        }

        #[test]
        fn q5_0_q8_0_matches_scalar((x, y, offset) in pairs(q5_0(scale()), q8_0(scale()))) {
            check_blocks(&x[offset..], &y[offset..], |k| k.q5_0_q8_0)?;
        }

        #[test]
        fn q5_1_q8_1_matches_scalar((x, y, offset) in pairs(q5_1(scale(), scale()), q8_1(scale(), scale()))) {
            check_blocks(&x[offset..], &y[offset..], |k| k.q5_1_q8_1)?;
        }

        #[test]
        fn q8_0_q8_0_integers_are_exact((x, y, offset) in pairs(q8_0(unit()), q8_0(unit()))) {
            check_blocks_exact(&x[offset..], &y[offset..], |k| k.q8_0_q8_0)?;
        }

        #[test]
        fn q4_0_q8_0_integers_are_exact((x, y, offset) in pairs(q4_0(unit()), q8_0(unit()))) {
            check_blocks_exact(&x[offset..], &y[offset..], |k| k.q4_0_q8_0)?;
        }

        #[test]
        fn q4_1_q8_1_integers_are_exact(
            (x, y, offset) in pairs(q4_1(unit(), small_integer()), q8_1(unit(), small_integer()))
        ) {
            check_blocks_exact(&x[offset..], &y[offset..], |k| k.q4_1_q8_1)?;
        }

        #[test]
        fn q5_0_q8_0_integers_are_exact((x, y, offset) in pairs(q5_0(unit()), q8_0(unit()))) {
            check_blocks_exact(&x[offset..], &y[offset..], |k| k.q5_0_q8_0)?;
        }

        #[test]
        fn q5_1_q8_1_integers_are_exact(
            (x, y, offset) in pairs(q5_1(unit(), small_integer()), q8_1(unit(), small_integer()))
        ) {
            check_blocks_exact(&x[offset..], &y[offset..], |k| k.q5_1_q8_1)?;
        }

        #[test]
        fn i8_i8_is_exact((x, y) in offset_pair(int8())) {
            let exact: i64 = x.iter().zip(&y).map(|(&a, &b)| i64::from(a) * i64::from(b)).sum();
            for table in tables() {
                prop_assert_eq!(i64::from((table.i8_i8)(&x, &y)), exact, "{}", table.isa.name());
            }
        }

        #[test]
        fn f32_f32_matches_scalar((x, y) in offset_pair(f32_value())) {
            check_f32(&x, &y)?;
        }
    }

    /// f32 values with every special kind: NaN, infinities, zeros, subnormals, extremes.
    fn f32_value() -> impl Strategy<Value = f32> + Clone {
        prop_oneof![
            20 => -100.0f32..100.0,
            1 => Just(f32::NAN),
            1 => Just(f32::INFINITY),
            1 => Just(f32::NEG_INFINITY),
            1 => Just(-0.0f32),
            1 => Just(0.0f32),
            1 => (1u32..0x0080_0000).prop_map(f32::from_bits),
            1 => Just(f32::MIN_POSITIVE),
            1 => Just(f32::MAX),
            1 => Just(f32::MIN),
            1 => -1e19f32..1e19,
        ]
    }

    fn check_f32(x: &[f32], y: &[f32]) -> Result<(), TestCaseError> {
        let reference = (SCALAR.f32_f32)(x, y);
        let any_nan = x.iter().chain(y).any(|v| v.is_nan());
        let any_infinite = x.iter().chain(y).any(|v| v.is_infinite());
        // Products of two f32 are exact in f64.
        let magnitude: f64 = x.iter().zip(y).map(|(&a, &b)| (f64::from(a) * f64::from(b)).abs()).sum();
        let bound = (x.len() as f64 + 16.0) * f64::from(f32::EPSILON) * magnitude + x.len() as f64 * 2f64.powi(-149);
        for table in tables() {
            let fast = (table.f32_f32)(x, y);
            let name = table.isa.name();
            if any_nan {
                prop_assert!(fast.is_nan() && reference.is_nan(), "{name}: {fast} and {reference} from a NaN");
            } else if any_infinite {
                prop_assert!(!fast.is_finite() && !reference.is_finite(), "{name}: {fast} and {reference} from inf");
            } else if magnitude <= f64::from(f32::MAX) / 2.0 {
                let error = (f64::from(fast) - f64::from(reference)).abs();
                prop_assert!(error <= bound, "{name}: {fast} vs scalar {reference}, bound {bound}");
            }
        }
        Ok(())
    }

    /// Random activations and weights of magnitude `10^scale`, `n_blocks` blocks.
    fn real_vectors() -> impl Strategy<Value = (Vec<f32>, Vec<f32>)> {
        (0usize..=9, -3i32..=2).prop_flat_map(|(n_blocks, scale)| {
            let value = (-4.0f32..4.0).prop_map(move |v| v * 10f32.powi(scale));
            (vec(value.clone(), n_blocks * QK), vec(value, n_blocks * QK))
        })
    }

    /// Dequantizes both operands and checks the quantized dot against `dot_f32_f32` of the
    /// dequantized values, on every table. `extra` is the slack for `s_y`, which the Q8_1
    /// quantizer rounds to f16 on its own.
    fn check_dequantized<X: Copy, Y: Copy>(
        x: &[X],
        y: &[Y],
        dequantized: (Vec<f32>, Vec<f32>),
        kernel: Kernel<X, Y>,
        extra: f64,
    ) -> Result<(), TestCaseError>
    where
        (X, Y): Pair,
    {
        let (dx, dy) = dequantized;
        let magnitude: f64 = x.iter().zip(y).map(|(&bx, &by)| (bx, by).magnitude_and_exact().0).sum();
        let f32_magnitude: f64 = dx.iter().zip(&dy).map(|(&a, &b)| (f64::from(a) * f64::from(b)).abs()).sum();
        let bound = (dx.len() as f64 + 16.0) * f64::from(f32::EPSILON) * (magnitude + f32_magnitude) + extra;
        for table in tables() {
            let quantized = kernel(table)(x, y);
            let dense = (table.f32_f32)(&dx, &dy);
            let error = (f64::from(quantized) - f64::from(dense)).abs();
            prop_assert!(error <= bound, "{}: {quantized} vs dequantized {dense}, bound {bound}", table.isa.name());
        }
        Ok(())
    }

    fn zeroed<B: bytemuck::Zeroable + Clone>(n: usize) -> Vec<B> {
        vec![B::zeroed(); n]
    }

    fn q8_0_activations(values: &[f32]) -> (Vec<BlockQ8_0>, Vec<f32>) {
        let mut blocks = zeroed(values.len() / QK);
        ggml::scalar::quantize_q8_0(values, &mut blocks);
        let mut dequantized = vec![0.0; values.len()];
        ggml::scalar::dequantize_q8_0(&blocks, &mut dequantized);
        (blocks, dequantized)
    }

    fn q8_1_activations(values: &[f32]) -> (Vec<BlockQ8_1>, Vec<f32>) {
        let mut blocks = zeroed(values.len() / QK);
        ggml::scalar::quantize_q8_1(values, &mut blocks);
        let mut dequantized = vec![0.0; values.len()];
        ggml::scalar::dequantize_q8_1(&blocks, &mut dequantized);
        (blocks, dequantized)
    }

    /// `|m_x| * (2^-9 * |d_y * sum(q_y)| + 2^-24)` per block: `s_y` is `d * sum(q)` with the
    /// unrounded `d`, then rounded to f16, while the dequantized activations use `d` in f16.
    fn s_slack(m: impl Iterator<Item = f16>, y: &[BlockQ8_1]) -> f64 {
        m.zip(y)
            .map(|(m, by)| {
                let sum: i32 = by.qs.iter().map(|&q| i32::from(q)).sum();
                let ds = f64::from(by.d.to_f32()) * f64::from(sum);
                f64::from(m.to_f32()).abs() * (2f64.powi(-9) * ds.abs() + 2f64.powi(-24))
            })
            .sum()
    }

    proptest! {
        #[test]
        fn q8_0_q8_0_agrees_with_dequantized((weights, acts) in real_vectors()) {
            let (y, dy) = q8_0_activations(&acts);
            let (x, dx) = q8_0_activations(&weights);
            check_dequantized(&x, &y, (dx, dy), |k| k.q8_0_q8_0, 0.0)?;
        }

        #[test]
        fn q4_0_q8_0_agrees_with_dequantized((weights, acts) in real_vectors()) {
            let (y, dy) = q8_0_activations(&acts);
            let mut x = zeroed(weights.len() / QK);
            ggml::scalar::quantize_q4_0(&weights, &mut x);
            let mut dx = vec![0.0; weights.len()];
            ggml::scalar::dequantize_q4_0(&x, &mut dx);
            check_dequantized(&x, &y, (dx, dy), |k| k.q4_0_q8_0, 0.0)?;
        }

        #[test]
        fn q4_1_q8_1_agrees_with_dequantized((weights, acts) in real_vectors()) {
            let (y, dy) = q8_1_activations(&acts);
            let mut x: Vec<BlockQ4_1> = zeroed(weights.len() / QK);
            ggml::scalar::quantize_q4_1(&weights, &mut x);
            let mut dx = vec![0.0; weights.len()];
            ggml::scalar::dequantize_q4_1(&x, &mut dx);
            let slack = s_slack(x.iter().map(|b| b.m), &y);
            check_dequantized(&x, &y, (dx, dy), |k| k.q4_1_q8_1, slack)?;
        }

        #[test]
        fn q5_0_q8_0_agrees_with_dequantized((weights, acts) in real_vectors()) {
            let (y, dy) = q8_0_activations(&acts);
            let mut x = zeroed(weights.len() / QK);
            ggml::scalar::quantize_q5_0(&weights, &mut x);
            let mut dx = vec![0.0; weights.len()];
            ggml::scalar::dequantize_q5_0(&x, &mut dx);
            check_dequantized(&x, &y, (dx, dy), |k| k.q5_0_q8_0, 0.0)?;
        }

        #[test]
        fn q5_1_q8_1_agrees_with_dequantized((weights, acts) in real_vectors()) {
            let (y, dy) = q8_1_activations(&acts);
            let mut x: Vec<BlockQ5_1> = zeroed(weights.len() / QK);
            ggml::scalar::quantize_q5_1(&weights, &mut x);
            let mut dx = vec![0.0; weights.len()];
            ggml::scalar::dequantize_q5_1(&x, &mut dx);
            let slack = s_slack(x.iter().map(|b| b.m), &y);
            check_dequantized(&x, &y, (dx, dy), |k| k.q5_1_q8_1, slack)?;
        }
    }

    // Known values, worked by hand, on every table and through the dispatched entry points.

    #[test]
    fn q8_0_q8_0_known_value() {
        // Block 0: x = j - 16, y = 1, sumi = (0 + ... + 31) - 32 * 16 = -16, scale 0.5 * 2 = 1.
        // Block 1: x = -128 everywhere, y = -128 at j < 2 and 1 elsewhere:
        // sumi = 2 * 16384 - 30 * 128 = 28928, scale 0.25 * 0.125 = 1/32, term 904.
        let x = [
            BlockQ8_0 { d: h(0.5), qs: std::array::from_fn(|j| j as i8 - 16) },
            BlockQ8_0 { d: h(0.25), qs: [i8::MIN; QK] },
        ];
        let y = [
            BlockQ8_0 { d: h(2.0), qs: [1; QK] },
            BlockQ8_0 { d: h(0.125), qs: std::array::from_fn(|j| if j < 2 { i8::MIN } else { 1 }) },
        ];
        for table in tables() {
            assert_eq!((table.q8_0_q8_0)(&x, &y), 888.0, "{}", table.isa.name());
            assert_eq!((table.q8_0_q8_0)(&x[..1], &y[..1]), -16.0, "{}", table.isa.name());
        }
        assert_eq!(dot_q8_0_q8_0(&x, &y), 888.0);
    }

    #[test]
    fn q4_0_q8_0_known_value() {
        // Every byte 0x9a: low nibble 10 -> 2 (elements 0..16), high nibble 9 -> 1 (16..32).
        // y = 3 for the first half and -1 for the second: sumi = 16 * 6 - 16 = 80, times 0.125.
        let x = [BlockQ4_0 { d: h(0.5), qs: [0x9a; QK / 2] }];
        let y = [BlockQ8_0 { d: h(0.25), qs: std::array::from_fn(|j| if j < 16 { 3 } else { -1 }) }];
        for table in tables() {
            assert_eq!((table.q4_0_q8_0)(&x, &y), 10.0, "{}", table.isa.name());
        }
        assert_eq!(dot_q4_0_q8_0(&x, &y), 10.0);
        // Nibbles 0 and 15 are -8 and 7, against the activation extremes: (-8) * (-128) * 16
        // + 7 * 127 * 16 = 16384 + 14224 = 30608.
        let x = [BlockQ4_0 { d: h(1.0), qs: [0xf0; QK / 2] }];
        let y = [BlockQ8_0 { d: h(1.0), qs: std::array::from_fn(|j| if j < 16 { i8::MIN } else { i8::MAX }) }];
        for table in tables() {
            assert_eq!((table.q4_0_q8_0)(&x, &y), 30608.0, "{}", table.isa.name());
        }
    }

    #[test]
    fn q4_1_q8_1_known_value() {
        // Every byte 0x53: 3 for elements 0..16, 5 for 16..32; y = 2 then -1:
        // sumi = 16 * 6 - 16 * 5 = 16, times 0.125 = 2, plus m * s = -1 * 4: -2.
        let x = [BlockQ4_1 { d: h(0.5), m: h(-1.0), qs: [0x53; QK / 2] }];
        let y = [BlockQ8_1 { d: h(0.25), s: h(4.0), qs: std::array::from_fn(|j| if j < 16 { 2 } else { -1 }) }];
        for table in tables() {
            assert_eq!((table.q4_1_q8_1)(&x, &y), -2.0, "{}", table.isa.name());
        }
        assert_eq!(dot_q4_1_q8_1(&x, &y), -2.0);
    }

    #[test]
    fn q5_0_q8_0_known_value() {
        // Every byte 0x21 and the fifth bit set for elements 0..16 only (qh = 0x0000ffff):
        // elements 0..16 are 1 + 16 - 16 = 1, elements 16..32 are 2 - 16 = -14. With y = 1,
        // sumi = 16 - 224 = -208, times 0.25: -52.
        let x = [BlockQ5_0 { d: h(0.5), qh: [0xff, 0xff, 0, 0], qs: [0x21; QK / 2] }];
        let y = [BlockQ8_0 { d: h(0.5), qs: [1; QK] }];
        for table in tables() {
            assert_eq!((table.q5_0_q8_0)(&x, &y), -52.0, "{}", table.isa.name());
        }
        assert_eq!(dot_q5_0_q8_0(&x, &y), -52.0);
        // Only bit 31 set: element 31 is 2 + 16 - 16 = 2, all others as above; y = 1 only at 31.
        let x = [BlockQ5_0 { d: h(1.0), qh: [0, 0, 0, 0x80], qs: [0x21; QK / 2] }];
        let y = [BlockQ8_0 { d: h(1.0), qs: std::array::from_fn(|j| i8::from(j == 31)) }];
        for table in tables() {
            assert_eq!((table.q5_0_q8_0)(&x, &y), 2.0, "{}", table.isa.name());
        }
    }

    #[test]
    fn q5_1_q8_1_known_value() {
        // Bytes 0x21, fifth bit for elements 0..16: 17 there, 2 for 16..32. With y = 1,
        // sumi = 16 * 17 + 16 * 2 = 304, times 0.125 = 38, plus m * s = 2 * 8: 54.
        let x = [BlockQ5_1 { d: h(0.25), m: h(2.0), qh: [0xff, 0xff, 0, 0], qs: [0x21; QK / 2] }];
        let y = [BlockQ8_1 { d: h(0.5), s: h(8.0), qs: [1; QK] }];
        for table in tables() {
            assert_eq!((table.q5_1_q8_1)(&x, &y), 54.0, "{}", table.isa.name());
        }
        assert_eq!(dot_q5_1_q8_1(&x, &y), 54.0);
    }

    #[test]
    fn i8_i8_known_value() {
        // 16384 - 16256 + 15 = 143, with a 32-element run first so SIMD paths take both loops:
        // 32 * (-1 * 2) = -64, total 79.
        let mut x = vec![-1i8; 32];
        let mut y = vec![2i8; 32];
        x.extend([-128, 127, 3]);
        y.extend([-128, -128, 5]);
        for table in tables() {
            assert_eq!((table.i8_i8)(&x, &y), 79, "{}", table.isa.name());
            assert_eq!((table.i8_i8)(&x[32..], &y[32..]), 143, "{}", table.isa.name());
        }
        assert_eq!(dot_i8_i8(&x, &y), 79);
    }

    #[test]
    fn i8_i16_f32_panel_wraps_and_checks_shapes() {
        // Sums past i32 wrap identically on every path: 100004 products of -128 * -32768 (2^22),
        // with scales of 1 (the wrapped sum is a multiple of 2^22, exact in f32).
        let len = 100_004;
        let panel = vec![i8::MIN; len / 2 * PANEL_PAIR_BYTES];
        let tokens = vec![i16::MIN; 5 * len];
        let wrapped = (0..len).fold(0i32, |sum, _| sum.wrapping_add(1 << 22));
        assert_ne!(wrapped, 0);
        let ones = [[1.0f32; PANEL_ROWS]];
        let token_scales = [1.0f32; 5];
        let scales = PanelScales { weight_scales: &ones, zero_points: None, token_scales: &token_scales, bias: None };
        let shape = PanelShape { rows: PANEL_ROWS, cols: len, group_len: len };
        for table in tables() {
            let mut out = vec![0.0f32; 5 * PANEL_ROWS];
            (table.i8_i16_f32_panel)(
                &panel,
                shape,
                &tokens,
                scales,
                PanelOutput { values: &mut out, stride: PANEL_ROWS },
            );
            assert_eq!(out, vec![wrapped as f32; 5 * PANEL_ROWS], "{}", table.isa.name());
            // No columns: `0.0 * token_scale + bias`. No tokens or no rows: nothing written.
            let bias = [0.5f32, -2.0];
            let empty = PanelScales { weight_scales: &[], zero_points: None, token_scales: &[3.0], bias: Some(&bias) };
            let mut out = vec![f32::NAN; 2];
            let no_columns = PanelShape { rows: 2, cols: 0, group_len: 2 };
            (table.i8_i16_f32_panel)(&[], no_columns, &[], empty, PanelOutput { values: &mut out, stride: 2 });
            assert_eq!(out, bias, "{}", table.isa.name());
            let none = PanelScales { weight_scales: &ones, zero_points: None, token_scales: &[], bias: None };
            let two_pairs = PanelShape { rows: 16, cols: 4, group_len: 4 };
            (table.i8_i16_f32_panel)(&panel[..64], two_pairs, &[], none, PanelOutput { values: &mut [], stride: 0 });
            let no_rows = PanelShape { rows: 0, cols: 4, group_len: 4 };
            let one = PanelScales { weight_scales: &[], zero_points: None, token_scales: &[1.0], bias: None };
            (table.i8_i16_f32_panel)(&[], no_rows, &[0; 4], one, PanelOutput { values: &mut [], stride: 0 });
        }
        // 16 columns in two groups of 8, 20 rows (two panels), 3 tokens at stride 24.
        let shape = |panels_len: usize, n_activations: usize, group_len: usize, n_tables: usize, n_out: usize| {
            let weight_scales = vec![[1.0f32; PANEL_ROWS]; n_tables];
            let scales =
                PanelScales { weight_scales: &weight_scales, zero_points: None, token_scales: &[1.0; 3], bias: None };
            catch_unwind(AssertUnwindSafe(|| {
                let out = PanelOutput { values: &mut vec![0.0; n_out], stride: 24 };
                let shape = PanelShape { rows: 20, cols: 16, group_len };
                gemm_i8_i16_f32(&vec![0; panels_len], shape, &vec![0; n_activations], scales, out)
            }))
        };
        assert!(shape(2 * 8 * 32, 48, 8, 4, 68).is_ok());
        assert!(shape(2 * 8 * 32, 48, 8, 4, 67).is_err());
        assert!(shape(2 * 8 * 32, 48, 8, 3, 68).is_err());
        assert!(shape(2 * 8 * 32, 47, 8, 4, 68).is_err());
        assert!(shape(2 * 8 * 32, 48, 6, 4, 68).is_err());
        assert!(shape(2 * 8 * 32, 48, 0, 4, 68).is_err());
        assert!(shape(2 * 8 * 32, 48, 3, 4, 68).is_err());
        assert!(shape(8 * 32, 48, 8, 4, 68).is_err());
    }

    #[test]
    fn i8_i8_wraps_identically_past_i32() {
        // 140000 * 16384 = 2293760000 > i32::MAX.
        let x = vec![i8::MIN; 140_000];
        let wrapped = (140_000i64 * 16384) as i32;
        for table in tables() {
            assert_eq!((table.i8_i8)(&x, &x), wrapped, "{}", table.isa.name());
        }
    }

    #[test]
    fn f32_f32_known_value() {
        // 3 - 1 + 1 = 3 in the tail, and 40 * 0.5 * 4 = 80 in the vector loops.
        let mut x = vec![0.5f32; 40];
        let mut y = vec![4.0f32; 40];
        x.extend([1.5, -2.0, 0.25]);
        y.extend([2.0, 0.5, 4.0]);
        for table in tables() {
            assert_eq!((table.f32_f32)(&x, &y), 83.0, "{}", table.isa.name());
            assert_eq!((table.f32_f32)(&x[40..], &y[40..]), 3.0, "{}", table.isa.name());
            assert_eq!((table.f32_f32)(&[], &[]), 0.0, "{}", table.isa.name());
        }
        assert_eq!(dot_f32_f32(&x, &y), 83.0);
    }

    #[test]
    fn non_finite_scales_give_non_finite_results() {
        let qs: [i8; QK] = std::array::from_fn(|j| j as i8 - 7);
        for bad in [f16::NAN, f16::INFINITY, f16::NEG_INFINITY] {
            let x = [BlockQ8_0 { d: h(1.0), qs }, BlockQ8_0 { d: bad, qs }, BlockQ8_0 { d: h(1.0), qs }];
            let y = [BlockQ8_0 { d: h(1.0), qs }; 3];
            for table in tables() {
                let result = (table.q8_0_q8_0)(&x, &y);
                assert!(!result.is_finite(), "{}: {result} from scale {bad}", table.isa.name());
                assert_eq!(result.is_nan(), bad.is_nan(), "{}: {result} from scale {bad}", table.isa.name());
            }
        }
    }

    #[test]
    fn mismatched_lengths_panic() {
        let q8_0 = [BlockQ8_0 { d: h(1.0), qs: [1; QK] }; 3];
        let q8_1 = [BlockQ8_1 { d: h(1.0), s: h(1.0), qs: [1; QK] }; 3];
        let q4_0 = [BlockQ4_0 { d: h(1.0), qs: [0; QK / 2] }; 3];
        let q4_1 = [BlockQ4_1 { d: h(1.0), m: h(1.0), qs: [0; QK / 2] }; 3];
        let q5_0 = [BlockQ5_0 { d: h(1.0), qh: [0; 4], qs: [0; QK / 2] }; 3];
        let q5_1 = [BlockQ5_1 { d: h(1.0), m: h(1.0), qh: [0; 4], qs: [0; QK / 2] }; 3];
        for table in tables() {
            let calls: [&dyn Fn(); 7] = [
                &|| _ = (table.q8_0_q8_0)(&q8_0[..2], &q8_0),
                &|| _ = (table.q4_0_q8_0)(&q4_0, &q8_0[..2]),
                &|| _ = (table.q4_1_q8_1)(&q4_1[..1], &q8_1),
                &|| _ = (table.q5_0_q8_0)(&q5_0, &q8_0[..1]),
                &|| _ = (table.q5_1_q8_1)(&q5_1[..2], &q8_1),
                &|| _ = (table.i8_i8)(&[1; 33], &[1; 32]),
                &|| _ = (table.f32_f32)(&[1.0; 8], &[1.0; 9]),
            ];
            for (i, call) in calls.iter().enumerate() {
                assert!(catch_unwind(AssertUnwindSafe(call)).is_err(), "{}: kernel {i}", table.isa.name());
            }
        }
    }

    #[test]
    fn tables_match_detection() {
        assert_eq!(kernels(Isa::Scalar).map(|k| k.isa), Some(Isa::Scalar));
        assert_eq!(kernels(Isa::Avx2).is_some(), Isa::Avx2.is_supported());
        assert!(kernels(Isa::Avx2).is_none_or(|k| k.isa == Isa::Avx2));
        assert_eq!(dispatched().isa, crate::isa::active());
    }
}
