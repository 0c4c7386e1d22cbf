//! `report.md`: the header, the table, how things were measured, the plots and each method's
//! advantages and disadvantages.

use std::fmt::Write as _;

use super::assess::{amount, cosine, megabytes, percent, ratio};
use super::{Fronts, Report, Result, Row, Thresholds, assess};
use crate::eval::{TIMED_RUNS, WARMUP_RUNS};

/// The text of `report.md`, with [`Thresholds::DEFAULT`].
///
/// # Errors
/// Anything [`Report::validate`] rejects.
pub fn render_markdown(report: &Report) -> Result<String> {
    report.validate()?;
    let thresholds = Thresholds::DEFAULT;
    let baseline = &report.rows[0];
    let fronts = Fronts::of(report);
    let mut out = String::new();

    // `write!` into a `String` cannot fail; the results are discarded with `let _`.
    let _ = writeln!(out, "# lathe compare: {}\n", inline(&report.model));
    let _ = writeln!(out, "- Model: {}", inline(&report.model));
    let _ = writeln!(out, "- Machine: {}", inline(&report.machine));
    let eval_set = &report.eval_set;
    let _ = writeln!(
        out,
        "- Evaluation set: {}, {} sentences, SHA-256 `{}`",
        inline(&eval_set.name),
        eval_set.n_sentences,
        inline(&eval_set.sha256)
    );
    let _ = writeln!(out, "- Baseline: {}; every ratio and cosine below is against it\n", inline(&baseline.name));

    out.push_str("## Results\n\n");
    out.push_str(
        "| method | size MB | compression x | latency single ms | speedup | latency batched ms | speedup \
         | mean cos | min cos | Spearman | top-1 | compress s | kernels | Pareto |\n",
    );
    out.push_str("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|\n");
    for (index, row) in report.rows.iter().enumerate() {
        let pareto = match (fronts.size[index].on_front, fronts.latency[index].on_front) {
            (true, true) => "size + latency",
            (true, false) => "size",
            (false, true) => "latency",
            (false, false) => "",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell(&row.name),
            megabytes(row.size_bytes),
            ratio(row.compression),
            amount(row.latency_ms.single),
            ratio(row.speedup.single),
            amount(row.latency_ms.batched),
            ratio(row.speedup.batched),
            cosine(row.mean_cosine),
            cosine(row.min_cosine),
            row.spearman.map_or_else(|| "n/a".to_owned(), cosine),
            percent(row.top1_agreement),
            amount(row.compress_seconds),
            cell(&kernels(row)),
            pareto,
        );
    }
    out.push_str(
        "\nPareto: `size` = on the front of size vs mean cosine, `latency` = on the front of batched latency \
         vs mean cosine (no other row is both cheaper and more faithful). Spearman is n/a where it is undefined \
         (all pairwise similarities equal under one model).\n\n",
    );

    out.push_str("## How this was measured\n\n");
    let _ = writeln!(
        out,
        "- Latency: time to encode {}, the median of {TIMED_RUNS} runs after {WARMUP_RUNS} \
         warm-up run, on one thread. `single` encodes one sentence per batch; `batched` sorts the sentences \
         by length and encodes them in batches, the same batching for every row. Speedup = baseline latency / \
         row latency{}.",
        match report.latency_sentences {
            Some(n) if n < eval_set.n_sentences => format!("the first {n} of the {} sentences", eval_set.n_sentences),
            _ => format!("all {} sentences", eval_set.n_sentences),
        },
        if report.rows.iter().any(|row| row.baseline_latency_ms.is_some()) {
            ", the baseline being timed again for each row, run for run in turn with it, so that a slow spell \
             of a shared machine slows both"
        } else {
            ""
        }
    );
    out.push_str(
        "- Size: bytes of the written checkpoint on disk (MB = 10^6 bytes). Compression = baseline size / row \
         size.\n",
    );
    out.push_str(
        "- Fidelity: for each sentence, the cosine between the row's embedding and the baseline's (mean and \
         min over sentences); Spearman's correlation of the two models' pairwise sentence similarities; top-1 = \
         share of sentences whose nearest other sentence is the same under both models.\n",
    );
    out.push_str("- Compress s: wall-clock seconds to produce the row's checkpoint from the baseline.\n");
    out.push_str("- Kernels: how many linear layers ran on each kernel.\n");
    let t = &thresholds;
    let _ = writeln!(
        out,
        "- Words below: a ratio of at least {} counts as smaller or faster, at most 1/{} as larger or slower, \
         anything between as \"no smaller\" / \"no faster\"; mean cosine >= {} is \"indistinguishable in \
         practice\", below {} a \"noticeable loss\", between them a \"small loss\"; a min cosine below {} is \
         called out; under {} s to compress is \"quick to make\", {} s or more \"slow to make\".\n",
        t.ratio, t.ratio, t.indistinguishable, t.noticeable_loss, t.worst_sentence, t.quick_to_make, t.slow_to_make
    );

    out.push_str("## Plots\n\n");
    out.push_str("![mean cosine against size on disk](fidelity_vs_size.svg)\n\n");
    out.push_str("![mean cosine against batched latency](fidelity_vs_latency.svg)\n\n");

    out.push_str("## What each method buys and costs\n");
    for (row, assessment) in report.rows.iter().zip(assess(report, &thresholds)) {
        let _ = writeln!(out, "\n### {}\n", inline(&row.name));
        let _ = writeln!(out, "Recipe: `{}`\n", row.recipe.replace('`', "'").replace('\n', "; "));
        for (title, lines) in [("Advantages", &assessment.advantages), ("Disadvantages", &assessment.disadvantages)] {
            let _ = writeln!(out, "{title}:");
            if lines.is_empty() {
                out.push_str("- none found by these rules\n");
            }
            for line in lines {
                let _ = writeln!(out, "- {}", inline(line));
            }
            if title == "Advantages" {
                out.push('\n');
            }
        }
    }
    Ok(out)
}

/// `kind ×count` for each kernel, most used first.
fn kernels(row: &Row) -> String {
    let mut counts: Vec<(&String, &usize)> = row.kernels.iter().collect();
    counts.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    counts.iter().map(|(kind, count)| format!("{kind} ×{count}")).collect::<Vec<_>>().join(", ")
}

/// Text for one line of markdown: newlines folded into spaces.
fn inline(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

/// Text for a table cell: one line, with `|` escaped so it does not end the cell.
fn cell(text: &str) -> String {
    inline(text).replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::super::testutil::sample;
    use super::*;
    use crate::Error;

    fn table_line<'a>(markdown: &'a str, name: &str) -> &'a str {
        markdown.lines().find(|line| line.starts_with(&format!("| {name} |"))).expect("table row")
    }

    #[test]
    fn table_has_every_row_and_marks_the_fronts() {
        let markdown = render_markdown(&sample()).unwrap();
        assert!(markdown.starts_with("# lathe compare: all-MiniLM-L6-v2\n"));
        assert!(markdown.contains("- Evaluation set: lathe eval, 280 sentences, SHA-256 `0f0f"));
        assert_eq!(
            table_line(&markdown, "fp32"),
            "| fp32 | 88.1 | 1.00x | 10.0 | 1.00x | 400 | 1.00x | 1.0000 | 1.0000 | 1.0000 | 100% | 0.00 | dense f32 ×36 \
             | size + latency |"
        );
        assert!(table_line(&markdown, "q4_0").ends_with("| size |"));
        assert!(table_line(&markdown, "magnitude 50%").ends_with("| sparse csr ×24, dense f32 ×12 |  |"));
        let header_cells = markdown.lines().find(|line| line.starts_with("| method")).unwrap().matches('|').count();
        assert!(
            markdown
                .lines()
                .filter(|line| line.starts_with("| "))
                .all(|line| line.matches('|').count() == header_cells)
        );
    }

    #[test]
    fn states_measurement_and_thresholds() {
        let markdown = render_markdown(&sample()).unwrap();
        assert!(
            markdown
                .contains(&format!("the median of {TIMED_RUNS} runs after {WARMUP_RUNS} warm-up run, on one thread"))
        );
        assert!(markdown.contains("a ratio of at least 1.05 counts as smaller or faster"));
        assert!(
            markdown.contains(
                "mean cosine >= 0.995 is \"indistinguishable in practice\", below 0.95 a \"noticeable loss\""
            )
        );
        assert!(markdown.contains("![mean cosine against size on disk](fidelity_vs_size.svg)"));
    }

    #[test]
    fn every_method_has_its_section() {
        let markdown = render_markdown(&sample()).unwrap();
        for row in &sample().rows {
            assert!(markdown.contains(&format!("\n### {}\n\nRecipe: `apply {}`", row.name, row.name)), "{}", row.name);
        }
        let q4 = markdown.split("### q4_0").nth(1).unwrap().split("###").next().unwrap();
        assert!(q4.contains("- 6.9x smaller than fp32 (12.8 MB vs 88.1 MB)\n"));
        assert!(q4.contains(
            "- small loss of fidelity: mean cosine 0.962 (min 0.871), Spearman 0.952, top-1 agreement 92%\n"
        ));
        let magnitude = markdown.split("### magnitude 50%").nth(1).unwrap().split("###").next().unwrap();
        assert!(magnitude.contains("Advantages:\n- none found by these rules\n"));
    }

    #[test]
    fn missing_spearman_pipes_and_bad_rows() {
        let mut report = sample();
        report.rows[2].spearman = None;
        report.rows[1].name = "odd | name".to_owned();
        let markdown = render_markdown(&report).unwrap();
        assert!(table_line(&markdown, "q4_0").contains("| 0.871 | n/a | 92% |"));
        assert!(markdown.contains("| odd \\| name | 24.0 |"));
        assert!(!markdown.contains("NaN") && !markdown.contains("inf"));
        report.rows[3].mean_cosine = f64::NAN;
        assert!(matches!(render_markdown(&report), Err(Error::NonFiniteField { field: "mean_cosine", .. })));
    }
}
