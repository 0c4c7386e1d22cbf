//! The quantization grids of lathe-quant, one value at a time.
//!
//! GPTQ quantizes one column at a time with scales fixed earlier, so it needs "quantize this
//! value with this scale and zero point", which lathe-quant keeps private. The formulas here are
//! the ones lathe-quant documents, in the same f32 operation order; the tests check that whole
//! rows come out bit-identical with lathe-quant's own quantizers.
//!
//! - Integer schemes (compressed-tensors): see `lathe_quant::linear`; round half to even.
//! - Q4_0: `d = max / -8` (signed value of largest magnitude), `q = (int)(x / d + 8.5)` clamped
//!   to `0..=15`, value `(q - 8) * f16(d)`.
//! - Q4_1: `d = (max - min) / 15`, `q = (int)((x - min) / d + 0.5)` clamped to `0..=15`, value
//!   `q * f16(d) + f16(min)`.
//! - Q8_0: `d = amax / 127`, `q = round(x / d)` (ties away from zero) clamped to `-127..=127`,
//!   value `q * f16(d)`.
//!
//! The GGML quotients use `id = 1 / d` (0 when `d` is 0) and the unrounded f32 `d`, as ggml's
//! reference does. The clamps never bite on the values a group's parameters were computed from;
//! they matter only for GPTQ's updated weights, which may leave the group's original range.

use half::f16;
use lathe_quant::{Bits, IntScheme, Scheme};

use crate::{Error, Result};

/// A grid: how a group's parameters are found and how a value is rounded onto them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Grid {
    Int(IntScheme),
    Q4_0,
    Q4_1,
    Q8_0,
}

/// The parameters of one scale group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Params {
    Int { scale: f32, zero_point: i8, qmin: f32, qmax: f32 },
    Q4_0 { d: f32, id: f32 },
    Q4_1 { d: f32, id: f32, min: f32 },
    Q8_0 { d: f32, id: f32 },
}

fn scale_inverse(d: f32) -> f32 {
    if d != 0.0 { 1.0 / d } else { 0.0 }
}

impl Grid {
    pub(crate) fn new(scheme: Scheme) -> Result<Grid> {
        match scheme {
            Scheme::Int(int) => Ok(Grid::Int(int)),
            Scheme::Q4_0 => Ok(Grid::Q4_0),
            Scheme::Q4_1 => Ok(Grid::Q4_1),
            Scheme::Q8_0 => Ok(Grid::Q8_0),
            other => Err(Error::UnsupportedScheme { scheme: other.to_string() }),
        }
    }

    /// The parameters of a group holding `values`.
    pub(crate) fn params(self, values: &[f32]) -> Params {
        match self {
            Grid::Int(scheme) => int_params(values, scheme.bits(), scheme.is_symmetric()),
            Grid::Q4_0 => {
                let (mut amax, mut max) = (0.0f32, 0.0f32);
                for &v in values {
                    if amax < v.abs() {
                        amax = v.abs();
                        max = v;
                    }
                }
                let d = max / -8.0;
                Params::Q4_0 { d, id: scale_inverse(d) }
            }
            Grid::Q4_1 => {
                let (min, max) = values.iter().fold((f32::MAX, -f32::MAX), |(min, max), &v| {
                    (if v < min { v } else { min }, if v > max { v } else { max })
                });
                let d = (max - min) / 15.0;
                Params::Q4_1 { d, id: scale_inverse(d), min }
            }
            Grid::Q8_0 => {
                let amax = values.iter().fold(0.0f32, |amax, &v| amax.max(v.abs()));
                let d = amax / 127.0;
                Params::Q8_0 { d, id: scale_inverse(d) }
            }
        }
    }
}

/// compressed-tensors' `calculate_qparams`, as lathe-quant computes it.
fn int_params(values: &[f32], bits: Bits, symmetric: bool) -> Params {
    let (lo, hi) = values.iter().fold((0.0f32, 0.0f32), |(lo, hi), &w| (lo.min(w), hi.max(w)));
    let (qmin, qmax) = (f32::from(bits.qmin()), f32::from(bits.qmax()));
    let range = qmax - qmin;
    let (scale, zero_point) = if symmetric {
        (lo.abs().max(hi.abs()) / (range / 2.0), 0)
    } else {
        let scale = (hi - lo) / range;
        // An all-zero group gives NaN here, which the saturating cast turns into 0.
        (scale, (qmin - lo / scale).clamp(qmin, qmax).round_ties_even() as i8)
    };
    let scale = if scale == 0.0 { f32::EPSILON } else { scale };
    Params::Int { scale, zero_point, qmin, qmax }
}

impl Params {
    /// The stored code of `x` and the value it decodes to.
    pub(crate) fn quantize(self, x: f32) -> (i8, f32) {
        match self {
            Params::Int { scale, zero_point, qmin, qmax } => {
                let q = (x / scale + f32::from(zero_point)).clamp(qmin, qmax).round_ties_even() as i8;
                (q, (f32::from(q) - f32::from(zero_point)) * scale)
            }
            Params::Q4_0 { d, id } => {
                let q = ((x * id + 8.5) as i8).clamp(0, 15);
                (q, f32::from(q - 8) * f16::from_f32(d).to_f32())
            }
            Params::Q4_1 { d, id, min } => {
                let q = (((x - min) * id + 0.5) as i8).clamp(0, 15);
                (q, f32::from(q) * f16::from_f32(d).to_f32() + f16::from_f32(min).to_f32())
            }
            Params::Q8_0 { d, id } => {
                let q = (x * id).round().clamp(-127.0, 127.0) as i8;
                (q, f32::from(q) * f16::from_f32(d).to_f32())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;
    use lathe_quant::ggml;
    use lathe_quant::linear::IntMatrix;

    fn rows_of(rng: &mut Rng, rows: usize, cols: usize) -> Vec<f32> {
        let mut weights: Vec<f32> = (0..rows * cols).map(|_| rng.normal() * 0.1).collect();
        // A few exact ties, zeros and an all-zero row stress the rounding rules.
        weights[3] = 0.0;
        weights[5] = weights[4];
        weights[cols..2 * cols].fill(0.0);
        weights
    }

    #[test]
    fn int_grids_equal_lathe_quant_on_whole_rows() {
        let (rows, cols) = (6, 64);
        let mut rng = Rng::new(11);
        let weights = rows_of(&mut rng, rows, cols);
        for word in ["int8-channel", "int8-channel-asym", "int4-channel", "int4-g16", "int4-g32-asym", "int8-g8"] {
            let scheme: IntScheme = word.parse().unwrap();
            let reference = IntMatrix::quantize(&weights, rows, cols, scheme).unwrap();
            let mut restored = vec![0.0; rows * cols];
            reference.dequantize(&mut restored);
            let group = reference.group_len();
            for r in 0..rows {
                for g in 0..cols / group {
                    let span = r * cols + g * group..r * cols + (g + 1) * group;
                    let params = Grid::Int(scheme).params(&weights[span.clone()]);
                    let Params::Int { scale, zero_point, .. } = params else { unreachable!() };
                    assert_eq!((scale, zero_point), reference.group_params(reference.group_index(r, g * group)));
                    for i in span {
                        let (q, value) = params.quantize(weights[i]);
                        assert_eq!(q, reference.values()[i], "{word} weight {i}");
                        assert_eq!(value.to_bits(), restored[i].to_bits(), "{word} weight {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn ggml_grids_equal_lathe_quant_on_whole_rows() {
        let (rows, cols) = (5, 64);
        let mut rng = Rng::new(12);
        let weights = rows_of(&mut rng, rows, cols);
        let n_blocks = rows * cols / 32;
        let mut q4_0 = vec![ggml::BlockQ4_0 { d: f16::ZERO, qs: [0; 16] }; n_blocks];
        let mut q4_1 = vec![ggml::BlockQ4_1 { d: f16::ZERO, m: f16::ZERO, qs: [0; 16] }; n_blocks];
        let mut q8_0 = vec![ggml::BlockQ8_0 { d: f16::ZERO, qs: [0; 32] }; n_blocks];
        ggml::quantize_q4_0(&weights, &mut q4_0);
        ggml::quantize_q4_1(&weights, &mut q4_1);
        ggml::quantize_q8_0(&weights, &mut q8_0);
        let mut expected = [vec![0.0; rows * cols], vec![0.0; rows * cols], vec![0.0; rows * cols]];
        ggml::dequantize_q4_0(&q4_0, &mut expected[0]);
        ggml::dequantize_q4_1(&q4_1, &mut expected[1]);
        ggml::dequantize_q8_0(&q8_0, &mut expected[2]);
        for (grid, expected) in [Grid::Q4_0, Grid::Q4_1, Grid::Q8_0].into_iter().zip(&expected) {
            for (b, block) in weights.chunks_exact(32).enumerate() {
                let params = grid.params(block);
                for (j, &x) in block.iter().enumerate() {
                    let (q, value) = params.quantize(x);
                    assert_eq!(value.to_bits(), expected[b * 32 + j].to_bits(), "{grid:?} block {b} value {j}");
                    let stored = match grid {
                        Grid::Q4_0 => ((q4_0[b].qs[j % 16] >> (4 * (j / 16))) & 15) as i8,
                        Grid::Q4_1 => ((q4_1[b].qs[j % 16] >> (4 * (j / 16))) & 15) as i8,
                        _ => q8_0[b].qs[j],
                    };
                    assert_eq!(q, stored, "{grid:?} block {b} value {j}");
                }
            }
        }
    }

    #[test]
    fn values_outside_the_group_range_clamp() {
        let params = Grid::Q4_0.params(&[1.0, -0.5]);
        assert_eq!(params.quantize(-3.0).0, 15);
        assert_eq!(params.quantize(3.0).0, 0);
        let params = Grid::Q4_1.params(&[1.0, -0.5]);
        assert_eq!(params.quantize(-3.0).0, 0);
        assert_eq!(params.quantize(3.0).0, 15);
        let params = Grid::Q8_0.params(&[1.0, -0.5]);
        assert_eq!(params.quantize(-3.0).0, -127);
        let params = Grid::Int("int4-channel".parse().unwrap()).params(&[1.0, -0.5]);
        assert_eq!(params.quantize(-3.0).0, -8);
        assert!(matches!(Grid::new(Scheme::F16), Err(Error::UnsupportedScheme { .. })));
    }
}
