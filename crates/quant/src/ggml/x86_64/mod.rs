//! x86_64 kernels of the GGML formats.

pub(super) mod avx2;
