//! What alerts say: titles, one-sentence summaries with the figures that matter, labels
//! and causes, built from the facts of the window being evaluated.
//!
//! A summary reads like a colleague's message: "mentions of ACME Corp rose 6.2× over
//! baseline in 1m: 340 vs 55 expected; 320 unique authors; top terms: recall, battery,
//! fire". Labels are what routing, silences, inhibition and grouping match on: `rule`,
//! `window`, `series` or `term`/`kind`, and, when the alert concerns a catalog actor,
//! `actor`, `actor_kind`, and `scope = actor` for an actor-wide series.

use std::collections::BTreeMap;

use crate::anomaly::SeriesScore;
use crate::catalog::ActorKind;
use crate::metafilter::inhibit::{LABEL_SCOPE, SCOPE_ACTOR};
use crate::model::{AlertCause, AlertStatus, EpochMs, TrendEntry};
use crate::routing::{LABEL_ACTOR, LABEL_ACTOR_KIND, LABEL_RULE, LABEL_SOURCE};

use super::{AlertContent, WindowSpan};

/// A catalog actor as alerts name it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActorRef<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub kind: ActorKind,
}

/// The window being evaluated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowFacts<'a> {
    /// As in `TrendSnapshot::window` (`1m`).
    pub name: &'a str,
    pub span: WindowSpan,
}

/// What is known about a scored series in the window.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesFacts<'a> {
    pub score: &'a SeriesScore,
    /// The actor an `actors.actor=<id>` series counts mentions of.
    pub actor: Option<ActorRef<'a>>,
    /// Distinct authors who mentioned the actor in the window.
    pub authors: Option<u64>,
    /// The window's top trending terms about the actor, best first.
    pub top_terms: Vec<&'a str>,
    /// The `source` of a `posts.source=<source>` series.
    pub source: Option<&'a str>,
    pub examples: Vec<String>,
}

/// What is known about a term in the window: its ranked entry, or just its figures
/// when it was not ranked (`None`: not counted at all).
#[derive(Debug, Clone, PartialEq)]
pub struct TermFacts<'a> {
    /// `<kind>:<term>`, as in the dedup key.
    pub subject: &'a str,
    pub term: &'a str,
    pub kind: &'a str,
    pub entry: Option<&'a TrendEntry>,
    pub figures: Option<(u64, f64, f64)>,
    pub actor: Option<ActorRef<'a>>,
}

/// Content of an anomaly alert about to be published with `status`.
pub fn anomaly(
    window: WindowFacts<'_>,
    facts: &SeriesFacts<'_>,
    status: AlertStatus,
) -> AlertContent {
    let s = facts.score;
    let subject = match facts.actor {
        Some(actor) => format!("mentions of {}", actor.name),
        None => s.series.clone(),
    };
    let dropped = s.observed < s.expected;
    let title = match (dropped, facts.actor) {
        (true, Some(actor)) => format!("Drop in mentions of {}", actor.name),
        (false, Some(actor)) => format!("Surge in mentions of {}", actor.name),
        (true, None) => format!("Drop in {}", s.series),
        (false, None) => format!("Spike in {}", s.series),
    };
    let figures = format!(
        "{} vs {} expected",
        format_value(s.observed),
        format_value(s.expected)
    );
    let mut summary = if status == AlertStatus::Resolved {
        format!("{subject} back to normal in {}: {figures}", window.name)
    } else if dropped {
        format!(
            "{subject} fell to {:.1}× baseline in {}: {figures}",
            s.observed / s.expected,
            window.name
        )
    } else {
        format!(
            "{subject} rose {} in {}: {figures}",
            growth(s.observed, s.expected),
            window.name
        )
    };
    if status != AlertStatus::Resolved {
        if let Some(authors) = facts.authors {
            summary.push_str(&format!("; {authors} unique authors"));
        }
        if !facts.top_terms.is_empty() {
            summary.push_str(&format!("; top terms: {}", facts.top_terms.join(", ")));
        }
        summary.push_str(&format!(" (score {:.4}: {})", s.score, s.explanation));
    }
    let mut labels = labels([
        (LABEL_RULE, "anomaly"),
        ("series", &s.series),
        ("window", window.name),
    ]);
    if let Some(actor) = facts.actor {
        add_actor(&mut labels, actor);
        labels.insert(LABEL_SCOPE.into(), SCOPE_ACTOR.into());
    }
    if let Some(source) = facts.source {
        labels.insert(LABEL_SOURCE.into(), source.into());
    }
    AlertContent {
        title,
        summary,
        signals: vec![cause(
            "anomaly",
            window,
            &s.series,
            (s.observed, s.expected, s.score),
        )],
        actor: facts.actor.map(|a| a.id.to_owned()),
        labels,
        examples: facts.examples.clone(),
        observed: s.observed,
    }
}

/// Content of a trend alert about to be published with `status`.
pub fn trend(window: WindowFacts<'_>, facts: &TermFacts<'_>, status: AlertStatus) -> AlertContent {
    let figures = facts
        .entry
        .map(|e| (e.count, e.baseline, e.score))
        .or(facts.figures);
    let mut summary = match (status, figures) {
        (AlertStatus::Resolved, Some((count, _, score))) => format!(
            "{} no longer trending: {count} mentions in {} (score {score:.1})",
            facts.term, window.name
        ),
        (AlertStatus::Resolved, None) => {
            format!(
                "{} no longer trending: no mentions in {}",
                facts.term, window.name
            )
        }
        (_, Some((count, baseline, score))) => {
            let authors = facts
                .entry
                .map(|e| format!(" by {} authors", e.authors))
                .unwrap_or_default();
            format!(
                "{} is trending in {}: {count} mentions{authors} vs a baseline of {baseline:.1} (score {score:.1}, window {}–{} UTC)",
                facts.term,
                window.name,
                utc_time_of_day(window.span.start),
                utc_time_of_day(window.span.end)
            )
        }
        (_, None) => format!("{} is trending in {}", facts.term, window.name),
    };
    if let Some(actor) = facts.actor {
        summary.push_str(&format!("; concerns {}", actor.name));
    }
    let mut labels = labels([
        (LABEL_RULE, "trend"),
        ("term", facts.term),
        ("kind", facts.kind),
        ("window", window.name),
    ]);
    if let Some(actor) = facts.actor {
        add_actor(&mut labels, actor);
    }
    let (count, baseline, score) = figures.unwrap_or((0, 0.0, 0.0));
    AlertContent {
        title: format!("Trending {} {}", facts.kind, facts.term),
        summary,
        signals: vec![cause(
            "trend",
            window,
            facts.subject,
            (count as f64, baseline, score),
        )],
        actor: facts.actor.map(|a| a.id.to_owned()),
        labels,
        examples: facts.entry.map(|e| e.examples.clone()).unwrap_or_default(),
        observed: count as f64,
    }
}

fn cause(
    kind: &str,
    window: WindowFacts<'_>,
    subject: &str,
    (observed, expected, score): (f64, f64, f64),
) -> AlertCause {
    AlertCause {
        kind: kind.into(),
        window: window.name.into(),
        window_start: window.span.start,
        window_end: window.span.end,
        subject: subject.into(),
        observed,
        expected,
        score,
    }
}

fn add_actor(labels: &mut BTreeMap<String, String>, actor: ActorRef<'_>) {
    labels.insert(LABEL_ACTOR.into(), actor.id.into());
    labels.insert(LABEL_ACTOR_KIND.into(), actor.kind.as_str().into());
}

/// `6.2× over baseline`, or `from ~0` when nothing was expected.
fn growth(observed: f64, expected: f64) -> String {
    if expected < 0.05 {
        "from ~0".into()
    } else {
        format!("{:.1}× over baseline", observed / expected)
    }
}

/// Whole values without decimals (counts), others with one.
fn format_value(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// `HH:MM:SS` of an epoch-ms time, UTC.
pub fn utc_time_of_day(ms: EpochMs) -> String {
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

fn labels<const N: usize>(pairs: [(&str, &str); N]) -> BTreeMap<String, String> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}
