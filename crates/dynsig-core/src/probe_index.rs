//! [`ProbeIndex`]: an open-addressing index from 64-bit hashes to entry numbers (`u32`),
//! for the tables that own their keys elsewhere (the window sketches in
//! [`crate::heavy_hitters`], the baselines in [`crate::term_table`]).
//!
//! Why not `hashbrown::HashTable`: it keeps its bucket layout private, so a caller cannot
//! ask for a lookup's memory before it needs it. A window's sketch and the baselines are
//! larger than the caches; a lookup in them is a chain of cache misses (bucket, then the
//! entry, then its key), and done one after the other those misses are most of the cost of
//! counting terms and of closing a window. Here where a hash's probe starts is known from
//! the hash alone ([`ProbeIndex::prefetch`]), and the entry it most likely names too
//! ([`ProbeIndex::candidate`]): a caller looking up a batch of keys can ask for all their
//! buckets, then all their entries, and then find them in cache, so that the misses of a
//! batch overlap instead of queuing.
//!
//! # Layout
//!
//! Linear probing with Robin Hood ordering over 8-byte buckets: the high 32 bits of the
//! hash (its *tag*) and the entry number plus one (0 marks an empty bucket). The probe
//! starts at `tag * buckets / 2^32`, so growing needs no key hashed again, and keys sit in
//! tag order along a run: a lookup stops at the first bucket whose occupant is nearer its
//! own start than the probe is to its, so that misses cost about as much as hits even at
//! a high load. Removal shifts the following buckets back (no tombstones). The load stays
//! between ~0.53 and 0.8 (about 10 to 15 bytes per entry); at that load a probe reads ~3
//! buckets, most often within one 64-byte line.
//!
//! Equal tags are possible (32 bits), so a lookup confirms each candidate with the
//! caller's key comparison.

/// See the module docs.
#[derive(Debug, Clone, Default)]
pub struct ProbeIndex {
    buckets: Vec<u64>,
    len: usize,
}

/// Keys a caller looks up together (hashes, prefetches, then finds): enough for their cache
/// misses to overlap, few enough that what was prefetched for the first is still in cache
/// when it is used. Used by [`crate::heavy_hitters`] and [`crate::term_table`].
pub const BATCH: usize = 16;

/// Buckets of a non-empty index, at least.
const MIN_BUCKETS: usize = 8;

fn tag_of(hash: u64) -> u32 {
    (hash >> 32) as u32
}

fn bucket_of(tag: u32, entry: u32) -> u64 {
    debug_assert!(entry < u32::MAX, "entry numbers are below u32::MAX");
    u64::from(tag) << 32 | u64::from(entry + 1)
}

fn bucket_tag(bucket: u64) -> u32 {
    (bucket >> 32) as u32
}

fn bucket_entry(bucket: u64) -> u32 {
    (bucket as u32).wrapping_sub(1)
}

/// Buckets for `len` entries at a load of at most 0.8 (2/3 right after sizing, so that
/// the next inserts do not regrow at once).
fn buckets_for(len: usize) -> usize {
    (len.saturating_mul(3) / 2).max(MIN_BUCKETS)
}

impl ProbeIndex {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every entry, keeping the buckets' memory.
    pub fn clear(&mut self) {
        self.buckets.fill(0);
        self.len = 0;
    }

    /// Where the probe of `tag` starts.
    fn home(&self, tag: u32) -> usize {
        ((u64::from(tag) * self.buckets.len() as u64) >> 32) as usize
    }

    fn next(&self, at: usize) -> usize {
        if at + 1 == self.buckets.len() {
            0
        } else {
            at + 1
        }
    }

    /// How far the occupant `bucket` of position `at` sits from its start.
    fn displacement(&self, bucket: u64, at: usize) -> usize {
        let home = self.home(bucket_tag(bucket));
        if at >= home {
            at - home
        } else {
            at + self.buckets.len() - home
        }
    }

    /// Asks the CPU to load the bucket where the probe of `hash` starts, so that a lookup
    /// of it a little later finds it in cache. A hint only: nothing changes.
    pub fn prefetch(&self, hash: u64) {
        if let Some(bucket) = self.buckets.get(self.home(tag_of(hash))) {
            prefetch(bucket);
        }
    }

    /// The first entry along `hash`'s probe whose tag is the hash's: the entry a lookup of
    /// `hash` will most likely find, for a caller to prefetch what it compares (its key).
    /// `None` when the probe meets no such tag.
    pub fn candidate(&self, hash: u64) -> Option<u32> {
        self.find(hash, |_| true)
    }

    /// The entry of `hash` that `is` accepts (the caller compares its key).
    pub fn find(&self, hash: u64, mut is: impl FnMut(u32) -> bool) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        let tag = tag_of(hash);
        let mut at = self.home(tag);
        let mut distance = 0;
        loop {
            let bucket = self.buckets[at];
            // Robin Hood order: an occupant nearer its start than we are to ours means
            // that `hash` would have taken its place.
            if bucket == 0 || self.displacement(bucket, at) < distance {
                return None;
            }
            if bucket_tag(bucket) == tag && is(bucket_entry(bucket)) {
                return Some(bucket_entry(bucket));
            }
            at = self.next(at);
            distance += 1;
        }
    }

    /// Adds `entry` under `hash`; the caller knows that its key is not indexed yet.
    pub fn insert_unique(&mut self, hash: u64, entry: u32) {
        self.reserve(1);
        self.place(bucket_of(tag_of(hash), entry));
        self.len += 1;
    }

    /// Makes room for `more` entries beyond the current ones without regrowing.
    pub fn reserve(&mut self, more: usize) {
        let len = self.len + more;
        if len * 5 > self.buckets.len() * 4 {
            self.resize(buckets_for(len));
        }
    }

    /// Shrinks the buckets to what the current entries need.
    pub fn shrink_to_fit(&mut self) {
        let fit = if self.len == 0 {
            0
        } else {
            buckets_for(self.len)
        };
        if fit < self.buckets.len() {
            self.resize(fit);
        }
    }

    /// Removes `entry`, indexed under `hash`. Panics if it is not there: the caller's
    /// tables and the index would disagree.
    pub fn remove(&mut self, hash: u64, entry: u32) {
        let tag = tag_of(hash);
        let mut hole = self.home(tag);
        while self.buckets[hole] != bucket_of(tag, entry) {
            assert!(self.buckets[hole] != 0, "removing an entry not indexed");
            hole = self.next(hole);
        }
        // Backward shift: the run after the hole moves up by one, until an empty bucket
        // or an occupant already at its start.
        loop {
            let next = self.next(hole);
            let bucket = self.buckets[next];
            if bucket == 0 || self.displacement(bucket, next) == 0 {
                break;
            }
            self.buckets[hole] = bucket;
            hole = next;
        }
        self.buckets[hole] = 0;
        self.len -= 1;
    }

    /// Puts `bucket` in its Robin Hood place (there is an empty bucket).
    fn place(&mut self, mut bucket: u64) {
        let mut at = self.home(bucket_tag(bucket));
        let mut distance = 0;
        loop {
            let occupant = self.buckets[at];
            if occupant == 0 {
                self.buckets[at] = bucket;
                return;
            }
            let occupant_distance = self.displacement(occupant, at);
            if occupant_distance < distance {
                self.buckets[at] = bucket;
                bucket = occupant;
                distance = occupant_distance;
            }
            at = self.next(at);
            distance += 1;
        }
    }

    fn resize(&mut self, buckets: usize) {
        let old = std::mem::replace(&mut self.buckets, vec![0; buckets]);
        for bucket in old.into_iter().filter(|&b| b != 0) {
            self.place(bucket);
        }
    }
}

/// Prefetches the cache line of `value` (a hint; it never faults).
#[inline(always)]
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that neither reads nor writes memory as far as the
    // program can observe, and it does not fault; the pointer comes from a reference.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((value as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    /// The index against a map, with hashes chosen to collide: tags drawn from a small set
    /// (equal tags are legal) and runs that wrap around the end.
    #[test]
    fn behaves_like_a_map_through_inserts_and_removals() {
        // Tags: 4 values at the very top (every run wraps around the end), 64 values
        // spread out, any value.
        let tag_sets: [fn(u64) -> u32; 3] = [
            |r| u32::MAX - (r % 4) as u32,
            |r| (r % 64) as u32 * (u32::MAX / 64),
            |r| r as u32,
        ];
        for (seed, draw_tag) in (0u64..).zip(tag_sets) {
            let mut rng = SplitMix64(seed);
            let mut index = ProbeIndex::default();
            let mut model: Vec<(u32, u64)> = Vec::new();
            let mut next_entry = 0u32;
            for step in 0..12_000 {
                let remove = !model.is_empty() && rng.chance(1.0 / 3.0);
                if remove {
                    let (entry, hash) = model.swap_remove(rng.below(model.len()));
                    index.remove(hash, entry);
                } else {
                    let tag = draw_tag(rng.next_u64());
                    let hash = u64::from(tag) << 32 | (rng.next_u64() >> 32);
                    index.insert_unique(hash, next_entry);
                    model.push((next_entry, hash));
                    next_entry += 1;
                }
                assert_eq!(index.len(), model.len());
                if step % 1_999 == 1_998 {
                    index.shrink_to_fit();
                }
                if step % 499 == 498 {
                    for &(entry, hash) in &model {
                        assert_eq!(index.find(hash, |e| e == entry), Some(entry));
                    }
                    assert_eq!(index.find(rng.next_u64(), |_| false), None);
                }
            }
            assert!(index.buckets.len() * 4 >= index.len() * 5);
        }
    }

    #[test]
    fn candidate_names_the_first_entry_with_the_tag_and_clear_empties() {
        let mut index = ProbeIndex::default();
        assert_eq!((index.candidate(7), index.find(7, |_| true)), (None, None));
        index.prefetch(7);
        index.insert_unique(5 << 32 | 1, 10);
        index.insert_unique(5 << 32 | 2, 11);
        index.insert_unique(9 << 32, 12);
        assert_eq!(index.candidate(5 << 32), Some(10));
        assert_eq!(index.find(5 << 32, |e| e == 11), Some(11));
        assert_eq!(index.candidate(6 << 32), None);
        let buckets = index.buckets.len();
        index.clear();
        assert!(index.is_empty() && index.buckets.len() == buckets);
        assert_eq!(index.candidate(5 << 32), None);
    }
}
