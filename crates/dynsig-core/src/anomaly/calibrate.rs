//! Calibration: turning a detector statistic into a tail probability that means the same
//! thing on every series.
//!
//! A z-score of 4 is a one-in-16,000 event for Gaussian noise and a weekly occurrence on a
//! spiky CPU series, so a fixed z threshold either floods the noisy series with alarms or
//! misses everything on the quiet ones. [`TailCalibrator`] learns the upper tail of a
//! statistic on the series itself (peaks over threshold: above its `1 − q` quantile `u`
//! the tail is taken as exponential with the mean excess `β` observed there), and blends it
//! with a parametric prior (the Gaussian tail) weighted as `prior_weight` observations, so
//! that a new series is judged by the textbook tail until its own history speaks. A value
//! is never called rarer than the share of history at or above it (a spike that recurs
//! every hundred points has p ≥ 1%, whatever the fitted tail says). Memory is a fixed
//! histogram (fine bins in the body, geometric ones in the tail) whose counts decay, so
//! the calibration follows a series that changes.
//!
//! Probabilities travel as *surprise* `−log10 p`: additive, and far from underflow.

use serde::{Deserialize, Serialize};

/// Histogram bins: `LINEAR_BINS` of width `LINEAR_WIDTH` over `[0, 4)` (the body, where
/// the tail threshold sits), then bins growing by `GROWTH` (the tail, up to ~5000).
/// Larger values land in an overflow bin whose mean is tracked separately.
const BINS: usize = 48;
const LINEAR_BINS: usize = 16;
const LINEAR_WIDTH: f64 = 0.25;
const LINEAR_TOP: f64 = LINEAR_BINS as f64 * LINEAR_WIDTH;
const GROWTH: f64 = 1.25;

/// Surprise reported when a probability underflows.
pub const MAX_SURPRISE: f64 = 300.0;

/// Tuning shared by every calibrator of a detector.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CalibrationParams {
    /// Tail fraction above the threshold `u` (peaks over threshold).
    pub tail_fraction: f64,
    /// How many observations the parametric prior is worth.
    pub prior_weight: f64,
    /// Observations below which the empirical tail is not trusted at all.
    pub min_history: f64,
    /// Per-observation decay of the histogram: `1 / horizon`.
    pub decay: f64,
}

/// The learned upper tail of one nonnegative statistic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TailCalibrator {
    /// Decayed counts, scaled by `unit` (lazy decay: new observations weigh `unit`, which
    /// grows instead of every count shrinking).
    #[serde(with = "crate::serde_array")]
    counts: [f32; BINS],
    overflow_count: f32,
    /// Sum of the overflowing values (scaled like the counts), for their mean.
    overflow_sum: f32,
    total: f32,
    unit: f32,
}

impl Default for TailCalibrator {
    fn default() -> Self {
        TailCalibrator {
            counts: [0.0; BINS],
            overflow_count: 0.0,
            overflow_sum: 0.0,
            total: 0.0,
            unit: 1.0,
        }
    }
}

impl TailCalibrator {
    /// Surprise of `t` given the history (not including `t`), blended with the prior tail
    /// probability `prior_p`; then records `t` if `learn`.
    pub fn observe(
        &mut self,
        params: &CalibrationParams,
        t: f64,
        prior_p: f64,
        learn: bool,
    ) -> f64 {
        let surprise = to_surprise(self.tail_probability(params, t, prior_p));
        if learn {
            self.record(params, t);
        }
        surprise
    }

    /// `P(T ≥ t)`: prior and empirical tail, weighted by their observation counts.
    pub fn tail_probability(&self, params: &CalibrationParams, t: f64, prior_p: f64) -> f64 {
        let n = f64::from(self.total / self.unit);
        if n < params.min_history {
            return prior_p;
        }
        let empirical = self.empirical_tail(params.tail_fraction, t);
        (params.prior_weight * prior_p + n * empirical) / (params.prior_weight + n)
    }

    /// Empirical `P(T ≥ t)` with an exponential tail above the `1 − q` quantile.
    fn empirical_tail(&self, q: f64, t: f64) -> f64 {
        let total = f64::from(self.total);
        let (u, excess) = self.threshold_and_excess(q * total);
        if t > u {
            let exponential = q * (-(t - u) / excess.max(1e-6)).exp();
            exponential.max(self.mass_at_or_above(t) / total)
        } else {
            (self.mass_at_or_above(t) / total).clamp(q, 1.0)
        }
    }

    /// The value `u` with `tail_mass` of the (scaled) mass above it, and the mean excess
    /// over `u` of that mass.
    fn threshold_and_excess(&self, tail_mass: f64) -> (f64, f64) {
        let top = bin_low(BINS);
        let overflow = f64::from(self.overflow_count);
        let overflow_mean = if overflow > 0.0 {
            f64::from(self.overflow_sum) / overflow
        } else {
            top
        };
        if overflow >= tail_mass {
            // The whole tail is in the overflow bin: its mean excess over the bin edge.
            return (top, (overflow_mean - top).max(LINEAR_WIDTH));
        }
        let mut above = overflow;
        let mut excess_sum = overflow * overflow_mean;
        for bin in (0..BINS).rev() {
            let count = f64::from(self.counts[bin]);
            let (low, high) = (bin_low(bin), bin_low(bin + 1));
            if above + count >= tail_mass {
                // Interpolate inside the bin: its mass is spread evenly over its width.
                let needed = tail_mass - above;
                let fraction = if count > 0.0 { needed / count } else { 0.0 };
                let u = high - (high - low) * fraction;
                excess_sum += needed * (u + high) / 2.0;
                return (u, (excess_sum / tail_mass - u).max(LINEAR_WIDTH / 2.0));
            }
            above += count;
            excess_sum += count * (low + high) / 2.0;
        }
        // Fewer observations than the tail needs: everything is tail.
        (0.0, (excess_sum / above.max(1e-12)).max(LINEAR_WIDTH / 2.0))
    }

    /// Scaled mass of observations `≥ t`, interpolated within t's bin (and, in the
    /// overflow bin, spread exponentially above its edge with the observed mean).
    fn mass_at_or_above(&self, t: f64) -> f64 {
        let overflow = f64::from(self.overflow_count);
        let (bin, fraction) = bin_of(t);
        if bin >= BINS {
            if overflow == 0.0 {
                return 0.0;
            }
            let top = bin_low(BINS);
            let mean_excess = (f64::from(self.overflow_sum) / overflow - top).max(LINEAR_WIDTH);
            return overflow * (-(t - top) / mean_excess).exp();
        }
        let above: f64 = self.counts[bin + 1..].iter().map(|&c| f64::from(c)).sum();
        overflow + above + f64::from(self.counts[bin]) * (1.0 - fraction)
    }

    fn record(&mut self, params: &CalibrationParams, t: f64) {
        let (bin, _) = bin_of(t);
        if bin >= BINS {
            self.overflow_count += self.unit;
            self.overflow_sum += self.unit * t.min(1e6) as f32;
        } else {
            self.counts[bin] += self.unit;
        }
        self.total += self.unit;
        self.unit /= 1.0 - params.decay as f32;
        if self.unit > 1e6 {
            self.rescale();
        }
    }

    /// Brings the lazily decayed counts back to unit weight (keeps f32 far from overflow).
    fn rescale(&mut self) {
        let factor = 1.0 / self.unit;
        for c in &mut self.counts {
            *c *= factor;
        }
        self.overflow_count *= factor;
        self.overflow_sum *= factor;
        self.total *= factor;
        self.unit = 1.0;
    }
}

/// Lower edge of a bin (`bin_low(BINS)` is the overflow edge).
fn bin_low(bin: usize) -> f64 {
    if bin <= LINEAR_BINS {
        bin as f64 * LINEAR_WIDTH
    } else {
        LINEAR_TOP * GROWTH.powi((bin - LINEAR_BINS) as i32)
    }
}

/// The bin of `t` (`BINS` for the overflow) and `t`'s position inside it (0..1).
fn bin_of(t: f64) -> (usize, f64) {
    let t = if t.is_nan() { 0.0 } else { t.max(0.0) };
    let position = if t < LINEAR_TOP {
        t / LINEAR_WIDTH
    } else {
        LINEAR_BINS as f64 + (t / LINEAR_TOP).ln() / GROWTH.ln()
    };
    if position >= BINS as f64 {
        return (BINS, 0.0);
    }
    let bin = position as usize;
    let (low, high) = (bin_low(bin), bin_low(bin + 1));
    (bin, ((t - low) / (high - low)).clamp(0.0, 1.0))
}

/// `−log10 p`, capped at [`MAX_SURPRISE`].
pub fn to_surprise(p: f64) -> f64 {
    if p.is_nan() {
        return 0.0;
    }
    (-p.max(1e-300).log10()).clamp(0.0, MAX_SURPRISE)
}

/// Two-sided Gaussian tail probability of a z-score: `P(|Z| ≥ |z|)`.
pub fn normal_two_sided(z: f64) -> f64 {
    if z.is_nan() {
        return 1.0;
    }
    erfc(z.abs() / std::f64::consts::SQRT_2)
}

/// Complementary error function for `x ≥ 0`, Chebyshev fit with fractional error below
/// 1.2e-7 everywhere (Numerical Recipes, `erfcc`). Plenty for alert thresholds.
pub fn erfc(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.5 * x);
    let poly = -1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    t * (-x * x + poly).exp()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::tests::Noise;

    const PARAMS: CalibrationParams = CalibrationParams {
        tail_fraction: 0.02,
        prior_weight: 20.0,
        min_history: 30.0,
        decay: 1e-4,
    };

    #[test]
    fn erfc_and_normal_tail_match_known_values() {
        for (x, expected) in [
            (0.0, 1.0),
            (0.5, 0.479_500_122),
            (1.0, 0.157_299_207),
            (2.0, 0.004_677_735),
            (3.0, 2.209_05e-5),
        ] {
            assert!(((erfc(x) - expected) / expected).abs() < 2e-7, "erfc({x})");
        }
        assert!((normal_two_sided(2.575_829) - 0.01).abs() < 1e-8);
        assert!((normal_two_sided(-3.290_527) - 0.001).abs() < 1e-8);
        assert_eq!(normal_two_sided(f64::NAN), 1.0);
    }

    #[test]
    fn surprise_is_minus_log10_capped() {
        assert!((to_surprise(1e-3) - 3.0).abs() < 1e-12);
        assert_eq!(to_surprise(1.0), 0.0);
        assert_eq!(to_surprise(0.0), MAX_SURPRISE);
        assert_eq!(to_surprise(f64::NAN), 0.0);
    }

    #[test]
    fn a_short_history_is_judged_by_the_prior() {
        let mut c = TailCalibrator::default();
        for _ in 0..10 {
            c.observe(&PARAMS, 0.5, 0.6, true);
        }
        assert_eq!(c.tail_probability(&PARAMS, 4.0, 1e-4), 1e-4);
    }

    #[test]
    fn gaussian_history_keeps_gaussian_tails() {
        let mut c = TailCalibrator::default();
        let mut noise = Noise::new(1);
        for _ in 0..20_000 {
            let z = noise.normal();
            c.observe(&PARAMS, z.abs(), normal_two_sided(z), true);
        }
        for z in [2.5f64, 3.0, 3.5] {
            let learned = c.tail_probability(&PARAMS, z, normal_two_sided(z));
            let ratio = learned / normal_two_sided(z);
            assert!(
                (0.5..3.0).contains(&ratio),
                "|z| {z}: {learned} vs Gaussian"
            );
        }
    }

    #[test]
    fn heavy_tails_are_learned_and_history_is_never_contradicted() {
        // 1% of the points are 20 sd spikes: the series' own normal.
        let mut c = TailCalibrator::default();
        let mut noise = Noise::new(2);
        for i in 0..5_000 {
            let t = if i % 100 == 0 {
                20.0
            } else {
                noise.normal().abs()
            };
            c.observe(&PARAMS, t, normal_two_sided(t), true);
        }
        let p = c.tail_probability(&PARAMS, 20.0, normal_two_sided(20.0));
        assert!(p >= 0.005, "a recurring spike is not rare: p {p}");
        let p_bigger = c.tail_probability(&PARAMS, 60.0, normal_two_sided(60.0));
        assert!(
            p_bigger < p / 10.0,
            "beyond anything seen is rarer: {p_bigger}"
        );
    }

    #[test]
    fn counts_decay_and_stay_finite() {
        let params = CalibrationParams {
            decay: 1e-2,
            ..PARAMS
        };
        let mut c = TailCalibrator::default();
        for _ in 0..200_000 {
            c.observe(&params, 1.0, 0.3, true);
        }
        let n = c.total / c.unit;
        assert!((90.0..=101.0).contains(&n), "effective history {n}");
        assert!(c.counts.iter().all(|v| v.is_finite()));
    }
}
