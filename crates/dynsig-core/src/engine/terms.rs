//! A post's terms, extracted apart from the engine: [`TermExtractor`] is the engine's
//! tokenizer on its own, so that tokenizing can run on another thread than counting
//! ([`super::Engine::ingest_with_terms`]), and [`PostTerms`] carries the result.

use crate::model::TermKind;
use crate::shard::Shard;
use crate::term_key;
use crate::tokenizer::{Scratch, Tokenizer};

/// The terms of one post, keys as in [`crate::term_key`], concatenated. Reused: extracting
/// into it again replaces its content without allocating once it has grown.
#[derive(Debug, Default, Clone)]
pub struct PostTerms {
    keys: String,
    ends: Vec<usize>,
    /// The shard these keys were split for ([`PostTerms::split_by_shard`]): they need no
    /// second look at who owns them.
    owner: Option<Shard>,
}

impl PostTerms {
    /// The keys, in the order the tokenizer emitted them.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        super::split_at_ends(&self.keys, &self.ends)
    }

    /// Appends one term by its key (as in [`crate::term_key`]), e.g. one read back from
    /// another process; false (and nothing appended) for a string that is not a key.
    pub fn push_key(&mut self, key: &str) -> bool {
        if term_key::split_key(key).is_none() {
            return false;
        }
        self.keys.push_str(key);
        self.ends.push(self.keys.len());
        true
    }

    /// Appends one term.
    pub(super) fn push(&mut self, kind: TermKind, text: &str) {
        term_key::push_key(&mut self.keys, kind, text);
        self.ends.push(self.keys.len());
    }

    /// The key appended last.
    pub(super) fn last(&self) -> Option<&str> {
        let end = *self.ends.last()?;
        let start = self.ends.len().checked_sub(2).map_or(0, |i| self.ends[i]);
        Some(&self.keys[start..end])
    }

    /// Keys held.
    pub(super) fn count(&self) -> usize {
        self.ends.len()
    }

    /// The shard these keys were split for, if they were.
    pub(super) fn owner(&self) -> Option<Shard> {
        self.owner
    }

    /// Keeps, among the keys from position `first` on, only those `keep` accepts, in
    /// order, in place (a post has a few dozen).
    pub(super) fn retain_from(&mut self, first: usize, mut keep: impl FnMut(&str) -> bool) {
        let mut i = first;
        let mut start = first.checked_sub(1).map_or(0, |last| self.ends[last]);
        while i < self.ends.len() {
            let end = self.ends[i];
            if keep(&self.keys[start..end]) {
                start = end;
                i += 1;
            } else {
                self.keys.replace_range(start..end, "");
                self.ends.remove(i);
                for later in &mut self.ends[i..] {
                    *later -= end - start;
                }
            }
        }
    }

    pub fn clear(&mut self) {
        self.keys.clear();
        self.ends.clear();
        self.owner = None;
    }

    /// Replaces each of `shards` (one per shard, in shard order) with the keys that shard
    /// owns ([`Shard::of_key`]), in order: tokenized once, counted by each owner.
    pub fn split_by_shard(&self, shards: &mut [PostTerms]) {
        shards.iter_mut().for_each(PostTerms::clear);
        let count = u32::try_from(shards.len()).expect("fewer than 2^32 shards");
        let mut give = |key: &str, shard: u32| {
            let part = &mut shards[shard as usize];
            part.keys.push_str(key);
            part.ends.push(part.keys.len());
        };
        // Four keys at a time where possible: placing is most of the cost.
        let mut keys = self.iter();
        loop {
            let four = [keys.next(), keys.next(), keys.next(), keys.next()];
            if let [Some(a), Some(b), Some(c), Some(d)] = four {
                let four = [a, b, c, d];
                for (key, shard) in four.into_iter().zip(Shard::of_four_keys(four, count)) {
                    give(key, shard);
                }
                continue;
            }
            for key in four.into_iter().flatten() {
                give(key, Shard::of_key(key, count));
            }
            break;
        }
        for (part, shard) in shards.iter_mut().zip(Shard::all(count)) {
            part.owner = Some(shard);
        }
    }
}

/// Extracts a post's terms exactly as the engine it came from does (same tokenizer
/// config: modes, stopwords, bigrams).
#[derive(Debug, Clone)]
pub struct TermExtractor {
    tokenizer: Tokenizer,
    scratch: Scratch,
}

impl TermExtractor {
    pub(super) fn new(tokenizer: Tokenizer) -> Self {
        TermExtractor {
            tokenizer,
            scratch: Scratch::default(),
        }
    }

    /// Replaces `out` with the terms of `text`.
    pub fn extract(&mut self, text: &str, out: &mut PostTerms) {
        out.clear();
        self.tokenizer
            .for_each_term(text, &mut self.scratch, |kind, text| out.push(kind, text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(terms: &PostTerms) -> Vec<&str> {
        terms.iter().collect()
    }

    #[test]
    fn keys_are_kept_in_order_and_read_back() {
        let mut terms = PostTerms::default();
        for text in ["battery", "fire", "battery fire", "acme"] {
            terms.push(TermKind::Word, text);
        }
        assert_eq!(
            terms.last(),
            Some(term_key::key(TermKind::Word, "acme").as_str())
        );
        terms.retain_from(0, |key| key.len() > 5);
        let words = ["battery", "battery fire"].map(|t| term_key::key(TermKind::Word, t));
        assert_eq!(keys(&terms), words);
        terms.retain_from(0, |_| false);
        assert!(keys(&terms).is_empty() && terms.last().is_none());
        assert!(terms.push_key(&words[1]) && !terms.push_key("\u{0}not a key"));
        assert_eq!(keys(&terms), [words[1].as_str()]);
    }

    #[test]
    fn split_by_shard_gives_each_key_to_its_owner_in_order() {
        let mut terms = PostTerms::default();
        let words = "battery fire smoke recall refund delay outage price launch app".split(' ');
        // 23 keys: five groups of four, then three one by one.
        for word in words.clone().chain(words).chain(["tail", "end", "x"]) {
            terms.push(TermKind::Word, word);
        }
        let mut parts = vec![PostTerms::default(); 3];
        parts[1].push(TermKind::Word, "left over from the last post");
        terms.split_by_shard(&mut parts);
        for (index, part) in (0u32..).zip(&parts) {
            let owned: Vec<&str> = terms
                .iter()
                .filter(|key| Shard::new(index, 3).unwrap().owns_term(key))
                .collect();
            assert!(!owned.is_empty());
            assert_eq!(keys(part), owned, "shard {index}");
            assert_eq!(part.owner(), Some(Shard::new(index, 3).unwrap()));
        }
        parts[0].clear();
        assert_eq!(parts[0].owner(), None, "new keys are anyone's");
    }

    #[test]
    fn retain_from_leaves_the_keys_before_alone() {
        let mut terms = PostTerms::default();
        for text in ["a", "bb", "c", "dd", "e"] {
            terms.push(TermKind::Word, text);
        }
        terms.retain_from(2, |key| key.len() > 2);
        let expected = ["a", "bb", "dd"].map(|t| term_key::key(TermKind::Word, t));
        assert_eq!(keys(&terms), expected);
        terms.retain_from(3, |_| false);
        assert_eq!(keys(&terms), expected, "nothing from past the end");
    }
}
