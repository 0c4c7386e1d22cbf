//! A model folder read as one checkpoint: a single `model.safetensors` or the shards listed by
//! `model.safetensors.index.json`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crate::error::io_error;
use crate::{Error, Result, SafeTensors, TensorInfo, TensorView};

/// The index file of a sharded checkpoint, as transformers writes it.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The single-file checkpoint name.
pub const SINGLE_FILE: &str = "model.safetensors";

/// One or more safetensors shards that together hold a model's tensors.
#[derive(Debug)]
pub struct Checkpoint {
    shards: Vec<(PathBuf, SafeTensors)>,
    /// Tensor name to (shard, index in that shard's tensor list).
    by_name: HashMap<String, (usize, usize)>,
    /// Every tensor as (shard, index), in shard order then file order.
    order: Vec<(usize, usize)>,
}

impl Checkpoint {
    /// Opens a safetensors file, or a folder holding `model.safetensors.index.json` (its shards)
    /// or `model.safetensors`.
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
        let path = path.as_ref();
        if !path.is_dir() {
            return Checkpoint::from_shards(vec![path.to_path_buf()]);
        }
        let index = path.join(INDEX_FILE);
        if index.is_file() {
            return Checkpoint::from_index(path, &index);
        }
        let single = path.join(SINGLE_FILE);
        if single.is_file() {
            return Checkpoint::from_shards(vec![single]);
        }
        Err(Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no {INDEX_FILE} or {SINGLE_FILE} in this folder"),
            ),
        })
    }

    fn from_index(dir: &Path, index: &Path) -> Result<Checkpoint> {
        let file = index.display().to_string();
        let text = std::fs::read_to_string(index).map_err(io_error(index))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|err| Error::BadIndex { file: file.clone(), message: format!("invalid JSON: {err}") })?;
        let weight_map = json.get("weight_map").and_then(|v| v.as_object()).ok_or_else(|| Error::BadIndex {
            file: file.clone(),
            message: "`weight_map` is missing or not an object".to_owned(),
        })?;
        let mut shard_names = BTreeSet::new();
        let mut expected = HashMap::with_capacity(weight_map.len());
        for (tensor, shard) in weight_map {
            let shard = shard.as_str().filter(|s| is_plain_file_name(s)).ok_or_else(|| Error::BadIndex {
                file: file.clone(),
                message: format!("tensor `{tensor}` maps to {shard}, not a file name in this folder"),
            })?;
            shard_names.insert(shard.to_owned());
            expected.insert(tensor.clone(), shard.to_owned());
        }
        let checkpoint = Checkpoint::from_shards(shard_names.iter().map(|name| dir.join(name)).collect())?;
        for (tensor, (shard, _)) in &checkpoint.by_name {
            let shard_name = checkpoint.shards[*shard].0.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            match expected.get(tensor) {
                Some(listed) if listed == shard_name => {}
                Some(listed) => {
                    return Err(Error::BadIndex {
                        file: file.clone(),
                        message: format!("tensor `{tensor}` is listed in {listed} but stored in {shard_name}"),
                    });
                }
                None => {
                    return Err(Error::BadIndex {
                        file: file.clone(),
                        message: format!("tensor `{tensor}` in {shard_name} is not in `weight_map`"),
                    });
                }
            }
        }
        if let Some(missing) = expected.keys().find(|name| !checkpoint.by_name.contains_key(*name)) {
            return Err(Error::BadIndex {
                file,
                message: format!("tensor `{missing}` is listed in {} but not stored there", expected[missing]),
            });
        }
        Ok(checkpoint)
    }

    fn from_shards(paths: Vec<PathBuf>) -> Result<Checkpoint> {
        let mut shards = Vec::with_capacity(paths.len());
        let mut by_name = HashMap::new();
        let mut order = Vec::new();
        for (shard_index, path) in paths.into_iter().enumerate() {
            let shard = SafeTensors::open(&path)?;
            for (tensor_index, info) in shard.tensors().iter().enumerate() {
                if by_name.insert(info.name.clone(), (shard_index, tensor_index)).is_some() {
                    return Err(Error::DuplicateTensor { file: path.display().to_string(), tensor: info.name.clone() });
                }
                order.push((shard_index, tensor_index));
            }
            shards.push((path, shard));
        }
        Ok(Checkpoint { shards, by_name, order })
    }

    /// The shard files with their parsed contents.
    pub fn shards(&self) -> impl Iterator<Item = (&Path, &SafeTensors)> {
        self.shards.iter().map(|(path, shard)| (path.as_path(), shard))
    }

    /// Number of tensors over all shards.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether the checkpoint holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Every tensor's info with the path of the shard holding it (offsets are in that shard).
    pub fn tensors(&self) -> impl Iterator<Item = (&Path, &TensorInfo)> {
        self.order
            .iter()
            .map(|&(shard, index)| (self.shards[shard].0.as_path(), &self.shards[shard].1.tensors()[index]))
    }

    /// The shard file holding the named tensor (errors about that tensor name it); for a name
    /// the checkpoint lacks, the first shard, as [`Checkpoint::tensor`]'s error does.
    pub fn file_of(&self, name: &str) -> &Path {
        let shard = self.by_name.get(name).map_or(0, |&(shard, _)| shard);
        self.shards.get(shard).map_or(Path::new(""), |(path, _)| path.as_path())
    }

    /// A zero-copy view of the named tensor, from whichever shard holds it.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        match self.by_name.get(name) {
            Some(&(shard, _)) => self.shards[shard].1.tensor(name),
            None => Err(Error::NoSuchTensor {
                file: self.shards.first().map(|(p, _)| p.display().to_string()).unwrap_or_default(),
                tensor: name.to_owned(),
            }),
        }
    }

    /// Visits every tensor of every shard with bounded residency (see
    /// [`SafeTensors::stream`]).
    pub fn stream<E>(&self, mut visit: impl FnMut(TensorView<'_>) -> Result<(), E>) -> Result<(), E> {
        for (_, shard) in &self.shards {
            shard.stream(&mut visit)?;
        }
        Ok(())
    }

    /// The `__metadata__` of every shard, merged (first shard wins on a repeated key).
    pub fn metadata(&self) -> Vec<(String, String)> {
        let mut merged: Vec<(String, String)> = Vec::new();
        for (_, shard) in &self.shards {
            for (key, value) in shard.metadata() {
                if !merged.iter().any(|(k, _)| k == key) {
                    merged.push((key.clone(), value.clone()));
                }
            }
        }
        merged
    }
}

fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && Path::new(name).file_name().and_then(|n| n.to_str()) == Some(name)
}
