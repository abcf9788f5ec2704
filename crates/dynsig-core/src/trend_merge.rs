//! The trend snapshot of a window, merged from the snapshots its shards published (see
//! [`crate::shard`]): the same snapshot one engine over all keys would have published.
//!
//! Exact, because every term is counted, scored and ranked by one shard only: a term in
//! the overall top k is in its own shard's top k, so the best k of all shards' entries,
//! in the one ranking order ([`crate::trend::rank_order`]), are the overall top k. Every
//! shard sees every input, so the window's event count is the same in each; its distinct
//! terms are the sum of the shards' (each counts its own).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::config::{RankBy, TrendConfig};
use crate::model::{EpochMs, TrendSnapshot};
use crate::trend::rank_order;

/// Windows whose merged snapshot went out are remembered this long (in snapshots), so
/// that a shard's snapshot delivered again (after a restart) is recognised and dropped
/// instead of starting a merge that would never complete.
const REMEMBERED: usize = 4096;

/// One window emission (a window's name and start, and the revision), as shards send it.
type EmissionKey = (String, EpochMs, u32);

/// Merges shards' snapshots, window by window, as they arrive in any order.
#[derive(Debug, Clone)]
pub struct TrendMerge {
    shards: u32,
    top_k: usize,
    rank_by: RankBy,
    pending: BTreeMap<EmissionKey, Pending>,
    merged: BTreeSet<EmissionKey>,
    merged_order: VecDeque<EmissionKey>,
}

#[derive(Debug, Clone)]
struct Pending {
    from: BTreeSet<u32>,
    snapshot: TrendSnapshot,
}

/// What [`TrendMerge::push`] made of a shard's snapshot.
#[derive(Debug, Clone, PartialEq)]
pub enum Merged {
    /// The last one of its window: the merged snapshot.
    Complete(TrendSnapshot),
    /// Kept until the other shards' arrive.
    Waiting,
    /// This shard's snapshot of that emission was seen before (a redelivery): dropped.
    Repeated,
}

impl TrendMerge {
    pub fn new(shards: u32, config: &TrendConfig) -> TrendMerge {
        TrendMerge {
            shards,
            top_k: config.top_k,
            rank_by: config.rank_by,
            pending: BTreeMap::new(),
            merged: BTreeSet::new(),
            merged_order: VecDeque::new(),
        }
    }

    /// Adds shard `shard`'s snapshot of one window emission.
    pub fn push(&mut self, shard: u32, snapshot: TrendSnapshot) -> Merged {
        let key = (
            snapshot.window.clone(),
            snapshot.window_start,
            snapshot.revision,
        );
        if self.merged.contains(&key) {
            return Merged::Repeated;
        }
        let pending = match self.pending.get_mut(&key) {
            Some(pending) => {
                if !pending.from.insert(shard) {
                    return Merged::Repeated;
                }
                combine(&mut pending.snapshot, snapshot);
                pending
            }
            None => self.pending.entry(key.clone()).or_insert(Pending {
                from: BTreeSet::from([shard]),
                snapshot,
            }),
        };
        if pending.from.len() < self.shards as usize {
            return Merged::Waiting;
        }
        let mut snapshot = self.pending.remove(&key).expect("just found").snapshot;
        let rank_by = self.rank_by;
        snapshot.entries.sort_by(|a, b| {
            rank_order(
                rank_by,
                (a.score, a.count, &a.term, a.kind),
                (b.score, b.count, &b.term, b.kind),
            )
        });
        snapshot.entries.truncate(self.top_k);
        self.remember(key);
        Merged::Complete(snapshot)
    }

    /// Emissions still waiting for some shard's snapshot.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    fn remember(&mut self, key: EmissionKey) {
        if self.merged_order.len() == REMEMBERED {
            if let Some(oldest) = self.merged_order.pop_front() {
                self.merged.remove(&oldest);
            }
        }
        self.merged.insert(key.clone());
        self.merged_order.push_back(key);
    }
}

/// Folds one more shard's snapshot of the same emission into `into`.
fn combine(into: &mut TrendSnapshot, from: TrendSnapshot) {
    into.events = into.events.max(from.events);
    into.distinct_terms += from.distinct_terms;
    into.is_final &= from.is_final;
    into.entries.extend(from.entries);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{TermKind, TrendEntry, TrendStatus};

    fn entry(term: &str, count: u64, score: f64) -> TrendEntry {
        TrendEntry {
            term: term.into(),
            kind: TermKind::Word,
            count,
            authors: count,
            baseline: 1.0,
            score,
            status: TrendStatus::Rising,
            examples: Vec::new(),
            count_error: 0,
            actor: None,
        }
    }

    fn snapshot(start: EpochMs, distinct: u64, entries: Vec<TrendEntry>) -> TrendSnapshot {
        TrendSnapshot {
            window: "1m".into(),
            window_start: start,
            window_end: start + 60_000,
            revision: 1,
            is_final: true,
            events: 100,
            distinct_terms: distinct,
            entries,
        }
    }

    fn config(top_k: usize) -> TrendConfig {
        TrendConfig {
            top_k,
            ..TrendConfig::default()
        }
    }

    #[test]
    fn the_best_k_of_all_shards_in_ranking_order() {
        let mut merge = TrendMerge::new(2, &config(3));
        let a = snapshot(0, 10, vec![entry("fire", 9, 8.0), entry("acme", 5, 2.0)]);
        let b = snapshot(
            0,
            7,
            vec![
                entry("recall", 7, 8.0),
                entry("battery", 6, 3.0),
                entry("x", 2, 1.0),
            ],
        );
        assert_eq!(merge.push(1, b), Merged::Waiting);
        let Merged::Complete(merged) = merge.push(0, a) else {
            panic!("both shards are in");
        };
        let terms: Vec<&str> = merged.entries.iter().map(|e| e.term.as_str()).collect();
        // Equal scores: the higher count first.
        assert_eq!(terms, ["fire", "recall", "battery"]);
        assert_eq!((merged.events, merged.distinct_terms), (100, 17));
        assert_eq!(merge.waiting(), 0);
    }

    #[test]
    fn windows_merge_apart_and_a_repeated_snapshot_is_dropped() {
        let mut merge = TrendMerge::new(2, &config(20));
        assert_eq!(merge.push(0, snapshot(0, 1, vec![])), Merged::Waiting);
        assert_eq!(merge.push(0, snapshot(60_000, 1, vec![])), Merged::Waiting);
        assert_eq!(merge.push(0, snapshot(0, 1, vec![])), Merged::Repeated);
        assert!(matches!(
            merge.push(1, snapshot(60_000, 1, vec![])),
            Merged::Complete(s) if s.window_start == 60_000
        ));
        assert!(matches!(
            merge.push(1, snapshot(0, 1, vec![])),
            Merged::Complete(s) if s.window_start == 0
        ));
        // Redelivered after its merge went out.
        assert_eq!(merge.push(1, snapshot(0, 1, vec![])), Merged::Repeated);
        assert_eq!(merge.waiting(), 0);
    }
}
