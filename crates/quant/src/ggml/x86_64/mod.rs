//! x86_64 kernels of the GGML formats.
