//! The expected value of a series and the size of its usual deviations.
//!
//! Two forecasters run side by side and the one that has been predicting better wins:
//! - *flat*: an EWMA level, for series without a daily rhythm;
//! - *daily*: a slow level plus a time-of-day profile (deviation from the level and the
//!   usual absolute error, per bin of the day, UTC), for traffic that follows the clock.
//!   The profile has at most [`MAX_DAY_BINS`] bins (30 minutes each), fewer when the series
//!   is sampled more coarsely, and is used only after a full day has been seen.
//!
//! Updates are robust: a residual is clipped at `clip` usual deviations before it moves a
//! level, a profile bin or a scale, so one outage does not teach the baseline that outages
//! are normal. Counts (series whose values have all been non-negative integers) get a
//! Poisson floor under their deviation: 5, 5, 5 then 7 is not a surprise.
//!
//! The clipped scale of a series that sits flat between bursts (0, 0, …, 0, 9.9, 0, …)
//! shrinks towards 0: clipped bursts are too rare to hold it up. Then every burst has a
//! z-score larger than the last (10^6, 10^7, …) and is never recognised as the series'
//! habit. The deviation is therefore never taken below [`SPREAD_FLOOR`] of the spread, a
//! mean absolute residual that bursts do hold up (clipped only at [`SPREAD_CLIP`] spreads):
//! a bound that a series with any steady noise never reaches.

use serde::{Deserialize, Serialize};

use crate::model::EpochMs;

const DAY_MS: EpochMs = 86_400_000;
/// Time-of-day resolution of the daily profile.
pub const MAX_DAY_BINS: usize = 48;
/// Mean absolute deviation × this = standard deviation, for Gaussian noise.
const MAD_TO_SIGMA: f64 = 1.2533;
/// The daily forecaster must beat the flat one by this factor (mean absolute error) to
/// be used: a profile learned on noise must not win by luck.
const DAILY_MUST_BEAT: f64 = 0.8;
/// Weight of the newest error in each forecaster's running mean absolute error.
const ERROR_ALPHA: f64 = 0.01;
/// Weight of a new day's value in a profile bin (per visit of one day).
const PROFILE_ALPHA: f64 = 0.3;
/// The level under the daily profile moves this much slower than the flat level.
const DAILY_LEVEL_SLOWDOWN: f64 = 0.2;
/// Weight of the newest step in the running (geometric) mean step.
const STEP_ALPHA: f64 = 0.05;
/// Points before the sampling step is trusted enough to size the daily profile.
const STEP_SAMPLES: u32 = 8;
/// The usual deviation is at least this fraction of the spread (the mean absolute residual,
/// bursts included).
const SPREAD_FLOOR: f64 = 1e-3;
/// A residual counts in the spread as at most this many spreads: bursts of any size hold
/// the spread up, but one absurd outlier cannot raise it more than tenfold (with
/// `scale_alpha` 0.01), which leaves the floor far below a noisy series' usual deviation.
const SPREAD_CLIP: f64 = 1e3;

/// Tuning of the baseline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BaselineParams {
    /// Weight of the newest point in the flat level.
    pub level_alpha: f64,
    /// Weight of the newest absolute residual in the scales.
    pub scale_alpha: f64,
    /// Residuals are clipped at this many deviations before updating anything.
    pub clip: f64,
}

/// What the baseline expects of the next point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    pub expected: f64,
    /// Usual size of a deviation (a standard deviation), never 0.
    pub sigma: f64,
    /// The daily profile made this prediction.
    pub daily: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct DailyProfile {
    /// Bins in use (≤ [`MAX_DAY_BINS`]): fewer when a day has fewer points.
    bins: usize,
    /// Deviation of each time-of-day bin from the level.
    #[serde(with = "crate::serde_array")]
    deviation: [f32; MAX_DAY_BINS],
    /// Mean absolute residual of each bin.
    #[serde(with = "crate::serde_array")]
    scale: [f32; MAX_DAY_BINS],
    /// Bit `i`: bin `i` has been visited (its first value initialises it).
    seen: u64,
    /// Weight of one point in its bin: [`PROFILE_ALPHA`] spread over the points a bin
    /// receives per day.
    alpha: f64,
    level: f64,
    /// Mean absolute residual over all bins.
    scale_all: f64,
    /// Running mean absolute error of this forecaster.
    error: f64,
}

impl DailyProfile {
    fn new(step_ms: EpochMs, level: f64, scale: f64) -> Self {
        let points_per_day = (DAY_MS / step_ms.max(1)).max(1) as usize;
        let bins = points_per_day.clamp(4, MAX_DAY_BINS);
        let points_per_bin = (points_per_day as f64 / bins as f64).max(1.0);
        DailyProfile {
            bins,
            deviation: [0.0; MAX_DAY_BINS],
            scale: [0.0; MAX_DAY_BINS],
            seen: 0,
            alpha: 1.0 - (1.0 - PROFILE_ALPHA).powf(1.0 / points_per_bin),
            level,
            scale_all: scale,
            error: 0.0,
        }
    }

    fn bin(&self, ts: EpochMs) -> usize {
        (ts.rem_euclid(DAY_MS) * self.bins as i64 / DAY_MS) as usize
    }

    fn seen(&self, bin: usize) -> bool {
        self.seen & (1 << bin) != 0
    }
}

/// The baseline of one series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    points: u32,
    first_ts: EpochMs,
    last_ts: EpochMs,
    /// Typical time between points: geometric running mean of the positive steps
    /// (irregular sampling and gaps move it little).
    log_step: f64,
    level: f64,
    scale: f64,
    /// Mean absolute residual against the flat level, clipped only at [`SPREAD_CLIP`]
    /// spreads (bursts included).
    spread: f64,
    flat_error: f64,
    counts: bool,
    daily: Option<DailyProfile>,
}

impl Baseline {
    /// A baseline whose first point is `value` at `ts`.
    pub fn new(ts: EpochMs, value: f64) -> Self {
        Baseline {
            points: 1,
            first_ts: ts,
            last_ts: ts,
            log_step: f64::NAN,
            level: value,
            scale: 0.0,
            spread: 0.0,
            flat_error: 0.0,
            counts: is_count(value),
            daily: None,
        }
    }

    /// The forecast for a point at `ts`.
    pub fn predict(&self, ts: EpochMs) -> Prediction {
        let (expected, scale, daily) = match &self.daily {
            Some(profile) => {
                let bin = profile.bin(ts);
                let use_daily = ts - self.first_ts >= DAY_MS
                    && profile.seen(bin)
                    && profile.error < DAILY_MUST_BEAT * self.flat_error;
                if use_daily {
                    // A bin's own scale, but not much below the overall one: a bin learns
                    // from few points.
                    let scale = f64::from(profile.scale[bin]).max(0.3 * profile.scale_all);
                    (
                        profile.level + f64::from(profile.deviation[bin]),
                        scale,
                        true,
                    )
                } else {
                    (self.level, self.scale, false)
                }
            }
            None => (self.level, self.scale, false),
        };
        Prediction {
            expected,
            sigma: self
                .sigma_floor(expected)
                .max(scale.max(SPREAD_FLOOR * self.spread) * MAD_TO_SIGMA),
            daily,
        }
    }

    /// The smallest deviation that can be surprising: Poisson noise for counts, else a
    /// relative epsilon (a perfectly flat series still has a finite z for any change).
    pub fn sigma_floor(&self, expected: f64) -> f64 {
        if self.counts {
            (expected.max(0.0) + 1.0).sqrt()
        } else {
            1e-9 + 1e-6 * expected.abs()
        }
    }

    /// Learns the point `value` at `ts`.
    pub fn update(&mut self, params: &BaselineParams, ts: EpochMs, value: f64) {
        self.counts &= is_count(value);
        if ts > self.last_ts {
            let log_step = ((ts - self.last_ts) as f64).ln();
            self.log_step = if self.log_step.is_nan() {
                log_step
            } else {
                self.log_step + STEP_ALPHA * (log_step - self.log_step)
            };
        }
        self.last_ts = self.last_ts.max(ts);
        let seen_a_day = ts - self.first_ts >= DAY_MS;

        let flat_residual = value - self.level;
        let flat_clipped = clip(flat_residual, params.clip * self.scale * MAD_TO_SIGMA);
        self.level += params.level_alpha * flat_clipped;
        // The first points set the scale quickly (running mean), then it is exponential.
        let scale_alpha = params.scale_alpha.max(1.0 / f64::from(self.points));
        self.scale += scale_alpha * (flat_clipped.abs() - self.scale);
        let spread_clipped = clip(flat_residual, SPREAD_CLIP * self.spread);
        self.spread += scale_alpha * (spread_clipped.abs() - self.spread);

        if self.daily.is_none() && self.points >= STEP_SAMPLES {
            self.daily = Some(DailyProfile::new(self.step_ms(), self.level, self.scale));
        }
        if let Some(profile) = &mut self.daily {
            let bin = profile.bin(ts);
            let deviation = if profile.seen(bin) {
                f64::from(profile.deviation[bin])
            } else {
                0.0
            };
            let residual = value - profile.level - deviation;
            if seen_a_day && profile.seen(bin) {
                profile.error += ERROR_ALPHA * (residual.abs() - profile.error);
                self.flat_error += ERROR_ALPHA * (flat_residual.abs() - self.flat_error);
            }
            let clipped = clip(residual, params.clip * profile.scale_all * MAD_TO_SIGMA);
            profile.level += params.level_alpha * DAILY_LEVEL_SLOWDOWN * clipped;
            if profile.seen(bin) {
                let a = profile.alpha;
                profile.deviation[bin] += (a * clipped) as f32;
                profile.scale[bin] += (a * (clipped.abs() - f64::from(profile.scale[bin]))) as f32;
            } else {
                profile.deviation[bin] = (value - profile.level) as f32;
                profile.scale[bin] = profile.scale_all as f32;
                profile.seen |= 1 << bin;
            }
            profile.scale_all += scale_alpha * (clipped.abs() - profile.scale_all);
        }
        self.points = self.points.saturating_add(1);
    }

    /// Typical time between points (0 until two timestamps have been seen).
    fn step_ms(&self) -> EpochMs {
        if self.log_step.is_nan() {
            0
        } else {
            self.log_step.exp().round() as EpochMs
        }
    }
}

/// `x` clipped to `±limit`; unclipped while `limit` is 0 (nothing learned yet).
fn clip(x: f64, limit: f64) -> f64 {
    if limit > 0.0 {
        x.clamp(-limit, limit)
    } else {
        x
    }
}

fn is_count(value: f64) -> bool {
    value >= 0.0 && value.fract() == 0.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::tests::Noise;

    const PARAMS: BaselineParams = BaselineParams {
        level_alpha: 0.05,
        scale_alpha: 0.01,
        clip: 4.0,
    };
    const FIVE_MINUTES: EpochMs = 300_000;

    #[test]
    fn counts_get_a_poisson_floor_and_other_series_do_not() {
        let mut counts = Baseline::new(0, 5.0);
        let mut levels = Baseline::new(0, 5.5);
        for i in 1..50 {
            counts.update(&PARAMS, i * FIVE_MINUTES, 5.0);
            levels.update(&PARAMS, i * FIVE_MINUTES, 5.5);
        }
        let p = counts.predict(50 * FIVE_MINUTES);
        assert_eq!(p.expected, 5.0);
        assert!((p.sigma - 6f64.sqrt()).abs() < 1e-12, "{p:?}");
        assert!(levels.predict(50 * FIVE_MINUTES).sigma < 1e-5);
    }

    #[test]
    fn an_outlier_moves_the_level_by_at_most_clip_deviations() {
        let mut b = Baseline::new(0, 100.0);
        let mut noise = Noise::new(4);
        for i in 1..500 {
            b.update(&PARAMS, i * FIVE_MINUTES, 100.0 + noise.normal());
        }
        let before = b.predict(500 * FIVE_MINUTES);
        b.update(&PARAMS, 500 * FIVE_MINUTES, 1e6);
        let after = b.predict(501 * FIVE_MINUTES);
        let moved = after.expected - before.expected;
        assert!(
            moved <= PARAMS.level_alpha * PARAMS.clip * before.sigma * 1.01,
            "moved {moved}"
        );
        assert!(after.sigma < before.sigma * 1.2, "{before:?} -> {after:?}");
    }

    #[test]
    fn bursts_between_flat_stretches_keep_a_finite_deviation() {
        // 0 for 49 points, then a burst near 10: alone, the clipped scale shrinks to nothing.
        let mut b = Baseline::new(0, 0.0);
        for i in 1..5000 {
            let v = if i % 50 == 0 {
                9.5 + (i % 7) as f64 * 0.1
            } else {
                0.0
            };
            b.update(&PARAMS, i * FIVE_MINUTES, v);
        }
        let p = b.predict(5000 * FIVE_MINUTES);
        let z = (10.0 - p.expected) / p.sigma;
        assert!(z < 1e5, "a burst at z {z}: {p:?}");
    }

    #[test]
    fn a_daily_rhythm_is_learned_and_used() {
        let mut b = Baseline::new(0, 10.0);
        let mut noise = Noise::new(5);
        let value = |ts: EpochMs, noise: &mut Noise| {
            let hour = ts.rem_euclid(DAY_MS) / 3_600_000;
            (if (9..17).contains(&hour) { 80.0 } else { 10.0 }) + noise.normal()
        };
        let day_points = DAY_MS / FIVE_MINUTES;
        for i in 1..4 * day_points {
            let ts = i * FIVE_MINUTES;
            b.update(&PARAMS, ts, value(ts, &mut noise));
        }
        let noon = 4 * DAY_MS + 12 * 3_600_000;
        let p = b.predict(noon);
        assert!(p.daily, "{p:?}");
        assert!((p.expected - 80.0).abs() < 3.0, "{p:?}");
        assert!(p.sigma < 3.0, "{p:?}");
        let night = b.predict(4 * DAY_MS + 3 * 3_600_000);
        assert!((night.expected - 10.0).abs() < 3.0, "{night:?}");
    }

    #[test]
    fn noise_without_rhythm_keeps_the_flat_forecast() {
        let mut b = Baseline::new(0, 50.0);
        let mut noise = Noise::new(6);
        for i in 1..3 * DAY_MS / FIVE_MINUTES {
            b.update(&PARAMS, i * FIVE_MINUTES, 50.0 + 5.0 * noise.normal());
        }
        assert!(!b.predict(3 * DAY_MS).daily);
    }

    #[test]
    fn the_sampling_step_shrugs_off_gaps_and_jitter() {
        let mut b = Baseline::new(0, 1.0);
        let mut ts = 0;
        for i in 1..200 {
            ts += if i % 50 == 0 {
                12 * FIVE_MINUTES
            } else {
                FIVE_MINUTES + (i % 3) * 1000
            };
            b.update(&PARAMS, ts, 1.0);
        }
        let step = b.step_ms();
        assert!((280_000..340_000).contains(&step), "step {step}");
    }
}
