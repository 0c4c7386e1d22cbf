//! Objectives, dominance and Pareto fronts.

use serde::{Deserialize, Serialize};

/// Whether an objective is better small or large.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Smaller is better (loss, size, latency).
    Minimize,
    /// Larger is better (accuracy, similarity, throughput).
    Maximize,
}

impl Direction {
    /// Whether `a` is strictly better than `b` in this direction.
    pub fn better(self, a: f64, b: f64) -> bool {
        match self {
            Direction::Minimize => a < b,
            Direction::Maximize => a > b,
        }
    }

    /// Orders `a` before `b` when `a` is better (total order; NaN last either way).
    pub(crate) fn order(self, a: f64, b: f64) -> std::cmp::Ordering {
        match (a.is_nan(), b.is_nan()) {
            (true, true) => std::cmp::Ordering::Equal,
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            (false, false) => match self {
                Direction::Minimize => a.total_cmp(&b),
                Direction::Maximize => b.total_cmp(&a),
            },
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Direction::Minimize => "min",
            Direction::Maximize => "max",
        }
    }
}

/// A named objective with its direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Objective {
    /// The name trials report values under (`loss`, `size_mb`).
    pub name: String,
    /// Better small or large.
    pub direction: Direction,
}

impl Objective {
    /// An objective to minimise.
    pub fn minimize(name: impl Into<String>) -> Self {
        Objective { name: name.into(), direction: Direction::Minimize }
    }

    /// An objective to maximise.
    pub fn maximize(name: impl Into<String>) -> Self {
        Objective { name: name.into(), direction: Direction::Maximize }
    }
}

/// Whether `a` dominates `b`: no worse on every objective and strictly better on at least one.
/// Two points equal on every objective do not dominate each other; a NaN coordinate is never
/// "no worse", so a point with a NaN neither dominates nor is dominated.
///
/// # Panics
///
/// When `a`, `b` and `directions` differ in length (a caller bug).
pub fn dominates(a: &[f64], b: &[f64], directions: &[Direction]) -> bool {
    assert!(
        a.len() == directions.len() && b.len() == directions.len(),
        "dominance needs one value per objective: {} and {} values for {} objectives",
        a.len(),
        b.len(),
        directions.len()
    );
    let mut strictly_better = false;
    for ((&value_a, &value_b), &direction) in a.iter().zip(b).zip(directions) {
        let no_worse = value_a == value_b || direction.better(value_a, value_b);
        if !no_worse {
            return false;
        }
        strictly_better |= direction.better(value_a, value_b);
    }
    strictly_better
}

/// The indices (ascending) of the points no other point dominates. Duplicates of a front point
/// are all on the front. Quadratic in the number of points, which suits studies of thousands of
/// trials.
///
/// # Panics
///
/// When a point's length differs from `directions`' (a caller bug).
pub fn pareto_front<P: AsRef<[f64]>>(points: &[P], directions: &[Direction]) -> Vec<usize> {
    (0..points.len())
        .filter(|&candidate| {
            !points.iter().any(|other| dominates(other.as_ref(), points[candidate].as_ref(), directions))
        })
        .collect()
}
