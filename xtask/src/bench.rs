//! `cargo xtask bench [quant|gemm|sparse|model|distill|all] [ARGS]`: the criterion benches under the conditions lathe's
//! figures assume (one thread), then one markdown table per kernel read back from criterion's
//! output files.
//!
//! The report reads `<criterion dir>/<group>/<function>/<parameter>/new/{benchmark,estimates}.json`
//! (the ids come from `benchmark.json`, not from folder names, which criterion sanitises), takes
//! the median point estimate and the throughput, and prints rates in 10^9 units per second (GB/s,
//! GFLOP/s) with ratios to the peer and to the machine's bandwidth measured in the same results.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{cargo, models, run_command, target_dir};

/// Which benches to run (and which tables to print afterwards).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Selection {
    /// lathe-peers' `quant_peers` and `bandwidth`.
    Quant,
    /// lathe-peers' `dense_gemm`.
    Gemm,
    /// lathe-peers' `sparse_peers` (and lathe-sparse's own bench).
    Sparse,
    /// lathe-model's `model`: the encoder end to end on the real MiniLM against the FMA peak.
    Model,
    /// The facade's `distill`: a training step of a student cut from MiniLM beside its forward
    /// pass, in real tokens per second.
    Distill,
    /// Every bench target of the workspace, the end-to-end ones on the real models included.
    All,
}

/// What the command line asked for.
#[derive(Debug)]
struct Options {
    selection: Selection,
    /// Passed through to every criterion bench binary (a filter, `--save-baseline NAME`, ...).
    criterion_args: Vec<String>,
}

impl Options {
    fn parse(args: Vec<String>) -> Options {
        let mut args = args;
        let selection = match args.first().map(String::as_str) {
            Some("quant") => Some(Selection::Quant),
            Some("gemm") => Some(Selection::Gemm),
            Some("sparse") => Some(Selection::Sparse),
            Some("model") => Some(Selection::Model),
            Some("distill") => Some(Selection::Distill),
            Some("all") => Some(Selection::All),
            _ => None,
        };
        if selection.is_some() {
            args.remove(0);
        }
        // Everything else belongs to criterion; an optional leading `--` is accepted so that
        // `cargo xtask bench -- --save-baseline main` reads like the cargo equivalent.
        if args.first().is_some_and(|arg| arg == "--") {
            args.remove(0);
        }
        Options { selection: selection.unwrap_or(Selection::All), criterion_args: args }
    }

    /// Whether criterion will measure (and so write fresh results worth a report): not when it
    /// only lists, tests, profiles or prints its help.
    fn measures(&self) -> bool {
        !self
            .criterion_args
            .iter()
            .any(|arg| matches!(arg.as_str(), "--list" | "--test" | "--profile-time" | "-h" | "--help"))
    }
}

pub(crate) fn run(args: Vec<String>) -> Result<()> {
    let options = Options::parse(args);
    run_criterion(&options)?;
    if options.measures() {
        let dir = criterion_dir()?;
        let results = read_results(&dir)?;
        print!("{}", report(&dir, &results, options.selection));
    }
    Ok(())
}

/// Runs the selected bench targets single-threaded: on this machine's two vCPUs a second thread
/// only adds noise (see NOTES.md). candle reads its own variable, and spin-waits if left at the
/// core count.
fn run_criterion(options: &Options) -> Result<()> {
    let mut command = cargo();
    command.env("RAYON_NUM_THREADS", "1").env("CANDLE_NUM_THREADS", "1").arg("bench");
    match options.selection {
        Selection::Quant => {
            command.args(["--package", "lathe-peers", "--bench", "quant_peers", "--bench", "bandwidth"]);
        }
        Selection::Gemm => {
            command.args(["--package", "lathe-peers", "--bench", "dense_gemm"]);
        }
        Selection::Sparse => {
            command.args(["--package", "lathe-peers", "--bench", "sparse_peers"]);
        }
        Selection::Model => {
            let models_dir = models::fetch()?;
            command.env(models::MODELS_DIR_VAR, models_dir);
            command.args(["--package", "lathe-model", "--bench", "model"]);
        }
        Selection::Distill => {
            let models_dir = models::fetch()?;
            command.env(models::MODELS_DIR_VAR, models_dir);
            command.args(["--package", "lathe", "--bench", "distill"]);
        }
        Selection::All => {
            // The end-to-end benches read the real models; fetching is a hash check when they are there.
            let models_dir = models::fetch()?;
            command.env(models::MODELS_DIR_VAR, models_dir);
            // `--bench '*'` keeps the library unit-test harnesses out: libtest rejects criterion's flags.
            command.args(["--workspace", "--bench", "*"]);
        }
    }
    command.arg("--").args(&options.criterion_args);
    run_command(&mut command)
}

/// Where criterion writes, found as criterion finds it: `$CRITERION_HOME`, else `criterion` in
/// cargo's target directory.
fn criterion_dir() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return Ok(PathBuf::from(home));
    }
    Ok(target_dir()?.join("criterion"))
}

/// What one benchmark processes per iteration, as criterion's `benchmark.json` records it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Throughput {
    Bytes(u64),
    Elements(u64),
}

impl Throughput {
    fn amount(self) -> u64 {
        match self {
            Throughput::Bytes(amount) | Throughput::Elements(amount) => amount,
        }
    }
}

/// One benchmark's latest result.
#[derive(Debug, Clone, PartialEq)]
struct Measurement {
    group: String,
    function: String,
    parameter: String,
    median_ns: f64,
    throughput: Option<Throughput>,
}

impl Measurement {
    /// Units per nanosecond, which is 10^9 units per second: GB/s or GFLOP/s.
    fn rate(&self) -> Option<f64> {
        let throughput = self.throughput?;
        (self.median_ns > 0.0).then(|| throughput.amount() as f64 / self.median_ns)
    }
}

/// Every result under `dir` (each `new` folder holding a `benchmark.json`); none when criterion
/// has not run yet.
fn read_results(dir: &Path) -> Result<Vec<Measurement>> {
    let mut results = Vec::new();
    if dir.is_dir() {
        collect_results(dir, &mut results)?;
    }
    Ok(results)
}

fn collect_results(dir: &Path, results: &mut Vec<Measurement>) -> Result<()> {
    let entries = fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let path = entry.with_context(|| format!("cannot list {}", dir.display()))?.path();
        if !path.is_dir() {
            continue;
        }
        if path.file_name().is_some_and(|name| name == "new") && path.join("benchmark.json").is_file() {
            results.push(read_measurement(&path)?);
        } else {
            collect_results(&path, results)?;
        }
    }
    Ok(())
}

fn read_json(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// One result from a `new` folder: ids and throughput from `benchmark.json`, the median from
/// `estimates.json`.
fn read_measurement(new_dir: &Path) -> Result<Measurement> {
    let benchmark_path = new_dir.join("benchmark.json");
    let benchmark = read_json(&benchmark_path)?;
    let text_field = |key: &str| benchmark[key].as_str().unwrap_or("").to_owned();
    let group = text_field("group_id");
    if group.is_empty() {
        bail!("{} has no group_id", benchmark_path.display());
    }
    let throughput = match &benchmark["throughput"] {
        Value::Null => None,
        value => {
            let amount = |key: &str| value[key].as_u64();
            match (amount("Bytes").or_else(|| amount("BytesDecimal")), amount("Elements")) {
                (Some(bytes), _) => Some(Throughput::Bytes(bytes)),
                (None, Some(elements)) => Some(Throughput::Elements(elements)),
                (None, None) => bail!("{}: unknown throughput {value}", benchmark_path.display()),
            }
        }
    };
    let estimates_path = new_dir.join("estimates.json");
    let estimates = read_json(&estimates_path)?;
    let median_ns = estimates["median"]["point_estimate"]
        .as_f64()
        .with_context(|| format!("{} has no median.point_estimate", estimates_path.display()))?;
    Ok(Measurement {
        group,
        function: text_field("function_id"),
        parameter: text_field("value_str"),
        median_ns,
        throughput,
    })
}

/// The single-thread bandwidth measurements (group `bandwidth` of lathe-peers) that memory-bound
/// rows are divided by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bandwidth {
    Read,
    Write,
}

impl Bandwidth {
    fn function(self) -> &'static str {
        match self {
            Bandwidth::Read => "read",
            Bandwidth::Write => "write",
        }
    }
}

/// The divisor of a ratio column.
#[derive(Debug, Clone, Copy)]
enum Denominator {
    /// Another column of the same row.
    Function(&'static str),
    /// The machine's bandwidth.
    Bandwidth(Bandwidth),
}

#[derive(Debug, Clone, Copy)]
struct Ratio {
    numerator: &'static str,
    denominator: Denominator,
    header: &'static str,
}

/// How a table's rows (its parameters) are ordered.
#[derive(Debug, Clone, Copy)]
enum RowOrder {
    /// By the throughput per iteration: input sizes from L1 to DRAM.
    Amount,
    /// `{tokens}x{in}x{out}`: by weight size, then `in`, then tokens.
    GemmShape,
    /// In the listed order; unknown parameters last.
    Listed(&'static [&'static str]),
}

/// One kernel's table: a criterion group, its implementations as columns.
#[derive(Debug, Clone)]
struct TableSpec {
    /// The criterion group; a trailing `*` takes every group with that prefix (their parameters
    /// must differ).
    group: String,
    caption: String,
    row_header: &'static str,
    columns: &'static [(&'static str, &'static str)],
    ratios: Vec<Ratio>,
    order: RowOrder,
}

const QUANT_COLUMNS: &[(&str, &str)] = &[("lathe_scalar", "lathe scalar"), ("lathe", "lathe"), ("candle", "candle")];
const GEMV_COLUMNS: &[(&str, &str)] = &[("candle", "candle"), ("lathe", "lathe")];
const GEMV_INT8_COLUMNS: &[(&str, &str)] = &[("dense", "dense f32"), ("lathe", "lathe int8")];
const QUANT_GEMM_COLUMNS: &[(&str, &str)] = &[
    ("dense", "dense f32"),
    ("lathe_int8-channel", "int8"),
    ("lathe_int8-channel-a7", "int8 (7-bit act.)"),
    ("lathe_q8_0", "q8_0"),
    ("lathe_q4_0", "q4_0"),
    ("candle_q8_0", "candle q8_0"),
];
const SPARSE_COLUMNS: &[(&str, &str)] = &[
    ("dense", "dense"),
    ("csr_50", "csr 50%"),
    ("csr_70", "csr 70%"),
    ("csr_90", "csr 90%"),
    ("csr_95", "csr 95%"),
    ("nm_2_4", "2:4"),
    ("sprs_50", "sprs 50%"),
    ("sprs_70", "sprs 70%"),
    ("sprs_90", "sprs 90%"),
    ("sprs_95", "sprs 95%"),
];
const GEMM_COLUMNS: &[(&str, &str)] =
    &[("lathe", "lathe"), ("matrixmultiply", "matrixmultiply"), ("gemm", "gemm"), ("faer", "faer")];

fn table_specs(selection: Selection) -> Vec<TableSpec> {
    let mut specs = Vec::new();
    if matches!(selection, Selection::Quant | Selection::All) {
        for format in ["q8_0", "q4_0", "q4_1"] {
            for (op, bandwidth, what) in
                [("quantize", Bandwidth::Read, "f32 read"), ("dequantize", Bandwidth::Write, "f32 written")]
            {
                let vs_bandwidth = match bandwidth {
                    Bandwidth::Read => "lathe / read bw",
                    Bandwidth::Write => "lathe / write bw",
                };
                specs.push(TableSpec {
                    group: format!("{op}_{format}"),
                    caption: format!("GB/s of {what}"),
                    row_header: "size",
                    columns: QUANT_COLUMNS,
                    ratios: vec![
                        Ratio {
                            numerator: "lathe",
                            denominator: Denominator::Function("candle"),
                            header: "lathe / candle",
                        },
                        Ratio {
                            numerator: "lathe",
                            denominator: Denominator::Bandwidth(bandwidth),
                            header: vs_bandwidth,
                        },
                    ],
                    order: RowOrder::Amount,
                });
            }
        }
        for format in ["q4_0", "q8_0"] {
            specs.push(TableSpec {
                group: format!("gemv_{format}"),
                caption: "1x4096x4096, GB/s of quantized weights read".to_owned(),
                row_header: "weights",
                columns: GEMV_COLUMNS,
                ratios: vec![
                    Ratio {
                        numerator: "lathe",
                        denominator: Denominator::Function("candle"),
                        header: "lathe / candle",
                    },
                    Ratio {
                        numerator: "candle",
                        denominator: Denominator::Bandwidth(Bandwidth::Read),
                        header: "candle / read bw",
                    },
                    Ratio {
                        numerator: "lathe",
                        denominator: Denominator::Bandwidth(Bandwidth::Read),
                        header: "lathe / read bw",
                    },
                ],
                order: RowOrder::Listed(&["hot", "cold"]),
            });
        }
        specs.push(TableSpec {
            group: "gemv_int8".to_owned(),
            caption: "1x4096x4096, 10^9 weights per second".to_owned(),
            row_header: "weights",
            columns: GEMV_INT8_COLUMNS,
            ratios: vec![Ratio {
                numerator: "lathe",
                denominator: Denominator::Function("dense"),
                header: "int8 / dense",
            }],
            order: RowOrder::Listed(&["hot", "cold"]),
        });
        specs.push(TableSpec {
            group: "quant_gemm".to_owned(),
            caption: "GFLOP/s, Y = X · Wᵀ, activations quantized on every call".to_owned(),
            row_header: "tokens x in x out",
            columns: QUANT_GEMM_COLUMNS,
            ratios: vec![
                Ratio {
                    numerator: "lathe_int8-channel",
                    denominator: Denominator::Function("dense"),
                    header: "int8 / dense",
                },
                Ratio {
                    numerator: "lathe_int8-channel-a7",
                    denominator: Denominator::Function("lathe_int8-channel"),
                    header: "7-bit / int8",
                },
                Ratio {
                    numerator: "lathe_q8_0",
                    denominator: Denominator::Function("candle_q8_0"),
                    header: "q8_0 / candle",
                },
            ],
            order: RowOrder::GemmShape,
        });
    }
    if matches!(selection, Selection::Sparse | Selection::All) {
        let ratio = |numerator, denominator, header| Ratio {
            numerator,
            denominator: Denominator::Function(denominator),
            header,
        };
        specs.push(TableSpec {
            group: "sparse_*".to_owned(),
            caption: "effective GFLOP/s (dense FLOPs / time), Y = X · Wᵀ".to_owned(),
            row_header: "tokens x in x out",
            columns: SPARSE_COLUMNS,
            ratios: vec![
                ratio("csr_70", "dense", "70% / dense"),
                ratio("csr_90", "dense", "90% / dense"),
                ratio("nm_2_4", "dense", "2:4 / dense"),
                ratio("csr_50", "sprs_50", "csr / sprs 50%"),
                ratio("csr_90", "sprs_90", "csr / sprs 90%"),
            ],
            order: RowOrder::GemmShape,
        });
    }
    if matches!(selection, Selection::Gemm | Selection::All) {
        specs.push(TableSpec {
            group: "dense_gemm".to_owned(),
            caption: "GFLOP/s, Y = X · Wᵀ".to_owned(),
            row_header: "tokens x in x out",
            columns: GEMM_COLUMNS,
            ratios: vec![
                Ratio { numerator: "lathe", denominator: Denominator::Function("gemm"), header: "lathe / gemm" },
                Ratio { numerator: "lathe", denominator: Denominator::Function("faer"), header: "lathe / faer" },
                Ratio { numerator: "faer", denominator: Denominator::Function("gemm"), header: "faer / gemm" },
                Ratio {
                    numerator: "gemm",
                    denominator: Denominator::Function("matrixmultiply"),
                    header: "gemm / matrixmultiply",
                },
            ],
            order: RowOrder::GemmShape,
        });
    }
    specs
}

/// The report: the bandwidth table, then one table per kernel of the selection that has results.
fn report(dir: &Path, results: &[Measurement], selection: Selection) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n## Bench report\n");
    let _ = writeln!(
        out,
        "Single thread; median of criterion's samples from {}; rates in 10^9 per second \
         (criterion itself prints GiB/s).\n",
        dir.display()
    );
    let bandwidth_rate = |bandwidth: Bandwidth| {
        results
            .iter()
            .find(|m| m.group == "bandwidth" && m.function == bandwidth.function())
            .and_then(Measurement::rate)
    };
    let bandwidth_rows: Vec<&Measurement> = results.iter().filter(|m| m.group == "bandwidth").collect();
    let mut printed = 0;
    if !matches!(selection, Selection::Gemm | Selection::Model | Selection::Distill) && !bandwidth_rows.is_empty() {
        let _ = writeln!(out, "### bandwidth (GB/s)\n\n| access | size | GB/s |\n|---|---|---:|");
        let mut rows = bandwidth_rows;
        rows.sort_by_key(|m| {
            (["read", "read_4_streams", "write", "memset"].iter().position(|f| *f == m.function), m.function.clone())
        });
        for m in rows {
            let _ = writeln!(out, "| {} | {} | {} |", m.function, m.parameter, format_rate(m.rate()));
        }
        out.push('\n');
        printed += 1;
    }
    if matches!(selection, Selection::Model | Selection::All)
        && let Some(table) = model_table(results)
    {
        out.push_str(&table);
        printed += 1;
    }
    if matches!(selection, Selection::Distill | Selection::All)
        && let Some(table) = distill_table(results)
    {
        out.push_str(&table);
        printed += 1;
    }
    for spec in table_specs(selection) {
        let table = render_table(&spec, results, &bandwidth_rate);
        if let Some(table) = table {
            out.push_str(&table);
            printed += 1;
        }
    }
    if printed == 0 {
        let _ = writeln!(out, "(no results for this selection under {})", dir.display());
    }
    out
}

/// `spec`'s table, or `None` when its group has no results.
fn render_table(
    spec: &TableSpec,
    results: &[Measurement],
    bandwidth_rate: &dyn Fn(Bandwidth) -> Option<f64>,
) -> Option<String> {
    // parameter -> function -> measurement
    let mut rows: BTreeMap<&str, BTreeMap<&str, &Measurement>> = BTreeMap::new();
    let in_table = |group: &str| match spec.group.strip_suffix('*') {
        Some(prefix) => group.starts_with(prefix),
        None => group == spec.group,
    };
    for m in results.iter().filter(|m| in_table(&m.group)) {
        rows.entry(m.parameter.as_str()).or_default().insert(m.function.as_str(), m);
    }
    if rows.is_empty() {
        return None;
    }
    let mut parameters: Vec<&str> = rows.keys().copied().collect();
    parameters.sort_by_key(|parameter| {
        let amount = rows[parameter].values().find_map(|m| m.throughput).map_or(0, Throughput::amount);
        (row_key(spec.order, parameter, amount), parameter.to_string())
    });

    let mut out = String::new();
    let _ = writeln!(out, "### {} ({})\n", spec.group.trim_end_matches('*'), spec.caption);
    let mut header = format!("| {} |", spec.row_header);
    let mut rule = String::from("|---|");
    for (_, name) in spec.columns.iter() {
        let _ = write!(header, " {name} |");
        rule.push_str("---:|");
    }
    for ratio in &spec.ratios {
        let _ = write!(header, " {} |", ratio.header);
        rule.push_str("---:|");
    }
    let _ = writeln!(out, "{header}\n{rule}");
    for parameter in parameters {
        let row = &rows[parameter];
        let rate = |function: &str| row.get(function).and_then(|m| m.rate());
        let mut line = format!("| {parameter} |");
        for (function, _) in spec.columns.iter() {
            let _ = write!(line, " {} |", format_rate(rate(function)));
        }
        for ratio in &spec.ratios {
            let denominator = match ratio.denominator {
                Denominator::Function(function) => rate(function),
                Denominator::Bandwidth(bandwidth) => bandwidth_rate(bandwidth),
            };
            let value = rate(ratio.numerator).zip(denominator).map(|(n, d)| n / d);
            let _ = write!(line, " {} |", value.map_or_else(|| "-".to_owned(), |value| format!("{value:.2}")));
        }
        let _ = writeln!(out, "{line}");
    }
    out.push('\n');
    Some(out)
}

/// The table of lathe-model's `model` group: the padded batch of the 48 golden sentences end to
/// end and in parts, each as time, GFLOP/s and share of the f32 FMA peak measured in the same
/// run, then batching by length against the padded batch. `None` without a forward result.
fn model_table(results: &[Measurement]) -> Option<String> {
    let find = |function: &str, parameter: &str| {
        results.iter().find(|m| m.group == "model" && m.function == function && m.parameter == parameter)
    };
    let forward = find("forward_padded", "")?;
    let peak = find("fma_peak", "").and_then(Measurement::rate);
    let gflops = |m: &Measurement| match m.throughput {
        Some(Throughput::Elements(_)) => m.rate(),
        _ => None,
    };
    let of_peak = |rate: Option<f64>| match (rate, peak) {
        (Some(rate), Some(peak)) => format!("{:.0} %", 100.0 * rate / peak),
        _ => "-".to_owned(),
    };
    let share = |ns: f64| format!("{:.0} %", 100.0 * ns / forward.median_ns);
    let ms = |ns: f64| if ns >= 1e7 { format!("{:.0}", ns / 1e6) } else { format!("{:.2}", ns / 1e6) };

    let mut out = String::from(
        "### model (all-MiniLM-L6-v2, the 48 golden sentences; GFLOP/s over the padded batch's FLOPs)\n\n\
         | part | ms | GFLOP/s | of FMA peak | of forward |\n|---|---:|---:|---:|---:|\n",
    );
    if let Some(peak) = peak {
        let _ = writeln!(out, "| f32 FMA peak (same run) | - | {} | 100 % | - |", format_rate(Some(peak)));
    }
    let rate = gflops(forward);
    let _ = writeln!(
        out,
        "| forward, padded batch | {} | {} | {} | 100 % |",
        ms(forward.median_ns),
        format_rate(rate),
        of_peak(rate)
    );
    let mut parts_ns = 0.0;
    for (function, label, flops) in [
        ("gemm_padded", "GEMM (36 linears)", true),
        ("attention_padded", "attention (in the forward pass)", true),
        ("gelu_padded", "GELU", false),
    ] {
        if let Some(m) = find(function, "") {
            parts_ns += m.median_ns;
            let rate = if flops { gflops(m) } else { None };
            let _ = writeln!(
                out,
                "| {label} | {} | {} | {} | {} |",
                ms(m.median_ns),
                format_rate(rate),
                of_peak(rate),
                share(m.median_ns)
            );
        }
    }
    // The parts are timed apart: under load their sum can exceed the whole, and then there is
    // no meaningful remainder to show.
    let rest = forward.median_ns - parts_ns;
    let (rest_ms, rest_share) = if rest > 0.0 { (ms(rest), share(rest)) } else { ("-".to_owned(), "-".to_owned()) };
    let _ = writeln!(
        out,
        "| rest: embeddings, LayerNorm, residuals, pooling (forward minus the parts above) | {rest_ms} | - | - | \
         {rest_share} |"
    );
    if let Some(m) = find("tokenize", "") {
        let _ =
            writeln!(out, "| tokenization (48 sentences, not in the forward pass) | {} | - | - | - |", ms(m.median_ns));
    }
    let mut by_length: Vec<&Measurement> =
        results.iter().filter(|m| m.group == "model" && m.function == "embed_by_length").collect();
    by_length.sort_by_key(|m| m.parameter.parse::<u64>().unwrap_or(u64::MAX));
    if !by_length.is_empty() {
        out.push_str(
            "\n| by length (`embed_sentences`, tokenization included) | ms | padded GFLOP/s | speed-up over the padded batch |\n\
             |---|---:|---:|---:|\n",
        );
        for m in by_length {
            let _ = writeln!(
                out,
                "| batches of at most {} (`--batch-size`) | {} | {} | {:.2}x |",
                m.parameter,
                ms(m.median_ns),
                format_rate(gflops(m)),
                forward.median_ns / m.median_ns
            );
        }
    }
    out.push('\n');
    Some(out)
}

/// The table of the facade's `distill` group: per batch (`<sentences>x<padded length>`), real
/// tokens per second of a training step, of the same forward pass with its tape, and of the
/// inference forward pass, and how many forward passes a step costs. `None` without results.
fn distill_table(results: &[Measurement]) -> Option<String> {
    let mut rows: BTreeMap<&str, BTreeMap<&str, &Measurement>> = BTreeMap::new();
    for m in results.iter().filter(|m| m.group == "distill") {
        rows.entry(m.parameter.as_str()).or_default().insert(m.function.as_str(), m);
    }
    if rows.is_empty() {
        return None;
    }
    let per_second = |m: Option<&&Measurement>| m.and_then(|m| m.rate()).map(|rate| rate * 1e9);
    let tokens = |rate: Option<f64>| rate.map_or_else(|| "-".to_owned(), |rate| format!("{rate:.0}"));
    let mut out = String::from(
        "### distill (3-layer student of all-MiniLM-L6-v2: layers 0, 2, 4; real tokens per second)\n\n\
         | batch | real tokens | train step ms | train tok/s | forward with tape tok/s | forward tok/s | forward / train |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for (parameter, row) in rows {
        let train = row.get("train_step");
        let (train_rate, forward_rate) = (per_second(train), per_second(row.get("forward")));
        let real_tokens = row.values().find_map(|m| m.throughput).map(Throughput::amount);
        let ratio = train_rate.zip(forward_rate).map(|(train, forward)| forward / train);
        let _ = writeln!(
            out,
            "| {parameter} | {} | {} | {} | {} | {} | {} |",
            real_tokens.map_or_else(|| "-".to_owned(), |amount| amount.to_string()),
            train.map_or_else(|| "-".to_owned(), |m| format!("{:.0}", m.median_ns / 1e6)),
            tokens(train_rate),
            tokens(per_second(row.get("forward_tape"))),
            tokens(forward_rate),
            ratio.map_or_else(|| "-".to_owned(), |ratio| format!("{ratio:.2}x")),
        );
    }
    out.push('\n');
    Some(out)
}

fn row_key(order: RowOrder, parameter: &str, amount: u64) -> (u64, u64, u64) {
    match order {
        RowOrder::Amount => (amount, 0, 0),
        RowOrder::GemmShape => {
            let dims: Vec<u64> = parameter.split('x').map(|part| part.parse().unwrap_or(u64::MAX)).collect();
            match dims[..] {
                [tokens, in_features, out_features] => (in_features.saturating_mul(out_features), in_features, tokens),
                _ => (u64::MAX, 0, 0),
            }
        }
        RowOrder::Listed(listed) => {
            (listed.iter().position(|name| *name == parameter).map_or(u64::MAX, |idx| idx as u64), 0, 0)
        }
    }
}

/// Three significant figures for rates of 1 and up, two decimals below.
fn format_rate(rate: Option<f64>) -> String {
    match rate {
        None => "-".to_owned(),
        Some(rate) if rate >= 100.0 => format!("{rate:.0}"),
        Some(rate) if rate >= 10.0 => format!("{rate:.1}"),
        Some(rate) => format!("{rate:.2}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|arg| (*arg).to_owned()).collect()
    }

    #[test]
    fn leading_double_dash_is_dropped_and_the_rest_passes_through() {
        let options = Options::parse(strings(&["--", "--save-baseline", "main", "dequantize"]));
        assert_eq!(options.selection, Selection::All);
        assert_eq!(options.criterion_args, strings(&["--save-baseline", "main", "dequantize"]));
        let options = Options::parse(strings(&["dequantize", "--", "x"]));
        assert_eq!(options.criterion_args, strings(&["dequantize", "--", "x"]));
    }

    #[test]
    fn a_leading_selection_is_taken_and_only_there() {
        let options = Options::parse(strings(&["gemm", "--", "--measurement-time", "3"]));
        assert_eq!(options.selection, Selection::Gemm);
        assert_eq!(options.criterion_args, strings(&["--measurement-time", "3"]));
        let options = Options::parse(strings(&["quant", "dequantize_q4_0"]));
        assert_eq!(options.selection, Selection::Quant);
        assert_eq!(options.criterion_args, strings(&["dequantize_q4_0"]));
        let options = Options::parse(strings(&["--", "quant"]));
        assert_eq!(options.selection, Selection::All);
        assert_eq!(options.criterion_args, strings(&["quant"]));
        assert_eq!(Options::parse(strings(&["sparse"])).selection, Selection::Sparse);
        assert!(!Options::parse(strings(&["quant", "--", "--list"])).measures());
        assert!(Options::parse(strings(&["quant"])).measures());
    }

    fn measurement(
        group: &str,
        function: &str,
        parameter: &str,
        median_ns: f64,
        throughput: Throughput,
    ) -> Measurement {
        Measurement {
            group: group.to_owned(),
            function: function.to_owned(),
            parameter: parameter.to_owned(),
            median_ns,
            throughput: Some(throughput),
        }
    }

    #[test]
    fn quant_tables_show_rates_and_ratios_to_candle_and_bandwidth() {
        let results = vec![
            measurement("bandwidth", "read", "256MiB", 20.0, Throughput::Bytes(400)),
            measurement("bandwidth", "write", "256MiB", 10.0, Throughput::Bytes(100)),
            measurement("dequantize_q8_0", "candle", "64MiB", 100.0, Throughput::Bytes(500)),
            measurement("dequantize_q8_0", "lathe", "64MiB", 100.0, Throughput::Bytes(800)),
            measurement("dequantize_q8_0", "lathe_scalar", "4KiB", 1.0, Throughput::Bytes(4)),
            measurement("dequantize_q8_0", "lathe", "4KiB", 1.0, Throughput::Bytes(40)),
            measurement("gemv_q4_0", "candle", "cold", 2.0, Throughput::Bytes(24)),
            measurement("dense_gemm", "gemm", "1x4096x4096", 1.0, Throughput::Elements(7)),
            measurement("gemv_int8", "dense", "cold", 4.0, Throughput::Elements(16)),
            measurement("gemv_int8", "lathe", "cold", 1.0, Throughput::Elements(16)),
            measurement("quant_gemm", "dense", "128x384x384", 2.0, Throughput::Elements(100)),
            measurement("quant_gemm", "lathe_int8-channel", "128x384x384", 1.0, Throughput::Elements(100)),
            measurement("quant_gemm", "lathe_int8-channel-a7", "128x384x384", 0.8, Throughput::Elements(100)),
        ];
        let text = report(Path::new("target/criterion"), &results, Selection::Quant);
        assert!(text.contains("| read | 256MiB | 20.0 |"), "{text}");
        assert!(text.contains("| write | 256MiB | 10.0 |"), "{text}");
        // 4KiB sorts before 64MiB (by bytes, not by name); a missing column is a dash.
        let small = text.find("| 4KiB | 4.00 | 40.0 | - | - | 4.00 |").expect(&text);
        let large = text.find("| 64MiB | - | 8.00 | 5.00 | 1.60 | 0.80 |").expect(&text);
        assert!(small < large, "{text}");
        assert!(text.contains("| cold | 12.0 | - | - | 0.60 | - |"), "{text}");
        assert!(text.contains("| cold | 4.00 | 16.0 | 4.00 |"), "{text}");
        assert!(text.contains("| 128x384x384 | 50.0 | 100 | 125 | - | - | - | 2.00 | 1.25 | - |"), "{text}");
        assert!(!text.contains("dense_gemm"), "the gemm table belongs to the gemm selection: {text}");
        assert!(!text.contains("quantize_q4_1"), "tables without results are left out: {text}");
    }

    #[test]
    fn sparse_table_gathers_every_shape_group() {
        let flops = Throughput::Elements(1000);
        let results = vec![
            measurement("sparse_384x384_t128", "dense", "128x384x384", 20.0, flops),
            measurement("sparse_384x384_t128", "csr_90", "128x384x384", 4.0, flops),
            measurement("sparse_4096x4096_t1", "dense", "1x4096x4096", 100.0, flops),
            measurement("sparse_4096x4096_t1", "csr_90", "1x4096x4096", 10.0, flops),
        ];
        let text = report(Path::new("target/criterion"), &results, Selection::Sparse);
        let small = text.find("| 128x384x384 | 50.0 | - | - | 250 |").expect(&text);
        let large = text.find("| 1x4096x4096 | 10.0 | - | - | 100 |").expect(&text);
        assert!(small < large, "{text}");
        assert!(text.contains("| - | 5.00 | - | - | - |"), "{text}");
    }

    #[test]
    fn gemm_rows_are_grouped_by_shape_then_tokens() {
        let flops = |t: u64, i: u64, o: u64| Throughput::Elements(2 * t * i * o);
        let results = vec![
            measurement("dense_gemm", "faer", "128x384x384", 1e6, flops(128, 384, 384)),
            measurement("dense_gemm", "gemm", "128x384x384", 1e6, flops(128, 384, 384)),
            measurement("dense_gemm", "lathe", "128x384x384", 5e5, flops(128, 384, 384)),
            measurement("dense_gemm", "faer", "1x384x1536", 1e3, flops(1, 384, 1536)),
            measurement("dense_gemm", "faer", "32x384x384", 1e3, flops(32, 384, 384)),
            measurement("dense_gemm", "faer", "1x1536x384", 1e3, flops(1, 1536, 384)),
        ];
        let text = report(Path::new("x"), &results, Selection::Gemm);
        let order: Vec<usize> = ["| 32x384x384 |", "| 128x384x384 |", "| 1x384x1536 |", "| 1x1536x384 |"]
            .iter()
            .map(|row| text.find(row).unwrap_or_else(|| panic!("{row} missing from {text}")))
            .collect();
        assert!(order.windows(2).all(|pair| pair[0] < pair[1]), "{text}");
        assert!(text.contains("| 128x384x384 | 75.5 | - | 37.7 | 37.7 | 2.00 | 2.00 | 1.00 | - |"), "{text}");
        assert!(!text.contains("bandwidth"), "{text}");
    }

    #[test]
    fn model_table_shows_parts_against_the_peak_and_the_by_length_speed_up() {
        let flops = Throughput::Elements(70_000_000_000);
        let results = vec![
            measurement("model", "fma_peak", "", 1e6, Throughput::Elements(100_000_000)),
            measurement("model", "forward_padded", "", 1e9, flops),
            measurement("model", "gemm_padded", "", 8e8, Throughput::Elements(64_000_000_000)),
            measurement("model", "attention_padded", "", 5e7, Throughput::Elements(2_000_000_000)),
            measurement("model", "gelu_padded", "", 3e7, Throughput::Elements(30_000_000)),
            measurement("model", "tokenize", "", 5e6, Throughput::Elements(48)),
            measurement("model", "embed_by_length", "16", 4e8, flops),
            measurement("model", "embed_by_length", "8", 5e8, flops),
            measurement("dense_gemm", "gemm", "128x384x384", 1.0, flops),
        ];
        let text = report(Path::new("x"), &results, Selection::Model);
        assert!(text.contains("| f32 FMA peak (same run) | - | 100 | 100 % | - |"), "{text}");
        assert!(text.contains("| forward, padded batch | 1000 | 70.0 | 70 % | 100 % |"), "{text}");
        assert!(text.contains("| GEMM (36 linears) | 800 | 80.0 | 80 % | 80 % |"), "{text}");
        assert!(text.contains("| attention (in the forward pass) | 50 | 40.0 | 40 % | 5 % |"), "{text}");
        assert!(text.contains("| GELU | 30 | - | - | 3 % |"), "{text}");
        assert!(text.contains("(forward minus the parts above) | 120 | - | - | 12 % |"), "{text}");
        assert!(text.contains("| tokenization (48 sentences, not in the forward pass) | 5.00 | - | - | - |"), "{text}");
        let eight = text.find("| batches of at most 8 (`--batch-size`) | 500 | 140 | 2.00x |").expect(&text);
        let sixteen = text.find("| batches of at most 16 (`--batch-size`) | 400 | 175 | 2.50x |").expect(&text);
        assert!(eight < sixteen, "{text}");
        assert!(!text.contains("dense_gemm"), "{text}");
        assert!(report(Path::new("x"), &results[..1], Selection::Model).contains("no results"));
        assert_eq!(Options::parse(strings(&["model"])).selection, Selection::Model);
    }

    #[test]
    fn distill_table_gives_tokens_per_second_and_the_forward_to_train_ratio() {
        let tokens = Throughput::Elements(800);
        let results = vec![
            measurement("distill", "train_step", "32x27", 4e8, tokens),
            measurement("distill", "forward_tape", "32x27", 1.6e8, tokens),
            measurement("distill", "forward", "32x27", 1e8, tokens),
            measurement("model", "forward_padded", "", 1e9, Throughput::Elements(1)),
        ];
        let text = report(Path::new("x"), &results, Selection::Distill);
        assert!(text.contains("| 32x27 | 800 | 400 | 2000 | 5000 | 8000 | 4.00x |"), "{text}");
        assert!(!text.contains("### model"), "{text}");
        assert!(report(Path::new("x"), &results[3..], Selection::Distill).contains("no results"));
        assert_eq!(Options::parse(strings(&["distill"])).selection, Selection::Distill);
    }

    #[test]
    fn results_are_read_from_criterion_files_by_their_recorded_ids() {
        let dir = std::env::temp_dir().join(format!("xtask-bench-report-{}", std::process::id()));
        let new_dir = dir.join("quantize_q4_0/candle/4KiB/new");
        fs::create_dir_all(&new_dir).unwrap();
        fs::create_dir_all(dir.join("quantize_q4_0/candle/4KiB/base")).unwrap();
        fs::write(
            new_dir.join("benchmark.json"),
            r#"{"group_id":"quantize_q4_0","function_id":"candle","value_str":"4KiB","throughput":{"Bytes":4096},"full_id":"quantize_q4_0/candle/4KiB","directory_name":"quantize_q4_0/candle/4KiB","title":"quantize_q4_0/candle/4KiB"}"#,
        )
        .unwrap();
        fs::write(
            new_dir.join("estimates.json"),
            r#"{"mean":{"point_estimate":3000.0},"median":{"point_estimate":2048.0}}"#,
        )
        .unwrap();
        let results = read_results(&dir);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            results.unwrap(),
            vec![measurement("quantize_q4_0", "candle", "4KiB", 2048.0, Throughput::Bytes(4096))]
        );
        assert!(read_results(&dir).unwrap().is_empty(), "a missing folder means no results yet");
    }
}
