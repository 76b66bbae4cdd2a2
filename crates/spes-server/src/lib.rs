//! spes HTTP API: runs, human gates, workflows and components, over axum.
//!
//! The server is a front door like the CLI: handlers parse, call
//! `spes_engine` (its operations in [`spes_engine::ops`], its engine) and
//! answer with the same shapes the CLI prints with `--json`
//! ([`spes_engine::view`]). The project's files are read through
//! [`Project`], which the `spes` binary implements with the same loading
//! and validation as its commands, so an input `spes run` refuses is
//! refused here with the same diagnostics.
//!
//! [`router`] builds the whole API; [`AppState::new`] takes the store, the
//! project and the [`auth::Auth`] built from `[server.tokens]`. Runs
//! started through the API execute in this process ([`exec`]) on a store
//! without a work queue (SQLite), and are queued for the workers on one
//! with a queue (PostgreSQL), as `spes run --detach` does.
//!
//! Routes (`/v1/openapi.json` describes them; docs/FORMAT.md, "spes serve"):
//!
//! | route | role |
//! |---|---|
//! | `GET /healthz`, `GET /readyz`, `GET /metrics` | none |
//! | `GET /v1/...` (runs, gates, their event streams, workflows, components, openapi.json) | viewer |
//! | `POST /v1/runs/{run}/decisions` | approver |
//! | `POST /v1/runs`, `POST /v1/runs/{run}/{pause,resume,cancel,fork}` | operator |

#![warn(missing_docs)]

pub mod api;
pub mod auth;
pub mod dashboard;
pub mod error;
pub mod events;
pub mod exec;
pub mod metrics;
pub mod openapi;
pub mod session;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;
use spes_core::Diagnostics;
use spes_core::component::ComponentRegistry;
use spes_core::config::Role;
use spes_core::workflow::Workflow;
use spes_engine::{Engine, WorkflowSource};
use spes_store::RunStore;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::auth::{Auth, Caller};
use crate::error::ApiError;

/// Largest request body read (1 MiB); a larger one is answered 413.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// A workflow file, loaded and validated.
#[derive(Debug)]
pub struct Loaded {
    /// The validated workflow.
    pub workflow: Workflow,
    /// Warnings found while validating.
    pub warnings: Diagnostics,
    /// The text that was validated, as a run pins it.
    pub source: WorkflowSource,
}

/// What the server needs of the project it serves. The `spes` binary
/// implements it with the functions its commands use, so the server loads,
/// validates and checks exactly as `spes run` does.
pub trait Project: Send + Sync + 'static {
    /// The workflow files the server offers (`[server] workflows`).
    fn workflow_files(&self) -> Vec<PathBuf>;
    /// Loads and validates a workflow file.
    fn load(&self, file: &Path) -> Result<Loaded, Diagnostics>;
    /// The checks `spes run` makes on inputs before binding them (a
    /// required input given as blank text is refused).
    fn check_inputs(
        &self,
        wf: &Workflow,
        inputs: &BTreeMap<String, Value>,
    ) -> Result<(), Diagnostics>;
    /// An engine with every configured provider; `provider` is the default
    /// one (a run's pinned provider), else the project's default.
    fn engine(&self, provider: Option<&str>) -> Result<Engine, String>;
    /// The project's components, and the problems loading them.
    fn components(&self) -> (ComponentRegistry, Diagnostics);
}

/// Everything a handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub(crate) store: Arc<dyn RunStore>,
    pub(crate) project: Arc<dyn Project>,
    pub(crate) auth: Arc<Auth>,
    pub(crate) exec: exec::Executor,
    pub(crate) streams: Arc<tokio::sync::Semaphore>,
    pub(crate) sessions: Arc<session::Sessions>,
    pub(crate) hub: Arc<events::Hub>,
    pub(crate) metrics: spes_engine::metrics::Metrics,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("store", &self.store.describe())
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// The state of a server over `store`, serving `project`.
    pub fn new(store: Arc<dyn RunStore>, project: Arc<dyn Project>, auth: Auth) -> Self {
        let hub = Arc::new(events::Hub::default());
        let exec = exec::Executor::new(store.clone(), project.clone(), hub.clone());
        Self {
            store,
            project,
            auth: Arc::new(auth),
            exec,
            streams: Arc::new(tokio::sync::Semaphore::new(events::MAX_STREAMS)),
            sessions: Arc::new(session::Sessions::default()),
            hub,
            metrics: spes_engine::metrics::Metrics::global().clone(),
        }
    }

    /// This state serving `metrics` at `/metrics` instead of the
    /// process's registry (engines must feed the same one).
    #[must_use]
    pub fn with_metrics(mut self, metrics: spes_engine::metrics::Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Runs executing in this process, and the deadline timer.
    #[must_use]
    pub fn executor(&self) -> &exec::Executor {
        &self.exec
    }
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let read = Router::new()
        .route("/v1/openapi.json", get(openapi::document))
        .route("/v1/runs", get(api::list_runs))
        .route("/v1/runs/{run}", get(api::show_run))
        .route("/v1/runs/{run}/events", get(events::run_events))
        .route("/v1/runs/{run}/prompts", get(api::run_prompts))
        .route("/v1/gates", get(api::pending_gates))
        .route("/v1/gates/events", get(events::gate_events))
        .route("/v1/workflows", get(api::list_workflows))
        .route("/v1/workflows/{name}", get(api::show_workflow))
        .route("/v1/components", get(api::list_components))
        .route("/v1/components/{kind}/{name}", get(api::show_component))
        .route(
            "/v1/session",
            get(session::whoami).delete(session::sign_out),
        )
        .route_layer(middleware::from_fn_with_state(
            (state.clone(), Role::Viewer),
            authorize,
        ));
    let decide = Router::new()
        .route("/v1/runs/{run}/decisions", post(api::decide))
        .route_layer(middleware::from_fn_with_state(
            (state.clone(), Role::Approver),
            authorize,
        ));
    let operate = Router::new()
        .route("/v1/runs", post(api::start_run))
        .route("/v1/runs/{run}/pause", post(api::pause_run))
        .route("/v1/runs/{run}/resume", post(api::resume_run))
        .route("/v1/runs/{run}/cancel", post(api::cancel_run))
        .route("/v1/runs/{run}/fork", post(api::fork_run))
        .route_layer(middleware::from_fn_with_state(
            (state.clone(), Role::Operator),
            authorize,
        ));
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/session", post(session::sign_in))
        .merge(dashboard::routes())
        .merge(read)
        .merge(decide)
        .merge(operate)
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
                 connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
                 frame-ancestors 'none'",
            ),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .with_state(state)
}

/// Why a request to a server without tokens is refused: a `Host` or an
/// `Origin` header that names anything but this machine's loopback.
fn foreign_request(headers: &axum::http::HeaderMap) -> Option<String> {
    let text = |name| headers.get(name).map(|v| v.to_str().unwrap_or("?"));
    if let Some(host) = text(header::HOST)
        && !loopback_authority(host)
    {
        return Some(format!(
            "this server has no access tokens and answers only requests to a loopback name (localhost, 127.0.0.1, [::1]), not `{host}`; configure [server.tokens] to serve other names"
        ));
    }
    if let Some(origin) = text(header::ORIGIN) {
        let host = origin.split_once("://").map(|(_, rest)| rest);
        if !host.is_some_and(loopback_authority) {
            return Some(format!(
                "this server has no access tokens and refuses requests from web pages of another origin (`{origin}`); configure [server.tokens] to let a page call it"
            ));
        }
    }
    None
}

/// `localhost`, a loopback IP (`127.0.0.1`, `[::1]`), with or without a port.
fn loopback_authority(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or("", |(h, _)| h),
        None => authority.split(':').next().unwrap_or(""),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Lets the request through when its caller may act as `need`: 401
/// without a known token or session, 403 with a role too low (or, for a
/// state-changing request made with the session cookie, without the
/// session's CSRF token or from another origin). The caller goes into the
/// request's extensions (decisions record its name).
async fn authorize(
    State((state, need)): State<(AppState, Role)>,
    mut req: Request,
    next: Next,
) -> Response {
    let headers = req.headers();
    // With no tokens, anything on this machine may call, but no web page:
    // a page elsewhere can send a form to 127.0.0.1 (CSRF) or rebind its
    // own name to it (DNS rebinding). Browsers name both in `Origin` and
    // `Host`; other clients send loopback names or none.
    if !state.auth.needs_token()
        && let Some(why) = foreign_request(headers)
    {
        return ApiError::forbidden(why).into_response();
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let mut csrf = None;
    let caller = if bearer.is_some() || !state.auth.needs_token() {
        state.auth.caller(bearer).ok_or(if bearer.is_some() {
            "the token is not valid"
        } else {
            "this route needs a token: Authorization: Bearer TOKEN"
        })
    } else if let Some(id) = session::cookie(headers, session::COOKIE) {
        match state.sessions.find(id) {
            Some(found) => {
                let safe = req.method().is_safe();
                if !safe && !session::same_origin(headers) {
                    return ApiError::forbidden(
                        "a page of another origin cannot act with this session",
                    )
                    .into_response();
                }
                let presented = headers
                    .get(session::CSRF_HEADER)
                    .and_then(|v| v.to_str().ok());
                if !safe && !session::csrf_matches(&found.csrf, presented) {
                    return ApiError::new(
                        axum::http::StatusCode::FORBIDDEN,
                        "csrf",
                        "this request needs the session's CSRF token in X-CSRF-Token (GET /v1/session returns it)",
                    )
                    .into_response();
                }
                csrf = Some(session::SessionCsrf(found.csrf));
                Ok(found.caller)
            }
            None => Err("the session has ended; sign in again"),
        }
    } else {
        Err("this route needs a token (Authorization: Bearer TOKEN) or a signed-in session")
    };
    let caller = match caller {
        Ok(c) => c,
        Err(why) => return ApiError::unauthorized(why).into_response(),
    };
    if caller.role < need {
        return ApiError::forbidden(format!(
            "token `{}` is a {}; this needs an {}",
            caller.name,
            caller.role.as_str(),
            need.as_str()
        ))
        .into_response();
    }
    req.extensions_mut().insert::<Caller>(caller);
    if let Some(c) = csrf {
        req.extensions_mut().insert(c);
    }
    next.run(req).await
}
