//! What one window counts per term: occurrences in a bounded heavy-hitter sketch, and per
//! counted term its distinct authors and a few example posts.
//!
//! Memory is bounded by the sketch capacity whatever the vocabulary (see
//! [`crate::heavy_hitters`] for the error bound once it overflows); the post ids that
//! examples refer to are kept once per post in one string arena, so a post costs no
//! allocation of its own.

use serde::{Deserialize, Serialize};

use crate::authors::{author_hash, AuthorSet};
use crate::heavy_hitters::{Counted, HeavyHitters};

/// Example posts remembered per term and window.
pub const EXAMPLES_PER_TERM: usize = 3;

/// A post of the window, as an index into its id arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostRef(u32);

/// Per-term payload of the sketch. In a checkpoint it is a tuple (a window holds up to
/// `trends.max_terms_per_window` of them: field names would be most of their bytes).
#[derive(Debug, Clone)]
pub struct TermStats {
    pub authors: AuthorSet,
    examples: [u32; EXAMPLES_PER_TERM],
    example_count: u8,
    /// The catalog actor (by position) most posts using the term mention, by the
    /// Boyer–Moore majority vote over its occurrences (`NO_ACTOR` is a candidate too, so
    /// a word used mostly without actors is about none); `actor_votes` is the lead.
    actor: u16,
    actor_votes: u16,
}

/// [`TermStats`]' fields in order, as written to a checkpoint.
type TermStatsTuple = (AuthorSet, [u32; EXAMPLES_PER_TERM], u8, u16, u16);

impl Serialize for TermStats {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (
            &self.authors,
            self.examples,
            self.example_count,
            self.actor,
            self.actor_votes,
        )
            .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for TermStats {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (authors, examples, example_count, actor, actor_votes) =
            TermStatsTuple::deserialize(deserializer)?;
        if usize::from(example_count) > EXAMPLES_PER_TERM {
            return Err(serde::de::Error::custom("term: too many examples"));
        }
        Ok(TermStats {
            authors,
            examples,
            example_count,
            actor,
            actor_votes,
        })
    }
}

/// "No actor" in [`TermStats`]' vote.
const NO_ACTOR: u16 = u16::MAX;

impl Default for TermStats {
    fn default() -> Self {
        TermStats {
            authors: AuthorSet::default(),
            examples: [0; EXAMPLES_PER_TERM],
            example_count: 0,
            actor: NO_ACTOR,
            actor_votes: 0,
        }
    }
}

impl TermStats {
    /// Keeps the posts of smallest rank (see [`WindowTerms::add_post`]), in rank order.
    fn add_example(&mut self, post: PostRef, ranks: &[u32]) {
        let n = usize::from(self.example_count);
        let rank = ranks[post.0 as usize];
        // Most occurrences of a frequent term rank behind its examples: one comparison.
        if n == EXAMPLES_PER_TERM && rank >= ranks[self.examples[n - 1] as usize] {
            return;
        }
        let kept = &self.examples[..n];
        // A term repeated in one post must not list that post twice.
        if kept.contains(&post.0) {
            return;
        }
        let at = kept.partition_point(|&i| ranks[i as usize] < rank);
        if at == EXAMPLES_PER_TERM {
            return;
        }
        let end = n.min(EXAMPLES_PER_TERM - 1);
        self.examples.copy_within(at..end, at + 1);
        self.examples[at] = post.0;
        self.example_count = (n + 1).min(EXAMPLES_PER_TERM) as u8;
    }

    fn vote_actor(&mut self, actor: u16) {
        if self.actor_votes == 0 {
            self.actor = actor;
            self.actor_votes = 1;
        } else if self.actor == actor {
            self.actor_votes = self.actor_votes.saturating_add(1);
        } else {
            self.actor_votes -= 1;
        }
    }

    /// The actor (position in the catalog) that most posts using the term mention, when
    /// one does.
    pub fn actor(&self) -> Option<usize> {
        (self.actor != NO_ACTOR && self.actor_votes > 0).then_some(usize::from(self.actor))
    }

    fn examples(&self) -> impl Iterator<Item = PostRef> + '_ {
        self.examples[..usize::from(self.example_count)]
            .iter()
            .map(|&i| PostRef(i))
    }
}

/// The term counts of one window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WindowTerms {
    /// foldhash: several times faster than SipHash on short keys, and still seeded at
    /// random per map, since the keys come from anyone who posts.
    sketch: HeavyHitters<TermStats, foldhash::quality::RandomState>,
    /// Post ids, concatenated; `post_id_ends[i]` ends the i-th, whose rank is
    /// `post_ranks[i]`.
    post_ids: String,
    post_id_ends: Vec<u32>,
    post_ranks: Vec<u32>,
    count_authors: bool,
}

impl WindowTerms {
    /// `capacity` distinct terms are counted exactly; beyond, SpaceSaving evicts the
    /// smallest. `count_authors = false` skips the author sets (a cost when unused).
    pub fn new(capacity: usize, count_authors: bool) -> Self {
        WindowTerms {
            sketch: HeavyHitters::with_hasher(capacity, Default::default()),
            post_ids: String::new(),
            post_id_ends: Vec::new(),
            post_ranks: Vec::new(),
            count_authors,
        }
    }

    /// Empties the window's counts but keeps the allocations, for reuse by the next window.
    pub fn clear(&mut self) {
        self.sketch.clear();
        self.post_ids.clear();
        self.post_id_ends.clear();
        self.post_ranks.clear();
    }

    /// Registers a post's id so that its terms can cite it; `None` when it has none (or
    /// the arena is full: ids are examples, not data).
    ///
    /// A term's examples are its posts of smallest *rank*, a fixed hash of the post id:
    /// a uniform sample that does not depend on the order the posts arrived in, so that
    /// a window rebuilt after a restart (partitions read in another interleaving) cites
    /// the same posts, and an alert published again is the same message.
    pub fn add_post(&mut self, id: &str) -> Option<PostRef> {
        if id.is_empty() {
            return None;
        }
        let end = u32::try_from(self.post_ids.len() + id.len()).ok()?;
        let index = u32::try_from(self.post_id_ends.len()).ok()?;
        self.post_ids.push_str(id);
        self.post_id_ends.push(end);
        // 32 bits: 4 bytes per post of the window; ties are astronomically rare, and
        // broken by arrival then.
        self.post_ranks.push((author_hash(id) >> 32) as u32);
        Some(PostRef(index))
    }

    /// Counts one occurrence of each term of `keys` (see [`crate::term_key`]; a post's
    /// terms) by `author` (a hash from [`crate::authors::author_hash`]) in `post`, in a
    /// window that tags no actors: the terms' actor votes are left alone
    /// ([`TermStats::actor`] stays `None`), so that nothing but the count is written when
    /// authors and examples are not kept either.
    pub fn add<'k>(
        &mut self,
        keys: impl IntoIterator<Item = &'k str>,
        author: u64,
        post: Option<PostRef>,
    ) {
        self.count(keys, author, post, |_| {});
    }

    /// [`Self::add`] in a window that tags actors, for a post that mentions the catalog
    /// actor at position `actor` first (`None`: no actor, which is a vote too; actors past
    /// `u16::MAX - 1` count as none). A window uses either this or [`Self::add`].
    pub fn add_about<'k>(
        &mut self,
        keys: impl IntoIterator<Item = &'k str>,
        author: u64,
        post: Option<PostRef>,
        actor: Option<usize>,
    ) {
        let actor = actor
            .and_then(|a| u16::try_from(a).ok())
            .filter(|&a| a != NO_ACTOR)
            .unwrap_or(NO_ACTOR);
        self.count(keys, author, post, |stats| stats.vote_actor(actor));
    }

    fn count<'k>(
        &mut self,
        keys: impl IntoIterator<Item = &'k str>,
        author: u64,
        post: Option<PostRef>,
        vote: impl Fn(&mut TermStats),
    ) {
        let WindowTerms {
            sketch,
            post_ranks,
            count_authors,
            ..
        } = self;
        // One batch: the post's terms' lookups overlap (see `HeavyHitters::add_each`).
        sketch.add_each(keys, 1, |stats, _| {
            if *count_authors {
                stats.authors.insert(author);
            }
            if let Some(post) = post {
                stats.add_example(post, post_ranks);
            }
            vote(stats);
        });
    }

    pub fn get(&self, key: &str) -> Option<Counted<'_, TermStats>> {
        self.sketch.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = Counted<'_, TermStats>> {
        self.sketch.iter()
    }

    /// Distinct terms counted (at most the capacity).
    pub fn len(&self) -> usize {
        self.sketch.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sketch.is_empty()
    }

    /// Distinct authors of a counted term; `None` without author counting.
    pub fn authors(&self, stats: &TermStats) -> Option<u64> {
        self.count_authors.then(|| stats.authors.estimate())
    }

    /// The ids of a term's example posts.
    pub fn examples(&self, stats: &TermStats) -> Vec<String> {
        stats
            .examples()
            .map(|PostRef(i)| {
                let i = i as usize;
                let start = if i == 0 {
                    0
                } else {
                    self.post_id_ends[i - 1] as usize
                };
                self.post_ids[start..self.post_id_ends[i] as usize].to_owned()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authors::author_hash;

    #[test]
    fn counts_authors_and_examples_per_term() {
        let mut terms = WindowTerms::new(100, true);
        let posts = [
            ("p1", "ann", vec!["fire", "fire"]),
            ("", "bob", vec!["fire"]),
            ("p3", "ann", vec!["fire", "smoke"]),
            ("p4", "cat", vec!["fire"]),
            ("p5", "dan", vec!["fire"]),
        ];
        for (id, author, words) in &posts {
            let post = terms.add_post(id);
            for w in words {
                terms.add([*w], author_hash(author), post);
            }
        }
        let fire = terms.get("fire").unwrap();
        assert_eq!(fire.count, 6);
        assert_eq!(terms.authors(fire.value), Some(4));
        let mut by_rank = ["p1", "p3", "p4", "p5"];
        by_rank.sort_by_key(|id| author_hash(id) >> 32);
        assert_eq!(
            terms.examples(fire.value),
            by_rank[..3],
            "the 3 of smallest rank, no duplicate, posts without id skipped"
        );
        let smoke = terms.get("smoke").unwrap();
        assert_eq!((smoke.count, terms.authors(smoke.value)), (1, Some(1)));
        assert_eq!(terms.examples(smoke.value), ["p3"]);
        assert_eq!(terms.len(), 2);
    }

    #[test]
    fn examples_do_not_depend_on_the_order_posts_arrive_in() {
        let ids: Vec<String> = (0..50).map(|i| format!("post-{i}")).collect();
        let examples = |order: &mut dyn Iterator<Item = &String>| {
            let mut terms = WindowTerms::new(10, false);
            for id in order {
                let post = terms.add_post(id);
                terms.add(["recall"], 0, post);
            }
            terms.examples(terms.get("recall").unwrap().value)
        };
        let forward = examples(&mut ids.iter());
        assert_eq!(forward.len(), EXAMPLES_PER_TERM);
        assert_eq!(forward, examples(&mut ids.iter().rev()));
        assert_eq!(
            forward,
            examples(&mut ids.iter().step_by(7).chain(ids.iter()))
        );
    }

    #[test]
    fn a_term_is_about_the_actor_most_of_its_posts_mention() {
        let mut terms = WindowTerms::new(100, false);
        for actor in [Some(3), None, Some(3), Some(1), Some(3)] {
            terms.add_about(["recall"], 0, None, actor);
        }
        for actor in [None, Some(3), None] {
            terms.add_about(["today"], 0, None, actor);
        }
        terms.add(["plain"], 0, None);
        let actor = |key| terms.get(key).unwrap().value.actor();
        assert_eq!(actor("recall"), Some(3));
        assert_eq!(actor("today"), None, "mostly without actors");
        assert_eq!(actor("plain"), None);
    }

    #[test]
    fn authors_can_be_left_uncounted() {
        let mut terms = WindowTerms::new(10, false);
        for _ in 0..3 {
            terms.add(["spam"], author_hash("one"), None);
        }
        let spam = terms.get("spam").unwrap();
        assert_eq!((spam.count, terms.authors(spam.value)), (3, None));
    }
}
