//! The metafilter: what stands between the alert lifecycle and the people paged, so that a
//! burst of related alerts becomes a few notifications and nothing is lost.
//!
//! [`Metafilter`] runs each alert message through, in this order:
//! 1. [`silence`]: an active silence matching the alert mutes it (`Silenced`);
//! 2. [`inhibit`]: a firing parent alert sharing the rule's `equal` labels mutes it
//!    (`Inhibited`); every message is first observed as a possible parent, so a silenced
//!    parent still inhibits its children (silencing an incident silences all of it);
//! 3. [`group`]: the alert joins its group's next [`Notification`] (`Passed` when alone in
//!    its group, `Grouped` when sharing it with others);
//! 4. [`budget`]: at [`Metafilter::flush`], each due notification uses its team's hourly
//!    budget or, over it and not severe enough to bypass, is held for the team's next
//!    [`Digest`] (its new or changed members are counted as `digested`).
//!
//! Resolves follow their firing: the first firing message of an occurrence that was
//! delivered (passed or grouped) makes its resolve delivered too, even if a silence or
//! parent appeared meanwhile, because its receivers must hear the end of what they were
//! told. A resolve whose firing was only ever muted is muted again, with the same reason.
//! A muted firing alert whose silence ended or whose parent resolved while it still fires
//! is released into its group at the next flush, as Alertmanager would notify it.
//!
//! All state is plain serializable data (configuration included) so it can be
//! checkpointed; time is the caller's `now` in every call.

pub mod budget;
pub mod group;
pub mod inhibit;
pub mod silence;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::model::{Alert, AlertStatus, EpochMs};

use budget::{Admission, Budget, BudgetConfig, Digest};
use group::{GroupConfig, Grouper, Notification, Placement};
use inhibit::{InhibitConfig, Inhibitor};
use silence::Silences;

/// Every `wanted` label is present in `labels` with the same value.
fn labels_match(labels: &BTreeMap<String, String>, wanted: &BTreeMap<String, String>) -> bool {
    wanted
        .iter()
        .all(|(label, value)| labels.get(label) == Some(value))
}

/// `[metafilter]`: inhibition rules, grouping and the attention budget. (Silences are
/// runtime data, created through the API.)
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetafilterConfig {
    pub inhibit: InhibitConfig,
    pub group: GroupConfig,
    pub budget: BudgetConfig,
}

impl MetafilterConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.inhibit.validate()?;
        self.group.validate()?;
        self.budget.validate()
    }
}

/// What [`Metafilter::push`] did with an alert message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Outcome {
    /// Goes out in its group's next notification, the only member.
    Passed,
    /// Goes out in its group's next notification, with other members.
    Grouped,
    /// Muted by the silence with this id.
    Silenced { id: String },
    /// Muted while the parent alert with this id fires.
    Inhibited { by: String },
}

/// Alert messages by what became of them, since start. The service exports
/// [`Counters::suppressed_by_reason`] as `dynsig_alerts_suppressed_total{reason}`.
///
/// A message is counted once by [`Metafilter::push`] (passed, grouped, silenced or
/// inhibited), again as passed or grouped if a muted alert is released later, and again as
/// digested if the notification that carries it is held by the budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub passed: u64,
    pub grouped: u64,
    pub silenced: u64,
    pub inhibited: u64,
    /// Messages whose notification was held for a digest (the notification's new or
    /// changed members).
    pub digested: u64,
}

impl Counters {
    /// `(reason, count)` for each way an alert message did not become a page of its own.
    pub fn suppressed_by_reason(&self) -> [(&'static str, u64); 4] {
        [
            ("silenced", self.silenced),
            ("inhibited", self.inhibited),
            ("grouped", self.grouped),
            ("digested", self.digested),
        ]
    }

    fn count(&mut self, outcome: &Outcome) {
        let counter = match outcome {
            Outcome::Passed => &mut self.passed,
            Outcome::Grouped => &mut self.grouped,
            Outcome::Silenced { .. } => &mut self.silenced,
            Outcome::Inhibited { .. } => &mut self.inhibited,
        };
        *counter += 1;
    }
}

/// What to publish after a [`Metafilter::flush`]: notifications by destination, and
/// digests (whose `team` is their destination).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Flushed {
    pub notifications: Vec<(String, Notification)>,
    pub digests: Vec<Digest>,
}

/// A firing alert that was muted and never delivered, kept to mute its resolve alike or
/// release it when its silence or parent goes away.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Muted {
    alert: Alert,
    outcome: Outcome,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metafilter {
    silences: Silences,
    inhibitor: Inhibitor,
    grouper: Grouper,
    budget: Budget,
    /// Firing alerts delivered at least once in their current occurrence.
    delivered: BTreeSet<String>,
    muted: BTreeMap<String, Muted>,
    counters: Counters,
}

impl Metafilter {
    pub fn new(config: MetafilterConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Metafilter {
            silences: Silences::default(),
            inhibitor: Inhibitor::new(config.inhibit),
            grouper: Grouper::new(config.group),
            budget: Budget::new(config.budget),
            delivered: BTreeSet::new(),
            muted: BTreeMap::new(),
            counters: Counters::default(),
        })
    }

    /// Takes one alert message (firing or resolved) from the lifecycle.
    pub fn push(&mut self, alert: Alert, now: EpochMs) -> Outcome {
        self.inhibitor.observe(&alert);
        let muting = match alert.status {
            AlertStatus::Pending | AlertStatus::Firing | AlertStatus::Updated => {
                self.muting(&alert, now)
            }
            AlertStatus::Resolved if self.delivered.remove(&alert.id) => None,
            AlertStatus::Resolved => match self.muted.remove(&alert.id) {
                Some(muted) => Some(muted.outcome),
                // An occurrence this metafilter never saw fire: judged on its own.
                None => self.muting(&alert, now),
            },
        };
        let outcome = match muting {
            Some(outcome) => {
                if alert.status.is_active() && !self.delivered.contains(&alert.id) {
                    let muted = Muted {
                        alert,
                        outcome: outcome.clone(),
                    };
                    self.muted.insert(muted.alert.id.clone(), muted);
                }
                outcome
            }
            None => self.deliver(alert, now),
        };
        self.counters.count(&outcome);
        outcome
    }

    fn muting(&self, alert: &Alert, now: EpochMs) -> Option<Outcome> {
        if let Some(id) = self.silences.is_silenced(alert, now) {
            return Some(Outcome::Silenced { id: id.to_owned() });
        }
        self.inhibitor
            .inhibited_by(alert)
            .map(|by| Outcome::Inhibited { by: by.to_owned() })
    }

    fn deliver(&mut self, alert: Alert, now: EpochMs) -> Outcome {
        if alert.status.is_active() {
            self.muted.remove(&alert.id);
            self.delivered.insert(alert.id.clone());
        }
        match self.grouper.push(alert, now) {
            Placement::Alone => Outcome::Passed,
            // Fired and resolved within one grouping wait: folded away like a grouped one.
            Placement::WithOthers | Placement::Unannounced => Outcome::Grouped,
        }
    }

    /// Releases muted alerts whose silence ended or parent resolved, forgets ended
    /// silences, and returns the notifications due at `now` that fit their destination's
    /// budget, and the digests due. `destinations` says where a notification goes (the
    /// team topics routing picks); each destination has its own budget.
    pub fn flush(
        &mut self,
        now: EpochMs,
        destinations: impl Fn(&Notification) -> Vec<String>,
    ) -> Flushed {
        let released: Vec<String> = self
            .muted
            .iter()
            .filter(|(_, muted)| self.muting(&muted.alert, now).is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in released {
            if let Some(muted) = self.muted.remove(&id) {
                let outcome = self.deliver(muted.alert, now);
                self.counters.count(&outcome);
            }
        }
        self.silences.expire(now);

        let mut flushed = Flushed::default();
        for notification in self.grouper.flush(now) {
            let held_messages = notification.changed.len() as u64;
            for destination in destinations(&notification) {
                match self.budget.admit(&destination, notification.clone(), now) {
                    Admission::Send(notification) => {
                        flushed.notifications.push((destination, notification));
                    }
                    Admission::Held => self.counters.digested += held_messages,
                }
            }
        }
        flushed.digests = self.budget.digest(now);
        flushed
    }

    pub fn silences(&self) -> &Silences {
        &self.silences
    }

    /// For `POST` and `DELETE /api/silences`.
    pub fn silences_mut(&mut self) -> &mut Silences {
        &mut self.silences
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::Severity;

    const T0: EpochMs = 1_767_268_800_000;
    const SECOND: EpochMs = 1_000;
    const WAIT: EpochMs = 30 * SECOND;
    const HOUR: EpochMs = 3_600 * SECOND;

    /// A firing warning with these labels, at [`T0`].
    pub(crate) fn alert(id: &str, labels: &[(&str, &str)]) -> Alert {
        Alert {
            id: id.to_owned(),
            dedup_key: id.to_owned(),
            status: AlertStatus::Firing,
            severity: Severity::Warning,
            title: id.to_owned(),
            summary: String::new(),
            cause: "trend".to_owned(),
            signals: Vec::new(),
            actor: None,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            active_at: T0,
            starts_at: T0,
            updated_at: T0,
            ends_at: None,
            examples: Vec::new(),
            adjustment: None,
        }
    }

    /// Each notification to its alerts' common `team` label (`""` without one): the
    /// destinations routing would pick.
    fn by_team(notification: &Notification) -> Vec<String> {
        vec![notification
            .common_labels
            .get("team")
            .cloned()
            .unwrap_or_default()]
    }

    pub(crate) fn resolved(mut alert: Alert) -> Alert {
        alert.status = AlertStatus::Resolved;
        alert
    }

    /// The notification of a group of one alert.
    pub(crate) fn notification_of(alert: Alert) -> Notification {
        Notification {
            group_key: format!("alert:{}", alert.id),
            group_labels: BTreeMap::new(),
            common_labels: alert.labels.clone(),
            status: alert.status,
            severity: alert.severity,
            changed: vec![alert.id.clone()],
            alerts: vec![alert],
            first_at: T0,
            sent_at: T0,
            sequence: 1,
        }
    }

    fn metafilter() -> Metafilter {
        Metafilter::new(MetafilterConfig::default()).unwrap()
    }

    /// An actor-wide anomaly: the parent of the actor's trend alerts.
    pub(crate) fn parent(actor: &str) -> Alert {
        alert(
            &format!("anomaly:actor={actor}"),
            &[("rule", "anomaly"), ("scope", "actor"), ("actor", actor)],
        )
    }

    fn trend(term: &str, actor: &str) -> Alert {
        alert(
            &format!("trend:word:{term}"),
            &[("rule", "trend"), ("actor", actor), ("team", "social")],
        )
    }

    fn silence(filter: &mut Metafilter, matchers: &[(&str, &str)], until: EpochMs) -> String {
        filter
            .silences_mut()
            .add(silence::tests::silence(matchers, T0, until), T0)
            .unwrap()
    }

    fn member_ids(flushed: &Flushed) -> Vec<Vec<&str>> {
        flushed
            .notifications
            .iter()
            .map(|(_, n)| n.alerts.iter().map(|a| a.id.as_str()).collect())
            .collect()
    }

    #[test]
    fn silence_comes_before_inhibition_and_both_before_grouping() {
        let mut filter = metafilter();
        assert_eq!(filter.push(parent("acme"), T0), Outcome::Passed);
        // The child is both silenced and inhibited: the silence is checked first.
        let id = silence(
            &mut filter,
            &[("actor", "acme"), ("rule", "trend")],
            T0 + HOUR,
        );
        assert_eq!(
            filter.push(trend("fire", "acme"), T0),
            Outcome::Silenced { id: id.clone() }
        );
        filter.silences_mut().delete(&id);
        assert_eq!(
            filter.push(trend("recall", "acme"), T0),
            Outcome::Inhibited {
                by: "anomaly:actor=acme".into()
            }
        );
        let mut sibling = parent("acme");
        sibling.id = "anomaly:actor=acme,terms".into();
        assert_eq!(filter.push(sibling, T0), Outcome::Grouped);

        let flushed = filter.flush(T0 + WAIT, by_team);
        assert_eq!(
            member_ids(&flushed),
            [vec!["anomaly:actor=acme", "anomaly:actor=acme,terms"]]
        );
        assert_eq!(
            filter.counters(),
            Counters {
                passed: 1,
                grouped: 1,
                silenced: 1,
                inhibited: 1,
                digested: 0
            }
        );
    }

    #[test]
    fn a_silenced_parent_still_inhibits_its_children() {
        let mut filter = metafilter();
        let id = silence(&mut filter, &[("rule", "anomaly")], T0 + HOUR);
        assert_eq!(filter.push(parent("acme"), T0), Outcome::Silenced { id });
        assert_eq!(
            filter.push(trend("fire", "acme"), T0),
            Outcome::Inhibited {
                by: "anomaly:actor=acme".into()
            }
        );
    }

    #[test]
    fn the_resolve_of_a_muted_alert_is_muted_alike() {
        let mut filter = metafilter();
        filter.push(parent("acme"), T0);
        let child = trend("fire", "acme");
        filter.push(child.clone(), T0);
        let inhibited = Outcome::Inhibited {
            by: "anomaly:actor=acme".into(),
        };
        // Even after the parent resolved, the child's resolve stays muted.
        filter.push(resolved(parent("acme")), T0 + SECOND);
        assert_eq!(filter.push(resolved(child), T0 + SECOND), inhibited);
        let flushed = filter.flush(T0 + WAIT, by_team);
        assert!(flushed
            .notifications
            .iter()
            .all(|(_, n)| n.alerts.iter().all(|a| a.id != "trend:word:fire")));
        assert_eq!(filter.counters().inhibited, 2);
    }

    #[test]
    fn the_resolve_of_a_delivered_alert_passes_despite_a_new_silence() {
        let mut filter = metafilter();
        let child = trend("fire", "acme");
        assert_eq!(filter.push(child.clone(), T0), Outcome::Passed);
        filter.flush(T0 + WAIT, by_team);
        silence(&mut filter, &[("actor", "acme")], T0 + HOUR);
        assert_eq!(filter.push(resolved(child), T0 + WAIT), Outcome::Passed);
        let flushed = filter.flush(T0 + WAIT + 300 * SECOND, by_team);
        assert_eq!(flushed.notifications.len(), 1);
        assert_eq!(flushed.notifications[0].1.status, AlertStatus::Resolved);
    }

    #[test]
    fn a_still_firing_child_is_released_when_its_parent_resolves() {
        let mut filter = metafilter();
        filter.push(parent("acme"), T0);
        filter.push(trend("fire", "acme"), T0);
        let first = filter.flush(T0 + WAIT, by_team);
        assert_eq!(member_ids(&first), [vec!["anomaly:actor=acme"]]);

        filter.push(resolved(parent("acme")), T0 + 60 * SECOND);
        let update = filter.flush(T0 + WAIT + 300 * SECOND, by_team);
        assert_eq!(
            member_ids(&update),
            [vec!["anomaly:actor=acme", "trend:word:fire"]]
        );
        // The child was counted once muted and once delivered (with the resolved parent).
        assert_eq!(
            (filter.counters().inhibited, filter.counters().grouped),
            (1, 1)
        );
        // Now delivered, its resolve passes.
        assert_eq!(
            filter.push(resolved(trend("fire", "acme")), T0 + 400 * SECOND),
            Outcome::Passed
        );
    }

    #[test]
    fn a_silenced_alert_is_released_when_the_silence_ends() {
        let mut filter = metafilter();
        silence(&mut filter, &[("actor", "acme")], T0 + 60 * SECOND);
        filter.push(trend("fire", "acme"), T0);
        assert!(filter.flush(T0 + WAIT, by_team).notifications.is_empty());
        // Released at the flush after the silence ended; then it waits for its group.
        assert!(filter
            .flush(T0 + 60 * SECOND, by_team)
            .notifications
            .is_empty());
        assert_eq!(filter.silences().all().count(), 0);
        let flushed = filter.flush(T0 + 60 * SECOND + WAIT, by_team);
        assert_eq!(member_ids(&flushed), [vec!["trend:word:fire"]]);
    }

    #[test]
    fn notifications_over_budget_end_up_in_a_digest() {
        let mut filter = Metafilter::new(MetafilterConfig {
            budget: BudgetConfig {
                per_hour: 1,
                ..BudgetConfig::default()
            },
            ..MetafilterConfig::default()
        })
        .unwrap();
        filter.push(trend("fire", "acme"), T0);
        filter.push(trend("recall", "globex"), T0);
        filter.push(trend("battery", "globex"), T0);
        let flushed = filter.flush(T0 + WAIT, by_team);
        assert_eq!(member_ids(&flushed), [vec!["trend:word:fire"]]);
        assert_eq!(filter.counters().digested, 2);

        // The held group's update (one member resolved) is held too.
        filter.push(resolved(trend("battery", "globex")), T0 + 60 * SECOND);
        assert!(filter
            .flush(T0 + WAIT + 300 * SECOND, by_team)
            .notifications
            .is_empty());
        assert_eq!(filter.counters().digested, 3);

        let later = filter.flush(T0 + WAIT + HOUR, by_team);
        assert!(later.notifications.is_empty());
        assert_eq!(later.digests.len(), 1);
        let digest = &later.digests[0];
        assert_eq!((digest.team.as_str(), digest.notifications), ("social", 2));
        let held: Vec<(&str, AlertStatus)> = digest
            .alerts
            .iter()
            .map(|a| (a.id.as_str(), a.status))
            .collect();
        assert_eq!(
            held,
            [
                ("trend:word:battery", AlertStatus::Resolved),
                ("trend:word:recall", AlertStatus::Firing)
            ]
        );
    }

    #[test]
    fn config_sections_parse_and_unknown_keys_are_refused() {
        let config: MetafilterConfig =
            serde_json::from_str(r#"{"budget":{"per_hour":5},"group":{"group_by":["team"]}}"#)
                .unwrap();
        assert_eq!(config.budget.per_hour, 5);
        assert_eq!(config.group.group_by, ["team"]);
        assert_eq!(config.inhibit, InhibitConfig::default());
        assert!(serde_json::from_str::<MetafilterConfig>(r#"{"budget":{"perhour":5}}"#).is_err());
        let invalid = MetafilterConfig {
            budget: BudgetConfig {
                digest_interval_ms: 0,
                ..BudgetConfig::default()
            },
            ..MetafilterConfig::default()
        };
        assert_eq!(
            Metafilter::new(invalid).unwrap_err().field,
            "metafilter.budget.digest_interval_ms"
        );
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut filter = metafilter();
        silence(&mut filter, &[("actor", "globex")], T0 + HOUR);
        filter.push(parent("acme"), T0);
        filter.push(trend("fire", "acme"), T0);
        filter.push(trend("x", "globex"), T0);
        let restored: Metafilter =
            serde_json::from_str(&serde_json::to_string(&filter).unwrap()).unwrap();
        assert_eq!(restored, filter);
    }
}
