//! The fast path of decoding a JSON post: a flat object whose values are strings without
//! escapes, an integer `ts`, numbers, `null`s, or booleans. That is nearly every post a
//! feed sends, and serde_json's general path (a visitor per key and value, and a scan of
//! strings 8 bytes at a time) was ~15% of a whitespace-mode replay: read here, the
//! `decode/json_post` bench went from ~270 to ~212 ns and the peers' job from 852 to 786
//! ms per million posts (medians of 8 alternated runs).
//!
//! Anything else (an escape, a nested value, a `ts` that is not a plain integer, a
//! repeated field, a syntax error) makes [`read`] give up with `None`, and the caller
//! decodes the record with serde_json from the start: what this path accepts it decodes
//! exactly as that path would, and it never rejects anything itself, so every error and
//! its wording still come from one place.

use crate::model::{EpochMs, Post};

/// Reads `text` into `post` (its fields cleared first) if it is a simple post object
/// (see the module docs): `Some((ts, has_text))` as the serde path returns them, or
/// `None` (and `post` in any state) when the serde path must decode it.
pub(super) fn read(text: &str, post: &mut Post) -> Option<(Option<EpochMs>, bool)> {
    super::clear_post(post);
    let mut reader = Reader {
        text,
        bytes: text.as_bytes(),
        at: 0,
    };
    reader.expect(b'{')?;
    let (mut ts, mut has_text, mut seen) = (None, false, 0u8);
    if reader.peek()? == b'}' {
        reader.at += 1;
    } else {
        loop {
            let key = reader.string()?;
            reader.expect(b':')?;
            // A repeated known field is the serde path's error to report.
            match key {
                "ts" => {
                    first_time(&mut seen, 6)?;
                    ts = reader.null_or(Reader::integer)?;
                }
                // Only an absent map here: entries take the serde path.
                "metadata" => {
                    first_time(&mut seen, 7)?;
                    reader.null()?;
                }
                _ => match string_field(post, key) {
                    Some((bit, field)) => {
                        first_time(&mut seen, bit)?;
                        if let Some(value) = reader.null_or(Reader::string)? {
                            field.push_str(value);
                            has_text |= key == "text";
                        }
                    }
                    None => reader.skip_simple_value()?,
                },
            }
            match reader.next_byte()? {
                b',' => continue,
                b'}' => break,
                _ => return None,
            }
        }
    }
    reader.skip_whitespace();
    (reader.at == reader.bytes.len()).then_some((ts, has_text))
}

/// The string field `key` names, with its bit in the fields seen (0 to 5; `ts` and
/// `metadata` take 6 and 7).
fn string_field<'p>(post: &'p mut Post, key: &str) -> Option<(u8, &'p mut String)> {
    Some(match key {
        "id" => (0, &mut post.id),
        "source" => (1, &mut post.source),
        "author" => (2, &mut post.author),
        "text" => (3, &mut post.text),
        "lang" => (4, &mut post.lang),
        "url" => (5, &mut post.url),
        _ => return None,
    })
}

/// Marks field `bit` seen; `None` if it was already.
fn first_time(seen: &mut u8, bit: u8) -> Option<()> {
    let first = *seen & 1 << bit == 0;
    *seen |= 1 << bit;
    first.then_some(())
}

/// A cursor over the record; every method returns `None` where the record leaves the
/// simple form.
struct Reader<'t> {
    text: &'t str,
    bytes: &'t [u8],
    at: usize,
}

impl<'t> Reader<'t> {
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte that is not whitespace, without moving past it.
    fn peek(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.bytes.get(self.at).copied()
    }

    /// The next byte that is not whitespace, moving past it.
    fn next_byte(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next_byte()? == byte).then_some(())
    }

    /// A string without escapes or control characters, as it is in the record.
    fn string(&mut self) -> Option<&'t str> {
        self.expect(b'"')?;
        let start = self.at;
        let end = start + string_end(&self.bytes[start..])?;
        if self.bytes[end] != b'"' {
            return None;
        }
        self.at = end + 1;
        // The quotes are ASCII, so both ends are character boundaries of the text.
        Some(&self.text[start..end])
    }

    /// An integer that fits an i64, written as JSON writes it (no leading zeros, no
    /// fraction or exponent: serde refuses those for `ts`, and the serde path says so),
    /// of at most 18 digits (larger ones are left to serde).
    fn integer(&mut self) -> Option<i64> {
        self.skip_whitespace();
        let negative = self.bytes.get(self.at) == Some(&b'-');
        self.at += usize::from(negative);
        let digits = self.bytes[self.at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let number = &self.bytes[self.at..self.at + digits];
        self.at += digits;
        let leading_zero = digits > 1 && number[0] == b'0';
        // serde_json reads `-0` as a float (to keep its sign), which `ts` refuses.
        let negative_zero = negative && number == b"0";
        let continues = matches!(self.bytes.get(self.at), Some(b'.' | b'e' | b'E'));
        if digits == 0 || digits > 18 || leading_zero || negative_zero || continues {
            return None;
        }
        // At most 18 digits: no overflow.
        let magnitude = number
            .iter()
            .fold(0i64, |n, &d| n * 10 + i64::from(d - b'0'));
        Some(if negative { -magnitude } else { magnitude })
    }

    fn null(&mut self) -> Option<()> {
        self.peek()?;
        self.literal("null")
    }

    /// `null` as `Some(None)`, else what `read` reads, as `Some(Some(value))`.
    fn null_or<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.peek()? == b'n' {
            return self.null().map(|()| None);
        }
        read(self).map(Some)
    }

    /// `word` (the rest of the record is not read once it is not there).
    fn literal(&mut self, word: &str) -> Option<()> {
        let found = self.bytes[self.at..].starts_with(word.as_bytes());
        self.at += word.len();
        found.then_some(())
    }

    /// The value of an unknown field, if it is a string, a number, `null`, `true` or
    /// `false`.
    fn skip_simple_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'n' => self.literal("null"),
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            _ => self.skip_number(),
        }
    }

    /// A number as JSON writes it (`-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?`), as
    /// serde checks an ignored one: its grammar only.
    fn skip_number(&mut self) -> Option<()> {
        let bytes = self.bytes;
        let digits = |at: usize| {
            bytes[at..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count()
        };
        let mut at = self.at + usize::from(bytes[self.at] == b'-');
        let integer = digits(at);
        if integer == 0 || integer > 1 && bytes[at] == b'0' {
            return None;
        }
        at += integer;
        if bytes.get(at) == Some(&b'.') {
            let fraction = digits(at + 1);
            if fraction == 0 {
                return None;
            }
            at += 1 + fraction;
        }
        if let Some(b'e' | b'E') = bytes.get(at) {
            at += 1;
            at += usize::from(matches!(bytes.get(at), Some(b'+' | b'-')));
            let exponent = digits(at);
            if exponent == 0 {
                return None;
            }
            at += exponent;
        }
        self.at = at;
        Some(())
    }
}

/// Where the first quote, backslash or control character of `bytes` is: the end of a
/// string without escapes, or where it leaves the simple form. 16 bytes per step
/// (serde_json's own scan takes 8).
fn string_end(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    #[cfg(target_arch = "x86_64")]
    while let Some(block) = bytes.get(at..at + 16) {
        let found = string_stops(block.try_into().expect("16 bytes"));
        if found != 0 {
            return Some(at + found.trailing_zeros() as usize);
        }
        at += 16;
    }
    let rest = bytes[at..].iter().position(|&b| is_string_stop(b))?;
    Some(at + rest)
}

fn is_string_stop(byte: u8) -> bool {
    byte == b'"' || byte == b'\\' || byte < 0x20
}

/// Bit i set when byte i stops a simple string (see [`string_end`]).
#[cfg(target_arch = "x86_64")]
fn string_stops(bytes: &[u8; 16]) -> u16 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    // SAFETY: SSE2 is part of every x86_64 CPU, and the load reads the 16 bytes of
    // `bytes` (unaligned loads are allowed).
    unsafe {
        let v = _mm_loadu_si128(bytes.as_ptr().cast());
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        // Unsigned: max(b, 0x1f) == 0x1f exactly when b <= 0x1f.
        let low = _mm_set1_epi8(0x1f);
        let control = _mm_cmpeq_epi8(_mm_max_epu8(v, low), low);
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control)) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn simple(text: &str) -> Option<(Option<EpochMs>, bool, Post)> {
        let mut post = Post {
            id: "left over".into(),
            ..Post::default()
        };
        let (ts, has_text) = read(text, &mut post)?;
        Some((ts, has_text, post))
    }

    #[test]
    fn reads_a_flat_post() {
        let (ts, has_text, post) = simple(
            r#" { "id":"p1", "ts": 1700000000000 ,"source":"x","author":"a","text":"hi #there",
                "lang":null,"url":"u","brand":"b7","flag":true,"gone":null,"off":false}  "#,
        )
        .unwrap();
        assert_eq!((ts, has_text), (Some(1_700_000_000_000), true));
        assert_eq!(
            (
                post.id,
                post.source,
                post.author,
                post.text,
                post.lang,
                post.url
            ),
            (
                "p1".into(),
                "x".into(),
                "a".into(),
                "hi #there".into(),
                String::new(),
                "u".into()
            )
        );
        assert_eq!(simple("{}").map(|(ts, t, _)| (ts, t)), Some((None, false)));
        let (_, has_text, post) = simple(r#"{"text":null,"ts":-5,"metadata":null}"#).unwrap();
        assert!(!has_text && post.text.is_empty() && post.id.is_empty());
    }

    /// Whatever it accepts, it decodes as serde does: a mix of the forms it reads.
    #[test]
    fn decodes_as_the_serde_path_does() {
        let values = [
            ("id", r#""p""#),
            ("ts", "1700000000123"),
            ("ts", "-0"),
            ("ts", "0"),
            ("ts", "null"),
            ("text", "\"a b é 😡 \u{7f}\""),
            ("text", r#""""#),
            ("text", "null"),
            ("source", r#""s""#),
            ("author", "null"),
            ("lang", r#""en""#),
            ("url", r#""https://x""#),
            ("metadata", "null"),
            ("brand", r#""b""#),
            ("other", "true"),
            ("other2", "false"),
            ("likes", "12"),
            ("score", "-0.5e+3"),
            ("ratio", "0.25"),
        ];
        let mut rng = crate::rng::SplitMix64(7);
        for _ in 0..2000 {
            let fields = 1 + (rng.next_u64() % 6) as usize;
            let members: Vec<String> = (0..fields)
                .map(|_| {
                    let (key, value) = values[(rng.next_u64() % values.len() as u64) as usize];
                    let space = [" ", "", "\n", "\t "][(rng.next_u64() % 4) as usize];
                    format!(r#"{space}"{key}"{space}:{space}{value}{space}"#)
                })
                .collect();
            let text = format!("{{{}}}", members.join(","));
            let serde = {
                let mut post = Post::default();
                super::super::decode_post_with_serde(&text, &mut post)
                    .ok()
                    .map(|(ts, has_text)| (ts, has_text, post))
            };
            match simple(&text) {
                Some(fast) => assert_eq!(Some(fast), serde, "{text:?}"),
                // Here only a repeated field leaves the fast path, and serde refuses it.
                None => assert!(serde.is_none(), "{text}"),
            }
        }
    }

    /// Posts with bytes changed, cut or repeated at random: whatever is still UTF-8 is
    /// read without panicking, and what is accepted is what serde reads.
    #[test]
    fn damaged_posts_are_read_as_serde_reads_them_or_left_to_it() {
        let post =
            br#"{"ts":1700000040002,"author":"user1","text":"zjx #totl","n":null,"x":-10.5E+2}"#;
        let replacements = b"{}[]\":,\\ \t\n0123456789-.eEnulltruefalse#a\x01\x7f";
        let mut rng = crate::rng::SplitMix64(11);
        let mut pick = |n: usize| (rng.next_u64() % n as u64) as usize;
        let (mut accepted, mut left) = (0, 0);
        for _ in 0..20_000 {
            let mut bytes = post.to_vec();
            for _ in 0..1 + pick(3) {
                let at = pick(bytes.len());
                match pick(3) {
                    0 => bytes[at] = replacements[pick(replacements.len())],
                    1 => bytes.truncate(at),
                    _ => {
                        let copied = bytes[at..].to_vec();
                        bytes.splice(at..at, copied[..pick(copied.len() + 1)].iter().copied());
                    }
                }
                if bytes.is_empty() {
                    break;
                }
            }
            let Ok(text) = std::str::from_utf8(&bytes) else {
                continue;
            };
            let mut serde_post = Post::default();
            let serde = super::super::decode_post_with_serde(text, &mut serde_post)
                .ok()
                .map(|(ts, has_text)| (ts, has_text, serde_post));
            match simple(text) {
                Some(fast) => {
                    accepted += 1;
                    assert_eq!(Some(fast), serde, "{text:?}");
                }
                None => left += 1,
            }
        }
        assert!(
            accepted > 1_000 && left > 1_000,
            "{accepted} read, {left} left"
        );
    }

    #[test]
    fn string_ends_are_found_in_every_position() {
        for len in 0..40 {
            for stop in [b'"', b'\\', b'\n', 0, 0x1f] {
                for at in 0..=len {
                    let mut bytes: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
                    bytes.extend_from_slice("é\x7f".as_bytes());
                    if at < len {
                        bytes[at] = stop;
                    }
                    let expected = bytes.iter().position(|&b| is_string_stop(b));
                    assert_eq!(string_end(&bytes), expected, "{bytes:?}");
                }
            }
        }
    }

    /// What the serde path must decode (or reject) is left to it.
    #[test]
    fn leaves_everything_else_to_serde() {
        for text in [
            r#"{"text":"a\"b","ts":1}"#,
            r#"{"text":"tab	inside","ts":1}"#,
            r#"{"t\u0065xt":"a","ts":1}"#,
            r#"{"text":"a","ts":1.0}"#,
            r#"{"text":"a","ts":1e3}"#,
            r#"{"text":"a","ts":01}"#,
            r#"{"text":"a","ts":-}"#,
            r#"{"text":"a","ts":-0}"#,
            r#"{"text":"a","ts":"1"}"#,
            r#"{"text":"a","ts":9223372036854775807}"#,
            r#"{"text":"a","ts":1,"ts":2}"#,
            r#"{"text":"a","text":"b","ts":1}"#,
            r#"{"text":"a","ts":1,"metadata":{"k":"v"}}"#,
            r#"{"text":"a","ts":1,"metadata":null,"metadata":null}"#,
            r#"{"text":"a","ts":1,"n":05}"#,
            r#"{"text":"a","ts":1,"n":-}"#,
            r#"{"text":"a","ts":1,"n":1.}"#,
            r#"{"text":"a","ts":1,"n":.5}"#,
            r#"{"text":"a","ts":1,"n":1e}"#,
            r#"{"text":"a","ts":1,"n":1e+}"#,
            r#"{"text":"a","ts":1,"n":+1}"#,
            r#"{"text":"a","ts":1,"n":1x}"#,
            r#"{"text":"a","ts":1,"o":{}}"#,
            r#"{"text":"a","ts":1,"l":[]}"#,
            r#"{"text":"a","ts":1,"b":tru}"#,
            r#"{"text":"a","ts":1,}"#,
            r#"{"text":"a","ts":1} x"#,
            r#"{"text":"a" "ts":1}"#,
            r#"{"text":1}"#,
            r#"{"text":"a""#,
            r#"{"text":"a"#,
            r#"["text"]"#,
            "",
            "{",
            "\u{a0}{}",
        ] {
            assert!(simple(text).is_none(), "{text}");
        }
    }
}
