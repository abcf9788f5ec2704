//! The pipeline's steps around the engine: a raw input record (bytes, content type)
//! decoded and validated by the [`Decoder`], then fed to the engine with its origin;
//! closed windows out as signals. Shared by the Kafka service and `dynsig replay`, so both
//! run exactly the same pipeline.

use std::time::Instant;

use dynsig_core::decode::{self, Format, InputKind, Limits, RejectReason, Rejection};
use dynsig_core::engine::{Engine, EngineError, PostTerms, Refused, TermExtractor};
use dynsig_core::feedback::Feedback;
use dynsig_core::model::{Input, Origin, Signal};
use metrics::{counter, histogram, Counter, Histogram};

use crate::config::Config;
use crate::control;
use crate::telemetry::names;

/// An input record as read from a topic or a file line.
#[derive(Debug, Clone, Copy)]
pub struct RawInput<'a> {
    pub kind: InputKind,
    pub payload: &'a [u8],
    /// The record's `content-type` header, if any; it overrides the topic's format.
    pub content_type: Option<&'a [u8]>,
}

pub struct Processor {
    engine: Engine,
    decoder: Decoder,
    /// Registered once, as the decoder's counters (see [`Decoder`]).
    windows_closed: Counter,
    /// How long the polls that closed windows took: their signals waited for it.
    close_duration: Histogram,
}

/// Decoding and validation, apart from the engine so that it can run on another thread
/// (the service's source stage, `dynsig replay --threads 2`). Its counters are registered once: a `counter!` per
/// record built and dropped its key each time (~3% of a replay). The metrics recorder must
/// therefore be installed before it is made, as `main` does.
#[derive(Clone)]
pub struct Decoder {
    limits: Limits,
    posts_format: Format,
    events_format: Format,
    decoded_posts: Counter,
    decoded_events: Counter,
}

impl Processor {
    pub fn new(config: &Config) -> Result<Self, EngineError> {
        Ok(Self {
            engine: Engine::new(config.engine())?,
            decoder: Decoder {
                limits: config.limits,
                posts_format: config.topics.posts_format,
                events_format: config.topics.events_format,
                decoded_posts: counter!(names::EVENTS_DECODED, "topic" => input_label(InputKind::Post)),
                decoded_events: counter!(names::EVENTS_DECODED, "topic" => input_label(InputKind::Event)),
            },
            windows_closed: counter!(names::WINDOWS_CLOSED),
            close_duration: histogram!(names::WINDOW_CLOSE_DURATION),
        })
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// Feeds a decoded record to the engine; a record it refuses is rejected as `late`
    /// (its window already closed) or `future` (stamped too far ahead of the wall
    /// clock), and counted.
    pub fn ingest(&mut self, record: &Input, origin: Option<Origin>) -> Result<(), Rejection> {
        let result = self.engine.ingest(record, origin);
        refusal_counted(record, result)
    }

    /// [`Processor::ingest`] for a post whose terms were extracted already (see
    /// [`Engine::ingest_with_terms`]).
    pub fn ingest_with_terms(
        &mut self,
        record: &Input,
        origin: Option<Origin>,
        terms: &mut PostTerms,
    ) -> Result<(), Rejection> {
        let result = self.engine.ingest_with_terms(record, origin, terms);
        refusal_counted(record, result)
    }

    /// Decodes one record of the feedback topic (JSON `Feedback`) and records it. A record
    /// that is not a usable verdict is rejected (and counted) like a bad input. Call it
    /// once the alert clock has started ([`control::alert_clock_started`]).
    pub fn process_feedback(&mut self, payload: &[u8]) -> Result<(), Rejection> {
        let decoded = if payload.len() > self.decoder.limits.max_message_bytes {
            Err(Rejection {
                reason: RejectReason::TooLarge,
                detail: format!(
                    "message is {} bytes, limit is {}",
                    payload.len(),
                    self.decoder.limits.max_message_bytes
                ),
            })
        } else {
            control::parse_json::<Feedback>(payload)
        };
        decoded
            .and_then(|feedback| {
                control::record_feedback(&mut self.engine, &feedback)
                    .map(drop)
                    .map_err(control::feedback_rejection)
            })
            .inspect_err(|rejection| count_rejection(rejection, "feedback"))
    }

    /// The input partitions read now (see [`Engine::assign_partitions`]).
    pub fn assign_partitions(&mut self, partitions: &[u32]) {
        self.engine.assign_partitions(partitions);
    }

    /// Advances idle time (see [`Engine::tick`]) and returns the signals of every window
    /// that closed.
    pub fn poll(&mut self, wall_now: Option<i64>) -> Vec<Signal> {
        if let Some(now) = wall_now {
            self.engine.tick(now);
        }
        // Timed only when a window closes: reading the clock on every poll (one per
        // input in a replay) cost ~2% of a replay.
        let started = self.engine.has_window_to_close().then(Instant::now);
        let signals = self.engine.poll_closed();
        match started {
            Some(started) => self.count_closed(signals, started),
            None => signals,
        }
    }

    /// End of a finite input: closes every open window.
    pub fn finish(&mut self) -> Vec<Signal> {
        let started = Instant::now();
        let signals = self.engine.finish();
        self.count_closed(signals, started)
    }

    /// Counts the windows closed since `started`, and how long closing them took.
    fn count_closed(&self, signals: Vec<Signal>, started: Instant) -> Vec<Signal> {
        let windows = signals
            .iter()
            // Not the revisions of windows still open (update mode).
            .filter(|s| matches!(s, Signal::Trend(snapshot) if snapshot.is_final))
            .count();
        if windows > 0 {
            self.windows_closed.increment(windows as u64);
            self.close_duration.record(started.elapsed().as_secs_f64());
        }
        signals
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// For what changes the engine from outside the stream (see [`crate::control`]).
    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }
}

/// The `topic` label of an input kind, as `dynsig_events_consumed_total` has it.
pub fn input_label(kind: InputKind) -> &'static str {
    match kind {
        InputKind::Post => "posts",
        InputKind::Event => "events",
    }
}

/// An engine refusal as a rejection (`late`: its window already closed; `future`: stamped
/// too far ahead of the wall clock), counted.
fn refusal_counted(record: &Input, result: Result<(), Refused>) -> Result<(), Rejection> {
    result
            .map_err(|refused| Rejection {
                reason: refused.reason(),
                detail: match refused {
                    Refused::Late {
                        window_end,
                        watermark,
                    } => format!(
                        "event time {} is in window ending {window_end}, already closed by watermark {watermark}",
                        record.ts(),
                    ),
                    Refused::Future { limit } => format!(
                        "event time {} is after {limit}, the wall clock plus window.max_future_ms",
                        record.ts(),
                    ),
                },
            })
            .inspect_err(|rejection| {
                let kind = match record {
                    Input::Post(_) => InputKind::Post,
                    Input::Event(_) => InputKind::Event,
                };
                count_rejection(rejection, input_label(kind));
            })
}

impl Decoder {
    /// Decodes and validates one record into `out`, reusing its strings (see
    /// [`decode::decode_into`]); counted when rejected.
    pub fn decode_into(&self, input: RawInput<'_>, out: &mut Input) -> Result<(), Rejection> {
        let decoded = match input.kind {
            InputKind::Post => &self.decoded_posts,
            InputKind::Event => &self.decoded_events,
        };
        self.decode_uncounted(input, out)
            .inspect(|()| decoded.increment(1))
            .inspect_err(|rejection| count_rejection(rejection, input_label(input.kind)))
    }

    /// [`Decoder::decode_into`], then a decoded post's terms into `terms` (for
    /// [`Processor::ingest_with_terms`], on another thread than the engine's).
    pub fn decode_with_terms(
        &self,
        input: RawInput<'_>,
        extractor: &mut TermExtractor,
        out: &mut Input,
        terms: &mut PostTerms,
    ) -> Result<(), Rejection> {
        self.decode_into(input, out)?;
        if let Input::Post(post) = out {
            extractor.extract(&post.text, terms);
        }
        Ok(())
    }

    fn decode_uncounted(&self, input: RawInput<'_>, out: &mut Input) -> Result<(), Rejection> {
        let format = match input.content_type {
            Some(value) => Format::from_content_type(value).ok_or_else(|| Rejection {
                reason: RejectReason::UnknownContentType,
                detail: format!("content-type {:?}", String::from_utf8_lossy(value)),
            })?,
            None => match input.kind {
                InputKind::Post => self.posts_format,
                InputKind::Event => self.events_format,
            },
        };
        decode::decode_into(input.kind, format, input.payload, &self.limits, out)
    }
}

fn count_rejection(rejection: &Rejection, topic: &'static str) {
    counter!(names::EVENTS_REJECTED, "topic" => topic, "reason" => rejection.reason.as_str())
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynsig_core::model::Post;
    use prost::Message as _;

    fn processor() -> Processor {
        Processor::new(&Config::default()).unwrap()
    }

    fn raw<'a>(payload: &'a [u8], content_type: Option<&'a [u8]>) -> RawInput<'a> {
        RawInput {
            kind: InputKind::Post,
            payload,
            content_type,
        }
    }

    /// Decodes and ingests one record, as the service and replay do.
    fn process(processor: &mut Processor, input: RawInput<'_>) -> Result<(), Rejection> {
        let mut record = Input::Post(Post::default());
        processor.decoder().decode_into(input, &mut record)?;
        processor.ingest(&record, None)
    }

    #[test]
    fn content_type_header_overrides_the_topic_format() {
        let post = dynsig_proto::v1::Post {
            ts: 1_800_000_000_000,
            text: "hello".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let mut processor = processor();
        assert!(process(&mut processor, raw(&post, Some(b"application/x-protobuf"))).is_ok());
        let as_json = process(&mut processor, raw(&post, None)).unwrap_err();
        assert_ne!(as_json.reason, RejectReason::UnknownContentType);
        let unknown = process(&mut processor, raw(b"a,b", Some(b"text/csv"))).unwrap_err();
        assert_eq!(unknown.reason, RejectReason::UnknownContentType);
    }

    #[test]
    fn input_behind_the_watermark_is_rejected_as_late() {
        let mut processor = processor();
        let post = |ts: i64| format!(r#"{{"ts":{ts},"text":"x"}}"#);
        process(
            &mut processor,
            raw(post(1_800_000_000_000).as_bytes(), None),
        )
        .unwrap();
        process(
            &mut processor,
            raw(post(1_800_000_600_000).as_bytes(), None),
        )
        .unwrap();
        assert!(!processor.poll(None).is_empty(), "the first window closed");
        let late = process(
            &mut processor,
            raw(post(1_800_000_000_500).as_bytes(), None),
        )
        .unwrap_err();
        assert_eq!(late.reason, RejectReason::Late);
    }
}
