//! Distillation throughput: one training step of a three-layer student cut from
//! all-MiniLM-L6-v2 (layers 0, 2, 4, DistilBERT's initialisation, as `lathe distill` makes it)
//! beside forward-only passes of the same student on the same batch, in real (not padding) tokens
//! per second. `cargo xtask bench distill` runs it single-threaded and prints the table.
//!
//! The batch is 32 sentences of the corpus lathe ships (`crates/recipe/data/corpus.txt`, the
//! one `distill` trains on), picked as `distill` batches: its first bucket of 16 batches
//! (512 sentences) sorted by token length, and the middle 32 of those, so padding is as little
//! as in a training run. Functions of group `distill`, parameter `<sentences>x<padded length>`,
//! throughput the batch's real tokens:
//! - `train_step`: the student's forward pass with its tape, `distill`'s default loss (cosine on
//!   the pooled sentence embeddings plus MSE on the hidden states mapped to the teacher's layers
//!   2, 4 and 6, at real tokens), the backward pass, the frozen word embeddings' gradient zeroed,
//!   clipping to norm 1 and an AdamW update, exactly the steps of `lathe_recipe::distill`'s loop
//!   (the teacher's targets are computed once in setup, as there);
//! - `forward_tape`: the same forward pass with its tape and the pooling, without the loss;
//! - `forward`: the saved student through the inference model (`BertModel`) and the pooling,
//!   what the distilled folder runs at.
//!
//! The model folder is `$LATHE_MODELS_DIR/all-MiniLM-L6-v2` (as in tests/support/models.rs).

use std::path::Path;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, black_box, criterion_group, criterion_main};
use lathe_config::Edit;
use lathe_distill::Shape;
use lathe_model::train::{AdamW, AdamWConfig, BertParams, Seeds, Tape, clip_grad_norm};
use lathe_model::{Batch, BertModel, Pooling, SentenceEncoder, Tokens};

#[path = "../tests/support/models.rs"]
mod models;

/// The teacher layers the student keeps, `distill`'s default for six layers.
const KEEP: [usize; 3] = [0, 2, 4];
/// `distill`'s default batch size and the batches it sorts by length together.
const BATCH: usize = 32;
const BUCKET_BATCHES: usize = 16;
/// Far below `distill`'s peak of 1e-3: the bench repeats one batch, and must not diverge.
const LEARNING_RATE: f32 = 1e-4;

fn corpus() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/recipe/data/corpus.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    text.lines().map(str::trim_end).filter(|line| !line.is_empty()).map(str::to_owned).collect()
}

/// The middle batch of the corpus's first length-sorted bucket.
fn pick_batch(encoder: &SentenceEncoder) -> Vec<Tokens> {
    let mut tokens: Vec<Tokens> = corpus()
        .iter()
        .take(BATCH * BUCKET_BATCHES)
        .map(|sentence| encoder.tokenize(sentence).expect("the shipped corpus tokenizes"))
        .collect();
    tokens.sort_by_key(|tokens| tokens.ids.len());
    let start = (tokens.len() - BATCH) / 2;
    tokens.drain(start..start + BATCH).collect()
}

/// The teacher's pooled vectors `[n, dim]`, and per student layer its mapped hidden state at the
/// real tokens (`[real tokens, dim]`, sequences in order), computed as `distill` computes them.
fn teacher_targets(encoder: &SentenceEncoder, batch: &Batch, lengths: &[usize]) -> (Vec<f32>, Vec<Vec<f32>>) {
    let model = encoder.model();
    let (dim, seq_len) = (model.hidden_size(), batch.seq_len());
    // Student layer i learns the input of the next kept teacher layer; the last, the output.
    let mapped: Vec<usize> = (0..KEEP.len()).map(|i| KEEP.get(i + 1).copied().unwrap_or(model.num_layers())).collect();
    let mut hidden = model.embed(batch).expect("the batch fits the teacher");
    let mut states = vec![Vec::new(); mapped.len()];
    for layer in 0..model.num_layers() {
        model.layer(layer, &mut hidden);
        if let Some(slot) = mapped.iter().position(|&index| index == layer + 1) {
            states[slot] = real_rows(hidden.states(), lengths, seq_len, dim);
        }
    }
    (encoder.pooling().pool(&hidden), states)
}

/// The rows of `states` (`[n, seq_len, dim]`) at each sequence's real tokens.
fn real_rows(states: &[f32], lengths: &[usize], seq_len: usize, dim: usize) -> Vec<f32> {
    let mut rows = Vec::with_capacity(lengths.iter().sum::<usize>() * dim);
    for (slot, &len) in lengths.iter().enumerate() {
        rows.extend_from_slice(&states[slot * seq_len * dim..][..len * dim]);
    }
    rows
}

/// `distill`'s default loss (alpha_cos = alpha_mse = 1, no attention term) on the tape, with its
/// gradients in the seeds.
fn loss_and_seeds(
    tape: &Tape,
    pooling: Pooling,
    targets: &(Vec<f32>, Vec<Vec<f32>>),
    lengths: &[usize],
) -> (f64, Seeds) {
    let (n, seq_len, dim) = (tape.n_sequences(), tape.seq_len(), tape.hidden_size());
    let mut seeds = tape.seeds();
    let pooled = tape.pool(pooling);
    let cosine =
        lathe_distill::cosine_embedding(&pooled, &targets.0, Shape { rows: n, cols: dim }).expect("finite embeddings");
    tape.pool_backward(pooling, &cosine.grad, &mut seeds);
    let mut loss = cosine.value;
    let layers = targets.1.len();
    for (layer, teacher) in targets.1.iter().enumerate() {
        let student = real_rows(tape.hidden(layer + 1), lengths, seq_len, dim);
        let mse = lathe_distill::mse(&student, teacher).expect("finite hidden states");
        let scale = 1.0 / layers as f32;
        let seed = seeds.hidden_mut(layer + 1);
        let mut grads = mse.grad.chunks_exact(dim);
        for (slot, &len) in lengths.iter().enumerate() {
            for position in 0..len {
                let grad = grads.next().expect("one gradient row per real token");
                let row = &mut seed[(slot * seq_len + position) * dim..][..dim];
                row.iter_mut().zip(grad).for_each(|(dst, g)| *dst += g * scale);
            }
        }
        loss += mse.value / layers as f64;
    }
    (loss, seeds)
}

fn bench_distill(c: &mut Criterion) {
    let dir = models::minilm_dir();
    let encoder = SentenceEncoder::open(&dir).expect("all-MiniLM-L6-v2 opens");
    let pooling = encoder.pooling();
    let tokens = pick_batch(&encoder);
    let lengths: Vec<usize> = tokens.iter().map(|tokens| tokens.ids.len()).collect();
    let batch = encoder.batch(&tokens);
    let real_tokens = batch.real_tokens() as u64;
    let targets = teacher_targets(&encoder, &batch, &lengths);

    let mut student = BertParams::from_edit(&dir, &Edit::new().keep_layers(KEEP)).expect("the student is cut");
    let mut optimizer = AdamW::new(&student, AdamWConfig { weight_decay: 0.01, ..AdamWConfig::default() });
    let mut grads = student.zero_grads();
    let saved = tempfile::tempdir().expect("a temporary folder");
    student.save(saved.path()).expect("the student saves");
    let inference = BertModel::open(saved.path()).expect("the saved student opens");
    eprintln!(
        "distill bench: student of {} layers, batch {} x {} slots, {real_tokens} real tokens ({:.0} % padding)",
        student.num_layers(),
        batch.n_sequences(),
        batch.seq_len(),
        100.0 * (1.0 - real_tokens as f64 / batch.ids().len() as f64)
    );

    let mut group = c.benchmark_group("distill");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Elements(real_tokens));
    let parameter = format!("{}x{}", batch.n_sequences(), batch.seq_len());

    group.bench_function(BenchmarkId::new("train_step", &parameter), |b| {
        b.iter(|| {
            let tape = student.forward(black_box(&batch)).expect("the batch fits the student");
            let (loss, seeds) = loss_and_seeds(&tape, pooling, &targets, &lengths);
            assert!(loss.is_finite(), "the loss diverged: {loss}");
            grads.fill(0.0);
            tape.backward(&student, &seeds, &mut grads);
            drop(tape);
            // The word embeddings are frozen (distill's default); Weights' first tensor.
            grads.tensors_mut()[0].fill(0.0);
            clip_grad_norm(&mut grads, 1.0);
            optimizer.step(&mut student, &grads, LEARNING_RATE);
            loss
        })
    });
    group.bench_function(BenchmarkId::new("forward_tape", &parameter), |b| {
        b.iter(|| student.forward(black_box(&batch)).expect("the batch fits the student").pool(pooling))
    });
    group.bench_function(BenchmarkId::new("forward", &parameter), |b| {
        b.iter(|| pooling.pool(&inference.forward(black_box(&batch)).expect("the batch fits the student")))
    });
    group.finish();
}

criterion_group!(benches, bench_distill);
criterion_main!(benches);
