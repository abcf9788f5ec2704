//! Any bytes as a protobuf post or event: decoding returns a record or a rejection with a
//! reason, never panics, and what it accepts respects the limits.
#![no_main]

use dynsig_core::decode::{decode, Format, InputKind, Limits};
use dynsig_core::model::Input;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    for kind in [InputKind::Post, InputKind::Event] {
        if let Ok(Input::Post(post)) = decode(kind, Format::Protobuf, data, &limits) {
            assert!(post.text.len() <= limits.max_text_bytes);
        }
    }
});
