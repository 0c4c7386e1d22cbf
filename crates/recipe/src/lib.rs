//! Recipes, evaluation and comparison reports for lathe (in progress): the sentences lathe ships
//! (built into the binary, so defaults work from any folder), and [`eval`], the one definition
//! of how close a model's sentence embeddings stay to a reference's (mean and min cosine,
//! Spearman of the pairwise similarities, top-1 neighbour agreement) and of its latency.
//!
//! ```
//! use lathe_recipe::{data, eval};
//!
//! let corpus = data::corpus();
//! let eval_set = data::eval_set();
//! assert!(corpus.len() >= 2000 && eval_set.len() >= 200);
//! assert!(eval_set.iter().all(|sentence| !corpus.contains(sentence)));
//!
//! // Three sentences embedded in 2 dimensions by a reference and by a model that moved one.
//! let reference = [1.0, 0.0, 0.8, 0.6, 0.0, 1.0];
//! let model = [1.0, 0.0, 0.6, 0.8, 0.0, 1.0];
//! let fidelity = eval::fidelity(&reference, &model, 2)?;
//! assert!((fidelity.mean_cosine - (2.0 + 0.96) / 3.0).abs() < 1e-6);
//! assert!((fidelity.spearman.unwrap() - 0.5).abs() < 1e-12);
//! assert!((fidelity.top1_agreement - 2.0 / 3.0).abs() < 1e-12);
//! # Ok::<(), lathe_recipe::Error>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod compare;
pub mod compress;
pub mod data;
pub mod distill;
mod error;
pub mod eval;
mod progress;
pub mod recipe;
pub mod report;
pub mod search;

pub use error::{Error, Result};
