//! Settings of the pure pipeline, as serde structs with defaults. The service's TOML file
//! embeds [`EngineConfig`] (sections `[window]`, `[tokenizer]`, `[trends]`, `[anomaly]`,
//! `[alerts]`); unknown keys are rejected so that a typo names its field.

use std::fmt::Display;

use serde::{Deserialize, Serialize};

/// A setting out of its range; `field` is its dotted path, e.g. `window.size_ms`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field} {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: String,
}

/// `Ok` when `ok`, else an error saying what `field` must be and what it is.
pub fn require(
    ok: bool,
    field: &'static str,
    requirement: &str,
    value: impl Display,
) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError {
            field,
            reason: format!("must be {requirement}, got {value}"),
        })
    }
}

fn is_unit(x: f64) -> bool {
    (0.0..=1.0).contains(&x)
}

/// A smoothing weight: in (0, 1].
fn is_weight(x: f64) -> bool {
    x > 0.0 && x <= 1.0
}

/// All settings of [`crate::engine::Engine`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    pub window: WindowConfig,
    pub tokenizer: TokenizerConfig,
    pub trends: TrendConfig,
    pub anomaly: AnomalyConfig,
    pub alerts: AlertConfig,
}

impl EngineConfig {
    /// Checks every section; the first setting out of range is named in the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.window.validate()?;
        self.trends.validate()?;
        self.anomaly.validate()?;
        self.alerts.validate()
    }
}

/// Event-time tumbling windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WindowConfig {
    /// Window length in milliseconds.
    pub size_ms: i64,
    /// How far behind the newest event time the watermark trails: an event older than
    /// the watermark when it arrives is late.
    pub allowed_lateness_ms: i64,
    /// When no input arrives for this long (wall clock), the watermark advances with the
    /// wall clock so that the last windows still close. 0 disables it.
    pub idle_timeout_ms: i64,
}

impl WindowConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        require(self.size_ms > 0, "window.size_ms", "> 0", self.size_ms)?;
        require(
            self.allowed_lateness_ms >= 0,
            "window.allowed_lateness_ms",
            ">= 0",
            self.allowed_lateness_ms,
        )?;
        require(
            self.idle_timeout_ms >= 0,
            "window.idle_timeout_ms",
            ">= 0",
            self.idle_timeout_ms,
        )
    }
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            size_ms: 60_000,
            allowed_lateness_ms: 5_000,
            idle_timeout_ms: 10_000,
        }
    }
}

/// How text becomes terms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenizerConfig {
    /// Built-in stopword lists to apply: any of "en", "fr". Empty for none.
    pub stopwords: Vec<String>,
    /// More words to ignore (compared after lowercasing).
    pub extra_stopwords: Vec<String>,
    /// Words shorter than this many characters are dropped (tags are kept whatever their length).
    pub min_word_chars: usize,
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        Self {
            stopwords: vec!["en".into(), "fr".into()],
            extra_stopwords: Vec::new(),
            min_word_chars: 2,
        }
    }
}

/// The trend detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrendConfig {
    /// Entries per snapshot.
    pub top_k: usize,
    /// A term needs at least this many occurrences in a window to be ranked.
    pub min_count: u64,
    /// Weight of the newest window in each term's EWMA baseline (0..1].
    pub baseline_alpha: f64,
    /// Baseline assumed for a term never seen before (counts per window).
    pub new_term_prior: f64,
    /// A trend entry at or above this score fires a trend alert.
    pub alert_score: f64,
    /// Windows closed before trends are ranked. Meanwhile baselines are learned, with new
    /// terms starting at their count: at startup every term is new, and ranking them all
    /// against `new_term_prior` would report the whole vocabulary as trending.
    pub warmup_windows: u32,
}

impl TrendConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        require(
            is_weight(self.baseline_alpha),
            "trends.baseline_alpha",
            "in (0, 1]",
            self.baseline_alpha,
        )?;
        let prior = self.new_term_prior;
        require(
            prior.is_finite() && prior >= 0.0,
            "trends.new_term_prior",
            "finite and >= 0",
            prior,
        )?;
        let alert_score = self.alert_score;
        require(
            alert_score.is_finite() && alert_score > 0.0,
            "trends.alert_score",
            "finite and > 0",
            alert_score,
        )
    }
}

impl Default for TrendConfig {
    fn default() -> Self {
        Self {
            top_k: 20,
            min_count: 5,
            baseline_alpha: 0.3,
            new_term_prior: 1.0,
            alert_score: 8.0,
            warmup_windows: 2,
        }
    }
}

/// The per-series anomaly detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnomalyConfig {
    /// Weight of the newest window in each series' EWMA mean and variance (0..1].
    pub alpha: f64,
    /// Windows a series must have been seen in before it is scored.
    pub warmup_windows: u32,
    /// Terms (as written in text: `acme`, `#outage`, `@acme`, `$acme`) whose per-window
    /// counts are watched as series `terms.term=<term>`.
    pub watch_terms: Vec<String>,
    /// Scored series at or above this score are published as anomaly signals (0..1).
    pub publish_score: f64,
    /// A series that stayed at 0 for this many consecutive closed windows is forgotten,
    /// so memory follows the series that are alive.
    pub forget_after_zero_windows: u32,
}

impl AnomalyConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        require(
            is_weight(self.alpha),
            "anomaly.alpha",
            "in (0, 1]",
            self.alpha,
        )?;
        require(
            is_unit(self.publish_score),
            "anomaly.publish_score",
            "in [0, 1]",
            self.publish_score,
        )?;
        let forget = self.forget_after_zero_windows;
        require(
            forget > 0,
            "anomaly.forget_after_zero_windows",
            "> 0",
            forget,
        )
    }
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        Self {
            alpha: 0.2,
            warmup_windows: 3,
            watch_terms: Vec::new(),
            publish_score: 0.95,
            forget_after_zero_windows: 60,
        }
    }
}

/// When signals become alerts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertConfig {
    /// An anomaly score at or above this fires the series' alert.
    pub anomaly_fire: f64,
    /// A firing anomaly alert resolves when the score falls below this (hysteresis).
    pub anomaly_resolve: f64,
    /// Anomaly scores at or above this make the alert critical (else warning).
    pub critical_score: f64,
}

impl AlertConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        require(
            is_unit(self.anomaly_fire),
            "alerts.anomaly_fire",
            "in [0, 1]",
            self.anomaly_fire,
        )?;
        let resolve = self.anomaly_resolve;
        require(
            resolve >= 0.0 && resolve <= self.anomaly_fire,
            "alerts.anomaly_resolve",
            "in [0, anomaly_fire]",
            resolve,
        )?;
        require(
            is_unit(self.critical_score),
            "alerts.critical_score",
            "in [0, 1]",
            self.critical_score,
        )
    }
}

impl Default for AlertConfig {
    fn default() -> Self {
        Self {
            anomaly_fire: 0.99,
            anomaly_resolve: 0.9,
            critical_score: 0.999,
        }
    }
}
