//! Hyperparameter search for lathe, generic over an objective closure and blind to models: search
//! spaces of categorical, integer and float (linear or log) parameters; grid, seeded random and
//! successive-halving samplers; trials run in parallel under a concurrency limit with results
//! recorded in trial-id order; single- or multi-objective studies with Pareto fronts; a JSON-lines
//! log, appended and flushed per finished trial, from which a killed study resumes without
//! rerunning finished trials; command lines for batch schedulers ([`Study::emit`]) whose result
//! files are collected back into the log ([`Study::collect`]); and a markdown table of the study.
//!
//! ```
//! use lathe_search::{Objective, Space, Study, TrialError};
//!
//! let space = Space::new()
//!     .categorical("method", ["magnitude", "wanda"])?
//!     .float("sparsity", 0.3, 0.7)?;
//! let configs = space.grid(3)?; // 2 methods x 3 sparsities
//! assert_eq!(configs.len(), 6);
//!
//! let log = tempfile::tempdir()?.keep().join("study.jsonl");
//! let study = Study::new([Objective::minimize("loss"), Objective::maximize("sparsity")])?
//!     .log(&log)
//!     .concurrency(2);
//! // A stand-in objective: wanda loses less than magnitude at every sparsity.
//! let objective = |trial: &lathe_search::TrialInput<'_>| -> Result<Vec<f64>, TrialError> {
//!     let sparsity = trial.params.f64("sparsity").ok_or(TrialError::Failed("no sparsity".into()))?;
//!     let penalty = if trial.params.str("method") == Some("wanda") { 1.0 } else { 2.0 };
//!     Ok(vec![penalty * sparsity * sparsity, sparsity])
//! };
//! let report = study.run(&configs, objective)?;
//! assert_eq!(report.evaluated, 6);
//! // The wanda trials (ids 3, 4, 5) trade loss for sparsity; every magnitude trial is dominated.
//! assert_eq!(report.pareto_ids(), [3, 4, 5]);
//! assert_eq!(report.table().matches("| * ").count(), 3); // the table marks the front
//!
//! // Running again resumes from the log: nothing is evaluated twice.
//! let again = study.run(&configs, objective)?;
//! assert_eq!((again.evaluated, again.resumed), (0, 6));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod batch;
mod error;
mod log;
mod pareto;
mod space;
mod study;
mod table;
pub mod template;

pub use batch::{Collected, TrialResult};
pub use error::{Error, Result};
pub use pareto::{Direction, Objective, dominates, pareto_front};
pub use space::{Domain, GRID_LIMIT, Params, Scale, Space, Value};
pub use study::{Halving, Report, Rung, Status, Study, TrialError, TrialInput, TrialRecord};
