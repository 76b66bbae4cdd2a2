//! Unit tests of the step kinds: every descriptor, its validator, the
//! fields it takes, and one error of each kind with its location.

use std::collections::BTreeSet;

use crate::component::ComponentRegistry;
use crate::workflow::kind::{Distribution, KINDS, KindDef, PolicyScope, by_name};
use crate::workflow::spec::StepSpec;
use crate::workflow::validate::{STEP_KINDS, kind_fields};
use crate::workflow::{StepKind, ValidateEnv, Workflow, parse_workflow, validate};

/// One error: code, (line, column), message, hint.
#[derive(Debug)]
struct Found {
    code: String,
    at: (usize, usize),
    message: String,
    hint: String,
}

/// The line the step is written on in [`workflow`] (1-based).
const STEP_LINE: usize = 5;

/// A workflow around one step (flow mapping), with inputs `text` and
/// `items` and agents `a` and `b`, as the descriptors' examples expect.
fn workflow(step: &str) -> String {
    format!(
        "name: w\ninputs: {{ text: {{ type: string }}, items: {{ type: list }} }}\nagents: {{ a: {{}}, b: {{}} }}\nsteps:\n  - {step}\n"
    )
}

/// Validates `yaml` as `w.yaml` in a directory that also holds
/// `child.yaml` (for `kind: workflow`).
fn check(yaml: &str) -> Result<Workflow, Vec<Found>> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("child.yaml"),
        "name: child\ninputs: { text: { type: string } }\nsteps:\n  - { name: c, kind: llm, prompt: hi }\n",
    )
    .unwrap();
    let file = dir.path().join("w.yaml").display().to_string();
    let reg = ComponentRegistry::from_components(vec![]);
    let env = ValidateEnv {
        components: &reg,
        providers: None,
    };
    let found = |d: crate::Diagnostics| {
        d.0.iter()
            .filter(|d| d.severity == crate::Severity::Error)
            .map(|d| Found {
                code: d.code.to_owned(),
                at: d.line_col.unwrap_or_default(),
                message: d.message.clone(),
                hint: d.hint.clone().unwrap_or_default(),
            })
            .collect::<Vec<_>>()
    };
    let spec = parse_workflow(&file, yaml).map_err(found)?;
    validate(spec, &file, yaml, &env)
        .map(|(w, _)| w)
        .map_err(found)
}

/// The column (1-based) where `needle` starts on the step's line.
fn col_of(step: &str, needle: &str) -> usize {
    let i = step
        .find(needle)
        .unwrap_or_else(|| panic!("`{needle}` is not in `{step}`"));
    assert_eq!(
        step.matches(needle).count(),
        1,
        "`{needle}` is not unique in `{step}`"
    );
    // `  - ` precedes the step.
    4 + i + 1
}

/// Which variant a step kind is; no `_` arm, so a new variant must be
/// added here (and then needs an example, or
/// `every_variant_comes_from_a_listed_descriptor` fails).
fn variant(k: &StepKind) -> usize {
    match k {
        StepKind::Llm(_) => 0,
        StepKind::Transform(_) => 1,
        StepKind::Sequence(_) => 2,
        StepKind::Branch(_) => 3,
        StepKind::Parallel(_) => 4,
        StepKind::Approval(_) => 5,
        StepKind::Choose(_) => 6,
        StepKind::Sections(_) => 7,
        StepKind::Workflow(_) => 8,
        StepKind::Switch(_) => 9,
        StepKind::QualityGate(_) => 10,
        StepKind::Refine(_) => 11,
        StepKind::Debate(_) => 12,
        StepKind::AgentChain(_) => 13,
        StepKind::Map(_) => 14,
        StepKind::Reduce(_) => 15,
        StepKind::FanOut(_) => 16,
        StepKind::Saga(_) => 17,
        StepKind::Pipeline(_) => 18,
        StepKind::ScatterGather(_) => 19,
        StepKind::Http(_) => 20,
        StepKind::Agent(_) => 21,
    }
}
const VARIANTS: usize = 22;

/// Every descriptor, with the forms that share a listed one.
fn all_defs() -> Vec<&'static KindDef> {
    let mut v: Vec<&KindDef> = KINDS.to_vec();
    v.push(&super::AGENT_SEQUENCE);
    v
}

#[test]
fn kind_names_are_unique_and_step_kinds_lists_them_in_order() {
    let names: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
    assert_eq!(names, STEP_KINDS);
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "{names:?}");
    for k in KINDS {
        assert_eq!(by_name(k.name).unwrap().fields, k.fields);
    }
    assert!(by_name("sequences").is_none());
}

#[test]
fn every_example_validates_to_its_own_kind() {
    for def in all_defs() {
        let yaml = workflow(def.example);
        let wf = check(&yaml).unwrap_or_else(|e| panic!("{}: {e:?}", def.name));
        assert_eq!(wf.steps.len(), 1, "{}", def.name);
        let got = wf.steps[0].kind.def();
        assert_eq!(got.name, def.name, "{}", def.example);
        assert_eq!(got.distribution, def.distribution, "{}", def.example);
        assert!(
            def.example.contains(&format!("kind: {},", def.name)),
            "{}: the example is not a `{}` step",
            def.example,
            def.name
        );
    }
}

#[test]
fn every_variant_comes_from_a_listed_descriptor() {
    let mut seen = BTreeSet::new();
    for def in all_defs() {
        let wf = check(&workflow(def.example)).unwrap();
        for (_, step) in wf.walk() {
            seen.insert(variant(&step.kind));
            // The descriptor a variant names is the one its name finds.
            let d = step.kind.def();
            let listed = by_name(d.name).unwrap();
            assert_eq!(listed.fields, d.fields, "{}", d.name);
            assert_eq!(listed.policies, d.policies, "{}", d.name);
        }
    }
    assert_eq!(
        seen.len(),
        VARIANTS,
        "variants without an example: {seen:?}"
    );
}

#[test]
fn the_agent_form_of_sequence_runs_where_its_parent_runs() {
    let wf = check(&workflow(super::AGENT_SEQUENCE.example)).unwrap();
    assert!(matches!(wf.steps[0].kind, StepKind::AgentChain(_)));
    assert_eq!(wf.steps[0].kind.def().distribution, Distribution::Local);
    assert_eq!(wf.steps[0].kind.name(), "sequence");
    let wf = check(&workflow(super::SEQUENCE.example)).unwrap();
    assert_eq!(
        wf.steps[0].kind.def().distribution,
        Distribution::IfChildrenMay
    );
}

#[test]
fn every_step_field_is_checked_against_the_kind() {
    // The spec's own list of fields, from the unknown-field hint.
    let e = check(&workflow("{ name: s, kind: llm, prompt: hi, zzz: 1 }")).unwrap_err();
    let hint = &e[0].hint;
    let listed = hint
        .strip_prefix("valid fields here: ")
        .unwrap_or_else(|| panic!("{e:?}"));
    let spec_fields: BTreeSet<&str> = listed.split(", ").map(|f| f.trim_matches('`')).collect();
    assert!(spec_fields.contains("prompt") && spec_fields.contains("gather"));
    let common = ["name", "kind", "output", "when", "description", "use"];
    let policy = ["retry", "fallback", "circuit_breaker", "degrade", "timeout"];
    let checked: BTreeSet<&str> = kind_fields(&StepSpec::empty())
        .iter()
        .map(|(n, set, _)| {
            assert!(!set);
            *n
        })
        .collect();
    for f in &spec_fields {
        assert!(
            common.contains(f) || policy.contains(f) || checked.contains(f),
            "`{f}` is a step field no kind check looks at"
        );
    }
    for f in &checked {
        assert!(spec_fields.contains(f), "`{f}` is not a step field");
    }
    // Every field a kind takes is a step field.
    for def in all_defs() {
        for f in def.fields {
            assert!(
                checked.contains(f) || *f == "timeout",
                "{}: `{f}` is not a step field",
                def.name
            );
        }
    }
}

#[test]
fn a_field_of_another_kind_is_refused_naming_the_ones_the_kind_takes() {
    for def in KINDS {
        let (field, value) = if def.fields.contains(&"prompt") {
            ("fn", "trim")
        } else {
            ("prompt", "stray")
        };
        let step = def
            .example
            .strip_suffix(" }")
            .map(|s| format!("{s}, {field}: {value} }}"))
            .unwrap();
        let e = check(&workflow(&step)).unwrap_err();
        assert_eq!(e.len(), 1, "{}: {e:?}", def.name);
        let e = &e[0];
        assert_eq!(e.code, "spes::workflow::field_not_for_kind", "{e:?}");
        assert_eq!(
            e.message,
            format!(
                "step `s`: `{field}` does not apply to a `{}` step",
                def.name
            )
        );
        assert_eq!(
            e.hint,
            format!(
                "a `{}` step takes: name, kind, output, when, description, {}",
                def.name,
                def.fields.join(", ")
            )
        );
        assert_eq!(e.at, (STEP_LINE, col_of(&step, &format!("{value} }}"))));
    }
}

#[test]
fn policies_follow_the_kinds_scope() {
    for def in KINDS {
        // A provider alternative re-sends one model call: llm steps only.
        let step = def
            .example
            .strip_suffix(" }")
            .map(|s| format!("{s}, fallback: [ {{ provider: other }} ] }}"))
            .unwrap();
        let r = check(&workflow(&step));
        match def.policies {
            PolicyScope::Call => {
                assert!(r.is_ok(), "{}: {:?}", def.name, r.err());
            }
            PolicyScope::Composite | PolicyScope::Pure | PolicyScope::Gate => {
                let e = r.unwrap_err();
                assert_eq!(e.len(), 1, "{}: {e:?}", def.name);
                assert_eq!(e[0].code, "spes::workflow::policy_not_for_kind");
            }
        }
        // retry applies to all but gates and pure steps.
        let step = def
            .example
            .strip_suffix(" }")
            .map(|s| format!("{s}, retry: {{ attempts: 2 }} }}"))
            .unwrap();
        let r = check(&workflow(&step));
        match def.policies {
            PolicyScope::Call | PolicyScope::Composite => {
                assert!(r.is_ok(), "{}: {:?}", def.name, r.err());
            }
            PolicyScope::Pure | PolicyScope::Gate => {
                let e = r.unwrap_err();
                assert_eq!(e[0].code, "spes::workflow::policy_not_for_kind");
                assert!(e[0].message.contains(&format!("a `{}` step", def.name)));
            }
        }
    }
}

/// (step, code, where the error points, part of its message)
const ERRORS: &[(&str, &str, &str, &str)] = &[
    (
        "{ name: s, kind: agent, prompt: hi, tools: [a, a] }",
        "spes::workflow::bad_tool",
        "[a, a]",
        "two tools are named `a`",
    ),
    (
        "{ name: s, kind: agent, prompt: hi, tools: [{ http: { name: w, url: \"http://h/\" } }] }",
        "spes::workflow::bad_tool",
        "[{ http",
        "http tool `w` needs a `description`",
    ),
    (
        "{ name: s, kind: agent, prompt: hi, tools: [{ http: { name: w, description: d, url: \"http://h/{{ nope }}\" } }] }",
        "spes::workflow::unknown_key",
        "[{ http",
        "reads `nope`",
    ),
    (
        "{ name: s, kind: agent, prompt: hi, tools: [a], tool_choice: { tool: b } }",
        "spes::workflow::bad_tool",
        "{ tool: b }",
        "`tool_choice` must be",
    ),
    (
        "{ name: s, kind: agent, prompt: hi, tools: [a], approve_tools: [b] }",
        "spes::workflow::bad_tool",
        "[b]",
        "`approve_tools` names `b`",
    ),
    (
        "{ name: s, kind: agent, prompt: hi, tools: [a], max_turns: 0 }",
        "spes::workflow::bad_count",
        "0 }",
        "`max_turns` must be between 1 and 100",
    ),
    (
        "{ name: s, kind: http, method: FETCH, url: \"http://h/\" }",
        "spes::workflow::bad_http",
        "FETCH",
        "unknown method `FETCH`",
    ),
    (
        "{ name: s, kind: http, url: \"http://h/\", body: { a: 1 } }",
        "spes::workflow::bad_http",
        "{ a: 1 }",
        "a GET request has no body",
    ),
    (
        "{ name: s, kind: http, url: \"http://h/\", response: xml }",
        "spes::workflow::bad_http",
        "xml",
        "is not `json` or `text`",
    ),
    (
        "{ name: s, kind: http, url: \"http://h/\", max_bytes: 0 }",
        "spes::workflow::bad_http",
        "0 }",
        "`max_bytes` must be between 1",
    ),
    (
        "{ name: s, kind: http, url: \"http://h/\", headers: { X-A: { vault: k } } }",
        "spes::workflow::bad_http",
        "{ X-A",
        "header `X-A` must be text or `{ env: VAR }`",
    ),
    (
        "{ name: s, kind: llm, task: hi }",
        "spes::workflow::task_without_agent",
        "hi }",
        "has a `task` but no `agent`",
    ),
    (
        "{ name: s, kind: transform, fn: trim_all, input: x }",
        "spes::workflow::bad_transform",
        "trim_all",
        "step `s`",
    ),
    (
        "{ name: s, kind: sequence, steps: [] }",
        "spes::workflow::no_steps",
        "[]",
        "`steps` is empty",
    ),
    (
        "{ name: s, kind: sequence, agents: [], task: hi }",
        "spes::workflow::no_steps",
        "[]",
        "`agents` is empty",
    ),
    (
        "{ name: s, kind: branch, if: \"text | length > 3\" }",
        "spes::workflow::missing_field",
        "\"text",
        "`if` without `then`",
    ),
    (
        "{ name: s, kind: parallel, steps: [ { name: a, kind: llm, prompt: hi } ], concurrency: 0 }",
        "spes::workflow::bad_concurrency",
        "0 }",
        "concurrency must be at least 1",
    ),
    (
        "{ name: s, kind: approval, show: nope }",
        "spes::workflow::unknown_key",
        "nope",
        "reads `nope` before any step writes it",
    ),
    (
        "{ name: s, kind: choose, generate: { prompt: hi }, n: 1 }",
        "spes::workflow::bad_count",
        "1 }",
        "choose offers 2 to 20 variations",
    ),
    (
        "{ name: s, kind: sections, outline: [], section: { prompt: hi } }",
        "spes::workflow::no_steps",
        "[]",
        "`outline` is empty",
    ),
    (
        "{ name: s, kind: workflow, path: missing.yaml }",
        "spes::workflow::sub_workflow",
        "missing.yaml",
        "cannot read",
    ),
    (
        "{ name: s, kind: switch, classify: { prompt: hi }, routes: {} }",
        "spes::workflow::no_steps",
        "{} }",
        "`routes` is empty",
    ),
    (
        "{ name: s, kind: quality_gate, step: { prompt: hi }, evaluator: { checks: [ { contains: x } ] }, threshold: 1.5 }",
        "spes::workflow::bad_threshold",
        "1.5",
        "threshold 1.5 is outside 0..1",
    ),
    (
        "{ name: s, kind: refine, generate: { prompt: hi }, evaluator: { checks: [ { contains: x } ] }, max_iterations: 0 }",
        "spes::workflow::bad_count",
        "0 }",
        "max_iterations must be at least 1",
    ),
    (
        "{ name: s, kind: debate, debaters: [a], topic: hi, judge: b }",
        "spes::workflow::bad_count",
        "[a]",
        "at least 2 different debaters",
    ),
    (
        "{ name: s, kind: map, over: nothing, step: { kind: llm, prompt: hi } }",
        "spes::workflow::unknown_key",
        "nothing",
        "reads `nothing` before any step writes it",
    ),
    (
        "{ name: s, kind: reduce, over: \"{{ items }}\", step: { kind: llm, prompt: hi } }",
        "spes::workflow::bad_key",
        "\"{{",
        "is not a context key",
    ),
    (
        "{ name: s, kind: fan_out, workers: [] }",
        "spes::workflow::no_steps",
        "[]",
        "`workers` is empty",
    ),
    (
        "{ name: s, kind: saga }",
        "spes::workflow::missing_field",
        "saga",
        "a saga needs `steps`",
    ),
    (
        "{ name: s, kind: pipeline, stages: [] }",
        "spes::workflow::no_steps",
        "[]",
        "`stages` is empty",
    ),
    (
        "{ name: s, kind: scatter_gather, timeout: 0s, sources: [ { name: a, kind: llm, prompt: hi } ] }",
        "spes::workflow::bad_duration",
        "0s",
        "timeout must be longer than zero",
    ),
];

#[test]
fn one_error_of_each_kind_points_at_its_cause() {
    let mut kinds = BTreeSet::new();
    for (step, code, at, part) in ERRORS {
        let e = check(&workflow(step)).unwrap_err();
        assert_eq!(e.len(), 1, "{step}: {e:?}");
        let e = &e[0];
        assert_eq!(e.code, *code, "{step}: {e:?}");
        assert_eq!(e.at, (STEP_LINE, col_of(step, at)), "{step}: {e:?}");
        assert!(e.message.contains(part), "{step}: {e:?}");
        assert!(e.message.starts_with("step `s`"), "{step}: {e:?}");
        let kind = step
            .split("kind: ")
            .nth(1)
            .unwrap()
            .split([',', ' '])
            .next();
        kinds.insert(kind.unwrap().to_owned());
    }
    let all: BTreeSet<String> = STEP_KINDS.iter().map(|k| (*k).to_owned()).collect();
    assert_eq!(kinds, all, "every kind has an error case");
}

#[test]
fn an_unknown_kind_lists_the_kinds_with_the_closest_first() {
    let step = "{ name: s, kind: sequense }";
    let e = check(&workflow(step)).unwrap_err();
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].code, "spes::workflow::unknown_step_kind");
    assert_eq!(e[0].at, (STEP_LINE, col_of(step, "sequense")));
    assert_eq!(
        e[0].hint,
        format!(
            "did you mean `sequence`? Step kinds: {}",
            STEP_KINDS.join(", ")
        )
    );
}

/// Every child role, as the walk keys it.
const RICH: &str = r#"name: rich
inputs: { text: { type: string }, items: { type: list } }
agents: { a: {}, b: {} }
steps:
  - name: br
    kind: branch
    branches:
      - { name: big, if: "text | length > 3", steps: [ { name: x1, kind: llm, prompt: hi } ] }
      - { if: { keyword: [a], in: text }, steps: [ { name: x2, kind: llm, prompt: hi } ] }
    else: [ { name: x3, kind: transform, fn: trim, input: "{{ text }}" } ]
  - name: sw
    kind: switch
    classify: { prompt: "Classify {{ text }}" }
    routes: { bug: [ { name: r1, kind: llm, prompt: hi } ] }
    default: [ { name: r3, kind: llm, prompt: hi } ]
  - name: ap
    kind: approval
    generate: { kind: llm, prompt: "Draft {{ text }}" }
    deadline: 3d
    on_timeout: [ { name: t1, kind: llm, prompt: late } ]
  - { name: ch, kind: choose, generate: { prompt: hi }, deadline: 1h, on_timeout: [ { name: t2, kind: llm, prompt: late } ] }
  - { name: se, kind: sections, outline: [I], section: { prompt: hi }, deadline: 1h, on_timeout: [ { name: t3, kind: llm, prompt: late } ] }
  - name: qg
    kind: quality_gate
    step: { kind: sequence, name: inner, steps: [ { name: q1, kind: llm, prompt: hi } ] }
    evaluator: { checks: [ { contains: risk } ] }
  - { name: qg2, kind: quality_gate, step: { prompt: hi }, evaluator: { checks: [ { contains: risk } ] } }
  - name: rf
    kind: refine
    generate: { kind: sequence, name: gen, steps: [ { name: g1, kind: llm, prompt: hi } ] }
    evaluator: { checks: [ { contains: risk } ] }
  - { name: db, kind: debate, debaters: [a, b], topic: hi, judge: a }
  - { name: ac, kind: sequence, agents: [a, b], task: hi }
  - { name: mp, kind: map, over: items, step: { kind: sequence, steps: [ { name: m1, kind: llm, prompt: "{{ item }}" } ] } }
  - { name: rd, kind: reduce, over: items, step: { kind: llm, prompt: hi } }
  - name: fo
    kind: fan_out
    workers: [ { name: w1, step: { kind: llm, prompt: hi } } ]
    aggregate: { kind: llm, prompt: "{{ results }}" }
  - name: sg
    kind: saga
    steps:
      - { name: s1, kind: llm, prompt: hi, compensate: { kind: llm, prompt: undo } }
      - { name: s2, kind: llm, prompt: hi }
  - { name: pl, kind: pipeline, stages: [ { name: p1, kind: llm, prompt: hi } ] }
  - { name: sc, kind: scatter_gather, timeout: 30s, sources: [ { name: so1, kind: llm, prompt: hi } ], gather: { kind: llm, prompt: hi } }
  - { name: pa, kind: parallel, steps: [ { name: pa1, kind: llm, prompt: hi } ], synthesize: { kind: llm, prompt: hi } }
  - { name: pg, kind: parallel, agents: [a, b], task: hi }
  - { name: wf, kind: workflow, path: child.yaml, inputs: { text: "{{ text }}" } }
"#;

#[test]
fn the_walk_keys_every_child_where_the_engine_journals_it() {
    let wf = check(RICH).unwrap();
    let keys: Vec<String> = wf.walk().into_iter().map(|(k, _)| k).collect();
    let expected = [
        "br",
        "br/big/x1",
        "br/arm2/x2",
        "br/else/x3",
        "sw",
        "sw/bug/r1",
        "sw/default/r3",
        "ap",
        "ap/generate",
        "ap/timeout/t1",
        "ch",
        "ch/timeout/t2",
        "se",
        "se/timeout/t3",
        "qg",
        "qg/attempt*/inner",
        "qg/attempt*/inner/q1",
        "qg2",
        "rf",
        "rf/iteration*/gen",
        "rf/iteration*/gen/g1",
        "db",
        "ac",
        "mp",
        "mp/map[*]/item",
        "mp/map[*]/item/m1",
        "rd",
        "rd/reduce",
        "fo",
        "fo/w1",
        "fo/aggregate",
        "sg",
        "sg/s1",
        "sg/s1/compensate",
        "sg/s2",
        "pl",
        "pl/p1",
        "sc",
        "sc/so1",
        "sc/gather",
        "pa",
        "pa/pa1",
        "pa/synthesize",
        "pg",
        "wf",
        "wf/c",
    ];
    assert_eq!(keys, expected);
}
