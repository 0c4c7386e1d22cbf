#!/usr/bin/env python3
"""Writes tests/data/malformed/: small safetensors and GGUF files that are each broken in one way.

Run from anywhere: `python3 tests/data/make_malformed.py`. The script uses only the standard
library and no randomness, so every run produces the same bytes. It deletes everything in the
folder first, then writes each file and a README.md listing what is wrong with each one.

Every file must be listed in the table of tests/malformed.rs with the error lathe-tensor is
expected to return; the test fails when a file has no expectation.
"""

import json
import shutil
import struct
from pathlib import Path

OUT = Path(__file__).resolve().parent / "malformed"

# Mirrors lathe_tensor::MAX_HEADER_LEN and lathe_tensor::MAX_NESTING.
MAX_HEADER_LEN = 100_000_000
MAX_NESTING = 8
U64_MAX = 2**64 - 1

FILES = []  # (name, description, bytes)


def add(name, description, data):
    assert all(name != existing for existing, _, _ in FILES), f"{name} written twice"
    FILES.append((name, description, bytes(data)))


# --- safetensors -------------------------------------------------------------------------------


def st_raw(header: bytes, data: bytes = b"", header_len=None) -> bytes:
    """A length prefix (the real header length unless overridden), the header bytes, the data."""
    if header_len is None:
        header_len = len(header)
    return struct.pack("<Q", header_len) + header + data


def st(header_text: str, data: bytes = b"") -> bytes:
    return st_raw(header_text.encode("utf-8"), data)


def entry(dtype="F32", shape=(1,), offsets=(0, 4)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def st_json(entries: dict, data: bytes) -> bytes:
    return st(json.dumps(entries, separators=(",", ":")), data)


def safetensors_files():
    four = bytes(range(4))
    add("empty.safetensors", "zero bytes: no length prefix at all", b"")
    add("truncated_length_prefix.safetensors", "5 bytes, the u64 header length needs 8", b"\x10\x00\x00\x00\x00")
    add(
        "header_past_eof.safetensors",
        "header length 64, but only 2 header bytes follow",
        st_raw(b"{}", header_len=64),
    )
    add(
        "header_too_large.safetensors",
        f"header length {MAX_HEADER_LEN + 1}, one past the 100 MB cap",
        st_raw(b"{}", header_len=MAX_HEADER_LEN + 1),
    )
    add(
        "header_invalid_utf8.safetensors",
        "byte 0xff inside a tensor name in the JSON header",
        st_raw(b'{"w\xff":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', four),
    )
    add(
        "header_json_syntax.safetensors",
        "JSON header cut off after a comma",
        st('{"w":{"dtype":"F32","shape":[1],', four),
    )
    add("header_empty.safetensors", "header length 0: an empty string is not JSON", st(""))
    add("header_not_object.safetensors", "the header is a JSON array, not an object", st("[1,2,3]"))
    add("entry_not_object.safetensors", "tensor `w` maps to an array", st_json({"w": [1, 2]}, b""))
    add(
        "entry_unknown_field.safetensors",
        "tensor `w` has an extra field `offsets`",
        st_json({"w": {**entry(), "offsets": [0, 4]}}, four),
    )
    add(
        "missing_dtype.safetensors",
        "tensor `w` has no `dtype`",
        st_json({"w": {"shape": [1], "data_offsets": [0, 4]}}, four),
    )
    add("unknown_dtype.safetensors", "tensor `w` has dtype `F12`", st_json({"w": entry(dtype="F12")}, four))
    add(
        "quantized_dtype.safetensors",
        "tensor `w` has the GGML-only dtype `Q4_0`",
        st_json({"w": entry(dtype="Q4_0", shape=(32,), offsets=(0, 18))}, bytes(18)),
    )
    add("negative_shape.safetensors", "tensor `w` has shape [-1]", st_json({"w": entry(shape=(-1,))}, four))
    add("float_shape.safetensors", "tensor `w` has shape [1.5]", st_json({"w": entry(shape=(1.5,))}, four))
    add(
        "data_offsets_arity.safetensors",
        "tensor `w` has three data offsets",
        st_json({"w": entry(offsets=(0, 4, 8))}, four),
    )
    add(
        "data_offsets_start_after_end.safetensors",
        "tensor `w` has data_offsets [8, 4]",
        st_json({"w": entry(offsets=(8, 4))}, bytes(8)),
    )
    add(
        "shape_overflow.safetensors",
        "tensor `w` has shape [2^32, 2^32]: 2^64 elements overflow u64",
        st_json({"w": entry(shape=(2**32, 2**32), offsets=(0, 4))}, four),
    )
    add(
        "byte_len_overflow.safetensors",
        "tensor `w` is F64 x [2^61]: the element count fits, the byte count 2^64 does not",
        st_json({"w": entry(dtype="F64", shape=(2**61,), offsets=(0, 8))}, bytes(8)),
    )
    add(
        "size_mismatch.safetensors",
        "tensor `w` is F32 x [2] (8 bytes) but its data_offsets span 4",
        st_json({"w": entry(shape=(2,), offsets=(0, 4))}, four),
    )
    add(
        "sub_byte_misfit.safetensors",
        "tensor `w` is F4 x [3]: 12 bits are not a whole number of bytes",
        st_json({"w": entry(dtype="F4", shape=(3,), offsets=(0, 2))}, bytes(2)),
    )
    add(
        "offsets_out_of_bounds.safetensors",
        "tensor `w` claims data bytes 0..8, the data section holds 4",
        st_json({"w": entry(shape=(2,), offsets=(0, 8))}, four),
    )
    add(
        "offsets_near_u64_max.safetensors",
        "empty tensor `w` at data offset u64::MAX: the absolute offset overflows u64",
        st_json({"w": entry(shape=(0,), offsets=(U64_MAX, U64_MAX))}, b""),
    )
    add(
        "overlap.safetensors",
        "tensors `a` (0..8) and `b` (4..12) share bytes 4..8",
        st_json({"a": entry(shape=(2,), offsets=(0, 8)), "b": entry(shape=(2,), offsets=(4, 12))}, bytes(12)),
    )
    add(
        "gap.safetensors",
        "tensors `a` (0..4) and `b` (8..12) leave bytes 4..8 unclaimed",
        st_json({"a": entry(offsets=(0, 4)), "b": entry(offsets=(8, 12))}, bytes(12)),
    )
    add(
        "trailing_bytes.safetensors",
        "4 bytes after the last tensor",
        st_json({"w": entry(offsets=(0, 4))}, bytes(8)),
    )
    add(
        "data_not_at_zero.safetensors",
        "the only tensor starts at data offset 4",
        st_json({"w": entry(offsets=(4, 8))}, bytes(8)),
    )
    add(
        "duplicate_tensor.safetensors",
        "tensor `w` appears twice in the header",
        st(
            '{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
            '"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
            bytes(8),
        ),
    )
    add(
        "metadata_non_string.safetensors",
        "`__metadata__` maps `format` to the number 1",
        st_json({"__metadata__": {"format": 1}, "w": entry()}, four),
    )
    add(
        "metadata_not_object.safetensors",
        "`__metadata__` is a string",
        st_json({"__metadata__": "pt", "w": entry()}, four),
    )


# --- GGUF --------------------------------------------------------------------------------------

T_U8, T_U32, T_STRING, T_ARRAY, T_U64 = 0, 4, 8, 9, 10
GGML_F32, GGML_F16, GGML_Q4_0 = 0, 1, 2


def gstr(text) -> bytes:
    raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return struct.pack("<Q", len(raw)) + raw


def kv_u32(key, value) -> bytes:
    return gstr(key) + struct.pack("<II", T_U32, value)


def kv_u64(key, value) -> bytes:
    return gstr(key) + struct.pack("<IQ", T_U64, value)


def kv_string(key, value) -> bytes:
    return gstr(key) + struct.pack("<I", T_STRING) + gstr(value)


def tensor_info(name, dims, ggml_type, offset) -> bytes:
    return (
        gstr(name)
        + struct.pack("<I", len(dims))
        + b"".join(struct.pack("<Q", d) for d in dims)
        + struct.pack("<IQ", ggml_type, offset)
    )


def gguf_prefix(n_tensors, n_kv, version=3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def gguf(kvs=(), tensors=(), data=b"", alignment=32, n_tensors=None, n_kv=None) -> bytes:
    """A GGUF file; `tensors` are already-encoded tensor infos, `data` the data section."""
    head = gguf_prefix(len(tensors) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv)
    head += b"".join(kvs) + b"".join(tensors)
    head += bytes(-len(head) % alignment)
    return head + data


def gguf_files():
    arch = kv_string("general.architecture", "llama")
    f32x8 = tensor_info("w", [8], GGML_F32, 0)
    add("empty.gguf", "zero bytes", b"")
    add("short.gguf", "the magic and 2 of the 4 version bytes", b"GGUF\x03\x00")
    add("bad_magic.gguf", "magic `GGML` instead of `GGUF`", b"GGML" + gguf(kvs=[arch])[4:])
    add("version_1.gguf", "version 1 (32-bit counts, obsolete)", b"GGUF" + struct.pack("<III", 1, 0, 0))
    add("version_4.gguf", "version 4, not yet defined", gguf_prefix(0, 0, version=4))
    add(
        "version_big_endian.gguf",
        "version 3 written big-endian (reads as 0x03000000)",
        b"GGUF" + struct.pack(">IQQ", 3, 0, 0),
    )
    add(
        "tensor_count_absurd.gguf",
        "tensor count 2^60 in a 64-byte file",
        gguf_prefix(2**60, 0) + bytes(40),
    )
    add(
        "kv_count_absurd.gguf",
        "key-value count 1000000 in a 64-byte file",
        gguf_prefix(0, 1_000_000) + bytes(40),
    )
    add(
        "array_count_absurd.gguf",
        "a UINT32 array claiming 2^40 elements",
        gguf(kvs=[gstr("a") + struct.pack("<IIQ", T_ARRAY, T_U32, 2**40)]),
    )
    add(
        "string_len_past_eof.gguf",
        "the first key claims 1000 bytes, the file ends 24 bytes later",
        gguf_prefix(0, 1) + struct.pack("<Q", 1000) + b"general.architecture" + bytes(4),
    )
    add(
        "string_value_past_eof.gguf",
        "a string value claims 1000 bytes, 5 follow",
        gguf_prefix(0, 1) + gstr("general.name") + struct.pack("<IQ", T_STRING, 1000) + b"llama",
    )
    add(
        "key_invalid_utf8.gguf",
        "the first key holds byte 0xff",
        gguf(kvs=[gstr(b"general.\xffname") + struct.pack("<II", T_U32, 1)]),
    )
    add(
        "tensor_name_invalid_utf8.gguf",
        "the tensor name holds bytes 0xc3 0x28",
        gguf(tensors=[tensor_info(b"w\xc3\x28", [8], GGML_F32, 0)], data=bytes(32)),
    )
    add(
        "unknown_value_type.gguf",
        "key `general.x` has value type 13",
        gguf(kvs=[gstr("general.x") + struct.pack("<II", 13, 0)]),
    )
    add(
        "unknown_array_element_type.gguf",
        "key `general.x` is an array of element type 99",
        gguf(kvs=[gstr("general.x") + struct.pack("<IIQ", T_ARRAY, 99, 0)]),
    )
    nested = gstr("deep") + struct.pack("<I", T_ARRAY)
    nested += struct.pack("<IQ", T_ARRAY, 1) * MAX_NESTING
    add(
        "nesting_too_deep.gguf",
        f"key `deep` nests {MAX_NESTING + 1} arrays, one more than lathe allows",
        gguf(kvs=[nested + bytes(64)]),
    )
    add(
        "duplicate_key.gguf",
        "key `general.architecture` appears twice",
        gguf(kvs=[arch, kv_string("general.architecture", "gpt2")]),
    )
    add(
        "duplicate_tensor.gguf",
        "tensor `w` is listed twice",
        gguf(tensors=[f32x8, tensor_info("w", [8], GGML_F32, 32)], data=bytes(64)),
    )
    add(
        "too_many_dims.gguf",
        "tensor `w` has 5 dimensions",
        gguf(tensors=[tensor_info("w", [1, 1, 1, 1, 8], GGML_F32, 0)], data=bytes(32)),
    )
    add(
        "unknown_ggml_type_4.gguf",
        "tensor `w` has the retired GGML type 4 (Q4_2)",
        gguf(tensors=[tensor_info("w", [32], 4, 0)], data=bytes(32)),
    )
    add(
        "unknown_ggml_type_1000.gguf",
        "tensor `w` has GGML type 1000",
        gguf(tensors=[tensor_info("w", [32], 1000, 0)], data=bytes(32)),
    )
    add(
        "shape_overflow.gguf",
        "tensor `w` has shape [2^32, 2^32]",
        gguf(tensors=[tensor_info("w", [2**32, 2**32], GGML_F32, 0)], data=bytes(32)),
    )
    add(
        "block_misfit_q4_0.gguf",
        "Q4_0 tensor `w` has ne0 = 33, not a multiple of its 32-element blocks",
        gguf(tensors=[tensor_info("w", [33, 32], GGML_Q4_0, 0)], data=bytes(64)),
    )
    add(
        "misaligned_offset.gguf",
        "tensor `w` starts at data offset 4 with the default alignment 32",
        gguf(tensors=[tensor_info("w", [8], GGML_F32, 4)], data=bytes(64)),
    )
    add(
        "data_past_eof.gguf",
        "F32 tensor `w` of 8 elements needs 32 data bytes, 16 are there",
        gguf(tensors=[f32x8], data=bytes(16)),
    )
    add(
        "offset_past_eof.gguf",
        "tensor `w` at data offset u64::MAX - 31 (aligned): its end overflows u64",
        gguf(tensors=[tensor_info("w", [8], GGML_F32, U64_MAX - 31)], data=bytes(32)),
    )
    add(
        "overlap.gguf",
        "F32 tensors `a` (data 0..64) and `b` (data 32..64) share bytes",
        gguf(
            tensors=[tensor_info("a", [16], GGML_F32, 0), tensor_info("b", [8], GGML_F32, 32)],
            data=bytes(64),
        ),
    )
    add(
        "alignment_not_power_of_two.gguf",
        "`general.alignment` is 24",
        gguf(kvs=[kv_u32("general.alignment", 24)], tensors=[f32x8], data=bytes(32)),
    )
    add(
        "alignment_zero.gguf",
        "`general.alignment` is 0",
        gguf(kvs=[kv_u32("general.alignment", 0)], tensors=[f32x8], data=bytes(32)),
    )
    add(
        "alignment_wrong_type.gguf",
        "`general.alignment` is a UINT64, the format says UINT32",
        gguf(kvs=[kv_u64("general.alignment", 32)], tensors=[f32x8], data=bytes(32)),
    )
    truncated = gguf_prefix(1, 1) + arch + gstr("weight") + struct.pack("<IQ", 2, 32)
    add(
        "truncated_tensor_infos.gguf",
        "the file ends after the first of tensor `weight`'s two dimensions",
        truncated,
    )


def readme() -> str:
    lines = [
        "# Malformed checkpoints",
        "",
        "Small safetensors and GGUF files, each broken in one way, that lathe-tensor must reject with",
        "a specific error and never a panic. `tests/malformed.rs` (root package) opens every file",
        "here with `SafeTensors::open` or `Gguf::open` and checks the error variant; it fails when a",
        "file has no expectation in its table. `cargo xtask fuzz` also copies these files into the",
        "fuzz corpora as seeds.",
        "",
        "Do not edit these files by hand: they are written by `tests/data/make_malformed.py`",
        "(Python 3, standard library only, deterministic), which deletes the folder's contents and",
        "writes every file and this README again:",
        "",
        "```sh",
        "python3 tests/data/make_malformed.py",
        "```",
        "",
        "To add a case, add it to the script, run it, and add the expected error to the table in",
        "`tests/malformed.rs`.",
        "",
        "| File | What is wrong |",
        "| --- | --- |",
    ]
    lines += [f"| `{name}` | {description} |" for name, description, _ in FILES]
    return "\n".join(lines) + "\n"


def main():
    safetensors_files()
    gguf_files()
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    for name, _, data in FILES:
        (OUT / name).write_bytes(data)
    (OUT / "README.md").write_text(readme(), encoding="utf-8")
    print(f"wrote {len(FILES)} files to {OUT}")


if __name__ == "__main__":
    main()
