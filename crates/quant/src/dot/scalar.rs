//! The portable reference for every dot product: ggml's `ggml_vec_dot_*_generic`, block by
//! block, in the same f32 operation order, so the GGML results are bit-identical with ggml's
//! reference. The SIMD paths are tested against these.

use crate::ggml::{
    BlockQ4_0, BlockQ4_0x4, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_0x4, BlockQ8_1, Interleaved, QK,
};

use super::{PANEL_ROWS, PanelOutput, PanelScales, PanelShape, assert_same_len, panel_index, quad_panel_index};

/// The signed weights of a Q4_0 block, `nibble - 8`: byte `j` holds element `j` in its low
/// nibble and element `j + 16` in its high one.
pub(super) fn q4_0_values(block: &BlockQ4_0) -> [i8; QK] {
    q4_1_values(block.qs).map(|q| q - 8)
}

/// The unsigned nibbles of a Q4_0 or Q4_1 block, in element order.
pub(super) fn q4_1_values(qs: [u8; QK / 2]) -> [i8; QK] {
    let mut values = [0i8; QK];
    for (j, byte) in qs.into_iter().enumerate() {
        values[j] = (byte & 0x0f) as i8;
        values[j + QK / 2] = (byte >> 4) as i8;
    }
    values
}

/// The signed weights of a Q5_0 block, `q - 16` for the five-bit `q`.
pub(super) fn q5_0_values(block: &BlockQ5_0) -> [i8; QK] {
    q5_1_values(block.qh, block.qs).map(|q| q - 16)
}

/// The unsigned five-bit values of a Q5_0 or Q5_1 block: the nibbles of `qs` as in Q4, with bit
/// `j` of the little-endian `qh` as the fifth bit of element `j`.
pub(super) fn q5_1_values(qh: [u8; 4], qs: [u8; QK / 2]) -> [i8; QK] {
    let high_bits = u32::from_le_bytes(qh);
    let mut values = q4_1_values(qs);
    for (j, value) in values.iter_mut().enumerate() {
        *value |= (((high_bits >> j) & 1) as i8) << 4;
    }
    values
}

/// The exact integer dot product of two blocks of small integers (at most 32 * 128 * 128 in
/// magnitude, far from overflow).
pub(super) fn integer_dot(x: &[i8; QK], y: &[i8; QK]) -> i32 {
    x.iter().zip(y).map(|(&a, &b)| i32::from(a) * i32::from(b)).sum()
}

/// Q8_0 weights times Q8_0 activations: the sum over blocks of `sumi * (d_x * d_y)`.
///
/// # Panics
/// If `x.len() != y.len()`.
pub fn dot_q8_0_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    assert_same_len(x.len(), y.len());
    let mut sum = 0.0f32;
    for (bx, by) in x.iter().zip(y) {
        let sumi = integer_dot(&bx.qs, &by.qs);
        sum += sumi as f32 * (bx.d.to_f32() * by.d.to_f32());
    }
    sum
}

/// Q4_0 weights times Q8_0 activations: the sum over blocks of `sumi * d_x * d_y`, with the
/// weights `nibble - 8`.
///
/// # Panics
/// If `x.len() != y.len()`.
pub fn dot_q4_0_q8_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    assert_same_len(x.len(), y.len());
    let mut sum = 0.0f32;
    for (bx, by) in x.iter().zip(y) {
        let sumi = integer_dot(&q4_0_values(bx), &by.qs);
        // ggml's reference scales by one factor after the other here, not by their product.
        sum += sumi as f32 * bx.d.to_f32() * by.d.to_f32();
    }
    sum
}

/// Q4_1 weights times Q8_1 activations: the sum over blocks of `(d_x * d_y) * sumi + m_x * s_y`,
/// where `s_y` is the activation block's stored `d * sum(q)`.
///
/// # Panics
/// If `x.len() != y.len()`.
pub fn dot_q4_1_q8_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    assert_same_len(x.len(), y.len());
    let mut sum = 0.0f32;
    for (bx, by) in x.iter().zip(y) {
        let sumi = integer_dot(&q4_1_values(bx.qs), &by.qs);
        sum += (bx.d.to_f32() * by.d.to_f32()) * sumi as f32 + bx.m.to_f32() * by.s.to_f32();
    }
    sum
}

/// Q5_0 weights times Q8_0 activations: the sum over blocks of `(d_x * d_y) * sumi`, with the
/// weights `q - 16`.
///
/// # Panics
/// If `x.len() != y.len()`.
pub fn dot_q5_0_q8_0(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
    assert_same_len(x.len(), y.len());
    let mut sum = 0.0f32;
    for (bx, by) in x.iter().zip(y) {
        let sumi = integer_dot(&q5_0_values(bx), &by.qs);
        sum += (bx.d.to_f32() * by.d.to_f32()) * sumi as f32;
    }
    sum
}

/// Q5_1 weights times Q8_1 activations: the sum over blocks of `(d_x * d_y) * sumi + m_x * s_y`.
///
/// # Panics
/// If `x.len() != y.len()`.
pub fn dot_q5_1_q8_1(x: &[BlockQ5_1], y: &[BlockQ8_1]) -> f32 {
    assert_same_len(x.len(), y.len());
    let mut sum = 0.0f32;
    for (bx, by) in x.iter().zip(y) {
        let sumi = integer_dot(&q5_1_values(bx.qh, bx.qs), &by.qs);
        sum += (bx.d.to_f32() * by.d.to_f32()) * sumi as f32 + bx.m.to_f32() * by.s.to_f32();
    }
    sum
}

/// Int8 times int8 with i32 accumulation: exact while the sum fits in an i32 (always for
/// lengths up to 131072), otherwise wrapped modulo 2^32 like every other path.
///
/// # Panics
/// If `x.len() != y.len()`.
pub fn dot_i8_i8(x: &[i8], y: &[i8]) -> i32 {
    assert_same_len(x.len(), y.len());
    x.iter().zip(y).fold(0i32, |sum, (&a, &b)| sum.wrapping_add(i32::from(a) * i32::from(b)))
}

/// f32 times f32, summed in order.
///
/// # Panics
/// If `x.len() != y.len()`.
pub fn dot_f32_f32(x: &[f32], y: &[f32]) -> f32 {
    assert_same_len(x.len(), y.len());
    x.iter().zip(y).fold(0.0f32, |sum, (&a, &b)| sum + a * b)
}

/// [`dot_q8_0_q8_0`] of each of four interleaved rows with the same activations, in the same
/// f32 operation order (so each result equals the single-row reference exactly).
///
/// # Panics
/// If `x.len() != y.len()`.
pub fn dot_q8_0x4_q8_0(x: &[BlockQ8_0x4], y: &[BlockQ8_0]) -> [f32; 4] {
    assert_same_len(x.len(), y.len());
    let mut sums = [0.0f32; 4];
    for (bx, by) in x.iter().zip(y) {
        for (r, sum) in sums.iter_mut().enumerate() {
            *sum += integer_dot(&bx.qs[r], &by.qs) as f32 * (bx.d[r].to_f32() * by.d.to_f32());
        }
    }
    sums
}

/// [`dot_q4_0_q8_0`] of each of four interleaved rows with the same activations, in the same
/// f32 operation order.
///
/// # Panics
/// If `x.len() != y.len()`.
pub fn dot_q4_0x4_q8_0(x: &[BlockQ4_0x4], y: &[BlockQ8_0]) -> [f32; 4] {
    assert_same_len(x.len(), y.len());
    let mut sums = [0.0f32; 4];
    for (bx, by) in x.iter().zip(y) {
        for (r, sum) in sums.iter_mut().enumerate() {
            let sumi = integer_dot(&q4_0_values(&bx.block(r)), &by.qs);
            *sum += sumi as f32 * bx.d[r].to_f32() * by.d.to_f32();
        }
    }
    sums
}

/// [`dot_i8_i8`] of each of four rows with the same activations.
///
/// # Panics
/// If a row's length differs from `y.len()`.
pub fn dot_i8_i8_x4(rows: [&[i8]; 4], y: &[i8]) -> [i32; 4] {
    rows.map(|row| dot_i8_i8(row, y))
}

/// [`dot_i8_i8`] of each of four rows with each of two tokens: `result[t][r]`.
///
/// # Panics
/// If the rows and tokens differ in length.
pub fn dot_i8_i8_4x2(rows: [&[i8]; 4], tokens: [&[i8]; 2]) -> [[i32; 4]; 2] {
    tokens.map(|token| dot_i8_i8_x4(rows, token))
}

/// The int8 GEMM's kernel, one output at a time in the order the
/// [dispatched kernel's](super::gemm_i8_i16_f32) docs give.
///
/// # Panics
/// As [`super::gemm_i8_i16_f32`].
pub fn gemm_i8_i16_f32(
    panels: &[i8],
    shape: PanelShape,
    tokens: &[i16],
    scales: PanelScales<'_>,
    out: PanelOutput<'_>,
) {
    let (_, n_tokens, n_groups) = super::assert_panel_shape(panels.len(), 2, shape, tokens.len(), &scales, &out);
    let integer = |t: usize, row: usize, group: usize| {
        let (weights, token, columns) = operands(panels, shape, tokens, (t, row, group));
        let r = row % PANEL_ROWS;
        columns.fold(0i32, |sum, col| sum.wrapping_add(i32::from(weights[panel_index(r, col)]) * i32::from(token[col])))
    };
    panel_outputs(shape, n_tokens, n_groups, &scales, out, integer);
}

/// The 7-bit activation GEMM's kernel, one output at a time in the order the
/// [dispatched kernel's](super::gemm_u8_i8_f32) docs give, saturating each column pair's sum to
/// i16 as they say.
///
/// # Panics
/// As [`super::gemm_u8_i8_f32`].
pub fn gemm_u8_i8_f32(panels: &[u8], shape: PanelShape, tokens: &[i8], scales: PanelScales<'_>, out: PanelOutput<'_>) {
    let (_, n_tokens, n_groups) = super::assert_panel_shape(panels.len(), 4, shape, tokens.len(), &scales, &out);
    let integer = |t: usize, row: usize, group: usize| {
        let (weights, token, columns) = operands(panels, shape, tokens, (t, row, group));
        let r = row % PANEL_ROWS;
        let product = |col: usize| i32::from(weights[quad_panel_index(r, col)]) * i32::from(token[col]);
        columns.step_by(2).fold(0i32, |sum, col| {
            let pair = (product(col) + product(col + 1)).clamp(i32::from(i16::MIN), i32::from(i16::MAX));
            sum.wrapping_add(pair)
        })
    };
    panel_outputs(shape, n_tokens, n_groups, &scales, out, integer);
}

/// The panel of `row`, the activations of token `t` and the columns of `group`: what one
/// integer sum of a panel kernel reads.
fn operands<'a, W, E>(
    panels: &'a [W],
    shape: PanelShape,
    tokens: &'a [E],
    (t, row, group): (usize, usize, usize),
) -> (&'a [W], &'a [E], std::ops::Range<usize>) {
    let PanelShape { cols, group_len, .. } = shape;
    let panel_len = cols * PANEL_ROWS;
    let panel = row / PANEL_ROWS;
    let columns = group * group_len..(group + 1) * group_len;
    (&panels[panel * panel_len..(panel + 1) * panel_len], &tokens[t * cols..(t + 1) * cols], columns)
}

/// The f32 steps both panel kernels share: for every token and row, each group's
/// `integer(token, row, group)` less its zero point's share, scaled and summed in group order,
/// times the token's scale, plus the bias.
fn panel_outputs(
    shape: PanelShape,
    n_tokens: usize,
    n_groups: usize,
    scales: &PanelScales<'_>,
    out: PanelOutput<'_>,
    integer: impl Fn(usize, usize, usize) -> i32,
) {
    for t in 0..n_tokens {
        for row in 0..shape.rows {
            let (panel, r) = (row / PANEL_ROWS, row % PANEL_ROWS);
            let mut acc = 0.0f32;
            for group in 0..n_groups {
                let mut integer = integer(t, row, group);
                let table = panel * n_groups + group;
                if let Some((zero_points, activation_sums)) = scales.zero_points {
                    let offset = zero_points[table][r].wrapping_mul(activation_sums[t * n_groups + group]);
                    integer = integer.wrapping_sub(offset);
                }
                acc += scales.weight_scales[table][r] * integer as f32;
            }
            let mut value = acc * scales.token_scales[t];
            if let Some(bias) = scales.bias {
                value += bias[row];
            }
            out.values[t * out.stride + row] = value;
        }
    }
}

#[cfg(test)]
mod tests {
    use half::f16;
    use proptest::array::{uniform4, uniform16};
    use proptest::prelude::*;

    use super::*;
    use crate::ggml::scalar as ggml;

    fn scale() -> impl Strategy<Value = f16> {
        (-8.0f32..8.0).prop_map(f16::from_f32)
    }

    /// `d * value (+ m)` for each element, as the dot products read the blocks.
    fn scaled(values: [i8; QK], d: f16, m: f16) -> [f32; QK] {
        values.map(|v| f32::from(v) * d.to_f32() + m.to_f32())
    }

    // The value helpers read the blocks as ggml's dequantizers do (themselves checked against
    // the gguf package in tests/quant.rs).
    proptest! {
        #[test]
        fn q4_0_values_match_dequantize(d in scale(), qs in uniform16(any::<u8>())) {
            let block = BlockQ4_0 { d, qs };
            let mut expected = [0.0; QK];
            ggml::dequantize_block_q4_0(&block, &mut expected);
            prop_assert_eq!(scaled(q4_0_values(&block), d, f16::ZERO), expected);
        }

        #[test]
        fn q4_1_values_match_dequantize(d in scale(), m in scale(), qs in uniform16(any::<u8>())) {
            let block = BlockQ4_1 { d, m, qs };
            let mut expected = [0.0; QK];
            ggml::dequantize_block_q4_1(&block, &mut expected);
            prop_assert_eq!(scaled(q4_1_values(qs), d, m), expected);
        }

        #[test]
        fn q5_0_values_match_dequantize(d in scale(), qh in uniform4(any::<u8>()), qs in uniform16(any::<u8>())) {
            let block = BlockQ5_0 { d, qh, qs };
            let mut expected = [0.0; QK];
            ggml::dequantize_block_q5_0(&block, &mut expected);
            prop_assert_eq!(scaled(q5_0_values(&block), d, f16::ZERO), expected);
        }

        #[test]
        fn q5_1_values_match_dequantize(
            d in scale(), m in scale(), qh in uniform4(any::<u8>()), qs in uniform16(any::<u8>())
        ) {
            let block = BlockQ5_1 { d, m, qh, qs };
            let mut expected = [0.0; QK];
            ggml::dequantize_block_q5_1(&block, &mut expected);
            prop_assert_eq!(scaled(q5_1_values(qh, qs), d, m), expected);
        }
    }

    #[test]
    fn empty_operands_give_zero() {
        assert_eq!(dot_q8_0_q8_0(&[], &[]), 0.0);
        assert_eq!(dot_q4_1_q8_1(&[], &[]), 0.0);
        assert_eq!(dot_i8_i8(&[], &[]), 0);
        assert_eq!(dot_f32_f32(&[], &[]), 0.0);
    }
}
