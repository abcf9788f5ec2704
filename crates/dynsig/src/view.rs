//! The demo's live view: reads `signals.trends` and `signals.alerts` back from the broker,
//! as any downstream consumer would, and prints the current top trends and active alerts.
//! On a terminal it redraws in place once a second; when piped it prints one block per
//! new window, so logs stay readable.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dynsig_core::model::{Alert, AlertStatus, TrendSnapshot};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;
use tokio::sync::watch;

use crate::config::TopicsConfig;

/// What the view has seen so far.
#[derive(Default)]
struct ViewState {
    latest: Option<TrendSnapshot>,
    active: BTreeMap<String, Alert>,
    fired: u64,
    resolved: u64,
    snapshots: u64,
    redrawn_for: Option<i64>,
}

/// Runs until `stop`; returns a one-line summary.
pub async fn live(
    bootstrap: String,
    topics: TopicsConfig,
    duration: Duration,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<String> {
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
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = redraw.tick() => {
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
            let _ = writeln!(
                out,
                "\nTop trends, window {} - {} ({} posts)",
                clock(snapshot.window_start),
                clock(snapshot.window_end),
                snapshot.events
            );
            let _ = writeln!(
                out,
                "  {:>2}  {:<24} {:<8} {:>6} {:>7} {:>9} {:>7}  status",
                "#", "term", "kind", "count", "authors", "baseline", "score"
            );
            for (rank, entry) in snapshot.entries.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "  {:>2}  {:<24} {:<8} {:>6} {:>7} {:>9.1} {:>7.1}  {}",
                    rank + 1,
                    entry.term,
                    entry.kind.as_str(),
                    entry.count,
                    entry.authors,
                    entry.baseline,
                    entry.score,
                    entry.status.as_str()
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
fn clock(ms: i64) -> String {
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}
