//! One string per term: its kind as a leading tag character, then its text.
//!
//! The per-window counters and the baselines are keyed by term (kind and text). Keying
//! them by a single tagged string instead of a `(TermKind, String)` pair lets every map
//! be looked up with a `&str` built in a reused buffer, so counting a term that is
//! already known allocates nothing. The tags are control characters, which no token can
//! start with once tagged: decoding takes the first character as the kind and the rest,
//! whatever it is, as the text.

use crate::model::TermKind;

fn tag(kind: TermKind) -> char {
    match kind {
        TermKind::Word => '\u{1}',
        TermKind::Hashtag => '\u{2}',
        TermKind::Cashtag => '\u{3}',
        TermKind::Mention => '\u{4}',
        TermKind::Actor => '\u{5}',
        TermKind::Bigram => '\u{6}',
    }
}

fn kind_of(tag: u8) -> Option<TermKind> {
    Some(match tag {
        1 => TermKind::Word,
        2 => TermKind::Hashtag,
        3 => TermKind::Cashtag,
        4 => TermKind::Mention,
        5 => TermKind::Actor,
        6 => TermKind::Bigram,
        _ => return None,
    })
}

/// Appends the key of `(kind, text)` to `out`.
pub fn push_key(out: &mut String, kind: TermKind, text: &str) {
    out.push(tag(kind));
    out.push_str(text);
}

/// The key of `(kind, text)` as a new string.
pub fn key(kind: TermKind, text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 1);
    push_key(&mut out, kind, text);
    out
}

/// The kind and text of a key made by [`push_key`]; `None` for any other string.
pub fn split_key(key: &str) -> Option<(TermKind, &str)> {
    // Tags are ASCII, so byte 0 is a whole character when it is one.
    let kind = kind_of(*key.as_bytes().first()?)?;
    Some((kind, &key[1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_keep_kinds_apart() {
        for kind in TermKind::ALL {
            for text in ["fire", "#fire", "", "battery fire", "\u{1}odd"] {
                assert_eq!(split_key(&key(kind, text)), Some((kind, text)));
            }
        }
        assert_ne!(key(TermKind::Word, "fire"), key(TermKind::Actor, "fire"));
        assert_eq!(split_key("fire"), None);
        assert_eq!(split_key(""), None);
    }
}
