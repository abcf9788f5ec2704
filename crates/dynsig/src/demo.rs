//! `dynsig demo`: the whole service on an embedded Kafka-protocol broker (librdkafka's
//! mock cluster), fed in real time by the synthetic feed with planted bursts and
//! incidents, with a live view read back from the output topics like any consumer would.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use dynsig_core::decode::InputKind;
use dynsig_core::synth::{Synth, SynthConfig};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;
use tokio::sync::watch;

use crate::config::{Config, Secret};
use crate::service::{self, wall_now_ms};
use crate::{gen, telemetry, view};
use dynsig_core::routing::Router;

#[derive(Args)]
pub struct DemoArgs {
    /// How long to run, e.g. 60s, 5m.
    #[arg(long = "for", default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:8686")]
    http_addr: SocketAddr,
    /// Background posts per second.
    #[arg(long, default_value_t = 300.0)]
    posts_per_sec: f64,
    /// Bearer token of the demo's write endpoints (`POST /api/silences`, `/api/feedback`).
    #[arg(long, default_value = "demo-token", env = "DYNSIG_HTTP__API_TOKEN")]
    api_token: String,
    /// Event-time window length of the demo (short, so that trends show quickly).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    window: Duration,
}

pub fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(run_demo(args))?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

async fn run_demo(args: DemoArgs) -> anyhow::Result<()> {
    // The mock cluster lives on this task: it is not Send, and it must outlive the clients.
    let cluster = MockCluster::new(1).context("starting the embedded broker")?;
    let bootstrap = cluster.bootstrap_servers();
    let catalog_dir = tempfile_dir()?;
    let mut config = demo_config(&bootstrap, &args, &catalog_dir)?;
    let router = Router::new(&config.routing)?;
    // The mock cluster has no admin API: topics are created through it directly.
    let outputs = config
        .topics
        .outputs()
        .into_iter()
        .chain([
            config.topics.feedback.as_str(),
            config.topics.checkpoints.as_str(),
        ])
        .chain(router.destinations());
    for (topic, partitions) in [
        (config.topics.posts.as_str(), 3),
        (config.topics.events.as_str(), 2),
    ]
    .into_iter()
    .chain(outputs.map(|topic| (topic, 1)))
    {
        cluster
            .create_topic(topic, partitions, 1)
            .with_context(|| format!("creating topic {topic}"))?;
    }
    config.kafka.create_topics = false;
    println!("dynsig demo: embedded Kafka-protocol broker at {bootstrap}");
    println!(
        "  topics: {} {} -> {} {} {} {} {}; notifications to {}",
        config.topics.posts,
        config.topics.events,
        config.topics.trends,
        config.topics.anomalies,
        config.topics.alerts,
        config.topics.ecosystem,
        config.topics.dlq,
        router.destinations().join(" ")
    );
    println!(
        "  http://{0}/metrics, http://{0}/api/trends, /api/alerts, /api/actors; writes with \
         `Authorization: Bearer {1}`",
        config.http.addr, args.api_token
    );

    let prometheus = telemetry::install_metrics()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let service = tokio::spawn(service::run(config.clone(), prometheus, stop_rx.clone()));
    let feeder = tokio::spawn(feed(
        bootstrap.clone(),
        config.clone(),
        args.posts_per_sec,
        args.duration,
        stop_rx.clone(),
    ));
    let view = tokio::spawn(view::live(
        bootstrap.clone(),
        config.topics.clone(),
        config.kafka.group_id.clone(),
        args.duration,
        stop_rx.clone(),
    ));

    let interrupted = tokio::select! {
        _ = tokio::time::sleep(args.duration) => false,
        _ = tokio::signal::ctrl_c() => true,
    };
    let _ = stop_tx.send(true);
    let produced = feeder.await??;
    let summary = view.await??;
    service.await??;
    println!(
        "\ndemo {}: {produced} records produced; {summary}",
        if interrupted {
            "interrupted"
        } else {
            "finished"
        }
    );
    drop(cluster);
    Ok(())
}

/// The demo's routing: hub and spokes over the example catalog's kinds of actor.
const DEMO_ROUTING: &str = r#"
preset = "collegial"
teams = [
    { name = "marketing", actor_kinds = ["own_brand", "product"] },
    { name = "strategy", actor_kinds = ["competitor"] },
    { name = "partnerships", actor_kinds = ["partner", "supplier"] },
]
"#;

/// The example catalog (ACME, its product, a competitor, a supplier), which the
/// synthetic feed mentions.
const DEMO_CATALOG: &str = include_str!("../../../deploy/catalog.example.toml");

/// A fresh directory for the demo's catalog file, under the system's temp dir.
fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("dynsig-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn demo_config(
    bootstrap: &str,
    args: &DemoArgs,
    catalog_dir: &std::path::Path,
) -> anyhow::Result<Config> {
    let mut config = Config::default();
    config.kafka.brokers = bootstrap.to_string();
    config.kafka.group_id = "dynsig-demo".into();
    // Joins take about half the session timeout: keep the demo's start quick.
    config
        .kafka
        .client
        .insert("session.timeout.ms".into(), "6000".into());
    config.http.addr = args.http_addr;
    config.http.api_token = Secret::new(args.api_token.clone());
    config.window.size_ms = args.window.as_millis() as i64;
    config.window.allowed_lateness_ms = 1_000;
    config.window.idle_timeout_ms = 3_000;
    config.trends.top_k = 10;
    config.anomaly.warmup_windows = 3;
    // Alert timings in windows of the demo, not minutes: incidents fire and resolve
    // within a minute, and notifications are not held back for long.
    let window_ms = config.window.size_ms;
    config.alerts.min_firing_ms = 2 * window_ms;
    config.alerts.cooldown_ms = 2 * window_ms;
    config.alerts.update_interval_ms = 6 * window_ms;
    config.metafilter.group.group_wait_ms = window_ms / 2;
    config.metafilter.group.group_interval_ms = 4 * window_ms;
    config.routing = toml::from_str(DEMO_ROUTING).context("the demo's routing")?;
    let catalog = catalog_dir.join("catalog.toml");
    std::fs::write(&catalog, DEMO_CATALOG)
        .with_context(|| format!("writing {}", catalog.display()))?;
    config.catalog.path = catalog.display().to_string();
    anyhow::ensure!(
        config.window.size_ms >= 1_000,
        "--window must be at least 1s"
    );
    Ok(config)
}

/// Produces the synthetic feed in real time (event time = wall time) until told to stop.
async fn feed(
    bootstrap: String,
    config: Config,
    posts_per_sec: f64,
    duration: Duration,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<u64> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "10")
        .create()
        .context("creating the demo feed producer")?;
    let start = wall_now_ms();
    let mut synth_config = SynthConfig::demo(start, duration.as_millis() as i64);
    synth_config.posts_per_sec = posts_per_sec;
    let mut produced = 0u64;
    let mut payload = Vec::with_capacity(512);
    for input in Synth::new(&synth_config)? {
        let wait = input.ts() - wall_now_ms();
        if wait > 0 {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
            }
        }
        let topic = match gen::encode_json(&input, &mut payload) {
            InputKind::Post => &config.topics.posts,
            InputKind::Event => &config.topics.events,
        };
        while !gen::try_enqueue(&producer, topic, &payload)? {
            tokio::time::sleep(gen::QUEUE_FULL_BACKOFF).await;
        }
        produced += 1;
    }
    Ok(produced)
}
