//! f16 and bf16 casts of f32 slices.
