//! Distinct authors of one term in one window: [`AuthorSet`], exact for small sets and a
//! HyperLogLog sketch above, and [`author_hash`], the hash it is fed with.
//!
//! Author diversity keeps one account from making a trend, and most terms have one or two
//! authors, so the small cases must cost nothing:
//!
//! - up to 2 distinct authors: stored inline, no allocation (`size_of::<AuthorSet>()` is
//!   24 bytes);
//! - 3 to 16: a list of the hashes on the heap (32, 64 or 128 bytes), exact;
//! - from the 17th distinct author on: a HyperLogLog sketch with `m = 2^10` one-byte
//!   registers (1 KiB). Its relative standard error is `1.04 / sqrt(m)` ≈ 3.3%; the estimate
//!   is never below 17, the count already known exactly when the sketch was made.
//!
//! The sketch is read with Ertl's improved raw estimator ("New cardinality estimation
//! algorithms for HyperLogLog sketches", 2017; also used by Redis). It contains the
//! small-range (linear counting) correction and is unbiased across the range where the
//! classic estimator switches from linear counting to the raw estimate, without empirical
//! bias tables. With 64-bit hashes no large-range correction is needed.
//!
//! Two authors whose hashes collide count as one; with 64-bit hashes that is negligible.

/// Distinct hashes kept inline, without allocating.
use serde::de::{Error as DeError, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const INLINE: usize = 2;
/// Distinct hashes kept exactly; one more switches to the sketch.
const EXACT_LIMIT: usize = 16;
/// The sketch has `2^PRECISION` registers.
const PRECISION: u32 = 10;
const REGISTERS: usize = 1 << PRECISION;
/// Hash bits left for the rank once the register index is taken (Ertl's `q`).
const RANK_BITS: u32 = u64::BITS - PRECISION;

/// The distinct authors of one term: exact up to 16, estimated above (see the module
/// documentation).
#[derive(Debug, Clone)]
pub struct AuthorSet(Repr);

#[derive(Debug, Clone)]
enum Repr {
    Inline {
        len: u8,
        hashes: [u64; INLINE],
    },
    /// `hashes.len()` is the allocated room, doubled when full, up to `EXACT_LIMIT`.
    Listed {
        len: u8,
        hashes: Box<[u64]>,
    },
    Sketch(Box<HyperLogLog>),
}

impl Default for AuthorSet {
    fn default() -> Self {
        AuthorSet(Repr::Inline {
            len: 0,
            hashes: [0; INLINE],
        })
    }
}

impl AuthorSet {
    /// Records an author by its hash (from [`author_hash`], or any well-mixed 64-bit hash:
    /// the sketch reads both the top bits and the leading zeros of the rest).
    pub fn insert(&mut self, author_hash: u64) {
        match &mut self.0 {
            Repr::Inline { len, hashes } => {
                let known = &hashes[..usize::from(*len)];
                if known.contains(&author_hash) {
                    return;
                }
                if known.len() < INLINE {
                    hashes[known.len()] = author_hash;
                    *len += 1;
                    return;
                }
                let mut listed = vec![0; 2 * INLINE].into_boxed_slice();
                listed[..INLINE].copy_from_slice(hashes);
                listed[INLINE] = author_hash;
                self.0 = Repr::Listed {
                    len: INLINE as u8 + 1,
                    hashes: listed,
                };
            }
            Repr::Listed { len, hashes } => {
                let count = usize::from(*len);
                if hashes[..count].contains(&author_hash) {
                    return;
                }
                if count == EXACT_LIMIT {
                    let mut sketch = Box::new(HyperLogLog::new());
                    for &hash in hashes.iter() {
                        sketch.insert(hash);
                    }
                    sketch.insert(author_hash);
                    self.0 = Repr::Sketch(sketch);
                    return;
                }
                if count == hashes.len() {
                    let mut grown = vec![0; (2 * count).min(EXACT_LIMIT)].into_boxed_slice();
                    grown[..count].copy_from_slice(hashes);
                    *hashes = grown;
                }
                hashes[count] = author_hash;
                *len += 1;
            }
            Repr::Sketch(sketch) => sketch.insert(author_hash),
        }
    }

    /// The number of distinct authors: exact while [`AuthorSet::is_exact`], else the
    /// sketch's estimate (relative standard error ≈ 3.3%).
    pub fn estimate(&self) -> u64 {
        match &self.0 {
            Repr::Inline { len, .. } | Repr::Listed { len, .. } => u64::from(*len),
            Repr::Sketch(sketch) => (sketch.estimate().round() as u64).max(EXACT_LIMIT as u64 + 1),
        }
    }

    /// True while the set holds at most 16 distinct authors, counted exactly.
    pub fn is_exact(&self) -> bool {
        !matches!(self.0, Repr::Sketch(_))
    }
}

/// In a checkpoint, an exact set is the sequence of its hashes, a sketch the byte string
/// of its registers: the smallest forms (a window holds one set per counted term).
impl Serialize for AuthorSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Repr::Inline { len, hashes } => serializer.collect_seq(&hashes[..usize::from(*len)]),
            Repr::Listed { len, hashes } => serializer.collect_seq(&hashes[..usize::from(*len)]),
            Repr::Sketch(sketch) => serializer.serialize_bytes(&sketch.registers),
        }
    }
}

impl<'de> Deserialize<'de> for AuthorSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SavedSet;
        impl<'de> Visitor<'de> for SavedSet {
            type Value = AuthorSet;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(
                    f,
                    "up to {EXACT_LIMIT} author hashes, or {REGISTERS} register bytes"
                )
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AuthorSet, A::Error> {
                let mut set = AuthorSet::default();
                while let Some(hash) = seq.next_element()? {
                    if !set.is_exact() || set.estimate() == EXACT_LIMIT as u64 {
                        return Err(A::Error::invalid_length(EXACT_LIMIT + 1, &self));
                    }
                    set.insert(hash);
                }
                Ok(set)
            }
            fn visit_bytes<E: DeError>(self, bytes: &[u8]) -> Result<AuthorSet, E> {
                let registers = bytes
                    .try_into()
                    .map_err(|_| E::invalid_length(bytes.len(), &self))?;
                Ok(AuthorSet(Repr::Sketch(Box::new(HyperLogLog { registers }))))
            }
            fn visit_byte_buf<E: DeError>(self, bytes: Vec<u8>) -> Result<AuthorSet, E> {
                self.visit_bytes(&bytes)
            }
        }
        deserializer.deserialize_any(SavedSet)
    }
}

/// A deterministic, well-mixed 64-bit hash of an author id.
///
/// FxHash-style word-at-a-time mixing (8-byte little-endian chunks, seeded with the length
/// so that `"a"` and `"a\0"` differ), then the MurmurHash3 64-bit finalizer so that every
/// output bit depends on every input bit. Fixed constants: the same value on every run and
/// platform, so sketches and signals are reproducible. It is not keyed against crafted
/// inputs, and needs not be: colliding author ids only merge authors, which can lower a
/// term's author count but never raise it.
pub fn author_hash(author: &str) -> u64 {
    const MULTIPLIER: u64 = 0x517C_C1B7_2722_0A95;
    // Any fixed odd-looking constant; it keeps the empty id from hashing to 0.
    const SEED: u64 = 0x243F_6A88_85A3_08D3;
    let mix = |state: u64, word: u64| (state.rotate_left(5) ^ word).wrapping_mul(MULTIPLIER);
    let bytes = author.as_bytes();
    let mut state = SEED ^ bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let word: [u8; 8] = chunk.try_into().expect("chunks_exact(8) yields 8 bytes");
        state = mix(state, u64::from_le_bytes(word));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut word = [0u8; 8];
        word[..rest.len()].copy_from_slice(rest);
        state = mix(state, u64::from_le_bytes(word));
    }
    fmix64(state)
}

/// MurmurHash3's 64-bit finalizer: a bijection with full avalanche.
fn fmix64(mut hash: u64) -> u64 {
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    hash ^ (hash >> 33)
}

/// HyperLogLog registers: the top `PRECISION` bits of a hash pick a register, which keeps
/// the largest rank (1 + leading zeros of the remaining bits, at most `RANK_BITS + 1`).
#[derive(Clone)]
struct HyperLogLog {
    registers: [u8; REGISTERS],
}

impl std::fmt::Debug for HyperLogLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HyperLogLog")
            .field("estimate", &self.estimate())
            .finish_non_exhaustive()
    }
}

impl HyperLogLog {
    fn new() -> Self {
        HyperLogLog {
            registers: [0; REGISTERS],
        }
    }

    fn insert(&mut self, hash: u64) {
        let register = (hash >> RANK_BITS) as usize;
        // The shifted-in low bits are zero, so cap the count at the RANK_BITS real bits.
        let rank = (hash << PRECISION).leading_zeros().min(RANK_BITS) + 1;
        let slot = &mut self.registers[register];
        *slot = (*slot).max(rank as u8);
    }

    /// Ertl's improved raw estimator (Algorithm 6 of the paper), from the histogram of
    /// register values.
    fn estimate(&self) -> f64 {
        let q = RANK_BITS as usize;
        // Four partial histograms, summed: most registers hold the same few values, and
        // one histogram would make every increment wait for the one before it (a store
        // then a load of the same counter). Every window close reads this per term.
        let mut partial = [[0u32; RANK_BITS as usize + 2]; 4];
        for four in self.registers.chunks_exact(4) {
            for (histogram, &register) in partial.iter_mut().zip(four) {
                histogram[usize::from(register)] += 1;
            }
        }
        let mut histogram = partial[0];
        for other in &partial[1..] {
            for (total, count) in histogram.iter_mut().zip(other) {
                *total += count;
            }
        }
        let m = REGISTERS as f64;
        let mut z = m * tau(1.0 - f64::from(histogram[q + 1]) / m);
        for &count in histogram[1..=q].iter().rev() {
            z = 0.5 * (z + f64::from(count));
        }
        z += m * sigma(f64::from(histogram[0]) / m);
        let alpha_infinity = 0.5 / std::f64::consts::LN_2;
        alpha_infinity * m * m / z
    }
}

/// Ertl's σ(x) = x + Σ_{k≥1} x^(2^k) 2^(k-1), summed until it stops changing. It carries
/// the empty registers' share, which is what linear counting uses for small sets.
fn sigma(mut x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let mut power = 1.0;
    let mut sum = x;
    loop {
        x *= x;
        let previous = sum;
        sum += x * power;
        power += power;
        if sum == previous {
            return sum;
        }
    }
}

/// Ertl's τ(x) = (1 - x - Σ_{k≥1} (1 - x^(2^-k))² 2^-k) / 3, for the saturated registers.
fn tau(mut x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let mut power = 1.0;
    let mut sum = 1.0 - x;
    loop {
        x = x.sqrt();
        let previous = sum;
        power *= 0.5;
        sum -= (1.0 - x).powi(2) * power;
        if sum == previous {
            return sum / 3.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_of(authors: impl IntoIterator<Item = String>) -> AuthorSet {
        let mut set = AuthorSet::default();
        for author in authors {
            set.insert(author_hash(&author));
        }
        set
    }

    #[test]
    fn stays_small_and_counts_one_author_without_allocating() {
        assert!(std::mem::size_of::<AuthorSet>() <= 24);
        let mut set = AuthorSet::default();
        assert_eq!((set.estimate(), set.is_exact()), (0, true));
        set.insert(author_hash("alice"));
        set.insert(author_hash("alice"));
        assert!(matches!(set.0, Repr::Inline { len: 1, .. }));
        assert_eq!(set.estimate(), 1);
    }

    #[test]
    fn counts_exactly_up_to_the_limit_ignoring_duplicates() {
        let mut set = AuthorSet::default();
        for distinct in 1..=EXACT_LIMIT {
            // Every earlier author posts again: duplicates must not count.
            for author in 0..distinct {
                set.insert(author_hash(&format!("user{author}")));
            }
            assert_eq!(set.estimate(), distinct as u64);
            assert!(set.is_exact());
        }
    }

    #[test]
    fn switches_to_the_sketch_past_the_limit_and_ignores_duplicates_there() {
        let mut set = set_of((0..=EXACT_LIMIT).map(|author| format!("user{author}")));
        assert!(!set.is_exact());
        let estimate = set.estimate();
        assert!((17..=18).contains(&estimate), "{estimate}");
        for author in 0..=EXACT_LIMIT {
            set.insert(author_hash(&format!("user{author}")));
        }
        assert_eq!(set.estimate(), estimate);
    }

    #[test]
    fn estimates_within_three_standard_errors() {
        let relative_error = 1.04 / (REGISTERS as f64).sqrt();
        for distinct in [100u64, 1_000, 100_000] {
            let set = set_of((0..distinct).map(|author| format!("account-{author}")));
            let estimate = set.estimate() as f64;
            let deviation = (estimate - distinct as f64).abs() / distinct as f64;
            assert!(
                deviation <= 3.0 * relative_error,
                "{distinct} authors estimated as {estimate}"
            );
        }
    }

    #[test]
    fn survives_a_checkpoint_in_every_form() {
        for authors in [0, 1, 2, 5, 16, 17, 500] {
            let set = set_of((0..authors).map(|i| format!("user{i}")));
            let mut bytes = Vec::new();
            ciborium::into_writer(&set, &mut bytes).unwrap();
            let back: AuthorSet = ciborium::from_reader(&bytes[..]).unwrap();
            assert_eq!(back.estimate(), set.estimate(), "{authors} authors");
            assert_eq!(back.is_exact(), set.is_exact());
            // It goes on counting the same: a known author is not new, a new one is.
            let (mut before, mut after) = (set.clone(), back.clone());
            before.insert(author_hash("user0"));
            after.insert(author_hash("user0"));
            before.insert(author_hash("newcomer"));
            after.insert(author_hash("newcomer"));
            assert_eq!(after.estimate(), before.estimate());
        }
    }

    #[test]
    fn author_hash_is_fixed_and_separates_lengths() {
        // Pinned: a change here changes every author count that crosses the sketch.
        assert_eq!(author_hash("alice"), 0xF242_436E_7ADA_AB32);
        assert_ne!(author_hash("a"), author_hash("a\0"));
        assert_ne!(author_hash("user12345678"), author_hash("user12345679"));
    }
}
