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
    check_format("Q5_1", ggml::quantize_q5_1, ggml::dequantize_q5_1);
}
