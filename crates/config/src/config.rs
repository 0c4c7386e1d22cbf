//! Typed configs read from Hugging Face `config.json` text.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::json::{Keys, shown};
use crate::{Architecture, Error, Result};

/// The model families lathe-config reads, by their `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `bert`: post-LN encoder, `[out, in]` linears with biases, token-type embeddings, pooler.
    Bert,
    /// `roberta`: BERT's layout; positions are offset by `pad_token_id + 1`.
    Roberta,
    /// `xlm-roberta`: RoBERTa's layout.
    XlmRoberta,
    /// `distilbert`: BERT-like with its own names (`q_lin`, `ffn.lin1` ...) and keys (`dim`,
    /// `n_layers`, `n_heads`, `hidden_dim`); no token types, no pooler.
    DistilBert,
    /// `gpt2`: Conv1D weights stored `[in, out]`, fused query/key/value, tied LM head.
    Gpt2,
    /// `llama`: RMSNorm, gated FFN, grouped-query attention, optional biases.
    Llama,
    /// `mistral`: Llama's layout (the sliding window changes no tensor).
    Mistral,
    /// `qwen2`: Llama's layout with query/key/value biases.
    Qwen2,
}

const FAMILIES: [(&str, Family); 8] = [
    ("bert", Family::Bert),
    ("roberta", Family::Roberta),
    ("xlm-roberta", Family::XlmRoberta),
    ("distilbert", Family::DistilBert),
    ("gpt2", Family::Gpt2),
    ("llama", Family::Llama),
    ("mistral", Family::Mistral),
    ("qwen2", Family::Qwen2),
];

/// The config keys that hold a family's main dimensions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyNames {
    pub(crate) hidden: &'static str,
    pub(crate) layers: &'static str,
    pub(crate) heads: &'static str,
    pub(crate) intermediate: &'static str,
}

impl Family {
    /// The `model_type` string transformers writes.
    pub fn model_type(self) -> &'static str {
        FAMILIES.iter().find(|(_, family)| *family == self).map_or("", |(name, _)| name)
    }

    /// The family of a `model_type` string, if lathe-config knows it.
    pub fn from_model_type(model_type: &str) -> Option<Family> {
        FAMILIES.iter().find(|(name, _)| *name == model_type).map(|(_, family)| *family)
    }

    /// BERT, RoBERTa and XLM-R: one layout.
    pub(crate) fn is_bert_like(self) -> bool {
        matches!(self, Family::Bert | Family::Roberta | Family::XlmRoberta)
    }

    /// Llama, Mistral and Qwen2: one layout.
    pub(crate) fn is_llama_like(self) -> bool {
        matches!(self, Family::Llama | Family::Mistral | Family::Qwen2)
    }

    /// Whether transformers' classes for this family prune heads and record them in the
    /// config's `pruned_heads` (the encoders and GPT-2; the Llama family has no head pruning).
    pub fn records_pruned_heads(self) -> bool {
        !self.is_llama_like()
    }

    pub(crate) fn keys(self) -> KeyNames {
        match self {
            Family::DistilBert => {
                KeyNames { hidden: "dim", layers: "n_layers", heads: "n_heads", intermediate: "hidden_dim" }
            }
            Family::Gpt2 => KeyNames { hidden: "n_embd", layers: "n_layer", heads: "n_head", intermediate: "n_inner" },
            _ => KeyNames {
                hidden: "hidden_size",
                layers: "num_hidden_layers",
                heads: "num_attention_heads",
                intermediate: "intermediate_size",
            },
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.model_type())
    }
}

/// The dtype a checkpoint stores its floats in, from the config's `dtype` or `torch_dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// `float32`, transformers' default when the config names none.
    F32,
    /// `float16`.
    F16,
    /// `bfloat16`.
    Bf16,
}

impl Dtype {
    /// Bytes per value.
    pub fn bytes(self) -> u64 {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }

    /// The name torch and config.json use (`float32`, `float16`, `bfloat16`).
    pub fn torch_name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F16 => "float16",
            Dtype::Bf16 => "bfloat16",
        }
    }

    fn from_torch_name(name: &str) -> Option<Dtype> {
        [Dtype::F32, Dtype::F16, Dtype::Bf16].into_iter().find(|dtype| dtype.torch_name() == name)
    }
}

/// The shape of one transformer layer: how many heads and FFN neurons it has. Layers differ
/// after structural edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LayerShape {
    /// Query heads (attention heads for models without grouped-query attention).
    pub heads: usize,
    /// Key/value heads: equal to `heads` except for grouped-query attention.
    pub kv_heads: usize,
    /// FFN width (neurons).
    pub intermediate: usize,
}

/// Which linears carry a bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Biases {
    pub(crate) qkv: bool,
    pub(crate) attention_output: bool,
    pub(crate) ffn: bool,
}

/// A model config read from config.json: the dimensions that fix every tensor shape, per layer.
///
/// Required keys are the ones that fix a tensor shape (hidden size, layers, heads, FFN width,
/// vocabulary, and the position table of the models that store one); every other key takes
/// transformers' default when absent or `null`. `dtype` and `torch_dtype` (transformers before
/// 4.56) are both read.
///
/// Per-layer shapes (after structural edits) come from two keys:
///
/// - `pruned_heads` (transformers' own record, read by its BERT-family and GPT-2 classes):
///   `{"layer": [pruned head ids]}`, ids in the original numbering. The global head count keeps
///   its original value, so the head size stays `hidden / heads`.
/// - `lathe_layers`, lathe's key for what transformers cannot express: a list with one object per
///   layer, each with an optional `intermediate` (every family) and, for the Llama family (which
///   has no `pruned_heads`), optional `heads` and `kv_heads`. Absent fields take the global value.
///
/// The original JSON is kept (with its key order), so an edited config writes every key the
/// source had.
///
/// Dimensions are capped at 2^31, layers at [`MAX_LAYERS`] and heads at [`MAX_HEADS`], and the
/// parameter count must fit in 64 bits, so a hostile config can neither overflow a count nor make
/// lathe-config allocate without bound.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    path: PathBuf,
    raw: Map<String, Value>,
    family: Family,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    intermediate: usize,
    vocab: usize,
    max_positions: Option<usize>,
    type_vocab: usize,
    pad_token_id: Option<usize>,
    tie_word_embeddings: bool,
    norm_eps: f64,
    dtype: Dtype,
    biases: Biases,
    layers: Vec<LayerShape>,
    /// Per layer, the sorted original ids of its pruned heads (families that record
    /// `pruned_heads`; empty otherwise). Kept lazily so a config never allocates per head.
    pruned: Vec<Vec<usize>>,
}

impl Config {
    /// Parses config.json text. `path` is only used in error messages: reading files is
    /// lathe-tensor's (or the caller's) job.
    ///
    /// # Errors
    /// [`Error::Json`] for text that is not JSON, [`Error::UnknownModelType`] for a family
    /// lathe-config does not know, and [`Error::MissingKey`], [`Error::BadValue`],
    /// [`Error::Inconsistent`] or [`Error::TooLarge`] naming the key that is wrong.
    pub fn parse(json: &str, path: impl AsRef<Path>) -> Result<Config> {
        let path = path.as_ref().to_path_buf();
        match serde_json::from_str(json) {
            Ok(Value::Object(raw)) => Config::from_map(raw, path),
            Ok(_) => Err(Error::NotAnObject { file: path }),
            Err(source) => Err(Error::Json { file: path, source }),
        }
    }

    pub(crate) fn from_map(raw: Map<String, Value>, path: PathBuf) -> Result<Config> {
        let keys = Keys::new(&raw, &path);
        let model_type = keys.opt_str("model_type")?.ok_or_else(|| keys.missing("model_type"))?;
        let family = Family::from_model_type(model_type).ok_or_else(|| Error::UnknownModelType {
            file: path.clone(),
            model_type: model_type.to_string(),
            supported: FAMILIES.map(|(name, _)| name).join(", "),
        })?;
        let names = family.keys();
        let hidden = keys.dim(names.hidden)?;
        let n_layers = keys.dim(names.layers)?;
        let heads = keys.dim(names.heads)?;
        let vocab = keys.dim("vocab_size")?;
        let intermediate = match family {
            Family::Gpt2 => keys.opt_dim("n_inner")?.unwrap_or(hidden.saturating_mul(4)),
            _ => keys.dim(names.intermediate)?,
        };
        let derived_head_dim = || {
            if hidden.is_multiple_of(heads) {
                Ok(hidden / heads)
            } else {
                let reason = format!("{hidden} (`{}`) does not split into {heads} heads", names.hidden);
                Err(keys.inconsistent(names.heads, reason))
            }
        };
        let (kv_heads, head_dim) = if family.is_llama_like() {
            let kv_heads = keys.opt_dim("num_key_value_heads")?.unwrap_or(heads);
            let head_dim = match keys.opt_dim("head_dim")? {
                Some(head_dim) => head_dim,
                None => derived_head_dim()?,
            };
            (kv_heads, head_dim)
        } else {
            (heads, derived_head_dim()?)
        };
        if !heads.is_multiple_of(kv_heads) {
            let reason = format!("{heads} query heads do not split into groups for {kv_heads} kv heads");
            return Err(keys.inconsistent("num_key_value_heads", reason));
        }
        let max_positions = match family {
            Family::Gpt2 => Some(keys.dim("n_positions")?),
            family if family.is_llama_like() => keys.opt_dim("max_position_embeddings")?,
            _ => Some(keys.dim("max_position_embeddings")?),
        };
        let type_vocab = if family.is_bert_like() { keys.opt_dim("type_vocab_size")?.unwrap_or(2) } else { 0 };
        let pad_token_id = match (keys.opt_index("pad_token_id")?, family) {
            (None, Family::Roberta | Family::XlmRoberta) => Some(1),
            (pad, _) => pad,
        };
        let tie_default = !family.is_llama_like();
        let tie_word_embeddings = keys.opt_bool("tie_word_embeddings")?.unwrap_or(tie_default);
        let norm_eps = match family {
            Family::DistilBert => 1e-12,
            Family::Gpt2 => keys.opt_positive("layer_norm_epsilon")?.unwrap_or(1e-5),
            family if family.is_llama_like() => keys.opt_positive("rms_norm_eps")?.unwrap_or(1e-6),
            _ => keys.opt_positive("layer_norm_eps")?.unwrap_or(1e-12),
        };
        let biases = match family {
            Family::Llama => {
                let attention = keys.opt_bool("attention_bias")?.unwrap_or(false);
                let ffn = keys.opt_bool("mlp_bias")?.unwrap_or(false);
                Biases { qkv: attention, attention_output: attention, ffn }
            }
            Family::Mistral => Biases { qkv: false, attention_output: false, ffn: false },
            Family::Qwen2 => Biases { qkv: true, attention_output: false, ffn: false },
            _ => Biases { qkv: true, attention_output: true, ffn: true },
        };
        let dtype = read_dtype(&keys)?;

        if n_layers > MAX_LAYERS {
            return Err(
                keys.inconsistent(names.layers, format!("{n_layers} layers: lathe-config reads at most {MAX_LAYERS}"))
            );
        }
        if heads > MAX_HEADS {
            return Err(
                keys.inconsistent(names.heads, format!("{heads} heads: lathe-config reads at most {MAX_HEADS}"))
            );
        }
        let mut layers = vec![LayerShape { heads, kv_heads, intermediate }; n_layers];
        let mut pruned: Vec<Vec<usize>> = vec![Vec::new(); n_layers];
        read_pruned_heads(&keys, family, heads, &mut layers, &mut pruned)?;
        read_lathe_layers(&keys, family, &mut layers)?;

        let config = Config {
            path: path.clone(),
            raw: Map::new(),
            family,
            hidden,
            heads,
            kv_heads,
            head_dim,
            intermediate,
            vocab,
            max_positions,
            type_vocab,
            pad_token_id,
            tie_word_embeddings,
            norm_eps,
            dtype,
            biases,
            layers,
            pruned,
        };
        // The default description holds every tensor a config can imply (pooler, untied LM
        // head), so once its count fits in 64 bits every count and size derived later does too.
        if Architecture::new(&config).checked_parameter_count().is_none() {
            return Err(Error::TooLarge { file: path });
        }
        Ok(Config { raw, ..config })
    }

    /// The path given to [`Config::parse`], used in messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The model family (`model_type`).
    pub fn family(&self) -> Family {
        self.family
    }

    /// Width of the residual stream (`hidden_size`, `dim`, `n_embd`).
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// The global head count (`num_attention_heads`, `n_heads`, `n_head`). With
    /// `pruned_heads` this is the count before pruning; [`Config::layers`] has each layer's.
    pub fn num_heads(&self) -> usize {
        self.heads
    }

    /// The global key/value head count (`num_key_value_heads`, default: the head count).
    pub fn num_kv_heads(&self) -> usize {
        self.kv_heads
    }

    /// Size of one head: `head_dim` when the config gives it, else hidden size / heads.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// The global FFN width (`intermediate_size`, `hidden_dim`, `n_inner` or 4 x `n_embd`).
    pub fn intermediate_size(&self) -> usize {
        self.intermediate
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// Rows of the position table (`max_position_embeddings`, `n_positions`); for the Llama
    /// family (rotary positions, no table) the key's value if present.
    pub fn max_position_embeddings(&self) -> Option<usize> {
        self.max_positions
    }

    /// The longest input: the position table, less `pad_token_id + 1` rows for RoBERTa and
    /// XLM-R, whose positions start after the padding id.
    pub fn max_sequence_length(&self) -> Option<usize> {
        let positions = self.max_positions?;
        match self.family {
            Family::Roberta | Family::XlmRoberta => {
                positions.checked_sub(self.pad_token_id.unwrap_or(0).saturating_add(1))
            }
            _ => Some(positions),
        }
    }

    /// Rows of the token-type table (`type_vocab_size`, default 2); 0 for families without one.
    pub fn type_vocab_size(&self) -> usize {
        self.type_vocab
    }

    /// `pad_token_id` (RoBERTa and XLM-R default to 1).
    pub fn pad_token_id(&self) -> Option<usize> {
        self.pad_token_id
    }

    /// Whether the LM head shares the word embeddings (`tie_word_embeddings`; transformers'
    /// default is true, except for the Llama family's classes).
    pub fn tie_word_embeddings(&self) -> bool {
        self.tie_word_embeddings
    }

    /// Epsilon of the layer norms (`layer_norm_eps`, `layer_norm_epsilon`, `rms_norm_eps`;
    /// DistilBERT fixes 1e-12).
    pub fn norm_eps(&self) -> f64 {
        self.norm_eps
    }

    /// Stored dtype (`dtype`, or `torch_dtype`; float32 when neither is given).
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Each layer's shape, in order.
    pub fn layers(&self) -> &[LayerShape] {
        &self.layers
    }

    /// The original ids of the heads pruned from layer `layer` (transformers' `pruned_heads`),
    /// sorted; empty for an unpruned layer and for the Llama family.
    pub fn pruned_heads(&self, layer: usize) -> Option<&[usize]> {
        self.pruned.get(layer).map(Vec::as_slice)
    }

    pub(crate) fn biases(&self) -> Biases {
        self.biases
    }

    /// The JSON object as read (or as edited), including keys lathe-config does not model.
    pub fn json(&self) -> &Map<String, Value> {
        &self.raw
    }

    /// The config as config.json text: the source's keys in their order, two-space indents
    /// as transformers writes them, and a final newline.
    pub fn to_json(&self) -> String {
        format!("{:#}\n", Value::Object(self.raw.clone()))
    }

    /// The description of the checkpoint this config implies, with the default prefix and
    /// parts ([`Architecture::new`]).
    pub fn architecture(&self) -> Architecture {
        Architecture::new(self)
    }

    /// Parameters of the default description ([`Architecture::parameter_count`]).
    pub fn parameter_count(&self) -> u64 {
        self.architecture().parameter_count()
    }

    /// The config after a structural edit: `layers` (and, for families that record
    /// `pruned_heads`, each layer's pruned original head ids) become the new layers, and the JSON is
    /// rewritten to say so, then read again so that the text and the typed config agree.
    ///
    /// The layer count key is set; a width shared by every layer goes to the global key
    /// (`intermediate_size` ...; for the Llama family also `num_attention_heads`,
    /// `num_key_value_heads`, and `head_dim` so the head size survives); heads of the other
    /// families go to `pruned_heads`; whatever still differs per layer goes to `lathe_layers`.
    pub(crate) fn edited(&self, layers: &[LayerShape], pruned: &[Vec<usize>]) -> Result<Config> {
        let names = self.family.keys();
        let mut raw = self.raw.clone();
        raw.insert(names.layers.into(), layers.len().into());

        let mut intermediate = self.intermediate;
        if let Some(width) = uniform(layers.iter().map(|layer| layer.intermediate))
            && width != self.intermediate
        {
            raw.insert(names.intermediate.into(), width.into());
            intermediate = width;
        }
        let (mut heads, mut kv_heads) = (self.heads, self.kv_heads);
        if self.family.records_pruned_heads() {
            let mut record = Map::new();
            for (index, gone) in pruned.iter().enumerate() {
                if !gone.is_empty() {
                    record.insert(index.to_string(), gone.iter().copied().map(Value::from).collect());
                }
            }
            if !record.is_empty() || raw.contains_key("pruned_heads") {
                raw.insert("pruned_heads".into(), Value::Object(record));
            }
        } else if let Some((new_heads, new_kv_heads)) =
            uniform(layers.iter().map(|layer| (layer.heads, layer.kv_heads)))
            && (new_heads, new_kv_heads) != (heads, kv_heads)
        {
            raw.insert(names.heads.into(), new_heads.into());
            raw.insert("num_key_value_heads".into(), new_kv_heads.into());
            raw.insert("head_dim".into(), self.head_dim.into());
            (heads, kv_heads) = (new_heads, new_kv_heads);
        }

        let per_layer_heads = !self.family.records_pruned_heads();
        let differs = layers.iter().any(|layer| {
            layer.intermediate != intermediate
                || (per_layer_heads && (layer.heads != heads || layer.kv_heads != kv_heads))
        });
        if differs {
            let entries = layers
                .iter()
                .map(|layer| {
                    let mut entry = Map::new();
                    if per_layer_heads {
                        entry.insert("heads".into(), layer.heads.into());
                        entry.insert("kv_heads".into(), layer.kv_heads.into());
                    }
                    entry.insert("intermediate".into(), layer.intermediate.into());
                    Value::Object(entry)
                })
                .collect();
            raw.insert(LATHE_LAYERS.into(), Value::Array(entries));
        } else {
            raw.shift_remove(LATHE_LAYERS);
        }
        let config = Config::from_map(raw, self.path.clone())?;
        debug_assert_eq!(config.layers, layers, "the edited config.json reads back as other layers");
        debug_assert!(!self.family.records_pruned_heads() || config.pruned == pruned, "pruned heads read back differ");
        Ok(config)
    }
}

/// The most layers a config may have. Real models have at most a few hundred; the cap bounds
/// what a hostile config can make lathe-config allocate (it describes every layer).
pub const MAX_LAYERS: usize = 4096;

/// The most attention heads a layer may have (real models: at most a few hundred).
pub const MAX_HEADS: usize = 65536;

/// lathe's config key for per-layer shapes.
pub(crate) const LATHE_LAYERS: &str = "lathe_layers";

/// The one value every item has, if they all have the same.
fn uniform<T: PartialEq>(mut items: impl Iterator<Item = T>) -> Option<T> {
    let first = items.next()?;
    items.all(|item| item == first).then_some(first)
}

/// `dtype` (transformers >= 4.56) or `torch_dtype` (before); both must agree when both are set.
fn read_dtype(keys: &Keys<'_>) -> Result<Dtype> {
    let mut found: Option<(&str, Dtype)> = None;
    for key in ["dtype", "torch_dtype"] {
        let Some(name) = keys.opt_str(key)? else { continue };
        let dtype = Dtype::from_torch_name(name)
            .ok_or_else(|| keys.bad(key, "float32, float16 or bfloat16", keys.get(key).unwrap_or(&Value::Null)))?;
        if let Some((first_key, first)) = found
            && first != dtype
        {
            let reason = format!("`{key}` is {} but `{first_key}` is {}", dtype.torch_name(), first.torch_name());
            return Err(keys.inconsistent(key, reason));
        }
        found = Some((key, dtype));
    }
    Ok(found.map_or(Dtype::F32, |(_, dtype)| dtype))
}

/// transformers' `pruned_heads`: `{"layer": [head ids]}` with ids in the original numbering.
fn read_pruned_heads(
    keys: &Keys<'_>,
    family: Family,
    heads: usize,
    layers: &mut [LayerShape],
    pruned: &mut [Vec<usize>],
) -> Result<()> {
    const KEY: &str = "pruned_heads";
    let Some(value) = keys.get(KEY) else { return Ok(()) };
    let record = value.as_object().ok_or_else(|| keys.bad(KEY, "an object of layer: [head ids]", value))?;
    if record.is_empty() {
        return Ok(());
    }
    if !family.records_pruned_heads() {
        let reason =
            format!("{family} models do not prune heads this way: lathe records their heads in `{LATHE_LAYERS}`");
        return Err(keys.inconsistent(KEY, reason));
    }
    for (layer_key, ids) in record {
        let key = format!("{KEY}.{layer_key}");
        let layer = layer_key
            .parse::<usize>()
            .ok()
            .filter(|&layer| layer < layers.len())
            .ok_or_else(|| keys.inconsistent(&key, format!("not a layer index below {}", layers.len())))?;
        let list = ids.as_array().ok_or_else(|| keys.bad(&key, "a list of head ids", ids))?;
        let mut gone = Vec::with_capacity(list.len());
        for id in list {
            match id.as_u64() {
                Some(id) if id < heads as u64 => gone.push(id as usize),
                _ => return Err(keys.bad(&key, &format!("head ids below {heads}"), id)),
            }
        }
        // transformers treats the list as a set.
        gone.sort_unstable();
        gone.dedup();
        let kept = heads - gone.len();
        if kept == 0 {
            return Err(keys.inconsistent(&key, format!("prunes all {heads} heads: a layer needs at least one")));
        }
        layers[layer] = LayerShape { heads: kept, kv_heads: kept, ..layers[layer] };
        pruned[layer] = gone;
    }
    Ok(())
}

/// lathe's `lathe_layers`: one object per layer with optional `intermediate` and, for the Llama
/// family, `heads` and `kv_heads`.
fn read_lathe_layers(keys: &Keys<'_>, family: Family, layers: &mut [LayerShape]) -> Result<()> {
    let Some(value) = keys.get(LATHE_LAYERS) else { return Ok(()) };
    let entries = value.as_array().ok_or_else(|| keys.bad(LATHE_LAYERS, "a list with one object per layer", value))?;
    if entries.len() != layers.len() {
        let reason = format!("lists {} layers, but `{}` is {}", entries.len(), family.keys().layers, layers.len());
        return Err(keys.inconsistent(LATHE_LAYERS, reason));
    }
    for (index, (entry, layer)) in entries.iter().zip(layers.iter_mut()).enumerate() {
        let at = format!("{LATHE_LAYERS}[{index}]");
        let map = entry.as_object().ok_or_else(|| Error::BadValue {
            file: keys.file.to_path_buf(),
            key: at.clone(),
            expected: "an object".into(),
            found: shown(entry),
        })?;
        let entry_keys = Keys { map, file: keys.file, at: &at };
        for key in map.keys() {
            match key.as_str() {
                "intermediate" => {}
                "heads" | "kv_heads" if family.is_llama_like() => {}
                "heads" | "kv_heads" => {
                    let reason = format!("{family} records kept heads in `pruned_heads`, which transformers reads too");
                    return Err(entry_keys.inconsistent(key, reason));
                }
                _ => {
                    let expected =
                        if family.is_llama_like() { "intermediate, heads or kv_heads" } else { "intermediate" };
                    return Err(entry_keys.inconsistent(key, format!("unknown key: expected {expected}")));
                }
            }
        }
        if let Some(intermediate) = entry_keys.opt_dim("intermediate")? {
            layer.intermediate = intermediate;
        }
        if let Some(heads) = entry_keys.opt_dim("heads")? {
            if heads > MAX_HEADS {
                return Err(
                    entry_keys.inconsistent("heads", format!("{heads} heads: lathe-config reads at most {MAX_HEADS}"))
                );
            }
            layer.heads = heads;
        }
        if let Some(kv_heads) = entry_keys.opt_dim("kv_heads")? {
            layer.kv_heads = kv_heads;
        }
        if !layer.heads.is_multiple_of(layer.kv_heads) {
            let reason =
                format!("{} query heads do not split into groups for {} kv heads", layer.heads, layer.kv_heads);
            return Err(entry_keys.inconsistent("kv_heads", reason));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<Config> {
        Config::parse(&value.to_string(), "m/config.json")
    }

    fn bert() -> Value {
        json!({
            "model_type": "bert", "hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
            "intermediate_size": 128, "vocab_size": 100, "max_position_embeddings": 32
        })
    }

    fn llama() -> Value {
        json!({
            "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 8,
            "num_key_value_heads": 2, "intermediate_size": 96, "vocab_size": 100
        })
    }

    fn with(mut value: Value, key: &str, new: Value) -> Value {
        value.as_object_mut().unwrap().insert(key.into(), new);
        value
    }

    fn message(value: Value) -> String {
        parse(value).unwrap_err().to_string()
    }

    #[test]
    fn defaults_follow_transformers() {
        let config = parse(bert()).unwrap();
        assert_eq!((config.family(), config.head_dim(), config.type_vocab_size()), (Family::Bert, 16, 2));
        assert_eq!((config.norm_eps(), config.dtype(), config.tie_word_embeddings()), (1e-12, Dtype::F32, true));
        assert_eq!(config.layers(), &[LayerShape { heads: 4, kv_heads: 4, intermediate: 128 }; 3]);
        assert_eq!(config.pruned_heads(2), Some(&[][..]));

        let config = parse(llama()).unwrap();
        assert_eq!((config.num_kv_heads(), config.head_dim(), config.norm_eps()), (2, 8, 1e-6));
        assert!(!config.tie_word_embeddings());
        assert_eq!(config.max_position_embeddings(), None);

        let roberta = parse(with(bert(), "model_type", "roberta".into())).unwrap();
        assert_eq!((roberta.pad_token_id(), roberta.max_sequence_length()), (Some(1), Some(30)));
        let gpt2 = json!({"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 16,
                          "vocab_size": 50, "n_inner": null});
        let gpt2 = parse(gpt2).unwrap();
        assert_eq!((gpt2.intermediate_size(), gpt2.norm_eps(), gpt2.tie_word_embeddings()), (128, 1e-5, true));
    }

    #[test]
    fn dtype_and_torch_dtype_are_both_read() {
        assert_eq!(parse(with(bert(), "dtype", "bfloat16".into())).unwrap().dtype(), Dtype::Bf16);
        assert_eq!(parse(with(bert(), "torch_dtype", "float16".into())).unwrap().dtype(), Dtype::F16);
        let both = with(with(bert(), "dtype", "float16".into()), "torch_dtype", "float16".into());
        assert_eq!(parse(both).unwrap().dtype(), Dtype::F16);
        let clash = with(with(bert(), "dtype", "float16".into()), "torch_dtype", "bfloat16".into());
        assert_eq!(
            message(clash),
            "m/config.json: key `torch_dtype`: `torch_dtype` is bfloat16 but `dtype` is float16"
        );
        assert_eq!(
            message(with(bert(), "torch_dtype", "float64".into())),
            "m/config.json: key `torch_dtype` is \"float64\": expected float32, float16 or bfloat16"
        );
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        assert_eq!(
            message(with(bert(), "model_type", "t5".into())),
            "m/config.json: model_type `t5` is not supported: expected one of bert, roberta, xlm-roberta, \
             distilbert, gpt2, llama, mistral, qwen2"
        );
        let mut missing = bert();
        missing.as_object_mut().unwrap().remove("intermediate_size");
        assert_eq!(message(missing), "m/config.json: key `intermediate_size` is missing");
        assert_eq!(
            message(with(bert(), "num_attention_heads", 5.into())),
            "m/config.json: key `num_attention_heads`: 64 (`hidden_size`) does not split into 5 heads"
        );
        assert_eq!(
            message(with(llama(), "num_key_value_heads", 3.into())),
            "m/config.json: key `num_key_value_heads`: 8 query heads do not split into groups for 3 kv heads"
        );
        assert!(message(json!([1])).ends_with("the top level is not a json object"));
        assert!(message(json!({})).ends_with("key `model_type` is missing"));
        assert!(Config::parse("{", "x.json").unwrap_err().to_string().starts_with("x.json: not valid json: "));
        let huge = with(with(bert(), "vocab_size", (1u64 << 31).into()), "num_hidden_layers", 4096.into());
        let huge = with(huge, "hidden_size", (1u64 << 31).into());
        assert!(message(with(huge, "intermediate_size", (1u64 << 31).into())).ends_with("overflows 64 bits"));
        assert_eq!(
            message(with(bert(), "num_hidden_layers", 4097.into())),
            "m/config.json: key `num_hidden_layers`: 4097 layers: lathe-config reads at most 4096"
        );
        let many_heads = with(with(bert(), "num_attention_heads", 65537.into()), "hidden_size", 65537.into());
        assert!(message(many_heads).ends_with("65537 heads: lathe-config reads at most 65536"));
    }

    #[test]
    fn llama_head_dim_key_wins_and_gqa_is_checked() {
        let config = parse(with(with(llama(), "head_dim", 32.into()), "num_attention_heads", 6.into())).unwrap();
        assert_eq!((config.head_dim(), config.num_heads(), config.num_kv_heads()), (32, 6, 2));
    }

    #[test]
    fn pruned_heads_shrink_layers_in_the_original_numbering() {
        let config = parse(with(bert(), "pruned_heads", json!({"0": [1, 3], "2": [0, 0]}))).unwrap();
        let heads: Vec<usize> = config.layers().iter().map(|layer| layer.heads).collect();
        assert_eq!(heads, [2, 4, 3]);
        assert_eq!(config.pruned_heads(0), Some(&[1, 3][..]));
        assert_eq!(config.pruned_heads(2), Some(&[0][..]));
        assert_eq!((config.num_heads(), config.head_dim()), (4, 16));
        assert_eq!(
            message(with(bert(), "pruned_heads", json!({"3": [0]}))),
            "m/config.json: key `pruned_heads.3`: not a layer index below 3"
        );
        assert_eq!(
            message(with(bert(), "pruned_heads", json!({"1": [0, 1, 2, 3]}))),
            "m/config.json: key `pruned_heads.1`: prunes all 4 heads: a layer needs at least one"
        );
        assert!(message(with(bert(), "pruned_heads", json!({"1": [4]}))).contains("expected head ids below 4"));
        assert!(parse(with(llama(), "pruned_heads", json!({}))).is_ok());
        assert!(message(with(llama(), "pruned_heads", json!({"0": [1]}))).contains("lathe_layers"));
    }

    #[test]
    fn lathe_layers_override_per_layer() {
        let layers = json!([{"intermediate": 10}, {}, {"intermediate": 30}]);
        let config = parse(with(bert(), "lathe_layers", layers)).unwrap();
        let widths: Vec<usize> = config.layers().iter().map(|layer| layer.intermediate).collect();
        assert_eq!(widths, [10, 128, 30]);

        let layers = json!([{"heads": 4, "kv_heads": 1, "intermediate": 8}, {"heads": 2}]);
        let config = parse(with(llama(), "lathe_layers", layers)).unwrap();
        assert_eq!(config.layers()[0], LayerShape { heads: 4, kv_heads: 1, intermediate: 8 });
        assert_eq!(config.layers()[1], LayerShape { heads: 2, kv_heads: 2, intermediate: 96 });

        assert_eq!(
            message(with(bert(), "lathe_layers", json!([{}]))),
            "m/config.json: key `lathe_layers`: lists 1 layers, but `num_hidden_layers` is 3"
        );
        assert_eq!(
            message(with(bert(), "lathe_layers", json!([{}, {"heads": 2}, {}]))),
            "m/config.json: key `lathe_layers[1].heads`: bert records kept heads in `pruned_heads`, which \
             transformers reads too"
        );
        assert_eq!(
            message(with(llama(), "lathe_layers", json!([{"width": 2}, {}]))),
            "m/config.json: key `lathe_layers[0].width`: unknown key: expected intermediate, heads or kv_heads"
        );
        assert_eq!(
            message(with(llama(), "lathe_layers", json!([{}, {"heads": 3}]))),
            "m/config.json: key `lathe_layers[1].kv_heads`: 3 query heads do not split into groups for 2 kv heads"
        );
        assert_eq!(
            message(with(llama(), "lathe_layers", json!([{}, {"intermediate": 0}]))),
            "m/config.json: key `lathe_layers[1].intermediate` is 0: expected an integer from 1 to 2^31"
        );
        assert!(message(with(llama(), "lathe_layers", json!([{}, 3]))).contains("`lathe_layers[1]` is 3"));
    }

    #[test]
    fn to_json_keeps_every_key_in_order() {
        let text = "{\n  \"model_type\": \"bert\",\n  \"zeta\": [1, 2],\n  \"hidden_size\": 64,\n  \
                    \"num_hidden_layers\": 3,\n  \"num_attention_heads\": 4,\n  \"intermediate_size\": 128,\n  \
                    \"vocab_size\": 100,\n  \"max_position_embeddings\": 32\n}\n";
        let config = Config::parse(text, "c.json").unwrap();
        let written = config.to_json();
        assert!(written.starts_with("{\n  \"model_type\": \"bert\",\n  \"zeta\": [\n    1,"), "{written}");
        assert_eq!(Config::parse(&written, "c.json").unwrap(), config);
    }

    #[test]
    fn edited_writes_global_keys_or_per_layer_records() {
        let config = parse(with(bert(), "lathe_layers", json!([{}, {}, {}]))).unwrap();
        let shape = |heads, intermediate| LayerShape { heads, kv_heads: heads, intermediate };
        // Uniform widths go to the global key, and the per-layer key goes away.
        let edited = config.edited(&[shape(4, 50), shape(4, 50)], &[vec![], vec![]]).unwrap();
        assert_eq!(edited.json()["num_hidden_layers"], 2);
        assert_eq!(edited.json()["intermediate_size"], 50);
        assert!(!edited.json().contains_key(LATHE_LAYERS));
        assert!(!edited.json().contains_key("pruned_heads"));
        // Heads go to pruned_heads in the original numbering, widths that differ to lathe_layers.
        let edited = config.edited(&[shape(4, 50), shape(2, 60)], &[vec![], vec![0, 2]]).unwrap();
        assert_eq!(edited.json()["pruned_heads"], json!({"1": [0, 2]}));
        assert_eq!(edited.json()[LATHE_LAYERS], json!([{"intermediate": 50}, {"intermediate": 60}]));
        assert_eq!(edited.json()["intermediate_size"], 128);
        assert_eq!(edited.pruned_heads(1), Some(&[0, 2][..]));

        let config = parse(llama()).unwrap();
        let gqa = |heads, kv_heads| LayerShape { heads, kv_heads, intermediate: 96 };
        let edited = config.edited(&[gqa(4, 1), gqa(4, 1)], &[vec![], vec![]]).unwrap();
        assert_eq!(edited.json()["num_attention_heads"], 4);
        assert_eq!(edited.json()["num_key_value_heads"], 1);
        assert_eq!(edited.json()["head_dim"], 8);
        assert_eq!(edited.head_dim(), 8);
        let edited = config.edited(&[gqa(4, 1), gqa(8, 2)], &[vec![], vec![]]).unwrap();
        assert_eq!(edited.json()["num_attention_heads"], 8);
        assert_eq!(
            edited.json()[LATHE_LAYERS],
            json!([{"heads": 4, "kv_heads": 1, "intermediate": 96}, {"heads": 8, "kv_heads": 2, "intermediate": 96}])
        );
    }
}
