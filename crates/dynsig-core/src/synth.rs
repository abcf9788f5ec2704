//! A deterministic synthetic feed with planted truth, for the demo, tests and benches.
//!
//! [`Synth`] yields posts and internal events in event-time order: a steady background
//! (Zipf-distributed pseudo-words, a few sources, events over a fixed set of series) plus
//! the bursts, incidents, trends and spammer of its [`SynthConfig`], which
//! [`Synth::truth`] reports so that a test can check what the engine found. Two scenarios
//! are built in: [`SynthConfig::demo`] and [`SynthConfig::trend_quality`]. The same seed
//! always gives the same feed (on one platform: the Zipf weights come from `f64::powf`,
//! whose last bit may differ between math libraries).
//!
//! Most streams are "even with jitter": their n-th item falls at a uniformly random instant
//! of their own n-th interval, so rates are exact, timestamps never go backwards, and the
//! counts of a series (a random pick among many) still vary like real traffic. Planted
//! trends are Poisson processes instead: a trend's count in a window is itself what a
//! detector has to judge, so it must vary as a real one would.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::model::{EpochMs, Input, InternalEvent, Post, TermKind};
use crate::rng::SplitMix64;

/// What to generate. Offsets of planted signals are relative to `start_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SynthConfig {
    pub seed: u64,
    /// Event time of the first item, epoch milliseconds.
    pub start_ms: EpochMs,
    pub duration_ms: i64,
    /// Background posts per second of event time.
    pub posts_per_sec: f64,
    /// Background events per second of event time, over all series.
    pub events_per_sec: f64,
    /// Distinct background words (a handful of common English words, then pseudo-words).
    pub vocab_size: usize,
    /// Exponent of the Zipf law of word ranks.
    pub zipf_s: f64,
    /// Size of the author pool.
    pub authors: u32,
    pub bursts: Vec<PlantedBurst>,
    pub incidents: Vec<PlantedIncident>,
    pub trends: Vec<PlantedTrend>,
    pub spammer: Option<PlantedSpammer>,
}

/// 2025-01-01T00:00:00Z.
const DEFAULT_START_MS: EpochMs = 1_735_689_600_000;

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            start_ms: DEFAULT_START_MS,
            duration_ms: 60_000,
            posts_per_sec: 200.0,
            events_per_sec: 20.0,
            vocab_size: 5000,
            zipf_s: 1.07,
            authors: 20_000,
            bursts: Vec::new(),
            incidents: Vec::new(),
            trends: Vec::new(),
            spammer: None,
        }
    }
}

/// Extra posts containing `term`, from authors drawn across the whole pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlantedBurst {
    /// One token as written in text: `recall`, `#acmefire`, `@acmesupport`, `$ACME`.
    pub term: String,
    /// Offset from the feed's `start_ms`.
    pub start_ms: i64,
    pub duration_ms: i64,
    pub posts_per_sec: f64,
}

/// The events of one background series (`kind`, `key`) arrive `multiplier` times as often.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlantedIncident {
    pub kind: String,
    pub key: String,
    /// Offset from the feed's `start_ms`.
    pub start_ms: i64,
    pub duration_ms: i64,
    pub multiplier: f64,
}

/// Extra posts containing `term`, from authors drawn across the whole pool, arriving as a
/// Poisson process: its rate ramps linearly from 0 to `peak_posts_per_sec` over
/// `growth_ms`, then stays at the peak until `duration_ms` ends. `baseline_posts_per_sec`
/// more posts contain the term over the whole feed, so that a trend can surge from an
/// existing baseline (a common word) as well as from nothing (a new term).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlantedTrend {
    /// One token as written in text (`recall`, `#acmefire`, `@acmecare`, `$INITECH`) or
    /// a phrase of two words (`battery fire`), which trends as a bigram.
    pub term: String,
    /// Offset from the feed's `start_ms`.
    pub start_ms: i64,
    pub growth_ms: i64,
    pub duration_ms: i64,
    pub peak_posts_per_sec: f64,
    pub baseline_posts_per_sec: f64,
}

/// One account posting `term` at a steady `posts_per_sec`: a term with a large count and a
/// single author, which must not trend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlantedSpammer {
    pub author: String,
    /// One token as written in text.
    pub term: String,
    /// Offset from the feed's `start_ms`.
    pub start_ms: i64,
    pub duration_ms: i64,
    pub posts_per_sec: f64,
}

/// The planted trends of [`SynthConfig::trend_quality`]. Times in seconds from the feed's
/// start; rates in posts per second. The comment gives the z-score the default detector
/// reaches on expected counts in the trend's first two windows (see `trend_quality`).
#[rustfmt::skip]
const QUALITY_TRENDS: [(&str, i64, i64, i64, f64, f64); 20] = [
    // term             start growth duration peak baseline    z
    // Clearly strong.
    ("#acmefire",        305,    60,     480, 3.0,  0.0),  // 53
    ("recall",           400,   150,     600, 2.5,  0.0),  // 29
    ("battery fire",     545,    90,     480, 2.0,  0.0),  // 28
    ("@acmecare",        730,    60,     360, 4.0,  0.5),  // 28
    // Medium.
    ("$INITECH",         875,    20,     300, 1.2,  0.0),  // 25
    ("outage",          1010,    45,     420, 1.5,  0.2),  // 19
    ("#blackfriday",    1130,    60,     360, 0.8,  0.0),  // 22
    ("data breach",     1250,    45,     420, 0.7,  0.0),  // 23
    // Near the threshold.
    ("refund",           610,    40,     300, 1.4,  0.3),  // 12.7
    ("#recallnow",       820,    30,     300, 0.4,  0.0),  // 13.8
    ("@globexhelp",     1390,    30,     300, 0.45, 0.0),  // 10.4
    ("$HOOLI",          1500,    40,     360, 1.4,  0.3),  // 12.8
    ("screen flicker",  1620,    30,     360, 0.5,  0.0),  // 15.2
    ("@acmeceo",        1775,    25,     300, 0.45, 0.0),  // 13.4
    ("$ACMX",           1880,    20,     300, 0.5,  0.0),  // 10.0
    ("shipping",        1990,    40,     360, 1.0,  0.1),  // 12.8
    ("#acmedown",       2115,    30,     300, 0.5,  0.0),  // 10.0
    ("delay",           2230,    40,     300, 1.6,  0.5),  // 12.1
    ("firmware",        2350,    30,     300, 0.45, 0.0),  // 10.4
    ("@acmeshop",       2470,    40,     180, 1.3,  0.2),  // 13.3
];

/// Event time that [`SynthConfig::trend_quality`] needs to hold all its planted signals.
pub const TREND_QUALITY_DURATION_MS: i64 = 45 * 60_000;

impl SynthConfig {
    /// The default feed with three bursts and two incidents at fixed fractions of
    /// `duration_ms`. Over a one-minute feed with 5–10 s windows, nothing starts before
    /// 21 s, so detectors' warm-up windows (2–3) see only background, and each lasts 9 s
    /// or more, so it dominates at least one window.
    pub fn demo(start_ms: EpochMs, duration_ms: i64) -> SynthConfig {
        let at = |fraction: f64| (duration_ms as f64 * fraction) as i64;
        let burst = |term: &str, start: f64, duration: f64, posts_per_sec: f64| PlantedBurst {
            term: term.into(),
            start_ms: at(start),
            duration_ms: at(duration),
            posts_per_sec,
        };
        let incident =
            |kind: &str, key: &str, start: f64, duration: f64, multiplier: f64| PlantedIncident {
                kind: kind.into(),
                key: key.into(),
                start_ms: at(start),
                duration_ms: at(duration),
                multiplier,
            };
        SynthConfig {
            start_ms,
            duration_ms,
            bursts: vec![
                burst("#acmefire", 0.35, 0.2, 30.0),
                burst("recall", 0.6, 0.2, 20.0),
                // Also a background mention: a burst over an existing baseline.
                burst("@acmesupport", 0.8, 0.15, 20.0),
            ],
            incidents: vec![
                incident("error", "checkout", 0.5, 0.2, 8.0),
                incident("ticket", "login", 0.75, 0.2, 6.0),
            ],
            ..SynthConfig::default()
        }
    }

    /// A feed for measuring trend detection (`tests/trend_quality.rs`): 100 background
    /// posts per second over a Zipf vocabulary of 5000 words from 20 000 authors, 20
    /// planted trends and one spammer. Planted times are fixed offsets laid out on
    /// [`TREND_QUALITY_DURATION_MS`]; a shorter feed leaves out the signals that do not
    /// fit in it whole.
    ///
    /// The trends cover every kind of term (words, hashtags, mentions, cashtags, and three
    /// two-word phrases), start at arbitrary instants of a minute, grow over 20–150 s and
    /// last 3–10 minutes; seven surge from an existing baseline, the others are new terms.
    /// Nothing is planted in the first 5 minutes, so detectors warm up on background
    /// alone. Sizes are set against the default trend detector (1-minute windows, score
    /// `z = (count − baseline) / sqrt(baseline + 1)` with an EWMA baseline of weight 0.3
    /// and a prior of 1 for new terms, alert at z ≥ 8, at least 5 occurrences): the
    /// z-score it reaches on *expected* counts within the trend's first two windows is
    /// ≥ 28 for the four strong trends, 19–25 for the four medium ones, and 10–15 for the
    /// twelve near the threshold (15–30 posts per window from as many authors for a new
    /// term). Poisson counts vary around those figures, as real ones do.
    ///
    /// The spammer, `giveaway_bot`, posts `#giveaway` 1.5 times a second for 20 minutes
    /// from minute 8: 90 occurrences a window, z ≈ 63 if occurrences were all that
    /// counted.
    pub fn trend_quality(start_ms: EpochMs, duration_ms: i64) -> SynthConfig {
        let seconds = |s: i64| s * 1000;
        let trends = QUALITY_TRENDS
            .iter()
            .map(
                |&(term, start, growth, duration, peak, baseline)| PlantedTrend {
                    term: term.into(),
                    start_ms: seconds(start),
                    growth_ms: seconds(growth),
                    duration_ms: seconds(duration),
                    peak_posts_per_sec: peak,
                    baseline_posts_per_sec: baseline,
                },
            )
            .filter(|trend| trend.start_ms + trend.duration_ms <= duration_ms)
            .collect();
        let spammer = Some(PlantedSpammer {
            author: "giveaway_bot".into(),
            term: "#giveaway".into(),
            start_ms: seconds(8 * 60),
            duration_ms: seconds(20 * 60),
            posts_per_sec: 1.5,
        })
        .filter(|spammer| spammer.start_ms + spammer.duration_ms <= duration_ms);
        SynthConfig {
            start_ms,
            duration_ms,
            posts_per_sec: 100.0,
            trends,
            spammer,
            ..SynthConfig::default()
        }
    }

    fn validate(&self) -> Result<(), SynthConfigError> {
        check_duration("duration_ms", self.duration_ms)?;
        check_rate("posts_per_sec", self.posts_per_sec)?;
        check_rate("events_per_sec", self.events_per_sec)?;
        if self.vocab_size == 0 {
            return Err(SynthConfigError::new("vocab_size", "must be at least 1"));
        }
        if !(self.zipf_s.is_finite() && self.zipf_s >= 0.0) {
            return Err(SynthConfigError::new(
                "zipf_s",
                "must be a finite number >= 0",
            ));
        }
        if self.authors == 0 {
            return Err(SynthConfigError::new("authors", "must be at least 1"));
        }
        for (index, burst) in self.bursts.iter().enumerate() {
            let field = |name: &str| format!("bursts[{index}].{name}");
            if burst.term.is_empty() || burst.term.contains(char::is_whitespace) {
                return Err(SynthConfigError::new(
                    field("term"),
                    "must be one non-empty token",
                ));
            }
            check_duration(&field("start_ms"), burst.start_ms)?;
            check_duration(&field("duration_ms"), burst.duration_ms)?;
            check_rate(&field("posts_per_sec"), burst.posts_per_sec)?;
        }
        for (index, incident) in self.incidents.iter().enumerate() {
            let field = |name: &str| format!("incidents[{index}].{name}");
            if background_series(&incident.kind, &incident.key).is_none() {
                return Err(SynthConfigError::new(
                    field("kind"),
                    format!(
                        "{}/{} is not a background series",
                        incident.kind, incident.key
                    ),
                ));
            }
            check_duration(&field("start_ms"), incident.start_ms)?;
            check_duration(&field("duration_ms"), incident.duration_ms)?;
            if !(incident.multiplier.is_finite() && incident.multiplier >= 1.0) {
                return Err(SynthConfigError::new(
                    field("multiplier"),
                    "must be a finite number >= 1",
                ));
            }
        }
        for (index, trend) in self.trends.iter().enumerate() {
            let field = |name: &str| format!("trends[{index}].{name}");
            if planted_term(&trend.term).is_none() {
                return Err(SynthConfigError::new(
                    field("term"),
                    "must be one token or two words",
                ));
            }
            check_duration(&field("start_ms"), trend.start_ms)?;
            check_duration(&field("growth_ms"), trend.growth_ms)?;
            check_duration(&field("duration_ms"), trend.duration_ms)?;
            check_rate(&field("peak_posts_per_sec"), trend.peak_posts_per_sec)?;
            check_rate(
                &field("baseline_posts_per_sec"),
                trend.baseline_posts_per_sec,
            )?;
        }
        if let Some(spammer) = &self.spammer {
            let field = |name: &str| format!("spammer.{name}");
            if spammer.author.is_empty() {
                return Err(SynthConfigError::new(field("author"), "must not be empty"));
            }
            if planted_term(&spammer.term).is_none_or(|(kind, _)| kind == TermKind::Bigram) {
                return Err(SynthConfigError::new(
                    field("term"),
                    "must be one non-empty token",
                ));
            }
            check_duration(&field("start_ms"), spammer.start_ms)?;
            check_duration(&field("duration_ms"), spammer.duration_ms)?;
            check_rate(&field("posts_per_sec"), spammer.posts_per_sec)?;
        }
        Ok(())
    }
}

fn check_duration(field: &str, value: i64) -> Result<(), SynthConfigError> {
    if value < 0 {
        return Err(SynthConfigError::new(field, "must be >= 0"));
    }
    Ok(())
}

fn check_rate(field: &str, value: f64) -> Result<(), SynthConfigError> {
    if !(value.is_finite() && value >= 0.0) {
        return Err(SynthConfigError::new(field, "must be a finite number >= 0"));
    }
    Ok(())
}

/// A [`SynthConfig`] that cannot generate a feed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("synth config: {field}: {problem}")]
pub struct SynthConfigError {
    pub field: String,
    pub problem: String,
}

impl SynthConfigError {
    fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// Something the feed contains on purpose, over event times `[start_ms, end_ms)` (absolute,
/// clipped to the feed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Planted {
    pub signal: PlantedSignal,
    pub start_ms: EpochMs,
    pub end_ms: EpochMs,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum PlantedSignal {
    /// A term that trends: it appears in many more posts than before.
    Burst { term: String },
    /// A series of internal events whose rate jumps.
    Incident { kind: String, key: String },
    /// A [`PlantedTrend`]. `term` and `kind` are as the tokenizer names the term
    /// (lowercase; a phrase is a bigram, its words joined by one space); `components`
    /// are a phrase's words, which may legitimately trend with it (empty for one token).
    Trend {
        term: String,
        kind: TermKind,
        growth_ms: i64,
        peak_posts_per_sec: f64,
        baseline_posts_per_sec: f64,
        components: Vec<String>,
    },
    /// A [`PlantedSpammer`]; `term` and `kind` as for a trend.
    Spammer {
        author: String,
        term: String,
        kind: TermKind,
        posts_per_sec: f64,
    },
}

/// How the tokenizer names a planted term written as in text: its kind and its
/// lowercased text, a phrase's two words joined by one space. `None` when it is neither
/// one token nor two words (a phrase's words must not carry a sigil).
fn planted_term(term: &str) -> Option<(TermKind, String)> {
    let words: Vec<&str> = term.split_whitespace().collect();
    let kind = match words.as_slice() {
        [token] => match token.chars().next() {
            Some('#') => TermKind::Hashtag,
            Some('@') => TermKind::Mention,
            Some('$') => TermKind::Cashtag,
            _ => TermKind::Word,
        },
        [first, second]
            if [first, second]
                .iter()
                .all(|w| w.chars().all(char::is_alphanumeric)) =>
        {
            TermKind::Bigram
        }
        _ => return None,
    };
    Some((kind, words.join(" ").to_lowercase()))
}

// ---------------------------------------------------------------------------------------
// Background content

const SOURCES: [(&str, f64); 4] = [
    ("twitter", 0.6),
    ("forum", 0.2),
    ("review", 0.12),
    ("news", 0.08),
];

/// The most frequent words of the vocabulary, so that stopword removal has work to do.
const COMMON_WORDS: [&str; 16] = [
    "the", "to", "and", "a", "of", "is", "in", "it", "for", "this", "my", "on", "with", "not",
    "just", "so",
];

/// Share of posts written in French, where a third of the words come from [`FRENCH_WORDS`].
const FRENCH_SHARE: f64 = 0.08;
const FRENCH_WORDS: [&str; 16] = [
    "le",
    "la",
    "les",
    "et",
    "est",
    "pas",
    "très",
    "une",
    "livraison",
    "commande",
    "produit",
    "déçu",
    "génial",
    "problème",
    "été",
    "ça",
];

/// Share of non-common words written as a hashtag.
const HASHTAG_SHARE: f64 = 0.04;
const MENTION_SHARE: f64 = 0.03;
const MENTIONS: [&str; 3] = ["@acme", "@acmesupport", "@globexnews"];
const CASHTAG_SHARE: f64 = 0.02;
const CASHTAGS: [&str; 3] = ["$ACME", "$GLBX", "$UMBR"];
/// Share of posts with a link, which the tokenizer must drop.
const URL_SHARE: f64 = 0.05;
const EMOJI_SHARE: f64 = 0.05;
const EMOJIS: [&str; 5] = ["🔥", "😡", "👍", "🙏", "😂"];
const COMMA_SHARE: f64 = 0.04;
const SENTENCE_ENDS: [&str; 5] = [".", ".", "!", "?", ""];
const MIN_WORDS: usize = 6;
const MAX_WORDS: usize = 14;

struct EventKind {
    kind: &'static str,
    /// The emitting system, reported as the event's `source`.
    source: &'static str,
    /// Whether `value` carries an amount (else it is one occurrence, 1.0).
    has_amount: bool,
}

const EVENT_KINDS: [(EventKind, f64); 4] = [
    (
        EventKind {
            kind: "order",
            source: "shop",
            has_amount: true,
        },
        0.5,
    ),
    (
        EventKind {
            kind: "error",
            source: "monitoring",
            has_amount: false,
        },
        0.3,
    ),
    (
        EventKind {
            kind: "ticket",
            source: "helpdesk",
            has_amount: false,
        },
        0.17,
    ),
    (
        EventKind {
            kind: "deploy",
            source: "ci",
            has_amount: false,
        },
        0.03,
    ),
];
/// Every background kind is spread evenly over these keys.
const EVENT_KEYS: [&str; 4] = ["checkout", "search", "payments", "login"];

/// The background kind and key named, and the share of background events in that series.
fn background_series(kind: &str, key: &str) -> Option<(&'static EventKind, &'static str, f64)> {
    let (event_kind, weight) = EVENT_KINDS
        .iter()
        .find(|(candidate, _)| candidate.kind == kind)?;
    let key = EVENT_KEYS.iter().find(|&&candidate| candidate == key)?;
    Some((event_kind, key, weight / EVENT_KEYS.len() as f64))
}

/// Words by rank, drawn with Zipf probabilities.
struct Vocabulary {
    words: Vec<String>,
    /// `cumulative[rank]`: probability of drawing a rank <= `rank`.
    cumulative: Vec<f64>,
}

const ONSETS: [&str; 22] = [
    "b", "c", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "tr", "st",
    "pl", "gr", "sh", "ch",
];
const VOWELS: [&str; 8] = ["a", "e", "i", "o", "u", "ai", "ou", "ea"];
const CODAS: [&str; 10] = ["", "", "", "n", "r", "s", "l", "m", "nd", "st"];

impl Vocabulary {
    /// [`COMMON_WORDS`], then unique pronounceable pseudo-words, shorter at higher ranks as
    /// in real language. Words in `excluded` are never produced, so that a planted term is
    /// absent from the background.
    fn new(rng: &mut SplitMix64, size: usize, zipf_s: f64, excluded: &HashSet<String>) -> Self {
        let mut words: Vec<String> = COMMON_WORDS
            .iter()
            .take(size)
            .map(|&word| word.into())
            .collect();
        let mut seen: HashSet<String> = words.iter().cloned().collect();
        let mut collisions = 0;
        while words.len() < size {
            // Each collision lengthens later words a little, so a huge vocabulary still
            // finds unused words.
            let syllables = if words.len() < 300 { 1 } else { 2 } + rng.below(2) + collisions / 16;
            let mut word = String::new();
            for _ in 0..syllables {
                word.push_str(rng.pick(&ONSETS));
                word.push_str(rng.pick(&VOWELS));
                word.push_str(rng.pick(&CODAS));
            }
            if excluded.contains(&word) || !seen.insert(word.clone()) {
                collisions += 1;
                continue;
            }
            words.push(word);
        }
        let mut total = 0.0;
        let mut cumulative: Vec<f64> = (1..=size)
            .map(|rank| {
                total += (rank as f64).powf(-zipf_s);
                total
            })
            .collect();
        cumulative.iter_mut().for_each(|share| *share /= total);
        Self { words, cumulative }
    }

    /// A rank, by binary search of the cumulative distribution.
    fn sample(&self, rng: &mut SplitMix64) -> usize {
        let draw = rng.unit();
        self.cumulative
            .partition_point(|&share| share <= draw)
            .min(self.words.len() - 1)
    }

    fn is_common(rank: usize) -> bool {
        rank < COMMON_WORDS.len()
    }
}

// ---------------------------------------------------------------------------------------
// Streams

/// The timestamps of one stream, over `[origin_ms, end_ms)`. Its rate ramps linearly
/// from 0 to full over the first `growth_ms` (0: full from the start), so that the
/// expected number of items by offset `t` is a known function Λ(t); the k-th item falls
/// where Λ reaches the k-th arrival position (see [`Arrivals`]).
struct Ticker {
    origin_ms: EpochMs,
    end_ms: EpochMs,
    /// Between items at full rate.
    interval_ms: f64,
    growth_ms: f64,
    arrivals: Arrivals,
    next_ms: Option<EpochMs>,
}

/// Where on the Λ scale the items of a stream fall.
enum Arrivals {
    /// The k-th uniformly in `[k, k+1)`: exact counts, "even with jitter".
    Even { scheduled: u64 },
    /// After the previous one by an Exp(1) gap: a Poisson process.
    Poisson { position: f64 },
}

impl Ticker {
    /// Items at a constant rate, even with jitter.
    fn even(origin_ms: EpochMs, end_ms: EpochMs, per_sec: f64, rng: &mut SplitMix64) -> Self {
        let arrivals = Arrivals::Even { scheduled: 0 };
        Self::new(origin_ms, end_ms, per_sec, 0, arrivals, rng)
    }

    /// A Poisson process whose rate ramps up to `per_sec` over `growth_ms`.
    fn poisson(
        origin_ms: EpochMs,
        end_ms: EpochMs,
        per_sec: f64,
        growth_ms: i64,
        rng: &mut SplitMix64,
    ) -> Self {
        let arrivals = Arrivals::Poisson { position: 0.0 };
        Self::new(origin_ms, end_ms, per_sec, growth_ms, arrivals, rng)
    }

    fn new(
        origin_ms: EpochMs,
        end_ms: EpochMs,
        per_sec: f64,
        growth_ms: i64,
        arrivals: Arrivals,
        rng: &mut SplitMix64,
    ) -> Self {
        let mut ticker = Self {
            origin_ms,
            end_ms,
            interval_ms: 1000.0 / per_sec,
            growth_ms: growth_ms as f64,
            arrivals,
            next_ms: None,
        };
        ticker.schedule(rng);
        ticker
    }

    fn schedule(&mut self, rng: &mut SplitMix64) {
        let position = match &mut self.arrivals {
            Arrivals::Even { scheduled } => {
                let index = *scheduled;
                *scheduled += 1;
                index as f64 + rng.unit()
            }
            Arrivals::Poisson { position } => {
                *position -= (1.0 - rng.unit()).ln();
                *position
            }
        };
        // A zero rate gives an infinite interval, hence no tick.
        let offset = self.offset_of(position);
        self.next_ms = if offset < (self.end_ms - self.origin_ms) as f64 {
            Some(self.origin_ms + offset as i64)
        } else {
            None
        };
    }

    /// Λ⁻¹: during the ramp the rate at `t` is `t / (growth · interval)`, so
    /// Λ(t) = t² / (2 · growth · interval); after it, one item per interval.
    fn offset_of(&self, position: f64) -> f64 {
        let items_in_ramp = self.growth_ms / (2.0 * self.interval_ms);
        if position < items_in_ramp {
            (2.0 * self.growth_ms * self.interval_ms * position).sqrt()
        } else {
            self.growth_ms + (position - items_in_ramp) * self.interval_ms
        }
    }
}

enum Content {
    BackgroundPosts,
    BackgroundEvents,
    /// A background post with the planted term (of a burst, of a trend or of its
    /// baseline) among its words.
    PlantedTerm {
        term: String,
    },
    /// The same, always from `author`.
    Spam {
        term: String,
        author: String,
    },
    Incident {
        kind: &'static EventKind,
        key: &'static str,
    },
}

struct Stream {
    ticker: Ticker,
    content: Content,
}

/// Builds the items; separate from the streams so that one stream's content can be read
/// while the generator's state changes.
struct Generator {
    rng: SplitMix64,
    vocabulary: Vocabulary,
    authors: u32,
    posts: u64,
    events: u64,
}

impl Generator {
    /// A background post, with `planted_term` as one of its words if given.
    fn post(&mut self, ts: EpochMs, planted_term: Option<&str>) -> Post {
        self.posts += 1;
        let rng = &mut self.rng;
        let source = *rng.pick_weighted(&SOURCES);
        let author = format!("user{}", rng.below(self.authors as usize));
        let french = rng.chance(FRENCH_SHARE);

        let mut text = String::with_capacity(128);
        if rng.chance(MENTION_SHARE) {
            push_token(&mut text, &[rng.pick(&MENTIONS)]);
        }
        let word_count = MIN_WORDS + rng.below(MAX_WORDS - MIN_WORDS + 1);
        let planted_at = planted_term.map(|term| (term, rng.below(word_count)));
        for position in 0..word_count {
            match planted_at {
                Some((term, at)) if at == position => push_token(&mut text, &[term]),
                _ if french && rng.chance(1.0 / 3.0) => {
                    push_token(&mut text, &[rng.pick(&FRENCH_WORDS)])
                }
                _ => {
                    let rank = self.vocabulary.sample(rng);
                    let hashtag = !Vocabulary::is_common(rank) && rng.chance(HASHTAG_SHARE);
                    push_token(
                        &mut text,
                        &[
                            if hashtag { "#" } else { "" },
                            self.vocabulary.words[rank].as_str(),
                        ],
                    );
                }
            }
            if rng.chance(COMMA_SHARE) {
                text.push(',');
            }
        }
        if rng.chance(CASHTAG_SHARE) {
            push_token(&mut text, &[rng.pick(&CASHTAGS)]);
        }
        text.push_str(rng.pick(&SENTENCE_ENDS));
        if rng.chance(EMOJI_SHARE) {
            push_token(&mut text, &[rng.pick(&EMOJIS)]);
        }
        if rng.chance(URL_SHARE) {
            push_token(&mut text, &["https://t.co/"]);
            write!(text, "{:x}", rng.next_u64() >> 24).expect("writing to a String cannot fail");
        }
        // Sentence case, so that the tokenizer's lowercasing matters.
        if let Some(first) = text.get_mut(0..1) {
            first.make_ascii_uppercase();
        }

        Post {
            id: format!("p-{}", self.posts),
            ts,
            source: source.into(),
            author,
            text,
            lang: if french { "fr" } else { "en" }.into(),
            url: String::new(),
            metadata: BTreeMap::new(),
        }
    }

    fn background_event(&mut self, ts: EpochMs) -> InternalEvent {
        let kind = self.rng.pick_weighted(&EVENT_KINDS);
        let key = self.rng.pick(&EVENT_KEYS);
        self.event(ts, kind, key)
    }

    fn event(&mut self, ts: EpochMs, kind: &EventKind, key: &str) -> InternalEvent {
        self.events += 1;
        let value = if kind.has_amount {
            // 5.00 to 200.00, in cents.
            (500 + self.rng.below(19_501)) as f64 / 100.0
        } else {
            1.0
        };
        InternalEvent {
            id: format!("e-{}", self.events),
            ts,
            source: kind.source.into(),
            kind: kind.kind.into(),
            key: key.into(),
            value,
            attributes: BTreeMap::new(),
        }
    }
}

/// Appends one space-separated token made of `parts`, all into the post's one String.
fn push_token(text: &mut String, parts: &[&str]) {
    if !text.is_empty() {
        text.push(' ');
    }
    parts.iter().for_each(|part| text.push_str(part));
}

/// The synthetic feed: an iterator of inputs in non-decreasing event time.
pub struct Synth {
    generator: Generator,
    streams: Vec<Stream>,
    /// The pending tick of each stream that has one, earliest first; ties go to the
    /// lower stream index, which keeps the feed deterministic.
    pending: BinaryHeap<Reverse<(EpochMs, usize)>>,
    truth: Vec<Planted>,
}

impl Synth {
    pub fn new(config: &SynthConfig) -> Result<Synth, SynthConfigError> {
        config.validate()?;
        let mut rng = SplitMix64(config.seed);
        let planted_terms = config
            .bursts
            .iter()
            .map(|burst| &burst.term)
            .chain(config.trends.iter().map(|trend| &trend.term))
            .chain(config.spammer.iter().map(|spammer| &spammer.term));
        let planted_words: HashSet<String> = planted_terms
            .flat_map(|term| term.split_whitespace())
            .map(|word| word.trim_start_matches(['#', '@', '$']).to_lowercase())
            .collect();
        let vocabulary =
            Vocabulary::new(&mut rng, config.vocab_size, config.zipf_s, &planted_words);

        let start = config.start_ms;
        let end = start.saturating_add(config.duration_ms);
        // Planted intervals, as absolute times clipped to the feed.
        let span = |offset: i64, duration: i64| {
            let from = start.saturating_add(offset).min(end);
            (from, from.saturating_add(duration).min(end))
        };
        let mut streams = vec![
            Stream {
                ticker: Ticker::even(start, end, config.posts_per_sec, &mut rng),
                content: Content::BackgroundPosts,
            },
            Stream {
                ticker: Ticker::even(start, end, config.events_per_sec, &mut rng),
                content: Content::BackgroundEvents,
            },
        ];
        let mut truth = Vec::new();
        for burst in &config.bursts {
            let (from, to) = span(burst.start_ms, burst.duration_ms);
            streams.push(Stream {
                ticker: Ticker::even(from, to, burst.posts_per_sec, &mut rng),
                content: Content::PlantedTerm {
                    term: burst.term.clone(),
                },
            });
            truth.push(Planted {
                signal: PlantedSignal::Burst {
                    term: burst.term.clone(),
                },
                start_ms: from,
                end_ms: to,
            });
        }
        for incident in &config.incidents {
            let (from, to) = span(incident.start_ms, incident.duration_ms);
            let (kind, key, share) = background_series(&incident.kind, &incident.key)
                .expect("validated: a background series");
            // The background already runs the series at its usual rate; add the rest.
            let extra_per_sec = (incident.multiplier - 1.0) * share * config.events_per_sec;
            streams.push(Stream {
                ticker: Ticker::even(from, to, extra_per_sec, &mut rng),
                content: Content::Incident { kind, key },
            });
            truth.push(Planted {
                signal: PlantedSignal::Incident {
                    kind: incident.kind.clone(),
                    key: incident.key.clone(),
                },
                start_ms: from,
                end_ms: to,
            });
        }
        for trend in &config.trends {
            let (from, to) = span(trend.start_ms, trend.duration_ms);
            let content = || Content::PlantedTerm {
                term: trend.term.clone(),
            };
            // The term's baseline runs over the whole feed, its surge over the planted period.
            streams.push(Stream {
                ticker: Ticker::poisson(start, end, trend.baseline_posts_per_sec, 0, &mut rng),
                content: content(),
            });
            streams.push(Stream {
                ticker: Ticker::poisson(
                    from,
                    to,
                    trend.peak_posts_per_sec,
                    trend.growth_ms,
                    &mut rng,
                ),
                content: content(),
            });
            let (kind, term) = planted_term(&trend.term).expect("validated: a planted term");
            let components = if kind == TermKind::Bigram {
                term.split(' ').map(str::to_owned).collect()
            } else {
                Vec::new()
            };
            truth.push(Planted {
                signal: PlantedSignal::Trend {
                    term,
                    kind,
                    growth_ms: trend.growth_ms,
                    peak_posts_per_sec: trend.peak_posts_per_sec,
                    baseline_posts_per_sec: trend.baseline_posts_per_sec,
                    components,
                },
                start_ms: from,
                end_ms: to,
            });
        }
        if let Some(spammer) = &config.spammer {
            let (from, to) = span(spammer.start_ms, spammer.duration_ms);
            streams.push(Stream {
                ticker: Ticker::even(from, to, spammer.posts_per_sec, &mut rng),
                content: Content::Spam {
                    term: spammer.term.clone(),
                    author: spammer.author.clone(),
                },
            });
            let (kind, term) = planted_term(&spammer.term).expect("validated: a planted term");
            truth.push(Planted {
                signal: PlantedSignal::Spammer {
                    author: spammer.author.clone(),
                    term,
                    kind,
                    posts_per_sec: spammer.posts_per_sec,
                },
                start_ms: from,
                end_ms: to,
            });
        }

        let pending = streams
            .iter()
            .enumerate()
            .filter_map(|(index, stream)| Some(Reverse((stream.ticker.next_ms?, index))))
            .collect();
        let generator = Generator {
            rng,
            vocabulary,
            authors: config.authors,
            posts: 0,
            events: 0,
        };
        Ok(Synth {
            generator,
            streams,
            pending,
            truth,
        })
    }

    /// What was planted, in configuration order (bursts, incidents, trends, spammer).
    pub fn truth(&self) -> &[Planted] {
        &self.truth
    }
}

impl Iterator for Synth {
    type Item = Input;

    fn next(&mut self) -> Option<Input> {
        let Reverse((ts, index)) = self.pending.pop()?;
        let stream = &mut self.streams[index];
        let generator = &mut self.generator;
        stream.ticker.schedule(&mut generator.rng);
        if let Some(next_ms) = stream.ticker.next_ms {
            self.pending.push(Reverse((next_ms, index)));
        }
        Some(match &stream.content {
            Content::BackgroundPosts => Input::Post(generator.post(ts, None)),
            Content::PlantedTerm { term } => Input::Post(generator.post(ts, Some(term))),
            Content::Spam { term, author } => Input::Post(Post {
                author: author.clone(),
                ..generator.post(ts, Some(term))
            }),
            Content::BackgroundEvents => Input::Event(generator.background_event(ts)),
            Content::Incident { kind, key } => Input::Event(generator.event(ts, kind, key)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{self, Format, InputKind, Limits};

    fn synth(config: &SynthConfig) -> Synth {
        Synth::new(config).expect("valid config")
    }

    fn posts(items: &[Input]) -> impl Iterator<Item = &Post> {
        items.iter().filter_map(|item| match item {
            Input::Post(post) => Some(post),
            Input::Event(_) => None,
        })
    }

    fn events(items: &[Input]) -> impl Iterator<Item = &InternalEvent> {
        items.iter().filter_map(|item| match item {
            Input::Event(event) => Some(event),
            Input::Post(_) => None,
        })
    }

    /// Whether the words of `term` (one token, or a phrase) stand in a row in the post.
    fn has_term(post: &Post, term: &str) -> bool {
        let words: Vec<&str> = term.split(' ').collect();
        let tokens: Vec<&str> = post
            .text
            .split(|c: char| c.is_whitespace() || matches!(c, ',' | '.' | '!' | '?'))
            .filter(|token| !token.is_empty())
            .collect();
        tokens.windows(words.len()).any(|run| {
            run.iter()
                .zip(&words)
                .all(|(token, word)| token.eq_ignore_ascii_case(word))
        })
    }

    fn demo() -> SynthConfig {
        SynthConfig::demo(DEFAULT_START_MS, 60_000)
    }

    /// The trend-quality scenario over a thinner background: the planted signals are the
    /// same, the tests run faster.
    fn trend_quality() -> SynthConfig {
        SynthConfig {
            posts_per_sec: 10.0,
            events_per_sec: 0.0,
            ..SynthConfig::trend_quality(DEFAULT_START_MS, TREND_QUALITY_DURATION_MS)
        }
    }

    #[test]
    fn same_seed_gives_same_feed_and_other_seed_does_not() {
        for config in [demo(), trend_quality()] {
            let first: Vec<Input> = synth(&config).collect();
            assert_eq!(first, synth(&config).collect::<Vec<_>>());
            let other: Vec<Input> = synth(&SynthConfig { seed: 7, ..config }).collect();
            assert_ne!(first, other);
        }
    }

    #[test]
    fn items_are_in_event_time_order_within_the_feed() {
        for config in [demo(), trend_quality()] {
            let items: Vec<Input> = synth(&config).collect();
            assert!(items.windows(2).all(|pair| pair[0].ts() <= pair[1].ts()));
            let feed = config.start_ms..config.start_ms + config.duration_ms;
            assert!(items.iter().all(|item| feed.contains(&item.ts())));
        }
    }

    #[test]
    fn background_rates_match_the_config() {
        let config = SynthConfig {
            duration_ms: 100_000,
            posts_per_sec: 150.0,
            events_per_sec: 30.0,
            ..SynthConfig::default()
        };
        let items: Vec<Input> = synth(&config).collect();
        assert_eq!(posts(&items).count(), 15_000);
        assert_eq!(events(&items).count(), 3_000);
        // Each second holds its share, give or take the jitter at its edges.
        for second in 0..100 {
            let from = config.start_ms + second * 1000;
            let in_second = posts(&items)
                .filter(|post| (from..from + 1000).contains(&post.ts))
                .count();
            assert!(
                (149..=151).contains(&in_second),
                "second {second}: {in_second}"
            );
        }
        // Series are random picks: error/checkout gets ~0.3 × 1/4 of events.
        let series = events(&items)
            .filter(|event| event.kind == "error" && event.key == "checkout")
            .count();
        assert!((180..=270).contains(&series), "{series}");
    }

    #[test]
    fn zero_rates_and_duration_give_empty_streams() {
        let config = SynthConfig {
            posts_per_sec: 0.0,
            ..SynthConfig::default()
        };
        assert!(synth(&config).all(|item| matches!(item, Input::Event(_))));
        assert_eq!(
            synth(&SynthConfig {
                duration_ms: 0,
                ..demo()
            })
            .count(),
            0
        );
    }

    #[test]
    fn planted_bursts_appear_only_when_planted() {
        let config = demo();
        let feed = synth(&config);
        let truth = feed.truth().to_vec();
        let items: Vec<Input> = feed.collect();
        for planted in &truth {
            let PlantedSignal::Burst { term } = &planted.signal else {
                continue;
            };
            let burst = config
                .bursts
                .iter()
                .find(|burst| &burst.term == term)
                .unwrap();
            let count_in = |from: EpochMs, to: EpochMs| {
                posts(&items)
                    .filter(|post| (from..to).contains(&post.ts) && has_term(post, term))
                    .count() as f64
            };
            let during = count_in(planted.start_ms, planted.end_ms);
            let seconds = (planted.end_ms - planted.start_ms) as f64 / 1000.0;
            assert!(
                during >= burst.posts_per_sec * seconds,
                "{term}: {during} in {seconds} s"
            );
            let before = count_in(config.start_ms, planted.start_ms);
            let seconds_before = (planted.start_ms - config.start_ms) as f64 / 1000.0;
            // Absent before, or (a background mention) at a small fraction of the burst rate.
            assert!(
                before / seconds_before < burst.posts_per_sec / 5.0,
                "{term}: {before} before"
            );
        }
    }

    #[test]
    fn planted_incidents_multiply_their_series() {
        let config = demo();
        let feed = synth(&config);
        let truth = feed.truth().to_vec();
        let items: Vec<Input> = feed.collect();
        for (planted, incident) in truth
            .iter()
            .skip(config.bursts.len())
            .zip(&config.incidents)
        {
            let rate = |from: EpochMs, to: EpochMs| {
                let count = events(&items)
                    .filter(|event| {
                        (from..to).contains(&event.ts)
                            && event.kind == incident.kind
                            && event.key == incident.key
                    })
                    .count();
                count as f64 * 1000.0 / (to - from) as f64
            };
            let before = rate(config.start_ms, planted.start_ms);
            let during = rate(planted.start_ms, planted.end_ms);
            assert!(
                during > before * incident.multiplier / 2.0,
                "{incident:?}: {before}/s then {during}/s"
            );
        }
    }

    #[test]
    fn truth_reports_absolute_clipped_intervals() {
        let mut config = demo();
        config.bursts.push(PlantedBurst {
            term: "late".into(),
            start_ms: 50_000,
            duration_ms: 30_000,
            posts_per_sec: 5.0,
        });
        let truth = synth(&config).truth().to_vec();
        assert_eq!(truth.len(), 6);
        assert_eq!(
            truth[0],
            Planted {
                signal: PlantedSignal::Burst {
                    term: "#acmefire".into()
                },
                start_ms: DEFAULT_START_MS + 21_000,
                end_ms: DEFAULT_START_MS + 33_000,
            }
        );
        assert_eq!(
            (truth[3].start_ms, truth[3].end_ms),
            (DEFAULT_START_MS + 50_000, DEFAULT_START_MS + 60_000)
        );
        assert_eq!(
            truth[4].signal,
            PlantedSignal::Incident {
                kind: "error".into(),
                key: "checkout".into()
            }
        );
    }

    #[test]
    fn posts_look_like_the_described_background() {
        let items: Vec<Input> = synth(&SynthConfig {
            duration_ms: 100_000,
            ..SynthConfig::default()
        })
        .collect();
        let all: Vec<&Post> = posts(&items).collect();
        let share = |predicate: &dyn Fn(&Post) -> bool| {
            all.iter().filter(|post| predicate(post)).count() as f64 / all.len() as f64
        };
        assert!(all
            .iter()
            .all(|post| ["twitter", "forum", "review", "news"].contains(&post.source.as_str())));
        assert!((0.55..0.65).contains(&share(&|post| post.source == "twitter")));
        assert!((0.06..0.10).contains(&share(&|post| post.lang == "fr")));
        assert!((0.04..0.06).contains(&share(&|post| post.text.contains("https://t.co/"))));
        assert!(share(&|post| post.text.contains('#')) > 0.1);
        assert!(share(&|post| post.text.contains('@')) > 0.02);
        assert!(share(&|post| post.text.contains('$')) > 0.01);
        let authors: HashSet<&str> = all.iter().map(|post| post.author.as_str()).collect();
        assert!(authors.len() > 10_000, "{}", authors.len());
        for (index, post) in all.iter().enumerate() {
            assert_eq!(post.id, format!("p-{}", index + 1));
            let words = post
                .text
                .split(' ')
                .filter(|token| !token.starts_with("https://"))
                .count();
            assert!(
                (MIN_WORDS..=MAX_WORDS + 3).contains(&words),
                "{}",
                post.text
            );
        }
        for (index, event) in events(&items).enumerate() {
            assert_eq!(event.id, format!("e-{}", index + 1));
            assert!(event.value.is_finite() && event.value > 0.0);
        }
    }

    #[test]
    fn vocabulary_is_zipfian_unique_and_avoids_planted_words() {
        let mut rng = SplitMix64(1);
        let excluded = HashSet::from(["acmefire".to_string()]);
        let vocabulary = Vocabulary::new(&mut rng, 5000, 1.07, &excluded);
        let unique: HashSet<&String> = vocabulary.words.iter().collect();
        assert_eq!(unique.len(), 5000);
        assert!(!unique.contains(&"acmefire".to_string()));
        let mut counts = vec![0u32; 5000];
        (0..200_000).for_each(|_| counts[vocabulary.sample(&mut rng)] += 1);
        // P(rank 1) / P(rank 10) = 10^1.07 ≈ 11.7.
        let ratio = f64::from(counts[0]) / f64::from(counts[9]);
        assert!((9.0..15.0).contains(&ratio), "{ratio}");
        assert!(counts[4999] < counts[99]);
    }

    #[test]
    fn synthetic_inputs_pass_the_json_decoder() {
        for item in synth(&demo()).take(5000) {
            let (kind, bytes) = match &item {
                Input::Post(post) => (InputKind::Post, serde_json::to_vec(post).unwrap()),
                Input::Event(event) => (InputKind::Event, serde_json::to_vec(event).unwrap()),
            };
            assert_eq!(
                decode::decode(kind, Format::Json, &bytes, &Limits::default()),
                Ok(item)
            );
        }
    }

    #[test]
    fn invalid_configs_are_refused_with_the_field() {
        let cases = [
            (
                SynthConfig {
                    posts_per_sec: f64::NAN,
                    ..demo()
                },
                "posts_per_sec",
            ),
            (
                SynthConfig {
                    events_per_sec: -1.0,
                    ..demo()
                },
                "events_per_sec",
            ),
            (
                SynthConfig {
                    vocab_size: 0,
                    ..demo()
                },
                "vocab_size",
            ),
            (
                SynthConfig {
                    authors: 0,
                    ..demo()
                },
                "authors",
            ),
            (
                SynthConfig {
                    duration_ms: -5,
                    ..demo()
                },
                "duration_ms",
            ),
        ];
        for (config, field) in cases {
            assert_eq!(
                Synth::new(&config).err().map(|error| error.field),
                Some(field.to_string())
            );
        }
        let mut unknown_series = demo();
        unknown_series.incidents[0].key = "warehouse".into();
        let error = Synth::new(&unknown_series).err().unwrap();
        assert_eq!(
            error.to_string(),
            "synth config: incidents[0].kind: error/warehouse is not a background series"
        );
        let mut two_words = demo();
        two_words.bursts[1].term = "product recall".into();
        assert_eq!(
            Synth::new(&two_words).err().unwrap().field,
            "bursts[1].term"
        );
        for phrase in ["product recall now", "#product recall", ""] {
            let mut config = trend_quality();
            config.trends[2].term = phrase.into();
            assert_eq!(Synth::new(&config).err().unwrap().field, "trends[2].term");
        }
        let mut config = trend_quality();
        config.trends[0].growth_ms = -1;
        assert_eq!(
            Synth::new(&config).err().unwrap().field,
            "trends[0].growth_ms"
        );
        let mut config = trend_quality();
        config.spammer.as_mut().unwrap().term = "free coins".into();
        assert_eq!(Synth::new(&config).err().unwrap().field, "spammer.term");
        let mut config = trend_quality();
        config.spammer.as_mut().unwrap().author.clear();
        assert_eq!(Synth::new(&config).err().unwrap().field, "spammer.author");
    }

    #[test]
    fn config_deserializes_with_defaults_and_rejects_unknown_keys() {
        let config: SynthConfig = serde_json::from_str(
            r#"{"seed":9,"bursts":[{"term":"recall","start_ms":1000,"duration_ms":5000,"posts_per_sec":10}]}"#,
        )
        .unwrap();
        assert_eq!(config.seed, 9);
        assert_eq!(config.posts_per_sec, 200.0);
        assert_eq!(config.bursts.len(), 1);
        assert!(serde_json::from_str::<SynthConfig>(r#"{"sead":9}"#).is_err());
    }

    /// Whether `count` is within 4 standard deviations (and one item) of a Poisson count
    /// expected at `rate_per_sec` over `[from, to)`.
    fn is_poisson_count(count: usize, rate_per_sec: f64, from: EpochMs, to: EpochMs) -> bool {
        let expected = rate_per_sec * (to - from) as f64 / 1000.0;
        (count as f64 - expected).abs() <= 4.0 * expected.sqrt() + 1.0
    }

    #[test]
    fn trend_quality_plants_every_kind_of_trend_and_a_spammer() {
        let config = trend_quality();
        let truth = synth(&config).truth().to_vec();
        let trends: Vec<(&TermKind, f64, &Vec<String>)> = truth
            .iter()
            .filter_map(|planted| match &planted.signal {
                PlantedSignal::Trend {
                    kind,
                    baseline_posts_per_sec,
                    components,
                    ..
                } => Some((kind, *baseline_posts_per_sec, components)),
                _ => None,
            })
            .collect();
        assert_eq!(trends.len(), 20);
        let kinds: HashSet<&TermKind> = trends.iter().map(|(kind, ..)| *kind).collect();
        assert_eq!(kinds.len(), 5, "{kinds:?}");
        let phrases: Vec<_> = trends
            .iter()
            .filter(|(kind, ..)| **kind == TermKind::Bigram)
            .collect();
        assert!(phrases.len() >= 2);
        assert!(phrases.iter().all(|(.., components)| components.len() == 2));
        assert!(trends.iter().any(|(_, baseline, _)| *baseline > 0.0));
        assert!(trends.iter().any(|(_, baseline, _)| *baseline == 0.0));
        assert!(matches!(
            truth.last().map(|planted| &planted.signal),
            Some(PlantedSignal::Spammer { .. })
        ));
        // Nothing planted while detectors warm up.
        let first_start = truth.iter().map(|planted| planted.start_ms).min().unwrap();
        assert!(first_start >= config.start_ms + 5 * 60_000);
    }

    #[test]
    fn trend_quality_leaves_out_what_does_not_fit_a_shorter_feed() {
        let short = SynthConfig::trend_quality(DEFAULT_START_MS, 20 * 60_000);
        assert_eq!(short.trends.len(), 7);
        assert!(short
            .trends
            .iter()
            .all(|trend| trend.start_ms + trend.duration_ms <= short.duration_ms));
        assert_eq!(short.spammer, None);
    }

    #[test]
    fn planted_trends_ramp_up_from_their_baseline_from_many_authors() {
        let config = trend_quality();
        let feed = synth(&config);
        let truth = feed.truth().to_vec();
        let items: Vec<Input> = feed.collect();
        for (planted, trend) in truth.iter().zip(&config.trends) {
            let PlantedSignal::Trend { term, .. } = &planted.signal else {
                panic!("trends come first in this config: {planted:?}");
            };
            let with_term = |from: EpochMs, to: EpochMs| -> Vec<&Post> {
                posts(&items)
                    .filter(|post| (from..to).contains(&post.ts) && has_term(post, term))
                    .collect()
            };
            let end = config.start_ms + config.duration_ms;
            let grown = planted.start_ms + trend.growth_ms;
            let baseline = trend.baseline_posts_per_sec;
            let peak = trend.peak_posts_per_sec;
            let before = with_term(config.start_ms, planted.start_ms).len();
            let after = with_term(planted.end_ms, end).len();
            if baseline == 0.0 {
                assert_eq!((before, after), (0, 0), "{term}: a new term");
            } else {
                assert!(is_poisson_count(
                    before,
                    baseline,
                    config.start_ms,
                    planted.start_ms
                ));
                assert!(is_poisson_count(after, baseline, planted.end_ms, end));
            }
            // Over the growth, the planted rate averages half the peak.
            let growing = with_term(planted.start_ms, grown).len();
            let growth_rate = baseline + peak / 2.0;
            assert!(
                is_poisson_count(growing, growth_rate, planted.start_ms, grown),
                "{term}: {growing} while growing"
            );
            let at_peak = with_term(grown, planted.end_ms);
            assert!(
                is_poisson_count(at_peak.len(), baseline + peak, grown, planted.end_ms),
                "{term}: {} at the peak",
                at_peak.len()
            );
            let authors: HashSet<&str> = at_peak.iter().map(|post| post.author.as_str()).collect();
            assert!(
                authors.len() * 10 >= at_peak.len() * 9,
                "{term}: {} authors for {} posts",
                authors.len(),
                at_peak.len()
            );
        }
    }

    #[test]
    fn the_spammer_alone_posts_its_term_at_its_rate() {
        let config = trend_quality();
        let feed = synth(&config);
        let Some(Planted {
            signal: PlantedSignal::Spammer { author, term, .. },
            start_ms,
            end_ms,
        }) = feed.truth().last().cloned()
        else {
            panic!("no spammer in {:?}", feed.truth());
        };
        let spammer = config.spammer.clone().unwrap();
        let items: Vec<Input> = feed.collect();
        let with_term: Vec<&Post> = posts(&items).filter(|post| has_term(post, &term)).collect();
        assert!(with_term.iter().all(|post| post.author == author));
        assert!(with_term
            .iter()
            .all(|post| (start_ms..end_ms).contains(&post.ts)));
        let expected = spammer.posts_per_sec * (end_ms - start_ms) as f64 / 1000.0;
        assert!((with_term.len() as f64 - expected).abs() <= 1.0);
        let by_author = posts(&items).filter(|post| post.author == author).count();
        assert_eq!(by_author, with_term.len(), "the spammer posts nothing else");
    }

    #[test]
    fn a_ramp_spreads_items_by_its_rate() {
        // 10 items a second at full rate, reached after 60 s: Λ(t) = t² / 12 000 000
        // during the ramp (t in ms), then 10 more a second.
        let mut rng = SplitMix64(3);
        let arrivals = Arrivals::Even { scheduled: 0 };
        let mut ticker = Ticker::new(0, 120_000, 10.0, 60_000, arrivals, &mut rng);
        let mut ticks = Vec::new();
        while let Some(ts) = ticker.next_ms {
            ticks.push(ts);
            ticker.schedule(&mut rng);
        }
        let by = |t: EpochMs| ticks.iter().filter(|&&ts| ts < t).count();
        assert_eq!((by(30_000), by(60_000), by(120_000)), (75, 300, 900));
    }

    #[test]
    fn truth_is_tagged_by_type_in_json() {
        let truth = [
            PlantedSignal::Burst {
                term: "recall".into(),
            },
            PlantedSignal::Trend {
                term: "battery fire".into(),
                kind: TermKind::Bigram,
                growth_ms: 90_000,
                peak_posts_per_sec: 2.0,
                baseline_posts_per_sec: 0.0,
                components: vec!["battery".into(), "fire".into()],
            },
            PlantedSignal::Spammer {
                author: "giveaway_bot".into(),
                term: "#giveaway".into(),
                kind: TermKind::Hashtag,
                posts_per_sec: 1.5,
            },
        ];
        let json: Vec<String> = truth
            .iter()
            .map(|signal| serde_json::to_string(signal).unwrap())
            .collect();
        assert_eq!(
            json,
            [
                r#"{"type":"burst","term":"recall"}"#,
                r#"{"type":"trend","term":"battery fire","kind":"bigram","growth_ms":90000,"peak_posts_per_sec":2.0,"baseline_posts_per_sec":0.0,"components":["battery","fire"]}"#,
                r##"{"type":"spammer","author":"giveaway_bot","term":"#giveaway","kind":"hashtag","posts_per_sec":1.5}"##,
            ]
        );
    }
}
