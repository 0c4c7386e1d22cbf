//! The study log: one JSON line per finished trial, appended and flushed as each trial finishes.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pareto::Objective;
use crate::space::Params;
use crate::study::{Status, TrialRecord};

/// One log line as it is stored. `values` maps objective names to numbers in the study's
/// objective order (empty for a failed trial).
#[derive(Debug, Serialize, Deserialize)]
struct Line {
    id: u64,
    params: Params,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    budget: Option<f64>,
    values: serde_json::Map<String, serde_json::Value>,
    status: Status,
    seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

/// Why a map of objective values does not fit the study.
pub(crate) enum ValuesError {
    /// Other names than the study's objectives.
    Names { expected: Vec<String>, found: Vec<String> },
    /// A value that is not a finite number.
    NotFinite { name: String, found: String },
}

/// Orders a name -> number map by the study's objectives, checking the names match exactly.
pub(crate) fn values_in_order(
    values: &serde_json::Map<String, serde_json::Value>,
    objectives: &[Objective],
) -> Result<Vec<f64>, ValuesError> {
    let names_match =
        values.len() == objectives.len() && objectives.iter().all(|objective| values.contains_key(&objective.name));
    if !names_match {
        return Err(ValuesError::Names {
            expected: objectives.iter().map(|objective| objective.name.clone()).collect(),
            found: values.keys().cloned().collect(),
        });
    }
    objectives
        .iter()
        .map(|objective| {
            let value = &values[&objective.name];
            value
                .as_f64()
                .filter(|number| number.is_finite())
                .ok_or_else(|| ValuesError::NotFinite { name: objective.name.clone(), found: value.to_string() })
        })
        .collect()
}

/// Converts a values error into the crate error for a file and trial.
pub(crate) fn values_error(error: ValuesError, path: &Path, id: u64) -> Error {
    match error {
        ValuesError::Names { expected, found } => {
            Error::ObjectiveMismatch { path: path.to_owned(), id, expected, found }
        }
        ValuesError::NotFinite { name, found } => Error::ResultFile {
            path: path.to_owned(),
            reason: format!("trial {id}: objective `{name}` is {found}, not a finite number"),
        },
    }
}

/// What a log holds: the latest record of every trial id, and how many bytes of it are whole
/// lines (a study killed mid-write leaves a torn last line, which is dropped).
#[derive(Debug, Default)]
pub(crate) struct Contents {
    pub(crate) records: HashMap<u64, TrialRecord>,
    pub(crate) whole_bytes: u64,
    pub(crate) torn: bool,
}

/// Reads a log; a missing file is an empty log. Every newline-terminated line must be a valid
/// record; only an unterminated last line (a write cut short) is ignored.
pub(crate) fn read(path: &Path, objectives: &[Objective]) -> Result<Contents> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Contents::default()),
        Err(error) => return Err(Error::io(path, error)),
    };
    let whole = bytes.iter().rposition(|&byte| byte == b'\n').map_or(0, |last| last + 1);
    let mut contents = Contents { records: HashMap::new(), whole_bytes: whole as u64, torn: whole < bytes.len() };
    for (index, line) in bytes[..whole].split(|&byte| byte == b'\n').enumerate() {
        let bad = |reason: String| Error::LogLine { path: path.to_owned(), line: index + 1, reason };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line: Line = serde_json::from_slice(line).map_err(|error| bad(error.to_string()))?;
        let values = match line.status {
            Status::Complete => values_in_order(&line.values, objectives).map_err(|error| match error {
                ValuesError::NotFinite { name, found } => bad(format!("objective `{name}` is {found}")),
                names => values_error(names, path, line.id),
            })?,
            Status::Failed => Vec::new(),
        };
        let record = TrialRecord {
            id: line.id,
            params: line.params,
            budget: line.budget,
            values,
            status: line.status,
            seconds: line.seconds,
            message: line.message,
        };
        // A trial rerun after a failure is logged again: the later line wins.
        contents.records.insert(record.id, record);
    }
    Ok(contents)
}

/// Appends records to a log, one `write` and flush per line, so a killed study loses only the
/// trials that were running.
#[derive(Debug)]
pub(crate) struct Writer {
    file: File,
    path: PathBuf,
}

impl Writer {
    /// Opens a log for appending, first cutting a torn last line so the next record starts on a
    /// line of its own.
    pub(crate) fn open(path: &Path, contents: &Contents) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|error| Error::io(parent, error))?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(|error| Error::io(path, error))?;
        if contents.torn {
            file.set_len(contents.whole_bytes).map_err(|error| Error::io(path, error))?;
        }
        Ok(Writer { file, path: path.to_owned() })
    }

    pub(crate) fn append(&mut self, record: &TrialRecord, objectives: &[Objective]) -> Result<()> {
        let values = objectives
            .iter()
            .zip(&record.values)
            .map(|(objective, &value)| (objective.name.clone(), serde_json::Value::from(value)))
            .collect();
        let line = Line {
            id: record.id,
            params: record.params.clone(),
            budget: record.budget,
            values,
            status: record.status,
            seconds: record.seconds,
            message: record.message.clone(),
        };
        let mut text = serde_json::to_string(&line).map_err(|error| Error::LogLine {
            path: self.path.clone(),
            line: 0,
            reason: format!("trial {} cannot be written: {error}", record.id),
        })?;
        text.push('\n');
        self.file
            .write_all(text.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|error| Error::io(&self.path, error))
    }
}
