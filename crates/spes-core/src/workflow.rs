//! Workflows: YAML files parsed into [`spec::WorkflowSpec`], then validated
//! into the runtime [`Workflow`] that the engine executes.
//!
//! Validation catches every error before any model is called: unknown
//! agents, components, providers and step kinds, fields that do not belong
//! to a step's kind, template syntax, and context keys read before any step
//! writes them. Each error points at file:line:column with a hint.

pub mod agent;
pub mod diagram;
pub mod http;
pub mod key;
pub mod kind;
pub mod orchestration;
pub mod pattern;
pub mod spec;
pub mod validate;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::component::Component;
use crate::condition::Condition;
use crate::template::Template;
use crate::transform::TransformFn;

pub use agent::{AgentStep, AgentTool};
pub use http::HttpStep;
pub use key::StepKey;
pub use kind::{KINDS, KindDef, StepKind};
pub use orchestration::{
    FanOutStep, MapStep, OnError, PipelineStep, ReduceStep, SagaAction, SagaStep, ScatterGatherStep,
};
pub use pattern::{
    AgentChainStep, DebateStep, Examples, JudgeSees, QualityGateStep, RefineStep, SwitchStep,
};
pub use spec::InputType;
pub use validate::{ValidateEnv, parse_workflow, validate};

/// A validated workflow.
#[derive(Debug, Clone)]
pub struct Workflow {
    /// Name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// The file it came from (as the user named it).
    pub file: String,
    /// Declared inputs, in name order.
    pub inputs: Vec<Input>,
    /// Agents by name.
    pub agents: BTreeMap<String, Arc<Agent>>,
    /// Top-level steps.
    pub steps: Vec<Step>,
    /// The context key that is the workflow's result.
    pub output: Option<String>,
    /// Every component the workflow resolved (for pinning and listings).
    pub components: Vec<Arc<Component>>,
    /// Every sub-workflow file it uses, at any depth (for pinning).
    pub children: Vec<ChildSource>,
    /// Every schema file its steps name, at any depth (for pinning).
    pub schemas: Vec<ChildSource>,
    /// What one run may spend on model calls (`budget:`).
    pub budget: Option<crate::budget::Budget>,
}

/// A file a workflow uses (a sub-workflow, a schema), pinned by content hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildSource {
    /// The file, as resolved.
    pub path: String,
    /// Hex SHA-256 of its text.
    pub sha256: String,
}

/// A declared input.
#[derive(Debug, Clone)]
pub struct Input {
    /// Key in the context.
    pub name: String,
    /// Type.
    pub ty: InputType,
    /// Must be given (and has no default).
    pub required: bool,
    /// Default value.
    pub default: Option<serde_json::Value>,
    /// Description.
    pub description: Option<String>,
}

/// An agent: components plus model settings.
#[derive(Debug, Clone)]
pub struct Agent {
    /// Name.
    pub name: String,
    /// Role.
    pub role: Option<String>,
    /// System components in order: persona, instruction, output format, examples.
    pub components: Vec<Arc<Component>>,
    /// Component variable values (templates over the context).
    pub vars: BTreeMap<String, Template>,
    /// Provider name.
    pub provider: Option<String>,
    /// Model.
    pub model: Option<String>,
    /// Temperature.
    pub temperature: Option<f32>,
    /// Token limit.
    pub max_tokens: Option<u32>,
}

/// Where a step was written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loc {
    /// File.
    pub file: Arc<str>,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
}

impl std::fmt::Display for Loc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

/// One validated step.
#[derive(Debug, Clone)]
pub struct Step {
    /// Name (unique among siblings).
    pub name: String,
    /// Context key written with the result.
    pub output: Option<String>,
    /// Skip unless this holds.
    pub when: Option<Condition>,
    /// What it does.
    pub kind: StepKind,
    /// Where it was written.
    pub loc: Loc,
    /// Error-recovery policies (`retry`, `fallback`, ...); empty by default.
    pub policies: crate::policy::Policies,
}

/// `kind: workflow` (§7 composition).
#[derive(Debug, Clone)]
pub struct SubWorkflow {
    /// The file, as written.
    pub path: String,
    /// The validated child.
    pub workflow: Arc<Workflow>,
    /// Its inputs, as templates over the parent's context.
    pub inputs: BTreeMap<String, Template>,
}

/// Answer format of an llm step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Plain text.
    Text,
    /// JSON, parsed into the context.
    Json,
}

/// A model call.
#[derive(Debug, Clone)]
pub struct LlmStep {
    /// The user message.
    pub prompt: Template,
    /// Prefix for the user message when an agent runs a task (`Task: `), else empty.
    pub agent: Option<Arc<Agent>>,
    /// Extra system text.
    pub system: Option<Template>,
    /// Provider override.
    pub provider: Option<String>,
    /// Model override.
    pub model: Option<String>,
    /// Temperature override.
    pub temperature: Option<f32>,
    /// Token limit.
    pub max_tokens: Option<u32>,
    /// Stop sequences.
    pub stop: Vec<String>,
    /// Text or JSON.
    pub format: Format,
    /// JSON Schema the answer must follow (inline, or read from a file).
    pub schema: Option<crate::answer::AnswerSchema>,
    /// How many times an answer that is not what the step asked for is sent
    /// back to the model with its problems (`None`: the engine's default,
    /// `[defaults] repair`, else 1).
    pub repair: Option<u32>,
    /// What an answer cut at `max_tokens` does (`None`: `fail` for JSON,
    /// `warn` for text).
    pub on_truncation: Option<crate::answer::OnTruncation>,
}

impl LlmStep {
    /// A plain call: `prompt` as the user message, every other setting unset.
    #[must_use]
    pub fn new(prompt: Template) -> Self {
        Self {
            prompt,
            agent: None,
            system: None,
            provider: None,
            model: None,
            temperature: None,
            max_tokens: None,
            stop: Vec::new(),
            format: Format::Text,
            schema: None,
            repair: None,
            on_truncation: None,
        }
    }

    /// What an answer cut at `max_tokens` does.
    #[must_use]
    pub fn truncation(&self) -> crate::answer::OnTruncation {
        self.on_truncation
            .unwrap_or_else(|| crate::answer::OnTruncation::default_for(self.format))
    }
}

/// A pure transform.
#[derive(Debug, Clone)]
pub struct TransformStep {
    /// The function.
    pub func: TransformFn,
    /// Its name as written.
    pub func_name: String,
    /// The input.
    pub input: Template,
}

/// What a gate does when its deadline passes.
#[derive(Debug, Clone)]
pub enum TimeoutAction {
    /// Decide "approve" (choose: the first variation).
    Approve,
    /// Decide "reject".
    Reject,
    /// Run these steps; their result is the step's output.
    Steps(Vec<Step>),
}

/// A gate's deadline.
#[derive(Debug, Clone)]
pub struct Timeout {
    /// How long after the gate opens.
    pub after: std::time::Duration,
    /// What happens then.
    pub then: TimeoutAction,
}

/// `approval` (§5 `execute_with_approval`).
#[derive(Debug, Clone)]
pub struct ApprovalStep {
    /// Context key holding the draft, when no `generate` step makes it.
    pub show: Option<String>,
    /// A step producing the draft.
    pub generate: Option<Box<Step>>,
    /// Revisions allowed after the first draft.
    pub max_revisions: u32,
    /// The revision prompt (locals: `draft`, `comments`, `suggested`, `revision`).
    pub revise: Template,
    /// Who writes revisions (`None`: the default provider).
    pub agent: Option<Arc<Agent>>,
    /// Provider override for revisions.
    pub provider: Option<String>,
    /// Deadline of each review.
    pub timeout: Option<Timeout>,
}

/// `choose` (§5 `execute_with_choices`).
#[derive(Debug, Clone)]
pub struct ChooseStep {
    /// The llm step run once per variation.
    pub generate: Box<LlmStep>,
    /// How many variations.
    pub n: u32,
    /// Deadline of the pick.
    pub timeout: Option<Timeout>,
}

/// Where sections come from.
#[derive(Debug, Clone)]
pub enum Outline {
    /// Literal sections: names (strings), or objects with a `name` and any
    /// fields the section step reads (`{{ section.prompt }}`).
    List(Vec<serde_json::Value>),
    /// A template giving a list (or text, one name per line).
    Template(Template),
}

/// `sections` (§5 `execute_progressive_disclosure`).
#[derive(Debug, Clone)]
pub struct SectionsStep {
    /// Section names.
    pub outline: Outline,
    /// The llm step generating one section (locals: `section`, `previous`).
    pub section: Box<LlmStep>,
    /// Deadline of each review.
    pub timeout: Option<Timeout>,
}

/// Side-by-side work (§2 multi-agent `execute_parallel`, with synthesis).
#[derive(Debug, Clone)]
pub struct ParallelStep {
    /// What runs side by side.
    pub branches: ParallelBranches,
    /// A step over the results (`results` in its templates).
    pub synthesize: Option<Box<Step>>,
    /// Most children at once (`None`: all).
    pub concurrency: Option<usize>,
}

/// The two forms of a parallel step.
#[derive(Debug, Clone)]
pub enum ParallelBranches {
    /// Child steps; the result maps each child's name to its result.
    Steps(Vec<Step>),
    /// Each agent does the task; the result maps agent name to answer.
    Agents {
        /// The agents.
        agents: Vec<Arc<Agent>>,
        /// The task (user message).
        task: Template,
    },
}

/// A conditional.
#[derive(Debug, Clone)]
pub struct BranchStep {
    /// Arms, first match wins.
    pub arms: Vec<Arm>,
    /// When none matched; `None` records the explicit no-match result.
    pub otherwise: Option<Vec<Step>>,
}

/// The context key where a branch step records the arm it took:
/// `<name>_taken`, characters that cannot be in a key replaced by `_`.
#[must_use]
pub fn taken_key(step: &str) -> String {
    let name: String = step
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{name}_taken")
}

/// The name of an outline item: the string itself, or an object's `name`.
#[must_use]
pub fn section_name(item: &serde_json::Value) -> Option<String> {
    match item {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => match o.get("name") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            _ => None,
        },
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// One arm.
#[derive(Debug, Clone)]
pub struct Arm {
    /// Name recorded as the branch taken.
    pub name: String,
    /// Condition.
    pub condition: Condition,
    /// Steps.
    pub steps: Vec<Step>,
}

impl Workflow {
    /// Every step, depth first, with its key path. Steps that run once
    /// per item, attempt or iteration are keyed with `*` in place of the
    /// number (`KEY/map[*]/NAME`, `KEY/attempt*/NAME`).
    #[must_use]
    pub fn walk(&self) -> Vec<(String, &Step)> {
        fn go<'a>(prefix: &str, steps: &'a [Step], out: &mut Vec<(String, &'a Step)>) {
            for s in steps {
                let key = StepKey::join(prefix, &s.name);
                out.push((key.to_string(), s));
                for c in s.kind.children() {
                    match c.role.segment() {
                        None => go(&key, c.steps, out),
                        Some(seg) => go(&key.child(seg), c.steps, out),
                    }
                }
            }
        }
        let mut out = Vec::new();
        go("", &self.steps, &mut out);
        out
    }

    /// The key whose value is printed as the result.
    #[must_use]
    pub fn result_key(&self) -> Option<&str> {
        self.output
            .as_deref()
            .or_else(|| self.steps.iter().rev().find_map(|s| s.output.as_deref()))
    }
}
