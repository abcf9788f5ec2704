//! One string per term: its kind as a leading tag character, then its text.
//!
//! The per-window counters and the baselines are keyed by term (kind and text). Keying
//! them by a single tagged string instead of a `(TermKind, String)` pair lets every map
//! be looked up with a `&str` built in a reused buffer, so counting a term that is
//! already known allocates nothing. The tags are control characters, which no token can
//! start with once tagged: decoding takes the first character as the kind and the rest,
//! whatever it is, as the text.

use crate::model::TermKind;

const TAGS: [(char, TermKind); 6] = [
    ('\u{1}', TermKind::Word),
    ('\u{2}', TermKind::Hashtag),
    ('\u{3}', TermKind::Cashtag),
    ('\u{4}', TermKind::Mention),
    ('\u{5}', TermKind::Actor),
    ('\u{6}', TermKind::Bigram),
];

fn tag(kind: TermKind) -> char {
    TAGS.iter()
        .find(|(_, k)| *k == kind)
        .map(|(tag, _)| *tag)
        .expect("every kind has a tag")
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
    let first = key.chars().next()?;
    let (_, kind) = TAGS.iter().find(|(tag, _)| *tag == first)?;
    Some((*kind, &key[first.len_utf8()..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_keep_kinds_apart() {
        let kinds = [
            TermKind::Word,
            TermKind::Hashtag,
            TermKind::Cashtag,
            TermKind::Mention,
            TermKind::Actor,
            TermKind::Bigram,
        ];
        for kind in kinds {
            for text in ["fire", "#fire", "", "battery fire", "\u{1}odd"] {
                assert_eq!(split_key(&key(kind, text)), Some((kind, text)));
            }
        }
        assert_ne!(key(TermKind::Word, "fire"), key(TermKind::Actor, "fire"));
        assert_eq!(split_key("fire"), None);
        assert_eq!(split_key(""), None);
    }
}
