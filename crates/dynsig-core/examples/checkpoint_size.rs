//! How large the engine's checkpoint is for a busy feed: the demo feed (`dynsig gen`'s
//! planted bursts and incidents over a Zipf vocabulary) at POSTS_PER_SEC for 20 minutes
//! of event time through `Engine::ingest`, then the encoded state while windows are open
//! and after they are all closed, with the time to copy it (`Engine::snapshot_state`) and
//! to encode the copy.
//!
//! `cargo run --release -p dynsig-core --example checkpoint_size [POSTS_PER_SEC]`

use std::time::Instant;

use dynsig_core::config::EngineConfig;
use dynsig_core::engine::Engine;
use dynsig_core::synth::{Synth, SynthConfig};

/// The encoded size in MB, and how long copying the state and encoding it took, in ms.
fn encoded_mb(engine: &Engine) -> (f64, f64, f64) {
    let started = Instant::now();
    let snapshot = engine.snapshot_state();
    let copied = started.elapsed();
    let mut state = Vec::new();
    snapshot.write_into(&mut state).expect("encoding to memory");
    let encoded = started.elapsed() - copied;
    (
        state.len() as f64 / 1e6,
        copied.as_secs_f64() * 1e3,
        encoded.as_secs_f64() * 1e3,
    )
}

fn main() {
    let posts_per_sec: f64 = std::env::args().nth(1).map_or(4166.0, |rate| {
        rate.parse().expect("POSTS_PER_SEC is a number")
    });
    let mut feed = SynthConfig::demo(1_767_225_600_000, 20 * 60_000);
    feed.posts_per_sec = posts_per_sec;
    feed.events_per_sec = 0.0;
    let mut engine = Engine::new(EngineConfig::default()).expect("the default config is valid");
    let mut inputs = 0_u64;
    for input in Synth::new(&feed).expect("the demo feed is valid") {
        let _ = engine.ingest(&input, None);
        inputs += 1;
        if inputs.is_multiple_of(10_000) {
            engine.poll_closed();
        }
    }
    let (open, open_copy, open_encode) = encoded_mb(&engine);
    engine.finish();
    let (closed, closed_copy, closed_encode) = encoded_mb(&engine);
    println!(
        "{inputs} inputs: state {open:.1} MB with its last windows open (copy {open_copy:.0} ms, \
         encode {open_encode:.0} ms), {closed:.1} MB once closed (copy {closed_copy:.0} ms, \
         encode {closed_encode:.0} ms)"
    );
}
