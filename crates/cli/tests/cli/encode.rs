//! `lathe embed` and `lathe eval` on the real all-MiniLM-L6-v2, and their errors.
//!
//! The model folder is `$LATHE_MODELS_DIR/all-MiniLM-L6-v2` (`cargo xtask` sets the variable;
//! without it `$XDG_CACHE_HOME/lathe/models`, else `~/.cache/lathe/models`), as in lathe-model's
//! tests. A missing model fails these tests: run `cargo xtask fetch-models`. The golden sentences
//! and embeddings are lathe-model's test data (`crates/model/tests/data`, copied from the
//! project's shared golden folder; its README says how they were made).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use lathe_tensor::{Dtype, SafeTensors};
use serde_json::Value;

pub(crate) use crate::models::minilm_dir;

const GOLDEN_SENTENCES: usize = 48;
const HIDDEN: usize = 384;

pub(crate) fn lathe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lathe")).args(args).stdin(Stdio::null()).output().expect("the lathe binary runs")
}

pub(crate) fn golden_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/data").join(name)
}

pub(crate) fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

pub(crate) fn succeeded(args: &[&str]) -> Output {
    let output = lathe(args);
    assert!(output.status.success(), "lathe {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    output
}

/// Reads the `embeddings` tensor `lathe embed` wrote: `[rows, HIDDEN]` f32.
fn read_embeddings(path: &Path, rows: usize) -> Vec<f32> {
    let file = SafeTensors::open(path).unwrap();
    assert_eq!(file.tensors().len(), 1, "only the embeddings tensor");
    let tensor = file.tensor("embeddings").unwrap();
    assert_eq!((tensor.dtype(), tensor.shape()), (Dtype::F32, [rows, HIDDEN].as_slice()));
    tensor.to_f32().unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(&p, &q)| f64::from(p) * f64::from(q)).sum::<f64>();
    dot(a, b) / (dot(a, a) * dot(b, b)).sqrt()
}

/// Files in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn embed_matches_the_golden_sentence_embeddings() {
    let model = minilm_dir();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("golden.safetensors");
    let input = golden_file("sentences.txt");
    let output = succeeded(&["embed", path_str(&model), "--input", path_str(&input), "-o", path_str(&out)]);
    assert!(output.stdout.is_empty(), "embed prints its notes on stderr only");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("kernels: 36 x dense f32"), "{stderr}");
    let slots_line = stderr.lines().find(|line| line.starts_with("token slots: ")).expect("a token slot line");
    let numbers: Vec<usize> = slots_line.split(' ').filter_map(|word| word.parse().ok()).collect();
    let (slots, real) = (numbers[0], numbers[1]);
    // The golden ids: 6 to 68 tokens per sentence; every slot past them is padding.
    let tokens: Value =
        serde_json::from_str(&std::fs::read_to_string(golden_file("minilm_public_tokens.json")).unwrap()).unwrap();
    let golden_real: usize = tokens.as_array().unwrap().iter().map(|s| s["ids"].as_array().unwrap().len()).sum();
    assert_eq!(real, golden_real, "{slots_line}");
    assert!(slots >= real && slots < GOLDEN_SENTENCES * 68, "{slots_line}");
    assert_eq!(listing(out_dir.path()), ["golden.safetensors"], "no temporary file is left behind");

    let ours = read_embeddings(&out, GOLDEN_SENTENCES);
    let golden = SafeTensors::open(golden_file("minilm_public.safetensors")).unwrap();
    let golden = golden.tensor("sentence_embedding").unwrap().to_f32().unwrap();
    assert_eq!(golden.len(), GOLDEN_SENTENCES * HIDDEN);
    let lowest = ours
        .chunks_exact(HIDDEN)
        .zip(golden.chunks_exact(HIDDEN))
        .map(|(a, b)| cosine(a, b))
        .fold(f64::INFINITY, f64::min);
    assert!(lowest >= 0.99999, "lowest cosine to the golden embeddings {lowest}");
}

#[test]
fn embed_keeps_every_line_in_order_including_empty_ones() {
    let model = minilm_dir();
    let dir = tempfile::tempdir().unwrap();
    let lines = ["The cat sat on the mat.", "", "Stock markets fell sharply after the announcement on Monday."];
    let forward = dir.path().join("forward.txt");
    let backward = dir.path().join("backward.txt");
    std::fs::write(&forward, format!("{}\n", lines.join("\n"))).unwrap();
    let reversed: Vec<&str> = lines.iter().rev().copied().collect();
    // No final newline, and Windows line ends: still three lines.
    std::fs::write(&backward, reversed.join("\r\n")).unwrap();
    let (out_forward, out_backward) = (dir.path().join("forward.safetensors"), dir.path().join("backward.safetensors"));
    for (input, out) in [(&forward, &out_forward), (&backward, &out_backward)] {
        succeeded(&[
            "embed",
            path_str(&model),
            "--input",
            path_str(input),
            "--output",
            path_str(out),
            "--batch-size",
            "2",
            "--threads",
            "2",
        ]);
    }
    let forward = read_embeddings(&out_forward, 3);
    let backward = read_embeddings(&out_backward, 3);
    for (row, vector) in forward.chunks_exact(HIDDEN).enumerate() {
        let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "row {row}: norm {norm}");
        for (other, candidate) in backward.chunks_exact(HIDDEN).enumerate() {
            let similarity = cosine(vector, candidate);
            if other == 2 - row {
                assert!(similarity >= 0.99999, "line {row} differs between the two files: {similarity}");
            } else {
                assert!(similarity < 0.99, "lines {row} and {} look the same: {similarity}", 2 - other);
            }
        }
    }
}

#[test]
fn eval_of_a_model_against_itself_is_perfect() {
    let model = minilm_dir();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("twelve.txt");
    let sentences = std::fs::read_to_string(golden_file("sentences.txt")).unwrap();
    let twelve: Vec<&str> = sentences.lines().take(12).collect();
    std::fs::write(&input, twelve.join("\n")).unwrap();

    let output = succeeded(&[
        "eval",
        path_str(&model),
        "--reference",
        path_str(&model),
        "--input",
        path_str(&input),
        "--json",
        "--batch-size",
        "4",
    ]);
    let json: Value = serde_json::from_slice(&output.stdout).expect("--json prints only JSON on stdout");
    let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["mean_cosine", "min_cosine", "spearman", "top1_agreement", "latency_ms", "n_sentences"]);
    let number = |value: &Value| value.as_f64().unwrap_or_else(|| panic!("{value} is not a number"));
    assert!((number(&json["mean_cosine"]) - 1.0).abs() <= 1e-6, "{json}");
    assert!((number(&json["min_cosine"]) - 1.0).abs() <= 1e-6, "{json}");
    assert_eq!(number(&json["spearman"]), 1.0, "{json}");
    assert_eq!(number(&json["top1_agreement"]), 1.0, "{json}");
    assert_eq!(json["n_sentences"], 12);
    let latency = json["latency_ms"].as_object().unwrap();
    assert_eq!(latency.keys().collect::<Vec<_>>(), ["model", "reference"]);
    assert!(latency.values().all(|ms| number(ms) > 0.0), "{json}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("model kernels: 36 x dense f32"), "{stderr}");

    // The table says the same.
    let output = succeeded(&["eval", path_str(&model), "--reference", path_str(&model), "--input", path_str(&input)]);
    let table = String::from_utf8(output.stdout).unwrap();
    for expected in ["sentences            12", "spearman             1.000000", "top-1 agreement      1.0000"] {
        assert!(table.contains(expected), "{expected:?} missing from\n{table}");
    }
}

/// Runs `lathe args` expecting the one-line error and exit code 2; returns the message.
pub(crate) fn fails(args: &[&str]) -> String {
    let output = lathe(args);
    assert_eq!(output.status.code(), Some(2), "lathe {args:?}: {output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "one error line: {stderr}");
    assert!(stderr.starts_with("lathe: error: "), "{stderr}");
    assert!(output.stdout.is_empty(), "nothing on stdout: {}", String::from_utf8_lossy(&output.stdout));
    stderr
}

/// Runs every case with [`fails`]; each one's message must contain its expected text.
pub(crate) fn fail_with(cases: &[(Vec<&str>, &str)]) {
    for (args, expected) in cases {
        let message = fails(args);
        assert!(message.contains(expected), "{args:?}: {message}");
    }
}

/// A copy of the MiniLM folder in a temporary folder (files linked, not copied, where the
/// system allows), without `skip`.
fn minilm_copy_without(skip: &str) -> tempfile::TempDir {
    let source = minilm_dir();
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() == skip {
            continue;
        }
        let target = copy.path().join(entry.file_name());
        link_or_copy(&entry.path(), &target);
    }
    copy
}

#[cfg(unix)]
fn link_or_copy(source: &Path, target: &Path) {
    std::os::unix::fs::symlink(source, target).unwrap();
}

#[cfg(not(unix))]
fn link_or_copy(source: &Path, target: &Path) {
    if source.is_dir() {
        std::fs::create_dir(target).unwrap();
        for entry in std::fs::read_dir(source).unwrap() {
            let entry = entry.unwrap();
            link_or_copy(&entry.path(), &target.join(entry.file_name()));
        }
    } else {
        std::fs::copy(source, target).unwrap();
    }
}

#[test]
fn bad_folders_and_files_give_one_error_line_and_exit_code_2() {
    let model = minilm_dir();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.txt");
    std::fs::write(&input, "One sentence.\nAnother sentence.\nA third one.\n").unwrap();
    let out = dir.path().join("out.safetensors");
    let (model_str, input_str, out_str) = (path_str(&model), path_str(&input), path_str(&out));

    let missing = dir.path().join("no-such-model");
    let message = fails(&["embed", path_str(&missing), "--input", input_str, "-o", out_str]);
    assert!(message.contains(&format!("{}: no such folder", missing.display())), "{message}");

    let message = fails(&["embed", input_str, "--input", input_str, "-o", out_str]);
    assert!(message.contains(&format!("{}: not a folder", input.display())), "{message}");

    // A folder that is not a model: its config.json is named, and the cause said once.
    let message = fails(&["embed", path_str(dir.path()), "--input", input_str, "-o", out_str]);
    assert!(message.contains(&format!("{}: ", dir.path().join("config.json").display())), "{message}");
    let cause = message.rsplit(": ").next().unwrap().trim_end();
    assert_eq!(message.matches(cause).count(), 1, "{cause:?} said once: {message}");

    let no_input = dir.path().join("missing.txt");
    let message = fails(&["embed", model_str, "--input", path_str(&no_input), "-o", out_str]);
    assert!(message.contains(&format!("cannot read the input file {}", no_input.display())), "{message}");
    let message = fails(&["eval", model_str, "--reference", model_str, "--input", path_str(&no_input)]);
    assert!(message.contains(&format!("cannot read the input file {}", no_input.display())), "{message}");

    let not_utf8 = dir.path().join("latin1.txt");
    std::fs::write(&not_utf8, b"caf\xe9\n").unwrap();
    let message = fails(&["embed", model_str, "--input", path_str(&not_utf8), "-o", out_str]);
    assert!(message.contains(&format!("cannot read the input file {}", not_utf8.display())), "{message}");

    let no_tokenizer = minilm_copy_without("tokenizer.json");
    let tokenizer = no_tokenizer.path().join("tokenizer.json");
    let message = fails(&["embed", path_str(no_tokenizer.path()), "--input", input_str, "-o", out_str]);
    assert!(message.contains(&format!("{}: cannot load the tokenizer", tokenizer.display())), "{message}");
    let message = fails(&["eval", model_str, "--reference", path_str(no_tokenizer.path()), "--input", input_str]);
    assert!(message.contains(&format!("cannot load the reference in {}", no_tokenizer.path().display())), "{message}");
    assert!(message.contains(&format!("{}: cannot load the tokenizer", tokenizer.display())), "{message}");

    // hidden_size 768 (still a multiple of the 12 heads) against a checkpoint of 384.
    let wider = minilm_copy_without("config.json");
    let config = std::fs::read_to_string(model.join("config.json")).unwrap();
    let mut config: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["hidden_size"], 384);
    config["hidden_size"] = 768.into();
    std::fs::write(wider.path().join("config.json"), config.to_string()).unwrap();
    let message = fails(&["embed", path_str(wider.path()), "--input", input_str, "-o", out_str]);
    assert!(message.contains(&format!("cannot load the model in {}", wider.path().display())), "{message}");
    assert!(message.contains("embeddings.word_embeddings.weight"), "{message}");
    assert!(message.contains("768") && message.contains("384"), "{message}");
    assert_eq!(message.matches("embeddings.word_embeddings.weight").count(), 1, "said once: {message}");

    let no_folder = dir.path().join("absent").join("out.safetensors");
    let message = fails(&["embed", model_str, "--input", input_str, "-o", path_str(&no_folder)]);
    assert!(message.contains(&no_folder.parent().unwrap().display().to_string()), "{message}");

    // No failure above wrote anything.
    assert_eq!(listing(dir.path()), ["input.txt", "latin1.txt"]);

    // Too few sentences to have a nearest neighbour.
    let one = dir.path().join("one.txt");
    std::fs::write(&one, "Only one sentence.\n").unwrap();
    let message = fails(&["eval", model_str, "--reference", model_str, "--input", path_str(&one)]);
    assert!(message.contains("too few sentences to evaluate on: 1, where at least 2 are needed"), "{message}");
}
