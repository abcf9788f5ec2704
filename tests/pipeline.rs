//! End-to-end tests of `dynsig run` against a real Kafka-protocol broker (tansu, started by
//! `tests/support`): inputs are produced to the input topics, the service binary runs as a
//! child process, and its outputs are read back from its topics as any consumer would.
//!
//! - `backlog_to_trends_alerts_and_dead_letters`: the whole path on a backlog produced before
//!   the service starts: 12 windows of background posts and events (JSON and protobuf), one
//!   planted burst (a hashtag and an error spike), malformed records of every kind the service
//!   can reject; checks the trend snapshot, the alerts, the anomaly, the dead-letter topic byte
//!   for byte, the HTTP endpoints and a clean SIGTERM.
//! - `live_records_produced_after_start`: the service started first on empty topics, then
//!   records produced: checks that data arriving after the start is picked up.
//!
//! Every wait is bounded (90 s at most) and fails with the service's logs. The data is
//! deterministic (fixed seed, fixed event times), so a failure is reproducible.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use prost::Message as _;
use serde_json::{json, Value};
use support::{
    http_get, metric_sum, parse, poll_until, Delivered, OutRecord, Record, Service, TestBroker,
    WAIT,
};

/// Event-time origin of the backlog test, aligned to the window size.
const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z: in the past, or it would be refused as future
const WINDOW_MS: i64 = 10_000;
/// Windows of background traffic, and the one with the planted burst.
const BACKGROUND_WINDOWS: i64 = 12;
const BURST_WINDOW: i64 = 9;
const POSTS_PER_WINDOW: usize = 60;
const EVENTS_PER_SERIES_PER_WINDOW: usize = 10;
const BURST_POSTS: usize = 120;
const BURST_ERRORS: usize = 300;

const PROTOBUF: &str = "application/x-protobuf";

/// Ordinary vocabulary of the background posts: nouns that no built-in stopword list holds,
/// so that every one of them is counted.
const WORDS: &[&str] = &[
    "market",
    "price",
    "launch",
    "store",
    "delivery",
    "invoice",
    "shipping",
    "product",
    "service",
    "support",
    "ticket",
    "refund",
    "customer",
    "account",
    "payment",
    "checkout",
    "basket",
    "coupon",
    "discount",
    "warranty",
    "battery",
    "screen",
    "camera",
    "laptop",
    "phone",
    "tablet",
    "charger",
    "cable",
    "speaker",
    "headset",
    "keyboard",
    "monitor",
    "printer",
    "router",
    "kitchen",
    "garden",
    "bicycle",
    "coffee",
    "tea",
    "breakfast",
    "lunch",
    "dinner",
    "weekend",
    "holiday",
    "vacation",
    "airport",
    "station",
    "train",
    "flight",
    "hotel",
    "beach",
    "mountain",
    "river",
    "forest",
    "city",
    "village",
    "street",
    "bridge",
    "tower",
    "museum",
    "concert",
    "festival",
    "stadium",
    "football",
    "tennis",
    "basketball",
    "marathon",
    "cycling",
    "swimming",
    "yoga",
    "fitness",
    "doctor",
    "hospital",
    "pharmacy",
    "school",
    "teacher",
    "student",
    "library",
    "office",
    "meeting",
    "project",
    "deadline",
    "budget",
    "report",
    "analysis",
    "strategy",
    "growth",
    "revenue",
    "profit",
    "margin",
    "quarter",
    "forecast",
    "investor",
    "startup",
    "founder",
    "engineer",
    "designer",
    "developer",
    "manager",
    "release",
    "update",
    "version",
    "feature",
    "bug",
    "patch",
    "server",
    "cloud",
    "network",
    "database",
    "backup",
    "storage",
    "security",
    "password",
    "login",
    "email",
    "newsletter",
    "podcast",
    "video",
    "stream",
    "channel",
    "review",
    "rating",
    "keynote",
    "opinion",
    "feedback",
    "survey",
    "question",
    "answer",
    "idea",
    "plan",
    "goal",
    "team",
    "partner",
    "supplier",
    "factory",
    "warehouse",
    "truck",
    "container",
    "package",
    "parcel",
    "courier",
    "postman",
    "neighbor",
    "family",
    "friend",
    "parent",
    "child",
    "puppy",
    "kitten",
    "weather",
    "rain",
    "snow",
    "sunshine",
    "storm",
    "wind",
    "autumn",
    "winter",
    "spring",
    "summer",
    "morning",
    "evening",
    "night",
    "sunrise",
    "sunset",
    "music",
    "guitar",
    "piano",
    "movie",
    "cinema",
    "theater",
    "novel",
    "poem",
    "painting",
    "gallery",
    "photo",
    "recipe",
    "bakery",
    "bread",
    "cheese",
    "chocolate",
    "fruit",
    "apple",
    "banana",
    "orange",
    "lemon",
    "tomato",
    "potato",
    "salad",
    "pasta",
    "pizza",
    "burger",
    "sandwich",
    "soup",
    "dessert",
    "cookie",
    "cake",
    "juice",
    "water",
    "energy",
    "climate",
    "solar",
    "electric",
    "vehicle",
    "garage",
];
const SOURCES: &[&str] = &["twitter", "forum", "review", "news"];

// ---------------------------------------------------------------------------------------------
// Deterministic data
// ---------------------------------------------------------------------------------------------

/// SplitMix64: a fixed-seed generator, so that every run produces the same records.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }

    fn words(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| self.pick(WORDS))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// An event time inside the window `[start, start + WINDOW_MS)`.
    fn ts_in(&mut self, start: i64) -> i64 {
        start + self.below(WINDOW_MS as u64) as i64
    }
}

/// How a valid input record is encoded: the topic's default format (JSON, no header), JSON
/// labelled with a `content-type` header, or protobuf labelled with its header.
#[derive(Clone, Copy)]
enum Enc {
    Json,
    LabelledJson,
    Protobuf,
}

impl Enc {
    fn nth(i: usize) -> Enc {
        match i % 4 {
            0 | 1 => Enc::Json,
            2 => Enc::LabelledJson,
            _ => Enc::Protobuf,
        }
    }
}

impl Enc {
    /// The record in this encoding, keyed by `id`.
    fn record(self, id: &str, json: Value, protobuf: impl FnOnce() -> Vec<u8>) -> OutRecord {
        let rec = match self {
            Enc::Json => OutRecord::new(json.to_string()),
            Enc::LabelledJson => {
                OutRecord::new(json.to_string()).header("content-type", "application/json")
            }
            Enc::Protobuf => OutRecord::new(protobuf()).header("content-type", PROTOBUF),
        };
        rec.key(id)
    }
}

/// A post keyed by its id (so the producer spreads posts over the partitions by key).
fn post(id: &str, ts: i64, source: &str, author: &str, text: &str, enc: Enc) -> OutRecord {
    let url = format!("https://example.com/{id}");
    let json = json!({"id": id, "ts": ts, "source": source, "author": author, "text": text,
                      "lang": "en", "url": url, "metadata": {"seq": id}});
    enc.record(id, json, || {
        dynsig_proto::v1::Post {
            id: id.into(),
            ts,
            source: source.into(),
            author: author.into(),
            text: text.into(),
            lang: "en".into(),
            url: url.clone(),
            metadata: [("seq".to_string(), id.to_string())].into(),
        }
        .encode_to_vec()
    })
}

/// An internal event keyed by its id. `value` is left out on some records, which must then
/// count as 1 like the others.
fn event(id: &str, ts: i64, kind: &str, key: &str, enc: Enc, with_value: bool) -> OutRecord {
    let mut json = json!({"id": id, "ts": ts, "source": "shop-backend", "kind": kind, "key": key,
                          "attributes": {"region": "eu"}});
    if with_value {
        json["value"] = json!(1.0);
    }
    enc.record(id, json, || {
        dynsig_proto::v1::InternalEvent {
            id: id.into(),
            ts,
            source: "shop-backend".into(),
            kind: kind.into(),
            key: key.into(),
            value: with_value.then_some(1.0),
            attributes: [("region".to_string(), "eu".to_string())].into(),
        }
        .encode_to_vec()
    })
}

/// A record the service must reject, and the reason it must give in the dead-letter topic.
struct Bad {
    label: &'static str,
    reason: &'static str,
    record: OutRecord,
}

fn bad(label: &'static str, reason: &'static str, record: OutRecord) -> Bad {
    Bad {
        label,
        reason,
        record,
    }
}

/// Malformed posts, one per rejection the decoder makes (`late` is produced live, later).
/// `max_message_bytes` is the limit the test's config sets.
fn bad_posts(max_message_bytes: usize) -> Vec<Bad> {
    let ts = T0 + 55_000; // a valid event time, so that only the planted fault is wrong
    let mut garbage_rng = Rng(7);
    // Printable, so that it is a JSON syntax error and not a UTF-8 one.
    let garbage: Vec<u8> = std::iter::once(b'%')
        .chain((0..64).map(|_| b' ' + garbage_rng.below(95) as u8))
        .collect();
    let mut truncated = dynsig_proto::v1::Post {
        id: "trunc".into(),
        ts,
        text: "this text field is cut short in the middle".into(),
        ..Default::default()
    }
    .encode_to_vec();
    truncated.truncate(truncated.len() - 5); // inside `text`, the last field written
    let zero_ts = dynsig_proto::v1::Post {
        id: "zero".into(),
        text: "no time".into(),
        ..Default::default()
    };
    let mut latin1 = format!(r#"{{"id":"latin1","ts":{ts},"text":"caf"#).into_bytes();
    latin1.extend_from_slice(b"\xe9 cr\xe8me\"}");
    let huge_text = "x".repeat(max_message_bytes + 100);
    vec![
        bad(
            "garbage bytes",
            "invalid_json",
            OutRecord::new(garbage).key("bad-garbage"),
        ),
        bad(
            "a JSON array",
            "invalid_json",
            OutRecord::new("[1,2,3]").key("bad-array"),
        ),
        bad(
            "no ts",
            "missing_field",
            OutRecord::new(r#"{"text":"no ts"}"#).key("bad-no-ts"),
        ),
        bad(
            "ts not a number",
            "invalid_field",
            OutRecord::new(r#"{"ts":"yesterday","text":"x"}"#).key("bad-ts-text"),
        ),
        bad(
            "ts in 1970",
            "invalid_field",
            OutRecord::new(r#"{"ts":86400000,"text":"old news"}"#).key("bad-1970"),
        ),
        bad(
            "Latin-1 bytes",
            "invalid_utf8",
            OutRecord::new(latin1).key("bad-latin1"),
        ),
        bad(
            "truncated protobuf",
            "invalid_protobuf",
            OutRecord::new(truncated)
                .key("bad-trunc")
                .header("content-type", PROTOBUF),
        ),
        bad(
            "protobuf without ts",
            "missing_field",
            OutRecord::new(zero_ts.encode_to_vec())
                .key("bad-zero-ts")
                .header("content-type", PROTOBUF),
        ),
        bad(
            "CSV",
            "unknown_content_type",
            OutRecord::new(format!("ts,text\n{ts},hello"))
                .key("bad-csv")
                .header("content-type", "text/csv"),
        ),
        bad(
            "oversized post",
            "too_large",
            OutRecord::new(json!({"ts": ts, "text": huge_text}).to_string()).key("bad-huge"),
        ),
    ]
}

fn bad_events() -> Vec<Bad> {
    let ts = T0 + 55_000;
    vec![
        bad(
            "event without kind",
            "missing_field",
            OutRecord::new(format!(r#"{{"ts":{ts},"key":"checkout"}}"#)).key("bad-no-kind"),
        ),
        bad(
            "value not a number",
            "invalid_field",
            OutRecord::new(format!(
                r#"{{"ts":{ts},"kind":"error","key":"checkout","value":"lots"}}"#
            ))
            .key("bad-value"),
        ),
        // No key at all: the dead letter must keep it null, not make it empty.
        bad(
            "garbage without key",
            "invalid_json",
            OutRecord::new(&b"}{ not json"[..]),
        ),
    ]
}

/// The backlog: 12 windows of background, the burst in window 9, malformed records mixed in
/// after window 5, and one post far ahead that moves the watermark past every window above.
struct Backlog {
    posts: Vec<OutRecord>,
    events: Vec<OutRecord>,
    /// (index in `posts`/`events`, the fault)
    bad_posts: Vec<(usize, Bad)>,
    bad_events: Vec<(usize, Bad)>,
    /// Valid posts per window start.
    posts_per_window: BTreeMap<i64, u64>,
}

fn backlog(max_message_bytes: usize) -> Backlog {
    let mut rng = Rng(0x5EED_D15C);
    let mut b = Backlog {
        posts: Vec::new(),
        events: Vec::new(),
        bad_posts: Vec::new(),
        bad_events: Vec::new(),
        posts_per_window: BTreeMap::new(),
    };
    for w in 0..BACKGROUND_WINDOWS {
        let start = T0 + w * WINDOW_MS;
        for i in 0..POSTS_PER_WINDOW {
            let n = 4 + rng.below(5) as usize;
            let text = rng.words(n);
            let author = format!("user{}", rng.below(400));
            let source = rng.pick(SOURCES);
            b.posts.push(post(
                &format!("p{w:02}-{i:03}"),
                rng.ts_in(start),
                source,
                &author,
                &text,
                Enc::nth(i),
            ));
        }
        *b.posts_per_window.entry(start).or_default() += POSTS_PER_WINDOW as u64;
        for i in 0..EVENTS_PER_SERIES_PER_WINDOW {
            let enc = Enc::nth(i);
            b.events.push(event(
                &format!("e{w:02}-err-{i:03}"),
                rng.ts_in(start),
                "error",
                "checkout",
                enc,
                i % 3 != 0,
            ));
            b.events.push(event(
                &format!("e{w:02}-ord-{i:03}"),
                rng.ts_in(start),
                "order",
                "web",
                enc,
                i % 3 == 0,
            ));
        }
        if w == BURST_WINDOW {
            for i in 0..BURST_POSTS {
                // Ordinary words around the hashtag, so that no other term gains 120 occurrences.
                let text = format!("{} #acmefire {}", rng.words(2), rng.words(1));
                let author = format!("witness{i:03}"); // 120 distinct authors
                b.posts.push(post(
                    &format!("p{w:02}-fire-{i:03}"),
                    rng.ts_in(start),
                    "twitter",
                    &author,
                    &text,
                    Enc::nth(i),
                ));
            }
            *b.posts_per_window.entry(start).or_default() += BURST_POSTS as u64;
            for i in 0..BURST_ERRORS {
                b.events.push(event(
                    &format!("e{w:02}-spike-{i:03}"),
                    rng.ts_in(start),
                    "error",
                    "checkout",
                    Enc::nth(i),
                    true,
                ));
            }
        }
        if w == 5 {
            for fault in bad_posts(max_message_bytes) {
                b.bad_posts.push((b.posts.len(), fault));
                b.posts.push(b.bad_posts.last().unwrap().1.record.clone());
            }
            for fault in bad_events() {
                b.bad_events.push((b.events.len(), fault));
                b.events.push(b.bad_events.last().unwrap().1.record.clone());
            }
        }
    }
    // Moves the newest event time (hence the watermark) 80 s past the background.
    b.posts.push(post(
        "closing",
        T0 + 200_000,
        "news",
        "closer",
        "market update",
        Enc::Json,
    ));
    b
}

/// Where a malformed record landed, and what its dead letter must say.
struct ExpectedDeadLetter {
    label: &'static str,
    reason: &'static str,
    topic: String,
    at: Delivered,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
}

fn expected_dead_letters(
    topic: &str,
    faults: &[(usize, Bad)],
    delivered: &[Delivered],
) -> Vec<ExpectedDeadLetter> {
    faults
        .iter()
        .map(|(index, fault)| ExpectedDeadLetter {
            label: fault.label,
            reason: fault.reason,
            topic: topic.to_string(),
            at: delivered[*index],
            key: fault.record.key.clone(),
            payload: fault.record.payload.clone(),
        })
        .collect()
}

/// The dead letter of `source` (topic, partition, offset), by its `dynsig-source-*` headers.
fn dead_letters_of<'a>(dlq: &'a [Record], topic: &str, at: Delivered) -> Vec<&'a Record> {
    dlq.iter()
        .filter(|r| {
            r.header_str("dynsig-source-topic").as_deref() == Some(topic)
                && r.header_str("dynsig-source-partition") == Some(at.partition.to_string())
                && r.header_str("dynsig-source-offset") == Some(at.offset.to_string())
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The service under test
// ---------------------------------------------------------------------------------------------

/// Topic names of one test. On a broker of the test's own they are the defaults (with the
/// given prefix); on an external broker they are made unique per run.
struct Topics {
    posts: String,
    events: String,
    trends: String,
    anomalies: String,
    alerts: String,
    dlq: String,
    late: String,
}

impl Topics {
    fn new(broker: &TestBroker, prefix: &str) -> Topics {
        let t = |name: &str| broker.topic(&format!("{prefix}{name}"));
        Topics {
            posts: t("posts"),
            events: t("events"),
            trends: t("signals.trends"),
            anomalies: t("signals.anomalies"),
            alerts: t("signals.alerts"),
            dlq: t("dynsig.dlq"),
            late: t("signals.late"),
        }
    }
}

/// The test config: 10 s windows. With `idle_timeout_ms = 0` they are closed by event time
/// only, so that the outputs depend on the data alone; then every assigned input partition
/// must receive data, since the watermark is the minimum over partitions.
fn config_toml(
    topics: &Topics,
    group_id: &str,
    max_message_bytes: usize,
    idle_timeout_ms: u64,
) -> String {
    format!(
        r#"[kafka]
group_id = "{group_id}"
[kafka.client]
"session.timeout.ms" = "6000"
[topics]
posts = "{posts}"
events = "{events}"
posts_format = "json"
events_format = "json"
trends = "{trends}"
anomalies = "{anomalies}"
alerts = "{alerts}"
dlq = "{dlq}"
late = "{late}"
[limits]
max_message_bytes = {max_message_bytes}
[window]
size_ms = {WINDOW_MS}
allowed_lateness_ms = 1000
idle_timeout_ms = {idle_timeout_ms}
[trends]
top_k = 10
"#,
        posts = topics.posts,
        events = topics.events,
        trends = topics.trends,
        anomalies = topics.anomalies,
        alerts = topics.alerts,
        dlq = topics.dlq,
        late = topics.late,
    )
}

fn has_firing_alert(alerts: &[Record], id: &str) -> bool {
    alerts.iter().any(|r| {
        let v = parse(r);
        v["dedup_key"] == id && v["status"] == "firing"
    })
}

fn snapshots(trends: &[Record]) -> Vec<Value> {
    trends.iter().map(parse).collect()
}

fn snapshot_of(snapshots: &[Value], window_start: i64) -> Vec<&Value> {
    snapshots
        .iter()
        .filter(|s| s["window_start"] == window_start)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_to_trends_alerts_and_dead_letters() {
    let broker = TestBroker::start();
    let topics = Topics::new(&broker, "");
    broker
        .create_topics(&[(&topics.posts, 3), (&topics.events, 2)])
        .await;

    // The whole backlog goes in before the service starts: it must read it from the earliest
    // offsets, across partitions that it receives in no particular order.
    const MAX_MESSAGE_BYTES: usize = 4096;
    let data = backlog(MAX_MESSAGE_BYTES);
    let posts_at = broker.produce(&topics.posts, &data.posts).await;
    let events_at = broker.produce(&topics.events, &data.events).await;
    let used: std::collections::BTreeSet<i32> = posts_at.iter().map(|d| d.partition).collect();
    assert_eq!(
        used.len(),
        3,
        "the keys should spread the posts over the 3 partitions: {used:?}"
    );
    let mut expected = expected_dead_letters(&topics.posts, &data.bad_posts, &posts_at);
    expected.extend(expected_dead_letters(
        &topics.events,
        &data.bad_events,
        &events_at,
    ));

    let group = broker.topic("dynsig-e2e");
    let mut svc = Service::start(
        &broker,
        &topics.dlq,
        &config_toml(&topics, &group, MAX_MESSAGE_BYTES, 0),
        &[],
    );
    svc.wait_http_ok("/healthz", Duration::from_secs(30)).await;

    // Trends: every background window up to 10 closes (the closing post moved the watermark
    // to T0+199 s; window 11 may wait for its partitions' own progress in some designs, so it
    // is not required). Exactly one snapshot per window, each counting every valid post.
    let burst_start = T0 + BURST_WINDOW * WINDOW_MS;
    let trends = svc
        .wait_for_records(
            &broker,
            &topics.trends,
            "trend snapshots of windows 0..=10",
            |records| {
                let starts: std::collections::BTreeSet<i64> = records
                    .iter()
                    .filter_map(|r| parse(r)["window_start"].as_i64())
                    .collect();
                (0..=10).all(|w| starts.contains(&(T0 + w * WINDOW_MS)))
            },
        )
        .await;
    let snaps = snapshots(&trends);
    for w in 0..=10 {
        let start = T0 + w * WINDOW_MS;
        let found = snapshot_of(&snaps, start);
        svc.check(found.len() == 1, || {
            format!("window {w} ({start}): expected one snapshot, got {found:#?}")
        });
        let s = found[0];
        svc.check(s["window_end"] == start + WINDOW_MS, || {
            format!("window {w}: bad window_end in {s}")
        });
        svc.check(
            s["window"] == "10s" && s["revision"] == 1 && s["final"] == true,
            || format!("window {w}: expected the one final revision of window \"10s\": {s}"),
        );
        let want = data.posts_per_window[&start];
        // Fewer would mean lost (or wrongly late) posts; more, double counting or a wrong window.
        svc.check(s["events"] == want, || {
            format!("window {w}: expected events={want} (every valid post; fewer = posts lost or dead-lettered as late), got {s}")
        });
    }
    let burst = snapshot_of(&snaps, burst_start)[0];
    let entries = burst["entries"].as_array().cloned().unwrap_or_default();
    svc.check(!entries.is_empty() && entries.len() <= 10, || {
        format!("burst window: expected 1..=10 entries (top_k 10): {burst:#}")
    });
    let top = &entries[0];
    svc.check(
        top["term"] == "#acmefire" && top["kind"] == "hashtag" && top["count"] == BURST_POSTS as u64,
        || format!("burst window: expected #acmefire (hashtag, count {BURST_POSTS}) ranked first, got {burst:#}"),
    );
    svc.check(
        top["score"].as_f64().is_some() && top["baseline"].as_f64().is_some(),
        || format!("burst window: entry without numeric score/baseline: {top}"),
    );
    // 120 distinct authors: past 16, a HyperLogLog estimate (~3% standard error).
    let burst_prefix = format!("p{BURST_WINDOW:02}-fire-");
    let examples = top["examples"].as_array().cloned().unwrap_or_default();
    svc.check(
        top["authors"].as_u64().is_some_and(|a| a.abs_diff(BURST_POSTS as u64) <= 12)
            && top["status"] == "new"
            && !examples.is_empty()
            && examples.iter().all(|e| e.as_str().is_some_and(|id| id.starts_with(&burst_prefix))),
        || format!("burst window: expected ~{BURST_POSTS} authors, status new and burst post ids as examples: {top}"),
    );

    // Alerts: both planted incidents fire, keyed by their dedup key.
    let trend_alert = "trend:hashtag:#acmefire";
    let error_alert = "anomaly:events.kind=error,key=checkout";
    let alerts = svc
        .wait_for_records(
            &broker,
            &topics.alerts,
            "the two firing alerts",
            |records| {
                has_firing_alert(records, trend_alert) && has_firing_alert(records, error_alert)
            },
        )
        .await;
    for (id, cause) in [(trend_alert, "trend"), (error_alert, "anomaly")] {
        let firing: Vec<&Record> = alerts
            .iter()
            .filter(|r| {
                let v = parse(r);
                v["dedup_key"] == id && v["status"] == "firing"
            })
            .collect();
        let first = firing[0];
        let v = parse(first);
        svc.check(first.key_str().as_deref() == Some(id), || {
            format!(
                "alert {id}: record key is {:?}, expected the dedup key",
                first.key_str()
            )
        });
        svc.check(v["cause"] == cause, || {
            format!("alert {id}: expected cause {cause:?}: {v}")
        });
        svc.check(v["id"] == format!("{id}@{}", v["starts_at"]), || {
            format!("alert {id}: the occurrence id is <dedup_key>@<starts_at>: {v}")
        });
        let starts_at = v["starts_at"].as_i64().unwrap_or(0);
        svc.check((burst_start..=burst_start + WINDOW_MS).contains(&starts_at), || {
            format!("alert {id}: starts_at should be the burst window's event time ({burst_start}..={}): {v}", burst_start + WINDOW_MS)
        });
        svc.check(
            ["info", "warning", "critical"].contains(&v["severity"].as_str().unwrap_or("")),
            || format!("alert {id}: bad severity: {v}"),
        );
    }

    // The anomaly behind the error alert: 10 background errors plus the 300 of the spike.
    let series = "events.kind=error,key=checkout";
    let anomalies = svc
        .wait_for_records(
            &broker,
            &topics.anomalies,
            "the error spike anomaly",
            |records| {
                records.iter().any(|r| {
                    let v = parse(r);
                    v["series"] == series && v["window_start"] == burst_start
                })
            },
        )
        .await;
    let spike = anomalies
        .iter()
        .map(parse)
        .find(|v| v["series"] == series && v["window_start"] == burst_start)
        .unwrap();
    let observed = (EVENTS_PER_SERIES_PER_WINDOW + BURST_ERRORS) as f64;
    svc.check(spike["observed"].as_f64() == Some(observed), || {
        format!("expected observed={observed}: {spike}")
    });
    svc.check(
        spike["expected"]
            .as_f64()
            .is_some_and(|e| e < observed / 2.0)
            && spike["score"]
                .as_f64()
                .is_some_and(|s| (0.0..=1.0).contains(&s)),
        || format!("anomaly should expect far less than observed, with a score in 0..1: {spike}"),
    );

    // A late record, produced now that window 0 is long closed (so it is late whatever the
    // order in which the backlog was read).
    let late = post(
        "late-1",
        T0 + 5_000,
        "forum",
        "latecomer",
        "market late",
        Enc::Json,
    );
    let late_at = broker
        .produce(&topics.posts, std::slice::from_ref(&late))
        .await;
    expected.push(ExpectedDeadLetter {
        label: "late post",
        reason: "late",
        topic: topics.posts.clone(),
        at: late_at[0],
        key: late.key.clone(),
        payload: late.payload.clone(),
    });

    // Dead letters: one per malformed record, byte for byte, with its source coordinates;
    // late records in their own topic, with the same headers.
    let is_late = |e: &ExpectedDeadLetter| e.reason == "late";
    let dlq = svc
        .wait_for_records(
            &broker,
            &topics.dlq,
            "a dead letter for every malformed record",
            |records| {
                expected
                    .iter()
                    .filter(|e| !is_late(e))
                    .all(|e| !dead_letters_of(records, &e.topic, e.at).is_empty())
            },
        )
        .await;
    let late_records = svc
        .wait_for_records(&broker, &topics.late, "the late record", |records| {
            expected
                .iter()
                .filter(|e| is_late(e))
                .all(|e| !dead_letters_of(records, &e.topic, e.at).is_empty())
        })
        .await;
    for e in &expected {
        let records = if is_late(e) { &late_records } else { &dlq };
        let found = dead_letters_of(records, &e.topic, e.at);
        svc.check(found.len() == 1, || {
            format!(
                "{}: expected one dead letter for {}/{}/{}, got {}",
                e.label,
                e.topic,
                e.at.partition,
                e.at.offset,
                found.len()
            )
        });
        let d = found[0];
        svc.check(
            d.header_str("dynsig-reason").as_deref() == Some(e.reason),
            || {
                format!(
                    "{}: expected reason {}, got {:?} (detail {:?})",
                    e.label,
                    e.reason,
                    d.header_str("dynsig-reason"),
                    d.header_str("dynsig-detail")
                )
            },
        );
        svc.check(
            d.header_str("dynsig-detail").is_some_and(|s| !s.is_empty()),
            || format!("{}: no dynsig-detail header", e.label),
        );
        svc.check(d.payload.as_deref() == Some(e.payload.as_slice()), || {
            format!(
                "{}: dead-letter payload differs from the input ({:?} vs {:?} bytes)",
                e.label,
                d.payload.as_ref().map(Vec::len),
                e.payload.len()
            )
        });
        svc.check(d.key == e.key, || {
            format!(
                "{}: dead-letter key {:?}, input key {:?}",
                e.label,
                d.key_str(),
                e.key
            )
        });
    }
    // Nothing else: a valid record in the dead-letter topic would also be missing from a count.
    let unexpected: Vec<String> = dlq
        .iter()
        .filter(|d| {
            !expected.iter().any(|e| {
                d.header_str("dynsig-source-topic").as_deref() == Some(e.topic.as_str())
                    && d.header_str("dynsig-source-partition") == Some(e.at.partition.to_string())
                    && d.header_str("dynsig-source-offset") == Some(e.at.offset.to_string())
            })
        })
        .map(|d| {
            format!(
                "{:?} {:?}",
                d.header_str("dynsig-reason"),
                d.header_str("dynsig-detail")
            )
        })
        .collect();
    svc.check(unexpected.is_empty(), || {
        format!(
            "{} unexpected dead letters, e.g. {:?}",
            unexpected.len(),
            &unexpected[..unexpected.len().min(5)]
        )
    });

    // Still alive and serving.
    svc.ensure_running("after processing the backlog");
    svc.wait_http_ok("/healthz", Duration::from_secs(5)).await;
    svc.wait_http_ok("/readyz", Duration::from_secs(30)).await;
    // Metrics are updated as records are processed: poll (bounded) rather than read once.
    let http = svc.http.clone();
    let dead_letters = expected.len() as f64;
    let metrics = poll_until(Duration::from_secs(30), || {
        let http = http.clone();
        async move {
            match http_get(&http, "/metrics").await {
                Ok((200, body))
                    if metric_sum(&body, "dynsig_dlq_records_total")
                        .is_some_and(|v| v >= dead_letters)
                        && metric_sum(&body, "dynsig_events_consumed_total")
                            .is_some_and(|v| v > 0.0) =>
                {
                    Some(body)
                }
                _ => None,
            }
        }
    })
    .await;
    if metrics.is_none() {
        let last = http_get(&svc.http, "/metrics")
            .await
            .map(|(s, b)| format!("{s}\n{b}"))
            .unwrap_or_else(|e| e.to_string());
        svc.fail(format!(
            "/metrics should count {} dead letters (dynsig_dlq_records_total) and consumed events (dynsig_events_consumed_total):\n{last}",
            expected.len()
        ));
    }

    // SIGTERM: a clean exit.
    let logs_before = svc.process.logs();
    let status = svc.process.terminate();
    assert!(
        status.success(),
        "dynsig should exit 0 on SIGTERM, got {status}\n{logs_before}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_records_produced_after_start() {
    const T1: i64 = T0 + 86_400_000; // a day after the backlog test, still in the past
    let broker = TestBroker::start();
    let topics = Topics::new(&broker, "live.");
    // One partition each: this test is about records produced after the start being picked
    // up, so the order in which the service reads them must not matter (the backlog test
    // covers reading several partitions).
    broker
        .create_topics(&[(&topics.posts, 1), (&topics.events, 1)])
        .await;
    let group = broker.topic("dynsig-live");
    // Only posts are produced: the empty events partition must go idle (2 s of wall time)
    // to stop holding the watermark back.
    let config = config_toml(&topics, &group, 1_000_000, 2_000);
    let mut svc = Service::start(&broker, &topics.dlq, &config, &[]);
    // Ready = partitions assigned: from here on, records produced must be picked up.
    svc.wait_http_ok("/readyz", WAIT).await;
    svc.ensure_running("once ready");

    // Five windows of background, a burst in window 3 (after the trend detector's warm-up
    // windows, which rank nothing), then a closing post that closes them all.
    const LIVE_BURST_WINDOW: i64 = 3;
    let mut rng = Rng(0x11FE);
    let mut posts = Vec::new();
    for w in 0..5 {
        let start = T1 + w * WINDOW_MS;
        for i in 0..20 {
            let text = rng.words(5);
            let author = format!("u{}", rng.below(50));
            posts.push(post(
                &format!("l{w}-{i:02}"),
                rng.ts_in(start),
                "forum",
                &author,
                &text,
                Enc::nth(i),
            ));
        }
        if w == LIVE_BURST_WINDOW {
            for i in 0..50 {
                let text = format!("{} #liveburst", rng.words(2));
                posts.push(post(
                    &format!("l{w}-burst-{i:02}"),
                    rng.ts_in(start),
                    "twitter",
                    &format!("fan{i}"),
                    &text,
                    Enc::nth(i),
                ));
            }
        }
    }
    posts.push(post(
        "live-closing",
        T1 + 80_000,
        "news",
        "closer",
        "market update",
        Enc::Json,
    ));
    broker.produce(&topics.posts, &posts).await;

    let burst_start = T1 + LIVE_BURST_WINDOW * WINDOW_MS;
    let trends = svc
        .wait_for_records(
            &broker,
            &topics.trends,
            "the snapshot of the live burst window",
            |records| {
                records
                    .iter()
                    .any(|r| parse(r)["window_start"] == burst_start)
            },
        )
        .await;
    let snaps = snapshots(&trends);
    let s = snapshot_of(&snaps, burst_start)[0];
    svc.check(s["events"] == 70, || {
        format!("live burst window: expected events=70 (20 + 50 posts): {s}")
    });
    let top = &s["entries"][0];
    svc.check(top["term"] == "#liveburst" && top["count"] == 50, || {
        format!("live burst window: expected #liveburst with count 50 first: {s:#}")
    });

    svc.ensure_running("after the live burst");
    let logs_before = svc.process.logs();
    let status = svc.process.terminate();
    assert!(
        status.success(),
        "dynsig should exit 0 on SIGTERM, got {status}\n{logs_before}"
    );
}
