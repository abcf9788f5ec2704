//! Every transition of the lifecycle, and what the messages say.

use super::text::{self, ActorRef, SeriesFacts, TermFacts, WindowFacts};
use super::*;
use crate::anomaly::SeriesScore;
use crate::catalog::ActorKind;
use crate::model::{TermKind, TrendEntry, TrendStatus};

const MINUTE: EpochMs = 60_000;
/// 2026-01-01 12:01:00 UTC
const NOON_ONE: EpochMs = 1_767_268_860_000;

fn lifecycle(change: impl FnOnce(&mut AlertConfig)) -> Lifecycle {
    let mut alerts = AlertConfig {
        for_ms: 0,
        min_firing_ms: 0,
        update_interval_ms: 5 * MINUTE,
        cooldown_ms: 0,
        ..AlertConfig::default()
    };
    change(&mut alerts);
    Lifecycle::new(&alerts, &TrendConfig::default())
}

fn span(i: i64) -> WindowSpan {
    WindowSpan {
        start: NOON_ONE + i * MINUTE,
        end: NOON_ONE + (i + 1) * MINUTE,
    }
}

fn window(i: i64) -> WindowFacts<'static> {
    WindowFacts {
        name: "1m",
        span: span(i),
    }
}

const SERIES: &str = "posts.source=twitter";
const KEY: &str = "anomaly:posts.source=twitter";

fn score(score: f64, observed: f64) -> SeriesScore {
    SeriesScore {
        series: SERIES.into(),
        observed,
        expected: 52.0,
        score,
        explanation: "spike".into(),
    }
}

/// One window of the anomaly rule for the twitter series; the messages it emitted.
fn step(book: &mut AlertBook, rules: &Lifecycle, i: i64, s: f64, observed: f64) -> Vec<Alert> {
    step_with_factor(book, rules, i, s, observed, 1.0)
}

fn step_with_factor(
    book: &mut AlertBook,
    rules: &Lifecycle,
    i: i64,
    s: f64,
    observed: f64,
    factor: f64,
) -> Vec<Alert> {
    let scored = score(s, observed);
    let facts = SeriesFacts {
        score: &scored,
        actor: None,
        authors: None,
        top_terms: Vec::new(),
        source: Some("twitter"),
        examples: Vec::new(),
    };
    let mut out = Vec::new();
    book.expire_cooldowns(rules, span(i).end);
    book.observe(
        rules,
        span(i),
        Observation {
            rule: Rule::Anomaly,
            dedup_key: KEY,
            score: s,
            factor,
        },
        |status, _| text::anomaly(window(i), &facts, status),
        &mut out,
    );
    out
}

fn statuses(alerts: &[Alert]) -> Vec<AlertStatus> {
    alerts.iter().map(|a| a.status).collect()
}

#[test]
fn fires_at_once_and_resolves_below_the_lower_threshold() {
    let rules = lifecycle(|_| {});
    let mut book = AlertBook::new();
    assert!(
        step(&mut book, &rules, 0, 0.98, 60.0).is_empty(),
        "below fire"
    );
    let fired = step(&mut book, &rules, 1, 0.9993, 340.0);
    assert_eq!(statuses(&fired), [AlertStatus::Firing]);
    let alert = &fired[0];
    assert_eq!(alert.dedup_key, KEY);
    assert_eq!(alert.id, format!("{KEY}@{}", span(1).end));
    assert_eq!(alert.severity, Severity::Critical);
    assert_eq!(alert.title, "Spike in posts.source=twitter");
    assert_eq!(
        alert.summary,
        "posts.source=twitter rose 6.5× over baseline in 1m: 340 vs 52 expected (score 0.9993: spike)"
    );
    assert_eq!(alert.labels["rule"], "anomaly");
    assert_eq!(alert.labels["source"], "twitter");
    assert_eq!(alert.labels["severity"], "critical");
    assert_eq!(alert.signals[0].observed, 340.0);
    assert_eq!(
        (alert.active_at, alert.starts_at),
        (span(1).end, span(1).end)
    );
    assert!(
        step(&mut book, &rules, 2, 0.95, 330.0).is_empty(),
        "hysteresis: keeps firing"
    );
    let resolved = step(&mut book, &rules, 3, 0.5, 55.0);
    assert_eq!(statuses(&resolved), [AlertStatus::Resolved]);
    assert_eq!(resolved[0].id, alert.id, "same occurrence");
    assert_eq!(resolved[0].ends_at, Some(span(3).end));
    assert_eq!(
        resolved[0].summary,
        "posts.source=twitter back to normal in 1m: 55 vs 52 expected"
    );
    assert_eq!(book.active().count(), 0);
    let again = step(&mut book, &rules, 5, 0.995, 200.0);
    assert_eq!(statuses(&again), [AlertStatus::Firing]);
    assert_ne!(again[0].id, alert.id, "a new occurrence");
    assert_eq!(again[0].severity, Severity::Warning);
}

#[test]
fn pending_until_the_for_duration_has_passed() {
    let rules = lifecycle(|a| a.for_ms = 2 * MINUTE);
    let mut book = AlertBook::new();
    assert!(step(&mut book, &rules, 0, 0.995, 200.0).is_empty());
    assert_eq!(
        book.active().next().map(|a| a.status),
        Some(AlertStatus::Pending)
    );
    assert_eq!(book.firing().count(), 0);
    assert!(
        step(&mut book, &rules, 1, 0.995, 210.0).is_empty(),
        "held 1 min of 2"
    );
    let fired = step(&mut book, &rules, 2, 0.995, 220.0);
    assert_eq!(statuses(&fired), [AlertStatus::Firing]);
    assert_eq!(
        (fired[0].active_at, fired[0].starts_at),
        (span(0).end, span(2).end)
    );
    // A pending condition that stops is dropped without a message.
    let mut book = AlertBook::new();
    step(&mut book, &rules, 0, 0.995, 200.0);
    assert!(step(&mut book, &rules, 1, 0.5, 50.0).is_empty());
    assert_eq!(book.active().count(), 0);
    assert!(
        step(&mut book, &rules, 2, 0.995, 200.0).is_empty(),
        "starts over"
    );
}

#[test]
fn does_not_resolve_before_the_minimum_firing_time() {
    let rules = lifecycle(|a| a.min_firing_ms = 3 * MINUTE);
    let mut book = AlertBook::new();
    step(&mut book, &rules, 0, 0.995, 200.0);
    assert!(step(&mut book, &rules, 1, 0.1, 50.0).is_empty());
    assert!(step(&mut book, &rules, 2, 0.1, 50.0).is_empty());
    assert_eq!(
        statuses(&step(&mut book, &rules, 3, 0.1, 50.0)),
        [AlertStatus::Resolved]
    );
}

#[test]
fn updates_are_rate_limited_but_escalation_goes_at_once() {
    let rules = lifecycle(|_| {});
    let mut book = AlertBook::new();
    step(&mut book, &rules, 0, 0.995, 200.0);
    assert!(
        step(&mut book, &rules, 1, 0.995, 400.0).is_empty(),
        "moved, but too soon"
    );
    let escalated = step(&mut book, &rules, 2, 0.9999, 400.0);
    assert_eq!(statuses(&escalated), [AlertStatus::Updated]);
    assert_eq!(escalated[0].severity, Severity::Critical);
    assert!(
        step(&mut book, &rules, 3, 0.995, 400.0).is_empty(),
        "severity never drops back"
    );
    assert!(
        step(&mut book, &rules, 7, 0.995, 410.0).is_empty(),
        "unchanged: no update"
    );
    let update = step(&mut book, &rules, 8, 0.995, 900.0);
    assert_eq!(statuses(&update), [AlertStatus::Updated]);
    assert_eq!(update[0].signals[0].observed, 900.0);
    assert_eq!(update[0].severity, Severity::Critical);
}

#[test]
fn cool_down_holds_a_refire_as_pending() {
    let rules = lifecycle(|a| a.cooldown_ms = 3 * MINUTE);
    let mut book = AlertBook::new();
    step(&mut book, &rules, 0, 0.995, 200.0);
    assert_eq!(
        statuses(&step(&mut book, &rules, 1, 0.1, 50.0)),
        [AlertStatus::Resolved]
    );
    assert!(
        step(&mut book, &rules, 2, 0.995, 200.0).is_empty(),
        "cooling down"
    );
    assert!(
        step(&mut book, &rules, 3, 0.995, 200.0).is_empty(),
        "cooling down"
    );
    let fired = step(&mut book, &rules, 4, 0.995, 200.0);
    assert_eq!(statuses(&fired), [AlertStatus::Firing]);
    assert_eq!(
        fired[0].active_at,
        span(2).end,
        "pending since the cool-down began"
    );
}

#[test]
fn feedback_factor_moves_the_thresholds() {
    let rules = lifecycle(|_| {});
    let anomaly = rules.anomaly.scaled(2.0);
    assert!((anomaly.fire - (1.0 - (1.0 - 0.9902) / 2.0)).abs() < 1e-12);
    assert_eq!(rules.trend.scaled(1.5).fire, 12.0);
    let mut book = AlertBook::new();
    assert!(step_with_factor(&mut book, &rules, 0, 0.993, 200.0, 2.0).is_empty());
    assert_eq!(
        statuses(&step_with_factor(&mut book, &rules, 1, 0.996, 200.0, 2.0)),
        [AlertStatus::Firing]
    );
}

fn entry(term: &str, count: u64, score: f64) -> TrendEntry {
    TrendEntry {
        term: term.into(),
        kind: TermKind::Hashtag,
        count,
        authors: count - 2,
        baseline: 1.2,
        score,
        status: TrendStatus::Rising,
        examples: vec!["p1".into(), "p2".into()],
        count_error: 0,
        actor: Some("acme".into()),
    }
}

#[test]
fn trend_alerts_name_the_actor_and_resolve_when_the_term_fades() {
    let rules = lifecycle(|_| {});
    let acme = ActorRef {
        id: "acme",
        name: "ACME Corp",
        kind: ActorKind::OwnBrand,
    };
    let key = "trend:hashtag:#acmefire";
    let mut book = AlertBook::new();
    let hot = entry("#acmefire", 120, 41.3);
    let run = |book: &mut AlertBook, i, entry: Option<&TrendEntry>, figures, score| {
        let facts = TermFacts {
            subject: "hashtag:#acmefire",
            term: "#acmefire",
            kind: "hashtag",
            entry,
            figures,
            actor: Some(acme),
        };
        let mut out = Vec::new();
        book.observe(
            &rules,
            span(i),
            Observation {
                rule: Rule::Trend,
                dedup_key: key,
                score,
                factor: 1.0,
            },
            |status, _| text::trend(window(i), &facts, status),
            &mut out,
        );
        out
    };
    let fired = run(&mut book, 0, Some(&hot), None, 41.3);
    assert_eq!(statuses(&fired), [AlertStatus::Firing]);
    let alert = &fired[0];
    assert_eq!(alert.title, "Trending hashtag #acmefire");
    assert_eq!(
        alert.summary,
        "#acmefire is trending in 1m: 120 mentions by 118 authors vs a baseline of 1.2 \
         (score 41.3, window 12:01:00–12:02:00 UTC); concerns ACME Corp"
    );
    assert_eq!(alert.actor.as_deref(), Some("acme"));
    assert_eq!(alert.labels["actor"], "acme");
    assert_eq!(alert.labels["actor_kind"], "own_brand");
    assert_eq!(alert.labels["severity"], "warning");
    assert_eq!(alert.examples, ["p1", "p2"]);
    assert_eq!(book.tracked_keys(Rule::Trend).collect::<Vec<_>>(), [key]);
    assert_eq!(book.tracked_keys(Rule::Anomaly).count(), 0);
    assert!(
        run(&mut book, 1, None, Some((200, 100.0, 4.5)), 4.5).is_empty(),
        "above half"
    );
    let resolved = run(&mut book, 2, None, None, 0.0);
    assert_eq!(statuses(&resolved), [AlertStatus::Resolved]);
    assert_eq!(
        resolved[0].summary,
        "#acmefire no longer trending: no mentions in 1m; concerns ACME Corp"
    );
    assert_eq!(
        resolved[0].examples,
        ["p1", "p2"],
        "examples of the occurrence kept"
    );
}

#[test]
fn actor_series_say_mentions_authors_and_top_terms() {
    let scored = SeriesScore {
        series: "actors.actor=acme".into(),
        observed: 340.0,
        expected: 55.0,
        score: 0.9995,
        explanation: "spike".into(),
    };
    let facts = SeriesFacts {
        score: &scored,
        actor: Some(ActorRef {
            id: "acme",
            name: "ACME Corp",
            kind: ActorKind::OwnBrand,
        }),
        authors: Some(320),
        top_terms: vec!["recall", "battery", "fire"],
        source: None,
        examples: Vec::new(),
    };
    let content = text::anomaly(window(0), &facts, AlertStatus::Firing);
    assert_eq!(content.title, "Surge in mentions of ACME Corp");
    assert_eq!(
        content.summary,
        "mentions of ACME Corp rose 6.2× over baseline in 1m: 340 vs 55 expected; \
         320 unique authors; top terms: recall, battery, fire (score 0.9995: spike)"
    );
    assert_eq!(content.labels["scope"], "actor");
    assert_eq!(content.labels["actor"], "acme");
}

#[test]
fn book_round_trips_through_serde() {
    let rules = lifecycle(|a| a.cooldown_ms = MINUTE);
    let mut book = AlertBook::new();
    step(&mut book, &rules, 0, 0.9999, 340.0);
    let json = serde_json::to_string(&book).unwrap();
    let restored: AlertBook = serde_json::from_str(&json).unwrap();
    assert_eq!(restored, book);
    assert_eq!(restored.firing().count(), 1);
}

#[test]
fn rule_of_a_dedup_key() {
    assert_eq!(Rule::of_key("trend:word:fire"), Some(Rule::Trend));
    assert_eq!(Rule::of_key(KEY), Some(Rule::Anomaly));
    assert_eq!(Rule::of_key("other"), None);
    assert_eq!(text::utc_time_of_day(-1_000), "23:59:59");
}
