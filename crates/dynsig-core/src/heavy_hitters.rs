//! Bounded-memory heavy hitters: [`HeavyHitters`], a SpaceSaving counter (Metwally, Agrawal
//! and El Abbadi, 2005) over string keys, with a caller-defined payload per tracked key.
//!
//! It tracks at most `capacity` keys. While fewer than `capacity` distinct keys have been
//! seen it is an exact hash map. When it is full and a new key arrives, the tracked key with
//! the smallest count is evicted and the new key takes over its count: `count = min +
//! weight`, `error = min`, payload `V::default()`.
//!
//! # Guarantees
//!
//! Let `N` be [`HeavyHitters::total`] (the sum of all weights added) and `true(k)` the total
//! weight added for key `k`. At every moment:
//!
//! - every tracked key has `count - error <= true(k) <= count`: `count` overestimates by at
//!   most `error`, and `count - error` is a lower bound;
//! - `error <= min count <= N / capacity`, because the tracked counts always sum to `N`;
//! - every key with `true(k) > N / capacity` is tracked (an untracked key's true count never
//!   exceeds the current minimum count);
//! - while [`HeavyHitters::is_exact`] (nothing was ever evicted), every count is exact and
//!   every error is 0.
//!
//! Results depend only on the sequence of `add` calls: eviction takes the smallest
//! `(count, slot)`, where slots are numbered in arrival order and reused by the key that
//! takes over an evicted one. The hasher only decides where keys sit in the index.
//!
//! # Cost
//!
//! - Under capacity: one hash and an expected O(1) probe per `add`; no heap work, and no
//!   allocation when the key is already tracked (lookups take `&str`).
//! - Full: the first eviction builds a binary min-heap in O(capacity); after that
//!   incrementing a tracked key is O(1) (the heap is kept lazily, see `MinHeap`) and an
//!   eviction O(log capacity) per stale heap entry it refreshes. An eviction also hashes the
//!   evicted key again and appends the new key to the key arena.
//! - Memory is O(capacity), bounded whatever the vocabulary. Per tracked key:
//!   `24 + size_of::<V>()` bytes of slot (16 hot bytes, key reference and count, apart
//!   from the error and the payload, so that counting a key touches little), the bytes
//!   of a key longer than 7 in the arena (at most twice over: see below), 8-byte index
//!   buckets at a load between ~0.53 and 0.8 (10 to 15 bytes per key), and 16 bytes of
//!   heap once evicting. The slot vector never grows past `capacity`.
//!
//! # Layout
//!
//! Keys of up to 7 bytes (most words) live inline in their slot's hot part; longer ones
//! live once, concatenated in one arena string that the slots point into: no
//! allocation per key (a window's sketch is filled anew every window), and keys sit densely
//! in memory. An evicted key's bytes stay in the arena as garbage until garbage outweighs
//! the live keys; then the arena is rewritten with the live keys only (amortized O(1) per
//! eviction). The index is a [`ProbeIndex`] of slot numbers, hashed by their keys (like
//! `indexmap`: a map keyed by the strings would need a second copy of every key to find
//! and remove an evicted one). A probe costs a bucket, the slot's hot part and, for a long
//! key, its bytes in the arena: three cache misses once a window's keys outgrow the cache.
//! [`HeavyHitters::add_each`] counts a batch of keys (a post's terms) with part of those
//! misses overlapping: every key is hashed and its bucket prefetched before the keys are
//! counted one by one. (Prefetching the slots the buckets name as well, in a second pass,
//! measured no faster: a post's dozen terms are too few for the second wave of loads to
//! arrive before they are used.)

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::probe_index::{ProbeIndex, BATCH};

/// A SpaceSaving heavy-hitter counter with a payload `V` per tracked key (see the module
/// documentation for the guarantees).
#[derive(Debug, Clone)]
pub struct HeavyHitters<V, S = RandomState> {
    capacity: usize,
    /// What every `add` reads, by slot number: the key and its count. Kept apart from the
    /// rest of the slot so that an index probe and a count update touch 16 bytes per key
    /// (a window's keys then mostly fit in L2); `len() <= capacity`.
    hot: Vec<Hot>,
    /// The rest of each slot (error, payload), read when a payload is used or on output.
    slots: Vec<Slot<V>>,
    /// The keys of the slots, and `garbage` bytes of evicted ones.
    arena: String,
    garbage: usize,
    /// Slot numbers, hashed by their keys.
    index: ProbeIndex,
    /// Empty until the first eviction; afterwards it holds every slot.
    heap: MinHeap,
    hasher: S,
    total: u64,
    evictions: u64,
}

/// One tracked key, as returned by [`HeavyHitters::get`] and [`HeavyHitters::iter`].
#[derive(Debug)]
pub struct Counted<'a, V> {
    pub key: &'a str,
    /// Upper bound of the key's true count.
    pub count: u64,
    /// Maximum overestimate: `count - error` is a lower bound of the true count.
    pub error: u64,
    pub value: &'a V,
}

#[derive(Debug, Clone, Copy)]
struct Hot {
    key: KeyRef,
    count: u64,
}

#[derive(Debug, Clone)]
struct Slot<V> {
    error: u64,
    value: V,
}

/// A key of at most 7 bytes, held inline (its bytes, zero-padded, then its length in
/// byte 7), or where a longer key sits in the arena (start, then length with the high bit
/// set). Most words are that short: comparing them costs one 8-byte compare, with no
/// visit to the arena (a cache miss per probe) and no call to `memcmp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeyRef([u8; 8]);

impl KeyRef {
    const SPILLED: u32 = 1 << 31;

    /// The inline form of `key`, if it is short enough. Built with overlapping loads: a
    /// copy of a variable length would call `memcpy`.
    fn inline(key: &str) -> Option<KeyRef> {
        let bytes = key.as_bytes();
        let len = bytes.len();
        let at = |i: usize| u64::from(bytes[i]) << (8 * i);
        let four = |i: usize| u64::from(u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap()));
        let packed = match len {
            0 => 0,
            1..=3 => at(0) | at(len / 2) | at(len - 1),
            4..=7 => four(0) | four(len - 4) << (8 * (len - 4)),
            _ => return None,
        };
        Some(KeyRef((packed | (len as u64) << 56).to_le_bytes()))
    }

    fn spilled(start: u32, len: u32) -> KeyRef {
        let word = u64::from(start) | u64::from(len | Self::SPILLED) << 32;
        KeyRef(word.to_le_bytes())
    }

    /// The bytes the key takes in the arena (0 when inline).
    fn spilled_len(self) -> usize {
        let high = u32::from_le_bytes(self.0[4..].try_into().unwrap());
        if high & Self::SPILLED == 0 {
            0
        } else {
            (high & !Self::SPILLED) as usize
        }
    }

    fn of<'a>(&'a self, arena: &'a str) -> &'a str {
        match self.spilled_len() {
            0 => {
                let len = usize::from(self.0[7]);
                std::str::from_utf8(&self.0[..len]).expect("an inline key is a whole string")
            }
            len => {
                let start = u32::from_le_bytes(self.0[..4].try_into().unwrap()) as usize;
                &arena[start..start + len]
            }
        }
    }

    /// Whether this is the key of a probe (`inline`: the probe's inline form, if any).
    fn is(&self, key: &str, inline: Option<KeyRef>, arena: &str) -> bool {
        match inline {
            Some(inline) => *self == inline,
            None => self.spilled_len() == key.len() && self.of(arena) == key,
        }
    }
}

impl<V: Default> HeavyHitters<V> {
    /// A counter tracking at most `capacity` keys (at least 1), with std's randomly seeded
    /// hasher, which keeps crafted keys from degrading the index.
    pub fn new(capacity: usize) -> Self {
        Self::with_hasher(capacity, RandomState::new())
    }
}

impl<V: Default, S: BuildHasher> HeavyHitters<V, S> {
    /// Like [`HeavyHitters::new`] with a chosen hasher (for example a faster one for trusted
    /// keys). The hasher changes speed only, never results.
    pub fn with_hasher(capacity: usize, hasher: S) -> Self {
        assert!(capacity >= 1, "HeavyHitters capacity must be at least 1");
        // Slot numbers are u32.
        assert!(
            capacity <= MAX_CAPACITY,
            "HeavyHitters capacity must be at most {MAX_CAPACITY}"
        );
        HeavyHitters {
            capacity,
            hot: Vec::new(),
            slots: Vec::new(),
            arena: String::new(),
            garbage: 0,
            index: ProbeIndex::default(),
            heap: MinHeap::default(),
            hasher,
            total: 0,
            evictions: 0,
        }
    }

    /// Forgets every key but keeps the allocations (slots, arena, index), so that a sketch
    /// can be reused for the next window without growing (and rehashing) again from empty.
    pub fn clear(&mut self) {
        self.hot.clear();
        self.slots.clear();
        self.arena.clear();
        self.garbage = 0;
        self.index.clear();
        self.heap.clear();
        self.total = 0;
        self.evictions = 0;
    }

    /// Adds `weight` to `key`'s count and returns its payload, with `true` when the key was
    /// not tracked (new, or it just replaced an evicted key): the payload is then
    /// `V::default()`.
    pub fn add(&mut self, key: &str, weight: u64) -> (&mut V, bool) {
        let hash = self.hasher.hash_one(key);
        self.add_hashed(hash, key, weight)
    }

    /// [`Self::add`] for each of `keys` in order, calling `visit` with each key's payload
    /// and whether it is new: the same counts, payloads and evictions, with the lookups
    /// done in batches whose cache misses overlap (see the module docs).
    pub fn add_each<'k>(
        &mut self,
        keys: impl IntoIterator<Item = &'k str>,
        weight: u64,
        mut visit: impl FnMut(&mut V, bool),
    ) {
        let mut keys = keys.into_iter().peekable();
        let mut batch: [(u64, &str); BATCH] = [(0, ""); BATCH];
        while keys.peek().is_some() {
            let mut len = 0;
            for (at, key) in batch.iter_mut().zip(keys.by_ref()) {
                let hash = self.hasher.hash_one(key);
                self.index.prefetch(hash);
                *at = (hash, key);
                len += 1;
            }
            let batch = &batch[..len];
            for &(hash, key) in batch {
                let (value, new) = self.add_hashed(hash, key, weight);
                visit(value, new);
            }
        }
    }

    fn add_hashed(&mut self, hash: u64, key: &str, weight: u64) -> (&mut V, bool) {
        self.total += weight;
        let inline = KeyRef::inline(key);
        let (hot, arena) = (&self.hot, &self.arena);
        let found = self
            .index
            .find(hash, |slot| hot[slot as usize].key.is(key, inline, arena));
        let slot = match found {
            Some(slot) => {
                let slot = slot as usize;
                // The heap learns of it lazily (see `MinHeap`).
                self.hot[slot].count += weight;
                return (&mut self.slots[slot].value, false);
            }
            None if self.hot.len() < self.capacity => {
                let slot = self.hot.len();
                self.index.insert_unique(hash, slot as u32);
                self.track_new(key, weight);
                slot
            }
            None => self.replace_min(hash, key, weight),
        };
        (&mut self.slots[slot].value, true)
    }

    /// Exact path: a fresh slot (already in the index), no eviction.
    fn track_new(&mut self, key: &str, weight: u64) {
        let slot = self.hot.len();
        if slot == self.hot.capacity() {
            // Amortized doubling, but never past `capacity`: that memory would stay unused.
            let more = slot.max(4).min(self.capacity - slot);
            self.hot.reserve_exact(more);
            self.slots.reserve_exact(more);
        }
        let key = self.store(key);
        self.hot.push(Hot { key, count: weight });
        self.slots.push(Slot {
            error: 0,
            value: V::default(),
        });
    }

    /// SpaceSaving step: `key` (hashed to `hash`) takes over the slot of the smallest count.
    fn replace_min(&mut self, hash: u64, key: &str, weight: u64) -> usize {
        if !self.heap.is_built() {
            self.heap.build(&self.hot);
        }
        let slot = self.heap.min(&self.hot);
        let evicted = self.hot[slot].key;
        let evicted_hash = self.hasher.hash_one(evicted.of(&self.arena));
        self.index.remove(evicted_hash, slot as u32);
        self.index.insert_unique(hash, slot as u32);
        self.garbage += evicted.spilled_len();
        let key = self.store(key);
        let min = self.hot[slot].count;
        self.hot[slot] = Hot {
            key,
            count: min + weight,
        };
        self.slots[slot] = Slot {
            error: min,
            value: V::default(),
        };
        if self.garbage > self.arena.len() / 2 {
            self.compact_arena();
        }
        self.heap.min_replaced(&self.hot);
        self.evictions += 1;
        slot
    }

    /// The reference of `key`: inline, or appended to the arena.
    fn store(&mut self, key: &str) -> KeyRef {
        if let Some(inline) = KeyRef::inline(key) {
            return inline;
        }
        let start = u32::try_from(self.arena.len()).ok();
        let spilled = start
            .zip(u32::try_from(key.len()).ok())
            .and_then(|(start, len)| {
                start.checked_add(len)?;
                (len < KeyRef::SPILLED).then(|| KeyRef::spilled(start, len))
            });
        self.arena.push_str(key);
        spilled.expect("keys of a sketch under 2 GiB")
    }

    /// Rewrites the arena with the slots' keys only.
    fn compact_arena(&mut self) {
        let old = std::mem::take(&mut self.arena);
        self.garbage = 0;
        for at in 0..self.hot.len() {
            let key = self.hot[at].key;
            if key.spilled_len() > 0 {
                self.hot[at].key = self.store(key.of(&old));
            }
        }
    }

    /// The tracked entry of `key`, if any.
    pub fn get(&self, key: &str) -> Option<Counted<'_, V>> {
        let hash = self.hasher.hash_one(key);
        let inline = KeyRef::inline(key);
        let slot = self.index.find(hash, |slot| {
            self.hot[slot as usize].key.is(key, inline, &self.arena)
        })?;
        Some(self.counted(slot as usize))
    }
}

impl<V, S> HeavyHitters<V, S> {
    /// Every tracked key, in slot order (deterministic for a given input sequence).
    pub fn iter(&self) -> impl Iterator<Item = Counted<'_, V>> {
        (0..self.hot.len()).map(|slot| self.counted(slot))
    }

    fn counted(&self, slot: usize) -> Counted<'_, V> {
        Counted {
            key: self.hot[slot].key.of(&self.arena),
            count: self.hot[slot].count,
            error: self.slots[slot].error,
            value: &self.slots[slot].value,
        }
    }

    /// Number of tracked keys (at most [`HeavyHitters::capacity`]).
    pub fn len(&self) -> usize {
        self.hot.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hot.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// `N`: the sum of all weights added.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// True while nothing was ever evicted: every count is then exact and every error 0.
    pub fn is_exact(&self) -> bool {
        self.evictions == 0
    }

    /// How many keys were evicted to make room for new ones.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }
}

/// What a checkpoint keeps of a sketch: its totals and its tracked entries in slot order
/// (the index, the heap and the hasher seed are rebuilt; they change speed, not results).
#[derive(Serialize, Deserialize)]
struct SavedSketch<E> {
    capacity: usize,
    total: u64,
    evictions: u64,
    /// `(key, count, error, payload)` per slot.
    entries: E,
}

impl<V: Serialize, S> Serialize for HeavyHitters<V, S> {
    fn serialize<Z: Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        let entries: Vec<_> = self
            .iter()
            .map(|c| (c.key, c.count, c.error, c.value))
            .collect();
        SavedSketch {
            capacity: self.capacity,
            total: self.total,
            evictions: self.evictions,
            entries,
        }
        .serialize(serializer)
    }
}

impl<'de, V, S> Deserialize<'de> for HeavyHitters<V, S>
where
    V: Deserialize<'de> + Default,
    S: BuildHasher + Default,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let saved = SavedSketch::<Vec<(String, u64, u64, V)>>::deserialize(deserializer)?;
        if saved.capacity == 0
            || saved.capacity > MAX_CAPACITY
            || saved.entries.len() > saved.capacity
        {
            return Err(D::Error::custom("sketch: capacity out of range"));
        }
        let mut sketch = HeavyHitters::with_hasher(saved.capacity, S::default());
        for (key, count, error, value) in saved.entries {
            // Under capacity, `add` takes the next slot: slot order is kept.
            let (payload, new) = sketch.add(&key, count);
            if !new {
                return Err(D::Error::custom("sketch: duplicate key"));
            }
            *payload = value;
            let slot = sketch.slots.len() - 1;
            sketch.slots[slot].error = error;
        }
        sketch.total = saved.total;
        sketch.evictions = saved.evictions;
        Ok(sketch)
    }
}

/// The largest capacity: slot numbers are `u32`.
pub const MAX_CAPACITY: usize = 1 << 31;

/// Binary min-heap of `(count, slot)` entries, kept lazily: an entry holds its slot's count
/// as of when it was last placed, not the current one, so that counting a tracked key
/// (the common case, every term of every post) does no heap work at all.
///
/// Counts only ever grow, so every entry's count is at most its slot's. When the top
/// entry's count is still current, its slot is the smallest `(count, slot)` there is: any
/// other slot's count is at least its entry's, which is at least the top's (and on equal
/// counts the entries order by slot as the slots do). When it is not current, the entry is
/// refreshed, sifted down, and the new top checked. The work thus moves to evictions, and
/// a heavy key, once refreshed, sinks and seldom reaches the top again. (Kept eagerly, the
/// heap was sifted on every increment and eviction: 6% of the service's CPU at 250k posts
/// per window.)
#[derive(Debug, Clone, Default)]
struct MinHeap {
    entries: Vec<(u64, u32)>,
}

impl MinHeap {
    fn is_built(&self) -> bool {
        !self.entries.is_empty()
    }

    fn clear(&mut self) {
        self.entries.clear();
    }

    /// Floyd's O(n) heap construction over all slots.
    fn build(&mut self, slots: &[Hot]) {
        self.entries.clear();
        self.entries
            .extend((0..).zip(slots).map(|(slot, hot)| (hot.count, slot)));
        for at in (0..slots.len() / 2).rev() {
            self.sift_down(at);
        }
    }

    /// The slot with the smallest `(count, slot)`.
    fn min(&mut self, slots: &[Hot]) -> usize {
        loop {
            let (count, slot) = self.entries[0];
            let current = slots[slot as usize].count;
            if current == count {
                return slot as usize;
            }
            self.entries[0].0 = current;
            self.sift_down(0);
        }
    }

    /// The slot that [`MinHeap::min`] returned took a new key and count.
    fn min_replaced(&mut self, slots: &[Hot]) {
        let slot = self.entries[0].1;
        self.entries[0].0 = slots[slot as usize].count;
        self.sift_down(0);
    }

    fn sift_down(&mut self, mut at: usize) {
        let len = self.entries.len();
        loop {
            let left = 2 * at + 1;
            if left >= len {
                return;
            }
            let right = left + 1;
            let child = if right < len && self.entries[right] < self.entries[left] {
                right
            } else {
                left
            };
            if self.entries[at] < self.entries[child] {
                return;
            }
            self.entries.swap(at, child);
            at = child;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::hash::{BuildHasher, Hasher};

    use super::*;
    use crate::rng::SplitMix64;

    /// Roughly Zipf(1) over `1..=vocabulary`: log-uniform ranks.
    fn zipf(rng: &mut SplitMix64, vocabulary: u64) -> u64 {
        ((vocabulary as f64).powf(rng.unit()) as u64).clamp(1, vocabulary)
    }

    /// Puts every key in one probe sequence, to exercise the index's collision handling.
    #[derive(Debug, Clone, Default)]
    struct Colliding;

    impl BuildHasher for Colliding {
        type Hasher = ConstantHasher;

        fn build_hasher(&self) -> ConstantHasher {
            ConstantHasher
        }
    }

    struct ConstantHasher;

    impl Hasher for ConstantHasher {
        fn finish(&self) -> u64 {
            42
        }

        fn write(&mut self, _bytes: &[u8]) {}
    }

    /// SpaceSaving written the obvious O(capacity) way, with the same tie rule.
    struct Reference {
        capacity: usize,
        slots: Vec<(String, u64, u64)>,
    }

    impl Reference {
        fn add(&mut self, key: &str, weight: u64) {
            if let Some(slot) = self.slots.iter_mut().find(|slot| slot.0 == key) {
                slot.1 += weight;
            } else if self.slots.len() < self.capacity {
                self.slots.push((key.to_string(), weight, 0));
            } else {
                let (min_at, _) = self
                    .slots
                    .iter()
                    .enumerate()
                    .min_by_key(|(at, slot)| (slot.1, *at))
                    .expect("capacity >= 1");
                let min = self.slots[min_at].1;
                self.slots[min_at] = (key.to_string(), min + weight, min);
            }
        }
    }

    fn snapshot<V, S>(hitters: &HeavyHitters<V, S>) -> Vec<(String, u64, u64)> {
        hitters
            .iter()
            .map(|entry| (entry.key.to_string(), entry.count, entry.error))
            .collect()
    }

    #[test]
    fn short_keys_are_inline_and_every_key_reads_back() {
        let mut hitters = HeavyHitters::<()>::new(100);
        let keys = [
            "",
            "a",
            "ab",
            "abc",
            "abcd",
            "abcdefg",
            "abcdefgh",
            "é",
            "東京",
            "\u{1}東京x",
            "longer key",
        ];
        for key in keys {
            hitters.add(key, 1);
        }
        for (slot, key) in keys.iter().enumerate() {
            assert_eq!(
                hitters.hot[slot].key.spilled_len() == 0,
                key.len() <= 7,
                "{key:?}"
            );
            assert_eq!(hitters.get(key).map(|c| (c.key, c.count)), Some((*key, 1)));
        }
        // Same length and bytes but one: not the same key.
        assert!(hitters.get("abcdefx").is_none() && hitters.get("abcdefgx").is_none());
        assert_eq!(hitters.arena, "abcdefgh\u{1}東京xlonger key");
    }

    #[test]
    fn is_an_exact_map_under_capacity() {
        let mut rng = SplitMix64(7);
        let distinct = 300;
        let mut hitters = HeavyHitters::<u64>::new(distinct);
        let mut expected: HashMap<String, (u64, u64)> = HashMap::new();
        for _ in 0..5_000 {
            let key = format!("term{}", rng.below(distinct));
            let weight = 1 + rng.below(5) as u64;
            let (adds, reset) = hitters.add(&key, weight);
            *adds += 1;
            let entry = expected.entry(key).or_default();
            assert_eq!(reset, entry.1 == 0);
            entry.0 += weight;
            entry.1 += 1;
        }
        assert!(hitters.is_exact());
        assert_eq!(hitters.evictions(), 0);
        assert_eq!(hitters.len(), expected.len());
        assert_eq!(hitters.total(), expected.values().map(|e| e.0).sum::<u64>());
        for (key, (count, adds)) in &expected {
            let entry = hitters.get(key).expect("tracked");
            assert_eq!((entry.key, entry.count, entry.error), (&**key, *count, 0));
            assert_eq!(entry.value, adds);
        }
        assert!(hitters.get("absent").is_none());
        assert_eq!(hitters.iter().count(), expected.len());
    }

    #[test]
    fn matches_a_naive_space_saving_step_by_step() {
        for capacity in [1, 2, 7, 64] {
            let mut rng = SplitMix64(capacity as u64);
            let mut hitters = HeavyHitters::<()>::new(capacity);
            let mut colliding = HeavyHitters::<(), _>::with_hasher(capacity, Colliding);
            let mut reference = Reference {
                capacity,
                slots: Vec::new(),
            };
            for step in 0..4_000 {
                let key = format!("k{}", zipf(&mut rng, 4 * capacity as u64));
                let weight = 1 + rng.below(3) as u64;
                hitters.add(&key, weight);
                colliding.add(&key, weight);
                reference.add(&key, weight);
                if step % 37 == 0 {
                    assert_eq!(snapshot(&hitters), reference.slots, "capacity {capacity}");
                    assert_eq!(snapshot(&colliding), reference.slots);
                }
            }
            assert_eq!(snapshot(&hitters), reference.slots);
            assert!(hitters.evictions() > 0);
            for (key, count, error) in &reference.slots {
                let entry = hitters.get(key).expect("tracked");
                assert_eq!((entry.count, entry.error), (*count, *error));
                assert!(colliding.get(key).is_some());
            }
        }
    }

    /// Batches (with repeated keys, short and long ones, past capacity) give what the
    /// same keys added one by one give: counts, payloads, and the `new` flags.
    #[test]
    fn add_each_counts_as_adding_one_by_one() {
        fn check<S: BuildHasher>(mut batched: HeavyHitters<Vec<u32>, S>, rng: &mut SplitMix64) {
            let mut single = HeavyHitters::<Vec<u32>>::new(batched.capacity());
            for step in 0..600u32 {
                let keys: Vec<String> = (0..rng.below(40))
                    .map(|i| {
                        let word = zipf(rng, 300);
                        if i % 3 == 0 {
                            format!("a much longer key {word}")
                        } else {
                            format!("k{word}")
                        }
                    })
                    .collect();
                let (mut flags_batched, mut flags_single) = (Vec::new(), Vec::new());
                batched.add_each(keys.iter().map(String::as_str), 2, |seen, new| {
                    seen.push(step);
                    flags_batched.push(new);
                });
                for key in &keys {
                    let (seen, new) = single.add(key, 2);
                    seen.push(step);
                    flags_single.push(new);
                }
                assert_eq!(flags_batched, flags_single, "step {step}");
            }
            assert!(single.evictions() > 0);
            assert_eq!(snapshot(&batched), snapshot(&single));
            let batched_payloads: Vec<_> = batched.iter().map(|c| c.value.clone()).collect();
            let single_payloads: Vec<_> = single.iter().map(|c| c.value.clone()).collect();
            assert_eq!(batched_payloads, single_payloads);
        }
        check(HeavyHitters::new(120), &mut SplitMix64(5));
        check(HeavyHitters::with_hasher(60, Colliding), &mut SplitMix64(6));
    }

    #[test]
    fn bounds_hold_far_over_capacity() {
        let capacity = 200;
        let mut rng = SplitMix64(2005);
        let mut hitters = HeavyHitters::<()>::new(capacity);
        let mut truth: HashMap<String, u64> = HashMap::new();
        for _ in 0..100_000 {
            let key = format!("w{}", zipf(&mut rng, 50_000));
            let weight = 1 + rng.below(2) as u64;
            hitters.add(&key, weight);
            *truth.entry(key).or_default() += weight;
        }
        assert!(truth.len() > 20 * capacity, "the stream must overflow");
        assert!(!hitters.is_exact());
        assert_eq!(hitters.len(), capacity);
        let total = hitters.total();
        assert_eq!(total, truth.values().sum::<u64>());
        assert_eq!(hitters.iter().map(|entry| entry.count).sum::<u64>(), total);
        let live_bytes: usize = hitters.iter().map(|entry| entry.key.len()).sum();
        assert!(
            hitters.arena.len() <= 2 * live_bytes,
            "evicted keys are dropped from the arena: {} bytes for {live_bytes}",
            hitters.arena.len()
        );
        let bound = total / capacity as u64;
        for entry in hitters.iter() {
            let exact = truth[entry.key];
            assert!(entry.count - entry.error <= exact && exact <= entry.count);
            assert!(entry.error <= bound);
        }
        let heavy: Vec<_> = truth.iter().filter(|(_, &n)| n > bound).collect();
        assert!(!heavy.is_empty());
        for (key, _) in heavy {
            assert!(hitters.get(key).is_some(), "{key} is heavy but untracked");
        }
    }

    #[test]
    fn results_do_not_depend_on_the_hasher_seed() {
        let mut runs = (0..2).map(|_| {
            let mut rng = SplitMix64(99);
            let mut hitters = HeavyHitters::<()>::new(50);
            for _ in 0..5_000 {
                hitters.add(&format!("t{}", zipf(&mut rng, 1_000)), 1);
            }
            snapshot(&hitters)
        });
        assert_eq!(runs.next(), runs.next());
    }

    #[test]
    fn eviction_resets_the_payload() {
        let mut hitters = HeavyHitters::<Vec<u32>>::new(2);
        let (ids, reset) = hitters.add("a", 2);
        assert!(reset);
        ids.push(1);
        hitters.add("b", 1).0.push(2);
        let (ids, reset) = hitters.add("a", 1);
        assert!(!reset);
        assert_eq!(ids, &[1]);
        // "b" has the smallest count, so "c" replaces it and starts from an empty payload.
        let (ids, reset) = hitters.add("c", 1);
        assert!(reset);
        assert!(ids.is_empty());
        assert!(hitters.get("b").is_none());
        assert_eq!(hitters.get("a").expect("kept").value, &[1]);
        assert_eq!(hitters.evictions(), 1);
    }

    #[test]
    fn a_cleared_sketch_counts_anew_exactly() {
        let mut hitters = HeavyHitters::<Vec<u32>>::new(2);
        hitters.add("a", 2).0.push(1);
        hitters.add("b", 1);
        hitters.add("c", 1);
        assert_eq!(hitters.evictions(), 1);
        hitters.clear();
        assert!(hitters.is_empty() && hitters.is_exact());
        assert_eq!(hitters.total(), 0);
        assert!(hitters.get("a").is_none());
        let (ids, new) = hitters.add("a", 1);
        assert!(new && ids.is_empty(), "no payload survives a clear");
        hitters.add("d", 4);
        hitters.add("a", 1);
        let counts: Vec<_> = hitters.iter().map(|c| (c.key, c.count, c.error)).collect();
        assert_eq!(counts, [("a", 2, 0), ("d", 4, 0)]);
        // Full again: evicting works on the reused heap and index.
        hitters.add("e", 1);
        assert_eq!(hitters.get("e").map(|c| (c.count, c.error)), Some((3, 2)));
        assert!(hitters.get("a").is_none());
    }

    #[test]
    fn weights_carry_over_to_the_replacing_key() {
        let mut hitters = HeavyHitters::<()>::new(2);
        hitters.add("a", 10);
        hitters.add("b", 3);
        hitters.add("c", 2);
        let c = hitters.get("c").expect("tracked");
        assert_eq!((c.count, c.error), (5, 3));
        assert_eq!(hitters.get("a").expect("tracked").count, 10);
        assert_eq!(hitters.total(), 15);
        // "a" (slot 0) and "c" (slot 1) tie at 10: the lower slot goes.
        hitters.add("c", 5);
        hitters.add("d", 1);
        assert!(hitters.get("a").is_none());
        let d = hitters.get("d").expect("tracked");
        assert_eq!((d.count, d.error), (11, 10));
    }

    #[test]
    fn capacity_one_tracks_the_latest_key() {
        let mut hitters = HeavyHitters::<()>::new(1);
        assert!(hitters.is_empty());
        hitters.add("a", 4);
        hitters.add("a", 1);
        assert!(hitters.is_exact());
        hitters.add("b", 2);
        let only: Vec<_> = hitters
            .iter()
            .map(|entry| (entry.key, entry.count, entry.error))
            .collect();
        assert_eq!(only, [("b", 7, 5)]);
        assert_eq!(
            (hitters.len(), hitters.capacity(), hitters.total()),
            (1, 1, 7)
        );
    }

    #[test]
    #[should_panic(expected = "capacity must be at least 1")]
    fn zero_capacity_is_rejected() {
        HeavyHitters::<()>::new(0);
    }
}
