//! x86_64 kernels.

pub(super) mod avx2;
