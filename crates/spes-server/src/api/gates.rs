//! Human gates: the inbox and decisions.

use axum::Json;
use axum::extract::{Extension, Path, State};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use spes_engine::ops::{self, Decision};
use spes_engine::view::{self, GateList, GateView};
use spes_store::RunId;
use utoipa::ToSchema;

use super::Body;
use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};

/// Applies the deadlines that passed (of `run`, or of every run) and
/// continues here the runs they decided that no worker takes.
pub(crate) async fn deadlines(s: &AppState, run: Option<&RunId>) -> Result<(), ApiError> {
    for f in ops::apply_deadlines(s.store.as_ref(), run, Utc::now()).await? {
        if !s.exec.queued(&f.run).await {
            s.exec.spawn_resume(f.run);
        }
    }
    Ok(())
}

/// Gates waiting for a human, across runs, oldest first.
#[utoipa::path(get, path = "/v1/gates", tag = "gates",
    security(("bearer" = [])),
    responses((status = 200, description = "Open gates", body = GateList)))]
pub async fn pending_gates(State(s): State<AppState>) -> Result<Json<GateList>, ApiError> {
    deadlines(&s, None).await?;
    let gates = ops::pending(s.store.as_ref(), None, Utc::now()).await?;
    Ok(Json(GateList {
        schema: view::VERSION,
        gates: gates.iter().map(GateView::of).collect(),
    }))
}

/// `POST /v1/runs/{run}/decisions`: a human's answer at a gate.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum DecideRequest {
    /// Approve (approval and section gates; the first variation at a choose gate).
    Approve {
        /// The gate (its key, or the end of it) when the run has several open.
        #[serde(default)]
        gate: Option<String>,
        /// Recorded with the approval.
        #[serde(default)]
        comments: String,
    },
    /// Reject, saying why.
    Reject {
        /// The gate, when the run has several open.
        #[serde(default)]
        gate: Option<String>,
        /// Why (recorded).
        reason: String,
    },
    /// Ask for a revision (approval and section gates that allow one).
    Revise {
        /// The gate, when the run has several open.
        #[serde(default)]
        gate: Option<String>,
        /// What should change.
        comments: String,
        /// Suggested changes.
        #[serde(default)]
        suggest: String,
    },
    /// Pick variation `n` (from 1) at a choose gate.
    Choose {
        /// The gate, when the run has several open.
        #[serde(default)]
        gate: Option<String>,
        /// The variation, from 1.
        n: u64,
    },
}

impl DecideRequest {
    fn split(self) -> (Option<String>, Decision) {
        match self {
            Self::Approve { gate, comments } => (gate, Decision::Approve { comments }),
            Self::Reject { gate, reason } => (gate, Decision::Reject { reason }),
            Self::Revise {
                gate,
                comments,
                suggest,
            } => (gate, Decision::Revise { comments, suggest }),
            Self::Choose { gate, n } => (gate, Decision::Choose { n }),
        }
    }
}

/// A decision that was recorded.
#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionRecorded {
    /// The version of this shape: 1 (`spes_engine::view::VERSION`).
    pub schema: u32,
    /// The run.
    pub run_id: String,
    /// The gate answered.
    pub gate: String,
    /// Who decided: the token's name.
    pub by: String,
    /// Whether workers continue the run (else this server does).
    pub queued: bool,
}

/// Answers a gate; the reviewer recorded is the token's name. The run
/// then continues (here, or by the workers of a shared store).
#[utoipa::path(post, path = "/v1/runs/{run}/decisions", tag = "gates", request_body = DecideRequest,
    params(("run" = String, Path, description = "Run id or unique prefix")),
    security(("bearer" = [])),
    responses((status = 200, description = "Recorded", body = DecisionRecorded),
              (status = 404, description = "No such run", body = ErrorBody),
              (status = 409, description = "The gate is decided or closed, or does not take this answer", body = ErrorBody)))]
pub async fn decide(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(run): Path<String>,
    Body(req): Body<DecideRequest>,
) -> Result<Json<DecisionRecorded>, ApiError> {
    let r = s.store.find_run(&run).await?;
    deadlines(&s, Some(&r.id)).await?;
    let (gate, decision) = req.split();
    let rec = ops::decide(
        &s.store,
        &r.id.to_string(),
        gate.as_deref(),
        &decision,
        &caller.name,
        Utc::now(),
    )
    .await?;
    if !rec.queued {
        s.exec.spawn_resume(rec.run);
    }
    Ok(Json(DecisionRecorded {
        schema: view::VERSION,
        run_id: rec.run.to_string(),
        gate: rec.gate,
        by: caller.name,
        queued: rec.queued,
    }))
}
