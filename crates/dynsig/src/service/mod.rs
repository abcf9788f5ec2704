//! `dynsig run`: the pipeline over Kafka, as three tokio stages joined by bounded channels.
//!
//! ```text
//! source (consumer) --Consumed--> transform (Processor) --Batch--> sink (producer, offsets)
//! ```
//! At-least-once: the transform stage hands the sink, with each batch of output records,
//! the input offsets that become safe once those records are acknowledged (an offset is
//! safe when no open window still holds it), and now and then a checkpoint of the engine's
//! state with the offsets it covers (see [`crate::checkpoint`]). The sink stores offsets
//! only after every record of the batch is acknowledged, and no further than the last
//! acknowledged checkpoint; librdkafka commits stored offsets periodically and once more
//! at shutdown. A restart restores the checkpoint and skips what it covers (without
//! checkpoints: re-reads from the commit point and rebuilds the open windows). Bounded
//! channels give backpressure: a slow broker slows consumption instead of growing memory.
//!
//! The same consumer reads `signals.feedback`: a verdict changes the engine when read, so
//! its offset is safe as soon as its dead letter (if any) is published; only a verdict
//! read before alert time started waits (and holds its offset) until it has.
//! The HTTP API and the catalog watcher reach the engine through the transform stage's
//! command channel, and read what it republishes after each flush (see [`crate::control`]).
//!
//! The stages: [`transform`] (the engine, batches, idleness), [`sink`] (publishing and
//! offsets) and [`checkpointing`] (saving and restoring the engine's state); the source and
//! the broker watch are here.

mod alignment;
mod checkpointing;
mod fragment;
mod shards;
mod sink;
mod transform;

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dynsig_core::decode::{InputKind, Rejection};
use dynsig_core::engine::{PostTerms, TermExtractor};
use dynsig_core::model::{Input, Post};
use futures::FutureExt as _;
use metrics::counter;
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::Producer;
use rdkafka::util::Timeout;
use tokio::sync::{mpsc, watch};

use crate::api::ApiState;
use crate::checkpoint::CheckpointTopic;
use crate::config::{Config, KafkaConfig, TopicsConfig};
use crate::control::ReadModelWriter;
use crate::kafka::{self, Assignment, Health, NeededTopic, TrackingContext};
use crate::output::OutRecord;
use crate::processor::{Decoder, Processor, RawInput};
use crate::telemetry::names;
use crate::{catalog, http};

use alignment::Aligner;
use checkpointing::{CheckpointWrite, Checkpointing};
use shards::ShardedOwner;
use sink::{CheckpointScope, Publisher};
use transform::{EngineOwner, InputState};

/// Records read but not yet processed, in batches of at most `READ_BATCH`. Small enough to
/// bound memory, large enough to keep the transform stage busy while the consumer fetches.
const INPUT_QUEUE: usize = 4096;
/// Records the source stage hands over at once: as many as the consumer has ready, up to
/// this. One record per hand-over made the two stages wake each other for every record
/// (profiled: neither was busy half the time, and throughput stalled at ~90k records/s).
const READ_BATCH: usize = 256;
/// How often the source stage re-decides which input partitions to pause when no record
/// arrives (see [`alignment`]).
const ALIGNMENT_TICK: Duration = Duration::from_millis(100);
/// Batches waiting for the producer: when the broker is slow, the transform stage waits.
const BATCH_QUEUE: usize = 8;
/// API writes and catalog reloads waiting for the transform stage (each waits its turn).
const COMMAND_QUEUE: usize = 64;

type InputConsumer = StreamConsumer<TrackingContext>;

/// The topics the service consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    /// Posts or events: counted in windows (or, sharded, sent to the shards).
    Input(InputKind),
    /// Verdicts on alerts, applied to the alert stage when read (or, sharded, sent to the
    /// shard of the alert).
    Feedback,
    /// Sharded (`scale.shards` > 1): inputs and verdicts for the shard of the partition.
    Repartition,
    /// Sharded: the shards' trend snapshots, to be merged.
    Partials,
}

/// Every [`Source`], in [`source_index`] order.
const SOURCES: [Source; 5] = [
    Source::Input(InputKind::Post),
    Source::Input(InputKind::Event),
    Source::Feedback,
    Source::Repartition,
    Source::Partials,
];

/// A record read from a consumed topic, owned so that it can cross the channel.
struct Consumed {
    source: Source,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    body: Box<Body>,
}

/// What a consumed record carries: its bytes and, for an input, what the source stage
/// decoded from them, so that the transform stage, which runs the engine on one core,
/// only counts (decoding and tokenizing run beside it). Bodies go back to the source
/// stage once used ([`Recycler`]): their buffers are reused rather than allocated on
/// one thread and freed on another for every record (profiled: that cost more than the
/// decoding it moved).
struct Body {
    /// As read: a rejected record is dead-lettered byte for byte.
    payload: Vec<u8>,
    /// For an input: decoded into `record` (a post's terms into `terms`), or why not.
    /// None for feedback and partial snapshots, which the transform stage parses.
    decoded: Option<Result<(), Rejection>>,
    record: Input,
    terms: PostTerms,
    /// For a repartition record: where it was read first (see [`fragment`]).
    origin: Option<fragment::Origin>,
    /// For an input: its `content-type` header, if any (sent on with it when sharded).
    content_type: Option<Vec<u8>>,
}

impl Default for Body {
    fn default() -> Self {
        Body {
            payload: Vec::new(),
            decoded: None,
            record: Input::Post(Post::default()),
            terms: PostTerms::default(),
            origin: None,
            content_type: None,
        }
    }
}

/// Used bodies on their way back to the source stage; at most the input queue's worth
/// are in circulation.
type Recycler = std::sync::mpsc::Sender<Box<Body>>;

/// A consumed partition.
type PartitionKey = (Source, i32);

/// Output records, and the input offsets that are safe once they are acknowledged.
#[derive(Default)]
struct Batch {
    records: Vec<OutRecord>,
    /// (source, partition) → next offset to consume.
    offsets: Vec<(Source, i32, i64)>,
    /// A checkpoint of the state after these records, written once they are acknowledged.
    checkpoint: Option<CheckpointWrite>,
}

/// Hands the sink a checkpoint, written or restored (see [`CheckpointWrite`]), after the
/// batches sent before it. False when the sink is gone.
async fn send_checkpoint(tx: &mpsc::Sender<Batch>, write: CheckpointWrite) -> bool {
    let batch = Batch {
        checkpoint: Some(write),
        ..Batch::default()
    };
    tx.send(batch).await.is_ok()
}

/// Runs the service until `shutdown` turns true, then stops consuming, publishes what is
/// pending, commits, and returns.
pub async fn run(
    config: Config,
    prometheus: PrometheusHandle,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let topics = Arc::new(config.topics.clone());
    let shards = config.scale.shards;
    let sharded = shards > 1;
    // The catalog first: a bad file stops the service before it touches the cluster.
    let mut processor = Processor::new(&config)?;
    let catalog_watcher = if config.catalog.path.is_empty() {
        None
    } else {
        let check_every = Duration::from_millis(config.catalog.reload_check_ms);
        let loaded = catalog::load_at_start(Path::new(&config.catalog.path), check_every)?;
        processor.engine_mut().set_catalog(loaded.matcher);
        Some(loaded.watcher)
    };
    let checkpoint_topic = config.checkpoint.enabled.then(|| CheckpointTopic {
        topic: topics.checkpoints.clone(),
        group: config.kafka.group_id.clone(),
        chunk_bytes: config.checkpoint.chunk_bytes,
    });
    // Re-created too when the broker comes back empty (see `watch_broker`).
    let needed_topics: Vec<NeededTopic> = if config.kafka.create_topics {
        let router = dynsig_core::routing::Router::new(&config.routing)?;
        let mut all: Vec<&str> = topics.inputs().to_vec();
        all.extend(topics.outputs());
        all.push(&topics.feedback);
        all.extend(router.destinations());
        let mut needed: Vec<NeededTopic> = all.into_iter().map(NeededTopic::data).collect();
        if let Some(checkpoints) = &checkpoint_topic {
            needed.push(NeededTopic::compacted(&checkpoints.topic));
        }
        if sharded {
            needed.push(NeededTopic::partitioned(&topics.repartition, shards as i32));
            needed.push(NeededTopic::partitioned(&topics.partials, 1));
        }
        needed
    } else {
        Vec::new()
    };
    kafka::ensure_topics(&config.kafka, &needed_topics).await?;
    let (model, model_reader) = ReadModelWriter::new(processor.engine());
    let (decoder, extractor) = (
        processor.decoder().clone(),
        processor.engine().term_extractor(),
    );
    let (command_tx, command_rx) = mpsc::channel(COMMAND_QUEUE);

    let health = Arc::new(Health::default());
    let assignment = Arc::new(Assignment::default());
    let listener = http::bind(config.http.addr).await?;
    let http = tokio::spawn(http::serve(
        listener,
        prometheus,
        health.clone(),
        ApiState::new(
            model_reader,
            command_tx.clone(),
            config.http.api_token.expose(),
        ),
        shutdown.clone(),
    ));
    let catalog_watcher = catalog_watcher
        .map(|watcher| tokio::spawn(watcher.run(command_tx.clone(), shutdown.clone())));
    drop(command_tx);

    let consumer: Arc<InputConsumer> = Arc::new(
        kafka::consumer_config(&config.kafka)
            .create_with_context(TrackingContext {
                health: health.clone(),
                assignment: assignment.clone(),
            })
            .context("creating the Kafka consumer")?,
    );
    // The generation of the last checkpoint acknowledged (written by the sink, read by the
    // transform stage, which takes the next one only then).
    // Sharded, each shard reads its own when it is assigned.
    let checkpointing = match checkpoint_topic.clone().filter(|_| !sharded) {
        Some(topic) => {
            let acknowledged = Arc::new(AtomicU64::new(0));
            Some(Checkpointing::start(topic, &config, consumer.clone(), acknowledged).await)
        }
        None => None,
    };
    consumer
        .subscribe(&subscription(&topics, sharded))
        .context("subscribing to the input and feedback topics")?;
    let publisher = Arc::new(Publisher::new(&config.kafka)?);
    // Checkpoints have a producer of their own (see `sink::sink`).
    let checkpoint_publisher = if config.checkpoint.enabled {
        Some(Arc::new(Publisher::new(&config.kafka)?))
    } else {
        None
    };
    tracing::info!(brokers = %config.kafka.brokers, group = %config.kafka.group_id, "dynsig running");

    let watch_broker = tokio::spawn(watch_broker(
        (
            std::iter::once(publisher.clone())
                .chain(checkpoint_publisher.clone())
                .collect(),
            consumer.clone(),
        ),
        (health.clone(), assignment.clone()),
        (config.kafka.clone(), needed_topics, topics.clone(), sharded),
        shutdown.clone(),
    ));
    let (input_tx, input_rx) = mpsc::channel(INPUT_QUEUE / READ_BATCH);
    let (batch_tx, batch_rx) = mpsc::channel(BATCH_QUEUE);
    let (recycler, recycled) = std::sync::mpsc::channel();
    let source = tokio::spawn(source(
        (consumer.clone(), assignment.clone()),
        topics.clone(),
        (decoder, extractor, recycled),
        Aligner::new(config.engine().window.max_partition_drift_ms),
        input_tx,
        shutdown.clone(),
    ));
    let input_state = InputState {
        consumer: consumer.clone(),
        assignment,
        health: health.clone(),
    };
    let transform = if sharded {
        let owner = ShardedOwner {
            config: Arc::new(config.clone()),
            template: processor,
            commands: command_rx,
            model,
            checkpoint_topic,
        };
        tokio::spawn(shards::transform(
            owner,
            topics.clone(),
            input_state,
            (input_rx, recycler),
            batch_tx,
        ))
    } else {
        let owner = EngineOwner {
            processor,
            commands: command_rx,
            model,
        };
        tokio::spawn(transform::transform(
            owner,
            topics.clone(),
            input_state,
            checkpointing,
            (input_rx, recycler),
            batch_tx,
        ))
    };
    let scope = if sharded {
        CheckpointScope::Shards
    } else {
        CheckpointScope::Everything
    };
    let sink = tokio::spawn(sink::sink(
        (
            publisher.clone(),
            checkpoint_publisher.unwrap_or_else(|| publisher.clone()),
        ),
        consumer.clone(),
        topics.clone(),
        config.checkpoint.enabled.then_some(scope),
        batch_rx,
    ));

    // The source stops on shutdown; the transform and sink stages end when their input
    // channel closes, after finishing what is queued.
    let _ = shutdown.wait_for(|stop| *stop).await;
    tracing::info!("shutting down: flushing outputs, checkpointing and committing offsets");
    let deadline = Instant::now() + Duration::from_millis(config.shutdown.deadline_ms);
    let drained = tokio::time::timeout_at(deadline.into(), async {
        source.await?;
        transform.await?;
        sink.await?;
        anyhow::Ok(())
    })
    .await;
    match drained {
        Ok(result) => result?,
        Err(_) => anyhow::bail!(
            "shutdown did not finish within shutdown.deadline_ms = {}",
            config.shutdown.deadline_ms
        ),
    }
    publisher
        .current()
        .1
        .flush(Timeout::After(
            deadline.saturating_duration_since(Instant::now()),
        ))
        .context("flushing the producer")?;
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {}
        // Nothing stored since the last automatic commit.
        Err(rdkafka::error::KafkaError::ConsumerCommit(
            rdkafka::types::RDKafkaErrorCode::NoOffset,
        )) => {}
        Err(error) => return Err(error).context("committing offsets at shutdown"),
    }
    watch_broker.await?;
    if let Some(watcher) = catalog_watcher {
        watcher.await?;
    }
    http.await??;
    tracing::info!("dynsig stopped");
    Ok(())
}

/// Reads input records until shutdown, and hands them over decoded (see [`Body`]), as
/// many at once as the consumer has ready (up to [`READ_BATCH`]).
async fn source(
    (consumer, assignment): (Arc<InputConsumer>, Arc<Assignment>),
    topics: Arc<TopicsConfig>,
    (decoder, mut extractor, recycled): (Decoder, TermExtractor, Receiver<Box<Body>>),
    mut aligner: Aligner,
    tx: mpsc::Sender<Vec<Consumed>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let consumed =
        SOURCES.map(|source| counter!(names::EVENTS_CONSUMED, "topic" => source_label(source)));
    let read_topics = topics.clone();
    let mut read = move |message: &BorrowedMessage<'_>| -> Consumed {
        let topics = &read_topics;
        let source = source_of(topics, message.topic()).unwrap_or(Source::Feedback);
        consumed[source_index(source)].increment(1);
        let mut body = recycled.try_recv().unwrap_or_default();
        body.payload.clear();
        body.payload
            .extend_from_slice(message.payload().unwrap_or_default());
        body.origin = None;
        let header = |name: &str| {
            message.headers().and_then(|headers| {
                headers
                    .iter()
                    .find(|h| h.key.eq_ignore_ascii_case(name))
                    .and_then(|h| h.value)
            })
        };
        body.content_type = match source {
            Source::Input(_) => header("content-type").map(<[u8]>::to_vec),
            _ => None,
        };
        body.decoded = match source {
            Source::Input(kind) => {
                let raw = RawInput {
                    kind,
                    payload: &body.payload,
                    content_type: body.content_type.as_deref(),
                };
                Some(decoder.decode_with_terms(
                    raw,
                    &mut extractor,
                    &mut body.record,
                    &mut body.terms,
                ))
            }
            // Decoded again, with the terms the sending instance extracted.
            Source::Repartition => match fragment::read_headers(header, &mut body.terms) {
                Ok((origin, content_type)) => {
                    body.origin = Some(origin);
                    match origin.kind {
                        fragment::FragmentKind::Input(kind) => {
                            let raw = RawInput {
                                kind,
                                payload: &body.payload,
                                content_type,
                            };
                            Some(decoder.decode_into(raw, &mut body.record))
                        }
                        fragment::FragmentKind::Feedback | fragment::FragmentKind::CaughtUp(_) => {
                            None
                        }
                    }
                }
                Err(rejection) => Some(Err(rejection)),
            },
            Source::Feedback | Source::Partials => None,
        };
        Consumed {
            source,
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            body,
        }
    };
    let mut alignment_timer = tokio::time::interval(ALIGNMENT_TICK);
    // While a hand-over waits, missed ticks are not made up for in a burst.
    alignment_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let message = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            message = consumer.recv() => message,
            // Resumes what waited for a partition that has since read all there is.
            _ = alignment_timer.tick() => {
                aligner.align(&consumer, &topics, &assignment);
                continue;
            }
        };
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                // Transient (broker down, rebalance in progress): librdkafka reconnects.
                tracing::warn!(%error, "consume error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut records = Vec::with_capacity(READ_BATCH);
        records.push(read(&message));
        while records.len() < READ_BATCH {
            match consumer.recv().now_or_never() {
                Some(Ok(message)) => records.push(read(&message)),
                // Handled at the next wait, as above.
                Some(Err(error)) => {
                    tracing::warn!(%error, "consume error");
                    break;
                }
                None => break,
            }
        }
        for record in &records {
            aligner.read(record);
        }
        if tx.send(records).await.is_err() {
            break;
        }
        aligner.align(&consumer, &topics, &assignment);
    }
}

/// Keeps `/readyz` honest about the cluster: a metadata request every few seconds.
async fn watch_broker(
    // The outputs' producer first.
    (publishers, consumer): (Vec<Arc<Publisher>>, Arc<InputConsumer>),
    (health, assignment): (Arc<Health>, Arc<Assignment>),
    (kafka_config, needed_topics, topics, sharded): (
        KafkaConfig,
        Vec<NeededTopic>,
        Arc<TopicsConfig>,
        bool,
    ),
    mut shutdown: watch::Receiver<bool>,
) {
    // The topics were ensured at start; after an outage they are checked again, because a
    // broker back from one may have lost them (a wiped or replaced cluster): without them
    // the consumer waits forever and every publish fails.
    let mut topics_ensured = true;
    let mut rejoin: Option<Rejoin> = None;
    loop {
        let client = publishers[0].current().1;
        let up = tokio::task::spawn_blocking(move || {
            client
                .client()
                .fetch_metadata(None, Duration::from_secs(3))
                .is_ok()
        })
        .await
        .unwrap_or(false);
        health.set_broker_up(up);
        if !up {
            topics_ensured = false;
        } else if !topics_ensured {
            match kafka::ensure_topics(&kafka_config, &needed_topics).await {
                Ok(created) => {
                    topics_ensured = true;
                    tracing::info!(?created, "broker reachable again; topics ensured");
                    if !created.is_empty() {
                        for publisher in &publishers {
                            publisher.replace_after_wipe();
                        }
                    }
                    if created
                        .iter()
                        .any(|t| topics.inputs().contains(&t.as_str()))
                    {
                        assignment.note_inputs_recreated();
                    }
                    let subscribed = subscription(&topics, sharded);
                    if created.iter().any(|t| subscribed.contains(&t.as_str())) {
                        rejoin = Some(Rejoin::default());
                    }
                }
                // Retried at the next check.
                Err(error) => tracing::warn!(%error, "broker back, topics not ensured yet"),
            }
        }
        if up && topics_ensured {
            if let Some(state) = rejoin.as_mut() {
                let subscribed = subscription(&topics, sharded);
                if !state.step(&consumer, &subscribed, health.assigned()).await {
                    rejoin = None;
                }
            }
        }
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// Getting the group to rejoin onto subscribed topics that were just re-created.
///
/// The group may have rejoined while the topics were missing and been assigned nothing,
/// and librdkafka does not rebalance for topics created during a rebalance
/// (confluentinc/librdkafka#3008), so the instance would idle until its next restart.
/// Subscribing again makes the group rejoin with the topics in its metadata, but only if
/// the broker already lists them (right after creating them it may not, and the rejoin
/// then again assigns nothing: seen in CI under load). So: wait until the broker lists
/// every subscribed topic with partitions, subscribe again, and while no partition is
/// assigned, do so again every few checks, a bounded number of times (an instance of a
/// group with more members than partitions may rightly own none).
#[derive(Default)]
struct Rejoin {
    subscriptions: u32,
    checks_since: u32,
}

impl Rejoin {
    /// Subscriptions at most, the first included.
    const MAX_SUBSCRIPTIONS: u32 = 4;
    /// Checks (2 s apart) to wait for an assignment after subscribing.
    const CHECKS_PER_TRY: u32 = 5;

    /// One check; false once done (partitions assigned, or given up).
    async fn step(
        &mut self,
        consumer: &Arc<InputConsumer>,
        subscribed: &[&str],
        assigned: usize,
    ) -> bool {
        if self.subscriptions > 0 && assigned > 0 {
            return false;
        }
        self.checks_since += 1;
        if self.subscriptions > 0 && self.checks_since < Self::CHECKS_PER_TRY {
            return true;
        }
        if self.subscriptions >= Self::MAX_SUBSCRIPTIONS {
            tracing::warn!(
                subscriptions = self.subscriptions,
                "no input partition assigned after re-subscribing: giving up (fine if the group has more members than partitions)"
            );
            return false;
        }
        // Not before the broker lists the topics (the rejoin would assign nothing again),
        // but not forever either.
        let waited_long = self.checks_since >= 2 * Self::CHECKS_PER_TRY;
        if !waited_long && !all_listed(consumer, subscribed).await {
            return true;
        }
        match consumer.subscribe(subscribed) {
            Ok(()) => tracing::info!(
                attempt = self.subscriptions + 1,
                "re-subscribed after re-creating inputs"
            ),
            Err(error) => tracing::warn!(%error, "re-subscribing failed"),
        }
        self.subscriptions += 1;
        self.checks_since = 0;
        true
    }
}

/// Whether the broker lists every one of `topics` with at least one partition.
async fn all_listed(consumer: &Arc<InputConsumer>, topics: &[&str]) -> bool {
    let consumer = consumer.clone();
    let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        topics.iter().all(|topic| {
            consumer
                .fetch_metadata(Some(topic), Duration::from_secs(3))
                .is_ok_and(|metadata| {
                    metadata
                        .topics()
                        .iter()
                        .any(|t| t.error().is_none() && !t.partitions().is_empty())
                })
        })
    })
    .await
    .unwrap_or(false)
}

/// The topics the consumer group reads: the inputs and the feedback topic, and when
/// sharded the internal topics between instances.
fn subscription(topics: &TopicsConfig, sharded: bool) -> Vec<&str> {
    let mut subscription = topics.inputs().to_vec();
    subscription.push(&topics.feedback);
    if sharded {
        subscription.extend([topics.repartition.as_str(), &topics.partials]);
    }
    subscription
}

/// The engine's partition indexes of the current assignment.
fn assigned_indexes(topics: &TopicsConfig, assignment: &Assignment) -> Vec<u32> {
    assigned_inputs(topics, assignment)
        .into_iter()
        .map(|(index, _, _)| index)
        .collect()
}

/// The assigned partitions of the input topics: (engine partition index, topic, partition).
fn assigned_inputs(topics: &TopicsConfig, assignment: &Assignment) -> Vec<(u32, String, i32)> {
    assignment
        .partitions()
        .into_iter()
        .filter_map(|(topic, partition)| match source_of(topics, &topic) {
            Some(Source::Input(kind)) => {
                Some((partition_index((kind, partition)), topic, partition))
            }
            _ => None,
        })
        .collect()
}

fn source_of(topics: &TopicsConfig, topic: &str) -> Option<Source> {
    SOURCES
        .into_iter()
        .find(|&source| topic_name(topics, source) == topic)
}

fn topic_name(topics: &TopicsConfig, source: Source) -> &str {
    match source {
        Source::Input(InputKind::Post) => &topics.posts,
        Source::Input(InputKind::Event) => &topics.events,
        Source::Feedback => &topics.feedback,
        Source::Repartition => &topics.repartition,
        Source::Partials => &topics.partials,
    }
}

/// The position of `source` in [`SOURCES`].
fn source_index(source: Source) -> usize {
    match source {
        Source::Input(InputKind::Post) => 0,
        Source::Input(InputKind::Event) => 1,
        Source::Feedback => 2,
        Source::Repartition => 3,
        Source::Partials => 4,
    }
}

fn source_label(source: Source) -> &'static str {
    match source {
        Source::Input(kind) => crate::processor::input_label(kind),
        Source::Feedback => "feedback",
        Source::Repartition => "repartition",
        Source::Partials => "partials",
    }
}

/// The engine's opaque partition index: input kind in the high bits, partition below.
fn partition_index((kind, partition): (InputKind, i32)) -> u32 {
    let kind_bit = match kind {
        InputKind::Post => 0,
        InputKind::Event => 1 << 31,
    };
    kind_bit | partition as u32
}

pub fn wall_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
