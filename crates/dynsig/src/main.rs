//! The `dynsig` command: `run` the service against Kafka, `demo` it on an embedded broker,
//! `replay` files through the same pipeline, `gen` a synthetic feed, `check-config` a
//! deployment's configuration.

mod api;
mod backtest;
mod catalog;
mod check_config;
mod checkpoint;
mod config;
mod control;
mod demo;
mod gen;
mod http;
mod kafka;
mod output;
mod processor;
mod progress;
mod replay;
mod service;
mod telemetry;
mod view;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tokio::sync::watch;

use crate::config::Config;
use crate::telemetry::LogFormat;

#[derive(Parser)]
#[command(
    name = "dynsig",
    version,
    about = "Dynamic Signal: trends, anomalies and alerts from Kafka streams of posts and internal events."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log level or filter (RUST_LOG wins when set).
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service against a Kafka cluster.
    ///
    /// Works with no config file (defaults + --brokers). Environment variables
    /// DYNSIG_<SECTION>__<KEY> override the file, e.g. DYNSIG_WINDOW__SIZE_MS=10000.
    ///
    /// Example: dynsig run --brokers kafka-1:9092 --config deploy/dynsig.example.toml
    Run(RunArgs),
    /// Run the whole pipeline on an embedded broker with a synthetic feed and a live view.
    ///
    /// Needs no outside service: it starts an in-process Kafka-protocol broker (librdkafka's
    /// mock cluster), prints its bootstrap address so that other Kafka clients can read the
    /// topics, feeds posts and internal events with planted bursts and incidents, and
    /// shows the current trends and alerts. Stops by itself after --for.
    ///
    /// Example: dynsig demo --for 60s
    Demo(demo::DemoArgs),
    /// Run the same pipeline over JSONL files instead of Kafka; one JSONL file per output topic.
    ///
    /// Example: dynsig replay --posts posts.jsonl --events events.jsonl --output out/
    Replay(ReplayArgs),
    /// Write a synthetic feed of posts and internal events (with its planted truth).
    ///
    /// Example: dynsig gen --duration 10m --posts posts.jsonl --events events.jsonl --truth truth.json
    Gen(gen::GenArgs),
    /// Score CSV series (NAB layout) with the service's anomaly detector, for benchmarks.
    ///
    /// Every <category>/<file>.csv under DATA_DIR (columns timestamp,value) is one series;
    /// OUT_DIR/<category>/<file>.csv gets timestamp,value,anomaly_score, row for row.
    ///
    /// Example: dynsig backtest ../shared/nab/data /tmp/nab-out
    Backtest(backtest::BacktestArgs),
    /// Validate a config file (with the DYNSIG_* environment overrides) and the actor catalog,
    /// then print the effective config as TOML. Exits non-zero naming the bad field.
    ///
    /// Example: dynsig check-config deploy/dynsig.example.toml --catalog deploy/catalog.example.toml
    CheckConfig(check_config::CheckConfigArgs),
}

#[derive(Args)]
struct RunArgs {
    /// TOML config file (all keys optional; see deploy/dynsig.example.toml).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers (host:port,...); overrides kafka.brokers.
    #[arg(long)]
    brokers: Option<String>,
    /// Address of /metrics, /healthz and /readyz; overrides http.addr.
    #[arg(long)]
    http_addr: Option<SocketAddr>,
}

#[derive(Args)]
struct ReplayArgs {
    /// Posts as JSONL, one Post per line, in roughly event-time order.
    #[arg(long)]
    posts: PathBuf,
    /// Internal events as JSONL.
    #[arg(long)]
    events: Option<PathBuf>,
    /// Folder for <topic>.jsonl outputs (created if missing).
    #[arg(long)]
    output: PathBuf,
    /// TOML config file (windows, tokenizer, detectors...).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// 2: read, decode and tokenize each file on a thread of its own while another runs
    /// the engine (same outputs); with --shards N, run each shard's engine on a thread of
    /// its own instead, each decoding and tokenizing a share of the posts.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    threads: u8,
    /// Split the terms and series between this many engines, as between that many
    /// service instances, and merge their trend snapshots (a preview of a scaled-out
    /// deployment's output; each engine takes every input).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    shards: u32,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init_logging(cli.log_format, &cli.log_level);
    match cli.command {
        Command::Run(args) => run(args),
        Command::Demo(args) => demo::demo(args),
        Command::Replay(args) => {
            let config = Config::load(args.config.as_deref(), std::env::vars())?;
            let started = std::time::Instant::now();
            let summary = replay::replay(
                &config,
                &args.posts,
                args.events.as_deref(),
                &args.output,
                (args.threads, args.shards),
            )?;
            eprintln!(
                "replayed {} inputs in {:.2}s: {} rejected, {} trend snapshots, {} anomalies, {} alerts -> {}",
                summary.inputs,
                started.elapsed().as_secs_f64(),
                summary.rejected,
                summary.trend_snapshots,
                summary.anomalies,
                summary.alerts,
                args.output.display()
            );
            Ok(())
        }
        Command::Gen(args) => gen::gen(args),
        Command::Backtest(args) => backtest::run(args),
        Command::CheckConfig(args) => check_config::check_config(args),
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref(), std::env::vars())?;
    if let Some(brokers) = args.brokers {
        config.kafka.brokers = brokers;
    }
    if let Some(addr) = args.http_addr {
        config.http.addr = addr;
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let prometheus = telemetry::install_metrics()?;
        let shutdown = shutdown_on_signal();
        service::run(config, prometheus, shutdown).await
    })?;
    // librdkafka threads may linger briefly; nothing is left to do.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// A channel that turns true on SIGTERM or Ctrl-C.
pub fn shutdown_on_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => tracing::info!("Ctrl-C received"),
            _ = term => tracing::info!("SIGTERM received"),
        }
        let _ = tx.send(true);
    });
    rx
}
