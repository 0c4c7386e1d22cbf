//! The crate's one error type and the input checks every loss shares.

/// Why a loss could not be computed.
///
/// Every variant names the offending input and carries the values that disagreed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A slice does not hold as many elements as its shape says.
    #[error("{name} has {found} elements but shape {dims:?} needs {expected}")]
    Length {
        /// Which input (`student`, `teacher`, `labels`, ...).
        name: &'static str,
        /// The shape the caller gave.
        dims: Vec<usize>,
        /// The element count the shape implies.
        expected: usize,
        /// The element count of the slice.
        found: usize,
    },
    /// The product of a shape's dimensions does not fit in `usize`.
    #[error("shape {dims:?} of {name} overflows usize")]
    ShapeOverflow {
        /// Which input.
        name: &'static str,
        /// The shape the caller gave.
        dims: Vec<usize>,
    },
    /// A shape has a zero dimension, so the mean over its rows is undefined.
    #[error("{name} has the empty shape {dims:?}")]
    EmptyShape {
        /// Which input.
        name: &'static str,
        /// The shape the caller gave.
        dims: Vec<usize>,
    },
    /// An input holds NaN or an infinity where the loss reads it.
    #[error("{name} holds the non-finite value {value} at flat index {index}")]
    NonFinite {
        /// Which input.
        name: &'static str,
        /// Flat (row-major) index of the first non-finite value.
        index: usize,
        /// The value found there.
        value: f32,
    },
    /// The temperature is zero, negative, NaN or infinite.
    #[error("temperature must be finite and greater than 0, found {value}")]
    Temperature {
        /// The temperature the caller gave.
        value: f32,
    },
    /// The mixing weight lies outside `[0, 1]` (or is NaN).
    #[error("alpha must lie in [0, 1], found {value}")]
    Alpha {
        /// The weight the caller gave.
        value: f32,
    },
    /// A label is neither a class index nor the ignore index.
    #[error("label {label} in row {row} is outside 0..{classes} and is not the ignore index {ignore_index}")]
    Label {
        /// Row of the label.
        row: usize,
        /// The label found.
        label: i64,
        /// Number of classes (columns of the logits).
        classes: usize,
        /// The ignore index in force.
        ignore_index: i64,
    },
    /// The valid length of an attention map is zero or longer than its query or key axis.
    #[error("valid length {valid_len} must lie in 1..={max} for attention shape {dims:?}")]
    ValidLength {
        /// The valid length the caller gave.
        valid_len: usize,
        /// `min(queries, keys)`.
        max: usize,
        /// The attention shape `[heads, queries, keys]`.
        dims: Vec<usize>,
    },
}

/// Number of elements of `dims`, or the error naming `name` if it is zero or overflows.
pub(crate) fn element_count(name: &'static str, dims: &[usize]) -> Result<usize, Error> {
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &dim| acc.checked_mul(dim))
        .ok_or_else(|| Error::ShapeOverflow { name, dims: dims.to_vec() })?;
    if count == 0 {
        return Err(Error::EmptyShape { name, dims: dims.to_vec() });
    }
    Ok(count)
}

/// Checks that `values` holds exactly the elements `dims` describes.
pub(crate) fn check_len(name: &'static str, values: usize, dims: &[usize]) -> Result<usize, Error> {
    let expected = element_count(name, dims)?;
    if values != expected {
        return Err(Error::Length { name, dims: dims.to_vec(), expected, found: values });
    }
    Ok(expected)
}

/// Checks that every value is finite; `offset` is added to the reported index.
pub(crate) fn check_finite(name: &'static str, values: &[f32], offset: usize) -> Result<(), Error> {
    match values.iter().position(|value| !value.is_finite()) {
        Some(position) => Err(Error::NonFinite { name, index: offset + position, value: values[position] }),
        None => Ok(()),
    }
}

/// Checks that a softmax temperature is finite and positive.
pub(crate) fn check_temperature(value: f32) -> Result<(), Error> {
    if value.is_finite() && value > 0.0 { Ok(()) } else { Err(Error::Temperature { value }) }
}
