//! lathe-tensor end to end: write, read back, stream with bounded residency, GGUF views.

use std::path::Path;

use half::{bf16, f16};
use lathe_tensor::{Checkpoint, Dtype, Error, Gguf, GgufType, GgufValue, SafeTensors, SafeTensorsWriter, TensorSpec};
use proptest::prelude::*;

fn write(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)], metadata: &[(String, String)]) {
    let specs = tensors.iter().map(|(name, dtype, shape, _)| TensorSpec::new(*name, *dtype, shape.clone())).collect();
    let mut writer = SafeTensorsWriter::create(path, specs, metadata).unwrap();
    for (name, _, _, bytes) in tensors {
        writer.write_tensor(name, bytes).unwrap();
    }
    writer.finish().unwrap();
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn written_files_read_back_and_match_the_reference_crate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let halves: Vec<u8> = [1.5f32, -0.25, 65504.0].iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect();
    let brains: Vec<u8> = [3.0f32, -1.0e30].iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect();
    let tensors = [
        ("w", Dtype::F32, vec![2, 3], f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])),
        ("h", Dtype::F16, vec![3], halves),
        ("b", Dtype::BF16, vec![2], brains),
        ("empty", Dtype::F32, vec![0, 4], vec![]),
        ("ids", Dtype::I64, vec![2], [7i64, -1].iter().flat_map(|v| v.to_le_bytes()).collect()),
    ];
    write(&path, &tensors, &[("format".to_owned(), "pt".to_owned())]);

    let file = SafeTensors::open(&path).unwrap();
    assert_eq!(file.metadata(), [("format".to_owned(), "pt".to_owned())]);
    assert_eq!(file.data_start() % 8, 0, "data section is 8-byte aligned");
    assert_eq!(file.tensor("w").unwrap().to_f32().unwrap(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(file.tensor("w").unwrap().as_slice::<f32>().unwrap(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(file.tensor("h").unwrap().to_f32().unwrap(), [1.5, -0.25, 65504.0]);
    assert_eq!(file.tensor("b").unwrap().to_f32().unwrap(), [3.0, bf16::from_f32(-1.0e30).to_f32()]);
    assert_eq!(file.tensor("empty").unwrap().shape(), [0, 4]);
    assert!(matches!(file.tensor("ids").unwrap().to_f32(), Err(Error::NotConvertible { .. })));
    assert!(matches!(file.tensor("nope"), Err(Error::NoSuchTensor { tensor, .. }) if tensor == "nope"));

    // The reference reader agrees on every tensor.
    let bytes = std::fs::read(&path).unwrap();
    let reference = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for view in file.iter() {
        let theirs = reference.tensor(view.name()).unwrap();
        assert_eq!(theirs.shape(), view.shape());
        assert_eq!(theirs.data(), view.bytes());
        assert_eq!(format!("{:?}", theirs.dtype()), view.dtype().name());
    }
}

#[test]
fn half_conversion_handles_unaligned_data_and_long_tails() {
    // An odd-sized first tensor leaves the next one at an odd offset: no zero-copy view, but the
    // conversion still works, through every chunk and the tail.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.safetensors");
    let values: Vec<f32> = (0..10_001).map(|i| (i as f32 - 5000.0) * 0.125).collect();
    let halves: Vec<u8> = values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect();
    let brains: Vec<u8> = values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect();
    write(
        &path,
        &[
            ("pad", Dtype::U8, vec![1], vec![0]),
            ("h", Dtype::F16, vec![values.len()], halves),
            ("b", Dtype::BF16, vec![values.len()], brains),
        ],
        &[],
    );
    let file = SafeTensors::open(&path).unwrap();
    let h = file.tensor("h").unwrap();
    assert!(h.info().offset % 2 == 1 && h.as_slice::<u16>().is_none());
    let expected_h: Vec<f32> = values.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
    let expected_b: Vec<f32> = values.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
    assert_eq!(h.to_f32().unwrap(), expected_h);
    assert_eq!(file.tensor("b").unwrap().to_f32().unwrap(), expected_b);
}

#[test]
fn writer_rejects_wrong_order_size_and_missing_tensors_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.safetensors");
    let specs = || vec![TensorSpec::new("a", Dtype::F32, [2]), TensorSpec::new("b", Dtype::F16, [3])];

    let mut writer = SafeTensorsWriter::create(&path, specs(), &[]).unwrap();
    let err = writer.write_tensor("b", &[0; 6]).unwrap_err();
    assert!(matches!(&err, Error::WriteOrder { expected, found, .. } if expected == "a" && found == "b"), "{err}");
    let err = writer.write_tensor("a", &[0; 7]).unwrap_err();
    assert!(matches!(err, Error::WriteSize { expected: 8, found: 7, .. }));
    writer.write_tensor("a", &[0; 8]).unwrap();
    let err = writer.finish().unwrap_err();
    assert!(matches!(&err, Error::Incomplete { missing, written: 1, declared: 2, .. } if missing == "b"), "{err}");

    // Dropped mid-way: nothing at the target, no temporary left behind.
    let mut writer = SafeTensorsWriter::create(&path, specs(), &[]).unwrap();
    writer.write_tensor("a", &[0; 8]).unwrap();
    drop(writer);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    let dup = vec![TensorSpec::new("a", Dtype::F32, [1]), TensorSpec::new("a", Dtype::F32, [1])];
    assert!(matches!(SafeTensorsWriter::create(&path, dup, &[]), Err(Error::DuplicateTensor { .. })));
    let gguf_only = vec![TensorSpec::new("q", Dtype::Q4_0, [32])];
    assert!(matches!(SafeTensorsWriter::create(&path, gguf_only, &[]), Err(Error::NotSafetensorsDtype { .. })));
    let huge = vec![TensorSpec::new("h", Dtype::F32, [usize::MAX, 2])];
    assert!(matches!(SafeTensorsWriter::create(&path, huge, &[]), Err(Error::ShapeOverflow { .. })));
}

#[test]
fn an_existing_target_survives_a_failed_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    write(&path, &[("a", Dtype::F32, vec![1], f32_bytes(&[1.0]))], &[]);
    let before = std::fs::read(&path).unwrap();
    let mut writer = SafeTensorsWriter::create(&path, vec![TensorSpec::new("a", Dtype::F32, [2])], &[]).unwrap();
    assert!(writer.write_tensor("a", &[0; 3]).is_err());
    assert!(writer.finish().is_err());
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn streaming_keeps_about_one_tensor_resident() {
    // 48 tensors of 1 MiB: a plain pass over the views ends with the whole file resident,
    // the streaming pass never holds much more than one tensor.
    const TENSOR: usize = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.safetensors");
    let names: Vec<String> = (0..48).map(|i| format!("t{i:02}")).collect();
    let specs = names.iter().map(|name| TensorSpec::new(name.clone(), Dtype::F32, [TENSOR / 4])).collect();
    let mut writer = SafeTensorsWriter::create(&path, specs, &[]).unwrap();
    for (i, name) in names.iter().enumerate() {
        writer.write_tensor(name, &vec![i as u8; TENSOR]).unwrap();
    }
    writer.finish().unwrap();

    let file = SafeTensors::open(&path).unwrap();
    let Some(after_open) = file.resident_bytes() else {
        eprintln!("no per-mapping resident size on this OS: nothing to measure");
        return;
    };
    assert!(after_open < 256 << 10, "opening touched {after_open} bytes");
    let mut peak = 0;
    let mut checksum = 0u64;
    file.stream(|view| {
        checksum += view.bytes().iter().map(|&b| u64::from(b)).sum::<u64>();
        peak = peak.max(file.resident_bytes().unwrap());
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(checksum, (0..48u64).map(|i| i * TENSOR as u64).sum::<u64>());
    // One tensor plus the kernel's fault-around window and page rounding.
    assert!(peak <= TENSOR as u64 + (1 << 20), "streaming peak {peak} bytes");

    let file = SafeTensors::open(&path).unwrap();
    let mut plain = 0u64;
    for view in file.iter() {
        plain += view.bytes().iter().map(|&b| u64::from(b)).sum::<u64>();
    }
    assert_eq!(plain, checksum);
    assert!(file.resident_bytes().unwrap() >= 40 * TENSOR as u64, "the contrast: a plain pass keeps pages");
}

#[test]
fn sharded_index_errors_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("s1.safetensors"), &[("a", Dtype::F32, vec![1], f32_bytes(&[1.0]))], &[]);
    write(&dir.path().join("s2.safetensors"), &[("a", Dtype::F32, vec![1], f32_bytes(&[2.0]))], &[]);
    let index = r#"{"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}"#;
    std::fs::write(dir.path().join("model.safetensors.index.json"), index).unwrap();
    let err = Checkpoint::open(dir.path()).unwrap_err();
    assert!(matches!(&err, Error::DuplicateTensor { tensor, .. } if tensor == "a"), "{err}");

    let index = r#"{"weight_map": {"a": "../s1.safetensors"}}"#;
    std::fs::write(dir.path().join("model.safetensors.index.json"), index).unwrap();
    assert!(matches!(Checkpoint::open(dir.path()), Err(Error::BadIndex { .. })));

    let index = r#"{"weight_map": {"a": "s1.safetensors", "z": "s1.safetensors"}}"#;
    std::fs::write(dir.path().join("model.safetensors.index.json"), index).unwrap();
    let err = Checkpoint::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("tensor `z`"), "{err}");

    let index = r#"{"weight_map": {"a": "s1.safetensors"}}"#;
    std::fs::write(dir.path().join("model.safetensors.index.json"), index).unwrap();
    let checkpoint = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(checkpoint.tensor("a").unwrap().to_f32().unwrap(), [1.0]);
}

/// A minimal GGUF v3 writer for tests: `kvs` are (key, type id, encoded value).
fn gguf(kvs: &[(&str, u32, Vec<u8>)], tensors: &[(&str, &[u64], u32, u64)], alignment: u64, data: &[u8]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((kvs.len() as u64).to_le_bytes());
    let string = |out: &mut Vec<u8>, s: &str| {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    };
    for (key, type_id, value) in kvs {
        string(&mut out, key);
        out.extend(type_id.to_le_bytes());
        out.extend(value);
    }
    for (name, dims, type_id, offset) in tensors {
        string(&mut out, name);
        out.extend((dims.len() as u32).to_le_bytes());
        dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
        out.extend(type_id.to_le_bytes());
        out.extend(offset.to_le_bytes());
    }
    out.resize(out.len().next_multiple_of(alignment as usize), 0);
    out.extend(data);
    out
}

#[test]
fn gguf_metadata_tensors_and_views() {
    let mut nested = 9u32.to_le_bytes().to_vec(); // array of arrays of u8
    nested.extend(2u64.to_le_bytes());
    for row in [[1u8, 2], [3, 4]] {
        nested.extend(0u32.to_le_bytes());
        nested.extend(2u64.to_le_bytes());
        nested.extend(row);
    }
    let mut strings = 8u32.to_le_bytes().to_vec();
    strings.extend(2u64.to_le_bytes());
    for s in ["a", "bc"] {
        strings.extend((s.len() as u64).to_le_bytes());
        strings.extend(s.as_bytes());
    }
    let kvs = [
        ("general.alignment", 4, 64u32.to_le_bytes().to_vec()),
        ("f", 6, 0.5f32.to_le_bytes().to_vec()),
        ("flag", 7, vec![1]),
        ("i64", 11, (-3i64).to_le_bytes().to_vec()),
        ("name", 8, [2u64.to_le_bytes().to_vec(), b"hi".to_vec()].concat()),
        ("nested", 9, nested),
        ("strings", 9, strings),
    ];
    let mut data = f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    data.resize(64, 0);
    data.extend(vec![0u8; 18]); // one Q4_0 block
    let bytes = gguf(&kvs, &[("w", &[3, 2], 0, 0), ("q", &[32], 2, 64)], 64, &data);
    let file = Gguf::from_bytes("test.gguf", bytes).unwrap();
    assert_eq!((file.version(), file.alignment()), (3, 64));
    assert_eq!(file.data_start() % 64, 0);
    assert_eq!(file.get("f"), Some(&GgufValue::F32(0.5)));
    assert_eq!(file.get("flag"), Some(&GgufValue::Bool(true)));
    assert_eq!(file.get("i64"), Some(&GgufValue::I64(-3)));
    assert_eq!(file.get("name").and_then(GgufValue::as_str), Some("hi"));
    let row = |a, b| GgufValue::Array(GgufType::U8, vec![GgufValue::U8(a), GgufValue::U8(b)]);
    assert_eq!(file.get("nested"), Some(&GgufValue::Array(GgufType::Array, vec![row(1, 2), row(3, 4)])));
    let strings =
        GgufValue::Array(GgufType::String, vec![GgufValue::String("a".into()), GgufValue::String("bc".into())]);
    assert_eq!(file.get("strings"), Some(&strings));
    let w = file.tensor("w").unwrap();
    assert_eq!((w.dtype(), w.shape()), (Dtype::F32, &[3usize, 2][..]));
    assert_eq!(w.to_f32().unwrap(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let q = file.tensor("q").unwrap();
    assert_eq!((q.dtype(), q.bytes().len(), q.info().offset), (Dtype::Q4_0, 18, file.data_start() + 64));
}

#[test]
fn gguf_version_2_reads_like_version_3() {
    // v2 changed no layout that lathe reads (v1 had 32-bit counts and is rejected).
    let mut bytes = gguf(
        &[("general.name", 8, [1u64.to_le_bytes().to_vec(), b"x".to_vec()].concat())],
        &[("w", &[2], 0, 0)],
        32,
        &f32_bytes(&[1.0, 2.0]),
    );
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let file = Gguf::from_bytes("v2.gguf", bytes.clone()).unwrap();
    assert_eq!(file.version(), 2);
    assert_eq!(file.tensor("w").unwrap().to_f32().unwrap(), [1.0, 2.0]);
    bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert!(matches!(Gguf::from_bytes("v1.gguf", bytes), Err(Error::UnsupportedVersion { version: 1, .. })));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any set of tensors written streams back byte for byte, in order, with the same specs.
    #[test]
    fn write_then_read_round_trips(
        tensors in prop::collection::vec(
            (prop::sample::select(vec![Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::U8, Dtype::I64]),
             prop::collection::vec(0usize..5, 0..4)),
            0..6),
        seed in any::<u8>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.safetensors");
        let specs: Vec<TensorSpec> = tensors.iter().enumerate()
            .map(|(i, (dtype, shape))| TensorSpec::new(format!("t{i}"), *dtype, shape.clone()))
            .collect();
        let data: Vec<Vec<u8>> = specs.iter().enumerate().map(|(i, spec)| {
            let n: usize = spec.shape.iter().product();
            (0..n * spec.dtype.layout().bytes as usize).map(|j| (j as u8).wrapping_mul(seed).wrapping_add(i as u8)).collect()
        }).collect();
        let mut writer = SafeTensorsWriter::create(&path, specs.clone(), &[]).unwrap();
        for (spec, bytes) in specs.iter().zip(&data) {
            writer.write_tensor(&spec.name, bytes).unwrap();
        }
        writer.finish().unwrap();
        let file = SafeTensors::open(&path).unwrap();
        let mut seen = Vec::new();
        file.stream(|view| {
            seen.push((TensorSpec::new(view.name(), view.dtype(), view.shape()), view.bytes().to_vec()));
            Ok::<_, Error>(())
        }).unwrap();
        let expected: Vec<_> = specs.into_iter().zip(data).collect();
        prop_assert_eq!(seen, expected);
    }
}
