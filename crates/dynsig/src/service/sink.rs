//! The sink stage: publishes each batch, writes its checkpoint beside the next ones, and
//! stores the input offsets they made safe; and the producers, replaced when they fail
//! for good.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::future::join_all;
use metrics::{counter, gauge, histogram};
use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureRecord, Producer, PurgeConfig};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::config::{KafkaConfig, TopicsConfig};
use crate::kafka::{self, OutputProducer};
use crate::output::{Content, OutRecord};
use crate::telemetry::names;

use super::checkpointing::CheckpointWrite;
use super::{topic_name, wall_now_ms, Batch, InputConsumer, PartitionKey, Source};

/// Which consumed partitions a checkpoint covers, when checkpoints are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CheckpointScope {
    /// One engine's checkpoint covers every consumed partition, and each replaces the
    /// last.
    Everything,
    /// Each shard's checkpoint covers its partition of `topics.repartition`, and the
    /// merge's covers `topics.partials`; the other partitions (inputs, verdicts) hold no
    /// state of their own.
    Shards,
}

impl CheckpointScope {
    fn covers(self, source: Source) -> bool {
        match self {
            CheckpointScope::Everything => true,
            CheckpointScope::Shards => matches!(source, Source::Repartition | Source::Partials),
        }
    }
}

/// Publishes each batch, then its checkpoint, then stores the offsets they made safe.
///
/// With checkpoints, an offset of a partition they cover is stored no further than the
/// last acknowledged checkpoint's position: a restart restores that checkpoint and must
/// find every input after it still uncommitted. (Without one, offsets held by open
/// windows are not stored, and a restart rebuilds those windows from the inputs.)
///
/// A checkpoint is written by a task of its own, with its own producer (its own
/// connections), while the next batches are published: otherwise the signals of every
/// later batch would wait until the broker had acknowledged all its megabytes (tens of
/// MB at 80k posts/s, up to a second on the 2-core test machine). Signals published
/// meanwhile come from inputs after its positions, which stay uncommitted until a later
/// checkpoint covers them, so a crash in between sends them again (at-least-once) and
/// loses nothing.
pub(super) async fn sink(
    (publisher, checkpoint_publisher): (Arc<Publisher>, Arc<Publisher>),
    consumer: Arc<InputConsumer>,
    topics: Arc<TopicsConfig>,
    // None when checkpoints are off.
    checkpoints: Option<CheckpointScope>,
    mut rx: mpsc::Receiver<Batch>,
) {
    let mut offsets = Offsets {
        scope: checkpoints,
        ..Offsets::default()
    };
    let mut writing: JoinSet<Written> = JoinSet::new();
    loop {
        let batch = tokio::select! {
            batch = rx.recv() => batch,
            Some(written) = writing.join_next(), if !writing.is_empty() => {
                offsets.checkpoint_written(written);
                offsets.store(&consumer, &topics);
                continue;
            }
        };
        let Some(batch) = batch else { break };
        publish_all(&publisher, &batch.records).await;
        let now = wall_now_ms();
        for record in &batch.records {
            count_published(record, now);
        }
        offsets.safe.extend(
            batch
                .offsets
                .iter()
                .map(|&(source, partition, offset)| ((source, partition), offset)),
        );
        if let Some(checkpoint) = batch.checkpoint {
            if checkpoint.manifest.is_none() {
                // Restored at start: already on the broker.
                offsets.checkpoint_written(Ok(Written::from(checkpoint)));
            } else {
                writing.spawn(write_checkpoint(checkpoint_publisher.clone(), checkpoint));
            }
        }
        offsets.store(&consumer, &topics);
    }
    // At shutdown: the last checkpoints, so that the final commit covers them.
    while let Some(written) = writing.join_next().await {
        offsets.checkpoint_written(written);
    }
    offsets.store(&consumer, &topics);
}

/// A checkpoint once acknowledged by the broker (see [`CheckpointWrite`]).
struct Written {
    positions: HashMap<PartitionKey, i64>,
    generation: u64,
    acknowledged: Arc<AtomicU64>,
}

impl From<CheckpointWrite> for Written {
    fn from(write: CheckpointWrite) -> Written {
        Written {
            positions: write.positions,
            generation: write.generation,
            acknowledged: write.acknowledged,
        }
    }
}

/// Publishes a checkpoint's chunks, then (once they are all acknowledged) its manifest
/// (see `crate::checkpoint`).
async fn write_checkpoint(publisher: Arc<Publisher>, mut checkpoint: CheckpointWrite) -> Written {
    publish_all(&publisher, &checkpoint.chunks).await;
    if let Some(manifest) = checkpoint.manifest.take() {
        publish(&publisher, &manifest).await;
    }
    histogram!(names::CHECKPOINT_DURATION).record(checkpoint.started.elapsed().as_secs_f64());
    gauge!(names::CHECKPOINT_SIZE).set(checkpoint.bytes as f64);
    counter!(names::CHECKPOINTS).increment(1);
    Written::from(checkpoint)
}

/// The input offsets as the sink knows them: which are safe to commit, which
/// checkpoints made durable, which are stored for the consumer's next commit.
#[derive(Default)]
struct Offsets {
    scope: Option<CheckpointScope>,
    /// Per consumed partition, the next offset whose input's outputs are not all published.
    safe: HashMap<PartitionKey, i64>,
    /// Positions of the checkpoints acknowledged, per covered partition (an empty map
    /// until the first one).
    durable: HashMap<PartitionKey, i64>,
    stored: HashMap<PartitionKey, i64>,
}

impl Offsets {
    fn checkpoint_written(&mut self, written: Result<Written, tokio::task::JoinError>) {
        let written = match written {
            Ok(written) => written,
            // `publish` retries without end and does not panic; were it to, that
            // checkpoint is simply not durable, and the transform stage waits for an
            // acknowledgement that never comes: no further checkpoint, nothing
            // committed past the last one. Loud, and safe.
            Err(error) => {
                tracing::error!(%error, "checkpoint writer failed");
                return;
            }
        };
        if self.scope == Some(CheckpointScope::Everything) {
            self.durable.clear();
        }
        self.durable.extend(written.positions);
        written
            .acknowledged
            .store(written.generation, Ordering::Release);
    }

    /// The offsets to store now, those that moved since the last call: the safe ones,
    /// no further than the last acknowledged checkpoint where checkpoints cover the
    /// partition (and none before the first one).
    fn moved(&mut self) -> Vec<(PartitionKey, i64)> {
        let mut moved = Vec::new();
        for (&key, &offset) in &self.safe {
            let offset = match self.scope {
                Some(scope) if scope.covers(key.0) => match self.durable.get(&key) {
                    Some(&position) => offset.min(position),
                    None => continue,
                },
                _ => offset,
            };
            if self.stored.insert(key, offset) != Some(offset) {
                moved.push((key, offset));
            }
        }
        moved
    }

    /// Stores the offsets that moved since the last call, for the consumer's next commit.
    fn store(&mut self, consumer: &InputConsumer, topics: &TopicsConfig) {
        let mut tpl = TopicPartitionList::new();
        for ((source, partition), offset) in self.moved() {
            if let Err(error) = tpl.add_partition_offset(
                topic_name(topics, source),
                partition,
                Offset::Offset(offset),
            ) {
                tracing::warn!(%error, "bad offset");
            }
        }
        if tpl.count() == 0 {
            return;
        }
        // Fails for partitions revoked meanwhile: their new owner re-reads from the last
        // commit, which is the at-least-once side of the trade.
        if let Err(error) = consumer.store_offsets(&tpl) {
            tracing::debug!(%error, "could not store offsets");
        }
    }
}

pub(super) async fn publish_all(publisher: &Publisher, records: &[OutRecord]) {
    join_all(records.iter().map(|record| publish(publisher, record))).await;
}

/// The output producer, replaced when it fails for good: an idempotent producer whose
/// broker lost its state (a wiped cluster answers "unknown producer id") turns fatal and can
/// never send again. Records in flight are sent again by the new one (at-least-once).
pub(super) struct Publisher {
    pub(super) config: KafkaConfig,
    /// The producer and its generation, so that concurrent failures replace it once.
    pub(super) current: std::sync::Mutex<(u64, OutputProducer)>,
}

impl Publisher {
    pub(super) fn new(config: &KafkaConfig) -> anyhow::Result<Publisher> {
        Ok(Publisher {
            config: config.clone(),
            current: std::sync::Mutex::new((0, Self::create(config)?)),
        })
    }

    fn create(config: &KafkaConfig) -> anyhow::Result<OutputProducer> {
        kafka::producer_config(config)
            .create_with_context(kafka::ProducerContext)
            .context("creating the Kafka producer")
    }

    pub(super) fn current(&self) -> (u64, OutputProducer) {
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Replaces the producer of `generation` (if it is still the current one).
    fn renew(&self, generation: u64, why: &str) {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if current.0 != generation {
            return;
        }
        match Self::create(&self.config) {
            Ok(producer) => {
                tracing::warn!(why, "producer replaced by a new one");
                counter!(names::PRODUCER_RENEWALS).increment(1);
                *current = (generation + 1, producer);
            }
            Err(error) => tracing::error!(%error, "cannot replace the failed producer"),
        }
    }

    /// Replaces the producer after the cluster lost its topics (wiped or replaced): it lost
    /// the producer ids with them, and librdkafka may retry a record refused for an unknown
    /// producer id without ever reporting it (`message.timeout.ms = 0`). The old producer's
    /// records are purged, which fails their sends, and [`publish`] sends them again with
    /// the new producer.
    pub(super) fn replace_after_wipe(&self) {
        let (generation, old) = self.current();
        self.renew(
            generation,
            "the cluster lost its topics, and so its producer ids",
        );
        if self.current().0 != generation {
            old.purge(PurgeConfig::default().queue().inflight());
        }
    }
}

/// Sends one record and waits for the broker's acknowledgement, retrying on failure:
/// a signal is never dropped (the producer itself retries without a deadline, so an error
/// here is rare, e.g. a fatal idempotence error, after which the producer is replaced).
pub(super) async fn publish(publisher: &Publisher, record: &OutRecord) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let (generation, producer) = publisher.current();
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (key, value) in &record.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut future_record = FutureRecord::<[u8], [u8]>::to(&record.topic)
            .payload(&record.payload)
            .headers(headers);
        if let Some(key) = &record.key {
            future_record = future_record.key(key);
        }
        if let Some(partition) = record.partition {
            future_record = future_record.partition(partition);
        }
        match producer.send(future_record, Timeout::Never).await {
            Ok(_) => return,
            Err((error, _)) => {
                counter!(names::PUBLISH_ERRORS).increment(1);
                tracing::error!(%error, topic = %record.topic, "publish failed; retrying");
                // The producer's idempotence state is gone for good: librdkafka says
                // `Fatal`, or passes on the broker's verdict on the producer id (a wiped
                // broker answers ProducerFenced or UnknownProducerId).
                let broken_state = matches!(
                    error.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::Fatal
                            | RDKafkaErrorCode::ProducerFenced
                            | RDKafkaErrorCode::UnknownProducerId
                            | RDKafkaErrorCode::InvalidProducerEpoch
                            | RDKafkaErrorCode::InvalidProducerIdMapping
                    )
                );
                if broken_state || producer.client().fatal_error().is_some() {
                    publisher.renew(generation, "it failed for good");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

pub(super) fn count_published(record: &OutRecord, wall_now: i64) {
    match record.content {
        Content::Signal {
            kind,
            window_end,
            severity,
        } => {
            counter!(names::SIGNALS_PUBLISHED, "kind" => kind).increment(1);
            if let Some(window_end) = window_end {
                histogram!(names::EVENT_TIME_TO_PUBLISH)
                    .record((wall_now - window_end) as f64 / 1000.0);
            }
            // Routes are the configured team topics: a bounded label.
            if let (Some(severity), "alert" | "notification") = (severity, kind) {
                let route = if kind == "alert" {
                    "all"
                } else {
                    record.topic.as_str()
                };
                counter!(names::ALERTS_PUBLISHED, "severity" => severity.as_str(), "route" => route.to_owned())
                    .increment(1);
            }
        }
        Content::DeadLetter { reason } => {
            counter!(names::DLQ_RECORDS, "reason" => reason.as_str()).increment(1);
        }
        // Counted by the sink once the whole checkpoint is acknowledged.
        Content::Checkpoint => {}
        Content::Internal => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynsig_core::decode::InputKind;

    const POSTS: Source = Source::Input(InputKind::Post);

    fn offsets(scope: Option<CheckpointScope>, safe: &[(Source, i32, i64)]) -> Offsets {
        let mut offsets = Offsets {
            scope,
            ..Offsets::default()
        };
        offsets
            .safe
            .extend(safe.iter().map(|&(s, p, o)| ((s, p), o)));
        offsets
    }

    fn written(positions: &[(Source, i32, i64)], generation: u64) -> Written {
        Written {
            positions: positions.iter().map(|&(s, p, o)| ((s, p), o)).collect(),
            generation,
            acknowledged: Arc::new(AtomicU64::new(0)),
        }
    }

    fn sorted(mut moved: Vec<(PartitionKey, i64)>) -> Vec<(PartitionKey, i64)> {
        moved.sort_by_key(|&((_, partition), offset)| (partition, offset));
        moved
    }

    #[test]
    fn without_checkpoints_safe_offsets_are_stored_once_each() {
        let mut offsets = offsets(None, &[(POSTS, 0, 10), (POSTS, 1, 5)]);
        assert_eq!(
            sorted(offsets.moved()),
            vec![((POSTS, 0), 10), ((POSTS, 1), 5)]
        );
        assert_eq!(offsets.moved(), vec![]);
        offsets.safe.insert((POSTS, 1), 7);
        assert_eq!(offsets.moved(), vec![((POSTS, 1), 7)]);
    }

    #[test]
    fn offsets_wait_for_an_acknowledged_checkpoint_and_never_pass_it() {
        let mut offsets = offsets(
            Some(CheckpointScope::Everything),
            &[(POSTS, 0, 100), (Source::Feedback, 0, 3)],
        );
        // Before the first checkpoint (or while it is being written) nothing is stored.
        assert_eq!(offsets.moved(), vec![]);
        let first = written(&[(POSTS, 0, 60), (Source::Feedback, 0, 3)], 1);
        let acknowledged = first.acknowledged.clone();
        offsets.checkpoint_written(Ok(first));
        assert_eq!(acknowledged.load(Ordering::Acquire), 1);
        assert_eq!(
            sorted(offsets.moved()),
            vec![((Source::Feedback, 0), 3), ((POSTS, 0), 60)]
        );
        // Batches published while the next checkpoint is written move nothing.
        offsets.safe.insert((POSTS, 0), 200);
        assert_eq!(offsets.moved(), vec![]);
        // The next one replaces the last: its positions, up to the safe offsets.
        offsets.checkpoint_written(Ok(written(&[(POSTS, 0, 150)], 2)));
        assert_eq!(offsets.moved(), vec![((POSTS, 0), 150)]);
    }

    #[test]
    fn sharded_checkpoints_cover_only_the_internal_topics() {
        let mut offsets = offsets(
            Some(CheckpointScope::Shards),
            &[
                (POSTS, 0, 40),
                (Source::Repartition, 2, 90),
                (Source::Partials, 0, 9),
            ],
        );
        // Inputs hold no state of their own once sent to their shard.
        assert_eq!(offsets.moved(), vec![((POSTS, 0), 40)]);
        offsets.checkpoint_written(Ok(written(&[(Source::Repartition, 2, 80)], 1)));
        offsets.checkpoint_written(Ok(written(&[(Source::Partials, 0, 9)], 1)));
        // Each shard's checkpoint adds to the others' instead of replacing them.
        assert_eq!(
            sorted(offsets.moved()),
            vec![((Source::Partials, 0), 9), ((Source::Repartition, 2), 80)]
        );
    }
}
