//! Checkpoint I/O for lathe: zero-copy, validated reading of safetensors and GGUF files and a
//! streaming, atomic safetensors writer.
//!
//! Parsers never trust a file: every length, count, offset and shape product is checked, and
//! every error names the file, the tensor or key, and the byte offset. Files are memory-mapped,
//! so opening reads only the header; [`SafeTensors::stream`] walks a checkpoint tensor by tensor
//! while keeping about one tensor resident.
//!
//! ```
//! use lathe_tensor::{Dtype, SafeTensors, SafeTensorsWriter, TensorSpec};
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("tiny.safetensors");
//! let mut writer = SafeTensorsWriter::create(&path, vec![TensorSpec::new("x", Dtype::F16, [3])], &[])?;
//! let halves: Vec<half::f16> = [1.0f32, -2.0, 0.5].iter().map(|&v| half::f16::from_f32(v)).collect();
//! writer.write_tensor("x", bytemuck::cast_slice(&halves))?;
//! writer.finish()?;
//!
//! let file = SafeTensors::open(&path)?;
//! let x = file.tensor("x")?;
//! assert_eq!((x.dtype(), x.shape()), (Dtype::F16, &[3usize][..]));
//! assert_eq!(x.to_f32()?, vec![1.0, -2.0, 0.5]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod checkpoint;
mod dtype;
mod error;
mod gguf;
mod safetensors;
mod storage;
mod view;
mod writer;

pub use checkpoint::{Checkpoint, INDEX_FILE, SINGLE_FILE};
pub use dtype::{BlockLayout, Dtype};
pub use error::{Error, Result};
pub use gguf::{DEFAULT_ALIGNMENT, Gguf, GgufType, GgufValue, MAX_DIMS, MAX_NESTING};
pub use safetensors::{MAX_HEADER_LEN, SafeTensors};
pub use view::{TensorInfo, TensorView};
pub use writer::{SafeTensorsWriter, TensorSpec, write_atomic};

/// The two file formats lathe reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// safetensors: a JSON header and raw little-endian data.
    SafeTensors,
    /// GGUF: llama.cpp's format.
    Gguf,
}

/// Tells the format from a file's first bytes: the `GGUF` magic, or a safetensors length
/// prefix followed by `{`. `None` when neither matches.
pub fn detect_format(first_bytes: &[u8]) -> Option<Format> {
    if first_bytes.starts_with(b"GGUF") {
        return Some(Format::Gguf);
    }
    match first_bytes.get(8) {
        Some(b'{') => Some(Format::SafeTensors),
        _ => None,
    }
}

/// Reads up to the first 9 bytes of `path` and tells its format.
pub fn detect_file_format(path: impl AsRef<std::path::Path>) -> Result<Option<Format>> {
    use std::io::Read;
    let path = path.as_ref();
    let mut first = Vec::with_capacity(9);
    std::fs::File::open(path).and_then(|file| file.take(9).read_to_end(&mut first)).map_err(error::io_error(path))?;
    Ok(detect_format(&first))
}
