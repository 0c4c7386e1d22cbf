//! Losses between hidden states: mean squared error and cosine embedding loss.

use crate::error::{Error, check_finite, check_len};
use crate::{Loss, Shape};

/// The `eps` PyTorch adds to each squared norm in `cosine_embedding_loss` (ATen's `EPSILON`).
///
/// `F.cosine_similarity` uses a different rule (each norm clamped to at least `1e-8`); the loss
/// does not.
pub const COSINE_EPS: f64 = 1e-12;

/// Mean squared error over all elements, as PyTorch's `F.mse_loss(s, t)` (mean reduction).
///
/// The gradient with respect to `student` is `2 (s − t) / n`.
///
/// # Errors
/// [`Error::EmptyShape`] for empty slices, [`Error::Length`] when `teacher` is not as long as
/// `student`, and [`Error::NonFinite`] for NaN or infinite values.
pub fn mse(student: &[f32], teacher: &[f32]) -> Result<Loss, Error> {
    let count = check_len("student", student.len(), &[student.len()])?;
    check_len("teacher", teacher.len(), &[count])?;
    check_finite("student", student, 0)?;
    check_finite("teacher", teacher, 0)?;
    let inv_count = 1.0 / count as f64;
    let mut total = 0.0f64;
    let grad = student
        .iter()
        .zip(teacher)
        .map(|(&s, &t)| {
            let diff = f64::from(s) - f64::from(t);
            total += diff * diff;
            (2.0 * diff * inv_count) as f32
        })
        .collect();
    Ok(Loss { value: total * inv_count, grad })
}

/// Cosine embedding loss with target +1: the mean over rows of `1 − cos(s_i, t_i)`, as PyTorch's
/// `F.cosine_embedding_loss(s, t, torch.ones(rows))`.
///
/// Like PyTorch, `cos = s·t / sqrt((|s|² + ε)(|t|² + ε))` with ε = [`COSINE_EPS`], so a zero row
/// gives `cos = 0` (loss 1) instead of NaN. The gradient of row `i` with respect to `s_i` is
/// `−(t_i − (s·t / (|s|² + ε)) s_i) / (sqrt((|s|² + ε)(|t|² + ε)) · rows)`; it is finite for
/// every finite input (large, about `t / (1e-6 |t|)`, for a zero student row facing a non-zero
/// teacher row).
///
/// # Errors
/// [`Error::Length`], [`Error::EmptyShape`] or [`Error::ShapeOverflow`] for slices that do not
/// match `shape`, and [`Error::NonFinite`] for NaN or infinite values.
pub fn cosine_embedding(student: &[f32], teacher: &[f32], shape: Shape) -> Result<Loss, Error> {
    let dims = [shape.rows, shape.cols];
    check_len("student", student.len(), &dims)?;
    check_len("teacher", teacher.len(), &dims)?;
    check_finite("student", student, 0)?;
    check_finite("teacher", teacher, 0)?;
    let inv_rows = 1.0 / shape.rows as f64;
    let mut grad = vec![0.0f32; student.len()];
    let mut total = 0.0f64;
    let rows = student.chunks_exact(shape.cols).zip(teacher.chunks_exact(shape.cols));
    for ((student_row, teacher_row), grad_row) in rows.zip(grad.chunks_exact_mut(shape.cols)) {
        let (mut dot, mut student_sq, mut teacher_sq) = (0.0f64, COSINE_EPS, COSINE_EPS);
        for (&s, &t) in student_row.iter().zip(teacher_row) {
            let (s, t) = (f64::from(s), f64::from(t));
            dot += s * t;
            student_sq += s * s;
            teacher_sq += t * t;
        }
        // Squares of finite f32 values summed in f64 cannot overflow for any realistic width,
        // and the product of the two stays below f64::MAX for rows shorter than about 1e77.
        let denom = (student_sq * teacher_sq).sqrt();
        total += 1.0 - dot / denom;
        let projection = dot / student_sq;
        let scale = inv_rows / denom;
        for ((dst, &s), &t) in grad_row.iter_mut().zip(student_row).zip(teacher_row) {
            *dst = (-(f64::from(t) - projection * f64::from(s)) * scale) as f32;
        }
    }
    Ok(Loss { value: total * inv_rows, grad })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mse_of_a_known_pair() {
        let loss = mse(&[1.0, 2.0, 3.0, 4.0], &[1.0, 0.0, 3.0, 5.0]).unwrap();
        assert_eq!(loss.value, (4.0 + 1.0) / 4.0);
        assert_eq!(loss.grad, vec![0.0, 1.0, 0.0, -0.5]);
    }

    #[test]
    fn parallel_rows_cost_nothing_and_opposite_rows_cost_two() {
        let shape = Shape { rows: 2, cols: 2 };
        let loss = cosine_embedding(&[3.0, 4.0, 1.0, 0.0], &[6.0, 8.0, -2.0, 0.0], shape).unwrap();
        assert!((loss.value - (0.0 + 2.0) / 2.0).abs() < 1e-12, "{}", loss.value);
        // Moving along the student's own direction does not change the cosine.
        assert!(loss.grad[0] * 3.0 + loss.grad[1] * 4.0 < 1e-9);
    }

    #[test]
    fn zero_rows_give_finite_values() {
        let shape = Shape { rows: 2, cols: 3 };
        let student = [0.0, 0.0, 0.0, 1.0, 2.0, 3.0];
        let teacher = [1.0, -1.0, 0.5, 0.0, 0.0, 0.0];
        let loss = cosine_embedding(&student, &teacher, shape).unwrap();
        assert_eq!(loss.value, 1.0);
        assert!(loss.grad.iter().all(|g| g.is_finite()), "{:?}", loss.grad);
        assert_eq!(&loss.grad[3..], &[0.0; 3]);
        let both_zero = cosine_embedding(&[0.0; 3], &[0.0; 3], Shape { rows: 1, cols: 3 }).unwrap();
        assert_eq!(both_zero.value, 1.0);
        assert_eq!(both_zero.grad, vec![0.0; 3]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert_eq!(mse(&[], &[]), Err(Error::EmptyShape { name: "student", dims: vec![0] }));
        assert_eq!(
            mse(&[1.0, 2.0], &[1.0]),
            Err(Error::Length { name: "teacher", dims: vec![2], expected: 2, found: 1 })
        );
        assert!(matches!(mse(&[1.0], &[f32::NAN]), Err(Error::NonFinite { name: "teacher", index: 0, .. })));
        assert!(matches!(
            cosine_embedding(&[1.0; 5], &[1.0; 6], Shape { rows: 2, cols: 3 }),
            Err(Error::Length { name: "student", expected: 6, found: 5, .. })
        ));
    }
}
