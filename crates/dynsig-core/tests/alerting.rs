//! The alert path through the engine, deterministic: actors from a catalog, the
//! lifecycle, inhibition, grouping, hub-and-spoke routing, and feedback.

use dynsig_core::catalog::{ActorMatcher, Catalog};
use dynsig_core::config::EngineConfig;
use dynsig_core::engine::Engine;
use dynsig_core::feedback::{Feedback, Verdict};
use dynsig_core::model::{Alert, AlertStatus, EpochMs, Input, Post, Signal, TermKind};
use serde_json::json;

const MINUTE: EpochMs = 60_000;
const BASE: EpochMs = 1_767_268_800_000; // 2026-01-01 12:00:00 UTC

fn catalog() -> ActorMatcher {
    let catalog: Catalog = serde_json::from_value(json!({"actors": [
        {"id": "acme", "name": "ACME Corp", "kind": "own_brand",
         "handles": ["@acme"], "hashtags": ["#acmefire"], "keywords": ["acme"]},
        {"id": "globex", "name": "Globex", "kind": "competitor",
         "handles": ["@globexnews"], "keywords": ["globex"]}
    ]}))
    .unwrap();
    ActorMatcher::new(catalog).unwrap()
}

/// One-minute windows, hub-and-spoke routing: marketing owns the own brand, strategy the
/// competitors.
fn config() -> EngineConfig {
    serde_json::from_value(json!({
        "window": {"size_ms": MINUTE, "allowed_lateness_ms": 5000, "idle_timeout_ms": 0},
        "routing": {"preset": "collegial", "teams": [
            {"name": "marketing", "actor_kinds": ["own_brand", "product"]},
            {"name": "strategy", "actor_kinds": ["competitor"]}
        ]}
    }))
    .unwrap()
}

fn post(ts: EpochMs, author: String, text: &str) -> Input {
    Input::Post(Post {
        id: format!("p{ts}"),
        ts,
        author,
        text: text.into(),
        ..Post::default()
    })
}

/// Runs `windows` minutes of posts, `posts_of(w)` giving each minute's texts (spread over
/// the minute, each by its own author); `between(w, engine)` runs before minute `w`.
/// Polls after every post, as a live stream would.
fn run(
    windows: i64,
    posts_of: impl Fn(i64) -> Vec<String>,
    between: impl FnMut(i64, &mut Engine, &[Signal]),
) -> Vec<Signal> {
    run_polling_every(1, windows, posts_of, between)
}

/// [`run`], polling the engine after every `every` posts (a backlog read in batches).
fn run_polling_every(
    every: usize,
    windows: i64,
    posts_of: impl Fn(i64) -> Vec<String>,
    mut between: impl FnMut(i64, &mut Engine, &[Signal]),
) -> Vec<Signal> {
    let mut engine = Engine::new(config()).unwrap();
    engine.set_catalog(catalog());
    let mut signals = Vec::new();
    let mut ingested = 0;
    for w in 0..windows {
        between(w, &mut engine, &signals);
        let texts = posts_of(w);
        let step = MINUTE / (texts.len() as i64 + 1);
        for (i, text) in texts.iter().enumerate() {
            let ts = BASE + w * MINUTE + (i as i64 + 1) * step;
            engine
                .ingest(&post(ts, format!("user{w}-{i}"), text), None)
                .unwrap();
            ingested += 1;
            if ingested % every == 0 {
                signals.extend(engine.poll_closed());
            }
        }
    }
    signals.extend(engine.finish());
    signals
}

fn alerts(signals: &[Signal]) -> Vec<&Alert> {
    signals
        .iter()
        .filter_map(|s| match s {
            Signal::Alert(a) => Some(a),
            _ => None,
        })
        .collect()
}

/// Steady chatter about both actors, then a burst of `#acmefire` in minute 6.
fn acme_incident(w: i64) -> Vec<String> {
    let mut texts = Vec::new();
    for i in 0..40 {
        texts.push(match i % 4 {
            0 => "great launch by @acme today".to_owned(),
            1 => "acme and globex compete on price".to_owned(),
            2 => "@globexnews posted an update".to_owned(),
            _ => "nice weather for a walk".to_owned(),
        });
    }
    if w == 6 {
        texts.extend((0..150).map(|_| "#acmefire smoke everywhere".to_owned()));
    }
    texts
}

#[test]
fn an_actor_incident_is_tagged_inhibits_its_terms_and_reaches_its_team_once() {
    let signals = run(12, acme_incident, |_, _, _| {});

    // Terms carry the actor most of their posts mention; actors are terms of their own.
    let burst = signals
        .iter()
        .find_map(|s| match s {
            Signal::Trend(t) if t.window_start == BASE + 6 * MINUTE => Some(t),
            _ => None,
        })
        .unwrap();
    let acmefire = burst
        .entries
        .iter()
        .find(|e| e.term == "#acmefire")
        .unwrap();
    assert_eq!(acmefire.actor.as_deref(), Some("acme"));
    assert!(burst.entries.iter().any(|e| e.kind == TermKind::Actor
        && e.term == "acme"
        && e.actor.as_deref() == Some("acme")));

    // The mention volume of ACME is a series with its actor.
    assert!(signals.iter().any(|s| matches!(s,
        Signal::Anomaly(a) if a.series == "actors.actor=acme" && a.actor.as_deref() == Some("acme")
            && a.window_start == BASE + 6 * MINUTE)));

    // One firing and one resolved message per dedup key, on the unfiltered topic.
    let all = alerts(&signals);
    let actor_alert = "anomaly:actors.actor=acme";
    let statuses = |key: &str| -> Vec<AlertStatus> {
        all.iter()
            .filter(|a| a.dedup_key == key)
            .map(|a| a.status)
            .collect()
    };
    assert_eq!(
        statuses(actor_alert),
        [AlertStatus::Firing, AlertStatus::Resolved]
    );
    assert_eq!(
        statuses("trend:hashtag:#acmefire"),
        [AlertStatus::Firing, AlertStatus::Resolved]
    );
    let fired = all
        .iter()
        .find(|a| a.dedup_key == actor_alert && a.status == AlertStatus::Firing)
        .unwrap();
    assert_eq!(fired.actor.as_deref(), Some("acme"));
    assert_eq!(fired.labels["actor_kind"], "own_brand");
    assert_eq!(fired.labels["scope"], "actor");
    assert!(
        fired.summary.starts_with("mentions of ACME Corp rose ")
            && fired
                .summary
                .contains("unique authors; top terms: #acmefire"),
        "{}",
        fired.summary
    );

    // Routed: ACME's notifications go to the marketing spoke only, and the trend alert
    // rode muted under the actor-wide one (inhibition), so marketing sees one alert.
    let routed: Vec<(&str, Vec<(&str, AlertStatus)>)> = signals
        .iter()
        .filter_map(|s| match s {
            Signal::Notification(n) => Some((
                n.topic.as_str(),
                n.message
                    .alerts
                    .iter()
                    .map(|a| (a.dedup_key.as_str(), a.status))
                    .collect(),
            )),
            _ => None,
        })
        .collect();
    let acme_routed: Vec<_> = routed
        .iter()
        .filter(|(_, members)| members.iter().any(|(key, _)| key.contains("acme")))
        .collect();
    assert!(!acme_routed.is_empty(), "{routed:#?}");
    assert!(
        acme_routed
            .iter()
            .all(|(topic, _)| *topic == "signals.alerts.marketing"),
        "{routed:#?}"
    );
    let delivered: Vec<(&str, AlertStatus)> = acme_routed
        .iter()
        .flat_map(|(_, members)| members.iter().copied())
        .collect();
    assert_eq!(
        delivered,
        [
            (actor_alert, AlertStatus::Firing),
            (actor_alert, AlertStatus::Resolved)
        ],
        "{routed:#?}"
    );
    assert!(engine_counters_saw_inhibition(&signals));

    // The co-mention graph: one post in four names both ACME and Globex.
    let edges: Vec<(String, String, u64)> = signals
        .iter()
        .filter_map(|s| match s {
            Signal::Ecosystem(e) if e.window_start == BASE + 3 * MINUTE => Some(
                e.graph
                    .edges
                    .iter()
                    .map(|edge| (edge.a.clone(), edge.b.clone(), edge.count))
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .next()
        .unwrap();
    assert_eq!(edges, [("acme".into(), "globex".into(), 10)]);
}

#[test]
fn notifications_do_not_depend_on_how_often_the_engine_is_polled() {
    let routed = |signals: Vec<Signal>| -> Vec<(String, String, AlertStatus)> {
        signals
            .into_iter()
            .filter_map(|s| match s {
                Signal::Notification(n) => Some(n),
                _ => None,
            })
            .flat_map(|n| {
                let changed = n.message.changed.clone();
                n.message
                    .alerts
                    .into_iter()
                    .filter(move |a| changed.contains(&a.id))
                    .map(move |a| (n.topic.clone(), a.dedup_key, a.status))
            })
            .collect()
    };
    let live = routed(run(12, acme_incident, |_, _, _| {}));
    // A backlog: several windows close in one poll.
    let batched = routed(run_polling_every(500, 12, acme_incident, |_, _, _| {}));
    assert!(!live.is_empty());
    assert_eq!(batched, live);
}

/// The trend alert of `#acmefire` went to `signals.alerts` but to no team topic.
fn engine_counters_saw_inhibition(signals: &[Signal]) -> bool {
    let on_firehose = alerts(signals)
        .iter()
        .any(|a| a.dedup_key == "trend:hashtag:#acmefire");
    let routed = signals.iter().any(|s| matches!(s,
        Signal::Notification(n) if n.message.alerts.iter().any(|a| a.dedup_key == "trend:hashtag:#acmefire")));
    on_firehose && !routed
}

/// A term ("recall", about no actor) at ~2 posts a minute, bursting to 20 in minutes 5
/// and 25: just over the trend threshold.
fn recall_bursts(w: i64) -> Vec<String> {
    let recalls = if w == 5 || w == 25 { 20 } else { 2 };
    let mut texts: Vec<String> = (0..recalls)
        .map(|_| "product recall announced".to_owned())
        .collect();
    texts.extend((0..30).map(|i| format!("ordinary chatter number{}", i % 7)));
    texts
}

fn recall_firings(signals: &[Signal]) -> Vec<EpochMs> {
    alerts(signals)
        .iter()
        .filter(|a| a.dedup_key == "trend:word:recall" && a.status == AlertStatus::Firing)
        .map(|a| (a.starts_at - BASE) / MINUTE)
        .collect()
}

#[test]
fn noise_feedback_keeps_an_identical_later_burst_from_firing() {
    let without_feedback = run(30, recall_bursts, |_, _, _| {});
    assert_eq!(
        recall_firings(&without_feedback),
        [6, 26],
        "both bursts fire"
    );

    let with_feedback = run(30, recall_bursts, |w, engine, signals| {
        if w != 10 {
            return;
        }
        let first = alerts(signals)
            .into_iter()
            .find(|a| a.dedup_key == "trend:word:recall")
            .expect("the first burst fired")
            .id
            .clone();
        for who in ["ann", "bob", "cat", "dan", "eve"] {
            let adjustment = engine
                .alerting_mut()
                .feedback(&Feedback {
                    alert_id: first.clone(),
                    verdict: Verdict::Noise,
                    who: who.into(),
                    at: BASE + 10 * MINUTE,
                })
                .unwrap();
            assert!(adjustment.counted);
        }
    });
    assert_eq!(
        recall_firings(&with_feedback),
        [6],
        "the second burst stays quiet"
    );
}
