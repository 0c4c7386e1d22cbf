//! Observers for static activation scales: see [`HistogramObserver`].

use crate::{Error, Result};

/// Bins of [`HistogramObserver`].
pub const HISTOGRAM_BINS: usize = 2048;

fn check_finite(x: &[f32]) -> Result<()> {
    match x.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(Error::NonFiniteActivation { token: 0, channel: index, value: x[index] }),
        None => Ok(()),
    }
}

/// The scale of a symmetric grid with `levels` steps either side of 0 that spans `clip`:
/// `clip / levels` (`levels` = 127 for int8).
///
/// # Errors
/// [`Error::BadLevels`] for 0 levels and [`Error::BadStatistic`] for a negative or non-finite
/// clip.
pub fn symmetric_scale(clip: f32, levels: u32) -> Result<f32> {
    if levels == 0 {
        return Err(Error::BadLevels { levels });
    }
    if !(clip.is_finite() && clip >= 0.0) {
        return Err(Error::BadStatistic { what: "clip", index: 0, value: clip });
    }
    Ok(clip / levels as f32)
}

/// Running minimum and maximum of every value seen.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MinMaxObserver {
    range: Option<(f32, f32)>,
}

impl MinMaxObserver {
    /// An observer that has seen nothing.
    pub fn new() -> MinMaxObserver {
        MinMaxObserver::default()
    }

    /// Watches a batch (any shape, flattened).
    ///
    /// # Errors
    /// [`Error::NonFiniteActivation`] (with the flat index as the channel) on a NaN or infinite
    /// value; the observer is unchanged.
    pub fn observe(&mut self, x: &[f32]) -> Result<()> {
        check_finite(x)?;
        for &v in x {
            let (lo, hi) = self.range.unwrap_or((v, v));
            self.range = Some((lo.min(v), hi.max(v)));
        }
        Ok(())
    }

    /// `(min, max)` of everything seen, `None` before the first value.
    pub fn range(&self) -> Option<(f32, f32)> {
        self.range
    }

    /// The largest magnitude seen: the clip of a symmetric grid.
    ///
    /// # Errors
    /// [`Error::EmptyObserver`] before the first value.
    pub fn clip(&self) -> Result<f32> {
        self.range.map(|(lo, hi)| lo.abs().max(hi.abs())).ok_or(Error::EmptyObserver)
    }
}

/// Observers for static activation scales: watch the calibration activations of one tensor and
/// pick the clipping range of a symmetric integer grid (`scale = clip / levels`, 127 levels
/// either side for int8, 7 for int4, as lathe-quant's activation quantizer uses).
///
/// - [`MinMaxObserver`]: the exact range; one outlier sets it.
/// - [`HistogramObserver::percentile`]: the `p`-th percentile of `|x|` (e.g. 99.99).
/// - [`HistogramObserver::mse_clip`]: the clip that minimises the expected squared quantization
///   error over the histogram: each value inside the clip costs the uniform rounding noise
///   `step^2 / 12` (`step = clip / levels`), each value beyond it `(|x| - clip)^2`, evaluated at
///   the bin centres; the candidates are the upper edges of the bins up to the maximum.
///
/// The histogram has [`HISTOGRAM_BINS`] bins over `[0, range)`; `range` starts at the first
/// batch's largest magnitude and doubles (merging bins in pairs, which loses nothing) whenever a
/// larger value arrives, so batches can stream in any order with a bounded memory.
///
/// A histogram of `|x|` for percentile and MSE-optimal clipping.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramObserver {
    bins: Vec<u64>,
    /// The histogram covers `[0, range)`; 0 until a non-zero value arrives.
    range: f32,
    count: u64,
    abs_max: f32,
}

impl Default for HistogramObserver {
    fn default() -> HistogramObserver {
        HistogramObserver::new()
    }
}

impl HistogramObserver {
    /// An observer that has seen nothing.
    pub fn new() -> HistogramObserver {
        HistogramObserver { bins: vec![0; HISTOGRAM_BINS], range: 0.0, count: 0, abs_max: 0.0 }
    }

    /// Watches a batch (any shape, flattened).
    ///
    /// # Errors
    /// [`Error::NonFiniteActivation`] (with the flat index as the channel) on a NaN or infinite
    /// value; the observer is unchanged.
    pub fn observe(&mut self, x: &[f32]) -> Result<()> {
        check_finite(x)?;
        let batch_max = x.iter().fold(0.0f32, |max, v| max.max(v.abs()));
        if self.range == 0.0 {
            // Everything seen so far was 0 and sits in bin 0 whatever the range becomes.
            self.range = batch_max;
        }
        while batch_max > self.range && self.range > 0.0 {
            self.grow();
        }
        self.abs_max = self.abs_max.max(batch_max);
        self.count += x.len() as u64;
        let per_unit = HISTOGRAM_BINS as f64 / f64::from(self.range.max(f32::MIN_POSITIVE));
        for &v in x {
            let bin = ((f64::from(v.abs()) * per_unit) as usize).min(HISTOGRAM_BINS - 1);
            self.bins[bin] += 1;
        }
        Ok(())
    }

    /// Doubles the range: bins `2i` and `2i + 1` become bin `i`.
    fn grow(&mut self) {
        for i in 0..HISTOGRAM_BINS / 2 {
            self.bins[i] = self.bins[2 * i] + self.bins[2 * i + 1];
        }
        self.bins[HISTOGRAM_BINS / 2..].fill(0);
        self.range *= 2.0;
    }

    /// Values seen.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The largest magnitude seen (the min/max clip).
    pub fn abs_max(&self) -> f32 {
        self.abs_max
    }

    fn bin_width(&self) -> f64 {
        f64::from(self.range) / HISTOGRAM_BINS as f64
    }

    /// The `percentile`-th percentile (`0..=100`, e.g. 99.99) of `|x|`, interpolated linearly
    /// within its bin and capped at the largest magnitude seen.
    ///
    /// # Errors
    /// [`Error::BadPercentile`] outside `0..=100` and [`Error::EmptyObserver`] before any value.
    pub fn percentile(&self, percentile: f64) -> Result<f32> {
        if !(0.0..=100.0).contains(&percentile) {
            return Err(Error::BadPercentile { percentile });
        }
        if self.count == 0 {
            return Err(Error::EmptyObserver);
        }
        let target = percentile / 100.0 * self.count as f64;
        let mut below = 0.0;
        for (i, &n) in self.bins.iter().enumerate() {
            let n = n as f64;
            if n > 0.0 && below + n >= target {
                let within = ((target - below) / n).clamp(0.0, 1.0);
                let value = (i as f64 + within) * self.bin_width();
                return Ok((value as f32).min(self.abs_max));
            }
            below += n;
        }
        Ok(self.abs_max)
    }

    /// The clip minimising the expected squared error of a symmetric grid with `levels` steps
    /// either side (127 for int8, 7 for int4); see above.
    ///
    /// # Errors
    /// [`Error::BadLevels`] for 0 levels and [`Error::EmptyObserver`] before any value.
    pub fn mse_clip(&self, levels: u32) -> Result<f32> {
        if levels == 0 {
            return Err(Error::BadLevels { levels });
        }
        if self.count == 0 {
            return Err(Error::EmptyObserver);
        }
        if self.abs_max == 0.0 {
            return Ok(0.0);
        }
        let width = self.bin_width();
        let last = self.bins.iter().rposition(|&n| n > 0).unwrap_or(0);
        let centre = |i: usize| (i as f64 + 0.5) * width;
        let mut best = (f64::INFINITY, f64::from(self.abs_max));
        let candidates = (0..=last).map(|b| ((b + 1) as f64 * width).min(f64::from(self.abs_max)));
        for clip in candidates {
            let step = clip / f64::from(levels);
            let mut error = 0.0;
            for (i, &n) in self.bins[..=last].iter().enumerate() {
                if n == 0 {
                    continue;
                }
                let v = centre(i);
                error += n as f64 * if v <= clip { step * step / 12.0 } else { (v - clip) * (v - clip) };
            }
            if error < best.0 {
                best = (error, clip);
            }
        }
        Ok(best.1 as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;

    /// The squared error of rounding `x` onto the symmetric grid of `levels` steps up to `clip`.
    fn grid_mse(x: &[f32], clip: f32, levels: u32) -> f64 {
        let scale = f64::from(clip) / f64::from(levels);
        let top = f64::from(levels);
        x.iter()
            .map(|&v| {
                let q = (f64::from(v) / scale).round_ties_even().clamp(-top, top);
                (f64::from(v) - q * scale).powi(2)
            })
            .sum::<f64>()
            / x.len() as f64
    }

    fn sample(seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        let mut x: Vec<f32> = (0..100_000).map(|_| rng.normal()).collect();
        // A handful of outliers, as in the FFN inputs of real transformers.
        for (i, v) in [(17, 60.0), (4_000, -45.0), (90_000, 80.0)] {
            x[i] = v;
        }
        x
    }

    #[test]
    fn min_max_tracks_the_range() {
        let mut observer = MinMaxObserver::new();
        assert_eq!(observer.clip(), Err(Error::EmptyObserver));
        observer.observe(&[1.0, -3.0]).unwrap();
        observer.observe(&[2.5]).unwrap();
        assert_eq!(observer.range(), Some((-3.0, 2.5)));
        assert_eq!(observer.clip(), Ok(3.0));
        assert!(matches!(observer.observe(&[0.0, f32::NAN]), Err(Error::NonFiniteActivation { channel: 1, .. })));
        assert_eq!(observer.range(), Some((-3.0, 2.5)));
        assert_eq!(symmetric_scale(127.0, 127), Ok(1.0));
        assert_eq!(symmetric_scale(1.0, 0), Err(Error::BadLevels { levels: 0 }));
    }

    #[test]
    fn percentiles_match_the_sorted_sample_within_a_bin() {
        let x = sample(21);
        let mut observer = HistogramObserver::new();
        // Small batches first, so the range has to grow several times.
        observer.observe(&x[..10]).unwrap();
        for chunk in x[10..].chunks(7_777) {
            observer.observe(chunk).unwrap();
        }
        assert_eq!(observer.count(), x.len() as u64);
        assert_eq!(observer.abs_max(), 80.0);
        let mut sorted: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        sorted.sort_by(f32::total_cmp);
        let width = observer.bin_width() as f32;
        for p in [50.0, 99.0, 99.9] {
            let exact = sorted[(p / 100.0 * x.len() as f64).ceil() as usize - 1];
            let estimate = observer.percentile(p).unwrap();
            assert!((estimate - exact).abs() <= width, "p{p}: {estimate} vs {exact} (bin {width})");
        }
        assert_eq!(observer.percentile(100.0), Ok(80.0));
        assert!(observer.percentile(99.99).unwrap() < 10.0);
        assert_eq!(observer.percentile(100.5), Err(Error::BadPercentile { percentile: 100.5 }));
        assert_eq!(HistogramObserver::new().percentile(50.0), Err(Error::EmptyObserver));
    }

    #[test]
    fn mse_clipping_beats_min_max_on_outliers() {
        let x = sample(22);
        let mut observer = HistogramObserver::new();
        for chunk in x.chunks(10_000) {
            observer.observe(chunk).unwrap();
        }
        for levels in [7, 127] {
            let clip = observer.mse_clip(levels).unwrap();
            let (mse, min_max) = (grid_mse(&x, clip, levels), grid_mse(&x, observer.abs_max(), levels));
            eprintln!("levels {levels}: mse clip {clip:.3} -> {mse:.3e}; min/max clip 80 -> {min_max:.3e}");
            assert!(clip < observer.abs_max());
            assert!(mse < min_max, "{mse} vs {min_max}");
        }
        // With more levels the best clip keeps more of the tail.
        assert!(observer.mse_clip(127).unwrap() > observer.mse_clip(7).unwrap());
        let mut zeros = HistogramObserver::new();
        zeros.observe(&[0.0; 4]).unwrap();
        assert_eq!(zeros.mse_clip(127), Ok(0.0));
        assert_eq!(zeros.percentile(50.0), Ok(0.0));
    }
}
