//! The project's workflows (with their diagram) and components.

use std::path::PathBuf;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use spes_core::component::ComponentRef;
use spes_engine::view::{self, ComponentList, ComponentShow, ComponentView, DiagnosticView};
use utoipa::{IntoParams, ToSchema};

use super::query_rejection;
use crate::error::{ApiError, ErrorBody};
use crate::{AppState, Loaded};

/// The workflow named `name` among the project's workflow files. A file
/// named after it that does not validate answers with its diagnostics.
pub(crate) fn find_workflow(s: &AppState, name: &str) -> Result<Loaded, ApiError> {
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
    /// Hex SHA-256 of the file's text (a run started from it records the
    /// same as `workflow_hash`).
    pub workflow_hash: String,
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
        workflow_hash: l.source.hash(),
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
