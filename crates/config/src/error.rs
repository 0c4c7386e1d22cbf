//! The one error type of lathe-config.

use std::fmt;
use std::path::PathBuf;

/// Errors from reading a config, describing or validating a checkpoint, costing a storage format
/// and planning a structural edit.
///
/// Config errors name the file (the path given to [`Config::parse`](crate::Config::parse)) and
/// the key; checkpoint errors name the tensors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum Error {
    #[error("{}: not valid json: {source}", file.display())]
    Json {
        file: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("{}: the top level is not a json object", file.display())]
    NotAnObject { file: PathBuf },

    #[error("{}: key `{key}` is missing", file.display())]
    MissingKey { file: PathBuf, key: String },

    #[error("{}: key `{key}` is {found}: expected {expected}", file.display())]
    BadValue { file: PathBuf, key: String, expected: String, found: String },

    #[error("{}: model_type `{model_type}` is not supported: expected one of {supported}", file.display())]
    UnknownModelType { file: PathBuf, model_type: String, supported: String },

    #[error("{}: key `{key}`: {reason}", file.display())]
    Inconsistent { file: PathBuf, key: String, reason: String },

    #[error("{}: the model is too large to count: its parameter count overflows 64 bits", file.display())]
    TooLarge { file: PathBuf },

    #[error("no tensor name ends with `{anchor}`: cannot find the prefix of the {model_type} weights")]
    NoPrefix { model_type: String, anchor: String },

    #[error("tensor names end with `{anchor}` under several prefixes ({}): cannot choose one", quoted(prefixes))]
    AmbiguousPrefix { anchor: String, prefixes: Vec<String> },

    #[error("checkpoint does not match {}: {mismatch}", file.display())]
    Mismatch { file: PathBuf, mismatch: Box<Mismatch> },

    #[error("invalid storage format `{input}`: {reason}")]
    BadFormat { input: String, reason: String },

    #[error("format {format} cannot store rows of {cols} weights: rows must hold whole blocks of {block}")]
    BlockMisfit { format: String, cols: usize, block: usize },

    #[error("format {format} cannot store a {rows} x {cols} matrix: {reason}")]
    Unsupported { format: String, rows: usize, cols: usize, reason: String },

    #[error("a {rows} x {cols} matrix is too large to count")]
    MatrixTooLarge { rows: usize, cols: usize },

    #[error("tensor `{tensor}`: {source}")]
    InTensor {
        tensor: String,
        #[source]
        source: Box<Error>,
    },

    #[error("{scope}: {what} {index} is out of range for {len} {what}s")]
    OutOfRange { scope: String, what: &'static str, index: usize, len: usize },

    #[error("{scope}: {what}s to keep must be sorted and unique, but {index} follows {previous}")]
    NotSorted { scope: String, what: &'static str, index: usize, previous: usize },

    #[error("{scope} keeps no {what}s: keep at least one")]
    NothingKept { scope: String, what: &'static str },

    #[error("layer {layer} is not kept, so its {what}s cannot be selected")]
    LayerNotKept { layer: usize, what: &'static str },

    #[error(
        "layer {layer}: the kept query heads per kept kv head are {counts:?}: keep the same number of query heads in \
         every kv group that stays (groups of {group})"
    )]
    UnevenGroups { layer: usize, group: usize, counts: Vec<usize> },
}

/// `Result` with lathe-config's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps `self` with the name of the tensor it came from.
    pub(crate) fn in_tensor(self, tensor: &str) -> Error {
        Error::InTensor { tensor: tensor.to_string(), source: Box::new(self) }
    }
}

/// How many names of each kind a [`Mismatch`] message lists before it says "and N more".
pub const LISTED: usize = 10;

/// Everything that differs between a checkpoint's tensors and the ones a config describes, all
/// of it (the message lists the first [`LISTED`] of each kind).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mismatch {
    /// Described tensors the checkpoint lacks, in description order.
    pub missing: Vec<String>,
    /// Checkpoint tensors the description does not know (allowed buffers excluded), in
    /// checkpoint order.
    pub extra: Vec<String>,
    /// Tensors present in both with different shapes.
    pub misshaped: Vec<Misshaped>,
    /// Names the checkpoint lists more than once.
    pub duplicate: Vec<String>,
}

/// A tensor whose stored shape is not the described one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misshaped {
    /// Tensor name.
    pub name: String,
    /// Shape the config implies.
    pub expected: Vec<usize>,
    /// Shape the checkpoint has.
    pub found: Vec<usize>,
}

impl Mismatch {
    /// Whether nothing differs.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.misshaped.is_empty() && self.duplicate.is_empty()
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let misshaped: Vec<String> = self
            .misshaped
            .iter()
            .map(|tensor| format!("`{}` is {:?}, expected {:?}", tensor.name, tensor.found, tensor.expected))
            .collect();
        let quote = |names: &[String]| names.iter().map(|name| format!("`{name}`")).collect::<Vec<_>>();
        let parts = [
            ("missing", quote(&self.missing)),
            ("extra", quote(&self.extra)),
            ("misshaped", misshaped),
            ("listed twice", quote(&self.duplicate)),
        ];
        let mut first = true;
        for (what, items) in parts {
            if items.is_empty() {
                continue;
            }
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            write!(f, "{} {what}: {}", items.len(), items.iter().take(LISTED).cloned().collect::<Vec<_>>().join(", "))?;
            if items.len() > LISTED {
                write!(f, " and {} more", items.len() - LISTED)?;
            }
        }
        Ok(())
    }
}

fn quoted(names: &[String]) -> String {
    names.iter().map(|name| format!("`{name}`")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatch_lists_every_kind_and_caps_each_list() {
        let mismatch = Mismatch {
            missing: (0..12).map(|i| format!("m{i}")).collect(),
            extra: vec!["x".into()],
            misshaped: vec![Misshaped { name: "s".into(), expected: vec![2, 3], found: vec![3, 2] }],
            duplicate: vec![],
        };
        let text = mismatch.to_string();
        assert!(text.starts_with("12 missing: `m0`, `m1`"), "{text}");
        assert!(text.contains("`m9` and 2 more; 1 extra: `x`; 1 misshaped: `s` is [3, 2], expected [2, 3]"), "{text}");
        assert!(!text.contains("`m10`"), "{text}");
        assert!(!text.contains("twice"), "{text}");
        assert!(!mismatch.is_empty());
        assert!(Mismatch::default().is_empty());
    }

    #[test]
    fn messages_are_lower_case_and_name_the_context() {
        let error = Error::AmbiguousPrefix { anchor: "wte.weight".into(), prefixes: vec!["".into(), "a.".into()] };
        assert_eq!(
            error.to_string(),
            "tensor names end with `wte.weight` under several prefixes (``, `a.`): cannot choose one"
        );
        let error = Error::BadFormat { input: "q".into(), reason: "r".into() }.in_tensor("t");
        assert_eq!(error.to_string(), "tensor `t`: invalid storage format `q`: r");
    }
}
