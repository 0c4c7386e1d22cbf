//! The BERT-family encoder: loading from a folder, embeddings, post-LN layers, and the batch and
//! hidden-state types that flow between them.

use std::path::{Path, PathBuf};

use lathe_config::{Architecture, Config, Family, Role, TensorKind};
use lathe_tensor::Checkpoint;
use rayon::prelude::*;

use crate::error::io_error;
use crate::ops::{self, ROWS_PER_TASK};
use crate::stored::{Inputs, Stored};
use crate::{Error, Linear, Result};

/// The six linears of an encoder layer, in the order the layer applies them.
pub const LAYER_ROLES: [Role; 6] =
    [Role::Query, Role::Key, Role::Value, Role::AttentionOutput, Role::FfnIn, Role::FfnOut];

/// A short lower-case name for a role, for messages.
pub(crate) fn role_name(role: Role) -> &'static str {
    match role {
        Role::Query => "query",
        Role::Key => "key",
        Role::Value => "value",
        Role::QueryKeyValue => "query-key-value",
        Role::AttentionOutput => "attention output",
        Role::FfnIn => "ffn in",
        Role::FfnGate => "ffn gate",
        Role::FfnUp => "ffn up",
        Role::FfnOut => "ffn out",
    }
}

/// Token sequences padded to one length: row-major `[n_sequences, seq_len]` ids, token types
/// and attention mask (`true` for a real token, `false` for padding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    ids: Vec<u32>,
    type_ids: Vec<u32>,
    mask: Vec<bool>,
    n_sequences: usize,
    seq_len: usize,
}

/// `sequences` right-padded with `pad` to `seq_len`, row-major.
pub(crate) fn pad_rows<S: AsRef<[u32]>>(sequences: &[S], pad: u32, seq_len: usize) -> Vec<u32> {
    let mut rows = Vec::with_capacity(sequences.len() * seq_len);
    for sequence in sequences {
        let sequence = sequence.as_ref();
        rows.extend_from_slice(sequence);
        rows.resize(rows.len() + seq_len - sequence.len(), pad);
    }
    rows
}

impl Batch {
    /// A batch from row-major ids and mask of `seq_len` columns; every token type is 0.
    ///
    /// # Panics
    /// If `ids` and `mask` differ in length, or their length is not a multiple of `seq_len`
    /// (a `seq_len` of 0 needs empty vectors).
    pub fn new(ids: Vec<u32>, mask: Vec<bool>, seq_len: usize) -> Batch {
        assert_eq!(ids.len(), mask.len(), "ids and mask must have the same length");
        let n_sequences = if seq_len == 0 {
            assert!(ids.is_empty(), "a batch of sequences of length 0 holds no ids");
            0
        } else {
            assert!(ids.len().is_multiple_of(seq_len), "{} ids are not rows of {seq_len}", ids.len());
            ids.len() / seq_len
        };
        let type_ids = vec![0; ids.len()];
        Batch { ids, type_ids, mask, n_sequences, seq_len }
    }

    /// Sequences right-padded with `pad_id` to the longest of them, the mask marking the
    /// padding; every token type is 0.
    pub fn pad<S: AsRef<[u32]>>(sequences: &[S], pad_id: u32) -> Batch {
        let seq_len = sequences.iter().map(|s| s.as_ref().len()).max().unwrap_or(0);
        let ids = pad_rows(sequences, pad_id, seq_len);
        let mask = sequences
            .iter()
            .flat_map(|s| {
                let len = s.as_ref().len();
                (0..seq_len).map(move |position| position < len)
            })
            .collect();
        Batch::new(ids, mask, seq_len)
    }

    /// The same batch with these token types (row-major, like the ids).
    ///
    /// # Panics
    /// If `type_ids` differs in length from the ids.
    pub fn with_type_ids(mut self, type_ids: Vec<u32>) -> Batch {
        assert_eq!(type_ids.len(), self.ids.len(), "type ids and ids must have the same length");
        self.type_ids = type_ids;
        self
    }

    /// Number of sequences.
    pub fn n_sequences(&self) -> usize {
        self.n_sequences
    }

    /// Padded length of every sequence.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Token ids, row-major `[n_sequences, seq_len]`.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Token types, row-major `[n_sequences, seq_len]`.
    pub fn type_ids(&self) -> &[u32] {
        &self.type_ids
    }

    /// The attention mask, row-major `[n_sequences, seq_len]`: `true` for a real token.
    pub fn mask(&self) -> &[bool] {
        &self.mask
    }

    /// Number of real (unmasked) tokens.
    pub fn real_tokens(&self) -> usize {
        self.mask.iter().filter(|&&real| real).count()
    }
}

/// Hidden states of a batch between layers: row-major `[n_sequences, seq_len, hidden_size]`,
/// with the batch's attention mask. Rows at padded positions are computed like the others but
/// mean nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Hidden {
    states: Vec<f32>,
    mask: Vec<bool>,
    n_sequences: usize,
    seq_len: usize,
    hidden_size: usize,
}

impl Hidden {
    #[cfg(test)]
    pub(crate) fn from_parts(
        states: Vec<f32>,
        mask: Vec<bool>,
        n_sequences: usize,
        seq_len: usize,
        hidden_size: usize,
    ) -> Hidden {
        assert_eq!(states.len(), n_sequences * seq_len * hidden_size);
        assert_eq!(mask.len(), n_sequences * seq_len);
        Hidden { states, mask, n_sequences, seq_len, hidden_size }
    }

    /// Number of sequences.
    pub fn n_sequences(&self) -> usize {
        self.n_sequences
    }

    /// Padded length of every sequence.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Width of each token's state.
    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// The states, row-major `[n_sequences, seq_len, hidden_size]`.
    pub fn states(&self) -> &[f32] {
        &self.states
    }

    /// The states, mutable (to inject or ablate activations between layers).
    pub fn states_mut(&mut self) -> &mut [f32] {
        &mut self.states
    }

    /// The attention mask, `[n_sequences, seq_len]`: `true` for a real token.
    pub fn mask(&self) -> &[bool] {
        &self.mask
    }

    /// The state of one token.
    ///
    /// # Panics
    /// If `sequence` or `position` is out of range.
    pub fn token(&self, sequence: usize, position: usize) -> &[f32] {
        assert!(sequence < self.n_sequences && position < self.seq_len, "token ({sequence}, {position}) out of range");
        let row = sequence * self.seq_len + position;
        &self.states[row * self.hidden_size..][..self.hidden_size]
    }
}

/// What the capture hook receives before each linear runs: its input, row-major
/// `[n_rows, cols]` over every token slot of the batch (padding included, marked by `mask`).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct LinearInput<'a> {
    /// The layer.
    pub layer: usize,
    /// Which linear of the layer.
    pub role: Role,
    /// The input rows, `[n_rows, cols]`.
    pub input: &'a [f32],
    /// Rows: sequences x padded length.
    pub n_rows: usize,
    /// The linear's input features.
    pub cols: usize,
    /// Per row, whether it is a real token (`false` for padding).
    pub mask: &'a [bool],
}

impl<'a> LinearInput<'a> {
    /// The rows of real tokens, padding skipped.
    pub fn real_rows(&self) -> impl Iterator<Item = &'a [f32]> + 'a {
        let mask = self.mask;
        self.input.chunks_exact(self.cols.max(1)).zip(mask).filter(|(_, real)| **real).map(|(row, _)| row)
    }
}

/// The FFN activation, from `hidden_act` (`activation` for DistilBERT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Activation {
    /// `gelu`: the exact erf form.
    Gelu,
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`: the tanh approximation.
    GeluTanh,
    /// `relu`.
    Relu,
}

impl Activation {
    fn apply(self, values: &mut [f32]) {
        fn map(values: &mut [f32], function: impl Fn(f32) -> f32 + Sync) {
            values.par_chunks_mut(4096).for_each(|chunk| chunk.iter_mut().for_each(|x| *x = function(*x)));
        }
        match self {
            Activation::Gelu => values.par_chunks_mut(4096).for_each(lathe_quant::activation::gelu_f32),
            Activation::GeluTanh => map(values, ops::gelu_tanh),
            Activation::Relu => map(values, |x| x.max(0.0)),
        }
    }
}

/// Where a token's position-embedding row comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Positions {
    /// BERT, DistilBERT: the position in the padded sequence.
    Absolute,
    /// RoBERTa, XLM-R: `padding_idx + 1 +` the count of real tokens before, `padding_idx` for
    /// padding (transformers' `create_position_ids_from_input_ids`).
    AfterPadding(usize),
}

impl Positions {
    /// The rule of a config's family; `None` for families that are not BERT-like encoders.
    pub(crate) fn of(config: &Config) -> Option<Positions> {
        match config.family() {
            Family::Bert | Family::DistilBert => Some(Positions::Absolute),
            Family::Roberta | Family::XlmRoberta => Some(Positions::AfterPadding(config.pad_token_id().unwrap_or(1))),
            _ => None,
        }
    }

    /// Rows of the position table before the first usable one.
    pub(crate) fn offset(self) -> usize {
        match self {
            Positions::Absolute => 0,
            Positions::AfterPadding(pad) => pad.saturating_add(1),
        }
    }

    /// The position-table row of each token of one sequence, from its padding mask.
    pub(crate) fn rows(self, mask: &[bool]) -> impl Iterator<Item = usize> + '_ {
        let mut real_before = 0;
        mask.iter().enumerate().map(move |(position, &real)| match self {
            Positions::Absolute => position,
            Positions::AfterPadding(pad) if real => {
                real_before += 1;
                pad + real_before
            }
            Positions::AfterPadding(pad) => pad,
        })
    }
}

#[derive(Debug, Clone)]
struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    heads: usize,
    head_dim: usize,
    /// In [`LAYER_ROLES`] order.
    linears: [Linear; 6],
    attention_norm: Norm,
    output_norm: Norm,
}

/// A BERT-family encoder (BERT, RoBERTa, XLM-R, DistilBERT: post-LN, learned absolute
/// positions) with f32 activations and per-linear kernels.
///
/// The forward pass is exposed layer by layer: [`embed`](Self::embed) a [`Batch`] into
/// [`Hidden`] states, run [`layer`](Self::layer) for each layer (or
/// [`layer_capturing`](Self::layer_capturing) to see every linear's input), then pool. Each
/// linear runs over all `n_sequences x seq_len` rows at once; attention runs per sequence and
/// head with the dense GEMM, an additive mask on padded keys and a max-subtracted f32 softmax.
/// Sequences are independent and rayon splits work by rows, so results do not depend on the
/// thread count.
#[derive(Debug, Clone)]
pub struct BertModel {
    config: Config,
    activation: Activation,
    eps: f64,
    positions: Positions,
    max_seq_len: usize,
    hidden_size: usize,
    vocab_size: usize,
    type_vocab_size: usize,
    word_embeddings: Vec<f32>,
    position_embeddings: Vec<f32>,
    token_type_embeddings: Vec<f32>,
    embedding_norm: Norm,
    layers: Vec<EncoderLayer>,
}

/// Task heads that may sit beside an encoder's weights in a checkpoint without a prefix.
const TASK_HEADS: [&str; 8] = [
    "cls.",
    "classifier.",
    "pre_classifier.",
    "qa_outputs.",
    "lm_head.",
    "vocab_transform.",
    "vocab_layer_norm.",
    "vocab_projector.",
];

fn is_task_head(name: &str, prefix: &str) -> bool {
    if prefix.is_empty() { TASK_HEADS.iter().any(|head| name.starts_with(head)) } else { !name.starts_with(prefix) }
}

/// The file errors about a checkpoint name: its one shard, or the folder of several.
pub(crate) fn checkpoint_file(checkpoint: &Checkpoint) -> PathBuf {
    match checkpoint.shards().next() {
        Some((path, _)) if checkpoint.shards().count() == 1 => path.to_path_buf(),
        Some((path, _)) => path.parent().map_or_else(|| path.to_path_buf(), Path::to_path_buf),
        None => PathBuf::new(),
    }
}

/// The description of a checkpoint whose tensors are `names` (with shapes), checked against the
/// config: every missing, extra or misshaped tensor is named; task heads such as `cls.*` are
/// ignored.
pub(crate) fn checked_architecture(
    config: &Config,
    names: &[(String, Vec<usize>)],
    checkpoint_file: &Path,
) -> Result<Architecture> {
    let in_checkpoint = |source| Error::Checkpoint { file: checkpoint_file.to_path_buf(), source };
    let architecture = Architecture::detect(config, names.iter().map(|(name, _)| name)).map_err(in_checkpoint)?;
    let body = names.iter().filter(|(name, _)| !is_task_head(name, architecture.prefix()));
    architecture.validate(body.map(|(name, shape)| (name, shape))).map_err(in_checkpoint)?;
    Ok(architecture)
}

/// The batch size (tokens per call) pruned layers are planned for when the loader picks a sparse
/// or dense kernel: a few sentences, as `lathe embed` and `lathe eval` batch them by length.
const PLANNED_TOKENS: usize = 32;

impl BertModel {
    /// Loads `dir/config.json` and the checkpoint in `dir` (`model.safetensors` or the shards of
    /// `model.safetensors.index.json`). See [`from_checkpoint`](Self::from_checkpoint).
    pub fn open(dir: impl AsRef<Path>) -> Result<BertModel> {
        let dir = dir.as_ref();
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(io_error(&config_path))?;
        let config = Config::parse(&text, &config_path)?;
        let checkpoint = Checkpoint::open(dir)?;
        BertModel::from_checkpoint(config, &checkpoint)
    }

    /// Builds the model from a parsed config and an open checkpoint. Every linear starts dense
    /// f32; F32, F16 and BF16 tensors are converted to f32.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for a family other than BERT, RoBERTa, XLM-R and DistilBERT, an
    /// unknown activation or relative positions; [`Error::Checkpoint`] when the checkpoint's
    /// tensors (task heads such as `cls.*` aside) are not exactly the ones the config describes,
    /// naming every missing, extra and misshaped tensor; [`Error::Tensor`] when a tensor's
    /// dtype cannot be converted to f32.
    pub fn from_checkpoint(config: Config, checkpoint: &Checkpoint) -> Result<BertModel> {
        let config_file = config.path().to_path_buf();
        let unsupported = |message: String| Error::Unsupported { file: config_file.clone(), message };
        let family = config.family();
        let Some(positions) = Positions::of(&config) else {
            return Err(unsupported(format!(
                "model_type `{family}` is not a BERT-family encoder (lathe-model runs bert, roberta, xlm-roberta \
                 and distilbert)"
            )));
        };
        let json = config.json();
        let activation_key = if family == Family::DistilBert { "activation" } else { "hidden_act" };
        let activation = match json.get(activation_key) {
            None => Activation::Gelu,
            Some(value) => match value.as_str() {
                Some("gelu") => Activation::Gelu,
                Some("gelu_new" | "gelu_pytorch_tanh" | "gelu_fast") => Activation::GeluTanh,
                Some("relu") => Activation::Relu,
                _ => {
                    return Err(unsupported(format!(
                        "key `{activation_key}` is {value}: expected \"gelu\", \"gelu_new\", \"gelu_pytorch_tanh\", \
                         \"gelu_fast\" or \"relu\""
                    )));
                }
            },
        };
        if let Some(value) = json.get("position_embedding_type")
            && value.as_str() != Some("absolute")
        {
            return Err(unsupported(format!(
                "key `position_embedding_type` is {value}: only \"absolute\" is supported"
            )));
        }

        let checkpoint_file = checkpoint_file(checkpoint);
        // Quantized linears are stored as several tensors (compressed-tensors) or as raw blocks
        // (GGML); validation sees each as the `[out, in]` weight the config describes.
        let stored = Stored::read(&config, checkpoint)?;
        let architecture = checked_architecture(&config, &stored.logical_tensors(checkpoint)?, &checkpoint_file)?;

        let load = |name: &str| -> Result<Vec<f32>> { Ok(checkpoint.tensor(name)?.to_f32()?) };
        let others = architecture.others();
        let find = |kind: TensorKind| others.iter().find(|tensor| tensor.kind == kind);
        let word = find(TensorKind::WordEmbedding).expect("encoders describe word embeddings");
        let position = find(TensorKind::PositionEmbedding).expect("encoders describe position embeddings");
        let token_type = find(TensorKind::TokenTypeEmbedding);
        let norms: Vec<&lathe_config::Tensor> = others.iter().filter(|t| t.kind == TensorKind::Norm).collect();
        let [norm_weight, norm_bias] = norms[..] else { unreachable!("encoders describe one embedding norm") };

        let hidden_size = config.hidden_size();
        let position_rows = position.shape[0];
        let offset = positions.offset();
        let mut layers = Vec::with_capacity(architecture.layers().len());
        for layer in architecture.layers() {
            if layer.shape.kv_heads != layer.shape.heads {
                return Err(unsupported(format!(
                    "layer {} has {} key/value heads for {} query heads: BERT-family attention has one per query head",
                    layer.index, layer.shape.kv_heads, layer.shape.heads
                )));
            }
            let linear = |role: Role| -> Result<Linear> {
                let spec =
                    layer.linears.iter().find(|linear| linear.role == role).expect("encoders describe six linears");
                let bias = spec.bias.as_deref().map(load).transpose()?;
                let smoothing = |linear: Result<Linear>| -> Result<Linear> {
                    match stored.smoothing(checkpoint, &spec.weight, spec.in_features)? {
                        Some(factors) => linear?.smoothed(&factors).map_err(|error| Error::Invalid {
                            file: checkpoint_file.clone(),
                            message: format!("tensor `{}`: {error}", spec.weight),
                        }),
                        None => linear,
                    }
                };
                match stored.load(checkpoint, &spec.weight, spec.out_features, spec.in_features)? {
                    Some((matrix, Inputs::Quantized(_))) => smoothing(Linear::quantized(matrix, bias)),
                    Some((matrix, Inputs::F32)) => smoothing(Linear::weight_only(matrix, bias)),
                    None => {
                        let weights = load(&spec.weight)?;
                        if let Some(index) = weights.iter().position(|w| !w.is_finite()) {
                            return Err(Error::Invalid {
                                file: checkpoint_file.clone(),
                                message: format!(
                                    "tensor `{}` holds {} at index {index}: weights must be finite",
                                    spec.weight, weights[index]
                                ),
                            });
                        }
                        Linear::dense_or_sparse(weights, spec.out_features, spec.in_features, bias, PLANNED_TOKENS)
                    }
                }
            };
            let norm = |index: usize| -> Result<Norm> {
                Ok(Norm { weight: load(&layer.norms[2 * index].name)?, bias: load(&layer.norms[2 * index + 1].name)? })
            };
            layers.push(EncoderLayer {
                heads: layer.shape.heads,
                head_dim: layer.head_dim,
                linears: [
                    linear(Role::Query)?,
                    linear(Role::Key)?,
                    linear(Role::Value)?,
                    linear(Role::AttentionOutput)?,
                    linear(Role::FfnIn)?,
                    linear(Role::FfnOut)?,
                ],
                attention_norm: norm(0)?,
                output_norm: norm(1)?,
            });
        }
        Ok(BertModel {
            activation,
            eps: config.norm_eps(),
            positions,
            max_seq_len: position_rows.saturating_sub(offset),
            hidden_size,
            vocab_size: config.vocab_size(),
            type_vocab_size: token_type.map_or(0, |tensor| tensor.shape[0]),
            word_embeddings: load(&word.name)?,
            position_embeddings: load(&position.name)?,
            token_type_embeddings: token_type.map(|tensor| load(&tensor.name)).transpose()?.unwrap_or_default(),
            embedding_norm: Norm { weight: load(&norm_weight.name)?, bias: load(&norm_bias.name)? },
            layers,
            config,
        })
    }

    /// The config the model was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Width of the hidden states.
    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// The longest sequence the position table allows.
    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }

    /// The FFN activation.
    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// The linear of `role` in layer `layer`, if the layer exists and is one of
    /// [`LAYER_ROLES`].
    pub fn linear(&self, layer: usize, role: Role) -> Option<&Linear> {
        let index = LAYER_ROLES.iter().position(|&r| r == role)?;
        self.layers.get(layer).map(|layer| &layer.linears[index])
    }

    /// Every linear as (layer, role, linear), layer by layer in [`LAYER_ROLES`] order.
    pub fn linears(&self) -> impl Iterator<Item = (usize, Role, &Linear)> {
        self.layers
            .iter()
            .enumerate()
            .flat_map(|(index, layer)| LAYER_ROLES.iter().zip(&layer.linears).map(move |(&role, l)| (index, role, l)))
    }

    /// Replaces the linear of `role` in layer `layer` (with a quantized one, say) and returns
    /// the old one.
    ///
    /// # Errors
    /// [`Error::NoLinear`] when there is no such linear, [`Error::LinearShape`] when the new
    /// one's shape differs.
    pub fn set_linear(&mut self, layer: usize, role: Role, linear: Linear) -> Result<Linear> {
        let layers = self.layers.len();
        let index = LAYER_ROLES.iter().position(|&r| r == role).ok_or(Error::NoLinear {
            layer,
            role: role_name(role),
            layers,
        })?;
        let Some(slot) = self.layers.get_mut(layer).map(|l| &mut l.linears[index]) else {
            return Err(Error::NoLinear { layer, role: role_name(role), layers });
        };
        if (slot.out_features(), slot.in_features()) != (linear.out_features(), linear.in_features()) {
            return Err(Error::LinearShape {
                layer,
                role: role_name(role),
                expected_out: slot.out_features(),
                expected_in: slot.in_features(),
                found_out: linear.out_features(),
                found_in: linear.in_features(),
            });
        }
        Ok(std::mem::replace(slot, linear))
    }

    /// The embeddings of a batch: word + token type + position, then LayerNorm.
    ///
    /// # Errors
    /// [`Error::TooLong`] when `seq_len` exceeds [`max_seq_len`](Self::max_seq_len);
    /// [`Error::TokenId`] and [`Error::TokenType`] for an id outside its table.
    pub fn embed(&self, batch: &Batch) -> Result<Hidden> {
        let (n_sequences, seq_len, hidden) = (batch.n_sequences, batch.seq_len, self.hidden_size);
        if seq_len > self.max_seq_len {
            return Err(Error::TooLong { seq_len, max: self.max_seq_len });
        }
        for (row, (&id, &type_id)) in batch.ids.iter().zip(&batch.type_ids).enumerate() {
            let (sequence, position) = (row / seq_len, row % seq_len);
            if id as usize >= self.vocab_size {
                return Err(Error::TokenId { sequence, position, id, vocab_size: self.vocab_size });
            }
            let types = self.type_vocab_size;
            if type_id as usize >= types.max(1) || (types == 0 && type_id != 0) {
                return Err(Error::TokenType { sequence, position, id: type_id, type_vocab_size: types });
            }
        }
        let mut states = vec![0.0f32; batch.ids.len() * hidden];
        if !states.is_empty() {
            states.par_chunks_mut(seq_len * hidden).enumerate().for_each(|(sequence, dst)| {
                let rows = sequence * seq_len..(sequence + 1) * seq_len;
                let (ids, type_ids, mask) =
                    (&batch.ids[rows.clone()], &batch.type_ids[rows.clone()], &batch.mask[rows]);
                let position_rows = self.positions.rows(mask);
                for ((position, dst), position_row) in dst.chunks_exact_mut(hidden).enumerate().zip(position_rows) {
                    dst.copy_from_slice(&self.word_embeddings[ids[position] as usize * hidden..][..hidden]);
                    if self.type_vocab_size > 0 {
                        let token_type = &self.token_type_embeddings[type_ids[position] as usize * hidden..][..hidden];
                        dst.iter_mut().zip(token_type).for_each(|(value, t)| *value += t);
                    }
                    let position_embedding = &self.position_embeddings[position_row * hidden..][..hidden];
                    dst.iter_mut().zip(position_embedding).for_each(|(value, p)| *value += p);
                    ops::layer_norm(dst, &self.embedding_norm.weight, &self.embedding_norm.bias, self.eps);
                }
            });
        }
        Ok(Hidden { states, mask: batch.mask.clone(), n_sequences, seq_len, hidden_size: hidden })
    }

    /// Runs layer `index` on `hidden` in place.
    ///
    /// # Panics
    /// If `index` is not below [`num_layers`](Self::num_layers), or `hidden` has another width.
    pub fn layer(&self, index: usize, hidden: &mut Hidden) {
        self.run_layer(index, hidden, &mut |_| {});
    }

    /// Runs layer `index` on `hidden` in place, handing `capture` the input of each of its six
    /// linears just before it runs.
    ///
    /// # Panics
    /// As [`layer`](Self::layer).
    pub fn layer_capturing(&self, index: usize, hidden: &mut Hidden, mut capture: impl FnMut(LinearInput<'_>)) {
        self.run_layer(index, hidden, &mut capture);
    }

    /// Embeddings and every layer: the last hidden state.
    ///
    /// # Errors
    /// As [`embed`](Self::embed).
    pub fn forward(&self, batch: &Batch) -> Result<Hidden> {
        self.forward_capturing(batch, |_| {})
    }

    /// [`forward`](Self::forward), handing `capture` the input of every linear of every layer.
    ///
    /// # Errors
    /// As [`embed`](Self::embed).
    pub fn forward_capturing(&self, batch: &Batch, mut capture: impl FnMut(LinearInput<'_>)) -> Result<Hidden> {
        let mut hidden = self.embed(batch)?;
        for index in 0..self.layers.len() {
            self.run_layer(index, &mut hidden, &mut capture);
        }
        Ok(hidden)
    }

    fn run_layer(&self, index: usize, hidden: &mut Hidden, capture: &mut dyn FnMut(LinearInput<'_>)) {
        let layer = &self.layers[index];
        assert_eq!(hidden.hidden_size, self.hidden_size, "hidden states of another width");
        let Hidden { states, mask, n_sequences, seq_len, hidden_size } = hidden;
        let (seq_len, width) = (*seq_len, *hidden_size);
        let rows = *n_sequences * seq_len;
        let attention_width = layer.heads * layer.head_dim;
        let [query, key, value, attention_output, ffn_in, ffn_out] = &layer.linears;
        let mut run = |linear: &Linear, role: Role, input: &[f32], output: &mut Vec<f32>| {
            let cols = linear.in_features();
            capture(LinearInput { layer: index, role, input, n_rows: rows, cols, mask });
            output.resize(rows * linear.out_features(), 0.0);
            linear.forward(input, rows, output);
        };

        // The layer's intermediate buffers (tens of MiB for a large batch) are reused from one
        // layer to the next: fresh ones would cost a page fault per 4 KiB every layer.
        let mut scratch = Scratch::take();
        let Scratch { q, k, v, context, projected, neurons } = &mut *scratch;
        run(query, Role::Query, states, q);
        run(key, Role::Key, states, k);
        run(value, Role::Value, states, v);
        context.resize(rows * attention_width, 0.0);
        attention(q, k, v, mask, seq_len, layer.heads, layer.head_dim, context);

        run(attention_output, Role::AttentionOutput, context, projected);
        add_and_norm(states, projected, &layer.attention_norm, width, self.eps);

        run(ffn_in, Role::FfnIn, states, neurons);
        self.activation.apply(neurons);
        run(ffn_out, Role::FfnOut, neurons, projected);
        add_and_norm(states, projected, &layer.output_norm, width, self.eps);
        scratch.give_back();
    }
}

/// The intermediate buffers of a layer, kept per thread between layers.
#[derive(Debug, Default)]
struct Scratch {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    context: Vec<f32>,
    projected: Vec<f32>,
    neurons: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::Cell<Option<Box<Scratch>>> = const { std::cell::Cell::new(None) };
}

impl Scratch {
    /// This thread's buffers (empty ones the first time, or while another layer on this thread
    /// holds them, as a capture hook running a model would).
    fn take() -> Box<Scratch> {
        SCRATCH.with(|cell| cell.take()).unwrap_or_default()
    }

    fn give_back(self: Box<Scratch>) {
        SCRATCH.with(|cell| cell.set(Some(self)));
    }
}

/// `states = LayerNorm(states + residual)`, row by row.
fn add_and_norm(states: &mut [f32], residual: &[f32], norm: &Norm, width: usize, eps: f64) {
    if states.is_empty() {
        return;
    }
    let chunk = ROWS_PER_TASK * width;
    states.par_chunks_mut(chunk).zip(residual.par_chunks(chunk)).for_each(|(states, residual)| {
        for (row, residual) in states.chunks_exact_mut(width).zip(residual.chunks_exact(width)) {
            row.iter_mut().zip(residual).for_each(|(value, r)| *value += r);
            ops::layer_norm(row, &norm.weight, &norm.bias, eps);
        }
    });
}

/// Multi-head attention: `q`, `k`, `v` and `context` are row-major `[n_sequences * seq_len,
/// heads * head_dim]`, head `h` in columns `h * head_dim ..`. Per sequence and head:
/// `softmax(Q K^T / sqrt(head_dim) + mask) V`, the mask adding `f32::MIN` (as transformers does)
/// to the scores of padded keys.
///
/// A padded key's shifted score is about `f32::MIN`, whose `exp` is exactly 0: the keys after a
/// sequence's last real token change neither the softmax sums nor the products, so they are
/// left out (a sequence of padding only keeps them all, and gets uniform weights as in
/// transformers). Both products run on the dense GEMM, per head, on head-major copies made in
/// one pass over the sequence's rows (see [`HeadBuffers`]).
#[allow(clippy::too_many_arguments)]
fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &[bool],
    seq_len: usize,
    heads: usize,
    head_dim: usize,
    context: &mut [f32],
) {
    let width = heads * head_dim;
    let per_sequence = seq_len * width;
    if per_sequence == 0 {
        return;
    }
    let scale = 1.0 / (head_dim as f32).sqrt();
    context.par_chunks_mut(per_sequence).enumerate().for_each_init(
        HeadBuffers::default,
        |buffers, (sequence, context)| {
            let span = sequence * per_sequence..(sequence + 1) * per_sequence;
            let (q, k, v) = (&q[span.clone()], &k[span.clone()], &v[span]);
            let sequence_mask = &mask[sequence * seq_len..][..seq_len];
            let keys = sequence_mask.iter().rposition(|&real| real).map_or(seq_len, |last| last + 1);
            // Every element of the resized buffers is overwritten before it is read.
            let HeadBuffers { q: q_heads, k: k_heads, v_t, out, scores, key_bias } = buffers;
            key_bias.clear();
            key_bias.extend(sequence_mask[..keys].iter().map(|&real| if real { 0.0 } else { f32::MIN }));
            q_heads.resize(seq_len * width, 0.0);
            k_heads.resize(keys * width, 0.0);
            v_t.resize(width * keys, 0.0);
            out.resize(seq_len * width, 0.0);
            scores.resize(seq_len * keys, 0.0);
            transpose_blocks(q, seq_len, heads, head_dim, q_heads);
            transpose_blocks(&k[..keys * width], keys, heads, head_dim, k_heads);
            // V^T of every head at once: head `h`'s `[head_dim, keys]` are rows `h * head_dim ..`
            // of the transposed `[keys, width]` matrix.
            crate::train::transpose_into(&v[..keys * width], keys, width, v_t);
            for head in 0..heads {
                let q_head = &q_heads[head * seq_len * head_dim..][..seq_len * head_dim];
                let k_head = &k_heads[head * keys * head_dim..][..keys * head_dim];
                let v_head_t = &v_t[head * head_dim * keys..][..head_dim * keys];
                // scores [seq_len, keys] = Q_h K_h^T.
                lathe_quant::dense::linear(q_head, seq_len, k_head, keys, head_dim, None, scores);
                for row in scores.chunks_exact_mut(keys) {
                    row.iter_mut().zip(key_bias.iter()).for_each(|(score, bias)| *score = *score * scale + bias);
                    lathe_quant::activation::softmax_f32(row);
                }
                // out_h [seq_len, head_dim] = P V_h, with V_h^T as the `[rows, cols]` weights.
                let out_head = &mut out[head * seq_len * head_dim..][..seq_len * head_dim];
                lathe_quant::dense::linear(scores, seq_len, v_head_t, head_dim, keys, None, out_head);
            }
            transpose_blocks(out, heads, seq_len, head_dim, context);
        },
    );
}

/// The per-sequence buffers of [`attention`], reused from one sequence to the next on a thread.
/// Gathering every head in one pass over the sequence's rows reads them in order, once; and the
/// copies of whole heads inline (see [`transpose_blocks`]) where gathering a head at a time took
/// a `memmove` call per 128-byte row (4 % of an int8 MiniLM's time, with the strided reads).
#[derive(Debug, Default)]
struct HeadBuffers {
    /// `[heads, seq_len, head_dim]`.
    q: Vec<f32>,
    /// `[heads, keys, head_dim]`.
    k: Vec<f32>,
    /// `[heads, head_dim, keys]`: each head's `V^T`.
    v_t: Vec<f32>,
    /// `[heads, seq_len, head_dim]`: each head's output.
    out: Vec<f32>,
    /// `[seq_len, keys]`.
    scores: Vec<f32>,
    /// `[keys]`: 0 for a real key, `f32::MIN` for padding.
    key_bias: Vec<f32>,
}

/// `dst[b][a] = src[a][b]` for blocks of `block` floats: `src` is `[n_a, n_b]` blocks, `dst`
/// `[n_b, n_a]`. The head dimensions of the BERT family (32, 64) are compile-time block sizes,
/// so each block is copied by a few vector moves in line rather than a `memcpy` call.
fn transpose_blocks(src: &[f32], n_a: usize, n_b: usize, block: usize, dst: &mut [f32]) {
    assert!(src.len() == n_a * n_b * block && dst.len() == src.len(), "transpose_blocks: shapes do not match");
    match block {
        32 => transpose_blocks_of::<32>(src, n_a, n_b, dst),
        64 => transpose_blocks_of::<64>(src, n_a, n_b, dst),
        _ => {
            for (a, row) in src.chunks_exact(n_b * block).enumerate() {
                for (b, src) in row.chunks_exact(block).enumerate() {
                    dst[(b * n_a + a) * block..][..block].copy_from_slice(src);
                }
            }
        }
    }
}

fn transpose_blocks_of<const B: usize>(src: &[f32], n_a: usize, n_b: usize, dst: &mut [f32]) {
    let (src, _) = src.as_chunks::<B>();
    let (dst, _) = dst.as_chunks_mut::<B>();
    for (a, row) in src.chunks_exact(n_b).enumerate() {
        // A strided store per block: not a loop the compiler turns back into `memcpy` calls.
        for (b, block) in row.iter().enumerate() {
            dst[b * n_a + a] = *block;
        }
    }
}

#[cfg(test)]
mod tests;
