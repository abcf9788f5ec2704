//! Settings of the pure pipeline, as serde structs with defaults. The service's TOML file
//! embeds [`EngineConfig`] (sections `[window]`, `[tokenizer]`, `[trends]`, `[anomaly]`,
//! `[alerts]`); unknown keys are rejected so that a typo names its field.

use std::fmt::Display;

use serde::{Deserialize, Serialize};

use crate::co_mentions::CoMentionConfig;
use crate::feedback::FeedbackConfig;
use crate::metafilter::MetafilterConfig;
use crate::routing::RoutingConfig;

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
    pub metafilter: MetafilterConfig,
    /// Checked by [`crate::routing::Router::new`] (its errors name nested routes).
    pub routing: RoutingConfig,
    pub feedback: FeedbackConfig,
    pub co_mentions: CoMentionConfig,
}

impl EngineConfig {
    /// Checks every section but `routing`; the first setting out of range is named in
    /// the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.window.validate()?;
        self.trends.validate()?;
        self.anomaly.validate()?;
        self.alerts.validate()?;
        self.metafilter.validate()?;
        self.feedback.validate()?;
        self.co_mentions.validate()
    }
}

/// Event time: the windows, and how late or early an input may be.
///
/// The main window (`size_ms`, `hop_ms`) feeds trends, anomalies and alerts; `extra`
/// windows of other sizes over the same inputs publish their own trend snapshots and
/// anomalies (alerts come from the main window only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WindowConfig {
    /// Window length in milliseconds.
    pub size_ms: i64,
    /// A new window starts every `hop_ms` (hopping windows, overlapping); must divide
    /// `size_ms`. 0 means `size_ms` (tumbling windows).
    pub hop_ms: i64,
    /// More windows over the same inputs, e.g. 15-minute ones beside the 1-minute main.
    pub extra: Vec<ExtraWindow>,
    /// How far behind the newest event time the watermark trails: an event whose window
    /// has closed when it arrives is late.
    pub allowed_lateness_ms: i64,
    /// When no input arrives for this long (wall clock), the watermark advances with the
    /// wall clock so that the last windows still close. 0 disables it.
    pub idle_timeout_ms: i64,
    /// Inputs stamped further than this ahead of the wall clock are rejected with reason
    /// `future`: one event from a device with a wrong clock would otherwise push the
    /// watermark ahead and make everything else late. 0 disables the check. (A replay
    /// has no wall clock and does not check.)
    pub max_future_ms: i64,
    /// While a backlog is read, an input partition whose event time runs further than
    /// this ahead of the slowest partition with records waiting is paused until that one
    /// catches up (see `dynsig_core::alignment`): windows then close as the backlog is
    /// read instead of all staying open until its end. 0 disables it.
    pub max_partition_drift_ms: i64,
    /// `final`: one trend snapshot per window, when it closes. `updates`: also a
    /// snapshot of each open window every `update_every_ms` of event time, each with
    /// the next revision number; the closing one is marked final.
    pub emit: EmitMode,
    /// Event time between update snapshots (`emit = "updates"`).
    pub update_every_ms: i64,
}

/// When trend snapshots are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmitMode {
    Final,
    Updates,
}

/// The inputs a window counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Posts,
    Events,
}

/// A window beside the main one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraWindow {
    pub size_ms: i64,
    /// As `window.hop_ms`: 0 means tumbling.
    #[serde(default)]
    pub hop_ms: i64,
    /// Which inputs it counts (default both).
    #[serde(default = "all_streams")]
    pub streams: Vec<Stream>,
}

fn all_streams() -> Vec<Stream> {
    vec![Stream::Posts, Stream::Events]
}

/// The hop of a window: `hop_ms`, or its size when 0 (tumbling).
pub fn effective_hop(size_ms: i64, hop_ms: i64) -> i64 {
    if hop_ms == 0 {
        size_ms
    } else {
        hop_ms
    }
}

/// `1m`, `15m/5m` (size/hop when hopping): the name of a window in its signals.
pub fn window_name(size_ms: i64, hop_ms: i64) -> String {
    let hop = effective_hop(size_ms, hop_ms);
    if hop == size_ms {
        duration_name(size_ms)
    } else {
        format!("{}/{}", duration_name(size_ms), duration_name(hop))
    }
}

fn duration_name(ms: i64) -> String {
    match ms {
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

fn validate_window_shape(
    size_ms: i64,
    hop_ms: i64,
    size_field: &'static str,
    hop_field: &'static str,
) -> Result<(), ConfigError> {
    require(size_ms > 0, size_field, "> 0", size_ms)?;
    let hop = effective_hop(size_ms, hop_ms);
    require(
        hop > 0 && hop <= size_ms && size_ms % hop == 0,
        hop_field,
        &format!("0 or a positive divisor of {size_field} ({size_ms})"),
        hop_ms,
    )
}

impl WindowConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_window_shape(self.size_ms, self.hop_ms, "window.size_ms", "window.hop_ms")?;
        for extra in &self.extra {
            validate_window_shape(
                extra.size_ms,
                extra.hop_ms,
                "window.extra.size_ms",
                "window.extra.hop_ms",
            )?;
            require(
                !extra.streams.is_empty(),
                "window.extra.streams",
                "non-empty",
                "[]",
            )?;
        }
        let mut names: Vec<String> = std::iter::once((self.size_ms, self.hop_ms))
            .chain(self.extra.iter().map(|e| (e.size_ms, e.hop_ms)))
            .map(|(size, hop)| window_name(size, hop))
            .collect();
        names.sort();
        let duplicate = names.windows(2).find(|pair| pair[0] == pair[1]);
        require(
            duplicate.is_none(),
            "window.extra",
            "windows of distinct sizes or hops",
            duplicate.map_or(String::new(), |pair| format!("two {}", pair[0])),
        )?;
        for (value, field) in [
            (self.allowed_lateness_ms, "window.allowed_lateness_ms"),
            (self.idle_timeout_ms, "window.idle_timeout_ms"),
            (self.max_future_ms, "window.max_future_ms"),
            (self.max_partition_drift_ms, "window.max_partition_drift_ms"),
        ] {
            require(value >= 0, field, ">= 0", value)?;
        }
        require(
            self.emit == EmitMode::Final || self.update_every_ms > 0,
            "window.update_every_ms",
            "> 0 when emit = \"updates\"",
            self.update_every_ms,
        )
    }
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            size_ms: 60_000,
            hop_ms: 0,
            extra: Vec::new(),
            allowed_lateness_ms: 5_000,
            idle_timeout_ms: 10_000,
            max_future_ms: 300_000,
            max_partition_drift_ms: 60_000,
            emit: EmitMode::Final,
            update_every_ms: 10_000,
        }
    }
}

/// How text becomes terms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenizerConfig {
    /// `words`: lowercase words, tags, stopwords dropped, URLs skipped (see
    /// [`crate::tokenizer`]). `whitespace`: every whitespace-separated token as it is
    /// (a tag when it starts with `#`, `$` or `@`); no stopwords, no lowercasing.
    pub mode: TokenizerMode,
    /// Built-in stopword lists to apply: any of "en", "fr". Empty for none.
    pub stopwords: Vec<String>,
    /// More words to ignore (compared after lowercasing).
    pub extra_stopwords: Vec<String>,
    /// Words shorter than this many characters are dropped (tags are kept whatever their length).
    pub min_word_chars: usize,
    /// Also count each pair of consecutive words (`battery fire`) as a term.
    pub bigrams: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerMode {
    Words,
    Whitespace,
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        Self {
            mode: TokenizerMode::Words,
            stopwords: vec!["en".into(), "fr".into()],
            extra_stopwords: Vec::new(),
            min_word_chars: 2,
            bigrams: true,
        }
    }
}

/// The trend detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrendConfig {
    /// Entries per snapshot.
    pub top_k: usize,
    /// `score`: by trend score (count against the term's baseline), then count.
    /// `count`: by count (a plain top-k of the window), then term.
    pub rank_by: RankBy,
    /// Learn a baseline per term and score windows against it. `false` (only with
    /// `rank_by = "count"`) makes the detector a plain top-k: no per-term state beyond the
    /// previous window's counts, entries scored 0 with the previous window's count as
    /// their baseline and status, and so no trend alerts.
    pub baselines: bool,
    /// A term needs at least this many occurrences in a window to be ranked.
    pub min_count: u64,
    /// A term needs at least this many distinct authors in a window to be ranked.
    pub min_authors: u64,
    /// Posts per author that count toward a term's score in a window: 1 scores distinct
    /// authors, so that one account cannot make a trend. 0 scores raw occurrences and
    /// skips counting authors.
    pub author_cap: u64,
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
    /// Distinct terms counted exactly per window; beyond, a SpaceSaving sketch keeps the
    /// heaviest (each count overestimated by at most posts' terms / capacity, reported
    /// as `count_error`). Bounds the memory of a window.
    pub max_terms_per_window: usize,
    /// Term baselines kept at most; beyond, the lowest levels are forgotten first.
    pub max_baselines: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RankBy {
    Score,
    Count,
}

impl TrendConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        require(
            self.baselines || self.rank_by == RankBy::Count,
            "trends.baselines",
            "true unless rank_by = \"count\" (scores need baselines)",
            self.baselines,
        )?;
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
        )?;
        require(
            (1..=crate::heavy_hitters::MAX_CAPACITY).contains(&self.max_terms_per_window),
            "trends.max_terms_per_window",
            &format!("in 1..={}", crate::heavy_hitters::MAX_CAPACITY),
            self.max_terms_per_window,
        )?;
        require(
            self.max_baselines > 0,
            "trends.max_baselines",
            "> 0",
            self.max_baselines,
        )
    }
}

impl Default for TrendConfig {
    fn default() -> Self {
        Self {
            top_k: 20,
            rank_by: RankBy::Score,
            baselines: true,
            min_count: 5,
            min_authors: 3,
            author_cap: 1,
            baseline_alpha: 0.3,
            new_term_prior: 1.0,
            alert_score: 8.0,
            warmup_windows: 2,
            max_terms_per_window: 200_000,
            max_baselines: 1_000_000,
        }
    }
}

/// The per-series anomaly detector (see `anomaly`): a baseline with a daily profile, a
/// spike, a shift, a range-novelty and a time-of-day test, each calibrated on the series'
/// own history, and a refractory period after each detection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnomalyConfig {
    /// Weight of the newest window in each series' level (0..1]: 0.05 follows a level
    /// change within ~20 windows.
    pub alpha: f64,
    /// Weight of the newest window in the shift statistic (0..1]: smaller waits for more
    /// evidence of a sustained move, larger reacts faster.
    pub shift_alpha: f64,
    /// Windows a series must have been seen in before it is scored.
    pub warmup_windows: u32,
    /// Windows the range and the calibration of each series remember (older ones fade).
    pub horizon_windows: u32,
    /// After a window scores at least `refractory_score`, later windows of that series are
    /// capped just below it unless far more surprising (p cubed at first, the requirement
    /// relaxing exponentially towards the plain threshold with a time constant of 10
    /// windows, so a big detection holds longer than a borderline one): one event makes one
    /// detection, and its alert keeps firing while it lasts. This is the longest such
    /// period.
    pub refractory_windows: u32,
    /// Keep equal to `alerts.anomaly_fire` (0..1).
    pub refractory_score: f64,
    /// Extra evidence required of every window, in decades of probability: 1.0 asks for
    /// events ten times rarer than the NAB-tuned default (0). See `overrides`.
    pub strictness: f64,
    /// Settings for the series whose name starts with a prefix (`posts.`, `events.`,
    /// `terms.`, or longer like `events.kind=error`); the longest matching prefix wins,
    /// unset keys keep the values above.
    pub overrides: std::collections::BTreeMap<String, AnomalyOverride>,
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
            is_weight(self.shift_alpha),
            "anomaly.shift_alpha",
            "in (0, 1]",
            self.shift_alpha,
        )?;
        require(
            self.horizon_windows >= 8,
            "anomaly.horizon_windows",
            ">= 8",
            self.horizon_windows,
        )?;
        require(
            is_unit(self.refractory_score),
            "anomaly.refractory_score",
            "in [0, 1]",
            self.refractory_score,
        )?;
        require(
            is_strictness(self.strictness),
            "anomaly.strictness",
            "finite and >= 0",
            self.strictness,
        )?;
        for (prefix, o) in &self.overrides {
            if let Some(strictness) = o.strictness {
                require(
                    is_strictness(strictness),
                    "anomaly.overrides.strictness",
                    &format!("finite and >= 0 (prefix {prefix:?})"),
                    strictness,
                )?;
            }
        }
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
            alpha: 0.05,
            shift_alpha: 0.05,
            warmup_windows: 3,
            horizon_windows: 20_000,
            refractory_windows: 100,
            refractory_score: 0.9902,
            strictness: 0.0,
            // The service's own series: many healthy streams watched at once, where an
            // anomaly is far rarer than in NAB's hand-picked series; one decade more
            // evidence keeps a steady count stream to about one false alert in five days
            // (benches/RESULTS.md).
            overrides: ["actors.", "events.", "posts.", "terms."]
                .into_iter()
                .map(|prefix| {
                    let o = AnomalyOverride {
                        strictness: Some(1.0),
                        refractory_windows: None,
                    };
                    (prefix.to_owned(), o)
                })
                .collect(),
            watch_terms: Vec::new(),
            publish_score: 0.95,
            forget_after_zero_windows: 60,
        }
    }
}

/// Per-prefix settings of [`AnomalyConfig`]; unset keys keep the section's values.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnomalyOverride {
    pub strictness: Option<f64>,
    pub refractory_windows: Option<u32>,
}

fn is_strictness(x: f64) -> bool {
    x.is_finite() && x >= 0.0
}

/// When signals become alerts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertConfig {
    /// An anomaly score at or above this fires the series' alert. The default is the
    /// threshold that maximises the NAB standard profile (benches/RESULTS.md).
    pub anomaly_fire: f64,
    /// A firing anomaly alert resolves when the score falls below this (hysteresis).
    pub anomaly_resolve: f64,
    /// Anomaly scores at or above this make the alert critical (else warning).
    pub critical_score: f64,
    /// How long (event time) a condition must hold before its alert fires; meanwhile it
    /// is pending. 0 fires at the first window.
    pub for_ms: i64,
    /// A firing alert does not resolve before it has fired this long (no flapping).
    pub min_firing_ms: i64,
    /// At most one `updated` message per alert per this interval (severity rises are
    /// sent at once).
    pub update_interval_ms: i64,
    /// After resolving, the same alert cannot fire again for this long.
    pub cooldown_ms: i64,
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
        )?;
        for (field, value) in [
            ("alerts.for_ms", self.for_ms),
            ("alerts.min_firing_ms", self.min_firing_ms),
            ("alerts.update_interval_ms", self.update_interval_ms),
            ("alerts.cooldown_ms", self.cooldown_ms),
        ] {
            require(value >= 0, field, ">= 0", value)?;
        }
        Ok(())
    }
}

impl Default for AlertConfig {
    fn default() -> Self {
        Self {
            anomaly_fire: 0.9902,
            anomaly_resolve: 0.9,
            critical_score: 0.999,
            for_ms: 0,
            min_firing_ms: 60_000,
            update_interval_ms: 300_000,
            cooldown_ms: 120_000,
        }
    }
}
