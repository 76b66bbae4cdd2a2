//! The handlers: parse, call `spes_engine`, answer with a view. Shapes
//! the CLI prints with `--json` come from [`spes_engine::view`]; the few
//! the CLI has no command for (a page of runs, a started run, a workflow)
//! are defined here.

use std::collections::BTreeMap;
use std::path::PathBuf;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, extract::FromRequest};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use spes_core::component::ComponentRef;
use spes_engine::ops::{self, Decision};
use spes_engine::view::{
    self, ComponentList, ComponentShow, ComponentView, DiagnosticView, GateList, GateView, RunShow,
    RunSummary,
};
use spes_store::{GateFilter, Run, RunId, RunQuery, RunStatus};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::{AppState, Loaded};

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

fn query_rejection(e: &QueryRejection) -> ApiError {
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
    Ok(Json(RunPage {
        schema: view::VERSION,
        next_cursor: if more {
            runs.last().map(cursor_of)
        } else {
            None
        },
        runs: runs.iter().map(RunSummary::of).collect(),
    }))
}

/// Applies the deadlines that passed (of `run`, or of every run) and
/// continues here the runs they decided that no worker takes.
async fn deadlines(s: &AppState, run: Option<&RunId>) -> Result<(), ApiError> {
    for f in ops::apply_deadlines(s.store.as_ref(), run, Utc::now()).await? {
        if !s.exec.queued(&f.run).await {
            s.exec.spawn_resume(f.run);
        }
    }
    Ok(())
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

/// The workflow named `name` among the project's workflow files. A file
/// named after it that does not validate answers with its diagnostics.
fn find_workflow(s: &AppState, name: &str) -> Result<Loaded, ApiError> {
    let mut names = Vec::new();
    let mut broken: Option<spes_core::Diagnostics> = None;
    for f in s.project.workflow_files() {
        match s.project.load(&f) {
            Ok(l) if l.workflow.name == name => return Ok(l),
            Ok(l) => names.push(l.workflow.name),
            Err(d) => {
                if f.file_stem().and_then(|x| x.to_str()) == Some(name) {
                    broken = Some(d);
                }
            }
        }
    }
    if let Some(d) = broken {
        return Err(ApiError::invalid(&d));
    }
    names.sort();
    Err(ApiError::not_found(format!(
        "no workflow `{name}` in this project; its workflows: {}",
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    )))
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
        let id = engine
            .begin(&s.store, &loaded.workflow, &loaded.source, inputs)
            .await?;
        let run = s.store.find_run(&id.to_string()).await?;
        let resp = created(&run, false);
        s.exec.spawn_begun(engine, id, loaded.workflow);
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
    let id = engine
        .begin_fork(
            &s.store,
            &r,
            &loaded.workflow,
            &loaded.source,
            &req.at,
            cli_inputs(req.inputs),
        )
        .await?;
    let forked = s.store.find_run(&id.to_string()).await?;
    let resp = created(&forked, false);
    s.exec.spawn_begun(engine, id, loaded.workflow);
    Ok(resp)
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

/// A declared input of a workflow.
#[derive(Debug, Serialize, ToSchema)]
pub struct InputView {
    /// Its name.
    pub name: String,
    /// `string`, `integer`, `number`, `boolean`, `list` or `object`.
    #[serde(rename = "type")]
    pub ty: String,
    /// Must be given.
    pub required: bool,
    /// Used when it is not given.
    pub default: Option<Value>,
    /// What it means.
    pub description: Option<String>,
}

/// A workflow the server offers.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowSummary {
    /// Its name (`POST /v1/runs` takes it).
    pub name: String,
    /// Its file.
    pub file: String,
    /// What it does.
    pub description: Option<String>,
    /// Its steps, nested ones included.
    pub steps: usize,
    /// Its declared inputs, in name order.
    pub inputs: Vec<InputView>,
}

/// `GET /v1/workflows`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowList {
    /// The version of this shape: 1 (`spes_engine::view::VERSION`).
    pub schema: u32,
    /// The workflows that validate, by name.
    pub workflows: Vec<WorkflowSummary>,
    /// Problems of the files that do not validate (they are not offered).
    pub diagnostics: Vec<DiagnosticView>,
}

/// `GET /v1/workflows/{name}`: a workflow with its diagram.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowShow {
    /// The version of this shape: 1 (`spes_engine::view::VERSION`).
    pub schema: u32,
    /// What `GET /v1/workflows` lists of it.
    #[serde(flatten)]
    pub workflow: WorkflowSummary,
    /// Its top-level steps, in order (`fork` takes one).
    pub top_steps: Vec<String>,
    /// The components it uses (`kind/name@version`).
    pub components: Vec<String>,
    /// `spes workflow diagram --format mermaid`.
    pub mermaid: String,
}

fn summary(l: &Loaded) -> WorkflowSummary {
    let wf = &l.workflow;
    WorkflowSummary {
        name: wf.name.clone(),
        file: wf.file.clone(),
        description: wf.description.clone(),
        steps: wf.walk().len(),
        inputs: wf
            .inputs
            .iter()
            .map(|i| InputView {
                name: i.name.clone(),
                ty: i.ty.as_str().to_owned(),
                required: i.required,
                default: i.default.clone(),
                description: i.description.clone(),
            })
            .collect(),
    }
}

/// The project's workflows (`[server] workflows`).
#[utoipa::path(get, path = "/v1/workflows", tag = "workflows",
    security(("bearer" = [])),
    responses((status = 200, description = "The workflows", body = WorkflowList)))]
pub async fn list_workflows(State(s): State<AppState>) -> Json<WorkflowList> {
    let mut workflows = Vec::new();
    let mut diagnostics = Vec::new();
    let files: Vec<PathBuf> = s.project.workflow_files();
    for f in files {
        match s.project.load(&f) {
            Ok(l) => workflows.push(summary(&l)),
            Err(d) => diagnostics.extend(d.0.iter().map(DiagnosticView::of)),
        }
    }
    workflows.sort_by(|a, b| a.name.cmp(&b.name));
    Json(WorkflowList {
        schema: view::VERSION,
        workflows,
        diagnostics,
    })
}

/// A workflow, with its Mermaid diagram.
#[utoipa::path(get, path = "/v1/workflows/{name}", tag = "workflows",
    params(("name" = String, Path, description = "The workflow's name")),
    security(("bearer" = [])),
    responses((status = 200, description = "The workflow", body = WorkflowShow),
              (status = 404, description = "No such workflow", body = ErrorBody),
              (status = 422, description = "Its file does not validate", body = ErrorBody)))]
pub async fn show_workflow(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<WorkflowShow>, ApiError> {
    let l = find_workflow(&s, &name)?;
    Ok(Json(WorkflowShow {
        schema: view::VERSION,
        workflow: summary(&l),
        top_steps: l.workflow.steps.iter().map(|x| x.name.clone()).collect(),
        components: l
            .workflow
            .components
            .iter()
            .map(|c| c.reference())
            .collect(),
        mermaid: spes_core::workflow::diagram::mermaid(&l.workflow),
    }))
}

/// Filter of `GET /v1/components`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ComponentsParams {
    /// Only this kind.
    pub kind: Option<String>,
}

/// The project's components (`spes components list --json`).
#[utoipa::path(get, path = "/v1/components", tag = "components", params(ComponentsParams),
    security(("bearer" = [])),
    responses((status = 200, description = "The components", body = ComponentList)))]
pub async fn list_components(
    State(s): State<AppState>,
    q: Result<Query<ComponentsParams>, QueryRejection>,
) -> Result<Json<ComponentList>, ApiError> {
    let Query(p) = q.map_err(|e| query_rejection(&e))?;
    let (reg, _) = s.project.components();
    Ok(Json(ComponentList {
        schema: view::VERSION,
        components: reg
            .list()
            .filter(|c| p.kind.as_ref().is_none_or(|k| &c.kind == k))
            .map(ComponentView::of)
            .collect(),
    }))
}

/// Version requirement of `GET /v1/components/{kind}/{name}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ComponentParams {
    /// A semver requirement (`^1.2`) or an exact version (`1.2.0`); default: the newest.
    pub version: Option<String>,
}

/// One component with its variables and text (`spes components show --json`).
#[utoipa::path(get, path = "/v1/components/{kind}/{name}", tag = "components",
    params(("kind" = String, Path, description = "persona, instruction, ..."),
           ("name" = String, Path, description = "The component's name"),
           ComponentParams),
    security(("bearer" = [])),
    responses((status = 200, description = "The component", body = ComponentShow),
              (status = 400, description = "Not a component reference", body = ErrorBody),
              (status = 404, description = "No such component", body = ErrorBody)))]
pub async fn show_component(
    State(s): State<AppState>,
    Path((kind, name)): Path<(String, String)>,
    q: Result<Query<ComponentParams>, QueryRejection>,
) -> Result<Json<ComponentShow>, ApiError> {
    let Query(p) = q.map_err(|e| query_rejection(&e))?;
    let text = match &p.version {
        Some(v) => format!("{kind}/{name}@{v}"),
        None => format!("{kind}/{name}"),
    };
    let r = ComponentRef::parse(&text).map_err(|e| {
        ApiError::bad_request(format!("`{text}` is not a component reference: {e}"))
    })?;
    let (reg, _) = s.project.components();
    let c = reg
        .resolve(&r)
        .map_err(|d| ApiError::not_found(d.message))?;
    Ok(Json(ComponentShow::of(c)))
}
