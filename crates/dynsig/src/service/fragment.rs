//! The records of `topics.repartition` (with `scale.shards` > 1): an input, or a verdict
//! on an alert, on its way from the instance that read it to a shard (partition = shard).
//!
//! Every input goes to every shard, with only the terms that shard owns (see
//! `dynsig_core::shard`): the payload is the input's own bytes (decoded again by the
//! shard's instance, with the same decoder and content type), the headers say where it
//! was read and carry the shard's terms, so the text is tokenized once. A verdict goes to
//! the shard that owns its alert. The input position lets a shard recognise an input sent
//! again (by an instance that restarted, or took over the input partition, before the
//! first one's commit) and count it once.
//!
//! And every few hundred milliseconds, the instance that reads an input partition tells
//! every shard that it has read that partition to its end ([`caught_up_fragments`]), if
//! so and the partition has been quiet for the idle timeout: only then may a shard take
//! the partition's silence for idleness. A partition whose reader died says nothing, and
//! holds the shards' event time until its new reader has caught up, so its inputs are
//! not declared late meanwhile.

use dynsig_core::decode::{InputKind, RejectReason, Rejection};
use dynsig_core::engine::PostTerms;
use dynsig_core::shard::Shard;

use crate::config::TopicsConfig;
use crate::output::{Content, OutRecord};

/// Header names of a repartition record.
mod headers {
    pub const KIND: &str = "dynsig-kind";
    pub const PARTITION: &str = "dynsig-origin-partition";
    pub const OFFSET: &str = "dynsig-origin-offset";
    pub const TERMS: &str = "dynsig-terms";
    pub const CONTENT_TYPE: &str = "content-type";
}

/// What a repartition record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FragmentKind {
    Input(InputKind),
    Feedback,
    /// The input partition was read to its end (payload: when, see
    /// [`caught_up_fragments`]).
    CaughtUp(InputKind),
}

/// Where the record was first read: its kind, input partition and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Origin {
    pub(super) kind: FragmentKind,
    pub(super) partition: i32,
    pub(super) offset: i64,
}

/// An input read at `origin`, as one record per shard, each with that shard's terms.
pub(super) fn input_fragments(
    topics: &TopicsConfig,
    shards: u32,
    (origin, content_type): (Origin, Option<&[u8]>),
    (key, payload): (Option<&[u8]>, &[u8]),
    terms: &PostTerms,
) -> Vec<OutRecord> {
    let mut shard_terms = vec![Vec::new(); shards as usize];
    for term in terms.iter() {
        let encoded = &mut shard_terms[Shard::of_key(term, shards) as usize];
        encoded.extend_from_slice(&(term.len() as u32).to_le_bytes());
        encoded.extend_from_slice(term.as_bytes());
    }
    (0..shards)
        .zip(shard_terms)
        .map(|(shard, terms)| {
            let mut record = fragment(topics, shard, origin, key, payload);
            record.headers.push((headers::TERMS, terms));
            if let Some(content_type) = content_type {
                record
                    .headers
                    .push((headers::CONTENT_TYPE, content_type.to_vec()));
            }
            record
        })
        .collect()
}

/// Input partition `partition` of `kind` was read to its end (up to `next_offset`) at
/// wall time `sent_at` (ms), as one record per shard. The time is the reader's: a shard
/// that reads the news late (behind on its partition, or reading it again after a
/// restart) knows it is stale.
pub(super) fn caught_up_fragments(
    topics: &TopicsConfig,
    shards: u32,
    (kind, partition, next_offset): (InputKind, i32, i64),
    sent_at: i64,
) -> Vec<OutRecord> {
    let origin = Origin {
        kind: FragmentKind::CaughtUp(kind),
        partition,
        offset: next_offset,
    };
    let payload = sent_at.to_string().into_bytes();
    (0..shards)
        .map(|shard| fragment(topics, shard, origin, None, &payload))
        .collect()
}

/// When a [`FragmentKind::CaughtUp`] record was sent (its payload); None if unreadable.
pub(super) fn caught_up_sent_at(payload: &[u8]) -> Option<i64> {
    std::str::from_utf8(payload).ok()?.parse().ok()
}

/// A verdict read at `origin`, for the shard that owns its alert.
pub(super) fn feedback_fragment(
    topics: &TopicsConfig,
    shard: u32,
    origin: Origin,
    (key, payload): (Option<&[u8]>, &[u8]),
) -> OutRecord {
    fragment(topics, shard, origin, key, payload)
}

fn fragment(
    topics: &TopicsConfig,
    shard: u32,
    origin: Origin,
    key: Option<&[u8]>,
    payload: &[u8],
) -> OutRecord {
    let kind: &[u8] = match origin.kind {
        FragmentKind::Input(InputKind::Post) => b"post",
        FragmentKind::Input(InputKind::Event) => b"event",
        FragmentKind::Feedback => b"feedback",
        FragmentKind::CaughtUp(InputKind::Post) => b"posts-read",
        FragmentKind::CaughtUp(InputKind::Event) => b"events-read",
    };
    OutRecord {
        topic: topics.repartition.clone(),
        partition: Some(shard as i32),
        key: key.map(<[u8]>::to_vec),
        payload: payload.to_vec(),
        headers: vec![
            (headers::KIND, kind.to_vec()),
            (
                headers::PARTITION,
                origin.partition.to_string().into_bytes(),
            ),
            (headers::OFFSET, origin.offset.to_string().into_bytes()),
        ],
        content: Content::Internal,
    }
}

/// A repartition record's headers, as read back: the origin, the content type, and (for
/// an input) its terms into `terms`. Only dynsig writes the topic, so a failure means
/// another writer or a corrupted record: it is dead-lettered.
pub(super) fn read_headers<'h>(
    header: impl Fn(&str) -> Option<&'h [u8]>,
    terms: &mut PostTerms,
) -> Result<(Origin, Option<&'h [u8]>), Rejection> {
    let invalid = |detail: &str| Rejection {
        reason: RejectReason::InvalidField,
        detail: format!("repartition record: {detail}"),
    };
    let number = |name: &str| -> Result<i64, Rejection> {
        std::str::from_utf8(header(name).ok_or_else(|| invalid(&format!("no {name} header")))?)
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| invalid(&format!("header {name} is not a number")))
    };
    let kind = match header(headers::KIND) {
        Some(b"post") => FragmentKind::Input(InputKind::Post),
        Some(b"event") => FragmentKind::Input(InputKind::Event),
        Some(b"feedback") => FragmentKind::Feedback,
        Some(b"posts-read") => FragmentKind::CaughtUp(InputKind::Post),
        Some(b"events-read") => FragmentKind::CaughtUp(InputKind::Event),
        _ => return Err(invalid("no known dynsig-kind header")),
    };
    let origin = Origin {
        kind,
        partition: i32::try_from(number(headers::PARTITION)?)
            .map_err(|_| invalid("partition out of range"))?,
        offset: number(headers::OFFSET)?,
    };
    terms.clear();
    let mut encoded = header(headers::TERMS).unwrap_or_default();
    while !encoded.is_empty() {
        let (len, rest) = encoded
            .split_first_chunk::<4>()
            .ok_or_else(|| invalid("truncated terms"))?;
        let len = u32::from_le_bytes(*len) as usize;
        let (term, rest) = rest
            .split_at_checked(len)
            .ok_or_else(|| invalid("truncated terms"))?;
        let term = std::str::from_utf8(term).map_err(|_| invalid("a term is not UTF-8"))?;
        if !terms.push_key(term) {
            return Err(invalid("a term is not a term key"));
        }
        encoded = rest;
    }
    Ok((origin, header(headers::CONTENT_TYPE)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynsig_core::model::TermKind;
    use dynsig_core::term_key;

    fn header<'r>(record: &'r OutRecord) -> impl Fn(&str) -> Option<&'r [u8]> {
        move |name| {
            record
                .headers
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.as_slice())
        }
    }

    #[test]
    fn each_shard_gets_the_input_with_its_own_terms() {
        let topics = TopicsConfig::default();
        let mut terms = PostTerms::default();
        let keys: Vec<String> = (0..40)
            .map(|i| term_key::key(TermKind::Word, &format!("word {i}")))
            .collect();
        for key in &keys {
            assert!(terms.push_key(key));
        }
        let origin = Origin {
            kind: FragmentKind::Input(InputKind::Post),
            partition: 2,
            offset: 41,
        };
        let records = input_fragments(
            &topics,
            3,
            (origin, Some(b"application/json")),
            (Some(b"k"), b"{}"),
            &terms,
        );
        let mut seen = Vec::new();
        for (shard, record) in (0..3).zip(&records) {
            assert_eq!(record.partition, Some(shard as i32));
            assert_eq!(
                (record.payload.as_slice(), record.key.as_deref()),
                (&b"{}"[..], Some(&b"k"[..]))
            );
            let mut read = PostTerms::default();
            let (read_origin, content_type) = read_headers(header(record), &mut read).unwrap();
            assert_eq!(read_origin, origin);
            assert_eq!(content_type, Some(&b"application/json"[..]));
            for term in read.iter() {
                assert_eq!(Shard::of_key(term, 3), shard);
                seen.push(term.to_owned());
            }
        }
        seen.sort();
        let mut expected = keys.clone();
        expected.sort();
        assert_eq!(seen, expected, "every term goes to exactly one shard");
    }

    #[test]
    fn a_damaged_record_is_refused_with_a_reason() {
        let topics = TopicsConfig::default();
        let origin = Origin {
            kind: FragmentKind::Feedback,
            partition: 0,
            offset: 1,
        };
        let mut record = feedback_fragment(&topics, 1, origin, (None, b"{}"));
        let mut terms = PostTerms::default();
        assert_eq!(read_headers(header(&record), &mut terms).unwrap().0, origin);
        record
            .headers
            .push((headers::TERMS, vec![9, 0, 0, 0, b'x']));
        let rejection = read_headers(header(&record), &mut terms).unwrap_err();
        assert!(rejection.detail.contains("truncated"), "{rejection:?}");
        record.headers.retain(|(key, _)| *key != headers::OFFSET);
        assert!(read_headers(header(&record), &mut terms).is_err());
    }

    #[test]
    fn every_shard_hears_that_a_partition_was_read() {
        let sent_at = 1_795_873_965_986;
        let records = caught_up_fragments(
            &TopicsConfig::default(),
            2,
            (InputKind::Event, 1, 9),
            sent_at,
        );
        assert_eq!(records.len(), 2);
        let mut terms = PostTerms::default();
        for record in &records {
            let (origin, _) = read_headers(header(record), &mut terms).unwrap();
            assert_eq!(origin.kind, FragmentKind::CaughtUp(InputKind::Event));
            assert_eq!((origin.partition, origin.offset), (1, 9));
            assert_eq!(caught_up_sent_at(&record.payload), Some(sent_at));
        }
        assert_eq!(caught_up_sent_at(b""), None, "an older instance's: no time");
    }
}
