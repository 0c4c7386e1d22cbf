//! When a sparse kernel beats the dense GEMM: break-even densities measured by the benches.

/// A sparse storage format, for [`prefer_sparse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// [`CsrMatrix`](crate::CsrMatrix).
    Csr,
    /// [`NmMatrix`](crate::NmMatrix) with `n` of every `m` kept.
    Nm {
        /// Nonzeros per group at most.
        n: usize,
        /// Columns per group.
        m: usize,
    },
    /// [`BitmaskMatrix`](crate::BitmaskMatrix).
    Bitmask,
}

/// Layers smaller than the smallest measured one (384 x 384) stay dense: their products take
/// microseconds either way, and the rule was not measured there.
const MIN_WEIGHTS: usize = 384 * 384;
/// f32 weights above this many bytes stream from DRAM in a dense GEMV (the L3 is 32 MiB, shared).
const GEMV_DRAM_BYTES: usize = 16 << 20;

/// Whether the sparse kernels of `format` beat `lathe_quant::dense::linear` on a `[rows, cols]`
/// layer holding `density` nonzeros per weight, for `n_tokens` tokens per call, on one thread of
/// this machine (Zen 3, AVX2+FMA). Later issues call it when loading a layer to pick its kernel.
///
/// The rule is a break-even density per format and batch size. The 1- and 128-token rows are
/// the minima of interleaved runs (dense and sparse calls alternating in batches of about 2 ms,
/// 100 to 500 rounds, one thread on a shared two-vCPU Zen 3, 2026-11), after the SpMM weight
/// broadcast and the streaming SpMV; the 2 to 32-token rows are the earlier `sparse_peers`
/// medians (`benches/peers`), which those two changes can only have raised. Shapes are 384x384,
/// 1536x384, 384x1536 and 4096x4096 (out x in); entries are dense time over sparse time, as the
/// range over the three MiniLM shapes, then the 4096x4096 layer:
///
/// | tokens | 50 % CSR | 70 % CSR | 90 % CSR | 95 % CSR | 2:4 `NmMatrix` | break-even density |
/// |---|---|---|---|---|---|---|
/// | 1 | 0.42 - 0.43, 1.17 | 0.53 - 0.78, 2.24 | 1.61 - 1.80, 5.38 | 2.19 - 2.83, 7.31 | 0.22 - 0.38, 0.64 | CSR 0.1 (0.45 above 16 MiB of f32 weights), N:M 0.1 |
/// | 2 - 16 | 0.99 - 2.0 | 1.6 - 3.2 | 3.7 - 8.1 | | 0.86 - 1.81 | CSR 0.5, N:M 0.35 (0.5 from 8 tokens) |
/// | 32 | 1.34 - 1.51, 1.85 | 2.02 - 2.43, 2.70 | 5.09 - 5.82, 3.78 | 8.6 - 13.9, 6.83 | 1.16 - 1.84, 1.64 | CSR 0.55 to 64 tokens, N:M 0.5 |
/// | 128 | 1.14 - 1.53, 3.15 | 1.77 - 2.01, 3.95 | 4.27 - 5.87, 7.83 | 7.58 - 8.41, 5.95 | 1.14 - 1.45, 2.86 | CSR 0.5, N:M 0.5 |
///
/// Between the two measurements `lathe_quant::dense::linear` changed: it now packs the weights on
/// every call from 8 tokens on, which costs it most on the 4096x4096 layer, so that column's
/// 128-token ratios are about twice those against the previous dense path (2.18 at 90 %).
///
/// The dense GEMM then got 1.15 to 1.5 times faster at 32 to 128 tokens (weights packed a chunk
/// at a time into reused buffers). Re-measured against it on the MiniLM shapes (interleaved
/// minima of 30 rounds, one thread, 2026-11-28; 50 / 70 / 90 % CSR, 2:4):
///
/// | tokens | 50 % CSR | 70 % CSR | 90 % CSR | 2:4 | break-even density |
/// |---|---|---|---|---|---|
/// | 32 | 1.23 - 1.50 | 1.83 - 2.38 | 4.25 - 6.10 | 1.06 - 1.41 | unchanged |
/// | 128 | 0.94 - 1.18 | 1.40 - 2.07 | 3.36 - 4.77 | 0.86 - 0.99 | CSR 0.45, N:M 0.45 |
/// | 256 | 0.92 - 1.05 | 1.36 - 2.04 | 2.78 - 3.46 | 0.85 - 1.02 | CSR 0.4, N:M 0.45 |
///
/// So above 64 tokens 2:4 and half-pruned layers run faster dense (a model's batches of sorted
/// sentences hold 100 to 400 tokens), which is why lathe-model's sparse linears ask this rule
/// again on every call, with the call's own token count.
///
/// The dense GEMM is least efficient at small batches (7 to 38 GFLOP/s from 2 to 16 tokens,
/// against 60 to 80 at 128), which is why the break-even density rises there; the sparse kernels
/// run at 20 to 45 useful GFLOP/s. One token is a different game: the dense GEMV of a
/// cache-resident layer streams weights at L2 speed while SpMV pays a dependent load per
/// nonzero, so only very sparse layers, or layers too large for the caches, gain.
/// [`BitmaskMatrix`](crate::BitmaskMatrix) decodes its rows on every call (about 0.6x of CSR's
/// speed with many tokens and 0.1 to 0.2x with one), so it breaks even at 0.6 times CSR's density
/// with two or more tokens and never for one: import with it, then convert to CSR to run. N:M
/// patterns other than 2:4 take 2:4's thresholds at their own density. Layers smaller than
/// 384x384 were not measured and stay dense.
pub fn prefer_sparse(format: Format, rows: usize, cols: usize, density: f64, n_tokens: usize) -> bool {
    let weights = rows.saturating_mul(cols);
    if n_tokens == 0 || weights < MIN_WEIGHTS || !(0.0..=1.0).contains(&density) {
        return false;
    }
    let gemv_from_dram = weights.saturating_mul(size_of::<f32>()) > GEMV_DRAM_BYTES;
    let csr = match n_tokens {
        1 if gemv_from_dram => 0.45,
        1 => 0.1,
        2..=16 => 0.5,
        17..=64 => 0.55,
        65..=128 => 0.45,
        _ => 0.4,
    };
    let break_even = match format {
        Format::Csr => csr,
        Format::Bitmask if n_tokens == 1 => 0.0,
        Format::Bitmask => 0.6 * csr,
        Format::Nm { .. } => match n_tokens {
            1 => 0.1,
            2..=7 => 0.35,
            8..=64 => 0.5,
            _ => 0.45,
        },
    };
    density <= break_even
}
