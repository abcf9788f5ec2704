//! The event model: what flows into the engine ([`Input`]) and out of it ([`Signal`]).
//!
//! These types mirror `proto/dynsig/v1/*.proto` field for field; their serde form is the
//! JSON encoding of the topics (enum values in lower case).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::co_mentions::CoMentionGraph;
use crate::metafilter::budget::Digest;
use crate::metafilter::group::Notification;

/// Event time or wall time, in milliseconds since the Unix epoch.
pub type EpochMs = i64;

/// A social post (topic `posts`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Post {
    pub id: String,
    pub ts: EpochMs,
    pub source: String,
    pub author: String,
    pub text: String,
    pub lang: String,
    pub url: String,
    pub metadata: BTreeMap<String, String>,
}

/// An internal event of the company (topic `events`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct InternalEvent {
    pub id: String,
    pub ts: EpochMs,
    pub source: String,
    pub kind: String,
    pub key: String,
    pub value: f64,
    pub attributes: BTreeMap<String, String>,
}

/// One validated input record.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Post(Post),
    Event(InternalEvent),
}

impl Input {
    pub fn ts(&self) -> EpochMs {
        match self {
            Input::Post(p) => p.ts,
            Input::Event(e) => e.ts,
        }
    }
}

/// Where an input came from, so that the edge can tell which input offsets the engine
/// still holds in open windows (see [`crate::engine::Engine::held_offset`]).
/// `partition` is an opaque index the edge assigns to each (topic, partition) it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Origin {
    pub partition: u32,
    pub offset: i64,
}

/// What kind of token a term is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TermKind {
    Word,
    Hashtag,
    Cashtag,
    Mention,
    Actor,
    /// Two consecutive words of a post (after stopwords are dropped): `battery fire`.
    Bigram,
}

impl TermKind {
    /// Every kind.
    pub const ALL: [TermKind; 6] = [
        TermKind::Word,
        TermKind::Hashtag,
        TermKind::Cashtag,
        TermKind::Mention,
        TermKind::Actor,
        TermKind::Bigram,
    ];

    /// The kind named `name` (as [`Self::as_str`] writes it).
    pub fn parse(name: &str) -> Option<TermKind> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TermKind::Word => "word",
            TermKind::Hashtag => "hashtag",
            TermKind::Cashtag => "cashtag",
            TermKind::Mention => "mention",
            TermKind::Actor => "actor",
            TermKind::Bigram => "bigram",
        }
    }
}

/// A counted term. Hashtags keep their `#`, cashtags their `$`, mentions their `@`, so
/// that `#fire` and `fire` are different terms.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Term {
    pub kind: TermKind,
    pub text: String,
}

/// How a trending term moves against the previous window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrendStatus {
    /// No baseline before this window: never seen, or forgotten.
    New,
    /// Counted more than in the previous window.
    Rising,
    Steady,
    /// Still above its baseline, but counted less than in the previous window.
    Falling,
}

impl TrendStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TrendStatus::New => "new",
            TrendStatus::Rising => "rising",
            TrendStatus::Steady => "steady",
            TrendStatus::Falling => "falling",
        }
    }
}

/// One ranked entry of a [`TrendSnapshot`]: the term and why it ranks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrendEntry {
    pub term: String,
    pub kind: TermKind,
    /// Occurrences in the window.
    pub count: u64,
    /// Distinct authors who used the term in the window.
    pub authors: u64,
    /// The term's expected (author-capped) count from its own past windows.
    pub baseline: f64,
    pub score: f64,
    pub status: TrendStatus,
    /// Ids of a few posts containing the term (posts without an id are not listed).
    pub examples: Vec<String>,
    /// `count` overestimates the true count by at most this (0 while the window's term
    /// sketch stayed under capacity).
    pub count_error: u64,
    /// The catalog actor the term concerns: the actor itself for an `actor` term, else
    /// the one most posts using the term mention, if one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

/// The top terms of one window, ranked (highest first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrendSnapshot {
    /// The window's name: its size, and its hop when hopping (`1m`, `15m/5m`).
    pub window: String,
    pub window_start: EpochMs,
    pub window_end: EpochMs,
    /// 1 for the window's first emission, +1 per update (update mode only).
    pub revision: u32,
    /// The window is closed: this is its last emission.
    #[serde(rename = "final")]
    pub is_final: bool,
    pub events: u64,
    /// Distinct terms counted in the window (at most the sketch capacity).
    pub distinct_terms: u64,
    pub entries: Vec<TrendEntry>,
}

/// One series' value in a closed window, scored by the anomaly detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    /// The window's name, as in [`TrendSnapshot::window`].
    pub window: String,
    pub series: String,
    pub window_start: EpochMs,
    pub window_end: EpochMs,
    pub observed: f64,
    pub expected: f64,
    /// 0..1, higher is more anomalous.
    pub score: f64,
    pub detector: String,
    /// Which component of the detector fired and why, e.g. "level shift: 3.1σ above the seasonal baseline".
    pub explanation: String,
    /// The catalog actor of an `actors.actor=<id>` series.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

/// Where an alert is in its lifecycle. Only `firing`, `updated` and `resolved` are
/// published; `pending` is visible through the API while a rule's `for` duration runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Pending,
    Firing,
    /// Still firing, with new figures (rate-limited: `alerts.update_interval_ms`).
    Updated,
    Resolved,
}

impl AlertStatus {
    /// Pending, firing or updated: not resolved.
    pub fn is_active(self) -> bool {
        self != AlertStatus::Resolved
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Pending => "pending",
            AlertStatus::Firing => "firing",
            AlertStatus::Updated => "updated",
            AlertStatus::Resolved => "resolved",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// A signal that caused an alert: a trend entry or a scored series of one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertCause {
    /// `trend` or `anomaly`.
    pub kind: String,
    /// The window's name, as in [`TrendSnapshot::window`].
    pub window: String,
    pub window_start: EpochMs,
    pub window_end: EpochMs,
    /// The series (anomaly) or the term key `<kind>:<term>` (trend).
    pub subject: String,
    pub observed: f64,
    pub expected: f64,
    pub score: f64,
}

/// One message about an alert: it fired, was updated, or resolved.
///
/// `dedup_key` names what is watched (rule and series: `trend:hashtag:#acmefire`,
/// `anomaly:posts.source=twitter`) and is the Kafka key, so a compacted topic keeps each
/// alert's latest state. `id` names one occurrence: `<dedup_key>@<starts_at>`; an alert
/// that resolves and fires again is a new occurrence with a new id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: String,
    #[serde(default)]
    pub dedup_key: String,
    pub status: AlertStatus,
    pub severity: Severity,
    pub title: String,
    /// One human sentence with the figures that matter.
    pub summary: String,
    /// The kind of signal that caused the alert: `trend` or `anomaly`.
    pub cause: String,
    /// The signals of the latest window that kept it firing (or resolved it).
    #[serde(default)]
    pub signals: Vec<AlertCause>,
    /// The catalog actor the alert concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// When the condition started to hold (pending), event time.
    #[serde(default)]
    pub active_at: EpochMs,
    /// When it fired: the end of the window that fired it.
    pub starts_at: EpochMs,
    pub updated_at: EpochMs,
    /// When it resolved (resolved messages only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<EpochMs>,
    /// Ids of a few posts behind the alert.
    #[serde(default)]
    pub examples: Vec<String>,
    /// How feedback changed this rule's threshold for this series, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adjustment: Option<String>,
}

/// A message and the topic routing chose for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Routed<T> {
    pub topic: String,
    pub message: T,
}

/// A closed window's co-mention graph of the catalog's actors (topic `signals.ecosystem`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EcosystemSnapshot {
    pub window: String,
    pub window_start: EpochMs,
    pub window_end: EpochMs,
    #[serde(flatten)]
    pub graph: CoMentionGraph,
}

/// Everything the engine publishes.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    Trend(TrendSnapshot),
    Anomaly(Anomaly),
    /// Every alert message, unfiltered (topic `signals.alerts`).
    Alert(Alert),
    /// What the metafilter lets through, grouped, for the team topics routing picks.
    Notification(Routed<Notification>),
    /// What a team's attention budget held back.
    Digest(Routed<Digest>),
    Ecosystem(EcosystemSnapshot),
}
