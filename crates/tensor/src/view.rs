//! Tensor metadata shared by both formats, and borrowed views of tensor bytes.

use half::{bf16, f16};

use crate::{Dtype, Error, Result};

/// Where one tensor lives in its file, as the header declares it (after validation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name.
    pub name: String,
    /// Its element type.
    pub dtype: Dtype,
    /// Its shape: row-major (outermost first) for safetensors, GGML order (`ne0` first) for GGUF.
    pub shape: Vec<usize>,
    /// Absolute byte offset of its first byte in the file.
    pub offset: u64,
    /// Length of its data in bytes.
    pub len: u64,
}

impl TensorInfo {
    /// Number of elements (the shape product; 1 for a scalar).
    pub fn num_elements(&self) -> u64 {
        // Validated at parse time: the product fits in u64.
        self.shape.iter().map(|&dim| dim as u64).product()
    }
}

/// A borrowed view of one tensor: its metadata and its bytes, zero-copy.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    file: &'a str,
    info: &'a TensorInfo,
    data: &'a [u8],
}

impl<'a> TensorView<'a> {
    pub(crate) fn new(file: &'a str, info: &'a TensorInfo, data: &'a [u8]) -> Self {
        debug_assert_eq!(data.len() as u64, info.len);
        TensorView { file, info, data }
    }

    /// The tensor's name.
    pub fn name(&self) -> &'a str {
        &self.info.name
    }

    /// Its element type.
    pub fn dtype(&self) -> Dtype {
        self.info.dtype
    }

    /// Its shape (see [`TensorInfo::shape`] for the order).
    pub fn shape(&self) -> &'a [usize] {
        &self.info.shape
    }

    /// Its metadata.
    pub fn info(&self) -> &'a TensorInfo {
        self.info
    }

    /// Its raw little-endian bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.data
    }

    /// Number of elements.
    pub fn num_elements(&self) -> u64 {
        self.info.num_elements()
    }

    /// The bytes as a typed slice, if they are suitably aligned and the target is little-endian.
    ///
    /// safetensors does not align tensor data, so callers must be ready for `None` and copy.
    pub fn as_slice<T: bytemuck::Pod>(&self) -> Option<&'a [T]> {
        if cfg!(target_endian = "big") {
            return None;
        }
        bytemuck::try_cast_slice(self.data).ok()
    }

    /// Converts F32, F16 or BF16 data to a new `Vec<f32>`.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let mut dst = vec![0.0; self.num_elements() as usize];
        self.to_f32_into(&mut dst)?;
        Ok(dst)
    }

    /// Converts F32, F16 or BF16 data into `dst`, which must hold exactly
    /// [`num_elements`](Self::num_elements) values.
    ///
    /// # Panics
    /// If `dst.len()` differs from the element count.
    pub fn to_f32_into(&self, dst: &mut [f32]) -> Result<()> {
        assert_eq!(dst.len() as u64, self.num_elements(), "destination length must equal the element count");
        match self.info.dtype {
            Dtype::F32 => convert_f32(self.data, dst),
            Dtype::F16 => convert_half::<f16>(self.data, dst),
            Dtype::BF16 => convert_half::<bf16>(self.data, dst),
            other => {
                return Err(Error::NotConvertible {
                    file: self.file.to_owned(),
                    tensor: self.info.name.clone(),
                    dtype: other.name().to_owned(),
                });
            }
        }
        Ok(())
    }
}

fn convert_f32(src: &[u8], dst: &mut [f32]) {
    bytemuck::cast_slice_mut::<f32, u8>(dst).copy_from_slice(src);
    if cfg!(target_endian = "big") {
        for value in dst.iter_mut() {
            *value = f32::from_bits(value.to_bits().swap_bytes());
        }
    }
}

/// Converts 16-bit floats with `half`'s slice conversions (F16C/NEON accelerated where available).
/// Unaligned or big-endian input is first copied into aligned chunks.
fn convert_half<T>(src: &[u8], dst: &mut [f32])
where
    T: bytemuck::Pod + HalfSlice,
{
    if cfg!(target_endian = "little")
        && let Ok(values) = bytemuck::try_cast_slice::<u8, T>(src)
    {
        T::convert(values, dst);
        return;
    }
    const CHUNK: usize = 4096;
    let mut buf = [T::zeroed(); CHUNK];
    for (src_chunk, dst_chunk) in src.chunks(2 * CHUNK).zip(dst.chunks_mut(CHUNK)) {
        let buf = &mut buf[..dst_chunk.len()];
        for (value, bytes) in buf.iter_mut().zip(src_chunk.chunks_exact(2)) {
            *value = bytemuck::cast(u16::from_le_bytes([bytes[0], bytes[1]]));
        }
        T::convert(buf, dst_chunk);
    }
}

pub(crate) trait HalfSlice: Sized {
    fn convert(src: &[Self], dst: &mut [f32]);
}

impl HalfSlice for f16 {
    fn convert(src: &[Self], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }
}

impl HalfSlice for bf16 {
    fn convert(src: &[Self], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }
}
