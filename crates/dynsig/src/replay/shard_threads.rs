//! `dynsig replay --threads 2 --shards N`: every shard's engine on a thread of its own, as
//! N instances of a scaled-out group would run, with the decoding shared out.
//!
//! The posts file is cut into batches of [`BATCH`] lines, dealt round-robin: worker `w`
//! reads, decodes and tokenizes batches `w`, `w + N`, `w + 2N`... (it skips the other
//! lines), splits each post's terms by owner ([`PostTerms::split_by_shard`]) and hands
//! the batch to every other worker. Each worker then feeds its engine every input, in
//! file order, with only its own shard's terms: event time, window coverage and post
//! counts agree between shards without any exchange (see [`dynsig_core::shard`]), while
//! the tokenizing, the counting and the closing of windows are split N ways.
//!
//! Events need no terms: every worker reads and decodes the events file itself.
//!
//! What each engine publishes after each input, and its event time, go to this thread in
//! reports of [`REPORT_STEPS`] inputs; the reports of all shards for the same inputs are
//! merged input by input in shard order, exactly as the one-thread `--shards` replay
//! merges them, so the files are the same (records within a file may come in another
//! order; the trend snapshots file is identical). Worker 0 speaks for the inputs: it
//! counts them and dead-letters the lines that are rejected (every shard rejects the same
//! ones, as in the one-thread replay).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

use anyhow::Context as _;
use dynsig_core::decode::{InputKind, Rejection};
use dynsig_core::engine::{PostTerms, TermExtractor};
use dynsig_core::model::{EpochMs, Input, Post, Signal};
use dynsig_core::shard_merge::ShardMerge;

use super::{merge_polled, post_first, Engines, LineSource, ReplaySummary, Sinks};
use crate::processor::{Decoder, Processor};
use crate::progress::Progress;

/// Lines per batch of posts dealt to a worker.
const BATCH: usize = 256;
/// Own batches a worker prepares ahead of the one it counts, so that the others rarely
/// wait for its share.
const AHEAD: u64 = 1;
/// Inputs per report to the merging thread.
const REPORT_STEPS: usize = 4096;

/// Runs the replay with one thread per shard of `engines` (at least 2), merging and
/// writing on this one.
pub(super) fn replay(
    (posts, events): (&Path, Option<&Path>),
    engines: Engines,
    sinks: &mut Sinks,
    summary: &mut ReplaySummary,
) -> anyhow::Result<()> {
    let Engines {
        processors, merge, ..
    } = engines;
    let mut merge = merge.expect("several shards");
    let count = processors.len();
    let (report_tx, reports) = mpsc::channel::<Message>();
    // One channel from each worker to each other one, so that each hands over its
    // batches in order: `outboxes[from][to]` sends to `inboxes[from][to]`.
    let (mut outboxes, mut inboxes) = (Vec::new(), Vec::new());
    for _ in 0..count {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..count).map(|_| mpsc::channel::<Dealt>()).unzip();
        outboxes.push(senders);
        inboxes.push(receivers.into_iter().map(Some).collect::<Vec<_>>());
    }
    let (spent_txs, spent_rxs): (Vec<_>, Vec<_>) =
        (0..count).map(|_| mpsc::channel::<Spent>()).unzip();
    let mut spent_rxs: Vec<Option<Receiver<Spent>>> = spent_rxs.into_iter().map(Some).collect();

    let workers = processors
        .into_iter()
        .enumerate()
        .map(|(me, processor)| {
            let inbox: Vec<Option<Receiver<Dealt>>> = (0..count)
                .map(|from| {
                    let receiver = inboxes[from][me].take().expect("taken once");
                    (from != me).then_some(receiver)
                })
                .collect();
            let spent = spent_rxs[me].take().expect("one receiver per worker");
            let peers: Vec<Option<Sender<Dealt>>> = (0..count)
                .map(|to| (to != me).then(|| outboxes[me][to].clone()))
                .collect();
            let posts = PostStream {
                me,
                count,
                lines: LineSource::open(posts, InputKind::Post)?,
                lines_read: 0,
                decoder: processor.decoder().clone(),
                extractor: processor.engine().term_extractor(),
                scratch: PostTerms::default(),
                split: vec![PostTerms::default(); count],
                spare_batches: Vec::new(),
                spare_parts: Vec::new(),
                own: VecDeque::new(),
                next_own: me as u64,
                own_ended: false,
                inbox,
                peers,
                spent,
                spent_to: spent_txs.clone(),
                current: None,
                next_batch: 0,
                next_item: 0,
            };
            let events = events
                .map(|path| LineSource::open(path, InputKind::Event))
                .transpose()?;
            let worker = Worker {
                me,
                processor,
                posts,
                events: events.map(|lines| (lines, Input::Post(Post::default()))),
                report: Report::default(),
                reports: report_tx.clone(),
            };
            Ok(std::thread::Builder::new()
                .name(format!("shard-{me}"))
                .spawn(move || worker.run())?)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Only the workers hold senders now: `recv` ends when they all have.
    drop((report_tx, outboxes, spent_txs));

    let paths = [
        posts.to_owned(),
        events.map(Path::to_owned).unwrap_or_default(),
    ];
    let merged = merge_reports(&reports, count, &mut merge, sinks, summary, &paths);
    // Every worker stops once one has (their channels close): join them all, and say what
    // went wrong first rather than the others' "stopped early".
    drop(reports);
    let mut failures: Vec<anyhow::Error> = Vec::new();
    for (me, worker) in workers.into_iter().enumerate() {
        let outcome = worker
            .join()
            .map_err(|_| anyhow::anyhow!("the thread of shard {me} panicked"))
            .and_then(|result| result.with_context(|| format!("shard {me}")));
        failures.extend(outcome.err());
    }
    merged?;
    failures.sort_by_key(|failure| failure.downcast_ref::<Stopped>().is_some());
    failures.into_iter().next().map_or(Ok(()), Err)
}

/// A worker's side of a channel went away: it stopped, and reports why itself.
#[derive(Debug, thiserror::Error)]
#[error("{0} stopped early")]
struct Stopped(&'static str);

/// Merges the workers' reports input by input, in shard order, and writes what comes out.
fn merge_reports(
    reports: &Receiver<Message>,
    count: usize,
    merge: &mut ShardMerge,
    sinks: &mut Sinks,
    summary: &mut ReplaySummary,
    paths: &[PathBuf; 2],
) -> anyhow::Result<()> {
    let mut progress = Progress::new("inputs");
    let mut merged_steps = 0;
    let mut pending: Vec<VecDeque<Report>> = (0..count).map(|_| VecDeque::new()).collect();
    let mut finals: Vec<Option<Vec<Signal>>> = vec![None; count];
    // Ends when every worker has gone (finished, or failed: then its error is the result).
    while let Ok(message) = reports.recv() {
        match message {
            Message::Report(me, report) => pending[me].push_back(report),
            Message::Final(me, signals, inputs) => {
                finals[me] = Some(signals);
                if me == 0 {
                    summary.inputs = inputs;
                }
            }
        }
        while pending.iter().all(|queue| !queue.is_empty()) {
            let mut chunk: Vec<Report> = pending
                .iter_mut()
                .map(|queue| queue.pop_front().expect("not empty"))
                .collect();
            for letter in &chunk[0].dead_letters {
                let path = &paths[letter.feed as usize];
                sinks.dead_letter(
                    path,
                    letter.line_no,
                    &letter.line,
                    &letter.rejection,
                    summary,
                )?;
            }
            let steps = chunk[0].watermarks.len();
            let mut published: Vec<_> = chunk
                .iter_mut()
                .map(|report| std::mem::take(&mut report.signals).into_iter().peekable())
                .collect();
            for step in 0..steps {
                let mut out = Vec::new();
                for (me, report) in chunk.iter().enumerate() {
                    let polled = published[me]
                        .next_if(|(at, _)| *at as usize == step)
                        .map(|(_, signals)| signals)
                        .unwrap_or_default();
                    merge_polled(merge, me as u32, polled, report.watermarks[step], &mut out);
                }
                sinks.write_signals(out, summary)?;
            }
            // Inputs counted (not those rejected on the way): close enough for a person.
            merged_steps += steps as u64;
            progress.update(merged_steps, || None);
        }
    }
    progress.finish();
    if finals.iter().all(Option::is_some) && pending.iter().all(VecDeque::is_empty) {
        let mut out = Vec::new();
        for (me, signals) in finals.into_iter().enumerate() {
            let signals = signals.expect("checked");
            merge_polled(merge, me as u32, signals, None, &mut out);
        }
        out.extend(merge.finish());
        sinks.write_signals(out, summary)?;
    }
    Ok(())
}

/// From a worker to the merging thread.
enum Message {
    /// What the next [`REPORT_STEPS`] inputs (fewer at the end) gave.
    Report(usize, Report),
    /// What the end of the input closed, and (from worker 0) the inputs read.
    Final(usize, Vec<Signal>, u64),
}

/// What a worker's engine did, input by input.
#[derive(Default)]
struct Report {
    /// The engine's event time after each input.
    watermarks: Vec<Option<EpochMs>>,
    /// What was published after an input (by its position), when anything was.
    signals: Vec<(u32, Vec<Signal>)>,
    /// Rejected lines (worker 0 only).
    dead_letters: Vec<DeadLetter>,
}

impl Report {
    /// A rejected line (`feed`, line number, line), kept by worker 0 only: every shard
    /// rejects the same ones, and one dead letter is enough.
    fn dead_letter(
        &mut self,
        me: usize,
        (feed, line_no, line): (u8, u64, &[u8]),
        rejection: Rejection,
    ) {
        if me == 0 {
            self.dead_letters.push(DeadLetter {
                feed,
                line_no,
                line: line.to_vec(),
                rejection,
            });
        }
    }
}

/// The feeds, as [`DeadLetter::feed`] numbers them.
const POSTS: u8 = 0;
const EVENTS: u8 = 1;

struct DeadLetter {
    /// [`POSTS`] or [`EVENTS`].
    feed: u8,
    line_no: u64,
    line: Vec<u8>,
    rejection: Rejection,
}

/// A batch of posts as its worker prepared them, shared by every shard.
#[derive(Default)]
struct Batch {
    /// Its place among all batches of the file.
    index: u64,
    items: Vec<Item>,
    len: usize,
}

struct Item {
    line_no: u64,
    line: Vec<u8>,
    decoded: Option<Rejection>,
    record: Input,
}

/// A batch handed to one shard: the shared posts, and that shard's terms of each (its
/// own, so that the engine takes them without a copy).
type Dealt = (Arc<Batch>, Vec<PostTerms>);

/// What goes back to the worker that prepared a batch, to be refilled: the shared part
/// (from whichever shard is done with it last) and each shard's terms.
enum Spent {
    Batch(Batch),
    Terms(Vec<PostTerms>),
}

impl Default for Item {
    fn default() -> Self {
        Item {
            line_no: 0,
            line: Vec::new(),
            decoded: None,
            record: Input::Post(Post::default()),
        }
    }
}

/// The posts in file order, each batch from the worker that prepared it.
struct PostStream {
    me: usize,
    count: usize,
    lines: LineSource,
    /// Non-blank lines read so far (batches are counted in them).
    lines_read: u64,
    decoder: Decoder,
    extractor: TermExtractor,
    /// All of a post's terms, then split by shard.
    scratch: PostTerms,
    split: Vec<PostTerms>,
    spare_batches: Vec<Batch>,
    spare_parts: Vec<Vec<PostTerms>>,
    /// Own batches prepared and not yet counted here.
    own: VecDeque<Dealt>,
    /// The index of the next batch this worker prepares.
    next_own: u64,
    /// The file ended in one of this worker's batches.
    own_ended: bool,
    /// From each other worker (`None` at this worker's place).
    inbox: Vec<Option<Receiver<Dealt>>>,
    /// To each other worker (`None` at this worker's place).
    peers: Vec<Option<Sender<Dealt>>>,
    /// What the shards are done with, back to be refilled.
    spent: Receiver<Spent>,
    spent_to: Vec<Sender<Spent>>,
    current: Option<(u64, Dealt)>,
    next_batch: u64,
    next_item: usize,
}

impl PostStream {
    /// Moves to the next post; false at the end of the file.
    fn next(&mut self) -> anyhow::Result<bool> {
        loop {
            if let Some((_, (batch, _))) = &self.current {
                if self.next_item < batch.len {
                    self.next_item += 1;
                    return Ok(true);
                }
                if batch.len < BATCH {
                    return Ok(false);
                }
                self.retire_current();
            }
            let index = self.next_batch;
            while !self.own_ended && self.next_own <= index + AHEAD * self.count as u64 {
                self.prepare_own()?;
            }
            let batch = match &self.inbox[(index % self.count as u64) as usize] {
                None => self.own.pop_front().expect("prepared above"),
                Some(inbox) => inbox
                    .recv()
                    .map_err(|_| Stopped("another shard's thread"))?,
            };
            debug_assert_eq!(batch.0.index, index, "batches arrive in order");
            self.current = Some((index, batch));
            self.next_batch += 1;
            self.next_item = 0;
        }
    }

    /// The post [`PostStream::next`] moved to.
    fn current(&self) -> &Item {
        let (_, (batch, _)) = self.current.as_ref().expect("next() said there is one");
        &batch.items[self.next_item - 1]
    }

    /// [`PostStream::current`], and this shard's terms of it.
    fn current_with_terms(&mut self) -> (&Item, &mut PostTerms) {
        let (_, (batch, terms)) = self.current.as_mut().expect("next() said there is one");
        (
            &batch.items[self.next_item - 1],
            &mut terms[self.next_item - 1],
        )
    }

    /// Gives the counted batch back to the worker that prepared it (the shared part once
    /// every shard is done with it).
    fn retire_current(&mut self) {
        if let Some((index, (batch, terms))) = self.current.take() {
            let owner = &self.spent_to[(index % self.count as u64) as usize];
            // That worker may have finished: then what it would reuse is simply dropped.
            let _ = owner.send(Spent::Terms(terms));
            if let Some(batch) = Arc::into_inner(batch) {
                let _ = owner.send(Spent::Batch(batch));
            }
        }
    }

    /// Reads, decodes and splits this worker's next batch, and hands it to the others.
    fn prepare_own(&mut self) -> anyhow::Result<()> {
        let count = self.count as u64;
        // Skip the lines of the batches the others prepare.
        let first_line = self.next_own * BATCH as u64;
        while self.lines_read < first_line {
            if !self.lines.skip_line()? {
                break;
            }
            self.lines_read += 1;
        }
        while let Ok(spent) = self.spent.try_recv() {
            match spent {
                Spent::Batch(batch) => self.spare_batches.push(batch),
                Spent::Terms(terms) => self.spare_parts.push(terms),
            }
        }
        let mut batch = self.spare_batches.pop().unwrap_or_default();
        batch.index = self.next_own;
        batch.len = 0;
        let mut parts: Vec<Vec<PostTerms>> = (0..self.count)
            .map(|_| self.spare_parts.pop().unwrap_or_default())
            .collect();
        while batch.len < BATCH && self.read_line()? {
            if batch.len == batch.items.len() {
                batch.items.push(Item::default());
            }
            let item = &mut batch.items[batch.len];
            item.line_no = self.lines.line_no;
            item.line.clear();
            item.line.extend_from_slice(self.lines.line());
            item.decoded = self
                .decoder
                .decode_with_terms(
                    self.lines.raw_input(),
                    &mut self.extractor,
                    &mut item.record,
                    &mut self.scratch,
                )
                .err();
            if item.decoded.is_some() {
                self.scratch.clear();
            }
            for part in &mut parts {
                if part.len() == batch.len {
                    part.push(PostTerms::default());
                }
            }
            self.scratch.split_by_shard(&mut self.split);
            for (part, terms) in parts.iter_mut().zip(&mut self.split) {
                // A swap, so that both buffers are reused.
                std::mem::swap(&mut part[batch.len], terms);
            }
            batch.len += 1;
        }
        self.own_ended = batch.len < BATCH;
        let batch = Arc::new(batch);
        for (peer, terms) in self.peers.iter().zip(&mut parts) {
            if let Some(peer) = peer {
                // A worker that stopped early reports its own error.
                let _ = peer.send((Arc::clone(&batch), std::mem::take(terms)));
            }
        }
        let own = std::mem::take(&mut parts[self.me]);
        self.own.push_back((batch, own));
        self.next_own += count;
        Ok(())
    }

    fn read_line(&mut self) -> anyhow::Result<bool> {
        let read = self.lines.read_line()?;
        self.lines_read += u64::from(read);
        Ok(read)
    }
}

/// One shard's thread: its engine fed every input, and its share of the posts prepared.
struct Worker {
    me: usize,
    processor: Processor,
    posts: PostStream,
    events: Option<(LineSource, Input)>,
    report: Report,
    reports: Sender<Message>,
}

impl Worker {
    fn run(mut self) -> anyhow::Result<()> {
        let mut inputs = 0u64;
        let mut post_ready = self.advance_posts(&mut inputs)?;
        let mut event_ready = self.advance_events(&mut inputs)?;
        loop {
            let post_ts = post_ready.then(|| self.posts.current().record.ts());
            let event_ts = self
                .events
                .as_ref()
                .filter(|_| event_ready)
                .map(|(_, event)| event.ts());
            let Some(take_post) = post_first(post_ts, event_ts) else {
                break;
            };
            if take_post {
                let (item, terms) = self.posts.current_with_terms();
                if let Err(rejection) = self.processor.ingest_with_terms(&item.record, None, terms)
                {
                    let item = self.posts.current();
                    let letter = (POSTS, item.line_no, item.line.as_slice());
                    self.report.dead_letter(self.me, letter, rejection);
                }
                post_ready = self.advance_posts(&mut inputs)?;
            } else {
                let (lines, event) = self.events.as_ref().expect("an event was read");
                if let Err(rejection) = self.processor.ingest(event, None) {
                    let letter = (EVENTS, lines.line_no, lines.line());
                    self.report.dead_letter(self.me, letter, rejection);
                }
                event_ready = self.advance_events(&mut inputs)?;
            }
            let signals = self.processor.poll(None);
            if !signals.is_empty() {
                let step = self.report.watermarks.len() as u32;
                self.report.signals.push((step, signals));
            }
            let watermark = self.processor.engine().watermark();
            self.report.watermarks.push(watermark);
            if self.report.watermarks.len() == REPORT_STEPS {
                self.send_report()?;
            }
        }
        if !self.report.watermarks.is_empty() || !self.report.dead_letters.is_empty() {
            self.send_report()?;
        }
        let signals = self.processor.finish();
        self.reports
            .send(Message::Final(self.me, signals, inputs))
            .map_err(|_| Stopped("the merging thread").into())
    }

    fn send_report(&mut self) -> anyhow::Result<()> {
        let report = std::mem::take(&mut self.report);
        self.reports
            .send(Message::Report(self.me, report))
            .map_err(|_| Stopped("the merging thread").into())
    }

    /// The next decodable post; rejected ones are dead-lettered (by worker 0) on the way.
    fn advance_posts(&mut self, inputs: &mut u64) -> anyhow::Result<bool> {
        while self.posts.next()? {
            *inputs += 1;
            let item = self.posts.current();
            match &item.decoded {
                None => return Ok(true),
                Some(rejection) => {
                    let letter = (POSTS, item.line_no, item.line.as_slice());
                    self.report.dead_letter(self.me, letter, rejection.clone());
                }
            }
        }
        Ok(false)
    }

    /// The next decodable event, as [`Worker::advance_posts`].
    fn advance_events(&mut self, inputs: &mut u64) -> anyhow::Result<bool> {
        let Some((lines, event)) = self.events.as_mut() else {
            return Ok(false);
        };
        let (me, report) = (self.me, &mut self.report);
        lines.next_decoded(
            self.processor.decoder(),
            event,
            inputs,
            |lines, rejection| {
                report.dead_letter(me, (EVENTS, lines.line_no, lines.line()), rejection);
                Ok(())
            },
        )
    }
}
