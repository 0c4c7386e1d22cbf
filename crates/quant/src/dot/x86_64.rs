//! x86_64 dot-product kernels.

pub(super) mod avx2;
