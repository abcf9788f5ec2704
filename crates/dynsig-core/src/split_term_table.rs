//! [`SplitTermTable`]: a [`TermTable`] cut into parts by key hash, so that the terms of a
//! window can be looked up and updated by several threads at once.
//!
//! Closing a window visits the baseline of every term of the window (up to
//! `trends.max_terms_per_window`, 200,000 by default) and each visit is a chain of cache
//! misses: ~25 ms for a full window on the 2-core machine of `benches/RESULTS.md`, during
//! which no record is counted and no signal of that window can be published. The parts
//! are disjoint, so each thread owns the parts it updates (no lock, no shared write);
//! every part hashes with the same seed, so a key is hashed once to find its part and its
//! bucket within it (the part comes from the hash's low bits, the bucket from its high
//! ones, see [`crate::probe_index`]).
//!
//! Results do not depend on the number of threads: each key's visit sees and leaves the
//! same value whichever thread runs it, and callers merge what the threads collect in
//! an order-independent way (the trend ranking is a total order).

use std::hash::BuildHasher;

use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::term_table::{upsert_routed, TermTable};

/// Parts of a table, and so threads that can share a close. Measured on 2 cores: 2 parts
/// cost a single thread nothing; 4 made its close ~10% slower (each key's table is one
/// more indirection, and the tables' indexes are sized separately).
pub const PARTS: usize = 2;
/// Below this many items, spawning threads costs more than it saves (a thread starts in
/// tens of microseconds; an item takes ~100 ns).
const PARALLEL_MIN_ITEMS: usize = 16_384;

/// See the module docs. Reads and writes like one [`TermTable`].
#[derive(Debug, Clone)]
pub struct SplitTermTable<V> {
    parts: Vec<TermTable<V>>,
    hasher: foldhash::quality::RandomState,
}

impl<V> Default for SplitTermTable<V> {
    fn default() -> Self {
        let hasher = foldhash::quality::RandomState::default();
        SplitTermTable {
            parts: (0..PARTS)
                .map(|_| TermTable::with_hasher(hasher.clone()))
                .collect(),
            hasher,
        }
    }
}

/// Written as one table is (a sequence of `(key, value)` pairs, part after part), so
/// that a state saved before the split reads back, and the other way round.
impl<V: Serialize> Serialize for SplitTermTable<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        for entry in self.iter() {
            seq.serialize_element(&entry)?;
        }
        seq.end()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for SplitTermTable<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let entries = Vec::<(String, V)>::deserialize(deserializer)?;
        let mut table = SplitTermTable::default();
        for (key, value) in entries {
            let hash = table.hasher.hash_one(key.as_str());
            table.parts[part_of(hash)].insert_hashed(hash, &key, value);
        }
        Ok(table)
    }
}

fn part_of(hash: u64) -> usize {
    hash as usize % PARTS
}

impl<V> SplitTermTable<V> {
    pub fn len(&self) -> usize {
        self.parts.iter().map(TermTable::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(TermTable::is_empty)
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        let hash = self.hasher.hash_one(key);
        self.parts[part_of(hash)].get_hashed(hash, key)
    }

    /// Inserts or replaces the value of `key`.
    pub fn insert(&mut self, key: &str, value: V) {
        let hash = self.hasher.hash_one(key);
        self.parts[part_of(hash)].insert_hashed(hash, key, value);
    }

    /// Keeps the entries for which `keep` is true (see [`TermTable::retain`]).
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &V) -> bool) {
        for part in &mut self.parts {
            part.retain(&mut keep);
        }
    }

    /// Every entry, part after part.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.parts.iter().flat_map(TermTable::iter)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.parts.iter().flat_map(TermTable::values)
    }

    /// [`TermTable::upsert_each`] over `items`, on up to `threads` threads once there are
    /// enough items: each thread goes through all the items and visits those of its
    /// parts (in their order), with an accumulator of its own made by `start`. Returns
    /// the accumulators, one per thread used; what they collect must not depend on how
    /// the items were shared out.
    ///
    /// Every thread reads and hashes every key, and skips most: scattering the items into
    /// lists per part first was measured slower, its writes costing more than the hashes.
    pub fn upsert_each<'k, T, A, I>(
        &mut self,
        items: I,
        key: impl Fn(&T) -> &'k str + Sync,
        threads: usize,
        start: impl Fn() -> A + Sync,
        visit: impl Fn(&mut A, T, Option<&mut V>) -> Option<V> + Sync,
    ) -> Vec<A>
    where
        I: ExactSizeIterator<Item = T> + Clone + Send,
        V: Send,
        A: Send,
    {
        let threads = if items.len() < PARALLEL_MIN_ITEMS {
            1
        } else {
            threads.clamp(1, PARTS)
        };
        // Thread `t` takes parts t, t + threads, t + 2 * threads...: the part's index
        // among its own is `part / threads`.
        let mut shares: Vec<Vec<&mut TermTable<V>>> = (0..threads).map(|_| Vec::new()).collect();
        for (part, table) in self.parts.iter_mut().enumerate() {
            shares[part % threads].push(table);
        }
        let hasher = &self.hasher;
        let run = |thread: usize, mut tables: Vec<&mut TermTable<V>>, items: I| {
            let mut acc = start();
            let own = items.filter_map(|item| {
                let hash = hasher.hash_one(key(&item));
                let part = part_of(hash);
                (part % threads == thread).then_some((part / threads, hash, item))
            });
            upsert_routed(&mut tables, own, &key, |item, value| {
                visit(&mut acc, item, value)
            });
            acc
        };
        let run = &run;
        std::thread::scope(|scope| {
            let mut shares = shares.into_iter().enumerate();
            let (_, own) = shares.next().expect("at least one thread");
            let others: Vec<_> = shares
                .map(|(t, tables)| {
                    let items = items.clone();
                    scope.spawn(move || run(t, tables, items))
                })
                .collect();
            let mut accs = vec![run(0, own, items)];
            accs.extend(others.into_iter().map(|h| match h.join() {
                Ok(acc) => acc,
                Err(panic) => std::panic::resume_unwind(panic),
            }));
            accs
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Adds each item's count to its key's value; keys reaching 2 are inserted. Returns
    /// the table, what the visits saw (sorted: threads visit in another order) and the
    /// number of accumulators.
    fn count_into(
        table: &mut SplitTermTable<u32>,
        keys: &[String],
        threads: usize,
    ) -> (Vec<(String, Option<u32>)>, usize) {
        let accs = table.upsert_each(
            keys.iter(),
            |k| k.as_str(),
            threads,
            Vec::new,
            |seen: &mut Vec<(String, Option<u32>)>, key, value| {
                seen.push((key.clone(), value.as_deref().copied()));
                match value {
                    Some(v) => {
                        *v += 1;
                        None
                    }
                    None => key.ends_with(['0', '2', '4', '6', '8']).then_some(1),
                }
            },
        );
        let n = accs.len();
        let mut seen: Vec<_> = accs.into_iter().flatten().collect();
        seen.sort();
        (seen, n)
    }

    /// Two threads and one visit the same values and leave the same table, like a map
    /// updated item by item; repeated keys see the earlier items' changes.
    #[test]
    fn threads_change_nothing_but_speed() {
        let keys: Vec<String> = (0..40_000u32)
            .map(|i| format!("term{}", (i * 7_919) % 25_000))
            .collect();
        let (mut one, mut two) = (SplitTermTable::default(), SplitTermTable::default());
        for round in 0..3 {
            let (seen_one, accs_one) = count_into(&mut one, &keys, 1);
            let (seen_two, accs_two) = count_into(&mut two, &keys, 2);
            assert_eq!((accs_one, accs_two), (1, 2), "round {round}");
            assert_eq!(seen_one, seen_two, "round {round}");
        }
        let mut model: HashMap<&str, u32> = HashMap::new();
        for _ in 0..3 {
            for key in &keys {
                match model.get_mut(key.as_str()) {
                    Some(v) => *v += 1,
                    None if key.ends_with(['0', '2', '4', '6', '8']) => {
                        model.insert(key, 1);
                    }
                    None => {}
                }
            }
        }
        for table in [&one, &two] {
            assert_eq!(table.len(), model.len());
            for (key, value) in &model {
                assert_eq!(table.get(key), Some(value), "{key}");
            }
        }
    }

    #[test]
    fn few_items_stay_on_the_calling_thread() {
        let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
        let (_, accs) = count_into(&mut SplitTermTable::default(), &keys, 2);
        assert_eq!(accs, 1);
    }

    /// Saved as one table: a state written before the split reads back, and the other way.
    #[test]
    fn serializes_as_one_table() {
        let mut plain = TermTable::default();
        let mut split = SplitTermTable::default();
        for i in 0..1_000u32 {
            plain.insert(&format!("t{i}"), i);
            split.insert(&format!("t{i}"), i);
        }
        let restored: SplitTermTable<u32> =
            serde_json::from_str(&serde_json::to_string(&plain).unwrap()).unwrap();
        let back: TermTable<u32> =
            serde_json::from_str(&serde_json::to_string(&split).unwrap()).unwrap();
        for i in 0..1_000u32 {
            let key = format!("t{i}");
            assert_eq!(restored.get(&key), Some(&i));
            assert_eq!(back.get(&key), Some(&i));
        }
        assert_eq!((restored.len(), back.len()), (1_000, 1_000));
        split.retain(|_, &v| v % 2 == 0);
        assert_eq!(split.len(), 500);
        assert_eq!(split.get("t3"), None);
        assert_eq!(split.values().count(), 500);
    }
}
