//! lathe-quant beside candle-core on one thread: GGML quantize and dequantize (Q8_0, Q4_0, Q4_1)
//! at L1, L2, L3 and DRAM sizes, and candle's quantized GEMV on a 4096x4096 layer, hot (one
//! weight copy, partly cache-resident) and cold (cycling through copies that exceed the L3, so
//! the weights stream from DRAM as they do when decoding a model larger than the cache).
//!
//! Groups and ids, which `cargo xtask bench` reads back:
//! - `quantize_{fmt}` / `dequantize_{fmt}`: functions `lathe_scalar` (`ggml::scalar`), `lathe`
//!   (the dispatched entry) and `candle`; parameter = f32 size (`4KiB` ... `64MiB`); throughput in
//!   bytes of f32, read by quantize and written by dequantize.
//! - `gemv_{fmt}`: functions `candle` and `lathe`, parameter `hot` or `cold`; throughput in bytes
//!   of quantized weights read per call.
//! - `gemv_int8`: functions `dense` (f32 weights, `lathe_quant::dense`) and `lathe` (int8-channel
//!   weights), parameter `hot` or `cold`; throughput in weights per call.
//! - `quant_gemm`: functions `dense`, `lathe_int8-channel`, `lathe_int8-channel-a7` (the same
//!   weights with 7-bit activations, on the `maddubs` kernel), `lathe_q8_0`, `lathe_q4_0` and
//!   `candle_q8_0`, parameter `{tokens}x{in}x{out}`; throughput in FLOPs.

use std::hint::black_box;
use std::marker::PhantomData;

use bytemuck::Zeroable;
use candle_core::quantized::k_quants::{self, GgmlType};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput};
use lathe_peers::{F32_INPUT_BYTES, L3_BYTES, byte_label, dot_f64, random_f32, relative_error};
use lathe_quant::ggml::{self, scalar};
use lathe_quant::{ActivationBits, QuantizedMatrix, Scheme, dense};

/// Elements per GGML block of the formats measured here.
const BLOCK: usize = 32;
/// The GEMV layer: `k` inputs, `n` outputs, one token.
const GEMV_K: usize = 4096;
const GEMV_N: usize = 4096;
/// Cold GEMV cycles through at least this many bytes of weight copies: four times the L3, so the
/// copy being read was evicted long ago whatever the replacement policy.
const COLD_BYTES: usize = 4 * L3_BYTES;

/// One GGML format: lathe's block type `L` and kernels, and candle's block type `C`.
struct Format<L, C> {
    name: &'static str,
    lathe_scalar_quantize: fn(&[f32], &mut [L]),
    lathe_quantize: fn(&[f32], &mut [L]),
    lathe_scalar_dequantize: fn(&[L], &mut [f32]),
    lathe_dequantize: fn(&[L], &mut [f32]),
    candle: PhantomData<C>,
}

fn main() {
    default_to_one_thread();
    let mut criterion = Criterion::default().configure_from_args();
    bench_format(
        &mut criterion,
        &Format::<ggml::BlockQ8_0, k_quants::BlockQ8_0> {
            name: "q8_0",
            lathe_scalar_quantize: scalar::quantize_q8_0,
            lathe_quantize: ggml::quantize_q8_0,
            lathe_scalar_dequantize: scalar::dequantize_q8_0,
            lathe_dequantize: ggml::dequantize_q8_0,
            candle: PhantomData,
        },
    );
    bench_format(
        &mut criterion,
        &Format::<ggml::BlockQ4_0, k_quants::BlockQ4_0> {
            name: "q4_0",
            lathe_scalar_quantize: scalar::quantize_q4_0,
            lathe_quantize: ggml::quantize_q4_0,
            lathe_scalar_dequantize: scalar::dequantize_q4_0,
            lathe_dequantize: ggml::dequantize_q4_0,
            candle: PhantomData,
        },
    );
    bench_format(
        &mut criterion,
        &Format::<ggml::BlockQ4_1, k_quants::BlockQ4_1> {
            name: "q4_1",
            lathe_scalar_quantize: scalar::quantize_q4_1,
            lathe_quantize: ggml::quantize_q4_1,
            lathe_scalar_dequantize: scalar::dequantize_q4_1,
            lathe_dequantize: ggml::dequantize_q4_1,
            candle: PhantomData,
        },
    );
    bench_gemv::<k_quants::BlockQ4_0>(&mut criterion, "q4_0");
    bench_gemv::<k_quants::BlockQ8_0>(&mut criterion, "q8_0");
    bench_gemv_int8(&mut criterion);
    bench_bert_gemm(&mut criterion);
    criterion.final_summary();
}

/// candle sizes its thread pools from `CANDLE_NUM_THREADS`, else `RAYON_NUM_THREADS`, else the
/// core count, the first time it needs one; its GEMV pool spin-waits. lathe's figures are
/// single-threaded (NOTES.md), so unless the caller chose otherwise both are set to 1 here as
/// well as by `cargo xtask bench`, which keeps `cargo bench` and `cargo test` runs comparable.
fn default_to_one_thread() {
    for variable in ["CANDLE_NUM_THREADS", "RAYON_NUM_THREADS"] {
        if std::env::var_os(variable).is_none() {
            // SAFETY: this is the first statement of `main` and the bench harness is off
            // (`harness = false`), so no other thread exists yet that could read the environment
            // while it changes.
            unsafe { std::env::set_var(variable, "1") };
        }
    }
}

fn bench_format<L, C>(criterion: &mut Criterion, format: &Format<L, C>)
where
    L: Zeroable + Copy + PartialEq + std::fmt::Debug,
    C: GgmlType,
{
    // Every size's input and blocks are built and checked first (about 170 MiB in all), so that
    // each group's rows run back to back.
    let inputs: Vec<SizeInputs<L, C>> = F32_INPUT_BYTES
        .iter()
        .enumerate()
        .map(|(size_idx, &bytes)| {
            let src = random_f32(bytes / 4, 1000 + size_idx as u64);
            let (lathe_blocks, candle_blocks) = check_format(format, &src);
            SizeInputs { label: byte_label(bytes), src, lathe_blocks, candle_blocks }
        })
        .collect();

    let mut group = criterion.benchmark_group(format!("quantize_{}", format.name));
    for input in &inputs {
        configure(&mut group, input.src.len() * 4);
        let mut lathe_dst = vec![L::zeroed(); input.lathe_blocks.len()];
        group.bench_function(BenchmarkId::new("lathe_scalar", &input.label), |bencher| {
            bencher.iter(|| (format.lathe_scalar_quantize)(black_box(&input.src), black_box(&mut lathe_dst)))
        });
        group.bench_function(BenchmarkId::new("lathe", &input.label), |bencher| {
            bencher.iter(|| (format.lathe_quantize)(black_box(&input.src), black_box(&mut lathe_dst)))
        });
        let mut candle_dst = vec![C::zeros(); input.candle_blocks.len()];
        group.bench_function(BenchmarkId::new("candle", &input.label), |bencher| {
            bencher.iter(|| C::from_float(black_box(&input.src), black_box(&mut candle_dst)))
        });
    }
    group.finish();

    let mut group = criterion.benchmark_group(format!("dequantize_{}", format.name));
    for input in &inputs {
        configure(&mut group, input.src.len() * 4);
        let mut dst = vec![0.0f32; input.src.len()];
        group.bench_function(BenchmarkId::new("lathe_scalar", &input.label), |bencher| {
            bencher.iter(|| (format.lathe_scalar_dequantize)(black_box(&input.lathe_blocks), black_box(&mut dst)))
        });
        group.bench_function(BenchmarkId::new("lathe", &input.label), |bencher| {
            bencher.iter(|| (format.lathe_dequantize)(black_box(&input.lathe_blocks), black_box(&mut dst)))
        });
        group.bench_function(BenchmarkId::new("candle", &input.label), |bencher| {
            bencher.iter(|| C::to_float(black_box(&input.candle_blocks), black_box(&mut dst)))
        });
    }
    group.finish();
}

/// One size's f32 input and its blocks as lathe and candle quantize it.
struct SizeInputs<L, C> {
    label: String,
    src: Vec<f32>,
    lathe_blocks: Vec<L>,
    candle_blocks: Vec<C>,
}

/// Quantizes `src` with all three implementations and checks them once: lathe's dispatched blocks
/// equal its scalar ones, and since candle follows ggml's reference as lathe does, dequantizing
/// either side's blocks gives the same floats (compared as floats because candle's block fields
/// are private).
fn check_format<L, C>(format: &Format<L, C>, src: &[f32]) -> (Vec<L>, Vec<C>)
where
    L: Zeroable + Copy + PartialEq + std::fmt::Debug,
    C: GgmlType,
{
    let n_blocks = src.len() / BLOCK;
    let mut scalar_blocks = vec![L::zeroed(); n_blocks];
    (format.lathe_scalar_quantize)(src, &mut scalar_blocks);
    let mut lathe_blocks = vec![L::zeroed(); n_blocks];
    (format.lathe_quantize)(src, &mut lathe_blocks);
    if let Some(block_idx) = (0..n_blocks).find(|&block_idx| scalar_blocks[block_idx] != lathe_blocks[block_idx]) {
        panic!(
            "{}: dispatched quantize differs from scalar at block {block_idx}: {:?} vs {:?}",
            format.name, lathe_blocks[block_idx], scalar_blocks[block_idx]
        );
    }
    let mut candle_blocks = vec![C::zeros(); n_blocks];
    C::from_float(src, &mut candle_blocks);

    let mut lathe_values = vec![f32::NAN; src.len()];
    (format.lathe_scalar_dequantize)(&lathe_blocks, &mut lathe_values);
    let mut dispatched_values = vec![f32::NAN; src.len()];
    (format.lathe_dequantize)(&lathe_blocks, &mut dispatched_values);
    let mut candle_values = vec![f32::NAN; src.len()];
    C::to_float(&candle_blocks, &mut candle_values);
    for (name, values) in [("lathe dispatched", &dispatched_values), ("candle", &candle_values)] {
        if let Some(idx) = (0..src.len()).find(|&idx| values[idx].to_bits() != lathe_values[idx].to_bits()) {
            panic!(
                "{}: {name} round trip differs from lathe scalar at element {idx} (input {}): {} vs {}",
                format.name, src[idx], values[idx], lathe_values[idx]
            );
        }
    }
    (lathe_blocks, candle_blocks)
}

/// Throughput in bytes of f32, and fewer, flat samples for the DRAM size, where one iteration
/// takes milliseconds and criterion's linear sampling would run for minutes.
fn configure(group: &mut BenchmarkGroup<'_, WallTime>, f32_bytes: usize) {
    group.throughput(Throughput::Bytes(f32_bytes as u64));
    if f32_bytes > L3_BYTES {
        group.sample_size(20).sampling_mode(SamplingMode::Flat);
    } else {
        group.sample_size(100).sampling_mode(SamplingMode::Auto);
    }
}

/// The quantized matrix-vector product `y[n] = W[n, k] · x[k]` of candle and lathe (both quantize
/// `x` to the format's activation type on every call, as a decoder does), hot and cold, on the
/// same weights: lathe's blocks are byte-identical with candle's (ggml's reference rounding).
fn bench_gemv<C: GgmlType>(criterion: &mut Criterion, name: &str) {
    let weights_f32 = random_f32(GEMV_N * GEMV_K, 77);
    let x = random_f32(GEMV_K, 78);
    let mut weights = vec![C::zeros(); GEMV_N * GEMV_K / BLOCK];
    C::from_float(&weights_f32, &mut weights);
    let weight_bytes = std::mem::size_of_val(weights.as_slice());

    // Both are checked once against an f64 product with the weights as candle dequantizes them;
    // the remaining error is the quantization of `x`, well under 1 %.
    let mut dequantized = vec![0.0f32; GEMV_N * GEMV_K];
    C::to_float(&weights, &mut dequantized);
    let expected: Vec<f64> = dequantized.chunks_exact(GEMV_K).map(|row| dot_f64(row, &x)).collect();
    let mut y = vec![0.0f32; GEMV_N];
    k_quants::matmul::<C>((1, GEMV_K, GEMV_N), &x, &weights, &mut y).expect("candle gemv failed");
    let error = relative_error(&y, &expected);
    assert!(error < 1e-2, "gemv_{name}: candle's result is off by {error} (relative)");
    let scheme: Scheme = name.parse().expect("a GGML scheme name");
    let lathe = QuantizedMatrix::quantize(&weights_f32, GEMV_N, GEMV_K, scheme).expect("lathe quantize failed");
    drop(weights_f32);
    let mut lathe_dequantized = vec![0.0f32; GEMV_N * GEMV_K];
    lathe.dequantize(&mut lathe_dequantized);
    assert!(lathe_dequantized == dequantized, "gemv_{name}: lathe's weights differ from candle's");
    drop((dequantized, lathe_dequantized));
    lathe.gemv(&x, &mut y);
    let error = relative_error(&y, &expected);
    assert!(error < 1e-2, "gemv_{name}: lathe's result is off by {error} (relative)");

    let n_copies = COLD_BYTES.div_ceil(weight_bytes);
    let mut group = criterion.benchmark_group(format!("gemv_{name}"));
    group.throughput(Throughput::Bytes(weight_bytes as u64));
    let copies: Vec<Vec<C>> = (0..n_copies).map(|_| weights.clone()).collect();
    bench_hot_cold(&mut group, "candle", &copies, GEMV_N, |weights, y| {
        k_quants::matmul::<C>((1, GEMV_K, GEMV_N), &x, weights, y).expect("candle gemv failed")
    });
    drop(copies);
    let copies: Vec<QuantizedMatrix> = (0..n_copies).map(|_| lathe.clone()).collect();
    bench_hot_cold(&mut group, "lathe", &copies, GEMV_N, |matrix, y| matrix.gemv(&x, y));
    group.finish();
}

/// lathe's int8 GEMV (per-channel weights, per-token activations quantized on every call) beside
/// the dense f32 GEMV of `lathe_quant::dense` on the same 4096x4096 layer, hot and cold.
/// Throughput is in weights (elements), the same for both, so the ratio is the speed-up.
fn bench_gemv_int8(criterion: &mut Criterion) {
    let weights = random_f32(GEMV_N * GEMV_K, 79);
    let x = random_f32(GEMV_K, 80);
    let expected: Vec<f64> = weights.chunks_exact(GEMV_K).map(|row| dot_f64(row, &x)).collect();
    let mut y = vec![0.0f32; GEMV_N];
    dense::linear(&x, 1, &weights, GEMV_N, GEMV_K, None, &mut y);
    let error = relative_error(&y, &expected);
    assert!(error < 1e-5, "gemv_int8: the dense result is off by {error} (relative)");
    let int8 = QuantizedMatrix::quantize(&weights, GEMV_N, GEMV_K, "int8-channel".parse().unwrap()).unwrap();
    int8.gemv(&x, &mut y);
    let error = relative_error(&y, &expected);
    assert!(error < 2e-2, "gemv_int8: lathe's int8 result is off by {error} (relative)");

    let mut group = criterion.benchmark_group("gemv_int8");
    group.throughput(Throughput::Elements((GEMV_N * GEMV_K) as u64));
    let n_copies = COLD_BYTES.div_ceil(weights.len() * 4);
    let copies: Vec<Vec<f32>> = (0..n_copies).map(|_| weights.clone()).collect();
    drop(weights);
    bench_hot_cold(&mut group, "dense", &copies, GEMV_N, |weights, y| {
        dense::linear(&x, 1, weights, GEMV_N, GEMV_K, None, y)
    });
    drop(copies);
    let n_copies = COLD_BYTES.div_ceil(GEMV_N * GEMV_K);
    let copies: Vec<QuantizedMatrix> = (0..n_copies).map(|_| int8.clone()).collect();
    bench_hot_cold(&mut group, "lathe", &copies, GEMV_N, |matrix, y| matrix.gemv(&x, y));
    group.finish();
}

/// Times `run` on the first copy over and over (`hot`) and on the copies in turn (`cold`).
fn bench_hot_cold<T>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    function: &str,
    copies: &[T],
    n_outputs: usize,
    run: impl Fn(&T, &mut [f32]),
) {
    group.sample_size(50).sampling_mode(SamplingMode::Flat);
    let mut y = vec![0.0f32; n_outputs];
    group.bench_function(BenchmarkId::new(function, "hot"), |bencher| {
        bencher.iter(|| run(black_box(&copies[0]), black_box(&mut y)))
    });
    let mut copy_idx = 0;
    group.bench_function(BenchmarkId::new(function, "cold"), |bencher| {
        bencher.iter(|| {
            copy_idx = (copy_idx + 1) % copies.len();
            run(black_box(&copies[copy_idx]), black_box(&mut y))
        })
    });
}

/// The BERT layers (MiniLM's attention 384x384, FFN up 1536x384, FFN down 384x1536, as `out x
/// in`) with 1, 32 and 128 tokens: the dense f32 GEMM beside lathe's quantized GEMMs (activations
/// quantized on every call) and candle's. Throughput in FLOPs (`2 * tokens * in * out`).
fn bench_bert_gemm(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("quant_gemm");
    group.sample_size(50);
    for (out_features, in_features) in [(384, 384), (1536, 384), (384, 1536)] {
        let weights = random_f32(out_features * in_features, 81);
        for tokens in [1, 32, 128] {
            let x = random_f32(tokens * in_features, 82);
            let expected: Vec<f64> = x
                .chunks_exact(in_features)
                .flat_map(|token| weights.chunks_exact(in_features).map(|row| dot_f64(row, token)))
                .collect();
            let parameter = format!("{tokens}x{in_features}x{out_features}");
            group.throughput(Throughput::Elements(2 * (tokens * in_features * out_features) as u64));
            let mut y = vec![0.0f32; tokens * out_features];
            dense::linear(&x, tokens, &weights, out_features, in_features, None, &mut y);
            assert!(relative_error(&y, &expected) < 1e-5, "quant_gemm {parameter}: dense is off");
            group.bench_function(BenchmarkId::new("dense", &parameter), |bencher| {
                bencher.iter(|| {
                    dense::linear(black_box(&x), tokens, black_box(&weights), out_features, in_features, None, &mut y)
                })
            });
            for scheme in ["int8-channel", "int8-channel-a7", "q8_0", "q4_0"] {
                let (name, bits) = match scheme.strip_suffix("-a7") {
                    Some(name) => (name, ActivationBits::Seven),
                    None => (scheme, ActivationBits::Eight),
                };
                let matrix = QuantizedMatrix::quantize(&weights, out_features, in_features, name.parse().unwrap())
                    .and_then(|matrix| matrix.with_activation_bits(bits))
                    .expect("lathe quantize failed");
                matrix.gemm(&x, tokens, &mut y);
                let error = relative_error(&y, &expected);
                assert!(error < 0.15, "quant_gemm {parameter}: lathe {scheme} is off by {error}");
                group.bench_function(BenchmarkId::new(format!("lathe_{scheme}"), &parameter), |bencher| {
                    bencher.iter(|| matrix.gemm(black_box(&x), tokens, black_box(&mut y)))
                });
            }
            let mut candle_weights = vec![k_quants::BlockQ8_0::zeros(); out_features * in_features / BLOCK];
            k_quants::BlockQ8_0::from_float(&weights, &mut candle_weights);
            group.bench_function(BenchmarkId::new("candle_q8_0", &parameter), |bencher| {
                bencher.iter(|| {
                    k_quants::matmul::<k_quants::BlockQ8_0>(
                        (tokens, in_features, out_features),
                        black_box(&x),
                        black_box(&candle_weights),
                        black_box(&mut y),
                    )
                    .expect("candle gemm failed")
                })
            });
        }
    }
    group.finish();
}
