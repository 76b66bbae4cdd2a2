//! What front doors print and serve: one typed, documented shape per
//! answer (the CLI's `--json`, later the HTTP API), each with a `schema`
//! version field, and their JSON Schemas ([`schemas`]; generated into
//! `docs/schemas/` and checked by the CLI's tests).
//!
//! The shapes are built here from engine and store values, so that every
//! front door says the same thing the same way: a run's shown status, an
//! error's class, a gate as a reviewer sees it.

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::{EngineError, RunEnd};

/// The version of every shape in this module; raised when a field changes
/// meaning or goes away (a new field does not raise it).
pub const VERSION: u32 = 1;

/// Where a run stands, as shown: the stored status, except that a run
/// marked running whose owner is gone shows as `interrupted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ShownStatus {
    /// Created, not started (queued for a worker).
    Pending,
    /// Being executed.
    Running,
    /// Marked running, but its executor stopped (Ctrl-C, kill, crash).
    Interrupted,
    /// Stopped at gates that wait for a human.
    Waiting,
    /// Paused by a user.
    Paused,
    /// Finished.
    Completed,
    /// A step failed; `resume` continues from it.
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

impl ShownStatus {
    /// How `run` shows: its stored status, except that a run marked
    /// running whose owner is gone (none, or a process on this machine
    /// that is not alive) is `interrupted`. An owner on another machine is
    /// taken to be alive.
    #[must_use]
    pub fn of(run: &spes_store::Run) -> Self {
        use spes_store::RunStatus as S;
        match run.status {
            S::Running => match &run.owner {
                Some(o) if crate::durable::owner_alive(o) => Self::Running,
                _ => Self::Interrupted,
            },
            S::Pending => Self::Pending,
            S::Waiting => Self::Waiting,
            S::Paused => Self::Paused,
            S::Completed => Self::Completed,
            S::Failed => Self::Failed,
            S::Cancelled => Self::Cancelled,
        }
    }

    /// Its name (`interrupted`, `completed`, ...).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Interrupted => "interrupted",
            Self::Waiting => "waiting",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// How a run ended (or stopped), as `run`, `resume` and `runs fork` print
/// it with `--json`: the same fields in every outcome, `null` where they
/// do not apply.
#[derive(Debug, Clone, Serialize, JsonSchema, utoipa::ToSchema)]
#[schemars(deny_unknown_fields)]
pub struct RunDoc {
    /// The version of this shape: 1 (`spes_engine::view::VERSION`).
    pub schema: u32,
    /// The run's id (`null` when the run was not stored).
    pub run_id: Option<String>,
    /// `completed`, `failed`, `waiting`, `paused` or `cancelled`.
    pub status: ShownStatus,
    /// The workflow's result (`null` unless completed).
    pub output: Value,
    /// Tokens and calls (`null` unless completed).
    pub usage: Option<UsageView>,
    /// The gates the run waits at (empty unless waiting).
    pub gates: Vec<String>,
    /// Why it failed (`null` unless failed).
    pub error: Option<ErrorView>,
    /// The final context: inputs and every step's output (`null` unless completed).
    pub context: Option<Map<String, Value>>,
}

/// Tokens and model calls of a run's execution.
#[derive(Debug, Clone, Serialize, JsonSchema, utoipa::ToSchema)]
#[schemars(deny_unknown_fields)]
pub struct UsageView {
    /// Prompt tokens of the calls made.
    pub input_tokens: u64,
    /// Answer tokens of the calls made.
    pub output_tokens: u64,
    /// Model calls made (not answered from the journal).
    pub model_calls: u64,
    /// Model calls answered from the journal.
    pub replayed: u64,
    /// Model calls answered from the response cache.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached: u64,
    /// US dollars of the calls made, where their models have a price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A step's failure.
#[derive(Debug, Clone, Serialize, JsonSchema, utoipa::ToSchema)]
#[schemars(deny_unknown_fields)]
pub struct ErrorView {
    /// The step's key.
    pub step: String,
    /// What happened.
    pub message: String,
    /// `store` (the journal could not be written or read), `transient`
    /// (worth resuming as it is) or `terminal` (fix the cause first).
    pub class: ErrorClassView,
    /// What to do about it.
    pub hint: Option<String>,
}

/// The class of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClassView {
    /// The store failed.
    Store,
    /// Worth trying again as it is.
    Transient,
    /// Fix the cause first.
    Terminal,
    /// The run's budget would have been exceeded by the next model call.
    BudgetExceeded,
}

impl ErrorView {
    /// The view of `e`.
    #[must_use]
    pub fn of(e: &EngineError) -> Self {
        Self {
            step: e.step.clone(),
            message: e.to_string(),
            class: if e.is_store() {
                ErrorClassView::Store
            } else if e.is_budget() {
                ErrorClassView::BudgetExceeded
            } else if e.class() == spes_llm::ErrorClass::Transient {
                ErrorClassView::Transient
            } else {
                ErrorClassView::Terminal
            },
            hint: e.hint(),
        }
    }
}

impl RunDoc {
    /// The document for run `id` (if stored) that ended with `end`.
    #[must_use]
    pub fn of(id: Option<spes_store::RunId>, end: &RunEnd) -> Self {
        let mut doc = Self {
            schema: VERSION,
            run_id: id.map(|i| i.to_string()),
            status: ShownStatus::Completed,
            output: Value::Null,
            usage: None,
            gates: Vec::new(),
            error: None,
            context: None,
        };
        match end {
            RunEnd::Completed(o) => {
                doc.output = o.output.clone().unwrap_or(Value::Null);
                doc.usage = Some(UsageView {
                    input_tokens: o.usage.input_tokens,
                    output_tokens: o.usage.output_tokens,
                    model_calls: o.model_calls,
                    replayed: o.replayed,
                    cached: o.cached,
                    cost_usd: o.cost_usd,
                });
                doc.context = Some(o.context.clone());
            }
            RunEnd::Failed(e) => {
                doc.status = ShownStatus::Failed;
                doc.error = Some(ErrorView::of(e));
            }
            RunEnd::Waiting(g) => {
                doc.status = ShownStatus::Waiting;
                doc.gates.clone_from(g);
            }
            RunEnd::Paused => doc.status = ShownStatus::Paused,
            RunEnd::Cancelled => doc.status = ShownStatus::Cancelled,
        }
        doc
    }
}

/// A run as `runs list` lists it.
#[derive(Debug, Clone, Serialize, JsonSchema, utoipa::ToSchema)]
#[schemars(deny_unknown_fields)]
pub struct RunSummary {
    /// The run's id (32 hex digits).
    pub id: String,
    /// Where it stands.
    pub status: ShownStatus,
    /// The workflow's name.
    pub workflow: String,
    /// The workflow file it was started from.
    pub workflow_path: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// Its last failure, if any.
    pub error: Option<String>,
}

impl RunSummary {
    /// The summary of `r`.
    #[must_use]
    pub fn of(r: &spes_store::Run) -> Self {
        Self {
            id: r.id.to_string(),
            status: ShownStatus::of(r),
            workflow: r.workflow_name.clone(),
            workflow_path: r.workflow_path.clone(),
            created_at: r.created_at.to_rfc3339(),
            updated_at: r.updated_at.to_rfc3339(),
            error: r.error.clone(),
        }
    }
}

/// `runs list --json`.
#[derive(Debug, Clone, Serialize, JsonSchema, utoipa::ToSchema)]
#[schemars(deny_unknown_fields)]
pub struct RunList {
    /// The version of this shape: 1 (`spes_engine::view::VERSION`).
    pub schema: u32,
    /// Newest first.
    pub runs: Vec<RunSummary>,
}

/// A gate, open or decided.
#[derive(Debug, Clone, Serialize, JsonSchema, utoipa::ToSchema)]
#[schemars(deny_unknown_fields)]
pub struct GateView {
    /// The run it belongs to.
    pub run_id: String,
    /// The gate's step key.
    pub key: String,
    /// `approval`, `choose` or `sections`.
    pub kind: String,
    /// RFC 3339.
    pub opened_at: String,
    /// RFC 3339, when it has one.
    pub deadline: Option<String>,
    /// What the reviewer is shown (the text, the options, the sections).
    pub request: Value,
    /// The decision, once made (`by` names who made it).
    pub decision: Option<Value>,
    /// RFC 3339, once decided.
    pub decided_at: Option<String>,
}

impl GateView {
    /// The view of `g`.
    #[must_use]
    pub fn of(g: &spes_store::Gate) -> Self {
        Self {
            run_id: g.run_id.to_string(),
            key: g.key.clone(),
            kind: g.kind.clone(),
            opened_at: g.opened_at.to_rfc3339(),
            deadline: g.deadline.map(|d| d.to_rfc3339()),
            request: g.request.clone(),
            decision: g.decision.clone(),
            decided_at: g.decided_at.map(|d| d.to_rfc3339()),
        }
    }
}

/// `runs pending --json`.
#[derive(Debug, Clone, Serialize, JsonSchema, utoipa::ToSchema)]
#[schemars(deny_unknown_fields)]
pub struct GateList {
    /// The version of this shape: 1 (`spes_engine::view::VERSION`).
    pub schema: u32,
    /// Oldest first.
    pub gates: Vec<GateView>,
}

/// A run with everything it was started with.
#[derive(Debug, Clone, Serialize, JsonSchema, utoipa::ToSchema)]
#[schemars(deny_unknown_fields)]
pub struct RunDetail {
    /// The run's id.
    pub id: String,
    /// Where it stands.
    pub status: ShownStatus,
    /// The workflow's name.
    pub workflow: String,
    /// The workflow file.
    pub workflow_path: String,
    /// SHA-256 of the workflow text the run was started with.
    pub workflow_hash: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// Its last failure, if any.
    pub error: Option<String>,
    /// The inputs it was started with.
    pub inputs: Value,
    /// The result, once completed.
    pub output: Value,
    /// Who executes it (`host:pid`), if anyone.
    pub owner: Option<String>,
    /// The provider it was pinned to (`--provider`), if any.
    pub provider: Option<String>,
    /// The components and schema files it was started with.
    pub pins: Vec<PinView>,
}

/// A file a run was started with.
#[derive(Debug, Clone, Serialize, JsonSchema, utoipa::ToSchema)]
#[schemars(deny_unknown_fields)]
pub struct PinView {
    /// `kind/name@version` (or `schema PATH`).
    pub reference: String,
    /// Hex SHA-256 of the file.
    pub sha256: String,
    /// The file.
    pub path: String,
}

/// One journal entry.
#[derive(Debug, Clone, Serialize, JsonSchema, utoipa::ToSchema)]
#[schemars(deny_unknown_fields)]
pub struct EntryView {
    /// Order of recording, from 1.
    pub seq: i64,
    /// The step key.
    pub key: String,
    /// `model`, `decision`, `item`, ...
    pub kind: String,
    /// RFC 3339.
    pub recorded_at: String,
    /// What was recorded.
    pub payload: Value,
}

/// `runs show --json`: the run, its journal and its gates.
#[derive(Debug, Clone, Serialize, JsonSchema, utoipa::ToSchema)]
#[schemars(deny_unknown_fields)]
pub struct RunShow {
    /// The version of this shape: 1 (`spes_engine::view::VERSION`).
    pub schema: u32,
    /// The run.
    pub run: RunDetail,
    /// Its journal, in order.
    pub entries: Vec<EntryView>,
    /// Its gates, open and decided.
    pub gates: Vec<GateView>,
}

impl RunShow {
    /// The document for `r` with its journal and gates.
    #[must_use]
    pub fn of(
        r: &spes_store::Run,
        entries: &[spes_store::Entry],
        gates: &[spes_store::Gate],
    ) -> Self {
        let s = RunSummary::of(r);
        Self {
            schema: VERSION,
            run: RunDetail {
                id: s.id,
                status: s.status,
                workflow: s.workflow,
                workflow_path: s.workflow_path,
                workflow_hash: r.workflow_hash.clone(),
                created_at: s.created_at,
                updated_at: s.updated_at,
                error: s.error,
                inputs: r.inputs.clone(),
                output: r.output.clone().unwrap_or(Value::Null),
                owner: r.owner.clone(),
                provider: r.settings.provider.clone(),
                pins: r
                    .pins
                    .iter()
                    .map(|p| PinView {
                        reference: p.reference.clone(),
                        sha256: p.sha256.clone(),
                        path: p.path.clone(),
                    })
                    .collect(),
            },
            entries: entries
                .iter()
                .map(|e| EntryView {
                    seq: e.seq,
                    key: e.key.clone(),
                    kind: e.kind.clone(),
                    recorded_at: e.recorded_at.to_rfc3339(),
                    payload: e.payload.clone(),
                })
                .collect(),
            gates: gates.iter().map(GateView::of).collect(),
        }
    }
}

/// A model request of a run, re-rendered from its journal.
#[derive(Debug, Clone, Serialize, JsonSchema, utoipa::ToSchema)]
#[schemars(deny_unknown_fields)]
pub struct PromptView {
    /// The step key the request was made at.
    pub key: String,
    /// The system text (persona, instruction, output format), if any.
    pub system: Option<String>,
    /// The conversation sent.
    pub messages: Vec<MessageView>,
    /// The answer the journal holds for it, if any.
    pub answer: Option<String>,
}

/// One message of a request.
#[derive(Debug, Clone, Serialize, JsonSchema, utoipa::ToSchema)]
#[schemars(deny_unknown_fields)]
pub struct MessageView {
    /// `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// A problem found in a file.
#[derive(Debug, Clone, Serialize, JsonSchema, utoipa::ToSchema)]
#[schemars(deny_unknown_fields)]
pub struct DiagnosticView {
    /// `error` or `warning`.
    pub severity: Severity,
    /// A stable code (`spes::workflow::unknown_field`, ...).
    pub code: String,
    /// What is wrong.
    pub message: String,
    /// What to do.
    pub hint: Option<String>,
    /// The file, when the problem is in one.
    pub file: Option<String>,
    /// 1-based, when known.
    pub line: Option<usize>,
    /// 1-based, when known.
    pub column: Option<usize>,
    /// What the location points at.
    pub label: Option<String>,
}

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The file cannot be used.
    Error,
    /// The file can be used; something looks wrong.
    Warning,
}

impl DiagnosticView {
    /// The view of `d`.
    #[must_use]
    pub fn of(d: &spes_core::Diagnostic) -> Self {
        Self {
            severity: match d.severity {
                spes_core::diagnostic::Severity::Error => Severity::Error,
                spes_core::diagnostic::Severity::Warning => Severity::Warning,
            },
            code: d.code.to_owned(),
            message: d.message.clone(),
            hint: d.hint.clone(),
            file: d.file.clone(),
            line: d.line_col.map(|(l, _)| l),
            column: d.line_col.map(|(_, c)| c),
            label: d.label.clone(),
        }
    }
}

/// A workflow file that validated.
#[derive(Debug, Clone, Serialize, JsonSchema, utoipa::ToSchema)]
#[schemars(deny_unknown_fields)]
pub struct ValidWorkflow {
    /// The file as given.
    pub file: String,
    /// The workflow's name.
    pub name: String,
    /// Its steps, nested ones included.
    pub steps: usize,
}

/// `workflow validate --json`.
#[derive(Debug, Clone, Serialize, JsonSchema, utoipa::ToSchema)]
#[schemars(deny_unknown_fields)]
pub struct ValidateDoc {
    /// The version of this shape: 1 (`spes_engine::view::VERSION`).
    pub schema: u32,
    /// No file has an error.
    pub valid: bool,
    /// The files that validated.
    pub workflows: Vec<ValidWorkflow>,
    /// Every error and warning, in file order.
    pub diagnostics: Vec<DiagnosticView>,
}

/// A component as listed.
#[derive(Debug, Clone, Serialize, JsonSchema, utoipa::ToSchema)]
#[schemars(deny_unknown_fields)]
pub struct ComponentView {
    /// `kind/name@version`.
    pub reference: String,
    /// `persona`, `instruction`, `format`, `example`, ...
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Semantic version.
    pub version: String,
    /// What it is for.
    pub description: String,
    /// Its file.
    pub file: String,
    /// Free tags.
    pub tags: Vec<String>,
}

impl ComponentView {
    /// The view of `c`.
    #[must_use]
    pub fn of(c: &spes_core::component::Component) -> Self {
        Self {
            reference: c.reference(),
            kind: c.kind.clone(),
            name: c.name.clone(),
            version: c.version.to_string(),
            description: c.description.clone(),
            file: c.path.display().to_string(),
            tags: c.tags.clone(),
        }
    }
}

/// `components list --json`.
#[derive(Debug, Clone, Serialize, JsonSchema, utoipa::ToSchema)]
#[schemars(deny_unknown_fields)]
pub struct ComponentList {
    /// The version of this shape: 1 (`spes_engine::view::VERSION`).
    pub schema: u32,
    /// Sorted by kind, name, version.
    pub components: Vec<ComponentView>,
}

/// A variable a component's body reads.
#[derive(Debug, Clone, Serialize, JsonSchema, utoipa::ToSchema)]
#[schemars(deny_unknown_fields)]
pub struct VariableView {
    /// Its name.
    pub name: String,
    /// Rendering fails without it.
    pub required: bool,
    /// Used when it is not given.
    pub default: Option<String>,
    /// What it means.
    pub description: Option<String>,
}

/// `components show --json`: a component as listed, with its variables and body.
#[derive(Debug, Clone, Serialize, JsonSchema, utoipa::ToSchema)]
#[schemars(deny_unknown_fields)]
pub struct ComponentShow {
    /// The version of this shape: 1 (`spes_engine::view::VERSION`).
    pub schema: u32,
    /// What `components list` shows of it.
    #[serde(flatten)]
    pub component: ComponentView,
    /// The variables its body reads.
    pub variables: Vec<VariableView>,
    /// The template text.
    pub body: String,
}

impl ComponentShow {
    /// The view of `c`.
    #[must_use]
    pub fn of(c: &spes_core::component::Component) -> Self {
        Self {
            schema: VERSION,
            component: ComponentView::of(c),
            variables: c
                .variables
                .iter()
                .map(|x| VariableView {
                    name: x.name.clone(),
                    required: x.required,
                    default: x.default.clone(),
                    description: x.description.clone(),
                })
                .collect(),
            body: c.body.clone(),
        }
    }
}

/// A configured provider and whether it can be used.
#[derive(Debug, Clone, Serialize, JsonSchema, utoipa::ToSchema)]
#[schemars(deny_unknown_fields)]
pub struct ProviderStatus {
    /// Its name in spes.toml.
    pub name: String,
    /// `anthropic`, `openai`, `local` or `scripted`.
    pub kind: String,
    /// It can be used as configured.
    pub ready: bool,
    /// What was checked, or what is wrong (never a key's value).
    pub detail: String,
}

/// `doctor --json`.
#[derive(Debug, Clone, Serialize, JsonSchema, utoipa::ToSchema)]
#[schemars(deny_unknown_fields)]
pub struct DoctorDoc {
    /// The version of this shape: 1 (`spes_engine::view::VERSION`).
    pub schema: u32,
    /// The spes.toml found, if any.
    pub project: Option<String>,
    /// The provider a step without `provider:` uses.
    pub default_provider: String,
    /// Whether that provider can be used.
    pub default_ready: bool,
    /// The store, or why it cannot be used.
    pub store: String,
    /// Every provider.
    pub providers: Vec<ProviderStatus>,
    /// Whether each well-known key variable is set (never its value).
    pub keys_set: std::collections::BTreeMap<String, bool>,
}

/// One recommended pattern.
#[derive(Debug, Clone, Serialize, JsonSchema, utoipa::ToSchema)]
#[schemars(deny_unknown_fields)]
pub struct PickView {
    /// The reference's name for the pattern (`parallel`, `human_in_the_loop`, ...).
    pub pattern: String,
    /// Why it fits.
    pub reason: String,
    /// What to write in a spes workflow.
    pub spes: String,
}

/// `pattern suggest --json`.
#[derive(Debug, Clone, Serialize, JsonSchema, utoipa::ToSchema)]
#[schemars(deny_unknown_fields)]
pub struct SuggestionDoc {
    /// The version of this shape: 1 (`spes_engine::view::VERSION`).
    pub schema: u32,
    /// The pattern the reference's priority order picks.
    pub primary: PickView,
    /// Further patterns the other requirements call for, in priority order.
    pub also: Vec<PickView>,
}

impl SuggestionDoc {
    /// The view of `s`.
    #[must_use]
    pub fn of(s: &spes_core::pattern::Suggestion) -> Self {
        let pick = |p: &spes_core::pattern::Pick| PickView {
            pattern: serde_json::to_value(p.pattern)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            reason: p.reason.to_owned(),
            spes: p.spes.to_owned(),
        };
        Self {
            schema: VERSION,
            primary: pick(&s.primary),
            also: s.also.iter().map(pick).collect(),
        }
    }
}

/// One progress event (`--events`: one JSON object per line on stderr).
#[derive(Debug, Clone, Serialize, JsonSchema, utoipa::ToSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventView {
    /// A step began.
    StepStarted {
        /// The step key.
        key: String,
        /// Its kind.
        kind: String,
        /// Nesting depth (0: a top-level step).
        depth: usize,
    },
    /// A step ended.
    StepFinished {
        /// The step key.
        key: String,
        /// Its kind.
        kind: String,
        /// Nesting depth.
        depth: usize,
        /// Milliseconds it took.
        elapsed_ms: u64,
        /// Why it failed, if it did.
        error: Option<String>,
        /// Provider, model and tokens, or `replayed from journal`, ...
        note: Option<String>,
        /// Tokens of the calls it made.
        usage: Option<TokensView>,
    },
    /// Streamed answer text.
    Delta {
        /// The step key.
        key: String,
        /// The new text.
        text: String,
    },
    /// A failed call will be tried again.
    Retrying {
        /// The step key.
        key: String,
        /// The attempt about to be made (2 for the first retry).
        attempt: u32,
        /// Milliseconds until then.
        delay_ms: u64,
        /// What failed.
        error: String,
    },
    /// A step gave up and its fallback takes over.
    FallingBack {
        /// The step key.
        key: String,
        /// What gave up.
        from: String,
        /// What takes over.
        to: String,
        /// Why.
        error: String,
    },
    /// An agent's tool call finished (or was read from the journal).
    ToolCalled {
        /// The call's journal key (`STEP/turn[N]/call[NAME#K]`).
        key: String,
        /// The tool.
        tool: String,
        /// Its result is an error.
        is_error: bool,
        /// It came from the journal.
        replayed: bool,
    },
}

/// Tokens of a step's calls.
#[derive(Debug, Clone, Serialize, JsonSchema, utoipa::ToSchema)]
#[schemars(deny_unknown_fields)]
pub struct TokensView {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Answer tokens.
    pub output_tokens: u64,
}

impl EventView {
    /// The view of `e`.
    #[must_use]
    pub fn of(e: &crate::Event) -> Self {
        use crate::Event;
        let ms = |d: &std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        match e {
            Event::StepStarted { key, kind, depth } => Self::StepStarted {
                key: key.clone(),
                kind: (*kind).to_owned(),
                depth: *depth,
            },
            Event::StepFinished {
                key,
                kind,
                depth,
                elapsed,
                error,
                note,
                usage,
            } => Self::StepFinished {
                key: key.clone(),
                kind: (*kind).to_owned(),
                depth: *depth,
                elapsed_ms: ms(elapsed),
                error: error.clone(),
                note: note.clone(),
                usage: usage.as_ref().map(|u| TokensView {
                    input_tokens: u.input_tokens,
                    output_tokens: u.output_tokens,
                }),
            },
            Event::Delta { key, text } => Self::Delta {
                key: key.clone(),
                text: text.clone(),
            },
            Event::Retrying {
                key,
                attempt,
                delay,
                error,
            } => Self::Retrying {
                key: key.clone(),
                attempt: *attempt,
                delay_ms: ms(delay),
                error: error.clone(),
            },
            Event::FallingBack {
                key,
                from,
                to,
                error,
            } => Self::FallingBack {
                key: key.clone(),
                from: from.clone(),
                to: to.clone(),
                error: error.clone(),
            },
            Event::ToolCalled {
                key,
                tool,
                is_error,
                replayed,
            } => Self::ToolCalled {
                key: key.clone(),
                tool: tool.clone(),
                is_error: *is_error,
                replayed: *replayed,
            },
        }
    }
}

/// The JSON Schema of every shape, by the name of its file in
/// `docs/schemas/` (without `.json`), in a stable order.
#[must_use]
pub fn schemas() -> Vec<(&'static str, Value)> {
    fn of<T: JsonSchema>() -> Value {
        serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Null)
    }
    vec![
        ("run", of::<RunDoc>()),
        ("runs-list", of::<RunList>()),
        ("runs-show", of::<RunShow>()),
        ("runs-pending", of::<GateList>()),
        ("workflow-validate", of::<ValidateDoc>()),
        ("components-list", of::<ComponentList>()),
        ("components-show", of::<ComponentShow>()),
        ("doctor", of::<DoctorDoc>()),
        ("pattern-suggest", of::<SuggestionDoc>()),
        ("event", of::<EventView>()),
        ("runs-cost", of::<CostReport>()),
        ("cache-stats", of::<CacheStatsDoc>()),
    ]
}

/// `runs cost --json`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CostReport {
    /// The version of this shape: 1 (`spes_engine::view::VERSION`).
    pub schema: u32,
    /// How the calls are grouped: `workflow`, `model` or `day`.
    pub by: String,
    /// Only runs created at or after this time (RFC 3339), when limited.
    pub since: Option<String>,
    /// The groups, largest cost first.
    pub rows: Vec<CostRowView>,
    /// Every group together (its `group` is `total`).
    pub total: CostRowView,
}

/// One group of `runs cost`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CostRowView {
    /// The workflow name, `provider/model` or UTC day.
    pub group: String,
    /// Model calls made (answers served from the cache are not counted).
    pub calls: u64,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Answer tokens.
    pub output_tokens: u64,
    /// US dollars, summed over the calls whose model has a price.
    pub cost_usd: f64,
    /// Calls whose model had no price in spes.toml (their cost is unknown).
    pub unpriced_calls: u64,
}

impl CostReport {
    /// The report of `rows`.
    #[must_use]
    pub fn of(by: &str, since: Option<String>, rows: &[spes_store::CostRow]) -> Self {
        let view = |r: &spes_store::CostRow| CostRowView {
            group: r.group.clone(),
            calls: r.calls,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cost_usd: r.cost_usd,
            unpriced_calls: r.unpriced_calls,
        };
        let mut total = CostRowView {
            group: "total".into(),
            calls: 0,
            input_tokens: 0,
            output_tokens: 0,
            cost_usd: 0.0,
            unpriced_calls: 0,
        };
        for r in rows {
            total.calls += r.calls;
            total.input_tokens += r.input_tokens;
            total.output_tokens += r.output_tokens;
            total.cost_usd += r.cost_usd;
            total.unpriced_calls += r.unpriced_calls;
        }
        Self {
            schema: VERSION,
            by: by.to_owned(),
            since,
            rows: rows.iter().map(view).collect(),
            total,
        }
    }
}

/// `cache stats --json`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CacheStatsDoc {
    /// The version of this shape: 1 (`spes_engine::view::VERSION`).
    pub schema: u32,
    /// Answers stored.
    pub entries: u64,
    /// Times a stored answer was served.
    pub hits: u64,
    /// Bytes of the stored answers.
    pub bytes: u64,
    /// When the oldest answer was stored (RFC 3339).
    pub oldest: Option<String>,
    /// When the newest answer was stored (RFC 3339).
    pub newest: Option<String>,
}

impl CacheStatsDoc {
    /// The document of `s`.
    #[must_use]
    pub fn of(s: &spes_store::CacheStats) -> Self {
        Self {
            schema: VERSION,
            entries: s.entries,
            hits: s.hits,
            bytes: s.bytes,
            oldest: s.oldest.map(|t| t.to_rfc3339()),
            newest: s.newest.map(|t| t.to_rfc3339()),
        }
    }
}
