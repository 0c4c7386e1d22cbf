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
/// f32 weights above this many bytes stream from DRAM in a dense product of a few tokens (the L3
/// is 32 MiB, shared).
const GEMV_DRAM_BYTES: usize = 16 << 20;

/// Whether the sparse kernels of `format` beat the dense GEMM lathe-model runs (its packed
/// weights, `lathe_quant::dense::PackedWeights`) on a `[rows, cols]` layer holding `density`
/// nonzeros per weight, for `n_tokens` tokens per call, on one thread of this machine (Zen 3,
/// AVX2+FMA). Later issues call it when loading a layer to pick its kernel, and lathe-model again
/// on every call of a sparse linear with the call's tokens.
///
/// The rule is a break-even density per format and batch size, from dense time over sparse time
/// measured side by side (best of 5 interleaved rounds, one thread on the shared two-vCPU Zen 3,
/// 2026-11-29, after the 32-token panels, the live-token partial panel and the 2:4 lanes), as the
/// range over MiniLM's three shapes (384x384, 1536x384, 384x1536, out x in), then the 4096x4096
/// layer:
///
/// | tokens | 50 % CSR | 70 % CSR | 90 % CSR | 95 % CSR | 2:4 `NmMatrix` | break-even density |
/// |---|---|---|---|---|---|---|
/// | 1 | 0.32 - 0.41, 1.07 | 0.51 - 0.66, 1.62 | 1.51 - 1.72, 3.32 | 2.53 - 2.83, 8.34 | 1.50 - 2.25, 2.67 | CSR 0.15 (0.45 above 16 MiB of f32 weights), N:M 0.5 |
/// | 2 | 0.37 - 0.41, 0.35 | 0.62 - 0.68, 0.54 | 1.61 - 1.90, 1.30 | 2.66 - 3.61, 2.29 | 2.75 - 2.93, 1.02 | CSR 0.15, N:M 0.5 (not above 16 MiB) |
/// | 4 | 0.43 - 0.47, 0.38 | 0.56 - 0.65, 0.48 | 1.17 - 1.56, 0.91 | 1.48 - 2.16, 1.17 | 1.75 - 1.78, 0.72 | CSR 0.1, N:M 0.5 (not above 16 MiB) |
/// | 8 | 0.83 - 0.92, 0.86 | 1.08 - 1.25, 1.10 | 2.39 - 3.19, 2.08 | 3.11 - 4.53, 2.72 | 1.68 - 1.72, 1.25 | CSR 0.3, N:M 0.5 |
/// | 16 | 0.91 - 0.97, 0.98 | 1.50 - 1.69, 1.50 | 3.44 - 4.21, 2.83 | 4.77 - 6.37, 3.82 | 1.26 - 1.30, 1.15 | CSR 0.45, N:M 0.5 |
/// | 24 | 0.82 - 0.89, 0.94 | 1.42 - 1.60, 1.59 | 3.73 - 4.22, 3.40 | 5.56 - 6.57, 4.79 | 1.10 - 1.14, 1.10 | CSR 0.4, N:M 0.5 |
/// | 32 | 1.10 - 1.11, 1.16 | 1.93 - 2.05, 2.02 | 5.12 - 5.37, 4.27 | 7.63 - 8.41, 5.88 | 1.25 - 1.29, 1.22 | CSR 0.5, N:M 0.5 |
/// | 64 | 1.00 - 1.02, 1.09 | 1.83 - 1.92, 1.83 | 4.55 - 4.90, 4.07 | 7.01 - 7.63, 5.91 | 1.17 - 1.19, 1.20 | CSR 0.5, N:M 0.5 |
/// | 128 | 1.04 - 1.06, 1.14 | 1.83 - 1.95, 1.97 | 4.46 - 4.94, 4.55 | 6.83 - 7.64, 6.60 | 1.19 - 1.21, 1.29 | CSR 0.5, N:M 0.5 |
/// | 256 | 1.02 - 1.06, 1.15 | 1.79 - 1.89, 1.98 | 4.15 - 4.79, 4.53 | 6.39 - 7.08, 6.75 | 1.15 - 1.19, 1.30 | CSR 0.45 (beyond), N:M 0.5 |
///
/// (The "70 %" column holds 30 % density, and so on.) One or two tokens run SpMV per token; 3 to
/// 24 tokens a partial panel, whose cost the packed dense GEMM, efficient from 4 tokens, soon
/// outruns at moderate sparsity; from 32 tokens the full panels. 2:4 and 1:4 matrices run up to
/// 64 tokens straight from the activations through their lanes and win at every batch size
/// measured, except on layers too large for the caches at 2 to 4 tokens, where reading the
/// weights once per tile of tokens does not pay. Other N:M patterns run the panel kernels like
/// CSR and take CSR's thresholds at their own density. [`BitmaskMatrix`](crate::BitmaskMatrix)
/// decodes its rows on every call (about 0.6x of CSR's speed with many tokens and 0.1 to 0.2x
/// with one), so it breaks even at 0.6 times CSR's density with two or more tokens and never
/// for one: import with it, then convert to CSR to run. Layers smaller than 384x384 were not
/// measured and stay dense.
pub fn prefer_sparse(format: Format, rows: usize, cols: usize, density: f64, n_tokens: usize) -> bool {
    let weights = rows.saturating_mul(cols);
    if n_tokens == 0 || weights < MIN_WEIGHTS || !(0.0..=1.0).contains(&density) {
        return false;
    }
    let from_dram = weights.saturating_mul(size_of::<f32>()) > GEMV_DRAM_BYTES;
    let csr = match n_tokens {
        1 if from_dram => 0.45,
        1 | 2 => 0.15,
        3 | 4 => 0.1,
        5..=8 => 0.3,
        9..=16 => 0.45,
        17..=24 => 0.4,
        25..=128 => 0.5,
        _ => 0.45,
    };
    let break_even = match format {
        Format::Csr => csr,
        Format::Bitmask if n_tokens == 1 => 0.0,
        Format::Bitmask => 0.6 * csr,
        Format::Nm { n, m: 4 } if n <= 2 => {
            if from_dram && (2..=4).contains(&n_tokens) {
                0.0
            } else {
                0.5
            }
        }
        Format::Nm { .. } => csr,
    };
    density <= break_even
}
