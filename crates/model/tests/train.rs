//! lathe-model's training module: the backward pass against central differences for every
//! parameter tensor of a small random BERT, the tape forward against `BertModel` on the real
//! all-MiniLM-L6-v2 (found as tests/model.rs finds it), student initialisation and saving,
//! AdamW, the schedule, clipping, and a short deterministic training run.

use lathe_config::{Config, Edit};
use lathe_model::train::{AdamW, AdamWConfig, BertParams, Decay, ParamKind, Schedule, Tape, Weights, clip_grad_norm};
use lathe_model::{Batch, BertModel, Error, Pooling, PoolingMode, SentenceEncoder};

#[path = "../../../tests/support/models.rs"]
mod models;
use models::minilm_dir;

/// SplitMix64, for test data.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn signed(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f64 / (1u64 << 23) as f64 - 1.0) as f32
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

fn tiny_config(hidden: usize, heads: usize, intermediate: usize, layers: usize) -> Config {
    let json = serde_json::json!({
        "model_type": "bert", "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
        "intermediate_size": intermediate, "vocab_size": 50, "max_position_embeddings": 16, "type_vocab_size": 2,
        "layer_norm_eps": 1e-12, "hidden_act": "gelu", "initializer_range": 0.02
    });
    Config::parse(&json.to_string(), "tiny/config.json").unwrap()
}

/// A random 2-layer BERT (hidden 32, 4 heads, FFN 64) whose every tensor is perturbed away from
/// transformers' initialisation (unit norms and zero biases would hide mistakes).
fn random_bert(seed: u64) -> BertParams {
    let mut params = BertParams::random(tiny_config(32, 4, 64, 2), seed).unwrap();
    let kinds: Vec<ParamKind> = params.specs().iter().map(|spec| spec.kind).collect();
    let mut rng = Rng(seed ^ 0xABCD);
    for (tensor, kind) in params.weights_mut().tensors_mut().into_iter().zip(kinds) {
        for value in tensor.iter_mut() {
            *value = match kind {
                ParamKind::Norm => *value + 0.3 * rng.signed(),
                ParamKind::Bias => 0.2 * rng.signed(),
                _ => 0.4 * rng.signed(),
            };
        }
    }
    params
}

/// Three sequences of lengths 7, 4 and 5 padded to 7, with both token types.
fn small_batch() -> Batch {
    let batch = Batch::pad(&[vec![1u32, 7, 13, 22, 41, 5, 2], vec![1, 33, 8, 2], vec![1, 49, 12, 30, 2]], 0);
    let types = (0..21).map(|i| u32::from(i % 7 >= 3)).collect();
    batch.with_type_ids(types)
}

/// The scalar loss of the finite-difference check and its seeds: the pooled vectors against a
/// fixed direction, an MSE between the real tokens of hidden state 1 and a target, and a
/// weighted sum of layer 0's attention probabilities.
struct Loss {
    pooling: Pooling,
    direction: Vec<f32>,
    target: Vec<f32>,
    attention_weights: Vec<f32>,
}

impl Loss {
    fn new(tape: &Tape, pooling: Pooling, seed: u64) -> Loss {
        let mut rng = Rng(seed);
        let pooled = tape.n_sequences() * tape.hidden_size();
        Loss {
            pooling,
            direction: (0..pooled).map(|_| rng.signed()).collect(),
            target: (0..tape.hidden(1).len()).map(|_| rng.signed()).collect(),
            attention_weights: (0..tape.attention_probs(0).len()).map(|_| rng.signed()).collect(),
        }
    }

    fn real_rows(tape: &Tape) -> usize {
        tape.mask().iter().filter(|&&real| real).count()
    }

    fn value(&self, tape: &Tape) -> f64 {
        let width = tape.hidden_size();
        let pooled = tape.pool(self.pooling);
        let mut loss: f64 = pooled.iter().zip(&self.direction).map(|(p, r)| f64::from(*p) * f64::from(*r)).sum();
        let n = (Self::real_rows(tape) * width) as f64;
        for (row, &real) in tape.mask().iter().enumerate() {
            if real {
                let h = &tape.hidden(1)[row * width..][..width];
                let t = &self.target[row * width..][..width];
                loss += h.iter().zip(t).map(|(h, t)| (f64::from(*h) - f64::from(*t)).powi(2)).sum::<f64>() / n;
            }
        }
        let probs = tape.attention_probs(0);
        loss + probs.iter().zip(&self.attention_weights).map(|(p, w)| f64::from(*p) * f64::from(*w)).sum::<f64>()
    }

    fn gradients(&self, params: &BertParams, tape: &Tape) -> Weights {
        let width = tape.hidden_size();
        let mut seeds = tape.seeds();
        tape.pool_backward(self.pooling, &self.direction, &mut seeds);
        let n = (Self::real_rows(tape) * width) as f32;
        let d_hidden = seeds.hidden_mut(1);
        for (row, &real) in tape.mask().iter().enumerate() {
            if real {
                let span = row * width..(row + 1) * width;
                let (h, t) = (&tape.hidden(1)[span.clone()], &self.target[span.clone()]);
                for ((d, h), t) in d_hidden[span].iter_mut().zip(h).zip(t) {
                    *d += 2.0 * (h - t) / n;
                }
            }
        }
        seeds.attention_mut(0).copy_from_slice(&self.attention_weights);
        let mut grads = params.zero_grads();
        tape.backward(params, &seeds, &mut grads);
        grads
    }
}

/// Central differences with step 1e-2 on f32 weights, the loss summed in f64. A coordinate
/// passes when `|numeric - analytic| <= 2e-4 + 1e-2 max(|numeric|, |analytic|)`; the f32
/// forward's rounding noise (about 1e-6 on a loss of order 1, so 1e-4 after dividing by 2h)
/// and the O(h^2) truncation stay well inside that, while a wrong term moves a gradient by its
/// own size.
fn check_gradients(params: &BertParams, batch: &Batch, pooling: Pooling, per_tensor: usize) -> Vec<(String, f64)> {
    let tape = params.forward(batch).unwrap();
    let loss = Loss::new(&tape, pooling, 99);
    let analytic = loss.gradients(params, &tape);
    let used_ids: Vec<usize> = batch.ids().iter().map(|&id| id as usize).collect();
    let width = params.hidden_size();
    let mut rng = Rng(5);
    let mut report = Vec::new();
    for (index, spec) in params.specs().iter().enumerate() {
        let numel = spec.numel();
        let coordinates: Vec<usize> = if numel <= per_tensor {
            (0..numel).collect()
        } else if spec.name.ends_with("word_embeddings.weight") {
            // Mostly rows the batch uses (the others have zero gradient), plus a few others.
            (0..per_tensor)
                .map(|i| {
                    let row = if i % 4 == 3 { rng.below(numel / width) } else { used_ids[rng.below(used_ids.len())] };
                    row * width + rng.below(width)
                })
                .collect()
        } else {
            (0..per_tensor).map(|_| rng.below(numel)).collect()
        };
        let mut worst = 0.0f64;
        let mut perturbed = params.clone();
        for &coordinate in &coordinates {
            let original = params.weights().tensors()[index][coordinate];
            let h = 1e-2f32;
            let mut at = |value: f32| {
                perturbed.weights_mut().tensors_mut()[index][coordinate] = value;
                loss.value(&perturbed.forward(batch).unwrap())
            };
            let (plus, minus) = (original + h, original - h);
            let numeric = (at(plus) - at(minus)) / (f64::from(plus) - f64::from(minus));
            at(original);
            let exact = f64::from(analytic.tensors()[index][coordinate]);
            let error = (numeric - exact).abs();
            let allowed = 2e-4 + 1e-2 * numeric.abs().max(exact.abs());
            assert!(error <= allowed, "{} [{coordinate}]: central difference {numeric}, backward {exact}", spec.name);
            worst = worst.max(error / allowed);
        }
        assert!(
            analytic.tensors()[index].iter().any(|&g| g != 0.0),
            "{}: the backward gives no gradient at all",
            spec.name
        );
        report.push((spec.name.clone(), worst));
    }
    report
}

#[test]
fn backward_matches_central_differences_for_every_tensor() {
    let params = random_bert(11);
    assert_eq!(params.specs().len(), 5 + 2 * 16);
    let report = check_gradients(&params, &small_batch(), Pooling::default(), 48);
    let worst = report.iter().map(|(_, w)| *w).fold(0.0, f64::max);
    println!("worst error / allowed over {} tensors: {worst:.3}", report.len());
    for (name, ratio) in &report {
        println!("{name}: {ratio:.3}");
    }
}

#[test]
fn backward_matches_central_differences_with_cls_pooling() {
    let params = random_bert(12);
    let pooling = Pooling { mode: PoolingMode::Cls, normalize: false };
    check_gradients(&params, &small_batch(), pooling, 6);
}

#[test]
fn padding_neither_changes_real_states_nor_receives_gradient_from_them() {
    let params = random_bert(13);
    let padded = small_batch();
    // The second sequence alone, unpadded, gives the same states for its real tokens.
    let alone = Batch::pad(&[vec![1u32, 33, 8, 2]], 0).with_type_ids(vec![0, 0, 0, 1]);
    let (tape, tape_alone) = (params.forward(&padded).unwrap(), params.forward(&alone).unwrap());
    let width = params.hidden_size();
    for layer in 0..=params.num_layers() {
        let rows = &tape.hidden(layer)[7 * width..][..4 * width];
        let difference = rows.iter().zip(tape_alone.hidden(layer)).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(difference < 1e-5, "layer {layer}: {difference}");
    }
    // Every gradient is finite although padded keys are masked.
    let loss = Loss::new(&tape, Pooling::default(), 3);
    let grads = loss.gradients(&params, &tape);
    assert!(grads.tensors().iter().all(|t| t.iter().all(|g| g.is_finite())));
    // Padded keys get exactly zero probability.
    let probs = tape.attention_probs(1);
    let seq_len = tape.seq_len();
    for (block, row) in probs.chunks_exact(seq_len).enumerate() {
        let sequence = block / (params.heads(1) * seq_len);
        for (key, &p) in row.iter().enumerate() {
            if !tape.mask()[sequence * seq_len + key] {
                assert_eq!(p, 0.0);
            }
        }
    }
}

fn minilm_sentences(encoder: &SentenceEncoder) -> Batch {
    let sentences = ["The cat sat on the mat.", "A quick brown fox jumps over the lazy dog near the river bank."];
    let tokens: Vec<_> = sentences.iter().map(|s| encoder.tokenize(s).unwrap()).collect();
    encoder.batch(&tokens)
}

#[test]
fn tape_forward_equals_bert_model_on_minilm() {
    let dir = minilm_dir();
    let encoder = SentenceEncoder::open(&dir).unwrap();
    let model = BertModel::open(&dir).unwrap();
    let params = BertParams::open(&dir).unwrap();
    assert_eq!(params.num_layers(), 6);
    let batch = minilm_sentences(&encoder);
    assert!(batch.mask().contains(&false), "the batch should hold padding");
    let tape = params.forward(&batch).unwrap();
    let mut hidden = model.embed(&batch).unwrap();
    let mut worst = 0.0f32;
    for layer in 0..=6 {
        if layer > 0 {
            model.layer(layer - 1, &mut hidden);
        }
        // Compare real tokens (padded rows mean nothing, though both compute them alike).
        let width = hidden.hidden_size();
        for (row, &real) in batch.mask().iter().enumerate() {
            if real {
                let a = &hidden.states()[row * width..][..width];
                let b = &tape.hidden(layer)[row * width..][..width];
                let difference = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
                worst = worst.max(difference);
            }
        }
    }
    println!("tape vs BertModel, worst hidden-state difference: {worst:e}");
    assert!(worst < 1e-5, "{worst}");
    let pooled = tape.pool(Pooling::default());
    let reference = Pooling::default().pool(&hidden);
    let difference = pooled.iter().zip(&reference).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    assert!(difference < 1e-6, "{difference}");
}

#[test]
fn student_from_edit_is_saved_and_reopened_by_bert_model() {
    let dir = minilm_dir();
    let encoder = SentenceEncoder::open(&dir).unwrap();
    let batch = minilm_sentences(&encoder);
    let teacher = BertParams::open(&dir).unwrap();
    let student = BertParams::from_edit(&dir, &Edit::new().keep_layers([0, 2, 4])).unwrap();
    assert_eq!(student.num_layers(), 3);
    assert_eq!(student.config().num_layers(), 3);
    assert!(student.specs().iter().any(|spec| spec.name == "encoder.layer.2.output.dense.weight"));
    assert!(!student.specs().iter().any(|spec| spec.name.starts_with("encoder.layer.3.")));
    // Student layer 1 is teacher layer 2.
    let find = |params: &BertParams, name: &str| {
        let index = params.specs().iter().position(|spec| spec.name == name).unwrap();
        params.weights().tensors()[index].to_vec()
    };
    assert_eq!(
        find(&student, "encoder.layer.1.attention.self.query.weight"),
        find(&teacher, "encoder.layer.2.attention.self.query.weight")
    );
    // Embeddings and layer 0 are shared, so the first two states agree exactly.
    let (student_tape, teacher_tape) = (student.forward(&batch).unwrap(), teacher.forward(&batch).unwrap());
    assert_eq!(student_tape.hidden(1), teacher_tape.hidden(1));

    let out = tempfile::tempdir().unwrap();
    student.save(out.path()).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The reference reader sees every tensor of a 3-layer BertModel checkpoint, pooler included.
    let bytes = std::fs::read(out.path().join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(file.len(), 5 + 3 * 16 + 2);
    assert!(file.tensor("pooler.dense.weight").is_ok());
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(config["num_hidden_layers"], 3);

    let reopened = BertModel::open(out.path()).unwrap();
    let hidden = reopened.forward(&batch).unwrap();
    let difference =
        hidden.states().iter().zip(student_tape.last_hidden()).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(difference < 1e-5, "{difference}");
    let round_trip = BertParams::open(out.path()).unwrap();
    assert_eq!(round_trip.weights(), student.weights());
}

/// A one-layer BERT of width 2, small enough to compute AdamW by hand.
fn micro_bert() -> BertParams {
    let json = serde_json::json!({
        "model_type": "bert", "hidden_size": 2, "num_hidden_layers": 1, "num_attention_heads": 1,
        "intermediate_size": 2, "vocab_size": 3, "max_position_embeddings": 2, "type_vocab_size": 1
    });
    BertParams::random(Config::parse(&json.to_string(), "micro/config.json").unwrap(), 1).unwrap()
}

#[test]
fn adamw_steps_match_hand_computation() {
    let mut params = micro_bert();
    let mut rng = Rng(21);
    params.weights_mut().tensors_mut().into_iter().flatten().for_each(|v| *v = rng.signed());
    let start = params.weights().clone();
    let decays: Vec<bool> = params.specs().iter().map(|spec| spec.decays()).collect();
    assert_eq!(decays.iter().filter(|&&d| d).count(), 3 + 6, "three embeddings and six weight matrices decay");
    let mut g1 = params.zero_grads();
    let mut g2 = params.zero_grads();
    g1.tensors_mut().into_iter().flatten().for_each(|v| *v = rng.signed());
    g2.tensors_mut().into_iter().flatten().for_each(|v| *v = rng.signed());
    let config = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 };
    let mut optimizer = AdamW::new(&params, config);
    let (lr1, lr2) = (0.01f64, 0.02f64);
    optimizer.step(&mut params, &g1, lr1 as f32);
    optimizer.step(&mut params, &g2, lr2 as f32);
    assert_eq!(optimizer.steps(), 2);
    for (tensor, decays) in decays.iter().enumerate() {
        for i in 0..start.tensors()[tensor].len() {
            let p0 = f64::from(start.tensors()[tensor][i]);
            let (a, b) = (f64::from(g1.tensors()[tensor][i]), f64::from(g2.tensors()[tensor][i]));
            let wd = if *decays { 0.1 } else { 0.0 };
            // Step 1: bias-corrected moments are g and g^2, so the update is lr g / (|g| + eps).
            let p1 = p0 * (1.0 - lr1 * wd) - lr1 * a / (a.abs() + 1e-8);
            // Step 2: m = 0.09 a + 0.1 b over 1 - 0.81; v = 0.000999 a^2 + 0.001 b^2 over 1 - 0.998001.
            let m = (0.9 * 0.1 * a + 0.1 * b) / (1.0 - 0.81);
            let v = (0.999 * 0.001 * a * a + 0.001 * b * b) / (1.0 - 0.998001);
            let p2 = p1 * (1.0 - lr2 * wd) - lr2 * m / (v.sqrt() + 1e-8);
            let got = f64::from(params.weights().tensors()[tensor][i]);
            assert!((got - p2).abs() < 2e-6, "tensor {tensor} [{i}]: {got} vs {p2}");
        }
    }
}

#[test]
fn schedules_warm_up_then_decay() {
    let linear = Schedule { peak_lr: 2e-4, warmup_steps: 10, total_steps: 100, decay: Decay::Linear };
    let factors: Vec<f64> = [0, 1, 5, 10, 55, 99, 100, 150].iter().map(|&s| linear.factor(s)).collect();
    assert_eq!(factors, [0.0, 0.1, 0.5, 1.0, 0.5, 1.0 / 90.0, 0.0, 0.0]);
    assert_eq!(linear.lr(5), 1e-4);
    let cosine = Schedule { decay: Decay::Cosine, ..linear };
    assert_eq!(cosine.factor(5), 0.5);
    assert!((cosine.factor(55) - 0.5).abs() < 1e-12);
    assert!((cosine.factor(32) - 0.5 * (1.0 + (std::f64::consts::PI * 22.0 / 90.0).cos())).abs() < 1e-12);
    assert!(cosine.factor(100).abs() < 1e-12);
    let constant = Schedule { decay: Decay::Constant, ..linear };
    assert_eq!(constant.factor(99), 1.0);
    let scaled = Schedule::with_warmup_fraction(1e-3, 0.06, 1000, Decay::Linear);
    assert_eq!((scaled.warmup_steps, scaled.total_steps), (60, 1000));
    assert_eq!(Schedule::with_warmup_fraction(1e-3, 0.1, 15, Decay::Linear).warmup_steps, 2);
    let no_warmup = Schedule { warmup_steps: 0, ..linear };
    assert_eq!(no_warmup.factor(0), 1.0);
}

#[test]
fn clipping_scales_to_the_global_norm() {
    let params = micro_bert();
    let mut grads = params.zero_grads();
    // Two values: 3 and 4, norm 5.
    grads.tensors_mut()[0][0] = 3.0;
    grads.tensors_mut()[5][1] = -4.0;
    let unchanged = grads.clone();
    assert_eq!(clip_grad_norm(&mut grads, 10.0), 5.0);
    assert_eq!(grads, unchanged);
    let norm = clip_grad_norm(&mut grads, 1.0);
    assert_eq!(norm, 5.0);
    assert!((grads.norm() - 1.0).abs() < 1e-6, "{}", grads.norm());
    assert!((grads.tensors()[0][0] - 0.6).abs() < 1e-6 && (grads.tensors()[5][1] + 0.8).abs() < 1e-6);
    grads.tensors_mut()[1][0] = f32::NAN;
    let poisoned = grads.clone();
    assert!(clip_grad_norm(&mut grads, 1.0).is_nan());
    assert_eq!(grads.tensors()[0][0], poisoned.tensors()[0][0]);
}

/// Trains a random tiny BERT for 50 steps to pool to a fixed vector; returns the losses and the
/// final weights.
fn train_to_target(seed: u64) -> (Vec<f64>, Weights) {
    let mut params = BertParams::random(tiny_config(32, 4, 64, 2), seed).unwrap();
    let batch = small_batch();
    let pooling = Pooling { mode: PoolingMode::Mean, normalize: false };
    let mut rng = Rng(seed + 1);
    let target: Vec<f32> = (0..3 * 32).map(|_| rng.signed()).collect();
    let steps = 50;
    let schedule = Schedule::with_warmup_fraction(3e-3, 0.1, steps, Decay::Linear);
    let mut optimizer = AdamW::new(&params, AdamWConfig::default());
    let mut grads = params.zero_grads();
    let mut losses = Vec::new();
    for step in 0..steps {
        let tape = params.forward(&batch).unwrap();
        let pooled = tape.pool(pooling);
        let n = pooled.len() as f64;
        losses.push(pooled.iter().zip(&target).map(|(p, t)| f64::from(p - t).powi(2)).sum::<f64>() / n);
        let d_pooled: Vec<f32> = pooled.iter().zip(&target).map(|(p, t)| (2.0 * f64::from(p - t) / n) as f32).collect();
        let mut seeds = tape.seeds();
        tape.pool_backward(pooling, &d_pooled, &mut seeds);
        grads.fill(0.0);
        tape.backward(&params, &seeds, &mut grads);
        let norm = clip_grad_norm(&mut grads, 1.0);
        assert!(norm.is_finite());
        optimizer.step(&mut params, &grads, schedule.lr(step));
    }
    let tape = params.forward(&batch).unwrap();
    let pooled = tape.pool(pooling);
    losses.push(pooled.iter().zip(&target).map(|(p, t)| f64::from(p - t).powi(2)).sum::<f64>() / pooled.len() as f64);
    (losses, params.weights().clone())
}

#[test]
fn a_tiny_bert_learns_a_target_and_training_is_deterministic() {
    let (losses, weights) = train_to_target(3);
    let (first, last) = (losses[0], *losses.last().unwrap());
    println!("loss {first:.4} -> {last:.6} ({:.0}x)", first / last);
    assert!(last < first / 20.0, "{losses:?}");
    let (again, weights_again) = train_to_target(3);
    assert_eq!(losses, again);
    assert_eq!(weights, weights_again);
    let (other, _) = train_to_target(4);
    assert_ne!(losses, other);
}

#[test]
fn bad_inputs_are_errors() {
    let params = random_bert(1);
    let too_long = Batch::pad(&[vec![1u32; 17]], 0);
    assert!(matches!(params.forward(&too_long), Err(Error::TooLong { seq_len: 17, max: 16 })));
    let bad_id = Batch::pad(&[vec![1u32, 50]], 0);
    assert!(matches!(params.forward(&bad_id), Err(Error::TokenId { sequence: 0, position: 1, id: 50, .. })));
    let bad_type = Batch::pad(&[vec![1u32, 2]], 0).with_type_ids(vec![0, 2]);
    assert!(matches!(params.forward(&bad_type), Err(Error::TokenType { id: 2, .. })));
    let relu = serde_json::json!({
        "model_type": "bert", "hidden_size": 4, "num_hidden_layers": 1, "num_attention_heads": 1,
        "intermediate_size": 4, "vocab_size": 5, "max_position_embeddings": 4, "hidden_act": "relu"
    });
    let error = BertParams::random(Config::parse(&relu.to_string(), "relu/config.json").unwrap(), 0).unwrap_err();
    assert!(error.to_string().contains("exact \"gelu\" only"), "{error}");
    let gpt2 = serde_json::json!({"model_type": "gpt2", "n_embd": 4, "n_layer": 1, "n_head": 1, "vocab_size": 5,
        "n_positions": 4});
    assert!(matches!(
        BertParams::random(Config::parse(&gpt2.to_string(), "gpt2/config.json").unwrap(), 0),
        Err(Error::Unsupported { .. })
    ));
}
