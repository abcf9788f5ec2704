//! dynsig-core: everything dynsig computes, as plain data structures and functions.
//!
//! No clock, no threads, no network: time arrives as event-time milliseconds inside the
//! inputs (and as an explicit `wall_now` argument where idleness matters), so every stage
//! is deterministic and unit-tested without a broker. The service crate (`dynsig`) wires
//! these pieces to Kafka and HTTP.
//!
//! Flow: bytes --[`decode`]--> [`model::Input`] --[`engine::Engine`]--> [`model::Signal`]s.
//! Inside the engine: [`tokenizer`] → [`window`] (event-time windows closed by the
//! per-partition [`watermark`]) →
//! [`trend`] and [`anomaly`] detectors on each closed window → [`alert`] lifecycle.

pub mod alert;
pub mod alerting;
pub mod alignment;
pub mod anomaly;
pub mod authors;
pub mod catalog;
pub mod co_mentions;
pub mod config;
pub mod decode;
pub mod engine;
pub mod feedback;
pub mod heavy_hitters;
pub mod metafilter;
pub mod model;
pub mod probe_index;
pub mod rng;
pub mod routing;
mod serde_array;
pub mod shard;
pub mod shard_merge;
pub mod stopwords;
pub mod synth;
pub mod term_key;
pub mod term_table;
pub mod tokenizer;
pub mod trend;
pub mod watermark;
pub mod window;
pub mod window_alerts;
pub mod window_terms;
