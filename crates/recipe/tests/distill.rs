//! `distill` on the real all-MiniLM-L6-v2, in runs of a few steps on a few sentences: the folder
//! it writes, the loss falling, determinism, and bad options.

use std::fs;
use std::path::{Path, PathBuf};

use lathe_model::{BertModel, SentenceEncoder};
use lathe_recipe::Error;
use lathe_recipe::compress::Record;
use lathe_recipe::data;
use lathe_recipe::distill::{DistillOptions, distill};

#[path = "../../../tests/support/models.rs"]
mod models;
use models::minilm_dir as minilm;

/// Writes the first `n` sentences of `sentences` to `dir/name`, one per line.
fn sentences_file(dir: &Path, name: &str, sentences: &[&str], n: usize) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, sentences[..n].join("\n")).unwrap();
    path
}

/// Options for a run of `steps` steps on `n_corpus` corpus sentences and 8 evaluation sentences.
fn small(dir: &Path, n_corpus: usize, batch_size: usize, steps: u64) -> DistillOptions {
    DistillOptions {
        keep_layers: Some(vec![0, 3]),
        corpus: Some(sentences_file(dir, "corpus.txt", &data::corpus(), n_corpus)),
        eval: Some(sentences_file(dir, "eval.txt", &data::eval_set(), 8)),
        max_steps: Some(steps),
        epochs: Some(100.0),
        batch_size,
        ..DistillOptions::default()
    }
}

#[test]
fn writes_a_complete_folder_that_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("student");
    let report = distill(&minilm(), &out, &small(tmp.path(), 32, 16, 3)).unwrap();
    assert_eq!((report.steps, report.losses.len(), report.corpus_sentences), (3, 3, 32));
    assert_eq!(report.keep_layers, [0, 3]);
    assert_eq!(report.teacher_layers, 6);
    assert!(report.tokens_trained > 0);

    let model = BertModel::open(&out).unwrap();
    assert_eq!(model.num_layers(), 2);
    let encoder = SentenceEncoder::open(&out).unwrap();
    let embeddings = encoder.embed_sentences(&["A cat sat on the mat.", "Rain is expected tonight."], 2).unwrap();
    assert_eq!(embeddings.dim(), 384);
    assert!(embeddings.as_slice().iter().all(|v| v.is_finite()));
    for name in ["tokenizer.json", "vocab.txt", "modules.json", "1_Pooling/config.json", "config.json"] {
        assert!(out.join(name).is_file(), "{name} is missing");
    }

    let record = Record::read(&out.join("lathe.json")).unwrap();
    let step = record.steps.last().unwrap();
    assert_eq!(step.step, "distill");
    assert_eq!(step.options["keep_layers"], serde_json::json!([0, 3]));
    assert_eq!(step.options["steps"], 3);
    assert_eq!(step.options["lr"], serde_json::json!(0.001));
    assert_eq!(step.calibration.as_ref().unwrap().samples, 32);

    // The fidelities are measured, on the 8 evaluation sentences, and are cosines.
    for fidelity in [report.before, report.after] {
        assert!(fidelity.mean_cosine > -1.0 && fidelity.mean_cosine <= 1.0, "{fidelity:?}");
        assert!(fidelity.min_cosine <= fidelity.mean_cosine);
    }
    assert_eq!(report.eval_sentences, 8);
}

#[test]
fn loss_falls_on_a_fixed_batch() {
    let tmp = tempfile::tempdir().unwrap();
    // One batch holds the whole corpus, so every step sees the same sentences.
    let options = DistillOptions { lr: 1e-3, warmup: 0.0, ..small(tmp.path(), 16, 16, 6) };
    let report = distill(&minilm(), &tmp.path().join("student"), &options).unwrap();
    let losses = &report.losses;
    assert_eq!(losses.len(), 6);
    assert!(losses.iter().all(|loss| loss.is_finite() && *loss > 0.0), "{losses:?}");
    assert!(losses[5] < losses[0] * 0.8, "{losses:?}");
    assert!(losses[3] < losses[0], "{losses:?}");
}

#[test]
fn a_seed_fixes_the_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = |seed: u64, name: &str| {
        let options = DistillOptions { seed, alpha_attn: 0.5, ..small(tmp.path(), 24, 8, 3) };
        let report = distill(&minilm(), &tmp.path().join(name), &options).unwrap();
        (fs::read(tmp.path().join(name).join("model.safetensors")).unwrap(), report.losses)
    };
    let (first, first_losses) = weights(7, "a");
    let (second, second_losses) = weights(7, "b");
    assert_eq!(first_losses, second_losses);
    assert!(first == second, "the same seed gave different weights");
    let (other, _) = weights(8, "c");
    assert!(first != other, "another seed (another batch order) gave the same weights");
}

#[test]
fn bad_options_are_errors_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("student");
    let base = small(tmp.path(), 8, 8, 1);
    for (keep, expected) in [
        (vec![4, 2], "--keep-layers: layers must be sorted and unique, but 2 follows 4"),
        (vec![0, 6], "--keep-layers: layer 6 does not exist: the teacher has layers 0 to 5"),
        (vec![], "--keep-layers: keep at least one layer"),
    ] {
        let options = DistillOptions { keep_layers: Some(keep), ..base.clone() };
        let err = distill(&minilm(), &out, &options).unwrap_err();
        assert!(matches!(err, Error::BadOption { .. }), "{err:?}");
        assert_eq!(err.to_string(), expected);
    }
    let err = distill(&minilm(), &out, &DistillOptions { batch_size: 0, ..base.clone() }).unwrap_err();
    assert_eq!(err.to_string(), "--batch-size: must be at least 1");
    let err = distill(&minilm(), &out, &DistillOptions { alpha_cos: 0.0, alpha_mse: 0.0, ..base.clone() }).unwrap_err();
    assert!(err.to_string().contains("nothing would train"), "{err}");
    // A corpus made only of evaluation sentences leaves nothing to train on.
    let eval_only = sentences_file(tmp.path(), "eval_only.txt", &data::eval_set(), 8);
    let err = distill(&minilm(), &out, &DistillOptions { corpus: Some(eval_only), ..base.clone() }).unwrap_err();
    assert!(err.to_string().contains("every sentence is also in the evaluation set"), "{err}");
    let missing = tmp.path().join("no-such-teacher");
    assert!(matches!(distill(&missing, &out, &base).unwrap_err(), Error::NotAFolder { .. }));
    assert!(!out.exists());
}
