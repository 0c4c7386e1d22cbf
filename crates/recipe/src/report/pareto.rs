//! Pareto fronts of cost (size, latency) against fidelity (mean cosine).

use super::Report;

/// Where one row stands on one trade-off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    /// No other row is at most as costly and at least as faithful, and strictly better in one.
    pub on_front: bool,
    /// The rows on the front that dominate this one (0-based indices, most faithful first);
    /// empty exactly when `on_front`.
    pub dominated_by: Vec<usize>,
}

/// Every row's standing on both trade-offs the report draws.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fronts {
    /// Size on disk against mean cosine.
    pub size: Vec<Standing>,
    /// Batched latency against mean cosine.
    pub latency: Vec<Standing>,
}

impl Fronts {
    /// Both fronts of `report`'s rows.
    pub fn of(report: &Report) -> Self {
        let fidelity: Vec<f64> = report.rows.iter().map(|row| row.mean_cosine).collect();
        let sizes: Vec<f64> = report.rows.iter().map(|row| row.size_bytes as f64).collect();
        let latencies: Vec<f64> = report.rows.iter().map(|row| row.latency_ms.batched).collect();
        Fronts { size: pareto(&sizes, &fidelity), latency: pareto(&latencies, &fidelity) }
    }
}

/// The Pareto standing of each point `(cost[i], fidelity[i])`, lower cost and higher fidelity
/// being better. A point dominates another when it is no worse in both and better in one; equal
/// points do not dominate each other, so both stay on the front.
///
/// # Panics
/// When `cost` and `fidelity` have different lengths.
pub fn pareto(cost: &[f64], fidelity: &[f64]) -> Vec<Standing> {
    assert_eq!(cost.len(), fidelity.len(), "pareto of slices of different lengths");
    let dominates = |a: usize, b: usize| {
        cost[a] <= cost[b] && fidelity[a] >= fidelity[b] && (cost[a] < cost[b] || fidelity[a] > fidelity[b])
    };
    let n = cost.len();
    let on_front: Vec<bool> = (0..n).map(|b| !(0..n).any(|a| dominates(a, b))).collect();
    (0..n)
        .map(|b| {
            // Domination is transitive, so a dominated point always has a dominator on the front.
            let mut dominated_by: Vec<usize> = (0..n).filter(|&a| on_front[a] && dominates(a, b)).collect();
            dominated_by.sort_by(|&x, &y| fidelity[y].total_cmp(&fidelity[x]).then(x.cmp(&y)));
            Standing { on_front: on_front[b], dominated_by }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::testutil::sample;
    use super::*;

    fn front(standings: &[Standing]) -> Vec<usize> {
        (0..standings.len()).filter(|&i| standings[i].on_front).collect()
    }

    #[test]
    fn a_staircase_is_all_front_and_inner_points_are_dominated() {
        // Costs 1..4 with rising fidelity: a front; (3.5, 0.5) is beaten by points 0, 1 and 2.
        let cost = [1.0, 2.0, 3.0, 4.0, 3.5];
        let fidelity = [0.6, 0.7, 0.8, 0.9, 0.5];
        let standings = pareto(&cost, &fidelity);
        assert_eq!(front(&standings), [0, 1, 2, 3]);
        assert_eq!(standings[4].dominated_by, [2, 1, 0]);
        assert!(standings[..4].iter().all(|standing| standing.dominated_by.is_empty()));
    }

    #[test]
    fn ties_stay_on_the_front_and_equal_cost_needs_more_fidelity() {
        let standings = pareto(&[1.0, 1.0, 1.0, 2.0], &[0.9, 0.9, 0.8, 0.9]);
        assert_eq!(front(&standings), [0, 1]);
        assert_eq!(standings[2].dominated_by, [0, 1]);
        assert_eq!(standings[3].dominated_by, [0, 1]);
        assert!(pareto(&[], &[]).is_empty());
        assert_eq!(front(&pareto(&[5.0], &[0.1])), [0]);
    }

    #[test]
    fn sample_fronts() {
        // Sizes 88.1, 24, 12.8, 88.1, 23 MB; cosines 1, .999, .962, .93, .998;
        // batched latency 400, 300, 320, 405, 450 ms.
        let fronts = Fronts::of(&sample());
        assert_eq!(front(&fronts.size), [0, 1, 2, 4]);
        assert_eq!(fronts.size[3].dominated_by, [0, 1, 4, 2]);
        assert_eq!(front(&fronts.latency), [0, 1]);
        assert_eq!(fronts.latency[2].dominated_by, [1]);
        assert_eq!(fronts.latency[3].dominated_by, [0, 1]);
        assert_eq!(fronts.latency[4].dominated_by, [0, 1]);
    }
}
