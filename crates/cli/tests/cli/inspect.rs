//! `lathe inspect` on the real models (against listings made with the reference Python readers),
//! on sharded folders, and on bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lathe_tensor::{Dtype, SafeTensorsWriter, TensorSpec};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn lathe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lathe")).args(args).output().expect("the lathe binary runs")
}

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fixtures").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture exists")).expect("fixture is JSON")
}

/// The real models: `cargo xtask ci` always sets LATHE_MODELS_DIR (after fetching them), so CI
/// always runs these checks; a bare `cargo test` without it skips them with a note.
fn model(name: &str) -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("LATHE_MODELS_DIR") else {
        eprintln!("LATHE_MODELS_DIR is not set: skipping the check on {name} (run `cargo xtask ci`)");
        return None;
    };
    let path = Path::new(&dir).join(name);
    assert!(path.exists(), "{} is missing: run `cargo xtask fetch-models`", path.display());
    Some(path)
}

fn inspect_json(args: &[&str]) -> Value {
    let output = lathe(args);
    assert!(output.status.success(), "lathe {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("--json prints only JSON on stdout")
}

/// Compares the tensor listings by name: dtype, shape, absolute offset and byte count.
fn assert_same_tensors(ours: &Value, reference: &Value) {
    let ours = ours["tensors"].as_array().unwrap();
    let reference = reference["tensors"].as_array().unwrap();
    assert_eq!(ours.len(), reference.len());
    for expected in reference {
        let name = expected["name"].as_str().unwrap();
        let found = ours.iter().find(|t| t["name"] == name).unwrap_or_else(|| panic!("tensor {name} missing"));
        for field in ["dtype", "shape", "offset", "bytes"] {
            assert_eq!(found[field], expected[field], "{name}: {field}");
        }
    }
}

#[test]
fn minilm_listing_matches_the_safetensors_package() {
    let Some(dir) = model("all-MiniLM-L6-v2") else { return };
    let reference = fixture("minilm_safetensors.json");
    let file = dir.join("model.safetensors");
    let ours = inspect_json(&["inspect", "--json", file.to_str().unwrap()]);
    assert_eq!(ours["format"], "safetensors");
    assert_eq!(ours["tensors"].as_array().unwrap().len(), 104);
    assert_same_tensors(&ours, &reference);
    assert_eq!(ours["metadata"], reference["metadata"]);
    let params: u64 = ours["tensors"].as_array().unwrap().iter().map(|t| shape_product(&t["shape"])).sum();
    assert_eq!(ours["total_params"], params);

    // The folder reads as the same checkpoint.
    let folder = inspect_json(&["inspect", "--json", dir.to_str().unwrap()]);
    assert_same_tensors(&folder, &reference);
}

fn shape_product(shape: &Value) -> u64 {
    shape.as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).product()
}

#[test]
fn smollm2_listing_matches_the_gguf_package() {
    let Some(file) = model("SmolLM2-135M-Instruct.Q4_1.gguf") else { return };
    let reference = fixture("smollm2_gguf.json");
    let ours = inspect_json(&["inspect", "--json", "--full", file.to_str().unwrap()]);
    assert_eq!(ours["format"], "gguf");
    assert_eq!(ours["tensors"].as_array().unwrap().len(), 272);
    assert_same_tensors(&ours, &reference);

    let expected = reference["metadata"].as_object().unwrap();
    let found = ours["metadata"].as_object().unwrap();
    assert_eq!(found.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "same keys in file order");
    for (key, entry) in expected {
        let value = &found[key];
        let reference_value = &entry["value"];
        if let Some(count) = reference_value.get("count") {
            // Long arrays: count, ends and a digest of the whole compact JSON list.
            let items = value.as_array().unwrap_or_else(|| panic!("{key} is not an array"));
            assert_eq!(items.len() as u64, count.as_u64().unwrap(), "{key}");
            assert_eq!(&Value::from(items[..8].to_vec()), &reference_value["first"], "{key}");
            assert_eq!(&Value::from(items[items.len() - 8..].to_vec()), &reference_value["last"], "{key}");
            let digest = Sha256::digest(serde_json::to_string(items).unwrap().as_bytes());
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex, reference_value["sha256"].as_str().unwrap(), "{key}");
        } else {
            assert_eq!(value, reference_value, "{key}");
        }
    }

    // Without --full, long arrays are summarised.
    let short = inspect_json(&["inspect", "--json", file.to_str().unwrap()]);
    assert_eq!(short["metadata"]["tokenizer.ggml.tokens"], "[49152 x STRING]");
    assert_eq!(short["metadata"]["tokenizer.ggml.merges"], "[48900 x STRING]");
    assert_eq!(short["metadata"]["general.languages"], serde_json::json!(["en"]));
}

fn write_shard(path: &Path, tensors: &[(&str, Vec<f32>)]) {
    let specs = tensors.iter().map(|(name, values)| TensorSpec::new(*name, Dtype::F32, [values.len()])).collect();
    let mut writer = SafeTensorsWriter::create(path, specs, &[("format".to_owned(), "pt".to_owned())]).unwrap();
    for (name, values) in tensors {
        writer.write_tensor(name, bytemuck::cast_slice(values)).unwrap();
    }
    writer.finish().unwrap();
}

#[test]
fn sharded_folder_reads_as_one_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    write_shard(&dir.path().join("model-00001-of-00002.safetensors"), &[("a", vec![1.0; 3]), ("b", vec![2.0; 2])]);
    write_shard(&dir.path().join("model-00002-of-00002.safetensors"), &[("c", vec![3.0; 4])]);
    let index = serde_json::json!({
        "metadata": {"total_size": 36},
        "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
                       "c": "model-00002-of-00002.safetensors"}
    });
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    let listing = inspect_json(&["inspect", "--json", dir.path().to_str().unwrap()]);
    let names: Vec<&str> = listing["tensors"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(listing["tensors"][2]["file"], "model-00002-of-00002.safetensors");
    assert_eq!(listing["total_params"], 9);
    assert_eq!(listing["total_bytes"], 36);

    // An index that points a tensor at the wrong shard is an error naming it.
    let wrong = serde_json::json!({"weight_map": {"a": "model-00002-of-00002.safetensors",
        "b": "model-00001-of-00002.safetensors", "c": "model-00002-of-00002.safetensors"}});
    std::fs::write(dir.path().join("model.safetensors.index.json"), wrong.to_string()).unwrap();
    let output = lathe(&["inspect", dir.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tensor `a`"), "{stderr}");
}

#[test]
fn bad_input_is_one_line_on_stderr_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.safetensors");
    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(&truncated, b"GGUF\x03\x00\x00\x00\x01").unwrap();
    let unknown = dir.path().join("notes.txt");
    std::fs::write(&unknown, b"plain text, not a checkpoint").unwrap();
    for (path, needle) in
        [(&missing, "no such file"), (&truncated, "tensor count"), (&unknown, "not a safetensors or GGUF")]
    {
        for json in [false, true] {
            let mut args = vec!["inspect", path.to_str().unwrap()];
            if json {
                args.push("--json");
            }
            let output = lathe(&args);
            assert_eq!(output.status.code(), Some(2), "{args:?}");
            assert!(output.stdout.is_empty(), "{args:?}: nothing on stdout");
            let stderr = String::from_utf8(output.stderr).unwrap();
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert!(
                stderr.contains(needle) && stderr.contains(path.file_name().unwrap().to_str().unwrap()),
                "{stderr}"
            );
        }
    }
    let output = lathe(&["inspect", "--no-such-flag", "x"]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn table_lists_tensors_totals_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.safetensors");
    write_shard(&path, &[("weight", vec![0.5; 6])]);
    let output = lathe(&["inspect", path.to_str().unwrap()]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("weight") && text.contains("F32") && text.contains("[6]"), "{text}");
    assert!(text.contains("1 tensors, 6 parameters, 24 bytes"), "{text}");
    assert!(text.contains("format = pt"), "{text}");
}
