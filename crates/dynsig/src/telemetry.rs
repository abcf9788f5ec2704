//! Logs and metrics: the `tracing` subscriber (text or JSON, level from `RUST_LOG` or
//! `--log-level`) and the Prometheus recorder behind `/metrics`. Metric names live here so
//! that every stage uses the same ones, and none carries an unbounded label.

use std::io::IsTerminal;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

pub mod names {
    pub const EVENTS_CONSUMED: &str = "dynsig_events_consumed_total";
    pub const EVENTS_DECODED: &str = "dynsig_events_decoded_total";
    pub const EVENTS_REJECTED: &str = "dynsig_events_rejected_total";
    pub const DLQ_RECORDS: &str = "dynsig_dlq_records_total";
    pub const REDELIVERED_SKIPPED: &str = "dynsig_redelivered_skipped_total";
    pub const WINDOWS_CLOSED: &str = "dynsig_windows_closed_total";
    pub const WINDOW_CLOSE_DURATION: &str = "dynsig_window_close_duration_seconds";
    pub const SIGNALS_PUBLISHED: &str = "dynsig_signals_published_total";
    pub const PUBLISH_ERRORS: &str = "dynsig_publish_errors_total";
    pub const PRODUCER_RENEWALS: &str = "dynsig_producer_renewals_total";
    pub const EVENT_TIME_TO_PUBLISH: &str = "dynsig_event_time_to_publish_seconds";
    pub const ASSIGNED_PARTITIONS: &str = "dynsig_assigned_partitions";
    pub const REBALANCES: &str = "dynsig_rebalances_total";
    pub const CONSUMER_LAG: &str = "dynsig_consumer_lag";
    pub const ALERTS_PUBLISHED: &str = "dynsig_alerts_published_total";
    pub const QUEUE_DEPTH: &str = "dynsig_queue_depth";
    pub const BROKER_UP: &str = "dynsig_broker_up";
    pub const OPEN_WINDOWS: &str = "dynsig_open_windows";
    pub const PARTITION_PAUSES: &str = "dynsig_partition_pauses_total";
    pub const PARTITIONS_PAUSED: &str = "dynsig_partitions_paused";
    pub const ALERTS_SUPPRESSED: &str = "dynsig_alerts_suppressed_total";
    pub const SILENCES_ACTIVE: &str = "dynsig_silences_active";
    pub const FEEDBACK: &str = "dynsig_feedback_total";
    pub const FEEDBACK_THRESHOLD_FACTOR: &str = "dynsig_feedback_threshold_factor";
    pub const FEEDBACK_ADJUSTED_SERIES: &str = "dynsig_feedback_adjusted_series";
    pub const CATALOG_ACTORS: &str = "dynsig_catalog_actors";
    pub const BROKER_ERRORS: &str = "dynsig_broker_errors_total";
    pub const CHECKPOINT_DURATION: &str = "dynsig_checkpoint_duration_seconds";
    pub const CHECKPOINT_SNAPSHOT_DURATION: &str = "dynsig_checkpoint_snapshot_duration_seconds";
    pub const CHECKPOINT_SIZE: &str = "dynsig_checkpoint_size_bytes";
    pub const CHECKPOINTS: &str = "dynsig_checkpoints_total";
    pub const CHECKPOINT_RESTORES: &str = "dynsig_checkpoint_restores_total";
    pub const CATALOG_RELOAD_FAILURES: &str = "dynsig_catalog_reload_failures_total";
    pub const SHARDS_OWNED: &str = "dynsig_shards_owned";
    pub const MERGE_OWNED: &str = "dynsig_merge_owned";
    pub const SHARD_REFUSALS: &str = "dynsig_shard_refusals_total";
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global `tracing` subscriber. `RUST_LOG` wins over `default_level`.
pub fn init_logging(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second init (tests calling main twice) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Buckets for the pipeline's pauses (closing windows, copying the state): a few
/// milliseconds normally, and every one of them delays the signals behind it.
const PIPELINE_PAUSE_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// Installs the Prometheus recorder and describes every metric.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(names::EVENT_TIME_TO_PUBLISH.into()),
            &[
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full(names::WINDOW_CLOSE_DURATION.into()),
            PIPELINE_PAUSE_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(names::CHECKPOINT_SNAPSHOT_DURATION.into()),
            PIPELINE_PAUSE_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(names::CHECKPOINT_DURATION.into()),
            &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ],
        )?
        .install_recorder()?;
    describe();
    Ok(handle)
}

fn describe() {
    use names::*;
    describe_counter!(EVENTS_CONSUMED, "Input records read from Kafka, by topic.");
    describe_counter!(
        EVENTS_DECODED,
        "Input records decoded and valid, by topic (before the event-time checks)."
    );
    describe_counter!(
        EVENTS_REJECTED,
        "Input records rejected (undecodable, invalid, late or future), by topic and reason."
    );
    describe_counter!(
        DLQ_RECORDS,
        "Records written to the dead-letter topic, by reason."
    );
    describe_counter!(
        REDELIVERED_SKIPPED,
        "Records skipped because they were already processed (redelivery after a rebalance)."
    );
    describe_counter!(WINDOWS_CLOSED, "Event-time windows closed.");
    describe_histogram!(
        WINDOW_CLOSE_DURATION,
        Unit::Seconds,
        "Time the pipeline spent closing windows (scoring, baselines, alerts), per poll that closed any: their signals wait for it."
    );
    describe_counter!(
        SIGNALS_PUBLISHED,
        "Signals acknowledged by the broker, by kind."
    );
    describe_counter!(
        PUBLISH_ERRORS,
        "Output records the broker failed to acknowledge (retried)."
    );
    describe_counter!(
        PRODUCER_RENEWALS,
        "Output producers replaced after a fatal error (e.g. the broker lost their state)."
    );
    describe_histogram!(
        EVENT_TIME_TO_PUBLISH,
        Unit::Seconds,
        "From the end of a window (event time) to the broker's acknowledgement of its signals (wall time)."
    );
    describe_gauge!(
        ASSIGNED_PARTITIONS,
        "Input partitions assigned to this instance."
    );
    describe_counter!(
        ALERTS_PUBLISHED,
        "Alert messages acknowledged, by severity and route: route=all for the unfiltered signals.alerts, else the team topic of a notification."
    );
    describe_gauge!(
        CONSUMER_LAG,
        "Records not yet committed per input partition this instance reads (librdkafka's statistics, every 5 s)."
    );
    describe_gauge!(
        QUEUE_DEPTH,
        "Items waiting between two stages: stage=input (records read, not processed), stage=output (batches not yet published)."
    );
    describe_counter!(
        REBALANCES,
        "Consumer group rebalances seen by this instance."
    );
    describe_gauge!(
        BROKER_UP,
        "1 when the last metadata request to the cluster succeeded."
    );
    describe_gauge!(OPEN_WINDOWS, "Event-time windows currently open.");
    describe_counter!(
        PARTITION_PAUSES,
        "Input partitions paused for running ahead of the others in event time (window.max_partition_drift_ms)."
    );
    describe_gauge!(
        PARTITIONS_PAUSED,
        "Input partitions paused now, waiting for the slowest one to catch up in event time."
    );
    describe_counter!(
        ALERTS_SUPPRESSED,
        "Alert messages that did not become a notification of their own, by reason (silenced, inhibited, grouped, digested)."
    );
    describe_gauge!(SILENCES_ACTIVE, "Silences in force (event time).");
    describe_counter!(
        FEEDBACK,
        "Verdicts on alerts recorded (HTTP API and feedback topic), by verdict."
    );
    describe_gauge!(
        FEEDBACK_THRESHOLD_FACTOR,
        "What feedback multiplies a rule's firing thresholds by (1 once decayed); series have their own factor on top, shown in their alerts."
    );
    describe_gauge!(
        FEEDBACK_ADJUSTED_SERIES,
        "Series whose firing threshold feedback currently moves."
    );
    describe_gauge!(CATALOG_ACTORS, "Actors in the catalog last loaded.");
    describe_counter!(
        CATALOG_RELOAD_FAILURES,
        "Catalog file versions refused on reload (the previous catalog stays in use)."
    );
    describe_counter!(
        BROKER_ERRORS,
        "Errors librdkafka reported outside a request (broker down, transport), by client and error code."
    );
    describe_histogram!(
        CHECKPOINT_DURATION,
        Unit::Seconds,
        "From saving the engine's state to the broker acknowledging its last record."
    );
    describe_histogram!(
        CHECKPOINT_SNAPSHOT_DURATION,
        Unit::Seconds,
        "Time the pipeline stopped to copy the state for a checkpoint (the copy is encoded and written beside it)."
    );
    describe_gauge!(
        CHECKPOINT_SIZE,
        Unit::Bytes,
        "Size of the last checkpoint's encoded state."
    );
    describe_counter!(CHECKPOINTS, "Checkpoints acknowledged by the broker.");
    describe_counter!(
        CHECKPOINT_RESTORES,
        "Checkpoints found at start (sharded: when a shard or the merge is taken over), by outcome (restored, stale, refused, unreadable)."
    );
    describe_gauge!(
        SHARDS_OWNED,
        "With scale.shards > 1: the shards whose engines this instance runs."
    );
    describe_counter!(
        SHARD_REFUSALS,
        "With scale.shards > 1: inputs a shard engine refused as late or future, per shard engine (an input all N shards refuse counts N times; the first shard's refusals are also dead-lettered and in dynsig_events_rejected_total), by reason."
    );
    describe_gauge!(
        MERGE_OWNED,
        "With scale.shards > 1: 1 when this instance runs the shards' merge (trend snapshots, notifications)."
    );
}
