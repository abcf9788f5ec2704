//! The demo's live view: reads `signals.trends` and `signals.alerts` back from the broker,
//! as any downstream consumer would, and prints the throughput, the service's consumer lag,
//! the current top trends (with a sparkline of their recent windows) and active alerts.
//! On a terminal it redraws in place once a second; when piped it prints one block per
//! new window, so logs stay readable.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dynsig_core::model::{Alert, AlertStatus, TrendSnapshot};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::config::TopicsConfig;

/// Windows a sparkline shows.
const SPARK_WINDOWS: usize = 8;
const SPARKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// What the view has seen so far.
#[derive(Default)]
struct ViewState {
    latest: Option<TrendSnapshot>,
    /// The last final snapshots' counts by term (`kind:term`), oldest first.
    history: std::collections::VecDeque<BTreeMap<String, u64>>,
    /// Records of the input topics the service has not committed yet.
    lag: Option<i64>,
    active: BTreeMap<String, Alert>,
    fired: u64,
    resolved: u64,
    snapshots: u64,
    redrawn_for: Option<i64>,
}

/// Runs until `stop`; returns a one-line summary. `group` is the service's consumer group,
/// whose lag the view shows.
pub async fn live(
    bootstrap: String,
    topics: TopicsConfig,
    group: String,
    duration: Duration,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<String> {
    // Never subscribes: it only reads the service's committed offsets and the log ends.
    let offsets: std::sync::Arc<BaseConsumer> = std::sync::Arc::new(
        ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .context("creating the lag reader")?,
    );
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "dynsig-demo-view")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("enable.auto.commit", "false")
        .create()
        .context("creating the view consumer")?;
    consumer.subscribe(&[&topics.trends, &topics.alerts])?;
    let terminal = std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut state = ViewState::default();
    let mut redraw = tokio::time::interval(Duration::from_secs(1));
    let mut lag_due = false;
    loop {
        // Outside `select!`: its output holds a watch guard that must not live across an await.
        if std::mem::take(&mut lag_due) {
            let reader = offsets.clone();
            let inputs = [topics.posts.clone(), topics.events.clone()];
            state.lag = tokio::task::spawn_blocking(move || consumer_lag(&reader, &inputs))
                .await
                .ok()
                .flatten();
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = redraw.tick() => {
                lag_due = true;
                if terminal || state.redrawn_for != state.latest.as_ref().map(|s| s.window_start) {
                    state.redrawn_for = state.latest.as_ref().map(|s| s.window_start);
                    print!("{}{}", if terminal { "\x1b[2J\x1b[H" } else { "\n" }, render(&state, started.elapsed(), duration));
                }
            }
            message = consumer.recv() => {
                let Ok(message) = message else { continue };
                let Some(payload) = message.payload() else { continue };
                if message.topic() == topics.trends {
                    if let Ok(snapshot) = serde_json::from_slice::<TrendSnapshot>(payload) {
                        state.snapshots += 1;
                        if snapshot.is_final {
                            state.history.push_back(snapshot.entries.iter()
                                .map(|e| (format!("{}:{}", e.kind.as_str(), e.term), e.count))
                                .collect());
                            if state.history.len() > SPARK_WINDOWS {
                                state.history.pop_front();
                            }
                        }
                        if state.latest.as_ref().is_none_or(|l| snapshot.window_start >= l.window_start) {
                            state.latest = Some(snapshot);
                        }
                    }
                } else if let Ok(alert) = serde_json::from_slice::<Alert>(payload) {
                    match alert.status {
                        AlertStatus::Firing => {
                            state.fired += 1;
                            state.active.insert(alert.dedup_key.clone(), alert);
                        }
                        AlertStatus::Updated | AlertStatus::Pending => {
                            state.active.insert(alert.dedup_key.clone(), alert);
                        }
                        AlertStatus::Resolved => {
                            state.resolved += 1;
                            state.active.remove(&alert.dedup_key);
                        }
                    }
                }
            }
        }
    }
    Ok(format!(
        "{} trend snapshots, {} alerts fired, {} resolved, {} still firing",
        state.snapshots,
        state.fired,
        state.resolved,
        state.active.len()
    ))
}

fn render(state: &ViewState, elapsed: Duration, duration: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "dynsig demo  {:>3}s / {}s   snapshots {}   alerts fired {}   resolved {}",
        elapsed.as_secs(),
        duration.as_secs(),
        state.snapshots,
        state.fired,
        state.resolved
    );
    match &state.latest {
        None => {
            let _ = writeln!(out, "\nwaiting for the first window to close...");
        }
        Some(snapshot) => {
            let seconds = ((snapshot.window_end - snapshot.window_start) as f64 / 1000.0).max(1e-3);
            let _ = writeln!(
                out,
                "\nTop trends, window {} - {}: {} posts ({:.0}/s); consumer lag {}",
                clock(snapshot.window_start),
                clock(snapshot.window_end),
                snapshot.events,
                snapshot.events as f64 / seconds,
                state
                    .lag
                    .map_or("?".to_owned(), |lag| format!("{lag} records"))
            );
            let _ = writeln!(
                out,
                "  {:>2}  {:<24} {:<8} {:>6} {:>7} {:>9} {:>7}  {:<8} last {SPARK_WINDOWS} windows",
                "#", "term", "kind", "count", "authors", "baseline", "score", "status"
            );
            for (rank, entry) in snapshot.entries.iter().enumerate() {
                let key = format!("{}:{}", entry.kind.as_str(), entry.term);
                let _ = writeln!(
                    out,
                    "  {:>2}  {:<24} {:<8} {:>6} {:>7} {:>9.1} {:>7.1}  {:<8} {}",
                    rank + 1,
                    entry.term,
                    entry.kind.as_str(),
                    entry.count,
                    entry.authors,
                    entry.baseline,
                    entry.score,
                    entry.status.as_str(),
                    sparkline(
                        state
                            .history
                            .iter()
                            .map(|w| w.get(&key).copied().unwrap_or(0))
                    )
                );
            }
        }
    }
    let _ = writeln!(out, "\nActive alerts ({})", state.active.len());
    for alert in state.active.values() {
        let _ = writeln!(
            out,
            "  {:<8} {}  {}",
            format!("{:?}", alert.severity).to_uppercase(),
            alert.title,
            alert.summary
        );
    }
    out
}

/// `HH:MM:SS` (UTC) of an epoch-ms time.
/// One character per value, scaled to the largest (a term out of a window's top is 0).
fn sparkline(values: impl Iterator<Item = u64> + Clone) -> String {
    let max = values.clone().max().unwrap_or(0).max(1) as f64;
    values
        .map(|v| SPARKS[((v as f64 / max) * (SPARKS.len() - 1) as f64).round() as usize])
        .collect()
}

/// Records of `topics` the service's group has not committed (log end minus committed
/// offset, per partition; a partition without a commit counts from its start). `None`
/// when the broker does not answer.
fn consumer_lag(reader: &BaseConsumer, topics: &[String]) -> Option<i64> {
    let timeout = Duration::from_secs(1);
    let metadata = reader.fetch_metadata(None, timeout).ok()?;
    let mut partitions = TopicPartitionList::new();
    for topic in metadata
        .topics()
        .iter()
        .filter(|t| topics.iter().any(|n| n == t.name()))
    {
        for p in topic.partitions() {
            partitions.add_partition(topic.name(), p.id());
        }
    }
    let committed = reader.committed_offsets(partitions, timeout).ok()?;
    let mut lag = 0;
    for element in committed.elements() {
        let (low, high) = reader
            .fetch_watermarks(element.topic(), element.partition(), timeout)
            .ok()?;
        let done = match element.offset() {
            Offset::Offset(offset) => offset,
            _ => low,
        };
        lag += (high - done).max(0);
    }
    Some(lag)
}

fn clock(ms: i64) -> String {
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}
