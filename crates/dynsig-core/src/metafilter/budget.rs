//! Attention budget: each team receives at most `per_hour` notifications per rolling hour;
//! beyond that, notifications below `min_severity_to_bypass` are held and summarised in
//! one [`Digest`] per team every `digest_interval_ms`. Nothing is dropped: every held
//! notification's alerts appear in the team's next digest.
//!
//! [`Budget`] owns, per team, the times of the notifications sent in the last hour and the
//! notifications held for the next digest.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::config::{require, ConfigError};
use crate::model::{Alert, EpochMs, Severity};
use crate::routing::{LABEL_ACTOR, LABEL_RULE};

use super::group::Notification;

const HOUR_MS: EpochMs = 3_600_000;

/// What a digest counts an alert under when it lacks the `rule` or `actor` label.
pub const NO_LABEL: &str = "(none)";

/// `[metafilter.budget]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetConfig {
    /// Notifications per destination (a team's topic, as routing decides) per rolling hour.
    pub per_hour: u32,
    /// Notifications at least this severe are sent even over budget (they still use it).
    pub min_severity_to_bypass: Severity,
    /// Held notifications wait at most this long before their team's digest goes out.
    pub digest_interval_ms: i64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            per_hour: 20,
            min_severity_to_bypass: Severity::Critical,
            digest_interval_ms: HOUR_MS,
        }
    }
}

impl BudgetConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        require(
            self.per_hour > 0,
            "metafilter.budget.per_hour",
            "> 0",
            self.per_hour,
        )?;
        require(
            self.digest_interval_ms > 0,
            "metafilter.budget.digest_interval_ms",
            "> 0",
            self.digest_interval_ms,
        )
    }
}

/// What the budget decided for a notification.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    Send(Notification),
    /// Held for the team's next digest.
    Held,
}

/// What a team's budget held back since its previous digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Digest {
    pub team: String,
    /// When the first held notification arrived, and when the digest was made.
    pub from: EpochMs,
    pub to: EpochMs,
    /// Number of notifications held.
    pub notifications: u64,
    /// Distinct alerts held, by `rule` and by `actor` label ([`NO_LABEL`] when missing).
    pub by_rule: BTreeMap<String, u64>,
    pub by_actor: BTreeMap<String, u64>,
    /// Every alert of the held notifications, latest message of each, by id.
    pub alerts: Vec<Alert>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct TeamBudget {
    /// Send times within the last hour, oldest first.
    sent_at: VecDeque<EpochMs>,
    held: Vec<Notification>,
    /// When the oldest held notification arrived.
    held_since: Option<EpochMs>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    config: BudgetConfig,
    teams: BTreeMap<String, TeamBudget>,
}

impl Budget {
    pub fn new(config: BudgetConfig) -> Self {
        Budget {
            config,
            teams: BTreeMap::new(),
        }
    }

    /// Sends the notification if `team` has budget left in the last hour or the
    /// notification is severe enough to bypass it; holds it for the digest otherwise.
    pub fn admit(&mut self, team: &str, notification: Notification, now: EpochMs) -> Admission {
        let budget = self.teams.entry(team.to_owned()).or_default();
        while budget
            .sent_at
            .front()
            .is_some_and(|&sent| sent <= now - HOUR_MS)
        {
            budget.sent_at.pop_front();
        }
        let within_budget = budget.sent_at.len() < self.config.per_hour as usize;
        if within_budget || notification.severity >= self.config.min_severity_to_bypass {
            budget.sent_at.push_back(now);
            Admission::Send(notification)
        } else {
            budget.held.push(notification);
            budget.held_since.get_or_insert(now);
            Admission::Held
        }
    }

    /// The digests due at `now` (one per team whose oldest held notification waited
    /// `digest_interval_ms`), by team; their notifications are no longer held.
    pub fn digest(&mut self, now: EpochMs) -> Vec<Digest> {
        let interval = self.config.digest_interval_ms;
        let mut due = Vec::new();
        for (team, budget) in &mut self.teams {
            let Some(from) = budget.held_since else {
                continue;
            };
            if now < from + interval {
                continue;
            }
            budget.held_since = None;
            due.push(make_digest(
                team,
                std::mem::take(&mut budget.held),
                from,
                now,
            ));
        }
        // A team with nothing held and nothing sent in the last hour has no state worth
        // keeping.
        self.teams.retain(|_, budget| {
            budget.held_since.is_some() || budget.sent_at.back().is_some_and(|&t| t > now - HOUR_MS)
        });
        due
    }

    /// Number of notifications currently held, all teams.
    pub fn held(&self) -> usize {
        self.teams.values().map(|budget| budget.held.len()).sum()
    }
}

fn make_digest(team: &str, held: Vec<Notification>, from: EpochMs, to: EpochMs) -> Digest {
    let mut latest: BTreeMap<String, Alert> = BTreeMap::new();
    for alert in held.iter().flat_map(|n| &n.alerts) {
        latest.insert(alert.id.clone(), alert.clone());
    }
    let count_by = |label: &str| {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for alert in latest.values() {
            let value = alert.labels.get(label).map_or(NO_LABEL, String::as_str);
            *counts.entry(value.to_owned()).or_default() += 1;
        }
        counts
    };
    Digest {
        team: team.to_owned(),
        from,
        to,
        notifications: held.len() as u64,
        by_rule: count_by(LABEL_RULE),
        by_actor: count_by(LABEL_ACTOR),
        alerts: latest.into_values().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metafilter::tests::{alert, notification_of};

    const T0: EpochMs = 1_767_268_800_000;
    const MINUTE: EpochMs = 60_000;

    fn budget(per_hour: u32) -> Budget {
        Budget::new(BudgetConfig {
            per_hour,
            ..BudgetConfig::default()
        })
    }

    fn warning(id: &str, actor: &str, rule: &str) -> Notification {
        notification_of(alert(
            id,
            &[("actor", actor), ("rule", rule), ("team", "social")],
        ))
    }

    fn sent(admission: &Admission) -> bool {
        matches!(admission, Admission::Send(_))
    }

    #[test]
    fn over_budget_notifications_are_held_and_all_appear_in_the_digest() {
        let mut budget = budget(2);
        let n1 = warning("a1", "acme", "trend");
        let team = "signals.alerts.social".to_owned();
        assert!(sent(&budget.admit(&team, n1, T0)));
        assert!(sent(&budget.admit(
            &team,
            warning("a2", "acme", "trend"),
            T0 + MINUTE
        )));
        assert_eq!(
            budget.admit(&team, warning("a3", "acme", "trend"), T0 + 2 * MINUTE),
            Admission::Held
        );
        budget.admit(&team, warning("g1", "globex", "anomaly"), T0 + 3 * MINUTE);
        budget.admit(&team, warning("a4", "acme", "anomaly"), T0 + 4 * MINUTE);
        assert_eq!(budget.held(), 3);

        // The digest is due one interval after the first held notification.
        assert!(budget.digest(T0 + 62 * MINUTE - 1).is_empty());
        let digests = budget.digest(T0 + 62 * MINUTE);
        assert_eq!(digests.len(), 1);
        let digest = &digests[0];
        assert_eq!(digest.team, "signals.alerts.social");
        assert_eq!(
            (digest.from, digest.to),
            (T0 + 2 * MINUTE, T0 + 62 * MINUTE)
        );
        assert_eq!(digest.notifications, 3);
        let ids: Vec<&str> = digest.alerts.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["a3", "a4", "g1"]);
        assert_eq!(
            digest.by_rule,
            BTreeMap::from([("anomaly".into(), 2), ("trend".into(), 1)])
        );
        assert_eq!(
            digest.by_actor,
            BTreeMap::from([("acme".into(), 2), ("globex".into(), 1)])
        );
        assert_eq!(budget.held(), 0);
        assert!(budget.digest(T0 + 200 * MINUTE).is_empty());
    }

    #[test]
    fn the_budget_is_a_rolling_hour() {
        let mut budget = budget(1);
        assert!(sent(&budget.admit("t", warning("a", "x", "r"), T0)));
        assert!(!sent(&budget.admit(
            "t",
            warning("b", "x", "r"),
            T0 + 60 * MINUTE - 1
        )));
        assert!(sent(&budget.admit(
            "t",
            warning("c", "x", "r"),
            T0 + 60 * MINUTE
        )));
    }

    #[test]
    fn teams_have_separate_budgets() {
        let mut budget = budget(1);
        assert!(sent(&budget.admit("social", warning("a", "x", "r"), T0)));
        assert!(sent(&budget.admit("support", warning("b", "x", "r"), T0)));
        assert!(!sent(&budget.admit("social", warning("c", "x", "r"), T0)));
    }

    #[test]
    fn critical_bypasses_the_budget_but_uses_it() {
        let mut budget = budget(1);
        let mut critical = warning("c", "acme", "anomaly");
        critical.severity = Severity::Critical;
        assert!(sent(&budget.admit("t", critical.clone(), T0)));
        // Over budget now: a critical still goes out, a warning is held.
        assert!(sent(&budget.admit("t", critical, T0 + MINUTE)));
        assert_eq!(
            budget.admit("t", warning("w", "acme", "trend"), T0 + MINUTE),
            Admission::Held
        );
    }

    #[test]
    fn a_lower_bypass_severity_lets_warnings_through() {
        let mut budget = Budget::new(BudgetConfig {
            per_hour: 1,
            min_severity_to_bypass: Severity::Warning,
            ..BudgetConfig::default()
        });
        budget.admit("t", warning("a", "x", "r"), T0);
        assert!(sent(&budget.admit("t", warning("b", "x", "r"), T0)));
    }

    #[test]
    fn missing_labels_are_counted_not_lost() {
        let mut budget = budget(1);
        budget.admit("", notification_of(alert("a", &[])), T0);
        budget.admit("", notification_of(alert("b", &[])), T0);
        let digest = &budget.digest(T0 + HOUR_MS)[0];
        assert_eq!(digest.team, "");
        assert_eq!(digest.by_rule, BTreeMap::from([(NO_LABEL.into(), 1)]));
        assert_eq!(digest.alerts[0].id, "b");
    }

    #[test]
    fn rejects_a_zero_budget_naming_the_field() {
        let config = BudgetConfig {
            per_hour: 0,
            ..BudgetConfig::default()
        };
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "metafilter.budget.per_hour must be > 0, got 0"
        );
    }
}
