//! Post text → terms: lowercase words, `#hashtags`, `$cashtags` and `@mentions`.
//!
//! One pass over the characters, no regex: the tokenizer sits on the hottest path of the
//! service (every post), so it lowercases into a caller-owned scratch buffer and hands out
//! borrowed `&str`s ([`Tokenizer::for_each_term`]); the owning [`Tokenizer::tokenize`] is
//! a convenience on top of it.
//!
//! Rules, in the order they apply at each position:
//! - URLs (`http://`, `https://`, `www.`) are skipped up to the next whitespace: links are
//!   unique per post and would only pollute the vocabulary.
//! - `#`, `@`, `$` start a tag only at a token boundary (not glued to a preceding word,
//!   so `bob@example.com` and `C#` are not tags). A hashtag needs at least one letter
//!   (`#1` is not a hashtag); a cashtag is `$` + letters (`$5` is not a cashtag). Tags are
//!   never dropped for length or as stopwords: they are deliberate.
//! - A word is a run of letters and digits (any script; combining accents stay attached),
//!   with apostrophes allowed between letters (`aujourd'hui`, `don't`). French elisions
//!   whose prefix is a stopword are stripped (`l'avion` → `avion`), as is the English
//!   possessive `'s`. Words that are stopwords or shorter than `min_word_chars` are dropped.
//! - Everything else (punctuation, emoji, symbols) separates tokens and is dropped.
//!
//! CJK text has no spaces; a run of ideographs stays one word (no segmentation).
//!
//! With `bigrams`, each pair of consecutive kept words is also emitted (`battery fire`,
//! kind bigram), right after its second word. Dropped stopwords do not break a pair
//! (`battery is on fire` pairs `battery fire`); tags, URLs and sentence punctuation
//! (`.`, `!`, `?`, `;`, `:`) do, since a pair across them is rarely a phrase.
//!
//! The `whitespace` mode is the plain `text.split_whitespace()` of simple jobs: tokens as
//! written, a tag when they start with `#`, `$` or `@`.

use crate::config::{TokenizerConfig, TokenizerMode};
use crate::model::{Term, TermKind};
use crate::stopwords::{self, StopwordSet, UnknownLanguage};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer.stopwords: {0}")]
    Stopwords(#[from] UnknownLanguage),
}

/// A configured tokenizer. Immutable after construction, so it can be shared.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    mode: TokenizerMode,
    stopwords: StopwordSet,
    min_word_chars: usize,
    bigrams: bool,
}

/// Reusable buffers of [`Tokenizer::for_each_term`]: keeping them across calls makes
/// tokenizing allocation-free once they have grown to the longest token.
#[derive(Debug, Default, Clone)]
pub struct Scratch {
    token: String,
    previous_word: String,
    pair: String,
}

/// Emits bigrams from the words it is shown.
struct Pairing<'s> {
    enabled: bool,
    previous_word: &'s mut String,
    pair: &'s mut String,
}

impl Pairing<'_> {
    fn word(&mut self, word: &str, emit: &mut impl FnMut(TermKind, &str)) {
        if !self.enabled {
            return;
        }
        if !self.previous_word.is_empty() {
            self.pair.clear();
            self.pair.push_str(self.previous_word);
            self.pair.push(' ');
            self.pair.push_str(word);
            emit(TermKind::Bigram, self.pair);
        }
        self.previous_word.clear();
        self.previous_word.push_str(word);
    }

    fn break_pair(&mut self) {
        self.previous_word.clear();
    }
}

impl Tokenizer {
    pub fn new(config: &TokenizerConfig) -> Result<Tokenizer, TokenizerError> {
        Ok(Tokenizer {
            mode: config.mode,
            stopwords: stopwords::stopword_set(&config.stopwords, &config.extra_stopwords)?,
            min_word_chars: config.min_word_chars,
            bigrams: config.bigrams,
        })
    }

    /// Replaces the contents of `out` with the terms of `text`, in text order.
    pub fn tokenize(&self, text: &str, out: &mut Vec<Term>) {
        out.clear();
        self.for_each_term(text, &mut Scratch::default(), |kind, term| {
            out.push(Term {
                kind,
                text: term.to_owned(),
            })
        });
    }

    /// Calls `emit` with each term of `text`, in text order.
    pub fn for_each_term(
        &self,
        text: &str,
        scratch: &mut Scratch,
        mut emit: impl FnMut(TermKind, &str),
    ) {
        let Scratch {
            token: scratch,
            previous_word,
            pair,
        } = scratch;
        let mut pairing = Pairing {
            enabled: self.bigrams,
            previous_word,
            pair,
        };
        pairing.break_pair();
        if self.mode == TokenizerMode::Whitespace {
            for_each_whitespace_token(text, |token| {
                let kind = match token.as_bytes()[0] {
                    b'#' => TermKind::Hashtag,
                    b'$' => TermKind::Cashtag,
                    b'@' => TermKind::Mention,
                    _ => TermKind::Word,
                };
                emit(kind, token);
                if kind == TermKind::Word {
                    pairing.word(token, &mut emit);
                } else {
                    pairing.break_pair();
                }
            });
            return;
        }
        let mut cursor = Cursor { rest: text };
        // Whether the previous character belonged to a word or tag: sigils glued to a
        // word (`bob@example.com`, `C#`) are punctuation, not tags.
        let mut glued = false;
        while let Some(c) = cursor.peek() {
            match c {
                'h' | 'H' | 'w' | 'W' if !glued && starts_url(cursor.rest) => {
                    cursor.skip_while(|c| !c.is_whitespace());
                    pairing.break_pair();
                }
                '#' | '@' if !glued => {
                    cursor.bump();
                    let kind = if c == '#' {
                        TermKind::Hashtag
                    } else {
                        TermKind::Mention
                    };
                    let has_letter = read_tag(&mut cursor, scratch, c, is_handle_char);
                    // A lone sigil or a numeric hashtag (`#1`) is not a tag.
                    if scratch.len() > 1 && (kind == TermKind::Mention || has_letter) {
                        emit(kind, scratch);
                    }
                    glued = scratch.len() > 1;
                    pairing.break_pair();
                }
                '$' if !glued => {
                    cursor.bump();
                    read_tag(&mut cursor, scratch, c, char::is_alphabetic);
                    if scratch.len() > 1 {
                        emit(TermKind::Cashtag, scratch);
                    }
                    glued = scratch.len() > 1;
                    pairing.break_pair();
                }
                c if c.is_alphanumeric() => {
                    read_word(&mut cursor, scratch);
                    if let Some(word) = self.keep_word(scratch) {
                        emit(TermKind::Word, word);
                        pairing.word(word, &mut emit);
                    }
                    glued = true;
                }
                _ => {
                    if matches!(c, '.' | '!' | '?' | ';' | ':') {
                        pairing.break_pair();
                    }
                    cursor.bump();
                    glued = false;
                }
            }
        }
    }

    /// The word to count for a lowercased raw word, or `None` when it is to be dropped.
    fn keep_word<'w>(&self, raw: &'w str) -> Option<&'w str> {
        let mut word = raw;
        // Most words have no apostrophe: they pay for exactly one stopword lookup.
        if word.contains('\'') {
            if self.stopwords.contains(word) {
                return None;
            }
            while let Some(apostrophe) = word.find('\'') {
                if !self.stopwords.contains(&word[..=apostrophe]) {
                    break;
                }
                word = &word[apostrophe + 1..];
            }
            word = word.strip_suffix("'s").unwrap_or(word);
        }
        let long_enough = word
            .chars()
            .nth(self.min_word_chars.saturating_sub(1))
            .is_some();
        (long_enough && !word.is_empty() && !self.stopwords.contains(word)).then_some(word)
    }
}

/// Calls `emit` with each token of `text.split_whitespace()`, in order, faster on ASCII
/// text (most posts): the std splitter decodes every character, which was a tenth of
/// the whole whitespace-mode pipeline, and a byte loop mispredicts a branch at every
/// token's end (~40% of the tokenizer's time). ASCII text is instead read 64 bytes at a
/// time into a mask of its token bytes, whose edges (token starts and ends) are then
/// visited with bit operations: one branch per edge, none per byte.
fn for_each_whitespace_token<'t>(text: &'t str, mut emit: impl FnMut(&'t str)) {
    if !text.is_ascii() {
        text.split_whitespace().for_each(emit);
        return;
    }
    // Where the token open at the current byte started, and whether the byte before
    // the current block belongs to a token (1) or not (0).
    let (mut start, mut carry) = (0, 0u64);
    for (block, bytes) in text.as_bytes().chunks(64).enumerate() {
        let base = block * 64;
        let tokens = token_mask(bytes);
        // Bit i: byte i differs from the byte before it (a start if it is a token's,
        // else an end). Past a short last block the bytes count as spaces, so a token
        // reaching the end of the text ends there.
        let mut edges = tokens ^ (tokens << 1 | carry);
        while edges != 0 {
            let bit = edges.trailing_zeros();
            edges &= edges - 1;
            let at = base + bit as usize;
            if tokens >> bit & 1 == 1 {
                start = at;
            } else {
                emit(&text[start..at]);
            }
        }
        carry = tokens >> 63;
    }
    if carry == 1 {
        emit(&text[start..]);
    }
}

/// Bit i set when byte i of `bytes` (at most 64) is not ASCII whitespace (space, `\t`,
/// `\n`, `\x0b`, `\x0c`, `\r`: `char::is_whitespace` on ASCII); bytes past the end
/// count as whitespace. 16 bytes per step.
fn token_mask(bytes: &[u8]) -> u64 {
    let mut mask = 0u64;
    for (i, piece) in bytes.chunks(16).enumerate() {
        let mut padded = [b' '; 16];
        let piece: &[u8; 16] = match piece.try_into() {
            Ok(whole) => whole,
            Err(_) => {
                padded[..piece.len()].copy_from_slice(piece);
                &padded
            }
        };
        mask |= u64::from(!whitespace_mask(piece)) << (16 * i);
    }
    mask
}

/// Bit i set when byte i is ASCII whitespace (see [`token_mask`]); the bytes are ASCII.
#[cfg(target_arch = "x86_64")]
fn whitespace_mask(bytes: &[u8; 16]) -> u16 {
    use std::arch::x86_64::{
        _mm_and_si128, _mm_cmpeq_epi8, _mm_cmpgt_epi8, _mm_cmplt_epi8, _mm_loadu_si128,
        _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    // SAFETY: SSE2 is part of every x86_64 CPU, and the load reads the 16 bytes of
    // `bytes` (unaligned loads are allowed). ASCII bytes are positive as i8, so the
    // signed compares order them as bytes.
    unsafe {
        let v = _mm_loadu_si128(bytes.as_ptr().cast());
        let space = _mm_cmpeq_epi8(v, _mm_set1_epi8(b' ' as i8));
        let control = _mm_and_si128(
            _mm_cmpgt_epi8(v, _mm_set1_epi8(b'\t' as i8 - 1)),
            _mm_cmplt_epi8(v, _mm_set1_epi8(b'\r' as i8 + 1)),
        );
        _mm_movemask_epi8(_mm_or_si128(space, control)) as u16
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn whitespace_mask(bytes: &[u8; 16]) -> u16 {
    whitespace_mask_bytewise(bytes)
}

/// [`whitespace_mask`] a byte at a time: elsewhere than on x86_64, and to check the
/// vector one against.
#[cfg(any(test, not(target_arch = "x86_64")))]
fn whitespace_mask_bytewise(bytes: &[u8; 16]) -> u16 {
    let mut mask = 0u16;
    for (i, &b) in bytes.iter().enumerate() {
        let space = b == b' ' || (b'\t'..=b'\r').contains(&b);
        mask |= u16::from(space) << i;
    }
    mask
}

/// Reads a tag body after its sigil into `scratch` (sigil included, lowercased).
/// Returns whether the body contains a letter.
fn read_tag(
    cursor: &mut Cursor<'_>,
    scratch: &mut String,
    sigil: char,
    body: fn(char) -> bool,
) -> bool {
    scratch.clear();
    scratch.push(sigil);
    let mut has_letter = false;
    while let Some(c) = cursor
        .peek()
        .filter(|&c| body(c) || (scratch.len() > 1 && is_combining_mark(c)))
    {
        has_letter |= c.is_alphabetic();
        push_lowercase(scratch, c);
        cursor.bump();
    }
    has_letter
}

/// Reads a word (starting at an alphanumeric character) into `scratch`, lowercased, with
/// inner apostrophes folded to `'`.
fn read_word(cursor: &mut Cursor<'_>, scratch: &mut String) {
    scratch.clear();
    loop {
        // Most words are ASCII: a run of ASCII letters and digits is copied and lowercased
        // at once rather than decoded, tested and pushed character by character (that
        // was a tenth of the default pipeline).
        let run = cursor
            .rest
            .bytes()
            .position(|b| !b.is_ascii_alphanumeric())
            .unwrap_or(cursor.rest.len());
        if run > 0 {
            let start = scratch.len();
            scratch.push_str(&cursor.rest[..run]);
            scratch[start..].make_ascii_lowercase();
            cursor.rest = &cursor.rest[run..];
        }
        let Some(c) = cursor.peek() else { break };
        if c.is_alphanumeric() || is_combining_mark(c) {
            push_lowercase(scratch, c);
        } else if is_apostrophe(c) && cursor.peek_second().is_some_and(char::is_alphanumeric) {
            scratch.push('\'');
        } else {
            break;
        }
        cursor.bump();
    }
}

/// Characters of a hashtag or mention body (Twitter-style handles allow `_`).
fn is_handle_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn is_apostrophe(c: char) -> bool {
    c == '\'' || c == '’'
}

/// Combining diacritics (decomposed accents like `e` + U+0301) continue a word; Rust's
/// `is_alphanumeric` does not cover them (Indic vowel signs it does cover).
fn is_combining_mark(c: char) -> bool {
    matches!(c, '\u{0300}'..='\u{036F}' | '\u{1AB0}'..='\u{1AFF}' | '\u{1DC0}'..='\u{1DFF}' | '\u{20D0}'..='\u{20FF}' | '\u{FE20}'..='\u{FE2F}')
}

fn push_lowercase(out: &mut String, c: char) {
    if c.is_ascii() {
        out.push(c.to_ascii_lowercase());
    } else {
        out.extend(c.to_lowercase());
    }
}

fn starts_url(text: &str) -> bool {
    let bytes = text.as_bytes();
    ["http://", "https://", "www."].iter().any(|prefix| {
        bytes.len() >= prefix.len() && bytes[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    })
}

/// A forward-only position in the text.
struct Cursor<'a> {
    rest: &'a str,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<char> {
        self.rest.chars().next()
    }

    fn peek_second(&self) -> Option<char> {
        self.rest.chars().nth(1)
    }

    fn bump(&mut self) {
        if let Some(c) = self.peek() {
            self.rest = &self.rest[c.len_utf8()..];
        }
    }

    fn skip_while(&mut self, keep_going: impl Fn(char) -> bool) {
        let end = self
            .rest
            .find(|c| !keep_going(c))
            .unwrap_or(self.rest.len());
        self.rest = &self.rest[end..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer(stopwords: &[&str], min_word_chars: usize) -> Tokenizer {
        Tokenizer::new(&TokenizerConfig {
            stopwords: stopwords.iter().map(|s| (*s).to_owned()).collect(),
            extra_stopwords: Vec::new(),
            min_word_chars,
            bigrams: false,
            ..TokenizerConfig::default()
        })
        .unwrap()
    }

    fn terms(t: &Tokenizer, text: &str) -> Vec<(TermKind, String)> {
        let mut out = Vec::new();
        t.tokenize(text, &mut out);
        out.into_iter().map(|t| (t.kind, t.text)).collect()
    }

    fn texts(t: &Tokenizer, text: &str) -> Vec<String> {
        terms(t, text).into_iter().map(|(_, text)| text).collect()
    }

    #[test]
    fn words_are_lowercased_and_stopwords_dropped() {
        let t = tokenizer(&["en"], 2);
        assert_eq!(
            texts(&t, "The ACME rocket is on FIRE, again!"),
            ["acme", "rocket", "fire"]
        );
    }

    #[test]
    fn tags_keep_their_sigil_and_kind() {
        let t = tokenizer(&["en"], 2);
        assert_eq!(
            terms(&t, "#AcmeFire at @Acme_Corp: $ACME falls, #a #1 $5 @ #"),
            [
                (TermKind::Hashtag, "#acmefire".to_owned()),
                (TermKind::Mention, "@acme_corp".to_owned()),
                (TermKind::Cashtag, "$acme".to_owned()),
                (TermKind::Word, "falls".to_owned()),
                (TermKind::Hashtag, "#a".to_owned()),
            ]
        );
    }

    #[test]
    fn glued_sigils_are_not_tags() {
        let t = tokenizer(&[], 2);
        assert_eq!(
            texts(&t, "mail bob@example.com about C# and AT&T"),
            ["mail", "bob", "example", "com", "about", "and", "at"]
        );
    }

    #[test]
    fn urls_are_dropped_entirely() {
        let t = tokenizer(&[], 2);
        assert_eq!(
            texts(
                &t,
                "see https://acme.com/fire?x=1 and HTTP://x.io www.acme.com/#tag ok wwwx"
            ),
            ["see", "and", "ok", "wwwx"]
        );
    }

    #[test]
    fn emoji_and_punctuation_separate_and_vanish() {
        let t = tokenizer(&[], 2);
        assert_eq!(
            texts(&t, "fire🔥🔥rocket!!! «launch»—now…"),
            ["fire", "rocket", "launch", "now"]
        );
    }

    #[test]
    fn short_words_are_dropped_but_tags_are_not() {
        let t = tokenizer(&[], 3);
        assert_eq!(texts(&t, "go to #ai lab @x"), ["#ai", "lab", "@x"]);
        assert_eq!(texts(&tokenizer(&[], 0), "a b"), ["a", "b"]);
    }

    #[test]
    fn french_elisions_are_stripped_when_the_prefix_is_a_stopword() {
        let t = tokenizer(&["fr"], 2);
        assert_eq!(
            texts(&t, "L'avion d’Acme qu'il a vu aujourd'hui jusqu'à l'été"),
            ["avion", "acme", "vu", "aujourd'hui"]
        );
        // Without French stopwords the elision stays part of the word.
        assert_eq!(texts(&tokenizer(&[], 2), "l'avion"), ["l'avion"]);
    }

    #[test]
    fn english_contractions_and_possessives() {
        let t = tokenizer(&["en"], 2);
        assert_eq!(
            texts(&t, "Don't buy ACME's rocket, it's the dogs' toy"),
            ["buy", "acme", "rocket", "dogs", "toy"]
        );
    }

    #[test]
    fn unicode_words_accents_and_scripts() {
        let t = tokenizer(&["fr"], 2);
        assert_eq!(
            texts(
                &t,
                "Écoutez: ÉTÉ café cafe\u{301} Straße Москва 東京タワー #東京 數字123"
            ),
            [
                "écoutez",
                "café",
                "cafe\u{301}",
                "straße",
                "москва",
                "東京タワー",
                "#東京",
                "數字123"
            ]
        );
    }

    #[test]
    fn extra_stopwords_apply() {
        let t = Tokenizer::new(&TokenizerConfig {
            stopwords: Vec::new(),
            extra_stopwords: vec!["ACME".into()],
            min_word_chars: 1,
            bigrams: false,
            ..TokenizerConfig::default()
        })
        .unwrap();
        assert_eq!(texts(&t, "Acme #acme"), ["#acme"]);
    }

    #[test]
    fn unknown_language_fails() {
        let err = Tokenizer::new(&TokenizerConfig {
            stopwords: vec!["xx".into()],
            ..TokenizerConfig::default()
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("tokenizer.stopwords") && err.to_string().contains("xx"),
            "{err}"
        );
    }

    #[test]
    fn callback_form_matches_and_output_is_reused() {
        let t = tokenizer(&["en"], 2);
        let mut out = vec![Term {
            kind: TermKind::Word,
            text: "stale".into(),
        }];
        t.tokenize("#one two", &mut out);
        assert_eq!(out.len(), 2);
        let mut scratch = Scratch::default();
        let mut seen = Vec::new();
        t.for_each_term("#one two", &mut scratch, |kind, text| {
            seen.push(Term {
                kind,
                text: text.to_owned(),
            })
        });
        assert_eq!(seen, out);
        assert!(terms(&t, "").is_empty());
    }

    #[test]
    fn bigrams_pair_consecutive_kept_words_within_a_sentence() {
        let t = Tokenizer::new(&TokenizerConfig::default()).unwrap();
        let bigrams = |text: &str| -> Vec<String> {
            terms(&t, text)
                .into_iter()
                .filter(|(kind, _)| *kind == TermKind::Bigram)
                .map(|(_, text)| text)
                .collect()
        };
        assert_eq!(
            bigrams("The battery is on FIRE tonight"),
            ["battery fire", "fire tonight"],
            "stopwords dropped first"
        );
        assert_eq!(
            bigrams("battery. fire"),
            Vec::<String>::new(),
            "sentence break"
        );
        assert_eq!(
            bigrams("battery #fire smoke"),
            Vec::<String>::new(),
            "tag break"
        );
        assert_eq!(
            bigrams("one https://x.io two"),
            Vec::<String>::new(),
            "URL break"
        );
        assert_eq!(
            terms(&t, "acme recall")
                .into_iter()
                .map(|(k, _)| k)
                .collect::<Vec<_>>(),
            [TermKind::Word, TermKind::Word, TermKind::Bigram],
            "a bigram follows its second word"
        );
    }

    #[test]
    fn whitespace_mode_keeps_tokens_as_written() {
        let t = Tokenizer::new(&TokenizerConfig {
            mode: TokenizerMode::Whitespace,
            stopwords: Vec::new(),
            bigrams: false,
            ..TokenizerConfig::default()
        })
        .unwrap();
        assert_eq!(
            terms(&t, " The #Fire\tthe  $5 @x, e-mail\n"),
            [
                (TermKind::Word, "The".to_owned()),
                (TermKind::Hashtag, "#Fire".to_owned()),
                (TermKind::Word, "the".to_owned()),
                (TermKind::Cashtag, "$5".to_owned()),
                (TermKind::Mention, "@x,".to_owned()),
                (TermKind::Word, "e-mail".to_owned()),
            ]
        );
    }

    #[test]
    fn whitespace_masks_agree_on_every_ascii_byte() {
        for first in (0u8..128).step_by(16) {
            let mut bytes = [0u8; 16];
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = first + i as u8;
            }
            assert_eq!(whitespace_mask(&bytes), whitespace_mask_bytewise(&bytes));
            bytes.reverse();
            assert_eq!(whitespace_mask(&bytes), whitespace_mask_bytewise(&bytes));
        }
        let spaces = *b" \t\n\x0b\x0c\r abc\x08\x0e\x1f!~\x7f";
        assert_eq!(whitespace_mask(&spaces), 0b0000_0000_0111_1111);
    }

    #[test]
    fn whitespace_tokens_match_split_whitespace() {
        // Tokens and gaps across the 64-byte blocks: ending at, starting at and
        // spanning a block's edge, a text of exactly one and two blocks.
        let word = |n: usize| "x".repeat(n);
        let mut texts = vec![
            String::new(),
            "   ".into(),
            "a".into(),
            " a  b\tc\n\x0bd\x0c\re ".into(),
            "\u{a0}x\u{2003}y\u{3000}z ".into(),
            "é à\u{85}ü end".into(),
            "\x1f!~\x7f ok".into(),
            word(64),
            word(128),
            format!("{} {}", word(63), word(70)),
            format!("{} {} ", word(62), word(64)),
            format!("  {}", word(200)),
        ];
        for gap in 60..68 {
            texts.push(format!("{}{}{}", word(gap), " ".repeat(3), word(5)));
        }
        for text in &texts {
            let mut tokens = Vec::new();
            for_each_whitespace_token(text, |t| tokens.push(t));
            assert_eq!(
                tokens,
                text.split_whitespace().collect::<Vec<_>>(),
                "{text:?}"
            );
        }
    }
}
