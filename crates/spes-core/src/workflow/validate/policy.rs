//! Validation of the policy fields of a step (`retry`, `fallback`,
//! `circuit_breaker`, `degrade`, `timeout`).
//!
//! Where policies make sense (each kind's descriptor says which of these
//! it is: [`PolicyScope`]):
//! - `llm`: all of them.
//! - `sequence`, `branch`, `parallel` (and other composite kinds): `retry`
//!   (re-runs the whole step under fresh keys), `timeout`, and `{ step: ... }`
//!   alternatives. Provider alternatives and `circuit_breaker` switch or
//!   guard *one* model call, so they belong on the llm step inside.
//! - `transform`: only `fallback: [{ step: ... }]` (a pure step fails the
//!   same way every time, so retry, breaker and timeout cannot help).
//! - `approval`, `choose`, `sections`: none (a human gate is not retried;
//!   put the policy on the `generate` step, and use `deadline` for time).

use std::collections::HashSet;
use std::time::Duration;

use serde_saphyr::Spanned;

use super::{Known, Sp, Validator, span};
use crate::policy::{
    Alternative, Backoff, BreakerConfig, BreakerPolicy, Policies, RetryPolicy, RetrySchedule,
};
use crate::workflow::StepKey;
use crate::workflow::kind::{KindDef, PolicyScope};
use crate::workflow::spec::{AlternativeSpec, StepSpec};

impl Validator<'_> {
    fn policy_duration(
        &mut self,
        d: &Spanned<String>,
        what: &str,
        field: &str,
    ) -> Option<Duration> {
        match crate::duration::parse_duration(&d.value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(
                    "spes::workflow::bad_duration",
                    format!("{what}: {field} {e}"),
                    span(d),
                    "write e.g. 250ms, 1s, 30s or 5m",
                );
                None
            }
        }
    }

    fn policy_not_for_kind(&mut self, what: &str, field: &str, kind: &str, at: Sp, why: &str) {
        self.err(
            "spes::workflow::policy_not_for_kind",
            format!("{what}: `{field}` does not apply to a `{kind}` step"),
            at,
            why.to_owned(),
        );
    }

    /// Validates the policy fields of `s` (a step of kind `def` named
    /// `name` at `path`); `known` is the context before the step.
    pub(super) fn policies(
        &mut self,
        s: &StepSpec,
        def: &KindDef,
        known: &Known,
        path: &str,
        name: &str,
    ) -> Policies {
        let what = format!("step `{path}`");
        let mut p = Policies::default();
        let kind = def.name;
        let gate = def.policies == PolicyScope::Gate;
        let llm = def.policies == PolicyScope::Call;
        let pure = def.policies == PolicyScope::Pure;
        let gate_why = "a human gate is not retried or timed out by policy; put the policy on its `generate` step, and use `deadline` for time";
        let pure_why = "a transform is pure and fails the same way every time; only `fallback: [{ step: ... }]` applies";

        if let Some(r) = &s.retry {
            if gate || pure {
                self.policy_not_for_kind(
                    &what,
                    "retry",
                    kind,
                    span(r),
                    if gate { gate_why } else { pure_why },
                );
            } else {
                p.retry = self.retry_policy(&r.value, span(r), known, &what);
            }
        }
        if let Some(b) = &s.circuit_breaker {
            if llm {
                p.circuit_breaker = self.breaker_policy(&b.value, &what);
            } else {
                self.policy_not_for_kind(
                    &what,
                    "circuit_breaker",
                    kind,
                    span(b),
                    "a breaker guards the model calls of one provider: put it on the llm step that makes them",
                );
            }
        }
        // A kind that takes `timeout` as its own field (scatter_gather: its
        // gathering window) does not take the policy.
        if let Some(t) = s
            .timeout
            .as_ref()
            .filter(|_| !def.fields.contains(&"timeout"))
        {
            if gate || pure {
                self.policy_not_for_kind(
                    &what,
                    "timeout",
                    kind,
                    span(t),
                    if gate { gate_why } else { pure_why },
                );
            } else if let Some(d) = self.policy_duration(t, &what, "timeout") {
                if d.is_zero() {
                    self.err(
                        "spes::workflow::bad_policy",
                        format!("{what}: a timeout of 0 fails every attempt"),
                        span(t),
                        "give a positive duration, e.g. 30s",
                    );
                } else {
                    p.timeout = Some(d);
                }
            }
        }
        for (field, list) in [("fallback", &s.fallback), ("degrade", &s.degrade)] {
            let Some(list) = list else { continue };
            if gate {
                self.policy_not_for_kind(&what, field, kind, span(list), gate_why);
                continue;
            }
            if list.value.is_empty() {
                self.err(
                    "spes::workflow::bad_policy",
                    format!("{what}: `{field}` is empty"),
                    span(list),
                    "list alternatives, e.g. [{ provider: ollama }], or remove the field",
                );
                continue;
            }
            let mut out = Vec::new();
            for (i, a) in list.value.iter().enumerate() {
                let n = i + 1;
                if let Some(alt) = self.alternative(a, span(list), known, path, name, field, n, def)
                {
                    out.push(alt);
                }
            }
            if field == "fallback" {
                p.fallback = out;
            } else {
                p.degrade = out;
            }
        }
        p
    }

    fn retry_policy(
        &mut self,
        r: &crate::workflow::spec::RetrySpec,
        at: Sp,
        known: &Known,
        what: &str,
    ) -> Option<RetryPolicy> {
        let mut sch = RetrySchedule::default();
        if r.off {
            return Some(RetryPolicy::new(sch.with_attempts(1)));
        }
        if let Some(a) = &r.attempts {
            if a.value == 0 {
                self.err(
                    "spes::workflow::bad_policy",
                    format!("{what}: retry attempts must be at least 1 (it counts the first try)"),
                    span(a),
                    "write attempts: 3 for one try and up to two retries",
                );
                return None;
            }
            sch.attempts = a.value;
        }
        if let Some(b) = &r.backoff {
            match Backoff::parse(&b.value) {
                Some(v) => sch.backoff = v,
                None => {
                    self.err(
                        "spes::workflow::bad_policy",
                        format!("{what}: unknown backoff `{}`", b.value),
                        span(b),
                        "use `backoff: exponential` or `backoff: constant`",
                    );
                    return None;
                }
            }
        }
        if let Some(b) = &r.base {
            sch.base = self.policy_duration(b, what, "retry base")?;
        }
        if let Some(m) = &r.max {
            sch.max = self.policy_duration(m, what, "retry max")?;
        }
        if sch.base > sch.max {
            self.err(
                "spes::workflow::bad_policy",
                format!(
                    "{what}: retry base {} is longer than max {}",
                    crate::duration::format_duration(sch.base),
                    crate::duration::format_duration(sch.max)
                ),
                r.base.as_ref().and_then(span).or(at),
                "lower `base` or raise `max` (max defaults to 30s)",
            );
            return None;
        }
        if let Some(j) = r.jitter {
            sch.jitter = j;
        }
        let validate = match &r.validate {
            Some(v) => {
                let mut k = known.clone();
                k.write("output");
                Some(self.condition(v, &k, &format!("{what} retry `validate`"))?)
            }
            None => None,
        };
        Some(RetryPolicy {
            schedule: sch,
            validate,
        })
    }

    fn breaker_policy(
        &mut self,
        b: &crate::workflow::spec::BreakerSpec,
        what: &str,
    ) -> Option<BreakerPolicy> {
        let mut cfg = BreakerConfig::default();
        if let Some(f) = &b.failures {
            if f.value == 0 {
                self.err(
                    "spes::workflow::bad_policy",
                    format!("{what}: circuit_breaker failures must be at least 1"),
                    span(f),
                    "write e.g. failures: 5 (consecutive failures that open the breaker)",
                );
                return None;
            }
            cfg.failures = f.value;
        }
        if let Some(c) = &b.cooldown {
            cfg.cooldown = self.policy_duration(c, what, "circuit_breaker cooldown")?;
        }
        Some(BreakerPolicy {
            name: b.name.as_ref().map(|n| n.value.clone()),
            config: cfg,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn alternative(
        &mut self,
        a: &AlternativeSpec,
        list_at: Sp,
        known: &Known,
        path: &str,
        name: &str,
        field: &str,
        n: usize,
        def: &KindDef,
    ) -> Option<Alternative> {
        let what = format!("step `{path}` {field} #{n}");
        let at = a
            .provider
            .as_ref()
            .and_then(span)
            .or_else(|| a.model.as_ref().and_then(span))
            .or_else(|| a.step.as_ref().and_then(span))
            .or(list_at);
        match (&a.step, a.provider.is_some() || a.model.is_some()) {
            (Some(st), false) => {
                let mut spec = (*st.value).clone();
                if let Some(o) = &spec.output {
                    self.err(
                        "spes::workflow::bad_policy",
                        format!("{what}: an alternative step has no `output` of its own"),
                        span(o),
                        "remove `output`; its result becomes the result of the step it stands in for",
                    );
                    return None;
                }
                let default = format!("{field}{n}");
                if spec.name.is_none() {
                    spec.name = Some(Spanned::new(default, st.referenced, st.defined));
                }
                let mut k = known.clone();
                let mut names = HashSet::new();
                let mut step = self.step(spec, &mut k, path, &mut names)?;
                // Its key is the parent's with a suffix: `summary#fallback2`.
                step.name = StepKey::new(name).slot(field, n).into_string();
                Some(Alternative::Step(Box::new(step)))
            }
            (None, true) => {
                if def.policies != PolicyScope::Call {
                    self.policy_not_for_kind(
                        &what,
                        "provider",
                        def.name,
                        at,
                        "a provider alternative re-sends one model call; use `{ step: ... }` here, or put it on the llm step inside",
                    );
                    return None;
                }
                if let Some(p) = &a.provider {
                    self.provider(p);
                }
                Some(Alternative::Provider {
                    provider: a.provider.as_ref().map(|p| p.value.clone()),
                    model: a.model.as_ref().map(|m| m.value.clone()),
                    label: a.name.as_ref().map(|l| l.value.clone()),
                })
            }
            (Some(_), true) => {
                self.err(
                    "spes::workflow::bad_policy",
                    format!("{what}: give `provider`/`model` or `step`, not both"),
                    at,
                    "split it into two alternatives",
                );
                None
            }
            (None, false) => {
                self.err(
                    "spes::workflow::bad_policy",
                    format!("{what}: an alternative needs `provider`, `model` or `step`"),
                    at,
                    "write e.g. { provider: ollama } or { step: { kind: transform, fn: template, input: \"n/a\" } }",
                );
                None
            }
        }
    }

    /// Keys a step's policies write besides its `output`: `<output>_served_by`
    /// when it has alternatives.
    pub(super) fn policy_writes(&mut self, p: &Policies, output: Option<&str>, known: &mut Known) {
        if let Some(o) = output
            && (!p.fallback.is_empty() || !p.degrade.is_empty())
        {
            known.write(&format!("{o}_served_by"));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::component::ComponentRegistry;
    use crate::policy::{Alternative, Backoff};
    use crate::workflow::{StepKind, ValidateEnv, Workflow, parse_workflow, validate};

    /// (code, (line, col), message | hint)
    type Found = Vec<(String, (usize, usize), String)>;

    fn check(yaml: &str) -> Result<Workflow, Found> {
        let reg = ComponentRegistry::from_components(vec![]);
        let providers = vec!["claude".to_owned(), "ollama".to_owned()];
        let env = ValidateEnv {
            components: &reg,
            providers: Some(&providers),
        };
        let spec = parse_workflow("w.yaml", yaml).map_err(|d| {
            d.0.iter()
                .map(|d| {
                    (
                        d.code.to_owned(),
                        d.line_col.unwrap_or_default(),
                        d.message.clone(),
                    )
                })
                .collect::<Vec<_>>()
        })?;
        validate(spec, "w.yaml", yaml, &env)
            .map(|(w, _)| w)
            .map_err(|d| {
                d.0.iter()
                    .filter(|d| d.severity == crate::Severity::Error)
                    .map(|d| {
                        (
                            d.code.to_owned(),
                            d.line_col.unwrap_or_default(),
                            format!("{} | {}", d.message, d.hint.clone().unwrap_or_default()),
                        )
                    })
                    .collect()
            })
    }

    fn codes(yaml: &str) -> Vec<(String, (usize, usize))> {
        match check(yaml) {
            Ok(_) => vec![],
            Err(e) => e.into_iter().map(|(c, at, _)| (c, at)).collect(),
        }
    }

    const FULL: &str = r#"
name: w
inputs: { text: { type: string, required: true } }
steps:
  - name: summary
    kind: llm
    prompt: "Sum up {{ text }}"
    provider: claude
    retry: { attempts: 4, backoff: constant, base: 10ms, max: 1s, jitter: false, validate: "output | length > 0 and text" }
    fallback: [ { provider: ollama }, { step: { kind: transform, fn: template, input: "unavailable: {{ text }}" } } ]
    circuit_breaker: { name: claude, failures: 2, cooldown: 5s }
    degrade: [ { provider: claude, name: best }, { model: small } ]
    timeout: 30s
    output: summary
  - { name: show, kind: transform, fn: template, input: "{{ summary }} by {{ summary_served_by.by }}", output: out }
"#;

    #[test]
    fn every_policy_field_is_read() {
        let wf = check(FULL).unwrap();
        let p = &wf.steps[0].policies;
        let r = p.retry.as_ref().unwrap();
        assert_eq!(r.schedule.attempts, 4);
        assert_eq!(r.schedule.backoff, Backoff::Constant);
        assert_eq!(r.schedule.base, Duration::from_millis(10));
        assert_eq!(r.schedule.max, Duration::from_secs(1));
        assert!(!r.schedule.jitter);
        assert!(r.validate.is_some());
        let b = p.circuit_breaker.as_ref().unwrap();
        assert_eq!(b.name.as_deref(), Some("claude"));
        assert_eq!(
            (b.config.failures, b.config.cooldown),
            (2, Duration::from_secs(5))
        );
        assert_eq!(p.timeout, Some(Duration::from_secs(30)));
        assert_eq!(p.degrade.len(), 2);
        assert_eq!(p.degrade[0].label(), "best");
        assert_eq!(p.degrade[1].label(), "small");
        match &p.fallback[1] {
            Alternative::Step(s) => {
                assert_eq!(s.name, "summary#fallback2");
                assert!(matches!(s.kind, StepKind::Transform(_)));
            }
            Alternative::Provider { .. } => panic!("expected a step"),
        }
    }

    #[test]
    fn retry_none_is_one_attempt_and_a_wrong_word_is_refused() {
        let wf = check("name: w\nsteps:\n  - { name: a, kind: llm, prompt: hi, retry: none }\n")
            .unwrap();
        let r = wf.steps[0].policies.retry.as_ref().unwrap();
        assert_eq!(r.schedule.attempts, 1);
        assert!(r.validate.is_none());
        let e = check("name: w\nsteps:\n  - { name: a, kind: llm, prompt: hi, retry: never }\n")
            .unwrap_err();
        assert!(format!("{e:?}").contains("none"), "{e:?}");
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let wf = check(
            "name: w\nsteps:\n  - { name: a, kind: llm, prompt: hi, retry: {}, circuit_breaker: {} }\n",
        )
        .unwrap();
        let p = &wf.steps[0].policies;
        let r = p.retry.as_ref().unwrap();
        assert_eq!(
            (
                r.schedule.attempts,
                r.schedule.base,
                r.schedule.max,
                r.schedule.jitter
            ),
            (3, Duration::from_secs(1), Duration::from_secs(30), true)
        );
        let b = p.circuit_breaker.as_ref().unwrap();
        assert_eq!((b.name.as_deref(), b.config.failures), (None, 5));
    }

    #[test]
    fn unknown_providers_in_alternatives_are_errors_with_hints() {
        let e = check(
            "name: w\nsteps:\n  - name: a\n    kind: llm\n    prompt: hi\n    fallback: [ { provider: olama } ]\n    degrade: [ { provider: cluade } ]\n",
        )
        .unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(e[0].0, "spes::workflow::unknown_provider");
        assert_eq!(e[0].1, (6, 29));
        assert!(e[0].2.contains("did you mean `ollama`?"), "{}", e[0].2);
        assert_eq!(e[1].1, (7, 28));
        assert!(e[1].2.contains("did you mean `claude`?"), "{}", e[1].2);
    }

    #[test]
    fn policies_that_make_no_sense_for_the_kind_are_refused() {
        let t = "name: w\nsteps:\n  - { name: a, kind: transform, fn: trim, input: x, retry: { attempts: 2 } }\n";
        assert_eq!(
            codes(t),
            vec![("spes::workflow::policy_not_for_kind".into(), (3, 60))]
        );
        let t = "name: w\nsteps:\n  - { name: a, kind: transform, fn: trim, input: x, fallback: [ { provider: ollama } ] }\n";
        assert_eq!(
            codes(t),
            vec![("spes::workflow::policy_not_for_kind".into(), (3, 77))]
        );
        let seq = "name: w\nsteps:\n  - name: s\n    kind: sequence\n    circuit_breaker: { failures: 2 }\n    steps: [ { name: a, kind: llm, prompt: hi } ]\n";
        assert_eq!(
            codes(seq),
            vec![("spes::workflow::policy_not_for_kind".into(), (5, 22))]
        );
        let gate = "name: w\ninputs: { d: { type: string } }\nsteps:\n  - { name: g, kind: approval, show: d, timeout: 5s }\n";
        assert_eq!(
            codes(gate),
            vec![("spes::workflow::policy_not_for_kind".into(), (4, 50))]
        );
        let nested = "name: w\nsteps:\n  - name: c\n    kind: choose\n    generate: { prompt: hi, retry: { attempts: 2 } }\n";
        assert_eq!(
            codes(nested),
            vec![("spes::workflow::policy_not_for_kind".into(), (5, 15))]
        );
    }

    #[test]
    fn a_transform_may_fall_back_to_a_step() {
        let wf = check("name: w\nsteps:\n  - { name: a, kind: transform, fn: json_parse, input: x, fallback: [ { step: { kind: transform, fn: template, input: \"{}\" } } ], output: a }\n").unwrap();
        assert_eq!(wf.steps[0].policies.fallback.len(), 1);
    }

    #[test]
    fn bad_values_point_at_themselves() {
        let y = |p: &str| {
            format!("name: w\nsteps:\n  - name: a\n    kind: llm\n    prompt: hi\n    {p}\n")
        };
        let c = |p: &str| codes(&y(p));
        assert_eq!(
            c("retry: { attempts: 0 }"),
            vec![("spes::workflow::bad_policy".into(), (6, 24))]
        );
        assert_eq!(
            c("retry: { backoff: linear }"),
            vec![("spes::workflow::bad_policy".into(), (6, 23))]
        );
        assert_eq!(
            c("retry: { base: 2m }"),
            vec![("spes::workflow::bad_policy".into(), (6, 20))]
        );
        assert_eq!(
            c("retry: { max: 10 }"),
            vec![("spes::workflow::bad_duration".into(), (6, 19))]
        );
        assert_eq!(
            c("timeout: 0s"),
            vec![("spes::workflow::bad_policy".into(), (6, 14))]
        );
        assert_eq!(
            c("circuit_breaker: { failures: 0 }"),
            vec![("spes::workflow::bad_policy".into(), (6, 34))]
        );
        assert_eq!(
            c("fallback: []"),
            vec![("spes::workflow::bad_policy".into(), (6, 15))]
        );
        assert_eq!(
            c("fallback: [ { name: x } ]"),
            vec![("spes::workflow::bad_policy".into(), (6, 15))]
        );
        assert_eq!(
            c("fallback: [ { provider: ollama, step: { kind: llm, prompt: x } } ]"),
            vec![("spes::workflow::bad_policy".into(), (6, 29))]
        );
        assert_eq!(
            c("fallback: [ { step: { kind: llm, prompt: x, output: y } } ]"),
            vec![("spes::workflow::bad_policy".into(), (6, 57))]
        );
        assert_eq!(
            c("retry: { tries: 2 }"),
            vec![("spes::yaml::unknown_field".into(), (6, 14))]
        );
    }

    #[test]
    fn validate_reads_output_and_known_keys_only() {
        let y = "name: w\nsteps:\n  - name: a\n    kind: llm\n    prompt: hi\n    retry: { validate: \"output | length > limit\" }\n";
        let e = check(y).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].0, "spes::workflow::unknown_key");
        assert!(e[0].2.contains("reads `limit`"), "{}", e[0].2);
    }

    #[test]
    fn fallback_steps_read_the_context_before_the_step() {
        let y = "name: w\nsteps:\n  - name: a\n    kind: llm\n    prompt: hi\n    fallback: [ { step: { kind: transform, fn: template, input: \"{{ a }}\" } } ]\n    output: a\n";
        let e = check(y).unwrap_err();
        assert_eq!(e[0].0, "spes::workflow::unknown_key");
    }
}
