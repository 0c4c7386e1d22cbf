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
/// The rule is a break-even density per format and batch size, read off the medians of the
/// `sparse_peers` bench (`benches/peers`) and of interleaved re-runs of its shapes at 2 to 16
/// tokens: 384x384, 1536x384, 384x1536 and 4096x4096 (out x in). Speedups are dense time over
/// sparse time, as ranges over the shapes and over runs on a loaded, shared two-vCPU machine:
///
/// | tokens | 90 % CSR | 70 % CSR | 50 % CSR | 2:4 `NmMatrix` | break-even density |
/// |---|---|---|---|---|---|
/// | 1, layer <= 16 MiB | 1.3 - 2.1x | 0.5 - 0.9x | 0.3 - 0.6x | 0.2 - 0.3x | CSR 0.15, N:M 0.1 |
/// | 1, 64 MiB layer | 2.4 - 3.4x | 1.6 - 1.9x | 1.1 - 1.4x | 0.6 - 0.8x | CSR 0.5, N:M 0.1 |
/// | 2 - 16 | 3.7 - 8.1x | 1.6 - 3.2x | 1.0 - 2.0x | 0.9 - 1.8x | CSR 0.5, N:M 0.5 from 8 tokens |
/// | 17 - 64 (32) | 3.9 - 8.2x | 1.5 - 3.1x | 1.3 - 2.5x | 0.75 - 1.5x | CSR 0.55, N:M 0.35 |
/// | more (128) | 3.0 - 5.8x | 1.3 - 2.5x | 0.9 - 1.5x | 0.6 - 1.3x | CSR 0.45, N:M 0.35 |
///
/// The dense GEMM is least efficient at small batches (7 to 38 GFLOP/s from 2 to 16 tokens,
/// against 60 to 80 at 128), which is why the break-even density rises there; the sparse kernels
/// run at 20 to 45 useful GFLOP/s. [`BitmaskMatrix`](crate::BitmaskMatrix) decodes its rows on
/// every call (0.5 to 0.6x of CSR's speed at 90 % and many tokens, 0.1 to 0.2x for one token),
/// so it breaks even at 0.6 times CSR's density with two or more tokens and never for one: import
/// with it, then convert to CSR to run. N:M patterns other than those measured take 2:4's
/// thresholds at their own density.
pub fn prefer_sparse(format: Format, rows: usize, cols: usize, density: f64, n_tokens: usize) -> bool {
    let weights = rows.saturating_mul(cols);
    if n_tokens == 0 || weights < MIN_WEIGHTS || !(0.0..=1.0).contains(&density) {
        return false;
    }
    let gemv_from_dram = weights.saturating_mul(size_of::<f32>()) > GEMV_DRAM_BYTES;
    let csr = match n_tokens {
        1 if gemv_from_dram => 0.5,
        1 => 0.15,
        2..=16 => 0.5,
        17..=64 => 0.55,
        _ => 0.45,
    };
    let break_even = match format {
        Format::Csr => csr,
        Format::Bitmask if n_tokens == 1 => 0.0,
        Format::Bitmask => 0.6 * csr,
        Format::Nm { .. } => match n_tokens {
            1 => 0.1,
            2..=7 => 0.35,
            8..=16 => 0.5,
            _ => 0.35,
        },
    };
    density <= break_even
}
