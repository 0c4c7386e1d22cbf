//! Typed reads of config.json keys, with errors that name the file and the key.

use std::path::Path;

use serde_json::{Map, Value};

use crate::{Error, Result};

/// The largest dimension a config may give. Real models stay far below it (vocabularies of a few
/// 10^5, context lengths of a few 10^7); the cap keeps every product of two or three dimensions
/// inside 64 bits, so no shape arithmetic can overflow before the parameter count is checked.
pub(crate) const MAX_DIM: u64 = 1 << 31;

/// The keys of one JSON object, and the file (and path of the object inside it) for messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Keys<'a> {
    pub(crate) map: &'a Map<String, Value>,
    pub(crate) file: &'a Path,
    /// Where `map` sits in the file, e.g. `lathe_layers[2]`; empty for the top level.
    pub(crate) at: &'a str,
}

impl<'a> Keys<'a> {
    pub(crate) fn new(map: &'a Map<String, Value>, file: &'a Path) -> Keys<'a> {
        Keys { map, file, at: "" }
    }

    /// The full name of `key` for messages (`lathe_layers[2].heads`).
    pub(crate) fn name(&self, key: &str) -> String {
        if self.at.is_empty() { key.to_string() } else { format!("{}.{key}", self.at) }
    }

    /// The value of `key`; an explicit `null` counts as absent, as transformers reads it.
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|value| !value.is_null())
    }

    pub(crate) fn bad(&self, key: &str, expected: &str, found: &Value) -> Error {
        Error::BadValue {
            file: self.file.to_path_buf(),
            key: self.name(key),
            expected: expected.into(),
            found: shown(found),
        }
    }

    pub(crate) fn missing(&self, key: &str) -> Error {
        Error::MissingKey { file: self.file.to_path_buf(), key: self.name(key) }
    }

    pub(crate) fn inconsistent(&self, key: &str, reason: impl Into<String>) -> Error {
        Error::Inconsistent { file: self.file.to_path_buf(), key: self.name(key), reason: reason.into() }
    }

    /// A required dimension: an integer in `1..=2^31`.
    pub(crate) fn dim(&self, key: &str) -> Result<usize> {
        self.opt_dim(key)?.ok_or_else(|| self.missing(key))
    }

    /// An optional dimension: an integer in `1..=2^31`, or absent / `null`.
    pub(crate) fn opt_dim(&self, key: &str) -> Result<Option<usize>> {
        let Some(value) = self.get(key) else { return Ok(None) };
        match value.as_u64() {
            Some(dim) if (1..=MAX_DIM).contains(&dim) => Ok(Some(dim as usize)),
            _ => Err(self.bad(key, "an integer from 1 to 2^31", value)),
        }
    }

    /// An optional index such as `pad_token_id`: an integer in `0..2^31`; negative ids (some
    /// configs write -1 for "none") read as absent.
    pub(crate) fn opt_index(&self, key: &str) -> Result<Option<usize>> {
        let Some(value) = self.get(key) else { return Ok(None) };
        match (value.as_u64(), value.as_i64()) {
            (Some(index), _) if index < MAX_DIM => Ok(Some(index as usize)),
            (None, Some(negative)) if negative < 0 => Ok(None),
            _ => Err(self.bad(key, "an integer below 2^31", value)),
        }
    }

    /// An optional positive finite number (a norm epsilon).
    pub(crate) fn opt_positive(&self, key: &str) -> Result<Option<f64>> {
        let Some(value) = self.get(key) else { return Ok(None) };
        match value.as_f64() {
            Some(number) if number.is_finite() && number > 0.0 => Ok(Some(number)),
            _ => Err(self.bad(key, "a positive number", value)),
        }
    }

    pub(crate) fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        let Some(value) = self.get(key) else { return Ok(None) };
        value.as_bool().map(Some).ok_or_else(|| self.bad(key, "true or false", value))
    }

    pub(crate) fn opt_str(&self, key: &str) -> Result<Option<&'a str>> {
        let Some(value) = self.get(key) else { return Ok(None) };
        value.as_str().map(Some).ok_or_else(|| self.bad(key, "a string", value))
    }
}

/// A JSON value for a message, cut to a readable length.
pub(crate) fn shown(value: &Value) -> String {
    const MAX: usize = 60;
    let text = value.to_string();
    if text.chars().count() <= MAX { text } else { format!("{}...", text.chars().take(MAX).collect::<String>()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(value: &Value) -> Keys<'_> {
        Keys::new(value.as_object().unwrap(), Path::new("dir/config.json"))
    }

    #[test]
    fn dims_are_positive_capped_integers() {
        let value = json!({"a": 3, "zero": 0, "neg": -1, "float": 2.5, "big": 4294967296u64, "s": "7", "n": null});
        let keys = keys(&value);
        assert_eq!(keys.dim("a").unwrap(), 3);
        assert_eq!(keys.opt_dim("n").unwrap(), None);
        assert_eq!(keys.opt_dim("absent").unwrap(), None);
        for key in ["zero", "neg", "float", "big", "s"] {
            let message = keys.dim(key).unwrap_err().to_string();
            assert!(message.starts_with(&format!("dir/config.json: key `{key}` is ")), "{message}");
            assert!(message.ends_with("expected an integer from 1 to 2^31"), "{message}");
        }
        assert_eq!(keys.dim("absent").unwrap_err().to_string(), "dir/config.json: key `absent` is missing");
    }

    #[test]
    fn other_kinds_and_nested_names() {
        let value = json!({"pad": 0, "none": -1, "eps": 1e-12, "flag": true, "s": "x", "long": "y".repeat(100)});
        let keys = Keys { at: "lathe_layers[1]", ..keys(&value) };
        assert_eq!(keys.opt_index("pad").unwrap(), Some(0));
        assert_eq!(keys.opt_index("none").unwrap(), None);
        assert_eq!(keys.opt_positive("eps").unwrap(), Some(1e-12));
        assert_eq!(keys.opt_bool("flag").unwrap(), Some(true));
        assert_eq!(keys.opt_str("s").unwrap(), Some("x"));
        let message = keys.opt_positive("flag").unwrap_err().to_string();
        assert_eq!(message, "dir/config.json: key `lathe_layers[1].flag` is true: expected a positive number");
        let message = keys.opt_bool("long").unwrap_err().to_string();
        assert!(message.contains(&format!("\"{}...", "y".repeat(59))), "{message}");
    }
}
