//! Backpressure: when the producer side is slow, the service reads slower and its memory
//! stays bounded, instead of reading the whole backlog into memory; nothing is lost.
//!
//! Every client reaches the broker through a proxy that lets only 256 KiB/s flow from
//! clients to the broker: produce requests (the service's outputs) crawl, fetch requests
//! (small) do not. The input is 60 000 records of 1 KiB of random bytes, so each one
//! becomes a 1 KiB dead letter: 60 MB to publish at 256 KiB/s.

mod support;

use std::time::{Duration, Instant};

use support::proxy::Throttle;
use support::{http_get, metric_sum, OutRecord, Service, TestBroker};

const RECORDS: usize = 60_000;
const RECORD_BYTES: usize = 1024;
const SLOW_PHASE: Duration = Duration::from_secs(20);

const CONFIG: &str = r#"
[kafka]
group_id = "dynsig-backpressure"
partitions = 3
[kafka.client]
"session.timeout.ms" = "6000"
# Small librdkafka queues, so that the service's own bounds are what the test sees.
"queue.buffering.max.kbytes" = "2048"
"queued.max.messages.kbytes" = "2048"
"#;

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

async fn metric(svc: &Service, name: &str) -> f64 {
    match http_get(&svc.http, "/metrics").await {
        Ok((200, text)) => metric_sum(&text, name).unwrap_or(0.0),
        _ => 0.0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_producer_side_slows_consumption_with_bounded_memory() {
    let throttle = Throttle::default();
    let broker = TestBroker::start_behind_proxy(throttle.clone());
    broker.create_topics(&[("posts", 3)]).await;
    // Random bytes: not JSON, and incompressible (the producer compresses with lz4).
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut random_byte = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 24) as u8
    };
    let records: Vec<OutRecord> = (0..RECORDS)
        .map(|_| {
            OutRecord::new(
                (0..RECORD_BYTES)
                    .map(|_| random_byte())
                    .collect::<Vec<u8>>(),
            )
        })
        .collect();
    broker.produce("posts", &records).await;

    throttle.set_upstream_bytes_per_sec(256 * 1024);
    let mut svc = Service::start(&broker, "dynsig.dlq", CONFIG, &[]);
    svc.wait_http_ok("/readyz", Duration::from_secs(60)).await;
    svc.wait_metric("dynsig_events_consumed_total", |n| n > 0.0)
        .await;
    let pid = svc.process.pid();
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < SLOW_PHASE {
        tokio::time::sleep(Duration::from_millis(500)).await;
        samples.push((
            rss_kb(pid),
            metric(&svc, "dynsig_events_consumed_total").await,
        ));
    }
    let consumed = samples.last().unwrap().1;
    let published = metric(&svc, "dynsig_dlq_records_total").await;
    let (first_half, second_half) = samples.split_at(samples.len() / 2);
    let peak = |s: &[(u64, f64)]| s.iter().map(|&(rss, _)| rss).max().unwrap();
    let (early_peak, late_peak) = (peak(first_half), peak(second_half));
    eprintln!(
        "backpressure: after {SLOW_PHASE:?} at 256 KiB/s: {consumed} of {RECORDS} read, \
         {published} dead letters published; RSS peak {early_peak} kB then {late_peak} kB"
    );
    svc.check(consumed < RECORDS as f64 / 2.0, || {
        format!("the service read {consumed} of {RECORDS} records while it could publish {published}: it did not slow down")
    });
    // Held at most: the input queue (4096 records), the batch queue (8 MiB), and the
    // two librdkafka queues of 2 MiB each: ~16 500 records of 1 KiB.
    svc.check(consumed - published < 20_000.0, || {
        format!("{consumed} read but {published} published: too much held in memory")
    });
    svc.check(late_peak < early_peak + 10 * 1024, || {
        format!("RSS kept growing while throttled: peak {early_peak} kB, then {late_peak} kB")
    });
    svc.check(late_peak < 200 * 1024, || format!("RSS {late_peak} kB"));

    // Full speed again: everything arrives, nothing was dropped on the way.
    throttle.set_upstream_bytes_per_sec(0);
    svc.wait_metric("dynsig_dlq_records_total", |n| n == RECORDS as f64)
        .await;
    let status = svc.process.terminate();
    assert!(status.success(), "SIGTERM exit: {status}");
}
