//! `cargo xtask fuzz [--seconds N] [TARGET...]`: seed each target's corpus with the repository's
//! test files and fuzz the targets one after another with cargo-fuzz on nightly.

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::{UsageError, display_command, format_duration, project_root};

const DEFAULT_SECONDS: u64 = 600;

/// Valid files larger than this stay out of the corpus: libFuzzer derives its input length limit
/// from the corpus, and megabyte seeds slow every execution down.
const MAX_VALID_SEED_BYTES: u64 = 1 << 20;

#[derive(Debug, PartialEq, Eq)]
struct Options {
    seconds: u64,
    /// Empty means every target `cargo fuzz list` reports.
    targets: Vec<String>,
}

impl Options {
    fn parse(args: Vec<String>) -> Result<Options> {
        let mut seconds = DEFAULT_SECONDS;
        let mut targets = Vec::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let value = if arg == "--seconds" {
                args.next().ok_or_else(|| UsageError("`--seconds` needs a value".to_owned()))?
            } else if let Some(value) = arg.strip_prefix("--seconds=") {
                value.to_owned()
            } else if arg.starts_with('-') {
                return Err(UsageError(format!("unknown fuzz option `{arg}`")).into());
            } else {
                targets.push(arg);
                continue;
            };
            seconds = match value.parse::<u64>() {
                Ok(seconds) if seconds > 0 => seconds,
                _ => return Err(UsageError(format!("`--seconds` wants a positive whole number, got `{value}`")).into()),
            };
        }
        Ok(Options { seconds, targets })
    }
}

/// What one fuzzing run produced.
#[derive(Debug, Default, PartialEq, Eq)]
struct Outcome {
    /// How many inputs libFuzzer executed, when its output said so.
    executions: Option<u64>,
    /// Where libFuzzer wrote the input that crashed, if it did.
    crash_artifact: Option<String>,
    /// Whether `cargo fuzz run` exited successfully (it fails on a crash, a leak, a timeout, an
    /// out-of-memory input or a build error).
    exited_ok: bool,
}

impl Outcome {
    fn passed(&self) -> bool {
        self.exited_ok && self.crash_artifact.is_none()
    }
}

pub(crate) fn run(args: Vec<String>) -> Result<()> {
    let options = Options::parse(args)?;
    let root = project_root();
    let fuzz_dir = root.join("fuzz");
    if !fuzz_dir.join("Cargo.toml").is_file() {
        bail!("no fuzz project at {} (expected {})", fuzz_dir.display(), fuzz_dir.join("Cargo.toml").display());
    }
    let targets = if options.targets.is_empty() { list_targets(&fuzz_dir)? } else { options.targets };
    if targets.is_empty() {
        bail!("`cargo +nightly fuzz list` in {} lists no targets", fuzz_dir.display());
    }

    let mut results = Vec::new();
    for target in &targets {
        let seeds = seed_corpus(&root, &fuzz_dir, target)?;
        println!("{target}: {seeds} seed file(s) copied into fuzz/corpus/{target}");
        println!("\n==> fuzz {target} for {} s", options.seconds);
        let start = Instant::now();
        let outcome = fuzz_target(&fuzz_dir, target, options.seconds)
            .with_context(|| format!("cannot fuzz target `{target}`"))?;
        let elapsed = start.elapsed();
        let verdict = if outcome.passed() { "done" } else { "FAILED" };
        println!("<== fuzz {target}: {verdict} after {}", format_duration(elapsed));
        results.push((target, outcome, elapsed));
    }

    println!("\nfuzz summary:");
    let mut failed = Vec::new();
    for (target, outcome, elapsed) in &results {
        let executions = outcome.executions.map_or_else(|| "unknown number of".to_owned(), |count| count.to_string());
        let verdict = match (&outcome.crash_artifact, outcome.exited_ok) {
            (Some(artifact), _) => format!("CRASH, input written to {artifact}"),
            (None, true) => "no crash".to_owned(),
            (None, false) => "FAILED (see the output above)".to_owned(),
        };
        println!("  {target}: {executions} executions in {}, {verdict}", format_duration(*elapsed));
        if !outcome.passed() {
            failed.push(target.as_str());
        }
    }
    if !failed.is_empty() {
        bail!("fuzzing failed for: {}", failed.join(", "));
    }
    Ok(())
}

fn nightly_cargo(fuzz_dir: &Path) -> Command {
    // The rustup proxy, not `$CARGO`: that one is the pinned stable toolchain and ignores `+nightly`.
    let mut command = Command::new("cargo");
    command.current_dir(fuzz_dir).env_remove("CARGO").env_remove("RUSTUP_TOOLCHAIN").arg("+nightly").arg("fuzz");
    command
}

fn list_targets(fuzz_dir: &Path) -> Result<Vec<String>> {
    let mut command = nightly_cargo(fuzz_dir);
    command.arg("list").stderr(Stdio::inherit());
    let shown = display_command(&command);
    let output = command.output().with_context(|| format!("cannot run `{shown}` in {}", fuzz_dir.display()))?;
    if !output.status.success() {
        bail!(
            "`{shown}` in {} failed ({}); is cargo-fuzz installed (`cargo install cargo-fuzz`)?",
            fuzz_dir.display(),
            output.status
        );
    }
    let stdout = String::from_utf8(output.stdout).with_context(|| format!("`{shown}` printed non-UTF-8 text"))?;
    Ok(stdout.lines().map(str::trim).filter(|line| !line.is_empty()).map(str::to_owned).collect())
}

/// The file extension whose test files seed `target`: the target name up to its first `_` or
/// `-`, so `gguf` and a later `gguf_header` both take the `.gguf` files.
fn seed_extension(target: &str) -> &str {
    target.split(['_', '-']).next().unwrap_or(target)
}

/// Copies the malformed files (all of them) and the valid small files with the target's
/// extension into `fuzz/corpus/<target>/`, and returns how many it copied.
fn seed_corpus(root: &Path, fuzz_dir: &Path, target: &str) -> Result<usize> {
    let extension = seed_extension(target);
    let corpus = fuzz_dir.join("corpus").join(target);
    fs::create_dir_all(&corpus).with_context(|| format!("cannot create {}", corpus.display()))?;
    let data = root.join("tests").join("data");
    let mut copied = 0;
    for (dir, prefix, max_bytes) in
        [(data.join("malformed"), "malformed-", u64::MAX), (data, "valid-", MAX_VALID_SEED_BYTES)]
    {
        for source in files_with_extension(&dir, extension)? {
            let size = fs::metadata(&source).with_context(|| format!("cannot stat {}", source.display()))?.len();
            if size > max_bytes {
                continue;
            }
            let file_name = source.file_name().expect("read_dir entries have a file name").to_string_lossy();
            let destination = corpus.join(format!("{prefix}{file_name}"));
            fs::copy(&source, &destination)
                .with_context(|| format!("cannot copy {} to {}", source.display(), destination.display()))?;
            copied += 1;
        }
    }
    Ok(copied)
}

/// The files directly in `dir` ending in `.extension`, sorted; none when `dir` does not exist.
fn files_with_extension(dir: &Path, extension: &str) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error).with_context(|| format!("cannot list {}", dir.display())),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.with_context(|| format!("cannot list {}", dir.display()))?.path();
        if path.is_file() && path.extension().is_some_and(|found| found == extension) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Runs libFuzzer on one target. Its output (on stderr) is passed through line by line and read
/// on the way for the execution count and any crash artifact.
fn fuzz_target(fuzz_dir: &Path, target: &str, seconds: u64) -> Result<Outcome> {
    let mut command = nightly_cargo(fuzz_dir);
    command
        .args(["run", target, "--"])
        .arg(format!("-max_total_time={seconds}"))
        .args(["-rss_limit_mb=4096", "-print_final_stats=1"])
        .stderr(Stdio::piped());
    let shown = display_command(&command);
    println!("$ {shown}");
    let mut child = command.spawn().with_context(|| format!("cannot start `{shown}` in {}", fuzz_dir.display()))?;
    let stderr = child.stderr.take().expect("stderr was piped");
    let mut outcome = Outcome::default();
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    let mut our_stderr = io::stderr().lock();
    loop {
        line.clear();
        let read =
            reader.read_until(b'\n', &mut line).with_context(|| format!("cannot read the output of `{shown}`"))?;
        if read == 0 {
            break;
        }
        // A closed terminal must not stop the fuzzer: echo failures are ignored.
        let _ = our_stderr.write_all(&line);
        outcome.observe(&String::from_utf8_lossy(&line));
    }
    drop(our_stderr);
    let status = child.wait().with_context(|| format!("cannot wait for `{shown}`"))?;
    outcome.exited_ok = status.success();
    Ok(outcome)
}

impl Outcome {
    /// Updates the outcome from one line of libFuzzer's output. The final-stats count is the
    /// authoritative one; the `#N DONE` and `Done N runs` lines are fallbacks.
    fn observe(&mut self, line: &str) {
        let line = line.trim();
        if let Some(count) = line.strip_prefix("stat::number_of_executed_units:") {
            if let Ok(count) = count.trim().parse() {
                self.executions = Some(count);
            }
        } else if let Some(rest) = line.strip_prefix('#')
            && let mut words = rest.split_whitespace()
            && let (Some(count), Some("DONE")) = (words.next(), words.next())
            && let Ok(count) = count.parse()
        {
            self.executions = self.executions.max(Some(count));
        } else if let Some(rest) = line.strip_prefix("Done ")
            && let Some(Ok(count)) = rest.split_whitespace().next().map(str::parse)
        {
            self.executions = self.executions.max(Some(count));
        }
        if let Some((_, artifact)) = line.split_once("Test unit written to ") {
            self.crash_artifact = Some(artifact.trim().to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|arg| (*arg).to_owned()).collect()
    }

    #[test]
    fn options_default_to_all_targets_for_ten_minutes() {
        let options = Options::parse(Vec::new()).expect("empty args parse");
        assert_eq!(options, Options { seconds: 600, targets: Vec::new() });
    }

    #[test]
    fn options_take_seconds_in_both_spellings_and_targets_in_order() {
        let options = Options::parse(strings(&["gguf", "--seconds", "30", "safetensors"])).expect("valid args");
        assert_eq!(options, Options { seconds: 30, targets: strings(&["gguf", "safetensors"]) });
        let options = Options::parse(strings(&["--seconds=5"])).expect("valid args");
        assert_eq!(options.seconds, 5);
    }

    #[test]
    fn bad_options_are_usage_errors() {
        for args in [&["--seconds"][..], &["--seconds", "abc"], &["--seconds", "0"], &["--jobs", "2"]] {
            let error = Options::parse(strings(args)).expect_err("invalid args");
            assert!(error.downcast_ref::<UsageError>().is_some(), "{args:?} gave {error:?}");
        }
    }

    #[test]
    fn seed_extension_is_the_format_prefix() {
        assert_eq!(seed_extension("gguf"), "gguf");
        assert_eq!(seed_extension("safetensors"), "safetensors");
        assert_eq!(seed_extension("gguf_header"), "gguf");
    }

    #[test]
    fn outcome_reads_counts_and_crash_artifacts_from_libfuzzer_output() {
        let mut outcome = Outcome::default();
        for line in [
            "#2\tINITED cov: 40 ft: 41 corp: 1/1b exec/s: 0 rss: 30Mb",
            "#524288\tpulse  cov: 120 ft: 300 corp: 30/2Kb lim: 4096 exec/s: 174762 rss: 60Mb",
            "#1234567\tDONE   cov: 130 ft: 310 corp: 31/2Kb lim: 4096 exec/s: 205761 rss: 61Mb",
        ] {
            outcome.observe(line);
        }
        assert_eq!(outcome.executions, Some(1_234_567));
        outcome.observe("Done 1234567 runs in 6 second(s)");
        outcome.observe("stat::number_of_executed_units: 1234570");
        assert_eq!(outcome.executions, Some(1_234_570));
        assert_eq!(outcome.crash_artifact, None);

        let mut crashed = Outcome::default();
        crashed.observe("==42== ERROR: libFuzzer: deadly signal");
        crashed.observe(
            "artifact_prefix='/r/fuzz/artifacts/gguf/'; Test unit written to /r/fuzz/artifacts/gguf/crash-ab12\n",
        );
        crashed.observe("stat::number_of_executed_units: 999");
        assert_eq!(crashed.crash_artifact.as_deref(), Some("/r/fuzz/artifacts/gguf/crash-ab12"));
        assert_eq!(crashed.executions, Some(999));
    }
}
