//! `lathe distill` and a recipe's `distill` step on the real all-MiniLM-L6-v2, in runs of a few
//! steps: the student folder reloads with every command and records its training, and bad flags
//! are one error line, exit 2.

use serde_json::Value;

use crate::encode::{fail_with, golden_file, minilm_dir, path_str, succeeded};

/// Lines `skip..skip + n` of the golden sentences, as a file in `dir`.
fn sentences(dir: &std::path::Path, name: &str, skip: usize, n: usize) -> String {
    let text = std::fs::read_to_string(golden_file("sentences.txt")).unwrap();
    let lines: Vec<&str> = text.lines().skip(skip).take(n).collect();
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n")).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn a_distilled_student_reloads_and_records_its_training() {
    let model = minilm_dir();
    let model = path_str(&model);
    let tmp = tempfile::tempdir().unwrap();
    let eval = sentences(tmp.path(), "eval.txt", 0, 8);
    let corpus = sentences(tmp.path(), "corpus.txt", 8, 24);
    let student = tmp.path().join("student");
    let student = path_str(&student);
    let output = succeeded(&[
        "distill",
        "--teacher",
        model,
        "-o",
        student,
        "--keep-layers",
        "0,3",
        "--corpus",
        &corpus,
        "--eval",
        &eval,
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--lr",
        "5e-4",
        "--seed",
        "3",
        "--quiet",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("trained 2 steps") && stdout.contains("mean cosine"), "{stdout}");
    assert!(!stdout.contains("left out"), "{stdout}");

    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("student/config.json")).unwrap()).unwrap();
    assert_eq!(config["num_hidden_layers"], 2);
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("student/lathe.json")).unwrap()).unwrap();
    let step = &record["steps"][0];
    assert_eq!(step["step"], "distill");
    assert_eq!(step["options"]["lr"], 5e-4);
    assert_eq!(step["options"]["steps"], 2);

    let embedded = tmp.path().join("student.safetensors");
    let output = succeeded(&["embed", student, "--input", &eval, "-o", path_str(&embedded)]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("12 x dense f32"));
    let output = succeeded(&["eval", student, "--reference", model, "--input", &eval, "--json"]);
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    let mean = json["mean_cosine"].as_f64().unwrap();
    assert!(mean > 0.0 && mean < 1.0, "mean cosine {mean}");

    // The same training as a recipe step, then int8: the student is quantized as any model.
    let recipe = tmp.path().join("recipe.toml");
    std::fs::write(
        &recipe,
        format!(
            "name = \"distill + int8\"\n[[steps]]\nstep = \"distill\"\nkeep_layers = [0, 3]\ncorpus = {corpus:?}\n\
             eval = {eval:?}\nmax_steps = 2\nbatch_size = 8\nlr = 5e-4\nseed = 3\n\n\
             [[steps]]\nstep = \"quantize\"\nscheme = \"int8-channel\"\n"
        ),
    )
    .unwrap();
    let applied = tmp.path().join("applied");
    succeeded(&["apply", path_str(&recipe), model, "-o", path_str(&applied)]);
    let output = succeeded(&["embed", path_str(&applied), "--input", &eval, "-o", path_str(&embedded)]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("12 x int8"));
    let record: Value = serde_json::from_str(&std::fs::read_to_string(applied.join("lathe.json")).unwrap()).unwrap();
    let steps: Vec<&str> = record["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(steps, ["distill", "quantize"]);
}

#[test]
fn bad_distill_flags_give_one_error_line_and_exit_code_2() {
    let model = minilm_dir();
    let model = path_str(&model);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let out = path_str(&out);
    fail_with(&[
        (vec!["distill", "--teacher", model, "-o", out, "--keep-layers", "0,9"], "9"),
        (vec!["distill", "--teacher", model, "-o", out, "--lr=-1"], "lr"),
        (vec!["distill", "--teacher", model, "-o", out, "--max-minutes", "0"], "max-minutes"),
        (vec!["distill", "--teacher", model, "-o", out, "--batch-size", "0"], "batch-size"),
        (vec!["distill", "--teacher", "/no/such/model", "-o", out], "/no/such/model"),
    ]);
    assert!(!tmp.path().join("out").exists(), "a failed command wrote its output");
}
