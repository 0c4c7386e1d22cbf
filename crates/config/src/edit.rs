//! Structural edits: which layers, heads and FFN neurons stay, and how each new tensor is cut
//! from an old one.

use std::collections::BTreeMap;

use crate::arch::{Layout, Role};
use crate::config::LayerShape;
use crate::{Architecture, Config, Error, Result};

/// What a structural edit keeps: a subset of the layers, and per kept layer a subset of its heads
/// and of its FFN neurons. Layers are named by their index in the source model, heads and neurons
/// by their position in that layer (`0..heads`, `0..intermediate`). Every list must be sorted,
/// without repeats, in range, and keep at least one element.
///
/// With grouped-query attention, a key/value head stays if any of its query heads does, and
/// every kv group that stays must keep the same number of query heads: transformers maps query
/// head `i` to kv head `i / (heads / kv_heads)`, which only survives an edit if the groups stay
/// equal. Without it (`kv_heads == heads`) any subset works.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edit {
    layers: Option<Vec<usize>>,
    heads: BTreeMap<usize, Vec<usize>>,
    neurons: BTreeMap<usize, Vec<usize>>,
}

impl Edit {
    /// An edit that keeps everything.
    pub fn new() -> Edit {
        Edit::default()
    }

    /// Keeps these layers (all by default), renumbered from 0 in this order.
    pub fn keep_layers(mut self, layers: impl Into<Vec<usize>>) -> Edit {
        self.layers = Some(layers.into());
        self
    }

    /// Keeps these query heads of source layer `layer` (all by default).
    pub fn keep_heads(mut self, layer: usize, heads: impl Into<Vec<usize>>) -> Edit {
        self.heads.insert(layer, heads.into());
        self
    }

    /// Keeps these FFN neurons of source layer `layer` (all by default).
    pub fn keep_neurons(mut self, layer: usize, neurons: impl Into<Vec<usize>>) -> Edit {
        self.neurons.insert(layer, neurons.into());
        self
    }
}

/// How one tensor of the edited checkpoint is made: take `source_name` and keep the listed
/// `rows` (indices along the stored dimension 0) and `cols` (along dimension 1), or all of a
/// dimension when `None`. Indices refer to the stored layout, so for GPT-2's `[in, out]` weights
/// the kept outputs are columns. 1-D tensors (biases) only have rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEdit {
    /// Name in the edited checkpoint.
    pub new_name: String,
    /// Name in the source checkpoint.
    pub source_name: String,
    /// Shape in the edited checkpoint.
    pub shape: Vec<usize>,
    /// Rows (dimension 0) to keep, in order; `None` keeps them all.
    pub rows: Option<Vec<usize>>,
    /// Columns (dimension 1) to keep, in order; `None` keeps them all.
    pub cols: Option<Vec<usize>>,
}

impl TensorEdit {
    /// Whether the tensor is copied whole (perhaps under a new name).
    pub fn is_copy(&self) -> bool {
        self.rows.is_none() && self.cols.is_none()
    }
}

/// The outcome of [`Architecture::edit`]: the new config (whose [`Config::to_json`] is the new
/// config.json), its description, and how to make each of its tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct Edited {
    /// The edited config.
    pub config: Config,
    /// The edited checkpoint's description (same prefix and parts as the source's).
    pub architecture: Architecture,
    /// One entry per described tensor of the edited checkpoint, in description order. Buffers
    /// (`position_ids` ...) are not carried over: transformers rebuilds them.
    pub tensors: Vec<TensorEdit>,
}

/// Per kept layer: the source layer and the kept heads, kv heads and neurons (`None` = all).
struct LayerPlan {
    source: usize,
    heads: Option<Vec<usize>>,
    kv_heads: Option<Vec<usize>>,
    neurons: Option<Vec<usize>>,
}

impl Architecture {
    /// Plans a structural edit: checks the selection, writes the new config and lists how each
    /// new tensor comes from an old one. Query, key and value rows (or GPT-2's fused columns) of
    /// the kept heads, the attention output's matching inputs, FFN in/gate/up rows and FFN out
    /// inputs of the kept neurons; biases follow the outputs. Layers are renumbered.
    ///
    /// # Errors
    /// [`Error::OutOfRange`], [`Error::NotSorted`], [`Error::NothingKept`],
    /// [`Error::LayerNotKept`] and [`Error::UnevenGroups`] for a selection that does not fit.
    pub fn edit(&self, edit: &Edit) -> Result<Edited> {
        let config = self.config();
        let n_layers = config.num_layers();
        let kept_layers = match &edit.layers {
            Some(layers) => {
                check_selection("model", "layer", layers, n_layers)?;
                layers.clone()
            }
            None => (0..n_layers).collect(),
        };
        for (what, selected) in [("head", &edit.heads), ("neuron", &edit.neurons)] {
            if let Some(&layer) = selected.keys().find(|layer| !kept_layers.contains(layer)) {
                return Err(Error::LayerNotKept { layer, what });
            }
        }

        let mut plans = Vec::with_capacity(kept_layers.len());
        let mut shapes = Vec::with_capacity(kept_layers.len());
        let mut pruned = Vec::with_capacity(kept_layers.len());
        for &source in &kept_layers {
            let shape = config.layers()[source];
            let scope = format!("layer {source}");
            let mut new_shape = shape;
            let mut gone = config.pruned_heads(source).unwrap_or_default().to_vec();
            let (mut heads, mut kv_heads) = (None, None);
            if let Some(selected) = edit.heads.get(&source) {
                check_selection(&scope, "head", selected, shape.heads)?;
                let group = shape.heads / shape.kv_heads;
                let mut kept_kv: Vec<usize> = selected.iter().map(|head| head / group).collect();
                kept_kv.dedup();
                let counts: Vec<usize> =
                    kept_kv.iter().map(|kv| selected.iter().filter(|&&head| head / group == *kv).count()).collect();
                if counts.iter().any(|&count| count != counts[0]) {
                    return Err(Error::UnevenGroups { layer: source, group, counts });
                }
                new_shape.heads = selected.len();
                new_shape.kv_heads = kept_kv.len();
                if config.family().records_pruned_heads() {
                    gone = pruned_after(config.num_heads(), &gone, selected);
                }
                heads = full_or(selected.clone(), shape.heads);
                kv_heads = full_or(kept_kv, shape.kv_heads);
            }
            let mut neurons = None;
            if let Some(selected) = edit.neurons.get(&source) {
                check_selection(&scope, "neuron", selected, shape.intermediate)?;
                new_shape.intermediate = selected.len();
                neurons = full_or(selected.clone(), shape.intermediate);
            }
            plans.push(LayerPlan { source, heads, kv_heads, neurons });
            shapes.push(new_shape);
            pruned.push(gone);
        }

        let new_config = config.edited(&shapes, &pruned)?;
        let architecture = self.rebuilt(&new_config);
        let mut tensors = Vec::new();
        for (old, new) in self.others().iter().zip(architecture.others()) {
            tensors.push(TensorEdit {
                new_name: new.name.clone(),
                source_name: old.name.clone(),
                shape: new.shape.clone(),
                rows: None,
                cols: None,
            });
        }
        for (plan, new_layer) in plans.iter().zip(architecture.layers()) {
            let old_layer = &self.layers()[plan.source];
            let head_dim = old_layer.head_dim;
            let features = |heads: &Option<Vec<usize>>| heads.as_ref().map(|heads| head_features(heads, head_dim, 0));
            for (old, new) in old_layer.linears.iter().zip(&new_layer.linears) {
                let (outputs, inputs) = match old.role {
                    Role::Query => (features(&plan.heads), None),
                    Role::Key | Role::Value => (features(&plan.kv_heads), None),
                    Role::QueryKeyValue => (fused_features(plan, old_layer.shape, head_dim), None),
                    Role::AttentionOutput => (None, features(&plan.heads)),
                    Role::FfnIn | Role::FfnGate | Role::FfnUp => (plan.neurons.clone(), None),
                    Role::FfnOut => (None, plan.neurons.clone()),
                };
                let (rows, cols) = match old.layout {
                    Layout::OutIn => (outputs.clone(), inputs),
                    Layout::InOut => (inputs, outputs.clone()),
                };
                tensors.push(TensorEdit {
                    new_name: new.weight.clone(),
                    source_name: old.weight.clone(),
                    shape: new.weight_shape(),
                    rows,
                    cols,
                });
                if let (Some(old_bias), Some(new_bias)) = (&old.bias, &new.bias) {
                    tensors.push(TensorEdit {
                        new_name: new_bias.clone(),
                        source_name: old_bias.clone(),
                        shape: vec![new.out_features],
                        rows: outputs,
                        cols: None,
                    });
                }
            }
            for (old, new) in old_layer.norms.iter().zip(&new_layer.norms) {
                tensors.push(TensorEdit {
                    new_name: new.name.clone(),
                    source_name: old.name.clone(),
                    shape: new.shape.clone(),
                    rows: None,
                    cols: None,
                });
            }
        }
        Ok(Edited { config: new_config, architecture, tensors })
    }
}

/// The original ids pruned from a layer of `heads` original heads that had `pruned` (sorted)
/// pruned and now keeps the heads at positions `selected` (sorted) among the rest.
fn pruned_after(heads: usize, pruned: &[usize], selected: &[usize]) -> Vec<usize> {
    let mut remaining = (0..heads).filter(|id| pruned.binary_search(id).is_err());
    let mut kept = Vec::with_capacity(selected.len());
    let mut position = 0;
    for &wanted in selected {
        // nth advances past the skipped heads, so positions are relative to the last one taken.
        if let Some(id) = remaining.nth(wanted - position) {
            kept.push(id);
        }
        position = wanted + 1;
    }
    (0..heads).filter(|id| kept.binary_search(id).is_err()).collect()
}

/// `selected`, or `None` when it keeps all `len`.
fn full_or(selected: Vec<usize>, len: usize) -> Option<Vec<usize>> {
    (selected.len() != len).then_some(selected)
}

/// The features (rows of `[out, in]`) of these heads, starting at `offset`.
fn head_features(heads: &[usize], head_dim: usize, offset: usize) -> Vec<usize> {
    heads.iter().flat_map(|&head| (0..head_dim).map(move |i| offset + head * head_dim + i)).collect()
}

/// The outputs of a fused query/key/value linear to keep: the kept query heads' features in the
/// query part, the kept kv heads' in the key and value parts.
fn fused_features(plan: &LayerPlan, shape: LayerShape, head_dim: usize) -> Option<Vec<usize>> {
    if plan.heads.is_none() && plan.kv_heads.is_none() {
        return None;
    }
    let all_q: Vec<usize> = (0..shape.heads).collect();
    let all_kv: Vec<usize> = (0..shape.kv_heads).collect();
    let q = plan.heads.as_deref().unwrap_or(&all_q);
    let kv = plan.kv_heads.as_deref().unwrap_or(&all_kv);
    let (q_width, kv_width) = (shape.heads * head_dim, shape.kv_heads * head_dim);
    let mut features = head_features(q, head_dim, 0);
    features.extend(head_features(kv, head_dim, q_width));
    features.extend(head_features(kv, head_dim, q_width + kv_width));
    Some(features)
}

/// Checks that `selected` is sorted, unique, below `len` and not empty.
fn check_selection(scope: &str, what: &'static str, selected: &[usize], len: usize) -> Result<()> {
    if selected.is_empty() {
        return Err(Error::NothingKept { scope: scope.to_string(), what });
    }
    for (position, &index) in selected.iter().enumerate() {
        if index >= len {
            return Err(Error::OutOfRange { scope: scope.to_string(), what, index, len });
        }
        if let Some(&previous) = position.checked_sub(1).and_then(|previous| selected.get(previous))
            && index <= previous
        {
            return Err(Error::NotSorted { scope: scope.to_string(), what, index, previous });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(value: serde_json::Value) -> Config {
        Config::parse(&value.to_string(), "e/config.json").unwrap()
    }

    fn bert() -> Architecture {
        config(json!({
            "model_type": "bert", "hidden_size": 8, "num_hidden_layers": 3, "num_attention_heads": 4,
            "intermediate_size": 6, "vocab_size": 10, "max_position_embeddings": 5
        }))
        .architecture()
    }

    fn find<'a>(edited: &'a Edited, name: &str) -> &'a TensorEdit {
        edited.tensors.iter().find(|tensor| tensor.new_name == name).unwrap_or_else(|| panic!("no {name}"))
    }

    fn message(architecture: &Architecture, edit: Edit) -> String {
        architecture.edit(&edit).unwrap_err().to_string()
    }

    #[test]
    fn selections_are_checked_with_their_scope() {
        let bert = bert();
        assert_eq!(message(&bert, Edit::new().keep_layers([])), "model keeps no layers: keep at least one");
        assert_eq!(message(&bert, Edit::new().keep_layers([0, 3])), "model: layer 3 is out of range for 3 layers");
        assert_eq!(
            message(&bert, Edit::new().keep_layers([1, 1])),
            "model: layers to keep must be sorted and unique, but 1 follows 1"
        );
        assert_eq!(
            message(&bert, Edit::new().keep_layers([0, 2]).keep_heads(1, [0])),
            "layer 1 is not kept, so its heads cannot be selected"
        );
        assert_eq!(
            message(&bert, Edit::new().keep_heads(2, [3, 1])),
            "layer 2: heads to keep must be sorted and unique, but 1 follows 3"
        );
        assert_eq!(message(&bert, Edit::new().keep_neurons(0, [6])), "layer 0: neuron 6 is out of range for 6 neurons");
    }

    #[test]
    fn bert_heads_take_rows_and_output_columns() {
        let edited =
            bert().edit(&Edit::new().keep_layers([0, 2]).keep_heads(2, [1, 3]).keep_neurons(0, [0, 5])).unwrap();
        let query = find(&edited, "encoder.layer.1.attention.self.query.weight");
        assert_eq!(query.source_name, "encoder.layer.2.attention.self.query.weight");
        assert_eq!((query.rows.as_deref(), query.cols.as_deref()), (Some(&[2, 3, 6, 7][..]), None));
        assert_eq!(query.shape, [4, 8]);
        let output = find(&edited, "encoder.layer.1.attention.output.dense.weight");
        assert_eq!((output.rows.as_deref(), output.cols.as_deref()), (None, Some(&[2, 3, 6, 7][..])));
        let bias = find(&edited, "encoder.layer.1.attention.self.value.bias");
        assert_eq!(bias.rows.as_deref(), Some(&[2, 3, 6, 7][..]));
        let up = find(&edited, "encoder.layer.0.intermediate.dense.bias");
        assert_eq!((up.rows.as_deref(), up.shape.as_slice()), (Some(&[0, 5][..]), &[2][..]));
        let down = find(&edited, "encoder.layer.0.output.dense.weight");
        assert_eq!((down.cols.as_deref(), down.shape.as_slice()), (Some(&[0, 5][..]), &[8, 2][..]));
        assert!(find(&edited, "encoder.layer.0.attention.self.key.weight").is_copy());
        assert_eq!(edited.config.json()["pruned_heads"], json!({"1": [0, 2]}));
        assert_eq!(edited.config.json()["lathe_layers"], json!([{"intermediate": 2}, {"intermediate": 6}]));
    }

    #[test]
    fn gpt2_heads_take_fused_columns_and_projection_rows() {
        let gpt2 = config(json!({"model_type": "gpt2", "n_embd": 6, "n_layer": 1, "n_head": 3, "n_positions": 4,
                                 "vocab_size": 7}))
        .architecture();
        let edited = gpt2.edit(&Edit::new().keep_heads(0, [0, 2]).keep_neurons(0, [1, 2, 3])).unwrap();
        let fused = find(&edited, "h.0.attn.c_attn.weight");
        assert_eq!(fused.rows, None);
        assert_eq!(fused.cols.as_deref(), Some(&[0, 1, 4, 5, 6, 7, 10, 11, 12, 13, 16, 17][..]));
        assert_eq!(fused.shape, [6, 12]);
        assert_eq!(find(&edited, "h.0.attn.c_attn.bias").rows, fused.cols);
        let projection = find(&edited, "h.0.attn.c_proj.weight");
        assert_eq!((projection.rows.as_deref(), projection.cols.as_deref()), (Some(&[0, 1, 4, 5][..]), None));
        assert_eq!(find(&edited, "h.0.attn.c_proj.bias").rows, None);
        let fc = find(&edited, "h.0.mlp.c_fc.weight");
        assert_eq!(
            (fc.rows.as_deref(), fc.cols.as_deref(), fc.shape.as_slice()),
            (None, Some(&[1, 2, 3][..]), &[6, 3][..])
        );
        assert_eq!(find(&edited, "h.0.mlp.c_proj.weight").rows.as_deref(), Some(&[1, 2, 3][..]));
        assert_eq!(edited.config.json()["n_inner"], 3);
        assert_eq!(edited.config.json()["pruned_heads"], json!({"0": [1]}));
    }

    #[test]
    fn grouped_query_heads_keep_whole_kv_heads() {
        let llama = config(json!({"model_type": "llama", "hidden_size": 8, "num_hidden_layers": 1,
                                  "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 4,
                                  "vocab_size": 10}))
        .architecture();
        // Groups: kv 0 serves q 0 and 1, kv 1 serves q 2 and 3.
        let edited = llama.edit(&Edit::new().keep_heads(0, [2, 3])).unwrap();
        let key = find(&edited, "model.layers.0.self_attn.k_proj.weight");
        assert_eq!((key.rows.as_deref(), key.shape.as_slice()), (Some(&[2, 3][..]), &[2, 8][..]));
        let query = find(&edited, "model.layers.0.self_attn.q_proj.weight");
        assert_eq!(query.rows.as_deref(), Some(&[4, 5, 6, 7][..]));
        assert_eq!(edited.config.layers()[0], LayerShape { heads: 2, kv_heads: 1, intermediate: 4 });
        assert_eq!(edited.config.json()["head_dim"], 2);
        // One head from each group keeps both kv heads.
        let edited = llama.edit(&Edit::new().keep_heads(0, [0, 3])).unwrap();
        assert!(find(&edited, "model.layers.0.self_attn.v_proj.weight").is_copy());
        assert_eq!(edited.config.layers()[0].kv_heads, 2);
        assert_eq!(
            message(&llama, Edit::new().keep_heads(0, [0, 1, 2])),
            "layer 0: the kept query heads per kept kv head are [2, 1]: keep the same number of query heads in \
             every kv group that stays (groups of 2)"
        );
    }

    #[test]
    fn pruned_heads_accumulate_in_the_original_numbering() {
        assert_eq!(pruned_after(6, &[], &[1, 4]), [0, 2, 3, 5]);
        // Remaining 0, 2, 4, 5: positions 1 and 3 are heads 2 and 5.
        assert_eq!(pruned_after(6, &[1, 3], &[1, 3]), [0, 1, 3, 4]);
        assert_eq!(pruned_after(6, &[1, 3], &[0, 1, 2, 3]), [1, 3]);
    }

    #[test]
    fn keeping_everything_copies_everything() {
        let bert = bert();
        let edited = bert.edit(&Edit::new().keep_heads(1, [0, 1, 2, 3])).unwrap();
        assert!(edited.tensors.iter().all(|tensor| tensor.is_copy() && tensor.new_name == tensor.source_name));
        assert_eq!(edited.tensors.len(), bert.tensors().len());
        assert_eq!(edited.config, *bert.config());
    }
}
