//! Any text through both tokenizer modes: terms are never empty, tags keep their sigil,
//! and the engine's term keys round-trip.
#![no_main]

use dynsig_core::config::{TokenizerConfig, TokenizerMode};
use dynsig_core::model::TermKind;
use dynsig_core::term_key;
use dynsig_core::tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// Built once: building the stopword sets per input would be most of the run.
fn tokenizers() -> &'static [Tokenizer; 2] {
    static TOKENIZERS: OnceLock<[Tokenizer; 2]> = OnceLock::new();
    TOKENIZERS.get_or_init(|| {
        [TokenizerMode::Words, TokenizerMode::Whitespace].map(|mode| {
            Tokenizer::new(&TokenizerConfig {
                mode,
                ..TokenizerConfig::default()
            })
            .expect("the default config is valid")
        })
    })
}

fuzz_target!(|text: &str| {
    for tokenizer in tokenizers() {
        let mut terms = Vec::new();
        tokenizer.tokenize(text, &mut terms);
        for term in terms {
            assert!(!term.text.is_empty(), "{text:?}");
            let sigil = match term.kind {
                TermKind::Hashtag => Some('#'),
                TermKind::Cashtag => Some('$'),
                TermKind::Mention => Some('@'),
                _ => None,
            };
            if let Some(sigil) = sigil {
                assert!(term.text.starts_with(sigil), "{term:?} from {text:?}");
            }
            let key = term_key::key(term.kind, &term.text);
            assert_eq!(
                term_key::split_key(&key),
                Some((term.kind, term.text.as_str()))
            );
        }
    }
});
