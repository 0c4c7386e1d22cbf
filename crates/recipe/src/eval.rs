//! How close a model's sentence embeddings stay to a reference model's, and how long each takes:
//! the one definition of fidelity and latency that every lathe command reports.
//!
//! Given the embeddings of the same `n` sentences under both models (`[n, dim]` row-major, unit
//! length or not):
//!
//! - **mean / min cosine**: the cosine between each sentence's two embeddings, averaged and at
//!   its lowest;
//! - **Spearman**: the rank correlation of the pairwise cosine similarities (every pair `i < j`),
//!   with average ranks for ties and Pearson's correlation of the ranks (scipy's `spearmanr`);
//! - **top-1 agreement**: the fraction of sentences whose nearest other sentence by cosine is the
//!   same under both models (ties go to the lower index, under both models alike);
//! - **latency**: the median of [`TIMED_RUNS`] encodings of the whole input after
//!   [`WARMUP_RUNS`] untimed one, on the current rayon pool (lathe's commands use one thread
//!   unless told otherwise), with the same batching for both models.
//!
//! Arithmetic is in f64. Memory grows with the number of pairs (8 bytes per pair and model, plus
//! the ranks): about 2 MB for the 280 sentences of the shipped evaluation set.

use std::time::{Duration, Instant};

use lathe_model::{BertModel, SentenceEncoder};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Untimed runs before the timed ones (page faults, caches, lazily built tables).
pub const WARMUP_RUNS: usize = 1;

/// Timed runs whose median is the latency.
pub const TIMED_RUNS: usize = 5;

/// The fewest sentences an evaluation accepts: each needs a nearest other sentence.
pub const MIN_SENTENCES: usize = 2;

/// Most sentences per batch where a whole evaluation set is embedded (as `lathe eval` does).
pub(crate) const BATCH: usize = 32;

/// The sentences of `path`, one per line, or the shipped evaluation set; at least
/// [`MIN_SENTENCES`] of them.
pub(crate) fn sentences(path: Option<&std::path::Path>) -> Result<Vec<String>> {
    let sentences: Vec<String> = match path {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|source| Error::Io { path: path.to_path_buf(), source })?
            .lines()
            .map(str::to_owned)
            .collect(),
        None => crate::data::eval_set().iter().map(|sentence| (*sentence).to_owned()).collect(),
    };
    if sentences.len() < MIN_SENTENCES {
        return Err(Error::TooFewSentences { found: sentences.len(), needed: MIN_SENTENCES });
    }
    Ok(sentences)
}

/// Bytes of a model folder's weight files (`*.safetensors`): its size on disk in reports.
pub(crate) fn weights_size(dir: &std::path::Path) -> Result<u64> {
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let mut total = 0;
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        if entry.path().extension().is_some_and(|ext| ext == "safetensors") {
            total += entry.metadata().map_err(io(&entry.path()))?.len();
        }
    }
    Ok(total)
}

/// How well a model's embeddings keep a reference's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fidelity {
    /// Mean over sentences of the cosine between the model's and the reference's embedding.
    pub mean_cosine: f64,
    /// The lowest of those cosines.
    pub min_cosine: f64,
    /// Spearman's rank correlation between the two models' pairwise cosine similarities; `None`
    /// (JSON `null`) when it is undefined: fewer than two pairs, or all similarities equal under
    /// one of the models.
    pub spearman: Option<f64>,
    /// Fraction of sentences whose nearest other sentence is the same under both models.
    pub top1_agreement: f64,
}

/// Time to encode the whole input, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// The evaluated model.
    pub model: f64,
    /// The reference.
    pub reference: f64,
}

/// A whole evaluation: fidelity, both latencies and the input size. Serialises to
/// `{"mean_cosine", "min_cosine", "spearman", "top1_agreement", "latency_ms": {"model",
/// "reference"}, "n_sentences"}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// How close the model stays to the reference.
    #[serde(flatten)]
    pub fidelity: Fidelity,
    /// Median time to encode the whole input.
    pub latency_ms: Latency,
    /// Sentences evaluated on.
    pub n_sentences: usize,
}

/// Encodes `sentences` with both encoders, timing them alternately ([`paired_median_times`]), and measures the
/// model's [`fidelity`] to the reference. Both use batches of `batch_size` sentences (sorted by
/// length, as [`SentenceEncoder::embed_sentences`] does) and run on the current rayon pool.
///
/// # Errors
/// [`Error::TooFewSentences`] below [`MIN_SENTENCES`], [`Error::WidthMismatch`] when the models'
/// hidden sizes differ (checked before any work), and the encoders' own errors.
///
/// # Panics
/// If `batch_size` is 0.
pub fn evaluate<S: AsRef<str>>(
    model: &SentenceEncoder,
    reference: &SentenceEncoder,
    sentences: &[S],
    batch_size: usize,
) -> Result<Evaluation> {
    assert!(batch_size > 0, "batch_size must be at least 1");
    check_comparable(model, reference, sentences.len())?;
    let model_dim = model.model().hidden_size();
    let ((reference_time, reference_embeddings), (model_time, model_embeddings)) = paired_median_times(
        || reference.embed_sentences(sentences, batch_size),
        || model.embed_sentences(sentences, batch_size),
    )?;
    let fidelity = fidelity(reference_embeddings.as_slice(), model_embeddings.as_slice(), model_dim)?;
    Ok(Evaluation {
        fidelity,
        latency_ms: Latency { model: milliseconds(model_time), reference: milliseconds(reference_time) },
        n_sentences: sentences.len(),
    })
}

/// The checks [`evaluate`] makes before any work, for callers that want to fail early: at least
/// [`MIN_SENTENCES`] sentences, and embeddings of the same width.
///
/// # Errors
/// [`Error::TooFewSentences`], [`Error::WidthMismatch`].
pub fn check_comparable(model: &SentenceEncoder, reference: &SentenceEncoder, n_sentences: usize) -> Result<()> {
    if n_sentences < MIN_SENTENCES {
        return Err(Error::TooFewSentences { found: n_sentences, needed: MIN_SENTENCES });
    }
    let (model_dim, reference_dim) = (model.model().hidden_size(), reference.model().hidden_size());
    if model_dim != reference_dim {
        return Err(Error::WidthMismatch { model: model_dim, reference: reference_dim });
    }
    Ok(())
}

fn milliseconds(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Runs `run` [`WARMUP_RUNS`] times untimed, then [`TIMED_RUNS`] times timed, and returns the
/// median time with the last run's output. The first error stops the runs and is returned.
pub fn median_time<T, E>(mut run: impl FnMut() -> Result<T, E>) -> Result<(Duration, T), E> {
    let mut output = None;
    for _ in 0..WARMUP_RUNS {
        output = Some(run()?);
    }
    let mut times = Vec::with_capacity(TIMED_RUNS);
    for _ in 0..TIMED_RUNS {
        timed_run(&mut run, &mut times, &mut output)?;
    }
    let output = output.expect("TIMED_RUNS is positive");
    Ok((median(&mut times), output))
}

/// Runs `run` once, adds its time to `times` and keeps its output in `output`; the previous
/// output is dropped after the clock stopped.
fn timed_run<T, E>(
    run: &mut impl FnMut() -> Result<T, E>,
    times: &mut Vec<Duration>,
    output: &mut Option<T>,
) -> Result<(), E> {
    let start = Instant::now();
    let result = run()?;
    times.push(start.elapsed());
    *output = Some(result);
    Ok(())
}

/// A median time with the last output of the runs it was taken over.
pub type Timed<T> = (Duration, T);

/// [`median_time`] of two workloads run alternately, `a` then `b`, warm-up runs included, so
/// that both meet the same machine: on a shared machine a slow spell lasting seconds then slows
/// both, instead of the one timed during it, and their ratio holds. Returns each median with its
/// last output. The first error stops the runs and is returned.
pub fn paired_median_times<A, B, E>(
    mut a: impl FnMut() -> Result<A, E>,
    mut b: impl FnMut() -> Result<B, E>,
) -> Result<(Timed<A>, Timed<B>), E> {
    let (mut output_a, mut output_b) = (None, None);
    for _ in 0..WARMUP_RUNS {
        output_a = Some(a()?);
        output_b = Some(b()?);
    }
    let (mut times_a, mut times_b) = (Vec::with_capacity(TIMED_RUNS), Vec::with_capacity(TIMED_RUNS));
    for _ in 0..TIMED_RUNS {
        timed_run(&mut a, &mut times_a, &mut output_a)?;
        timed_run(&mut b, &mut times_b, &mut output_b)?;
    }
    let (output_a, output_b) = (output_a.expect("TIMED_RUNS is positive"), output_b.expect("TIMED_RUNS is positive"));
    Ok(((median(&mut times_a), output_a), (median(&mut times_b), output_b)))
}

/// The median of `times` (the upper of the two middle values for an even count).
///
/// # Panics
/// If `times` is empty.
fn median(times: &mut [Duration]) -> Duration {
    assert!(!times.is_empty(), "the median of no times");
    times.sort_unstable();
    times[times.len() / 2]
}

/// Mean and min cosine, Spearman of the pairwise similarities and top-1 agreement between
/// `reference` and `model` embeddings, both row-major `[n, dim]` with row `i` embedding the same
/// sentence. A zero vector has cosine 0 with everything.
///
/// # Errors
/// [`Error::TooFewSentences`] below [`MIN_SENTENCES`] rows, [`Error::NonFinite`] naming the first
/// row that holds NaN or an infinity.
///
/// # Panics
/// If `dim` is 0, or the two slices differ in length or are not whole rows of `dim`.
pub fn fidelity(reference: &[f32], model: &[f32], dim: usize) -> Result<Fidelity> {
    assert!(dim > 0, "dim must be at least 1");
    assert_eq!(reference.len(), model.len(), "reference and model embeddings differ in length");
    assert_eq!(reference.len() % dim, 0, "{} values are not rows of {dim}", reference.len());
    let n = reference.len() / dim;
    if n < MIN_SENTENCES {
        return Err(Error::TooFewSentences { found: n, needed: MIN_SENTENCES });
    }
    let reference = unit_rows(reference, dim, "reference")?;
    let model = unit_rows(model, dim, "model")?;

    // Clamped: unit vectors in f64 can still give 1 + 1e-15.
    let cosines: Vec<f64> =
        reference.chunks_exact(dim).zip(model.chunks_exact(dim)).map(|(a, b)| dot(a, b).clamp(-1.0, 1.0)).collect();
    let mean_cosine = cosines.iter().sum::<f64>() / n as f64;
    let min_cosine = cosines.iter().copied().fold(f64::INFINITY, f64::min);

    let reference_pairs = pairwise_dots(&reference, dim);
    let model_pairs = pairwise_dots(&model, dim);
    let spearman = spearman(&reference_pairs, &model_pairs);

    let reference_nearest = nearest_from_pairs(&reference_pairs, n);
    let model_nearest = nearest_from_pairs(&model_pairs, n);
    let agreeing = reference_nearest.iter().zip(&model_nearest).filter(|(a, b)| a == b).count();
    Ok(Fidelity { mean_cosine, min_cosine, spearman, top1_agreement: agreeing as f64 / n as f64 })
}

/// The cosine of two vectors in f64, clamped to [-1, 1]; 0 when either is zero.
///
/// # Panics
/// If the lengths differ.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "cosine of vectors of different lengths");
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 { 0.0 } else { (ab / (aa * bb).sqrt()).clamp(-1.0, 1.0) }
}

/// The rows of `values` scaled to unit length in f64 (zero rows stay zero).
fn unit_rows(values: &[f32], dim: usize, which: &'static str) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(values.len());
    for (sentence, row) in values.chunks_exact(dim).enumerate() {
        if row.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite { which, sentence });
        }
        let norm = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt();
        let scale = if norm == 0.0 { 0.0 } else { 1.0 / norm };
        out.extend(row.iter().map(|&v| f64::from(v) * scale));
    }
    Ok(out)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Dot products of every pair `i < j` of rows, in the order (0,1), (0,2) .. (0,n-1), (1,2) ..
fn pairwise_dots(rows: &[f64], dim: usize) -> Vec<f64> {
    let n = rows.len() / dim;
    let mut out = Vec::with_capacity(n * n.saturating_sub(1) / 2);
    for (i, a) in rows.chunks_exact(dim).enumerate() {
        out.extend(rows.chunks_exact(dim).skip(i + 1).map(|b| dot(a, b)));
    }
    out
}

/// Position of pair `(i, j)`, `i < j`, in [`pairwise_dots`]' order.
fn pair_index(i: usize, j: usize, n: usize) -> usize {
    i * n - i * (i + 1) / 2 + (j - i - 1)
}

/// For each of `n` rows, the other row of highest similarity (the lowest index among equals).
fn nearest_from_pairs(pairs: &[f64], n: usize) -> Vec<usize> {
    (0..n)
        .map(|i| {
            let mut best: Option<(usize, f64)> = None;
            for j in (0..n).filter(|&j| j != i) {
                let similarity = pairs[if i < j { pair_index(i, j, n) } else { pair_index(j, i, n) }];
                if best.is_none_or(|(_, top)| similarity > top) {
                    best = Some((j, similarity));
                }
            }
            best.map_or(i, |(j, _)| j)
        })
        .collect()
}

/// For each of the rows of `embeddings` (`[n, dim]`), the index of its nearest other row by
/// cosine (the lowest index among equals; itself when it is the only row).
///
/// # Panics
/// If `dim` is 0 or the length is not whole rows of `dim`.
pub fn nearest_neighbours(embeddings: &[f32], dim: usize) -> Vec<usize> {
    assert!(dim > 0, "dim must be at least 1");
    assert_eq!(embeddings.len() % dim, 0, "{} values are not rows of {dim}", embeddings.len());
    let rows: Vec<f64> = embeddings
        .chunks_exact(dim)
        .flat_map(|row| {
            let norm = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt();
            let scale = if norm == 0.0 { 0.0 } else { 1.0 / norm };
            row.iter().map(move |&v| f64::from(v) * scale)
        })
        .collect();
    nearest_from_pairs(&pairwise_dots(&rows, dim), embeddings.len() / dim)
}

/// Ranks from 1 with ties given the average of the ranks they span, as scipy's `rankdata`
/// (`method="average"`): `[10, 20, 20, 5]` ranks `[2, 3.5, 3.5, 1]`. NaN ranks above everything.
pub fn average_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let value = values[order[start]];
        let end = start + order[start..].iter().take_while(|&&index| values[index] == value).count().max(1);
        // Positions start..end hold ranks start+1 ..= end; their mean is (start + 1 + end) / 2.
        let rank = (start + 1 + end) as f64 / 2.0;
        for &index in &order[start..end] {
            ranks[index] = rank;
        }
        start = end;
    }
    ranks
}

/// Pearson's correlation of `x` and `y`, or `None` when either is constant (or has fewer than
/// two values). Clamped to [-1, 1] against rounding.
///
/// # Panics
/// If the lengths differ.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    assert_eq!(x.len(), y.len(), "pearson of slices of different lengths");
    if x.len() < 2 {
        return None;
    }
    let n = x.len() as f64;
    let (mean_x, mean_y) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (&a, &b) in x.iter().zip(y) {
        let (dx, dy) = (a - mean_x, b - mean_y);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        return None;
    }
    // One square root of the product: identical inputs then give exactly 1 (sqrt(a * a) == a).
    Some((sxy / (sxx * syy).sqrt()).clamp(-1.0, 1.0))
}

/// Spearman's rank correlation: [`pearson`] of the [`average_ranks`]. `None` when undefined
/// (fewer than two values, or one side constant).
///
/// # Panics
/// If the lengths differ.
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    assert_eq!(x.len(), y.len(), "spearman of slices of different lengths");
    pearson(&average_ranks(x), &average_ranks(y))
}

/// How many linears of `model` run on each kernel, in order of first appearance:
/// `[("dense f32", 36)]` for an unmodified MiniLM.
pub fn kernel_counts(model: &BertModel) -> Vec<(String, usize)> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for (_, _, linear) in model.linears() {
        let description = linear.description();
        match counts.iter_mut().find(|(kind, _)| *kind == description) {
            Some((_, count)) => *count += 1,
            None => counts.push((description, 1)),
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXACT: f64 = 1e-12;

    fn close(a: f64, b: f64, tolerance: f64) -> bool {
        (a - b).abs() <= tolerance
    }

    #[test]
    fn average_ranks_follow_rankdata() {
        assert_eq!(average_ranks(&[10.0, 20.0, 20.0, 5.0, 20.0]), [2.0, 4.0, 4.0, 1.0, 4.0]);
        assert_eq!(average_ranks(&[3.0, 1.0, 2.0]), [3.0, 1.0, 2.0]);
        assert_eq!(average_ranks(&[7.0, 7.0]), [1.5, 1.5]);
        assert!(average_ranks(&[]).is_empty());
    }

    #[test]
    fn spearman_perfect_reversed_and_undefined() {
        let x = [0.1, 0.5, 0.3, 0.9];
        // Any increasing map keeps the ranks.
        let y: Vec<f64> = x.iter().map(|v| v * v * 10.0 + 1.0).collect();
        assert_eq!(spearman(&x, &y), Some(1.0));
        assert_eq!(spearman(&[1.0, 2.0, 3.0, 4.0], &[4.0, 3.0, 2.0, 1.0]), Some(-1.0));
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[5.0, 5.0, 5.0]), None);
        assert_eq!(spearman(&[1.0], &[2.0]), None);
    }

    #[test]
    fn spearman_with_ties_matches_the_hand_computation() {
        // x ranks [1, 2.5, 2.5, 4], y ranks [1, 3, 2, 4]; deviations from the mean 2.5 are
        // [-1.5, 0, 0, 1.5] and [-1.5, 0.5, -0.5, 1.5]: cov 4.5, sxx 4.5, syy 5, so
        // rho = 4.5 / sqrt(4.5 * 5) = sqrt(0.9) (scipy.stats.spearmanr gives 0.9486832980505138).
        let rho = spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 3.0, 2.0, 4.0]).unwrap();
        assert!(close(rho, 0.9_f64.sqrt(), EXACT), "{rho}");

        // Ties on both sides: x ranks [1.5, 1.5, 3, 4, 5], y ranks [1, 3, 3, 3, 5]; deviations
        // from 3 are [-1.5, -1.5, 0, 1, 2] and [-2, 0, 0, 0, 2]: cov 7, sxx 9.5, syy 8, so
        // rho = 7 / sqrt(76) = 0.8029550685469661.
        let rho = spearman(&[0.2, 0.2, 0.4, 0.5, 0.9], &[-1.0, 0.0, 0.0, 0.0, 3.0]).unwrap();
        assert!(close(rho, 7.0 / 76.0_f64.sqrt(), EXACT), "{rho}");
        assert!(close(rho, 0.8029550685469661, EXACT), "{rho}");
    }

    #[test]
    fn pearson_of_a_line_and_of_noise() {
        assert_eq!(pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]), Some(1.0));
        // Deviations [-1, 0, 1] and [1, -2, 1]: covariance 0.
        assert_eq!(pearson(&[1.0, 2.0, 3.0], &[1.0, -2.0, 1.0]), Some(0.0));
    }

    #[test]
    fn cosine_ignores_length_and_zero_vectors_give_zero() {
        assert!(close(cosine(&[1.0, 2.0, 2.0], &[2.0, 4.0, 4.0]), 1.0, EXACT));
        assert!(close(cosine(&[1.0, 0.0], &[1.0, 1.0]), 0.5_f64.sqrt(), EXACT));
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 3.0]), 0.0);
        assert_eq!(cosine(&[0.0, 0.0], &[0.0, 3.0]), 0.0);
    }

    /// Unit vectors in the plane at the given angles, scaled by `length`.
    fn at_angles(degrees: &[f64], length: f32) -> Vec<f32> {
        degrees
            .iter()
            .flat_map(|d| {
                let radians = d.to_radians();
                [radians.cos() as f32 * length, radians.sin() as f32 * length]
            })
            .collect()
    }

    #[test]
    fn the_same_embeddings_up_to_scale_agree_perfectly() {
        let reference = at_angles(&[0.0, 10.0, 50.0, 110.0, 170.0], 1.0);
        let model = at_angles(&[0.0, 10.0, 50.0, 110.0, 170.0], 3.5);
        let fidelity = fidelity(&reference, &model, 2).unwrap();
        assert!(close(fidelity.mean_cosine, 1.0, 1e-7) && close(fidelity.min_cosine, 1.0, 1e-7), "{fidelity:?}");
        assert_eq!(fidelity.spearman, Some(1.0));
        assert_eq!(fidelity.top1_agreement, 1.0);
    }

    #[test]
    fn a_rotation_keeps_the_ranking_but_not_the_cosine() {
        let angles = [0.0, 10.0, 50.0, 110.0];
        let reference = at_angles(&angles, 1.0);
        let rotated = at_angles(&angles.map(|a| a + 90.0), 1.0);
        let fidelity = fidelity(&reference, &rotated, 2).unwrap();
        assert!(close(fidelity.mean_cosine, 0.0, 1e-7) && close(fidelity.min_cosine, 0.0, 1e-7));
        assert_eq!(fidelity.spearman, Some(1.0));
        assert_eq!(fidelity.top1_agreement, 1.0);
    }

    #[test]
    fn one_moved_sentence_changes_every_measure_as_computed_by_hand() {
        // Reference angles 0, 10, 50, 110; the model moves sentence 1 to 30 degrees.
        let reference = at_angles(&[0.0, 10.0, 50.0, 110.0], 1.0);
        let model = at_angles(&[0.0, 30.0, 50.0, 110.0], 2.0);
        let fidelity = fidelity(&reference, &model, 2).unwrap();
        // Cosines to the reference: 1, cos 20, 1, 1.
        let cos20 = 20.0_f64.to_radians().cos();
        assert!(close(fidelity.mean_cosine, (3.0 + cos20) / 4.0, 1e-7), "{fidelity:?}");
        assert!(close(fidelity.min_cosine, cos20, 1e-7), "{fidelity:?}");
        // Pair angles (0,1) (0,2) (0,3) (1,2) (1,3) (2,3): reference 10 50 110 40 100 60, model
        // 30 50 110 20 80 60. Similarity falls with the angle; ranks by angle are [1 3 6 2 5 4]
        // and [2 3 6 1 5 4], so sum d^2 = 2 and rho = 1 - 6 * 2 / (6 * 35) = 33/35.
        assert!(close(fidelity.spearman.unwrap(), 33.0 / 35.0, 1e-12), "{fidelity:?}");
        // Nearest: reference 0->1, 1->0, 2->1, 3->2; model 0->1, 1->2, 2->1, 3->2.
        assert_eq!(nearest_neighbours(&reference, 2), [1, 0, 1, 2]);
        assert_eq!(nearest_neighbours(&model, 2), [1, 2, 1, 2]);
        assert_eq!(fidelity.top1_agreement, 0.75);
    }

    #[test]
    fn nearest_neighbour_ties_go_to_the_lower_index() {
        // Rows 1 and 2 are equal, so row 0's two candidates tie and each other's nearest is the twin.
        let rows = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, -1.0, 0.0];
        assert_eq!(nearest_neighbours(&rows, 2), [1, 2, 1, 1]);
        assert_eq!(nearest_neighbours(&[1.0, 2.0], 2), [0]);
    }

    #[test]
    fn pair_index_walks_the_upper_triangle() {
        let n = 5;
        let mut expected = 0;
        for i in 0..n {
            for j in i + 1..n {
                assert_eq!(pair_index(i, j, n), expected);
                expected += 1;
            }
        }
        assert_eq!(pairwise_dots(&vec![1.0; n * 3], 3).len(), expected);
    }

    #[test]
    fn bad_embeddings_are_errors() {
        let good = [1.0, 0.0, 0.0, 1.0];
        let nan = [1.0, 0.0, f32::NAN, 1.0];
        assert!(matches!(fidelity(&good, &nan, 2), Err(Error::NonFinite { which: "model", sentence: 1 })));
        assert!(matches!(
            fidelity(&[f32::INFINITY, 0.0, 0.0, 1.0], &good, 2),
            Err(Error::NonFinite { which: "reference", sentence: 0 })
        ));
        assert!(matches!(fidelity(&[1.0, 0.0], &[1.0, 0.0], 2), Err(Error::TooFewSentences { found: 1, needed: 2 })));
    }

    #[test]
    fn two_sentences_have_no_spearman() {
        let fidelity = fidelity(&[1.0, 0.0, 0.0, 1.0], &[1.0, 0.0, 0.0, 1.0], 2).unwrap();
        assert_eq!(fidelity.spearman, None);
        assert_eq!(fidelity.top1_agreement, 1.0);
    }

    #[test]
    fn paired_times_alternate_the_two_workloads() {
        let order = std::cell::RefCell::new(Vec::new());
        let ((_, a), (_, b)) = paired_median_times(
            || {
                order.borrow_mut().push('a');
                Ok::<_, ()>(order.borrow().len())
            },
            || {
                order.borrow_mut().push('b');
                Ok(order.borrow().len())
            },
        )
        .unwrap();
        let runs = WARMUP_RUNS + TIMED_RUNS;
        assert_eq!(order.borrow().iter().collect::<String>(), "ab".repeat(runs));
        assert_eq!((a, b), (2 * runs - 1, 2 * runs));
        let failed = paired_median_times(|| Ok(()), || Err::<(), _>("b failed"));
        assert_eq!(failed.unwrap_err(), "b failed");
    }

    #[test]
    fn median_time_warms_up_then_times_five_runs() {
        let mut calls = 0;
        let (_, last) = median_time(|| {
            calls += 1;
            Ok::<_, ()>(calls)
        })
        .unwrap();
        assert_eq!((calls, last), (WARMUP_RUNS + TIMED_RUNS, WARMUP_RUNS + TIMED_RUNS));

        let mut calls = 0;
        let failed = median_time(|| {
            calls += 1;
            if calls == 3 { Err("third run failed") } else { Ok(()) }
        });
        assert_eq!((failed, calls), (Err("third run failed"), 3));

        let ms = Duration::from_millis;
        assert_eq!(median(&mut [ms(9), ms(1), ms(5), ms(7), ms(3)]), ms(5));
        assert_eq!(median(&mut [ms(4), ms(2)]), ms(4));
    }

    #[test]
    fn an_evaluation_serialises_to_the_documented_keys() {
        let evaluation = Evaluation {
            fidelity: Fidelity { mean_cosine: 0.99, min_cosine: 0.9, spearman: Some(0.95), top1_agreement: 0.875 },
            latency_ms: Latency { model: 12.5, reference: 25.0 },
            n_sentences: 8,
        };
        let json = serde_json::to_value(evaluation).unwrap();
        let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["mean_cosine", "min_cosine", "spearman", "top1_agreement", "latency_ms", "n_sentences"]);
        assert_eq!(json["latency_ms"], serde_json::json!({"model": 12.5, "reference": 25.0}));
        let back: Evaluation = serde_json::from_value(json).unwrap();
        assert_eq!(back, evaluation);
        let undefined = Fidelity { spearman: None, ..evaluation.fidelity };
        assert_eq!(serde_json::to_value(undefined).unwrap()["spearman"], serde_json::Value::Null);
    }
}
