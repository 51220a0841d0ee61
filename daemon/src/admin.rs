//! The admin endpoints of a daemon (`sensord [metrics] listen`,
//! `collectord --admin-listen`), plain HTTP meant for a local Prometheus
//! and the orchestrator's probes:
//!
//! - `GET /metrics`: the Prometheus text exposition (OpenMetrics);
//! - `GET /healthz`: 200 while the process serves (liveness);
//! - `GET /readyz`: 200 when it can do its job (sensord: a policy in force
//!   and the programs attached; collectord: the database answers), else 503
//!   with the reason.
//!
//! Anything else is 404 with the list of endpoints; methods other than GET
//! and HEAD are 405.

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use axum::{
    Router,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use residency_proto::listen;
use tokio::sync::watch;
use tracing::info;

/// Whether the daemon is ready, or why not.
pub type Readiness =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// What the endpoints answer with.
#[derive(Clone)]
pub struct Admin {
    /// The metrics' text exposition.
    pub metrics: Arc<dyn Fn() -> String + Send + Sync>,
    pub ready: Readiness,
}

/// A Prometheus registry's text exposition (empty when it cannot be
/// encoded).
pub fn render(registry: &prometheus_client::registry::Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}

/// Connections the admin listener admits.
const LIMITS: listen::Limits = listen::Limits {
    max_connections: 64,
    per_peer: 16,
    idle: Duration::from_secs(30),
};

/// How long a readiness check may take before it counts as not ready.
const READY_TIMEOUT: Duration = Duration::from_secs(3);

/// The endpoints.
pub fn router(admin: Admin) -> Router {
    let metrics = admin.metrics.clone();
    let ready = admin.ready.clone();
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = metrics();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let check = ready();
                async move {
                    match tokio::time::timeout(READY_TIMEOUT, check).await {
                        Ok(Ok(())) => (StatusCode::OK, "ready\n".to_owned()).into_response(),
                        Ok(Err(why)) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {why}\n"),
                        )
                            .into_response(),
                        Err(_) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: the readiness check did not answer in 3 s\n".to_owned(),
                        )
                            .into_response(),
                    }
                }
            }),
        )
        .fallback(not_found)
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        "not found: this admin endpoint serves GET /metrics, /healthz and /readyz\n",
    )
        .into_response()
}

/// Binds `addr` for the admin endpoints.
pub async fn bind(addr: SocketAddr) -> std::io::Result<crate::http::Incoming> {
    crate::http::bind(addr, LIMITS).await
}

/// Serves the endpoints on `incoming` until `stop` turns true.
pub async fn serve(
    incoming: crate::http::Incoming,
    addr: SocketAddr,
    admin: Admin,
    stop: watch::Receiver<bool>,
) {
    info!(%addr, "admin endpoints listening (/metrics, /healthz, /readyz)");
    crate::http::serve(incoming, None, router(admin), stop).await;
}
