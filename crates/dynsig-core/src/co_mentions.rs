//! The periodic co-mention graph of the ecosystem: which pairs of actors posts mention
//! together, and how that compares with the pair's past windows.
//!
//! [`CoMentions`] counts, in the open window, each unordered pair of actors mentioned in
//! one post (once per post: a pair is `a < b`, so `{acme, globex}` is one edge). When the
//! window closes, [`CoMentions::close`] reports every pair counted in it against the pair's
//! baseline, then folds the window into the baselines.
//!
//! The baseline is an exponentially weighted moving average of the pair's count per window,
//! a window without the pair counting 0: `baseline ← (1 − alpha) · baseline + alpha · count`.
//! Memory stays bounded however many pairs ever co-occur: a baseline that decays below
//! `prune_below` is forgotten (the pair is `new` again if it returns), at most `max_pairs`
//! baselines are kept (the largest), and the open window counts at most `max_pairs` pairs
//! (later new pairs are dropped, and the drop is reported).
//!
//! Plain data with serde, so that the state can be checkpointed.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::{require, ConfigError};

/// Settings of the co-mention graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoMentionConfig {
    /// Weight of the newest window in a pair's baseline, in (0, 1].
    pub alpha: f64,
    /// A baseline below this many co-mentions per window is forgotten.
    pub prune_below: f64,
    /// The most pairs counted in one window, and the most baselines kept.
    pub max_pairs: usize,
}

impl Default for CoMentionConfig {
    fn default() -> Self {
        Self {
            alpha: 0.2,
            prune_below: 0.05,
            max_pairs: 10_000,
        }
    }
}

impl CoMentionConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        require(
            self.alpha > 0.0 && self.alpha <= 1.0,
            "co_mentions.alpha",
            "in (0, 1]",
            self.alpha,
        )?;
        require(
            self.prune_below > 0.0,
            "co_mentions.prune_below",
            "> 0",
            self.prune_below,
        )?;
        require(
            self.max_pairs > 0,
            "co_mentions.max_pairs",
            "> 0",
            self.max_pairs,
        )
    }
}

/// An unordered pair of actor ids, stored in order: `a < b`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ActorPair {
    pub a: String,
    pub b: String,
}

/// An [`ActorPair`] looked up without allocating. Its derived `Hash` hashes the same `str`s
/// in the same order as `ActorPair`'s, as [`hashbrown::Equivalent`] requires.
#[derive(Hash)]
struct PairRef<'s> {
    a: &'s str,
    b: &'s str,
}

impl<'s> PairRef<'s> {
    fn new(x: &'s str, y: &'s str) -> Self {
        let (a, b) = if x < y { (x, y) } else { (y, x) };
        PairRef { a, b }
    }

    fn to_owned(&self) -> ActorPair {
        ActorPair {
            a: self.a.to_owned(),
            b: self.b.to_owned(),
        }
    }
}

impl hashbrown::Equivalent<ActorPair> for PairRef<'_> {
    fn equivalent(&self, pair: &ActorPair) -> bool {
        self.a == pair.a && self.b == pair.b
    }
}

/// One edge of a window's co-mention graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoMention {
    pub a: String,
    pub b: String,
    /// Posts of the window mentioning both.
    pub count: u64,
    /// The pair's expected count per window, from past windows (0 when `new`).
    pub baseline: f64,
    /// `(count + 1) / (baseline + 1)`: the change against the baseline, smoothed so that
    /// a new pair has a finite ratio and a pair seen once is not a large change.
    pub ratio: f64,
    /// No baseline: never seen before, or forgotten.
    pub new: bool,
}

/// A closed window's co-mention graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoMentionGraph {
    /// Posts of the window that mentioned at least two actors.
    pub posts: u64,
    /// Pair mentions not counted because the window already held `max_pairs` pairs.
    pub pairs_dropped: u64,
    /// Every pair counted in the window, most co-mentioned first (ties by ids).
    pub edges: Vec<CoMention>,
}

type PairMap<V> = hashbrown::HashMap<ActorPair, V, foldhash::quality::RandomState>;

/// The pairs counted in one window. The engine keeps one per open event-time window
/// (several are open at once while late posts may still arrive).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowPairs {
    #[serde(with = "pair_list")]
    counts: PairMap<u64>,
    posts: u64,
    pairs_dropped: u64,
}

impl WindowPairs {
    /// Counts one post mentioning `actors`: distinct ids, as
    /// [`crate::catalog::ActorMatcher::find`] gives them.
    pub fn record(&mut self, actors: &[&str], config: &CoMentionConfig) {
        if actors.len() < 2 {
            return;
        }
        self.posts += 1;
        for (i, first) in actors.iter().enumerate() {
            for second in &actors[i + 1..] {
                let pair = PairRef::new(first, second);
                if let Some(count) = self.counts.get_mut(&pair) {
                    *count += 1;
                } else if self.counts.len() < config.max_pairs {
                    self.counts.insert(pair.to_owned(), 1);
                } else {
                    self.pairs_dropped += 1;
                }
            }
        }
    }
}

/// The co-mention counts of the open window and the baselines of past windows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CoMentions {
    window: WindowPairs,
    #[serde(with = "pair_list")]
    baselines: PairMap<f64>,
}

impl CoMentions {
    /// Counts one post of the open window (see [`WindowPairs::record`]).
    pub fn record(&mut self, actors: &[&str], config: &CoMentionConfig) {
        self.window.record(actors, config);
    }

    /// Closes the open window: its graph against the baselines, which then learn it. The
    /// next window starts empty.
    pub fn close(&mut self, config: &CoMentionConfig) -> CoMentionGraph {
        let window = std::mem::take(&mut self.window);
        self.close_window(window, config)
    }

    /// Closes `window`, counted apart (windows must close in time order).
    pub fn close_window(
        &mut self,
        window: WindowPairs,
        config: &CoMentionConfig,
    ) -> CoMentionGraph {
        let WindowPairs {
            counts,
            posts,
            pairs_dropped,
        } = window;
        let mut edges: Vec<CoMention> = counts
            .iter()
            .map(|(pair, &count)| {
                let baseline = self.baselines.get(pair).copied();
                let expected = baseline.unwrap_or(0.0);
                CoMention {
                    a: pair.a.clone(),
                    b: pair.b.clone(),
                    count,
                    baseline: expected,
                    ratio: (count as f64 + 1.0) / (expected + 1.0),
                    new: baseline.is_none(),
                }
            })
            .collect();
        edges.sort_by(|x, y| {
            y.count
                .cmp(&x.count)
                .then_with(|| (&x.a, &x.b).cmp(&(&y.a, &y.b)))
        });
        self.learn(counts, config);
        CoMentionGraph {
            posts,
            pairs_dropped,
            edges,
        }
    }

    /// Folds a closed window into the baselines, then forgets what the bounds say to.
    fn learn(&mut self, window: PairMap<u64>, config: &CoMentionConfig) {
        for baseline in self.baselines.values_mut() {
            *baseline *= 1.0 - config.alpha;
        }
        for (pair, count) in window {
            *self.baselines.entry(pair).or_insert(0.0) += config.alpha * count as f64;
        }
        self.baselines
            .retain(|_, baseline| *baseline >= config.prune_below);
        if self.baselines.len() > config.max_pairs {
            let mut kept: Vec<(ActorPair, f64)> = self.baselines.drain().collect();
            kept.sort_by(|(x, x_baseline), (y, y_baseline)| {
                y_baseline.total_cmp(x_baseline).then_with(|| x.cmp(y))
            });
            kept.truncate(config.max_pairs);
            self.baselines.extend(kept);
        }
    }

    /// The baseline of the pair `{x, y}`, if it has one.
    pub fn baseline(&self, x: &str, y: &str) -> Option<f64> {
        self.baselines.get(&PairRef::new(x, y)).copied()
    }
}

/// A [`PairMap`] in serde as a list of `[pair, value]`: JSON object keys must be strings.
mod pair_list {
    use super::*;

    pub fn serialize<V: Serialize, S: Serializer>(
        map: &PairMap<V>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(map.iter())
    }

    pub fn deserialize<'de, V: Deserialize<'de>, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<PairMap<V>, D::Error> {
        Ok(Vec::<(ActorPair, V)>::deserialize(deserializer)?
            .into_iter()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::hash::{Hash, Hasher};

    use super::*;

    fn hash_of(value: &impl Hash) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        value.hash(&mut hasher);
        hasher.finish()
    }

    fn config() -> CoMentionConfig {
        CoMentionConfig {
            alpha: 0.5,
            prune_below: 0.3,
            max_pairs: 3,
        }
    }

    fn edge(a: &str, b: &str, count: u64, baseline: f64, new: bool) -> CoMention {
        CoMention {
            a: a.into(),
            b: b.into(),
            count,
            baseline,
            ratio: (count as f64 + 1.0) / (baseline + 1.0),
            new,
        }
    }

    #[test]
    fn pair_lookups_hash_like_stored_pairs() {
        let pair = ActorPair {
            a: "acme".into(),
            b: "globex".into(),
        };
        assert_eq!(hash_of(&PairRef::new("globex", "acme")), hash_of(&pair));
    }

    #[test]
    fn counts_each_unordered_pair_once_per_post() {
        let config = config();
        let mut co = CoMentions::default();
        co.record(&["globex", "acme"], &config);
        co.record(&["acme", "globex", "initech"], &config);
        co.record(&["acme"], &config);
        co.record(&[], &config);
        let graph = co.close(&config);
        assert_eq!(
            graph.posts, 2,
            "posts with fewer than two actors have no edge"
        );
        assert_eq!(graph.pairs_dropped, 0);
        assert_eq!(
            graph.edges,
            [
                edge("acme", "globex", 2, 0.0, true),
                edge("acme", "initech", 1, 0.0, true),
                edge("globex", "initech", 1, 0.0, true),
            ]
        );
    }

    #[test]
    fn change_is_measured_against_the_ewma_of_past_windows() {
        let config = config();
        let mut co = CoMentions::default();
        for _ in 0..4 {
            co.record(&["acme", "globex"], &config);
        }
        co.close(&config);
        assert_eq!(co.baseline("globex", "acme"), Some(2.0), "0.5 · 4");
        co.record(&["acme", "globex"], &config);
        let graph = co.close(&config);
        assert_eq!(graph.edges, [edge("acme", "globex", 1, 2.0, false)]);
        assert_eq!(graph.edges[0].ratio, 2.0 / 3.0);
        assert_eq!(
            co.baseline("acme", "globex"),
            Some(1.5),
            "0.5 · 2 + 0.5 · 1"
        );
        let quiet = co.close(&config);
        assert!(quiet.edges.is_empty() && quiet.posts == 0);
        assert_eq!(
            co.baseline("acme", "globex"),
            Some(0.75),
            "a quiet window is a 0"
        );
    }

    #[test]
    fn decayed_baselines_are_forgotten_and_the_pair_is_new_again() {
        let config = config();
        let mut co = CoMentions::default();
        co.record(&["acme", "globex"], &config);
        co.close(&config);
        assert_eq!(co.baseline("acme", "globex"), Some(0.5));
        co.close(&config);
        assert_eq!(co.baseline("acme", "globex"), None, "0.25 < prune_below");
        co.record(&["acme", "globex"], &config);
        assert_eq!(
            co.close(&config).edges,
            [edge("acme", "globex", 1, 0.0, true)]
        );
    }

    #[test]
    fn windows_and_baselines_are_capped_at_max_pairs() {
        let config = config();
        let mut co = CoMentions::default();
        co.record(&["a", "b", "c"], &config);
        co.record(&["a", "b"], &config);
        co.record(&["a", "d"], &config);
        co.record(&["a", "b", "e"], &config);
        let graph = co.close(&config);
        assert_eq!(graph.pairs_dropped, 3, "a-d, a-e, b-e");
        assert_eq!(
            graph.edges,
            [
                edge("a", "b", 3, 0.0, true),
                edge("a", "c", 1, 0.0, true),
                edge("b", "c", 1, 0.0, true),
            ]
        );
        // Raise the earlier pairs, then bring three new pairs: only the largest
        // baselines survive the cap.
        co.record(&["d", "e", "f"], &config);
        co.record(&["d", "e"], &config);
        co.record(&["d", "e"], &config);
        co.record(&["d", "f"], &config);
        co.close(&config);
        let kept: Vec<_> = [
            ("a", "b"),
            ("a", "c"),
            ("b", "c"),
            ("d", "e"),
            ("d", "f"),
            ("e", "f"),
        ]
        .into_iter()
        .map(|(x, y)| co.baseline(x, y))
        .collect();
        assert_eq!(
            kept,
            [Some(0.75), None, None, Some(1.5), Some(1.0), None],
            "e-f at 0.5 and a-c, b-c at 0.25 go"
        );
    }

    #[test]
    fn state_round_trips_through_serde() {
        let config = config();
        let mut co = CoMentions::default();
        co.record(&["acme", "globex"], &config);
        co.close(&config);
        co.record(&["acme", "initech"], &config);
        let json = serde_json::to_string(&co).unwrap();
        let restored: CoMentions = serde_json::from_str(&json).unwrap();
        assert_eq!(restored, co);
        assert_eq!(restored.baseline("acme", "globex"), Some(0.5));
        let mut restored = restored;
        assert_eq!(
            restored.close(&config).edges,
            [edge("acme", "initech", 1, 0.0, true)]
        );
    }

    #[test]
    fn config_is_validated() {
        assert_eq!(CoMentionConfig::default().validate(), Ok(()));
        let bad = |config: CoMentionConfig| config.validate().unwrap_err().to_string();
        assert_eq!(
            bad(CoMentionConfig {
                alpha: 0.0,
                ..config()
            }),
            "co_mentions.alpha must be in (0, 1], got 0"
        );
        assert_eq!(
            bad(CoMentionConfig {
                prune_below: 0.0,
                ..config()
            }),
            "co_mentions.prune_below must be > 0, got 0"
        );
        assert_eq!(
            bad(CoMentionConfig {
                max_pairs: 0,
                ..config()
            }),
            "co_mentions.max_pairs must be > 0, got 0"
        );
    }
}
