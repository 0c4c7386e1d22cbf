//! lathe-sparse beside the dense f32 GEMM and sprs on one thread: `Y[tokens, out] = X[tokens, in]
//! W^T` with `W` `[out, in]` pruned to 50, 70, 90 and 95 % unstructured sparsity (CSR) and to
//! 2:4 (`NmMatrix`), on MiniLM's attention and FFN shapes and a 4096x4096 layer, for 1 token
//! (SpMV), 32 and 128.
//!
//! Groups and ids, which `cargo xtask bench` can read back from
//! `target/criterion/<group>/<function>/<parameter>/new/estimates.json`:
//! - group `sparse_{out}x{in}_t{tokens}`, one per shape and token count;
//! - functions `dense` (`lathe_quant::dense::linear`, the unpruned layer), `csr_{sparsity}` and
//!   `sprs_{sparsity}` for sparsity 50, 70, 90, 95, and `nm_2_4`;
//! - parameter `{tokens}x{in}x{out}`, as in `dense_gemm`;
//! - throughput in dense FLOPs (`2 * tokens * in * out`) for every function, so criterion's rates
//!   are effective GFLOP/s and their ratios are speedups over dense.
//!
//! sprs is measured the fastest way found for it: `prod::csr_mulacc_dense_rowmaj` (its vectorizable
//! row-axpy loop) with `u32` indices, fed `X^T` already transposed to row-major `[in, tokens]` and
//! writing its natural `[out, tokens]` output, both outside the timing, so it skips the layout work
//! lathe's time includes; its column-major path on views of `X` and `Y` (no copies) is 8 to 14x
//! slower at 32 and 128 tokens. One token uses `prod::mul_acc_mat_vec_csr` on the slices.
//!
//! Every implementation's answer is checked against the dense product of the same pruned weights
//! once per group, before timing. Run single-threaded and briefly on shared machines:
//! `cargo bench -p lathe-peers --bench sparse_peers -- --warm-up-time 1 --measurement-time 2`.

use std::hint::black_box;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput};
use lathe_peers::{random_f32, relative_error};
use lathe_sparse::{CsrMatrix, NmMatrix};
use ndarray::{Array2, ArrayView2};
use sprs::CsMatI;

/// `(out, in)` of the weights: attention projections, FFN up (1536x384) and down (384x1536),
/// a 7B-class square layer.
const SHAPES: [(usize, usize); 4] = [(384, 384), (1536, 384), (384, 1536), (4096, 4096)];
const TOKENS: [usize; 3] = [1, 32, 128];
/// Percent of weights pruned, unstructured.
const SPARSITIES: [u32; 4] = [50, 70, 90, 95];
/// Largest relative error (L2) accepted against the dense product of the same weights: the
/// summation orders differ, the values do not.
const TOLERANCE: f64 = 1e-5;

fn main() {
    default_to_one_thread();
    let mut criterion = Criterion::default().configure_from_args();
    for (shape_idx, &(out_features, in_features)) in SHAPES.iter().enumerate() {
        let weights = random_f32(out_features * in_features, 40 + shape_idx as u64);
        let mask = random_f32(out_features * in_features, 50 + shape_idx as u64);
        let layer = Layer::new(&weights, &mask, out_features, in_features);
        for tokens in TOKENS {
            bench_group(&mut criterion, &layer, tokens);
        }
    }
    criterion.final_summary();
}

/// lathe's figures are single-threaded (NOTES.md): unless the caller chose otherwise, rayon gets
/// one thread here as it does under `cargo xtask bench`.
fn default_to_one_thread() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // SAFETY: this is the first statement of `main` and the bench harness is off
        // (`harness = false`), so no other thread exists yet that could read the environment
        // while it changes.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", "1") };
    }
}

/// One weight matrix in every form the group measures.
struct Layer {
    out_features: usize,
    in_features: usize,
    dense: Vec<f32>,
    unstructured: Vec<Pruned>,
    two_four: (Vec<f32>, NmMatrix),
}

/// One unstructured sparsity: the pruned dense weights, lathe's CSR and sprs's.
struct Pruned {
    sparsity: u32,
    weights: Vec<f32>,
    csr: CsrMatrix,
    sprs: CsMatI<f32, u32>,
}

impl Layer {
    fn new(weights: &[f32], mask: &[f32], out_features: usize, in_features: usize) -> Layer {
        let unstructured = SPARSITIES
            .iter()
            .map(|&sparsity| {
                // Keep a weight where its mask value (uniform in [-1, 1)) falls in the kept share.
                let keep = 1.0 - f64::from(sparsity) / 100.0;
                let pruned: Vec<f32> = weights
                    .iter()
                    .zip(mask)
                    .map(|(&weight, &mask)| if f64::from(mask + 1.0) / 2.0 < keep { weight } else { 0.0 })
                    .collect();
                let csr = CsrMatrix::from_dense(&pruned, out_features, in_features).expect("finite weights");
                let sprs = sprs_csr(&pruned, out_features, in_features);
                Pruned { sparsity, weights: pruned, csr, sprs }
            })
            .collect();
        // 2:4 by magnitude: the two largest of every four consecutive weights of a row survive.
        let mut two_four = weights.to_vec();
        for group in two_four.chunks_exact_mut(4) {
            let mut order = [0, 1, 2, 3];
            order.sort_by(|&a, &b| group[b].abs().total_cmp(&group[a].abs()));
            group[order[2]] = 0.0;
            group[order[3]] = 0.0;
        }
        let nm = NmMatrix::from_dense(&two_four, out_features, in_features, 2, 4).expect("a 2:4 pattern");
        Layer { out_features, in_features, dense: weights.to_vec(), unstructured, two_four: (two_four, nm) }
    }

    fn dense_flops(&self, tokens: usize) -> u64 {
        2 * (tokens * self.in_features * self.out_features) as u64
    }
}

fn sprs_csr(weights: &[f32], rows: usize, cols: usize) -> CsMatI<f32, u32> {
    let (mut indptr, mut indices, mut data) = (vec![0u32], Vec::new(), Vec::new());
    for row in weights.chunks_exact(cols) {
        for (col, &weight) in row.iter().enumerate() {
            if weight != 0.0 {
                indices.push(col as u32);
                data.push(weight);
            }
        }
        indptr.push(u32::try_from(indices.len()).expect("fewer than 2^32 nonzeros"));
    }
    CsMatI::new((rows, cols), indptr, indices, data)
}

/// sprs's product into its natural `[out, tokens]` layout; `x_t` is `X^T`, `[in, tokens]`.
fn sprs_spmm(csr: &CsMatI<f32, u32>, x_t: &Array2<f32>, y_t: &mut Array2<f32>) {
    y_t.fill(0.0);
    sprs::prod::csr_mulacc_dense_rowmaj(csr.view(), x_t.view(), y_t.view_mut());
}

fn sprs_spmv(csr: &CsMatI<f32, u32>, x: &[f32], y: &mut [f32]) {
    y.fill(0.0);
    sprs::prod::mul_acc_mat_vec_csr(csr.view(), x, y);
}

/// `||found - expected|| / ||expected||` below [`TOLERANCE`], or a panic naming the function.
fn check(name: &str, group: &str, found: &[f32], expected: &[f32]) {
    let expected: Vec<f64> = expected.iter().map(|&value| f64::from(value)).collect();
    let error = relative_error(found, &expected);
    assert!(error <= TOLERANCE, "{group}/{name}: relative error {error} against the dense product");
}

fn bench_group(criterion: &mut Criterion, layer: &Layer, tokens: usize) {
    let (out_features, in_features) = (layer.out_features, layer.in_features);
    let name = format!("sparse_{out_features}x{in_features}_t{tokens}");
    let parameter = format!("{tokens}x{in_features}x{out_features}");
    let x = random_f32(tokens * in_features, 60 + tokens as u64);
    let x_t = ArrayView2::from_shape((tokens, in_features), &x[..])
        .expect("x is tokens x in")
        .t()
        .as_standard_layout()
        .into_owned();
    let dense_of = |weights: &[f32]| {
        let mut y = vec![0.0; tokens * out_features];
        lathe_quant::dense::linear(&x, tokens, weights, out_features, in_features, None, &mut y);
        y
    };

    // The answers, once, before any timing.
    for Pruned { sparsity, weights, csr, sprs } in &layer.unstructured {
        let expected = dense_of(weights);
        let mut y = vec![f32::NAN; tokens * out_features];
        csr.spmm(&x, tokens, &mut y);
        check(&format!("csr_{sparsity}"), &name, &y, &expected);
        let mut y_t = Array2::zeros((out_features, tokens));
        sprs_spmm(sprs, &x_t, &mut y_t);
        let y: Vec<f32> = y_t.t().iter().copied().collect();
        check(&format!("sprs_{sparsity}"), &name, &y, &expected);
        if tokens == 1 {
            let mut y = vec![f32::NAN; out_features];
            sprs_spmv(sprs, &x, &mut y);
            check(&format!("sprs_{sparsity} (spmv)"), &name, &y, &expected);
        }
    }
    let (two_four, nm) = &layer.two_four;
    let mut y = vec![f32::NAN; tokens * out_features];
    nm.spmm(&x, tokens, &mut y);
    check("nm_2_4", &name, &y, &dense_of(two_four));

    let mut group = criterion.benchmark_group(&name);
    // Above about a GFLOP a dense iteration takes tens of milliseconds: flat sampling with few
    // samples keeps the 4096x4096 groups to seconds.
    if layer.dense_flops(tokens) >= 1_000_000_000 {
        group.sample_size(10).sampling_mode(SamplingMode::Flat);
    }
    group.throughput(Throughput::Elements(layer.dense_flops(tokens)));
    let mut y = vec![0.0; tokens * out_features];
    group.bench_function(BenchmarkId::new("dense", &parameter), |bencher| {
        bencher.iter(|| {
            lathe_quant::dense::linear(
                black_box(&x),
                tokens,
                black_box(&layer.dense),
                out_features,
                in_features,
                None,
                &mut y,
            )
        })
    });
    for Pruned { sparsity, csr, sprs, .. } in &layer.unstructured {
        group.bench_function(BenchmarkId::new(format!("csr_{sparsity}"), &parameter), |bencher| {
            bencher.iter(|| csr.spmm(black_box(&x), tokens, &mut y))
        });
        bench_sprs(&mut group, &format!("sprs_{sparsity}"), &parameter, sprs, &x, &x_t, tokens, out_features);
    }
    group.bench_function(BenchmarkId::new("nm_2_4", &parameter), |bencher| {
        bencher.iter(|| nm.spmm(black_box(&x), tokens, &mut y))
    });
    group.finish();
}

#[allow(clippy::too_many_arguments)]
fn bench_sprs(
    group: &mut BenchmarkGroup<'_, WallTime>,
    function: &str,
    parameter: &str,
    csr: &CsMatI<f32, u32>,
    x: &[f32],
    x_t: &Array2<f32>,
    tokens: usize,
    out_features: usize,
) {
    if tokens == 1 {
        let mut y = vec![0.0; out_features];
        group.bench_function(BenchmarkId::new(function, parameter), |bencher| {
            bencher.iter(|| sprs_spmv(csr, black_box(x), &mut y))
        });
    } else {
        let mut y_t = Array2::zeros((out_features, tokens));
        group.bench_function(BenchmarkId::new(function, parameter), |bencher| {
            bencher.iter(|| sprs_spmm(csr, black_box(x_t), &mut y_t))
        });
    }
}
