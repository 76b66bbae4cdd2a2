//! Prompt templates: minijinja, sandboxed, strict about undefined variables,
//! bounded by fuel.
//!
//! **Values are data.** A value inserted into a template (an input, a model's
//! output) is never rendered again: `{{ x }}` in an LLM output stays
//! `{{ x }}`. minijinja never evaluates values, and spes never feeds a
//! rendered string back in as template source.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, OnceLock};

use minijinja::{Environment, ErrorKind, UndefinedBehavior, Value};
use serde_json::Map;

/// The run context: one flat JSON object (inputs and step outputs).
pub type Context = Map<String, serde_json::Value>;

/// Instructions a single render may execute (bounds loops over huge lists).
pub const FUEL: u64 = 2_000_000;

/// A template problem: what, and where in the template text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// What went wrong.
    pub message: String,
    /// Byte range in the template source, when minijinja knows it.
    pub range: Option<std::ops::Range<usize>>,
    /// 1-based line in the template, when known.
    pub line: Option<usize>,
    /// Variables the template reads that the context lacks.
    pub missing: Vec<String>,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TemplateError {}

impl TemplateError {
    fn from_mj(e: &minijinja::Error) -> Self {
        let kind = match e.kind() {
            ErrorKind::SyntaxError => "template syntax error",
            ErrorKind::UndefinedError => "undefined value",
            ErrorKind::OutOfFuel => "template ran too long (out of fuel)",
            ErrorKind::InvalidOperation => "invalid operation",
            ErrorKind::UnknownFilter => "unknown filter",
            ErrorKind::UnknownTest => "unknown test",
            ErrorKind::UnknownFunction => "unknown function",
            ErrorKind::UnknownMethod => "unknown method",
            ErrorKind::TooManyArguments | ErrorKind::MissingArgument => "wrong arguments",
            ErrorKind::BadSerialization => "value cannot be used in a template",
            _ => "template error",
        };
        let message = match e.detail() {
            Some(d) => format!("{kind}: {d}"),
            None => kind.to_owned(),
        };
        Self {
            message,
            range: e.range(),
            line: e.line(),
            missing: Vec::new(),
        }
    }
}

fn build_env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(64);
    // Prompts are not HTML.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.add_test(
        "matching",
        |v: &str, pattern: &str| -> Result<bool, minijinja::Error> {
            let re = regex::Regex::new(pattern).map_err(|e| {
                minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("bad regex `{pattern}`: {e}"),
                )
            })?;
            Ok(re.is_match(v))
        },
    );
    env.add_test("containing", |v: &str, needle: &str| v.contains(needle));
    env.add_filter("words", |v: &str| v.split_whitespace().count());
    env.add_filter("lines", |v: &str| v.lines().count());
    env.add_filter("fromjson", |v: &str| -> Result<Value, minijinja::Error> {
        let j: serde_json::Value = serde_json::from_str(v).map_err(|e| {
            minijinja::Error::new(ErrorKind::InvalidOperation, format!("not JSON: {e}"))
        })?;
        Ok(Value::from(minijinja::value::Serde(&j)))
    });
    env
}

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(build_env)
}

/// A parsed template, checked for syntax, with the variables it reads.
#[derive(Clone)]
pub struct Template {
    source: Arc<str>,
    reads: Arc<BTreeSet<String>>,
    /// When the whole template is one `{{ expr }}`, the expression, so that
    /// structured values (lists, objects) pass through unchanged.
    single_expr: Option<Arc<str>>,
    /// The template compiled, in an environment of its own (a clone of the
    /// shared one: its filters and tests are shared, not copied), made at
    /// the first render and shared by every clone: a step rendered many
    /// times (each step of a long run, each map item) is compiled once.
    compiled: Arc<OnceLock<Environment<'static>>>,
}

/// The name a template has in its own environment (as minijinja names a
/// template made from a string).
const COMPILED_NAME: &str = "<string>";

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Template").field(&self.source).finish()
    }
}

impl Template {
    /// Parses `source`; syntax errors carry their range.
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        // Most prompts are text with `{{ name }}` or `{{ a.b }}` slots:
        // their reads are found by a scan, without compiling the template
        // twice (minijinja parses again to list its variables). Anything
        // else takes minijinja's own parser.
        if let Some(reads) = plain_slots(source) {
            return Ok(Self {
                source: source.into(),
                reads: Arc::new(reads),
                single_expr: single_expression(source)
                    .filter(|e| is_plain_path(e))
                    .map(Arc::from),
                compiled: Arc::default(),
            });
        }
        Self::parse_full(source)
    }

    /// [`Template::parse`] through minijinja's parser.
    fn parse_full(source: &str) -> Result<Self, TemplateError> {
        // Compiled once, in the environment renders use.
        let mut compiled = env().clone();
        compiled
            .add_template_owned(COMPILED_NAME, source.to_owned())
            .map_err(|e| TemplateError::from_mj(&e))?;
        let reads: BTreeSet<String> = compiled
            .get_template(COMPILED_NAME)
            .map_err(|e| TemplateError::from_mj(&e))?
            .undeclared_variables(false)
            .into_iter()
            .collect();
        let single_expr = single_expression(source).and_then(|expr| {
            env()
                .compile_expression(expr)
                .ok()
                .map(|_| Arc::<str>::from(expr))
        });
        Ok(Self {
            source: source.into(),
            reads: Arc::new(reads),
            single_expr,
            compiled: Arc::new(OnceLock::from(compiled)),
        })
    }

    /// The template text.
    #[must_use]
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Top-level variables the template reads (excluding ones it sets itself).
    #[must_use]
    pub fn reads(&self) -> &BTreeSet<String> {
        &self.reads
    }

    /// Variables the template reads with their attribute paths
    /// (`section.prompt`), for checks of what a local value must hold.
    #[must_use]
    pub fn nested_reads(&self) -> BTreeSet<String> {
        env()
            .template_from_str(&self.source)
            .map(|t| t.undeclared_variables(true).into_iter().collect())
            .unwrap_or_default()
    }

    /// True when the template contains no template syntax at all.
    #[must_use]
    pub fn is_literal(&self) -> bool {
        !self.source.contains("{{") && !self.source.contains("{%") && !self.source.contains("{#")
    }

    /// Renders to text over the context (plus optional local variables, which win).
    pub fn render(&self, ctx: &Context, locals: Option<&Context>) -> Result<String, TemplateError> {
        if self.is_literal() {
            return Ok(self.source.to_string());
        }
        let value = context_value(&self.reads, ctx, locals);
        let t = self
            .compiled()?
            .get_template(COMPILED_NAME)
            .map_err(|e| TemplateError::from_mj(&e))?;
        t.render(value)
            .map_err(|e| explain(&self.reads, ctx, locals, &e))
    }

    /// The environment holding this template compiled (compiled now when
    /// no render compiled it before).
    fn compiled(&self) -> Result<&Environment<'static>, TemplateError> {
        if let Some(e) = self.compiled.get() {
            return Ok(e);
        }
        let mut e = env().clone();
        e.add_template_owned(COMPILED_NAME, self.source.to_string())
            .map_err(|e| TemplateError::from_mj(&e))?;
        // Two first renders at once may both compile; one is kept.
        Ok(self.compiled.get_or_init(|| e))
    }

    /// Evaluates to a JSON value: a single `{{ expr }}` keeps the expression's
    /// type (a list stays a list); anything else renders to a string.
    pub fn eval(
        &self,
        ctx: &Context,
        locals: Option<&Context>,
    ) -> Result<serde_json::Value, TemplateError> {
        match &self.single_expr {
            Some(expr) => {
                let e = env()
                    .compile_expression(expr)
                    .map_err(|e| TemplateError::from_mj(&e))?;
                let v = e
                    .eval(context_value(&self.reads, ctx, locals))
                    .map_err(|e| explain(&self.reads, ctx, locals, &e))?;
                serde_json::to_value(&v).map_err(|e| TemplateError {
                    message: format!("value cannot be converted to JSON: {e}"),
                    range: None,
                    line: None,
                    missing: Vec::new(),
                })
            }
            None => self.render(ctx, locals).map(serde_json::Value::String),
        }
    }
}

/// A boolean expression over the context (`"'error' in text"`, `"summary | length > 200"`).
#[derive(Clone)]
pub struct Expr {
    source: Arc<str>,
    reads: Arc<BTreeSet<String>>,
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Expr").field(&self.source).finish()
    }
}

impl Expr {
    /// Parses an expression.
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        let e = env()
            .compile_expression(source)
            .map_err(|e| TemplateError::from_mj(&e))?;
        let reads = e.undeclared_variables(false).into_iter().collect();
        Ok(Self {
            source: source.into(),
            reads: Arc::new(reads),
        })
    }

    /// The expression text.
    #[must_use]
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Top-level variables the expression reads.
    #[must_use]
    pub fn reads(&self) -> &BTreeSet<String> {
        &self.reads
    }

    /// Evaluates for truth (Jinja truthiness).
    pub fn is_true(&self, ctx: &Context, locals: Option<&Context>) -> Result<bool, TemplateError> {
        let e = env()
            .compile_expression(&self.source)
            .map_err(|e| TemplateError::from_mj(&e))?;
        Ok(e.eval(context_value(&self.reads, ctx, locals))
            .map_err(|e| explain(&self.reads, ctx, locals, &e))?
            .is_true())
    }
}

/// Turns an undefined-value error into one naming the missing variables.
fn explain(
    reads: &BTreeSet<String>,
    ctx: &Context,
    locals: Option<&Context>,
    e: &minijinja::Error,
) -> TemplateError {
    let mut err = TemplateError::from_mj(e);
    if e.kind() != ErrorKind::UndefinedError {
        return err;
    }
    let missing: Vec<String> = reads
        .iter()
        .filter(|v| !ctx.contains_key(*v) && !locals.is_some_and(|l| l.contains_key(*v)))
        .filter(|v| env().globals().all(|(g, _)| g != v.as_str()))
        .cloned()
        .collect();
    if !missing.is_empty() {
        err.message = format!(
            "undefined variable{} {}",
            if missing.len() == 1 { "" } else { "s" },
            missing
                .iter()
                .map(|m| format!("`{m}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        err.missing = missing;
    }
    err
}

/// The values a template reads, as a minijinja value. Only the keys the
/// template names are converted (not the whole context), so rendering costs
/// the size of what is read, however large the context grows.
fn context_value(reads: &BTreeSet<String>, ctx: &Context, locals: Option<&Context>) -> Value {
    let mut m = std::collections::BTreeMap::new();
    for k in reads {
        if let Some(v) = locals.and_then(|l| l.get(k)).or_else(|| ctx.get(k)) {
            m.insert(k.as_str(), v);
        }
    }
    Value::from(minijinja::value::Serde(&m))
}

/// Names minijinja's parser gives a meaning of its own (constants,
/// operators, statements, loop and self variables): a slot holding one of
/// them goes through the full parser.
const RESERVED: &[&str] = &[
    "true",
    "false",
    "none",
    "True",
    "False",
    "None",
    "not",
    "and",
    "or",
    "in",
    "is",
    "if",
    "else",
    "elif",
    "for",
    "endfor",
    "set",
    "endset",
    "block",
    "endblock",
    "extends",
    "include",
    "import",
    "from",
    "as",
    "with",
    "endwith",
    "macro",
    "endmacro",
    "call",
    "endcall",
    "filter",
    "endfilter",
    "raw",
    "endraw",
    "autoescape",
    "endautoescape",
    "do",
    "continue",
    "break",
    "recursive",
    "loop",
    "self",
    "super",
    "caller",
    "varargs",
    "kwargs",
];

/// The top-level variables of a template made only of text and
/// `{{ name }}` / `{{ name.attr }}` slots (ASCII names, no statements,
/// comments, filters or whitespace control); `None` for any other
/// template, which minijinja parses. A template this accepts always
/// compiles, with the same reads (a property test holds the two together).
fn plain_slots(source: &str) -> Option<BTreeSet<String>> {
    if source.contains("{%") || source.contains("{#") {
        return None;
    }
    let mut reads = BTreeSet::new();
    let mut rest = source;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let close = after.find("}}")?;
        let path = after[..close].trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'));
        if !is_plain_path(path) {
            return None;
        }
        reads.insert(path.split('.').next().unwrap_or(path).to_owned());
        rest = &after[close + 2..];
    }
    Some(reads)
}

/// `name` or `name.attr...`: ASCII identifiers, none of them reserved.
fn is_plain_path(path: &str) -> bool {
    path.split('.').all(|seg| {
        let mut chars = seg.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !RESERVED.contains(&seg)
    })
}

/// `{{ expr }}` with nothing around it → `Some("expr")`.
fn single_expression(source: &str) -> Option<&str> {
    let t = source.trim();
    let inner = t.strip_prefix("{{")?.strip_suffix("}}")?;
    let inner = inner.trim_start_matches('-').trim_end_matches('-').trim();
    if inner.contains("{{") || inner.contains("}}") || inner.is_empty() {
        return None;
    }
    Some(inner)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx(v: &serde_json::Value) -> Context {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn values_are_data_never_rendered_again() {
        let t = Template::parse("Summary: {{ text }}").unwrap();
        let c =
            ctx(&json!({"text": "{{ secret }} {% for x in y %} {x} {# c #}", "secret": "LEAK"}));
        assert_eq!(
            t.render(&c, None).unwrap(),
            "Summary: {{ secret }} {% for x in y %} {x} {# c #}"
        );
    }

    #[test]
    fn undefined_variables_are_named() {
        let t = Template::parse("Hi {{ name }} and {{ other }}").unwrap();
        let e = t.render(&ctx(&json!({"name": "a"})), None).unwrap_err();
        assert_eq!(e.message, "undefined variable `other`");
        assert_eq!(e.missing, vec!["other".to_owned()]);
    }

    #[test]
    fn default_and_is_defined_work_for_absent_keys() {
        let c = ctx(&json!({"a": 1}));
        let t =
            Template::parse("{{ x | default('none') }}{% if y is defined %}Y{% endif %}").unwrap();
        assert_eq!(t.render(&c, None).unwrap(), "none");
        assert!(
            !Expr::parse("y is defined")
                .unwrap()
                .is_true(&c, None)
                .unwrap()
        );
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let e = Template::parse("line one\n{{ oops(").unwrap_err();
        assert!(
            e.message.starts_with("template syntax error"),
            "{}",
            e.message
        );
        assert_eq!(e.line, Some(2));
    }

    #[test]
    fn plain_slots_are_read_without_the_parser_and_agree_with_it() {
        for (src, reads) in [
            ("Step 1: continue from {{ topic }}", vec!["topic"]),
            ("{{a}} and {{ b.c }} and {{\tb }}", vec!["a", "b"]),
            ("no slots } { at all }}", vec![]),
            ("{{ x }}}", vec!["x"]),
            ("{{a}}}", vec!["a"]),
        ] {
            let fast = plain_slots(src).unwrap();
            assert_eq!(fast.iter().map(String::as_str).collect::<Vec<_>>(), reads);
            let full = Template::parse_full(src).unwrap();
            assert_eq!(&fast, full.reads(), "{src}");
        }
        // Everything else goes to minijinja.
        for src in [
            "{{ x | upper }}",
            "{{- x }}",
            "{% if x %}{% endif %}",
            "{# c #}",
            "{{ true }}",
            "{{ x.0 }}",
            "{{ x ",
            "{{ }}",
            "{{ é }}",
            "{{ loop.index }}",
        ] {
            assert!(plain_slots(src).is_none(), "{src}");
        }
        assert!(Template::parse("{{ x ").is_err());
        assert!(Template::parse("{{ }}").is_err());
        assert_eq!(
            Template::parse(" {{ items }} ")
                .unwrap()
                .single_expr
                .as_deref(),
            Some("items")
        );
        // `{{a}}}` is the slot `a` and a `}`: not a single expression.
        assert_eq!(Template::parse("{{a}}}").unwrap().single_expr, None);
    }

    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
        /// Whatever the scan accepts, minijinja compiles, with the same
        /// reads and the same single expression.
        #[test]
        fn the_scan_agrees_with_minijinja(
            src in proptest::collection::vec(
                proptest::prop_oneof![
                    "([{}%#. \t\n_-]|[abx]|true|loop|\\|[0-9]){0,8}",
                    "\\{\\{[ \t\n]{0,2}([a-z_][a-z0-9_]{0,3}|true|loop|if)(\\.[a-z_0-9]{1,3}){0,2}[ \t\n]{0,2}\\}\\}",
                ],
                0..6,
            ).prop_map(|v: Vec<String>| v.concat())
        ) {
            if let Some(reads) = plain_slots(&src) {
                let full = Template::parse_full(&src);
                proptest::prop_assert!(full.is_ok(), "{src:?}: {:?}", full.err());
                let full = full.unwrap();
                proptest::prop_assert_eq!(&reads, full.reads(), "{:?}", src);
                let fast = Template::parse(&src).unwrap();
                proptest::prop_assert_eq!(fast.single_expr, full.single_expr, "{:?}", src);
            }
        }
    }

    #[test]
    fn single_expression_keeps_structure() {
        let t = Template::parse("{{ items }}").unwrap();
        let c = ctx(&json!({"items": [1, 2, 3]}));
        assert_eq!(t.eval(&c, None).unwrap(), json!([1, 2, 3]));
        let t = Template::parse("n={{ items | length }}").unwrap();
        assert_eq!(t.eval(&c, None).unwrap(), json!("n=3"));
    }

    #[test]
    fn reads_ignore_locally_set_variables() {
        let t =
            Template::parse("{% for q in questions %}{{ q }}{% endfor %}{% set z = 1 %}{{ z }}")
                .unwrap();
        assert_eq!(
            t.reads().iter().cloned().collect::<Vec<_>>(),
            vec!["questions".to_owned()]
        );
    }

    #[test]
    fn expressions_and_custom_tests() {
        let c = ctx(&json!({"text": "ERR: disk full", "n": 3}));
        assert!(
            Expr::parse("'disk' in text")
                .unwrap()
                .is_true(&c, None)
                .unwrap()
        );
        assert!(
            Expr::parse("text is matching('^ERR')")
                .unwrap()
                .is_true(&c, None)
                .unwrap()
        );
        assert!(!Expr::parse("n > 5").unwrap().is_true(&c, None).unwrap());
        assert!(
            Expr::parse("text | words == 3")
                .unwrap()
                .is_true(&c, None)
                .unwrap()
        );
    }

    #[test]
    fn fuel_bounds_runaway_loops() {
        let t = Template::parse(
            "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
        )
        .unwrap();
        let e = t.render(&Context::new(), None).unwrap_err();
        assert!(
            e.message.contains("fuel") || e.message.contains("range"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_template_compiled_once_renders_each_context_with_every_bound() {
        // Plain slots (parsed by the scan, compiled at the first render)
        // and full syntax (compiled by the parse): each render of the same
        // template, or of a clone, sees its own context.
        for source in ["Hi {{ name }}", "{% if name %}Hi {{ name }}{% endif %}"] {
            let t = Template::parse(source).unwrap();
            let copy = t.clone();
            assert_eq!(t.render(&ctx(&json!({"name": "a"})), None).unwrap(), "Hi a");
            assert_eq!(
                copy.render(&ctx(&json!({"name": "b"})), None).unwrap(),
                "Hi b"
            );
            let locals = ctx(&json!({"name": "c"}));
            assert_eq!(
                t.render(&ctx(&json!({"name": "a"})), Some(&locals))
                    .unwrap(),
                "Hi c"
            );
            // Strict about undefined values at every render, not only the first.
            let e = copy.render(&Context::new(), None).unwrap_err();
            assert_eq!(e.missing, vec!["name".to_owned()], "{source}");
        }
        // Fuel is per render: a compiled loop runs out of it each time.
        let t = Template::parse(
            "{% for a in range(n) %}{% for b in range(n) %}x{% endfor %}{% endfor %}",
        )
        .unwrap();
        assert_eq!(t.render(&ctx(&json!({"n": 2})), None).unwrap(), "xxxx");
        for _ in 0..2 {
            let e = t.render(&ctx(&json!({"n": 100_000})), None).unwrap_err();
            assert!(e.message.contains("fuel"), "{}", e.message);
        }
    }
}
