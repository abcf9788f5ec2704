//! Cost of one point through the per-series anomaly detector (`SeriesDetector::observe`),
//! on a warmed-up series with a daily rhythm, noise and the odd spike.
//!
//! `cargo bench -p dynsig-core --bench anomaly`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use dynsig_core::anomaly::{DetectorParams, SeriesDetector};
use dynsig_core::config::AnomalyConfig;

const STEP_MS: i64 = 300_000;
const POINTS: usize = 10_000;

/// A day-shaped signal with deterministic noise (xorshift) and a spike every 997 points.
fn series(start: usize, n: usize) -> Vec<(i64, f64)> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ start as u64;
    (start..start + n)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
            let phase = (i % 288) as f64 / 288.0 * std::f64::consts::TAU;
            let spike = if i % 997 == 0 { 50.0 } else { 0.0 };
            (
                i as i64 * STEP_MS,
                100.0 + 30.0 * phase.sin() + 10.0 * noise + spike,
            )
        })
        .collect()
}

fn observe(c: &mut Criterion) {
    let params = DetectorParams::from(&AnomalyConfig::default());
    let mut warm = SeriesDetector::default();
    for (ts, v) in series(0, 20_000) {
        warm.observe(&params, ts, v);
    }
    let points = series(20_000, POINTS);
    let mut group = c.benchmark_group("anomaly");
    group.throughput(Throughput::Elements(POINTS as u64));
    group.bench_function("series_detector_observe", |b| {
        b.iter_batched_ref(
            || warm.clone(),
            |detector| {
                for &(ts, v) in &points {
                    black_box(detector.observe(&params, ts, v));
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, observe);
criterion_main!(benches);
