//! Integer linear quantization with compressed-tensors semantics.
//!
//! [`IntMatrix::quantize`] computes scales and zero points from min/max exactly as
//! compressed-tensors 0.20.0 does (`calculate_qparams`, then `quantize`), in f32:
//!
//! - `lo = min(min(w), 0)`, `hi = max(max(w), 0)` over each tensor, row or group, so that 0 is
//!   always representable;
//! - symmetric: `scale = max(-lo, hi) / ((qmax - qmin) / 2)` (a divisor of 7.5 for int4 and
//!   127.5 for int8, not 7 and 127), zero point 0;
//! - asymmetric: `scale = (hi - lo) / (qmax - qmin)`, `zero_point = round(clamp(qmin - lo /
//!   scale, qmin, qmax))`, computed with the scale before the next step;
//! - a scale of exactly 0 becomes `f32::EPSILON` (torch's `finfo(float32).eps`);
//! - `q = round(clamp(w / scale + zero_point, qmin, qmax))`, with a true division and rounding
//!   half to even, `qmin..=qmax` being `-8..=7` (int4) or `-128..=127` (int8): the largest
//!   positive weight of a symmetric group lands on `qmax` (7.5 clamps to 7) and the most negative
//!   one on `qmin`, or on `qmin + 1` when `-amax / scale` comes out above -7.5 (-127.5) in f32;
//! - dequantization: `(q - zero_point) * scale` in f32.
//!
//! [`IntMatrix::to_pack_quantized`] lays the result out as the package's `pack-quantized`
//! tensors; the tests check both directions bit for bit against folders the package wrote.
//!
//! ```
//! use lathe_quant::linear::IntMatrix;
//! let weights: Vec<f32> = (0..2 * 64).map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0).collect();
//! let matrix = IntMatrix::quantize(&weights, 2, 64, "int4-g32".parse()?)?;
//! assert_eq!(matrix.scales().len(), 2 * 2);
//! let mut restored = vec![0.0; weights.len()];
//! matrix.dequantize(&mut restored);
//! let packed = matrix.to_pack_quantized();
//! assert_eq!(packed.weight_packed_shape(), [2, 8]);
//! # Ok::<(), lathe_quant::Error>(())
//! ```

use std::sync::OnceLock;

use crate::{Bits, Error, Granularity, IntScheme, Isa, Result};

/// A weight matrix quantized with an [`IntScheme`]: one integer per weight plus scales (and zero
/// points), shared by the whole tensor, a row, or a group of columns of a row.
///
/// Invariants, checked by every constructor: `values` holds `rows * cols` integers in the
/// scheme's range, row-major; `scales` holds one f32 per scale group (1 for a tensor scale,
/// `rows` per channel, `rows * cols / N` for groups of N, row-major); `zero_points` has the
/// shape of `scales` when the scheme is asymmetric and is absent otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct IntMatrix {
    rows: usize,
    cols: usize,
    scheme: IntScheme,
    values: Vec<i8>,
    scales: Vec<f32>,
    zero_points: Option<Vec<i8>>,
}

/// Number of weights and of scale groups, after checking the shape against the scheme.
fn layout(rows: usize, cols: usize, scheme: IntScheme) -> Result<(usize, usize)> {
    let n_weights = rows.checked_mul(cols).ok_or(Error::TooLarge { rows, cols })?;
    let block = scheme.block_size();
    if !cols.is_multiple_of(block) {
        return Err(Error::BlockMisfit { scheme: scheme.to_string(), cols, block });
    }
    let n_scales = match scheme.granularity() {
        Granularity::Tensor => 1,
        Granularity::Channel | Granularity::Group(_) => rows * scheme.groups_per_row(cols),
    };
    Ok((n_weights, n_scales))
}

/// Weights per scale group: the groups are contiguous runs of the row-major matrix, in the
/// order of the scales. Zero when there are no weights.
fn group_len(n_weights: usize, n_scales: usize) -> usize {
    n_weights.checked_div(n_scales).unwrap_or(0)
}

/// `(qmin, qmax)` as f32.
fn range_f32(bits: Bits) -> (f32, f32) {
    (f32::from(bits.qmin()), f32::from(bits.qmax()))
}

/// compressed-tensors' `calculate_qparams` for one group: `(scale, zero_point)`.
fn qparams(group: &[f32], bits: Bits, symmetric: bool) -> (f32, i8) {
    let (lo, hi) = group.iter().fold((0.0f32, 0.0f32), |(lo, hi), &w| (lo.min(w), hi.max(w)));
    let (qmin, qmax) = range_f32(bits);
    let range = qmax - qmin;
    let (scale, zero_point) = if symmetric {
        (lo.abs().max(hi.abs()) / (range / 2.0), 0)
    } else {
        let scale = (hi - lo) / range;
        // An all-zero group gives 0 / 0: NaN survives the clamp and rounding, and the saturating
        // cast turns it into 0. Any zero point decodes such a group to zeros.
        let zero_point = (qmin - lo / scale).clamp(qmin, qmax).round_ties_even() as i8;
        (scale, zero_point)
    };
    (if scale == 0.0 { f32::EPSILON } else { scale }, zero_point)
}

/// compressed-tensors' `_quantize` for one weight.
fn quantize_one(w: f32, scale: f32, zero_point: i8, qmin: f32, qmax: f32) -> i8 {
    (w / scale + f32::from(zero_point)).clamp(qmin, qmax).round_ties_even() as i8
}

fn check_range(what: &'static str, values: &[i8], bits: Bits) -> Result<()> {
    let (min, max) = (bits.qmin(), bits.qmax());
    match values.iter().position(|value| !(min..=max).contains(value)) {
        None => Ok(()),
        Some(index) => {
            Err(Error::OutOfRange { what, index, value: values[index].into(), min: min.into(), max: max.into() })
        }
    }
}

fn check_len(what: &'static str, expected: usize, found: usize) -> Result<()> {
    if expected == found { Ok(()) } else { Err(Error::LengthMismatch { what, expected, found }) }
}

impl IntMatrix {
    /// Quantizes the row-major `rows x cols` matrix `weights` (PyTorch's `[out, in]` layout for a
    /// linear layer) with compressed-tensors' min/max semantics (see the [module](self) docs).
    ///
    /// A group whose range exceeds `f32::MAX` gets an infinite scale, as in compressed-tensors.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `weights.len() != rows * cols`, [`Error::TooLarge`] when that
    /// product overflows, [`Error::BlockMisfit`] when `cols` is not a multiple of the group size,
    /// and [`Error::NonFinite`] naming the first NaN or infinite weight.
    pub fn quantize(weights: &[f32], rows: usize, cols: usize, scheme: IntScheme) -> Result<IntMatrix> {
        let (n_weights, n_scales) = layout(rows, cols, scheme)?;
        if weights.len() != n_weights {
            return Err(Error::ShapeMismatch { rows, cols, expected: n_weights, found: weights.len() });
        }
        if let Some(index) = weights.iter().position(|w| !w.is_finite()) {
            return Err(Error::NonFinite { row: index / cols, col: index % cols, value: weights[index] });
        }
        let bits = scheme.bits();
        let (qmin, qmax) = range_f32(bits);
        let group_len = group_len(n_weights, n_scales);
        let mut values = vec![0i8; n_weights];
        let mut scales = Vec::with_capacity(n_scales);
        let mut zero_points = Vec::with_capacity(n_scales);
        for group_idx in 0..n_scales {
            let span = group_idx * group_len..(group_idx + 1) * group_len;
            let (scale, zero_point) = qparams(&weights[span.clone()], bits, scheme.is_symmetric());
            for (dst, &w) in values[span.clone()].iter_mut().zip(&weights[span]) {
                *dst = quantize_one(w, scale, zero_point, qmin, qmax);
            }
            scales.push(scale);
            zero_points.push(zero_point);
        }
        let zero_points = (!scheme.is_symmetric()).then_some(zero_points);
        Ok(IntMatrix { rows, cols, scheme, values, scales, zero_points })
    }

    /// Assembles a matrix from its parts, as read from a file.
    ///
    /// # Errors
    /// [`Error::TooLarge`] / [`Error::BlockMisfit`] for a shape the scheme cannot hold,
    /// [`Error::LengthMismatch`] when a part has the wrong length (zero points must be present
    /// exactly when the scheme is asymmetric), and [`Error::OutOfRange`] for an int4 value or
    /// zero point outside `-8..=7`.
    pub fn from_parts(
        rows: usize,
        cols: usize,
        scheme: IntScheme,
        values: Vec<i8>,
        scales: Vec<f32>,
        zero_points: Option<Vec<i8>>,
    ) -> Result<IntMatrix> {
        let (n_weights, n_scales) = layout(rows, cols, scheme)?;
        check_len("values", n_weights, values.len())?;
        check_len("scales", n_scales, scales.len())?;
        let zero_points = zero_points.unwrap_or_default();
        check_len("zero points", if scheme.is_symmetric() { 0 } else { n_scales }, zero_points.len())?;
        check_range("weight", &values, scheme.bits())?;
        check_range("zero point", &zero_points, scheme.bits())?;
        let zero_points = (!scheme.is_symmetric()).then_some(zero_points);
        Ok(IntMatrix { rows, cols, scheme, values, scales, zero_points })
    }

    /// Number of rows (output channels).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The scheme the matrix was quantized with.
    pub fn scheme(&self) -> IntScheme {
        self.scheme
    }

    /// One integer per weight, row-major.
    pub fn values(&self) -> &[i8] {
        &self.values
    }

    /// One scale per group, row-major: `[1]`, `[rows]` or `[rows, cols / N]`.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// Zero points in the layout of [`IntMatrix::scales`], for asymmetric schemes.
    pub fn zero_points(&self) -> Option<&[i8]> {
        self.zero_points.as_deref()
    }

    /// Weights per scale group within a row: the row length for tensor and channel scales, N
    /// for groups of N.
    pub fn group_len(&self) -> usize {
        match self.scheme.granularity() {
            Granularity::Tensor | Granularity::Channel => self.cols,
            Granularity::Group(n) => n.get(),
        }
    }

    /// Index in [`scales`](Self::scales) (and the zero points) of the group holding column
    /// `col` of `row`.
    pub fn group_index(&self, row: usize, col: usize) -> usize {
        match self.scheme.granularity() {
            Granularity::Tensor => 0,
            Granularity::Channel => row,
            Granularity::Group(n) => row * (self.cols / n.get()) + col / n.get(),
        }
    }

    /// The scale and zero point (0 when symmetric) of group `index`.
    pub fn group_params(&self, index: usize) -> (f32, i8) {
        (self.scales[index], self.zero_points.as_ref().map_or(0, |zero_points| zero_points[index]))
    }

    /// Writes row `row` dequantized into `dst`.
    ///
    /// # Panics
    /// If `row >= rows` or `dst.len() != cols`.
    pub fn dequantize_row(&self, row: usize, dst: &mut [f32]) {
        assert!(row < self.rows, "row {row} out of {} rows", self.rows);
        assert_eq!(dst.len(), self.cols, "dequantize_row: destination length differs from cols");
        let values = &self.values[row * self.cols..(row + 1) * self.cols];
        let group_len = self.group_len();
        for (g, (dst, values)) in dst.chunks_mut(group_len).zip(values.chunks(group_len)).enumerate() {
            let (scale, zero_point) = self.group_params(self.group_index(row, g * group_len));
            for (dst, &q) in dst.iter_mut().zip(values) {
                *dst = (f32::from(q) - f32::from(zero_point)) * scale;
            }
        }
    }

    /// Writes `(q - zero_point) * scale` for every weight into `dst`, row-major.
    ///
    /// # Panics
    /// If `dst.len() != rows * cols`.
    pub fn dequantize(&self, dst: &mut [f32]) {
        assert_eq!(dst.len(), self.values.len(), "dequantize: destination length differs from rows x cols");
        let group_len = group_len(self.values.len(), self.scales.len());
        if group_len == 0 {
            return;
        }
        let groups = dst.chunks_exact_mut(group_len).zip(self.values.chunks_exact(group_len));
        for (group_idx, (dst, values)) in groups.enumerate() {
            let scale = self.scales[group_idx];
            let zero_point = self.zero_points.as_ref().map_or(0.0, |zero_points| f32::from(zero_points[group_idx]));
            for (dst, &q) in dst.iter_mut().zip(values) {
                *dst = (f32::from(q) - zero_point) * scale;
            }
        }
    }

    /// The tensors a compressed-tensors `pack-quantized` checkpoint stores for this weight.
    pub fn to_pack_quantized(&self) -> PackQuantized {
        let bits = self.scheme.bits();
        let weight_zero_point = self.zero_points.as_ref().map(|zero_points| match self.scheme.granularity() {
            Granularity::Tensor => ZeroPointTensor::Int8(zero_points.clone()),
            Granularity::Channel | Granularity::Group(_) => {
                let groups = self.scheme.groups_per_row(self.cols);
                ZeroPointTensor::Packed(pack_compressed_tensors_dim0(zero_points, self.rows, groups, bits))
            }
        });
        PackQuantized {
            rows: self.rows,
            cols: self.cols,
            scheme: self.scheme,
            weight_packed: pack_compressed_tensors(&self.values, self.rows, self.cols, bits),
            weight_scale: self.scales.clone(),
            weight_zero_point,
        }
    }

    /// Unpacks `pack-quantized` tensors (as a reader found them) into a matrix.
    ///
    /// # Errors
    /// As [`IntMatrix::from_parts`], and [`Error::LengthMismatch`] when a tensor's length does
    /// not match the shape (see [`PackQuantized`]'s shape methods) or the zero point has the
    /// wrong form for the granularity.
    pub fn from_pack_quantized(tensors: &PackQuantized) -> Result<IntMatrix> {
        let PackQuantized { rows, cols, scheme, .. } = *tensors;
        let (_, n_scales) = layout(rows, cols, scheme)?;
        let bits = scheme.bits();
        let values = unpack_compressed_tensors(&tensors.weight_packed, rows, cols, bits)?;
        let zero_points = match (&tensors.weight_zero_point, scheme.granularity()) {
            (None, _) => None,
            (Some(ZeroPointTensor::Int8(zero_points)), Granularity::Tensor) => Some(zero_points.clone()),
            (Some(ZeroPointTensor::Packed(packed)), Granularity::Channel | Granularity::Group(_)) => {
                Some(unpack_compressed_tensors_dim0(packed, rows, scheme.groups_per_row(cols), bits)?)
            }
            (Some(ZeroPointTensor::Int8(zero_points)), _) => {
                return Err(Error::LengthMismatch {
                    what: "packed zero points",
                    expected: packed_len(n_scales / rows.max(1), rows, bits),
                    found: zero_points.len(),
                });
            }
            (Some(ZeroPointTensor::Packed(packed)), Granularity::Tensor) => {
                return Err(Error::LengthMismatch { what: "int8 zero point", expected: 1, found: packed.len() });
            }
        };
        IntMatrix::from_parts(rows, cols, scheme, values, tensors.weight_scale.clone(), zero_points)
    }
}

/// `ceil(len / (32 / bits))`: int32 words holding `len` values of `bits` bits, times `other`.
fn packed_len(other: usize, len: usize, bits: Bits) -> usize {
    other * len.div_ceil((32 / bits.bits()) as usize)
}

/// The tensors compressed-tensors' `pack-quantized` format stores for one linear weight
/// `<prefix>.weight`: `<prefix>.weight_packed`, `.weight_scale`, `.weight_shape` and, for
/// asymmetric schemes, `.weight_zero_point`.
#[derive(Debug, Clone, PartialEq)]
pub struct PackQuantized {
    /// Rows of the weight (`weight_shape[0]`).
    pub rows: usize,
    /// Columns of the weight (`weight_shape[1]`).
    pub cols: usize,
    /// The scheme (from the checkpoint's `quantization_config`).
    pub scheme: IntScheme,
    /// `weight_packed`: int32, see [`PackQuantized::weight_packed_shape`] and
    /// [`pack_compressed_tensors`].
    pub weight_packed: Vec<i32>,
    /// `weight_scale`: f32, see [`PackQuantized::weight_scale_shape`].
    pub weight_scale: Vec<f32>,
    /// `weight_zero_point`, stored only for asymmetric schemes.
    pub weight_zero_point: Option<ZeroPointTensor>,
}

/// The stored form of `weight_zero_point`.
#[derive(Debug, Clone, PartialEq)]
pub enum ZeroPointTensor {
    /// Per channel or group: int32 packed along dim 0 (see [`pack_compressed_tensors_dim0`]),
    /// shape `[ceil(rows * bits / 32), groups]`.
    Packed(Vec<i32>),
    /// Per tensor: int8 `[1]`, unpacked (the package packs only channel and group zero points).
    Int8(Vec<i8>),
}

impl PackQuantized {
    /// Shape of `weight_packed`: `[rows, ceil(cols * bits / 32)]`.
    pub fn weight_packed_shape(&self) -> [usize; 2] {
        [self.rows, packed_len(1, self.cols, self.scheme.bits())]
    }

    /// Shape of `weight_scale`: `[1]` per tensor, `[rows, 1]` per channel, `[rows, cols / N]`
    /// per group of N.
    pub fn weight_scale_shape(&self) -> Vec<usize> {
        match self.scheme.granularity() {
            Granularity::Tensor => vec![1],
            Granularity::Channel | Granularity::Group(_) => vec![self.rows, self.scheme.groups_per_row(self.cols)],
        }
    }

    /// Shape of `weight_zero_point`: `[1]` per tensor, `[ceil(rows * bits / 32), groups]`
    /// otherwise; `None` for symmetric schemes, which store none.
    pub fn weight_zero_point_shape(&self) -> Option<Vec<usize>> {
        if self.scheme.is_symmetric() {
            return None;
        }
        Some(match self.scheme.granularity() {
            Granularity::Tensor => vec![1],
            Granularity::Channel | Granularity::Group(_) => {
                vec![packed_len(1, self.rows, self.scheme.bits()), self.scheme.groups_per_row(self.cols)]
            }
        })
    }

    /// `weight_shape`: int64 `[rows, cols]`.
    pub fn weight_shape(&self) -> [i64; 2] {
        [self.rows as i64, self.cols as i64]
    }
}

fn offset(bits: Bits) -> i32 {
    1 << (bits.bits() - 1)
}

fn check_pack_input(values: &[i8], rows: usize, cols: usize, bits: Bits) {
    assert_eq!(Some(values.len()), rows.checked_mul(cols), "pack: values length differs from rows x cols");
    if let Err(error) = check_range("value", values, bits) {
        panic!("pack: {error}");
    }
}

/// Packs a row-major `rows x cols` matrix of `bits`-bit integers as compressed-tensors'
/// `pack_to_int32` does along dim 1: `[rows, ceil(cols * bits / 32)]` int32, each value offset
/// by `2^(bits - 1)` to unsigned, element `i` of a word at bit `i * bits` (little end first), the
/// last word of a row padded with zero bits.
///
/// # Panics
/// If `values.len() != rows * cols` or a value is outside the range of `bits`.
pub fn pack_compressed_tensors(values: &[i8], rows: usize, cols: usize, bits: Bits) -> Vec<i32> {
    check_pack_input(values, rows, cols, bits);
    let per_word = (32 / bits.bits()) as usize;
    let words_per_row = cols.div_ceil(per_word);
    let mut packed = vec![0i32; rows * words_per_row];
    if cols == 0 {
        return packed;
    }
    for (dst, row) in packed.chunks_exact_mut(words_per_row).zip(values.chunks_exact(cols)) {
        for (word, chunk) in dst.iter_mut().zip(row.chunks(per_word)) {
            *word = chunk.iter().enumerate().fold(0u32, |acc, (i, &value)| {
                acc | ((i32::from(value) + offset(bits)) as u32) << (i as u32 * bits.bits())
            }) as i32;
        }
    }
    packed
}

/// Inverse of [`pack_compressed_tensors`]: unpacks `[rows, ceil(cols * bits / 32)]` int32 into
/// `rows * cols` integers, ignoring padding bits (as compressed-tensors does).
///
/// # Errors
/// [`Error::LengthMismatch`] when `packed` has the wrong length, [`Error::TooLarge`] when the
/// shape overflows.
pub fn unpack_compressed_tensors(packed: &[i32], rows: usize, cols: usize, bits: Bits) -> Result<Vec<i8>> {
    let n_values = rows.checked_mul(cols).ok_or(Error::TooLarge { rows, cols })?;
    let per_word = (32 / bits.bits()) as usize;
    let words_per_row = cols.div_ceil(per_word);
    check_len("packed weights", rows * words_per_row, packed.len())?;
    let mask = (1u32 << bits.bits()) - 1;
    let mut values = vec![0i8; n_values];
    if cols == 0 {
        return Ok(values);
    }
    for (dst, words) in values.chunks_exact_mut(cols).zip(packed.chunks_exact(words_per_row)) {
        for (chunk, &word) in dst.chunks_mut(per_word).zip(words) {
            for (i, value) in chunk.iter_mut().enumerate() {
                let unsigned = (word as u32 >> (i as u32 * bits.bits())) & mask;
                *value = (unsigned as i32 - offset(bits)) as i8;
            }
        }
    }
    Ok(values)
}

/// Packs a row-major `rows x cols` matrix along dim 0 (compressed-tensors' `pack_to_int32` with
/// `packed_dim=0`, used for zero points): `[ceil(rows * bits / 32), cols]` int32, row `r` of
/// column `c` in word `(r / (32 / bits), c)` at bit `(r % (32 / bits)) * bits`, offset as in
/// [`pack_compressed_tensors`].
///
/// # Panics
/// If `values.len() != rows * cols` or a value is outside the range of `bits`.
pub fn pack_compressed_tensors_dim0(values: &[i8], rows: usize, cols: usize, bits: Bits) -> Vec<i32> {
    check_pack_input(values, rows, cols, bits);
    let per_word = (32 / bits.bits()) as usize;
    let mut packed = vec![0u32; rows.div_ceil(per_word) * cols];
    for (row, values) in values.chunks_exact(cols.max(1)).enumerate().take(rows) {
        let shift = (row % per_word) as u32 * bits.bits();
        let dst = &mut packed[(row / per_word) * cols..][..cols];
        for (word, &value) in dst.iter_mut().zip(values) {
            *word |= ((i32::from(value) + offset(bits)) as u32) << shift;
        }
    }
    packed.into_iter().map(|word| word as i32).collect()
}

/// Inverse of [`pack_compressed_tensors_dim0`].
///
/// # Errors
/// [`Error::LengthMismatch`] when `packed` has the wrong length, [`Error::TooLarge`] when the
/// shape overflows.
pub fn unpack_compressed_tensors_dim0(packed: &[i32], rows: usize, cols: usize, bits: Bits) -> Result<Vec<i8>> {
    let n_values = rows.checked_mul(cols).ok_or(Error::TooLarge { rows, cols })?;
    let per_word = (32 / bits.bits()) as usize;
    check_len("packed zero points", rows.div_ceil(per_word) * cols, packed.len())?;
    let mask = (1u32 << bits.bits()) - 1;
    let mut values = vec![0i8; n_values];
    for (index, value) in values.iter_mut().enumerate() {
        let (row, col) = (index / cols, index % cols);
        let word = packed[(row / per_word) * cols + col] as u32;
        let unsigned = (word >> ((row % per_word) as u32 * bits.bits())) & mask;
        *value = (unsigned as i32 - offset(bits)) as i8;
    }
    Ok(values)
}

/// Packs int4 values two per byte for lathe's kernels: value `2j` in the low nibble of byte `j`,
/// value `2j + 1` in the high nibble, each offset by 8 to `0..=15` (as GGML's Q4_0 stores them).
/// An odd count leaves the last high nibble 0.
///
/// # Panics
/// If a value is outside `-8..=7`.
pub fn pack_int4(values: &[i8]) -> Vec<u8> {
    if let Err(error) = check_range("int4 value", values, Bits::Int4) {
        panic!("pack_int4: {error}");
    }
    let nibble = |value: i8| (value + 8) as u8;
    values.chunks(2).map(|pair| nibble(pair[0]) | pair.get(1).map_or(0, |&high| nibble(high) << 4)).collect()
}

/// Inverse of [`pack_int4`]: fills `dst` from `packed`, ignoring the high nibble of the last
/// byte when `dst.len()` is odd.
///
/// # Panics
/// If `packed.len() != dst.len().div_ceil(2)`.
pub fn unpack_int4(packed: &[u8], dst: &mut [i8]) {
    assert_eq!(packed.len(), dst.len().div_ceil(2), "unpack_int4: packed length differs from ceil(dst / 2)");
    for (pair, &byte) in dst.chunks_mut(2).zip(packed) {
        pair[0] = (byte & 0x0F) as i8 - 8;
        if let Some(high) = pair.get_mut(1) {
            *high = (byte >> 4) as i8 - 8;
        }
    }
}

/// Quantizes one row of activations (one token) to int8, symmetric and dynamic: `scale = amax /
/// 127` (at least the smallest subnormal when amax > 0), `dst[i] = round_half_even(x[i] * (1 /
/// scale))`, the reciprocal rounded to f32 once a row as fbgemm does (`x[i] / scale` for the
/// subnormal scales whose reciprocal overflows), clamped to `-127..=127` (never -128, so the
/// values suit `maddubs`-style kernels). Returns the scale; `x[i] ~ dst[i] * scale`.
///
/// A row of zeros (or an empty row) returns scale 0 with all values 0. NaN inputs become 0 and
/// do not count in `amax`; an infinite input makes the scale infinite (every finite value then
/// becomes 0, and so does the infinity, as `inf * 0` is NaN).
///
/// Runs on the fastest kernel this CPU has, chosen once (see [`crate::isa::active`]); every
/// kernel gives the same bits (see [`quantize_activations_i8_kernel`]).
///
/// # Panics
/// If `x.len() != dst.len()`.
pub fn quantize_activations_i8(x: &[f32], dst: &mut [i8]) -> f32 {
    static DISPATCHED: OnceLock<ActivationQuantizer> = OnceLock::new();
    let kernel = DISPATCHED
        .get_or_init(|| quantize_activations_i8_kernel(crate::isa::active()).unwrap_or(quantize_activations_i8_scalar));
    kernel(x, dst)
}

/// The signature of [`quantize_activations_i8`] and of its per-instruction-set kernels.
pub type ActivationQuantizer = fn(&[f32], &mut [i8]) -> f32;

/// The [`quantize_activations_i8`] kernel of `isa`, or `None` when this CPU cannot run it. All are
/// bit-identical with the scalar one, NaN and infinities included, and panic as it does.
pub fn quantize_activations_i8_kernel(isa: Isa) -> Option<ActivationQuantizer> {
    match isa {
        Isa::Scalar => Some(quantize_activations_i8_scalar),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => crate::ggml::avx2_activation_quantizer(),
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 => None,
    }
}

/// [`quantize_activations_i8`] of `x` scaled per channel by `input_scale` (each `x[i] *
/// input_scale[i]` rounded to f32 first, as a separate multiplication would), written widened to
/// i16: the same scale and the same values, in one pass over `x` instead of three. This is what
/// the int8 GEMM feeds its `madd` kernel.
///
/// Runs on the fastest kernel this CPU has, chosen once; every kernel gives the same bits (see
/// [`quantize_activations_i16_kernel`]).
///
/// # Panics
/// If `x.len() != dst.len()`, or `input_scale` is given with another length.
pub fn quantize_activations_i16(x: &[f32], input_scale: Option<&[f32]>, dst: &mut [i16]) -> f32 {
    static DISPATCHED: OnceLock<WideActivationQuantizer> = OnceLock::new();
    let kernel = DISPATCHED.get_or_init(|| {
        quantize_activations_i16_kernel(crate::isa::active()).unwrap_or(quantize_activations_i16_scalar)
    });
    kernel(x, input_scale, dst)
}

/// The signature of [`quantize_activations_i16`] and of its per-instruction-set kernels.
pub type WideActivationQuantizer = fn(&[f32], Option<&[f32]>, &mut [i16]) -> f32;

/// The [`quantize_activations_i16`] kernel of `isa`, or `None` when this CPU cannot run it. All
/// are bit-identical with the scalar one, NaN and infinities included, and panic as it does.
pub fn quantize_activations_i16_kernel(isa: Isa) -> Option<WideActivationQuantizer> {
    match isa {
        Isa::Scalar => Some(quantize_activations_i16_scalar),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => crate::ggml::avx2_wide_activation_quantizer(),
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 => None,
    }
}

/// [`quantize_activations_i16`] with 7 bits: `scale = amax / 63` and values in `-63..=63`,
/// written as i8, otherwise the same steps (per-channel input scale first, rounding, NaN and
/// infinities). These are the activations of [`crate::dot::gemm_u8_i8_f32`], which is exact for
/// them ([`ActivationBits::Seven`]).
///
/// Runs on the fastest kernel this CPU has, chosen once; every kernel gives the same bits (see
/// [`quantize_activations_i7_kernel`]).
///
/// # Panics
/// If `x.len() != dst.len()`, or `input_scale` is given with another length.
pub fn quantize_activations_i7(x: &[f32], input_scale: Option<&[f32]>, dst: &mut [i8]) -> f32 {
    static DISPATCHED: OnceLock<SevenBitActivationQuantizer> = OnceLock::new();
    let kernel = DISPATCHED
        .get_or_init(|| quantize_activations_i7_kernel(crate::isa::active()).unwrap_or(quantize_activations_i7_scalar));
    kernel(x, input_scale, dst)
}

/// The signature of [`quantize_activations_i7`] and of its per-instruction-set kernels.
pub type SevenBitActivationQuantizer = fn(&[f32], Option<&[f32]>, &mut [i8]) -> f32;

/// The [`quantize_activations_i7`] kernel of `isa`, or `None` when this CPU cannot run it. All
/// are bit-identical with the scalar one, NaN and infinities included, and panic as it does.
pub fn quantize_activations_i7_kernel(isa: Isa) -> Option<SevenBitActivationQuantizer> {
    match isa {
        Isa::Scalar => Some(quantize_activations_i7_scalar),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => crate::ggml::avx2_seven_bit_activation_quantizer(),
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 => None,
    }
}

/// How finely the integer schemes' products quantize the activations on the fly (per token,
/// symmetric, dynamic), which picks the GEMM kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ActivationBits {
    /// int8, `-127..=127` ([`quantize_activations_i16`]): the `madd` kernel
    /// ([`crate::dot::gemm_i8_i16_f32`]), 16 products an instruction.
    #[default]
    Eight,
    /// 7 bits, `-63..=63` ([`quantize_activations_i7`]): the `maddubs` kernel
    /// ([`crate::dot::gemm_u8_i8_f32`]), 32 products an instruction and exact only for
    /// activations this small (on AVX2 without VNNI, 1.3-1.5x the int8 kernel's throughput),
    /// at twice the activations' rounding error.
    Seven,
}

impl ActivationBits {
    /// 8 or 7.
    pub fn bits(self) -> u32 {
        match self {
            ActivationBits::Eight => 8,
            ActivationBits::Seven => 7,
        }
    }

    /// The activations' largest magnitude: 127 or 63.
    pub fn qmax(self) -> i8 {
        match self {
            ActivationBits::Eight => 127,
            ActivationBits::Seven => 63,
        }
    }

    /// `Eight` for 8, `Seven` for 7.
    pub fn from_bits(bits: u32) -> Option<ActivationBits> {
        match bits {
            8 => Some(ActivationBits::Eight),
            7 => Some(ActivationBits::Seven),
            _ => None,
        }
    }
}

/// The element types the fused AVX2 activation quantizers write: i16 (widened for `madd`) and i8.
#[cfg(target_arch = "x86_64")]
pub(crate) trait ActivationValue: Copy + From<i8> {
    /// Stores sixteen i16 lanes, each within `-127..=127`, as sixteen values from `dst`.
    ///
    /// # Safety
    /// `dst` must be valid for sixteen writes (AVX2 must be available).
    unsafe fn store_16(dst: *mut Self, values: std::arch::x86_64::__m256i);
}

/// Checks the lengths of a [`quantize_activations_i16`] or [`quantize_activations_i7`] call, the
/// same in every kernel.
pub(crate) fn check_wide_lengths(x: &[f32], input_scale: Option<&[f32]>, dst_len: usize) {
    assert_eq!(x.len(), dst_len, "quantize_activations: source and destination lengths differ");
    if let Some(input_scale) = input_scale {
        assert_eq!(input_scale.len(), x.len(), "quantize_activations: input scale and source lengths differ");
    }
}

/// The portable reference of [`quantize_activations_i16`].
fn quantize_activations_i16_scalar(x: &[f32], input_scale: Option<&[f32]>, dst: &mut [i16]) -> f32 {
    quantize_scaled_scalar(x, input_scale, 127, dst)
}

/// The portable reference of [`quantize_activations_i7`].
fn quantize_activations_i7_scalar(x: &[f32], input_scale: Option<&[f32]>, dst: &mut [i8]) -> f32 {
    quantize_scaled_scalar(x, input_scale, 63, dst)
}

/// `x` scaled per channel, quantized to `-qmax..=qmax` with `scale = amax / qmax`.
fn quantize_scaled_scalar<V: Copy + From<i8>>(x: &[f32], input_scale: Option<&[f32]>, qmax: i8, dst: &mut [V]) -> f32 {
    check_wide_lengths(x, input_scale, dst.len());
    let value = |i: usize| input_scale.map_or(x[i], |input_scale| x[i] * input_scale[i]);
    let amax = (0..x.len()).fold(0.0f32, |amax, i| amax.max(value(i).abs()));
    let qmax = f32::from(qmax);
    let scale = activation_scale(amax, qmax);
    if scale == 0.0 {
        dst.fill(V::from(0));
        return 0.0;
    }
    let factor = activation_factor(scale);
    for (i, dst) in dst.iter_mut().enumerate() {
        *dst = V::from(activation_quotient(value(i), factor).round_ties_even().clamp(-qmax, qmax) as i8);
    }
    scale
}

/// What a row's values are multiplied by, or divided by, before rounding: `(1 / scale, true)`
/// (a multiplication is several times cheaper than a division), or `(scale, false)` when
/// `1 / scale` overflows (subnormal scales below 2^-128), shared by every kernel.
pub(crate) fn activation_factor(scale: f32) -> (f32, bool) {
    let inverse = 1.0 / scale;
    if inverse.is_finite() { (inverse, true) } else { (scale, false) }
}

/// `value` in units of its row's scale, from [`activation_factor`].
pub(crate) fn activation_quotient(value: f32, (factor, multiply): (f32, bool)) -> f32 {
    if multiply { value * factor } else { value / factor }
}

/// The scale of a row whose largest magnitude (NaN skipped) is `amax`, quantized to
/// `-qmax..=qmax`, shared by every kernel.
pub(crate) fn activation_scale(amax: f32, qmax: f32) -> f32 {
    // A subnormal amax can underflow to a zero scale: keep the smallest positive one instead, so
    // tiny rows still round to their nearest multiple.
    if amax > 0.0 { (amax / qmax).max(f32::from_bits(1)) } else { 0.0 }
}

/// The portable reference of [`quantize_activations_i8`], which the SIMD kernels are tested
/// against.
fn quantize_activations_i8_scalar(x: &[f32], dst: &mut [i8]) -> f32 {
    assert_eq!(x.len(), dst.len(), "quantize_activations_i8: source and destination lengths differ");
    let amax = x.iter().fold(0.0f32, |amax, value| amax.max(value.abs()));
    let scale = activation_scale(amax, 127.0);
    if scale == 0.0 {
        dst.fill(0);
        return 0.0;
    }
    let factor = activation_factor(scale);
    for (dst, &value) in dst.iter_mut().zip(x) {
        *dst = activation_quotient(value, factor).round_ties_even().clamp(-127.0, 127.0) as i8;
    }
    scale
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Scheme;
    use proptest::prelude::*;

    fn scheme(text: &str) -> IntScheme {
        text.parse().unwrap()
    }

    #[test]
    fn symmetric_divides_by_half_the_range_and_reaches_both_ends() {
        let matrix = IntMatrix::quantize(&[-7.5, 3.75, 1.875, 7.5], 1, 4, scheme("int4-channel")).unwrap();
        assert_eq!(matrix.scales(), &[1.0]);
        // -7.5 rounds (half to even) to -8; 7.5 clamps to 7; 3.75 and 1.875 round to nearest.
        assert_eq!(matrix.values(), &[-8, 4, 2, 7]);
        // In f32, -amax / scale need not be exactly -7.5: here it is -7.4999995, which rounds
        // to -7 (compressed-tensors computes the same).
        let matrix = IntMatrix::quantize(&[-1.0, 0.5], 1, 2, scheme("int4-channel")).unwrap();
        assert_eq!(matrix.scales(), &[1.0 / 7.5]);
        assert_eq!(matrix.values(), &[-7, 4]);
        assert_eq!(matrix.zero_points(), None);
    }

    #[test]
    fn rounds_half_to_even() {
        // amax 127.5 gives scale 1 exactly, so x / scale is x.
        let weights = [127.5, 2.5, -3.5, 0.5, -0.5, 1.5, -127.5, 126.5];
        let matrix = IntMatrix::quantize(&weights, 1, 8, scheme("int8-channel")).unwrap();
        assert_eq!(matrix.scales(), &[1.0]);
        assert_eq!(matrix.values(), &[127, 2, -4, 0, 0, 2, -128, 126]);
    }

    #[test]
    fn asymmetric_zero_point_and_range_include_zero() {
        // All positive: lo is clamped to 0, so the zero point is qmin and 0 maps to -8.
        let matrix = IntMatrix::quantize(&[1.0, 2.0, 3.0], 1, 3, scheme("int4-channel-asym")).unwrap();
        assert_eq!(matrix.scales(), &[3.0 / 15.0]);
        assert_eq!(matrix.zero_points(), Some(&[-8][..]));
        assert_eq!(matrix.values(), &[-3, 2, 7]);
        // Groups of two: [-4, 2] has scale 6/15 and zero point round(-8 + 10) = 2.
        let matrix = IntMatrix::quantize(&[-4.0, 2.0, 0.0, 0.0], 1, 4, scheme("int4-g2-asym")).unwrap();
        assert_eq!(matrix.scales(), &[6.0 / 15.0, f32::EPSILON]);
        assert_eq!(matrix.zero_points(), Some(&[2, 0][..]));
        assert_eq!(matrix.values(), &[-8, 7, 0, 0]);
        let mut restored = [1.0; 4];
        matrix.dequantize(&mut restored);
        assert_eq!(restored[2..], [0.0, 0.0]);
    }

    #[test]
    fn zero_groups_get_epsilon_scales() {
        for text in ["int8-tensor", "int8-tensor-asym", "int4-channel", "int4-g4-asym"] {
            let matrix = IntMatrix::quantize(&[0.0, -0.0, 0.0, 0.0], 1, 4, scheme(text)).unwrap();
            assert!(matrix.scales().iter().all(|&scale| scale == f32::EPSILON), "{text}");
            assert_eq!(matrix.values(), &[0; 4], "{text}");
        }
    }

    #[test]
    fn tensor_scale_spans_every_row() {
        let matrix = IntMatrix::quantize(&[1.0, -255.0, 0.5, 3.0], 2, 2, scheme("int8-tensor")).unwrap();
        assert_eq!(matrix.scales(), &[2.0]);
        assert_eq!(matrix.values(), &[0, -128, 0, 2]);
    }

    #[test]
    fn quantize_rejects_bad_input() {
        let int4 = scheme("int4-g32");
        assert_eq!(
            IntMatrix::quantize(&[0.0; 63], 2, 32, int4),
            Err(Error::ShapeMismatch { rows: 2, cols: 32, expected: 64, found: 63 })
        );
        assert_eq!(
            IntMatrix::quantize(&[0.0; 48], 1, 48, int4),
            Err(Error::BlockMisfit { scheme: "int4-g32".into(), cols: 48, block: 32 })
        );
        let mut weights = vec![0.5; 64];
        weights[32 + 5] = f32::NEG_INFINITY;
        weights[40] = f32::NAN;
        assert_eq!(
            IntMatrix::quantize(&weights, 2, 32, int4),
            Err(Error::NonFinite { row: 1, col: 5, value: f32::NEG_INFINITY })
        );
        assert_eq!(IntMatrix::quantize(&[], usize::MAX, 2, int4), Err(Error::TooLarge { rows: usize::MAX, cols: 2 }));
    }

    #[test]
    fn empty_matrices_work() {
        for text in ["int8-tensor", "int8-channel-asym", "int4-g8"] {
            for (rows, cols) in [(0, 0), (0, 8), (3, 0)] {
                let matrix = IntMatrix::quantize(&[], rows, cols, scheme(text)).unwrap();
                matrix.dequantize(&mut []);
                let packed = matrix.to_pack_quantized();
                assert_eq!(IntMatrix::from_pack_quantized(&packed).unwrap(), matrix, "{text} {rows}x{cols}");
            }
        }
    }

    #[test]
    fn from_parts_checks_every_part() {
        let int4 = scheme("int4-g2-asym");
        let ok = |values: Vec<i8>, scales: Vec<f32>, zero_points| {
            IntMatrix::from_parts(1, 4, int4, values, scales, zero_points)
        };
        assert!(ok(vec![0; 4], vec![1.0; 2], Some(vec![0; 2])).is_ok());
        assert_eq!(
            ok(vec![0; 3], vec![1.0; 2], Some(vec![0; 2])),
            Err(Error::LengthMismatch { what: "values", expected: 4, found: 3 })
        );
        assert_eq!(
            ok(vec![0; 4], vec![1.0; 1], Some(vec![0; 2])),
            Err(Error::LengthMismatch { what: "scales", expected: 2, found: 1 })
        );
        assert_eq!(
            ok(vec![0; 4], vec![1.0; 2], None),
            Err(Error::LengthMismatch { what: "zero points", expected: 2, found: 0 })
        );
        assert_eq!(
            ok(vec![0, 0, 8, 0], vec![1.0; 2], Some(vec![0; 2])),
            Err(Error::OutOfRange { what: "weight", index: 2, value: 8, min: -8, max: 7 })
        );
        assert_eq!(
            ok(vec![0; 4], vec![1.0; 2], Some(vec![0, -9])),
            Err(Error::OutOfRange { what: "zero point", index: 1, value: -9, min: -8, max: 7 })
        );
        let symmetric = IntMatrix::from_parts(1, 2, scheme("int8-channel"), vec![0; 2], vec![1.0], Some(vec![0]));
        assert_eq!(symmetric, Err(Error::LengthMismatch { what: "zero points", expected: 0, found: 1 }));
    }

    #[test]
    fn packs_like_the_package_docstring() {
        // compressed-tensors' pack_to_int32 docstring: int8 [1, 2] -> 33409.
        assert_eq!(pack_compressed_tensors(&[1, 2], 1, 2, Bits::Int8), vec![33409]);
        // int4: eight values per word, element i at bit 4i, offset by 8.
        let values = [-8, -7, 0, 1, 2, 3, 4, 7, -1];
        let packed = pack_compressed_tensors(&values, 1, 9, Bits::Int4);
        assert_eq!(packed, vec![0xFCBA_9810_u32 as i32, 7]);
        // Dim 0: column c of rows 8j..8j+8 share word (j, c).
        let column_major = [-8, 7, -7, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1];
        let packed = pack_compressed_tensors_dim0(&column_major, 9, 2, Bits::Int4);
        assert_eq!(packed, vec![0x8888_8810_u32 as i32, 0x8888_88EF_u32 as i32, 9, 9]);
    }

    #[test]
    fn unpack_rejects_wrong_lengths() {
        assert_eq!(
            unpack_compressed_tensors(&[0; 3], 2, 9, Bits::Int4),
            Err(Error::LengthMismatch { what: "packed weights", expected: 4, found: 3 })
        );
        assert_eq!(
            unpack_compressed_tensors_dim0(&[0; 3], 9, 2, Bits::Int4),
            Err(Error::LengthMismatch { what: "packed zero points", expected: 4, found: 3 })
        );
        assert!(matches!(unpack_compressed_tensors(&[], usize::MAX, 3, Bits::Int8), Err(Error::TooLarge { .. })));
    }

    #[test]
    fn int4_nibbles_low_first() {
        assert_eq!(pack_int4(&[-8, 7, 0]), vec![0xF0, 0x08]);
        let mut values = [0i8; 3];
        unpack_int4(&[0xF0, 0xF8], &mut values);
        assert_eq!(values, [-8, 7, 0]);
    }

    /// Every activation kernel this CPU runs, scalar first, whatever `LATHE_FORCE_ISA` says.
    fn activation_kernels() -> Vec<(Isa, ActivationQuantizer)> {
        Isa::supported().into_iter().filter_map(|isa| Some((isa, quantize_activations_i8_kernel(isa)?))).collect()
    }

    #[test]
    fn activation_kernels_cover_every_supported_isa() {
        assert_eq!(activation_kernels().len(), Isa::supported().len());
        assert_eq!(activation_kernels()[0].0, Isa::Scalar);
    }

    #[test]
    fn activations_scale_by_amax_over_127() {
        for (isa, quantize) in activation_kernels() {
            let mut dst = [0i8; 5];
            let scale = quantize(&[-2.54, 1.0, 0.01, 2.54, f32::NAN], &mut dst);
            assert_eq!(scale, 2.54 / 127.0, "{isa:?}");
            assert_eq!(dst, [-127, 50, 0, 127, 0], "{isa:?}");
            assert_eq!(quantize(&[0.0, -0.0], &mut dst[..2]), 0.0, "{isa:?}");
            assert_eq!(dst[..2], [0, 0], "{isa:?}");
            // Ties go to even: 0.5 and 1.5 with amax 127 (scale 1).
            let mut dst = [0i8; 3];
            quantize(&[0.5, 1.5, 127.0], &mut dst);
            assert_eq!(dst, [0, 2, 127], "{isa:?}");
            // An infinity: the scale is infinite, finite values give 0 and so does inf / inf.
            let mut dst = [1i8; 4];
            assert_eq!(quantize(&[f32::NEG_INFINITY, 1.0e38, -3.0, f32::NAN], &mut dst), f32::INFINITY, "{isa:?}");
            assert_eq!(dst, [0; 4], "{isa:?}");
        }
    }

    /// Rows that stress the kernels' reductions, rounding, NaN handling and tails, at every length
    /// from 0 to 4 * 32 + 3 and at misaligned starts, compared bit for bit with scalar.
    #[test]
    fn activation_kernels_match_scalar_on_special_rows() {
        let ties: Vec<f32> = (-127..127).flat_map(|k| [k as f32 + 0.5, (k as f32 + 0.5).next_up()]).collect();
        let pattern = |i: usize| ((i * 37 % 101) as f32 - 50.0) / 8.0;
        let specials = [0.0, -0.0, 0.5, -2.5, 1.0e-45, -3.0e-39, f32::MIN_POSITIVE, f32::MAX, -f32::MAX, 127.0];
        let rows: Vec<Vec<f32>> = vec![
            (0..140).map(pattern).collect(),
            [127.0].into_iter().chain(ties.iter().copied()).collect(),
            (0..140).map(|i| specials[i % specials.len()]).collect(),
            (0..140).map(|i| if i % 5 == 0 { f32::NAN } else { pattern(i) }).collect(),
            (0..140).map(|i| if i == 70 { f32::INFINITY } else { pattern(i) }).collect(),
            (0..140).map(|i| pattern(i) * 1.0e-43).collect(),
            vec![f32::NAN; 140],
            vec![-0.0; 140],
        ];
        let (_, scalar) = activation_kernels()[0];
        for (isa, quantize) in activation_kernels() {
            for row in &rows {
                for offset in 0..4 {
                    for len in 0..=(4 * 32 + 3).min(row.len() - offset) {
                        let x = &row[offset..offset + len];
                        let mut expected = vec![0i8; len];
                        let expected_scale = scalar(x, &mut expected);
                        let mut actual = vec![99i8; len + 5];
                        let scale = quantize(x, &mut actual[offset % 3..offset % 3 + len]);
                        assert_eq!(scale.to_bits(), expected_scale.to_bits(), "{isa:?}: scale of {x:?}");
                        assert_eq!(actual[offset % 3..offset % 3 + len], expected, "{isa:?}: values of {x:?}");
                        assert!(actual[..offset % 3].iter().chain(&actual[offset % 3 + len..]).all(|&q| q == 99));
                    }
                }
            }
        }
    }

    fn any_int_scheme() -> impl Strategy<Value = IntScheme> {
        let granularity = prop_oneof![
            Just(Granularity::Tensor),
            Just(Granularity::Channel),
            (1usize..=8).prop_map(|size| Granularity::Group(std::num::NonZeroUsize::new(size).unwrap())),
        ];
        (prop_oneof![Just(Bits::Int4), Just(Bits::Int8)], granularity, any::<bool>())
            .prop_filter_map("int4-tensor", |(bits, granularity, symmetric)| {
                IntScheme::new(bits, granularity, symmetric).ok()
            })
    }

    fn weight() -> impl Strategy<Value = f32> {
        prop_oneof![
            8 => -1.0e3f32..1.0e3,
            1 => -1.0f32..1.0,
            1 => prop::sample::select(vec![0.0, -0.0, 1.0e-30, -1.0e-38, f32::MIN_POSITIVE, 3.0e-45]),
        ]
    }

    /// A scheme, a shape that fits it and weights.
    fn case() -> impl Strategy<Value = (IntScheme, usize, usize, Vec<f32>)> {
        (any_int_scheme(), 0usize..6, 0usize..5).prop_flat_map(|(scheme, rows, blocks)| {
            let cols = blocks * scheme.block_size();
            (Just(scheme), Just(rows), Just(cols), prop::collection::vec(weight(), rows * cols))
        })
    }

    fn values(bits: Bits) -> impl Strategy<Value = Vec<i8>> {
        prop::collection::vec(bits.qmin()..=bits.qmax(), 0..40)
    }

    #[test]
    fn subnormal_activations_keep_a_nonzero_scale() {
        // Found by proptest in CI: 3e-45 / 127 underflowed to a zero scale and the value was lost.
        for (isa, quantize) in activation_kernels() {
            let mut q = [0i8; 1];
            let scale = quantize(&[3.0e-45], &mut q);
            assert!(scale > 0.0, "{isa:?}");
            assert!((f32::from(q[0]) * scale - 3.0e-45).abs() <= scale / 2.0, "{isa:?}");
        }
    }

    proptest! {
        #[test]
        fn dequantized_error_is_at_most_half_a_scale((scheme, rows, cols, weights) in case()) {
            let matrix = IntMatrix::quantize(&weights, rows, cols, scheme).unwrap();
            let mut restored = vec![f32::NAN; weights.len()];
            matrix.dequantize(&mut restored);
            let group_len = group_len(weights.len(), matrix.scales().len());
            for (index, (&w, &r)) in weights.iter().zip(&restored).enumerate() {
                let scale = matrix.scales()[index / group_len];
                // Half a step, plus the rounding of w / scale (|q| <= 128) and of the product.
                let bound = scale * (0.5 + 1.0e-4);
                prop_assert!((w - r).abs() <= bound, "{} at {}: {} -> {} (scale {})", scheme, index, w, r, scale);
            }
        }

        #[test]
        fn pack_quantized_round_trips((scheme, rows, cols, weights) in case()) {
            let matrix = IntMatrix::quantize(&weights, rows, cols, scheme).unwrap();
            let packed = matrix.to_pack_quantized();
            let [packed_rows, packed_cols] = packed.weight_packed_shape();
            prop_assert_eq!(packed.weight_packed.len(), packed_rows * packed_cols);
            prop_assert_eq!(packed.weight_scale.len(), packed.weight_scale_shape().iter().product::<usize>());
            let zero_point_len = match &packed.weight_zero_point {
                None => None,
                Some(ZeroPointTensor::Packed(words)) => Some(words.len()),
                Some(ZeroPointTensor::Int8(bytes)) => Some(bytes.len()),
            };
            prop_assert_eq!(zero_point_len, packed.weight_zero_point_shape().map(|shape| shape.iter().product()));
            let bytes = Scheme::Int(scheme).bytes(rows, cols).unwrap() as usize;
            let stored = 4 * (packed.weight_packed.len() + packed.weight_scale.len()) + 16 + match &packed.weight_zero_point {
                None => 0,
                Some(ZeroPointTensor::Packed(words)) => 4 * words.len(),
                Some(ZeroPointTensor::Int8(bytes)) => bytes.len(),
            };
            prop_assert_eq!(bytes, stored);
            prop_assert_eq!(IntMatrix::from_pack_quantized(&packed).unwrap(), matrix);
        }

        #[test]
        fn compressed_tensors_packing_round_trips(
            int4 in values(Bits::Int4), int8 in values(Bits::Int8), cols in 1usize..12,
        ) {
            for (values, bits) in [(int4, Bits::Int4), (int8, Bits::Int8)] {
                let rows = values.len() / cols;
                let values = &values[..rows * cols];
                let packed = pack_compressed_tensors(values, rows, cols, bits);
                prop_assert_eq!(packed.len(), rows * (cols * bits.bits() as usize).div_ceil(32));
                prop_assert_eq!(unpack_compressed_tensors(&packed, rows, cols, bits).unwrap(), values);
                // Element i of a row sits at bit i * bits of the row's bit string.
                for row in 0..rows {
                    for col in 0..cols {
                        let bit = col * bits.bits() as usize;
                        let word = packed[row * packed.len() / rows.max(1) + bit / 32] as u32;
                        let unsigned = (word >> (bit % 32)) & ((1 << bits.bits()) - 1);
                        prop_assert_eq!(unsigned as i32 - offset(bits), i32::from(values[row * cols + col]));
                    }
                }
                let packed = pack_compressed_tensors_dim0(values, rows, cols, bits);
                prop_assert_eq!(packed.len(), (rows * bits.bits() as usize).div_ceil(32) * cols);
                prop_assert_eq!(unpack_compressed_tensors_dim0(&packed, rows, cols, bits).unwrap(), values);
                // Packing along dim 0 is packing the transpose along dim 1, transposed back.
                let transposed: Vec<i8> = (0..cols * rows).map(|i| values[(i % rows) * cols + i / rows]).collect();
                let along_rows = pack_compressed_tensors(&transposed, cols, rows, bits);
                let words = rows.div_ceil((32 / bits.bits()) as usize);
                let expected: Vec<i32> = (0..words * cols).map(|i| along_rows[(i % cols) * words + i / cols]).collect();
                prop_assert_eq!(packed, expected);
            }
        }

        #[test]
        fn int4_bytes_round_trip(values in values(Bits::Int4)) {
            let packed = pack_int4(&values);
            prop_assert_eq!(packed.len(), values.len().div_ceil(2));
            let mut restored = vec![0i8; values.len()];
            unpack_int4(&packed, &mut restored);
            prop_assert_eq!(restored, values);
        }

        #[test]
        fn activation_error_is_at_most_half_a_scale(x in prop::collection::vec(weight(), 0..70)) {
            let mut dst = vec![0i8; x.len()];
            let scale = quantize_activations_i8(&x, &mut dst);
            let amax = x.iter().fold(0.0f32, |amax, v| amax.max(v.abs()));
            let expected = if amax > 0.0 { (amax / 127.0).max(f32::from_bits(1)) } else { 0.0 };
            prop_assert_eq!(scale, expected);
            for (&v, &q) in x.iter().zip(&dst) {
                prop_assert!(q != -128);
                prop_assert!((v - f32::from(q) * scale).abs() <= scale * (0.5 + 1.0e-4), "{} -> {}", v, q);
            }
        }
    }
}

/// The folders compressed-tensors 0.20.0 wrote (`tests/data/compressed_tensors/README.md`): our
/// writer must reproduce `model.safetensors` from `reference_fp32.safetensors`, and our reader
/// must turn `model.safetensors` into `dequantized_by_package.safetensors`, bit for bit.
#[cfg(test)]
mod golden {
    use std::collections::BTreeSet;

    use safetensors::{Dtype, SafeTensors};

    use super::*;
    use crate::Scheme;

    const FOLDERS: [(&str, &str); 3] =
        [("int4_g32_sym", "int4-g32"), ("int4_g32_asym", "int4-g32-asym"), ("int8_channel_sym", "int8-channel")];

    fn read(folder: &str, file: &str) -> Vec<u8> {
        let path = format!("{}/tests/data/compressed_tensors/{folder}/{file}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
    }

    /// The scheme `config.json` describes, in lathe's words.
    fn config_scheme(folder: &str) -> (Scheme, Vec<String>) {
        let config: serde_json::Value = serde_json::from_slice(&read(folder, "config.json")).unwrap();
        let quantization = &config["quantization_config"];
        assert_eq!(quantization["format"], "pack-quantized");
        assert_eq!(quantization["quant_method"], "compressed-tensors");
        let group = &quantization["config_groups"]["group_0"];
        assert_eq!(group["targets"], serde_json::json!(["Linear"]));
        assert!(group["input_activations"].is_null());
        let weights = &group["weights"];
        assert_eq!(weights["type"], "int");
        assert_eq!(weights["dynamic"], false);
        let granularity = match weights["strategy"].as_str().unwrap() {
            "group" => format!("g{}", weights["group_size"]),
            other => other.to_string(),
        };
        let asym = if weights["symmetric"].as_bool().unwrap() { "" } else { "-asym" };
        let scheme = format!("int{}-{granularity}{asym}", weights["num_bits"]).parse().unwrap();
        let ignore = quantization["ignore"].as_array().unwrap().iter().map(|name| name.as_str().unwrap().to_string());
        (scheme, ignore.collect())
    }

    fn f32s(data: &[u8]) -> Vec<f32> {
        data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    }

    fn i32s(data: &[u8]) -> Vec<i32> {
        data.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap())).collect()
    }

    fn le_bytes<T: Copy, const N: usize>(values: &[T], to_bytes: impl Fn(T) -> [u8; N]) -> Vec<u8> {
        values.iter().flat_map(|&value| to_bytes(value)).collect()
    }

    /// `(name, dtype, shape, bytes)` of every tensor our writer produces for one weight.
    fn written(prefix: &str, packed: &PackQuantized) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
        let mut tensors = vec![
            (
                format!("{prefix}weight_packed"),
                Dtype::I32,
                packed.weight_packed_shape().to_vec(),
                le_bytes(&packed.weight_packed, i32::to_le_bytes),
            ),
            (
                format!("{prefix}weight_scale"),
                Dtype::F32,
                packed.weight_scale_shape(),
                le_bytes(&packed.weight_scale, f32::to_le_bytes),
            ),
            (format!("{prefix}weight_shape"), Dtype::I64, vec![2], le_bytes(&packed.weight_shape(), i64::to_le_bytes)),
        ];
        if let Some(zero_point) = &packed.weight_zero_point {
            let shape = packed.weight_zero_point_shape().unwrap();
            let (dtype, bytes) = match zero_point {
                ZeroPointTensor::Packed(words) => (Dtype::I32, le_bytes(words, i32::to_le_bytes)),
                ZeroPointTensor::Int8(values) => (Dtype::I8, le_bytes(values, i8::to_le_bytes)),
            };
            tensors.push((format!("{prefix}weight_zero_point"), dtype, shape, bytes));
        }
        tensors
    }

    #[test]
    fn writer_reproduces_the_package_checkpoints() {
        for (folder, expected_scheme) in FOLDERS {
            let (scheme, ignore) = config_scheme(folder);
            assert_eq!(scheme.to_string(), expected_scheme);
            let int_scheme = scheme.int().unwrap();
            let reference_bytes = read(folder, "reference_fp32.safetensors");
            let model_bytes = read(folder, "model.safetensors");
            let reference = SafeTensors::deserialize(&reference_bytes).unwrap();
            let model = SafeTensors::deserialize(&model_bytes).unwrap();

            let mut expected_names = BTreeSet::new();
            let mut n_quantized = 0;
            for (name, view) in reference.tensors() {
                let prefix = name.strip_suffix("weight").unwrap_or_default();
                let module = prefix.trim_end_matches('.');
                let is_linear =
                    module.ends_with("dense") || ["query", "key", "value"].iter().any(|m| module.ends_with(m));
                if !(name.ends_with(".weight") && is_linear && !ignore.iter().any(|ignored| ignored == module)) {
                    // Everything else passes through unchanged.
                    let stored = model.tensor(&name).unwrap_or_else(|_| panic!("{folder}: {name} missing"));
                    assert_eq!(
                        (stored.dtype(), stored.shape(), stored.data()),
                        (view.dtype(), view.shape(), view.data())
                    );
                    expected_names.insert(name);
                    continue;
                }
                n_quantized += 1;
                let [rows, cols]: [usize; 2] = view.shape().try_into().unwrap();
                let matrix = IntMatrix::quantize(&f32s(view.data()), rows, cols, int_scheme).unwrap();
                let mut weight_bytes = 0;
                for (tensor_name, dtype, shape, bytes) in written(prefix, &matrix.to_pack_quantized()) {
                    let stored =
                        model.tensor(&tensor_name).unwrap_or_else(|_| panic!("{folder}: {tensor_name} missing"));
                    assert_eq!(stored.dtype(), dtype, "{folder}: {tensor_name}");
                    assert_eq!(stored.shape(), shape, "{folder}: {tensor_name}");
                    assert!(stored.data() == bytes, "{folder}: {tensor_name} bytes differ");
                    weight_bytes += bytes.len() as u64;
                    expected_names.insert(tensor_name);
                }
                assert_eq!(scheme.bytes(rows, cols), Ok(weight_bytes), "{folder}: {name}");
            }
            assert_eq!(n_quantized, 12, "{folder}: 2 layers x 6 linears");
            let model_names: BTreeSet<String> = model.names().into_iter().map(String::from).collect();
            assert_eq!(model_names, expected_names, "{folder}: tensor names");
        }
    }

    #[test]
    fn reader_reproduces_the_package_decompression() {
        for (folder, _) in FOLDERS {
            let (scheme, _) = config_scheme(folder);
            let int_scheme = scheme.int().unwrap();
            let model_bytes = read(folder, "model.safetensors");
            let dequantized_bytes = read(folder, "dequantized_by_package.safetensors");
            let model = SafeTensors::deserialize(&model_bytes).unwrap();
            let dequantized = SafeTensors::deserialize(&dequantized_bytes).unwrap();
            let mut n_checked = 0;
            for name in model.names() {
                let Some(prefix) = name.strip_suffix("weight_packed") else { continue };
                let tensor = |suffix: &str| model.tensor(&format!("{prefix}{suffix}")).unwrap();
                let shape: Vec<i64> = tensor("weight_shape")
                    .data()
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                let zero_point = model.tensor(&format!("{prefix}weight_zero_point")).ok();
                let packed = PackQuantized {
                    rows: shape[0] as usize,
                    cols: shape[1] as usize,
                    scheme: int_scheme,
                    weight_packed: i32s(tensor("weight_packed").data()),
                    weight_scale: f32s(tensor("weight_scale").data()),
                    weight_zero_point: zero_point.map(|view| ZeroPointTensor::Packed(i32s(view.data()))),
                };
                let matrix = IntMatrix::from_pack_quantized(&packed).unwrap();
                let mut restored = vec![0.0f32; packed.rows * packed.cols];
                matrix.dequantize(&mut restored);
                let expected = dequantized.tensor(&format!("{prefix}weight")).unwrap();
                assert_eq!(expected.dtype(), Dtype::F32);
                assert_eq!(expected.shape(), [packed.rows, packed.cols]);
                assert!(le_bytes(&restored, f32::to_le_bytes) == expected.data(), "{folder}: {prefix}weight differs");
                n_checked += 1;
            }
            assert_eq!(n_checked, 12, "{folder}");
        }
    }
}
