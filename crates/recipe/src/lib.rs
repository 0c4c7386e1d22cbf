//! Recipes, evaluation and comparison reports for lathe (in progress). For now: the sentences
//! lathe ships, built into the binary so defaults work from any folder.
//!
//! ```
//! let corpus = lathe_recipe::data::corpus();
//! let eval = lathe_recipe::data::eval_set();
//! assert!(corpus.len() >= 2000 && eval.len() >= 200);
//! assert!(eval.iter().all(|sentence| !corpus.contains(sentence)));
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod data;
