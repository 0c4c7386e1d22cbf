//! `lathe search` on a tiny random BERT (two layers of width 32 with all-MiniLM-L6-v2's tokenizer
//! and pooling, so trials take milliseconds): a grid study and its resumption, emitted trials run
//! by `sh` and collected into the same study, and bad specs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use lathe_config::Config;
use lathe_model::train::BertParams;
use serde_json::Value;

use crate::encode::{fails, minilm_dir, path_str, succeeded};

/// A random 2-layer BERT folder (hidden 32, 4 heads, FFN 64) with MiniLM's tokenizer and pooling.
fn tiny_model(dir: &Path) -> PathBuf {
    let model = dir.join("tiny");
    std::fs::create_dir_all(model.join("1_Pooling")).unwrap();
    let json = serde_json::json!({
        "model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64, "vocab_size": 30522, "max_position_embeddings": 128, "type_vocab_size": 2,
        "layer_norm_eps": 1e-12, "hidden_act": "gelu", "initializer_range": 0.2, "pad_token_id": 0
    });
    let config = Config::parse(&json.to_string(), model.join("config.json")).unwrap();
    BertParams::random(config, 7).unwrap().save(&model).unwrap();
    let minilm = minilm_dir();
    for file in ["tokenizer.json", "modules.json", "sentence_bert_config.json", "1_Pooling/config.json"] {
        std::fs::copy(minilm.join(file), model.join(file)).unwrap();
    }
    model
}

/// Twelve sentences of the shipped evaluation set.
fn eval_file(dir: &Path) -> PathBuf {
    let path = dir.join("eval.txt");
    std::fs::write(&path, lathe_recipe::data::eval_set()[..12].join("\n")).unwrap();
    path
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const GRID_SPEC: &str = "name = \"magnitude {sparsity}, int8 {int8}\"\n\
    objectives = [\"mean_cosine:max\", \"size_bytes:min\", \"latency_ms:min\"]\n\
    [space]\nsparsity = { float = [0.3, 0.8] }\nint8 = { choice = [false, true] }\n\
    [search]\ngrid_points = 2\n\
    [[steps]]\nstep = \"prune\"\nmethod = \"magnitude\"\nsparsity = \"{sparsity}\"\n\
    [[steps]]\nenabled = \"{int8}\"\nstep = \"quantize\"\nscheme = \"int8-channel\"\n";

const RANDOM_SPEC: &str = "objectives = [\"mean_cosine:max\", \"size_bytes:min\"]\n\
    [space]\nsparsity = { float = [0.1, 0.9] }\nscope = [\"layer\", \"global\"]\n\
    [[steps]]\nstep = \"prune\"\nmethod = \"magnitude\"\nsparsity = \"{sparsity}\"\nscope = \"{scope}\"\n";

/// The study log by trial id.
fn log(study: &Path) -> BTreeMap<u64, Value> {
    let text = std::fs::read_to_string(study.join("study.jsonl")).unwrap();
    text.lines()
        .map(|line| {
            let record: Value = serde_json::from_str(line).unwrap();
            (record["id"].as_u64().unwrap(), record)
        })
        .collect()
}

fn line_count(study: &Path) -> usize {
    std::fs::read_to_string(study.join("study.jsonl")).unwrap().lines().count()
}

/// The trial ids of the table's rows and whether each is marked on the Pareto front.
fn table_rows(table: &str) -> Vec<(u64, bool)> {
    let header: Vec<&str> = table.lines().find(|line| line.starts_with("| trial")).unwrap().split('|').collect();
    let pareto = header.iter().position(|cell| cell.trim() == "pareto").unwrap();
    table
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').collect();
            let id = cells.get(1)?.trim().parse().ok()?;
            Some((id, cells[pareto].trim() == "*"))
        })
        .collect()
}

#[test]
fn a_grid_study_prints_its_pareto_front_and_resumes_without_rerunning() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let eval = eval_file(tmp.path());
    let spec = write(tmp.path(), "grid.toml", GRID_SPEC);
    let study = tmp.path().join("study");
    let args = ["search", path_str(&spec), path_str(&model), "-o", path_str(&study), "--eval", path_str(&eval)];

    let first = succeeded(&args);
    let (table, stderr) = (String::from_utf8(first.stdout).unwrap(), String::from_utf8(first.stderr).unwrap());
    assert_eq!(std::fs::read_to_string(study.join("pareto.md")).unwrap(), table);
    assert!(stderr.contains("4 trials run, 0 taken from"), "{stderr}");

    // The front the table marks is the one the logged values give.
    let records = log(&study);
    assert_eq!(records.len(), 4);
    let directions = [1.0, -1.0, -1.0]; // max, min, min
    let values: BTreeMap<u64, Vec<f64>> = records
        .iter()
        .map(|(&id, record)| {
            assert_eq!(record["status"], "complete", "{record}");
            let values = &record["values"];
            let point = ["mean_cosine", "size_bytes", "latency_ms"].map(|name| values[name].as_f64().unwrap());
            (id, point.iter().zip(directions).map(|(value, sign)| value * sign).collect())
        })
        .collect();
    let dominated = |id: u64| {
        values.iter().any(|(&other, better)| {
            other != id
                && better.iter().zip(&values[&id]).all(|(a, b)| a >= b)
                && better.iter().zip(&values[&id]).any(|(a, b)| a > b)
        })
    };
    let rows = table_rows(&table);
    assert_eq!(rows.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [0, 1, 2, 3], "{table}");
    for (id, marked) in &rows {
        assert_eq!(*marked, !dominated(*id), "trial {id}: {table}");
    }
    let best = values.iter().max_by(|a, b| a.1[0].total_cmp(&b.1[0])).map(|(id, _)| *id).unwrap();
    assert!(rows.contains(&(best, true)), "the closest trial is on the front: {table}");

    // Parameters in name order, the last varying fastest; a switched-off step is left out.
    let params = |id: u64| records[&id]["params"].clone();
    assert_eq!(params(0), serde_json::json!({"int8": "false", "sparsity": 0.3}));
    assert_eq!(params(3), serde_json::json!({"int8": "true", "sparsity": 0.8}));
    let recipe = |id: u64| std::fs::read_to_string(study.join(format!("trials/{id}/recipe.toml"))).unwrap();
    assert!(!recipe(0).contains("quantize") && recipe(2).contains("quantize"), "{}", recipe(2));
    assert!(recipe(1).contains("sparsity = 0.8"), "{}", recipe(1));
    // Only the encoder's linears shrink (the word embeddings are most of this model).
    let size = |id: u64| records[&id]["values"]["size_bytes"].as_f64().unwrap();
    assert!(size(2) < size(0) && size(3) < size(1), "int8 weights are smaller");
    let cosine = |id: u64| records[&id]["values"]["mean_cosine"].as_f64().unwrap();
    assert!(cosine(0) > cosine(1), "pruning 80 % moves the embeddings more than 30 %");
    // Measured models are removed (the recipes rebuild them) unless the study keeps them.
    for id in 0..4 {
        assert!(!study.join(format!("trials/{id}/model")).exists(), "trial {id} kept its model");
    }

    // Again: every trial comes from the log, the output is the same, the log does not grow.
    let again = succeeded(&args);
    let stderr = String::from_utf8(again.stderr).unwrap();
    assert!(stderr.contains("0 trials run, 4 taken from") && !stderr.contains("measuring"), "{stderr}");
    assert_eq!(String::from_utf8(again.stdout).unwrap(), table);
    assert_eq!(line_count(&study), 4);

    // The study folder belongs to its spec: an edited spec is refused, not mixed in.
    let changed = write(tmp.path(), "changed.toml", &GRID_SPEC.replace("grid_points = 2", "grid_points = 3"));
    let message = fails(&["search", path_str(&changed), path_str(&model), "-o", path_str(&study)]);
    assert!(message.contains("study.json") && message.contains("another spec"), "{message}");
}

#[test]
fn emitted_trials_run_by_sh_collect_into_the_study_a_single_run_makes() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let eval = eval_file(tmp.path());
    let spec = write(tmp.path(), "random.toml", RANDOM_SPEC);
    let (batch, single) = (tmp.path().join("batch"), tmp.path().join("single"));
    let jobs = tmp.path().join("jobs.txt");
    let study_args = |study: &Path| -> Vec<String> {
        [
            "search",
            path_str(&spec),
            path_str(&model),
            "-o",
            path_str(study),
            "--eval",
            path_str(&eval),
            "--sampler",
            "random",
            "--trials",
            "3",
            "--seed",
            "5",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let run = |study: &Path, extra: &[&str]| {
        let mut args = study_args(study);
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        succeeded(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let sh = |file: &Path| {
        let output = Command::new("sh").arg(file).stdin(Stdio::null()).output().unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stderr).unwrap()
    };

    run(&batch, &["--emit", path_str(&jobs), "--keep-models"]);
    let lines = std::fs::read_to_string(&jobs).unwrap();
    assert_eq!(lines.lines().count(), 3, "{lines}");
    for (id, line) in lines.lines().enumerate() {
        assert!(line.ends_with(&format!("--keep-models --trial {id}")), "{line}");
    }
    assert!(!batch.join("study.jsonl").exists(), "emitting runs nothing");
    sh(&jobs);
    for id in 0..3 {
        assert!(batch.join(format!("results/{id}.json")).is_file());
        assert!(batch.join(format!("trials/{id}/model/model.safetensors")).is_file(), "--keep-models");
    }
    // Jobs run twice do nothing the second time.
    assert_eq!(sh(&jobs).matches("has its result file already").count(), 3);

    let collected = run(&batch, &["--collect"]);
    assert!(String::from_utf8_lossy(&collected.stderr).contains("collected 3 trials"), "{collected:?}");
    let table = String::from_utf8(collected.stdout).unwrap();
    assert_eq!(table_rows(&table).len(), 3, "{table}");
    let again = run(&batch, &["--collect"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("collected 0 trials; 3 were logged"), "{again:?}");
    run(&batch, &["--emit", path_str(&jobs)]);
    assert_eq!(std::fs::read_to_string(&jobs).unwrap(), "", "no trial is left to emit");
    assert_eq!(line_count(&batch), 3);

    // The same study run in one process, two trials at a time: the same trials (the seed fixes
    // them) and values.
    run(&single, &["--jobs", "2"]);
    let (batch, single) = (log(&batch), log(&single));
    assert_eq!(batch.len(), 3);
    for (id, record) in &single {
        assert_eq!(record["params"], batch[id]["params"], "trial {id}");
        assert_eq!(record["values"], batch[id]["values"], "trial {id}");
    }
}

#[test]
fn bad_specs_and_flags_fail_with_one_line_naming_the_spec() {
    let tmp = tempfile::tempdir().unwrap();
    let study = tmp.path().join("study");
    let step = "[[steps]]\nstep = \"prune\"\nmethod = \"magnitude\"\nsparsity = \"{sparsity}\"\n";
    let cases = [
        ("[space]\nsparsity = { float = [0.3, 0.7] }\n[[steps]]\nstep = \"prune\"\nmethod = \"magnitude\"\nsparsity = \"{sparsty}\"\n".to_owned(),
         vec![], "unknown placeholder `{sparsty}`"),
        (format!("[space]\nsparsity = {{ float = [0.7, 0.3] }}\n{step}"), vec![], "low 0.7 above high 0.3"),
        (format!("[space]\nsparsity = {{ float = [0.5, 1.5] }}\n{step}"), vec![], "--sparsity"),
        (format!("objectives = [\"accuracy\"]\n[space]\nsparsity = [0.5]\n{step}"), vec![], "unknown objective"),
        (format!("[space]\nsparsity = [0.5]\n{step}"), vec!["--sampler", "halving", "--trials", "2"], "halving"),
    ];
    for (index, (text, flags, expected)) in cases.iter().enumerate() {
        let spec = write(tmp.path(), &format!("spec{index}.toml"), text);
        let mut args = vec!["search", path_str(&spec), "/no/such/model", "-o", path_str(&study)];
        args.extend(flags);
        let message = fails(&args);
        assert!(message.contains(path_str(&spec)) && message.contains(expected), "{text}\n{message}");
    }
    let spec = write(tmp.path(), "good.toml", &format!("[space]\nsparsity = [0.5]\n{step}"));
    let spec = path_str(&spec);
    for (flags, expected) in [
        (vec!["--sampler", "random"], "--trials"),
        (vec!["--sampler", "grid", "--trials", "3"], "--trials"),
        (vec!["--sampler", "tpe"], "tpe"),
        (vec![], "/no/such/model"),
    ] {
        let mut args = vec!["search", spec, "/no/such/model", "-o", path_str(&study)];
        args.extend(&flags);
        let message = fails(&args);
        assert!(message.contains(expected), "{flags:?}: {message}");
    }
    assert!(!study.exists(), "a failed search wrote its study folder");
}
