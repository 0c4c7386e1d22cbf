//! Where the real models are, for the tests and benches of every crate (included with
//! `#[path]`, so each test binary compiles its own copy): `$LATHE_MODELS_DIR` (`cargo xtask`
//! sets it), else `$XDG_CACHE_HOME/lathe/models`, else `~/.cache/lathe/models`, the folders
//! `cargo xtask fetch-models` fills. A missing model fails the caller: it is never skipped.
#![allow(dead_code)] // each binary uses what it needs

use std::path::PathBuf;

/// The models folder.
pub fn models_dir() -> PathBuf {
    let non_empty = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty()).map(PathBuf::from);
    if let Some(dir) = non_empty("LATHE_MODELS_DIR") {
        return dir;
    }
    if let Some(cache) = non_empty("XDG_CACHE_HOME").filter(|cache| cache.is_absolute()) {
        return cache.join("lathe").join("models");
    }
    non_empty("HOME").expect("neither LATHE_MODELS_DIR nor HOME is set").join(".cache").join("lathe").join("models")
}

/// all-MiniLM-L6-v2's folder; panics with what to run when it is not there.
pub fn minilm_dir() -> PathBuf {
    let dir = models_dir().join("all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file() && dir.join("tokenizer.json").is_file(),
        "{} does not hold all-MiniLM-L6-v2 (model.safetensors, tokenizer.json): run `cargo xtask fetch-models`, or set \
         LATHE_MODELS_DIR to the folder that holds it",
        dir.display()
    );
    dir
}
