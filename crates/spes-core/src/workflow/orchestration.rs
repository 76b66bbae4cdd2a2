//! Orchestration step kinds (§9 of the reference): `map`, `reduce`,
//! `fan_out`, `saga`, `pipeline` and `scatter_gather`.
//!
//! Where the reference is unsafe, these differ on purpose:
//! - `map` returns results in **input order** (the reference appends in
//!   completion order) and never drops a failure silently: see [`OnError`].
//! - `saga` records each compensation's outcome; a failed compensation is
//!   `compensation_failed`, never reported as done.
//! - `scatter_gather` keeps what arrived by the timeout and names the
//!   sources that timed out or failed; the decision is journaled, so a
//!   resumed run takes the same path.

use std::time::Duration;

use super::Step;
use crate::template::Template;

/// What a `map` does when an item fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Stop at the first failure (in input order); items already in flight
    /// finish and commit, no new item starts; the step fails.
    #[default]
    FailFast,
    /// Leave failed items out of the result list and report them in
    /// `<output>_errors` (`[{ index, item, error }]`).
    Skip,
    /// Keep `{ error }` in place of each failed item (and report them in
    /// `<output>_errors` too).
    Collect,
}

impl OnError {
    /// Parses the YAML name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "fail_fast" => Some(Self::FailFast),
            "skip" => Some(Self::Skip),
            "collect" => Some(Self::Collect),
            _ => None,
        }
    }

    /// The YAML name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FailFast => "fail_fast",
            Self::Skip => "skip",
            Self::Collect => "collect",
        }
    }
}

/// Default `map` concurrency.
pub const DEFAULT_MAP_CONCURRENCY: usize = 8;

/// `map`: one step per item of a list, at most `concurrency` at once,
/// results in input order. Item keys are `KEY/map[INDEX]/STEP`.
#[derive(Debug, Clone)]
pub struct MapStep {
    /// The context key holding the list.
    pub over: String,
    /// The item's name in the item step (default `item`); `index` is visible too.
    pub item_as: String,
    /// Most items in flight at once.
    pub concurrency: usize,
    /// The failure policy.
    pub on_error: OnError,
    /// The step run per item.
    pub step: Box<Step>,
}

/// `reduce`: one step over a whole list, visible as `items`.
#[derive(Debug, Clone)]
pub struct ReduceStep {
    /// The context key holding the list.
    pub over: String,
    /// The step (sees `items`).
    pub step: Box<Step>,
}

/// `fan_out`: different workers on one input, side by side; an aggregate
/// step over `results` (worker name → output).
#[derive(Debug, Clone)]
pub struct FanOutStep {
    /// The workers (each step is named after its worker).
    pub workers: Vec<Step>,
    /// The step over `results`; without it the result is the map itself.
    pub aggregate: Option<Box<Step>>,
    /// Most workers at once (`None`: all).
    pub concurrency: Option<usize>,
    /// What a failed worker does: fail the step (after every worker
    /// finished), be left out of `results`, or leave `{ error }` in place.
    pub on_error: OnError,
}

/// One forward step of a saga and what undoes it.
#[derive(Debug, Clone)]
pub struct SagaAction {
    /// The forward step.
    pub step: Step,
    /// Its compensation (key `SAGA/STEP/compensate`), if any.
    pub compensate: Option<Step>,
}

/// `saga`: steps in order; when one fails, the completed ones are
/// compensated in reverse order.
#[derive(Debug, Clone)]
pub struct SagaStep {
    /// The steps.
    pub actions: Vec<SagaAction>,
}

/// `pipeline`: stages in order, each seeing the previous output as `input`.
#[derive(Debug, Clone)]
pub struct PipelineStep {
    /// What the first stage sees as `input` (absent: the first stage may not read `input`).
    pub input: Option<Template>,
    /// The stages.
    pub stages: Vec<Step>,
}

/// `scatter_gather`: sources side by side, a time limit, then a gather step
/// over what arrived.
#[derive(Debug, Clone)]
pub struct ScatterGatherStep {
    /// The sources.
    pub sources: Vec<Step>,
    /// How long to wait, from the (journaled) start of the step.
    pub timeout: Duration,
    /// The step over `results`, `timed_out` and `failed`; without it the
    /// result is `{ results, timed_out, failed }`.
    pub gather: Option<Box<Step>>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use crate::component::ComponentRegistry;
    use crate::workflow::{ValidateEnv, diagram, parse_workflow, validate};

    const ALL: &str = r#"
name: all
inputs: { xs: { type: list, required: true } }
steps:
  - name: m
    kind: map
    over: xs
    concurrency: 3
    on_error: collect
    step: { kind: llm, prompt: "{{ item }}" }
    output: ys
  - { name: r, kind: reduce, over: ys, step: { kind: llm, prompt: "{{ items }}" }, output: z }
  - name: f
    kind: fan_out
    workers: [ { name: w1, step: { kind: llm, prompt: "{{ z }}" } } ]
    aggregate: { kind: llm, prompt: "{{ results }}" }
  - name: s
    kind: saga
    steps:
      - { name: a, kind: llm, prompt: hi, compensate: { kind: llm, prompt: "undo {{ error }}" } }
  - name: p
    kind: pipeline
    input: "{{ z }}"
    stages: [ { name: one, kind: llm, prompt: "{{ input }}" } ]
  - name: g
    kind: scatter_gather
    timeout: 2s
    sources: [ { name: a, kind: llm, prompt: hi } ]
    gather: { kind: llm, prompt: "{{ results }} {{ timed_out }} {{ failed }}" }
"#;

    fn all() -> crate::workflow::Workflow {
        let spec = parse_workflow("all.yaml", ALL).unwrap();
        let reg = ComponentRegistry::from_components(vec![]);
        let env = ValidateEnv {
            components: &reg,
            providers: None,
        };
        validate(spec, "all.yaml", ALL, &env)
            .unwrap_or_else(|d| panic!("{}", d.render_plain()))
            .0
    }

    #[test]
    fn every_orchestration_kind_is_walked_with_its_keys() {
        let wf = all();
        let keys: Vec<String> = wf.walk().into_iter().map(|(k, _)| k).collect();
        for k in [
            "m/map[*]/item",
            "r/reduce",
            "f/w1",
            "f/aggregate",
            "s/a",
            "s/a/compensate",
            "p/one",
            "g/a",
            "g/gather",
        ] {
            assert!(keys.contains(&k.to_owned()), "{k} missing from {keys:?}");
        }
    }

    #[test]
    fn diagrams_show_every_orchestration_kind() {
        let wf = all();
        let text = diagram::text(&wf);
        assert!(
            text.contains("- m (map over xs · 3 at once · on_error collect) → ys"),
            "{text}"
        );
        assert!(text.contains("- g (scatter_gather · timeout 2s)"), "{text}");
        assert!(text.contains("↺ undo:"), "{text}");
        let m = diagram::mermaid(&wf);
        assert!(m.contains("-.->|on failure|"), "{m}");
        assert!(m.contains("\"f (fan_out · 1 workers)\""), "{m}");
        assert!(m.contains("\"p (pipeline · 1 stages)\""), "{m}");
    }
}
