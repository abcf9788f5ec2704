//! The HTTP API (`/api/*`, JSON; described in `deploy/openapi.yaml`): reads served from
//! the [`ReadModel`], changes sent to the engine as [`Command`]s (see [`crate::control`]
//! for why the engine is reached that way).
//!
//! This module owns the HTTP side only: routes, the bearer-token check of the write
//! endpoints, request parsing and the JSON error shape `{"error": "..."}`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use dynsig_core::decode::Rejection;
use dynsig_core::feedback::Feedback;
use dynsig_core::metafilter::silence::Silence;
use dynsig_core::model::TrendSnapshot;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};

use crate::control::{self, Command, FeedbackError, ReadModel};

/// How long a write waits for the transform stage to apply it. The stage applies commands
/// between records, so this is only reached when the pipeline is stuck (e.g. the broker
/// is down and the sink applies backpressure).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct ApiState {
    model: watch::Receiver<ReadModel>,
    commands: mpsc::Sender<Command>,
    /// The configured bearer token; `None`: writes are refused (403).
    token: Option<Arc<[u8]>>,
}

impl ApiState {
    pub fn new(
        model: watch::Receiver<ReadModel>,
        commands: mpsc::Sender<Command>,
        token: &str,
    ) -> ApiState {
        ApiState {
            model,
            commands,
            token: (!token.is_empty()).then(|| Arc::from(token.as_bytes())),
        }
    }
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/trends", get(trends))
        .route("/api/alerts", get(alerts))
        .route("/api/silences", get(silences).post(add_silence))
        .route("/api/silences/{id}", delete(delete_silence))
        .route("/api/actors", get(actors))
        .route("/api/feedback", post(feedback))
        .with_state(state)
}

/// An error answer: its status and `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> ApiError {
        ApiError::bad_request(format!("{}: {}", rejection.reason, rejection.detail))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"dynsig\""),
            );
        }
        response
    }
}

/// The fallback of the whole HTTP server: a JSON 404 like the API's other errors.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")
}

/// The write endpoints' check: 403 when no token is configured (writes are off), 401
/// when the request's bearer token is missing or wrong.
fn authorize(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "write endpoints are disabled: no http.api_token is configured",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| bearer_token(value.as_bytes()))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing Authorization: Bearer <token>",
            )
        })?;
    if constant_time_eq(given, expected) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::UNAUTHORIZED, "wrong token"))
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme is case-insensitive).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then_some(token)
}

/// Compares in a time that depends on the expected token's length only, not on where
/// the first difference is, so the token cannot be guessed byte by byte from timings.
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut difference = u8::from(given.len() != expected.len());
    for (index, byte) in expected.iter().enumerate() {
        // Past the end of a shorter guess, the length check has already decided.
        difference |= byte ^ given.get(index).copied().unwrap_or(0);
    }
    std::hint::black_box(difference) == 0
}

/// Sends a command and waits for the transform stage's answer.
async fn ask<T>(
    state: &ApiState,
    command: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Result<T, ApiError> {
    let (reply, answer) = oneshot::channel();
    let exchange = async {
        state.commands.send(command(reply)).await.ok()?;
        answer.await.ok()
    };
    match tokio::time::timeout(COMMAND_TIMEOUT, exchange).await {
        Ok(Some(answer)) => Ok(answer),
        Ok(None) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the service is shutting down",
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the pipeline did not apply the request within {COMMAND_TIMEOUT:?}"),
        )),
    }
}

/// Serializes the answer straight from the borrowed model. The borrow holds off the
/// transform stage's next refresh, so answers stay cheap (no blocking, no awaiting).
fn read(state: &ApiState, answer: impl FnOnce(&ReadModel) -> Response) -> Response {
    answer(&state.model.borrow())
}

/// `{"<name>": value}`: every read answers an object, so fields can be added later.
fn named<T: Serialize>(name: &'static str, value: T) -> Response {
    Json(BTreeMap::from([(name, value)])).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrendsQuery {
    /// A window name (`1m`, `15m/5m`); all windows when absent.
    window: Option<String>,
    /// An actor id: only the entries tagged with it.
    actor: Option<String>,
}

async fn trends(
    State(state): State<ApiState>,
    query: Result<Query<TrendsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    if let Some(actor) = &query.actor {
        if !state.model.borrow().has_actor(actor) {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("actor {actor:?} is not in the catalog"),
            ));
        }
    }
    Ok(read(&state, |model| {
        let snapshots: Vec<Cow<'_, TrendSnapshot>> = model
            .trends
            .values()
            .filter(|s| query.window.as_ref().is_none_or(|w| *w == s.window))
            .map(|snapshot| match &query.actor {
                None => Cow::Borrowed(snapshot),
                Some(actor) => {
                    let mut mine = snapshot.clone();
                    mine.entries.retain(|e| e.actor.as_deref() == Some(actor));
                    Cow::Owned(mine)
                }
            })
            .collect();
        named("trends", snapshots)
    }))
}

async fn alerts(State(state): State<ApiState>) -> Response {
    read(&state, |model| named("alerts", &model.alerts))
}

async fn silences(State(state): State<ApiState>) -> Response {
    read(&state, |model| named("silences", &model.silences))
}

async fn actors(State(state): State<ApiState>) -> Response {
    read(&state, |model| named("actors", &model.actors))
}

async fn add_silence(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let mut value = control::parse_json_object(&body)?;
    let object = value.as_object_mut().expect("checked to be an object");
    let starts_now = object.get("starts_at").is_none_or(Value::is_null);
    if starts_now {
        // A placeholder: the engine sets its own clock when it applies the command.
        object.insert("starts_at".into(), json!(0));
    }
    let silence: Silence = control::from_json_value(value)?;
    let id = ask(&state, |reply| Command::AddSilence {
        silence,
        starts_now,
        reply,
    })
    .await?
    .map_err(|error| ApiError::bad_request(error.to_string()))?;
    Ok((StatusCode::CREATED, Json(json!({ "id": id }))).into_response())
}

async fn delete_silence(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let target = id.clone();
    match ask(&state, |reply| Command::DeleteSilence { id: target, reply }).await? {
        Some(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no silence {id:?}"),
        )),
    }
}

async fn feedback(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let feedback: Feedback = control::parse_json(&body)?;
    let adjustment = ask(&state, |reply| Command::Feedback { feedback, reply })
        .await?
        .map_err(|error| match error {
            FeedbackError::Rejected(rejected) => ApiError::bad_request(rejected.to_string()),
            FeedbackError::ClockNotStarted | FeedbackError::OnAnotherInstance => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
            }
        })?;
    Ok((StatusCode::ACCEPTED, Json(adjustment)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_whole_tokens() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3creT", b"s3cret"));
        assert!(!constant_time_eq(b"s3cre", b"s3cret"));
        assert!(!constant_time_eq(b"s3crets", b"s3cret"));
        assert!(!constant_time_eq(b"", b"s3cret"));
        assert!(!constant_time_eq(b"sssss", b"s"));
    }

    #[test]
    fn writes_need_the_configured_token() {
        let (_, model) = watch::channel(ReadModel::default());
        let (commands, _) = mpsc::channel(1);
        let bearer = |token: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::AUTHORIZATION,
                format!("Bearer {token}").parse().unwrap(),
            );
            headers
        };
        let state = ApiState::new(model.clone(), commands.clone(), "");
        let refused = authorize(&state, &bearer("x")).unwrap_err();
        assert_eq!(refused.status, StatusCode::FORBIDDEN);

        let state = ApiState::new(model, commands, "s3cret");
        assert!(authorize(&state, &bearer("s3cret")).is_ok());
        for headers in [bearer("wrong"), HeaderMap::new()] {
            let refused = authorize(&state, &headers).unwrap_err();
            assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        }
    }
}
