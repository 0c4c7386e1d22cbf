//! The one error type of lathe-recipe.

/// Errors from evaluating a model against a reference.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A model could not be run (the message names the file, tensor or sentence).
    #[error(transparent)]
    Model(#[from] lathe_model::Error),

    /// A search study could not be read, logged or resumed (the message names the file).
    #[error(transparent)]
    Search(#[from] lathe_search::Error),

    /// The two models' embeddings have different widths, so no cosine joins them.
    #[error("the model's embeddings have {model} dimensions and the reference's {reference}: they must be equal")]
    WidthMismatch {
        /// Width of the model's embeddings.
        model: usize,
        /// Width of the reference's embeddings.
        reference: usize,
    },

    /// Too few sentences for a nearest neighbour to exist.
    #[error("too few sentences to evaluate on: {found}, where at least {needed} are needed")]
    TooFewSentences {
        /// Sentences given.
        found: usize,
        /// The minimum.
        needed: usize,
    },

    /// An embedding holds NaN or an infinity.
    #[error("the {which} embedding of sentence {sentence} holds a non-finite value")]
    NonFinite {
        /// `model` or `reference`.
        which: &'static str,
        /// 0-based index of the sentence.
        sentence: usize,
    },

    /// A file or folder could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },

    /// A JSON file is malformed.
    #[error("{}: not valid json: {source}", path.display())]
    Json {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: serde_json::Error,
    },

    /// The model folder does not exist or is a file.
    #[error("{}: not a model folder", path.display())]
    NotAFolder {
        /// The path given.
        path: std::path::PathBuf,
    },

    /// The output folder exists and may not be replaced.
    #[error("{}: cannot write the output folder here: {reason}", path.display())]
    OutputExists {
        /// The output folder.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },

    /// A checkpoint could not be read or written (the message names the file and tensor).
    #[error(transparent)]
    Tensor(#[from] lathe_tensor::Error),

    /// A config could not be read or edited (the message names the file and key).
    #[error(transparent)]
    Config(#[from] lathe_config::Error),

    /// A weight could not be quantized.
    #[error("tensor `{tensor}`: {source}")]
    Quant {
        /// The tensor.
        tensor: String,
        /// The cause.
        source: lathe_quant::Error,
    },

    /// A weight could not be pruned.
    #[error("tensor `{tensor}`: {source}")]
    Prune {
        /// The tensor.
        tensor: String,
        /// The cause.
        source: lathe_prune::Error,
    },

    /// Calibration failed on a tensor.
    #[error("{tensor}: {source}")]
    Calib {
        /// The tensor or input.
        tensor: String,
        /// The cause.
        source: lathe_calib::Error,
    },

    /// A tensor that should be a matrix is not one.
    #[error("tensor `{tensor}` has shape {shape:?}: a 2-d weight is needed")]
    NotAMatrix {
        /// The tensor.
        tensor: String,
        /// Its shape.
        shape: Vec<usize>,
    },

    /// A calibrated method was asked for without calibration data.
    #[error("method `{method}` needs calibration data")]
    NeedsCalibration {
        /// The method.
        method: String,
    },

    /// The source folder is already quantized.
    #[error("{}: the model is already quantized; quantize, prune and shrink read f32, f16 or bf16 weights", folder.display())]
    AlreadyQuantized {
        /// The folder.
        folder: std::path::PathBuf,
    },

    /// An option has a value that cannot work.
    #[error("--{option}: {message}")]
    BadOption {
        /// The option, as the command line names it.
        option: String,
        /// What is wrong.
        message: String,
    },

    /// A calibration file holds no sentences.
    #[error("{}: no calibration sentences (every line is empty)", path.display())]
    EmptyCalibration {
        /// The file.
        path: std::path::PathBuf,
    },

    /// A recipe file is malformed.
    #[error("{origin}: {message}")]
    Recipe {
        /// The file (or `inline`).
        origin: String,
        /// What is wrong.
        message: String,
    },

    /// A distillation loss could not be computed.
    #[error("{what}: {source}")]
    Distill {
        /// Which loss.
        what: String,
        /// The cause.
        source: lathe_distill::Error,
    },

    /// Training stopped because the loss or the gradient norm is no longer finite.
    #[error("training diverged at step {step}: the loss or gradient norm is {loss}; lower --lr")]
    Diverged {
        /// The step (from 0).
        step: u64,
        /// The non-finite value.
        loss: f64,
    },

    /// A report needs at least the baseline row.
    #[error("the report has no rows: it needs at least the baseline")]
    NoRows,

    /// Two rows share a name, so the plots and the text could not tell them apart.
    #[error("rows {first} and {second} are both named {name:?}: row names must be unique")]
    DuplicateName {
        /// The shared name.
        name: String,
        /// 0-based index of the first row with it.
        first: usize,
        /// 0-based index of the second.
        second: usize,
    },

    /// A row's name is empty or only spaces.
    #[error("row {row} has an empty name")]
    EmptyName {
        /// 0-based index of the row.
        row: usize,
    },

    /// A number is NaN or infinite.
    #[error("row {row:?} has a non-finite {field}: {value}")]
    NonFiniteField {
        /// Name of the row.
        row: String,
        /// The field (`latency_ms.single`, `mean_cosine`, ...).
        field: &'static str,
        /// The value found.
        value: f64,
    },

    /// A size, latency or ratio that must be above zero is not.
    #[error("row {row:?} has {field} = {value}, where it must be above zero")]
    NotPositive {
        /// Name of the row.
        row: String,
        /// The field.
        field: &'static str,
        /// The value found.
        value: f64,
    },

    /// The report could not be serialised to JSON.
    #[error("could not serialise the report to json: {0}")]
    Serialize(#[from] serde_json::Error),

    /// plotters failed to draw a plot.
    #[error("could not draw {plot}: {message}")]
    Plot {
        /// The plot's file name.
        plot: &'static str,
        /// plotters' message.
        message: String,
    },
}

/// `Result` with lathe-recipe's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
