//! Inputs shared by lathe's peer benches: deterministic pseudo-random data, the memory-hierarchy
//! sizes the memory-bound kernels are measured at, and the reference arithmetic the benches check
//! every implementation against once before timing it.
//!
//! The benches themselves (`benches/dense_gemm.rs`, `benches/quant_peers.rs`,
//! `benches/bandwidth.rs`) put lathe's kernels beside candle-core's and beside the dense GEMM
//! crates on one thread; `cargo xtask bench` runs them and prints the tables.
//!
//! ```
//! let values = lathe_peers::random_f32(64, 7);
//! assert!(values.iter().all(|value| (-1.0..1.0).contains(value)));
//! assert_eq!(values, lathe_peers::random_f32(64, 7));
//! assert_eq!(lathe_peers::byte_label(256 << 10), "256KiB");
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

/// Sizes, in bytes of f32 input, at which memory-bound kernels are measured: within L1 (4 KiB),
/// L2 (256 KiB), L3 (4 MiB) and DRAM (64 MiB, twice this machine's 32 MiB L3).
pub const F32_INPUT_BYTES: [usize; 4] = [4 << 10, 256 << 10, 4 << 20, 64 << 20];

/// This machine's last-level cache (one 32 MiB L3, see NOTES.md). Cold benches cycle through
/// several times this much data so that every pass streams from DRAM.
pub const L3_BYTES: usize = 32 << 20;

/// `len` values uniformly spread over `[-1, 1)`, the same for the same `seed` on every run and
/// machine (splitmix64), so that benches see identical inputs from run to run.
pub fn random_f32(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            // The top 24 bits are exactly representable in an f32 mantissa.
            let unit = (z >> 40) as f32 / (1u64 << 24) as f32;
            2.0 * unit - 1.0
        })
        .collect()
}

/// A byte count as benchmark parameters spell it: `4KiB`, `256KiB`, `64MiB`, or plain bytes when
/// it is not a whole number of KiB.
pub fn byte_label(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{}MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{}KiB", bytes >> 10)
    } else {
        format!("{bytes}B")
    }
}

/// The dot product of two equally long rows, accumulated in f64: the reference the f32 kernels
/// are checked against.
///
/// # Panics
/// If the lengths differ.
pub fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "dot of rows of different lengths");
    a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum()
}

/// `||actual - expected|| / ||expected||` in f64, the error measure for kernels whose rounding
/// differs by design (GEMV with quantized activations, GEMM with different summation orders).
///
/// # Panics
/// If the lengths differ.
pub fn relative_error(actual: &[f32], expected: &[f64]) -> f64 {
    assert_eq!(actual.len(), expected.len(), "compared vectors of different lengths");
    let mut error = 0.0;
    let mut norm = 0.0;
    for (&a, &e) in actual.iter().zip(expected) {
        error += (f64::from(a) - e).powi(2);
        norm += e * e;
    }
    if norm == 0.0 { error.sqrt() } else { (error / norm).sqrt() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_values_are_reproducible_spread_and_seed_dependent() {
        let values = random_f32(100_000, 1);
        assert_eq!(values, random_f32(100_000, 1));
        assert_ne!(values[..16], random_f32(16, 2)[..]);
        assert!(values.iter().all(|value| (-1.0..1.0).contains(value)));
        let mean = values.iter().map(|&value| f64::from(value)).sum::<f64>() / values.len() as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        let below_minus_half = values.iter().filter(|&&value| value < -0.5).count() as f64 / values.len() as f64;
        assert!((below_minus_half - 0.25).abs() < 0.01, "fraction below -0.5: {below_minus_half}");
    }

    #[test]
    fn byte_labels_use_the_largest_whole_unit() {
        assert_eq!(byte_label(4 << 10), "4KiB");
        assert_eq!(byte_label(64 << 20), "64MiB");
        assert_eq!(byte_label(1536), "1536B");
        assert_eq!(byte_label((1 << 20) + (4 << 10)), "1028KiB");
    }

    #[test]
    fn reference_arithmetic() {
        assert_eq!(dot_f64(&[1.0, 2.0, 3.0], &[4.0, -5.0, 6.0]), 12.0);
        assert_eq!(relative_error(&[3.0, 4.0], &[3.0, 4.0]), 0.0);
        assert!((relative_error(&[3.0, 4.5], &[3.0, 4.0]) - 0.1).abs() < 1e-12);
    }
}
