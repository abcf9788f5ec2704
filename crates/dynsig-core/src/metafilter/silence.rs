//! Silences: time-bounded label matchers, created and deleted by people (through the
//! HTTP API), that mute the alerts they match while active.
//!
//! [`Silences`] owns the set of silences and the counter that names new ones. It decides
//! only whether an alert is silenced at a given time; what a silenced alert becomes
//! (counted, never lost) is [`super::Metafilter`]'s business.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{Alert, EpochMs};

use super::labels_match;

/// One silence. As a request (`POST /api/silences`), `id` may be left out: the store then
/// names it `silence-<n>`; a request naming an existing id replaces that silence (how a
/// silence is extended or edited).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Silence {
    #[serde(default)]
    pub id: String,
    /// Label → exact value; every one must match.
    #[serde(default)]
    pub matchers: BTreeMap<String, String>,
    /// Label → accepted values; for every entry the alert's label must be one of them.
    #[serde(default)]
    pub match_any: BTreeMap<String, Vec<String>>,
    /// Active from `starts_at` (inclusive) to `ends_at` (exclusive).
    pub starts_at: EpochMs,
    pub ends_at: EpochMs,
    #[serde(default)]
    pub created_by: String,
    #[serde(default)]
    pub comment: String,
}

impl Silence {
    pub fn is_active(&self, now: EpochMs) -> bool {
        self.starts_at <= now && now < self.ends_at
    }

    pub fn matches(&self, alert: &Alert) -> bool {
        labels_match(&alert.labels, &self.matchers)
            && self.match_any.iter().all(|(label, values)| {
                alert
                    .labels
                    .get(label)
                    .is_some_and(|value| values.contains(value))
            })
    }

    fn validate(&self, now: EpochMs) -> Result<(), SilenceError> {
        if self.matchers.is_empty() && self.match_any.is_empty() {
            // A silence without matchers would mute every alert.
            return Err(SilenceError::NoMatcher);
        }
        if let Some((label, _)) = self.match_any.iter().find(|(_, values)| values.is_empty()) {
            return Err(SilenceError::EmptyMatchAny {
                label: label.clone(),
            });
        }
        if self.ends_at <= self.starts_at {
            return Err(SilenceError::EndsBeforeStart {
                starts_at: self.starts_at,
                ends_at: self.ends_at,
            });
        }
        if self.ends_at <= now {
            return Err(SilenceError::AlreadyEnded {
                ends_at: self.ends_at,
                now,
            });
        }
        Ok(())
    }
}

/// Why a silence was refused; each names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SilenceError {
    #[error("silence.matchers: at least one matcher (matchers or match_any) is required")]
    NoMatcher,
    #[error("silence.match_any.{label}: must list at least one value")]
    EmptyMatchAny { label: String },
    #[error("silence.ends_at: must be after starts_at ({starts_at}), got {ends_at}")]
    EndsBeforeStart {
        starts_at: EpochMs,
        ends_at: EpochMs,
    },
    #[error("silence.ends_at: must be in the future (now {now}), got {ends_at}")]
    AlreadyEnded { ends_at: EpochMs, now: EpochMs },
}

/// All silences, by id (ordered, so that the first matching silence is deterministic).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Silences {
    by_id: BTreeMap<String, Silence>,
    /// Number of ids assigned so far; the next one is `silence-<assigned + 1>`.
    assigned: u64,
}

impl Silences {
    /// Adds (or, for an existing id, replaces) a silence and returns its id.
    pub fn add(&mut self, mut silence: Silence, now: EpochMs) -> Result<String, SilenceError> {
        silence.validate(now)?;
        if silence.id.is_empty() {
            silence.id = self.next_free_id();
        }
        let id = silence.id.clone();
        self.by_id.insert(id.clone(), silence);
        Ok(id)
    }

    /// Skips ids a caller already chose, so that an assigned id never replaces a silence.
    fn next_free_id(&mut self) -> String {
        loop {
            self.assigned += 1;
            let id = format!("silence-{}", self.assigned);
            if !self.by_id.contains_key(&id) {
                return id;
            }
        }
    }

    /// Removes a silence; `None` when no silence has that id.
    pub fn delete(&mut self, id: &str) -> Option<Silence> {
        self.by_id.remove(id)
    }

    pub fn get(&self, id: &str) -> Option<&Silence> {
        self.by_id.get(id)
    }

    /// Every silence, pending, active or ended but not yet expired, by id.
    pub fn all(&self) -> impl Iterator<Item = &Silence> {
        self.by_id.values()
    }

    /// The silences in force at `now`, by id.
    pub fn active(&self, now: EpochMs) -> impl Iterator<Item = &Silence> {
        self.by_id.values().filter(move |s| s.is_active(now))
    }

    /// Forgets the silences that ended at or before `now` and returns them.
    pub fn expire(&mut self, now: EpochMs) -> Vec<Silence> {
        let ended: Vec<String> = self
            .by_id
            .values()
            .filter(|s| s.ends_at <= now)
            .map(|s| s.id.clone())
            .collect();
        ended
            .iter()
            .filter_map(|id| self.by_id.remove(id))
            .collect()
    }

    /// The id of the first active silence matching `alert`, if any.
    pub fn is_silenced(&self, alert: &Alert, now: EpochMs) -> Option<&str> {
        self.active(now)
            .find(|s| s.matches(alert))
            .map(|s| s.id.as_str())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::metafilter::tests::alert;

    const HOUR: EpochMs = 3_600_000;
    const T0: EpochMs = 1_767_268_800_000;

    /// A silence with exact `matchers` over `[starts_at, ends_at)`.
    pub(crate) fn silence(
        matchers: &[(&str, &str)],
        starts_at: EpochMs,
        ends_at: EpochMs,
    ) -> Silence {
        Silence {
            id: String::new(),
            matchers: matchers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            match_any: BTreeMap::new(),
            starts_at,
            ends_at,
            created_by: "ops".into(),
            comment: "maintenance".into(),
        }
    }

    #[test]
    fn assigns_counter_ids_and_matches_every_exact_matcher() {
        let mut silences = Silences::default();
        let first = silences
            .add(silence(&[("actor", "acme")], T0, T0 + HOUR), T0)
            .unwrap();
        let second = silences
            .add(
                silence(&[("actor", "globex"), ("rule", "trend")], T0, T0 + HOUR),
                T0,
            )
            .unwrap();
        assert_eq!(
            (first.as_str(), second.as_str()),
            ("silence-1", "silence-2")
        );

        let acme = alert("trend:word:fire", &[("actor", "acme"), ("rule", "trend")]);
        assert_eq!(silences.is_silenced(&acme, T0), Some("silence-1"));
        let globex_trend = alert("trend:word:x", &[("actor", "globex"), ("rule", "trend")]);
        assert_eq!(silences.is_silenced(&globex_trend, T0), Some("silence-2"));
        // All matchers must hold: rule differs.
        let globex_anomaly = alert("anomaly:x", &[("actor", "globex"), ("rule", "anomaly")]);
        assert_eq!(silences.is_silenced(&globex_anomaly, T0), None);
        // A missing label never matches.
        assert_eq!(silences.is_silenced(&alert("a", &[]), T0), None);
    }

    #[test]
    fn match_any_accepts_any_listed_value() {
        let mut silences = Silences::default();
        let mut s = silence(&[("actor", "acme")], T0, T0 + HOUR);
        s.match_any
            .insert("rule".into(), vec!["trend".into(), "anomaly".into()]);
        silences.add(s, T0).unwrap();
        let trend = alert("t", &[("actor", "acme"), ("rule", "trend")]);
        let anomaly = alert("a", &[("actor", "acme"), ("rule", "anomaly")]);
        let other = alert("o", &[("actor", "acme"), ("rule", "budget")]);
        assert_eq!(silences.is_silenced(&trend, T0), Some("silence-1"));
        assert_eq!(silences.is_silenced(&anomaly, T0), Some("silence-1"));
        assert_eq!(silences.is_silenced(&other, T0), None);
    }

    #[test]
    fn active_only_between_start_inclusive_and_end_exclusive() {
        let mut silences = Silences::default();
        silences
            .add(silence(&[("actor", "acme")], T0 + HOUR, T0 + 2 * HOUR), T0)
            .unwrap();
        let acme = alert("t", &[("actor", "acme")]);
        assert_eq!(silences.is_silenced(&acme, T0), None);
        assert_eq!(silences.is_silenced(&acme, T0 + HOUR), Some("silence-1"));
        assert_eq!(
            silences.is_silenced(&acme, T0 + 2 * HOUR - 1),
            Some("silence-1")
        );
        assert_eq!(silences.is_silenced(&acme, T0 + 2 * HOUR), None);
        assert_eq!(silences.active(T0).count(), 0);
        assert_eq!(silences.active(T0 + HOUR).count(), 1);
    }

    #[test]
    fn expire_forgets_only_ended_silences() {
        let mut silences = Silences::default();
        silences
            .add(silence(&[("actor", "a")], T0, T0 + HOUR), T0)
            .unwrap();
        silences
            .add(silence(&[("actor", "b")], T0, T0 + 2 * HOUR), T0)
            .unwrap();
        let expired = silences.expire(T0 + HOUR);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].id, "silence-1");
        let left: Vec<&str> = silences.all().map(|s| s.id.as_str()).collect();
        assert_eq!(left, ["silence-2"]);
    }

    #[test]
    fn delete_removes_by_id_and_unmutes() {
        let mut silences = Silences::default();
        let id = silences
            .add(silence(&[("actor", "acme")], T0, T0 + HOUR), T0)
            .unwrap();
        let acme = alert("t", &[("actor", "acme")]);
        assert!(silences.is_silenced(&acme, T0).is_some());
        assert_eq!(silences.delete(&id).map(|s| s.id), Some(id.clone()));
        assert_eq!(silences.is_silenced(&acme, T0), None);
        assert_eq!(silences.delete(&id), None);
    }

    #[test]
    fn a_given_id_replaces_and_assigned_ids_skip_taken_ones() {
        let mut silences = Silences::default();
        let mut chosen = silence(&[("actor", "acme")], T0, T0 + HOUR);
        chosen.id = "silence-1".into();
        silences.add(chosen.clone(), T0).unwrap();
        assert_eq!(
            silences
                .add(silence(&[("actor", "b")], T0, T0 + HOUR), T0)
                .unwrap(),
            "silence-2"
        );
        chosen.ends_at = T0 + 3 * HOUR;
        assert_eq!(silences.add(chosen, T0).unwrap(), "silence-1");
        assert_eq!(silences.get("silence-1").unwrap().ends_at, T0 + 3 * HOUR);
        assert_eq!(silences.all().count(), 2);
    }

    #[test]
    fn refuses_silences_without_matchers_or_with_bad_times() {
        let mut silences = Silences::default();
        assert_eq!(
            silences.add(silence(&[], T0, T0 + HOUR), T0),
            Err(SilenceError::NoMatcher)
        );
        assert_eq!(
            silences.add(silence(&[("actor", "a")], T0, T0), T0),
            Err(SilenceError::EndsBeforeStart {
                starts_at: T0,
                ends_at: T0
            })
        );
        assert_eq!(
            silences.add(silence(&[("actor", "a")], T0 - 2 * HOUR, T0 - HOUR), T0),
            Err(SilenceError::AlreadyEnded {
                ends_at: T0 - HOUR,
                now: T0
            })
        );
        let mut empty_any = silence(&[], T0, T0 + HOUR);
        empty_any.match_any.insert("rule".into(), vec![]);
        let error = silences.add(empty_any, T0).unwrap_err();
        assert_eq!(
            error.to_string(),
            "silence.match_any.rule: must list at least one value"
        );
        assert_eq!(silences.all().count(), 0);
    }

    #[test]
    fn a_request_without_id_parses_and_unknown_fields_are_refused() {
        let request = r#"{"matchers":{"actor":"acme"},"starts_at":1,"ends_at":2}"#;
        let parsed: Silence = serde_json::from_str(request).unwrap();
        assert_eq!(parsed.id, "");
        assert_eq!(parsed.matchers["actor"], "acme");
        let typo = r#"{"matcher":{"actor":"acme"},"starts_at":1,"ends_at":2}"#;
        assert!(serde_json::from_str::<Silence>(typo).is_err());
    }
}
