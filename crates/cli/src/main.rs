//! The `lathe` command.
#![forbid(unsafe_code)]

mod compress;
mod distill;
mod embed;
mod eval;
mod inspect;
mod search;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Compress transformer checkpoints on CPU and measure what each method costs and buys.
#[derive(Debug, Parser)]
#[command(name = "lathe", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the tensors and metadata of a safetensors file, a GGUF file or a model folder.
    Inspect(inspect::Args),
    /// Embed each line of a text file with a sentence-transformers model, into a safetensors file.
    Embed(embed::Args),
    /// Measure how close a model's sentence embeddings stay to a reference model's, and both speeds.
    Eval(eval::Args),
    /// Quantize a model's encoder linears (RTN or GPTQ; int8/int4 in the compressed-tensors layout, GGML blocks, f16).
    Quantize(compress::QuantizeArgs),
    /// Prune a model's encoder linears (magnitude, random, Wanda, SparseGPT; unstructured or N:M).
    Prune(compress::PruneArgs),
    /// Remove layers, attention heads and FFN neurons (structured: smaller dense matrices).
    Shrink(compress::ShrinkArgs),
    /// Apply a recipe (a TOML file of shrink, prune and quantize steps) to a model folder.
    Apply(compress::ApplyArgs),
    /// Apply every method (or the recipes of a folder) to a model and report size, speed and fidelity side by side.
    Compare(compress::CompareArgs),
    /// Train a smaller student (some of the teacher's layers) to reproduce the teacher's sentence embeddings.
    Distill(distill::Args),
    /// Search recipe or distillation parameters (grid, random, successive halving) and print the Pareto table.
    Search(search::Args),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => err.exit(), // --help and --version
        Err(err) => {
            // A bad flag is one line like every other error: clap's first line, without its
            // own `error: ` prefix, and a pointer to the help.
            let text = err.to_string();
            let first = text.lines().next().unwrap_or_default();
            eprintln!("lathe: error: {} (see lathe --help)", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    let outcome = match cli.command {
        Command::Inspect(args) => inspect::run(&args),
        Command::Embed(args) => embed::run(&args),
        Command::Eval(args) => eval::run(&args),
        Command::Quantize(args) => compress::quantize(&args),
        Command::Prune(args) => compress::prune(&args),
        Command::Shrink(args) => compress::shrink(&args),
        Command::Apply(args) => compress::apply(&args),
        Command::Compare(args) => compress::compare(&args),
        Command::Distill(args) => distill::run(&args),
        Command::Search(args) => search::run(&args),
    };
    match outcome.and_then(|text| write_stdout(&text)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("lathe: error: {}", one_line(&err));
            ExitCode::from(2)
        }
    }
}

/// One line: the chain of contexts down to the file, tensor and offset. Some library errors
/// print their source in their own message and also return it as `source()`; a cause whose text
/// already ends the line so far is not repeated.
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Writes the whole output at once; a closed pipe (`lathe inspect ... | head`) is not an error.
fn write_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => Err(err.into()),
        _ => Ok(()),
    }
}
