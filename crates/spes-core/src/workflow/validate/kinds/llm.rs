//! Validation of `llm` steps, their answer schemas, and llm steps nested
//! in other kinds (`generate`, `section`, `classify`).

use std::collections::HashSet;

use serde_saphyr::Spanned;

use crate::answer::{AnswerSchema, OnTruncation};
use crate::workflow::kind::{Distribution, KindDef, PolicyScope};
use crate::workflow::spec::StepSpec;
use crate::workflow::validate::StepAt;
use crate::workflow::validate::{Known, Sp, Validator, read_bounded, span};
use crate::workflow::{Format, LlmStep, Step, StepKind};

/// `llm`: one model call.
pub(crate) const LLM: KindDef = KindDef {
    name: "llm",
    fields: &[
        "prompt",
        "agent",
        "task",
        "system",
        "provider",
        "model",
        "temperature",
        "max_tokens",
        "stop",
        "format",
        "schema",
        "repair",
        "on_truncation",
    ],
    policies: PolicyScope::Call,
    distribution: Distribution::Anywhere,
    example: r#"{ name: s, kind: llm, prompt: "Sum up {{ text }}" }"#,
    validate: validate_llm,
};

fn validate_llm(
    v: &mut Validator<'_>,
    s: &mut StepSpec,
    known: &mut Known,
    at: &StepAt<'_>,
) -> Option<StepKind> {
    Some(StepKind::Llm(Box::new(
        v.llm(s, known, at.what, at.kind_at)?,
    )))
}

impl Validator<'_> {
    pub(crate) fn llm(
        &mut self,
        s: &StepSpec,
        known: &Known,
        what: &str,
        kind_at: Sp,
    ) -> Option<LlmStep> {
        let agent = match &s.agent {
            Some(a) => Some(self.agent_named(a, known)?),
            None => None,
        };
        let text = match (&s.prompt, &s.task, &agent) {
            (Some(p), None, _) => p,
            (None, Some(t), Some(_)) => t,
            (Some(p), Some(_), _) => {
                self.err(
                    "spes::workflow::prompt_and_task",
                    format!("{what} has both `prompt` and `task`"),
                    span(p),
                    "use `prompt` for a plain call, or `agent` + `task` for an agent",
                );
                return None;
            }
            (None, Some(t), None) => {
                self.err(
                    "spes::workflow::task_without_agent",
                    format!("{what} has a `task` but no `agent`"),
                    span(t),
                    "add `agent: NAME`, or rename `task` to `prompt`",
                );
                return None;
            }
            (None, None, _) => {
                self.err(
                    "spes::workflow::missing_prompt",
                    format!("{what}: an llm step needs `prompt`, or `agent` and `task`"),
                    kind_at,
                    "add `prompt: \"...\"`",
                );
                return None;
            }
        };
        let prompt = self.template(text, what)?;
        let reads: Vec<String> = prompt.reads().iter().cloned().collect();
        self.check_reads(reads.iter(), span(text), known, &[], what);
        let system = match &s.system {
            Some(sys) => {
                let t = self.template(sys, what)?;
                let reads: Vec<String> = t.reads().iter().cloned().collect();
                self.check_reads(reads.iter(), span(sys), known, &[], what);
                Some(t)
            }
            None => None,
        };
        if let Some(p) = &s.provider {
            self.provider(p);
        }
        let format = match s.format.as_ref().map(|f| (f.value.as_str(), span(f))) {
            None | Some(("text", _)) => Format::Text,
            Some(("json", _)) => Format::Json,
            Some((other, at)) => {
                self.err(
                    "spes::workflow::bad_format",
                    format!("{what}: unknown format `{other}`"),
                    at,
                    "use `format: text` or `format: json`",
                );
                Format::Text
            }
        };
        if let Some(t) = &s.temperature
            && !(0.0..=2.0).contains(&t.value)
        {
            self.err(
                "spes::workflow::bad_temperature",
                format!("temperature {} is outside 0..2", t.value),
                span(t),
                "use a value between 0 (deterministic) and 2",
            );
        }
        if let Some(m) = &s.max_tokens
            && m.value == 0
        {
            self.err(
                "spes::workflow::bad_max_tokens",
                "max_tokens must be at least 1",
                span(m),
                "remove it or give a positive number",
            );
        }
        let schema = match &s.schema {
            Some(x) => Some(self.answer_schema(x, what)?),
            None => None,
        };
        let on_truncation = match s
            .on_truncation
            .as_ref()
            .map(|f| (f.value.as_str(), span(f)))
        {
            None => None,
            Some(("fail", _)) => Some(OnTruncation::Fail),
            Some(("warn", _)) => Some(OnTruncation::Warn),
            Some((other, at)) => {
                self.err(
                    "spes::workflow::bad_on_truncation",
                    format!("{what}: unknown on_truncation `{other}`"),
                    at,
                    "use `on_truncation: fail` (repair, then fail) or `on_truncation: warn` (keep the cut answer, marked)",
                );
                None
            }
        };
        Some(LlmStep {
            prompt,
            agent,
            system,
            provider: s.provider.as_ref().map(|p| p.value.clone()),
            model: s.model.as_ref().map(|m| m.value.clone()),
            temperature: s.temperature.as_ref().map(|t| t.value),
            max_tokens: s.max_tokens.as_ref().map(|m| m.value),
            stop: s.stop.as_ref().map(|x| x.value.clone()).unwrap_or_default(),
            format: if schema.is_some() {
                Format::Json
            } else {
                format
            },
            schema,
            repair: s.repair.as_ref().map(|r| r.value),
            on_truncation,
        })
    }

    /// An llm step's `schema`: inline, or a file relative to this workflow
    /// (read bounded, pinned with the run's hashes). Checked as a JSON Schema.
    pub(crate) fn answer_schema(
        &mut self,
        x: &Spanned<serde_json::Value>,
        what: &str,
    ) -> Option<AnswerSchema> {
        let at = span(x);
        let (value, file) = match &x.value {
            serde_json::Value::String(path) => {
                let base = std::path::Path::new(&self.file)
                    .parent()
                    .map(std::path::Path::to_path_buf)
                    .unwrap_or_default();
                let full = base.join(path);
                let shown = full.display().to_string();
                let text = match read_bounded(&full, crate::answer::MAX_SCHEMA_BYTES) {
                    Ok(t) => t,
                    Err(e) => {
                        self.err(
                            "spes::workflow::schema_file",
                            format!("{what}: cannot read the schema file {shown}: {e}"),
                            at,
                            "give a path relative to this workflow file, or write the schema inline",
                        );
                        return None;
                    }
                };
                let parsed = if full.extension().is_some_and(|e| {
                    e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml")
                }) {
                    crate::yaml::parse_yaml::<serde_json::Value>(
                        &shown,
                        &text,
                        "spes::workflow::schema_file",
                    )
                    .map_err(|d| d.message)
                } else {
                    serde_json::from_str::<serde_json::Value>(&text).map_err(|e| e.to_string())
                };
                let value = match parsed {
                    Ok(v) => v,
                    Err(e) => {
                        self.err(
                            "spes::workflow::schema_file",
                            format!("{what}: the schema file {shown} is not valid JSON: {e}"),
                            at,
                            "a schema file holds one JSON Schema object (JSON, or YAML for .yaml/.yml)",
                        );
                        return None;
                    }
                };
                let canonical = std::fs::canonicalize(&full).unwrap_or(full);
                let resolved = canonical.display().to_string();
                let pin = crate::workflow::ChildSource {
                    path: resolved.clone(),
                    sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes())),
                };
                if !self.schemas.contains(&pin) {
                    self.schemas.push(pin);
                }
                (value, Some((resolved, shown)))
            }
            v => (v.clone(), None),
        };
        // Identical schemas (a file or a definition used by many steps)
        // are compiled once and share their validator.
        let cache_key = format!(
            "{}\u{0}{}",
            file.as_ref().map_or("", |(r, _)| r.as_str()),
            value
        );
        if let Some(done) = self.compiled_schemas.get(&cache_key) {
            return Some(done.clone());
        }
        let compiled = match AnswerSchema::new(value) {
            Ok(s) => Some(match file {
                Some((resolved, _)) => s.from_file(resolved),
                None => s,
            }),
            Err(problem) => {
                let whose = file.map_or_else(String::new, |(_, shown)| format!(" in {shown}"));
                self.err(
                    "spes::workflow::bad_schema",
                    format!("{what}: the schema{whose} is not a valid JSON Schema: {problem}"),
                    at,
                    "write a JSON Schema object, e.g. { type: object, required: [title], properties: { title: { type: string } } }, or a path to a file holding one",
                );
                None
            }
        };
        if let Some(c) = &compiled {
            self.compiled_schemas.insert(cache_key, c.clone());
        }
        compiled
    }

    /// Validates a nested step that must be an `llm` step (named `default` when unnamed).
    pub(crate) fn nested_llm(
        &mut self,
        sy: &Spanned<Box<StepSpec>>,
        default: &str,
        known: &Known,
        path: &str,
        locals: &[&str],
    ) -> Option<Box<LlmStep>> {
        match self.nested_llm_step(sy, default, known, path, locals)?.kind {
            StepKind::Llm(l) => Some(l),
            _ => None,
        }
    }

    /// [`Self::nested_llm`], keeping the step around the llm step (its name and location).
    pub(crate) fn nested_llm_step(
        &mut self,
        sy: &Spanned<Box<StepSpec>>,
        default: &str,
        known: &Known,
        path: &str,
        locals: &[&str],
    ) -> Option<Step> {
        let (mut spec, mut k) = super::orchestration::nested_spec(sy, default, known, locals);
        let kind_ok = spec.kind.as_ref().is_none_or(|k| k.value == "llm");
        if !kind_ok {
            self.err(
                "spes::workflow::nested_kind",
                format!("step `{path}`: `{default}` must be an llm step"),
                span(sy),
                "give it kind: llm (or leave kind out) with a prompt or agent + task",
            );
            return None;
        }
        if spec.kind.is_none() {
            spec.kind = Some(Spanned::new("llm".to_owned(), sy.referenced, sy.defined));
        }
        let mut names = HashSet::new();
        let step = self.step(spec, &mut k, path, &mut names)?;
        if !step.policies.is_empty() {
            self.err(
                "spes::workflow::policy_not_for_kind",
                format!("step `{path}`: policies on `{default}` are not applied"),
                span(sy),
                "put retry/fallback/degrade/timeout on the enclosing step",
            );
        }
        matches!(step.kind, StepKind::Llm(_)).then_some(step)
    }
}
