//! `lathe quantize`, `prune`, `shrink` and `apply` on the real all-MiniLM-L6-v2: the folders they
//! write reload with `inspect`, `embed` and `eval`, and bad flags are one error line, exit 2.

use serde_json::Value;

use crate::encode::{fail_with, fails, golden_file, minilm_dir, path_str, succeeded};

#[test]
fn compressed_folders_reload_with_every_command() {
    let model = minilm_dir();
    let model = path_str(&model);
    let tmp = tempfile::tempdir().unwrap();
    let out = |name: &str| tmp.path().join(name).to_str().unwrap().to_owned();
    let sentences = golden_file("sentences.txt");
    let sentences = path_str(&sentences);

    succeeded(&["quantize", model, "-o", &out("q8"), "--scheme", "q8_0"]);
    succeeded(&["prune", model, "-o", &out("nm"), "--method", "magnitude", "--pattern", "2:4"]);
    succeeded(&["shrink", model, "-o", &out("small"), "--keep-layers", "0,2,4", "--keep-ffn", "0.5"]);
    let recipe = tmp.path().join("recipe.toml");
    std::fs::write(
        &recipe,
        "name = \"magnitude 90% + q4_0\"\n[[steps]]\nstep = \"prune\"\nmethod = \"magnitude\"\nsparsity = 0.9\n\n\
         [[steps]]\nstep = \"quantize\"\nscheme = \"q4_0\"\nactivations = \"f32\"\n",
    )
    .unwrap();
    succeeded(&["apply", path_str(&recipe), model, "-o", &out("applied")]);

    for (name, kernels) in [
        ("q8", "36 x q8_0"),
        ("nm", "36 x sparse 2:4\n"),
        ("small", "18 x dense f32"),
        ("applied", "36 x q4_0 weight-only"),
    ] {
        let folder = out(name);
        let listing = succeeded(&["inspect", &folder]);
        assert!(String::from_utf8_lossy(&listing.stdout).contains("model.safetensors"), "{name}");
        let embedded = out(&format!("{name}.safetensors"));
        let output = succeeded(&["embed", &folder, "--input", sentences, "-o", &embedded]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(kernels), "{name}: {stderr}");
        let output = succeeded(&["eval", &folder, "--reference", model, "--input", sentences, "--json"]);
        let json: Value = serde_json::from_slice(&output.stdout).unwrap();
        let mean = json["mean_cosine"].as_f64().unwrap();
        assert!(mean > 0.2 && mean < 1.0, "{name}: mean cosine {mean}");
        let record: Value =
            serde_json::from_str(&std::fs::read_to_string(tmp.path().join(name).join("lathe.json")).unwrap()).unwrap();
        assert!(!record["steps"].as_array().unwrap().is_empty(), "{name}");
    }
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("applied/lathe.json")).unwrap()).unwrap();
    assert_eq!(record["steps"].as_array().unwrap().len(), 2);
    // No intermediate folder of the recipe is left behind.
    let mut names: Vec<String> =
        std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.retain(|name| name.starts_with('.'));
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn bad_compression_flags_give_one_error_line_and_exit_code_2() {
    let model = minilm_dir();
    let model = path_str(&model);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let out = path_str(&out);
    fail_with(&[
        (vec!["quantize", model, "-o", out, "--scheme", "int3"], "int3"),
        (vec!["quantize", model, "-o", out, "--scheme", "q4_0", "--method", "best"], "best"),
        (vec!["quantize", model, "-o", out, "--scheme", "q4_0", "--keep-f32", "ffn"], "ffn"),
        (vec!["prune", model, "-o", out, "--method", "wanda"], "--sparsity"),
        (vec!["prune", model, "-o", out, "--method", "magnitude", "--sparsity", "1.5"], "1.5"),
        (vec!["prune", model, "-o", out, "--method", "magnitude", "--pattern", "4:2"], "4:2"),
        (vec!["shrink", model, "-o", out, "--keep-layers", "0,9"], "layer 9"),
        (vec!["prune", "/no/such/model", "-o", out, "--method", "magnitude", "--sparsity", "0.5"], "/no/such/model"),
    ]);
    assert!(!tmp.path().join("out").exists(), "a failed command wrote its output");
    // An existing folder lathe did not write is never replaced.
    std::fs::create_dir(tmp.path().join("mine")).unwrap();
    std::fs::write(tmp.path().join("mine/notes.txt"), "keep me").unwrap();
    let mine = tmp.path().join("mine");
    let message = fails(&["quantize", model, "-o", path_str(&mine), "--scheme", "q8_0"]);
    assert!(message.contains("lathe.json"), "{message}");
    assert!(mine.join("notes.txt").is_file());
}
