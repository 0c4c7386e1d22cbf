//! Pruning masks for lathe over plain slices, with the semantics of `torch.nn.utils.prune`
//! (magnitude, random, structured L-n and global pruning, repeated pruning acting on the
//! survivors, amounts rounded half to even), plus N:M semi-structured patterns, Wanda scores,
//! and head/neuron ranking to physically shrink transformer blocks. Masks are bitsets
//! ([`Mask`]); matrices are row-major `[out, in]` as PyTorch stores linear weights.
//!
//! Ties among equal magnitudes, norms or scores (unspecified in torch) are broken the same way
//! everywhere: the lower index is pruned first.
//!
//! ```
//! use lathe_prune::{Amount, AttentionWeights, Target, l1_unstructured, ln_structured, n_m, remove, select_rows};
//!
//! let (rows, cols) = (4, 8);
//! let mut weights: Vec<f32> = (0..rows * cols).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
//!
//! // torch: prune.l1_unstructured(m, "weight", 0.5) twice leaves 25 %.
//! let first = l1_unstructured(&weights, Amount::Fraction(0.5), None)?;
//! let second = l1_unstructured(&weights, Amount::Fraction(0.5), Some(&first))?;
//! assert_eq!(second.n_pruned(), 16 + 8);
//!
//! // Drop the output channel with the smallest L2 norm, then bake the mask in.
//! let rows_mask = ln_structured(&weights, rows, cols, Amount::Count(1), 2.0, 0, None)?;
//! remove(&mut weights, &rows_mask)?;
//!
//! // 2:4 sparsity: two kept values in every four consecutive inputs.
//! let mask = n_m(&weights, rows, cols, 2, 4)?;
//! assert_eq!(mask.n_kept(), rows * cols / 2);
//!
//! // Keep the 2 strongest of 4 heads and gather their rows into a smaller matrix.
//! let w = vec![0.5f32; 8 * 8];
//! let block = AttentionWeights { q: &w, k: &w, v: &w, o: &w, hidden: 8, n_heads: 4 };
//! let heads = block.heads_to_keep(2.0, Target::Keep(2))?;
//! let q_small = select_rows(&w, 8, 8, &block.head_channels(&heads)?)?;
//! assert_eq!((heads, q_small.len()), (vec![2, 3], 4 * 8));
//! # Ok::<(), lathe_prune::Error>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod amount;
mod error;
mod mask;
mod nm;
mod rng;
mod select;
mod shrink;
mod structured;
mod unstructured;
mod wanda;

pub use amount::{Amount, Target};
pub use error::{Error, Result};
pub use mask::Mask;
pub use nm::{n_m, n_m_by_score};
pub use shrink::{AttentionWeights, FfnWeights, keep_by_score, select_cols, select_rows};
pub use structured::{channel_norms, ln_structured, random_structured};
pub use unstructured::{custom_from_mask, global_unstructured, l1_unstructured, random_unstructured, remove};
pub use wanda::{per_row_by_score, wanda_n_m, wanda_scores, wanda_unstructured};
