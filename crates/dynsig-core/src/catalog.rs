//! The ecosystem catalog: who the company's actors are (own brands, products, customers,
//! suppliers, partners, competitors, subsidiaries, teams) and which of them a post mentions.
//!
//! [`Catalog`] is the file as written (TOML `[[actors]]`, parsed by the service).
//! [`ActorMatcher::new`] validates it, naming the first bad field
//! (`actors[3].id: duplicate id "acme"`), and compiles it for the hot path: it runs on every
//! post. The matcher also answers the API's lookups (list, get by id, kind of an actor), so
//! a reloaded catalog replaces both at once.
//!
//! ```toml
//! [[actors]]
//! id = "acme"
//! name = "ACME Corp"
//! kind = "own_brand"
//! handles = ["@acme"]
//! keywords = ["acme", "acme rocket"]
//! cashtags = ["$ACME"]
//! hashtags = ["#acme"]
//! languages = []          # empty: posts in any language
//! ```
//!
//! Matching splits a post with the project's [`Tokenizer`] and compiles every keyword and
//! tag with the same tokenizer, so both sides are folded alike: lowercase, sigils kept,
//! punctuation dropped, `ACME's` → `acme`, `d'Acme` → `acme`, URLs skipped. The matcher uses
//! its own tokenizer settings rather than the trend settings: no stopwords and no minimum
//! length, because actor names are often short or common words (`HP`, `3M`, `Bank of
//! America`) that trend counting rightly drops; only the French elided prefixes (`l'`,
//! `d'`, ...) are stripped.
//!
//! Per post: one tokenizer pass, then one hash lookup per token. Patterns are keyed by
//! their first token (the tag itself, sigil included, for handles, cashtags and hashtags;
//! the first word of a keyword); a multi-word keyword then compares its following words
//! with the next tokens. Only whole tokens match: `acmerocket` does not mention `acme`, and
//! `#acme` is a hashtag, not the keyword `acme`. Known approximation: a keyword's words may
//! straddle a sentence break (`ACME. Rocket` matches `acme rocket`), since the tokenizer
//! drops the punctuation between them.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::config::TokenizerConfig;
use crate::model::TermKind;
use crate::stopwords;
use crate::tokenizer::{self, Tokenizer};

/// What an actor is to the company.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    OwnBrand,
    Product,
    Customer,
    Supplier,
    Partner,
    Competitor,
    Subsidiary,
    Team,
}

impl ActorKind {
    /// The serde spelling, used as the value of an alert's `actor_kind` label.
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::OwnBrand => "own_brand",
            ActorKind::Product => "product",
            ActorKind::Customer => "customer",
            ActorKind::Supplier => "supplier",
            ActorKind::Partner => "partner",
            ActorKind::Competitor => "competitor",
            ActorKind::Subsidiary => "subsidiary",
            ActorKind::Team => "team",
        }
    }
}

/// The catalog file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Catalog {
    pub actors: Vec<Actor>,
}

/// One actor, as written in the catalog (and as the API lists it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actor {
    /// Stable identifier: the `actor` label of signals and alerts.
    pub id: String,
    /// Display name.
    pub name: String,
    pub kind: ActorKind,
    /// Social handles, with their `@`.
    #[serde(default)]
    pub handles: Vec<String>,
    /// Words or phrases naming the actor, matched case-insensitively as whole words.
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Ticker symbols, with their `$`.
    #[serde(default)]
    pub cashtags: Vec<String>,
    /// Hashtags, with their `#`.
    #[serde(default)]
    pub hashtags: Vec<String>,
    /// Language codes of the posts the actor is matched in (`en`, or `en-GB` for only that
    /// variant); empty for all. A post of unknown language matches only actors without
    /// a language list: a restriction exists for precision (`orange` is a fruit in most
    /// English posts), which a post of unknown language cannot honour.
    #[serde(default)]
    pub languages: Vec<String>,
}

/// A catalog entry that cannot be used; `field` is its path, e.g. `actors[3].id`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct CatalogError {
    pub field: String,
    pub problem: String,
}

/// The catalog compiled for matching and lookups. Immutable, so it can be shared.
#[derive(Debug, Clone)]
pub struct ActorMatcher {
    actors: Vec<Actor>,
    by_id: HashMap<String, usize>,
    /// First token of a pattern → the patterns starting with it.
    patterns: hashbrown::HashMap<Box<str>, Vec<Pattern>, foldhash::quality::RandomState>,
    tokenizer: Tokenizer,
}

/// A handle, cashtag, hashtag or keyword, minus the first token it is keyed by.
#[derive(Debug, Clone)]
struct Pattern {
    actor: usize,
    following_words: Box<[Box<str>]>,
}

/// Reusable buffers of [`ActorMatcher::find`]: matching is allocation-free once they have
/// grown to the longest post.
#[derive(Debug, Default)]
pub struct MatchScratch {
    tokenizer: tokenizer::Scratch,
    /// The post's tokens, concatenated; token `i` ends at `token_ends[i]`.
    tokens: String,
    token_ends: Vec<usize>,
}

impl MatchScratch {
    fn token(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.token_ends[i - 1] };
        &self.tokens[start..self.token_ends[i]]
    }
}

impl ActorMatcher {
    /// Validates `catalog` and compiles it. The error names the first unusable field.
    pub fn new(catalog: Catalog) -> Result<ActorMatcher, CatalogError> {
        let tokenizer = matching_tokenizer();
        let mut by_id = HashMap::with_capacity(catalog.actors.len());
        let mut patterns = hashbrown::HashMap::default();
        for (index, actor) in catalog.actors.iter().enumerate() {
            let at = |field: &str| format!("actors[{index}].{field}");
            let error = |field: String, problem: String| CatalogError { field, problem };
            if actor.id.trim().is_empty() {
                return Err(error(at("id"), "empty id".into()));
            }
            if by_id.insert(actor.id.clone(), index).is_some() {
                return Err(error(at("id"), format!("duplicate id {:?}", actor.id)));
            }
            if actor.name.trim().is_empty() {
                return Err(error(at("name"), "empty name".into()));
            }
            for (position, language) in actor.languages.iter().enumerate() {
                if language.trim().is_empty() {
                    return Err(error(
                        at(&format!("languages[{position}]")),
                        "empty language code".into(),
                    ));
                }
            }
            let lists = [
                ("handles", Some(TermKind::Mention), &actor.handles),
                ("cashtags", Some(TermKind::Cashtag), &actor.cashtags),
                ("hashtags", Some(TermKind::Hashtag), &actor.hashtags),
                ("keywords", None, &actor.keywords),
            ];
            for (list, tag_kind, values) in lists {
                for (position, value) in values.iter().enumerate() {
                    let tokens = match tag_kind {
                        Some(kind) => tag_token(&tokenizer, kind, value).map(|tag| vec![tag]),
                        None => keyword_words(&tokenizer, value),
                    }
                    .map_err(|problem| error(at(&format!("{list}[{position}]")), problem))?;
                    let mut tokens = tokens.into_iter().map(String::into_boxed_str);
                    let first = tokens.next().expect("a pattern has at least one token");
                    patterns
                        .entry(first)
                        .or_insert_with(Vec::new)
                        .push(Pattern {
                            actor: index,
                            following_words: tokens.collect(),
                        });
                }
            }
        }
        Ok(ActorMatcher {
            actors: catalog.actors,
            by_id,
            patterns,
            tokenizer,
        })
    }

    /// Replaces the contents of `out` with the ids of the distinct actors that `text`
    /// mentions, in the order of their first mention. `lang` is the post's language code
    /// (empty when unknown).
    pub fn find<'m>(
        &'m self,
        text: &str,
        lang: &str,
        scratch: &mut MatchScratch,
        out: &mut Vec<&'m str>,
    ) {
        let mut indexes = Vec::new();
        self.find_indexes(text, lang, scratch, &mut indexes);
        out.clear();
        out.extend(indexes.into_iter().map(|i| self.actors[i].id.as_str()));
    }

    /// [`Self::find`] giving positions in [`Self::actors`] instead of ids (what the engine
    /// counts per post, without allocating).
    pub fn find_indexes(
        &self,
        text: &str,
        lang: &str,
        scratch: &mut MatchScratch,
        out: &mut Vec<usize>,
    ) {
        out.clear();
        scratch.tokens.clear();
        scratch.token_ends.clear();
        let MatchScratch {
            tokenizer: tokenizer_scratch,
            tokens,
            token_ends,
        } = scratch;
        self.tokenizer
            .for_each_term(text, tokenizer_scratch, |_, token| {
                tokens.push_str(token);
                token_ends.push(tokens.len());
            });
        let token_count = scratch.token_ends.len();
        for start in 0..token_count {
            let Some(candidates) = self.patterns.get(scratch.token(start)) else {
                continue;
            };
            for pattern in candidates {
                let rest = start + 1..start + 1 + pattern.following_words.len();
                let complete = rest.end <= token_count
                    && rest
                        .zip(pattern.following_words.iter())
                        .all(|(i, word)| scratch.token(i) == &**word);
                if complete
                    && !out.contains(&pattern.actor)
                    && speaks(&self.actors[pattern.actor], lang)
                {
                    out.push(pattern.actor);
                }
            }
        }
    }

    /// Every actor, in catalog order.
    pub fn actors(&self) -> &[Actor] {
        &self.actors
    }

    pub fn actor(&self, id: &str) -> Option<&Actor> {
        self.by_id.get(id).map(|&index| &self.actors[index])
    }

    pub fn kind_of(&self, id: &str) -> Option<ActorKind> {
        self.actor(id).map(|actor| actor.kind)
    }
}

/// The tokenizer both posts and catalog entries go through (see the module doc).
fn matching_tokenizer() -> Tokenizer {
    let elided_prefixes = stopwords::FRENCH
        .iter()
        .filter(|word| word.ends_with('\''))
        .map(|word| (*word).to_owned())
        .collect();
    Tokenizer::new(&TokenizerConfig {
        stopwords: Vec::new(),
        extra_stopwords: elided_prefixes,
        min_word_chars: 1,
        bigrams: false,
        // The default `words` mode: lowercases and drops punctuation, unlike `whitespace`.
        ..TokenizerConfig::default()
    })
    .expect("no stopword language to look up")
}

fn terms(tokenizer: &Tokenizer, text: &str) -> Vec<(TermKind, String)> {
    let mut terms = Vec::new();
    tokenizer.for_each_term(text, &mut tokenizer::Scratch::default(), |kind, term| {
        terms.push((kind, term.to_owned()))
    });
    terms
}

/// The token of a handle, cashtag or hashtag: it must be exactly one tag of `kind` as the
/// tokenizer reads posts, or it could never match.
fn tag_token(tokenizer: &Tokenizer, kind: TermKind, value: &str) -> Result<String, String> {
    let sigil = match kind {
        TermKind::Mention => '@',
        TermKind::Cashtag => '$',
        _ => '#',
    };
    if !value.trim_start().starts_with(sigil) {
        return Err(format!("{value:?} does not start with '{sigil}'"));
    }
    match terms(tokenizer, value).as_slice() {
        [(term_kind, tag)] if *term_kind == kind => Ok(tag.clone()),
        _ => Err(format!(
            "{value:?} is not a single {} as posts spell it",
            kind.as_str()
        )),
    }
}

/// The words of a keyword, as the tokenizer reads them in posts.
fn keyword_words(tokenizer: &Tokenizer, keyword: &str) -> Result<Vec<String>, String> {
    let terms = terms(tokenizer, keyword);
    if terms.is_empty() {
        return Err(format!("{keyword:?} has no words"));
    }
    if terms.iter().any(|(kind, _)| *kind != TermKind::Word) {
        return Err(format!(
            "{keyword:?} contains a tag: list tags under handles, cashtags or hashtags"
        ));
    }
    Ok(terms.into_iter().map(|(_, word)| word).collect())
}

/// Whether posts in `lang` may mention `actor` (see [`Actor::languages`]).
fn speaks(actor: &Actor, lang: &str) -> bool {
    let primary = lang.split(['-', '_']).next().unwrap_or_default();
    actor.languages.is_empty()
        || (!lang.is_empty()
            && actor.languages.iter().any(|listed| {
                same_language_tag(listed.trim(), lang) || same_language_tag(listed.trim(), primary)
            }))
}

/// Language tags compared as BCP 47 does (case-insensitively), also accepting the POSIX
/// `_` separator (`en_GB`) that some sources send.
fn same_language_tag(a: &str, b: &str) -> bool {
    let fold = |c: u8| {
        if c == b'_' {
            b'-'
        } else {
            c.to_ascii_lowercase()
        }
    };
    a.len() == b.len() && a.bytes().map(fold).eq(b.bytes().map(fold))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(id: &str, kind: ActorKind) -> Actor {
        Actor {
            id: id.into(),
            name: id.to_uppercase(),
            kind,
            handles: Vec::new(),
            keywords: Vec::new(),
            cashtags: Vec::new(),
            hashtags: Vec::new(),
            languages: Vec::new(),
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn acme() -> Actor {
        Actor {
            handles: strings(&["@acme"]),
            keywords: strings(&["acme"]),
            cashtags: strings(&["$ACME"]),
            hashtags: strings(&["#acme"]),
            ..actor("acme", ActorKind::OwnBrand)
        }
    }

    fn rocket() -> Actor {
        Actor {
            keywords: strings(&["Acme Rocket", "rocket x 2"]),
            ..actor("acme-rocket", ActorKind::Product)
        }
    }

    fn matcher(actors: Vec<Actor>) -> ActorMatcher {
        ActorMatcher::new(Catalog { actors }).unwrap()
    }

    fn find(matcher: &ActorMatcher, text: &str, lang: &str) -> Vec<String> {
        let mut out = Vec::new();
        matcher.find(text, lang, &mut MatchScratch::default(), &mut out);
        out.into_iter().map(str::to_owned).collect()
    }

    fn error(actors: Vec<Actor>) -> String {
        ActorMatcher::new(Catalog { actors })
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn parses_the_documented_file_format() {
        let catalog: Catalog = serde_json::from_value(serde_json::json!({
            "actors": [
                {"id": "acme", "name": "ACME Corp", "kind": "own_brand",
                 "handles": ["@acme"], "keywords": ["acme", "acme rocket"],
                 "cashtags": ["$ACME"], "hashtags": ["#acme"], "languages": []},
                {"id": "globex", "name": "Globex", "kind": "competitor"}
            ]
        }))
        .unwrap();
        assert_eq!(catalog.actors[0].kind, ActorKind::OwnBrand);
        assert_eq!(catalog.actors[0].keywords, ["acme", "acme rocket"]);
        assert_eq!(catalog.actors[1], actor_named("globex", "Globex"));
    }

    fn actor_named(id: &str, name: &str) -> Actor {
        Actor {
            name: name.into(),
            ..actor(id, ActorKind::Competitor)
        }
    }

    #[test]
    fn unknown_fields_and_kinds_are_refused() {
        let typo = serde_json::json!({"actors": [
            {"id": "a", "name": "A", "kind": "partner", "keyword": ["a"]}
        ]});
        let err = serde_json::from_value::<Catalog>(typo).unwrap_err();
        assert!(err.to_string().contains("unknown field `keyword`"), "{err}");
        let kind = serde_json::json!({"actors": [{"id": "a", "name": "A", "kind": "rival"}]});
        let err = serde_json::from_value::<Catalog>(kind).unwrap_err();
        assert!(err.to_string().contains("unknown variant `rival`"), "{err}");
    }

    #[test]
    fn kinds_serialize_as_lower_snake_case() {
        for kind in [
            ActorKind::OwnBrand,
            ActorKind::Product,
            ActorKind::Customer,
            ActorKind::Supplier,
            ActorKind::Partner,
            ActorKind::Competitor,
            ActorKind::Subsidiary,
            ActorKind::Team,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }

    #[test]
    fn validation_names_the_field() {
        let cases = [
            (
                vec![acme(), rocket(), actor("x", ActorKind::Team), acme()],
                r#"actors[3].id: duplicate id "acme""#,
            ),
            (vec![actor(" ", ActorKind::Team)], "actors[0].id: empty id"),
            (
                vec![Actor {
                    name: String::new(),
                    ..acme()
                }],
                "actors[0].name: empty name",
            ),
            (
                vec![Actor {
                    handles: strings(&["@acme", "acme"]),
                    ..acme()
                }],
                r#"actors[0].handles[1]: "acme" does not start with '@'"#,
            ),
            (
                vec![Actor {
                    handles: strings(&["@acme corp"]),
                    ..acme()
                }],
                r#"actors[0].handles[0]: "@acme corp" is not a single mention as posts spell it"#,
            ),
            (
                vec![Actor {
                    cashtags: strings(&["ACME"]),
                    ..acme()
                }],
                r#"actors[0].cashtags[0]: "ACME" does not start with '$'"#,
            ),
            (
                vec![Actor {
                    cashtags: strings(&["$5"]),
                    ..acme()
                }],
                r#"actors[0].cashtags[0]: "$5" is not a single cashtag as posts spell it"#,
            ),
            (
                vec![Actor {
                    hashtags: strings(&["acme"]),
                    ..acme()
                }],
                r#"actors[0].hashtags[0]: "acme" does not start with '#'"#,
            ),
            (
                vec![Actor {
                    keywords: strings(&["acme", "  "]),
                    ..acme()
                }],
                r#"actors[0].keywords[1]: "  " has no words"#,
            ),
            (
                vec![Actor {
                    keywords: strings(&["acme #fire"]),
                    ..acme()
                }],
                r#"actors[0].keywords[0]: "acme #fire" contains a tag: list tags under handles, cashtags or hashtags"#,
            ),
            (
                vec![Actor {
                    languages: strings(&["en", ""]),
                    ..acme()
                }],
                "actors[0].languages[1]: empty language code",
            ),
        ];
        for (actors, expected) in cases {
            assert_eq!(error(actors), expected);
        }
    }

    #[test]
    fn matches_keywords_and_tags_case_insensitively_around_punctuation() {
        let m = matcher(vec![acme(), actor_named("globex", "Globex")]);
        for text in [
            "ACME!",
            "(acme)",
            "I love Acme's rockets",
            "l'avion d'Acme",
            "«acme»—now",
            "@ACME fix it",
            "buy $acme.",
            "#Acme",
        ] {
            assert_eq!(find(&m, text, "en"), ["acme"], "{text}");
        }
        assert!(find(&m, "", "en").is_empty());
    }

    #[test]
    fn whole_tokens_only() {
        let m = matcher(vec![acme(), rocket()]);
        for text in [
            "acmerocket",
            "acmes",
            "@acmecorp",
            "#acmefire",
            "$acmex",
            "see https://acme.com/rocket",
        ] {
            assert!(find(&m, text, "en").is_empty(), "{text}");
        }
    }

    #[test]
    fn a_keyword_word_does_not_match_a_tag_of_the_same_name() {
        let m = matcher(vec![Actor {
            keywords: strings(&["rocket"]),
            ..actor("rocket", ActorKind::Product)
        }]);
        assert!(find(&m, "#rocket @rocket $rocket", "en").is_empty());
        assert_eq!(find(&m, "Rocket", "en"), ["rocket"]);
    }

    #[test]
    fn multi_word_keywords_need_all_their_words_in_order() {
        let m = matcher(vec![rocket()]);
        assert_eq!(find(&m, "The ACME rocket, again", ""), ["acme-rocket"]);
        assert_eq!(find(&m, "new rocket-x-2 launch", ""), ["acme-rocket"]);
        assert!(find(&m, "rocket acme", "").is_empty());
        assert!(find(&m, "acme big rocket", "").is_empty());
        assert!(
            find(&m, "acme", "").is_empty(),
            "phrase cut by the end of text"
        );
        assert!(
            find(&m, "acme #launch rocket", "").is_empty(),
            "a tag in between"
        );
        assert_eq!(
            find(&m, "ACME. Rocket", ""),
            ["acme-rocket"],
            "documented approximation: sentence breaks are not seen"
        );
    }

    #[test]
    fn short_and_common_words_still_match() {
        let m = matcher(vec![
            Actor {
                keywords: strings(&["Bank of America"]),
                ..actor("bofa", ActorKind::Customer)
            },
            Actor {
                keywords: strings(&["3M", "HP"]),
                ..actor("3m", ActorKind::Supplier)
            },
        ]);
        assert_eq!(
            find(&m, "hp and bank of america", "en"),
            ["3m", "bofa"],
            "first-mention order"
        );
        assert!(find(&m, "bank america", "en").is_empty());
    }

    #[test]
    fn each_actor_is_reported_once_in_first_mention_order() {
        let globex = Actor {
            keywords: strings(&["globex"]),
            ..actor_named("globex", "Globex")
        };
        let m = matcher(vec![acme(), rocket(), globex]);
        assert_eq!(
            find(&m, "Globex vs @acme: acme rocket beats #globex? ACME!", ""),
            ["globex", "acme", "acme-rocket"]
        );
    }

    #[test]
    fn shared_keywords_mention_every_actor_listing_them() {
        let m = matcher(vec![
            acme(),
            Actor {
                keywords: strings(&["ACME"]),
                ..actor("acme-eu", ActorKind::Subsidiary)
            },
        ]);
        assert_eq!(find(&m, "acme", ""), ["acme", "acme-eu"]);
    }

    #[test]
    fn language_lists_restrict_matching() {
        let m = matcher(vec![
            Actor {
                keywords: strings(&["orange"]),
                languages: strings(&["fr", "en-GB"]),
                ..actor("orange", ActorKind::Partner)
            },
            acme(),
        ]);
        assert_eq!(find(&m, "orange acme", "fr"), ["orange", "acme"]);
        assert_eq!(find(&m, "orange acme", "FR-ca"), ["orange", "acme"]);
        assert_eq!(find(&m, "orange acme", "en_GB"), ["orange", "acme"]);
        assert_eq!(find(&m, "orange acme", "en-gb"), ["orange", "acme"]);
        assert_eq!(find(&m, "orange acme", "en"), ["acme"]);
        assert_eq!(
            find(&m, "orange acme", ""),
            ["acme"],
            "unknown language: restricted actors do not match"
        );
    }

    #[test]
    fn scratch_and_output_are_reused_between_posts() {
        let m = matcher(vec![acme(), rocket()]);
        let mut scratch = MatchScratch::default();
        let mut out = vec!["stale"];
        m.find("acme rocket", "", &mut scratch, &mut out);
        assert_eq!(out, ["acme", "acme-rocket"]);
        m.find("rocket", "", &mut scratch, &mut out);
        assert!(out.is_empty(), "no leftover tokens from the previous post");
    }

    #[test]
    fn lookups() {
        let m = matcher(vec![acme(), rocket()]);
        assert_eq!(
            m.actors().iter().map(|a| &a.id[..]).collect::<Vec<_>>(),
            ["acme", "acme-rocket"]
        );
        assert_eq!(m.actor("acme-rocket"), Some(&rocket()));
        assert_eq!(m.kind_of("acme"), Some(ActorKind::OwnBrand));
        assert_eq!(m.kind_of("nobody"), None);
        assert!(m.actor("ACME").is_none(), "ids are exact");
        let empty = matcher(Vec::new());
        assert!(empty.actors().is_empty() && find(&empty, "acme", "").is_empty());
    }
}
