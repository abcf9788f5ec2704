//! End-to-end test of the HTTP API (`/api/*`) of `dynsig run` against a real Kafka-protocol
//! broker (tansu, started by `tests/support`), with an actor catalog file and an API token:
//!
//! - the bearer token on writes (401 without it or with a wrong one), silences created,
//!   listed and deleted (204, then 404), the catalog listed and reloaded when the file
//!   changes (a bad version keeps the previous catalog and is counted);
//! - a planted burst produced to the input topics: the trend snapshot (per window, per
//!   actor) and the active alert served as JSON; feedback on that alert over HTTP (202; a
//!   malformed id is a 400 naming the field) and on `signals.feedback` (a malformed record
//!   lands in `dynsig.dlq` with its reason);
//! - the alerting metrics on `/metrics`, and a clean SIGTERM;
//! - and, without a broker, that a bad catalog file stops the service at start, naming the
//!   file and the field.
//!
//! Every wait is bounded and fails with the service's logs; no assertion depends on timing.

mod support;

use serde_json::{json, Value};
use support::{
    free_port, poll_until, DynsigProcess, OutRecord, Record, Service, TestBroker, TestDir, WAIT,
};

/// Event-time origin, in the past (or inputs would be refused as from the future).
const T0: i64 = 1_767_398_400_000; // 2026-01-03T00:00:00Z
const WINDOW_MS: i64 = 10_000;
/// Background windows 0..=4; the burst is in the last one, so that its alert stays active:
/// no later window closes (windows close by event time only, and nothing comes after).
const BURST_WINDOW: i64 = 4;
const BURST_POSTS: usize = 60;
const TOKEN: &str = "api-test-token-5f2c";
const TREND_ALERT: &str = "trend:hashtag:#acmefire";

const CATALOG: &str = r##"
[[actors]]
id = "acme"
name = "ACME Corp"
kind = "own_brand"
keywords = ["acme"]
hashtags = ["#acmefire"]
"##;

const CATALOG_WITH_GLOBEX: &str = r##"
[[actors]]
id = "acme"
name = "ACME Corp"
kind = "own_brand"
keywords = ["acme"]
hashtags = ["#acmefire"]

[[actors]]
id = "globex"
name = "Globex"
kind = "competitor"
keywords = ["globex"]
"##;

const WORDS: &[&str] = &[
    "market", "price", "launch", "store", "delivery", "invoice", "shipping", "product", "service",
    "support", "ticket", "refund", "customer", "account", "payment", "checkout", "basket",
    "coupon", "discount", "warranty", "screen", "camera", "laptop", "phone",
];

/// A fixed-seed generator (SplitMix64), so that every run produces the same records.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }

    fn words(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| WORDS[self.below(WORDS.len() as u64) as usize])
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn post(id: &str, ts: i64, author: &str, text: &str) -> OutRecord {
    OutRecord::new(
        json!({"id": id, "ts": ts, "source": "forum", "author": author, "text": text, "lang": "en"})
            .to_string(),
    )
    .key(id)
}

fn event(id: &str, ts: i64) -> OutRecord {
    OutRecord::new(json!({"id": id, "ts": ts, "kind": "order", "key": "web"}).to_string()).key(id)
}

/// Background posts and events in windows 0..=4, the burst of `#acmefire` in window 4, and
/// one post and one event early in window 5: the watermark (the minimum over both input
/// partitions, minus 1 s of lateness) then passes the end of window 4 and stops there.
fn inputs() -> (Vec<OutRecord>, Vec<OutRecord>) {
    let mut rng = Rng(0xA91);
    let (mut posts, mut events) = (Vec::new(), Vec::new());
    for w in 0..=BURST_WINDOW {
        let start = T0 + w * WINDOW_MS;
        for i in 0..20 {
            let ts = start + rng.below(WINDOW_MS as u64) as i64;
            let author = format!("u{}", rng.below(50));
            posts.push(post(&format!("b{w}-{i:02}"), ts, &author, &rng.words(5)));
            events.push(event(&format!("e{w}-{i:02}"), ts));
        }
        if w == BURST_WINDOW {
            for i in 0..BURST_POSTS {
                let ts = start + rng.below(WINDOW_MS as u64) as i64;
                let text = format!("{} #acmefire {}", rng.words(2), rng.words(1));
                posts.push(post(
                    &format!("burst-{i:02}"),
                    ts,
                    &format!("fan{i}"),
                    &text,
                ));
            }
        }
    }
    let closing = T0 + (BURST_WINDOW + 1) * WINDOW_MS + 1_500;
    posts.push(post("closing", closing, "closer", "market update"));
    events.push(event("closing", closing));
    (posts, events)
}

fn actor_ids(body: &Value) -> Vec<String> {
    body["actors"]
        .as_array()
        .map(|actors| {
            actors
                .iter()
                .filter_map(|a| a["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn header(record: &Record, name: &str) -> String {
    record.header_str(name).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_over_a_running_service() {
    let broker = TestBroker::start();
    let t = |name: &str| broker.topic(name);
    let (posts_topic, events_topic) = (t("posts"), t("events"));
    let (feedback_topic, dlq_topic) = (t("signals.feedback"), t("dynsig.dlq"));
    broker
        .create_topics(&[(&posts_topic, 1), (&events_topic, 1)])
        .await;

    let dir = TestDir::new("api");
    let catalog = dir.write("catalog.toml", CATALOG);
    let config = format!(
        r#"[kafka]
group_id = "{group}"
partitions = 1
[kafka.client]
"session.timeout.ms" = "6000"
[topics]
posts = "{posts_topic}"
events = "{events_topic}"
trends = "{trends}"
anomalies = "{anomalies}"
alerts = "{alerts}"
ecosystem = "{ecosystem}"
feedback = "{feedback_topic}"
dlq = "{dlq_topic}"
late = "{late}"
[window]
size_ms = {WINDOW_MS}
allowed_lateness_ms = 1000
idle_timeout_ms = 0
[catalog]
path = "{catalog}"
reload_check_ms = 200
"#,
        group = t("dynsig-api"),
        trends = t("signals.trends"),
        anomalies = t("signals.anomalies"),
        alerts = t("signals.alerts"),
        ecosystem = t("signals.ecosystem"),
        late = t("signals.late"),
        catalog = catalog.display(),
    );
    let mut svc = Service::start(
        &broker,
        &dlq_topic,
        &config,
        &[("DYNSIG_HTTP__API_TOKEN", TOKEN)],
    );
    // Ready = partitions assigned: records produced from here on are picked up.
    svc.get_until("/readyz", "readiness", |_| true).await;

    // The catalog as loaded at start.
    let actors = svc.expect("GET", "/api/actors", None, None, 200).await;
    svc.check(actor_ids(&actors) == ["acme"], || {
        format!("GET /api/actors: expected the catalog's one actor: {actors}")
    });
    svc.check(actors["actors"][0]["kind"] == "own_brand", || {
        format!("GET /api/actors: actors as written in the catalog: {actors}")
    });

    // Silences: the token is required, the silence listed, deleted once.
    let silence = r#"{"matchers":{"actor":"globex"},"ends_at":4102444000000,"created_by":"ops","comment":"api test"}"#;
    for token in [None, Some("wrong-token")] {
        let refused = svc
            .expect("POST", "/api/silences", token, Some(silence), 401)
            .await;
        svc.check(refused["error"].is_string(), || {
            format!("401 without a JSON error: {refused}")
        });
    }
    svc.expect("DELETE", "/api/silences/silence-1", None, None, 401)
        .await;
    let listed = svc.expect("GET", "/api/silences", None, None, 200).await;
    svc.check(listed["silences"] == json!([]), || {
        format!("a refused silence must not be stored: {listed}")
    });
    let bad = svc
        .expect(
            "POST",
            "/api/silences",
            Some(TOKEN),
            Some(r#"{"matchers":{"actor":"globex"}}"#),
            400,
        )
        .await;
    svc.check(
        bad["error"].as_str().is_some_and(|e| e.contains("ends_at")),
        || format!("a silence without ends_at: the error should name it: {bad}"),
    );
    svc.expect("POST", "/api/silences", Some(TOKEN), Some("{oops"), 400)
        .await;
    let created = svc
        .expect("POST", "/api/silences", Some(TOKEN), Some(silence), 201)
        .await;
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    svc.check(!id.is_empty(), || format!("201 without an id: {created}"));
    let listed = svc.expect("GET", "/api/silences", None, None, 200).await;
    let found: Vec<&Value> = listed["silences"]
        .as_array()
        .map(|s| s.iter().filter(|s| s["id"] == id.as_str()).collect())
        .unwrap_or_default();
    svc.check(
        found.len() == 1
            && found[0]["matchers"]["actor"] == "globex"
            && found[0]["starts_at"].is_i64()
            && found[0]["active"] == true,
        || format!("GET /api/silences should list {id}, active from now: {listed}"),
    );
    let path = format!("/api/silences/{id}");
    svc.expect("DELETE", &path, Some(TOKEN), None, 204).await;
    svc.expect("DELETE", &path, Some(TOKEN), None, 404).await;
    // One that stays, for the active-silences gauge. Silences are in event time, like the
    // alerts they match: this one covers the inputs' time, in the past.
    let lasting = format!(
        r#"{{"id":"globex-quiet","matchers":{{"actor":"globex"}},"starts_at":{T0},"ends_at":4102444000000}}"#
    );
    let created = svc
        .expect("POST", "/api/silences", Some(TOKEN), Some(&lasting), 201)
        .await;
    svc.check(created["id"] == "globex-quiet", || {
        format!("a silence keeps the id it was given: {created}")
    });

    // Catalog reload: a bad version is refused (the previous catalog stays), a good one is
    // picked up without a restart.
    std::fs::write(
        &catalog,
        "[[actors]]\nid = \"acme\"\nname = \"ACME\"\nkind = \"rival\"\n",
    )
    .expect("rewrite the catalog");
    svc.wait_metric("dynsig_catalog_reload_failures_total", |v| v >= 1.0)
        .await;
    let actors = svc.expect("GET", "/api/actors", None, None, 200).await;
    svc.check(actor_ids(&actors) == ["acme"], || {
        format!("after a bad catalog file, the previous catalog stays: {actors}")
    });
    std::fs::write(&catalog, CATALOG_WITH_GLOBEX).expect("rewrite the catalog");
    svc.get_until("/api/actors", "the reloaded catalog", |body| {
        actor_ids(body) == ["acme", "globex"]
    })
    .await;

    // Feedback before any input was read: alert time (event time) has not started, so the
    // API refuses it (503: a vote dated before would be lost) and a verdict on the topic
    // waits for it.
    // (About another rule and series than the verdict below, which must raise its factor.)
    let early = json!({"alert_id": format!("anomaly:posts.source=forum@{T0}"), "verdict": "useful", "who": "bob"})
        .to_string();
    svc.expect("POST", "/api/feedback", Some(TOKEN), Some(&early), 503)
        .await;
    svc.check(
        broker.wait_for_topic(&feedback_topic, WAIT).await.is_some(),
        || format!("the service did not create {feedback_topic}"),
    );
    broker
        .produce(&feedback_topic, &[OutRecord::new(early).key("fb-early")])
        .await;

    // The planted burst: its trend snapshot and its alert, served by the API.
    let (posts, events) = inputs();
    broker.produce(&posts_topic, &posts).await;
    broker.produce(&events_topic, &events).await;
    let burst_start = T0 + BURST_WINDOW * WINDOW_MS;
    let alerts = svc
        .get_until("/api/alerts", "the burst's active alert", |body| {
            body["alerts"]
                .as_array()
                .is_some_and(|a| a.iter().any(|a| a["dedup_key"] == TREND_ALERT))
        })
        .await;
    let alert = alerts["alerts"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["dedup_key"] == TREND_ALERT))
        .cloned()
        .unwrap_or_default();
    svc.check(
        ["pending", "firing"].contains(&alert["status"].as_str().unwrap_or_default())
            && alert["id"] == format!("{TREND_ALERT}@{}", alert["starts_at"]),
        || format!("an active alert is pending or firing, id <dedup_key>@<starts_at>: {alert}"),
    );

    let trends = svc
        .get_until(
            "/api/trends?window=10s",
            "the burst window's snapshot",
            |body| body["trends"][0]["window_start"] == burst_start,
        )
        .await;
    let snapshot = &trends["trends"][0];
    svc.check(
        trends["trends"].as_array().map(Vec::len) == Some(1)
            && snapshot["window"] == "10s"
            && snapshot["final"] == true
            && snapshot["entries"][0]["term"] == "#acmefire"
            && snapshot["entries"][0]["actor"] == "acme",
        || format!("GET /api/trends?window=10s: the burst ranked first, tagged acme: {trends}"),
    );
    let per_actor = svc
        .expect("GET", "/api/trends?actor=acme", None, None, 200)
        .await;
    let entries = per_actor["trends"][0]["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    svc.check(
        !entries.is_empty() && entries.iter().all(|e| e["actor"] == "acme"),
        || format!("GET /api/trends?actor=acme: only acme's entries: {per_actor}"),
    );
    let none = svc
        .expect("GET", "/api/trends?window=5m", None, None, 200)
        .await;
    svc.check(none["trends"] == json!([]), || {
        format!("GET /api/trends?window=5m: no such window: {none}")
    });
    svc.expect("GET", "/api/trends?actor=nobody", None, None, 404)
        .await;

    // Feedback over HTTP on the active alert, and malformed ones.
    let verdict = json!({"alert_id": alert["id"], "verdict": "noise", "who": "ann"}).to_string();
    svc.expect("POST", "/api/feedback", None, Some(&verdict), 401)
        .await;
    let adjustment = svc
        .expect("POST", "/api/feedback", Some(TOKEN), Some(&verdict), 202)
        .await;
    svc.check(
        adjustment["counted"] == true
            && adjustment["subject"]["series"] == TREND_ALERT
            && adjustment["factor"].as_f64().is_some_and(|f| f > 1.0),
        || format!("noise feedback should raise the threshold: {adjustment}"),
    );
    for (body, field) in [
        (
            r#"{"alert_id":"not-an-alert","verdict":"noise","who":"ann"}"#,
            "alert_id",
        ),
        (
            r#"{"alert_id":"trend:hashtag:#x@1","verdict":"meh","who":"ann"}"#,
            "verdict",
        ),
        (
            r#"{"alert_id":"trend:hashtag:#x@1","verdict":"noise"}"#,
            "who",
        ),
    ] {
        let refused = svc
            .expect("POST", "/api/feedback", Some(TOKEN), Some(body), 400)
            .await;
        svc.check(
            refused["error"].as_str().is_some_and(|e| e.contains(field)),
            || format!("POST /api/feedback {body}: the 400 should name {field}: {refused}"),
        );
    }

    // A malformed verdict on the topic is dead-lettered with its reason.
    let delivered = broker
        .produce(
            &feedback_topic,
            &[OutRecord::new("{\"alert_id\": ").key("fb-bad")],
        )
        .await;
    let bad_at = delivered[0];
    let dlq = broker
        .consume_until(&dlq_topic, WAIT, |records| {
            records
                .iter()
                .any(|r| header(r, "dynsig-source-topic") == feedback_topic)
        })
        .await;
    let letter = dlq
        .iter()
        .find(|r| header(r, "dynsig-source-topic") == feedback_topic)
        .unwrap_or_else(|| {
            svc.fail(format!(
                "no dead letter from {feedback_topic} in {dlq_topic}"
            ))
        });
    svc.check(
        header(letter, "dynsig-reason") == "invalid_json"
            && !header(letter, "dynsig-detail").is_empty()
            && header(letter, "dynsig-source-offset") == bad_at.offset.to_string()
            && letter.key.as_deref() == Some(&b"fb-bad"[..])
            && letter.payload.as_deref() == Some(&b"{\"alert_id\": "[..]),
        || format!("the malformed feedback record's dead letter: {letter:?}"),
    );

    // Metrics: one verdict over HTTP and the early one from the topic, recorded once the
    // clock started; the silence in force; the factors feedback left.
    svc.wait_metric("dynsig_feedback_total", |v| v >= 2.0).await;
    svc.wait_metric("dynsig_silences_active", |v| v >= 1.0)
        .await;
    // The early "useful" verdict lowered its rule's threshold (and its series'): it was
    // held until alert time started, not dated before it (then it would have decayed to
    // 1 at once).
    svc.wait_metric(r#"dynsig_feedback_threshold_factor{rule="anomaly"}"#, |v| {
        v < 1.0
    })
    .await;
    svc.wait_metric("dynsig_feedback_adjusted_series", |v| v >= 1.0)
        .await;
    svc.wait_metric("dynsig_catalog_actors", |v| v == 2.0).await;
    svc.wait_metric("dynsig_events_rejected_total", |v| v >= 1.0)
        .await;

    svc.ensure_running("at the end");
    let logs = svc.process.logs();
    let status = svc.process.terminate();
    assert!(
        status.success(),
        "dynsig should exit 0 on SIGTERM, got {status}\n{logs}"
    );
}

/// A catalog the service cannot use stops it at start, before it contacts the cluster (so
/// no broker is needed here), with the file and the bad field named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_catalog_stops_the_service_at_start() {
    let dir = TestDir::new("api-bad-catalog");
    let catalog = dir.write(
        "catalog.toml",
        "[[actors]]\nid = \"acme\"\nname = \"A\"\nkind = \"partner\"\n\
         [[actors]]\nid = \"acme\"\nname = \"B\"\nkind = \"partner\"\n",
    );
    let http = format!("127.0.0.1:{}", free_port());
    let mut process = DynsigProcess::spawn(
        &["run", "--brokers", "127.0.0.1:1", "--http-addr", &http],
        &[("DYNSIG_CATALOG__PATH", catalog.to_str().unwrap())],
    );
    let status = poll_until(WAIT, || {
        let status = process.exit_status();
        async move { status }
    })
    .await;
    let logs = process.logs();
    assert!(
        status.is_some_and(|s| !s.success()),
        "dynsig should exit with an error on a bad catalog, got {status:?}\n{logs}"
    );
    assert!(
        logs.contains("actors[1].id") && logs.contains("catalog.toml"),
        "the error should name the file and the field:\n{logs}"
    );
}
