//! The one error type of lathe-search.

use std::path::PathBuf;

/// A `Result` with lathe-search's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while defining, running, resuming, emitting or collecting a study.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A parameter of a search space is ill-defined (empty categorical, `low > high`, step 0 ...).
    #[error("parameter `{name}`: {reason}")]
    InvalidParameter {
        /// The parameter's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The grid of a space cannot be built (too many points, a float range without grid points).
    #[error("grid: {reason}")]
    InvalidGrid {
        /// What is wrong.
        reason: String,
    },
    /// The study itself is ill-defined (no objectives, two objectives with one name ...).
    #[error("study: {reason}")]
    InvalidStudy {
        /// What is wrong.
        reason: String,
    },
    /// Successive-halving settings are ill-defined.
    #[error("successive halving: {reason}")]
    InvalidHalving {
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A complete line of a study log is not a valid trial record.
    #[error("{path}:{line}: {reason}")]
    LogLine {
        /// The log file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with the line.
        reason: String,
    },
    /// The log holds a trial with the same id but other parameters or budget than the study asks
    /// for: the study definition changed since the log was written.
    #[error("{path}: trial {id} was logged with {found} but the study now asks for {expected}")]
    ResumeMismatch {
        /// The log file.
        path: PathBuf,
        /// The trial id.
        id: u64,
        /// Parameters and budget the study asks for, as JSON.
        expected: String,
        /// Parameters and budget in the log, as JSON.
        found: String,
    },
    /// A logged or collected trial reports other objectives than the study has.
    #[error("{path}: trial {id} reports objectives {found:?} but the study has {expected:?}")]
    ObjectiveMismatch {
        /// The log or result file.
        path: PathBuf,
        /// The trial id.
        id: u64,
        /// The study's objective names.
        expected: Vec<String>,
        /// The names found in the file.
        found: Vec<String>,
    },
    /// A command-line template is malformed or names an unknown placeholder.
    #[error("template `{template}`: {reason}")]
    Template {
        /// The template.
        template: String,
        /// What is wrong.
        reason: String,
    },
    /// A trial's result file is malformed.
    #[error("{path}: {reason}")]
    ResultFile {
        /// The result file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The operation needs a study log and the study has none.
    #[error("study: {operation} needs a log file (Study::log)")]
    NoLog {
        /// The operation (`collect`).
        operation: &'static str,
    },
    /// The objective asked to stop the study ([`crate::TrialError::Abort`]). Trials that finished
    /// before are logged; resuming the study runs the rest.
    #[error("trial {id} aborted the study: {message}")]
    Aborted {
        /// The trial that asked to stop.
        id: u64,
        /// Its message.
        message: String,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
