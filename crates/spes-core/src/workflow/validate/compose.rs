//! Composition (§7): reusable step definitions (`use:`). Sub-workflows
//! (`kind: workflow`) are in `kinds/workflow.rs`.

use serde_saphyr::Spanned;

use super::{Validator, span};
use crate::workflow::spec::StepSpec;

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
}

/// A step spec with every field empty, shaped like `s` (for "no other field" checks).
fn empty_like(_s: &StepSpec) -> StepSpec {
    StepSpec::empty()
}
