//! `dynsig replay`: the same pipeline over JSONL files instead of Kafka, for backfills,
//! tests and benchmarks. Posts and events are merged by event time (each file is expected
//! in roughly event-time order, as a topic partition would be), and every output topic
//! becomes one JSONL file in the output folder.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use dynsig_core::decode::{InputKind, Rejection};
use dynsig_core::model::{Input, Post, Signal};

use crate::catalog;
use crate::config::{Config, TopicsConfig};
use crate::output::signal_record;
use crate::processor::{Processor, RawInput};
use crate::progress::Progress;

/// What a replay read and wrote.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    pub inputs: u64,
    pub rejected: u64,
    pub trend_snapshots: u64,
    pub anomalies: u64,
    pub alerts: u64,
    pub notifications: u64,
}

/// Runs the pipeline over `posts` (and `events`), with the catalog of `catalog.path` when
/// set, and writes one `<topic>.jsonl` file per output topic into `out_dir`.
pub fn replay(
    config: &Config,
    posts: &Path,
    events: Option<&Path>,
    out_dir: &Path,
) -> anyhow::Result<ReplaySummary> {
    let mut processor = Processor::new(config)?;
    if !config.catalog.path.is_empty() {
        let matcher = catalog::load(Path::new(&config.catalog.path))?;
        processor.engine_mut().set_catalog(matcher);
    }
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut sinks = Sinks::create(config, out_dir)?;
    let mut summary = ReplaySummary::default();

    let mut post_lines = LineSource::open(posts, InputKind::Post)?;
    let mut event_lines = match events {
        Some(path) => Some(LineSource::open(path, InputKind::Event)?),
        None => None,
    };
    let mut post_ready = post_lines.next_input(&processor, &mut sinks, &mut summary)?;
    let mut event_ready = match event_lines.as_mut() {
        Some(lines) => lines.next_input(&processor, &mut sinks, &mut summary)?,
        None => false,
    };
    let mut progress = Progress::new("inputs");
    // Two-way merge by event time, as a consumer interleaving two partitions would.
    loop {
        let events = event_lines.as_ref().filter(|_| event_ready);
        let take_post = match (post_ready, events) {
            (true, Some(events)) => post_lines.record.ts() <= events.record.ts(),
            (true, None) => true,
            (false, Some(_)) => false,
            (false, None) => break,
        };
        let source = if take_post {
            &mut post_lines
        } else {
            event_lines.as_mut().expect("an event was read")
        };
        if let Err(rejection) = processor.ingest(&source.record, None) {
            // The source's buffer still holds this record's line: it is read before the next.
            let line = trim_line_end(&source.buffer);
            sinks.dead_letter(&source.path, source.line_no, line, &rejection, &mut summary)?;
        }
        let ready = source.next_input(&processor, &mut sinks, &mut summary)?;
        if take_post {
            post_ready = ready;
        } else {
            event_ready = ready;
        }
        sinks.write_signals(processor.poll(None), &mut summary)?;
        progress.update(summary.inputs, || {
            let sources = std::iter::once(&post_lines).chain(event_lines.as_ref());
            let (read, size) = sources.fold((0, 0), |(r, s), l| (r + l.bytes_read, s + l.size));
            (size > 0).then(|| read as f64 / size as f64)
        });
    }
    progress.finish();
    sinks.write_signals(processor.finish(), &mut summary)?;
    sinks.finish()?;
    Ok(summary)
}

/// One JSONL input file, read line by line into a reused buffer, each line decoded into
/// a reused record.
struct LineSource {
    path: PathBuf,
    kind: InputKind,
    reader: BufReader<File>,
    buffer: Vec<u8>,
    /// The record of the last line read, when [`LineSource::next_input`] said so.
    record: Input,
    line_no: u64,
    /// Bytes read so far, and the file's size (for the progress line).
    bytes_read: u64,
    size: u64,
}

impl LineSource {
    fn open(path: &Path, kind: InputKind) -> anyhow::Result<Self> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self {
            path: path.to_owned(),
            kind,
            reader: BufReader::with_capacity(1 << 20, file),
            buffer: Vec::new(),
            record: Input::Post(Post::default()),
            line_no: 0,
            bytes_read: 0,
            size,
        })
    }

    /// Decodes the next decodable line into `record`; false at the end of the file.
    /// Rejected lines go to the dead-letter file on the way.
    fn next_input(
        &mut self,
        processor: &Processor,
        sinks: &mut Sinks,
        summary: &mut ReplaySummary,
    ) -> anyhow::Result<bool> {
        loop {
            self.buffer.clear();
            let read = self
                .reader
                .read_until(b'\n', &mut self.buffer)
                .with_context(|| format!("reading {}", self.path.display()))?;
            if read == 0 {
                return Ok(false);
            }
            self.bytes_read += read as u64;
            self.line_no += 1;
            let line = trim_line_end(&self.buffer);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            summary.inputs += 1;
            let input = RawInput {
                kind: self.kind,
                payload: line,
                content_type: None,
                origin: None,
            };
            match processor.decode_into(input, &mut self.record) {
                Ok(()) => return Ok(true),
                Err(rejection) => {
                    sinks.dead_letter(&self.path, self.line_no, line, &rejection, summary)?
                }
            }
        }
    }
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let end = line
        .iter()
        .rposition(|b| *b != b'\n' && *b != b'\r')
        .map_or(0, |i| i + 1);
    &line[..end]
}

/// The output files, one per topic: those of the fixed topics are created up front (so
/// that an empty one says "nothing was published"), routed team topics when first used.
struct Sinks {
    dir: PathBuf,
    topics: TopicsConfig,
    files: BTreeMap<String, BufWriter<File>>,
}

impl Sinks {
    fn create(config: &Config, dir: &Path) -> anyhow::Result<Self> {
        let mut sinks = Sinks {
            dir: dir.to_owned(),
            topics: config.topics.clone(),
            files: BTreeMap::new(),
        };
        let topics = &config.topics;
        for topic in [
            &topics.trends,
            &topics.anomalies,
            &topics.alerts,
            &topics.dlq,
        ]
        .into_iter()
        .chain(Some(&topics.late).filter(|late| !late.is_empty()))
        {
            sinks.file(topic)?;
        }
        Ok(sinks)
    }

    /// The file of `topic`, created on first use.
    fn file(&mut self, topic: &str) -> anyhow::Result<&mut BufWriter<File>> {
        if !self.files.contains_key(topic) {
            let path = self.dir.join(format!("{topic}.jsonl"));
            let file =
                File::create(&path).with_context(|| format!("creating {}", path.display()))?;
            self.files.insert(topic.to_owned(), BufWriter::new(file));
        }
        Ok(self.files.get_mut(topic).expect("just inserted"))
    }

    fn write_signals(
        &mut self,
        signals: Vec<Signal>,
        summary: &mut ReplaySummary,
    ) -> anyhow::Result<()> {
        for signal in signals {
            match &signal {
                Signal::Trend(_) => summary.trend_snapshots += 1,
                Signal::Anomaly(_) => summary.anomalies += 1,
                Signal::Alert(_) => summary.alerts += 1,
                Signal::Notification(_) => summary.notifications += 1,
                Signal::Digest(_) | Signal::Ecosystem(_) => {}
            }
            let record = signal_record(&self.topics, &signal);
            let sink = self.file(&record.topic)?;
            sink.write_all(&record.payload)?;
            sink.write_all(b"\n")?;
        }
        Ok(())
    }

    /// A dead letter as a JSON line: the reason, where it came from, and the original line.
    fn dead_letter(
        &mut self,
        path: &Path,
        line_no: u64,
        payload: &[u8],
        rejection: &Rejection,
        summary: &mut ReplaySummary,
    ) -> anyhow::Result<()> {
        summary.rejected += 1;
        let letter = serde_json::json!({
            "reason": rejection.reason.as_str(),
            "detail": rejection.detail,
            "source_file": path.display().to_string(),
            "source_line": line_no,
            "payload": String::from_utf8_lossy(payload),
        });
        let topic = self.topics.rejected(rejection.reason).to_owned();
        let sink = self.file(&topic)?;
        serde_json::to_writer(&mut *sink, &letter)?;
        sink.write_all(b"\n")?;
        Ok(())
    }

    fn finish(mut self) -> anyhow::Result<()> {
        for sink in self.files.values_mut() {
            sink.flush()?;
        }
        Ok(())
    }
}
