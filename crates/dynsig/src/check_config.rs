//! `dynsig check-config FILE [--catalog FILE]`: checks a deployment's configuration without
//! starting anything, and prints the effective config as TOML on stdout.
//!
//! It applies exactly what `run` applies (the file, then the `DYNSIG_*` environment
//! overrides, then validation), so what it prints is what the service would use. Beyond
//! `Config::load`, it has librdkafka check the `kafka.client` properties (names and values,
//! e.g. a `security.protocol` this build does not support) and validates the actor catalog.
//! Errors name the field (`window.size_ms`, `kafka.client`, `actors[2].id`) and exit non-zero.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use dynsig_core::catalog::{ActorMatcher, Catalog};
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::BaseProducer;

use crate::config::Config;
use crate::kafka;

#[derive(Args)]
pub struct CheckConfigArgs {
    /// The TOML config file to check (the environment overrides of `run` apply too).
    file: PathBuf,
    /// Actor catalog (TOML `[[actors]]`) to check; default: `catalog.path` of the config.
    #[arg(long)]
    catalog: Option<PathBuf>,
}

/// What the printed config shows instead of a secret.
const REDACTED: &str = "<redacted>";

pub fn check_config(args: CheckConfigArgs) -> anyhow::Result<()> {
    let config = Config::load(Some(&args.file), std::env::vars())?;
    // librdkafka checks each property as it is set, and what needs the whole set (e.g. a
    // SASL mechanism this build has no provider for) when a client is created. Without
    // bootstrap servers the clients contact nothing. Both kinds, since some properties are
    // consumer- or producer-only.
    let mut consumer = kafka::consumer_config(&config.kafka);
    consumer.set("bootstrap.servers", "");
    let mut producer = kafka::producer_config(&config.kafka);
    producer.set("bootstrap.servers", "");
    let rejected =
        |role: &str| format!("invalid config: kafka.client: rejected by librdkafka ({role})");
    consumer
        .create::<BaseConsumer>()
        .with_context(|| rejected("consumer"))?;
    producer
        .create::<BaseProducer>()
        .with_context(|| rejected("producer"))?;
    let catalog = args
        .catalog
        .or_else(|| (!config.catalog.path.is_empty()).then(|| PathBuf::from(&config.catalog.path)));
    if let Some(path) = &catalog {
        let actors = check_catalog(path)?;
        eprintln!("catalog {}: {actors} actors", path.display());
    }
    let mut effective = toml::Table::try_from(&config).context("printing the effective config")?;
    redact_secrets(&mut effective);
    print!("{effective}");
    eprintln!("{}: ok", args.file.display());
    Ok(())
}

/// Parses and validates the catalog as the service would; returns its number of actors.
fn check_catalog(path: &Path) -> anyhow::Result<usize> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read catalog {}", path.display()))?;
    let catalog: Catalog =
        toml::from_str(&text).with_context(|| format!("invalid catalog {}", path.display()))?;
    let matcher = ActorMatcher::new(catalog)
        .with_context(|| format!("invalid catalog {}", path.display()))?;
    Ok(matcher.actors().len())
}

/// The effective config ends up in terminals, CI logs and tickets: credentials (librdkafka's
/// `sasl.password`, usually from `DYNSIG_KAFKA__CLIENT__SASL_PASSWORD`, an API token...) are
/// not printed. Any non-empty string under a name that says secret is replaced, wherever it
/// stands, so that a credential added to the config later is covered too; an empty one stays
/// visible, since "not set" is worth seeing.
fn redact_secrets(table: &mut toml::Table) {
    for (key, value) in table.iter_mut() {
        match value {
            toml::Value::Table(inner) => redact_secrets(inner),
            toml::Value::String(s)
                if !s.is_empty()
                    && ["password", "secret", "token", ".pem"]
                        .iter()
                        .any(|word| key.contains(word)) =>
            {
                *s = REDACTED.into();
            }
            _ => {}
        }
    }
}
