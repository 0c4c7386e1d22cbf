//! lathe compresses transformer checkpoints on CPU and measures what each method costs and buys.
//!
//! This facade re-exports the lathe crates under one name; each is also usable alone.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use lathe_quant as quant;
pub use lathe_tensor as tensor;
