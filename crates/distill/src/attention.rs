//! MiniLM's self-attention distribution transfer: KL between teacher and student attention maps.

use crate::Loss;
use crate::error::{Error, check_finite, check_len};
use crate::softmax::{kl_row, log_softmax};

/// The shape `[heads, queries, keys]` of one sequence's attention scores, row-major.
///
/// Fold a batch into `heads` when every sequence has the same valid length; otherwise call
/// [`attention_kl`] once per sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    /// Number of attention heads.
    pub heads: usize,
    /// Number of query positions (rows of each head's map).
    pub queries: usize,
    /// Number of key positions (columns, the softmax axis).
    pub keys: usize,
}

/// MiniLM's attention-distribution loss: `KL(softmax(teacher) || softmax(student))` over the key
/// axis, averaged over heads and valid query rows, with its gradient with respect to the
/// student's **scores**.
///
/// Both inputs are attention *scores*: the scaled dot products `q·k / sqrt(d)` before the softmax
/// and before any padding mask is added. Scores (not probabilities) are taken so the loss can
/// return the gradient the student's backward pass needs and so the padding is handled here in one
/// place. The sequence is right-padded to `valid_len` real tokens: keys at or beyond `valid_len`
/// are left out of both softmaxes (as an additive `-inf` mask would), query rows at or beyond
/// `valid_len` are left out of the mean, and every padded position gets a zero gradient. Padded
/// positions are never read, so they may hold anything, including `-inf` or NaN.
///
/// The value is `Σ_{h, q < valid_len} KL_hq / (heads · valid_len)` and the gradient on a valid
/// score is `(p_s − p_t) / (heads · valid_len)`. The heads of student and teacher must match;
/// MiniLM v1 pairs the last layers' heads one to one.
///
/// # Errors
/// [`Error::Length`], [`Error::EmptyShape`] or [`Error::ShapeOverflow`] for slices that do not
/// match `shape`, [`Error::ValidLength`] unless `1 ≤ valid_len ≤ min(queries, keys)`, and
/// [`Error::NonFinite`] for NaN or infinite scores inside the valid region.
pub fn attention_kl(
    student_scores: &[f32],
    teacher_scores: &[f32],
    shape: AttentionShape,
    valid_len: usize,
) -> Result<Loss, Error> {
    let dims = [shape.heads, shape.queries, shape.keys];
    check_len("student_scores", student_scores.len(), &dims)?;
    check_len("teacher_scores", teacher_scores.len(), &dims)?;
    let max = shape.queries.min(shape.keys);
    if valid_len == 0 || valid_len > max {
        return Err(Error::ValidLength { valid_len, max, dims: dims.to_vec() });
    }

    let valid_rows = shape.heads as f64 * valid_len as f64;
    let inv_rows = 1.0 / valid_rows;
    let mut grad = vec![0.0f32; student_scores.len()];
    let mut log_student = vec![0.0f64; valid_len];
    let mut log_teacher = vec![0.0f64; valid_len];
    let mut total = 0.0f64;
    for head in 0..shape.heads {
        for query in 0..valid_len {
            let start = (head * shape.queries + query) * shape.keys;
            let student_row = &student_scores[start..start + valid_len];
            let teacher_row = &teacher_scores[start..start + valid_len];
            check_finite("student_scores", student_row, start)?;
            check_finite("teacher_scores", teacher_row, start)?;
            log_softmax(student_row, 1.0, &mut log_student);
            log_softmax(teacher_row, 1.0, &mut log_teacher);
            total += kl_row(&log_teacher, &log_student);
            let grad_row = &mut grad[start..start + valid_len];
            for ((dst, &ls), &lt) in grad_row.iter_mut().zip(&log_student).zip(&log_teacher) {
                *dst = (inv_rows * (ls.exp() - lt.exp())) as f32;
            }
        }
    }
    Ok(Loss { value: total * inv_rows, grad })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: AttentionShape = AttentionShape { heads: 2, queries: 3, keys: 3 };

    fn scores(seed: f32) -> Vec<f32> {
        (0..18).map(|i| (i as f32 * 0.37 + seed).sin() * 3.0).collect()
    }

    #[test]
    fn padding_is_neither_read_nor_given_a_gradient() {
        let (student, teacher) = (scores(0.1), scores(1.3));
        let clean = attention_kl(&student, &teacher, SHAPE, 2).unwrap();
        let (mut dirty_student, mut dirty_teacher) = (student.clone(), teacher.clone());
        for head in 0..2 {
            for query in 0..3 {
                for key in 0..3 {
                    if query == 2 || key == 2 {
                        let index = (head * 3 + query) * 3 + key;
                        dirty_student[index] = f32::NEG_INFINITY;
                        dirty_teacher[index] = f32::NAN;
                    }
                }
            }
        }
        let dirty = attention_kl(&dirty_student, &dirty_teacher, SHAPE, 2).unwrap();
        assert_eq!(clean, dirty);
        for (index, &g) in clean.grad.iter().enumerate() {
            let (query, key) = ((index / 3) % 3, index % 3);
            if query == 2 || key == 2 {
                assert_eq!(g, 0.0, "index {index}");
            }
        }
        assert!(clean.value > 0.0);
    }

    #[test]
    fn full_length_equals_the_mean_of_per_head_rows() {
        let (student, teacher) = (scores(0.4), scores(2.0));
        let loss = attention_kl(&student, &teacher, SHAPE, 3).unwrap();
        let mut expected = 0.0;
        let (mut ls, mut lt) = ([0.0f64; 3], [0.0f64; 3]);
        for (s, t) in student.chunks(3).zip(teacher.chunks(3)) {
            log_softmax(s, 1.0, &mut ls);
            log_softmax(t, 1.0, &mut lt);
            expected += kl_row(&lt, &ls) / 6.0;
        }
        assert!((loss.value - expected).abs() < 1e-12);
    }

    #[test]
    fn a_padded_sequence_averages_over_its_valid_rows_only() {
        let (student, teacher) = (scores(0.7), scores(-0.9));
        let loss = attention_kl(&student, &teacher, SHAPE, 2).unwrap();
        let (mut ls, mut lt) = ([0.0f64; 2], [0.0f64; 2]);
        let mut expected = 0.0;
        for head in 0..2 {
            for query in 0..2 {
                let start = (head * 3 + query) * 3;
                log_softmax(&student[start..start + 2], 1.0, &mut ls);
                log_softmax(&teacher[start..start + 2], 1.0, &mut lt);
                expected += kl_row(&lt, &ls) / 4.0;
                for key in 0..2 {
                    let want = (ls[key].exp() - lt[key].exp()) / 4.0;
                    assert!((f64::from(loss.grad[start + key]) - want).abs() < 1e-8);
                }
            }
        }
        assert!((loss.value - expected).abs() < 1e-12, "{} vs {expected}", loss.value);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let values = scores(0.0);
        for valid_len in [0, 4] {
            assert_eq!(
                attention_kl(&values, &values, SHAPE, valid_len),
                Err(Error::ValidLength { valid_len, max: 3, dims: vec![2, 3, 3] })
            );
        }
        assert!(matches!(
            attention_kl(&values[1..], &values, SHAPE, 3),
            Err(Error::Length { name: "student_scores", expected: 18, found: 17, .. })
        ));
        let mut with_inf = values.clone();
        with_inf[10] = f32::INFINITY;
        assert!(matches!(
            attention_kl(&values, &with_inf, SHAPE, 3),
            Err(Error::NonFinite { name: "teacher_scores", index: 10, .. })
        ));
    }
}
