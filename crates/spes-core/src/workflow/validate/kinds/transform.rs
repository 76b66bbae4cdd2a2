//! Validation of `transform` steps.

use crate::transform;
use crate::workflow::StepKind;
use crate::workflow::TransformStep;
use crate::workflow::kind::{Distribution, KindDef, PolicyScope};
use crate::workflow::spec::StepSpec;
use crate::workflow::validate::StepAt;
use crate::workflow::validate::{Known, Sp, Validator, closest, span};

/// `transform`: a pure function.
pub(crate) const TRANSFORM: KindDef = KindDef {
    name: "transform",
    fields: &["fn", "input", "args"],
    policies: PolicyScope::Pure,
    distribution: Distribution::Anywhere,
    example: r#"{ name: s, kind: transform, fn: trim, input: "{{ text }}" }"#,
    validate: validate_transform,
};

fn validate_transform(
    v: &mut Validator<'_>,
    s: &mut StepSpec,
    known: &mut Known,
    at: &StepAt<'_>,
) -> Option<StepKind> {
    Some(StepKind::Transform(
        v.transform(s, known, at.what, at.kind_at)?,
    ))
}

impl Validator<'_> {
    pub(crate) fn transform(
        &mut self,
        s: &StepSpec,
        known: &Known,
        what: &str,
        kind_at: Sp,
    ) -> Option<TransformStep> {
        let Some(f) = &s.func else {
            self.err(
                "spes::workflow::missing_field",
                format!("{what}: a transform needs `fn`"),
                kind_at,
                format!(
                    "add `fn:` with one of: {}",
                    transform::FUNCTION_NAMES.join(", ")
                ),
            );
            return None;
        };
        let args = s
            .args
            .as_ref()
            .map(|a| a.value.clone().into_iter().collect())
            .unwrap_or_default();
        let func = match transform::build(&f.value, &args) {
            Ok(func) => func,
            Err(e) => {
                let hint = if transform::FUNCTION_NAMES.contains(&f.value.as_str()) {
                    "see FORMAT.md for each function's args".to_owned()
                } else {
                    match closest(&f.value, transform::FUNCTION_NAMES.iter().copied()) {
                        Some(c) => format!(
                            "did you mean `{c}`? Functions: {}",
                            transform::FUNCTION_NAMES.join(", ")
                        ),
                        None => format!("functions: {}", transform::FUNCTION_NAMES.join(", ")),
                    }
                };
                let at = if transform::FUNCTION_NAMES.contains(&f.value.as_str()) {
                    s.args.as_ref().and_then(span).or(span(f))
                } else {
                    span(f)
                };
                self.err(
                    "spes::workflow::bad_transform",
                    format!("{what}: {e}"),
                    at,
                    hint,
                );
                return None;
            }
        };
        let Some(input) = &s.input else {
            self.err(
                "spes::workflow::missing_field",
                format!("{what}: a transform needs `input`"),
                kind_at,
                "add `input: \"{{ some_key }}\"`",
            );
            return None;
        };
        let tpl = self.template(input, what)?;
        let reads: Vec<String> = tpl.reads().iter().cloned().collect();
        self.check_reads(reads.iter(), span(input), known, &[], what);
        Some(TransformStep {
            func,
            func_name: f.value.clone(),
            input: tpl,
        })
    }
}
