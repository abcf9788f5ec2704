//! Hivemind: the people who receive alerts tune them. Each verdict on an alert (`useful`
//! or `noise`) moves a multiplier on the firing threshold of the alert's rule (a small
//! step: one series' noise says little about the rule) and of its series (a larger step).
//! Noise raises the threshold, useful lowers it; each multiplier stays within
//! `[min_factor, max_factor]` and decays back to 1 with `half_life_ms`, so old opinions
//! fade and no vote mutes a rule for good.
//!
//! [`Hivemind`] owns the adjustments and the votes already counted (one person's repeated
//! verdict on the same alert counts once). Applying the factor to a threshold is the
//! caller's business: [`Hivemind::threshold_factor`] is what the rule's threshold is
//! multiplied by.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::alert::Rule;
use crate::config::{require, ConfigError};
use crate::model::EpochMs;

/// `[feedback]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeedbackConfig {
    /// How much one vote moves its rule's multiplier.
    pub rule_step: f64,
    /// How much one vote moves its series' multiplier.
    pub series_step: f64,
    /// Bounds of each multiplier and of their product.
    pub min_factor: f64,
    pub max_factor: f64,
    /// Time for an adjustment to decay halfway back to 1.
    pub half_life_ms: i64,
    /// How long a counted vote is remembered to refuse its repetitions.
    pub vote_memory_ms: i64,
}

const DAY_MS: i64 = 86_400_000;

impl Default for FeedbackConfig {
    fn default() -> Self {
        FeedbackConfig {
            rule_step: 0.02,
            series_step: 0.1,
            min_factor: 0.8,
            max_factor: 1.5,
            half_life_ms: 7 * DAY_MS,
            vote_memory_ms: 30 * DAY_MS,
        }
    }
}

impl FeedbackConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let is_step = |x: f64| x > 0.0 && x <= 1.0;
        require(
            is_step(self.rule_step),
            "feedback.rule_step",
            "in (0, 1]",
            self.rule_step,
        )?;
        require(
            is_step(self.series_step),
            "feedback.series_step",
            "in (0, 1]",
            self.series_step,
        )?;
        require(
            self.min_factor > 0.0 && self.min_factor <= 1.0,
            "feedback.min_factor",
            "in (0, 1]",
            self.min_factor,
        )?;
        require(
            self.max_factor >= 1.0,
            "feedback.max_factor",
            ">= 1",
            self.max_factor,
        )?;
        require(
            self.half_life_ms > 0,
            "feedback.half_life_ms",
            "> 0",
            self.half_life_ms,
        )?;
        require(
            self.vote_memory_ms > 0,
            "feedback.vote_memory_ms",
            "> 0",
            self.vote_memory_ms,
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Useful,
    Noise,
}

/// One verdict, as `signals.feedback` and `POST /api/feedback` carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feedback {
    pub alert_id: String,
    pub verdict: Verdict,
    pub who: String,
    /// When the person voted; a time after `now` counts as `now`, and so does a missing
    /// one.
    #[serde(default = "unknown_time")]
    pub at: EpochMs,
}

/// A vote without a time counts as cast now (see [`Feedback::at`]).
fn unknown_time() -> EpochMs {
    EpochMs::MAX
}

/// What a verdict is about: the alert's rule (`trend`, `anomaly`) and series (its dedup
/// key). The caller resolves it from the alert the feedback names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    pub rule: String,
    pub series: String,
}

impl Subject {
    /// From an alert's id, `<dedup_key>@<starts_at>` (see [`crate::model::Alert`]): the
    /// rule is the dedup key's prefix. Works for any occurrence, even long resolved, and
    /// `None` for an id of another shape.
    pub fn of_alert_id(id: &str) -> Option<Subject> {
        let (dedup_key, starts_at) = id.rsplit_once('@')?;
        starts_at.parse::<EpochMs>().ok()?;
        let rule = Rule::of_key(dedup_key)?;
        Some(Subject {
            rule: rule.as_str().to_owned(),
            series: dedup_key.to_owned(),
        })
    }
}

/// A verdict that cannot be recorded; names the empty field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: must not be empty")]
pub struct FeedbackError {
    pub field: &'static str,
}

/// The result of [`Hivemind::record`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Adjustment {
    pub subject: Subject,
    /// False when the same person had already given this verdict on this alert.
    pub counted: bool,
    pub rule_factor: f64,
    pub series_factor: f64,
    /// What the threshold is multiplied by: the product, within the bounds.
    pub factor: f64,
}

/// Whether a sampled factor belongs to a rule or a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Rule,
    Series,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Rule => "rule",
            Scope::Series => "series",
        }
    }
}

/// One current multiplier, for `dynsig_feedback_threshold_factor{scope, key}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FactorSample {
    pub scope: Scope,
    pub key: String,
    pub factor: f64,
}

/// A multiplier's distance from 1 as of `at`, and the votes that made it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Offset {
    value: f64,
    at: EpochMs,
    noise: u32,
    useful: u32,
}

/// Below this distance from 1, an adjustment has decayed away and is forgotten.
const NEGLIGIBLE: f64 = 1e-3;

impl Offset {
    fn decayed(&self, now: EpochMs, half_life_ms: i64) -> f64 {
        let elapsed = (now - self.at).max(0) as f64;
        self.value * 0.5f64.powf(elapsed / half_life_ms as f64)
    }

    fn factor(&self, now: EpochMs, config: &FeedbackConfig) -> f64 {
        1.0 + self.decayed(now, config.half_life_ms)
    }

    /// Decays to `now` (never backwards: a late vote lands at the latest time) and moves
    /// by `step`, within the bounds.
    fn vote(&mut self, verdict: Verdict, step: f64, now: EpochMs, config: &FeedbackConfig) {
        let at = now.max(self.at);
        let signed = match verdict {
            Verdict::Noise => {
                self.noise += 1;
                step
            }
            Verdict::Useful => {
                self.useful += 1;
                -step
            }
        };
        self.value = (self.decayed(at, config.half_life_ms) + signed)
            .clamp(config.min_factor - 1.0, config.max_factor - 1.0);
        self.at = at;
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Vote {
    verdict: Verdict,
    at: EpochMs,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Hivemind {
    config: FeedbackConfig,
    rules: BTreeMap<String, Offset>,
    series: BTreeMap<String, Offset>,
    /// Alert id → voter → their counted verdict.
    votes: BTreeMap<String, BTreeMap<String, Vote>>,
}

impl Hivemind {
    pub fn new(config: FeedbackConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Hivemind {
            config,
            rules: BTreeMap::new(),
            series: BTreeMap::new(),
            votes: BTreeMap::new(),
        })
    }

    /// Counts a verdict on the alert about `subject`. A person repeating their verdict on
    /// the same alert is not counted again; changing it counts the new one (which moves
    /// the factors back).
    pub fn record(
        &mut self,
        feedback: &Feedback,
        subject: &Subject,
        now: EpochMs,
    ) -> Result<Adjustment, FeedbackError> {
        for (value, field) in [
            (&feedback.alert_id, "feedback.alert_id"),
            (&feedback.who, "feedback.who"),
            (&subject.rule, "feedback.rule"),
            (&subject.series, "feedback.series"),
        ] {
            if value.is_empty() {
                return Err(FeedbackError { field });
            }
        }
        let at = feedback.at.min(now);
        let voters = self.votes.entry(feedback.alert_id.clone()).or_default();
        let repeated = voters
            .get(&feedback.who)
            .is_some_and(|vote| vote.verdict == feedback.verdict);
        if !repeated {
            voters.insert(
                feedback.who.clone(),
                Vote {
                    verdict: feedback.verdict,
                    at,
                },
            );
            let config = &self.config;
            self.rules.entry(subject.rule.clone()).or_default().vote(
                feedback.verdict,
                config.rule_step,
                at,
                config,
            );
            self.series.entry(subject.series.clone()).or_default().vote(
                feedback.verdict,
                config.series_step,
                at,
                config,
            );
        }
        Ok(Adjustment {
            subject: subject.clone(),
            counted: !repeated,
            rule_factor: self.scope_factor(&self.rules, &subject.rule, now),
            series_factor: self.scope_factor(&self.series, &subject.series, now),
            factor: self.threshold_factor(&subject.rule, &subject.series, now),
        })
    }

    fn scope_factor(&self, offsets: &BTreeMap<String, Offset>, key: &str, now: EpochMs) -> f64 {
        offsets
            .get(key)
            .map_or(1.0, |offset| offset.factor(now, &self.config))
    }

    /// What the firing threshold of `rule` on `series` is multiplied by at `now`.
    pub fn threshold_factor(&self, rule: &str, series: &str, now: EpochMs) -> f64 {
        (self.scope_factor(&self.rules, rule, now) * self.scope_factor(&self.series, series, now))
            .clamp(self.config.min_factor, self.config.max_factor)
    }

    /// A sentence for the alert's explanation, e.g. "threshold raised ×1.20 after 2 noise
    /// votes on this series and 2 noise votes on rule trend"; `None` when unadjusted.
    pub fn explain(&self, rule: &str, series: &str, now: EpochMs) -> Option<String> {
        let factor = self.threshold_factor(rule, series, now);
        if (factor - 1.0).abs() < NEGLIGIBLE {
            return None;
        }
        let direction = if factor > 1.0 { "raised" } else { "lowered" };
        let mut reasons = Vec::new();
        if let Some(offset) = self.series.get(series) {
            reasons.push(format!("{} on this series", votes_phrase(offset)));
        }
        if let Some(offset) = self.rules.get(rule) {
            reasons.push(format!("{} on rule {rule}", votes_phrase(offset)));
        }
        Some(format!(
            "threshold {direction} ×{factor:.2} after {}",
            reasons.join(" and ")
        ))
    }

    /// Every multiplier not yet decayed away, rules then series, by key.
    pub fn factors(&self, now: EpochMs) -> Vec<FactorSample> {
        let sample = |scope: Scope, offsets: &BTreeMap<String, Offset>| {
            offsets
                .iter()
                .map(move |(key, offset)| FactorSample {
                    scope,
                    key: key.clone(),
                    factor: offset.factor(now, &self.config),
                })
                .collect::<Vec<_>>()
        };
        let mut samples = sample(Scope::Rule, &self.rules);
        samples.extend(sample(Scope::Series, &self.series));
        samples
    }

    /// Forgets adjustments that decayed to within 0.001 of 1 (with their vote counts) and
    /// votes older than `vote_memory_ms`, so that state stays bounded.
    pub fn expire(&mut self, now: EpochMs) {
        let half_life_ms = self.config.half_life_ms;
        for offsets in [&mut self.rules, &mut self.series] {
            offsets.retain(|_, offset| offset.decayed(now, half_life_ms).abs() >= NEGLIGIBLE);
        }
        let oldest_kept = now - self.config.vote_memory_ms;
        self.votes.retain(|_, voters| {
            voters.retain(|_, vote| vote.at > oldest_kept);
            !voters.is_empty()
        });
    }
}

fn votes_phrase(offset: &Offset) -> String {
    let count = |n: u32, verdict: &str| match n {
        1 => format!("1 {verdict} vote"),
        n => format!("{n} {verdict} votes"),
    };
    match (offset.noise, offset.useful) {
        (noise, 0) => count(noise, "noise"),
        (0, useful) => count(useful, "useful"),
        (noise, useful) => format!("{noise} noise and {}", count(useful, "useful")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: EpochMs = 1_767_268_800_000;
    const HALF_LIFE: EpochMs = 7 * DAY_MS;

    fn hivemind() -> Hivemind {
        Hivemind::new(FeedbackConfig::default()).unwrap()
    }

    fn subject() -> Subject {
        Subject {
            rule: "trend".into(),
            series: "trend:word:fire".into(),
        }
    }

    fn vote(alert_id: &str, who: &str, verdict: Verdict) -> Feedback {
        Feedback {
            alert_id: alert_id.into(),
            verdict,
            who: who.into(),
            at: T0,
        }
    }

    fn assert_close(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() < 1e-9,
            "expected {expected}, got {actual}"
        );
    }

    #[test]
    fn noise_raises_and_useful_lowers_the_rule_and_series_factors() {
        let mut hive = hivemind();
        let raised = hive
            .record(&vote("a1", "ann", Verdict::Noise), &subject(), T0)
            .unwrap();
        assert!(raised.counted);
        assert_close(raised.rule_factor, 1.02);
        assert_close(raised.series_factor, 1.1);
        assert_close(raised.factor, 1.02 * 1.1);
        // Another series of the rule only gets the rule's share.
        assert_close(hive.threshold_factor("trend", "trend:word:other", T0), 1.02);

        let mut other = subject();
        other.series = "trend:word:recall".into();
        let lowered = hive
            .record(&vote("a2", "ann", Verdict::Useful), &other, T0)
            .unwrap();
        assert_close(lowered.rule_factor, 1.0);
        assert_close(lowered.series_factor, 0.9);
        assert_close(hive.threshold_factor("anomaly", "anything", T0), 1.0);
    }

    #[test]
    fn factors_stay_within_the_bounds() {
        let mut hive = hivemind();
        for i in 0..20 {
            hive.record(&vote("a", &format!("p{i}"), Verdict::Noise), &subject(), T0)
                .unwrap();
        }
        assert_close(hive.threshold_factor("trend", "trend:word:fire", T0), 1.5);
        for i in 0..40 {
            hive.record(
                &vote("b", &format!("p{i}"), Verdict::Useful),
                &subject(),
                T0,
            )
            .unwrap();
        }
        assert_close(hive.threshold_factor("trend", "trend:word:fire", T0), 0.8);
    }

    #[test]
    fn adjustments_decay_back_to_one_with_the_half_life() {
        let mut hive = hivemind();
        hive.record(&vote("a", "ann", Verdict::Noise), &subject(), T0)
            .unwrap();
        assert_close(
            hive.threshold_factor("nope", "trend:word:fire", T0 + HALF_LIFE),
            1.05,
        );
        assert_close(
            hive.threshold_factor("nope", "trend:word:fire", T0 + 2 * HALF_LIFE),
            1.025,
        );
        // A later vote starts from the decayed value.
        let later = hive
            .record(
                &Feedback {
                    at: T0 + HALF_LIFE,
                    ..vote("b", "bob", Verdict::Noise)
                },
                &subject(),
                T0 + HALF_LIFE,
            )
            .unwrap();
        assert_close(later.series_factor, 1.15);
    }

    #[test]
    fn one_persons_repeated_verdict_on_an_alert_counts_once() {
        let mut hive = hivemind();
        let noise = vote("a", "ann", Verdict::Noise);
        assert!(hive.record(&noise, &subject(), T0).unwrap().counted);
        let again = hive.record(&noise, &subject(), T0).unwrap();
        assert!(!again.counted);
        assert_close(again.series_factor, 1.1);
        // Another person, or the same person on another alert, counts.
        assert!(
            hive.record(&vote("a", "bob", Verdict::Noise), &subject(), T0)
                .unwrap()
                .counted
        );
        assert!(
            hive.record(&vote("b", "ann", Verdict::Noise), &subject(), T0)
                .unwrap()
                .counted
        );
        assert_close(hive.threshold_factor("x", "trend:word:fire", T0), 1.3);
        // Changing one's mind counts, and moves back.
        let changed = hive
            .record(&vote("a", "ann", Verdict::Useful), &subject(), T0)
            .unwrap();
        assert!(changed.counted);
        assert_close(changed.series_factor, 1.2);
    }

    #[test]
    fn explains_the_adjustment_with_its_votes() {
        let mut hive = hivemind();
        assert_eq!(hive.explain("trend", "trend:word:fire", T0), None);
        for who in ["ann", "bob"] {
            hive.record(&vote("a", who, Verdict::Noise), &subject(), T0)
                .unwrap();
        }
        assert_eq!(
            hive.explain("trend", "trend:word:fire", T0).unwrap(),
            "threshold raised ×1.25 after 2 noise votes on this series and 2 noise votes on rule trend"
        );
        for who in ["cat", "dan", "eve", "fay", "gus"] {
            hive.record(&vote("a", who, Verdict::Useful), &subject(), T0)
                .unwrap();
        }
        assert_eq!(
            hive.explain("trend", "trend:word:fire", T0).unwrap(),
            // Series 0.8 (bounded), rule 0.94: their product 0.75 is bounded to 0.80.
            "threshold lowered ×0.80 after 2 noise and 5 useful votes on this series and 2 noise and 5 useful votes on rule trend"
        );
    }

    #[test]
    fn factors_snapshot_and_expire_keep_state_bounded() {
        let mut hive = hivemind();
        hive.record(&vote("a", "ann", Verdict::Noise), &subject(), T0)
            .unwrap();
        let samples = hive.factors(T0);
        assert_eq!(samples.len(), 2);
        assert_eq!(
            (samples[0].scope, samples[0].key.as_str()),
            (Scope::Rule, "trend")
        );
        assert_close(samples[0].factor, 1.02);
        assert_eq!(
            (samples[1].scope, samples[1].key.as_str()),
            (Scope::Series, "trend:word:fire")
        );

        // The rule's 0.02 decays below 0.001 after ~4.3 half-lives, the series' 0.1 after ~6.7.
        hive.expire(T0 + 5 * HALF_LIFE);
        let left: Vec<Scope> = hive
            .factors(T0 + 5 * HALF_LIFE)
            .iter()
            .map(|s| s.scope)
            .collect();
        assert_eq!(left, [Scope::Series]);
    }

    #[test]
    fn a_vote_is_remembered_for_the_vote_memory() {
        let mut hive = hivemind();
        let noise = vote("a", "ann", Verdict::Noise);
        hive.record(&noise, &subject(), T0).unwrap();
        hive.expire(T0 + 30 * DAY_MS - 1);
        assert!(
            !hive
                .record(&noise, &subject(), T0 + 30 * DAY_MS - 1)
                .unwrap()
                .counted
        );
        hive.expire(T0 + 30 * DAY_MS);
        assert!(
            hive.record(&noise, &subject(), T0 + 30 * DAY_MS)
                .unwrap()
                .counted
        );
    }

    #[test]
    fn refuses_a_verdict_without_voter_and_bad_config() {
        let mut hive = hivemind();
        let error = hive
            .record(&vote("a", "", Verdict::Noise), &subject(), T0)
            .unwrap_err();
        assert_eq!(error.to_string(), "feedback.who: must not be empty");
        assert_eq!(hive.factors(T0), []);
        let config = FeedbackConfig {
            max_factor: 0.9,
            ..FeedbackConfig::default()
        };
        assert_eq!(
            Hivemind::new(config).unwrap_err().field,
            "feedback.max_factor"
        );
    }

    #[test]
    fn subject_of_an_alert_id_is_its_rule_and_dedup_key() {
        assert_eq!(
            Subject::of_alert_id("trend:mention:@acme@1767268860000"),
            Some(Subject {
                rule: "trend".into(),
                series: "trend:mention:@acme".into()
            })
        );
        assert_eq!(
            Subject::of_alert_id("anomaly:posts.source=x@5").map(|s| s.rule),
            Some("anomaly".into())
        );
        assert_eq!(Subject::of_alert_id("anomaly:posts.source=x"), None);
        assert_eq!(Subject::of_alert_id("other:x@5"), None);
    }

    #[test]
    fn state_round_trips_through_json_and_feedback_parses() {
        let mut hive = hivemind();
        hive.record(&vote("a", "ann", Verdict::Noise), &subject(), T0)
            .unwrap();
        let restored: Hivemind =
            serde_json::from_str(&serde_json::to_string(&hive).unwrap()).unwrap();
        assert_eq!(restored, hive);
        let parsed: Feedback =
            serde_json::from_str(r#"{"alert_id":"a","verdict":"noise","who":"ann","at":5}"#)
                .unwrap();
        assert_eq!(parsed.verdict, Verdict::Noise);
    }
}
