//! Checkpoint open time and F16/BF16 -> F32 conversion throughput.
//!
//! The open bench uses the real MiniLM and SmolLM2 files when `LATHE_MODELS_DIR` is set (as
//! `cargo xtask bench` does), and a synthetic checkpoint of MiniLM's shape otherwise.

use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use half::{bf16, f16};
use lathe_tensor::{Dtype, Gguf, SafeTensors, SafeTensorsWriter, TensorSpec};

fn models_dir() -> Option<PathBuf> {
    std::env::var_os("LATHE_MODELS_DIR").map(PathBuf::from)
}

/// 104 tensors, like MiniLM's header, with small data.
fn synthetic_checkpoint(dir: &Path) -> PathBuf {
    let path = dir.join("synthetic.safetensors");
    let specs: Vec<TensorSpec> =
        (0..104).map(|i| TensorSpec::new(format!("encoder.layer.{i}.weight"), Dtype::F32, [16, 16])).collect();
    let mut writer = SafeTensorsWriter::create(&path, specs.clone(), &[("format".into(), "pt".into())]).unwrap();
    for spec in &specs {
        writer.write_tensor(&spec.name, &[0u8; 1024]).unwrap();
    }
    writer.finish().unwrap();
    path
}

fn open(c: &mut Criterion) {
    let temp = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("open");
    let minilm = models_dir().map(|d| d.join("all-MiniLM-L6-v2/model.safetensors")).filter(|p| p.exists());
    let (label, path) = match minilm {
        Some(path) => ("minilm_safetensors", path),
        None => ("synthetic_safetensors_104", synthetic_checkpoint(temp.path())),
    };
    group.bench_function(label, |b| b.iter(|| black_box(SafeTensors::open(&path).unwrap().tensors().len())));
    if let Some(gguf) = models_dir().map(|d| d.join("SmolLM2-135M-Instruct.Q4_1.gguf")).filter(|p| p.exists()) {
        // Parses 33 keys including the 49k-token vocabulary and the merges.
        group.bench_function("smollm2_gguf", |b| b.iter(|| black_box(Gguf::open(&gguf).unwrap().tensors().len())));
    }
    group.finish();
}

/// Sizes whose source plus destination sit in L1, L2, L3 and DRAM on Zen 3 (32 KiB, 512 KiB,
/// 32 MiB L3 shared).
const SIZES: [(&str, usize); 4] = [("l1", 4 << 10), ("l2", 64 << 10), ("l3", 1 << 20), ("dram", 16 << 20)];

fn to_f32(c: &mut Criterion) {
    let mut group = c.benchmark_group("to_f32");
    type Codec = (fn(f32) -> u16, fn(u16) -> f32);
    let codecs: [(Dtype, Codec); 2] = [
        (Dtype::F16, (|v| f16::from_f32(v).to_bits(), |bits| f16::from_bits(bits).to_f32())),
        (Dtype::BF16, (|v| bf16::from_f32(v).to_bits(), |bits| bf16::from_bits(bits).to_f32())),
    ];
    for (dtype, (encode, decode)) in codecs {
        for (level, n) in SIZES {
            let bytes: Vec<u8> = (0..n).flat_map(|i| encode((i % 1000) as f32 * 0.01 - 5.0).to_le_bytes()).collect();
            let file = in_memory(dtype, n, bytes);
            let view = file.tensor("x").unwrap();
            let mut dst = vec![0f32; n];
            view.to_f32_into(&mut dst).unwrap();
            // Check the answer once, against the scalar decoding of every element.
            for (i, &value) in dst.iter().enumerate() {
                assert_eq!(value, decode(u16::from_le_bytes([view.bytes()[2 * i], view.bytes()[2 * i + 1]])));
            }
            // Bytes read plus bytes written: the kernel is memory-bound from L3 on.
            group.throughput(Throughput::Bytes((n * (2 + 4)) as u64));
            group.bench_with_input(BenchmarkId::new(dtype.name(), level), &n, |b, _| {
                b.iter(|| view.to_f32_into(black_box(&mut dst)).unwrap())
            });
        }
    }
    group.finish();
}

fn in_memory(dtype: Dtype, n: usize, bytes: Vec<u8>) -> SafeTensors {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    let mut writer = SafeTensorsWriter::create(&path, vec![TensorSpec::new("x", dtype, [n])], &[]).unwrap();
    writer.write_tensor("x", &bytes).unwrap();
    writer.finish().unwrap();
    SafeTensors::from_bytes("x.safetensors", std::fs::read(&path).unwrap()).unwrap()
}

criterion_group!(benches, open, to_f32);
criterion_main!(benches);
