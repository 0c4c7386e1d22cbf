//! Calibration for lathe: streaming statistics of a linear layer's input (Wanda's norms, the
//! Hessian `X^T X`, activation maxima, static activation scales), the Optimal Brain Surgeon
//! column sweep, and the methods built on them: GPTQ onto lathe-quant's grids, SparseGPT
//! (unstructured and N:M), SmoothQuant scales and the glue to lathe-prune's Wanda. Everything
//! works on row-major slices with explicit shapes: weights `[out, in]`, activations
//! `[tokens, in]`.
//!
//! ```
//! use lathe_calib::{LayerStats, Pattern, SweepOptions, gptq, sparsegpt};
//!
//! let (rows, cols, tokens) = (8, 64, 256);
//! let weights: Vec<f32> = (0..rows * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 100.0).collect();
//! let x: Vec<f32> = (0..tokens * cols).map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0).collect();
//!
//! let mut stats = LayerStats::new(cols)?;
//! stats.update(&x[..128 * cols], 128)?; // batches stream in
//! stats.update(&x[128 * cols..], 128)?;
//! let hessian = stats.hessian().expect("built with a hessian");
//!
//! let quantized = gptq(&weights, rows, cols, hessian, "int4-g32".parse()?, &SweepOptions::default())?;
//! assert_eq!(quantized.quantized.dequantize(), quantized.weights); // exactly on the grid
//!
//! let pruned = sparsegpt(&weights, rows, cols, hessian, Pattern::NM { n_kept: 2, m: 4 }, &SweepOptions::default())?;
//! assert_eq!(pruned.mask.n_kept(), rows * cols / 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod error;
mod gptq;
mod grid;
mod obs;
mod observer;
mod smooth;
mod sparsegpt;
mod stats;
#[cfg(test)]
mod testutil;
mod wanda;

pub use error::{Error, Result};
pub use gptq::{Gptq, Quantized, gptq, round_to_nearest};
pub use obs::{ColumnRule, MAX_ATTEMPTS, Sweep, SweepOptions, SweepReport, SweepState, obs_sweep};
pub use observer::{HISTOGRAM_BINS, HistogramObserver, MinMaxObserver, symmetric_scale};
pub use smooth::{column_abs_max, smooth_activations, smooth_scales, smooth_weights};
pub use sparsegpt::{Pattern, SparseGpt, sparsegpt};
pub use stats::LayerStats;
pub use wanda::{wanda_n_m, wanda_unstructured};
