//! Event-time alignment of input partitions while a backlog is read: which partitions to
//! pause because their event time ran too far ahead of the others', and when to resume
//! them (Flink's watermark alignment, Kafka Streams' "lowest timestamp first").
//!
//! Why: the watermark is the minimum over the partitions (see [`crate::watermark`]), so a
//! window closes only when the slowest partition has passed its end. A consumer reading a
//! backlog does not read partitions at the same pace: librdkafka hands over whatever the
//! broker returned, often tens of thousands of one partition's records at a time (measured
//! against tansu: one partition 16 minutes of event time ahead of another). Every window
//! in between then stays open at once: memory grows with the backlog instead of the
//! window, checkpoints copy all of it, and no trend is published until the end. Pausing
//! the partitions that run ahead lets the others catch up, and windows close as the
//! backlog is read.
//!
//! Only partitions with records waiting are compared: one that has read everything there
//! is holds nobody back, whatever its event time. And only a partition with a real
//! backlog (`min_backlog` records waiting) is paused: a live stream keeps up with its
//! partitions, and one whose producer stamps times minutes behind the others' (a skewed
//! clock) must not stop the others from being read as they come. Pure logic: the service
//! feeds it event times and backlogs, and pauses and resumes what it says.

use std::collections::BTreeMap;

use crate::model::EpochMs;

/// What to do with a partition's fetching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Pause(u32),
    Resume(u32),
}

#[derive(Debug, Clone, Default)]
struct Lane {
    /// Newest event time read.
    newest: Option<EpochMs>,
    /// Records waiting to be read.
    backlog: i64,
    paused: bool,
}

/// Per-partition event time as read, and which partitions are paused.
#[derive(Debug, Clone)]
pub struct Alignment {
    max_drift_ms: i64,
    min_backlog: i64,
    stall_ms: i64,
    lanes: BTreeMap<u32, Lane>,
    /// When records last arrived (the caller's monotonic clock, in ms).
    last_progress: Option<i64>,
    /// Everything was resumed because nothing arrived: nothing is paused again until
    /// records do (pausing again at once would purge what the resumed ones fetch).
    stalled: bool,
}

impl Alignment {
    /// A partition with at least `min_backlog` records waiting, more than `max_drift_ms`
    /// of event time ahead of the slowest one with records waiting, is paused, and
    /// resumed once within half of it (the margin keeps a partition from flapping at every
    /// record). A drift of 0 disables alignment. When nothing at all arrives for
    /// `stall_ms` while partitions are paused, the partitions they wait for are not
    /// delivering (a slow or failed-over leader): all are resumed rather than stall the
    /// whole input (the watermark still waits for the slow ones as usual).
    pub fn new(max_drift_ms: i64, min_backlog: i64, stall_ms: i64) -> Self {
        Alignment {
            max_drift_ms,
            min_backlog: min_backlog.max(1),
            stall_ms,
            lanes: BTreeMap::new(),
            last_progress: None,
            stalled: false,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.max_drift_ms > 0
    }

    /// The partitions read now (after a rebalance): state starts over, nothing paused.
    /// (The caller resumes what it had paused: a partition given back keeps no pause.)
    pub fn assign(&mut self, partitions: &[u32]) {
        self.lanes = partitions.iter().map(|&p| (p, Lane::default())).collect();
    }

    /// A record of `partition` with this event time was read.
    pub fn observe(&mut self, partition: u32, event_time: EpochMs) {
        if let Some(lane) = self.lanes.get_mut(&partition) {
            lane.newest = Some(lane.newest.map_or(event_time, |n| n.max(event_time)));
        }
    }

    /// Records arrived at `now` (any records: whether they decode does not matter).
    pub fn progressed(&mut self, now: i64) {
        self.last_progress = Some(now);
        self.stalled = false;
    }

    /// How many records of `partition` are waiting to be read.
    pub fn set_backlog(&mut self, partition: u32, backlog: i64) {
        if let Some(lane) = self.lanes.get_mut(&partition) {
            lane.backlog = backlog;
        }
    }

    /// Everything was resumed because nothing arrived, and nothing has since.
    pub fn is_stalled(&self) -> bool {
        self.stalled
    }

    pub fn paused(&self) -> impl Iterator<Item = u32> + '_ {
        self.lanes.iter().filter(|(_, l)| l.paused).map(|(&p, _)| p)
    }

    /// The changes that the event times, backlogs and progress call for at `now`,
    /// appended to `out`.
    pub fn decide(&mut self, now: i64, out: &mut Vec<Change>) {
        if !self.is_enabled() {
            return;
        }
        let waited = self
            .last_progress
            .is_some_and(|last| now.saturating_sub(last) >= self.stall_ms);
        if waited && self.paused().next().is_some() {
            self.resume_all(out);
            self.stalled = true;
            return;
        }
        if self.stalled {
            return;
        }
        let Some(slowest) = self.slowest() else {
            // No partition is behind: nothing to wait for.
            self.resume_all(out);
            return;
        };
        let (pause_above, resume_at) =
            (slowest + self.max_drift_ms, slowest + self.max_drift_ms / 2);
        for (&partition, lane) in &mut self.lanes {
            let Some(newest) = lane.newest else { continue };
            if !lane.paused && lane.backlog >= self.min_backlog && newest > pause_above {
                lane.paused = true;
                out.push(Change::Pause(partition));
            } else if lane.paused && (newest <= resume_at || lane.backlog == 0) {
                lane.paused = false;
                out.push(Change::Resume(partition));
            }
        }
    }

    /// Resumes every paused partition (at a stall, and before a new assignment: a
    /// partition given back must not stay paused).
    pub fn resume_all(&mut self, out: &mut Vec<Change>) {
        for (&partition, lane) in &mut self.lanes {
            if lane.paused {
                lane.paused = false;
                out.push(Change::Resume(partition));
            }
        }
    }

    /// Where the slowest partition with a backlog is in event time. One that has read
    /// nothing yet is not waited for: its first records show where it is.
    fn slowest(&self) -> Option<EpochMs> {
        self.lanes
            .values()
            .filter(|l| l.backlog > 0)
            .filter_map(|l| l.newest)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decides at time 0, records having just arrived.
    fn decide(alignment: &mut Alignment) -> Vec<Change> {
        alignment.progressed(0);
        decide_at(alignment, 0)
    }

    fn decide_at(alignment: &mut Alignment, now: i64) -> Vec<Change> {
        let mut out = Vec::new();
        alignment.decide(now, &mut out);
        out
    }

    fn aligned(partitions: &[u32]) -> Alignment {
        let mut alignment = Alignment::new(60_000, 100, 1_000);
        alignment.assign(partitions);
        for &p in partitions {
            alignment.set_backlog(p, 1_000);
        }
        alignment
    }

    #[test]
    fn pauses_a_partition_that_runs_ahead_and_resumes_it_when_the_others_catch_up() {
        let mut alignment = aligned(&[0, 1]);
        alignment.observe(0, 0);
        alignment.observe(1, 0);
        alignment.observe(0, 60_000);
        assert_eq!(decide(&mut alignment), [], "exactly the drift: not yet");
        alignment.observe(0, 60_001);
        assert_eq!(decide(&mut alignment), [Change::Pause(0)]);
        assert_eq!(alignment.paused().collect::<Vec<_>>(), [0]);
        alignment.observe(1, 20_000);
        assert_eq!(
            decide(&mut alignment),
            [],
            "within the drift, not half of it"
        );
        alignment.observe(1, 30_001);
        assert_eq!(decide(&mut alignment), [Change::Resume(0)]);
        assert_eq!(decide(&mut alignment), [], "said once");
    }

    #[test]
    fn a_partition_without_backlog_holds_nobody_back() {
        let mut alignment = aligned(&[0, 1]);
        alignment.observe(0, 0);
        alignment.observe(1, 500_000);
        assert_eq!(decide(&mut alignment), [Change::Pause(1)]);
        // Partition 0 has read all there is: 1 may go on, however far ahead.
        alignment.set_backlog(0, 0);
        assert_eq!(decide(&mut alignment), [Change::Resume(1)]);
        alignment.observe(1, 900_000);
        assert_eq!(decide(&mut alignment), []);
    }

    #[test]
    fn a_partition_that_keeps_up_is_never_paused() {
        let mut alignment = aligned(&[0, 1]);
        alignment.observe(0, 0);
        // Live: partition 1's producer stamps times ten minutes ahead, a few records wait.
        alignment.set_backlog(1, 99);
        alignment.observe(1, 600_000);
        assert_eq!(decide(&mut alignment), []);
        alignment.set_backlog(1, 100);
        assert_eq!(decide(&mut alignment), [Change::Pause(1)], "a backlog now");
    }

    #[test]
    fn partitions_not_read_yet_are_not_waited_for() {
        let mut alignment = aligned(&[0, 1, 2]);
        alignment.observe(2, 1_000_000);
        alignment.observe(2, 2_000_000);
        assert_eq!(decide(&mut alignment), [], "alone so far");
        alignment.observe(0, 1_000_500);
        assert_eq!(decide(&mut alignment), [Change::Pause(2)]);
    }

    #[test]
    fn a_paused_partition_that_becomes_the_slowest_is_resumed() {
        let mut alignment = aligned(&[0, 1, 2]);
        alignment.observe(0, 0);
        alignment.observe(1, 100_000);
        alignment.observe(2, 200_000);
        assert_eq!(decide(&mut alignment), [Change::Pause(1), Change::Pause(2)]);
        // Partition 0 reaches its end: 1 is the slowest now, 2 is still too far ahead.
        alignment.set_backlog(0, 0);
        assert_eq!(decide(&mut alignment), [Change::Resume(1)]);
        alignment.observe(1, 170_000);
        assert_eq!(decide(&mut alignment), [Change::Resume(2)]);
    }

    #[test]
    fn resume_all_and_reassignment_start_over() {
        let mut alignment = aligned(&[0, 1]);
        alignment.observe(0, 0);
        alignment.observe(1, 100_000);
        assert_eq!(decide(&mut alignment), [Change::Pause(1)]);
        let mut out = Vec::new();
        alignment.resume_all(&mut out);
        assert_eq!(out, [Change::Resume(1)]);
        assert_eq!(decide(&mut alignment), [Change::Pause(1)], "still ahead");
        alignment.assign(&[1, 3]);
        assert_eq!(alignment.paused().count(), 0);
        assert_eq!(decide(&mut alignment), [], "no backlog known yet");
    }

    #[test]
    fn a_stall_resumes_everything_until_records_arrive_again() {
        let mut alignment = aligned(&[0, 1]);
        alignment.observe(0, 0);
        alignment.observe(1, 100_000);
        assert_eq!(decide(&mut alignment), [Change::Pause(1)]);
        assert_eq!(
            decide_at(&mut alignment, 999),
            [],
            "partition 0 may still deliver"
        );
        assert_eq!(decide_at(&mut alignment, 1_000), [Change::Resume(1)]);
        assert_eq!(
            decide_at(&mut alignment, 1_100),
            [],
            "not paused again before records arrive"
        );
        alignment.progressed(1_200);
        assert_eq!(decide_at(&mut alignment, 1_200), [Change::Pause(1)]);
    }

    #[test]
    fn zero_drift_disables_it() {
        let mut alignment = Alignment::new(0, 100, 1_000);
        alignment.assign(&[0, 1]);
        alignment.set_backlog(0, 1_000);
        alignment.set_backlog(1, 1_000);
        alignment.observe(0, 0);
        alignment.observe(1, 10_000_000);
        assert_eq!(decide(&mut alignment), []);
    }
}
