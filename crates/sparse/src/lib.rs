//! Sparse weight matrices for lathe and their products with dense activations on CPU: CSR, N:M
//! (2:4 and friends) and compressed-tensors' row bitmask, each built from a dense matrix and
//! converted back exactly, with `Y = X W^T (+ b)` kernels (a portable scalar reference and an
//! AVX2+FMA path chosen once at run time; `LATHE_FORCE_ISA=scalar` pins the reference), and
//! [`prefer_sparse`], the measured rule for when a sparse kernel beats the dense GEMM.
//!
//! ```
//! use lathe_sparse::{CsrMatrix, Format, prefer_sparse};
//! let (rows, cols, n_tokens) = (4, 8, 3);
//! // A 75 % sparse layer: weight (r, c) kept when (r + c) % 4 == 0.
//! let w: Vec<f32> = (0..rows * cols).map(|i| if (i / cols + i % cols) % 4 == 0 { 0.5 } else { 0.0 }).collect();
//! let csr = CsrMatrix::from_dense(&w, rows, cols)?;
//! assert_eq!(csr.density(), 0.25);
//! let x = vec![1.0f32; n_tokens * cols];       // [n_tokens, cols], row-major
//! let mut y = vec![0.0f32; n_tokens * rows];   // [n_tokens, rows]
//! csr.spmm_bias(&x, n_tokens, &[1.0, 2.0, 3.0, 4.0], &mut y);
//! assert_eq!(&y[..rows], [2.0, 3.0, 4.0, 5.0]);
//! assert_eq!(csr.to_dense(), w);
//! // Whether this layer should run sparse at all (it is far too small to pay off):
//! assert!(!prefer_sparse(Format::Csr, rows, cols, csr.density(), n_tokens));
//! # Ok::<(), lathe_sparse::Error>(())
//! ```
//!
//! # Layout of the activations
//! Products take and return the layout of `lathe_quant::dense::linear` and
//! `QuantizedMatrix::gemm`: `x` is `[n_tokens, cols]` row-major and `y` `[n_tokens, rows]`, so a
//! sparse layer drops in for a dense one. Internally the SpMM kernels read a transposed copy of
//! `x` in panels of 32 tokens (`[cols, 32]`): a nonzero `(r, c, w)` then meets 32 contiguous
//! activations of column `c` (two cache lines) with one broadcast and four fused multiply-adds,
//! where the row-major layout would need a gather per token. The transpose costs one pass over
//! `x` and the results come back through the same 8 x 8 register transposes, one pass over `y`:
//! together about a fifth of a 90 %-sparse 128-token product on MiniLM shapes and a few percent
//! at 50 %, paid once per call for every row. One or two tokens (SpMV, token by token) read `x`
//! directly, and so do 2:4 and 1:4 products of up to 64 tokens, whose rows sit eight side by
//! side in vector lanes: a group's four activations are broadcast and permuted into the lanes by
//! the rows' positions, which needs no transpose.
//!
//! # Sum order
//! Every path, batch size and thread count computes each output with the same sequence of f32
//! operations, fused multiply-adds included: the AVX2 kernels equal the scalar ones bit for bit,
//! a token's result does not depend on the other tokens of its batch (one token, SpMV, sums like
//! many, SpMM), and CSR, N:M and bitmask agree bit for bit on the same weights. For output
//! `(t, r)`, with `b` the bias (or +0.0) and the row's nonzeros in column order: `s_0 = b`,
//! `s_1 = +0.0`, nonzero `j` does `s_(j mod 2) = fma(w_j, x[t, c_j], s_(j mod 2))`, and the
//! output is `s_0 + s_1`. (The SpMM kernels cut rows into blocks of 192 columns to keep their
//! activations in L1; both sums carry over from block to block, so blocks leave the order alone.)

//! Exact zero weights are skipped, so an infinite activation against a zero weight adds nothing
//! (a dense product would make it NaN). Rows are split over rayon in chunks when the current pool
//! has more than one thread; the split never changes a result.
#![deny(missing_docs)]

mod bitmask;
mod csr;
mod error;
mod isa;
mod kernels;
mod nm;
mod product;
mod rows;
mod rule;

pub use bitmask::BitmaskMatrix;
pub use csr::{ColumnIndices, CsrMatrix};
pub use error::{Error, Result};
pub use isa::Isa;
pub use kernels::{Kernels, kernels};
pub use nm::NmMatrix;
pub use rule::{Format, prefer_sparse};
