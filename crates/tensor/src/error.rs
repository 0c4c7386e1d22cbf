//! The one error type of lathe-tensor: every variant names the file and, where there is one, the
//! tensor or key and the byte offset.

use std::io;
use std::path::PathBuf;

/// Errors from reading or writing checkpoints.
///
/// `file` is the path as the caller gave it (or the label of an in-memory buffer); offsets are
/// absolute byte offsets in that file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },

    #[error("{file}: not a safetensors or GGUF file (first bytes {first_bytes:02x?})")]
    UnknownFormat { file: String, first_bytes: Vec<u8> },

    #[error("{file}: file ends at byte {file_len}, but the {what} needs bytes {offset}..{end}")]
    Truncated { file: String, what: String, offset: u64, end: u64, file_len: u64 },

    #[error("{file}: header length {len} exceeds the limit of {limit} bytes")]
    HeaderTooLarge { file: String, len: u64, limit: u64 },

    #[error("{file}: header is not valid UTF-8 at byte offset {offset}")]
    HeaderUtf8 { file: String, offset: u64 },

    #[error("{file}: header JSON is invalid: {message}")]
    HeaderJson { file: String, message: String },

    #[error("{file}: tensor `{tensor}`: {message}")]
    InvalidEntry { file: String, tensor: String, message: String },

    #[error("{file}: tensor `{tensor}` appears twice")]
    DuplicateTensor { file: String, tensor: String },

    #[error("{file}: tensor `{tensor}`: unknown dtype `{dtype}`")]
    UnknownDtype { file: String, tensor: String, dtype: String },

    #[error("{file}: tensor `{tensor}`: the element count or byte size of shape {shape:?} overflows u64")]
    ShapeOverflow { file: String, tensor: String, shape: Vec<u64> },

    #[error("{file}: tensor `{tensor}`: {dtype} x {shape:?} needs {expected} bytes, but its data range holds {found}")]
    SizeMismatch { file: String, tensor: String, dtype: String, shape: Vec<u64>, expected: u64, found: u64 },

    #[error("{file}: tensor `{tensor}`: shape {shape:?} is not a whole number of {dtype} blocks of {block} elements")]
    BlockMisfit { file: String, tensor: String, dtype: String, shape: Vec<u64>, block: u64 },

    #[error(
        "{file}: tensor `{tensor}`: data at bytes {start}..{end} lies outside the data section, which ends at {limit}"
    )]
    OutOfBounds { file: String, tensor: String, start: u64, end: u64, limit: u64 },

    #[error("{file}: tensors `{first}` and `{second}` overlap at byte offset {offset}")]
    Overlap { file: String, first: String, second: String, offset: u64 },

    #[error("{file}: {gap} unclaimed bytes at byte offset {offset}, before {before}")]
    Gap { file: String, offset: u64, gap: u64, before: String },

    #[error("{file}: `__metadata__` must map strings to strings: {message}")]
    BadMetadata { file: String, message: String },

    #[error("{file}: the safetensors crate rejects the file: {message}")]
    Safetensors { file: String, message: String },

    #[error("{file}: bad GGUF magic {found:02x?} at byte offset 0")]
    BadMagic { file: String, found: [u8; 4] },

    #[error("{file}: unsupported GGUF version {version} at byte offset 4 (lathe reads versions 2 and 3{hint})")]
    UnsupportedVersion { file: String, version: u32, hint: &'static str },

    #[error("{file}: {what} count {count} at byte offset {offset} cannot fit in the {remaining} bytes left")]
    CountTooLarge { file: String, what: &'static str, count: u64, offset: u64, remaining: u64 },

    #[error("{file}: key `{key}`: unknown GGUF value type {type_id} at byte offset {offset}")]
    UnknownValueType { file: String, key: String, type_id: u32, offset: u64 },

    #[error("{file}: key `{key}`: arrays nested deeper than {limit} levels at byte offset {offset}")]
    NestingTooDeep { file: String, key: String, limit: usize, offset: u64 },

    #[error("{file}: {what} at byte offset {offset} is not valid UTF-8")]
    InvalidUtf8 { file: String, what: String, offset: u64 },

    #[error("{file}: key `{key}` appears twice (second at byte offset {offset})")]
    DuplicateKey { file: String, key: String, offset: u64 },

    #[error("{file}: tensor `{tensor}`: unknown GGML type id {type_id} at byte offset {offset}")]
    UnknownGgmlType { file: String, tensor: String, type_id: u32, offset: u64 },

    #[error("{file}: tensor `{tensor}`: {n_dims} dimensions at byte offset {offset}, GGML allows at most {limit}")]
    TooManyDims { file: String, tensor: String, n_dims: u32, offset: u64, limit: u32 },

    #[error("{file}: `general.alignment` {message}")]
    BadAlignment { file: String, message: String },

    #[error("{file}: tensor `{tensor}`: data offset {offset} is not a multiple of the alignment {alignment}")]
    Misaligned { file: String, tensor: String, offset: u64, alignment: u64 },

    #[error("{file}: no tensor named `{tensor}`")]
    NoSuchTensor { file: String, tensor: String },

    #[error("{file}: tensor `{tensor}`: cannot convert {dtype} to f32")]
    NotConvertible { file: String, tensor: String, dtype: String },

    #[error("{file}: {message}")]
    BadIndex { file: String, message: String },

    #[error("{file}: tensor `{tensor}`: {dtype} cannot be stored in safetensors")]
    NotSafetensorsDtype { file: String, tensor: String, dtype: String },

    #[error("{file}: expected tensor `{expected}` next, got `{found}`")]
    WriteOrder { file: String, expected: String, found: String },

    #[error("{file}: tensor `{tensor}`: declared {expected} bytes, got {found}")]
    WriteSize { file: String, tensor: String, expected: u64, found: u64 },

    #[error("{file}: finished before tensor `{missing}` was written ({written} of {declared} written)")]
    Incomplete { file: String, missing: String, written: usize, declared: usize },
}

/// `Result` with lathe-tensor's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_error(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
