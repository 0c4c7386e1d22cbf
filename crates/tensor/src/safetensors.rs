//! safetensors reading: a validated header over a memory map or an owned buffer.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde::de::{Deserializer, MapAccess, Visitor};

use crate::storage::Storage;
use crate::{Dtype, Error, Result, TensorInfo, TensorView};

/// Largest header accepted, as in the `safetensors` crate (100 MB).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// A safetensors file: its validated header and its bytes (mapped or owned).
///
/// Opening parses and checks the header only; tensor data is read when a view's bytes are
/// touched.
#[derive(Debug)]
pub struct SafeTensors {
    file: String,
    storage: Storage,
    data_start: u64,
    /// Tensors in file order (ascending offset).
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    metadata: Vec<(String, String)>,
}

impl SafeTensors {
    /// Memory-maps and validates the file at `path`.
    ///
    /// The file must not be modified or truncated while the returned value lives: the views
    /// borrow the mapping directly.
    pub fn open(path: impl AsRef<Path>) -> Result<SafeTensors> {
        let path = path.as_ref();
        let storage = Storage::map(path)?;
        SafeTensors::parse(path.display().to_string(), storage)
    }

    /// Validates an in-memory file; `label` names it in errors.
    pub fn from_bytes(label: impl Into<String>, bytes: Vec<u8>) -> Result<SafeTensors> {
        SafeTensors::parse(label.into(), Storage::Owned(bytes))
    }

    fn parse(file: String, storage: Storage) -> Result<SafeTensors> {
        let header = parse_header(&file, storage.bytes())?;
        // The crate's own validation runs too, so a file lathe accepts is one the reference
        // reader accepts. It reads only the header and the buffer length.
        if let Err(err) = ::safetensors::SafeTensors::read_metadata(storage.bytes()) {
            return Err(Error::Safetensors { file, message: err.to_string() });
        }
        let by_name = header.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(SafeTensors {
            file,
            storage,
            data_start: header.data_start,
            tensors: header.tensors,
            by_name,
            metadata: header.metadata,
        })
    }

    /// The path or label errors use for this file.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// Tensors in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The `__metadata__` entries in header order.
    pub fn metadata(&self) -> &[(String, String)] {
        &self.metadata
    }

    /// Absolute offset of the data section (8 + header length).
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// Whether a tensor of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// A zero-copy view of the named tensor.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        match self.by_name.get(name) {
            Some(&index) => Ok(self.storage.view(&self.file, &self.tensors[index])),
            None => Err(Error::NoSuchTensor { file: self.file.clone(), tensor: name.to_owned() }),
        }
    }

    /// Views of every tensor, in file order.
    pub fn iter(&self) -> impl Iterator<Item = TensorView<'_>> {
        self.tensors.iter().map(|info| self.storage.view(&self.file, info))
    }

    /// Visits every tensor in file order and releases each tensor's pages from the resident set
    /// once `visit` returns, so a pass over the whole checkpoint keeps about one tensor resident
    /// (the bounded-memory path for streaming transforms). Stops at the first error.
    pub fn stream<E>(&self, visit: impl FnMut(TensorView<'_>) -> Result<(), E>) -> Result<(), E> {
        self.storage.stream(&self.file, &self.tensors, visit)
    }

    /// Bytes of the file's mapping resident in this process, where the OS tells (Linux); `None`
    /// for owned buffers.
    pub fn resident_bytes(&self) -> Option<u64> {
        self.storage.resident_bytes()
    }
}

pub(crate) struct Header {
    pub(crate) data_start: u64,
    pub(crate) tensors: Vec<TensorInfo>,
    pub(crate) metadata: Vec<(String, String)>,
}

/// Parses and validates a safetensors header against the whole file's bytes.
///
/// Checks, in order: the length prefix, the header cap, the header fitting in the file, UTF-8,
/// JSON, duplicate names, each entry (dtype, shape, offsets), the shape product, whole blocks
/// for the sub-byte dtypes, the byte size against dtype x shape, bounds, and finally that the
/// ranges tile the data section exactly (no overlap, no gap, no trailing bytes).
pub(crate) fn parse_header(file: &str, bytes: &[u8]) -> Result<Header> {
    let file_len = bytes.len() as u64;
    let truncated = |what: &str, offset: u64, end: u64| Error::Truncated {
        file: file.to_owned(),
        what: what.to_owned(),
        offset,
        end,
        file_len,
    };
    let prefix: [u8; 8] =
        bytes.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| truncated("header length", 0, 8))?;
    let header_len = u64::from_le_bytes(prefix);
    if header_len > MAX_HEADER_LEN {
        return Err(Error::HeaderTooLarge { file: file.to_owned(), len: header_len, limit: MAX_HEADER_LEN });
    }
    let data_start = 8 + header_len;
    let header_bytes = bytes.get(8..data_start as usize).ok_or_else(|| truncated("JSON header", 8, data_start))?;
    let header_text = std::str::from_utf8(header_bytes)
        .map_err(|err| Error::HeaderUtf8 { file: file.to_owned(), offset: 8 + err.valid_up_to() as u64 })?;
    let entries = parse_entries(header_text).map_err(|err| match err {
        EntriesError::Json(message) => Error::HeaderJson { file: file.to_owned(), message },
        EntriesError::Duplicate(tensor) => Error::DuplicateTensor { file: file.to_owned(), tensor },
    })?;

    let data_len = file_len - data_start;
    let mut metadata = Vec::new();
    let mut ranges: Vec<(u64, u64, TensorInfo)> = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        if name == "__metadata__" {
            metadata = parse_metadata(file, value)?;
            continue;
        }
        let entry = parse_entry(file, &name, value)?;
        let mut numel: u64 = 1;
        for &dim in &entry.shape {
            numel = numel.checked_mul(dim).ok_or_else(|| Error::ShapeOverflow {
                file: file.to_owned(),
                tensor: name.clone(),
                shape: entry.shape.clone(),
            })?;
        }
        let block = entry.dtype.layout().elements;
        if !numel.is_multiple_of(block) {
            return Err(Error::BlockMisfit {
                file: file.to_owned(),
                tensor: name,
                dtype: entry.dtype.name().to_owned(),
                shape: entry.shape,
                block,
            });
        }
        let (start, end) = entry.offsets;
        let found = end - start;
        let expected = entry.dtype.byte_len(numel);
        if expected != Some(found) {
            return Err(Error::SizeMismatch {
                file: file.to_owned(),
                tensor: name,
                dtype: entry.dtype.name().to_owned(),
                shape: entry.shape,
                expected: expected.unwrap_or(u64::MAX),
                found,
            });
        }
        if end > data_len {
            return Err(Error::OutOfBounds {
                file: file.to_owned(),
                tensor: name,
                start: data_start.saturating_add(start),
                end: data_start.saturating_add(end),
                limit: file_len,
            });
        }
        let shape =
            entry.shape.iter().map(|&dim| usize::try_from(dim)).collect::<Result<Vec<_>, _>>().map_err(|_| {
                Error::ShapeOverflow { file: file.to_owned(), tensor: name.clone(), shape: entry.shape.clone() }
            })?;
        let info = TensorInfo { name, dtype: entry.dtype, shape, offset: data_start + start, len: found };
        ranges.push((start, end, info));
    }

    // The ranges must tile the data section: sorted, each starting where the previous ended.
    ranges.sort_by_key(|(start, end, _)| (*start, *end));
    let mut cursor = 0u64;
    let mut previous: Option<&str> = None;
    for (start, end, info) in &ranges {
        if *start < cursor {
            return Err(Error::Overlap {
                file: file.to_owned(),
                first: previous.unwrap_or_default().to_owned(),
                second: info.name.clone(),
                offset: data_start + start,
            });
        }
        if *start > cursor {
            return Err(Error::Gap {
                file: file.to_owned(),
                offset: data_start + cursor,
                gap: start - cursor,
                before: format!("tensor `{}`", info.name),
            });
        }
        cursor = *end;
        previous = Some(&info.name);
    }
    if cursor < data_len {
        return Err(Error::Gap {
            file: file.to_owned(),
            offset: data_start + cursor,
            gap: data_len - cursor,
            before: "the end of the file".to_owned(),
        });
    }
    let tensors = ranges.into_iter().map(|(_, _, info)| info).collect();
    Ok(Header { data_start, tensors, metadata })
}

struct Entry {
    dtype: Dtype,
    shape: Vec<u64>,
    offsets: (u64, u64),
}

fn parse_entry(file: &str, name: &str, value: serde_json::Value) -> Result<Entry> {
    let invalid = |message: &str| Error::InvalidEntry {
        file: file.to_owned(),
        tensor: name.to_owned(),
        message: message.to_owned(),
    };
    let serde_json::Value::Object(object) = value else {
        return Err(invalid("entry is not a JSON object"));
    };
    for key in object.keys() {
        if !matches!(key.as_str(), "dtype" | "shape" | "data_offsets") {
            return Err(invalid(&format!("unexpected field `{key}`")));
        }
    }
    let dtype_name =
        object.get("dtype").and_then(|v| v.as_str()).ok_or_else(|| invalid("`dtype` is missing or not a string"))?;
    let dtype = Dtype::from_safetensors_name(dtype_name).ok_or_else(|| Error::UnknownDtype {
        file: file.to_owned(),
        tensor: name.to_owned(),
        dtype: dtype_name.to_owned(),
    })?;
    let shape = object
        .get("shape")
        .and_then(|v| v.as_array())
        .ok_or_else(|| invalid("`shape` is missing or not an array"))?
        .iter()
        .map(|dim| dim.as_u64())
        .collect::<Option<Vec<u64>>>()
        .ok_or_else(|| invalid("`shape` holds something other than non-negative integers"))?;
    let offsets = object
        .get("data_offsets")
        .and_then(|v| v.as_array())
        .and_then(|array| match array.as_slice() {
            [start, end] => Some((start.as_u64()?, end.as_u64()?)),
            _ => None,
        })
        .ok_or_else(|| invalid("`data_offsets` must be two non-negative integers"))?;
    if offsets.0 > offsets.1 {
        return Err(invalid(&format!("`data_offsets` start {} is past its end {}", offsets.0, offsets.1)));
    }
    Ok(Entry { dtype, shape, offsets })
}

fn parse_metadata(file: &str, value: serde_json::Value) -> Result<Vec<(String, String)>> {
    let bad = |message: String| Error::BadMetadata { file: file.to_owned(), message };
    let serde_json::Value::Object(object) = value else {
        return Err(bad("it is not a JSON object".to_owned()));
    };
    object
        .into_iter()
        .map(|(key, value)| match value {
            serde_json::Value::String(text) => Ok((key, text)),
            other => Err(bad(format!("`{key}` holds {other}"))),
        })
        .collect()
}

enum EntriesError {
    Json(String),
    Duplicate(String),
}

/// Parses the top-level object keeping every key in order, so duplicates are seen (a map type
/// would silently keep the last one).
fn parse_entries(text: &str) -> Result<Vec<(String, serde_json::Value)>, EntriesError> {
    struct Entries(Vec<(String, serde_json::Value)>);
    struct EntriesVisitor;
    impl<'de> Visitor<'de> for EntriesVisitor {
        type Value = Entries;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object of tensor entries")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
            let mut entries = Vec::new();
            while let Some((key, value)) = map.next_entry::<String, serde_json::Value>()? {
                entries.push((key, value));
            }
            Ok(Entries(entries))
        }
    }
    impl<'de> serde::Deserialize<'de> for Entries {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Entries, D::Error> {
            deserializer.deserialize_map(EntriesVisitor)
        }
    }
    let Entries(entries) = serde_json::from_str(text).map_err(|err| EntriesError::Json(err.to_string()))?;
    let mut seen = std::collections::HashSet::with_capacity(entries.len());
    for (key, _) in &entries {
        if !seen.insert(key.as_str()) {
            return Err(EntriesError::Duplicate(key.clone()));
        }
    }
    Ok(entries)
}
