//! Runs: list (filters, keyset pages), show, start, pause, cancel, resume, fork.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use spes_engine::ops;
use spes_engine::view::{self, RunShow, RunSummary};
use spes_store::{GateFilter, Run, RunId, RunQuery, RunStatus};
use utoipa::{IntoParams, ToSchema};

use super::catalog::find_workflow;
use super::gates::deadlines;
use super::{Body, query_rejection};
use crate::AppState;
use crate::error::{ApiError, ErrorBody};

/// Filters and position of `GET /v1/runs`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RunsParams {
    /// Only runs with this stored status: pending, running, waiting, paused, completed, failed, cancelled.
    pub status: Option<String>,
    /// Only runs of the workflow with this name.
    pub workflow: Option<String>,
    /// Only runs created at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Only runs created before this time (RFC 3339).
    pub until: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// At most this many (default 50, at most 500).
    pub limit: Option<u32>,
}

/// A page of runs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunPage {
    /// The version of this shape: 1 (`spes_engine::view::VERSION`).
    pub schema: u32,
    /// Newest first, as `runs list --json` lists them.
    pub runs: Vec<RunSummary>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
    /// Tokens and model calls of the listed runs that made any, by run id
    /// (summed over each journal's model entries).
    #[schema(value_type = Object)]
    pub usage: std::collections::BTreeMap<String, RunUsageView>,
}

/// What a run's model calls used.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunUsageView {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Answer tokens.
    pub output_tokens: u64,
    /// Model calls journaled.
    pub model_calls: u64,
}

fn time_param(name: &str, v: Option<&String>) -> Result<Option<DateTime<Utc>>, ApiError> {
    v.map(|t| {
        DateTime::parse_from_rfc3339(t)
            .map(|d| d.with_timezone(&Utc))
            .map_err(|e| ApiError::bad_request(format!("`{name}` must be an RFC 3339 time: {e}")))
    })
    .transpose()
}

fn cursor_of(r: &Run) -> String {
    format!("{}_{}", r.created_at.timestamp_micros(), r.id)
}

fn parse_cursor(c: &str) -> Result<(DateTime<Utc>, RunId), ApiError> {
    let bad = || ApiError::bad_request("`cursor` is not a cursor this server gave");
    let (t, id) = c.split_once('_').ok_or_else(bad)?;
    let t = t
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(bad)?;
    Ok((t, id.parse::<RunId>().map_err(|_| bad())?))
}

/// Lists runs, newest first, with filters and keyset pagination.
#[utoipa::path(get, path = "/v1/runs", tag = "runs", params(RunsParams),
    security(("bearer" = [])),
    responses((status = 200, description = "A page of runs", body = RunPage),
              (status = 400, description = "A bad filter or cursor", body = ErrorBody)))]
pub async fn list_runs(
    State(s): State<AppState>,
    q: Result<Query<RunsParams>, QueryRejection>,
) -> Result<Json<RunPage>, ApiError> {
    let Query(p) = q.map_err(|e| query_rejection(&e))?;
    let limit = p.limit.unwrap_or(50).clamp(1, 500);
    let query = RunQuery {
        status: p
            .status
            .as_deref()
            .map(str::parse::<RunStatus>)
            .transpose()
            .map_err(ApiError::bad_request)?,
        workflow: p.workflow.clone(),
        since: time_param("since", p.since.as_ref())?,
        until: time_param("until", p.until.as_ref())?,
        after: p.cursor.as_deref().map(parse_cursor).transpose()?,
        limit: limit + 1,
    };
    let mut runs = s.store.query_runs(&query).await?;
    let more = runs.len() > limit as usize;
    runs.truncate(limit as usize);
    let ids: Vec<RunId> = runs.iter().map(|r| r.id).collect();
    // Usage is a convenience: a journal it cannot sum does not fail the list.
    let usage = match s.store.usage(&ids).await {
        Ok(u) => u
            .into_iter()
            .map(|(id, u)| {
                (
                    id.to_string(),
                    RunUsageView {
                        input_tokens: u.input_tokens,
                        output_tokens: u.output_tokens,
                        model_calls: u.model_calls,
                    },
                )
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot sum the listed runs' usage");
            std::collections::BTreeMap::new()
        }
    };
    Ok(Json(RunPage {
        usage,
        schema: view::VERSION,
        next_cursor: if more {
            runs.last().map(cursor_of)
        } else {
            None
        },
        runs: runs.iter().map(RunSummary::of).collect(),
    }))
}

/// A run: its details, journal (every prompt and answer) and gates.
#[utoipa::path(get, path = "/v1/runs/{run}", tag = "runs",
    params(("run" = String, Path, description = "Run id, or a unique prefix of at least 4 characters")),
    security(("bearer" = [])),
    responses((status = 200, description = "The run", body = RunShow),
              (status = 404, description = "No such run", body = ErrorBody),
              (status = 400, description = "An ambiguous prefix", body = ErrorBody)))]
pub async fn show_run(
    State(s): State<AppState>,
    Path(run): Path<String>,
) -> Result<Json<RunShow>, ApiError> {
    let r = s.store.find_run(&run).await?;
    deadlines(&s, Some(&r.id)).await?;
    let r = s.store.find_run(&run).await?;
    let entries = s.store.entries(&r.id).await?;
    let gates = s
        .store
        .gates(&GateFilter {
            run_id: Some(r.id),
            pending_only: false,
        })
        .await?;
    Ok(Json(RunShow::of(&r, &entries, &gates)))
}

/// `POST /v1/runs`: a run of a workflow of the project.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// The workflow's name (`GET /v1/workflows` lists them).
    pub workflow: String,
    /// Inputs by name. Text is taken as `spes run --input NAME=TEXT`
    /// takes it; any other JSON value as its JSON text.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub inputs: serde_json::Map<String, Value>,
    /// The provider of steps and agents that name none (`--provider`).
    #[serde(default)]
    pub provider: Option<String>,
}

/// A run that was started (or forked).
#[derive(Debug, Serialize, ToSchema)]
pub struct RunStarted {
    /// The version of this shape: 1 (`spes_engine::view::VERSION`).
    pub schema: u32,
    /// The run as `runs list` shows it.
    pub run: RunSummary,
    /// Whether workers execute it (a store with a work queue); else this server does.
    pub queued: bool,
}

/// Inputs as `spes run --input` gives them: text as it is, any other JSON
/// value as its JSON text (`bind_inputs` converts and checks them).
fn cli_inputs(given: serde_json::Map<String, Value>) -> BTreeMap<String, Value> {
    given
        .into_iter()
        .map(|(k, v)| match v {
            Value::String(t) => (k, Value::String(t)),
            other => (k, Value::String(other.to_string())),
        })
        .collect()
}

fn created(run: &Run, queued: bool) -> Response {
    let mut r = (
        StatusCode::CREATED,
        Json(RunStarted {
            schema: view::VERSION,
            run: RunSummary::of(run),
            queued,
        }),
    )
        .into_response();
    if let Ok(v) = header::HeaderValue::from_str(&format!("/v1/runs/{}", run.id)) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// Starts a run: executed by this server, or queued for the workers of a
/// shared store. Inputs are checked as `spes run` checks them.
#[utoipa::path(post, path = "/v1/runs", tag = "runs", request_body = StartRequest,
    security(("bearer" = [])),
    responses((status = 201, description = "Started (or queued)", body = RunStarted),
              (status = 404, description = "No such workflow", body = ErrorBody),
              (status = 422, description = "The inputs or the workflow file do not validate; `diagnostics` has each problem with file, line and column", body = ErrorBody)))]
pub async fn start_run(
    State(s): State<AppState>,
    Body(req): Body<StartRequest>,
) -> Result<Response, ApiError> {
    let loaded = find_workflow(&s, &req.workflow)?;
    let inputs = cli_inputs(req.inputs);
    s.project
        .check_inputs(&loaded.workflow, &inputs)
        .map_err(|d| ApiError::invalid(&d))?;
    let engine = s
        .project
        .engine(req.provider.as_deref())
        .map_err(ApiError::bad_request)?;
    let queued = s.store.queue().is_some();
    let id = if queued {
        engine
            .enqueue(&s.store, &loaded.workflow, &loaded.source, inputs)
            .await?
    } else {
        let begun = engine
            .begin(&s.store, &loaded.workflow, &loaded.source, inputs)
            .await?;
        let run = s.store.find_run(&begun.id.to_string()).await?;
        let resp = created(&run, false);
        s.exec.spawn_begun(engine, begun, loaded.workflow);
        return Ok(resp);
    };
    let run = s.store.find_run(&id.to_string()).await?;
    Ok(created(&run, queued))
}

/// What a pause, resume or cancel did.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunChanged {
    /// The version of this shape: 1 (`spes_engine::view::VERSION`).
    pub schema: u32,
    /// The run now.
    pub run: RunSummary,
    /// Gates a cancel closed.
    pub closed: Vec<String>,
    /// For a resume: whether workers continue it (else this server does).
    pub queued: bool,
}

fn changed(c: &ops::Changed) -> Json<RunChanged> {
    Json(RunChanged {
        schema: view::VERSION,
        run: RunSummary::of(&c.after),
        closed: c.closed.clone(),
        queued: false,
    })
}

/// Pauses a run: it stops before its next model call.
#[utoipa::path(post, path = "/v1/runs/{run}/pause", tag = "runs",
    params(("run" = String, Path, description = "Run id or unique prefix")),
    security(("bearer" = [])),
    responses((status = 200, description = "Paused", body = RunChanged),
              (status = 404, description = "No such run", body = ErrorBody),
              (status = 409, description = "Its status does not allow a pause", body = ErrorBody)))]
pub async fn pause_run(
    State(s): State<AppState>,
    Path(run): Path<String>,
) -> Result<Json<RunChanged>, ApiError> {
    Ok(changed(&ops::pause(s.store.as_ref(), &run).await?))
}

/// Cancels a run for good and closes its open gates.
#[utoipa::path(post, path = "/v1/runs/{run}/cancel", tag = "runs",
    params(("run" = String, Path, description = "Run id or unique prefix")),
    security(("bearer" = [])),
    responses((status = 200, description = "Cancelled", body = RunChanged),
              (status = 404, description = "No such run", body = ErrorBody),
              (status = 409, description = "Its status does not allow a cancel", body = ErrorBody)))]
pub async fn cancel_run(
    State(s): State<AppState>,
    Path(run): Path<String>,
) -> Result<Json<RunChanged>, ApiError> {
    Ok(changed(&ops::cancel(s.store.as_ref(), &run).await?))
}

/// Continues a failed, paused or waiting run from its journal: queued
/// again for the workers when they executed it, else here.
#[utoipa::path(post, path = "/v1/runs/{run}/resume", tag = "runs",
    params(("run" = String, Path, description = "Run id or unique prefix")),
    security(("bearer" = [])),
    responses((status = 202, description = "Continuing", body = RunChanged),
              (status = 404, description = "No such run", body = ErrorBody),
              (status = 409, description = "Finished, executed elsewhere, or its files changed", body = ErrorBody)))]
pub async fn resume_run(
    State(s): State<AppState>,
    Path(run): Path<String>,
) -> Result<Response, ApiError> {
    let r = s.store.find_run(&run).await?;
    deadlines(&s, Some(&r.id)).await?;
    let r = s.store.find_run(&run).await?;
    let queued = ops::requeue(s.store.as_ref(), &r).await?;
    if !queued {
        let loaded = s
            .project
            .load(std::path::Path::new(&r.workflow_path))
            .map_err(|d| ApiError::invalid(&d))?;
        let engine = s
            .project
            .engine(r.settings.provider.as_deref())
            .map_err(ApiError::bad_request)?;
        engine.resumable(&r, &loaded.workflow, &loaded.source, false)?;
        s.exec.spawn_resume(r.id);
    }
    let now = s.store.find_run(&r.id.to_string()).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(RunChanged {
            schema: view::VERSION,
            run: RunSummary::of(&now),
            closed: Vec::new(),
            queued,
        }),
    )
        .into_response())
}

/// `POST /v1/runs/{run}/fork`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkRequest {
    /// The top-level step to execute again (and everything after it).
    pub at: String,
    /// Inputs to change, by name (the others are the run's); as in `POST /v1/runs`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub inputs: serde_json::Map<String, Value>,
}

/// Starts a new run from a run's journal up to a step (`spes runs fork`);
/// it executes in this server.
#[utoipa::path(post, path = "/v1/runs/{run}/fork", tag = "runs", request_body = ForkRequest,
    params(("run" = String, Path, description = "Run id or unique prefix")),
    security(("bearer" = [])),
    responses((status = 201, description = "The new run", body = RunStarted),
              (status = 404, description = "No such run", body = ErrorBody),
              (status = 409, description = "No such step", body = ErrorBody),
              (status = 422, description = "Inputs or files that do not validate", body = ErrorBody)))]
pub async fn fork_run(
    State(s): State<AppState>,
    Path(run): Path<String>,
    Body(req): Body<ForkRequest>,
) -> Result<Response, ApiError> {
    let r = s.store.find_run(&run).await?;
    let loaded = s
        .project
        .load(std::path::Path::new(&r.workflow_path))
        .map_err(|d| ApiError::invalid(&d))?;
    let engine = s
        .project
        .engine(r.settings.provider.as_deref())
        .map_err(ApiError::bad_request)?;
    let begun = engine
        .begin_fork(
            &s.store,
            &r,
            &loaded.workflow,
            &loaded.source,
            &req.at,
            cli_inputs(req.inputs),
        )
        .await?;
    let forked = s.store.find_run(&begun.id.to_string()).await?;
    let resp = created(&forked, false);
    s.exec.spawn_begun(engine, begun, loaded.workflow);
    Ok(resp)
}

/// `GET /v1/runs/{run}/prompts`: the run's model requests, re-rendered.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunPrompts {
    /// The version of this shape: 1 (`spes_engine::view::VERSION`).
    pub schema: u32,
    /// Set when the workflow file changed since the run started: the
    /// prompts are then rendered by the current files.
    pub note: Option<String>,
    /// Every request the journal lets the workflow make again, in order,
    /// with its journaled answer.
    pub prompts: Vec<view::PromptView>,
}

/// Every prompt the run sent and the answer it got, re-rendered by
/// replaying the run from its journal (no model is called), as `spes runs
/// show --prompts` prints them.
#[utoipa::path(get, path = "/v1/runs/{run}/prompts", tag = "runs",
    params(("run" = String, Path, description = "Run id or unique prefix")),
    security(("bearer" = [])),
    responses((status = 200, description = "The prompts and answers", body = RunPrompts),
              (status = 404, description = "No such run", body = ErrorBody),
              (status = 422, description = "The run's workflow file does not load now", body = ErrorBody)))]
pub async fn run_prompts(
    State(s): State<AppState>,
    Path(run): Path<String>,
) -> Result<Json<RunPrompts>, ApiError> {
    let r = s.store.find_run(&run).await?;
    let loaded = s
        .project
        .load(std::path::Path::new(&r.workflow_path))
        .map_err(|d| ApiError::invalid(&d))?;
    let note = spes_engine::durable::drift(&r, &loaded.workflow, &loaded.source)
        .map(|d| format!("{d}; the prompts are rendered by the current files"));
    let engine = s
        .project
        .engine(r.settings.provider.as_deref())
        .map_err(ApiError::refused)?;
    let prompts = engine
        .prompts(s.store.clone(), &r, &loaded.workflow)
        .await?;
    Ok(Json(RunPrompts {
        schema: view::VERSION,
        note,
        prompts,
    }))
}
