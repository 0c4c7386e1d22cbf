//! The one error type of lathe-model.

use std::io;
use std::path::PathBuf;

/// Errors from loading a model, its tokenizer and pooling, and from running it on bad input.
///
/// Loading errors name the file and, where there is one, the tensor or key; input errors name
/// the sequence and position.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },

    #[error("{}: not valid json: {source}", path.display())]
    Json { path: PathBuf, source: serde_json::Error },

    /// A checkpoint could not be read (the message names the file and tensor).
    #[error(transparent)]
    Tensor(#[from] lathe_tensor::Error),

    /// A config could not be read (the message names the file and key).
    #[error(transparent)]
    Config(#[from] lathe_config::Error),

    /// A weight matrix could not be quantized.
    #[error(transparent)]
    Quant(#[from] lathe_quant::Error),

    /// The checkpoint's tensors differ from the ones its config describes.
    #[error("{}: {source}", file.display())]
    Checkpoint { file: PathBuf, source: lathe_config::Error },

    #[error("{}: {message}", file.display())]
    Unsupported { file: PathBuf, message: String },

    #[error("{}: {message}", file.display())]
    Invalid { file: PathBuf, message: String },

    #[error("{}: cannot load the tokenizer: {message}", file.display())]
    Tokenizer { file: PathBuf, message: String },

    #[error("cannot tokenize sentence {sentence}: {message}")]
    Tokenize { sentence: usize, message: String },

    #[error("sequence {sequence}, position {position}: token id {id} is outside the vocabulary of {vocab_size}")]
    TokenId { sequence: usize, position: usize, id: u32, vocab_size: usize },

    #[error("sequence {sequence}, position {position}: token type {id} is outside the {type_vocab_size} token types")]
    TokenType { sequence: usize, position: usize, id: u32, type_vocab_size: usize },

    #[error("sequences of {seq_len} tokens exceed the model's {max} positions")]
    TooLong { seq_len: usize, max: usize },

    #[error("linear {what}: {found} values where {expected} are needed")]
    LinearSize { what: &'static str, expected: usize, found: usize },

    #[error("smoothing: {0}")]
    BadSmoothing(String),

    #[error("the model has no {role} linear in layer {layer} (it has {layers} layers)")]
    NoLinear { layer: usize, role: &'static str, layers: usize },

    #[error(
        "layer {layer} {role}: a linear of {found_out} outputs x {found_in} inputs cannot replace one of \
         {expected_out} x {expected_in}"
    )]
    LinearShape {
        layer: usize,
        role: &'static str,
        expected_out: usize,
        expected_in: usize,
        found_out: usize,
        found_in: usize,
    },
}

/// `Result` with lathe-model's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_error(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
