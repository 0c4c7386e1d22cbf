//! `lathe eval MODEL_DIR --reference REF_DIR [--input FILE] [--json] [--threads N]
//! [--batch-size N]`: how close MODEL's sentence embeddings stay to REF's, and how long each
//! takes, as `lathe_recipe::eval` defines them.

use std::fmt::Write;
use std::path::PathBuf;

use lathe_recipe::eval::{Evaluation, TIMED_RUNS, WARMUP_RUNS, check_comparable, evaluate};

use crate::embed::{RunArgs, kernel_summary, open_encoder, read_lines};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The sentence-transformers model folder to evaluate.
    #[arg(value_name = "MODEL_DIR")]
    model: PathBuf,
    /// The model folder it is compared with (the uncompressed original, say).
    #[arg(long, value_name = "REF_DIR")]
    reference: PathBuf,
    /// Text file with one sentence per line [default: lathe's shipped evaluation set of 280
    /// sentences].
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// Print only JSON on stdout: mean_cosine, min_cosine, spearman, top1_agreement,
    /// latency_ms {model, reference}, n_sentences.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    run: RunArgs,
}

pub fn run(args: &Args) -> anyhow::Result<String> {
    let model = open_encoder(&args.model, "model")?;
    let reference = open_encoder(&args.reference, "reference")?;
    let (sentences, source) = match &args.input {
        Some(path) => (read_lines(path)?, path.display().to_string()),
        None => {
            let shipped = lathe_recipe::data::eval_set().into_iter().map(str::to_owned).collect();
            (shipped, "the shipped evaluation set".to_owned())
        }
    };
    check_comparable(&model, &reference, sentences.len())?;
    eprintln!(
        "evaluating {} against {} on {} sentences from {source}",
        args.model.display(),
        args.reference.display(),
        sentences.len()
    );
    eprintln!(
        "each model encodes them {} times, the two taking turns ({WARMUP_RUNS} warm-up, median of {TIMED_RUNS}) on {}, batches of at most {}",
        WARMUP_RUNS + TIMED_RUNS,
        args.run.threads_text(),
        args.run.batch_size
    );
    eprintln!("model kernels: {}", kernel_summary(model.model()));
    eprintln!("reference kernels: {}", kernel_summary(reference.model()));
    let batch_size = args.run.batch_size.get();
    let evaluation = args.run.install(|| evaluate(&model, &reference, &sentences, batch_size))??;
    if args.json {
        let mut text = serde_json::to_string_pretty(&evaluation).expect("an evaluation serialises");
        text.push('\n');
        Ok(text)
    } else {
        Ok(to_table(&evaluation))
    }
}

fn to_table(evaluation: &Evaluation) -> String {
    let fidelity = &evaluation.fidelity;
    let latency = &evaluation.latency_ms;
    let spearman = fidelity.spearman.map_or_else(|| "undefined".to_owned(), |rho| format!("{rho:.6}"));
    let mut out = String::new();
    let _ = writeln!(out, "sentences            {}", evaluation.n_sentences);
    let _ = writeln!(out, "mean cosine          {:.6}", fidelity.mean_cosine);
    let _ = writeln!(out, "min cosine           {:.6}", fidelity.min_cosine);
    let _ = writeln!(out, "spearman             {spearman}");
    let _ = writeln!(out, "top-1 agreement      {:.4}", fidelity.top1_agreement);
    let _ = writeln!(out, "latency, model       {:.1} ms", latency.model);
    let _ = writeln!(out, "latency, reference   {:.1} ms", latency.reference);
    if latency.model > 0.0 {
        let _ = writeln!(out, "speed-up             {:.2}x", latency.reference / latency.model);
    }
    out
}
