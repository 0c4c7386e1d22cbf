//! Hostile input: every file in `tests/data/malformed` is rejected with its own error variant
//! (never a panic), and randomly damaged valid files either parse into views that stay inside
//! the file or fail cleanly.
//!
//! The malformed files are written by `tests/data/make_malformed.py`; the table below must name
//! every one of them, so a new file cannot land without an expectation.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use lathe::tensor::{Dtype, Error, Gguf, MAX_DIMS, MAX_HEADER_LEN, MAX_NESTING, SafeTensors, TensorView};
use proptest::prelude::*;

type Check = fn(&Error) -> bool;

/// One table row: the file name, a `matches!` on the error it must produce, and that pattern as
/// text for the failure message.
macro_rules! expect {
    ($file:literal => $pattern:pat $(if $guard:expr)?) => {
        ($file, (|error: &Error| matches!(error, $pattern $(if $guard)?)) as Check, stringify!($pattern $(if $guard)?))
    };
}

const U64_MAX: u64 = u64::MAX;

fn expectations() -> Vec<(&'static str, Check, &'static str)> {
    vec![
        // safetensors
        expect!("empty.safetensors" => Error::Truncated { what, offset: 0, end: 8, file_len: 0, .. }
            if what == "header length"),
        expect!("truncated_length_prefix.safetensors" => Error::Truncated { what, offset: 0, end: 8, file_len: 5, .. }
            if what == "header length"),
        expect!("header_past_eof.safetensors" => Error::Truncated { what, offset: 8, end: 72, file_len: 10, .. }
            if what == "JSON header"),
        expect!("header_too_large.safetensors" => Error::HeaderTooLarge { len, limit: MAX_HEADER_LEN, .. }
            if *len == MAX_HEADER_LEN + 1),
        expect!("header_invalid_utf8.safetensors" => Error::HeaderUtf8 { offset: 11, .. }),
        expect!("header_json_syntax.safetensors" => Error::HeaderJson { message, .. } if message.contains("EOF")),
        expect!("header_empty.safetensors" => Error::HeaderJson { message, .. } if message.contains("EOF")),
        expect!("header_not_object.safetensors" => Error::HeaderJson { message, .. }
            if message.contains("expected a JSON object")),
        expect!("entry_not_object.safetensors" => Error::InvalidEntry { tensor, message, .. }
            if tensor == "w" && message.contains("not a JSON object")),
        expect!("entry_unknown_field.safetensors" => Error::InvalidEntry { tensor, message, .. }
            if tensor == "w" && message.contains("`offsets`")),
        expect!("missing_dtype.safetensors" => Error::InvalidEntry { tensor, message, .. }
            if tensor == "w" && message.contains("`dtype`")),
        expect!("unknown_dtype.safetensors" => Error::UnknownDtype { tensor, dtype, .. } if tensor == "w" && dtype == "F12"),
        expect!("quantized_dtype.safetensors" => Error::UnknownDtype { tensor, dtype, .. }
            if tensor == "w" && dtype == "Q4_0"),
        expect!("negative_shape.safetensors" => Error::InvalidEntry { tensor, message, .. }
            if tensor == "w" && message.contains("`shape`")),
        expect!("float_shape.safetensors" => Error::InvalidEntry { tensor, message, .. }
            if tensor == "w" && message.contains("`shape`")),
        expect!("data_offsets_arity.safetensors" => Error::InvalidEntry { tensor, message, .. }
            if tensor == "w" && message.contains("`data_offsets`")),
        expect!("data_offsets_start_after_end.safetensors" => Error::InvalidEntry { tensor, message, .. }
            if tensor == "w" && message.contains("start 8 is past its end 4")),
        expect!("shape_overflow.safetensors" => Error::ShapeOverflow { tensor, shape, .. }
            if tensor == "w" && shape == &[1 << 32, 1 << 32]),
        expect!("byte_len_overflow.safetensors" => Error::SizeMismatch { tensor, dtype, expected: U64_MAX, found: 8, .. }
            if tensor == "w" && dtype == "F64"),
        expect!("size_mismatch.safetensors" => Error::SizeMismatch { tensor, dtype, expected: 8, found: 4, .. }
            if tensor == "w" && dtype == "F32"),
        expect!("sub_byte_misfit.safetensors" => Error::BlockMisfit { tensor, dtype, shape, block: 2, .. }
            if tensor == "w" && dtype == "F4" && shape == &[3]),
        expect!("offsets_out_of_bounds.safetensors" => Error::OutOfBounds { tensor, start, end, limit, .. }
            if tensor == "w" && *end == start + 8 && *limit == start + 4),
        expect!("offsets_near_u64_max.safetensors" => Error::OutOfBounds { tensor, start: U64_MAX, end: U64_MAX, .. }
            if tensor == "w"),
        expect!("overlap.safetensors" => Error::Overlap { first, second, .. } if first == "a" && second == "b"),
        expect!("gap.safetensors" => Error::Gap { gap: 4, before, .. } if before == "tensor `b`"),
        expect!("trailing_bytes.safetensors" => Error::Gap { gap: 4, before, .. } if before == "the end of the file"),
        expect!("data_not_at_zero.safetensors" => Error::Gap { gap: 4, before, .. } if before == "tensor `w`"),
        expect!("duplicate_tensor.safetensors" => Error::DuplicateTensor { tensor, .. } if tensor == "w"),
        expect!("metadata_non_string.safetensors" => Error::BadMetadata { message, .. } if message.contains("`format`")),
        expect!("metadata_not_object.safetensors" => Error::BadMetadata { message, .. }
            if message.contains("not a JSON object")),
        // GGUF
        expect!("empty.gguf" => Error::Truncated { what, offset: 0, end: 4, file_len: 0, .. } if what == "GGUF magic"),
        expect!("short.gguf" => Error::Truncated { what, offset: 4, end: 8, file_len: 6, .. } if what == "GGUF version"),
        expect!("bad_magic.gguf" => Error::BadMagic { found: [b'G', b'G', b'M', b'L'], .. }),
        expect!("version_1.gguf" => Error::UnsupportedVersion { version: 1, hint, .. } if hint.contains("obsolete")),
        expect!("version_4.gguf" => Error::UnsupportedVersion { version: 4, hint: "", .. }),
        expect!("version_big_endian.gguf" => Error::UnsupportedVersion { version: 0x0300_0000, hint, .. }
            if hint.contains("big-endian")),
        expect!("tensor_count_absurd.gguf" => Error::CountTooLarge { what: "tensor", count, offset: 8, remaining: 48, .. }
            if *count == 1 << 60),
        expect!("kv_count_absurd.gguf" => Error::CountTooLarge {
            what: "key-value", count: 1_000_000, offset: 16, remaining: 40, ..
        }),
        expect!("array_count_absurd.gguf" => Error::CountTooLarge { what: "array element", count, offset: 41, .. }
            if *count == 1 << 40),
        expect!("string_len_past_eof.gguf" => Error::Truncated { what, offset: 32, end: 1032, file_len: 56, .. }
            if what == "key of key-value pair 0"),
        expect!("string_value_past_eof.gguf" => Error::Truncated { what, offset: 56, end: 1056, file_len: 61, .. }
            if what == "value of `general.name`"),
        expect!("key_invalid_utf8.gguf" => Error::InvalidUtf8 { what, offset: 32, .. } if what == "key of key-value pair 0"),
        expect!("tensor_name_invalid_utf8.gguf" => Error::InvalidUtf8 { what, offset: 32, .. }
            if what == "name of tensor 0"),
        expect!("unknown_value_type.gguf" => Error::UnknownValueType { key, type_id: 13, offset: 41, .. }
            if key == "general.x"),
        expect!("unknown_array_element_type.gguf" => Error::UnknownValueType { key, type_id: 99, offset: 45, .. }
            if key == "general.x"),
        expect!("nesting_too_deep.gguf" => Error::NestingTooDeep { key, limit: MAX_NESTING, offset, .. }
            if key == "deep" && *offset == 40 + 12 * MAX_NESTING as u64),
        expect!("duplicate_key.gguf" => Error::DuplicateKey { key, offset: 69, .. } if key == "general.architecture"),
        expect!("duplicate_tensor.gguf" => Error::DuplicateTensor { tensor, .. } if tensor == "w"),
        expect!("too_many_dims.gguf" => Error::TooManyDims { tensor, n_dims: 5, offset: 33, limit: MAX_DIMS, .. }
            if tensor == "w"),
        expect!("unknown_ggml_type_4.gguf" => Error::UnknownGgmlType { tensor, type_id: 4, offset: 45, .. } if tensor == "w"),
        expect!("unknown_ggml_type_1000.gguf" => Error::UnknownGgmlType { tensor, type_id: 1000, offset: 45, .. }
            if tensor == "w"),
        expect!("shape_overflow.gguf" => Error::ShapeOverflow { tensor, shape, .. }
            if tensor == "w" && shape == &[1 << 32, 1 << 32]),
        expect!("block_misfit_q4_0.gguf" => Error::BlockMisfit { tensor, dtype, shape, block: 32, .. }
            if tensor == "w" && dtype == "Q4_0" && shape == &[33, 32]),
        expect!("misaligned_offset.gguf" => Error::Misaligned { tensor, offset: 4, alignment: 32, .. } if tensor == "w"),
        expect!("data_past_eof.gguf" => Error::OutOfBounds { tensor, start: 64, end: 96, limit: 80, .. } if tensor == "w"),
        expect!("offset_past_eof.gguf" => Error::OutOfBounds { tensor, start: U64_MAX, end: U64_MAX, limit: 96, .. }
            if tensor == "w"),
        expect!("overlap.gguf" => Error::Overlap { first, second, offset: 128, .. } if first == "a" && second == "b"),
        expect!("alignment_not_power_of_two.gguf" => Error::BadAlignment { message, .. } if message.contains("is 24")),
        expect!("alignment_zero.gguf" => Error::BadAlignment { message, .. } if message.contains("is 0")),
        expect!("alignment_wrong_type.gguf" => Error::BadAlignment { message, .. } if message.contains("UINT64")),
        expect!("truncated_tensor_infos.gguf" => Error::Truncated { what, offset: 95, end: 103, file_len: 95, .. }
            if what == "dimension 1 of tensor `weight`"),
    ]
}

fn malformed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/malformed")
}

/// Opens `path` with the parser its extension names; `None` for an unknown extension.
fn open(path: &Path) -> Option<Result<Vec<String>, Error>> {
    let names = |infos: &[lathe::tensor::TensorInfo]| infos.iter().map(|info| info.name.clone()).collect();
    match path.extension()?.to_str()? {
        "safetensors" => Some(SafeTensors::open(path).map(|file| names(file.tensors()))),
        "gguf" => Some(Gguf::open(path).map(|file| names(file.tensors()))),
        _ => None,
    }
}

#[test]
fn every_malformed_file_fails_with_its_error() {
    let dir = malformed_dir();
    let mut failures = Vec::new();
    for (name, check, pattern) in expectations() {
        let path = dir.join(name);
        match open(&path) {
            None => failures.push(format!("{name}: neither .safetensors nor .gguf")),
            Some(Ok(tensors)) => failures.push(format!("{name}: accepted, with tensors {tensors:?}")),
            Some(Err(error)) => {
                if !check(&error) {
                    failures.push(format!("{name}: expected {pattern}\n    got {error:?}"));
                }
                let message = error.to_string();
                if !message.contains(name) {
                    failures.push(format!("{name}: message does not name the file: {message}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of the malformed files misbehave:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn every_malformed_file_has_an_expectation() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(malformed_dir())
        .expect("tests/data/malformed exists (run tests/data/make_malformed.py)")
        .map(|entry| entry.expect("readable folder entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name != "README.md")
        .collect();
    let table: BTreeSet<String> = expectations().iter().map(|(name, ..)| name.to_string()).collect();
    assert_eq!(table.len(), expectations().len(), "a file is listed twice in the table");
    let missing: Vec<_> = on_disk.difference(&table).collect();
    let stale: Vec<_> = table.difference(&on_disk).collect();
    assert!(missing.is_empty(), "files without an expectation in tests/malformed.rs: {missing:?}");
    assert!(stale.is_empty(), "expectations without a file (rerun tests/data/make_malformed.py): {stale:?}");
    assert!(on_disk.len() >= 30, "only {} malformed files", on_disk.len());
}

/// A valid safetensors file with F32, F16 and BF16 tensors, an empty tensor and metadata; the
/// header is padded with spaces to a multiple of 8 as the reference writer does.
fn valid_safetensors() -> Vec<u8> {
    let tensors: [(&str, &str, &[u64], u64); 4] =
        [("a", "F32", &[2, 2], 16), ("b", "F16", &[3], 6), ("empty", "U8", &[0, 5], 0), ("c", "BF16", &[1], 2)];
    let mut entries = vec![r#""__metadata__":{"format":"pt"}"#.to_owned()];
    let mut offset = 0;
    for (name, dtype, shape, len) in tensors {
        entries.push(format!(
            r#""{name}":{{"dtype":"{dtype}","shape":{shape:?},"data_offsets":[{offset},{}]}}"#,
            offset + len
        ));
        offset += len;
    }
    let mut header = format!("{{{}}}", entries.join(",")).into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&header);
    bytes.extend((0..offset as u8).map(|i| i.wrapping_mul(37)));
    bytes
}

fn gguf_string(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// A valid GGUF v3 file: string, integer and array metadata, an explicit alignment, and F32,
/// F16, Q4_0 and BF16 tensors at aligned offsets.
fn valid_gguf() -> Vec<u8> {
    const ALIGNMENT: usize = 32;
    let tensors: [(&str, &[u64], u32, u64); 4] =
        [("a", &[4, 2], 0, 0), ("b", &[8], 1, 32), ("q", &[32], 2, 64), ("z", &[2], 30, 96)];
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&4u64.to_le_bytes());
    gguf_string(&mut out, "general.architecture");
    out.extend_from_slice(&8u32.to_le_bytes());
    gguf_string(&mut out, "llama");
    gguf_string(&mut out, "general.alignment");
    out.extend_from_slice(&4u32.to_le_bytes());
    out.extend_from_slice(&(ALIGNMENT as u32).to_le_bytes());
    gguf_string(&mut out, "llama.dims");
    out.extend_from_slice(&9u32.to_le_bytes());
    out.extend_from_slice(&4u32.to_le_bytes());
    out.extend_from_slice(&3u64.to_le_bytes());
    for value in [1u32, 2, 3] {
        out.extend_from_slice(&value.to_le_bytes());
    }
    gguf_string(&mut out, "tokenizer.ggml.tokens");
    out.extend_from_slice(&9u32.to_le_bytes());
    out.extend_from_slice(&8u32.to_le_bytes());
    out.extend_from_slice(&2u64.to_le_bytes());
    gguf_string(&mut out, "<s>");
    gguf_string(&mut out, "</s>");
    for (name, shape, ggml_type, offset) in tensors {
        gguf_string(&mut out, name);
        out.extend_from_slice(&(shape.len() as u32).to_le_bytes());
        for dim in shape {
            out.extend_from_slice(&dim.to_le_bytes());
        }
        out.extend_from_slice(&ggml_type.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
    }
    out.resize(out.len().next_multiple_of(ALIGNMENT), 0);
    // a: 32 bytes, b: 16 + 16 padding, q: 18 + 14 padding, z: 4.
    out.extend((0..100u8).map(|i| i.wrapping_mul(29)));
    out
}

#[test]
fn the_unmutated_files_parse() {
    let file = SafeTensors::from_bytes("valid.safetensors", valid_safetensors()).expect("valid safetensors");
    let names: Vec<_> = file.tensors().iter().map(|info| info.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "empty", "c"]);
    assert_eq!(file.metadata(), [("format".to_owned(), "pt".to_owned())]);
    assert_eq!(file.tensor("b").unwrap().to_f32().unwrap().len(), 3);

    let file = Gguf::from_bytes("valid.gguf", valid_gguf()).expect("valid GGUF");
    let summary: Vec<_> = file.tensors().iter().map(|info| (info.name.as_str(), info.dtype, info.len)).collect();
    assert_eq!(summary, [("a", Dtype::F32, 32), ("b", Dtype::F16, 16), ("q", Dtype::Q4_0, 18), ("z", Dtype::BF16, 4)]);
    assert_eq!(file.alignment(), 32);
    assert_eq!(file.tensor("z").unwrap().to_f32().unwrap().len(), 2);
}

/// Damage to apply to a valid file: bytes XOR-ed with a non-zero mask, then, one time in four,
/// a truncation (more often and most cases would stop at `Truncated`).
#[derive(Debug, Clone)]
struct Damage {
    flips: Vec<(prop::sample::Index, u8)>,
    truncate_at: Option<prop::sample::Index>,
}

fn damage() -> impl Strategy<Value = Damage> {
    (
        prop::collection::vec((any::<prop::sample::Index>(), 1..=255u8), 0..6),
        prop::option::weighted(0.25, any::<prop::sample::Index>()),
    )
        .prop_map(|(flips, truncate_at)| Damage { flips, truncate_at })
}

fn apply(mut bytes: Vec<u8>, damage: &Damage) -> Vec<u8> {
    for (index, mask) in &damage.flips {
        let position = index.index(bytes.len());
        bytes[position] ^= mask;
    }
    if let Some(index) = &damage.truncate_at {
        bytes.truncate(index.index(bytes.len()));
    }
    bytes
}

/// A view parsed from `file` must be exactly its declared byte range of `file`, sized for its
/// dtype and shape; float views must convert.
fn check_view(file: &[u8], view: TensorView<'_>) -> Result<(), TestCaseError> {
    let info = view.info();
    let end = info.offset.checked_add(info.len).filter(|&end| end <= file.len() as u64);
    prop_assert!(
        end.is_some(),
        "tensor `{}` at {}+{} leaves the {}-byte file",
        info.name,
        info.offset,
        info.len,
        file.len()
    );
    prop_assert_eq!(view.bytes(), &file[info.offset as usize..end.unwrap() as usize]);
    prop_assert_eq!(Some(info.len), info.dtype.byte_len(view.num_elements()));
    if matches!(info.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
        let values = view.to_f32().map_err(|error| TestCaseError::fail(error.to_string()))?;
        prop_assert_eq!(values.len() as u64, view.num_elements());
    }
    Ok(())
}

fn check_error(label: &str, error: &Error) -> Result<(), TestCaseError> {
    let message = error.to_string();
    prop_assert!(message.starts_with(&format!("{label}: ")), "message does not name the file: {}", message);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn damaged_safetensors_parse_or_fail_cleanly(damage in damage()) {
        let bytes = apply(valid_safetensors(), &damage);
        match SafeTensors::from_bytes("damaged.safetensors", bytes.clone()) {
            Ok(file) => {
                for view in file.iter() {
                    check_view(&bytes, view)?;
                }
            }
            Err(error) => check_error("damaged.safetensors", &error)?,
        }
    }

    #[test]
    fn damaged_gguf_parse_or_fail_cleanly(damage in damage()) {
        let bytes = apply(valid_gguf(), &damage);
        match Gguf::from_bytes("damaged.gguf", bytes.clone()) {
            Ok(file) => {
                for view in file.iter() {
                    check_view(&bytes, view)?;
                }
            }
            Err(error) => check_error("damaged.gguf", &error)?,
        }
    }
}
