//! `lathe.json`: what lathe did to a folder, step by step, so that every output says how it was
//! made (and a recipe's later steps append to what the earlier ones wrote).

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Error, Result};

/// The whole record of a folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The lathe version that wrote the folder last.
    pub lathe: String,
    /// The folder the first step read.
    pub source: String,
    /// The steps in the order they ran.
    pub steps: Vec<StepRecord>,
}

/// One step: which, how, on what data, and how long it took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// `quantize`, `prune`, `shrink` or `distill`.
    pub step: String,
    /// The method (`rtn`, `gptq`, `magnitude`, `wanda`, ...).
    pub method: String,
    /// Every option the step ran with, as the command line names them.
    pub options: Value,
    /// The calibration data, for calibrated methods.
    pub calibration: Option<Calibration>,
    /// Wall time of the step, in seconds.
    pub seconds: f64,
}

/// Where calibration sentences came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// The file, or `shipped corpus`.
    pub file: String,
    /// How many sentences were used.
    pub samples: usize,
    /// How many real tokens they held.
    pub tokens: usize,
}

impl Record {
    /// Reads `lathe.json`.
    pub fn read(path: &Path) -> Result<Record> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        serde_json::from_str(&text).map_err(|source| Error::Json { path: path.to_path_buf(), source })
    }

    /// The record of a folder made from `source_dir` (whose own record, if any, is carried over)
    /// by one more step.
    pub fn extend(previous: Option<&Record>, source_dir: &Path, step: StepRecord) -> Record {
        let mut record = previous.cloned().unwrap_or_else(|| Record {
            lathe: String::new(),
            source: source_dir.display().to_string(),
            steps: Vec::new(),
        });
        record.lathe = env!("CARGO_PKG_VERSION").to_owned();
        record.steps.push(step);
        record
    }

    /// The record as JSON.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("records always serialise")
    }
}
