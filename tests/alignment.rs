//! Event-time alignment through a real broker: a backlog of three partitions, each
//! covering the same 20 minutes of event time, read with a drift of one second, so that
//! a partition is paused whenever it runs ahead of the others and resumed when they catch
//! up, over and over (each partition's 20,000 records are well over the 5,000 a partition
//! must have waiting to be paused). Pausing makes librdkafka drop what it prefetched for
//! the partition and fetch it again on resume: every post must still be counted exactly
//! once, and the pauses must really have happened (`dynsig_partition_pauses_total`).

mod support;

use std::collections::BTreeMap;

use support::feed::{final_counts, has_every_window};
use support::{http_get, metric_sum, parse, OutRecord, Service, TestBroker};

const PARTITIONS: i32 = 3;
const MINUTES: i64 = 20;
const POSTS_PER_MINUTE: i64 = 3_000;

const CONFIG: &str = r#"
[kafka]
group_id = "dynsig-alignment"
partitions = 3
[kafka.client]
"session.timeout.ms" = "6000"
# Small fetches and prefetch queue: the partitions' records arrive in many rounds, so
# that each partition is read while the others still have a backlog.
"max.partition.fetch.bytes" = "65536"
"queued.max.messages.kbytes" = "1024"
[window]
size_ms = 60000
allowed_lateness_ms = 0
idle_timeout_ms = 1000
max_partition_drift_ms = 1000
[checkpoint]
enabled = false
"#;

/// Each partition gets posts spread evenly over the whole span, oldest first; the span
/// ends an hour ago (inputs ahead of the wall clock are rejected).
fn backlog() -> Vec<OutRecord> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let base = (now - 2 * 3_600_000) / 60_000 * 60_000;
    let per_partition = MINUTES * POSTS_PER_MINUTE / i64::from(PARTITIONS);
    let step = MINUTES * 60_000 / per_partition;
    (0..PARTITIONS)
        .flat_map(|p| {
            (0..per_partition).map(move |i| {
                let ts = base + i * step + i64::from(p);
                let post = serde_json::json!({
                    "id": format!("p{p}-{i}"),
                    "ts": ts,
                    "author": format!("author{}", i % 500),
                    "text": format!("shipping update {} from lane{p}", i % 50),
                });
                OutRecord::new(post.to_string()).partition(p)
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_ahead_are_paused_and_every_post_is_counted_once() {
    let broker = TestBroker::start();
    broker.create_topics(&[("posts", PARTITIONS)]).await;
    let records = backlog();
    let mut expected: BTreeMap<i64, i64> = BTreeMap::new();
    for record in &records {
        let post: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
        let ts = post["ts"].as_i64().unwrap();
        *expected.entry(ts - ts % 60_000).or_default() += 1;
    }
    assert_eq!(expected.len() as i64, MINUTES);
    broker.produce("posts", &records).await;

    let mut svc = Service::start(&broker, "dynsig.dlq", CONFIG, &[]);
    let trends = svc
        .wait_for_records(&broker, "signals.trends", "every window's snapshot", |r| {
            has_every_window(r, &expected)
        })
        .await;
    let snapshots: Vec<_> = trends.iter().map(parse).collect();
    let counted = final_counts(&snapshots);
    svc.check(counted == expected, || {
        format!("posts per window: counted {counted:?}, produced {expected:?}")
    });

    let (_, metrics) = http_get(&svc.http, "/metrics").await.unwrap();
    let pauses = metric_sum(&metrics, "dynsig_partition_pauses_total").unwrap_or(0.0);
    svc.check(pauses >= 1.0, || {
        format!("no partition was paused: the backlog did not exercise alignment\n{metrics}")
    });
    let late = metric_sum(&metrics, "dynsig_events_rejected_total").unwrap_or(0.0);
    svc.check(late == 0.0, || format!("{late} posts rejected (late?)"));
    eprintln!("alignment: {pauses} pauses over {} posts", records.len());
    svc.process.terminate();
}
