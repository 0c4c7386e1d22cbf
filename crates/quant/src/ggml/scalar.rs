//! The portable reference for every GGML kernel: plain Rust, the formulas of ggml's
//! `quantize_row_*_ref` and `dequantize_row_*`, in the same f32 operation order so results are
//! bit-identical with ggml and the `gguf` Python package. The SIMD paths are tested against it.

use half::f16;

use super::blocks::*;

fn scale_inverse(d: f32) -> f32 {
    if d != 0.0 { 1.0 / d } else { 0.0 }
}

/// The value of largest magnitude, with its sign; the first one wins a tie, as in ggml.
fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter()
        .fold((f32::MAX, -f32::MAX), |(min, max), &v| (if v < min { v } else { min }, if v > max { v } else { max }))
}

/// Quantizes one block to Q8_0.
pub fn quantize_block_q8_0(x: &[f32; QK]) -> BlockQ8_0 {
    let amax = x.iter().fold(0.0f32, |amax, &v| amax.max(v.abs()));
    let d = amax / 127.0;
    let id = scale_inverse(d);
    BlockQ8_0 { d: f16::from_f32(d), qs: x.map(|v| (v * id).round() as i8) }
}

/// Quantizes one block to Q8_1 (ggml's reference: `s` is the f32 sum of the rounded values
/// times the unrounded `d`).
pub fn quantize_block_q8_1(x: &[f32; QK]) -> BlockQ8_1 {
    let amax = x.iter().fold(0.0f32, |amax, &v| amax.max(v.abs()));
    let d = amax / 127.0;
    let id = scale_inverse(d);
    let mut qs = [0i8; QK];
    let mut sum = 0i32;
    // ggml accumulates the two halves pairwise; integer sums are order-independent.
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
        sum += i32::from(*q);
    }
    BlockQ8_1 { d: f16::from_f32(d), s: f16::from_f32(sum as f32 * d), qs }
}

/// Quantizes one block to Q4_0.
pub fn quantize_block_q4_0(x: &[f32; QK]) -> BlockQ4_0 {
    let d = signed_absmax(x) / -8.0;
    let id = scale_inverse(d);
    let mut qs = [0u8; QK / 2];
    for (j, q) in qs.iter_mut().enumerate() {
        let lo = ((x[j] * id + 8.5) as i8).min(15) as u8;
        let hi = ((x[j + QK / 2] * id + 8.5) as i8).min(15) as u8;
        *q = lo | (hi << 4);
    }
    BlockQ4_0 { d: f16::from_f32(d), qs }
}

/// Quantizes one block to Q4_1.
pub fn quantize_block_q4_1(x: &[f32; QK]) -> BlockQ4_1 {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = scale_inverse(d);
    let mut qs = [0u8; QK / 2];
    for (j, q) in qs.iter_mut().enumerate() {
        let lo = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
        let hi = (((x[j + QK / 2] - min) * id + 0.5) as i8).min(15) as u8;
        *q = lo | (hi << 4);
    }
    BlockQ4_1 { d: f16::from_f32(d), m: f16::from_f32(min), qs }
}

/// Packs 32 five-bit values: low nibbles as Q4 does, fifth bits into a little-endian u32.
fn pack_q5(q: &[u8; QK]) -> ([u8; 4], [u8; QK / 2]) {
    let mut qs = [0u8; QK / 2];
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let (lo, hi) = (q[j], q[j + QK / 2]);
        qs[j] = (lo & 0x0f) | ((hi & 0x0f) << 4);
        qh |= u32::from(lo >> 4) << j;
        qh |= u32::from(hi >> 4) << (j + QK / 2);
    }
    (qh.to_le_bytes(), qs)
}

/// Quantizes one block to Q5_0.
pub fn quantize_block_q5_0(x: &[f32; QK]) -> BlockQ5_0 {
    let d = signed_absmax(x) / -16.0;
    let id = scale_inverse(d);
    let q = x.map(|v| ((v * id + 16.5) as i8).min(31) as u8);
    let (qh, qs) = pack_q5(&q);
    BlockQ5_0 { d: f16::from_f32(d), qh, qs }
}

/// Quantizes one block to Q5_1.
pub fn quantize_block_q5_1(x: &[f32; QK]) -> BlockQ5_1 {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = scale_inverse(d);
    // ggml casts to uint8 without a clamp; the value never exceeds 31 for finite input, and the
    // gguf package clamps, so clamping keeps both agreeing on degenerate input.
    let q = x.map(|v| (((v - min) * id + 0.5) as u8).min(31));
    let (qh, qs) = pack_q5(&q);
    BlockQ5_1 { d: f16::from_f32(d), m: f16::from_f32(min), qh, qs }
}

/// Dequantizes one Q8_0 block.
pub fn dequantize_block_q8_0(block: &BlockQ8_0, y: &mut [f32; QK]) {
    let d = block.d.to_f32();
    for (y, &q) in y.iter_mut().zip(&block.qs) {
        *y = f32::from(q) * d;
    }
}

/// Dequantizes one Q8_1 block.
pub fn dequantize_block_q8_1(block: &BlockQ8_1, y: &mut [f32; QK]) {
    let d = block.d.to_f32();
    for (y, &q) in y.iter_mut().zip(&block.qs) {
        *y = f32::from(q) * d;
    }
}

/// Dequantizes one Q4_0 block.
pub fn dequantize_block_q4_0(block: &BlockQ4_0, y: &mut [f32; QK]) {
    let d = block.d.to_f32();
    for (j, &byte) in block.qs.iter().enumerate() {
        y[j] = f32::from((byte & 0x0f) as i8 - 8) * d;
        y[j + QK / 2] = f32::from((byte >> 4) as i8 - 8) * d;
    }
}

/// Dequantizes one Q4_1 block.
pub fn dequantize_block_q4_1(block: &BlockQ4_1, y: &mut [f32; QK]) {
    let (d, m) = (block.d.to_f32(), block.m.to_f32());
    for (j, &byte) in block.qs.iter().enumerate() {
        y[j] = f32::from(byte & 0x0f) * d + m;
        y[j + QK / 2] = f32::from(byte >> 4) * d + m;
    }
}

fn unpack_q5(qh: [u8; 4], qs: &[u8; QK / 2]) -> [u8; QK] {
    let qh = u32::from_le_bytes(qh);
    let mut q = [0u8; QK];
    for (j, &byte) in qs.iter().enumerate() {
        q[j] = (byte & 0x0f) | ((((qh >> j) & 1) as u8) << 4);
        q[j + QK / 2] = (byte >> 4) | ((((qh >> (j + QK / 2)) & 1) as u8) << 4);
    }
    q
}

/// Dequantizes one Q5_0 block.
pub fn dequantize_block_q5_0(block: &BlockQ5_0, y: &mut [f32; QK]) {
    let d = block.d.to_f32();
    for (y, q) in y.iter_mut().zip(unpack_q5(block.qh, &block.qs)) {
        *y = f32::from(q as i8 - 16) * d;
    }
}

/// Dequantizes one Q5_1 block.
pub fn dequantize_block_q5_1(block: &BlockQ5_1, y: &mut [f32; QK]) {
    let (d, m) = (block.d.to_f32(), block.m.to_f32());
    for (y, q) in y.iter_mut().zip(unpack_q5(block.qh, &block.qs)) {
        *y = f32::from(q) * d + m;
    }
}

/// Dequantizes one Q2_K super-block.
pub fn dequantize_block_q2_k(block: &BlockQ2_K, y: &mut [f32; QK_K]) {
    let (d, min) = (block.d.to_f32(), block.dmin.to_f32());
    let mut out = y.iter_mut();
    let mut scale_index = 0;
    for q in block.qs.chunks_exact(32) {
        for shift in [0, 2, 4, 6] {
            for half in [&q[..16], &q[16..]] {
                let sc = block.scales[scale_index];
                scale_index += 1;
                let (dl, ml) = (d * f32::from(sc & 0x0f), min * f32::from(sc >> 4));
                for &byte in half {
                    *out.next().expect("256 outputs") = dl * f32::from((byte >> shift) & 3) - ml;
                }
            }
        }
    }
}

/// Unpacks Q3_K's twelve bytes into sixteen signed 6-bit scales.
fn q3_k_scales(packed: &[u8; 12]) -> [i8; 16] {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let word = |i: usize| u32::from_le_bytes([packed[4 * i], packed[4 * i + 1], packed[4 * i + 2], packed[4 * i + 3]]);
    let (a0, a1, tmp) = (word(0), word(1), word(2));
    let aux = [
        (a0 & KMASK2) | ((tmp & KMASK1) << 4),
        (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
        ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
        ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
    ];
    let mut scales = [0i8; 16];
    for (i, word) in aux.iter().enumerate() {
        for (k, byte) in word.to_le_bytes().iter().enumerate() {
            scales[4 * i + k] = *byte as i8 - 32;
        }
    }
    scales
}

/// Dequantizes one Q3_K super-block.
pub fn dequantize_block_q3_k(block: &BlockQ3_K, y: &mut [f32; QK_K]) {
    let d_all = block.d.to_f32();
    let scales = q3_k_scales(&block.scales);
    let mut out = y.iter_mut();
    let mut scale_index = 0;
    let mut mask = 1u8;
    for q in block.qs.chunks_exact(32) {
        for shift in [0, 2, 4, 6] {
            for offset in [0, 16] {
                let dl = d_all * f32::from(scales[scale_index]);
                scale_index += 1;
                let lows = &q[offset..offset + 16];
                let highs = &block.hmask[offset..offset + 16];
                for (&low, &high_bits) in lows.iter().zip(highs) {
                    let high = if high_bits & mask != 0 { 0 } else { 4 };
                    let value = ((low >> shift) & 3) as i8 - high;
                    *out.next().expect("256 outputs") = dl * f32::from(value);
                }
            }
            mask <<= 1;
        }
    }
}

/// Scale and min `j` (of 8) of the packed 6-bit layout shared by Q4_K and Q5_K.
fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// The (scale, min) pairs of the two 32-value sub-blocks of 64-value chunk `chunk`, as ggml
/// computes them for Q4_K and Q5_K: `d * sc` and `dmin * m`.
fn sub_block_scales_k4(chunk: usize, d: f32, min: f32, scales: &[u8; 12]) -> [(f32, f32); 2] {
    [2 * chunk, 2 * chunk + 1].map(|j| {
        let (sc, m) = scale_min_k4(j, scales);
        (d * f32::from(sc), min * f32::from(m))
    })
}

/// Dequantizes one Q4_K super-block.
pub fn dequantize_block_q4_k(block: &BlockQ4_K, y: &mut [f32; QK_K]) {
    let (d, min) = (block.d.to_f32(), block.dmin.to_f32());
    for (chunk, (q, y)) in block.qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let [(d1, m1), (d2, m2)] = sub_block_scales_k4(chunk, d, min, &block.scales);
        for (l, &byte) in q.iter().enumerate() {
            y[l] = d1 * f32::from(byte & 0x0f) - m1;
            y[l + 32] = d2 * f32::from(byte >> 4) - m2;
        }
    }
}

/// Dequantizes one Q5_K super-block.
pub fn dequantize_block_q5_k(block: &BlockQ5_K, y: &mut [f32; QK_K]) {
    let (d, min) = (block.d.to_f32(), block.dmin.to_f32());
    for (chunk, (q, y)) in block.qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let [(d1, m1), (d2, m2)] = sub_block_scales_k4(chunk, d, min, &block.scales);
        let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
        for (l, &byte) in q.iter().enumerate() {
            let high1 = if block.qh[l] & u1 != 0 { 16 } else { 0 };
            let high2 = if block.qh[l] & u2 != 0 { 16 } else { 0 };
            y[l] = d1 * f32::from((byte & 0x0f) + high1) - m1;
            y[l + 32] = d2 * f32::from((byte >> 4) + high2) - m2;
        }
    }
}

/// Dequantizes one Q6_K super-block.
pub fn dequantize_block_q6_k(block: &BlockQ6_K, y: &mut [f32; QK_K]) {
    let d = block.d.to_f32();
    for (n, y) in y.chunks_exact_mut(128).enumerate() {
        let ql = &block.ql[64 * n..64 * n + 64];
        let qh = &block.qh[32 * n..32 * n + 32];
        let sc = &block.scales[8 * n..8 * n + 8];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i8 - 32;
            let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            y[l] = d * f32::from(sc[is]) * f32::from(q1);
            y[l + 32] = d * f32::from(sc[is + 2]) * f32::from(q2);
            y[l + 64] = d * f32::from(sc[is + 4]) * f32::from(q3);
            y[l + 96] = d * f32::from(sc[is + 6]) * f32::from(q4);
        }
    }
}

/// Applies a block quantizer over a slice: `src.len()` must be `QK_BLOCK * dst.len()`.
fn quantize_slice<B, const N: usize>(src: &[f32], dst: &mut [B], quantize: fn(&[f32; N]) -> B) {
    assert_eq!(src.len(), dst.len() * N, "source length must be {N} times the block count");
    for (x, block) in src.chunks_exact(N).zip(dst) {
        *block = quantize(x.try_into().expect("chunks of N"));
    }
}

fn dequantize_slice<B, const N: usize>(src: &[B], dst: &mut [f32], dequantize: fn(&B, &mut [f32; N])) {
    assert_eq!(dst.len(), src.len() * N, "destination length must be {N} times the block count");
    for (block, y) in src.iter().zip(dst.chunks_exact_mut(N)) {
        dequantize(block, y.try_into().expect("chunks of N"));
    }
}

macro_rules! slice_kernels {
    ($( $quantize:ident / $dequantize:ident : $block:ty = $qb:ident / $db:ident; )*) => {$(
        #[doc = concat!("Quantizes `src` into `dst` (", stringify!($block), "), block by block.\n\n# Panics\nIf `src.len() != 32 * dst.len()`.")]
        pub fn $quantize(src: &[f32], dst: &mut [$block]) {
            quantize_slice(src, dst, $qb);
        }

        #[doc = concat!("Dequantizes `src` (", stringify!($block), ") into `dst`.\n\n# Panics\nIf `dst.len() != 32 * src.len()`.")]
        pub fn $dequantize(src: &[$block], dst: &mut [f32]) {
            dequantize_slice(src, dst, $db);
        }
    )*};
}

slice_kernels! {
    quantize_q8_0 / dequantize_q8_0: BlockQ8_0 = quantize_block_q8_0 / dequantize_block_q8_0;
    quantize_q8_1 / dequantize_q8_1: BlockQ8_1 = quantize_block_q8_1 / dequantize_block_q8_1;
    quantize_q4_0 / dequantize_q4_0: BlockQ4_0 = quantize_block_q4_0 / dequantize_block_q4_0;
    quantize_q4_1 / dequantize_q4_1: BlockQ4_1 = quantize_block_q4_1 / dequantize_block_q4_1;
    quantize_q5_0 / dequantize_q5_0: BlockQ5_0 = quantize_block_q5_0 / dequantize_block_q5_0;
    quantize_q5_1 / dequantize_q5_1: BlockQ5_1 = quantize_block_q5_1 / dequantize_block_q5_1;
}

macro_rules! k_slice_kernels {
    ($( $dequantize:ident : $block:ty = $db:ident; )*) => {$(
        #[doc = concat!("Dequantizes `src` (", stringify!($block), ") into `dst`.\n\n# Panics\nIf `dst.len() != 256 * src.len()`.")]
        pub fn $dequantize(src: &[$block], dst: &mut [f32]) {
            dequantize_slice(src, dst, $db);
        }
    )*};
}

k_slice_kernels! {
    dequantize_q2_k: BlockQ2_K = dequantize_block_q2_k;
    dequantize_q3_k: BlockQ3_K = dequantize_block_q3_k;
    dequantize_q4_k: BlockQ4_K = dequantize_block_q4_k;
    dequantize_q5_k: BlockQ5_K = dequantize_block_q5_k;
    dequantize_q6_k: BlockQ6_K = dequantize_block_q6_k;
}
