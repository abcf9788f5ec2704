//! The engine: inputs in, signals out. Ties the tokenizer, the event-time windows, the
//! trend and anomaly detectors and the alert book together; owns no clock and does no
//! I/O (the service feeds it inputs and wall-clock ticks and publishes what it returns).
//!
//! Per window it counts: posts (`events` of the trend snapshot); every term of every
//! post; the series `posts.source=<source>` (source "" → `unknown`); the series
//! `terms.term=<term>` of each watched term; and for internal events the series
//! `events.kind=<kind>,key=<key>` summing `value` (`,key=` omitted when the key is "").
//! When a window closes it emits, in this order: its trend snapshot, its anomalies at or
//! above `anomaly.publish_score`, and its alert transitions.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::alert::{AlertBook, AlertRules, WindowSpan};
use crate::anomaly::{AnomalyDetector, DETECTOR_NAME};
use crate::config::{ConfigError, EngineConfig};
use crate::model::{Anomaly, EpochMs, Input, Origin, Signal, Term, TrendSnapshot};
use crate::tokenizer::{Tokenizer, TokenizerError};
use crate::trend::{TermCounts, TrendDetector};
use crate::watermark::{Watermark, UNPARTITIONED};
use crate::window::{ClosedWindow, Windows};

/// An input whose window had already closed when it arrived.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Late {
    pub window_end: EpochMs,
    pub watermark: EpochMs,
}

impl From<ConfigError> for EngineError {
    fn from(e: ConfigError) -> Self {
        EngineError::InvalidConfig {
            field: e.field,
            reason: e.reason,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid config: {field} {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    #[error("invalid config: {0}")]
    Tokenizer(#[from] TokenizerError),
}

/// What one open window accumulates.
#[derive(Debug, Default)]
struct WindowCounts {
    posts: u64,
    terms: TermCounts,
    /// Series name → value in this window.
    series: HashMap<String, f64>,
}

/// A configured watch term, normalized the way the tokenizer emits it.
#[derive(Debug)]
struct WatchTerm {
    term: Term,
    series: String,
}

pub struct Engine {
    tokenizer: Tokenizer,
    windows: Windows<WindowCounts>,
    watermark: Watermark,
    trends: TrendDetector,
    anomalies: AnomalyDetector,
    alerts: AlertBook,
    rules: AlertRules,
    watch_terms: Vec<WatchTerm>,
    publish_score: f64,
    /// Reused buffers: tokenizing and series keys allocate nothing per input once warm.
    token_scratch: String,
    series_scratch: String,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Result<Engine, EngineError> {
        config.validate()?;
        let tokenizer = Tokenizer::new(&config.tokenizer)?;
        let watch_terms = config
            .anomaly
            .watch_terms
            .iter()
            .map(|raw| watch_term(&tokenizer, raw))
            .collect::<Result<_, _>>()?;
        Ok(Engine {
            windows: Windows::new(config.window.size_ms),
            watermark: Watermark::new(
                config.window.allowed_lateness_ms,
                config.window.idle_timeout_ms,
            ),
            trends: TrendDetector::new(&config.trends),
            anomalies: AnomalyDetector::new(&config.anomaly),
            alerts: AlertBook::new(),
            rules: AlertRules::new(&config.alerts, &config.trends),
            watch_terms,
            publish_score: config.anomaly.publish_score,
            tokenizer,
            token_scratch: String::new(),
            series_scratch: String::new(),
        })
    }

    /// Adds one input. Err(Late) when its window has already closed (end <= watermark):
    /// the caller dead-letters it with reason `late`; nothing is counted.
    pub fn ingest(&mut self, input: &Input, origin: Option<Origin>) -> Result<(), Late> {
        let ts = input.ts();
        let (start, end) = self.windows.bounds(ts);
        if let Some(watermark) = self.watermark.value().filter(|&watermark| end <= watermark) {
            return Err(Late {
                window_end: end,
                watermark,
            });
        }
        self.watermark
            .observe(origin.map_or(UNPARTITIONED, |o| o.partition), ts);
        let counts = self.windows.state_mut(start, origin);
        let key = &mut self.series_scratch;
        key.clear();
        match input {
            Input::Post(post) => {
                counts.posts += 1;
                let terms = &mut counts.terms;
                self.tokenizer
                    .for_each_term(&post.text, &mut self.token_scratch, |kind, text| {
                        *terms.get_or_default(kind, text) += 1;
                    });
                let _ = write!(key, "posts.source={}", or_unknown(&post.source));
                add_to_series(&mut counts.series, key, 1.0);
            }
            Input::Event(event) => {
                let _ = write!(key, "events.kind={}", or_unknown(&event.kind));
                if !event.key.is_empty() {
                    let _ = write!(key, ",key={}", event.key);
                }
                // A NaN or infinite value would poison the series' mean for good.
                let value = if event.value.is_finite() {
                    event.value
                } else {
                    0.0
                };
                add_to_series(&mut counts.series, key, value);
            }
        }
        Ok(())
    }

    /// The input partitions (as in [`Origin::partition`]) this instance reads now, after
    /// each rebalance: the watermark is the minimum over them, and one that has delivered
    /// nothing holds it until it delivers or goes idle. Inputs from other partitions are
    /// still accepted (and then tracked).
    pub fn assign_partitions(&mut self, partitions: &[u32]) {
        self.watermark.assign(partitions);
    }

    /// Wall-clock tick (the service calls it ~every 200 ms, replay never). If no input was
    /// ingested since the previous tick for longer than `window.idle_timeout_ms` (wall
    /// time), the watermark advances by the wall time elapsed since the last input, so
    /// quiet streams still close windows. idle_timeout_ms = 0 disables it.
    pub fn tick(&mut self, wall_now: EpochMs) {
        self.watermark.tick(wall_now);
    }

    /// Closes every window whose end <= watermark (oldest first) and returns, per closed
    /// window: its trend snapshot, its anomalies scoring >= `anomaly.publish_score`, then
    /// its alert transitions.
    pub fn poll_closed(&mut self) -> Vec<Signal> {
        self.watermark
            .value()
            .map_or_else(Vec::new, |watermark| self.close_windows_ended_by(watermark))
    }

    /// End of a finite input (replay): closes all open windows as if the watermark were
    /// +inf, same output as poll_closed. The watermark then stands at the last window's
    /// end, so stragglers for the closed windows are late.
    pub fn finish(&mut self) -> Vec<Signal> {
        self.close_windows_ended_by(EpochMs::MAX)
    }

    /// Smallest offset of input partition `partition` still held by an open window; None
    /// when no open window holds one.
    pub fn held_offset(&self, partition: u32) -> Option<i64> {
        self.windows.held_offset(partition)
    }

    pub fn watermark(&self) -> Option<EpochMs> {
        self.watermark.value()
    }

    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }

    /// The alert book (firing alerts), e.g. for an HTTP view or a checkpoint.
    pub fn alerts(&self) -> &AlertBook {
        &self.alerts
    }

    fn close_windows_ended_by(&mut self, limit: EpochMs) -> Vec<Signal> {
        let mut signals = Vec::new();
        while let Some(closed) = self.windows.pop_ended_by(limit) {
            self.watermark.raise_to(closed.end);
            self.close_window(closed, &mut signals);
        }
        signals
    }

    fn close_window(&mut self, closed: ClosedWindow<WindowCounts>, signals: &mut Vec<Signal>) {
        let ClosedWindow {
            start,
            end,
            state: mut counts,
        } = closed;
        for watch in &self.watch_terms {
            if let Some(&n) = counts.terms.get(watch.term.kind, &watch.term.text) {
                counts.series.insert(watch.series.clone(), n as f64);
            }
        }
        let entries = self
            .trends
            .close_window(self.windows.index(start), &counts.terms);
        let scores = self.anomalies.close_window(start, &counts.series);

        let span = WindowSpan { start, end };
        let mut alerts = Vec::new();
        self.alerts
            .observe_anomalies(&self.rules, span, &scores, &mut alerts);
        let trends = &self.trends;
        self.alerts.observe_trends(
            &self.rules,
            span,
            &entries,
            |kind, text| trends.last_score(kind, text),
            &mut alerts,
        );

        signals.push(Signal::Trend(TrendSnapshot {
            window_start: start,
            window_end: end,
            events: counts.posts,
            entries,
        }));
        signals.extend(
            scores
                .into_iter()
                .filter(|s| s.score >= self.publish_score)
                .map(|s| {
                    Signal::Anomaly(Anomaly {
                        series: s.series,
                        window_start: start,
                        window_end: end,
                        observed: s.observed,
                        expected: s.expected,
                        score: s.score,
                        detector: DETECTOR_NAME.into(),
                        explanation: s.explanation,
                    })
                }),
        );
        signals.extend(alerts.into_iter().map(Signal::Alert));
    }
}

fn or_unknown(name: &str) -> &str {
    if name.is_empty() {
        "unknown"
    } else {
        name
    }
}

/// Adds `value` to a series, allocating its key only the first time in a window.
fn add_to_series(series: &mut HashMap<String, f64>, key: &str, value: f64) {
    match series.get_mut(key) {
        Some(sum) => *sum += value,
        None => {
            series.insert(key.to_owned(), value);
        }
    }
}

/// A watch term as the tokenizer would emit it (`ACME` → `acme`); it must be exactly one
/// term, or it could never be counted.
fn watch_term(tokenizer: &Tokenizer, raw: &str) -> Result<WatchTerm, EngineError> {
    let mut terms = Vec::new();
    tokenizer.tokenize(raw, &mut terms);
    match <[Term; 1]>::try_from(terms) {
        Ok([term]) => Ok(WatchTerm { series: format!("terms.term={}", term.text), term }),
        Err(terms) => Err(EngineError::InvalidConfig {
            field: "anomaly.watch_terms",
            reason: format!(
                "entry {raw:?} must be a single countable term (not a stopword, URL or too short), the tokenizer reads it as {:?}",
                terms.iter().map(|t| t.text.as_str()).collect::<Vec<_>>()
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AnomalyConfig, TrendConfig, WindowConfig};
    use crate::model::{Alert, AlertStatus, InternalEvent, Post, Severity};

    const MINUTE: EpochMs = 60_000;
    const BASE: EpochMs = 1_767_268_800_000; // 2026-01-01 12:00:00 UTC

    fn post(ts: EpochMs, source: &str, text: &str) -> Input {
        Input::Post(Post {
            ts,
            source: source.into(),
            text: text.into(),
            ..Post::default()
        })
    }

    fn event(ts: EpochMs, kind: &str, key: &str, value: f64) -> Input {
        Input::Event(InternalEvent {
            ts,
            kind: kind.into(),
            key: key.into(),
            value,
            ..InternalEvent::default()
        })
    }

    fn config() -> EngineConfig {
        EngineConfig {
            window: WindowConfig {
                size_ms: MINUTE,
                allowed_lateness_ms: 5_000,
                idle_timeout_ms: 10_000,
            },
            trends: TrendConfig {
                top_k: 5,
                ..TrendConfig::default()
            },
            anomaly: AnomalyConfig {
                watch_terms: vec!["#AcmeFire".into()],
                ..AnomalyConfig::default()
            },
            ..EngineConfig::default()
        }
    }

    /// Inputs of window `w` (in time order): steady chatter and errors, plus a hashtag
    /// burst in window 6 and an error spike in window 8.
    fn window_inputs(w: i64) -> Vec<Input> {
        let start = BASE + w * MINUTE;
        let steady_posts = 40 + w % 3;
        let burst_posts = if w == 6 { 120 } else { 0 };
        let errors = if w == 8 { 200 } else { 10 + w % 2 };
        let mut inputs = Vec::new();
        for i in 0..steady_posts + burst_posts + errors {
            let ts = start + i * 100;
            inputs.push(if i < steady_posts {
                post(
                    ts,
                    "twitter",
                    "Rocket launch at the space center https://t.co/x",
                )
            } else if i < steady_posts + burst_posts {
                post(ts, "twitter", "#AcmeFire smoke everywhere 🔥")
            } else {
                event(ts, "error", "checkout", 1.0)
            });
        }
        inputs
    }

    /// Runs windows 0..n through a fresh engine, polling after every input.
    fn run(n: i64) -> Vec<Signal> {
        let mut engine = Engine::new(config()).unwrap();
        let mut signals = Vec::new();
        for (offset, input) in (0..n).flat_map(window_inputs).enumerate() {
            engine
                .ingest(
                    &input,
                    Some(Origin {
                        partition: 0,
                        offset: offset as i64,
                    }),
                )
                .unwrap();
            signals.extend(engine.poll_closed());
        }
        signals.extend(engine.finish());
        assert_eq!(engine.open_windows(), 0);
        signals
    }

    fn alerts(signals: &[Signal]) -> Vec<&Alert> {
        signals
            .iter()
            .filter_map(|s| {
                if let Signal::Alert(a) = s {
                    Some(a)
                } else {
                    None
                }
            })
            .collect()
    }

    #[test]
    fn planted_burst_and_error_spike_become_signals_and_alerts() {
        let signals = run(12);
        let snapshots: Vec<&TrendSnapshot> = signals
            .iter()
            .filter_map(|s| {
                if let Signal::Trend(t) = s {
                    Some(t)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(snapshots.len(), 12);
        assert!(
            snapshots
                .windows(2)
                .all(|w| w[0].window_end == w[1].window_start),
            "in order, no gaps"
        );
        assert_eq!(snapshots[5].events, 42);
        // Steady chatter may rank with noise-level scores, never near the alert threshold.
        assert!(
            snapshots[5].entries.iter().all(|e| e.score < 2.0),
            "steady chatter trends: {:?}",
            snapshots[5].entries
        );

        let burst = snapshots[6];
        assert_eq!(burst.events, 40 + 120);
        assert_eq!(
            (burst.entries[0].term.as_str(), burst.entries[0].count),
            ("#acmefire", 120)
        );
        assert!(burst.entries[0].score >= 8.0);

        let alerts = alerts(&signals);
        let transitions: Vec<(&str, AlertStatus, EpochMs)> = alerts
            .iter()
            .map(|a| (a.id.as_str(), a.status, (a.updated_at - BASE) / MINUTE))
            .collect();
        for expected in [
            ("trend:hashtag:#acmefire", AlertStatus::Firing, 7),
            ("trend:hashtag:#acmefire", AlertStatus::Resolved, 8),
            (
                "anomaly:events.kind=error,key=checkout",
                AlertStatus::Firing,
                9,
            ),
            (
                "anomaly:events.kind=error,key=checkout",
                AlertStatus::Resolved,
                10,
            ),
        ] {
            assert!(
                transitions.contains(&expected),
                "{expected:?} missing from {transitions:#?}"
            );
        }
        let fired = alerts
            .iter()
            .find(|a| a.id == "trend:hashtag:#acmefire")
            .unwrap();
        assert_eq!(fired.title, "Trending hashtag #acmefire");
        assert!(
            fired
                .summary
                .starts_with("#acmefire: 120 mentions in window 12:06:00–12:07:00 UTC"),
            "{}",
            fired.summary
        );
        let error_alert = alerts
            .iter()
            .find(|a| a.id == "anomaly:events.kind=error,key=checkout")
            .unwrap();
        assert_eq!(error_alert.severity, Severity::Critical);

        let error_anomaly = signals
            .iter()
            .find_map(|s| match s {
                Signal::Anomaly(a) if a.series == "events.kind=error,key=checkout" => Some(a),
                _ => None,
            })
            .expect("error spike published");
        assert_eq!((error_anomaly.window_start - BASE) / MINUTE, 8);
        assert_eq!(error_anomaly.observed, 200.0);
        assert!(
            error_anomaly.score >= 0.999 && error_anomaly.expected < 12.0,
            "{error_anomaly:?}"
        );
        assert_eq!(error_anomaly.detector, "ewma-z");
    }

    #[test]
    fn each_window_emits_snapshot_then_anomalies_then_alerts() {
        let signals = run(12);
        let rank = |s: &Signal| match s {
            Signal::Trend(_) => 0,
            Signal::Anomaly(_) => 1,
            Signal::Alert(_) => 2,
        };
        let mut previous = None;
        for s in &signals {
            let r = rank(s);
            if let Some(p) = previous {
                assert!(r == 0 || r >= p, "out of order: {signals:#?}");
            }
            previous = Some(r);
        }
        assert_eq!(run(12), signals, "deterministic");
    }

    #[test]
    fn late_inputs_are_rejected_and_not_counted() {
        let mut engine = Engine::new(config()).unwrap();
        engine
            .ingest(&post(BASE + 1_000, "twitter", "early bird"), None)
            .unwrap();
        engine
            .ingest(&post(BASE + MINUTE + 6_000, "twitter", "moving on"), None)
            .unwrap();
        assert_eq!(engine.watermark(), Some(BASE + MINUTE + 1_000));
        let late = engine
            .ingest(&post(BASE + 59_000, "twitter", "too late"), None)
            .unwrap_err();
        assert_eq!(
            late,
            Late {
                window_end: BASE + MINUTE,
                watermark: BASE + MINUTE + 1_000
            }
        );
        // Within the allowed lateness of the open window: accepted.
        engine
            .ingest(&post(BASE + MINUTE + 500, "twitter", "just in time"), None)
            .unwrap();
        let signals = engine.poll_closed();
        match &signals[0] {
            Signal::Trend(t) => assert_eq!((t.window_start, t.events), (BASE, 1)),
            other => panic!("expected a snapshot, got {other:?}"),
        }
        assert_eq!(engine.open_windows(), 1);
    }

    #[test]
    fn held_offsets_move_forward_as_windows_close() {
        let mut engine = Engine::new(config()).unwrap();
        let at = |offset: i64| {
            Some(Origin {
                partition: 3,
                offset,
            })
        };
        engine.ingest(&post(BASE, "a", "one"), at(10)).unwrap();
        engine
            .ingest(&post(BASE + MINUTE, "a", "two"), at(11))
            .unwrap();
        engine
            .ingest(&event(BASE + 2, "deploy", "", 1.0), at(12))
            .unwrap();
        assert_eq!(engine.held_offset(3), Some(10));
        assert_eq!(engine.held_offset(4), None);
        engine
            .ingest(&post(BASE + MINUTE + 5_000, "a", "three"), at(13))
            .unwrap();
        engine.poll_closed();
        assert_eq!(engine.held_offset(3), Some(11));
        engine.finish();
        assert_eq!(engine.held_offset(3), None);
        assert_eq!(engine.watermark(), Some(BASE + 2 * MINUTE));
    }

    #[test]
    fn idle_ticks_close_the_last_window() {
        let mut engine = Engine::new(config()).unwrap();
        engine
            .ingest(&post(BASE + 30_000, "a", "lonely"), None)
            .unwrap();
        engine.tick(1_000_000);
        engine.tick(1_005_000);
        assert!(engine.poll_closed().is_empty());
        engine.tick(1_040_000); // idle 40 s > 10 s: watermark = 12:00:25 + 40 s = 12:01:05
        assert_eq!(engine.watermark(), Some(BASE + 65_000));
        let signals = engine.poll_closed();
        assert!(matches!(&signals[0], Signal::Trend(t) if t.window_start == BASE && t.events == 1));
        assert_eq!(engine.open_windows(), 0);
    }

    #[test]
    fn series_keys_follow_the_naming_rules() {
        let config = EngineConfig {
            anomaly: AnomalyConfig {
                warmup_windows: 0,
                publish_score: 0.0,
                ..config().anomaly
            },
            ..config()
        };
        let mut engine = Engine::new(config).unwrap();
        engine.ingest(&post(BASE, "", "#acmefire"), None).unwrap();
        engine
            .ingest(&post(BASE, "bsky", "#ACMEFIRE"), None)
            .unwrap();
        engine
            .ingest(&event(BASE, "deploy", "", 1.0), None)
            .unwrap();
        engine
            .ingest(&event(BASE, "latency", "api", 2.5), None)
            .unwrap();
        engine
            .ingest(&event(BASE, "latency", "api", f64::NAN), None)
            .unwrap();
        let observed: Vec<(String, f64)> = engine
            .finish()
            .into_iter()
            .filter_map(|s| {
                if let Signal::Anomaly(a) = s {
                    Some((a.series, a.observed))
                } else {
                    None
                }
            })
            .collect();
        let expected = [
            ("events.kind=deploy", 1.0),
            ("events.kind=latency,key=api", 2.5),
            ("posts.source=bsky", 1.0),
            ("posts.source=unknown", 1.0),
            ("terms.term=#acmefire", 2.0),
        ];
        assert_eq!(observed, expected.map(|(k, v)| (k.to_owned(), v)));
    }

    #[test]
    fn invalid_config_names_the_field() {
        type BreakConfig = fn(&mut EngineConfig);
        let cases: [(BreakConfig, &str); 6] = [
            (|c| c.window.size_ms = 0, "window.size_ms"),
            (|c| c.trends.baseline_alpha = 0.0, "trends.baseline_alpha"),
            (|c| c.anomaly.alpha = f64::NAN, "anomaly.alpha"),
            (
                |c| c.alerts.anomaly_resolve = 0.995,
                "alerts.anomaly_resolve",
            ),
            (
                |c| c.tokenizer.stopwords = vec!["de".into()],
                "tokenizer.stopwords",
            ),
            (
                |c| c.anomaly.watch_terms = vec!["the".into()],
                "anomaly.watch_terms",
            ),
        ];
        for (break_it, field) in cases {
            let mut config = config();
            break_it(&mut config);
            let message = Engine::new(config)
                .err()
                .expect("invalid config accepted")
                .to_string();
            assert!(message.contains(field), "{message:?} does not name {field}");
        }
    }
}
