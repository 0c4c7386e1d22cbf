//! GGUF reading (versions 2 and 3): metadata, tensor infos and zero-copy tensor views.
//!
//! Layout: magic `GGUF`, version u32, tensor count u64, key-value count u64, the key-value
//! pairs, the tensor infos, padding to `general.alignment` (32 by default), then the data
//! section. All integers are little-endian; strings are a u64 length and UTF-8 bytes.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::storage::Storage;
use crate::{Dtype, Error, Result, TensorInfo, TensorView};

/// The alignment of the data section and of every tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Arrays nested deeper than this are rejected (real files nest at most one level).
pub const MAX_NESTING: usize = 8;
/// GGML tensors have at most four dimensions.
pub const MAX_DIMS: u32 = 4;

/// The type of a GGUF metadata value, with its on-disk id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum GgufType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl GgufType {
    fn from_id(id: u32) -> Option<GgufType> {
        use GgufType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The upper-case name the `gguf` Python package uses (`UINT32`, `STRING`, ...).
    pub fn name(self) -> &'static str {
        use GgufType::*;
        match self {
            U8 => "UINT8",
            I8 => "INT8",
            U16 => "UINT16",
            I16 => "INT16",
            U32 => "UINT32",
            I32 => "INT32",
            F32 => "FLOAT32",
            Bool => "BOOL",
            String => "STRING",
            Array => "ARRAY",
            U64 => "UINT64",
            I64 => "INT64",
            F64 => "FLOAT64",
        }
    }

    /// The fewest bytes one value of this type takes on disk.
    fn min_size(self) -> u64 {
        use GgufType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// A GGUF metadata value.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    /// Invalid UTF-8 in a value is replaced (U+FFFD) so any file can be listed.
    String(String),
    Array(GgufType, Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    /// The value's type.
    pub fn kind(&self) -> GgufType {
        match self {
            GgufValue::U8(_) => GgufType::U8,
            GgufValue::I8(_) => GgufType::I8,
            GgufValue::U16(_) => GgufType::U16,
            GgufValue::I16(_) => GgufType::I16,
            GgufValue::U32(_) => GgufType::U32,
            GgufValue::I32(_) => GgufType::I32,
            GgufValue::F32(_) => GgufType::F32,
            GgufValue::Bool(_) => GgufType::Bool,
            GgufValue::String(_) => GgufType::String,
            GgufValue::Array(..) => GgufType::Array,
            GgufValue::U64(_) => GgufType::U64,
            GgufValue::I64(_) => GgufType::I64,
            GgufValue::F64(_) => GgufType::F64,
        }
    }

    /// The value as an unsigned integer, if it is one of the integer types and non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a string slice, if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(text) => Some(text),
            _ => None,
        }
    }
}

/// A GGUF file: its metadata, tensor infos and bytes (mapped or owned).
#[derive(Debug)]
pub struct Gguf {
    file: String,
    storage: Storage,
    version: u32,
    alignment: u64,
    data_start: u64,
    metadata: Vec<(String, GgufValue)>,
    /// Tensors in the order the file lists them.
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
}

impl Gguf {
    /// Memory-maps and validates the file at `path`.
    ///
    /// The file must not be modified or truncated while the returned value lives.
    pub fn open(path: impl AsRef<Path>) -> Result<Gguf> {
        let path = path.as_ref();
        Gguf::parse(path.display().to_string(), Storage::map(path)?)
    }

    /// Validates an in-memory file; `label` names it in errors.
    pub fn from_bytes(label: impl Into<String>, bytes: Vec<u8>) -> Result<Gguf> {
        Gguf::parse(label.into(), Storage::Owned(bytes))
    }

    fn parse(file: String, storage: Storage) -> Result<Gguf> {
        let parsed = Parser { file: &file, bytes: storage.bytes(), pos: 0 }.parse()?;
        let by_name = parsed.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(Gguf {
            file,
            storage,
            version: parsed.version,
            alignment: parsed.alignment,
            data_start: parsed.data_start,
            metadata: parsed.metadata,
            tensors: parsed.tensors,
            by_name,
        })
    }

    /// The path or label errors use for this file.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The alignment of the data section and of every tensor's data.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset of the data section.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// Metadata key-value pairs in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    /// The value of a metadata key.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Tensors in the order the file lists them; shapes in GGML order (`ne0` first).
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
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

    /// Visits every tensor and releases its pages once `visit` returns (see
    /// [`SafeTensors::stream`](crate::SafeTensors::stream)).
    pub fn stream<E>(&self, visit: impl FnMut(TensorView<'_>) -> Result<(), E>) -> Result<(), E> {
        self.storage.stream(&self.file, &self.tensors, visit)
    }

    /// Bytes of the file's mapping resident in this process, where the OS tells (Linux); `None`
    /// for owned buffers.
    pub fn resident_bytes(&self) -> Option<u64> {
        self.storage.resident_bytes()
    }
}

struct Parsed {
    version: u32,
    alignment: u64,
    data_start: u64,
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<TensorInfo>,
}

struct Parser<'a> {
    file: &'a str,
    bytes: &'a [u8],
    pos: u64,
}

impl<'a> Parser<'a> {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn remaining(&self) -> u64 {
        self.len() - self.pos
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let start = self.pos;
        let end = start.checked_add(n).filter(|&end| end <= self.len()).ok_or_else(|| Error::Truncated {
            file: self.file.to_owned(),
            what: what(),
            offset: start,
            end: start.saturating_add(n),
            file_len: self.len(),
        })?;
        self.pos = end;
        Ok(&self.bytes[start as usize..end as usize])
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let bytes = self.take(N as u64, what)?;
        Ok(bytes.try_into().expect("take returns exactly N bytes"))
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A u64 count of items that each take at least `min_size` bytes, checked against the rest
    /// of the file before anything is allocated for them.
    fn count(&mut self, what: &'static str, min_size: u64) -> Result<u64> {
        let offset = self.pos;
        let count = self.u64(&|| format!("{what} count"))?;
        let remaining = self.remaining();
        if count.checked_mul(min_size).is_none_or(|needed| needed > remaining) {
            return Err(Error::CountTooLarge { file: self.file.to_owned(), what, count, offset, remaining });
        }
        Ok(count)
    }

    /// A string's raw bytes; `what` names it for errors.
    fn string_bytes(&mut self, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        self.take(len, what)
    }

    fn strict_string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let offset = self.pos + 8;
        let bytes = self.string_bytes(what)?;
        match std::str::from_utf8(bytes) {
            Ok(text) => Ok(text.to_owned()),
            Err(_) => Err(Error::InvalidUtf8 { file: self.file.to_owned(), what: what(), offset }),
        }
    }

    fn parse(mut self) -> Result<Parsed> {
        let magic: [u8; 4] = self.array(&|| "GGUF magic".to_owned())?;
        if &magic != b"GGUF" {
            return Err(Error::BadMagic { file: self.file.to_owned(), found: magic });
        }
        let version = self.u32(&|| "GGUF version".to_owned())?;
        if version != 2 && version != 3 {
            let hint = if version == 1 {
                "; version 1 used 32-bit counts and is obsolete"
            } else if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
                "; this looks like a big-endian file"
            } else {
                ""
            };
            return Err(Error::UnsupportedVersion { file: self.file.to_owned(), version, hint });
        }
        // The smallest tensor info is an empty name (8), n_dims (4), type (4) and offset (8).
        let n_tensors = self.count("tensor", 24)?;
        // The smallest key-value pair is an empty key (8), a type (4) and a one-byte value.
        let n_kv = self.count("key-value", 13)?;

        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut keys = HashSet::with_capacity(n_kv as usize);
        for kv_index in 0..n_kv {
            let offset = self.pos;
            let key = self.strict_string(&|| format!("key of key-value pair {kv_index}"))?;
            if !keys.insert(key.clone()) {
                return Err(Error::DuplicateKey { file: self.file.to_owned(), key, offset });
            }
            let type_offset = self.pos;
            let type_id = self.u32(&|| format!("type of `{key}`"))?;
            let kind = GgufType::from_id(type_id).ok_or_else(|| Error::UnknownValueType {
                file: self.file.to_owned(),
                key: key.clone(),
                type_id,
                offset: type_offset,
            })?;
            let value = self.value(&key, kind, 0)?;
            metadata.push((key, value));
        }

        let alignment = match metadata.iter().find(|(key, _)| key == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, GgufValue::U32(align))) if align.is_power_of_two() => u64::from(*align),
            Some((_, GgufValue::U32(align))) => {
                return Err(Error::BadAlignment {
                    file: self.file.to_owned(),
                    message: format!("is {align}, not a non-zero power of two"),
                });
            }
            Some((_, other)) => {
                return Err(Error::BadAlignment {
                    file: self.file.to_owned(),
                    message: format!("has type {}, not UINT32", other.kind().name()),
                });
            }
        };

        struct Raw {
            info: TensorInfo,
            relative: u64,
        }
        let mut raw = Vec::with_capacity(n_tensors as usize);
        let mut names = HashSet::with_capacity(n_tensors as usize);
        for tensor_index in 0..n_tensors {
            let name = self.strict_string(&|| format!("name of tensor {tensor_index}"))?;
            if !names.insert(name.clone()) {
                return Err(Error::DuplicateTensor { file: self.file.to_owned(), tensor: name });
            }
            let dims_offset = self.pos;
            let n_dims = self.u32(&|| format!("dimension count of tensor `{name}`"))?;
            if n_dims > MAX_DIMS {
                return Err(Error::TooManyDims {
                    file: self.file.to_owned(),
                    tensor: name,
                    n_dims,
                    offset: dims_offset,
                    limit: MAX_DIMS,
                });
            }
            let mut shape = Vec::with_capacity(n_dims as usize);
            for dim in 0..n_dims {
                shape.push(self.u64(&|| format!("dimension {dim} of tensor `{name}`"))?);
            }
            let type_offset = self.pos;
            let type_id = self.u32(&|| format!("type of tensor `{name}`"))?;
            let dtype = Dtype::from_ggml_id(type_id).ok_or_else(|| Error::UnknownGgmlType {
                file: self.file.to_owned(),
                tensor: name.clone(),
                type_id,
                offset: type_offset,
            })?;
            let relative = self.u64(&|| format!("data offset of tensor `{name}`"))?;
            let shape_error =
                || Error::ShapeOverflow { file: self.file.to_owned(), tensor: name.clone(), shape: shape.clone() };
            let numel = shape.iter().try_fold(1u64, |acc, &dim| acc.checked_mul(dim)).ok_or_else(shape_error)?;
            let block = dtype.layout().elements;
            // GGML quantizes rows: the first dimension must hold whole blocks.
            if shape.first().is_some_and(|&ne0| ne0 % block != 0) || numel % block != 0 {
                return Err(Error::BlockMisfit {
                    file: self.file.to_owned(),
                    tensor: name,
                    dtype: dtype.name().to_owned(),
                    shape,
                    block,
                });
            }
            let len = dtype.byte_len(numel).ok_or_else(shape_error)?;
            let shape_usize =
                shape.iter().map(|&d| usize::try_from(d)).collect::<Result<Vec<_>, _>>().map_err(|_| shape_error())?;
            if relative % alignment != 0 {
                return Err(Error::Misaligned {
                    file: self.file.to_owned(),
                    tensor: name,
                    offset: relative,
                    alignment,
                });
            }
            raw.push(Raw { info: TensorInfo { name, dtype, shape: shape_usize, offset: 0, len }, relative });
        }

        let data_start = self.pos.div_ceil(alignment) * alignment;
        let file_len = self.len();
        let mut tensors = Vec::with_capacity(raw.len());
        for Raw { mut info, relative } in raw {
            let start = data_start.checked_add(relative);
            let end = start.and_then(|start| start.checked_add(info.len));
            match (start, end) {
                (Some(start), Some(end)) if end <= file_len => info.offset = start,
                _ => {
                    return Err(Error::OutOfBounds {
                        file: self.file.to_owned(),
                        tensor: info.name,
                        start: start.unwrap_or(u64::MAX),
                        end: end.unwrap_or(u64::MAX),
                        limit: file_len,
                    });
                }
            }
            tensors.push(info);
        }
        check_no_overlap(self.file, &tensors)?;
        Ok(Parsed { version, alignment, data_start, metadata, tensors })
    }

    fn value(&mut self, key: &str, kind: GgufType, depth: usize) -> Result<GgufValue> {
        let what = || format!("value of `{key}`");
        Ok(match kind {
            GgufType::U8 => GgufValue::U8(u8::from_le_bytes(self.array(&what)?)),
            GgufType::I8 => GgufValue::I8(i8::from_le_bytes(self.array(&what)?)),
            GgufType::U16 => GgufValue::U16(u16::from_le_bytes(self.array(&what)?)),
            GgufType::I16 => GgufValue::I16(i16::from_le_bytes(self.array(&what)?)),
            GgufType::U32 => GgufValue::U32(u32::from_le_bytes(self.array(&what)?)),
            GgufType::I32 => GgufValue::I32(i32::from_le_bytes(self.array(&what)?)),
            GgufType::F32 => GgufValue::F32(f32::from_le_bytes(self.array(&what)?)),
            GgufType::U64 => GgufValue::U64(u64::from_le_bytes(self.array(&what)?)),
            GgufType::I64 => GgufValue::I64(i64::from_le_bytes(self.array(&what)?)),
            GgufType::F64 => GgufValue::F64(f64::from_le_bytes(self.array(&what)?)),
            GgufType::Bool => GgufValue::Bool(self.array::<1>(&what)?[0] != 0),
            GgufType::String => GgufValue::String(String::from_utf8_lossy(self.string_bytes(&what)?).into_owned()),
            GgufType::Array => {
                let offset = self.pos;
                if depth >= MAX_NESTING {
                    return Err(Error::NestingTooDeep {
                        file: self.file.to_owned(),
                        key: key.to_owned(),
                        limit: MAX_NESTING,
                        offset,
                    });
                }
                let type_id = self.u32(&|| format!("element type of `{key}`"))?;
                let element = GgufType::from_id(type_id).ok_or_else(|| Error::UnknownValueType {
                    file: self.file.to_owned(),
                    key: key.to_owned(),
                    type_id,
                    offset,
                })?;
                let count = self.count("array element", element.min_size())?;
                // The count is bounded by the bytes left, but each value takes more memory than its
                // smallest encoding: grow past a modest start instead of trusting the count.
                let mut items = Vec::with_capacity((count as usize).min(4096));
                for _ in 0..count {
                    items.push(self.value(key, element, depth + 1)?);
                }
                GgufValue::Array(element, items)
            }
        })
    }
}

/// Tensor data may have gaps (alignment padding) but no two tensors may share a byte.
fn check_no_overlap(file: &str, tensors: &[TensorInfo]) -> Result<()> {
    let mut order: Vec<&TensorInfo> = tensors.iter().filter(|t| t.len > 0).collect();
    order.sort_by_key(|t| t.offset);
    for pair in order.windows(2) {
        if pair[1].offset < pair[0].offset + pair[0].len {
            return Err(Error::Overlap {
                file: file.to_owned(),
                first: pair[0].name.clone(),
                second: pair[1].name.clone(),
                offset: pair[1].offset,
            });
        }
    }
    Ok(())
}
