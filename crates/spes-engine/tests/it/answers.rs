//! What steps hand on: keyword conditions on whole words and the arm taken,
//! parallel synthesis beside the workers' results, fan_out `on_error`,
//! sections with object outline items; and the repair loop on the scripted
//! provider (keys, messages, replay).

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use spes_engine::{Effect, Engine, GateRequest, Journal, MemoryJournal, Reviewer};

use crate::{inputs, scripted, workflow};

#[tokio::test]
async fn keywords_match_whole_words_and_the_arm_taken_is_recorded() {
    let yaml = r#"
name: route
inputs: { text: { type: string, required: true } }
steps:
  - name: kind
    kind: branch
    branches:
      - { name: code, if: { keyword: [code, bug], in: text }, steps: [ { name: c, kind: transform, fn: template, input: "code arm", output: r } ] }
      - { name: loose, if: { keyword: code, in: text, substring: true }, steps: [ { name: l, kind: transform, fn: template, input: "substring arm", output: r } ] }
    else: [ { name: o, kind: transform, fn: template, input: "other", output: r } ]
  - { name: out, kind: transform, fn: template, input: "{{ r }} via {{ kind_taken }}", output: out }
output: out
"#;
    let wf = workflow(yaml);
    let engine = Engine::builder()
        .provider(scripted("- { default: echo }"))
        .build();
    for (text, want) in [
        ("please decode this", "substring arm via loose"),
        ("the code fails", "code arm via code"),
        ("a Bug!", "code arm via code"),
        ("all fine", "other via else"),
    ] {
        let journal = Arc::new(MemoryJournal::default());
        let out = engine
            .run_with_journal(&wf, inputs(&[("text", text)]), journal.clone())
            .await
            .unwrap();
        assert_eq!(out.output, Some(json!(want)), "{text}");
        // The arm taken is journaled too (`runs show` lists it).
        let Some(Effect::Decision { decision }) = journal.get("kind#taken").await.unwrap() else {
            panic!("no kind#taken entry")
        };
        assert_eq!(decision["taken"], out.context["kind_taken"]);
    }
}

#[tokio::test]
async fn a_parallel_synthesis_keeps_the_workers_results_beside_it() {
    let yaml = r#"
name: par
steps:
  - name: views
    kind: parallel
    steps:
      - { name: zeta, kind: llm, prompt: "Z view" }
      - { name: alpha, kind: llm, prompt: "A view" }
    synthesize: { name: merge, kind: llm, prompt: "Merge" }
    output: views
"#;
    let wf = workflow(yaml);
    let engine = Engine::builder()
        .provider(scripted("- { default: echo }"))
        .build();
    let out = engine.run(&wf, Default::default()).await.unwrap();
    assert_eq!(out.context["views"], json!("Merge"));
    assert_eq!(
        out.context["views_results"],
        json!({ "zeta": "Z view", "alpha": "A view" })
    );
}

/// Three branches declared out of alphabetical order; `SYNTH` is replaced
/// by a `synthesize` line or nothing, `OVER` by the key the loop reads.
const DECLARED: &str = r#"
name: order
steps:
  - name: views
    kind: parallel
    steps:
      - { name: zeta, kind: llm, prompt: "Z" }
      - { name: alpha, kind: llm, prompt: "A" }
      - { name: mid, kind: llm, prompt: "M" }
SYNTH    output: views
  - { name: list, kind: transform, fn: template, input: "{% for k, v in OVER | items %}{{ k }}={{ v }};{% endfor %}", output: list }
"#;

/// The keys of an object, in the order it iterates.
fn keys_of(v: &Value) -> Vec<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

#[tokio::test]
async fn parallel_results_keep_the_declared_order_with_and_without_a_synthesis() {
    let synth = "    synthesize: { name: merge, kind: llm, prompt: \"{% for k in results %}{{ k }},{% endfor %} {{ results | tojson }}\" }\n";
    for (synth, over, results) in [
        ("", "views", "views"),
        (synth, "views_results", "views_results"),
    ] {
        let wf = workflow(&DECLARED.replace("SYNTH", synth).replace("OVER", over));
        let p = scripted("- { default: echo }");
        let engine = Engine::builder().provider(p.clone()).build();
        let journal = Arc::new(MemoryJournal::default());
        let out = engine
            .run_with_journal(&wf, Default::default(), journal.clone())
            .await
            .unwrap();
        let r = &out.context[results];
        assert_eq!(keys_of(r), ["zeta", "alpha", "mid"], "{synth}");
        assert_eq!(
            serde_json::to_string(r).unwrap(),
            r#"{"zeta":"Z","alpha":"A","mid":"M"}"#
        );
        assert_eq!(out.context["list"], json!("zeta=Z;alpha=A;mid=M;"));
        if !synth.is_empty() {
            assert_eq!(
                out.context["views"],
                json!(r#"zeta,alpha,mid, {"zeta": "Z", "alpha": "A", "mid": "M"}"#)
            );
        }
        // A replay from the journal builds the same order.
        let again = engine
            .run_with_journal(&wf, Default::default(), journal)
            .await
            .unwrap();
        assert_eq!(again.model_calls, 0);
        assert_eq!(
            serde_json::to_string(&again.context).unwrap(),
            serde_json::to_string(&out.context).unwrap()
        );
    }
}

#[tokio::test]
async fn fan_out_results_keep_the_declared_order_whatever_on_error() {
    let yaml = r#"
name: fan
steps:
  - name: review
    kind: fan_out
ON_ERROR    workers:
      - { name: zeta, step: { kind: llm, prompt: "Z" } }
      - { name: alpha, step: { kind: llm, prompt: "A" } }
      - { name: mid, step: { kind: llm, prompt: "M" } }
AGG    output: review
"#;
    let agg = "    aggregate: { kind: transform, fn: template, input: \"{% for k, v in results | items %}{{ k }}={{ v }};{% endfor %}\" }\n";
    for on_error in ["", "    on_error: skip\n", "    on_error: collect\n"] {
        let p = scripted("- { default: echo }");
        let engine = Engine::builder().provider(p).build();
        let plain = workflow(&yaml.replace("ON_ERROR", on_error).replace("AGG", ""));
        let out = engine.run(&plain, Default::default()).await.unwrap();
        assert_eq!(
            keys_of(&out.context["review"]),
            ["zeta", "alpha", "mid"],
            "{on_error}"
        );
        let aggregated = workflow(&yaml.replace("ON_ERROR", on_error).replace("AGG", agg));
        let out = engine.run(&aggregated, Default::default()).await.unwrap();
        assert_eq!(
            out.context["review"],
            json!("zeta=Z;alpha=A;mid=M;"),
            "{on_error}"
        );
    }
    // A failed worker collected in place keeps its place.
    let p = scripted("- { step: review/alpha, error: invalid_request }\n- { default: echo }");
    let engine = Engine::builder().provider(p).build();
    let wf = workflow(
        &yaml
            .replace("ON_ERROR", "    on_error: collect\n")
            .replace("AGG", ""),
    );
    let out = engine.run(&wf, Default::default()).await.unwrap();
    assert_eq!(keys_of(&out.context["review"]), ["zeta", "alpha", "mid"]);
    assert!(out.context["review"]["alpha"]["error"].is_string());
}

#[tokio::test]
async fn a_schema_is_sent_as_written_and_a_json_answer_keeps_its_order() {
    let yaml = r#"
name: shape
steps:
  - name: person
    kind: llm
    prompt: "Who?"
    schema: { type: object, required: [zeta, alpha], properties: { zeta: { type: integer }, alpha: { type: integer } } }
    output: person
"#;
    let p = scripted(r#"- { step: person, reply: '{"zeta": 1, "alpha": 2, "mid": 3}' }"#);
    let engine = Engine::builder().provider(p.clone()).build();
    let out = engine
        .run(&workflow(yaml), Default::default())
        .await
        .unwrap();
    let sent = p.calls()[0].1.json_schema.clone().unwrap();
    assert_eq!(keys_of(&sent), ["type", "required", "properties"]);
    assert_eq!(keys_of(&sent["properties"]), ["zeta", "alpha"]);
    assert_eq!(keys_of(&out.context["person"]), ["zeta", "alpha", "mid"]);
}

#[tokio::test]
async fn the_request_hash_is_the_sha256_of_the_request_sent_and_stable_across_runs() {
    use sha2::{Digest, Sha256};
    let yaml = r#"
name: hashed
steps:
  - name: person
    kind: llm
    prompt: "Who?"
    schema: { type: object, required: [name], properties: { name: { type: string } } }
    output: person
"#;
    let wf = workflow(yaml);
    let mut hashes = Vec::new();
    for _ in 0..2 {
        // Invalid, then repaired: two requests, the second with two more messages.
        let p = scripted(r#"- { step: person, replies: ['{"age": 1}', '{"name": "Ada"}'] }"#);
        let engine = Engine::builder().provider(p.clone()).build();
        let journal = Arc::new(MemoryJournal::default());
        engine
            .run_with_journal(&wf, Default::default(), journal.clone())
            .await
            .unwrap();
        let mut run = Vec::new();
        for (key, (_, sent)) in ["person", "person#repair1"].iter().zip(p.calls()) {
            let Some(Effect::Model { request_hash, .. }) = journal.get(key).await.unwrap() else {
                panic!("no model entry under {key}")
            };
            let want = hex::encode(Sha256::digest(serde_json::to_vec(&sent).unwrap()));
            assert_eq!(request_hash, want, "{key}");
            run.push(request_hash);
        }
        assert_ne!(run[0], run[1]);
        hashes.push(run);
    }
    assert_eq!(
        hashes[0], hashes[1],
        "the same requests hash the same in every run"
    );
}

const FAN: &str = r#"
name: fan
steps:
  - name: review
    kind: fan_out
    on_error: ON_ERROR
    workers:
      - { name: security, step: { kind: llm, prompt: "Security" } }
      - { name: style, step: { kind: llm, prompt: "Style" } }
    aggregate: { kind: transform, fn: template, input: "{{ results | tojson }}" }
    output: review
"#;

#[tokio::test]
async fn fan_out_skips_or_collects_failed_workers_and_replays_the_failure() {
    let script = "- { step: review/style, error: invalid_request }\n- { default: echo }";
    for (policy, want) in [
        ("skip", json!({ "security": "Security" })),
        (
            "collect",
            json!({ "security": "Security", "style": { "error": "x" } }),
        ),
    ] {
        let wf = workflow(&FAN.replace("ON_ERROR", policy));
        let p = scripted(script);
        let engine = Engine::builder().provider(p.clone()).build();
        let journal = Arc::new(MemoryJournal::default());
        let out = engine
            .run_with_journal(&wf, Default::default(), journal.clone())
            .await
            .unwrap();
        let mut got: Value = serde_json::from_str(out.context["review"].as_str().unwrap()).unwrap();
        if policy == "collect" {
            assert!(
                got["style"]["error"]
                    .as_str()
                    .unwrap()
                    .contains("invalid_request"),
                "{got}"
            );
            got["style"]["error"] = json!("x");
        }
        assert_eq!(got, want, "{policy}");
        let errors = out.context["review_errors"].as_array().unwrap();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0]["worker"], "style");
        // A replay reports the same failure without asking again.
        let calls = p.calls().len();
        let again = engine
            .run_with_journal(&wf, Default::default(), journal)
            .await
            .unwrap();
        assert_eq!(again.context["review_errors"], out.context["review_errors"]);
        assert_eq!(p.calls().len(), calls, "{policy}: nothing asked again");
    }
    // fail_fast (the default) fails the step.
    let wf = workflow(&FAN.replace("    on_error: ON_ERROR\n", ""));
    let engine = Engine::builder().provider(scripted(script)).build();
    assert!(engine.run(&wf, Default::default()).await.is_err());
}

struct ApproveAll(Mutex<Vec<GateRequest>>);

#[async_trait::async_trait]
impl Reviewer for ApproveAll {
    async fn review(&self, gate: &GateRequest) -> Option<Value> {
        self.0.lock().unwrap().push(gate.clone());
        Some(json!({ "action": "approve" }))
    }
}

#[tokio::test]
async fn sections_take_object_items_whose_fields_the_prompt_reads() {
    let yaml = r#"
name: doc
steps:
  - name: doc
    kind: sections
    outline:
      - { name: Intro, prompt: "Say hello." }
      - { name: Design, prompt: "Explain it." }
    section: { kind: llm, prompt: "{{ section.name }}: {{ section.prompt }}" }
    output: doc
"#;
    let wf = workflow(yaml);
    let reviewer = Arc::new(ApproveAll(Mutex::default()));
    let engine = Engine::builder()
        .provider(scripted("- { default: echo }"))
        .reviewer(reviewer.clone())
        .build();
    let out = engine.run(&wf, Default::default()).await.unwrap();
    assert_eq!(
        out.context["doc"]["document"],
        json!("Intro: Say hello.\n\nDesign: Explain it.")
    );
    assert_eq!(
        out.context["doc"]["completed_sections"],
        json!(["Intro", "Design"])
    );
    assert_eq!(
        reviewer.0.lock().unwrap()[1].request["section"],
        json!("Design")
    );
    // An item without the field the prompt reads is refused when validating.
    let bad = yaml.replace(r#"{ name: Design, prompt: "Explain it." }"#, "Design");
    let spec = spes_core::workflow::parse_workflow("wf.yaml", &bad).unwrap();
    let reg = spes_core::component::ComponentRegistry::from_components(vec![]);
    let env = spes_core::workflow::ValidateEnv {
        components: &reg,
        providers: None,
    };
    let e = spes_core::workflow::validate(spec, "wf.yaml", &bad, &env).unwrap_err();
    let text = e.render_plain();
    assert!(text.contains("spes::workflow::outline_field"), "{text}");
    assert!(
        text.contains("outline item 2 (`Design`) has no `prompt`"),
        "{text}"
    );
}

#[tokio::test]
async fn each_repair_keeps_the_earlier_rejected_answers_so_no_two_requests_are_alike() {
    let yaml = r#"
name: j
steps:
  - name: n
    kind: llm
    prompt: "count"
    schema: { type: integer, multipleOf: 2 }
    repair: 6
    output: n
"#;
    let wf = workflow(yaml);
    // A deterministic model that keeps its answer, then gives in.
    let p = scripted("- { step: n, replies: ['7', '7', '7', '7', '7', '7', '8'] }");
    let engine = Engine::builder().provider(p.clone()).build();
    let out = engine.run(&wf, Default::default()).await.unwrap();
    assert_eq!(out.context["n"], json!(8));
    let calls = p.calls();
    assert_eq!(calls.len(), 7);
    let lens: Vec<usize> = calls.iter().map(|(_, r)| r.messages.len()).collect();
    // The question, then two messages per rejected answer.
    assert_eq!(lens, [1, 3, 5, 7, 9, 11, 13]);
    let hashes: std::collections::HashSet<String> = calls
        .iter()
        .map(|(_, r)| spes_engine::run::request_hash(r))
        .collect();
    assert_eq!(hashes.len(), 7, "every attempt sends a different request");
    assert!(
        calls[6].1.messages[12]
            .content
            .contains("7 is not a multiple of 2"),
        "{:?}",
        calls[6].1.messages
    );
}

#[tokio::test]
async fn a_repair_is_journaled_under_its_own_key_and_replays_exactly() {
    let yaml = r#"
name: j
steps:
  - name: facts
    kind: llm
    prompt: "facts"
    schema: { type: object, required: [n], properties: { n: { type: integer } } }
    output: facts
"#;
    let wf = workflow(yaml);
    let p = scripted("- { step: facts, replies: ['{\"n\": \"three\"}', '{\"n\": 3}'] }");
    let engine = Engine::builder().provider(p.clone()).build();
    let journal = Arc::new(MemoryJournal::default());
    let out = engine
        .run_with_journal(&wf, Default::default(), journal.clone())
        .await
        .unwrap();
    assert_eq!(out.context["facts"], json!({ "n": 3 }));
    let mut keys: Vec<String> = journal.entries().into_keys().collect();
    keys.sort();
    assert_eq!(keys, ["facts", "facts#repair1"]);
    let calls = p.calls();
    assert_eq!(calls.len(), 2);
    let (step, second) = &calls[1];
    assert_eq!(step, "facts", "the provider sees the step's own key");
    assert_eq!(second.messages.len(), 3);
    assert_eq!(second.messages[1].content, "{\"n\": \"three\"}");
    assert!(second.json, "format: json asks for JSON");
    assert!(second.json_schema.is_some());
    // `repair: 0` fails at once, with the pointer.
    let wf0 = workflow(&yaml.replace("    output: facts", "    repair: 0\n    output: facts"));
    let p0 = scripted("- { step: facts, reply: '{\"n\": \"three\"}' }");
    let e = Engine::builder()
        .provider(p0.clone())
        .build()
        .run(&wf0, Default::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("(after 1 attempt): /n: \"three\" is not of type \"integer\""),
        "{e}"
    );
    assert_eq!(p0.calls().len(), 1);
    // Replay: exact, no call.
    let again = engine
        .run_with_journal(&wf, Default::default(), journal)
        .await
        .unwrap();
    assert_eq!(again.context["facts"], json!({ "n": 3 }));
    assert_eq!((again.model_calls, again.replayed), (0, 2));
}

#[tokio::test]
async fn a_graded_score_expression_is_a_criterion() {
    let yaml = r#"
name: graded
steps:
  - name: blurb
    kind: quality_gate
    step: { kind: llm, prompt: "Write a blurb" }
    evaluator:
      criteria:
        - { name: length, weight: 1, threshold: 0.5, score: "{{ 0.7 if output | length > 20 else 0.3 }}" }
    threshold: 0.5
    max_attempts: 2
    output: blurb
"#;
    let wf = workflow(yaml);
    let p = scripted(
        "- { step: blurb/attempt1, reply: short }\n- { step: blurb/attempt2, reply: 'a much longer blurb than before' }",
    );
    let out = Engine::builder()
        .provider(p)
        .build()
        .run(&wf, Default::default())
        .await
        .unwrap();
    let b = &out.context["blurb"];
    assert_eq!(b["attempts"], json!(2), "{b}");
    assert_eq!(b["history"][0]["score"], json!(0.3), "{b}");
    assert_eq!(b["score"], json!(0.7), "{b}");
    assert_eq!(b["passed"], json!(true));
    // A score outside 0..1 fails the step, saying what it gave.
    let bad = workflow(&yaml.replace("0.7 if output | length > 20", "7 if output | length > 2"));
    let e = Engine::builder()
        .provider(scripted("- { default: echo }"))
        .build()
        .run(&bad, Default::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("the score expression gave 7, not a number from 0 to 1"),
        "{e}"
    );
}
