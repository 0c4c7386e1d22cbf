//! `cargo xtask ci`: the one command CI runs, step by step, stopping at the first failure.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::{cargo, format_duration, models, run_command, timed};

/// One CI step: a name for the header and the work.
struct Step<'a> {
    name: &'static str,
    action: Box<dyn Fn() -> Result<()> + 'a>,
}

impl<'a> Step<'a> {
    fn new(name: &'static str, action: impl Fn() -> Result<()> + 'a) -> Self {
        Step { name, action: Box::new(action) }
    }

    fn command(name: &'static str, build: impl Fn() -> Command + 'a) -> Self {
        Step::new(name, move || run_command(&mut build()))
    }
}

fn run_steps(steps: &[Step<'_>]) -> Result<()> {
    let mut timings: Vec<(&'static str, Duration)> = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        let title = format!("ci [{}/{}] {}", index + 1, steps.len(), step.name);
        let ((), elapsed) =
            timed(&title, || (step.action)()).with_context(|| format!("ci step `{}` failed", step.name))?;
        timings.push((step.name, elapsed));
    }
    println!("\nci passed:");
    for (name, elapsed) in &timings {
        println!("  {name:<16} {:>8}", format_duration(*elapsed));
    }
    let total: Duration = timings.iter().map(|(_, elapsed)| *elapsed).sum();
    println!("  {:<16} {:>8}", "total", format_duration(total));
    Ok(())
}

pub(crate) fn run() -> Result<()> {
    // Resolved once so that every step sees the same folder, including one the caller chose.
    let models_dir = models::models_dir()?;
    let models_dir = models_dir.as_path();
    let steps = [
        Step::command("fmt", || {
            let mut command = cargo();
            command.args(["fmt", "--all", "--check"]);
            command
        }),
        Step::command("clippy", || {
            let mut command = cargo();
            command.args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]);
            command
        }),
        Step::new("fetch-models", || models::fetch_into(models_dir)),
        Step::command("test", || {
            let mut command = with_models(cargo(), models_dir);
            // The dispatched run must not inherit a forced ISA from the caller's shell.
            command.env_remove("LATHE_FORCE_ISA").args(["test", "--workspace"]);
            command
        }),
        Step::command("test (scalar)", || {
            let mut command = with_models(cargo(), models_dir);
            command.env("LATHE_FORCE_ISA", "scalar").args(["test", "--workspace"]);
            command
        }),
        // Under `cargo test` criterion runs each benchmark once as a test. `--bench '*'` selects
        // the bench targets only (not the library unit tests again) and reuses the test build.
        Step::command("bench (test mode)", || {
            let mut command = with_models(cargo(), models_dir);
            command.env_remove("LATHE_FORCE_ISA").args(["test", "--workspace", "--bench", "*"]);
            command
        }),
        Step::command("doc", || {
            let mut command = cargo();
            command.env("RUSTDOCFLAGS", "-D warnings").args(["doc", "--workspace", "--no-deps"]);
            command
        }),
    ];
    run_steps(&steps)
}

fn with_models(mut command: Command, models_dir: &Path) -> Command {
    command.env(models::MODELS_DIR_VAR, models_dir);
    command
}
