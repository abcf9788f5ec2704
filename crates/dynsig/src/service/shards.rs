//! The transform stage of a sharded instance (`scale.shards` > 1). Kafka assigns every
//! instance of the group some partitions of each topic it reads, and each kind of
//! partition is a role (see "Scaling" in `docs/operator-guide.md`):
//!
//! - an input partition: every input read is sent to every shard through
//!   `topics.repartition`, with that shard's terms, and a verdict to the shard of its
//!   alert ([`fragment`]). Nothing is kept here: the offset is safe once those records
//!   are acknowledged.
//! - a partition of `topics.repartition` is a shard: this instance runs its engine, which
//!   counts the shard's terms and series (`dynsig_core::shard`) and publishes its
//!   anomalies and alert messages; its windows (trend snapshot and alert messages) and
//!   its progress in event time go to `topics.partials`. The engine is restored from the
//!   shard's own checkpoint when the partition is assigned, and its offset is safe as in
//!   the unsharded stage: no further than its open windows hold, nor than its last
//!   checkpoint.
//! - the partition of `topics.partials`: this instance merges the shards' windows into the
//!   trend snapshots published on `topics.trends`, and passes their alert messages through
//!   one metafilter to the team topics ([`ShardMerge`]), holding the offsets of windows
//!   still waiting for other shards. Silences reach that metafilter the same way, from
//!   whichever instance's API took them.
//!
//! A shard lost in a rebalance is dropped here; its new owner restores its checkpoint and
//! reads again what followed (at-least-once, as after a restart).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use dynsig_core::decode::{InputKind, RejectReason, Rejection};
use dynsig_core::feedback::Feedback;
use dynsig_core::metafilter::silence::Silence;
use dynsig_core::model::{EpochMs, Origin, Signal};
use dynsig_core::shard::Shard;
use dynsig_core::shard_merge::{Merged, ShardMerge, ShardWindow};
use metrics::{counter, gauge};
use rdkafka::consumer::Consumer;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::checkpoint::{CheckpointTopic, Position, Saved};
use crate::config::{Config, TopicsConfig};
use crate::control::{self, Command, FeedbackError, ReadModelWriter};
use crate::kafka;
use crate::output::{self, Content, OutRecord, SourcePosition};
use crate::processor::Processor;
use crate::telemetry::names;

use super::checkpointing::{engine_state, timed_copy, CheckpointWrite, Checkpointing, StateWriter};
use super::fragment::{self, FragmentKind};
use super::transform::{InputState, TransformState, BATCH_BYTES, BATCH_INPUTS, TICK};
use super::{
    partition_index, send_checkpoint, source_of, topic_name, wall_now_ms, Batch, Consumed,
    PartitionKey, Recycler, Source,
};

/// What a sharded transform stage owns besides its shards.
pub(super) struct ShardedOwner {
    pub(super) config: Arc<Config>,
    /// Never fed: it holds the catalog for the shards taken over later, and the silences
    /// added through this instance's API (it validates them and answers for them).
    pub(super) template: Processor,
    pub(super) commands: mpsc::Receiver<Command>,
    pub(super) model: ReadModelWriter,
    pub(super) checkpoint_topic: Option<CheckpointTopic>,
}

/// A record of `topics.partials`: what the shards and the APIs send the merge.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ToMerge {
    /// A shard's window: its trend snapshot, with its alert messages.
    Window { shard: u32, window: ShardWindow },
    /// A shard's event time (its watermark), after the windows that ended by then.
    Progress { shard: u32, watermark: EpochMs },
    /// A silence added through an instance's API.
    Silence { silence: Silence },
    /// A silence deleted through an instance's API.
    Unsilence { id: String },
}

/// A shard reports its event time at most this often (in event time): the merge's
/// metafilter moves its clock that often, as one engine's does.
const PROGRESS_EVERY_MS: i64 = 1_000;

/// One shard this instance runs.
struct ShardEngine {
    processor: Processor,
    /// Per input partition, the next input offset counted: an input sent again (see
    /// [`fragment`]) is recognised and skipped.
    inputs_next: HashMap<(InputKind, i32), i64>,
    checkpointing: Option<Checkpointing>,
    changed_since_checkpoint: bool,
    /// It emitted signals (a window closed) since the last tick: a due checkpoint is
    /// taken then (see `Checkpointing::is_due_after_tick`).
    closed_since_tick: bool,
    /// Per input partition (engine index), when its reader last said it had read it to
    /// its end (the reader's wall time, see [`fragment`]).
    caught_up_at: HashMap<u32, i64>,
    /// The event time last reported to the merge.
    progress_sent: Option<EpochMs>,
}

/// Per input partition this instance reads, the read position last seen and since when
/// (wall time) it has not moved, counted from the assignment (cleared then).
#[derive(Default)]
struct InputQuiet(HashMap<PartitionKey, (i64, i64)>);

impl InputQuiet {
    /// Whether partition `key`, read up to `read` with its end at `high`, is read to
    /// its end and has been quiet for `idle_timeout` ms at `now`. Called every few
    /// hundred ms: a move seen at a call counts from that call, later than it happened,
    /// which only delays idleness.
    fn read_out(
        &mut self,
        key: PartitionKey,
        (read, high): (i64, i64),
        now: i64,
        idle_timeout: i64,
    ) -> bool {
        let (seen, quiet_since) = self.0.entry(key).or_insert((read, now));
        if *seen != read {
            (*seen, *quiet_since) = (read, now);
        }
        read >= high && now - *quiet_since >= idle_timeout
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// How often the reader of an input partition says it has read it to its end.
const CAUGHT_UP_EVERY_MS: i64 = 200;
/// How long such news holds: a partition not heard from since is taken for one with a
/// backlog (its reader may be gone, or this shard behind on its partition), which is
/// never idle. The reader's clock is compared with the shard's: instances' clocks must
/// agree to well within this (as NTP keeps them), or quiet partitions are never idle.
const CAUGHT_UP_FRESH_MS: i64 = 1_000;

/// The stage's state.
struct Sharded {
    owner: ShardedOwner,
    topics: Arc<TopicsConfig>,
    count: u32,
    shards: BTreeMap<u32, ShardEngine>,
    merge: ShardMerge,
    /// This instance reads `topics.partials`: it runs the merge.
    merging: bool,
    /// The merge's checkpoints (with the shards' topic, keyed `<group>#merge`).
    merge_checkpointing: Option<Checkpointing>,
    merge_changed: bool,
    /// The offset of the first record of `topics.partials` whose window still waits in
    /// the merge.
    partials_held: Option<i64>,
    /// The engine's indexes of every input partition: each shard hears from all of them.
    input_partitions: Vec<u32>,
    /// When the input partitions read to their end were last announced (wall time).
    caught_up_sent_at: i64,
    /// Which assigned input partitions are read out (see `announce_caught_up`).
    input_quiet: InputQuiet,
    /// Where reading each assigned input partition started (its committed offset, else
    /// its first): the read position of a partition nothing was read from yet.
    input_starts: HashMap<PartitionKey, i64>,
    state: TransformState,
}

/// Runs the stage until its input closes, then publishes what is pending and checkpoints
/// every shard it runs.
pub(super) async fn transform(
    owner: ShardedOwner,
    topics: Arc<TopicsConfig>,
    input: InputState,
    (mut rx, recycler): (mpsc::Receiver<Vec<Consumed>>, Recycler),
    tx: mpsc::Sender<Batch>,
) {
    let count = owner.config.scale.shards;
    let merge =
        ShardMerge::new(count, &owner.config.engine()).expect("the config was validated at start");
    let mut stage = Sharded {
        owner,
        topics,
        count,
        shards: BTreeMap::new(),
        merge,
        merging: false,
        merge_checkpointing: None,
        merge_changed: false,
        partials_held: None,
        input_partitions: Vec::new(),
        caught_up_sent_at: 0,
        input_quiet: InputQuiet::default(),
        input_starts: HashMap::new(),
        state: TransformState {
            recycler: Some(recycler),
            ..TransformState::default()
        },
    };
    let mut ticker = tokio::time::interval(TICK);
    let mut seen = (0, 0);
    loop {
        if !stage.follow(&input, &mut seen, &tx).await {
            return;
        }
        tokio::select! {
            records = rx.recv() => match records {
                Some(records) => for record in records {
                    // As in the unsharded stage: a new assignment's records come after it.
                    if !stage.follow(&input, &mut seen, &tx).await {
                        return;
                    }
                    stage.handle(record);
                    let full = stage.state.inputs_in_batch >= BATCH_INPUTS
                        || stage.state.bytes_in_batch >= BATCH_BYTES;
                    if full && tx.send(stage.flush(&input, None)).await.is_err() {
                        return;
                    }
                },
                None => break,
            },
            Some(command) = stage.owner.commands.recv() => stage.apply(command),
            _ = ticker.tick() => {
                gauge!(names::QUEUE_DEPTH, "stage" => "input").set(rx.len() as f64);
                gauge!(names::QUEUE_DEPTH, "stage" => "output")
                    .set((tx.max_capacity() - tx.capacity()) as f64);
                let batch = stage.flush(&input, Some(wall_now_ms()));
                let has_news = !batch.records.is_empty() || !batch.offsets.is_empty();
                if has_news && tx.send(batch).await.is_err() {
                    return;
                }
                for write in stage.checkpoints().await {
                    if !send_checkpoint(&tx, write).await {
                        return;
                    }
                }
            }
        }
    }
    // Shutdown: the last outputs, and a checkpoint of every shard after them.
    let batch = stage.flush(&input, None);
    if tx.send(batch).await.is_err() {
        return;
    }
    for write in stage.last_checkpoints().await {
        if !send_checkpoint(&tx, write).await {
            return;
        }
    }
}

impl Sharded {
    /// Applies what changed in the assignment since `seen` (its generation, and the count
    /// of input re-creations): shards taken over start (restored from their checkpoints),
    /// shards lost are dropped. False when the sink is gone.
    async fn follow(
        &mut self,
        input: &InputState,
        seen: &mut (u64, u64),
        tx: &mpsc::Sender<Batch>,
    ) -> bool {
        let assignment = &input.assignment;
        if assignment.inputs_recreated() != seen.1 {
            seen.1 = assignment.inputs_recreated();
            self.state.forget_input_offsets();
            for shard in self.shards.values_mut() {
                shard.inputs_next.clear();
            }
        }
        if assignment.generation() == seen.0 {
            return true;
        }
        seen.0 = assignment.generation();
        let owned: Vec<u32> = assignment
            .partitions()
            .into_iter()
            .filter(|(topic, _)| *topic == self.topics.repartition)
            .map(|(_, partition)| partition as u32)
            .collect();
        let lost: Vec<u32> = self
            .shards
            .keys()
            .copied()
            .filter(|s| !owned.contains(s))
            .collect();
        for shard in lost {
            tracing::info!(shard, "shard assigned elsewhere: dropped");
            self.shards.remove(&shard);
            let key = (Source::Repartition, shard as i32);
            self.state.next_offsets.remove(&key);
            self.state.safe_offsets_sent.remove(&key);
        }
        self.input_partitions = input_partitions(input, &self.topics).await;
        self.input_starts = input_starts(input, &self.topics).await;
        self.input_quiet.clear();
        // What the sink must know of the checkpoints restored.
        let mut restored = Vec::new();
        for shard in owned {
            if !self.shards.contains_key(&shard) {
                restored.extend(self.start_shard(shard, input).await);
            }
        }
        for shard in self.shards.values_mut() {
            shard.processor.assign_partitions(&self.input_partitions);
        }
        gauge!(names::SHARDS_OWNED).set(self.shards.len() as f64);
        let merging = assignment
            .partitions()
            .iter()
            .any(|(topic, _)| *topic == self.topics.partials);
        gauge!(names::MERGE_OWNED).set(if merging { 1.0 } else { 0.0 });
        if merging != self.merging {
            self.merging = merging;
            restored.extend(self.start_merge(merging, input).await);
        }
        for write in restored {
            if !send_checkpoint(tx, write).await {
                return false;
            }
        }
        true
    }

    /// Starts the merge afresh when this instance got `topics.partials` (restored from its
    /// checkpoint, if any) or lost it; returns what the sink must know of the checkpoint.
    async fn start_merge(&mut self, merging: bool, input: &InputState) -> Option<CheckpointWrite> {
        let config = self.owner.config.clone();
        self.merge = ShardMerge::new(self.count, &config.engine())
            .expect("the config was validated at start");
        self.merge_checkpointing = None;
        self.partials_held = None;
        let key = (Source::Partials, 0);
        self.state.next_offsets.remove(&key);
        self.state.safe_offsets_sent.remove(&key);
        tracing::info!(merging, "the shards' merge moved");
        let topic = self.owner.checkpoint_topic.clone().filter(|_| merging)?;
        let topic = CheckpointTopic {
            group: format!("{}#merge", topic.group),
            ..topic
        };
        let acknowledged = Arc::new(AtomicU64::new(0));
        let mut checkpointing =
            Checkpointing::start(topic, &config, input.consumer.clone(), acknowledged).await;
        let restored = checkpointing.to_restore.take().and_then(|saved| {
            let merge = &mut self.merge;
            let at = (&*self.topics, &mut self.state);
            restore_checkpoint(at, key, &checkpointing, saved, |bytes| {
                merge.restore(bytes).map_err(|error| error.to_string())
            })
        });
        self.merge_checkpointing = Some(checkpointing);
        restored.map(|(write, _)| write)
    }

    /// Starts the engine of `shard`, restored from the shard's checkpoint if there is a
    /// valid one; returns what the sink must know of that checkpoint.
    async fn start_shard(&mut self, index: u32, input: &InputState) -> Option<CheckpointWrite> {
        let config = &self.owner.config;
        let mut processor = Processor::new(config).expect("the config was validated at start");
        processor
            .engine_mut()
            .set_shard(Shard::new(index, self.count).expect("a partition of the shard topic"));
        if let Some(catalog) = self.owner.template.engine().catalog() {
            processor.engine_mut().set_catalog(catalog.clone());
        }
        let mut shard = ShardEngine {
            processor,
            inputs_next: HashMap::new(),
            checkpointing: None,
            changed_since_checkpoint: false,
            closed_since_tick: false,
            caught_up_at: HashMap::new(),
            progress_sent: None,
        };
        let mut restored = None;
        if let Some(topic) = &self.owner.checkpoint_topic {
            let topic = CheckpointTopic {
                group: format!("{}#shard-{index}", topic.group),
                ..topic.clone()
            };
            let acknowledged = Arc::new(AtomicU64::new(0));
            let mut checkpointing =
                Checkpointing::start(topic, config, input.consumer.clone(), acknowledged).await;
            if let Some(saved) = checkpointing.to_restore.take() {
                let key = (Source::Repartition, index as i32);
                let engine = shard.processor.engine_mut();
                let at = (&*self.topics, &mut self.state);
                let outcome = restore_checkpoint(at, key, &checkpointing, saved, |bytes| {
                    engine
                        .restore_state(bytes)
                        .map_err(|error| error.to_string())
                });
                if let Some((write, inputs)) = outcome {
                    for input in inputs {
                        if let Some(Source::Input(kind)) = source_of(&self.topics, &input.topic) {
                            shard
                                .inputs_next
                                .insert((kind, input.partition), input.next_offset);
                        }
                    }
                    restored = Some(write);
                }
            }
            shard.checkpointing = Some(checkpointing);
        }
        tracing::info!(
            shard = index,
            restored = restored.is_some(),
            "shard started"
        );
        self.shards.insert(index, shard);
        restored
    }

    fn handle(&mut self, mut record: Consumed) {
        let key = (record.source, record.partition);
        let redelivered = self
            .state
            .next_offsets
            .get(&key)
            .is_some_and(|&next| record.offset < next);
        if redelivered {
            counter!(names::REDELIVERED_SKIPPED).increment(1);
            self.state.recycle(record);
            return;
        }
        // A shard that is not (or no longer) this instance's: its owner reads it.
        if record.source == Source::Repartition
            && !self.shards.contains_key(&(record.partition as u32))
        {
            self.state.recycle(record);
            return;
        }
        self.state.next_offsets.insert(key, record.offset + 1);
        self.state.inputs_in_batch += 1;
        match record.source {
            Source::Input(kind) => self.forward_input(kind, &record),
            Source::Feedback => self.forward_verdict(&record),
            Source::Repartition => self.count(&mut record),
            Source::Partials => {
                self.merge_changed = true;
                self.merge_partial(&record);
            }
        }
        self.state.recycle(record);
    }

    /// An input, to every shard with its terms; a rejected one is dead-lettered here.
    fn forward_input(&mut self, kind: InputKind, record: &Consumed) {
        let body = &record.body;
        match &body.decoded {
            Some(Ok(())) => {
                let origin = fragment::Origin {
                    kind: FragmentKind::Input(kind),
                    partition: record.partition,
                    offset: record.offset,
                };
                let fragments = fragment::input_fragments(
                    &self.topics,
                    self.count,
                    (origin, body.content_type.as_deref()),
                    (record.key.as_deref(), &body.payload),
                    &body.terms,
                );
                self.push_records(fragments);
            }
            Some(Err(rejection)) => {
                let rejection = rejection.clone();
                self.dead_letter(record, None, &rejection);
            }
            None => unreachable!("the source stage decodes every input"),
        }
    }

    /// A verdict, to the shard whose engine has its alert.
    fn forward_verdict(&mut self, record: &Consumed) {
        let payload = &record.body.payload;
        let shard = control::parse_json::<Feedback>(payload).and_then(|verdict| {
            Shard::of_alert_id(&verdict.alert_id, self.count).ok_or_else(|| Rejection {
                reason: RejectReason::InvalidField,
                detail: format!(
                    "alert_id: {:?} names no trend or anomaly alert",
                    verdict.alert_id
                ),
            })
        });
        match shard {
            Ok(shard) => {
                let origin = fragment::Origin {
                    kind: FragmentKind::Feedback,
                    partition: record.partition,
                    offset: record.offset,
                };
                let forwarded = fragment::feedback_fragment(
                    &self.topics,
                    shard,
                    origin,
                    (record.key.as_deref(), payload),
                );
                self.push_records([forwarded]);
            }
            Err(rejection) => self.dead_letter(record, None, &rejection),
        }
    }

    /// A repartition record, into its shard's engine. Shards refuse late or future inputs
    /// alike (they see the same event time): the first shard dead-letters them, once.
    fn count(&mut self, record: &mut Consumed) {
        let index = record.partition as u32;
        let Some(shard) = self.shards.get_mut(&index) else {
            return;
        };
        let body = &mut *record.body;
        let origin = match (&body.decoded, body.origin) {
            (Some(Err(rejection)), _) => {
                let rejection = rejection.clone();
                return self.dead_letter(record, None, &rejection);
            }
            (_, Some(origin)) => origin,
            (_, None) => unreachable!("a readable repartition record has its origin"),
        };
        if let FragmentKind::CaughtUp(kind) = origin.kind {
            if let Some(sent_at) = fragment::caught_up_sent_at(&body.payload) {
                let partition = partition_index((kind, origin.partition));
                let at = shard.caught_up_at.entry(partition).or_insert(sent_at);
                *at = (*at).max(sent_at);
                // Idle, it holds the event time where this word finds it: what reached
                // the partition since may come later (from a new reader, if this one died).
                shard.processor.engine_mut().confirm_read_out(partition);
            }
            return;
        }
        shard.changed_since_checkpoint = true;
        let outcome = match origin.kind {
            FragmentKind::Input(kind) => {
                let next = shard
                    .inputs_next
                    .entry((kind, origin.partition))
                    .or_default();
                if origin.offset < *next {
                    counter!(names::REDELIVERED_SKIPPED).increment(1);
                    return;
                }
                *next = origin.offset + 1;
                let engine_origin = Origin {
                    partition: partition_index((kind, origin.partition)),
                    offset: record.offset,
                };
                // Every shard's refusals are counted: the shards agree on event time only
                // as far as their idle time and read-out floors (wall-clock driven, each
                // shard's own) agree, so one may refuse its part of an input the others
                // count. An input is dead-lettered (and counted as rejected) once, by the
                // first shard.
                if index == 0 {
                    let verdict = shard.processor.ingest_with_terms(
                        &body.record,
                        Some(engine_origin),
                        &mut body.terms,
                    );
                    verdict.inspect_err(|rejection| count_shard_refusal(rejection.reason))
                } else {
                    let verdict = shard.processor.engine_mut().ingest_with_terms(
                        &body.record,
                        Some(engine_origin),
                        &mut body.terms,
                    );
                    if let Err(refused) = verdict {
                        count_shard_refusal(refused.reason());
                    }
                    Ok(())
                }
            }
            // A verdict goes to one shard only; one sent again is not counted twice.
            FragmentKind::Feedback => shard.processor.process_feedback(&body.payload),
            FragmentKind::CaughtUp(_) => unreachable!("handled above"),
        };
        if let Err(rejection) = outcome {
            let source = match origin.kind {
                FragmentKind::Input(kind) | FragmentKind::CaughtUp(kind) => Source::Input(kind),
                FragmentKind::Feedback => Source::Feedback,
            };
            let topics = self.topics.clone();
            let from = SourcePosition {
                topic: topic_name(&topics, source),
                partition: origin.partition,
                offset: origin.offset,
            };
            self.dead_letter(record, Some(from), &rejection);
        }
    }

    /// A record for the merge; what it completes or releases is published.
    fn merge_partial(&mut self, record: &Consumed) {
        let partial = serde_json::from_slice::<ToMerge>(&record.body.payload)
            .map_err(|error| error.to_string())
            .and_then(|partial| match partial {
                ToMerge::Window { shard, .. } | ToMerge::Progress { shard, .. }
                    if shard >= self.count =>
                {
                    Err(format!(
                        "shard {shard} of {} (scale.shards differs between instances?)",
                        self.count
                    ))
                }
                partial => Ok(partial),
            });
        let signals = match partial {
            Ok(ToMerge::Window { shard, window }) => match self.merge.push_window(shard, window) {
                Merged::Complete(signals) => signals,
                Merged::Waiting | Merged::Repeated => Vec::new(),
            },
            Ok(ToMerge::Progress { shard, watermark }) => {
                self.merge.push_progress(shard, watermark)
            }
            Ok(ToMerge::Silence { silence }) => {
                let stage = self.merge.alerting_mut();
                let now = stage.now();
                if let Err(error) = stage.silences_mut().add(silence, now) {
                    tracing::warn!(%error, "silence not applied to the merge");
                }
                Vec::new()
            }
            Ok(ToMerge::Unsilence { id }) => {
                self.merge.alerting_mut().silences_mut().delete(&id);
                Vec::new()
            }
            Err(detail) => {
                let rejection = Rejection {
                    reason: RejectReason::InvalidJson,
                    detail: format!("record of the shards' merge: {detail}"),
                };
                self.dead_letter(record, None, &rejection);
                Vec::new()
            }
        };
        if !signals.is_empty() {
            self.refresh_model(&signals);
            let records: Vec<_> = signals
                .iter()
                .map(|signal| output::signal_record(&self.topics, signal))
                .collect();
            self.push_records(records);
        }
        if self.merge.waiting() == 0 {
            self.partials_held = None;
        } else {
            self.partials_held.get_or_insert(record.offset);
        }
    }

    /// Applies an API or catalog command: a catalog to every shard this instance runs and
    /// to the template; a silence to the template, and through `topics.partials` to the
    /// merge; a verdict to its alert's shard, if it runs here.
    fn apply(&mut self, command: Command) {
        match command {
            Command::SetCatalog(catalog) => {
                for shard in self.shards.values_mut() {
                    shard.processor.engine_mut().set_catalog(catalog.clone());
                    shard.changed_since_checkpoint = true;
                }
                self.owner.template.engine_mut().set_catalog(catalog);
            }
            // The template validates a silence; the merge applies it (shards' own
            // metafilters are off), wherever it runs. Ids are picked here, unique across
            // instances: each instance's template would count `silence-1`, `-2`... alike.
            Command::AddSilence {
                mut silence,
                starts_now,
                reply,
            } => {
                if silence.id.is_empty() {
                    let nanos = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos());
                    silence.id = format!("silence-{nanos:x}-{:x}", std::process::id());
                }
                let (added_tx, mut added_rx) = oneshot::channel();
                let template = self.owner.template.engine_mut();
                control::apply(
                    template,
                    Command::AddSilence {
                        silence,
                        starts_now,
                        reply: added_tx,
                    },
                );
                let added = added_rx.try_recv().expect("applied at once");
                let stored = added
                    .as_ref()
                    .ok()
                    .and_then(|id| template.alerting().silences().get(id).cloned());
                if let Some(silence) = stored {
                    let record = to_merge_record(&self.topics, &ToMerge::Silence { silence });
                    self.push_records([record]);
                }
                let _ = reply.send(added);
            }
            Command::DeleteSilence { id, reply } => {
                let record = to_merge_record(&self.topics, &ToMerge::Unsilence { id: id.clone() });
                self.push_records([record]);
                control::apply(
                    self.owner.template.engine_mut(),
                    Command::DeleteSilence { id, reply },
                );
            }
            Command::Feedback { feedback, reply } => {
                let here = Shard::of_alert_id(&feedback.alert_id, self.count)
                    .and_then(|index| self.shards.get_mut(&index));
                match here {
                    Some(shard) => {
                        control::apply(
                            shard.processor.engine_mut(),
                            Command::Feedback { feedback, reply },
                        );
                        shard.changed_since_checkpoint = true;
                    }
                    None => {
                        let _ = reply.send(Err(FeedbackError::OnAnotherInstance));
                    }
                }
            }
        }
        self.refresh_model(&[]);
    }

    /// Ticks and polls every shard (advancing idle time when `wall_now` is given and the
    /// input is readable), and returns the batch with the offsets made safe.
    fn flush(&mut self, input: &InputState, wall_now: Option<i64>) -> Batch {
        let readable = input.health.is_ready();
        let mut records = Vec::new();
        for (&index, shard) in &mut self.shards {
            let engine = shard.processor.engine_mut();
            if let Some(now) = wall_now {
                if readable {
                    // An input partition may be idle only while its reader's latest news,
                    // read after every input it had sent, says it has read it all: were
                    // this shard behind on its partition, that news would be stale.
                    for &partition in &self.input_partitions {
                        let read_out = shard
                            .caught_up_at
                            .get(&partition)
                            .is_some_and(|&at| now - at <= CAUGHT_UP_FRESH_MS);
                        if !read_out {
                            engine.note_backlog(partition);
                        }
                    }
                    engine.tick(now);
                } else {
                    engine.suspend_idle(now);
                }
            }
            let signals = shard.processor.poll(None);
            if !signals.is_empty() {
                shard.changed_since_checkpoint = true;
                shard.closed_since_tick = true;
            }
            let (windows, published) = ShardMerge::split_by_window(signals);
            records.extend(
                published
                    .iter()
                    .map(|signal| output::signal_record(&self.topics, signal)),
            );
            records.extend(windows.into_iter().map(|window| {
                let partial = ToMerge::Window {
                    shard: index,
                    window,
                };
                to_merge_record(&self.topics, &partial)
            }));
            // After its windows, so that the merge has them when its clock passes them.
            let watermark = shard.processor.engine().watermark();
            let due = watermark.filter(|&w| {
                shard
                    .progress_sent
                    .is_none_or(|sent| w >= sent + PROGRESS_EVERY_MS)
            });
            if let Some(watermark) = due {
                shard.progress_sent = Some(watermark);
                let progress = ToMerge::Progress {
                    shard: index,
                    watermark,
                };
                records.push(to_merge_record(&self.topics, &progress));
            }
        }
        self.push_records(records);
        if let Some(now) = wall_now.filter(|_| readable) {
            if now - self.caught_up_sent_at >= CAUGHT_UP_EVERY_MS {
                self.caught_up_sent_at = now;
                self.announce_caught_up(input, now);
            }
        }
        self.refresh_model(&[]);
        gauge!(names::OPEN_WINDOWS).set(
            self.shards
                .values()
                .map(|s| s.processor.engine().open_windows())
                .sum::<usize>() as f64,
        );
        for (&key, &next) in &self.state.next_offsets {
            let held = match key.0 {
                Source::Repartition => self
                    .shards
                    .get(&(key.1 as u32))
                    .and_then(|s| s.processor.engine().earliest_held_offset()),
                Source::Partials => self.partials_held,
                Source::Input(_) | Source::Feedback => None,
            };
            let safe = held.map_or(next, |held| held.min(next));
            if self.state.safe_offsets_sent.get(&key) != Some(&safe) {
                self.state.safe_offsets_sent.insert(key, safe);
                self.state.batch.offsets.push((key.0, key.1, safe));
            }
        }
        self.state.inputs_in_batch = 0;
        self.state.bytes_in_batch = 0;
        std::mem::take(&mut self.state.batch)
    }

    /// Starts the checkpoints that are due (a shard whose state changed, once its last
    /// one is acknowledged and its interval passed, right after it closed a window or
    /// once overdue), and returns those encoded since. Called at every tick.
    async fn checkpoints(&mut self) -> Vec<CheckpointWrite> {
        let mut writes = Vec::new();
        for (&index, shard) in &mut self.shards {
            let Some(checkpointing) = shard.checkpointing.as_mut() else {
                continue;
            };
            if checkpointing.is_encoded() {
                writes.extend(checkpointing.encoded().await);
            }
            let closed = std::mem::take(&mut shard.closed_since_tick);
            if shard.changed_since_checkpoint
                && checkpointing.encoding.is_none()
                && checkpointing.is_due_after_tick(closed)
            {
                shard.changed_since_checkpoint = false;
                let (covered, inputs) =
                    coverage(&self.topics, &self.state, index, &shard.inputs_next);
                let state = engine_state(shard.processor.engine());
                checkpointing.begin_covering(state, &self.topics, covered, inputs);
            }
        }
        if let Some(checkpointing) = self.merge_checkpointing.as_mut() {
            if checkpointing.is_encoded() {
                writes.extend(checkpointing.encoded().await);
            }
            if self.merge_changed && checkpointing.encoding.is_none() && checkpointing.is_due() {
                self.merge_changed = false;
                let covered = merge_coverage(&self.state);
                checkpointing.begin_covering(
                    merge_state(&self.merge),
                    &self.topics,
                    covered,
                    Vec::new(),
                );
            }
        }
        writes
    }

    /// At shutdown: every shard's checkpoint being encoded, then one of its state as it
    /// stands.
    async fn last_checkpoints(&mut self) -> Vec<CheckpointWrite> {
        let mut writes = Vec::new();
        for (&index, shard) in &mut self.shards {
            let Some(checkpointing) = shard.checkpointing.as_mut() else {
                continue;
            };
            let (covered, inputs) = coverage(&self.topics, &self.state, index, &shard.inputs_next);
            let state = engine_state(shard.processor.engine());
            writes.extend(
                checkpointing
                    .last_covering(state, &self.topics, covered, inputs)
                    .await,
            );
        }
        if let Some(checkpointing) = self.merge_checkpointing.as_mut() {
            let covered = merge_coverage(&self.state);
            let state = merge_state(&self.merge);
            writes.extend(
                checkpointing
                    .last_covering(state, &self.topics, covered, Vec::new())
                    .await,
            );
        }
        writes
    }

    /// Tells every shard which of this instance's input partitions it has read to their
    /// end (processed up to the end the consumer last saw, or, before reading anything
    /// from one, with the fetch position at that end) and found quiet for the idle
    /// timeout. Quiet here too, because a shard cannot tell a quiet partition from a
    /// dead reader: were a partition read every 200 ms announced between its records,
    /// and its reader killed with the next ones read but not yet sent, the shards would
    /// take it for idle until the announcement went stale (holding it at the event time
    /// the announcement found, see `Watermark::confirm_read_out`); a partition still
    /// being written to is not announced at all.
    fn announce_caught_up(&mut self, input: &InputState, now: i64) {
        let idle_timeout = self.owner.config.window.idle_timeout_ms;
        let positions = input.consumer.position().ok();
        let mut records = Vec::new();
        for (topic, partition) in input.assignment.partitions() {
            let Some(source @ Source::Input(kind)) = source_of(&self.topics, &topic) else {
                continue;
            };
            let Some(high) =
                kafka::cached_high_watermark(input.consumer.client(), &topic, partition)
            else {
                continue;
            };
            let key = (source, partition);
            let read = self.state.next_offsets.get(&key).copied().or_else(|| {
                let position = positions.as_ref()?.find_partition(&topic, partition)?;
                match position.offset() {
                    rdkafka::Offset::Offset(offset) => Some(offset),
                    _ => self.input_starts.get(&key).copied(),
                }
            });
            let read_out = read.is_some_and(|read| {
                self.input_quiet
                    .read_out(key, (read, high), now, idle_timeout)
            });
            if read_out {
                records.extend(fragment::caught_up_fragments(
                    &self.topics,
                    self.count,
                    (kind, partition, high),
                    now,
                ));
            }
        }
        self.push_records(records);
    }

    fn push_records(&mut self, records: impl IntoIterator<Item = OutRecord>) {
        for record in records {
            self.state.bytes_in_batch += record.payload.len();
            self.state.batch.records.push(record);
        }
    }

    /// Dead-letters `record`, as read (`from` None) or from where it was first read.
    fn dead_letter(
        &mut self,
        record: &Consumed,
        from: Option<SourcePosition<'_>>,
        rejection: &Rejection,
    ) {
        let from = from.unwrap_or(SourcePosition {
            topic: topic_name(&self.topics, record.source),
            partition: record.partition,
            offset: record.offset,
        });
        tracing::debug!(reason = rejection.reason.as_str(), detail = %rejection.detail, "dead letter");
        let letter = output::dead_letter(
            &self.topics,
            from,
            record.key.as_deref(),
            &record.body.payload,
            rejection,
        );
        self.push_records([letter]);
    }

    /// The read model from the shards this instance runs (their active alerts), the
    /// template (silences added here, catalog), and the merge (the metafilter's figures).
    fn refresh_model(&mut self, signals: &[Signal]) {
        let engines: Vec<_> = std::iter::once(self.owner.template.engine())
            .chain(self.shards.values().map(|s| s.processor.engine()))
            .collect();
        self.owner
            .model
            .refresh_many(&engines, self.merge.alerting(), signals);
    }
}

/// What a checkpoint of shard `index` covers: its partition of the repartition topic up
/// to the next offset to process, and the inputs counted (see [`ShardEngine`]).
fn coverage(
    topics: &TopicsConfig,
    state: &TransformState,
    index: u32,
    inputs_next: &HashMap<(InputKind, i32), i64>,
) -> (HashMap<PartitionKey, i64>, Vec<Position>) {
    let key = (Source::Repartition, index as i32);
    let covered = state
        .next_offsets
        .get(&key)
        .map(|&next| HashMap::from([(key, next)]))
        .unwrap_or_default();
    let inputs = inputs_next
        .iter()
        .map(|(&(kind, partition), &next_offset)| Position {
            topic: topic_name(topics, Source::Input(kind)).to_owned(),
            partition,
            next_offset,
        })
        .collect();
    (covered, inputs)
}

/// Counts an input a shard engine refused (see `Sharded::count`).
fn count_shard_refusal(reason: RejectReason) {
    counter!(names::SHARD_REFUSALS, "reason" => reason.as_str()).increment(1);
}

/// Restores a saved checkpoint with `restore`, if it covers `key` (the shard's or
/// the merge's partition): its write for the sink (offsets are then committed up to
/// its position, and no further until the next), and the saved input positions.
fn restore_checkpoint(
    (topics, state): (&TopicsConfig, &mut TransformState),
    key: PartitionKey,
    checkpointing: &Checkpointing,
    saved: Saved,
    restore: impl FnOnce(&[u8]) -> Result<(), String>,
) -> Option<(CheckpointWrite, Vec<Position>)> {
    let topic = topic_name(topics, key.0);
    let position = saved
        .manifest
        .positions
        .iter()
        .find(|p| p.topic == topic && p.partition == key.1)
        .map(|p| p.next_offset);
    let restored = match position {
        None => Err(format!("it covers no position of {topic} {}", key.1)),
        Some(position) => restore(&saved.state).map(|()| position),
    };
    let position = match restored {
        Ok(position) => position,
        Err(error) => {
            tracing::warn!(topic, partition = key.1, %error, "checkpoint not restored");
            counter!(names::CHECKPOINT_RESTORES, "outcome" => "refused").increment(1);
            return None;
        }
    };
    tracing::info!(
        topic,
        partition = key.1,
        generation = saved.manifest.generation,
        "checkpoint restored"
    );
    counter!(names::CHECKPOINT_RESTORES, "outcome" => "restored").increment(1);
    // Records below the position are in the restored state: a redelivery skips them.
    state.next_offsets.insert(key, position);
    let write = CheckpointWrite {
        chunks: Vec::new(),
        manifest: None,
        positions: HashMap::from([(key, position)]),
        generation: checkpointing.acknowledged_at_restore(),
        started: std::time::Instant::now(),
        bytes: saved.manifest.bytes,
        acknowledged: checkpointing.acknowledged.clone(),
    };
    Some((write, saved.manifest.inputs))
}

/// What a checkpoint of the merge covers: `topics.partials` up to the next offset to
/// process.
fn merge_coverage(state: &TransformState) -> HashMap<PartitionKey, i64> {
    let key = (Source::Partials, 0);
    state
        .next_offsets
        .get(&key)
        .map(|&next| HashMap::from([(key, next)]))
        .unwrap_or_default()
}

/// The merge's state as a [`StateWriter`]: copied now.
fn merge_state(merge: &ShardMerge) -> StateWriter {
    let merge = timed_copy(|| merge.clone());
    Box::new(move |out| merge.save_into(out))
}

/// A record of `topics.partials` (one partition: one instance merges).
fn to_merge_record(topics: &TopicsConfig, partial: &ToMerge) -> OutRecord {
    OutRecord {
        topic: topics.partials.clone(),
        partition: Some(0),
        key: None,
        payload: serde_json::to_vec(partial).expect("what the merge reads serializes"),
        headers: vec![("content-type", b"application/json".to_vec())],
        content: Content::Internal,
    }
}

/// Where reading the assigned input partitions starts: the group's committed offset, or
/// the partition's first (`auto.offset.reset = earliest`). Asked of the broker once per
/// assignment; a partition it cannot say is left out (never announced as read out until
/// a record of it is read).
async fn input_starts(input: &InputState, topics: &TopicsConfig) -> HashMap<PartitionKey, i64> {
    let consumer = input.consumer.clone();
    let assigned: Vec<(Source, String, i32)> = input
        .assignment
        .partitions()
        .into_iter()
        .filter_map(|(topic, partition)| match source_of(topics, &topic) {
            Some(source @ Source::Input(_)) => Some((source, topic, partition)),
            _ => None,
        })
        .collect();
    tokio::task::spawn_blocking(move || {
        let mut tpl = rdkafka::TopicPartitionList::new();
        for (_, topic, partition) in &assigned {
            tpl.add_partition(topic, *partition);
        }
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(5)).ok();
        let mut starts = HashMap::new();
        for (source, topic, partition) in assigned {
            let committed = committed
                .as_ref()
                .and_then(|c| c.find_partition(&topic, partition))
                .and_then(|e| match e.offset() {
                    rdkafka::Offset::Offset(offset) => Some(offset),
                    _ => None,
                });
            let start = committed.or_else(|| {
                consumer
                    .fetch_watermarks(&topic, partition, Duration::from_secs(5))
                    .ok()
                    .map(|(low, _)| low)
            });
            if let Some(start) = start {
                starts.insert((source, partition), start);
            }
        }
        starts
    })
    .await
    .unwrap_or_default()
}

/// The engine's indexes of every partition of the input topics (from the cluster's
/// metadata): each shard's watermark waits for all of them (or their idleness).
async fn input_partitions(input: &InputState, topics: &TopicsConfig) -> Vec<u32> {
    let consumer = input.consumer.clone();
    let inputs = [
        (InputKind::Post, topics.posts.clone()),
        (InputKind::Event, topics.events.clone()),
    ];
    tokio::task::spawn_blocking(move || {
        let mut indexes = Vec::new();
        for (kind, topic) in inputs {
            match consumer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(5))
            {
                Ok(metadata) => {
                    let partitions = metadata
                        .topics()
                        .iter()
                        .find(|t| t.name() == topic)
                        .map_or(0, |t| t.partitions().len());
                    indexes.extend((0..partitions as i32).map(|p| partition_index((kind, p))));
                }
                Err(error) => {
                    tracing::warn!(%error, topic, "cannot read the input partitions");
                }
            }
        }
        indexes
    })
    .await
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const POSTS_0: PartitionKey = (Source::Input(InputKind::Post), 0);
    const TIMEOUT: i64 = 1_000;

    #[test]
    fn a_partition_read_between_announcements_is_never_read_out() {
        let mut quiet = InputQuiet::default();
        // Records every 200 ms, each read at once: read to its end at every call, never
        // quiet for the timeout (the reader may die with the next ones unsent).
        for round in 0..20 {
            let read = 10 * (round + 1);
            assert!(!quiet.read_out(POSTS_0, (read, read), 200 * round, TIMEOUT));
        }
    }

    #[test]
    fn a_partition_read_to_its_end_is_read_out_once_quiet_for_the_timeout() {
        let mut quiet = InputQuiet::default();
        assert!(
            !quiet.read_out(POSTS_0, (50, 50), 0, TIMEOUT),
            "quiet for 0 ms"
        );
        assert!(!quiet.read_out(POSTS_0, (50, 50), 800, TIMEOUT));
        assert!(quiet.read_out(POSTS_0, (50, 50), 1_000, TIMEOUT));
        assert!(
            !quiet.read_out(POSTS_0, (50, 60), 1_200, TIMEOUT),
            "records arrived: not read to its end"
        );
        assert!(
            !quiet.read_out(POSTS_0, (60, 60), 1_400, TIMEOUT),
            "read to its end, but it just moved"
        );
        assert!(quiet.read_out(POSTS_0, (60, 60), 2_400, TIMEOUT));
        quiet.clear();
        assert!(
            !quiet.read_out(POSTS_0, (60, 60), 2_600, TIMEOUT),
            "a new assignment counts the quiet afresh"
        );
    }
}
