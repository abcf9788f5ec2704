//! Event-time tumbling windows: assignment and the set of open windows (the watermark that
//! closes them is in [`crate::watermark`]).
//!
//! A window `[start, start + size)` is open from its first input until the watermark
//! reaches its end; then it is closed (oldest first) and handed to the detectors. Each
//! open window remembers, per input partition, the smallest offset that contributed to
//! it, because the service may commit an input offset only once every window it fed has
//! been closed and published (see [`Windows::held_offset`]).
//!
//! The per-window state `S` is generic: this module knows nothing about what is counted.

use std::collections::BTreeMap;

use crate::model::{EpochMs, Origin};

/// Start of the window of size `size_ms` containing `ts`: `floor(ts / size) * size`,
/// also for negative (pre-1970) timestamps, where truncating division would be wrong.
pub fn window_start(ts: EpochMs, size_ms: i64) -> EpochMs {
    ts.div_euclid(size_ms).saturating_mul(size_ms)
}

/// A window that has been closed, with everything that was accumulated in it.
#[derive(Debug)]
pub struct ClosedWindow<S> {
    pub start: EpochMs,
    pub end: EpochMs,
    pub state: S,
}

#[derive(Debug)]
struct OpenWindow<S> {
    state: S,
    /// (partition, smallest offset) pairs; a window sees few partitions, so a vector
    /// beats a map here.
    min_offsets: Vec<(u32, i64)>,
}

/// The open windows, keyed by start so that they close in time order.
#[derive(Debug)]
pub struct Windows<S> {
    size_ms: i64,
    open: BTreeMap<EpochMs, OpenWindow<S>>,
}

impl<S: Default> Windows<S> {
    /// `size_ms` must be positive (the engine validates its config before).
    pub fn new(size_ms: i64) -> Self {
        assert!(size_ms > 0, "window size must be positive, got {size_ms}");
        Windows {
            size_ms,
            open: BTreeMap::new(),
        }
    }

    /// `(start, end)` of the window containing `ts`.
    pub fn bounds(&self, ts: EpochMs) -> (EpochMs, EpochMs) {
        let start = window_start(ts, self.size_ms);
        (start, start.saturating_add(self.size_ms))
    }

    /// The window's index on the time axis (consecutive windows differ by 1); detectors
    /// use it to measure gaps between windows.
    pub fn index(&self, start: EpochMs) -> i64 {
        start.div_euclid(self.size_ms)
    }

    /// The state of the window starting at `start` (as returned by [`Self::bounds`]),
    /// opening it if needed, and records `origin`'s offset as held by it.
    pub fn state_mut(&mut self, start: EpochMs, origin: Option<Origin>) -> &mut S {
        let window = self.open.entry(start).or_insert_with(|| OpenWindow {
            state: S::default(),
            min_offsets: Vec::new(),
        });
        if let Some(Origin { partition, offset }) = origin {
            match window.min_offsets.iter_mut().find(|(p, _)| *p == partition) {
                Some((_, held)) => *held = (*held).min(offset),
                None => window.min_offsets.push((partition, offset)),
            }
        }
        &mut window.state
    }

    /// Removes and returns the oldest open window if it ends at or before `limit`.
    pub fn pop_ended_by(&mut self, limit: EpochMs) -> Option<ClosedWindow<S>> {
        let entry = self.open.first_entry()?;
        let start = *entry.key();
        let end = start.saturating_add(self.size_ms);
        (end <= limit).then(|| ClosedWindow {
            start,
            end,
            state: entry.remove().state,
        })
    }

    /// Smallest offset of `partition` that contributed to a still-open window.
    pub fn held_offset(&self, partition: u32) -> Option<i64> {
        self.open
            .values()
            .flat_map(|w| w.min_offsets.iter())
            .filter(|(p, _)| *p == partition)
            .map(|(_, offset)| *offset)
            .min()
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(partition: u32, offset: i64) -> Option<Origin> {
        Some(Origin { partition, offset })
    }

    #[test]
    fn assignment_floors_also_for_negative_times() {
        assert_eq!(window_start(0, 60_000), 0);
        assert_eq!(window_start(59_999, 60_000), 0);
        assert_eq!(window_start(60_000, 60_000), 60_000);
        assert_eq!(window_start(-1, 60_000), -60_000);
        assert_eq!(window_start(-60_000, 60_000), -60_000);
        assert_eq!(window_start(-60_001, 60_000), -120_000);
        let windows = Windows::<u32>::new(10);
        assert_eq!(windows.bounds(25), (20, 30));
        assert_eq!(windows.index(-10), -1);
        assert_eq!(
            window_start(i64::MIN, 60_000),
            i64::MIN,
            "saturates instead of overflowing"
        );
    }

    #[test]
    fn windows_close_in_order_up_to_the_limit() {
        let mut windows = Windows::<u32>::new(10);
        for ts in [25, 3, 11, 12, 27] {
            let (start, _) = windows.bounds(ts);
            *windows.state_mut(start, None) += 1;
        }
        assert_eq!(windows.len(), 3);
        assert!(windows.pop_ended_by(9).is_none());
        let first = windows.pop_ended_by(20).unwrap();
        assert_eq!((first.start, first.end, first.state), (0, 10, 1));
        let second = windows.pop_ended_by(20).unwrap();
        assert_eq!((second.start, second.end, second.state), (10, 20, 2));
        assert!(windows.pop_ended_by(20).is_none());
        assert_eq!(windows.pop_ended_by(i64::MAX).unwrap().state, 2);
        assert!(windows.is_empty());
    }

    #[test]
    fn held_offset_moves_forward_as_windows_close() {
        let mut windows = Windows::<()>::new(10);
        windows.state_mut(0, origin(0, 100));
        windows.state_mut(0, origin(0, 90)); // out of order within a partition
        windows.state_mut(0, origin(1, 7));
        windows.state_mut(10, origin(0, 95));
        windows.state_mut(10, origin(0, 120));
        windows.state_mut(20, origin(0, 130));
        windows.state_mut(20, None);
        assert_eq!(windows.held_offset(0), Some(90));
        assert_eq!(windows.held_offset(1), Some(7));
        assert_eq!(windows.held_offset(2), None);
        windows.pop_ended_by(10);
        assert_eq!(windows.held_offset(0), Some(95));
        assert_eq!(windows.held_offset(1), None);
        windows.pop_ended_by(20);
        assert_eq!(windows.held_offset(0), Some(130));
        windows.pop_ended_by(30);
        assert_eq!(windows.held_offset(0), None);
    }
}
