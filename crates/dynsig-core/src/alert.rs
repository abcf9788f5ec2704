//! Alert lifecycle: which alerts are firing, and the messages emitted on transitions.
//!
//! [`AlertBook`] is plain data (serializable, so that it can be checkpointed) keyed by the
//! alert's dedup id. A message is emitted only when an alert fires or resolves, never
//! while it stays in the same state; a resolved alert is forgotten, so firing again
//! starts a new occurrence with a new `starts_at`. Times are event times: the end of the
//! window that caused the transition.
//!
//! Rules:
//! - anomaly, id `anomaly:<series>`: fires at score ≥ `alerts.anomaly_fire`, resolves when
//!   the score falls below `alerts.anomaly_resolve` (hysteresis: a score hovering around
//!   the firing threshold does not flap). Critical at ≥ `alerts.critical_score`.
//!   Drops fire as well as spikes, and say so.
//! - trend, id `trend:<kind>:<term>`: fires when a ranked entry scores ≥
//!   `trends.alert_score`, resolves when the term later scores below half of that or does
//!   not occur in a closed window. Always a warning.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::anomaly::SeriesScore;
use crate::config::{AlertConfig, TrendConfig};
use crate::model::{Alert, AlertStatus, EpochMs, Severity, TermKind, TrendEntry};
use crate::trend::TermScore;

/// The thresholds of the rules, from the `[alerts]` and `[trends]` sections.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlertRules {
    pub anomaly_fire: f64,
    pub anomaly_resolve: f64,
    pub critical_score: f64,
    pub trend_fire: f64,
}

impl AlertRules {
    pub fn new(alerts: &AlertConfig, trends: &TrendConfig) -> Self {
        AlertRules {
            anomaly_fire: alerts.anomaly_fire,
            anomaly_resolve: alerts.anomaly_resolve,
            critical_score: alerts.critical_score,
            trend_fire: trends.alert_score,
        }
    }

    fn trend_resolve(&self) -> f64 {
        self.trend_fire / 2.0
    }
}

/// The closed window being evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpan {
    pub start: EpochMs,
    pub end: EpochMs,
}

/// A firing trend alert and the term it is about (kept typed, not parsed back from labels).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FiringTrend {
    pub kind: TermKind,
    pub term: String,
    pub alert: Alert,
}

/// The firing alerts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertBook {
    /// Firing anomaly alerts by series.
    anomalies: BTreeMap<String, Alert>,
    /// Firing trend alerts by alert id.
    trends: BTreeMap<String, FiringTrend>,
}

impl AlertBook {
    pub fn new() -> Self {
        Self::default()
    }

    /// The alerts currently firing (anomalies by series, then trends by id).
    pub fn firing(&self) -> impl Iterator<Item = &Alert> {
        self.anomalies
            .values()
            .chain(self.trends.values().map(|t| &t.alert))
    }

    /// Applies the anomaly rule to the scored series of a closed window; appends the
    /// transitions to `out`.
    pub fn observe_anomalies(
        &mut self,
        rules: &AlertRules,
        span: WindowSpan,
        scores: &[SeriesScore],
        out: &mut Vec<Alert>,
    ) {
        for s in scores {
            if let Some(alert) = self.anomalies.get(&s.series) {
                if s.score < rules.anomaly_resolve {
                    let mut resolved = alert.clone();
                    resolved.status = AlertStatus::Resolved;
                    resolved.updated_at = span.end;
                    resolved.summary =
                        format!("{} back to normal: {}", s.series, anomaly_numbers(s));
                    self.anomalies.remove(&s.series);
                    out.push(resolved);
                }
            } else if s.score >= rules.anomaly_fire {
                let alert = anomaly_alert(rules, span, s);
                self.anomalies.insert(s.series.clone(), alert.clone());
                out.push(alert);
            }
        }
    }

    /// Applies the trend rule to a closed window: fires for the ranked `entries` scoring
    /// high enough, and resolves firing trends by looking up their term's score in this
    /// window with `last_score` (`None` = the term did not occur). Appends the
    /// transitions to `out`.
    pub fn observe_trends(
        &mut self,
        rules: &AlertRules,
        span: WindowSpan,
        entries: &[TrendEntry],
        last_score: impl Fn(TermKind, &str) -> Option<TermScore>,
        out: &mut Vec<Alert>,
    ) {
        for entry in entries.iter().filter(|e| e.score >= rules.trend_fire) {
            let id = format!("trend:{}:{}", entry.kind.as_str(), entry.term);
            if let Entry::Vacant(slot) = self.trends.entry(id) {
                let alert = trend_alert(slot.key().clone(), span, entry);
                out.push(alert.clone());
                slot.insert(FiringTrend {
                    kind: entry.kind,
                    term: entry.term.clone(),
                    alert,
                });
            }
        }
        self.trends.retain(|_, firing| {
            let score = last_score(firing.kind, &firing.term);
            if score.is_some_and(|s| s.score >= rules.trend_resolve()) {
                return true;
            }
            let mut resolved = firing.alert.clone();
            resolved.status = AlertStatus::Resolved;
            resolved.updated_at = span.end;
            resolved.summary = format!(
                "{} no longer trending: {}",
                firing.term,
                trend_numbers(span, score)
            );
            out.push(resolved);
            false
        });
    }
}

fn anomaly_alert(rules: &AlertRules, span: WindowSpan, s: &SeriesScore) -> Alert {
    let severity = if s.score >= rules.critical_score {
        Severity::Critical
    } else {
        Severity::Warning
    };
    let dropped = s.observed < s.expected;
    let (title, summary) = if dropped {
        (
            format!("Drop in {}", s.series),
            format!("{} dropped: {}", s.series, anomaly_numbers(s)),
        )
    } else {
        (
            format!("Spike in {}", s.series),
            format!("{}: {}", s.series, anomaly_numbers(s)),
        )
    };
    Alert {
        id: format!("anomaly:{}", s.series),
        status: AlertStatus::Firing,
        severity,
        title,
        summary,
        cause: "anomaly".into(),
        labels: labels([
            ("rule", "anomaly"),
            ("series", &s.series),
            ("severity", severity_name(severity)),
        ]),
        starts_at: span.end,
        updated_at: span.end,
    }
}

fn trend_alert(id: String, span: WindowSpan, entry: &TrendEntry) -> Alert {
    let score = TermScore {
        count: entry.count,
        baseline: entry.baseline,
        score: entry.score,
    };
    Alert {
        id,
        status: AlertStatus::Firing,
        severity: Severity::Warning,
        title: format!("Trending {} {}", entry.kind.as_str(), entry.term),
        summary: format!("{}: {}", entry.term, trend_numbers(span, Some(score))),
        cause: "trend".into(),
        labels: labels([
            ("rule", "trend"),
            ("term", &entry.term),
            ("kind", entry.kind.as_str()),
            ("severity", severity_name(Severity::Warning)),
        ]),
        starts_at: span.end,
        updated_at: span.end,
    }
}

/// `observed 340 vs expected 52.1 (score 0.9993)`
fn anomaly_numbers(s: &SeriesScore) -> String {
    format!(
        "observed {} vs expected {:.1} (score {:.4})",
        format_value(s.observed),
        s.expected,
        s.score
    )
}

/// `340 mentions in window 12:01:00–12:02:00 UTC vs baseline 1.2 (score 41.3)`
fn trend_numbers(span: WindowSpan, score: Option<TermScore>) -> String {
    let window = format!(
        "in window {}–{} UTC",
        utc_time_of_day(span.start),
        utc_time_of_day(span.end)
    );
    match score {
        Some(s) => format!(
            "{} mentions {window} vs baseline {:.1} (score {:.1})",
            s.count, s.baseline, s.score
        ),
        None => format!("no mentions {window}"),
    }
}

/// Whole values without decimals (counts), others with two.
fn format_value(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

/// `HH:MM:SS` of an epoch-ms time, UTC.
fn utc_time_of_day(ms: EpochMs) -> String {
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

fn severity_name(severity: Severity) -> &'static str {
    match severity {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Critical => "critical",
    }
}

fn labels<const N: usize>(pairs: [(&str, &str); N]) -> BTreeMap<String, String> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: EpochMs = 60_000;
    /// 2026-01-01 12:01:00 UTC
    const NOON_ONE: EpochMs = 1_767_268_860_000;

    fn rules() -> AlertRules {
        AlertRules::new(&AlertConfig::default(), &TrendConfig::default())
    }

    fn span(i: i64) -> WindowSpan {
        WindowSpan {
            start: NOON_ONE + i * MINUTE,
            end: NOON_ONE + (i + 1) * MINUTE,
        }
    }

    fn series(score: f64, observed: f64) -> Vec<SeriesScore> {
        vec![SeriesScore {
            series: "posts.source=twitter".into(),
            observed,
            expected: 52.1,
            score,
            explanation: "test".into(),
        }]
    }

    fn anomaly_step(book: &mut AlertBook, i: i64, score: f64, observed: f64) -> Vec<Alert> {
        let mut out = Vec::new();
        book.observe_anomalies(&rules(), span(i), &series(score, observed), &mut out);
        out
    }

    fn entry(term: &str, count: u64, score: f64) -> TrendEntry {
        TrendEntry {
            term: term.into(),
            kind: TermKind::Hashtag,
            count,
            authors: count,
            baseline: 1.2,
            score,
            status: crate::model::TrendStatus::Rising,
            examples: Vec::new(),
            count_error: 0,
        }
    }

    fn trend_step(
        book: &mut AlertBook,
        i: i64,
        entries: &[TrendEntry],
        last: Option<TermScore>,
    ) -> Vec<Alert> {
        let mut out = Vec::new();
        book.observe_trends(&rules(), span(i), entries, |_, _| last, &mut out);
        out
    }

    #[test]
    fn anomaly_fires_and_resolves_with_hysteresis() {
        let mut book = AlertBook::new();
        assert!(
            anomaly_step(&mut book, 0, 0.98, 60.0).is_empty(),
            "below anomaly_fire"
        );
        let fired = anomaly_step(&mut book, 1, 0.9993, 340.0);
        assert_eq!(fired.len(), 1);
        let alert = &fired[0];
        assert_eq!(alert.id, "anomaly:posts.source=twitter");
        assert_eq!(
            (alert.status, alert.severity),
            (AlertStatus::Firing, Severity::Critical)
        );
        assert_eq!(alert.title, "Spike in posts.source=twitter");
        assert_eq!(
            alert.summary,
            "posts.source=twitter: observed 340 vs expected 52.1 (score 0.9993)"
        );
        assert_eq!(alert.labels["rule"], "anomaly");
        assert_eq!(alert.labels["series"], "posts.source=twitter");
        assert_eq!(alert.labels["severity"], "critical");
        assert_eq!(
            (alert.starts_at, alert.updated_at),
            (span(1).end, span(1).end)
        );
        assert!(
            anomaly_step(&mut book, 2, 0.9999, 400.0).is_empty(),
            "still firing: no message"
        );
        assert!(
            anomaly_step(&mut book, 3, 0.95, 70.0).is_empty(),
            "between resolve and fire: keeps firing"
        );
        assert_eq!(book.firing().count(), 1);
        let resolved = anomaly_step(&mut book, 4, 0.5, 55.0);
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].status, AlertStatus::Resolved);
        assert_eq!(
            (resolved[0].starts_at, resolved[0].updated_at),
            (span(1).end, span(4).end)
        );
        assert!(
            resolved[0].summary.contains("back to normal"),
            "{}",
            resolved[0].summary
        );
        assert_eq!(book.firing().count(), 0);
        // Firing again is a new occurrence.
        let again = anomaly_step(&mut book, 6, 0.995, 200.0);
        assert_eq!(again[0].starts_at, span(6).end);
        assert_eq!(again[0].severity, Severity::Warning);
    }

    #[test]
    fn drops_fire_and_say_so() {
        let mut book = AlertBook::new();
        let fired = anomaly_step(&mut book, 0, 0.9999, 0.0);
        assert_eq!(fired[0].title, "Drop in posts.source=twitter");
        assert_eq!(
            fired[0].summary,
            "posts.source=twitter dropped: observed 0 vs expected 52.1 (score 0.9999)"
        );
    }

    #[test]
    fn trend_fires_once_then_resolves_below_half_the_threshold() {
        let mut book = AlertBook::new();
        let hot = entry("#acmefire", 340, 41.3);
        assert!(trend_step(&mut book, 0, &[entry("#mild", 9, 7.9)], None).is_empty());
        let fired = trend_step(
            &mut book,
            0,
            std::slice::from_ref(&hot),
            Some(TermScore {
                count: 340,
                baseline: 1.2,
                score: 41.3,
            }),
        );
        assert_eq!(fired.len(), 1);
        let alert = &fired[0];
        assert_eq!(alert.id, "trend:hashtag:#acmefire");
        assert_eq!(alert.title, "Trending hashtag #acmefire");
        assert_eq!(
            alert.summary,
            "#acmefire: 340 mentions in window 12:01:00–12:02:00 UTC vs baseline 1.2 (score 41.3)"
        );
        assert_eq!(
            (alert.severity, alert.cause.as_str()),
            (Severity::Warning, "trend")
        );
        assert_eq!(alert.labels["term"], "#acmefire");
        assert_eq!(alert.labels["kind"], "hashtag");
        assert_eq!(alert.labels["rule"], "trend");
        // Out of the top-k but still scoring above half the threshold: keeps firing.
        assert!(trend_step(
            &mut book,
            1,
            &[],
            Some(TermScore {
                count: 200,
                baseline: 100.0,
                score: 4.5
            })
        )
        .is_empty());
        let resolved = trend_step(
            &mut book,
            2,
            &[],
            Some(TermScore {
                count: 120,
                baseline: 150.0,
                score: -2.4,
            }),
        );
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].status, AlertStatus::Resolved);
        assert_eq!(
            (resolved[0].starts_at, resolved[0].updated_at),
            (span(0).end, span(2).end)
        );
        // Re-firing is a new occurrence, and a term that vanishes resolves.
        let again = trend_step(
            &mut book,
            5,
            &[hot],
            Some(TermScore {
                count: 340,
                baseline: 1.2,
                score: 41.3,
            }),
        );
        assert_eq!(again[0].starts_at, span(5).end);
        let gone = trend_step(&mut book, 6, &[], None);
        assert!(
            gone[0].summary.contains("no mentions"),
            "{}",
            gone[0].summary
        );
    }

    #[test]
    fn book_round_trips_through_serde() {
        let mut book = AlertBook::new();
        anomaly_step(&mut book, 0, 0.9999, 340.0);
        trend_step(
            &mut book,
            0,
            &[entry("#acmefire", 340, 41.3)],
            Some(TermScore {
                count: 340,
                baseline: 1.2,
                score: 41.3,
            }),
        );
        let json = serde_json::to_string(&book).unwrap();
        let restored: AlertBook = serde_json::from_str(&json).unwrap();
        assert_eq!(restored, book);
        assert_eq!(restored.firing().count(), 2);
    }

    #[test]
    fn time_of_day_is_utc() {
        assert_eq!(utc_time_of_day(NOON_ONE), "12:01:00");
        assert_eq!(utc_time_of_day(-1_000), "23:59:59");
        assert_eq!(format_value(12.5), "12.50");
    }
}
