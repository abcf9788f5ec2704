//! The HTTP edge: `/metrics` (Prometheus text), `/healthz` (the process is alive),
//! `/readyz` (partitions assigned and the cluster reachable), and the JSON API under
//! `/api` ([`crate::api`]), all on one address.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

use crate::api::{self, ApiState};
use crate::kafka::Health;

#[derive(Clone)]
struct AppState {
    prometheus: PrometheusHandle,
    health: Arc<Health>,
}

/// Binds the HTTP address, so that a port conflict stops the service at start.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding HTTP on {addr}"))
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    prometheus: PrometheusHandle,
    health: Arc<Health>,
    api: ApiState,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { prometheus, health })
        .merge(api::router(api))
        .fallback(api::not_found);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "HTTP listening (/metrics, /healthz, /readyz, /api)");
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
        .context("HTTP server")
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    // The exporter aggregates histograms lazily; rendering also runs its upkeep.
    state.prometheus.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.prometheus.render(),
    )
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no partitions assigned or broker unreachable\n",
        )
    }
}
