//! Alert lifecycle: which alerts are pending or firing, and the messages emitted on their
//! transitions, in the manner of Prometheus' rules and Alertmanager.
//!
//! [`AlertBook`] is plain data (serializable, so that it can be checkpointed) keyed by
//! the alert's dedup key (`trend:<kind>:<term>`, `anomaly:<series>`). Each closed window,
//! the engine reports what every watched key scored ([`AlertBook::observe`]); the book
//! applies one [`Lifecycle`]:
//!
//! - **pending → firing**: a key scoring at or above its rule's firing threshold becomes
//!   pending; it fires once the condition has held for `for_ms` of event time (0: at
//!   once). A pending key that falls below the threshold is dropped without a message.
//! - **firing → resolved**: only below the lower *resolve* threshold (hysteresis), and not
//!   before it has fired for `min_firing_ms`, so a score hovering around the threshold
//!   does not flap. The resolved message says what the series is back to.
//! - **updated**: while firing, a message with new figures when the severity rises (at
//!   once) or the observed value moved by a quarter or more, at most once per
//!   `update_interval_ms`. Unchanged alerts send nothing.
//! - **cool-down**: for `cooldown_ms` after resolving, the key cannot fire again; a
//!   condition holding meanwhile waits as pending and fires when the cool-down ends. A
//!   resolved alert that fires again is a new occurrence: a new `id` and `starts_at`.
//!
//! Thresholds are per rule ([`Thresholds`]); feedback can scale them per key (a factor
//! from [`crate::feedback`], applied by [`Thresholds::scaled`]). Times are event times:
//! the end of the window being evaluated. What an alert says is built by the caller
//! ([`AlertContent`], see [`text`]) and only when a message is due.

pub mod text;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{AlertConfig, TrendConfig};
use crate::model::{Alert, AlertCause, AlertStatus, EpochMs, Severity};

/// Observed values must move by this fraction of the last published one to be worth an
/// `updated` message.
const UPDATE_CHANGE: f64 = 0.25;

/// The closed window being evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpan {
    pub start: EpochMs,
    pub end: EpochMs,
}

/// The rule that watches a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rule {
    /// A term's trend score (a z-score, unbounded).
    Trend,
    /// A series' anomaly score (0..1).
    Anomaly,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Trend => "trend",
            Rule::Anomaly => "anomaly",
        }
    }

    /// The rule of a dedup key (`trend:...`, `anomaly:...`).
    pub fn of_key(dedup_key: &str) -> Option<Rule> {
        match dedup_key.split_once(':')?.0 {
            "trend" => Some(Rule::Trend),
            "anomaly" => Some(Rule::Anomaly),
            _ => None,
        }
    }
}

/// When a rule's score fires, resolves, and is critical.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub fire: f64,
    /// Below this a firing alert resolves (≤ `fire`).
    pub resolve: f64,
    /// At or above this the alert is critical, else a warning.
    pub critical: Option<f64>,
    /// Anomaly scores are probabilities near 1: they are scaled on their distance to 1.
    bounded: bool,
}

impl Thresholds {
    /// All three moved by a feedback `factor` (> 1: less sensitive, fewer alerts). A
    /// z-score threshold is multiplied by it; a 0..1 anomaly threshold keeps `1 − t`
    /// divided by it, so that 0.99 with factor 2 becomes 0.995 (half the tail).
    pub fn scaled(self, factor: f64) -> Thresholds {
        let scale = |t: f64| {
            if self.bounded {
                1.0 - (1.0 - t) / factor
            } else {
                t * factor
            }
        };
        Thresholds {
            fire: scale(self.fire),
            resolve: scale(self.resolve),
            critical: self.critical.map(scale),
            bounded: self.bounded,
        }
    }

    fn severity(&self, score: f64) -> Severity {
        match self.critical {
            Some(critical) if score >= critical => Severity::Critical,
            _ => Severity::Warning,
        }
    }
}

/// The thresholds of both rules and the lifecycle's timings, from `[alerts]` and
/// `[trends]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Lifecycle {
    pub anomaly: Thresholds,
    pub trend: Thresholds,
    pub for_ms: i64,
    pub min_firing_ms: i64,
    pub update_interval_ms: i64,
    pub cooldown_ms: i64,
}

impl Lifecycle {
    pub fn new(alerts: &AlertConfig, trends: &TrendConfig) -> Self {
        Lifecycle {
            anomaly: Thresholds {
                fire: alerts.anomaly_fire,
                resolve: alerts.anomaly_resolve,
                critical: Some(alerts.critical_score),
                bounded: true,
            },
            trend: Thresholds {
                fire: trends.alert_score,
                // A trend ends when its score has halved: the term is back near its
                // baseline, not merely below the firing line.
                resolve: trends.alert_score / 2.0,
                critical: None,
                bounded: false,
            },
            for_ms: alerts.for_ms,
            min_firing_ms: alerts.min_firing_ms,
            update_interval_ms: alerts.update_interval_ms,
            cooldown_ms: alerts.cooldown_ms,
        }
    }

    pub fn thresholds(&self, rule: Rule) -> Thresholds {
        match rule {
            Rule::Trend => self.trend,
            Rule::Anomaly => self.anomaly,
        }
    }
}

/// What an alert says, built by the caller for the status about to be published.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertContent {
    pub title: String,
    pub summary: String,
    pub signals: Vec<AlertCause>,
    pub actor: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub examples: Vec<String>,
    /// The value compared across updates (the count or the series' value).
    pub observed: f64,
}

/// What one key scored in the window being evaluated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation<'a> {
    pub rule: Rule,
    pub dedup_key: &'a str,
    pub score: f64,
    /// The key's feedback factor (1: none), see [`Thresholds::scaled`].
    pub factor: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Phase {
    /// The condition holds since `Alert::active_at`; not published yet.
    Pending,
    /// Published; `last_sent` is when the latest message went out, with its observed
    /// value.
    Firing {
        last_sent: EpochMs,
        last_observed: f64,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Tracked {
    rule: Rule,
    phase: Phase,
    /// The latest content, with the status of the latest message (or pending).
    alert: Alert,
}

/// The pending and firing alerts, and the keys cooling down.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertBook {
    tracked: BTreeMap<String, Tracked>,
    /// Dedup key → when it last resolved, kept for the cool-down.
    resolved_at: BTreeMap<String, EpochMs>,
}

impl AlertBook {
    pub fn new() -> Self {
        Self::default()
    }

    /// The alerts pending or firing, by dedup key, with their latest content.
    pub fn active(&self) -> impl Iterator<Item = &Alert> {
        self.tracked.values().map(|t| &t.alert)
    }

    /// The pending or firing alert of `dedup_key`.
    pub fn get(&self, dedup_key: &str) -> Option<&Alert> {
        self.tracked.get(dedup_key).map(|t| &t.alert)
    }

    /// The firing alerts only.
    pub fn firing(&self) -> impl Iterator<Item = &Alert> {
        self.tracked
            .values()
            .filter(|t| matches!(t.phase, Phase::Firing { .. }))
            .map(|t| &t.alert)
    }

    /// The dedup keys of `rule` pending or firing: the caller must observe each of them
    /// every window, also when it scored nothing (score 0), so that they can resolve.
    pub fn tracked_keys(&self, rule: Rule) -> impl Iterator<Item = &str> {
        self.tracked
            .iter()
            .filter(move |(_, t)| t.rule == rule)
            .map(|(key, _)| key.as_str())
    }

    /// Applies the lifecycle to what `seen.dedup_key` scored in the window `span`.
    /// `content` is called (at most once) only when the key is or becomes tracked, with
    /// the status about to be published (`Pending` while nothing is) and the severity.
    /// Messages due are appended to `out`.
    pub fn observe(
        &mut self,
        lifecycle: &Lifecycle,
        span: WindowSpan,
        seen: Observation<'_>,
        content: impl FnOnce(AlertStatus, Severity) -> AlertContent,
        out: &mut Vec<Alert>,
    ) {
        let thresholds = lifecycle.thresholds(seen.rule).scaled(seen.factor);
        let severity = thresholds.severity(seen.score);
        let above = seen.score >= thresholds.fire;
        let now = span.end;
        let Some(tracked) = self.tracked.get_mut(seen.dedup_key) else {
            if above {
                let mut alert =
                    new_alert(seen, now, severity, content(AlertStatus::Pending, severity));
                alert.status = AlertStatus::Pending;
                self.tracked.insert(
                    seen.dedup_key.to_owned(),
                    Tracked {
                        rule: seen.rule,
                        phase: Phase::Pending,
                        alert,
                    },
                );
                self.fire_if_due(lifecycle, seen.dedup_key, now, out);
            }
            return;
        };
        match tracked.phase {
            Phase::Pending if !above => {
                self.tracked.remove(seen.dedup_key);
            }
            Phase::Pending => {
                let fresh = content(AlertStatus::Pending, severity);
                refresh(&mut tracked.alert, fresh, severity, now);
                self.fire_if_due(lifecycle, seen.dedup_key, now, out);
            }
            Phase::Firing {
                last_sent,
                last_observed,
            } => {
                let fired_for = now - tracked.alert.starts_at;
                if seen.score < thresholds.resolve && fired_for >= lifecycle.min_firing_ms {
                    let fresh = content(AlertStatus::Resolved, severity);
                    let mut alert = self.tracked.remove(seen.dedup_key).expect("tracked").alert;
                    let severity = alert.severity;
                    refresh(&mut alert, fresh, severity, now);
                    alert.status = AlertStatus::Resolved;
                    alert.ends_at = Some(now);
                    self.resolved_at.insert(seen.dedup_key.to_owned(), now);
                    out.push(alert);
                    return;
                }
                let escalated = severity > tracked.alert.severity;
                let fresh = content(AlertStatus::Updated, severity.max(tracked.alert.severity));
                let moved = (fresh.observed - last_observed).abs()
                    >= UPDATE_CHANGE * last_observed.abs().max(1.0);
                let severity = severity.max(tracked.alert.severity);
                let observed = fresh.observed;
                refresh(&mut tracked.alert, fresh, severity, now);
                let quiet_long_enough = now - last_sent >= lifecycle.update_interval_ms;
                if escalated || (moved && quiet_long_enough) {
                    tracked.alert.status = AlertStatus::Updated;
                    tracked.phase = Phase::Firing {
                        last_sent: now,
                        last_observed: observed,
                    };
                    out.push(tracked.alert.clone());
                }
            }
        }
    }

    /// Forgets cool-downs that have ended (call once per window).
    pub fn expire_cooldowns(&mut self, lifecycle: &Lifecycle, now: EpochMs) {
        self.resolved_at
            .retain(|_, resolved| now - *resolved < lifecycle.cooldown_ms);
    }

    /// Fires the pending `key` if its `for` duration has passed and it is not cooling
    /// down.
    fn fire_if_due(
        &mut self,
        lifecycle: &Lifecycle,
        key: &str,
        now: EpochMs,
        out: &mut Vec<Alert>,
    ) {
        let cooling = self
            .resolved_at
            .get(key)
            .is_some_and(|resolved| now - resolved < lifecycle.cooldown_ms);
        let tracked = self.tracked.get_mut(key).expect("tracked");
        if cooling || now - tracked.alert.active_at < lifecycle.for_ms {
            return;
        }
        self.resolved_at.remove(key);
        let alert = &mut tracked.alert;
        alert.status = AlertStatus::Firing;
        alert.starts_at = now;
        alert.id = format!("{key}@{now}");
        tracked.phase = Phase::Firing {
            last_sent: now,
            last_observed: observed_of(alert),
        };
        out.push(alert.clone());
    }
}

/// A new pending alert whose condition holds since `now`.
fn new_alert(
    seen: Observation<'_>,
    now: EpochMs,
    severity: Severity,
    content: AlertContent,
) -> Alert {
    let mut alert = Alert {
        id: String::new(),
        dedup_key: seen.dedup_key.to_owned(),
        status: AlertStatus::Pending,
        severity,
        title: String::new(),
        summary: String::new(),
        cause: seen.rule.as_str().to_owned(),
        signals: Vec::new(),
        actor: None,
        labels: BTreeMap::new(),
        active_at: now,
        starts_at: now,
        updated_at: now,
        ends_at: None,
        examples: Vec::new(),
        adjustment: None,
    };
    refresh(&mut alert, content, severity, now);
    alert
}

/// Puts the latest content into `alert`.
fn refresh(alert: &mut Alert, content: AlertContent, severity: Severity, now: EpochMs) {
    let AlertContent {
        title,
        summary,
        signals,
        actor,
        mut labels,
        examples,
        observed: _,
    } = content;
    labels.insert("severity".into(), severity.as_str().into());
    alert.title = title;
    alert.summary = summary;
    alert.signals = signals;
    alert.actor = actor;
    alert.labels = labels;
    alert.severity = severity;
    alert.updated_at = now;
    if !examples.is_empty() {
        alert.examples = examples;
    }
}

/// The observed value an alert was last published with: its first cause's.
fn observed_of(alert: &Alert) -> f64 {
    alert.signals.first().map_or(0.0, |s| s.observed)
}

#[cfg(test)]
mod tests;
