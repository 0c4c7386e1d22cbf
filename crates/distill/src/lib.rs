//! Knowledge-distillation losses that return their value together with the gradient with respect
//! to the student's inputs, over `f32` slices with explicit shapes: Hinton's temperature-scaled KD,
//! soft-target and hard-label cross-entropy, their alpha mix, MSE and cosine losses on hidden
//! states, and MiniLM's attention-distribution KL. Values and gradients follow PyTorch's
//! definitions (checked against torch 2.15 on a golden file) and are computed in f64 with
//! max-subtracted log-sum-exp, so extreme logits such as ±1e30 give finite results; NaN and
//! infinite inputs are rejected with [`Error::NonFinite`] except in padded attention positions,
//! which are never read.
//!
//! ```
//! use lathe_distill::{IGNORE_INDEX, Shape, kd_kl, kd_mix};
//!
//! // Two tokens over a vocabulary of three, flattened row-major to [rows, cols].
//! let shape = Shape { rows: 2, cols: 3 };
//! let student = [2.0, 0.5, -1.0, 0.0, 1.0, 0.0];
//! let teacher = [3.0, 0.0, -2.0, 0.0, 2.0, 0.5];
//!
//! let kd = kd_kl(&student, &teacher, shape, 2.0)?;
//! assert!(kd.value > 0.0);
//! // The gradient T·(p_s − p_t)/rows sums to zero over every row.
//! assert!(kd.grad[..3].iter().sum::<f32>().abs() < 1e-6);
//!
//! // 0.7·KD + 0.3·cross-entropy, the second token's label ignored as torch's -100 is.
//! let mixed = kd_mix(&student, &teacher, &[0, IGNORE_INDEX], shape, 2.0, 0.7, IGNORE_INDEX)?;
//! assert!(mixed.grad[3..].iter().zip(&kd.grad[3..]).all(|(m, k)| (m - 0.7 * k).abs() < 1e-7));
//! # Ok::<(), lathe_distill::Error>(())
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod attention;
mod error;
mod hidden;
mod logits;
mod softmax;

pub use attention::{AttentionShape, attention_kl};
pub use error::Error;
pub use hidden::{COSINE_EPS, cosine_embedding, mse};
pub use logits::{cross_entropy, kd_kl, kd_mix, soft_cross_entropy};

/// PyTorch's default `ignore_index` for `cross_entropy`: rows labelled -100 are left out.
pub const IGNORE_INDEX: i64 = -100;

/// The shape `[rows, cols]` of a row-major matrix: tokens by vocabulary for logits, rows by
/// hidden size for hidden states. Flatten any leading batch axes into `rows`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Number of rows (tokens); the losses average over them.
    pub rows: usize,
    /// Number of columns (classes or features).
    pub cols: usize,
}

/// A loss value and its gradient with respect to the student's input.
#[derive(Debug, Clone, PartialEq)]
pub struct Loss {
    /// The loss, accumulated and returned in f64.
    pub value: f64,
    /// `∂value / ∂student`, laid out like the student input.
    pub grad: Vec<f32>,
}
