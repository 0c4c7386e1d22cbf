//! `prune`: zeros in the encoder's linears, stored dense (zeros included), by magnitude or at
//! random here; by Wanda's or SparseGPT's calibrated rules in [`super::calibrated`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use lathe_prune::{Amount, Mask};
use serde_json::{Value, json};

use super::{Output, Record, Source, Staging, StepRecord, seconds_since, write_checkpoint};
use crate::{Error, Result};

/// Which weights go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneMethod {
    /// The smallest magnitudes (torch's `l1_unstructured`).
    Magnitude,
    /// Uniformly at random (seeded).
    Random,
    /// Wanda: `|W| * ||X_j||` compared within each output row (calibrated).
    Wanda,
    /// SparseGPT: the OBS sweep that prunes and compensates column by column (calibrated).
    SparseGpt,
}

impl PruneMethod {
    /// `magnitude`, `random`, `wanda` or `sparsegpt`.
    pub fn name(self) -> &'static str {
        match self {
            PruneMethod::Magnitude => "magnitude",
            PruneMethod::Random => "random",
            PruneMethod::Wanda => "wanda",
            PruneMethod::SparseGpt => "sparsegpt",
        }
    }

    /// Whether the method needs calibration activations.
    pub fn is_calibrated(self) -> bool {
        matches!(self, PruneMethod::Wanda | PruneMethod::SparseGpt)
    }
}

impl std::str::FromStr for PruneMethod {
    type Err = Error;

    fn from_str(text: &str) -> Result<PruneMethod> {
        [PruneMethod::Magnitude, PruneMethod::Random, PruneMethod::Wanda, PruneMethod::SparseGpt]
            .into_iter()
            .find(|method| method.name() == text)
            .ok_or_else(|| Error::BadOption {
                option: "method".into(),
                message: format!("`{text}`: expected magnitude, random, wanda or sparsegpt"),
            })
    }
}

impl std::str::FromStr for Scope {
    type Err = Error;

    fn from_str(text: &str) -> Result<Scope> {
        match text {
            "layer" => Ok(Scope::Layer),
            "global" => Ok(Scope::Global),
            _ => {
                Err(Error::BadOption { option: "scope".into(), message: format!("`{text}`: expected layer or global") })
            }
        }
    }
}

/// Parses an N:M pattern such as `2:4` (0 < N <= M).
pub fn parse_pattern(text: &str) -> Result<(usize, usize)> {
    let parsed = text.split_once(':').and_then(|(n, m)| Some((n.trim().parse().ok()?, m.trim().parse().ok()?)));
    match parsed {
        Some((n, m)) if n > 0 && n <= m => Ok((n, m)),
        _ => Err(Error::BadOption {
            option: "pattern".into(),
            message: format!("`{text}`: expected N:M with 0 < N <= M, such as 2:4"),
        }),
    }
}

/// Over which weights the sparsity is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Each linear on its own reaches the sparsity.
    Layer,
    /// The encoder's linears together reach it (magnitudes compared across layers).
    Global,
}

/// Options of [`prune`].
#[derive(Debug, Clone, PartialEq)]
pub struct PruneOptions {
    /// The method.
    pub method: PruneMethod,
    /// Fraction of weights to zero, in [0, 1] (ignored with a pattern, which sets it).
    pub sparsity: f64,
    /// `Some((n, m))`: at most `n` nonzeros in every `m` consecutive input columns.
    pub pattern: Option<(usize, usize)>,
    /// Per layer or global (magnitude only).
    pub scope: Scope,
    /// Seed of the random method.
    pub seed: u64,
}

impl PruneOptions {
    /// `method` at `sparsity`, per layer, unstructured, seed 0.
    pub fn new(method: PruneMethod, sparsity: f64) -> PruneOptions {
        PruneOptions { method, sparsity, pattern: None, scope: Scope::Layer, seed: 0 }
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "sparsity": self.sparsity,
            "pattern": self.pattern.map(|(n, m)| format!("{n}:{m}")),
            "scope": match self.scope { Scope::Layer => "layer", Scope::Global => "global" },
            "seed": self.seed,
        })
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.sparsity) {
            return Err(Error::BadOption {
                option: "sparsity".into(),
                message: format!("{} is outside [0, 1]", self.sparsity),
            });
        }
        if let Some((n, m)) = self.pattern
            && (n == 0 || m == 0 || n > m)
        {
            return Err(Error::BadOption {
                option: "pattern".into(),
                message: format!("{n}:{m} must have 0 < N <= M"),
            });
        }
        if self.scope == Scope::Global && (self.method != PruneMethod::Magnitude || self.pattern.is_some()) {
            return Err(Error::BadOption {
                option: "scope".into(),
                message: "global scope ranks magnitudes across layers: it works with --method magnitude and no pattern"
                    .into(),
            });
        }
        Ok(())
    }
}

/// The mask of a tensor's nonzero weights: pruning a pruned folder acts on the survivors only,
/// as torch's `PruningContainer` does.
fn survivors(weights: &[f32]) -> Option<Mask> {
    weights.contains(&0.0).then(|| Mask::from_bools(&weights.iter().map(|&w| w != 0.0).collect::<Vec<_>>()))
}

/// The mask of one linear for the uncalibrated methods.
fn layer_mask(
    weights: &[f32],
    rows: usize,
    cols: usize,
    options: &PruneOptions,
    salt: u64,
) -> lathe_prune::Result<Mask> {
    let previous = survivors(weights);
    match (options.method, options.pattern) {
        (PruneMethod::Magnitude, Some((n, m))) => lathe_prune::n_m(weights, rows, cols, n, m),
        (PruneMethod::Random, Some((n, m))) => {
            // Random scores, then the N:M rule on them.
            let mut state = options.seed ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let scores: Vec<f32> = (0..weights.len())
                .map(|_| {
                    state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    let mut z = state;
                    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                    ((z ^ (z >> 31)) >> 40) as f32
                })
                .collect();
            lathe_prune::n_m_by_score(&scores, rows, cols, n, m)
        }
        (PruneMethod::Magnitude, None) => {
            lathe_prune::l1_unstructured(weights, Amount::Fraction(options.sparsity), previous.as_ref())
        }
        (PruneMethod::Random, None) => lathe_prune::random_unstructured(
            weights.len(),
            Amount::Fraction(options.sparsity),
            options.seed ^ salt,
            previous.as_ref(),
        ),
        (PruneMethod::Wanda | PruneMethod::SparseGpt, _) => unreachable!("calibrated methods run elsewhere"),
    }
}

/// Prunes the encoder linears of `source` into the new folder `out` by magnitude or at random.
/// Returns the folder written.
///
/// # Errors
/// For an out-of-range sparsity or pattern, a calibrated method (see
/// [`prune_calibrated`](super::prune_calibrated)), a quantized source, NaN weights, or a file
/// that cannot be read or written.
pub fn prune(source: &Source, out: &Path, options: &PruneOptions) -> Result<PathBuf> {
    options.validate()?;
    if options.method.is_calibrated() {
        return Err(Error::NeedsCalibration { method: options.method.name().into() });
    }
    let start = Instant::now();
    let linears = source.linear_weights();
    let mut new_weights: HashMap<String, Vec<f32>> = HashMap::new();
    if options.scope == Scope::Global {
        let mut all = Vec::with_capacity(linears.len());
        for (name, ..) in &linears {
            all.push(source.checkpoint.tensor(name)?.to_f32()?);
        }
        let slices: Vec<&[f32]> = all.iter().map(Vec::as_slice).collect();
        let previous: Option<Vec<Mask>> = slices.iter().any(|weights| weights.contains(&0.0)).then(|| {
            slices.iter().map(|weights| survivors(weights).unwrap_or_else(|| Mask::all_kept(weights.len()))).collect()
        });
        let masks = lathe_prune::global_unstructured(&slices, Amount::Fraction(options.sparsity), previous.as_deref())
            .map_err(|source| Error::Prune { tensor: "encoder linears (global)".into(), source })?;
        for ((name, ..), (mut weights, mask)) in linears.iter().zip(all.into_iter().zip(masks)) {
            lathe_prune::remove(&mut weights, &mask).map_err(|source| Error::Prune { tensor: name.clone(), source })?;
            new_weights.insert(name.clone(), weights);
        }
    }
    let by_name: HashMap<&str, (usize, usize)> =
        linears.iter().map(|(name, r, c, ..)| (name.as_str(), (*r, *c))).collect();
    let method_options = options.to_json();
    write_pruned(source, out, "prune", options.method.name(), method_options, None, start, |name, view| {
        if let Some(weights) = new_weights.remove(name) {
            return Ok(Some(weights));
        }
        let Some(&(rows, cols)) = by_name.get(name) else { return Ok(None) };
        let mut weights = view.to_f32()?;
        let salt = linears.iter().position(|(n, ..)| n == name).unwrap_or(0) as u64;
        let mask = layer_mask(&weights, rows, cols, options, salt)
            .map_err(|source| Error::Prune { tensor: name.to_owned(), source })?;
        lathe_prune::remove(&mut weights, &mask).map_err(|source| Error::Prune { tensor: name.to_owned(), source })?;
        Ok(Some(weights))
    })
}

/// Writes a folder where `replace` gives new f32 values for some tensors (the rest copied), and
/// its record.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_pruned(
    source: &Source,
    out: &Path,
    step: &str,
    method: &str,
    options: Value,
    calibration: Option<super::Calibration>,
    start: Instant,
    mut replace: impl FnMut(&str, &lathe_tensor::TensorView<'_>) -> Result<Option<Vec<f32>>>,
) -> Result<PathBuf> {
    if source.is_quantized() {
        return Err(Error::AlreadyQuantized { folder: source.dir.clone() });
    }
    let staging = Staging::new(out)?;
    staging.copy_companions(&source.dir)?;
    write_checkpoint(source, &staging, &HashMap::new(), &HashMap::new(), |name, view| {
        Ok(match replace(name, view)? {
            Some(values) => Output::Values(values),
            None => Output::Copy,
        })
    })?;
    staging.write_json("config.json", &Value::Object(source.config_json()))?;
    let record =
        StepRecord { step: step.into(), method: method.into(), options, calibration, seconds: seconds_since(start) };
    staging.write_json(super::RECORD_FILE, &Record::extend(source.record.as_ref(), &source.dir, record).to_json())?;
    staging.commit()
}
