//! spes engine: runs validated workflows over a journaled run context.
//!
//! Every effect (model call, `ask` decision) goes through the context under
//! a deterministic step key and is recorded in the [`Journal`] before the
//! workflow sees it; decisions (conditions, transforms) are pure.
//!
//! ```
//! use std::sync::Arc;
//! use spes_core::component::ComponentRegistry;
//! use spes_core::workflow::{ValidateEnv, parse_workflow, validate};
//! use spes_engine::Engine;
//! use spes_llm::scripted::ScriptedProvider;
//!
//! let yaml = r#"
//! name: hello
//! inputs: { who: { type: string, required: true } }
//! steps:
//!   - { name: greet, kind: llm, prompt: "Say hello to {{ who }}", output: greeting }
//!   - { name: shout, kind: transform, fn: uppercase, input: "{{ greeting }}", output: loud }
//! "#;
//! let spec = parse_workflow("hello.yaml", yaml).unwrap();
//! let components = ComponentRegistry::from_components(vec![]);
//! let env = ValidateEnv { components: &components, providers: None };
//! let (wf, _warnings) = validate(spec, "hello.yaml", yaml, &env).unwrap();
//!
//! let script = "- { step: greet, reply: 'hello, ada' }";
//! let provider = ScriptedProvider::parse("test", "answers.yaml", script).unwrap();
//! let engine = Engine::builder().provider(Arc::new(provider)).build();
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! let inputs = [("who".to_owned(), "ada".into())].into_iter().collect();
//! let out = rt.block_on(engine.run(&wf, inputs)).unwrap();
//! assert_eq!(out.output, Some("HELLO, ADA".into()));
//! ```

pub mod agent;
pub mod budget;
pub mod durable;
pub mod error;
pub mod event;
pub mod gate;
pub mod http;
pub mod journal;
pub mod limits;
pub mod mcp;
pub mod metrics;
pub mod ops;
mod orchestration;
mod pattern;
pub mod patterns;
pub mod policy;
pub mod run;
pub mod telemetry;
pub mod tool;
pub mod view;
pub mod worker;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;
use spes_core::workflow::Workflow;
use spes_llm::Provider;

pub use durable::{Begun, RunEnd, WorkflowSource};
pub use error::{EngineError, FailureKind};
pub use event::{Event, NoObserver, Observer};
pub use gate::{GateRequest, Reviewer};
pub use journal::{Effect, Journal, JournalError, MemoryJournal, StoreJournal};
pub use run::{RunOutcome, bind_inputs};

/// Runs workflows. Cheap to share; one per process is typical.
pub struct Engine {
    pub(crate) providers: BTreeMap<String, Arc<dyn Provider>>,
    pub(crate) default_provider: String,
    pub(crate) default_model: Option<String>,
    pub(crate) observer: Arc<dyn Observer>,
    pub(crate) stream_deltas: bool,
    pub(crate) capture: Option<Capture>,
    pub(crate) reviewer: Option<Arc<dyn Reviewer>>,
    pub(crate) clock: Clock,
    pub(crate) breakers: policy::Breakers,
    pub(crate) retry_defaults: policy::RetryDefaults,
    pub(crate) default_repair: u32,
    pub(crate) http: http::HttpSettings,
    pub(crate) tools: BTreeMap<String, Arc<dyn tool::Tool>>,
    pub(crate) tool_sources: Vec<Arc<dyn tool::ToolSource>>,
    pub(crate) prices: budget::Prices,
    pub(crate) cache: Option<budget::ResponseCache>,
    pub(crate) default_budget: Option<spes_core::budget::Budget>,
    pub(crate) budget_override: Option<spes_core::budget::Budget>,
    pub(crate) metrics: metrics::Metrics,
    pub(crate) tracer: telemetry::Tracer,
}

/// Milliseconds since the Unix epoch. Injectable so that deadlines are testable without waiting.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// Sees every model request as it is made or replayed (for `runs show --prompts`).
pub type Capture = Arc<dyn Fn(&str, &spes_core::message::ChatRequest) + Send + Sync>;

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("providers", &self.providers.keys().collect::<Vec<_>>())
            .field("default_provider", &self.default_provider)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Starts building an engine.
    #[must_use]
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    pub(crate) fn emit(&self, e: &Event) {
        self.metrics.on_event(e);
        self.observer.on_event(e);
    }

    /// The metrics this engine feeds.
    #[must_use]
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.metrics
    }

    /// This engine reporting its progress to `o` instead, streamed answer
    /// text included (from providers configured to stream).
    #[must_use]
    pub fn observed(mut self, o: Arc<dyn Observer>) -> Self {
        self.observer = o;
        self.stream_deltas = true;
        self
    }

    /// This engine serving temperature-0 calls from `cache` (see
    /// [`EngineBuilder::response_cache`]).
    #[must_use]
    pub fn with_response_cache(mut self, cache: budget::ResponseCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// This engine with budget limits over the workflow's (see
    /// [`EngineBuilder::budget`]).
    #[must_use]
    pub fn with_budget(mut self, b: spes_core::budget::Budget) -> Self {
        self.budget_override = Some(b);
        self
    }

    /// The tool a workflow names `name`: a registered one, else the first
    /// source that owns the name. `Err`: why there is none (for the user).
    pub(crate) async fn find_tool(&self, name: &str) -> Result<Arc<dyn tool::Tool>, String> {
        if let Some(t) = self.tools.get(name) {
            return Ok(t.clone());
        }
        for s in &self.tool_sources {
            if let Some(t) = s.tool(name).await? {
                return Ok(t);
            }
        }
        Err(format!(
            "tool `{name}` is not registered with the engine (registered: {})",
            if self.tools.is_empty() {
                "none".to_owned()
            } else {
                self.tools.keys().cloned().collect::<Vec<_>>().join(", ")
            }
        ))
    }

    /// Provider names.
    pub fn provider_names(&self) -> impl Iterator<Item = &str> {
        self.providers.keys().map(String::as_str)
    }

    /// The provider of steps and agents that name none.
    #[must_use]
    pub fn default_provider_name(&self) -> &str {
        &self.default_provider
    }

    /// What a run started by this engine pins besides its files and inputs.
    #[must_use]
    pub fn run_settings(&self) -> spes_store::RunSettings {
        spes_store::RunSettings {
            provider: Some(self.default_provider.clone()),
            ..spes_store::RunSettings::default()
        }
    }

    /// This engine as a run pinned with `settings` needs it: the same
    /// providers, breakers and observers, with the run's default provider.
    /// `None` when this engine already fits.
    #[must_use]
    pub fn pinned(&self, settings: &spes_store::RunSettings) -> Option<Self> {
        let p = settings.provider.as_ref()?;
        if *p == self.default_provider {
            return None;
        }
        Some(Self {
            providers: self.providers.clone(),
            default_provider: p.clone(),
            default_model: self.default_model.clone(),
            observer: self.observer.clone(),
            stream_deltas: self.stream_deltas,
            capture: self.capture.clone(),
            reviewer: self.reviewer.clone(),
            clock: self.clock.clone(),
            breakers: self.breakers.clone(),
            retry_defaults: self.retry_defaults.clone(),
            default_repair: self.default_repair,
            http: self.http.clone(),
            tools: self.tools.clone(),
            tool_sources: self.tool_sources.clone(),
            prices: self.prices.clone(),
            cache: self.cache.clone(),
            default_budget: self.default_budget,
            budget_override: self.budget_override,
            metrics: self.metrics.clone(),
            tracer: self.tracer.clone(),
        })
    }

    /// The budget a new run of `wf` gets: the default, overridden by the
    /// workflow's limits, overridden by this engine's (`--budget`).
    #[must_use]
    pub fn budget_for(&self, wf: &Workflow) -> Option<spes_core::budget::Budget> {
        let mut b = self.default_budget.unwrap_or_default();
        if let Some(w) = &wf.budget {
            b = b.overridden_by(w);
        }
        if let Some(o) = &self.budget_override {
            b = b.overridden_by(o);
        }
        (!b.is_unlimited()).then_some(b)
    }

    /// Runs `wf` with inputs (bound against its declared inputs here) to
    /// completion, with a fresh in-memory journal.
    pub async fn run(
        &self,
        wf: &Workflow,
        inputs: BTreeMap<String, Value>,
    ) -> Result<RunOutcome, RunError> {
        self.run_with_journal(wf, inputs, Arc::new(MemoryJournal::default()))
            .await
    }

    /// Runs `wf` against an existing journal: effects recorded there answer
    /// at once (no model call); new effects are recorded before the
    /// workflow sees them. Running again with the same journal replays.
    pub async fn run_with_journal(
        &self,
        wf: &Workflow,
        inputs: BTreeMap<String, Value>,
        journal: Arc<dyn Journal>,
    ) -> Result<RunOutcome, RunError> {
        let ctx = bind_inputs(wf, inputs).map_err(RunError::Input)?;
        let mut exec = run::Exec::new(self, ctx, journal, None);
        exec.budget = self
            .budget_for(wf)
            .map(|b| budget::Ledger::local(b, spes_core::budget::Spend::default()));
        let span = telemetry::run_span(&self.tracer, &wf.name, None, None);
        exec.span = span.clone();
        let result = exec.run_workflow(wf).await;
        telemetry::done(&span, &result);
        match result {
            Ok(o) => Ok(o),
            Err(run::Stop::Failed(e) | run::Stop::Store(e) | run::Stop::Budget(e)) => {
                Err(RunError::Step(e))
            }
            Err(run::Stop::Suspended(gates)) => Err(RunError::NeedsStore(format!(
                "gate `{}` waits for a human; runs with gates need a store (spes run keeps one in .spes/)",
                gates.join("`, `")
            ))),
            Err(run::Stop::Paused | run::Stop::Cancelled) => {
                Err(RunError::NeedsStore("pause and cancel need a store".into()))
            }
        }
    }
}

/// Why a run did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The inputs do not fit the workflow.
    #[error("{0}")]
    Input(String),
    /// A step failed.
    #[error(transparent)]
    Step(#[from] EngineError),
    /// The run needs a store (human gates, pause, resume).
    #[error("{0}")]
    NeedsStore(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] spes_store::StoreError),
    /// The run cannot be resumed as asked.
    #[error("{0}")]
    Refused(String),
}

/// Builds an [`Engine`].
#[derive(Default)]
pub struct EngineBuilder {
    providers: BTreeMap<String, Arc<dyn Provider>>,
    default_provider: Option<String>,
    default_model: Option<String>,
    observer: Option<Arc<dyn Observer>>,
    stream_deltas: bool,
    capture: Option<Capture>,
    reviewer: Option<Arc<dyn Reviewer>>,
    clock: Option<Clock>,
    retry_defaults: policy::RetryDefaults,
    default_repair: Option<u32>,
    http_allow_hosts: Option<Vec<String>>,
    tools: BTreeMap<String, Arc<dyn tool::Tool>>,
    tool_sources: Vec<Arc<dyn tool::ToolSource>>,
    prices: budget::Prices,
    cache: Option<budget::ResponseCache>,
    default_budget: Option<spes_core::budget::Budget>,
    budget_override: Option<spes_core::budget::Budget>,
    metrics: Option<metrics::Metrics>,
    tracer: Option<telemetry::Tracer>,
}

impl fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("providers", &self.providers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl EngineBuilder {
    /// Prices of models by provider, then model name (US dollars per
    /// million tokens): each model call's cost is journaled with it, and
    /// budgets with a `cost` limit count it. A model without a price costs
    /// nothing here.
    #[must_use]
    pub fn prices(mut self, prices: budget::Prices) -> Self {
        self.prices = prices;
        self
    }

    /// Serves temperature-0 model calls whose exact request was answered
    /// before from `cache` (journaled as `cached`), and stores new answers
    /// there.
    #[must_use]
    pub fn response_cache(mut self, cache: budget::ResponseCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The budget of runs whose workflow sets none (`[defaults] budget`);
    /// a workflow's own limits win over these.
    #[must_use]
    pub fn default_budget(mut self, b: spes_core::budget::Budget) -> Self {
        self.default_budget = Some(b);
        self
    }

    /// Limits that win over the workflow's and the default's (`spes run
    /// --budget`); on resume they raise (or lower) the run's recorded budget.
    #[must_use]
    pub fn budget(mut self, b: spes_core::budget::Budget) -> Self {
        self.budget_override = Some(b);
        self
    }

    /// Adds a provider under its name; the first added is the default unless set.
    #[must_use]
    pub fn provider(mut self, p: Arc<dyn Provider>) -> Self {
        if self.default_provider.is_none() {
            self.default_provider = Some(p.name().to_owned());
        }
        self.providers.insert(p.name().to_owned(), p);
        self
    }

    /// The provider used by steps and agents that name none.
    #[must_use]
    pub fn default_provider(mut self, name: impl Into<String>) -> Self {
        self.default_provider = Some(name.into());
        self
    }

    /// The model used when nothing else names one.
    #[must_use]
    pub fn default_model(mut self, model: Option<String>) -> Self {
        self.default_model = model;
        self
    }

    /// Who hears about progress.
    #[must_use]
    pub fn observer(mut self, o: Arc<dyn Observer>) -> Self {
        self.observer = Some(o);
        self
    }

    /// Forward streamed model text to the observer.
    #[must_use]
    pub fn stream_deltas(mut self, yes: bool) -> Self {
        self.stream_deltas = yes;
        self
    }

    /// Sees every model request (made or replayed).
    #[must_use]
    pub fn capture(mut self, c: Capture) -> Self {
        self.capture = Some(c);
        self
    }

    /// Who answers human gates at once (a terminal); without one, gates suspend the run.
    #[must_use]
    pub fn reviewer(mut self, r: Arc<dyn Reviewer>) -> Self {
        self.reviewer = Some(r);
        self
    }

    /// The wall clock used for gate deadlines (default: the system clock).
    #[must_use]
    pub fn clock(mut self, c: Clock) -> Self {
        self.clock = Some(c);
        self
    }

    /// The retry of llm steps that set no `retry:` (default: 3 attempts
    /// for `anthropic` and `openai` providers, none for others).
    #[must_use]
    pub fn retry_defaults(mut self, r: policy::RetryDefaults) -> Self {
        self.retry_defaults = r;
        self
    }

    /// Repair attempts of llm steps that set no `repair` (`[defaults] repair`;
    /// default 1).
    #[must_use]
    pub fn default_repair(mut self, n: Option<u32>) -> Self {
        self.default_repair = n;
        self
    }

    /// The hosts `http` steps may reach (`name` or `name:port`; `[http]
    /// allow_hosts` in spes.toml); default: any.
    #[must_use]
    pub fn http_allow_hosts(mut self, hosts: Option<Vec<String>>) -> Self {
        self.http_allow_hosts = hosts;
        self
    }

    /// Registers a tool that `agent` steps can name in `tools:` (a later
    /// tool of the same name replaces it).
    #[must_use]
    pub fn tool(mut self, t: Arc<dyn tool::Tool>) -> Self {
        self.tools.insert(t.spec().name.clone(), t);
        self
    }

    /// Adds a source of tools (asked, in the order added, for a name that
    /// no registered tool has).
    #[must_use]
    pub fn tool_source(mut self, s: Arc<dyn tool::ToolSource>) -> Self {
        self.tool_sources.push(s);
        self
    }

    /// The metrics registry the engine feeds (default: the process's,
    /// [`metrics::Metrics::global`]).
    #[must_use]
    pub fn metrics(mut self, m: metrics::Metrics) -> Self {
        self.metrics = Some(m);
        self
    }

    /// Where the engine's trace spans go (default: the process's,
    /// [`telemetry::Tracer::global`]; none unless a front door set one).
    #[must_use]
    pub fn tracer(mut self, t: telemetry::Tracer) -> Self {
        self.tracer = Some(t);
        self
    }

    /// Finishes.
    #[must_use]
    pub fn build(self) -> Engine {
        let metrics = self
            .metrics
            .unwrap_or_else(|| metrics::Metrics::global().clone());
        Engine {
            providers: self.providers,
            default_provider: self.default_provider.unwrap_or_else(|| "local".into()),
            default_model: self.default_model,
            observer: self.observer.unwrap_or_else(|| Arc::new(NoObserver)),
            stream_deltas: self.stream_deltas,
            capture: self.capture,
            reviewer: self.reviewer,
            clock: self
                .clock
                .unwrap_or_else(|| Arc::new(|| chrono::Utc::now().timestamp_millis())),
            breakers: policy::Breakers::observed(metrics.clone()),
            retry_defaults: self.retry_defaults,
            default_repair: self
                .default_repair
                .unwrap_or(spes_core::answer::DEFAULT_REPAIR),
            http: http::HttpSettings::new(self.http_allow_hosts),
            tools: self.tools,
            tool_sources: self.tool_sources,
            prices: self.prices,
            cache: self.cache,
            default_budget: self.default_budget,
            budget_override: self.budget_override,
            metrics,
            tracer: self.tracer.unwrap_or_else(telemetry::Tracer::global),
        }
    }
}
