//! The deterministic pseudo-random generator of the synthetic feed (and of tests that
//! need reproducible noise).

/// SplitMix64: one u64 of state, fast, and statistically sound for synthetic data.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [0, n), by multiply-shift (no modulo bias worth noting, no division).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    pub fn chance(&mut self, probability: f64) -> bool {
        self.unit() < probability
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// Picks by weight; weights sum to 1.
    pub fn pick_weighted<'a, T>(&mut self, items: &'a [(T, f64)]) -> &'a T {
        let mut remaining = self.unit();
        for (item, weight) in items {
            if remaining < *weight {
                return item;
            }
            remaining -= weight;
        }
        &items[items.len() - 1].0 // rounding left a sliver past the last weight
    }
}
