//! Test helpers: a seeded generator and a naive Gram matrix.

/// SplitMix64 with Box-Muller normals: deterministic across platforms.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    pub(crate) fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    pub(crate) fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }
}

/// `X^T X` for row-major `[tokens, cols]` activations, naively in f64.
pub(crate) fn gram(x: &[f32], tokens: usize, cols: usize) -> Vec<f64> {
    let mut h = vec![0.0; cols * cols];
    for t in 0..tokens {
        let row = &x[t * cols..(t + 1) * cols];
        for i in 0..cols {
            for j in 0..cols {
                h[i * cols + j] += f64::from(row[i]) * f64::from(row[j]);
            }
        }
    }
    h
}
