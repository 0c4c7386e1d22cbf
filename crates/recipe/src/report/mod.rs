//! The report of `lathe compare`: one row per compression method (or combination) applied to the
//! same model, measured against the first row, the baseline. [`write_report`] turns a [`Report`]
//! into `report.json` (the data, exactly as serialised here), `report.md` (a table, how things
//! were measured, and for every method its advantages and disadvantages derived from its numbers)
//! and two SVG plots, `fidelity_vs_size.svg` and `fidelity_vs_latency.svg`, with the Pareto
//! fronts marked.
//!
//! ```
//! use std::collections::BTreeMap;
//! use lathe_recipe::report::{self, EvalSet, Latency, Report, Row, Speedup};
//!
//! let row = |name: &str, size_bytes: u64, single: f64, mean_cosine: f64| Row {
//!     name: name.to_owned(),
//!     recipe: format!("quantize {name}"),
//!     size_bytes,
//!     compression: 0.0,
//!     latency_ms: Latency { single, batched: single * 0.6 },
//!     speedup: Speedup { single: 0.0, batched: 0.0 },
//!     baseline_latency_ms: None,
//!     mean_cosine,
//!     min_cosine: mean_cosine - 0.05,
//!     spearman: None,
//!     top1_agreement: 0.9,
//!     compress_seconds: 1.5,
//!     kernels: BTreeMap::from([("dense f32".to_owned(), 36)]),
//! };
//! let mut report = Report {
//!     model: "all-MiniLM-L6-v2".to_owned(),
//!     machine: report::machine_description(),
//!     eval_set: EvalSet { name: "lathe eval".to_owned(), n_sentences: 280, sha256: "ab12".to_owned() },
//!     rows: vec![row("fp32", 88_000_000, 400.0, 1.0), row("q8_0", 24_000_000, 250.0, 0.999)],
//!     latency_sentences: None,
//! };
//! report.fill_ratios()?; // compression and speedups against the first row
//! assert_eq!(report.rows[1].compression, 88.0 / 24.0);
//! assert_eq!(report.rows[1].speedup.single, 1.6);
//!
//! let dir = std::env::temp_dir().join(format!("lathe-report-doc-{}", std::process::id()));
//! report::write_report(&dir, &report)?;
//! let markdown = std::fs::read_to_string(dir.join("report.md"))?;
//! assert!(markdown.contains("3.7x smaller than fp32 (24.0 MB vs 88.0 MB)"));
//! assert!(std::fs::read_to_string(dir.join("fidelity_vs_size.svg"))?.contains("q8_0"));
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod assess;
mod machine;
mod markdown;
mod pareto;
mod plot;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use crate::{Error, Result};

pub use assess::{Assessment, Thresholds, assess};
pub use machine::machine_description;
pub use markdown::render_markdown;
pub use pareto::{Fronts, Standing, pareto};
pub use plot::{render_fidelity_vs_latency, render_fidelity_vs_size};

/// File names [`write_report`] writes inside its folder.
pub const FILES: [&str; 4] = ["report.json", "report.md", "fidelity_vs_size.svg", "fidelity_vs_latency.svg"];

/// A comparison of compression methods on one model. Serialises to `{"model", "machine",
/// "eval_set": {"name", "n_sentences", "sha256"}, "rows": [..]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The compressed model (its name or path).
    pub model: String,
    /// The machine the latencies were measured on ([`machine_description`]).
    pub machine: String,
    /// The sentences fidelity and latency were measured on.
    pub eval_set: EvalSet,
    /// One row per method; the first is the baseline every ratio and cosine refers to.
    pub rows: Vec<Row>,
    /// How many sentences (the first of the set) the latency runs encode; `None` for all. Only
    /// report.md states it (report.json keeps to its fixed keys).
    #[serde(skip)]
    pub latency_sentences: Option<usize>,
}

/// Which sentences a report was measured on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalSet {
    /// Name of the set (`lathe eval` for the shipped one, else the file).
    pub name: String,
    /// Sentences in it.
    pub n_sentences: usize,
    /// SHA-256 of the set as hashed by the caller, lower-case hex.
    pub sha256: String,
}

/// One compression method (or combination) measured against the baseline. Serialises to
/// `{"name", "recipe", "size_bytes", "compression", "latency_ms": {"single", "batched"},
/// "speedup": {"single", "batched"}, "mean_cosine", "min_cosine", "spearman", "top1_agreement",
/// "compress_seconds", "kernels"}`, and `"baseline_latency_ms": {"single", "batched"}` when the
/// baseline was timed alongside the row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Method and scheme words: `fp32`, `int4-g128 gptq`, `wanda 50% + int8`.
    pub name: String,
    /// The steps, as text.
    pub recipe: String,
    /// Bytes on disk of the compressed checkpoint.
    pub size_bytes: u64,
    /// Baseline size over this size (2.0 = half the bytes).
    pub compression: f64,
    /// Median time to encode the evaluation set, in milliseconds.
    pub latency_ms: Latency,
    /// Baseline latency over this latency, per batching (2.0 = twice as fast).
    pub speedup: Speedup,
    /// The baseline's latency timed alternately with this row's, run for run (what `speedup`
    /// divides when present, so that a slow spell of a shared machine slows both); `None` for
    /// the baseline itself and where the baseline was timed once for all rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_latency_ms: Option<Latency>,
    /// Mean over sentences of the cosine between this row's embedding and the baseline's.
    pub mean_cosine: f64,
    /// The lowest of those cosines.
    pub min_cosine: f64,
    /// Spearman's correlation of the pairwise similarities; `None` (JSON `null`) when undefined.
    pub spearman: Option<f64>,
    /// Fraction of sentences whose nearest neighbour is the same as under the baseline.
    pub top1_agreement: f64,
    /// Seconds it took to compress (0 for the baseline).
    pub compress_seconds: f64,
    /// How many linears ran on each kernel: `{"int8-channel": 36}`.
    pub kernels: BTreeMap<String, usize>,
}

impl Row {
    /// The baseline latency this row's speedups divide: the one timed alongside it when there is
    /// one, else `shared`, the baseline row's own.
    pub fn speedup_base(&self, shared: Latency) -> Latency {
        self.baseline_latency_ms.unwrap_or(shared)
    }
}

/// Encoding latency in milliseconds, single-threaded.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Batches of one sentence.
    pub single: f64,
    /// Batches of sentences of similar length (the same batching for every row).
    pub batched: f64,
}

/// Baseline latency over a row's latency, per batching.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Speedup {
    /// Batches of one sentence.
    pub single: f64,
    /// Length-sorted batches.
    pub batched: f64,
}

impl Report {
    /// The first row, which every ratio and cosine refers to; `None` when there are no rows.
    pub fn baseline(&self) -> Option<&Row> {
        self.rows.first()
    }

    /// Sets every row's `compression` and `speedup` from its size and latencies and the first
    /// row's (which gets 1.0 throughout).
    ///
    /// # Errors
    /// [`Error::NoRows`], and [`Error::NotPositive`] when a size or latency is zero or
    /// negative (a ratio would be infinite or meaningless).
    pub fn fill_ratios(&mut self) -> Result<()> {
        let baseline = self.rows.first().ok_or(Error::NoRows)?;
        let (base_bytes, base_latency) = (baseline.size_bytes as f64, baseline.latency_ms);
        for row in &self.rows {
            check_positive(row, "size_bytes", row.size_bytes as f64)?;
            check_positive(row, "latency_ms.single", row.latency_ms.single)?;
            check_positive(row, "latency_ms.batched", row.latency_ms.batched)?;
        }
        for row in &self.rows {
            if let Some(paired) = row.baseline_latency_ms {
                check_positive(row, "baseline_latency_ms.single", paired.single)?;
                check_positive(row, "baseline_latency_ms.batched", paired.batched)?;
            }
        }
        for row in &mut self.rows {
            row.compression = base_bytes / row.size_bytes as f64;
            let base = row.speedup_base(base_latency);
            row.speedup =
                Speedup { single: base.single / row.latency_ms.single, batched: base.batched / row.latency_ms.batched };
        }
        Ok(())
    }

    /// Checks what the text and plots rely on: at least one row, unique non-empty names, every
    /// number finite, and sizes, latencies and ratios above zero.
    ///
    /// # Errors
    /// [`Error::NoRows`], [`Error::EmptyName`], [`Error::DuplicateName`],
    /// [`Error::NonFiniteField`] or [`Error::NotPositive`] for the first problem found.
    pub fn validate(&self) -> Result<()> {
        if self.rows.is_empty() {
            return Err(Error::NoRows);
        }
        for (index, row) in self.rows.iter().enumerate() {
            if row.name.trim().is_empty() {
                return Err(Error::EmptyName { row: index });
            }
            if let Some(first) = self.rows[..index].iter().position(|other| other.name == row.name) {
                return Err(Error::DuplicateName { name: row.name.clone(), first, second: index });
            }
            let numbers = [
                ("compression", row.compression),
                ("latency_ms.single", row.latency_ms.single),
                ("latency_ms.batched", row.latency_ms.batched),
                ("speedup.single", row.speedup.single),
                ("speedup.batched", row.speedup.batched),
                ("mean_cosine", row.mean_cosine),
                ("min_cosine", row.min_cosine),
                ("spearman", row.spearman.unwrap_or(0.0)),
                ("top1_agreement", row.top1_agreement),
                ("compress_seconds", row.compress_seconds),
            ];
            for (field, value) in numbers {
                if !value.is_finite() {
                    return Err(Error::NonFiniteField { row: row.name.clone(), field, value });
                }
            }
            let positive = [
                ("size_bytes", row.size_bytes as f64),
                ("compression", row.compression),
                ("latency_ms.single", row.latency_ms.single),
                ("latency_ms.batched", row.latency_ms.batched),
                ("speedup.single", row.speedup.single),
                ("speedup.batched", row.speedup.batched),
            ];
            for (field, value) in positive {
                check_positive(row, field, value)?;
            }
        }
        Ok(())
    }
}

fn check_positive(row: &Row, field: &'static str, value: f64) -> Result<()> {
    // Written so that NaN fails too, which `value <= 0.0` would let through.
    if value.is_nan() || value <= 0.0 {
        return Err(Error::NotPositive { row: row.name.clone(), field, value });
    }
    Ok(())
}

/// Writes [`FILES`] into `dir` (created if missing): `report.json`, `report.md` and the two SVG
/// plots. Each file is written to a temporary file in `dir`, synced and renamed into place, so an
/// interrupted run leaves every file either whole or as it was.
///
/// # Errors
/// Anything [`Report::validate`] rejects (checked before any file is touched), then
/// [`Error::Io`], [`Error::Serialize`] or [`Error::Plot`].
pub fn write_report(dir: &Path, report: &Report) -> Result<()> {
    report.validate()?;
    // Render everything before writing anything, so a drawing failure writes nothing.
    let mut json = serde_json::to_string_pretty(report)?;
    json.push('\n');
    let files = [
        (FILES[0], json),
        (FILES[1], render_markdown(report)?),
        (FILES[2], render_fidelity_vs_size(report)?),
        (FILES[3], render_fidelity_vs_latency(report)?),
    ];
    fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
    for (name, contents) in &files {
        write_atomically(&dir.join(name), contents.as_bytes())?;
    }
    Ok(())
}

/// Writes `bytes` to a temporary sibling of `path`, syncs it and renames it onto `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let file_name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let written = fs::File::create(&temporary)
        .and_then(|mut file| file.write_all(bytes).and_then(|()| file.sync_all()))
        .map_err(io_error(&temporary))
        .and_then(|()| fs::rename(&temporary, path).map_err(io_error(path)));
    if written.is_err() {
        // Best effort: the error that matters is the one already in hand.
        let _ = fs::remove_file(&temporary);
    }
    written
}

/// Shared hand-made rows for the module's unit tests.
#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    /// A row with ratios left at zero (call [`Report::fill_ratios`]).
    pub(crate) fn row(name: &str, size_mb: f64, single: f64, batched: f64, mean_cosine: f64) -> Row {
        Row {
            name: name.to_owned(),
            recipe: format!("apply {name}"),
            size_bytes: (size_mb * 1e6).round() as u64,
            compression: 0.0,
            latency_ms: Latency { single, batched },
            speedup: Speedup { single: 0.0, batched: 0.0 },
            baseline_latency_ms: None,
            mean_cosine,
            min_cosine: mean_cosine - 0.05,
            spearman: Some(mean_cosine - 0.01),
            top1_agreement: mean_cosine - 0.03,
            compress_seconds: 2.0,
            kernels: BTreeMap::from([("dense f32".to_owned(), 36)]),
        }
    }

    /// A report over `rows`, ratios filled.
    pub(crate) fn report(rows: Vec<Row>) -> Report {
        let mut report = Report {
            model: "all-MiniLM-L6-v2".to_owned(),
            machine: "test cpu, 1 core, x86_64 (avx2)".to_owned(),
            eval_set: EvalSet { name: "lathe eval".to_owned(), n_sentences: 280, sha256: "0f".repeat(32) },
            rows,
            latency_sentences: None,
        };
        report.fill_ratios().expect("hand-made rows have positive sizes and latencies");
        report
    }

    /// fp32, q8_0, q4_0, magnitude 50% (no smaller, no faster, less faithful: dominated), and
    /// int8 weight-only (smaller than q8_0 but slower).
    pub(crate) fn sample() -> Report {
        let mut rows = vec![
            row("fp32", 88.1, 10.0, 400.0, 1.0),
            row("q8_0", 24.0, 8.0, 300.0, 0.999),
            row("q4_0", 12.8, 7.0, 320.0, 0.962),
            row("magnitude 50%", 88.1, 10.2, 405.0, 0.93),
            row("int8-channel weight-only", 23.0, 12.0, 450.0, 0.998),
        ];
        rows[0].compress_seconds = 0.0;
        rows[0].min_cosine = 1.0;
        rows[0].spearman = Some(1.0);
        rows[0].top1_agreement = 1.0;
        rows[2].min_cosine = 0.871;
        rows[2].top1_agreement = 0.92;
        rows[3].kernels = BTreeMap::from([("sparse csr".to_owned(), 24), ("dense f32".to_owned(), 12)]);
        rows[3].compress_seconds = 95.0;
        report(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::{report, row, sample};
    use super::*;

    #[test]
    fn fill_ratios_divides_the_baseline_by_each_row() {
        let report = sample();
        let q4 = &report.rows[2];
        assert!((q4.compression - 88.1 / 12.8).abs() < 1e-3);
        assert!((q4.speedup.single - 10.0 / 7.0).abs() < 1e-12);
        assert!((q4.speedup.batched - 400.0 / 320.0).abs() < 1e-12);
        assert_eq!(report.rows[0].compression, 1.0);
        assert_eq!(report.rows[0].speedup, Speedup { single: 1.0, batched: 1.0 });
    }

    #[test]
    fn fill_ratios_divides_the_baseline_timed_alongside_a_row_when_there_is_one() {
        let mut report = sample();
        report.rows[2].baseline_latency_ms = Some(Latency { single: 14.0, batched: 480.0 });
        report.fill_ratios().unwrap();
        let q4 = &report.rows[2];
        assert!((q4.speedup.single - 14.0 / 7.0).abs() < 1e-12);
        assert!((q4.speedup.batched - 480.0 / 320.0).abs() < 1e-12);
        // Other rows still divide the baseline row's own times.
        assert!((report.rows[1].speedup.single - 10.0 / report.rows[1].latency_ms.single).abs() < 1e-12);
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(json.matches("baseline_latency_ms").count(), 1, "{json}");
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), report);
        report.rows[2].baseline_latency_ms = Some(Latency { single: 0.0, batched: 480.0 });
        assert!(matches!(report.fill_ratios(), Err(Error::NotPositive { field: "baseline_latency_ms.single", .. })));
    }

    #[test]
    fn fill_ratios_rejects_zero_latency_and_empty_reports() {
        let mut rows = vec![row("fp32", 88.0, 10.0, 400.0, 1.0), row("broken", 20.0, 0.0, 300.0, 0.9)];
        let mut bad = sample();
        bad.rows = rows.clone();
        match bad.fill_ratios() {
            Err(Error::NotPositive { row, field: "latency_ms.single", .. }) => assert_eq!(row, "broken"),
            other => panic!("expected NotPositive, got {other:?}"),
        }
        rows.clear();
        bad.rows = rows;
        assert!(matches!(bad.fill_ratios(), Err(Error::NoRows)));
    }

    #[test]
    fn validate_names_the_row_and_field() {
        let mut bad = sample();
        bad.rows[2].min_cosine = f64::NAN;
        match bad.validate() {
            Err(Error::NonFiniteField { row, field, .. }) => assert_eq!((row.as_str(), field), ("q4_0", "min_cosine")),
            other => panic!("expected NonFinite, got {other:?}"),
        }
        let mut bad = sample();
        bad.rows[3].spearman = Some(f64::INFINITY);
        assert!(matches!(bad.validate(), Err(Error::NonFiniteField { field: "spearman", .. })));
        let mut bad = sample();
        bad.rows[4].name = "q8_0".to_owned();
        assert!(matches!(bad.validate(), Err(Error::DuplicateName { first: 1, second: 4, .. })));
        let mut bad = sample();
        bad.rows[1].name = "  ".to_owned();
        assert!(matches!(bad.validate(), Err(Error::EmptyName { row: 1 })));
        let mut bad = sample();
        bad.rows[1].size_bytes = 0;
        assert!(matches!(bad.validate(), Err(Error::NotPositive { field: "size_bytes", .. })));
        let mut ok = sample();
        ok.rows[1].spearman = None;
        assert!(ok.validate().is_ok());
        assert!(report(vec![row("fp32", 1.0, 1.0, 1.0, 1.0)]).validate().is_ok());
    }

    #[test]
    fn error_messages_are_lower_case_without_trailing_period() {
        let errors = [
            Error::NoRows,
            Error::DuplicateName { name: "q8_0".to_owned(), first: 1, second: 2 },
            Error::NonFiniteField { row: "q8_0".to_owned(), field: "mean_cosine", value: f64::NAN },
            Error::Plot { plot: "fidelity_vs_size.svg", message: "boom".to_owned() },
        ];
        for error in errors {
            let message = error.to_string();
            assert!(message.starts_with(|c: char| c.is_lowercase()), "{message}");
            assert!(!message.ends_with('.'), "{message}");
        }
    }
}
