//! The event-time watermark, tracked per input partition.
//!
//! Each partition's clock is the newest event time read from it; the watermark is the
//! minimum over the partitions minus the allowed lateness, and never moves backwards.
//! Taking the minimum matters when a consumer reads a backlog: librdkafka hands over one
//! partition's batch at a time, and a single global maximum would run ahead with the first
//! partition and declare most of the others late.
//!
//! Idleness (wall clock, `idle_timeout_ms`, 0 = off): a partition with no input for the
//! whole timeout stops holding the watermark back (as Flink's idle sources); when every
//! partition is idle, the watermark advances with the wall clock from the newest event
//! time, so that the last windows of a quiet stream still close. An assigned partition
//! that has delivered nothing yet holds the watermark until it delivers or goes idle.
//!
//! A partition read by another process (a shard's, `scale.shards` > 1) is idle only as of
//! its reader's last word that it had read it all ([`Watermark::confirm_read_out`]): it
//! then holds the watermark at the newest event time seen by that moment, since records
//! that reached it afterwards may be on their way, or lost with a reader that died.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::EpochMs;

/// The partition key of inputs that come without an origin (files, tests).
pub const UNPARTITIONED: u32 = u32::MAX;

/// A checkpoint keeps the event time only: wall-clock quietness belongs to the process
/// that measured it (a restarted one counts afresh from its first tick).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct PartitionClock {
    max_event_time: Option<EpochMs>,
    #[serde(skip)]
    input_since_tick: bool,
    /// Wall time of the first tick after the latest input (or after assignment). Ticks,
    /// not inputs, carry wall time; the error is at most one tick period.
    #[serde(skip)]
    quiet_since_wall: Option<EpochMs>,
    #[serde(skip)]
    idle: bool,
    /// While idle, the event time it holds the watermark at (see
    /// [`Watermark::confirm_read_out`]); none: it does not hold it.
    #[serde(skip)]
    idle_floor: Option<EpochMs>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Watermark {
    allowed_lateness_ms: i64,
    idle_timeout_ms: i64,
    partitions: BTreeMap<u32, PartitionClock>,
    value: Option<EpochMs>,
}

impl Watermark {
    pub fn new(allowed_lateness_ms: i64, idle_timeout_ms: i64) -> Self {
        Watermark {
            allowed_lateness_ms,
            idle_timeout_ms,
            partitions: BTreeMap::new(),
            value: None,
        }
    }

    /// `None` until every active partition has delivered an event.
    pub fn value(&self) -> Option<EpochMs> {
        self.value
    }

    /// The partitions this instance reads now (after a rebalance). New ones hold the
    /// watermark until they deliver or go idle; dropped ones stop counting.
    pub fn assign(&mut self, partitions: &[u32]) {
        self.partitions.retain(|p, _| partitions.contains(p));
        for &partition in partitions {
            self.partitions.entry(partition).or_default();
        }
        self.recompute();
    }

    /// Advances `partition`'s clock with an accepted event's time.
    pub fn observe(&mut self, partition: u32, event_time: EpochMs) {
        let clock = self.partitions.entry(partition).or_default();
        clock.max_event_time = Some(
            clock
                .max_event_time
                .map_or(event_time, |max| max.max(event_time)),
        );
        clock.input_since_tick = true;
        clock.idle = false;
        self.recompute();
    }

    /// Moves the watermark to `value` if that is later (never backwards).
    pub fn raise_to(&mut self, value: EpochMs) {
        self.value = Some(self.value.map_or(value, |current| current.max(value)));
    }

    /// `partition` has records waiting to be read (the consumer is behind its end): it is
    /// not quiet, whatever the wall clock says. A backlog handed over one partition at a
    /// time would otherwise make the partitions served last look idle, and their records
    /// late.
    pub fn note_backlog(&mut self, partition: u32) {
        if let Some(clock) = self.partitions.get_mut(&partition) {
            clock.input_since_tick = true;
            clock.idle = false;
        }
    }

    /// `partition`'s reader says it has read it all: were it idle, every record that
    /// reached it by then has been seen, so it holds the watermark no further back than
    /// the newest event time seen so far (none yet: it does not hold it). Records that
    /// reach it afterwards are not known here until they are sent, by this reader or, if
    /// it died, by the next; the allowed lateness covers those produced at about the
    /// same time. A later word moves it on.
    pub fn confirm_read_out(&mut self, partition: u32) {
        let newest = self
            .partitions
            .values()
            .filter_map(|c| c.max_event_time)
            .max();
        if let (Some(clock), Some(newest)) = (self.partitions.get_mut(&partition), newest) {
            clock.idle_floor = Some(clock.idle_floor.map_or(newest, |f| f.max(newest)));
        }
        self.recompute();
    }

    /// Wall-clock tick while the input cannot be read (no partitions assigned yet, a
    /// rebalance, the broker unreachable): silence then says nothing about the stream, so
    /// it does not count as quiet time; idleness is measured again from here.
    pub fn suspend_idle(&mut self, wall_now: EpochMs) {
        for clock in self.partitions.values_mut() {
            clock.input_since_tick = false;
            clock.quiet_since_wall = Some(wall_now);
        }
    }

    /// Wall-clock tick: marks partitions idle after the timeout, and when all are idle,
    /// advances the watermark by the wall time the whole input has been quiet.
    pub fn tick(&mut self, wall_now: EpochMs) {
        for clock in self.partitions.values_mut() {
            if clock.input_since_tick || clock.quiet_since_wall.is_none() {
                clock.input_since_tick = false;
                clock.quiet_since_wall = Some(wall_now);
            }
            let quiet = wall_now.saturating_sub(clock.quiet_since_wall.unwrap_or(wall_now));
            clock.idle = self.idle_timeout_ms > 0 && quiet >= self.idle_timeout_ms;
        }
        self.recompute();
        if self.partitions.is_empty() || self.partitions.values().any(|c| !c.idle) {
            return;
        }
        // All idle: advance from the newest event time by the time since the last input
        // anywhere (computed from that instant each tick, so ticks do not compound).
        let newest = self
            .partitions
            .values()
            .filter_map(|c| c.max_event_time)
            .max();
        let quiet_since = self
            .partitions
            .values()
            .filter_map(|c| c.quiet_since_wall)
            .max();
        if let (Some(newest), Some(since)) = (newest, quiet_since) {
            let idle_for = wall_now.saturating_sub(since);
            self.raise_to(
                newest
                    .saturating_sub(self.allowed_lateness_ms)
                    .saturating_add(idle_for),
            );
        }
    }

    /// The minimum over active partitions and the floors of idle ones; a partition that
    /// has delivered nothing and is not idle yet holds the watermark where it is.
    fn recompute(&mut self) {
        let mut slowest: Option<EpochMs> = None;
        for clock in self.partitions.values() {
            let held_at = match (clock.idle, clock.max_event_time) {
                (true, _) => match clock.idle_floor {
                    Some(floor) => floor,
                    None => continue,
                },
                (false, None) => return,
                (false, Some(max)) => max,
            };
            slowest = Some(slowest.map_or(held_at, |s| s.min(held_at)));
        }
        if let Some(slowest) = slowest {
            self.raise_to(slowest.saturating_sub(self.allowed_lateness_ms));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u32 = UNPARTITIONED;

    #[test]
    fn trails_the_newest_event_and_never_regresses() {
        let mut wm = Watermark::new(5, 0);
        assert_eq!(wm.value(), None);
        wm.observe(P, 100);
        assert_eq!(wm.value(), Some(95));
        wm.observe(P, 50);
        assert_eq!(wm.value(), Some(95));
        wm.observe(P, 120);
        assert_eq!(wm.value(), Some(115));
        wm.raise_to(10);
        assert_eq!(wm.value(), Some(115));
    }

    #[test]
    fn is_the_minimum_over_partitions() {
        let mut wm = Watermark::new(5, 0);
        wm.assign(&[0, 1, 2]);
        wm.observe(0, 1_000);
        assert_eq!(
            wm.value(),
            None,
            "partitions 1 and 2 have not delivered yet"
        );
        wm.observe(1, 200);
        wm.observe(2, 500);
        assert_eq!(wm.value(), Some(195), "held by the slowest partition");
        wm.observe(1, 800);
        assert_eq!(wm.value(), Some(495));
        // A revoked partition stops holding it back.
        wm.assign(&[0, 1]);
        assert_eq!(wm.value(), Some(795));
    }

    #[test]
    fn time_without_a_readable_input_is_not_idleness() {
        let mut wm = Watermark::new(0, 1_000);
        wm.assign(&[0]);
        wm.observe(0, 10_000);
        wm.tick(0);
        // A 30 s outage (or a restart's group join): no advance for it.
        for wall in (0..=30_000).step_by(200) {
            wm.suspend_idle(wall);
        }
        wm.tick(30_000);
        assert_eq!(wm.value(), Some(10_000));
        // Readable again and still quiet: idle after the timeout, advancing from then.
        wm.tick(31_500);
        assert_eq!(wm.value(), Some(11_500));
    }

    #[test]
    fn an_idle_partition_read_elsewhere_holds_the_watermark_where_last_confirmed() {
        let mut wm = Watermark::new(0, 1_000);
        wm.assign(&[0, 1, 2]);
        wm.observe(0, 10_000);
        wm.observe(1, 10_000);
        // Partition 2 never delivers; its reader says so while the others are at 10 s.
        wm.confirm_read_out(2);
        wm.tick(0);
        wm.tick(999);
        assert_eq!(wm.value(), None, "partition 2 is not idle yet");
        // Its reader dies; the others move on, partition 2 holds them at its last word.
        wm.observe(0, 30_000);
        wm.observe(1, 30_000);
        wm.tick(1_000);
        assert_eq!(
            wm.value(),
            Some(10_000),
            "idle, held at its reader's last word"
        );
        // A new reader sends what had reached it, then says it has read it all.
        wm.observe(2, 25_000);
        wm.tick(1_100);
        assert_eq!(wm.value(), Some(25_000));
        wm.observe(0, 30_000);
        wm.observe(1, 30_000);
        wm.tick(2_100);
        assert_eq!(wm.value(), Some(25_000), "idle again, never backwards");
        wm.confirm_read_out(2);
        assert_eq!(wm.value(), Some(30_000), "held at the new word");
    }

    #[test]
    fn a_partition_with_a_backlog_is_never_idle() {
        let mut wm = Watermark::new(0, 1_000);
        wm.assign(&[0, 1]);
        wm.observe(0, 10_000);
        wm.observe(1, 10_000);
        wm.tick(0);
        // Partition 0 delivers its backlog; partition 1's waits its turn for 5 s.
        for wall in (200..=5_000).step_by(200) {
            wm.observe(0, 10_000 + wall);
            wm.note_backlog(1);
            wm.tick(wall);
        }
        assert_eq!(wm.value(), Some(10_000), "held by partition 1's backlog");
        // Caught up at 5 s.
        wm.observe(0, 16_000);
        wm.tick(5_800);
        assert_eq!(
            wm.value(),
            Some(10_000),
            "caught up, quiet for 0.8 s: not idle yet"
        );
        wm.tick(6_200);
        assert_eq!(
            wm.value(),
            Some(16_000),
            "caught up and quiet for 1.2 s: idle"
        );
    }

    #[test]
    fn an_idle_partition_stops_holding_the_watermark() {
        let mut wm = Watermark::new(5, 1_000);
        wm.assign(&[0, 1]);
        wm.observe(0, 10_000);
        wm.tick(0);
        assert_eq!(wm.value(), None);
        // Partition 0 keeps delivering; partition 1 never does.
        wm.observe(0, 11_000);
        wm.tick(1_500);
        assert_eq!(wm.value(), Some(10_995), "partition 1 is idle after 1 s");
        wm.observe(1, 10_500);
        assert_eq!(
            wm.value(),
            Some(10_995),
            "back in play, but the watermark does not regress"
        );
        wm.observe(1, 12_000);
        wm.observe(0, 12_500);
        assert_eq!(wm.value(), Some(11_995));
    }

    #[test]
    fn idle_input_advances_with_the_wall_clock() {
        let mut wm = Watermark::new(5, 1_000);
        wm.observe(P, 10_000);
        wm.tick(500_000); // input since the previous tick: quiet from now
        wm.tick(500_900);
        assert_eq!(
            wm.value(),
            Some(9_995),
            "not idle for longer than the timeout yet"
        );
        wm.tick(501_000);
        assert_eq!(
            wm.value(),
            Some(9_995 + 1_000),
            "idle once quiet for the whole timeout"
        );
        wm.tick(501_200);
        assert_eq!(wm.value(), Some(9_995 + 1_200));
        wm.tick(501_400);
        assert_eq!(
            wm.value(),
            Some(9_995 + 1_400),
            "does not compound across ticks"
        );
        // New input ends idleness; the watermark keeps what it gained.
        wm.observe(P, 10_100);
        wm.tick(501_600);
        assert_eq!(wm.value(), Some(9_995 + 1_400));
        wm.tick(502_000);
        assert_eq!(wm.value(), Some(9_995 + 1_400));
    }

    #[test]
    fn idle_advance_can_be_disabled_and_needs_an_event() {
        let mut quiet = Watermark::new(5, 1_000);
        quiet.assign(&[0]);
        quiet.tick(0);
        quiet.tick(60_000);
        assert_eq!(quiet.value(), None, "no event, nothing to advance from");
        let mut disabled = Watermark::new(5, 0);
        disabled.observe(P, 100);
        disabled.tick(0);
        disabled.tick(60_000);
        assert_eq!(disabled.value(), Some(95));
    }
}
