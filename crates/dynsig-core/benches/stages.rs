//! Cost per operation of each stage a post goes through (issue 8's micro-benchmarks):
//! decoding (JSON, protobuf), tokenizing, counting a term in the window sketch, the whole
//! engine ingest of a post, closing a window's trends, evaluating an alert rule, and
//! saving and restoring the engine's state (checkpoints).
//! The per-series anomaly detector has its own bench (`anomaly`).
//!
//! `cargo bench -p dynsig-core --bench stages`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use dynsig_core::alert::text::{self, SeriesFacts, WindowFacts};
use dynsig_core::alert::{AlertBook, AlertContent, Lifecycle, Observation, Rule, WindowSpan};
use dynsig_core::anomaly::SeriesScore;
use dynsig_core::config::{AlertConfig, EngineConfig, TokenizerConfig, TokenizerMode, TrendConfig};
use dynsig_core::decode::{decode, Format, InputKind, Limits};
use dynsig_core::engine::{Engine, PostTerms};
use dynsig_core::heavy_hitters::HeavyHitters;
use dynsig_core::model::{AlertStatus, Input, Post};
use dynsig_core::rng::SplitMix64;
use dynsig_core::tokenizer::{Scratch, Tokenizer};
use dynsig_core::trend::TrendDetector;
use dynsig_core::window_terms::WindowTerms;
use prost::Message as _;

const T0: i64 = 1_767_225_600_000;
const TEXT: &str = "Our @acme rocket skates broke again after two days, customer service \
                    never answered #fail #acme https://t.co/xyz 😡";
/// A post of the peers' job (`../shared/peers/gen_data.py`): pseudo-words and hashtags.
const PEERS_TEXT: &str =
    "aeeixr ctgdctop hftcj afn wbqqbs yop gzoiofrcq #idbtk #chqxje afn jcfij mtb";

/// `n` distinct words drawn with a Zipf-like skew (rank r with weight ~1/r).
fn zipf_words(n: usize, vocabulary: usize, seed: u64) -> Vec<String> {
    let mut rng = SplitMix64(seed);
    (0..n)
        .map(|_| {
            let rank = (vocabulary as f64).powf(rng.unit()) as usize;
            format!("w{rank}")
        })
        .collect()
}

fn decoding(c: &mut Criterion) {
    let json = serde_json::json!({"id": "p1", "ts": T0, "source": "twitter",
        "author": "someone", "text": TEXT, "lang": "en"})
    .to_string();
    let protobuf = dynsig_proto::v1::Post {
        id: "p1".into(),
        ts: T0,
        source: "twitter".into(),
        author: "someone".into(),
        text: TEXT.into(),
        lang: "en".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let limits = Limits::default();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("json_post", |b| {
        b.iter(|| {
            decode(
                InputKind::Post,
                Format::Json,
                black_box(json.as_bytes()),
                &limits,
            )
        })
    });
    group.bench_function("protobuf_post", |b| {
        b.iter(|| {
            decode(
                InputKind::Post,
                Format::Protobuf,
                black_box(&protobuf),
                &limits,
            )
        })
    });
    group.finish();
}

fn tokenizing(c: &mut Criterion) {
    let tokenizer = Tokenizer::new(&TokenizerConfig::default()).unwrap();
    let mut scratch = Scratch::default();
    let mut group = c.benchmark_group("tokenize");
    group.throughput(Throughput::Elements(1));
    group.bench_function("post_words_bigrams_stopwords", |b| {
        b.iter(|| {
            let mut terms = 0usize;
            tokenizer.for_each_term(black_box(TEXT), &mut scratch, |_, t| terms += t.len());
            terms
        })
    });
    // The peers' job (benches/peers.toml): whitespace tokens as written, nothing dropped.
    let whitespace = Tokenizer::new(&TokenizerConfig {
        mode: TokenizerMode::Whitespace,
        stopwords: Vec::new(),
        bigrams: false,
        ..TokenizerConfig::default()
    })
    .unwrap();
    group.bench_function("post_whitespace", |b| {
        b.iter(|| {
            let mut terms = 0usize;
            whitespace.for_each_term(black_box(PEERS_TEXT), &mut scratch, |_, t| terms += t.len());
            terms
        })
    });
    // A post's terms (words and bigrams) dealt to two shards, as `replay --threads 2
    // --shards 2` does for every post.
    let mut terms = PostTerms::default();
    let engine = Engine::new(EngineConfig::default()).unwrap();
    engine.term_extractor().extract(TEXT, &mut terms);
    let mut parts = vec![PostTerms::default(); 2];
    group.bench_function("split_by_shard_2", |b| {
        b.iter(|| {
            black_box(&terms).split_by_shard(&mut parts);
            parts[0].iter().count()
        })
    });
    group.finish();
}

fn counting(c: &mut Criterion) {
    let words = zipf_words(100_000, 50_000, 7);
    let mut group = c.benchmark_group("window");
    group.throughput(Throughput::Elements(words.len() as u64));
    // Under capacity (exact), then full: 5,000 keys over the 50,000-word vocabulary evict
    // all along.
    for (name, capacity) in [
        ("sketch_update", 200_000),
        ("sketch_update_evicting", 5_000),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || HeavyHitters::<()>::new(capacity),
                |sketch| {
                    for w in &words {
                        sketch.add(w, 1);
                    }
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.bench_function("term_update_with_authors", |b| {
        b.iter_batched_ref(
            || WindowTerms::new(200_000, true),
            |terms| {
                for (i, w) in words.iter().enumerate() {
                    terms.add([w.as_str()], i as u64 % 997, None);
                }
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();

    // One post through the whole engine: tokenize, every window, series, authors.
    let mut engine = Engine::new(EngineConfig::default()).unwrap();
    let posts: Vec<Input> = (0..10_000)
        .map(|i| {
            Input::Post(Post {
                id: format!("p{i}"),
                ts: T0 + i * 5,
                source: "twitter".into(),
                author: format!("u{}", i % 3000),
                text: format!("{TEXT} {}", zipf_words(3, 50_000, i as u64).join(" ")),
                ..Post::default()
            })
        })
        .collect();
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(posts.len() as u64));
    group.bench_function("ingest_post", |b| {
        b.iter(|| {
            for post in &posts {
                let _ = engine.ingest(post, None);
            }
        })
    });
    group.finish();
}

fn closing(c: &mut Criterion) {
    let words = zipf_words(200_000, 50_000, 11);
    let window = |seed: usize| {
        let mut terms = WindowTerms::new(200_000, true);
        for (i, w) in words.iter().enumerate() {
            terms.add([w.as_str()], ((i + seed) % 5000) as u64, None);
        }
        terms
    };
    let previous = window(0);
    let current = window(1);
    let config = TrendConfig::default();
    let mut warm = TrendDetector::new(&config);
    for index in 0..3 {
        warm.close_window(index, &previous);
    }
    let mut group = c.benchmark_group("trend");
    group.throughput(Throughput::Elements(current.len() as u64));
    group.bench_function("close_window_per_term", |b| {
        b.iter_batched_ref(
            || warm.clone(),
            |detector| black_box(detector.close_window(3, &current)),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// What an alert about `scored` says (built only when a message is due).
fn content(scored: &SeriesScore, span: WindowSpan, status: AlertStatus) -> AlertContent {
    let facts = SeriesFacts {
        score: scored,
        actor: None,
        authors: None,
        top_terms: Vec::new(),
        source: Some("twitter"),
        examples: Vec::new(),
    };
    text::anomaly(WindowFacts { name: "1m", span }, &facts, status)
}

fn alerting(c: &mut Criterion) {
    let lifecycle = Lifecycle::new(&AlertConfig::default(), &TrendConfig::default());
    let scored = SeriesScore {
        series: "posts.source=twitter".into(),
        observed: 120.0,
        expected: 100.0,
        score: 0.42,
        explanation: "steady".into(),
    };
    let span = WindowSpan {
        start: T0,
        end: T0 + 60_000,
    };
    let mut book = AlertBook::new();
    let mut out = Vec::new();
    let mut group = c.benchmark_group("alert");
    group.throughput(Throughput::Elements(1));
    // The common case: a quiet series, nothing tracked, no text built.
    group.bench_function("evaluate_quiet_series", |b| {
        b.iter(|| {
            book.observe(
                &lifecycle,
                span,
                Observation {
                    rule: Rule::Anomaly,
                    dedup_key: "anomaly:posts.source=twitter",
                    score: black_box(0.42),
                    factor: 1.0,
                },
                |status, _| content(&scored, span, status),
                &mut out,
            );
        })
    });
    // A firing alert: fire, then resolve (two messages with their text).
    group.bench_function("fire_and_resolve", |b| {
        b.iter_batched_ref(
            AlertBook::new,
            |book| {
                for (i, score) in [0.9999, 0.1].into_iter().enumerate() {
                    let span = WindowSpan {
                        start: T0 + i as i64 * 60_000,
                        end: T0 + (i as i64 + 1) * 60_000,
                    };
                    book.observe(
                        &lifecycle,
                        span,
                        Observation {
                            rule: Rule::Anomaly,
                            dedup_key: "anomaly:posts.source=twitter",
                            score,
                            factor: 1.0,
                        },
                        |status, _| content(&scored, span, status),
                        &mut Vec::new(),
                    );
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// Saving and restoring the engine's state (a service checkpoint): an engine after 20
/// one-minute windows of 100 000 posts with a 200 000-word Zipf vocabulary, so with term
/// baselines, series detectors and an open window.
fn checkpointing(c: &mut Criterion) {
    let mut engine = Engine::new(EngineConfig::default()).unwrap();
    for i in 0..100_000_i64 {
        let post = Input::Post(Post {
            id: format!("p{i}"),
            ts: T0 + i * 12,
            source: "twitter".into(),
            author: format!("u{}", i % 20_000),
            text: zipf_words(8, 200_000, i as u64).join(" "),
            ..Post::default()
        });
        let _ = engine.ingest(&post, None);
        if i % 1000 == 0 {
            engine.poll_closed();
        }
    }
    let mut saved = Vec::new();
    engine.save_state_into(&mut saved).unwrap();
    eprintln!("checkpoint of {} bytes", saved.len());
    let mut group = c.benchmark_group("checkpoint");
    group.throughput(Throughput::Bytes(saved.len() as u64));
    group.sample_size(10);
    group.bench_function("save_state", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(saved.len());
            engine.save_state_into(&mut out).unwrap();
            black_box(out)
        })
    });
    group.bench_function("restore_state", |b| {
        b.iter(|| engine.restore_state(black_box(&saved)).unwrap())
    });
    group.finish();
}

criterion_group!(
    benches,
    decoding,
    tokenizing,
    counting,
    closing,
    alerting,
    checkpointing
);
criterion_main!(benches);
