//! Unstructured pruning of single entries: `torch.nn.utils.prune`'s `l1_unstructured`,
//! `random_unstructured`, `global_unstructured`, `custom_from_mask` and `remove`.

use crate::rng::SplitMix64;
use crate::select::{check_not_nan, kth_smallest, start_mask};
use crate::{Amount, Mask, Result};

/// Prunes the `amount` entries of smallest magnitude (torch's `l1_unstructured`).
///
/// With `previous`, only its kept entries are candidates, the amount is relative to their number
/// (torch's `PruningContainer`), and the result also prunes everything `previous` pruned: 0.5 then
/// 0.5 leaves 25 %. Among equal magnitudes the lower index is pruned first (torch leaves this
/// order unspecified). Magnitudes compare exactly, with `-0.0 == 0.0` and infinities largest.
///
/// Errors on a NaN weight (naming its index), a bad amount, or a `previous` of another length.
/// Needs 4 bytes of scratch per candidate.
pub fn l1_unstructured(weights: &[f32], amount: Amount, previous: Option<&Mask>) -> Result<Mask> {
    amount.validate()?;
    check_not_nan("weight", weights)?;
    let mut mask = start_mask(weights.len(), previous)?;
    prune_smallest_magnitudes(&[weights], std::slice::from_mut(&mut mask), amount)?;
    Ok(mask)
}

/// Prunes `amount` entries of a tensor of `len` entries chosen uniformly at random (torch's
/// `random_unstructured`), reproducibly from `seed`.
///
/// The draw is Knuth's selection sampling over the candidates in index order, driven by
/// SplitMix64 seeded with `seed` and bounded with Lemire's method; the same seed gives the same
/// mask everywhere. `previous` works as in [`l1_unstructured`].
pub fn random_unstructured(len: usize, amount: Amount, seed: u64, previous: Option<&Mask>) -> Result<Mask> {
    amount.validate()?;
    let mut mask = start_mask(len, previous)?;
    let n_candidates = mask.n_kept();
    let k = amount.count_of(n_candidates, "entries")?;
    let chosen = SplitMix64::new(seed).sample(mask.kept_indices(), n_candidates, k);
    for index in chosen {
        mask.prune(index);
    }
    Ok(mask)
}

/// Prunes the `amount` entries of smallest magnitude across several tensors at once, as if they
/// were one (torch's `global_unstructured` with `L1Unstructured`), and returns one mask per
/// tensor.
///
/// `previous`, when given, holds one mask per tensor; the amount is then relative to the number
/// of entries they keep in total. Ties go to the tensor given first, then to the lower index.
/// Errors name the tensor (`Error::InTensor`). Needs 4 bytes of scratch per candidate, and
/// copies no weights.
pub fn global_unstructured(tensors: &[&[f32]], amount: Amount, previous: Option<&[Mask]>) -> Result<Vec<Mask>> {
    amount.validate()?;
    if let Some(masks) = previous {
        crate::mask::check_len("previous masks", tensors.len(), masks.len())?;
    }
    let mut masks = Vec::with_capacity(tensors.len());
    for (tensor, weights) in tensors.iter().enumerate() {
        check_not_nan("weight", weights)
            .and_then(|()| start_mask(weights.len(), previous.map(|masks| &masks[tensor])))
            .map(|mask| masks.push(mask))
            .map_err(|error| error.in_tensor(tensor))?;
    }
    prune_smallest_magnitudes(tensors, &mut masks, amount)?;
    Ok(masks)
}

/// Prunes, in `masks`, the `amount` kept entries of smallest magnitude over all `tensors` taken
/// one after another: everything below the k-th smallest magnitude, then the first entries equal
/// to it. That is the first `k` in the order (magnitude, tensor, index) without sorting.
fn prune_smallest_magnitudes(tensors: &[&[f32]], masks: &mut [Mask], amount: Amount) -> Result<()> {
    let mut magnitudes = Vec::with_capacity(masks.iter().map(Mask::n_kept).sum());
    for (weights, mask) in tensors.iter().zip(masks.iter()) {
        magnitudes.extend(mask.kept_indices().map(|index| weights[index].abs()));
    }
    let k = amount.count_of(magnitudes.len(), "entries")?;
    let Some((threshold, mut ties)) = kth_smallest(&mut magnitudes, k) else {
        return Ok(());
    };
    drop(magnitudes);
    for (weights, mask) in tensors.iter().zip(masks.iter_mut()) {
        for (index, weight) in weights.iter().enumerate() {
            let magnitude = weight.abs();
            if !mask.is_kept(index) || magnitude > threshold {
                continue;
            }
            if magnitude == threshold {
                if ties == 0 {
                    continue;
                }
                ties -= 1;
            }
            mask.prune(index);
        }
    }
    Ok(())
}

/// A caller-made mask applied to a tensor of `len` entries on top of `previous` (torch's
/// `custom_from_mask`): an entry survives only if both keep it.
pub fn custom_from_mask(len: usize, mask: &Mask, previous: Option<&Mask>) -> Result<Mask> {
    crate::mask::check_len("mask", len, mask.len())?;
    let mut combined = start_mask(len, previous)?;
    combined.intersect_with(mask)?;
    Ok(combined)
}

/// Bakes `mask` into `weights`: pruned entries become `+0.0` (torch's `prune.remove`; torch
/// multiplies by the mask, which leaves `-0.0` for negative weights and NaN for infinite ones).
pub fn remove(weights: &mut [f32], mask: &Mask) -> Result<()> {
    mask.apply(weights)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    fn pruned(mask: &Mask) -> Vec<usize> {
        mask.pruned_indices().collect()
    }

    #[test]
    fn l1_prunes_the_smallest_magnitudes() {
        let weights = [0.5, -0.1, 2.0, -3.0, 0.2, 0.0];
        let mask = l1_unstructured(&weights, Amount::Fraction(0.5), None).unwrap();
        assert_eq!(pruned(&mask), [1, 4, 5]);
        assert_eq!(pruned(&l1_unstructured(&weights, Amount::Count(0), None).unwrap()), [] as [usize; 0]);
        assert_eq!(l1_unstructured(&weights, Amount::Count(6), None).unwrap().n_kept(), 0);
        assert_eq!(l1_unstructured(&[], Amount::Fraction(0.5), None).unwrap().len(), 0);
    }

    #[test]
    fn l1_ties_prune_the_lower_index_first() {
        let weights = [1.0, -1.0, 1.0, -0.0, 0.0, 5.0];
        assert_eq!(pruned(&l1_unstructured(&weights, Amount::Count(1), None).unwrap()), [3]);
        assert_eq!(pruned(&l1_unstructured(&weights, Amount::Count(3), None).unwrap()), [0, 3, 4]);
        assert_eq!(pruned(&l1_unstructured(&weights, Amount::Count(4), None).unwrap()), [0, 1, 3, 4]);
        let infinite = [f32::INFINITY, f32::NEG_INFINITY, 1.0];
        assert_eq!(pruned(&l1_unstructured(&infinite, Amount::Count(2), None).unwrap()), [0, 2]);
    }

    #[test]
    fn pruning_again_acts_on_survivors() {
        let weights: Vec<f32> = (1..=8).map(|i| i as f32).collect();
        let first = l1_unstructured(&weights, Amount::Fraction(0.5), None).unwrap();
        assert_eq!(pruned(&first), [0, 1, 2, 3]);
        let second = l1_unstructured(&weights, Amount::Fraction(0.5), Some(&first)).unwrap();
        assert_eq!(pruned(&second), [0, 1, 2, 3, 4, 5]);
        // The amount counts survivors: 5 of 4 is too many.
        assert_eq!(
            l1_unstructured(&weights, Amount::Count(5), Some(&first)),
            Err(Error::PruneTooMany { what: "entries", count: 5, available: 4 })
        );
        // Entries the previous mask pruned stay pruned even if they are large.
        let mut odd = Mask::all_kept(8);
        odd.set(7, false);
        let again = l1_unstructured(&weights, Amount::Count(1), Some(&odd)).unwrap();
        assert_eq!(pruned(&again), [0, 7]);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert_eq!(
            l1_unstructured(&[1.0, f32::NAN], Amount::Count(1), None),
            Err(Error::NotANumber { what: "weight", index: 1 })
        );
        assert!(matches!(l1_unstructured(&[1.0], Amount::Fraction(1.5), None), Err(Error::BadFraction { .. })));
        assert!(matches!(l1_unstructured(&[1.0], Amount::Count(2), None), Err(Error::PruneTooMany { .. })));
        assert!(matches!(
            l1_unstructured(&[1.0], Amount::Count(0), Some(&Mask::all_kept(2))),
            Err(Error::LengthMismatch { .. })
        ));
        assert!(random_unstructured(3, Amount::Fraction(f64::NAN), 0, None).is_err());
        assert!(random_unstructured(3, Amount::Count(4), 0, None).is_err());
    }

    #[test]
    fn random_is_seeded_and_counts_like_l1() {
        let a = random_unstructured(1000, Amount::Fraction(0.3), 42, None).unwrap();
        assert_eq!(a.n_pruned(), 300);
        assert_eq!(a, random_unstructured(1000, Amount::Fraction(0.3), 42, None).unwrap());
        assert_ne!(a, random_unstructured(1000, Amount::Fraction(0.3), 43, None).unwrap());
        let b = random_unstructured(1000, Amount::Fraction(0.5), 1, Some(&a)).unwrap();
        assert_eq!(b.n_pruned(), 300 + 350);
        assert!(a.pruned_indices().all(|i| !b.is_kept(i)));
    }

    #[test]
    fn global_ranks_all_tensors_together() {
        let a = [0.1f32, 5.0, 0.3];
        let b = [0.2f32, 4.0];
        let masks = global_unstructured(&[&a, &b], Amount::Count(3), None).unwrap();
        assert_eq!(pruned(&masks[0]), [0, 2]);
        assert_eq!(pruned(&masks[1]), [0]);
        let again = global_unstructured(&[&a, &b], Amount::Count(1), Some(&masks)).unwrap();
        assert_eq!(pruned(&again[1]), [0, 1]);
        let error = global_unstructured(&[&a, &[1.0, f32::NAN]], Amount::Count(1), None).unwrap_err();
        assert_eq!(error.tensor(), Some(1));
        assert_eq!(error.to_string(), "tensor 1: weight at index 1 is nan");
        assert!(global_unstructured(&[&a], Amount::Count(1), Some(&masks)).is_err());
        assert!(global_unstructured(&[&a, &b], Amount::Count(1), Some(&[masks[1].clone(), masks[0].clone()])).is_err());
        assert_eq!(global_unstructured(&[], Amount::Fraction(0.5), None), Ok(vec![]));
    }

    #[test]
    fn custom_masks_combine_and_remove_zeroes() {
        let previous = Mask::from_bools(&[true, true, false, true]);
        let custom = Mask::from_bools(&[false, true, true, true]);
        let combined = custom_from_mask(4, &custom, Some(&previous)).unwrap();
        assert_eq!(pruned(&combined), [0, 2]);
        assert!(custom_from_mask(5, &custom, None).is_err());
        let mut weights = [1.0, -2.0, 3.0, 4.0];
        remove(&mut weights, &combined).unwrap();
        assert_eq!(weights, [0.0, -2.0, 0.0, 4.0]);
    }
}
