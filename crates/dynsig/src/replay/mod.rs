//! `dynsig replay`: the same pipeline over JSONL files instead of Kafka, for backfills,
//! tests and benchmarks. Posts and events are merged by event time (each file is expected
//! in roughly event-time order, as a topic partition would be), and every output topic
//! becomes one JSONL file in the output folder.
//!
//! With `--shards N` the keys are split between N engines as between N service instances
//! (see [`dynsig_core::shard`]), each fed every input, and what they publish merged (see
//! [`dynsig_core::shard_merge`]): a preview, and a check, of what a scaled-out deployment
//! publishes. The engines take turns on one thread, or with `--threads 2` each runs on a
//! thread of its own ([`shard_threads`]).

mod shard_threads;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use anyhow::Context as _;
use dynsig_core::decode::{InputKind, Rejection};
use dynsig_core::engine::PostTerms;
use dynsig_core::model::{EpochMs, Input, Post, Signal};
use dynsig_core::shard::Shard;
use dynsig_core::shard_merge::{Merged, ShardMerge};

use crate::catalog;
use crate::config::{Config, TopicsConfig};
use crate::output::signal_record;
use crate::processor::{Decoder, Processor, RawInput};
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
/// set, and writes one `<topic>.jsonl` file per output topic into `out_dir`. With
/// `threads = 2`, each file is read, decoded and tokenized on a thread of its own while
/// this one runs the engine (see [`Prefetched`]); the outputs are the same. With
/// `shards` > 1, the keys are split between that many engines (see the module docs), and
/// with `threads = 2` as well each engine runs on a thread of its own.
pub fn replay(
    config: &Config,
    posts: &Path,
    events: Option<&Path>,
    out_dir: &Path,
    (threads, shards): (u8, u32),
) -> anyhow::Result<ReplaySummary> {
    let mut engines = Engines::new(config, shards)?;
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut sinks = Sinks::create(config, out_dir)?;
    let mut summary = ReplaySummary::default();
    if threads > 1 && shards > 1 {
        shard_threads::replay((posts, events), engines, &mut sinks, &mut summary)?;
        sinks.finish()?;
        return Ok(summary);
    }
    let processor = &engines.processors[0];

    let open = |path: &Path, kind| -> anyhow::Result<Feed> {
        let lines = LineSource::open(path, kind)?;
        Ok(if threads > 1 {
            Feed::Prefetched(Prefetched::start(lines, processor))
        } else {
            Feed::Inline(lines, Input::Post(Post::default()))
        })
    };
    let mut post_feed = open(posts, InputKind::Post)?;
    let mut event_feed = events
        .map(|path| open(path, InputKind::Event))
        .transpose()?;
    let decoder = processor.decoder().clone();
    let mut post_ready = post_feed.advance(&decoder, &mut sinks, &mut summary)?;
    let mut event_ready = match event_feed.as_mut() {
        Some(feed) => feed.advance(&decoder, &mut sinks, &mut summary)?,
        None => false,
    };
    let mut progress = Progress::new("inputs");
    loop {
        let post_ts = post_ready.then(|| post_feed.record().ts());
        let event_ts = event_feed
            .as_ref()
            .filter(|_| event_ready)
            .map(|feed| feed.record().ts());
        let Some(take_post) = post_first(post_ts, event_ts) else {
            break;
        };
        let feed = if take_post {
            &mut post_feed
        } else {
            event_feed.as_mut().expect("an event was read")
        };
        if let Err(rejection) = engines.ingest(feed) {
            let (path, line_no, line) = feed.line();
            sinks.dead_letter(path, line_no, line, &rejection, &mut summary)?;
        }
        let ready = feed.advance(&decoder, &mut sinks, &mut summary)?;
        if take_post {
            post_ready = ready;
        } else {
            event_ready = ready;
        }
        sinks.write_signals(engines.poll(|p| p.poll(None), false), &mut summary)?;
        progress.update(summary.inputs, || {
            let feeds = std::iter::once(&post_feed).chain(event_feed.as_ref());
            let (read, size) = feeds.fold((0, 0), |(r, s), feed| {
                let (read, size) = feed.progress();
                (r + read, s + size)
            });
            (size > 0).then(|| read as f64 / size as f64)
        });
    }
    progress.finish();
    sinks.write_signals(engines.poll(Processor::finish, true), &mut summary)?;
    sinks.finish()?;
    Ok(summary)
}

/// The two-way merge of posts and events by event time, as a consumer interleaving two
/// partitions would: whether the next input is the post (at `post_ts`, if one is ready)
/// rather than the event (at `event_ts`); `None` once both files are done. Every way of
/// replaying takes inputs in this order, so that they publish the same.
fn post_first(post_ts: Option<EpochMs>, event_ts: Option<EpochMs>) -> Option<bool> {
    match (post_ts, event_ts) {
        (Some(post), Some(event)) => Some(post <= event),
        (Some(_), None) => Some(true),
        (None, Some(_)) => Some(false),
        (None, None) => None,
    }
}

/// The engine of a replay, or its shards' engines with the merge of what they publish.
struct Engines {
    processors: Vec<Processor>,
    merge: Option<ShardMerge>,
    /// A copy of the current post's terms for each shard (an engine edits them).
    terms: PostTerms,
}

impl Engines {
    fn new(config: &Config, shards: u32) -> anyhow::Result<Engines> {
        let catalog = (!config.catalog.path.is_empty())
            .then(|| catalog::load(Path::new(&config.catalog.path)))
            .transpose()?;
        let processors = Shard::all(shards.max(1))
            .map(|shard| {
                let mut processor = Processor::new(config)?;
                processor.engine_mut().set_shard(shard);
                if let Some(catalog) = &catalog {
                    processor.engine_mut().set_catalog(catalog.clone());
                }
                Ok(processor)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let merge = (shards > 1)
            .then(|| ShardMerge::new(shards, &config.engine()))
            .transpose()?;
        Ok(Engines {
            merge,
            processors,
            terms: PostTerms::default(),
        })
    }

    /// Feeds the feed's current record to every engine. Shards see the same event time,
    /// so they refuse the same inputs: the first one's verdict is the replay's.
    fn ingest(&mut self, feed: &mut Feed) -> Result<(), Rejection> {
        let [first, others @ ..] = &mut self.processors[..] else {
            unreachable!("at least one engine");
        };
        if others.is_empty() {
            return feed.ingest(first, None);
        }
        let verdict = feed.ingest(first, Some(&mut self.terms));
        for processor in others {
            // Refused alike (see above): already dead-lettered once.
            let _ = feed.ingest(processor, Some(&mut self.terms));
        }
        verdict
    }

    /// What `poll` returns from every engine, shards' windows merged; `end` at the end
    /// of the input.
    fn poll(&mut self, poll: fn(&mut Processor) -> Vec<Signal>, end: bool) -> Vec<Signal> {
        let Some(merge) = self.merge.as_mut() else {
            return poll(&mut self.processors[0]);
        };
        let mut signals = Vec::new();
        for (index, processor) in (0u32..).zip(&mut self.processors) {
            let polled = poll(processor);
            // Read after polling: closing a window raises it.
            let watermark = processor.engine().watermark().filter(|_| !end);
            merge_polled(merge, index, polled, watermark, &mut signals);
        }
        if end {
            signals.extend(merge.finish());
        }
        signals
    }
}

/// Passes what shard `index` published (`polled`) through the merge into `out`: its
/// windows merged with the other shards', the rest as it is; then its event time
/// (`watermark`; `None` at the end of the input), which may release notifications.
fn merge_polled(
    merge: &mut ShardMerge,
    index: u32,
    polled: Vec<Signal>,
    watermark: Option<EpochMs>,
    out: &mut Vec<Signal>,
) {
    let (windows, published) = ShardMerge::split_by_window(polled);
    out.extend(published);
    for window in windows {
        if let Merged::Complete(merged) = merge.push_window(index, window) {
            out.extend(merged);
        }
    }
    if let Some(watermark) = watermark {
        out.extend(merge.push_progress(index, watermark));
    }
}

/// One input file's records, in order: read and decoded on this thread into one reused
/// record, or prefetched by a reader thread.
enum Feed {
    Inline(LineSource, Input),
    Prefetched(Prefetched),
}

impl Feed {
    /// Moves to the next decodable record; false at the end of the file. Rejected lines go
    /// to the dead-letter file on the way.
    fn advance(
        &mut self,
        decoder: &Decoder,
        sinks: &mut Sinks,
        summary: &mut ReplaySummary,
    ) -> anyhow::Result<bool> {
        match self {
            Feed::Inline(lines, record) => {
                let mut read = 0;
                let decoded = lines.next_decoded(decoder, record, &mut read, |lines, rejection| {
                    sinks.dead_letter(
                        &lines.path,
                        lines.line_no,
                        lines.line(),
                        &rejection,
                        summary,
                    )
                });
                summary.inputs += read;
                decoded
            }
            Feed::Prefetched(prefetched) => {
                while prefetched.next()? {
                    summary.inputs += 1;
                    let item = prefetched.current();
                    match &item.decoded {
                        Ok(()) => return Ok(true),
                        Err(rejection) => sinks.dead_letter(
                            &prefetched.path,
                            item.line_no,
                            &item.line,
                            rejection,
                            summary,
                        )?,
                    }
                }
                Ok(false)
            }
        }
    }

    /// The current record (after [`Feed::advance`] said there is one).
    fn record(&self) -> &Input {
        match self {
            Feed::Inline(_, record) => record,
            Feed::Prefetched(prefetched) => &prefetched.current().record,
        }
    }

    /// Feeds the current record to `processor`; a prefetched post's terms are handed
    /// over as they are, or copied into `copy` first when several engines take them.
    fn ingest(
        &mut self,
        processor: &mut Processor,
        copy: Option<&mut PostTerms>,
    ) -> Result<(), Rejection> {
        match self {
            Feed::Inline(_, record) => processor.ingest(record, None),
            Feed::Prefetched(prefetched) => {
                let item = prefetched.current_mut();
                let terms = match copy {
                    Some(copy) => {
                        copy.clone_from(&item.terms);
                        copy
                    }
                    None => &mut item.terms,
                };
                processor.ingest_with_terms(&item.record, None, terms)
            }
        }
    }

    /// The current record's file, line number and line.
    fn line(&self) -> (&Path, u64, &[u8]) {
        match self {
            Feed::Inline(lines, _) => (&lines.path, lines.line_no, lines.line()),
            Feed::Prefetched(prefetched) => {
                let item = prefetched.current();
                (&prefetched.path, item.line_no, &item.line)
            }
        }
    }

    /// Bytes read so far, and the file's size (for the progress line).
    fn progress(&self) -> (u64, u64) {
        match self {
            Feed::Inline(lines, _) => (lines.bytes_read, lines.size),
            Feed::Prefetched(prefetched) => (prefetched.bytes_read, prefetched.size),
        }
    }
}

/// One JSONL input file, read line by line into a reused buffer.
struct LineSource {
    path: PathBuf,
    kind: InputKind,
    reader: BufReader<File>,
    /// Where the line last read is: its length (line end included) at the start of the
    /// reader's buffer, to be consumed by the next read, or `None` when it is in
    /// `spilled`. Most lines are read in place: copying each one cost ~3% of a replay.
    in_place: Option<usize>,
    /// The line last read when it did not lie whole in the reader's buffer (it spanned
    /// two fills, or ended the file without a line end).
    spilled: Vec<u8>,
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
            in_place: None,
            spilled: Vec::new(),
            line_no: 0,
            bytes_read: 0,
            size,
        })
    }

    /// Reads the next line that is not blank; false at the end of the file.
    fn read_line(&mut self) -> anyhow::Result<bool> {
        loop {
            self.consume_line();
            let buffer = self
                .reader
                .fill_buf()
                .with_context(|| format!("reading {}", self.path.display()))?;
            if buffer.is_empty() {
                return Ok(false);
            }
            let read = match memchr::memchr(b'\n', buffer) {
                Some(at) => {
                    self.in_place = Some(at + 1);
                    at + 1
                }
                None => {
                    self.spilled.clear();
                    self.reader
                        .read_until(b'\n', &mut self.spilled)
                        .with_context(|| format!("reading {}", self.path.display()))?
                }
            };
            self.bytes_read += read as u64;
            self.line_no += 1;
            if !self.line().iter().all(u8::is_ascii_whitespace) {
                return Ok(true);
            }
        }
    }

    /// Reads lines until one decodes into `record`; false at the end of the file. Each
    /// line read counts in `read`, and each rejected one goes to `rejected`.
    fn next_decoded(
        &mut self,
        decoder: &Decoder,
        record: &mut Input,
        read: &mut u64,
        mut rejected: impl FnMut(&LineSource, Rejection) -> anyhow::Result<()>,
    ) -> anyhow::Result<bool> {
        while self.read_line()? {
            *read += 1;
            match decoder.decode_into(self.raw_input(), record) {
                Ok(()) => return Ok(true),
                Err(rejection) => rejected(self, rejection)?,
            }
        }
        Ok(false)
    }

    /// Moves past the next line that is not blank without copying it (the line is not
    /// available); false at the end of the file.
    fn skip_line(&mut self) -> anyhow::Result<bool> {
        self.consume_line();
        // Whether the line being skipped has content, and any of it was seen yet.
        let (mut blank, mut started) = (true, false);
        loop {
            let buffer = self
                .reader
                .fill_buf()
                .with_context(|| format!("reading {}", self.path.display()))?;
            if buffer.is_empty() {
                // A last line without a line end still counts.
                self.line_no += u64::from(started);
                return Ok(!blank);
            }
            let (end, consumed) = match memchr::memchr(b'\n', buffer) {
                Some(at) => (Some(at), at + 1),
                None => (None, buffer.len()),
            };
            blank &= buffer[..end.unwrap_or(consumed)]
                .iter()
                .all(u8::is_ascii_whitespace);
            started = true;
            self.reader.consume(consumed);
            self.bytes_read += consumed as u64;
            if end.is_some() {
                self.line_no += 1;
                if !blank {
                    return Ok(true);
                }
                (blank, started) = (true, false);
            }
        }
    }

    /// Moves the reader past the line last read, if it was read in place.
    fn consume_line(&mut self) {
        if let Some(len) = self.in_place.take() {
            self.reader.consume(len);
        }
    }

    /// The line last read, without its line end.
    fn line(&self) -> &[u8] {
        match self.in_place {
            Some(len) => trim_line_end(&self.reader.buffer()[..len]),
            None => trim_line_end(&self.spilled),
        }
    }

    fn raw_input(&self) -> RawInput<'_> {
        RawInput {
            kind: self.kind,
            payload: self.line(),
            content_type: None,
        }
    }
}

/// Lines per batch handed from a reader thread to the engine's.
const PREFETCH_BATCH: usize = 1024;
/// Batches decoded ahead at most.
const PREFETCH_AHEAD: usize = 4;

/// A line as a reader thread prepared it: decoded (or rejected) and, for a post, its
/// terms extracted, so that the engine's thread only counts.
struct Prepared {
    line_no: u64,
    line: Vec<u8>,
    decoded: Result<(), Rejection>,
    record: Input,
    terms: PostTerms,
}

impl Default for Prepared {
    fn default() -> Self {
        Prepared {
            line_no: 0,
            line: Vec::new(),
            decoded: Ok(()),
            record: Input::Post(Post::default()),
            terms: PostTerms::default(),
        }
    }
}

/// Prepared lines, in order. The batches go back to the reader once consumed, so that
/// their records' strings are reused rather than allocated per line.
#[derive(Default)]
struct PreparedBatch {
    items: Vec<Prepared>,
    len: usize,
    bytes_read: u64,
}

/// A file read, decoded and tokenized on a reader thread of its own.
struct Prefetched {
    path: PathBuf,
    size: u64,
    bytes_read: u64,
    batches: Receiver<PreparedBatch>,
    spent: Sender<PreparedBatch>,
    current: PreparedBatch,
    /// The next item of `current` to hand out.
    next: usize,
    reader: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Prefetched {
    fn start(mut lines: LineSource, processor: &Processor) -> Prefetched {
        let (path, size) = (lines.path.clone(), lines.size);
        let decoder = processor.decoder().clone();
        let mut extractor = processor.engine().term_extractor();
        let (batch_tx, batches) = mpsc::sync_channel(PREFETCH_AHEAD);
        let (spent, spent_rx) = mpsc::channel::<PreparedBatch>();
        let reader = std::thread::spawn(move || -> anyhow::Result<()> {
            loop {
                let mut batch = spent_rx.try_recv().unwrap_or_default();
                batch.len = 0;
                while batch.len < PREFETCH_BATCH && lines.read_line()? {
                    if batch.len == batch.items.len() {
                        batch.items.push(Prepared::default());
                    }
                    let item = &mut batch.items[batch.len];
                    item.line_no = lines.line_no;
                    item.line.clear();
                    item.line.extend_from_slice(lines.line());
                    item.decoded = decoder.decode_with_terms(
                        lines.raw_input(),
                        &mut extractor,
                        &mut item.record,
                        &mut item.terms,
                    );
                    batch.len += 1;
                }
                batch.bytes_read = lines.bytes_read;
                let last = batch.len < PREFETCH_BATCH;
                // The engine's side stopped (an error there): nothing more to do.
                if batch_tx.send(batch).is_err() || last {
                    return Ok(());
                }
            }
        });
        Prefetched {
            path,
            size,
            bytes_read: 0,
            batches,
            spent,
            current: PreparedBatch::default(),
            next: 0,
            reader: Some(reader),
        }
    }

    /// Moves to the next prepared line; false at the end of the file (an error when the
    /// reader failed).
    fn next(&mut self) -> anyhow::Result<bool> {
        while self.next >= self.current.len {
            match self.batches.recv() {
                Ok(batch) => {
                    let spent = std::mem::replace(&mut self.current, batch);
                    // The reader may have finished: then the batch is simply dropped.
                    let _ = self.spent.send(spent);
                    self.bytes_read = self.current.bytes_read;
                    self.next = 0;
                }
                Err(_) => {
                    if let Some(reader) = self.reader.take() {
                        reader.join().map_err(|_| {
                            anyhow::anyhow!("the reader of {} panicked", self.path.display())
                        })??;
                    }
                    return Ok(false);
                }
            }
        }
        self.next += 1;
        Ok(true)
    }

    /// The line [`Prefetched::next`] handed out last.
    fn current(&self) -> &Prepared {
        &self.current.items[self.next - 1]
    }

    fn current_mut(&mut self) -> &mut Prepared {
        &mut self.current.items[self.next - 1]
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Skipping a line moves past the same lines as reading it: blank lines are not
    /// lines, CRLF ends are ends, a last line needs no line end, and a line longer than
    /// the read buffer is one line. Read lines are whole, whether read in place or not.
    #[test]
    fn skipping_lines_counts_them_as_reading_does() {
        let long = "x".repeat(3 << 20);
        let text = format!("a\n\n  \r\nb\r\n{long}\n\nc");
        let path = std::env::temp_dir().join(format!("dynsig-skip-{}.jsonl", std::process::id()));
        std::fs::write(&path, &text).unwrap();
        // Every `n`th line skipped (from the first), the others read; `None`: all read.
        let lines_of = |skip_every: Option<usize>| {
            let mut source = LineSource::open(&path, InputKind::Post).unwrap();
            let (mut seen, mut contents) = (Vec::new(), Vec::new());
            for i in 0.. {
                let skip = skip_every.is_some_and(|n| i % n == 0);
                let more = if skip {
                    source.skip_line().unwrap()
                } else {
                    source.read_line().unwrap()
                };
                if !more {
                    break;
                }
                seen.push(source.line_no);
                if !skip {
                    contents.push(String::from_utf8(source.line().to_vec()).unwrap());
                }
            }
            let read = (seen, source.line_no, source.bytes_read);
            (read, contents)
        };
        let (read, contents) = lines_of(None);
        assert_eq!(read, (vec![1, 4, 5, 7], 7, text.len() as u64));
        assert_eq!(contents, ["a", "b", long.as_str(), "c"]);
        let (_, every_other) = lines_of(Some(2));
        assert_eq!(every_other, ["b", "c"]);
        let lines_of = |skip_every| lines_of(skip_every).0;
        assert_eq!(lines_of(Some(1)), read, "every line skipped");
        assert_eq!(lines_of(Some(2)), read, "every other line skipped");
        std::fs::remove_file(&path).unwrap();
    }
}
