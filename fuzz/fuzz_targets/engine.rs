//! Any bytes, split into records, decoded and fed to the engine with a catalog: whatever
//! is accepted is counted without panicking, windows close, and signals come out.
#![no_main]

use dynsig_core::catalog::{ActorMatcher, Catalog};
use dynsig_core::config::EngineConfig;
use dynsig_core::decode::{decode, Format, InputKind, Limits};
use dynsig_core::engine::Engine;
use libfuzzer_sys::fuzz_target;

fn catalog() -> ActorMatcher {
    let catalog: Catalog = serde_json::from_str(
        r#"{"actors": [
            {"id": "acme", "name": "ACME", "kind": "own_brand",
             "handles": ["@acme"], "keywords": ["acme", "acme rocket"]},
            {"id": "globex", "name": "Globex", "kind": "competitor", "cashtags": ["$GLBX"]}
        ]}"#,
    )
    .expect("valid catalog");
    ActorMatcher::new(catalog).expect("valid catalog")
}

fuzz_target!(|data: &[u8]| {
    let mut engine = Engine::new(EngineConfig::default()).expect("the default config is valid");
    engine.set_catalog(catalog());
    let limits = Limits::default();
    // Records are separated by newlines; the first byte of each picks kind and format.
    for record in data.split(|&b| b == b'\n') {
        let Some((&selector, bytes)) = record.split_first() else {
            continue;
        };
        let kind = if selector & 1 == 0 {
            InputKind::Post
        } else {
            InputKind::Event
        };
        let format = if selector & 2 == 0 {
            Format::Json
        } else {
            Format::Protobuf
        };
        if let Ok(input) = decode(kind, format, bytes, &limits) {
            let _ = engine.ingest(&input, None);
            let _ = engine.poll_closed();
        }
    }
    let _ = engine.finish();
    assert_eq!(engine.open_windows(), 0);
});
