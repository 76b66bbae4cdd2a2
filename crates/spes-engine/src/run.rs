//! The interpreter: runs a validated workflow over a run context.
//!
//! Steps return `Result<_, Stop>`: a failure, or a reason to stop early
//! without failing (a human gate to wait for, a pause, a cancel). Effects
//! go through `Exec::call` and `Exec::gate`, which consult the journal
//! first and record before the workflow sees a result.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use serde_json::Value;
use sha2::{Digest, Sha256};
use spes_core::answer::{AnswerSchema, Verdict, Violation, check_answer, repair_prompt};
use spes_core::condition::{Condition, Outcome, parse_yes_no};
use spes_core::message::{ChatRequest, ChatResponse, Message, StopReason, Usage};
use spes_core::template::Context;
use spes_core::workflow::{
    Agent, Format, LlmStep, Loc, ParallelBranches, Step, StepKey, StepKind, Workflow,
};
use spes_llm::{CallContext, Provider};
use spes_store::{RunId, RunStatus, RunStore};

use crate::Engine;
use crate::error::{EngineError, FailureKind};
use crate::event::Event;
use crate::journal::{Effect, Journal};

/// What a finished run produced.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The final context: inputs plus every step output.
    pub context: Context,
    /// The workflow's result (its `output` key, or the last step's output).
    pub output: Option<Value>,
    /// Model calls made (not answered from the journal).
    pub model_calls: u64,
    /// Model calls answered from the journal.
    pub replayed: u64,
    /// Total token usage of calls made.
    pub usage: Usage,
    /// US dollars of the calls made whose model has a price (`None`: no
    /// call had one).
    pub cost_usd: Option<f64>,
    /// Model calls answered from the response cache.
    pub cached: u64,
    /// The first model call (its key) answered from the journal whose
    /// recorded request differs from the one this execution would send
    /// (its prompt, model or settings changed since it was recorded).
    pub request_changed: Option<String>,
}

/// Why a run stopped before its end.
#[derive(Debug)]
pub(crate) enum Stop {
    /// A step failed.
    Failed(EngineError),
    /// The store did not commit a step's journal entry: the run stops,
    /// past every policy (a retry or fallback would pay for calls it
    /// cannot record).
    Store(EngineError),
    /// The run's budget would be exceeded by the next model call: the run
    /// stops, past every policy (another attempt would be refused too).
    Budget(EngineError),
    /// Gates wait for a human (their keys).
    Suspended(Vec<String>),
    /// Someone paused the run.
    Paused,
    /// Someone cancelled the run.
    Cancelled,
}

impl From<EngineError> for Stop {
    fn from(e: EngineError) -> Self {
        Self::Failed(e)
    }
}

impl Stop {
    /// Combines the stops of parallel children: a failure wins, then
    /// cancel, pause, and suspensions add up.
    pub(crate) fn merge(stops: Vec<Self>) -> Option<Self> {
        let mut gates = Vec::new();
        let (mut paused, mut cancelled, mut failed) = (false, false, None);
        let mut store = None;
        let mut budget = None;
        for s in stops {
            match s {
                Self::Store(e) => {
                    if store.is_none() {
                        store = Some(e);
                    }
                }
                Self::Budget(e) => {
                    if budget.is_none() {
                        budget = Some(e);
                    }
                }
                Self::Failed(e) => {
                    if failed.is_none() {
                        failed = Some(e);
                    }
                }
                Self::Suspended(g) => gates.extend(g),
                Self::Paused => paused = true,
                Self::Cancelled => cancelled = true,
            }
        }
        if let Some(e) = store {
            return Some(Self::Store(e));
        }
        if let Some(e) = budget {
            return Some(Self::Budget(e));
        }
        if let Some(e) = failed {
            return Some(Self::Failed(e));
        }
        if cancelled {
            return Some(Self::Cancelled);
        }
        if paused {
            return Some(Self::Paused);
        }
        (!gates.is_empty()).then_some(Self::Suspended(gates))
    }
}

/// A finished parallel branch: its execution and result.
type Branch<'e> = (Exec<'e>, Result<Option<Value>, Stop>);

/// The run this execution belongs to, when it is durable.
#[derive(Debug, Clone)]
pub(crate) struct Control {
    pub(crate) store: Arc<dyn RunStore>,
    pub(crate) run: RunId,
    /// The run's status as last read, and when the read started: read
    /// beside each journal commit, so that the check before the next model
    /// call need not wait for a read of its own.
    seen: Arc<std::sync::Mutex<Option<(RunStatus, std::time::Instant)>>>,
    /// Held while a read is in flight.
    reading: Arc<tokio::sync::Mutex<()>>,
}

/// How old a status reading may be for the check before a model call to
/// use it instead of reading again.
const STATUS_FRESH: std::time::Duration = std::time::Duration::from_millis(10);

impl Control {
    pub(crate) fn new(store: Arc<dyn RunStore>, run: RunId) -> Self {
        Self {
            store,
            run,
            seen: Arc::default(),
            reading: Arc::default(),
        }
    }

    /// Notes a reading of the status made elsewhere (a claim), started at
    /// `at`, unless a newer one is known.
    pub(crate) fn saw(&self, status: RunStatus, at: std::time::Instant) {
        if let Ok(mut seen) = self.seen.lock()
            && seen.is_none_or(|(_, t)| t < at)
        {
            *seen = Some((status, at));
        }
    }

    fn fresh(&self) -> Option<RunStatus> {
        self.seen
            .lock()
            .ok()
            .and_then(|s| *s)
            .filter(|(_, at)| at.elapsed() < STATUS_FRESH)
            .map(|(status, _)| status)
    }

    /// The run's status now: a reading at most [`STATUS_FRESH`] old, or a
    /// new one. Concurrent callers (map items, branches) share one read.
    async fn status(&self) -> Result<Option<RunStatus>, spes_store::StoreError> {
        if let Some(status) = self.fresh() {
            return Ok(Some(status));
        }
        let _one = self.reading.lock().await;
        if let Some(status) = self.fresh() {
            return Ok(Some(status));
        }
        self.read().await
    }

    /// Reads the status unless a read started at or after `since` (when a
    /// model call returned): a pause made while the call was in flight is
    /// then seen by the check before the next call. Commits that finish
    /// together share one read.
    async fn refresh_after(&self, since: std::time::Instant) {
        // The journal commit that just ended read it (SQLite).
        if let Some(status) = self.store.status_read_by_commit(&self.run, since) {
            self.saw(status, since);
            return;
        }
        let _one = self.reading.lock().await;
        let seen = self.seen.lock().ok().and_then(|s| *s);
        if seen.is_none_or(|(_, at)| at < since) {
            let _ = self.read().await;
        }
    }

    async fn read(&self) -> Result<Option<RunStatus>, spes_store::StoreError> {
        let started = std::time::Instant::now();
        let status = self.store.status(&self.run).await?;
        if let (Some(st), Ok(mut seen)) = (status, self.seen.lock()) {
            *seen = Some((st, started));
        }
        Ok(status)
    }
}

pub(crate) struct Exec<'e> {
    pub(crate) engine: &'e Engine,
    pub(crate) journal: Arc<dyn Journal>,
    pub(crate) control: Option<Control>,
    pub(crate) ctx: Context,
    /// Keys this execution wrote, in order (merged back after parallel branches).
    pub(crate) written: Vec<String>,
    pub(crate) model_calls: u64,
    pub(crate) replayed: u64,
    pub(crate) usage: Usage,
    pub(crate) cost_usd: Option<f64>,
    pub(crate) cached: u64,
    /// Map items go to the shared work queue (a run executed by `spes worker`).
    pub(crate) dist: Option<Arc<crate::worker::Dist>>,
    /// Gate decisions made by a deadline seen by this execution (a gate
    /// step's result says `timed_out` when one of its own was).
    pub(crate) deadlines: u32,
    /// The first replayed model call whose request differs from the recorded one.
    pub(crate) changed: Option<String>,
    /// The run's budget, shared by every execution of the run here.
    pub(crate) budget: Option<Arc<crate::budget::Ledger>>,
    /// The trace span this execution is in now (the run's, a step's, a
    /// model or tool call's): the parent of the spans it makes.
    pub(crate) span: crate::telemetry::Span,
}

pub(crate) fn fail(step: &str, loc: &Loc, kind: FailureKind) -> Stop {
    Stop::Failed(EngineError {
        step: step.to_owned(),
        loc: loc.clone(),
        kind,
    })
}

/// The journal holds `found` under `key` where this execution expected an
/// effect of another kind (`expected`: "a model call"): the workflow changed
/// under the run. Terminal.
pub(crate) fn mismatch(key: &str, loc: &Loc, found: &Effect, expected: &str) -> Stop {
    fail(
        key,
        loc,
        FailureKind::Journal(crate::journal::JournalError::Mismatch(format!(
            "the journal holds a {} entry under this key, not {expected}",
            found.kind()
        ))),
    )
}

/// `NAME` under `prefix` ([`StepKey::join`]).
pub(crate) fn join_key(prefix: &str, name: &str) -> String {
    StepKey::join(prefix, name).into_string()
}

/// Adds a cost to a total where either is known.
pub fn add_cost(total: &mut Option<f64>, c: Option<f64>) {
    if let Some(c) = c {
        *total = Some(total.unwrap_or(0.0) + c);
    }
}

pub(crate) fn add_usage(a: &mut Usage, b: &Usage) {
    a.input_tokens += b.input_tokens;
    a.output_tokens += b.output_tokens;
    a.cache_read_tokens += b.cache_read_tokens;
    a.cache_write_tokens += b.cache_write_tokens;
}

/// Result of one step: its value and a note for progress.
pub(crate) struct StepResult {
    pub(crate) value: Option<Value>,
    pub(crate) note: Option<String>,
    pub(crate) usage: Option<Usage>,
}

impl StepResult {
    pub(crate) fn value(value: Option<Value>) -> Self {
        Self {
            value,
            note: None,
            usage: None,
        }
    }
}

impl<'e> Exec<'e> {
    pub(crate) fn new(
        engine: &'e Engine,
        ctx: Context,
        journal: Arc<dyn Journal>,
        control: Option<Control>,
    ) -> Self {
        Self {
            engine,
            journal,
            control,
            ctx,
            written: Vec::new(),
            model_calls: 0,
            replayed: 0,
            usage: Usage::default(),
            cost_usd: None,
            cached: 0,
            dist: None,
            deadlines: 0,
            changed: None,
            budget: None,
            span: crate::telemetry::Span::none(),
        }
    }

    /// A child execution for a parallel branch: same journal, a copy of the context.
    pub(crate) fn fork(&self) -> Self {
        self.fork_with(self.ctx.clone())
    }

    /// A child execution over `ctx`: the same journal, work queue, budget
    /// and current span.
    pub(crate) fn fork_with(&self, ctx: Context) -> Self {
        let mut e = Self::new(self.engine, ctx, self.journal.clone(), self.control.clone());
        e.dist = self.dist.clone();
        // Children spend from the run's budget like every other call.
        e.budget = self.budget.clone();
        e.span = self.span.clone();
        e
    }

    /// Takes a finished child's writes and counters.
    pub(crate) fn absorb(&mut self, child: Exec<'_>) {
        self.count_child(&child);
        for k in child.written {
            if let Some(v) = child.ctx.get(&k) {
                self.write(&k, v.clone());
            }
        }
        if self.changed.is_none() {
            self.changed = child.changed;
        }
    }

    pub(crate) fn write(&mut self, key: &str, v: Value) {
        self.ctx.insert(key.to_owned(), v);
        self.written.push(key.to_owned());
    }

    pub(crate) async fn run_workflow(mut self, wf: &Workflow) -> Result<RunOutcome, Stop> {
        self.steps(&wf.steps, String::new(), 0).await?;
        let output = wf.result_key().and_then(|k| self.ctx.get(k).cloned());
        Ok(RunOutcome {
            context: self.ctx,
            output,
            model_calls: self.model_calls,
            replayed: self.replayed,
            usage: self.usage,
            cost_usd: self.cost_usd,
            cached: self.cached,
            request_changed: self.changed,
        })
    }

    pub(crate) fn steps_at<'a>(
        &'a mut self,
        steps: &'a [Step],
        prefix: String,
        depth: usize,
    ) -> BoxFuture<'a, Result<Option<Value>, Stop>> {
        self.steps(steps, prefix, depth)
    }

    /// Runs a workflow's steps in a context of their own (`ctx`, its bound
    /// inputs), keyed under `key`; its counters are added to this
    /// execution's. (how it ended, its result value.)
    pub(crate) async fn run_child(
        &mut self,
        wf: &Workflow,
        ctx: Context,
        key: &str,
        depth: usize,
    ) -> (Result<Option<Value>, Stop>, Option<Value>) {
        let mut child = Exec::new(self.engine, ctx, self.journal.clone(), self.control.clone());
        child.budget = self.budget.clone();
        child.span = self.span.clone();
        let r = child.steps(&wf.steps, key.to_owned(), depth + 1).await;
        let value = wf.result_key().and_then(|k| child.ctx.get(k).cloned());
        self.count_child(&child);
        (r, value)
    }

    /// Adds a finished child's counters to this execution's.
    pub(crate) fn count_child(&mut self, child: &Exec<'_>) {
        self.model_calls += child.model_calls;
        self.replayed += child.replayed;
        self.cached += child.cached;
        add_usage(&mut self.usage, &child.usage);
        add_cost(&mut self.cost_usd, child.cost_usd);
    }

    pub(crate) fn steps<'a>(
        &'a mut self,
        steps: &'a [Step],
        prefix: String,
        depth: usize,
    ) -> BoxFuture<'a, Result<Option<Value>, Stop>> {
        Box::pin(async move {
            let mut last = None;
            for s in steps {
                last = self.step(s, &prefix, depth).await?;
            }
            Ok(last)
        })
    }

    pub(crate) fn step<'a>(
        &'a mut self,
        s: &'a Step,
        prefix: &'a str,
        depth: usize,
    ) -> BoxFuture<'a, Result<Option<Value>, Stop>> {
        Box::pin(async move {
            let key = join_key(prefix, &s.name);
            let kind = s.kind.name();
            let start = Instant::now();
            self.engine.emit(&Event::StepStarted {
                key: key.clone(),
                kind,
                depth,
            });
            let span = crate::telemetry::step_span(&self.engine.tracer, kind, &key, &self.span);
            let outer = std::mem::replace(&mut self.span, span);
            let result = self.step_inner(s, &key, depth).await;
            let span = std::mem::replace(&mut self.span, outer);
            crate::telemetry::done(&span, &result);
            let elapsed = start.elapsed();
            match result {
                Ok(r) => {
                    if let (Some(out), Some(v)) = (&s.output, &r.value) {
                        self.write(out, v.clone());
                    }
                    self.engine.emit(&Event::StepFinished {
                        key,
                        kind,
                        depth,
                        elapsed,
                        error: None,
                        note: r.note,
                        usage: r.usage,
                    });
                    Ok(r.value)
                }
                Err(stop) => {
                    let (error, note) = match &stop {
                        Stop::Failed(e) | Stop::Store(e) | Stop::Budget(e) => {
                            (Some(e.kind.to_string()), None)
                        }
                        Stop::Suspended(_) => (None, Some("waiting for a human".to_owned())),
                        Stop::Paused => (None, Some("paused".to_owned())),
                        Stop::Cancelled => (None, Some("cancelled".to_owned())),
                    };
                    if error.is_some() || depth == 0 {
                        self.engine.emit(&Event::StepFinished {
                            key,
                            kind,
                            depth,
                            elapsed,
                            error,
                            note,
                            usage: None,
                        });
                    }
                    Err(stop)
                }
            }
        })
    }

    async fn step_inner(&mut self, s: &Step, key: &str, depth: usize) -> Result<StepResult, Stop> {
        if let Some(w) = &s.when
            && !self
                .condition(w, &StepKey::from(key).tag("when"), &s.loc)
                .await?
        {
            return Ok(StepResult {
                value: None,
                note: Some("skipped".into()),
                usage: None,
            });
        }
        if s.policies.is_empty() && self.engine.default_retry(s).is_none() {
            self.step_body(s, key, depth).await
        } else {
            self.with_policies(s, key, depth).await
        }
    }

    /// The step's own work (its `when` already decided).
    pub(crate) async fn step_body(
        &mut self,
        s: &Step,
        key: &str,
        depth: usize,
    ) -> Result<StepResult, Stop> {
        match &s.kind {
            StepKind::Llm(l) => self.llm(l, key, &s.loc).await,
            StepKind::Http(h) => self.http(h, key, &s.loc).await,
            StepKind::Agent(a) => self.agent(a, key, depth, &s.loc).await,
            StepKind::Transform(t) => {
                let input = t
                    .input
                    .eval(&self.ctx, None)
                    .map_err(|e| fail(key, &s.loc, FailureKind::Template(e)))?;
                let v = t.func.apply(input).map_err(|e| {
                    fail(
                        key,
                        &s.loc,
                        FailureKind::Transform(format!("{}: {e}", t.func_name)),
                    )
                })?;
                Ok(StepResult::value(Some(v)))
            }
            StepKind::Sequence(children) => {
                let v = self.steps(children, key.to_owned(), depth + 1).await?;
                Ok(StepResult::value(v))
            }
            StepKind::Branch(b) => {
                let mut taken = None;
                for (i, arm) in b.arms.iter().enumerate() {
                    if self
                        .condition(
                            &arm.condition,
                            &StepKey::from(key).tag(&format!("if{}", i + 1)),
                            &s.loc,
                        )
                        .await?
                    {
                        taken = Some((arm.name.as_str(), &arm.steps, join_key(key, &arm.name)));
                        break;
                    }
                }
                if taken.is_none()
                    && let Some(o) = &b.otherwise
                {
                    taken = Some(("else", o, join_key(key, "else")));
                }
                let arm = taken.as_ref().map(|(n, _, _)| *n);
                // The arm taken is part of the context and of the journal
                // (`runs show` lists it), before its steps run.
                self.write(&taken_key(&s.name), arm.map_or(Value::Null, Value::from));
                let tkey = StepKey::from(key).tag("taken");
                if !matches!(self.journal.get(&tkey).await, Ok(Some(_))) {
                    self.journal
                        .record(
                            &tkey,
                            Effect::Decision {
                                decision: serde_json::json!({ "taken": arm }),
                            },
                        )
                        .await
                        .map_err(|e| e.stop(key, &s.loc))?;
                }
                match taken {
                    Some((name, steps, prefix)) => {
                        let v = self.steps(steps, prefix, depth + 1).await?;
                        Ok(StepResult {
                            value: v,
                            note: Some(format!("took {name}")),
                            usage: None,
                        })
                    }
                    None => Ok(StepResult {
                        value: None,
                        note: Some("no branch matched".into()),
                        usage: None,
                    }),
                }
            }
            StepKind::Workflow(w) => {
                // The child sees only its own inputs; its steps are keyed under this step.
                let mut given = BTreeMap::new();
                for (k, t) in &w.inputs {
                    let v = t
                        .eval(&self.ctx, None)
                        .map_err(|e| fail(key, &s.loc, FailureKind::Template(e)))?;
                    given.insert(k.clone(), v);
                }
                let ctx = bind_inputs(&w.workflow, given).map_err(|m| {
                    fail(
                        key,
                        &s.loc,
                        FailureKind::Config(format!("sub-workflow {}: {m}", w.path)),
                    )
                })?;
                // On a shared store, a worker executes the sub-workflow as a task of its own.
                if let Some(d) = self.dist.clone()
                    && d.flows.contains(key)
                    && w.workflow
                        .steps
                        .iter()
                        .all(crate::orchestration::distributable)
                {
                    let value = self.subflow_remote(&d, key, ctx, depth, &s.loc).await?;
                    return Ok(StepResult {
                        value,
                        note: Some(format!("workflow {} (in a worker)", w.path)),
                        usage: None,
                    });
                }
                let (r, value) = self.run_child(&w.workflow, ctx, key, depth).await;
                r?;
                Ok(StepResult {
                    value,
                    note: Some(format!("workflow {}", w.path)),
                    usage: None,
                })
            }
            StepKind::Approval(_) | StepKind::Choose(_) | StepKind::Sections(_) => {
                // Whether a deadline decided (any of) the step's gates.
                let before = self.deadlines;
                let mut r = match &s.kind {
                    StepKind::Approval(a) => self.approval(a, key, depth, &s.loc).await,
                    StepKind::Choose(c) => self.choose(c, key, depth, &s.loc).await,
                    StepKind::Sections(c) => self.sections(c, key, depth, &s.loc).await,
                    _ => unreachable!("matched above"),
                };
                if let Ok(StepResult {
                    value: Some(Value::Object(m)),
                    ..
                }) = &mut r
                {
                    m.insert("timed_out".into(), Value::Bool(self.deadlines > before));
                }
                r
            }
            StepKind::Switch(sw) => self.switch(sw, key, depth, &s.loc).await,
            StepKind::QualityGate(q) => self.quality_gate(q, key, depth, &s.loc).await,
            StepKind::Refine(r) => self.refine(r, key, depth, &s.loc).await,
            StepKind::Debate(d) => self.debate(d, key, depth, &s.loc).await,
            StepKind::AgentChain(c) => self.agent_chain(c, key, depth, &s.loc).await,
            StepKind::Map(m) => self.map(m, s.output.as_deref(), key, depth, &s.loc).await,
            StepKind::Reduce(r) => self.reduce(r, key, depth, &s.loc).await,
            StepKind::FanOut(f) => {
                self.fan_out(f, s.output.as_deref(), key, depth, &s.loc)
                    .await
            }
            StepKind::Saga(sg) => self.saga(sg, s.output.as_deref(), key, depth, &s.loc).await,
            StepKind::Pipeline(p) => self.pipeline(p, key, depth, &s.loc).await,
            StepKind::ScatterGather(g) => self.scatter_gather(g, key, depth, &s.loc).await,
            StepKind::Parallel(p) => {
                let results = self
                    .parallel_branches(&p.branches, p.concurrency, key, depth, &s.loc)
                    .await?;
                match &p.synthesize {
                    None => Ok(StepResult::value(Some(results))),
                    Some(sy) => {
                        // The workers' own results stay in the context beside the synthesis.
                        if let Some(out) = &s.output {
                            self.write(&format!("{out}_results"), results.clone());
                        }
                        let mut child = self.fork();
                        child.ctx.insert("results".into(), results);
                        let v = child.step(sy, key, depth + 1).await;
                        // Only the synthesis's own writes (not `results`) come back.
                        self.absorb(child);
                        Ok(StepResult::value(v?))
                    }
                }
            }
        }
    }

    /// Runs the branches side by side (at most `limit` at once); results in
    /// declared order. Every branch runs to its end even when a sibling
    /// fails, so that finished work is committed before the run stops.
    pub(crate) async fn parallel_branches(
        &mut self,
        branches: &ParallelBranches,
        limit: Option<usize>,
        key: &str,
        depth: usize,
        loc: &Loc,
    ) -> Result<Value, Stop> {
        let mut names = Vec::new();
        let mut futs: Vec<BoxFuture<'_, Branch<'e>>> = Vec::new();
        match branches {
            ParallelBranches::Steps(children) => {
                for c in children {
                    names.push(c.name.clone());
                    let mut child = self.fork();
                    let prefix = key.to_owned();
                    futs.push(Box::pin(async move {
                        let r = child.step(c, &prefix, depth + 1).await;
                        (child, r)
                    }));
                }
            }
            ParallelBranches::Agents { agents, task } => {
                let text = task
                    .render(&self.ctx, None)
                    .map_err(|e| fail(key, loc, FailureKind::Template(e)))?;
                for a in agents {
                    names.push(a.name.clone());
                    let mut child = self.fork();
                    let agent_key = join_key(key, &a.name);
                    let text = text.clone();
                    let loc = loc.clone();
                    let agent = a.clone();
                    futs.push(Box::pin(async move {
                        let start = Instant::now();
                        child.engine.emit(&Event::StepStarted {
                            key: agent_key.clone(),
                            kind: "llm",
                            depth: depth + 1,
                        });
                        let r = child.agent_call(&agent, text, &agent_key, &loc).await;
                        child.engine.emit(&Event::StepFinished {
                            key: agent_key,
                            kind: "llm",
                            depth: depth + 1,
                            elapsed: start.elapsed(),
                            error: r.as_ref().err().and_then(|s| match s {
                                Stop::Failed(e) => Some(e.kind.to_string()),
                                _ => None,
                            }),
                            note: None,
                            usage: None,
                        });
                        (child, r.map(|resp| Some(Value::String(resp.text))))
                    }));
                }
            }
        }
        let n = futs.len();
        let done: Vec<Branch<'e>> = stream::iter(futs)
            .buffered(limit.unwrap_or(n).max(1))
            .collect()
            .await;
        let mut results = serde_json::Map::new();
        let mut stops = Vec::new();
        for (name, (child, r)) in names.into_iter().zip(done) {
            self.absorb(child);
            match r {
                Ok(v) => {
                    results.insert(name, v.unwrap_or(Value::Null));
                }
                Err(s) => stops.push(s),
            }
        }
        match Stop::merge(stops) {
            Some(s) => Err(s),
            None => Ok(Value::Object(results)),
        }
    }

    pub(crate) async fn agent_call(
        &mut self,
        agent: &Arc<Agent>,
        task: String,
        key: &str,
        loc: &Loc,
    ) -> Result<ChatResponse, Stop> {
        let mut req = ChatRequest::user(task);
        let (provider, components) = self.prepare(Some(agent), None, &mut req, key, loc)?;
        self.call(&provider, &req, components, key, loc).await
    }

    pub(crate) async fn condition(
        &mut self,
        c: &Condition,
        key: &str,
        loc: &Loc,
    ) -> Result<bool, Stop> {
        match c
            .evaluate(&self.ctx, None)
            .map_err(|e| fail(key, loc, FailureKind::Template(e)))?
        {
            Outcome::Decided(b) => Ok(b),
            Outcome::NeedsModel { question, negate } => {
                let agent = c.ask_agent().cloned();
                let mut req = ChatRequest::user(question);
                req.max_tokens = Some(10);
                req.temperature = Some(0.0);
                let (provider, components) =
                    self.prepare(agent.as_deref(), None, &mut req, key, loc)?;
                let resp = self.call(&provider, &req, components, key, loc).await?;
                Ok(parse_yes_no(&resp.text) != negate)
            }
        }
    }

    /// Fills in system text, provider and model from the agent and step; returns the provider.
    pub(crate) fn prepare(
        &self,
        agent: Option<&Agent>,
        step: Option<&LlmStep>,
        req: &mut ChatRequest,
        key: &str,
        loc: &Loc,
    ) -> Result<(Arc<dyn Provider>, Vec<String>), Stop> {
        let mut system_parts = Vec::new();
        let mut components = Vec::new();
        if let Some(a) = agent {
            let mut vars = serde_json::Map::new();
            for c in &a.components {
                for v in &c.variables {
                    if let Some(val) = self.ctx.get(&v.name) {
                        vars.insert(v.name.clone(), val.clone());
                    }
                }
            }
            for (name, t) in &a.vars {
                let v = t
                    .eval(&self.ctx, None)
                    .map_err(|e| fail(key, loc, FailureKind::Template(e)))?;
                vars.insert(name.clone(), v);
            }
            let vars = Value::Object(vars);
            for c in &a.components {
                let text = c
                    .render(&vars)
                    .map_err(|d| fail(key, loc, FailureKind::Config(d.render_plain())))?;
                system_parts.push(text);
                components.push(c.reference());
            }
        }
        if let Some(s) = step.and_then(|s| s.system.as_ref()) {
            system_parts.push(
                s.render(&self.ctx, None)
                    .map_err(|e| fail(key, loc, FailureKind::Template(e)))?,
            );
        }
        if !system_parts.is_empty() {
            req.system = Some(system_parts.join("\n\n"));
        }
        let provider_name = step
            .and_then(|s| s.provider.as_deref())
            .or_else(|| agent.and_then(|a| a.provider.as_deref()))
            .unwrap_or(&self.engine.default_provider);
        let provider = self
            .engine
            .providers
            .get(provider_name)
            .cloned()
            .ok_or_else(|| {
                fail(
                    key,
                    loc,
                    FailureKind::Config(format!(
                        "provider `{provider_name}` is not configured (configured: {})",
                        self.engine
                            .providers
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                )
            })?;
        req.model = step
            .and_then(|s| s.model.clone())
            .or_else(|| agent.and_then(|a| a.model.clone()))
            .or_else(|| self.engine.default_model.clone());
        if let Some(t) = step
            .and_then(|s| s.temperature)
            .or_else(|| agent.and_then(|a| a.temperature))
        {
            req.temperature = Some(t);
        }
        if let Some(m) = step
            .and_then(|s| s.max_tokens)
            .or_else(|| agent.and_then(|a| a.max_tokens))
        {
            req.max_tokens = Some(m);
        }
        Ok((provider, components))
    }

    /// Stops at once if the run was paused or cancelled by someone else.
    pub(crate) async fn check_control(&self, key: &str, loc: &Loc) -> Result<(), Stop> {
        let Some(c) = &self.control else {
            return Ok(());
        };
        let status = c.status().await.map_err(|e| {
            fail(
                key,
                loc,
                FailureKind::Journal(crate::journal::JournalError::from_store(&e)),
            )
        })?;
        match status {
            Some(RunStatus::Paused) => Err(Stop::Paused),
            Some(RunStatus::Cancelled) => Err(Stop::Cancelled),
            _ => Ok(()),
        }
    }

    /// One model call through the journal, in its trace span.
    pub(crate) async fn call(
        &mut self,
        provider: &Arc<dyn Provider>,
        req: &ChatRequest,
        components: Vec<String>,
        key: &str,
        loc: &Loc,
    ) -> Result<ChatResponse, Stop> {
        let span = crate::telemetry::model_span(
            &self.engine.tracer,
            provider.as_ref(),
            req,
            key,
            &self.span,
        );
        let outer = std::mem::replace(&mut self.span, span);
        let r = self
            .call_journaled(provider, req, components, key, loc)
            .await;
        let span = std::mem::replace(&mut self.span, outer);
        crate::telemetry::model_done(&span, &r);
        r
    }

    async fn call_journaled(
        &mut self,
        provider: &Arc<dyn Provider>,
        req: &ChatRequest,
        components: Vec<String>,
        key: &str,
        loc: &Loc,
    ) -> Result<ChatResponse, Stop> {
        if let Some(cap) = &self.engine.capture {
            cap(key, req);
        }
        match self
            .journal
            .get(key)
            .await
            .map_err(|e| fail(key, loc, FailureKind::Journal(e)))?
        {
            Some(Effect::Model {
                response,
                request_hash: recorded,
                ..
            }) => {
                self.replayed += 1;
                crate::telemetry::replayed(&self.span);
                if self.changed.is_none() && !recorded.is_empty() && recorded != request_hash(req) {
                    self.changed = Some(key.to_owned());
                }
                return Ok(response);
            }
            // Something else under this key (the workflow changed under the
            // run): no call is made that could not be recorded.
            Some(other) => {
                return Err(mismatch(key, loc, &other, "a model call"));
            }
            None => {}
        }
        self.check_control(key, loc).await?;
        let mut cx = CallContext::for_step(crate::policy::provider_key(key));
        cx.traceparent = crate::telemetry::calling(&self.span);
        if self.engine.stream_deltas {
            let engine_obs = self.engine.observer.clone();
            let k = key.to_owned();
            cx.on_delta = Some(Arc::new(move |t: &str| {
                engine_obs.on_event(&Event::Delta {
                    key: k.clone(),
                    text: t.to_owned(),
                });
            }));
        }
        let request_hash = request_hash(req);
        let model = req
            .model
            .clone()
            .or_else(|| provider.default_model().map(str::to_owned));
        // The response cache's key, computed once: looked up now, stored
        // under after the call.
        let cache_key = self
            .engine
            .cache
            .as_ref()
            .filter(|_| crate::budget::cacheable(req))
            .map(|_| crate::budget::cache_key(provider.name(), model.as_deref(), &request_hash));
        if let Some(hit) = self.cached(cache_key.as_deref()).await {
            let effect = Effect::Model {
                provider: provider.name().to_owned(),
                model,
                request_hash,
                components,
                response: hit,
                cost_usd: None,
                cached: true,
            };
            return self.commit_model(key, loc, effect, None).await;
        }
        let hold = self
            .reserve(provider, model.as_deref(), req, key, loc)
            .await?;
        // Workers on a shared store honour a provider's `retry-after` together.
        self.engine
            .breakers
            .rate_limit_wait(provider.name(), (self.engine.clock)())
            .await;
        let response = match (self.engine.metrics)
            .model_call(provider.as_ref(), req, provider.complete(req, &cx))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                if let (Some(l), Some(h)) = (&self.budget, hold) {
                    l.settle(h, None).await;
                }
                if e.kind == spes_llm::ProviderErrorKind::RateLimited
                    && let Some(wait) = e.retry_after
                {
                    let until = (self.engine.clock)()
                        .saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
                    self.engine
                        .breakers
                        .rate_limited(provider.name(), until)
                        .await;
                }
                return Err(fail(key, loc, FailureKind::Provider(e)));
            }
        };
        let cost_usd = crate::budget::cost_of(
            &self.engine.prices,
            provider.name(),
            provider.kind(),
            model.as_deref(),
            &response.usage,
        );
        if let Some(c) = cost_usd {
            self.engine
                .metrics
                .add_cost(provider.name(), model.as_deref().unwrap_or_default(), c);
        }
        let effect = Effect::Model {
            provider: provider.name().to_owned(),
            model: model.clone(),
            request_hash,
            components,
            response,
            cost_usd,
            cached: false,
        };
        let out = self.commit_model(key, loc, effect, hold).await;
        if let (Ok(response), Some(k), Some(c)) = (&out, cache_key, &self.engine.cache) {
            // The answer is recorded; a cache that cannot take it only
            // costs a later call.
            match serde_json::to_string(response) {
                Ok(text) => {
                    if let Err(e) = c
                        .store
                        .cache_put(&k, provider.name(), model.as_deref(), &text)
                        .await
                    {
                        tracing::warn!(target: "spes::cache", step = key, error = %e, "the response cache did not store an answer");
                    }
                }
                Err(e) => {
                    tracing::warn!(target: "spes::cache", step = key, error = %e, "an answer could not be encoded for the response cache");
                }
            }
        }
        out
    }

    /// An answer for `req` from the response cache, when the engine has one
    /// and the request may be served from it.
    async fn cached(&self, key: Option<&str>) -> Option<ChatResponse> {
        let (c, k) = (self.engine.cache.as_ref()?, key?);
        match c.store.cache_get(k, c.ttl).await {
            Ok(Some(text)) => crate::budget::decode_cached(&text),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(target: "spes::cache", error = %e, "the response cache could not be read; calling the model");
                None
            }
        }
    }

    /// Reserves the worst case of `req` against the run's budget.
    async fn reserve(
        &self,
        provider: &Arc<dyn Provider>,
        model: Option<&str>,
        req: &ChatRequest,
        key: &str,
        loc: &Loc,
    ) -> Result<Option<crate::budget::Hold>, Stop> {
        let Some(l) = &self.budget else {
            return Ok(None);
        };
        let price = model.and_then(|m| self.engine.prices.get(provider.name())?.get(m));
        let est = crate::budget::worst_case(req, price);
        let why = match l.reserve(est).await {
            Ok(Ok(h)) => return Ok(Some(h)),
            Ok(Err(why)) => why,
            Err(e) => {
                return Err(fail(
                    key,
                    loc,
                    FailureKind::Journal(crate::journal::JournalError::from_store(&e)),
                ));
            }
        };
        tracing::warn!(target: "spes::budget", step = key, limit = %why, "budget exhausted before a model call");
        if l.budget().on_exhausted == spes_core::budget::OnExhausted::Pause
            && let Some(c) = &self.control
        {
            let t = spes_core::lifecycle::RunEvent::Pause.transition();
            c.store
                .transition(
                    &c.run,
                    t.from,
                    t.to,
                    spes_store::RunPatch {
                        error: Some(Some(format!(
                            "paused: budget exhausted at step `{key}`: {why}"
                        ))),
                        ..spes_store::RunPatch::default()
                    },
                )
                .await
                .map_err(|e| {
                    fail(
                        key,
                        loc,
                        FailureKind::Journal(crate::journal::JournalError::from_store(&e)),
                    )
                })?;
            return Err(Stop::Paused);
        }
        Err(Stop::Budget(crate::error::EngineError {
            step: key.to_owned(),
            loc: loc.clone(),
            kind: FailureKind::Budget(why),
        }))
    }

    /// Records a model call's effect (made or served from the cache) and
    /// hands its answer to the workflow once committed.
    async fn commit_model(
        &mut self,
        key: &str,
        loc: &Loc,
        effect: Effect,
        hold: Option<crate::budget::Hold>,
    ) -> Result<ChatResponse, Stop> {
        let spent = match &effect {
            Effect::Model {
                response, cost_usd, ..
            } => crate::budget::spend_of_call(&response.usage, *cost_usd),
            _ => spes_core::budget::Spend::default(),
        };
        // The run's status, for the check before the next call: read by
        // the commit itself where the store does (SQLite), else beside the
        // commit (another connection, off the commit's path).
        let returned = std::time::Instant::now();
        let winner = match &self.control {
            Some(c) if c.store.commits_read_status() => {
                let winner = self.journal.record(key, effect).await;
                c.refresh_after(returned).await;
                winner
            }
            _ => {
                let (winner, ()) = tokio::join!(self.journal.record(key, effect), async {
                    if let Some(c) = &self.control {
                        c.refresh_after(returned).await;
                    }
                });
                winner
            }
        };
        if let (Some(l), Some(h)) = (&self.budget, hold) {
            l.settle(h, winner.as_ref().ok().map(|_| spent)).await;
        }
        let winner = winner.map_err(|e| e.stop(key, loc))?;
        match winner {
            Effect::Model {
                response,
                cached,
                cost_usd,
                ..
            } => {
                if cached {
                    self.cached += 1;
                } else {
                    self.model_calls += 1;
                    add_usage(&mut self.usage, &response.usage);
                    add_cost(&mut self.cost_usd, cost_usd);
                }
                Ok(response)
            }
            other => Err(mismatch(key, loc, &other, "a model call")),
        }
    }

    pub(crate) async fn llm(
        &mut self,
        l: &LlmStep,
        key: &str,
        loc: &Loc,
    ) -> Result<StepResult, Stop> {
        let user = l
            .prompt
            .render(&self.ctx, None)
            .map_err(|e| fail(key, loc, FailureKind::Template(e)))?;
        let a = self.answer(l, user, None, key, loc).await?;
        let note = a.note();
        Ok(StepResult {
            value: Some(a.value),
            note: Some(note),
            usage: (!a.replayed).then_some(a.usage),
        })
    }

    /// Asks an llm step's model for an answer to `user` (with `locals`
    /// visible to its agent's variables and system text) and checks it
    /// against what the step asked for (`format`, `schema`, truncation).
    ///
    /// An answer that is not what was asked for is sent back with its
    /// problems (the answer as an assistant message, then a user message
    /// listing them), up to `repair` times; each repair request carries the
    /// earlier rejected answers too (the last eight), so a deterministic
    /// model is not sent the same request twice. Attempt *n* is journaled under
    /// `KEY` (n = 1), then `KEY#repair{n-1}`. Recorded attempts replay
    /// first, so a replay of a served step is exact; then each execution
    /// may make up to `1 + repair` new calls, so a resumed run whose step
    /// failed asks the model again instead of replaying the failure.
    pub(crate) async fn answer(
        &mut self,
        l: &LlmStep,
        user: String,
        locals: Option<&Context>,
        key: &str,
        loc: &Loc,
    ) -> Result<Answer, Stop> {
        let mut req = ChatRequest {
            messages: vec![Message::user(user)],
            stop: l.stop.clone(),
            json_schema: l.schema.as_ref().map(AnswerSchema::shared),
            json: l.format == Format::Json,
            ..ChatRequest::default()
        };
        let prepared = match locals {
            Some(locals) => {
                let saved = self.ctx.clone();
                for (k, v) in locals {
                    self.ctx.insert(k.clone(), v.clone());
                }
                let p = self.prepare(l.agent.as_deref(), Some(l), &mut req, key, loc);
                self.ctx = saved;
                p
            }
            None => self.prepare(l.agent.as_deref(), Some(l), &mut req, key, loc),
        };
        let (provider, components) = prepared?;
        let repairs = l.repair.unwrap_or(self.engine.default_repair);
        let on_truncation = l.truncation();
        // A repair request is this one plus two messages per rejected answer.
        let asked = req.messages.len();
        let mut usage = Usage::default();
        let (mut made, mut attempt, mut cached) = (0u32, 0u32, 0u32);
        let mut last: Vec<Violation> = Vec::new();
        loop {
            let akey = repair_key(key, attempt);
            // The budget counts calls made by this execution: recorded
            // attempts replay for free, so a resumed run asks again.
            if made > repairs {
                let recorded = matches!(
                    self.journal.get(&akey).await.map_err(|e| fail(
                        key,
                        loc,
                        FailureKind::Journal(e)
                    ))?,
                    Some(Effect::Model { .. })
                );
                if !recorded {
                    return Err(fail(
                        key,
                        loc,
                        FailureKind::InvalidOutput {
                            problems: last,
                            attempts: attempt,
                        },
                    ));
                }
            }
            let (before, cached_before) = (self.model_calls, self.cached);
            let resp = self
                .call(&provider, &req, components.clone(), &akey, loc)
                .await?;
            if self.model_calls > before {
                made += 1;
                add_usage(&mut usage, &resp.usage);
            }
            if self.cached > cached_before {
                cached += 1;
            }
            let truncated = resp.stop_reason == StopReason::MaxTokens;
            match check_answer(
                l.format,
                l.schema.as_ref(),
                on_truncation,
                &resp.text,
                truncated,
            ) {
                Verdict::Valid(value) => {
                    return Ok(Answer {
                        value,
                        provider: provider.name().to_owned(),
                        replayed: made == 0 && cached == 0,
                        cached: made == 0 && cached > 0,
                        attempts: attempt + 1,
                        truncated,
                        usage,
                        response: resp,
                    });
                }
                Verdict::Invalid(problems) => {
                    tracing::info!(
                        step = key,
                        attempt = attempt + 1,
                        problems = problems.len(),
                        "the answer is not what the step asked for"
                    );
                    // The conversation keeps the last few rejected answers
                    // with their problems: a deterministic model (greedy
                    // decoding) asked the same request again answers the same.
                    if req.messages.len() >= asked + 2 * REPAIR_TURNS_KEPT {
                        req.messages.drain(asked..asked + 2);
                    }
                    req.avoid.push(resp.text.clone());
                    req.messages.push(Message::assistant(resp.text));
                    req.messages
                        .push(Message::user(repair_prompt(&problems, l.format)));
                    last = problems;
                    attempt += 1;
                }
            }
        }
    }
}

/// Rejected answers (each with its problems) a repair request carries at most.
const REPAIR_TURNS_KEPT: usize = 8;

/// An llm step's checked answer.
pub(crate) struct Answer {
    /// The value for the context: the text, or the parsed JSON.
    pub(crate) value: Value,
    /// The provider that answered.
    pub(crate) provider: String,
    /// Every attempt came from the journal.
    pub(crate) replayed: bool,
    /// The answers came from the response cache (none was made).
    pub(crate) cached: bool,
    /// Which attempt served (1: the first answer; 2: after one repair).
    pub(crate) attempts: u32,
    /// It stopped at `max_tokens` (kept under `on_truncation: warn`).
    pub(crate) truncated: bool,
    /// Usage of the calls made (not replayed).
    pub(crate) usage: Usage,
    /// The answer that served.
    pub(crate) response: ChatResponse,
}

impl Answer {
    /// The progress note: provider, model and tokens (or replayed), repairs, truncation.
    pub(crate) fn note(&self) -> String {
        let mut note = if self.replayed {
            "replayed from journal".to_owned()
        } else if self.cached {
            "cached · served from the response cache".to_owned()
        } else {
            format!(
                "{}{} · {}→{} tok",
                self.provider,
                self.response
                    .model
                    .as_deref()
                    .map(|m| format!("/{m}"))
                    .unwrap_or_default(),
                self.usage.input_tokens,
                self.usage.output_tokens
            )
        };
        if self.attempts > 1 {
            let n = self.attempts - 1;
            note.push_str(&format!(
                " · repaired after {n} invalid answer{}",
                if n == 1 { "" } else { "s" }
            ));
        }
        if self.truncated {
            note.push_str(" · ⚠ truncated at max_tokens");
        }
        note
    }

    /// The answer's text.
    pub(crate) fn text(&self) -> &str {
        &self.response.text
    }
}

/// The context key recording which arm a branch step took: `<name>_taken`
/// (characters that cannot be in a key become `_`).
pub(crate) fn taken_key(step: &str) -> String {
    spes_core::workflow::taken_key(step)
}

/// The journal key of an llm step's attempt: `KEY`, then `KEY#repair1`...
pub(crate) fn repair_key(key: &str, attempt: u32) -> String {
    StepKey::from(key).repair(attempt).into_string()
}

/// SHA-256 over the request as sent (stable JSON), serialized straight
/// into the hash (no copy of the request's text is made).
#[must_use]
pub fn request_hash(req: &ChatRequest) -> String {
    struct Hashing(Sha256);
    impl std::io::Write for Hashing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut h = Hashing(Sha256::new());
    // Serializing plain data into a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut h, req);
    hex::encode(h.0.finalize())
}

/// Checks and converts `--input` values against the declared inputs.
pub fn bind_inputs(wf: &Workflow, given: BTreeMap<String, Value>) -> Result<Context, String> {
    use spes_core::workflow::InputType as T;
    let mut ctx = Context::new();
    let declared: Vec<&str> = wf.inputs.iter().map(|i| i.name.as_str()).collect();
    for k in given.keys() {
        if !declared.contains(&k.as_str()) {
            return Err(if declared.is_empty() {
                format!(
                    "unknown input `{k}`: workflow `{}` declares no inputs",
                    wf.name
                )
            } else {
                format!(
                    "unknown input `{k}`; `{}` declares: {}",
                    wf.name,
                    declared.join(", ")
                )
            });
        }
    }
    let mut given = given;
    for i in &wf.inputs {
        let v = match given.remove(&i.name) {
            Some(v) => v,
            None => match &i.default {
                Some(d) => d.clone(),
                None if i.required => {
                    return Err(format!(
                        "missing required input `{}`{}; pass --input {}=...",
                        i.name,
                        i.description
                            .as_ref()
                            .map(|d| format!(" ({d})"))
                            .unwrap_or_default(),
                        i.name
                    ));
                }
                None => continue,
            },
        };
        let v = match (i.ty, v) {
            (T::String, Value::String(s)) => Value::String(s),
            (T::String, other) => Value::String(match other {
                Value::String(s) => s,
                o => o.to_string(),
            }),
            (T::Integer, Value::String(s)) => s
                .trim()
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| format!("input `{}` must be an integer, got `{s}`", i.name))?,
            (T::Number, Value::String(s)) => s
                .trim()
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| format!("input `{}` must be a number, got `{s}`", i.name))?,
            (T::Boolean, Value::String(s)) => match s.trim() {
                "true" | "yes" | "1" => Value::Bool(true),
                "false" | "no" | "0" => Value::Bool(false),
                _ => {
                    return Err(format!(
                        "input `{}` must be true or false, got `{s}`",
                        i.name
                    ));
                }
            },
            (T::List | T::Object, Value::String(s)) => {
                let parsed: Value = serde_json::from_str(&s).map_err(|e| {
                    format!("input `{}` must be JSON ({}): {e}", i.name, i.ty.as_str())
                })?;
                let ok = if i.ty == T::List {
                    parsed.is_array()
                } else {
                    parsed.is_object()
                };
                if !ok {
                    return Err(format!(
                        "input `{}` must be a JSON {}",
                        i.name,
                        i.ty.as_str()
                    ));
                }
                parsed
            }
            (_, v) => v,
        };
        ctx.insert(i.name.clone(), v);
    }
    Ok(ctx)
}
