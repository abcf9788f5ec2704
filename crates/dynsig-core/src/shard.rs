//! Which engine owns which key when several share the work ("shards"): every term and
//! every series belongs to exactly one shard, picked by a fixed hash of its key, so that
//! its window counts, baseline, detector and alert lifecycle live in one place.
//!
//! Every shard is fed every input, but counts only the terms and series it owns: event
//! time, window coverage and a window's event count then agree between shards without
//! any exchange. What needs all keys at once is merged from what the shards publish by
//! [`crate::shard_merge`]: a window's ranking (exact, since a term's whole count is in
//! one shard and the ranking order compares terms one by one), and the metafilter, which
//! groups, silences and budgets all shards' alert messages.
//!
//! Placement rules beyond "hash of the key":
//! - an actor's series (`actors.actor=<id>`) goes with the actor's term, so that the
//!   alert about it can quote the term's authors and example posts;
//! - a watched term's series (`terms.term=<term>`) is made from the term's counts, so it
//!   is wherever the term is;
//! - co-mentions (pairs of actors in one post) need all of a post's actors: shard 0
//!   keeps them.
//!
//! What is not the same as one engine (the rest is checked equal in `tests/sharding.rs`
//! and by `dynsig replay --shards`):
//! - an actor's anomaly alert quotes the top terms about the actor from its shard's
//!   ranking only;
//! - a trend alert is judged on its shard's top k, so a term outside the overall top k
//!   can alert when more than k terms score above `trends.alert_score`;
//! - caps (`trends.max_terms_per_window`, `trends.max_baselines`) apply per shard;
//! - feedback moves the thresholds of the shard of the alert voted on, including the
//!   factor of its whole rule (one engine's rule factor would move for every key).

use crate::model::TermKind;
use crate::term_key;
use crate::window_alerts::ACTOR_SERIES_PREFIX;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv_step(hash: u64, byte: u8) -> u64 {
    (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
}

/// The shard among `count` of a key's FNV-1a hash: the high bits mix best, and a
/// multiply-shift maps them onto 0..count evenly.
fn place(hash: u64, count: u32) -> u32 {
    (((hash >> 32) * u64::from(count)) >> 32) as u32
}

/// One engine's part of the keys: shard `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    index: u32,
    count: u32,
}

/// A shard that cannot exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shard {index} of {count}: needs 0 <= index < count")]
pub struct InvalidShard {
    pub index: u32,
    pub count: u32,
}

impl Default for Shard {
    fn default() -> Self {
        Shard::WHOLE
    }
}

impl Shard {
    /// All keys: the engine works alone.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    pub fn new(index: u32, count: u32) -> Result<Shard, InvalidShard> {
        if index < count {
            Ok(Shard { index, count })
        } else {
            Err(InvalidShard { index, count })
        }
    }

    /// The `count` shards, in order.
    pub fn all(count: u32) -> impl Iterator<Item = Shard> {
        (0..count).map(move |index| Shard { index, count })
    }

    pub fn index(self) -> u32 {
        self.index
    }

    pub fn count(self) -> u32 {
        self.count
    }

    pub fn is_whole(self) -> bool {
        self.count == 1
    }

    /// The shard of `key` among `count`. FNV-1a over the key's bytes: fixed forever, not
    /// a std hasher, since it decides where state lives, and a checkpoint written by one
    /// build (or one instance) is restored by another.
    pub fn of_key(key: &str, count: u32) -> u32 {
        let hash = key.bytes().fold(FNV_OFFSET, fnv_step);
        place(hash, count)
    }

    /// [`Shard::of_key`] of four keys at once. FNV-1a is one multiply per byte, each
    /// waiting for the one before: over the bytes the four keys have in common the four
    /// chains are independent, and the multiplier works on all of them in turn.
    pub fn of_four_keys(keys: [&str; 4], count: u32) -> [u32; 4] {
        let keys = keys.map(str::as_bytes);
        let common = keys.iter().map(|key| key.len()).min().unwrap_or(0);
        let mut hashes = [FNV_OFFSET; 4];
        for at in 0..common {
            for (hash, key) in hashes.iter_mut().zip(&keys) {
                *hash = fnv_step(*hash, key[at]);
            }
        }
        for (hash, key) in hashes.iter_mut().zip(&keys) {
            *hash = key[common..].iter().copied().fold(*hash, fnv_step);
        }
        hashes.map(|hash| place(hash, count))
    }

    /// Whether this shard owns the term with key `term_key` (as in [`crate::term_key`]).
    pub fn owns_term(self, term_key: &str) -> bool {
        self.is_whole() || Shard::of_key(term_key, self.count) == self.index
    }

    /// Whether this shard owns `series` (see the module docs for actors' series).
    pub fn owns_series(self, series: &str) -> bool {
        self.is_whole() || Shard::of_series(series, self.count) == self.index
    }

    /// The shard of `series` among `count`.
    pub fn of_series(series: &str, count: u32) -> u32 {
        match series.strip_prefix(ACTOR_SERIES_PREFIX) {
            Some(actor) => Shard::of_key(&term_key::key(TermKind::Actor, actor), count),
            None => Shard::of_key(series, count),
        }
    }

    /// The shard among `count` whose alert lifecycle has the alert `dedup_key`
    /// (`trend:<kind>:<term>`, `anomaly:<series>`): that of its term or series. None for
    /// a key no rule makes.
    pub fn of_alert_key(dedup_key: &str, count: u32) -> Option<u32> {
        if let Some(series) = dedup_key.strip_prefix("anomaly:") {
            return Some(Shard::of_series(series, count));
        }
        let (kind, term) = dedup_key.strip_prefix("trend:")?.split_once(':')?;
        let kind = TermKind::parse(kind)?;
        Some(Shard::of_key(&term_key::key(kind, term), count))
    }

    /// [`Shard::of_alert_key`] of an alert occurrence's id (`<dedup key>@<fired at>`).
    pub fn of_alert_id(alert_id: &str, count: u32) -> Option<u32> {
        let dedup_key = alert_id.rsplit_once('@').map_or(alert_id, |(key, _)| key);
        Shard::of_alert_key(dedup_key, count)
    }

    /// Whether this shard keeps co-mentions (see the module docs).
    pub fn owns_co_mentions(self) -> bool {
        self.index == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_keys_at_once_are_placed_as_one_by_one() {
        let words = [
            "",
            "a",
            "fire",
            "battery fire",
            "\u{1}recall",
            "#sale",
            "ünïcode",
            "zz",
        ];
        for (i, a) in words.iter().enumerate() {
            for b in &words[i..] {
                let keys = [*a, *b, words[(i + 3) % words.len()], "\u{6}price hike"];
                for count in [2, 3, 8] {
                    assert_eq!(
                        Shard::of_four_keys(keys, count),
                        keys.map(|key| Shard::of_key(key, count)),
                        "{keys:?} among {count}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_key_has_exactly_one_owner() {
        for count in [1, 2, 3, 8] {
            for i in 0..500 {
                let term = term_key::key(TermKind::Word, &format!("term{i}"));
                let series = format!("posts.source=s{i}");
                let actor = format!("{ACTOR_SERIES_PREFIX}a{i}");
                for key in [&term, &series] {
                    let owners = Shard::all(count).filter(|s| {
                        if key == &term {
                            s.owns_term(key)
                        } else {
                            s.owns_series(key)
                        }
                    });
                    assert_eq!(owners.count(), 1, "{key} among {count}");
                }
                let actor_owners: Vec<_> = Shard::all(count)
                    .filter(|s| s.owns_series(&actor))
                    .collect();
                assert_eq!(actor_owners.len(), 1);
                assert!(
                    actor_owners[0].owns_term(&term_key::key(TermKind::Actor, &format!("a{i}")))
                );
            }
        }
    }

    #[test]
    fn keys_spread_evenly_and_the_hash_is_fixed() {
        let mut per_shard = [0u32; 4];
        for i in 0..40_000 {
            per_shard[Shard::of_key(&format!("w{i}"), 4) as usize] += 1;
        }
        for n in per_shard {
            assert!((9_000..11_000).contains(&n), "{per_shard:?}");
        }
        // Placement must not change between builds: checkpoints depend on it (values
        // from an independent FNV-1a in Python).
        assert_eq!(
            ["", "a", "acme", "#fire"].map(|k| Shard::of_key(k, 1000)),
            [796, 685, 27, 446]
        );
    }

    #[test]
    fn an_alert_belongs_to_the_shard_of_its_term_or_series() {
        for count in [2, 5] {
            for i in 0..200 {
                let term = format!("t{i}");
                let key = term_key::key(TermKind::Hashtag, &term);
                assert_eq!(
                    Shard::of_alert_key(&format!("trend:hashtag:{term}"), count),
                    Some(Shard::of_key(&key, count))
                );
                let series = format!("{ACTOR_SERIES_PREFIX}a{i}");
                let owner = Shard::of_alert_key(&format!("anomaly:{series}"), count).unwrap();
                assert!(Shard::new(owner, count).unwrap().owns_series(&series));
            }
        }
        assert_eq!(
            Shard::of_alert_id("trend:hashtag:#x@1767225660000", 5),
            Shard::of_alert_key("trend:hashtag:#x", 5)
        );
        assert_eq!(Shard::of_alert_key("trend:nonsense:x", 3), None);
        assert_eq!(Shard::of_alert_key("co-mention:a", 3), None);
    }

    #[test]
    fn an_index_outside_the_count_is_refused() {
        assert_eq!(Shard::new(2, 2), Err(InvalidShard { index: 2, count: 2 }));
        assert!(Shard::new(1, 2).is_ok_and(|s| !s.is_whole()));
    }
}
