//! GGML quantize and dequantize kernels in GB/s of f32 (the input of quantizers, the output of
//! dequantizers): the scalar reference, each instruction set this CPU runs and the dispatched
//! entry point, side by side, at 4 KiB (L1), 256 KiB (L2), 4 MiB (L3) and 64 MiB (DRAM) of f32.
//! Every path's answer is checked against the scalar one in setup. The per-token int8 activation
//! quantizer (`linear::quantize_activations_i8`) runs alongside, over rows of 384 values.
//!
//! Run one thread and briefly on shared machines:
//! `cargo bench -p lathe-quant --bench ggml -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lathe_quant::Isa;
use lathe_quant::ggml::{self, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1, Kernels, QK};
use lathe_quant::linear::{self, ActivationQuantizer};

const F32_BYTES: [(usize, &str); 4] =
    [(4 << 10, "4KiB"), (256 << 10, "256KiB"), (4 << 20, "4MiB"), (64 << 20, "64MiB")];

/// Deterministic weight-like values (a sum of two uniforms in [-1, 1), xorshift64*), so runs
/// compare and blocks have a spread of scales.
fn values(n: usize, mut seed: u64) -> Vec<f32> {
    let mut next = move || {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        (seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    };
    (0..n).map(|_| next() + next()).collect()
}

type Quantize<B> = fn(&[f32], &mut [B]);
type Dequantize<B> = fn(&[B], &mut [f32]);

/// Every table this CPU runs, scalar first.
fn tables() -> Vec<&'static Kernels> {
    Isa::supported().into_iter().filter_map(ggml::kernels).collect()
}

/// The 64 MiB runs take tens of milliseconds each on the scalar path: fewer samples.
fn samples(f32_bytes: usize) -> usize {
    if f32_bytes >= 64 << 20 { 10 } else { 50 }
}

fn bench_quantize<B: bytemuck::Pod>(
    c: &mut Criterion,
    name: &str,
    kernel: fn(&Kernels) -> Quantize<B>,
    dispatched: Quantize<B>,
) {
    let mut group = c.benchmark_group(name);
    for (bytes, label) in F32_BYTES {
        let src = values(bytes / 4, 0x9e37_79b9_7f4a_7c15);
        let n_blocks = src.len() / QK;
        let mut expected = vec![B::zeroed(); n_blocks];
        let mut dst = vec![B::zeroed(); n_blocks];
        kernel(ggml::kernels(Isa::Scalar).expect("scalar runs"))(&src, &mut expected);
        group.throughput(Throughput::Bytes(bytes as u64)).sample_size(samples(bytes));
        let paths =
            tables().into_iter().map(|table| (table.isa.name(), kernel(table))).chain([("dispatched", dispatched)]);
        for (path, quantize) in paths {
            quantize(&src, &mut dst);
            assert!(
                bytemuck::cast_slice::<B, u8>(&dst) == bytemuck::cast_slice::<B, u8>(&expected),
                "{name}/{path}: blocks differ from scalar"
            );
            group.bench_function(BenchmarkId::new(path, label), |b| {
                b.iter(|| quantize(black_box(&src), black_box(&mut dst)))
            });
        }
    }
    group.finish();
}

fn bench_dequantize<B: bytemuck::Pod>(
    c: &mut Criterion,
    name: &str,
    quantize: Quantize<B>,
    kernel: fn(&Kernels) -> Dequantize<B>,
    dispatched: Dequantize<B>,
) {
    let mut group = c.benchmark_group(name);
    for (bytes, label) in F32_BYTES {
        let values = values(bytes / 4, 0x9e37_79b9_7f4a_7c15);
        let mut src = vec![B::zeroed(); values.len() / QK];
        quantize(&values, &mut src);
        let mut expected = vec![0.0f32; values.len()];
        let mut dst = vec![0.0f32; values.len()];
        kernel(ggml::kernels(Isa::Scalar).expect("scalar runs"))(&src, &mut expected);
        group.throughput(Throughput::Bytes(bytes as u64)).sample_size(samples(bytes));
        let paths =
            tables().into_iter().map(|table| (table.isa.name(), kernel(table))).chain([("dispatched", dispatched)]);
        for (path, dequantize) in paths {
            dequantize(&src, &mut dst);
            assert!(
                dst.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name}/{path}: values differ from scalar"
            );
            group.bench_function(BenchmarkId::new(path, label), |b| {
                b.iter(|| dequantize(black_box(&src), black_box(&mut dst)))
            });
        }
    }
    group.finish();
}

/// Tokens of MiniLM's hidden size, one call per token as the quantized linear layers make them.
const TOKEN_LEN: usize = 384;

fn bench_activations(c: &mut Criterion) {
    let mut group = c.benchmark_group("quantize_activations_i8");
    let quantize_rows = |quantize: ActivationQuantizer, src: &[f32], dst: &mut [i8], scales: &mut [f32]| {
        for ((x, q), scale) in src.chunks_exact(TOKEN_LEN).zip(dst.chunks_exact_mut(TOKEN_LEN)).zip(scales) {
            *scale = quantize(x, q);
        }
    };
    for (bytes, label) in F32_BYTES {
        let src = values(bytes / 4, 0x9e37_79b9_7f4a_7c15);
        let n_tokens = src.len() / TOKEN_LEN;
        let (mut expected, mut dst) = (vec![0i8; src.len()], vec![0i8; src.len()]);
        let (mut expected_scales, mut scales) = (vec![0.0f32; n_tokens], vec![0.0f32; n_tokens]);
        let scalar = linear::quantize_activations_i8_kernel(Isa::Scalar).expect("scalar runs");
        quantize_rows(scalar, &src, &mut expected, &mut expected_scales);
        group.throughput(Throughput::Bytes((n_tokens * TOKEN_LEN * 4) as u64)).sample_size(samples(bytes));
        let kernels = Isa::supported()
            .into_iter()
            .filter_map(|isa| Some((isa.name(), linear::quantize_activations_i8_kernel(isa)?)));
        let paths = kernels.chain([("dispatched", linear::quantize_activations_i8 as ActivationQuantizer)]);
        for (path, quantize) in paths {
            quantize_rows(quantize, &src, &mut dst, &mut scales);
            assert!(
                dst == expected && scales == expected_scales,
                "quantize_activations_i8/{path}: differs from scalar"
            );
            group.bench_function(BenchmarkId::new(path, label), |b| {
                b.iter(|| quantize_rows(quantize, black_box(&src), black_box(&mut dst), black_box(&mut scales)))
            });
        }
    }
    group.finish();
}

fn ggml_kernels(c: &mut Criterion) {
    bench_quantize::<BlockQ8_0>(c, "quantize_q8_0", |k| k.quantize_q8_0, ggml::quantize_q8_0);
    bench_dequantize::<BlockQ8_0>(
        c,
        "dequantize_q8_0",
        ggml::quantize_q8_0,
        |k| k.dequantize_q8_0,
        ggml::dequantize_q8_0,
    );
    bench_quantize::<BlockQ8_1>(c, "quantize_q8_1", |k| k.quantize_q8_1, ggml::quantize_q8_1);
    bench_quantize::<BlockQ4_0>(c, "quantize_q4_0", |k| k.quantize_q4_0, ggml::quantize_q4_0);
    bench_dequantize::<BlockQ4_0>(
        c,
        "dequantize_q4_0",
        ggml::quantize_q4_0,
        |k| k.dequantize_q4_0,
        ggml::dequantize_q4_0,
    );
    bench_quantize::<BlockQ4_1>(c, "quantize_q4_1", |k| k.quantize_q4_1, ggml::quantize_q4_1);
    bench_dequantize::<BlockQ4_1>(
        c,
        "dequantize_q4_1",
        ggml::quantize_q4_1,
        |k| k.dequantize_q4_1,
        ggml::dequantize_q4_1,
    );
    bench_quantize::<BlockQ5_0>(c, "quantize_q5_0", |k| k.quantize_q5_0, ggml::quantize_q5_0);
    bench_dequantize::<BlockQ5_0>(
        c,
        "dequantize_q5_0",
        ggml::quantize_q5_0,
        |k| k.dequantize_q5_0,
        ggml::dequantize_q5_0,
    );
    bench_quantize::<BlockQ5_1>(c, "quantize_q5_1", |k| k.quantize_q5_1, ggml::quantize_q5_1);
    bench_dequantize::<BlockQ5_1>(
        c,
        "dequantize_q5_1",
        ggml::quantize_q5_1,
        |k| k.dequantize_q5_1,
        ggml::dequantize_q5_1,
    );
}

criterion_group!(benches, ggml_kernels, bench_activations);
criterion_main!(benches);
