//! Search spaces, parameter values and the grid and random samplers.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The placeholder name `emit` uses for the trial id; no parameter may take it.
pub(crate) const TRIAL_PLACEHOLDER: &str = "trial";

/// One parameter value. In JSON an integer is a number without a fraction (`3`), a float a number
/// with one (`3.0`, `1e-05`), a string a string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// An integer (integer ranges, integer categories).
    Int(i64),
    /// A float (float ranges, float categories); never NaN.
    Float(f64),
    /// A string category.
    Str(String),
}

impl Value {
    /// The value as a float (integers convert), `None` for strings.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Int(value) => Some(value as f64),
            Value::Float(value) => Some(value),
            Value::Str(_) => None,
        }
    }

    /// The value as an integer, `None` for floats and strings.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::Int(value) => Some(value),
            _ => None,
        }
    }

    /// The value as a string, `None` for numbers.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(value) => Some(value),
            _ => None,
        }
    }
}

/// Integers print as integers, floats in Rust's shortest round-trip form with a fraction or an
/// exponent (`1.0`, `0.001`, `1e-5`), strings as they are.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(value) => write!(f, "{value}"),
            Value::Float(value) => write!(f, "{value:?}"),
            Value::Str(value) => f.write_str(value),
        }
    }
}

impl From<i64> for Value {
    fn from(value: i64) -> Self {
        Value::Int(value)
    }
}

impl From<i32> for Value {
    fn from(value: i32) -> Self {
        Value::Int(value.into())
    }
}

impl From<f64> for Value {
    fn from(value: f64) -> Self {
        Value::Float(value)
    }
}

impl From<&str> for Value {
    fn from(value: &str) -> Self {
        Value::Str(value.to_owned())
    }
}

impl From<String> for Value {
    fn from(value: String) -> Self {
        Value::Str(value)
    }
}

/// A trial's parameters: name -> value, ordered by name, serialised as a JSON object.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Params(BTreeMap<String, Value>);

impl Params {
    /// No parameters.
    pub fn new() -> Self {
        Params::default()
    }

    /// Sets a parameter (builder style), replacing any earlier value of that name.
    pub fn with(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.0.insert(name.into(), value.into());
        self
    }

    /// The value of a parameter.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    /// A numeric parameter as a float (integers convert).
    pub fn f64(&self, name: &str) -> Option<f64> {
        self.get(name).and_then(Value::as_f64)
    }

    /// An integer parameter.
    pub fn i64(&self, name: &str) -> Option<i64> {
        self.get(name).and_then(Value::as_i64)
    }

    /// A string parameter.
    pub fn str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(Value::as_str)
    }

    /// The parameters in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(name, value)| (name.as_str(), value))
    }

    /// The number of parameters.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The parameters as one line of JSON (`{"lr":0.001,"method":"wanda"}`).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl<N: Into<String>, V: Into<Value>> FromIterator<(N, V)> for Params {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        Params(iter.into_iter().map(|(name, value)| (name.into(), value.into())).collect())
    }
}

/// How a float range is sampled and gridded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// Evenly spaced values.
    Linear,
    /// Evenly spaced logarithms (learning rates, regularisation strengths); `low > 0`.
    Log,
}

/// The values one parameter may take.
#[derive(Debug, Clone, PartialEq)]
pub enum Domain {
    /// One of a list of values (strings or numbers), in the given order.
    Categorical(Vec<Value>),
    /// `low, low + step, ...` up to and including `high` when the step lands on it.
    Int {
        /// The smallest value.
        low: i64,
        /// The largest value allowed.
        high: i64,
        /// The step, at least 1.
        step: i64,
    },
    /// A float in `[low, high]`.
    Float {
        /// The smallest value.
        low: f64,
        /// The largest value.
        high: f64,
        /// Linear or logarithmic.
        scale: Scale,
    },
}

impl Domain {
    fn validate(&self, name: &str) -> Result<()> {
        let invalid = |reason: String| Err(Error::InvalidParameter { name: name.to_owned(), reason });
        match self {
            Domain::Categorical(values) => {
                if values.is_empty() {
                    return invalid("a categorical parameter needs at least one value".into());
                }
                for (index, value) in values.iter().enumerate() {
                    if matches!(value, Value::Float(float) if !float.is_finite()) {
                        return invalid(format!("category {index} is {value}, not a finite number"));
                    }
                    if values[..index].contains(value) {
                        return invalid(format!("category {value} is listed twice"));
                    }
                }
            }
            &Domain::Int { low, high, step } => {
                if step < 1 {
                    return invalid(format!("integer step is {step}, expected at least 1"));
                }
                if low > high {
                    return invalid(format!("integer range has low {low} above high {high}"));
                }
            }
            &Domain::Float { low, high, scale } => {
                if !low.is_finite() || !high.is_finite() {
                    return invalid(format!("float range [{low}, {high}] is not finite"));
                }
                if low > high {
                    return invalid(format!("float range has low {low} above high {high}"));
                }
                if scale == Scale::Log && low <= 0.0 {
                    return invalid(format!("log range needs low above 0, found {low}"));
                }
            }
        }
        Ok(())
    }

    /// The number of values of an integer range (up to 2^64, hence `u128`).
    fn int_count(low: i64, high: i64, step: i64) -> u128 {
        ((i128::from(high) - i128::from(low)) / i128::from(step) + 1) as u128
    }

    /// The grid values of this domain; `float_points` applies to float ranges.
    fn grid_values(&self, name: &str, float_points: usize) -> Result<Vec<Value>> {
        match self {
            Domain::Categorical(values) => Ok(values.clone()),
            &Domain::Int { low, high, step } => {
                let count = Domain::int_count(low, high, step);
                if count > GRID_LIMIT as u128 {
                    return Err(Error::InvalidGrid {
                        reason: format!("integer parameter `{name}` has {count} values, more than {GRID_LIMIT}"),
                    });
                }
                Ok((0..count as i128).map(|k| Value::Int((i128::from(low) + k * i128::from(step)) as i64)).collect())
            }
            &Domain::Float { low, high, scale } => {
                if low == high {
                    return Ok(vec![Value::Float(low)]);
                }
                if float_points < 2 {
                    return Err(Error::InvalidGrid {
                        reason: format!(
                            "float parameter `{name}` needs at least 2 grid points to span [{low}, {high}], \
                             found {float_points}"
                        ),
                    });
                }
                let last = (float_points - 1) as f64;
                let values = (0..float_points).map(|index| {
                    // The ends are set exactly so a grid always contains `low` and `high`.
                    if index == 0 {
                        return low;
                    }
                    if index == float_points - 1 {
                        return high;
                    }
                    let fraction = index as f64 / last;
                    match scale {
                        Scale::Linear => low + (high - low) * fraction,
                        Scale::Log => (low.ln() + (high.ln() - low.ln()) * fraction).exp(),
                    }
                });
                Ok(values.map(Value::Float).collect())
            }
        }
    }

    fn sample(&self, rng: &mut SplitMix64) -> Value {
        match self {
            Domain::Categorical(values) => values[rng.below(values.len() as u64) as usize].clone(),
            &Domain::Int { low, high, step } => {
                let count = Domain::int_count(low, high, step);
                // Only the full i64 range with step 1 has 2^64 values; every u64 is then an index.
                let index = if count > u128::from(u64::MAX) { rng.next_u64() } else { rng.below(count as u64) };
                Value::Int((i128::from(low) + i128::from(index) * i128::from(step)) as i64)
            }
            &Domain::Float { low, high, scale } => {
                let unit = rng.next_f64();
                let value = match scale {
                    Scale::Linear => low + (high - low) * unit,
                    Scale::Log => (low.ln() + (high.ln() - low.ln()) * unit).exp(),
                };
                Value::Float(value.clamp(low, high))
            }
        }
    }
}

/// The largest grid [`Space::grid`] builds.
pub const GRID_LIMIT: usize = 1 << 24;

/// A search space: named parameters, each with a [`Domain`], in declaration order.
///
/// Names are non-empty, made of ASCII letters, digits, `_`, `-` and `.` (so they work as `{name}`
/// placeholders), unique, and not `trial` (the placeholder for the trial id).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Space {
    params: Vec<(String, Domain)>,
}

impl Space {
    /// An empty space (its grid is one trial with no parameters).
    pub fn new() -> Self {
        Space::default()
    }

    /// Adds a parameter.
    pub fn add(mut self, name: &str, domain: Domain) -> Result<Self> {
        let invalid = |reason: &str| Err(Error::InvalidParameter { name: name.to_owned(), reason: reason.to_owned() });
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
            return invalid("a name is made of ASCII letters, digits, `_`, `-` and `.`");
        }
        if name == TRIAL_PLACEHOLDER {
            return invalid("`trial` is the placeholder for the trial id");
        }
        if self.params.iter().any(|(existing, _)| existing == name) {
            return invalid("the space already has a parameter of that name");
        }
        domain.validate(name)?;
        self.params.push((name.to_owned(), domain));
        Ok(self)
    }

    /// Adds a categorical parameter (`["magnitude", "wanda"]`, `[2, 4, 8]`, `[0.5, 0.7]`).
    pub fn categorical<V: Into<Value>>(self, name: &str, values: impl IntoIterator<Item = V>) -> Result<Self> {
        self.add(name, Domain::Categorical(values.into_iter().map(Into::into).collect()))
    }

    /// Adds an integer range `low, low + step, ...` (values above `high` excluded).
    pub fn int(self, name: &str, low: i64, high: i64, step: i64) -> Result<Self> {
        self.add(name, Domain::Int { low, high, step })
    }

    /// Adds a float range `[low, high]` with linear spacing.
    pub fn float(self, name: &str, low: f64, high: f64) -> Result<Self> {
        self.add(name, Domain::Float { low, high, scale: Scale::Linear })
    }

    /// Adds a float range `[low, high]` with logarithmic spacing (`low > 0`).
    pub fn log_float(self, name: &str, low: f64, high: f64) -> Result<Self> {
        self.add(name, Domain::Float { low, high, scale: Scale::Log })
    }

    /// The parameters in declaration order.
    pub fn params(&self) -> impl Iterator<Item = (&str, &Domain)> {
        self.params.iter().map(|(name, domain)| (name.as_str(), domain))
    }

    /// Every combination of values exactly once, in a fixed order: the last declared parameter
    /// varies fastest. Categories keep their order, integer ranges go up, and each float range
    /// contributes `float_points` values from `low` to `high` inclusive (evenly spaced, or evenly
    /// spaced in log for [`Scale::Log`]); a range with `low == high` contributes one.
    ///
    /// Fails when a non-degenerate float range meets `float_points < 2` or when the grid would
    /// hold more than [`GRID_LIMIT`] trials.
    pub fn grid(&self, float_points: usize) -> Result<Vec<Params>> {
        let axes = self
            .params
            .iter()
            .map(|(name, domain)| domain.grid_values(name, float_points))
            .collect::<Result<Vec<_>>>()?;
        let total =
            axes.iter().try_fold(1usize, |total, axis| total.checked_mul(axis.len()).filter(|&t| t <= GRID_LIMIT));
        let Some(total) = total else {
            let sizes: Vec<usize> = axes.iter().map(Vec::len).collect();
            return Err(Error::InvalidGrid { reason: format!("axes of {sizes:?} values exceed {GRID_LIMIT} trials") });
        };
        let mut grid = Vec::with_capacity(total);
        let mut odometer = vec![0usize; axes.len()];
        for _ in 0..total {
            grid.push(
                self.params
                    .iter()
                    .zip(&axes)
                    .zip(&odometer)
                    .map(|(((name, _), axis), &k)| (name.clone(), axis[k].clone()))
                    .collect(),
            );
            for position in (0..axes.len()).rev() {
                odometer[position] += 1;
                if odometer[position] < axes[position].len() {
                    break;
                }
                odometer[position] = 0;
            }
        }
        Ok(grid)
    }

    /// `n_trials` independent draws, deterministic for a `seed` (the same seed gives the same
    /// sequence on every platform; a longer run extends a shorter one). Categories and integer
    /// steps are uniform, linear floats uniform in `[low, high]`, log floats uniform in log.
    pub fn random(&self, n_trials: usize, seed: u64) -> Vec<Params> {
        let mut rng = SplitMix64(seed);
        (0..n_trials)
            .map(|_| self.params.iter().map(|(name, domain)| (name.clone(), domain.sample(&mut rng))).collect())
            .collect()
    }
}

/// SplitMix64 (Steele, Lea and Flood 2014): one 64-bit state, passes BigCrush, and is enough for
/// drawing configurations; it keeps lathe-search free of a `rand` dependency.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[0, n)` without modulo bias (Lemire's multiply-and-reject); `n > 0`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        let threshold = n.wrapping_neg() % n;
        loop {
            let product = u128::from(self.next_u64()) * u128::from(n);
            if (product as u64) >= threshold {
                return (product >> 64) as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_the_reference_sequence() {
        // First outputs of splitmix64.c (Vigna) seeded with 1234567, checked with a transcription.
        let mut rng = SplitMix64(1234567);
        let expected = [6457827717110365317u64, 3203168211198807973, 9817491932198370423, 4593380528125082431];
        for value in expected {
            assert_eq!(rng.next_u64(), value);
        }
    }

    #[test]
    fn below_is_in_range_and_hits_every_value() {
        let mut rng = SplitMix64(7);
        let mut seen = [0usize; 5];
        for _ in 0..1000 {
            seen[rng.below(5) as usize] += 1;
        }
        assert!(seen.iter().all(|&count| (150..250).contains(&count)), "{seen:?}");
    }

    #[test]
    fn full_i64_range_samples_without_overflow() {
        let space = Space::new().int("x", i64::MIN, i64::MAX, 1).unwrap();
        let draws = space.random(100, 3);
        let distinct: std::collections::BTreeSet<i64> = draws.iter().map(|p| p.i64("x").unwrap()).collect();
        assert_eq!(distinct.len(), 100);
        assert!(space.grid(2).is_err());
    }

    #[test]
    fn int_range_stops_at_the_last_step_below_high() {
        let space = Space::new().int("x", 1, 10, 4).unwrap();
        let values: Vec<i64> = space.grid(2).unwrap().iter().map(|p| p.i64("x").unwrap()).collect();
        assert_eq!(values, [1, 5, 9]);
        for params in space.random(200, 9) {
            assert!([1, 5, 9].contains(&params.i64("x").unwrap()));
        }
    }
}
