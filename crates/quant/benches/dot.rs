//! Dot-product kernels in GB/s of weight bytes: the scalar reference, each instruction set this
//! CPU runs and the dispatched entry point, side by side, with 4 KiB, 256 KiB and 4 MiB of
//! weights (the activations stream alongside, 1 to 2 times as many bytes for the GGML formats:
//! about L1, L2 and L3). Every path's answer is checked against the scalar one in setup.
//!
//! Run one thread and briefly on shared machines:
//! `cargo bench -p lathe-quant --bench dot -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lathe_quant::Isa;
use lathe_quant::dot::{self, DotKernels, kernels};
use lathe_quant::ggml::{self, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1, QK};

/// A kernel over two slices.
type Kernel<X, Y, R> = fn(&[X], &[Y]) -> R;

const WEIGHT_BYTES: [(usize, &str); 3] = [(4 << 10, "4KiB"), (256 << 10, "256KiB"), (4 << 20, "4MiB")];

/// Deterministic values in [-1, 1) (xorshift64*), so runs compare.
fn values(n: usize, mut seed: u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            let bits = seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
            bits as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Every table this CPU runs, scalar first.
fn tables() -> Vec<&'static DotKernels> {
    Isa::supported().into_iter().filter_map(kernels).collect()
}

/// How to make, read back and multiply one weight format against its activation format.
struct Format<X, Y> {
    name: &'static str,
    quantize_x: fn(&[f32], &mut [X]),
    dequantize_x: fn(&[X], &mut [f32]),
    quantize_y: fn(&[f32], &mut [Y]),
    dequantize_y: fn(&[Y], &mut [f32]),
    kernel: fn(&DotKernels) -> Kernel<X, Y, f32>,
    dispatched: Kernel<X, Y, f32>,
}

fn bench_format<X: bytemuck::Pod, Y: bytemuck::Pod>(c: &mut Criterion, format: Format<X, Y>) {
    let mut group = c.benchmark_group(format.name);
    for (bytes, label) in WEIGHT_BYTES {
        let n_blocks = bytes / size_of::<X>();
        let mut x = vec![X::zeroed(); n_blocks];
        let mut y = vec![Y::zeroed(); n_blocks];
        (format.quantize_x)(&values(n_blocks * QK, 1), &mut x);
        (format.quantize_y)(&values(n_blocks * QK, 2), &mut y);

        // The answer, once: the scalar reference against the dequantized values (within the
        // quantization of Q8_1's `s`), every other path against the scalar one.
        let (mut dense_x, mut dense_y) = (vec![0.0; n_blocks * QK], vec![0.0; n_blocks * QK]);
        (format.dequantize_x)(&x, &mut dense_x);
        (format.dequantize_y)(&y, &mut dense_y);
        let dense: f64 = dense_x.iter().zip(&dense_y).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
        let magnitude: f64 = dense_x.iter().zip(&dense_y).map(|(&a, &b)| (f64::from(a) * f64::from(b)).abs()).sum();
        let reference = f64::from((format.kernel)(kernels(Isa::Scalar).unwrap())(&x, &y));
        assert!(
            (reference - dense).abs() <= 1e-2 * magnitude,
            "{}: scalar {reference} vs dequantized {dense}",
            format.name
        );
        let mut paths: Vec<(&str, Kernel<X, Y, f32>)> =
            tables().into_iter().map(|table| (table.isa.name(), (format.kernel)(table))).collect();
        paths.push(("dispatched", format.dispatched));
        for &(name, kernel) in &paths {
            let result = f64::from(kernel(&x, &y));
            assert!((result - reference).abs() <= 1e-3 * magnitude, "{} {name}: {result} vs {reference}", format.name);
        }

        group.throughput(Throughput::Bytes(std::mem::size_of_val(x.as_slice()) as u64));
        for (name, kernel) in paths {
            group.bench_function(BenchmarkId::new(name, label), |b| b.iter(|| kernel(black_box(&x), black_box(&y))));
        }
    }
    group.finish();
}

fn bench_ggml(c: &mut Criterion) {
    bench_format::<BlockQ8_0, BlockQ8_0>(
        c,
        Format {
            name: "dot_q8_0_q8_0",
            quantize_x: ggml::quantize_q8_0,
            dequantize_x: ggml::dequantize_q8_0,
            quantize_y: ggml::quantize_q8_0,
            dequantize_y: ggml::dequantize_q8_0,
            kernel: |k| k.q8_0_q8_0,
            dispatched: dot::dot_q8_0_q8_0,
        },
    );
    bench_format::<BlockQ4_0, BlockQ8_0>(
        c,
        Format {
            name: "dot_q4_0_q8_0",
            quantize_x: ggml::quantize_q4_0,
            dequantize_x: ggml::dequantize_q4_0,
            quantize_y: ggml::quantize_q8_0,
            dequantize_y: ggml::dequantize_q8_0,
            kernel: |k| k.q4_0_q8_0,
            dispatched: dot::dot_q4_0_q8_0,
        },
    );
    bench_format::<BlockQ4_1, BlockQ8_1>(
        c,
        Format {
            name: "dot_q4_1_q8_1",
            quantize_x: ggml::quantize_q4_1,
            dequantize_x: ggml::dequantize_q4_1,
            quantize_y: ggml::quantize_q8_1,
            dequantize_y: ggml::dequantize_q8_1,
            kernel: |k| k.q4_1_q8_1,
            dispatched: dot::dot_q4_1_q8_1,
        },
    );
    bench_format::<BlockQ5_0, BlockQ8_0>(
        c,
        Format {
            name: "dot_q5_0_q8_0",
            quantize_x: ggml::quantize_q5_0,
            dequantize_x: ggml::dequantize_q5_0,
            quantize_y: ggml::quantize_q8_0,
            dequantize_y: ggml::dequantize_q8_0,
            kernel: |k| k.q5_0_q8_0,
            dispatched: dot::dot_q5_0_q8_0,
        },
    );
    bench_format::<BlockQ5_1, BlockQ8_1>(
        c,
        Format {
            name: "dot_q5_1_q8_1",
            quantize_x: ggml::quantize_q5_1,
            dequantize_x: ggml::dequantize_q5_1,
            quantize_y: ggml::quantize_q8_1,
            dequantize_y: ggml::dequantize_q8_1,
            kernel: |k| k.q5_1_q8_1,
            dispatched: dot::dot_q5_1_q8_1,
        },
    );
}

fn bench_i8_i8(c: &mut Criterion) {
    let mut group = c.benchmark_group("dot_i8_i8");
    for (bytes, label) in WEIGHT_BYTES {
        let to_i8 = |v: Vec<f32>| v.into_iter().map(|v| (v * 128.0).floor() as i8).collect::<Vec<_>>();
        let (x, y) = (to_i8(values(bytes, 3)), to_i8(values(bytes, 4)));
        let exact: i64 = x.iter().zip(&y).map(|(&a, &b)| i64::from(a) * i64::from(b)).sum();
        let mut paths: Vec<(&str, Kernel<i8, i8, i32>)> =
            tables().into_iter().map(|table| (table.isa.name(), table.i8_i8)).collect();
        paths.push(("dispatched", dot::dot_i8_i8));
        for &(name, kernel) in &paths {
            assert_eq!(i64::from(kernel(&x, &y)), exact, "dot_i8_i8 {name}");
        }
        group.throughput(Throughput::Bytes(bytes as u64));
        for (name, kernel) in paths {
            group.bench_function(BenchmarkId::new(name, label), |b| b.iter(|| kernel(black_box(&x), black_box(&y))));
        }
    }
    group.finish();
}

fn bench_f32_f32(c: &mut Criterion) {
    let mut group = c.benchmark_group("dot_f32_f32");
    for (bytes, label) in WEIGHT_BYTES {
        let n = bytes / size_of::<f32>();
        let (x, y) = (values(n, 5), values(n, 6));
        let exact: f64 = x.iter().zip(&y).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
        let magnitude: f64 = x.iter().zip(&y).map(|(&a, &b)| (f64::from(a) * f64::from(b)).abs()).sum();
        let mut paths: Vec<(&str, Kernel<f32, f32, f32>)> =
            tables().into_iter().map(|table| (table.isa.name(), table.f32_f32)).collect();
        paths.push(("dispatched", dot::dot_f32_f32));
        for &(name, kernel) in &paths {
            let result = f64::from(kernel(&x, &y));
            assert!((result - exact).abs() <= 1e-4 * magnitude, "dot_f32_f32 {name}: {result} vs {exact}");
        }
        group.throughput(Throughput::Bytes(bytes as u64));
        for (name, kernel) in paths {
            group.bench_function(BenchmarkId::new(name, label), |b| b.iter(|| kernel(black_box(&x), black_box(&y))));
        }
    }
    group.finish();
}

criterion_group!(benches, bench_ggml, bench_i8_i8, bench_f32_f32);
criterion_main!(benches);
