//! `cargo xtask bench [ARGS]`: the criterion benches under the conditions lathe's figures assume.
//!
//! Today this runs the benches; the report (tables and goals read back from criterion's output)
//! will be a further stage after `run_criterion`, fed by the same `Options`.

use std::path::Path;

use anyhow::Result;

use crate::{cargo, models, run_command};

/// What the command line asked for.
#[derive(Debug, Default)]
struct Options {
    /// Passed through to every criterion bench binary (a filter, `--save-baseline NAME`, ...).
    criterion_args: Vec<String>,
}

impl Options {
    fn parse(args: Vec<String>) -> Options {
        // Everything belongs to criterion for now; an optional leading `--` is accepted so that
        // `cargo xtask bench -- --save-baseline main` reads like the cargo equivalent.
        let mut criterion_args = args;
        if criterion_args.first().is_some_and(|arg| arg == "--") {
            criterion_args.remove(0);
        }
        Options { criterion_args }
    }
}

pub(crate) fn run(args: Vec<String>) -> Result<()> {
    let options = Options::parse(args);
    // The end-to-end benches read the real models; fetching is a hash check when they are there.
    let models_dir = models::fetch()?;
    run_criterion(&models_dir, &options)?;
    Ok(())
}

/// Runs every bench target once, single-threaded: on this machine's two vCPUs a second rayon
/// thread only adds noise (see NOTES.md).
fn run_criterion(models_dir: &Path, options: &Options) -> Result<()> {
    let mut command = cargo();
    command.env("RAYON_NUM_THREADS", "1").env(models::MODELS_DIR_VAR, models_dir);
    // `--bench '*'` keeps the library unit-test harnesses out: libtest rejects criterion's flags.
    command.args(["bench", "--workspace", "--bench", "*", "--"]).args(&options.criterion_args);
    run_command(&mut command)
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
        assert_eq!(options.criterion_args, strings(&["--save-baseline", "main", "dequantize"]));
        let options = Options::parse(strings(&["dequantize", "--", "x"]));
        assert_eq!(options.criterion_args, strings(&["dequantize", "--", "x"]));
    }
}
