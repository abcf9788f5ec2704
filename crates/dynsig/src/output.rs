//! Turns what the engine publishes into Kafka records: signals as JSON keyed so that each
//! topic partitions and compacts sensibly, and dead letters that keep the original bytes.

use dynsig_core::decode::{RejectReason, Rejection};
use dynsig_core::model::{Severity, Signal};

use crate::config::TopicsConfig;

/// Header names of a dead letter. They are part of the interface of `dynsig.dlq`.
pub mod dlq_headers {
    pub const REASON: &str = "dynsig-reason";
    pub const DETAIL: &str = "dynsig-detail";
    pub const SOURCE_TOPIC: &str = "dynsig-source-topic";
    pub const SOURCE_PARTITION: &str = "dynsig-source-partition";
    pub const SOURCE_OFFSET: &str = "dynsig-source-offset";
}

/// One record to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct OutRecord {
    pub topic: String,
    /// None: the producer's partitioner picks one from the key.
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(&'static str, Vec<u8>)>,
    /// What the record carries, for the metrics counted once it is acknowledged.
    pub content: Content,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Content {
    /// A signal of a window that ended at `window_end` (event time); `None` for the
    /// update snapshot of a window still open, which has no event-time-to-publish latency.
    Signal {
        kind: &'static str,
        window_end: Option<i64>,
        /// Alerts and notifications: their severity (for the per-severity, per-route
        /// counts).
        severity: Option<Severity>,
    },
    DeadLetter {
        reason: RejectReason,
    },
    /// A piece of a state checkpoint (see `crate::checkpoint`).
    Checkpoint,
    /// Between instances, with `scale.shards` > 1: an input or verdict on its way to a
    /// shard, or a shard's trend snapshot on its way to the merge.
    Internal,
}

/// Where an input record came from, for its dead letter.
#[derive(Debug, Clone, Copy)]
pub struct SourcePosition<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// The label value of a signal in metrics and file names.
pub fn signal_kind(signal: &Signal) -> &'static str {
    match signal {
        Signal::Trend(_) => "trend",
        Signal::Anomaly(_) => "anomaly",
        Signal::Alert(_) => "alert",
        Signal::Notification(_) => "notification",
        Signal::Digest(_) => "digest",
        Signal::Ecosystem(_) => "ecosystem",
    }
}

/// Encodes a signal for its topic. Keys: trends by window name and start (`1m@<ms>`: the
/// revisions of a window replace each other on a compacted topic),
/// anomalies by series (a series' history stays in one partition, in order), alerts by
/// dedup key (a compacted topic keeps each alert's current state), notifications by group
/// (a group's updates stay in order), digests by team, co-mention graphs by window.
pub fn signal_record(topics: &TopicsConfig, signal: &Signal) -> OutRecord {
    let (topic, key, window_end, payload) = match signal {
        Signal::Trend(t) => (
            &topics.trends,
            format!("{}@{}", t.window, t.window_start),
            t.is_final.then_some(t.window_end),
            serde_json::to_vec(t),
        ),
        Signal::Anomaly(a) => (
            &topics.anomalies,
            a.series.clone(),
            Some(a.window_end),
            serde_json::to_vec(a),
        ),
        Signal::Alert(a) => (
            &topics.alerts,
            a.dedup_key.clone(),
            Some(a.updated_at),
            serde_json::to_vec(a),
        ),
        Signal::Notification(n) => (
            &n.topic,
            n.message.group_key.clone(),
            None,
            serde_json::to_vec(&n.message),
        ),
        Signal::Digest(d) => (
            &d.topic,
            d.message.team.clone(),
            None,
            serde_json::to_vec(&d.message),
        ),
        Signal::Ecosystem(e) => (
            &topics.ecosystem,
            format!("{}@{}", e.window, e.window_start),
            Some(e.window_end),
            serde_json::to_vec(e),
        ),
    };
    OutRecord {
        topic: topic.clone(),
        partition: None,
        key: Some(key.into_bytes()),
        // Serializing plain structs of strings and numbers cannot fail.
        payload: payload.expect("signals serialize to JSON"),
        headers: vec![("content-type", b"application/json".to_vec())],
        content: Content::Signal {
            kind: signal_kind(signal),
            window_end,
            severity: match signal {
                Signal::Alert(a) => Some(a.severity),
                Signal::Notification(n) => Some(n.message.severity),
                _ => None,
            },
        },
    }
}

/// A dead letter: the input's key and payload byte for byte, and why it was rejected.
/// Late inputs go to `topics.late` when it is set, others to `topics.dlq`.
pub fn dead_letter(
    topics: &TopicsConfig,
    from: SourcePosition<'_>,
    key: Option<&[u8]>,
    payload: &[u8],
    rejection: &Rejection,
) -> OutRecord {
    use dlq_headers::*;
    OutRecord {
        topic: topics.rejected(rejection.reason).to_owned(),
        partition: None,
        key: key.map(<[u8]>::to_vec),
        payload: payload.to_vec(),
        headers: vec![
            (REASON, rejection.reason.as_str().as_bytes().to_vec()),
            (DETAIL, rejection.detail.as_bytes().to_vec()),
            (SOURCE_TOPIC, from.topic.as_bytes().to_vec()),
            (SOURCE_PARTITION, from.partition.to_string().into_bytes()),
            (SOURCE_OFFSET, from.offset.to_string().into_bytes()),
        ],
        content: Content::DeadLetter {
            reason: rejection.reason,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynsig_core::model::{Alert, AlertStatus, Severity};

    #[test]
    fn dead_letter_keeps_bytes_and_says_why_and_where() {
        let topics = TopicsConfig::default();
        let rejection = Rejection {
            reason: RejectReason::InvalidJson,
            detail: "expected value".into(),
        };
        let from = SourcePosition {
            topic: "posts",
            partition: 2,
            offset: 41,
        };
        let letter = dead_letter(&topics, from, Some(b"k"), b"\xff{oops", &rejection);
        assert_eq!(letter.topic, "dynsig.dlq");
        assert_eq!(letter.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(letter.payload, b"\xff{oops");
        let header = |name: &str| {
            let (_, value) = letter.headers.iter().find(|(k, _)| *k == name).expect(name);
            String::from_utf8(value.clone()).unwrap()
        };
        assert_eq!(header(dlq_headers::REASON), "invalid_json");
        assert_eq!(header(dlq_headers::DETAIL), "expected value");
        assert_eq!(header(dlq_headers::SOURCE_TOPIC), "posts");
        assert_eq!(header(dlq_headers::SOURCE_PARTITION), "2");
        assert_eq!(header(dlq_headers::SOURCE_OFFSET), "41");
    }

    #[test]
    fn alerts_are_keyed_by_dedup_key_as_json() {
        let alert = Alert {
            id: "trend:hashtag:#x@10".into(),
            dedup_key: "trend:hashtag:#x".into(),
            status: AlertStatus::Firing,
            severity: Severity::Warning,
            title: "t".into(),
            summary: "s".into(),
            cause: "trend".into(),
            signals: Vec::new(),
            actor: None,
            labels: Default::default(),
            active_at: 10,
            starts_at: 10,
            updated_at: 20,
            ends_at: None,
            examples: Vec::new(),
            adjustment: None,
        };
        let record = signal_record(&TopicsConfig::default(), &Signal::Alert(alert));
        assert_eq!(record.topic, "signals.alerts");
        assert_eq!(record.key.as_deref(), Some(&b"trend:hashtag:#x"[..]));
        let json: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
        assert_eq!(json["status"], "firing");
        assert_eq!(json["id"], "trend:hashtag:#x@10");
        assert!(json.get("actor").is_none(), "absent, not null");
        assert_eq!(
            record.content,
            Content::Signal {
                kind: "alert",
                window_end: Some(20),
                severity: Some(Severity::Warning),
            }
        );
    }
}
