//! GGML block formats: `#[repr(C)]` blocks whose bytes are exactly ggml's, and quantize /
//! dequantize kernels over slices, dispatched once to the best instruction set.
//!
//! Quantization follows ggml's reference (`quantize_row_*_ref`), so output is byte-identical
//! with llama.cpp's files and the `gguf` Python package.

mod blocks;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86_64;

pub use blocks::*;

use std::sync::OnceLock;

use crate::Isa;

/// The GGML kernels of one instruction set. Every kernel checks its slice lengths and panics on
/// a mismatch; otherwise all are interchangeable, bit for bit, with the scalar ones.
#[derive(Debug, Clone, Copy)]
#[allow(missing_docs)]
pub struct Kernels {
    pub isa: Isa,
    pub quantize_q8_0: fn(&[f32], &mut [BlockQ8_0]),
    pub dequantize_q8_0: fn(&[BlockQ8_0], &mut [f32]),
    pub quantize_q8_1: fn(&[f32], &mut [BlockQ8_1]),
    pub quantize_q4_0: fn(&[f32], &mut [BlockQ4_0]),
    pub dequantize_q4_0: fn(&[BlockQ4_0], &mut [f32]),
    pub quantize_q4_1: fn(&[f32], &mut [BlockQ4_1]),
    pub dequantize_q4_1: fn(&[BlockQ4_1], &mut [f32]),
    pub quantize_q5_0: fn(&[f32], &mut [BlockQ5_0]),
    pub dequantize_q5_0: fn(&[BlockQ5_0], &mut [f32]),
    pub quantize_q5_1: fn(&[f32], &mut [BlockQ5_1]),
    pub dequantize_q5_1: fn(&[BlockQ5_1], &mut [f32]),
}

const SCALAR: Kernels = Kernels {
    isa: Isa::Scalar,
    quantize_q8_0: scalar::quantize_q8_0,
    dequantize_q8_0: scalar::dequantize_q8_0,
    quantize_q8_1: scalar::quantize_q8_1,
    quantize_q4_0: scalar::quantize_q4_0,
    dequantize_q4_0: scalar::dequantize_q4_0,
    quantize_q4_1: scalar::quantize_q4_1,
    dequantize_q4_1: scalar::dequantize_q4_1,
    quantize_q5_0: scalar::quantize_q5_0,
    dequantize_q5_0: scalar::dequantize_q5_0,
    quantize_q5_1: scalar::quantize_q5_1,
    dequantize_q5_1: scalar::dequantize_q5_1,
};

/// The kernels of `isa`, or `None` when this CPU cannot run them.
pub fn kernels(isa: Isa) -> Option<&'static Kernels> {
    match isa {
        Isa::Scalar => Some(&SCALAR),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86_64::avx2::kernels(),
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 => None,
    }
}

/// The kernels of [`crate::isa::active`], chosen once.
fn dispatched() -> &'static Kernels {
    static DISPATCHED: OnceLock<&'static Kernels> = OnceLock::new();
    DISPATCHED.get_or_init(|| kernels(crate::isa::active()).unwrap_or(&SCALAR))
}

macro_rules! dispatched_kernels {
    ($( $name:ident($src:ty, $dst:ty), $what:literal; )*) => {$(
        #[doc = concat!($what, ", on the fastest kernels this CPU runs (bit-identical with [`scalar::", stringify!($name), "`]).\n\n# Panics\nIf the lengths differ by other than the block size (32).")]
        pub fn $name(src: $src, dst: $dst) {
            (dispatched().$name)(src, dst)
        }
    )*};
}

dispatched_kernels! {
    quantize_q8_0(&[f32], &mut [BlockQ8_0]), "Quantizes `src` to Q8_0";
    dequantize_q8_0(&[BlockQ8_0], &mut [f32]), "Dequantizes Q8_0 blocks";
    quantize_q8_1(&[f32], &mut [BlockQ8_1]), "Quantizes activations to Q8_1";
    quantize_q4_0(&[f32], &mut [BlockQ4_0]), "Quantizes `src` to Q4_0";
    dequantize_q4_0(&[BlockQ4_0], &mut [f32]), "Dequantizes Q4_0 blocks";
    quantize_q4_1(&[f32], &mut [BlockQ4_1]), "Quantizes `src` to Q4_1";
    dequantize_q4_1(&[BlockQ4_1], &mut [f32]), "Dequantizes Q4_1 blocks";
    quantize_q5_0(&[f32], &mut [BlockQ5_0]), "Quantizes `src` to Q5_0";
    dequantize_q5_0(&[BlockQ5_0], &mut [f32]), "Dequantizes Q5_0 blocks";
    quantize_q5_1(&[f32], &mut [BlockQ5_1]), "Quantizes `src` to Q5_1";
    dequantize_q5_1(&[BlockQ5_1], &mut [f32]), "Dequantizes Q5_1 blocks";
}

pub use scalar::{
    dequantize_q2_k, dequantize_q3_k, dequantize_q4_k, dequantize_q5_k, dequantize_q6_k, dequantize_q8_1,
};

/// The AVX2 kernel of [`crate::linear::quantize_activations_i8`], or `None` when this CPU cannot
/// run it. It lives with the GGML AVX2 kernels, whose rounding and packing helpers it shares.
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2_activation_quantizer() -> Option<crate::linear::ActivationQuantizer> {
    x86_64::avx2::activation_quantizer()
}

/// The AVX2 kernel of [`crate::linear::quantize_activations_i16`], or `None` when this CPU cannot
/// run it (next to its int8 twin).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2_wide_activation_quantizer() -> Option<crate::linear::WideActivationQuantizer> {
    x86_64::avx2::wide_activation_quantizer()
}

/// The AVX2 kernel of [`crate::linear::quantize_activations_i7`], or `None` when this CPU cannot
/// run it (the same kernel as the i16 one's, with 63 levels a side).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2_seven_bit_activation_quantizer() -> Option<crate::linear::SevenBitActivationQuantizer> {
    x86_64::avx2::seven_bit_activation_quantizer()
}
