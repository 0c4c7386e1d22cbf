//! lathe-quant against the references: the `gguf` Python package's bytes and values, and the
//! scalar kernels for every other instruction set.

use lathe_quant::ggml::{self, *};
use safetensors::SafeTensors;

struct Golden {
    bytes: Vec<u8>,
}

impl Golden {
    /// `tests/data/gguf_quants.safetensors`: see tests/data/README.md.
    fn load() -> Golden {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gguf_quants.safetensors");
        Golden { bytes: std::fs::read(path).expect("golden file") }
    }

    fn tensor(&self, name: &str) -> (Vec<usize>, Vec<u8>) {
        let file = SafeTensors::deserialize(&self.bytes).unwrap();
        let view = file.tensor(name).unwrap_or_else(|_| panic!("golden tensor {name}"));
        (view.shape().to_vec(), view.data().to_vec())
    }

    fn f32s(&self, name: &str) -> Vec<f32> {
        let (_, data) = self.tensor(name);
        data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    }
}

/// Quantizes the golden rows with `quantize` and compares every byte with the gguf package's,
/// then dequantizes the package's blocks and compares every value bit for bit.
fn check_format<B: bytemuck::Pod>(
    name: &str,
    quantize: impl Fn(&[f32], &mut [B]),
    dequantize: impl Fn(&[B], &mut [f32]),
) {
    let golden = Golden::load();
    let input = golden.f32s("input");
    let (shape, expected_bytes) = golden.tensor(&format!("{name}.blocks"));
    let expected_values = golden.f32s(&format!("{name}.dequantized"));
    let block_bytes = std::mem::size_of::<B>();
    let n_blocks = expected_bytes.len() / block_bytes;
    assert_eq!(shape[0] * shape[1], expected_bytes.len());

    let mut blocks = vec![B::zeroed(); n_blocks];
    quantize(&input, &mut blocks);
    let ours: &[u8] = bytemuck::cast_slice(&blocks);
    for (block, (a, b)) in ours.chunks(block_bytes).zip(expected_bytes.chunks(block_bytes)).enumerate() {
        assert_eq!(a, b, "{name}: block {block} (row {}) differs from the gguf package", block * 32 / 256);
    }

    let theirs: Vec<B> = bytemuck::pod_collect_to_vec(&expected_bytes);
    let mut values = vec![0.0f32; input.len()];
    dequantize(&theirs, &mut values);
    for (i, (a, b)) in values.iter().zip(&expected_values).enumerate() {
        assert_eq!(a.to_bits(), b.to_bits(), "{name}: value {i}: {a} vs {b}");
    }
}

#[test]
fn q8_0_is_byte_identical_with_the_gguf_package() {
    check_format("Q8_0", ggml::quantize_q8_0, ggml::dequantize_q8_0);
    check_format("Q8_0", scalar::quantize_q8_0, scalar::dequantize_q8_0);
}

#[test]
fn q4_0_is_byte_identical_with_the_gguf_package() {
    check_format("Q4_0", ggml::quantize_q4_0, ggml::dequantize_q4_0);
    check_format("Q4_0", scalar::quantize_q4_0, scalar::dequantize_q4_0);
}

#[test]
fn q4_1_is_byte_identical_with_the_gguf_package() {
    check_format("Q4_1", ggml::quantize_q4_1, ggml::dequantize_q4_1);
    check_format("Q4_1", scalar::quantize_q4_1, scalar::dequantize_q4_1);
}

#[test]
fn q5_0_and_q5_1_are_byte_identical_with_the_gguf_package() {
    check_format("Q5_0", ggml::quantize_q5_0, ggml::dequantize_q5_0);
    check_format("Q5_0", scalar::quantize_q5_0, scalar::dequantize_q5_0);
    check_format("Q5_1", ggml::quantize_q5_1, ggml::dequantize_q5_1);
    check_format("Q5_1", scalar::quantize_q5_1, scalar::dequantize_q5_1);
}

/// Every GGML kernel table against the scalar one, bit for bit; the AVX2 table is tested
/// whenever this CPU has it, whatever `LATHE_FORCE_ISA` says.
mod ggml_kernels_match_scalar {
    use lathe_quant::Isa;
    use lathe_quant::ggml::{self, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1, Kernels, QK};
    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;

    #[test]
    fn kernels_report_their_isa() {
        for isa in Isa::supported() {
            assert_eq!(ggml::kernels(isa).expect("a supported isa has kernels").isa, isa);
        }
        assert_eq!(ggml::kernels(Isa::Avx2).is_some(), Isa::Avx2.is_supported());
    }

    /// The tables other than scalar's that this CPU runs.
    fn simd_tables() -> Vec<&'static Kernels> {
        Isa::supported().into_iter().filter(|&isa| isa != Isa::Scalar).filter_map(ggml::kernels).collect()
    }

    fn scalar() -> &'static Kernels {
        ggml::kernels(Isa::Scalar).expect("scalar always runs")
    }

    /// Values whose quantization is easy to get subtly wrong.
    const SPECIAL: &[f32] = &[
        0.0,
        -0.0,
        0.5,
        -0.5,
        1.5,
        -2.5,
        127.5,
        -8.5,
        1.0,
        -1.0,
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        1e-45,
        -1e-45,
        3e-39,
        -1e-40,
        f32::MAX / 2.0,
        -f32::MAX / 2.0,
        f32::MAX,
        -f32::MAX,
    ];

    pub(super) fn finite_value() -> BoxedStrategy<f32> {
        prop_oneof![
            6 => -4.0f32..4.0,
            2 => prop::sample::select(SPECIAL),
            // Multiples of 1/2 and 1/16: exact rounding ties once scaled.
            2 => (-64i32..=64).prop_map(|k| k as f32 / 2.0),
            1 => (-256i32..=256).prop_map(|k| k as f32 / 16.0),
            1 => prop::num::f32::NORMAL | prop::num::f32::SUBNORMAL | prop::num::f32::ZERO | prop::num::f32::POSITIVE
                | prop::num::f32::NEGATIVE,
        ]
        .boxed()
    }

    pub(super) fn any_value() -> BoxedStrategy<f32> {
        prop_oneof![
            8 => finite_value(),
            1 => prop::sample::select(&[f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY][..]),
            // NaNs with arbitrary payloads.
            1 => any::<u32>().prop_map(|bits| f32::from_bits(bits | 0x7f80_0001)),
        ]
        .boxed()
    }

    /// One block of 32 values, drawn whole from shapes that stress the reductions.
    fn block(value: BoxedStrategy<f32>) -> BoxedStrategy<Vec<f32>> {
        prop_oneof![
            6 => vec(value.clone(), QK),
            1 => value.clone().prop_map(|v| vec![v; QK]),
            1 => Just(vec![0.0; QK]),
            // Zeros of both signs among non-negative (or non-positive) values: a zero extreme.
            1 => (vec(prop::sample::select(&[0.0f32, -0.0, 1.0, 3.0][..]), QK), any::<bool>())
                .prop_map(|(v, negate)| if negate { v.into_iter().map(|x| -x).collect() } else { v }),
            // One huge outlier.
            1 => (vec(-1.0f32..1.0, QK), 0..QK, prop::sample::select(&[1e30f32, -1e30, f32::MAX, -3e38][..]))
                .prop_map(|(mut v, at, outlier)| { v[at] = outlier; v }),
            // The largest magnitude with both signs, in either order.
            1 => (vec(-1.0f32..1.0, QK), 0..QK, 0..QK, 1.0f32..100.0).prop_map(|(mut v, i, j, a)| {
                v[i] = a;
                v[j] = -a;
                v
            }),
            // Tiny blocks, whose scales are subnormal or whose inverses overflow.
            1 => (vec(-1.0f32..1.0, QK), prop::sample::select(&[1e-36f32, 1e-38, 1e-40, 1e-43][..]))
                .prop_map(|(v, scale)| v.into_iter().map(|x| x * scale).collect()),
        ]
        .boxed()
    }

    /// 0 to 9 blocks (one group of eight, a partial one, or both), at a misaligned offset inside
    /// a bigger buffer.
    fn input(value: BoxedStrategy<f32>) -> impl Strategy<Value = (Vec<f32>, usize, usize)> {
        (vec(block(value), 0..=9), 0usize..8).prop_map(|(blocks, offset)| {
            let n_blocks = blocks.len();
            let mut buffer = vec![7.0f32; offset];
            buffer.extend(blocks.into_iter().flatten());
            buffer.extend([7.0f32; 5]);
            (buffer, offset, n_blocks)
        })
    }

    fn check_quantize<B: bytemuck::Pod>(
        name: &str,
        src: &[f32],
        n_blocks: usize,
        ours: fn(&[f32], &mut [B]),
        reference: fn(&[f32], &mut [B]),
    ) -> Result<(), TestCaseError> {
        // Blocks land at an offset too, and the guard blocks around them must survive.
        let mut expected = vec![B::zeroed(); n_blocks];
        reference(src, &mut expected);
        let mut actual = vec![B::zeroed(); n_blocks + 2];
        ours(src, &mut actual[1..=n_blocks]);
        let block_bytes = std::mem::size_of::<B>();
        let (expected, actual): (&[u8], &[u8]) = (bytemuck::cast_slice(&expected), bytemuck::cast_slice(&actual));
        prop_assert!(actual[..block_bytes].iter().chain(&actual[(n_blocks + 1) * block_bytes..]).all(|&b| b == 0));
        for (block, (a, e)) in actual[block_bytes..].chunks(block_bytes).zip(expected.chunks(block_bytes)).enumerate() {
            prop_assert_eq!(a, e, "{}: block {} differs from scalar for {:?}", name, block, &src[block * QK..][..QK]);
        }
        Ok(())
    }

    /// Dequantizes with both and compares every value bit for bit; where scalar gives NaN (only
    /// from a NaN or infinite scale), the other must give NaN too, payload unspecified.
    fn check_dequantize<B: bytemuck::Pod>(
        name: &str,
        blocks: &[B],
        ours: fn(&[B], &mut [f32]),
        reference: fn(&[B], &mut [f32]),
        offset: usize,
    ) -> Result<(), TestCaseError> {
        let n_values = blocks.len() * QK;
        let mut expected = vec![0.0f32; n_values];
        reference(blocks, &mut expected);
        let mut actual = vec![-1.0f32; offset + n_values + 3];
        ours(blocks, &mut actual[offset..offset + n_values]);
        prop_assert!(actual[..offset].iter().chain(&actual[offset + n_values..]).all(|&v| v == -1.0));
        for (i, (a, e)) in actual[offset..offset + n_values].iter().zip(&expected).enumerate() {
            if e.is_nan() {
                prop_assert!(a.is_nan(), "{}: value {} is {} where scalar gives NaN", name, i, a);
            } else {
                prop_assert_eq!(a.to_bits(), e.to_bits(), "{}: value {}: {} vs scalar {}", name, i, a, e);
            }
        }
        Ok(())
    }

    fn check_all_quantizers(simd: &Kernels, src: &[f32], n_blocks: usize) -> Result<(), TestCaseError> {
        let scalar = scalar();
        check_quantize::<BlockQ8_0>("quantize_q8_0", src, n_blocks, simd.quantize_q8_0, scalar.quantize_q8_0)?;
        check_quantize::<BlockQ8_1>("quantize_q8_1", src, n_blocks, simd.quantize_q8_1, scalar.quantize_q8_1)?;
        check_quantize::<BlockQ4_0>("quantize_q4_0", src, n_blocks, simd.quantize_q4_0, scalar.quantize_q4_0)?;
        check_quantize::<BlockQ4_1>("quantize_q4_1", src, n_blocks, simd.quantize_q4_1, scalar.quantize_q4_1)?;
        check_quantize::<BlockQ5_0>("quantize_q5_0", src, n_blocks, simd.quantize_q5_0, scalar.quantize_q5_0)?;
        check_quantize::<BlockQ5_1>("quantize_q5_1", src, n_blocks, simd.quantize_q5_1, scalar.quantize_q5_1)?;
        Ok(())
    }

    /// Outputs of 16 MiB and more take the AVX2 dequantizers' streaming stores (when they start
    /// on a 16-byte boundary, as a fresh allocation does; offset 1 takes the plain ones): the
    /// same bits as scalar either way.
    #[test]
    fn large_outputs_dequantize_to_the_same_bits() {
        let n_blocks = (16 << 20) / (QK * 4) + 5;
        let src: Vec<f32> = (0..n_blocks * QK).map(|i| ((i * 7919 % 4001) as f32 - 2000.0) * 1e-3).collect();
        let scalar = scalar();
        let mut q8_0 = vec![BlockQ8_0::zeroed(); n_blocks];
        (scalar.quantize_q8_0)(&src, &mut q8_0);
        let mut q4_0 = vec![BlockQ4_0::zeroed(); n_blocks];
        (scalar.quantize_q4_0)(&src, &mut q4_0);
        let mut q4_1 = vec![BlockQ4_1::zeroed(); n_blocks];
        (scalar.quantize_q4_1)(&src, &mut q4_1);
        let mut q5_0 = vec![BlockQ5_0::zeroed(); n_blocks];
        (scalar.quantize_q5_0)(&src, &mut q5_0);
        let mut q5_1 = vec![BlockQ5_1::zeroed(); n_blocks];
        (scalar.quantize_q5_1)(&src, &mut q5_1);
        for simd in simd_tables() {
            for offset in [0, 1] {
                check_dequantize("dequantize_q8_0", &q8_0, simd.dequantize_q8_0, scalar.dequantize_q8_0, offset)
                    .unwrap();
                check_dequantize("dequantize_q4_0", &q4_0, simd.dequantize_q4_0, scalar.dequantize_q4_0, offset)
                    .unwrap();
                check_dequantize("dequantize_q4_1", &q4_1, simd.dequantize_q4_1, scalar.dequantize_q4_1, offset)
                    .unwrap();
                check_dequantize("dequantize_q5_0", &q5_0, simd.dequantize_q5_0, scalar.dequantize_q5_0, offset)
                    .unwrap();
                check_dequantize("dequantize_q5_1", &q5_1, simd.dequantize_q5_1, scalar.dequantize_q5_1, offset)
                    .unwrap();
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn quantizers_match_scalar_on_finite_input((buffer, offset, n_blocks) in input(finite_value())) {
            for simd in simd_tables() {
                let src = &buffer[offset..offset + n_blocks * QK];
                check_all_quantizers(simd, src, n_blocks)?;
                // Round trips go through blocks with every scale the quantizers produce.
                let scalar = scalar();
                let mut blocks = vec![BlockQ8_0::zeroed(); n_blocks];
                (scalar.quantize_q8_0)(src, &mut blocks);
                check_dequantize("dequantize_q8_0", &blocks, simd.dequantize_q8_0, scalar.dequantize_q8_0, offset)?;
                let mut blocks = vec![BlockQ4_0::zeroed(); n_blocks];
                (scalar.quantize_q4_0)(src, &mut blocks);
                check_dequantize("dequantize_q4_0", &blocks, simd.dequantize_q4_0, scalar.dequantize_q4_0, offset)?;
                let mut blocks = vec![BlockQ4_1::zeroed(); n_blocks];
                (scalar.quantize_q4_1)(src, &mut blocks);
                check_dequantize("dequantize_q4_1", &blocks, simd.dequantize_q4_1, scalar.dequantize_q4_1, offset)?;
                let mut blocks = vec![BlockQ5_0::zeroed(); n_blocks];
                (scalar.quantize_q5_0)(src, &mut blocks);
                check_dequantize("dequantize_q5_0", &blocks, simd.dequantize_q5_0, scalar.dequantize_q5_0, offset)?;
                let mut blocks = vec![BlockQ5_1::zeroed(); n_blocks];
                (scalar.quantize_q5_1)(src, &mut blocks);
                check_dequantize("dequantize_q5_1", &blocks, simd.dequantize_q5_1, scalar.dequantize_q5_1, offset)?;
            }
        }

        #[test]
        fn quantizers_match_scalar_on_nan_and_infinities((buffer, offset, n_blocks) in input(any_value())) {
            for simd in simd_tables() {
                check_all_quantizers(simd, &buffer[offset..offset + n_blocks * QK], n_blocks)?;
            }
        }

        /// Arbitrary bytes: every f16 scale, including subnormals, infinities and NaN.
        #[test]
        fn dequantizers_match_scalar_on_any_bytes(
            bytes in vec(any::<u8>(), 0..=9 * std::mem::size_of::<BlockQ5_1>()),
            offset in 0usize..8,
        ) {
            let scalar = scalar();
            for simd in simd_tables() {
                let n_q8 = bytes.len() / std::mem::size_of::<BlockQ8_0>() * std::mem::size_of::<BlockQ8_0>();
                let q8: Vec<BlockQ8_0> = bytemuck::pod_collect_to_vec(&bytes[..n_q8]);
                check_dequantize("dequantize_q8_0", &q8, simd.dequantize_q8_0, scalar.dequantize_q8_0, offset)?;
                let n_q4_0 = bytes.len() / std::mem::size_of::<BlockQ4_0>() * std::mem::size_of::<BlockQ4_0>();
                let q4_0: Vec<BlockQ4_0> = bytemuck::pod_collect_to_vec(&bytes[..n_q4_0]);
                check_dequantize("dequantize_q4_0", &q4_0, simd.dequantize_q4_0, scalar.dequantize_q4_0, offset)?;
                let n_q4_1 = bytes.len() / std::mem::size_of::<BlockQ4_1>() * std::mem::size_of::<BlockQ4_1>();
                let q4_1: Vec<BlockQ4_1> = bytemuck::pod_collect_to_vec(&bytes[..n_q4_1]);
                check_dequantize("dequantize_q4_1", &q4_1, simd.dequantize_q4_1, scalar.dequantize_q4_1, offset)?;
                let n_q5_0 = bytes.len() / std::mem::size_of::<BlockQ5_0>() * std::mem::size_of::<BlockQ5_0>();
                let q5_0: Vec<BlockQ5_0> = bytemuck::pod_collect_to_vec(&bytes[..n_q5_0]);
                check_dequantize("dequantize_q5_0", &q5_0, simd.dequantize_q5_0, scalar.dequantize_q5_0, offset)?;
                let n_q5_1 = bytes.len() / std::mem::size_of::<BlockQ5_1>() * std::mem::size_of::<BlockQ5_1>();
                let q5_1: Vec<BlockQ5_1> = bytemuck::pod_collect_to_vec(&bytes[..n_q5_1]);
                check_dequantize("dequantize_q5_1", &q5_1, simd.dequantize_q5_1, scalar.dequantize_q5_1, offset)?;
            }
        }
    }

    /// Groups of eight blocks plus a tail, well past what the property tests draw.
    #[test]
    fn long_slices_match_scalar() {
        let n_blocks = 8 * 37 + 5;
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let src: Vec<f32> = (0..n_blocks * QK)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 6.0
            })
            .collect();
        for simd in simd_tables() {
            check_all_quantizers(simd, &src, n_blocks).unwrap();
        }
    }

    /// Blocks whose scale is exactly 1, so every value sits where it is rounded: on, one ulp
    /// below and one ulp above each half-integer tie, for Q8 (`round`), Q4 (`+ 8.5` or `+ 0.5`,
    /// then truncation) and Q5 (`+ 16.5` or `+ 0.5`, then truncation).
    #[test]
    fn values_next_to_rounding_ties_match_scalar() {
        let mut src = Vec::new();
        for (amax, low, high) in [(127.0f32, -127, 127), (-8.0, -8, 8), (15.0, 0, 15), (-16.0, -16, 16), (31.0, 0, 31)]
        {
            let mut values: Vec<f32> = (low..high)
                .flat_map(|k| {
                    let tie = k as f32 + 0.5;
                    [tie, tie.next_down(), tie.next_up(), tie - 8.5, (tie - 8.5).next_down(), (tie - 8.5).next_up()]
                })
                .filter(|v| v.abs() <= amax.abs())
                .collect();
            // Each block: the value fixing the scale (and a zero minimum for Q4_1), then 30 probes.
            for chunk in values.chunks_mut(30) {
                src.extend([amax, 0.0]);
                src.extend(chunk.iter().copied());
                src.extend(std::iter::repeat_n(0.0, 30 - chunk.len()));
            }
        }
        for simd in simd_tables() {
            check_all_quantizers(simd, &src, src.len() / QK).unwrap();
        }
    }

    /// Q5 blocks whose every fifth bit is set or clear in a known pattern, and blocks of
    /// subnormals, whose infinite scale inverse makes Q5_0's `(t as i8).min(31) as u8` wrap to 128:
    /// the scalar packing then spills those bytes' high bits into the next bits of `qh`.
    #[test]
    fn q5_high_bits_match_scalar() {
        let mut src: Vec<f32> = Vec::new();
        // Q5_1 with min 0 and max 31 (scale 1): element j is j, so bit j of qh is bit 4 of j.
        src.extend((0..QK).map(|j| j as f32));
        // Q5_0 with max -16 (scale 1): element j is 15 - j, stored as 31 - j.
        src.extend((0..QK).map(|j| 15.0 - j as f32));
        // Subnormals of both signs (positive ones wrap, negative ones clamp to 31), and a block of
        // positive subnormals only.
        src.extend((0..QK).map(|j| if j % 3 == 0 { -1.0e-40 } else { 2.0e-41 * j as f32 }));
        src.extend((0..QK).map(|j| 1.0e-42 * (j + 1) as f32));
        let n_blocks = src.len() / QK;
        let scalar = scalar();
        let mut q5_0 = vec![BlockQ5_0::zeroed(); n_blocks];
        (scalar.quantize_q5_0)(&src, &mut q5_0);
        let mut q5_1 = vec![BlockQ5_1::zeroed(); n_blocks];
        (scalar.quantize_q5_1)(&src, &mut q5_1);
        assert_eq!(u32::from_le_bytes(q5_1[0].qh), 0xffff_0000);
        assert_eq!(u32::from_le_bytes(q5_0[1].qh), 0x0000_ffff);
        // Every byte is 128: nibble 0, and `8 << j` sets bits 3 to 31.
        assert_eq!((q5_0[3].qs, u32::from_le_bytes(q5_0[3].qh)), ([0; QK / 2], 0xffff_fff8));
        for simd in simd_tables() {
            check_all_quantizers(simd, &src, n_blocks).unwrap();
            check_dequantize("dequantize_q5_0", &q5_0, simd.dequantize_q5_0, scalar.dequantize_q5_0, 3).unwrap();
            check_dequantize("dequantize_q5_1", &q5_1, simd.dequantize_q5_1, scalar.dequantize_q5_1, 5).unwrap();
        }
    }

    #[test]
    fn mismatched_lengths_panic_in_every_table() {
        for isa in Isa::supported() {
            let kernels = ggml::kernels(isa).unwrap();
            let quantize = std::panic::catch_unwind(|| (kernels.quantize_q4_0)(&[0.0; 33], &mut [BlockQ4_0::zeroed()]));
            assert!(quantize.is_err(), "{isa:?}: quantize_q4_0 accepted 33 values for one block");
            let dequantize =
                std::panic::catch_unwind(|| (kernels.dequantize_q8_0)(&[BlockQ8_0::zeroed()], &mut [0.0; 31]));
            assert!(dequantize.is_err(), "{isa:?}: dequantize_q8_0 accepted 31 outputs for one block");
            let quantize = std::panic::catch_unwind(|| (kernels.quantize_q5_1)(&[0.0; 31], &mut [BlockQ5_1::zeroed()]));
            assert!(quantize.is_err(), "{isa:?}: quantize_q5_1 accepted 31 values for one block");
            let dequantize =
                std::panic::catch_unwind(|| (kernels.dequantize_q5_0)(&[BlockQ5_0::zeroed()], &mut [0.0; 33]));
            assert!(dequantize.is_err(), "{isa:?}: dequantize_q5_0 accepted 33 outputs for one block");
        }
    }

    use bytemuck::Zeroable;
}

/// Every [`linear::quantize_activations_i8`] kernel, and the dispatched function, against the
/// scalar kernel bit for bit: scale and values, over lengths `0..=4 * 32 + 3` (the AVX2 kernel
/// works on 32 values at a time), misaligned starts and special values.
mod activations_match_scalar {
    use lathe_quant::Isa;
    use lathe_quant::linear::{self, ActivationQuantizer};
    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;

    use super::ggml_kernels_match_scalar::{any_value, finite_value};

    const MAX_LEN: usize = 4 * 32 + 3;

    fn scalar() -> ActivationQuantizer {
        linear::quantize_activations_i8_kernel(Isa::Scalar).expect("scalar always runs")
    }

    /// The kernels other than scalar's that this CPU runs, whatever `LATHE_FORCE_ISA` says, and
    /// the dispatched function.
    fn candidates() -> Vec<(&'static str, ActivationQuantizer)> {
        let simd = Isa::supported().into_iter().filter(|&isa| isa != Isa::Scalar);
        let simd = simd.filter_map(|isa| Some((isa.name(), linear::quantize_activations_i8_kernel(isa)?)));
        simd.chain([("dispatched", linear::quantize_activations_i8 as ActivationQuantizer)]).collect()
    }

    /// A row at a misaligned offset inside a bigger buffer, with a misaligned destination.
    fn row(value: BoxedStrategy<f32>) -> impl Strategy<Value = (Vec<f32>, usize, usize)> {
        let row = prop_oneof![
            6 => vec(value.clone(), 0..=MAX_LEN),
            1 => (value, 0..=MAX_LEN).prop_map(|(v, len)| vec![v; len]),
            // Tiny rows: subnormal amax, scales at the smallest subnormal.
            1 => (vec(-1.0f32..1.0, 0..=MAX_LEN), prop::sample::select(&[1e-38f32, 1e-43, 1e-45][..]))
                .prop_map(|(v, scale)| v.into_iter().map(|x| x * scale).collect()),
            // Scale 1: values on and next to the half-integer ties.
            1 => vec((-127i32..127, -1i32..=1), 0..MAX_LEN).prop_map(|ties| {
                let probes = ties.into_iter().map(|(k, ulp)| {
                    let tie = k as f32 + 0.5;
                    match ulp { -1 => tie.next_down(), 0 => tie, _ => tie.next_up() }
                });
                [127.0].into_iter().chain(probes).collect()
            }),
        ];
        (row, 0usize..8, 0usize..32).prop_map(|(values, offset, dst_offset)| {
            let mut buffer = vec![7.0f32; offset];
            buffer.extend(values);
            (buffer, offset, dst_offset)
        })
    }

    fn check(x: &[f32], dst_offset: usize) -> Result<(), TestCaseError> {
        let mut expected = vec![0i8; x.len()];
        let expected_scale = scalar()(x, &mut expected);
        for (name, quantize) in candidates() {
            let mut actual = vec![99i8; dst_offset + x.len() + 3];
            let scale = quantize(x, &mut actual[dst_offset..dst_offset + x.len()]);
            check_output(name, x, (scale, expected_scale), &actual, dst_offset, &expected, 99)?;
        }
        Ok(())
    }

    /// One kernel's output against the expected: the same scale bits, the same values at
    /// `dst_offset`, and `sentinel` left untouched around them.
    fn check_output<T: Copy + PartialEq + std::fmt::Debug>(
        name: &str,
        x: &[f32],
        (scale, expected_scale): (f32, f32),
        actual: &[T],
        dst_offset: usize,
        expected: &[T],
        sentinel: T,
    ) -> Result<(), TestCaseError> {
        prop_assert_eq!(scale.to_bits(), expected_scale.to_bits(), "{}: scale {} vs {}", name, scale, expected_scale);
        prop_assert_eq!(&actual[dst_offset..dst_offset + x.len()], expected, "{}: values of {:?}", name, x);
        prop_assert!(actual[..dst_offset].iter().chain(&actual[dst_offset + x.len()..]).all(|&q| q == sentinel));
        Ok(())
    }

    /// The widened quantizer of every kernel equals the int8 one (scalar) on the scaled row,
    /// widened, with and without a per-channel input scale.
    fn check_wide(x: &[f32], dst_offset: usize, factors: &[f32]) -> Result<(), TestCaseError> {
        let input_scale: Vec<f32> = (0..x.len()).map(|i| factors[i % factors.len()]).collect();
        for input_scale in [None, Some(&input_scale[..])] {
            let scaled: Vec<f32> = match input_scale {
                Some(input_scale) => x.iter().zip(input_scale).map(|(v, s)| v * s).collect(),
                None => x.to_vec(),
            };
            let mut narrow = vec![0i8; x.len()];
            let expected_scale = scalar()(&scaled, &mut narrow);
            let expected: Vec<i16> = narrow.iter().map(|&q| i16::from(q)).collect();
            let kernels = Isa::supported()
                .into_iter()
                .filter_map(|isa| Some((isa.name(), linear::quantize_activations_i16_kernel(isa)?)));
            let kernels =
                kernels.chain([("dispatched", linear::quantize_activations_i16 as linear::WideActivationQuantizer)]);
            for (name, quantize) in kernels {
                let mut actual = vec![99i16; dst_offset + x.len() + 3];
                let scale = quantize(x, input_scale, &mut actual[dst_offset..dst_offset + x.len()]);
                check_output(name, x, (scale, expected_scale), &actual, dst_offset, &expected, 99)?;
            }
        }
        Ok(())
    }

    /// The 7-bit quantizer written out: `scale = amax / 63` (NaN skipped, at least the smallest
    /// subnormal), each value times `1 / scale` (divided by the scale when that overflows),
    /// rounded half to even, NaN to 0, clamped to `-63..=63`.
    fn seven_bit_reference(scaled: &[f32]) -> (f32, Vec<i8>) {
        let amax = scaled.iter().filter(|v| !v.is_nan()).fold(0.0f32, |amax, v| amax.max(v.abs()));
        if amax == 0.0 {
            return (0.0, vec![0; scaled.len()]);
        }
        let scale = (amax / 63.0).max(f32::from_bits(1));
        let inverse = 1.0 / scale;
        let quotient = |v: f32| if inverse.is_finite() { v * inverse } else { v / scale };
        let values = scaled.iter().map(|&v| quotient(v).round_ties_even().clamp(-63.0, 63.0) as i8).collect();
        (scale, values)
    }

    /// The 7-bit quantizer of every kernel against the formula, with and without a per-channel
    /// input scale.
    fn check_seven_bits(x: &[f32], dst_offset: usize, factors: &[f32]) -> Result<(), TestCaseError> {
        let input_scale: Vec<f32> = (0..x.len()).map(|i| factors[i % factors.len()]).collect();
        for input_scale in [None, Some(&input_scale[..])] {
            let scaled: Vec<f32> = match input_scale {
                Some(input_scale) => x.iter().zip(input_scale).map(|(v, s)| v * s).collect(),
                None => x.to_vec(),
            };
            let (expected_scale, expected) = seven_bit_reference(&scaled);
            let kernels = Isa::supported()
                .into_iter()
                .filter_map(|isa| Some((isa.name(), linear::quantize_activations_i7_kernel(isa)?)));
            let kernels =
                kernels.chain([("dispatched", linear::quantize_activations_i7 as linear::SevenBitActivationQuantizer)]);
            for (name, quantize) in kernels {
                let mut actual = vec![99i8; dst_offset + x.len() + 3];
                let scale = quantize(x, input_scale, &mut actual[dst_offset..dst_offset + x.len()]);
                check_output(name, x, (scale, expected_scale), &actual, dst_offset, &expected, 99)?;
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn seven_bit_kernels_match_the_formula(
            (buffer, offset, dst_offset) in row(any_value()),
            factors in vec(prop_oneof![4 => 0.01f32..100.0, 1 => Just(0.0f32), 1 => Just(f32::INFINITY)], 1..7),
        ) {
            check_seven_bits(&buffer[offset..], dst_offset, &factors)?;
        }

        #[test]
        fn kernels_match_scalar_on_finite_input((buffer, offset, dst_offset) in row(finite_value())) {
            check(&buffer[offset..], dst_offset)?;
        }

        #[test]
        fn widened_kernels_match_the_int8_quantizer(
            (buffer, offset, dst_offset) in row(any_value()),
            factors in vec(prop_oneof![4 => 0.01f32..100.0, 1 => Just(0.0f32), 1 => Just(f32::INFINITY)], 1..7),
        ) {
            check_wide(&buffer[offset..], dst_offset, &factors)?;
        }

        #[test]
        fn kernels_match_scalar_on_nan_and_infinities((buffer, offset, dst_offset) in row(any_value())) {
            check(&buffer[offset..], dst_offset)?;
        }
    }

    #[test]
    fn mismatched_lengths_panic_in_every_kernel() {
        for isa in Isa::supported() {
            let quantize = linear::quantize_activations_i8_kernel(isa).expect("a supported isa has a kernel");
            assert!(std::panic::catch_unwind(|| quantize(&[1.0; 33], &mut [0; 32])).is_err(), "{isa:?}");
            let quantize = linear::quantize_activations_i16_kernel(isa).expect("a supported isa has a kernel");
            assert!(std::panic::catch_unwind(|| quantize(&[1.0; 33], None, &mut [0; 32])).is_err(), "{isa:?}");
            assert!(
                std::panic::catch_unwind(|| quantize(&[1.0; 33], Some(&[1.0; 32]), &mut [0; 33])).is_err(),
                "{isa:?}"
            );
            let quantize = linear::quantize_activations_i7_kernel(isa).expect("a supported isa has a kernel");
            assert!(std::panic::catch_unwind(|| quantize(&[1.0; 33], None, &mut [0; 32])).is_err(), "{isa:?}");
        }
    }
}

/// `tests/data/kquants.safetensors` (made by `tests/data/make_kquants.py`): random K-quant
/// blocks and the gguf package's dequantization of them, compared bit for bit.
fn check_k_quant<B: bytemuck::Pod>(name: &str, dequantize: fn(&[B], &mut [f32])) {
    let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/kquants.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let blocks: Vec<B> = bytemuck::pod_collect_to_vec(file.tensor(&format!("{name}.blocks")).unwrap().data());
    let expected: Vec<f32> = bytemuck::pod_collect_to_vec(file.tensor(&format!("{name}.dequantized")).unwrap().data());
    let mut values = vec![f32::NAN; blocks.len() * 256];
    dequantize(&blocks, &mut values);
    for (i, (a, b)) in values.iter().zip(&expected).enumerate() {
        assert_eq!(a.to_bits(), b.to_bits(), "{name}: value {i} (block {}): {a} vs {b}", i / 256);
    }
}

#[test]
fn k_quants_dequantize_like_the_gguf_package() {
    check_k_quant("Q2_K", ggml::dequantize_q2_k);
    check_k_quant("Q3_K", ggml::dequantize_q3_k);
    check_k_quant("Q4_K", ggml::dequantize_q4_k);
    check_k_quant("Q5_K", ggml::dequantize_q5_k);
    check_k_quant("Q6_K", ggml::dequantize_q6_k);
}
