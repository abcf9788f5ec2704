//! The alert path end to end, against the real broker with the service as a subprocess:
//! an actor catalog, hub-and-spoke routing (marketing owns the own brand), and a backlog
//! with a planted ACME incident and a `recall` burst, then, after a silence and "noise"
//! feedback made through the HTTP API, the same two incidents again.
//!
//! Checks: the first ACME incident reaches the marketing spoke as exactly one firing and
//! one resolved message for its dedup key, and nothing about ACME goes to the hub; the
//! `recall` trend reaches the hub the same way. The API refuses a silence without its
//! token. The second ACME incident still fires on the unfiltered `signals.alerts` but the
//! silence keeps it from the team (and the metric counts it); after five "noise" votes the
//! identical second `recall` burst does not fire at all.

mod support;

use std::collections::BTreeMap;

use serde_json::{json, Value};
use support::{metric_sum, parse, OutRecord, Record, Service, TestBroker, TestDir};

const T0: i64 = 1_767_484_800_000; // 2026-01-04T00:00:00Z
const WINDOW_MS: i64 = 10_000;
const TOKEN: &str = "alerts-test-token";
const ACME_ALERT: &str = "anomaly:actors.actor=acme";
const RECALL_ALERT: &str = "trend:word:recall";
/// Windows of the two phases, and where their incidents are planted.
const FIRST: std::ops::Range<i64> = 0..15;
const SECOND: std::ops::Range<i64> = 15..30;
const ACME_BURSTS: [i64; 2] = [6, 20];
const RECALL_BURSTS: [i64; 2] = [8, 24];

const CATALOG: &str = r##"
[[actors]]
id = "acme"
name = "ACME Corp"
kind = "own_brand"
handles = ["@acme"]
hashtags = ["#acmefire"]
keywords = ["acme"]

[[actors]]
id = "globex"
name = "Globex"
kind = "competitor"
handles = ["@globexnews"]
keywords = ["globex"]
"##;

/// Posts of window `w`, each by its own author, spread over the window.
fn window_posts(w: i64) -> Vec<OutRecord> {
    let mut texts: Vec<String> = (0..40)
        .map(|i| {
            match i % 4 {
                0 => "great launch by @acme today",
                1 => "acme and globex compete on price",
                2 => "@globexnews posted an update",
                _ => "nice weather for a walk",
            }
            .to_owned()
        })
        .collect();
    texts.extend((0..30).map(|i| format!("ordinary chatter number{}", i % 7)));
    let recalls = if RECALL_BURSTS.contains(&w) { 20 } else { 2 };
    texts.extend((0..recalls).map(|_| "product recall announced".to_owned()));
    if ACME_BURSTS.contains(&w) {
        texts.extend((0..150).map(|_| "#acmefire smoke everywhere".to_owned()));
    }
    let step = WINDOW_MS / (texts.len() as i64 + 1);
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let ts = T0 + w * WINDOW_MS + (i as i64 + 1) * step;
            OutRecord::new(
                json!({"id": format!("p{w}-{i}"), "ts": ts, "author": format!("u{w}-{i}"), "text": text})
                    .to_string(),
            )
        })
        .collect()
}

fn posts(windows: std::ops::Range<i64>) -> Vec<OutRecord> {
    windows.flat_map(window_posts).collect()
}

/// Per dedup key, the statuses with which it was published in `notifications`: a member
/// counts when it is new or changed in its notification (`changed`), not when a later
/// notification of its group lists it again.
fn delivered(notifications: &[Record]) -> BTreeMap<String, Vec<String>> {
    let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in notifications.iter().map(parse) {
        let changed: Vec<&str> = n["changed"]
            .as_array()
            .map(|ids| ids.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for alert in n["alerts"].as_array().into_iter().flatten() {
            if changed.contains(&alert["id"].as_str().unwrap_or_default()) {
                by_key
                    .entry(alert["dedup_key"].as_str().unwrap_or_default().to_owned())
                    .or_default()
                    .push(alert["status"].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    by_key
}

/// The firing messages of `dedup_key` on `signals.alerts`, by occurrence id.
fn firings(alerts: &[Record], dedup_key: &str) -> Vec<String> {
    alerts
        .iter()
        .map(parse)
        .filter(|a| a["dedup_key"] == dedup_key && a["status"] == "firing")
        .map(|a| a["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The final snapshot of the window starting at `start` is published.
fn closed(trends: &[Record], start: i64) -> bool {
    trends
        .iter()
        .map(parse)
        .any(|s| s["final"] == true && s["window_start"] == start)
}

/// `dynsig_alerts_suppressed_total{reason="<reason>"}` in a Prometheus text page.
fn suppressed(metrics: &str, reason: &str) -> f64 {
    let line = format!("reason=\"{reason}\"");
    let only: String = metrics
        .lines()
        .filter(|l| l.starts_with("dynsig_alerts_suppressed_total") && l.contains(&line))
        .collect::<Vec<_>>()
        .join("\n");
    metric_sum(&only, "dynsig_alerts_suppressed_total").unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_reach_their_team_once_and_silences_and_feedback_quiet_them() {
    let broker = TestBroker::start();
    let t = |name: &str| broker.topic(name);
    let (posts_topic, alerts_topic, trends_topic, dlq_topic) = (
        t("posts"),
        t("signals.alerts"),
        t("signals.trends"),
        t("dynsig.dlq"),
    );
    let (marketing, strategy, hub) = (
        t("signals.alerts.marketing"),
        t("signals.alerts.strategy"),
        t("signals.alerts.hub"),
    );
    broker.create_topics(&[(posts_topic.as_str(), 1)]).await;
    let dir = TestDir::new("alerts");
    let catalog = dir.write("catalog.toml", CATALOG);
    let config = format!(
        r#"[kafka]
group_id = "{group}"
partitions = 1
[kafka.client]
"session.timeout.ms" = "6000"
[topics]
posts = "{posts_topic}"
events = "{events}"
trends = "{trends_topic}"
anomalies = "{anomalies}"
alerts = "{alerts_topic}"
ecosystem = "{ecosystem}"
feedback = "{feedback}"
dlq = "{dlq_topic}"
late = "{late}"
[window]
size_ms = {WINDOW_MS}
allowed_lateness_ms = 1000
idle_timeout_ms = 1000
[anomaly]
refractory_windows = 5
[alerts]
min_firing_ms = 10000
cooldown_ms = 0
[metafilter.group]
group_wait_ms = 1000
group_interval_ms = 10000
[catalog]
path = "{catalog}"
[routing]
preset = "collegial"
topic = "{hub}"
teams = [
    {{ name = "marketing", topic = "{marketing}", actor_kinds = ["own_brand"] }},
    {{ name = "strategy", topic = "{strategy}", actor_kinds = ["competitor"] }},
]
"#,
        group = t("dynsig-alerts"),
        events = t("events"),
        anomalies = t("signals.anomalies"),
        ecosystem = t("signals.ecosystem"),
        feedback = t("signals.feedback"),
        late = t("signals.late"),
        catalog = catalog.display(),
    );
    let mut svc = Service::start(
        &broker,
        &dlq_topic,
        &config,
        &[("DYNSIG_HTTP__API_TOKEN", TOKEN)],
    );
    svc.wait_http_ok("/readyz", support::WAIT).await;

    // First phase: each incident reaches its team once, firing then resolved.
    broker.produce(&posts_topic, &posts(FIRST)).await;
    let last_start = T0 + (FIRST.end - 1) * WINDOW_MS;
    svc.wait_for_records(&broker, &trends_topic, "the first phase's windows", |r| {
        closed(r, last_start)
    })
    .await;
    let done =
        |key: &'static str| move |r: &[Record]| delivered(r).get(key).is_some_and(|s| s.len() >= 2);
    let to_marketing = svc
        .wait_for_records(
            &broker,
            &marketing,
            "ACME's alert resolved",
            done(ACME_ALERT),
        )
        .await;
    let to_hub = svc
        .wait_for_records(
            &broker,
            &hub,
            "the recall alert resolved",
            done(RECALL_ALERT),
        )
        .await;
    let expected = vec!["firing".to_owned(), "resolved".to_owned()];
    let marketing_keys = delivered(&to_marketing);
    svc.check(marketing_keys.get(ACME_ALERT) == Some(&expected), || {
        format!("marketing got {marketing_keys:?}")
    });
    let hub_keys = delivered(&to_hub);
    svc.check(hub_keys.get(RECALL_ALERT) == Some(&expected), || {
        format!("the hub got {hub_keys:?}")
    });
    svc.check(hub_keys.keys().all(|k| !k.contains("acme")), || {
        format!("ACME's alerts belong to marketing alone, the hub got {hub_keys:?}")
    });
    let alerts = svc
        .wait_for_records(&broker, &alerts_topic, "the first firings", |r| {
            !firings(r, RECALL_ALERT).is_empty()
        })
        .await;
    let recall_id = firings(&alerts, RECALL_ALERT)[0].clone();

    // A silence on ACME needs the token; five people call the recall alert noise.
    let silence = json!({"matchers": {"actor": "acme"},
        "starts_at": T0 + SECOND.start * WINDOW_MS, "ends_at": T0 + 40 * WINDOW_MS,
        "created_by": "ops", "comment": "known incident"})
    .to_string();
    svc.expect("POST", "/api/silences", None, Some(&silence), 401)
        .await;
    svc.expect("POST", "/api/silences", Some(TOKEN), Some(&silence), 201)
        .await;
    for who in ["ann", "bob", "cat", "dan", "eve"] {
        let vote = json!({"alert_id": recall_id, "verdict": "noise", "who": who}).to_string();
        svc.expect("POST", "/api/feedback", Some(TOKEN), Some(&vote), 202)
            .await;
    }

    // Second phase: the same incidents again.
    broker.produce(&posts_topic, &posts(SECOND)).await;
    let last_start = T0 + (SECOND.end - 1) * WINDOW_MS;
    svc.wait_for_records(&broker, &trends_topic, "the second phase's windows", |r| {
        closed(r, last_start)
    })
    .await;
    let alerts = svc
        .wait_for_records(&broker, &alerts_topic, "ACME's second firing", |r| {
            firings(r, ACME_ALERT).len() >= 2
        })
        .await;
    let recall_firings = firings(&alerts, RECALL_ALERT);
    svc.check(recall_firings.len() == 1, || {
        format!("after the noise votes the second recall burst must not fire: {recall_firings:?}")
    });
    svc.wait_metric("dynsig_alerts_suppressed_total", |v| v >= 1.0)
        .await;
    let (_, metrics) = support::http_get(&svc.http, "/metrics")
        .await
        .unwrap_or_default();
    svc.check(suppressed(&metrics, "silenced") >= 1.0, || {
        format!("silenced alerts must be counted:\n{metrics}")
    });
    // Whatever went to marketing since, ACME's second occurrence was not among it.
    let to_marketing = broker
        .consume_all(
            &marketing,
            support::Stop::Idle(std::time::Duration::from_secs(2)),
            support::WAIT,
        )
        .await;
    let marketing_keys = delivered(&to_marketing);
    svc.check(marketing_keys.get(ACME_ALERT) == Some(&expected), || {
        format!("the silence must keep ACME's second incident from marketing: {marketing_keys:?}")
    });
    let to_strategy = broker
        .consume_all(
            &strategy,
            support::Stop::Idle(std::time::Duration::from_secs(1)),
            support::WAIT,
        )
        .await;
    svc.check(
        delivered(&to_strategy).keys().all(|k| !k.contains("acme")),
        || "ACME's alerts went to strategy".into(),
    );
    svc.ensure_running("at the end");
    let status = svc.process.terminate();
    assert!(status.success(), "SIGTERM exit: {status}");
}
