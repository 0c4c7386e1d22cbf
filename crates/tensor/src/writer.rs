//! A streaming safetensors writer: header first, then the tensors one by one, atomically.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::io_error;
use crate::{Dtype, Error, Result};

/// A tensor to be written: declared before any data is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// The tensor's name.
    pub name: String,
    /// Its element type (must be one safetensors can declare).
    pub dtype: Dtype,
    /// Its row-major shape.
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// A spec from its parts.
    pub fn new(name: impl Into<String>, dtype: Dtype, shape: impl Into<Vec<usize>>) -> TensorSpec {
        TensorSpec { name: name.into(), dtype, shape: shape.into() }
    }
}

/// Writes a safetensors file without holding the model in memory.
///
/// Every tensor is declared up front (the header precedes the data); the tensors are then
/// written in declaration order. The file is written to a temporary file in the target folder
/// and renamed into place by [`finish`](Self::finish); dropping the writer before that, or any
/// error, leaves the target untouched.
///
/// ```
/// use lathe_tensor::{Dtype, SafeTensors, SafeTensorsWriter, TensorSpec};
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("model.safetensors");
/// let specs = vec![TensorSpec::new("w", Dtype::F32, [2, 2]), TensorSpec::new("b", Dtype::F32, [2])];
/// let mut writer = SafeTensorsWriter::create(&path, specs, &[("format".into(), "pt".into())])?;
/// writer.write_tensor("w", bytemuck::cast_slice(&[1.0f32, 2.0, 3.0, 4.0]))?;
/// writer.write_tensor("b", bytemuck::cast_slice(&[0.5f32, -0.5]))?;
/// writer.finish()?;
/// let file = SafeTensors::open(&path)?;
/// assert_eq!(file.tensor("b")?.to_f32()?, vec![0.5, -0.5]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct SafeTensorsWriter {
    path: PathBuf,
    out: BufWriter<tempfile::NamedTempFile>,
    specs: Vec<(TensorSpec, u64)>,
    next: usize,
}

impl SafeTensorsWriter {
    /// Validates the specs, creates the temporary file beside `path` and writes the header.
    pub fn create(
        path: impl AsRef<Path>,
        specs: Vec<TensorSpec>,
        metadata: &[(String, String)],
    ) -> Result<SafeTensorsWriter> {
        let path = path.as_ref().to_path_buf();
        let file = path.display().to_string();
        let mut seen = HashSet::new();
        let mut sized = Vec::with_capacity(specs.len());
        let mut header = serde_json::Map::new();
        if !metadata.is_empty() {
            let map = metadata.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
            header.insert("__metadata__".to_owned(), serde_json::Value::Object(map));
        }
        let mut offset = 0u64;
        for spec in specs {
            if spec.name == "__metadata__" || !seen.insert(spec.name.clone()) {
                return Err(Error::DuplicateTensor { file, tensor: spec.name });
            }
            if !spec.dtype.is_safetensors() {
                return Err(Error::NotSafetensorsDtype {
                    file,
                    tensor: spec.name,
                    dtype: spec.dtype.name().to_owned(),
                });
            }
            let shape: Vec<u64> = spec.shape.iter().map(|&d| d as u64).collect();
            let overflow =
                || Error::ShapeOverflow { file: file.clone(), tensor: spec.name.clone(), shape: shape.clone() };
            let numel = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).ok_or_else(overflow)?;
            let len = spec.dtype.byte_len(numel).ok_or_else(|| Error::BlockMisfit {
                file: file.clone(),
                tensor: spec.name.clone(),
                dtype: spec.dtype.name().to_owned(),
                shape: shape.clone(),
                block: spec.dtype.layout().elements,
            })?;
            let end = offset.checked_add(len).ok_or_else(overflow)?;
            header.insert(
                spec.name.clone(),
                serde_json::json!({ "dtype": spec.dtype.name(), "shape": shape, "data_offsets": [offset, end] }),
            );
            offset = end;
            sized.push((spec, len));
        }
        let mut header = serde_json::to_vec(&serde_json::Value::Object(header)).expect("a JSON map serialises");
        // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
        header.resize(header.len().next_multiple_of(8), b' ');

        let dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let temp =
            tempfile::Builder::new().prefix(".lathe-").suffix(".tmp").tempfile_in(&dir).map_err(io_error(&dir))?;
        let mut out = BufWriter::with_capacity(1 << 20, temp);
        out.write_all(&(header.len() as u64).to_le_bytes()).map_err(io_error(&path))?;
        out.write_all(&header).map_err(io_error(&path))?;
        Ok(SafeTensorsWriter { path, out, specs: sized, next: 0 })
    }

    /// Writes the next tensor's bytes (little-endian, row-major). `name` must be the next
    /// declared tensor and `bytes` exactly its size.
    pub fn write_tensor(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let file = || self.path.display().to_string();
        let Some((spec, len)) = self.specs.get(self.next) else {
            return Err(Error::WriteOrder {
                file: file(),
                expected: "(nothing: all tensors written)".to_owned(),
                found: name.to_owned(),
            });
        };
        if spec.name != name {
            return Err(Error::WriteOrder { file: file(), expected: spec.name.clone(), found: name.to_owned() });
        }
        if bytes.len() as u64 != *len {
            return Err(Error::WriteSize {
                file: file(),
                tensor: name.to_owned(),
                expected: *len,
                found: bytes.len() as u64,
            });
        }
        self.out.write_all(bytes).map_err(io_error(&self.path))?;
        self.next += 1;
        Ok(())
    }

    /// The spec of the tensor expected next, if any.
    pub fn next_tensor(&self) -> Option<&TensorSpec> {
        self.specs.get(self.next).map(|(spec, _)| spec)
    }

    /// Flushes, syncs and renames the file into place. Fails if a declared tensor is missing.
    pub fn finish(self) -> Result<()> {
        if let Some((missing, _)) = self.specs.get(self.next) {
            return Err(Error::Incomplete {
                file: self.path.display().to_string(),
                missing: missing.name.clone(),
                written: self.next,
                declared: self.specs.len(),
            });
        }
        let path = self.path;
        let temp = self.out.into_inner().map_err(|err| Error::Io { path: path.clone(), source: err.into_error() })?;
        temp.as_file().sync_all().map_err(io_error(&path))?;
        temp.persist(&path).map_err(|err| Error::Io { path: path.clone(), source: err.error })?;
        Ok(())
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, synced, then
/// renamed over the target.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let path = path.as_ref();
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut temp = tempfile::Builder::new().prefix(".lathe-").suffix(".tmp").tempfile_in(dir).map_err(io_error(dir))?;
    temp.write_all(bytes).map_err(io_error(path))?;
    File::sync_all(temp.as_file()).map_err(io_error(path))?;
    temp.persist(path).map_err(|err| Error::Io { path: path.to_path_buf(), source: err.error })?;
    Ok(())
}
