//! numpy's legacy global random stream (`np.random.seed(s)` then `np.random.randn(...)`),
//! reproduced bit for bit, so that a built-in dataset the tutorial generated with it holds the
//! tutorial's exact rows and the figures it quoted can be compared like for like.
//!
//! numpy seeds MT19937 with `init_genrand(s)`, draws doubles as `(a >> 5, b >> 6)` of two 32-bit
//! outputs (53 bits), and draws normals with the Marsaglia polar method, caching the second value
//! of each pair (`legacy_gauss`).

use rand_mt::Mt;

/// `np.random.RandomState(seed)` as far as `randn` goes.
#[derive(Debug, Clone)]
pub struct LegacyRandomState {
    mt: Mt,
    gauss: Option<f64>,
}

impl LegacyRandomState {
    pub fn new(seed: u32) -> Self {
        LegacyRandomState {
            mt: Mt::new(seed),
            gauss: None,
        }
    }

    /// `random_sample()`: a double in [0, 1) from 53 random bits.
    pub fn random_sample(&mut self) -> f64 {
        let a = f64::from(self.mt.next_u32() >> 5);
        let b = f64::from(self.mt.next_u32() >> 6);
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }

    /// One standard normal, as `legacy_gauss` draws it.
    pub fn gauss(&mut self) -> f64 {
        if let Some(g) = self.gauss.take() {
            return g;
        }
        loop {
            let x1 = 2.0 * self.random_sample() - 1.0;
            let x2 = 2.0 * self.random_sample() - 1.0;
            let r2 = x1 * x1 + x2 * x2;
            if r2 < 1.0 && r2 != 0.0 {
                let f = (-2.0 * r2.ln() / r2).sqrt();
                self.gauss = Some(f * x1);
                return f * x2;
            }
        }
    }

    /// `randn(n)`, values in the order numpy fills a row-major array.
    pub fn randn(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.gauss()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values printed by numpy 1.x/2.x for `np.random.seed(42); np.random.randn(5)` and, after
    /// that, `np.random.randn(2)`.
    #[test]
    fn matches_numpys_legacy_randn() {
        let mut r = LegacyRandomState::new(42);
        let expected = [
            0.4967141530112327,
            -0.13826430117118466,
            0.6476885381006925,
            1.5230298564080254,
            -0.23415337472333597,
        ];
        for (got, want) in r.randn(5).iter().zip(expected) {
            assert_eq!(*got, want);
        }
        // The cached second normal of the third pair comes first.
        assert_eq!(r.randn(2), vec![-0.23413695694918055, 1.5792128155073915]);
    }
}
