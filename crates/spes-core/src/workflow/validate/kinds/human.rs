//! Validation of the human gates: `approval`, `choose`, `sections`, and
//! their deadlines.

use std::collections::HashSet;

use serde_saphyr::Spanned;

use crate::template::Template;
use crate::workflow::StepKey;
use crate::workflow::StepKind;
use crate::workflow::kind::{Distribution, KindDef, PolicyScope};
use crate::workflow::spec::{OnTimeoutSpec, OutlineSpec, StepSpec};
use crate::workflow::validate::StepAt;
use crate::workflow::validate::{DEFAULT_REVISE, Known, Sp, Validator, span};
use crate::workflow::{ApprovalStep, ChooseStep, Outline, SectionsStep, Timeout, TimeoutAction};

/// `approval`: a human approves, rejects or asks for a revision.
pub(crate) const APPROVAL: KindDef = KindDef {
    name: "approval",
    fields: &[
        "show",
        "generate",
        "max_revisions",
        "revise",
        "deadline",
        "on_timeout",
        "agent",
        "provider",
    ],
    policies: PolicyScope::Gate,
    distribution: Distribution::Local,
    example: r#"{ name: s, kind: approval, show: text }"#,
    validate: validate_approval,
};

/// `choose`: a human picks one of N generated variations.
pub(crate) const CHOOSE: KindDef = KindDef {
    name: "choose",
    fields: &["generate", "n", "deadline", "on_timeout"],
    policies: PolicyScope::Gate,
    distribution: Distribution::Local,
    example: r#"{ name: s, kind: choose, generate: { prompt: "A title for {{ text }}" } }"#,
    validate: validate_choose,
};

/// `sections`: a document generated section by section, each approved.
pub(crate) const SECTIONS: KindDef = KindDef {
    name: "sections",
    fields: &["outline", "section", "deadline", "on_timeout"],
    policies: PolicyScope::Gate,
    distribution: Distribution::Local,
    example: r#"{ name: s, kind: sections, outline: [Intro, Design], section: { prompt: "Write {{ section }}" } }"#,
    validate: validate_sections,
};

fn validate_approval(
    v: &mut Validator<'_>,
    s: &mut StepSpec,
    known: &mut Known,
    at: &StepAt<'_>,
) -> Option<StepKind> {
    Some(StepKind::Approval(Box::new(
        v.approval(s, known, at.path, at.kind_at)?,
    )))
}

fn validate_choose(
    v: &mut Validator<'_>,
    s: &mut StepSpec,
    known: &mut Known,
    at: &StepAt<'_>,
) -> Option<StepKind> {
    Some(StepKind::Choose(Box::new(
        v.choose(s, known, at.path, at.kind_at)?,
    )))
}

fn validate_sections(
    v: &mut Validator<'_>,
    s: &mut StepSpec,
    known: &mut Known,
    at: &StepAt<'_>,
) -> Option<StepKind> {
    Some(StepKind::Sections(Box::new(
        v.sections(s, known, at.path, at.kind_at)?,
    )))
}

impl Validator<'_> {
    pub(crate) fn timeout(
        &mut self,
        s: &StepSpec,
        known: &Known,
        path: &str,
        what: &str,
    ) -> Option<Option<Timeout>> {
        let after = match &s.deadline {
            None => {
                if let Some(t) = &s.on_timeout {
                    self.err(
                        "spes::workflow::missing_field",
                        format!("{what}: `on_timeout` needs a `deadline`"),
                        span(t),
                        "add `deadline: 3d` (or 30m, 2h, ...)",
                    );
                    return None;
                }
                return Some(None);
            }
            Some(d) => match crate::duration::parse_duration(&d.value) {
                Ok(v) => v,
                Err(e) => {
                    self.err(
                        "spes::workflow::bad_duration",
                        format!("{what}: deadline {e}"),
                        span(d),
                        "write e.g. 30m, 2h or 3d",
                    );
                    return None;
                }
            },
        };
        let then = match s.on_timeout.as_ref().map(|t| (&t.value, span(t))) {
            None => TimeoutAction::Reject,
            Some((OnTimeoutSpec::Action(a), at)) => {
                match a.as_str() {
                    "approve" | "first" => TimeoutAction::Approve,
                    "reject" => TimeoutAction::Reject,
                    other => {
                        self.err(
                        "spes::workflow::bad_on_timeout",
                        format!("{what}: on_timeout `{other}` is not approve, reject or a list of steps"),
                        at,
                        "write on_timeout: approve, on_timeout: reject, or a list of steps",
                    );
                        return None;
                    }
                }
            }
            Some((OnTimeoutSpec::Steps(steps), _)) => {
                let mut k = known.clone();
                let st = self.steps(steps.clone(), &mut k, &StepKey::join(path, "timeout"), None);
                TimeoutAction::Steps(st)
            }
        };
        Some(Some(Timeout { after, then }))
    }

    pub(crate) fn approval(
        &mut self,
        s: &StepSpec,
        known: &mut Known,
        path: &str,
        kind_at: Sp,
    ) -> Option<ApprovalStep> {
        let what = format!("step `{path}`");
        let generate = match &s.generate {
            Some(g) => {
                let mut spec = (*g.value).clone();
                if spec.name.is_none() {
                    spec.name = Some(Spanned::new("generate".to_owned(), g.referenced, g.defined));
                }
                let mut names = HashSet::new();
                Some(Box::new(self.step(spec, known, path, &mut names)?))
            }
            None => None,
        };
        let show = match (&s.show, &generate) {
            (Some(k), None) => {
                let reads = [k.value.clone()];
                self.check_reads(reads.iter(), span(k), known, &[], &what);
                Some(k.value.clone())
            }
            (None, Some(_)) => None,
            (Some(k), Some(_)) => {
                self.err(
                    "spes::workflow::approval_forms",
                    format!(
                        "{what}: give `show` (an existing key) or `generate` (a step), not both"
                    ),
                    span(k),
                    "drop one of them",
                );
                return None;
            }
            (None, None) => {
                self.err(
                    "spes::workflow::missing_field",
                    format!("{what}: an approval needs `show: KEY` or a `generate` step"),
                    kind_at,
                    "add `show: report` (the key holding the text to approve)",
                );
                return None;
            }
        };
        let revise_src = s.revise.clone().unwrap_or_else(|| {
            Spanned::new(
                DEFAULT_REVISE.to_owned(),
                serde_saphyr::Location::UNKNOWN,
                serde_saphyr::Location::UNKNOWN,
            )
        });
        let revise = self.template(&revise_src, &what)?;
        let reads: Vec<String> = revise.reads().iter().cloned().collect();
        self.check_reads(
            reads.iter(),
            span(&revise_src),
            known,
            &["draft", "comments", "suggested", "revision"],
            &what,
        );
        let agent = match &s.agent {
            Some(a) => Some(self.agent_named(a, known)?),
            None => None,
        };
        if let Some(p) = &s.provider {
            self.provider(p);
        }
        let timeout = self.timeout(s, known, path, &what)?;
        Some(ApprovalStep {
            show,
            generate,
            max_revisions: s.max_revisions.as_ref().map_or(2, |m| m.value),
            revise,
            agent,
            provider: s.provider.as_ref().map(|p| p.value.clone()),
            timeout,
        })
    }

    pub(crate) fn choose(
        &mut self,
        s: &StepSpec,
        known: &Known,
        path: &str,
        kind_at: Sp,
    ) -> Option<ChooseStep> {
        let what = format!("step `{path}`");
        let Some(g) = &s.generate else {
            self.err(
                "spes::workflow::missing_field",
                format!(
                    "{what}: choose needs a `generate` step (an llm step run once per variation)"
                ),
                kind_at,
                "add `generate: { kind: llm, prompt: \"...\" }`",
            );
            return None;
        };
        let generate = self.nested_llm(g, "generate", known, path, &[])?;
        let n = s.n.as_ref().map_or(3, |n| n.value);
        if !(2..=20).contains(&n) {
            self.err(
                "spes::workflow::bad_count",
                format!("{what}: n = {n}; choose offers 2 to 20 variations"),
                s.n.as_ref().and_then(span),
                "pick n between 2 and 20",
            );
        }
        let timeout = self.timeout(s, known, path, &what)?;
        Some(ChooseStep {
            generate,
            n,
            timeout,
        })
    }

    pub(crate) fn sections(
        &mut self,
        s: &StepSpec,
        known: &Known,
        path: &str,
        kind_at: Sp,
    ) -> Option<SectionsStep> {
        let what = format!("step `{path}`");
        let outline = match s.outline.as_ref().map(|o| (&o.value, span(o))) {
            Some((OutlineSpec::List(v), at)) => {
                if v.is_empty() {
                    self.err(
                        "spes::workflow::no_steps",
                        format!("{what}: `outline` is empty"),
                        at,
                        "name at least one section",
                    );
                }
                for (i, item) in v.iter().enumerate() {
                    if crate::workflow::section_name(item).is_none() {
                        self.err(
                            "spes::workflow::bad_outline",
                            format!(
                                "{what}: outline item {} is neither a section name nor an object with a `name`",
                                i + 1
                            ),
                            at,
                            "write `outline: [Intro, Design]` or `outline: [{ name: Intro, prompt: \"...\" }]`",
                        );
                    }
                }
                Outline::List(v.clone())
            }
            Some((OutlineSpec::Template(t), at)) => {
                let sp = Spanned::new(
                    t.clone(),
                    serde_saphyr::Location::UNKNOWN,
                    serde_saphyr::Location::UNKNOWN,
                );
                let tpl = match Template::parse(t) {
                    Ok(tpl) => tpl,
                    Err(e) => {
                        self.err(
                            "spes::workflow::template_syntax",
                            format!("{what}: {}", e.message),
                            at,
                            "fix the template",
                        );
                        return None;
                    }
                };
                drop(sp);
                let reads: Vec<String> = tpl.reads().iter().cloned().collect();
                self.check_reads(reads.iter(), at, known, &[], &what);
                Outline::Template(tpl)
            }
            None => {
                self.err(
                    "spes::workflow::missing_field",
                    format!("{what}: sections needs an `outline` (a list of section names, or a template giving one)"),
                    kind_at,
                    "add `outline: [Introduction, Design, Risks]`",
                );
                return None;
            }
        };
        let Some(sec) = &s.section else {
            self.err(
                "spes::workflow::missing_field",
                format!("{what}: sections needs a `section` step (sees `section` and `previous`)"),
                kind_at,
                "add `section: { kind: llm, prompt: \"Write the {{ section }} section. So far: {{ previous }}\" }`",
            );
            return None;
        };
        let section = self.nested_llm(sec, "section", known, path, &["section", "previous"])?;
        // What the section step reads of `section` must be in every item.
        if let Outline::List(items) = &outline {
            let mut fields: Vec<String> = section
                .prompt
                .nested_reads()
                .into_iter()
                .chain(
                    section
                        .system
                        .as_ref()
                        .map(Template::nested_reads)
                        .unwrap_or_default(),
                )
                .filter_map(|r| {
                    r.strip_prefix("section.")
                        .map(|f| f.split('.').next().unwrap_or(f).to_owned())
                })
                .collect();
            fields.sort();
            fields.dedup();
            for (i, item) in items.iter().enumerate() {
                for f in &fields {
                    let has = match item {
                        serde_json::Value::Object(o) => o.contains_key(f),
                        _ => false,
                    };
                    if !has {
                        self.err(
                            "spes::workflow::outline_field",
                            format!(
                                "{what}: the section step reads `section.{f}`, but outline item {} (`{}`) has no `{f}`",
                                i + 1,
                                crate::workflow::section_name(item).unwrap_or_default()
                            ),
                            s.outline.as_ref().and_then(span),
                            format!("give every outline item a `{f}`: {{ name: ..., {f}: ... }}"),
                        );
                    }
                }
            }
        }
        let timeout = self.timeout(s, known, path, &what)?;
        Some(SectionsStep {
            outline,
            section,
            timeout,
        })
    }
}
