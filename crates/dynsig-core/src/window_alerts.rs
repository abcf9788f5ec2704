//! From a closed window's scores to alert observations: for each series and each ranked
//! or alerting term, what it scored and, when a message is due, what the alert says
//! (the facts [`crate::alert::text`] writes up: the actor, its authors and top terms,
//! example posts). Also tags trend entries with the actor they concern.

use std::collections::HashSet;

use crate::alert::text::{self, ActorRef, SeriesFacts, TermFacts, WindowFacts};
use crate::alert::Rule;
use crate::alerting::AlertStage;
use crate::anomaly::SeriesScore;
use crate::catalog::ActorMatcher;
use crate::model::{Alert, TermKind, TrendEntry};
use crate::term_key;
use crate::trend::TrendDetector;
use crate::window_terms::WindowTerms;

/// Series counting the posts that mention an actor: `actors.actor=<id>`.
pub const ACTOR_SERIES_PREFIX: &str = "actors.actor=";
/// Series counting posts per source: `posts.source=<source>`.
const SOURCE_SERIES_PREFIX: &str = "posts.source=";
/// Trending terms listed in an actor's alert.
const TOP_TERMS_PER_ACTOR: usize = 3;

/// Sets each entry's actor: an `actor` term is its own; another term gets the actor most
/// of its posts mention (by its position in `catalog`, the catalog the window was
/// counted with; `None` when it changed since, or there is none).
pub fn tag_actors(entries: &mut [TrendEntry], terms: &WindowTerms, catalog: Option<&ActorMatcher>) {
    for entry in entries {
        entry.actor = if entry.kind == TermKind::Actor {
            Some(entry.term.clone())
        } else {
            catalog.and_then(|catalog| {
                let counted = terms.get(&term_key::key(entry.kind, &entry.term))?;
                let actor = catalog.actors().get(counted.value.actor()?)?;
                Some(actor.id.clone())
            })
        };
    }
}

/// Observes every scored series and every ranked or already alerting term of the main
/// window; the alert messages due go to `out`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    stage: &mut AlertStage,
    catalog: Option<&ActorMatcher>,
    trends: &TrendDetector,
    window: WindowFacts<'_>,
    entries: &[TrendEntry],
    scores: &[SeriesScore],
    terms: &WindowTerms,
    out: &mut Vec<Alert>,
) {
    for scored in scores {
        let key = format!("anomaly:{}", scored.series);
        stage.observe(
            window.span,
            Rule::Anomaly,
            &key,
            scored.score,
            |status, _| {
                let facts = series_facts(scored, catalog, entries, terms);
                text::anomaly(window, &facts, status)
            },
            out,
        );
    }
    let mut observed = HashSet::new();
    for entry in entries {
        let subject = format!("{}:{}", entry.kind.as_str(), entry.term);
        let key = format!("trend:{subject}");
        let facts = TermFacts {
            subject: &subject,
            term: &entry.term,
            kind: entry.kind.as_str(),
            entry: Some(entry),
            figures: None,
            actor: actor_ref(catalog, entry.actor.as_deref()),
        };
        stage.observe(
            window.span,
            Rule::Trend,
            &key,
            entry.score,
            |status, _| text::trend(window, &facts, status),
            out,
        );
        observed.insert(key);
    }
    // Alerting terms that fell out of the ranking are scored from the detector.
    for key in stage.tracked_keys(Rule::Trend) {
        let Some((kind, term)) = (!observed.contains(&key))
            .then(|| key.strip_prefix("trend:")?.split_once(':'))
            .flatten()
        else {
            continue;
        };
        let Some(kind_of_term) = TermKind::parse(kind) else {
            continue;
        };
        let last = trends.last_score(&term_key::key(kind_of_term, term));
        let actor_id = stage.book().get(&key).and_then(|a| a.actor.clone());
        let subject = format!("{kind}:{term}");
        let facts = TermFacts {
            subject: &subject,
            term,
            kind,
            entry: None,
            figures: last.map(|s| (s.count, s.baseline, s.score)),
            actor: actor_ref(catalog, actor_id.as_deref()),
        };
        stage.observe(
            window.span,
            Rule::Trend,
            &key,
            last.map_or(0.0, |s| s.score),
            |status, _| text::trend(window, &facts, status),
            out,
        );
    }
}

/// What an alert about a series says beyond its score.
fn series_facts<'a>(
    scored: &'a SeriesScore,
    catalog: Option<&'a ActorMatcher>,
    entries: &'a [TrendEntry],
    terms: &WindowTerms,
) -> SeriesFacts<'a> {
    let actor_id = scored.series.strip_prefix(ACTOR_SERIES_PREFIX);
    let actor_term = actor_id.and_then(|id| terms.get(&term_key::key(TermKind::Actor, id)));
    let top_terms = actor_id
        .map(|id| {
            entries
                .iter()
                .filter(|e| e.kind != TermKind::Actor && e.actor.as_deref() == Some(id))
                .take(TOP_TERMS_PER_ACTOR)
                .map(|e| e.term.as_str())
                .collect()
        })
        .unwrap_or_default();
    SeriesFacts {
        score: scored,
        actor: actor_ref(catalog, actor_id),
        authors: actor_term.as_ref().and_then(|t| terms.authors(t.value)),
        top_terms,
        source: scored.series.strip_prefix(SOURCE_SERIES_PREFIX),
        examples: actor_term
            .map(|t| terms.examples(t.value))
            .unwrap_or_default(),
    }
}

fn actor_ref<'a>(catalog: Option<&'a ActorMatcher>, id: Option<&str>) -> Option<ActorRef<'a>> {
    let actor = catalog?.actor(id?)?;
    Some(ActorRef {
        id: &actor.id,
        name: &actor.name,
        kind: actor.kind,
    })
}
