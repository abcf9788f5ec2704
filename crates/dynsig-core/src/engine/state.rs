//! The engine's state as one value, for checkpoints ([`Engine::save_state`] and
//! [`Engine::restore_state`]): every open window with what it counted (term sketches,
//! distinct authors, examples, series, the input offsets it holds), each view's term
//! baselines and series detectors, the watermark, the alert stage (lifecycle, metafilter,
//! silences, feedback), the co-mention baselines and the engine's counters.
//!
//! Not saved: what the engine builds from its config (the tokenizer, watch terms), the
//! catalog (loaded from its file), and scratch buffers. The state carries the engine
//! config it was made with, and restores only into an engine built with the same one:
//! windows of another size, or thresholds that the saved alert stage would silently
//! override, would make a wrong engine, so a changed config refuses the checkpoint and
//! the service rebuilds its state from the inputs instead.
//!
//! Encoding: CBOR (self-describing, so the model types' optional fields round-trip);
//! floats are stored exactly.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::{Engine, WindowCounts};
use crate::alerting::AlertStage;
use crate::anomaly::AnomalyDetector;
use crate::co_mentions::CoMentions;
use crate::model::EpochMs;
use crate::shard::Shard;
use crate::trend::TrendDetector;
use crate::watermark::Watermark;
use crate::window::Windows;

/// Bumped when the layout changes: an older checkpoint is then refused, not misread.
const FORMAT: u32 = 1;

/// Why a checkpoint was not restored. The engine is unchanged in every case.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("checkpoint unreadable: {0}")]
    Decode(String),
    #[error("checkpoint format {found}, this build reads {FORMAT}")]
    Format { found: u32 },
    #[error("checkpoint made with another engine config")]
    ConfigChanged,
    #[error("checkpoint of shard {saved:?}, this engine is shard {this:?}")]
    OtherShard { saved: Shard, this: Shard },
}

/// Borrowed when saving, owned when restoring: one layout for both directions.
#[derive(Serialize, Deserialize)]
struct EngineState<'a> {
    format: u32,
    /// The engine config, as JSON (see the module docs).
    config: Cow<'a, str>,
    views: Vec<ViewState<'a>>,
    watermark: Cow<'a, Watermark>,
    alerting: Cow<'a, AlertStage>,
    co_mentions: Cow<'a, CoMentions>,
    /// The catalog's actor ids, in order, when the state was saved: windows remember the
    /// catalog generation they opened with, which stays valid only for the same actors.
    catalog_actors: Vec<Cow<'a, str>>,
    catalog_generation: u64,
    flushed_at: Option<EpochMs>,
    next_update_at: Option<EpochMs>,
    anonymous_posts: u64,
    /// The keys the state is about (checkpoints before sharding: the whole).
    #[serde(default)]
    shard: Shard,
}

#[derive(Serialize, Deserialize)]
struct ViewState<'a> {
    windows: Cow<'a, Windows<WindowCounts>>,
    trends: Cow<'a, TrendDetector>,
    anomalies: Cow<'a, AnomalyDetector>,
    started_at: Option<EpochMs>,
    closed_any: bool,
}

/// A copy of the engine's state, taken in one step and encoded later, elsewhere (the
/// service encodes it on another thread): copying costs a fraction of encoding, so the
/// pipeline stops only for the copy. It holds a second copy of the state until encoded.
pub struct StateSnapshot(EngineState<'static>);

impl StateSnapshot {
    /// Writes the state, encoded as [`Engine::save_state_into`] does, to `out`.
    pub fn write_into<W: std::io::Write>(&self, out: W) -> std::io::Result<()> {
        encode(&self.0, out)
    }
}

/// A state as CBOR (the engine's, or another stage's that is checkpointed alike).
pub(crate) fn encode<W: std::io::Write>(state: &impl Serialize, out: W) -> std::io::Result<()> {
    ciborium::into_writer(state, out).map_err(|error| match error {
        ciborium::ser::Error::Io(error) => error,
        // Every part of the state is a plain value CBOR can hold.
        ciborium::ser::Error::Value(message) => std::io::Error::other(message),
    })
}

/// A borrowed part as an owned one.
fn owned<T: Clone>(part: Cow<'_, T>) -> Cow<'static, T> {
    Cow::Owned(part.into_owned())
}

impl EngineState<'_> {
    fn into_owned(self) -> EngineState<'static> {
        EngineState {
            format: self.format,
            config: Cow::Owned(self.config.into_owned()),
            views: self
                .views
                .into_iter()
                .map(|view| ViewState {
                    windows: owned(view.windows),
                    trends: owned(view.trends),
                    anomalies: owned(view.anomalies),
                    started_at: view.started_at,
                    closed_any: view.closed_any,
                })
                .collect(),
            watermark: owned(self.watermark),
            alerting: owned(self.alerting),
            co_mentions: owned(self.co_mentions),
            catalog_actors: self
                .catalog_actors
                .into_iter()
                .map(|id| Cow::Owned(id.into_owned()))
                .collect(),
            catalog_generation: self.catalog_generation,
            flushed_at: self.flushed_at,
            next_update_at: self.next_update_at,
            anonymous_posts: self.anonymous_posts,
            shard: self.shard,
        }
    }
}

impl Engine {
    /// Writes the whole state (see the module docs), encoded, to `out`: straight into the
    /// caller's buffers (the service's checkpoint records), so that a large state is not
    /// held twice.
    pub fn save_state_into<W: std::io::Write>(&self, out: W) -> std::io::Result<()> {
        encode(&self.state(), out)
    }

    /// A copy of the whole state, to be encoded later (see [`StateSnapshot`]).
    pub fn snapshot_state(&self) -> StateSnapshot {
        StateSnapshot(self.state().into_owned())
    }

    /// The state, borrowed.
    fn state(&self) -> EngineState<'_> {
        EngineState {
            format: FORMAT,
            config: Cow::Borrowed(&self.config_json),
            views: self
                .views
                .iter()
                .map(|view| ViewState {
                    windows: Cow::Borrowed(&view.windows),
                    trends: Cow::Borrowed(&view.trends),
                    anomalies: Cow::Borrowed(&view.anomalies),
                    started_at: view.started_at,
                    closed_any: view.closed_any,
                })
                .collect(),
            watermark: Cow::Borrowed(&self.watermark),
            alerting: Cow::Borrowed(&self.alerting),
            co_mentions: Cow::Borrowed(&self.co_mentions),
            catalog_actors: self.catalog_actor_ids().map(Cow::Borrowed).collect(),
            catalog_generation: self.catalog_generation,
            flushed_at: self.flushed_at,
            next_update_at: self.next_update_at,
            anonymous_posts: self.anonymous_posts,
            shard: self.shard,
        }
    }

    /// Replaces the state with a saved one, if it was saved under the same config.
    pub fn restore_state(&mut self, bytes: &[u8]) -> Result<(), RestoreError> {
        let state: EngineState<'static> =
            ciborium::from_reader(bytes).map_err(|e| RestoreError::Decode(e.to_string()))?;
        if state.format != FORMAT {
            return Err(RestoreError::Format {
                found: state.format,
            });
        }
        if state.config != self.config_json || state.views.len() != self.views.len() {
            return Err(RestoreError::ConfigChanged);
        }
        if state.shard != self.shard {
            return Err(RestoreError::OtherShard {
                saved: state.shard,
                this: self.shard,
            });
        }
        let same_actors = state
            .catalog_actors
            .iter()
            .map(|id| id.as_ref())
            .eq(self.catalog_actor_ids());
        for (view, saved) in self.views.iter_mut().zip(state.views) {
            view.windows = saved.windows.into_owned();
            view.trends = saved.trends.into_owned();
            view.anomalies = saved.anomalies.into_owned();
            view.started_at = saved.started_at;
            view.closed_any = saved.closed_any;
            view.spare_terms = None;
        }
        self.watermark = state.watermark.into_owned();
        self.alerting = state.alerting.into_owned();
        self.alerting.set_filtered_elsewhere(!self.shard.is_whole());
        self.co_mentions = state.co_mentions.into_owned();
        // Windows opened under another catalog must not read their actor votes as
        // positions in this one: a generation none of them has makes them untagged.
        self.catalog_generation = if same_actors {
            state.catalog_generation
        } else {
            state.catalog_generation + 1
        };
        self.flushed_at = state.flushed_at;
        self.next_update_at = state.next_update_at;
        self.anonymous_posts = state.anonymous_posts;
        Ok(())
    }

    fn catalog_actor_ids(&self) -> impl Iterator<Item = &str> {
        self.catalog
            .iter()
            .flat_map(|catalog| catalog.actors())
            .map(|actor| actor.id.as_str())
    }
}
