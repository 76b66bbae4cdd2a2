//! Validation of `switch`, `quality_gate`, `refine`, `debate`, the agent
//! form of `sequence`, and evaluators.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::Value;
use serde_saphyr::Spanned;

use crate::evaluate::{
    CHECK_NAMES, Check, CheckKind, Criterion, DEFAULT_CRITERION_THRESHOLD, DEFAULT_THRESHOLD,
    Evaluator, Judge, Measure,
};
use crate::template::Template;
use crate::workflow::StepKey;
use crate::workflow::kind::{Distribution, KindDef, PolicyScope};
use crate::workflow::pattern::{
    AgentChainStep, DEFAULT_GATE_FEEDBACK, DebateStep, Examples, JudgeSees, QualityGateStep,
    RefineStep, SwitchStep,
};
use crate::workflow::spec::{CheckItemSpec, EvaluatorSpec, JudgeSpec, StepSpec};
use crate::workflow::validate::StepAt;
use crate::workflow::validate::{Known, Sp, Validator, closest, is_step_name, span};
use crate::workflow::{Agent, Step, StepKind};

/// Locals a quality gate's `feedback` template sees.
const FEEDBACK_LOCALS: &[&str] = &["previous", "score", "feedback", "attempt", "threshold"];

/// `switch`: a model classifies; the matching route runs.
pub(crate) const SWITCH: KindDef = KindDef {
    name: "switch",
    fields: &["classify", "routes", "default"],
    policies: PolicyScope::Composite,
    distribution: Distribution::Local,
    example: r#"{ name: s, kind: switch, classify: { prompt: "Classify {{ text }}" }, routes: { bug: [ { name: a, kind: llm, prompt: hi } ] } }"#,
    validate: validate_switch,
};

/// `quality_gate`: run, score, retry with feedback; the best attempt.
pub(crate) const QUALITY_GATE: KindDef = KindDef {
    name: "quality_gate",
    fields: &["step", "evaluator", "threshold", "max_attempts", "feedback"],
    policies: PolicyScope::Composite,
    distribution: Distribution::Local,
    example: r#"{ name: s, kind: quality_gate, step: { prompt: "Write about {{ text }}" }, evaluator: { checks: [ { contains: risk } ] } }"#,
    validate: validate_quality_gate,
};

/// `refine`: generate, evaluate, revise; the best iteration.
pub(crate) const REFINE: KindDef = KindDef {
    name: "refine",
    fields: &[
        "generate",
        "evaluator",
        "threshold",
        "max_iterations",
        "examples",
    ],
    policies: PolicyScope::Composite,
    distribution: Distribution::Local,
    example: r#"{ name: s, kind: refine, generate: { prompt: "Write about {{ text }}" }, evaluator: { checks: [ { contains: risk } ] } }"#,
    validate: validate_refine,
};

/// `debate`: debaters argue in rounds; a judge decides.
pub(crate) const DEBATE: KindDef = KindDef {
    name: "debate",
    fields: &["debaters", "topic", "rounds", "judge", "judge_sees"],
    policies: PolicyScope::Composite,
    distribution: Distribution::Local,
    example: r#"{ name: s, kind: debate, debaters: [a, b], topic: "Is {{ text }} true?", judge: a }"#,
    validate: validate_debate,
};

fn validate_switch(
    v: &mut Validator<'_>,
    s: &mut StepSpec,
    known: &mut Known,
    at: &StepAt<'_>,
) -> Option<StepKind> {
    Some(StepKind::Switch(Box::new(
        v.switch(s, known, at.path, at.kind_at)?,
    )))
}

fn validate_quality_gate(
    v: &mut Validator<'_>,
    s: &mut StepSpec,
    known: &mut Known,
    at: &StepAt<'_>,
) -> Option<StepKind> {
    Some(StepKind::QualityGate(Box::new(
        v.quality_gate(s, known, at.path, at.kind_at)?,
    )))
}

fn validate_refine(
    v: &mut Validator<'_>,
    s: &mut StepSpec,
    known: &mut Known,
    at: &StepAt<'_>,
) -> Option<StepKind> {
    Some(StepKind::Refine(Box::new(
        v.refine(s, known, at.path, at.kind_at)?,
    )))
}

fn validate_debate(
    v: &mut Validator<'_>,
    s: &mut StepSpec,
    known: &mut Known,
    at: &StepAt<'_>,
) -> Option<StepKind> {
    Some(StepKind::Debate(Box::new(
        v.debate(s, known, at.path, at.kind_at)?,
    )))
}

impl Validator<'_> {
    fn agent_list(&mut self, list: &Spanned<Vec<String>>, known: &Known) -> Vec<Arc<Agent>> {
        let mut out = Vec::new();
        for name in &list.value {
            let named = Spanned::new(name.clone(), list.referenced, list.defined);
            if let Some(a) = self.agent_named(&named, known) {
                out.push(a);
            }
        }
        out
    }

    fn template_reading(
        &mut self,
        t: &Spanned<String>,
        known: &Known,
        locals: &[&str],
        what: &str,
    ) -> Option<Template> {
        let tpl = self.template(t, what)?;
        let reads: Vec<String> = tpl.reads().iter().cloned().collect();
        self.check_reads(reads.iter(), span(t), known, locals, what);
        Some(tpl)
    }

    fn unit_interval(&mut self, v: &Spanned<f64>, field: &str, what: &str) -> Option<f64> {
        if (0.0..=1.0).contains(&v.value) {
            Some(v.value)
        } else {
            self.err(
                "spes::workflow::bad_threshold",
                format!("{what}: {field} {} is outside 0..1", v.value),
                span(v),
                "scores run from 0 (worst) to 1 (best); write e.g. 0.8",
            );
            None
        }
    }

    fn at_least_one(
        &mut self,
        v: Option<&Spanned<u32>>,
        field: &str,
        default: u32,
        what: &str,
    ) -> u32 {
        let most = crate::workflow::validate::max_count(field);
        match v {
            Some(n) if n.value == 0 => {
                self.err(
                    "spes::workflow::bad_count",
                    format!("{what}: {field} must be at least 1"),
                    span(n),
                    format!("remove it for the default ({default})"),
                );
                default
            }
            Some(n) if n.value > most => {
                self.err(
                    "spes::workflow::bad_count",
                    format!("{what}: {field} = {}; at most {most} is allowed", n.value),
                    span(n),
                    format!("pick {field} between 1 and {most} (the default is {default})"),
                );
                default
            }
            Some(n) => n.value,
            None => default,
        }
    }

    /// A nested llm step's own `output` would never be written: say so.
    fn no_nested_output(&mut self, sy: &Spanned<Box<StepSpec>>, field: &str, what: &str) {
        if let Some(o) = &sy.value.output {
            self.err(
                "spes::workflow::nested_output",
                format!(
                    "{what}: the `{field}` step's `output: {}` is never written",
                    o.value
                ),
                span(o),
                "remove it and read the pattern step's own `output` (e.g. `{{ name.output }}`)",
            );
        }
    }

    fn missing(&mut self, what: &str, field: &str, kind: &str, at: Sp, hint: &str) {
        self.err(
            "spes::workflow::missing_field",
            format!("{what}: a {kind} step needs `{field}`"),
            at,
            hint.to_owned(),
        );
    }

    /// `switch`.
    pub(crate) fn switch(
        &mut self,
        s: &StepSpec,
        known: &mut Known,
        path: &str,
        kind_at: Sp,
    ) -> Option<SwitchStep> {
        let what = format!("step `{path}`");
        let Some(c) = &s.classify else {
            self.missing(
                &what,
                "classify",
                "switch",
                kind_at,
                "add `classify: { kind: llm, prompt: \"Classify this request: {{ request }}\" }` (the route names are appended)",
            );
            return None;
        };
        self.no_nested_output(c, "classify", &what);
        let classify = self.nested_llm(c, "classify", known, path, &[]);
        let classify_name = c
            .value
            .name
            .as_ref()
            .map_or_else(|| "classify".to_owned(), |n| n.value.clone());
        let Some(routes_spec) = &s.routes else {
            self.missing(
                &what,
                "routes",
                "switch",
                kind_at,
                "add `routes: { bug: [steps...], feature: [steps...] }`",
            );
            return None;
        };
        if routes_spec.value.is_empty() {
            self.err(
                "spes::workflow::no_steps",
                format!("{what}: `routes` is empty"),
                span(routes_spec),
                "add at least one route: `routes: { bug: [...] }`",
            );
        }
        let before = known.clone();
        let mut outcomes = Vec::new();
        let mut routes = Vec::new();
        for (name, steps) in &routes_spec.value {
            if !is_step_name(name) || name == "default" || *name == classify_name {
                self.err(
                    "spes::workflow::bad_step_name",
                    format!("{what}: route name `{name}` is not allowed"),
                    span(steps),
                    "route names use letters, digits, _ - . (not `default` or the classify step's name); they are parts of step keys",
                );
            }
            if steps.value.is_empty() {
                self.err(
                    "spes::workflow::no_steps",
                    format!("{what}: route `{name}` has no steps"),
                    span(steps),
                    format!("give route `{name}` at least one step, or remove it"),
                );
            }
            let mut k = before.clone();
            let st = self.steps(
                steps.value.clone(),
                &mut k,
                &StepKey::join(path, name),
                span(steps),
            );
            outcomes.push(k);
            routes.push((name.clone(), st));
        }
        let default = s.default.as_ref().map(|d| {
            if d.value.is_empty() {
                self.err(
                    "spes::workflow::no_steps",
                    format!("{what}: `default` has no steps"),
                    span(d),
                    "give `default` at least one step, or remove it (no match then gives an empty result)",
                );
            }
            let mut k = before.clone();
            let st = self.steps(d.value.clone(), &mut k, &StepKey::join(path, "default"), span(d));
            outcomes.push(k);
            st
        });
        if default.is_none() {
            outcomes.push(before.clone());
        }
        *known = Known::join(&before, &outcomes);
        Some(SwitchStep {
            classify: classify?,
            classify_name,
            routes,
            default,
        })
    }

    /// `quality_gate`.
    pub(crate) fn quality_gate(
        &mut self,
        s: &StepSpec,
        known: &Known,
        path: &str,
        kind_at: Sp,
    ) -> Option<QualityGateStep> {
        let what = format!("step `{path}`");
        let Some(st) = &s.step else {
            self.missing(
                &what,
                "step",
                "quality_gate",
                kind_at,
                "add `step: { kind: llm, prompt: \"...\" }` (run on every attempt; any step kind may be wrapped)",
            );
            return None;
        };
        self.no_nested_output(st, "step", &what);
        let step = self.wrapped(st, "step", known, path, "attempt");
        let evaluator = self.evaluator_of(s, known, &what, kind_at, "quality_gate");
        let threshold = match &s.threshold {
            Some(t) => self.unit_interval(t, "threshold", &what),
            None => evaluator.as_ref().map(Evaluator::default_threshold),
        };
        let max_attempts = self.at_least_one(s.max_attempts.as_ref(), "max_attempts", 3, &what);
        let fb_src = s.feedback.clone().unwrap_or_else(|| {
            Spanned::new(
                DEFAULT_GATE_FEEDBACK.to_owned(),
                serde_saphyr::Location::UNKNOWN,
                serde_saphyr::Location::UNKNOWN,
            )
        });
        let feedback = self.template_reading(&fb_src, known, FEEDBACK_LOCALS, &what);
        Some(QualityGateStep {
            step: step?,
            evaluator: evaluator?,
            threshold: threshold?,
            max_attempts,
            feedback: feedback?,
        })
    }

    /// `refine`.
    pub(crate) fn refine(
        &mut self,
        s: &StepSpec,
        known: &Known,
        path: &str,
        kind_at: Sp,
    ) -> Option<RefineStep> {
        let what = format!("step `{path}`");
        let Some(g) = &s.generate else {
            self.missing(
                &what,
                "generate",
                "refine",
                kind_at,
                "add `generate: { kind: llm, prompt: \"...\" }`",
            );
            return None;
        };
        self.no_nested_output(g, "generate", &what);
        let generate = self.wrapped(g, "generate", known, path, "iteration");
        let evaluator = self.evaluator_of(s, known, &what, kind_at, "refine");
        let threshold = match &s.threshold {
            Some(t) => self.unit_interval(t, "threshold", &what),
            None => Some(
                evaluator
                    .as_ref()
                    .map_or(DEFAULT_THRESHOLD, Evaluator::default_threshold),
            ),
        };
        let max_iterations =
            self.at_least_one(s.max_iterations.as_ref(), "max_iterations", 5, &what);
        let examples = s
            .examples
            .as_ref()
            .map(|e| Examples {
                good: e.value.good.clone(),
                bad: e.value.bad.clone(),
            })
            .unwrap_or_default();
        if let (Some(e), Some(g)) = (&s.examples, &generate)
            && !matches!(g.kind, StepKind::Llm(_))
        {
            self.err(
                "spes::workflow::field_not_for_kind",
                format!(
                    "{what}: `examples` go into an llm `generate` step's prompt, and this one is a `{}` step",
                    g.kind.name()
                ),
                span(e),
                "remove `examples`, or write them into the prompts inside the `generate` step",
            );
        }
        Some(RefineStep {
            generate: generate?,
            evaluator: evaluator?,
            threshold: threshold?,
            max_iterations,
            examples,
        })
    }

    /// The step a `quality_gate` (`field` = `step`) or `refine` (`generate`)
    /// runs each time. An llm step (the default kind) gets the feedback
    /// appended to its prompt and is keyed `KEY/{counter}N`; any other kind
    /// runs under `KEY/{counter}N/NAME` and sees the locals `counter`
    /// (`attempt` or `iteration`) and `feedback`.
    fn wrapped(
        &mut self,
        sy: &Spanned<Box<StepSpec>>,
        field: &str,
        known: &Known,
        path: &str,
        counter: &str,
    ) -> Option<Box<Step>> {
        // The kind decides the form, so a `use:` is expanded first.
        let spec = self.expand_use((*sy.value).clone(), 0)?;
        if spec.kind.as_ref().is_none_or(|k| k.value == "llm") {
            let sy = Spanned::new(Box::new(spec), sy.referenced, sy.defined);
            return self
                .nested_llm_step(&sy, field, known, path, &[])
                .map(Box::new);
        }
        if let Some(n) = spec.name.as_ref().filter(|n| n.value == "judge") {
            self.err(
                "spes::workflow::bad_step_name",
                format!("step `{path}`: the `{field}` step may not be named `judge`"),
                span(n),
                format!("`{path}/{counter}N/judge` is where the evaluator's judge is journaled; pick another name"),
            );
            return None;
        }
        let sy = Spanned::new(Box::new(spec), sy.referenced, sy.defined);
        self.nested_step(
            &sy,
            field,
            known,
            &StepKey::join(path, &format!("{counter}*")),
            &[counter, "feedback"],
        )
        .map(Box::new)
    }

    /// `debate`.
    pub(crate) fn debate(
        &mut self,
        s: &StepSpec,
        known: &Known,
        path: &str,
        kind_at: Sp,
    ) -> Option<DebateStep> {
        let what = format!("step `{path}`");
        let Some(d) = &s.debaters else {
            self.missing(
                &what,
                "debaters",
                "debate",
                kind_at,
                "add `debaters: [optimist, skeptic]` (agents declared under `agents:`)",
            );
            return None;
        };
        let debaters = self.agent_list(d, known);
        let mut seen = HashSet::new();
        if d.value.len() < 2 || !d.value.iter().all(|n| seen.insert(n)) {
            self.err(
                "spes::workflow::bad_count",
                format!("{what}: a debate needs at least 2 different debaters"),
                span(d),
                "name two or more distinct agents in `debaters`",
            );
        }
        let topic = match &s.topic {
            Some(t) => self.template_reading(t, known, &[], &what),
            None => {
                self.missing(
                    &what,
                    "topic",
                    "debate",
                    kind_at,
                    "add `topic: \"Should we {{ proposal }}?\"`",
                );
                None
            }
        };
        let judge = match &s.judge {
            Some(j) => self.agent_named(j, known),
            None => {
                self.missing(
                    &what,
                    "judge",
                    "debate",
                    kind_at,
                    "add `judge: NAME` (an agent that weighs the arguments)",
                );
                None
            }
        };
        let rounds = self.at_least_one(s.rounds.as_ref(), "rounds", 2, &what);
        let judge_sees = match s.judge_sees.as_ref().map(|j| (j.value.as_str(), span(j))) {
            None | Some(("all", _)) => Some(JudgeSees::All),
            Some(("last", _)) => Some(JudgeSees::Last),
            Some(("summary", _)) => Some(JudgeSees::Summary),
            Some((other, at)) => {
                self.err(
                    "spes::workflow::bad_judge_sees",
                    format!("{what}: judge_sees `{other}` is not all, last or summary"),
                    at,
                    "all: every turn in full; last: the last round in full; summary: every turn cut to 200 characters",
                );
                None
            }
        };
        if debaters.len() != d.value.len() {
            return None;
        }
        Some(DebateStep {
            debaters,
            topic: topic?,
            rounds,
            judge: judge?,
            judge_sees: judge_sees?,
        })
    }

    /// `sequence` with `agents` + `task`.
    pub(crate) fn agent_chain(
        &mut self,
        s: &StepSpec,
        known: &Known,
        path: &str,
        kind_at: Sp,
    ) -> Option<AgentChainStep> {
        let what = format!("step `{path}`");
        if let Some(st) = &s.steps {
            self.err(
                "spes::workflow::sequence_forms",
                format!("{what}: use either `steps` or `agents` + `task`, not both"),
                span(st),
                "a sequence runs its `steps` in order, or hands `task` through `agents` in turn",
            );
            return None;
        }
        let (Some(a), Some(t)) = (&s.agents, &s.task) else {
            let at = s.agents.as_ref().and_then(span).or(kind_at);
            self.err(
                "spes::workflow::missing_field",
                format!("{what}: a sequence of agents needs both `agents` and `task`"),
                at,
                "add `agents: [writer, editor]` and `task: \"...\"` (each agent gets the previous output)",
            );
            return None;
        };
        if a.value.is_empty() {
            self.err(
                "spes::workflow::no_steps",
                format!("{what}: `agents` is empty"),
                span(a),
                "name at least one agent",
            );
            return None;
        }
        let agents = self.agent_list(a, known);
        let task = self.template_reading(t, known, &[], &what)?;
        if agents.len() != a.value.len() {
            return None;
        }
        let mut counts = std::collections::BTreeMap::<String, u32>::new();
        let agents = agents
            .into_iter()
            .map(|ag| {
                let n = counts.entry(ag.name.clone()).or_insert(0);
                *n += 1;
                let key = if *n == 1 {
                    ag.name.clone()
                } else {
                    format!("{}.{n}", ag.name)
                };
                (key, ag)
            })
            .collect();
        Some(AgentChainStep { agents, task })
    }

    fn evaluator_of(
        &mut self,
        s: &StepSpec,
        known: &Known,
        what: &str,
        kind_at: Sp,
        kind: &str,
    ) -> Option<Evaluator> {
        match &s.evaluator {
            Some(e) => self.evaluator(e, known, what),
            None => {
                self.missing(
                    what,
                    "evaluator",
                    kind,
                    kind_at,
                    "add `evaluator: { checks: [...] }`, `{ judge: { agent, rubric } }` or `{ criteria: [...] }`",
                );
                None
            }
        }
    }

    fn evaluator(
        &mut self,
        e: &Spanned<EvaluatorSpec>,
        known: &Known,
        what: &str,
    ) -> Option<Evaluator> {
        let ev = &e.value;
        let set = [
            ev.checks.is_some(),
            ev.judge.is_some(),
            ev.criteria.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set != 1 {
            self.err(
                "spes::workflow::bad_evaluator",
                format!(
                    "{what}: an evaluator takes exactly one of `checks`, `judge`, `criteria` (found {set})"
                ),
                span(e),
                "to combine a judge with checks, write them as `criteria`, each with a weight",
            );
            return None;
        }
        if let Some(cs) = &ev.checks {
            if cs.value.is_empty() {
                self.err(
                    "spes::workflow::bad_evaluator",
                    format!("{what}: `checks` is empty"),
                    span(cs),
                    "add a check, e.g. `- { words: { min: 50 } }`",
                );
                return None;
            }
            let mut out = Vec::new();
            for c in &cs.value {
                out.push(self.check_item(c, what));
            }
            return out
                .into_iter()
                .collect::<Option<Vec<_>>>()
                .map(Evaluator::Checks);
        }
        if let Some(j) = &ev.judge {
            return self.judge_spec(j, known, what).map(Evaluator::Judge);
        }
        let cs = ev.criteria.as_ref()?;
        if cs.value.is_empty() {
            self.err(
                "spes::workflow::bad_evaluator",
                format!("{what}: `criteria` is empty"),
                span(cs),
                "add a criterion, e.g. `- { name: length, weight: 1, check: { words: { max: 300 } } }`",
            );
            return None;
        }
        let mut names = HashSet::new();
        let mut out = Vec::new();
        let mut ok = true;
        for c in &cs.value {
            let at = span(c);
            let name = match &c.value.name {
                Some(n) if is_step_name(&n.value) && names.insert(n.value.clone()) => {
                    n.value.clone()
                }
                Some(n) => {
                    self.err(
                        "spes::workflow::bad_criterion",
                        format!("{what}: criterion name `{}` is invalid or repeated", n.value),
                        span(n),
                        "criterion names use letters, digits, _ - . and are unique (they key the judge's calls)",
                    );
                    ok = false;
                    continue;
                }
                None => {
                    self.err(
                        "spes::workflow::bad_criterion",
                        format!("{what}: a criterion has no `name`"),
                        at,
                        "add `name: accuracy`",
                    );
                    ok = false;
                    continue;
                }
            };
            let cw = format!("{what} criterion `{name}`");
            let weight = match &c.value.weight {
                Some(w) if w.value > 0.0 && w.value.is_finite() => w.value,
                Some(w) => {
                    self.err(
                        "spes::workflow::bad_weight",
                        format!("{cw}: weight {} must be above 0", w.value),
                        span(w),
                        "weights are relative: e.g. 2 counts twice as much as 1",
                    );
                    ok = false;
                    1.0
                }
                None => 1.0,
            };
            let threshold = match &c.value.threshold {
                Some(t) => self.unit_interval(t, "threshold", &cw).unwrap_or_else(|| {
                    ok = false;
                    0.0
                }),
                None => DEFAULT_CRITERION_THRESHOLD,
            };
            let measure = match (&c.value.judge, &c.value.check, &c.value.score) {
                (Some(j), None, None) => self.judge_spec(j, known, &cw).map(Measure::Judge),
                (None, Some(ch), None) => self.check_item(ch, &cw).map(Measure::Check),
                (None, None, Some(sc)) => self
                    .template_reading(sc, known, &["output"], &cw)
                    .map(Measure::Score),
                _ => {
                    self.err(
                        "spes::workflow::bad_criterion",
                        format!("{cw}: give exactly one of `judge`, `check` or `score`"),
                        at,
                        "e.g. `judge: { agent: critic, rubric: \"...\" }` or `check: { words: { min: 100 } }`",
                    );
                    None
                }
            };
            match measure {
                Some(measure) => out.push(Criterion {
                    name,
                    weight,
                    threshold,
                    measure,
                }),
                None => ok = false,
            }
        }
        ok.then_some(Evaluator::Criteria(out))
    }

    fn judge_spec(&mut self, j: &Spanned<JudgeSpec>, known: &Known, what: &str) -> Option<Judge> {
        let agent = match &j.value.agent {
            Some(a) => Some(self.agent_named(a, known)?),
            None => None,
        };
        let Some(r) = &j.value.rubric else {
            self.err(
                "spes::workflow::missing_field",
                format!("{what}: a judge needs a `rubric`"),
                span(j),
                "add `rubric: \"accurate, sourced, under 300 words\"`",
            );
            return None;
        };
        let rubric = self.template_reading(r, known, &[], what)?;
        Some(Judge { rubric, agent })
    }

    fn check_item(&mut self, c: &Spanned<CheckItemSpec>, what: &str) -> Option<Check> {
        let at = span(c);
        if c.value.len() != 1 {
            self.err(
                "spes::workflow::bad_check",
                format!(
                    "{what}: a check has exactly one key (found {})",
                    c.value.len()
                ),
                at,
                format!("checks: {}", CHECK_NAMES.join(", ")),
            );
            return None;
        }
        let (name, v) = c.value.iter().next()?;
        let bad = |me: &mut Self, expect: &str| {
            me.err(
                "spes::workflow::bad_check",
                format!("{what}: `{name}` takes {expect}"),
                at,
                "see FORMAT.md, \"Evaluators\"",
            );
            None
        };
        let range = |v: &Value| -> Option<(Option<u64>, Option<u64>)> {
            let o = v.as_object()?;
            if o.keys().any(|k| k != "min" && k != "max") || o.is_empty() {
                return None;
            }
            let get = |k: &str| match o.get(k) {
                None => Some(None),
                Some(x) => x.as_u64().map(Some),
            };
            let (min, max) = (get("min")?, get("max")?);
            if let (Some(a), Some(b)) = (min, max)
                && a > b
            {
                return None;
            }
            Some((min, max))
        };
        let kind = match name.as_str() {
            "contains" => match v {
                Value::String(s) => CheckKind::Contains(s.clone()),
                _ => return bad(self, "a string"),
            },
            "regex" => match v
                .as_str()
                .map(|p| regex::RegexBuilder::new(p).size_limit(1 << 20).build())
            {
                Some(Ok(re)) => CheckKind::Regex(re),
                Some(Err(e)) => {
                    self.err(
                        "spes::workflow::bad_regex",
                        format!("{what}: bad regex: {e}"),
                        at,
                        "check the pattern (Rust regex syntax; no look-around)",
                    );
                    return None;
                }
                None => return bad(self, "a pattern string"),
            },
            "length" | "words" | "lines" => match range(v) {
                Some((min, max)) => match name.as_str() {
                    "length" => CheckKind::Length { min, max },
                    "words" => CheckKind::Words { min, max },
                    _ => CheckKind::Lines { min, max },
                },
                None => {
                    return bad(
                        self,
                        "`{ min: N, max: M }` (whole numbers, min <= max, at least one)",
                    );
                }
            },
            "json" => match v {
                Value::Bool(true) => CheckKind::Json,
                _ => return bad(self, "`true`"),
            },
            "schema" => match v {
                Value::Object(_) => {
                    if let Some(problem) = crate::evaluate::schema_problem(v) {
                        self.err(
                            "spes::workflow::bad_schema",
                            format!("{what}: the schema is not a valid JSON Schema: {problem}"),
                            at,
                            "write an inline JSON Schema, e.g. { type: object, required: [title] }",
                        );
                        return None;
                    }
                    CheckKind::Schema(v.clone())
                }
                _ => return bad(self, "an inline JSON Schema object"),
            },
            other => {
                let hint = match closest(other, CHECK_NAMES.iter().copied()) {
                    Some(c) => format!("did you mean `{c}`? Checks: {}", CHECK_NAMES.join(", ")),
                    None => format!("checks: {}", CHECK_NAMES.join(", ")),
                };
                self.err(
                    "spes::workflow::unknown_check",
                    format!("{what}: unknown check `{other}`"),
                    at,
                    hint,
                );
                return None;
            }
        };
        Some(Check::new(kind))
    }
}
