//! Per-series anomaly scores for the engine: one [`SeriesDetector`] per live series, fed
//! once per closed window.
//!
//! Files, one idea each:
//! - [`baseline`]: what a series is expected to do (level, daily profile, usual deviation);
//! - [`calibrate`]: how rare a statistic is *for this series* (learned tail, Gaussian prior);
//! - [`novelty`]: values outside the recent range, or never seen at this hour;
//! - [`series`]: the per-series detector combining them into a 0..1 score, with its
//!   refractory period. `dynsig backtest` runs exactly this code over CSV files (NAB).

pub mod baseline;
pub mod calibrate;
pub mod novelty;
pub mod series;

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;

pub use series::{Component, DetectorParams, Observation, SeriesDetector};

use serde::{Deserialize, Serialize};

use crate::config::AnomalyConfig;
use crate::model::EpochMs;
use baseline::BaselineParams;
use calibrate::CalibrationParams;

/// The `detector` name published with anomalies.
pub const DETECTOR_NAME: &str = "surprise-ensemble";

/// One series' value in a closed window, scored.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesScore {
    pub series: String,
    pub observed: f64,
    /// What the series' baseline expected for this window.
    pub expected: f64,
    /// 0..1, higher is more anomalous.
    pub score: f64,
    /// Which component of the detector fired and why, for humans.
    pub explanation: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Tracked {
    detector: SeriesDetector,
    /// Index of its settings in `AnomalyDetector::params`.
    params: usize,
    zero_streak: u32,
}

/// The detectors of all live series.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AnomalyDetector {
    /// The section's settings, then one per override prefix.
    params: Vec<DetectorParams>,
    /// Override prefixes, longest first, with their index in `params`.
    prefixes: Vec<(String, usize)>,
    warmup_windows: u32,
    forget_after_zero_windows: u32,
    /// Ordered, so that scores come out in a deterministic order.
    series: BTreeMap<String, Tracked>,
}

impl AnomalyDetector {
    /// The config is assumed valid (the engine validates it).
    pub fn new(config: &AnomalyConfig) -> Self {
        let mut params = vec![DetectorParams::from(config)];
        let mut prefixes = Vec::new();
        for (prefix, o) in &config.overrides {
            let mut p = params[0];
            if let Some(strictness) = o.strictness {
                p.strictness = strictness;
            }
            if let Some(windows) = o.refractory_windows {
                p.refractory_points = windows;
            }
            prefixes.push((prefix.clone(), params.len()));
            params.push(p);
        }
        prefixes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        AnomalyDetector {
            params,
            prefixes,
            warmup_windows: config.warmup_windows,
            forget_after_zero_windows: config.forget_after_zero_windows,
            series: BTreeMap::new(),
        }
    }

    /// Feeds one closed window: each series in `values` observes its value, every known
    /// series absent from it observes 0 (a source that goes silent is an anomaly too).
    /// Returns the scores of the series past warmup, ordered by series name. Series that
    /// stayed 0 for `forget_after_zero_windows` windows are then forgotten.
    pub fn close_window<S: BuildHasher>(
        &mut self,
        window_start: EpochMs,
        values: &HashMap<String, f64, S>,
    ) -> Vec<SeriesScore> {
        for series in values.keys() {
            if !self.series.contains_key(series) {
                let params = self
                    .prefixes
                    .iter()
                    .find(|(prefix, _)| series.starts_with(prefix.as_str()))
                    .map_or(0, |&(_, index)| index);
                self.series.insert(
                    series.clone(),
                    Tracked {
                        detector: SeriesDetector::default(),
                        params,
                        zero_streak: 0,
                    },
                );
            }
        }
        let mut scores = Vec::new();
        for (series, tracked) in &mut self.series {
            let observed = values.get(series).copied().unwrap_or(0.0);
            let seen_before = tracked.detector.points();
            let params = &self.params[tracked.params];
            let observation = tracked.detector.observe(params, window_start, observed);
            tracked.zero_streak = if observed == 0.0 {
                tracked.zero_streak.saturating_add(1)
            } else {
                0
            };
            if seen_before >= self.warmup_windows {
                scores.push(SeriesScore {
                    series: series.clone(),
                    observed,
                    expected: observation.expected,
                    score: observation.score,
                    explanation: explain(&observation),
                });
            }
        }
        let forget_after = self.forget_after_zero_windows;
        self.series.retain(|_, t| t.zero_streak < forget_after);
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

impl From<&AnomalyConfig> for DetectorParams {
    /// The service's settings; the rest are constants whose reasons are documented where
    /// they are used.
    fn from(config: &AnomalyConfig) -> Self {
        let horizon = config.horizon_windows;
        DetectorParams {
            baseline: BaselineParams {
                level_alpha: config.alpha,
                scale_alpha: 0.01,
                clip: 4.0,
            },
            calibration: CalibrationParams {
                tail_fraction: 0.02,
                prior_weight: 20.0,
                min_history: 30.0,
                decay: 1.0 / f64::from(horizon),
            },
            shift_alpha: config.shift_alpha,
            range_horizon: horizon,
            refractory_surprise: series::score_to_surprise(config.refractory_score),
            refractory_points: config.refractory_windows,
            strictness: config.strictness,
        }
    }
}

/// One line for humans: the component that scored and its evidence, e.g.
/// `spike: +12.3 sd from the recent level (p 1.2e-9)`.
fn explain(o: &Observation) -> String {
    let against = if o.daily {
        "the usual level for this time of day"
    } else {
        "the recent level"
    };
    let evidence = match o.component {
        Component::None => return String::new(),
        Component::Spike => format!("{:+.1} sd from {against}", o.z),
        Component::Shift => format!("sustained move away from {against}, {:+.1} sd now", o.z),
        Component::NewHigh => format!("above the recent range {:.4}..{:.4}", o.range.0, o.range.1),
        Component::NewLow => format!("below the recent range {:.4}..{:.4}", o.range.0, o.range.1),
        Component::TimeOfDay => "a level not seen at this hour before".to_owned(),
    };
    let name = o.component.as_str();
    let p = 10f64.powf(-o.surprise);
    if o.suppressed {
        format!(
            "{name}: {evidence} (p {p:.1e}); same event as a recent detection, \
             kept below the alert threshold"
        )
    } else {
        format!("{name}: {evidence} (p {p:.1e})")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::AnomalyOverride;
    use crate::rng::SplitMix64;

    /// Reproducible noise for the detector tests.
    pub(crate) struct Noise(SplitMix64);

    impl Noise {
        pub(crate) fn new(seed: u64) -> Self {
            Noise(SplitMix64(seed))
        }

        /// Uniform in [0, 1).
        pub(crate) fn unit(&mut self) -> f64 {
            self.0.unit()
        }

        /// Standard normal (Box–Muller).
        pub(crate) fn normal(&mut self) -> f64 {
            let u = self.0.unit().max(1e-300);
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * self.0.unit()).cos()
        }

        /// Poisson (Knuth's product of uniforms; normal approximation above 50).
        pub(crate) fn poisson(&mut self, mean: f64) -> f64 {
            if mean > 50.0 {
                return (mean + mean.sqrt() * self.normal()).round().max(0.0);
            }
            let limit = (-mean).exp();
            let mut product = self.0.unit();
            let mut k = 0.0;
            while product > limit {
                product *= self.0.unit();
                k += 1.0;
            }
            k
        }
    }

    const MINUTE: EpochMs = 60_000;

    fn values(items: &[(&str, f64)]) -> HashMap<String, f64> {
        items.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn absent_series_observe_zero_and_are_eventually_forgotten() {
        let config = AnomalyConfig {
            forget_after_zero_windows: 5,
            ..AnomalyConfig::default()
        };
        let mut detector = AnomalyDetector::new(&config);
        let mut noise = Noise::new(3);
        for w in 0..30 {
            let a = 100.0 + noise.poisson(4.0);
            let b = 20.0 + noise.poisson(1.0);
            detector.close_window(
                w * MINUTE,
                &values(&[("posts.source=a", a), ("posts.source=b", b)]),
            );
        }
        let silent = detector.close_window(30 * MINUTE, &values(&[("posts.source=b", 20.0)]));
        let names: Vec<_> = silent.iter().map(|s| s.series.as_str()).collect();
        assert_eq!(
            names,
            ["posts.source=a", "posts.source=b"],
            "sorted, gaps included"
        );
        assert_eq!(silent[0].observed, 0.0);
        assert!(
            silent[0].score >= 0.999,
            "a source going silent: {:?}",
            silent[0]
        );
        assert!(!silent[0].explanation.is_empty());
        assert!(silent[1].score < 0.9, "{:?}", silent[1]);
        for w in 31..34 {
            detector.close_window(w * MINUTE, &values(&[("posts.source=b", 20.0)]));
        }
        assert_eq!(detector.len(), 2);
        detector.close_window(34 * MINUTE, &values(&[("posts.source=b", 20.0)]));
        assert_eq!(detector.len(), 1, "five windows at 0: forgotten");
    }

    #[test]
    fn series_are_scored_only_after_warmup() {
        let mut detector = AnomalyDetector::new(&AnomalyConfig {
            warmup_windows: 3,
            ..AnomalyConfig::default()
        });
        let scored: Vec<usize> = (0..5)
            .map(|w| {
                detector
                    .close_window(w * MINUTE, &values(&[("events.kind=x", 10.0)]))
                    .len()
            })
            .collect();
        assert_eq!(scored, [0, 0, 0, 1, 1]);
    }

    #[test]
    fn the_longest_matching_override_applies() {
        let mut config = AnomalyConfig::default();
        config.overrides.insert(
            "events.kind=error".into(),
            AnomalyOverride {
                strictness: Some(2.0),
                refractory_windows: None,
            },
        );
        let mut detector = AnomalyDetector::new(&config);
        let mut last = Vec::new();
        for w in 0..60 {
            let spike = if w == 59 { 25.0 } else { 10.0 + (w % 3) as f64 };
            last = detector.close_window(
                w * MINUTE,
                &values(&[
                    ("events.kind=error,key=a", spike),
                    ("events.kind=ok,key=a", spike),
                    ("other", spike),
                ]),
            );
        }
        let surprise = |s: &SeriesScore| series::score_to_surprise(s.score);
        // strictness 0 for "other", 1 for "events." (the default), 2 for the error kind.
        assert!(
            (surprise(&last[2]) - surprise(&last[1]) - 1.0).abs() < 1e-6,
            "{last:#?}"
        );
        assert!(
            (surprise(&last[1]) - surprise(&last[0]) - 1.0).abs() < 1e-6,
            "{last:#?}"
        );
    }
}
