//! Recipes: ordered compression steps written in TOML, applied to a model folder. Each step is
//! one of the commands `shrink`, `distill`, `prune` and `quantize`, with the same options as its
//! command line (dashes become underscores: `keep_layers`, `max_minutes`); the output is a
//! complete model folder whose `lathe.json` lists every step.
//!
//! ```toml
//! name = "wanda 50% + int8"
//!
//! [[steps]]
//! step = "prune"
//! method = "wanda"
//! sparsity = 0.5
//!
//! [[steps]]
//! step = "quantize"
//! scheme = "int8-channel"
//! ```

use std::path::{Path, PathBuf};

use lathe_config::Role;
use lathe_quant::Scheme;
use serde::Deserialize;

use crate::compress::{
    self, ActivationMode, CalibrationData, PruneMethod, PruneOptions, QuantizeMethod, QuantizeOptions, Scope,
    ShrinkOptions, Source,
};
use crate::distill::{DistillOptions, distill};
use crate::{Error, Result};

/// Default number of calibration sentences for calibrated steps.
pub const DEFAULT_SAMPLES: usize = 256;

/// A recipe: a name and its steps, in order.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// The row name in reports (`wanda 50% + int8`); the file name when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// The steps.
    pub steps: Vec<Step>,
}

/// Where calibrated steps take their sentences.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationSpec {
    /// A text file, one sentence per line (the shipped corpus when absent).
    #[serde(default)]
    pub calibration: Option<PathBuf>,
    /// How many sentences.
    #[serde(default)]
    pub samples: Option<usize>,
}

impl CalibrationSpec {
    fn load(&self) -> Result<CalibrationData> {
        let samples = self.samples.unwrap_or(DEFAULT_SAMPLES);
        if samples == 0 {
            return Err(bad("samples", "must be at least 1"));
        }
        match &self.calibration {
            Some(path) => CalibrationData::from_file(path, samples),
            None => Ok(CalibrationData::shipped(samples)),
        }
    }
}

/// One step, named by its `step` key; the other keys are the command's options.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "step", rename_all = "lowercase", deny_unknown_fields)]
pub enum Step {
    /// `lathe shrink`.
    Shrink {
        /// `--keep-layers`.
        #[serde(default)]
        keep_layers: Option<Vec<usize>>,
        /// `--keep-heads`.
        #[serde(default)]
        keep_heads: Option<usize>,
        /// `--keep-ffn`.
        #[serde(default)]
        keep_ffn: Option<f64>,
    },
    /// `lathe prune`.
    Prune {
        /// `--method`.
        method: String,
        /// `--sparsity` (implied by `pattern`).
        #[serde(default)]
        sparsity: Option<f64>,
        /// `--pattern N:M`.
        #[serde(default)]
        pattern: Option<String>,
        /// `--scope layer|global`.
        #[serde(default)]
        scope: Option<String>,
        /// `--seed`.
        #[serde(default)]
        seed: Option<u64>,
        /// `--calibration` and `--samples`.
        #[serde(flatten)]
        data: CalibrationSpec,
    },
    /// `lathe distill`: the input folder is the teacher; the output is the trained student.
    Distill {
        /// `--keep-layers`.
        #[serde(default)]
        keep_layers: Option<Vec<usize>>,
        /// `--corpus`.
        #[serde(default)]
        corpus: Option<PathBuf>,
        /// `--eval` (the sentences measured before and after training).
        #[serde(default)]
        eval: Option<PathBuf>,
        /// `--max-minutes`.
        #[serde(default)]
        max_minutes: Option<f64>,
        /// `--epochs`.
        #[serde(default)]
        epochs: Option<f64>,
        /// `--max-steps`.
        #[serde(default)]
        max_steps: Option<u64>,
        /// `--lr`.
        #[serde(default)]
        lr: Option<f32>,
        /// `--batch-size`.
        #[serde(default)]
        batch_size: Option<usize>,
        /// `--temperature`.
        #[serde(default)]
        temperature: Option<f32>,
        /// `--alpha-cos`.
        #[serde(default)]
        alpha_cos: Option<f32>,
        /// `--alpha-mse`.
        #[serde(default)]
        alpha_mse: Option<f32>,
        /// `--alpha-attn`.
        #[serde(default)]
        alpha_attn: Option<f32>,
        /// `--train-word-embeddings`.
        #[serde(default)]
        train_word_embeddings: Option<bool>,
        /// `--seed`.
        #[serde(default)]
        seed: Option<u64>,
    },
    /// `lathe quantize`.
    Quantize {
        /// `--scheme`.
        scheme: String,
        /// `--method rtn|gptq`.
        #[serde(default)]
        method: Option<String>,
        /// `--activations int8|int7|f32`.
        #[serde(default)]
        activations: Option<String>,
        /// `--smooth ALPHA`.
        #[serde(default)]
        smooth: Option<f32>,
        /// `--keep-f32`.
        #[serde(default)]
        keep_f32: Option<Vec<String>>,
        /// `--calibration` and `--samples`.
        #[serde(flatten)]
        data: CalibrationSpec,
    },
}

fn bad(option: &str, message: impl Into<String>) -> Error {
    Error::BadOption { option: option.into(), message: message.into() }
}

impl Step {
    /// The step's options checked and converted, or the first problem.
    fn check(&self) -> Result<()> {
        match self {
            Step::Shrink { .. } => Ok(()),
            Step::Distill { .. } => self.distill_options().check(),
            Step::Prune { .. } => self.prune_options().map(drop),
            Step::Quantize { .. } => self.quantize_options().map(drop),
        }
    }

    fn distill_options(&self) -> DistillOptions {
        let Step::Distill {
            keep_layers,
            corpus,
            eval,
            max_minutes,
            epochs,
            max_steps,
            lr,
            batch_size,
            temperature,
            alpha_cos,
            alpha_mse,
            alpha_attn,
            train_word_embeddings,
            seed,
        } = self
        else {
            unreachable!("a distill step")
        };
        let defaults = DistillOptions::default();
        DistillOptions {
            keep_layers: keep_layers.clone(),
            corpus: corpus.clone(),
            eval: eval.clone(),
            max_minutes: *max_minutes,
            epochs: *epochs,
            max_steps: *max_steps,
            lr: lr.unwrap_or(defaults.lr),
            batch_size: batch_size.unwrap_or(defaults.batch_size),
            temperature: temperature.unwrap_or(defaults.temperature),
            alpha_cos: alpha_cos.unwrap_or(defaults.alpha_cos),
            alpha_mse: alpha_mse.unwrap_or(defaults.alpha_mse),
            alpha_attn: alpha_attn.unwrap_or(defaults.alpha_attn),
            train_word_embeddings: train_word_embeddings.unwrap_or(defaults.train_word_embeddings),
            seed: seed.unwrap_or(defaults.seed),
            progress: true,
            ..defaults
        }
    }

    fn prune_options(&self) -> Result<PruneOptions> {
        let Step::Prune { method, sparsity, pattern, scope, seed, .. } = self else { unreachable!("a prune step") };
        let method: PruneMethod = method.parse()?;
        let pattern = pattern.as_deref().map(compress::parse_pattern).transpose()?;
        let sparsity = match (sparsity, pattern) {
            (Some(sparsity), _) => *sparsity,
            (None, Some((n, m))) => 1.0 - n as f64 / m as f64,
            (None, None) => return Err(bad("sparsity", "is required without a pattern")),
        };
        let scope: Scope = scope.as_deref().unwrap_or("layer").parse()?;
        let options = PruneOptions { method, sparsity, pattern, scope, seed: seed.unwrap_or(0) };
        options.validate()?;
        Ok(options)
    }

    fn quantize_options(&self) -> Result<(QuantizeOptions, Option<f32>)> {
        let Step::Quantize { scheme, method, activations, smooth, keep_f32, .. } = self else {
            unreachable!("a quantize step")
        };
        let scheme: Scheme = scheme.parse().map_err(|error: lathe_quant::Error| bad("scheme", error.to_string()))?;
        let method: QuantizeMethod = method.as_deref().unwrap_or("rtn").parse()?;
        let activations: ActivationMode = activations.as_deref().unwrap_or("int8").parse()?;
        let keep_f32 = keep_f32
            .iter()
            .flatten()
            .map(|role| role.parse::<Role>().map_err(|message| bad("keep-f32", message)))
            .collect::<Result<Vec<Role>>>()?;
        if let Some(alpha) = smooth
            && !(0.0..=1.0).contains(alpha)
        {
            return Err(bad("smooth", format!("{alpha}: alpha must be in [0, 1]")));
        }
        let options = QuantizeOptions { scheme, method, activations, keep_f32 };
        options.check()?;
        Ok((options, *smooth))
    }

    /// The step in a few words, for reports: `prune wanda 2:4`, `quantize int8-channel gptq`.
    pub fn describe(&self) -> String {
        match self {
            Step::Shrink { keep_layers, keep_heads, keep_ffn } => {
                let mut words = vec!["shrink".to_owned()];
                if let Some(layers) = keep_layers {
                    words.push(format!("layers {layers:?}"));
                }
                if let Some(heads) = keep_heads {
                    words.push(format!("{heads} heads"));
                }
                if let Some(ffn) = keep_ffn {
                    words.push(format!("{:.0}% ffn", ffn * 100.0));
                }
                words.join(" ")
            }
            Step::Distill { keep_layers, max_minutes, epochs, lr, .. } => {
                let mut words = vec!["distill".to_owned()];
                if let Some(layers) = keep_layers {
                    words.push(format!("layers {layers:?}"));
                }
                if let Some(minutes) = max_minutes {
                    words.push(format!("{minutes} min"));
                }
                if let Some(epochs) = epochs {
                    words.push(format!("{epochs} epochs"));
                }
                if let Some(lr) = lr {
                    words.push(format!("lr {lr}"));
                }
                words.join(" ")
            }
            Step::Prune { method, sparsity, pattern, .. } => match (pattern, sparsity) {
                (Some(pattern), _) => format!("prune {method} {pattern}"),
                (None, Some(sparsity)) => format!("prune {method} {:.0}%", sparsity * 100.0),
                (None, None) => format!("prune {method}"),
            },
            Step::Quantize { scheme, method, activations, smooth, keep_f32, .. } => {
                let mut words =
                    vec!["quantize".to_owned(), scheme.clone(), method.clone().unwrap_or_else(|| "rtn".into())];
                match activations.as_deref() {
                    Some("f32") => words.push("weight-only".into()),
                    Some("int7") => words.push("int7 activations".into()),
                    _ => {}
                }
                if let Some(alpha) = smooth {
                    words.push(format!("smooth {alpha}"));
                }
                if let Some(roles) = keep_f32.as_ref().filter(|roles| !roles.is_empty()) {
                    words.push(format!("keep {}", roles.join(",")));
                }
                words.join(" ")
            }
        }
    }

    /// Runs the step from the folder `input` into the new folder `out`.
    ///
    /// # Errors
    /// For options that do not make sense (checked before the folder is opened), and everything
    /// the step itself reports.
    pub fn run(&self, input: &Path, out: &Path) -> Result<PathBuf> {
        self.check()?;
        if let Step::Distill { .. } = self {
            return distill(input, out, &self.distill_options()).map(|report| report.out);
        }
        let source = Source::open(input)?;
        match self {
            Step::Distill { .. } => unreachable!("distill steps ran above"),
            Step::Shrink { keep_layers, keep_heads, keep_ffn } => {
                let options =
                    ShrinkOptions { keep_layers: keep_layers.clone(), keep_heads: *keep_heads, keep_ffn: *keep_ffn };
                compress::shrink(&source, out, &options)
            }
            Step::Prune { data, .. } => {
                let options = self.prune_options()?;
                if options.method.is_calibrated() {
                    compress::prune_calibrated(&source, out, &options, &data.load()?)
                } else {
                    compress::prune(&source, out, &options)
                }
            }
            Step::Quantize { data, .. } => {
                let (options, smooth) = self.quantize_options()?;
                if options.method == QuantizeMethod::Gptq || smooth.is_some() {
                    compress::quantize_calibrated(&source, out, &options, smooth, &data.load()?)
                } else {
                    compress::quantize(&source, out, &options)
                }
            }
        }
    }
}

impl Recipe {
    /// Parses a recipe from TOML text; `origin` names it in errors (a file path).
    ///
    /// # Errors
    /// [`Error::Recipe`] for malformed TOML, an unknown key or step, or options that do not
    /// make sense (checked here, before any step runs).
    pub fn from_toml(text: &str, origin: &str) -> Result<Recipe> {
        let recipe: Recipe = toml::from_str(text)
            .map_err(|error| Error::Recipe { origin: origin.into(), message: error.to_string() })?;
        if recipe.steps.is_empty() {
            return Err(Error::Recipe { origin: origin.into(), message: "a recipe needs at least one step".into() });
        }
        for (index, step) in recipe.steps.iter().enumerate() {
            step.check().map_err(|error| Error::Recipe {
                origin: origin.into(),
                message: format!("step {}: {error}", index + 1),
            })?;
        }
        Ok(recipe)
    }

    /// Reads and parses a recipe file; its name defaults to the file stem.
    pub fn read(path: &Path) -> Result<Recipe> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        let mut recipe = Recipe::from_toml(&text, &path.display().to_string())?;
        if recipe.name.is_none() {
            recipe.name = path.file_stem().map(|stem| stem.to_string_lossy().into_owned());
        }
        Ok(recipe)
    }

    /// Applies the steps in order to the folder `model`, writing the new folder `out`;
    /// intermediate folders live in a temporary folder beside `out` and are removed.
    pub fn apply(&self, model: &Path, out: &Path) -> Result<PathBuf> {
        let out = std::path::absolute(out).map_err(|source| Error::Io { path: out.to_path_buf(), source })?;
        let parent = out.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        std::fs::create_dir_all(&parent).map_err(|source| Error::Io { path: parent.clone(), source })?;
        let scratch = tempfile::Builder::new()
            .prefix(".lathe-recipe-")
            .tempdir_in(&parent)
            .map_err(|source| Error::Io { path: parent.clone(), source })?;
        let mut input = model.to_path_buf();
        for (index, step) in self.steps.iter().enumerate() {
            let last = index + 1 == self.steps.len();
            let target = if last { out.clone() } else { scratch.path().join(format!("step-{}", index + 1)) };
            input = step.run(&input, &target)?;
        }
        Ok(input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipes_parse_and_check_their_options() {
        let recipe = Recipe::from_toml(
            "name = \"wanda 2:4 + int8\"\n[[steps]]\nstep = \"prune\"\nmethod = \"wanda\"\npattern = \"2:4\"\nsamples = 64\n\n\
             [[steps]]\nstep = \"quantize\"\nscheme = \"int8-channel\"\nkeep_f32 = [\"ffn_out\"]\n",
            "inline",
        )
        .unwrap();
        assert_eq!(recipe.name.as_deref(), Some("wanda 2:4 + int8"));
        assert_eq!(recipe.steps.len(), 2);
        let options = recipe.steps[0].prune_options().unwrap();
        assert_eq!((options.pattern, options.sparsity), (Some((2, 4)), 0.5));
        let (quantize, smooth) = recipe.steps[1].quantize_options().unwrap();
        assert_eq!((quantize.keep_f32, smooth), (vec![Role::FfnOut], None));

        let recipe = Recipe::from_toml(
            "[[steps]]\nstep = \"distill\"\nkeep_layers = [0, 3]\nmax_minutes = 2.5\nlr = 5e-4\n",
            "inline",
        )
        .unwrap();
        let options = recipe.steps[0].distill_options();
        assert_eq!(options.keep_layers, Some(vec![0, 3]));
        assert_eq!((options.max_minutes, options.lr, options.batch_size), (Some(2.5), 5e-4, 32));
        assert_eq!(recipe.steps[0].describe(), "distill layers [0, 3] 2.5 min lr 0.0005");

        for (text, expected) in [
            ("[[steps]]\nstep = \"prune\"\nmethod = \"wanda\"\n", "sparsity"),
            ("[[steps]]\nstep = \"prune\"\nmethod = \"best\"\nsparsity = 0.5\n", "best"),
            ("[[steps]]\nstep = \"quantize\"\nscheme = \"int3\"\n", "int3"),
            ("[[steps]]\nstep = \"quantize\"\nscheme = \"q4_0\"\nkeep_f32 = [\"ffn\"]\n", "ffn"),
            ("[[steps]]\nstep = \"squeeze\"\n", "squeeze"),
            ("[[steps]]\nstep = \"shrink\"\nkeep_layer = [1]\n", "keep_layer"),
            ("[[steps]]\nstep = \"distill\"\nlr = -1.0\n", "lr"),
            ("[[steps]]\nstep = \"distill\"\nmax_minutes = 0.0\n", "max-minutes"),
            ("[[steps]]\nstep = \"distill\"\nlearning_rate = 0.1\n", "learning_rate"),
            ("name = \"empty\"\nsteps = []\n", "at least one step"),
        ] {
            let err = Recipe::from_toml(text, "r.toml").unwrap_err().to_string();
            assert!(err.contains("r.toml") && err.contains(expected), "{text}: {err}");
        }
    }
}
