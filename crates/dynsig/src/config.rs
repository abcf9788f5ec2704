//! The service's configuration: a TOML file whose every section has defaults, plus
//! `DYNSIG_<SECTION>__<KEY>` environment overrides, validated into [`Config`].
//!
//! Unknown keys are rejected with the field named (serde's `deny_unknown_fields`), so a
//! typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use dynsig_core::co_mentions::CoMentionConfig;
use dynsig_core::config::{
    AlertConfig, AnomalyConfig, EngineConfig, TokenizerConfig, TrendConfig, WindowConfig,
};
use dynsig_core::decode::{Format, Limits, RejectReason};
use dynsig_core::feedback::FeedbackConfig;
use dynsig_core::metafilter::MetafilterConfig;
use dynsig_core::routing::RoutingConfig;
use serde::{Deserialize, Serialize};

/// Prefix of environment overrides: `DYNSIG_WINDOW__SIZE_MS=10000` sets `window.size_ms`.
const ENV_PREFIX: &str = "DYNSIG_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("invalid config: environment variable {var}: {reason}")]
    Env { var: String, reason: String },
    #[error("invalid config: {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// Everything `dynsig run` needs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub topics: TopicsConfig,
    pub http: HttpConfig,
    pub limits: Limits,
    // The engine's sections stand at the top level of the file (`[window]`, `[trends]`...):
    // serde's `flatten` cannot be combined with `deny_unknown_fields`, so they are listed.
    pub window: WindowConfig,
    pub tokenizer: TokenizerConfig,
    pub trends: TrendConfig,
    pub anomaly: AnomalyConfig,
    pub alerts: AlertConfig,
    pub metafilter: MetafilterConfig,
    pub routing: RoutingConfig,
    pub feedback: FeedbackConfig,
    pub co_mentions: CoMentionConfig,
    pub catalog: CatalogConfig,
    pub checkpoint: CheckpointConfig,
    pub shutdown: ShutdownConfig,
    pub scale: ScaleConfig,
}

/// Scaling out over several instances (see "Scaling" in `docs/operator-guide.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScaleConfig {
    /// 1: one engine over all terms and series (run one instance). N > 1: the terms and
    /// series are split in N shards (`dynsig_core::shard`), one engine each, which the
    /// instances of the consumer group share as they share partitions: every input is
    /// forwarded to the shards through `topics.repartition` (N partitions, one per
    /// shard), and the shards' trend snapshots are merged through `topics.partials`.
    /// Every instance of a group must use the same value.
    pub shards: u32,
}

impl Default for ScaleConfig {
    fn default() -> Self {
        Self { shards: 1 }
    }
}

/// The most shards: each is an engine and a partition of `topics.repartition`.
pub const MAX_SHARDS: u32 = 256;

/// State checkpoints (see `crate::checkpoint`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Save the engine's state to `topics.checkpoints` and restore it at start. Off: a
    /// restart rebuilds the open windows from the inputs, and baselines, detectors and
    /// alert state start over.
    pub enabled: bool,
    /// Wall time between checkpoints (one more is taken at shutdown). Input offsets are
    /// committed no further than the last acknowledged checkpoint, so this is also how
    /// much input a crash makes the service read again.
    pub interval_ms: u64,
    /// Largest checkpoint record; a larger state is split. Keep it under the broker's
    /// `message.max.bytes` (1 MB by default in Kafka).
    pub chunk_bytes: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_ms: 10_000,
            chunk_bytes: 512 * 1024,
        }
    }
}

/// Graceful shutdown (SIGTERM, Ctrl-C).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long stopping may take: draining the queues, the last checkpoint, flushing the
    /// producer and committing. Past it the service exits with an error (nothing is lost:
    /// a restart reads again from the last commit).
    pub deadline_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            deadline_ms: 30_000,
        }
    }
}

/// The actor catalog file (see `dynsig_core::catalog`), reloaded when it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogConfig {
    /// TOML file with `[[actors]]`; empty: no catalog (no actor tagging, no ecosystem
    /// graph).
    pub path: String,
    /// How often the file's modification time is checked.
    pub reload_check_ms: u64,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        Self {
            path: String::new(),
            reload_check_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port...]`; `--brokers` overrides it.
    pub brokers: String,
    /// Consumer group shared by every instance of the service.
    pub group_id: String,
    /// Create missing input and output topics at start (with `partitions` partitions).
    pub create_topics: bool,
    pub partitions: i32,
    pub replication_factor: i32,
    /// librdkafka properties passed through as-is (SASL, SSL, timeouts...). They win over
    /// dynsig's own defaults, except the offset-store settings that at-least-once needs.
    pub client: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            group_id: "dynsig".into(),
            create_topics: true,
            partitions: 3,
            replication_factor: 1,
            client: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicsConfig {
    pub posts: String,
    pub events: String,
    /// Format of records without a `content-type` header.
    pub posts_format: Format,
    pub events_format: Format,
    pub trends: String,
    pub anomalies: String,
    pub alerts: String,
    /// Co-mention graphs of the catalog's actors, per window.
    pub ecosystem: String,
    /// Verdicts on alerts (`{alert_id, verdict, who}`), read by the service.
    pub feedback: String,
    pub dlq: String,
    /// Inputs refused as late go here, with the dead-letter headers (reason `late`);
    /// empty: to `dlq` like other rejected inputs.
    pub late: String,
    /// The engine's state checkpoints (compacted, one partition; see `[checkpoint]`).
    pub checkpoints: String,
    /// With `scale.shards` > 1: every input on its way to each shard (one partition per
    /// shard). Internal.
    pub repartition: String,
    /// With `scale.shards` > 1: the shards' trend snapshots on their way to the instance
    /// that merges them (one partition). Internal.
    pub partials: String,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            posts: "posts".into(),
            events: "events".into(),
            posts_format: Format::Json,
            events_format: Format::Json,
            trends: "signals.trends".into(),
            anomalies: "signals.anomalies".into(),
            alerts: "signals.alerts".into(),
            ecosystem: "signals.ecosystem".into(),
            feedback: "signals.feedback".into(),
            dlq: "dynsig.dlq".into(),
            late: "signals.late".into(),
            checkpoints: "dynsig.checkpoints".into(),
            repartition: "dynsig.repartition".into(),
            partials: "dynsig.partials".into(),
        }
    }
}

impl TopicsConfig {
    pub fn inputs(&self) -> [&str; 2] {
        [&self.posts, &self.events]
    }

    pub fn outputs(&self) -> Vec<&str> {
        let mut outputs = vec![
            self.trends.as_str(),
            &self.anomalies,
            &self.alerts,
            &self.ecosystem,
            &self.dlq,
        ];
        if !self.late.is_empty() {
            outputs.push(&self.late);
        }
        outputs
    }

    /// Where an input rejected for `reason` goes.
    pub fn rejected(&self, reason: RejectReason) -> &str {
        if reason == RejectReason::Late && !self.late.is_empty() {
            &self.late
        } else {
            &self.dlq
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of `/metrics`, `/healthz`, `/readyz` and `/api/*`; `--http-addr` overrides
    /// it.
    pub addr: SocketAddr,
    /// Bearer token of the API's write endpoints (silences, feedback); empty: they answer
    /// 403. Best set from the environment (`DYNSIG_HTTP__API_TOKEN`) rather than a file.
    pub api_token: Secret,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8686)),
            api_token: Secret::default(),
        }
    }
}

/// A string kept out of logs and debug output (`Debug` prints `<redacted>`), so that
/// printing a config never leaks it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<unset>"
        } else {
            "<redacted>"
        })
    }
}

impl Config {
    /// The settings of the pure pipeline.
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            window: self.window.clone(),
            tokenizer: self.tokenizer.clone(),
            trends: self.trends.clone(),
            anomaly: self.anomaly.clone(),
            alerts: self.alerts.clone(),
            metafilter: self.metafilter.clone(),
            routing: self.routing.clone(),
            feedback: self.feedback.clone(),
            co_mentions: self.co_mentions.clone(),
        }
    }

    /// Reads `path` (or starts from the defaults when `None`), applies the environment
    /// overrides found in `env`, and validates the result.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?,
            None => String::new(),
        };
        let mut table: toml::Table = text.parse()?;
        for (var, value) in env {
            if let Some(key_path) = var.strip_prefix(ENV_PREFIX) {
                apply_env_override(&mut table, &var, key_path, &value)?;
            }
        }
        let config: Config = table.try_into()?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.into(),
            })
        };
        if self.kafka.brokers.trim().is_empty() {
            return invalid("kafka.brokers", "must not be empty");
        }
        if self.kafka.group_id.trim().is_empty() {
            return invalid("kafka.group_id", "must not be empty");
        }
        if self.kafka.partitions < 1 {
            return invalid("kafka.partitions", "must be at least 1");
        }
        let named = [
            ("topics.posts", &self.topics.posts),
            ("topics.events", &self.topics.events),
            ("topics.trends", &self.topics.trends),
            ("topics.anomalies", &self.topics.anomalies),
            ("topics.alerts", &self.topics.alerts),
            ("topics.ecosystem", &self.topics.ecosystem),
            ("topics.feedback", &self.topics.feedback),
            ("topics.dlq", &self.topics.dlq),
            ("topics.checkpoints", &self.topics.checkpoints),
            ("topics.repartition", &self.topics.repartition),
            ("topics.partials", &self.topics.partials),
        ];
        for (field, topic) in named {
            if topic.is_empty() {
                return invalid(field, "topic name must not be empty");
            }
        }
        if self.checkpoint.interval_ms == 0 {
            return invalid("checkpoint.interval_ms", "must be at least 1");
        }
        if self.checkpoint.chunk_bytes < 1024 {
            return invalid("checkpoint.chunk_bytes", "must be at least 1024");
        }
        if !(1..=MAX_SHARDS).contains(&self.scale.shards) {
            return invalid("scale.shards", &format!("must be in 1..={MAX_SHARDS}"));
        }
        if self.shutdown.deadline_ms == 0 {
            return invalid("shutdown.deadline_ms", "must be at least 1");
        }
        if self.catalog.reload_check_ms == 0 {
            return invalid("catalog.reload_check_ms", "must be at least 1");
        }
        if self.topics.posts == self.topics.events {
            return invalid("topics.events", "must differ from topics.posts");
        }
        // The engine validates its own sections (window size, stopword languages...).
        dynsig_core::engine::Engine::new(self.engine()).map_err(|e| ConfigError::Invalid {
            field: "engine",
            reason: e.to_string(),
        })?;
        Ok(())
    }
}

/// `WINDOW__SIZE_MS=10000` → `table.window.size_ms = 10000`. The value is read as a TOML
/// value when it parses as one (numbers, booleans, arrays), else as a string.
/// librdkafka property names are dotted, which environment names cannot be: under
/// `KAFKA__CLIENT__`, `_` stands for `.` (`KAFKA__CLIENT__SASL_PASSWORD` → `sasl.password`),
/// and values stay strings. So does `HTTP__API_TOKEN`: a token of digits is still a token.
fn apply_env_override(
    table: &mut toml::Table,
    var: &str,
    key_path: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let mut keys: Vec<String> = key_path
        .split("__")
        .map(|k| k.to_ascii_lowercase())
        .collect();
    if keys.iter().any(|k| k.is_empty()) {
        return Err(ConfigError::Env {
            var: var.into(),
            reason: "empty key segment".into(),
        });
    }
    let client_property = keys.len() == 3 && keys[0] == "kafka" && keys[1] == "client";
    let secret = keys == ["http", "api_token"];
    let parsed = if client_property || secret {
        if client_property {
            keys[2] = keys[2].replace('_', ".");
        }
        toml::Value::String(value.into())
    } else {
        format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.into()))
    };
    let (last, parents) = keys.split_last().expect("split yields at least one key");
    let mut node = table;
    for key in parents {
        let entry = node
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        node = entry.as_table_mut().ok_or_else(|| ConfigError::Env {
            var: var.into(),
            reason: format!("{key} is not a section"),
        })?;
    }
    node.insert(last.clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("dynsig-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}.toml", text.len()));
        std::fs::write(&path, text).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load(Some(&path), env)
    }

    #[test]
    fn no_file_gives_defaults() {
        let config = Config::load(None, []).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.topics.trends, "signals.trends");
        assert_eq!(config.http.addr.to_string(), "127.0.0.1:8686");
    }

    #[test]
    fn example_file_documents_the_defaults() {
        let example = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/dynsig.example.toml"
        );
        let config = Config::load(Some(Path::new(example)), []).unwrap();
        assert_eq!(
            config,
            Config::default(),
            "deploy/dynsig.example.toml drifted from the defaults"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load_str("[window]\nsize_msec = 5\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("size_msec"), "{err}");
    }

    #[test]
    fn env_overrides_file() {
        let config = load_str(
            "[window]\nsize_ms = 5000\n",
            &[
                ("DYNSIG_WINDOW__SIZE_MS", "7000"),
                ("DYNSIG_TOPICS__POSTS", "social"),
                ("OTHER", "x"),
            ],
        )
        .unwrap();
        assert_eq!(config.window.size_ms, 7000);
        assert_eq!(config.topics.posts, "social");
    }

    #[test]
    fn client_properties_pass_through() {
        let config = load_str(
            "[kafka.client]\n\"security.protocol\" = \"SASL_SSL\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(config.kafka.client["security.protocol"], "SASL_SSL");
    }

    #[test]
    fn api_token_comes_from_the_environment_and_is_not_printed() {
        let config = load_str("", &[("DYNSIG_HTTP__API_TOKEN", "t0ken-123")]).unwrap();
        assert_eq!(config.http.api_token.expose(), "t0ken-123");
        assert!(!format!("{config:?}").contains("t0ken-123"));
        // Digits stay a string, not a TOML integer.
        let config = load_str("", &[("DYNSIG_HTTP__API_TOKEN", "20261127")]).unwrap();
        assert_eq!(config.http.api_token.expose(), "20261127");
    }

    #[test]
    fn env_sets_dotted_client_properties() {
        let config = load_str("", &[("DYNSIG_KAFKA__CLIENT__SASL_PASSWORD", "s3cret")]).unwrap();
        assert_eq!(config.kafka.client["sasl.password"], "s3cret");
    }

    #[test]
    fn invalid_values_name_the_field() {
        let err = load_str("[kafka]\npartitions = 0\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka.partitions"), "{err}");
        let err = load_str("[topics]\nposts_format = \"xml\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("xml"), "{err}");
    }
}
