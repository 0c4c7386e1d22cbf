//! The sentences lathe ships (see `data/README.md`): a corpus for calibration and distillation,
//! and a separate evaluation set that is never used for either. Both were written for lathe.

const CORPUS: &str = include_str!("../data/corpus.txt");
const EVAL: &str = include_str!("../data/eval.txt");

fn lines(text: &'static str) -> Vec<&'static str> {
    text.lines().map(str::trim_end).filter(|line| !line.is_empty()).collect()
}

/// The calibration and distillation corpus, one sentence per entry, in file order.
pub fn corpus() -> Vec<&'static str> {
    lines(CORPUS)
}

/// The default evaluation set, one sentence per entry, in file order.
pub fn eval_set() -> Vec<&'static str> {
    lines(EVAL)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn sets_are_large_unique_and_disjoint() {
        let corpus = corpus();
        let eval = eval_set();
        assert!(corpus.len() >= 2000, "corpus has {} sentences", corpus.len());
        assert!(eval.len() >= 200, "evaluation set has {} sentences", eval.len());
        let corpus_set: HashSet<&str> = corpus.iter().copied().collect();
        let eval_set: HashSet<&str> = eval.iter().copied().collect();
        assert_eq!(corpus_set.len(), corpus.len(), "duplicate corpus lines");
        assert_eq!(eval_set.len(), eval.len(), "duplicate evaluation lines");
        assert!(corpus_set.is_disjoint(&eval_set), "the evaluation set overlaps the corpus");
    }

    #[test]
    fn lengths_vary() {
        let words: Vec<usize> = corpus().iter().map(|s| s.split_whitespace().count()).collect();
        let short = words.iter().filter(|&&n| n <= 8).count();
        let long = words.iter().filter(|&&n| n > 20).count();
        assert!(short * 10 > words.len() && long * 10 > words.len(), "{short} short, {long} long");
    }
}
