//! A crash: the service is killed with SIGKILL mid-stream (no shutdown code runs) and
//! started again in the same consumer group. It restores its last checkpoint and reads
//! again what followed it.
//!
//! The reference is `dynsig replay` of the same feed with the same config: the restarted
//! service must count every input exactly once (the final snapshot of every window has
//! the replay's count, and a window published twice has the same count both times), and
//! fire the same alerts: the same occurrence ids, none fired as something new after the
//! restart (an id published twice is the same message twice, which consumers dedup by id
//! and status).
//!
//! And the checkpoint topic itself under faults: a checkpoint torn mid-write (a chunk of the
//! next generation without its manifest) leaves the previous one restorable; a chunk of
//! the restorable one overwritten by another generation makes it refused as unreadable,
//! and the service then rebuilds the open windows from the committed offsets, which they
//! held back, so every window still gets its full count.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::feed::{final_counts, firings, has_every_window, produce_round, Feed};
use support::{http_get, metric_sum, OutRecord, Service, Stop, TestBroker, TestDir, WAIT};

const ROUNDS: usize = 20;
/// Rounds produced before the crash.
const BEFORE_CRASH: usize = 9;

const CONFIG: &str = r#"
[kafka]
group_id = "dynsig-crash"
partitions = 3
[kafka.client]
"session.timeout.ms" = "6000"
[window]
allowed_lateness_ms = 1000
idle_timeout_ms = 1000
[checkpoint]
interval_ms = 1500
"#;

/// Waits for the last window's final snapshot, then checks every window's final count
/// against the replay's.
async fn assert_counts_as_replayed(
    svc: &mut Service,
    broker: &TestBroker,
    expected: &BTreeMap<i64, i64>,
) {
    let trends = svc
        .wait_for_records(
            broker,
            "signals.trends",
            "every window's final snapshot",
            |r| has_every_window(r, expected),
        )
        .await;
    let got = final_counts(&trends.iter().map(support::parse).collect::<Vec<_>>());
    assert_eq!(&got, expected, "posts per window, against the replay");
}

/// Starts the service and waits until it is ready and has dealt with the checkpoint it
/// found, with `outcome` (as in `dynsig_checkpoint_restores_total`).
async fn start_restoring(broker: &TestBroker, outcome: &str) -> Service {
    let mut svc = Service::start(broker, "dynsig.dlq", CONFIG, &[]);
    svc.wait_http_ok("/readyz", Duration::from_secs(60)).await;
    let metric = format!(r#"dynsig_checkpoint_restores_total{{outcome="{outcome}"}}"#);
    svc.wait_metric(&metric, |n| n == 1.0).await;
    svc
}

async fn metric(svc: &Service, name: &str) -> f64 {
    let (_, text) = http_get(&svc.http, "/metrics").await.unwrap();
    metric_sum(&text, name).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_service_restarts_from_its_checkpoint_and_loses_nothing() {
    let scratch = TestDir::new("crash");
    let Feed {
        post_rounds,
        event_rounds,
        expected_counts,
        expected_firings,
        ..
    } = Feed::generate(scratch.path(), CONFIG, ROUNDS);

    let broker = TestBroker::start();
    broker.create_topics(&[("posts", 3), ("events", 3)]).await;
    let mut first = Service::start(&broker, "dynsig.dlq", CONFIG, &[]);
    first.wait_http_ok("/readyz", Duration::from_secs(60)).await;
    let mut produced = 0;
    for round in 0..BEFORE_CRASH {
        produce_round(&broker, "posts", &post_rounds[round]).await;
        produce_round(&broker, "events", &event_rounds[round]).await;
        produced += post_rounds[round].len() + event_rounds[round].len();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Mid-stream: everything so far consumed and at least one checkpoint taken, then one
    // more round in flight when the process dies.
    first
        .wait_metric("dynsig_events_consumed_total", |n| n >= produced as f64)
        .await;
    first
        .wait_metric("dynsig_checkpoints_total", |n| n >= 1.0)
        .await;
    produce_round(&broker, "posts", &post_rounds[BEFORE_CRASH]).await;
    first.process.kill_hard();

    let mut second = Service::start(&broker, "dynsig.dlq", CONFIG, &[]);
    second
        .wait_http_ok("/readyz", Duration::from_secs(60))
        .await;
    produce_round(&broker, "events", &event_rounds[BEFORE_CRASH]).await;
    let mut ends = BTreeMap::new();
    for round in BEFORE_CRASH + 1..ROUNDS {
        ends.insert(
            "posts",
            produce_round(&broker, "posts", &post_rounds[round]).await,
        );
        ends.insert(
            "events",
            produce_round(&broker, "events", &event_rounds[round]).await,
        );
    }
    assert_counts_as_replayed(&mut second, &broker, &expected_counts).await;

    let restored = metric(
        &second,
        r#"dynsig_checkpoint_restores_total{outcome="restored"}"#,
    )
    .await;
    let alerts = second
        .wait_for_records(&broker, "signals.alerts", "the alerts", |r| {
            let fired = firings(&r.iter().map(support::parse).collect::<Vec<_>>());
            expected_firings.is_subset(&fired)
        })
        .await;
    let got_firings = firings(&alerts.iter().map(support::parse).collect::<Vec<_>>());
    assert_eq!(
        got_firings, expected_firings,
        "firing alert ids, against the replay"
    );
    second.check(restored == 1.0, || {
        format!("dynsig_checkpoint_restores_total = {restored}, expected one restore")
    });
    let skipped = metric(&second, "dynsig_redelivered_skipped_total").await;
    eprintln!(
        "crash: restored 1 checkpoint; {skipped} redelivered inputs skipped as already counted"
    );
    // A graceful stop checkpoints and commits everything: a third start restores that
    // checkpoint and has nothing to read again.
    let status = second.process.terminate();
    assert!(status.success(), "SIGTERM exit: {status}");
    for (topic, ends) in ends {
        let ends: Vec<Option<i64>> = ends.into_iter().map(Some).collect();
        assert_eq!(
            broker.committed("dynsig-crash", topic, 3),
            ends,
            "{topic}: committed offsets after SIGTERM, against the partitions' ends"
        );
    }
    let third = start_restoring(&broker, "restored").await;
    let status = third.process.terminate();
    assert!(status.success(), "SIGTERM exit: {status}");
}

/// The group's latest checkpoint manifest on the topic: (generation, slot).
async fn latest_manifest(broker: &TestBroker) -> (u64, u64) {
    let records = broker
        .consume_all(
            "dynsig.checkpoints",
            Stop::Idle(Duration::from_secs(2)),
            WAIT,
        )
        .await;
    let manifest = records
        .iter()
        .rfind(|r| r.key_str().as_deref() == Some("dynsig-crash"))
        .expect("a checkpoint manifest")
        .json();
    (
        manifest["generation"].as_u64().unwrap(),
        manifest["slot"].as_u64().unwrap(),
    )
}

/// A checkpoint chunk as a torn or foreign write would leave it.
fn chunk(slot: u64, generation: u64) -> OutRecord {
    let mut payload = generation.to_be_bytes().to_vec();
    payload.extend_from_slice(b"not a state");
    OutRecord::new(payload)
        .key(format!("dynsig-crash/{slot}/0"))
        .partition(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_or_corrupt_checkpoint_is_never_restored() {
    let scratch = TestDir::new("torn");
    let feed = Feed::generate(scratch.path(), CONFIG, ROUNDS);
    let broker = TestBroker::start();
    broker.create_topics(&[("posts", 3), ("events", 3)]).await;
    let mut first = Service::start(&broker, "dynsig.dlq", CONFIG, &[]);
    first.wait_http_ok("/readyz", Duration::from_secs(60)).await;
    let mut produced = 0;
    for round in 0..BEFORE_CRASH {
        produced += feed.produce(&broker, round).await;
    }
    first
        .wait_metric("dynsig_events_consumed_total", |n| n >= produced as f64)
        .await;
    assert!(first.process.terminate().success());

    // A crash while writing the next checkpoint: its first chunk only, in the slot the
    // manifest does not point to. The next start restores the last whole one.
    let (generation, slot) = latest_manifest(&broker).await;
    broker
        .produce(
            "dynsig.checkpoints",
            &[chunk((slot + 1) % 3, generation + 1)],
        )
        .await;
    let second = start_restoring(&broker, "restored").await;
    assert!(second.process.terminate().success());

    // The slot the manifest points to overwritten by another generation: refused as
    // unreadable, and the state is rebuilt from the committed offsets, which the open
    // windows held back: every window still gets its full count.
    let (generation, slot) = latest_manifest(&broker).await;
    broker
        .produce("dynsig.checkpoints", &[chunk(slot, generation + 7)])
        .await;
    let mut third = start_restoring(&broker, "unreadable").await;
    for round in BEFORE_CRASH..ROUNDS {
        feed.produce(&broker, round).await;
    }
    assert_counts_as_replayed(&mut third, &broker, &feed.expected_counts).await;
    assert!(third.process.terminate().success());
}
