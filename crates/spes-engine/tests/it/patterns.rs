//! switch, quality_gate, refine, debate and sequences of agents on the
//! scripted provider; crash-and-resume for each on the SQLite store.

use std::sync::Arc;

use serde_json::{Value, json};
use spes_core::component::ComponentRegistry;
use spes_core::workflow::{ValidateEnv, parse_workflow, validate};
use spes_engine::{Engine, FailureKind, RunEnd, RunError, WorkflowSource};
use spes_store::sqlite::{SqliteOptions, SqliteStore};
use spes_store::{RunStatus, RunStore};

use crate::{inputs, scripted, workflow};

const AGENTS: &str = r"
agents:
  optimist: { role: sees the upside }
  skeptic: { role: sees the risks }
  pragmatist: { role: weighs costs }
  chair: { role: decides }
";

fn debate(rounds: u32, sees: &str, debaters: &str) -> String {
    format!(
        r#"
name: debate
inputs: {{ proposal: {{ type: string, required: true }} }}
{AGENTS}
steps:
  - name: argue
    kind: debate
    debaters: [{debaters}]
    topic: "Should we {{{{ proposal }}}}?"
    rounds: {rounds}
    judge: chair
    judge_sees: {sees}
    output: verdict
"#
    )
}

fn keys(p: &spes_llm::scripted::ScriptedProvider) -> Vec<String> {
    let mut k: Vec<String> = p.calls().into_iter().map(|(k, _)| k).collect();
    k.sort();
    k
}

fn user_text(p: &spes_llm::scripted::ScriptedProvider, key: &str) -> String {
    p.calls()
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, r)| r.messages[0].content.clone())
        .unwrap_or_else(|| panic!("no call {key}"))
}

const DEBATE_SCRIPT: &str = r"
- { step: judge, reply: 'Ship it, behind a flag.' }
- { step: round1/optimist, reply: 'O1: users want it' }
- { step: round1/skeptic, reply: 'S1: it breaks billing' }
- { step: round1/pragmatist, reply: 'P1: costs a sprint' }
- { step: round2/optimist, reply: 'O2: billing is patched' }
- { step: round2/skeptic, reply: 'S2: the patch is untested' }
- { step: round2/pragmatist, reply: 'P2: test it first' }
- { step: round3/optimist, reply: 'O3: tests now pass' }
- { step: round3/skeptic, reply: 'S3: fine then' }
- { step: round3/pragmatist, reply: 'P3: agreed' }
";

#[tokio::test]
async fn debate_makes_debaters_times_rounds_plus_one_calls_and_rebuttals_see_the_last_round() {
    let wf = workflow(&debate(3, "all", "optimist, skeptic, pragmatist"));
    let p = scripted(DEBATE_SCRIPT);
    let engine = Engine::builder().provider(p.clone()).build();
    let out = engine
        .run(&wf, inputs(&[("proposal", "ship dark mode")]))
        .await
        .unwrap();
    assert_eq!(out.model_calls, 3 * 3 + 1);
    assert_eq!(p.calls().len(), 10);
    assert!(keys(&p).contains(&"argue/round3/skeptic".to_owned()));
    // Round 1 is the topic itself; round 3 rebuts round 2 (not round 1).
    assert_eq!(
        user_text(&p, "argue/round1/optimist"),
        "Should we ship dark mode?"
    );
    let r3 = user_text(&p, "argue/round3/skeptic");
    assert!(
        r3.contains("Your position: S2: the patch is untested"),
        "{r3}"
    );
    assert!(r3.contains("**optimist**: O2: billing is patched"), "{r3}");
    assert!(r3.contains("**pragmatist**: P2: test it first"), "{r3}");
    assert!(!r3.contains("S1"), "{r3}");
    // judge_sees: all -> every turn of every round in full.
    let j = user_text(&p, "argue/judge");
    for t in [
        "O1: users want it",
        "S2: the patch is untested",
        "P3: agreed",
    ] {
        assert!(j.contains(t), "judge lacks {t}: {j}");
    }
    assert!(j.contains("### Round 1 (Positions)") && j.contains("### Round 3 (Rebuttals)"));
    let v = &out.context["verdict"];
    assert_eq!(v["judgment"], json!("Ship it, behind a flag."));
    assert_eq!(v["history"].as_array().unwrap().len(), 3);
    assert_eq!(
        v["history"][1]["outputs"]["skeptic"],
        json!("S2: the patch is untested")
    );
}

#[tokio::test]
async fn debate_judge_sees_only_the_last_round_or_a_summary_of_each_turn() {
    let long = "x".repeat(250);
    let script = format!(
        "- {{ step: judge, reply: J }}\n- {{ step: round1/optimist, reply: 'OPEN-{long}' }}\n- {{ step: round1/skeptic, reply: 'NO' }}\n- {{ step: 'round2/*', reply: R2 }}"
    );
    let p = scripted(&script);
    let engine = Engine::builder().provider(p.clone()).build();
    engine
        .run(
            &workflow(&debate(2, "last", "optimist, skeptic")),
            inputs(&[("proposal", "x")]),
        )
        .await
        .unwrap();
    assert_eq!(p.calls().len(), 2 * 2 + 1);
    let j = user_text(&p, "argue/judge");
    assert!(!j.contains("OPEN-"), "last: round 1 is hidden: {j}");
    assert!(
        j.contains("### Round 2 (Rebuttals)") && !j.contains("### Round 1"),
        "{j}"
    );

    let p = scripted(&script);
    let engine = Engine::builder().provider(p.clone()).build();
    engine
        .run(
            &workflow(&debate(2, "summary", "optimist, skeptic")),
            inputs(&[("proposal", "x")]),
        )
        .await
        .unwrap();
    let j = user_text(&p, "argue/judge");
    let expected = format!("**optimist**: OPEN-{}...\n", "x".repeat(195));
    assert!(
        j.contains(&expected),
        "summary cuts each turn to 200 chars: {j}"
    );
    assert!(!j.contains(&long), "{j}");
}

#[tokio::test(start_paused = true)]
async fn debaters_speak_at_the_same_time() {
    // Each call takes 10 s of (paused, virtual) time: 2 rounds at once each
    // plus the judge is 30 s; one after another would be 50 s.
    let p = Arc::new(
        spes_llm::scripted::ScriptedProvider::parse(
            "test",
            "a.yaml",
            "- { step: '*', reply: ok, delay: 10s }",
        )
        .unwrap(),
    );
    let engine = Engine::builder().provider(p.clone()).build();
    let start = tokio::time::Instant::now();
    engine
        .run(
            &workflow(&debate(2, "all", "optimist, skeptic")),
            inputs(&[("proposal", "x")]),
        )
        .await
        .unwrap();
    let took = start.elapsed().as_secs();
    assert_eq!(p.calls().len(), 5);
    assert!((30..40).contains(&took), "took {took} s of virtual time");
}

const SWITCH: &str = r#"
name: triage
inputs: { request: { type: string, required: true } }
steps:
  - name: route
    kind: switch
    classify: { prompt: "Classify this development request: {{ request }}" }
    routes:
      bug_fix:
        - { name: fix, kind: llm, prompt: "Plan a fix: {{ request }}", output: plan }
      feature:
        - { name: design, kind: llm, prompt: "Design: {{ request }}", output: plan }
    default:
      - { name: ask, kind: transform, fn: template, input: "Please clarify: {{ request }}", output: plan }
    output: routed
"#;

#[tokio::test]
async fn switch_routes_by_classification_records_the_raw_label_and_falls_back_to_default() {
    let wf = workflow(SWITCH);
    let cases = [
        ("  Bug fix.\n", "bug_fix", "exact", "FIX"),
        (
            "I think this is a feature request",
            "feature",
            "word",
            "DESIGN",
        ),
        ("debugging question", "", "default", "Please clarify: r"),
    ];
    for (label, route, how, plan) in cases {
        let p = scripted(&format!(
            "- {{ step: classify, reply: {} }}\n- {{ step: fix, reply: FIX }}\n- {{ step: design, reply: DESIGN }}",
            serde_json::to_string(label).unwrap()
        ));
        let engine = Engine::builder().provider(p.clone()).build();
        let out = engine.run(&wf, inputs(&[("request", "r")])).await.unwrap();
        let r = &out.context["routed"];
        assert_eq!(
            r["classification"],
            json!(label),
            "the raw answer is recorded"
        );
        assert_eq!(r["matched"], json!(how), "{label}");
        assert_eq!(
            r["route"],
            if route.is_empty() {
                Value::Null
            } else {
                json!(route)
            }
        );
        assert_eq!(out.context["plan"], json!(plan));
        assert_eq!(r["output"], json!(plan));
        let c = user_text(&p, "route/classify");
        assert!(
            c.starts_with("Classify this development request: r")
                && c.contains("Classify this input as one of: bug_fix, feature"),
            "{c}"
        );
    }
    // Without a default, no match is an explicit empty result, not a failure.
    let no_default = SWITCH.replace(
        "    default:\n      - { name: ask, kind: transform, fn: template, input: \"Please clarify: {{ request }}\", output: plan }\n",
        "",
    );
    let no_default = no_default.replace("output: routed", "output: routed\n  - { name: after, kind: transform, fn: template, input: \"{{ routed.matched }}\", output: how }");
    let p = scripted("- { step: classify, reply: unsure }");
    let out = Engine::builder()
        .provider(p)
        .build()
        .run(&workflow(&no_default), inputs(&[("request", "r")]))
        .await
        .unwrap();
    assert_eq!(out.context["how"], json!("none"));
    assert_eq!(out.context["routed"]["output"], Value::Null);
    assert!(out.context.get("plan").is_none());
}

fn gate(max: u32, threshold: &str) -> String {
    format!(
        r#"
name: gate
inputs: {{ topic: {{ type: string, required: true }} }}
agents:
  critic: {{ role: grades }}
steps:
  - name: draft
    kind: quality_gate
    step: {{ kind: llm, prompt: "Write a tagline for {{{{ topic }}}}." }}
    evaluator: {{ judge: {{ agent: critic, rubric: "short and concrete" }} }}
    threshold: {threshold}
    max_attempts: {max}
    output: tagline
"#
    )
}

const GATE_SCRIPT: &str = r#"
- { step: attempt1, reply: "T1" }
- { step: attempt2, reply: "T2" }
- { step: attempt3, reply: "T3" }
- { step: attempt1/judge, reply: '{"score": 0.4, "feedback": "too vague"}' }
- { step: attempt2/judge, reply: '```json
{"score": 0.7, "feedback": "name the feature"}
```' }
- { step: attempt3/judge, reply: '{"score": 0.5, "feedback": "worse"}' }
"#;

#[tokio::test]
async fn quality_gate_returns_the_best_attempt_after_max_attempts() {
    let p = scripted(GATE_SCRIPT);
    let engine = Engine::builder().provider(p.clone()).build();
    let out = engine
        .run(&workflow(&gate(3, "0.9")), inputs(&[("topic", "sync")]))
        .await
        .unwrap();
    assert_eq!(out.model_calls, 6, "3 attempts, 3 judge calls");
    let t = &out.context["tagline"];
    assert_eq!(t["passed"], json!(false));
    assert_eq!(t["attempts"], json!(3));
    assert_eq!(t["best"], json!(2));
    assert_eq!(t["output"], json!("T2"));
    assert_eq!(t["score"], json!(0.7));
    let scores: Vec<f64> = t["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["score"].as_f64().unwrap())
        .collect();
    assert_eq!(scores, vec![0.4, 0.7, 0.5]);
    // The retry carries the previous attempt and the judge's feedback.
    let a2 = user_text(&p, "draft/attempt2");
    assert!(a2.starts_with("Write a tagline for sync."), "{a2}");
    assert!(a2.contains("Previous attempt (quality: 0.4):\nT1"), "{a2}");
    assert!(
        a2.contains("Feedback:\ntoo vague") && a2.contains("threshold of 0.9"),
        "{a2}"
    );
    let judge = user_text(&p, "draft/attempt1/judge");
    assert!(
        judge.contains("short and concrete") && judge.contains("Text:\nT1"),
        "{judge}"
    );
}

#[tokio::test]
async fn quality_gate_stops_as_soon_as_the_threshold_is_met() {
    let p = scripted(GATE_SCRIPT);
    let engine = Engine::builder().provider(p.clone()).build();
    let out = engine
        .run(&workflow(&gate(5, "0.7")), inputs(&[("topic", "sync")]))
        .await
        .unwrap();
    assert_eq!(out.model_calls, 4, "attempt 2 passes: no third attempt");
    let t = &out.context["tagline"];
    assert_eq!(
        (t["passed"].clone(), t["attempts"].clone()),
        (json!(true), json!(2))
    );
    assert_eq!(t["output"], json!("T2"));
    assert!(!keys(&p).iter().any(|k| k.contains("attempt3")));
}

#[tokio::test]
async fn a_malformed_judge_answer_fails_the_step_clearly() {
    let p = scripted("- { step: attempt1, reply: T }\n- { step: judge, reply: 'Nice! 9/10' }");
    let err = Engine::builder()
        .provider(p)
        .build()
        .run(&workflow(&gate(2, "0.8")), inputs(&[("topic", "x")]))
        .await
        .unwrap_err();
    let RunError::Step(e) = err else {
        panic!("{err}")
    };
    assert_eq!(e.step, "draft/attempt1/judge");
    assert!(matches!(e.kind, FailureKind::Answer(_)));
    assert!(e.kind.to_string().contains("no JSON"), "{}", e.kind);
}

const REFINE: &str = r#"
name: refine
inputs: { topic: { type: string, required: true } }
steps:
  - name: blurb
    kind: refine
    generate: { prompt: "Describe {{ topic }} in one paragraph." }
    evaluator:
      checks:
        - { contains: "offline" }
        - { words: { min: 3, max: 12 } }
    threshold: 1
    max_iterations: 4
    examples:
      good: ["Runs offline, journals every call."]
      bad: ["The best tool ever!!!"]
    output: blurb
"#;

#[tokio::test]
async fn refine_stops_at_the_threshold_and_puts_examples_in_every_prompt() {
    let p = scripted(
        "- { step: iteration1, reply: 'A tool.' }\n- { step: iteration2, reply: 'A durable tool that runs offline.' }",
    );
    let out = Engine::builder()
        .provider(p.clone())
        .build()
        .run(&workflow(REFINE), inputs(&[("topic", "spes")]))
        .await
        .unwrap();
    assert_eq!(
        out.model_calls, 2,
        "checks need no calls; iteration 2 passes"
    );
    let b = &out.context["blurb"];
    assert_eq!(
        (b["passed"].clone(), b["iterations"].clone()),
        (json!(true), json!(2))
    );
    assert_eq!(b["output"], json!("A durable tool that runs offline."));
    assert_eq!(b["history"][0]["score"], json!(0.0));
    assert_eq!(b["history"][1]["improved"], json!(true));
    let first = user_text(&p, "blurb/iteration1");
    assert!(
        first.starts_with("Task: Describe spes in one paragraph."),
        "{first}"
    );
    assert!(
        first.contains(
            "Good Examples (follow these patterns):\n\n1. Runs offline, journals every call."
        ),
        "{first}"
    );
    assert!(
        first.contains("Bad Examples (avoid these patterns):\n\n1. The best tool ever!!!"),
        "{first}"
    );
    let second = user_text(&p, "blurb/iteration2");
    assert!(
        second.contains("Good Examples")
            && second.contains("Previous Attempt (Iteration 1):\nA tool."),
        "{second}"
    );
    assert!(second.contains("- fails: contains \"offline\""), "{second}");
}

#[tokio::test]
async fn refine_returns_the_best_iteration_when_none_passes() {
    let p = scripted(
        "- { step: iteration1, reply: 'offline offline offline offline offline offline offline offline offline offline offline offline offline' }\n- { step: iteration2, reply: 'short' }\n- { step: iteration3, reply: 'also short' }\n- { step: iteration4, reply: 'x' }",
    );
    let out = Engine::builder()
        .provider(p)
        .build()
        .run(&workflow(REFINE), inputs(&[("topic", "spes")]))
        .await
        .unwrap();
    let b = &out.context["blurb"];
    assert_eq!(
        (b["passed"].clone(), b["iterations"].clone()),
        (json!(false), json!(4))
    );
    assert_eq!(
        b["best"],
        json!(1),
        "half the checks pass on iteration 1 only"
    );
    assert_eq!(b["score"], json!(0.5));
}

// ---- quality_gate and refine around steps of other kinds ----

/// A quality gate around a `parallel`: the branches read `attempt` and
/// `feedback`; a check and a judge score the branches' results as JSON.
const GATE_PARALLEL: &str = r#"
name: gate_par
inputs: { topic: { type: string, required: true } }
agents:
  critic: { role: grades }
steps:
  - name: review
    kind: quality_gate
    step:
      kind: parallel
      steps:
        - { name: pro, kind: llm, prompt: "Pros of {{ topic }}.{{ feedback }}" }
        - { name: con, kind: llm, prompt: "Cons of {{ topic }} (attempt {{ attempt }})." }
    evaluator:
      criteria:
        - { name: risks, weight: 1, threshold: 1, check: { contains: "risk" } }
        - { name: balance, weight: 1, threshold: 0.5, judge: { agent: critic, rubric: "balanced" } }
    max_attempts: 3
    output: review
  - { name: after, kind: transform, fn: template, input: "{{ review.output.con }}", output: after }
"#;

const GATE_PARALLEL_SCRIPT: &str = r#"
- { step: attempt1/step/pro, reply: "fast" }
- { step: attempt1/step/con, reply: "none" }
- { step: attempt2/step/pro, reply: "faster" }
- { step: attempt2/step/con, reply: "a migration risk" }
- { step: attempt1/judge/balance, reply: '{"score": 0.9, "feedback": "fine"}' }
- { step: attempt2/judge/balance, reply: '{"score": 0.8, "feedback": "fine"}' }
"#;

#[tokio::test]
async fn quality_gate_around_a_parallel_fails_once_then_passes() {
    let p = scripted(GATE_PARALLEL_SCRIPT);
    let engine = Engine::builder().provider(p.clone()).build();
    let out = engine
        .run(&workflow(GATE_PARALLEL), inputs(&[("topic", "sync")]))
        .await
        .unwrap();
    assert_eq!(
        keys(&p),
        [
            "review/attempt1/judge/balance",
            "review/attempt1/step/con",
            "review/attempt1/step/pro",
            "review/attempt2/judge/balance",
            "review/attempt2/step/con",
            "review/attempt2/step/pro",
        ]
    );
    let r = &out.context["review"];
    assert_eq!(
        (
            r["passed"].clone(),
            r["attempts"].clone(),
            r["best"].clone()
        ),
        (json!(true), json!(2), json!(2))
    );
    // The result is the parallel's own value, in declared order.
    assert_eq!(
        serde_json::to_string(&r["output"]).unwrap(),
        r#"{"pro":"faster","con":"a migration risk"}"#
    );
    assert_eq!(
        r["history"][0]["output"],
        json!({ "pro": "fast", "con": "none" })
    );
    assert_eq!(r["history"][0]["passed"], json!(false));
    assert_eq!(out.context["after"], json!("a migration risk"));
    // The branches see the attempt and the gate's feedback (which quotes
    // the previous attempt as JSON); the judge scores the JSON too.
    assert_eq!(user_text(&p, "review/attempt1/step/pro"), "Pros of sync.");
    assert_eq!(
        user_text(&p, "review/attempt2/step/con"),
        "Cons of sync (attempt 2)."
    );
    let second = user_text(&p, "review/attempt2/step/pro");
    assert!(
        second.starts_with("Pros of sync.\n\nPrevious attempt (quality: ")
            && second.contains(r#"{"pro":"fast","con":"none"}"#)
            && second.contains("risks"),
        "{second}"
    );
    let judge = user_text(&p, "review/attempt1/judge/balance");
    assert!(
        judge.contains(
            r#"Text:
{"pro":"fast","con":"none"}"#
        ),
        "{judge}"
    );
    // The branches' own context stays inside the attempt.
    assert!(out.context.get("attempt").is_none() && out.context.get("feedback").is_none());
    // The diagram shows the wrapped step under the gate.
    let d = spes_core::workflow::diagram::text(&workflow(GATE_PARALLEL));
    assert!(
        d.contains("3 attempts) → review\n  - step (parallel)\n    - pro (llm)\n"),
        "{d}"
    );
}

#[tokio::test]
async fn quality_gate_around_a_parallel_resumes_without_new_model_calls() {
    crash_and_resume(
        GATE_PARALLEL,
        ("topic", "t"),
        GATE_PARALLEL_SCRIPT,
        "attempt2/step/con",
    )
    .await;
    crash_and_resume(
        GATE_PARALLEL,
        ("topic", "t"),
        GATE_PARALLEL_SCRIPT,
        "attempt2/judge/balance",
    )
    .await;
}

/// A refine around a sequence (an llm step, then a transform) and around
/// a pure transform.
const REFINE_SEQUENCE: &str = r#"
name: refine_seq
inputs: { topic: { type: string, required: true } }
steps:
  - name: blurb
    kind: refine
    generate:
      name: write
      kind: sequence
      steps:
        - { name: draft, kind: llm, prompt: "Describe {{ topic }}.{{ feedback }}", output: draft }
        - { name: tidy, kind: transform, fn: trim, input: "{{ draft }}" }
    evaluator: { checks: [ { contains: offline } ] }
    threshold: 1
    max_iterations: 3
    output: blurb
  - name: version
    kind: refine
    generate: { kind: transform, fn: template, input: "v{{ iteration }}" }
    evaluator: { checks: [ { contains: v2 } ] }
    output: version
"#;

const REFINE_SEQUENCE_SCRIPT: &str = r#"
- { step: iteration1/write/draft, reply: "  A tool.  " }
- { step: iteration2/write/draft, reply: " Runs offline. " }
"#;

#[tokio::test]
async fn refine_around_steps_that_are_not_llm_steps() {
    let p = scripted(REFINE_SEQUENCE_SCRIPT);
    let out = Engine::builder()
        .provider(p.clone())
        .build()
        .run(&workflow(REFINE_SEQUENCE), inputs(&[("topic", "spes")]))
        .await
        .unwrap();
    assert_eq!(
        out.model_calls, 2,
        "checks need no calls; iteration 2 passes"
    );
    let b = &out.context["blurb"];
    assert_eq!(
        (b["passed"].clone(), b["iterations"].clone()),
        (json!(true), json!(2))
    );
    assert_eq!(b["output"], json!("Runs offline."));
    assert_eq!(b["history"][0]["output"], json!("A tool."));
    assert_eq!(b["history"][1]["improved"], json!(true));
    assert_eq!(
        user_text(&p, "blurb/iteration1/write/draft"),
        "Describe spes."
    );
    let second = user_text(&p, "blurb/iteration2/write/draft");
    assert!(
        second.starts_with(
            "Describe spes.\n\nPrevious Attempt (Iteration 1):\nA tool.\n\nFeedback:\n"
        ) && second
            .ends_with("Please revise the output to address the feedback and improve quality."),
        "{second}"
    );
    assert!(
        out.context.get("draft").is_none(),
        "inner writes stay inside"
    );
    // A pure step needs no model: the counter alone changes its result.
    let v = &out.context["version"];
    assert_eq!(
        (
            v["passed"].clone(),
            v["iterations"].clone(),
            v["output"].clone()
        ),
        (json!(true), json!(2), json!("v2"))
    );
}

#[tokio::test]
async fn refine_around_a_sequence_resumes_without_new_model_calls() {
    crash_and_resume(
        REFINE_SEQUENCE,
        ("topic", "spes"),
        REFINE_SEQUENCE_SCRIPT,
        "iteration2/write/draft",
    )
    .await;
}

#[test]
fn a_wrapped_step_is_validated_where_it_is_written() {
    let yaml = r#"
name: bad
agents:
  a: { role: x }
steps:
  - name: q
    kind: quality_gate
    step:
      kind: parallel
      steps:
        - { name: one, kind: llm, agent: ghost, task: "x" }
        - { name: two, kind: llm, prompt: "{{ nowhere }} {{ attempt }}" }
    evaluator: { checks: [ { contains: x } ] }
  - name: r
    kind: refine
    generate: { kind: transform, fn: template, input: "{{ iteration }}" }
    evaluator: { checks: [ { contains: x } ] }
    examples: { good: ["g"] }
  - name: j
    kind: quality_gate
    step: { name: judge, kind: sequence, steps: [ { name: s, kind: llm, prompt: "x" } ] }
    evaluator: { checks: [ { contains: x } ] }
  - name: l
    kind: quality_gate
    step: { prompt: "{{ feedback }}" }
    evaluator: { checks: [ { contains: x } ] }
"#;
    let errs = errors(yaml);
    has(
        &errs,
        "spes::workflow::unknown_agent",
        "unknown agent `ghost`",
        11,
    );
    has(&errs, "spes::workflow::unknown_key", "reads `nowhere`", 12);
    assert!(
        !errs.iter().any(|(_, m, _)| m.contains("reads `attempt`")),
        "{errs:#?}"
    );
    has(
        &errs,
        "spes::workflow::field_not_for_kind",
        "`examples` go into an llm `generate` step's prompt, and this one is a `transform` step",
        18,
    );
    has(
        &errs,
        "spes::workflow::bad_step_name",
        "the `step` step may not be named `judge`",
        21,
    );
    // An llm step gets the feedback appended to its prompt: it has no `feedback` to read.
    has(&errs, "spes::workflow::unknown_key", "reads `feedback`", 25);
}

const CRITERIA: &str = r#"
name: criteria
inputs: { topic: { type: string, required: true } }
agents:
  critic: { role: grades }
steps:
  - name: draft
    kind: quality_gate
    step: { prompt: "Write about {{ topic }}." }
    evaluator:
      criteria:
        - { name: accuracy, weight: 3, threshold: 0.7, judge: { agent: critic, rubric: "facts are right" } }
        - { name: sources, weight: 1, threshold: 0.9, judge: { agent: critic, rubric: "cites sources" } }
        - { name: length, weight: 1, check: { words: { max: 50 } } }
    max_attempts: 2
    output: draft
"#;

#[tokio::test]
async fn weighted_criteria_fail_on_one_criterion_under_its_own_threshold() {
    // Attempt 1: weighted mean (3*1 + 1*0.5 + 1*1)/5 = 0.9 is above the
    // overall threshold ((3*0.7 + 0.9 + 0.7)/5 = 0.74), but `sources` is under 0.9.
    let p = scripted(
        r#"
- { step: attempt1, reply: "D1" }
- { step: attempt2, reply: "D2" }
- { step: attempt1/judge/accuracy, reply: '{"score": 1.0, "feedback": "ok"}' }
- { step: attempt1/judge/sources, reply: '{"score": 0.5, "feedback": "no citations"}' }
- { step: attempt2/judge/accuracy, reply: '{"score": 0.8, "feedback": "ok"}' }
- { step: attempt2/judge/sources, reply: '{"score": 0.9, "feedback": "cited"}' }
"#,
    );
    let out = Engine::builder()
        .provider(p.clone())
        .build()
        .run(&workflow(CRITERIA), inputs(&[("topic", "t")]))
        .await
        .unwrap();
    let d = &out.context["draft"];
    let h1 = &d["history"][0];
    assert_eq!(h1["score"], json!(0.9));
    assert_eq!(h1["threshold"], json!(0.74));
    assert_eq!(h1["passed"], json!(false));
    assert_eq!(h1["criteria"][1]["name"], json!("sources"));
    assert_eq!(h1["criteria"][1]["passed"], json!(false));
    let a2 = user_text(&p, "draft/attempt2");
    assert!(
        a2.contains("- sources: 0.50 (needs >= 0.90): no citations"),
        "{a2}"
    );
    assert!(!a2.contains("- accuracy"), "{a2}");
    // Attempt 2 passes every criterion: (3*0.8 + 0.9 + 1)/5 = 0.86.
    assert_eq!(
        (d["passed"].clone(), d["best"].clone()),
        (json!(true), json!(2))
    );
    assert_eq!(d["score"], json!(0.86));
    assert!(keys(&p).contains(&"draft/attempt2/judge/sources".to_owned()));
}

const CHAIN: &str = r#"
name: chain
inputs: { brief: { type: string, required: true } }
agents:
  writer: { role: writes }
  editor: { role: edits }
steps:
  - name: pass
    kind: sequence
    agents: [writer, editor, writer]
    task: "Write release notes: {{ brief }}"
    output: notes
"#;

#[tokio::test]
async fn a_sequence_of_agents_hands_each_the_previous_output() {
    let p = scripted(
        "- { step: pass/writer, reply: W1 }\n- { step: pass/editor, reply: E1 }\n- { step: pass/writer.2, reply: W2 }",
    );
    let out = Engine::builder()
        .provider(p.clone())
        .build()
        .run(&workflow(CHAIN), inputs(&[("brief", "b")]))
        .await
        .unwrap();
    assert_eq!(out.context["notes"]["output"], json!("W2"));
    assert_eq!(out.context["notes"]["outputs"]["editor"], json!("E1"));
    assert_eq!(user_text(&p, "pass/writer"), "Write release notes: b");
    let e = user_text(&p, "pass/editor");
    assert!(
        e.contains("Task: Write release notes: b") && e.contains("Previous output (writer):\nW1"),
        "{e}"
    );
    assert!(user_text(&p, "pass/writer.2").contains("Previous output (editor):\nE1"));
}

// ---- crash and resume, per kind ----

async fn store(dir: &tempfile::TempDir) -> Arc<dyn RunStore> {
    Arc::new(
        SqliteStore::open(&dir.path().join("spes.db"), SqliteOptions::default())
            .await
            .unwrap(),
    )
}

/// Runs `yaml` uninterrupted with `script`; then again on a store with
/// `fail_at` failing terminally, resumes with `script`, and checks that the
/// resume repeats no committed call and ends with the same output.
async fn crash_and_resume(yaml: &str, input: (&str, &str), script: &str, fail_at: &str) {
    let wf = workflow(yaml);
    let whole = Engine::builder()
        .provider(scripted(script))
        .build()
        .run(&wf, inputs(&[input]))
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let src = WorkflowSource {
        path: "/tmp/wf.yaml".into(),
        text: yaml.into(),
    };
    let broken = scripted(&format!(
        "- {{ step: '{fail_at}', error: invalid_request }}\n{script}"
    ));
    let (id, end) = Engine::builder()
        .provider(broken.clone())
        .build()
        .start(store.clone(), &wf, &src, inputs(&[input]))
        .await
        .unwrap();
    assert!(matches!(end, RunEnd::Failed(_)), "{end:?}");
    let run = store.run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    let committed: Vec<String> = store
        .entries(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert!(
        !committed.is_empty(),
        "some calls were committed before the crash"
    );

    let fixed = scripted(script);
    let end = Engine::builder()
        .provider(fixed.clone())
        .build()
        .resume(store.clone(), &run, &wf, &src, false)
        .await
        .unwrap();
    let RunEnd::Completed(out) = end else {
        panic!("{end:?}")
    };
    let again = keys(&fixed);
    for k in &committed {
        assert!(!again.contains(k), "{k} was called again on resume");
    }
    assert!(
        again
            .iter()
            .any(|k| k.ends_with(fail_at.trim_start_matches("*/"))),
        "{again:?}"
    );
    assert_eq!(
        out.output, whole.output,
        "resumed output equals an uninterrupted run"
    );
    assert_eq!(out.context, whole.context);
    assert_eq!(out.replayed as usize, committed.len());
}

#[tokio::test]
async fn debate_resumes_after_a_crash_in_the_rebuttals() {
    crash_and_resume(
        &debate(3, "summary", "optimist, skeptic, pragmatist"),
        ("proposal", "x"),
        DEBATE_SCRIPT,
        "round2/skeptic",
    )
    .await;
}

#[tokio::test]
async fn switch_resumes_after_a_crash_in_the_route() {
    crash_and_resume(
        SWITCH,
        ("request", "r"),
        "- { step: classify, reply: feature }\n- { step: design, reply: DESIGN }",
        "design",
    )
    .await;
}

#[tokio::test]
async fn quality_gate_resumes_after_a_crash_in_a_judge_call() {
    crash_and_resume(
        &gate(3, "0.9"),
        ("topic", "t"),
        GATE_SCRIPT,
        "attempt2/judge",
    )
    .await;
}

#[tokio::test]
async fn refine_resumes_after_a_crash_in_an_iteration() {
    crash_and_resume(
        REFINE,
        ("topic", "spes"),
        "- { step: iteration1, reply: 'A tool.' }\n- { step: iteration2, reply: 'A durable tool that runs offline.' }",
        "iteration2",
    )
    .await;
}

#[tokio::test]
async fn agent_sequence_resumes_after_a_crash_mid_chain() {
    crash_and_resume(
        CHAIN,
        ("brief", "b"),
        "- { step: pass/writer, reply: W1 }\n- { step: pass/editor, reply: E1 }\n- { step: pass/writer.2, reply: W2 }",
        "editor",
    )
    .await;
}

// ---- validation ----

fn errors(yaml: &str) -> Vec<(String, String, usize)> {
    let spec = match parse_workflow("wf.yaml", yaml) {
        Ok(s) => s,
        Err(d) => panic!("parse: {}", d.render_plain()),
    };
    let reg = ComponentRegistry::from_components(vec![]);
    let env = ValidateEnv {
        components: &reg,
        providers: None,
    };
    let d = validate(spec, "wf.yaml", yaml, &env).unwrap_err();
    d.0.iter()
        .filter(|d| d.severity == spes_core::Severity::Error)
        .map(|d| {
            (
                d.code.to_owned(),
                format!("{} | {}", d.message, d.hint.clone().unwrap_or_default()),
                d.line_col.map_or(0, |(l, _)| l),
            )
        })
        .collect()
}

fn has(errs: &[(String, String, usize)], code: &str, text: &str, line: usize) {
    assert!(
        errs.iter()
            .any(|(c, m, l)| c == code && m.contains(text) && *l == line),
        "no {code} containing {text:?} at line {line} in {errs:#?}"
    );
}

#[test]
fn each_kind_reports_its_bad_inputs_with_locations() {
    let yaml = r#"
name: bad
agents:
  a: { role: x }
  judge: { role: y }
steps:
  - name: d
    kind: debate
    debaters: [a, nobody]
    topic: "{{ missing }}"
    judge: judge
    judge_sees: everything
  - name: s
    kind: switch
    classify: { prompt: "classify" }
    routes:
      bug: []
  - name: q
    kind: quality_gate
    step: { prompt: "x" }
    evaluator: { checks: [ { contain: "A" } ] }
    threshold: 1.5
  - name: r
    kind: refine
    generate: { prompt: "x" }
    evaluator:
      criteria:
        - { name: c1, weight: 0, judge: { agent: ghost, rubric: "r" } }
    max_iterations: 0
    rounds: 2
  - name: seq
    kind: sequence
    agents: [a]
"#;
    let errs = errors(yaml);
    has(
        &errs,
        "spes::workflow::unknown_agent",
        "unknown agent `nobody`",
        9,
    );
    has(&errs, "spes::workflow::unknown_key", "reads `missing`", 10);
    has(
        &errs,
        "spes::workflow::bad_judge_sees",
        "judge_sees `everything`",
        12,
    );
    has(
        &errs,
        "spes::workflow::no_steps",
        "route `bug` has no steps",
        17,
    );
    has(
        &errs,
        "spes::workflow::unknown_check",
        "unknown check `contain` | did you mean `contains`?",
        21,
    );
    has(
        &errs,
        "spes::workflow::bad_threshold",
        "threshold 1.5 is outside 0..1",
        22,
    );
    has(
        &errs,
        "spes::workflow::bad_weight",
        "weight 0 must be above 0",
        28,
    );
    has(
        &errs,
        "spes::workflow::unknown_agent",
        "unknown agent `ghost`",
        28,
    );
    has(
        &errs,
        "spes::workflow::bad_count",
        "max_iterations must be at least 1",
        29,
    );
    has(
        &errs,
        "spes::workflow::field_not_for_kind",
        "`rounds` does not apply to a `refine` step",
        30,
    );
    has(
        &errs,
        "spes::workflow::missing_field",
        "needs both `agents` and `task`",
        33,
    );
}

#[test]
fn evaluator_and_switch_shapes_are_checked() {
    let yaml = r#"
name: bad
steps:
  - name: q
    kind: quality_gate
    step: { kind: transform, fn: trim, input: "x" }
    evaluator: { checks: [ { json: true } ], judge: { rubric: "r" } }
  - name: s
    kind: switch
    routes: { a: [ { name: x, kind: transform, fn: trim, input: "x" } ] }
  - name: q2
    kind: quality_gate
    step: { prompt: "x" }
    evaluator: { checks: [ { words: { min: 5, max: 2 } } ] }
  - name: d
    kind: debate
    debaters: []
    topic: t
  - name: q3
    kind: refine
    generate: { prompt: "x", output: draft }
    evaluator: { checks: [ { schema: { type: 12 } } ] }
"#;
    let errs = errors(yaml);
    has(
        &errs,
        "spes::workflow::nested_output",
        "the `generate` step's `output: draft` is never written",
        21,
    );
    has(
        &errs,
        "spes::workflow::bad_schema",
        "not a valid JSON Schema",
        22,
    );
    has(&errs, "spes::workflow::bad_evaluator", "exactly one of", 7);
    has(
        &errs,
        "spes::workflow::missing_field",
        "needs `classify`",
        9,
    );
    has(&errs, "spes::workflow::bad_check", "`words` takes", 14);
    has(
        &errs,
        "spes::workflow::bad_count",
        "at least 2 different debaters",
        17,
    );
    has(&errs, "spes::workflow::missing_field", "needs `judge`", 16);
}

#[test]
fn diagrams_show_routes_and_pattern_settings() {
    let text = spes_core::workflow::diagram::text(&workflow(SWITCH));
    assert!(
        text.contains(
            "- route (switch · classify) → routed\n  ? bug_fix\n    - fix (llm) → plan\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("  ? default\n    - ask (transform · template) → plan\n"),
        "{text}"
    );
    let m = spes_core::workflow::diagram::mermaid(&workflow(SWITCH));
    assert!(m.contains("n1 -->|\"feature\"| n3"), "{m}");
    let d = spes_core::workflow::diagram::text(&workflow(&debate(3, "last", "optimist, skeptic")));
    assert!(
        d.contains(
            "argue (debate · optimist vs skeptic · 3 rounds · judge chair sees last) → verdict"
        ),
        "{d}"
    );
    let q = spes_core::workflow::diagram::text(&workflow(CRITERIA));
    assert!(
        q.contains("draft (quality_gate · criteria accuracy, sources, length ≥ 0.74 · 2 attempts)"),
        "{q}"
    );
    let c = spes_core::workflow::diagram::text(&workflow(CHAIN));
    assert!(
        c.contains("pass (sequence · writer → editor → writer) → notes"),
        "{c}"
    );
}
