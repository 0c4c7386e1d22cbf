//! The encoder end to end on all-MiniLM-L6-v2 and the 48 golden sentences, against this
//! machine's f32 FMA peak measured in the same run (`cargo xtask bench model` prints the table).
//!
//! Functions of group `model`, each with the FLOPs of the nominal padded batch (48 x 68 token
//! slots, every product counted at `2 m n k`) as its throughput, except where noted:
//! - `fma_peak`: 12 independent chains of 8-lane `vfmadd` (the FLOPs it does);
//! - `forward_padded`: one padded batch through embeddings, 6 layers and mean pooling;
//! - `gemm_padded`: the 36 linears alone on the padded batch's shapes (their FLOPs);
//! - `attention_padded`: attention alone, measured inside `forward` with the capture hook: per
//!   layer, the time from the value linear's hook to the attention-output linear's hook, minus
//!   the time from the query linear's hook to the key linear's hook (the query linear has the
//!   value linear's shape) (the FLOPs of `Q K^T` and `P V` over every slot);
//! - `gelu_padded`: the exact GELU over the six FFN activations (no FLOPs: elements);
//! - `tokenize`: the 48 sentences (no throughput);
//! - `embed_by_length/<batch size>`: `SentenceEncoder::embed_sentences`, tokenization included,
//!   sentences sorted by length (the FLOPs of the padded batch, so the rate compares directly).
//!
//! The model folder is `$LATHE_MODELS_DIR/all-MiniLM-L6-v2` (as in tests/model.rs).

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, black_box, criterion_group, criterion_main};
use lathe_config::Role;
use lathe_model::{Pooling, SentenceEncoder};

#[path = "../../../tests/support/models.rs"]
mod models;
use models::models_dir;

fn sentences() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sentences.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    text.lines().filter(|line| !line.trim().is_empty()).map(str::to_owned).collect()
}

/// FMAs per iteration of the peak kernel's loop: 12 chains of 8 lanes.
const PEAK_FMAS_PER_STEP: u64 = 12 * 8;
const PEAK_STEPS: u64 = 1 << 20;

/// `steps` rounds of 12 independent 8-lane FMA chains; returns a value that depends on all of
/// them. `None` without AVX2 and FMA.
fn fma_peak(steps: u64) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: AVX2 and FMA were detected just above.
        return Some(unsafe { x86_64::fma_chains(steps) });
    }
    let _ = steps;
    None
}

#[cfg(target_arch = "x86_64")]
mod x86_64 {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn fma_chains(steps: u64) -> f32 {
        // x -> x * a + b with a just below 1 stays finite and normal for any number of steps.
        let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        let mut chains = [_mm256_set1_ps(1.0); 12];
        for _ in 0..steps {
            for chain in &mut chains {
                *chain = _mm256_fmadd_ps(*chain, a, b);
            }
        }
        let total = chains.iter().fold(_mm256_setzero_ps(), |sum, &chain| _mm256_add_ps(sum, chain));
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` is 8 writable floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), total) };
        lanes.iter().sum()
    }
}

/// `2 m n k` summed over the products of one forward pass of `slots` token slots in sequences of
/// `seq_len`: the six linears of every layer, then `Q K^T` and `P V` per sequence and head.
fn forward_flops(encoder: &SentenceEncoder, n_sequences: u64, seq_len: u64) -> (u64, u64) {
    let model = encoder.model();
    let slots = n_sequences * seq_len;
    let linears: u64 = model
        .linears()
        .map(|(_, _, linear)| 2 * slots * linear.in_features() as u64 * linear.out_features() as u64)
        .sum();
    let hidden = model.hidden_size() as u64;
    let attention = model.num_layers() as u64 * 2 * (2 * n_sequences * seq_len * seq_len * hidden);
    (linears, attention)
}

fn bench_model(c: &mut Criterion) {
    let dir = models_dir().join("all-MiniLM-L6-v2");
    let encoder = SentenceEncoder::open(&dir).unwrap_or_else(|error| {
        panic!("cannot open {}: {error} (run `cargo xtask fetch-models` or set LATHE_MODELS_DIR)", dir.display())
    });
    let sentences = sentences();
    let tokens: Vec<_> =
        sentences.iter().map(|s| encoder.tokenize(s).expect("the golden sentences tokenize")).collect();
    let batch = encoder.batch(&tokens);
    let model = encoder.model();
    let (n_sequences, seq_len) = (batch.n_sequences() as u64, batch.seq_len() as u64);
    let (linear_flops, attention_flops) = forward_flops(&encoder, n_sequences, seq_len);
    let total_flops = linear_flops + attention_flops;
    let slots = batch.ids().len();

    let mut group = c.benchmark_group("model");
    // Flat sampling: ten samples of equal iteration counts, so a one-second forward pass costs
    // ten seconds rather than the 55 iterations of criterion's linear sampling.
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));

    if fma_peak(1).is_some() {
        group.throughput(Throughput::Elements(2 * PEAK_FMAS_PER_STEP * PEAK_STEPS));
        group.bench_function("fma_peak", |b| b.iter(|| fma_peak(black_box(PEAK_STEPS))));
    }

    group.throughput(Throughput::Elements(total_flops));
    group.bench_function("forward_padded", |b| {
        b.iter(|| {
            let hidden = model.forward(&batch).expect("the golden batch fits the model");
            Pooling::default().pool(&hidden)
        })
    });

    // The linears alone, on inputs of the padded batch's shapes (values from the batch's own
    // embeddings, so no denormals or zeros change the speed).
    let embedded = model.embed(&batch).expect("the golden batch fits the model");
    let states = embedded.states();
    let widest = model.linears().map(|(_, _, l)| l.in_features().max(l.out_features())).max().unwrap_or(0);
    let input: Vec<f32> = (0..slots * widest).map(|i| states[i % states.len()]).collect();
    let mut output = vec![0.0f32; slots * widest];
    group.throughput(Throughput::Elements(linear_flops));
    group.bench_function("gemm_padded", |b| {
        b.iter(|| {
            for (_, _, linear) in model.linears() {
                let (cols, rows) = (linear.in_features(), linear.out_features());
                linear.forward(&input[..slots * cols], slots, &mut output[..slots * rows]);
            }
        })
    });

    group.throughput(Throughput::Elements(attention_flops));
    group.bench_function("attention_padded", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let mut marks: Vec<(Role, Instant)> = Vec::with_capacity(6 * model.num_layers());
                let mut hidden = model.embed(&batch).expect("the golden batch fits the model");
                for layer in 0..model.num_layers() {
                    model.layer_capturing(layer, &mut hidden, |input| marks.push((input.role, Instant::now())));
                }
                for layer in marks.chunks_exact(6) {
                    let at = |role: Role| layer.iter().find(|(r, _)| *r == role).map(|(_, t)| *t).expect("six hooks");
                    let query_linear = at(Role::Key) - at(Role::Query);
                    let value_and_attention = at(Role::AttentionOutput) - at(Role::Value);
                    total += value_and_attention.saturating_sub(query_linear);
                }
                black_box(&hidden);
            }
            total
        })
    });

    let ffn_width = model.linears().find(|(_, role, _)| *role == Role::FfnIn).map_or(0, |(_, _, l)| l.out_features());
    let mut activations: Vec<f32> =
        (0..slots * ffn_width * model.num_layers()).map(|i| states[i % states.len()] * 2.0).collect();
    group.throughput(Throughput::Elements(activations.len() as u64));
    group.bench_function("gelu_padded", |b| b.iter(|| lathe_quant::activation::gelu_f32(&mut activations)));

    group.throughput(Throughput::Elements(sentences.len() as u64));
    group.bench_function("tokenize", |b| {
        b.iter(|| sentences.iter().map(|s| encoder.tokenize(s).map(|t| t.ids.len())).sum::<Result<usize, _>>())
    });

    group.throughput(Throughput::Elements(total_flops));
    for batch_size in [8, 16, 32] {
        group.bench_with_input(BenchmarkId::new("embed_by_length", batch_size), &batch_size, |b, &batch_size| {
            b.iter(|| encoder.embed_sentences(&sentences, batch_size).expect("the golden sentences embed"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_model);
criterion_main!(benches);
