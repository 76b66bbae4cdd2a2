//! Engine behaviour on the scripted provider.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod agent;
mod answers;
mod compose;
mod durable;
mod fake_server;
mod gates;
mod http;
mod limits;
mod mcp;
mod orchestration;
mod patterns;
mod policy;
mod provider_retry;
#[cfg(feature = "otel")]
mod telemetry;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};
use spes_core::component::{ComponentRegistry, parse_component};
use spes_core::workflow::{ValidateEnv, Workflow, parse_workflow, validate};
use spes_engine::{Effect, Engine, FailureKind, Journal, MemoryJournal, RunError};
use spes_llm::scripted::ScriptedProvider;

fn components() -> ComponentRegistry {
    let persona = "---\nkind: persona\nname: critic\nversion: 1.2.0\ndescription: d\nvariables:\n  - { name: domain, default: web }\n---\nYou review {{ domain }} systems.";
    let instr = "---\nkind: instruction\nname: brief\nversion: 1.0.0\ndescription: d\nvariables:\n  - { name: words, default: \"50\" }\n---\nAnswer in {{ words }} words.";
    let old = "---\nkind: persona\nname: critic\nversion: 1.0.0\ndescription: d\n---\nOLD persona.";
    ComponentRegistry::from_components(
        [("p.md", persona), ("i.md", instr), ("o.md", old)]
            .into_iter()
            .map(|(f, t)| parse_component(f, t).unwrap().0)
            .collect(),
    )
}

pub(crate) fn workflow(yaml: &str) -> Workflow {
    let spec = parse_workflow("wf.yaml", yaml).unwrap();
    let reg = components();
    let env = ValidateEnv {
        components: &reg,
        providers: None,
    };
    validate(spec, "wf.yaml", yaml, &env)
        .unwrap_or_else(|d| panic!("{}", d.render_plain()))
        .0
}

pub(crate) fn scripted(script: &str) -> Arc<ScriptedProvider> {
    Arc::new(ScriptedProvider::parse("test", "answers.yaml", script).unwrap())
}

pub(crate) fn inputs(pairs: &[(&str, &str)]) -> BTreeMap<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
        .collect()
}

const CHAIN: &str = r#"
name: chain
inputs: { topic: { type: string, required: true } }
steps:
  - { name: a, kind: llm, prompt: "About {{ topic }}", output: a }
  - { name: b, kind: llm, prompt: "Improve: {{ a }}", output: b }
"#;

#[tokio::test]
async fn a_journal_answers_recorded_calls_so_a_rerun_repeats_none() {
    let wf = workflow(CHAIN);
    let p = scripted("- { step: a, reply: first }\n- { step: b, reply: second }");
    let engine = Engine::builder().provider(p.clone()).build();
    let journal = Arc::new(MemoryJournal::default());
    let one = engine
        .run_with_journal(&wf, inputs(&[("topic", "x")]), journal.clone())
        .await
        .unwrap();
    assert_eq!((one.model_calls, one.replayed), (2, 0));
    assert_eq!(journal.len(), 2);
    let two = engine
        .run_with_journal(&wf, inputs(&[("topic", "x")]), journal.clone())
        .await
        .unwrap();
    assert_eq!((two.model_calls, two.replayed), (0, 2));
    assert_eq!(one.context, two.context);
    assert_eq!(p.calls().len(), 2, "the provider saw no new call");
    // A fresh run (own journal) calls again.
    let three = engine.run(&wf, inputs(&[("topic", "x")])).await.unwrap();
    assert_eq!(three.model_calls, 2);
}

#[tokio::test]
async fn journal_entries_record_provider_model_hash_and_components() {
    let wf = workflow(
        r#"
name: agent
agents:
  critic: { persona: persona/critic@^1, instruction: instruction/brief@^1, vars: { words: "20" }, model: m-7 }
inputs: { text: { type: string, required: true } }
steps:
  - { name: review, kind: llm, agent: critic, task: "Review: {{ text }}", output: review }
"#,
    );
    let p = scripted("- { default: echo }");
    let engine = Engine::builder().provider(p.clone()).build();
    let journal = Arc::new(MemoryJournal::default());
    engine
        .run_with_journal(&wf, inputs(&[("text", "T")]), journal.clone())
        .await
        .unwrap();
    let (_, req) = &p.calls()[0];
    assert_eq!(
        req.system.as_deref(),
        Some("You review web systems.\n\nAnswer in 20 words.")
    );
    assert_eq!(req.messages[0].content, "Review: T");
    assert_eq!(req.model.as_deref(), Some("m-7"));
    let Effect::Model {
        provider,
        model,
        request_hash,
        components,
        ..
    } = journal.get("review").await.unwrap().unwrap()
    else {
        panic!("not a model effect");
    };
    assert_eq!(provider, "test");
    assert_eq!(model.as_deref(), Some("m-7"));
    assert_eq!(request_hash.len(), 64);
    assert_eq!(
        components,
        vec![
            "persona/critic@1.2.0".to_owned(),
            "instruction/brief@1.0.0".to_owned()
        ]
    );
}

#[tokio::test]
async fn values_are_data_in_every_later_prompt() {
    let wf = workflow(CHAIN);
    let nasty = "{{ topic }} {% if true %}X{% endif %} {topic} {# c #}";
    let p = scripted(&format!(
        "- {{ step: a, reply: {} }}\n- {{ default: echo }}",
        serde_json::to_string(nasty).unwrap()
    ));
    let engine = Engine::builder().provider(p.clone()).build();
    let out = engine
        .run(&wf, inputs(&[("topic", "{{ 7 * 6 }}")]))
        .await
        .unwrap();
    let calls = p.calls();
    assert_eq!(calls[0].1.messages[0].content, "About {{ 7 * 6 }}");
    assert_eq!(calls[1].1.messages[0].content, format!("Improve: {nasty}"));
    assert_eq!(out.output, Some(json!(format!("Improve: {nasty}"))));
}

#[tokio::test]
async fn branches_take_the_first_matching_arm_and_record_ask_decisions() {
    let wf = workflow(
        r#"
name: route
inputs: { text: { type: string, required: true } }
steps:
  - name: route
    kind: branch
    branches:
      - { name: short, if: { length: { max: 3 }, in: text }, steps: [ { name: s, kind: transform, fn: template, input: short, output: r } ] }
      - { name: asked, if: { ask: "Is {{ text }} urgent?" }, steps: [ { name: u, kind: transform, fn: template, input: urgent, output: r } ] }
      - { name: kw, if: { keyword: [later], in: text }, steps: [ { name: k, kind: transform, fn: template, input: kw, output: r } ] }
    else:
      - { name: e, kind: transform, fn: template, input: other, output: r }
  - { name: done, kind: transform, fn: template, input: "{{ r }}", output: result }
output: result
"#,
    );
    let p = scripted(
        "- { prompt_contains: 'fire', reply: 'Yes.' }\n- { prompt_contains: 'urgent', reply: 'No' }",
    );
    let engine = Engine::builder().provider(p.clone()).build();
    let cases = [
        ("ok", "short", 0),
        ("the server is on fire", "urgent", 1),
        ("do it later", "kw", 1),
        ("whatever else", "other", 1),
    ];
    for (text, want, calls) in cases {
        let journal = Arc::new(MemoryJournal::default());
        let out = engine
            .run_with_journal(&wf, inputs(&[("text", text)]), journal.clone())
            .await
            .unwrap();
        assert_eq!(out.output, Some(json!(want)), "{text}");
        assert_eq!(out.model_calls, calls, "{text}");
        assert_eq!(
            journal.get("route#if2").await.unwrap().is_some(),
            calls == 1,
            "{text}"
        );
    }
    assert_eq!(
        p.calls()[0].1.messages[0].content,
        "Is the server is on fire urgent?\n\nAnswer with ONLY 'yes' or 'no'."
    );
}

#[tokio::test]
async fn a_provider_error_names_the_step_and_its_location() {
    let wf = workflow(CHAIN);
    let p = scripted("- { step: a, reply: ok }\n- { step: b, error: overloaded, status: 529 }");
    let engine = Engine::builder().provider(p).build();
    let err = engine
        .run(&wf, inputs(&[("topic", "x")]))
        .await
        .unwrap_err();
    let RunError::Step(e) = err else {
        panic!("{err}")
    };
    assert_eq!(e.step, "b");
    assert_eq!(e.loc.to_string(), "wf.yaml:6:13");
    assert!(matches!(e.kind, FailureKind::Provider(_)));
    assert_eq!(e.class(), spes_llm::ErrorClass::Transient);
    assert_eq!(
        e.to_string(),
        "step `b` (wf.yaml:6:13) failed: test: overloaded (HTTP 529): scripted overloaded"
    );
}

#[tokio::test]
async fn json_answers_are_parsed_and_bad_json_fails_clearly() {
    let wf = workflow(
        r#"
name: j
steps:
  - { name: facts, kind: llm, prompt: "facts", format: json, output: facts }
  - { name: n, kind: transform, fn: json_path, input: "{{ facts }}", args: { path: "$.n" }, output: n }
output: n
"#,
    );
    let ok = Engine::builder()
        .provider(scripted(
            "- { step: facts, reply: '```json\n{\"n\": 3}\n```' }",
        ))
        .build();
    assert_eq!(
        ok.run(&wf, BTreeMap::new()).await.unwrap().output,
        Some(json!(3))
    );
    let bad = Engine::builder()
        .provider(scripted("- { step: facts, reply: 'sure! here' }"))
        .build();
    let err = bad.run(&wf, BTreeMap::new()).await.unwrap_err().to_string();
    assert!(
        err.contains("invalid_output: the answer is not what the step asked for (after 2 attempts): /: not valid JSON"),
        "{err}"
    );
    let cut = Engine::builder()
        .provider(scripted(
            "- { step: facts, reply: '{\"n\":', stop_reason: max_tokens }",
        ))
        .build();
    let err = cut.run(&wf, BTreeMap::new()).await.unwrap_err().to_string();
    assert!(
        err.contains("/: the answer was cut off at max_tokens"),
        "{err}"
    );
}

#[tokio::test]
async fn inputs_are_checked_and_typed() {
    let wf = workflow(
        r#"
name: typed
inputs:
  n: { type: integer, default: 2 }
  items: { type: list, required: true }
  flag: { type: boolean, default: false }
steps:
  - { name: count, kind: transform, fn: length, input: "{{ items }}", output: c }
  - { name: sum, kind: transform, fn: template, input: "{{ c + n }} {{ flag }}", output: s }
output: s
"#,
    );
    let engine = Engine::builder()
        .provider(scripted("- { default: echo }"))
        .build();
    let out = engine
        .run(&wf, inputs(&[("items", "[1, 2, 3]"), ("flag", "yes")]))
        .await
        .unwrap();
    assert_eq!(out.output, Some(json!("5 True")));
    let e = engine
        .run(&wf, inputs(&[("items", "nope")]))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("input `items` must be JSON (list)"), "{e}");
    let e = engine
        .run(&wf, BTreeMap::new())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(e, "missing required input `items`; pass --input items=...");
    let e = engine
        .run(&wf, inputs(&[("items", "[]"), ("n", "two")]))
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(e, "input `n` must be an integer, got `two`");
    let e = engine
        .run(&wf, inputs(&[("items", "[]"), ("zzz", "1")]))
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(e, "unknown input `zzz`; `typed` declares: flag, items, n");
}

#[tokio::test]
async fn when_skips_a_step_without_writing_its_output() {
    let wf = workflow(
        r#"
name: w
inputs: { deep: { type: boolean, default: false } }
steps:
  - { name: extra, kind: llm, prompt: "go", when: "deep", output: extra }
  - { name: out, kind: transform, fn: template, input: "{{ extra | default('none') }}", output: out }
output: out
"#,
    );
    let engine = Engine::builder()
        .provider(scripted("- { default: echo }"))
        .build();
    assert_eq!(
        engine.run(&wf, BTreeMap::new()).await.unwrap().output,
        Some(json!("none"))
    );
    assert_eq!(
        engine
            .run(&wf, inputs(&[("deep", "true")]))
            .await
            .unwrap()
            .output,
        Some(json!("go"))
    );
}
