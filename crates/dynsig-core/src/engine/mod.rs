//! The engine: inputs in, signals out. Ties the tokenizer, the event-time windows, the
//! trend and anomaly detectors and the alert book together; owns no clock and does no
//! I/O (the service feeds it inputs and wall-clock ticks and publishes what it returns).
//!
//! It keeps one or more *window views*: the main window (`window.size_ms`/`hop_ms`) and
//! the `window.extra` ones, each with its own open windows, term baselines and series
//! detectors. Per window a view counts: posts (`events` of the trend snapshot); every
//! term of every post (with distinct authors and example post ids); the series
//! `posts.source=<source>` (source "" → `unknown`); the series `terms.term=<term>` of
//! each watched term; and for internal events the series `events.kind=<kind>,key=<key>`
//! summing `value` (`,key=` omitted when the key is ""). When a window closes it emits,
//! in this order: its trend snapshot, its anomalies at or above `anomaly.publish_score`,
//! and (main view only) its alert transitions. In update mode, open windows also emit
//! snapshots as they fill, each with the next revision number.
//!
//! An input is refused, and not counted anywhere, when it is *late* (the first of its
//! windows to close has closed) or stamped too far in the *future* of the wall clock.

use std::collections::HashMap;
use std::hash::BuildHasher;

use crate::alert::text::WindowFacts;
use crate::alert::WindowSpan;
use crate::alerting::AlertStage;
use crate::anomaly::{AnomalyDetector, DETECTOR_NAME};
use crate::authors::author_hash;
use crate::catalog::{ActorMatcher, MatchScratch};
use crate::co_mentions::{CoMentionConfig, CoMentions, WindowPairs};
use crate::config::{effective_hop, window_name, ConfigError, EmitMode, EngineConfig, Stream};
use crate::decode::RejectReason;
use crate::model::{
    Anomaly, EcosystemSnapshot, EpochMs, Input, Origin, Post, Signal, Term, TermKind, TrendSnapshot,
};
use crate::routing::RoutingError;
use crate::shard::Shard;
use crate::term_key;
use crate::tokenizer::{Tokenizer, TokenizerError};
use crate::trend::TrendDetector;
use crate::watermark::{Watermark, UNPARTITIONED};
use crate::window::{ClosedWindow, Windows};
use crate::window_alerts::{self, ACTOR_SERIES_PREFIX};
use crate::window_terms::WindowTerms;

mod state;
mod terms;
pub(crate) use state::encode as encode_state;
pub use state::{RestoreError, StateSnapshot};
pub use terms::{PostTerms, TermExtractor};

/// Why the engine did not count an input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refused {
    /// The first window of the input to close had already closed.
    Late {
        window_end: EpochMs,
        watermark: EpochMs,
    },
    /// The input's time is more than `window.max_future_ms` ahead of the wall clock.
    Future { limit: EpochMs },
}

impl Refused {
    /// The reason a rejection of this input carries (its dead-letter record, metrics).
    pub fn reason(self) -> RejectReason {
        match self {
            Refused::Late { .. } => RejectReason::Late,
            Refused::Future { .. } => RejectReason::Future,
        }
    }
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
    #[error("invalid config: {0}")]
    Routing(#[from] RoutingError),
}

/// What one open window accumulates.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct WindowCounts {
    posts: u64,
    terms: WindowTerms,
    /// Actor pairs mentioned together (main view, with a catalog).
    pairs: WindowPairs,
    /// The catalog generation the window opened with: its terms' actor votes are
    /// positions in that catalog.
    catalog_generation: u64,
    /// Series name → value in this window (foldhash: looked up once per input, and
    /// SipHash was ~1% of the whole pipeline).
    series: HashMap<String, f64, foldhash::quality::RandomState>,
    /// Snapshots emitted so far (update mode).
    revision: u32,
    /// Counted something since the last snapshot.
    changed: bool,
}

/// A configured watch term, normalized the way the tokenizer emits it.
#[derive(Debug)]
struct WatchTerm {
    /// As in [`crate::term_key`].
    key: String,
    series: String,
}

/// One window size (and hop) over the inputs, with its own detectors.
struct View {
    name: String,
    counts_posts: bool,
    counts_events: bool,
    windows: Windows<WindowCounts>,
    trends: TrendDetector,
    anomalies: AnomalyDetector,
    /// The earliest input time seen before this view closed its first window: windows
    /// starting before it were covered only in part (the service started inside them).
    started_at: Option<EpochMs>,
    closed_any: bool,
    /// The emptied counts of a closed window, reused by the next window to open: a
    /// sketch refilled in place does not grow and rehash again from empty every window.
    spare_terms: Option<WindowTerms>,
}

impl View {
    /// The fraction of the window `[start, end)` that the input covered (see
    /// `started_at`), at least 10%, so that a sliver of a window is not blown up.
    fn coverage(&self, start: EpochMs, end: EpochMs) -> f64 {
        let Some(started_at) = self.started_at else {
            return 1.0;
        };
        let covered = end - start.max(started_at);
        (covered as f64 / (end - start) as f64).clamp(0.1, 1.0)
    }

    fn counts(&self, input: &Input) -> bool {
        match input {
            Input::Post(_) => self.counts_posts,
            Input::Event(_) => self.counts_events,
        }
    }
}

pub struct Engine {
    /// The config as JSON: a checkpoint restores only under the same (see [`state`]).
    config_json: String,
    extractor: TermExtractor,
    /// The main view first: it alone drives alerts.
    views: Vec<View>,
    watermark: Watermark,
    alerting: AlertStage,
    /// The actor catalog, when one is loaded; `catalog_generation` counts the loads.
    catalog: Option<ActorMatcher>,
    catalog_generation: u64,
    co_mentions: CoMentions,
    co_mention_config: CoMentionConfig,
    /// The stage's clock was last flushed at this watermark.
    flushed_at: Option<EpochMs>,
    watch_terms: Vec<WatchTerm>,
    publish_score: f64,
    terms_per_window: usize,
    count_authors: bool,
    allowed_lateness_ms: i64,
    max_future_ms: i64,
    emit: EmitMode,
    update_every_ms: i64,
    /// Event time at which open windows next emit an update (update mode).
    next_update_at: Option<EpochMs>,
    /// The latest wall-clock tick: the reference of the future check.
    wall_now: Option<EpochMs>,
    /// Numbers posts that have neither author nor id, so that each counts as its own author.
    anonymous_posts: u64,
    /// Reused buffers: tokenizing and series keys allocate nothing per input once warm.
    /// The current post's terms (its text's, then one per catalog actor it mentions).
    terms: PostTerms,
    series_scratch: String,
    match_scratch: MatchScratch,
    /// The catalog positions of the actors the current post mentions.
    post_actors: Vec<usize>,
    /// Their series keys (`actors.actor=<id>`), concatenated; each ends at `actor_series_ends[i]`.
    actor_series: String,
    actor_series_ends: Vec<usize>,
    /// The terms and series this engine counts (see [`crate::shard`]).
    shard: Shard,
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
        let w = &config.window;
        let main = (w.size_ms, w.hop_ms, vec![Stream::Posts, Stream::Events]);
        let extra = w
            .extra
            .iter()
            .map(|e| (e.size_ms, e.hop_ms, e.streams.clone()));
        let views = std::iter::once(main)
            .chain(extra)
            .map(|(size, hop, streams)| View {
                name: window_name(size, hop),
                counts_posts: streams.contains(&Stream::Posts),
                counts_events: streams.contains(&Stream::Events),
                windows: Windows::new(size, effective_hop(size, hop)),
                trends: TrendDetector::new(&config.trends),
                anomalies: AnomalyDetector::new(&config.anomaly),
                started_at: None,
                closed_any: false,
                spare_terms: None,
            })
            .collect();
        Ok(Engine {
            config_json: serde_json::to_string(&config).expect("a config serializes"),
            views,
            watermark: Watermark::new(w.allowed_lateness_ms, w.idle_timeout_ms),
            alerting: AlertStage::new(&config)?,
            catalog: None,
            catalog_generation: 0,
            co_mentions: CoMentions::default(),
            co_mention_config: config.co_mentions.clone(),
            flushed_at: None,
            watch_terms,
            publish_score: config.anomaly.publish_score,
            terms_per_window: config.trends.max_terms_per_window,
            count_authors: config.trends.author_cap > 0,
            allowed_lateness_ms: w.allowed_lateness_ms,
            max_future_ms: w.max_future_ms,
            emit: w.emit,
            update_every_ms: w.update_every_ms,
            next_update_at: None,
            wall_now: None,
            anonymous_posts: 0,
            extractor: TermExtractor::new(tokenizer),
            terms: PostTerms::default(),
            series_scratch: String::new(),
            match_scratch: MatchScratch::default(),
            post_actors: Vec::new(),
            actor_series: String::new(),
            actor_series_ends: Vec::new(),
            shard: Shard::WHOLE,
        })
    }

    /// Loads (or reloads) the actor catalog. Posts are matched against it from now on;
    /// windows already open keep their counts, but their terms are tagged with actors
    /// only if they opened with this catalog.
    pub fn set_catalog(&mut self, catalog: ActorMatcher) {
        self.catalog = Some(catalog);
        self.catalog_generation += 1;
    }

    pub fn catalog(&self) -> Option<&ActorMatcher> {
        self.catalog.as_ref()
    }

    /// Makes this engine one of several that share the keys: from now on it counts only
    /// the terms and series `shard` owns, though it still takes every input (see
    /// [`crate::shard`]). Its alert messages are then published unfiltered: the shards'
    /// merge filters them ([`crate::shard_merge`]). Set before the first input; a
    /// checkpoint restores only into an engine of the same shard.
    pub fn set_shard(&mut self, shard: Shard) {
        self.shard = shard;
        self.alerting.set_filtered_elsewhere(!shard.is_whole());
    }

    pub fn shard(&self) -> Shard {
        self.shard
    }

    /// Adds one input to every window of every view that counts it, or refuses it (see
    /// [`Refused`]); a refused input is counted nowhere, and the caller dead-letters it.
    pub fn ingest(&mut self, input: &Input, origin: Option<Origin>) -> Result<(), Refused> {
        if let Input::Post(post) = input {
            self.extractor.extract(&post.text, &mut self.terms);
        }
        self.ingest_extracted(input, origin)
    }

    /// [`Engine::ingest`] for a post whose terms were already extracted (by this engine's
    /// [`Engine::term_extractor`], e.g. on another thread); `terms` is left with what the
    /// engine added to them (catalog actors), to be overwritten by the next extraction.
    pub fn ingest_with_terms(
        &mut self,
        input: &Input,
        origin: Option<Origin>,
        terms: &mut PostTerms,
    ) -> Result<(), Refused> {
        std::mem::swap(&mut self.terms, terms);
        let result = self.ingest_extracted(input, origin);
        std::mem::swap(&mut self.terms, terms);
        result
    }

    /// A copy of the engine's tokenizer, for [`Engine::ingest_with_terms`].
    pub fn term_extractor(&self) -> TermExtractor {
        self.extractor.clone()
    }

    /// [`Engine::ingest`] once a post's text terms are in `self.terms`.
    fn ingest_extracted(&mut self, input: &Input, origin: Option<Origin>) -> Result<(), Refused> {
        let ts = input.ts();
        // The tokenizer's terms, before any actor's.
        let extracted = self.terms.count();
        self.check_time(input, ts)?;
        self.watermark
            .observe(origin.map_or(UNPARTITIONED, |o| o.partition), ts);
        // The series this input adds to, by how much, and for a post its author (its
        // terms are in `terms`).
        let key = &mut self.series_scratch;
        key.clear();
        let (value, post) = match input {
            Input::Post(post) => {
                // push_str, not write!: the formatting machinery cost ~2% per post.
                key.push_str("posts.source=");
                key.push_str(or_unknown(&post.source));
                // The author is only used by the author sets.
                let author = if self.count_authors {
                    self.author_of(post)
                } else {
                    0
                };
                self.collect_actors(post);
                (1.0, Some((post, author)))
            }
            Input::Event(event) => {
                key.push_str("events.kind=");
                key.push_str(or_unknown(&event.kind));
                if !event.key.is_empty() {
                    key.push_str(",key=");
                    key.push_str(&event.key);
                }
                // A NaN or infinite value would poison the series' detector for good.
                let value = if event.value.is_finite() {
                    event.value
                } else {
                    0.0
                };
                (value, None)
            }
        };
        let first_actor = self.post_actors.first().copied();
        let shard = self.shard;
        let owns_series = shard.owns_series(&self.series_scratch);
        if !shard.is_whole() {
            // Terms split for this shard already are its own: only the actors' terms
            // matched here need the check.
            let checked = match self.terms.owner() {
                Some(owner) if owner == shard => extracted,
                _ => 0,
            };
            self.terms.retain_from(checked, |key| shard.owns_term(key));
        }
        let counts_pairs = self.post_actors.len() > 1 && shard.owns_co_mentions();
        for (v, view) in self.views.iter_mut().enumerate() {
            if !view.counts(input) {
                continue;
            }
            if !view.closed_any {
                view.started_at = Some(view.started_at.map_or(ts, |s| s.min(ts)));
            }
            for start in view.windows.starts_containing(ts) {
                let counts = open(
                    &mut view.windows,
                    &mut view.spare_terms,
                    start,
                    origin,
                    self.catalog_generation,
                    || WindowTerms::new(self.terms_per_window, self.count_authors),
                );
                if owns_series {
                    add_to_series(&mut counts.series, &self.series_scratch, value);
                }
                let Some((post, author)) = post else {
                    continue;
                };
                counts.posts += 1;
                let post_ref = counts.terms.add_post(&post.id);
                // Generation 0: the window opened before any catalog, so its terms are
                // never tagged with actors (see `close_window`) and need no actor votes.
                let tags_actors = counts.catalog_generation != 0;
                if tags_actors {
                    let terms = self.terms.iter();
                    counts.terms.add_about(terms, author, post_ref, first_actor);
                } else {
                    counts.terms.add(self.terms.iter(), author, post_ref);
                }
                for series in split_at_ends(&self.actor_series, &self.actor_series_ends) {
                    add_to_series(&mut counts.series, series, 1.0);
                }
                if v == 0 && counts_pairs {
                    if let Some(catalog) = &self.catalog {
                        let actors = catalog.actors();
                        let ids: Vec<&str> = self
                            .post_actors
                            .iter()
                            .map(|&i| actors[i].id.as_str())
                            .collect();
                        counts.pairs.record(&ids, &self.co_mention_config);
                    }
                }
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

    /// Wall-clock tick (the service calls it ~every 10 ms, replay never). If no input was
    /// ingested since the previous tick for `window.idle_timeout_ms` (wall
    /// time), the watermark advances by the wall time elapsed since the last input, so
    /// quiet streams still close windows. idle_timeout_ms = 0 disables it. The tick is
    /// also the clock of the future check.
    pub fn tick(&mut self, wall_now: EpochMs) {
        self.wall_now = Some(wall_now);
        self.watermark.tick(wall_now);
    }

    /// Input partition `partition` (as in [`Origin::partition`]) has records not read yet:
    /// see [`Watermark::note_backlog`]. The service calls it before each tick.
    pub fn note_backlog(&mut self, partition: u32) {
        self.watermark.note_backlog(partition);
    }

    /// Input partition `partition`'s reader, another process, says it has read it all:
    /// see [`Watermark::confirm_read_out`].
    pub fn confirm_read_out(&mut self, partition: u32) {
        self.watermark.confirm_read_out(partition);
    }

    /// A wall-clock tick while the input cannot be read (see
    /// [`Watermark::suspend_idle`]): the service calls it instead of [`Engine::tick`] while
    /// it owns no partition or the broker is unreachable.
    pub fn suspend_idle(&mut self, wall_now: EpochMs) {
        self.wall_now = Some(wall_now);
        self.watermark.suspend_idle(wall_now);
    }

    /// Closes every window whose end <= watermark (oldest first, main view first) and
    /// returns, per closed window: its trend snapshot, its anomalies scoring >=
    /// `anomaly.publish_score`, (main view) its co-mention graph when a catalog is
    /// loaded, its alert messages, then the notifications and digests due. In update
    /// mode, then the update snapshots of open windows that are due. Between windows, the
    /// notifications whose grouping wait ends as the watermark advances.
    pub fn poll_closed(&mut self) -> Vec<Signal> {
        let Some(watermark) = self.watermark.value() else {
            return Vec::new();
        };
        let mut signals = self.close_windows_ended_by(watermark);
        // Grouping waits are seconds long: a flush per second of event time is enough.
        if self
            .flushed_at
            .is_none_or(|at| watermark >= at.saturating_add(1_000))
        {
            self.flushed_at = Some(watermark);
            self.alerting.flush(watermark, &mut signals);
        }
        if self.emit == EmitMode::Updates {
            self.emit_due_updates(
                watermark.saturating_add(self.allowed_lateness_ms),
                &mut signals,
            );
        }
        signals
    }

    /// Whether [`Engine::poll_closed`] would close a window now. Cheap: a caller that
    /// times closes asks first, so that it reads the clock only when one closes rather
    /// than on every poll (one per input in a replay).
    pub fn has_window_to_close(&self) -> bool {
        let Some(watermark) = self.watermark.value() else {
            return false;
        };
        self.views
            .iter()
            .any(|view| view.windows.first_end().is_some_and(|end| end <= watermark))
    }

    /// End of a finite input (replay): closes all open windows as if the watermark were
    /// +inf, same output as poll_closed. The watermark then stands at the last window's
    /// end, so stragglers for the closed windows are late.
    pub fn finish(&mut self) -> Vec<Signal> {
        let mut signals = self.close_windows_ended_by(EpochMs::MAX);
        // Nothing more will come: what waits for its group goes out now.
        if let Some(last) = self.watermark.value() {
            self.alerting
                .flush(last.saturating_add(1_000_000_000), &mut signals);
        }
        signals
    }

    /// Smallest offset of input partition `partition` still held by an open window; None
    /// when no open window holds one.
    pub fn held_offset(&self, partition: u32) -> Option<i64> {
        self.views
            .iter()
            .filter_map(|v| v.windows.held_offset(partition))
            .min()
    }

    /// [`Engine::held_offset`] over every partition: for a shard, whose inputs' offsets
    /// are those of its one partition of the repartition topic, whatever input partition
    /// they came from.
    pub fn earliest_held_offset(&self) -> Option<i64> {
        self.views
            .iter()
            .filter_map(|v| v.windows.earliest_held_offset())
            .min()
    }

    pub fn watermark(&self) -> Option<EpochMs> {
        self.watermark.value()
    }

    /// Open windows over all views.
    pub fn open_windows(&self) -> usize {
        self.views.iter().map(|v| v.windows.len()).sum()
    }

    /// The alert stage: active alerts, silences, feedback (for the HTTP API).
    pub fn alerting(&self) -> &AlertStage {
        &self.alerting
    }

    pub fn alerting_mut(&mut self) -> &mut AlertStage {
        &mut self.alerting
    }

    fn check_time(&self, input: &Input, ts: EpochMs) -> Result<(), Refused> {
        if let Some(now) = self.wall_now.filter(|_| self.max_future_ms > 0) {
            let limit = now.saturating_add(self.max_future_ms);
            if ts > limit {
                return Err(Refused::Future { limit });
            }
        }
        let Some(watermark) = self.watermark.value() else {
            return Ok(());
        };
        let first_end = self
            .views
            .iter()
            .filter(|v| v.counts(input))
            .map(|v| v.windows.earliest_end(ts))
            .min();
        match first_end {
            Some(window_end) if window_end <= watermark => Err(Refused::Late {
                window_end,
                watermark,
            }),
            _ => Ok(()),
        }
    }

    /// The author hash of a post. Posts without an author count as distinct authors
    /// (by id, or one each), since nothing says two of them share one.
    fn author_of(&mut self, post: &Post) -> u64 {
        if !post.author.is_empty() {
            author_hash(&post.author)
        } else if !post.id.is_empty() {
            author_hash(&post.id).rotate_left(1)
        } else {
            self.anonymous_posts += 1;
            author_hash(&self.anonymous_posts.to_string()).rotate_left(2)
        }
    }

    /// Matches the post against the catalog into `post_actors` and their series keys,
    /// and adds one `actor` term per actor to the post's terms.
    fn collect_actors(&mut self, post: &Post) {
        self.post_actors.clear();
        self.actor_series.clear();
        self.actor_series_ends.clear();
        let Some(catalog) = &self.catalog else {
            return;
        };
        catalog.find_indexes(
            &post.text,
            &post.lang,
            &mut self.match_scratch,
            &mut self.post_actors,
        );
        for &actor in &self.post_actors {
            let id = &catalog.actors()[actor].id;
            self.terms.push(TermKind::Actor, id);
            // An actor's series lives with the actor's term (see `crate::shard`).
            if self.shard.is_whole() || self.terms.last().is_some_and(|k| self.shard.owns_term(k)) {
                self.actor_series.push_str(ACTOR_SERIES_PREFIX);
                self.actor_series.push_str(id);
                self.actor_series_ends.push(self.actor_series.len());
            }
        }
    }

    fn close_windows_ended_by(&mut self, limit: EpochMs) -> Vec<Signal> {
        let mut signals = Vec::new();
        for v in 0..self.views.len() {
            while let Some(closed) = self.views[v].windows.pop_ended_by(limit) {
                self.watermark.raise_to(closed.end);
                self.close_window(v, closed, &mut signals);
            }
        }
        signals
    }

    fn close_window(
        &mut self,
        v: usize,
        closed: ClosedWindow<WindowCounts>,
        signals: &mut Vec<Signal>,
    ) {
        let ClosedWindow {
            start,
            end,
            state: mut counts,
        } = closed;
        for watch in &self.watch_terms {
            if let Some(counted) = counts.terms.get(&watch.key) {
                counts
                    .series
                    .insert(watch.series.clone(), counted.count as f64);
            }
        }
        let view = &mut self.views[v];
        view.closed_any = true;
        let index = view.windows.index(start);
        let coverage = view.coverage(start, end);
        let mut entries = view
            .trends
            .close_partial_window(index, &counts.terms, coverage);
        let tagging_catalog = self
            .catalog
            .as_ref()
            .filter(|_| counts.catalog_generation == self.catalog_generation);
        window_alerts::tag_actors(&mut entries, &counts.terms, tagging_catalog);
        let scores = view.anomalies.close_window(start, &counts.series);
        let span = WindowSpan { start, end };
        let mut alerts = Vec::new();
        if v == 0 {
            let window = WindowFacts {
                name: &view.name,
                span,
            };
            window_alerts::evaluate(
                &mut self.alerting,
                self.catalog.as_ref(),
                &view.trends,
                window,
                &entries,
                &scores,
                &counts.terms,
                &mut alerts,
            );
        }
        signals.push(Signal::Trend(TrendSnapshot {
            window: view.name.clone(),
            window_start: start,
            window_end: end,
            revision: counts.revision + 1,
            is_final: true,
            events: counts.posts,
            distinct_terms: counts.terms.len() as u64,
            entries,
        }));
        if let Some(mut spare) = view.trends.retire(counts.terms) {
            spare.clear();
            view.spare_terms = Some(spare);
        }
        signals.extend(
            scores
                .into_iter()
                .filter(|s| s.score >= self.publish_score)
                .map(|s| {
                    Signal::Anomaly(Anomaly {
                        window: view.name.clone(),
                        actor: s
                            .series
                            .strip_prefix(ACTOR_SERIES_PREFIX)
                            .map(str::to_owned),
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
        if v == 0 {
            if self.catalog.is_some() && self.shard.owns_co_mentions() {
                let graph = self
                    .co_mentions
                    .close_window(counts.pairs, &self.co_mention_config);
                signals.push(Signal::Ecosystem(EcosystemSnapshot {
                    window: view.name.clone(),
                    window_start: start,
                    window_end: end,
                    graph,
                }));
            }
            self.alerting.dispatch(alerts, end, signals);
        }
    }

    /// Update mode: once event time (`now`) reaches the next multiple of
    /// `update_every_ms`, every open window that counted something since its last
    /// snapshot emits one, scored against the elapsed part of its baselines.
    fn emit_due_updates(&mut self, now: EpochMs, signals: &mut Vec<Signal>) {
        if self.next_update_at.is_some_and(|due| now < due) {
            return;
        }
        let every = self.update_every_ms;
        self.next_update_at = Some(
            now.div_euclid(every)
                .saturating_add(1)
                .saturating_mul(every),
        );
        for view in &mut self.views {
            let View {
                name,
                windows,
                trends,
                ..
            } = view;
            let (size, hop) = (windows.size_ms(), windows.hop_ms());
            for (start, counts) in windows.iter_mut().filter(|(_, c)| c.changed) {
                counts.changed = false;
                counts.revision += 1;
                let elapsed = ((now - start) as f64 / size as f64).clamp(0.01, 1.0);
                signals.push(Signal::Trend(TrendSnapshot {
                    window: name.clone(),
                    window_start: start,
                    window_end: start.saturating_add(size),
                    revision: counts.revision,
                    is_final: false,
                    events: counts.posts,
                    distinct_terms: counts.terms.len() as u64,
                    entries: trends.score_open_window(
                        start.div_euclid(hop),
                        &counts.terms,
                        elapsed,
                    ),
                }));
            }
        }
    }
}

/// The counts of the window starting at `start`, opened if needed with the spare terms
/// (or `new_terms()` when there are none).
fn open<'a>(
    windows: &'a mut Windows<WindowCounts>,
    spare_terms: &mut Option<WindowTerms>,
    start: EpochMs,
    origin: Option<Origin>,
    catalog_generation: u64,
    new_terms: impl FnOnce() -> WindowTerms,
) -> &'a mut WindowCounts {
    let counts = windows.state_mut(start, origin, || WindowCounts {
        posts: 0,
        terms: spare_terms.take().unwrap_or_else(new_terms),
        pairs: WindowPairs::default(),
        catalog_generation,
        series: HashMap::default(),
        revision: 0,
        changed: false,
    });
    counts.changed = true;
    counts
}

/// The pieces of `joined`, each ending at the next of `ends`.
fn split_at_ends<'a>(joined: &'a str, ends: &'a [usize]) -> impl Iterator<Item = &'a str> + 'a {
    let starts = std::iter::once(0).chain(ends.iter().copied());
    starts.zip(ends).map(|(start, &end)| &joined[start..end])
}

fn or_unknown(name: &str) -> &str {
    if name.is_empty() {
        "unknown"
    } else {
        name
    }
}

/// Adds `value` to a series, allocating its key only the first time in a window.
fn add_to_series<S: BuildHasher>(series: &mut HashMap<String, f64, S>, key: &str, value: f64) {
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
        Ok([term]) => Ok(WatchTerm {
            series: format!("terms.term={}", term.text),
            key: term_key::key(term.kind, &term.text),
        }),
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
    use crate::config::{AnomalyConfig, EmitMode, ExtraWindow, Stream, TrendConfig, WindowConfig};
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
                ..WindowConfig::default()
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
            .map(|a| {
                (
                    a.dedup_key.as_str(),
                    a.status,
                    (a.updated_at - BASE) / MINUTE,
                )
            })
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
            .find(|a| a.dedup_key == "trend:hashtag:#acmefire")
            .unwrap();
        assert_eq!(fired.title, "Trending hashtag #acmefire");
        assert_eq!(
            fired.id,
            format!("trend:hashtag:#acmefire@{}", BASE + 7 * MINUTE)
        );
        assert!(
            fired
                .summary
                .starts_with("#acmefire is trending in 1m: 120 mentions by "),
            "{}",
            fired.summary
        );
        let error_alert = alerts
            .iter()
            .find(|a| a.dedup_key == "anomaly:events.kind=error,key=checkout")
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
        assert_eq!(error_anomaly.detector, DETECTOR_NAME);
    }

    #[test]
    fn each_window_emits_snapshot_then_anomalies_then_alerts() {
        let signals = run(12);
        let rank = |s: &Signal| match s {
            Signal::Trend(_) => 0,
            Signal::Anomaly(_) => 1,
            Signal::Ecosystem(_) => 2,
            Signal::Alert(_) => 3,
            Signal::Notification(_) | Signal::Digest(_) => 4,
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
            Refused::Late {
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
        let cases: [(BreakConfig, &str); 11] = [
            (|c| c.window.size_ms = 0, "window.size_ms"),
            (|c| c.window.hop_ms = 7_000, "window.hop_ms"),
            (
                |c| {
                    c.window.extra = vec![ExtraWindow {
                        size_ms: MINUTE,
                        hop_ms: 0,
                        streams: vec![Stream::Posts],
                    }]
                },
                "window.extra",
            ),
            (|c| c.window.max_future_ms = -1, "window.max_future_ms"),
            (
                |c| {
                    c.window.emit = EmitMode::Updates;
                    c.window.update_every_ms = 0;
                },
                "window.update_every_ms",
            ),
            (
                |c| c.trends.max_terms_per_window = 0,
                "trends.max_terms_per_window",
            ),
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

    fn snapshots(signals: &[Signal]) -> Vec<&TrendSnapshot> {
        signals
            .iter()
            .filter_map(|s| match s {
                Signal::Trend(t) => Some(t),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn extra_hopping_windows_count_every_input_they_contain() {
        let mut config = config();
        config.window.extra = vec![ExtraWindow {
            size_ms: 3 * MINUTE,
            hop_ms: MINUTE,
            streams: vec![Stream::Posts],
        }];
        let mut engine = Engine::new(config).unwrap();
        let mut signals = Vec::new();
        for minute in 0..5 {
            engine
                .ingest(&post(BASE + minute * MINUTE + 1_000, "a", "rocket"), None)
                .unwrap();
            engine
                .ingest(
                    &event(BASE + minute * MINUTE + 2_000, "error", "", 1.0),
                    None,
                )
                .unwrap();
            signals.extend(engine.poll_closed());
        }
        signals.extend(engine.finish());
        let counts = |name: &str| -> Vec<(i64, u64)> {
            snapshots(&signals)
                .into_iter()
                .filter(|t| t.window == name)
                .map(|t| ((t.window_start - BASE) / MINUTE, t.events))
                .collect()
        };
        assert_eq!(counts("1m"), [(0, 1), (1, 1), (2, 1), (3, 1), (4, 1)]);
        assert_eq!(
            counts("3m/1m"),
            [(-2, 1), (-1, 2), (0, 3), (1, 3), (2, 3), (3, 2), (4, 1)],
            "each post in the 3 windows containing it"
        );
        let extra_series: Vec<&str> = signals
            .iter()
            .filter_map(|s| match s {
                Signal::Anomaly(a) if a.window == "3m/1m" => Some(a.series.as_str()),
                _ => None,
            })
            .collect();
        assert!(
            extra_series.iter().all(|s| s.starts_with("posts.")),
            "the extra window counts posts only: {extra_series:?}"
        );
    }

    #[test]
    fn inputs_too_far_ahead_of_the_wall_clock_are_refused() {
        let mut engine = Engine::new(config()).unwrap();
        let limit = BASE + WindowConfig::default().max_future_ms;
        engine
            .ingest(&post(limit + 1, "a", "from the future"), None)
            .unwrap();
        // No wall clock yet (a replay): nothing to compare with.
        let mut engine = Engine::new(config()).unwrap();
        engine.tick(BASE);
        assert_eq!(
            engine.ingest(&post(limit + 1, "a", "from the future"), None),
            Err(Refused::Future { limit })
        );
        assert_eq!(
            engine.ingest(&post(limit, "a", "just in time"), None),
            Ok(())
        );
    }

    #[test]
    fn update_mode_emits_numbered_revisions_then_the_final_one() {
        let mut config = config();
        config.window.emit = EmitMode::Updates;
        config.window.update_every_ms = 20_000;
        let mut engine = Engine::new(config).unwrap();
        let mut signals = Vec::new();
        for seconds in [0, 10, 25, 45, 70] {
            engine
                .ingest(&post(BASE + seconds * 1_000, "a", "rocket launch"), None)
                .unwrap();
            signals.extend(engine.poll_closed());
        }
        signals.extend(engine.finish());
        let revisions: Vec<(i64, u32, bool, u64)> = snapshots(&signals)
            .into_iter()
            .map(|t| {
                (
                    (t.window_start - BASE) / MINUTE,
                    t.revision,
                    t.is_final,
                    t.events,
                )
            })
            .collect();
        assert_eq!(
            revisions,
            [
                (0, 1, false, 1),
                (0, 2, false, 3),
                (0, 3, false, 4),
                (0, 4, true, 4),
                (1, 1, false, 1),
                (1, 2, true, 1),
            ]
        );
    }
}
