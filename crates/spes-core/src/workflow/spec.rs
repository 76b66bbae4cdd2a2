//! Serde mirror of workflow YAML files. Every field is optional here so that
//! validation can report *all* problems with locations; `deny_unknown_fields`
//! catches typos. Spans come from [`serde_saphyr::Spanned`].

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

pub mod policy;

pub use policy::{AlternativeSpec, BreakerSpec, RetrySpec};
pub mod pattern;

pub use pattern::{CheckItemSpec, CriterionSpec, EvaluatorSpec, ExamplesSpec, JudgeSpec};

/// A value and where it was written.
pub type S<T> = Spanned<T>;

/// A whole workflow file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowSpec {
    /// Workflow name.
    pub name: Option<S<String>>,
    /// What it does.
    pub description: Option<String>,
    /// The workflow's own version (semver), informational.
    pub version: Option<S<String>>,
    /// Declared inputs.
    #[serde(default)]
    pub inputs: BTreeMap<String, S<InputSpec>>,
    /// Named agents.
    #[serde(default)]
    pub agents: BTreeMap<String, S<AgentSpec>>,
    /// The steps, run in order.
    pub steps: Option<S<Vec<Box<StepSpec>>>>,
    /// Context key printed as the result (default: the last step's output).
    pub output: Option<S<String>>,
    /// Reusable step definitions, used with `use: NAME`.
    #[serde(default)]
    pub definitions: BTreeMap<String, S<StepSpec>>,
    /// What one run may spend on model calls.
    pub budget: Option<S<crate::budget::Budget>>,
}

/// The type of an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    /// Text (the default).
    String,
    /// Whole number.
    Integer,
    /// Any number.
    Number,
    /// true / false.
    Boolean,
    /// A list (JSON on the command line).
    List,
    /// An object (JSON on the command line).
    Object,
}

impl InputType {
    /// The YAML name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Integer => "integer",
            Self::Number => "number",
            Self::Boolean => "boolean",
            Self::List => "list",
            Self::Object => "object",
        }
    }
}

/// `inputs: { topic: { type: string, required: true } }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Type (default string).
    #[serde(rename = "type")]
    pub ty: Option<InputType>,
    /// Must be given.
    #[serde(default)]
    pub required: bool,
    /// Value when not given.
    pub default: Option<serde_json::Value>,
    /// Shown in `--help`-like listings.
    pub description: Option<String>,
}

/// `agents: { analyst: { persona: persona/analyst@^1, ... } }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// A short role description.
    pub role: Option<String>,
    /// Persona component reference.
    pub persona: Option<S<String>>,
    /// Instruction component reference.
    pub instruction: Option<S<String>>,
    /// Output format component reference.
    pub output_format: Option<S<String>>,
    /// Example component references.
    #[serde(default)]
    pub examples: Vec<S<String>>,
    /// Values for component variables (templates over the context).
    #[serde(default)]
    pub vars: BTreeMap<String, S<String>>,
    /// Provider name (from spes.toml).
    pub provider: Option<S<String>>,
    /// Model override.
    pub model: Option<String>,
    /// Sampling temperature.
    pub temperature: Option<S<f32>>,
    /// Token limit.
    pub max_tokens: Option<u32>,
}

/// A condition: an expression string, or a structured check.
#[derive(Debug, Clone)]
pub enum ConditionSpec {
    /// `"'error' in text"`.
    Expr(String),
    /// `{ keyword: [...], in: text }` and friends.
    Check(Box<CheckSpec>),
}

/// Structured condition; exactly one of the check fields is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    /// Any of these words, case-insensitive.
    pub keyword: Option<OneOrMany>,
    /// Length range in characters.
    pub length: Option<RangeSpec>,
    /// A regex that must match somewhere.
    pub regex: Option<S<String>>,
    /// An expression (same as the string form).
    pub expr: Option<S<String>>,
    /// A yes/no question for a model.
    pub ask: Option<S<String>>,
    /// The agent that answers `ask`.
    pub agent: Option<S<String>>,
    /// The context key that keyword/length/regex look at.
    #[serde(rename = "in")]
    pub input: Option<S<String>>,
    /// Negates the check.
    #[serde(default)]
    pub not: bool,
    /// `keyword` matches anywhere in the text, not only whole words.
    #[serde(default)]
    pub substring: bool,
}

/// A string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl OneOrMany {
    /// As a list.
    #[must_use]
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// `{ min: 10, max: 200 }`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeSpec {
    /// Inclusive minimum.
    pub min: Option<u64>,
    /// Inclusive maximum.
    pub max: Option<u64>,
}

impl<'de> Deserialize<'de> for ConditionSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ConditionSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "an expression string or a map with one of keyword, length, regex, expr, ask",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ConditionSpec, E> {
                Ok(ConditionSpec::Expr(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ConditionSpec, E> {
                Ok(ConditionSpec::Expr(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ConditionSpec, A::Error> {
                CheckSpec::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|c| ConditionSpec::Check(Box::new(c)))
            }
        }
        d.deserialize_any(V)
    }
}

/// One `{ if: COND, steps: [...] }` arm of a branch.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchArmSpec {
    /// The condition.
    #[serde(rename = "if")]
    pub condition: S<ConditionSpec>,
    /// Steps run when it holds.
    pub steps: S<Vec<StepSpec>>,
    /// A name for the arm (recorded as the branch taken); default `arm1`, `arm2`...
    pub name: Option<S<String>>,
}

/// One step, any kind. Fields that do not belong to the step's kind are
/// reported by validation with their location.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// Unique among siblings; part of the step key.
    pub name: Option<S<String>>,
    /// `llm`, `transform`, `branch`, `sequence`, ...
    pub kind: Option<S<String>>,
    /// Context key the step's result is written to.
    pub output: Option<S<String>>,
    /// Skip the step unless this holds.
    pub when: Option<S<ConditionSpec>>,
    /// Human description (shown in diagrams).
    pub description: Option<String>,

    // --- llm ---
    /// Prompt template (user message).
    pub prompt: Option<S<String>>,
    /// Agent name.
    pub agent: Option<S<String>>,
    /// Task template for the agent.
    pub task: Option<S<String>>,
    /// Extra system text (template).
    pub system: Option<S<String>>,
    /// Provider override.
    pub provider: Option<S<String>>,
    /// Model override.
    pub model: Option<S<String>>,
    /// Temperature override.
    pub temperature: Option<S<f32>>,
    /// Token limit.
    pub max_tokens: Option<S<u32>>,
    /// Stop sequences.
    pub stop: Option<S<Vec<String>>>,
    /// `text` (default) or `json` (the answer is parsed as JSON).
    pub format: Option<S<String>>,
    /// A JSON Schema for the answer: inline, or a file path relative to the workflow.
    pub schema: Option<S<serde_json::Value>>,
    /// How many times an answer that is not what the step asked for is sent
    /// back to the model with its problems (default 1, or `[defaults] repair`).
    pub repair: Option<S<u32>>,
    /// What an answer cut at `max_tokens` does: `fail` or `warn`.
    pub on_truncation: Option<S<String>>,

    // --- composition ---
    /// A reusable definition (from `definitions:`) this step instantiates.
    #[serde(rename = "use")]
    pub use_def: Option<S<String>>,
    /// The sub-workflow file (`kind: workflow`), relative to this file.
    pub path: Option<S<String>>,
    /// The sub-workflow's inputs: `{ key: template }`.
    pub inputs: Option<S<BTreeMap<String, S<String>>>>,

    // --- transform ---
    /// The function: json_parse, json_path, regex, length, count, split, join, lowercase, uppercase, trim, template.
    #[serde(rename = "fn")]
    pub func: Option<S<String>>,
    /// The input (template; a lone `{{ expr }}` keeps its type).
    pub input: Option<S<String>>,
    /// Function arguments.
    pub args: Option<S<BTreeMap<String, serde_json::Value>>>,

    // --- sequence / branch ---
    /// Child steps.
    pub steps: Option<S<Vec<Box<Self>>>>,
    /// Branch shorthand: one condition.
    #[serde(rename = "if")]
    pub condition: Option<S<ConditionSpec>>,
    /// Branch shorthand: steps when the condition holds.
    pub then: Option<S<Vec<Self>>>,
    /// Steps when no arm matched.
    #[serde(rename = "else")]
    pub otherwise: Option<S<Vec<Self>>>,
    /// Several arms, first match wins.
    pub branches: Option<S<Vec<BranchArmSpec>>>,

    // --- parallel ---
    /// Agents that each do `task` (parallel).
    pub agents: Option<S<Vec<String>>>,
    /// A step run over the parallel results (`results` in its templates).
    pub synthesize: Option<S<Box<Self>>>,
    /// How many children run at once (default: all).
    pub concurrency: Option<S<u32>>,

    // --- human in the loop: approval, choose, sections ---
    /// The context key whose text a reviewer approves (approval).
    pub show: Option<S<String>>,
    /// A step producing the draft (approval), the variations (choose) or each iteration (refine; any kind).
    pub generate: Option<S<Box<Self>>>,
    /// Revisions allowed after the first draft (approval; default 2).
    pub max_revisions: Option<S<u32>>,
    /// The revision prompt (approval); sees `draft`, `comments`, `suggested`.
    pub revise: Option<S<String>>,
    /// How long a gate waits before its timeout path (`3d`).
    pub deadline: Option<S<String>>,
    /// What happens at the deadline: `approve`, `reject`, or steps.
    pub on_timeout: Option<S<OnTimeoutSpec>>,
    /// How many variations (choose; default 3).
    pub n: Option<S<u32>>,
    /// Section names (sections): a list, or a template giving a list.
    pub outline: Option<S<OutlineSpec>>,
    /// The step generating one section (sections); sees `section` and `previous`.
    pub section: Option<S<Box<Self>>>,

    // --- policies (any kind that makes sense; see validate/policy.rs) ---
    /// Retry attempts, backoff and answer validation.
    pub retry: Option<S<RetrySpec>>,
    /// Alternatives tried in order when the step gives up.
    pub fallback: Option<S<Vec<AlternativeSpec>>>,
    /// A circuit breaker shared by every run in the process.
    pub circuit_breaker: Option<S<BreakerSpec>>,
    /// Quality levels, best first.
    pub degrade: Option<S<Vec<AlternativeSpec>>>,
    /// Bound on each attempt's wall time (`30s`); for `scatter_gather`, how long it waits for its sources.
    pub timeout: Option<S<String>>,
    // --- switch, quality_gate, refine, debate ---
    /// The classifying llm step (switch).
    pub classify: Option<S<Box<Self>>>,
    /// Route name -> steps (switch).
    pub routes: Option<S<BTreeMap<String, S<Vec<Self>>>>>,
    /// Steps when no route matched (switch).
    pub default: Option<S<Vec<Self>>>,
    /// The step run on each attempt (quality_gate; any kind), per item (map) or once over the list (reduce).
    pub step: Option<S<Box<Self>>>,
    /// How outputs are scored (quality_gate, refine).
    pub evaluator: Option<S<EvaluatorSpec>>,
    /// Score needed to stop, 0..1 (quality_gate, refine).
    pub threshold: Option<S<f64>>,
    /// Attempts in all (quality_gate; default 3).
    pub max_attempts: Option<S<u32>>,
    /// Appended to the prompt on a retry (quality_gate; template).
    pub feedback: Option<S<String>>,
    /// Iterations in all (refine; default 5).
    pub max_iterations: Option<S<u32>>,
    /// Good and bad examples (refine).
    pub examples: Option<S<ExamplesSpec>>,
    /// Debating agents (debate).
    pub debaters: Option<S<Vec<String>>>,
    /// The question debated (debate; template).
    pub topic: Option<S<String>>,
    /// Rounds counting the opening positions (debate; default 2).
    pub rounds: Option<S<u32>>,
    /// The judging agent (debate).
    pub judge: Option<S<String>>,
    /// `all`, `last` or `summary` (debate).
    pub judge_sees: Option<S<String>>,
    // --- http ---
    /// `GET` (default), `POST`, `PUT`, `PATCH`, `DELETE` or `HEAD`.
    pub method: Option<S<String>>,
    /// The URL (a template).
    pub url: Option<S<String>>,
    /// Request headers: a template, or `{ env: VAR, prefix: "..." }` for a secret.
    pub headers: Option<S<BTreeMap<String, serde_json::Value>>>,
    /// The JSON body; its strings are templates.
    pub body: Option<S<serde_json::Value>>,
    /// Statuses that count as success (default: any 2xx).
    pub expect: Option<S<Vec<u16>>>,
    /// `json` (default) or `text`.
    pub response: Option<S<String>>,
    /// Largest response body read, in bytes (default 1 MiB).
    pub max_bytes: Option<S<u64>>,

    // --- agent ---
    /// Tools the agent may call: `{ http: {...} }` or a registered name.
    pub tools: Option<S<Vec<serde_json::Value>>>,
    /// Model turns at most (default 10).
    pub max_turns: Option<S<u32>>,
    /// `auto` (default), `none`, `required` or `{ tool: NAME }`.
    pub tool_choice: Option<S<serde_json::Value>>,
    /// Tools whose every call waits for a human's approval.
    pub approve_tools: Option<S<Vec<String>>>,

    // --- orchestration: map, reduce, fan_out, saga, pipeline, scatter_gather ---
    /// The context key holding the list (map, reduce).
    pub over: Option<S<String>>,
    /// The item's name in the item step's templates (map; default `item`).
    #[serde(rename = "as")]
    pub item_as: Option<S<String>>,
    /// What a failed item does (map): `fail_fast`, `skip` or `collect`.
    pub on_error: Option<S<String>>,
    /// Named workers run side by side on the same context (fan_out).
    pub workers: Option<S<Vec<WorkerSpec>>>,
    /// The step over the workers' results (fan_out; sees `results`).
    pub aggregate: Option<S<Box<Self>>>,
    /// The step undoing this one when a later saga step fails (inside a saga).
    pub compensate: Option<S<Box<Self>>>,
    /// Stages run in order, each seeing the previous output as `input` (pipeline).
    pub stages: Option<S<Vec<Self>>>,
    /// Steps queried side by side (scatter_gather).
    pub sources: Option<S<Vec<Self>>>,
    /// The step over what arrived (scatter_gather; sees `results`, `timed_out`, `failed`).
    pub gather: Option<S<Box<Self>>>,
}

/// One `{ name, step }` worker of a fan_out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSpec {
    /// The worker's name: its key in `results` and in the step key.
    pub name: S<String>,
    /// What it does.
    pub step: S<Box<StepSpec>>,
}

/// `on_timeout: approve | reject | [steps]`.
#[derive(Debug, Clone)]
pub enum OnTimeoutSpec {
    /// A decision taken for the human.
    Action(String),
    /// Steps to run instead.
    Steps(Vec<StepSpec>),
}

impl<'de> Deserialize<'de> for OnTimeoutSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OnTimeoutSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("approve, reject, or a list of steps")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OnTimeoutSpec, E> {
                Ok(OnTimeoutSpec::Action(v.to_owned()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<OnTimeoutSpec, A::Error> {
                Vec::<StepSpec>::deserialize(de::value::SeqAccessDeserializer::new(seq))
                    .map(OnTimeoutSpec::Steps)
            }
        }
        d.deserialize_any(V)
    }
}

/// `outline: [a, b]`, `outline: [{ name: a, prompt: ... }]` or `outline: "{{ plan }}"`.
#[derive(Debug, Clone)]
pub enum OutlineSpec {
    /// Literal sections: names, or objects with a `name` and any fields.
    List(Vec<serde_json::Value>),
    /// A template giving a list (or lines).
    Template(String),
}

impl<'de> Deserialize<'de> for OutlineSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OutlineSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of section names, or a template giving one")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OutlineSpec, E> {
                Ok(OutlineSpec::Template(v.to_owned()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<OutlineSpec, A::Error> {
                Vec::<serde_json::Value>::deserialize(de::value::SeqAccessDeserializer::new(seq))
                    .map(OutlineSpec::List)
            }
        }
        d.deserialize_any(V)
    }
}

impl StepSpec {
    /// A step with no field set.
    #[must_use]
    pub fn empty() -> Self {
        Self::default()
    }
}
