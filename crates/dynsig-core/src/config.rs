//! Settings of the pure pipeline, as serde structs with defaults. The service's TOML file
//! embeds [`EngineConfig`] (sections `[window]`, `[tokenizer]`, `[trends]`, `[anomaly]`,
//! `[alerts]`); unknown keys are rejected so that a typo names its field.

use serde::{Deserialize, Serialize};

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

impl Default for AlertConfig {
    fn default() -> Self {
        Self {
            anomaly_fire: 0.99,
            anomaly_resolve: 0.9,
            critical_score: 0.999,
        }
    }
}
