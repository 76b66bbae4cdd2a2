//! Composition (§7): reusable step definitions (`use:`) and sub-workflows
//! (`kind: workflow`).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_saphyr::Spanned;
use sha2::{Digest, Sha256};

use super::{Known, Sp, Validator, span, validate_nested};
use crate::workflow::spec::StepSpec;
use crate::workflow::{ChildSource, SubWorkflow};

/// How deeply sub-workflows may nest.
const MAX_NESTING: usize = 16;

impl Validator<'_> {
    /// Replaces a `use: NAME` step by its definition, keeping the using
    /// step's `name`, `output`, `when` and `description`.
    pub(super) fn expand_use(&mut self, s: StepSpec, depth: usize) -> Option<StepSpec> {
        let Some(u) = s.use_def.clone() else {
            return Some(s);
        };
        let Some(def) = self.definitions.get(&u.value).map(|d| d.value.clone()) else {
            let names: Vec<&str> = self.definitions.keys().map(String::as_str).collect();
            let hint = if names.is_empty() {
                "add a `definitions:` map at the top of the file".to_owned()
            } else {
                format!("defined: {}", names.join(", "))
            };
            self.err(
                "spes::workflow::unknown_definition",
                format!("`use: {}` names no definition", u.value),
                span(&u),
                hint,
            );
            return None;
        };
        if depth > 8 {
            self.err(
                "spes::workflow::definition_cycle",
                format!(
                    "definition `{}` uses definitions too deeply (a cycle?)",
                    u.value
                ),
                span(&u),
                "a definition may `use` another, but not itself",
            );
            return None;
        }
        // Only the instance's identity may be given beside `use`.
        let mut only = s.clone();
        only.use_def = None;
        only.name = None;
        only.output = None;
        only.when = None;
        only.description = None;
        if format!("{only:?}") != format!("{:?}", empty_like(&only)) {
            self.err(
                "spes::workflow::use_with_fields",
                format!(
                    "a step with `use: {}` may only add name, output, when and description",
                    u.value
                ),
                span(&u),
                "change the definition, or write the step out in full",
            );
            return None;
        }
        let mut out = self.expand_use(def, depth + 1)?;
        if s.name.is_some() {
            out.name = s.name;
        }
        if s.output.is_some() {
            out.output = s.output;
        }
        if s.when.is_some() {
            out.when = s.when;
        }
        if s.description.is_some() {
            out.description = s.description;
        }
        if out.name.is_none() {
            out.name = Some(Spanned::new(u.value.clone(), u.referenced, u.defined));
        }
        Some(out)
    }

    pub(super) fn sub_workflow(
        &mut self,
        s: &StepSpec,
        known: &Known,
        path: &str,
        kind_at: Sp,
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
        let given: BTreeMap<String, Spanned<String>> = s
            .inputs
            .as_ref()
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
            .filter(|i| i.required && !given.contains_key(&i.name))
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

/// A step spec with every field empty, shaped like `s` (for "no other field" checks).
fn empty_like(_s: &StepSpec) -> StepSpec {
    StepSpec::empty()
}
