//! Trending terms: per-term EWMA baselines of per-window counts, and a Poisson-style
//! z-score ranking of each closed window against them.
//!
//! Cost model: closing a window touches only the terms counted in it. Baselines of absent
//! terms are decayed lazily: each stores its level and the index of the window it was last
//! updated in, and `(1 − alpha)^gap` is applied when it is next read (a term absent from a
//! window had count 0 there, and the EWMA of zeros is exactly that decay). Baselines that
//! have decayed to ~0 are pruned when the map has doubled since the last pruning, so
//! memory follows the recent vocabulary at amortized O(1) cost per new term.
//!
//! Score: `z = (count − baseline) / sqrt(baseline + SCORE_VARIANCE_FLOOR)`. Counts of a
//! term in a window are roughly Poisson, whose variance equals its mean, so the baseline
//! is the variance estimate; the floor of 1 keeps terms with a baseline near 0 from
//! scoring infinitely (from 0, a count of n scores n).

use std::collections::HashMap;

use crate::config::TrendConfig;
use crate::model::{TermKind, TrendEntry};

/// Added to the baseline under the square root (see the module docs).
pub const SCORE_VARIANCE_FLOOR: f64 = 1.0;
/// Baselines below this (after decay) are forgotten; a term seen again starts as new.
const PRUNE_BELOW: f64 = 0.01;
/// Pruning never runs on maps smaller than this: not worth a pass.
const MIN_PRUNE_LEN: usize = 1024;

/// A map keyed by term (kind, text) that can be looked up by `&str` without allocating:
/// one `HashMap<String, V>` per kind. Used for per-window counts and for baselines.
#[derive(Debug, Clone)]
pub struct TermMap<V> {
    by_kind: [HashMap<String, V>; KINDS.len()],
}

/// By hand: the derive would require `V: Default`, which an empty map does not need.
impl<V> Default for TermMap<V> {
    fn default() -> Self {
        TermMap {
            by_kind: std::array::from_fn(|_| HashMap::new()),
        }
    }
}

/// Per-window occurrence counts of terms.
pub type TermCounts = TermMap<u64>;

const KINDS: [TermKind; 5] = [
    TermKind::Word,
    TermKind::Hashtag,
    TermKind::Cashtag,
    TermKind::Mention,
    TermKind::Actor,
];

fn kind_index(kind: TermKind) -> usize {
    match kind {
        TermKind::Word => 0,
        TermKind::Hashtag => 1,
        TermKind::Cashtag => 2,
        TermKind::Mention => 3,
        TermKind::Actor => 4,
    }
}

impl<V> TermMap<V> {
    pub fn get(&self, kind: TermKind, text: &str) -> Option<&V> {
        self.by_kind[kind_index(kind)].get(text)
    }

    /// The value of a term, inserted as `V::default()` if absent.
    pub fn get_or_default(&mut self, kind: TermKind, text: &str) -> &mut V
    where
        V: Default,
    {
        self.get_or_insert_with(kind, text, V::default)
    }

    /// The value of a term, inserted as `new()` if absent (the only allocation: the key).
    pub fn get_or_insert_with(
        &mut self,
        kind: TermKind,
        text: &str,
        new: impl FnOnce() -> V,
    ) -> &mut V {
        let map = &mut self.by_kind[kind_index(kind)];
        if !map.contains_key(text) {
            map.insert(text.to_owned(), new());
        }
        map.get_mut(text).expect("inserted above")
    }

    pub fn iter(&self) -> impl Iterator<Item = (TermKind, &str, &V)> {
        KINDS
            .iter()
            .zip(&self.by_kind)
            .flat_map(|(&kind, map)| map.iter().map(move |(text, v)| (kind, text.as_str(), v)))
    }

    pub fn len(&self) -> usize {
        self.by_kind.iter().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_kind.iter().all(HashMap::is_empty)
    }

    fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) {
        for map in &mut self.by_kind {
            map.retain(|_, v| keep(v));
        }
    }
}

/// A term's score in the window just closed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TermScore {
    pub count: u64,
    /// The baseline the count was compared with (before this window updated it).
    pub baseline: f64,
    pub score: f64,
}

#[derive(Debug, Clone)]
struct Baseline {
    /// EWMA level as of the end of window `updated_window`.
    level: f64,
    updated_window: i64,
    /// How the term scored in `updated_window`.
    last: TermScore,
}

impl Baseline {
    /// The level after window `window` (≥ `updated_window`): the windows in between had
    /// count 0, and an EWMA fed zeros decays by `decay` per window.
    fn level_at_end_of(&self, window: i64, decay: f64) -> f64 {
        let gap = (window - self.updated_window).clamp(0, i64::from(i32::MAX));
        self.level * decay.powi(gap as i32)
    }
}

/// Per-term baselines and the ranking of closed windows.
#[derive(Debug, Clone)]
pub struct TrendDetector {
    config: TrendConfig,
    baselines: TermMap<Baseline>,
    windows_closed: u64,
    last_window: Option<i64>,
    prune_at_len: usize,
}

impl TrendDetector {
    /// The config is assumed valid (the engine validates it).
    pub fn new(config: &TrendConfig) -> Self {
        TrendDetector {
            config: config.clone(),
            baselines: TermMap::default(),
            windows_closed: 0,
            last_window: None,
            prune_at_len: MIN_PRUNE_LEN,
        }
    }

    /// Scores the counts of the window with index `window_index` (windows must close in
    /// increasing index order), updates the baselines, and returns the top entries: count
    /// ≥ `min_count`, score > 0, ranked by score, then count (desc), then term.
    ///
    /// During the first `warmup_windows` windows nothing is ranked, and a new term's
    /// baseline starts at its count instead of `new_term_prior`: at startup every term is
    /// "new", and ranking the whole vocabulary as trending would flood the alerts.
    pub fn close_window(&mut self, window_index: i64, counts: &TermCounts) -> Vec<TrendEntry> {
        let warming_up = self.windows_closed < u64::from(self.config.warmup_windows);
        let decay = 1.0 - self.config.baseline_alpha;
        let mut candidates: Vec<(TermKind, &str, TermScore)> = Vec::new();
        for (kind, text, &count) in counts.iter() {
            let baseline = self.baselines.get_or_insert_with(kind, text, || Baseline {
                level: if warming_up {
                    count as f64
                } else {
                    self.config.new_term_prior
                },
                // The prior stands for the level before this window.
                updated_window: window_index - 1,
                last: TermScore {
                    count: 0,
                    baseline: 0.0,
                    score: 0.0,
                },
            });
            let prior = baseline.level_at_end_of(window_index - 1, decay);
            let score = TermScore {
                count,
                baseline: prior,
                score: poisson_z(count as f64, prior),
            };
            baseline.level = prior + self.config.baseline_alpha * (count as f64 - prior);
            baseline.updated_window = window_index;
            baseline.last = score;
            if !warming_up && count >= self.config.min_count && score.score > 0.0 {
                candidates.push((kind, text, score));
            }
        }
        self.windows_closed += 1;
        self.last_window = Some(window_index);
        self.prune_if_grown(window_index);
        top_entries(candidates, self.config.top_k)
    }

    /// The score of a term in the window closed last; `None` when it did not occur there.
    pub fn last_score(&self, kind: TermKind, text: &str) -> Option<TermScore> {
        let baseline = self.baselines.get(kind, text)?;
        (Some(baseline.updated_window) == self.last_window).then_some(baseline.last)
    }

    /// Terms with a baseline (for memory accounting).
    pub fn vocabulary(&self) -> usize {
        self.baselines.len()
    }

    fn prune_if_grown(&mut self, window_index: i64) {
        if self.baselines.len() < self.prune_at_len {
            return;
        }
        let decay = 1.0 - self.config.baseline_alpha;
        self.baselines.retain(|b| {
            b.updated_window == window_index
                || b.level_at_end_of(window_index, decay) >= PRUNE_BELOW
        });
        self.prune_at_len = MIN_PRUNE_LEN.max(2 * self.baselines.len());
    }
}

/// Poisson-style z-score of `count` against `baseline` (see the module docs).
pub fn poisson_z(count: f64, baseline: f64) -> f64 {
    (count - baseline) / (baseline + SCORE_VARIANCE_FLOOR).sqrt()
}

fn top_entries(mut candidates: Vec<(TermKind, &str, TermScore)>, top_k: usize) -> Vec<TrendEntry> {
    let rank = |a: &(TermKind, &str, TermScore), b: &(TermKind, &str, TermScore)| {
        b.2.score
            .total_cmp(&a.2.score)
            .then(b.2.count.cmp(&a.2.count))
            .then(a.1.cmp(b.1))
            .then(a.0.cmp(&b.0))
    };
    if top_k == 0 {
        return Vec::new();
    }
    // Partition first: a window can hold tens of thousands of candidates for 20 slots.
    if candidates.len() > top_k {
        candidates.select_nth_unstable_by(top_k - 1, rank);
        candidates.truncate(top_k);
    }
    candidates.sort_unstable_by(rank);
    candidates
        .into_iter()
        .map(|(kind, text, s)| TrendEntry {
            term: text.to_owned(),
            kind,
            count: s.count,
            baseline: s.baseline,
            score: s.score,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TrendConfig {
        TrendConfig {
            top_k: 3,
            min_count: 5,
            baseline_alpha: 0.3,
            new_term_prior: 1.0,
            alert_score: 8.0,
            warmup_windows: 2,
        }
    }

    fn counts(items: &[(TermKind, &str, u64)]) -> TermCounts {
        let mut counts = TermCounts::default();
        for &(kind, text, n) in items {
            *counts.get_or_default(kind, text) += n;
        }
        counts
    }

    const STEADY: [(TermKind, &str, u64); 3] = [
        (TermKind::Word, "rocket", 100),
        (TermKind::Word, "launch", 40),
        (TermKind::Hashtag, "#space", 20),
    ];

    #[test]
    fn term_map_separates_kinds() {
        let c = counts(&[
            (TermKind::Word, "fire", 2),
            (TermKind::Hashtag, "fire", 3),
            (TermKind::Word, "fire", 1),
        ]);
        assert_eq!(c.get(TermKind::Word, "fire"), Some(&3));
        assert_eq!(c.get(TermKind::Hashtag, "fire"), Some(&3));
        assert_eq!(c.get(TermKind::Mention, "fire"), None);
        assert_eq!(c.len(), 2);
        let mut all: Vec<_> = c.iter().map(|(k, t, n)| (k, t.to_owned(), *n)).collect();
        all.sort();
        assert_eq!(
            all,
            [
                (TermKind::Word, "fire".into(), 3),
                (TermKind::Hashtag, "fire".into(), 3)
            ]
        );
        for (i, kind) in KINDS.iter().enumerate() {
            assert_eq!(kind_index(*kind), i);
        }
    }

    #[test]
    fn steady_terms_score_about_zero_and_planted_burst_ranks_first() {
        let mut detector = TrendDetector::new(&config());
        for w in 0..2 {
            assert!(
                detector.close_window(w, &counts(&STEADY)).is_empty(),
                "warmup ranks nothing"
            );
        }
        for w in 2..10 {
            let entries = detector.close_window(w, &counts(&STEADY));
            assert!(
                entries.is_empty(),
                "steady terms ranked in window {w}: {entries:?}"
            );
            assert!(
                detector
                    .last_score(TermKind::Word, "rocket")
                    .unwrap()
                    .score
                    .abs()
                    < 1e-9
            );
        }
        let mut burst = STEADY.to_vec();
        burst.push((TermKind::Hashtag, "#acmefire", 340));
        burst.push((TermKind::Word, "smoke", 30));
        burst[0].2 = 103; // a little noise on a steady term
        let entries = detector.close_window(10, &counts(&burst));
        let ranked: Vec<_> = entries.iter().map(|e| e.term.as_str()).collect();
        assert_eq!(ranked, ["#acmefire", "smoke", "rocket"]);
        let top = &entries[0];
        assert_eq!(
            (top.kind, top.count, top.baseline),
            (TermKind::Hashtag, 340, 1.0)
        );
        assert!((top.score - 339.0 / 2f64.sqrt()).abs() < 1e-9);
        assert!(
            entries[2].score < 0.5,
            "noise scores low: {}",
            entries[2].score
        );
    }

    #[test]
    fn ties_break_by_count_then_term_and_min_count_applies() {
        let config = TrendConfig {
            top_k: 10,
            warmup_windows: 0,
            ..config()
        };
        let mut detector = TrendDetector::new(&config);
        // New terms share the prior, so equal counts tie on score.
        let entries = detector.close_window(
            0,
            &counts(&[
                (TermKind::Word, "beta", 9),
                (TermKind::Word, "alpha", 9),
                (TermKind::Word, "big", 12),
                (TermKind::Word, "few", 4),
            ]),
        );
        let ranked: Vec<_> = entries.iter().map(|e| (e.term.as_str(), e.count)).collect();
        assert_eq!(ranked, [("big", 12), ("alpha", 9), ("beta", 9)]);
    }

    #[test]
    fn top_k_truncates_and_zero_means_empty() {
        let many: Vec<(TermKind, String, u64)> = (0..50)
            .map(|i| (TermKind::Word, format!("t{i:02}"), 10 + i))
            .collect();
        let mut c = TermCounts::default();
        for (kind, text, n) in &many {
            *c.get_or_default(*kind, text) = *n;
        }
        let mut detector = TrendDetector::new(&TrendConfig {
            warmup_windows: 0,
            ..config()
        });
        let entries = detector.close_window(0, &c);
        let ranked: Vec<_> = entries.iter().map(|e| e.term.as_str()).collect();
        assert_eq!(ranked, ["t49", "t48", "t47"]);
        let mut none = TrendDetector::new(&TrendConfig {
            warmup_windows: 0,
            top_k: 0,
            ..config()
        });
        assert!(none.close_window(0, &c).is_empty());
    }

    #[test]
    fn baselines_decay_lazily_across_gaps() {
        let mut detector = TrendDetector::new(&TrendConfig {
            warmup_windows: 0,
            ..config()
        });
        let fire = [(TermKind::Hashtag, "#fire", 100)];
        detector.close_window(0, &counts(&fire)); // level = 1 + 0.3 * 99 = 30.7
        detector.close_window(1, &counts(&[(TermKind::Word, "other", 1)]));
        assert_eq!(
            detector.last_score(TermKind::Hashtag, "#fire"),
            None,
            "absent from the last window"
        );
        detector.close_window(3, &counts(&fire)); // windows 1 and 2 had no #fire
        let seen = detector.last_score(TermKind::Hashtag, "#fire").unwrap();
        assert!(
            (seen.baseline - 30.7 * 0.7f64.powi(2)).abs() < 1e-9,
            "{seen:?}"
        );
        assert_eq!(seen.count, 100);
    }

    #[test]
    fn decayed_baselines_are_pruned_once_the_map_doubled() {
        let vocabulary = |prefix: &str| {
            let mut c = TermCounts::default();
            for i in 0..MIN_PRUNE_LEN {
                *c.get_or_default(TermKind::Word, &format!("{prefix}{i}")) = 1;
            }
            c
        };
        let mut detector = TrendDetector::new(&TrendConfig {
            warmup_windows: 0,
            ..config()
        });
        detector.close_window(0, &vocabulary("old"));
        detector.close_window(1, &counts(&[(TermKind::Word, "old0", 1)]));
        assert_eq!(detector.vocabulary(), MIN_PRUNE_LEN, "nothing decayed yet");
        // Long after, a new vocabulary doubles the map and triggers pruning: all old terms
        // (including `old0`, seen once more in window 1) have decayed to ~0 and go.
        detector.close_window(100, &vocabulary("new"));
        assert_eq!(detector.vocabulary(), MIN_PRUNE_LEN);
        assert!(detector.last_score(TermKind::Word, "new7").is_some());
    }
}
