//! Grouping: related alerts (by default, about the same actor) that fire close together
//! go out as one [`Notification`] listing its members, instead of one page each.
//!
//! [`Grouper`] owns the open groups. A group opens with its first alert and waits
//! `group_wait_ms` for the rest of the incident before its first notification; after that,
//! changes (new members, resolves) go out as group updates at most once per
//! `group_interval_ms`. A group closes once a notification has said that all its members
//! resolved. Everything is driven by [`Grouper::push`] and [`Grouper::flush`] with the
//! caller's time, so the outcome is deterministic.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::config::{require, ConfigError};
use crate::model::{Alert, AlertStatus, EpochMs, Severity};
use crate::routing::LABEL_ACTOR;

/// `[metafilter.group]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupConfig {
    /// Alerts with the same values of these labels form a group. An alert lacking one of
    /// them is a group of its own: alerts about no actor are not related to each other.
    /// Empty: all alerts form one group.
    pub group_by: Vec<String>,
    /// How long a new group collects members before its first notification.
    pub group_wait_ms: i64,
    /// The least time between two notifications of the same group.
    pub group_interval_ms: i64,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            group_by: vec![LABEL_ACTOR.into()],
            group_wait_ms: 30_000,
            group_interval_ms: 300_000,
        }
    }
}

impl GroupConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        require(
            self.group_wait_ms >= 0,
            "metafilter.group.group_wait_ms",
            ">= 0",
            self.group_wait_ms,
        )?;
        require(
            self.group_interval_ms > 0,
            "metafilter.group.group_interval_ms",
            "> 0",
            self.group_interval_ms,
        )
    }
}

/// One message about a group of alerts. It says nothing of teams or topics: routing
/// decides where it goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// `label=value` pairs of the `group_by` labels joined by `,` (`actor=acme`), or
    /// `alert:<id>` for an alert grouped alone.
    pub group_key: String,
    /// The `group_by` labels and their values (empty for an alert grouped alone).
    pub group_labels: BTreeMap<String, String>,
    /// The labels every member carries with the same value (e.g. `team`).
    pub common_labels: BTreeMap<String, String>,
    /// Firing while any member fires.
    pub status: AlertStatus,
    /// The highest severity among the members.
    pub severity: Severity,
    /// The members, latest message of each, by id; resolved members appear in one
    /// notification and then leave the group.
    pub alerts: Vec<Alert>,
    /// Ids of the members that joined or changed since the group's previous notification
    /// (all of them in the first), by id.
    pub changed: Vec<String>,
    /// When the group opened.
    pub first_at: EpochMs,
    pub sent_at: EpochMs,
    /// 1 for the group's first notification, then +1 per update.
    pub sequence: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Group {
    group_labels: BTreeMap<String, String>,
    members: BTreeMap<String, Alert>,
    first_at: EpochMs,
    /// The earliest time of the next notification.
    next_at: EpochMs,
    /// Ids of the members that joined or changed since the last notification.
    changed: BTreeSet<String>,
    sent: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Grouper {
    config: GroupConfig,
    groups: BTreeMap<String, Group>,
}

/// How [`Grouper::push`] placed an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The alert is its group's only member: its notification is about it alone.
    Alone,
    /// The alert shares its group with other members: one notification for all.
    WithOthers,
}

impl Grouper {
    pub fn new(config: GroupConfig) -> Self {
        Grouper {
            config,
            groups: BTreeMap::new(),
        }
    }

    /// Adds an alert message to its group (opening it if needed); the message replaces
    /// the member's previous one. It goes out with the group's next [`Grouper::flush`].
    pub fn push(&mut self, alert: Alert, now: EpochMs) -> Placement {
        let (key, group_labels) = self.key_of(&alert);
        let wait = self.config.group_wait_ms;
        let group = self.groups.entry(key).or_insert_with(|| Group {
            group_labels,
            members: BTreeMap::new(),
            first_at: now,
            next_at: now + wait,
            changed: BTreeSet::new(),
            sent: 0,
        });
        group.changed.insert(alert.id.clone());
        group.members.insert(alert.id.clone(), alert);
        if group.members.len() > 1 {
            Placement::WithOthers
        } else {
            Placement::Alone
        }
    }

    fn key_of(&self, alert: &Alert) -> (String, BTreeMap<String, String>) {
        let group_labels: Option<BTreeMap<String, String>> = self
            .config
            .group_by
            .iter()
            .map(|label| Some((label.clone(), alert.labels.get(label)?.clone())))
            .collect();
        match group_labels {
            Some(labels) => {
                let key = labels
                    .iter()
                    .map(|(label, value)| format!("{label}={value}"))
                    .collect::<Vec<_>>()
                    .join(",");
                (key, labels)
            }
            None => (format!("alert:{}", alert.id), BTreeMap::new()),
        }
    }

    /// The notifications due at `now`, by group key: groups with changes whose wait or
    /// interval has passed.
    pub fn flush(&mut self, now: EpochMs) -> Vec<Notification> {
        let interval = self.config.group_interval_ms;
        let mut due = Vec::new();
        for (key, group) in &mut self.groups {
            if group.changed.is_empty() || now < group.next_at {
                continue;
            }
            group.sent += 1;
            group.next_at = now + interval;
            due.push(notification(key, group, now));
            group.changed.clear();
            group.members.retain(|_, alert| alert.status.is_active());
        }
        self.groups.retain(|_, group| !group.members.is_empty());
        due
    }

    /// Number of open groups.
    pub fn open_groups(&self) -> usize {
        self.groups.len()
    }
}

fn notification(key: &str, group: &Group, now: EpochMs) -> Notification {
    let alerts: Vec<Alert> = group.members.values().cloned().collect();
    let status = if alerts.iter().any(|a| a.status.is_active()) {
        AlertStatus::Firing
    } else {
        AlertStatus::Resolved
    };
    let severity = alerts
        .iter()
        .map(|a| a.severity)
        .max()
        .unwrap_or(Severity::Info);
    Notification {
        group_key: key.to_owned(),
        group_labels: group.group_labels.clone(),
        common_labels: common_labels(&alerts),
        status,
        severity,
        alerts,
        changed: group.changed.iter().cloned().collect(),
        first_at: group.first_at,
        sent_at: now,
        sequence: group.sent,
    }
}

fn common_labels(alerts: &[Alert]) -> BTreeMap<String, String> {
    let Some((first, rest)) = alerts.split_first() else {
        return BTreeMap::new();
    };
    let mut common = first.labels.clone();
    for alert in rest {
        common.retain(|label, value| alert.labels.get(label) == Some(value));
    }
    common
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metafilter::tests::{alert, resolved};

    const T0: EpochMs = 1_767_268_800_000;
    const SECOND: EpochMs = 1_000;

    fn acme(id: &str) -> Alert {
        alert(id, &[("actor", "acme"), ("team", "social"), ("rule", id)])
    }

    fn ids(notification: &Notification) -> Vec<&str> {
        notification.alerts.iter().map(|a| a.id.as_str()).collect()
    }

    #[test]
    fn alerts_within_the_wait_go_out_as_one_notification() {
        let mut grouper = Grouper::new(GroupConfig::default());
        assert_eq!(grouper.push(acme("a"), T0), Placement::Alone);
        assert_eq!(
            grouper.push(acme("b"), T0 + 10 * SECOND),
            Placement::WithOthers
        );
        assert!(grouper.flush(T0 + 29 * SECOND).is_empty());

        let sent = grouper.flush(T0 + 30 * SECOND);
        assert_eq!(sent.len(), 1);
        let n = &sent[0];
        assert_eq!(n.group_key, "actor=acme");
        assert_eq!(n.group_labels["actor"], "acme");
        assert_eq!(ids(n), ["a", "b"]);
        assert_eq!(n.changed, ["a", "b"]);
        assert_eq!(n.status, AlertStatus::Firing);
        assert_eq!(
            (n.first_at, n.sent_at, n.sequence),
            (T0, T0 + 30 * SECOND, 1)
        );
        // `rule` differs between members, so only actor and team are common.
        assert_eq!(
            n.common_labels.keys().collect::<Vec<_>>(),
            ["actor", "team"]
        );
        // Nothing changed: nothing more to send.
        assert!(grouper.flush(T0 + 3_600 * SECOND).is_empty());
    }

    #[test]
    fn later_members_go_out_as_updates_at_most_once_per_interval() {
        let mut grouper = Grouper::new(GroupConfig::default());
        grouper.push(acme("a"), T0);
        assert_eq!(grouper.flush(T0 + 30 * SECOND).len(), 1);

        grouper.push(acme("c"), T0 + 60 * SECOND);
        // The interval runs from the last notification: due at T0 + 330 s.
        assert!(grouper.flush(T0 + 329 * SECOND).is_empty());
        let update = grouper.flush(T0 + 330 * SECOND);
        assert_eq!(update.len(), 1);
        assert_eq!(ids(&update[0]), ["a", "c"]);
        assert_eq!(update[0].changed, ["c"]);
        assert_eq!(update[0].sequence, 2);
        assert_eq!(update[0].first_at, T0);
    }

    #[test]
    fn a_group_closes_after_announcing_that_all_members_resolved() {
        let mut grouper = Grouper::new(GroupConfig::default());
        grouper.push(acme("a"), T0);
        grouper.push(acme("b"), T0);
        grouper.flush(T0 + 30 * SECOND);

        grouper.push(resolved(acme("a")), T0 + 40 * SECOND);
        let partial = grouper.flush(T0 + 330 * SECOND);
        assert_eq!(partial[0].status, AlertStatus::Firing);
        assert_eq!(partial[0].alerts[0].status, AlertStatus::Resolved);
        // The resolved member left after being announced.
        grouper.push(resolved(acme("b")), T0 + 400 * SECOND);
        let last = grouper.flush(T0 + 630 * SECOND);
        assert_eq!(ids(&last[0]), ["b"]);
        assert_eq!(last[0].status, AlertStatus::Resolved);
        assert_eq!(grouper.open_groups(), 0);

        // The actor's next alert opens a new group, with a new wait.
        grouper.push(acme("d"), T0 + 700 * SECOND);
        assert!(grouper.flush(T0 + 700 * SECOND).is_empty());
        let reopened = grouper.flush(T0 + 730 * SECOND);
        assert_eq!(
            (reopened[0].sequence, reopened[0].first_at),
            (1, T0 + 700 * SECOND)
        );
    }

    #[test]
    fn different_actors_and_alerts_without_the_label_are_separate_groups() {
        let mut grouper = Grouper::new(GroupConfig::default());
        grouper.push(acme("a"), T0);
        grouper.push(alert("g", &[("actor", "globex")]), T0);
        grouper.push(alert("x", &[]), T0);
        grouper.push(alert("y", &[]), T0);
        let sent = grouper.flush(T0 + 30 * SECOND);
        let keys: Vec<&str> = sent.iter().map(|n| n.group_key.as_str()).collect();
        assert_eq!(keys, ["actor=acme", "actor=globex", "alert:x", "alert:y"]);
    }

    #[test]
    fn without_group_by_labels_all_alerts_form_one_group() {
        let mut grouper = Grouper::new(GroupConfig {
            group_by: vec![],
            ..GroupConfig::default()
        });
        grouper.push(acme("a"), T0);
        assert_eq!(grouper.push(alert("x", &[]), T0), Placement::WithOthers);
        let sent = grouper.flush(T0 + 30 * SECOND);
        assert_eq!(sent.len(), 1);
        assert_eq!(
            (sent[0].group_key.as_str(), ids(&sent[0])),
            ("", vec!["a", "x"])
        );
        assert!(sent[0].common_labels.is_empty());
    }

    #[test]
    fn severity_is_the_highest_among_members() {
        let mut grouper = Grouper::new(GroupConfig::default());
        grouper.push(acme("a"), T0);
        let mut critical = acme("b");
        critical.severity = Severity::Critical;
        grouper.push(critical, T0);
        assert_eq!(
            grouper.flush(T0 + 30 * SECOND)[0].severity,
            Severity::Critical
        );
    }

    #[test]
    fn rejects_a_zero_interval() {
        let config = GroupConfig {
            group_interval_ms: 0,
            ..GroupConfig::default()
        };
        assert_eq!(
            config.validate().unwrap_err().field,
            "metafilter.group.group_interval_ms"
        );
    }
}
