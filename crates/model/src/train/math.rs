//! The numerical pieces of training: matrix products built on the dense GEMM, LayerNorm and GELU
//! with their derivatives, softmax, and a seeded generator for initialisation.

use std::f64::consts::{FRAC_1_SQRT_2, PI};

/// `a` `[rows, cols]` transposed into `[cols, rows]`, row-major.
pub(crate) fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; a.len()];
    transpose_into(a, rows, cols, &mut t);
    t
}

/// [`transpose`] into `t` (`[cols, rows]`, every value overwritten), for callers that reuse
/// their buffers (the encoder's attention transposes V with it).
pub(crate) fn transpose_into(a: &[f32], rows: usize, cols: usize, t: &mut [f32]) {
    assert_eq!(a.len(), rows * cols, "transpose: {} values are not {rows} x {cols}", a.len());
    assert_eq!(t.len(), a.len(), "transpose: the output holds {} values, not {}", t.len(), a.len());
    if cols == 0 {
        return;
    }
    // Eight source rows at a time: eight sequential read streams, and each output row gets
    // eight contiguous values per visit.
    const PANEL: usize = 8;
    let full = rows - rows % PANEL;
    for (panel_index, panel) in a[..full * cols].chunks_exact(PANEL * cols).enumerate() {
        let row = panel_index * PANEL;
        let sources: [&[f32]; PANEL] = std::array::from_fn(|r| &panel[r * cols..][..cols]);
        for (col, dst_row) in t.chunks_exact_mut(rows).enumerate() {
            let dst = &mut dst_row[row..row + PANEL];
            for (d, source) in dst.iter_mut().zip(&sources) {
                *d = source[col];
            }
        }
    }
    for row in full..rows {
        for (col, &value) in a[row * cols..][..cols].iter().enumerate() {
            t[col * rows + row] = value;
        }
    }
}

/// `a b^T`: `a` `[m, k]`, `b` `[n, k]`, result `[m, n]`.
pub(crate) fn matmul_nt(a: &[f32], m: usize, b: &[f32], n: usize, k: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; m * n];
    if m * n > 0 {
        lathe_quant::dense::linear(a, m, b, n, k, None, &mut y);
    }
    y
}

/// `a b`: `a` `[m, k]`, `b` `[k, n]`, result `[m, n]`.
pub(crate) fn matmul_nn(a: &[f32], m: usize, b: &[f32], k: usize, n: usize) -> Vec<f32> {
    matmul_nt(a, m, &transpose(b, k, n), n, k)
}

/// `a^T b`: `a` `[k, m]`, `b` `[k, n]`, result `[m, n]`.
pub(crate) fn matmul_tn(a: &[f32], k: usize, m: usize, b: &[f32], n: usize) -> Vec<f32> {
    matmul_nt(&transpose(a, k, m), m, &transpose(b, k, n), n, k)
}

/// `dst += src`.
pub(crate) fn add_into(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "add_into: lengths differ");
    dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
}

/// Adds the column sums of `rows` (`[n, width]`) to `dst` (`[width]`), summing in f64.
pub(crate) fn add_column_sums(dst: &mut [f32], rows: &[f32], width: usize) {
    let mut sums = vec![0.0f64; width];
    for row in rows.chunks_exact(width) {
        sums.iter_mut().zip(row).for_each(|(s, &v)| *s += f64::from(v));
    }
    dst.iter_mut().zip(&sums).for_each(|(d, &s)| *d = (f64::from(*d) + s) as f32);
}

/// LayerNorm of one row, as lathe-model's forward computes it (mean and biased variance in
/// f64): writes the output into `row` and the normalised values `(x - mean) * rstd` into
/// `normalised`, and returns `rstd = 1 / sqrt(var + eps)`.
pub(crate) fn layer_norm_forward(
    row: &mut [f32],
    weight: &[f32],
    bias: &[f32],
    eps: f64,
    normalised: &mut [f32],
) -> f32 {
    let n = row.len() as f64;
    let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let variance = row.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
    let rstd = 1.0 / (variance + eps).sqrt();
    for (((value, &w), &b), xhat) in row.iter_mut().zip(weight).zip(bias).zip(normalised.iter_mut()) {
        let centred = (f64::from(*value) - mean) * rstd;
        *xhat = centred as f32;
        *value = (centred * f64::from(w) + f64::from(b)) as f32;
    }
    rstd as f32
}

/// The backward of one LayerNorm row: from `d_out`, the saved normalised values and `rstd`,
/// adds the weight and bias gradients into `d_weight`, `d_bias` and returns the input gradient
/// in `d_in` (overwritten). In f64: `dx = rstd (g - mean(g) - xhat mean(g xhat))`, `g = dy w`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_norm_backward(
    d_out: &[f32],
    normalised: &[f32],
    rstd: f32,
    weight: &[f32],
    d_weight: &mut [f32],
    d_bias: &mut [f32],
    d_in: &mut [f32],
) {
    let n = d_out.len() as f64;
    let (mut mean_g, mut mean_gx) = (0.0f64, 0.0f64);
    for ((&dy, &xhat), &w) in d_out.iter().zip(normalised).zip(weight) {
        let g = f64::from(dy) * f64::from(w);
        mean_g += g;
        mean_gx += g * f64::from(xhat);
    }
    mean_g /= n;
    mean_gx /= n;
    let rstd = f64::from(rstd);
    for (i, (&dy, &xhat)) in d_out.iter().zip(normalised).enumerate() {
        d_weight[i] += dy * xhat;
        d_bias[i] += dy;
        let g = f64::from(dy) * f64::from(weight[i]);
        d_in[i] = (rstd * (g - mean_g - f64::from(xhat) * mean_gx)) as f32;
    }
}

/// Terms of the Maclaurin series of erf: `2/sqrt(pi) (-1)^n / (n! (2n + 1))`.
fn erf_series_terms() -> &'static [f64] {
    static TERMS: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    TERMS.get_or_init(|| {
        let mut factorial = 1.0f64;
        (0..64)
            .map(|n| {
                if n > 0 {
                    factorial *= n as f64;
                }
                let sign = if n % 2 == 0 { 1.0 } else { -1.0 };
                2.0 / PI.sqrt() * sign / (factorial * (2 * n + 1) as f64)
            })
            .collect()
    })
}

/// The error function in f64: the Maclaurin series below 2.5 (the largest term there is about
/// 500, so cancellation costs under 3 digits of the 16), and `1 - erfc` from its continued
/// fraction above, where it converges in a few dozen terms.
pub(crate) fn erf(x: f64) -> f64 {
    let magnitude = x.abs();
    if magnitude.is_nan() {
        return x;
    }
    if magnitude < 2.5 {
        let z = x * x;
        let mut power = x;
        let mut sum = 0.0;
        for &term in erf_series_terms() {
            let next = term * power;
            sum += next;
            if next.abs() < 1e-17 * sum.abs() {
                break;
            }
            power *= z;
        }
        return sum;
    }
    let erfc = erfc_large(magnitude);
    if x < 0.0 { erfc - 1.0 } else { 1.0 - erfc }
}

/// `erfc(x)` for `x >= 2.5`: `exp(-x^2) / (sqrt(pi) K)` with the continued fraction
/// `K = x + (1/2) / (x + 1 / (x + (3/2) / (x + ...)))`, evaluated from 60 levels down.
fn erfc_large(x: f64) -> f64 {
    let mut k = x;
    for level in (1..=60).rev() {
        k = x + (level as f64 / 2.0) / k;
    }
    (-x * x).exp() / (PI.sqrt() * k)
}

/// Knots of the normal-distribution table: every 1/32 over [-8, 8]; outside, `Phi` is 0 or 1
/// and `phi` is 0 to within 6e-16.
const TABLE_LIMIT: f64 = 8.0;
const KNOTS_PER_UNIT: f64 = 32.0;
const KNOTS: usize = 2 * 8 * 32 + 1;

/// At each knot: `Phi`, `phi`, and the derivative of `phi`, `-x phi`.
fn normal_table() -> &'static [[f64; 3]] {
    static TABLE: std::sync::OnceLock<Vec<[f64; 3]>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..KNOTS)
            .map(|knot| {
                let x = knot as f64 / KNOTS_PER_UNIT - TABLE_LIMIT;
                let density = (-0.5 * x * x).exp() / (2.0 * PI).sqrt();
                [0.5 * (1.0 + erf(x * FRAC_1_SQRT_2)), density, -x * density]
            })
            .collect()
    })
}

/// `Phi(x)` and `phi(x)`, the standard normal CDF and density, by cubic Hermite interpolation
/// of the table (each value with its exact derivative at the knots). The error is at most
/// `h^4 / 384 max |f''''|` with `h = 1/32`: below 2e-9 for `Phi` and 4e-9 for `phi`, under the
/// f32 rounding of GELU's result, for a few multiply-adds instead of an erf series and an exp.
fn normal_cdf_and_density(x: f64) -> (f64, f64) {
    if x.is_nan() {
        return (x, x);
    }
    if x <= -TABLE_LIMIT {
        return (0.0, 0.0);
    }
    if x >= TABLE_LIMIT {
        return (1.0, 0.0);
    }
    let table = normal_table();
    let position = (x + TABLE_LIMIT) * KNOTS_PER_UNIT;
    let knot = (position.floor() as usize).min(KNOTS - 2);
    let t = position - knot as f64;
    let (left, right) = (table[knot], table[knot + 1]);
    let h = 1.0 / KNOTS_PER_UNIT;
    let (t2, t3) = (t * t, t * t * t);
    let (h00, h10, h01, h11) = (2.0 * t3 - 3.0 * t2 + 1.0, t3 - 2.0 * t2 + t, 3.0 * t2 - 2.0 * t3, t3 - t2);
    let cdf = h00 * left[0] + h10 * h * left[1] + h01 * right[0] + h11 * h * right[1];
    let density = h00 * left[1] + h10 * h * left[2] + h01 * right[1] + h11 * h * right[2];
    (cdf, density)
}

/// GELU in its exact form `x Phi(x)` and its derivative `Phi(x) + x phi(x)`, in f64 from the
/// interpolated table.
pub(crate) fn gelu_and_derivative(x: f32) -> (f32, f32) {
    let x = f64::from(x);
    let (cdf, density) = normal_cdf_and_density(x);
    ((x * cdf) as f32, (cdf + x * density) as f32)
}

/// Softmax of one row over the entries where `keep` is true, in f32 with the maximum
/// subtracted; the others get exactly 0. With nothing kept, every entry gets `1 / len` (as an
/// additive mask of `f32::MIN` gives).
pub(crate) fn masked_softmax(row: &mut [f32], keep: &[bool]) {
    if !keep.iter().any(|&k| k) {
        let uniform = 1.0 / row.len() as f32;
        row.fill(uniform);
        return;
    }
    let max = row.iter().zip(keep).filter(|(_, k)| **k).map(|(v, _)| *v).fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for (value, &k) in row.iter_mut().zip(keep) {
        *value = if k { (*value - max).exp() } else { 0.0 };
        sum += *value;
    }
    let inverse = 1.0 / sum;
    row.iter_mut().for_each(|value| *value *= inverse);
}

/// SplitMix64: a tiny seeded generator, so initialisation is reproducible without a
/// dependency.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal sample (Box-Muller, one of the pair).
    pub(crate) fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * PI * v).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_reference_values() {
        // erf at a few points, from Python's math.erf (rounded to 15 digits).
        let cases = [
            (0.0, 0.0),
            (0.1, 0.112_462_916_018_285),
            (0.5, 0.520_499_877_813_047),
            (1.0, 0.842_700_792_949_715),
            (2.0, 0.995_322_265_018_953),
            (2.5, 0.999_593_047_982_555),
            (3.0, 0.999_977_909_503_001),
            (4.0, 0.999_999_984_582_742),
        ];
        for (x, want) in cases {
            assert!((erf(x) - want).abs() < 1e-14, "erf({x}) = {} not {want}", erf(x));
            assert!((erf(-x) + want).abs() < 1e-14, "erf is odd");
        }
        // Both sides of the switch agree.
        assert!((erf(2.5 - 1e-12) - erf(2.5)).abs() < 1e-13);
    }

    #[test]
    fn the_table_matches_the_series() {
        for i in -1000..=1000 {
            let x = f64::from(i) * 0.00937;
            let (cdf, density) = normal_cdf_and_density(x);
            let exact_cdf = 0.5 * (1.0 + erf(x * FRAC_1_SQRT_2));
            let exact_density = (-0.5 * x * x).exp() / (2.0 * PI).sqrt();
            assert!((cdf - exact_cdf).abs() < 3e-9, "Phi({x}): {cdf} vs {exact_cdf}");
            assert!((density - exact_density).abs() < 5e-9, "phi({x}): {density} vs {exact_density}");
        }
        assert_eq!(normal_cdf_and_density(9.0), (1.0, 0.0));
        assert_eq!(normal_cdf_and_density(-9.0), (0.0, 0.0));
    }

    #[test]
    fn gelu_derivative_matches_differences() {
        for x in [-6.0f32, -3.0, -1.0, -0.3, 0.0, 0.4, 1.5, 3.0, 7.0] {
            let h = 1e-3;
            let numeric = (f64::from(gelu_and_derivative(x + h).0) - f64::from(gelu_and_derivative(x - h).0))
                / f64::from(2.0 * h);
            let (_, analytic) = gelu_and_derivative(x);
            assert!((numeric - f64::from(analytic)).abs() < 2e-3, "x {x}: {numeric} vs {analytic}");
        }
        assert_eq!(gelu_and_derivative(0.0).0, 0.0);
    }

    #[test]
    fn transpose_covers_panels_and_tails() {
        for (rows, cols) in [(0, 3), (3, 0), (1, 1), (8, 5), (13, 7), (17, 16)] {
            let a: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let t = transpose(&a, rows, cols);
            for row in 0..rows {
                for col in 0..cols {
                    assert_eq!(t[col * rows + row], a[row * cols + col], "{rows} x {cols}");
                }
            }
        }
    }

    #[test]
    fn products_agree_with_a_naive_loop() {
        let (m, k, n) = (3, 4, 5);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 2.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32).sin()).collect();
        let naive = |i: usize, j: usize| (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum::<f32>();
        let nn = matmul_nn(&a, m, &b, k, n);
        let tn = matmul_tn(&transpose(&a, m, k), k, m, &b, n);
        for i in 0..m {
            for j in 0..n {
                assert!((nn[i * n + j] - naive(i, j)).abs() < 1e-5);
                assert!((tn[i * n + j] - naive(i, j)).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn masked_softmax_zeroes_masked_entries() {
        let mut row = [1.0f32, 2.0, 100.0];
        masked_softmax(&mut row, &[true, true, false]);
        assert_eq!(row[2], 0.0);
        assert!((row[0] + row[1] - 1.0).abs() < 1e-6);
        let mut none = [5.0f32, -5.0];
        masked_softmax(&mut none, &[false, false]);
        assert_eq!(none, [0.5, 0.5]);
    }
}
