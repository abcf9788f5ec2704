//! Inhibition, as in Alertmanager: while a source (parent) alert fires, the target (child)
//! alerts that share its `equal` labels are muted, because the parent already tells the
//! story (an actor-wide volume anomaly makes each of that actor's trending terms noise).
//!
//! [`Inhibitor`] owns the rules and the set of firing source alerts, learnt from the
//! stream of alerts passing through ([`Inhibitor::observe`]); it answers which source, if
//! any, inhibits an alert ([`Inhibitor::inhibited_by`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{require, ConfigError};
use crate::model::Alert;
use crate::routing::{LABEL_ACTOR, LABEL_RULE};

use super::labels_match;

/// `[metafilter.inhibit]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InhibitConfig {
    pub rules: Vec<InhibitRule>,
}

/// The label saying what an anomaly alert measures; [`SCOPE_ACTOR`] marks a series about
/// one actor as a whole (its volume), which the default inhibition rule treats as parent.
pub const LABEL_SCOPE: &str = "scope";
pub const SCOPE_ACTOR: &str = "actor";

impl Default for InhibitConfig {
    /// One rule: an actor-wide anomaly (`rule=anomaly`, `scope=actor`) inhibits the trend
    /// alerts (`rule=trend`) about the same `actor`.
    fn default() -> Self {
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        InhibitConfig {
            rules: vec![InhibitRule {
                source_match: labels(&[(LABEL_RULE, "anomaly"), (LABEL_SCOPE, SCOPE_ACTOR)]),
                target_match: labels(&[(LABEL_RULE, "trend")]),
                equal: vec![LABEL_ACTOR.into()],
            }],
        }
    }
}

impl InhibitConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for rule in &self.rules {
            // An empty matcher matches every alert: an empty target would mute everything
            // while any source fires, an empty source would let any alert mute.
            require(
                !rule.source_match.is_empty(),
                "metafilter.inhibit.rules.source_match",
                "non-empty",
                "{}",
            )?;
            require(
                !rule.target_match.is_empty(),
                "metafilter.inhibit.rules.target_match",
                "non-empty",
                "{}",
            )?;
        }
        Ok(())
    }
}

/// Alerts matching `target_match` are muted while an alert matching `source_match` fires
/// with the same values of the `equal` labels. Both must carry each `equal` label (unlike
/// Alertmanager, where two missing labels count as equal): an alert about no actor is
/// never muted by an anomaly of some actor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InhibitRule {
    pub source_match: BTreeMap<String, String>,
    pub target_match: BTreeMap<String, String>,
    #[serde(default)]
    pub equal: Vec<String>,
}

impl InhibitRule {
    fn inhibits(&self, source: &Alert, target: &Alert) -> bool {
        source.id != target.id
            && labels_match(&source.labels, &self.source_match)
            && labels_match(&target.labels, &self.target_match)
            && self.equal.iter().all(|label| {
                matches!(
                    (source.labels.get(label), target.labels.get(label)),
                    (Some(a), Some(b)) if a == b
                )
            })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Inhibitor {
    config: InhibitConfig,
    /// The firing alerts that match some rule's `source_match`, by id (latest message).
    firing_sources: BTreeMap<String, Alert>,
}

impl Inhibitor {
    pub fn new(config: InhibitConfig) -> Self {
        Inhibitor {
            config,
            firing_sources: BTreeMap::new(),
        }
    }

    /// Learns from an alert message whether a source starts or stops firing. Every alert
    /// is observed, muted or not: a silenced parent still stands for its incident.
    pub fn observe(&mut self, alert: &Alert) {
        let is_source = self
            .config
            .rules
            .iter()
            .any(|rule| labels_match(&alert.labels, &rule.source_match));
        if is_source && alert.status.is_active() {
            self.firing_sources.insert(alert.id.clone(), alert.clone());
        } else {
            self.firing_sources.remove(&alert.id);
        }
    }

    /// The id of the first (by id) firing source that inhibits `alert`, if any.
    pub fn inhibited_by(&self, alert: &Alert) -> Option<&str> {
        self.firing_sources
            .values()
            .find(|source| {
                self.config
                    .rules
                    .iter()
                    .any(|rule| rule.inhibits(source, alert))
            })
            .map(|source| source.id.as_str())
    }

    /// Ids of the firing source alerts.
    pub fn firing_sources(&self) -> impl Iterator<Item = &str> {
        self.firing_sources.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metafilter::tests::{alert, parent as actor_anomaly, resolved};

    fn trend(term: &str, actor: &str) -> Alert {
        alert(
            &format!("trend:word:{term}"),
            &[("rule", "trend"), ("actor", actor), ("term", term)],
        )
    }

    #[test]
    fn a_firing_actor_anomaly_mutes_that_actors_trends_until_it_resolves() {
        let mut inhibitor = Inhibitor::new(InhibitConfig::default());
        let fire = trend("fire", "acme");
        assert_eq!(inhibitor.inhibited_by(&fire), None);

        let parent = actor_anomaly("acme");
        inhibitor.observe(&parent);
        assert_eq!(inhibitor.inhibited_by(&fire), Some("anomaly:actor=acme"));
        // Another actor's trend, and the parent itself, are not muted.
        assert_eq!(inhibitor.inhibited_by(&trend("fire", "globex")), None);
        assert_eq!(inhibitor.inhibited_by(&parent), None);

        inhibitor.observe(&resolved(parent));
        assert_eq!(inhibitor.inhibited_by(&fire), None);
        assert_eq!(inhibitor.firing_sources().count(), 0);
    }

    #[test]
    fn the_equal_label_must_be_present_on_both() {
        let mut inhibitor = Inhibitor::new(InhibitConfig::default());
        inhibitor.observe(&actor_anomaly("acme"));
        let no_actor = alert("trend:word:x", &[("rule", "trend")]);
        assert_eq!(inhibitor.inhibited_by(&no_actor), None);
    }

    #[test]
    fn only_source_matching_alerts_are_tracked() {
        let mut inhibitor = Inhibitor::new(InhibitConfig::default());
        // A series anomaly of the actor (no scope=actor) is not a parent.
        inhibitor.observe(&alert(
            "anomaly:posts.source=x",
            &[("rule", "anomaly"), ("actor", "acme")],
        ));
        assert_eq!(inhibitor.firing_sources().count(), 0);
        assert_eq!(inhibitor.inhibited_by(&trend("fire", "acme")), None);
    }

    #[test]
    fn rejects_empty_matchers_naming_the_field() {
        let mut config = InhibitConfig::default();
        config.rules[0].target_match.clear();
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "metafilter.inhibit.rules.target_match must be non-empty, got {}"
        );
        assert!(InhibitConfig::default().validate().is_ok());
    }
}
