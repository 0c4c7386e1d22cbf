//! `shrink`: structural compression. Whole layers go, and in the layers that stay the attention
//! heads and FFN neurons with the smallest weight norms go too; the kept rows and columns are
//! gathered into smaller dense matrices (not masks), and config.json states the new sizes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use lathe_config::{Edit, Role};
use lathe_prune::{AttentionWeights, FfnWeights, Target};
use lathe_tensor::{SafeTensorsWriter, TensorSpec};
use serde_json::{Value, json};

use super::{Record, Source, Staging, StepRecord, seconds_since};
use crate::{Error, Result};

/// Options of [`shrink`]; `None` keeps everything of that kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShrinkOptions {
    /// The layers to keep (source indices, sorted), renumbered from 0.
    pub keep_layers: Option<Vec<usize>>,
    /// Attention heads to keep in every kept layer, chosen by the L2 norm of their query, key
    /// and value rows and attention-output columns.
    pub keep_heads: Option<usize>,
    /// Fraction of FFN neurons to keep in every kept layer (rounded to the nearest count, at
    /// least 1), chosen by the L2 norm of their FFN-in rows and FFN-out columns.
    pub keep_ffn: Option<f64>,
}

impl ShrinkOptions {
    fn to_json(&self) -> Value {
        json!({ "keep_layers": self.keep_layers, "keep_heads": self.keep_heads, "keep_ffn": self.keep_ffn })
    }
}

/// The weight of `role` in a source layer, as f32.
fn weight(source: &Source, layer: usize, role: Role) -> Result<(Vec<f32>, usize, usize)> {
    let spec =
        source.architecture.layers()[layer].linears.iter().find(|linear| linear.role == role).ok_or_else(|| {
            Error::BadOption { option: "keep-heads".into(), message: format!("layer {layer} has no {role} linear") }
        })?;
    Ok((source.checkpoint.tensor(&spec.weight)?.to_f32()?, spec.out_features, spec.in_features))
}

/// Plans the edit: which layers, and per layer which heads and neurons, ranked by norm.
fn plan(source: &Source, options: &ShrinkOptions) -> Result<Edit> {
    let config = &source.config;
    let n_layers = config.num_layers();
    let layers = options.keep_layers.clone().unwrap_or_else(|| (0..n_layers).collect());
    if let Some(&bad) = layers.iter().find(|&&layer| layer >= n_layers) {
        return Err(Error::BadOption {
            option: "keep-layers".into(),
            message: format!("layer {bad} does not exist: the model has layers 0 to {}", n_layers.saturating_sub(1)),
        });
    }
    let mut edit = Edit::new().keep_layers(layers.clone());
    for &layer in &layers {
        let shape = config.layers()[layer];
        if let Some(keep) = options.keep_heads {
            if keep == 0 || keep > shape.heads {
                return Err(Error::BadOption {
                    option: "keep-heads".into(),
                    message: format!("{keep} heads: layer {layer} has {} (keep at least 1)", shape.heads),
                });
            }
            let (q, hidden, _) = weight(source, layer, Role::Query)?;
            let (k, ..) = weight(source, layer, Role::Key)?;
            let (v, ..) = weight(source, layer, Role::Value)?;
            let (o, ..) = weight(source, layer, Role::AttentionOutput)?;
            let attention = AttentionWeights { q: &q, k: &k, v: &v, o: &o, hidden, n_heads: shape.heads };
            let mut heads = attention
                .heads_to_keep(2.0, Target::Keep(keep))
                .map_err(|source| Error::Prune { tensor: format!("layer {layer} attention"), source })?;
            heads.sort_unstable();
            edit = edit.keep_heads(layer, heads);
        }
        if let Some(fraction) = options.keep_ffn {
            if !(fraction > 0.0 && fraction <= 1.0) {
                return Err(Error::BadOption {
                    option: "keep-ffn".into(),
                    message: format!("{fraction} is outside (0, 1]"),
                });
            }
            let keep = ((fraction * shape.intermediate as f64).round() as usize).max(1);
            let (up, intermediate, hidden) = weight(source, layer, Role::FfnIn)?;
            let (down, ..) = weight(source, layer, Role::FfnOut)?;
            let ffn = FfnWeights { up: &up, gate: None, down: &down, hidden, intermediate };
            let mut neurons = ffn
                .neurons_to_keep(2.0, Target::Keep(keep))
                .map_err(|source| Error::Prune { tensor: format!("layer {layer} ffn"), source })?;
            neurons.sort_unstable();
            edit = edit.keep_neurons(layer, neurons);
        }
    }
    Ok(edit)
}

/// Shrinks `source` into the new folder `out`. Returns the folder written.
///
/// # Errors
/// For a selection that does not fit the model, a quantized source, or a file that cannot be
/// read or written.
pub fn shrink(source: &Source, out: &Path, options: &ShrinkOptions) -> Result<PathBuf> {
    if source.is_quantized() {
        return Err(Error::AlreadyQuantized { folder: source.dir.clone() });
    }
    let start = Instant::now();
    let edit = plan(source, options)?;
    let edited = source.architecture.edit(&edit)?;
    let staging = Staging::new(out)?;
    staging.copy_companions(&source.dir)?;
    let mut specs = Vec::with_capacity(edited.tensors.len());
    for tensor in &edited.tensors {
        let dtype = source.checkpoint.tensor(&tensor.source_name)?.dtype();
        specs.push(TensorSpec::new(tensor.new_name.clone(), dtype, tensor.shape.clone()));
    }
    let path = staging.path().join(lathe_tensor::SINGLE_FILE);
    let mut writer = SafeTensorsWriter::create(&path, specs, &[("format".to_owned(), "pt".to_owned())])?;
    for tensor in &edited.tensors {
        let view = source.checkpoint.tensor(&tensor.source_name)?;
        if tensor.is_copy() {
            writer.write_tensor(&tensor.new_name, view.bytes())?;
            continue;
        }
        let element = match view.dtype().byte_len(1) {
            Some(bytes) if !view.dtype().is_blocked() => bytes as usize,
            _ => return Err(Error::NotAMatrix { tensor: tensor.source_name.clone(), shape: view.shape().to_vec() }),
        };
        let shape = view.shape();
        let bytes = view.bytes();
        let (rows, cols) = match shape {
            [rows] => (*rows, 1),
            [rows, cols] => (*rows, *cols),
            _ => return Err(Error::NotAMatrix { tensor: tensor.source_name.clone(), shape: shape.to_vec() }),
        };
        let row_ids: Vec<usize> = tensor.rows.clone().unwrap_or_else(|| (0..rows).collect());
        let col_ids: Vec<usize> = tensor.cols.clone().unwrap_or_else(|| (0..cols).collect());
        let mut out_bytes = Vec::with_capacity(row_ids.len() * col_ids.len() * element);
        for &row in &row_ids {
            for &col in &col_ids {
                let at = (row * cols + col) * element;
                out_bytes.extend_from_slice(&bytes[at..at + element]);
            }
        }
        writer.write_tensor(&tensor.new_name, &out_bytes)?;
    }
    writer.finish()?;
    let config: Value = serde_json::from_str(&edited.config.to_json()).expect("edited configs are valid JSON");
    staging.write_json("config.json", &config)?;
    let step = StepRecord {
        step: "shrink".into(),
        method: "norm".into(),
        options: options.to_json(),
        calibration: None,
        seconds: seconds_since(start),
    };
    staging.write_json(super::RECORD_FILE, &Record::extend(source.record.as_ref(), &source.dir, step).to_json())?;
    staging.commit()
}
