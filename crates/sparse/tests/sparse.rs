//! lathe-sparse against its references: the dense matrix it was built from (round trips), an f64
//! product (every path, within a tolerance scaled by the row length), and the scalar kernels
//! (every other instruction set, bit for bit, as the crate docs promise), across the formats,
//! batch sizes and thread counts.

use std::panic::{AssertUnwindSafe, catch_unwind};

use lathe_sparse::{
    BitmaskMatrix, ColumnIndices, CsrMatrix, Error, Format, Isa, Kernels, NmMatrix, kernels, prefer_sparse,
};
use proptest::prelude::*;

/// Deterministic values in [-1, 1) (splitmix64), so that failures replay from the seed alone.
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A `[rows, cols]` matrix keeping about `density` of its weights; dropped weights alternate
/// between +0.0 and -0.0 so that both zeros are exercised.
fn sparse_weights(rows: usize, cols: usize, density: f64, seed: u64) -> Vec<f32> {
    let keep = values(rows * cols, seed);
    let weights = values(rows * cols, seed ^ 0x5555);
    keep.iter()
        .zip(&weights)
        .enumerate()
        .map(|(i, (&keep, &weight))| {
            if f64::from(keep + 1.0) / 2.0 < density {
                weight
            } else if i % 2 == 0 {
                0.0
            } else {
                -0.0
            }
        })
        .collect()
}

/// Keeps the `n` largest magnitudes of every group of `m` (ties to the lower position), then
/// drops about `holes` of the survivors, so that some groups hold fewer than `n`.
fn nm_weights(rows: usize, cols: usize, n: usize, m: usize, holes: f64, seed: u64) -> Vec<f32> {
    let mut weights = values(rows * cols, seed);
    let drop = values(rows * cols, seed ^ 0xaaaa);
    for group in weights.chunks_mut(m) {
        let mut order: Vec<usize> = (0..m).collect();
        order.sort_by(|&a, &b| group[b].abs().total_cmp(&group[a].abs()).then(a.cmp(&b)));
        for &position in &order[n..] {
            group[position] = 0.0;
        }
    }
    for (weight, &drop) in weights.iter_mut().zip(&drop) {
        if f64::from(drop + 1.0) / 2.0 < holes {
            *weight = 0.0;
        }
    }
    weights
}

/// `y[t, r] = sum_c x[t, c] * w[r, c] + b[r]` in f64, and the tolerance of each output:
/// `(terms + 4) * EPSILON_f32 * (sum |x w| + |b|)`, the bound of any f32 summation order with
/// fused multiply-adds (a few spare terms for the final additions).
fn reference(w: &[f32], rows: usize, cols: usize, x: &[f32], n_tokens: usize, bias: Option<&[f32]>) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(n_tokens * rows);
    for token in 0..n_tokens {
        for row in 0..rows {
            let b = bias.map_or(0.0, |bias| f64::from(bias[row]));
            let (mut sum, mut magnitude, mut terms) = (b, b.abs(), 0usize);
            for col in 0..cols {
                let weight = w[row * cols + col];
                if weight != 0.0 {
                    let product = f64::from(weight) * f64::from(x[token * cols + col]);
                    sum += product;
                    magnitude += product.abs();
                    terms += 1;
                }
            }
            out.push((sum, (terms + 4) as f64 * f64::from(f32::EPSILON) * magnitude));
        }
    }
    out
}

/// Equal bit for bit, or both NaN (payloads may differ between instruction sets).
fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

fn assert_same(found: &[f32], expected: &[f32], what: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(found.len(), expected.len());
    for (i, (&a, &b)) in found.iter().zip(expected).enumerate() {
        prop_assert!(
            same(a, b),
            "{}: output {} is {} ({:#x}), expected {} ({:#x})",
            what,
            i,
            a,
            a.to_bits(),
            b,
            b.to_bits()
        );
    }
    Ok(())
}

/// Every kernel table this CPU runs, scalar first.
fn tables() -> Vec<&'static Kernels> {
    Isa::supported().into_iter().map(|isa| kernels(isa).expect("supported isa has kernels")).collect()
}

/// The three formats behind one interface, for the product tests.
enum Any {
    Csr(CsrMatrix),
    Nm(NmMatrix),
    Bitmask(BitmaskMatrix),
}

impl Any {
    fn name(&self) -> &'static str {
        match self {
            Any::Csr(_) => "csr",
            Any::Nm(_) => "nm",
            Any::Bitmask(_) => "bitmask",
        }
    }

    fn spmm_with(&self, kernels: &Kernels, x: &[f32], n_tokens: usize, bias: Option<&[f32]>, y: &mut [f32]) {
        match self {
            Any::Csr(matrix) => matrix.spmm_with(kernels, x, n_tokens, bias, y),
            Any::Nm(matrix) => matrix.spmm_with(kernels, x, n_tokens, bias, y),
            Any::Bitmask(matrix) => matrix.spmm_with(kernels, x, n_tokens, bias, y),
        }
    }
}

/// Runs every format and table on `w` and checks: the f64 reference within tolerance, AVX2 equal
/// to scalar, all formats equal to CSR, and the dispatched entry points equal to their table.
fn check_products(
    w: &[f32],
    rows: usize,
    cols: usize,
    nm: Option<(usize, usize)>,
    n_tokens: usize,
    with_bias: bool,
    seed: u64,
) -> Result<(), TestCaseError> {
    let x = values(n_tokens * cols, seed ^ 0x1234);
    let bias = with_bias.then(|| values(rows, seed ^ 0x4321));
    let bias = bias.as_deref();
    let mut formats = vec![
        Any::Csr(CsrMatrix::from_dense(w, rows, cols).unwrap()),
        Any::Bitmask(BitmaskMatrix::from_dense(w, rows, cols).unwrap()),
    ];
    if let Some((n, m)) = nm {
        formats.push(Any::Nm(NmMatrix::from_dense(w, rows, cols, n, m).unwrap()));
    }
    let expected = reference(w, rows, cols, &x, n_tokens, bias);
    let mut csr_scalar = vec![f32::NAN; n_tokens * rows];
    formats[0].spmm_with(tables()[0], &x, n_tokens, bias, &mut csr_scalar);
    for (i, (&found, &(exact, tolerance))) in csr_scalar.iter().zip(&expected).enumerate() {
        prop_assert!(
            (f64::from(found) - exact).abs() <= tolerance,
            "{}x{} t={}: output {} is {}, f64 reference {} +- {}",
            rows,
            cols,
            n_tokens,
            i,
            found,
            exact,
            tolerance
        );
    }
    for format in &formats {
        for table in tables() {
            let mut y = vec![f32::NAN; n_tokens * rows];
            format.spmm_with(table, &x, n_tokens, bias, &mut y);
            assert_same(&y, &csr_scalar, &format!("{} on {}", format.name(), table.isa().name()))?;
        }
    }
    // The dispatched entry points.
    let Any::Csr(csr) = &formats[0] else { unreachable!("csr comes first") };
    let mut y = vec![f32::NAN; n_tokens * rows];
    match bias {
        Some(bias) => csr.spmm_bias(&x, n_tokens, bias, &mut y),
        None => csr.spmm(&x, n_tokens, &mut y),
    }
    assert_same(&y, &csr_scalar, "dispatched spmm")?;
    Ok(())
}

/// Shapes around the 192-column blocks and the 8-row groups of the kernels.
fn shape() -> impl Strategy<Value = (usize, usize)> {
    (
        prop_oneof![Just(0usize), 1usize..=9, 15usize..=17, 30usize..=34],
        prop_oneof![
            3 => 0usize..=24,
            1 => 188usize..=196,
            1 => 380usize..=392,
            1 => 760usize..=800,
        ],
    )
}

fn density() -> impl Strategy<Value = f64> {
    prop_oneof![Just(0.0), Just(0.05), Just(0.3), Just(0.7), Just(1.0)]
}

fn tokens() -> impl Strategy<Value = usize> {
    prop_oneof![Just(0usize), Just(1), Just(2), 3usize..=9, 15usize..=17, 31usize..=33, 63usize..=65]
}

/// `(n, m)` patterns: power-of-two `n` up to `m = 64` (the direct kernels), 3:8 and 2:128
/// (decoded).
fn pattern() -> impl Strategy<Value = (usize, usize)> {
    prop_oneof![
        Just((2usize, 4usize)),
        Just((1, 4)),
        Just((4, 8)),
        Just((1, 2)),
        Just((3, 8)),
        Just((2, 8)),
        Just((8, 16)),
        Just((4, 64)),
        Just((2, 128))
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn every_format_round_trips((rows, cols) in shape(), density in density(), seed in any::<u64>()) {
        let w = sparse_weights(rows, cols, density, seed);
        // Zeros of both signs come back as +0.0; everything else exactly.
        let expected: Vec<f32> = w.iter().map(|&v| if v == 0.0 { 0.0 } else { v }).collect();
        let csr = CsrMatrix::from_dense(&w, rows, cols).unwrap();
        let bitmask = BitmaskMatrix::from_dense(&w, rows, cols).unwrap();
        assert_same(&csr.to_dense(), &expected, "csr")?;
        assert_same(&bitmask.to_dense(), &expected, "bitmask")?;
        let nnz = expected.iter().filter(|&&v| v != 0.0).count();
        prop_assert_eq!((csr.nnz(), bitmask.nnz()), (nnz, nnz));
        prop_assert_eq!(csr.density(), if rows * cols == 0 { 0.0 } else { nnz as f64 / (rows * cols) as f64 });
        prop_assert_eq!(csr.row_offsets().len(), rows + 1);
        prop_assert!(matches!(csr.col_indices(), ColumnIndices::U16(indices) if indices.len() == nnz));
        // The bitmask import reads back what the compressor wrote.
        let offsets: Vec<i64> = bitmask.row_offsets().iter().map(|&offset| offset as i64).collect();
        let imported = BitmaskMatrix::from_compressed_tensors(
            [rows, cols], bitmask.compressed().to_vec(), bitmask.bitmask().to_vec(), Some(&offsets),
        ).unwrap();
        prop_assert_eq!(&imported, &bitmask);
    }

    #[test]
    fn nm_round_trips(rows in 0usize..=9, groups in 0usize..=100, (n, m) in pattern(), holes in prop_oneof![Just(0.0), Just(0.2)], seed in any::<u64>()) {
        let cols = groups * m;
        let w = nm_weights(rows, cols, n, m, holes, seed);
        let nm = NmMatrix::from_dense(&w, rows, cols, n, m).unwrap();
        assert_same(&nm.to_dense(), &w, "nm")?;
        prop_assert_eq!(nm.nnz(), w.iter().filter(|&&v| v != 0.0).count());
        prop_assert_eq!(nm.values().len(), rows * groups * n);
        prop_assert_eq!(nm.packed_indices().len(), rows * (groups * n * nm.index_bits()).div_ceil(8));
    }

    #[test]
    fn unstructured_products_agree((rows, cols) in shape(), density in density(), n_tokens in tokens(), with_bias in any::<bool>(), seed in any::<u64>()) {
        let w = sparse_weights(rows, cols, density, seed);
        check_products(&w, rows, cols, None, n_tokens, with_bias, seed)?;
    }

    #[test]
    fn nm_products_agree(rows in prop_oneof![0usize..=20, 32usize..=41], groups in prop_oneof![0usize..=12, 95usize..=110], (n, m) in pattern(), holes in prop_oneof![Just(0.0), Just(0.2)], n_tokens in tokens(), with_bias in any::<bool>(), seed in any::<u64>()) {
        let cols = groups * m;
        let w = nm_weights(rows, cols, n, m, holes, seed);
        check_products(&w, rows, cols, Some((n, m)), n_tokens, with_bias, seed)?;
    }

    #[test]
    fn special_activations_agree_across_isas(rows in 1usize..=9, cols in prop_oneof![1usize..=40, 380usize..=400], n_tokens in 1usize..=18, seed in any::<u64>()) {
        let w = sparse_weights(rows, cols, 0.5, seed);
        let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 0.0, f32::MIN_POSITIVE / 4.0, f32::MAX, -f32::MAX];
        let mut x = values(n_tokens * cols, seed ^ 7);
        for (i, value) in x.iter_mut().enumerate() {
            if i % 5 == 0 {
                *value = specials[(i / 5) % specials.len()];
            }
        }
        let bias: Vec<f32> = (0..rows).map(|r| if r % 2 == 0 { -0.0 } else { 1.0 }).collect();
        let csr = CsrMatrix::from_dense(&w, rows, cols).unwrap();
        let mut expected = vec![0.0; n_tokens * rows];
        csr.spmm_with(tables()[0], &x, n_tokens, Some(&bias), &mut expected);
        for table in tables() {
            let mut y = vec![0.0; n_tokens * rows];
            csr.spmm_with(table, &x, n_tokens, Some(&bias), &mut y);
            assert_same(&y, &expected, table.isa().name())?;
        }
    }
}

#[test]
fn a_token_sums_alike_alone_and_in_a_batch() {
    let (rows, cols) = (40, 900);
    let w = sparse_weights(rows, cols, 0.3, 1);
    let two_four = nm_weights(rows, cols, 2, 4, 0.0, 11);
    let x = values(20 * cols, 2);
    // 2:4 takes the lanes for these batches (and for one token); CSR and bitmask the panels.
    for (table, n_tokens) in tables().into_iter().flat_map(|table| [(table, 20), (table, 9)]) {
        for matrix in [
            Any::Csr(CsrMatrix::from_dense(&w, rows, cols).unwrap()),
            Any::Bitmask(BitmaskMatrix::from_dense(&w, rows, cols).unwrap()),
            Any::Nm(NmMatrix::from_dense(&two_four, rows, cols, 2, 4).unwrap()),
        ] {
            let mut batch = vec![0.0; n_tokens * rows];
            matrix.spmm_with(table, &x[..n_tokens * cols], n_tokens, None, &mut batch);
            for token in [0, 7, 16, 19].into_iter().filter(|&token| token < n_tokens) {
                let mut alone = vec![0.0; rows];
                matrix.spmm_with(table, &x[token * cols..][..cols], 1, None, &mut alone);
                assert_eq!(
                    alone,
                    batch[token * rows..][..rows],
                    "{} token {token} on {}",
                    matrix.name(),
                    table.isa().name()
                );
            }
        }
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    // 2:4 with 9 tokens takes the lanes, with 70 the panels.
    let (rows, cols, n_tokens) = (304, 800, 70);
    let w = sparse_weights(rows, cols, 0.5, 3);
    let x = values(n_tokens * cols, 4);
    let bias = values(rows, 5);
    let csr = CsrMatrix::from_dense(&w, rows, cols).unwrap();
    let nm = NmMatrix::from_dense(&nm_weights(rows, cols, 2, 4, 0.0, 6), rows, cols, 2, 4).unwrap();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut outputs = Vec::new();
            for n_tokens in [1, 9, n_tokens] {
                let x = &x[..n_tokens * cols];
                let mut y = vec![0.0; n_tokens * rows];
                csr.spmm_bias(x, n_tokens, &bias, &mut y);
                outputs.push(y.clone());
                nm.spmm_bias(x, n_tokens, &bias, &mut y);
                outputs.push(y);
            }
            outputs
        })
    };
    let one = run(1);
    for threads in [2, 3] {
        assert_eq!(run(threads), one, "{threads} threads");
    }
}

#[test]
fn spmv_is_spmm_of_one_token() {
    let (rows, cols) = (17, 33);
    let w = sparse_weights(rows, cols, 0.4, 8);
    let x = values(cols, 9);
    let csr = CsrMatrix::from_dense(&w, rows, cols).unwrap();
    let (mut spmv, mut spmm) = (vec![0.0; rows], vec![0.0; rows]);
    csr.spmv(&x, &mut spmv);
    csr.spmm(&x, 1, &mut spmm);
    assert_eq!(spmv, spmm);
}

#[test]
fn known_products() {
    // W = [[0, 2, 0], [1, 0, -1]], two tokens, bias [0.5, -0.5].
    let w = [0.0, 2.0, 0.0, 1.0, 0.0, -1.0];
    let x = [1.0, 2.0, 3.0, 0.5, 0.5, 0.5];
    let csr = CsrMatrix::from_dense(&w, 2, 3).unwrap();
    let bitmask = BitmaskMatrix::from_dense(&w, 2, 3).unwrap();
    for table in tables() {
        let mut y = [f32::NAN; 4];
        csr.spmm_with(table, &x, 2, Some(&[0.5, -0.5]), &mut y);
        assert_eq!(y, [4.5, -2.5, 1.5, -0.5], "{}", table.isa().name());
        bitmask.spmm_with(table, &x, 2, None, &mut y);
        assert_eq!(y, [4.0, -2.0, 1.0, 0.0], "{}", table.isa().name());
    }
    // 2:4 over 8 columns: row 0 keeps columns 1, 3 and 4; row 1 is empty.
    let w = [0.0, 1.0, 0.0, 2.0, 3.0, 0.0, 0.0, 0.0, /* row 1 */ 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
    let nm = NmMatrix::from_dense(&w, 2, 8, 2, 4).unwrap();
    let x: Vec<f32> = (1..=8).map(|v| v as f32).collect();
    let mut y = [f32::NAN; 2];
    for table in tables() {
        nm.spmm_with(table, &x, 1, Some(&[0.0, 7.0]), &mut y);
        assert_eq!(y, [2.0 + 8.0 + 15.0, 7.0], "{}", table.isa().name());
    }
}

#[test]
fn zero_tokens_and_empty_shapes_write_nothing_or_the_bias() {
    let csr = CsrMatrix::from_dense(&[], 3, 0).unwrap();
    let mut y = [f32::NAN; 6];
    csr.spmm_bias(&[], 2, &[1.0, 2.0, 3.0], &mut y);
    assert_eq!(y, [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
    csr.spmm(&[], 2, &mut y);
    assert_eq!(y, [0.0; 6]);
    let csr = CsrMatrix::from_dense(&[0.0; 12], 3, 4).unwrap();
    csr.spmm(&[], 0, &mut []);
    assert_eq!((csr.nnz(), csr.density()), (0, 0.0));
    let empty = CsrMatrix::from_dense(&[], 0, 5).unwrap();
    empty.spmm(&[1.0; 10], 2, &mut []);
    assert_eq!(empty.density(), 0.0);
}

#[test]
fn wide_matrices_use_u32_indices() {
    let (rows, cols) = (2, 70_000);
    let mut w = vec![0.0f32; rows * cols];
    w[5] = 1.0;
    w[69_999] = 2.0;
    w[cols + 65_536] = -3.0;
    let csr = CsrMatrix::from_dense(&w, rows, cols).unwrap();
    assert!(matches!(csr.col_indices(), ColumnIndices::U32(&[5, 69_999, 65_536])));
    assert_eq!(csr.to_dense(), w);
    let mut x = vec![0.0f32; 2 * cols];
    (x[5], x[69_999], x[65_536], x[cols + 65_536]) = (1.0, 1.0, 1.0, 2.0);
    for table in tables() {
        for matrix in [Any::Csr(csr.clone()), Any::Bitmask(BitmaskMatrix::from_dense(&w, rows, cols).unwrap())] {
            let mut y = [f32::NAN; 4];
            matrix.spmm_with(table, &x, 2, None, &mut y);
            assert_eq!(y, [3.0, -3.0, 0.0, -6.0], "{} on {}", matrix.name(), table.isa().name());
        }
    }
}

#[test]
fn bitmask_matches_compressed_tensors_layout() {
    // numpy.packbits(mask, axis=-1, bitorder="little") of
    // [[1,0,1,0,0,0,0,0,0,1], [0,0,0,0,0,0,0,0,1,0], [0]*10]: row bytes [0b101, 0b10], [0, 0b1], [0, 0].
    let mut w = vec![0.0f32; 30];
    (w[0], w[2], w[9], w[18]) = (2.0, 5.0, 1.0, -4.0);
    let matrix = BitmaskMatrix::from_dense(&w, 3, 10).unwrap();
    assert_eq!(matrix.bitmask(), [0b101, 0b10, 0, 0b1, 0, 0]);
    assert_eq!(matrix.compressed(), [2.0, 5.0, 1.0, -4.0]);
    assert_eq!(matrix.row_offsets(), [0, 3, 4]);
    let imported = BitmaskMatrix::from_compressed_tensors(
        [3, 10],
        vec![2.0, 5.0, 1.0, -4.0],
        vec![0b101, 0b10, 0, 0b1, 0, 0],
        None,
    )
    .unwrap();
    assert_eq!(imported.to_dense(), w);
    // A stored zero is accepted and adds nothing.
    let with_zero = BitmaskMatrix::from_compressed_tensors([1, 3], vec![0.0, 2.0], vec![0b011], Some(&[0])).unwrap();
    assert_eq!((with_zero.nnz(), with_zero.to_dense()), (2, vec![0.0, 2.0, 0.0]));
    let mut y = [f32::NAN; 1];
    with_zero.spmv(&[f32::INFINITY, 1.0, 1.0], &mut y);
    assert_eq!(y, [2.0]);
}

#[test]
fn bad_input_is_an_error_naming_the_place() {
    let nan = [0.0, 1.0, f32::NAN, 0.0];
    assert_eq!(CsrMatrix::from_dense(&nan, 2, 2), Err(Error::NotANumber { row: 1, col: 0 }));
    assert_eq!(BitmaskMatrix::from_dense(&nan, 1, 4), Err(Error::NotANumber { row: 0, col: 2 }));
    assert_eq!(NmMatrix::from_dense(&nan, 1, 4, 2, 4), Err(Error::NotANumber { row: 0, col: 2 }));
    assert!(matches!(
        CsrMatrix::from_dense(&[0.0; 5], 2, 3),
        Err(Error::ShapeMismatch { what: "weights", expected: 6, found: 5, .. })
    ));
    assert_eq!(CsrMatrix::from_dense(&[], usize::MAX, 2), Err(Error::TooLarge { rows: usize::MAX, cols: 2 }));
    assert_eq!(
        NmMatrix::from_dense(&[1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0], 1, 8, 2, 4),
        Err(Error::TooDense { row: 0, col: 0, end: 4, found: 3, n: 2, m: 4 })
    );
    assert_eq!(NmMatrix::from_dense(&[0.0; 6], 1, 6, 2, 4), Err(Error::GroupMisfit { cols: 6, n: 2, m: 4 }));
    for (n, m) in [(2, 3), (0, 4), (5, 4), (1, 256), (1, 1)] {
        assert_eq!(NmMatrix::from_dense(&[0.0; 768], 1, 768, n, m), Err(Error::BadPattern { n, m }));
    }
    // Bitmask imports.
    let import = |shape, values: Vec<f32>, mask: Vec<u8>, offsets: Option<&[i64]>| {
        BitmaskMatrix::from_compressed_tensors(shape, values, mask, offsets)
    };
    assert_eq!(
        import([2, 10], vec![], vec![0; 3], None),
        Err(Error::LengthMismatch { what: "bitmask", expected: 4, found: 3 })
    );
    assert_eq!(import([1, 10], vec![], vec![0, 0b100], None), Err(Error::BitmaskPadding { row: 0, cols: 10 }));
    assert_eq!(
        import([1, 10], vec![1.0], vec![0b11, 0], None),
        Err(Error::LengthMismatch { what: "compressed values", expected: 2, found: 1 })
    );
    assert_eq!(
        import([2, 8], vec![1.0, 2.0], vec![0b1, 0b1], Some(&[0, 2])),
        Err(Error::RowOffset { row: 1, expected: 1, found: 2 })
    );
    assert_eq!(
        import([2, 8], vec![1.0, 2.0], vec![0b1, 0b1], Some(&[0])),
        Err(Error::LengthMismatch { what: "row_offsets", expected: 2, found: 1 })
    );
    assert_eq!(import([1, 8], vec![1.0, f32::NAN], vec![0b1001_0000], None), Err(Error::NotANumber { row: 0, col: 7 }));
    assert_eq!(import([usize::MAX, 8], vec![], vec![], None), Err(Error::TooLarge { rows: usize::MAX, cols: 8 }));
    // Messages are lower-case and name the place.
    assert_eq!(Error::NotANumber { row: 1, col: 0 }.to_string(), "weight at row 1, column 0 is NaN");
}

#[test]
fn mismatched_lengths_panic() {
    let csr = CsrMatrix::from_dense(&[1.0; 6], 2, 3).unwrap();
    let nm = NmMatrix::from_dense(&[1.0, 0.0, 1.0, 0.0], 1, 4, 2, 4).unwrap();
    let calls: [&dyn Fn(); 6] = [
        &|| csr.spmm(&[1.0; 5], 2, &mut [0.0; 4]),
        &|| csr.spmm(&[1.0; 6], 2, &mut [0.0; 5]),
        &|| csr.spmm_bias(&[1.0; 6], 2, &[0.0; 3], &mut [0.0; 4]),
        &|| csr.spmv(&[1.0; 3], &mut [0.0; 3]),
        &|| nm.spmv(&[1.0; 3], &mut [0.0; 1]),
        &|| csr.spmm(&[], usize::MAX, &mut []),
    ];
    for (i, call) in calls.iter().enumerate() {
        assert!(catch_unwind(AssertUnwindSafe(call)).is_err(), "call {i} did not panic");
    }
}

#[test]
fn isa_tables_match_detection() {
    assert_eq!(kernels(Isa::Scalar).map(Kernels::isa), Some(Isa::Scalar));
    assert_eq!(kernels(Isa::Avx2).is_some(), Isa::Avx2.is_supported());
    assert!(Isa::supported().contains(&Isa::active()));
    if std::env::var("LATHE_FORCE_ISA").as_deref() == Ok("scalar") {
        assert_eq!(Isa::active(), Isa::Scalar);
    }
}

#[test]
fn the_rule_prefers_sparse_only_where_it_was_measured_to_win() {
    // Tiny layers never pay for the panels.
    assert!(!prefer_sparse(Format::Csr, 4, 8, 0.1, 128));
    // Very sparse MiniLM-sized layers do, and dense-ish ones do not.
    assert!(prefer_sparse(Format::Csr, 1536, 384, 0.1, 128));
    assert!(!prefer_sparse(Format::Csr, 1536, 384, 0.9, 128));
    assert!(!prefer_sparse(Format::Bitmask, 384, 384, 1.0, 1));
    assert!(!prefer_sparse(Format::Csr, 0, 0, 0.0, 0));
    // 2:4 wins at every batch size on cache-sized layers, not at 2 to 4 tokens on big ones.
    let two_four = Format::Nm { n: 2, m: 4 };
    assert!([1, 2, 4, 8, 32, 128, 256].into_iter().all(|tokens| prefer_sparse(two_four, 384, 384, 0.5, tokens)));
    assert!(prefer_sparse(two_four, 4096, 4096, 0.5, 1) && !prefer_sparse(two_four, 4096, 4096, 0.5, 2));
    // Half-pruned layers win from 32 tokens, not below nor in batches of hundreds; 4:8 takes
    // CSR's thresholds.
    assert!(prefer_sparse(Format::Csr, 384, 1536, 0.5, 32) && !prefer_sparse(Format::Csr, 384, 1536, 0.5, 256));
    assert!(
        !prefer_sparse(Format::Csr, 384, 1536, 0.5, 8) && !prefer_sparse(Format::Nm { n: 4, m: 8 }, 384, 384, 0.5, 8)
    );
    assert!(prefer_sparse(Format::Csr, 384, 1536, 0.3, 256));
}
