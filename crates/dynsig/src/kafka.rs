//! The Kafka edge's plumbing: client configurations that keep at-least-once honest,
//! topic creation, and the consumer context that tracks partition assignment for
//! `/readyz`. The stages that use these clients live in `service/`.

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use metrics::{counter, gauge};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{Client, ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;
use crate::telemetry::names;

/// What `/healthz` and `/readyz` report.
#[derive(Debug, Default)]
pub struct Health {
    assigned_partitions: AtomicUsize,
    broker_up: AtomicBool,
}

impl Health {
    /// Ready when this instance owns input partitions and the cluster answers.
    pub fn is_ready(&self) -> bool {
        self.assigned_partitions.load(Ordering::Relaxed) > 0
            && self.broker_up.load(Ordering::Relaxed)
    }

    /// Input partitions this instance owns now.
    pub fn assigned(&self) -> usize {
        self.assigned_partitions.load(Ordering::Relaxed)
    }

    pub fn set_broker_up(&self, up: bool) {
        self.broker_up.store(up, Ordering::Relaxed);
        gauge!(names::BROKER_UP).set(if up { 1.0 } else { 0.0 });
    }

    fn set_assigned(&self, count: usize) {
        self.assigned_partitions.store(count, Ordering::Relaxed);
        gauge!(names::ASSIGNED_PARTITIONS).set(count as f64);
    }
}

/// The input partitions currently assigned, as (topic, partition), with a generation
/// number that changes at each rebalance so that readers notice cheaply.
#[derive(Debug, Default)]
pub struct Assignment {
    generation: AtomicU64,
    partitions: Mutex<Vec<(String, i32)>>,
    /// Bumped when an input topic had to be created again (the broker came back without
    /// it): its offsets start over, so offsets seen before mean nothing any more.
    inputs_recreated: AtomicU64,
}

impl Assignment {
    pub fn inputs_recreated(&self) -> u64 {
        self.inputs_recreated.load(Ordering::Acquire)
    }

    pub fn note_inputs_recreated(&self) {
        self.inputs_recreated.fetch_add(1, Ordering::Release);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn partitions(&self) -> Vec<(String, i32)> {
        self.partitions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn set(&self, partitions: Vec<(String, i32)>) {
        *self
            .partitions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = partitions;
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// Logs and counts an error librdkafka reports outside any request of ours (a broker
/// down, a transport failure...): the label is the error code, a bounded set.
fn count_client_error(client: &'static str, error: &KafkaError, reason: &str) {
    tracing::warn!(%error, reason, client, "kafka client error");
    let code = error
        .rdkafka_error_code()
        .map_or_else(|| "other".to_owned(), |code| format!("{code:?}"));
    counter!(names::BROKER_ERRORS, "client" => client, "code" => code).increment(1);
}

/// The output producer's callbacks: counts client errors like the consumer's.
#[derive(Clone, Default)]
pub struct ProducerContext;

impl ClientContext for ProducerContext {
    fn error(&self, error: KafkaError, reason: &str) {
        count_client_error("producer", &error, reason);
    }
}

/// The service's output producer.
pub type OutputProducer = rdkafka::producer::FutureProducer<ProducerContext>;

/// Consumer callbacks: records the assignment after each rebalance.
pub struct TrackingContext {
    pub health: Arc<Health>,
    pub assignment: Arc<Assignment>,
}

impl ClientContext for TrackingContext {
    fn error(&self, error: KafkaError, reason: &str) {
        count_client_error("consumer", &error, reason);
    }

    /// librdkafka's periodic statistics (`statistics.interval.ms`): the consumer lag of
    /// each partition this instance reads (high watermark minus committed offset).
    fn stats(&self, statistics: Statistics) {
        for (topic, stats) in statistics.topics {
            for (partition, p) in stats.partitions {
                // -1 is librdkafka's internal "unassigned" partition; a lag of -1 is unknown.
                if partition >= 0 && p.consumer_lag >= 0 {
                    gauge!(names::CONSUMER_LAG, "topic" => topic.clone(), "partition" => partition.to_string())
                        .set(p.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for TrackingContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        counter!(names::REBALANCES).increment(1);
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions assigned");
                self.health.set_assigned(tpl.count());
                let partitions = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                self.assignment.set(partitions);
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions revoked");
                self.health.set_assigned(0);
                self.assignment.set(Vec::new());
            }
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance error"),
        }
    }
}

/// The bootstrap servers, then the user's pass-through properties, which win over the
/// defaults set before this call.
fn apply_common(config: &mut ClientConfig, kafka: &KafkaConfig) {
    config.set("bootstrap.servers", &kafka.brokers);
    for (key, value) in &kafka.client {
        config.set(key, value);
    }
}

fn base_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    apply_common(&mut config, kafka);
    config
}

/// The input consumer. Offsets are stored by the sink only after the outputs derived from
/// them are acknowledged, then committed periodically: `enable.auto.offset.store=false` is
/// forced because librdkafka's default stores prefetched offsets and loses data on revoke.
pub fn consumer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("group.id", &kafka.group_id)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("partition.assignment.strategy", "range,roundrobin")
        // Feeds the consumer-lag gauge (see `TrackingContext::stats`).
        .set("statistics.interval.ms", "5000")
        // A fetch returns after at most this long even when little arrived (librdkafka
        // waits 500 ms by default): a quiet partition then holds the watermark, and so
        // every window's signals, back for less (benches/latency.sh).
        .set("fetch.wait.max.ms", "100")
        // A subscribed topic that appears (re-created after a wiped cluster, or created
        // after the service started) or gains partitions is noticed at the next metadata
        // refresh, and only then does the group rebalance onto it: every 5 s instead of
        // librdkafka's 5 min. One small request per refresh.
        .set("topic.metadata.refresh.interval.ms", "5000")
        // When its prefetch queue is full, librdkafka waits this long before fetching
        // again (1 s by default): reading a backlog, the queue then ran dry and the
        // service waited on the consumer two thirds of the time (benches/kafka.sh:
        // ~90k → ~150k posts/s).
        .set("fetch.queue.backoff.ms", "10");
    apply_common(&mut config, kafka);
    config.set("enable.auto.offset.store", "false");
    config
}

/// The output producer: idempotent (no duplicates from internal retries, per-partition
/// order kept) and retrying without a deadline, so that a broker outage blocks the
/// pipeline (backpressure) instead of dropping signals.
pub fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "0")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        // Outputs waiting for the broker, at most (librdkafka's default is 1 GiB): past
        // it a send waits, and so does the whole pipeline (backpressure, tests/backpressure.rs).
        .set("queue.buffering.max.kbytes", "65536")
        // A dead letter carries the rejected record byte for byte, and the broker already
        // accepted that record: the producer's own limit (1 MB by default) must not be
        // the one to refuse it, or the publish would fail forever. The broker's limit
        // still applies.
        .set("message.max.bytes", "100000000")
        // The service creates its topics itself, with their settings (the checkpoint topic
        // compacted, one partition): a send to a topic the broker lost must not have it
        // auto-created with the broker's defaults first (librdkafka's producer asks for
        // that by default). The send waits until `watch_broker` re-creates the topic.
        .set("allow.auto.create.topics", "false");
    apply_common(&mut config, kafka);
    config
}

/// The high watermark of `topic`/`partition` as librdkafka last saw it in a fetch
/// response (no request to the broker), or None before the first fetch. rdkafka has no
/// safe wrapper for `rd_kafka_get_watermark_offsets`, hence the FFI call.
pub fn cached_high_watermark<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let topic = CString::new(topic).ok()?;
    let (mut low, mut high) = (-1_i64, -1_i64);
    // SAFETY: the client handle is valid while `client` is borrowed; the call reads
    // librdkafka's cached partition state under its own lock and writes only the two
    // out-parameters, which live for the whole call.
    let code = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            client.native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (code == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high)
}

/// A client that reads topics by assignment (no group membership, no commits): the
/// checkpoint reader.
pub fn reader_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("group.id", format!("{}.checkpoint-reader", kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    apply_common(&mut config, kafka);
    config
}

/// A topic the service needs: the data topics have `kafka.partitions` partitions; the
/// checkpoint topic has one and is compacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeededTopic {
    pub name: String,
    pub compacted: bool,
    /// None: `kafka.partitions` (a compacted topic has one).
    pub partitions: Option<i32>,
}

impl NeededTopic {
    pub fn data(name: &str) -> NeededTopic {
        NeededTopic {
            name: name.to_owned(),
            compacted: false,
            partitions: None,
        }
    }

    pub fn compacted(name: &str) -> NeededTopic {
        NeededTopic {
            name: name.to_owned(),
            compacted: true,
            partitions: Some(1),
        }
    }

    /// A data topic of exactly `partitions` partitions (an internal topic whose partitions
    /// mean something, e.g. one per shard).
    pub fn partitioned(name: &str, partitions: i32) -> NeededTopic {
        NeededTopic {
            name: name.to_owned(),
            compacted: false,
            partitions: Some(partitions),
        }
    }
}

/// Creates the topics among `needed` that do not exist yet.
/// Returns the names of the topics it created.
pub async fn ensure_topics(
    kafka: &KafkaConfig,
    needed: &[NeededTopic],
) -> anyhow::Result<Vec<String>> {
    let admin: AdminClient<DefaultClientContext> = base_config(kafka)
        .create()
        .context("creating the Kafka admin client")?;
    let metadata = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .context("fetching cluster metadata")?;
    for topic in needed {
        let existing = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic.name && t.error().is_none());
        if let (Some(existing), Some(partitions), false) =
            (existing, topic.partitions, topic.compacted)
        {
            anyhow::ensure!(
                existing.partitions().len() == partitions as usize,
                "topic {} has {} partitions, {partitions} needed (one per shard: scale.shards)",
                topic.name,
                existing.partitions().len()
            );
        }
    }
    let missing: Vec<NewTopic<'_>> = needed
        .iter()
        .filter(|topic| {
            !metadata
                .topics()
                .iter()
                .any(|t| t.name() == topic.name && t.error().is_none())
        })
        .map(|topic| {
            let replication = TopicReplication::Fixed(kafka.replication_factor);
            let partitions = topic.partitions.unwrap_or(kafka.partitions);
            let new = NewTopic::new(&topic.name, partitions, replication);
            if topic.compacted {
                new.set("cleanup.policy", "compact")
            } else {
                new
            }
        })
        .collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let results = admin
        .create_topics(
            &missing,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .context("creating topics")?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(name) => {
                tracing::info!(topic = %name, "created topic");
                created.push(name);
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("cannot create topic {name}: {code}"),
        }
    }
    Ok(created)
}
