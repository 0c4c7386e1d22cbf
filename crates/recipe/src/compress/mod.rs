//! Compression steps on model folders: each reads a complete folder and writes a complete new one
//! (config, tensors, tokenizer and pooling files, `lathe.json`), atomically. Only the encoder's
//! linear layers change; embeddings, LayerNorms and the pooler stay as they are. On-disk formats
//! are described in docs/formats.md.

mod calibrated;
mod folder;
mod prune;
mod quantize;
mod record;
mod shrink;

use std::collections::HashMap;

use half::{bf16, f16};
use lathe_quant::linear::{PackQuantized, ZeroPointTensor};
use lathe_quant::{Granularity, QuantizedMatrix, Scheme};
use lathe_tensor::{Dtype, SafeTensorsWriter, TensorSpec};

pub use calibrated::{CalibrationData, prune_calibrated, quantize_calibrated};
pub use folder::{RECORD_FILE, Source, Staging};
pub use prune::{PruneMethod, PruneOptions, Scope, parse_pattern, prune};
pub use quantize::{ActivationMode, QuantizeMethod, QuantizeOptions, quantize};
pub use record::{Calibration, Record, StepRecord};
pub use shrink::{ShrinkOptions, shrink};

use crate::{Error, Result};

/// The safetensors metadata key prefix that records a GGML block tensor's type:
/// `lathe.ggml.<tensor name>` = `q4_0`.
pub const GGML_METADATA_PREFIX: &str = "lathe.ggml.";

/// What a step writes for one tensor of the source checkpoint.
#[derive(Debug)]
pub(crate) enum Output {
    /// The stored bytes, unchanged.
    Copy,
    /// New f32 values of the same shape, stored in the source's float dtype.
    Values(Vec<f32>),
    /// A linear weight stored in a quantized scheme.
    Quantized(Box<QuantizedMatrix>),
}

/// How a linear weight's tensors are stored for a scheme: the specs, in write order.
fn quantized_specs(name: &str, scheme: Scheme, rows: usize, cols: usize) -> Result<Vec<TensorSpec>> {
    let module = name.strip_suffix(".weight").unwrap_or(name);
    Ok(match scheme {
        Scheme::F16 => vec![TensorSpec::new(name, Dtype::F16, [rows, cols])],
        Scheme::Bf16 => vec![TensorSpec::new(name, Dtype::BF16, [rows, cols])],
        Scheme::Int(int) => {
            let shapes = PackQuantized {
                rows,
                cols,
                scheme: int,
                weight_packed: vec![],
                weight_scale: vec![],
                weight_zero_point: None,
            };
            let mut specs = vec![
                TensorSpec::new(format!("{module}.weight_packed"), Dtype::I32, shapes.weight_packed_shape()),
                TensorSpec::new(format!("{module}.weight_scale"), Dtype::F32, shapes.weight_scale_shape()),
            ];
            if let Some(shape) = shapes.weight_zero_point_shape() {
                let dtype = if int.granularity() == Granularity::Tensor { Dtype::I8 } else { Dtype::I32 };
                specs.push(TensorSpec::new(format!("{module}.weight_zero_point"), dtype, shape));
            }
            specs.push(TensorSpec::new(format!("{module}.weight_shape"), Dtype::I64, [2]));
            specs
        }
        ggml => {
            let row_bytes = ggml.bytes(1, cols).map_err(|source| Error::Quant { tensor: name.into(), source })?;
            vec![TensorSpec::new(name, Dtype::U8, [rows, row_bytes as usize])]
        }
    })
}

/// Writes `model.safetensors` into `staging`: every source tensor in checkpoint order, each as
/// `decide` says, holding one source tensor (and its replacement) in memory at a time.
/// `quantized` names the linear weights that `decide` turns into [`Output::Quantized`], with
/// their scheme; their specs are known before any tensor is read. `smoothing` holds the
/// SmoothQuant factors of quantized weights, written beside them as `<module>.smooth_scale`.
pub(crate) fn write_checkpoint(
    source: &Source,
    staging: &Staging,
    quantized: &HashMap<String, Scheme>,
    smoothing: &HashMap<String, Vec<f32>>,
    mut decide: impl FnMut(&str, &lathe_tensor::TensorView<'_>) -> Result<Output>,
) -> Result<()> {
    let tensors: Vec<_> = source.checkpoint.tensors().map(|(_, info)| info.clone()).collect();
    let mut specs = Vec::new();
    let mut metadata = vec![("format".to_owned(), "pt".to_owned())];
    for info in &tensors {
        match quantized.get(&info.name) {
            Some(&scheme) => {
                let [rows, cols] = info.shape[..] else {
                    return Err(Error::NotAMatrix { tensor: info.name.clone(), shape: info.shape.clone() });
                };
                if scheme.is_ggml() {
                    metadata.push((format!("{GGML_METADATA_PREFIX}{}", info.name), scheme.to_string()));
                }
                specs.extend(quantized_specs(&info.name, scheme, rows, cols)?);
                if smoothing.contains_key(&info.name) {
                    specs.push(TensorSpec::new(smoothing_name(&info.name), Dtype::F32, [cols]));
                }
            }
            None => specs.push(TensorSpec::new(info.name.clone(), info.dtype, info.shape.clone())),
        }
    }
    let path = staging.path().join(lathe_tensor::SINGLE_FILE);
    let mut writer = SafeTensorsWriter::create(&path, specs, &metadata)?;
    // `stream` visits the tensors in the order of `tensors()` and drops each one's pages from the
    // resident set once written, so a pass over a checkpoint larger than memory keeps about one
    // source tensor (and its replacement) resident.
    let mut index = 0;
    source.checkpoint.stream(|view| -> Result<()> {
        let info = &tensors[index];
        index += 1;
        debug_assert_eq!(view.name(), info.name);
        match decide(&info.name, &view)? {
            Output::Copy => writer.write_tensor(&info.name, view.bytes())?,
            Output::Values(values) => {
                if values.len() as u64 != view.num_elements() {
                    return Err(Error::NotAMatrix { tensor: info.name.clone(), shape: info.shape.clone() });
                }
                let bytes: Vec<u8> = match info.dtype {
                    Dtype::F16 => values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect(),
                    Dtype::BF16 => values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect(),
                    _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                };
                writer.write_tensor(&info.name, &bytes)?;
            }
            Output::Quantized(matrix) => {
                write_quantized(&mut writer, &info.name, &matrix)?;
                if let Some(factors) = smoothing.get(&info.name) {
                    writer.write_tensor(&smoothing_name(&info.name), bytemuck::cast_slice(factors))?;
                }
            }
        }
        Ok(())
    })?;
    writer.finish()?;
    Ok(())
}

/// Where a quantized weight's SmoothQuant factors are stored: `<module>.smooth_scale`.
fn smoothing_name(weight: &str) -> String {
    format!("{}.smooth_scale", weight.strip_suffix(".weight").unwrap_or(weight))
}

fn write_quantized(writer: &mut SafeTensorsWriter, name: &str, matrix: &QuantizedMatrix) -> Result<()> {
    if let Some(bytes) = matrix.as_bytes() {
        writer.write_tensor(name, &bytes)?;
        return Ok(());
    }
    let int = matrix.as_int().expect("schemes without bytes are integer schemes");
    let packed = int.to_pack_quantized();
    let module = name.strip_suffix(".weight").unwrap_or(name);
    writer.write_tensor(&format!("{module}.weight_packed"), bytemuck::cast_slice(&packed.weight_packed))?;
    writer.write_tensor(&format!("{module}.weight_scale"), bytemuck::cast_slice(&packed.weight_scale))?;
    match &packed.weight_zero_point {
        Some(ZeroPointTensor::Packed(words)) => {
            writer.write_tensor(&format!("{module}.weight_zero_point"), bytemuck::cast_slice(words))?
        }
        Some(ZeroPointTensor::Int8(values)) => {
            writer.write_tensor(&format!("{module}.weight_zero_point"), bytemuck::cast_slice(values))?
        }
        None => {}
    }
    writer.write_tensor(&format!("{module}.weight_shape"), bytemuck::cast_slice(&packed.weight_shape()))?;
    Ok(())
}

/// Seconds since `start`, for records.
pub(crate) fn seconds_since(start: std::time::Instant) -> f64 {
    start.elapsed().as_secs_f64()
}
