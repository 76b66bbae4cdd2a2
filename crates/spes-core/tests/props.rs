//! Property tests: arbitrary input to the readers spes exposes to users and
//! models (workflow YAML, component frontmatter, templates, transform
//! functions) never panics and stays within a memory and time budget.
//!
//! Each property runs `PROPTEST_CASES` cases (default 2,000, a few seconds in
//! CI); `scripts/soak-props.sh` runs a longer soak in release mode.
//!
//! Memory: this test binary's allocator refuses to grow past
//! [`MEMORY_BUDGET`] above what was allocated when the property started; an
//! input that tried would abort the process and fail the test. Time: a case
//! that ran for longer than [`CASE_BUDGET`] fails (a hang guard set far above
//! the milliseconds a case takes; speed itself is measured by benchmarks).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::{Value, json};
use spes_core::component::ComponentRegistry;
use spes_core::template::{Context, Template};
use spes_core::workflow::{ValidateEnv, parse_workflow, validate};

#[global_allocator]
static ALLOC: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// The most one property may allocate on top of what was live when it started.
const MEMORY_BUDGET: usize = 512 << 20;
/// The longest one case may take.
const CASE_BUDGET: Duration = Duration::from_secs(5);

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Caps the allocator for the rest of this test process.
fn cap_memory() {
    let _ = ALLOC.set_limit(ALLOC.allocated() + MEMORY_BUDGET);
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    let took = started.elapsed();
    assert!(took < CASE_BUDGET, "{what} took {took:?}");
    out
}

/// Text made of the characters that mean something in YAML, plus a few
/// multi-byte and control characters.
fn yamlish() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        Just("name: w\n".to_owned()),
        Just("steps:\n".to_owned()),
        Just("  - ".to_owned()),
        Just("{ name: a, kind: llm, prompt: hi }".to_owned()),
        Just("kind: ".to_owned()),
        Just("&a ".to_owned()),
        Just("*a".to_owned()),
        Just("!!binary ".to_owned()),
        Just("<<: *a\n".to_owned()),
        Just("? ".to_owned()),
        Just("|\n".to_owned()),
        Just(">-\n".to_owned()),
        Just("\"\\u00e9\\x1b\"".to_owned()),
        Just("'it''s'".to_owned()),
        Just("---\n".to_owned()),
        Just("...\n".to_owned()),
        "[ -~\n\t]{0,12}",
        "[\\[\\]{}:,&*!|>'\"#%@` \n-]{0,12}",
        "\\PC{0,4}",
    ];
    prop::collection::vec(atom, 0..40).prop_map(|v| v.concat())
}

/// A valid workflow to mutate.
const GOOD: &str = "name: w
inputs:
  text: { type: string, required: true }
steps:
  - { name: a, kind: llm, prompt: \"Say {{ text }}\", output: a }
  - name: m
    kind: map
    over: a
    step: { name: t, kind: transform, fn: trim, input: \"{{ item }}\" }
    output: m
";

fn check_workflow(text: &str) {
    timed("workflow", || {
        if let Ok(spec) = parse_workflow("w.yaml", text) {
            let reg = ComponentRegistry::default();
            let env = ValidateEnv {
                components: &reg,
                providers: None,
            };
            let _ = validate(spec, "w.yaml", text, &env);
        }
    });
}

/// Template sources built from Jinja syntax, including expensive constructs.
fn templateish() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        Just("{{ ".to_owned()),
        Just(" }}".to_owned()),
        Just("{% for i in range(1000000) %}".to_owned()),
        Just("{% for i in range(n) %}{% for j in range(n) %}".to_owned()),
        Just("{% endfor %}".to_owned()),
        Just("{% if x %}".to_owned()),
        Just("{% endif %}".to_owned()),
        Just("{% set s = s ~ s %}".to_owned()),
        Just("\"ab\" * 100000000".to_owned()),
        Just("x ~ x".to_owned()),
        Just("items | join(',')".to_owned()),
        Just("text | upper".to_owned()),
        Just("range(99999999) | list".to_owned()),
        Just("nested.a.b".to_owned()),
        Just("{# c #}".to_owned()),
        Just("{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}".to_owned()),
        Just("{{ {} }}".to_owned()),
        "[ -~]{0,10}",
        "\\PC{0,4}",
    ];
    prop::collection::vec(atom, 0..16).prop_map(|v| v.concat())
}

fn context() -> Context {
    let Value::Object(m) = json!({
        "x": "{{ x }}",
        "s": "ab",
        "n": 100_000,
        "text": "hello {% raw %}",
        "items": ["a", "b", "{{ c }}"],
        "nested": { "a": { "b": 1 } },
    }) else {
        unreachable!()
    };
    m
}

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        "\\PC{0,30}".prop_map(Value::String),
        "[{}\\[\\]\":, a-z0-9`\n]{0,30}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,4}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn transform_args() -> impl Strategy<Value = (String, serde_json::Map<String, Value>)> {
    let name = prop::sample::select(spes_core::transform::FUNCTION_NAMES.to_vec());
    let arg = prop_oneof![
        "\\PC{0,12}".prop_map(Value::String),
        "[$.\\[\\]*?@()a-z0-9'=<> ]{0,16}".prop_map(Value::String),
        "[\\\\()\\[\\]{}+*?|^$.a-z0-9,]{0,16}".prop_map(Value::String),
        any::<u32>().prop_map(|n| json!(n)),
    ];
    let key = prop::sample::select(vec!["path", "pattern", "group", "of", "sep", "other"]);
    (
        name,
        prop::collection::btree_map(key, arg, 0..3)
            .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()),
    )
        .prop_map(|(n, m)| (n.to_owned(), m))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn workflow_yaml_never_panics(text in yamlish()) {
        cap_memory();
        check_workflow(&text);
    }

    #[test]
    fn a_mutated_workflow_never_panics(
        edits in prop::collection::vec((any::<prop::sample::Index>(), "\\PC{0,3}|[\\[{&*:\n]"), 1..6)
    ) {
        cap_memory();
        let mut text = GOOD.to_owned();
        for (at, insert) in edits {
            let mut i = at.index(text.len() + 1);
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            text.insert_str(i, &insert);
        }
        check_workflow(&text);
    }

    #[test]
    fn component_frontmatter_never_panics(head in yamlish(), body in templateish()) {
        cap_memory();
        let text = format!("---\nkind: persona\nname: p\nversion: 1.0.0\ndescription: d\n{head}\n---\n{body}");
        timed("component", || {
            let _ = spes_core::component::parse_component("p.md", &text);
            let _ = spes_core::component::parse_component("p.md", &head);
        });
    }

    #[test]
    fn templates_render_within_budget(src in templateish()) {
        cap_memory();
        let ctx = context();
        timed("template", || {
            if let Ok(t) = Template::parse(&src) {
                let _ = t.render(&ctx, None);
                let _ = t.eval(&ctx, None);
            }
        });
    }

    #[test]
    fn transforms_never_panic((name, args) in transform_args(), input in arbitrary_json()) {
        cap_memory();
        timed("transform", || {
            if let Ok(f) = spes_core::transform::build(&name, &args) {
                let _ = f.apply(input);
            }
        });
    }
}

/// Values are data, never template source: whatever a value holds, it is
/// inserted verbatim.
#[test]
fn values_are_never_evaluated() {
    proptest!(config(), |(v in "\\PC{0,40}")| {
        let t = Template::parse("[{{ v }}]").unwrap();
        let mut ctx = Context::new();
        ctx.insert("v".into(), Value::String(v.clone()));
        prop_assert_eq!(t.render(&ctx, None).unwrap(), format!("[{v}]"));
    });
}

/// Known expensive templates are stopped by the renderer's budgets (fuel,
/// range and recursion limits) with an error, not by running out of memory.
#[test]
fn expensive_templates_stay_within_budget() {
    cap_memory();
    let ctx = context();
    for src in [
        "{{ \"ab\" * 100000000 }}",
        "{{ \"ab\" * 1000000000000 }}",
        "{% for i in range(n) %}{% for j in range(n) %}x{% endfor %}{% endfor %}",
        "{{ range(99999999) | list | length }}",
        "{% set s = s ~ s %}{% set s = s ~ s %}{{ s }}",
        "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
    ] {
        let out = timed(src, || Template::parse(src).unwrap().render(&ctx, None));
        assert!(
            out.is_err(),
            "{src} rendered {} bytes",
            out.map_or(0, |s| s.len())
        );
    }
}
