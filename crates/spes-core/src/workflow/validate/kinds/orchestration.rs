//! Validation of the orchestration step kinds: `map`, `reduce`, `fan_out`,
//! `saga`, `pipeline`, `scatter_gather`.

use std::collections::HashSet;

use serde_saphyr::Spanned;

use crate::workflow::StepKey;
use crate::workflow::kind::{Distribution, KindDef, PolicyScope};
use crate::workflow::orchestration::{
    DEFAULT_MAP_CONCURRENCY, FanOutStep, MapStep, OnError, PipelineStep, ReduceStep, SagaAction,
    SagaStep, ScatterGatherStep,
};
use crate::workflow::spec::StepSpec;
use crate::workflow::validate::StepAt;
use crate::workflow::validate::{Known, Sp, Validator, is_key_name, is_step_name, span};
use crate::workflow::{Step, StepKind};

/// Keys written by `steps`, each validated against `before` (side by side:
/// a sibling's output is not visible), merged afterwards; `certain` says
/// whether the writes are definite (false: a source may time out).
fn merge_side_by_side(before: &Known, arms: Vec<Known>, certain: bool) -> Known {
    let mut after = before.clone();
    for k in arms {
        for w in k.definite.difference(&before.definite) {
            if certain {
                after.definite.insert(w.clone());
            } else {
                after.maybe.insert(w.clone());
            }
        }
        for w in k.maybe {
            if !after.definite.contains(&w) {
                after.maybe.insert(w);
            }
        }
    }
    after
}

/// `map`: one step per item of a list, bounded, results in input order.
pub(crate) const MAP: KindDef = KindDef {
    name: "map",
    fields: &["over", "as", "concurrency", "on_error", "step"],
    policies: PolicyScope::Composite,
    distribution: Distribution::Local,
    example: r#"{ name: s, kind: map, over: items, step: { kind: llm, prompt: "Sum up {{ item }}" } }"#,
    validate: validate_map,
};

/// `reduce`: one step over a whole list.
pub(crate) const REDUCE: KindDef = KindDef {
    name: "reduce",
    fields: &["over", "step"],
    policies: PolicyScope::Composite,
    distribution: Distribution::Local,
    example: r#"{ name: s, kind: reduce, over: items, step: { kind: llm, prompt: "Combine {{ items }}" } }"#,
    validate: validate_reduce,
};

/// `fan_out`: different workers on one input, then an aggregate.
pub(crate) const FAN_OUT: KindDef = KindDef {
    name: "fan_out",
    fields: &["workers", "aggregate", "concurrency", "on_error"],
    policies: PolicyScope::Composite,
    distribution: Distribution::Local,
    example: r#"{ name: s, kind: fan_out, workers: [ { name: a, step: { kind: llm, prompt: hi } } ] }"#,
    validate: validate_fan_out,
};

/// `saga`: steps with compensations, undone in reverse on failure.
pub(crate) const SAGA: KindDef = KindDef {
    name: "saga",
    fields: &["steps"],
    policies: PolicyScope::Composite,
    distribution: Distribution::Local,
    example: r#"{ name: s, kind: saga, steps: [ { name: a, kind: llm, prompt: hi, compensate: { kind: llm, prompt: undo } } ] }"#,
    validate: validate_saga,
};

/// `pipeline`: stages, each fed the previous output.
pub(crate) const PIPELINE: KindDef = KindDef {
    name: "pipeline",
    fields: &["stages", "input"],
    policies: PolicyScope::Composite,
    distribution: Distribution::Local,
    example: r#"{ name: s, kind: pipeline, stages: [ { name: a, kind: llm, prompt: hi } ] }"#,
    validate: validate_pipeline,
};

/// `scatter_gather`: sources side by side under a time limit, then a gather.
pub(crate) const SCATTER_GATHER: KindDef = KindDef {
    name: "scatter_gather",
    fields: &["sources", "timeout", "gather"],
    policies: PolicyScope::Composite,
    distribution: Distribution::Local,
    example: r#"{ name: s, kind: scatter_gather, timeout: 30s, sources: [ { name: a, kind: llm, prompt: hi } ] }"#,
    validate: validate_scatter_gather,
};

fn validate_map(
    v: &mut Validator<'_>,
    s: &mut StepSpec,
    known: &mut Known,
    at: &StepAt<'_>,
) -> Option<StepKind> {
    Some(StepKind::Map(Box::new(
        v.map_step(s, known, at.path, at.kind_at)?,
    )))
}

fn validate_reduce(
    v: &mut Validator<'_>,
    s: &mut StepSpec,
    known: &mut Known,
    at: &StepAt<'_>,
) -> Option<StepKind> {
    Some(StepKind::Reduce(Box::new(
        v.reduce_step(s, known, at.path, at.kind_at)?,
    )))
}

fn validate_fan_out(
    v: &mut Validator<'_>,
    s: &mut StepSpec,
    known: &mut Known,
    at: &StepAt<'_>,
) -> Option<StepKind> {
    Some(StepKind::FanOut(Box::new(
        v.fan_out_step(s, known, at.path, at.kind_at)?,
    )))
}

fn validate_saga(
    v: &mut Validator<'_>,
    s: &mut StepSpec,
    known: &mut Known,
    at: &StepAt<'_>,
) -> Option<StepKind> {
    Some(StepKind::Saga(Box::new(
        v.saga_step(s, known, at.path, at.kind_at)?,
    )))
}

fn validate_pipeline(
    v: &mut Validator<'_>,
    s: &mut StepSpec,
    known: &mut Known,
    at: &StepAt<'_>,
) -> Option<StepKind> {
    Some(StepKind::Pipeline(Box::new(
        v.pipeline_step(s, known, at.path, at.kind_at)?,
    )))
}

fn validate_scatter_gather(
    v: &mut Validator<'_>,
    s: &mut StepSpec,
    known: &mut Known,
    at: &StepAt<'_>,
) -> Option<StepKind> {
    Some(StepKind::ScatterGather(Box::new(
        v.scatter_gather_step(s, known, at.path, at.kind_at)?,
    )))
}

/// A nested step's spec, named `default` when unnamed, and what it may
/// read: `known` plus `locals`.
pub(crate) fn nested_spec(
    sy: &Spanned<Box<StepSpec>>,
    default: &str,
    known: &Known,
    locals: &[&str],
) -> (StepSpec, Known) {
    let mut k = known.clone();
    for l in locals {
        k.write(l);
    }
    let mut spec = (*sy.value).clone();
    if spec.name.is_none() {
        spec.name = Some(Spanned::new(default.to_owned(), sy.referenced, sy.defined));
    }
    (spec, k)
}

impl Validator<'_> {
    /// A nested step (named `default` when unnamed) with extra locals.
    pub(crate) fn nested_step(
        &mut self,
        sy: &Spanned<Box<StepSpec>>,
        default: &str,
        known: &Known,
        path: &str,
        locals: &[&str],
    ) -> Option<Step> {
        let (spec, mut k) = nested_spec(sy, default, known, locals);
        let mut names = HashSet::new();
        self.step(spec, &mut k, path, &mut names)
    }

    fn orch_missing(&mut self, what: &str, field: &str, need: &str, at: Sp, hint: &str) {
        self.err(
            "spes::workflow::missing_field",
            format!("{what}: {need} `{field}`"),
            at,
            hint.to_owned(),
        );
    }

    /// `over: KEY`: a key name written before the step.
    fn over_key(&mut self, s: &StepSpec, known: &Known, what: &str, kind_at: Sp) -> Option<String> {
        let Some(over) = &s.over else {
            self.orch_missing(
                what,
                "over",
                "needs",
                kind_at,
                "add `over: KEY`, the context key holding the list",
            );
            return None;
        };
        if !is_key_name(&over.value) {
            self.err(
                "spes::workflow::bad_key",
                format!("{what}: `over: {}` is not a context key", over.value),
                span(over),
                "name the key holding the list (write `over: questions`, not a template)",
            );
            return None;
        }
        self.check_reads(std::iter::once(&over.value), span(over), known, &[], what);
        Some(over.value.clone())
    }

    /// A step's `on_error` policy (default fail_fast); `hint` says what
    /// each policy means for this kind.
    fn on_error_of(&mut self, s: &StepSpec, what: &str, hint: &str) -> Option<OnError> {
        let Some(o) = &s.on_error else {
            return Some(OnError::default());
        };
        let parsed = OnError::parse(&o.value);
        if parsed.is_none() {
            self.err(
                "spes::workflow::bad_on_error",
                format!("{what}: on_error `{}` is not a policy", o.value),
                span(o),
                hint,
            );
        }
        parsed
    }

    fn concurrency_of(&mut self, s: &StepSpec, what: &str) -> Option<Option<usize>> {
        match &s.concurrency {
            Some(c) if c.value == 0 => {
                self.err(
                    "spes::workflow::bad_concurrency",
                    format!("{what}: concurrency must be at least 1"),
                    span(c),
                    "write a positive number of items in flight, e.g. concurrency: 8",
                );
                None
            }
            Some(c) if c.value > crate::workflow::validate::MAX_CONCURRENCY => {
                self.err(
                    "spes::workflow::bad_concurrency",
                    format!(
                        "{what}: concurrency = {}; at most {} is allowed",
                        c.value,
                        crate::workflow::validate::MAX_CONCURRENCY
                    ),
                    span(c),
                    format!(
                        "pick a concurrency between 1 and {}",
                        crate::workflow::validate::MAX_CONCURRENCY
                    ),
                );
                None
            }
            Some(c) => Some(usize::try_from(c.value).ok()),
            None => Some(None),
        }
    }

    pub(crate) fn map_step(
        &mut self,
        s: &StepSpec,
        known: &mut Known,
        path: &str,
        kind_at: Sp,
    ) -> Option<MapStep> {
        let what = format!("step `{path}`");
        let over = self.over_key(s, known, &what, kind_at);
        let item_as = match &s.item_as {
            Some(a) if is_key_name(&a.value) && a.value != "index" => a.value.clone(),
            Some(a) => {
                self.err(
                    "spes::workflow::bad_key",
                    format!("{what}: `as: {}` is not a usable name", a.value),
                    span(a),
                    "use letters, digits and _ (not `index`, which holds the item's position)",
                );
                return None;
            }
            None => "item".to_owned(),
        };
        let concurrency = self.concurrency_of(s, &what)?;
        let on_error = self.on_error_of(s, &what, "write on_error: fail_fast (stop at the first failure), skip (leave failed items out, listed in <output>_errors) or collect (keep { error } in place)")?;
        let Some(st) = &s.step else {
            self.orch_missing(
                &what,
                "step",
                "a map needs",
                kind_at,
                "add `step: { kind: llm, prompt: \"... {{ item }}\" }` (run once per item)",
            );
            return None;
        };
        let step = self.nested_step(
            st,
            "item",
            known,
            &StepKey::join(path, "map[*]"),
            &[&item_as, "index"],
        )?;
        if let Some(o) = &s.output {
            known.write(&format!("{}_errors", o.value));
        }
        Some(MapStep {
            over: over?,
            item_as,
            concurrency: concurrency.unwrap_or(DEFAULT_MAP_CONCURRENCY),
            on_error,
            step: Box::new(step),
        })
    }

    pub(crate) fn reduce_step(
        &mut self,
        s: &StepSpec,
        known: &Known,
        path: &str,
        kind_at: Sp,
    ) -> Option<ReduceStep> {
        let what = format!("step `{path}`");
        let over = self.over_key(s, known, &what, kind_at);
        let Some(st) = &s.step else {
            self.orch_missing(
                &what,
                "step",
                "a reduce needs",
                kind_at,
                "add `step: { kind: llm, prompt: \"Combine: {{ items | join('\\n') }}\" }`",
            );
            return None;
        };
        let step = self.nested_step(st, "reduce", known, path, &["items"])?;
        Some(ReduceStep {
            over: over?,
            step: Box::new(step),
        })
    }

    pub(crate) fn fan_out_step(
        &mut self,
        s: &StepSpec,
        known: &mut Known,
        path: &str,
        kind_at: Sp,
    ) -> Option<FanOutStep> {
        let what = format!("step `{path}`");
        let Some(ws) = &s.workers else {
            self.orch_missing(
                &what,
                "workers",
                "a fan_out needs",
                kind_at,
                "add `workers: [{ name: a, step: { kind: llm, prompt: ... } }]`",
            );
            return None;
        };
        if ws.value.is_empty() {
            self.err(
                "spes::workflow::no_steps",
                format!("{what}: `workers` is empty"),
                span(ws),
                "add at least one worker",
            );
            return None;
        }
        let before = known.clone();
        let mut names = HashSet::new();
        let mut workers = Vec::new();
        let mut arms = Vec::new();
        for w in &ws.value {
            if !is_step_name(&w.name.value) {
                self.err(
                    "spes::workflow::bad_step_name",
                    format!(
                        "{what}: worker name `{}` may use only letters, digits, _ - and .",
                        w.name.value
                    ),
                    span(&w.name),
                    "worker names are parts of step keys and keys of `results`",
                );
                continue;
            }
            let mut spec = (*w.step.value).clone();
            spec.name = Some(w.name.clone());
            let mut k = before.clone();
            if let Some(st) = self.step(spec, &mut k, path, &mut names) {
                workers.push(st);
            }
            arms.push(k);
        }
        *known = merge_side_by_side(&before, arms, true);
        let aggregate = match &s.aggregate {
            Some(a) => Some(Box::new(self.nested_step(
                a,
                "aggregate",
                known,
                path,
                &["results"],
            )?)),
            None => None,
        };
        let concurrency = self.concurrency_of(s, &what)?;
        let on_error = self.on_error_of(s, &what, "write on_error: fail_fast (a failed worker fails the step), skip (leave failed workers out, listed in <output>_errors) or collect (keep { error } in place)")?;
        if on_error != OnError::FailFast
            && let Some(o) = &s.output
        {
            known.write(&format!("{}_errors", o.value));
        }
        Some(FanOutStep {
            workers,
            aggregate,
            concurrency,
            on_error,
        })
    }

    pub(crate) fn saga_step(
        &mut self,
        s: &StepSpec,
        known: &mut Known,
        path: &str,
        kind_at: Sp,
    ) -> Option<SagaStep> {
        let what = format!("step `{path}`");
        let Some(steps) = &s.steps else {
            self.orch_missing(
                &what,
                "steps",
                "a saga needs",
                kind_at,
                "add `steps:`, each with an optional `compensate: { ... }` that undoes it",
            );
            return None;
        };
        if steps.value.is_empty() {
            self.err(
                "spes::workflow::no_steps",
                format!("{what}: `steps` is empty"),
                span(steps),
                "add steps",
            );
            return None;
        }
        let mut names = HashSet::new();
        let mut actions = Vec::new();
        for child in &steps.value {
            let mut spec = (**child).clone();
            let compensate = spec.compensate.take();
            let Some(step) = self.step(spec, known, path, &mut names) else {
                continue;
            };
            let compensate = match &compensate {
                Some(c) => Some(self.nested_step(
                    c,
                    "compensate",
                    known,
                    &StepKey::join(path, &step.name),
                    &["error", "failed_step"],
                )?),
                None => None,
            };
            actions.push(SagaAction { step, compensate });
        }
        Some(SagaStep { actions })
    }

    pub(crate) fn pipeline_step(
        &mut self,
        s: &StepSpec,
        known: &mut Known,
        path: &str,
        kind_at: Sp,
    ) -> Option<PipelineStep> {
        let what = format!("step `{path}`");
        let input = match &s.input {
            Some(t) => {
                let tpl = self.template(t, &what)?;
                let reads: Vec<String> = tpl.reads().iter().cloned().collect();
                self.check_reads(reads.iter(), span(t), known, &[], &what);
                Some(tpl)
            }
            None => None,
        };
        let Some(stages) = &s.stages else {
            self.orch_missing(
                &what,
                "stages",
                "a pipeline needs",
                kind_at,
                "add `stages:`; each stage sees the previous stage's output as `input`",
            );
            return None;
        };
        if stages.value.is_empty() {
            self.err(
                "spes::workflow::no_steps",
                format!("{what}: `stages` is empty"),
                span(stages),
                "add stages",
            );
            return None;
        }
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for (i, st) in stages.value.iter().enumerate() {
            let mut k = known.clone();
            let sees_input = i > 0 || input.is_some();
            if sees_input {
                k.write("input");
            }
            if let Some(step) = self.step(st.clone(), &mut k, path, &mut names) {
                out.push(step);
            }
            for w in k.definite.difference(&known.definite.clone()) {
                if !(sees_input && w == "input") {
                    known.definite.insert(w.clone());
                }
            }
            for w in k.maybe {
                if !known.definite.contains(&w) {
                    known.maybe.insert(w);
                }
            }
        }
        Some(PipelineStep { input, stages: out })
    }

    pub(crate) fn scatter_gather_step(
        &mut self,
        s: &StepSpec,
        known: &mut Known,
        path: &str,
        kind_at: Sp,
    ) -> Option<ScatterGatherStep> {
        let what = format!("step `{path}`");
        let timeout = match &s.timeout {
            None => {
                self.orch_missing(
                    &what,
                    "timeout",
                    "a scatter_gather needs",
                    kind_at,
                    "add `timeout: 30s`: what has not arrived by then is marked timed out",
                );
                None
            }
            Some(t) => match crate::duration::parse_duration(&t.value) {
                Ok(d) if !d.is_zero() => Some(d),
                Ok(_) => {
                    self.err(
                        "spes::workflow::bad_duration",
                        format!("{what}: timeout must be longer than zero"),
                        span(t),
                        "write e.g. 500ms, 30s or 2m",
                    );
                    None
                }
                Err(e) => {
                    self.err(
                        "spes::workflow::bad_duration",
                        format!("{what}: timeout {e}"),
                        span(t),
                        "write e.g. 500ms, 30s or 2m",
                    );
                    None
                }
            },
        };
        let Some(srcs) = &s.sources else {
            self.orch_missing(
                &what,
                "sources",
                "a scatter_gather needs",
                kind_at,
                "add `sources:` (steps queried side by side)",
            );
            return None;
        };
        if srcs.value.is_empty() {
            self.err(
                "spes::workflow::no_steps",
                format!("{what}: `sources` is empty"),
                span(srcs),
                "add sources",
            );
            return None;
        }
        let before = known.clone();
        let mut names = HashSet::new();
        let mut sources = Vec::new();
        let mut arms = Vec::new();
        for src in &srcs.value {
            let mut k = before.clone();
            if let Some(st) = self.step(src.clone(), &mut k, path, &mut names) {
                sources.push(st);
            }
            arms.push(k);
        }
        // A source may time out: what it writes is only "maybe" written.
        *known = merge_side_by_side(&before, arms, false);
        let gather = match &s.gather {
            Some(g) => Some(Box::new(self.nested_step(
                g,
                "gather",
                known,
                path,
                &["results", "timed_out", "failed"],
            )?)),
            None => None,
        };
        Some(ScatterGatherStep {
            sources,
            timeout: timeout?,
            gather,
        })
    }
}
