//! The source stage's side of event-time alignment ([`dynsig_core::alignment`]): tells
//! it the event time of every input read and which input partitions have records
//! waiting, and pauses and resumes the consumer's partitions as it decides.
//!
//! Pausing loses nothing: librdkafka drops what it had prefetched for a paused partition
//! and, when resumed, fetches again from the record after the last one it handed over.
//! It only costs fetching those records twice, which is why a partition is paused only
//! when it runs a whole drift ahead (a window's worth by default).

use std::collections::BTreeMap;
use std::time::Instant;

use dynsig_core::alignment::{Alignment, Change};
use metrics::{counter, gauge};
use rdkafka::consumer::Consumer;
use rdkafka::TopicPartitionList;

use crate::config::TopicsConfig;
use crate::kafka::{self, Assignment};
use crate::telemetry::names;

use super::{assigned_inputs, partition_index, Consumed, InputConsumer, Source};

/// Records a partition must have waiting to be paused: reading a backlog, partitions have
/// hundreds of thousands; keeping up with a live stream, a few fetches' worth at most.
const MIN_BACKLOG: i64 = 5_000;
/// How long nothing may arrive while partitions are paused before they are all resumed
/// (see [`Alignment::new`]).
const STALL_MS: i64 = 1_000;

/// An input partition as the source stage reads it.
struct Lane {
    topic: String,
    partition: i32,
    /// The offset after the last record read; None before the first.
    next_offset: Option<i64>,
}

pub(super) struct Aligner {
    alignment: Alignment,
    /// The assignment generation the lanes belong to.
    generation: u64,
    lanes: BTreeMap<u32, Lane>,
    /// Records were read since the last [`Aligner::align`].
    read_since_align: bool,
    /// The origin of the monotonic milliseconds [`Alignment`] is given.
    started: Instant,
    changes: Vec<Change>,
}

impl Aligner {
    pub(super) fn new(max_drift_ms: i64) -> Self {
        // Exported from the start: "nothing paused" reads 0, not absent.
        gauge!(names::PARTITIONS_PAUSED).set(0.0);
        counter!(names::PARTITION_PAUSES).absolute(0);
        Aligner {
            alignment: Alignment::new(max_drift_ms, MIN_BACKLOG, STALL_MS),
            generation: 0,
            lanes: BTreeMap::new(),
            read_since_align: false,
            started: Instant::now(),
            changes: Vec::new(),
        }
    }

    /// Notes a record read: an input's event time and the partition's position.
    pub(super) fn read(&mut self, record: &Consumed) {
        let Source::Input(kind) = record.source else {
            return;
        };
        if !self.alignment.is_enabled() {
            return;
        }
        self.read_since_align = true;
        let index = partition_index((kind, record.partition));
        if let Some(lane) = self.lanes.get_mut(&index) {
            lane.next_offset = Some(record.offset + 1);
        }
        if let Some(Ok(())) = record.body.decoded {
            self.alignment.observe(index, record.body.record.ts());
        }
    }

    /// Pauses and resumes partitions as their event times and backlogs now call for.
    /// Called after every batch handed over and on a timer.
    pub(super) fn align(
        &mut self,
        consumer: &InputConsumer,
        topics: &TopicsConfig,
        assignment: &Assignment,
    ) {
        if !self.alignment.is_enabled() {
            return;
        }
        if assignment.generation() != self.generation {
            self.reassign(consumer, topics, assignment);
        }
        for (&index, lane) in &self.lanes {
            let Some(next) = lane.next_offset else {
                continue;
            };
            // Cached from the last fetch response: no request to the broker.
            let high = kafka::cached_high_watermark(consumer.client(), &lane.topic, lane.partition);
            let waiting = high.map_or(0, |high| (high - next).max(0));
            self.alignment.set_backlog(index, waiting);
        }
        // Progress is noted here, after the hand-over: time spent waiting for the
        // transform stage to take a batch is not time the input was stalled.
        let now = self.started.elapsed().as_millis() as i64;
        if std::mem::take(&mut self.read_since_align) {
            self.alignment.progressed(now);
        }
        let was_stalled = self.alignment.is_stalled();
        self.alignment.decide(now, &mut self.changes);
        if self.alignment.is_stalled() && !was_stalled {
            tracing::info!("nothing read for {STALL_MS} ms with partitions paused: resumed them");
        }
        self.apply(consumer);
    }

    /// A new assignment: what was paused is resumed (a partition given back must not stay
    /// paused), and the lanes start over.
    fn reassign(
        &mut self,
        consumer: &InputConsumer,
        topics: &TopicsConfig,
        assignment: &Assignment,
    ) {
        self.generation = assignment.generation();
        self.alignment.resume_all(&mut self.changes);
        self.apply(consumer);
        self.lanes = assigned_inputs(topics, assignment)
            .into_iter()
            .map(|(index, topic, partition)| {
                let lane = Lane {
                    topic,
                    partition,
                    next_offset: None,
                };
                (index, lane)
            })
            .collect();
        let indexes: Vec<u32> = self.lanes.keys().copied().collect();
        self.alignment.assign(&indexes);
    }

    fn apply(&mut self, consumer: &InputConsumer) {
        if self.changes.is_empty() {
            return;
        }
        let (mut pause, mut resume) = (TopicPartitionList::new(), TopicPartitionList::new());
        for change in self.changes.drain(..) {
            let (list, index) = match change {
                Change::Pause(index) => (&mut pause, index),
                Change::Resume(index) => (&mut resume, index),
            };
            if let Some(lane) = self.lanes.get(&index) {
                list.add_partition(&lane.topic, lane.partition);
            }
        }
        if pause.count() > 0 {
            tracing::debug!(partitions = ?pause, "pausing partitions ahead in event time");
            counter!(names::PARTITION_PAUSES).increment(pause.count() as u64);
            if let Err(error) = consumer.pause(&pause) {
                tracing::warn!(%error, "pausing partitions ahead in event time");
            }
        }
        if resume.count() > 0 {
            tracing::debug!(partitions = ?resume, "resuming partitions");
            if let Err(error) = consumer.resume(&resume) {
                tracing::warn!(%error, "resuming partitions");
            }
        }
        gauge!(names::PARTITIONS_PAUSED).set(self.alignment.paused().count() as f64);
    }
}
