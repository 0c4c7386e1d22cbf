//! The calibrated methods: Wanda and SparseGPT pruning, GPTQ and SmoothQuant quantization.
//! Calibration runs the real model layer by layer over calibration sentences: layer `l`'s
//! linear inputs are gathered (Wanda's norms, the Hessian `X^T X`, activation maxima), layer `l`
//! is compressed, and only then are layer `l + 1`'s inputs computed, through the compressed
//! layer, so each layer is calibrated on what it will really see.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use lathe_calib::{LayerStats, Pattern, SweepOptions};
use lathe_config::Role;
use lathe_model::{BertModel, Hidden, LAYER_ROLES, Linear, SentenceEncoder};
use lathe_prune::Amount;
use lathe_quant::Scheme;
use serde_json::json;

use super::prune::{PruneMethod, PruneOptions, write_pruned};
use super::quantize::{Precomputed, QuantizeMethod, QuantizeOptions, quantize_with};
use super::{Calibration, Source};
use crate::progress::Progress;
use crate::{Error, Result};

/// Sentences to calibrate on, and where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalibrationData {
    /// The file, or `shipped corpus`.
    pub name: String,
    /// The sentences.
    pub sentences: Vec<String>,
}

impl CalibrationData {
    /// `samples` sentences of the corpus lathe ships, spread evenly over it (the corpus runs
    /// through its topics in order). Never the evaluation set.
    pub fn shipped(samples: usize) -> CalibrationData {
        let corpus = crate::data::corpus();
        let n = samples.clamp(1, corpus.len());
        let sentences = (0..n).map(|i| corpus[i * corpus.len() / n].to_owned()).collect();
        CalibrationData { name: "shipped corpus".into(), sentences }
    }

    /// The first `samples` non-empty lines of a text file.
    pub fn from_file(path: &Path, samples: usize) -> Result<CalibrationData> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        let sentences: Vec<String> =
            text.lines().map(str::trim).filter(|line| !line.is_empty()).take(samples).map(str::to_owned).collect();
        if sentences.is_empty() {
            return Err(Error::EmptyCalibration { path: path.to_path_buf() });
        }
        Ok(CalibrationData { name: path.display().to_string(), sentences })
    }
}

/// Sentences per calibration batch (sorted by length, so batches pad little).
const BATCH: usize = 16;

/// The statistics of one layer's linear inputs. Query, key and value read the same input and
/// share one entry (under [`Role::Query`]).
type LayerInputs = HashMap<Role, LayerStats>;

fn input_role(role: Role) -> Role {
    match role {
        Role::Key | Role::Value => Role::Query,
        other => other,
    }
}

/// The model and the calibration batches' hidden states between layers.
struct Calibrator {
    encoder: SentenceEncoder,
    hidden: Vec<Hidden>,
    record: Calibration,
}

impl Calibrator {
    fn new(source: &Source, data: &CalibrationData) -> Result<Calibrator> {
        let encoder = SentenceEncoder::open(&source.dir)?;
        let mut tokens = data.sentences.iter().map(|s| encoder.tokenize(s)).collect::<lathe_model::Result<Vec<_>>>()?;
        tokens.sort_by_key(|t| t.ids.len());
        let mut hidden = Vec::new();
        let mut real = 0;
        for chunk in tokens.chunks(BATCH) {
            let batch = encoder.batch(chunk);
            real += batch.real_tokens();
            hidden.push(encoder.model().embed(&batch)?);
        }
        let record = Calibration { file: data.name.clone(), samples: data.sentences.len(), tokens: real };
        Ok(Calibrator { encoder, hidden, record })
    }

    /// Runs every layer: gathers its inputs' statistics (with Hessians when `hessians`), lets
    /// `compress` replace its linears, then moves the hidden states through the new layer.
    fn run(
        &mut self,
        label: &str,
        hessians: bool,
        mut compress: impl FnMut(usize, &LayerInputs, &mut BertModel) -> Result<()>,
    ) -> Result<()> {
        let model = self.encoder.model_mut();
        let mut bar = Progress::new(label, model.num_layers() as u64, true);
        for layer in 0..model.num_layers() {
            bar.set(layer as u64, || format!("layer {layer}"));
            let mut stats: LayerInputs = HashMap::new();
            let mut failure = None;
            for hidden in &self.hidden {
                let mut scratch = hidden.clone();
                model.layer_capturing(layer, &mut scratch, |input| {
                    if input.role != input_role(input.role) || failure.is_some() {
                        return;
                    }
                    let rows: Vec<f32> = input.real_rows().flatten().copied().collect();
                    let entry = stats.entry(input.role).or_insert_with(|| {
                        if hessians {
                            LayerStats::new(input.cols).expect("widths are small")
                        } else {
                            LayerStats::without_hessian(input.cols)
                        }
                    });
                    if let Err(error) = entry.update(&rows, rows.len() / input.cols.max(1)) {
                        failure =
                            Some(Error::Calib { tensor: format!("layer {layer} {} input", input.role), source: error });
                    }
                });
            }
            if let Some(error) = failure {
                return Err(error);
            }
            compress(layer, &stats, model)?;
            for hidden in &mut self.hidden {
                model.layer(layer, hidden);
            }
        }
        bar.set(model.num_layers() as u64, || "done".to_owned());
        bar.finish();
        Ok(())
    }
}

/// The checkpoint name of a layer's linear weight.
fn weight_name(source: &Source, layer: usize, role: Role) -> String {
    source.architecture.layers()[layer]
        .linears
        .iter()
        .find(|linear| linear.role == role)
        .map(|linear| linear.weight.clone())
        .expect("BERT layers describe their six linears")
}

/// Prunes by Wanda or SparseGPT, calibrated on `data`, into the new folder `out`.
///
/// # Errors
/// As [`prune`](super::prune), plus calibration errors (a sentence the tokenizer rejects, a
/// Hessian that stays singular after damping).
pub fn prune_calibrated(
    source: &Source,
    out: &Path,
    options: &PruneOptions,
    data: &CalibrationData,
) -> Result<PathBuf> {
    options.validate()?;
    if !options.method.is_calibrated() {
        return super::prune(source, out, options);
    }
    let start = Instant::now();
    let mut calibrator = Calibrator::new(source, data)?;
    let mut new_weights: HashMap<String, Vec<f32>> = HashMap::new();
    let hessians = options.method == PruneMethod::SparseGpt;
    calibrator.run(options.method.name(), hessians, |layer, stats, model| {
        for role in LAYER_ROLES {
            let linear = model.linear(layer, role).expect("every BERT layer has six linears");
            let (rows, cols) = (linear.out_features(), linear.in_features());
            let weights = linear.weights_f32();
            let bias = linear.bias().map(<[f32]>::to_vec);
            let stats = &stats[&input_role(role)];
            let name = weight_name(source, layer, role);
            let calib_error = |source| Error::Calib { tensor: name.clone(), source };
            let pruned = match options.method {
                PruneMethod::Wanda => {
                    let mask = match options.pattern {
                        Some((n, m)) => lathe_calib::wanda_n_m(&weights, rows, cols, stats, n, m),
                        None => lathe_calib::wanda_unstructured(
                            &weights,
                            rows,
                            cols,
                            stats,
                            Amount::Fraction(options.sparsity),
                        ),
                    }
                    .map_err(calib_error)?;
                    let mut weights = weights;
                    lathe_prune::remove(&mut weights, &mask)
                        .map_err(|source| Error::Prune { tensor: name.clone(), source })?;
                    weights
                }
                _ => {
                    let pattern = match options.pattern {
                        Some((n, m)) => Pattern::NM { n_kept: n, m },
                        None => Pattern::Unstructured(options.sparsity),
                    };
                    let hessian = stats.hessian().expect("gathered with hessians");
                    lathe_calib::sparsegpt(&weights, rows, cols, hessian, pattern, &SweepOptions::default())
                        .map_err(calib_error)?
                        .weights
                }
            };
            model.set_linear(layer, role, Linear::dense(pruned.clone(), rows, cols, bias)?)?;
            new_weights.insert(name, pruned);
        }
        Ok(())
    })?;
    let record = calibrator.record.clone();
    write_pruned(source, out, "prune", options.method.name(), options.to_json(), Some(record), start, |name, _| {
        Ok(new_weights.remove(name))
    })
}

/// Quantizes with GPTQ and/or SmoothQuant smoothing (`smooth` = alpha), calibrated on `data`,
/// into the new folder `out`. Smoothing moves per-channel activation scale into the weights of
/// every quantized linear: column `j` of the weights is multiplied by `s_j = max|x_j|^alpha /
/// max|W_j|^(1-alpha)` before rounding, and `s` is stored beside the weights
/// (`<module>.smooth_scale`) for the loader to divide the input by. SmoothQuant's paper folds
/// `1/s` into the LayerNorm before instead, which only works where that LayerNorm feeds nothing
/// else: in BERT's post-LN layers its output is also the residual stream.
///
/// # Errors
/// As [`quantize`](super::quantize), plus [`Error::BadOption`] for GPTQ on a scheme it has no
/// grid for (f16, bf16, q5_0, q5_1), and calibration errors.
pub fn quantize_calibrated(
    source: &Source,
    out: &Path,
    options: &QuantizeOptions,
    smooth: Option<f32>,
    data: &CalibrationData,
) -> Result<PathBuf> {
    let start = Instant::now();
    options.check()?;
    if source.is_quantized() {
        return Err(Error::AlreadyQuantized { folder: source.dir.clone() });
    }
    let gptq = options.method == QuantizeMethod::Gptq;
    if gptq && matches!(options.scheme, Scheme::F16 | Scheme::Bf16 | Scheme::Q5_0 | Scheme::Q5_1) {
        return Err(Error::BadOption {
            option: "method".into(),
            message: format!("gptq has no grid for {}: use an int scheme, q8_0, q4_0 or q4_1", options.scheme),
        });
    }
    let mut calibrator = Calibrator::new(source, data)?;
    let mut precomputed = Precomputed::default();
    calibrator.run(if gptq { "gptq" } else { "smoothquant" }, gptq, |layer, stats, model| {
        // Smoothing factors per linear, from its input's per-channel maxima and its weights'.
        let mut scales: HashMap<Role, Vec<f32>> = HashMap::new();
        if let Some(alpha) = smooth {
            for role in LAYER_ROLES.into_iter().filter(|role| !options.keep_f32.contains(role)) {
                let linear = model.linear(layer, role).expect("six linears");
                let tensor = weight_name(source, layer, role);
                let calib_error = |error| Error::Calib { tensor: tensor.clone(), source: error };
                let weight_max =
                    lathe_calib::column_abs_max(&linear.weights_f32(), linear.out_features(), linear.in_features())
                        .map_err(calib_error)?;
                let s = lathe_calib::smooth_scales(stats[&input_role(role)].abs_max(), &weight_max, alpha)
                    .map_err(calib_error)?;
                scales.insert(role, s);
            }
        }
        for role in LAYER_ROLES {
            if options.keep_f32.contains(&role) {
                continue;
            }
            let linear = model.linear(layer, role).expect("six linears");
            let (rows, cols) = (linear.out_features(), linear.in_features());
            let mut weights = linear.weights_f32();
            let bias = linear.bias().map(<[f32]>::to_vec);
            let name = weight_name(source, layer, role);
            let calib_error = |source| Error::Calib { tensor: name.clone(), source };
            let scale = scales.get(&role);
            if let Some(s) = scale {
                lathe_calib::smooth_weights(&mut weights, rows, cols, s).map_err(calib_error)?;
                precomputed.smoothing.insert(name.clone(), s.clone());
            }
            // What the calibration forward runs from here on: the rounded weights with the
            // smoothing undone on the input side (f32 activations), as GPTQ's reference does.
            let rounded = if gptq {
                let mut hessian = stats[&input_role(role)].hessian().expect("gathered with hessians").to_vec();
                if let Some(s) = scale {
                    // X' = X / s, so H' = diag(1/s) H diag(1/s).
                    for (i, row) in hessian.chunks_exact_mut(cols).enumerate() {
                        for (j, h) in row.iter_mut().enumerate() {
                            *h /= f64::from(s[i]) * f64::from(s[j]);
                        }
                    }
                }
                let result =
                    lathe_calib::gptq(&weights, rows, cols, &hessian, options.scheme, &SweepOptions::default())
                        .map_err(calib_error)?;
                let matrix = result.quantized.to_matrix(rows, cols).map_err(calib_error)?;
                precomputed.matrices.insert(name.clone(), matrix);
                result.weights
            } else {
                let quantized =
                    lathe_calib::round_to_nearest(&weights, rows, cols, options.scheme).map_err(calib_error)?;
                precomputed.values.insert(name.clone(), weights.clone());
                quantized.dequantize()
            };
            let mut effective = rounded;
            if let Some(s) = scale {
                for row in effective.chunks_exact_mut(cols) {
                    row.iter_mut().zip(s).for_each(|(w, s)| *w /= s);
                }
            }
            model.set_linear(layer, role, Linear::dense(effective, rows, cols, bias)?)?;
        }
        Ok(())
    })?;
    precomputed.calibration = Some(calibrator.record.clone());
    if let Some(alpha) = smooth {
        precomputed.extra_options.push(("smooth".into(), json!(alpha)));
    }
    quantize_with(source, out, options, precomputed, start)
}
