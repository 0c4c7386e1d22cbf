//! Each row's advantages and disadvantages, derived from its numbers: against the baseline (size,
//! speed, fidelity, time to compress), against the other rows (smallest, fastest, most and least
//! faithful) and on the two Pareto fronts.

use super::{Fronts, Report, Row};

/// The cut-offs that turn numbers into words. [`Thresholds::DEFAULT`] is what reports use; the
/// markdown states every value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// A compression or speedup of at least this counts as smaller or faster, one of at most its
    /// inverse as larger or slower, and anything between as "no smaller" or "no faster".
    pub ratio: f64,
    /// A mean cosine of at least this is "indistinguishable in practice".
    pub indistinguishable: f64,
    /// A mean cosine below this is a "noticeable loss"; between it and `indistinguishable`, a
    /// "small loss".
    pub noticeable_loss: f64,
    /// A row whose mean cosine is indistinguishable but whose min cosine is below this has its
    /// worst sentence called out.
    pub worst_sentence: f64,
    /// Compressing in fewer seconds than this is "quick to make".
    pub quick_to_make: f64,
    /// Compressing in this many seconds or more is "slow to make".
    pub slow_to_make: f64,
}

impl Thresholds {
    /// The cut-offs every report uses.
    pub const DEFAULT: Thresholds = Thresholds {
        ratio: 1.05,
        indistinguishable: 0.995,
        noticeable_loss: 0.95,
        worst_sentence: 0.95,
        quick_to_make: 10.0,
        slow_to_make: 60.0,
    };
}

impl Default for Thresholds {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What one row buys and what it costs, as sentences that quote its numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    /// The row's name.
    pub name: String,
    /// What the row gains, most important first (size, speed, fidelity, ranks, fronts).
    pub advantages: Vec<String>,
    /// What the row gives up, in the same order.
    pub disadvantages: Vec<String>,
}

/// The assessment of every row of `report` (in row order) under `thresholds`. Rows are compared
/// with the first row (the baseline) and with each other; the latency front uses batched latency.
/// Expects a report that passes [`Report::validate`]; other input gives meaningless, not
/// panicking, text.
pub fn assess(report: &Report, thresholds: &Thresholds) -> Vec<Assessment> {
    let fronts = Fronts::of(report);
    (0..report.rows.len()).map(|index| assess_row(report, &fronts, thresholds, index)).collect()
}

fn assess_row(report: &Report, fronts: &Fronts, thresholds: &Thresholds, index: usize) -> Assessment {
    let rows = &report.rows;
    let row = &rows[index];
    let baseline = &rows[0];
    let mut advantages = Vec::new();
    let mut disadvantages = Vec::new();

    if index == 0 {
        advantages.push("the reference: every ratio and cosine in this report is measured against it".to_owned());
    } else {
        size_against_baseline(row, baseline, thresholds, &mut advantages, &mut disadvantages);
        speed_against_baseline(row, baseline, thresholds, &mut advantages, &mut disadvantages);
        fidelity_against_baseline(row, thresholds, &mut advantages, &mut disadvantages);
    }
    ranks(rows, index, &mut advantages, &mut disadvantages);
    if rows.len() >= 2 {
        let size_text = |other: &Row| format!("{} MB", megabytes(other.size_bytes));
        let latency_text = |other: &Row| format!("{} ms batched", amount(other.latency_ms.batched));
        front_text(rows, index, &fronts.size, "size", "smaller", &size_text, &mut advantages, &mut disadvantages);
        let latency = &fronts.latency;
        front_text(
            rows,
            index,
            latency,
            "batched latency",
            "faster",
            &latency_text,
            &mut advantages,
            &mut disadvantages,
        );
    }
    if index > 0 {
        let seconds = row.compress_seconds;
        if seconds < thresholds.quick_to_make {
            advantages.push(format!("quick to make: {} s to compress", amount(seconds)));
        } else if seconds >= thresholds.slow_to_make {
            disadvantages.push(format!("slow to make: {} s to compress", amount(seconds)));
        }
    }
    Assessment { name: row.name.clone(), advantages, disadvantages }
}

fn size_against_baseline(row: &Row, baseline: &Row, t: &Thresholds, pros: &mut Vec<String>, cons: &mut Vec<String>) {
    let sizes = format!("({} MB vs {} MB)", megabytes(row.size_bytes), megabytes(baseline.size_bytes));
    let compression = row.compression;
    if compression >= t.ratio {
        pros.push(format!("{} smaller than {} {sizes}", ratio(compression), baseline.name));
    } else if compression <= 1.0 / t.ratio {
        cons.push(format!("{} larger than {} {sizes}", ratio(1.0 / compression), baseline.name));
    } else {
        cons.push(format!("no smaller than {} {sizes}", baseline.name));
    }
}

fn speed_against_baseline(row: &Row, baseline: &Row, t: &Thresholds, pros: &mut Vec<String>, cons: &mut Vec<String>) {
    let base = row.speedup_base(baseline.latency_ms);
    let cases = [
        ("one sentence at a time", row.speedup.single, row.latency_ms.single, base.single),
        ("batched", row.speedup.batched, row.latency_ms.batched, base.batched),
    ];
    for (how, speedup, latency, base_latency) in cases {
        let times = format!("({} ms vs {} ms)", amount(latency), amount(base_latency));
        if speedup >= t.ratio {
            pros.push(format!("{} faster {how} {times}", ratio(speedup)));
        } else if speedup <= 1.0 / t.ratio {
            cons.push(format!("{} slower {how} {times}", ratio(1.0 / speedup)));
        } else {
            cons.push(format!("no faster {how} {times}"));
        }
    }
}

fn fidelity_against_baseline(row: &Row, t: &Thresholds, pros: &mut Vec<String>, cons: &mut Vec<String>) {
    let spearman = row.spearman.map(|value| format!(", Spearman {}", cosine(value))).unwrap_or_default();
    let detail = format!(
        "mean cosine {} (min {}){spearman}, top-1 agreement {}",
        cosine(row.mean_cosine),
        cosine(row.min_cosine),
        percent(row.top1_agreement)
    );
    if row.mean_cosine >= t.indistinguishable {
        pros.push(format!("indistinguishable in practice: {detail}"));
        if row.min_cosine < t.worst_sentence {
            cons.push(format!("its worst sentence still falls to cosine {}", cosine(row.min_cosine)));
        }
    } else if row.mean_cosine >= t.noticeable_loss {
        cons.push(format!("small loss of fidelity: {detail}"));
    } else {
        cons.push(format!("noticeable loss of fidelity: {detail}"));
    }
}

/// Best and worst of all rows (size, both latencies) and of the compressed rows (fidelity).
fn ranks(rows: &[Row], index: usize, pros: &mut Vec<String>, cons: &mut Vec<String>) {
    let n = rows.len();
    if n < 2 {
        return;
    }
    let all: Vec<usize> = (0..n).collect();
    let compressed: Vec<usize> = (1..n).collect();
    type Key = fn(&Row) -> f64;
    // (key, the rows ranked, lower is better, best text, worst text).
    let rules: [(Key, &[usize], bool, String, String); 4] = [
        (|row| row.size_bytes as f64, &all, true, format!("smallest of the {n} rows"), String::new()),
        (
            |row| row.latency_ms.single,
            &all,
            true,
            format!("fastest one sentence at a time of the {n} rows"),
            format!("slowest one sentence at a time of the {n} rows"),
        ),
        (
            |row| row.latency_ms.batched,
            &all,
            true,
            format!("fastest batched of the {n} rows"),
            format!("slowest batched of the {n} rows"),
        ),
        (
            |row| row.mean_cosine,
            &compressed,
            false,
            format!("most faithful of the {} compressed rows", n - 1),
            format!("least faithful of the {} compressed rows", n - 1),
        ),
    ];
    for (key, ranked, lower_is_better, best_text, worst_text) in rules {
        // A rank among fewer than two rows says nothing; "worst" among two is just "not best".
        if ranked.len() < 2 || !ranked.contains(&index) {
            continue;
        }
        let values = ranked.iter().map(|&other| key(&rows[other]));
        let (low, high) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let (best, worst) = if lower_is_better { (low, high) } else { (high, low) };
        let value = key(&rows[index]);
        if value == best {
            pros.push(best_text);
        } else if value == worst && ranked.len() >= 3 && !worst_text.is_empty() {
            cons.push(worst_text);
        }
    }
}

/// At most this many dominating rows are named.
const MAX_DOMINATORS_NAMED: usize = 3;

#[allow(clippy::too_many_arguments)]
fn front_text(
    rows: &[Row],
    index: usize,
    standings: &[super::Standing],
    cost: &str,
    better: &str,
    describe: &dyn Fn(&Row) -> String,
    pros: &mut Vec<String>,
    cons: &mut Vec<String>,
) {
    let standing = &standings[index];
    if standing.on_front {
        pros.push(format!("on the {cost}-vs-fidelity Pareto front: no other row is both {better} and more faithful"));
        return;
    }
    let named: Vec<String> = standing
        .dominated_by
        .iter()
        .take(MAX_DOMINATORS_NAMED)
        .map(|&other| {
            let row = &rows[other];
            format!("{} ({}, mean cosine {})", row.name, describe(row), cosine(row.mean_cosine))
        })
        .collect();
    let more = standing.dominated_by.len().saturating_sub(MAX_DOMINATORS_NAMED);
    let more = if more > 0 { format!(" and {more} more") } else { String::new() };
    let this = &rows[index];
    cons.push(format!(
        "dominated on {cost} vs fidelity (this row: {}, mean cosine {}) by {}{more}",
        describe(this),
        cosine(this.mean_cosine),
        named.join(", ")
    ));
}

/// Megabytes (10^6 bytes): one decimal from 1 MB up, three below.
pub(super) fn megabytes(bytes: u64) -> String {
    let megabytes = bytes as f64 / 1e6;
    if megabytes >= 1.0 { format!("{megabytes:.1}") } else { format!("{megabytes:.3}") }
}

/// Milliseconds or seconds with about three significant digits.
pub(super) fn amount(value: f64) -> String {
    match value.abs() {
        v if v >= 100.0 => format!("{value:.0}"),
        v if v >= 10.0 => format!("{value:.1}"),
        _ => format!("{value:.2}"),
    }
}

/// A ratio with an `x`: two decimals below 2 (so 1.04 and 1.06 differ), one below 10, none above.
pub(super) fn ratio(value: f64) -> String {
    match value.abs() {
        v if v < 2.0 => format!("{value:.2}x"),
        v if v < 10.0 => format!("{value:.1}x"),
        _ => format!("{value:.0}x"),
    }
}

/// A cosine or correlation: three decimals below 0.99, four from there up (where the differences
/// live), and up to six where fewer would round a value below 1 up to 1.
pub(super) fn cosine(value: f64) -> String {
    if value < 0.99 {
        return format!("{value:.3}");
    }
    let mut text = format!("{value:.4}");
    for decimals in 5..=6 {
        if value >= 1.0 || !text.starts_with("1.") {
            break;
        }
        text = format!("{value:.decimals$}");
    }
    text
}

/// A fraction as a whole percentage, with one decimal where rounding would show 100% or 0% for
/// a fraction that is not exactly that.
pub(super) fn percent(fraction: f64) -> String {
    let value = fraction * 100.0;
    let whole = value.round();
    if (whole == 100.0 && fraction < 1.0) || (whole == 0.0 && fraction > 0.0) {
        format!("{value:.1}%")
    } else {
        format!("{whole:.0}%")
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{report, row, sample};
    use super::*;

    fn of<'a>(assessments: &'a [Assessment], name: &str) -> &'a Assessment {
        assessments.iter().find(|assessment| assessment.name == name).expect("row exists")
    }

    fn has(lines: &[String], needle: &str) -> bool {
        lines.iter().any(|line| line.contains(needle))
    }

    #[test]
    fn q4_0_quotes_its_numbers() {
        let assessments = assess(&sample(), &Thresholds::DEFAULT);
        let q4 = of(&assessments, "q4_0");
        assert_eq!(q4.advantages[0], "6.9x smaller than fp32 (12.8 MB vs 88.1 MB)");
        assert_eq!(q4.advantages[1], "1.43x faster one sentence at a time (7.00 ms vs 10.0 ms)");
        assert_eq!(q4.advantages[2], "1.25x faster batched (320 ms vs 400 ms)");
        assert!(q4.disadvantages.contains(
            &"small loss of fidelity: mean cosine 0.962 (min 0.871), Spearman 0.952, top-1 agreement 92%".to_owned()
        ));
        assert!(has(&q4.advantages, "smallest of the 5 rows"));
        assert!(has(&q4.advantages, "fastest one sentence at a time of the 5 rows"));
        assert!(has(&q4.advantages, "on the size-vs-fidelity Pareto front"));
        assert!(has(
            &q4.disadvantages,
            "dominated on batched latency vs fidelity (this row: 320 ms batched, mean cosine 0.962) by q8_0 (300 ms batched, mean cosine 0.9990)"
        ));
        assert!(has(&q4.advantages, "quick to make: 2.00 s"));
    }

    #[test]
    fn picks_smallest_fastest_and_most_faithful() {
        let assessments = assess(&sample(), &Thresholds::DEFAULT);
        let holders = |needle: &str| -> Vec<&str> {
            assessments
                .iter()
                .filter(|assessment| has(&assessment.advantages, needle))
                .map(|assessment| assessment.name.as_str())
                .collect()
        };
        assert_eq!(holders("smallest of"), ["q4_0"]);
        assert_eq!(holders("fastest one sentence"), ["q4_0"]);
        assert_eq!(holders("fastest batched"), ["q8_0"]);
        assert_eq!(holders("most faithful of the 4 compressed rows"), ["q8_0"]);
        let losers = |needle: &str| -> Vec<&str> {
            assessments
                .iter()
                .filter(|assessment| has(&assessment.disadvantages, needle))
                .map(|assessment| assessment.name.as_str())
                .collect()
        };
        assert_eq!(losers("least faithful"), ["magnitude 50%"]);
        assert_eq!(losers("slowest batched"), ["int8-channel weight-only"]);
        assert_eq!(losers("slowest one sentence"), ["int8-channel weight-only"]);
        assert_eq!(losers("dominated on size"), ["magnitude 50%"]);
    }

    #[test]
    fn no_smaller_no_faster_and_slow_to_make() {
        let assessments = assess(&sample(), &Thresholds::DEFAULT);
        let magnitude = of(&assessments, "magnitude 50%");
        assert!(has(&magnitude.disadvantages, "no smaller than fp32 (88.1 MB vs 88.1 MB)"));
        assert!(has(&magnitude.disadvantages, "no faster one sentence at a time (10.2 ms vs 10.0 ms)"));
        assert!(has(&magnitude.disadvantages, "no faster batched (405 ms vs 400 ms)"));
        assert!(has(&magnitude.disadvantages, "noticeable loss of fidelity: mean cosine 0.930"));
        assert!(has(&magnitude.disadvantages, "slow to make: 95.0 s to compress"));
        assert!(has(
            &magnitude.disadvantages,
            "by fp32 (88.1 MB, mean cosine 1.0000), q8_0 (24.0 MB, mean cosine 0.9990), int8-channel weight-only (23.0 MB, mean cosine 0.9980) and 1 more"
        ));
        assert!(magnitude.advantages.is_empty(), "{:?}", magnitude.advantages);

        let weight_only = of(&assessments, "int8-channel weight-only");
        assert!(has(&weight_only.disadvantages, "1.20x slower one sentence at a time (12.0 ms vs 10.0 ms)"));
        assert!(has(&weight_only.advantages, "indistinguishable in practice: mean cosine 0.9980 (min 0.948)"));
        // Its min cosine 0.948 is under the 0.95 worst-sentence threshold.
        assert!(has(&weight_only.disadvantages, "its worst sentence still falls to cosine 0.948"));
    }

    #[test]
    fn the_baseline_is_the_reference() {
        let assessments = assess(&sample(), &Thresholds::DEFAULT);
        let fp32 = &assessments[0];
        assert!(fp32.advantages[0].starts_with("the reference"));
        assert!(!has(&fp32.advantages, "smaller than"));
        assert!(!has(&fp32.disadvantages, "to compress"));
        assert!(has(&fp32.advantages, "on the size-vs-fidelity Pareto front"));
    }

    #[test]
    fn missing_spearman_and_thresholds_move_the_words() {
        let mut report = sample();
        report.rows[1].spearman = None;
        let assessments = assess(&report, &Thresholds::DEFAULT);
        let q8 = of(&assessments, "q8_0");
        assert!(has(
            &q8.advantages,
            "indistinguishable in practice: mean cosine 0.9990 (min 0.949), top-1 agreement 97%"
        ));
        assert!(!has(&q8.advantages, "Spearman"));

        let strict = Thresholds { ratio: 2.0, indistinguishable: 0.9999, ..Thresholds::DEFAULT };
        let assessments = assess(&report, &strict);
        let q4 = of(&assessments, "q4_0");
        assert!(has(&q4.disadvantages, "no faster one sentence at a time"));
        assert!(has(&of(&assessments, "q8_0").disadvantages, "small loss of fidelity: mean cosine 0.9990"));
    }

    #[test]
    fn a_lone_baseline_and_a_pair() {
        let lone = assess(&report(vec![row("fp32", 88.0, 10.0, 400.0, 1.0)]), &Thresholds::DEFAULT);
        assert_eq!(lone.len(), 1);
        assert_eq!(lone[0].advantages.len(), 1);
        assert!(lone[0].disadvantages.is_empty());

        let pair = report(vec![row("fp32", 88.0, 10.0, 400.0, 1.0), row("f16", 44.0, 10.0, 400.0, 0.9999)]);
        let pair = assess(&pair, &Thresholds::DEFAULT);
        assert!(has(&pair[1].advantages, "2.0x smaller than fp32 (44.0 MB vs 88.0 MB)"));
        assert!(has(&pair[1].disadvantages, "no faster batched (400 ms vs 400 ms)"));
        // Equal latencies: both are "fastest", neither is "slowest" among two.
        assert!(has(&pair[0].advantages, "fastest batched of the 2 rows"));
        assert!(has(&pair[1].advantages, "fastest batched of the 2 rows"));
        assert!(!has(&pair[1].disadvantages, "least faithful"));
    }

    #[test]
    fn number_formats() {
        assert_eq!(megabytes(88_100_000), "88.1");
        assert_eq!(megabytes(450_000), "0.450");
        assert_eq!((amount(412.4), amount(12.34), amount(1.234)), ("412".into(), "12.3".into(), "1.23".into()));
        assert_eq!((ratio(1.063), ratio(6.88), ratio(12.4)), ("1.06x".into(), "6.9x".into(), "12x".into()));
        assert_eq!((cosine(0.99912), cosine(0.9617)), ("0.9991".into(), "0.962".into()));
        assert_eq!(
            (cosine(0.99999), cosine(0.9999996), cosine(1.0)),
            ("0.99999".into(), "1.000000".into(), "1.0000".into())
        );
        assert_eq!(
            (percent(0.92), percent(0.998), percent(1.0), percent(0.001)),
            ("92%".into(), "99.8%".into(), "100%".into(), "0.1%".into())
        );
    }
}
