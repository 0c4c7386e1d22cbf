//! `lathe distill --teacher DIR -o OUT [--keep-layers 0,2,4] [--corpus FILE] [--eval FILE]
//! [--max-minutes M] [--epochs E] [--lr LR] [--batch-size B] [--temperature T] [--alpha-cos A]
//! [--alpha-mse A] [--alpha-attn A] [--seed S] [--threads N]`: a smaller student cut from the
//! teacher's layers and trained to reproduce its sentence embeddings, as
//! `lathe_recipe::distill` defines it.

use std::fmt::Write;
use std::num::NonZeroUsize;
use std::path::PathBuf;

use anyhow::Context;
use lathe_recipe::distill::{DistillOptions, DistillReport, distill};

const AFTER_HELP: &str = "The student starts as the teacher's kept layers (with its embeddings), then learns the \
                          teacher's sentence embeddings (cosine), its hidden states (MSE; student layer i against the \
                          teacher's state before kept layer i + 1, the last against the teacher's output) and, with \
                          --alpha-attn, its last layer's attention (KL). It never trains on the evaluation set. With \
                          --max-minutes the learning-rate schedule (6 % warmup, linear decay) is sized to the steps \
                          that fit.";

#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// The teacher: a sentence-transformers model folder (BERT family, f32/f16/bf16 weights).
    #[arg(long, value_name = "DIR")]
    teacher: PathBuf,
    /// The output folder (a complete model folder, written atomically).
    #[arg(short, long, value_name = "OUT")]
    output: PathBuf,
    /// Teacher layers the student starts from [default: every second layer from 0].
    #[arg(long, value_name = "L,...", value_delimiter = ',')]
    keep_layers: Option<Vec<usize>>,
    /// Training sentences, one per line [default: lathe's shipped corpus of 2,163 sentences].
    #[arg(long, value_name = "FILE")]
    corpus: Option<PathBuf>,
    /// Evaluation sentences, one per line [default: lathe's shipped evaluation set of 280].
    #[arg(long, value_name = "FILE")]
    eval: Option<PathBuf>,
    /// Wall-time budget in minutes; the schedule is sized to the steps that fit.
    #[arg(long, value_name = "M")]
    max_minutes: Option<f64>,
    /// Passes over the corpus [default: 1 without --max-minutes; with it, a cap].
    #[arg(long, value_name = "E")]
    epochs: Option<f64>,
    /// A cap on optimizer steps.
    #[arg(long, value_name = "N")]
    max_steps: Option<u64>,
    /// Peak learning rate (AdamW).
    #[arg(long, value_name = "LR", default_value = "1e-3")]
    lr: f32,
    /// Sentences per batch.
    #[arg(long, value_name = "B", default_value = "32")]
    batch_size: NonZeroUsize,
    /// Temperature of the attention KL.
    #[arg(long, value_name = "T", default_value = "1")]
    temperature: f32,
    /// Weight of the cosine loss on the sentence embeddings.
    #[arg(long, value_name = "A", default_value = "1")]
    alpha_cos: f32,
    /// Weight of the MSE on the mapped hidden states.
    #[arg(long, value_name = "A", default_value = "1")]
    alpha_mse: f32,
    /// Weight of the KL on the last layer's attention (MiniLM).
    #[arg(long, value_name = "A", default_value = "0")]
    alpha_attn: f32,
    /// Train the word embeddings too (frozen by default).
    #[arg(long)]
    train_word_embeddings: bool,
    /// Seed of the batch order.
    #[arg(long, value_name = "S", default_value = "0")]
    seed: u64,
    /// Threads. One by default: without a time budget, a seed then fixes the result bit for bit.
    #[arg(long, value_name = "N", default_value = "1")]
    threads: NonZeroUsize,
    /// No progress line on stderr.
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(args: &Args) -> anyhow::Result<String> {
    let options = DistillOptions {
        keep_layers: args.keep_layers.clone(),
        corpus: args.corpus.clone(),
        eval: args.eval.clone(),
        max_minutes: args.max_minutes,
        epochs: args.epochs,
        max_steps: args.max_steps,
        lr: args.lr,
        batch_size: args.batch_size.get(),
        temperature: args.temperature,
        alpha_cos: args.alpha_cos,
        alpha_mse: args.alpha_mse,
        alpha_attn: args.alpha_attn,
        train_word_embeddings: args.train_word_embeddings,
        seed: args.seed,
        progress: !args.quiet,
        ..DistillOptions::default()
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads.get())
        .build()
        .with_context(|| format!("cannot start {} threads", args.threads))?;
    let report = pool
        .install(|| distill(&args.teacher, &args.output, &options))
        .with_context(|| format!("cannot distill {}", args.teacher.display()))?;
    Ok(summary(args, &report))
}

fn summary(args: &Args, report: &DistillReport) -> String {
    let layers: Vec<String> = report.keep_layers.iter().map(usize::to_string).collect();
    let mut text = String::new();
    let _ = writeln!(
        text,
        "distilled {} ({} layers) into {} ({} layers: teacher layers {})",
        args.teacher.display(),
        report.teacher_layers,
        report.out.display(),
        report.keep_layers.len(),
        layers.join(", ")
    );
    let _ = writeln!(
        text,
        "trained {} steps ({:.1} epochs of {} sentences from the {}, batches of {}) in {:.1} s, {:.0} tokens/s; teacher targets {:.1} s, total {:.1} s",
        report.steps,
        report.epochs,
        report.corpus_sentences,
        report.corpus_source,
        args.batch_size,
        report.train_seconds,
        report.tokens_per_second(),
        report.teacher_seconds,
        report.seconds
    );
    if report.dropped_eval_sentences > 0 {
        let _ = writeln!(
            text,
            "left out {} corpus sentences that are in the evaluation set",
            report.dropped_eval_sentences
        );
    }
    let window = 20;
    let _ = writeln!(
        text,
        "loss (mean of {window} steps): {:.4} first, {:.4} last",
        report.first_loss(window),
        report.last_loss(window)
    );
    let _ = writeln!(text, "student vs teacher on {} sentences ({}):", report.eval_sentences, report.eval_source);
    let _ = writeln!(text, "  {:<16} {:>8} {:>8}", "", "before", "after");
    let rows = [
        ("mean cosine", Some(report.before.mean_cosine), Some(report.after.mean_cosine)),
        ("min cosine", Some(report.before.min_cosine), Some(report.after.min_cosine)),
        ("spearman", report.before.spearman, report.after.spearman),
        ("top-1 agreement", Some(report.before.top1_agreement), Some(report.after.top1_agreement)),
    ];
    let cell = |value: Option<f64>| value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.4}"));
    for (name, before, after) in rows {
        let _ = writeln!(text, "  {name:<16} {:>8} {:>8}", cell(before), cell(after));
    }
    text
}
