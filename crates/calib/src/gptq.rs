//! GPTQ onto lathe-quant's grids: see [`gptq`].

use half::f16;
use lathe_quant::ggml::{self, BlockQ4_0, BlockQ4_1, BlockQ8_0, QK};
use lathe_quant::linear::IntMatrix;
use lathe_quant::{Granularity, QuantizedMatrix, Scheme};

use crate::error::check_weights;
use crate::grid::{Grid, Params};
use crate::obs::{ColumnRule, SweepOptions, SweepReport, SweepState, obs_sweep};
use crate::{Error, Result};

/// Quantized weights in the structures lathe-quant stores and runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Quantized {
    /// An integer scheme: values, scales and zero points (pack with
    /// [`IntMatrix::to_pack_quantized`]).
    Int(IntMatrix),
    /// Q4_0 blocks, row-major (`cols / 32` per row), as a GGUF file stores them.
    Q4_0(Vec<BlockQ4_0>),
    /// Q4_1 blocks, row-major.
    Q4_1(Vec<BlockQ4_1>),
    /// Q8_0 blocks, row-major.
    Q8_0(Vec<BlockQ8_0>),
}

impl Quantized {
    /// The dequantized weights, row-major, through lathe-quant's own dequantizers.
    pub fn dequantize(&self) -> Vec<f32> {
        match self {
            Quantized::Int(matrix) => {
                let mut dst = vec![0.0; matrix.values().len()];
                matrix.dequantize(&mut dst);
                dst
            }
            Quantized::Q4_0(blocks) => {
                let mut dst = vec![0.0; blocks.len() * QK];
                ggml::dequantize_q4_0(blocks, &mut dst);
                dst
            }
            Quantized::Q4_1(blocks) => {
                let mut dst = vec![0.0; blocks.len() * QK];
                ggml::dequantize_q4_1(blocks, &mut dst);
                dst
            }
            Quantized::Q8_0(blocks) => {
                let mut dst = vec![0.0; blocks.len() * QK];
                ggml::dequantize_q8_0(blocks, &mut dst);
                dst
            }
        }
    }

    /// A lathe-quant matrix ready for `gemv` / `gemm`.
    ///
    /// # Errors
    /// lathe-quant's, when `rows x cols` does not match the blocks.
    pub fn to_matrix(&self, rows: usize, cols: usize) -> Result<QuantizedMatrix> {
        let (scheme, bytes): (Scheme, &[u8]) = match self {
            Quantized::Int(matrix) => return Ok(QuantizedMatrix::from_int(matrix.clone())),
            Quantized::Q4_0(blocks) => (Scheme::Q4_0, bytemuck::cast_slice(blocks)),
            Quantized::Q4_1(blocks) => (Scheme::Q4_1, bytemuck::cast_slice(blocks)),
            Quantized::Q8_0(blocks) => (Scheme::Q8_0, bytemuck::cast_slice(blocks)),
        };
        Ok(QuantizedMatrix::from_bytes(scheme, rows, cols, bytes)?)
    }
}

/// Round-to-nearest with lathe-quant's own quantizers: the baseline GPTQ improves on.
///
/// # Errors
/// [`Error::UnsupportedScheme`] for schemes other than integer ones, Q4_0, Q4_1 and Q8_0,
/// [`Error::BlockMisfit`] when `cols` is not a whole number of groups, [`Error::ShapeMismatch`]
/// when `weights.len() != rows * cols` and [`Error::NonFiniteWeight`] for NaN or infinite weights.
pub fn round_to_nearest(weights: &[f32], rows: usize, cols: usize, scheme: Scheme) -> Result<Quantized> {
    check_weights(weights, rows, cols)?;
    let grid = Grid::new(scheme)?;
    check_blocks(scheme, cols)?;
    Ok(match grid {
        Grid::Int(int) => Quantized::Int(IntMatrix::quantize(weights, rows, cols, int)?),
        Grid::Q4_0 => Quantized::Q4_0(ggml_blocks(weights, ggml::quantize_q4_0)),
        Grid::Q4_1 => Quantized::Q4_1(ggml_blocks(weights, ggml::quantize_q4_1)),
        Grid::Q8_0 => Quantized::Q8_0(ggml_blocks(weights, ggml::quantize_q8_0)),
    })
}

fn ggml_blocks<B: bytemuck::Zeroable + Clone>(weights: &[f32], quantize: fn(&[f32], &mut [B])) -> Vec<B> {
    let mut blocks = vec![B::zeroed(); weights.len() / QK];
    quantize(weights, &mut blocks);
    blocks
}

fn check_blocks(scheme: Scheme, cols: usize) -> Result<()> {
    let block = scheme.block_size();
    if cols.is_multiple_of(block) {
        Ok(())
    } else {
        Err(Error::BlockMisfit { scheme: scheme.to_string(), cols, block })
    }
}

/// The result of [`gptq`].
#[derive(Debug, Clone, PartialEq)]
pub struct Gptq {
    /// The quantized weights dequantized, row-major `[rows, cols]`.
    pub weights: Vec<f32>,
    /// The same weights as lathe-quant structures (scales, zero points, blocks).
    pub quantized: Quantized,
    /// What the sweep did.
    pub report: SweepReport,
}

/// Which weights share parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Sharing {
    /// One group for the whole matrix.
    Tensor,
    /// Groups of `len` consecutive columns of each row (`len = cols` per channel).
    Row { len: usize },
}

struct GptqRule {
    grid: Grid,
    sharing: Sharing,
    /// Whether every parameter is computed before the sweep (tensor, channel, act_order).
    fixed: bool,
    rows: usize,
    cols: usize,
    /// Per group: `[1]` for a tensor, `[rows, cols / len]` row-major otherwise.
    params: Vec<Option<Params>>,
    /// One code per weight, row-major in the original order.
    codes: Vec<i8>,
    scratch: Vec<f32>,
}

impl GptqRule {
    fn groups_per_row(&self) -> usize {
        match self.sharing {
            Sharing::Tensor => 0,
            Sharing::Row { len } => self.cols / len,
        }
    }

    fn param_index(&self, row: usize, col: usize) -> usize {
        match self.sharing {
            Sharing::Tensor => 0,
            Sharing::Row { len } => row * self.groups_per_row() + col / len,
        }
    }

    /// Parameters of every group from the weights at the start of the sweep.
    fn fix_all(&mut self, state: &SweepState<'_>) {
        let mut position = vec![0; self.cols];
        for k in 0..self.cols {
            position[state.original_of(k)] = k;
        }
        match self.sharing {
            Sharing::Tensor => {
                self.scratch.clear();
                for r in 0..self.rows {
                    self.scratch.extend((0..self.cols).map(|c| state.column(position[c])[r] as f32));
                }
                self.params[0] = Some(self.grid.params(&self.scratch));
            }
            Sharing::Row { len } => {
                for r in 0..self.rows {
                    for g in 0..self.cols / len {
                        self.scratch.clear();
                        self.scratch.extend((g * len..(g + 1) * len).map(|c| state.column(position[c])[r] as f32));
                        let index = self.param_index(r, g * len);
                        self.params[index] = Some(self.grid.params(&self.scratch));
                    }
                }
            }
        }
    }
}

impl ColumnRule for GptqRule {
    fn column(&mut self, state: &SweepState<'_>, dst: &mut [f64]) {
        let k = state.position();
        if self.fixed && k == 0 {
            self.fix_all(state);
        }
        let col = state.original_column();
        if let (false, Sharing::Row { len }) = (self.fixed, self.sharing)
            && k.is_multiple_of(len)
        {
            // Without act_order the sweep order is the original order, and the block holds
            // whole groups: columns k..k + len are current.
            for r in 0..self.rows {
                self.scratch.clear();
                self.scratch.extend((k..k + len).map(|j| state.column(j)[r] as f32));
                let index = self.param_index(r, col);
                self.params[index] = Some(self.grid.params(&self.scratch));
            }
        }
        for (r, dst) in dst.iter_mut().enumerate() {
            let params =
                self.params[self.param_index(r, col)].expect("parameters are set before their group's columns");
            let (code, value) = params.quantize(*dst as f32);
            self.codes[r * self.cols + col] = code;
            *dst = f64::from(value);
        }
    }
}

/// GPTQ (Frantar et al. 2022): quantize one column at a time and let the OBS sweep move the
/// rounding error onto the columns not yet quantized.
///
/// Grids are lathe-quant's, rounded one value at a time with the formulas lathe-quant documents
/// (and tests check bit-identical with its quantizers on whole rows): integer schemes with
/// compressed-tensors semantics at every granularity (tensor, channel, groups of N, symmetric or
/// not; round half to even), and the GGML blocks Q4_0, Q4_1 and Q8_0 (groups of 32 columns; the
/// codes come from the unrounded f32 `d`, the values from the stored f16 `d` and `min`). Codes
/// are clamped to the grid: GPTQ's updated weights may leave the range their group's parameters
/// were computed from.
///
/// When the parameters (scale, zero point, GGML `d` and `min`) are computed:
/// - tensor and channel scales: once, before the sweep, from the weights (dead columns zeroed),
///   as the reference does for `groupsize = -1`;
/// - groups and GGML blocks: when the sweep enters the group, from the group's current,
///   already-updated weights, as the reference does. The block of the lazy update is rounded to a
///   whole number of groups (`group * max(1, block / group)`), so every column of a group has
///   received every update when its group is entered. (The reference, with groups smaller than
///   its block, reads the group from a copy that misses the updates made inside the current
///   block; the two agree when the group is at least the block.)
/// - with `act_order`, groups are *static*: every group keeps its contiguous columns in the
///   original order, and all parameters are computed before the sweep from the original weights
///   (AutoGPTQ's `static_groups`). The alternative, groups in the permuted order, needs a `g_idx`
///   per column that neither lathe-quant's `IntMatrix` nor GGML blocks can store; static groups
///   keep the output in the exact structures lathe-quant packs and runs.
///
/// Every output value is a grid point of its group: [`Gptq::quantized`] dequantizes bit for bit
/// to [`Gptq::weights`].
///
/// GPTQ-quantizes the row-major `[rows, cols]` `weights` to `scheme`, given the layer's Hessian
/// (row-major `[cols, cols]`, any positive multiple of `X^T X`, e.g. [`crate::LayerStats::hessian`]).
///
/// `options.block_size` is rounded to a whole number of groups (see above).
///
/// # Errors
/// [`Error::UnsupportedScheme`] for f16, bf16, Q5_0 and Q5_1, [`Error::BlockMisfit`] when `cols`
/// is not a whole number of groups, and everything [`obs_sweep`] returns.
pub fn gptq(
    weights: &[f32],
    rows: usize,
    cols: usize,
    hessian: &[f64],
    scheme: Scheme,
    options: &SweepOptions,
) -> Result<Gptq> {
    let grid = Grid::new(scheme)?;
    check_weights(weights, rows, cols)?;
    check_blocks(scheme, cols)?;
    let sharing = match scheme {
        Scheme::Int(int) => match int.granularity() {
            Granularity::Tensor => Sharing::Tensor,
            Granularity::Channel => Sharing::Row { len: cols },
            Granularity::Group(len) => Sharing::Row { len: len.get() },
        },
        _ => Sharing::Row { len: QK },
    };
    let grouped =
        matches!(scheme, Scheme::Int(int) if matches!(int.granularity(), Granularity::Group(_))) || scheme.is_ggml();
    let fixed = !grouped || options.act_order;
    let mut options = *options;
    if let (true, Sharing::Row { len }) = (grouped, sharing) {
        options.block_size = len * (options.block_size / len).max(1);
    }
    let n_params = match sharing {
        Sharing::Tensor => 1,
        // A channel of an empty row still has its scale.
        Sharing::Row { len } => rows * cols.checked_div(len).unwrap_or(1),
    };
    let mut rule = GptqRule {
        grid,
        sharing,
        fixed,
        rows,
        cols,
        params: vec![None; n_params],
        codes: vec![0; weights.len()],
        scratch: Vec::new(),
    };
    let sweep = obs_sweep(weights, rows, cols, hessian, &options, &mut rule)?;
    let quantized = assemble(&rule, scheme)?;
    Ok(Gptq { weights: sweep.weights, quantized, report: sweep.report })
}

/// The lathe-quant structure of the codes and parameters a sweep chose.
fn assemble(rule: &GptqRule, scheme: Scheme) -> Result<Quantized> {
    // Groups of an empty matrix were never visited: any parameter decodes nothing.
    let params: Vec<Params> = rule.params.iter().map(|p| p.unwrap_or(rule.grid.params(&[]))).collect();
    let nibbles = |start: usize| {
        let codes = &rule.codes[start..start + QK];
        std::array::from_fn(|j| (codes[j] as u8) | ((codes[j + QK / 2] as u8) << 4))
    };
    let blocks = rule.codes.len() / QK;
    Ok(match (rule.grid, scheme) {
        (Grid::Int(int), _) => {
            let (scales, zero_points) = params
                .iter()
                .map(|p| match *p {
                    Params::Int { scale, zero_point, .. } => (scale, zero_point),
                    _ => unreachable!("integer grids make integer parameters"),
                })
                .unzip();
            let zero_points = (!int.is_symmetric()).then_some(zero_points);
            Quantized::Int(IntMatrix::from_parts(rule.rows, rule.cols, int, rule.codes.clone(), scales, zero_points)?)
        }
        (Grid::Q4_0, _) => Quantized::Q4_0(
            (0..blocks)
                .map(|b| match params[b] {
                    Params::Q4_0 { d, .. } => BlockQ4_0 { d: f16::from_f32(d), qs: nibbles(b * QK) },
                    _ => unreachable!("q4_0 grids make q4_0 parameters"),
                })
                .collect(),
        ),
        (Grid::Q4_1, _) => Quantized::Q4_1(
            (0..blocks)
                .map(|b| match params[b] {
                    Params::Q4_1 { d, min, .. } => {
                        BlockQ4_1 { d: f16::from_f32(d), m: f16::from_f32(min), qs: nibbles(b * QK) }
                    }
                    _ => unreachable!("q4_1 grids make q4_1 parameters"),
                })
                .collect(),
        ),
        (Grid::Q8_0, _) => Quantized::Q8_0(
            (0..blocks)
                .map(|b| match params[b] {
                    Params::Q8_0 { d, .. } => {
                        BlockQ8_0 { d: f16::from_f32(d), qs: std::array::from_fn(|j| rule.codes[b * QK + j]) }
                    }
                    _ => unreachable!("q8_0 grids make q8_0 parameters"),
                })
                .collect(),
        ),
    })
}
