//! The router without a socket (`router(state).oneshot(request)`), over a
//! real SQLite store; the whole server over HTTP is tested through `spes
//! serve` in spes-cli's `tests/serve.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use spes_server::auth::Auth;
use spes_server::{AppState, router};
use spes_store::RunStore;
use spes_store::sqlite::{SqliteOptions, SqliteStore};
use tower::ServiceExt;

/// A project with no workflow and no component.
mod empty;
use empty::Empty;

async fn state() -> (AppState, Arc<dyn RunStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn RunStore> = Arc::new(
        SqliteStore::open(&dir.path().join("spes.db"), SqliteOptions::default())
            .await
            .unwrap(),
    );
    let auth = Auth::from_config(
        &BTreeMap::new(),
        &|_| None,
        "127.0.0.1:7700".parse().unwrap(),
        "tester",
    )
    .unwrap();
    (
        AppState::new(store.clone(), Arc::new(Empty), auth),
        store,
        dir,
    )
}

async fn get(state: &AppState, path: &str) -> (StatusCode, Value, axum::http::HeaderMap) {
    let resp = router(state.clone())
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        headers,
    )
}

#[tokio::test]
async fn readyz_is_503_with_a_generic_message_once_the_store_is_gone() {
    let (state, store, dir) = state().await;
    let (status, body, headers) = get(&state, "/readyz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ready");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["cache-control"], "no-store");
    store.close().await;
    let (status, body, _) = get(&state, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    let msg = body["error"]["message"].as_str().unwrap();
    assert_eq!(msg, "the run store is unavailable; try again later");
    assert!(!msg.contains(&dir.path().display().to_string()));
    // The process still answers.
    assert_eq!(get(&state, "/healthz").await.0, StatusCode::OK);
    let (status, body, _) = get(&state, "/v1/runs").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
}

#[tokio::test]
async fn an_empty_project_lists_nothing_and_unknown_names_are_404() {
    let (state, _store, _dir) = state().await;
    let (status, body, _) = get(&state, "/v1/workflows").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["workflows"], serde_json::json!([]));
    let (status, body, _) = get(&state, "/v1/workflows/triage").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body["error"]["message"],
        "no workflow `triage` in this project; its workflows: none"
    );
    let (status, body, _) = get(&state, "/v1/runs").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        serde_json::json!({ "schema": 1, "runs": [], "next_cursor": null, "usage": {} })
    );
    let (status, _, _) = get(&state, "/v1/components/persona/x?version=not-a-version").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// Without tokens the server is open to this machine, not to web pages:
/// a request naming another host (DNS rebinding) or coming from a page of
/// another origin (CSRF) is refused; loopback names and plain clients pass.
#[tokio::test]
async fn without_tokens_foreign_hosts_and_origins_are_refused() {
    let (state, _store, _dir) = state().await;
    let call = |host: Option<&'static str>, origin: Option<&'static str>, method: &'static str| {
        let state = state.clone();
        async move {
            let mut req = Request::builder()
                .method(method)
                .uri("/v1/runs/0000abcd/cancel");
            if method == "GET" {
                req = Request::builder().method(method).uri("/v1/runs");
            }
            if let Some(h) = host {
                req = req.header("host", h);
            }
            if let Some(o) = origin {
                req = req.header("origin", o);
            }
            router(state)
                .oneshot(req.body(Body::empty()).unwrap())
                .await
                .unwrap()
                .status()
        }
    };
    // Another name for this machine, or a page elsewhere: refused.
    assert_eq!(
        call(Some("evil.example:7700"), None, "GET").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(Some("127.0.0.1:7700"), Some("http://evil.example"), "POST").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(Some("127.0.0.1:7700"), Some("null"), "POST").await,
        StatusCode::FORBIDDEN
    );
    // Loopback names (and a client that names no host) pass auth; the
    // cancel of an unknown run is then a 404.
    assert_eq!(
        call(Some("127.0.0.1:7700"), None, "GET").await,
        StatusCode::OK
    );
    assert_eq!(
        call(Some("localhost"), Some("http://localhost:7700"), "GET").await,
        StatusCode::OK
    );
    assert_eq!(
        call(Some("[::1]:7700"), Some("http://[::1]:7700"), "POST").await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(call(None, None, "POST").await, StatusCode::NOT_FOUND);
}

/// docs/API.md is the OpenAPI document as Markdown; `SPES_UPDATE_DOCS=1`
/// rewrites it.
#[test]
fn docs_api_md_is_generated_from_the_openapi_document() {
    let want = spes_server::openapi::markdown();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/API.md");
    if std::env::var_os("SPES_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/API.md is not what the OpenAPI document says; run `SPES_UPDATE_DOCS=1 cargo test -p spes-server --test it docs_api_md` and commit it"
    );
    for route in [
        "### `POST /v1/runs/{run}/decisions`",
        "### `GET /v1/runs/{run}/events`",
        "### `POST /v1/session`",
        "### RunShow",
        "### DecideRequest",
    ] {
        assert!(want.contains(route), "{route} missing");
    }
}
