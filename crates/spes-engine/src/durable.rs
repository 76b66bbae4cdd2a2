//! Durable runs: start, resume and replay a workflow against a [`RunStore`].
//!
//! A run pins the hash of its workflow file and of every component it
//! resolved. `resume` re-executes the workflow from the top: recorded
//! effects answer from the journal, so finished model calls are never
//! repeated and the output is identical. If the workflow or a component
//! changed, `resume` refuses and names the first step that differs
//! (unless the caller overrides).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use sha2::{Digest, Sha256};
use spes_core::lifecycle::{self, RunEvent};
use spes_core::workflow::{StepKey, StepKind, Workflow};
use spes_store::{ComponentPin, NewRun, Run, RunId, RunPatch, RunStatus, RunStore};

use crate::journal::{Effect, Journal, JournalError, RecordError, StoreJournal};
use crate::run::{Control, Exec, RunOutcome, Stop};
use crate::{Engine, EngineError, RunError, bind_inputs};

/// The workflow file a run executes.
#[derive(Debug, Clone)]
pub struct WorkflowSource {
    /// Absolute path.
    pub path: String,
    /// Its text.
    pub text: String,
}

impl WorkflowSource {
    /// Hex SHA-256 of the text.
    #[must_use]
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.text.as_bytes()))
    }
}

/// How a run (or one stretch of it) ended.
#[derive(Debug)]
pub enum RunEnd {
    /// Finished.
    Completed(RunOutcome),
    /// Suspended: these gates wait for a human.
    Waiting(Vec<String>),
    /// Paused by a user.
    Paused,
    /// Cancelled by a user.
    Cancelled,
    /// A step failed; `resume` retries from it.
    Failed(EngineError),
}

/// `host:pid` of this process.
#[must_use]
pub fn this_owner() -> String {
    format!("{}:{}", hostname(), std::process::id())
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Whether the process named by `owner` is still alive (only knowable on this host).
#[must_use]
pub fn owner_alive(owner: &str) -> bool {
    let Some((host, pid)) = owner.rsplit_once(':') else {
        return false;
    };
    if host != hostname() {
        // Another machine: assume alive (leases arrive with multi-worker stores).
        return true;
    }
    pid.parse::<u32>()
        .is_ok_and(|p| p == std::process::id() || process_alive(p))
}

/// Whether `/proc` shows process `pid` as alive: a zombie (killed, not yet
/// reaped by its parent) is dead, it will never write again.
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `PID (COMM) STATE ...`; COMM may hold spaces and parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state != "Z" && state != "X"),
        Err(_) => std::path::Path::new(&format!("/proc/{pid}")).exists(),
    }
}

/// Pins of every component the workflow resolved.
#[must_use]
pub fn pins_of(wf: &Workflow) -> Vec<ComponentPin> {
    wf.components
        .iter()
        .map(|c| ComponentPin {
            reference: c.reference(),
            sha256: c.sha256.clone(),
            path: c.path.display().to_string(),
        })
        .chain(wf.children.iter().map(|c| ComponentPin {
            reference: format!("workflow:{}", c.path),
            sha256: c.sha256.clone(),
            path: c.path.clone(),
        }))
        .chain(wf.schemas.iter().map(|c| ComponentPin {
            reference: format!("schema:{}", c.path),
            sha256: c.sha256.clone(),
            path: c.path.clone(),
        }))
        .collect()
}

/// Why a run may not resume on the current files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// What changed.
    pub what: String,
    /// The first step whose behaviour may differ, if one can be named.
    pub first_step: Option<String>,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.first_step {
            Some(s) => write!(f, "{}; the first step that differs is `{s}`", self.what),
            None => f.write_str(&self.what),
        }
    }
}

/// Compares a stored run's pins with the workflow and components as they are now.
#[must_use]
pub fn drift(run: &Run, wf: &Workflow, source: &WorkflowSource) -> Option<Drift> {
    if source.hash() != run.workflow_hash {
        return Some(Drift {
            what: format!(
                "the workflow file {} changed since the run started",
                source.path
            ),
            first_step: first_differing_step(&run.workflow_source, &source.text),
        });
    }
    let now: Vec<ComponentPin> = pins_of(wf);
    let changed: Vec<&ComponentPin> = run.pins.iter().filter(|p| !now.contains(p)).collect();
    if changed.is_empty() {
        return None;
    }
    let names: Vec<String> = changed.iter().map(|p| p.reference.clone()).collect();
    // kind/name of each changed component.
    let bases: Vec<&str> = changed
        .iter()
        .map(|p| p.reference.split('@').next().unwrap_or_default())
        .collect();
    let first_step = wf.walk().into_iter().find_map(|(key, step)| {
        let uses = |agent: &spes_core::workflow::Agent| {
            agent
                .components
                .iter()
                .any(|c| bases.contains(&c.reference().split('@').next().unwrap_or_default()))
        };
        let schema_changed = |l: &spes_core::workflow::LlmStep| {
            l.schema
                .as_ref()
                .and_then(|s| s.file.as_deref())
                .is_some_and(|f| changed.iter().any(|p| p.reference == format!("schema:{f}")))
        };
        let hit = match &step.kind {
            StepKind::Llm(l) => l.agent.as_deref().is_some_and(uses) || schema_changed(l),
            StepKind::Workflow(w) => {
                let file = std::fs::canonicalize(&w.workflow.file)
                    .map_or_else(|_| w.workflow.file.clone(), |p| p.display().to_string());
                changed
                    .iter()
                    .any(|p| p.reference == format!("workflow:{file}"))
                    || w.workflow.children.iter().any(|c| {
                        changed
                            .iter()
                            .any(|p| p.reference == format!("workflow:{}", c.path))
                    })
            }
            StepKind::Parallel(p) => match &p.branches {
                spes_core::workflow::ParallelBranches::Agents { agents, .. } => {
                    agents.iter().any(|a| uses(a))
                }
                spes_core::workflow::ParallelBranches::Steps(_) => false,
            },
            _ => false,
        };
        hit.then_some(key)
    });
    Some(Drift {
        what: if names.iter().all(|n| n.starts_with("schema:")) {
            let files: Vec<&str> = names
                .iter()
                .map(|n| n.trim_start_matches("schema:"))
                .collect();
            format!(
                "the schema file{} {} changed since the run started",
                if files.len() == 1 { "" } else { "s" },
                files.join(", ")
            )
        } else {
            format!(
                "component{} {} changed since the run started",
                if names.len() == 1 { "" } else { "s" },
                names.join(", ")
            )
        },
        first_step,
    })
}

/// The first step (by key) whose YAML differs between two workflow texts.
#[must_use]
pub fn first_differing_step(old: &str, new: &str) -> Option<String> {
    fn steps(v: &Value) -> Vec<Value> {
        v.get("steps")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }
    fn name(v: &Value) -> String {
        v.get("name")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned()
    }
    fn children(v: &Value) -> Vec<(String, Vec<Value>)> {
        let mut out = Vec::new();
        for k in ["steps", "then", "else"] {
            if let Some(a) = v.get(k).and_then(Value::as_array) {
                out.push((
                    if k == "steps" {
                        String::new()
                    } else {
                        k.to_owned()
                    },
                    a.clone(),
                ));
            }
        }
        if let Some(arms) = v.get("branches").and_then(Value::as_array) {
            for (i, arm) in arms.iter().enumerate() {
                let arm_name = arm
                    .get("name")
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("arm{}", i + 1), str::to_owned);
                out.push((
                    arm_name,
                    arm.get("steps")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                ));
            }
        }
        out
    }
    fn shallow(v: &Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "steps" | "then" | "else" | "branches"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
    fn go(prefix: &str, a: &[Value], b: &[Value]) -> Option<String> {
        for i in 0..a.len().max(b.len()) {
            let (x, y) = (a.get(i), b.get(i));
            let key_of = |v: &Value| StepKey::join(prefix, &name(v)).into_string();
            match (x, y) {
                (Some(x), Some(y)) => {
                    if shallow(x) != shallow(y) {
                        return Some(key_of(y));
                    }
                    let key = key_of(y);
                    let (cx, cy) = (children(x), children(y));
                    if cx.len() != cy.len() {
                        return Some(key);
                    }
                    for ((na, sa), (nb, sb)) in cx.iter().zip(cy.iter()) {
                        if na != nb {
                            return Some(key);
                        }
                        let p = if na.is_empty() {
                            key.clone()
                        } else {
                            StepKey::join(&key, na).into_string()
                        };
                        if let Some(k) = go(&p, sa, sb) {
                            return Some(k);
                        }
                    }
                }
                (Some(x), None) => return Some(key_of(x)),
                (None, Some(y)) => return Some(key_of(y)),
                (None, None) => {}
            }
        }
        None
    }
    let old: Value = serde_saphyr::from_str(old).ok()?;
    let new: Value = serde_saphyr::from_str(new).ok()?;
    go("", &steps(&old), &steps(&new))
        .or_else(|| (shallow(&old) != shallow(&new)).then(|| "(workflow header)".to_owned()))
}

/// A journal that answers only from the record and refuses to call a model.
#[derive(Debug)]
struct ReplayJournal(StoreJournal);

#[async_trait]
impl Journal for ReplayJournal {
    fn scope(&self) -> Option<spes_store::RunId> {
        self.0.scope()
    }

    async fn get(&self, key: &str) -> Result<Option<Effect>, JournalError> {
        match self.0.get(key).await? {
            Some(e) => Ok(Some(e)),
            None => Err(JournalError::Mismatch(format!(
                "replay needs an effect at `{key}` that the journal does not have (the workflow or its inputs took a different path)"
            ))),
        }
    }
    async fn peek(&self, key: &str) -> Result<Option<Effect>, JournalError> {
        self.0.get(key).await
    }
    async fn record(&self, key: &str, _effect: Effect) -> Result<Effect, RecordError> {
        Err(JournalError::Mismatch(format!("replay would record a new effect at `{key}`")).into())
    }
}

/// Executes `run`'s workflow again against its journal alone: every effect
/// is answered from it, none is made or recorded (`replay`, `prompts`).
async fn replay_with(
    engine: &Engine,
    store: &Arc<dyn RunStore>,
    run: &Run,
    wf: &Workflow,
) -> Result<Result<crate::RunOutcome, Stop>, RunError> {
    let journal = StoreJournal::open(store.clone(), run.id)
        .await
        .map_err(|e| RunError::Refused(e.to_string()))?;
    let ctx = match &run.inputs {
        Value::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    Ok(
        Exec::new(engine, ctx, Arc::new(ReplayJournal(journal)), None)
            .run_workflow(wf)
            .await,
    )
}

/// What `replay` found.
#[derive(Debug)]
pub struct Replay {
    /// The replayed output.
    pub output: Option<Value>,
    /// The output the run recorded.
    pub recorded: Option<Value>,
    /// Whether they are identical.
    pub identical: bool,
    /// Effects answered from the journal.
    pub replayed: u64,
    /// The first model call whose recorded request differs from the one
    /// the workflow would send now (a prompt changed since the run).
    pub request_changed: Option<String>,
}

/// A run recorded by [`Engine::begin`] or [`Engine::begin_fork`] and not
/// executed yet: its id, and the span [`Engine::execute_begun`] executes
/// it in (the root of the run's trace, whose context the run recorded).
#[derive(Debug)]
pub struct Begun {
    /// The run.
    pub id: RunId,
    span: crate::telemetry::Span,
}

/// The span of an execution of a stored run in this process: a child of
/// the trace the run was started in, when it stored one.
pub(crate) fn continued_span(
    tracer: &crate::telemetry::Tracer,
    run: &Run,
    wf: &Workflow,
) -> crate::telemetry::Span {
    crate::telemetry::run_span(
        tracer,
        &wf.name,
        Some(&run.id.to_string()),
        run.settings.trace_parent.as_deref(),
    )
}

impl Engine {
    /// Starts a durable run: records it (status running), then executes.
    pub async fn start(
        &self,
        store: Arc<dyn RunStore>,
        wf: &Workflow,
        source: &WorkflowSource,
        inputs: BTreeMap<String, Value>,
    ) -> Result<(RunId, RunEnd), RunError> {
        let (id, ctx, span) = self.record_new(&store, wf, source, inputs).await?;
        let end = self
            .execute(store, id, wf, ctx, self.budget_for(wf), span)
            .await?;
        Ok((id, end))
    }

    /// Binds the inputs and records the run that [`Engine::start`] and
    /// [`Engine::begin`] execute here (running, owned by this process).
    async fn record_new(
        &self,
        store: &Arc<dyn RunStore>,
        wf: &Workflow,
        source: &WorkflowSource,
        inputs: BTreeMap<String, Value>,
    ) -> Result<(RunId, spes_core::template::Context, crate::telemetry::Span), RunError> {
        let ctx = bind_inputs(wf, inputs).map_err(RunError::Input)?;
        let id = RunId::new();
        let (run, span) = self.new_run(id, wf, source, &ctx);
        store.create_run(&run).await?;
        Ok((id, ctx, span))
    }

    /// Records a run as [`Engine::start`] does (running, owned by this
    /// process) without executing it, so that a front door can answer with
    /// its id at once; [`Engine::execute_begun`] then executes it here.
    pub async fn begin(
        &self,
        store: &Arc<dyn RunStore>,
        wf: &Workflow,
        source: &WorkflowSource,
        inputs: BTreeMap<String, Value>,
    ) -> Result<Begun, RunError> {
        let (id, _, span) = self.record_new(store, wf, source, inputs).await?;
        Ok(Begun { id, span })
    }

    /// Executes a run that [`Engine::begin`] or [`Engine::begin_fork`]
    /// recorded in this process (`begun`), with the inputs it was recorded
    /// with. Its span is the one recorded with the run: the root of its
    /// trace, not a child of an empty one.
    pub async fn execute_begun(
        &self,
        store: Arc<dyn RunStore>,
        begun: Begun,
        run: &Run,
        wf: &Workflow,
    ) -> Result<RunEnd, RunError> {
        let ctx = match &run.inputs {
            Value::Object(m) => m.clone(),
            _ => serde_json::Map::new(),
        };
        let budget = self.run_budget(&store, run, wf).await?;
        let span = if begun.id == run.id {
            begun.span
        } else {
            continued_span(&self.tracer, run, wf)
        };
        self.execute(store, run.id, wf, ctx, budget, span).await
    }

    /// The budget `run` executes under: the one recorded at its start (a
    /// run recorded before budgets existed: the workflow's), with this
    /// engine's `--budget` limits over it, recorded when they change it.
    pub(crate) async fn run_budget(
        &self,
        store: &Arc<dyn RunStore>,
        run: &Run,
        wf: &Workflow,
    ) -> Result<Option<spes_core::budget::Budget>, RunError> {
        let recorded = run.settings.budget.or_else(|| self.budget_for(wf));
        let Some(o) = &self.budget_override else {
            return Ok(recorded);
        };
        let b = recorded.unwrap_or_default().overridden_by(o);
        if Some(b) != run.settings.budget {
            let mut settings = run.settings.clone();
            settings.budget = Some(b);
            store.set_settings(&run.id, &settings).await?;
        }
        Ok(Some(b))
    }

    /// Queues a run for the workers of a shared store (`Pending`, its run
    /// task ready), pinned like [`Engine::start`]'s; nothing executes here.
    /// `RunError::Refused` when the store has no work queue.
    pub async fn enqueue(
        &self,
        store: &Arc<dyn RunStore>,
        wf: &Workflow,
        source: &WorkflowSource,
        inputs: BTreeMap<String, Value>,
    ) -> Result<RunId, RunError> {
        let Some(q) = store.queue() else {
            return Err(RunError::Refused(format!(
                "{} has no work queue; workers need a postgres:// store",
                store.describe()
            )));
        };
        let ctx = bind_inputs(wf, inputs).map_err(RunError::Input)?;
        let id = RunId::new();
        let mut run = self.new_record(id, wf, source, &ctx);
        // Nothing executes here: no span now (it would be an empty root).
        // The first traced execution begins the run's trace.
        run.settings.trace_queued = self.tracer.is_enabled();
        run.status = RunStatus::Pending;
        run.owner = None;
        q.create_queued_run(&run).await?;
        Ok(id)
    }

    /// A run of `wf` that this process executes at once, pinned to the
    /// files and settings it starts with, and the span of its trace (its
    /// context stored with the run when traces are exported).
    fn new_run(
        &self,
        id: RunId,
        wf: &Workflow,
        source: &WorkflowSource,
        ctx: &spes_core::template::Context,
    ) -> (NewRun, crate::telemetry::Span) {
        let span = crate::telemetry::run_span(&self.tracer, &wf.name, Some(&id.to_string()), None);
        let mut run = self.new_record(id, wf, source, ctx);
        run.settings.trace_parent = crate::telemetry::traceparent(&span);
        (run, span)
    }

    /// The record of a new run of `wf` (running, owned by this process),
    /// without a trace context.
    fn new_record(
        &self,
        id: RunId,
        wf: &Workflow,
        source: &WorkflowSource,
        ctx: &spes_core::template::Context,
    ) -> NewRun {
        let mut settings = self.run_settings();
        settings.budget = self.budget_for(wf);
        NewRun {
            id,
            workflow_name: wf.name.clone(),
            workflow_path: source.path.clone(),
            workflow_hash: source.hash(),
            workflow_source: source.text.clone(),
            pins: pins_of(wf),
            inputs: Value::Object(ctx.clone()),
            status: RunStatus::Running,
            owner: Some(this_owner()),
            settings,
        }
    }

    /// Whether [`Engine::resume`] would take `run` over now: refused when
    /// its files changed (unless `allow_drift`), when another provider is
    /// asked for, when it is finished or its status takes no resume, and
    /// (`StoreError::Claimed`) while a live process executes it. A front
    /// door that continues the run elsewhere (a spawned task) asks first.
    pub fn resumable(
        &self,
        run: &Run,
        wf: &Workflow,
        source: &WorkflowSource,
        allow_drift: bool,
    ) -> Result<(), RunError> {
        if !allow_drift && let Some(d) = drift(run, wf, source) {
            return Err(RunError::Refused(format!(
                "{d}; resuming could mix old and new behaviour (use --allow-changes to resume anyway)"
            )));
        }
        // The provider the run was started with, unless changes are allowed.
        if let Some(p) = &run.settings.provider
            && *p != self.default_provider
            && !allow_drift
        {
            return Err(RunError::Refused(format!(
                "run {} was started with provider `{p}`, not `{}`; resume it with `--provider {p}`, or pass --allow-changes to use `{}`",
                run.id, self.default_provider, self.default_provider
            )));
        }
        if run.status.is_final() {
            return Err(RunError::Refused(format!(
                "run {} is {}; there is nothing to resume",
                run.id, run.status
            )));
        }
        lifecycle::next(run.status, RunEvent::Resume)
            .map_err(|m| RunError::Refused(format!("run {}: {m}", run.id)))?;
        // A running run may be taken over only once its owner is gone.
        if run.status == RunStatus::Running
            && let Some(o) = &run.owner
            && owner_alive(o)
        {
            return Err(RunError::Store(spes_store::StoreError::Claimed {
                run: run.id.to_string(),
                status: run.status.to_string(),
                owner: Some(o.clone()),
            }));
        }
        Ok(())
    }

    /// Resumes a run that is failed, paused, waiting, pending, or running
    /// under a process that died. `allow_drift` resumes even if the
    /// workflow or a component changed (recorded effects still answer).
    pub async fn resume(
        &self,
        store: Arc<dyn RunStore>,
        run: &Run,
        wf: &Workflow,
        source: &WorkflowSource,
        allow_drift: bool,
    ) -> Result<RunEnd, RunError> {
        self.resumable(run, wf, source, allow_drift)?;
        // Compare-and-set on (status, owner) as read: of two resumes of
        // the same run, one takes it; the other is refused here, before
        // any model call, naming the owner.
        store
            .claim_run(&run.id, run.status, run.owner.as_deref(), &this_owner())
            .await?;
        let ctx = match &run.inputs {
            Value::Object(m) => m.clone(),
            _ => serde_json::Map::new(),
        };
        let budget = self.run_budget(&store, run, wf).await?;
        self.execute(
            store,
            run.id,
            wf,
            ctx,
            budget,
            continued_span(&self.tracer, run, wf),
        )
        .await
    }

    async fn execute(
        &self,
        store: Arc<dyn RunStore>,
        id: RunId,
        wf: &Workflow,
        ctx: spes_core::template::Context,
        budget: Option<spes_core::budget::Budget>,
        span: crate::telemetry::Span,
    ) -> Result<RunEnd, RunError> {
        let journal = StoreJournal::open(store.clone(), id)
            .await
            .map_err(|e| RunError::Refused(e.to_string()))?;
        let control = Control::new(store.clone(), id);
        let mut exec = Exec::new(self, ctx, Arc::new(journal), Some(control));
        if let Some(b) = budget {
            // What the run spent before (resumed): its journal's total.
            let spent = store
                .usage(&[id])
                .await?
                .first()
                .map(|(_, u)| crate::budget::spend_of(u))
                .unwrap_or_default();
            exec.budget = Some(crate::budget::Ledger::local(b, spent));
        }
        exec.span = span.clone();
        let result = exec.run_workflow(wf).await;
        crate::telemetry::done(&span, &result);
        let clear_owner = Some(None);
        Ok(match result {
            Ok(outcome) => {
                store
                    .transition(
                        &id,
                        RunEvent::Complete.from(),
                        RunEvent::Complete.to(),
                        RunPatch {
                            output: Some(outcome.output.clone().unwrap_or(Value::Null)),
                            owner: clear_owner,
                            ..RunPatch::default()
                        },
                    )
                    .await?;
                RunEnd::Completed(outcome)
            }
            Err(Stop::Failed(e) | Stop::Budget(e)) => {
                store
                    .transition(
                        &id,
                        RunEvent::Fail.from(),
                        RunEvent::Fail.to(),
                        RunPatch {
                            error: Some(Some(e.to_string())),
                            owner: clear_owner,
                            ..RunPatch::default()
                        },
                    )
                    .await?;
                RunEnd::Failed(e)
            }
            Err(Stop::Store(e)) => {
                // The store refused a commit: record the failure if it
                // still can (a full disk may take this small update; if
                // not, the run stays `running` under this process, which
                // ends now, so `spes resume` may take it over).
                let _ = store
                    .transition(
                        &id,
                        RunEvent::Fail.from(),
                        RunEvent::Fail.to(),
                        RunPatch {
                            error: Some(Some(e.to_string())),
                            owner: clear_owner,
                            ..RunPatch::default()
                        },
                    )
                    .await;
                RunEnd::Failed(e)
            }
            Err(Stop::Suspended(gates)) => {
                store
                    .transition(
                        &id,
                        RunEvent::Suspend.from(),
                        RunEvent::Suspend.to(),
                        RunPatch {
                            owner: clear_owner,
                            ..RunPatch::default()
                        },
                    )
                    .await?;
                RunEnd::Waiting(gates)
            }
            Err(Stop::Paused) => RunEnd::Paused,
            Err(Stop::Cancelled) => RunEnd::Cancelled,
        })
    }

    /// Forks `run` at step `at` (a top-level step of `wf`, the workflow as
    /// it is now): a new run, pinned to the current files, whose journal
    /// starts with every entry of the steps before `at` (their model
    /// calls, decisions and clock reads answer at once); `at` and what
    /// follows execute anew. `inputs` override the run's inputs by name
    /// (earlier steps keep their recorded answers). Returns the new run.
    pub async fn fork(
        &self,
        store: Arc<dyn RunStore>,
        run: &Run,
        wf: &Workflow,
        source: &WorkflowSource,
        at: &str,
        inputs: BTreeMap<String, Value>,
    ) -> Result<(RunId, RunEnd), RunError> {
        let begun = self.begin_fork(&store, run, wf, source, at, inputs).await?;
        let id = begun.id;
        let forked = store
            .run(&id)
            .await?
            .ok_or_else(|| RunError::Refused(format!("run {id} vanished after it was forked")))?;
        let end = self.execute_begun(store, begun, &forked, wf).await?;
        Ok((id, end))
    }

    /// Records the run [`Engine::fork`] starts, with its copied journal,
    /// without executing it ([`Engine::execute_begun`] does).
    pub async fn begin_fork(
        &self,
        store: &Arc<dyn RunStore>,
        run: &Run,
        wf: &Workflow,
        source: &WorkflowSource,
        at: &str,
        inputs: BTreeMap<String, Value>,
    ) -> Result<Begun, RunError> {
        let Some(idx) = wf.steps.iter().position(|s| s.name == at) else {
            return Err(RunError::Refused(format!(
                "workflow `{}` has no top-level step `{at}`; its steps: {}",
                wf.name,
                wf.steps
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let before: std::collections::HashSet<&str> =
            wf.steps[..idx].iter().map(|s| s.name.as_str()).collect();
        let mut given: BTreeMap<String, Value> = match &run.inputs {
            Value::Object(m) => m.clone().into_iter().collect(),
            _ => BTreeMap::new(),
        };
        given.extend(inputs);
        let ctx = bind_inputs(wf, given).map_err(RunError::Input)?;
        let entries = store.entries(&run.id).await?;
        let id = RunId::new();
        let (record, span) = self.new_run(id, wf, source, &ctx);
        store.create_run(&record).await?;
        for e in entries {
            // A step's entries are keyed by its name, then `/` or `#`.
            let step = e.key.split(['/', '#']).next().unwrap_or(e.key.as_str());
            if before.contains(step) {
                store.append(&id, &e.key, &e.kind, &e.payload).await?;
            }
        }
        Ok(Begun { id, span })
    }

    /// Every model request of `run`, re-rendered by replaying it from its
    /// journal (no model is called), in the order the workflow makes them,
    /// each with the answer the journal holds. An unfinished run stops at
    /// its frontier: the first request the journal does not answer is
    /// included without an answer, none after it.
    pub async fn prompts(
        &self,
        store: Arc<dyn RunStore>,
        run: &Run,
        wf: &Workflow,
    ) -> Result<Vec<crate::view::PromptView>, RunError> {
        use spes_core::message::Role;
        let seen: Arc<std::sync::Mutex<Vec<(String, spes_core::message::ChatRequest)>>> =
            Arc::default();
        let sink = seen.clone();
        let engine = Self {
            providers: self.providers.clone(),
            default_provider: run
                .settings
                .provider
                .clone()
                .unwrap_or_else(|| self.default_provider.clone()),
            default_model: self.default_model.clone(),
            observer: Arc::new(crate::NoObserver),
            stream_deltas: false,
            capture: Some(Arc::new(
                move |key: &str, req: &spes_core::message::ChatRequest| {
                    if let Ok(mut v) = sink.lock() {
                        v.push((key.to_owned(), req.clone()));
                    }
                },
            )),
            reviewer: None,
            clock: self.clock.clone(),
            breakers: self.breakers.clone(),
            retry_defaults: self.retry_defaults.clone(),
            default_repair: self.default_repair,
            http: self.http.clone(),
            tools: self.tools.clone(),
            tool_sources: self.tool_sources.clone(),
            prices: self.prices.clone(),
            cache: None,
            default_budget: None,
            budget_override: None,
            // A preview: its walk is not counted, nor traced.
            metrics: crate::metrics::Metrics::new(),
            tracer: crate::telemetry::Tracer::none(),
        };
        // Goes as far as the journal does; where it ends is not an error here.
        let _ = replay_with(&engine, &store, run, wf).await?;
        let answers: std::collections::HashMap<String, String> = store
            .entries(&run.id)
            .await?
            .into_iter()
            .filter_map(|e| match Effect::from_entry(&e.kind, &e.payload) {
                Ok(Effect::Model { response, .. }) => Some((e.key, response.text)),
                _ => None,
            })
            .collect();
        let seen = seen.lock().map(|v| v.clone()).unwrap_or_default();
        Ok(seen
            .into_iter()
            .map(|(key, req)| crate::view::PromptView {
                answer: answers.get(&key).cloned(),
                key,
                system: req.system,
                messages: req
                    .messages
                    .into_iter()
                    .map(|m| crate::view::MessageView {
                        role: match m.role {
                            Role::User => "user",
                            Role::Assistant => "assistant",
                        }
                        .to_owned(),
                        content: m.content,
                    })
                    .collect(),
            })
            .collect())
    }

    /// Re-executes a finished run from its journal with zero model calls
    /// and reports whether the output is identical.
    pub async fn replay(
        &self,
        store: Arc<dyn RunStore>,
        run: &Run,
        wf: &Workflow,
    ) -> Result<Replay, RunError> {
        if run.status != RunStatus::Completed {
            return Err(RunError::Refused(format!(
                "run {} is {}; only completed runs can be replayed",
                run.id, run.status
            )));
        }
        let outcome = replay_with(self, &store, run, wf).await?;
        match outcome {
            Ok(o) => {
                let identical = o.output.as_ref().unwrap_or(&Value::Null)
                    == run.output.as_ref().unwrap_or(&Value::Null);
                Ok(Replay {
                    identical,
                    output: o.output,
                    recorded: run.output.clone(),
                    replayed: o.replayed,
                    request_changed: o.request_changed,
                })
            }
            Err(Stop::Failed(e) | Stop::Store(e) | Stop::Budget(e)) => Err(RunError::Step(e)),
            Err(Stop::Suspended(g)) => Err(RunError::Refused(format!(
                "replay reached gate `{}`, which the run never decided",
                g.join("`, `")
            ))),
            Err(Stop::Paused | Stop::Cancelled) => {
                Err(RunError::Refused("replay was interrupted".into()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_differing_step_names_nested_steps() {
        let a = "name: w\nsteps:\n  - { name: a, kind: llm, prompt: x }\n  - name: b\n    kind: branch\n    if: \"1\"\n    then:\n      - { name: c, kind: llm, prompt: y }\n";
        let b = a.replace("prompt: y", "prompt: z");
        assert_eq!(first_differing_step(a, &b), Some("b/then/c".to_owned()));
        let c = a.replace("prompt: x", "prompt: q");
        assert_eq!(first_differing_step(a, &c), Some("a".to_owned()));
        assert_eq!(first_differing_step(a, a), None);
        let d = format!("{a}  - {{ name: e, kind: llm, prompt: y }}\n");
        assert_eq!(first_differing_step(a, &d), Some("e".to_owned()));
    }
}
