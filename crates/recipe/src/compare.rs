//! `lathe compare`: every method of a suite of recipes applied to one model, each output measured
//! against the original on the same sentences (size, speed, fidelity, time to compress, kernels),
//! and the report written (see [`crate::report`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lathe_model::SentenceEncoder;
use sha2::{Digest, Sha256};

use crate::eval::{self, Fidelity};
use crate::recipe::Recipe;
use crate::report::{self, EvalSet, Latency, Report, Row, Speedup};
use crate::{Error, Result};

/// The default suite, in report order (the fp32 baseline comes first on its own). Each entry is
/// a recipe in the TOML form `lathe apply` reads.
pub const DEFAULT_SUITE: &[&str] = &[
    "name = \"f16\"\n[[steps]]\nstep = \"quantize\"\nscheme = \"f16\"\n",
    "name = \"int8-channel w8a8\"\n[[steps]]\nstep = \"quantize\"\nscheme = \"int8-channel\"\nsmooth = 0.5\nsamples = 128\n",
    "name = \"int8-channel w8a7\"\n[[steps]]\nstep = \"quantize\"\nscheme = \"int8-channel\"\nactivations = \"int7\"\nsmooth = 0.5\n\
     samples = 128\n",
    "name = \"int8-channel weight-only\"\n[[steps]]\nstep = \"quantize\"\nscheme = \"int8-channel\"\nactivations = \"f32\"\n",
    "name = \"q8_0\"\n[[steps]]\nstep = \"quantize\"\nscheme = \"q8_0\"\n",
    "name = \"q4_0\"\n[[steps]]\nstep = \"quantize\"\nscheme = \"q4_0\"\n",
    "name = \"int4-g128 rtn\"\n[[steps]]\nstep = \"quantize\"\nscheme = \"int4-g128\"\n",
    "name = \"int4-g128 gptq\"\n[[steps]]\nstep = \"quantize\"\nscheme = \"int4-g128\"\nmethod = \"gptq\"\nsamples = 128\n",
    "name = \"magnitude 50%\"\n[[steps]]\nstep = \"prune\"\nmethod = \"magnitude\"\nsparsity = 0.5\n",
    "name = \"wanda 50%\"\n[[steps]]\nstep = \"prune\"\nmethod = \"wanda\"\nsparsity = 0.5\nsamples = 128\n",
    "name = \"sparsegpt 50%\"\n[[steps]]\nstep = \"prune\"\nmethod = \"sparsegpt\"\nsparsity = 0.5\nsamples = 128\n",
    "name = \"wanda 2:4\"\n[[steps]]\nstep = \"prune\"\nmethod = \"wanda\"\npattern = \"2:4\"\nsamples = 128\n",
    "name = \"magnitude 90%\"\n[[steps]]\nstep = \"prune\"\nmethod = \"magnitude\"\nsparsity = 0.9\n",
    "name = \"shrink 3 layers\"\n[[steps]]\nstep = \"shrink\"\nkeep_layers = [0, 2, 4]\n",
    "name = \"distill 3 layers\"\n[[steps]]\nstep = \"distill\"\nkeep_layers = [0, 2, 4]\nmax_minutes = 3.0\n",
    "name = \"wanda 50% + int8\"\n[[steps]]\nstep = \"prune\"\nmethod = \"wanda\"\nsparsity = 0.5\nsamples = 128\n\n\
     [[steps]]\nstep = \"quantize\"\nscheme = \"int8-channel\"\n",
    "name = \"distill 3 layers + int8\"\n[[steps]]\nstep = \"distill\"\nkeep_layers = [0, 2, 4]\nmax_minutes = 3.0\n\n\
     [[steps]]\nstep = \"quantize\"\nscheme = \"int8-channel\"\n",
];

/// How [`compare`] runs.
#[derive(Debug, Clone, Default)]
pub struct CompareOptions {
    /// Recipe files (`*.toml`) to run instead of the default suite.
    pub recipes: Option<PathBuf>,
    /// Evaluation sentences, one per line (the shipped evaluation set when absent).
    pub eval: Option<PathBuf>,
    /// Fewer sentences for the latency runs (fidelity still uses every sentence).
    pub quick: bool,
}

/// Sentences the latency runs encode (the first ones of the evaluation set).
const LATENCY_SENTENCES: usize = 64;
const QUICK_LATENCY_SENTENCES: usize = 16;

/// The recipes to run: the files of a folder (sorted by name), or the default suite.
pub fn load_suite(recipes: Option<&Path>) -> Result<Vec<Recipe>> {
    let Some(dir) = recipes else {
        return DEFAULT_SUITE.iter().map(|text| Recipe::from_toml(text, "default suite")).collect();
    };
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::Recipe { origin: dir.display().to_string(), message: "no *.toml recipe files here".into() });
    }
    files.iter().map(|path| Recipe::read(path)).collect()
}

/// A folder name for a row: lower case letters, digits and dashes.
fn slug(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars() {
        match c {
            'a'..='z' | '0'..='9' => slug.push(c),
            'A'..='Z' => slug.push(c.to_ascii_lowercase()),
            '%' => slug.push_str("pct"),
            _ if !slug.ends_with('-') && !slug.is_empty() => slug.push('-'),
            _ => {}
        }
    }
    slug.trim_end_matches('-').to_owned()
}

/// What one model measures on the sentences.
struct Measured {
    embeddings: Vec<f32>,
    latency: Latency,
    /// The baseline's latency, timed alternately with this model's.
    baseline_latency: Option<Latency>,
    kernels: BTreeMap<String, usize>,
}

/// Embeds every sentence with `encoder` and times it on the first `latency_sentences`, one
/// sentence a batch and in batches; with a `baseline`, that is timed too, run for run in turn
/// with the model ([`eval::paired_median_times`]), for the row's speedups.
fn measure(
    encoder: &SentenceEncoder,
    baseline: Option<&SentenceEncoder>,
    sentences: &[String],
    latency_sentences: usize,
) -> Result<Measured> {
    let embeddings = encoder.embed_sentences(sentences, eval::BATCH)?.as_slice().to_vec();
    let subset = &sentences[..latency_sentences.min(sentences.len())];
    let ms = |time: Duration| time.as_secs_f64() * 1e3;
    let time = |batch: usize| -> Result<(f64, Option<f64>)> {
        let run = || encoder.embed_sentences(subset, batch);
        Ok(match baseline {
            Some(baseline) => {
                let ((time, _), (base_time, _)) =
                    eval::paired_median_times(run, || baseline.embed_sentences(subset, batch))?;
                (ms(time), Some(ms(base_time)))
            }
            None => (ms(eval::median_time(run)?.0), None),
        })
    };
    let ((single, base_single), (batched, base_batched)) = (time(1)?, time(eval::BATCH)?);
    let baseline_latency = base_single.zip(base_batched).map(|(single, batched)| Latency { single, batched });
    let kernels = eval::kernel_counts(encoder.model()).into_iter().collect();
    Ok(Measured { embeddings, latency: Latency { single, batched }, baseline_latency, kernels })
}

fn row(name: &str, recipe: &str, size: u64, measured: &Measured, fidelity: Fidelity, seconds: f64) -> Row {
    Row {
        name: name.to_owned(),
        recipe: recipe.to_owned(),
        size_bytes: size,
        compression: 1.0,
        latency_ms: measured.latency,
        speedup: Speedup { single: 1.0, batched: 1.0 },
        baseline_latency_ms: measured.baseline_latency,
        mean_cosine: fidelity.mean_cosine,
        min_cosine: fidelity.min_cosine,
        spearman: fidelity.spearman,
        top1_agreement: fidelity.top1_agreement,
        compress_seconds: seconds,
        kernels: measured.kernels.clone(),
    }
}

/// A recipe's steps in one line, for the report.
fn describe(recipe: &Recipe) -> String {
    recipe.steps.iter().map(|step| step.describe()).collect::<Vec<_>>().join(" -> ")
}

/// Runs the suite on `model`, writes every output folder under `report_dir/models/` and the
/// report files into `report_dir`, and returns the report. Progress goes to stderr.
///
/// Recipes that begin with the same steps as an earlier one start from its output instead of
/// running those steps again (the time to compress counts the shared steps once per row).
pub fn compare(model: &Path, report_dir: &Path, options: &CompareOptions) -> Result<Report> {
    let recipes = load_suite(options.recipes.as_deref())?;
    let sentences = eval::sentences(options.eval.as_deref())?;
    let eval_name = match &options.eval {
        Some(path) => path.display().to_string(),
        None => "lathe evaluation set".to_owned(),
    };
    let sha256 = format!("{:x}", Sha256::digest(sentences.join("\n").as_bytes()));
    let latency_sentences = if options.quick { QUICK_LATENCY_SENTENCES } else { LATENCY_SENTENCES };
    let models_dir = report_dir.join("models");
    std::fs::create_dir_all(&models_dir).map_err(|source| Error::Io { path: models_dir.clone(), source })?;

    let total = recipes.len() + 1;
    eprintln!("[1/{total}] fp32 baseline: measuring {}", model.display());
    let baseline_encoder = SentenceEncoder::open(model)?;
    let baseline = measure(&baseline_encoder, None, &sentences, latency_sentences)?;
    let dim = baseline.embeddings.len() / sentences.len();
    let same = eval::fidelity(&baseline.embeddings, &baseline.embeddings, dim)?;
    let mut rows = vec![row("fp32", "none (the original model)", eval::weights_size(model)?, &baseline, same, 0.0)];

    // Outputs by the steps that made them, to reuse for recipes with the same first steps.
    let mut made: Vec<(String, PathBuf, f64)> = Vec::new();
    for (index, recipe) in recipes.iter().enumerate() {
        let name = recipe.name.clone().unwrap_or_else(|| format!("recipe {}", index + 1));
        eprintln!("[{}/{total}] {name}: {}", index + 2, describe(recipe));
        let mut input = model.to_path_buf();
        let mut seconds = 0.0;
        let mut first = 0;
        for k in (1..recipe.steps.len()).rev() {
            let key = format!("{:?}", &recipe.steps[..k]);
            if let Some((_, dir, spent)) = made.iter().find(|(made_key, ..)| *made_key == key) {
                (input, seconds, first) = (dir.clone(), *spent, k);
                break;
            }
        }
        let out = models_dir.join(slug(&name));
        for k in first..recipe.steps.len() {
            let start = Instant::now();
            let target = if k + 1 == recipe.steps.len() {
                out.clone()
            } else {
                models_dir.join(format!("{}-step{}", slug(&name), k + 1))
            };
            input = recipe.steps[k].run(&input, &target)?;
            seconds += start.elapsed().as_secs_f64();
            made.push((format!("{:?}", &recipe.steps[..=k]), input.clone(), seconds));
        }
        let measured = measure(&SentenceEncoder::open(&out)?, Some(&baseline_encoder), &sentences, latency_sentences)?;
        let fidelity = eval::fidelity(&baseline.embeddings, &measured.embeddings, dim)?;
        eprintln!(
            "    mean cosine {:.4}, {:.1} ms single / {:.1} ms batched, compressed in {seconds:.1} s",
            fidelity.mean_cosine, measured.latency.single, measured.latency.batched
        );
        rows.push(row(&name, &describe(recipe), eval::weights_size(&out)?, &measured, fidelity, seconds));
    }

    let mut report = Report {
        model: model.display().to_string(),
        machine: report::machine_description(),
        eval_set: EvalSet { name: eval_name, n_sentences: sentences.len(), sha256 },
        rows,
        latency_sentences: Some(latency_sentences.min(sentences.len())),
    };
    report.fill_ratios()?;
    report::write_report(report_dir, &report)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_suite_parses_with_unique_names() {
        let suite = load_suite(None).unwrap();
        let mut names: Vec<String> = suite.iter().map(|r| r.name.clone().unwrap()).collect();
        let slugs: std::collections::HashSet<String> = names.iter().map(|n| slug(n)).collect();
        assert_eq!(slugs.len(), names.len());
        names.dedup();
        assert_eq!(names.len(), suite.len());
        assert_eq!(slug("wanda 50% + int8"), "wanda-50pct-int8");
        assert_eq!(slug("wanda 2:4"), "wanda-2-4");
    }
}
