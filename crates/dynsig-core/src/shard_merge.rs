//! What shards (see [`crate::shard`]) publish, merged back into what one engine over all
//! keys would have published: each window's trend snapshot, and the one alert stream
//! that the metafilter groups, silences and budgets.
//!
//! Trends: exact, because every term is counted, scored and ranked by one shard only: a
//! term in the overall top k is in its own shard's top k, so the best k of all shards'
//! entries, in the one ranking order ([`crate::trend::rank_order`]), are the overall top
//! k. Every shard sees every input, so the window's event count is the same in each; its
//! distinct terms are the sum of the shards' (each counts its own).
//!
//! Alerts: each shard's lifecycle makes the messages of its own keys, which it publishes
//! itself; they reach the merge with the shard's snapshot of their window, so that a
//! window's messages are complete when its snapshot is, and go through the merge's one
//! metafilter ([`AlertStage::filter`]): its silences, groups and budgets are those of one
//! engine. Between windows the metafilter's clock follows event time as the slowest shard
//! reports it ([`ShardMerge::push_progress`]), as one engine's follows its watermark.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::alerting::AlertStage;
use crate::config::{window_name, EngineConfig, RankBy};
use crate::engine::RestoreError;
use crate::model::{Alert, EpochMs, Signal, TrendSnapshot};
use crate::routing::RoutingError;
use crate::trend::rank_order;

/// Windows whose merged snapshot went out are remembered this long (in snapshots), so
/// that a shard's snapshot delivered again (after a restart) is recognised and dropped
/// instead of starting a merge that would never complete.
const REMEMBERED: usize = 4096;

/// Event time between the metafilter's flushes between windows, as in the engine.
const FLUSH_EVERY_MS: i64 = 1_000;

/// One window emission (a window's name and start, and the revision), as shards send it.
type EmissionKey = (String, EpochMs, u32);

/// A shard's part of one window emission: its snapshot, and for a window of the main
/// view its alert messages.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ShardWindow {
    pub snapshot: TrendSnapshot,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<Alert>,
}

/// Merges shards' windows as they arrive, in any order.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct ShardMerge {
    /// The engine config, as JSON: a checkpoint restores only under the same.
    config: String,
    shards: u32,
    top_k: usize,
    rank_by: RankBy,
    /// The main view's name: its windows carry the alert messages.
    main_view: String,
    /// The metafilter (and routing) of all shards' messages.
    filter: AlertStage,
    pending: BTreeMap<EmissionKey, Pending>,
    merged: BTreeSet<EmissionKey>,
    merged_order: VecDeque<EmissionKey>,
    /// Each shard's latest reported event time (its watermark).
    progress: BTreeMap<u32, EpochMs>,
    /// The slowest shard's event time last handed out.
    clock: Option<EpochMs>,
    /// The clock at the metafilter's last flush between windows.
    flushed_at: Option<EpochMs>,
    /// The latest end of a window merged.
    latest_end: Option<EpochMs>,
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Pending {
    from: BTreeSet<u32>,
    window: ShardWindow,
}

/// What [`ShardMerge::push_window`] made of a shard's window.
#[derive(Debug, Clone, PartialEq)]
pub enum Merged {
    /// The last one of its emission: the merged snapshot, then (for the main view) the
    /// notifications and digests that the window's messages and its end released.
    Complete(Vec<Signal>),
    /// Kept until the other shards' arrive.
    Waiting,
    /// This shard's part of that emission was seen before (a redelivery): dropped.
    Repeated,
}

impl ShardMerge {
    /// The merge of `shards` shards of engines with `config`. The config's sections are
    /// assumed valid but for `routing`, checked here.
    pub fn new(shards: u32, config: &EngineConfig) -> Result<ShardMerge, RoutingError> {
        Ok(ShardMerge {
            config: serde_json::to_string(config).expect("a config serializes"),
            shards,
            top_k: config.trends.top_k,
            rank_by: config.trends.rank_by,
            main_view: window_name(config.window.size_ms, config.window.hop_ms),
            filter: AlertStage::new(config)?,
            pending: BTreeMap::new(),
            merged: BTreeSet::new(),
            merged_order: VecDeque::new(),
            progress: BTreeMap::new(),
            clock: None,
            flushed_at: None,
            latest_end: None,
        })
    }

    /// The merge's alert stage: its silences are the ones that apply.
    pub fn alerting(&self) -> &AlertStage {
        &self.filter
    }

    pub fn alerting_mut(&mut self) -> &mut AlertStage {
        &mut self.filter
    }

    /// Adds shard `shard`'s part of one window emission.
    pub fn push_window(&mut self, shard: u32, window: ShardWindow) -> Merged {
        let snapshot = &window.snapshot;
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
                combine(&mut pending.window, window);
                pending
            }
            None => self.pending.entry(key.clone()).or_insert(Pending {
                from: BTreeSet::from([shard]),
                window,
            }),
        };
        if pending.from.len() < self.shards as usize {
            return Merged::Waiting;
        }
        let mut window = self.pending.remove(&key).expect("just found").window;
        let rank_by = self.rank_by;
        window.snapshot.entries.sort_by(|a, b| {
            rank_order(
                rank_by,
                (a.score, a.count, &a.term, a.kind),
                (b.score, b.count, &b.term, b.kind),
            )
        });
        window.snapshot.entries.truncate(self.top_k);
        let end = window.snapshot.window_end;
        self.latest_end = Some(self.latest_end.map_or(end, |latest| latest.max(end)));
        self.remember(key);
        let main = window.snapshot.window == self.main_view;
        let mut signals = vec![Signal::Trend(window.snapshot)];
        if main {
            self.filter.filter(window.alerts, end, &mut signals);
        }
        Merged::Complete(signals)
    }

    /// Shard `shard`'s event time reached `watermark`. Once every shard has reported,
    /// the metafilter's clock moves to the slowest one's (every window that ended by then
    /// was merged: a shard reports its progress after its windows), and the notifications
    /// that releases are returned.
    pub fn push_progress(&mut self, shard: u32, watermark: EpochMs) -> Vec<Signal> {
        let latest = self.progress.entry(shard).or_insert(watermark);
        *latest = (*latest).max(watermark);
        let mut signals = Vec::new();
        if self.progress.len() < self.shards as usize {
            return signals;
        }
        let slowest = *self.progress.values().min().expect("every shard reported");
        if self.clock.is_some_and(|clock| clock >= slowest) {
            return signals;
        }
        self.clock = Some(slowest);
        // As one engine does (`Engine::poll_closed`): grouping waits are seconds long.
        if self
            .flushed_at
            .is_none_or(|at| slowest >= at.saturating_add(FLUSH_EVERY_MS))
        {
            self.flushed_at = Some(slowest);
            self.filter.flush(slowest, &mut signals);
        }
        signals
    }

    /// The end of a finite input, every shard's last window merged: what waits for its
    /// group goes out (as `Engine::finish` does).
    pub fn finish(&mut self) -> Vec<Signal> {
        let mut signals = Vec::new();
        if let Some(end) = self.clock.max(self.latest_end) {
            self.filter
                .flush(end.saturating_add(1_000_000_000), &mut signals);
        }
        signals
    }

    /// Emissions still waiting for some shard's snapshot.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    /// Writes the merge's whole state (windows waiting, the windows merged lately, the
    /// shards' progress, the metafilter with its silences) as CBOR, for a checkpoint.
    pub fn save_into<W: std::io::Write>(&self, out: W) -> std::io::Result<()> {
        crate::engine::encode_state(self, out)
    }

    /// Replaces the state with a saved one, if saved by a merge of the same shards and
    /// config (the same check as the engine's: another config refuses it).
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), RestoreError> {
        let saved: ShardMerge =
            ciborium::from_reader(bytes).map_err(|e| RestoreError::Decode(e.to_string()))?;
        if (saved.shards, &saved.config) != (self.shards, &self.config) {
            return Err(RestoreError::ConfigChanged);
        }
        *self = saved;
        Ok(())
    }

    /// The windows of a shard's signals (as one poll returned them), each snapshot with
    /// the alert messages that follow it, and the signals the shard publishes itself
    /// (anomalies, co-mention graphs and its alert messages, unfiltered).
    pub fn split_by_window(signals: Vec<Signal>) -> (Vec<ShardWindow>, Vec<Signal>) {
        let (mut windows, mut published) = (Vec::<ShardWindow>::new(), Vec::new());
        for signal in signals {
            match signal {
                Signal::Trend(snapshot) => windows.push(ShardWindow {
                    snapshot,
                    alerts: Vec::new(),
                }),
                Signal::Alert(alert) => {
                    // A window's messages come right after its snapshot (`Engine::poll_closed`).
                    let window = windows.last_mut().expect("alert messages follow a window");
                    window.alerts.push(alert.clone());
                    published.push(Signal::Alert(alert));
                }
                other => published.push(other),
            }
        }
        (windows, published)
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

/// Folds one more shard's part of the same emission into `into`.
fn combine(into: &mut ShardWindow, from: ShardWindow) {
    let (snapshot, from_snapshot) = (&mut into.snapshot, from.snapshot);
    snapshot.events = snapshot.events.max(from_snapshot.events);
    snapshot.distinct_terms += from_snapshot.distinct_terms;
    snapshot.is_final &= from_snapshot.is_final;
    snapshot.entries.extend(from_snapshot.entries);
    into.alerts.extend(from.alerts);
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

    fn window(start: EpochMs, distinct: u64, entries: Vec<TrendEntry>) -> ShardWindow {
        ShardWindow {
            snapshot: TrendSnapshot {
                window: "1m".into(),
                window_start: start,
                window_end: start + 60_000,
                revision: 1,
                is_final: true,
                events: 100,
                distinct_terms: distinct,
                entries,
            },
            alerts: Vec::new(),
        }
    }

    fn merge(shards: u32, top_k: usize) -> ShardMerge {
        let mut config = EngineConfig::default();
        config.trends.top_k = top_k;
        ShardMerge::new(shards, &config).unwrap()
    }

    /// The merged snapshot of a complete emission.
    fn snapshot(merged: Merged) -> TrendSnapshot {
        match merged {
            Merged::Complete(signals) => match signals.into_iter().next() {
                Some(Signal::Trend(snapshot)) => snapshot,
                other => panic!("the snapshot first, got {other:?}"),
            },
            other => panic!("not complete: {other:?}"),
        }
    }

    #[test]
    fn the_best_k_of_all_shards_in_ranking_order() {
        let mut merge = merge(2, 3);
        let a = window(0, 10, vec![entry("fire", 9, 8.0), entry("acme", 5, 2.0)]);
        let b = window(
            0,
            7,
            vec![
                entry("recall", 7, 8.0),
                entry("battery", 6, 3.0),
                entry("x", 2, 1.0),
            ],
        );
        assert_eq!(merge.push_window(1, b), Merged::Waiting);
        let merged = snapshot(merge.push_window(0, a));
        let terms: Vec<&str> = merged.entries.iter().map(|e| e.term.as_str()).collect();
        // Equal scores: the higher count first.
        assert_eq!(terms, ["fire", "recall", "battery"]);
        assert_eq!((merged.events, merged.distinct_terms), (100, 17));
        assert_eq!(merge.waiting(), 0);
    }

    #[test]
    fn windows_merge_apart_and_a_repeated_part_is_dropped() {
        let mut merge = merge(2, 20);
        assert_eq!(merge.push_window(0, window(0, 1, vec![])), Merged::Waiting);
        assert_eq!(
            merge.push_window(0, window(60_000, 1, vec![])),
            Merged::Waiting
        );
        assert_eq!(merge.push_window(0, window(0, 1, vec![])), Merged::Repeated);
        let late = snapshot(merge.push_window(1, window(60_000, 1, vec![])));
        assert_eq!(late.window_start, 60_000);
        assert_eq!(
            snapshot(merge.push_window(1, window(0, 1, vec![]))).window_start,
            0
        );
        // Redelivered after its merge went out.
        assert_eq!(merge.push_window(1, window(0, 1, vec![])), Merged::Repeated);
        assert_eq!(merge.waiting(), 0);
    }

    #[test]
    fn a_saved_merge_restores_only_under_the_same_config() {
        let mut saved = merge(2, 20);
        assert_eq!(saved.push_window(0, window(0, 1, vec![])), Merged::Waiting);
        let mut bytes = Vec::new();
        saved.save_into(&mut bytes).unwrap();
        let mut restored = merge(2, 20);
        restored.restore(&bytes).unwrap();
        assert_eq!(restored.waiting(), 1);
        assert!(matches!(
            restored.push_window(1, window(0, 1, vec![])),
            Merged::Complete(_)
        ));
        for mut other in [merge(3, 20), merge(2, 10)] {
            assert!(matches!(
                other.restore(&bytes),
                Err(RestoreError::ConfigChanged)
            ));
        }
    }

    #[test]
    fn the_filter_clock_is_the_slowest_shard_once_all_have_reported() {
        let mut merge = merge(2, 20);
        let now = |merge: &ShardMerge| merge.alerting().now();
        merge.push_progress(0, 5_000);
        assert_eq!(now(&merge), EpochMs::MIN, "shard 1 has not reported");
        merge.push_progress(1, 3_000);
        assert_eq!(now(&merge), 3_000);
        merge.push_progress(1, 2_000);
        assert_eq!(now(&merge), 3_000, "never backwards");
        merge.push_progress(0, 9_000);
        assert_eq!(now(&merge), 3_000, "shard 1 is still at 3 s");
        merge.push_progress(1, 8_000);
        assert_eq!(now(&merge), 8_000);
        merge.push_progress(0, 10_000);
        merge.push_progress(1, 8_500);
        assert_eq!(now(&merge), 8_000, "a flush per second of event time");
        merge.push_progress(1, 9_000);
        assert_eq!(now(&merge), 9_000);
    }
}
