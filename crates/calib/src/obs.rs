//! The OBS column sweep: see [`obs_sweep`].

use std::ops::Range;

use faer::linalg::matmul::matmul;
use faer::linalg::solvers::DenseSolveCore;
use faer::{Accum, Mat, MatMut, MatRef, Par, Side};

use crate::error::{check_len, check_weights, checked_len};
use crate::{Error, Result};

/// Cholesky factorisations tried before [`Error::NotPositiveDefinite`], each with 10 times the
/// damping of the one before.
pub const MAX_ATTEMPTS: usize = 4;

/// Settings of the sweep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SweepOptions {
    /// Damping as a fraction of the mean diagonal of `H` (GPTQ's `percdamp`): 0.01.
    pub damp: f64,
    /// Columns per block of the lazy batch update: 128.
    pub block_size: usize,
    /// Visit the columns by descending `diag(H)` (GPTQ's `act_order` / `desc_act`): false.
    pub act_order: bool,
}

impl Default for SweepOptions {
    fn default() -> SweepOptions {
        SweepOptions { damp: 0.01, block_size: 128, act_order: false }
    }
}

/// What a sweep did besides the weights.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepReport {
    /// The damping fraction the Cholesky factorisations succeeded with.
    pub damp: f64,
    /// Original indices of the dead columns (`H_jj == 0`), whose weights were set to zero.
    pub dead_columns: Vec<usize>,
    /// The OBS loss the reference reports: the sum over all weights of
    /// `(w - q)^2 / [H^-1]_jj^2 / 2`, with `[H^-1]_jj` the diagonal of `U`.
    pub loss: f64,
    /// Sweep order: position `k` visited original column `order[k]`.
    pub order: Vec<usize>,
}

/// The new weights of a sweep and its report.
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep {
    /// Row-major `[rows, cols]`, in the original column order.
    pub weights: Vec<f32>,
    /// Damping, dead columns, loss and order.
    pub report: SweepReport,
}

/// The state a [`ColumnRule`] sees when it decides one column.
///
/// Columns are addressed by their sweep position `k` (equal to the original column without
/// `act_order`). The current weights of column `k` are exact (every update so far applied) for
/// `k` in the current [block](SweepState::block); later columns hold the weights as of the start
/// of the current block (the lazy update has not reached them yet).
#[derive(Debug)]
pub struct SweepState<'a> {
    position: usize,
    block: Range<usize>,
    rows: usize,
    columns: &'a [f64],
    hinv_diag: &'a [f64],
    order: &'a [usize],
}

impl SweepState<'_> {
    /// Sweep position of the column being decided.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Original index of the column being decided.
    pub fn original_column(&self) -> usize {
        self.order[self.position]
    }

    /// Original index of the column at sweep position `k`.
    ///
    /// # Panics
    /// If `k >= cols`.
    pub fn original_of(&self, k: usize) -> usize {
        self.order[k]
    }

    /// Sweep positions of the current block.
    pub fn block(&self) -> Range<usize> {
        self.block.clone()
    }

    /// Number of rows (output channels).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.order.len()
    }

    /// Current weights of the column at sweep position `k`, one per row (see the type's docs
    /// for how current they are).
    ///
    /// # Panics
    /// If `k >= cols`.
    pub fn column(&self, k: usize) -> &[f64] {
        &self.columns[k * self.rows..(k + 1) * self.rows]
    }

    /// The weights of the column being decided.
    pub fn current(&self) -> &[f64] {
        self.column(self.position)
    }

    /// `U_kk`, the diagonal of the upper Cholesky factor of `H^-1` at sweep position `k`: the
    /// `[H^-1]_jj` of the OBS formulas (in the sweep's own, already reduced, sense).
    ///
    /// # Panics
    /// If `k >= cols`.
    pub fn hinv_diag(&self, k: usize) -> f64 {
        self.hinv_diag[k]
    }
}

/// Decides the new value of each column during the sweep.
///
/// `dst` (one value per row) starts as a copy of [`SweepState::current`]; the rule overwrites
/// the entries it changes. Closures `FnMut(&SweepState<'_>, &mut [f64])` are rules.
pub trait ColumnRule {
    /// Writes the new column at `state.position()` into `dst`.
    fn column(&mut self, state: &SweepState<'_>, dst: &mut [f64]);
}

impl<F: FnMut(&SweepState<'_>, &mut [f64])> ColumnRule for F {
    fn column(&mut self, state: &SweepState<'_>, dst: &mut [f64]) {
        self(state, dst)
    }
}

/// The factored Hessian: `U` (row-major, upper triangle meaningful) in sweep order.
struct Factored {
    upper: Vec<f64>,
    damp: f64,
}

/// Checks the Hessian and returns the sweep order.
fn check_hessian(hessian: &[f64], cols: usize, act_order: bool) -> Result<Vec<usize>> {
    check_len("hessian", checked_len(cols, cols)?, hessian.len())?;
    if let Some(index) = hessian.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFiniteHessian { row: index / cols, col: index % cols, value: hessian[index] });
    }
    let mut order: Vec<usize> = (0..cols).collect();
    if act_order {
        // A stable sort keeps equal diagonals in index order.
        order.sort_by(|&a, &b| hessian[b * cols + b].total_cmp(&hessian[a * cols + a]));
    }
    Ok(order)
}

/// Steps 1 to 3 of the module docs on the permuted Hessian; `dead` receives the dead sweep
/// positions.
fn factor(hessian: &[f64], order: &[usize], damp: f64, dead: &mut Vec<usize>) -> Result<Factored> {
    let cols = order.len();
    let mut base = Mat::from_fn(cols, cols, |a, b| hessian[order[a] * cols + order[b]]);
    dead.clear();
    for k in 0..cols {
        if base[(k, k)] == 0.0 {
            base[(k, k)] = 1.0;
            dead.push(k);
        }
    }
    let mean_diag = if cols == 0 { 0.0 } else { (0..cols).map(|k| base[(k, k)]).sum::<f64>() / cols as f64 };
    let mut fraction = damp;
    for attempt in 0..MAX_ATTEMPTS {
        fraction = damp * 10f64.powi(attempt as i32);
        let mut damped = base.clone();
        for k in 0..cols {
            damped[(k, k)] += fraction * mean_diag;
        }
        // H^-1 through the Cholesky factor of H, then H^-1 = L L^T with L lower, so U = L^T.
        let upper = damped
            .llt(Side::Lower)
            .ok()
            .map(|llt| llt.inverse())
            .and_then(|inverse| inverse.llt(Side::Lower).ok())
            .map(|llt| {
                let lower = llt.L();
                let mut upper = vec![0.0; cols * cols];
                for i in 0..cols {
                    for j in i..cols {
                        upper[i * cols + j] = lower[(j, i)];
                    }
                }
                upper
            })
            .filter(|upper| upper.iter().all(|v| v.is_finite()));
        if let Some(upper) = upper {
            return Ok(Factored { upper, damp: fraction });
        }
    }
    Err(Error::NotPositiveDefinite { cols, damp: fraction, attempts: MAX_ATTEMPTS })
}

/// The Optimal Brain Surgeon column sweep that GPTQ (Frantar et al. 2022) and SparseGPT
/// (Frantar & Alistarh 2023) share.
///
/// Given a weight `W` (`[rows, cols]`) and the Hessian `H = X^T X` of the layer's input, the
/// sweep visits the columns in order; a [`ColumnRule`] decides each column's new value `q`
/// (quantized, or with some entries pruned), and the error `(w - q) / [H^-1]_jj` is spread over
/// the columns not yet visited, weighted by row `j` of the upper Cholesky factor `U` of `H^-1`
/// (`H^-1 = U^T U`), so that the layer output `W X^T` changes as little as possible.
///
/// Preparation, as the reference code does it:
/// 1. dead columns (`H_jj == 0`, an input that was always zero) get `H_jj = 1` and `W[:, j] = 0`;
/// 2. damping `lambda = damp * mean(diag(H))` (`damp` = 1 % by default) is added to the diagonal;
/// 3. `H^-1` from the Cholesky factor of `H`, then the upper Cholesky factor of `H^-1`.
///
/// When either Cholesky factorisation fails (a Hessian that is singular or indefinite in floating
/// point even after damping), it is retried from the original `H` with the damping fraction
/// multiplied by 10, up to [`MAX_ATTEMPTS`] factorisations in all (1 %, 10 %, 100 %, 1000 % by
/// default); [`SweepReport::damp`] tells which one succeeded. With damping 10x the mean diagonal
/// the problem is close to round-to-nearest, so failing after that means the Hessian is garbage,
/// and [`Error::NotPositiveDefinite`] says so.
///
/// The columns are swept in blocks (128 by default): inside a block the error is propagated
/// column by column; the columns after the block receive the whole block's error at once as one
/// matrix product (the "lazy batch update" of GPTQ), which is where the time goes.
///
/// With `act_order`, the columns are visited by descending `diag(H)` (ties by lower index) and
/// the result is permuted back; [`SweepState`] gives each rule both the sweep position and the
/// original column.
///
/// The sweep runs over the row-major `[rows, cols]` `weights` with the row-major
/// `[cols, cols]` Hessian `hessian`: any positive multiple of `X^T X`, stored whole and
/// symmetric (the factorisation reads one triangle of the matrix permuted by `act_order`).
///
/// # Errors
/// [`Error::ShapeMismatch`] / [`Error::TooLarge`] for slices that do not match the shapes,
/// [`Error::NonFiniteWeight`] and [`Error::NonFiniteHessian`] for NaN or infinite inputs,
/// [`Error::BadDamping`] for a damping that is not finite and above 0 (the Cholesky factor of
/// an undamped `X^T X` with fewer tokens than columns does not exist), [`Error::BadBlockSize`]
/// for a block of 0 columns, and [`Error::NotPositiveDefinite`] when every retry failed.
pub fn obs_sweep(
    weights: &[f32],
    rows: usize,
    cols: usize,
    hessian: &[f64],
    options: &SweepOptions,
    rule: &mut impl ColumnRule,
) -> Result<Sweep> {
    check_weights(weights, rows, cols)?;
    if !(options.damp.is_finite() && options.damp > 0.0) {
        return Err(Error::BadDamping { damp: options.damp });
    }
    if options.block_size == 0 {
        return Err(Error::BadBlockSize { block_size: 0 });
    }
    let order = check_hessian(hessian, cols, options.act_order)?;
    let mut dead = Vec::new();
    let Factored { upper, damp } = factor(hessian, &order, options.damp, &mut dead)?;

    // The working copy is W^T in sweep order: each column of W is contiguous.
    let mut columns = vec![0.0f64; weights.len()];
    for (k, &col) in order.iter().enumerate() {
        let dst = &mut columns[k * rows..(k + 1) * rows];
        for (r, dst) in dst.iter_mut().enumerate() {
            *dst = f64::from(weights[r * cols + col]);
        }
    }
    for &k in &dead {
        columns[k * rows..(k + 1) * rows].fill(0.0);
    }
    let hinv_diag: Vec<f64> = (0..cols).map(|k| upper[k * cols + k]).collect();

    let mut loss = 0.0;
    let mut new_column = vec![0.0f64; rows];
    let mut errors = Vec::with_capacity(options.block_size.min(cols.max(1)) * rows);
    for start in (0..cols).step_by(options.block_size) {
        let end = (start + options.block_size).min(cols);
        errors.clear();
        for k in start..end {
            new_column.copy_from_slice(&columns[k * rows..(k + 1) * rows]);
            let state = SweepState {
                position: k,
                block: start..end,
                rows,
                columns: &columns,
                hinv_diag: &hinv_diag,
                order: &order,
            };
            rule.column(&state, &mut new_column);
            let d = hinv_diag[k];
            let (done, rest) = columns.split_at_mut((k + 1) * rows);
            let current = &mut done[k * rows..];
            let error_start = errors.len();
            for (w, &q) in current.iter_mut().zip(&new_column) {
                let error = (*w - q) / d;
                loss += error * error / 2.0;
                errors.push(error);
                *w = q;
            }
            let error = &errors[error_start..];
            let u_row = &upper[k * cols..(k + 1) * cols];
            for (j, later) in (k + 1..end).zip(rest.chunks_exact_mut(rows.max(1))) {
                let u = u_row[j];
                for (w, e) in later.iter_mut().zip(error) {
                    *w -= e * u;
                }
            }
        }
        if end < cols && rows > 0 {
            // columns[end..] (as [cols - end, rows]) -= U[start..end, end..]^T * errors.
            let block_upper = MatRef::from_row_major_slice(&upper[start * cols..end * cols], end - start, cols);
            let block_upper = block_upper.subcols(end, cols - end);
            let errors = MatRef::from_row_major_slice(&errors, end - start, rows);
            let later = MatMut::from_row_major_slice_mut(&mut columns[end * rows..], cols - end, rows);
            matmul(later, Accum::Add, block_upper.transpose(), errors, -1.0, Par::Seq);
        }
    }

    let mut out = vec![0.0f32; weights.len()];
    for (k, &col) in order.iter().enumerate() {
        for (r, &w) in columns[k * rows..(k + 1) * rows].iter().enumerate() {
            out[r * cols + col] = w as f32;
        }
    }
    let dead_columns = dead.iter().map(|&k| order[k]).collect();
    Ok(Sweep { weights: out, report: SweepReport { damp, dead_columns, loss, order } })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Rng, gram};

    /// The sweep with the rule "keep every weight" changes nothing but dead columns.
    #[test]
    fn keeping_every_column_is_the_identity() {
        let (rows, cols, tokens) = (5, 40, 100);
        let mut rng = Rng::new(9);
        let weights: Vec<f32> = (0..rows * cols).map(|_| rng.normal()).collect();
        let mut x: Vec<f32> = (0..tokens * cols).map(|_| rng.normal()).collect();
        for t in 0..tokens {
            x[t * cols + 7] = 0.0;
        }
        let hessian = gram(&x, tokens, cols);
        for act_order in [false, true] {
            let options = SweepOptions { block_size: 16, act_order, ..SweepOptions::default() };
            let sweep =
                obs_sweep(&weights, rows, cols, &hessian, &options, &mut |_: &SweepState<'_>, _: &mut [f64]| {})
                    .unwrap();
            assert_eq!(sweep.report.dead_columns, [7]);
            assert_eq!(sweep.report.loss, 0.0);
            for r in 0..rows {
                for c in 0..cols {
                    let expected = if c == 7 { 0.0 } else { weights[r * cols + c] };
                    assert_eq!(sweep.weights[r * cols + c], expected);
                }
            }
        }
    }

    /// Zeroing one column with the sweep equals solving the least-squares problem for the
    /// remaining columns (the OBS update is exact for a single removal).
    #[test]
    fn one_removal_is_the_optimal_brain_surgeon_update() {
        let (cols, tokens) = (6, 50);
        let mut rng = Rng::new(1);
        let weights: Vec<f32> = (0..cols).map(|_| rng.normal()).collect();
        let x: Vec<f32> = (0..tokens * cols).map(|_| rng.normal()).collect();
        let hessian = gram(&x, tokens, cols);
        let options = SweepOptions { damp: 1e-12, ..SweepOptions::default() };
        let mut rule = |state: &SweepState<'_>, dst: &mut [f64]| {
            if state.position() == 0 {
                dst[0] = 0.0;
            }
        };
        let sweep = obs_sweep(&weights, 1, cols, &hessian, &options, &mut rule).unwrap();
        // OBS: delta = -w_0 / [H^-1]_00 * H^-1[:, 0], computed here from a plain inverse.
        let h = Mat::from_fn(cols, cols, |i, j| hessian[i * cols + j]);
        let inverse = h.llt(Side::Lower).unwrap().inverse();
        for c in 0..cols {
            let expected = f64::from(weights[c]) - f64::from(weights[0]) / inverse[(0, 0)] * inverse[(c, 0)];
            assert!((f64::from(sweep.weights[c]) - expected).abs() < 1e-5, "{c}: {} vs {expected}", sweep.weights[c]);
        }
    }

    /// The blocked sweep with the Cholesky trick equals the textbook sequential OBS update, which
    /// inverts the damped Hessian of the remaining columns at every step, for every block size.
    #[test]
    fn blocked_sweep_equals_the_sequential_obs_updates() {
        let (rows, cols, tokens) = (3, 24, 40);
        let mut rng = Rng::new(5);
        let weights: Vec<f32> = (0..rows * cols).map(|_| rng.normal()).collect();
        let x: Vec<f32> = (0..tokens * cols).map(|_| rng.normal() + 0.3 * rng.normal()).collect();
        let hessian = gram(&x, tokens, cols);
        // A continuous rule, so that rounding differences cannot flip a decision.
        let rule = |k: usize, w: f64| if k.is_multiple_of(3) { 0.0 } else { 0.75 * w + 0.1 };

        let mean = (0..cols).map(|k| hessian[k * cols + k]).sum::<f64>() / cols as f64;
        let damped = Mat::from_fn(cols, cols, |i, j| hessian[i * cols + j] + if i == j { 0.01 * mean } else { 0.0 });
        let mut expected: Vec<f64> = weights.iter().map(|&w| f64::from(w)).collect();
        for k in 0..cols {
            let rest = cols - k;
            let inverse = damped.as_ref().submatrix(k, k, rest, rest).to_owned().llt(Side::Lower).unwrap().inverse();
            for r in 0..rows {
                let w = expected[r * cols + k];
                let error = (w - rule(k, w)) / inverse[(0, 0)];
                for j in 0..rest {
                    expected[r * cols + k + j] -= error * inverse[(0, j)];
                }
                expected[r * cols + k] = rule(k, w);
            }
        }
        for block_size in [1, 5, 8, 128] {
            let options = SweepOptions { block_size, ..SweepOptions::default() };
            let mut sweep_rule = |state: &SweepState<'_>, dst: &mut [f64]| {
                for w in dst.iter_mut() {
                    *w = rule(state.position(), *w);
                }
            };
            let sweep = obs_sweep(&weights, rows, cols, &hessian, &options, &mut sweep_rule).unwrap();
            for (i, (&got, &want)) in sweep.weights.iter().zip(&expected).enumerate() {
                assert!(
                    (f64::from(got) - want).abs() < 1e-5 * want.abs().max(1.0),
                    "block {block_size}, {i}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn empty_matrices_pass_through() {
        let mut zero = |_: &SweepState<'_>, dst: &mut [f64]| dst.fill(0.0);
        let options = SweepOptions { act_order: true, ..SweepOptions::default() };
        assert_eq!(obs_sweep(&[], 0, 0, &[], &options, &mut zero).unwrap().weights, Vec::<f32>::new());
        assert_eq!(obs_sweep(&[], 3, 0, &[], &options, &mut zero).unwrap().weights, Vec::<f32>::new());
        let sweep = obs_sweep(&[], 0, 2, &[1.0, 0.0, 0.0, 1.0], &options, &mut zero).unwrap();
        assert_eq!(sweep.report.order.len(), 2);
        let gptq = crate::gptq(&[], 0, 64, &vec![0.0; 64 * 64], "q4_0".parse().unwrap(), &options).unwrap();
        assert_eq!(gptq.quantized, crate::Quantized::Q4_0(Vec::new()));
        let gptq = crate::gptq(&[], 2, 0, &[], "int8-channel".parse().unwrap(), &options).unwrap();
        assert!(matches!(gptq.quantized, crate::Quantized::Int(ref m) if m.scales().len() == 2));
    }

    #[test]
    fn act_order_visits_by_descending_diagonal() {
        let hessian = [1.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 3.0];
        let mut seen = Vec::new();
        let options = SweepOptions { act_order: true, ..SweepOptions::default() };
        let mut rule = |state: &SweepState<'_>, _: &mut [f64]| seen.push(state.original_column());
        let sweep = obs_sweep(&[1.0, 2.0, 3.0], 1, 3, &hessian, &options, &mut rule).unwrap();
        assert_eq!(seen, [1, 2, 0]);
        assert_eq!(sweep.report.order, [1, 2, 0]);
        assert_eq!(sweep.weights, [1.0, 2.0, 3.0]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let mut keep = |_: &SweepState<'_>, _: &mut [f64]| {};
        let options = SweepOptions::default();
        let identity = [1.0, 0.0, 0.0, 1.0];
        assert!(matches!(
            obs_sweep(&[1.0; 3], 2, 2, &identity, &options, &mut keep),
            Err(Error::ShapeMismatch { what: "weights", expected: 4, found: 3 })
        ));
        assert!(matches!(
            obs_sweep(&[1.0; 4], 2, 2, &identity[..3], &options, &mut keep),
            Err(Error::ShapeMismatch { what: "hessian", expected: 4, found: 3 })
        ));
        assert!(matches!(
            obs_sweep(&[1.0, f32::INFINITY], 1, 2, &identity, &options, &mut keep),
            Err(Error::NonFiniteWeight { row: 0, col: 1, .. })
        ));
        assert!(matches!(
            obs_sweep(&[1.0; 2], 1, 2, &[1.0, f64::NAN, 0.0, 1.0], &options, &mut keep),
            Err(Error::NonFiniteHessian { row: 0, col: 1, .. })
        ));
        for damp in [0.0, -1.0, f64::NAN] {
            let options = SweepOptions { damp, ..options };
            assert!(matches!(
                obs_sweep(&[1.0; 2], 1, 2, &identity, &options, &mut keep),
                Err(Error::BadDamping { .. })
            ));
        }
        let options0 = SweepOptions { block_size: 0, ..options };
        assert_eq!(
            obs_sweep(&[1.0; 2], 1, 2, &identity, &options0, &mut keep),
            Err(Error::BadBlockSize { block_size: 0 })
        );
        // Strongly indefinite: no damping up to 10x the mean diagonal rescues it.
        let indefinite = [1.0, 0.0, 0.0, -100.0];
        assert_eq!(
            obs_sweep(&[1.0; 2], 1, 2, &indefinite, &options, &mut keep),
            Err(Error::NotPositiveDefinite { cols: 2, damp: 10.0, attempts: MAX_ATTEMPTS })
        );
    }

    #[test]
    fn a_mildly_indefinite_hessian_succeeds_after_more_damping() {
        // Eigenvalues 3 and -1, mean diagonal 1: damping 1 % and 10 % fail, 100 % (+1) leaves
        // a singular matrix in exact arithmetic, 1000 % succeeds.
        let hessian = [1.0, 2.0, 2.0, 1.0];
        let mut keep = |_: &SweepState<'_>, _: &mut [f64]| {};
        let sweep = obs_sweep(&[1.0; 2], 1, 2, &hessian, &SweepOptions::default(), &mut keep).unwrap();
        assert!((sweep.report.damp - 10.0).abs() < 1e-9, "{}", sweep.report.damp);
        let hessian = [1.0, 0.5, 0.5, 1.0];
        let sweep = obs_sweep(&[1.0; 2], 1, 2, &hessian, &SweepOptions::default(), &mut keep).unwrap();
        assert_eq!(sweep.report.damp, 0.01);
    }
}
