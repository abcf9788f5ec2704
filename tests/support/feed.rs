//! A generated feed for end-to-end tests: `dynsig gen` (10 minutes of posts and events)
//! cut in rounds of equal event-time length, produced round by round over the 3
//! partitions of `posts` and `events`, and what `dynsig replay` of it publishes with the
//! test's config: the reference a service must match.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{read_jsonl, run_dynsig, OutRecord, TestBroker};

pub const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const DURATION_MS: i64 = 10 * 60_000;

/// The feed cut in rounds, and the replay's output folder.
pub struct Feed {
    pub post_rounds: Vec<Vec<String>>,
    pub event_rounds: Vec<Vec<String>>,
    /// `<topic>.jsonl` files of `dynsig replay` over the whole feed.
    pub replayed: PathBuf,
    pub expected_counts: BTreeMap<i64, i64>,
    pub expected_firings: BTreeSet<String>,
}

impl Feed {
    /// Generates the feed into `dir` and replays it with `config` (TOML).
    pub fn generate(dir: &Path, config: &str, rounds: usize) -> Feed {
        let (posts, events, replayed) = (
            dir.join("posts.jsonl"),
            dir.join("events.jsonl"),
            dir.join("out"),
        );
        let config_path = dir.join("dynsig.toml");
        std::fs::write(&config_path, config).unwrap();
        run_dynsig(&[
            "gen",
            "--duration",
            "10m",
            "--start",
            &T0.to_string(),
            "--posts-per-sec",
            "50",
            "--events-per-sec",
            "10",
            "--posts",
            posts.to_str().unwrap(),
            "--events",
            events.to_str().unwrap(),
        ]);
        run_dynsig(&[
            "replay",
            "--config",
            config_path.to_str().unwrap(),
            "--posts",
            posts.to_str().unwrap(),
            "--events",
            events.to_str().unwrap(),
            "--output",
            replayed.to_str().unwrap(),
        ]);
        let expected_counts = final_counts(&read_jsonl(&replayed.join("signals.trends.jsonl")));
        let expected_firings = firings(&read_jsonl(&replayed.join("signals.alerts.jsonl")));
        assert!(
            expected_firings.len() >= 5,
            "the feed must fire alerts: {expected_firings:?}"
        );
        Feed {
            post_rounds: cut_in_rounds(&posts, rounds),
            event_rounds: cut_in_rounds(&events, rounds),
            replayed,
            expected_counts,
            expected_firings,
        }
    }

    /// Produces round `round` of posts and events; returns how many records that was.
    pub async fn produce(&self, broker: &TestBroker, round: usize) -> usize {
        produce_round(broker, "posts", &self.post_rounds[round]).await;
        produce_round(broker, "events", &self.event_rounds[round]).await;
        self.post_rounds[round].len() + self.event_rounds[round].len()
    }
}

/// The lines of a feed file, cut in `rounds` rounds of equal event-time length.
fn cut_in_rounds(path: &Path, rounds: usize) -> Vec<Vec<String>> {
    let round_ms = DURATION_MS / rounds as i64;
    let mut cut = vec![Vec::new(); rounds];
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let ts = serde_json::from_str::<Value>(line).unwrap()["ts"]
            .as_i64()
            .unwrap();
        cut[(((ts - T0) / round_ms) as usize).min(rounds - 1)].push(line.to_owned());
    }
    cut
}

/// Produces a round, spread over the 3 partitions, and returns each partition's end
/// offset after it.
pub async fn produce_round(broker: &TestBroker, topic: &str, lines: &[String]) -> [i64; 3] {
    let records: Vec<OutRecord> = lines
        .iter()
        .enumerate()
        .map(|(i, line)| OutRecord::new(line.clone()).partition((i % 3) as i32))
        .collect();
    let mut ends = [0; 3];
    for delivered in broker.produce(topic, &records).await {
        let end = &mut ends[delivered.partition as usize];
        *end = (*end).max(delivered.offset + 1);
    }
    ends
}

/// Whether `records` (of the trends topic) hold a final snapshot of every window of
/// `expected`. Not just of the last: the topic has several partitions, read at their own
/// pace, so the last window's snapshot can be read before an earlier one's.
pub fn has_every_window(records: &[super::Record], expected: &BTreeMap<i64, i64>) -> bool {
    let published: BTreeSet<i64> = records
        .iter()
        .map(super::parse)
        .filter(|s| s["final"] == true)
        .filter_map(|s| s["window_start"].as_i64())
        .collect();
    expected.keys().all(|start| published.contains(start))
}

/// Final trend counts by window start; fails if one window was published with two counts.
pub fn final_counts(snapshots: &[Value]) -> BTreeMap<i64, i64> {
    let mut counts = BTreeMap::new();
    for s in snapshots.iter().filter(|s| s["final"] == true) {
        let (start, events) = (
            s["window_start"].as_i64().unwrap(),
            s["events"].as_i64().unwrap(),
        );
        if let Some(before) = counts.insert(start, events) {
            assert_eq!(before, events, "window {start} published with two counts");
        }
    }
    counts
}

/// Firing alert ids; fails if an id fired with two different messages.
pub fn firings(alerts: &[Value]) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, &Value> = BTreeMap::new();
    for a in alerts.iter().filter(|a| a["status"] == "firing") {
        let id = a["id"].as_str().unwrap().to_owned();
        if let Some(before) = seen.insert(id.clone(), a) {
            assert_eq!(before, a, "alert {id} fired twice, differently");
        }
    }
    seen.into_keys().collect()
}
