//! An engine restored from a checkpoint continues exactly where the saved one stood: the
//! same signals as an engine that never stopped, whatever the point of the save (windows
//! open, alerts firing, a hopping view). And a checkpoint never restores into an engine
//! of another config.

use dynsig_core::catalog::{ActorMatcher, Catalog};
use dynsig_core::config::EngineConfig;
use dynsig_core::engine::{Engine, RestoreError};
use dynsig_core::model::{EpochMs, Input, Origin, Signal};
use dynsig_core::synth::{Synth, SynthConfig};
use serde_json::json;

const BASE: EpochMs = 1_767_268_800_000; // 2026-01-01 12:00:00 UTC
const DURATION: i64 = 4 * 60_000;

fn config(window_ms: i64) -> EngineConfig {
    serde_json::from_value(json!({
        "window": {"size_ms": window_ms, "allowed_lateness_ms": 2000, "idle_timeout_ms": 0,
                   "extra": [{"size_ms": 60_000, "hop_ms": 20_000}]},
        "routing": {"preset": "collegial", "teams": [
            {"name": "marketing", "actor_kinds": ["own_brand"]}]}
    }))
    .unwrap()
}

fn engine(config: EngineConfig) -> Engine {
    let catalog: Catalog = serde_json::from_value(json!({"actors": [
        {"id": "acme", "name": "ACME Corp", "kind": "own_brand",
         "handles": ["@acmesupport"], "hashtags": ["#acmefire"], "keywords": ["acme"]}
    ]}))
    .unwrap();
    let mut engine = Engine::new(config).unwrap();
    engine.set_catalog(ActorMatcher::new(catalog).unwrap());
    engine
}

fn inputs() -> Vec<Input> {
    Synth::new(&SynthConfig::demo(BASE, DURATION))
        .unwrap()
        .collect()
}

/// Feeds `inputs` (numbered as offsets of one partition), polling every 50.
fn feed(engine: &mut Engine, inputs: &[(usize, &Input)], signals: &mut Vec<Signal>) {
    for &(offset, input) in inputs {
        let origin = Origin {
            partition: 0,
            offset: offset as i64,
        };
        let _ = engine.ingest(input, Some(origin));
        if offset % 50 == 0 {
            signals.extend(engine.poll_closed());
        }
    }
}

#[test]
fn a_restored_engine_continues_like_one_that_never_stopped() {
    let inputs = inputs();
    let numbered: Vec<(usize, &Input)> = inputs.iter().enumerate().collect();
    let mut uninterrupted = engine(config(10_000));
    let mut expected = Vec::new();
    feed(&mut uninterrupted, &numbered, &mut expected);
    expected.extend(uninterrupted.finish());
    assert!(
        expected.iter().any(|s| matches!(s, Signal::Alert(_))),
        "the feed must fire alerts, or the test would not cover the alert state"
    );

    for cut in [numbered.len() / 3, numbered.len() * 3 / 4] {
        let mut first = engine(config(10_000));
        let mut signals = Vec::new();
        feed(&mut first, &numbered[..cut], &mut signals);
        let mut saved = Vec::new();
        first.save_state_into(&mut saved).unwrap();
        drop(first);

        let mut second = engine(config(10_000));
        second.restore_state(&saved).unwrap();
        feed(&mut second, &numbered[cut..], &mut signals);
        signals.extend(second.finish());
        assert_eq!(signals.len(), expected.len(), "cut at input {cut}");
        for (i, (got, want)) in signals.iter().zip(&expected).enumerate() {
            assert_eq!(got, want, "signal {i}, cut at input {cut}");
        }
    }
}

/// The service encodes a snapshot on another thread while the engine goes on: the
/// snapshot must encode the state as it was when taken, byte for byte.
#[test]
fn a_snapshot_encodes_the_state_at_the_time_it_was_taken() {
    let inputs = inputs();
    let numbered: Vec<(usize, &Input)> = inputs.iter().enumerate().collect();
    let cut = numbered.len() / 2;
    let mut engine = engine(config(10_000));
    feed(&mut engine, &numbered[..cut], &mut Vec::new());
    let snapshot = engine.snapshot_state();
    let mut saved_then = Vec::new();
    engine.save_state_into(&mut saved_then).unwrap();

    feed(&mut engine, &numbered[cut..], &mut Vec::new());
    let mut saved_now = Vec::new();
    engine.save_state_into(&mut saved_now).unwrap();
    assert_ne!(
        saved_now, saved_then,
        "the engine moved on after the snapshot"
    );
    let mut encoded = Vec::new();
    snapshot.write_into(&mut encoded).unwrap();
    assert_eq!(encoded, saved_then);
}

#[test]
fn a_checkpoint_of_another_config_is_refused_and_changes_nothing() {
    let inputs = inputs();
    let numbered: Vec<(usize, &Input)> = inputs.iter().enumerate().collect();
    let mut saved_from = engine(config(10_000));
    feed(&mut saved_from, &numbered[..1000], &mut Vec::new());
    let mut saved = Vec::new();
    saved_from.save_state_into(&mut saved).unwrap();

    let mut other = engine(config(5_000));
    assert!(matches!(
        other.restore_state(&saved),
        Err(RestoreError::ConfigChanged)
    ));
    assert_eq!(other.open_windows(), 0);
    assert!(matches!(
        other.restore_state(&saved[..saved.len() / 2]),
        Err(RestoreError::Decode(_))
    ));
}
