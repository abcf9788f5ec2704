//! Engines that share the keys (shards, see `dynsig_core::shard`), each fed every input,
//! publish together what one engine over all keys publishes: the merged trend snapshots
//! equal its snapshots, their anomalies, alerts and co-mention graphs are its own, and
//! their alerts, merged window by window into one metafilter
//! (`dynsig_core::shard_merge`), give its notifications.

use std::collections::BTreeMap;

use dynsig_core::catalog::{ActorMatcher, Catalog};
use dynsig_core::config::EngineConfig;
use dynsig_core::engine::{Engine, RestoreError};
use dynsig_core::model::{Alert, Anomaly, EpochMs, Input, Origin, Signal, TrendSnapshot};
use dynsig_core::shard::Shard;
use dynsig_core::shard_merge::{Merged, ShardMerge};
use dynsig_core::synth::{Synth, SynthConfig};
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

/// What an engine published at one poll, and its watermark then (None at the end).
type Poll = (Vec<Signal>, Option<EpochMs>);

/// Everything `engine` publishes for `inputs` (two partitions, polled every 50 inputs),
/// poll by poll, and whether each input was refused.
fn run(engine: &mut Engine, inputs: &[Input]) -> (Vec<Poll>, Vec<bool>) {
    let mut polls = Vec::new();
    let mut refused = Vec::new();
    for (offset, input) in inputs.iter().enumerate() {
        let origin = Origin {
            partition: (offset % 2) as u32,
            offset: offset as i64,
        };
        refused.push(engine.ingest(input, Some(origin)).is_err());
        if offset % 50 == 0 {
            polls.push((engine.poll_closed(), engine.watermark()));
        }
    }
    polls.push((engine.finish(), None));
    (polls, refused)
}

#[derive(Default, Debug, PartialEq)]
struct Published {
    trends: Vec<TrendSnapshot>,
    anomalies: Vec<String>,
    alerts: Vec<String>,
    ecosystem: Vec<String>,
    notifications: Vec<String>,
}

impl Published {
    fn add(&mut self, signal: Signal) {
        match signal {
            Signal::Trend(snapshot) => self.trends.push(snapshot),
            Signal::Anomaly(anomaly) => self.anomalies.push(anomaly_line(&anomaly)),
            Signal::Alert(alert) => self.alerts.push(alert_line(&alert)),
            Signal::Ecosystem(graph) => self.ecosystem.push(serde_json::to_string(&graph).unwrap()),
            Signal::Notification(n) => self.notifications.push(without_top_terms(format!(
                "{} {}",
                n.topic,
                serde_json::to_string(&n.message).unwrap()
            ))),
            Signal::Digest(d) => self.notifications.push(without_top_terms(format!(
                "{} {}",
                d.topic,
                serde_json::to_string(&d.message).unwrap()
            ))),
        }
    }

    /// Order within a kind depends on which shard published first.
    fn sorted(mut self) -> Self {
        self.trends
            .sort_by(|a, b| (&a.window, a.window_start).cmp(&(&b.window, b.window_start)));
        self.anomalies.sort();
        self.alerts.sort();
        self.notifications.sort();
        self
    }
}

fn anomaly_line(a: &Anomaly) -> String {
    serde_json::to_string(a).unwrap()
}

/// A message as published, but for one clause: an actor's anomaly alert quotes the top
/// terms about the actor from its window's ranking, and a shard ranks only its own terms
/// (documented in `dynsig_core::shard`).
fn without_top_terms(json: String) -> String {
    let mut json = json;
    while let Some(at) = json.find("; top terms: ") {
        // The clause ends where the score's parenthesis or the summary's string does.
        let rest = &json[at..];
        let end = [rest.find(" ("), rest.find('"')]
            .into_iter()
            .flatten()
            .min()
            .map_or(json.len(), |e| at + e);
        json.replace_range(at..end, "");
    }
    json
}

fn alert_line(a: &Alert) -> String {
    without_top_terms(serde_json::to_string(a).unwrap())
}

#[test]
fn shards_together_publish_what_one_engine_publishes() {
    let inputs: Vec<Input> = Synth::new(&SynthConfig::demo(BASE, DURATION))
        .unwrap()
        .collect();
    let mut whole = Published::default();
    let (polls, whole_refused) = run(&mut engine(Shard::WHOLE), &inputs);
    polls
        .into_iter()
        .flat_map(|(s, _)| s)
        .for_each(|s| whole.add(s));
    let whole = whole.sorted();
    assert!(!whole.alerts.is_empty() && !whole.anomalies.is_empty() && !whole.ecosystem.is_empty());
    assert!(!whole.notifications.is_empty());

    for count in [2, 3] {
        let mut merge = ShardMerge::new(count, &config()).unwrap();
        let mut sharded = Published::default();
        let mut per_shard_trends = BTreeMap::new();
        for shard in Shard::all(count) {
            let (polls, refused) = run(&mut engine(shard), &inputs);
            assert_eq!(
                refused, whole_refused,
                "shard {shard:?} refuses the same inputs"
            );
            for (signals, watermark) in polls {
                let (windows, published) = ShardMerge::split_by_window(signals);
                published.into_iter().for_each(|s| sharded.add(s));
                for window in windows {
                    *per_shard_trends.entry(shard.index()).or_insert(0) += 1;
                    match merge.push_window(shard.index(), window) {
                        Merged::Complete(signals) => {
                            signals.into_iter().for_each(|s| sharded.add(s))
                        }
                        Merged::Waiting => {}
                        Merged::Repeated => panic!("each snapshot is pushed once"),
                    }
                }
                if let Some(watermark) = watermark {
                    let released = merge.push_progress(shard.index(), watermark);
                    released.into_iter().for_each(|s| sharded.add(s));
                }
            }
        }
        merge.finish().into_iter().for_each(|s| sharded.add(s));
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
        assert_eq!(
            sharded.notifications, whole.notifications,
            "{count} shards: notifications and digests"
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
