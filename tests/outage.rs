//! A broker outage: the broker is killed mid-stream, stays down 30 s, and comes back on the
//! same port, empty (the test broker keeps everything in memory, as a wiped cluster would).
//!
//! Checks: the service keeps running and says it is not ready meanwhile; once the broker is
//! back it re-creates the topics it needs, rejoins, becomes ready, and counts every post
//! produced after the outage (none is skipped as already seen, although the offsets start
//! over); what it published before the outage was complete.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{http_get, poll_until, OutRecord, Record, Service, TestBroker, WAIT};

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const WINDOW_MS: i64 = 10_000;
const POSTS_PER_WINDOW: i64 = 50;
const OUTAGE: Duration = Duration::from_secs(30);

fn posts(windows: std::ops::Range<i64>) -> Vec<OutRecord> {
    windows
        .flat_map(|w| {
            (0..POSTS_PER_WINDOW).map(move |i| {
                let ts = T0 + w * WINDOW_MS + i * (WINDOW_MS / POSTS_PER_WINDOW);
                OutRecord::new(
                    json!({"id": format!("p{w}-{i}"), "ts": ts, "author": format!("u{i}"),
                           "text": "delivery on time, good service"})
                    .to_string(),
                )
            })
        })
        .collect()
}

/// Posts counted by the final snapshots of windows starting in `[from, to)`.
fn counted(records: &[Record], from: i64, to: i64) -> i64 {
    records
        .iter()
        .map(support::parse)
        .filter(|s| s["final"] == true)
        .filter(|s| {
            s["window_start"]
                .as_i64()
                .is_some_and(|t| (from..to).contains(&t))
        })
        .filter_map(|s| s["events"].as_i64())
        .sum()
}

async fn readyz(svc: &Service) -> Option<u16> {
    http_get(&svc.http, "/readyz")
        .await
        .ok()
        .map(|(status, _)| status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_rides_out_a_broker_outage_and_recovers() {
    let mut broker = TestBroker::start();
    let config = r#"
[kafka]
group_id = "dynsig-outage"
partitions = 1
[kafka.client]
"session.timeout.ms" = "6000"
[window]
size_ms = 10000
allowed_lateness_ms = 1000
idle_timeout_ms = 1000
"#;
    let mut svc = Service::start(&broker, "dynsig.dlq", config, &[]);
    svc.wait_http_ok("/readyz", Duration::from_secs(60)).await;

    // Before: five windows, all counted.
    broker.produce("posts", &posts(0..5)).await;
    let before = svc
        .wait_for_records(
            &broker,
            "signals.trends",
            "the windows before the outage",
            |r| counted(r, T0, T0 + 5 * WINDOW_MS) == 5 * POSTS_PER_WINDOW,
        )
        .await;
    assert_eq!(
        counted(&before, T0, T0 + 5 * WINDOW_MS),
        5 * POSTS_PER_WINDOW
    );

    // The outage: not ready while the broker is away, but alive.
    broker.kill();
    let down_at = Instant::now();
    let not_ready = poll_until(OUTAGE, || async {
        (readyz(&svc).await == Some(503)).then_some(())
    })
    .await;
    svc.check(not_ready.is_some(), || {
        format!("/readyz still {:?} {OUTAGE:?} into the outage", None::<u16>)
    });
    tokio::time::sleep(OUTAGE.saturating_sub(down_at.elapsed())).await;
    svc.ensure_running("during the broker outage");
    broker.restart();

    // After: ready again once the topics are back and the group rejoined.
    let ready = poll_until(WAIT, || async {
        (readyz(&svc).await == Some(200)).then_some(())
    })
    .await;
    svc.check(ready.is_some(), || {
        format!("/readyz not 200 within {WAIT:?} after the broker came back")
    });
    let started = Instant::now();
    let posts_topic = broker.wait_for_topic("posts", WAIT).await;
    svc.check(posts_topic.is_some(), || {
        "the service did not re-create its input topic".into()
    });
    broker.produce("posts", &posts(10..15)).await;
    let after = svc
        .wait_for_records(
            &broker,
            "signals.trends",
            "the windows after the outage",
            |r| counted(r, T0 + 10 * WINDOW_MS, T0 + 15 * WINDOW_MS) == 5 * POSTS_PER_WINDOW,
        )
        .await;
    assert_eq!(
        counted(&after, T0 + 10 * WINDOW_MS, T0 + 15 * WINDOW_MS),
        5 * POSTS_PER_WINDOW,
        "every post produced after the outage is counted ({:?} after recovery)",
        started.elapsed()
    );
    svc.ensure_running("after the outage");
    let status = svc.process.terminate();
    assert!(status.success(), "SIGTERM exit: {status}");
}
