//! `lathe search SPEC.toml MODEL_DIR -o STUDY_DIR [--sampler grid|random|halving] [--trials N]
//! [--seed S] [--jobs J] [--threads N] [--eval FILE] [--retry-failed] [--emit FILE | --collect
//! [RESULTS_DIR] | --trial ID]`: a study over the parameters of a recipe template, as
//! `lathe_recipe::search` defines it. Prints the study's table with its Pareto front marked (also
//! written to STUDY_DIR/pareto.md).

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use lathe_recipe::search::{self, Sampler, SearchOptions, Spec, TrialOutcome};

const AFTER_HELP: &str = "SPEC.toml is a recipe (name, [[steps]]) whose values may name parameters as \"{name}\" \
                          (a value that is only a placeholder keeps the parameter's type; a step with enabled = \
                          false is left out), plus [space] (sparsity = { float = [0.3, 0.7] }, lr = { float = \
                          [1e-4, 1e-2], log = true }, keep = { int = [2, 5] }, scheme = { choice = [\"q8_0\", \
                          \"q4_0\"] }), objectives (default [\"mean_cosine:max\", \"size_bytes:min\", \
                          \"latency_ms:min\"]; also min_cosine, spearman, top1_agreement, size_mb, compression, \
                          speedup, compress_seconds) and [search] (grid_points = 3; halving = { min_budget, \
                          max_budget, eta, rank_by } with \"{budget}\" in the recipe). A rerun resumes the study \
                          in STUDY_DIR without rerunning finished trials. For a batch scheduler: --emit FILE \
                          writes one command line per unfinished trial (parallel -j 4 < FILE, or sh FILE), then \
                          --collect brings their results into the study.";

#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// The search spec (TOML): a recipe template, its [space], objectives and [search] settings.
    #[arg(value_name = "SPEC.toml")]
    spec: PathBuf,
    /// The model folder every trial starts from and is measured against.
    #[arg(value_name = "MODEL_DIR")]
    model: PathBuf,
    /// The study folder: the log (study.jsonl), each trial's recipe (trials/<id>/), the
    /// original model's embeddings (baseline.safetensors) and pareto.md.
    #[arg(short, long, value_name = "STUDY_DIR")]
    output: PathBuf,
    /// grid: every combination (float ranges at [search] grid_points); random: --trials seeded
    /// draws; halving: successive halving over --trials draws, the budget growing per rung.
    #[arg(long, value_name = "grid|random|halving", default_value = "grid")]
    sampler: String,
    /// Trials to draw (random and halving).
    #[arg(long, value_name = "N")]
    trials: Option<usize>,
    /// Seed of the random draws: the same seed draws the same trials.
    #[arg(long, value_name = "S", default_value = "0")]
    seed: u64,
    /// Trials run at once. Latencies measured side by side disturb each other: keep 1 when
    /// latency is an objective on a machine without spare cores.
    #[arg(long, value_name = "J", default_value = "1")]
    jobs: NonZeroUsize,
    /// Threads per trial. One by default: lathe measures on one thread, so trials compare.
    #[arg(long, value_name = "N", default_value = "1")]
    threads: NonZeroUsize,
    /// Evaluation sentences, one per line [default: lathe's shipped evaluation set of 280].
    #[arg(long, value_name = "FILE")]
    eval: Option<PathBuf>,
    /// Run again the trials the log records as failed.
    #[arg(long)]
    retry_failed: bool,
    /// Keep each trial's compressed model in STUDY_DIR/trials/<id>/model (by default it is
    /// removed once measured; `lathe apply STUDY_DIR/trials/<id>/recipe.toml` rebuilds it).
    #[arg(long)]
    keep_models: bool,
    /// Write one independent command line per unfinished trial to FILE instead of running them
    /// (grid and random samplers).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["collect", "trial"])]
    emit: Option<PathBuf>,
    /// Append the trials' result files (default STUDY_DIR/results) to the study and print it.
    #[arg(long, value_name = "RESULTS_DIR", num_args = 0..=1, conflicts_with = "trial")]
    collect: Option<Option<PathBuf>>,
    /// Run only this trial and write STUDY_DIR/results/<ID>.json (what --emit's lines do).
    #[arg(long, value_name = "ID")]
    trial: Option<u64>,
}

impl Args {
    fn options(&self) -> anyhow::Result<SearchOptions> {
        Ok(SearchOptions {
            sampler: Sampler::from_name(&self.sampler, self.trials, self.seed)?,
            eval: self.eval.clone(),
            jobs: self.jobs.get(),
            threads: self.threads.get(),
            retry_failed: self.retry_failed,
            keep_models: self.keep_models,
        })
    }
}

pub fn run(args: &Args) -> anyhow::Result<String> {
    let options = args.options()?;
    let spec = Spec::read(&args.spec)?;
    if let Some(file) = &args.emit {
        return emit(args, &spec, &options, file);
    }
    if let Some(results) = &args.collect {
        let (collected, searched) = search::collect(&spec, &args.model, &args.output, &options, results.as_deref())?;
        let ids = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
        eprintln!(
            "collected {} trials; {} were logged already; {} have no result file yet{}",
            collected.collected.len(),
            collected.already_logged.len(),
            collected.missing.len(),
            if collected.missing.is_empty() { String::new() } else { format!(" ({})", ids(&collected.missing)) }
        );
        return Ok(searched.markdown);
    }
    if let Some(id) = args.trial {
        return match search::run_trial(&spec, &args.model, &args.output, &options, id)? {
            TrialOutcome::Logged => {
                eprintln!("trial {id} is in the study log already");
                Ok(String::new())
            }
            TrialOutcome::Written(path) => {
                eprintln!("trial {id} has its result file already");
                Ok(format!("{}\n", path.display()))
            }
            TrialOutcome::Ran { result, path } => match result.message {
                Some(message) => bail!("trial {id} failed (recorded in {}): {message}", path.display()),
                None => Ok(format!("{}\n", path.display())),
            },
        };
    }
    let searched = search::search(&spec, &args.model, &args.output, &options)?;
    Ok(searched.markdown)
}

/// Writes the command lines of the unfinished trials to `file`.
fn emit(args: &Args, spec: &Spec, options: &SearchOptions, file: &Path) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("cannot find the lathe executable")?;
    let absolute = |path: &Path| std::path::absolute(path).with_context(|| format!("{}", path.display()));
    let mut words = vec![
        quoted_path(&exe),
        "search".to_owned(),
        quoted_path(&absolute(&args.spec)?),
        quoted_path(&absolute(&args.model)?),
        "-o".to_owned(),
        quoted_path(&absolute(&args.output)?),
        "--sampler".to_owned(),
        args.sampler.clone(),
    ];
    if let Some(trials) = args.trials {
        words.extend(["--trials".to_owned(), trials.to_string(), "--seed".to_owned(), args.seed.to_string()]);
    }
    if let Some(eval) = &args.eval {
        words.extend(["--eval".to_owned(), quoted_path(&absolute(eval)?)]);
    }
    if args.threads.get() != 1 {
        words.extend(["--threads".to_owned(), args.threads.to_string()]);
    }
    if args.keep_models {
        words.push("--keep-models".to_owned());
    }
    words.extend(["--trial".to_owned(), "{trial}".to_owned()]);
    let lines = search::emit(spec, &args.model, &args.output, options, &words.join(" "))?;
    let mut text = lines.join("\n");
    if !lines.is_empty() {
        text.push('\n');
    }
    lathe_tensor::write_atomic(file, text.as_bytes())?;
    eprintln!(
        "wrote {} command lines (one per unfinished trial) to {}; run them, e.g. `parallel -j 4 < {}`, then `lathe \
         search ... --collect`",
        lines.len(),
        file.display(),
        file.display()
    );
    Ok(format!("{}\n", file.display()))
}

/// A path for a POSIX `sh` line inside a lathe-search template: single-quoted unless plainly
/// safe, with braces doubled (the template's literal braces).
fn quoted_path(path: &Path) -> String {
    let text = path.display().to_string();
    let safe = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ':' | ',' | '+' | '='));
    let quoted = if safe { text } else { format!("'{}'", text.replace('\'', r"'\''")) };
    quoted.replace('{', "{{").replace('}', "}}")
}

#[cfg(test)]
mod tests {
    use super::quoted_path;

    #[test]
    fn paths_survive_sh_and_the_template() {
        assert_eq!(quoted_path("/tmp/a-b/c.toml".as_ref()), "/tmp/a-b/c.toml");
        assert_eq!(quoted_path("/tmp/it's {x}".as_ref()), r"'/tmp/it'\''s {{x}}'");
    }
}
