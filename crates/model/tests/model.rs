//! lathe-model on the real all-MiniLM-L6-v2 against the golden transformers outputs in
//! tests/data (see tests/data/README.md): token ids, hidden states, sentence embeddings, the
//! same through F16 and BF16 checkpoints and quantized linears, batching by length, validation
//! and the capture hook.
//!
//! The model folder is `$LATHE_MODELS_DIR/all-MiniLM-L6-v2` (`cargo xtask` sets the variable;
//! without it `$XDG_CACHE_HOME/lathe/models`, else `~/.cache/lathe/models`). A missing model fails
//! the tests: run `cargo xtask fetch-models`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use lathe_config::Role;
use lathe_model::{
    BATCH_COST_SLOTS, Batch, BertModel, Hidden, LAYER_ROLES, LinearKind, Pooling, PoolingMode, SentenceEncoder,
    plan_batches,
};
use lathe_quant::{QuantizedMatrix, Scheme};
use safetensors::{Dtype, SafeTensors};

#[path = "../../../tests/support/models.rs"]
mod models;
use models::minilm_dir;

const N: usize = 48;
const L: usize = 68;
const H: usize = 384;

fn data(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(file)
}

/// The golden tensors (tests/data/minilm_public.safetensors) and token ids.
struct Golden {
    sentences: Vec<String>,
    /// Unpadded ids per sentence, from minilm_public_tokens.json.
    ids: Vec<Vec<u32>>,
    /// `[N, L]`.
    input_ids: Vec<u32>,
    mask: Vec<bool>,
    lengths: Vec<usize>,
    /// `[4, L, H]`.
    hidden_first4: Vec<f32>,
    /// `[N, H]`.
    mean_pooled: Vec<f32>,
    embeddings: Vec<f32>,
    pairs: Vec<(usize, usize)>,
}

fn golden() -> &'static Golden {
    static GOLDEN: OnceLock<Golden> = OnceLock::new();
    GOLDEN.get_or_init(|| {
        let bytes = std::fs::read(data("minilm_public.safetensors")).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let tensor = |name: &str, dtype: Dtype, shape: &[usize]| {
            let view = file.tensor(name).unwrap();
            assert_eq!((view.dtype(), view.shape()), (dtype, shape), "{name}");
            view.data().to_vec()
        };
        let i64s = |name: &str, shape: &[usize]| -> Vec<i64> {
            tensor(name, Dtype::I64, shape).chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect()
        };
        let f32s = |name: &str, shape: &[usize]| -> Vec<f32> {
            tensor(name, Dtype::F32, shape).chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
        };
        let tokens: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(data("minilm_public_tokens.json")).unwrap()).unwrap();
        let tokens = tokens.as_array().unwrap();
        let sentences: Vec<String> =
            std::fs::read_to_string(data("sentences.txt")).unwrap().lines().map(str::to_owned).collect();
        assert_eq!((sentences.len(), tokens.len()), (N, N));
        for (sentence, entry) in sentences.iter().zip(tokens) {
            assert_eq!(entry["text"].as_str(), Some(sentence.as_str()), "sentences.txt and the tokens file disagree");
        }
        let pairs = i64s("paraphrase_pairs", &[12, 2]);
        assert!(i64s("token_type_ids", &[N, L]).iter().all(|&t| t == 0));
        Golden {
            ids: tokens
                .iter()
                .map(|entry| entry["ids"].as_array().unwrap().iter().map(|id| id.as_u64().unwrap() as u32).collect())
                .collect(),
            input_ids: i64s("input_ids", &[N, L]).into_iter().map(|id| id as u32).collect(),
            mask: i64s("attention_mask", &[N, L]).into_iter().map(|m| m == 1).collect(),
            lengths: i64s("lengths", &[N]).into_iter().map(|l| l as usize).collect(),
            hidden_first4: f32s("last_hidden_state_first4", &[4, L, H]),
            mean_pooled: f32s("mean_pooled", &[N, H]),
            embeddings: f32s("sentence_embedding", &[N, H]),
            pairs: pairs.chunks_exact(2).map(|p| (p[0] as usize, p[1] as usize)).collect(),
            sentences,
        }
    })
}

fn encoder() -> &'static SentenceEncoder {
    static ENCODER: OnceLock<SentenceEncoder> = OnceLock::new();
    ENCODER.get_or_init(|| SentenceEncoder::open(minilm_dir()).unwrap_or_else(|error| panic!("{error}")))
}

/// The golden padded batch: all 48 sentences padded to 68, as transformers ran them.
fn padded_batch() -> Batch {
    Batch::new(golden().input_ids.clone(), golden().mask.clone(), L)
}

/// The last hidden state of the padded batch (computed once).
fn padded_hidden() -> &'static Hidden {
    static HIDDEN: OnceLock<Hidden> = OnceLock::new();
    HIDDEN.get_or_init(|| encoder().model().forward(&padded_batch()).unwrap())
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The lowest per-sentence cosine between `embeddings` `[N, H]` and the golden ones.
fn worst_cosine(embeddings: &[f32]) -> f64 {
    embeddings.chunks_exact(H).zip(golden().embeddings.chunks_exact(H)).map(|(a, b)| cosine(a, b)).fold(1.0, f64::min)
}

#[test]
fn token_ids_match_the_golden_ids_for_every_sentence() {
    let golden = golden();
    for (index, sentence) in golden.sentences.iter().enumerate() {
        let tokens = encoder().tokenize(sentence).unwrap();
        assert_eq!(tokens.ids, golden.ids[index], "sentence {index}: {sentence}");
        assert_eq!(tokens.ids.len(), golden.lengths[index]);
        assert_eq!(&golden.input_ids[index * L..][..tokens.ids.len()], tokens.ids.as_slice());
        assert!(tokens.type_ids.iter().all(|&t| t == 0));
    }
}

#[test]
fn sentence_transformers_settings_are_read_from_the_folder() {
    let encoder = encoder();
    assert_eq!(encoder.pooling(), Pooling { mode: PoolingMode::Mean, normalize: true });
    // sentence_bert_config.json says 256 (tokenizer.json truncates at 128).
    assert_eq!((encoder.max_length(), encoder.pad_id()), (256, 0));
    let long = "word ".repeat(400);
    let tokens = encoder.tokenize(&long).unwrap();
    assert_eq!((tokens.ids.len(), tokens.ids[0], tokens.ids[255]), (256, 101, 102));
    let model = encoder.model();
    assert_eq!((model.num_layers(), model.hidden_size(), model.max_seq_len()), (6, H, 512));
}

#[test]
fn padded_batch_hidden_states_match_transformers() {
    let (golden, hidden) = (golden(), padded_hidden());
    assert_eq!((hidden.n_sequences(), hidden.seq_len(), hidden.hidden_size()), (N, L, H));
    let mut worst = 0.0f32;
    for sequence in 0..4 {
        for position in 0..golden.lengths[sequence] {
            let want = &golden.hidden_first4[(sequence * L + position) * H..][..H];
            worst = worst.max(max_abs_diff(hidden.token(sequence, position), want));
        }
    }
    // transformers fp32 vs fp64 differs by 1.7e-6 here; 1e-3 would mean a real bug.
    assert!(worst <= 1e-4, "max abs diff of the hidden states at real positions: {worst}");
}

#[test]
fn sentence_embeddings_match_transformers() {
    let golden = golden();
    let raw = Pooling { mode: PoolingMode::Mean, normalize: false }.pool(padded_hidden());
    let mean_pooled_diff = max_abs_diff(&raw, &golden.mean_pooled);
    assert!(mean_pooled_diff <= 1e-5, "mean pooled: max abs diff {mean_pooled_diff}");
    let embeddings = Pooling::default().pool(padded_hidden());
    let worst = worst_cosine(&embeddings);
    assert!(worst >= 0.99999, "lowest cosine with the golden embeddings: {worst}");
    let diff = max_abs_diff(&embeddings, &golden.embeddings);
    assert!(diff <= 1e-5, "embeddings: max abs diff {diff}");
    // Each paraphrase's partner is its nearest neighbour.
    for &(a, b) in &golden.pairs {
        let nearest = (0..N)
            .filter(|&other| other != a)
            .max_by(|&x, &y| {
                let similarity = |o: usize| cosine(&embeddings[a * H..][..H], &embeddings[o * H..][..H]);
                similarity(x).total_cmp(&similarity(y))
            })
            .unwrap();
        assert_eq!(nearest, b, "sentence {a}: nearest is {nearest}, its paraphrase is {b}");
    }
}

#[test]
fn batching_by_length_matches_the_padded_batch() {
    let golden = golden();
    let padded = Pooling::default().pool(padded_hidden());
    for batch_size in [8, 48] {
        let embeddings = encoder().embed_sentences(&golden.sentences, batch_size).unwrap();
        assert_eq!((embeddings.len(), embeddings.dim()), (N, H));
        let diff = max_abs_diff(embeddings.as_slice(), &padded);
        assert!(diff <= 1e-5, "batch size {batch_size}: max abs diff with the padded batch {diff}");
        let mut lengths = golden.lengths.clone();
        lengths.sort_unstable();
        let plan = plan_batches(&lengths, batch_size);
        let slots: usize = plan.iter().map(|range| range.len() * lengths[range.end - 1]).sum();
        assert_eq!(embeddings.token_slots(), slots);
        let chunked: usize = lengths.chunks(batch_size).map(|chunk| chunk.len() * chunk.last().unwrap()).sum();
        let (planned_cost, chunked_cost) =
            (slots + BATCH_COST_SLOTS * plan.len(), chunked + BATCH_COST_SLOTS * lengths.len().div_ceil(batch_size));
        assert!(planned_cost <= chunked_cost, "{slots} slots in {} batches against {chunked} in chunks", plan.len());
        assert_eq!(embeddings.real_tokens(), golden.lengths.iter().sum::<usize>());
    }
    let by_eight = encoder().embed_sentences(&golden.sentences, 8).unwrap();
    // The padded batch computes 48 x 68 = 3264 slots for 904 real tokens; chunks of 8 sorted
    // by length would compute 1216, the plan fewer.
    assert!(by_eight.token_slots() < 1216, "{} slots", by_eight.token_slots());
    let empty = encoder().embed_sentences::<&str>(&[], 8).unwrap();
    assert!(empty.is_empty() && empty.token_slots() == 0);
}

/// Writes `dir/config.json` and `dir/model.safetensors`: MiniLM with every float tensor stored
/// as `scheme` (f16 or bf16, rounded by lathe-quant) and `skip` left out.
fn write_converted(dir: &Path, scheme: Scheme, dtype: Dtype, skip: Option<&str>) {
    std::fs::copy(minilm_dir().join("config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(minilm_dir().join("model.safetensors")).unwrap();
    let source = SafeTensors::deserialize(&bytes).unwrap();
    let mut converted = Vec::new();
    for (name, view) in source.tensors() {
        if Some(name.as_str()) == skip {
            continue;
        }
        if view.dtype() != Dtype::F32 {
            converted.push((name, view.dtype(), view.shape().to_vec(), view.data().to_vec()));
            continue;
        }
        let values: Vec<f32> = view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        let matrix = QuantizedMatrix::quantize(&values, 1, values.len(), scheme).unwrap();
        converted.push((name, dtype, view.shape().to_vec(), matrix.as_bytes().unwrap().into_owned()));
    }
    let views = converted.iter().map(|(name, dtype, shape, data)| {
        (name.clone(), safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap())
    });
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

#[test]
fn half_precision_checkpoints_load_and_stay_close() {
    // Rounding every weight to f16 (11-bit significand, relative error up to 2^-11) or bf16
    // (8 bits, 2^-8) perturbs each output of a 384-input linear by about sqrt(384) x 2^-12 x
    // |w| |x|, relative 1e-4 (f16) and 1e-3 (bf16) of its typical size, through six layers.
    // Measured lowest cosines with the f32 golden embeddings: 0.999_999_4 (f16) and
    // 0.999_967 (bf16); the bounds leave about 10x headroom on 1 - cosine.
    for (scheme, dtype, bound) in [(Scheme::F16, Dtype::F16, 0.999_995), (Scheme::Bf16, Dtype::BF16, 0.9996)] {
        let dir = tempfile::tempdir().unwrap();
        write_converted(dir.path(), scheme, dtype, None);
        let model = BertModel::open(dir.path()).unwrap();
        let embeddings = Pooling::default().pool(&model.forward(&padded_batch()).unwrap());
        let worst = worst_cosine(&embeddings);
        assert!(worst >= bound, "{scheme}: lowest cosine with the f32 golden embeddings {worst}");
    }
}

#[test]
fn a_checkpoint_missing_a_tensor_is_rejected_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = "encoder.layer.3.attention.self.key.bias";
    write_converted(dir.path(), Scheme::F16, Dtype::F16, Some(missing));
    let error = BertModel::open(dir.path()).unwrap_err().to_string();
    assert!(error.contains(&format!("1 missing: `{missing}`")), "{error}");
    assert!(error.starts_with(&dir.path().join("model.safetensors").display().to_string()), "{error}");
}

#[test]
fn the_capture_hook_sees_every_linear_input() {
    let encoder = encoder();
    let golden = golden();
    let tokens: Vec<_> = golden.sentences[..3].iter().map(|s| encoder.tokenize(s).unwrap()).collect();
    let batch = encoder.batch(&tokens);
    let rows = 3 * batch.seq_len();
    let embedded = encoder.model().embed(&batch).unwrap();
    let mut seen = Vec::new();
    let mut query_input = Vec::new();
    let hidden = encoder
        .model()
        .forward_capturing(&batch, |input| {
            assert_eq!(input.input.len(), input.n_rows * input.cols);
            assert_eq!(input.mask, batch.mask());
            assert_eq!(input.real_rows().count(), batch.real_tokens());
            match input.role {
                Role::Query => query_input = input.input.to_vec(),
                Role::Key | Role::Value => assert_eq!(input.input, query_input.as_slice()),
                _ => {}
            }
            if (input.layer, input.role) == (0, Role::Query) {
                assert_eq!(input.input, embedded.states());
            }
            seen.push((input.layer, input.role, input.n_rows, input.cols));
        })
        .unwrap();
    let expected: Vec<_> = (0..6)
        .flat_map(|layer| LAYER_ROLES.map(|role| (layer, role, rows, if role == Role::FfnOut { 1536 } else { H })))
        .collect();
    assert_eq!(seen, expected);
    assert_eq!(hidden, encoder.model().forward(&batch).unwrap());
}

#[test]
fn quantized_linears_are_chosen_per_layer() {
    let mut model = encoder().model().clone();
    // q8_0 everywhere but the FFN-out linears, whose inputs have outliers (absmax/std about 85):
    // those get int8 with per-channel weight scales.
    for (layer, role) in model.linears().map(|(layer, role, _)| (layer, role)).collect::<Vec<_>>() {
        let scheme: Scheme = if role == Role::FfnOut { "int8-channel" } else { "q8_0" }.parse().unwrap();
        let quantized = model.linear(layer, role).unwrap().quantize(scheme).unwrap();
        model.set_linear(layer, role, quantized).unwrap();
    }
    let kinds: Vec<String> = model.linears().map(|(_, _, linear)| linear.description()).collect();
    assert_eq!(kinds[..6], ["q8_0", "q8_0", "q8_0", "q8_0", "q8_0", "int8-channel"]);
    assert_eq!(model.linear(5, Role::Query).unwrap().kind(), LinearKind::Quantized("q8_0".parse().unwrap()));
    let embeddings = Pooling::default().pool(&model.forward(&padded_batch()).unwrap());
    let worst = worst_cosine(&embeddings);
    // Measured 0.9983: 8-bit activations and weights in every linear.
    assert!(worst >= 0.99, "lowest cosine with the f32 golden embeddings {worst}");
    assert!(worst < 0.999_999, "quantized linears should change the result ({worst})");
}
