//! How a checkpoint stores its linear weights when lathe (or the compressed-tensors package)
//! compressed them: compressed-tensors `pack-quantized` integers, GGML blocks, or plain floats.
//! See docs/formats.md for the layouts.

use std::collections::HashMap;
use std::path::Path;

use lathe_config::Config;
use lathe_quant::linear::{IntMatrix, PackQuantized, ZeroPointTensor};
use lathe_quant::{ActivationBits, Bits, Granularity, IntScheme, QuantizedMatrix, Scheme};
use lathe_tensor::{Checkpoint, Dtype};
use serde_json::Value;

use crate::{Error, Result};

/// The safetensors metadata key prefix naming a GGML block tensor's type.
pub(crate) const GGML_METADATA_PREFIX: &str = "lathe.ggml.";

/// What quantized linears do with their inputs, from the config's `quantization_config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inputs {
    /// Quantized per token on the fly (dynamic int8 or 7-bit integers for integer schemes,
    /// GGML's Q8 activation blocks for GGML ones).
    Quantized(ActivationBits),
    /// Kept in f32 (weight-only quantization).
    F32,
}

/// The storage of a checkpoint's quantized linears.
#[derive(Debug, Default)]
pub(crate) struct Stored {
    /// The integer scheme of `pack-quantized` weights, if the config has one.
    int: Option<IntScheme>,
    /// GGML block tensors by weight name, from the safetensors metadata.
    ggml: HashMap<String, Scheme>,
    inputs: Option<Inputs>,
}

/// The tensor beside a quantized linear's weights that holds its SmoothQuant factors.
pub(crate) const SMOOTHING_SUFFIX: &str = ".smooth_scale";

fn invalid(file: &Path, message: String) -> Error {
    Error::Invalid { file: file.to_path_buf(), message }
}

impl Stored {
    /// Reads the `quantization_config` block of `config` (if any) and the GGML entries of the
    /// checkpoint's metadata.
    pub(crate) fn read(config: &Config, checkpoint: &Checkpoint) -> Result<Stored> {
        let file = config.path();
        let mut stored = Stored::default();
        for (key, value) in checkpoint.metadata() {
            if let Some(name) = key.strip_prefix(GGML_METADATA_PREFIX) {
                let scheme: Scheme = value.parse()?;
                if !scheme.is_ggml() {
                    return Err(invalid(file, format!("metadata `{key}` is `{value}`, not a GGML block type")));
                }
                stored.ggml.insert(name.to_owned(), scheme);
            }
        }
        let Some(block) = config.json().get("quantization_config") else {
            return Ok(stored);
        };
        let key = |name: &str| block.get(name).and_then(Value::as_str);
        match (key("quant_method"), key("format")) {
            (Some("compressed-tensors"), Some("pack-quantized")) => {
                let groups = block.get("config_groups").and_then(Value::as_object).filter(|groups| groups.len() == 1);
                let Some(group) = groups.and_then(|groups| groups.values().next()) else {
                    return Err(invalid(
                        file,
                        "quantization_config.config_groups must hold exactly one group (lathe reads one scheme per \
                         model)"
                            .into(),
                    ));
                };
                stored.int = Some(int_scheme(group.get("weights"), file)?);
                stored.inputs = Some(match group.get("input_activations") {
                    None | Some(Value::Null) => Inputs::F32,
                    Some(args) => {
                        let field = |name: &str| args.get(name).cloned().unwrap_or(Value::Null);
                        let bits = field("num_bits").as_u64().and_then(|bits| u32::try_from(bits).ok());
                        let bits = bits.and_then(ActivationBits::from_bits);
                        let dynamic_per_token = field("type") == "int"
                            && field("dynamic") == true
                            && field("symmetric") == true
                            && field("strategy") == "token";
                        match bits {
                            Some(bits) if dynamic_per_token => Inputs::Quantized(bits),
                            _ => {
                                return Err(invalid(
                                    file,
                                    format!(
                                        "quantization_config input_activations {args}: lathe runs only dynamic \
                                         symmetric int8 (or 7-bit) per token, or f32 (null)"
                                    ),
                                ));
                            }
                        }
                    }
                });
            }
            (Some("lathe"), Some("ggml-blocks")) => {
                stored.inputs = Some(match key("activations") {
                    Some("int8") => Inputs::Quantized(ActivationBits::Eight),
                    Some("f32") => Inputs::F32,
                    other => {
                        return Err(invalid(
                            file,
                            format!("quantization_config.activations is {other:?}: expected \"int8\" or \"f32\""),
                        ));
                    }
                });
            }
            (method, format) => {
                return Err(Error::Unsupported {
                    file: file.to_path_buf(),
                    message: format!(
                        "quantization_config with quant_method {method:?} and format {format:?}: lathe reads \
                         compressed-tensors pack-quantized and its own ggml-blocks folders"
                    ),
                });
            }
        }
        Ok(stored)
    }

    /// The checkpoint's tensors as the config describes them: each `pack-quantized` group
    /// (`X.weight_packed`, `X.weight_scale`, `X.weight_zero_point`, `X.weight_shape`) becomes
    /// `X.weight` with the shape in `weight_shape`, and each GGML block tensor takes its logical
    /// `[rows, cols]` shape.
    pub(crate) fn logical_tensors(&self, checkpoint: &Checkpoint) -> Result<Vec<(String, Vec<usize>)>> {
        let mut tensors = Vec::new();
        for (file, info) in checkpoint.tensors() {
            let name = info.name.as_str();
            if self.int.is_some() {
                if let Some(module) = name.strip_suffix(".weight_shape") {
                    let shape = checkpoint.tensor(name)?;
                    let dims: Option<&[i64]> = shape.as_slice();
                    let dims: Vec<usize> = match dims {
                        Some(&[rows, cols]) if rows >= 0 && cols >= 0 => vec![rows as usize, cols as usize],
                        _ => {
                            return Err(invalid(
                                file,
                                format!("`{name}` must be an int64 [2] tensor holding the weight's shape"),
                            ));
                        }
                    };
                    tensors.push((format!("{module}.weight"), dims));
                    continue;
                }
                if [".weight_packed", ".weight_scale", ".weight_zero_point", SMOOTHING_SUFFIX]
                    .iter()
                    .any(|s| name.ends_with(s))
                {
                    continue;
                }
            }
            if !self.ggml.is_empty() && name.ends_with(SMOOTHING_SUFFIX) {
                continue;
            }
            if let Some(scheme) = self.ggml.get(name) {
                let block_bytes = scheme.bytes(1, 32)? as usize;
                match info.shape[..] {
                    [rows, row_bytes] if info.dtype == Dtype::U8 && row_bytes % block_bytes == 0 => {
                        tensors.push((name.to_owned(), vec![rows, row_bytes / block_bytes * 32]));
                    }
                    _ => {
                        return Err(invalid(
                            file,
                            format!(
                                "GGML {scheme} tensor `{name}` must be U8 [rows, blocks x {block_bytes}], found {} {:?}",
                                info.dtype, info.shape
                            ),
                        ));
                    }
                }
                continue;
            }
            tensors.push((name.to_owned(), info.shape.clone()));
        }
        Ok(tensors)
    }

    /// SmoothQuant's factors of the quantized linear whose weight is `name` (`cols` of them),
    /// when the folder stores them as `<module>.smooth_scale` (see docs/formats.md).
    pub(crate) fn smoothing(&self, checkpoint: &Checkpoint, name: &str, cols: usize) -> Result<Option<Vec<f32>>> {
        let module = name.strip_suffix(".weight").unwrap_or(name);
        let factors_name = format!("{module}{SMOOTHING_SUFFIX}");
        let Ok(view) = checkpoint.tensor(&factors_name) else { return Ok(None) };
        if view.dtype() != Dtype::F32 || view.shape() != [cols] {
            return Err(invalid(
                checkpoint.file_of(&factors_name),
                format!("`{factors_name}` must be F32 [{cols}], found {} {:?}", view.dtype(), view.shape()),
            ));
        }
        Ok(Some(view.to_f32()?))
    }

    /// The quantized weights of the linear whose weight is `name` (`[rows, cols]`), set to quantize
    /// its activations with the bits the config names, and what it does with its inputs; `None`
    /// when the weight is stored as plain floats.
    pub(crate) fn load(
        &self,
        checkpoint: &Checkpoint,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<(QuantizedMatrix, Inputs)>> {
        let inputs = self.inputs.unwrap_or(Inputs::Quantized(ActivationBits::Eight));
        let context = |source: lathe_quant::Error| Error::Invalid {
            file: checkpoint.file_of(name).to_path_buf(),
            message: format!("tensor `{name}`: {source}"),
        };
        // The matrix set up for its inputs: quantized activations of the bits the config names.
        let ready = |matrix: QuantizedMatrix| match inputs {
            Inputs::Quantized(bits) => {
                matrix.with_activation_bits(bits).map(|matrix| Some((matrix, inputs))).map_err(context)
            }
            Inputs::F32 => Ok(Some((matrix, inputs))),
        };
        if let Some(&scheme) = self.ggml.get(name) {
            let view = checkpoint.tensor(name)?;
            return ready(QuantizedMatrix::from_bytes(scheme, rows, cols, view.bytes()).map_err(context)?);
        }
        let (Some(scheme), Some(module)) = (self.int, name.strip_suffix(".weight")) else {
            return Ok(None);
        };
        let packed_name = format!("{module}.weight_packed");
        if checkpoint.tensor(&packed_name).is_err() {
            return Ok(None);
        }
        let int32 = |suffix: &str| -> Result<Vec<i32>> {
            let view = checkpoint.tensor(&format!("{module}.{suffix}"))?;
            if view.dtype() != Dtype::I32 {
                return Err(invalid(
                    checkpoint.file_of(&format!("{module}.{suffix}")),
                    format!("`{module}.{suffix}` is {}, not I32", view.dtype()),
                ));
            }
            Ok(bytemuck::pod_collect_to_vec(view.bytes()))
        };
        let scale = checkpoint.tensor(&format!("{module}.weight_scale"))?.to_f32()?;
        if let Some(index) = scale.iter().position(|s| !s.is_finite()) {
            return Err(invalid(
                checkpoint.file_of(&format!("{module}.weight_scale")),
                format!("`{module}.weight_scale` value {index} is {}: scales must be finite", scale[index]),
            ));
        }
        let weight_zero_point = if scheme.is_symmetric() {
            None
        } else if scheme.granularity() == Granularity::Tensor {
            let view = checkpoint.tensor(&format!("{module}.weight_zero_point"))?;
            Some(ZeroPointTensor::Int8(bytemuck::pod_collect_to_vec(view.bytes())))
        } else {
            Some(ZeroPointTensor::Packed(int32("weight_zero_point")?))
        };
        let packed = PackQuantized {
            rows,
            cols,
            scheme,
            weight_packed: int32("weight_packed")?,
            weight_scale: scale,
            weight_zero_point,
        };
        ready(QuantizedMatrix::from_int(IntMatrix::from_pack_quantized(&packed).map_err(context)?))
    }
}

/// The integer scheme of a compressed-tensors `weights` block.
fn int_scheme(weights: Option<&Value>, file: &Path) -> Result<IntScheme> {
    let bad = |what: String| invalid(file, format!("quantization_config weights: {what}"));
    let weights = weights.ok_or_else(|| bad("missing".into()))?;
    let field = |name: &str| weights.get(name).cloned().unwrap_or(Value::Null);
    if field("type") != "int" {
        return Err(bad(format!("type is {}, lathe reads \"int\"", field("type"))));
    }
    let bits = match field("num_bits").as_u64() {
        Some(8) => Bits::Int8,
        Some(4) => Bits::Int4,
        other => return Err(bad(format!("num_bits is {other:?}: lathe reads 4 and 8"))),
    };
    let granularity = match (field("strategy").as_str(), field("group_size").as_u64()) {
        (Some("tensor"), _) => Granularity::Tensor,
        (Some("channel"), _) => Granularity::Channel,
        (Some("group"), Some(size)) => match std::num::NonZeroUsize::new(size as usize) {
            Some(size) => Granularity::Group(size),
            None => return Err(bad("group_size is 0".into())),
        },
        (strategy, size) => {
            return Err(bad(format!("strategy {strategy:?} with group_size {size:?} is not tensor, channel or group")));
        }
    };
    let symmetric = field("symmetric").as_bool().unwrap_or(true);
    Ok(IntScheme::new(bits, granularity, symmetric)?)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use lathe_tensor::SafeTensors;

    use crate::{BertModel, LinearKind};

    /// Folders the compressed-tensors package wrote (kept with lathe-quant's fixtures).
    fn golden(folder: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../quant/tests/data/compressed_tensors").join(folder)
    }

    #[test]
    fn compressed_tensors_folders_load_to_the_package_values() {
        for (folder, scheme) in
            [("int4_g32_sym", "int4-g32"), ("int4_g32_asym", "int4-g32-asym"), ("int8_channel_sym", "int8-channel")]
        {
            let dir = golden(folder);
            let model = BertModel::open(&dir).unwrap_or_else(|err| panic!("{folder}: {err}"));
            let expected = SafeTensors::open(dir.join("dequantized_by_package.safetensors")).unwrap();
            let mut checked = 0;
            for (layer, role, linear) in model.linears() {
                // The package's folders say `input_activations: null`: weight-only.
                assert_eq!(linear.kind(), LinearKind::WeightOnly(scheme.parse().unwrap()), "{folder} {layer} {role:?}");
                let weight = format!("encoder.layer.{layer}.{}.weight", module(role));
                let values = expected.tensor(&weight).unwrap().to_f32().unwrap();
                assert_eq!(linear.weights_f32(), values, "{folder}: {weight}");
                checked += 1;
            }
            assert_eq!(checked, 12, "{folder}");
        }
    }

    fn module(role: lathe_config::Role) -> &'static str {
        use lathe_config::Role;
        match role {
            Role::Query => "attention.self.query",
            Role::Key => "attention.self.key",
            Role::Value => "attention.self.value",
            Role::AttentionOutput => "attention.output.dense",
            Role::FfnIn => "intermediate.dense",
            Role::FfnOut => "output.dense",
            other => panic!("BERT has no {other:?} linear"),
        }
    }
}
