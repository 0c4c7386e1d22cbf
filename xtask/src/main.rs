//! lathe's developer tasks, run as `cargo xtask <command>` (the alias lives in `.cargo/config.toml`).
//!
//! Every task is plain Rust over `std::process::Command`, so the only things a contributor needs are
//! cargo and, for the real models, python3 with pip. Arguments are parsed by hand to keep the
//! dependency list at anyhow, sha2 and serde_json (which reads criterion's result files).
//! Repository checks are not a command: they are the `#[test]`s in `tidy.rs`, so
//! `cargo test --workspace` (and therefore `cargo xtask ci`) runs them.

#![forbid(unsafe_code)]

mod bench;
mod ci;
mod fuzz;
mod models;
mod rss_check;
#[cfg(test)]
mod tidy;

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command> [args]

commands:
  ci                         everything CI checks: fmt, clippy, tests (dispatched and
                             LATHE_FORCE_ISA=scalar), one quick pass of each bench, docs,
                             and the repository checks in xtask/src/tidy.rs
  fetch-models               download the real models into the models dir and check their sha256
  bench [quant|gemm|sparse|model|distill|all] [ARGS]
                             run criterion benches on one thread, then print one table per
                             kernel (GB/s or GFLOP/s, ratios to candle and to this machine's
                             read/write bandwidth); quant: lathe-peers quant_peers and
                             bandwidth, gemm: dense_gemm, sparse: sparse_peers, model:
                             lathe-model's MiniLM forward against the FMA peak, distill: a
                             training step of a 3-layer student of MiniLM against its forward
                             pass (real tokens/s), all (default): every bench target;
                             ARGS go to criterion
  demo                       fetch the models, build lathe, run `lathe compare` on MiniLM into target/lathe-report
  rss-check [SCHEME...]      write a synthetic f32 BERT of 4.3 GiB under target/rss-check and
                             check that `lathe quantize` (default schemes: int8-channel, q4_0)
                             peaks under twice its largest tensor plus 200 MiB of resident
                             memory (/usr/bin/time -v); not part of ci
  fuzz [--seconds N] [TARGET...]
                             seed the corpora and fuzz each target for N seconds (default 600)
  help                       print this text

models dir: $LATHE_MODELS_DIR, else $XDG_CACHE_HOME/lathe/models, else ~/.cache/lathe/models
";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let command = args.next();
    let rest: Vec<String> = args.collect();
    let result = match command.as_deref() {
        Some("help" | "-h" | "--help") => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some("ci") => no_args("ci", &rest).and_then(|()| ci::run()),
        Some("fetch-models") => no_args("fetch-models", &rest).and_then(|()| models::fetch().map(drop)),
        Some("bench") => bench::run(rest),
        Some("demo") => no_args("demo", &rest).and_then(|()| demo()),
        Some("fuzz") => fuzz::run(rest),
        Some("rss-check") => rss_check::run(rest),
        Some(other) => Err(UsageError(format!("unknown command `{other}`")).into()),
        None => Err(UsageError("no command given".to_owned()).into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => match error.downcast_ref::<UsageError>() {
            Some(usage_error) => {
                eprintln!("error: {usage_error}\n\n{USAGE}");
                ExitCode::from(2)
            }
            None => {
                eprintln!("error: {error:?}");
                ExitCode::FAILURE
            }
        },
    }
}

/// A bad command line: reported with the usage text and exit code 2, unlike a failed task.
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn no_args(command: &str, args: &[String]) -> Result<()> {
    match args.first() {
        None => Ok(()),
        Some(arg) => Err(UsageError(format!("`{command}` takes no arguments, got `{arg}`")).into()),
    }
}

/// `cargo xtask demo`: the main job on the bundled model, through the real command line.
fn demo() -> Result<()> {
    let models_dir = models::fetch()?;
    println!("\n==> cargo build --release --package lathe-cli");
    run_command(cargo().args(["build", "--release", "--package", "lathe-cli"]))?;
    let lathe = target_dir()?.join("release").join(format!("lathe{}", std::env::consts::EXE_SUFFIX));

    let minilm = models_dir.join("all-MiniLM-L6-v2");
    let report_dir = project_root().join("target").join("lathe-report");
    println!("\n==> lathe compare {} -o {}", minilm.display(), report_dir.display());
    run_command(std::process::Command::new(&lathe).arg("compare").arg(&minilm).arg("-o").arg(&report_dir))?;

    // The table, as report.md has it, and where the rest is.
    let report = report_dir.join("report.md");
    let text = std::fs::read_to_string(&report).with_context(|| format!("cannot read {}", report.display()))?;
    println!();
    for line in text.lines().filter(|line| line.starts_with('|')) {
        println!("{line}");
    }
    println!(
        "\nreport: {} (with report.json, fidelity_vs_size.svg, fidelity_vs_latency.svg); models: {}",
        report.display(),
        report_dir.join("models").display()
    );
    Ok(())
}

/// The workspace root, found from where this crate sits in it.
pub(crate) fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask sits one folder below the workspace root").to_owned()
}

/// cargo's target directory, found as cargo finds it: `$CARGO_TARGET_DIR` (relative to the
/// workspace root), else the `target_directory` that `cargo metadata` reports.
pub(crate) fn target_dir() -> Result<PathBuf> {
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return Ok(project_root().join(target));
    }
    let output = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("could not run `cargo metadata` to find the target directory")?;
    if !output.status.success() {
        bail!("`cargo metadata` failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("`cargo metadata` printed invalid JSON")?;
    let target = metadata["target_directory"].as_str().context("`cargo metadata` gave no target_directory")?;
    Ok(PathBuf::from(target))
}

/// A `cargo` command in the workspace root, using the cargo that runs xtask when there is one.
pub(crate) fn cargo() -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(program);
    command.current_dir(project_root());
    command
}

/// Echoes `command`, runs it with inherited stdio and fails unless it exits successfully.
pub(crate) fn run_command(command: &mut Command) -> Result<()> {
    let shown = display_command(command);
    run_command_shown_as(command, &shown)
}

/// [`run_command`] for commands whose full text would bury the output (an inline script):
/// `shown` is echoed and used in errors instead.
pub(crate) fn run_command_shown_as(command: &mut Command, shown: &str) -> Result<()> {
    println!("$ {shown}");
    let status = command.status().with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// The command as a shell line: the environment it sets, the program, the arguments.
pub(crate) fn display_command(command: &Command) -> String {
    let mut parts: Vec<String> = Vec::new();
    for (key, value) in command.get_envs() {
        if let Some(value) = value {
            parts.push(format!("{}={}", key.to_string_lossy(), shell_quote(&value.to_string_lossy())));
        }
    }
    let program = Path::new(command.get_program());
    // `$CARGO` is an absolute path into the toolchain; the bare name reads better.
    let program_name = match program.file_stem() {
        Some(stem) if stem == OsStr::new("cargo") => stem,
        _ => program.as_os_str(),
    };
    parts.push(program_name.to_string_lossy().into_owned());
    parts.extend(command.get_args().map(|arg| shell_quote(&arg.to_string_lossy())));
    parts.join(" ")
}

/// `word` as a shell would need it to be typed, so that an echoed command can be pasted back.
fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Seconds with one decimal, the resolution a person reads step timings at.
pub(crate) fn format_duration(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

/// Runs `body` under a header and reports how long it took, whether or not it succeeded.
pub(crate) fn timed<T>(title: &str, body: impl FnOnce() -> Result<T>) -> Result<(T, Duration)> {
    println!("\n==> {title}");
    let start = Instant::now();
    let result = body();
    let elapsed = start.elapsed();
    match &result {
        Ok(_) => println!("<== {title}: ok in {}", format_duration(elapsed)),
        Err(_) => println!("<== {title}: FAILED after {}", format_duration(elapsed)),
    }
    result.map(|value| (value, elapsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoed_commands_quote_what_the_shell_would_expand() {
        let mut command = Command::new("cargo");
        command.env("RUSTDOCFLAGS", "-D warnings").args(["test", "--bench", "*", "--", "it's"]);
        assert_eq!(display_command(&command), r"RUSTDOCFLAGS='-D warnings' cargo test --bench '*' -- 'it'\''s'");
    }
}
