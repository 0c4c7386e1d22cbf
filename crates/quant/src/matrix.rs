//! `QuantizedMatrix`: a weight matrix `W[rows, cols]` (PyTorch `Linear` layout) stored in any
//! [`Scheme`], with GEMV and GEMM that quantize the activations on the fly, and a weight-only
//! variant that keeps them in f32.

use bytemuck::Zeroable;
use half::{bf16, f16};
use rayon::prelude::*;

use std::borrow::Cow;
use std::ops::Range;
use std::sync::OnceLock;

use crate::dot::{PANEL_ROWS, PanelOutput};
use crate::ggml::{
    self, BlockQ4_0, BlockQ4_0x4, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_0x4, BlockQ8_1, Interleaved, QK,
};
use crate::linear::{self, IntMatrix};
use crate::{ActivationBits, Error, Result, Scheme, cast, dot};

/// Output rows handed to one rayon task: enough work to amortise scheduling, few enough to
/// balance two to sixty-four threads on the BERT shapes (384 to 4096 rows).
const ROWS_PER_TASK: usize = 16;

/// Tokens handed to one rayon task by the int8 GEMM: each task quantizes its tokens once, into
/// buffers its thread reuses, then takes them through every panel in one kernel call, so that
/// each panel, loaded once, serves the task's four tiles of six tokens and each token's outputs
/// are written in order (one stream per token rather than one cache line per panel and token,
/// which measured slower). A multiple of the AVX2 kernel's six: 16 tokens (tiles of 6 + 6 + 4)
/// measured 5% slower on one thread, 24 to 128 alike; the fewest keep short batches spread over
/// several threads.
const INT_TOKENS_PER_TASK: usize = 24;

/// From this many weights, an integer GEMV on several threads splits its rows over them.
const PARALLEL_GEMV_WEIGHTS: usize = 1 << 20;

/// Panels of sixteen rows per task of a parallel integer GEMV.
const GEMV_PANELS_PER_TASK: usize = 4;

/// From this many tokens on, products with f32 activations (f16 and bf16 weights, and
/// [`QuantizedMatrix::gemm_weight_only`]) run on the dense GEMM over dequantized row tiles.
#[cfg(feature = "dense")]
const DENSE_MIN_TOKENS: usize = 4;

/// Rows dequantized per dense tile: 64 rows of 4096 f32 are 1 MiB, about the L2.
#[cfg(feature = "dense")]
const DENSE_TILE_ROWS: usize = 64;

/// A quantized weight matrix.
///
/// ```
/// use lathe_quant::{QuantizedMatrix, Scheme};
/// let (rows, cols) = (4, 64);
/// let weights: Vec<f32> = (0..rows * cols).map(|i| ((i * 7 % 13) as f32 - 6.0) / 6.0).collect();
/// let matrix = QuantizedMatrix::quantize(&weights, rows, cols, "q8_0".parse()?)?;
/// let x = vec![0.5f32; cols];
/// let mut y = vec![0.0; rows];
/// matrix.gemv(&x, &mut y);
/// let exact: Vec<f32> = weights.chunks(cols).map(|row| row.iter().sum::<f32>() * 0.5).collect();
/// assert!(y.iter().zip(&exact).all(|(a, b)| (a - b).abs() < 0.05));
/// # Ok::<(), lathe_quant::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct QuantizedMatrix {
    rows: usize,
    cols: usize,
    scheme: Scheme,
    weights: Weights,
    /// How integer weights' products quantize the activations (and so which kernel they run).
    activation_bits: ActivationBits,
    /// Integer weights repacked for the kernel of `activation_bits`, built by the first product
    /// (so a matrix only written pays nothing).
    int_panels: OnceLock<IntPanels>,
}

#[derive(Debug, Clone)]
enum Weights {
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
    Q8_0(Quads<BlockQ8_0x4>),
    Q4_0(Quads<BlockQ4_0x4>),
    Q4_1(Vec<BlockQ4_1>),
    Q5_0(Vec<BlockQ5_0>),
    Q5_1(Vec<BlockQ5_1>),
    Int(IntMatrix),
}

/// GGML blocks with each four consecutive rows interleaved (`BlockQ8_0x4`, `BlockQ4_0x4`): the
/// GEMV reads four rows as one sequential stream and converts their four scales at once. The
/// last `rows % 4` rows stay plain. Conversion to ggml's row-major blocks is exact both ways.
#[derive(Debug, Clone)]
struct Quads<Q: Interleaved> {
    blocks_per_row: usize,
    /// `[rows / 4, blocks_per_row]`.
    quads: Vec<Q>,
    /// `[rows % 4, blocks_per_row]`.
    rest: Vec<Q::Block>,
}

impl<Q: Interleaved> Quads<Q> {
    fn new(blocks: &[Q::Block], blocks_per_row: usize) -> Self {
        let interleaved = blocks.len() / (4 * blocks_per_row.max(1)) * 4 * blocks_per_row;
        let quads = blocks[..interleaved]
            .chunks_exact((4 * blocks_per_row).max(1))
            .flat_map(|four| ggml::interleave::<Q>(four, blocks_per_row))
            .collect();
        Quads { blocks_per_row, quads, rest: blocks[interleaved..].to_vec() }
    }

    /// The four rows from `row` (a multiple of four, below `4 * (rows / 4)`).
    fn quad(&self, row: usize) -> &[Q] {
        &self.quads[row / 4 * self.blocks_per_row..][..self.blocks_per_row]
    }

    fn n_interleaved_rows(&self) -> usize {
        4 * self.quads.len() / self.blocks_per_row.max(1)
    }

    /// Row `row`'s blocks in ggml's layout.
    fn row(&self, row: usize) -> std::borrow::Cow<'_, [Q::Block]> {
        let interleaved = self.n_interleaved_rows();
        if row >= interleaved {
            let rest_row = row - interleaved;
            std::borrow::Cow::Borrowed(&self.rest[rest_row * self.blocks_per_row..][..self.blocks_per_row])
        } else {
            std::borrow::Cow::Owned(self.quad(row / 4 * 4).iter().map(|quad| quad.block(row % 4)).collect())
        }
    }

    /// Every row's blocks in ggml's layout, row-major.
    fn to_blocks(&self) -> Vec<Q::Block> {
        let n_rows = self.n_interleaved_rows() + self.rest.len() / self.blocks_per_row.max(1);
        (0..n_rows).flat_map(|row| self.row(row).into_owned()).collect()
    }
}

/// Integer weights in panels of [`PANEL_ROWS`] rows for one of the two GEMM kernels, with each
/// group padded to whole steps of the kernel (a zero weight against a zero activation), and the
/// panel rows' scales and zero points per group. Rows past the matrix are zero weights with
/// scale 0; they are never written out.
///
/// For int8 activations ([`dot::gemm_i8_i16_f32`]) the panels hold the weights by column pairs;
/// for 7-bit ones ([`dot::gemm_u8_i8_f32`]) by column quads, each weight `q` stored as the byte
/// `q + 128` and every zero point as `z + 128`, so that `sum((q + 128) * a) - (z + 128) * sum(a)`
/// is the int8 kernel's `sum(q * a) - z * sum(a)`.
#[derive(Debug, Clone)]
struct IntPanels {
    bits: ActivationBits,
    /// Columns of a group, padded to the kernel's step.
    padded_group_len: usize,
    /// Columns of a row: `n_groups * padded_group_len`.
    padded_cols: usize,
    /// `[rows.div_ceil(PANEL_ROWS), padded_cols * PANEL_ROWS]`.
    panels: Vec<i8>,
    /// `[n_panels, n_groups]`: the scales of the panel's rows for each group.
    scales: Vec<[f32; PANEL_ROWS]>,
    /// The zero points in the layout of `scales`, for asymmetric schemes and 7-bit activations.
    zero_points: Option<Vec<[i32; PANEL_ROWS]>>,
}

impl IntPanels {
    /// Output rows `rows` (starting on a panel) times the tokens quantized into `buffers`, with
    /// those rows' `bias`, on the kernel of `kernels` for the panels' layout.
    fn multiply(
        &self,
        kernels: &dot::DotKernels,
        rows: Range<usize>,
        buffers: &IntTaskBuffers,
        bias: Option<&[f32]>,
        out: PanelOutput<'_>,
    ) {
        let panels = rows.start / PANEL_ROWS..rows.end.div_ceil(PANEL_ROWS);
        let n_groups = self.padded_cols / self.padded_group_len;
        let panel_len = self.padded_cols * PANEL_ROWS;
        let groups = panels.start * n_groups..panels.end * n_groups;
        let scales = dot::PanelScales {
            weight_scales: &self.scales[groups.clone()],
            zero_points: self.zero_points.as_deref().map(|zero_points| (&zero_points[groups], &buffers.group_sums[..])),
            token_scales: &buffers.scales,
            bias: bias.map(|bias| &bias[rows.clone()]),
        };
        let shape = dot::PanelShape { rows: rows.len(), cols: self.padded_cols, group_len: self.padded_group_len };
        let weights = &self.panels[panels.start * panel_len..panels.end * panel_len];
        match self.bits {
            ActivationBits::Eight => (kernels.i8_i16_f32_panel)(weights, shape, &buffers.wide, scales, out),
            ActivationBits::Seven => {
                (kernels.u8_i8_f32_panel)(bytemuck::cast_slice(weights), shape, &buffers.narrow, scales, out)
            }
        }
    }

    fn new(weights: &IntMatrix, bits: ActivationBits) -> IntPanels {
        let (rows, cols) = (weights.rows(), weights.cols());
        let group_len = weights.group_len();
        let n_groups = cols.checked_div(group_len).unwrap_or(0);
        let (step, index, offset): (usize, fn(usize, usize) -> usize, i32) = match bits {
            ActivationBits::Eight => (2, dot::panel_index, 0),
            ActivationBits::Seven => (4, dot::quad_panel_index, 128),
        };
        let padded_group_len = group_len.next_multiple_of(step);
        let padded_cols = n_groups * padded_group_len;
        let panel_len = padded_cols * PANEL_ROWS;
        let n_panels = rows.div_ceil(PANEL_ROWS);
        // The stored byte of weight `q`: `q`, or `q + 128` (as a byte) for 7-bit activations.
        let stored = |q: i8| if offset == 0 { q } else { q ^ i8::MIN };
        let mut panels = vec![stored(0); n_panels * panel_len];
        for (row, values) in weights.values().chunks_exact(cols.max(1)).enumerate().take(rows) {
            let panel = &mut panels[row / PANEL_ROWS * panel_len..][..panel_len];
            for (col, &value) in values.iter().enumerate() {
                let padded_col = col / group_len * padded_group_len + col % group_len;
                panel[index(row % PANEL_ROWS, padded_col)] = stored(value);
            }
        }
        let params = |panel: usize, group: usize, r: usize| {
            let row = panel * PANEL_ROWS + r;
            if row < rows { weights.group_params(weights.group_index(row, group * group_len)) } else { (0.0, 0) }
        };
        let per_group = |panel: usize, group: usize| -> [(f32, i8); PANEL_ROWS] {
            std::array::from_fn(|r| params(panel, group, r))
        };
        let all = (0..n_panels).flat_map(|panel| (0..n_groups).map(move |group| (panel, group)));
        let scales = all.clone().map(|(panel, group)| per_group(panel, group).map(|(scale, _)| scale)).collect();
        let zero_points = (weights.zero_points().is_some() || offset != 0).then(|| {
            all.map(|(panel, group)| per_group(panel, group).map(|(_, zero_point)| i32::from(zero_point) + offset))
                .collect()
        });
        IntPanels { bits, padded_group_len, padded_cols, panels, scales, zero_points }
    }
}

/// What [`QuantizedMatrix::linear`] fuses into the int8 GEMM: a per-channel input scale and a
/// bias.
#[derive(Clone, Copy)]
struct Fused<'a> {
    input_scale: Option<&'a [f32]>,
    bias: Option<&'a [f32]>,
}

/// `x` (row-major, `input_scale.len()` columns) with column `j` multiplied by `input_scale[j]`.
fn scale_channels(x: &[f32], input_scale: &[f32]) -> Vec<f32> {
    let mut scaled = vec![0.0f32; x.len()];
    if input_scale.is_empty() {
        return scaled;
    }
    for (dst, src) in scaled.chunks_exact_mut(input_scale.len()).zip(x.chunks_exact(input_scale.len())) {
        for ((dst, &value), &factor) in dst.iter_mut().zip(src).zip(input_scale) {
            *dst = value * factor;
        }
    }
    scaled
}

/// The buffers of one int8 GEMM task, reused by the tasks a thread runs.
#[derive(Default)]
struct IntTaskBuffers {
    /// The task's tokens widened to i16, `[n_tokens, padded_cols]` (int8 activations).
    wide: Vec<i16>,
    /// The task's tokens, `[n_tokens, padded_cols]` (7-bit activations).
    narrow: Vec<i8>,
    /// Each token's scale.
    scales: Vec<f32>,
    /// `[n_tokens, n_groups]`: each group's sum of activations (for the zero points).
    group_sums: Vec<i32>,
}

impl IntTaskBuffers {
    /// Quantizes the tokens of `x` (row-major, `cols` each; scaled per channel by
    /// `input_scale` first, as [`scale_channels`] does) as the panels' kernel reads them: to
    /// int8 as every other path does, widened into `wide`, or to 7 bits into `narrow`, in the
    /// panels' padded column layout, with each group's sum where the panels have zero points.
    fn quantize(&mut self, x: &[f32], input_scale: Option<&[f32]>, cols: usize, group_len: usize, panels: &IntPanels) {
        let sums = panels.zero_points.is_some().then_some(&mut self.group_sums);
        let layout = (cols, group_len, panels.padded_group_len);
        match panels.bits {
            ActivationBits::Eight => {
                let quantize: TokenQuantizer<i16> = linear::quantize_activations_i16;
                quantize_padded(x, input_scale, layout, quantize, &mut self.wide, &mut self.scales, sums);
            }
            ActivationBits::Seven => {
                let quantize: TokenQuantizer<i8> = linear::quantize_activations_i7;
                quantize_padded(x, input_scale, layout, quantize, &mut self.narrow, &mut self.scales, sums);
            }
        }
    }
}

/// A fused activation quantizer ([`linear::quantize_activations_i16`],
/// [`linear::quantize_activations_i7`]): a token, its per-channel input scale, the values out;
/// the scale back.
type TokenQuantizer<V> = fn(&[f32], Option<&[f32]>, &mut [V]) -> f32;

/// Each token of `x` (`cols` values, scaled per channel by `input_scale`) quantized by
/// `quantize` into its row of `dst` (`[n_tokens, n_groups * padded_group_len]`, each group of
/// `group_len` values followed by zeros up to `padded_group_len`), its scale into `scales` and,
/// when `sums` is given, each group's sum into it.
fn quantize_padded<V: Copy + Default + Into<i32>>(
    x: &[f32],
    input_scale: Option<&[f32]>,
    (cols, group_len, padded_group_len): (usize, usize, usize),
    quantize: TokenQuantizer<V>,
    dst: &mut Vec<V>,
    scales: &mut Vec<f32>,
    mut sums: Option<&mut Vec<i32>>,
) {
    let n_groups = cols / group_len;
    let padded_cols = n_groups * padded_group_len;
    // Every value is written below, padding included.
    dst.resize(x.len() / cols * padded_cols, V::default());
    scales.clear();
    if let Some(sums) = sums.as_deref_mut() {
        sums.clear();
    }
    for (token, row) in x.chunks_exact(cols).zip(dst.chunks_exact_mut(padded_cols)) {
        scales.push(quantize(token, input_scale, &mut row[..cols]));
        if padded_group_len != group_len {
            // Spread the groups out in place, the last first: each moves right, past the ones
            // still to move.
            for group in (0..n_groups).rev() {
                let start = group * padded_group_len;
                row.copy_within(group * group_len..(group + 1) * group_len, start);
                row[start + group_len..start + padded_group_len].fill(V::default());
            }
        }
        if let Some(sums) = sums.as_deref_mut() {
            sums.extend(row.chunks_exact(padded_group_len).map(|group| group.iter().map(|&v| v.into()).sum::<i32>()));
        }
    }
}

/// Activations of the tokens, quantized once per call in the form the weights' dot needs.
enum Activations {
    F32,
    Q8_0(Vec<BlockQ8_0>),
    Q8_1(Vec<BlockQ8_1>),
    /// Per-token int8 values and scales, with the per-group sums of the int8 values (for
    /// asymmetric weights: `sum((q - z) * a) = sum(q * a) - z * sum(a)`).
    I8 {
        values: Vec<i8>,
        scales: Vec<f32>,
        group_sums: Vec<i32>,
    },
}

/// Quantizes `values` (a whole number of blocks) with a block kernel into a new vector.
fn blocks<B: Zeroable + Clone>(values: &[f32], quantize: fn(&[f32], &mut [B])) -> Vec<B> {
    let mut blocks = vec![B::zeroed(); values.len() / QK];
    quantize(values, &mut blocks);
    blocks
}

/// One weight row's blocks dotted with each token's activation blocks.
fn dot_tokens<W, A>(weights: &[W], activations: &[A], outputs: &mut [f32], dot: fn(&[W], &[A]) -> f32) {
    let per_token = weights.len();
    for (out, token) in outputs.iter_mut().zip(activations.chunks_exact(per_token)) {
        *out = dot(weights, token);
    }
}

/// `dst[c * rows + r] = src[r * cols + c]`, in 16 x 16 blocks so that both sides stay in L1
/// (a plain loop writes every value to another cache line).
fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    const BLOCK: usize = 16;
    for row_start in (0..rows).step_by(BLOCK) {
        let row_end = (row_start + BLOCK).min(rows);
        for col_start in (0..cols).step_by(BLOCK) {
            let col_end = (col_start + BLOCK).min(cols);
            for col in col_start..col_end {
                for row in row_start..row_end {
                    dst[col * rows + row] = src[row * cols + col];
                }
            }
        }
    }
}

impl QuantizedMatrix {
    /// Quantizes `weights` (row-major `[rows, cols]`) to `scheme`.
    ///
    /// Errors when `weights.len() != rows * cols`, when `cols` is not a multiple of the scheme's
    /// block (32 for GGML formats, the group size for `-g<N>` schemes), or on a NaN or infinite
    /// weight (named by row and column).
    pub fn quantize(weights: &[f32], rows: usize, cols: usize, scheme: Scheme) -> Result<QuantizedMatrix> {
        let expected = rows.checked_mul(cols).ok_or(Error::ShapeMismatch {
            rows,
            cols,
            expected: usize::MAX,
            found: weights.len(),
        })?;
        if weights.len() != expected {
            return Err(Error::ShapeMismatch { rows, cols, expected, found: weights.len() });
        }
        if let Some(index) = weights.iter().position(|w| !w.is_finite()) {
            return Err(Error::NonFinite { row: index / cols, col: index % cols, value: weights[index] });
        }
        let block = scheme.block_size();
        if !cols.is_multiple_of(block) {
            return Err(Error::BlockMisfit { scheme: scheme.to_string(), cols, block });
        }
        let weights = match scheme {
            Scheme::F16 => {
                let mut dst = vec![f16::ZERO; weights.len()];
                cast::f32_to_f16(weights, &mut dst);
                Weights::F16(dst)
            }
            Scheme::Bf16 => {
                let mut dst = vec![bf16::ZERO; weights.len()];
                cast::f32_to_bf16(weights, &mut dst);
                Weights::Bf16(dst)
            }
            Scheme::Q8_0 => Weights::Q8_0(Quads::new(&blocks(weights, ggml::quantize_q8_0), cols / QK)),
            Scheme::Q4_0 => Weights::Q4_0(Quads::new(&blocks(weights, ggml::quantize_q4_0), cols / QK)),
            Scheme::Q4_1 => Weights::Q4_1(blocks(weights, ggml::quantize_q4_1)),
            Scheme::Q5_0 => Weights::Q5_0(blocks(weights, ggml::quantize_q5_0)),
            Scheme::Q5_1 => Weights::Q5_1(blocks(weights, ggml::quantize_q5_1)),
            Scheme::Int(int) => Weights::Int(IntMatrix::quantize(weights, rows, cols, int)?),
        };
        Ok(QuantizedMatrix::new(rows, cols, scheme, weights))
    }

    /// A matrix over weights already in the integer layout (a compressed-tensors file read back
    /// with [`IntMatrix::from_pack_quantized`], or GPTQ's output).
    pub fn from_int(matrix: IntMatrix) -> QuantizedMatrix {
        QuantizedMatrix::new(matrix.rows(), matrix.cols(), Scheme::Int(matrix.scheme()), Weights::Int(matrix))
    }

    fn new(rows: usize, cols: usize, scheme: Scheme, weights: Weights) -> QuantizedMatrix {
        let activation_bits = ActivationBits::Eight;
        QuantizedMatrix { rows, cols, scheme, weights, activation_bits, int_panels: OnceLock::new() }
    }

    /// The matrix with its products quantizing activations to `bits` (int8 by default): 7 bits
    /// run the integer schemes on the `maddubs` kernel ([`dot::gemm_u8_i8_f32`]), faster on
    /// AVX2 without VNNI, at twice the activations' rounding error.
    ///
    /// # Errors
    /// [`Error::BadScheme`] for 7 bits with weights of a GGML or float scheme (their
    /// activations follow the format: Q8 blocks or f32).
    pub fn with_activation_bits(self, bits: ActivationBits) -> Result<QuantizedMatrix> {
        if bits != ActivationBits::Eight && !matches!(self.weights, Weights::Int(_)) {
            return Err(Error::BadScheme {
                input: self.scheme.to_string(),
                reason: format!("{}-bit activations need an integer scheme", bits.bits()),
            });
        }
        Ok(QuantizedMatrix { activation_bits: bits, int_panels: OnceLock::new(), ..self })
    }

    /// How the products quantize the activations of integer weights.
    pub fn activation_bits(&self) -> ActivationBits {
        self.activation_bits
    }

    /// A matrix over stored bytes of a GGML or float scheme, laid out as [`as_bytes`](Self::as_bytes)
    /// gives them (and as a GGUF file stores the tensor): row-major blocks, or f16/bf16 values.
    ///
    /// # Errors
    /// [`Error::BadScheme`] for an integer scheme (use [`from_int`](Self::from_int)),
    /// [`Error::BlockMisfit`] when `cols` is not a whole number of blocks, [`Error::LengthMismatch`]
    /// when `bytes` is not exactly `rows x cols` in the scheme, and [`Error::NonFinite`] for a NaN
    /// or infinite scale or value (named by row and column of the block's first weight).
    pub fn from_bytes(scheme: Scheme, rows: usize, cols: usize, bytes: &[u8]) -> Result<QuantizedMatrix> {
        if let Scheme::Int(_) = scheme {
            return Err(Error::BadScheme {
                input: scheme.to_string(),
                reason: "integer schemes are stored packed; build them with from_int".to_owned(),
            });
        }
        let expected = scheme.bytes(rows, cols)?;
        if bytes.len() as u64 != expected {
            return Err(Error::LengthMismatch {
                what: "stored weight bytes",
                expected: usize::try_from(expected).unwrap_or(usize::MAX),
                found: bytes.len(),
            });
        }
        let block = scheme.block_size().max(1);
        // Index of the first weight of value `index` (a block or an element) as (row, col).
        let place = |index: usize| {
            let first = index * block;
            (first / cols.max(1), first % cols.max(1))
        };
        let non_finite = |index: usize, value: f32| {
            let (row, col) = place(index);
            Error::NonFinite { row, col, value }
        };
        // The first stored value (an element, or a block's scale or minimum) that is not finite.
        fn check<T>(items: &[T], bad: impl Fn(&T) -> Option<f32>) -> Option<(usize, f32)> {
            items.iter().enumerate().find_map(|(index, item)| bad(item).map(|value| (index, value)))
        }
        let not_finite = |value: f16| (!value.is_finite()).then(|| value.to_f32());
        let weights = match scheme {
            Scheme::F16 => {
                let values: Vec<f16> = bytemuck::pod_collect_to_vec(bytes);
                check(&values, |v| not_finite(*v)).map_or(Ok(()), |(i, v)| Err(non_finite(i, v)))?;
                Weights::F16(values)
            }
            Scheme::Bf16 => {
                let values: Vec<bf16> = bytemuck::pod_collect_to_vec(bytes);
                check(&values, |v| (!v.is_finite()).then(|| v.to_f32()))
                    .map_or(Ok(()), |(i, v)| Err(non_finite(i, v)))?;
                Weights::Bf16(values)
            }
            Scheme::Q8_0 => {
                let blocks: Vec<BlockQ8_0> = bytemuck::pod_collect_to_vec(bytes);
                check(&blocks, |b| not_finite(b.d)).map_or(Ok(()), |(i, v)| Err(non_finite(i, v)))?;
                Weights::Q8_0(Quads::new(&blocks, cols / QK))
            }
            Scheme::Q4_0 => {
                let blocks: Vec<BlockQ4_0> = bytemuck::pod_collect_to_vec(bytes);
                check(&blocks, |b| not_finite(b.d)).map_or(Ok(()), |(i, v)| Err(non_finite(i, v)))?;
                Weights::Q4_0(Quads::new(&blocks, cols / QK))
            }
            Scheme::Q4_1 => {
                let blocks: Vec<BlockQ4_1> = bytemuck::pod_collect_to_vec(bytes);
                check(&blocks, |b| not_finite(b.d).or(not_finite(b.m)))
                    .map_or(Ok(()), |(i, v)| Err(non_finite(i, v)))?;
                Weights::Q4_1(blocks)
            }
            Scheme::Q5_0 => {
                let blocks: Vec<BlockQ5_0> = bytemuck::pod_collect_to_vec(bytes);
                check(&blocks, |b| not_finite(b.d)).map_or(Ok(()), |(i, v)| Err(non_finite(i, v)))?;
                Weights::Q5_0(blocks)
            }
            Scheme::Q5_1 => {
                let blocks: Vec<BlockQ5_1> = bytemuck::pod_collect_to_vec(bytes);
                check(&blocks, |b| not_finite(b.d).or(not_finite(b.m)))
                    .map_or(Ok(()), |(i, v)| Err(non_finite(i, v)))?;
                Weights::Q5_1(blocks)
            }
            Scheme::Int(_) => unreachable!("integer schemes returned above"),
        };
        Ok(QuantizedMatrix::new(rows, cols, scheme, weights))
    }

    /// Output features (rows of `W`).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features (columns of `W`).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The storage scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The integer representation, for integer schemes (to write compressed-tensors files).
    pub fn as_int(&self) -> Option<&IntMatrix> {
        match &self.weights {
            Weights::Int(int) => Some(int),
            _ => None,
        }
    }

    /// The raw bytes of GGML and float schemes, exactly as a GGUF file stores the tensor
    /// (a copy for Q8_0 and Q4_0, which are kept with four rows interleaved for the kernels).
    pub fn as_bytes(&self) -> Option<Cow<'_, [u8]>> {
        Some(match &self.weights {
            Weights::F16(v) => Cow::Borrowed(bytemuck::cast_slice(v)),
            Weights::Bf16(v) => Cow::Borrowed(bytemuck::cast_slice(v)),
            Weights::Q8_0(v) => Cow::Owned(bytemuck::cast_slice(&v.to_blocks()).to_vec()),
            Weights::Q4_0(v) => Cow::Owned(bytemuck::cast_slice(&v.to_blocks()).to_vec()),
            Weights::Q4_1(v) => Cow::Borrowed(bytemuck::cast_slice(v)),
            Weights::Q5_0(v) => Cow::Borrowed(bytemuck::cast_slice(v)),
            Weights::Q5_1(v) => Cow::Borrowed(bytemuck::cast_slice(v)),
            Weights::Int(_) => return None,
        })
    }

    /// Writes the dequantized weights, row-major.
    ///
    /// # Panics
    /// If `dst.len() != rows * cols`.
    pub fn dequantize(&self, dst: &mut [f32]) {
        assert_eq!(dst.len(), self.rows * self.cols, "destination must hold rows x cols values");
        match &self.weights {
            Weights::F16(v) => cast::f16_to_f32(v, dst),
            Weights::Bf16(v) => cast::bf16_to_f32(v, dst),
            Weights::Q8_0(_) | Weights::Q4_0(_) => {
                for (row, dst) in dst.chunks_exact_mut(self.cols).enumerate() {
                    self.dequantize_row(row, dst);
                }
            }
            Weights::Q4_1(v) => ggml::dequantize_q4_1(v, dst),
            Weights::Q5_0(v) => ggml::dequantize_q5_0(v, dst),
            Weights::Q5_1(v) => ggml::dequantize_q5_1(v, dst),
            Weights::Int(int) => int.dequantize(dst),
        }
    }

    /// `y = W x` for one token, activations quantized on the fly (see [`gemm`](Self::gemm)).
    ///
    /// # Panics
    /// If `x.len() != cols` or `y.len() != rows`.
    pub fn gemv(&self, x: &[f32], y: &mut [f32]) {
        self.gemm(x, 1, y);
    }

    /// `Y = X W^T` for `n_tokens` tokens: `x` is row-major `[n_tokens, cols]`, `y` row-major
    /// `[n_tokens, rows]`.
    ///
    /// Activations are quantized per token to the partner format of the weights: Q8_0 for Q8_0,
    /// Q4_0 and Q5_0 weights, Q8_1 for Q4_1 and Q5_1, symmetric int8 (one scale per token) for
    /// the integer schemes; f16 and bf16 weights keep f32 activations. Rows (or, for integer
    /// weights, tokens; for one token, rows again) are split over rayon's threads; every output is one
    /// deterministic dot product, so results do not depend on the thread count (and with
    /// quantized activations, each token's outputs equal [`gemv`](Self::gemv) of that token).
    ///
    /// # Panics
    /// If `x.len() != n_tokens * cols` or `y.len() != n_tokens * rows`.
    pub fn gemm(&self, x: &[f32], n_tokens: usize, y: &mut [f32]) {
        self.linear(x, n_tokens, None, None, y);
    }

    /// `Y = (X diag(input_scale)) W^T + bias`: [`gemm`](Self::gemm) of the tokens with channel
    /// `j` multiplied by `input_scale[j]` (SmoothQuant's `1 / s` for weights stored smoothed),
    /// then the bias added to every token's outputs. The result is exactly that of scaling `x`
    /// (`x * input_scale`, one f32 product per value), calling `gemm` and adding the bias (one f32
    /// sum per output); with integer weights both steps are fused into the GEMM's passes, so
    /// neither the scaled input nor a second pass over `y` is needed.
    ///
    /// # Panics
    /// If `x.len() != n_tokens * cols`, `y.len() != n_tokens * rows`, `input_scale` does not hold
    /// `cols` factors or `bias` does not hold `rows` values.
    pub fn linear(&self, x: &[f32], n_tokens: usize, input_scale: Option<&[f32]>, bias: Option<&[f32]>, y: &mut [f32]) {
        self.check_lengths(x, n_tokens, y);
        if let Some(input_scale) = input_scale {
            assert_eq!(input_scale.len(), self.cols, "input_scale must hold one factor per column");
        }
        if let Some(bias) = bias {
            assert_eq!(bias.len(), self.rows, "bias must hold one value per row");
        }
        // Integer weights always take the panels, one token included: one stream of weights
        // and no per-row setup (measured against the per-row kernels of `quad_outputs`, one
        // thread: 384 x 384 from cache 19.7 -> 5.1 us, 4096 x 4096 from DRAM 9.2-11.4 -> 12.2-12.6
        // GB/s), with the same results (the per-row path stays as the tests' reference,
        // `gemm_rows`).
        if let Weights::Int(weights) = &self.weights {
            self.run_int_panels(weights, x, n_tokens, Fused { input_scale, bias }, y, dot::dispatched());
            return;
        }
        let scaled: Vec<f32>;
        let x = match input_scale {
            Some(input_scale) => {
                scaled = scale_channels(x, input_scale);
                &scaled
            }
            None => x,
        };
        let activations = self.quantize_activations(x, n_tokens);
        self.run(x, n_tokens, y, &activations);
        if let Some(bias) = bias
            && !bias.is_empty()
        {
            for outputs in y.chunks_exact_mut(bias.len()) {
                for (value, b) in outputs.iter_mut().zip(bias) {
                    *value += b;
                }
            }
        }
    }

    /// Like [`gemm`](Self::gemm), but the activations stay f32: each weight row is dequantized
    /// and dotted with the f32 tokens (the weight-only mode: less error, more time). From four
    /// tokens on, tiles of dequantized rows go through the dense GEMM instead, whose summation
    /// order differs from the one-token path in the last bits.
    ///
    /// # Panics
    /// If `x.len() != n_tokens * cols` or `y.len() != n_tokens * rows`.
    pub fn gemm_weight_only(&self, x: &[f32], n_tokens: usize, y: &mut [f32]) {
        self.check_lengths(x, n_tokens, y);
        self.run(x, n_tokens, y, &Activations::F32);
    }

    fn check_lengths(&self, x: &[f32], n_tokens: usize, y: &[f32]) {
        assert_eq!(x.len(), n_tokens * self.cols, "x must be [n_tokens, cols]");
        assert_eq!(y.len(), n_tokens * self.rows, "y must be [n_tokens, rows]");
    }

    fn quantize_activations(&self, x: &[f32], n_tokens: usize) -> Activations {
        assert_eq!(x.len(), n_tokens * self.cols, "x must be [n_tokens, cols]");
        match &self.weights {
            Weights::F16(_) | Weights::Bf16(_) => Activations::F32,
            Weights::Q8_0(_) | Weights::Q4_0(_) | Weights::Q5_0(_) => Activations::Q8_0(blocks(x, ggml::quantize_q8_0)),
            Weights::Q4_1(_) | Weights::Q5_1(_) => Activations::Q8_1(blocks(x, ggml::quantize_q8_1)),
            Weights::Int(int) => {
                let group = int.group_len();
                let mut values = vec![0i8; x.len()];
                let mut scales = Vec::with_capacity(n_tokens);
                for (token, dst) in x.chunks_exact(self.cols).zip(values.chunks_exact_mut(self.cols)) {
                    scales.push(linear::quantize_activations_i8(token, dst));
                }
                // Only asymmetric weights need the sums (for their zero points).
                let group_sums = if int.scheme().is_symmetric() {
                    Vec::new()
                } else {
                    values.chunks(group).map(|g| g.iter().map(|&v| i32::from(v)).sum()).collect()
                };
                Activations::I8 { values, scales, group_sums }
            }
        }
    }

    fn run(&self, x: &[f32], n_tokens: usize, y: &mut [f32], activations: &Activations) {
        self.check_lengths(x, n_tokens, y);
        if n_tokens == 0 || self.rows == 0 {
            return;
        }
        #[cfg(feature = "dense")]
        if matches!(activations, Activations::F32) && n_tokens >= DENSE_MIN_TOKENS {
            self.run_dense_tiles(x, n_tokens, y);
            return;
        }
        // Each task fills `[rows in task, n_tokens]` of the transposed output; one token needs no
        // transpose.
        let mut transposed = if n_tokens == 1 { Vec::new() } else { vec![0.0f32; self.rows * n_tokens] };
        let out: &mut [f32] = if n_tokens == 1 { y } else { &mut transposed };
        out.par_chunks_mut(ROWS_PER_TASK * n_tokens).enumerate().for_each(|(task, chunk)| {
            let mut row_buffer = Vec::new();
            let mut group_params = Vec::new();
            let first_row = task * ROWS_PER_TASK;
            let first_rest = first_row + (chunk.len() / n_tokens) / 4 * 4;
            let mut quads = chunk.chunks_exact_mut(4 * n_tokens);
            for (quad, outputs) in (&mut quads).enumerate() {
                let row = first_row + 4 * quad;
                if !self.quad_outputs(row, activations, outputs, &mut group_params) {
                    for (offset, outputs) in outputs.chunks_exact_mut(n_tokens).enumerate() {
                        self.row_outputs(row + offset, x, activations, outputs, &mut row_buffer);
                    }
                }
            }
            // The last task's rows beyond a multiple of four.
            for (offset, outputs) in quads.into_remainder().chunks_exact_mut(n_tokens).enumerate() {
                self.row_outputs(first_rest + offset, x, activations, outputs, &mut row_buffer);
            }
        });
        if n_tokens > 1 {
            transpose(&transposed, self.rows, n_tokens, y);
        }
    }

    /// f32 activations and several tokens: dequantize `DENSE_TILE_ROWS` rows at a time and hand
    /// them to the dense GEMM, which reuses each weight across the tokens far better than one dot
    /// product per row and token.
    #[cfg(feature = "dense")]
    fn run_dense_tiles(&self, x: &[f32], n_tokens: usize, y: &mut [f32]) {
        let (rows, cols) = (self.rows, self.cols);
        let tiles: Vec<Vec<f32>> = (0..rows.div_ceil(DENSE_TILE_ROWS))
            .into_par_iter()
            .map(|tile| {
                let first = tile * DENSE_TILE_ROWS;
                let n_rows = DENSE_TILE_ROWS.min(rows - first);
                let mut weights = vec![0.0f32; n_rows * cols];
                for (offset, dst) in weights.chunks_exact_mut(cols).enumerate() {
                    self.dequantize_row(first + offset, dst);
                }
                let mut out = vec![0.0f32; n_tokens * n_rows];
                crate::dense::linear(x, n_tokens, &weights, n_rows, cols, None, &mut out);
                out
            })
            .collect();
        for (tile, out) in tiles.iter().enumerate() {
            let first = tile * DENSE_TILE_ROWS;
            let n_rows = out.len() / n_tokens;
            for (t, values) in out.chunks_exact(n_rows).enumerate() {
                y[t * rows + first..][..n_rows].copy_from_slice(values);
            }
        }
    }

    /// Integer weights, any number of tokens: panels of sixteen rows packed once
    /// ([`IntPanels`]) times the tokens widened to i16 ([`dot::gemm_i8_i16_f32`]), written
    /// straight into `y`'s `[n_tokens, rows]` layout. Rayon splits the tokens; each task quantizes
    /// its own tokens (scaling them by the fused input scale first), so they are still in cache
    /// for the kernel, then runs them over every panel. The integer sums are exact, and
    /// each output then takes the same f32 steps as in [`quad_outputs`](Self::quad_outputs) (per
    /// group `sum += scale * integer`, in group order, then times the token's scale) and then the
    /// bias's sum, so GEMV and GEMM agree exactly for any split.
    fn run_int_panels(
        &self,
        weights: &IntMatrix,
        x: &[f32],
        n_tokens: usize,
        fused: Fused<'_>,
        y: &mut [f32],
        kernels: &dot::DotKernels,
    ) {
        let (rows, cols) = (self.rows, self.cols);
        if n_tokens == 0 || rows == 0 {
            return;
        }
        if cols == 0 {
            // Empty sums, then the bias (as the unfused steps would give).
            for outputs in y.chunks_exact_mut(rows) {
                match fused.bias {
                    Some(bias) => outputs.iter_mut().zip(bias).for_each(|(value, b)| *value = 0.0 + b),
                    None => outputs.fill(0.0),
                }
            }
            return;
        }
        let packed = self.int_panels.get_or_init(|| IntPanels::new(weights, self.activation_bits));
        let group_len = weights.group_len();
        let run_task = |buffers: &mut IntTaskBuffers, (task, y_task): (usize, &mut [f32])| {
            let first_token = task * INT_TOKENS_PER_TASK;
            let n_task_tokens = y_task.len() / rows;
            let x_task = &x[first_token * cols..][..n_task_tokens * cols];
            buffers.quantize(x_task, fused.input_scale, cols, group_len, packed);
            packed.multiply(kernels, 0..rows, buffers, fused.bias, PanelOutput { values: y_task, stride: rows });
        };
        let threads = rayon::current_num_threads();
        if n_tokens == 1 && threads > 1 && rows * cols >= PARALLEL_GEMV_WEIGHTS {
            // One token and several threads: split the panels (rows) instead, the token
            // quantized once for all of them.
            let mut buffers = IntTaskBuffers::default();
            buffers.quantize(x, fused.input_scale, cols, group_len, packed);
            let buffers = &buffers;
            y.par_chunks_mut(GEMV_PANELS_PER_TASK * PANEL_ROWS).enumerate().for_each(|(task, y_task)| {
                let (first_row, task_rows) = (task * GEMV_PANELS_PER_TASK * PANEL_ROWS, y_task.len());
                let out = PanelOutput { values: y_task, stride: task_rows };
                packed.multiply(kernels, first_row..first_row + task_rows, buffers, fused.bias, out);
            });
        } else if n_tokens <= INT_TOKENS_PER_TASK || threads == 1 {
            // One task, or one thread to run them: handing them to the pool would only add the
            // wake-up of a worker and the wait for it (measured 15% of 32 tokens by 384 x 384 on one thread).
            let mut buffers = IntTaskBuffers::default();
            y.chunks_mut(INT_TOKENS_PER_TASK * rows).enumerate().for_each(|task| run_task(&mut buffers, task));
        } else {
            y.par_chunks_mut(INT_TOKENS_PER_TASK * rows).enumerate().for_each_init(IntTaskBuffers::default, run_task);
        }
    }

    /// The outputs of the four weight rows from `row` for every token (`outputs` is `[4, n_tokens]`)
    /// with the four-row kernels, which load each activation block once for the four; `false`
    /// (nothing written) for the schemes without one.
    fn quad_outputs(
        &self,
        row: usize,
        activations: &Activations,
        outputs: &mut [f32],
        params: &mut Vec<[(f32, i8); 4]>,
    ) -> bool {
        let cols = self.cols;
        let n_tokens = outputs.len() / 4;
        let blocks_per_row = cols / QK;
        let mut store = |t: usize, values: [f32; 4]| {
            for (r, value) in values.into_iter().enumerate() {
                outputs[r * n_tokens + t] = value;
            }
        };
        match (&self.weights, activations) {
            (Weights::Q8_0(w), Activations::Q8_0(a)) => {
                for (t, token) in a.chunks_exact(blocks_per_row).enumerate() {
                    store(t, dot::dot_q8_0x4_q8_0(w.quad(row), token));
                }
            }
            (Weights::Q4_0(w), Activations::Q8_0(a)) => {
                for (t, token) in a.chunks_exact(blocks_per_row).enumerate() {
                    store(t, dot::dot_q4_0x4_q8_0(w.quad(row), token));
                }
            }
            (Weights::Int(w), Activations::I8 { values, scales, group_sums, .. }) => {
                let group = w.group_len();
                let groups_per_row = cols / group;
                let weight_rows: [&[i8]; 4] =
                    std::array::from_fn(|r| &w.values()[(row + r) * cols..(row + r + 1) * cols]);
                // Each group's scales and zero points of the four rows, looked up once.
                params.clear();
                params.extend(
                    (0..groups_per_row)
                        .map(|g| std::array::from_fn(|r| w.group_params(w.group_index(row + r, g * group)))),
                );
                let params = &*params;
                // The integer dot products of group `g` for token `t`, scaled.
                let scaled = |t: usize, g: usize, integers: [i32; 4], sums: &mut [f32; 4]| {
                    for ((sum, mut integer), (scale, zero_point)) in sums.iter_mut().zip(integers).zip(params[g]) {
                        if zero_point != 0 {
                            integer -= i32::from(zero_point) * group_sums[t * groups_per_row + g];
                        }
                        *sum += scale * integer as f32;
                    }
                };
                let token = |t: usize, span: std::ops::Range<usize>| &values[t * cols..(t + 1) * cols][span];
                let mut t = 0;
                while t + 2 <= n_tokens {
                    let mut sums = [[0.0f32; 4]; 2];
                    for g in 0..groups_per_row {
                        let span = g * group..(g + 1) * group;
                        let rows = weight_rows.map(|w| &w[span.clone()]);
                        let tile = dot::dot_i8_i8_4x2(rows, [token(t, span.clone()), token(t + 1, span)]);
                        scaled(t, g, tile[0], &mut sums[0]);
                        scaled(t + 1, g, tile[1], &mut sums[1]);
                    }
                    store(t, sums[0].map(|sum| sum * scales[t]));
                    store(t + 1, sums[1].map(|sum| sum * scales[t + 1]));
                    t += 2;
                }
                if t < n_tokens {
                    let mut sums = [0.0f32; 4];
                    for g in 0..groups_per_row {
                        let span = g * group..(g + 1) * group;
                        let integers = dot::dot_i8_i8_x4(weight_rows.map(|w| &w[span.clone()]), token(t, span));
                        scaled(t, g, integers, &mut sums);
                    }
                    store(t, sums.map(|sum| sum * scales[t]));
                }
            }
            _ => return false,
        }
        true
    }

    /// The outputs of one weight row for every token.
    fn row_outputs(
        &self,
        row: usize,
        x: &[f32],
        activations: &Activations,
        outputs: &mut [f32],
        buffer: &mut Vec<f32>,
    ) {
        let cols = self.cols;
        let blocks_per_row = cols / QK;
        let row_blocks = row * blocks_per_row..(row + 1) * blocks_per_row;
        match (&self.weights, activations) {
            (Weights::Q8_0(w), Activations::Q8_0(a)) => dot_tokens(&w.row(row), a, outputs, dot::dot_q8_0_q8_0),
            (Weights::Q4_0(w), Activations::Q8_0(a)) => dot_tokens(&w.row(row), a, outputs, dot::dot_q4_0_q8_0),
            (Weights::Q5_0(w), Activations::Q8_0(a)) => {
                dot_tokens(&w[row_blocks.clone()], a, outputs, dot::dot_q5_0_q8_0)
            }
            (Weights::Q4_1(w), Activations::Q8_1(a)) => {
                dot_tokens(&w[row_blocks.clone()], a, outputs, dot::dot_q4_1_q8_1)
            }
            (Weights::Q5_1(w), Activations::Q8_1(a)) => {
                dot_tokens(&w[row_blocks.clone()], a, outputs, dot::dot_q5_1_q8_1)
            }
            (Weights::Int(w), Activations::I8 { values, scales, group_sums, .. }) => {
                let group = w.group_len();
                let groups_per_row = cols / group;
                let weight_row = &w.values()[row * cols..(row + 1) * cols];
                for (t, out) in outputs.iter_mut().enumerate() {
                    let token = &values[t * cols..(t + 1) * cols];
                    let mut sum = 0.0f32;
                    for g in 0..groups_per_row {
                        let span = g * group..(g + 1) * group;
                        let mut integer = dot::dot_i8_i8(&weight_row[span.clone()], &token[span]);
                        let (scale, zero_point) = w.group_params(w.group_index(row, g * group));
                        if zero_point != 0 {
                            integer -= i32::from(zero_point) * group_sums[t * groups_per_row + g];
                        }
                        sum += scale * integer as f32;
                    }
                    *out = sum * scales[t];
                }
            }
            (_, Activations::F32) => {
                buffer.resize(cols, 0.0);
                self.dequantize_row(row, buffer);
                for (t, out) in outputs.iter_mut().enumerate() {
                    *out = dot::dot_f32_f32(buffer, &x[t * cols..(t + 1) * cols]);
                }
            }
            _ => unreachable!("activations are quantized for the weights' scheme"),
        }
    }

    fn dequantize_row(&self, row: usize, dst: &mut [f32]) {
        let cols = self.cols;
        let elements = row * cols..(row + 1) * cols;
        let blocks = row * cols / QK..(row + 1) * cols / QK;
        match &self.weights {
            Weights::F16(v) => cast::f16_to_f32(&v[elements], dst),
            Weights::Bf16(v) => cast::bf16_to_f32(&v[elements], dst),
            Weights::Q8_0(v) => ggml::dequantize_q8_0(&v.row(row), dst),
            Weights::Q4_0(v) => ggml::dequantize_q4_0(&v.row(row), dst),
            Weights::Q4_1(v) => ggml::dequantize_q4_1(&v[blocks], dst),
            Weights::Q5_0(v) => ggml::dequantize_q5_0(&v[blocks], dst),
            Weights::Q5_1(v) => ggml::dequantize_q5_1(&v[blocks], dst),
            Weights::Int(int) => int.dequantize_row(row, dst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ggml::scalar;

    impl QuantizedMatrix {
        /// [`gemm`](QuantizedMatrix::gemm) through the per-row kernels (`quad_outputs`,
        /// `row_outputs`), which integer weights no longer take: the independent reference the
        /// panels must equal bit for bit.
        fn gemm_rows(&self, x: &[f32], n_tokens: usize, y: &mut [f32]) {
            assert_eq!(self.activation_bits, ActivationBits::Eight, "the per-row kernels take int8 activations");
            let activations = self.quantize_activations(x, n_tokens);
            self.run(x, n_tokens, y, &activations);
        }

        /// What [`gemm`](QuantizedMatrix::gemm) gives with 7-bit activations, written out
        /// (integer weights): each token quantized by the scalar 7-bit quantizer, each group's
        /// exact integer sum less its zero point's share, scaled and summed in group order,
        /// times the token's scale, plus the bias; the reference of the `maddubs` kernel, which is
        /// exact for these activations.
        fn gemm_rows_7(
            &self,
            x: &[f32],
            n_tokens: usize,
            input_scale: Option<&[f32]>,
            bias: Option<&[f32]>,
            y: &mut [f32],
        ) {
            let Weights::Int(w) = &self.weights else { panic!("7-bit activations need integer weights") };
            let (rows, cols, group) = (self.rows, self.cols, w.group_len());
            let quantize = linear::quantize_activations_i7_kernel(crate::Isa::Scalar).unwrap();
            let mut a = vec![0i8; cols];
            for t in 0..n_tokens {
                let token_scale = quantize(&x[t * cols..(t + 1) * cols], input_scale, &mut a);
                for row in 0..rows {
                    let q = &w.values()[row * cols..(row + 1) * cols];
                    let mut acc = 0.0f32;
                    for g in 0..cols / group {
                        let span = g * group..(g + 1) * group;
                        let dot: i32 = span.clone().map(|c| i32::from(q[c]) * i32::from(a[c])).sum();
                        let sum: i32 = span.map(|c| i32::from(a[c])).sum();
                        let (scale, zero_point) = w.group_params(w.group_index(row, g * group));
                        acc += scale * (dot - i32::from(zero_point) * sum) as f32;
                    }
                    let mut value = acc * token_scale;
                    if let Some(bias) = bias {
                        value += bias[row];
                    }
                    y[t * rows + row] = value;
                }
            }
        }
    }

    const SCHEMES: &[&str] = &[
        "f16",
        "bf16",
        "q8_0",
        "q4_0",
        "q4_1",
        "q5_0",
        "q5_1",
        "int8-tensor",
        "int8-channel",
        "int8-g32",
        "int8-channel-asym",
        "int4-channel",
        "int4-g32",
        "int4-g64-asym",
    ];

    /// Deterministic weights with outliers, zeros and both signs.
    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
        (0..n)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let unit = (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
                if i % 97 == 0 {
                    unit * 20.0
                } else if i % 31 == 0 {
                    0.0
                } else {
                    unit
                }
            })
            .collect()
    }

    /// What the quantized kernels compute, in f64: dequantized weights times the activations as
    /// the kernels quantize them.
    fn reference(matrix: &QuantizedMatrix, x: &[f32], n_tokens: usize, weight_only: bool) -> Vec<f64> {
        let (rows, cols) = (matrix.rows(), matrix.cols());
        let mut w = vec![0.0f32; rows * cols];
        matrix.dequantize(&mut w);
        let mut xq = x.to_vec();
        if !weight_only {
            match matrix.scheme() {
                Scheme::F16 | Scheme::Bf16 => {}
                Scheme::Q4_1 | Scheme::Q5_1 => {
                    let mut blocks = vec![BlockQ8_1::zeroed(); x.len() / QK];
                    scalar::quantize_q8_1(x, &mut blocks);
                    scalar::dequantize_q8_1(&blocks, &mut xq);
                }
                Scheme::Int(_) => {
                    for (token, dst) in x.chunks(cols).zip(xq.chunks_mut(cols)) {
                        let mut q = vec![0i8; cols];
                        let scale = linear::quantize_activations_i8(token, &mut q);
                        for (d, q) in dst.iter_mut().zip(q) {
                            *d = f32::from(q) * scale;
                        }
                    }
                }
                _ => {
                    let mut blocks = vec![BlockQ8_0::zeroed(); x.len() / QK];
                    scalar::quantize_q8_0(x, &mut blocks);
                    scalar::dequantize_q8_0(&blocks, &mut xq);
                }
            }
        }
        let mut y = vec![0.0f64; n_tokens * rows];
        for t in 0..n_tokens {
            for r in 0..rows {
                let row = &w[r * cols..(r + 1) * cols];
                let token = &xq[t * cols..(t + 1) * cols];
                y[t * rows + r] = row.iter().zip(token).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
            }
        }
        y
    }

    fn assert_close(found: &[f32], expected: &[f64], tolerance: f64, what: &str) {
        for (i, (&a, &b)) in found.iter().zip(expected).enumerate() {
            assert!((f64::from(a) - b).abs() <= tolerance, "{what}: output {i}: {a} vs {b}");
        }
    }

    #[test]
    fn gemm_computes_what_the_formats_promise() {
        let (rows, cols, n_tokens) = (37, 128, 5);
        let weights = values(rows * cols, 1);
        let x = values(n_tokens * cols, 2);
        for name in SCHEMES {
            let matrix = QuantizedMatrix::quantize(&weights, rows, cols, name.parse().unwrap()).unwrap();
            // The magnitude of the terms bounds the rounding of any summation order.
            let scale: f64 = weights.iter().map(|w| f64::from(w.abs())).sum::<f64>() * 10.0 / rows as f64;

            // Q8_1 stores its block sum `s` as f16, and the Q4_1/Q5_1 dots use it for the minimum's
            // term, so they differ from the exact product of the dequantized values by up to
            // |m| * |s| * 2^-11 per block.
            let tolerance = if matches!(*name, "q4_1" | "q5_1") { 2e-3 } else { 1e-5 } * scale;
            let mut y = vec![f32::NAN; n_tokens * rows];
            matrix.gemm(&x, n_tokens, &mut y);
            assert_close(&y, &reference(&matrix, &x, n_tokens, false), tolerance, name);

            let mut single = vec![f32::NAN; rows];
            matrix.gemv(&x[..cols], &mut single);
            if matches!(*name, "f16" | "bf16") {
                // Several tokens with f32 activations run on the dense GEMM: another sum order.
                let gemv_as_f64: Vec<f64> = single.iter().map(|&v| f64::from(v)).collect();
                assert_close(&y[..rows], &gemv_as_f64, 1e-5 * scale, name);
            } else {
                assert_eq!(single, y[..rows], "{name}: gemv is the first token of gemm");
            }

            let mut weight_only = vec![f32::NAN; n_tokens * rows];
            matrix.gemm_weight_only(&x, n_tokens, &mut weight_only);
            assert_close(&weight_only, &reference(&matrix, &x, n_tokens, true), 1e-5 * scale, name);

            // And the quantized result stays near the exact f32 product.
            let exact =
                reference(&QuantizedMatrix::quantize(&weights, rows, cols, Scheme::F16).unwrap(), &x, n_tokens, true);
            let worst = y.iter().zip(&exact).map(|(&a, &b)| (f64::from(a) - b).abs()).fold(0.0, f64::max);
            assert!(worst < 0.05 * scale, "{name}: worst error {worst} against scale {scale}");
        }
    }

    #[test]
    fn interleaved_rows_give_back_ggml_blocks() {
        for rows in [1, 4, 7, 37] {
            let cols = 96;
            let weights = values(rows * cols, 9);
            for (name, ggml_bytes) in [
                ("q8_0", bytemuck::cast_slice::<_, u8>(&blocks(&weights, ggml::quantize_q8_0)).to_vec()),
                ("q4_0", bytemuck::cast_slice::<_, u8>(&blocks(&weights, ggml::quantize_q4_0)).to_vec()),
            ] {
                let matrix = QuantizedMatrix::quantize(&weights, rows, cols, name.parse().unwrap()).unwrap();
                assert_eq!(matrix.as_bytes().unwrap().as_ref(), ggml_bytes.as_slice(), "{name}, {rows} rows");
                let mut dequantized = vec![0.0f32; rows * cols];
                matrix.dequantize(&mut dequantized);
                let mut expected = vec![0.0f32; rows * cols];
                match name {
                    "q8_0" => ggml::dequantize_q8_0(bytemuck::cast_slice(&ggml_bytes), &mut expected),
                    _ => ggml::dequantize_q4_0(bytemuck::cast_slice(&ggml_bytes), &mut expected),
                }
                assert_eq!(dequantized, expected, "{name}, {rows} rows");
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let (rows, cols, n_tokens) = (100, 64, 3);
        let weights = values(rows * cols, 3);
        let x = values(n_tokens * cols, 4);
        for name in ["q4_0", "int8-channel", "f16"] {
            let matrix = QuantizedMatrix::quantize(&weights, rows, cols, name.parse().unwrap()).unwrap();
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut y = vec![0.0f32; n_tokens * rows];
                pool.install(|| matrix.gemm(&x, n_tokens, &mut y));
                y
            };
            let one = run(1);
            assert_eq!(
                one.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                run(3).iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{name}"
            );
        }
    }

    #[test]
    fn int_gemm_is_gemv_per_token_for_any_split() {
        // 53 tokens span three tasks of the int8 GEMM (two of 24 tokens, and one of 5: tiles of
        // 4 + 1), 37 rows three panels (the last one padded).
        let (rows, cols, n_tokens) = (37, 96, 2 * INT_TOKENS_PER_TASK + 5);
        let weights = values(rows * cols, 11);
        let mut x = values(n_tokens * cols, 12);
        // A token of zeros (zero scale) and one with a single outlier.
        x[3 * cols..4 * cols].fill(0.0);
        x[5 * cols + 7] = 1e4;
        let names = ["int8-channel", "int8-g32", "int8-channel-asym", "int4-g32", "int4-g32-asym", "int8-tensor"];
        let all = [ActivationBits::Eight, ActivationBits::Seven];
        for (name, activation_bits) in names.into_iter().flat_map(|name| all.map(|bits| (name, bits))) {
            let matrix = QuantizedMatrix::quantize(&weights, rows, cols, name.parse().unwrap()).unwrap();
            let matrix = matrix.with_activation_bits(activation_bits).unwrap();
            let name = format!("{name} {activation_bits:?}");
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut y = vec![f32::NAN; n_tokens * rows];
                pool.install(|| matrix.gemm(&x, n_tokens, &mut y));
                y
            };
            let y = run(1);
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&y), bits(&run(4)), "{name}: thread count");
            for (t, (token, expected)) in x.chunks_exact(cols).zip(y.chunks_exact(rows)).enumerate() {
                let (mut single, mut reference) = (vec![f32::NAN; rows], vec![f32::NAN; rows]);
                matrix.gemv(token, &mut single);
                match activation_bits {
                    ActivationBits::Eight => matrix.gemm_rows(token, 1, &mut reference),
                    ActivationBits::Seven => matrix.gemm_rows_7(token, 1, None, None, &mut reference),
                }
                assert_eq!(bits(&single), bits(expected), "{name}: token {t}");
                assert_eq!(bits(&reference), bits(expected), "{name}: token {t}, per-row kernels");
            }

            // Two tokens (one task, one tile) agree with the first two of the long run.
            let mut two = vec![f32::NAN; 2 * rows];
            matrix.gemm(&x[..2 * cols], 2, &mut two);
            assert_eq!(bits(&two), bits(&y[..2 * rows]), "{name}: two tokens");
        }
    }

    #[test]
    fn parallel_int_gemv_splits_rows_without_changing_a_bit() {
        // Enough weights for the split (`PARALLEL_GEMV_WEIGHTS`), rows that leave a last task of
        // one partial panel, groups, zero points, a fused input scale and a bias.
        let (rows, cols) = (4 * GEMV_PANELS_PER_TASK * PANEL_ROWS + 21, 3840);
        assert!(rows * cols >= PARALLEL_GEMV_WEIGHTS);
        let weights = values(rows * cols, 21);
        let x = values(cols, 22);
        let input_scale: Vec<f32> = (0..cols).map(|j| 0.5 + (j % 3) as f32 * 0.25).collect();
        let bias = values(rows, 23);
        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for name in ["int8-channel", "int8-g32", "int4-g128-asym"] {
            let matrix = QuantizedMatrix::quantize(&weights, rows, cols, name.parse().unwrap()).unwrap();
            let seven = matrix.clone().with_activation_bits(ActivationBits::Seven).unwrap();
            let run = |matrix: &QuantizedMatrix, threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut y = vec![f32::NAN; rows];
                pool.install(|| matrix.linear(&x, 1, Some(&input_scale), Some(&bias), &mut y));
                y
            };
            let one = run(&matrix, 1);
            assert_eq!(bits(&run(&matrix, 3)), bits(&one), "{name}: three threads");
            let mut reference = vec![f32::NAN; rows];
            matrix.gemm_rows(&scale_channels(&x, &input_scale), 1, &mut reference);
            for (value, b) in reference.iter_mut().zip(&bias) {
                *value += b;
            }
            assert_eq!(bits(&one), bits(&reference), "{name}: per-row kernels");

            let one = run(&seven, 1);
            assert_eq!(bits(&run(&seven, 3)), bits(&one), "{name}, 7 bits: three threads");
            seven.gemm_rows_7(&x, 1, Some(&input_scale), Some(&bias), &mut reference);
            assert_eq!(bits(&one), bits(&reference), "{name}, 7 bits: reference");
        }
    }

    #[test]
    fn int_panels_are_identical_on_every_isa_and_to_the_unfused_steps() {
        // Odd shapes: rows around the panel's 16, 1 to 19 tokens (tiles of one to six tokens, and
        // every rest after tiles of six), groups of even and odd lengths (padded), symmetric and
        // asymmetric weights.
        let kernels: Vec<(crate::Isa, &dot::DotKernels)> = crate::Isa::supported()
            .into_iter()
            .map(|isa| (isa, dot::kernels(isa).expect("supported isa has a table")))
            .collect();
        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for (name, cols) in [
            ("int8-channel", 64),
            ("int8-channel", 33),
            ("int8-tensor", 96),
            ("int8-g32", 96),
            ("int8-g3", 96),
            ("int8-channel-asym", 64),
            ("int4-g32-asym", 96),
        ] {
            for (rows, seven) in [1, 5, 16, 17, 37].into_iter().flat_map(|rows| [(rows, false), (rows, true)]) {
                let weights = values(rows * cols, 13);
                let mut matrix = QuantizedMatrix::quantize(&weights, rows, cols, name.parse().unwrap()).unwrap();
                if seven {
                    matrix = matrix.with_activation_bits(ActivationBits::Seven).unwrap();
                }
                let Weights::Int(int) = &matrix.weights else { unreachable!("an integer scheme") };
                let input_scale: Vec<f32> = (0..cols).map(|j| 0.25 + (j % 5) as f32 * 0.5).collect();
                let bias = values(rows, 14);
                for n_tokens in 1..=19 {
                    let mut x = values(n_tokens * cols, 15 + n_tokens as u32);
                    x[..cols].fill(0.0);
                    x[(n_tokens - 1) * cols] = -3e3;
                    // The unfused steps: scale the input, one GEMV per token, add the bias.
                    let scaled = scale_channels(&x, &input_scale);
                    let mut plain = vec![f32::NAN; n_tokens * rows];
                    let mut smoothed = vec![f32::NAN; n_tokens * rows];
                    if seven {
                        matrix.gemm_rows_7(&x, n_tokens, None, None, &mut plain);
                        matrix.gemm_rows_7(&x, n_tokens, Some(&input_scale), Some(&bias), &mut smoothed);
                    } else {
                        for t in 0..n_tokens {
                            let span = t * cols..(t + 1) * cols;
                            matrix.gemm_rows(&x[span.clone()], 1, &mut plain[t * rows..(t + 1) * rows]);
                            matrix.gemm_rows(&scaled[span], 1, &mut smoothed[t * rows..(t + 1) * rows]);
                        }
                        for (value, b) in smoothed.iter_mut().zip(bias.iter().cycle()) {
                            *value += b;
                        }
                    }
                    let what = format!("{name}, {rows} x {cols}, {n_tokens} tokens, 7 bits {seven}");
                    for &(isa, kernels) in &kernels {
                        let mut y = vec![f32::NAN; n_tokens * rows];
                        let none = Fused { input_scale: None, bias: None };
                        matrix.run_int_panels(int, &x, n_tokens, none, &mut y, kernels);
                        assert_eq!(bits(&y), bits(&plain), "{what}, {isa:?}");
                        let fused = Fused { input_scale: Some(&input_scale), bias: Some(&bias) };
                        matrix.run_int_panels(int, &x, n_tokens, fused, &mut y, kernels);
                        assert_eq!(bits(&y), bits(&smoothed), "{what}, {isa:?}, fused");
                    }
                    let mut y = vec![f32::NAN; n_tokens * rows];
                    matrix.linear(&x, n_tokens, Some(&input_scale), Some(&bias), &mut y);
                    assert_eq!(bits(&y), bits(&smoothed), "{what}, linear");
                }
            }
        }
    }

    #[test]
    fn seven_bit_activations_stay_close_and_need_integer_weights() {
        let (rows, cols, n_tokens) = (37, 128, 5);
        let weights = values(rows * cols, 31);
        let x = values(n_tokens * cols, 32);
        let exact =
            reference(&QuantizedMatrix::quantize(&weights, rows, cols, Scheme::F16).unwrap(), &x, n_tokens, true);
        let scale: f64 = weights.iter().map(|w| f64::from(w.abs())).sum::<f64>() * 10.0 / rows as f64;
        let worst = |bits: ActivationBits| {
            let matrix = QuantizedMatrix::quantize(&weights, rows, cols, "int8-channel".parse().unwrap()).unwrap();
            let matrix = matrix.with_activation_bits(bits).unwrap();
            assert_eq!(matrix.activation_bits(), bits);
            let mut y = vec![f32::NAN; n_tokens * rows];
            matrix.gemm(&x, n_tokens, &mut y);
            y.iter().zip(&exact).map(|(&a, &b)| (f64::from(a) - b).abs()).fold(0.0, f64::max)
        };
        let (eight, seven) = (worst(ActivationBits::Eight), worst(ActivationBits::Seven));
        // Twice the activations' step: about twice the error, and still small.
        assert!(seven < 0.05 * scale && seven > eight, "7 bits: worst error {seven} (8 bits: {eight})");
        for name in ["q8_0", "f16"] {
            let matrix = QuantizedMatrix::quantize(&weights, rows, cols, name.parse().unwrap()).unwrap();
            let error = matrix.clone().with_activation_bits(ActivationBits::Seven).unwrap_err();
            assert!(error.to_string().contains("7-bit activations need an integer scheme"), "{name}: {error}");
            assert!(matrix.with_activation_bits(ActivationBits::Eight).is_ok(), "{name}");
        }
    }

    #[test]
    fn linear_fuses_what_it_would_otherwise_add() {
        // Every scheme, one and several tokens: `linear` equals gemm of the scaled input, plus
        // the bias, bit for bit.
        let (rows, cols) = (21, 64);
        let weights = values(rows * cols, 16);
        let input_scale: Vec<f32> = (0..cols).map(|j| 2.0 - (j % 7) as f32 * 0.25).collect();
        let bias = values(rows, 17);
        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for name in SCHEMES {
            let matrix = QuantizedMatrix::quantize(&weights, rows, cols, name.parse().unwrap()).unwrap();
            for n_tokens in [1, 2, 9] {
                let x = values(n_tokens * cols, 18);
                let mut expected = vec![f32::NAN; n_tokens * rows];
                matrix.gemm(&scale_channels(&x, &input_scale), n_tokens, &mut expected);
                for (value, b) in expected.iter_mut().zip(bias.iter().cycle()) {
                    *value += b;
                }
                let mut y = vec![f32::NAN; n_tokens * rows];
                matrix.linear(&x, n_tokens, Some(&input_scale), Some(&bias), &mut y);
                assert_eq!(bits(&y), bits(&expected), "{name}, {n_tokens} tokens");
            }
        }
        let matrix = QuantizedMatrix::quantize(&weights, rows, cols, Scheme::Q8_0).unwrap();
        let call = |scale_len: usize, bias_len: usize| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut y = vec![0.0; 2 * rows];
                matrix.linear(&vec![0.0; 2 * cols], 2, Some(&vec![1.0; scale_len]), Some(&vec![0.0; bias_len]), &mut y)
            }))
        };
        assert!(call(cols, rows).is_ok());
        assert!(call(cols - 1, rows).is_err());
        assert!(call(cols, rows + 1).is_err());
    }

    #[test]
    fn dequantize_matches_the_format_kernels() {
        let weights = values(4 * 64, 5);
        let matrix = QuantizedMatrix::quantize(&weights, 4, 64, Scheme::Q4_1).unwrap();
        let mut blocks = vec![BlockQ4_1::zeroed(); 8];
        scalar::quantize_q4_1(&weights, &mut blocks);
        assert_eq!(matrix.as_bytes().unwrap(), bytemuck::cast_slice::<BlockQ4_1, u8>(&blocks));
        let (mut ours, mut theirs) = (vec![0.0; 256], vec![0.0; 256]);
        matrix.dequantize(&mut ours);
        scalar::dequantize_q4_1(&blocks, &mut theirs);
        assert_eq!(ours, theirs);
    }

    #[test]
    fn bad_weights_and_shapes_are_errors() {
        let mut weights = values(2 * 64, 6);
        weights[64 + 5] = f32::NAN;
        let err = QuantizedMatrix::quantize(&weights, 2, 64, Scheme::Q8_0).unwrap_err();
        assert!(matches!(err, Error::NonFinite { row: 1, col: 5, .. }), "{err}");
        weights[64 + 5] = f32::NEG_INFINITY;
        assert!(matches!(QuantizedMatrix::quantize(&weights, 2, 64, Scheme::Q8_0), Err(Error::NonFinite { .. })));
        let weights = values(2 * 48, 7);
        let err = QuantizedMatrix::quantize(&weights, 2, 48, Scheme::Q4_0).unwrap_err();
        assert!(matches!(err, Error::BlockMisfit { cols: 48, block: 32, .. }), "{err}");
        let err = QuantizedMatrix::quantize(&weights, 2, 48, "int4-g32".parse().unwrap()).unwrap_err();
        assert!(matches!(err, Error::BlockMisfit { cols: 48, block: 32, .. }), "{err}");
        let err = QuantizedMatrix::quantize(&weights, 3, 48, Scheme::F16).unwrap_err();
        assert!(matches!(err, Error::ShapeMismatch { expected: 144, found: 96, .. }), "{err}");
        assert!(QuantizedMatrix::quantize(&weights, usize::MAX, 2, Scheme::F16).is_err());
    }

    #[test]
    fn stored_parts_load_back_to_the_same_matrix() {
        let (rows, cols) = (6, 64);
        let weights = values(rows * cols, 8);
        let x = values(3 * cols, 9);
        for name in SCHEMES {
            let scheme: Scheme = name.parse().unwrap();
            let matrix = QuantizedMatrix::quantize(&weights, rows, cols, scheme).unwrap();
            let loaded = match matrix.as_bytes() {
                Some(bytes) => QuantizedMatrix::from_bytes(scheme, rows, cols, &bytes).unwrap(),
                None => {
                    let packed = matrix.as_int().unwrap().to_pack_quantized();
                    QuantizedMatrix::from_int(IntMatrix::from_pack_quantized(&packed).unwrap())
                }
            };
            assert_eq!(loaded.scheme(), scheme);
            let (mut a, mut b) = (vec![0.0; rows * cols], vec![0.0; rows * cols]);
            matrix.dequantize(&mut a);
            loaded.dequantize(&mut b);
            assert_eq!(a, b, "{name}");
            let (mut ya, mut yb) = (vec![0.0; 3 * rows], vec![0.0; 3 * rows]);
            matrix.gemm(&x, 3, &mut ya);
            loaded.gemm(&x, 3, &mut yb);
            assert_eq!(ya, yb, "{name}");
        }
    }

    #[test]
    fn bad_stored_bytes_are_errors() {
        let weights = values(4 * 64, 10);
        let matrix = QuantizedMatrix::quantize(&weights, 4, 64, Scheme::Q4_1).unwrap();
        let mut bytes = matrix.as_bytes().unwrap().into_owned();
        let err = QuantizedMatrix::from_bytes(Scheme::Q4_1, 4, 64, &bytes[1..]).unwrap_err();
        assert!(matches!(err, Error::LengthMismatch { expected: 160, found: 159, .. }), "{err}");
        // The minimum of row 2's second block becomes +inf (f16 0x7c00).
        let block = 2 * 2 + 1;
        bytes[block * 20 + 2..block * 20 + 4].copy_from_slice(&0x7c00u16.to_le_bytes());
        let err = QuantizedMatrix::from_bytes(Scheme::Q4_1, 4, 64, &bytes).unwrap_err();
        assert!(matches!(err, Error::NonFinite { row: 2, col: 32, value } if value == f32::INFINITY), "{err}");
        let err = QuantizedMatrix::from_bytes("int8-channel".parse().unwrap(), 4, 64, &bytes).unwrap_err();
        assert!(matches!(err, Error::BadScheme { .. }), "{err}");
        let err = QuantizedMatrix::from_bytes(Scheme::Q8_0, 4, 48, &bytes).unwrap_err();
        assert!(matches!(err, Error::BlockMisfit { .. }), "{err}");
    }
}
