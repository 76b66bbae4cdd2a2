//! The step kinds, declared once.
//!
//! Each YAML `kind:` has one [`KindDef`] (its name, the fields it takes,
//! which policies apply, whether a map item of that kind may run in
//! another worker, a minimal example, and its validator), listed in
//! [`KINDS`]. The validated form is a [`StepKind`] variant; the per-kind
//! facts about it ([`StepKind::def`], [`StepKind::children`]) are
//! exhaustive matches, so the compiler points at every place a new kind
//! must fill. Validation, the diagram, the walk (and through it drift
//! detection and the worker's step lookup) and worker distribution read
//! from here. See ARCHITECTURE.md, "Adding a step kind".

use super::spec::StepSpec;
use super::validate::{Known, StepAt, Validator};
use super::{
    AgentChainStep, ApprovalStep, BranchStep, ChooseStep, DebateStep, FanOutStep, LlmStep, MapStep,
    ParallelBranches, ParallelStep, PipelineStep, QualityGateStep, ReduceStep, RefineStep,
    SagaStep, ScatterGatherStep, SectionsStep, Step, SubWorkflow, SwitchStep, Timeout,
    TimeoutAction, TransformStep,
};
use crate::condition::Condition;

pub use super::validate::kinds::KINDS;

/// The step kinds.
#[derive(Debug, Clone)]
pub enum StepKind {
    /// A model call.
    Llm(Box<LlmStep>),
    /// A pure function.
    Transform(TransformStep),
    /// One HTTP request, journaled.
    Http(Box<super::HttpStep>),
    /// A model that calls tools in turns until it answers.
    Agent(Box<super::AgentStep>),
    /// Children in order; the result is the last child's.
    Sequence(Vec<Step>),
    /// First matching arm runs; else `otherwise`.
    Branch(BranchStep),
    /// Children (or agents) run side by side; optional synthesis.
    Parallel(ParallelStep),
    /// A human approves, rejects or asks for a revision.
    Approval(Box<ApprovalStep>),
    /// A human picks one of N generated variations.
    Choose(Box<ChooseStep>),
    /// A document generated section by section, each approved.
    Sections(Box<SectionsStep>),
    /// Another workflow file, run with mapped inputs; its result is returned.
    Workflow(Box<SubWorkflow>),
    /// A model classifies; the matching route runs.
    Switch(Box<SwitchStep>),
    /// Run, score, retry with feedback; the best attempt.
    QualityGate(Box<QualityGateStep>),
    /// Generate, evaluate, revise; the best iteration.
    Refine(Box<RefineStep>),
    /// Debaters argue in rounds; a judge decides.
    Debate(Box<DebateStep>),
    /// Agents in turn, each on the previous output (`sequence` with `agents`).
    AgentChain(Box<AgentChainStep>),
    /// One step per item of a list, bounded, results in input order.
    Map(Box<MapStep>),
    /// One step over a whole list.
    Reduce(Box<ReduceStep>),
    /// Different workers on one input, then an aggregate.
    FanOut(Box<FanOutStep>),
    /// Steps with compensations, undone in reverse on failure.
    Saga(Box<SagaStep>),
    /// Stages, each fed the previous output.
    Pipeline(Box<PipelineStep>),
    /// Sources side by side under a time limit, then a gather.
    ScatterGather(Box<ScatterGatherStep>),
}

/// Which policies (`retry`, `fallback`, `circuit_breaker`, `degrade`,
/// `timeout`; docs/FORMAT.md, "Policies") a step kind takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyScope {
    /// All of them: the step is one model call (`llm`).
    Call,
    /// `retry` (the whole step again under fresh keys), `timeout` and
    /// `{ step: ... }` alternatives; provider alternatives and
    /// `circuit_breaker` belong on the llm step inside.
    Composite,
    /// Only `fallback: [{ step: ... }]`: a pure step fails the same way
    /// every time (`transform`).
    Pure,
    /// None: a human gate is not retried or timed out by policy
    /// (`approval`, `choose`, `sections`).
    Gate,
}

/// Whether a map's item step of a kind may run in another worker
/// (`spes worker`): no human gate, no nested orchestration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    /// Always (`llm`, `transform`).
    Anywhere,
    /// When every child step may (`sequence`, `branch`).
    IfChildrenMay,
    /// Never: it runs where its parent runs.
    Local,
}

/// Validates one step of a kind: its spec (fields the kind does not take
/// already refused), the context keys known before it (updated with what
/// it writes), and where it is.
pub(crate) type ValidateFn =
    fn(&mut Validator<'_>, &mut StepSpec, &mut Known, &StepAt<'_>) -> Option<StepKind>;

/// One step kind: everything about it that is not its runtime data.
#[derive(Debug)]
pub struct KindDef {
    /// The YAML `kind:` name.
    pub name: &'static str,
    /// The kind-specific fields it takes (beside `name`, `kind`, `output`,
    /// `when`, `description` and the policy fields), in the order the
    /// "takes:" hint lists them.
    pub fields: &'static [&'static str],
    /// Which policies apply.
    pub policies: PolicyScope,
    /// Whether a map item of this kind may run in another worker.
    pub distribution: Distribution,
    /// A minimal valid step of this kind (one YAML flow mapping), in a
    /// workflow with inputs `text` (string) and `items` (list) and agents
    /// `a` and `b` (tests validate every one).
    pub example: &'static str,
    /// The validator.
    pub(crate) validate: ValidateFn,
}

/// The kind named `name`.
#[must_use]
pub fn by_name(name: &str) -> Option<&'static KindDef> {
    KINDS.iter().copied().find(|k| k.name == name)
}

/// What a group of child steps is, and so where their keys sit under
/// their parent's key `KEY`.
#[derive(Debug, Clone, Copy)]
pub enum Role<'a> {
    /// Under the parent's key: `KEY/NAME` (a sequence's steps, parallel
    /// children, `synthesize`, `generate`, workers, `aggregate`, stages,
    /// sources, `gather`, a reduce's step, a sub-workflow's steps, saga steps).
    Inline,
    /// A branch arm: `KEY/ARM/NAME`.
    Arm {
        /// The arm's name.
        name: &'a str,
        /// Its condition.
        condition: &'a Condition,
    },
    /// A branch's `else`: `KEY/else/NAME`.
    Else,
    /// A switch route: `KEY/ROUTE/NAME`.
    Route(&'a str),
    /// A switch's `default`: `KEY/default/NAME`.
    Default,
    /// A gate's `on_timeout` steps: `KEY/timeout/NAME`.
    Timeout,
    /// A quality gate's wrapped step (not an llm step), once per attempt:
    /// `KEY/attemptN/NAME`, walked as `KEY/attempt*/NAME`.
    Attempt,
    /// A refine's `generate` step (not an llm step), once per iteration:
    /// `KEY/iterationN/NAME`, walked as `KEY/iteration*/NAME`.
    Iteration,
    /// A map's item step, once per item: `KEY/map[I]/NAME`, walked as
    /// `KEY/map[*]/NAME`.
    Item,
    /// A saga step's compensation: `KEY/STEP/NAME`.
    Compensate {
        /// The saga step it undoes.
        of: &'a str,
    },
}

impl<'a> Role<'a> {
    /// The key segment between the parent's key and the children's
    /// (`None`: none, they sit right under it), as the walk writes it.
    #[must_use]
    pub fn segment(&self) -> Option<&'a str> {
        match *self {
            Self::Inline => None,
            Self::Arm { name, .. } => Some(name),
            Self::Else => Some("else"),
            Self::Route(r) => Some(r),
            Self::Default => Some("default"),
            Self::Timeout => Some("timeout"),
            Self::Attempt => Some("attempt*"),
            Self::Iteration => Some("iteration*"),
            Self::Item => Some("map[*]"),
            Self::Compensate { of } => Some(of),
        }
    }
}

/// A group of child steps of a step.
#[derive(Debug, Clone, Copy)]
pub struct Children<'a> {
    /// What they are, and where their keys sit.
    pub role: Role<'a>,
    /// The steps.
    pub steps: &'a [Step],
}

impl<'a> Children<'a> {
    fn inline(steps: &'a [Step]) -> Self {
        Self {
            role: Role::Inline,
            steps,
        }
    }

    fn one(role: Role<'a>, step: &'a Step) -> Self {
        Self {
            role,
            steps: std::slice::from_ref(step),
        }
    }
}

fn timeout_steps(t: Option<&Timeout>) -> Option<Children<'_>> {
    match t {
        Some(Timeout {
            then: TimeoutAction::Steps(st),
            ..
        }) => Some(Children {
            role: Role::Timeout,
            steps: st,
        }),
        _ => None,
    }
}

impl StepKind {
    /// The kind's descriptor.
    #[must_use]
    pub fn def(&self) -> &'static KindDef {
        use super::validate::kinds as k;
        match self {
            Self::Llm(_) => &k::LLM,
            Self::Transform(_) => &k::TRANSFORM,
            Self::Http(_) => &k::HTTP,
            Self::Agent(_) => &k::AGENT,
            Self::Sequence(_) => &k::SEQUENCE,
            Self::AgentChain(_) => &k::AGENT_SEQUENCE,
            Self::Branch(_) => &k::BRANCH,
            Self::Parallel(_) => &k::PARALLEL,
            Self::Approval(_) => &k::APPROVAL,
            Self::Choose(_) => &k::CHOOSE,
            Self::Sections(_) => &k::SECTIONS,
            Self::Workflow(_) => &k::WORKFLOW,
            Self::Switch(_) => &k::SWITCH,
            Self::QualityGate(_) => &k::QUALITY_GATE,
            Self::Refine(_) => &k::REFINE,
            Self::Debate(_) => &k::DEBATE,
            Self::Map(_) => &k::MAP,
            Self::Reduce(_) => &k::REDUCE,
            Self::FanOut(_) => &k::FAN_OUT,
            Self::Saga(_) => &k::SAGA,
            Self::Pipeline(_) => &k::PIPELINE,
            Self::ScatterGather(_) => &k::SCATTER_GATHER,
        }
    }

    /// The YAML kind name.
    #[must_use]
    pub fn name(&self) -> &'static str {
        self.def().name
    }

    /// The step's child steps, in the order they are walked.
    #[must_use]
    pub fn children(&self) -> Vec<Children<'_>> {
        let mut out = Vec::new();
        match self {
            Self::Llm(_)
            | Self::Transform(_)
            | Self::Http(_)
            | Self::Agent(_)
            | Self::Debate(_)
            | Self::AgentChain(_) => {}
            Self::Sequence(c) => out.push(Children::inline(c)),
            Self::Branch(b) => {
                for a in &b.arms {
                    out.push(Children {
                        role: Role::Arm {
                            name: &a.name,
                            condition: &a.condition,
                        },
                        steps: &a.steps,
                    });
                }
                if let Some(o) = &b.otherwise {
                    out.push(Children {
                        role: Role::Else,
                        steps: o,
                    });
                }
            }
            Self::Parallel(p) => {
                if let ParallelBranches::Steps(c) = &p.branches {
                    out.push(Children::inline(c));
                }
                out.extend(
                    p.synthesize
                        .as_deref()
                        .map(|s| Children::one(Role::Inline, s)),
                );
            }
            Self::Approval(a) => {
                out.extend(
                    a.generate
                        .as_deref()
                        .map(|g| Children::one(Role::Inline, g)),
                );
                out.extend(timeout_steps(a.timeout.as_ref()));
            }
            Self::Choose(c) => out.extend(timeout_steps(c.timeout.as_ref())),
            Self::Sections(c) => out.extend(timeout_steps(c.timeout.as_ref())),
            Self::Workflow(w) => out.push(Children::inline(&w.workflow.steps)),
            Self::Switch(sw) => {
                for (r, st) in &sw.routes {
                    out.push(Children {
                        role: Role::Route(r),
                        steps: st,
                    });
                }
                if let Some(d) = &sw.default {
                    out.push(Children {
                        role: Role::Default,
                        steps: d,
                    });
                }
            }
            // A wrapped llm step is called in place (`KEY/attemptN`); any
            // other kind runs as a child once per attempt.
            Self::QualityGate(q) => {
                if !matches!(q.step.kind, Self::Llm(_)) {
                    out.push(Children::one(Role::Attempt, &q.step));
                }
            }
            Self::Refine(r) => {
                if !matches!(r.generate.kind, Self::Llm(_)) {
                    out.push(Children::one(Role::Iteration, &r.generate));
                }
            }
            Self::Map(m) => out.push(Children::one(Role::Item, &m.step)),
            Self::Reduce(r) => out.push(Children::one(Role::Inline, &r.step)),
            Self::FanOut(f) => {
                out.push(Children::inline(&f.workers));
                out.extend(
                    f.aggregate
                        .as_deref()
                        .map(|a| Children::one(Role::Inline, a)),
                );
            }
            Self::Saga(sg) => {
                for a in &sg.actions {
                    out.push(Children::one(Role::Inline, &a.step));
                    if let Some(c) = &a.compensate {
                        out.push(Children::one(Role::Compensate { of: &a.step.name }, c));
                    }
                }
            }
            Self::Pipeline(p) => out.push(Children::inline(&p.stages)),
            Self::ScatterGather(g) => {
                out.push(Children::inline(&g.sources));
                out.extend(g.gather.as_deref().map(|a| Children::one(Role::Inline, a)));
            }
        }
        out
    }
}
