//! The small, documented random stream behind the `random_*` pruning functions.
//!
//! SplitMix64 (Steele, Lea and Flood, 2014; the generator `java.util.SplittableRandom` and
//! xoshiro's seeding use): the state advances by `0x9E3779B97F4A7C15` and each output is the
//! state through the usual mix. Bounded draws use Lemire's multiply-and-reject, and subsets are
//! drawn with Knuth's selection sampling (Algorithm S). The stream is part of the public
//! contract: a seed gives the same mask on every platform.

/// A SplitMix64 generator.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform draw from `0..bound` (`bound > 0`), without modulo bias.
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        let mut product = u128::from(self.next_u64()) * u128::from(bound);
        if (product as u64) < bound {
            // Rejecting the low words below 2^64 mod bound makes every result equally likely.
            let threshold = bound.wrapping_neg() % bound;
            while (product as u64) < threshold {
                product = u128::from(self.next_u64()) * u128::from(bound);
            }
        }
        (product >> 64) as u64
    }

    /// Picks `k` of the `n` `candidates` uniformly at random (every subset of size `k` equally
    /// likely), returned in the candidates' order. `k <= n`.
    pub(crate) fn sample(&mut self, candidates: impl IntoIterator<Item = usize>, n: usize, k: usize) -> Vec<usize> {
        let mut chosen = Vec::with_capacity(k);
        for (position, candidate) in candidates.into_iter().take(n).enumerate() {
            let remaining = (n - position) as u64;
            if chosen.len() < k && self.below(remaining) < (k - chosen.len()) as u64 {
                chosen.push(candidate);
            }
        }
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_reference_outputs() {
        // The first outputs for seed 1234567 in the reference C implementation (Vigna's
        // splitmix64.c), as listed by many ports.
        let mut rng = SplitMix64::new(1234567);
        let expected = [6457827717110365317u64, 3203168211198807973, 9817491932198370423, 4593380528125082431];
        for value in expected {
            assert_eq!(rng.next_u64(), value);
        }
    }

    #[test]
    fn samples_have_the_right_size_and_spread() {
        let candidates: Vec<usize> = (0..10).map(|i| i * 3).collect();
        let mut rng = SplitMix64::new(7);
        let mut hits = [0u32; 10];
        for _ in 0..10_000 {
            let chosen = rng.sample(candidates.iter().copied(), 10, 4);
            assert_eq!(chosen.len(), 4);
            assert!(chosen.windows(2).all(|pair| pair[0] < pair[1]));
            for index in chosen {
                hits[index / 3] += 1;
            }
        }
        // Each candidate is chosen with probability 0.4: 4000 of 10000 draws, sd about 49.
        assert!(hits.iter().all(|&count| (3700..4300).contains(&count)), "{hits:?}");
        assert_eq!(rng.sample(candidates.clone(), 10, 10), candidates);
        assert!(rng.sample(candidates, 10, 0).is_empty());
        assert!((0..1000).all(|_| rng.below(3) < 3));
    }
}
