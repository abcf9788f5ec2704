//! A compact map from term keys to small values, for state kept per live term (the trend
//! baselines): one million terms must fit in well under 100 MB.
//!
//! A `HashMap<Box<str>, V>` costs a 16-byte box and a separate heap allocation (≥ 32 bytes
//! with malloc's overhead) per key, and its buckets are rewritten all over after each
//! doubling, so right after one it holds ~2.3× the space of its entries in resident
//! memory. Here the keys are concatenated in one arena string, their spans and the values
//! sit in two dense vectors by entry number (only their used prefix is ever touched, so
//! the spare capacity of a doubling costs no resident memory; the spans, which every
//! lookup reads, stay compact and cache-friendly), and the hash index holds entry
//! numbers with a hash tag. Per term: the key's bytes, 8 bytes of span, the value, and
//! ~10–15 bytes of index.
//!
//! Closing a window looks up every term of the window (up to `max_terms_per_window`), and
//! in a table of a million terms each lookup is a chain of cache misses (the index bucket,
//! the entry's span, its key's bytes, its value). [`TermTable::upsert_each`] looks keys up
//! in batches (of [`BATCH`]) whose misses overlap: all the batch's buckets are prefetched, then
//! the entries they most likely name, then those entries' keys, and only then is each key
//! looked up and compared, in cache (see [`crate::probe_index`]). Removal happens in bulk
//! ([`TermTable::retain`]), which rebuilds the arena and the index, so it costs O(len) and
//! is meant to be amortized (e.g. when the table doubled).

use std::hash::BuildHasher;

use crate::probe_index::{prefetch, ProbeIndex, BATCH};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where a key sits in the arena.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    len: u32,
}

/// See the module docs. Keys are at most 4 GiB in total (the arena is indexed by `u32`).
#[derive(Debug, Clone)]
pub struct TermTable<V> {
    /// Entry numbers, hashed by their key.
    index: ProbeIndex,
    /// By entry number.
    spans: Vec<Span>,
    values: Vec<V>,
    arena: String,
    /// Seeded at random per table, since the keys come from anyone who posts.
    hasher: foldhash::quality::RandomState,
}

/// Written as a sequence of `(key, value)` pairs in entry order; read back into a table
/// with a fresh hasher seed (the seed changes speed only, never contents).
impl<V: Serialize> Serialize for TermTable<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        for entry in self.iter() {
            seq.serialize_element(&entry)?;
        }
        seq.end()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for TermTable<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let entries = Vec::<(String, V)>::deserialize(deserializer)?;
        let mut table = TermTable::default();
        for (key, value) in entries {
            table.insert(&key, value);
        }
        Ok(table)
    }
}

impl<V> Default for TermTable<V> {
    fn default() -> Self {
        TermTable {
            index: ProbeIndex::default(),
            spans: Vec::new(),
            values: Vec::new(),
            arena: String::new(),
            hasher: foldhash::quality::RandomState::default(),
        }
    }
}

impl<V> TermTable<V> {
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        let at = self.find(key)?;
        Some(&self.values[at])
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        let at = self.find(key)?;
        Some(&mut self.values[at])
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_some()
    }

    /// Inserts or replaces the value of `key`.
    pub fn insert(&mut self, key: &str, value: V) {
        let hash = self.hasher.hash_one(key);
        match self.find_hashed(hash, key) {
            Some(at) => self.values[at] = value,
            None => self.insert_absent(hash, key, value),
        }
    }

    /// For each of `items`, in order: calls `visit` with the item and the value of its key
    /// (`None` when the key is not in the table), and inserts the value that `visit`
    /// returns for an absent key. The same as `get_mut` then `insert` per item, with the
    /// lookups done in batches whose cache misses overlap (see the module docs).
    pub fn upsert_each<'k, T>(
        &mut self,
        items: impl IntoIterator<Item = T>,
        key: impl Fn(&T) -> &'k str,
        mut visit: impl FnMut(T, Option<&mut V>) -> Option<V>,
    ) {
        let mut batch: Vec<(u64, T)> = Vec::with_capacity(BATCH);
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            batch.extend(items.by_ref().take(BATCH).map(|item| {
                let hash = self.hasher.hash_one(key(&item));
                self.index.prefetch(hash);
                (hash, item)
            }));
            let mut candidates = [None; BATCH];
            for (candidate, (hash, _)) in candidates.iter_mut().zip(&batch) {
                *candidate = self.index.candidate(*hash);
            }
            for &at in candidates.iter().flatten() {
                prefetch(&self.spans[at as usize]);
                prefetch(&self.values[at as usize]);
            }
            for &at in candidates.iter().flatten() {
                let span = self.spans[at as usize];
                if let Some(byte) = self.arena.as_bytes().get(span.start as usize) {
                    prefetch(byte);
                }
            }
            for (hash, item) in batch.drain(..) {
                // The key outlives the item (`'k`): most keys are absent and not inserted,
                // and must not be copied for that.
                let item_key = key(&item);
                match self.find_hashed(hash, item_key) {
                    Some(at) => {
                        visit(item, Some(&mut self.values[at]));
                    }
                    None => {
                        if let Some(value) = visit(item, None) {
                            self.insert_absent(hash, item_key, value);
                        }
                    }
                }
            }
        }
    }

    /// Appends `key` (hashed to `hash`), known to be absent.
    fn insert_absent(&mut self, hash: u64, key: &str, value: V) {
        let span = Span {
            start: u32::try_from(self.arena.len()).expect("term arena under 4 GiB"),
            len: u32::try_from(key.len()).expect("term under 4 GiB"),
        };
        self.arena.push_str(key);
        let number = u32::try_from(self.spans.len())
            .ok()
            .filter(|&n| n < u32::MAX)
            .expect("under 4 billion terms");
        self.spans.push(span);
        self.values.push(value);
        self.index.insert_unique(hash, number);
    }

    /// Keeps the entries for which `keep` is true, then rebuilds the arena and index
    /// (so that removed keys free their space). Entries are compacted in place and the
    /// index keeps its allocation: a copy of the table would double its memory exactly
    /// when it is largest.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &V) -> bool) {
        let old_arena = std::mem::take(&mut self.arena);
        self.arena.reserve_exact(old_arena.len());
        let mut kept = 0;
        for at in 0..self.spans.len() {
            let span = self.spans[at];
            let key = key_of(&old_arena, span);
            if keep(key, &self.values[at]) {
                self.spans[kept] = Span {
                    start: u32::try_from(self.arena.len()).expect("term arena under 4 GiB"),
                    len: span.len,
                };
                self.arena.push_str(key);
                self.values.swap(kept, at);
                kept += 1;
            }
        }
        drop(old_arena);
        self.spans.truncate(kept);
        self.values.truncate(kept);
        self.arena.shrink_to_fit();
        self.spans.shrink_to_fit();
        self.values.shrink_to_fit();
        self.index.clear();
        self.index.reserve(self.spans.len());
        for (number, span) in (0u32..).zip(&self.spans) {
            let hash = self.hasher.hash_one(key_of(&self.arena, *span));
            self.index.insert_unique(hash, number);
        }
        self.index.shrink_to_fit();
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.spans
            .iter()
            .zip(&self.values)
            .map(|(span, value)| (key_of(&self.arena, *span), value))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.values.iter()
    }

    fn find(&self, key: &str) -> Option<usize> {
        self.find_hashed(self.hasher.hash_one(key), key)
    }

    fn find_hashed(&self, hash: u64, key: &str) -> Option<usize> {
        self.index
            .find(hash, |n| key_of(&self.arena, self.spans[n as usize]) == key)
            .map(|n| n as usize)
    }
}

fn key_of(arena: &str, span: Span) -> &str {
    &arena[span.start as usize..(span.start + span.len) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn behaves_like_a_map() {
        let mut table = TermTable::default();
        let mut model = HashMap::new();
        for i in 0..5_000u32 {
            let key = format!("term{}", i % 3_000);
            let value = i;
            table.insert(&key, value);
            model.insert(key, value);
        }
        assert_eq!(table.len(), model.len());
        for (key, value) in &model {
            assert_eq!(table.get(key), Some(value), "{key}");
        }
        assert_eq!(table.get("absent"), None);
        *table.get_mut("term7").unwrap() += 1;
        assert_eq!(table.get("term7"), Some(&(model["term7"] + 1)));
        assert!(table.contains_key("term2999") && !table.contains_key("term3000"));
        let mut seen: Vec<(String, u32)> = table.iter().map(|(k, v)| (k.to_owned(), *v)).collect();
        seen.sort();
        assert_eq!(seen.len(), 3_000);
    }

    /// Batched lookups see the inserts made earlier in the same batch (repeated keys),
    /// and change and insert what `visit` says, like `get_mut` and `insert` per key.
    #[test]
    fn upsert_each_is_get_mut_then_insert_per_key() {
        let mut table = TermTable::default();
        let mut model = HashMap::new();
        for round in 0..20u32 {
            let keys: Vec<String> = (0..3 * BATCH as u32 + round)
                .map(|i| format!("term{}", (i * 7 + round * 13) % 90))
                .collect();
            let mut seen = Vec::new();
            table.upsert_each(
                keys.iter(),
                |&key| key.as_str(),
                |key, value| {
                    seen.push(value.as_deref().copied());
                    match value {
                        Some(value) => {
                            *value += 1;
                            None
                        }
                        // Odd keys are inserted, even ones are not.
                        None => key.ends_with(['1', '3', '5', '7', '9']).then_some(round),
                    }
                },
            );
            let mut expected = Vec::new();
            for key in &keys {
                expected.push(model.get(key).copied());
                match model.get_mut(key) {
                    Some(value) => *value += 1,
                    None if key.ends_with(['1', '3', '5', '7', '9']) => {
                        model.insert(key.clone(), round);
                    }
                    None => {}
                }
            }
            assert_eq!(seen, expected, "round {round}");
        }
        assert_eq!(table.len(), model.len());
        for (key, value) in &model {
            assert_eq!(table.get(key), Some(value));
        }
    }

    #[test]
    fn retain_drops_entries_and_their_keys() {
        let mut table = TermTable::default();
        for i in 0..1_000u32 {
            table.insert(&format!("k{i}"), i);
        }
        let arena_before = table.arena.len();
        table.retain(|key, value| key.ends_with('7') && *value > 500);
        assert_eq!(table.len(), 50);
        assert!(
            table.arena.len() < arena_before / 10,
            "removed keys free the arena"
        );
        assert_eq!(table.get("k507"), Some(&507));
        assert_eq!(table.get("k508"), None);
        assert_eq!(table.get("k7"), None);
        table.insert("k7", 7);
        assert_eq!((table.get("k7"), table.len()), (Some(&7), 51));
    }

    #[test]
    fn empty_and_unicode_keys() {
        let mut table = TermTable::default();
        table.insert("", 1);
        table.insert("東京", 2);
        table.insert("\u{1}fire", 3);
        assert_eq!(
            (table.get(""), table.get("東京"), table.get("\u{1}fire")),
            (Some(&1), Some(&2), Some(&3))
        );
    }
}
