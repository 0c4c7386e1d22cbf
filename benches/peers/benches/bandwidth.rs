//! This machine's single-thread DRAM bandwidth, measured in the same run as the kernels so that
//! `cargo xtask bench` can print each memory-bound kernel as a fraction of it.
//!
//! Group `bandwidth`, parameter `256MiB`, throughput in bytes; functions:
//! - `read`: sum a slice of u64 with four independent accumulators, so the adds never limit the
//!   loads; the ceiling for a kernel that streams one input (quantize, dequantize's blocks).
//! - `read_4_streams`: the same sum over four quarters of the slice at once. The hardware
//!   prefetcher keeps more lines in flight for several streams, so this is the higher ceiling
//!   that kernels reading several rows at a time (a GEMV over 4 weight rows) can approach.
//! - `write`: fill it with a value that changes every pass, which compiles to ordinary vector
//!   stores as a kernel's output loop does; the ceiling for dequantize.
//! - `memset`: fill it with zeros, which becomes a `memset` call whose large-size path writes
//!   lines without reading them first (about three times `write` here), for comparison with
//!   NOTES.md.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use lathe_peers::{L3_BYTES, byte_label};

/// Eight times the L3: whatever the cache holds at the start is a negligible part of one pass.
const BYTES: usize = 8 * L3_BYTES;

fn sum_u64(values: &[u64]) -> u64 {
    let mut sums = [0u64; 4];
    let mut chunks = values.chunks_exact(4);
    for chunk in &mut chunks {
        for (sum, &value) in sums.iter_mut().zip(chunk) {
            *sum = sum.wrapping_add(value);
        }
    }
    let tail = chunks.remainder().iter().fold(0u64, |sum, &value| sum.wrapping_add(value));
    sums.iter().fold(tail, |sum, &value| sum.wrapping_add(value))
}

fn sum_u64_4_streams(values: &[u64]) -> u64 {
    let quarter = values.len() / 4;
    let (first, rest) = values.split_at(quarter);
    let (second, rest) = rest.split_at(quarter);
    let (third, rest) = rest.split_at(quarter);
    let (fourth, tail) = rest.split_at(quarter);
    let mut sums = [0u64; 4];
    for (((&a, &b), &c), &d) in first.iter().zip(second).zip(third).zip(fourth) {
        sums[0] = sums[0].wrapping_add(a);
        sums[1] = sums[1].wrapping_add(b);
        sums[2] = sums[2].wrapping_add(c);
        sums[3] = sums[3].wrapping_add(d);
    }
    let tail = tail.iter().fold(0u64, |sum, &value| sum.wrapping_add(value));
    sums.iter().fold(tail, |sum, &value| sum.wrapping_add(value))
}

fn bandwidth(criterion: &mut Criterion) {
    let len = BYTES / 8;
    // Non-zero so the pages are really allocated and written before timing starts (a zeroed
    // allocation could be mapped lazily to the shared zero page and read from nowhere).
    let mut values: Vec<u64> = (0..len as u64).collect();
    let expected = (len as u64) * (len as u64 - 1) / 2;
    assert_eq!(sum_u64(&values), expected, "the read kernel adds wrongly");
    assert_eq!(sum_u64_4_streams(&values), expected, "the 4-stream read kernel adds wrongly");

    let mut group = criterion.benchmark_group("bandwidth");
    group.throughput(Throughput::Bytes(BYTES as u64)).sample_size(20).sampling_mode(SamplingMode::Flat);
    let label = byte_label(BYTES);
    group.bench_function(BenchmarkId::new("read", &label), |bencher| bencher.iter(|| sum_u64(black_box(&values))));
    group.bench_function(BenchmarkId::new("read_4_streams", &label), |bencher| {
        bencher.iter(|| sum_u64_4_streams(black_box(&values)))
    });
    let mut fill = 0u64;
    group.bench_function(BenchmarkId::new("write", &label), |bencher| {
        bencher.iter(|| {
            fill = fill.wrapping_add(1);
            black_box(&mut values).fill(black_box(fill));
        })
    });
    group.bench_function(BenchmarkId::new("memset", &label), |bencher| bencher.iter(|| black_box(&mut values).fill(0)));
    group.finish();
}

criterion_group!(benches, bandwidth);
criterion_main!(benches);
