//! Dense f32 GEMM candidates for lathe, and lathe's own kernel beside them, single-threaded: `Y[tokens, out] = X[tokens, in] · W^T`
//! with `W` row-major `[out, in]` (PyTorch's Linear layout, so `W^T` is a column-major view and no
//! copy is made), on BERT-base-like and MiniLM-like shapes and a 4096x4096 layer whose tokens = 1
//! row is the GEMV of decoding.
//!
//! One group, `dense_gemm`; function = crate, parameter = `{tokens}x{in}x{out}`; throughput in
//! FLOPs (`2 * tokens * in * out`), so criterion prints FLOP/s. Every crate's answer is checked
//! against the others and against an f64 dot product once per shape before timing.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use lathe_peers::{dot_f64, random_f32};

/// `(in, out)` of the weight matrices: MiniLM's attention projections (384x384), FFN up and down
/// (384x1536, 1536x384), and a 7B-class square layer.
const SHAPES: [(usize, usize); 4] = [(384, 384), (384, 1536), (1536, 384), (4096, 4096)];
/// Rows of X: one token (decoding, a GEMV), a short sentence, a padded batch.
const TOKENS: [usize; 3] = [1, 32, 128];

/// One multiplication's dimensions.
#[derive(Debug, Clone, Copy)]
struct Shape {
    tokens: usize,
    in_features: usize,
    out_features: usize,
}

impl Shape {
    fn flops(self) -> u64 {
        2 * (self.tokens * self.in_features * self.out_features) as u64
    }

    fn check(self, x: &[f32], w: &[f32], y: &[f32]) {
        assert_eq!(x.len(), self.tokens * self.in_features, "x is not tokens x in");
        assert_eq!(w.len(), self.out_features * self.in_features, "w is not out x in");
        assert_eq!(y.len(), self.tokens * self.out_features, "y is not tokens x out");
    }
}

type Gemm = fn(Shape, &[f32], &[f32], &mut [f32]);

/// The reference first (`check_candidates_agree` compares the others with it), lathe's own last.
const CANDIDATES: [(&str, Gemm); 4] =
    [("matrixmultiply", matrixmultiply), ("gemm", gemm), ("faer", faer), ("lathe", lathe)];

/// lathe's dense kernel as lathe-model calls it for a bias-free linear.
fn lathe(shape: Shape, x: &[f32], w: &[f32], y: &mut [f32]) {
    shape.check(x, w, y);
    let Shape { tokens, in_features, out_features } = shape;
    lathe_quant::dense::linear(x, tokens, w, out_features, in_features, None, y);
}

fn matrixmultiply(shape: Shape, x: &[f32], w: &[f32], y: &mut [f32]) {
    shape.check(x, w, y);
    let Shape { tokens, in_features, out_features } = shape;
    // SAFETY: `check` proved the three lengths; with these strides every index the kernel forms
    // (x: row * in + col, w^T: col * in + row, y: row * out + col) stays inside its slice, and `y`
    // is the only matrix written and borrowed mutably.
    unsafe {
        matrixmultiply::sgemm(
            tokens,
            in_features,
            out_features,
            1.0,
            x.as_ptr(),
            in_features as isize,
            1,
            w.as_ptr(),
            1,
            in_features as isize,
            0.0,
            y.as_mut_ptr(),
            out_features as isize,
            1,
        );
    }
}

fn gemm(shape: Shape, x: &[f32], w: &[f32], y: &mut [f32]) {
    shape.check(x, w, y);
    let Shape { tokens, in_features, out_features } = shape;
    // SAFETY: as for `matrixmultiply`: the lengths are checked and the strides (column stride
    // first in this crate) keep every access in bounds; `read_dst = false` means `y` is only
    // written, so its previous contents (and `alpha`) are ignored.
    unsafe {
        gemm::gemm(
            tokens,
            out_features,
            in_features,
            y.as_mut_ptr(),
            1,
            out_features as isize,
            false,
            x.as_ptr(),
            1,
            in_features as isize,
            w.as_ptr(),
            in_features as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

fn faer(shape: Shape, x: &[f32], w: &[f32], y: &mut [f32]) {
    shape.check(x, w, y);
    let Shape { tokens, in_features, out_features } = shape;
    let x = faer::MatRef::from_row_major_slice(x, tokens, in_features);
    let w_t = faer::MatRef::from_row_major_slice(w, out_features, in_features).transpose();
    let y = faer::MatMut::from_row_major_slice_mut(y, tokens, out_features);
    faer::linalg::matmul::matmul(y, faer::Accum::Replace, x, w_t, 1.0, faer::Par::Seq);
}

/// Runs every candidate once and checks that they agree with each other (summation order differs,
/// so within a tolerance that grows with `in`) and, at three entries, with an f64 dot product of
/// the right row of X and row of W, which catches a transposed operand even on square shapes.
fn check_candidates_agree(shape: Shape, x: &[f32], w: &[f32]) {
    let Shape { tokens, in_features, out_features } = shape;
    let tolerance = 1e-5 * in_features as f32;
    let mut reference = vec![f32::NAN; tokens * out_features];
    matrixmultiply(shape, x, w, &mut reference);
    for (row, col) in [(0, 0), (tokens / 2, out_features / 3), (tokens - 1, out_features - 1)] {
        let x_row = &x[row * in_features..][..in_features];
        let w_row = &w[col * in_features..][..in_features];
        let expected = dot_f64(x_row, w_row);
        let found = reference[row * out_features + col];
        assert!(
            (f64::from(found) - expected).abs() <= f64::from(tolerance),
            "{shape:?}: y[{row}, {col}] = {found}, f64 reference {expected}"
        );
    }
    for (name, candidate) in &CANDIDATES[1..] {
        let mut y = vec![f32::NAN; tokens * out_features];
        candidate(shape, x, w, &mut y);
        let worst = reference.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst <= tolerance, "{shape:?}: {name} differs from matrixmultiply by up to {worst}");
    }
}

fn dense_gemm(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("dense_gemm");
    let max_tokens = TOKENS.iter().copied().max().unwrap_or(1);
    for (shape_idx, &(in_features, out_features)) in SHAPES.iter().enumerate() {
        let w = random_f32(out_features * in_features, 2 * shape_idx as u64);
        let x_all = random_f32(max_tokens * in_features, 2 * shape_idx as u64 + 1);
        for tokens in TOKENS {
            let shape = Shape { tokens, in_features, out_features };
            let x = &x_all[..tokens * in_features];
            check_candidates_agree(shape, x, &w);
            let mut y = vec![0.0; tokens * out_features];
            // Above a GFLOP an iteration takes tens of milliseconds: criterion's default linear
            // sampling (1 + 2 + ... + 100 iterations) would take minutes per row.
            if shape.flops() >= 1_000_000_000 {
                group.sample_size(20).sampling_mode(SamplingMode::Flat);
            } else {
                group.sample_size(100).sampling_mode(SamplingMode::Auto);
            }
            group.throughput(Throughput::Elements(shape.flops()));
            let parameter = format!("{tokens}x{in_features}x{out_features}");
            for (name, candidate) in CANDIDATES {
                group.bench_function(BenchmarkId::new(name, &parameter), |bencher| {
                    bencher.iter(|| candidate(shape, black_box(x), black_box(&w), black_box(&mut y)))
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, dense_gemm);
criterion_main!(benches);
