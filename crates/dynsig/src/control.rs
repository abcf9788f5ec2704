//! The engine's control plane: how the rest of the service reads and changes the engine
//! that the transform stage owns.
//!
//! The engine is single-owner state on the hot path, so nothing else locks it:
//! - changes (silences, feedback, a reloaded catalog) are [`Command`]s sent over a channel;
//!   the transform stage applies them between records ([`apply`]) and answers on a
//!   oneshot, so a change is ordered with the records around it;
//! - reads go to a [`ReadModel`] the transform stage republishes after each flush and
//!   command ([`ReadModelWriter`]): HTTP reads never wait for the engine, and the engine
//!   never waits for a slow client.
//!
//! It also owns what the HTTP API and the `signals.feedback` topic share: decoding JSON
//! bodies with the offending field named ([`parse_json`]), recording feedback, and the
//! alerting metrics (suppressed alerts, active silences, feedback factors).

use std::collections::{BTreeMap, BTreeSet};

use dynsig_core::alerting::{AlertStage, FeedbackRejected};
use dynsig_core::catalog::{Actor, ActorMatcher};
use dynsig_core::decode::{RejectReason, Rejection};
use dynsig_core::engine::Engine;
use dynsig_core::feedback::{Adjustment, Feedback, Scope, Verdict};
use dynsig_core::metafilter::silence::{Silence, SilenceError};
use dynsig_core::model::{Alert, EpochMs, Signal, TrendSnapshot};
use metrics::{counter, gauge};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{oneshot, watch};

use crate::telemetry::names;

/// A change to the engine, applied by the transform stage between two records.
pub enum Command {
    /// Adds (or replaces, same id) a silence. With `starts_now`, its `starts_at` is set to
    /// the engine's event-time clock when it is applied.
    AddSilence {
        silence: Silence,
        starts_now: bool,
        reply: oneshot::Sender<Result<String, SilenceError>>,
    },
    DeleteSilence {
        id: String,
        reply: oneshot::Sender<Option<Silence>>,
    },
    Feedback {
        feedback: Feedback,
        reply: oneshot::Sender<Result<Adjustment, FeedbackError>>,
    },
    /// A new version of the catalog file (see [`crate::catalog`]).
    SetCatalog(ActorMatcher),
}

/// Applies `command` to the engine and answers it. A requester that gave up (its HTTP
/// client went away) is no reason to undo the change, so a failed reply is ignored.
pub fn apply(engine: &mut Engine, command: Command) {
    match command {
        Command::AddSilence {
            mut silence,
            starts_now,
            reply,
        } => {
            let now = clock(engine);
            if starts_now {
                silence.starts_at = now;
            }
            let added = engine.alerting_mut().silences_mut().add(silence, now);
            if let Ok(id) = &added {
                tracing::info!(%id, "silence added");
            }
            let _ = reply.send(added);
        }
        Command::DeleteSilence { id, reply } => {
            let deleted = engine.alerting_mut().silences_mut().delete(&id);
            if deleted.is_some() {
                tracing::info!(%id, "silence deleted");
            }
            let _ = reply.send(deleted);
        }
        Command::Feedback { feedback, reply } => {
            let _ = reply.send(record_feedback(engine, &feedback));
        }
        Command::SetCatalog(matcher) => engine.set_catalog(matcher),
    }
}

/// "Now" for silences (defaults, validation, which are in force), in event time like the
/// alerts they match: the alert stage's clock, else the watermark before the first window
/// closed, else the wall clock before any input.
fn clock(engine: &Engine) -> EpochMs {
    let stage = engine.alerting().now();
    if stage > EpochMs::MIN {
        return stage;
    }
    engine
        .watermark()
        .unwrap_or_else(crate::service::wall_now_ms)
}

/// Why a verdict was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    #[error(transparent)]
    Rejected(#[from] FeedbackRejected),
    /// The alert stage dates a vote with its clock (event time), which starts with the
    /// first input read; a vote dated before would decay away at once, so it is refused
    /// (the API answers 503) or held (the feedback topic) rather than lost silently.
    #[error("alert time (event time) starts with the first input read, and none was read since the service started: retry shortly")]
    ClockNotStarted,
    /// Sharded (`scale.shards` > 1): the alert's shard runs on another instance.
    #[error("the alert's shard runs on another instance of the group: post the verdict to that instance, or to the feedback topic, which reaches it")]
    OnAnotherInstance,
}

/// Whether the alert stage's clock has started (see [`FeedbackError::ClockNotStarted`]).
pub fn alert_clock_started(engine: &Engine) -> bool {
    engine.alerting().now() > EpochMs::MIN
}

/// Records a verdict (from the API or the feedback topic) and counts it.
pub fn record_feedback(
    engine: &mut Engine,
    feedback: &Feedback,
) -> Result<Adjustment, FeedbackError> {
    if !alert_clock_started(engine) {
        return Err(FeedbackError::ClockNotStarted);
    }
    let adjustment = engine.alerting_mut().feedback(feedback)?;
    let verdict = match feedback.verdict {
        Verdict::Useful => "useful",
        Verdict::Noise => "noise",
    };
    counter!(names::FEEDBACK, "verdict" => verdict).increment(1);
    // Who voted what, and what it changed: the audit trail of threshold changes.
    tracing::info!(
        alert_id = %feedback.alert_id,
        verdict,
        who = %feedback.who,
        counted = adjustment.counted,
        factor = adjustment.factor,
        "feedback recorded"
    );
    Ok(adjustment)
}

/// A feedback record of `signals.feedback` that cannot be used, as a dead letter's reason.
pub fn feedback_rejection(rejected: FeedbackError) -> Rejection {
    Rejection {
        reason: RejectReason::InvalidField,
        detail: rejected.to_string(),
    }
}

/// Parses a JSON document (a record or a request body) into a value, refusing what is
/// not a JSON object.
pub fn parse_json_object(bytes: &[u8]) -> Result<Value, Rejection> {
    let reject = |reason, detail: String| Rejection { reason, detail };
    let text = std::str::from_utf8(bytes)
        .map_err(|error| reject(RejectReason::InvalidUtf8, error.to_string()))?;
    let value: Value = serde_json::from_str(text)
        .map_err(|error| reject(RejectReason::InvalidJson, error.to_string()))?;
    if !value.is_object() {
        return Err(reject(
            RejectReason::InvalidJson,
            "expected a JSON object".into(),
        ));
    }
    Ok(value)
}

/// Deserializes a JSON object into `T`; the detail names the offending field
/// (`verdict: unknown variant ...`, `matchers.actor: invalid type ...`).
pub fn from_json_value<T: DeserializeOwned>(value: Value) -> Result<T, Rejection> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner().to_string();
        let reason = if inner.starts_with("missing field") {
            RejectReason::MissingField
        } else {
            RejectReason::InvalidField
        };
        // At the top level serde names the field itself (missing or unknown field).
        let detail = if path == "." {
            inner
        } else {
            format!("{path}: {inner}")
        };
        Rejection { reason, detail }
    })
}

/// [`parse_json_object`] then [`from_json_value`].
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Rejection> {
    from_json_value(parse_json_object(bytes)?)
}

/// A silence as the API lists it: as created, plus whether it is in force now.
#[derive(Debug, Clone, Serialize)]
pub struct SilenceView {
    #[serde(flatten)]
    pub silence: Silence,
    pub active: bool,
}

/// What the HTTP API reads, as of the transform stage's latest flush.
#[derive(Debug, Clone, Default)]
pub struct ReadModel {
    /// The latest final snapshot of each window (`1m`, `15m/5m`...), by window name.
    pub trends: BTreeMap<String, TrendSnapshot>,
    /// Pending and firing alerts, with their latest content.
    pub alerts: Vec<Alert>,
    /// Every silence not yet expired, by id.
    pub silences: Vec<SilenceView>,
    /// The catalog's actors, in catalog order; empty without a catalog.
    pub actors: Vec<Actor>,
}

impl ReadModel {
    pub fn has_actor(&self, id: &str) -> bool {
        self.actors.iter().any(|actor| actor.id == id)
    }
}

/// The transform stage's side of the read model, and of the alerting metrics that are
/// sampled from the engine's state at the same moments.
pub struct ReadModelWriter {
    model: watch::Sender<ReadModel>,
    /// The rules whose `dynsig_feedback_threshold_factor` was set so far, so that a factor
    /// that decayed away is set back to 1 rather than left at its last value.
    factor_rules: BTreeSet<String>,
}

impl ReadModelWriter {
    pub fn new(engine: &Engine) -> (ReadModelWriter, watch::Receiver<ReadModel>) {
        let (model, reader) = watch::channel(ReadModel::default());
        let mut writer = ReadModelWriter {
            model,
            factor_rules: BTreeSet::new(),
        };
        writer.refresh(engine, &[]);
        (writer, reader)
    }

    /// Republishes the model after `signals` (what the engine just emitted) and any
    /// command, and samples the alerting metrics.
    pub fn refresh(&mut self, engine: &Engine, signals: &[Signal]) {
        self.refresh_many(&[engine], engine.alerting(), signals);
    }

    /// [`Self::refresh`] for a sharded instance: the active alerts and feedback factors of
    /// every engine, the silences and catalog of the first (which gets every command), and
    /// the metafilter's figures from `filter`, the stage that filters their messages.
    pub fn refresh_many(&mut self, engines: &[&Engine], filter: &AlertStage, signals: &[Signal]) {
        let Some(&engine) = engines.first() else {
            return;
        };
        let stage = engine.alerting();
        let now = clock(engine);
        self.model.send_modify(|model| {
            for signal in signals {
                if let Signal::Trend(snapshot) = signal {
                    if snapshot.is_final {
                        model
                            .trends
                            .insert(snapshot.window.clone(), snapshot.clone());
                    }
                }
            }
            model.alerts = engines
                .iter()
                .flat_map(|e| e.alerting().active().cloned())
                .collect();
            model.silences = stage
                .silences()
                .all()
                .map(|silence| SilenceView {
                    silence: silence.clone(),
                    active: silence.is_active(now),
                })
                .collect();
            let actors = engine.catalog().map(ActorMatcher::actors).unwrap_or(&[]);
            if model.actors != actors {
                model.actors = actors.to_vec();
            }
        });

        for (reason, count) in filter.counters().suppressed_by_reason() {
            counter!(names::ALERTS_SUPPRESSED, "reason" => reason).absolute(count);
        }
        let filter_now = filter.now().max(now);
        gauge!(names::SILENCES_ACTIVE).set(filter.silences().active(filter_now).count() as f64);
        // Per rule only: a series (a dedup key, with its term) would be an unbounded label;
        // a series' own factor shows in its alerts' `adjustment`.
        let mut gone = std::mem::take(&mut self.factor_rules);
        let mut adjusted_series = 0;
        for sample in engines.iter().flat_map(|e| e.alerting().feedback_factors()) {
            match sample.scope {
                Scope::Rule => {
                    gauge!(names::FEEDBACK_THRESHOLD_FACTOR, "rule" => sample.key.clone())
                        .set(sample.factor);
                    gone.remove(&sample.key);
                    self.factor_rules.insert(sample.key);
                }
                Scope::Series => adjusted_series += 1,
            }
        }
        for rule in gone {
            gauge!(names::FEEDBACK_THRESHOLD_FACTOR, "rule" => rule).set(1.0);
        }
        gauge!(names::FEEDBACK_ADJUSTED_SERIES).set(f64::from(adjusted_series));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feedback_json_errors_name_the_field_and_the_reason() {
        let ok: Feedback =
            parse_json(br#"{"alert_id":"trend:word:x@1","verdict":"noise","who":"ann"}"#).unwrap();
        assert_eq!(ok.who, "ann");

        let cases: [(&[u8], RejectReason, &str); 6] = [
            (
                b"{not json",
                RejectReason::InvalidJson,
                "key must be a string",
            ),
            (b"[1]", RejectReason::InvalidJson, "object"),
            (b"\xff{}", RejectReason::InvalidUtf8, "utf-8"),
            (
                br#"{"alert_id":"a@1","who":"ann"}"#,
                RejectReason::MissingField,
                "verdict",
            ),
            (
                br#"{"alert_id":"a@1","verdict":"meh","who":"ann"}"#,
                RejectReason::InvalidField,
                "verdict",
            ),
            (
                br#"{"alert_id":"a@1","verdict":"noise","who":"ann","at":"now"}"#,
                RejectReason::InvalidField,
                "at:",
            ),
        ];
        for (bytes, reason, named) in cases {
            let rejection = parse_json::<Feedback>(bytes).unwrap_err();
            assert_eq!(rejection.reason, reason, "{rejection}");
            assert!(
                rejection.detail.to_lowercase().contains(named),
                "{named} in {rejection}"
            );
        }
    }

    #[test]
    fn silence_errors_name_nested_fields() {
        let rejection =
            parse_json::<Silence>(br#"{"matchers":{"actor":5},"starts_at":1,"ends_at":2}"#)
                .unwrap_err();
        assert!(
            rejection.detail.starts_with("matchers.actor:"),
            "{rejection}"
        );
        let rejection =
            parse_json::<Silence>(br#"{"matcher":{},"starts_at":1,"ends_at":2}"#).unwrap_err();
        assert!(rejection.detail.contains("`matcher`"), "{rejection}");
    }
}
