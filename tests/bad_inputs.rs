//! 10 000 bad inputs mixed into good traffic, against the real broker and the service as
//! a subprocess: random bytes, truncated protobuf, JSON of the wrong shape, missing and
//! wrong-typed fields, invalid UTF-8, 5 MB messages, timestamps in 1970, 2100 and the
//! far future, oversized text; and good posts with emoji and right-to-left text.
//!
//! Checks: the service never stops; every bad record is in the dead-letter topic, byte for
//! byte, with the reason its kind of fault calls for; every good post is counted in a
//! trend snapshot; the metrics count both.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use dynsig_core::rng::SplitMix64;
use prost::Message as _;
use serde_json::json;
use support::{metric_sum, poll_until, OutRecord, Record, Service, TestBroker, WAIT};

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const WINDOW_MS: i64 = 10_000;
const WINDOWS: i64 = 20;
const GOOD_POSTS_PER_WINDOW: usize = 150;
const BAD_INPUTS: usize = 10_000;
const PROTOBUF: &str = "application/x-protobuf";
const FIVE_MB: usize = 5 * 1024 * 1024;

/// The kinds of fault, and the dead-letter reasons each may get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    RandomBytes,
    TruncatedProtobuf,
    WrongShape,
    MissingField,
    WrongType,
    InvalidUtf8,
    FiveMegabytes,
    Year1970,
    Year2100,
    FarFuture,
    OversizedText,
}

impl Fault {
    const ALL: [Fault; 11] = [
        Fault::RandomBytes,
        Fault::TruncatedProtobuf,
        Fault::WrongShape,
        Fault::MissingField,
        Fault::WrongType,
        Fault::InvalidUtf8,
        Fault::FiveMegabytes,
        Fault::Year1970,
        Fault::Year2100,
        Fault::FarFuture,
        Fault::OversizedText,
    ];

    fn reasons(self) -> &'static [&'static str] {
        match self {
            // Random bytes are mostly not UTF-8; the rest is not JSON.
            Fault::RandomBytes => &["invalid_utf8", "invalid_json"],
            Fault::TruncatedProtobuf => &["invalid_protobuf"],
            Fault::WrongShape => &["invalid_json"],
            Fault::MissingField => &["missing_field"],
            Fault::WrongType | Fault::Year1970 | Fault::Year2100 => &["invalid_field"],
            Fault::InvalidUtf8 => &["invalid_utf8"],
            Fault::FiveMegabytes | Fault::OversizedText => &["too_large"],
            Fault::FarFuture => &["future"],
        }
    }
}

/// One bad record of kind `fault`, its key naming it (`bad-<n>`).
fn bad_record(n: usize, fault: Fault, rng: &mut SplitMix64) -> OutRecord {
    let ts = T0 + (rng.below((WINDOWS * WINDOW_MS) as usize) as i64);
    let record = match fault {
        Fault::RandomBytes => {
            let len = 1 + rng.below(300);
            OutRecord::new((0..len).map(|_| rng.next_u64() as u8).collect::<Vec<u8>>())
        }
        Fault::TruncatedProtobuf => {
            let mut bytes = dynsig_proto::v1::Post {
                id: format!("trunc-{n}"),
                ts,
                text: "a text field that the cut lands in the middle of".into(),
                ..Default::default()
            }
            .encode_to_vec();
            bytes.truncate(bytes.len() - 1 - rng.below(20));
            OutRecord::new(bytes).header("content-type", PROTOBUF)
        }
        Fault::WrongShape => OutRecord::new(
            ["[1,2,3]", "\"a string\"", "42", "null", "{\"ts\":", "{}}"][rng.below(6)],
        ),
        Fault::MissingField => OutRecord::new(if rng.chance(0.5) {
            json!({"id": format!("m{n}"), "text": "no time"}).to_string()
        } else {
            json!({"id": format!("m{n}"), "ts": ts}).to_string()
        }),
        Fault::WrongType => OutRecord::new(if rng.chance(0.5) {
            json!({"ts": "yesterday", "text": "x"}).to_string()
        } else {
            json!({"ts": ts, "text": 12345}).to_string()
        }),
        Fault::InvalidUtf8 => {
            let mut bytes = format!(r#"{{"ts":{ts},"text":"caf"#).into_bytes();
            bytes.extend_from_slice(b"\xe9 cr\xe8me\"}");
            OutRecord::new(bytes)
        }
        Fault::FiveMegabytes => {
            OutRecord::new(json!({"ts": ts, "text": "y".repeat(FIVE_MB)}).to_string())
        }
        Fault::Year1970 => OutRecord::new(json!({"ts": 86_400_000, "text": "old"}).to_string()),
        Fault::Year2100 => {
            OutRecord::new(json!({"ts": 4_102_444_800_000i64, "text": "later"}).to_string())
        }
        // Inside the accepted range, but decades ahead of the wall clock.
        Fault::FarFuture => {
            OutRecord::new(json!({"ts": 4_000_000_000_000i64, "text": "soon"}).to_string())
        }
        Fault::OversizedText => {
            OutRecord::new(json!({"ts": ts, "text": "z".repeat(100_000)}).to_string())
        }
    };
    record.key(format!("bad-{n}"))
}

/// Good posts of window `w`: plain, emoji, right-to-left, mixed scripts.
fn good_posts(w: i64, rng: &mut SplitMix64) -> Vec<OutRecord> {
    const TEXTS: [&str; 5] = [
        "shipping delayed again for my order",
        "🔥🔥 launch day 🚀 #acme",
        "مرحبا بالعالم خدمة ممتازة",
        "שלום עולם משלוח מהיר",
        "café crème et croissant 😂 à Paris",
    ];
    (0..GOOD_POSTS_PER_WINDOW)
        .map(|i| {
            let ts = T0 + w * WINDOW_MS + rng.below(WINDOW_MS as usize) as i64;
            let text = TEXTS[rng.below(TEXTS.len())];
            OutRecord::new(
                json!({"id": format!("good-{w}-{i}"), "ts": ts, "author": format!("u{}", rng.below(500)), "text": text})
                    .to_string(),
            )
            .key(format!("good-{w}-{i}"))
        })
        .collect()
}

fn config(posts: &str, dlq: &str, trends: &str, group: &str) -> String {
    format!(
        r#"[kafka]
group_id = "{group}"
[kafka.client]
"session.timeout.ms" = "6000"
[topics]
posts = "{posts}"
trends = "{trends}"
dlq = "{dlq}"
late = ""
[limits]
max_message_bytes = 1000000
[window]
size_ms = {WINDOW_MS}
allowed_lateness_ms = 60000
idle_timeout_ms = 2000
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_bad_inputs_are_dead_lettered_and_the_good_ones_counted() {
    let broker = TestBroker::start();
    let posts = broker.topic("posts");
    let dlq = broker.topic("dynsig.dlq");
    let trends = broker.topic("signals.trends");
    broker.create_topics(&[(posts.as_str(), 3)]).await;

    // Good and bad records interleaved, window by window, so that bad ones arrive between
    // good ones of every partition.
    let mut rng = SplitMix64(0xBAD_1A7A);
    let mut records = Vec::new();
    let mut faults = BTreeMap::new();
    let bad_per_window = BAD_INPUTS / WINDOWS as usize;
    for w in 0..WINDOWS {
        let mut window = good_posts(w, &mut rng);
        for _ in 0..bad_per_window {
            let n = faults.len();
            // Two 5 MB messages in all: enough to prove the path, cheap to produce.
            let fault = match Fault::ALL[n % Fault::ALL.len()] {
                Fault::FiveMegabytes if n > 2 * Fault::ALL.len() => Fault::RandomBytes,
                fault => fault,
            };
            faults.insert(format!("bad-{n}"), fault);
            let at = rng.below(window.len() + 1);
            window.insert(at, bad_record(n, fault, &mut rng));
        }
        records.extend(window);
    }
    let good = WINDOWS as usize * GOOD_POSTS_PER_WINDOW;
    assert_eq!(faults.len(), BAD_INPUTS);
    let payloads: BTreeMap<String, Vec<u8>> = records
        .iter()
        .filter_map(|r| {
            let key = String::from_utf8(r.key.clone()?).ok()?;
            key.starts_with("bad-").then(|| (key, r.payload.clone()))
        })
        .collect();
    broker.produce(&posts, &records).await;

    let group = broker.topic("dynsig-bad-inputs");
    let mut svc = Service::start(&broker, &dlq, &config(&posts, &dlq, &trends, &group), &[]);
    svc.wait_http_ok("/healthz", Duration::from_secs(30)).await;

    let letters = svc
        .wait_for_records(&broker, &dlq, "every bad input dead-lettered", |r| {
            r.len() >= BAD_INPUTS
        })
        .await;
    let mut wrong = Vec::new();
    let mut reasons: BTreeMap<(Fault, String), usize> = BTreeMap::new();
    for letter in &letters {
        let key = letter.key_str().unwrap_or_default();
        let Some(&fault) = faults.get(&key) else {
            wrong.push(format!("a good or unknown record was dead-lettered: {key}"));
            continue;
        };
        let reason = letter.header_str("dynsig-reason").unwrap_or_default();
        if !fault.reasons().contains(&reason.as_str()) {
            wrong.push(format!("{key} ({fault:?}): reason {reason}"));
        }
        if letter.payload.as_deref() != payloads.get(&key).map(Vec::as_slice) {
            wrong.push(format!("{key} ({fault:?}): payload differs"));
        }
        *reasons.entry((fault, reason)).or_default() += 1;
    }
    svc.check(wrong.is_empty() && letters.len() == BAD_INPUTS, || {
        format!(
            "{} dead letters for {BAD_INPUTS} bad inputs; problems: {:?}",
            letters.len(),
            &wrong[..wrong.len().min(20)]
        )
    });
    for fault in Fault::ALL {
        svc.check(reasons.keys().any(|(f, _)| *f == fault), || {
            format!("no dead letter for {fault:?}: {reasons:?}")
        });
    }

    // Every good post counted: the final snapshots' events add up.
    let counted = |records: &[Record]| -> u64 {
        records
            .iter()
            .map(support::parse)
            .filter(|s| s["final"] == true)
            .filter_map(|s| s["events"].as_u64())
            .sum()
    };
    let snapshots = svc
        .wait_for_records(&broker, &trends, "every good post counted", |r| {
            counted(r) >= good as u64
        })
        .await;
    svc.check(counted(&snapshots) == good as u64, || {
        format!(
            "{} good posts counted, {good} produced",
            counted(&snapshots)
        )
    });

    // The metrics count both, and the service is still up.
    let metrics = poll_until(WAIT, || async {
        let (status, body) = support::http_get(&svc.http, "/metrics").await.ok()?;
        let consumed = metric_sum(&body, "dynsig_events_consumed_total")?;
        let dead = metric_sum(&body, "dynsig_dlq_records_total")?;
        (status == 200 && consumed >= (good + BAD_INPUTS) as f64 && dead >= BAD_INPUTS as f64)
            .then_some((consumed, dead))
    })
    .await;
    svc.check(
        metrics == Some(((good + BAD_INPUTS) as f64, BAD_INPUTS as f64)),
        || format!("metrics (consumed, dead-lettered): {metrics:?}"),
    );
    svc.ensure_running("after the bad inputs");
    let status = svc.process.terminate();
    assert!(status.success(), "SIGTERM exit: {status}");
}
