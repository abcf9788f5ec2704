//! The alert stage: what the engine does with the signals of a closed window once they
//! are scored, in order:
//!
//! 1. the [`crate::alert`] lifecycle turns scores into alert messages (pending, firing,
//!    updated, resolved), with each key's threshold scaled by feedback
//!    ([`crate::feedback`]); every message is published unfiltered on `signals.alerts`;
//! 2. the [`crate::metafilter`] silences, inhibits, groups and budgets them;
//! 3. [`crate::routing`] sends the resulting notifications (and digests) to team topics.
//!
//! Its clock is event time: the end of the latest closed window, or the watermark when
//! it advances in between ([`AlertStage::flush`]). It also answers the HTTP API: active
//! alerts, silences, feedback.

use crate::alert::{AlertBook, AlertContent, Lifecycle, Observation, Rule, WindowSpan};
use crate::config::EngineConfig;
use crate::feedback::{Adjustment, FactorSample, Feedback, Hivemind, Subject};
use crate::metafilter::silence::Silences;
use crate::metafilter::{Counters, Metafilter};
use crate::model::{Alert, AlertStatus, EpochMs, Routed, Severity, Signal};
use crate::routing::{Routable, Router, RoutingError};

/// Why a feedback message was not recorded; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FeedbackRejected {
    pub field: &'static str,
    pub problem: String,
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct AlertStage {
    lifecycle: Lifecycle,
    book: AlertBook,
    metafilter: Metafilter,
    router: Router,
    hivemind: Hivemind,
    /// The stage's event-time clock (see the module docs).
    now: EpochMs,
    /// A shard's stage (see [`crate::shard_merge`]): its messages are published, and
    /// filtered by the merge's stage instead of here. Set again after every restore.
    #[serde(skip)]
    filtered_elsewhere: bool,
}

impl AlertStage {
    /// The config's sections are assumed valid but for `routing`, checked here.
    pub fn new(config: &EngineConfig) -> Result<AlertStage, RoutingError> {
        Ok(AlertStage {
            lifecycle: Lifecycle::new(&config.alerts, &config.trends),
            book: AlertBook::new(),
            metafilter: Metafilter::new(config.metafilter.clone())
                .expect("validated with the engine config"),
            router: Router::new(&config.routing)?,
            hivemind: Hivemind::new(config.feedback.clone())
                .expect("validated with the engine config"),
            now: EpochMs::MIN,
            filtered_elsewhere: false,
        })
    }

    /// Whether this stage's messages go through the metafilter of another stage (a
    /// shard's: see [`crate::shard_merge`]) instead of its own.
    pub fn set_filtered_elsewhere(&mut self, elsewhere: bool) {
        self.filtered_elsewhere = elsewhere;
    }

    /// The dedup keys of `rule` pending or firing: each must be observed every window.
    pub fn tracked_keys(&self, rule: Rule) -> Vec<String> {
        self.book.tracked_keys(rule).map(str::to_owned).collect()
    }

    /// What `dedup_key` scored in the window `span` (see [`AlertBook::observe`]); the
    /// messages due are appended to `out`, explained by feedback when it moved the
    /// threshold.
    pub fn observe(
        &mut self,
        span: WindowSpan,
        rule: Rule,
        dedup_key: &str,
        score: f64,
        content: impl FnOnce(AlertStatus, Severity) -> AlertContent,
        out: &mut Vec<Alert>,
    ) {
        let factor = self
            .hivemind
            .threshold_factor(rule.as_str(), dedup_key, span.end);
        let first = out.len();
        let seen = Observation {
            rule,
            dedup_key,
            score,
            factor,
        };
        self.book.observe(&self.lifecycle, span, seen, content, out);
        let adjustment = self.hivemind.explain(rule.as_str(), dedup_key, span.end);
        for alert in &mut out[first..] {
            alert.adjustment.clone_from(&adjustment);
        }
    }

    /// Publishes a window's alert messages (unfiltered) and passes them through the
    /// metafilter, then flushes what is due at `now` (the window's end).
    ///
    /// What was due before this window's messages goes out first: the clock reached `now`
    /// before they were known. Otherwise the result would depend on how many windows the
    /// caller closes per poll (a backlog closes several at once), e.g. an alert firing in
    /// one window and resolving in the next would be folded away unseen.
    pub fn dispatch(&mut self, alerts: Vec<Alert>, now: EpochMs, signals: &mut Vec<Signal>) {
        self.flush(now, signals);
        self.book.expire_cooldowns(&self.lifecycle, now);
        for alert in alerts {
            signals.push(Signal::Alert(alert.clone()));
            if !self.filtered_elsewhere {
                self.metafilter.push(alert, now);
            }
        }
        self.flush(now, signals);
    }

    /// The metafilter's part of [`Self::dispatch`], for the messages of a window that
    /// other stages made and published (the shards', merged: see
    /// [`crate::shard_merge`]).
    pub fn filter(&mut self, alerts: Vec<Alert>, now: EpochMs, signals: &mut Vec<Signal>) {
        self.flush(now, signals);
        for alert in alerts {
            self.metafilter.push(alert, now);
        }
        self.flush(now, signals);
    }

    /// Advances the clock to `now` and publishes the notifications and digests due,
    /// each to the topics routing picks for it.
    pub fn flush(&mut self, now: EpochMs, signals: &mut Vec<Signal>) {
        self.now = self.now.max(now);
        let router = &self.router;
        let flushed = self.metafilter.flush(self.now, |notification| {
            let routable = Routable {
                severity: notification.severity,
                labels: &notification.common_labels,
            };
            router
                .topics(routable)
                .into_iter()
                .map(str::to_owned)
                .collect()
        });
        signals.extend(
            flushed
                .notifications
                .into_iter()
                .map(|(topic, message)| Signal::Notification(Routed { topic, message })),
        );
        signals.extend(flushed.digests.into_iter().map(|digest| {
            Signal::Digest(Routed {
                topic: digest.team.clone(),
                message: digest,
            })
        }));
        self.hivemind.expire(self.now);
    }

    /// The stage's clock (event time; `i64::MIN` before the first window).
    pub fn now(&self) -> EpochMs {
        self.now
    }

    /// The alerts pending or firing, with their latest content.
    pub fn active(&self) -> impl Iterator<Item = &Alert> {
        self.book.active()
    }

    pub fn book(&self) -> &AlertBook {
        &self.book
    }

    pub fn silences(&self) -> &Silences {
        self.metafilter.silences()
    }

    /// For `POST` and `DELETE /api/silences`.
    pub fn silences_mut(&mut self) -> &mut Silences {
        self.metafilter.silences_mut()
    }

    /// What the metafilter did with the messages so far.
    pub fn counters(&self) -> Counters {
        self.metafilter.counters()
    }

    /// Records a verdict on an alert (by its id: any occurrence, even resolved).
    pub fn feedback(&mut self, feedback: &Feedback) -> Result<Adjustment, FeedbackRejected> {
        let subject = Subject::of_alert_id(&feedback.alert_id).ok_or_else(|| FeedbackRejected {
            field: "alert_id",
            problem: format!(
                "{:?} is not an alert id (<rule>:<series>@<starts_at>)",
                feedback.alert_id
            ),
        })?;
        self.hivemind
            .record(feedback, &subject, self.now)
            .map_err(|error| FeedbackRejected {
                field: error.field,
                problem: "must not be empty".into(),
            })
    }

    /// The current threshold factors, for `dynsig_feedback_threshold_factor`.
    pub fn feedback_factors(&self) -> Vec<FactorSample> {
        self.hivemind.factors(self.now)
    }
}
