//! One error shape for every route: `{ "error": { "code", "message",
//! "diagnostics"? } }` with its status. Store failures are shown as a
//! generic message and logged in full.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use spes_core::Diagnostics;
use spes_engine::RunError;
use spes_engine::ops::OpError;
use spes_engine::view::DiagnosticView;
use spes_store::StoreError;
use utoipa::ToSchema;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    diagnostics: Option<Vec<DiagnosticView>>,
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable: `unauthorized`, `forbidden`, `csrf`, `not_found`, `bad_request`,
    /// `ambiguous`, `conflict`, `refused`, `busy`, `invalid_input`,
    /// `payload_too_large`, `method_not_allowed`, `unavailable`.
    pub code: String,
    /// What happened, in words.
    pub message: String,
    /// For `invalid_input`: every problem, with its file, line and column
    /// (the diagnostics `spes` prints).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<Vec<DiagnosticView>>,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    #[must_use]
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            diagnostics: None,
        }
    }

    /// 400.
    #[must_use]
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401.
    #[must_use]
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403.
    #[must_use]
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404.
    #[must_use]
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409: the request does not fit the run or gate as it is now.
    #[must_use]
    pub fn refused(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "refused", message)
    }

    /// 422 with the diagnostics of the user's files or inputs.
    #[must_use]
    pub fn invalid(d: &Diagnostics) -> Self {
        let first =
            d.0.iter()
                .find(|x| x.severity == spes_core::Severity::Error)
                .or(d.0.first())
                .map(|x| x.message.clone())
                .unwrap_or_else(|| "invalid input".to_owned());
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid_input",
            message: first,
            diagnostics: Some(d.0.iter().map(DiagnosticView::of).collect()),
        }
    }

    /// 503 for a store that failed; the cause is logged, not shown.
    #[must_use]
    pub fn unavailable(e: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %e, "store error");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the run store is unavailable; try again later",
        )
    }

    /// The status.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(ErrorBody {
                error: ErrorDetail {
                    code: self.code.to_owned(),
                    message: self.message,
                    diagnostics: self.diagnostics,
                },
            }),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::NotFound(m) => Self::not_found(m.clone()),
            StoreError::Ambiguous { .. } => {
                Self::new(StatusCode::BAD_REQUEST, "ambiguous", e.to_string())
            }
            StoreError::Conflict { .. } => {
                Self::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            StoreError::Claimed { .. } => Self::new(
                StatusCode::CONFLICT,
                "busy",
                format!("{e}; it is executed by another process"),
            ),
            _ => Self::unavailable(&e),
        }
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Store(s) => s.into(),
            OpError::Refused(m) => Self::refused(m),
        }
    }
}

impl From<RunError> for ApiError {
    fn from(e: RunError) -> Self {
        match e {
            RunError::Input(m) => Self::invalid(&input_diagnostic(m)),
            RunError::Store(s) => s.into(),
            RunError::Step(s) => Self::refused(s.to_string()),
            other => Self::refused(other.to_string()),
        }
    }
}

/// An input that does not fit the workflow, as `spes run` reports it.
#[must_use]
pub fn input_diagnostic(m: String) -> Diagnostics {
    Diagnostics::from(
        spes_core::Diagnostic::error("spes::input::invalid", m).with_hint(
            "inputs are declared under `inputs:` in the workflow; pass each in `inputs`",
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_their_status_and_hide_internal_causes() {
        let cases = [
            (
                StoreError::NotFound("no run `abcd`".into()),
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                StoreError::Conflict {
                    run: "r".into(),
                    current: "completed".into(),
                    expected: "running".into(),
                },
                StatusCode::CONFLICT,
                "conflict",
            ),
            (
                StoreError::Claimed {
                    run: "r".into(),
                    status: "running".into(),
                    owner: Some("host:1".into()),
                },
                StatusCode::CONFLICT,
                "busy",
            ),
            (
                StoreError::Backend("disk I/O error at /secret/path".into()),
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
            ),
        ];
        for (e, status, code) in cases {
            let a = ApiError::from(e);
            assert_eq!((a.status(), a.code), (status, code));
            assert!(!a.message.contains("/secret/path"), "{}", a.message);
        }
        let refused = ApiError::from(OpError::Refused("gate `g` is closed".into()));
        assert_eq!(
            (refused.status(), refused.code),
            (StatusCode::CONFLICT, "refused")
        );
    }
}
