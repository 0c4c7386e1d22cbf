//! GGML block layouts, byte for byte as `ggml-common.h` declares them.

use bytemuck::{Pod, Zeroable};
use half::f16;

/// Values per block of the 32-element formats.
pub const QK: usize = 32;
/// Values per super-block of the K-quant formats.
pub const QK_K: usize = 256;

/// 8-bit symmetric: `x = d * q`.
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ8_0 {
    /// Scale.
    pub d: f16,
    /// Quantized values.
    pub qs: [i8; QK],
}

/// 8-bit symmetric with the block sum, for activations: `x = d * q`, `s = d * sum(q)`.
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ8_1 {
    /// Scale.
    pub d: f16,
    /// `d` times the sum of `qs`.
    pub s: f16,
    /// Quantized values.
    pub qs: [i8; QK],
}

/// 4-bit symmetric: `x = d * (q - 8)`; byte `j` holds element `j` (low nibble) and `j + 16`.
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4_0 {
    /// Scale.
    pub d: f16,
    /// Packed nibbles.
    pub qs: [u8; QK / 2],
}

/// 4-bit with a minimum: `x = d * q + m`.
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4_1 {
    /// Scale.
    pub d: f16,
    /// Minimum.
    pub m: f16,
    /// Packed nibbles.
    pub qs: [u8; QK / 2],
}

/// 5-bit symmetric: `x = d * (q - 16)`; the fifth bits of the 32 values in `qh` (bit `j` for
/// element `j`, little-endian u32).
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ5_0 {
    /// Scale.
    pub d: f16,
    /// High bits.
    pub qh: [u8; 4],
    /// Low nibbles.
    pub qs: [u8; QK / 2],
}

/// 5-bit with a minimum: `x = d * q + m`.
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ5_1 {
    /// Scale.
    pub d: f16,
    /// Minimum.
    pub m: f16,
    /// High bits.
    pub qh: [u8; 4],
    /// Low nibbles.
    pub qs: [u8; QK / 2],
}

/// 2-bit K-quant: 16 sub-blocks of 16 with 4-bit scales and mins.
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ2_K {
    /// Scales (low nibble) and mins (high nibble) per sub-block.
    pub scales: [u8; QK_K / 16],
    /// 2-bit values.
    pub qs: [u8; QK_K / 4],
    /// Super-block scale of the scales.
    pub d: f16,
    /// Super-block scale of the mins.
    pub dmin: f16,
}

/// 3-bit K-quant: 16 sub-blocks of 16 with 6-bit scales.
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ3_K {
    /// High bits.
    pub hmask: [u8; QK_K / 8],
    /// Low 2 bits.
    pub qs: [u8; QK_K / 4],
    /// Packed 6-bit scales.
    pub scales: [u8; 12],
    /// Super-block scale.
    pub d: f16,
}

/// 4-bit K-quant: 8 sub-blocks of 32 with 6-bit scales and mins.
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4_K {
    /// Super-block scale of the scales.
    pub d: f16,
    /// Super-block scale of the mins.
    pub dmin: f16,
    /// Packed 6-bit scales and mins.
    pub scales: [u8; 12],
    /// 4-bit values.
    pub qs: [u8; QK_K / 2],
}

/// 5-bit K-quant: 8 sub-blocks of 32 with 6-bit scales and mins.
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ5_K {
    /// Super-block scale of the scales.
    pub d: f16,
    /// Super-block scale of the mins.
    pub dmin: f16,
    /// Packed 6-bit scales and mins.
    pub scales: [u8; 12],
    /// High bits.
    pub qh: [u8; QK_K / 8],
    /// Low 4 bits.
    pub qs: [u8; QK_K / 2],
}

/// 6-bit K-quant: 16 sub-blocks of 16 with 8-bit scales.
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ6_K {
    /// Low 4 bits.
    pub ql: [u8; QK_K / 2],
    /// High 2 bits.
    pub qh: [u8; QK_K / 4],
    /// Signed 8-bit scales.
    pub scales: [i8; QK_K / 16],
    /// Super-block scale.
    pub d: f16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_ggml() {
        use std::mem::size_of;
        assert_eq!(size_of::<BlockQ8_0>(), 34);
        assert_eq!(size_of::<BlockQ8_1>(), 36);
        assert_eq!(size_of::<BlockQ4_0>(), 18);
        assert_eq!(size_of::<BlockQ4_1>(), 20);
        assert_eq!(size_of::<BlockQ5_0>(), 22);
        assert_eq!(size_of::<BlockQ5_1>(), 24);
        assert_eq!(size_of::<BlockQ2_K>(), 84);
        assert_eq!(size_of::<BlockQ3_K>(), 110);
        assert_eq!(size_of::<BlockQ4_K>(), 144);
        assert_eq!(size_of::<BlockQ5_K>(), 176);
        assert_eq!(size_of::<BlockQ6_K>(), 210);
    }
}

/// The Q8_0 blocks of four consecutive weight rows at one block column, scales first: the layout
/// [`QuantizedMatrix`](crate::QuantizedMatrix) keeps for GEMV and GEMM, so that the four rows
/// stream from memory as one sequence and their scales convert with one instruction. Not a GGUF
/// type: [`interleave`] and [`BlockQ8_0x4::block`] convert from and to ggml's blocks exactly.
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ8_0x4 {
    /// Scales of rows 0..4.
    pub d: [f16; 4],
    /// Quantized values of rows 0..4.
    pub qs: [[i8; QK]; 4],
}

/// The Q4_0 blocks of four consecutive weight rows at one block column (see [`BlockQ8_0x4`]).
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4_0x4 {
    /// Scales of rows 0..4.
    pub d: [f16; 4],
    /// Packed nibbles of rows 0..4, each as in [`BlockQ4_0`].
    pub qs: [[u8; QK / 2]; 4],
}

/// A block of one row and the four-row block that holds it.
pub trait Interleaved: Pod + std::fmt::Debug {
    /// The single-row block.
    type Block: Pod + std::fmt::Debug;
    /// Row `r` (0..4) of the four.
    fn block(&self, r: usize) -> Self::Block;
    /// The four rows' blocks together.
    fn from_blocks(blocks: [Self::Block; 4]) -> Self;
}

impl Interleaved for BlockQ8_0x4 {
    type Block = BlockQ8_0;
    fn block(&self, r: usize) -> BlockQ8_0 {
        BlockQ8_0 { d: self.d[r], qs: self.qs[r] }
    }
    fn from_blocks(blocks: [BlockQ8_0; 4]) -> Self {
        BlockQ8_0x4 { d: blocks.map(|b| b.d), qs: blocks.map(|b| b.qs) }
    }
}

impl Interleaved for BlockQ4_0x4 {
    type Block = BlockQ4_0;
    fn block(&self, r: usize) -> BlockQ4_0 {
        BlockQ4_0 { d: self.d[r], qs: self.qs[r] }
    }
    fn from_blocks(blocks: [BlockQ4_0; 4]) -> Self {
        BlockQ4_0x4 { d: blocks.map(|b| b.d), qs: blocks.map(|b| b.qs) }
    }
}

/// Interleaves four rows of `blocks_per_row` blocks each (`rows.len() == 4 * blocks_per_row`,
/// row-major) into `blocks_per_row` four-row blocks.
///
/// # Panics
/// If `rows.len() != 4 * blocks_per_row`.
pub fn interleave<Q: Interleaved>(rows: &[Q::Block], blocks_per_row: usize) -> Vec<Q> {
    assert_eq!(rows.len(), 4 * blocks_per_row, "interleave takes four rows of blocks");
    (0..blocks_per_row).map(|b| Q::from_blocks(std::array::from_fn(|r| rows[r * blocks_per_row + b]))).collect()
}
