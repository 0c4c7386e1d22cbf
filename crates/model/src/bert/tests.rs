//! Tiny random encoders of each family written to a temporary folder, run against a naive f64
//! oracle written from the transformers modelling code.

use std::collections::HashMap;
use std::path::Path;

use lathe_config::Config;
use lathe_tensor::{Dtype, SafeTensorsWriter, TensorSpec};
use serde_json::json;

use super::*;
use crate::ops::erf_f64;

const HIDDEN: usize = 8;
const HEADS: usize = 2;
const INTERMEDIATE: usize = 12;
const VOCAB: usize = 20;

fn config_json(model_type: &str) -> serde_json::Value {
    match model_type {
        "distilbert" => json!({
            "model_type": "distilbert", "dim": HIDDEN, "n_layers": 2, "n_heads": HEADS, "hidden_dim": INTERMEDIATE,
            "vocab_size": VOCAB, "max_position_embeddings": 16, "activation": "gelu"
        }),
        "roberta" => json!({
            "model_type": "roberta", "hidden_size": HIDDEN, "num_hidden_layers": 2, "num_attention_heads": HEADS,
            "intermediate_size": INTERMEDIATE, "vocab_size": VOCAB, "max_position_embeddings": 18,
            "type_vocab_size": 1, "pad_token_id": 1, "layer_norm_eps": 1e-5, "hidden_act": "gelu"
        }),
        _ => json!({
            "model_type": "bert", "hidden_size": HIDDEN, "num_hidden_layers": 2, "num_attention_heads": HEADS,
            "intermediate_size": INTERMEDIATE, "vocab_size": VOCAB, "max_position_embeddings": 16,
            "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu"
        }),
    }
}

fn random(n: usize, seed: &mut u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            (*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// Writes `config.json` and a random `model.safetensors` (every described tensor, less
/// `skip`) to `dir`; returns the tensors as f64.
fn write_model(dir: &Path, config: &serde_json::Value, skip: Option<&str>) -> HashMap<String, Vec<f64>> {
    let text = config.to_string();
    std::fs::write(dir.join("config.json"), &text).unwrap();
    let parsed = Config::parse(&text, dir.join("config.json")).unwrap();
    let tensors: Vec<_> =
        parsed.architecture().tensors().into_iter().filter(|t| Some(t.name.as_str()) != skip).collect();
    let specs = tensors.iter().map(|t| TensorSpec::new(t.name.clone(), Dtype::F32, t.shape.clone())).collect();
    let mut writer = SafeTensorsWriter::create(dir.join("model.safetensors"), specs, &[]).unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut values = HashMap::new();
    for tensor in &tensors {
        let mut data = random(tensor.numel() as usize, &mut seed);
        if tensor.name.ends_with("LayerNorm.weight") || tensor.name.ends_with("layer_norm.weight") {
            data.iter_mut().for_each(|v| *v += 1.0);
        }
        writer.write_tensor(&tensor.name, &data.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
        values.insert(tensor.name.clone(), data.iter().map(|&v| f64::from(v)).collect());
    }
    writer.finish().unwrap();
    values
}

/// The last hidden state of one unpadded sequence, `[len, HIDDEN]`, in f64.
fn oracle(model_type: &str, tensors: &HashMap<String, Vec<f64>>, ids: &[u32], types: &[u32], eps: f64) -> Vec<f64> {
    let t = |name: &str| tensors.get(name).unwrap_or_else(|| panic!("oracle: no {name}")).as_slice();
    let len = ids.len();
    let linear = |x: &[f64], w: &str, b: &str, out: usize| -> Vec<f64> {
        let (w, b) = (t(w), t(b));
        let cols = w.len() / out;
        x.chunks(cols)
            .flat_map(|row| (0..out).map(move |o| b[o] + (0..cols).map(|c| row[c] * w[o * cols + c]).sum::<f64>()))
            .collect()
    };
    let norm = |x: &mut [f64], w: &str, b: &str| {
        let (w, b) = (t(w), t(b));
        for row in x.chunks_mut(HIDDEN) {
            let mean = row.iter().sum::<f64>() / HIDDEN as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / HIDDEN as f64;
            for (i, v) in row.iter_mut().enumerate() {
                *v = (*v - mean) / (var + eps).sqrt() * w[i] + b[i];
            }
        }
    };
    let position_offset = if model_type == "roberta" { 2 } else { 0 };
    let mut x = vec![0.0; len * HIDDEN];
    for p in 0..len {
        for i in 0..HIDDEN {
            let mut value = t("embeddings.word_embeddings.weight")[ids[p] as usize * HIDDEN + i]
                + t("embeddings.position_embeddings.weight")[(p + position_offset) * HIDDEN + i];
            if model_type != "distilbert" {
                value += t("embeddings.token_type_embeddings.weight")[types[p] as usize * HIDDEN + i];
            }
            x[p * HIDDEN + i] = value;
        }
    }
    norm(&mut x, "embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias");
    let head_dim = HIDDEN / HEADS;
    for layer in 0..2 {
        let names: [String; 8] = if model_type == "distilbert" {
            let base = format!("transformer.layer.{layer}");
            [
                format!("{base}.attention.q_lin"),
                format!("{base}.attention.k_lin"),
                format!("{base}.attention.v_lin"),
                format!("{base}.attention.out_lin"),
                format!("{base}.sa_layer_norm"),
                format!("{base}.ffn.lin1"),
                format!("{base}.ffn.lin2"),
                format!("{base}.output_layer_norm"),
            ]
        } else {
            let base = format!("encoder.layer.{layer}");
            [
                format!("{base}.attention.self.query"),
                format!("{base}.attention.self.key"),
                format!("{base}.attention.self.value"),
                format!("{base}.attention.output.dense"),
                format!("{base}.attention.output.LayerNorm"),
                format!("{base}.intermediate.dense"),
                format!("{base}.output.dense"),
                format!("{base}.output.LayerNorm"),
            ]
        };
        let run = |x: &[f64], index: usize, out: usize| {
            linear(x, &format!("{}.weight", names[index]), &format!("{}.bias", names[index]), out)
        };
        let (q, k, v) = (run(&x, 0, HIDDEN), run(&x, 1, HIDDEN), run(&x, 2, HIDDEN));
        let mut context = vec![0.0; len * HIDDEN];
        for h in 0..HEADS {
            for i in 0..len {
                let scores: Vec<f64> = (0..len)
                    .map(|j| {
                        (0..head_dim)
                            .map(|d| q[i * HIDDEN + h * head_dim + d] * k[j * HIDDEN + h * head_dim + d])
                            .sum::<f64>()
                            / (head_dim as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let total: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                for d in 0..head_dim {
                    context[i * HIDDEN + h * head_dim + d] =
                        (0..len).map(|j| (scores[j] - max).exp() / total * v[j * HIDDEN + h * head_dim + d]).sum();
                }
            }
        }
        let attended = run(&context, 3, HIDDEN);
        x.iter_mut().zip(&attended).for_each(|(a, b)| *a += b);
        norm(&mut x, &format!("{}.weight", names[4]), &format!("{}.bias", names[4]));
        let mut neurons = run(&x, 5, INTERMEDIATE);
        neurons.iter_mut().for_each(|n| *n = 0.5 * *n * (1.0 + erf_f64(*n / std::f64::consts::SQRT_2)));
        let out = run(&neurons, 6, HIDDEN);
        x.iter_mut().zip(&out).for_each(|(a, b)| *a += b);
        norm(&mut x, &format!("{}.weight", names[7]), &format!("{}.bias", names[7]));
    }
    x
}

#[test]
fn every_family_matches_the_f64_oracle_with_padding() {
    for (model_type, eps, pad) in [("bert", 1e-12, 0), ("roberta", 1e-5, 1), ("distilbert", 1e-12, 0)] {
        let dir = tempfile::tempdir().unwrap();
        let tensors = write_model(dir.path(), &config_json(model_type), None);
        let model = BertModel::open(dir.path()).unwrap();
        assert_eq!((model.num_layers(), model.hidden_size(), model.activation()), (2, HIDDEN, Activation::Gelu));
        let sequences: [&[u32]; 3] = [&[3, 7, 19, 4, 5, 11, 2], &[3, 9, 2], &[3, 0, 14, 15, 2]];
        let types: [&[u32]; 3] = match model_type {
            "bert" => [&[0, 0, 0, 1, 1, 1, 1], &[0, 1, 1], &[0, 0, 0, 0, 1]],
            _ => [&[0; 7], &[0; 3], &[0; 5]],
        };
        let batch = Batch::pad(&sequences, pad).with_type_ids(pad_rows(&types, 0, 7));
        assert_eq!((batch.n_sequences(), batch.seq_len(), batch.real_tokens()), (3, 7, 15));
        let hidden = model.forward(&batch).unwrap();
        for (sequence, (ids, types)) in sequences.iter().zip(types).enumerate() {
            let want = oracle(model_type, &tensors, ids, types, eps);
            for position in 0..ids.len() {
                for (i, &got) in hidden.token(sequence, position).iter().enumerate() {
                    let want = want[position * HIDDEN + i];
                    assert!(
                        (f64::from(got) - want).abs() < 2e-5,
                        "{model_type} sequence {sequence} position {position} [{i}]: {got} vs {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn layer_by_layer_equals_forward() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), &config_json("bert"), None);
    let model = BertModel::open(dir.path()).unwrap();
    let batch = Batch::pad(&[vec![3, 4, 5, 2], vec![3, 2]], 0);
    let mut hidden = model.embed(&batch).unwrap();
    let mut seen = Vec::new();
    for layer in 0..model.num_layers() {
        model.layer_capturing(layer, &mut hidden, |input| {
            assert_eq!(input.input.len(), input.n_rows * input.cols);
            assert_eq!(input.real_rows().count(), 6);
            seen.push((input.layer, input.role, input.n_rows, input.cols));
        });
    }
    assert_eq!(hidden, model.forward(&batch).unwrap());
    let expected: Vec<_> = (0..2)
        .flat_map(|layer| {
            LAYER_ROLES
                .iter()
                .map(move |&role| (layer, role, 8, if role == Role::FfnOut { INTERMEDIATE } else { HIDDEN }))
        })
        .collect();
    assert_eq!(seen, expected);
}

#[test]
fn bad_inputs_are_errors_naming_the_position() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), &config_json("bert"), None);
    let model = BertModel::open(dir.path()).unwrap();
    let error = model.forward(&Batch::pad(&[vec![3, 4], vec![3, 20]], 0)).unwrap_err();
    assert_eq!(error.to_string(), "sequence 1, position 1: token id 20 is outside the vocabulary of 20");
    let batch = Batch::pad(&[vec![3, 4]], 0).with_type_ids(vec![0, 2]);
    let error = model.forward(&batch).unwrap_err();
    assert_eq!(error.to_string(), "sequence 0, position 1: token type 2 is outside the 2 token types");
    let error = model.forward(&Batch::pad(&[vec![1; 17]], 0)).unwrap_err();
    assert_eq!(error.to_string(), "sequences of 17 tokens exceed the model's 16 positions");
    // An empty batch is not an error.
    let empty = model.forward(&Batch::pad::<Vec<u32>>(&[], 0)).unwrap();
    assert_eq!((empty.n_sequences(), empty.states().len()), (0, 0));
}

#[test]
fn checkpoints_that_differ_from_the_config_are_rejected_by_name() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), &config_json("bert"), Some("encoder.layer.1.intermediate.dense.bias"));
    let error = BertModel::open(dir.path()).unwrap_err().to_string();
    assert!(error.contains("model.safetensors: checkpoint does not match"), "{error}");
    assert!(error.ends_with("1 missing: `encoder.layer.1.intermediate.dense.bias`"), "{error}");

    let mut bigger = config_json("bert");
    bigger["intermediate_size"] = json!(16);
    let other = tempfile::tempdir().unwrap();
    write_model(other.path(), &config_json("bert"), None);
    std::fs::write(other.path().join("config.json"), bigger.to_string()).unwrap();
    let error = BertModel::open(other.path()).unwrap_err().to_string();
    assert!(error.contains("`encoder.layer.0.intermediate.dense.weight` is [12, 8], expected [16, 8]"), "{error}");

    for (key, value, message) in [
        ("model_type", json!("gpt2"), "model_type `gpt2` is not a BERT-family encoder"),
        ("hidden_act", json!("swish"), "key `hidden_act` is \"swish\": expected \"gelu\""),
        ("position_embedding_type", json!("relative_key"), "only \"absolute\" is supported"),
    ] {
        let mut config = config_json("bert");
        config[key] = value;
        if key == "model_type" {
            config["n_embd"] = json!(HIDDEN);
            config["n_layer"] = json!(2);
            config["n_head"] = json!(HEADS);
            config["n_positions"] = json!(16);
        }
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        let error = BertModel::open(dir.path()).unwrap_err().to_string();
        assert!(error.contains("config.json: ") && error.contains(message), "{error}");
    }
}

#[test]
fn linears_are_swapped_per_layer_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), &config_json("bert"), None);
    let mut model = BertModel::open(dir.path()).unwrap();
    assert!(model.linears().all(|(_, _, linear)| linear.kind() == crate::LinearKind::DenseF32));
    assert_eq!(model.linears().count(), 12);
    let wrong = Linear::dense(vec![0.0; 8 * 12], 8, 12, None).unwrap();
    let error = model.set_linear(1, Role::Query, wrong.clone()).unwrap_err();
    assert_eq!(error.to_string(), "layer 1 query: a linear of 8 outputs x 12 inputs cannot replace one of 8 x 8");
    let error = model.set_linear(2, Role::FfnOut, wrong.clone()).unwrap_err();
    assert_eq!(error.to_string(), "the model has no ffn out linear in layer 2 (it has 2 layers)");
    assert!(model.set_linear(0, Role::FfnGate, wrong.clone()).is_err());
    let old = model.set_linear(1, Role::FfnOut, wrong).unwrap();
    assert_eq!((old.out_features(), old.in_features()), (8, 12));
    assert_eq!(model.linear(1, Role::FfnOut).unwrap().dense_weights(), Some(&[0.0; 96][..]));
}

#[test]
fn head_transposes_move_every_value() {
    // Blocks of the two compile-time head sizes and a runtime one; row counts off multiples of 8.
    for block in [32, 64, 5] {
        let (n_a, n_b) = (3, 4);
        let src: Vec<f32> = (0..n_a * n_b * block).map(|i| i as f32).collect();
        let mut dst = vec![f32::NAN; src.len()];
        super::transpose_blocks(&src, n_a, n_b, block, &mut dst);
        for (a, b, i) in (0..n_a).flat_map(|a| (0..n_b).flat_map(move |b| (0..block).map(move |i| (a, b, i)))) {
            assert_eq!(dst[(b * n_a + a) * block + i], src[(a * n_b + b) * block + i], "block {block}");
        }
    }
    for (rows, cols) in [(0, 3), (7, 5), (8, 3), (19, 12)] {
        let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let mut dst = vec![f32::NAN; src.len()];
        crate::train::transpose_into(&src, rows, cols, &mut dst);
        for (r, c) in (0..rows).flat_map(|r| (0..cols).map(move |c| (r, c))) {
            assert_eq!(dst[c * rows + r], src[r * cols + c], "{rows} x {cols}");
        }
    }
}
