//! The transform stage: feeds each record to the engine (a rejected one becomes a dead
//! letter), batches the outputs with the input offsets they make safe, applies API and
//! catalog commands between records, ticks the wall clock (idleness counts only while the
//! input is readable and caught up) and takes the checkpoints that are due.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use dynsig_core::model::Origin;
use metrics::{counter, gauge};
use rdkafka::consumer::Consumer;
use tokio::sync::mpsc;

use crate::config::TopicsConfig;
use crate::control::{self, Command, ReadModelWriter};
use crate::kafka::{self, Assignment, Health};
use crate::output::{self, SourcePosition};
use crate::processor::Processor;
use crate::telemetry::names;

use super::checkpointing::{CheckpointWrite, Checkpointing};
use super::{
    assigned_indexes, partition_index, send_checkpoint, source_of, topic_name, wall_now_ms, Batch,
    Consumed, InputConsumer, Recycler, Source,
};

/// Record bodies larger than this are freed after use instead of recycled (see
/// `TransformState::recycle`); typical records are well under 1 KiB.
const RECYCLED_PAYLOAD_MAX: usize = 64 << 10;
/// Inputs per batch at the most; a batch also closes at every tick.
pub(super) const BATCH_INPUTS: usize = 2048;
/// Output bytes per batch at the most (dead letters carry whole inputs): with
/// `BATCH_QUEUE`, what waits for a slow producer stays under ~8 MiB whatever the record
/// sizes.
pub(super) const BATCH_BYTES: usize = 1 << 20;
/// How often idle time is advanced and pending outputs are flushed. A window can close
/// only on a flush, and a quiet partition is declared idle only on a tick, so this adds
/// up to one period to the latency of every signal (benches/latency.sh); a tick costs a
/// few microseconds when nothing happens.
pub(super) const TICK: Duration = Duration::from_millis(10);
/// What the transform stage knows of its input: the assignment, whether it can be read
/// at all, and (from the consumer) how far behind its end each partition is.
pub(super) struct InputState {
    pub(super) consumer: Arc<InputConsumer>,
    pub(super) assignment: Arc<Assignment>,
    pub(super) health: Arc<Health>,
}

impl InputState {
    /// Tells the engine which assigned input partitions have records not processed yet
    /// (the high watermark librdkafka last saw is past the next offset to process), so
    /// that a partition waiting its turn in a backlog is not taken for idle.
    pub(super) fn note_backlogs(
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
pub(super) struct EngineOwner {
    pub(super) processor: Processor,
    pub(super) commands: mpsc::Receiver<Command>,
    pub(super) model: ReadModelWriter,
}

/// Decodes, aggregates and batches outputs with the offsets they make safe; applies
/// commands between records.
pub(super) async fn transform(
    mut owner: EngineOwner,
    topics: Arc<TopicsConfig>,
    input: InputState,
    mut checkpointing: Option<Checkpointing>,
    (mut rx, recycler): (mpsc::Receiver<Vec<Consumed>>, Recycler),
    tx: mpsc::Sender<Batch>,
) {
    let mut ticker = tokio::time::interval(TICK);
    let mut state = TransformState {
        recycler: Some(recycler),
        ..TransformState::default()
    };
    let mut seen = SeenAssignment::default();
    loop {
        if !seen
            .follow(
                &input,
                &mut owner,
                &topics,
                &mut checkpointing,
                &mut state,
                &tx,
            )
            .await
        {
            return;
        }
        tokio::select! {
            records = rx.recv() => match records {
                Some(records) => for record in records {
                    // Records of a new assignment are fetched after the rebalance
                    // callback ran, so checking before each record keeps the watermark's
                    // partition set current.
                    if !seen
                        .follow(&input, &mut owner, &topics, &mut checkpointing, &mut state, &tx)
                        .await
                    {
                        return;
                    }
                    state.handle(&mut owner.processor, &topics, record);
                    if (state.inputs_in_batch >= BATCH_INPUTS || state.bytes_in_batch >= BATCH_BYTES)
                        && tx.send(state.flush(&mut owner, &topics, None)).await.is_err()
                    {
                        return;
                    }
                },
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
                let batch = state.flush(&mut owner, &topics, wall_now);
                // An unchanged state is not written again (a quiet stream still closes
                // windows by the wall clock: those outputs are changes).
                let changed = state.changed_since_checkpoint || !batch.records.is_empty();
                let has_news = !batch.records.is_empty() || !batch.offsets.is_empty();
                if has_news && tx.send(batch).await.is_err() {
                    return;
                }
                let closed = std::mem::take(&mut state.closed_since_tick);
                if let Some(checkpointing) = checkpointing.as_mut() {
                    if changed && checkpointing.is_due_after_tick(closed) {
                        checkpointing.begin(&owner, &topics, &mut state);
                    }
                }
            }
            // Its positions are those of the batches sent before it; batches sent while
            // it was encoded go further, and their offsets wait for the next one.
                        Some(write) = encoded(&mut checkpointing) => {
                if !send_checkpoint(&tx, write).await {
                    return;
                }
            }
        }
    }
    // Shutdown: the last outputs, and a checkpoint of the state after them.
    let batch = state.flush(&mut owner, &topics, None);
    if tx.send(batch).await.is_err() {
        return;
    }
    if let Some(checkpointing) = checkpointing.as_mut() {
        for write in checkpointing.last(&owner, &topics, &mut state).await {
            if !send_checkpoint(&tx, write).await {
                return;
            }
        }
    }
}

/// The assignment as the transform stage last applied it.
#[derive(Default)]
struct SeenAssignment {
    generation: u64,
    inputs_recreated: u64,
}

impl SeenAssignment {
    /// Applies what changed in the assignment since last seen: re-created input topics
    /// (their offsets start over), a new partition set (and, at the first one, the
    /// checkpoint to restore). False when the sink is gone.
    async fn follow(
        &mut self,
        input: &InputState,
        owner: &mut EngineOwner,
        topics: &TopicsConfig,
        checkpointing: &mut Option<Checkpointing>,
        state: &mut TransformState,
        tx: &mpsc::Sender<Batch>,
    ) -> bool {
        let assignment = &input.assignment;
        if assignment.inputs_recreated() != self.inputs_recreated {
            self.inputs_recreated = assignment.inputs_recreated();
            state.forget_input_offsets();
        }
        if assignment.generation() == self.generation {
            return true;
        }
        self.generation = assignment.generation();
        let restored = checkpointing
            .as_mut()
            .and_then(|c| c.restore_at_assignment(owner, topics, assignment, state));
        if let Some(restored) = restored {
            if tx.send(restored).await.is_err() {
                return false;
            }
        }
        owner
            .processor
            .assign_partitions(&assigned_indexes(topics, assignment));
        true
    }
}

/// The checkpoint being encoded, once it is; pending while checkpoints are off.
async fn encoded(checkpointing: &mut Option<Checkpointing>) -> Option<CheckpointWrite> {
    match checkpointing {
        Some(checkpointing) => checkpointing.encoded().await,
        None => std::future::pending().await,
    }
}

#[derive(Default)]
pub(super) struct TransformState {
    pub(super) batch: Batch,
    pub(super) inputs_in_batch: usize,
    /// Payload bytes of the batch's records so far.
    pub(super) bytes_in_batch: usize,
    /// Something reached the engine (a record, a command) since the last checkpoint.
    pub(super) changed_since_checkpoint: bool,
    /// A flush emitted signals (a window closed, or an update) since the last tick.
    pub(super) closed_since_tick: bool,
    /// Next offset to process per consumed partition; anything below it was processed.
    pub(super) next_offsets: HashMap<(Source, i32), i64>,
    /// Offsets already handed to the sink, so unchanged ones are not sent again.
    pub(super) safe_offsets_sent: HashMap<(Source, i32), i64>,
    /// Verdicts read before the alert clock started (see
    /// [`control::FeedbackError::ClockNotStarted`]), applied in order once it has; their
    /// offsets are held until then.
    pub(super) waiting_feedback: VecDeque<Consumed>,
    /// Where used record bodies go back to the source stage (None in tests).
    pub(super) recycler: Option<Recycler>,
    /// A verdict was applied since the read model was last refreshed.
    pub(super) verdicts_since_refresh: bool,
}

impl TransformState {
    /// The input topics were created anew: their offsets start over, and records at
    /// offsets below those seen before are new data, not redeliveries.
    pub(super) fn forget_input_offsets(&mut self) {
        tracing::warn!("input topics were re-created: their offsets start over");
        self.next_offsets.clear();
        self.safe_offsets_sent.clear();
    }

    pub(super) fn handle(
        &mut self,
        processor: &mut Processor,
        topics: &TopicsConfig,
        record: Consumed,
    ) {
        let partition_key = (record.source, record.partition);
        // After a rebalance that gives a partition back, librdkafka re-delivers from the
        // committed offset; those records are already counted in the open windows.
        if let Some(&next) = self.next_offsets.get(&partition_key) {
            if record.offset < next {
                counter!(names::REDELIVERED_SKIPPED).increment(1);
                self.recycle(record);
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
    fn apply(&mut self, processor: &mut Processor, topics: &TopicsConfig, mut record: Consumed) {
        let body = &mut *record.body;
        let outcome = match (record.source, &body.decoded) {
            (Source::Input(kind), Some(Ok(()))) => {
                let origin = Origin {
                    partition: partition_index((kind, record.partition)),
                    offset: record.offset,
                };
                processor.ingest_with_terms(&body.record, Some(origin), &mut body.terms)
            }
            (Source::Input(_), Some(Err(rejection))) => Err(rejection.clone()),
            (Source::Input(_), None) => unreachable!("the source stage decodes every input"),
            // A repeated verdict (a redelivery after a restart) is recognised by the
            // alert stage and not counted twice.
            (Source::Feedback, _) => {
                self.verdicts_since_refresh = true;
                processor.process_feedback(&body.payload)
            }
            (Source::Repartition | Source::Partials, _) => {
                unreachable!("internal topics are read only when sharded")
            }
        };
        if let Err(rejection) = outcome {
            let from = SourcePosition {
                topic: topic_name(topics, record.source),
                partition: record.partition,
                offset: record.offset,
            };
            tracing::debug!(reason = rejection.reason.as_str(), detail = %rejection.detail, "dead letter");
            self.bytes_in_batch += record.body.payload.len();
            self.batch.records.push(output::dead_letter(
                topics,
                from,
                record.key.as_deref(),
                &record.body.payload,
                &rejection,
            ));
        }
        self.recycle(record);
    }

    /// Hands a used record's body back to the source stage, unless it held a large record:
    /// its buffers (payload, decoded strings, terms) keep their capacity, and bodies that
    /// all grew to the largest record seen would keep the input queue's worth of them.
    pub(super) fn recycle(&self, record: Consumed) {
        if record.body.payload.capacity() > RECYCLED_PAYLOAD_MAX {
            return;
        }
        if let Some(recycler) = &self.recycler {
            // The source stage is gone at shutdown: the body is simply dropped then.
            let _ = recycler.send(record.body);
        }
    }

    /// Closes what the watermark allows, republishes the read model, and returns the
    /// batch with its safe offsets.
    pub(super) fn flush(
        &mut self,
        owner: &mut EngineOwner,
        topics: &TopicsConfig,
        wall_now: Option<i64>,
    ) -> Batch {
        let processor = &mut owner.processor;
        let signals = processor.poll(wall_now);
        self.closed_since_tick |= !signals.is_empty();
        if !self.waiting_feedback.is_empty() && control::alert_clock_started(processor.engine()) {
            for record in std::mem::take(&mut self.waiting_feedback) {
                self.apply(processor, topics, record);
            }
        }
        // What the read model shows (active alerts, silences' state, feedback figures)
        // changes only when a window closes (which always emits signals), when a verdict
        // is applied, or, before the alert clock starts at the first close, as the
        // watermark moves (the silences' clock until then). Copying every active alert on
        // each tick instead cost the transform stage more the more alerts were active
        // (benches/RESULTS.md).
        let clock_started = control::alert_clock_started(processor.engine());
        if !signals.is_empty() || self.verdicts_since_refresh || !clock_started {
            owner.model.refresh(processor.engine(), &signals);
            self.verdicts_since_refresh = false;
        }
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
                (Source::Repartition | Source::Partials, _) => None,
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
