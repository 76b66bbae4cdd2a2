//! Validation of the control-flow kinds: `sequence` (both forms), `branch`
//! and `parallel`.

use std::collections::HashSet;

use serde_saphyr::Spanned;

use crate::workflow::StepKey;
use crate::workflow::kind::{Distribution, KindDef, PolicyScope};
use crate::workflow::spec::{BranchArmSpec, ConditionSpec, StepSpec};
use crate::workflow::validate::{
    Known, MAX_CONCURRENCY, Sp, Validator, closest, is_step_name, span,
};
use crate::workflow::validate::{StepAt, is_key_name};
use crate::workflow::{Arm, BranchStep, ParallelBranches, ParallelStep, StepKind};

/// `sequence`: children in order; the result is the last child's.
pub(crate) const SEQUENCE: KindDef = KindDef {
    name: "sequence",
    fields: &["steps", "agents", "task"],
    policies: PolicyScope::Composite,
    distribution: Distribution::IfChildrenMay,
    example: r#"{ name: s, kind: sequence, steps: [ { name: a, kind: llm, prompt: hi } ] }"#,
    validate: validate_sequence,
};

/// `sequence` with `agents` + `task`: agents in turn, each on the previous
/// output. The same kind as [`SEQUENCE`] (one name, one validator; not
/// listed apart in `KINDS`); its own descriptor because it does not run
/// in another worker.
pub(crate) const AGENT_SEQUENCE: KindDef = KindDef {
    distribution: Distribution::Local,
    example: r#"{ name: s, kind: sequence, agents: [a, b], task: "Improve {{ text }}" }"#,
    ..SEQUENCE
};

/// `branch`: the first matching arm runs; else `else`.
pub(crate) const BRANCH: KindDef = KindDef {
    name: "branch",
    fields: &["if", "then", "else", "branches"],
    policies: PolicyScope::Composite,
    distribution: Distribution::IfChildrenMay,
    example: r#"{ name: s, kind: branch, if: "text | length > 3", then: [ { name: a, kind: llm, prompt: hi } ] }"#,
    validate: validate_branch,
};

/// `parallel`: children (or agents) side by side; optional synthesis.
pub(crate) const PARALLEL: KindDef = KindDef {
    name: "parallel",
    fields: &["steps", "agents", "task", "synthesize", "concurrency"],
    policies: PolicyScope::Composite,
    distribution: Distribution::Local,
    example: r#"{ name: s, kind: parallel, steps: [ { name: a, kind: llm, prompt: hi }, { name: b, kind: llm, prompt: ho } ] }"#,
    validate: validate_parallel,
};

fn validate_sequence(
    v: &mut Validator<'_>,
    s: &mut StepSpec,
    known: &mut Known,
    at: &StepAt<'_>,
) -> Option<StepKind> {
    if s.agents.is_some() || s.task.is_some() {
        return Some(StepKind::AgentChain(Box::new(
            v.agent_chain(s, known, at.path, at.kind_at)?,
        )));
    }
    match s.steps.take() {
        Some(ch) if !ch.value.is_empty() => Some(StepKind::Sequence(
            v.steps(ch.value, known, at.path, at.kind_at),
        )),
        Some(ch) => {
            v.err(
                "spes::workflow::no_steps",
                format!("{}: `steps` is empty", at.what),
                span(&ch),
                "add steps",
            );
            None
        }
        None => {
            v.err(
                "spes::workflow::missing_field",
                format!("{}: a sequence needs `steps`", at.what),
                at.kind_at,
                "add `steps:` with the child steps",
            );
            None
        }
    }
}

fn validate_branch(
    v: &mut Validator<'_>,
    s: &mut StepSpec,
    known: &mut Known,
    at: &StepAt<'_>,
) -> Option<StepKind> {
    let b = v.branch(
        s.condition.take(),
        s.then.take(),
        s.branches.take(),
        s.otherwise.take(),
        known,
        at.path,
        at.kind_at,
    )?;
    // The arm taken is recorded in the context.
    known.write(&crate::workflow::taken_key(at.name));
    Some(StepKind::Branch(b))
}

fn validate_parallel(
    v: &mut Validator<'_>,
    s: &mut StepSpec,
    known: &mut Known,
    at: &StepAt<'_>,
) -> Option<StepKind> {
    let p = v.parallel(s, known, at.path, at.kind_at)?;
    if let Some(o) = &s.output
        && p.synthesize.is_some()
        && is_key_name(&o.value)
    {
        // The workers' own results stay beside the synthesis.
        known.write(&format!("{}_results", o.value));
    }
    Some(StepKind::Parallel(p))
}

impl Validator<'_> {
    pub(crate) fn parallel(
        &mut self,
        s: &StepSpec,
        known: &mut Known,
        path: &str,
        kind_at: Sp,
    ) -> Option<ParallelStep> {
        let what = format!("step `{path}`");
        let before = known.clone();
        let branches = match (&s.steps, &s.agents, &s.task) {
            (Some(_), Some(a), _) => {
                self.err(
                    "spes::workflow::parallel_forms",
                    format!("{what}: use either `steps` or `agents` + `task`, not both"),
                    span(a),
                    "a parallel step runs its `steps` side by side, or runs `task` with each of `agents`",
                );
                return None;
            }
            (Some(_), None, Some(t)) => {
                self.err(
                    "spes::workflow::field_not_for_kind",
                    format!("{what}: `task` goes with `agents`, not with `steps`"),
                    span(t),
                    "remove `task`, or replace `steps` with `agents: [...]`",
                );
                return None;
            }
            (Some(children), None, None) => {
                if children.value.is_empty() {
                    self.err(
                        "spes::workflow::no_steps",
                        format!("{what}: `steps` is empty"),
                        span(children),
                        "add steps",
                    );
                    return None;
                }
                // Children see the context as it was before the parallel
                // step: a sibling's output is not visible to them.
                let mut names = HashSet::new();
                let mut out = Vec::new();
                let mut after = before.clone();
                for child in &children.value {
                    let mut k = before.clone();
                    if let Some(st) = self.step((**child).clone(), &mut k, path, &mut names) {
                        out.push(st);
                    }
                    for w in k.definite.difference(&before.definite) {
                        after.definite.insert(w.clone());
                    }
                    for w in k.maybe {
                        if !after.definite.contains(&w) {
                            after.maybe.insert(w);
                        }
                    }
                }
                *known = after;
                ParallelBranches::Steps(out)
            }
            (None, Some(a), Some(t)) => {
                let mut agents = Vec::new();
                for name in &a.value {
                    if let Some(ag) = self.agents.get(name).cloned() {
                        self.check_agent_vars(&ag, span(a), known);
                        agents.push(ag);
                    } else {
                        let names: Vec<&str> = self.agents.keys().map(String::as_str).collect();
                        let hint = closest(name, names.iter().copied()).map_or_else(
                            || format!("declared agents: {}", names.join(", ")),
                            |c| format!("did you mean `{c}`?"),
                        );
                        self.err(
                            "spes::workflow::unknown_agent",
                            format!("unknown agent `{name}`"),
                            span(a),
                            hint,
                        );
                    }
                }
                if a.value.is_empty() {
                    self.err(
                        "spes::workflow::no_steps",
                        format!("{what}: `agents` is empty"),
                        span(a),
                        "name at least one agent",
                    );
                }
                let task = self.template(t, &what)?;
                let reads: Vec<String> = task.reads().iter().cloned().collect();
                self.check_reads(reads.iter(), span(t), known, &[], &what);
                ParallelBranches::Agents { agents, task }
            }
            (None, Some(a), None) => {
                self.err(
                    "spes::workflow::missing_field",
                    format!("{what}: `agents` needs a `task`"),
                    span(a),
                    "add `task: \"...\"` (each agent does it)",
                );
                return None;
            }
            (None, None, _) => {
                self.err(
                    "spes::workflow::missing_field",
                    format!("{what}: a parallel step needs `steps`, or `agents` and `task`"),
                    kind_at,
                    "add `steps: [...]` (run side by side) or `agents: [a, b]` with `task: ...`",
                );
                return None;
            }
        };
        let synthesize = match &s.synthesize {
            Some(sy) => {
                let mut k = known.clone();
                k.write("results");
                let mut names = HashSet::new();
                let mut spec = (*sy.value).clone();
                if spec.name.is_none() {
                    spec.name = Some(Spanned::new(
                        "synthesize".to_owned(),
                        sy.referenced,
                        sy.defined,
                    ));
                }
                Some(Box::new(self.step(spec, &mut k, path, &mut names)?))
            }
            None => None,
        };
        let concurrency = match &s.concurrency {
            Some(c) if c.value == 0 => {
                self.err(
                    "spes::workflow::bad_concurrency",
                    format!("{what}: concurrency must be at least 1"),
                    span(c),
                    "remove it to run all at once",
                );
                None
            }
            Some(c) if c.value > MAX_CONCURRENCY => {
                self.err(
                    "spes::workflow::bad_concurrency",
                    format!(
                        "{what}: concurrency = {}; at most {MAX_CONCURRENCY} is allowed",
                        c.value
                    ),
                    span(c),
                    format!("pick a concurrency between 1 and {MAX_CONCURRENCY}"),
                );
                None
            }
            Some(c) => usize::try_from(c.value).ok(),
            None => None,
        };
        Some(ParallelStep {
            branches,
            synthesize,
            concurrency,
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn branch(
        &mut self,
        cond: Option<Spanned<ConditionSpec>>,
        then: Option<Spanned<Vec<StepSpec>>>,
        branches: Option<Spanned<Vec<BranchArmSpec>>>,
        otherwise: Option<Spanned<Vec<StepSpec>>>,
        known: &mut Known,
        path: &str,
        kind_at: Sp,
    ) -> Option<BranchStep> {
        let what = format!("step `{path}`");
        let mut arm_specs: Vec<(String, Spanned<ConditionSpec>, Spanned<Vec<StepSpec>>)> =
            Vec::new();
        match (cond, then, branches) {
            (Some(c), Some(t), None) => arm_specs.push(("then".into(), c, t)),
            (None, None, Some(b)) => {
                if b.value.is_empty() {
                    self.err(
                        "spes::workflow::no_steps",
                        format!("{what}: `branches` is empty"),
                        span(&b),
                        "add arms",
                    );
                }
                let mut seen = HashSet::new();
                for (i, arm) in b.value.into_iter().enumerate() {
                    let name = arm
                        .name
                        .as_ref()
                        .map_or_else(|| format!("arm{}", i + 1), |n| n.value.clone());
                    if !is_step_name(&name) || name == "else" || !seen.insert(name.clone()) {
                        self.err(
                            "spes::workflow::bad_step_name",
                            format!("{what}: arm name `{name}` is invalid or repeated"),
                            arm.name.as_ref().and_then(span),
                            "arm names use letters, digits, _ - . and are unique (not `else`)",
                        );
                    }
                    arm_specs.push((name, arm.condition, arm.steps));
                }
            }
            (Some(c), None, None) => {
                self.err(
                    "spes::workflow::missing_field",
                    format!("{what}: `if` without `then`"),
                    span(&c),
                    "add `then:` with the steps to run when the condition holds",
                );
                return None;
            }
            (None, Some(t), None) => {
                self.err(
                    "spes::workflow::missing_field",
                    format!("{what}: `then` without `if`"),
                    span(&t),
                    "add `if:` with the condition",
                );
                return None;
            }
            (None, None, None) => {
                self.err(
                    "spes::workflow::missing_field",
                    format!("{what}: a branch needs `if` + `then`, or `branches`"),
                    kind_at,
                    "add `if: \"'error' in text\"` and `then: [...]`, or `branches: [{ if: ..., steps: [...] }]`",
                );
                return None;
            }
            (_, _, Some(b)) => {
                self.err(
                    "spes::workflow::branch_forms",
                    format!("{what}: use either `if`/`then` or `branches`, not both"),
                    span(&b),
                    "move the `if`/`then` pair into `branches` as its first arm",
                );
                return None;
            }
        }
        let before = known.clone();
        let mut outcomes = Vec::new();
        let mut arms = Vec::new();
        for (name, c, steps) in arm_specs {
            let condition = self.condition(&c, &before, &format!("{what} arm `{name}`"));
            let mut k = before.clone();
            let at = span(&steps);
            let st = self.steps(steps.value, &mut k, &StepKey::join(path, &name), at);
            outcomes.push(k);
            if let Some(condition) = condition {
                arms.push(Arm {
                    name,
                    condition,
                    steps: st,
                });
            }
        }
        let otherwise = otherwise.map(|o| {
            let mut k = before.clone();
            let at = span(&o);
            let st = self.steps(o.value, &mut k, &StepKey::join(path, "else"), at);
            outcomes.push(k);
            st
        });
        if otherwise.is_none() {
            outcomes.push(before.clone());
        }
        *known = Known::join(&before, &outcomes);
        Some(BranchStep { arms, otherwise })
    }
}
