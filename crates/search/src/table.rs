//! The study as a markdown table.

use std::collections::BTreeSet;

use crate::study::{Report, Status};

/// Formats a number with about 6 significant digits, without trailing zeros: `0.25`, `12`,
/// `1.23457e-7`.
pub(crate) fn number(value: f64) -> String {
    if value == 0.0 || !value.is_finite() {
        return format!("{value}");
    }
    let exponent = value.abs().log10().floor() as i32;
    if (-4..6).contains(&exponent) {
        let decimals = (5 - exponent).max(0) as usize;
        let text = format!("{value:.decimals$}");
        if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.').to_owned() } else { text }
    } else {
        let text = format!("{value:.5e}");
        let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
        let mantissa =
            if mantissa.contains('.') { mantissa.trim_end_matches('0').trim_end_matches('.') } else { mantissa };
        format!("{mantissa}e{exponent}")
    }
}

fn escape(cell: &str) -> String {
    cell.replace('|', r"\|").replace('\n', " ")
}

/// Renders a report: one row per trial in id order with its status, budget (under successive
/// halving), seconds, parameters (by name) and objective values (headed `name (min)` or
/// `name (max)`); the `pareto` column marks the Pareto-optimal trials with `*`; a `message`
/// column appears when a trial failed.
pub(crate) fn render(report: &Report) -> String {
    let param_names: BTreeSet<&str> =
        report.trials.iter().flat_map(|trial| trial.params.iter().map(|(name, _)| name)).collect();
    let with_budget = report.trials.iter().any(|trial| trial.budget.is_some());
    let with_message = report.trials.iter().any(|trial| trial.message.is_some());
    let front: BTreeSet<u64> = report.pareto_ids().into_iter().collect();

    let mut header = vec!["trial".to_owned(), "status".to_owned()];
    let mut right_aligned = vec![true, false];
    if with_budget {
        header.push("budget".into());
        right_aligned.push(true);
    }
    header.push("seconds".into());
    right_aligned.push(true);
    for name in &param_names {
        header.push(escape(name));
        right_aligned.push(false);
    }
    for objective in &report.objectives {
        header.push(format!("{} ({})", escape(&objective.name), objective.direction.label()));
        right_aligned.push(true);
    }
    header.push("pareto".into());
    right_aligned.push(false);
    if with_message {
        header.push("message".into());
        right_aligned.push(false);
    }

    let mut rows = Vec::with_capacity(report.trials.len());
    for trial in &report.trials {
        let mut row = vec![
            trial.id.to_string(),
            match trial.status {
                Status::Complete => "complete".to_owned(),
                Status::Failed => "failed".to_owned(),
            },
        ];
        if with_budget {
            row.push(trial.budget.map(number).unwrap_or_default());
        }
        row.push(format!("{:.2}", trial.seconds));
        for name in &param_names {
            row.push(trial.params.get(name).map(|value| escape(&value.to_string())).unwrap_or_default());
        }
        for index in 0..report.objectives.len() {
            row.push(trial.values.get(index).map_or_else(|| "-".to_owned(), |&value| number(value)));
        }
        row.push(if front.contains(&trial.id) { "*".to_owned() } else { String::new() });
        if with_message {
            row.push(trial.message.as_deref().map(escape).unwrap_or_default());
        }
        rows.push(row);
    }

    let widths: Vec<usize> = (0..header.len())
        .map(|column| {
            rows.iter()
                .map(|row| row[column].chars().count())
                .chain([header[column].chars().count(), 3])
                .max()
                .unwrap_or(3)
        })
        .collect();
    let line = |cells: &[String]| {
        let cells: Vec<String> = cells
            .iter()
            .zip(&widths)
            .zip(&right_aligned)
            .map(|((cell, &width), &right)| if right { format!("{cell:>width$}") } else { format!("{cell:<width$}") })
            .collect();
        format!("| {} |\n", cells.join(" | "))
    };
    let mut table = line(&header);
    let rule: Vec<String> = widths
        .iter()
        .zip(&right_aligned)
        .map(|(&width, &right)| if right { format!("{}:", "-".repeat(width + 1)) } else { "-".repeat(width + 2) })
        .collect();
    table.push_str(&format!("|{}|\n", rule.join("|")));
    for row in &rows {
        table.push_str(&line(row));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::number;

    #[test]
    fn numbers_keep_six_significant_digits() {
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(12.0), "12");
        assert_eq!(number(-3.0), "-3");
        assert_eq!(number(0.0), "0");
        assert_eq!(number(1.0 / 3.0), "0.333333");
        assert_eq!(number(123456.7), "123457");
        assert_eq!(number(1234567.0), "1.23457e6");
        assert_eq!(number(0.000012345678), "1.23457e-5");
        assert_eq!(number(9.5), "9.5");
    }
}
