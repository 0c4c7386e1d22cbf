//! sentence-transformers pooling: read from `modules.json` and `1_Pooling/config.json`, applied
//! to the last hidden state.

use std::path::Path;

use serde_json::Value;

use crate::error::io_error;
use crate::{Error, Hidden, Result};

/// How token states become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolingMode {
    /// The mean over real tokens (`[CLS]` and `[SEP]` included).
    Mean,
    /// The state of the first token (`[CLS]`).
    Cls,
}

/// A sentence-transformers pooling stage, optionally followed by L2 normalisation (the
/// `Normalize` module).
///
/// ```
/// use lathe_model::{Pooling, PoolingMode};
/// let pooling = Pooling::default();
/// assert_eq!((pooling.mode, pooling.normalize), (PoolingMode::Mean, true));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pooling {
    /// Mean or CLS.
    pub mode: PoolingMode,
    /// Whether vectors are divided by `max(||v||, 1e-12)` after pooling.
    pub normalize: bool,
}

impl Default for Pooling {
    /// Mean pooling, then normalisation: all-MiniLM-L6-v2 and most sentence-transformers models.
    fn default() -> Self {
        Pooling { mode: PoolingMode::Mean, normalize: true }
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(io_error(path))?;
    serde_json::from_str(&text).map_err(|source| Error::Json { path: path.to_path_buf(), source })
}

impl Pooling {
    /// The pooling a sentence-transformers folder declares. `modules.json` names the pooling
    /// module's folder (whose `config.json` gives the mode) and says whether a `Normalize` module
    /// follows. Without `modules.json`, `1_Pooling/config.json` is read if present and
    /// normalisation is on; without either, [`Pooling::default`].
    ///
    /// # Errors
    /// [`Error::Io`] and [`Error::Json`] for unreadable files; [`Error::Unsupported`] for a mode
    /// other than exactly one of mean and CLS (max, mean-sqrt-len, weighted mean, last token, or
    /// several concatenated).
    pub fn from_folder(dir: impl AsRef<Path>) -> Result<Pooling> {
        let dir = dir.as_ref();
        let modules_path = dir.join("modules.json");
        let (pooling_dir, normalize) = if modules_path.is_file() {
            let modules = read_json(&modules_path)?;
            let Some(modules) = modules.as_array() else {
                return Err(Error::Invalid { file: modules_path, message: "the top level is not a json array".into() });
            };
            let module_type =
                |module: &Value| module.get("type").and_then(Value::as_str).unwrap_or_default().to_owned();
            let normalize = modules.iter().any(|module| module_type(module).ends_with("Normalize"));
            let pooling = modules.iter().find(|module| module_type(module).ends_with("Pooling"));
            match pooling {
                Some(module) => {
                    let Some(path) = module.get("path").and_then(Value::as_str) else {
                        return Err(Error::Invalid {
                            file: modules_path,
                            message: "the pooling module has no string `path`".into(),
                        });
                    };
                    (Some(dir.join(path)), normalize)
                }
                // A model without a pooling module hands out token states; lathe pools anyway,
                // with the default mode.
                None => (None, normalize),
            }
        } else {
            (Some(dir.join("1_Pooling")), true)
        };
        let config_path = pooling_dir.map(|pooling_dir| pooling_dir.join("config.json"));
        let mode = match config_path {
            Some(path) if path.is_file() => mode_from_config(&path, &read_json(&path)?)?,
            _ => PoolingMode::Mean,
        };
        Ok(Pooling { mode, normalize })
    }

    /// One vector per sequence, row-major `[n_sequences, hidden_size]`: the masked mean
    /// (`sum(h * mask) / max(sum(mask), 1e-9)`, accumulated in f64) or the first token's state,
    /// then normalised if asked.
    pub fn pool(&self, hidden: &Hidden) -> Vec<f32> {
        let (seq_len, width) = (hidden.seq_len(), hidden.hidden_size());
        let mut pooled = Vec::with_capacity(hidden.n_sequences() * width);
        let mut sum = vec![0.0f64; width];
        for sequence in 0..hidden.n_sequences() {
            sum.fill(0.0);
            match self.mode {
                PoolingMode::Mean => {
                    let mask = &hidden.mask()[sequence * seq_len..][..seq_len];
                    let mut count = 0usize;
                    for (position, _) in mask.iter().enumerate().filter(|(_, real)| **real) {
                        count += 1;
                        sum.iter_mut().zip(hidden.token(sequence, position)).for_each(|(s, &v)| *s += f64::from(v));
                    }
                    let divisor = (count as f64).max(1e-9);
                    sum.iter_mut().for_each(|s| *s /= divisor);
                }
                PoolingMode::Cls if seq_len > 0 => {
                    sum.iter_mut().zip(hidden.token(sequence, 0)).for_each(|(s, &v)| *s = f64::from(v));
                }
                PoolingMode::Cls => {}
            }
            if self.normalize {
                let norm = sum.iter().map(|s| s * s).sum::<f64>().sqrt().max(1e-12);
                sum.iter_mut().for_each(|s| *s /= norm);
            }
            pooled.extend(sum.iter().map(|&s| s as f32));
        }
        pooled
    }
}

/// The mode a sentence-transformers `Pooling` config selects.
fn mode_from_config(path: &Path, config: &Value) -> Result<PoolingMode> {
    let unsupported = |message: String| Error::Unsupported { file: path.to_path_buf(), message };
    // Newer sentence-transformers releases also accept a `pooling_mode` string.
    if let Some(mode) = config.get("pooling_mode").and_then(Value::as_str) {
        return match mode {
            "mean" => Ok(PoolingMode::Mean),
            "cls" => Ok(PoolingMode::Cls),
            other => Err(unsupported(format!("pooling mode `{other}` is not supported: use mean or cls"))),
        };
    }
    const FLAGS: [&str; 6] = [
        "pooling_mode_cls_token",
        "pooling_mode_mean_tokens",
        "pooling_mode_max_tokens",
        "pooling_mode_mean_sqrt_len_tokens",
        "pooling_mode_weightedmean_tokens",
        "pooling_mode_lasttoken",
    ];
    let enabled: Vec<&str> =
        FLAGS.into_iter().filter(|flag| config.get(*flag).and_then(Value::as_bool).unwrap_or(false)).collect();
    match enabled[..] {
        ["pooling_mode_cls_token"] => Ok(PoolingMode::Cls),
        ["pooling_mode_mean_tokens"] => Ok(PoolingMode::Mean),
        [] => Err(unsupported("no pooling mode is enabled".into())),
        _ => Err(unsupported(format!(
            "{} is enabled: lathe-model supports exactly one of pooling_mode_mean_tokens and pooling_mode_cls_token",
            enabled.join(" and ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn modes_come_from_the_flags_or_the_mode_string() {
        let path = Path::new("1_Pooling/config.json");
        let mode = |value: Value| mode_from_config(path, &value);
        assert_eq!(
            mode(json!({"pooling_mode_mean_tokens": true, "pooling_mode_cls_token": false})).unwrap(),
            PoolingMode::Mean
        );
        assert_eq!(mode(json!({"pooling_mode_cls_token": true})).unwrap(), PoolingMode::Cls);
        assert_eq!(mode(json!({"pooling_mode": "cls"})).unwrap(), PoolingMode::Cls);
        let error = mode(json!({"pooling_mode_mean_tokens": true, "pooling_mode_max_tokens": true})).unwrap_err();
        assert_eq!(
            error.to_string(),
            "1_Pooling/config.json: pooling_mode_mean_tokens and pooling_mode_max_tokens is enabled: lathe-model \
             supports exactly one of pooling_mode_mean_tokens and pooling_mode_cls_token"
        );
        assert!(mode(json!({})).unwrap_err().to_string().contains("no pooling mode"));
        assert!(mode(json!({"pooling_mode": "max"})).is_err());
    }

    #[test]
    fn folders_declare_mode_and_normalisation() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Pooling::from_folder(dir.path()).unwrap(), Pooling::default());
        std::fs::create_dir(dir.path().join("pool")).unwrap();
        std::fs::write(dir.path().join("pool/config.json"), r#"{"pooling_mode_cls_token": true}"#).unwrap();
        let modules = r#"[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "pool", "type": "sentence_transformers.models.Pooling"}]"#;
        std::fs::write(dir.path().join("modules.json"), modules).unwrap();
        assert_eq!(Pooling::from_folder(dir.path()).unwrap(), Pooling { mode: PoolingMode::Cls, normalize: false });
        std::fs::write(dir.path().join("modules.json"), "{").unwrap();
        let error = Pooling::from_folder(dir.path()).unwrap_err().to_string();
        assert!(error.contains("modules.json: not valid json"), "{error}");
    }

    #[test]
    fn mean_pooling_skips_padding_and_normalises() {
        // Two sequences of length 3, width 2; the second has one padded position.
        let states = vec![1.0, 0.0, 3.0, 0.0, 2.0, 6.0, /* second */ 0.0, 2.0, 0.0, 4.0, 100.0, 100.0];
        let mask = vec![true, true, true, true, true, false];
        let hidden = Hidden::from_parts(states, mask, 2, 3, 2);
        let raw = Pooling { mode: PoolingMode::Mean, normalize: false }.pool(&hidden);
        assert_eq!(raw, [2.0, 2.0, 0.0, 3.0]);
        let normalised = Pooling::default().pool(&hidden);
        let half = std::f32::consts::FRAC_1_SQRT_2;
        assert_eq!(normalised, [half, half, 0.0, 1.0]);
        let cls = Pooling { mode: PoolingMode::Cls, normalize: false }.pool(&hidden);
        assert_eq!(cls, [1.0, 0.0, 0.0, 2.0]);
        // An all-zero vector stays zero instead of becoming NaN.
        let zero = Hidden::from_parts(vec![0.0; 2], vec![true], 1, 1, 2);
        assert_eq!(Pooling::default().pool(&zero), [0.0, 0.0]);
    }
}
