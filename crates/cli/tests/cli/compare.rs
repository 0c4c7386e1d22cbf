//! `lathe compare` on the real all-MiniLM-L6-v2 with a folder of two recipes and a small
//! evaluation file: the report's files, its kernels, and its fidelity numbers equal to what
//! `lathe eval` measures on each output folder with the same sentences.

use serde_json::Value;

use crate::encode::{golden_file, minilm_dir, path_str, succeeded};

#[test]
fn the_report_agrees_with_lathe_eval_on_every_output_folder() {
    let model = minilm_dir();
    let model = path_str(&model);
    let tmp = tempfile::tempdir().unwrap();
    let recipes = tmp.path().join("recipes");
    std::fs::create_dir(&recipes).unwrap();
    std::fs::write(recipes.join("a.toml"), "name = \"q8_0\"\n[[steps]]\nstep = \"quantize\"\nscheme = \"q8_0\"\n")
        .unwrap();
    std::fs::write(
        recipes.join("b.toml"),
        "name = \"magnitude 2:4\"\n[[steps]]\nstep = \"prune\"\nmethod = \"magnitude\"\npattern = \"2:4\"\n",
    )
    .unwrap();
    let text = std::fs::read_to_string(golden_file("sentences.txt")).unwrap();
    let eval = tmp.path().join("eval.txt");
    std::fs::write(&eval, text.lines().take(12).collect::<Vec<_>>().join("\n")).unwrap();
    let report_dir = tmp.path().join("report");

    succeeded(&[
        "compare",
        model,
        "-o",
        path_str(&report_dir),
        "--recipes",
        path_str(&recipes),
        "--eval",
        path_str(&eval),
        "--quick",
    ]);
    for name in ["report.md", "report.json", "fidelity_vs_size.svg", "fidelity_vs_latency.svg"] {
        assert!(report_dir.join(name).is_file(), "{name} is missing");
    }
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(report_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["eval_set"]["n_sentences"], 12);
    let rows = report["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|row| row["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["fp32", "q8_0", "magnitude 2:4"]);
    assert_eq!(rows[1]["kernels"]["q8_0"], 36);
    assert_eq!(rows[2]["kernels"]["sparse 2:4"], 36);
    assert!(rows[1]["size_bytes"].as_u64().unwrap() < rows[0]["size_bytes"].as_u64().unwrap());

    for (row, folder) in [(&rows[1], "q8-0"), (&rows[2], "magnitude-2-4")] {
        let folder = report_dir.join("models").join(folder);
        let output =
            succeeded(&["eval", path_str(&folder), "--reference", model, "--input", path_str(&eval), "--json"]);
        let measured: Value = serde_json::from_slice(&output.stdout).unwrap();
        for key in ["mean_cosine", "min_cosine", "spearman", "top1_agreement"] {
            assert_eq!(measured[key], row[key], "{folder:?} {key}");
        }
    }
}
