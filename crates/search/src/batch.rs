//! Running trials outside the process: command lines for a batch scheduler, and result files
//! collected back into the study log.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::log::{values_error, values_in_order};
use crate::space::{Params, TRIAL_PLACEHOLDER};
use crate::study::{Status, Study, TrialRecord, pending_ids};
use crate::template::{Piece, pieces};

/// What a trial run by a batch job reports: the file `<results>/<id>.json`.
///
/// ```json
/// {"values": {"loss": 0.25, "size_mb": 12.5}, "seconds": 41.2}
/// ```
///
/// `values` maps every objective name of the study to a number (and is empty or absent for a
/// failed trial); `status` is `"complete"` (the default) or `"failed"`; `seconds` defaults to 0;
/// `id`, when present, must equal the id in the file name; `message` says why a trial failed.
/// Other keys are ignored, so a job may add its own metadata. Jobs should write the file in one
/// step (write a temporary file, then rename it, as [`TrialResult::write`] does) so
/// [`Study::collect`] never reads half a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialResult {
    /// The trial id, checked against the file name when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Objective name -> value.
    #[serde(default)]
    pub values: BTreeMap<String, f64>,
    /// Complete or failed.
    #[serde(default = "complete")]
    pub status: Status,
    /// Seconds the trial took.
    #[serde(default)]
    pub seconds: f64,
    /// Why the trial failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn complete() -> Status {
    Status::Complete
}

impl TrialResult {
    /// A complete trial with these objective values.
    pub fn complete<N: Into<String>>(values: impl IntoIterator<Item = (N, f64)>) -> Self {
        TrialResult {
            id: None,
            values: values.into_iter().map(|(name, value)| (name.into(), value)).collect(),
            status: Status::Complete,
            seconds: 0.0,
            message: None,
        }
    }

    /// A failed trial.
    pub fn failed(message: impl Into<String>) -> Self {
        TrialResult {
            id: None,
            values: BTreeMap::new(),
            status: Status::Failed,
            seconds: 0.0,
            message: Some(message.into()),
        }
    }

    /// Sets the seconds the trial took.
    pub fn with_seconds(mut self, seconds: f64) -> Self {
        self.seconds = seconds;
        self
    }

    /// The path of trial `id`'s result file in `dir`.
    pub fn path(dir: &Path, id: u64) -> PathBuf {
        dir.join(format!("{id}.json"))
    }

    /// Writes `<dir>/<id>.json` (with `id` set) through a temporary file renamed into place;
    /// creates `dir` when missing.
    pub fn write(&self, dir: &Path, id: u64) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).map_err(|error| Error::io(dir, error))?;
        let path = TrialResult::path(dir, id);
        let temporary = dir.join(format!(".{id}.json.tmp"));
        let result = TrialResult { id: Some(id), ..self.clone() };
        let text = serde_json::to_string(&result)
            .map_err(|error| Error::ResultFile { path: path.clone(), reason: error.to_string() })?;
        let mut file = std::fs::File::create(&temporary).map_err(|error| Error::io(&temporary, error))?;
        file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(|error| Error::io(&temporary, error))?;
        std::fs::rename(&temporary, &path).map_err(|error| Error::io(&path, error))?;
        Ok(path)
    }
}

/// What [`Study::collect`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Collected {
    /// Trials whose result file was read and appended to the log.
    pub collected: Vec<u64>,
    /// Trials the log already held (their files, if any, were not read).
    pub already_logged: Vec<u64>,
    /// Trials with neither a log record nor a result file (still running, or lost).
    pub missing: Vec<u64>,
}

/// Splits a template into text and `{name}` placeholders; `{{` and `}}` are literal braces.
fn parse_template(template: &str) -> Result<Vec<Piece>> {
    pieces(template).map_err(|reason| Error::Template { template: template.to_owned(), reason })
}

/// Quotes a value for POSIX `sh` when it holds anything beyond a conservative safe set.
fn shell_quote(value: &str) -> String {
    let safe = !value.is_empty()
        && value.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ':' | ',' | '+' | '=' | '@' | '%')
        });
    if safe { value.to_owned() } else { format!("'{}'", value.replace('\'', r"'\''")) }
}

impl Study {
    /// One shell command line per trial of `configs` the log does not already hold, in id order:
    /// `template` with `{trial}` replaced by the trial id and `{name}` by the value of parameter
    /// `name` (integers in decimal, floats in shortest round-trip form such as `0.001` or `1e-5`,
    /// strings as they are). Values that need it are single-quoted for POSIX `sh`, so placeholders
    /// belong outside quotes in the template. `{{` and `}}` are literal braces.
    ///
    /// Each line should make its trial write `<results>/{trial}.json` ([`TrialResult`]);
    /// [`Study::collect`] then brings the results into the log. Lines are independent, so GNU
    /// parallel (`parallel -j 8 < trials.txt`), a Slurm array or Kubernetes jobs can run them.
    pub fn emit(&self, configs: &[Params], template: &str) -> Result<Vec<String>> {
        let pieces = parse_template(template)?;
        let contents = self.read_log()?;
        let mut lines = Vec::new();
        for (id, params) in pending_ids(configs) {
            if self.finished_record(&contents, id, params, None)?.is_some() {
                continue;
            }
            let mut line = String::new();
            for piece in &pieces {
                match piece {
                    Piece::Text(text) => line.push_str(text),
                    Piece::Placeholder(name) if name == TRIAL_PLACEHOLDER => line.push_str(&id.to_string()),
                    Piece::Placeholder(name) => {
                        let value = params.get(name).ok_or_else(|| Error::Template {
                            template: template.to_owned(),
                            reason: format!("trial {id} has no parameter `{name}` (it has {})", params.to_json()),
                        })?;
                        line.push_str(&shell_quote(&value.to_string()));
                    }
                }
            }
            lines.push(line);
        }
        Ok(lines)
    }

    /// Reads `<results_dir>/<id>.json` ([`TrialResult`]) for every trial of `configs` the log does
    /// not hold yet and appends each to the log (which must be set), so a later [`Study::run`]
    /// or [`Study::load`] sees them. Files of other ids are not read; a trial without a file is
    /// reported missing, not an error.
    pub fn collect(&self, configs: &[Params], results_dir: &Path) -> Result<Collected> {
        let (contents, mut writer, _) = self.open_writer("collect")?;
        let mut report = Collected::default();
        for (id, params) in pending_ids(configs) {
            if self.finished_record(&contents, id, params, None)?.is_some() {
                report.already_logged.push(id);
                continue;
            }
            let path = TrialResult::path(results_dir, id);
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    report.missing.push(id);
                    continue;
                }
                Err(error) => return Err(Error::io(&path, error)),
            };
            let bad = |reason: String| Error::ResultFile { path: path.clone(), reason };
            let result: TrialResult = serde_json::from_str(&text).map_err(|error| bad(error.to_string()))?;
            if let Some(found) = result.id.filter(|&found| found != id) {
                return Err(bad(format!("the file is named for trial {id} but says id {found}")));
            }
            if !(result.seconds.is_finite() && result.seconds >= 0.0) {
                return Err(bad(format!("seconds is {}, expected a finite number of at least 0", result.seconds)));
            }
            let values = match result.status {
                Status::Complete => {
                    let map = result
                        .values
                        .iter()
                        .map(|(name, &value)| (name.clone(), serde_json::Value::from(value)))
                        .collect();
                    values_in_order(&map, self.objectives()).map_err(|error| values_error(error, &path, id))?
                }
                Status::Failed => Vec::new(),
            };
            let record = TrialRecord {
                id,
                params: params.clone(),
                budget: None,
                values,
                status: result.status,
                seconds: result.seconds,
                message: result.message,
            };
            writer.append(&record, self.objectives())?;
            report.collected.push(id);
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_braces_and_placeholders() {
        let pieces = parse_template("run {{x}} --a {a} --t {trial}}}").unwrap();
        assert_eq!(
            pieces,
            [
                Piece::Text("run {x} --a ".into()),
                Piece::Placeholder("a".into()),
                Piece::Text(" --t ".into()),
                Piece::Placeholder("trial".into()),
                Piece::Text("}".into()),
            ]
        );
        for bad in ["a {b", "a } b", "{}", "{a b}"] {
            assert!(matches!(parse_template(bad), Err(Error::Template { .. })), "{bad}");
        }
    }

    #[test]
    fn shell_quoting_survives_sh() {
        for value in ["plain-1.5e-3", "two words", "it's", "", "$HOME", "a\"b", "semi;colon"] {
            let output = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(value)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(output.stdout).unwrap(), value);
        }
    }
}
