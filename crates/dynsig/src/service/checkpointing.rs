//! Checkpoints as the pipeline runs them: the group's latest is read at start and
//! restored at the first assignment (if still valid), and a new one is taken when due and
//! at shutdown, to be written by the sink after the outputs before it. The records' layout
//! on the topic is in [`crate::checkpoint`].

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dynsig_core::engine::Engine;
use metrics::{counter, histogram};
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};

use crate::checkpoint::{self, CheckpointTopic, ChunkWriter, Position, Saved};
use crate::config::{Config, TopicsConfig};
use crate::kafka::Assignment;
use crate::output::OutRecord;
use crate::telemetry::names;

use super::transform::{EngineOwner, TransformState};
use super::{source_of, topic_name, wall_now_ms, Batch, InputConsumer, PartitionKey};

/// Checkpoints take at most about 1/COST_SHARE of the time (see [`Checkpointing::is_due`]).
const COST_SHARE: u32 = 20;

/// A copy of some state, taken now and encoded later on the encoder's thread.
pub(super) type StateWriter = Box<dyn FnOnce(&mut dyn Write) -> std::io::Result<()> + Send>;

/// An engine's state as a [`StateWriter`]: copied now (see `Engine::snapshot_state`).
pub(super) fn engine_state(engine: &Engine) -> StateWriter {
    let snapshot = timed_copy(|| engine.snapshot_state());
    Box::new(move |out| snapshot.write_into(out))
}

/// Copies some state for a checkpoint, timing the pipeline's pause.
pub(super) fn timed_copy<T>(copy: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let copied = copy();
    histogram!(names::CHECKPOINT_SNAPSHOT_DURATION).record(started.elapsed().as_secs_f64());
    copied
}

/// A checkpoint on its way to the broker, or (without records) the one restored at start:
/// either way, once its records are acknowledged, offsets may be committed up to its
/// positions and no further.
pub(super) struct CheckpointWrite {
    pub(super) chunks: Vec<OutRecord>,
    pub(super) manifest: Option<OutRecord>,
    pub(super) positions: HashMap<PartitionKey, i64>,
    pub(super) generation: u64,
    pub(super) started: Instant,
    pub(super) bytes: u64,
    /// Where the sink reports the generation once acknowledged (its engine's
    /// [`Checkpointing::acknowledged`]).
    pub(super) acknowledged: Arc<AtomicU64>,
}

/// Checkpointing as the transform stage sees it.
pub(super) struct Checkpointing {
    pub(super) topic: CheckpointTopic,
    pub(super) interval: Duration,
    pub(super) next_generation: u64,
    pub(super) last: Instant,
    /// The generation of the last checkpoint the sink saw acknowledged: one checkpoint is
    /// in flight at a time, or a slow broker would let a large state pile up in the batch
    /// queue, once per checkpoint.
    pub(super) acknowledged: Arc<AtomicU64>,
    /// When the checkpoint in flight was taken, until it is seen acknowledged.
    pub(super) in_flight_since: Option<Instant>,
    /// How long the last one took from saving to acknowledgement.
    pub(super) last_cost: Duration,
    /// Read at start; applied (or refused) at the first assignment.
    pub(super) to_restore: Option<Saved>,
    /// The checkpoint being encoded (see [`Checkpointing::begin`]).
    pub(super) encoding: Option<Encoding>,
}

/// A checkpoint being encoded on a thread of its own (see [`Checkpointing::begin`]).
pub(super) struct Encoding {
    thread: std::thread::JoinHandle<()>,
    /// None when the state could not be encoded; closed if the thread panicked.
    result: tokio::sync::oneshot::Receiver<Option<CheckpointWrite>>,
}

impl Checkpointing {
    /// Reads the group's latest checkpoint, and keeps it for the first assignment unless
    /// the committed offsets went past it (then it misses inputs that a restart would not
    /// read again: stale).
    pub(super) async fn start(
        topic: CheckpointTopic,
        config: &Config,
        consumer: Arc<InputConsumer>,
        acknowledged: Arc<AtomicU64>,
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
        let next_generation =
            checkpoint::first_generation_after(saved.as_ref().map(|s| s.manifest.generation));
        acknowledged.store(next_generation - 1, Ordering::Release);
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
            acknowledged,
            in_flight_since: None,
            last_cost: Duration::ZERO,
            to_restore,
            encoding: None,
        }
    }

    /// At the first assignment: restores the checkpoint read at start if this instance
    /// was assigned every input partition it covers (another instance owns the others'
    /// state otherwise), and returns what the sink must know of it.
    pub(super) fn restore_at_assignment(
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
                generation: self.acknowledged_at_restore(),
                started: Instant::now(),
                bytes: saved.manifest.bytes,
                acknowledged: self.acknowledged.clone(),
            }),
            ..Batch::default()
        })
    }

    /// The generation a restored checkpoint reports as acknowledged once the sink has
    /// it: the one before the next (not the restored one: the next is two past it, see
    /// [`checkpoint::first_generation_after`]), so that the next checkpoint is not held
    /// back waiting for the generation skipped.
    pub(super) fn acknowledged_at_restore(&self) -> u64 {
        self.next_generation - 1
    }

    /// When the previous checkpoint is acknowledged and enough time has passed: the
    /// configured interval, or longer for a state so large that writing it takes more than
    /// 1/[`COST_SHARE`] of that (the broker then spends at most that share of its time
    /// on checkpoints; a crash reads more input again instead).
    pub(super) fn is_due(&mut self) -> bool {
        let acknowledged = self.acknowledged.load(Ordering::Acquire) + 1 >= self.next_generation;
        if !acknowledged {
            return false;
        }
        if let Some(since) = self.in_flight_since.take() {
            // Seen at the first tick after the acknowledgement: one tick of error at most.
            self.last_cost = since.elapsed();
        }
        self.last.elapsed() >= self.spacing()
    }

    /// [`Self::is_due`] for an engine's checkpoint, called at every tick with whether
    /// the engine closed a window since the last one: a due checkpoint is taken right
    /// after a close, if one comes within another half of its spacing. The state is
    /// smallest then (the next window has just begun), and the copy, the encoding and
    /// the write are over before the next close is due, instead of delaying its signals.
    pub(super) fn is_due_after_tick(&mut self, window_closed: bool) -> bool {
        self.is_due() && (window_closed || self.is_overdue())
    }

    /// Whether a due checkpoint has waited another half of its spacing.
    fn is_overdue(&self) -> bool {
        self.last.elapsed() >= self.spacing() * 3 / 2
    }

    fn spacing(&self) -> Duration {
        self.interval.max(self.last_cost * COST_SHARE)
    }

    /// Starts a checkpoint of the state as it stands (right after a flush), covering every
    /// record processed: the state is copied here and encoded on a thread of its own at
    /// the lowest CPU priority, so that the pipeline stops only for the copy and is not
    /// slowed by the encoding (see [`encode`]); [`Self::encoded`] hands it over. Not
    /// while feedback waits for the alert clock: those records are read but not yet in
    /// the state.
    pub(super) fn begin(
        &mut self,
        owner: &EngineOwner,
        topics: &TopicsConfig,
        state: &mut TransformState,
    ) {
        if !state.waiting_feedback.is_empty() {
            return;
        }
        state.changed_since_checkpoint = false;
        let covered = state.next_offsets.clone();
        self.begin_covering(
            engine_state(owner.processor.engine()),
            topics,
            covered,
            Vec::new(),
        );
    }

    /// Starts a checkpoint of `state` covering the consumed partitions up to `covered`,
    /// and (for a shard) the input partitions up to `inputs` (see [`Manifest::inputs`]).
    ///
    /// [`Manifest::inputs`]: crate::checkpoint::Manifest::inputs
    pub(super) fn begin_covering(
        &mut self,
        state: StateWriter,
        topics: &TopicsConfig,
        covered: HashMap<PartitionKey, i64>,
        inputs: Vec<Position>,
    ) {
        let started = Instant::now();
        self.last = started;
        self.in_flight_since = Some(started);
        let positions: Vec<Position> = covered
            .iter()
            .map(|(&(source, partition), &next_offset)| Position {
                topic: topic_name(topics, source).to_owned(),
                partition,
                next_offset,
            })
            .collect();
        let offsets = covered;
        let acknowledged = self.acknowledged.clone();
        let generation = self.next_generation;
        self.next_generation += 1;
        let topic = self.topic.clone();
        let (sender, result) = tokio::sync::oneshot::channel();
        let encoder = std::thread::Builder::new()
            .name("dynsig-checkpoint".into())
            .spawn(move || {
                let write = encode(state, &topic, generation).map(|encoded| {
                    let bytes = encoded.bytes();
                    let (chunks, manifest) =
                        topic.records(encoded, (positions, inputs), wall_now_ms());
                    CheckpointWrite {
                        chunks,
                        manifest: Some(manifest),
                        positions: offsets,
                        generation,
                        started,
                        bytes,
                        acknowledged,
                    }
                });
                // The receiver is gone only if the service stopped meanwhile.
                let _ = sender.send(write);
            });
        match encoder {
            Ok(thread) => self.encoding = Some(Encoding { thread, result }),
            Err(error) => {
                tracing::error!(%error, "cannot start the checkpoint encoder: no checkpoint");
                self.next_generation -= 1;
            }
        }
    }

    /// Whether a checkpoint is being encoded and is ready ([`Self::encoded`] then returns
    /// at once).
    pub(super) fn is_encoded(&self) -> bool {
        self.encoding
            .as_ref()
            .is_some_and(|e| e.thread.is_finished())
    }

    /// The checkpoint being encoded, once it is (pending forever when none is).
    /// Cancel-safe: a select that drops it leaves the encoding running.
    pub(super) async fn encoded(&mut self) -> Option<CheckpointWrite> {
        let Some(encoding) = self.encoding.as_mut() else {
            return std::future::pending().await;
        };
        let write = (&mut encoding.result).await.unwrap_or_else(|_| {
            tracing::error!("checkpoint encoder panicked: no checkpoint");
            None
        });
        self.encoding = None;
        if write.is_none() {
            // Nothing was written: the next checkpoint takes this one's generation (and
            // so its slot, keeping the last good checkpoint in the other).
            self.next_generation -= 1;
        }
        write
    }

    /// At shutdown: the checkpoint being encoded, then one of the state as it stands.
    pub(super) async fn last(
        &mut self,
        owner: &EngineOwner,
        topics: &TopicsConfig,
        state: &mut TransformState,
    ) -> Vec<CheckpointWrite> {
        let mut writes = self.finish_encoding().await;
        self.begin(owner, topics, state);
        writes.extend(self.finish_encoding().await);
        writes
    }

    /// [`Self::last`] for a checkpoint made by [`Self::begin_covering`].
    pub(super) async fn last_covering(
        &mut self,
        state: StateWriter,
        topics: &TopicsConfig,
        covered: HashMap<PartitionKey, i64>,
        inputs: Vec<Position>,
    ) -> Vec<CheckpointWrite> {
        let mut writes = self.finish_encoding().await;
        self.begin_covering(state, topics, covered, inputs);
        writes.extend(self.finish_encoding().await);
        writes
    }

    /// The checkpoint being encoded, if any, once it is.
    async fn finish_encoding(&mut self) -> Vec<CheckpointWrite> {
        if self.encoding.is_none() {
            return Vec::new();
        }
        self.encoded().await.into_iter().collect()
    }
}

/// Encodes a state for checkpoint `generation`, cut in chunks.
///
/// Run at the lowest CPU priority: encoding a large state takes a few hundred
/// milliseconds of CPU, and on a busy machine that CPU was taken from the pipeline, the
/// producer and the broker. Measured at 50% load on 2 cores: every late alert-path window
/// (200–900 ms instead of ~100) fell in the second before a checkpoint's
/// acknowledgement, while the service's CPU went from ~60% to ~105% (`benches/RESULTS.md`).
/// The encoding then uses the CPU the rest leaves; when nothing is left it takes longer,
/// and [`Checkpointing::is_due`] spaces checkpoints out by that cost.
fn encode(state: StateWriter, topic: &CheckpointTopic, generation: u64) -> Option<ChunkWriter> {
    lowest_cpu_priority();
    let mut encoded = topic.writer(generation);
    // CBOR is written a few bytes at a time: a buffer turns that into large copies
    // (profiled: the writes themselves were ~10% of the service's CPU).
    let written = {
        let mut buffered = std::io::BufWriter::with_capacity(1 << 16, &mut encoded);
        state(&mut buffered).and_then(|()| buffered.flush())
    };
    if let Err(error) = written {
        tracing::error!(%error, "cannot encode the state: no checkpoint");
        return None;
    }
    Some(encoded)
}

/// Gives the calling thread the lowest CPU priority (nice 19), which on Linux is a
/// property of the thread, not of the process. Elsewhere (and if refused) it keeps its own.
fn lowest_cpu_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority only changes the scheduling of the task it names; `0` names
        // the calling thread.
        let refused = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) } != 0;
        if refused {
            tracing::debug!("checkpoint encoder keeps its CPU priority");
        }
    }
}

/// The first position whose partition's committed offset is past it, if any.
pub(super) fn committed_past(consumer: &InputConsumer, positions: &[Position]) -> Option<Position> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Checkpoints every `interval_ms`, the last one taken `since_ms` ago and
    /// acknowledged, at a cost of `cost_ms`.
    fn checkpointing(interval_ms: u64, since_ms: u64, cost_ms: u64) -> Checkpointing {
        Checkpointing {
            topic: CheckpointTopic {
                topic: "dynsig.checkpoints".into(),
                group: "test".into(),
                chunk_bytes: 1 << 20,
            },
            interval: Duration::from_millis(interval_ms),
            next_generation: 2,
            last: Instant::now() - Duration::from_millis(since_ms),
            acknowledged: Arc::new(AtomicU64::new(1)),
            in_flight_since: None,
            last_cost: Duration::from_millis(cost_ms),
            to_restore: None,
            encoding: None,
        }
    }

    #[test]
    fn due_after_the_interval_and_overdue_half_an_interval_later() {
        assert!(!checkpointing(10_000, 9_000, 0).is_due());
        let mut due = checkpointing(10_000, 11_000, 0);
        assert!(due.is_due());
        assert!(!due.is_overdue());
        let mut overdue = checkpointing(10_000, 15_500, 0);
        assert!(overdue.is_due());
        assert!(overdue.is_overdue());
    }

    #[test]
    fn a_due_checkpoint_waits_for_a_close_until_overdue() {
        assert!(!checkpointing(10_000, 9_000, 0).is_due_after_tick(true));
        assert!(!checkpointing(10_000, 11_000, 0).is_due_after_tick(false));
        assert!(checkpointing(10_000, 11_000, 0).is_due_after_tick(true));
        assert!(checkpointing(10_000, 15_500, 0).is_due_after_tick(false));
    }

    #[test]
    fn a_costly_checkpoint_spaces_out_the_next_ones() {
        // Writing took 1 s: at most 1/COST_SHARE of the time, so 20 s apart.
        assert!(!checkpointing(10_000, 11_000, 1_000).is_due());
        assert!(checkpointing(10_000, 21_000, 1_000).is_due());
        assert!(!checkpointing(10_000, 21_000, 1_000).is_overdue());
    }

    #[test]
    fn not_due_until_the_last_one_is_acknowledged() {
        let mut waiting = checkpointing(10_000, 60_000, 0);
        waiting.next_generation = 3;
        assert!(!waiting.is_due());
        waiting.acknowledged.store(2, Ordering::Release);
        assert!(waiting.is_due());
    }
}
