//! Trending terms: per-term EWMA baselines of per-window counts, and a Poisson-style
//! z-score ranking of each window against them.
//!
//! What is scored is the term's *author-capped* count: `min(count, author_cap × distinct
//! authors)` (`trends.author_cap`, default 1: distinct authors). One account posting a
//! term 500 times counts once, so it cannot make a trend; a term many people use keeps
//! its full weight. The baseline is kept in the same unit. A ranked term also needs
//! `trends.min_count` occurrences and `trends.min_authors` distinct authors.
//!
//! Score: `z = (scored − baseline) / sqrt(baseline × (1 + u) + SCORE_VARIANCE_FLOOR)`.
//! Counts of a term in a window are roughly Poisson, whose variance equals its mean, so
//! the baseline is the variance estimate; the floor of 1 keeps terms with a baseline near
//! 0 from scoring infinitely (from 0, a count of n scores n). `u × baseline` is the
//! variance of the baseline itself: a level learned from n windows is uncertain by
//! `baseline / n`, and an EWMA never gets better than `alpha / (2 − alpha)` of it. Without
//! it, terms whose baseline came from one or two quiet windows (at startup, or just after
//! they appeared) look like trends at their first ordinary window. A term never seen
//! starts from `trends.new_term_prior`, taken as certain: it is the model, not a sample.
//!
//! A trend that ramps up over two windows is clearer in their sum than in either: after
//! its first window the baseline has already learned part of the rise. So when the term
//! was also counted in the previous window, the same z-score is computed for the sum of
//! both windows against twice the baseline from before them, and the entry's score is the
//! higher of the two (a Poisson sum is Poisson, so the scales match).
//!
//! Cost and memory: closing a window touches only the terms counted in it. Baselines of
//! absent terms are decayed lazily: each stores its level and the index of the window it
//! was last updated in, and `(1 − alpha)^gap` is applied when it is next read (a term
//! absent from a window had count 0 there, and the EWMA of zeros is exactly that decay).
//! A new term whose scored count does not exceed the prior gets no baseline (it would
//! hold the prior anyway): the long tail of words seen once costs nothing. Baselines that
//! decayed to ~0 are pruned whenever the map has doubled since the last pruning, and
//! beyond `trends.max_baselines` the lowest levels go first, so memory is bounded.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::config::{RankBy, TrendConfig};
use crate::heavy_hitters::Counted;
use crate::model::{TermKind, TrendEntry, TrendStatus};
use crate::term_key::split_key;
use crate::term_table::TermTable;
use crate::window_terms::{TermStats, WindowTerms};

/// Added to the baseline under the square root (see the module docs).
pub const SCORE_VARIANCE_FLOOR: f64 = 1.0;
/// Baselines below this (after decay) are forgotten; a term seen again starts as new.
const PRUNE_BELOW: f64 = 0.01;
/// Pruning never runs on maps smaller than this: not worth a pass.
const MIN_PRUNE_LEN: usize = 1024;

/// A term's score in the window just closed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TermScore {
    /// Occurrences.
    pub count: u64,
    /// The baseline the (author-capped) count was compared with, before this window
    /// updated it.
    pub baseline: f64,
    pub score: f64,
}

/// Kept per live term, so kept small (40 bytes): what only explains a past score is
/// stored in single precision. In a checkpoint it is a tuple, not a map: a million of
/// them would otherwise repeat their field names a million times.
#[derive(Debug, Clone)]
struct Baseline {
    /// EWMA level as of the end of window `updated_window`.
    level: f64,
    updated_window: i64,
    /// How the term scored in `updated_window`: its count, the level before it, its score.
    last_count: u32,
    last_baseline: f32,
    last_score: f32,
    /// The author-capped count of `updated_window`.
    last_scored: f32,
    /// Windows whose counts the level has learned (saturating).
    windows_seen: u32,
}

/// [`Baseline`]'s fields in order, as written to a checkpoint.
type BaselineTuple = (f64, i64, u32, f32, f32, f32, u32);

impl Serialize for Baseline {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let tuple: BaselineTuple = (
            self.level,
            self.updated_window,
            self.last_count,
            self.last_baseline,
            self.last_score,
            self.last_scored,
            self.windows_seen,
        );
        tuple.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Baseline {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (
            level,
            updated_window,
            last_count,
            last_baseline,
            last_score,
            last_scored,
            windows_seen,
        ) = BaselineTuple::deserialize(deserializer)?;
        Ok(Baseline {
            level,
            updated_window,
            last_count,
            last_baseline,
            last_score,
            last_scored,
            windows_seen,
        })
    }
}

impl Baseline {
    /// The level after window `window` (≥ `updated_window`): the windows in between had
    /// count 0, and an EWMA fed zeros decays by `decay` per window.
    fn level_at_end_of(&self, window: i64, decay: f64) -> f64 {
        let gap = (window - self.updated_window).clamp(0, i64::from(i32::MAX));
        self.level * decay.powi(gap as i32)
    }

    /// Occurrences in window `window` if it is the one last updated, else 0.
    fn count_in(&self, window: i64) -> u64 {
        if self.updated_window == window {
            u64::from(self.last_count)
        } else {
            0
        }
    }

    fn last(&self) -> TermScore {
        TermScore {
            count: u64::from(self.last_count),
            baseline: f64::from(self.last_baseline),
            score: f64::from(self.last_score),
        }
    }
}

/// A term of the window being scored, before ranking.
struct Candidate<'w> {
    counted: Counted<'w, TermStats>,
    authors: Option<u64>,
    score: TermScore,
    status: TrendStatus,
}

/// What a term's past says about the window being scored.
struct Prior {
    /// Expected scored count in this window.
    level: f64,
    /// Relative variance of `level` (see the module docs).
    uncertainty: f64,
    /// Occurrences in the previous window.
    previous_count: u64,
    /// When the term was counted in the previous window: its scored count there, and the
    /// level before it with its uncertainty.
    previous: Option<(f64, f64, f64)>,
    /// Windows the baseline has learned, this one not included (0: no baseline, the
    /// term is new).
    windows_seen: u32,
}

impl Prior {
    /// The score of `scored` in this window: the higher of its one-window z-score and the
    /// two-window one (see the module docs).
    fn score(&self, scored: f64) -> f64 {
        let one = z_score(scored, self.level, self.uncertainty);
        match self.previous {
            Some((previous_scored, level_before, uncertainty)) => one.max(z_score(
                scored + previous_scored,
                2.0 * level_before,
                uncertainty,
            )),
            None => one,
        }
    }
}

/// Per-term baselines and the ranking of windows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrendDetector {
    config: TrendConfig,
    baselines: TermTable<Baseline>,
    windows_closed: u64,
    last_window: Option<i64>,
    prune_at_len: usize,
    /// The counts of the window closed last, kept only without baselines
    /// (`trends.baselines = false`): they alone give the status of the next window's terms.
    previous: Option<WindowTerms>,
}

impl TrendDetector {
    /// The config is assumed valid (the engine validates it).
    pub fn new(config: &TrendConfig) -> Self {
        TrendDetector {
            config: config.clone(),
            baselines: TermTable::default(),
            windows_closed: 0,
            last_window: None,
            prune_at_len: MIN_PRUNE_LEN,
            previous: None,
        }
    }

    /// Scores the terms of the closed window with index `window_index` (windows must
    /// close in increasing index order), updates the baselines, and returns the top
    /// entries (see [`RankBy`]).
    ///
    /// During the first `warmup_windows` windows nothing is ranked, and a new term's
    /// baseline starts at its count instead of `new_term_prior`: at startup every term is
    /// "new", and ranking the whole vocabulary as trending would flood the alerts.
    pub fn close_window(&mut self, window_index: i64, terms: &WindowTerms) -> Vec<TrendEntry> {
        self.close_partial_window(window_index, terms, 1.0)
    }

    /// [`Self::close_window`] for a window that the input covered only in part: the
    /// fraction `coverage` (in (0, 1]) of its span, e.g. the window in which the service
    /// started. Its counts are compared with that fraction of the baselines, and learned
    /// as if the window had gone on at the same rate: otherwise a half-covered first
    /// window would teach half-size baselines and make the next full window look like a
    /// surge of every term.
    pub fn close_partial_window(
        &mut self,
        window_index: i64,
        terms: &WindowTerms,
        coverage: f64,
    ) -> Vec<TrendEntry> {
        let warming_up = self.windows_closed < u64::from(self.config.warmup_windows);
        if !self.config.baselines {
            self.windows_closed += 1;
            self.last_window = Some(window_index);
            return if warming_up {
                Vec::new()
            } else {
                self.rank_counts(terms, 1.0)
            };
        }
        let alpha = self.config.baseline_alpha;
        let mut top = TopK::new(&self.config);
        let TrendDetector {
            config, baselines, ..
        } = self;
        // One lookup per term, most of the cost of closing a window: done in batches.
        baselines.upsert_each(
            terms.iter(),
            |counted| counted.key,
            |counted, known| {
                let authors = terms.authors(counted.value);
                let scored = scored_count(config, counted.count, authors);
                let prior = match &known {
                    None if warming_up => Prior {
                        level: scored,
                        uncertainty: 0.0,
                        previous_count: 0,
                        previous: None,
                        windows_seen: 0,
                    },
                    known => prior_of(config, known.as_deref(), window_index, coverage),
                };
                // The level for a whole window, before and after learning this one.
                let level = prior.level / coverage;
                let score = TermScore {
                    count: counted.count,
                    baseline: prior.level,
                    score: prior.score(scored),
                };
                let baseline = Baseline {
                    level: level + alpha * (scored / coverage - level),
                    updated_window: window_index,
                    last_count: u32::try_from(score.count).unwrap_or(u32::MAX),
                    // As whole-window figures, so that the two-window score stays fair.
                    last_baseline: level as f32,
                    last_score: score.score as f32,
                    last_scored: (scored / coverage) as f32,
                    windows_seen: prior.windows_seen.saturating_add(1),
                };
                if !warming_up {
                    top.offer(Candidate {
                        status: status(&prior, counted.count, coverage),
                        counted,
                        authors,
                        score,
                    });
                }
                match known {
                    Some(known) => {
                        *known = baseline;
                        None
                    }
                    None if warming_up || scored > config.new_term_prior => Some(baseline),
                    None => None,
                }
            },
        );
        self.windows_closed += 1;
        self.last_window = Some(window_index);
        self.prune_if_grown(window_index);
        top.into_entries(terms)
    }

    /// Hands over the counts of the window just closed (after [`Self::close_window`]) and
    /// returns counts the detector no longer needs, so that their memory can be reused
    /// for a new window: without baselines it keeps the latest window's counts (they
    /// give the next window's status) and returns the ones before; with baselines it
    /// keeps none.
    pub fn retire(&mut self, terms: WindowTerms) -> Option<WindowTerms> {
        if self.config.baselines {
            Some(terms)
        } else {
            self.previous.replace(terms)
        }
    }

    /// The top-k by count, without baselines: each entry's status and baseline come from
    /// the previous window's count (scaled by `elapsed` for a part of a window), and its
    /// score is 0. Only the ranked entries look at the previous window.
    fn rank_counts(&self, terms: &WindowTerms, elapsed: f64) -> Vec<TrendEntry> {
        let mut top = TopK::new(&self.config);
        for counted in terms.iter() {
            top.offer(Candidate {
                authors: terms.authors(counted.value),
                score: TermScore {
                    count: counted.count,
                    baseline: 0.0,
                    score: 0.0,
                },
                status: TrendStatus::New,
                counted,
            });
        }
        for candidate in &mut top.items {
            let previous = self
                .previous
                .as_ref()
                .and_then(|p| p.get(candidate.counted.key));
            if let Some(previous) = previous {
                let expected = previous.count as f64 * elapsed;
                candidate.score.baseline = expected;
                candidate.status = movement(candidate.counted.count, expected);
            }
        }
        top.into_entries(terms)
    }

    /// Scores a window that is still open (`elapsed` of it, in (0, 1], has been seen)
    /// without learning from it: the baselines are scaled by `elapsed`, so a quarter of a
    /// window is compared with a quarter of the usual count. For update mode.
    pub fn score_open_window(
        &self,
        window_index: i64,
        terms: &WindowTerms,
        elapsed: f64,
    ) -> Vec<TrendEntry> {
        if self.windows_closed < u64::from(self.config.warmup_windows) {
            return Vec::new();
        }
        if !self.config.baselines {
            return self.rank_counts(terms, elapsed);
        }
        let mut top = TopK::new(&self.config);
        for candidate in terms.iter().map(|counted| {
            let authors = terms.authors(counted.value);
            let scored = scored_count(&self.config, counted.count, authors);
            let prior = prior_of(
                &self.config,
                self.baselines.get(counted.key),
                window_index,
                elapsed,
            );
            Candidate {
                status: status(&prior, counted.count, elapsed),
                score: TermScore {
                    count: counted.count,
                    baseline: prior.level,
                    score: z_score(scored, prior.level, prior.uncertainty),
                },
                counted,
                authors,
            }
        }) {
            top.offer(candidate);
        }
        top.into_entries(terms)
    }

    /// The score of a term (by [`crate::term_key`]) in the window closed last; `None`
    /// when it did not occur there (or occurred too little to be tracked). Kept in single
    /// precision.
    pub fn last_score(&self, key: &str) -> Option<TermScore> {
        let baseline = self.baselines.get(key)?;
        (Some(baseline.updated_window) == self.last_window).then(|| baseline.last())
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
        self.baselines.retain(|_, b| {
            b.updated_window == window_index
                || b.level_at_end_of(window_index, decay) >= PRUNE_BELOW
        });
        let max = self.config.max_baselines;
        if self.baselines.len() > max {
            // Over the cap: keep the `max` highest levels (ties at the cut may go too).
            let mut levels: Vec<f64> = self
                .baselines
                .values()
                .map(|b| b.level_at_end_of(window_index, decay))
                .collect();
            let cut = levels.len() - max;
            let (_, threshold, _) = levels.select_nth_unstable_by(cut, f64::total_cmp);
            let threshold = *threshold;
            self.baselines
                .retain(|_, b| b.level_at_end_of(window_index, decay) > threshold);
        }
        self.prune_at_len = MIN_PRUNE_LEN.max(2 * self.baselines.len());
    }
}

/// The count that is scored: capped per author (see the module docs).
fn scored_count(config: &TrendConfig, count: u64, authors: Option<u64>) -> f64 {
    let cap = config.author_cap;
    match authors {
        Some(authors) if cap > 0 => count.min(authors.saturating_mul(cap)) as f64,
        _ => count as f64,
    }
}

/// `Less` when term `a` ranks before `b`, each as (score, count, text, kind): by score
/// (then count) or by count; ties by text, then kind, so that `#fire` and `fire` sort as
/// they are written. The one ranking order, also used to merge shards' rankings
/// ([`crate::shard_merge`]).
pub fn rank_order(
    rank_by: RankBy,
    (score_a, count_a, text_a, kind_a): (f64, u64, &str, TermKind),
    (score_b, count_b, text_b, kind_b): (f64, u64, &str, TermKind),
) -> Ordering {
    match rank_by {
        RankBy::Score => score_b.total_cmp(&score_a).then(count_b.cmp(&count_a)),
        RankBy::Count => count_b.cmp(&count_a),
    }
    .then_with(|| text_a.cmp(text_b).then(kind_a.cmp(&kind_b)))
}

/// The best `top_k` ranked candidates of a window, kept while scanning it: a window can
/// hold tens of thousands of terms for 20 slots, and most never get near them.
struct TopK<'w> {
    k: usize,
    rank_by: RankBy,
    min_count: u64,
    min_authors: u64,
    items: Vec<Candidate<'w>>,
    /// Index of the item that ranks last, once `items` is full.
    worst: usize,
}

impl<'w> TopK<'w> {
    fn new(config: &TrendConfig) -> Self {
        TopK {
            k: config.top_k,
            rank_by: config.rank_by,
            min_count: config.min_count,
            min_authors: config.min_authors,
            items: Vec::with_capacity(config.top_k),
            worst: 0,
        }
    }

    /// Keeps `c` if it may be ranked and beats the current last.
    fn offer(&mut self, c: Candidate<'w>) {
        let supported =
            c.counted.count >= self.min_count && c.authors.is_none_or(|a| a >= self.min_authors);
        let rankable = match self.rank_by {
            RankBy::Score => supported && c.score.score > 0.0,
            RankBy::Count => supported,
        };
        if !rankable || self.k == 0 {
            return;
        }
        if self.items.len() < self.k {
            self.items.push(c);
        } else if self.order(&c, &self.items[self.worst]) == Ordering::Less {
            self.items[self.worst] = c;
        } else {
            return;
        }
        if self.items.len() == self.k {
            self.worst = (0..self.k)
                .max_by(|&a, &b| self.order(&self.items[a], &self.items[b]))
                .unwrap_or(0);
        }
    }

    /// `Less` when `a` ranks before `b` (see [`rank_order`]).
    fn order(&self, a: &Candidate<'w>, b: &Candidate<'w>) -> Ordering {
        fn rank<'c>(c: &Candidate<'c>) -> (f64, u64, &'c str, TermKind) {
            let (kind, text) = split_key(c.counted.key).expect("keys come from term_key");
            (c.score.score, c.counted.count, text, kind)
        }
        rank_order(self.rank_by, rank(a), rank(b))
    }

    fn into_entries(mut self, terms: &WindowTerms) -> Vec<TrendEntry> {
        let mut items = std::mem::take(&mut self.items);
        items.sort_unstable_by(|a, b| self.order(a, b));
        items
            .into_iter()
            .filter_map(|c| {
                let (kind, text) = split_key(c.counted.key)?;
                Some(TrendEntry {
                    term: text.to_owned(),
                    kind,
                    count: c.counted.count,
                    authors: c.authors.unwrap_or(0),
                    baseline: c.score.baseline,
                    score: c.score.score,
                    status: c.status,
                    examples: terms.examples(c.counted.value),
                    count_error: c.counted.error,
                    // The engine knows the catalog: it tags entries (window_alerts).
                    actor: None,
                })
            })
            .collect()
    }
}

/// What a term's baseline (`None`: never seen, or forgotten) expects in window
/// `window_index`, times `elapsed`.
fn prior_of(
    config: &TrendConfig,
    baseline: Option<&Baseline>,
    window_index: i64,
    elapsed: f64,
) -> Prior {
    let alpha = config.baseline_alpha;
    match baseline {
        Some(b) => Prior {
            level: b.level_at_end_of(window_index - 1, 1.0 - alpha) * elapsed,
            uncertainty: uncertainty(alpha, b.windows_seen),
            previous_count: b.count_in(window_index - 1),
            previous: (b.updated_window == window_index - 1).then(|| {
                (
                    f64::from(b.last_scored),
                    f64::from(b.last_baseline),
                    uncertainty(alpha, b.windows_seen - 1),
                )
            }),
            windows_seen: b.windows_seen,
        },
        None => Prior {
            level: config.new_term_prior * elapsed,
            uncertainty: 0.0,
            previous_count: 0,
            previous: None,
            windows_seen: 0,
        },
    }
}

/// Relative variance of a level learned from `windows` windows (0: the prior) by an EWMA
/// of weight `alpha` (see the module docs).
fn uncertainty(alpha: f64, windows: u32) -> f64 {
    match windows {
        0 => 0.0,
        n => (1.0 / f64::from(n)).max(alpha / (2.0 - alpha)),
    }
}

/// How a term moves: against the previous window's count scaled by `elapsed`.
fn status(prior: &Prior, count: u64, elapsed: f64) -> TrendStatus {
    if prior.windows_seen == 0 {
        return TrendStatus::New;
    }
    movement(count, prior.previous_count as f64 * elapsed)
}

/// Rising, falling or steady: `count` against the `previous` window's (scaled) count.
fn movement(count: u64, previous: f64) -> TrendStatus {
    match (count as f64).total_cmp(&previous) {
        Ordering::Greater => TrendStatus::Rising,
        Ordering::Less => TrendStatus::Falling,
        Ordering::Equal => TrendStatus::Steady,
    }
}

/// Poisson-style z-score of `count` against a `baseline` of relative variance
/// `uncertainty` (see the module docs).
pub fn z_score(count: f64, baseline: f64, uncertainty: f64) -> f64 {
    (count - baseline) / (baseline * (1.0 + uncertainty) + SCORE_VARIANCE_FLOOR).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authors::author_hash;
    use crate::model::TermKind;
    use crate::term_key::key;

    fn config() -> TrendConfig {
        TrendConfig {
            top_k: 3,
            min_count: 5,
            min_authors: 1,
            baseline_alpha: 0.3,
            new_term_prior: 1.0,
            alert_score: 8.0,
            warmup_windows: 2,
            ..TrendConfig::default()
        }
    }

    /// A window where each term is used `count` times, spread over `authors` authors.
    fn window(items: &[(TermKind, &str, u64, u64)]) -> WindowTerms {
        let mut terms = WindowTerms::new(100_000, true);
        for &(kind, text, count, authors) in items {
            let key = key(kind, text);
            for i in 0..count {
                let post = terms.add_post(&format!("{text}-{i}"));
                terms.add(
                    [key.as_str()],
                    author_hash(&format!("author{}", i % authors)),
                    post,
                );
            }
        }
        terms
    }

    /// Terms used once per author.
    fn counts(items: &[(TermKind, &str, u64)]) -> WindowTerms {
        let items: Vec<_> = items.iter().map(|&(k, t, n)| (k, t, n, n)).collect();
        window(&items)
    }

    const STEADY: [(TermKind, &str, u64); 3] = [
        (TermKind::Word, "rocket", 100),
        (TermKind::Word, "launch", 40),
        (TermKind::Hashtag, "#space", 20),
    ];

    fn rocket() -> String {
        key(TermKind::Word, "rocket")
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
            assert!(detector.last_score(&rocket()).unwrap().score.abs() < 1e-9);
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
            (top.kind, top.count, top.baseline, top.status),
            (TermKind::Hashtag, 340, 1.0, TrendStatus::New)
        );
        // 340 distinct authors: past 16 the count is a HyperLogLog estimate (~3% error).
        assert!(top.authors.abs_diff(340) < 34, "{}", top.authors);
        let scored = top.authors as f64;
        assert!((top.score - (scored - 1.0) / 2f64.sqrt()).abs() < 1e-9);
        // Its examples: 3 of its posts, picked by a fixed hash of their ids.
        assert_eq!(top.examples.len(), 3);
        assert!(top.examples.iter().all(|id| id.starts_with("#acmefire-")));
        assert_eq!(top.count_error, 0);
        assert_eq!(entries[2].status, TrendStatus::Rising);
        assert!(
            entries[2].score < 0.5,
            "noise scores low: {}",
            entries[2].score
        );
    }

    #[test]
    fn one_account_cannot_make_a_trend() {
        let mut detector = TrendDetector::new(&TrendConfig {
            warmup_windows: 0,
            min_authors: 3,
            ..config()
        });
        let entries = detector.close_window(
            0,
            &window(&[
                (TermKind::Hashtag, "#buynow", 500, 1),
                (TermKind::Hashtag, "#fewfriends", 500, 2),
                (TermKind::Hashtag, "#real", 60, 12),
            ]),
        );
        let ranked: Vec<_> = entries
            .iter()
            .map(|e| (e.term.as_str(), e.count, e.authors))
            .collect();
        assert_eq!(
            ranked,
            [("#real", 60, 12)],
            "min_authors keeps the others out"
        );
        // Scored as one author: no more than the prior, so not even a baseline is kept.
        assert_eq!(
            detector.last_score(&key(TermKind::Hashtag, "#buynow")),
            None
        );
    }

    #[test]
    fn a_ramp_over_two_windows_scores_on_their_sum() {
        let mut detector = TrendDetector::new(&TrendConfig {
            warmup_windows: 0,
            ..config()
        });
        let ramp = |detector: &mut TrendDetector, w, n| {
            detector.close_window(w, &counts(&[(TermKind::Word, "firmware", n)]));
            detector
                .last_score(&key(TermKind::Word, "firmware"))
                .unwrap()
        };
        let first = ramp(&mut detector, 0, 12);
        assert!((first.score - 11.0 / 2f64.sqrt()).abs() < 1e-5, "{first:?}");
        let second = ramp(&mut detector, 1, 15);
        // One window alone: (15 - 4.3) / sqrt(5.3) = 4.6; both against 2 × 1: 25 / sqrt(3).
        assert!(
            (second.score - 25.0 / 3f64.sqrt()).abs() < 1e-5,
            "{second:?}"
        );
        assert!(
            (second.baseline - 4.3).abs() < 1e-5,
            "the entry shows its own baseline"
        );
    }

    #[test]
    fn a_partly_covered_first_window_teaches_whole_window_levels() {
        let mut detector = TrendDetector::new(&TrendConfig {
            warmup_windows: 1,
            ..config()
        });
        // The service started halfway through window 0: 50 of the usual 100.
        detector.close_partial_window(0, &counts(&[(TermKind::Word, "rocket", 50)]), 0.5);
        let entries = detector.close_window(1, &counts(&[(TermKind::Word, "rocket", 100)]));
        assert!(
            entries.is_empty(),
            "a full window is not a surge: {entries:?}"
        );
        let seen = detector.last_score(&rocket()).unwrap();
        assert!((seen.baseline - 100.0).abs() < 1e-9, "{seen:?}");
    }

    #[test]
    fn status_follows_the_previous_window() {
        let mut detector = TrendDetector::new(&TrendConfig {
            warmup_windows: 0,
            top_k: 10,
            ..config()
        });
        let statuses = |detector: &mut TrendDetector, w, n| {
            let entries = detector.close_window(w, &counts(&[(TermKind::Word, "fire", n)]));
            entries.first().map(|e| e.status)
        };
        assert_eq!(statuses(&mut detector, 0, 50), Some(TrendStatus::New));
        assert_eq!(statuses(&mut detector, 1, 120), Some(TrendStatus::Rising));
        assert_eq!(statuses(&mut detector, 2, 120), Some(TrendStatus::Steady));
        assert_eq!(statuses(&mut detector, 3, 90), Some(TrendStatus::Falling));
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
    fn rank_by_count_orders_by_count_then_text_across_kinds() {
        let mut detector = TrendDetector::new(&TrendConfig {
            top_k: 4,
            min_count: 1,
            warmup_windows: 0,
            rank_by: RankBy::Count,
            ..config()
        });
        let entries = detector.close_window(
            0,
            &counts(&[
                (TermKind::Word, "b", 3),
                (TermKind::Hashtag, "#b", 3),
                (TermKind::Word, "a", 1),
                (TermKind::Word, "c", 7),
                (TermKind::Word, "d", 1),
            ]),
        );
        let ranked: Vec<_> = entries.iter().map(|e| (e.term.as_str(), e.count)).collect();
        assert_eq!(ranked, [("c", 7), ("#b", 3), ("b", 3), ("a", 1)]);
    }

    #[test]
    fn without_baselines_counts_rank_against_the_previous_window_only() {
        let mut detector = TrendDetector::new(&TrendConfig {
            top_k: 2,
            min_count: 1,
            warmup_windows: 0,
            rank_by: RankBy::Count,
            baselines: false,
            ..config()
        });
        // Closes window `w` and hands its counts over, as the engine does.
        let mut close = |w, items: &[(TermKind, &str, u64)]| {
            let terms = counts(items);
            let entries = detector.close_window(w, &terms);
            let spare = detector.retire(terms);
            let ranked: Vec<_> = entries
                .iter()
                .map(|e| (e.term.clone(), e.count, e.baseline, e.score, e.status))
                .collect();
            (ranked, spare.map(|s| s.len()))
        };
        let (first, spare) = close(
            0,
            &[(TermKind::Word, "fire", 50), (TermKind::Word, "smoke", 5)],
        );
        assert_eq!(
            first,
            [
                ("fire".into(), 50, 0.0, 0.0, TrendStatus::New),
                ("smoke".into(), 5, 0.0, 0.0, TrendStatus::New)
            ]
        );
        assert_eq!(
            spare, None,
            "the first window's counts are kept for the next one"
        );
        let (second, spare) = close(
            1,
            &[
                (TermKind::Word, "fire", 40),
                (TermKind::Word, "smoke", 9),
                (TermKind::Word, "ash", 60),
            ],
        );
        assert_eq!(
            second,
            [
                ("ash".into(), 60, 0.0, 0.0, TrendStatus::New),
                ("fire".into(), 40, 50.0, 0.0, TrendStatus::Falling)
            ]
        );
        assert_eq!(spare, Some(2), "window 0's counts come back for reuse");
        assert_eq!(detector.vocabulary(), 0, "no per-term state");
        assert_eq!(detector.last_score(&key(TermKind::Word, "fire")), None);
    }

    #[test]
    fn baselines_off_needs_rank_by_count() {
        let config = TrendConfig {
            baselines: false,
            ..TrendConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().field, "trends.baselines");
        let count_only = TrendConfig {
            rank_by: RankBy::Count,
            ..config
        };
        assert!(count_only.validate().is_ok());
    }

    #[test]
    fn top_k_truncates_and_zero_means_empty() {
        let many: Vec<(TermKind, String, u64)> = (0..50)
            .map(|i| (TermKind::Word, format!("t{i:02}"), 10 + i))
            .collect();
        let items: Vec<_> = many.iter().map(|(k, t, n)| (*k, t.as_str(), *n)).collect();
        let c = counts(&items);
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
    fn open_windows_are_scored_against_the_elapsed_part_of_the_baseline() {
        let mut detector = TrendDetector::new(&TrendConfig {
            warmup_windows: 0,
            ..config()
        });
        for w in 0..20 {
            detector.close_window(w, &counts(&[(TermKind::Word, "rocket", 100)]));
        }
        let last = detector.last_score(&rocket()).unwrap();
        let level = last.baseline + 0.3 * (100.0 - last.baseline);
        // A quarter into window 20, 25 is on track and 60 is a surge.
        let on_track =
            detector.score_open_window(20, &counts(&[(TermKind::Word, "rocket", 25)]), 0.25);
        assert!(on_track.iter().all(|e| e.score < 0.1), "{on_track:?}");
        let surge =
            detector.score_open_window(20, &counts(&[(TermKind::Word, "rocket", 60)]), 0.25);
        assert!(surge[0].score > 5.0, "{surge:?}");
        assert!((surge[0].baseline - level * 0.25).abs() < 1e-6);
        assert_eq!(
            detector.last_score(&rocket()).unwrap().count,
            100,
            "nothing learned"
        );
    }

    #[test]
    fn baselines_decay_lazily_across_gaps() {
        let mut detector = TrendDetector::new(&TrendConfig {
            warmup_windows: 0,
            ..config()
        });
        let fire = [(TermKind::Hashtag, "#fire", 100)];
        let fire_key = key(TermKind::Hashtag, "#fire");
        detector.close_window(0, &counts(&fire)); // level = 1 + 0.3 * 99 = 30.7
        detector.close_window(1, &counts(&[(TermKind::Word, "other", 1)]));
        assert_eq!(
            detector.last_score(&fire_key),
            None,
            "absent from the last window"
        );
        detector.close_window(3, &counts(&fire)); // windows 1 and 2 had no #fire
        let seen = detector.last_score(&fire_key).unwrap();
        assert!(
            (seen.baseline - 30.7 * 0.7f64.powi(2)).abs() < 1e-5,
            "{seen:?}"
        );
        assert_eq!(seen.count, 100);
    }

    #[test]
    fn rare_new_terms_get_no_baseline_and_decayed_ones_are_pruned() {
        let vocabulary = |prefix: &str, n: u64| {
            let names: Vec<String> = (0..MIN_PRUNE_LEN).map(|i| format!("{prefix}{i}")).collect();
            let items: Vec<_> = names
                .iter()
                .map(|t| (TermKind::Word, t.as_str(), n))
                .collect();
            counts(&items)
        };
        let mut detector = TrendDetector::new(&TrendConfig {
            warmup_windows: 0,
            ..config()
        });
        detector.close_window(0, &vocabulary("once", 1));
        assert_eq!(
            detector.vocabulary(),
            0,
            "count 1 = the prior: nothing to learn"
        );
        detector.close_window(1, &vocabulary("old", 2));
        assert_eq!(detector.vocabulary(), MIN_PRUNE_LEN, "nothing decayed yet");
        // Long after, a new vocabulary doubles the map and triggers pruning: all old terms
        // have decayed to ~0 and go.
        detector.close_window(100, &vocabulary("new", 2));
        assert_eq!(detector.vocabulary(), MIN_PRUNE_LEN);
        assert!(detector.last_score(&key(TermKind::Word, "new7")).is_some());
    }

    #[test]
    fn baselines_are_capped_keeping_the_highest_levels() {
        let mut detector = TrendDetector::new(&TrendConfig {
            warmup_windows: 0,
            max_baselines: 100,
            ..config()
        });
        let names: Vec<String> = (0..MIN_PRUNE_LEN).map(|i| format!("t{i}")).collect();
        let items: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, t)| (TermKind::Word, t.as_str(), 2 + i as u64 % 50))
            .collect();
        detector.close_window(0, &counts(&items));
        assert!(detector.vocabulary() <= 100, "{}", detector.vocabulary());
        assert!(detector.vocabulary() >= 50, "{}", detector.vocabulary());
        assert!(
            detector.last_score(&key(TermKind::Word, "t49")).is_some(),
            "a top count stays"
        );
    }
}
