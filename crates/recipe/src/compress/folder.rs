//! Model folders: the source a step reads, and the staging folder it writes and then moves into
//! place, so that a failed or interrupted step never leaves a half-written model.

use std::fs;
use std::path::{Path, PathBuf};

use lathe_config::{Architecture, Config};
use lathe_tensor::Checkpoint;
use serde_json::{Map, Value};

use super::record::Record;
use crate::{Error, Result};

/// The record every lathe output folder carries: what was done to it and with what.
pub const RECORD_FILE: &str = "lathe.json";

/// Weight files and folders of other runtimes: a compressed folder carries none of them, since
/// they would describe the uncompressed model.
fn is_weight_file(name: &str) -> bool {
    let weight_ext = [".safetensors", ".bin", ".pt", ".pth", ".onnx", ".gguf", ".h5", ".msgpack", ".ot"];
    weight_ext.iter().any(|ext| name.ends_with(ext))
        || name == "model.safetensors.index.json"
        || name == "pytorch_model.bin.index.json"
        || matches!(name, "onnx" | "openvino" | "config.json" | RECORD_FILE)
}

/// A model folder opened for a step: its config (parsed, and as JSON to edit), its checkpoint and
/// its description, and the record of earlier lathe steps if any.
#[derive(Debug)]
pub struct Source {
    /// The folder.
    pub dir: PathBuf,
    /// The parsed config.json.
    pub config: Config,
    /// The open checkpoint (memory-mapped).
    pub checkpoint: Checkpoint,
    /// Every tensor the config implies, with names and shapes.
    pub architecture: Architecture,
    /// `lathe.json`, when an earlier lathe step wrote the folder.
    pub record: Option<Record>,
}

impl Source {
    /// Opens `dir`: config.json, the checkpoint, and lathe.json if present. The checkpoint's
    /// tensors must be the ones the config describes (task heads aside).
    pub fn open(dir: impl AsRef<Path>) -> Result<Source> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(Error::NotAFolder { path: dir });
        }
        let config_path = dir.join("config.json");
        let text =
            fs::read_to_string(&config_path).map_err(|source| Error::Io { path: config_path.clone(), source })?;
        let config = Config::parse(&text, &config_path)?;
        let checkpoint = Checkpoint::open(&dir)?;
        let names: Vec<String> = checkpoint.tensors().map(|(_, info)| info.name.clone()).collect();
        let architecture = Architecture::detect(&config, &names)?;
        let record_path = dir.join(RECORD_FILE);
        let record = if record_path.is_file() { Some(Record::read(&record_path)?) } else { None };
        Ok(Source { dir, config, checkpoint, architecture, record })
    }

    /// Whether the folder's weights are already quantized (a `quantization_config` in its config).
    pub fn is_quantized(&self) -> bool {
        self.config.json().contains_key("quantization_config")
    }

    /// The config as a JSON object, to edit for the output.
    pub fn config_json(&self) -> Map<String, Value> {
        self.config.json().clone()
    }

    /// The names of the encoder linears' weights, with their output and input features.
    pub fn linear_weights(&self) -> Vec<(String, usize, usize, lathe_config::Role, usize)> {
        self.architecture
            .layers()
            .iter()
            .flat_map(|layer| {
                layer.linears.iter().map(move |linear| {
                    (linear.weight.clone(), linear.out_features, linear.in_features, linear.role, layer.index)
                })
            })
            .collect()
    }
}

/// An output folder being written: a hidden temporary folder beside the target, renamed into
/// place by [`commit`](Self::commit). Dropping it without committing removes it.
#[derive(Debug)]
pub struct Staging {
    out: PathBuf,
    dir: tempfile::TempDir,
}

impl Staging {
    /// Prepares to write `out`. An existing `out` must be an empty folder or one lathe wrote (it
    /// holds `lathe.json`); it is replaced only when the new folder is complete.
    pub fn new(out: impl AsRef<Path>) -> Result<Staging> {
        let out =
            std::path::absolute(out.as_ref()).map_err(|source| Error::Io { path: out.as_ref().into(), source })?;
        check_replaceable(&out)?;
        let parent = out.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        fs::create_dir_all(&parent).map_err(|source| Error::Io { path: parent.clone(), source })?;
        let stem = out.file_name().map_or_else(|| "model".into(), |name| name.to_string_lossy().into_owned());
        let dir = tempfile::Builder::new()
            .prefix(&format!(".{stem}.partial-"))
            .tempdir_in(&parent)
            .map_err(|source| Error::Io { path: parent.clone(), source })?;
        Ok(Staging { out, dir })
    }

    /// The temporary folder to write into.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The folder this will become.
    pub fn target(&self) -> &Path {
        &self.out
    }

    /// Copies everything of `source` that is not a weight file, config.json or lathe.json
    /// (tokenizer, vocabulary, pooling and sentence-transformers files, README ...).
    pub fn copy_companions(&self, source: &Path) -> Result<()> {
        copy_tree(source, self.path(), true)
    }

    /// Writes `value` as pretty JSON to `name` in the folder.
    pub fn write_json(&self, name: &str, value: &Value) -> Result<()> {
        let path = self.path().join(name);
        let mut text = serde_json::to_string_pretty(value).expect("JSON values always serialise");
        text.push('\n');
        fs::write(&path, text).map_err(|source| Error::Io { path, source })
    }

    /// Moves the finished folder into place, replacing an earlier lathe output there.
    pub fn commit(self) -> Result<PathBuf> {
        check_replaceable(&self.out)?;
        let staged = self.dir.keep();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        if self.out.exists() {
            // Rename the old folder aside first: the target is never missing a complete model for
            // longer than two renames.
            let old = staged.with_extension("old");
            fs::rename(&self.out, &old).map_err(io(&self.out))?;
            fs::rename(&staged, &self.out).map_err(io(&self.out))?;
            fs::remove_dir_all(&old).map_err(io(&old))?;
        } else {
            fs::rename(&staged, &self.out).map_err(io(&self.out))?;
        }
        Ok(self.out)
    }
}

fn check_replaceable(out: &Path) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    if !out.is_dir() {
        return Err(Error::OutputExists { path: out.to_path_buf(), reason: "it is a file".into() });
    }
    let mut entries = fs::read_dir(out).map_err(|source| Error::Io { path: out.to_path_buf(), source })?;
    if entries.next().is_none() || out.join(RECORD_FILE).is_file() {
        return Ok(());
    }
    Err(Error::OutputExists {
        path: out.to_path_buf(),
        reason: format!("it is not empty and has no {RECORD_FILE}, so lathe did not write it"),
    })
}

fn copy_tree(from: &Path, to: &Path, top: bool) -> Result<()> {
    let entries = fs::read_dir(from).map_err(|source| Error::Io { path: from.to_path_buf(), source })?;
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io { path: from.to_path_buf(), source })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || (top && is_weight_file(&name)) {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        if src.is_dir() {
            fs::create_dir_all(&dst).map_err(|source| Error::Io { path: dst.clone(), source })?;
            copy_tree(&src, &dst, false)?;
        } else {
            fs::copy(&src, &dst).map_err(|source| Error::Io { path: src.clone(), source })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_replaces_only_lathe_folders() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("out");
        let staging = Staging::new(&out).unwrap();
        fs::write(staging.path().join(RECORD_FILE), "{}").unwrap();
        fs::write(staging.path().join("a.txt"), "first").unwrap();
        // Nothing is visible at the target before the commit.
        assert!(!out.exists());
        staging.commit().unwrap();
        assert_eq!(fs::read_to_string(out.join("a.txt")).unwrap(), "first");

        let staging = Staging::new(&out).unwrap();
        fs::write(staging.path().join(RECORD_FILE), "{}").unwrap();
        fs::write(staging.path().join("b.txt"), "second").unwrap();
        staging.commit().unwrap();
        assert!(!out.join("a.txt").exists() && out.join("b.txt").is_file());

        let foreign = root.path().join("foreign");
        fs::create_dir(&foreign).unwrap();
        fs::write(foreign.join("keep.txt"), "mine").unwrap();
        let err = Staging::new(&foreign).unwrap_err();
        assert!(err.to_string().contains("foreign") && err.to_string().contains("lathe.json"), "{err}");
        // A dropped staging folder leaves nothing behind.
        drop(Staging::new(root.path().join("never")).unwrap());
        let left: Vec<_> = fs::read_dir(root.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 2, "{left:?}");
    }

    #[test]
    fn companions_skip_weights_and_config() {
        let root = tempfile::tempdir().unwrap();
        let src = root.path().join("src");
        fs::create_dir_all(src.join("1_Pooling")).unwrap();
        for name in ["config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "pytorch_model.bin"] {
            fs::write(src.join(name), name).unwrap();
        }
        fs::write(src.join("1_Pooling/config.json"), "{}").unwrap();
        let staging = Staging::new(root.path().join("out")).unwrap();
        staging.copy_companions(&src).unwrap();
        let mut names: Vec<String> =
            fs::read_dir(staging.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        names.sort();
        assert_eq!(names, ["1_Pooling", "tokenizer.json", "vocab.txt"]);
        assert!(staging.path().join("1_Pooling/config.json").is_file());
    }
}
