//! Workflows written in Rust, without YAML: constructors for steps,
//! including the orchestration patterns (`map`, `reduce`, `fan_out`,
//! `saga`, `pipeline`, `scatter_gather`), and a [`WorkflowBuilder`]. The
//! result is the same [`Workflow`] the YAML validator produces, so it runs
//! on the same durable engine: every effect is journaled under the same
//! step keys (`summaries/map[3]/summarize`).
//!
//! Templates are parsed here (a syntax error is an `Err`); unlike YAML
//! validation, a key read before any step writes it is found only when
//! the step runs.
//!
//! ```
//! use std::sync::Arc;
//! use serde_json::json;
//! use spes_core::workflow::{InputType, OnError};
//! use spes_engine::Engine;
//! use spes_engine::patterns::{self, StepExt, WorkflowBuilder};
//! use spes_llm::scripted::ScriptedProvider;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let wf = WorkflowBuilder::new("digest")
//!     .input("docs", InputType::List)
//!     .step(
//!         patterns::map("summaries", "docs", patterns::llm("summarize", "Summarise: {{ doc }}")?)
//!             .item_as("doc")
//!             .concurrency(8)
//!             .on_error(OnError::Collect)
//!             .build()
//!             .output("summaries"),
//!     )
//!     .step(
//!         patterns::reduce(
//!             "overview",
//!             "summaries",
//!             patterns::llm("combine", "Combine: {{ items | join(' / ') }}")?,
//!         )
//!         .output("overview"),
//!     )
//!     .build();
//!
//! let script = "- { step: 'map[0]/summarize', reply: 'A is short' }\n\
//!               - { step: 'map[1]/summarize', reply: 'B is long' }\n\
//!               - { default: echo }";
//! let provider = ScriptedProvider::parse("test", "answers.yaml", script)?;
//! let engine = Engine::builder().provider(Arc::new(provider)).build();
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! let inputs = [("docs".to_owned(), json!(["a", "b"]))].into_iter().collect();
//! let out = rt.block_on(engine.run(&wf, inputs))?;
//! assert_eq!(out.output, Some(json!("Combine: A is short / B is long")));
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use spes_core::template::{Template, TemplateError};
use spes_core::workflow::{
    FanOutStep, Input, InputType, MapStep, OnError, PipelineStep, ReduceStep, SagaAction, SagaStep,
    ScatterGatherStep, Step, StepKind, TransformStep, Workflow,
    orchestration::DEFAULT_MAP_CONCURRENCY,
};

use super::agents::step;

/// Sets the context key a step writes.
pub trait StepExt {
    /// The step with `output: key`.
    #[must_use]
    fn output(self, key: &str) -> Step;
}

impl StepExt for Step {
    fn output(mut self, key: &str) -> Step {
        self.output = Some(key.to_owned());
        self
    }
}

/// A `transform` step (`func` is a transform name: `split`, `trim`, ...).
pub fn transform(name: &str, func: &str, input: &str) -> Result<Step, String> {
    let f = spes_core::transform::build(func, &serde_json::Map::new())?;
    Ok(step(
        name,
        StepKind::Transform(TransformStep {
            func: f,
            func_name: func.to_owned(),
            input: Template::parse(input).map_err(|e| e.message)?,
        }),
    ))
}

/// Builds a `map` step; see [`map`].
#[derive(Debug)]
#[must_use]
pub struct MapBuilder {
    name: String,
    m: MapStep,
}

/// A `map` over the list under context key `over`, running `item` once per
/// element (visible as `item`, or [`MapBuilder::item_as`], and `index`).
pub fn map(name: &str, over: &str, item: Step) -> MapBuilder {
    MapBuilder {
        name: name.to_owned(),
        m: MapStep {
            over: over.to_owned(),
            item_as: "item".to_owned(),
            concurrency: DEFAULT_MAP_CONCURRENCY,
            on_error: OnError::default(),
            step: Box::new(item),
        },
    }
}

impl MapBuilder {
    /// The item's name in the item step's templates.
    pub fn item_as(mut self, name: &str) -> Self {
        name.clone_into(&mut self.m.item_as);
        self
    }

    /// Most items in flight at once (at least 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.m.concurrency = n.max(1);
        self
    }

    /// The failure policy.
    pub fn on_error(mut self, policy: OnError) -> Self {
        self.m.on_error = policy;
        self
    }

    /// The step.
    #[must_use]
    pub fn build(self) -> Step {
        step(&self.name, StepKind::Map(Box::new(self.m)))
    }
}

/// A `reduce` over the list under `over`; `combine` sees it as `items`.
#[must_use]
pub fn reduce(name: &str, over: &str, combine: Step) -> Step {
    step(
        name,
        StepKind::Reduce(Box::new(ReduceStep {
            over: over.to_owned(),
            step: Box::new(combine),
        })),
    )
}

/// A `fan_out`: the workers (named by their step names) run side by side;
/// `aggregate` sees `results` (worker name → output).
#[must_use]
pub fn fan_out(name: &str, workers: Vec<Step>, aggregate: Option<Step>) -> Step {
    step(
        name,
        StepKind::FanOut(Box::new(FanOutStep {
            workers,
            aggregate: aggregate.map(Box::new),
            concurrency: None,
            on_error: spes_core::workflow::OnError::FailFast,
        })),
    )
}

/// A `saga`: (step, compensation) pairs; on failure the completed steps'
/// compensations run in reverse order (they see `error` and `failed_step`).
/// Name compensations `compensate` to get the YAML keys (`SAGA/STEP/compensate`).
///
/// ```
/// use std::sync::Arc;
/// use spes_engine::Engine;
/// use spes_engine::patterns::{self, StepExt, WorkflowBuilder};
/// use spes_llm::scripted::ScriptedProvider;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let wf = WorkflowBuilder::new("trip")
///     .step(
///         patterns::saga(
///             "book",
///             vec![
///                 (
///                     patterns::llm("flight", "Book a flight")?.output("flight"),
///                     Some(patterns::llm("compensate", "Cancel {{ flight }}")?),
///                 ),
///                 (patterns::llm("hotel", "Book a hotel")?, None),
///             ],
///         )
///         .output("booking"),
///     )
///     .build();
/// let script = "- { step: book/hotel, error: invalid_request }\n- { default: echo }";
/// let provider = Arc::new(ScriptedProvider::parse("test", "answers.yaml", script)?);
/// let engine = Engine::builder().provider(provider.clone()).build();
/// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
/// let out = rt.block_on(engine.run(&wf, Default::default()))?;
/// let booking = out.output.unwrap_or_default();
/// assert_eq!(booking["status"], "compensated");
/// assert_eq!(booking["compensations"][0]["status"], "compensated");
/// let keys: Vec<String> = provider.calls().into_iter().map(|(k, _)| k).collect();
/// assert_eq!(keys, ["book/flight", "book/hotel", "book/flight/compensate"]);
/// # Ok(())
/// # }
/// ```
#[must_use]
pub fn saga(name: &str, actions: Vec<(Step, Option<Step>)>) -> Step {
    step(
        name,
        StepKind::Saga(Box::new(SagaStep {
            actions: actions
                .into_iter()
                .map(|(step, compensate)| SagaAction { step, compensate })
                .collect(),
        })),
    )
}

/// A `pipeline`: each stage sees the previous output as `input`; the first
/// sees `input` rendered over the context, when given.
pub fn pipeline(name: &str, input: Option<&str>, stages: Vec<Step>) -> Result<Step, TemplateError> {
    Ok(step(
        name,
        StepKind::Pipeline(Box::new(PipelineStep {
            input: input.map(Template::parse).transpose()?,
            stages,
        })),
    ))
}

/// A `scatter_gather`: sources side by side for at most `timeout`; `gather`
/// sees `results`, `timed_out` and `failed`.
#[must_use]
pub fn scatter_gather(
    name: &str,
    sources: Vec<Step>,
    timeout: Duration,
    gather: Option<Step>,
) -> Step {
    step(
        name,
        StepKind::ScatterGather(Box::new(ScatterGatherStep {
            sources,
            timeout,
            gather: gather.map(Box::new),
        })),
    )
}

/// Builds a [`Workflow`] in Rust.
#[derive(Debug)]
#[must_use]
pub struct WorkflowBuilder {
    wf: Workflow,
}

impl WorkflowBuilder {
    /// An empty workflow.
    pub fn new(name: &str) -> Self {
        Self {
            wf: Workflow {
                name: name.to_owned(),
                description: None,
                file: format!("{name} (built in Rust)"),
                inputs: Vec::new(),
                agents: std::collections::BTreeMap::new(),
                steps: Vec::new(),
                output: None,
                components: Vec::new(),
                children: Vec::new(),
                schemas: Vec::new(),
                budget: None,
            },
        }
    }

    /// A required input.
    pub fn input(mut self, name: &str, ty: InputType) -> Self {
        self.wf.inputs.push(Input {
            name: name.to_owned(),
            ty,
            required: true,
            default: None,
            description: None,
        });
        self
    }

    /// Appends a step.
    pub fn step(mut self, s: Step) -> Self {
        self.wf.steps.push(s);
        self
    }

    /// The context key that is the result (default: the last step's output).
    pub fn output(mut self, key: &str) -> Self {
        self.wf.output = Some(key.to_owned());
        self
    }

    /// The workflow.
    #[must_use]
    pub fn build(self) -> Workflow {
        self.wf
    }
}
