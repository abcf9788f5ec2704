//! Built-in stopword lists (English, French) and the set the tokenizer filters with.
//!
//! Stopwords are function words that occur in nearly every post; counting them would only
//! crowd the trend tables. Entries are lowercase and use the ASCII apostrophe: the
//! tokenizer folds the typographic apostrophe (’) to `'` before looking words up.
//! French elided forms (`l'`, `qu'`, ...) are listed with their apostrophe so that the
//! tokenizer can strip them as prefixes (`l'avion` → `avion`).

use std::collections::HashSet;

/// A stopword language that has no built-in list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown stopword language {0:?} (known: en, fr)")]
pub struct UnknownLanguage(pub String);

/// English function words, including the contractions tweets are full of, plus a few
/// social-media fillers (`rt`, `amp` from an escaped `&amp;`, `via`).
#[rustfmt::skip]
pub const ENGLISH: &[&str] = &[
    "a", "about", "above", "across", "after", "again", "against", "all", "almost", "along",
    "also", "am", "among", "amp", "an", "and", "any", "are", "aren't", "around", "as", "at",
    "be", "because", "been", "before", "being", "below", "between", "both", "but", "by", "can",
    "can't", "cannot", "could", "couldn't", "did", "didn't", "do", "does", "doesn't", "doing",
    "don't", "down", "during", "each", "either", "else", "etc", "even", "ever", "every", "few",
    "for", "from", "further", "get", "gets", "got", "had", "hadn't", "has", "hasn't", "have",
    "haven't", "having", "he", "he'd", "he'll", "he's", "her", "here", "here's", "hers",
    "herself", "him", "himself", "his", "how", "how's", "however", "i", "i'd", "i'll", "i'm",
    "i've", "if", "in", "into", "is", "isn't", "it", "it'll", "it's", "its", "itself", "just",
    "let's", "many", "may", "me", "might", "more", "most", "much", "must", "mustn't", "my",
    "myself", "neither", "no", "nor", "not", "now", "of", "off", "oh", "ok", "on", "once",
    "only", "or", "other", "others", "ought", "our", "ours", "ourselves", "out", "over", "own",
    "per", "rather", "really", "rt", "same", "shall", "shan't", "she", "she'd", "she'll",
    "she's", "should", "shouldn't", "since", "so", "some", "still", "such", "than", "that",
    "that's", "the", "their", "theirs", "them", "themselves", "then", "there", "there's",
    "these", "they", "they'd", "they'll", "they're", "they've", "this", "those", "though",
    "through", "thus", "to", "too", "toward", "towards", "under", "until", "up", "upon", "us",
    "very", "via", "was", "wasn't", "we", "we'd", "we'll", "we're", "we've", "well", "were",
    "weren't", "what", "what's", "when", "when's", "where", "where's", "whether", "which",
    "while", "who", "who's", "whom", "whose", "why", "why's", "will", "with", "within",
    "without", "won't", "would", "wouldn't", "yes", "yet", "you", "you'd", "you'll", "you're",
    "you've", "your", "yours", "yourself", "yourselves",
];

/// French function words: articles, pronouns, prepositions, conjunctions, the conjugated
/// forms of `être` and `avoir`, and the elided forms (`l'`, `d'`, `qu'`, `jusqu'`, ...).
#[rustfmt::skip]
pub const FRENCH: &[&str] = &[
    "a", "à", "afin", "ai", "aie", "aient", "aies", "ainsi", "ait", "alors", "as", "au",
    "aucun", "aucune", "aura", "aurai", "auraient", "aurais", "aurait", "auras", "aurez",
    "auriez", "aurions", "aurons", "auront", "aussi", "autre", "autres", "aux", "avaient",
    "avais", "avait", "avant", "avec", "avez", "aviez", "avions", "avoir", "avons", "ayant",
    "ayez", "ayons", "bien", "c", "c'", "ça", "car", "ce", "ceci", "cela", "celle", "celles",
    "celui", "cependant", "ces", "cet", "cette", "ceux", "chez", "comme", "comment", "d", "d'",
    "dans", "de", "depuis", "des", "déjà", "donc", "dont", "du", "elle", "elles", "en",
    "encore", "entre", "es", "est", "et", "étaient", "étais", "était", "étant", "été", "êtes",
    "étiez", "étions", "être", "eu", "eue", "eues", "eurent", "eus", "eut", "eux", "fait",
    "furent", "fut", "ici", "il", "ils", "j", "j'", "jamais", "je", "jusqu'", "l", "l'", "la",
    "là", "le", "les", "leur", "leurs", "lors", "lorsqu'", "lui", "m", "m'", "ma", "mais", "me",
    "même", "mêmes", "mes", "moi", "moins", "mon", "n", "n'", "ne", "ni", "non", "nos", "notre",
    "nous", "on", "ont", "ou", "où", "oui", "par", "parce", "pas", "pendant", "peu", "plus",
    "pour", "pourquoi", "puis", "puisqu'", "qu", "qu'", "quand", "que", "quel", "quelle",
    "quelles", "quels", "qui", "quoi", "quoiqu'", "s", "s'", "sa", "sans", "se", "sera",
    "serai", "seraient", "serais", "serait", "seras", "serez", "seriez", "serions", "serons",
    "seront", "ses", "si", "soi", "soient", "sois", "soit", "sommes", "son", "sont", "sous",
    "soyez", "soyons", "suis", "sur", "t", "t'", "ta", "tant", "te", "tes", "toi", "ton",
    "tous", "tout", "toute", "toutes", "très", "tu", "un", "une", "vers", "voici", "voilà",
    "vos", "votre", "vous", "y",
];

/// The built-in list for a language code (`en`, `fr`; case-insensitive).
pub fn builtin(lang: &str) -> Option<&'static [&'static str]> {
    match lang.trim().to_ascii_lowercase().as_str() {
        "en" => Some(ENGLISH),
        "fr" => Some(FRENCH),
        _ => None,
    }
}

/// Folds a word the way the tokenizer folds text: lowercase, typographic apostrophe → `'`.
pub fn normalize(word: &str) -> String {
    word.trim()
        .chars()
        .flat_map(char::to_lowercase)
        .map(|c| if c == '’' { '\'' } else { c })
        .collect()
}

/// A set of stopwords: every word of every post is looked up in it, and most are not
/// stopwords, so a 2,048-bit filter stands in front of the hash set. A word's bit is taken
/// from its length and its first, second and last bytes (no hashing of the whole word);
/// a clear bit means "not a stopword" at once. The English list sets 10% of the bits (18%
/// with French), so about that share of other words go on to the set. The set hashes
/// with foldhash, not SipHash (on short keys SipHash cost ~4% of the whole pipeline;
/// lookups cannot degrade the set, whose contents come from the config).
#[derive(Debug, Clone, Default)]
pub struct StopwordSet {
    words: HashSet<String, foldhash::quality::RandomState>,
    /// Boxed: a tokenizer (this set included) is part of other values, e.g. the catalog's
    /// matcher, which is moved around whole.
    filter: Box<[u64; FILTER_BITS / 64]>,
}

const FILTER_BITS: usize = 2048;

impl StopwordSet {
    pub fn contains(&self, word: &str) -> bool {
        self.may_contain(word) && self.words.contains(word)
    }

    /// The filter's answer: false means `word` is surely not in the set.
    fn may_contain(&self, word: &str) -> bool {
        let bit = filter_bit(word);
        self.filter[bit / 64] & (1 << (bit % 64)) != 0
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    fn insert(&mut self, word: String) {
        let bit = filter_bit(&word);
        self.filter[bit / 64] |= 1 << (bit % 64);
        self.words.insert(word);
    }
}

/// A word's bit in the filter of [`StopwordSet`].
fn filter_bit(word: &str) -> usize {
    let bytes = word.as_bytes();
    let byte = |i: Option<&u8>| u64::from(i.copied().unwrap_or(0));
    let sketch = (bytes.len() as u64)
        | byte(bytes.first()) << 16
        | byte(bytes.get(1)) << 24
        | byte(bytes.last()) << 32;
    // Fibonacci hashing: the top bits of the product mix all of the sketch.
    (sketch.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - FILTER_BITS.trailing_zeros())) as usize
}

/// The union of the built-in lists of `langs` and the `extra` words (normalized).
/// Fails on the first language without a built-in list.
pub fn stopword_set(langs: &[String], extra: &[String]) -> Result<StopwordSet, UnknownLanguage> {
    let mut set = StopwordSet::default();
    for lang in langs {
        let words = builtin(lang).ok_or_else(|| UnknownLanguage(lang.clone()))?;
        for word in words.iter() {
            set.insert((*word).to_owned());
        }
    }
    for word in extra.iter().map(|w| normalize(w)).filter(|w| !w.is_empty()) {
        set.insert(word);
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn lists_are_normalized_unique_and_sized() {
        for list in [ENGLISH, FRENCH] {
            assert!(
                (150..=260).contains(&list.len()),
                "list has {} words",
                list.len()
            );
            for w in list {
                assert_eq!(*w, normalize(w), "{w:?} is not normalized");
            }
            let unique: HashSet<_> = list.iter().collect();
            assert_eq!(unique.len(), list.len(), "duplicate entries");
        }
        for elided in ["l'", "d'", "qu'", "j'", "n'", "s'", "c'", "jusqu'"] {
            assert!(FRENCH.contains(&elided), "{elided} missing");
        }
    }

    #[test]
    fn set_combines_languages_and_extras() {
        let set = stopword_set(&strings(&["en", "FR"]), &strings(&["  Acme ", "L’X", ""])).unwrap();
        assert!(set.contains("the"));
        assert!(set.contains("les"));
        assert!(set.contains("acme"));
        assert!(set.contains("l'x"));
        assert!(!set.contains(""));
        assert_eq!(stopword_set(&[], &[]).unwrap().len(), 0);
    }

    #[test]
    fn the_filter_passes_every_stopword_and_stops_most_other_words() {
        let set = stopword_set(&strings(&["en"]), &[]).unwrap();
        for word in ENGLISH {
            assert!(set.contains(word), "{word}");
        }
        // Words of the French list that English does not have: each is refused, and most
        // without reaching the hash set.
        let others: Vec<&str> = FRENCH
            .iter()
            .filter(|w| !ENGLISH.contains(w))
            .copied()
            .collect();
        let passed = others.iter().filter(|w| set.may_contain(w)).count();
        assert!(others.iter().all(|w| !set.contains(w)));
        assert!(
            passed * 4 < others.len(),
            "{passed} of {} passed the filter",
            others.len()
        );
    }

    #[test]
    fn unknown_language_is_named() {
        let err = stopword_set(&strings(&["en", "de"]), &[]).unwrap_err();
        assert_eq!(err, UnknownLanguage("de".into()));
        assert!(err.to_string().contains("\"de\""));
    }
}
