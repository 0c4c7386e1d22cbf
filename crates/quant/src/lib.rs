//! Quantization formats and kernels for lathe, over plain slices: GGML blocks (Q8_0, Q4_0,
//! Q4_1, Q5_0, Q5_1, Q8_1, and K-quant dequantization) byte-identical with llama.cpp, with
//! AVX2 paths chosen at run time and a portable scalar reference.
//!
//! ```
//! use lathe_quant::ggml::{self, BlockQ8_0};
//! let weights: Vec<f32> = (0..64).map(|i| (i as f32 - 32.0) / 8.0).collect();
//! let mut blocks = vec![bytemuck::Zeroable::zeroed(); 2];
//! ggml::quantize_q8_0(&weights, &mut blocks);
//! let mut restored = vec![0.0; 64];
//! ggml::dequantize_q8_0(&blocks, &mut restored);
//! assert!(weights.iter().zip(&restored).all(|(a, b)| (a - b).abs() <= 4.0 / 127.0));
//! let bytes: &[u8] = bytemuck::cast_slice::<BlockQ8_0, u8>(&blocks); // what llama.cpp writes
//! assert_eq!(bytes.len(), 2 * 34);
//! ```
#![deny(missing_docs)]

pub mod activation;
pub mod cast;
#[cfg(feature = "dense")]
pub mod dense;
pub mod dot;
mod error;
pub mod ggml;
pub mod isa;
pub mod linear;
mod matrix;
mod scheme;

pub use error::{Error, Result};
pub use isa::Isa;
pub use linear::ActivationBits;
pub use matrix::QuantizedMatrix;
pub use scheme::{Bits, Granularity, IntScheme, Scheme};
