//! A compact map from term keys to small values, for state kept per live term (the trend
//! baselines): one million terms must fit in well under 100 MB.
//!
//! A `HashMap<Box<str>, V>` costs a 16-byte box and a separate heap allocation (≥ 32 bytes
//! with malloc's overhead) per key, and its buckets are rewritten all over after each
//! doubling, so right after one it holds ~2.3× the space of its entries in resident
//! memory. Here the keys are concatenated in one arena string, their spans and the values
//! sit in two dense vectors by entry number (only their used prefix is ever touched, so
//! the spare capacity of a doubling costs no resident memory; the spans, which every
//! lookup reads, stay compact and cache-friendly), and the hash index holds 4-byte entry
//! numbers. Per term: the key's bytes, 8 bytes of span, the value, ~5–10 bytes of
//! index, and 1 byte of filter.
//!
//! Most lookups miss (a window's long tail of words and bigrams seen once), and a miss in
//! a large hash index costs a cache miss. A one-bit-per-hash filter (8 bits per entry,
//! two probes: ~5% false positives), small enough to stay in cache, answers most of them. Removal happens in bulk ([`TermTable::retain`]), which rebuilds the arena and the
//! index, so it costs O(len) and is meant to be amortized (e.g. when the table doubled).

use std::hash::BuildHasher;

use hashbrown::HashTable;
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
    index: HashTable<u32>,
    /// By entry number.
    spans: Vec<Span>,
    values: Vec<V>,
    arena: String,
    /// Bits set for each key's hash (see the module docs); a power of two long.
    filter: Vec<u64>,
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

/// Filter bits per entry, at most (the filter doubles when it gets denser).
const FILTER_BITS_PER_ENTRY: usize = 8;

impl<V> Default for TermTable<V> {
    fn default() -> Self {
        TermTable {
            index: HashTable::new(),
            spans: Vec::new(),
            values: Vec::new(),
            arena: String::new(),
            filter: vec![0; 1],
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
        if let Some(existing) = self.get_mut(key) {
            *existing = value;
            return;
        }
        let span = Span {
            start: u32::try_from(self.arena.len()).expect("term arena under 4 GiB"),
            len: u32::try_from(key.len()).expect("term under 4 GiB"),
        };
        self.arena.push_str(key);
        let number = u32::try_from(self.spans.len()).expect("under 4 billion terms");
        self.spans.push(span);
        self.values.push(value);
        let hash = self.hasher.hash_one(key);
        if self.spans.len() * FILTER_BITS_PER_ENTRY > self.filter.len() * 64 {
            self.rebuild_filter(self.filter.len() * 2);
        } else {
            self.mark(hash);
        }
        let (spans, arena, hasher) = (&self.spans, &self.arena, &self.hasher);
        self.index.insert_unique(hash, number, |&n| {
            hasher.hash_one(key_of(arena, spans[n as usize]))
        });
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
        let (arena, spans, hasher) = (&self.arena, &self.spans, &self.hasher);
        self.index.clear();
        for (number, span) in (0u32..).zip(spans) {
            self.index
                .insert_unique(hasher.hash_one(key_of(arena, *span)), number, |&n| {
                    hasher.hash_one(key_of(arena, spans[n as usize]))
                });
        }
        self.index
            .shrink_to_fit(|&n| hasher.hash_one(key_of(arena, spans[n as usize])));
        let words = (self.spans.len() * FILTER_BITS_PER_ENTRY).div_ceil(64);
        self.rebuild_filter(words.next_power_of_two());
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
        let hash = self.hasher.hash_one(key);
        if !self.may_hold(hash) {
            return None;
        }
        self.index
            .find(hash, |&n| {
                key_of(&self.arena, self.spans[n as usize]) == key
            })
            .map(|&n| n as usize)
    }
}

impl<V> TermTable<V> {
    /// The two filter bits of a hash: from its high bits (the index uses the low ones).
    fn filter_bits(&self, hash: u64) -> [usize; 2] {
        let bits = self.filter.len() * 64;
        [
            (hash >> 40) as usize & (bits - 1),
            (hash >> 16) as usize & (bits - 1),
        ]
    }

    fn mark(&mut self, hash: u64) {
        for bit in self.filter_bits(hash) {
            self.filter[bit / 64] |= 1 << (bit % 64);
        }
    }

    fn may_hold(&self, hash: u64) -> bool {
        self.filter_bits(hash)
            .iter()
            .all(|&bit| self.filter[bit / 64] & (1 << (bit % 64)) != 0)
    }

    /// Resets the filter to `words` 64-bit words (a power of two) and marks every key.
    fn rebuild_filter(&mut self, words: usize) {
        self.filter = vec![0; words.max(1)];
        for at in 0..self.spans.len() {
            let hash = self.hasher.hash_one(key_of(&self.arena, self.spans[at]));
            self.mark(hash);
        }
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
