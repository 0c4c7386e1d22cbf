//! `lathe quantize`, `lathe prune` and `lathe shrink`: one compression step from a model folder
//! to a new, complete model folder (written atomically). Only the encoder's linear layers change;
//! embeddings, LayerNorms and the pooler stay as they are.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use lathe_recipe::recipe::{CalibrationSpec, DEFAULT_SAMPLES, Step};

const ENCODER_ONLY: &str = "Only the encoder's linear layers change; embeddings, LayerNorms and the pooler stay as they \
                            are. The output folder is complete (config, tensors, tokenizer and pooling files, \
                            lathe.json) and written atomically.";

/// Where calibration sentences come from (calibrated methods only).
#[derive(Debug, clap::Args)]
pub struct CalibrationArgs {
    /// Text file of calibration sentences, one per line (default: the corpus lathe ships, never
    /// the evaluation set).
    #[arg(long, value_name = "FILE")]
    calibration: Option<PathBuf>,
    /// How many sentences to calibrate on (the first N of the file or corpus).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SAMPLES)]
    samples: usize,
}

impl CalibrationArgs {
    fn spec(&self) -> CalibrationSpec {
        CalibrationSpec { calibration: self.calibration.clone(), samples: Some(self.samples) }
    }
}

#[derive(Debug, clap::Args)]
#[command(after_help = ENCODER_ONLY)]
pub struct QuantizeArgs {
    /// The model folder to quantize.
    model: PathBuf,
    /// The output folder.
    #[arg(short, long, value_name = "OUT")]
    output: PathBuf,
    /// Storage scheme: f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, or int8/int4 with -channel,
    /// -g<N> (groups of N columns) or -tensor (int8 only), and -asym for zero points
    /// (int8-channel, int4-g128, int4-g32-asym ...).
    #[arg(long, value_name = "SCHEME")]
    scheme: String,
    /// Rounding: round to nearest, or GPTQ (calibrated, integer and q4_0/q4_1 schemes).
    #[arg(long, value_name = "rtn|gptq", default_value = "rtn")]
    method: String,
    /// int8: activations quantized per token on the fly, products on integer kernels (default);
    /// int7: the same with 7-bit activations (integer schemes), a faster kernel at twice the
    /// activations' rounding error; f32: weight-only.
    #[arg(long, value_name = "int8|int7|f32", default_value = "int8")]
    activations: String,
    /// SmoothQuant strength: move activation outliers into the weights before quantizing (int8
    /// activations; calibrated).
    #[arg(long, value_name = "ALPHA")]
    smooth: Option<f32>,
    /// Linear roles left unquantized: query, key, value, attn_out, ffn_in, ffn_out.
    #[arg(long, value_name = "ROLE,...", value_delimiter = ',')]
    keep_f32: Vec<String>,
    #[command(flatten)]
    calibration: CalibrationArgs,
}

#[derive(Debug, clap::Args)]
#[command(after_help = ENCODER_ONLY)]
pub struct PruneArgs {
    /// The model folder to prune.
    model: PathBuf,
    /// The output folder.
    #[arg(short, long, value_name = "OUT")]
    output: PathBuf,
    /// magnitude (smallest |w|), random, wanda (|w| x input norm, calibrated) or sparsegpt
    /// (OBS with compensation, calibrated).
    #[arg(long, value_name = "METHOD")]
    method: String,
    /// Fraction of the weights to zero, in [0, 1] (implied by --pattern).
    #[arg(long, value_name = "FRACTION")]
    sparsity: Option<f64>,
    /// Semi-structured pattern: at most N nonzeros in every M consecutive inputs (2:4, 4:8).
    #[arg(long, value_name = "N:M")]
    pattern: Option<String>,
    /// layer: every linear reaches the sparsity; global: magnitudes compared across linears.
    #[arg(long, value_name = "layer|global", default_value = "layer")]
    scope: String,
    /// Seed of the random method.
    #[arg(long, value_name = "S", default_value = "0")]
    seed: u64,
    #[command(flatten)]
    calibration: CalibrationArgs,
}

#[derive(Debug, clap::Args)]
#[command(after_help = ENCODER_ONLY)]
pub struct ShrinkArgs {
    /// The model folder to shrink.
    model: PathBuf,
    /// The output folder.
    #[arg(short, long, value_name = "OUT")]
    output: PathBuf,
    /// Layers to keep, by index in the source, e.g. 0,2,4.
    #[arg(long, value_name = "L,...", value_delimiter = ',')]
    keep_layers: Option<Vec<usize>>,
    /// Attention heads to keep per layer, those with the largest weight norms.
    #[arg(long, value_name = "N")]
    keep_heads: Option<usize>,
    /// Fraction of FFN neurons to keep per layer, those with the largest weight norms.
    #[arg(long, value_name = "FRACTION")]
    keep_ffn: Option<f64>,
}

fn done(out: &Path, start: Instant) -> String {
    eprintln!("wrote {} in {:.1} s", out.display(), start.elapsed().as_secs_f64());
    format!("{}\n", out.display())
}

/// Runs one step as a recipe would: the options are checked and the step dispatched (calibrated
/// or not) by lathe-recipe, so command lines and recipe files behave alike.
fn run_step(step: Step, model: &Path, out: &Path) -> anyhow::Result<String> {
    let start = Instant::now();
    let out = step.run(model, out)?;
    Ok(done(&out, start))
}

pub fn quantize(args: &QuantizeArgs) -> anyhow::Result<String> {
    let step = Step::Quantize {
        scheme: args.scheme.clone(),
        method: Some(args.method.clone()),
        activations: Some(args.activations.clone()),
        smooth: args.smooth,
        keep_f32: Some(args.keep_f32.clone()),
        data: args.calibration.spec(),
    };
    run_step(step, &args.model, &args.output)
}

pub fn prune(args: &PruneArgs) -> anyhow::Result<String> {
    let step = Step::Prune {
        method: args.method.clone(),
        sparsity: args.sparsity,
        pattern: args.pattern.clone(),
        scope: Some(args.scope.clone()),
        seed: Some(args.seed),
        data: args.calibration.spec(),
    };
    run_step(step, &args.model, &args.output)
}

pub fn shrink(args: &ShrinkArgs) -> anyhow::Result<String> {
    let step =
        Step::Shrink { keep_layers: args.keep_layers.clone(), keep_heads: args.keep_heads, keep_ffn: args.keep_ffn };
    run_step(step, &args.model, &args.output)
}

#[derive(Debug, clap::Args)]
#[command(after_help = ENCODER_ONLY)]
pub struct ApplyArgs {
    /// A recipe file (TOML): `name`, then `[[steps]]` tables with `step = "shrink" | "prune" |
    /// "quantize"` and the options of that command (`method`, `sparsity`, `pattern`, `scheme`,
    /// `keep_f32`, `samples` ...).
    recipe: PathBuf,
    /// The model folder to start from.
    model: PathBuf,
    /// The output folder.
    #[arg(short, long, value_name = "OUT")]
    output: PathBuf,
}

pub fn apply(args: &ApplyArgs) -> anyhow::Result<String> {
    let start = Instant::now();
    let recipe = lathe_recipe::recipe::Recipe::read(&args.recipe)?;
    let out = recipe
        .apply(&args.model, &args.output)
        .with_context(|| format!("recipe {} on {}", args.recipe.display(), args.model.display()))?;
    Ok(done(&out, start))
}

#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// The model folder to compress every way and measure.
    model: PathBuf,
    /// Where to write report.md, report.json, the SVG plots and (under models/) every
    /// compressed folder.
    #[arg(short, long, value_name = "REPORT_DIR")]
    output: PathBuf,
    /// A folder of recipe files (*.toml) to run instead of the default suite.
    #[arg(long, value_name = "DIR")]
    recipes: Option<PathBuf>,
    /// Evaluation sentences, one per line (default: the shipped evaluation set).
    #[arg(long, value_name = "FILE")]
    eval: Option<PathBuf>,
    /// Time the latencies on fewer sentences (fidelity still uses them all).
    #[arg(long)]
    quick: bool,
}

pub fn compare(args: &CompareArgs) -> anyhow::Result<String> {
    let start = Instant::now();
    let options = lathe_recipe::compare::CompareOptions {
        recipes: args.recipes.clone(),
        eval: args.eval.clone(),
        quick: args.quick,
    };
    // lathe measures on one thread, so that rows and machines compare.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().context("cannot start the thread pool")?;
    let report = pool.install(|| lathe_recipe::compare::compare(&args.model, &args.output, &options))?;
    eprintln!("compared {} rows in {:.1} s", report.rows.len(), start.elapsed().as_secs_f64());
    let markdown = lathe_recipe::report::render_markdown(&report)?;
    Ok(markdown)
}
