//! `distill`: a smaller student cut from a teacher by keeping some of its layers (DistilBERT's
//! initialisation), then trained on CPU to reproduce the teacher's sentence embeddings, hidden
//! states and, optionally, last-layer attention (MiniLM), on a corpus the evaluation set never
//! enters.
//!
//! The loss on a batch is
//!
//! ```text
//! alpha_cos  * mean_s (1 - cos(pooled_student_s, pooled_teacher_s))
//! alpha_mse  * mean over mapped layers of MSE(student hidden, teacher hidden) on real tokens
//! alpha_attn * T^2 * mean_s KL(softmax(log p_teacher / T) || softmax(log p_student / T))
//! ```
//!
//! The pooled vectors are the sentence embeddings as the teacher's folder defines them (mean
//! pooling and L2 normalisation for all-MiniLM-L6-v2). Student layer `i` plays the teacher's
//! layers `keep[i]` up to (not including) `keep[i + 1]`, so its output is matched to the
//! teacher's hidden state after layer `keep[i + 1] - 1` (the input of the next kept teacher
//! layer), and the last student layer's output to the teacher's last hidden state, the one its
//! sentence embeddings are pooled from. (Matching layer `i` to the teacher's layer `keep[i]`
//! instead would pull the last student layer towards the teacher's second-to-last state while
//! the embedding loss pulls it towards the last.) The MSE on the last hidden state bounds the
//! MSE of the un-normalised pooled vector (a mean of those rows), so no separate pooled MSE is
//! taken: on unit vectors it would be the cosine loss again, divided by the width. The attention
//! KL pairs the last student layer's heads with the teacher's last layer's, one to one.
//!
//! Teacher targets are computed once, before training, for every corpus sentence (pooled
//! vector, the mapped hidden states at its real tokens and, when `alpha_attn > 0`, the last
//! layer's attention): on the shipped corpus and MiniLM that is about 2,163 x 25 tokens x 384 x
//! 4 bytes x 3 layers, 250 MB, and it removes the teacher's forward pass (six layers, more than
//! the student's whole step) from every step.
//!
//! Batches are drawn in a seeded shuffle, then sorted by length within groups of 16 batches so
//! that little work goes to padding, and the batch order is shuffled again. AdamW with linear
//! warmup (6 % of the steps) and linear decay to 0; gradients clipped to a global norm of 1. The
//! word embeddings are frozen by default: the corpus uses a fraction of the vocabulary, and moving
//! only the rows it uses would move them away from the rows of words the evaluation sentences
//! bring. With a time budget, the first [`TIMING_STEPS`] steps run at learning rate 0 (their
//! moments still accumulate) and time the run; the schedule's total is then fixed to the steps
//! that fit. Without one, a seed fixes the result bit for bit.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lathe_config::Edit;
use lathe_distill::{AttentionShape, Shape};
use lathe_model::train::{AdamW, AdamWConfig, BertParams, Decay, Schedule, Tape, clip_grad_norm};
use lathe_model::{Batch, Pooling, SentenceEncoder, Tokens};
use serde_json::{Value, json};

use crate::compress::{Calibration, RECORD_FILE, Record, Source, Staging, StepRecord};
use crate::eval::{Fidelity, fidelity};
use crate::progress::Progress;
use crate::{Error, Result};

/// Steps that time the run when a budget is set: they take learning rate 0.
pub const TIMING_STEPS: u64 = 5;

/// Batches sorted by length together: enough that batches pad little, few enough that each
/// epoch still mixes lengths.
const BUCKET_BATCHES: usize = 16;

/// Steps whose losses the progress line averages.
const RUNNING_WINDOW: usize = 20;

/// Attention probabilities below this are treated as 0 in the KL's gradient (it divides by them).
const MIN_PROBABILITY: f32 = 1e-30;

/// How to distill; [`Default`] gives the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct DistillOptions {
    /// Teacher layers the student starts from, sorted and unique (default every second layer
    /// from 0: 0, 2, 4 for six layers).
    pub keep_layers: Option<Vec<usize>>,
    /// Training sentences, one per line (default: the corpus lathe ships). Sentences that are
    /// also in the evaluation set are dropped.
    pub corpus: Option<PathBuf>,
    /// Evaluation sentences, one per line (default: the evaluation set lathe ships).
    pub eval: Option<PathBuf>,
    /// Wall-time budget in minutes for the whole call, evaluations included (the schedule is
    /// sized to the steps that fit; the final evaluation is estimated from the first).
    pub max_minutes: Option<f64>,
    /// Passes over the corpus (default 1 when no budget is set; with a budget, a cap).
    pub epochs: Option<f64>,
    /// A cap on optimizer steps.
    pub max_steps: Option<u64>,
    /// Peak learning rate (1e-3).
    pub lr: f32,
    /// Sentences per batch (32).
    pub batch_size: usize,
    /// Warmup as a fraction of the steps (0.06).
    pub warmup: f64,
    /// AdamW's decoupled weight decay (0.01).
    pub weight_decay: f32,
    /// Global gradient-norm clip (1.0).
    pub max_grad_norm: f32,
    /// Temperature of the attention KL (1.0).
    pub temperature: f32,
    /// Weight of the cosine loss on the sentence embeddings (1.0).
    pub alpha_cos: f32,
    /// Weight of the MSE on the mapped hidden states (1.0).
    pub alpha_mse: f32,
    /// Weight of the last layer's attention KL (0.0).
    pub alpha_attn: f32,
    /// Whether the word embeddings train too (false: frozen).
    pub train_word_embeddings: bool,
    /// Seed of the batch order.
    pub seed: u64,
    /// Print a progress line with the running loss on stderr.
    pub progress: bool,
}

impl Default for DistillOptions {
    fn default() -> Self {
        DistillOptions {
            keep_layers: None,
            corpus: None,
            eval: None,
            max_minutes: None,
            epochs: None,
            max_steps: None,
            lr: 1e-3,
            batch_size: 32,
            warmup: 0.06,
            weight_decay: 0.01,
            max_grad_norm: 1.0,
            temperature: 1.0,
            alpha_cos: 1.0,
            alpha_mse: 1.0,
            alpha_attn: 0.0,
            train_word_embeddings: false,
            seed: 0,
            progress: false,
        }
    }
}

/// An f32 option as the f64 with the same shortest decimal form (0.001, not 0.0010000000474974513),
/// for lathe.json.
fn shortest(value: f32) -> f64 {
    value.to_string().parse().unwrap_or(f64::from(value))
}

impl DistillOptions {
    fn to_json(&self, keep_layers: &[usize]) -> Value {
        json!({
            "keep_layers": keep_layers,
            "corpus": self.corpus.as_ref().map(|path| path.display().to_string()),
            "eval": self.eval.as_ref().map(|path| path.display().to_string()),
            "max_minutes": self.max_minutes,
            "epochs": self.epochs,
            "max_steps": self.max_steps,
            "lr": shortest(self.lr),
            "batch_size": self.batch_size,
            "warmup": self.warmup,
            "weight_decay": shortest(self.weight_decay),
            "max_grad_norm": shortest(self.max_grad_norm),
            "temperature": shortest(self.temperature),
            "alpha_cos": shortest(self.alpha_cos),
            "alpha_mse": shortest(self.alpha_mse),
            "alpha_attn": shortest(self.alpha_attn),
            "train_word_embeddings": self.train_word_embeddings,
            "seed": self.seed,
        })
    }

    pub(crate) fn check(&self) -> Result<()> {
        let bad = |option: &str, message: String| Err(Error::BadOption { option: option.into(), message });
        if self.batch_size == 0 {
            return bad("batch-size", "must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", format!("{} is not a positive number", self.lr));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad("temperature", format!("{} is not a positive number", self.temperature));
        }
        for (option, alpha) in
            [("alpha-cos", self.alpha_cos), ("alpha-mse", self.alpha_mse), ("alpha-attn", self.alpha_attn)]
        {
            if !(alpha.is_finite() && alpha >= 0.0) {
                return bad(option, format!("{alpha} is not a finite number of at least 0"));
            }
        }
        if self.alpha_cos + self.alpha_mse + self.alpha_attn == 0.0 {
            return bad("alpha-cos", "every loss weight is 0, so nothing would train".into());
        }
        if let Some(minutes) = self.max_minutes
            && !(minutes.is_finite() && minutes > 0.0)
        {
            return bad("max-minutes", format!("{minutes} is not a positive number"));
        }
        if let Some(epochs) = self.epochs
            && !(epochs.is_finite() && epochs > 0.0)
        {
            return bad("epochs", format!("{epochs} is not a positive number"));
        }
        if self.max_steps == Some(0) {
            return bad("max-steps", "must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.warmup) {
            return bad("warmup", format!("{} is outside [0, 1]", self.warmup));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight-decay", format!("{} is not a finite number of at least 0", self.weight_decay));
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm > 0.0) {
            return bad("max-grad-norm", format!("{} is not a positive number", self.max_grad_norm));
        }
        Ok(())
    }
}

/// What a run did and how close the student came.
#[derive(Debug, Clone, PartialEq)]
pub struct DistillReport {
    /// The folder written.
    pub out: PathBuf,
    /// The teacher's layers the student was cut from.
    pub keep_layers: Vec<usize>,
    /// The teacher's layer count.
    pub teacher_layers: usize,
    /// Where the training sentences came from (a path, or `shipped corpus`).
    pub corpus_source: String,
    /// Training sentences used.
    pub corpus_sentences: usize,
    /// Corpus sentences dropped because the evaluation set holds them.
    pub dropped_eval_sentences: usize,
    /// Where the evaluation sentences came from (a path, or `shipped eval set`).
    pub eval_source: String,
    /// Evaluation sentences.
    pub eval_sentences: usize,
    /// Optimizer steps taken.
    pub steps: u64,
    /// Passes over the corpus (fractional).
    pub epochs: f64,
    /// Real (not padding) tokens trained on, counting repeats.
    pub tokens_trained: u64,
    /// Seconds spent computing the teacher's targets.
    pub teacher_seconds: f64,
    /// Seconds in the training loop.
    pub train_seconds: f64,
    /// Seconds for the whole call.
    pub seconds: f64,
    /// The loss of every step, before its update.
    pub losses: Vec<f64>,
    /// The student's fidelity to the teacher on the evaluation set before training.
    pub before: Fidelity,
    /// The same after training, measured on the written folder.
    pub after: Fidelity,
}

impl DistillReport {
    /// Mean loss over the first `n` steps (or all, if fewer).
    pub fn first_loss(&self, n: usize) -> f64 {
        mean(&self.losses[..n.min(self.losses.len())])
    }

    /// Mean loss over the last `n` steps (or all, if fewer).
    pub fn last_loss(&self, n: usize) -> f64 {
        mean(&self.losses[self.losses.len().saturating_sub(n)..])
    }

    /// Real tokens trained per second of the training loop.
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens_trained as f64 / self.train_seconds.max(1e-9)
    }
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() { f64::NAN } else { values.iter().sum::<f64>() / values.len() as f64 }
}

/// Sentences, and where they came from (a path or `shipped ...`).
fn load_sentences(
    path: Option<&Path>,
    shipped: fn() -> Vec<&'static str>,
    what: &str,
) -> Result<(Vec<String>, String)> {
    let Some(path) = path else {
        return Ok((shipped().into_iter().map(str::to_owned).collect(), format!("shipped {what}")));
    };
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let sentences: Vec<String> =
        text.lines().map(str::trim).filter(|line| !line.is_empty()).map(str::to_owned).collect();
    if sentences.is_empty() {
        return Err(Error::BadOption {
            option: what.split_whitespace().next().unwrap_or(what).to_owned(),
            message: format!("{}: no sentences (every line is empty)", path.display()),
        });
    }
    Ok((sentences, path.display().to_string()))
}

/// The layers kept: as given (checked), or every second one from 0.
fn keep_layers(options: &DistillOptions, teacher_layers: usize) -> Result<Vec<usize>> {
    let Some(layers) = options.keep_layers.clone() else {
        return Ok((0..teacher_layers).step_by(2).collect());
    };
    let bad = |message: String| Err(Error::BadOption { option: "keep-layers".into(), message });
    if layers.is_empty() {
        return bad("keep at least one layer".into());
    }
    if let Some(&layer) = layers.iter().find(|&&layer| layer >= teacher_layers) {
        return bad(format!(
            "layer {layer} does not exist: the teacher has layers 0 to {}",
            teacher_layers.saturating_sub(1)
        ));
    }
    if let Some(pair) = layers.windows(2).find(|pair| pair[0] >= pair[1]) {
        return bad(format!("layers must be sorted and unique, but {} follows {}", pair[1], pair[0]));
    }
    Ok(layers)
}

/// The teacher's hidden state (index into the tape's states) each student layer's output is
/// matched to: the input of the next kept teacher layer, and the teacher's output for the last.
fn mapped_hidden(keep: &[usize], teacher_layers: usize) -> Vec<usize> {
    (0..keep.len()).map(|i| keep.get(i + 1).copied().unwrap_or(teacher_layers)).collect()
}

/// What the student learns from, per corpus sentence.
struct Targets {
    /// `[n_sentences][dim]`.
    pooled: Vec<Vec<f32>>,
    /// `[student layer][sentence]`: `[len, dim]` at the real tokens; empty without MSE.
    hidden: Vec<Vec<Vec<f32>>>,
    /// `[sentence]`: the teacher's last-layer attention, `[heads, len, len]`; empty without KL.
    attention: Vec<Vec<f32>>,
}

/// The sentences of `tokens` in batches sorted by length, for passes without training.
fn length_sorted_batches(tokens: &[Tokens], batch_size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..tokens.len()).collect();
    order.sort_by_key(|&index| tokens[index].ids.len());
    order.chunks(batch_size).map(<[usize]>::to_vec).collect()
}

/// The teacher's targets for every corpus sentence. Without the attention loss they come from
/// the inference model (about twice as fast as a forward pass that keeps activations); with it,
/// from `teacher_params`' forward pass, the one that exposes attention probabilities.
fn teacher_targets(
    encoder: &SentenceEncoder,
    teacher_params: Option<&BertParams>,
    tokens: &[Tokens],
    mapped: &[usize],
    options: &DistillOptions,
) -> Result<Targets> {
    let model = encoder.model();
    let (n, dim, pooling) = (tokens.len(), model.hidden_size(), encoder.pooling());
    let with_hidden = options.alpha_mse > 0.0;
    let last_layer = model.num_layers() - 1;
    let mut targets = Targets {
        pooled: vec![Vec::new(); n],
        hidden: if with_hidden { vec![vec![Vec::new(); n]; mapped.len()] } else { Vec::new() },
        attention: if teacher_params.is_some() { vec![Vec::new(); n] } else { Vec::new() },
    };
    for chunk in length_sorted_batches(tokens, options.batch_size.max(32)) {
        let batch = encoder.batch(chunk.iter().map(|&index| &tokens[index]));
        let seq_len = batch.seq_len();
        // Hidden state `index` of every sequence, `[n, seq_len, dim]`, as the mapping needs.
        let mut states: Vec<Option<Vec<f32>>> = vec![None; model.num_layers() + 1];
        let pooled = if let Some(params) = teacher_params {
            let tape = params.forward(&batch)?;
            let probs = tape.attention_probs(last_layer);
            let heads = params.heads(last_layer);
            for (slot, &sentence) in chunk.iter().enumerate() {
                let len = tokens[sentence].ids.len();
                targets.attention[sentence] = square_block(probs, slot, heads, seq_len, len);
            }
            for &index in mapped {
                states[index] = Some(tape.hidden(index).to_vec());
            }
            tape.pool(pooling)
        } else {
            let mut hidden = model.embed(&batch)?;
            for layer in 0..model.num_layers() {
                model.layer(layer, &mut hidden);
                if mapped.contains(&(layer + 1)) {
                    states[layer + 1] = Some(hidden.states().to_vec());
                }
            }
            pooling.pool(&hidden)
        };
        for (slot, &sentence) in chunk.iter().enumerate() {
            let len = tokens[sentence].ids.len();
            targets.pooled[sentence] = pooled[slot * dim..][..dim].to_vec();
            if with_hidden {
                for (layer, &index) in mapped.iter().enumerate() {
                    let state = states[index].as_ref().expect("mapped states are kept");
                    targets.hidden[layer][sentence] = state[slot * seq_len * dim..][..len * dim].to_vec();
                }
            }
        }
    }
    Ok(targets)
}

/// Sequence `slot`'s attention `[heads, len, len]` cut from `[n, heads, seq_len, seq_len]`.
fn square_block(probs: &[f32], slot: usize, heads: usize, seq_len: usize, len: usize) -> Vec<f32> {
    let mut block = Vec::with_capacity(heads * len * len);
    for head in 0..heads {
        for query in 0..len {
            let start = ((slot * heads + head) * seq_len + query) * seq_len;
            block.extend_from_slice(&probs[start..start + len]);
        }
    }
    block
}

/// Sentence embeddings of `params` (pooled as `encoder` pools), in input order.
fn embed(params: &BertParams, encoder: &SentenceEncoder, tokens: &[Tokens], batch_size: usize) -> Result<Vec<f32>> {
    let dim = params.hidden_size();
    let mut values = vec![0.0f32; tokens.len() * dim];
    for chunk in length_sorted_batches(tokens, batch_size) {
        let batch = encoder.batch(chunk.iter().map(|&index| &tokens[index]));
        let pooled = params.forward(&batch)?.pool(encoder.pooling());
        for (&index, vector) in chunk.iter().zip(pooled.chunks_exact(dim)) {
            values[index * dim..][..dim].copy_from_slice(vector);
        }
    }
    Ok(values)
}

/// A small, seedable generator for the batch order (splitmix64).
struct Shuffler(u64);

impl Shuffler {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

/// One epoch's batches: a shuffle, sorted by length within groups of [`BUCKET_BATCHES`] batches,
/// in shuffled order. Always `ceil(n / batch_size)` batches.
fn epoch_batches(lengths: &[usize], batch_size: usize, rng: &mut Shuffler) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    rng.shuffle(&mut order);
    let mut batches = Vec::with_capacity(lengths.len().div_ceil(batch_size));
    for group in order.chunks(batch_size * BUCKET_BATCHES) {
        let mut group = group.to_vec();
        group.sort_by_key(|&index| lengths[index]);
        batches.extend(group.chunks(batch_size).map(<[usize]>::to_vec));
    }
    rng.shuffle(&mut batches);
    batches
}

/// The parts of one step's loss.
#[derive(Debug, Clone, Copy, Default)]
struct StepLoss {
    total: f64,
    cosine: f64,
    mse: f64,
    attention: f64,
}

/// The loss of the student's `tape` on the batch of corpus sentences `sentences`, with its
/// gradients put into the tape's seeds.
fn loss_and_seeds(
    tape: &Tape,
    sentences: &[usize],
    tokens: &[Tokens],
    targets: &Targets,
    pooling: Pooling,
    options: &DistillOptions,
) -> Result<(StepLoss, lathe_model::train::Seeds)> {
    let distill_error = |what: &str| {
        let what = what.to_owned();
        move |source| Error::Distill { what, source }
    };
    let (n, seq_len, dim) = (tape.n_sequences(), tape.seq_len(), tape.hidden_size());
    let mut seeds = tape.seeds();
    let mut loss = StepLoss::default();

    if options.alpha_cos > 0.0 {
        let pooled = tape.pool(pooling);
        let teacher: Vec<f32> = sentences.iter().flat_map(|&s| targets.pooled[s].iter().copied()).collect();
        let cosine = lathe_distill::cosine_embedding(&pooled, &teacher, Shape { rows: n, cols: dim })
            .map_err(distill_error("the cosine loss on the sentence embeddings"))?;
        let d_pooled: Vec<f32> = cosine.grad.iter().map(|g| g * options.alpha_cos).collect();
        tape.pool_backward(pooling, &d_pooled, &mut seeds);
        loss.cosine = cosine.value;
    }

    if options.alpha_mse > 0.0 {
        let layers = targets.hidden.len();
        for (layer, teacher_states) in targets.hidden.iter().enumerate() {
            let states = tape.hidden(layer + 1);
            let mut student = Vec::new();
            let mut teacher = Vec::new();
            for (slot, &sentence) in sentences.iter().enumerate() {
                let len = tokens[sentence].ids.len();
                student.extend_from_slice(&states[slot * seq_len * dim..][..len * dim]);
                teacher.extend_from_slice(&teacher_states[sentence]);
            }
            let mse = lathe_distill::mse(&student, &teacher)
                .map_err(distill_error(&format!("the MSE on student layer {layer}'s hidden states")))?;
            let scale = options.alpha_mse / layers as f32;
            let seed = seeds.hidden_mut(layer + 1);
            let mut grads = mse.grad.chunks_exact(dim);
            for (slot, &sentence) in sentences.iter().enumerate() {
                for position in 0..tokens[sentence].ids.len() {
                    let grad = grads.next().expect("one gradient row per real token");
                    let row = &mut seed[(slot * seq_len + position) * dim..][..dim];
                    row.iter_mut().zip(grad).for_each(|(dst, g)| *dst += g * scale);
                }
            }
            loss.mse += mse.value / layers as f64;
        }
    }

    if options.alpha_attn > 0.0 {
        let last = tape.num_layers() - 1;
        let probs = tape.attention_probs(last);
        let heads = probs.len() / (n * seq_len * seq_len).max(1);
        let temperature = options.temperature;
        let log_scaled =
            |p: &[f32]| -> Vec<f32> { p.iter().map(|&p| p.max(MIN_PROBABILITY).ln() / temperature).collect() };
        let seed = seeds.attention_mut(last);
        for (slot, &sentence) in sentences.iter().enumerate() {
            let len = tokens[sentence].ids.len();
            let student = square_block(probs, slot, heads, seq_len, len);
            let shape = AttentionShape { heads, queries: len, keys: len };
            let kl = lathe_distill::attention_kl(
                &log_scaled(&student),
                &log_scaled(&targets.attention[sentence]),
                shape,
                len,
            )
            .map_err(distill_error("the attention KL of the last layer"))?;
            // The KL's gradient is with respect to the scaled log-probabilities; the tape takes
            // one with respect to the probabilities: d/dp = d/d(log p / T) / (T p). With the
            // T^2 of Hinton's loss and the mean over sequences, that is alpha T g / (n p).
            let factor = options.alpha_attn * temperature / n as f32;
            for head in 0..heads {
                for query in 0..len {
                    for key in 0..len {
                        let at = (head * len + query) * len + key;
                        let p = student[at];
                        if p >= MIN_PROBABILITY {
                            seed[((slot * heads + head) * seq_len + query) * seq_len + key] += factor * kl.grad[at] / p;
                        }
                    }
                }
            }
            loss.attention += kl.value * f64::from(temperature * temperature) / n as f64;
        }
    }

    loss.total = f64::from(options.alpha_cos) * loss.cosine
        + f64::from(options.alpha_mse) * loss.mse
        + f64::from(options.alpha_attn) * loss.attention;
    Ok((loss, seeds))
}

/// The progress bar's status: the running loss and its parts, the learning rate.
fn status(epoch: f64, running: f64, loss: &StepLoss, lr: f32) -> String {
    format!(
        "epoch {epoch:.2} loss {running:.4} (cos {:.4} mse {:.4} attn {:.4}) lr {lr:.2e}",
        loss.cosine, loss.mse, loss.attention
    )
}

/// Distills the model in `teacher_dir` into a student of its kept layers, written to `out` as a
/// complete model folder (config.json with the new layer count, model.safetensors in f32, the
/// teacher's tokenizer and pooling files, lathe.json), atomically.
///
/// The student's fidelity to the teacher (mean and min cosine, Spearman, top-1 agreement) is
/// measured on the evaluation set before training and, from the written folder, after.
///
/// # Errors
/// [`Error::BadOption`] for options that cannot work (unsorted or missing layers, an empty
/// corpus, a zero batch size ...), [`Error::Model`] when the teacher cannot be loaded or trained
/// (not BERT-like, quantized ...), [`Error::Diverged`] when the loss stops being finite, and
/// I/O errors naming the file.
pub fn distill(teacher_dir: &Path, out: &Path, options: &DistillOptions) -> Result<DistillReport> {
    let start = Instant::now();
    options.check()?;
    let source = Source::open(teacher_dir)?;
    if source.is_quantized() {
        return Err(Error::AlreadyQuantized { folder: source.dir.clone() });
    }
    let teacher_layers = source.config.num_layers();
    let keep = keep_layers(options, teacher_layers)?;
    let (eval_sentences, eval_name) = load_sentences(options.eval.as_deref(), crate::data::eval_set, "eval set")?;
    let (corpus, corpus_name) = load_sentences(options.corpus.as_deref(), crate::data::corpus, "corpus")?;
    let eval_lookup: HashSet<&str> = eval_sentences.iter().map(String::as_str).collect();
    let corpus_len = corpus.len();
    let corpus: Vec<String> = corpus.into_iter().filter(|sentence| !eval_lookup.contains(sentence.as_str())).collect();
    let dropped_eval_sentences = corpus_len - corpus.len();
    if corpus.is_empty() {
        return Err(Error::BadOption {
            option: "corpus".into(),
            message: format!("{corpus_name}: every sentence is also in the evaluation set"),
        });
    }
    if eval_sentences.len() < crate::eval::MIN_SENTENCES {
        return Err(Error::TooFewSentences { found: eval_sentences.len(), needed: crate::eval::MIN_SENTENCES });
    }
    let staging = Staging::new(out)?;

    let encoder = SentenceEncoder::open(teacher_dir)?;
    let mut student = BertParams::from_edit(teacher_dir, &Edit::new().keep_layers(keep.clone()))?;
    let pooling = encoder.pooling();
    let tokenize = |sentences: &[String]| -> Result<Vec<Tokens>> {
        sentences.iter().map(|sentence| encoder.tokenize(sentence).map_err(Error::from)).collect()
    };
    let corpus_tokens = tokenize(&corpus)?;
    let eval_tokens = tokenize(&eval_sentences)?;
    let lengths: Vec<usize> = corpus_tokens.iter().map(|tokens| tokens.ids.len()).collect();
    let corpus_real_tokens: usize = lengths.iter().sum();

    let dim = encoder.model().hidden_size();
    let eval_start = Instant::now();
    let teacher_eval = encoder.embed_sentences(&eval_sentences, 32)?.as_slice().to_vec();
    let before = fidelity(&teacher_eval, &embed(&student, &encoder, &eval_tokens, 32)?, dim)?;
    // The final evaluation encodes with the student only: about a third of this.
    let final_eval_estimate = eval_start.elapsed();

    let teacher_start = Instant::now();
    let mapped = mapped_hidden(&keep, teacher_layers);
    let teacher_params = if options.alpha_attn > 0.0 { Some(BertParams::open(teacher_dir)?) } else { None };
    let targets = teacher_targets(&encoder, teacher_params.as_ref(), &corpus_tokens, &mapped, options)?;
    drop(teacher_params);
    let teacher_seconds = teacher_start.elapsed().as_secs_f64();

    let steps_per_epoch = corpus.len().div_ceil(options.batch_size) as u64;
    let epochs = options.epochs.or(if options.max_minutes.is_none() { Some(1.0) } else { None });
    let mut total = options.max_steps.unwrap_or(u64::MAX);
    if let Some(epochs) = epochs {
        total = total.min(((epochs * steps_per_epoch as f64).ceil() as u64).max(1));
    }
    let timed = options.max_minutes.is_some() && total > TIMING_STEPS;
    let deadline = options.max_minutes.map(|minutes| start + Duration::from_secs_f64(minutes * 60.0));
    if options.max_minutes.is_some() && !timed {
        // Too few steps to time: the cap decides.
        total = total.min(TIMING_STEPS);
    }
    let mut schedule = Schedule::with_warmup_fraction(options.lr, options.warmup, total, Decay::Linear);
    let config = AdamWConfig { weight_decay: options.weight_decay, ..AdamWConfig::default() };
    let mut optimizer = AdamW::new(&student, config);
    let mut grads = student.zero_grads();
    let mut rng = Shuffler(options.seed);
    let mut batches = Vec::new().into_iter();
    let mut losses = Vec::new();
    let mut tokens_trained = 0u64;
    let mean_slots_per_step = {
        // Padded slots per batch vary with the lengths drawn; the budget is sized with the mean.
        let plan = epoch_batches(&lengths, options.batch_size, &mut Shuffler(options.seed ^ 0xA5A5));
        let slots: usize =
            plan.iter().map(|batch| batch.len() * batch.iter().map(|&i| lengths[i]).max().unwrap_or(0)).sum();
        slots as f64 / plan.len().max(1) as f64
    };
    let (mut timing_slots, mut timing_seconds) = (0usize, 0.0f64);

    let train_start = Instant::now();
    let mut bar = Progress::new("distill", if total == u64::MAX { TIMING_STEPS } else { total }, options.progress);
    let mut step = 0u64;
    while step < total {
        let sentences = match batches.next() {
            Some(batch) => batch,
            None => {
                batches = epoch_batches(&lengths, options.batch_size, &mut rng).into_iter();
                batches.next().expect("a non-empty corpus has a batch")
            }
        };
        let step_start = Instant::now();
        let batch: Batch = encoder.batch(sentences.iter().map(|&index| &corpus_tokens[index]));
        let tape = student.forward(&batch)?;
        let (loss, seeds) = loss_and_seeds(&tape, &sentences, &corpus_tokens, &targets, pooling, options)?;
        if !loss.total.is_finite() {
            return Err(Error::Diverged { step, loss: loss.total });
        }
        grads.fill(0.0);
        tape.backward(&student, &seeds, &mut grads);
        drop(tape);
        if !options.train_word_embeddings {
            // The first tensor is the word embeddings (Weights' fixed order).
            grads.tensors_mut()[0].fill(0.0);
        }
        let norm = clip_grad_norm(&mut grads, options.max_grad_norm);
        if !norm.is_finite() {
            return Err(Error::Diverged { step, loss: norm });
        }
        let lr = if timed && step < TIMING_STEPS { 0.0 } else { schedule.lr(step) };
        optimizer.step(&mut student, &grads, lr);
        losses.push(loss.total);
        tokens_trained += sentences.iter().map(|&index| lengths[index] as u64).sum::<u64>();
        step += 1;

        if timed && step <= TIMING_STEPS {
            timing_slots += batch.ids().len();
            timing_seconds += step_start.elapsed().as_secs_f64();
            if step == TIMING_STEPS {
                let per_step = timing_seconds / timing_slots.max(1) as f64 * mean_slots_per_step;
                let deadline = deadline.expect("timed runs have a deadline");
                let left = deadline.saturating_duration_since(Instant::now()).saturating_sub(final_eval_estimate);
                let fit = (left.as_secs_f64() / per_step.max(1e-9)).floor() as u64;
                total = total.min(TIMING_STEPS + fit).max(TIMING_STEPS);
                schedule = Schedule::with_warmup_fraction(options.lr, options.warmup, total, Decay::Linear);
                bar.set_length(total);
            }
        }
        bar.set(step, || {
            let running = mean(&losses[losses.len().saturating_sub(RUNNING_WINDOW)..]);
            status(step as f64 / steps_per_epoch as f64, running, &loss, lr)
        });
    }
    bar.finish();
    let train_seconds = train_start.elapsed().as_secs_f64();
    drop(targets);

    staging.copy_companions(teacher_dir)?;
    student.save(staging.path())?;
    let step_record = StepRecord {
        step: "distill".into(),
        method: "keep-layers".into(),
        options: {
            let mut value = options.to_json(&keep);
            value["steps"] = json!(step);
            value["epochs_run"] = json!(step as f64 / steps_per_epoch as f64);
            value["final_loss"] = json!(mean(&losses[losses.len().saturating_sub(RUNNING_WINDOW)..]));
            value
        },
        calibration: Some(Calibration { file: corpus_name.clone(), samples: corpus.len(), tokens: corpus_real_tokens }),
        seconds: start.elapsed().as_secs_f64(),
    };
    let record = Record::extend(source.record.as_ref(), &source.dir, step_record);
    staging.write_json(RECORD_FILE, &record.to_json())?;
    let out = staging.commit()?;

    // The written folder, loaded as any user would, is what is evaluated.
    let written = SentenceEncoder::open(&out)?;
    let after_embeddings = written.embed_sentences(&eval_sentences, 32)?;
    let after = fidelity(&teacher_eval, after_embeddings.as_slice(), dim)?;
    Ok(DistillReport {
        out,
        keep_layers: keep,
        teacher_layers,
        corpus_source: corpus_name,
        corpus_sentences: corpus.len(),
        dropped_eval_sentences,
        eval_source: eval_name,
        eval_sentences: eval_sentences.len(),
        steps: step,
        epochs: step as f64 / steps_per_epoch as f64,
        tokens_trained,
        teacher_seconds,
        train_seconds,
        seconds: start.elapsed().as_secs_f64(),
        losses,
        before,
        after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_mapping_targets_the_next_kept_layer_and_the_output() {
        assert_eq!(mapped_hidden(&[0, 2, 4], 6), [2, 4, 6]);
        assert_eq!(mapped_hidden(&[1, 5], 6), [5, 6]);
        assert_eq!(mapped_hidden(&[5], 6), [6]);
    }

    #[test]
    fn default_keeps_every_second_layer() {
        let options = DistillOptions::default();
        assert_eq!(keep_layers(&options, 6).unwrap(), [0, 2, 4]);
        assert_eq!(keep_layers(&options, 5).unwrap(), [0, 2, 4]);
        let unsorted = DistillOptions { keep_layers: Some(vec![2, 0]), ..DistillOptions::default() };
        let err = keep_layers(&unsorted, 6).unwrap_err().to_string();
        assert_eq!(err, "--keep-layers: layers must be sorted and unique, but 0 follows 2");
    }

    #[test]
    fn epochs_cover_every_sentence_once_in_length_sorted_batches() {
        let lengths: Vec<usize> = (0..103).map(|i| (i * 37) % 29 + 3).collect();
        let mut rng = Shuffler(9);
        let batches = epoch_batches(&lengths, 8, &mut rng);
        assert_eq!(batches.len(), 103usize.div_ceil(8));
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..103).collect::<Vec<_>>());
        // A second epoch is a different order.
        assert_ne!(epoch_batches(&lengths, 8, &mut rng), batches);
        // Within a batch, lengths come from one sorted run.
        for batch in &batches {
            assert!(batch.windows(2).all(|pair| lengths[pair[0]] <= lengths[pair[1]]), "{batch:?}");
        }
    }
}
