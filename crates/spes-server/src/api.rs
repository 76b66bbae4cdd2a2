//! The handlers: parse, call `spes_engine`, answer with a view. Shapes
//! the CLI prints with `--json` come from [`spes_engine::view`]; the few
//! the CLI has no command for (a page of runs, a started run, a workflow)
//! are defined here.

mod catalog;
mod gates;
mod runs;

pub use catalog::*;
pub use gates::*;
pub use runs::*;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, State};
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};

/// A JSON body; a malformed one is a 400 and one over the limit a 413,
/// both in the API's error shape.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(e) => Err(json_rejection(&e)),
        }
    }
}

fn json_rejection(e: &JsonRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the request body is larger than {} bytes",
                crate::MAX_BODY_BYTES
            ),
        )
    } else {
        ApiError::bad_request(e.body_text())
    }
}

pub(crate) fn query_rejection(e: &QueryRejection) -> ApiError {
    ApiError::bad_request(e.body_text())
}

/// `GET /healthz`, `GET /readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` (the process answers) or `ready` (the store answers too).
    pub status: String,
}

/// The process answers.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process answers", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// The process and its store answer.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, description = "The store answers", body = Health),
              (status = 503, description = "The store does not answer", body = ErrorBody)))]
pub async fn readyz(State(s): State<AppState>) -> Result<Json<Health>, ApiError> {
    s.store
        .list_runs(None, 1)
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    Ok(Json(Health {
        status: "ready".into(),
    }))
}
