//! `quantize`: the encoder's linears stored in a lathe-quant scheme. Integer schemes are written
//! in the compressed-tensors `pack-quantized` layout (what the compressed-tensors package writes,
//! so transformers and vLLM read them too); GGML schemes as raw block tensors whose type is in
//! the safetensors metadata; f16 and bf16 as plain half-precision weights.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use lathe_config::Role;
use lathe_quant::{Granularity, QuantizedMatrix, Scheme};
use serde_json::{Value, json};

use super::{Output, Record, Source, Staging, StepRecord, seconds_since, write_checkpoint};
use crate::{Error, Result};

/// How the weights are rounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantizeMethod {
    /// Round to nearest, each weight on its own.
    Rtn,
    /// GPTQ: column by column, the rounding error compensated on the columns not yet rounded,
    /// weighted by the calibration activations' Hessian.
    Gptq,
}

impl QuantizeMethod {
    /// `rtn` or `gptq`.
    pub fn name(self) -> &'static str {
        match self {
            QuantizeMethod::Rtn => "rtn",
            QuantizeMethod::Gptq => "gptq",
        }
    }
}

impl std::str::FromStr for QuantizeMethod {
    type Err = Error;

    fn from_str(text: &str) -> Result<QuantizeMethod> {
        match text {
            "rtn" => Ok(QuantizeMethod::Rtn),
            "gptq" => Ok(QuantizeMethod::Gptq),
            _ => Err(Error::BadOption { option: "method".into(), message: format!("`{text}`: expected rtn or gptq") }),
        }
    }
}

/// What the quantized linears do with their inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivationMode {
    /// Quantized per token on the fly (int8 for integer schemes, Q8_0/Q8_1 blocks for GGML
    /// ones), so the product runs on integer kernels: the default.
    Int8,
    /// Quantized per token to 7 bits (integer schemes only): the faster `maddubs` kernel of
    /// lathe-quant, at twice the activations' rounding error (written as compressed-tensors
    /// `input_activations` with `num_bits: 7`).
    Int7,
    /// Kept in f32: weight-only quantization (less error, less speed).
    F32,
}

impl ActivationMode {
    /// `int8`, `int7` or `f32`.
    pub fn name(self) -> &'static str {
        match self {
            ActivationMode::Int8 => "int8",
            ActivationMode::Int7 => "int7",
            ActivationMode::F32 => "f32",
        }
    }
}

impl std::str::FromStr for ActivationMode {
    type Err = Error;

    fn from_str(text: &str) -> Result<ActivationMode> {
        match text {
            "int8" => Ok(ActivationMode::Int8),
            "int7" => Ok(ActivationMode::Int7),
            "f32" => Ok(ActivationMode::F32),
            _ => Err(Error::BadOption {
                option: "activations".into(),
                message: format!("`{text}`: expected int8, int7 or f32"),
            }),
        }
    }
}

/// Options of [`quantize`].
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeOptions {
    /// The storage scheme of the quantized linears.
    pub scheme: Scheme,
    /// Rounding method.
    pub method: QuantizeMethod,
    /// Activations at run time (ignored for f16 and bf16, which always keep f32 activations).
    pub activations: ActivationMode,
    /// Linears of these roles stay as they are.
    pub keep_f32: Vec<Role>,
}

impl QuantizeOptions {
    /// RTN with int8 activations, every encoder linear quantized.
    pub fn new(scheme: Scheme) -> QuantizeOptions {
        QuantizeOptions { scheme, method: QuantizeMethod::Rtn, activations: ActivationMode::Int8, keep_f32: Vec::new() }
    }

    /// Errors when the options do not go together: 7-bit activations with a GGML or float
    /// scheme (whose activations follow the format).
    pub fn check(&self) -> Result<()> {
        if self.activations == ActivationMode::Int7 && !matches!(self.scheme, Scheme::Int(_)) {
            return Err(Error::BadOption {
                option: "activations".into(),
                message: format!("int7 needs an integer scheme (int8-channel, int4-g128 ...), not {}", self.scheme),
            });
        }
        Ok(())
    }

    fn to_json(&self) -> Value {
        let keep: Vec<&str> = self.keep_f32.iter().map(|role| role.name()).collect();
        json!({
            "scheme": self.scheme.to_string(),
            "method": self.method.name(),
            "activations": self.activations.name(),
            "keep_f32": keep,
        })
    }
}

/// New weights computed before writing (GPTQ's rounded matrices, smoothed weights and their factors),
/// by tensor name. Empty for plain RTN.
#[derive(Debug, Default)]
pub(crate) struct Precomputed {
    pub(crate) matrices: HashMap<String, QuantizedMatrix>,
    pub(crate) values: HashMap<String, Vec<f32>>,
    pub(crate) calibration: Option<super::Calibration>,
    /// SmoothQuant factors by weight name.
    pub(crate) smoothing: HashMap<String, Vec<f32>>,
    pub(crate) extra_options: Vec<(String, Value)>,
}

/// Quantizes the encoder linears of the folder `source` into the new folder `out` by round to
/// nearest. Returns the folder written.
///
/// # Errors
/// When the source is already quantized, a linear's width is not a whole number of the
/// scheme's blocks, a weight is not finite, or a file cannot be read or written (each error
/// names the folder, file or tensor).
pub fn quantize(source: &Source, out: &Path, options: &QuantizeOptions) -> Result<PathBuf> {
    if options.method != QuantizeMethod::Rtn {
        return Err(Error::NeedsCalibration { method: options.method.name().into() });
    }
    quantize_with(source, out, options, Precomputed::default(), Instant::now())
}

pub(crate) fn quantize_with(
    source: &Source,
    out: &Path,
    options: &QuantizeOptions,
    precomputed: Precomputed,
    start: Instant,
) -> Result<PathBuf> {
    options.check()?;
    if source.is_quantized() {
        return Err(Error::AlreadyQuantized { folder: source.dir.clone() });
    }
    let scheme = options.scheme;
    let targets: HashMap<String, Scheme> = source
        .linear_weights()
        .into_iter()
        .filter(|(_, _, _, role, _)| !options.keep_f32.contains(role))
        .map(|(name, ..)| (name, scheme))
        .collect();
    let block = scheme.block_size();
    for (name, _, cols, ..) in source.linear_weights() {
        if targets.contains_key(&name) && !cols.is_multiple_of(block) {
            return Err(Error::Quant {
                tensor: name,
                source: lathe_quant::Error::BlockMisfit { scheme: scheme.to_string(), cols, block },
            });
        }
    }

    let staging = Staging::new(out)?;
    staging.copy_companions(&source.dir)?;
    let Precomputed { mut matrices, mut values, calibration, smoothing, extra_options } = precomputed;
    write_checkpoint(source, &staging, &targets, &smoothing, |name, view| {
        if targets.contains_key(name) {
            if let Some(matrix) = matrices.remove(name) {
                return Ok(Output::Quantized(Box::new(matrix)));
            }
            // Aligned f32 data is quantized where it is mapped; anything else through one copy.
            let copy;
            let weights: &[f32] = match values.remove(name) {
                Some(weights) => {
                    copy = weights;
                    &copy
                }
                None => match view.as_slice::<f32>().filter(|_| view.dtype() == lathe_tensor::Dtype::F32) {
                    Some(mapped) => mapped,
                    None => {
                        copy = view.to_f32()?;
                        &copy
                    }
                },
            };
            let [rows, cols] = view.shape()[..] else { unreachable!("targets are checked to be matrices") };
            let matrix = QuantizedMatrix::quantize(weights, rows, cols, scheme)
                .map_err(|source| Error::Quant { tensor: name.to_owned(), source })?;
            return Ok(Output::Quantized(Box::new(matrix)));
        }
        Ok(match values.remove(name) {
            Some(new) => Output::Values(new),
            None => Output::Copy,
        })
    })?;

    let mut config = source.config_json();
    if let Some(block) = quantization_config(source, &targets, options) {
        config.insert("quantization_config".into(), block);
    }
    staging.write_json("config.json", &Value::Object(config))?;
    let mut step_options = options.to_json();
    for (key, value) in extra_options {
        step_options[key] = value;
    }
    let step = StepRecord {
        step: "quantize".into(),
        method: options.method.name().into(),
        options: step_options,
        calibration,
        seconds: seconds_since(start),
    };
    let record = Record::extend(source.record.as_ref(), &source.dir, step);
    staging.write_json(super::RECORD_FILE, &record.to_json())?;
    staging.commit()
}

/// The linear modules (weight names without `.weight`) left unquantized: the pooler and the
/// kept roles, in checkpoint order.
fn ignored_modules(source: &Source, targets: &HashMap<String, Scheme>) -> Vec<String> {
    let mut ignored: Vec<String> = source
        .linear_weights()
        .into_iter()
        .filter(|(name, ..)| !targets.contains_key(name))
        .map(|(name, ..)| name.trim_end_matches(".weight").to_owned())
        .collect();
    if source.architecture.has_pooler() {
        ignored.push(format!("{}pooler.dense", source.architecture.prefix()));
    }
    ignored
}

/// The `quantization_config` block of config.json: compressed-tensors' for integer schemes
/// (field for field what the package writes), lathe's own for GGML blocks, none for f16/bf16.
fn quantization_config(source: &Source, targets: &HashMap<String, Scheme>, options: &QuantizeOptions) -> Option<Value> {
    let ignore = ignored_modules(source, targets);
    match options.scheme {
        Scheme::F16 | Scheme::Bf16 => None,
        Scheme::Int(int) => {
            let (strategy, group_size) = match int.granularity() {
                Granularity::Tensor => ("tensor", Value::Null),
                Granularity::Channel => ("channel", Value::Null),
                Granularity::Group(size) => ("group", json!(size.get())),
            };
            let weights = json!({
                "dynamic": false,
                "group_size": group_size,
                "num_bits": int.bits().bits(),
                "strategy": strategy,
                "symmetric": int.is_symmetric(),
                "type": "int",
            });
            let input_activations = match options.activations {
                ActivationMode::F32 => Value::Null,
                ActivationMode::Int8 | ActivationMode::Int7 => json!({
                    "dynamic": true,
                    "group_size": null,
                    "num_bits": if options.activations == ActivationMode::Int7 { 7 } else { 8 },
                    "strategy": "token",
                    "symmetric": true,
                    "type": "int",
                }),
            };
            let mut group = BTreeMap::new();
            group.insert("format", json!("pack-quantized"));
            group.insert("input_activations", input_activations);
            group.insert("output_activations", Value::Null);
            group.insert("targets", json!(["Linear"]));
            group.insert("weights", weights);
            Some(json!({
                "config_groups": { "group_0": group },
                "format": "pack-quantized",
                "global_compression_ratio": null,
                "ignore": ignore,
                "kv_cache_scheme": null,
                "moe_sparsity_config": null,
                "quant_method": "compressed-tensors",
                "quantization_status": "compressed",
                "sparsity_config": {},
                "transform_config": {},
                "version": "0.20.0",
            }))
        }
        ggml => Some(json!({
            "activations": options.activations.name(),
            "format": "ggml-blocks",
            "ignore": ignore,
            "quant_method": "lathe",
            "scheme": ggml.to_string(),
        })),
    }
}
