//! lathe-config against published facts: the parameter counts of bert-base-uncased, gpt2,
//! Llama-2-7B and Qwen2-0.5B, the real all-MiniLM-L6-v2 tensor list (tests/data), and
//! structural edits checked against the tensors they map.

use std::collections::{BTreeMap, HashMap};

use lathe_config::*;
use proptest::prelude::*;
use serde_json::Value;

fn data(file: &str) -> (String, String) {
    let path = format!("{}/tests/data/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path}: {error}"));
    (text, path)
}

fn config(file: &str) -> Config {
    let (text, path) = data(file);
    Config::parse(&text, &path).unwrap_or_else(|error| panic!("{error}"))
}

/// A config fixture with some keys replaced.
fn config_with(file: &str, changes: Value) -> Result<Config> {
    let (text, path) = data(file);
    let mut value: Value = serde_json::from_str(&text).unwrap();
    for (key, new) in changes.as_object().unwrap() {
        value.as_object_mut().unwrap().insert(key.clone(), new.clone());
    }
    Config::parse(&value.to_string(), path)
}

/// The real MiniLM checkpoint's tensors (name, dtype, shape), in file order.
fn minilm_tensors() -> Vec<(String, String, Vec<usize>)> {
    let (text, _) = data("minilm_safetensors.json");
    let value: Value = serde_json::from_str(&text).unwrap();
    value["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|tensor| {
            let shape = tensor["shape"].as_array().unwrap().iter().map(|dim| dim.as_u64().unwrap() as usize).collect();
            (tensor["name"].as_str().unwrap().to_string(), tensor["dtype"].as_str().unwrap().to_string(), shape)
        })
        .collect()
}

fn listed(architecture: &Architecture) -> Vec<(String, Vec<usize>)> {
    architecture.tensors().into_iter().map(|tensor| (tensor.name, tensor.shape)).collect()
}

fn mismatch(result: Result<()>) -> Mismatch {
    match result {
        Err(Error::Mismatch { mismatch, .. }) => *mismatch,
        other => panic!("expected a mismatch, got {other:?}"),
    }
}

#[test]
fn parameter_counts_are_the_published_ones() {
    // BertModel with its pooler; GPT2Model (wte + wpe + blocks + ln_f, the LM head tied);
    // LlamaForCausalLM with its own lm_head; Qwen2ForCausalLM with the head tied.
    let cases = [
        ("bert-base-uncased.json", 109_482_240u64),
        ("gpt2.json", 124_439_808),
        ("llama-2-7b-hf.json", 6_738_415_616),
        ("qwen2-0.5b.json", 494_032_768),
        ("all-minilm-l6-v2.json", 22_713_216),
    ];
    for (file, published) in cases {
        assert_eq!(config(file).parameter_count(), published, "{file}");
    }
}

#[test]
fn published_configs_read_as_their_families() {
    let gpt2 = config("gpt2.json").architecture();
    assert_eq!((gpt2.config().family(), gpt2.config().intermediate_size()), (Family::Gpt2, 3072));
    let fused = &gpt2.layers()[0].linears[0];
    assert_eq!(
        (fused.role, fused.weight.as_str(), fused.layout),
        (Role::QueryKeyValue, "h.0.attn.c_attn.weight", Layout::InOut)
    );
    assert_eq!((fused.weight_shape(), fused.is_transposed()), (vec![768, 2304], true));
    assert_eq!(gpt2.tied_lm_head(), Some("lm_head.weight"));

    let qwen = config("qwen2-0.5b.json");
    assert_eq!((qwen.num_heads(), qwen.num_kv_heads(), qwen.head_dim(), qwen.dtype()), (14, 2, 64, Dtype::Bf16));
    let architecture = qwen.architecture();
    let key = &architecture.layers()[23].linears[1];
    assert_eq!(key.weight, "model.layers.23.self_attn.k_proj.weight");
    assert_eq!(
        (key.weight_shape(), key.bias.as_deref()),
        (vec![128, 896], Some("model.layers.23.self_attn.k_proj.bias"))
    );
    assert_eq!(architecture.layers()[0].linears[3].bias, None, "o_proj has no bias");
    assert_eq!(architecture.tied_lm_head(), Some("lm_head.weight"));

    let llama = config("llama-2-7b-hf.json");
    assert_eq!((llama.dtype(), llama.norm_eps(), llama.tie_word_embeddings()), (Dtype::F16, 1e-5, false));
    let roles: Vec<Role> = llama.architecture().layers()[0].linears.iter().map(|linear| linear.role).collect();
    assert_eq!(
        roles,
        [Role::Query, Role::Key, Role::Value, Role::AttentionOutput, Role::FfnGate, Role::FfnUp, Role::FfnOut]
    );
    assert!(llama.architecture().others().iter().any(|tensor| tensor.kind == TensorKind::LmHead));
}

#[test]
fn dtype_and_torch_dtype_are_both_accepted() {
    // transformers >= 4.56 writes `dtype`; earlier versions `torch_dtype`.
    let old = config("qwen2-0.5b.json");
    let mut value = old.json().clone();
    let dtype = value.shift_remove("torch_dtype").unwrap();
    value.insert("dtype".into(), dtype);
    let new = Config::parse(&Value::Object(value).to_string(), "qwen2/config.json").unwrap();
    assert_eq!((old.dtype(), new.dtype()), (Dtype::Bf16, Dtype::Bf16));
    assert_eq!(config_with("gpt2.json", serde_json::json!({"dtype": "float16"})).unwrap().dtype(), Dtype::F16);
    assert_eq!(config("gpt2.json").dtype(), Dtype::F32);
}

#[test]
fn unknown_model_types_and_bad_keys_are_named() {
    let error = config_with("gpt2.json", serde_json::json!({"model_type": "gpt_neox"})).unwrap_err().to_string();
    assert!(error.contains("tests/data/gpt2.json: model_type `gpt_neox` is not supported"), "{error}");
    let error = config_with("llama-2-7b-hf.json", serde_json::json!({"hidden_size": "4096"})).unwrap_err().to_string();
    assert!(
        error.ends_with("llama-2-7b-hf.json: key `hidden_size` is \"4096\": expected an integer from 1 to 2^31"),
        "{error}"
    );
}

#[test]
fn minilm_description_is_the_real_tensor_list() {
    let config = config("all-minilm-l6-v2.json");
    let tensors = minilm_tensors();
    assert_eq!(tensors.len(), 104);
    let names: Vec<&str> = tensors.iter().map(|(name, _, _)| name.as_str()).collect();
    let architecture = Architecture::detect(&config, &names).unwrap();
    assert_eq!((architecture.prefix(), architecture.has_pooler()), ("", true));
    assert_eq!(architecture, config.architecture());

    let described: BTreeMap<String, Vec<usize>> = listed(&architecture).into_iter().collect();
    let real: BTreeMap<String, Vec<usize>> = tensors
        .iter()
        .filter(|(name, _, _)| !architecture.is_buffer(name))
        .map(|(name, _, shape)| (name.clone(), shape.clone()))
        .collect();
    assert_eq!(described, real);
    let buffers: Vec<(&str, &str)> = tensors
        .iter()
        .filter(|(name, _, _)| architecture.is_buffer(name))
        .map(|(name, dtype, _)| (name.as_str(), dtype.as_str()))
        .collect();
    assert_eq!(buffers, [("embeddings.position_ids", "I64")]);
    architecture.validate(tensors.iter().map(|(name, _, shape)| (name, shape))).unwrap();

    // Every parameter is an F32 tensor of the file, so f32 storage is the file's data less the buffer.
    let f32_bytes: u64 = tensors
        .iter()
        .filter(|(_, dtype, _)| dtype == "F32")
        .map(|(_, _, shape)| shape.iter().product::<usize>() as u64 * 4)
        .sum();
    assert_eq!(architecture.parameter_count() * 4, f32_bytes);
    assert_eq!(architecture.memory(&WeightFormat::Dense(Dtype::F32)).unwrap().total(), f32_bytes);

    // The same tensors under BertModel's prefix, as in task checkpoints.
    let prefixed: Vec<String> = names.iter().map(|name| format!("bert.{name}")).collect();
    let architecture = Architecture::detect(&config, &prefixed).unwrap();
    assert_eq!(architecture.prefix(), "bert.");
    architecture.validate(prefixed.iter().zip(&tensors).map(|(name, (_, _, shape))| (name, shape))).unwrap();
}

#[test]
fn prefix_detection_reports_what_it_cannot_decide() {
    let config = config("all-minilm-l6-v2.json");
    let error = Architecture::detect(&config, ["wte.weight"]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "no tensor name ends with `embeddings.word_embeddings.weight`: cannot find the prefix of the bert weights"
    );
    let names = [
        "embeddings.word_embeddings.weight",
        "bert.embeddings.word_embeddings.weight",
        "xembeddings.word_embeddings.weight",
    ];
    assert!(matches!(
        Architecture::detect(&config, names),
        Err(Error::AmbiguousPrefix { prefixes, .. }) if prefixes == ["", "bert."]
    ));
    // Without a pooler in the checkpoint, none is described.
    let names: Vec<String> =
        minilm_tensors().into_iter().map(|(name, _, _)| name).filter(|name| !name.starts_with("pooler.")).collect();
    let architecture = Architecture::detect(&config, &names).unwrap();
    assert!(!architecture.has_pooler());
    assert_eq!(architecture.parameter_count(), 22_713_216 - 384 * 385);
}

#[test]
fn validation_names_every_missing_extra_and_misshaped_tensor() {
    let architecture = config("all-minilm-l6-v2.json").architecture();
    let mut tensors: Vec<(String, Vec<usize>)> =
        minilm_tensors().into_iter().map(|(name, _, shape)| (name, shape)).collect();
    tensors.retain(|(name, _)| name != "encoder.layer.3.output.dense.bias" && name != "pooler.dense.weight");
    tensors.push(("encoder.layer.6.output.dense.bias".into(), vec![384]));
    tensors.push(("cls.predictions.bias".into(), vec![30522]));
    for (name, shape) in &mut tensors {
        if name == "encoder.layer.0.attention.self.query.weight" {
            *shape = vec![384, 383];
        }
    }
    tensors.push(("embeddings.LayerNorm.bias".into(), vec![384]));
    let found = mismatch(architecture.validate(tensors.iter().map(|(name, shape)| (name, shape))));
    assert_eq!(found.missing, ["pooler.dense.weight", "encoder.layer.3.output.dense.bias"]);
    assert_eq!(found.extra, ["encoder.layer.6.output.dense.bias", "cls.predictions.bias"]);
    assert_eq!(
        found.misshaped,
        [Misshaped {
            name: "encoder.layer.0.attention.self.query.weight".into(),
            expected: vec![384, 384],
            found: vec![384, 383]
        }]
    );
    assert_eq!(found.duplicate, ["embeddings.LayerNorm.bias"]);
    let message = architecture.validate(tensors.iter().map(|(name, shape)| (name, shape))).unwrap_err().to_string();
    assert!(
        message.contains(
            "all-minilm-l6-v2.json: 2 missing: `pooler.dense.weight`, `encoder.layer.3.output.dense.bias`; 2 extra"
        ),
        "{message}"
    );

    // Everything of a layer missing: all 16 named, the message lists 10.
    let tensors: Vec<(String, Vec<usize>)> =
        listed(&architecture).into_iter().filter(|(name, _)| !name.starts_with("encoder.layer.5.")).collect();
    let found = mismatch(architecture.validate(tensors.iter().map(|(name, shape)| (name, shape))));
    assert_eq!(found.missing.len(), 16);
    let message = architecture.validate(tensors.iter().map(|(name, shape)| (name, shape))).unwrap_err().to_string();
    assert!(message.contains("16 missing: ") && message.ends_with(" and 6 more"), "{message}");
}

#[test]
fn tied_heads_may_be_absent_or_a_copy_and_untied_ones_are_required() {
    let gpt2 = config("gpt2.json").architecture();
    let mut tensors = listed(&gpt2);
    gpt2.validate(tensors.iter().map(|(name, shape)| (name, shape))).unwrap();
    tensors.push(("lm_head.weight".into(), vec![50257, 768]));
    tensors.push(("h.11.attn.bias".into(), vec![1, 1, 1024, 1024]));
    tensors.push(("h.0.attn.masked_bias".into(), vec![]));
    gpt2.validate(tensors.iter().map(|(name, shape)| (name, shape))).unwrap();
    tensors.push(("h.12.attn.bias".into(), vec![1]));
    *tensors.iter_mut().find(|(name, _)| name == "lm_head.weight").unwrap() =
        ("lm_head.weight".into(), vec![768, 50257]);
    let found = mismatch(gpt2.validate(tensors.iter().map(|(name, shape)| (name, shape))));
    assert_eq!(found.extra, ["h.12.attn.bias"]);
    assert_eq!(found.misshaped[0].name, "lm_head.weight");

    // GPT2LMHeadModel's names: `transformer.` body, top-level head.
    let names: Vec<String> = listed(&gpt2).into_iter().map(|(name, _)| format!("transformer.{name}")).collect();
    let detected = Architecture::detect(gpt2.config(), &names).unwrap();
    assert_eq!((detected.prefix(), detected.tied_lm_head()), ("transformer.", Some("lm_head.weight")));

    let llama = config("llama-2-7b-hf.json").architecture();
    let tensors: Vec<(String, Vec<usize>)> =
        listed(&llama).into_iter().filter(|(name, _)| name != "lm_head.weight").collect();
    let found = mismatch(llama.validate(tensors.iter().map(|(name, shape)| (name, shape))));
    assert_eq!(found.missing, ["lm_head.weight"]);
    // A bare LlamaModel (no prefix) has no head.
    let bare: Vec<String> = tensors.iter().map(|(name, _)| name.strip_prefix("model.").unwrap().to_string()).collect();
    let detected = Architecture::detect(llama.config(), &bare).unwrap();
    assert_eq!(detected.parameter_count(), 6_738_415_616 - 32000 * 4096);
}

#[test]
fn memory_per_format_is_exact() {
    let llama = config("llama-2-7b-hf.json").architecture();
    let linear = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008u64);
    let other = 6_738_415_616 - linear;
    let memory = |format: &str| llama.memory(&format.parse::<WeightFormat>().unwrap()).unwrap();
    assert_eq!(memory("f16"), Memory { linear_weights: 2 * linear, other: 2 * other });
    assert_eq!(memory("f16").total(), 2 * 6_738_415_616);
    assert_eq!(memory("f32").linear_weights, 4 * linear);
    for (format, block) in [("q8_0", 34), ("q4_0", 18), ("q4_1", 20), ("q5_0", 22), ("q5_1", 24)] {
        assert_eq!(memory(format), Memory { linear_weights: linear / 32 * block, other: 2 * other }, "{format}");
    }
    // int4-g128-asym per [out, in] matrix: packed, scales, shape, zero points packed along out.
    let int4 = |out: u64, inp: u64| out * inp / 2 + out * (inp / 128) * 4 + 16 + out / 8 * (inp / 128) * 4;
    let expected = 32 * (4 * int4(4096, 4096) + 2 * int4(11008, 4096) + int4(4096, 11008));
    assert_eq!(memory("int4-g128-asym").linear_weights, expected);
    let int8 = |out: u64, inp: u64| out * inp + out * 4 + 16;
    let expected = 32 * (4 * int8(4096, 4096) + 2 * int8(11008, 4096) + int8(4096, 11008));
    assert_eq!(memory("int8-channel").linear_weights, expected);
    // 2:4 and CSR count from the same matrices.
    assert_eq!(memory("2:4").linear_weights, linear * 2 + linear / 8);
    let csr = |out: u64, inp: u64| out * inp / 2 * 6 + (out + 1) * 4;
    let expected = 32 * (4 * csr(4096, 4096) + 2 * csr(11008, 4096) + csr(4096, 11008));
    assert_eq!(memory("csr-u16-d0.5").linear_weights, expected);

    // Qwen2: tied head counted once, bf16 everything else.
    let qwen = config("qwen2-0.5b.json").architecture();
    let f16 = qwen.memory(&"f16".parse().unwrap()).unwrap();
    assert_eq!(f16.total(), 2 * 494_032_768);
    // A width that is no multiple of the block names the tensor.
    let odd = config_with("qwen2-0.5b.json", serde_json::json!({"intermediate_size": 4870})).unwrap();
    let error = odd.architecture().memory(&"q4_0".parse().unwrap()).unwrap_err().to_string();
    assert_eq!(
        error,
        "tensor `model.layers.0.mlp.down_proj.weight`: format q4_0 cannot store rows of 4870 weights: rows must hold \
         whole blocks of 32"
    );
}

/// The shape a [`TensorEdit`] makes from its source, checking its indices on the way.
fn edited_shape(edit: &TensorEdit, source: &[usize]) -> Vec<usize> {
    let mut shape = source.to_vec();
    for (dim, indices) in [(0, &edit.rows), (1, &edit.cols)] {
        if let Some(indices) = indices {
            assert!(dim < shape.len(), "{}: no dimension {dim}", edit.new_name);
            assert!(indices.windows(2).all(|pair| pair[0] < pair[1]), "{}: unsorted", edit.new_name);
            assert!(indices.iter().all(|&index| index < shape[dim]), "{}: out of range", edit.new_name);
            shape[dim] = indices.len();
        }
    }
    shape
}

/// Checks an edit against the source tensors: every new tensor comes from an existing one with
/// in-range indices and has the described shape, the new description validates against the
/// mapped list, its parameter count is the sum of the mapped sizes, and the new config.json
/// reads back to the same description.
fn check_edit(source: &Architecture, edited: &Edited) {
    let shapes: HashMap<String, Vec<usize>> = listed(source).into_iter().collect();
    let mut mapped = Vec::new();
    for tensor in &edited.tensors {
        let source_shape =
            shapes.get(&tensor.source_name).unwrap_or_else(|| panic!("no source {}", tensor.source_name));
        assert_eq!(edited_shape(tensor, source_shape), tensor.shape, "{}", tensor.new_name);
        mapped.push((tensor.new_name.clone(), tensor.shape.clone()));
    }
    edited.architecture.validate(mapped.iter().map(|(name, shape)| (name, shape))).unwrap();
    let mapped_count: u64 = mapped.iter().map(|(_, shape)| shape.iter().product::<usize>() as u64).sum();
    assert_eq!(edited.architecture.parameter_count(), mapped_count);
    assert_eq!(edited.config.parameter_count(), mapped_count);
    let reread = Config::parse(&edited.config.to_json(), "edited/config.json").unwrap();
    assert_eq!(reread.layers(), edited.config.layers());
    let redescribed = Architecture::detect(&reread, mapped.iter().map(|(name, _)| name)).unwrap();
    assert_eq!(listed(&redescribed), listed(&edited.architecture));
}

#[test]
fn minilm_structural_edit_maps_onto_its_own_description() {
    let source = config("all-minilm-l6-v2.json").architecture();
    let heads = vec![0, 1, 3, 4, 6, 7, 9, 10];
    let neurons: Vec<usize> = (0..1536).filter(|neuron| neuron % 3 != 2).collect();
    assert_eq!(neurons.len(), 1024);
    let edit = Edit::new().keep_layers([0, 2, 4]).keep_heads(2, heads.clone()).keep_neurons(4, neurons.clone());
    let edited = source.edit(&edit).unwrap();
    check_edit(&source, &edited);

    let shapes: Vec<LayerShape> = edited.config.layers().to_vec();
    let shape = |heads, intermediate| LayerShape { heads, kv_heads: heads, intermediate };
    assert_eq!(shapes, [shape(12, 1536), shape(8, 1536), shape(12, 1024)]);
    // 3 full layers' worth less 4 heads' q/k/v/o and 512 neurons' up/down.
    let layer = 4 * (384 * 384 + 384) + 2 * 384 * 1536 + 1536 + 384 + 4 * 384;
    let expected = 22_713_216 - 3 * layer as u64 - 4 * (4 * 32 * 384 + 3 * 32) - 512 * (2 * 384 + 1);
    assert_eq!(edited.config.parameter_count(), expected);

    let json = edited.config.json();
    assert_eq!(json["num_hidden_layers"], 3);
    assert_eq!(json["num_attention_heads"], 12);
    assert_eq!(json["pruned_heads"], serde_json::json!({"1": [2, 5, 8, 11]}));
    assert_eq!(
        json["lathe_layers"],
        serde_json::json!([{"intermediate": 1536}, {"intermediate": 1536}, {"intermediate": 1024}])
    );
    assert_eq!(json["_name_or_path"], "nreimers/MiniLM-L6-H384-uncased", "other keys stay");

    let value =
        edited.tensors.iter().find(|tensor| tensor.new_name == "encoder.layer.1.attention.self.value.weight").unwrap();
    assert_eq!(value.source_name, "encoder.layer.2.attention.self.value.weight");
    let rows: Vec<usize> = heads.iter().flat_map(|head| head * 32..head * 32 + 32).collect();
    assert_eq!(
        (value.rows.as_ref(), value.cols.as_ref(), value.shape.as_slice()),
        (Some(&rows), None, &[256, 384][..])
    );
    let down = edited.tensors.iter().find(|tensor| tensor.new_name == "encoder.layer.2.output.dense.weight").unwrap();
    assert_eq!(
        (down.rows.as_ref(), down.cols.as_ref(), down.shape.as_slice()),
        (None, Some(&neurons), &[384, 1024][..])
    );

    // Editing the edited model again: heads are positions among the remaining ones, and
    // pruned_heads stays in the original numbering.
    let again = edited.architecture.edit(&Edit::new().keep_heads(1, [0, 7])).unwrap();
    check_edit(&edited.architecture, &again);
    assert_eq!(again.config.pruned_heads(1), Some(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 11][..]));
}

/// A sorted subset of `0..len` with at least one element.
fn subset(len: usize) -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(any::<bool>(), len).prop_filter_map("keeps nothing", |keep| {
        let kept: Vec<usize> = keep.iter().enumerate().filter(|(_, keep)| **keep).map(|(index, _)| index).collect();
        (!kept.is_empty()).then_some(kept)
    })
}

/// For one source layer: maybe the heads to keep, maybe the neurons.
type LayerEdit = (Option<Vec<usize>>, Option<Vec<usize>>);

/// Per source layer: maybe a head subset and maybe a neuron subset.
fn layer_edits(n_layers: usize, heads: usize, neurons: usize) -> impl Strategy<Value = Vec<LayerEdit>> {
    proptest::collection::vec((proptest::option::of(subset(heads)), proptest::option::of(subset(neurons))), n_layers)
}

fn build_edit(layers: &[usize], per_layer: &[LayerEdit]) -> Edit {
    let mut edit = Edit::new().keep_layers(layers.to_vec());
    for &layer in layers {
        let (heads, neurons) = &per_layer[layer];
        if let Some(heads) = heads {
            edit = edit.keep_heads(layer, heads.clone());
        }
        if let Some(neurons) = neurons {
            edit = edit.keep_neurons(layer, neurons.clone());
        }
    }
    edit
}

fn tiny(json: Value) -> Architecture {
    Config::parse(&json.to_string(), "tiny/config.json").unwrap().architecture()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn minilm_edits_stay_consistent(layers in subset(6), per_layer in layer_edits(6, 12, 1536)) {
        let source = config("all-minilm-l6-v2.json").architecture();
        let edited = source.edit(&build_edit(&layers, &per_layer)).unwrap();
        check_edit(&source, &edited);
        for (new, &old) in edited.config.layers().iter().zip(&layers) {
            let (heads, neurons) = &per_layer[old];
            prop_assert_eq!(new.heads, heads.as_ref().map_or(12, Vec::len));
            prop_assert_eq!(new.intermediate, neurons.as_ref().map_or(1536, Vec::len));
        }
    }

    #[test]
    fn gpt2_and_distilbert_edits_stay_consistent(layers in subset(3), per_layer in layer_edits(3, 4, 16)) {
        let gpt2 = tiny(serde_json::json!({"model_type": "gpt2", "n_embd": 8, "n_layer": 3, "n_head": 4,
                                           "n_positions": 5, "vocab_size": 11, "n_inner": 16}));
        let edit = build_edit(&layers, &per_layer);
        let edited = gpt2.edit(&edit).unwrap();
        check_edit(&gpt2, &edited);
        let distilbert = tiny(serde_json::json!({"model_type": "distilbert", "dim": 8, "n_layers": 3, "n_heads": 4,
                                                 "hidden_dim": 16, "max_position_embeddings": 5, "vocab_size": 11}));
        let edited = distilbert.edit(&edit).unwrap();
        check_edit(&distilbert, &edited);
    }

    #[test]
    fn grouped_query_edits_stay_consistent(
        layers in subset(2),
        groups in proptest::collection::vec((subset(3), subset(4)), 2),
        neurons in proptest::collection::vec(proptest::option::of(subset(12)), 2),
    ) {
        // 12 query heads in 3 kv groups of 4: keep some groups, the same query heads in each.
        let qwen = tiny(serde_json::json!({"model_type": "qwen2", "hidden_size": 24, "num_hidden_layers": 2,
                                           "num_attention_heads": 12, "num_key_value_heads": 3,
                                           "intermediate_size": 12, "vocab_size": 11, "tie_word_embeddings": true}));
        let mut edit = Edit::new().keep_layers(layers.clone());
        for &layer in &layers {
            let (kv_kept, within) = &groups[layer];
            let heads: Vec<usize> = kv_kept.iter().flat_map(|kv| within.iter().map(move |q| kv * 4 + q)).collect();
            edit = edit.keep_heads(layer, heads);
            if let Some(neurons) = &neurons[layer] {
                edit = edit.keep_neurons(layer, neurons.clone());
            }
        }
        let edited = qwen.edit(&edit).unwrap();
        check_edit(&qwen, &edited);
        for (new, &old) in edited.config.layers().iter().zip(&layers) {
            let (kv_kept, within) = &groups[old];
            prop_assert_eq!((new.heads, new.kv_heads), (kv_kept.len() * within.len(), kv_kept.len()));
        }
        prop_assert_eq!(edited.config.head_dim(), 2);
    }
}
