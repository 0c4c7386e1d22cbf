//! The description of a checkpoint: every tensor a config implies, with its name and shape.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use crate::config::{Family, LayerShape};
use crate::{Config, Error, Mismatch, Misshaped, Result};

/// What a linear does in a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Attention query projection.
    Query,
    /// Attention key projection.
    Key,
    /// Attention value projection.
    Value,
    /// GPT-2's fused projection: query, key and value outputs side by side, in that order.
    QueryKeyValue,
    /// Attention output projection (input: the concatenated heads).
    AttentionOutput,
    /// First FFN linear of an ungated FFN (BERT `intermediate.dense`, GPT-2 `mlp.c_fc`).
    FfnIn,
    /// Gate projection of a gated FFN (Llama `gate_proj`).
    FfnGate,
    /// Up projection of a gated FFN (Llama `up_proj`).
    FfnUp,
    /// Last FFN linear (input: the FFN neurons).
    FfnOut,
}

impl Role {
    /// Every role, in the order a layer applies them.
    pub const ALL: [Role; 9] = [
        Role::Query,
        Role::Key,
        Role::Value,
        Role::QueryKeyValue,
        Role::AttentionOutput,
        Role::FfnIn,
        Role::FfnGate,
        Role::FfnUp,
        Role::FfnOut,
    ];

    /// The short name command lines and reports use: `query`, `key`, `value`, `qkv`, `attn_out`,
    /// `ffn_in`, `ffn_gate`, `ffn_up`, `ffn_out`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Query => "query",
            Role::Key => "key",
            Role::Value => "value",
            Role::QueryKeyValue => "qkv",
            Role::AttentionOutput => "attn_out",
            Role::FfnIn => "ffn_in",
            Role::FfnGate => "ffn_gate",
            Role::FfnUp => "ffn_up",
            Role::FfnOut => "ffn_out",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = String;

    /// Parses a [`name`](Role::name); the error lists the accepted names.
    fn from_str(text: &str) -> std::result::Result<Role, String> {
        Role::ALL.into_iter().find(|role| role.name() == text).ok_or_else(|| {
            let names: Vec<&str> = Role::ALL.iter().map(|role| role.name()).collect();
            format!("unknown linear role `{text}`: expected one of {}", names.join(", "))
        })
    }
}

/// How a linear's weight is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// `[out, in]`, as `torch.nn.Linear` stores it.
    OutIn,
    /// `[in, out]`, as GPT-2's `Conv1D` stores it: the transpose of a linear's weight.
    InOut,
}

/// One linear of a layer: its role, tensor names and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linear {
    /// What it does.
    pub role: Role,
    /// Name of the weight in the checkpoint.
    pub weight: String,
    /// Name of the bias, if the linear has one (shape `[out_features]`).
    pub bias: Option<String>,
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// How the weight is stored.
    pub layout: Layout,
}

impl Linear {
    /// The weight's shape as stored: `[out, in]`, or `[in, out]` for [`Layout::InOut`].
    pub fn weight_shape(&self) -> Vec<usize> {
        match self.layout {
            Layout::OutIn => vec![self.out_features, self.in_features],
            Layout::InOut => vec![self.in_features, self.out_features],
        }
    }

    /// Whether the stored weight is the transpose of `[out, in]`.
    pub fn is_transposed(&self) -> bool {
        self.layout == Layout::InOut
    }
}

/// What a tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TensorKind {
    /// The weight of a layer's linear.
    Weight(Role),
    /// The bias of a layer's linear.
    Bias(Role),
    /// A layer norm or RMS norm weight or bias.
    Norm,
    /// Token embeddings.
    WordEmbedding,
    /// Learned position embeddings.
    PositionEmbedding,
    /// Token-type (segment) embeddings.
    TokenTypeEmbedding,
    /// The pooler's dense weight or bias (BERT family).
    Pooler,
    /// An untied LM head.
    LmHead,
}

/// A tensor of the description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tensor {
    /// Name in the checkpoint.
    pub name: String,
    /// Shape as stored.
    pub shape: Vec<usize>,
    /// What it is.
    pub kind: TensorKind,
}

impl Tensor {
    /// Number of values.
    pub fn numel(&self) -> u64 {
        numel(&self.shape)
    }
}

/// One layer: its shape and its tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// Position in the model.
    pub index: usize,
    /// Query heads, key/value heads and FFN width.
    pub shape: LayerShape,
    /// Size of each head.
    pub head_dim: usize,
    /// The linears, in the order the layer applies them.
    pub linears: Vec<Linear>,
    /// The norms' weights and biases.
    pub norms: Vec<Tensor>,
}

impl Layer {
    /// Every tensor of the layer: each linear's weight and bias, then the norms.
    pub fn tensors(&self) -> impl Iterator<Item = Tensor> + '_ {
        let linears = self.linears.iter().flat_map(|linear| {
            let weight = Tensor {
                name: linear.weight.clone(),
                shape: linear.weight_shape(),
                kind: TensorKind::Weight(linear.role),
            };
            let bias = linear.bias.as_ref().map(|name| Tensor {
                name: name.clone(),
                shape: vec![linear.out_features],
                kind: TensorKind::Bias(linear.role),
            });
            std::iter::once(weight).chain(bias)
        });
        linears.chain(self.norms.iter().cloned())
    }
}

/// Whether and how the description has an LM head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LmHead {
    /// A bare model (or an encoder): no head.
    Absent,
    /// The head is the word embeddings; a checkpoint may still store a copy.
    Tied,
    /// A tensor of its own.
    Stored,
}

/// The name of the LM head weight in every family lathe-config knows: outside the body's prefix.
const LM_HEAD: &str = "lm_head.weight";

/// The tensors a checkpoint of a [`Config`] holds: per layer, each linear with its role, names
/// and stored shape, and the norms; outside the layers, the embeddings, final norms, pooler and
/// LM head.
///
/// Names carry a prefix that depends on the class that saved the checkpoint (`bert.`,
/// `roberta.`, `distilbert.`, `transformer.`, `model.`, or none); [`Architecture::detect`] finds
/// it from a checkpoint's tensor names, together with the optional parts.
///
/// Counted as parameters: every described tensor; a tied LM head once (as the embeddings).
/// Not parameters, and allowed in a checkpoint without being described (see
/// [`Architecture::is_buffer`]): `embeddings.position_ids` and `embeddings.token_type_ids`
/// (encoders), `h.<layer>.attn.bias` and `h.<layer>.attn.masked_bias` (GPT-2's causal masks),
/// `rotary_emb.inv_freq` (old Llama checkpoints), each under the prefix.
///
/// Task heads are not described (BERT's `cls.*`, RoBERTa's `lm_head.dense`, classifiers):
/// filter them out before validating a task checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Architecture {
    config: Config,
    prefix: String,
    pooler: bool,
    lm_head: LmHead,
    layers: Vec<Layer>,
    others: Vec<Tensor>,
}

impl Architecture {
    /// The description with the default parts: no prefix, except `model.` for the Llama family
    /// (the published checkpoints are `...ForCausalLM`); a pooler for BERT, RoBERTa and XLM-R (as
    /// their base models have); an LM head for GPT-2 and the Llama family, tied or stored as the
    /// config says.
    pub fn new(config: &Config) -> Architecture {
        let family = config.family();
        let prefix = if family.is_llama_like() { "model." } else { "" };
        let lm_head = match family {
            Family::Gpt2 | Family::Llama | Family::Mistral | Family::Qwen2 => {
                if config.tie_word_embeddings() {
                    LmHead::Tied
                } else {
                    LmHead::Stored
                }
            }
            _ => LmHead::Absent,
        };
        build(config, prefix, family.is_bert_like(), lm_head)
    }

    /// The description of a checkpoint with these tensor names: the prefix is what precedes the
    /// word embeddings (`embeddings.word_embeddings.weight`, `wte.weight` or
    /// `embed_tokens.weight`); the pooler is described if the checkpoint has one; an untied LM
    /// head is described if present or if the body has a prefix (the `...ForCausalLM` classes).
    ///
    /// # Errors
    /// [`Error::NoPrefix`] when no name ends with the word embeddings, and
    /// [`Error::AmbiguousPrefix`] when several prefixes do.
    pub fn detect<N: AsRef<str>>(config: &Config, names: impl IntoIterator<Item = N>) -> Result<Architecture> {
        let names: HashSet<String> = names.into_iter().map(|name| name.as_ref().to_string()).collect();
        let family = config.family();
        let anchor = match family {
            Family::Gpt2 => "wte.weight",
            family if family.is_llama_like() => "embed_tokens.weight",
            _ => "embeddings.word_embeddings.weight",
        };
        let prefixes: BTreeSet<&str> = names
            .iter()
            .filter_map(|name| name.strip_suffix(anchor))
            .filter(|prefix| prefix.is_empty() || prefix.ends_with('.'))
            .collect();
        let prefix = match prefixes.len() {
            0 => return Err(Error::NoPrefix { model_type: family.to_string(), anchor: anchor.into() }),
            1 => prefixes.into_iter().next().unwrap_or_default(),
            _ => {
                let prefixes = prefixes.into_iter().map(String::from).collect();
                return Err(Error::AmbiguousPrefix { anchor: anchor.into(), prefixes });
            }
        };
        let pooler = family.is_bert_like()
            && [".weight", ".bias"].iter().any(|end| names.contains(&format!("{prefix}pooler.dense{end}")));
        let lm_head = match Architecture::new(config).lm_head {
            LmHead::Stored if !names.contains(LM_HEAD) && prefix.is_empty() => LmHead::Absent,
            lm_head => lm_head,
        };
        Ok(build(config, prefix, pooler, lm_head))
    }

    /// The config described.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The prefix of the body's tensor names (`""`, `bert.`, `model.` ...).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether the pooler is described.
    pub fn has_pooler(&self) -> bool {
        self.pooler
    }

    /// The layers.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The tensors outside the layers: embeddings, their norm, final norm, pooler, untied LM
    /// head.
    pub fn others(&self) -> &[Tensor] {
        &self.others
    }

    /// The name of a tied LM head: not described (it is the word embeddings), but allowed in a
    /// checkpoint as a copy with the embeddings' shape.
    pub fn tied_lm_head(&self) -> Option<&str> {
        (self.lm_head == LmHead::Tied).then_some(LM_HEAD)
    }

    /// Every described tensor: the ones outside the layers, then each layer's.
    pub fn tensors(&self) -> Vec<Tensor> {
        let mut tensors = self.others.clone();
        tensors.extend(self.layers.iter().flat_map(Layer::tensors));
        tensors
    }

    /// Parameters: the values of every described tensor (a tied LM head counts once, as the
    /// embeddings; buffers are not parameters).
    pub fn parameter_count(&self) -> u64 {
        // Config::parse checked the largest description of the config with checked arithmetic,
        // and descriptions only shrink from there, so saturation never happens.
        self.checked_parameter_count().unwrap_or(u64::MAX)
    }

    pub(crate) fn checked_parameter_count(&self) -> Option<u64> {
        self.tensors().iter().try_fold(0u64, |total, tensor| {
            let count = tensor.shape.iter().try_fold(1u64, |count, &dim| count.checked_mul(dim as u64))?;
            total.checked_add(count)
        })
    }

    /// Whether `name` is a buffer a checkpoint may hold besides the described tensors (see the
    /// type's docs for the list).
    pub fn is_buffer(&self, name: &str) -> bool {
        let Some(rest) = name.strip_prefix(self.prefix.as_str()) else { return false };
        let family = self.config.family();
        if family == Family::Gpt2 {
            let Some(rest) = rest.strip_prefix("h.") else { return false };
            let Some((layer, buffer)) = rest.split_once('.') else { return false };
            let in_range = layer.parse::<usize>().is_ok_and(|layer| layer < self.layers.len());
            in_range && (buffer == "attn.bias" || buffer == "attn.masked_bias")
        } else if family.is_llama_like() {
            if rest == "rotary_emb.inv_freq" {
                return true;
            }
            let Some(rest) = rest.strip_prefix("layers.") else { return false };
            let Some((layer, buffer)) = rest.split_once('.') else { return false };
            layer.parse::<usize>().is_ok_and(|layer| layer < self.layers.len())
                && buffer == "self_attn.rotary_emb.inv_freq"
        } else {
            rest == "embeddings.position_ids" || rest == "embeddings.token_type_ids"
        }
    }

    /// Checks a checkpoint's tensors (name, shape) against the description: every described
    /// tensor present with its shape, nothing else but buffers ([`Architecture::is_buffer`]) and
    /// a tied LM head's copy, no name twice.
    ///
    /// # Errors
    /// [`Error::Mismatch`] listing every missing, extra, misshaped and repeated tensor.
    pub fn validate<N: AsRef<str>, S: AsRef<[usize]>>(&self, tensors: impl IntoIterator<Item = (N, S)>) -> Result<()> {
        let described = self.tensors();
        let expected: HashMap<&str, &[usize]> =
            described.iter().map(|tensor| (tensor.name.as_str(), tensor.shape.as_slice())).collect();
        let tied_shape = [self.config.vocab_size(), self.config.hidden_size()];
        let mut mismatch = Mismatch::default();
        let mut seen = HashSet::new();
        for (name, shape) in tensors {
            let (name, shape) = (name.as_ref(), shape.as_ref());
            if !seen.insert(name.to_string()) {
                if !mismatch.duplicate.iter().any(|repeated| repeated == name) {
                    mismatch.duplicate.push(name.to_string());
                }
                continue;
            }
            let wanted = match expected.get(name) {
                Some(&wanted) => wanted,
                None if self.tied_lm_head() == Some(name) => &tied_shape[..],
                None if self.is_buffer(name) => continue,
                None => {
                    mismatch.extra.push(name.to_string());
                    continue;
                }
            };
            if shape != wanted {
                mismatch.misshaped.push(Misshaped {
                    name: name.to_string(),
                    expected: wanted.to_vec(),
                    found: shape.to_vec(),
                });
            }
        }
        mismatch.missing =
            described.into_iter().filter(|tensor| !seen.contains(&tensor.name)).map(|tensor| tensor.name).collect();
        if mismatch.is_empty() {
            Ok(())
        } else {
            Err(Error::Mismatch { file: self.config.path().to_path_buf(), mismatch: Box::new(mismatch) })
        }
    }

    /// The same parts and prefix over another config (after an edit).
    pub(crate) fn rebuilt(&self, config: &Config) -> Architecture {
        build(config, &self.prefix, self.pooler, self.lm_head)
    }
}

/// Values in a tensor of this shape (saturating: see [`Architecture::parameter_count`]).
pub(crate) fn numel(shape: &[usize]) -> u64 {
    shape.iter().fold(1u64, |count, &dim| count.saturating_mul(dim as u64))
}

fn build(config: &Config, prefix: &str, pooler: bool, lm_head: LmHead) -> Architecture {
    let family = config.family();
    let (hidden, vocab) = (config.hidden_size(), config.vocab_size());
    let positions = config.max_position_embeddings().unwrap_or(0);
    let tensor = |name: String, shape: Vec<usize>, kind| Tensor { name, shape, kind };
    let norm = |base: &str, bias: bool| {
        let weight = tensor(format!("{base}.weight"), vec![hidden], TensorKind::Norm);
        let bias = bias.then(|| tensor(format!("{base}.bias"), vec![hidden], TensorKind::Norm));
        std::iter::once(weight).chain(bias)
    };
    let biases = config.biases();
    let linear = |role, base: String, in_features, out_features, layout, bias: bool| Linear {
        role,
        bias: bias.then(|| format!("{base}.bias")),
        weight: format!("{base}.weight"),
        in_features,
        out_features,
        layout,
    };

    let mut others = Vec::new();
    match family {
        Family::Gpt2 => {
            others.push(tensor(format!("{prefix}wte.weight"), vec![vocab, hidden], TensorKind::WordEmbedding));
            others.push(tensor(format!("{prefix}wpe.weight"), vec![positions, hidden], TensorKind::PositionEmbedding));
        }
        family if family.is_llama_like() => {
            others.push(tensor(format!("{prefix}embed_tokens.weight"), vec![vocab, hidden], TensorKind::WordEmbedding));
        }
        _ => {
            let base = format!("{prefix}embeddings");
            others.push(tensor(
                format!("{base}.word_embeddings.weight"),
                vec![vocab, hidden],
                TensorKind::WordEmbedding,
            ));
            let kind = TensorKind::PositionEmbedding;
            others.push(tensor(format!("{base}.position_embeddings.weight"), vec![positions, hidden], kind));
            if family.is_bert_like() {
                let shape = vec![config.type_vocab_size(), hidden];
                others.push(tensor(
                    format!("{base}.token_type_embeddings.weight"),
                    shape,
                    TensorKind::TokenTypeEmbedding,
                ));
            }
            others.extend(norm(&format!("{base}.LayerNorm"), true));
        }
    }

    let head_dim = config.head_dim();
    let mut layers = Vec::with_capacity(config.num_layers());
    for (index, &shape) in config.layers().iter().enumerate() {
        let q_width = shape.heads.saturating_mul(head_dim);
        let kv_width = shape.kv_heads.saturating_mul(head_dim);
        let inter = shape.intermediate;
        let (linears, norms): (Vec<Linear>, Vec<Tensor>) = match family {
            Family::Gpt2 => {
                let base = format!("{prefix}h.{index}");
                let fused = q_width.saturating_add(kv_width.saturating_mul(2));
                let linears = vec![
                    linear(Role::QueryKeyValue, format!("{base}.attn.c_attn"), hidden, fused, Layout::InOut, true),
                    linear(Role::AttentionOutput, format!("{base}.attn.c_proj"), q_width, hidden, Layout::InOut, true),
                    linear(Role::FfnIn, format!("{base}.mlp.c_fc"), hidden, inter, Layout::InOut, true),
                    linear(Role::FfnOut, format!("{base}.mlp.c_proj"), inter, hidden, Layout::InOut, true),
                ];
                let norms = norm(&format!("{base}.ln_1"), true).chain(norm(&format!("{base}.ln_2"), true)).collect();
                (linears, norms)
            }
            Family::DistilBert => {
                let base = format!("{prefix}transformer.layer.{index}");
                let attention = format!("{base}.attention");
                let linears = vec![
                    linear(Role::Query, format!("{attention}.q_lin"), hidden, q_width, Layout::OutIn, true),
                    linear(Role::Key, format!("{attention}.k_lin"), hidden, kv_width, Layout::OutIn, true),
                    linear(Role::Value, format!("{attention}.v_lin"), hidden, kv_width, Layout::OutIn, true),
                    linear(Role::AttentionOutput, format!("{attention}.out_lin"), q_width, hidden, Layout::OutIn, true),
                    linear(Role::FfnIn, format!("{base}.ffn.lin1"), hidden, inter, Layout::OutIn, true),
                    linear(Role::FfnOut, format!("{base}.ffn.lin2"), inter, hidden, Layout::OutIn, true),
                ];
                let norms = norm(&format!("{base}.sa_layer_norm"), true)
                    .chain(norm(&format!("{base}.output_layer_norm"), true))
                    .collect();
                (linears, norms)
            }
            family if family.is_llama_like() => {
                let base = format!("{prefix}layers.{index}");
                let (attention, mlp) = (format!("{base}.self_attn"), format!("{base}.mlp"));
                let (qkv, out, ffn) = (biases.qkv, biases.attention_output, biases.ffn);
                let linears = vec![
                    linear(Role::Query, format!("{attention}.q_proj"), hidden, q_width, Layout::OutIn, qkv),
                    linear(Role::Key, format!("{attention}.k_proj"), hidden, kv_width, Layout::OutIn, qkv),
                    linear(Role::Value, format!("{attention}.v_proj"), hidden, kv_width, Layout::OutIn, qkv),
                    linear(Role::AttentionOutput, format!("{attention}.o_proj"), q_width, hidden, Layout::OutIn, out),
                    linear(Role::FfnGate, format!("{mlp}.gate_proj"), hidden, inter, Layout::OutIn, ffn),
                    linear(Role::FfnUp, format!("{mlp}.up_proj"), hidden, inter, Layout::OutIn, ffn),
                    linear(Role::FfnOut, format!("{mlp}.down_proj"), inter, hidden, Layout::OutIn, ffn),
                ];
                let norms = norm(&format!("{base}.input_layernorm"), false)
                    .chain(norm(&format!("{base}.post_attention_layernorm"), false))
                    .collect();
                (linears, norms)
            }
            _ => {
                let base = format!("{prefix}encoder.layer.{index}");
                let attention = format!("{base}.attention");
                let linears = vec![
                    linear(Role::Query, format!("{attention}.self.query"), hidden, q_width, Layout::OutIn, true),
                    linear(Role::Key, format!("{attention}.self.key"), hidden, kv_width, Layout::OutIn, true),
                    linear(Role::Value, format!("{attention}.self.value"), hidden, kv_width, Layout::OutIn, true),
                    linear(
                        Role::AttentionOutput,
                        format!("{attention}.output.dense"),
                        q_width,
                        hidden,
                        Layout::OutIn,
                        true,
                    ),
                    linear(Role::FfnIn, format!("{base}.intermediate.dense"), hidden, inter, Layout::OutIn, true),
                    linear(Role::FfnOut, format!("{base}.output.dense"), inter, hidden, Layout::OutIn, true),
                ];
                let norms = norm(&format!("{attention}.output.LayerNorm"), true)
                    .chain(norm(&format!("{base}.output.LayerNorm"), true))
                    .collect();
                (linears, norms)
            }
        };
        layers.push(Layer { index, shape, head_dim, linears, norms });
    }

    match family {
        Family::Gpt2 => others.extend(norm(&format!("{prefix}ln_f"), true)),
        family if family.is_llama_like() => others.extend(norm(&format!("{prefix}norm"), false)),
        _ => {}
    }
    if pooler {
        let base = format!("{prefix}pooler.dense");
        others.push(tensor(format!("{base}.weight"), vec![hidden, hidden], TensorKind::Pooler));
        others.push(tensor(format!("{base}.bias"), vec![hidden], TensorKind::Pooler));
    }
    if lm_head == LmHead::Stored {
        others.push(tensor(LM_HEAD.into(), vec![vocab, hidden], TensorKind::LmHead));
    }
    Architecture { config: config.clone(), prefix: prefix.into(), pooler, lm_head, layers, others }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_round_trip() {
        for role in Role::ALL {
            assert_eq!(role.to_string().parse::<Role>(), Ok(role));
        }
        let err = "ffn-out".parse::<Role>().unwrap_err();
        assert!(err.contains("`ffn-out`") && err.contains("ffn_out"), "{err}");
    }
    use serde_json::json;

    fn config(value: serde_json::Value) -> Config {
        Config::parse(&value.to_string(), "t/config.json").unwrap()
    }

    fn tiny(model_type: &str) -> Config {
        config(json!({
            "model_type": model_type, "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 1, "intermediate_size": 12, "vocab_size": 10, "max_position_embeddings": 6,
            "type_vocab_size": 1, "dim": 8, "n_layers": 2, "n_heads": 2, "hidden_dim": 12,
            "n_embd": 8, "n_layer": 2, "n_head": 2, "n_positions": 6
        }))
    }

    fn names(architecture: &Architecture) -> Vec<(String, Vec<usize>)> {
        architecture.tensors().into_iter().map(|tensor| (tensor.name, tensor.shape)).collect()
    }

    #[test]
    fn every_family_counts_what_it_describes() {
        // Counted by hand from each family's modelling code.
        let cases = [
            // embeddings 80 + 48 + 8 + 16; per layer 4 x (64 + 8) + 2 x (96 + 12 | 8) + 32 norms; pooler 72.
            ("bert", 152 + 2 * (288 + 108 + 104 + 32) + 72),
            ("roberta", 152 + 2 * (288 + 108 + 104 + 32) + 72),
            ("xlm-roberta", 152 + 2 * (288 + 108 + 104 + 32) + 72),
            ("distilbert", 144 + 2 * (288 + 108 + 104 + 32)),
            // wte 80 + wpe 48; per layer c_attn 8x24+24, c_proj 72, c_fc 8x32+32, c_proj 32x8+8, 32 norms; ln_f 16.
            ("gpt2", 128 + 2 * (216 + 72 + 288 + 264 + 32) + 16),
            // embed 80; per layer q 64, k 32, v 32, o 64, 3 x 96, norms 16; norm 8; lm_head 80.
            ("llama", 80 + 2 * (192 + 288 + 16) + 8 + 80),
            ("mistral", 80 + 2 * (192 + 288 + 16) + 8 + 80),
            // plus q, k, v biases 8 + 4 + 4.
            ("qwen2", 80 + 2 * (192 + 16 + 288 + 16) + 8 + 80),
        ];
        for (model_type, count) in cases {
            let architecture = tiny(model_type).architecture();
            assert_eq!(architecture.parameter_count(), count, "{model_type}");
            let listed = names(&architecture);
            let unique: HashSet<&String> = listed.iter().map(|(name, _)| name).collect();
            assert_eq!(unique.len(), listed.len(), "{model_type}: a name twice");
            architecture.validate(listed).unwrap_or_else(|error| panic!("{model_type}: {error}"));
        }
    }

    #[test]
    fn detected_prefixes_carry_over_to_buffers() {
        let roberta = tiny("roberta");
        let mut listed: Vec<(String, Vec<usize>)> = names(&roberta.architecture())
            .into_iter()
            .map(|(name, shape)| (format!("roberta.{name}"), shape))
            .collect();
        listed.push(("roberta.embeddings.position_ids".into(), vec![1, 6]));
        listed.push(("roberta.embeddings.token_type_ids".into(), vec![1, 6]));
        let detected = Architecture::detect(&roberta, listed.iter().map(|(name, _)| name)).unwrap();
        assert_eq!((detected.prefix(), detected.has_pooler()), ("roberta.", true));
        detected.validate(listed.iter().map(|(name, shape)| (name, shape))).unwrap();
        assert!(!detected.is_buffer("embeddings.position_ids"), "buffers live under the prefix");

        let llama = tiny("llama").architecture();
        assert!(llama.is_buffer("model.layers.1.self_attn.rotary_emb.inv_freq"));
        assert!(!llama.is_buffer("model.layers.2.self_attn.rotary_emb.inv_freq"));
        assert!(!llama.is_buffer("model.layers.x.self_attn.rotary_emb.inv_freq"));
        let gpt2 = tiny("gpt2").architecture();
        assert!(gpt2.is_buffer("h.1.attn.masked_bias") && !gpt2.is_buffer("h.1.attn.c_attn.bias"));
        let distilbert = tiny("distilbert").architecture();
        let first = &distilbert.layers()[0];
        assert_eq!(first.linears[0].weight, "transformer.layer.0.attention.q_lin.weight");
        assert_eq!(first.linears[5].weight, "transformer.layer.0.ffn.lin2.weight");
        assert_eq!(first.norms[2].name, "transformer.layer.0.output_layer_norm.weight");
    }
}
