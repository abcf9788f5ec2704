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

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dynsig_core::decode::InputKind;
use dynsig_core::model::Origin;
use futures::future::join_all;
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};

use crate::api::ApiState;
use crate::checkpoint::{CheckpointTopic, Position, Saved};
use crate::config::{Config, KafkaConfig, TopicsConfig};
use crate::control::{self, Command, ReadModelWriter};
use crate::kafka::{self, Assignment, Health, NeededTopic, OutputProducer, TrackingContext};
use crate::output::{self, Content, OutRecord, SourcePosition};
use crate::processor::{Processor, RawInput};
use crate::telemetry::names;
use crate::{catalog, http};

/// Records read but not yet processed. Small enough to bound memory, large enough to keep
/// the transform stage busy while the consumer fetches.
const INPUT_QUEUE: usize = 4096;
/// Batches waiting for the producer: when the broker is slow, the transform stage waits.
const BATCH_QUEUE: usize = 8;
/// Inputs per batch at the most; a batch also closes at every tick.
const BATCH_INPUTS: usize = 2048;
/// Output bytes per batch at the most (dead letters carry whole inputs): with
/// `BATCH_QUEUE`, what waits for a slow producer stays under ~8 MiB whatever the record
/// sizes.
const BATCH_BYTES: usize = 1 << 20;
/// How often idle time is advanced and pending outputs are flushed. A window can close
/// only on a flush, and a quiet partition is declared idle only on a tick, so this adds
/// up to one period to the latency of every signal (benches/latency.sh); a tick costs a
/// few microseconds when nothing happens.
const TICK: Duration = Duration::from_millis(50);
/// API writes and catalog reloads waiting for the transform stage (each waits its turn).
const COMMAND_QUEUE: usize = 64;

type InputConsumer = StreamConsumer<TrackingContext>;

/// The topics the service consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    /// Posts or events: counted in windows.
    Input(InputKind),
    /// Verdicts on alerts, applied to the alert stage when read.
    Feedback,
}

/// A record read from a consumed topic, owned so that it can cross the channel.
struct Consumed {
    source: Source,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    content_type: Option<Vec<u8>>,
}

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

/// A checkpoint on its way to the broker, or (without records) the one restored at start:
/// either way, once its records are acknowledged, offsets may be committed up to its
/// positions and no further.
struct CheckpointWrite {
    chunks: Vec<OutRecord>,
    manifest: Option<OutRecord>,
    positions: HashMap<PartitionKey, i64>,
    started: Instant,
    bytes: usize,
}

/// Checkpointing as the transform stage sees it.
struct Checkpointing {
    topic: CheckpointTopic,
    interval: Duration,
    next_generation: u64,
    last: Instant,
    /// Read at start; applied (or refused) at the first assignment.
    to_restore: Option<Saved>,
}

/// Runs the service until `shutdown` turns true, then stops consuming, publishes what is
/// pending, commits, and returns.
pub async fn run(
    config: Config,
    prometheus: PrometheusHandle,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let topics = Arc::new(config.topics.clone());
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
        needed
    } else {
        Vec::new()
    };
    kafka::ensure_topics(&config.kafka, &needed_topics).await?;
    let (model, model_reader) = ReadModelWriter::new(processor.engine());
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
    let checkpointing = match checkpoint_topic {
        Some(topic) => Some(Checkpointing::start(topic, &config, consumer.clone()).await),
        None => None,
    };
    let mut subscription = topics.inputs().to_vec();
    subscription.push(&topics.feedback);
    consumer
        .subscribe(&subscription)
        .context("subscribing to the input and feedback topics")?;
    let publisher = Arc::new(Publisher::new(&config.kafka)?);
    let producer = publisher.current().1;
    tracing::info!(brokers = %config.kafka.brokers, group = %config.kafka.group_id, "dynsig running");

    let watch_broker = tokio::spawn(watch_broker(
        producer.clone(),
        health.clone(),
        assignment.clone(),
        (config.kafka.clone(), needed_topics, topics.clone()),
        shutdown.clone(),
    ));
    let (input_tx, input_rx) = mpsc::channel(INPUT_QUEUE);
    let (batch_tx, batch_rx) = mpsc::channel(BATCH_QUEUE);
    let source = tokio::spawn(source(
        consumer.clone(),
        topics.clone(),
        input_tx,
        shutdown.clone(),
    ));
    let transform = tokio::spawn(transform(
        EngineOwner {
            processor,
            commands: command_rx,
            model,
        },
        topics.clone(),
        InputState {
            consumer: consumer.clone(),
            assignment,
            health: health.clone(),
        },
        checkpointing,
        input_rx,
        batch_tx,
    ));
    let sink = tokio::spawn(sink(
        publisher.clone(),
        consumer.clone(),
        topics.clone(),
        config.checkpoint.enabled,
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

/// Reads input records until shutdown.
async fn source(
    consumer: Arc<InputConsumer>,
    topics: Arc<TopicsConfig>,
    tx: mpsc::Sender<Consumed>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let message = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            message = consumer.recv() => message,
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
        let source = if message.topic() == topics.posts {
            Source::Input(InputKind::Post)
        } else if message.topic() == topics.events {
            Source::Input(InputKind::Event)
        } else {
            Source::Feedback
        };
        counter!(names::EVENTS_CONSUMED, "topic" => source_label(source)).increment(1);
        let content_type = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key.eq_ignore_ascii_case("content-type"))
                .and_then(|h| h.value.map(<[u8]>::to_vec))
        });
        let record = Consumed {
            source,
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().unwrap_or_default().to_vec(),
            content_type,
        };
        if tx.send(record).await.is_err() {
            break;
        }
    }
}

/// What the transform stage knows of its input: the assignment, whether it can be read
/// at all, and (from the consumer) how far behind its end each partition is.
struct InputState {
    consumer: Arc<InputConsumer>,
    assignment: Arc<Assignment>,
    health: Arc<Health>,
}

impl InputState {
    /// Tells the engine which assigned input partitions have records not processed yet
    /// (the high watermark librdkafka last saw is past the next offset to process), so
    /// that a partition waiting its turn in a backlog is not taken for idle.
    fn note_backlogs(
        &self,
        engine: &mut dynsig_core::engine::Engine,
        topics: &TopicsConfig,
        state: &TransformState,
    ) {
        for (topic, partition) in self.assignment.partitions() {
            let Some(source @ Source::Input(kind)) = source_of(topics, &topic) else {
                continue;
            };
            let Some(&next) = state.next_offsets.get(&(source, partition)) else {
                continue;
            };
            // Cached from the last fetch response: no request to the broker.
            let high = kafka::cached_high_watermark(self.consumer.client(), &topic, partition);
            if high.is_some_and(|high| high > next) {
                engine.note_backlog(partition_index((kind, partition)));
            }
        }
    }
}

/// What the transform stage owns: the engine (in its processor), the commands that change
/// it from outside, and the read model it republishes.
struct EngineOwner {
    processor: Processor,
    commands: mpsc::Receiver<Command>,
    model: ReadModelWriter,
}

/// Decodes, aggregates and batches outputs with the offsets they make safe; applies
/// commands between records.
async fn transform(
    mut owner: EngineOwner,
    topics: Arc<TopicsConfig>,
    input: InputState,
    mut checkpointing: Option<Checkpointing>,
    mut rx: mpsc::Receiver<Consumed>,
    tx: mpsc::Sender<Batch>,
) {
    let mut ticker = tokio::time::interval(TICK);
    let mut state = TransformState::default();
    let mut seen_generation = 0;
    let mut seen_recreated = 0;
    loop {
        let assignment = &input.assignment;
        if assignment.inputs_recreated() != seen_recreated {
            seen_recreated = assignment.inputs_recreated();
            state.forget_input_offsets();
        }
        // Records of a new assignment are fetched after the rebalance callback ran, so
        // checking before each record keeps the watermark's partition set current.
        if assignment.generation() != seen_generation {
            seen_generation = assignment.generation();
            let restored = checkpointing
                .as_mut()
                .and_then(|c| c.restore_at_assignment(&mut owner, &topics, assignment, &mut state));
            if let Some(restored) = restored {
                if tx.send(restored).await.is_err() {
                    return;
                }
            }
            owner
                .processor
                .assign_partitions(&assigned_indexes(&topics, assignment));
        }
        tokio::select! {
            record = rx.recv() => match record {
                Some(record) => {
                    state.handle(&mut owner.processor, &topics, record);
                    if (state.inputs_in_batch >= BATCH_INPUTS || state.bytes_in_batch >= BATCH_BYTES)
                        && tx.send(state.flush(&mut owner, &topics, None)).await.is_err()
                    {
                        return;
                    }
                }
                None => break,
            },
            // Senders live in the HTTP server and the catalog watcher; once they are all
            // gone, this branch is disabled rather than busy.
            Some(command) = owner.commands.recv() => {
                control::apply(owner.processor.engine_mut(), command);
                state.changed_since_checkpoint = true;
                owner.model.refresh(owner.processor.engine(), &[]);
            }
            _ = ticker.tick() => {
                gauge!(names::QUEUE_DEPTH, "stage" => "input").set(rx.len() as f64);
                gauge!(names::QUEUE_DEPTH, "stage" => "output")
                    .set((tx.max_capacity() - tx.capacity()) as f64);
                // Idle time counts only while the input can be read (see
                // `Watermark::suspend_idle`): not during a group join, a rebalance or an
                // outage, or the watermark would run ahead of records still to come.
                let now = wall_now_ms();
                let wall_now = if input.health.is_ready() {
                    input.note_backlogs(owner.processor.engine_mut(), &topics, &state);
                    Some(now)
                } else {
                    owner.processor.engine_mut().suspend_idle(now);
                    None
                };
                let mut batch = state.flush(&mut owner, &topics, wall_now);
                // An unchanged state is not written again (a quiet stream still closes
                // windows by the wall clock: those outputs are changes).
                let changed = state.changed_since_checkpoint || !batch.records.is_empty();
                if let Some(checkpointing) = checkpointing.as_mut().filter(|c| changed && c.is_due()) {
                    batch.checkpoint = checkpointing.take(&owner, &topics, &mut state);
                }
                let has_news = !batch.records.is_empty()
                    || !batch.offsets.is_empty()
                    || batch.checkpoint.is_some();
                if has_news && tx.send(batch).await.is_err() {
                    return;
                }
            }
        }
    }
    // Shutdown: the last outputs, and a checkpoint of the state after them.
    let mut batch = state.flush(&mut owner, &topics, None);
    if let Some(checkpointing) = checkpointing.as_mut() {
        batch.checkpoint = checkpointing.take(&owner, &topics, &mut state);
    }
    let _ = tx.send(batch).await;
}

impl Checkpointing {
    /// Reads the group's latest checkpoint, and keeps it for the first assignment unless
    /// the committed offsets went past it (then it misses inputs that a restart would not
    /// read again: stale).
    async fn start(
        topic: CheckpointTopic,
        config: &Config,
        consumer: Arc<InputConsumer>,
    ) -> Checkpointing {
        let kafka = config.kafka.clone();
        let reader = topic.clone();
        let loaded = tokio::task::spawn_blocking(move || reader.load(&kafka))
            .await
            .unwrap_or_else(|panic| Err(anyhow::anyhow!("checkpoint reader panicked: {panic}")));
        let saved = match loaded {
            Ok(saved) => saved,
            Err(error) => {
                tracing::warn!(%error, "checkpoint unreadable: starting from the committed offsets");
                counter!(names::CHECKPOINT_RESTORES, "outcome" => "unreadable").increment(1);
                None
            }
        };
        // Registered at 0, so that an instance that never manages a checkpoint shows
        // (`DynsigCheckpointsFailing` in deploy/prometheus/).
        counter!(names::CHECKPOINTS).increment(0);
        let next_generation = saved.as_ref().map_or(1, |s| s.manifest.generation + 1);
        let to_restore = match saved {
            Some(saved) => {
                let positions = saved.manifest.positions.clone();
                let stale =
                    tokio::task::spawn_blocking(move || committed_past(&consumer, &positions))
                        .await
                        .unwrap_or(None);
                match stale {
                    None => Some(saved),
                    Some(position) => {
                        tracing::warn!(
                            topic = %position.topic, partition = position.partition,
                            "the committed offsets are past the checkpoint: not restored"
                        );
                        counter!(names::CHECKPOINT_RESTORES, "outcome" => "stale").increment(1);
                        None
                    }
                }
            }
            None => None,
        };
        Checkpointing {
            topic,
            interval: Duration::from_millis(config.checkpoint.interval_ms),
            next_generation,
            last: Instant::now(),
            to_restore,
        }
    }

    /// At the first assignment: restores the checkpoint read at start if this instance
    /// was assigned every input partition it covers (another instance owns the others'
    /// state otherwise), and returns what the sink must know of it.
    fn restore_at_assignment(
        &mut self,
        owner: &mut EngineOwner,
        topics: &TopicsConfig,
        assignment: &Assignment,
        state: &mut TransformState,
    ) -> Option<Batch> {
        let saved = self.to_restore.take()?;
        let assigned = assignment.partitions();
        let positions: HashMap<PartitionKey, i64> = saved
            .manifest
            .positions
            .iter()
            .filter_map(|p| Some(((source_of(topics, &p.topic)?, p.partition), p.next_offset)))
            .collect();
        let covered = saved.manifest.positions.iter().all(|p| {
            p.topic == topics.feedback
                || assigned
                    .iter()
                    .any(|(t, n)| *t == p.topic && *n == p.partition)
        });
        if !covered {
            tracing::warn!(
                "the checkpoint covers input partitions assigned elsewhere: not restored"
            );
            counter!(names::CHECKPOINT_RESTORES, "outcome" => "refused").increment(1);
            return None;
        }
        if let Err(error) = owner.processor.engine_mut().restore_state(&saved.state) {
            tracing::warn!(%error, "checkpoint not restored: starting from the committed offsets");
            counter!(names::CHECKPOINT_RESTORES, "outcome" => "refused").increment(1);
            return None;
        }
        tracing::info!(
            generation = saved.manifest.generation,
            bytes = saved.state.len(),
            "state restored from checkpoint"
        );
        counter!(names::CHECKPOINT_RESTORES, "outcome" => "restored").increment(1);
        owner.model.refresh(owner.processor.engine(), &[]);
        // Records below the positions are in the restored state: a redelivery skips them.
        state.next_offsets.clone_from(&positions);
        Some(Batch {
            checkpoint: Some(CheckpointWrite {
                chunks: Vec::new(),
                manifest: None,
                positions,
                started: Instant::now(),
                bytes: saved.state.len(),
            }),
            ..Batch::default()
        })
    }

    fn is_due(&self) -> bool {
        self.last.elapsed() >= self.interval
    }

    /// A checkpoint of the state as it stands (right after a flush), covering every record
    /// processed. Not while feedback waits for the alert clock: those records are read
    /// but not yet in the state.
    fn take(
        &mut self,
        owner: &EngineOwner,
        topics: &TopicsConfig,
        state: &mut TransformState,
    ) -> Option<CheckpointWrite> {
        if !state.waiting_feedback.is_empty() {
            return None;
        }
        self.last = Instant::now();
        state.changed_since_checkpoint = false;
        let started = Instant::now();
        let bytes = owner.processor.engine().save_state();
        let positions: Vec<Position> = state
            .next_offsets
            .iter()
            .map(|(&(source, partition), &next_offset)| Position {
                topic: topic_name(topics, source).to_owned(),
                partition,
                next_offset,
            })
            .collect();
        let (chunks, manifest) =
            self.topic
                .records(self.next_generation, &bytes, positions, wall_now_ms());
        self.next_generation += 1;
        Some(CheckpointWrite {
            chunks,
            manifest: Some(manifest),
            positions: state.next_offsets.clone(),
            started,
            bytes: bytes.len(),
        })
    }
}

/// The first position whose partition's committed offset is past it, if any.
fn committed_past(consumer: &InputConsumer, positions: &[Position]) -> Option<Position> {
    let mut tpl = TopicPartitionList::new();
    for p in positions {
        tpl.add_partition(&p.topic, p.partition);
    }
    let committed = match consumer.committed_offsets(tpl, Duration::from_secs(10)) {
        Ok(committed) => committed,
        Err(error) => {
            tracing::warn!(%error, "cannot read the committed offsets; trusting the checkpoint");
            return None;
        }
    };
    positions
        .iter()
        .find(|p| {
            matches!(
                committed.find_partition(&p.topic, p.partition).map(|e| e.offset()),
                Some(Offset::Offset(offset)) if offset > p.next_offset
            )
        })
        .cloned()
}

#[derive(Default)]
struct TransformState {
    batch: Batch,
    inputs_in_batch: usize,
    /// Payload bytes of the batch's records so far.
    bytes_in_batch: usize,
    /// Something reached the engine (a record, a command) since the last checkpoint.
    changed_since_checkpoint: bool,
    /// Next offset to process per consumed partition; anything below it was processed.
    next_offsets: HashMap<(Source, i32), i64>,
    /// Offsets already handed to the sink, so unchanged ones are not sent again.
    safe_offsets_sent: HashMap<(Source, i32), i64>,
    /// Verdicts read before the alert clock started (see
    /// [`control::FeedbackError::ClockNotStarted`]), applied in order once it has; their
    /// offsets are held until then.
    waiting_feedback: VecDeque<Consumed>,
}

impl TransformState {
    /// The input topics were created anew: their offsets start over, and records at
    /// offsets below those seen before are new data, not redeliveries.
    fn forget_input_offsets(&mut self) {
        tracing::warn!("input topics were re-created: their offsets start over");
        self.next_offsets.clear();
        self.safe_offsets_sent.clear();
    }

    fn handle(&mut self, processor: &mut Processor, topics: &TopicsConfig, record: Consumed) {
        let partition_key = (record.source, record.partition);
        // After a rebalance that gives a partition back, librdkafka re-delivers from the
        // committed offset; those records are already counted in the open windows.
        if let Some(&next) = self.next_offsets.get(&partition_key) {
            if record.offset < next {
                counter!(names::REDELIVERED_SKIPPED).increment(1);
                return;
            }
        }
        self.next_offsets.insert(partition_key, record.offset + 1);
        self.inputs_in_batch += 1;
        self.changed_since_checkpoint = true;
        if record.source == Source::Feedback && !control::alert_clock_started(processor.engine()) {
            self.waiting_feedback.push_back(record);
            return;
        }
        self.apply(processor, topics, record);
    }

    /// Feeds one record to the processor; a rejected one becomes a dead letter.
    fn apply(&mut self, processor: &mut Processor, topics: &TopicsConfig, record: Consumed) {
        let outcome = match record.source {
            Source::Input(kind) => processor.process(RawInput {
                kind,
                payload: &record.payload,
                content_type: record.content_type.as_deref(),
                origin: Some(Origin {
                    partition: partition_index((kind, record.partition)),
                    offset: record.offset,
                }),
            }),
            // A repeated verdict (a redelivery after a restart) is recognised by the
            // alert stage and not counted twice.
            Source::Feedback => processor.process_feedback(&record.payload),
        };
        if let Err(rejection) = outcome {
            let from = SourcePosition {
                topic: topic_name(topics, record.source),
                partition: record.partition,
                offset: record.offset,
            };
            tracing::debug!(reason = rejection.reason.as_str(), detail = %rejection.detail, "dead letter");
            self.bytes_in_batch += record.payload.len();
            self.batch.records.push(output::dead_letter(
                topics,
                from,
                record.key.as_deref(),
                &record.payload,
                &rejection,
            ));
        }
    }

    /// Closes what the watermark allows, republishes the read model, and returns the
    /// batch with its safe offsets.
    fn flush(
        &mut self,
        owner: &mut EngineOwner,
        topics: &TopicsConfig,
        wall_now: Option<i64>,
    ) -> Batch {
        let processor = &mut owner.processor;
        let signals = processor.poll(wall_now);
        if !self.waiting_feedback.is_empty() && control::alert_clock_started(processor.engine()) {
            for record in std::mem::take(&mut self.waiting_feedback) {
                self.apply(processor, topics, record);
            }
        }
        owner.model.refresh(processor.engine(), &signals);
        self.batch.records.extend(
            signals
                .iter()
                .map(|signal| output::signal_record(topics, signal)),
        );
        gauge!(names::OPEN_WINDOWS).set(processor.engine().open_windows() as f64);
        for (&key, &next) in &self.next_offsets {
            // A verdict holds its offset only while it waits for the alert clock.
            let held = match key {
                (Source::Input(kind), partition) => processor
                    .engine()
                    .held_offset(partition_index((kind, partition))),
                (Source::Feedback, partition) => self
                    .waiting_feedback
                    .iter()
                    .filter(|r| r.partition == partition)
                    .map(|r| r.offset)
                    .min(),
            };
            let safe = held.map_or(next, |held| held.min(next));
            if self.safe_offsets_sent.get(&key) != Some(&safe) {
                self.safe_offsets_sent.insert(key, safe);
                self.batch.offsets.push((key.0, key.1, safe));
            }
        }
        self.inputs_in_batch = 0;
        self.bytes_in_batch = 0;
        std::mem::take(&mut self.batch)
    }
}

/// Publishes each batch, then its checkpoint, then stores the offsets they made safe.
///
/// With checkpoints, an offset is stored no further than the last acknowledged
/// checkpoint's position: a restart restores that checkpoint and must find every input
/// after it still uncommitted. (Without one, offsets held by open windows are not stored,
/// and a restart rebuilds those windows from the inputs.)
async fn sink(
    publisher: Arc<Publisher>,
    consumer: Arc<InputConsumer>,
    topics: Arc<TopicsConfig>,
    checkpointing: bool,
    mut rx: mpsc::Receiver<Batch>,
) {
    let mut safe: HashMap<PartitionKey, i64> = HashMap::new();
    // None: checkpoints are off. Some(empty) until the first one is acknowledged.
    let mut durable: Option<HashMap<PartitionKey, i64>> = checkpointing.then(HashMap::new);
    let mut stored: HashMap<PartitionKey, i64> = HashMap::new();
    while let Some(batch) = rx.recv().await {
        publish_all(&publisher, &batch.records).await;
        let now = wall_now_ms();
        for record in &batch.records {
            count_published(record, now);
        }
        safe.extend(
            batch
                .offsets
                .iter()
                .map(|&(source, partition, offset)| ((source, partition), offset)),
        );
        if let Some(checkpoint) = batch.checkpoint {
            // The manifest only once every chunk is acknowledged (see `crate::checkpoint`).
            publish_all(&publisher, &checkpoint.chunks).await;
            if let Some(manifest) = &checkpoint.manifest {
                publish(&publisher, manifest).await;
                histogram!(names::CHECKPOINT_DURATION)
                    .record(checkpoint.started.elapsed().as_secs_f64());
                gauge!(names::CHECKPOINT_SIZE).set(checkpoint.bytes as f64);
                counter!(names::CHECKPOINTS).increment(1);
            }
            durable = Some(checkpoint.positions);
        }
        let mut tpl = TopicPartitionList::new();
        for (&key, &offset) in &safe {
            let offset = match &durable {
                None => offset,
                Some(durable) => match durable.get(&key) {
                    Some(&position) => offset.min(position),
                    None => continue,
                },
            };
            if stored.insert(key, offset) == Some(offset) {
                continue;
            }
            if let Err(error) =
                tpl.add_partition_offset(topic_name(&topics, key.0), key.1, Offset::Offset(offset))
            {
                tracing::warn!(%error, "bad offset");
            }
        }
        if tpl.count() == 0 {
            continue;
        }
        // Fails for partitions revoked meanwhile: their new owner re-reads from the last
        // commit, which is the at-least-once side of the trade.
        if let Err(error) = consumer.store_offsets(&tpl) {
            tracing::debug!(%error, "could not store offsets");
        }
    }
}

async fn publish_all(publisher: &Publisher, records: &[OutRecord]) {
    join_all(records.iter().map(|record| publish(publisher, record))).await;
}

/// The output producer, replaced when it fails for good: an idempotent producer whose
/// broker lost its state (a wiped cluster answers "unknown producer id") turns fatal and can
/// never send again. Records in flight are sent again by the new one (at-least-once).
struct Publisher {
    config: KafkaConfig,
    /// The producer and its generation, so that concurrent failures replace it once.
    current: std::sync::Mutex<(u64, OutputProducer)>,
}

impl Publisher {
    fn new(config: &KafkaConfig) -> anyhow::Result<Publisher> {
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

    fn current(&self) -> (u64, OutputProducer) {
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Replaces the producer of `generation` (if it is still the current one).
    fn renew(&self, generation: u64) {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if current.0 != generation {
            return;
        }
        match Self::create(&self.config) {
            Ok(producer) => {
                tracing::warn!("the producer failed for good; replaced by a new one");
                counter!(names::PRODUCER_RENEWALS).increment(1);
                *current = (generation + 1, producer);
            }
            Err(error) => tracing::error!(%error, "cannot replace the failed producer"),
        }
    }
}

/// Sends one record and waits for the broker's acknowledgement, retrying on failure:
/// a signal is never dropped (the producer itself retries without a deadline, so an error
/// here is rare, e.g. a fatal idempotence error, after which the producer is replaced).
async fn publish(publisher: &Publisher, record: &OutRecord) {
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
                    publisher.renew(generation);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn count_published(record: &OutRecord, wall_now: i64) {
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
    }
}

/// Keeps `/readyz` honest about the cluster: a metadata request every few seconds.
async fn watch_broker(
    producer: OutputProducer,
    health: Arc<Health>,
    assignment: Arc<Assignment>,
    (kafka_config, needed_topics, topics): (KafkaConfig, Vec<NeededTopic>, Arc<TopicsConfig>),
    mut shutdown: watch::Receiver<bool>,
) {
    // The topics were ensured at start; after an outage they are checked again, because a
    // broker back from one may have lost them (a wiped or replaced cluster): without them
    // the consumer waits forever and every publish fails.
    let mut topics_ensured = true;
    loop {
        let client = producer.clone();
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
                    if created
                        .iter()
                        .any(|t| topics.inputs().contains(&t.as_str()))
                    {
                        assignment.note_inputs_recreated();
                    }
                }
                // Retried at the next check.
                Err(error) => tracing::warn!(%error, "broker back, topics not ensured yet"),
            }
        }
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// The engine's partition indexes of the current assignment.
fn assigned_indexes(topics: &TopicsConfig, assignment: &Assignment) -> Vec<u32> {
    assignment
        .partitions()
        .into_iter()
        .filter_map(|(topic, partition)| {
            let kind = if topic == topics.posts {
                InputKind::Post
            } else if topic == topics.events {
                InputKind::Event
            } else {
                return None;
            };
            Some(partition_index((kind, partition)))
        })
        .collect()
}

fn source_of(topics: &TopicsConfig, topic: &str) -> Option<Source> {
    [
        Source::Input(InputKind::Post),
        Source::Input(InputKind::Event),
        Source::Feedback,
    ]
    .into_iter()
    .find(|&source| topic_name(topics, source) == topic)
}

fn topic_name(topics: &TopicsConfig, source: Source) -> &str {
    match source {
        Source::Input(InputKind::Post) => &topics.posts,
        Source::Input(InputKind::Event) => &topics.events,
        Source::Feedback => &topics.feedback,
    }
}

fn source_label(source: Source) -> &'static str {
    match source {
        Source::Input(kind) => crate::processor::input_label(kind),
        Source::Feedback => "feedback",
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
