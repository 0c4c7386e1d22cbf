//! Losses over `[rows, classes]` logits: Hinton KD, soft-target and hard-label cross-entropy, and
//! their mix.

use crate::error::{Error, check_finite, check_len, check_temperature};
use crate::softmax::{kl_row, log_softmax};
use crate::{Loss, Shape};

/// Sums over the rows of a temperature-scaled student/teacher pair, before any averaging.
struct SoftSums {
    /// `Σ_rows KL(p_t || p_s)`.
    kl: f64,
    /// `Σ_rows −Σ p_t log p_s`.
    cross_entropy: f64,
    /// `T · (p_s − p_t) / rows`, the gradient both KD and soft-target CE share.
    grad: Vec<f32>,
}

fn soft_sums(student: &[f32], teacher: &[f32], shape: Shape, temperature: f32) -> Result<SoftSums, Error> {
    let dims = [shape.rows, shape.cols];
    check_len("student", student.len(), &dims)?;
    check_len("teacher", teacher.len(), &dims)?;
    check_temperature(temperature)?;
    check_finite("student", student, 0)?;
    check_finite("teacher", teacher, 0)?;

    let temperature = f64::from(temperature);
    let grad_scale = temperature / shape.rows as f64;
    let mut log_student = vec![0.0f64; shape.cols];
    let mut log_teacher = vec![0.0f64; shape.cols];
    let mut grad = vec![0.0f32; student.len()];
    let (mut kl, mut cross_entropy) = (0.0f64, 0.0f64);
    let rows = student.chunks_exact(shape.cols).zip(teacher.chunks_exact(shape.cols));
    for ((student_row, teacher_row), grad_row) in rows.zip(grad.chunks_exact_mut(shape.cols)) {
        log_softmax(student_row, temperature, &mut log_student);
        log_softmax(teacher_row, temperature, &mut log_teacher);
        kl += kl_row(&log_teacher, &log_student);
        for ((dst, &ls), &lt) in grad_row.iter_mut().zip(&log_student).zip(&log_teacher) {
            let p_teacher = lt.exp();
            cross_entropy -= p_teacher * ls;
            *dst = (grad_scale * (ls.exp() - p_teacher)) as f32;
        }
    }
    Ok(SoftSums { kl, cross_entropy, grad })
}

/// Hinton's distillation loss: `T² · KL(softmax(t/T) || softmax(s/T))`, averaged over rows.
///
/// This is PyTorch's `F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1),
/// reduction="batchmean") * T * T` with the logits flattened to `[rows, cols]` (`batchmean`
/// divides by the number of rows only). The gradient with respect to `student` is
/// `T · (p_s − p_t) / rows`.
///
/// # Errors
/// [`Error::Length`], [`Error::EmptyShape`] or [`Error::ShapeOverflow`] for slices that do not
/// match `shape`, [`Error::Temperature`] unless `0 < temperature < ∞`, and [`Error::NonFinite`]
/// for NaN or infinite logits.
pub fn kd_kl(student: &[f32], teacher: &[f32], shape: Shape, temperature: f32) -> Result<Loss, Error> {
    let sums = soft_sums(student, teacher, shape, temperature)?;
    let scale = f64::from(temperature).powi(2) / shape.rows as f64;
    Ok(Loss { value: scale * sums.kl, grad: sums.grad })
}

/// Soft-target cross-entropy: `T² · (−Σ softmax(t/T) · log_softmax(s/T))`, averaged over rows.
///
/// This is PyTorch's `F.cross_entropy(s / T, F.softmax(t / T, -1)) * T * T` (probability targets,
/// mean over rows). It equals [`kd_kl`] plus `T²` times the mean teacher entropy, a constant for the student, so the
/// gradient is the same `T · (p_s − p_t) / rows`. Use it when the reported number should be a
/// cross-entropy (it is never below the teacher's entropy) rather than a divergence.
///
/// # Errors
/// As [`kd_kl`].
pub fn soft_cross_entropy(student: &[f32], teacher: &[f32], shape: Shape, temperature: f32) -> Result<Loss, Error> {
    let sums = soft_sums(student, teacher, shape, temperature)?;
    let scale = f64::from(temperature).powi(2) / shape.rows as f64;
    Ok(Loss { value: scale * sums.cross_entropy, grad: sums.grad })
}

/// Hard-label cross-entropy at temperature 1, averaged over the rows whose label is not
/// `ignore_index`, as PyTorch's `F.cross_entropy(s, labels, ignore_index=...)` with the default
/// mean reduction.
///
/// `labels` holds one class index per row (`i64`, as torch stores them); pass [`IGNORE_INDEX`]
/// (-100) for torch's default. Ignored rows get a zero gradient; the others get
/// `(softmax(s) − onehot(label)) / kept_rows`. When every row is ignored the loss is 0 with a
/// zero gradient (PyTorch returns NaN there), so a fully padded batch contributes nothing.
///
/// # Errors
/// [`Error::Length`], [`Error::EmptyShape`] or [`Error::ShapeOverflow`] for slices that do not
/// match `shape` (`labels` must hold `rows` entries), [`Error::Label`] for a label outside
/// `0..cols` that is not `ignore_index`, and [`Error::NonFinite`] for NaN or infinite logits.
///
/// [`IGNORE_INDEX`]: crate::IGNORE_INDEX
pub fn cross_entropy(student: &[f32], labels: &[i64], shape: Shape, ignore_index: i64) -> Result<Loss, Error> {
    check_len("student", student.len(), &[shape.rows, shape.cols])?;
    check_len("labels", labels.len(), &[shape.rows])?;
    check_finite("student", student, 0)?;
    let mut kept_rows = 0usize;
    for (row, &label) in labels.iter().enumerate() {
        if label == ignore_index {
            continue;
        }
        if usize::try_from(label).map_or(true, |class| class >= shape.cols) {
            return Err(Error::Label { row, label, classes: shape.cols, ignore_index });
        }
        kept_rows += 1;
    }

    let mut grad = vec![0.0f32; student.len()];
    if kept_rows == 0 {
        return Ok(Loss { value: 0.0, grad });
    }
    let inv_kept = 1.0 / kept_rows as f64;
    let mut log_student = vec![0.0f64; shape.cols];
    let mut total = 0.0f64;
    let rows = student.chunks_exact(shape.cols).zip(labels).zip(grad.chunks_exact_mut(shape.cols));
    for ((student_row, &label), grad_row) in rows {
        if label == ignore_index {
            continue;
        }
        // The label was range-checked above.
        let class = label as usize;
        log_softmax(student_row, 1.0, &mut log_student);
        total -= log_student[class];
        for (dst, &ls) in grad_row.iter_mut().zip(&log_student) {
            *dst = (inv_kept * ls.exp()) as f32;
        }
        grad_row[class] = (inv_kept * (log_student[class].exp() - 1.0)) as f32;
    }
    Ok(Loss { value: total * inv_kept, grad })
}

/// The usual distillation objective: `alpha · kd_kl(T) + (1 − alpha) · cross_entropy`.
///
/// Both parts and their gradients are those of [`kd_kl`] and [`cross_entropy`]; the gradient is
/// mixed with the same weights. `alpha = 1` is pure distillation, `alpha = 0` pure supervision.
///
/// # Errors
/// Those of [`kd_kl`] and [`cross_entropy`], and [`Error::Alpha`] unless `0 ≤ alpha ≤ 1`.
pub fn kd_mix(
    student: &[f32],
    teacher: &[f32],
    labels: &[i64],
    shape: Shape,
    temperature: f32,
    alpha: f32,
    ignore_index: i64,
) -> Result<Loss, Error> {
    if !(0.0..=1.0).contains(&alpha) {
        return Err(Error::Alpha { value: alpha });
    }
    let distill = kd_kl(student, teacher, shape, temperature)?;
    let hard = cross_entropy(student, labels, shape, ignore_index)?;
    let alpha = f64::from(alpha);
    let grad = distill
        .grad
        .iter()
        .zip(&hard.grad)
        .map(|(&kd, &ce)| (alpha * f64::from(kd) + (1.0 - alpha) * f64::from(ce)) as f32)
        .collect();
    Ok(Loss { value: alpha * distill.value + (1.0 - alpha) * hard.value, grad })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IGNORE_INDEX;

    const SHAPE: Shape = Shape { rows: 2, cols: 3 };
    const STUDENT: [f32; 6] = [0.5, -1.0, 2.0, 0.0, 0.25, -0.75];
    const TEACHER: [f32; 6] = [1.0, 0.0, 1.5, -0.5, 0.75, 0.0];

    #[test]
    fn kd_matches_a_hand_computed_row() {
        // One row, T = 1: KL(p || q) with p = softmax(t), q = softmax(s).
        let shape = Shape { rows: 1, cols: 3 };
        let loss = kd_kl(&STUDENT[..3], &TEACHER[..3], shape, 1.0).unwrap();
        let softmax = |row: &[f32]| {
            let total: f64 = row.iter().map(|&v| f64::from(v).exp()).sum();
            row.iter().map(|&v| f64::from(v).exp() / total).collect::<Vec<_>>()
        };
        let (q, p) = (softmax(&STUDENT[..3]), softmax(&TEACHER[..3]));
        let expected: f64 = p.iter().zip(&q).map(|(p, q)| p * (p / q).ln()).sum();
        assert!((loss.value - expected).abs() < 1e-12, "{} vs {expected}", loss.value);
        for ((g, p), q) in loss.grad.iter().zip(&p).zip(&q) {
            assert!((f64::from(*g) - (q - p)).abs() < 1e-7);
        }
    }

    #[test]
    fn soft_cross_entropy_is_kd_plus_scaled_teacher_entropy() {
        let temperature = 3.0f32;
        let kd = kd_kl(&STUDENT, &TEACHER, SHAPE, temperature).unwrap();
        let soft = soft_cross_entropy(&STUDENT, &TEACHER, SHAPE, temperature).unwrap();
        let mut entropy = 0.0;
        for row in TEACHER.chunks(3) {
            let mut log_p = [0.0f64; 3];
            log_softmax(row, f64::from(temperature), &mut log_p);
            entropy -= log_p.iter().map(|lp| lp.exp() * lp).sum::<f64>();
        }
        let expected = kd.value + 9.0 * entropy / 2.0;
        assert!((soft.value - expected).abs() < 1e-12, "{} vs {expected}", soft.value);
        assert_eq!(kd.grad, soft.grad);
    }

    #[test]
    fn ignored_rows_drop_out_of_the_mean_and_the_gradient() {
        let both = cross_entropy(&STUDENT, &[2, IGNORE_INDEX], SHAPE, IGNORE_INDEX).unwrap();
        let first = cross_entropy(&STUDENT[..3], &[2], Shape { rows: 1, cols: 3 }, IGNORE_INDEX).unwrap();
        assert_eq!(both.value, first.value);
        assert_eq!(&both.grad[..3], &first.grad[..]);
        assert_eq!(&both.grad[3..], &[0.0; 3]);
    }

    #[test]
    fn a_fully_ignored_batch_costs_nothing() {
        let loss = cross_entropy(&STUDENT, &[7, 7], SHAPE, 7).unwrap();
        assert_eq!(loss.value, 0.0);
        assert!(loss.grad.iter().all(|&g| g == 0.0));
    }

    #[test]
    fn cross_entropy_gradient_rows_sum_to_zero() {
        let loss = cross_entropy(&STUDENT, &[0, 1], SHAPE, IGNORE_INDEX).unwrap();
        for row in loss.grad.chunks(3) {
            assert!(row.iter().map(|&g| f64::from(g)).sum::<f64>().abs() < 1e-7);
        }
        assert!(loss.grad[0] < 0.0 && loss.grad[4] < 0.0);
    }

    #[test]
    fn mix_end_points_are_the_pure_losses() {
        let labels = [1, 0];
        let kd = kd_kl(&STUDENT, &TEACHER, SHAPE, 2.0).unwrap();
        let ce = cross_entropy(&STUDENT, &labels, SHAPE, IGNORE_INDEX).unwrap();
        let only_kd = kd_mix(&STUDENT, &TEACHER, &labels, SHAPE, 2.0, 1.0, IGNORE_INDEX).unwrap();
        let only_ce = kd_mix(&STUDENT, &TEACHER, &labels, SHAPE, 2.0, 0.0, IGNORE_INDEX).unwrap();
        assert_eq!(only_kd, kd);
        assert_eq!(only_ce, ce);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let labels = [0, 1];
        assert_eq!(
            kd_kl(&STUDENT[..5], &TEACHER, SHAPE, 1.0),
            Err(Error::Length { name: "student", dims: vec![2, 3], expected: 6, found: 5 })
        );
        assert_eq!(
            kd_kl(&STUDENT, &TEACHER[..4], SHAPE, 1.0),
            Err(Error::Length { name: "teacher", dims: vec![2, 3], expected: 6, found: 4 })
        );
        for temperature in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            assert!(matches!(kd_kl(&STUDENT, &TEACHER, SHAPE, temperature), Err(Error::Temperature { .. })));
        }
        for alpha in [-0.01, 1.01, f32::NAN] {
            let result = kd_mix(&STUDENT, &TEACHER, &labels, SHAPE, 1.0, alpha, IGNORE_INDEX);
            assert!(matches!(result, Err(Error::Alpha { .. })), "{result:?}");
        }
        assert_eq!(
            cross_entropy(&STUDENT, &[0, 3], SHAPE, IGNORE_INDEX),
            Err(Error::Label { row: 1, label: 3, classes: 3, ignore_index: IGNORE_INDEX })
        );
        assert!(matches!(cross_entropy(&STUDENT, &[-1, 0], SHAPE, IGNORE_INDEX), Err(Error::Label { row: 0, .. })));
        assert!(matches!(
            cross_entropy(&STUDENT, &[0], SHAPE, IGNORE_INDEX),
            Err(Error::Length { name: "labels", .. })
        ));
        assert_eq!(
            kd_kl(&[], &[], Shape { rows: 0, cols: 3 }, 1.0),
            Err(Error::EmptyShape { name: "student", dims: vec![0, 3] })
        );
        assert!(matches!(
            kd_kl(&[], &[], Shape { rows: usize::MAX, cols: 2 }, 1.0),
            Err(Error::ShapeOverflow { name: "student", .. })
        ));
        let mut with_nan = STUDENT;
        with_nan[4] = f32::NAN;
        assert!(matches!(
            kd_kl(&STUDENT, &with_nan, SHAPE, 1.0),
            Err(Error::NonFinite { name: "teacher", index: 4, .. })
        ));
        let mut with_inf = STUDENT;
        with_inf[1] = f32::NEG_INFINITY;
        assert!(matches!(
            cross_entropy(&with_inf, &labels, SHAPE, IGNORE_INDEX),
            Err(Error::NonFinite { name: "student", index: 1, .. })
        ));
    }
}
