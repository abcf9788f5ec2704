//! Novelty: values the series has not produced before, judged by how often the series
//! produces something new.
//!
//! - [`RangeNovelty`]: a value beyond the range of the last `horizon` points. Among `n`
//!   exchangeable values, the newest is the largest with probability `1 / (n + 1)`; going
//!   past the old extreme by a fraction `e` of the range costs a further `exp(−e)`. The
//!   range is kept as block extremes, so old outliers age out.
//! - [`TimeOfDayRarity`]: a value level never seen at this hour of the day (a Monday-morning
//!   drop that sits well inside the overall range). Cells are (hour of day, level); the
//!   probability that the next point lands in an unseen cell is estimated Good–Turing
//!   style, as the share of points that were the only ones in their cell. A noisy series
//!   keeps finding new cells and is rarely surprised; a regular one almost never does.

use serde::{Deserialize, Serialize};

use crate::model::EpochMs;

const DAY_MS: EpochMs = 86_400_000;
/// Blocks the range horizon is cut into (the range forgets one block at a time).
const RANGE_BLOCKS: usize = 8;
/// Cells of [`TimeOfDayRarity`]: hours × value levels.
const HOURS: usize = 24;
const LEVELS: usize = 8;
/// Cell counts are halved when their total passes this, so old habits fade.
const RARITY_MAX_TOTAL: u32 = 10_000;

/// Extremes of the recent past.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RangeNovelty {
    /// (min, max) of each finished block, oldest first; `filled` of them are valid.
    blocks: [(f64, f64); RANGE_BLOCKS],
    filled: usize,
    next: usize,
    current: (f64, f64),
    current_len: u32,
    block_len: u32,
    points: u32,
}

/// How a value sits against the recent range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RangeCheck {
    pub low: f64,
    pub high: f64,
    /// Distance beyond the range, as a fraction of it (0 inside).
    pub excess: f64,
    /// Surprise of the excess (0 inside the range).
    pub surprise: f64,
}

impl RangeNovelty {
    /// `horizon`: points the range remembers.
    pub fn new(value: f64, horizon: u32) -> Self {
        RangeNovelty {
            blocks: [(value, value); RANGE_BLOCKS],
            filled: 0,
            next: 0,
            current: (value, value),
            current_len: 1,
            block_len: (horizon / RANGE_BLOCKS as u32).max(1),
            points: 1,
        }
    }

    pub fn range(&self) -> (f64, f64) {
        self.blocks[..self.filled]
            .iter()
            .fold(self.current, |(lo, hi), &(l, h)| (lo.min(l), hi.max(h)))
    }

    /// Checks `value` against the range; `min_width` keeps a flat range from making any
    /// change infinitely novel.
    pub fn check(&self, value: f64, min_width: f64) -> RangeCheck {
        let (low, high) = self.range();
        let width = (high - low).max(min_width);
        let beyond = if value > high {
            value - high
        } else if value < low {
            low - value
        } else {
            0.0
        };
        let excess = beyond / width;
        let surprise = if beyond > 0.0 {
            let remembered = self.points.min(self.block_len * RANGE_BLOCKS as u32);
            (f64::from(remembered) + 1.0).log10() + excess / std::f64::consts::LN_10
        } else {
            0.0
        };
        RangeCheck {
            low,
            high,
            excess,
            surprise,
        }
    }

    pub fn record(&mut self, value: f64) {
        self.current = (self.current.0.min(value), self.current.1.max(value));
        self.current_len += 1;
        self.points = self.points.saturating_add(1);
        if self.current_len >= self.block_len {
            self.blocks[self.next] = self.current;
            self.next = (self.next + 1) % RANGE_BLOCKS;
            self.filled = (self.filled + 1).min(RANGE_BLOCKS);
            self.current = (value, value);
            self.current_len = 0;
        }
    }
}

/// How often each value level occurs at each hour of the day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeOfDayRarity {
    #[serde(with = "crate::serde_array")]
    counts: [u16; HOURS * LEVELS],
    total: u32,
    first_ts: EpochMs,
}

impl TimeOfDayRarity {
    pub fn new(first_ts: EpochMs) -> Self {
        TimeOfDayRarity {
            counts: [0; HOURS * LEVELS],
            total: 0,
            first_ts,
        }
    }

    /// Surprise of `value` at `ts` (0 unless its cell is empty and a day has been seen),
    /// levels cut evenly across `[low, high]`; then counts it.
    pub fn observe(&mut self, ts: EpochMs, value: f64, low: f64, high: f64) -> f64 {
        let hour = (ts.rem_euclid(DAY_MS) * HOURS as i64 / DAY_MS) as usize;
        let position = if high > low {
            (value - low) / (high - low)
        } else {
            0.5
        };
        let level = ((position * LEVELS as f64).max(0.0) as usize).min(LEVELS - 1);
        let cell = hour * LEVELS + level;
        let surprise = if self.counts[cell] == 0 && ts - self.first_ts >= DAY_MS {
            // Good–Turing: P(next point is in an unseen cell) ≈ share of singletons.
            let singletons = self.counts.iter().filter(|&&c| c == 1).count();
            let p = singletons.max(1) as f64 / f64::from(self.total.max(1));
            -p.min(1.0).log10()
        } else {
            0.0
        };
        self.counts[cell] += 1;
        self.total += 1;
        if self.total > RARITY_MAX_TOTAL {
            // Halving forgets the cells seen only once long ago (1 / 2 = 0).
            for c in &mut self.counts {
                *c /= 2;
            }
            self.total = self.counts.iter().map(|&c| u32::from(c)).sum();
        }
        surprise
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::tests::Noise;

    const HOUR: EpochMs = 3_600_000;

    #[test]
    fn leaving_the_range_costs_one_over_n_and_more_with_the_excess() {
        let mut r = RangeNovelty::new(10.0, 1000);
        for i in 0..99 {
            r.record(10.0 + f64::from(i % 10));
        }
        let inside = r.check(15.0, 1e-9);
        assert_eq!(
            (inside.low, inside.high, inside.surprise),
            (10.0, 19.0, 0.0)
        );
        let just_above = r.check(19.5, 1e-9);
        assert!(
            (just_above.surprise - 101f64.log10()).abs() < 0.1,
            "{just_above:?}"
        );
        let far_below = r.check(-80.0, 1e-9);
        assert!(
            far_below.surprise > just_above.surprise + 4.0,
            "{far_below:?}"
        );
    }

    #[test]
    fn old_extremes_age_out_after_the_horizon() {
        let mut r = RangeNovelty::new(1000.0, 80);
        for _ in 0..200 {
            r.record(1.0);
        }
        assert_eq!(r.range(), (1.0, 1.0));
        assert!(r.check(2.0, 0.5).surprise > 1.9, "remembers 80 points");
    }

    #[test]
    fn a_flat_range_is_widened_to_the_floor() {
        let r = RangeNovelty::new(5.0, 100);
        let c = r.check(6.0, 2.0);
        assert!((c.excess - 0.5).abs() < 1e-12, "{c:?}");
    }

    #[test]
    fn a_level_never_seen_at_this_hour_is_rare_for_a_regular_series() {
        let mut regular = TimeOfDayRarity::new(0);
        let mut noisy = TimeOfDayRarity::new(0);
        let mut noise = Noise::new(7);
        for i in 0..(3 * 24 * 12) {
            let ts = i * HOUR / 12;
            let hour = (ts / HOUR) % 24;
            let usual = if (9..17).contains(&hour) { 90.0 } else { 10.0 };
            assert_eq!(regular.observe(ts, usual, 0.0, 100.0), 0.0, "hour {hour}");
            noisy.observe(ts, 100.0 * noise.unit(), 0.0, 100.0);
        }
        let night = 3 * 24 * HOUR + 3 * HOUR;
        let surprise = regular.observe(night, 90.0, 0.0, 100.0);
        assert!(surprise > 2.5, "daytime level at night: {surprise}");
        assert!(noisy.observe(night, 95.0, 0.0, 100.0) < 1.0);
    }

    #[test]
    fn the_first_day_is_never_surprising() {
        let mut r = TimeOfDayRarity::new(0);
        for i in 0..24 {
            assert_eq!(r.observe(i * HOUR, f64::from(i as i32), 0.0, 24.0), 0.0);
        }
    }
}
