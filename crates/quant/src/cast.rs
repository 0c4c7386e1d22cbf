//! f16 and bf16 casts of f32 slices.
//!
//! Narrowing rounds to nearest, ties to even; values beyond the target's range become
//! infinities, NaN stays NaN (quietened) and signed zeros, infinities and subnormals are kept.
//! The work is `half`'s slice conversions, which use F16C for f16 when the CPU has it; the
//! results are the same either way.
//!
//! ```
//! use half::{bf16, f16};
//! use lathe_quant::cast;
//! let src = [1.0f32, 0.1, -65504.0, 1.0e6];
//! let mut halves = [f16::ZERO; 4];
//! cast::f32_to_f16(&src, &mut halves);
//! assert_eq!(halves[3], f16::INFINITY);
//! let mut brains = [bf16::ZERO; 4];
//! cast::f32_to_bf16(&src, &mut brains);
//! let mut back = [0.0f32; 4];
//! cast::bf16_to_f32(&brains, &mut back);
//! assert_eq!(back[3], 999424.0);
//! ```

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// Rounds each f32 of `src` to the nearest f16 (ties to even) in `dst`.
///
/// # Panics
/// If `src.len() != dst.len()`.
pub fn f32_to_f16(src: &[f32], dst: &mut [f16]) {
    assert_eq!(src.len(), dst.len(), "f32_to_f16: source and destination lengths differ");
    dst.convert_from_f32_slice(src);
}

/// Widens each f16 of `src` to f32 in `dst` (exact).
///
/// # Panics
/// If `src.len() != dst.len()`.
pub fn f16_to_f32(src: &[f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "f16_to_f32: source and destination lengths differ");
    src.convert_to_f32_slice(dst);
}

/// Rounds each f32 of `src` to the nearest bf16 (ties to even) in `dst`.
///
/// # Panics
/// If `src.len() != dst.len()`.
pub fn f32_to_bf16(src: &[f32], dst: &mut [bf16]) {
    assert_eq!(src.len(), dst.len(), "f32_to_bf16: source and destination lengths differ");
    dst.convert_from_f32_slice(src);
}

/// Widens each bf16 of `src` to f32 in `dst` (exact).
///
/// # Panics
/// If `src.len() != dst.len()`.
pub fn bf16_to_f32(src: &[bf16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "bf16_to_f32: source and destination lengths differ");
    src.convert_to_f32_slice(dst);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use safetensors::SafeTensors;

    /// An oracle written from the definition: keep the top 16 bits, rounding the low 16 to
    /// nearest with ties to even; NaN keeps its top bits with the quiet bit set.
    fn bf16_bits_oracle(value: f32) -> u16 {
        let bits = value.to_bits();
        if value.is_nan() {
            return ((bits >> 16) | 0x40) as u16;
        }
        let low = bits & 0xFFFF;
        let high = bits >> 16;
        let round_up = low > 0x8000 || (low == 0x8000 && high & 1 == 1);
        (high + u32::from(round_up)) as u16
    }

    fn specials() -> Vec<f32> {
        vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7F80_0001), // signalling NaN
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            1.0e-45,
            65504.0,
            65519.99,
            65520.0,
            -65520.0,
            6.0e-8,
            2.9e-8,
            3.0e-8,
            f32::from_bits(0x3F80_8000), // bf16 tie, rounds down to even
            f32::from_bits(0x3F81_8000), // bf16 tie, rounds up to even
            f32::from_bits(0x7F7F_FFFF), // rounds to bf16 infinity
        ]
    }

    #[test]
    fn special_values() {
        let src = specials();
        let mut halves = vec![f16::ZERO; src.len()];
        let mut brains = vec![bf16::ZERO; src.len()];
        f32_to_f16(&src, &mut halves);
        f32_to_bf16(&src, &mut brains);
        let mut from_halves = vec![0.0; src.len()];
        let mut from_brains = vec![0.0; src.len()];
        f16_to_f32(&halves, &mut from_halves);
        bf16_to_f32(&brains, &mut from_brains);
        for (index, &value) in src.iter().enumerate() {
            assert_eq!(halves[index].to_bits(), f16::from_f32(value).to_bits(), "f16 of {value:e}");
            assert_eq!(brains[index].to_bits(), bf16_bits_oracle(value), "bf16 of {value:e}");
            assert_eq!(value.is_nan(), from_halves[index].is_nan(), "{value:e}");
            assert_eq!(value.is_nan(), from_brains[index].is_nan(), "{value:e}");
            if !value.is_nan() {
                assert_eq!(value.is_sign_negative(), from_halves[index].is_sign_negative(), "{value:e}");
            }
        }
        assert_eq!(halves[13], f16::MAX);
        assert_eq!(halves[14], f16::MAX);
        assert_eq!(halves[15], f16::INFINITY);
        assert_eq!(halves[16], f16::NEG_INFINITY);
        assert_eq!(brains[20].to_bits(), 0x3F80);
        assert_eq!(brains[21].to_bits(), 0x3F82);
        assert_eq!(brains[22], bf16::INFINITY);
    }

    #[test]
    fn every_f16_and_bf16_widens_and_narrows_back() {
        let halves: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        let brains: Vec<bf16> = (0..=u16::MAX).map(bf16::from_bits).collect();
        let mut wide = vec![0.0f32; 1 << 16];
        let mut narrow_half = vec![f16::ZERO; 1 << 16];
        f16_to_f32(&halves, &mut wide);
        f32_to_f16(&wide, &mut narrow_half);
        for ((&original, &value), &back) in halves.iter().zip(&wide).zip(&narrow_half) {
            if original.is_nan() {
                assert!(value.is_nan() && back.is_nan());
            } else {
                assert_eq!(value, original.to_f32());
                assert_eq!(back.to_bits(), original.to_bits());
            }
        }
        let mut narrow_brain = vec![bf16::ZERO; 1 << 16];
        bf16_to_f32(&brains, &mut wide);
        f32_to_bf16(&wide, &mut narrow_brain);
        for ((&original, &value), &back) in brains.iter().zip(&wide).zip(&narrow_brain) {
            if original.is_nan() {
                assert!(value.is_nan() && back.is_nan());
            } else {
                assert_eq!(value.to_bits(), u32::from(original.to_bits()) << 16);
                assert_eq!(back.to_bits(), original.to_bits());
            }
        }
    }

    /// `tests/data/gguf_quants.safetensors`: the gguf package's F16 and BF16 rows of `input`.
    #[test]
    fn matches_the_gguf_package() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gguf_quants.safetensors");
        let bytes = std::fs::read(path).expect("golden file");
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let input: Vec<f32> = file
            .tensor("input")
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let u16s = |name: &str| -> Vec<u16> {
            let view = file.tensor(name).unwrap();
            view.data().chunks_exact(2).map(|b| u16::from_le_bytes(b.try_into().unwrap())).collect()
        };
        let f32s = |name: &str| -> Vec<u32> {
            let view = file.tensor(name).unwrap();
            view.data().chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().unwrap())).collect()
        };
        assert_eq!(input.len(), 12 * 256);

        let mut halves = vec![f16::ZERO; input.len()];
        f32_to_f16(&input, &mut halves);
        assert_eq!(halves.iter().map(|h| h.to_bits()).collect::<Vec<_>>(), u16s("F16.blocks"));
        let mut restored = vec![0.0; input.len()];
        f16_to_f32(&halves, &mut restored);
        assert_eq!(restored.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), f32s("F16.dequantized"));

        let mut brains = vec![bf16::ZERO; input.len()];
        f32_to_bf16(&input, &mut brains);
        assert_eq!(brains.iter().map(|h| h.to_bits()).collect::<Vec<_>>(), u16s("BF16.blocks"));
        bf16_to_f32(&brains, &mut restored);
        assert_eq!(restored.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), f32s("BF16.dequantized"));
    }

    fn any_f32() -> impl Strategy<Value = f32> {
        prop_oneof![any::<u32>().prop_map(f32::from_bits), prop::sample::select(specials())]
    }

    proptest! {
        /// The slice paths (F16C for f16 when present, any length and tail) agree with the
        /// scalar conversions and the bf16 oracle, bit for bit.
        #[test]
        fn slices_match_scalar(src in prop::collection::vec(any_f32(), 0..=35), start in 0usize..4) {
            let src = &src[start.min(src.len())..];
            let mut halves = vec![f16::ZERO; src.len()];
            let mut brains = vec![bf16::ZERO; src.len()];
            f32_to_f16(src, &mut halves);
            f32_to_bf16(src, &mut brains);
            let mut wide = vec![0.0f32; src.len()];
            f16_to_f32(&halves, &mut wide);
            for ((&value, half), wide) in src.iter().zip(&halves).zip(&wide) {
                if value.is_nan() {
                    prop_assert!(half.is_nan() && wide.is_nan());
                } else {
                    prop_assert_eq!(half.to_bits(), f16::from_f32(value).to_bits());
                    prop_assert_eq!(wide.to_bits(), half.to_f32().to_bits());
                }
            }
            for (&value, brain) in src.iter().zip(&brains) {
                prop_assert_eq!(brain.to_bits(), bf16_bits_oracle(value));
            }
        }
    }
}
