//! Per-series anomaly scores: an EWMA mean and variance of each series' per-window value,
//! and a two-sided normal tail confidence of how far the newest value is from the mean.
//!
//! `z = (x − mean) / sqrt(var + mean + 1)`. Most series are counts (posts per source,
//! errors per service), which are roughly Poisson: their variance is at least their mean.
//! The EWMA variance of a few quiet windows can be ~0 (5, 5, 5 → var 0), which would make
//! 5 → 7 look infinitely surprising; adding the mean puts the Poisson noise floor under the
//! variance, and the `+ 1` keeps a series whose mean is ~0 finite. The score is
//! `1 − erfc(|z| / √2)`: the probability that a normal deviate is closer to the mean than
//! `|z|`, so 0.99 ≈ |z| 2.58 and 0.999 ≈ |z| 3.29.

pub mod model;

use std::collections::{BTreeMap, HashMap};

use crate::config::AnomalyConfig;
use crate::model::EpochMs;

/// The `detector` name published with anomalies.
pub const DETECTOR_NAME: &str = "ewma-z";

/// One series' value in a closed window, scored.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesScore {
    pub series: String,
    pub observed: f64,
    /// The EWMA mean before this window.
    pub expected: f64,
    /// 0..1, higher is more anomalous.
    pub score: f64,
    /// Which component of the detector fired and why, for humans.
    pub explanation: String,
}

/// EWMA state of one series.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeriesDetector {
    mean: f64,
    variance: f64,
    windows_seen: u32,
    zero_streak: u32,
}

impl SeriesDetector {
    /// Feeds one window's value; returns `(expected, score)` once the series has been seen
    /// in `warmup_windows` windows before this one.
    pub fn observe(&mut self, value: f64, alpha: f64, warmup_windows: u32) -> Option<(f64, f64)> {
        let expected = self.mean;
        let scored = (self.windows_seen >= warmup_windows).then(|| {
            let z = (value - expected) / (self.variance + expected.max(0.0) + 1.0).sqrt();
            (expected, tail_confidence(z))
        });
        if self.windows_seen == 0 {
            self.mean = value;
        } else {
            // Incremental EWMA of mean and variance (West 1979 / Finch 2009).
            let diff = value - self.mean;
            let step = alpha * diff;
            self.mean += step;
            self.variance = (1.0 - alpha) * (self.variance + diff * step);
        }
        self.windows_seen = self.windows_seen.saturating_add(1);
        self.zero_streak = if value == 0.0 {
            self.zero_streak.saturating_add(1)
        } else {
            0
        };
        scored
    }
}

/// The detectors of all live series.
#[derive(Debug, Clone)]
pub struct AnomalyDetector {
    alpha: f64,
    warmup_windows: u32,
    forget_after_zero_windows: u32,
    /// Ordered, so that scores come out in a deterministic order.
    series: BTreeMap<String, SeriesDetector>,
}

impl AnomalyDetector {
    /// The config is assumed valid (the engine validates it).
    pub fn new(config: &AnomalyConfig) -> Self {
        AnomalyDetector {
            alpha: config.alpha,
            warmup_windows: config.warmup_windows,
            forget_after_zero_windows: config.forget_after_zero_windows,
            series: BTreeMap::new(),
        }
    }

    /// Feeds one closed window: each series in `values` observes its value, every known
    /// series absent from it observes 0 (a source that goes silent is an anomaly too).
    /// Returns the scores of the series past warmup, ordered by series name. Series that
    /// stayed 0 for `forget_after_zero_windows` windows are then forgotten.
    pub fn close_window(
        &mut self,
        _window_start: EpochMs,
        values: &HashMap<String, f64>,
    ) -> Vec<SeriesScore> {
        for series in values.keys() {
            if !self.series.contains_key(series) {
                self.series
                    .insert(series.clone(), SeriesDetector::default());
            }
        }
        let mut scores = Vec::new();
        for (series, detector) in &mut self.series {
            let observed = values.get(series).copied().unwrap_or(0.0);
            if let Some((expected, score)) =
                detector.observe(observed, self.alpha, self.warmup_windows)
            {
                scores.push(SeriesScore {
                    series: series.clone(),
                    observed,
                    expected,
                    score,
                    explanation: String::new(),
                });
            }
        }
        let forget_after = self.forget_after_zero_windows;
        self.series.retain(|_, d| d.zero_streak < forget_after);
        scores
    }

    /// Series currently tracked.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

/// Two-sided normal tail confidence of a z-score: `1 − erfc(|z| / √2)`, in 0..1.
pub fn tail_confidence(z: f64) -> f64 {
    if z.is_nan() {
        return 0.0;
    }
    (1.0 - erfc(z.abs() / std::f64::consts::SQRT_2)).clamp(0.0, 1.0)
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

    /// Deterministic Poisson-ish noise: a sum of 4 uniform draws from a fixed LCG, scaled
    /// to standard deviation sqrt(level).
    fn noisy_levels(level: f64, n: usize) -> Vec<f64> {
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut uniform = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| {
                let approx_normal =
                    ((0..4).map(|_| uniform()).sum::<f64>() - 2.0) / (4.0f64 / 12.0).sqrt();
                (level + approx_normal * level.sqrt()).round().max(0.0)
            })
            .collect()
    }

    fn config() -> AnomalyConfig {
        AnomalyConfig {
            alpha: 0.2,
            warmup_windows: 3,
            ..AnomalyConfig::default()
        }
    }

    fn values(items: &[(&str, f64)]) -> HashMap<String, f64> {
        items.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn erfc_matches_known_values() {
        for (x, expected) in [
            (0.0, 1.0),
            (0.5, 0.479_500_122),
            (1.0, 0.157_299_207),
            (2.0, 0.004_677_735),
            (3.0, 2.209_05e-5),
        ] {
            assert!(
                ((erfc(x) - expected) / expected).abs() < 2e-7,
                "erfc({x}) = {}",
                erfc(x)
            );
        }
        assert!((tail_confidence(2.575_829) - 0.99).abs() < 1e-6);
        assert!((tail_confidence(-3.290_527) - 0.999).abs() < 1e-6);
        assert_eq!(tail_confidence(f64::NAN), 0.0);
    }

    #[test]
    fn series_is_scored_only_after_warmup() {
        let mut d = SeriesDetector::default();
        for _ in 0..3 {
            assert_eq!(d.observe(10.0, 0.2, 3), None);
        }
        let (expected, score) = d.observe(10.0, 0.2, 3).unwrap();
        assert_eq!((expected, score), (10.0, 0.0));
    }

    #[test]
    fn big_spike_scores_high_and_noise_scores_low() {
        let mut d = SeriesDetector::default();
        let noise = noisy_levels(50.0, 400);
        let scores: Vec<f64> = noise
            .iter()
            .filter_map(|&x| d.observe(x, 0.2, 3))
            .map(|(_, s)| s)
            .collect();
        let loud = scores.iter().filter(|&&s| s >= 0.99).count();
        assert!(
            loud * 100 <= scores.len(),
            "{loud} of {} noise windows scored >= 0.99",
            scores.len()
        );
        let (expected, score) = d.observe(340.0, 0.2, 3).unwrap();
        assert!((40.0..60.0).contains(&expected), "expected {expected}");
        assert!(score >= 0.999, "spike scored {score}");
    }

    #[test]
    fn small_count_changes_are_not_over_scored() {
        let mut d = SeriesDetector::default();
        for _ in 0..10 {
            d.observe(2.0, 0.2, 3);
        }
        let (_, score) = d.observe(4.0, 0.2, 3).unwrap();
        assert!(score < 0.9, "2 → 4 scored {score}");
    }

    #[test]
    fn absent_series_observe_zero_and_are_eventually_forgotten() {
        let config = AnomalyConfig {
            forget_after_zero_windows: 5,
            ..config()
        };
        let mut detector = AnomalyDetector::new(&config);
        for _ in 0..6 {
            detector.close_window(
                0,
                &values(&[("posts.source=a", 100.0), ("posts.source=b", 20.0)]),
            );
        }
        let silent = detector.close_window(0, &values(&[("posts.source=b", 20.0)]));
        let names: Vec<_> = silent.iter().map(|s| s.series.as_str()).collect();
        assert_eq!(
            names,
            ["posts.source=a", "posts.source=b"],
            "sorted, gaps included"
        );
        assert_eq!(silent[0].observed, 0.0);
        assert!(
            silent[0].score >= 0.999,
            "a source going silent is noticed: {}",
            silent[0].score
        );
        assert!(silent[1].score < 0.5);
        for _ in 0..3 {
            detector.close_window(0, &values(&[("posts.source=b", 20.0)]));
        }
        assert_eq!(detector.len(), 2);
        detector.close_window(0, &values(&[("posts.source=b", 20.0)]));
        assert_eq!(detector.len(), 1, "five windows at 0: forgotten");
    }
}
