//! `dynsig gen`: writes the synthetic feed of `dynsig_core::synth` (background posts and
//! internal events with the planted signals of a scenario: the demo's bursts and
//! incidents, or the trends and spammer of the trend-quality test) to JSONL files or
//! Kafka topics, and the planted truth to a JSON file, for demos, tests, load tests and
//! benchmarks.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use dynsig_core::decode::InputKind;
use dynsig_core::model::Input;
use dynsig_core::synth::{Synth, SynthConfig};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;

use crate::progress::Progress;

/// The scenarios of `dynsig_core::synth::SynthConfig`.
#[derive(Clone, Copy, ValueEnum)]
enum Scenario {
    /// Bursts and incidents at fixed fractions of the duration, as in `dynsig demo`.
    Demo,
    /// Trends from strong to near the alert threshold, and a spammer, laid out on 45
    /// minutes (a shorter feed leaves out those that do not fit).
    TrendQuality,
}

#[derive(Args)]
pub struct GenArgs {
    /// Which signals the feed plants, with their truth.
    #[arg(long, value_enum, default_value_t = Scenario::Demo)]
    scenario: Scenario,
    /// Length of the feed in event time, e.g. 10m, 1h.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    duration: std::time::Duration,
    /// First event time, epoch ms (default: now, rounded down to the minute).
    #[arg(long)]
    start: Option<i64>,
    /// Background posts per second of event time.
    #[arg(long)]
    posts_per_sec: Option<f64>,
    /// Background internal events per second of event time.
    #[arg(long)]
    events_per_sec: Option<f64>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Write posts to this JSONL file.
    #[arg(long)]
    posts: Option<PathBuf>,
    /// Write internal events to this JSONL file.
    #[arg(long)]
    events: Option<PathBuf>,
    /// Write what was planted (terms, incidents, their times) to this JSON file.
    #[arg(long)]
    truth: Option<PathBuf>,
    /// Also produce to Kafka (topics `posts` and `events` unless renamed below).
    #[arg(long)]
    brokers: Option<String>,
    #[arg(long, default_value = "posts")]
    posts_topic: String,
    #[arg(long, default_value = "events")]
    events_topic: String,
    /// Produce in real time: each record when the wall clock reaches its event time (an
    /// open-loop load, e.g. for benches/latency.sh); with no --start, the feed starts now.
    #[arg(long)]
    realtime: bool,
}

pub fn gen(args: GenArgs) -> anyhow::Result<()> {
    if args.posts.is_none()
        && args.events.is_none()
        && args.brokers.is_none()
        && args.truth.is_none()
    {
        anyhow::bail!("nothing to write: give --posts, --events, --truth and/or --brokers");
    }
    let start = args.start.unwrap_or_else(|| {
        let now = crate::service::wall_now_ms();
        // A real-time feed starts now; a file's at the minute, for round windows.
        if args.realtime {
            now
        } else {
            now / 60_000 * 60_000
        }
    });
    let duration_ms = args.duration.as_millis() as i64;
    let mut synth_config = match args.scenario {
        Scenario::Demo => SynthConfig::demo(start, duration_ms),
        Scenario::TrendQuality => SynthConfig::trend_quality(start, duration_ms),
    };
    synth_config.seed = args.seed;
    if let Some(rate) = args.posts_per_sec {
        synth_config.posts_per_sec = rate;
    }
    if let Some(rate) = args.events_per_sec {
        synth_config.events_per_sec = rate;
    }
    let synth = Synth::new(&synth_config)?;
    if let Some(path) = &args.truth {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        serde_json::to_writer_pretty(file, synth.truth())?;
    }
    let open = |path: &Option<PathBuf>| -> anyhow::Result<Option<BufWriter<File>>> {
        path.as_ref()
            .map(|p| {
                File::create(p)
                    .map(BufWriter::new)
                    .with_context(|| format!("creating {}", p.display()))
            })
            .transpose()
    };
    let mut posts_out = open(&args.posts)?;
    let mut events_out = open(&args.events)?;
    let producer: Option<FutureProducer> = match &args.brokers {
        Some(brokers) => Some(
            rdkafka::ClientConfig::new()
                .set("bootstrap.servers", brokers)
                // A real-time feed stands for ordinary applications publishing as things
                // happen (librdkafka's default 5 ms); a file's worth, for throughput.
                .set("linger.ms", if args.realtime { "5" } else { "20" })
                .set("enable.idempotence", "true")
                .create()
                .context("creating the Kafka producer")?,
        ),
        None => None,
    };

    let mut line = Vec::with_capacity(512);
    let (mut posts, mut events) = (0u64, 0u64);
    let mut progress = Progress::new("records");
    for input in synth {
        let ts = input.ts();
        if args.realtime {
            let wait = ts - crate::service::wall_now_ms();
            if wait > 0 {
                std::thread::sleep(std::time::Duration::from_millis(wait as u64));
            }
        }
        progress.update(posts + events, || {
            Some((ts - start) as f64 / duration_ms.max(1) as f64)
        });
        let (out, topic) = match encode_json(&input, &mut line) {
            InputKind::Post => {
                posts += 1;
                (&mut posts_out, &args.posts_topic)
            }
            InputKind::Event => {
                events += 1;
                (&mut events_out, &args.events_topic)
            }
        };
        if let Some(producer) = &producer {
            while !try_enqueue(producer, topic, &line)? {
                std::thread::sleep(QUEUE_FULL_BACKOFF);
            }
        }
        if let Some(out) = out {
            out.write_all(&line)?;
            out.write_all(b"\n")?;
        }
    }
    for out in [posts_out.as_mut(), events_out.as_mut()]
        .into_iter()
        .flatten()
    {
        out.flush()?;
    }
    if let Some(producer) = &producer {
        producer
            .flush(Timeout::Never)
            .context("flushing the producer")?;
    }
    progress.finish();
    eprintln!("generated {posts} posts and {events} internal events");
    Ok(())
}

/// How long a producer waits when librdkafka's queue is full.
pub const QUEUE_FULL_BACKOFF: std::time::Duration = std::time::Duration::from_millis(5);

/// Writes `input` as JSON (the topics' default encoding) into `buffer`, replacing its
/// content, and tells which input topic it belongs to.
pub fn encode_json(input: &Input, buffer: &mut Vec<u8>) -> InputKind {
    buffer.clear();
    // Plain structs of strings, numbers and string maps always serialize.
    match input {
        Input::Post(post) => {
            serde_json::to_writer(&mut *buffer, post).expect("a post serializes");
            InputKind::Post
        }
        Input::Event(event) => {
            serde_json::to_writer(&mut *buffer, event).expect("an event serializes");
            InputKind::Event
        }
    }
}

/// Queues one record without waiting for its acknowledgement (the producer batches);
/// `Ok(false)` when librdkafka's queue is full and the caller should wait and retry.
pub fn try_enqueue(producer: &FutureProducer, topic: &str, payload: &[u8]) -> anyhow::Result<bool> {
    let record = FutureRecord::<(), [u8]>::to(topic).payload(payload);
    match producer.send_result(record) {
        Ok(_delivery) => Ok(true),
        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => Ok(false),
        Err((error, _)) => Err(error).context("producing"),
    }
}
