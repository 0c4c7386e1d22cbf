//! Dot products of quantized blocks, the inner loop of quantized GEMV and GEMM.
