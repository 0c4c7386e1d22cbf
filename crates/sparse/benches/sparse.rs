//! lathe-sparse's kernels side by side on one thread: the scalar reference, each instruction set
//! this CPU runs and the dispatched entry, for CSR at 90 % sparsity, 2:4 and the bitmask format,
//! against the dense GEMM (`lathe_quant::dense::linear`) of the same layer. Every path's answer is
//! checked against the dense product in setup.
//!
//! Groups `spmv` (1 token) and `spmm_t{tokens}`; functions `dense`, `{isa}_{format}` (`scalar`,
//! `avx2`) and `{format}` (dispatched), formats `csr_90`, `nm_2_4`, `bitmask_90`; parameter
//! `{in}x{out}`. Throughput is in dense FLOPs (`2 * tokens * in * out`) for every function, so the
//! rates are effective GFLOP/s and their ratios are speedups over dense.
//!
//! Run one thread and briefly on shared machines:
//! `RAYON_NUM_THREADS=1 cargo bench -p lathe-sparse --bench sparse -- --warm-up-time 1 --measurement-time 2`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lathe_sparse::{BitmaskMatrix, CsrMatrix, Isa, Kernels, NmMatrix, kernels};

/// `(out, in)`: MiniLM's FFN down projection, whose 1536 inputs span four column blocks.
const SHAPE: (usize, usize) = (384, 1536);
/// Token counts: SpMV, a short sentence, a padded batch.
const TOKENS: [usize; 3] = [1, 32, 128];

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

/// A layer in every format the benches run, with the dense weights each was pruned to.
enum Layer {
    Csr(CsrMatrix),
    Nm(NmMatrix),
    Bitmask(BitmaskMatrix),
}

impl Layer {
    fn spmm_with(&self, kernels: &Kernels, x: &[f32], n_tokens: usize, y: &mut [f32]) {
        match self {
            Layer::Csr(matrix) => matrix.spmm_with(kernels, x, n_tokens, None, y),
            Layer::Nm(matrix) => matrix.spmm_with(kernels, x, n_tokens, None, y),
            Layer::Bitmask(matrix) => matrix.spmm_with(kernels, x, n_tokens, None, y),
        }
    }

    fn spmm(&self, x: &[f32], n_tokens: usize, y: &mut [f32]) {
        match self {
            Layer::Csr(matrix) => matrix.spmm(x, n_tokens, y),
            Layer::Nm(matrix) => matrix.spmm(x, n_tokens, y),
            Layer::Bitmask(matrix) => matrix.spmm(x, n_tokens, y),
        }
    }
}

/// 90 % unstructured (a random mask) and 2:4 by magnitude.
fn pruned(weights: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mask = values(weights.len(), 99);
    let unstructured = weights.iter().zip(&mask).map(|(&w, &m)| if m < -0.8 { w } else { 0.0 }).collect();
    let mut two_four = weights.to_vec();
    for group in two_four.chunks_exact_mut(4) {
        let mut order = [0, 1, 2, 3];
        order.sort_by(|&a, &b| group[b].abs().total_cmp(&group[a].abs()));
        group[order[2]] = 0.0;
        group[order[3]] = 0.0;
    }
    (unstructured, two_four)
}

fn sparse(c: &mut Criterion) {
    let (rows, cols) = SHAPE;
    let weights = values(rows * cols, 1);
    let (unstructured, two_four) = pruned(&weights);
    let layers = [
        ("csr_90", &unstructured, Layer::Csr(CsrMatrix::from_dense(&unstructured, rows, cols).unwrap())),
        ("nm_2_4", &two_four, Layer::Nm(NmMatrix::from_dense(&two_four, rows, cols, 2, 4).unwrap())),
        ("bitmask_90", &unstructured, Layer::Bitmask(BitmaskMatrix::from_dense(&unstructured, rows, cols).unwrap())),
    ];
    let tables: Vec<&Kernels> = Isa::supported().into_iter().filter_map(kernels).collect();
    for tokens in TOKENS {
        let x = values(tokens * cols, 2);
        let mut y = vec![0.0; tokens * rows];
        let group_name = if tokens == 1 { "spmv".to_string() } else { format!("spmm_t{tokens}") };
        let parameter = format!("{cols}x{rows}");

        // The answers, once: every path against the dense product of its weights.
        for (name, dense_weights, layer) in &layers {
            let mut expected = vec![0.0; tokens * rows];
            lathe_quant::dense::linear(&x, tokens, dense_weights, rows, cols, None, &mut expected);
            for table in &tables {
                layer.spmm_with(table, &x, tokens, &mut y);
                let worst = y.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                assert!(worst <= 1e-5 * cols as f32, "{name} on {}: off by {worst}", table.isa().name());
            }
        }

        let mut group = c.benchmark_group(&group_name);
        group.throughput(Throughput::Elements(2 * (tokens * rows * cols) as u64));
        group.bench_function(BenchmarkId::new("dense", &parameter), |b| {
            b.iter(|| lathe_quant::dense::linear(black_box(&x), tokens, black_box(&weights), rows, cols, None, &mut y))
        });
        for (name, _, layer) in &layers {
            for table in &tables {
                // The scalar reference is slow at 128 tokens; 1 and 32 show it well enough.
                if table.isa() == Isa::Scalar && tokens > 32 {
                    continue;
                }
                let function = format!("{}_{name}", table.isa().name());
                group.bench_function(BenchmarkId::new(function, &parameter), |b| {
                    b.iter(|| layer.spmm_with(table, black_box(&x), tokens, &mut y))
                });
            }
            group.bench_function(BenchmarkId::new(*name, &parameter), |b| {
                b.iter(|| layer.spmm(black_box(&x), tokens, &mut y))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, sparse);
criterion_main!(benches);
