//! lathe-prune against the references: the masks `torch.nn.utils.prune` made (tests/data), and
//! naive oracles and the torch rules as properties.

use std::collections::BTreeSet;

use lathe_prune::*;
use proptest::prelude::*;
use safetensors::SafeTensors;

/// `tests/data/torch_prune.safetensors`: see tests/data/README.md.
struct Golden {
    bytes: Vec<u8>,
    used: std::cell::RefCell<BTreeSet<String>>,
}

impl Golden {
    fn load() -> Golden {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/torch_prune.safetensors");
        Golden { bytes: std::fs::read(path).expect("golden file"), used: Default::default() }
    }

    /// The tensor `name` (f32) and its shape.
    fn tensor(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        self.used.borrow_mut().insert(name.to_owned());
        let file = SafeTensors::deserialize(&self.bytes).unwrap();
        let view = file.tensor(name).unwrap_or_else(|_| panic!("golden tensor {name}"));
        assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
        let values = view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        (values, view.shape().to_vec())
    }

    fn weight(&self, name: &str) -> Vec<f32> {
        self.tensor(name).0
    }

    /// A torch mask (1.0 kept, 0.0 pruned) as a [`Mask`].
    fn mask(&self, name: &str) -> Mask {
        let (values, _) = self.tensor(name);
        assert!(values.iter().all(|&v| v == 0.0 || v == 1.0), "{name} is not a 0/1 mask");
        values.iter().map(|&v| v == 1.0).collect()
    }

    fn metadata(&self, key: &str) -> String {
        let (_, metadata) = SafeTensors::read_metadata(&self.bytes).unwrap();
        metadata.metadata().as_ref().and_then(|m| m.get(key)).cloned().unwrap_or_default()
    }

    fn names(&self) -> BTreeSet<String> {
        SafeTensors::deserialize(&self.bytes).unwrap().names().into_iter().map(str::to_owned).collect()
    }
}

fn assert_same(ours: &Mask, torch: &Mask, case: &str) {
    assert_eq!(ours.len(), torch.len(), "{case}: length");
    let differ: Vec<usize> = (0..ours.len()).filter(|&i| ours.is_kept(i) != torch.is_kept(i)).collect();
    assert!(
        differ.is_empty(),
        "{case}: {} entries differ from torch, first {:?}",
        differ.len(),
        &differ[..differ.len().min(8)]
    );
}

#[test]
fn every_golden_case_matches_torch() {
    let golden = Golden::load();

    // l1_unstructured, float amounts rounded half to even (12.5 -> 12, 17.5 -> 18) and an int.
    let cases = [
        ("round_10_quarter", Amount::Fraction(0.25), 2),
        ("round_25_half", Amount::Fraction(0.5), 12),
        ("round_35_half", Amount::Fraction(0.5), 18),
        ("int_7", Amount::Count(7), 7),
    ];
    for (case, amount, n_pruned) in cases {
        assert!(golden.metadata(case).contains(&format!("pruned count {n_pruned}")), "{case} metadata");
        let weights = golden.weight(&format!("{case}.weight"));
        let ours = l1_unstructured(&weights, amount, None).unwrap();
        assert_eq!(ours.n_pruned(), n_pruned, "{case}");
        assert_same(&ours, &golden.mask(&format!("{case}.mask")), case);
    }

    // Pruning twice on one module: 0.3 of 3072, then 0.5 of the 2150 survivors; then remove.
    let weights = golden.weight("l1.weight");
    let first = l1_unstructured(&weights, Amount::Fraction(0.3), None).unwrap();
    assert_same(&first, &golden.mask("l1.mask_after_0.3"), "l1 first");
    let second = l1_unstructured(&weights, Amount::Fraction(0.5), Some(&first)).unwrap();
    assert_eq!(second.n_kept(), 1075);
    assert_same(&second, &golden.mask("l1.mask_after_0.3_then_0.5"), "l1 second");
    let mut removed = weights.clone();
    remove(&mut removed, &second).unwrap();
    let torch_removed = golden.weight("l1.weight_removed");
    // Values equal; torch leaves -0.0 where it multiplied a negative weight by 0, lathe +0.0.
    assert_eq!(removed, torch_removed);
    assert!(removed.iter().all(|v| *v != 0.0 || v.is_sign_positive()));

    // ln_structured: 8 of 32 rows by L2, then 12 of the 24 columns by L1 over surviving rows.
    let (weights, shape) = golden.tensor("ln.weight");
    let (rows, cols) = (shape[0], shape[1]);
    let by_rows = ln_structured(&weights, rows, cols, Amount::Fraction(0.25), 2.0, 0, None).unwrap();
    assert_same(&by_rows, &golden.mask("ln.mask_dim0_n2_0.25"), "ln dim 0");
    let then_cols = ln_structured(&weights, rows, cols, Amount::Fraction(0.5), 1.0, 1, Some(&by_rows)).unwrap();
    assert_same(&then_cols, &golden.mask("ln.mask_then_dim1_n1_0.5"), "ln then dim 1");
    assert_eq!(then_cols.n_kept(), 24 * 12);

    // global_unstructured over three tensors: round(0.4 * 672) = 269 pruned in total.
    let weights: Vec<Vec<f32>> = (0..3).map(|i| golden.weight(&format!("global.{i}.weight"))).collect();
    let tensors: Vec<&[f32]> = weights.iter().map(Vec::as_slice).collect();
    let masks = global_unstructured(&tensors, Amount::Fraction(0.4), None).unwrap();
    assert_eq!(masks.iter().map(Mask::n_pruned).sum::<usize>(), 269);
    for (i, mask) in masks.iter().enumerate() {
        assert_same(mask, &golden.mask(&format!("global.{i}.mask")), &format!("global {i}"));
    }

    assert_eq!(*golden.used.borrow(), golden.names(), "a golden tensor is not checked");
}

/// The torch rule and the tie order, by brute force: sort by (magnitude, index), prune the first k.
fn oracle_l1(weights: &[f32], candidates: &[usize], k: usize) -> BTreeSet<usize> {
    let mut order = candidates.to_vec();
    order.sort_by(|&a, &b| weights[a].abs().total_cmp(&weights[b].abs()).then(a.cmp(&b)));
    order[..k].iter().copied().collect()
}

/// Weights with many exact ties and zeros (a coarse grid) or almost none (any float).
fn weights(len: impl Into<proptest::sample::SizeRange>) -> impl Strategy<Value = Vec<f32>> {
    let value = prop_oneof![(-8i32..=8).prop_map(|v| v as f32 / 4.0), -100.0f32..100.0];
    proptest::collection::vec(value, len)
}

fn fraction() -> impl Strategy<Value = f64> {
    prop_oneof![0.0..=1.0f64, (0u32..=8).prop_map(|v| f64::from(v) / 8.0)]
}

proptest! {
    #[test]
    fn l1_prunes_the_torch_count_of_smallest(weights in weights(0..200), amount in fraction()) {
        let mask = l1_unstructured(&weights, Amount::Fraction(amount), None).unwrap();
        let k = (amount * weights.len() as f64).round_ties_even() as usize;
        prop_assert_eq!(mask.n_pruned(), k);
        let all: Vec<usize> = (0..weights.len()).collect();
        prop_assert_eq!(mask.pruned_indices().collect::<BTreeSet<_>>(), oracle_l1(&weights, &all, k));
    }

    #[test]
    fn repeated_pruning_is_the_combined_amount(weights in weights(0..200), a in fraction(), b in fraction()) {
        let n = weights.len();
        let first = l1_unstructured(&weights, Amount::Fraction(a), None).unwrap();
        let second = l1_unstructured(&weights, Amount::Fraction(b), Some(&first)).unwrap();
        let k1 = (a * n as f64).round_ties_even() as usize;
        let k2 = (b * (n - k1) as f64).round_ties_even() as usize;
        prop_assert_eq!(second.n_pruned(), k1 + k2);
        prop_assert!(first.pruned_indices().all(|i| !second.is_kept(i)));
        prop_assert_eq!(&second, &l1_unstructured(&weights, Amount::Count(k1 + k2), None).unwrap());
        let survivors: Vec<usize> = first.kept_indices().collect();
        let newly: BTreeSet<usize> = second.pruned_indices().filter(|&i| first.is_kept(i)).collect();
        prop_assert_eq!(newly, oracle_l1(&weights, &survivors, k2));
    }

    #[test]
    fn global_is_l1_on_the_concatenation(
        tensors in proptest::collection::vec(weights(0..40), 0..5),
        a in fraction(),
        b in fraction(),
    ) {
        let slices: Vec<&[f32]> = tensors.iter().map(Vec::as_slice).collect();
        let lens: Vec<usize> = tensors.iter().map(Vec::len).collect();
        let joined = tensors.concat();
        let masks = global_unstructured(&slices, Amount::Fraction(a), None).unwrap();
        let flat = l1_unstructured(&joined, Amount::Fraction(a), None).unwrap();
        prop_assert_eq!(&masks, &flat.split(&lens).unwrap());
        let again = global_unstructured(&slices, Amount::Fraction(b), Some(&masks)).unwrap();
        let flat_again = l1_unstructured(&joined, Amount::Fraction(b), Some(&flat)).unwrap();
        prop_assert_eq!(Mask::concat(&again), flat_again);
    }

    #[test]
    fn n_m_keeps_at_most_n_per_group(
        (rows, groups, m, n_kept, weights) in (1usize..6, 0usize..5, 1usize..9)
            .prop_flat_map(|(rows, groups, m)| (Just(rows), Just(groups), Just(m), 0..=m, weights(rows * groups * m))),
    ) {
        let cols = groups * m;
        let mask = n_m(&weights, rows, cols, n_kept, m).unwrap();
        for (group, values) in weights.chunks_exact(m).enumerate() {
            let kept: Vec<usize> = (0..m).filter(|&j| mask.is_kept(group * m + j)).collect();
            prop_assert!(kept.len() <= n_kept);
            // This implementation keeps exactly N, and they are the N largest magnitudes.
            prop_assert_eq!(kept.len(), n_kept);
            let smallest_kept = kept.iter().map(|&j| values[j].abs()).fold(f32::INFINITY, f32::min);
            prop_assert!((0..m).filter(|j| !kept.contains(j)).all(|j| values[j].abs() <= smallest_kept));
        }
        let distinct: BTreeSet<u32> = weights.iter().map(|w| w.abs().to_bits()).collect();
        if distinct.len() == weights.len() {
            // With no ties the group's N largest are unique: compare with sorting.
            for (group, values) in weights.chunks_exact(m).enumerate() {
                let mut order: Vec<usize> = (0..m).collect();
                order.sort_by(|&a, &b| values[b].abs().total_cmp(&values[a].abs()));
                let expected: BTreeSet<usize> = order[..n_kept].iter().map(|j| group * m + j).collect();
                let kept: BTreeSet<usize> = (group * m..(group + 1) * m).filter(|&i| mask.is_kept(i)).collect();
                prop_assert_eq!(kept, expected);
            }
        }
        // The same pattern from scores equal to the magnitudes.
        let scores: Vec<f32> = weights.iter().map(|w| w.abs()).collect();
        prop_assert_eq!(n_m_by_score(&scores, rows, cols, n_kept, m).unwrap(), mask);
    }

    #[test]
    fn structured_kept_indices_are_sorted_and_counted(
        scores in proptest::collection::vec(prop_oneof![(0i32..4).prop_map(f64::from), -1e3..1e3f64], 0..64),
        amount in fraction(),
    ) {
        let n = scores.len();
        let kept = keep_by_score(&scores, Target::Prune(Amount::Fraction(amount))).unwrap();
        prop_assert!(kept.windows(2).all(|pair| pair[0] < pair[1]));
        prop_assert_eq!(kept.len(), n - (amount * n as f64).round_ties_even() as usize);
        // Every kept score is at least every pruned one.
        let min_kept = kept.iter().map(|&i| scores[i]).fold(f64::INFINITY, f64::min);
        prop_assert!((0..n).filter(|i| !kept.contains(i)).all(|i| scores[i] <= min_kept));
        let target = kept.len() / 2;
        prop_assert_eq!(keep_by_score(&scores, Target::Keep(target)).unwrap().len(), target);
    }

    #[test]
    fn heads_and_neurons_kept_are_sorted_and_counted(
        (n_heads, head_dim, weights) in (1usize..6, 1usize..4)
            .prop_flat_map(|(h, d)| (Just(h), Just(d), weights(4 * (h * d) * (h * d)))),
        keep in 0usize..6,
        n in prop_oneof![Just(1.0), Just(2.0), Just(f64::INFINITY), 0.5..3.0f64],
    ) {
        let hidden = n_heads * head_dim;
        let keep = keep.min(n_heads);
        let [q, k, v, o] = [0, 1, 2, 3].map(|i| &weights[i * hidden * hidden..(i + 1) * hidden * hidden]);
        let block = AttentionWeights { q, k, v, o, hidden, n_heads };
        let heads = block.heads_to_keep(n, Target::Keep(keep)).unwrap();
        prop_assert_eq!(heads.len(), keep);
        prop_assert!(heads.windows(2).all(|pair| pair[0] < pair[1]));
        prop_assert_eq!(&heads, &keep_by_score(&block.head_norms(n).unwrap(), Target::Keep(keep)).unwrap());
        let channels = block.head_channels(&heads).unwrap();
        prop_assert_eq!(select_rows(q, hidden, hidden, &channels).unwrap().len(), keep * head_dim * hidden);
        prop_assert_eq!(select_cols(o, hidden, hidden, &channels).unwrap().len(), keep * head_dim * hidden);

        // FFN with intermediate = 2 * hidden over the same values.
        let intermediate = 2 * hidden;
        let ffn = FfnWeights { up: &weights[..intermediate * hidden], gate: None,
            down: &weights[intermediate * hidden..2 * intermediate * hidden], hidden, intermediate };
        let neurons = ffn.neurons_to_keep(n, Target::Prune(Amount::Fraction(0.5))).unwrap();
        prop_assert_eq!(neurons.len(), intermediate - intermediate / 2);
        prop_assert!(neurons.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn ln_structured_prunes_whole_channels(
        (rows, cols, weights) in (0usize..8, 0usize..8).prop_flat_map(|(r, c)| (Just(r), Just(c), weights(r * c))),
        a in fraction(),
        b in fraction(),
        dim in 0usize..2,
    ) {
        let first = ln_structured(&weights, rows, cols, Amount::Fraction(a), 2.0, dim, None).unwrap();
        let n_channels = if dim == 0 { rows } else { cols };
        let other = if dim == 0 { cols } else { rows };
        let k1 = (a * n_channels as f64).round_ties_even() as usize;
        prop_assert_eq!(first.n_pruned(), k1 * other);
        let second = ln_structured(&weights, rows, cols, Amount::Fraction(b), 1.0, dim, Some(&first)).unwrap();
        // With a non-empty other dimension, survivors are exactly the unpruned channels.
        if other > 0 {
            let k2 = (b * (n_channels - k1) as f64).round_ties_even() as usize;
            prop_assert_eq!(second.n_pruned(), (k1 + k2) * other);
        }
        prop_assert!(first.pruned_indices().all(|i| !second.is_kept(i)));
    }

    #[test]
    fn wanda_prunes_each_row_alike(
        (rows, cols, weights, norms) in (1usize..6, 1usize..12)
            .prop_flat_map(|(r, c)| (Just(r), Just(c), weights(r * c), proptest::collection::vec(0.0f32..10.0, c))),
        amount in fraction(),
    ) {
        let mask = wanda_unstructured(&weights, rows, cols, &norms, Amount::Fraction(amount)).unwrap();
        let k = (amount * cols as f64).round_ties_even() as usize;
        for row in 0..rows {
            prop_assert_eq!((row * cols..(row + 1) * cols).filter(|&i| !mask.is_kept(i)).count(), k);
        }
        let scores = wanda_scores(&weights, rows, cols, &norms).unwrap();
        prop_assert_eq!(mask, per_row_by_score(&scores, rows, cols, Amount::Fraction(amount)).unwrap());
    }

    #[test]
    fn random_unstructured_counts_like_torch(len in 0usize..300, a in fraction(), b in fraction(), seed: u64) {
        let first = random_unstructured(len, Amount::Fraction(a), seed, None).unwrap();
        let k1 = (a * len as f64).round_ties_even() as usize;
        prop_assert_eq!(first.n_pruned(), k1);
        let second = random_unstructured(len, Amount::Fraction(b), seed, Some(&first)).unwrap();
        prop_assert_eq!(second.n_pruned(), k1 + (b * (len - k1) as f64).round_ties_even() as usize);
        prop_assert!(first.pruned_indices().all(|i| !second.is_kept(i)));
    }
}
