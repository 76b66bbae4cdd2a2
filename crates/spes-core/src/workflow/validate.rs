//! `WorkflowSpec` → [`Workflow`], reporting every problem with its location.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use serde_saphyr::Spanned;

use super::kind::KindDef;
use super::spec::{AgentSpec, ConditionSpec, InputType, StepSpec, WorkflowSpec};
use super::{Agent, Input, Loc, Step, StepKey, Workflow};
use crate::answer::AnswerSchema;
use crate::component::{ComponentRef, ComponentRegistry};
use crate::condition::Condition;
use crate::diagnostic::{Diagnostic, Diagnostics, line_col_of, offset_of};
use crate::template::{Expr, Template, TemplateError};

/// A step spec held by value or boxed (a workflow's and a sequence's
/// steps are boxed: a spec is large, and a long list of them would be
/// copied as it grows).
trait IntoSpec {
    fn into_spec(self) -> StepSpec;
}

impl IntoSpec for StepSpec {
    fn into_spec(self) -> StepSpec {
        self
    }
}

impl IntoSpec for Box<StepSpec> {
    fn into_spec(self) -> StepSpec {
        *self
    }
}

#[cfg(test)]
mod answer_tests;
pub(crate) mod kinds;
mod policy;

/// Step kinds this version of spes runs: the names in
/// [`KINDS`](super::kind::KINDS), in its order.
pub const STEP_KINDS: &[&str] = &{
    let mut names = [""; kinds::KINDS.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = kinds::KINDS[i].name;
        i += 1;
    }
    names
};

/// The most items (or branches, or workers) a step may keep in flight.
pub const MAX_CONCURRENCY: u32 = 1024;

/// The most a count field may say: bounds what one step may cost in memory
/// and time (`refine` with `max_iterations: 1000000` grew to 800 MB).
#[must_use]
pub fn max_count(field: &str) -> u32 {
    match field {
        "rounds" => 20,
        _ => 100,
    }
}

/// The revision prompt an approval uses unless it sets `revise`.
pub const DEFAULT_REVISE: &str = "Revise the text below to address the reviewer's feedback.\n\nText:\n{{ draft }}\n\nFeedback:\n{{ comments }}{% if suggested %}\n\nSuggested changes:\n{{ suggested }}{% endif %}\n\nAnswer with the revised text only.";

/// What validation checks references against.
#[derive(Debug, Clone, Copy)]
pub struct ValidateEnv<'a> {
    /// Components available to `persona:`, `instruction:` and friends.
    pub components: &'a ComponentRegistry,
    /// Provider names; `None` skips the check.
    pub providers: Option<&'a [String]>,
}

/// Parses workflow YAML into its spec (syntax and unknown fields only).
pub fn parse_workflow(file: &str, text: &str) -> Result<WorkflowSpec, Diagnostics> {
    crate::yaml::parse_yaml::<WorkflowSpec>(file, text, "spes::workflow::syntax")
        .map_err(Diagnostics::from)
}

/// Validates a parsed workflow. On success returns the workflow and any warnings.
pub fn validate(
    spec: WorkflowSpec,
    file: &str,
    text: &str,
    env: &ValidateEnv<'_>,
) -> Result<(Workflow, Diagnostics), Diagnostics> {
    validate_nested(spec, file, text, env, Vec::new())
}

/// Validates with the stack of files that include this one (cycle detection).
fn validate_nested(
    spec: WorkflowSpec,
    file: &str,
    text: &str,
    env: &ValidateEnv<'_>,
    stack: Vec<std::path::PathBuf>,
) -> Result<(Workflow, Diagnostics), Diagnostics> {
    let mut v = Validator {
        stack,
        definitions: BTreeMap::new(),
        children: Vec::new(),
        schemas: Vec::new(),
        compiled_schemas: std::collections::HashMap::new(),
        file: file.to_owned(),
        file_arc: Arc::from(file),
        text: Arc::new(text.to_owned()),
        line_starts: std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect(),
        env: *env,
        diags: Diagnostics::default(),
        components: BTreeMap::new(),
        agents: BTreeMap::new(),
    };
    let wf = v.workflow(spec);
    if v.diags.has_errors() {
        let mut errs = v.diags;
        errs.0
            .sort_by_key(|d| (d.severity == crate::Severity::Warning, d.line_col));
        return Err(errs);
    }
    Ok((wf, v.diags))
}

mod compose;

pub(crate) type Sp = Option<(usize, usize)>;

fn span<T>(s: &Spanned<T>) -> Sp {
    let sp = s.referenced.span();
    let off = usize::try_from(sp.byte_offset()?).ok()?;
    let len = sp
        .byte_len()
        .and_then(|l| usize::try_from(l).ok())
        .unwrap_or(0);
    Some((off, len))
}

/// The context keys written before a point: surely, or only on some paths.
#[derive(Debug, Clone, Default)]
pub(crate) struct Known {
    definite: BTreeSet<String>,
    maybe: BTreeSet<String>,
}

impl Known {
    fn write(&mut self, key: &str) {
        self.definite.insert(key.to_owned());
    }

    /// After branches: keys every arm wrote are definite; the rest maybe.
    fn join(before: &Self, arms: &[Self]) -> Self {
        let mut out = before.clone();
        let Some(first) = arms.first() else {
            return out;
        };
        let all: BTreeSet<String> = first
            .definite
            .iter()
            .filter(|k| arms.iter().all(|a| a.definite.contains(*k)))
            .cloned()
            .collect();
        for a in arms {
            for k in a.definite.iter().chain(a.maybe.iter()) {
                if !all.contains(k) && !out.definite.contains(k) {
                    out.maybe.insert(k.clone());
                }
            }
        }
        for k in all {
            out.maybe.remove(&k);
            out.definite.insert(k);
        }
        out
    }
}

/// Where a step is, for its kind's validator.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepAt<'a> {
    /// Its name.
    pub(crate) name: &'a str,
    /// Its key path (`plan/gather`).
    pub(crate) path: &'a str,
    /// "step `PATH`", for messages.
    pub(crate) what: &'a str,
    /// Where its `kind` is written (a missing field is reported there).
    pub(crate) kind_at: Sp,
}

/// Validation state of one workflow file.
pub(crate) struct Validator<'a> {
    /// Files that include this one, outermost first (cycle detection).
    stack: Vec<std::path::PathBuf>,
    /// Byte offset where each line of the file starts (for step locations).
    line_starts: Vec<usize>,
    /// Reusable step definitions (`definitions:`).
    definitions: BTreeMap<String, Spanned<StepSpec>>,
    /// Sub-workflow files used, at any depth.
    children: Vec<super::ChildSource>,
    /// Schema files used, at any depth.
    schemas: Vec<super::ChildSource>,
    /// Schemas compiled so far (by file and value): compiled once each.
    compiled_schemas: std::collections::HashMap<String, AnswerSchema>,
    file: String,
    file_arc: Arc<str>,
    text: Arc<String>,
    env: ValidateEnv<'a>,
    diags: Diagnostics,
    components: BTreeMap<String, Arc<crate::component::Component>>,
    agents: BTreeMap<String, Arc<Agent>>,
}

/// Reads a user file of at most `cap` bytes; refuses anything but a regular
/// file (a FIFO or a device could block or never end).
// A private helper until the shared bounded reader of spes-core lands.
fn read_bounded(path: &std::path::Path, cap: u64) -> Result<String, String> {
    crate::fs::read_text(path, cap).map_err(|e| e.to_string())
}

fn is_key_name(s: &str) -> bool {
    crate::component::is_valid_variable_name(s)
}

fn is_step_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// The closest candidate by edit distance, for "did you mean".
fn closest<'s>(word: &str, candidates: impl IntoIterator<Item = &'s str>) -> Option<&'s str> {
    fn dist(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                let sub = prev[j] + usize::from(ca != *cb);
                cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
            }
            prev = cur;
        }
        prev[b.len()]
    }
    candidates
        .into_iter()
        .map(|c| (dist(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min()
        .map(|(_, c)| c)
}

impl Validator<'_> {
    fn diag(&self, code: &'static str, message: impl Into<String>, at: Sp) -> Diagnostic {
        let d = Diagnostic::error(code, message)
            .with_shared_source(self.file.clone(), self.text.clone());
        match at {
            Some((o, l)) => d.with_span(o, l),
            None => d,
        }
    }

    fn err(
        &mut self,
        code: &'static str,
        message: impl Into<String>,
        at: Sp,
        hint: impl Into<String>,
    ) {
        let d = self.diag(code, message, at).with_hint(hint);
        self.diags.push(d);
    }

    fn warn(
        &mut self,
        code: &'static str,
        message: impl Into<String>,
        at: Sp,
        hint: impl Into<String>,
    ) {
        let mut d = self.diag(code, message, at).with_hint(hint);
        d.severity = crate::Severity::Warning;
        self.diags.push(d);
    }

    fn loc(&self, at: Sp) -> Loc {
        // Binary search over line starts: every step has a location, so a
        // scan from the top of the file per step would be quadratic.
        let (line, col) = at.map_or((0, 0), |(o, _)| {
            let o = o.min(self.text.len());
            let line = self.line_starts.partition_point(|&start| start <= o);
            let start = self
                .line_starts
                .get(line.saturating_sub(1))
                .copied()
                .unwrap_or(0);
            let col = self.text.get(start..o).map_or(1, |t| t.chars().count() + 1);
            (line, col)
        });
        Loc {
            file: self.file_arc.clone(),
            line,
            col,
        }
    }

    /// File offset of a template error inside the scalar at `at`, whose text is `src`.
    fn template_offset(&self, at: Sp, e: &TemplateError, src: &str) -> Sp {
        let (off, len) = at?;
        let raw = self.text.get(off..)?;
        let (line, _) = line_col_of(&self.text, off);
        // Block scalars (`|`, `>`): the span starts at the indicator, or at the
        // content on the next line; template line N is then file line first + N - 1.
        let block = if raw.starts_with('|') || raw.starts_with('>') {
            Some((line + 1, raw.starts_with('|')))
        } else {
            self.block_indicator_before(off).map(|c| (line, c == '|'))
        };
        if let Some((first, literal)) = block {
            let tline = e.line.unwrap_or(1);
            let start = offset_of(&self.text, first + tline.max(1) - 1, 1)?;
            let indent =
                self.text[start..].len() - self.text[start..].trim_start_matches(' ').len();
            // In a literal block each template line is the file line less its
            // indentation, so the column within the line carries over.
            let (col, len) = match &e.range {
                Some(r) if literal => {
                    let before = src.get(..r.start).unwrap_or("");
                    let col = r.start - before.rfind('\n').map_or(0, |i| i + 1);
                    let same_line = src.get(r.clone()).is_some_and(|t| !t.contains('\n'));
                    (col, if same_line { r.len() } else { 0 })
                }
                _ => (0, 0),
            };
            return Some((start + indent + col, len));
        }
        let quote = usize::from(raw.starts_with('"') || raw.starts_with('\''));
        match &e.range {
            Some(r) if e.line.is_none_or(|l| l == 1) => Some((off + quote + r.start, r.len())),
            _ => Some((off, len)),
        }
    }

    /// When `off` starts a block scalar's content (only spaces before it on its
    /// line, and the previous line ends with `|` or `>` and optional
    /// chomping/indent indicators), that indicator.
    fn block_indicator_before(&self, off: usize) -> Option<char> {
        let before = self.text.get(..off)?;
        let line_start = before.rfind('\n')?;
        if !before[line_start + 1..].chars().all(|c| c == ' ') {
            return None;
        }
        let prev = before[..line_start].rsplit('\n').next()?;
        let prev = prev.split(" #").next().unwrap_or(prev).trim_end();
        let prev = prev.trim_end_matches(|c: char| c == '-' || c == '+' || c.is_ascii_digit());
        prev.chars().last().filter(|c| matches!(c, '|' | '>'))
    }

    fn template(&mut self, s: &Spanned<String>, what: &str) -> Option<Template> {
        match Template::parse(&s.value) {
            Ok(t) => Some(t),
            Err(e) => {
                let at = self.template_offset(span(s), &e, &s.value);
                self.err(
                    "spes::workflow::template_syntax",
                    format!("{what}: {}", e.message),
                    at,
                    "fix the minijinja syntax: {{ variable }}, {% if %}...{% endif %}, {% for x in xs %}...{% endfor %}",
                );
                None
            }
        }
    }

    fn check_reads<'r>(
        &mut self,
        reads: impl IntoIterator<Item = &'r String>,
        at: Sp,
        known: &Known,
        locals: &[&str],
        what: &str,
    ) {
        for var in reads {
            if locals.contains(&var.as_str()) || known.definite.contains(var) {
                continue;
            }
            if known.maybe.contains(var) {
                self.warn(
                    "spes::workflow::maybe_unwritten",
                    format!("{what} reads `{var}`, which is written only on some paths"),
                    at,
                    "make every branch write it, or guard the read with `{% if x is defined %}`",
                );
                continue;
            }
            let candidates: Vec<&str> = known.definite.iter().map(String::as_str).collect();
            let hint = match closest(var, candidates.iter().copied()) {
                Some(c) => format!(
                    "did you mean `{c}`? Keys known here: {}",
                    candidates.join(", ")
                ),
                None if candidates.is_empty() => {
                    format!(
                        "declare `{var}` under `inputs:` or write it with an earlier step's `output: {var}`"
                    )
                }
                None => format!(
                    "declare `{var}` under `inputs:` or write it with an earlier step's `output:`; keys known here: {}",
                    candidates.join(", ")
                ),
            };
            self.err(
                "spes::workflow::unknown_key",
                format!("{what} reads `{var}` before any step writes it"),
                at,
                hint,
            );
        }
    }

    fn workflow(&mut self, spec: WorkflowSpec) -> Workflow {
        let name = match &spec.name {
            Some(n) if !n.value.trim().is_empty() => n.value.clone(),
            _ => {
                self.err(
                    "spes::workflow::missing_name",
                    "the workflow has no `name`",
                    Some((0, 0)),
                    "add `name: my-workflow` at the top",
                );
                String::new()
            }
        };
        if let Some(v) = &spec.version
            && semver::Version::parse(&v.value).is_err()
        {
            self.err(
                "spes::workflow::bad_version",
                format!("`{}` is not a semantic version", v.value),
                span(v),
                "write MAJOR.MINOR.PATCH, e.g. 1.0.0",
            );
        }
        self.definitions = spec.definitions;
        let mut known = Known::default();
        let mut inputs = Vec::new();
        for (iname, ispec) in spec.inputs {
            let at = span(&ispec);
            if !is_key_name(&iname) {
                self.err(
                    "spes::workflow::bad_key",
                    format!("input name `{iname}` is not a valid key"),
                    at,
                    "use letters, digits and _ (not starting with a digit), so templates can read it",
                );
            }
            let i = ispec.value;
            let ty = i.ty.unwrap_or(InputType::String);
            if let Some(d) = &i.default
                && !type_matches(ty, d)
            {
                self.err(
                    "spes::workflow::bad_default",
                    format!("input `{iname}` is {} but its default is {d}", ty.as_str()),
                    at,
                    format!("give a {} default or change `type`", ty.as_str()),
                );
            }
            if i.required && i.default.is_some() {
                self.warn(
                    "spes::workflow::required_with_default",
                    format!(
                        "input `{iname}` is required and has a default; the default is never used"
                    ),
                    at,
                    "drop `required: true` or the default",
                );
            }
            known.write(&iname);
            inputs.push(Input {
                name: iname,
                ty,
                required: i.required && i.default.is_none(),
                default: i.default,
                description: i.description,
            });
        }
        for (aname, aspec) in spec.agents {
            let at = span(&aspec);
            if let Some(a) = self.agent(&aname, aspec.value, at) {
                self.agents.insert(aname, Arc::new(a));
            }
        }
        let steps = match spec.steps {
            Some(s) if !s.value.is_empty() => {
                let at = span(&s);
                self.steps(s.value, &mut known, "", at)
            }
            Some(s) => {
                self.err(
                    "spes::workflow::no_steps",
                    "`steps` is empty",
                    span(&s),
                    "add at least one step",
                );
                Vec::new()
            }
            None => {
                self.err(
                    "spes::workflow::no_steps",
                    "the workflow has no `steps`",
                    Some((0, 0)),
                    "add a `steps:` list",
                );
                Vec::new()
            }
        };
        let output = spec.output.map(|o| {
            if !known.definite.contains(&o.value) && !known.maybe.contains(&o.value) {
                let hint = format!(
                    "name a key a step writes: {}",
                    known
                        .definite
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                self.err(
                    "spes::workflow::unknown_key",
                    format!("`output: {}` names a key no step writes", o.value),
                    span(&o),
                    hint,
                );
            }
            o.value
        });
        let budget = spec.budget.and_then(|b| match b.value.check() {
            Ok(()) => Some(b.value),
            Err(e) => {
                self.err(
                    "spes::workflow::budget",
                    format!("budget: {e}"),
                    span(&b),
                    "write budget: { cost: 2.5, tokens: 100000, calls: 50 }",
                );
                None
            }
        });
        Workflow {
            name,
            description: spec.description,
            file: self.file.clone(),
            inputs,
            agents: self.agents.clone(),
            steps,
            output,
            components: self.components.values().cloned().collect(),
            children: self.children.clone(),
            schemas: self.schemas.clone(),
            budget,
        }
    }

    fn component(
        &mut self,
        r: &Spanned<String>,
        expected_kind: Option<&str>,
    ) -> Option<Arc<crate::component::Component>> {
        let cref = match ComponentRef::parse(&r.value) {
            Ok(c) => c,
            Err(e) => {
                self.err(
                    "spes::workflow::bad_component_ref",
                    format!("`{}` is not a component reference: {e}", r.value),
                    span(r),
                    "write kind/name or kind/name@^1.2, e.g. persona/software-architect@^1",
                );
                return None;
            }
        };
        if let Some(k) = expected_kind
            && cref.kind != k
        {
            self.err(
                "spes::workflow::component_kind",
                format!(
                    "`{}` is a {} but this field takes a {k}",
                    r.value, cref.kind
                ),
                span(r),
                format!("reference a {k} component here"),
            );
        }
        match self.env.components.resolve(&cref) {
            Ok(c) => {
                let c = Arc::new(c.clone());
                self.components.insert(c.reference(), c.clone());
                Some(c)
            }
            Err(d) => {
                let mut nd = self.diag(
                    "spes::workflow::unknown_component",
                    d.message.clone(),
                    span(r),
                );
                nd.hint = d
                    .hint
                    .or_else(|| Some("run `spes components list` to see what is available".into()));
                self.diags.push(nd);
                None
            }
        }
    }

    fn provider(&mut self, p: &Spanned<String>) {
        if let Some(list) = self.env.providers
            && !list.contains(&p.value)
        {
            let hint = match closest(&p.value, list.iter().map(String::as_str)) {
                Some(c) => format!(
                    "did you mean `{c}`? Configured providers: {}",
                    list.join(", ")
                ),
                None => format!(
                    "add a [providers.{}] table to spes.toml; configured: {}",
                    p.value,
                    list.join(", ")
                ),
            };
            self.err(
                "spes::workflow::unknown_provider",
                format!("unknown provider `{}`", p.value),
                span(p),
                hint,
            );
        }
    }

    fn agent(&mut self, name: &str, a: AgentSpec, _at: Sp) -> Option<Agent> {
        let mut components = Vec::new();
        for (field, kind) in [
            (&a.persona, "persona"),
            (&a.instruction, "instruction"),
            (&a.output_format, "output_format"),
        ] {
            if let Some(r) = field
                && let Some(c) = self.component(r, Some(kind))
            {
                components.push(c);
            }
        }
        for e in &a.examples {
            if let Some(c) = self.component(e, None) {
                components.push(c);
            }
        }
        let mut vars = BTreeMap::new();
        for (k, t) in &a.vars {
            if let Some(tpl) = self.template(t, &format!("agent `{name}` var `{k}`")) {
                vars.insert(k.clone(), tpl);
            }
        }
        if let Some(p) = &a.provider {
            self.provider(p);
        }
        if let Some(t) = &a.temperature
            && !(0.0..=2.0).contains(&t.value)
        {
            self.err(
                "spes::workflow::bad_temperature",
                format!("temperature {} is outside 0..2", t.value),
                span(t),
                "use a value between 0 (deterministic) and 2",
            );
        }
        Some(Agent {
            name: name.to_owned(),
            role: a.role,
            components,
            vars,
            provider: a.provider.map(|p| p.value),
            model: a.model,
            temperature: a.temperature.map(|t| t.value),
            max_tokens: a.max_tokens,
        })
    }

    /// Checks that the agent's components can be rendered at this point.
    fn check_agent_vars(&mut self, agent: &Agent, at: Sp, known: &Known) {
        for t in agent.vars.values() {
            let reads: Vec<String> = t.reads().iter().cloned().collect();
            self.check_reads(
                reads.iter(),
                at,
                known,
                &[],
                &format!("agent `{}` vars", agent.name),
            );
        }
        for c in &agent.components {
            for var in &c.variables {
                if agent.vars.contains_key(&var.name)
                    || var.default.is_some()
                    || known.definite.contains(&var.name)
                    || known.maybe.contains(&var.name)
                {
                    continue;
                }
                self.err(
                    "spes::workflow::missing_component_variable",
                    format!(
                        "component {} needs variable `{}`, which agent `{}` does not set and the context does not have here",
                        c.reference(),
                        var.name,
                        agent.name
                    ),
                    at,
                    format!("add `vars: {{ {}: \"...\" }}` to the agent, or an input named `{}`", var.name, var.name),
                );
            }
        }
    }

    fn steps<T: IntoSpec>(
        &mut self,
        specs: Vec<T>,
        known: &mut Known,
        prefix: &str,
        _at: Sp,
    ) -> Vec<Step> {
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for s in specs {
            if let Some(step) = self.step(s.into_spec(), known, prefix, &mut names) {
                out.push(step);
            }
        }
        out
    }

    fn condition(
        &mut self,
        c: &Spanned<ConditionSpec>,
        known: &Known,
        what: &str,
    ) -> Option<Condition> {
        let at = span(c);
        match &c.value {
            ConditionSpec::Expr(src) => self.expr(src, at, known, what),
            ConditionSpec::Check(chk) => {
                let mut set = Vec::new();
                if chk.keyword.is_some() {
                    set.push("keyword");
                }
                if chk.length.is_some() {
                    set.push("length");
                }
                if chk.regex.is_some() {
                    set.push("regex");
                }
                if chk.expr.is_some() {
                    set.push("expr");
                }
                if chk.ask.is_some() {
                    set.push("ask");
                }
                if set.len() != 1 {
                    self.err(
                        "spes::workflow::bad_condition",
                        if set.is_empty() {
                            format!("{what}: the condition has none of keyword, length, regex, expr, ask")
                        } else {
                            format!("{what}: the condition sets {} at once", set.join(" and "))
                        },
                        at,
                        "give exactly one check, e.g. { keyword: [error, fail], in: text }",
                    );
                    return None;
                }
                let needs_in = matches!(set[0], "keyword" | "length" | "regex");
                let key = match (&chk.input, needs_in) {
                    (Some(k), true) => {
                        let reads = [k.value.clone()];
                        self.check_reads(reads.iter(), span(k), known, &[], what);
                        k.value.clone()
                    }
                    (None, true) => {
                        self.err(
                            "spes::workflow::bad_condition",
                            format!(
                                "{what}: a `{}` check needs `in: KEY` (the context key to look at)",
                                set[0]
                            ),
                            at,
                            format!(
                                "add `in: text` (or whichever key holds the text) beside `{}`",
                                set[0]
                            ),
                        );
                        return None;
                    }
                    (Some(k), false) => {
                        self.err(
                            "spes::workflow::bad_condition",
                            format!("{what}: `in` does not apply to `{}`", set[0]),
                            span(k),
                            "remove `in`; expressions and questions name their keys themselves",
                        );
                        return None;
                    }
                    (None, false) => String::new(),
                };
                if chk.substring && chk.keyword.is_none() {
                    self.err(
                        "spes::workflow::bad_condition",
                        format!("{what}: `substring` only applies to `keyword`"),
                        at,
                        "remove `substring`",
                    );
                }
                if chk.agent.is_some() && chk.ask.is_none() {
                    self.err(
                        "spes::workflow::bad_condition",
                        format!("{what}: `agent` only applies to `ask`"),
                        at,
                        "remove `agent`",
                    );
                }
                let cond = if let Some(k) = &chk.keyword {
                    let words: Vec<String> = match k {
                        super::spec::OneOrMany::One(s) => vec![s.to_lowercase()],
                        super::spec::OneOrMany::Many(v) => {
                            v.iter().map(|s| s.to_lowercase()).collect()
                        }
                    };
                    Condition::Keyword {
                        words,
                        key,
                        substring: chk.substring,
                    }
                } else if let Some(r) = &chk.length {
                    if let (Some(a), Some(b)) = (r.min, r.max)
                        && a > b
                    {
                        self.err(
                            "spes::workflow::bad_condition",
                            format!("{what}: length min {a} is greater than max {b}"),
                            at,
                            "swap min and max",
                        );
                    }
                    Condition::Length {
                        min: r.min,
                        max: r.max,
                        key,
                    }
                } else if let Some(r) = &chk.regex {
                    match regex::RegexBuilder::new(&r.value)
                        .size_limit(1 << 20)
                        .build()
                    {
                        Ok(re) => Condition::Regex { re, key },
                        Err(e) => {
                            self.err(
                                "spes::workflow::bad_regex",
                                format!("{what}: bad regex: {e}"),
                                span(r),
                                "check the pattern (Rust regex syntax; no look-around)",
                            );
                            return None;
                        }
                    }
                } else if let Some(e) = &chk.expr {
                    self.expr(&e.value, span(e), known, what)?
                } else if let Some(q) = &chk.ask {
                    let question = self.template(q, what)?;
                    let reads: Vec<String> = question.reads().iter().cloned().collect();
                    self.check_reads(reads.iter(), span(q), known, &[], what);
                    let agent = match &chk.agent {
                        Some(a) => Some(self.agent_named(a, known)?),
                        None => None,
                    };
                    Condition::Ask { question, agent }
                } else {
                    return None;
                };
                Some(if chk.not {
                    Condition::Not(Box::new(cond))
                } else {
                    cond
                })
            }
        }
    }

    fn expr(&mut self, src: &str, at: Sp, known: &Known, what: &str) -> Option<Condition> {
        match Expr::parse(src) {
            Ok(e) => {
                let reads: Vec<String> = e.reads().iter().cloned().collect();
                self.check_reads(reads.iter(), at, known, &[], what);
                Some(Condition::Expr(e))
            }
            Err(e) => {
                self.err(
                    "spes::workflow::bad_expression",
                    format!("{what}: {}", e.message),
                    at,
                    "write a minijinja expression, e.g. \"'error' in text\" or \"summary | length > 200\"",
                );
                None
            }
        }
    }

    /// The agent `a` names, its variables' reads checked against `known`;
    /// `None` (reported, with the closest name) when there is no such agent.
    pub(crate) fn agent_named(&mut self, a: &Spanned<String>, known: &Known) -> Option<Arc<Agent>> {
        match self.agents.get(&a.value).cloned() {
            Some(ag) => {
                self.check_agent_vars(&ag, span(a), known);
                Some(ag)
            }
            None => {
                self.unknown_agent(a);
                None
            }
        }
    }

    fn unknown_agent(&mut self, a: &Spanned<String>) {
        let names: Vec<&str> = self.agents.keys().map(String::as_str).collect();
        let hint = match closest(&a.value, names.iter().copied()) {
            Some(c) => format!("did you mean `{c}`?"),
            None if names.is_empty() => "declare it under `agents:`".to_owned(),
            None => format!("declare it under `agents:`; declared: {}", names.join(", ")),
        };
        self.err(
            "spes::workflow::unknown_agent",
            format!("unknown agent `{}`", a.value),
            span(a),
            hint,
        );
    }

    #[allow(clippy::too_many_lines)]
    fn step(
        &mut self,
        s: StepSpec,
        known: &mut Known,
        prefix: &str,
        names: &mut HashSet<String>,
    ) -> Option<Step> {
        let mut s = self.expand_use(s, 0)?;
        let kind_at = s.kind.as_ref().and_then(span);
        let name_at = s.name.as_ref().and_then(span);
        let first_at = name_at.or(kind_at);
        let name = match &s.name {
            Some(n) if is_step_name(&n.value) => n.value.clone(),
            Some(n) => {
                self.err(
                    "spes::workflow::bad_step_name",
                    format!("step name `{}` may use only letters, digits, _ - and .", n.value),
                    span(n),
                    "step names are parts of step keys (plan/gather/answer), so no spaces or slashes",
                );
                n.value.clone()
            }
            None => {
                self.err(
                    "spes::workflow::missing_step_name",
                    format!(
                        "a step{} has no `name`",
                        if prefix.is_empty() {
                            String::new()
                        } else {
                            format!(" under `{prefix}`")
                        }
                    ),
                    first_at,
                    "add `name: ...`; names key the journal, so keep them stable",
                );
                String::new()
            }
        };
        if !name.is_empty() && !names.insert(name.clone()) {
            self.err(
                "spes::workflow::duplicate_step",
                format!("two steps here are named `{name}`"),
                name_at,
                "step names must be unique among siblings",
            );
        }
        let path = StepKey::join(prefix, &name).into_string();
        let what = format!("step `{path}`");
        let Some(kind) = &s.kind else {
            self.err(
                "spes::workflow::missing_kind",
                format!("{what} has no `kind`"),
                first_at,
                format!("add `kind:` with one of: {}", STEP_KINDS.join(", ")),
            );
            return None;
        };
        let kind_name = kind.value.as_str();
        let Some(def) = super::kind::by_name(kind_name) else {
            let hint = match closest(kind_name, STEP_KINDS.iter().copied()) {
                Some(c) => format!("did you mean `{c}`? Step kinds: {}", STEP_KINDS.join(", ")),
                None => format!("step kinds: {}", STEP_KINDS.join(", ")),
            };
            self.err(
                "spes::workflow::unknown_step_kind",
                format!("{what}: unknown step kind `{kind_name}`"),
                kind_at,
                hint,
            );
            return None;
        };
        self.check_fields(&s, def, &what);
        let when = s
            .when
            .as_ref()
            .and_then(|w| self.condition(w, known, &format!("{what} `when`")));
        let loc = self.loc(first_at);
        // Only a `when` step needs the keys as they were before it.
        let snapshot = when.is_some().then(|| known.clone());
        let policies = self.policies(&s, def, known, &path, &name);
        let at = StepAt {
            name: &name,
            path: &path,
            what: &what,
            kind_at,
        };
        let step_kind = (def.validate)(self, &mut s, known, &at)?;
        if let Some(o) = &s.output {
            if is_key_name(&o.value) {
                known.write(&o.value);
                self.policy_writes(&policies, Some(&o.value), known);
            } else {
                self.err(
                    "spes::workflow::bad_key",
                    format!("{what}: `output: {}` is not a valid key", o.value),
                    span(o),
                    "use letters, digits and _ (not starting with a digit), so templates can read it",
                );
            }
        }
        if let Some(snapshot) = snapshot {
            // A skipped step writes nothing: its writes are only "maybe".
            let after = known.clone();
            *known = Known::join(&snapshot, &[after, snapshot.clone()]);
        }
        Some(Step {
            name,
            output: s.output.map(|o| o.value),
            when,
            kind: step_kind,
            loc,
            policies,
        })
    }

    fn check_fields(&mut self, s: &StepSpec, def: &KindDef, what: &str) {
        let fields = kind_fields(s);
        let (kind, allowed) = (def.name, def.fields);
        for (field, set, at) in fields {
            if set && !allowed.contains(&field) {
                self.err(
                    "spes::workflow::field_not_for_kind",
                    format!("{what}: `{field}` does not apply to a `{kind}` step"),
                    at,
                    if field == "compensate" {
                        "`compensate` undoes a step of a saga: put this step under a `kind: saga` step's `steps`".to_owned()
                    } else {
                        format!(
                            "a `{kind}` step takes: name, kind, output, when, description, {}",
                            allowed.join(", ")
                        )
                    },
                );
            }
        }
    }
}

/// Every kind-specific field of a step: its name, whether it is set, and
/// where. A field of [`StepSpec`] missing here would be taken by every
/// kind unchecked (a unit test compares this list with the spec's fields).
fn kind_fields(s: &StepSpec) -> [(&'static str, bool, Sp); 70] {
    fn f<T>(name: &'static str, v: Option<&Spanned<T>>) -> (&'static str, bool, Sp) {
        (name, v.is_some(), v.and_then(span))
    }
    [
        f("prompt", s.prompt.as_ref()),
        f("agent", s.agent.as_ref()),
        f("task", s.task.as_ref()),
        f("system", s.system.as_ref()),
        f("provider", s.provider.as_ref()),
        f("model", s.model.as_ref()),
        f("temperature", s.temperature.as_ref()),
        f("max_tokens", s.max_tokens.as_ref()),
        f("stop", s.stop.as_ref()),
        f("format", s.format.as_ref()),
        f("schema", s.schema.as_ref()),
        f("repair", s.repair.as_ref()),
        f("on_truncation", s.on_truncation.as_ref()),
        f("fn", s.func.as_ref()),
        f("input", s.input.as_ref()),
        f("args", s.args.as_ref()),
        f("method", s.method.as_ref()),
        f("url", s.url.as_ref()),
        f("headers", s.headers.as_ref()),
        f("body", s.body.as_ref()),
        f("expect", s.expect.as_ref()),
        f("response", s.response.as_ref()),
        f("max_bytes", s.max_bytes.as_ref()),
        f("tools", s.tools.as_ref()),
        f("max_turns", s.max_turns.as_ref()),
        f("tool_choice", s.tool_choice.as_ref()),
        f("approve_tools", s.approve_tools.as_ref()),
        f("steps", s.steps.as_ref()),
        f("if", s.condition.as_ref()),
        f("then", s.then.as_ref()),
        f("else", s.otherwise.as_ref()),
        f("branches", s.branches.as_ref()),
        f("agents", s.agents.as_ref()),
        f("synthesize", s.synthesize.as_ref()),
        f("concurrency", s.concurrency.as_ref()),
        f("show", s.show.as_ref()),
        f("generate", s.generate.as_ref()),
        f("max_revisions", s.max_revisions.as_ref()),
        f("revise", s.revise.as_ref()),
        f("deadline", s.deadline.as_ref()),
        f("on_timeout", s.on_timeout.as_ref()),
        f("n", s.n.as_ref()),
        f("outline", s.outline.as_ref()),
        f("section", s.section.as_ref()),
        f("path", s.path.as_ref()),
        f("inputs", s.inputs.as_ref()),
        f("classify", s.classify.as_ref()),
        f("routes", s.routes.as_ref()),
        f("default", s.default.as_ref()),
        f("step", s.step.as_ref()),
        f("evaluator", s.evaluator.as_ref()),
        f("threshold", s.threshold.as_ref()),
        f("max_attempts", s.max_attempts.as_ref()),
        f("feedback", s.feedback.as_ref()),
        f("max_iterations", s.max_iterations.as_ref()),
        f("examples", s.examples.as_ref()),
        f("debaters", s.debaters.as_ref()),
        f("topic", s.topic.as_ref()),
        f("rounds", s.rounds.as_ref()),
        f("judge", s.judge.as_ref()),
        f("judge_sees", s.judge_sees.as_ref()),
        f("over", s.over.as_ref()),
        f("as", s.item_as.as_ref()),
        f("on_error", s.on_error.as_ref()),
        f("workers", s.workers.as_ref()),
        f("aggregate", s.aggregate.as_ref()),
        f("compensate", s.compensate.as_ref()),
        f("stages", s.stages.as_ref()),
        f("sources", s.sources.as_ref()),
        f("gather", s.gather.as_ref()),
    ]
}

fn type_matches(ty: InputType, v: &serde_json::Value) -> bool {
    use serde_json::Value as V;
    matches!(
        (ty, v),
        (InputType::String, V::String(_))
            | (InputType::Integer, V::Number(_))
            | (InputType::Number, V::Number(_))
            | (InputType::Boolean, V::Bool(_))
            | (InputType::List, V::Array(_))
            | (InputType::Object, V::Object(_))
    ) && !(ty == InputType::Integer && v.as_i64().is_none() && v.as_u64().is_none())
}
