//! The OpenAPI 3.1 document, generated from the handlers' annotations and
//! the Rust types of every request and answer.

use axum::Json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api;

/// The API's description.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "spes", description = "Runs, human gates, workflows and components of a spes project."),
    paths(
        api::healthz,
        api::readyz,
        document,
        api::list_runs,
        api::start_run,
        api::show_run,
        api::pause_run,
        api::resume_run,
        api::cancel_run,
        api::fork_run,
        api::decide,
        api::pending_gates,
        crate::events::run_events,
        crate::events::gate_events,
        api::list_workflows,
        api::show_workflow,
        api::list_components,
        api::show_component,
        crate::session::sign_in,
        crate::session::whoami,
        crate::session::sign_out,
    ),
    modifiers(&Bearer),
    tags(
        (name = "runs", description = "Start, list, show, pause, resume, cancel and fork runs"),
        (name = "gates", description = "Gates waiting for a human, and decisions"),
        (name = "workflows", description = "The project's workflows"),
        (name = "components", description = "The project's prompt components"),
        (name = "session", description = "Browser sign-in: a cookie session with a CSRF token"),
        (name = "health", description = "Liveness and readiness"),
    )
)]
pub struct ApiDoc;

#[derive(Debug)]
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(c) = openapi.components.as_mut() {
            c.add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
            c.add_security_scheme(
                "cookie",
                SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                    crate::session::COOKIE,
                    "The dashboard's session (POST /v1/session); POST and DELETE also need X-CSRF-Token",
                ))),
            );
        }
    }
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "health",
    security(("bearer" = [])),
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
