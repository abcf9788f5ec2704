//! Decoding of input records: the bytes of one `posts` or `events` record, in JSON or
//! protobuf, become a validated [`Input`] or a [`Rejection`].
//!
//! Bad input must never crash the service nor vanish: the service sends each rejection to
//! the dead-letter topic under [`RejectReason::as_str`], so the reason says which check
//! failed and the detail names the field at fault. Both formats end in the same checks
//! (`validate`), so one record gets the same verdict whichever encoding carried it.
//!
//! Encoding outputs is the service's job, not this module's.

mod simple_post;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use dynsig_proto::v1;
use prost::Message;
use serde::de::{Error as _, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer as _, Serialize};
use serde_json::Value;

use crate::model::{EpochMs, Input, InternalEvent, Post};

/// How a record's bytes are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Protobuf,
}

const JSON_MEDIA_TYPES: [&[u8]; 2] = [b"application/json", b"text/json"];
const PROTOBUF_MEDIA_TYPES: [&[u8]; 3] = [
    b"application/x-protobuf",
    b"application/protobuf",
    b"application/vnd.google.protobuf",
];

impl Format {
    /// Maps a `content-type` header value to a format, ignoring case, surrounding spaces
    /// and parameters (`; charset=utf-8`, `; messageType=...`): `application/json`,
    /// `text/json` and any `application/...+json` are JSON; `application/x-protobuf`,
    /// `application/protobuf` and `application/vnd.google.protobuf` are protobuf.
    ///
    /// Anything else is `None`, including `application/octet-stream`: it labels the bytes
    /// as opaque, which says nothing about their schema, and guessing protobuf would let a
    /// mislabelled producer's records be misread instead of showing up in the dead-letter
    /// topic as `unknown_content_type`. Producers that cannot label should send no header,
    /// so the topic's configured format applies.
    ///
    /// Runs once per record, so it compares bytes in place instead of allocating.
    pub fn from_content_type(value: &[u8]) -> Option<Format> {
        let media_type = value.split(|&byte| byte == b';').next()?.trim_ascii();
        let is = |candidate: &&[u8]| media_type.eq_ignore_ascii_case(candidate);
        if JSON_MEDIA_TYPES.iter().any(is) || is_json_suffixed(media_type) {
            Some(Format::Json)
        } else if PROTOBUF_MEDIA_TYPES.iter().any(is) {
            Some(Format::Protobuf)
        } else {
            None
        }
    }
}

/// `application/<subtype>+json` (RFC 6839 structured syntax suffix), e.g.
/// `application/vnd.dynsig.post+json`.
fn is_json_suffixed(media_type: &[u8]) -> bool {
    const PREFIX: &[u8] = b"application/";
    const SUFFIX: &[u8] = b"+json";
    media_type.len() > PREFIX.len() + SUFFIX.len()
        && media_type[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
        && media_type[media_type.len() - SUFFIX.len()..].eq_ignore_ascii_case(SUFFIX)
}

/// Which topic a record comes from, hence which message it must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InputKind {
    Post,
    Event,
}

/// Why a record was rejected. The `as_str` codes are part of the dead-letter contract:
/// never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    InvalidJson,
    InvalidProtobuf,
    InvalidUtf8,
    MissingField,
    InvalidField,
    TooLarge,
    /// Produced by the service: the `content-type` header maps to no [`Format`].
    UnknownContentType,
    /// Produced by the service: the engine's window for the record already closed.
    Late,
    /// Produced by the service: the record's time is too far ahead of the wall clock.
    Future,
}

impl RejectReason {
    /// Every reason, e.g. to register one metric series per reason up front.
    pub const ALL: [RejectReason; 9] = [
        RejectReason::InvalidJson,
        RejectReason::InvalidProtobuf,
        RejectReason::InvalidUtf8,
        RejectReason::MissingField,
        RejectReason::InvalidField,
        RejectReason::TooLarge,
        RejectReason::UnknownContentType,
        RejectReason::Late,
        RejectReason::Future,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::InvalidProtobuf => "invalid_protobuf",
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::MissingField => "missing_field",
            RejectReason::InvalidField => "invalid_field",
            RejectReason::TooLarge => "too_large",
            RejectReason::UnknownContentType => "unknown_content_type",
            RejectReason::Late => "late",
            RejectReason::Future => "future",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record that will not enter the engine: a stable reason code and a human detail.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

fn reject(reason: RejectReason, detail: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        detail: detail.into(),
    }
}

/// Size limits, checked before any parsing work is spent on a record.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted record, in bytes.
    pub max_message_bytes: usize,
    /// Largest accepted post text, in UTF-8 bytes.
    pub max_text_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 1_000_000,
            max_text_bytes: 64 * 1024,
        }
    }
}

/// 2000-01-01T00:00:00Z. Event times outside [`MIN_TS`, `MAX_TS`) are almost always unit
/// mistakes (seconds, microseconds or nanoseconds sent as milliseconds) or unset clocks,
/// and one of them would drag the engine's watermark decades away.
const MIN_TS: EpochMs = 946_684_800_000;
/// 2100-01-01T00:00:00Z, exclusive.
const MAX_TS: EpochMs = 4_102_444_800_000;

fn ts_out_of_range(ts: impl fmt::Display) -> String {
    format!("ts: {ts} is out of range [2000-01-01T00:00:00Z, 2100-01-01T00:00:00Z)")
}

/// Decodes and validates one record of the given kind.
pub fn decode(
    kind: InputKind,
    format: Format,
    bytes: &[u8],
    limits: &Limits,
) -> Result<Input, Rejection> {
    let mut input = Input::Post(Post::default());
    decode_into(kind, format, bytes, limits, &mut input)?;
    Ok(input)
}

/// [`decode`] into `out`, whose strings are reused: a JSON record's strings are copied
/// into their buffers, so decoding a stream into the same `out` allocates nothing once
/// the buffers have grown (and moves no record around). After a rejection `out` holds no
/// meaningful record.
pub fn decode_into(
    kind: InputKind,
    format: Format,
    bytes: &[u8],
    limits: &Limits,
    out: &mut Input,
) -> Result<(), Rejection> {
    if bytes.len() > limits.max_message_bytes {
        return Err(reject(
            RejectReason::TooLarge,
            format!(
                "message is {} bytes, limit is {}",
                bytes.len(),
                limits.max_message_bytes
            ),
        ));
    }
    match format {
        Format::Json => decode_json(kind, bytes, out)?,
        Format::Protobuf => *out = decode_protobuf(kind, bytes)?,
    }
    validate(out, limits)
}

/// The checks both formats share, on the decoded record.
fn validate(input: &Input, limits: &Limits) -> Result<(), Rejection> {
    let ts = input.ts();
    if !(MIN_TS..MAX_TS).contains(&ts) {
        return Err(reject(RejectReason::InvalidField, ts_out_of_range(ts)));
    }
    match input {
        Input::Post(post) if post.text.len() > limits.max_text_bytes => Err(reject(
            RejectReason::TooLarge,
            format!(
                "text is {} bytes, limit is {}",
                post.text.len(),
                limits.max_text_bytes
            ),
        )),
        // An empty kind is reported as missing in both formats: protobuf cannot tell an
        // empty string from an absent one, and the same record must get the same reason.
        Input::Event(event) if event.kind.is_empty() => Err(reject(
            RejectReason::MissingField,
            "kind: required, must not be empty",
        )),
        Input::Event(event) if !event.value.is_finite() => Err(reject(
            RejectReason::InvalidField,
            format!("value: {} is not a finite number", event.value),
        )),
        _ => Ok(()),
    }
}

/// A missing optional `value` counts one occurrence.
const DEFAULT_EVENT_VALUE: f64 = 1.0;

// ---------------------------------------------------------------------------------------
// JSON

/// The fields of a post in JSON, in the order of [`POST_FIELDS`]; `Other` is any unknown
/// field, ignored as protobuf ignores unknown tags.
#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum PostField {
    Id,
    Ts,
    Source,
    Author,
    Text,
    Lang,
    Url,
    Metadata,
    #[serde(other)]
    Other,
}

/// Deserializes a JSON post object straight into a reused [`Post`] (posts are the hot
/// path: a derived struct in between was moved, ~180 bytes, several times per post).
/// `null` is an absent field; a repeated known field is an error, as with a derived
/// struct. Returns `ts` and whether `text` was present, both required.
struct PostInto<'p>(&'p mut Post);

impl<'de> Visitor<'de> for PostInto<'_> {
    type Value = (Option<EpochMs>, bool);

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let post = self.0;
        clear_post(post);
        let (mut ts, mut has_text, mut seen) = (None, false, 0u16);
        while let Some(field) = map.next_key::<PostField>()? {
            if field != PostField::Other {
                let bit = 1 << field as u16;
                if seen & bit != 0 {
                    return Err(A::Error::duplicate_field(POST_FIELDS[field as usize].0));
                }
                seen |= bit;
            }
            let string = match field {
                PostField::Id => &mut post.id,
                PostField::Source => &mut post.source,
                PostField::Author => &mut post.author,
                PostField::Text => &mut post.text,
                PostField::Lang => &mut post.lang,
                PostField::Url => &mut post.url,
                PostField::Ts => {
                    ts = map.next_value()?;
                    continue;
                }
                PostField::Metadata => {
                    post.metadata = map.next_value::<Option<_>>()?.unwrap_or_default();
                    continue;
                }
                PostField::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            let value: Option<JsonStr> = map.next_value()?;
            has_text |= field == PostField::Text && value.is_some();
            copy_into(string, value);
        }
        Ok((ts, has_text))
    }
}

/// A JSON string, borrowed from the record unless it has escapes. A bare
/// `Option<Cow<str>>` field would always be deserialized owned (serde borrows only for a
/// `Cow` it sees directly), allocating per string.
#[derive(Deserialize)]
#[serde(transparent)]
struct JsonStr<'a>(#[serde(borrow)] Cow<'a, str>);

/// An internal event as JSON may carry it. `None` is an absent field or `null`; strings are
/// borrowed, then copied into the reused output (see [`decode_into`]). Unknown fields are
/// ignored, as protobuf ignores unknown tags.
#[derive(Deserialize)]
struct JsonEvent<'a> {
    #[serde(borrow)]
    id: Option<JsonStr<'a>>,
    ts: Option<EpochMs>,
    #[serde(borrow)]
    source: Option<JsonStr<'a>>,
    #[serde(borrow)]
    kind: Option<JsonStr<'a>>,
    #[serde(borrow)]
    key: Option<JsonStr<'a>>,
    value: Option<f64>,
    attributes: Option<BTreeMap<String, String>>,
}

/// The JSON type each field must have. Only consulted to explain a failed fast parse, so
/// it must list every field of [`PostField`] (in its order, which names a repeated field)
/// and [`JsonEvent`] with the type serde expects (tests
/// `every_mistyped_json_field_is_named` and `post_fields_follow_the_field_table` hold them
/// together).
#[derive(Debug, Clone, Copy)]
enum JsonType {
    /// An integer: `ts`, epoch milliseconds.
    Timestamp,
    Number,
    String,
    StringMap,
}

const POST_FIELDS: &[(&str, JsonType)] = &[
    ("id", JsonType::String),
    ("ts", JsonType::Timestamp),
    ("source", JsonType::String),
    ("author", JsonType::String),
    ("text", JsonType::String),
    ("lang", JsonType::String),
    ("url", JsonType::String),
    ("metadata", JsonType::StringMap),
];

const EVENT_FIELDS: &[(&str, JsonType)] = &[
    ("id", JsonType::String),
    ("ts", JsonType::Timestamp),
    ("source", JsonType::String),
    ("kind", JsonType::String),
    ("key", JsonType::String),
    ("value", JsonType::Number),
    ("attributes", JsonType::StringMap),
];

fn decode_json(kind: InputKind, bytes: &[u8], out: &mut Input) -> Result<(), Rejection> {
    // Checked first so that non-UTF-8 bytes get their own reason rather than a JSON
    // syntax error; it also lets serde_json skip its own UTF-8 checks.
    let text = std::str::from_utf8(bytes)
        .map_err(|error| reject(RejectReason::InvalidUtf8, error.to_string()))?;
    match kind {
        InputKind::Post => {
            if !matches!(out, Input::Post(_)) {
                *out = Input::Post(Post::default());
            }
            let Input::Post(post) = out else {
                unreachable!("just made a post")
            };
            let (ts, has_text) = match simple_post::read(text, post) {
                Some(fields) => fields,
                None => decode_post_with_serde(text, post)
                    .map_err(|error| explain_json_error(text, &error, POST_FIELDS))?,
            };
            post.ts = required(ts, "ts")?;
            required(has_text.then_some(()), "text")?;
        }
        InputKind::Event => {
            // A record is a JSON object, as posts are read: a derived struct would also
            // take the sequence form (an array of the fields in order).
            let raw: JsonEvent = if text.trim_start().starts_with('[') {
                Err(serde_json::Error::custom("expected a JSON object"))
            } else {
                serde_json::from_str(text)
            }
            .map_err(|error| explain_json_error(text, &error, EVENT_FIELDS))?;
            let ts = required(raw.ts, "ts")?;
            let event_kind = required(raw.kind, "kind")?;
            if !matches!(out, Input::Event(_)) {
                *out = Input::Event(InternalEvent::default());
            }
            let Input::Event(event) = out else {
                unreachable!("just made an event")
            };
            event.ts = ts;
            copy_into(&mut event.id, raw.id);
            copy_into(&mut event.source, raw.source);
            copy_into(&mut event.kind, Some(event_kind));
            copy_into(&mut event.key, raw.key);
            event.value = raw.value.unwrap_or(DEFAULT_EVENT_VALUE);
            event.attributes = raw.attributes.unwrap_or_default();
        }
    }
    Ok(())
}

/// A JSON post read into `post` by serde_json: `ts` and whether `text` was present. Every
/// post that [`simple_post::read`] leaves comes here.
fn decode_post_with_serde(
    text: &str,
    post: &mut Post,
) -> Result<(Option<EpochMs>, bool), serde_json::Error> {
    let mut json = serde_json::Deserializer::from_str(text);
    let fields = json.deserialize_map(PostInto(post))?;
    json.end()?;
    Ok(fields)
}

/// Empties every field of a reused `post` that a JSON post may set, keeping their buffers.
fn clear_post(post: &mut Post) {
    for field in [
        &mut post.id,
        &mut post.source,
        &mut post.author,
        &mut post.text,
        &mut post.lang,
        &mut post.url,
    ] {
        field.clear();
    }
    post.metadata.clear();
}

/// Replaces `field` with `value` (empty when absent), reusing its buffer.
fn copy_into(field: &mut String, value: Option<JsonStr<'_>>) {
    field.clear();
    if let Some(JsonStr(value)) = value {
        field.push_str(&value);
    }
}

fn required<T>(value: Option<T>, field: &str) -> Result<T, Rejection> {
    value.ok_or_else(|| {
        reject(
            RejectReason::MissingField,
            format!("{field}: required field is missing"),
        )
    })
}

/// Turns a failed fast parse into a precise rejection. serde's messages do not name the
/// field at fault, so the (rare) failing record is parsed again as a generic
/// [`Value`] and its fields are checked against `fields`.
fn explain_json_error(
    text: &str,
    error: &serde_json::Error,
    fields: &[(&str, JsonType)],
) -> Rejection {
    let document: Value = match serde_json::from_str(text) {
        Ok(document) => document,
        Err(syntax_error) => return reject(RejectReason::InvalidJson, syntax_error.to_string()),
    };
    let Value::Object(object) = &document else {
        return reject(
            RejectReason::InvalidJson,
            format!("expected a JSON object, got {}", describe(&document)),
        );
    };
    fields
        .iter()
        .find_map(|&(name, expected)| type_mismatch(name, expected, object.get(name)?))
        .map(|detail| reject(RejectReason::InvalidField, detail))
        // Valid JSON, right types, yet serde refused: e.g. a duplicate key.
        .unwrap_or_else(|| reject(RejectReason::InvalidJson, error.to_string()))
}

/// The detail of a field whose value does not have the expected type, if it does not.
fn type_mismatch(name: &str, expected: JsonType, found: &Value) -> Option<String> {
    let mismatch = |wanted: &str| {
        Some(format!(
            "{name}: expected {wanted}, got {}",
            describe(found)
        ))
    };
    match (expected, found) {
        // null means absent for every field, as in the fast path.
        (_, Value::Null)
        | (JsonType::String, Value::String(_))
        | (JsonType::Number, Value::Number(_)) => None,
        (JsonType::Timestamp, Value::Number(number)) if number.is_i64() => None,
        // An integer, just too large for i64: out of range rather than mistyped.
        (JsonType::Timestamp, Value::Number(number)) if number.is_u64() => {
            Some(ts_out_of_range(number))
        }
        (JsonType::Timestamp, _) => mismatch("an integer"),
        (JsonType::Number, _) => mismatch("a number"),
        (JsonType::String, _) => mismatch("a string"),
        (JsonType::StringMap, Value::Object(map)) => map
            .iter()
            .find(|(_, value)| !value.is_string())
            .map(|(key, value)| {
                format!(
                    "{name}.{key:.64}: expected a string, got {}",
                    describe(value)
                )
            }),
        (JsonType::StringMap, _) => mismatch("an object of strings"),
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(_) => "boolean".into(),
        Value::Number(number) => format!("number {number}"),
        Value::String(_) => "string".into(),
        Value::Array(_) => "array".into(),
        Value::Object(_) => "object".into(),
    }
}

// ---------------------------------------------------------------------------------------
// Protobuf

fn decode_protobuf(kind: InputKind, bytes: &[u8]) -> Result<Input, Rejection> {
    match kind {
        InputKind::Post => {
            let post = v1::Post::decode(bytes).map_err(protobuf_rejection)?;
            Ok(Input::Post(Post {
                id: post.id,
                ts: present_ts(post.ts)?,
                source: post.source,
                author: post.author,
                text: post.text,
                lang: post.lang,
                url: post.url,
                metadata: post.metadata.into_iter().collect(),
            }))
        }
        InputKind::Event => {
            let event = v1::InternalEvent::decode(bytes).map_err(protobuf_rejection)?;
            Ok(Input::Event(InternalEvent {
                id: event.id,
                ts: present_ts(event.ts)?,
                source: event.source,
                kind: event.kind,
                key: event.key,
                value: event.value.unwrap_or(DEFAULT_EVENT_VALUE),
                attributes: event.attributes.into_iter().collect(),
            }))
        }
    }
}

/// proto3 has no presence for scalars: an unset `ts` decodes as 0, which is therefore
/// reported as missing rather than as 1970.
fn present_ts(ts: EpochMs) -> Result<EpochMs, Rejection> {
    if ts == 0 {
        Err(reject(
            RejectReason::MissingField,
            "ts: required (0, the protobuf default, means unset)",
        ))
    } else {
        Ok(ts)
    }
}

/// prost exposes no error kind, only its message; its wording for a string field holding
/// invalid UTF-8 is pinned by test `protobuf_string_with_invalid_utf8_is_invalid_utf8`, so
/// a prost upgrade that changes it fails that test instead of silently changing reasons.
fn protobuf_rejection(error: prost::DecodeError) -> Rejection {
    let detail = error.to_string();
    let reason = if detail.contains("data is not UTF-8 encoded") {
        RejectReason::InvalidUtf8
    } else {
        RejectReason::InvalidProtobuf
    };
    reject(reason, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TS: EpochMs = 1_735_689_600_000; // 2025-01-01T00:00:00Z

    fn limits() -> Limits {
        Limits::default()
    }

    fn json_post(body: &str) -> Result<Input, Rejection> {
        decode(InputKind::Post, Format::Json, body.as_bytes(), &limits())
    }

    fn json_event(body: &str) -> Result<Input, Rejection> {
        decode(InputKind::Event, Format::Json, body.as_bytes(), &limits())
    }

    fn rejected(result: Result<Input, Rejection>) -> Rejection {
        result.expect_err("record should be rejected")
    }

    #[test]
    fn post_fields_follow_the_field_table() {
        for (i, &(name, _)) in POST_FIELDS.iter().enumerate() {
            let field: PostField = serde_json::from_str(&format!("{name:?}")).unwrap();
            assert_eq!(field as usize, i, "{name}");
        }
        let duplicate = rejected(json_post(&format!(
            r#"{{"ts":{TS},"text":"a","text":"b"}}"#
        )));
        assert!(
            duplicate.detail.contains("duplicate field `text`"),
            "{duplicate}"
        );
    }

    #[test]
    fn json_arrays_are_not_records() {
        for (kind, array) in [
            (
                InputKind::Post,
                r#"[" p", 1735689600000, "s", "a", "text", "en", "", {}]"#,
            ),
            (
                InputKind::Event,
                r#" ["e", 1735689600000, "s", "error", "k", 1.0, {}]"#,
            ),
        ] {
            let rejection = rejected(decode(kind, Format::Json, array.as_bytes(), &limits()));
            assert_eq!(rejection.reason, RejectReason::InvalidJson);
            assert_eq!(rejection.detail, "expected a JSON object, got array");
        }
    }

    #[test]
    fn json_strings_are_borrowed_unless_escaped() {
        let raw: JsonEvent = serde_json::from_str(r#"{"kind":"plain","key":"a\u00e9"}"#).unwrap();
        assert!(matches!(raw.kind, Some(JsonStr(Cow::Borrowed("plain")))));
        assert!(matches!(raw.key, Some(JsonStr(Cow::Owned(ref s))) if s == "aé"));
    }

    fn sample_post() -> Post {
        Post {
            id: "p-1".into(),
            ts: TS,
            source: "twitter".into(),
            author: "user7".into(),
            text: "Acme recall announced #acmefire @acme $ACME".into(),
            lang: "en".into(),
            url: "https://example.com/p/1".into(),
            metadata: BTreeMap::from([("region".into(), "eu".into())]),
        }
    }

    fn sample_event() -> InternalEvent {
        InternalEvent {
            id: "e-1".into(),
            ts: TS,
            source: "monitoring".into(),
            kind: "error".into(),
            key: "checkout".into(),
            value: 3.5,
            attributes: BTreeMap::from([("code".into(), "500".into())]),
        }
    }

    fn proto_post(post: &Post) -> v1::Post {
        v1::Post {
            id: post.id.clone(),
            ts: post.ts,
            source: post.source.clone(),
            author: post.author.clone(),
            text: post.text.clone(),
            lang: post.lang.clone(),
            url: post.url.clone(),
            metadata: post.metadata.clone().into_iter().collect(),
        }
    }

    fn proto_event(event: &InternalEvent) -> v1::InternalEvent {
        v1::InternalEvent {
            id: event.id.clone(),
            ts: event.ts,
            source: event.source.clone(),
            kind: event.kind.clone(),
            key: event.key.clone(),
            value: Some(event.value),
            attributes: event.attributes.clone().into_iter().collect(),
        }
    }

    fn protobuf(kind: InputKind, bytes: &[u8]) -> Result<Input, Rejection> {
        decode(kind, Format::Protobuf, bytes, &limits())
    }

    #[test]
    fn json_post_round_trips() {
        let post = sample_post();
        let bytes = serde_json::to_vec(&post).unwrap();
        assert_eq!(
            decode(InputKind::Post, Format::Json, &bytes, &limits()),
            Ok(Input::Post(post))
        );
    }

    #[test]
    fn json_event_round_trips() {
        let event = sample_event();
        let bytes = serde_json::to_vec(&event).unwrap();
        assert_eq!(
            decode(InputKind::Event, Format::Json, &bytes, &limits()),
            Ok(Input::Event(event))
        );
    }

    #[test]
    fn protobuf_post_round_trips() {
        let post = sample_post();
        let bytes = proto_post(&post).encode_to_vec();
        assert_eq!(protobuf(InputKind::Post, &bytes), Ok(Input::Post(post)));
    }

    #[test]
    fn protobuf_event_round_trips() {
        let event = sample_event();
        let bytes = proto_event(&event).encode_to_vec();
        assert_eq!(protobuf(InputKind::Event, &bytes), Ok(Input::Event(event)));
    }

    #[test]
    fn minimal_records_get_defaults_in_both_formats() {
        let post = Post {
            ts: TS,
            ..Post::default()
        };
        assert_eq!(
            json_post(&format!(r#"{{"ts":{TS},"text":""}}"#)),
            Ok(Input::Post(post.clone()))
        );
        let bytes = v1::Post {
            ts: TS,
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(protobuf(InputKind::Post, &bytes), Ok(Input::Post(post)));

        let event = InternalEvent {
            ts: TS,
            kind: "order".into(),
            value: 1.0,
            ..InternalEvent::default()
        };
        assert_eq!(
            json_event(&format!(r#"{{"ts":{TS},"kind":"order"}}"#)),
            Ok(Input::Event(event.clone()))
        );
        assert_eq!(
            json_event(&format!(
                r#"{{"ts":{TS},"kind":"order","value":null,"key":null}}"#
            )),
            Ok(Input::Event(event.clone()))
        );
        let bytes = v1::InternalEvent {
            ts: TS,
            kind: "order".into(),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(protobuf(InputKind::Event, &bytes), Ok(Input::Event(event)));
    }

    #[test]
    fn json_integer_value_is_accepted_as_number() {
        let Ok(Input::Event(event)) =
            json_event(&format!(r#"{{"ts":{TS},"kind":"order","value":42}}"#))
        else {
            panic!("event should decode");
        };
        assert_eq!(event.value, 42.0);
    }

    #[test]
    fn unknown_json_fields_are_ignored() {
        let body = format!(
            r#"{{"ts":{TS},"text":"hi","future":{{"nested":[1,2,{{"x":null}}]}},"score":1.5,"flag":true}}"#
        );
        let Ok(Input::Post(post)) = json_post(&body) else {
            panic!("post should decode")
        };
        assert_eq!(post.text, "hi");
    }

    #[test]
    fn emoji_and_right_to_left_text_are_accepted() {
        let text = "🔥🔥 Acme שריפה במפעל حريق في المصنع 👩‍🚒";
        let post = Post {
            ts: TS,
            text: text.into(),
            lang: "he".into(),
            ..Post::default()
        };
        let json = serde_json::to_vec(&post).unwrap();
        assert_eq!(
            decode(InputKind::Post, Format::Json, &json, &limits()),
            Ok(Input::Post(post.clone()))
        );
        let bytes = proto_post(&post).encode_to_vec();
        assert_eq!(protobuf(InputKind::Post, &bytes), Ok(Input::Post(post)));
    }

    #[test]
    fn escaped_json_strings_are_unescaped() {
        let body = format!(r#"{{"ts":{TS},"text":"caf\u00e9 \"quoted\" \ud83d\udd25"}}"#);
        let Ok(Input::Post(post)) = json_post(&body) else {
            panic!("post should decode")
        };
        assert_eq!(post.text, "café \"quoted\" 🔥");
    }

    #[test]
    fn json_that_is_not_an_object_is_invalid_json() {
        for body in ["[1,2]", r#""x""#, "42", "null", "true"] {
            let rejection = rejected(json_post(body));
            assert_eq!(rejection.reason, RejectReason::InvalidJson, "{body}");
            assert!(
                rejection.detail.starts_with("expected a JSON object"),
                "{body}: {rejection}"
            );
        }
    }

    #[test]
    fn malformed_json_is_invalid_json() {
        let truncated = format!(r#"{{"ts":{TS},"text":"hel"#);
        for body in [
            "",
            "not json",
            "{",
            &truncated,
            r#"{"ts":1,}"#,
            "{} trailing",
        ] {
            assert_eq!(
                rejected(json_post(body)).reason,
                RejectReason::InvalidJson,
                "{body}"
            );
        }
    }

    #[test]
    fn duplicate_json_key_is_invalid_json() {
        let rejection = rejected(json_post(&format!(r#"{{"ts":{TS},"ts":{TS},"text":""}}"#)));
        assert_eq!(rejection.reason, RejectReason::InvalidJson);
        assert!(rejection.detail.contains("duplicate field"), "{rejection}");
    }

    #[test]
    fn json_with_invalid_utf8_is_invalid_utf8() {
        let mut bytes = format!(r#"{{"ts":{TS},"text":"abc"#).into_bytes();
        bytes.extend_from_slice(&[0xff, 0xfe]);
        bytes.extend_from_slice(br#""}"#);
        let rejection = rejected(decode(InputKind::Post, Format::Json, &bytes, &limits()));
        assert_eq!(rejection.reason, RejectReason::InvalidUtf8);
    }

    #[test]
    fn random_bytes_are_rejected_without_panicking() {
        // Deterministic pseudo-random garbage of many lengths, in every kind and format.
        let mut state = 0x1234_5678_u32;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    state as u8
                })
                .collect();
            for kind in [InputKind::Post, InputKind::Event] {
                for format in [Format::Json, Format::Protobuf] {
                    // Rare garbage may decode into a valid record; it must just not panic.
                    let _ = decode(kind, format, &bytes, &limits());
                }
            }
        }
        let garbage = [0x9c, 0xff, 0x00, 0x13, 0x88];
        let rejection = rejected(decode(InputKind::Post, Format::Json, &garbage, &limits()));
        assert_eq!(rejection.reason, RejectReason::InvalidUtf8);
    }

    #[test]
    fn missing_json_fields_are_named() {
        let cases = [
            (json_post(r#"{"text":"hi"}"#), "ts"),
            (json_post(&format!(r#"{{"ts":{TS}}}"#)), "text"),
            (json_post(&format!(r#"{{"ts":{TS},"text":null}}"#)), "text"),
            (json_event(&format!(r#"{{"ts":{TS}}}"#)), "kind"),
            (json_event(&format!(r#"{{"ts":{TS},"kind":""}}"#)), "kind"),
            (json_event(r#"{"kind":"order"}"#), "ts"),
        ];
        for (result, field) in cases {
            let rejection = rejected(result);
            assert_eq!(rejection.reason, RejectReason::MissingField, "{rejection}");
            assert!(
                rejection.detail.starts_with(&format!("{field}:")),
                "{rejection}"
            );
        }
    }

    #[test]
    fn mistyped_json_fields_are_named() {
        let cases = [
            (
                json_post(r#"{"ts":"1735689600000","text":"hi"}"#),
                "ts: expected an integer, got string",
            ),
            (
                json_post(r#"{"ts":1735689600000.5,"text":"hi"}"#),
                "ts: expected an integer, got number 1735689600000.5",
            ),
            (
                json_post(&format!(r#"{{"ts":{TS},"text":7}}"#)),
                "text: expected a string, got number 7",
            ),
            (
                json_post(&format!(
                    r#"{{"ts":{TS},"text":"","metadata":{{"a":"b","n":1}}}}"#
                )),
                "metadata.n: expected a string, got number 1",
            ),
            (
                json_post(&format!(r#"{{"ts":{TS},"text":"","metadata":[]}}"#)),
                "metadata: expected an object of strings, got array",
            ),
            (
                json_event(&format!(r#"{{"ts":{TS},"kind":"order","value":"3"}}"#)),
                "value: expected a number, got string",
            ),
            (
                json_event(&format!(r#"{{"ts":{TS},"kind":["order"]}}"#)),
                "kind: expected a string, got array",
            ),
        ];
        for (result, detail) in cases {
            assert_eq!(rejected(result), reject(RejectReason::InvalidField, detail));
        }
    }

    #[test]
    fn every_mistyped_json_field_is_named() {
        // A boolean is the wrong type for every field: each one must be named, which
        // checks that POST_FIELDS/EVENT_FIELDS cover the serde structs.
        let valid_post = serde_json::to_value(sample_post()).unwrap();
        let valid_event = serde_json::to_value(sample_event()).unwrap();
        for (kind, valid, fields) in [
            (InputKind::Post, valid_post, POST_FIELDS),
            (InputKind::Event, valid_event, EVENT_FIELDS),
        ] {
            assert_eq!(
                valid.as_object().unwrap().len(),
                fields.len(),
                "field table out of date"
            );
            for &(name, _) in fields {
                let mut document = valid.clone();
                document[name] = Value::Bool(true);
                let bytes = serde_json::to_vec(&document).unwrap();
                let rejection = rejected(decode(kind, Format::Json, &bytes, &limits()));
                assert_eq!(rejection.reason, RejectReason::InvalidField, "{rejection}");
                assert!(
                    rejection.detail.starts_with(&format!("{name}: expected")),
                    "{rejection}"
                );
            }
        }
    }

    #[test]
    fn ts_outside_2000_to_2100_is_invalid_field() {
        let start_2000 = 946_684_800_000;
        let start_2100 = 4_102_444_800_000;
        for ts in [
            0,
            1_000,
            TS / 1000,
            -TS,
            start_2000 - 1,
            start_2100,
            TS * 1000,
        ] {
            let rejection = rejected(json_post(&format!(r#"{{"ts":{ts},"text":""}}"#)));
            assert_eq!(rejection.reason, RejectReason::InvalidField, "{ts}");
            assert!(rejection.detail.contains("out of range"), "{rejection}");
        }
        let beyond_i64 = rejected(json_post(r#"{"ts":18446744073709551615,"text":""}"#));
        assert_eq!(beyond_i64.reason, RejectReason::InvalidField);
        assert!(
            beyond_i64
                .detail
                .starts_with("ts: 18446744073709551615 is out of range"),
            "{beyond_i64}"
        );

        for ts in [start_2000, start_2100 - 1] {
            assert!(
                json_post(&format!(r#"{{"ts":{ts},"text":""}}"#)).is_ok(),
                "{ts}"
            );
        }
        let bytes = v1::Post {
            ts: 1_000,
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(
            rejected(protobuf(InputKind::Post, &bytes)).reason,
            RejectReason::InvalidField
        );
    }

    #[test]
    fn protobuf_unset_ts_and_kind_are_missing_field() {
        let post = v1::Post {
            text: "hi".into(),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(
            rejected(protobuf(InputKind::Post, &post)).reason,
            RejectReason::MissingField
        );
        assert_eq!(
            rejected(protobuf(InputKind::Post, &[])).reason,
            RejectReason::MissingField
        );

        let event = v1::InternalEvent {
            ts: TS,
            ..Default::default()
        }
        .encode_to_vec();
        let rejection = rejected(protobuf(InputKind::Event, &event));
        assert_eq!(rejection.reason, RejectReason::MissingField);
        assert!(rejection.detail.starts_with("kind:"), "{rejection}");
    }

    #[test]
    fn broken_protobuf_is_invalid_protobuf() {
        let encoded = proto_post(&sample_post()).encode_to_vec();
        let truncated = &encoded[..encoded.len() / 2];
        for bytes in [truncated, &[0xff; 8], &[0x0a, 0x05, b'a'], &[0x00]] {
            assert_eq!(
                rejected(protobuf(InputKind::Post, bytes)).reason,
                RejectReason::InvalidProtobuf,
                "{bytes:?}"
            );
        }
        // JSON sent on a protobuf topic.
        let json = serde_json::to_vec(&sample_event()).unwrap();
        assert_eq!(
            rejected(protobuf(InputKind::Event, &json)).reason,
            RejectReason::InvalidProtobuf
        );
    }

    #[test]
    fn protobuf_string_with_invalid_utf8_is_invalid_utf8() {
        // Field 5 (text), length-delimited, 3 bytes that are not UTF-8; then ts.
        let mut bytes = vec![0x2a, 0x03, 0xff, 0xfe, 0xfd];
        bytes.extend(
            v1::Post {
                ts: TS,
                ..Default::default()
            }
            .encode_to_vec(),
        );
        let rejection = rejected(protobuf(InputKind::Post, &bytes));
        assert_eq!(rejection.reason, RejectReason::InvalidUtf8, "{rejection}");
        assert!(rejection.detail.contains("Post.text"), "{rejection}");
    }

    #[test]
    fn non_finite_value_is_invalid_field() {
        for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let event = v1::InternalEvent {
                ts: TS,
                kind: "error".into(),
                value: Some(value),
                ..Default::default()
            };
            let rejection = rejected(protobuf(InputKind::Event, &event.encode_to_vec()));
            assert_eq!(rejection.reason, RejectReason::InvalidField);
            assert!(rejection.detail.starts_with("value:"), "{rejection}");
        }
    }

    #[test]
    fn oversized_message_and_text_are_too_large() {
        let small = Limits {
            max_message_bytes: 200,
            max_text_bytes: 10,
        };
        let long_text = Post {
            ts: TS,
            text: "x".repeat(11),
            ..Post::default()
        };
        let huge = Post {
            ts: TS,
            text: "y".repeat(500),
            ..Post::default()
        };
        for post in [long_text, huge] {
            let json = serde_json::to_vec(&post).unwrap();
            let proto = proto_post(&post).encode_to_vec();
            for (format, bytes) in [(Format::Json, json), (Format::Protobuf, proto)] {
                let rejection = rejected(decode(InputKind::Post, format, &bytes, &small));
                assert_eq!(rejection.reason, RejectReason::TooLarge, "{rejection}");
            }
        }
        // Size is checked before parsing: oversized garbage is too large, not invalid.
        let rejection = rejected(decode(InputKind::Post, Format::Json, &[0xff; 201], &small));
        assert_eq!(
            rejection,
            reject(RejectReason::TooLarge, "message is 201 bytes, limit is 200")
        );
        // The text limit counts UTF-8 bytes, not characters: 3 × 4 bytes > 10.
        let emoji = format!(r#"{{"ts":{TS},"text":"🔥🔥🔥"}}"#);
        assert_eq!(
            rejected(decode(
                InputKind::Post,
                Format::Json,
                emoji.as_bytes(),
                &small
            ))
            .reason,
            RejectReason::TooLarge
        );
    }

    #[test]
    fn content_types_map_to_formats() {
        let cases: [(&[u8], Option<Format>); 17] = [
            (b"application/json", Some(Format::Json)),
            (b"Application/JSON; charset=utf-8", Some(Format::Json)),
            (b"  application/json ;charset=UTF-8", Some(Format::Json)),
            (b"text/json", Some(Format::Json)),
            (b"application/vnd.dynsig.post+json", Some(Format::Json)),
            (
                b"application/problem+JSON; charset=utf-8",
                Some(Format::Json),
            ),
            (b"application/x-protobuf", Some(Format::Protobuf)),
            (
                b"application/x-protobuf; messageType=dynsig.v1.Post",
                Some(Format::Protobuf),
            ),
            (b"application/protobuf", Some(Format::Protobuf)),
            (b"APPLICATION/VND.GOOGLE.PROTOBUF", Some(Format::Protobuf)),
            (b"application/octet-stream", None),
            (b"text/plain", None),
            (b"application/+json", None),
            (b"text/foo+json", None),
            (b"application/jsonx", None),
            (b"", None),
            (b"\xff\xfe", None),
        ];
        for (value, format) in cases {
            assert_eq!(
                Format::from_content_type(value),
                format,
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
    }

    #[test]
    fn reason_codes_are_stable_snake_case() {
        let codes: Vec<&str> = RejectReason::ALL
            .iter()
            .map(|reason| reason.as_str())
            .collect();
        assert_eq!(
            codes,
            [
                "invalid_json",
                "invalid_protobuf",
                "invalid_utf8",
                "missing_field",
                "invalid_field",
                "too_large",
                "unknown_content_type",
                "late",
                "future"
            ]
        );
        for reason in RejectReason::ALL {
            assert_eq!(reason.to_string(), reason.as_str());
        }
        assert_eq!(
            reject(RejectReason::MissingField, "ts: required field is missing").to_string(),
            "missing_field: ts: required field is missing"
        );
    }

    #[test]
    fn limits_deserialize_with_defaults_and_reject_unknown_keys() {
        let limits: Limits = serde_json::from_str(r#"{"max_text_bytes":100}"#).unwrap();
        assert_eq!(
            limits,
            Limits {
                max_text_bytes: 100,
                ..Limits::default()
            }
        );
        assert_eq!(
            Limits::default(),
            Limits {
                max_message_bytes: 1_000_000,
                max_text_bytes: 65_536
            }
        );
        assert!(serde_json::from_str::<Limits>(r#"{"max_txt_bytes":100}"#).is_err());
    }
}
