//! [`Mask`]: which entries of a tensor survive pruning, one bit each.

use crate::{Error, Result};

const BITS: usize = u64::BITS as usize;

/// A pruning mask over a flat (row-major) tensor: bit `i` set means entry `i` is kept.
///
/// Stored as `u64` words, entry `i` at bit `i % 64` of word `i / 64`; the bits past
/// [`len`](Mask::len) in the last word are always zero, so equal masks have equal words.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Mask {
    words: Vec<u64>,
    len: usize,
}

impl Mask {
    /// A mask of `len` entries, all kept (torch's `default_mask` before the first pruning).
    pub fn all_kept(len: usize) -> Mask {
        let mut words = vec![u64::MAX; len.div_ceil(BITS)];
        if let Some(last) = words.last_mut()
            && !len.is_multiple_of(BITS)
        {
            *last = (1u64 << (len % BITS)) - 1;
        }
        Mask { words, len }
    }

    /// A mask of `len` entries, all pruned.
    pub fn all_pruned(len: usize) -> Mask {
        Mask { words: vec![0; len.div_ceil(BITS)], len }
    }

    /// A mask from one flag per entry (`true` = kept).
    pub fn from_bools(kept: &[bool]) -> Mask {
        kept.iter().copied().collect()
    }

    /// A mask of `len` entries keeping exactly `kept` (in any order, repeats allowed).
    pub fn from_kept_indices(len: usize, kept: &[usize]) -> Result<Mask> {
        let mut mask = Mask::all_pruned(len);
        for &index in kept {
            if index >= len {
                return Err(Error::IndexOutOfRange { what: "entry", index, len });
            }
            mask.set(index, true);
        }
        Ok(mask)
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mask covers no entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether entry `index` is kept.
    ///
    /// # Panics
    ///
    /// If `index >= self.len()`, like slice indexing; [`Mask::get`] does not panic.
    pub fn is_kept(&self, index: usize) -> bool {
        match self.get(index) {
            Some(kept) => kept,
            None => panic!("mask index {index} is out of range for {} entries", self.len),
        }
    }

    /// Whether entry `index` is kept, or `None` past the end.
    pub fn get(&self, index: usize) -> Option<bool> {
        (index < self.len).then(|| self.words[index / BITS] >> (index % BITS) & 1 == 1)
    }

    /// Keeps (`true`) or prunes (`false`) entry `index`.
    ///
    /// # Panics
    ///
    /// If `index >= self.len()`, like slice indexing.
    pub fn set(&mut self, index: usize, kept: bool) {
        assert!(index < self.len, "mask index {index} is out of range for {} entries", self.len);
        let bit = 1u64 << (index % BITS);
        if kept {
            self.words[index / BITS] |= bit;
        } else {
            self.words[index / BITS] &= !bit;
        }
    }

    /// The number of kept entries.
    pub fn n_kept(&self) -> usize {
        self.words.iter().map(|word| word.count_ones() as usize).sum()
    }

    /// The number of pruned entries.
    pub fn n_pruned(&self) -> usize {
        self.len - self.n_kept()
    }

    /// The fraction of pruned entries (0 for an empty mask).
    pub fn sparsity(&self) -> f64 {
        if self.len == 0 { 0.0 } else { self.n_pruned() as f64 / self.len as f64 }
    }

    /// One flag per entry, `true` = kept.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = bool> + '_ {
        (0..self.len).map(|index| self.words[index / BITS] >> (index % BITS) & 1 == 1)
    }

    /// The indices of the kept entries, ascending.
    pub fn kept_indices(&self) -> impl Iterator<Item = usize> + '_ {
        set_bits(&self.words, |word| word)
    }

    /// The indices of the pruned entries, ascending.
    pub fn pruned_indices(&self) -> impl Iterator<Item = usize> + '_ {
        let len = self.len;
        set_bits(&self.words, |word| !word).take_while(move |&index| index < len)
    }

    /// The words of the bitset (see the type's docs for the layout).
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// The mask as torch stores it (`weight_mask`): 1.0 for kept, 0.0 for pruned.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        self.iter().map(|kept| if kept { 1.0 } else { 0.0 }).collect()
    }

    /// Entries kept by both masks (how torch combines successive pruning steps).
    pub fn and(&self, other: &Mask) -> Result<Mask> {
        let mut out = self.clone();
        out.intersect_with(other)?;
        Ok(out)
    }

    /// Prunes in `self` every entry `other` prunes.
    pub fn intersect_with(&mut self, other: &Mask) -> Result<()> {
        check_len("mask", self.len, other.len)?;
        self.words.iter_mut().zip(&other.words).for_each(|(word, other)| *word &= other);
        Ok(())
    }

    /// Sets the pruned entries of `weights` to `+0.0` (torch's `prune.remove`, which multiplies
    /// by the mask and so leaves `-0.0` for negative weights; the values compare equal).
    pub fn apply(&self, weights: &mut [f32]) -> Result<()> {
        check_len("weights", self.len, weights.len())?;
        for index in self.pruned_indices() {
            weights[index] = 0.0;
        }
        Ok(())
    }

    /// The masks one after another, as one mask (the layout `global_unstructured` works in).
    pub fn concat(masks: &[Mask]) -> Mask {
        masks.iter().flat_map(Mask::iter).collect()
    }

    /// Cuts the mask into consecutive pieces of the given lengths, which must add up to its length.
    pub fn split(&self, lens: &[usize]) -> Result<Vec<Mask>> {
        let total = lens.iter().try_fold(0usize, |sum, &len| sum.checked_add(len));
        if total != Some(self.len) {
            return Err(Error::LengthMismatch {
                what: "mask pieces",
                expected: self.len,
                found: total.unwrap_or(usize::MAX),
            });
        }
        let mut start = 0;
        Ok(lens
            .iter()
            .map(|&len| {
                let piece = (start..start + len).map(|index| self.is_kept(index)).collect();
                start += len;
                piece
            })
            .collect())
    }

    /// Prunes entry `index` without a bounds check beyond the slice's own.
    pub(crate) fn prune(&mut self, index: usize) {
        self.words[index / BITS] &= !(1u64 << (index % BITS));
    }
}

impl FromIterator<bool> for Mask {
    fn from_iter<I: IntoIterator<Item = bool>>(iter: I) -> Mask {
        let mut words = Vec::new();
        let mut len = 0;
        for kept in iter {
            if len % BITS == 0 {
                words.push(0);
            }
            if kept {
                *words.last_mut().expect("a word was pushed") |= 1 << (len % BITS);
            }
            len += 1;
        }
        Mask { words, len }
    }
}

/// The positions of the set bits of `transform(word)` over all words, ascending.
fn set_bits(words: &[u64], transform: fn(u64) -> u64) -> impl Iterator<Item = usize> + '_ {
    words.iter().enumerate().flat_map(move |(word_index, &word)| {
        let mut bits = transform(word);
        std::iter::from_fn(move || {
            (bits != 0).then(|| {
                let bit = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                word_index * BITS + bit
            })
        })
    })
}

/// Checks that a slice or mask of `found` values matches one of `expected`.
pub(crate) fn check_len(what: &'static str, expected: usize, found: usize) -> Result<()> {
    if expected == found { Ok(()) } else { Err(Error::LengthMismatch { what, expected, found }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_agree_and_keep_the_tail_clear() {
        for len in [0, 1, 63, 64, 65, 130] {
            let kept = Mask::all_kept(len);
            assert_eq!(kept, Mask::from_bools(&vec![true; len]));
            assert_eq!(kept.n_kept(), len);
            assert_eq!(Mask::all_pruned(len).n_pruned(), len);
            assert_eq!(kept.words().len(), len.div_ceil(64));
            assert_eq!(kept.pruned_indices().count(), 0);
            assert_eq!(kept.kept_indices().collect::<Vec<_>>(), (0..len).collect::<Vec<_>>());
        }
    }

    #[test]
    fn bits_round_trip() {
        let bools: Vec<bool> = (0..150).map(|i| i % 3 == 0 || i % 7 == 0).collect();
        let mask = Mask::from_bools(&bools);
        assert_eq!(mask.iter().collect::<Vec<_>>(), bools);
        assert_eq!(mask.len(), 150);
        assert_eq!(mask.n_kept(), bools.iter().filter(|&&b| b).count());
        assert_eq!(mask.n_kept() + mask.n_pruned(), 150);
        let kept: Vec<usize> = mask.kept_indices().collect();
        assert_eq!(Mask::from_kept_indices(150, &kept), Ok(mask.clone()));
        let pruned: Vec<usize> = mask.pruned_indices().collect();
        assert!(pruned.iter().all(|&i| !bools[i]) && pruned.len() == mask.n_pruned());
        assert_eq!(mask.get(150), None);
        assert_eq!(mask.get(3), Some(true));
        assert!(!mask.is_kept(1));
        assert_eq!(mask.to_f32_vec()[..4], [1.0, 0.0, 0.0, 1.0]);
        assert!((mask.sparsity() - mask.n_pruned() as f64 / 150.0).abs() < 1e-12);
        assert_eq!(Mask::default().sparsity(), 0.0);
    }

    #[test]
    fn set_and_intersect() {
        let mut a = Mask::all_kept(70);
        a.set(69, false);
        a.set(0, false);
        a.set(0, true);
        let mut b = Mask::all_kept(70);
        b.set(5, false);
        let both = a.and(&b).unwrap();
        assert_eq!(both.pruned_indices().collect::<Vec<_>>(), [5, 69]);
        assert_eq!(a.and(&Mask::all_kept(69)), Err(Error::LengthMismatch { what: "mask", expected: 70, found: 69 }));
    }

    #[test]
    fn apply_zeroes_pruned_entries() {
        let mask = Mask::from_bools(&[true, false, true, false]);
        let mut weights = [1.0, -2.0, 3.0, f32::NAN];
        mask.apply(&mut weights).unwrap();
        assert_eq!(weights.map(f32::to_bits), [1.0f32, 0.0, 3.0, 0.0].map(f32::to_bits));
        assert!(mask.apply(&mut [0.0; 3]).is_err());
    }

    #[test]
    fn concat_and_split_are_inverse() {
        let a = Mask::from_bools(&[true, false, true]);
        let b = Mask::from_bools(&[false; 70]);
        let c = Mask::all_kept(0);
        let joined = Mask::concat(&[a.clone(), b.clone(), c.clone()]);
        assert_eq!(joined.len(), 73);
        assert_eq!(joined.split(&[3, 70, 0]), Ok(vec![a, b, c]));
        assert!(joined.split(&[3, 69]).is_err());
        assert!(joined.split(&[usize::MAX, 74]).is_err());
        assert_eq!(Mask::from_kept_indices(3, &[3]), Err(Error::IndexOutOfRange { what: "entry", index: 3, len: 3 }));
    }
}
