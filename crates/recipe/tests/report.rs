//! `write_report` end to end: the four files, their JSON shape, and what a reader sees.

use std::collections::BTreeMap;
use std::fs;

use lathe_recipe::Error;
use lathe_recipe::report::{self, EvalSet, FILES, Latency, Report, Row, Speedup};

fn row(name: &str, recipe: &str, size_mb: f64, single: f64, batched: f64, fidelity: [f64; 3]) -> Row {
    let [mean_cosine, min_cosine, top1_agreement] = fidelity;
    Row {
        name: name.to_owned(),
        recipe: recipe.to_owned(),
        size_bytes: (size_mb * 1e6) as u64,
        compression: 0.0,
        latency_ms: Latency { single, batched },
        speedup: Speedup { single: 0.0, batched: 0.0 },
        baseline_latency_ms: None,
        mean_cosine,
        min_cosine,
        spearman: Some(mean_cosine.min(1.0) - 0.002),
        top1_agreement,
        compress_seconds: 3.0,
        kernels: BTreeMap::from([("dense f32".to_owned(), 36)]),
    }
}

/// A plausible MiniLM comparison, numbers made up by hand.
fn minilm() -> Report {
    let mut rows = vec![
        row("fp32", "load", 90.9, 1900.0, 700.0, [1.0, 1.0, 1.0]),
        row("f16", "cast f16", 45.5, 1950.0, 720.0, [0.99999, 0.9999, 1.0]),
        row("int8-channel w8a8", "quantize int8-channel w8a8", 23.3, 1100.0, 420.0, [0.9962, 0.981, 0.96]),
        row("q4_0", "quantize q4_0", 13.1, 1300.0, 520.0, [0.962, 0.871, 0.92]),
        row("wanda 2:4", "prune wanda 2:4", 90.9, 1880.0, 690.0, [0.941, 0.82, 0.85]),
        row("distill 3 layers + int8", "shrink 3; distill; quantize int8", 11.9, 560.0, 210.0, [0.951, 0.88, 0.83]),
    ];
    rows[0].compress_seconds = 0.0;
    rows[0].spearman = Some(1.0);
    rows[2].kernels = BTreeMap::from([("int8-channel".to_owned(), 36)]);
    rows[4].kernels = BTreeMap::from([("sparse 2:4".to_owned(), 36)]);
    rows[4].spearman = None;
    rows[5].compress_seconds = 612.0;
    let mut report = Report {
        model: "sentence-transformers/all-MiniLM-L6-v2".to_owned(),
        machine: report::machine_description(),
        eval_set: EvalSet { name: "lathe eval".to_owned(), n_sentences: 280, sha256: "ab".repeat(32) },
        rows,
        latency_sentences: None,
    };
    report.fill_ratios().unwrap();
    report
}

#[test]
fn writes_every_file_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nested").join("compare");
    report::write_report(&out, &minilm()).unwrap();
    let mut names: Vec<String> =
        fs::read_dir(&out).unwrap().map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    let mut expected: Vec<String> = FILES.iter().map(|name| name.to_string()).collect();
    expected.sort();
    assert_eq!(names, expected, "temporary files left behind or a file missing");

    // Writing again replaces the files in place.
    let mut changed = minilm();
    changed.model = "another model".to_owned();
    report::write_report(&out, &changed).unwrap();
    assert!(fs::read_to_string(out.join("report.md")).unwrap().starts_with("# lathe compare: another model\n"));
    assert_eq!(fs::read_dir(&out).unwrap().count(), FILES.len());
}

#[test]
fn json_has_exactly_the_issue_keys_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let report = minilm();
    report::write_report(dir.path(), &report).unwrap();
    let text = fs::read_to_string(dir.path().join("report.json")).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();

    let keys = |value: &serde_json::Value| -> Vec<String> { value.as_object().unwrap().keys().cloned().collect() };
    assert_eq!(keys(&value), ["model", "machine", "eval_set", "rows"]);
    assert_eq!(keys(&value["eval_set"]), ["name", "n_sentences", "sha256"]);
    let rows = value["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6);
    for row in rows {
        assert_eq!(
            keys(row),
            [
                "name",
                "recipe",
                "size_bytes",
                "compression",
                "latency_ms",
                "speedup",
                "mean_cosine",
                "min_cosine",
                "spearman",
                "top1_agreement",
                "compress_seconds",
                "kernels"
            ]
        );
        assert_eq!(keys(&row["latency_ms"]), ["single", "batched"]);
        assert_eq!(keys(&row["speedup"]), ["single", "batched"]);
    }
    assert!(rows[4]["spearman"].is_null());
    assert_eq!(rows[2]["kernels"], serde_json::json!({"int8-channel": 36}));
    assert_eq!(rows[0]["size_bytes"], serde_json::json!(90_900_000));

    let back: Report = serde_json::from_str(&text).unwrap();
    assert_eq!(back, report);
}

#[test]
fn markdown_reads_right() {
    let dir = tempfile::tempdir().unwrap();
    report::write_report(dir.path(), &minilm()).unwrap();
    let markdown = fs::read_to_string(dir.path().join("report.md")).unwrap();
    let section = |name: &str| -> String {
        markdown.split(&format!("\n### {name}\n")).nth(1).unwrap().split("\n### ").next().unwrap().to_owned()
    };

    let distilled = section("distill 3 layers + int8");
    assert!(distilled.contains("- 7.6x smaller than fp32 (11.9 MB vs 90.9 MB)\n"));
    assert!(distilled.contains("- 3.4x faster one sentence at a time (560 ms vs 1900 ms)\n"));
    assert!(distilled.contains("- smallest of the 6 rows\n"));
    assert!(distilled.contains("- fastest batched of the 6 rows\n"));
    assert!(distilled.contains("- slow to make: 612 s to compress\n"));

    let f16 = section("f16");
    assert!(f16.contains("- 2.00x smaller than fp32 (45.5 MB vs 90.9 MB)\n"));
    assert!(f16.contains("- most faithful of the 5 compressed rows\n"));
    assert!(f16.contains("- indistinguishable in practice: mean cosine 0.99999 (min 0.9999)"));
    assert!(f16.contains("- no faster one sentence at a time (1950 ms vs 1900 ms)\n"));

    let sparse = section("wanda 2:4");
    assert!(sparse.contains("- noticeable loss of fidelity: mean cosine 0.941 (min 0.820), top-1 agreement 85%\n"));
    assert!(sparse.contains("- least faithful of the 5 compressed rows\n"));
    assert!(sparse.contains("- dominated on size vs fidelity (this row: 90.9 MB, mean cosine 0.941) by fp32"));

    let table_row = markdown.lines().find(|line| line.starts_with("| wanda 2:4 |")).unwrap();
    assert!(table_row.contains("| n/a |"), "{table_row}");
    assert!(table_row.contains("| sparse 2:4 ×36 |"), "{table_row}");
    assert!(!markdown.contains("NaN"));
}

#[test]
fn svgs_are_well_formed_and_label_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let report = minilm();
    report::write_report(dir.path(), &report).unwrap();
    for file in ["fidelity_vs_size.svg", "fidelity_vs_latency.svg"] {
        let svg = fs::read_to_string(dir.path().join(file)).unwrap();
        assert!(svg.starts_with("<svg"), "{file}");
        assert!(svg.trim_end().ends_with("</svg>"), "{file}");
        assert!(!svg.contains("NaN"), "{file}");
        for row in &report.rows {
            assert!(svg.contains(&row.name), "{file} lacks {}", row.name);
        }
    }
}

#[test]
fn bad_reports_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut bad = minilm();
    bad.rows[3].mean_cosine = f64::NAN;
    match report::write_report(&out, &bad) {
        Err(Error::NonFiniteField { row, field, .. }) => assert_eq!((row.as_str(), field), ("q4_0", "mean_cosine")),
        other => panic!("expected NonFinite, got {other:?}"),
    }
    assert!(!out.exists());
    bad.rows.clear();
    assert!(matches!(report::write_report(&out, &bad), Err(Error::NoRows)));

    // A folder that cannot be created: its parent is a file.
    let file = dir.path().join("file");
    fs::write(&file, b"x").unwrap();
    match report::write_report(&file.join("out"), &minilm()) {
        Err(Error::Io { path, .. }) => assert_eq!(path, file.join("out")),
        other => panic!("expected Io, got {other:?}"),
    }
}
