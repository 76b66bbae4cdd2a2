//! Validation of `kind: workflow` steps (§7 composition: sub-workflows).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_saphyr::Spanned;
use sha2::{Digest, Sha256};

use crate::workflow::StepKind;
use crate::workflow::kind::{Distribution, KindDef, PolicyScope};
use crate::workflow::spec::StepSpec;
use crate::workflow::validate::StepAt;
use crate::workflow::validate::{Known, Sp, Validator, span, validate_nested};
use crate::workflow::{ChildSource, SubWorkflow};

/// How deeply sub-workflows may nest.
const MAX_NESTING: usize = 16;

/// `workflow`: another workflow file, run with mapped inputs.
pub(crate) const WORKFLOW: KindDef = KindDef {
    name: "workflow",
    fields: &["path", "inputs"],
    policies: PolicyScope::Composite,
    distribution: Distribution::Local,
    example: r#"{ name: s, kind: workflow, path: child.yaml }"#,
    validate: validate_workflow,
};

fn validate_workflow(
    v: &mut Validator<'_>,
    s: &mut StepSpec,
    known: &mut Known,
    at: &StepAt<'_>,
) -> Option<StepKind> {
    Some(StepKind::Workflow(Box::new(
        v.sub_workflow(s, known, at.path, at.kind_at, false)?,
    )))
}

impl Validator<'_> {
    pub(crate) fn sub_workflow(
        &mut self,
        s: &StepSpec,
        known: &Known,
        path: &str,
        kind_at: Sp,
        as_tool: bool,
    ) -> Option<SubWorkflow> {
        let what = format!("step `{path}`");
        let Some(p) = &s.path else {
            self.err(
                "spes::workflow::missing_field",
                format!("{what}: a workflow step needs `path` (the sub-workflow file)"),
                kind_at,
                "add `path: other.yaml` (relative to this file)",
            );
            return None;
        };
        let base = Path::new(&self.file)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let file = base.join(&p.value);
        let canonical = std::fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
        if self.stack.contains(&canonical) || self.stack.len() >= MAX_NESTING {
            self.err(
                "spes::workflow::workflow_cycle",
                format!(
                    "{what}: {} includes itself (through {})",
                    p.value,
                    chain(&self.stack)
                ),
                span(p),
                "sub-workflows may not include a workflow that includes them",
            );
            return None;
        }
        let shown = file.display().to_string();
        let text = match read_capped(&file) {
            Ok(t) => t,
            Err(e) => {
                self.err(
                    "spes::workflow::sub_workflow",
                    format!("{what}: cannot read {shown}: {e}"),
                    span(p),
                    "check the path (relative to this workflow file)",
                );
                return None;
            }
        };
        let child = match crate::workflow::parse_workflow(&shown, &text).and_then(|spec| {
            let mut stack = self.stack.clone();
            if stack.is_empty()
                && let Ok(me) = std::fs::canonicalize(&self.file)
            {
                stack.push(me);
            }
            stack.push(canonical.clone());
            validate_nested(spec, &shown, &text, &self.env, stack)
        }) {
            Ok((wf, _warnings)) => wf,
            Err(d) => {
                // The child's own diagnostics point into the child file.
                for x in d.0 {
                    self.diags.push(x);
                }
                self.err(
                    "spes::workflow::sub_workflow",
                    format!(
                        "{what}: the sub-workflow {} is invalid (see above)",
                        p.value
                    ),
                    span(p),
                    "fix the sub-workflow; it is validated with its parent",
                );
                return None;
            }
        };
        let mut inputs = BTreeMap::new();
        // A workflow offered as a tool gets its inputs from the model.
        let given: BTreeMap<String, Spanned<String>> = s
            .inputs
            .as_ref()
            .filter(|_| !as_tool)
            .map(|i| i.value.clone())
            .unwrap_or_default();
        let declared: HashSet<&str> = child.inputs.iter().map(|i| i.name.as_str()).collect();
        for (k, t) in &given {
            if !declared.contains(k.as_str()) {
                self.err(
                    "spes::workflow::unknown_input",
                    format!("{what}: {} declares no input `{k}`", p.value),
                    span(t),
                    format!(
                        "its inputs: {}",
                        child
                            .inputs
                            .iter()
                            .map(|i| i.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                continue;
            }
            if let Some(tpl) = self.template(t, &what) {
                let reads: Vec<String> = tpl.reads().iter().cloned().collect();
                self.check_reads(reads.iter(), span(t), known, &[], &what);
                inputs.insert(k.clone(), tpl);
            }
        }
        for i in child
            .inputs
            .iter()
            .filter(|i| !as_tool && i.required && !given.contains_key(&i.name))
        {
            self.err(
                "spes::workflow::missing_input",
                format!("{what}: {} needs input `{}`", p.value, i.name),
                s.inputs.as_ref().and_then(span).or(span(p)),
                format!("add `inputs: {{ {}: \"{{{{ some_key }}}}\" }}`", i.name),
            );
        }
        for c in &child.components {
            self.components.insert(c.reference(), c.clone());
        }
        self.children.push(ChildSource {
            path: canonical.display().to_string(),
            sha256: hex::encode(Sha256::digest(text.as_bytes())),
        });
        self.children.extend(child.children.iter().cloned());
        for pin in &child.schemas {
            if !self.schemas.contains(pin) {
                self.schemas.push(pin.clone());
            }
        }
        Some(SubWorkflow {
            path: p.value.clone(),
            workflow: Arc::new(child),
            inputs,
        })
    }
}

fn chain(stack: &[PathBuf]) -> String {
    stack
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" → ")
}

fn read_capped(path: &Path) -> Result<String, String> {
    crate::fs::read_text(path, crate::yaml::MAX_YAML_BYTES as u64).map_err(|e| e.to_string())
}
