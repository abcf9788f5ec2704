//! Event-time windows, tumbling or hopping: assignment and the set of open windows (the
//! watermark that closes them is in [`crate::watermark`]).
//!
//! Windows have a `size` and a `hop` that divides it; they start at every multiple of
//! `hop`, so an instant belongs to `size / hop` windows (tumbling: `hop == size`, one
//! window). Hopping windows are updated per input, once per window: simple, exact for
//! every kind of state (distinct authors, sketches), and cheap for the usual ratios
//! (15 min / 5 min = 3 updates per input).
//!
//! A window `[start, start + size)` is open from its first input until the watermark
//! reaches its end; then it is closed (oldest first) and handed to the detectors. Each
//! open window remembers, per input partition, the smallest offset that contributed to
//! it, because the service may commit an input offset only once every window it fed has
//! been closed and published (see [`Windows::held_offset`]).
//!
//! The per-window state `S` is generic: this module knows nothing about what is counted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OpenWindow<S> {
    state: S,
    /// (partition, smallest offset) pairs; a window sees few partitions, so a vector
    /// beats a map here.
    min_offsets: Vec<(u32, i64)>,
}

/// The open windows, keyed by start so that they close in time order (all have the same
/// size, so start order is end order).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Windows<S> {
    size_ms: i64,
    hop_ms: i64,
    open: BTreeMap<EpochMs, OpenWindow<S>>,
}

impl<S> Windows<S> {
    /// `size_ms` and `hop_ms` must be positive and `hop_ms` must divide `size_ms` (the
    /// engine validates its config before).
    pub fn new(size_ms: i64, hop_ms: i64) -> Self {
        assert!(
            size_ms > 0 && hop_ms > 0 && size_ms % hop_ms == 0,
            "window size {size_ms} and hop {hop_ms} must be positive, the hop dividing the size"
        );
        Windows {
            size_ms,
            hop_ms,
            open: BTreeMap::new(),
        }
    }

    pub fn size_ms(&self) -> i64 {
        self.size_ms
    }

    pub fn hop_ms(&self) -> i64 {
        self.hop_ms
    }

    /// Starts of the windows containing `ts`, oldest first.
    pub fn starts_containing(&self, ts: EpochMs) -> impl Iterator<Item = EpochMs> {
        let last = window_start(ts, self.hop_ms);
        let count = self.size_ms / self.hop_ms;
        let hop = self.hop_ms;
        (0..count)
            .rev()
            .map(move |back| last.saturating_sub(back * hop))
    }

    /// End of the first window containing `ts` to close: once it has closed, an input at
    /// `ts` is late.
    pub fn earliest_end(&self, ts: EpochMs) -> EpochMs {
        window_start(ts, self.hop_ms).saturating_add(self.hop_ms)
    }

    /// The window's index on the time axis (consecutive windows differ by 1); detectors
    /// use it to measure gaps between windows.
    pub fn index(&self, start: EpochMs) -> i64 {
        start.div_euclid(self.hop_ms)
    }

    /// The open windows, oldest first, with their start.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (EpochMs, &mut S)> {
        self.open
            .iter_mut()
            .map(|(start, w)| (*start, &mut w.state))
    }

    /// The state of the window starting at `start` (one of [`Self::starts_containing`]),
    /// opening it with `new()` if needed, and records `origin`'s offset as held by it.
    pub fn state_mut(
        &mut self,
        start: EpochMs,
        origin: Option<Origin>,
        new: impl FnOnce() -> S,
    ) -> &mut S {
        let window = self.open.entry(start).or_insert_with(|| OpenWindow {
            state: new(),
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

    /// The end of the oldest open window, if any: [`Self::pop_ended_by`] returns it once
    /// its limit reaches this.
    pub fn first_end(&self) -> Option<EpochMs> {
        let (start, _) = self.open.first_key_value()?;
        Some(start.saturating_add(self.size_ms))
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

    /// Smallest offset of any partition that contributed to a still-open window (for
    /// offsets that count in one sequence whatever the partition, e.g. a shard's input).
    pub fn earliest_held_offset(&self) -> Option<i64> {
        self.open
            .values()
            .flat_map(|w| w.min_offsets.iter())
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
        let windows = Windows::<u32>::new(10, 10);
        assert_eq!(windows.starts_containing(25).collect::<Vec<_>>(), [20]);
        assert_eq!(windows.earliest_end(25), 30);
        assert_eq!(windows.index(-10), -1);
        assert_eq!(
            window_start(i64::MIN, 60_000),
            i64::MIN,
            "saturates instead of overflowing"
        );
    }

    #[test]
    fn windows_close_in_order_up_to_the_limit() {
        let mut windows = Windows::<u32>::new(10, 10);
        for ts in [25, 3, 11, 12, 27] {
            for start in windows.starts_containing(ts).collect::<Vec<_>>() {
                *windows.state_mut(start, None, Default::default) += 1;
            }
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
        let mut windows = Windows::<()>::new(10, 10);
        windows.state_mut(0, origin(0, 100), Default::default);
        windows.state_mut(0, origin(0, 90), Default::default); // out of order within a partition
        windows.state_mut(0, origin(1, 7), Default::default);
        windows.state_mut(10, origin(0, 95), Default::default);
        windows.state_mut(10, origin(0, 120), Default::default);
        windows.state_mut(20, origin(0, 130), Default::default);
        windows.state_mut(20, None, Default::default);
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

    #[test]
    fn hopping_windows_each_get_every_input_they_contain() {
        let mut windows = Windows::<Vec<i64>>::new(30, 10);
        assert_eq!(
            windows.starts_containing(25).collect::<Vec<_>>(),
            [0, 10, 20]
        );
        assert_eq!(
            windows.starts_containing(-5).collect::<Vec<_>>(),
            [-30, -20, -10]
        );
        assert_eq!(windows.earliest_end(25), 30, "[0, 30) closes first");
        assert_eq!(windows.index(20) - windows.index(10), 1);
        for ts in [5, 25, 31] {
            for start in windows.starts_containing(ts).collect::<Vec<_>>() {
                windows.state_mut(start, None, Default::default).push(ts);
            }
        }
        let mut closed = Vec::new();
        while let Some(w) = windows.pop_ended_by(i64::MAX) {
            closed.push((w.start, w.end, w.state));
        }
        assert_eq!(
            closed,
            [
                (-20, 10, vec![5]),
                (-10, 20, vec![5]),
                (0, 30, vec![5, 25]),
                (10, 40, vec![25, 31]),
                (20, 50, vec![25, 31]),
                (30, 60, vec![31]),
            ]
        );
    }
}
