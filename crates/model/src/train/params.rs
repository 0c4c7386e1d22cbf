//! The trainable weights of a BERT-family encoder as plain f32 vectors: loaded from a
//! checkpoint, cut from one by a structural edit, or drawn at random; written back as a complete
//! safetensors checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use lathe_config::{Architecture, Config, Edit, Family, Role, Tensor, TensorKind};
use lathe_tensor::{Checkpoint, Dtype, SafeTensorsWriter, TensorSpec};

use super::math::Rng;
use crate::bert::{self, Positions};
use crate::error::io_error;
use crate::{Error, Result};

/// What a parameter tensor is, which decides whether AdamW decays it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParamKind {
    /// Word, position or token-type embeddings (decayed, as transformers' `Trainer` does).
    Embedding,
    /// A linear's weight matrix (decayed).
    Weight,
    /// A linear's bias (not decayed).
    Bias,
    /// A LayerNorm weight or bias (not decayed).
    Norm,
}

/// The name, shape and kind of one parameter tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    /// Name in the checkpoint.
    pub name: String,
    /// Shape as stored.
    pub shape: Vec<usize>,
    /// What it is.
    pub kind: ParamKind,
}

impl ParamSpec {
    /// Whether decoupled weight decay applies: embeddings and linear weights, not biases or
    /// LayerNorm parameters.
    pub fn decays(&self) -> bool {
        matches!(self.kind, ParamKind::Embedding | ParamKind::Weight)
    }

    /// Number of values.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LinearWeights {
    /// `[out, in]`, row-major.
    pub(crate) weight: Vec<f32>,
    pub(crate) bias: Vec<f32>,
    pub(crate) out_features: usize,
    pub(crate) in_features: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NormWeights {
    pub(crate) weight: Vec<f32>,
    pub(crate) bias: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LayerWeights {
    pub(crate) heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) query: LinearWeights,
    pub(crate) key: LinearWeights,
    pub(crate) value: LinearWeights,
    pub(crate) attention_output: LinearWeights,
    pub(crate) ffn_in: LinearWeights,
    pub(crate) ffn_out: LinearWeights,
    pub(crate) attention_norm: NormWeights,
    pub(crate) output_norm: NormWeights,
}

impl LayerWeights {
    fn linears(&self) -> [&LinearWeights; 6] {
        [&self.query, &self.key, &self.value, &self.attention_output, &self.ffn_in, &self.ffn_out]
    }
}

/// One value per trainable parameter of an encoder: the weights themselves in [`BertParams`],
/// and gradients or optimizer moments of the same shapes.
///
/// [`tensors`](Self::tensors) lists the tensors in one fixed order, the order of
/// [`BertParams::specs`]: word, position and token-type embeddings, the embedding LayerNorm,
/// then per layer query, key, value, attention output, FFN in and FFN out (weight then bias),
/// the attention LayerNorm and the output LayerNorm (weight then bias).
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    pub(crate) word_embeddings: Vec<f32>,
    pub(crate) position_embeddings: Vec<f32>,
    /// Empty for models without token types (DistilBERT).
    pub(crate) token_type_embeddings: Vec<f32>,
    pub(crate) embedding_norm: NormWeights,
    pub(crate) layers: Vec<LayerWeights>,
}

impl Weights {
    /// Every tensor, in the fixed order (see the type's docs). A model without token types
    /// lists no token-type tensor.
    pub fn tensors(&self) -> Vec<&[f32]> {
        let mut tensors: Vec<&[f32]> = vec![&self.word_embeddings, &self.position_embeddings];
        if !self.token_type_embeddings.is_empty() {
            tensors.push(&self.token_type_embeddings);
        }
        tensors.extend([&self.embedding_norm.weight[..], &self.embedding_norm.bias]);
        for layer in &self.layers {
            for linear in layer.linears() {
                tensors.extend([&linear.weight[..], &linear.bias]);
            }
            for norm in [&layer.attention_norm, &layer.output_norm] {
                tensors.extend([&norm.weight[..], &norm.bias]);
            }
        }
        tensors
    }

    /// Every tensor, mutable, in the same order as [`tensors`](Self::tensors).
    pub fn tensors_mut(&mut self) -> Vec<&mut [f32]> {
        let mut tensors: Vec<&mut [f32]> = vec![&mut self.word_embeddings, &mut self.position_embeddings];
        if !self.token_type_embeddings.is_empty() {
            tensors.push(&mut self.token_type_embeddings);
        }
        tensors.extend([&mut self.embedding_norm.weight[..], &mut self.embedding_norm.bias]);
        for layer in &mut self.layers {
            let (attention_norm, output_norm) = (&mut layer.attention_norm, &mut layer.output_norm);
            for linear in [
                &mut layer.query,
                &mut layer.key,
                &mut layer.value,
                &mut layer.attention_output,
                &mut layer.ffn_in,
                &mut layer.ffn_out,
            ] {
                tensors.extend([&mut linear.weight[..], &mut linear.bias]);
            }
            for norm in [attention_norm, output_norm] {
                tensors.extend([&mut norm.weight[..], &mut norm.bias]);
            }
        }
        tensors
    }

    /// The same shapes, all zero.
    pub fn zeros_like(&self) -> Weights {
        let mut zeros = self.clone();
        zeros.fill(0.0);
        zeros
    }

    /// Sets every value to `value` (0 to clear gradients between steps).
    pub fn fill(&mut self, value: f32) {
        self.tensors_mut().into_iter().for_each(|tensor| tensor.fill(value));
    }

    /// The L2 norm over all tensors, accumulated in f64.
    pub fn norm(&self) -> f64 {
        self.tensors().iter().flat_map(|t| t.iter()).map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt()
    }

    /// Multiplies every value by `factor`.
    pub fn scale(&mut self, factor: f32) {
        self.tensors_mut().into_iter().for_each(|tensor| tensor.iter_mut().for_each(|v| *v *= factor));
    }

    /// Number of values over all tensors.
    pub fn numel(&self) -> usize {
        self.tensors().iter().map(|t| t.len()).sum()
    }

    /// Whether every layer has the same tensor sizes as in `other`.
    pub(crate) fn same_shapes(&self, other: &Weights) -> bool {
        let (a, b) = (self.tensors(), other.tensors());
        a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| x.len() == y.len())
    }
}

/// All trainable weights of a BERT-family encoder (BERT, RoBERTa, XLM-R, DistilBERT with the
/// exact erf GELU) as f32 vectors, with the config and tensor names they came from.
///
/// Build one from a model folder ([`open`](Self::open)), from a structural edit of one
/// ([`from_edit`](Self::from_edit), e.g. a DistilBERT-style student keeping every other layer)
/// or at random ([`random`](Self::random)); run [`forward`](Self::forward) to get a
/// [`Tape`](super::Tape), and [`save`](Self::save) the result as a folder that
/// [`BertModel::open`](crate::BertModel::open) and transformers load. Tensors described by the
/// architecture but not trained (BERT's pooler) are carried along unchanged.
#[derive(Debug, Clone)]
pub struct BertParams {
    pub(crate) config: Config,
    architecture: Architecture,
    specs: Vec<ParamSpec>,
    pub(crate) weights: Weights,
    /// Described tensors that are not trained (the pooler), by name, as f32.
    frozen: Vec<(String, Vec<f32>)>,
    pub(crate) eps: f64,
    pub(crate) positions: Positions,
    pub(crate) max_seq_len: usize,
}

impl BertParams {
    /// Loads `dir/config.json` and the checkpoint in `dir` (F32, F16 or BF16, converted to f32).
    ///
    /// # Errors
    /// As [`from_checkpoint`](Self::from_checkpoint), plus [`Error::Io`] and
    /// [`Error::Config`] for the config file.
    pub fn open(dir: impl AsRef<Path>) -> Result<BertParams> {
        let (config, checkpoint) = open_folder(dir.as_ref())?;
        BertParams::from_checkpoint(config, &checkpoint)
    }

    /// The weights of an open checkpoint, checked against the config's description.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for a family other than BERT, RoBERTa, XLM-R and DistilBERT, an
    /// activation other than `gelu` (exact), relative positions, or grouped key/value heads;
    /// [`Error::Checkpoint`] naming every missing, extra and misshaped tensor;
    /// [`Error::Tensor`] for a dtype that does not convert to f32.
    pub fn from_checkpoint(config: Config, checkpoint: &Checkpoint) -> Result<BertParams> {
        let architecture = checked_architecture(&config, checkpoint)?;
        let load = |tensor: &Tensor| -> Result<Vec<f32>> { Ok(checkpoint.tensor(&tensor.name)?.to_f32()?) };
        BertParams::build(config, architecture, load)
    }

    /// The weights of a structural edit of the model in `dir`: kept layers (renumbered), heads
    /// and FFN neurons, cut from the source tensors as lathe-config's
    /// [`Architecture::edit`] plans. `Edit::new().keep_layers([0, 2, 4])` on a six-layer model
    /// is DistilBERT's student initialisation.
    ///
    /// # Errors
    /// As [`open`](Self::open), and [`Error::Config`] for a selection that does not fit the
    /// model.
    pub fn from_edit(dir: impl AsRef<Path>, edit: &Edit) -> Result<BertParams> {
        let (config, checkpoint) = open_folder(dir.as_ref())?;
        let architecture = checked_architecture(&config, &checkpoint)?;
        let edited = architecture.edit(edit)?;
        let plans: HashMap<&str, &lathe_config::TensorEdit> =
            edited.tensors.iter().map(|plan| (plan.new_name.as_str(), plan)).collect();
        let load = |tensor: &Tensor| -> Result<Vec<f32>> {
            let plan = plans.get(tensor.name.as_str()).expect("an edit plans every described tensor");
            let view = checkpoint.tensor(&plan.source_name)?;
            let source_shape = view.shape().to_vec();
            let values = view.to_f32()?;
            Ok(cut(&values, &source_shape, plan.rows.as_deref(), plan.cols.as_deref()))
        };
        BertParams::build(edited.config, edited.architecture, load)
    }

    /// Random weights for `config` (a fresh, untrained model): embeddings and linear weights
    /// from a normal distribution of standard deviation `initializer_range` (0.02 when the
    /// config has none), biases 0, LayerNorm weights 1 and biases 0, as transformers
    /// initialises BERT. The same seed gives the same weights.
    ///
    /// # Errors
    /// [`Error::Unsupported`] as for [`from_checkpoint`](Self::from_checkpoint).
    pub fn random(config: Config, seed: u64) -> Result<BertParams> {
        let std = config.json().get("initializer_range").and_then(serde_json::Value::as_f64).unwrap_or(0.02);
        let architecture = Architecture::new(&config);
        let mut rng = Rng::new(seed);
        let init = |tensor: &Tensor| -> Result<Vec<f32>> {
            let numel = tensor.shape.iter().product::<usize>();
            let is_norm_weight = tensor.kind == TensorKind::Norm && tensor.name.ends_with(".weight");
            Ok(match tensor.kind {
                TensorKind::Norm if is_norm_weight => vec![1.0; numel],
                TensorKind::Norm | TensorKind::Bias(_) => vec![0.0; numel],
                TensorKind::Pooler if tensor.shape.len() == 1 => vec![0.0; numel],
                _ => (0..numel).map(|_| (rng.normal() * std) as f32).collect(),
            })
        };
        BertParams::build(config, architecture, init)
    }

    fn build(
        config: Config,
        architecture: Architecture,
        mut load: impl FnMut(&Tensor) -> Result<Vec<f32>>,
    ) -> Result<BertParams> {
        let unsupported = |message: String| Error::Unsupported { file: config.path().to_path_buf(), message };
        let family = config.family();
        let Some(positions) = Positions::of(&config) else {
            return Err(unsupported(format!(
                "model_type `{family}` is not a BERT-family encoder (training supports bert, roberta, xlm-roberta \
                 and distilbert)"
            )));
        };
        let activation_key = if family == Family::DistilBert { "activation" } else { "hidden_act" };
        if let Some(value) = config.json().get(activation_key)
            && value.as_str() != Some("gelu")
        {
            return Err(unsupported(format!(
                "key `{activation_key}` is {value}: training supports the exact \"gelu\" only"
            )));
        }
        if let Some(value) = config.json().get("position_embedding_type")
            && value.as_str() != Some("absolute")
        {
            return Err(unsupported(format!(
                "key `position_embedding_type` is {value}: only \"absolute\" is supported"
            )));
        }

        let mut specs = Vec::new();
        let mut frozen = Vec::new();
        let by_kind = |kind: TensorKind| architecture.others().iter().find(|t| t.kind == kind);
        let word = by_kind(TensorKind::WordEmbedding).expect("encoders describe word embeddings").clone();
        let position = by_kind(TensorKind::PositionEmbedding).expect("encoders describe position embeddings").clone();
        let token_type = by_kind(TensorKind::TokenTypeEmbedding).cloned();
        let mut take = |tensor: &Tensor, kind: ParamKind, specs: &mut Vec<ParamSpec>| -> Result<Vec<f32>> {
            specs.push(ParamSpec { name: tensor.name.clone(), shape: tensor.shape.clone(), kind });
            load(tensor)
        };
        let word_embeddings = take(&word, ParamKind::Embedding, &mut specs)?;
        let position_embeddings = take(&position, ParamKind::Embedding, &mut specs)?;
        let token_type_embeddings = match &token_type {
            Some(tensor) => take(tensor, ParamKind::Embedding, &mut specs)?,
            None => Vec::new(),
        };
        let norms: Vec<&Tensor> = architecture.others().iter().filter(|t| t.kind == TensorKind::Norm).collect();
        let [norm_weight, norm_bias] = norms[..] else { unreachable!("encoders describe one embedding norm") };
        let embedding_norm = NormWeights {
            weight: take(norm_weight, ParamKind::Norm, &mut specs)?,
            bias: take(norm_bias, ParamKind::Norm, &mut specs)?,
        };
        for tensor in architecture.others().iter().filter(|t| t.kind == TensorKind::Pooler) {
            frozen.push((tensor.name.clone(), take(tensor, ParamKind::Weight, &mut Vec::new())?));
        }

        let mut layers = Vec::with_capacity(architecture.layers().len());
        for layer in architecture.layers() {
            if layer.shape.kv_heads != layer.shape.heads {
                return Err(unsupported(format!(
                    "layer {} has {} key/value heads for {} query heads: BERT-family attention has one per query head",
                    layer.index, layer.shape.kv_heads, layer.shape.heads
                )));
            }
            let mut linear = |role: Role, specs: &mut Vec<ParamSpec>| -> Result<LinearWeights> {
                let spec = layer.linears.iter().find(|l| l.role == role).expect("encoders describe six linears");
                let weight =
                    Tensor { name: spec.weight.clone(), shape: spec.weight_shape(), kind: TensorKind::Weight(role) };
                let bias_name = spec.bias.clone().expect("BERT-family linears have biases");
                let bias = Tensor { name: bias_name, shape: vec![spec.out_features], kind: TensorKind::Bias(role) };
                Ok(LinearWeights {
                    weight: take(&weight, ParamKind::Weight, specs)?,
                    bias: take(&bias, ParamKind::Bias, specs)?,
                    out_features: spec.out_features,
                    in_features: spec.in_features,
                })
            };
            let query = linear(Role::Query, &mut specs)?;
            let key = linear(Role::Key, &mut specs)?;
            let value = linear(Role::Value, &mut specs)?;
            let attention_output = linear(Role::AttentionOutput, &mut specs)?;
            let ffn_in = linear(Role::FfnIn, &mut specs)?;
            let ffn_out = linear(Role::FfnOut, &mut specs)?;
            let mut norm = |index: usize, specs: &mut Vec<ParamSpec>| -> Result<NormWeights> {
                Ok(NormWeights {
                    weight: take(&layer.norms[2 * index], ParamKind::Norm, specs)?,
                    bias: take(&layer.norms[2 * index + 1], ParamKind::Norm, specs)?,
                })
            };
            let attention_norm = norm(0, &mut specs)?;
            let output_norm = norm(1, &mut specs)?;
            layers.push(LayerWeights {
                heads: layer.shape.heads,
                head_dim: layer.head_dim,
                query,
                key,
                value,
                attention_output,
                ffn_in,
                ffn_out,
                attention_norm,
                output_norm,
            });
        }
        let max_seq_len = position.shape[0].saturating_sub(positions.offset());
        let weights = Weights { word_embeddings, position_embeddings, token_type_embeddings, embedding_norm, layers };
        Ok(BertParams { eps: config.norm_eps(), config, architecture, specs, weights, frozen, positions, max_seq_len })
    }

    /// The config (for an edited model, the edited one).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Name, shape and kind of every trainable tensor, in the order of [`Weights::tensors`].
    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }

    /// The weights.
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// The weights, mutable (the optimizer's and the tests' way in; shapes cannot change).
    pub fn weights_mut(&mut self) -> &mut Weights {
        &mut self.weights
    }

    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        self.weights.layers.len()
    }

    /// Width of the hidden states.
    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size()
    }

    /// Attention heads of layer `layer`.
    ///
    /// # Panics
    /// If `layer` is not below [`num_layers`](Self::num_layers).
    pub fn heads(&self, layer: usize) -> usize {
        self.weights.layers[layer].heads
    }

    /// The longest sequence the position table allows.
    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }

    /// Zero gradients of the weights' shapes.
    pub fn zero_grads(&self) -> Weights {
        self.weights.zeros_like()
    }

    /// Writes `dir/config.json` and `dir/model.safetensors` (every described tensor as F32,
    /// with the checkpoint's names; the tokenizer and pooling files are the caller's to copy).
    /// Each file is written to a temporary file in `dir` and renamed into place, so a failure
    /// leaves no half-written model. `dir` must exist.
    ///
    /// # Errors
    /// [`Error::Io`] and [`Error::Tensor`] when a file cannot be written.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let mut by_name: HashMap<&str, &[f32]> =
            self.specs.iter().map(|spec| spec.name.as_str()).zip(self.weights.tensors()).collect();
        by_name.extend(self.frozen.iter().map(|(name, values)| (name.as_str(), &values[..])));
        let described = self.architecture.tensors();
        let specs = described.iter().map(|t| TensorSpec::new(t.name.clone(), Dtype::F32, t.shape.clone())).collect();
        let path = dir.join(lathe_tensor::SINGLE_FILE);
        let metadata = [("format".to_owned(), "pt".to_owned())];
        let mut writer = SafeTensorsWriter::create(&path, specs, &metadata)?;
        for tensor in &described {
            let values = by_name.get(tensor.name.as_str()).expect("every described tensor is held");
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            writer.write_tensor(&tensor.name, &bytes)?;
        }
        let config_path = dir.join("config.json");
        let mut config = self.config.json().clone();
        // The weights are written in f32 whatever the source stored.
        for key in ["torch_dtype", "dtype"] {
            if config.contains_key(key) {
                config.insert(key.to_owned(), "float32".into());
            }
        }
        let text = serde_json::to_string_pretty(&serde_json::Value::Object(config)).expect("a JSON map serialises");
        // The config goes last: a folder whose config.json is new has its weights in place.
        writer.finish()?;
        lathe_tensor::write_atomic(&config_path, format!("{text}\n").as_bytes())?;
        Ok(())
    }
}

fn open_folder(dir: &Path) -> Result<(Config, Checkpoint)> {
    let config_path: PathBuf = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(io_error(&config_path))?;
    let config = Config::parse(&text, &config_path)?;
    let checkpoint = Checkpoint::open(dir)?;
    Ok((config, checkpoint))
}

/// The checkpoint's description, validated (task heads aside) as lathe-model's loader does.
fn checked_architecture(config: &Config, checkpoint: &Checkpoint) -> Result<Architecture> {
    let names: Vec<(String, Vec<usize>)> =
        checkpoint.tensors().map(|(_, info)| (info.name.clone(), info.shape.clone())).collect();
    bert::checked_architecture(config, &names, &bert::checkpoint_file(checkpoint))
}

/// The rows and columns of `values` (stored `shape`, 1-D or 2-D) that a tensor edit keeps.
fn cut(values: &[f32], shape: &[usize], rows: Option<&[usize]>, cols: Option<&[usize]>) -> Vec<f32> {
    let width = if shape.len() >= 2 { shape[1..].iter().product() } else { 1 };
    let all_rows: Vec<usize>;
    let rows = match rows {
        Some(rows) => rows,
        None => {
            all_rows = (0..shape.first().copied().unwrap_or(1)).collect();
            &all_rows
        }
    };
    let mut out = Vec::with_capacity(rows.len() * cols.map_or(width, <[usize]>::len));
    for &row in rows {
        let source = &values[row * width..][..width];
        match cols {
            Some(cols) => out.extend(cols.iter().map(|&col| source[col])),
            None => out.extend_from_slice(source),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_keeps_rows_then_columns() {
        let values: Vec<f32> = (0..12).map(|v| v as f32).collect();
        assert_eq!(cut(&values, &[3, 4], Some(&[0, 2]), None), [0.0, 1.0, 2.0, 3.0, 8.0, 9.0, 10.0, 11.0]);
        assert_eq!(cut(&values, &[3, 4], None, Some(&[1, 3])), [1.0, 3.0, 5.0, 7.0, 9.0, 11.0]);
        assert_eq!(cut(&values[..4], &[4], Some(&[3, 1]), None), [3.0, 1.0]);
        assert_eq!(cut(&values, &[3, 4], None, None), values);
    }
}
