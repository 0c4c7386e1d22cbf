//! Repository checks, written as ordinary tests so that `cargo test --workspace` runs them.
//!
//! Each test reads files relative to the workspace root and reports every violation it finds
//! (with the path), not just the first.

use std::fs;
use std::path::{Path, PathBuf};

use crate::project_root;

/// Which lathe crates each lathe crate may depend on (`[dependencies]` only). The crate map in
/// ARCHITECTURE.md says the same; change both together.
const LAYERING: &[(&str, Allowed)] = &[
    ("lathe-tensor", Allowed::Only(&[])),
    ("lathe-quant", Allowed::Only(&[])),
    ("lathe-sparse", Allowed::Only(&[])),
    ("lathe-prune", Allowed::Only(&[])),
    ("lathe-distill", Allowed::Only(&[])),
    ("lathe-config", Allowed::Only(&[])),
    ("lathe-search", Allowed::Only(&[])),
    ("lathe-calib", Allowed::Only(&["lathe-quant", "lathe-prune"])),
    ("lathe-model", Allowed::Only(&["lathe-tensor", "lathe-quant", "lathe-sparse", "lathe-config"])),
    ("lathe-recipe", Allowed::AnyExcept(&["lathe-cli"])),
    ("lathe-cli", Allowed::Any),
];

#[derive(Debug)]
enum Allowed {
    Only(&'static [&'static str]),
    AnyExcept(&'static [&'static str]),
    Any,
}

impl Allowed {
    fn permits(&self, dependency: &str) -> bool {
        match self {
            Allowed::Only(allowed) => allowed.contains(&dependency),
            Allowed::AnyExcept(forbidden) => !forbidden.contains(&dependency),
            Allowed::Any => true,
        }
    }
}

/// A crate under `crates/`: its folder, and its package name and manifest text.
#[derive(Debug)]
struct Crate {
    dir: PathBuf,
    package: String,
    manifest: String,
}

fn crates() -> Vec<Crate> {
    let crates_dir = project_root().join("crates");
    let entries =
        fs::read_dir(&crates_dir).unwrap_or_else(|error| panic!("cannot list {}: {error}", crates_dir.display()));
    let mut crates = Vec::new();
    for entry in entries {
        let dir = entry.unwrap_or_else(|error| panic!("cannot list {}: {error}", crates_dir.display())).path();
        let manifest_path = dir.join("Cargo.toml");
        if !manifest_path.is_file() {
            continue;
        }
        let manifest = read(&manifest_path);
        let package = package_name(&manifest)
            .unwrap_or_else(|| panic!("{} has no `name` in its [package] section", manifest_path.display()));
        crates.push(Crate { dir, package, manifest });
    }
    crates.sort_by(|a, b| a.dir.cmp(&b.dir));
    assert!(!crates.is_empty(), "no crates found under {}", crates_dir.display());
    crates
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

fn relative(path: &Path) -> String {
    path.strip_prefix(project_root()).unwrap_or(path).display().to_string()
}

/// The `key = value` lines of one `[section]` of a manifest, comments and blank lines dropped.
/// This is line scanning, not TOML parsing: enough for manifests written in cargo's usual style.
fn section_lines<'a>(manifest: &'a str, section: &str) -> Vec<&'a str> {
    let mut inside = false;
    let mut lines = Vec::new();
    for line in manifest.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.starts_with('[') {
            inside = line == format!("[{section}]");
        } else if inside && !line.is_empty() {
            lines.push(line);
        }
    }
    lines
}

fn key_of(line: &str) -> &str {
    line.split(['=', '.', ' ', '\t']).next().unwrap_or("").trim_matches('"')
}

fn package_name(manifest: &str) -> Option<String> {
    section_lines(manifest, "package").into_iter().find(|line| key_of(line) == "name").and_then(|line| {
        let (_, value) = line.split_once('=')?;
        Some(value.trim().trim_matches('"').to_owned())
    })
}

/// The lathe crates in `[dependencies]`, whether written as `lathe-x = ...`,
/// `lathe-x.workspace = true` or a `[dependencies.lathe-x]` table.
fn lathe_dependencies(manifest: &str) -> Vec<String> {
    let mut dependencies: Vec<String> = section_lines(manifest, "dependencies")
        .into_iter()
        .map(key_of)
        .filter(|key| key.starts_with("lathe-"))
        .map(str::to_owned)
        .collect();
    for line in manifest.lines() {
        if let Some(name) = line.trim().strip_prefix("[dependencies.").and_then(|rest| rest.strip_suffix(']'))
            && name.trim_matches('"').starts_with("lathe-")
        {
            dependencies.push(name.trim_matches('"').to_owned());
        }
    }
    dependencies.sort();
    dependencies.dedup();
    dependencies
}

fn assert_no_problems(what: &str, problems: &[String]) {
    assert!(problems.is_empty(), "{what}:\n  {}", problems.join("\n  "));
}

#[test]
fn every_crate_has_a_readme() {
    let problems: Vec<String> = crates()
        .iter()
        .filter(|krate| !krate.dir.join("README.md").is_file())
        .map(|krate| format!("{} ({}) has no README.md", relative(&krate.dir), krate.package))
        .collect();
    assert_no_problems("crates without a README (purpose, place in the layering, a usage snippet)", &problems);
}

#[test]
fn every_crate_uses_the_workspace_lints() {
    let problems: Vec<String> = crates()
        .iter()
        .filter(|krate| {
            !section_lines(&krate.manifest, "lints")
                .iter()
                .any(|line| line.split_whitespace().collect::<String>() == "workspace=true")
        })
        .map(|krate| format!("{} lacks `[lints] workspace = true`", relative(&krate.dir.join("Cargo.toml"))))
        .collect();
    assert_no_problems("crates that do not inherit the workspace lints", &problems);
}

#[test]
fn no_placeholders_or_ignored_tests() {
    // Spelled in pieces so that this file does not match its own check.
    let needles = [concat!("todo", "!("), concat!("unimplemented", "!("), concat!("#[", "ignore")];
    let root = project_root();
    let this_file = root.join("xtask").join("src").join("tidy.rs");
    let mut files = Vec::new();
    for dir in ["crates", "tests", "xtask/src"] {
        collect_rust_files(&root.join(dir), &mut files);
    }
    let mut problems = Vec::new();
    for file in files.iter().filter(|file| **file != this_file) {
        for (line_index, line) in read(file).lines().enumerate() {
            for needle in needles.iter().filter(|needle| line.contains(**needle)) {
                problems.push(format!("{}:{}: `{needle}`", relative(file), line_index + 1));
            }
        }
    }
    assert_no_problems("placeholders or ignored tests (finish the code, or assert the error instead)", &problems);
}

/// Every `.rs` file under `dir`, skipping build output and hidden folders; nothing if `dir` is
/// absent.
fn collect_rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries {
        let path = entry.unwrap_or_else(|error| panic!("cannot list {}: {error}", dir.display())).path();
        let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                collect_rust_files(&path, files);
            }
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn crates_respect_the_layering() {
    let mut problems = Vec::new();
    for krate in crates() {
        let manifest = relative(&krate.dir.join("Cargo.toml"));
        let Some((_, allowed)) = LAYERING.iter().find(|(package, _)| *package == krate.package) else {
            problems.push(format!(
                "{manifest}: `{}` is not in the layering table (xtask/src/tidy.rs and the crate map in ARCHITECTURE.md)",
                krate.package
            ));
            continue;
        };
        for dependency in lathe_dependencies(&krate.manifest) {
            if dependency == krate.package || !allowed.permits(&dependency) {
                problems.push(format!("{manifest}: `{}` may not depend on `{dependency}`", krate.package));
            }
        }
    }
    assert_no_problems("layering violations", &problems);
}

#[test]
fn architecture_lists_every_crate() {
    let path = project_root().join("ARCHITECTURE.md");
    let architecture = read(&path);
    let problems: Vec<String> = crates()
        .iter()
        .filter(|krate| {
            let folder = format!("crates/{}", krate.dir.file_name().unwrap_or_default().to_string_lossy());
            !architecture.contains(&krate.package) && !architecture.contains(&folder)
        })
        .map(|krate| format!("`{}` ({}) is not described", krate.package, relative(&krate.dir)))
        .collect();
    assert_no_problems(&format!("crates missing from {}", relative(&path)), &problems);
}

#[test]
fn ci_script_runs_xtask_ci() {
    let path = project_root().join(".ci").join("run");
    assert!(read(&path).contains("cargo xtask ci"), "{} does not run `cargo xtask ci`", relative(&path));
}

#[test]
fn readme_shows_the_xtask_commands() {
    let path = project_root().join("README.md");
    let readme = read(&path);
    let missing: Vec<String> = ["cargo xtask demo", "cargo xtask ci"]
        .into_iter()
        .filter(|command| !readme.contains(command))
        .map(|command| format!("`{command}`"))
        .collect();
    assert_no_problems(&format!("{} does not mention", relative(&path)), &missing);
}

#[test]
fn manifest_scanning_finds_lathe_dependencies_in_every_spelling() {
    let manifest = r#"
[package]
name = "lathe-calib" # the calibrator

[dependencies]
anyhow.workspace = true
lathe-quant.workspace = true
"lathe-prune" = { path = "../prune" }
# lathe-model = "commented out"

[dev-dependencies]
lathe-model.workspace = true

[dependencies.lathe-sparse]
path = "../sparse"

[lints]
workspace = true
"#;
    assert_eq!(package_name(manifest).as_deref(), Some("lathe-calib"));
    assert_eq!(lathe_dependencies(manifest), ["lathe-prune", "lathe-quant", "lathe-sparse"]);
    let calib = &LAYERING.iter().find(|(package, _)| *package == "lathe-calib").expect("calib is in the table").1;
    assert!(calib.permits("lathe-quant"));
    assert!(!calib.permits("lathe-sparse"));
}
