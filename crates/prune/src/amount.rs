//! How much to prune ([`Amount`]) or how much to keep ([`Target`]).

use crate::{Error, Result};

/// How many of `n` candidates to prune, as `torch.nn.utils.prune` reads its `amount` argument.
///
/// A fraction prunes `round(fraction * n)` candidates with Python's rounding (half to even, so
/// 0.5 of 25 prunes 12 and 0.5 of 35 prunes 18). When pruning again, `n` is the number of
/// survivors (entries, or channels that still hold a kept entry), so 0.5 then 0.5 prunes 75 %.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    /// A fraction in `0..=1` of the candidates.
    Fraction(f64),
    /// An exact number of candidates; more than there are is an error.
    Count(usize),
}

impl Amount {
    /// The number of candidates to prune out of `n` (torch's `_compute_nparams_toprune`, with its
    /// checks: a fraction outside `0..=1` or NaN, or a count above `n`, is an error).
    pub fn count(self, n: usize) -> Result<usize> {
        self.count_of(n, "values")
    }

    /// [`Amount::count`] with the kind of candidate (entries, channels, heads) named in errors.
    pub(crate) fn count_of(self, n: usize, what: &'static str) -> Result<usize> {
        match self {
            Amount::Fraction(amount) => {
                if !(0.0..=1.0).contains(&amount) {
                    return Err(Error::BadFraction { amount });
                }
                // Python computes `round(amount * n)` in f64; the product is at most n, so the
                // cast back cannot overflow.
                Ok((amount * n as f64).round_ties_even() as usize)
            }
            Amount::Count(count) if count > n => Err(Error::PruneTooMany { what, count, available: n }),
            Amount::Count(count) => Ok(count),
        }
    }

    /// Checks the amount on its own (before any candidate is counted).
    pub(crate) fn validate(self) -> Result<()> {
        match self {
            Amount::Fraction(amount) if !(0.0..=1.0).contains(&amount) => Err(Error::BadFraction { amount }),
            _ => Ok(()),
        }
    }
}

impl From<f64> for Amount {
    fn from(fraction: f64) -> Amount {
        Amount::Fraction(fraction)
    }
}

impl From<usize> for Amount {
    fn from(count: usize) -> Amount {
        Amount::Count(count)
    }
}

/// How many heads, neurons or channels should remain after structured pruning.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// Prune this amount; keep the rest.
    Prune(Amount),
    /// Keep exactly this many; more than there are is an error.
    Keep(usize),
}

impl Target {
    /// The number of candidates to keep out of `n`.
    pub fn n_kept(self, n: usize) -> Result<usize> {
        self.n_kept_of(n, "values")
    }

    pub(crate) fn n_kept_of(self, n: usize, what: &'static str) -> Result<usize> {
        match self {
            Target::Prune(amount) => Ok(n - amount.count_of(n, what)?),
            Target::Keep(count) if count > n => Err(Error::KeepTooMany { what, count, available: n }),
            Target::Keep(count) => Ok(count),
        }
    }
}

impl From<Amount> for Target {
    fn from(amount: Amount) -> Target {
        Target::Prune(amount)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_round_half_to_even_like_python() {
        assert_eq!(Amount::Fraction(0.5).count(25), Ok(12));
        assert_eq!(Amount::Fraction(0.5).count(35), Ok(18));
        assert_eq!(Amount::Fraction(0.25).count(10), Ok(2));
        assert_eq!(Amount::Fraction(0.3).count(3072), Ok(922));
        assert_eq!(Amount::Fraction(0.0).count(0), Ok(0));
        assert_eq!(Amount::Fraction(1.0).count(7), Ok(7));
    }

    #[test]
    fn bad_amounts_are_errors() {
        for amount in [-0.1, 1.000001, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(matches!(Amount::Fraction(amount).count(10), Err(Error::BadFraction { .. })));
            assert!(Amount::Fraction(amount).validate().is_err());
        }
        assert_eq!(Amount::Count(11).count(10), Err(Error::PruneTooMany { what: "values", count: 11, available: 10 }));
        assert_eq!(Amount::Count(10).count(10), Ok(10));
    }

    #[test]
    fn targets_count_what_remains() {
        assert_eq!(Target::Keep(3).n_kept(12), Ok(3));
        assert_eq!(Target::from(Amount::Fraction(0.25)).n_kept(12), Ok(9));
        assert_eq!(Target::Prune(Amount::Count(12)).n_kept(12), Ok(0));
        assert!(matches!(Target::Keep(13).n_kept(12), Err(Error::KeepTooMany { .. })));
        assert_eq!(Amount::from(3usize), Amount::Count(3));
        assert_eq!(Amount::from(0.5), Amount::Fraction(0.5));
    }
}
