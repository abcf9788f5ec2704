//! Trend-detection quality, end to end through the binary, no broker.
//!
//! `dynsig gen --scenario trend-quality` plants 20 trends of known start, growth and size
//! (from clearly strong down to near the alert threshold; words, hashtags, mentions,
//! cashtags and two-word phrases; new terms and surges over a baseline) and one spammer
//! over a Zipf background (see `SynthConfig::trend_quality`). `dynsig replay` runs the
//! pipeline over it with the default config: the feed is laid out for 1-minute windows,
//! the default, so there is nothing a user would have to set. The trend alerts and
//! snapshots it writes are then judged against the planted truth:
//!
//! - An alert *occurrence* is the first message of a trend alert (status firing; the next
//!   firing message of the same id is a new occurrence). It is *attributed* to a planted
//!   trend when it names the trend's term, or a word of a trending phrase, and the window
//!   that fired it overlaps the planted period extended by one window.
//! - A trend's *windows to alert*: the window where it starts counts as 1, and the first
//!   occurrence on its own term attributed to it says in which window it fired. It is
//!   *detected* when that is at most 2.
//! - `recall` = detected / planted trends; `precision` = attributed occurrences / all
//!   occurrences (0 when there are none); `windows_to_detect` = the maximum windows to
//!   alert over the trends that got an attributed alert at all (so that a late one shows
//!   here, not only in recall; `none` when no trend did); `spammer_trended` = any trend
//!   alert message (any status) on the spammer's term, or a snapshot entry on it scoring
//!   at least `trends.alert_score`.
//!
//! It prints one line, `trend_quality precision=P recall=R windows_to_detect=W
//! spammer_trended=B` (shown with `--nocapture`), then asserts the targets of the
//! trend-quality issue; on failure the message lists the missed and late trends with what
//! the detector saw in their first windows, the false-positive alerts, and the spammer's
//! hits.

mod support;

use std::fmt::Write as _;

use dynsig_core::config::TrendConfig;
use dynsig_core::model::{Alert, AlertStatus, EpochMs, TermKind, TrendSnapshot};
use dynsig_core::synth::{Planted, PlantedSignal, TREND_QUALITY_DURATION_MS};
use support::{read_jsonl, run_dynsig, TestDir};

/// On a minute boundary, as windows are, so that window numbers read as minutes of the feed.
const START_MS: EpochMs = 1_800_000_000_000;
const MIN_RECALL: f64 = 0.95;
const MIN_PRECISION: f64 = 0.9;
const MAX_WINDOWS_TO_DETECT: i64 = 2;

#[test]
fn planted_trends_are_found_early_and_precisely_and_spam_does_not_trend() {
    let dir = TestDir::new("trend-quality");
    let (posts, truth, out) = (
        dir.path().join("posts.jsonl"),
        dir.path().join("truth.json"),
        dir.path().join("out"),
    );
    run_dynsig(&[
        "gen",
        "--scenario",
        "trend-quality",
        "--duration",
        &format!("{TREND_QUALITY_DURATION_MS}ms"),
        "--start",
        &START_MS.to_string(),
        "--posts",
        posts.to_str().unwrap(),
        "--truth",
        truth.to_str().unwrap(),
    ]);
    run_dynsig(&[
        "replay",
        "--posts",
        posts.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);

    let truth: Vec<Planted> = serde_json::from_str(&std::fs::read_to_string(&truth).unwrap())
        .expect("the truth file parses");
    let run = Run::new(
        &truth,
        read_jsonl(&out.join("signals.trends.jsonl")),
        read_jsonl(&out.join("signals.alerts.jsonl")),
    );
    let quality = run.quality();
    println!(
        "trend_quality precision={:.3} recall={:.3} windows_to_detect={} spammer_trended={}",
        quality.precision,
        quality.recall,
        quality
            .windows_to_detect
            .map_or("none".to_string(), |windows| windows.to_string()),
        quality.spammer_trended
    );

    let diagnosis = run.diagnosis();
    assert!(
        quality.recall >= MIN_RECALL,
        "recall {:.3} < {MIN_RECALL}\n{diagnosis}",
        quality.recall
    );
    assert!(
        quality.precision >= MIN_PRECISION,
        "precision {:.3} < {MIN_PRECISION}\n{diagnosis}",
        quality.precision
    );
    assert!(
        quality
            .windows_to_detect
            .is_some_and(|windows| windows <= MAX_WINDOWS_TO_DETECT),
        "windows_to_detect {:?} > {MAX_WINDOWS_TO_DETECT}\n{diagnosis}",
        quality.windows_to_detect
    );
    assert!(!quality.spammer_trended, "the spammer trended\n{diagnosis}");
}

/// A planted trend, from the truth.
struct Trend {
    term: String,
    kind: TermKind,
    /// A phrase's words: they may trend along with it.
    components: Vec<String>,
    start_ms: EpochMs,
    end_ms: EpochMs,
    peak_posts_per_sec: f64,
    baseline_posts_per_sec: f64,
}

struct Spammer {
    term: String,
    kind: TermKind,
    author: String,
}

/// The first message of one occurrence of a trend alert.
struct Occurrence {
    term: String,
    /// The `kind` label: a [`TermKind`] name.
    kind: String,
    starts_at: EpochMs,
    summary: String,
}

struct Quality {
    precision: f64,
    recall: f64,
    windows_to_detect: Option<i64>,
    spammer_trended: bool,
}

/// A replay's trend outputs, with the truth they are judged against.
struct Run {
    trends: Vec<Trend>,
    spammer: Spammer,
    snapshots: Vec<TrendSnapshot>,
    trend_alerts: Vec<Alert>,
    occurrences: Vec<Occurrence>,
    window_ms: i64,
    alert_score: f64,
}

impl Run {
    fn new(truth: &[Planted], snapshots: Vec<TrendSnapshot>, alerts: Vec<Alert>) -> Run {
        let mut trends = Vec::new();
        let mut spammer = None;
        for planted in truth {
            match &planted.signal {
                PlantedSignal::Trend {
                    term,
                    kind,
                    components,
                    peak_posts_per_sec,
                    baseline_posts_per_sec,
                    ..
                } => trends.push(Trend {
                    term: term.clone(),
                    kind: *kind,
                    components: components.clone(),
                    start_ms: planted.start_ms,
                    end_ms: planted.end_ms,
                    peak_posts_per_sec: *peak_posts_per_sec,
                    baseline_posts_per_sec: *baseline_posts_per_sec,
                }),
                PlantedSignal::Spammer {
                    term, kind, author, ..
                } => {
                    spammer = Some(Spammer {
                        term: term.clone(),
                        kind: *kind,
                        author: author.clone(),
                    })
                }
                other => panic!("the trend-quality feed plants no {other:?}"),
            }
        }
        assert_eq!(trends.len(), 20, "every planted trend fits in the feed");
        let window_ms = snapshots
            .first()
            .map(|s| s.window_end - s.window_start)
            .expect("the replay wrote trend snapshots");
        assert!(
            snapshots
                .iter()
                .all(|s| s.window_end - s.window_start == window_ms),
            "one window size: this test reads alert times as the ends of those windows"
        );
        let trend_alerts: Vec<Alert> = alerts
            .into_iter()
            .filter(|alert| alert.cause == "trend")
            .collect();
        let occurrences = trend_alerts
            .iter()
            .filter(|alert| alert.status == AlertStatus::Firing)
            .map(|alert| Occurrence {
                term: alert.labels["term"].clone(),
                kind: alert.labels["kind"].clone(),
                starts_at: alert.starts_at,
                summary: alert.summary.clone(),
            })
            .collect();
        Run {
            trends,
            spammer: spammer.expect("the trend-quality feed plants a spammer"),
            snapshots,
            trend_alerts,
            occurrences,
            window_ms,
            alert_score: TrendConfig::default().alert_score,
        }
    }

    fn quality(&self) -> Quality {
        let attributed = self
            .occurrences
            .iter()
            .filter(|occurrence| self.trends.iter().any(|t| self.attributes(t, occurrence)))
            .count();
        let windows_to_alert: Vec<i64> = self
            .trends
            .iter()
            .filter_map(|trend| self.windows_to_alert(trend))
            .collect();
        let detected = windows_to_alert
            .iter()
            .filter(|&&windows| windows <= MAX_WINDOWS_TO_DETECT)
            .count();
        Quality {
            precision: ratio(attributed, self.occurrences.len()),
            recall: ratio(detected, self.trends.len()),
            windows_to_detect: windows_to_alert.into_iter().max(),
            spammer_trended: !self.spammer_hits().is_empty(),
        }
    }

    /// Whether `occurrence` is an alert on `trend` (its term or a phrase's word) fired by a
    /// window that overlaps the planted period extended by one window.
    fn attributes(&self, trend: &Trend, occurrence: &Occurrence) -> bool {
        let names_the_trend = (occurrence.kind == trend.kind.as_str()
            && occurrence.term == trend.term)
            || (occurrence.kind == TermKind::Word.as_str()
                && trend.components.contains(&occurrence.term));
        let window_start = occurrence.starts_at - self.window_ms;
        names_the_trend
            && occurrence.starts_at > trend.start_ms
            && window_start < trend.end_ms + self.window_ms
    }

    /// In which window of the trend (1 = the one where it starts) its first attributed
    /// alert on its own term fired.
    fn windows_to_alert(&self, trend: &Trend) -> Option<i64> {
        let first_window_start = self.window_start_of(trend.start_ms);
        self.occurrences
            .iter()
            .filter(|o| o.kind == trend.kind.as_str() && o.term == trend.term)
            .filter(|o| self.attributes(trend, o))
            .map(|o| (o.starts_at - first_window_start) / self.window_ms)
            .min()
    }

    /// Alert messages and snapshot entries in which the spammer's term trended.
    fn spammer_hits(&self) -> Vec<String> {
        let spammer = &self.spammer;
        let alerts = self
            .trend_alerts
            .iter()
            .filter(|a| {
                a.labels["kind"] == spammer.kind.as_str() && a.labels["term"] == spammer.term
            })
            .map(|a| {
                format!(
                    "alert {:?} at {}: {}",
                    a.status,
                    self.feed_time(a.updated_at),
                    a.summary
                )
            });
        let entries = self.snapshots.iter().flat_map(|snapshot| {
            snapshot
                .entries
                .iter()
                .filter(|e| e.kind == spammer.kind && e.term == spammer.term)
                .filter(|e| e.score >= self.alert_score)
                .map(|e| {
                    format!(
                        "window {}: count {} score {:.1}",
                        self.window_number(snapshot.window_start),
                        e.count,
                        e.score
                    )
                })
        });
        alerts.chain(entries).collect()
    }

    /// What a developer needs to see why a target was missed.
    fn diagnosis(&self) -> String {
        let mut text = String::from("missed or late trends (window 1 = where it starts):\n");
        for trend in &self.trends {
            let windows = self.windows_to_alert(trend);
            if windows.is_some_and(|w| w <= MAX_WINDOWS_TO_DETECT) {
                continue;
            }
            let first_window = self.window_start_of(trend.start_ms);
            let seen: Vec<String> = (0..MAX_WINDOWS_TO_DETECT)
                .map(|n| first_window + n * self.window_ms)
                .map(|window_start| {
                    let entry = self
                        .snapshots
                        .iter()
                        .filter(|s| s.window_start == window_start)
                        .flat_map(|s| &s.entries)
                        .find(|e| e.kind == trend.kind && e.term == trend.term);
                    match entry {
                        Some(e) => format!("count {} score {:.1}", e.count, e.score),
                        None => "not ranked".into(),
                    }
                })
                .collect();
            let _ = writeln!(
                text,
                "  {} {} (starts {}, peak {}/s over baseline {}/s): first windows [{}]; {}",
                trend.kind.as_str(),
                trend.term,
                self.feed_time(trend.start_ms),
                trend.peak_posts_per_sec,
                trend.baseline_posts_per_sec,
                seen.join(", "),
                windows.map_or("no alert".into(), |w| format!("alert in window {w}")),
            );
        }
        text.push_str("false-positive alerts:\n");
        for occurrence in &self.occurrences {
            if !self.trends.iter().any(|t| self.attributes(t, occurrence)) {
                let _ = writeln!(
                    text,
                    "  {} {} in window {}: {}",
                    occurrence.kind,
                    occurrence.term,
                    self.window_number(occurrence.starts_at - self.window_ms),
                    occurrence.summary
                );
            }
        }
        let _ = writeln!(
            text,
            "spammer {} ({} {}) trended in:",
            self.spammer.author,
            self.spammer.kind.as_str(),
            self.spammer.term
        );
        for hit in self.spammer_hits() {
            let _ = writeln!(text, "  {hit}");
        }
        text
    }

    fn window_start_of(&self, ts: EpochMs) -> EpochMs {
        ts - ts.rem_euclid(self.window_ms)
    }

    /// A window's number from the start of the feed, counting from 0 (its minute, with
    /// 1-minute windows).
    fn window_number(&self, window_start: EpochMs) -> i64 {
        (window_start - START_MS).div_euclid(self.window_ms)
    }

    /// An event time as minutes and seconds since the start of the feed: `12:05`.
    fn feed_time(&self, ts: EpochMs) -> String {
        let seconds = (ts - START_MS) / 1000;
        format!("{}:{:02}", seconds / 60, seconds % 60)
    }
}

/// `part / whole`, 0 when there is no whole.
fn ratio(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}
