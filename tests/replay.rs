//! `dynsig gen` then `dynsig replay`, through the binary, no broker: every burst and
//! incident the generator planted must come out as a firing alert in the right window,
//! the output files must be what downstream tools parse, and `--threads 2` must write
//! the same files, as must `--shards 3`, on one thread or three (but for the order of
//! records within a file).

mod support;

use serde_json::Value;
use support::{read_jsonl, run_dynsig, TestDir};

const START_MS: i64 = 1_800_000_000_000;
const WINDOW_MS: i64 = 60_000;

#[test]
fn replay_reports_every_planted_burst_and_incident() {
    let scratch = TestDir::new("replay-planted");
    let dir = scratch.path();
    let (posts, events, truth, out) = (
        dir.join("posts.jsonl"),
        dir.join("events.jsonl"),
        dir.join("truth.json"),
        dir.join("out"),
    );
    let start = START_MS.to_string();
    run_dynsig(&[
        "gen",
        "--duration",
        "10m",
        "--start",
        &start,
        "--posts",
        posts.to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
        "--truth",
        truth.to_str().unwrap(),
    ]);
    let replay = |(threads, shards): (&str, &str), out: &std::path::Path| {
        run_dynsig(&[
            "replay",
            "--threads",
            threads,
            "--shards",
            shards,
            "--posts",
            posts.to_str().unwrap(),
            "--events",
            events.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ])
    };
    replay(("1", "1"), &out);
    // The same with each file read, decoded and tokenized on a thread of its own.
    let threaded = dir.join("out-threaded");
    replay(("2", "1"), &threaded);
    for file in std::fs::read_dir(&out).unwrap() {
        let name = file.unwrap().file_name();
        assert_eq!(
            std::fs::read(out.join(&name)).unwrap(),
            std::fs::read(threaded.join(&name)).unwrap(),
            "{name:?} differs with --threads 2"
        );
    }
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        std::fs::read_dir(&threaded).unwrap().count()
    );
    // Keys split between three engines, as between three instances: the merged trend
    // snapshots are the same file; the rest the same records, in the order the shards
    // published them. The same whether the three engines take turns on one thread or
    // each runs on its own (with the posts dealt out in batches).
    for threads in ["1", "2"] {
        let sharded = dir.join(format!("out-sharded-{threads}"));
        replay((threads, "3"), &sharded);
        for file in std::fs::read_dir(&out).unwrap() {
            let name = file.unwrap().file_name();
            let [mut whole, mut split] = [&out, &sharded].map(|dir| {
                let text = std::fs::read_to_string(dir.join(&name)).unwrap();
                text.lines().map(str::to_owned).collect::<Vec<_>>()
            });
            if name != "signals.trends.jsonl" {
                whole.sort();
                split.sort();
            }
            assert!(
                whole == split,
                "{name:?} differs with --shards 3 --threads {threads}"
            );
        }
    }

    let truth: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&truth).unwrap()).unwrap();
    let alerts: Vec<Value> = read_jsonl(&out.join("signals.alerts.jsonl"));
    let trends: Vec<Value> = read_jsonl(&out.join("signals.trends.jsonl"));
    assert_eq!(
        trends.len(),
        10,
        "one snapshot per minute of a 10-minute feed"
    );
    assert!(!truth.is_empty());

    for planted in &truth {
        let signal = &planted["signal"];
        let expected_id = match signal["type"].as_str().unwrap() {
            "burst" => {
                let term = signal["term"].as_str().unwrap();
                let kind = match term.chars().next() {
                    Some('#') => "hashtag",
                    Some('@') => "mention",
                    Some('$') => "cashtag",
                    _ => "word",
                };
                format!("trend:{kind}:{term}")
            }
            "incident" => format!(
                "anomaly:events.kind={},key={}",
                signal["kind"].as_str().unwrap(),
                signal["key"].as_str().unwrap()
            ),
            other => panic!("unknown planted signal {other}"),
        };
        let (start, end) = (
            planted["start_ms"].as_i64().unwrap(),
            planted["end_ms"].as_i64().unwrap(),
        );
        let fired = alerts.iter().any(|alert| {
            let at = alert["starts_at"].as_i64().unwrap();
            alert["dedup_key"] == expected_id.as_str()
                && alert["status"] == "firing"
                // Fired by the first or second window that overlaps the planted interval.
                && at > start
                && at <= (start / WINDOW_MS + 2) * WINDOW_MS
                && at <= end + WINDOW_MS
        });
        assert!(
            fired,
            "no firing alert {expected_id} for {planted}; alerts: {alerts:#?}"
        );
    }
}

#[test]
fn replay_dead_letters_bad_lines_and_keeps_going() {
    dead_letters_bad_lines_and_keeps_going("1", "1");
}

#[test]
fn replay_with_reader_threads_dead_letters_bad_lines_and_keeps_going() {
    dead_letters_bad_lines_and_keeps_going("2", "1");
}

#[test]
fn replay_with_shard_threads_dead_letters_bad_lines_and_keeps_going() {
    dead_letters_bad_lines_and_keeps_going("2", "2");
}

fn dead_letters_bad_lines_and_keeps_going(threads: &str, shards: &str) {
    let scratch = TestDir::new(&format!("replay-bad-lines-{threads}-{shards}"));
    let dir = scratch.path();
    let posts = dir.join("posts.jsonl");
    let good = |ts: i64, text: &str| format!(r#"{{"ts":{ts},"author":"a","text":"{text}"}}"#);
    let lines = [
        good(START_MS, "hello world"),
        "not json".to_string(),
        r#"{"text":"no timestamp"}"#.to_string(),
        good(START_MS + 70_000, "later post"),
        // Its window closed when the previous post moved the watermark past it.
        good(START_MS + 1_000, "late post"),
    ];
    std::fs::write(&posts, lines.join("\n")).unwrap();
    let out = dir.join("out");
    run_dynsig(&[
        "replay",
        "--threads",
        threads,
        "--shards",
        shards,
        "--posts",
        posts.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);

    let letters: Vec<Value> = read_jsonl(&out.join("dynsig.dlq.jsonl"));
    let reasons: Vec<(&str, i64)> = letters
        .iter()
        .map(|l| {
            (
                l["reason"].as_str().unwrap(),
                l["source_line"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(reasons, [("invalid_json", 2), ("missing_field", 3)]);
    let late: Vec<Value> = read_jsonl(&out.join("signals.late.jsonl"));
    assert_eq!(late.len(), 1, "late inputs have their own topic: {late:?}");
    assert_eq!(
        (late[0]["reason"].as_str(), late[0]["source_line"].as_i64()),
        (Some("late"), Some(5))
    );
    assert_eq!(
        late[0]["payload"],
        lines[4].as_str(),
        "a dead letter keeps the original line"
    );
    let trends: Vec<Value> = read_jsonl(&out.join("signals.trends.jsonl"));
    let counted: u64 = trends.iter().map(|t| t["events"].as_u64().unwrap()).sum();
    assert_eq!(
        counted, 2,
        "both good posts are counted, the late one is not"
    );
}
