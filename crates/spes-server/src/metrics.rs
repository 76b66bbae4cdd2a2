//! `GET /metrics`: the process's Prometheus metrics
//! ([`spes_engine::metrics`]) in the OpenMetrics text format, with the
//! runs by status and the work queue's depth read from the store at each
//! scrape.
//!
//! Like `/healthz` and `/readyz`, it needs no token, so that a Prometheus
//! server can scrape it as it is: it carries counts, durations, provider,
//! model and breaker names, step kinds and statuses; never a run's id,
//! inputs, prompts, answers, or any token or key.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use spes_engine::metrics::{CONTENT_TYPE, Metrics};
use spes_store::RunStore;

/// The process's metrics, in the OpenMetrics text format.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus metrics (OpenMetrics text): model calls, tokens, cost, provider errors, steps, runs by status, queue depth, claims, lease losses, breaker states",
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String)))]
pub async fn metrics(State(s): State<crate::AppState>) -> Response {
    render(&s.metrics, &s.store).await
}

async fn render(metrics: &Metrics, store: &Arc<dyn RunStore>) -> Response {
    let text = metrics.render(Some(store.as_ref())).await;
    let mut resp = text.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    resp
}

/// A router serving only `GET /metrics` (and `GET /healthz`), for
/// processes without the API (`spes worker --metrics-addr`).
pub fn router(metrics: Metrics, store: Arc<dyn RunStore>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State((m, s)): State<(Metrics, Arc<dyn RunStore>)>| async move {
                render(&m, &s).await
            }),
        )
        .route("/healthz", get(crate::api::healthz))
        .with_state((metrics, store))
}
