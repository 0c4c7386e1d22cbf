//! `lathe embed MODEL_DIR --input FILE -o OUT.safetensors [--threads N] [--batch-size N]`: one
//! sentence embedding per input line, written as the F32 tensor `embeddings` `[lines, hidden]`.
//! Also the pieces `lathe eval` shares: loading an encoder, reading input lines, the thread pool
//! and the kernel summary.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use lathe_model::{BertModel, SentenceEncoder};
use lathe_tensor::{Dtype, SafeTensorsWriter, TensorSpec};

/// The name of the tensor `lathe embed` writes.
pub const EMBEDDINGS_TENSOR: &str = "embeddings";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A sentence-transformers model folder (config.json, model.safetensors, tokenizer.json).
    #[arg(value_name = "MODEL_DIR")]
    model: PathBuf,
    /// Text file with one sentence per line; every line is embedded, empty ones as the empty
    /// string.
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// Where to write the safetensors file (written to a temporary file, then renamed).
    #[arg(short, long, value_name = "OUT.safetensors")]
    output: PathBuf,
    #[command(flatten)]
    run: RunArgs,
}

/// How the encoder runs: shared by `embed` and `eval`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Threads for the encoder. One by default: lathe measures on one thread, so timings from
    /// different runs and machines compare.
    #[arg(long, value_name = "N", default_value = "1")]
    pub threads: NonZeroUsize,
    /// Most sentences per batch; sentences are sorted by length first and a batch ends early where
    /// padding to the next length would cost more than another batch, so each pads little.
    #[arg(long, value_name = "N", default_value = "32")]
    pub batch_size: NonZeroUsize,
}

impl RunArgs {
    /// Runs `work` on a rayon pool of `--threads` threads.
    pub fn install<T: Send>(&self, work: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.threads.get())
            .build()
            .with_context(|| format!("cannot start {} threads", self.threads))?;
        Ok(pool.install(work))
    }

    /// `1 thread`, `4 threads`.
    pub fn threads_text(&self) -> String {
        let threads = self.threads.get();
        format!("{threads} thread{}", if threads == 1 { "" } else { "s" })
    }
}

pub fn run(args: &Args) -> anyhow::Result<String> {
    let encoder = open_encoder(&args.model, "model")?;
    let sentences = read_lines(&args.input)?;
    let start = Instant::now();
    let embeddings = args.run.install(|| encoder.embed_sentences(&sentences, args.run.batch_size.get()))??;
    let elapsed = start.elapsed();

    let (n_lines, dim) = (sentences.len(), encoder.model().hidden_size());
    let bytes: Vec<u8> = embeddings.as_slice().iter().flat_map(|value| value.to_le_bytes()).collect();
    let spec = TensorSpec::new(EMBEDDINGS_TENSOR, Dtype::F32, [n_lines, dim]);
    let mut writer = SafeTensorsWriter::create(&args.output, vec![spec], &[])?;
    writer.write_tensor(EMBEDDINGS_TENSOR, &bytes)?;
    writer.finish()?;

    eprintln!(
        "embedded {n_lines} lines in {:.1} ms ({}, batches of at most {})",
        elapsed.as_secs_f64() * 1e3,
        args.run.threads_text(),
        args.run.batch_size
    );
    eprintln!("{}", token_summary(embeddings.token_slots(), embeddings.real_tokens()));
    eprintln!("kernels: {}", kernel_summary(encoder.model()));
    eprintln!("wrote {EMBEDDINGS_TENSOR} f32 [{n_lines}, {dim}] to {}", args.output.display());
    Ok(String::new())
}

/// Loads a sentence encoder, saying which folder (`role`: model or reference) failed.
pub fn open_encoder(dir: &Path, role: &str) -> anyhow::Result<SentenceEncoder> {
    if !dir.exists() {
        bail!("{}: no such folder", dir.display());
    }
    if !dir.is_dir() {
        bail!("{}: not a folder (a sentence-transformers model folder is expected)", dir.display());
    }
    SentenceEncoder::open(dir).with_context(|| format!("cannot load the {role} in {}", dir.display()))
}

/// The lines of a UTF-8 text file, without their line endings; empty lines are kept.
pub fn read_lines(path: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read the input file {}", path.display()))?;
    Ok(text.lines().map(str::to_owned).collect())
}

/// `token slots: 1184 computed, 1092 real (92.2 %)`.
pub fn token_summary(slots: usize, real: usize) -> String {
    let share = if slots == 0 { 100.0 } else { real as f64 * 100.0 / slots as f64 };
    format!("token slots: {slots} computed, {real} real ({share:.1} %)")
}

/// `36 x dense f32`, or `30 x dense f32, 6 x q8_0`.
pub fn kernel_summary(model: &BertModel) -> String {
    let counts = lathe_recipe::eval::kernel_counts(model);
    if counts.is_empty() {
        return "no linears".to_owned();
    }
    counts.iter().map(|(kind, count)| format!("{count} x {kind}")).collect::<Vec<_>>().join(", ")
}
