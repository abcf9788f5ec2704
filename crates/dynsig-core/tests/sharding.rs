//! Engines that share the keys (shards, see `dynsig_core::shard`), each fed every input,
//! publish together what one engine over all keys publishes: the merged trend snapshots
//! equal its snapshots, and their anomalies, alerts and co-mention graphs are its own.

use std::collections::BTreeMap;

use dynsig_core::catalog::{ActorMatcher, Catalog};
use dynsig_core::config::EngineConfig;
use dynsig_core::engine::{Engine, RestoreError};
use dynsig_core::model::{Alert, Anomaly, EpochMs, Input, Origin, Signal, TrendSnapshot};
use dynsig_core::shard::Shard;
use dynsig_core::synth::{Synth, SynthConfig};
use dynsig_core::trend_merge::{Merged, TrendMerge};
use serde_json::json;

const BASE: EpochMs = 1_767_268_800_000; // 2026-01-01 12:00:00 UTC
const DURATION: i64 = 6 * 60_000;

fn config() -> EngineConfig {
    serde_json::from_value(json!({
        "window": {"size_ms": 10_000, "allowed_lateness_ms": 2000, "idle_timeout_ms": 0,
                   "extra": [{"size_ms": 60_000, "hop_ms": 20_000}]},
        "routing": {"preset": "collegial", "teams": [
            {"name": "marketing", "actor_kinds": ["own_brand"]}]}
    }))
    .unwrap()
}

fn engine(shard: Shard) -> Engine {
    let catalog: Catalog = serde_json::from_value(json!({"actors": [
        {"id": "acme", "name": "ACME Corp", "kind": "own_brand",
         "handles": ["@acmesupport"], "hashtags": ["#acmefire"], "keywords": ["acme"]},
        {"id": "globex", "name": "Globex", "kind": "competitor", "keywords": ["globex"]}
    ]}))
    .unwrap();
    let mut engine = Engine::new(config()).unwrap();
    engine.set_catalog(ActorMatcher::new(catalog).unwrap());
    engine.set_shard(shard);
    engine
}

/// Everything `engine` publishes for `inputs` (two partitions, polled every 50 inputs),
/// and whether each input was refused.
fn run(engine: &mut Engine, inputs: &[Input]) -> (Vec<Signal>, Vec<bool>) {
    let mut signals = Vec::new();
    let mut refused = Vec::new();
    for (offset, input) in inputs.iter().enumerate() {
        let origin = Origin {
            partition: (offset % 2) as u32,
            offset: offset as i64,
        };
        refused.push(engine.ingest(input, Some(origin)).is_err());
        if offset % 50 == 0 {
            signals.extend(engine.poll_closed());
        }
    }
    signals.extend(engine.finish());
    (signals, refused)
}

#[derive(Default, Debug, PartialEq)]
struct Published {
    trends: Vec<TrendSnapshot>,
    anomalies: Vec<String>,
    alerts: Vec<String>,
    ecosystem: Vec<String>,
}

impl Published {
    fn add(&mut self, signal: Signal) {
        match signal {
            Signal::Trend(snapshot) => self.trends.push(snapshot),
            Signal::Anomaly(anomaly) => self.anomalies.push(anomaly_line(&anomaly)),
            Signal::Alert(alert) => self.alerts.push(alert_line(&alert)),
            Signal::Ecosystem(graph) => self.ecosystem.push(serde_json::to_string(&graph).unwrap()),
            Signal::Notification(_) | Signal::Digest(_) => {}
        }
    }

    /// Order within a kind depends on which shard published first.
    fn sorted(mut self) -> Self {
        self.trends
            .sort_by(|a, b| (&a.window, a.window_start).cmp(&(&b.window, b.window_start)));
        self.anomalies.sort();
        self.alerts.sort();
        self
    }
}

fn anomaly_line(a: &Anomaly) -> String {
    serde_json::to_string(a).unwrap()
}

/// An alert as published, but for one clause: an actor's anomaly alert quotes the top
/// terms about the actor from its window's ranking, and a shard ranks only its own terms
/// (documented in `dynsig_core::shard`).
fn alert_line(a: &Alert) -> String {
    let mut a = a.clone();
    if let Some(at) = a.summary.find("; top terms: ") {
        let end = a.summary[at..]
            .find(" (")
            .map_or(a.summary.len(), |e| at + e);
        a.summary.replace_range(at..end, "");
    }
    serde_json::to_string(&a).unwrap()
}

#[test]
fn shards_together_publish_what_one_engine_publishes() {
    let inputs: Vec<Input> = Synth::new(&SynthConfig::demo(BASE, DURATION))
        .unwrap()
        .collect();
    let mut whole = Published::default();
    let (signals, whole_refused) = run(&mut engine(Shard::WHOLE), &inputs);
    signals.into_iter().for_each(|s| whole.add(s));
    let whole = whole.sorted();
    assert!(!whole.alerts.is_empty() && !whole.anomalies.is_empty() && !whole.ecosystem.is_empty());

    for count in [2, 3] {
        let mut merge = TrendMerge::new(count, &config().trends);
        let mut sharded = Published::default();
        let mut per_shard_trends = BTreeMap::new();
        for shard in Shard::all(count) {
            let (signals, refused) = run(&mut engine(shard), &inputs);
            assert_eq!(
                refused, whole_refused,
                "shard {shard:?} refuses the same inputs"
            );
            for signal in signals {
                match signal {
                    Signal::Trend(snapshot) => {
                        *per_shard_trends.entry(shard.index()).or_insert(0) += 1;
                        match merge.push(shard.index(), snapshot) {
                            Merged::Complete(merged) => sharded.add(Signal::Trend(merged)),
                            Merged::Waiting => {}
                            Merged::Repeated => panic!("each snapshot is pushed once"),
                        }
                    }
                    other => sharded.add(other),
                }
            }
        }
        assert_eq!(merge.waiting(), 0, "every window heard from every shard");
        assert!(per_shard_trends.values().all(|&n| n == whole.trends.len()));
        let sharded = sharded.sorted();
        assert_eq!(sharded.trends, whole.trends, "{count} shards: trends");
        assert_eq!(
            sharded.anomalies, whole.anomalies,
            "{count} shards: anomalies"
        );
        assert_eq!(sharded.alerts, whole.alerts, "{count} shards: alerts");
        assert_eq!(
            sharded.ecosystem, whole.ecosystem,
            "{count} shards: ecosystem"
        );
    }
}

#[test]
fn a_shard_checkpoint_restores_only_into_the_same_shard() {
    let inputs: Vec<Input> = Synth::new(&SynthConfig::demo(BASE, 60_000))
        .unwrap()
        .collect();
    let mut first = engine(Shard::new(1, 2).unwrap());
    run(&mut first, &inputs);
    let mut saved = Vec::new();
    first.save_state_into(&mut saved).unwrap();
    assert!(engine(Shard::new(1, 2).unwrap())
        .restore_state(&saved)
        .is_ok());
    for other in [
        Shard::WHOLE,
        Shard::new(0, 2).unwrap(),
        Shard::new(1, 3).unwrap(),
    ] {
        assert!(matches!(
            engine(other).restore_state(&saved),
            Err(RestoreError::OtherShard { .. })
        ));
    }
}
