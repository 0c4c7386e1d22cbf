//! The `lathe` command.
#![forbid(unsafe_code)]

mod inspect;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Inspect(args) => inspect::run(&args),
    };
    match outcome.and_then(|text| write_stdout(&text)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the chain of contexts down to the file, tensor and offset.
            eprintln!("lathe: error: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Writes the whole output at once; a closed pipe (`lathe inspect ... | head`) is not an error.
fn write_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => Err(err.into()),
        _ => Ok(()),
    }
}
