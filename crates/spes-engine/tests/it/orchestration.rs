//! Orchestration patterns: map/reduce, fan_out, saga, pipeline,
//! scatter_gather: semantics, failure policies and crash-resume.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use spes_core::message::{ChatRequest, ChatResponse};
use spes_engine::{Effect, Engine, FailureKind, MemoryJournal, RunError};
use spes_llm::scripted::ScriptedProvider;
use spes_llm::{CallContext, Provider, ProviderError};

use crate::{inputs, scripted, workflow};

fn keys(p: &ScriptedProvider) -> Vec<String> {
    p.calls().into_iter().map(|(k, _)| k).collect()
}

fn list_input(items: &[&str]) -> std::collections::BTreeMap<String, Value> {
    [("items".to_owned(), json!(items))].into_iter().collect()
}

const MAP: &str = r#"
name: m
inputs: { items: { type: list, required: true } }
steps:
  - name: m
    kind: map
    over: items
    as: doc
    concurrency: 4
    on_error: ON_ERROR
    step: { name: sum, kind: llm, prompt: "Summarise #{{ index }}: {{ doc }}" }
    output: sums
"#;

fn map_wf(on_error: &str) -> spes_core::workflow::Workflow {
    workflow(&MAP.replace("ON_ERROR", on_error))
}

#[tokio::test]
async fn map_keeps_input_order_when_later_items_answer_first() {
    let wf = map_wf("fail_fast");
    // Item 0 answers last, item 3 first: completion order is 3, 2, 1, 0.
    let p = scripted(
        "- { step: 'map[0]/sum', reply: A, delay: 300ms }\n- { step: 'map[1]/sum', reply: B, delay: 200ms }\n- { step: 'map[2]/sum', reply: C, delay: 100ms }\n- { step: 'map[3]/sum', reply: D }",
    );
    let engine = Engine::builder().provider(p.clone()).build();
    let out = engine
        .run(&wf, list_input(&["a", "b", "c", "d"]))
        .await
        .unwrap();
    assert_eq!(out.output, Some(json!(["A", "B", "C", "D"])));
    assert_eq!(out.context["sums_errors"], json!([]));
    let calls = p.calls();
    let prompt_of = |k: &str| {
        calls
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, r)| r.messages[0].content.clone())
            .unwrap()
    };
    assert_eq!(prompt_of("m/map[2]/sum"), "Summarise #2: c");
}

/// A provider that counts requests in flight and remembers the maximum.
#[derive(Debug, Default)]
struct Counting {
    now: AtomicUsize,
    max: AtomicUsize,
    total: AtomicUsize,
}

#[async_trait]
impl Provider for Counting {
    fn name(&self) -> &str {
        "test"
    }
    fn kind(&self) -> &'static str {
        "scripted"
    }
    fn default_model(&self) -> Option<&str> {
        None
    }
    async fn complete(
        &self,
        req: &ChatRequest,
        _cx: &CallContext,
    ) -> Result<ChatResponse, ProviderError> {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
        self.total.fetch_add(1, Ordering::SeqCst);
        // Latency, so that calls overlap: the limit is what keeps them apart.
        tokio::time::sleep(Duration::from_millis(15)).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        Ok(ChatResponse {
            text: req.messages[0].content.clone(),
            stop_reason: spes_core::message::StopReason::EndTurn,
            usage: spes_core::message::Usage::default(),
            model: None,
            request_id: None,
            latency_ms: 15,
            tool_calls: Vec::new(),
        })
    }
}

#[tokio::test]
async fn map_never_has_more_than_concurrency_items_in_flight() {
    let wf = map_wf("fail_fast");
    let items: Vec<String> = (0..24).map(|i| format!("doc{i}")).collect();
    let refs: Vec<&str> = items.iter().map(String::as_str).collect();
    let p = Arc::new(Counting::default());
    let engine = Engine::builder().provider(p.clone()).build();
    let out = engine.run(&wf, list_input(&refs)).await.unwrap();
    assert_eq!(p.total.load(Ordering::SeqCst), 24);
    assert_eq!(
        p.max.load(Ordering::SeqCst),
        4,
        "the limit is reached and never exceeded"
    );
    let expected: Vec<Value> = (0..24)
        .map(|i| json!(format!("Summarise #{i}: doc{i}")))
        .collect();
    assert_eq!(out.output, Some(Value::Array(expected)));
}

const BAD_ITEM: &str = "- { step: 'map[1]/sum', error: invalid_request }\n- { default: echo }";

#[tokio::test]
async fn map_fail_fast_stops_at_the_first_failure_and_starts_no_new_item() {
    let wf = workflow(
        &MAP.replace("ON_ERROR", "fail_fast")
            .replace("concurrency: 4", "concurrency: 1"),
    );
    let p = scripted(BAD_ITEM);
    let engine = Engine::builder().provider(p.clone()).build();
    let journal = Arc::new(MemoryJournal::default());
    let err = engine
        .run_with_journal(&wf, list_input(&["a", "b", "c", "d"]), journal.clone())
        .await
        .unwrap_err();
    let RunError::Step(e) = err else {
        panic!("{err:?}")
    };
    assert_eq!(e.step, "m/map[1]/sum");
    assert!(matches!(e.kind, FailureKind::Provider(_)));
    assert_eq!(
        keys(&p),
        ["m/map[0]/sum", "m/map[1]/sum"],
        "c and d never started"
    );
    assert_eq!(journal.len(), 1, "the finished item is committed");
}

#[tokio::test]
async fn map_skip_leaves_failures_out_and_reports_them() {
    let wf = map_wf("skip");
    let p = scripted(BAD_ITEM);
    let engine = Engine::builder().provider(p.clone()).build();
    let journal = Arc::new(MemoryJournal::default());
    let out = engine
        .run_with_journal(&wf, list_input(&["a", "b", "c"]), journal.clone())
        .await
        .unwrap();
    assert_eq!(
        out.output,
        Some(json!(["Summarise #0: a", "Summarise #2: c"]))
    );
    let errors = &out.context["sums_errors"];
    assert_eq!(errors[0]["index"], 1);
    assert_eq!(errors[0]["item"], "b");
    assert!(
        errors[0]["error"]
            .as_str()
            .unwrap()
            .contains("invalid_request")
    );
    assert!(matches!(
        journal.entries().get("m/map[1]#error"),
        Some(Effect::Decision { .. })
    ));
    // A replay reports the same failure without asking again, even though
    // this provider would now answer.
    let fixed = scripted("- { default: echo }");
    let engine = Engine::builder().provider(fixed.clone()).build();
    let again = engine
        .run_with_journal(&wf, list_input(&["a", "b", "c"]), journal)
        .await
        .unwrap();
    assert_eq!(again.context, out.context);
    assert!(fixed.calls().is_empty());
}

#[tokio::test]
async fn map_collect_keeps_errors_in_place() {
    let wf = map_wf("collect");
    let p = scripted(BAD_ITEM);
    let engine = Engine::builder().provider(p).build();
    let out = engine.run(&wf, list_input(&["a", "b", "c"])).await.unwrap();
    let v = out.output.unwrap();
    assert_eq!(v[0], "Summarise #0: a");
    assert!(v[1]["error"].as_str().unwrap().contains("invalid_request"));
    assert_eq!(v[2], "Summarise #2: c");
    assert_eq!(out.context["sums_errors"].as_array().unwrap().len(), 1);
}

const MAP_REDUCE: &str = r#"
name: mr
inputs: { items: { type: list, required: true } }
steps:
  - name: m
    kind: map
    over: items
    concurrency: 8
    step: { name: sum, kind: llm, prompt: "S {{ item }}" }
    output: sums
  - name: r
    kind: reduce
    over: sums
    step: { name: combine, kind: llm, prompt: "Combine: {{ items | join(', ') }}" }
    output: overview
"#;

#[tokio::test]
async fn reduce_runs_once_over_the_results_in_input_order() {
    let wf = workflow(MAP_REDUCE);
    let p = scripted(
        "- { step: 'map[0]/sum', reply: one, delay: 50ms }\n- { step: combine, reply: done }\n- { default: echo }",
    );
    let engine = Engine::builder().provider(p.clone()).build();
    let out = engine.run(&wf, list_input(&["x", "y", "z"])).await.unwrap();
    assert_eq!(out.output, Some(json!("done")));
    let calls = p.calls();
    let reduces: Vec<_> = calls.iter().filter(|(k, _)| k == "r/combine").collect();
    assert_eq!(reduces.len(), 1);
    assert_eq!(reduces[0].1.messages[0].content, "Combine: one, S y, S z");
}

const SAGA: &str = r#"
name: trip
steps:
  - name: book
    kind: saga
    output: booking
    steps:
      - name: flight
        kind: llm
        prompt: "Book a flight"
        output: flight
        compensate: { kind: llm, prompt: "Cancel {{ flight }} because {{ failed_step }} failed: {{ error }}" }
      - name: hotel
        kind: llm
        prompt: "Book a hotel"
        output: hotel
        compensate: { kind: llm, prompt: "Cancel {{ hotel }}" }
      - name: note
        kind: transform
        fn: template
        input: "noted"
      - name: car
        kind: llm
        prompt: "Book a car"
"#;

#[tokio::test]
async fn saga_compensates_completed_steps_in_reverse_order() {
    let wf = workflow(SAGA);
    let p = scripted(
        "- { step: book/flight, reply: F1 }\n- { step: book/hotel, reply: H1 }\n- { step: book/car, error: invalid_request }\n- { step: compensate, reply: cancelled }",
    );
    let engine = Engine::builder().provider(p.clone()).build();
    let journal = Arc::new(MemoryJournal::default());
    let out = engine
        .run_with_journal(&wf, inputs(&[]), journal.clone())
        .await
        .unwrap();
    assert_eq!(
        keys(&p),
        [
            "book/flight",
            "book/hotel",
            "book/car",
            "book/hotel/compensate",
            "book/flight/compensate"
        ]
    );
    let b = out.output.unwrap();
    assert_eq!(b["status"], "compensated");
    assert_eq!(b["failed_step"], "car");
    assert_eq!(b["completed"], json!(["flight", "hotel", "note"]));
    let statuses: Vec<_> = b["compensations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["step"].as_str().unwrap(), c["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        statuses,
        [
            ("note", "no_compensation"),
            ("hotel", "compensated"),
            ("flight", "compensated")
        ]
    );
    let calls = p.calls();
    assert!(
        calls[4].1.messages[0]
            .content
            .starts_with("Cancel F1 because car failed:")
    );
    assert!(matches!(
        journal.entries().get("book#failed"),
        Some(Effect::Decision { .. })
    ));
}

#[tokio::test]
async fn saga_records_a_failed_compensation_and_fails_the_run() {
    let wf = workflow(SAGA);
    let p = scripted(
        "- { step: book/flight, reply: F1 }\n- { step: book/hotel, reply: H1 }\n- { step: book/car, error: invalid_request }\n- { step: hotel/compensate, error: invalid_request, message: hotel says no }\n- { step: compensate, reply: cancelled }",
    );
    let engine = Engine::builder().provider(p.clone()).build();
    let err = engine.run(&wf, inputs(&[])).await.unwrap_err();
    let RunError::Step(e) = err else {
        panic!("{err:?}")
    };
    assert_eq!(e.step, "book");
    let FailureKind::Compensation(msg) = &e.kind else {
        panic!("{:?}", e.kind)
    };
    assert!(msg.contains("`hotel`"), "{msg}");
    assert!(msg.contains("hotel says no"), "{msg}");
    // The other compensation still ran.
    assert!(keys(&p).contains(&"book/flight/compensate".to_owned()));
}

#[tokio::test]
async fn a_successful_saga_reports_completed() {
    let wf = workflow(SAGA);
    let p = scripted("- { default: echo }");
    let engine = Engine::builder().provider(p.clone()).build();
    let out = engine.run(&wf, inputs(&[])).await.unwrap();
    assert_eq!(out.output.unwrap()["status"], "completed");
    assert!(!keys(&p).iter().any(|k| k.ends_with("compensate")));
}

const SCATTER: &str = r#"
name: sg
inputs: { q: { type: string, required: true } }
steps:
  - name: ask
    kind: scatter_gather
    timeout: 300ms
    sources:
      - { name: web, kind: llm, prompt: "web: {{ q }}" }
      - { name: docs, kind: llm, prompt: "docs: {{ q }}" }
      - { name: slow, kind: llm, prompt: "slow: {{ q }}" }
      - { name: broken, kind: llm, prompt: "broken: {{ q }}" }
    GATHER
    output: answer
"#;

#[tokio::test]
async fn scatter_gather_keeps_what_arrived_and_marks_late_sources() {
    let wf = workflow(&SCATTER.replace("GATHER", ""));
    let p = scripted(
        "- { step: ask/slow, reply: late, delay: 60s }\n- { step: ask/broken, error: invalid_request }\n- { default: echo }",
    );
    let engine = Engine::builder().provider(p.clone()).build();
    let journal = Arc::new(MemoryJournal::default());
    let out = engine
        .run_with_journal(&wf, inputs(&[("q", "rust")]), journal.clone())
        .await
        .unwrap();
    let v = out.output.unwrap();
    assert_eq!(
        v["results"],
        json!({ "web": "web: rust", "docs": "docs: rust" })
    );
    assert_eq!(v["timed_out"], json!(["slow"]));
    assert!(
        v["failed"]["broken"]
            .as_str()
            .unwrap()
            .contains("invalid_request")
    );
    // The decision is journaled: a replay keeps it, asks nobody, and does
    // not wait for the slow source again.
    let entries = journal.entries();
    assert!(matches!(
        entries.get("ask#start"),
        Some(Effect::Clock { .. })
    ));
    assert!(matches!(
        entries.get("ask#gathered"),
        Some(Effect::Decision { .. })
    ));
    let instant = scripted("- { default: echo }");
    let engine = Engine::builder().provider(instant.clone()).build();
    let again = engine
        .run_with_journal(&wf, inputs(&[("q", "rust")]), journal)
        .await
        .unwrap();
    assert_eq!(again.context, out.context);
    assert!(instant.calls().is_empty());
}

#[tokio::test]
async fn scatter_gather_feeds_the_gather_step() {
    let wf = workflow(&SCATTER.replace(
        "GATHER",
        "gather: { kind: llm, prompt: \"Merge {{ results | length }} answers; missing: {{ timed_out | join(',') }}\" }",
    ));
    let p = scripted(
        "- { step: ask/slow, reply: late, delay: 60s }\n- { step: ask/broken, error: invalid_request }\n- { default: echo }",
    );
    let engine = Engine::builder().provider(p.clone()).build();
    let out = engine.run(&wf, inputs(&[("q", "x")])).await.unwrap();
    assert_eq!(out.output, Some(json!("Merge 2 answers; missing: slow")));
}

const PIPELINE: &str = r#"
name: p
inputs: { text: { type: string, required: true } }
steps:
  - name: p
    kind: pipeline
    input: "{{ text }}"
    stages:
      - { name: outline, kind: llm, prompt: "Outline: {{ input }}" }
      - { name: loud, kind: transform, fn: uppercase, input: "{{ input }}" }
      - { name: polish, kind: llm, prompt: "Polish: {{ input }}" }
    output: final
"#;

#[tokio::test]
async fn pipeline_feeds_each_stage_the_previous_output_and_records_timing() {
    let wf = workflow(PIPELINE);
    let p = scripted("- { step: p/outline, reply: o1, delay: 30ms }\n- { default: echo }");
    let engine = Engine::builder().provider(p.clone()).build();
    let journal = Arc::new(MemoryJournal::default());
    let out = engine
        .run_with_journal(&wf, inputs(&[("text", "t")]), journal.clone())
        .await
        .unwrap();
    assert_eq!(keys(&p), ["p/outline", "p/polish"]);
    assert_eq!(out.output, Some(json!("Polish: O1")));
    let Some(Effect::Decision { decision }) = journal.entries().get("p#timing").cloned() else {
        panic!("no timing entry")
    };
    let stages: Vec<&str> = decision
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["outline", "loud", "polish"]);
    assert!(decision[0]["elapsed_ms"].as_u64().unwrap() >= 30);
}

const FAN_OUT: &str = r#"
name: f
inputs: { text: { type: string, required: true } }
steps:
  - name: review
    kind: fan_out
    workers:
      - { name: security, step: { kind: llm, prompt: "Security review: {{ text }}" } }
      - { name: style, step: { kind: llm, prompt: "Style review: {{ text }}" } }
    aggregate: { kind: llm, prompt: "Merge: {{ results.security }} | {{ results.style }}" }
    output: verdict
"#;

#[tokio::test]
async fn fan_out_runs_every_worker_on_the_input_then_aggregates() {
    let wf = workflow(FAN_OUT);
    let p = scripted("- { default: echo }");
    let engine = Engine::builder().provider(p.clone()).build();
    let out = engine.run(&wf, inputs(&[("text", "t")])).await.unwrap();
    assert_eq!(
        out.output,
        Some(json!("Merge: Security review: t | Style review: t"))
    );
    let mut k = keys(&p);
    k.sort();
    assert_eq!(k, ["review/aggregate", "review/security", "review/style"]);
}

/// Crash and resume: `broken` fails the run at some point; rerunning with
/// `fixed` over the same journal calls exactly `recalled` and ends with
/// the output of an uninterrupted run with `fixed`.
async fn crash_resume(
    yaml: &str,
    given: std::collections::BTreeMap<String, Value>,
    broken: &str,
    fixed: &str,
    recalled: &[&str],
) {
    let wf = workflow(yaml);
    let reference = Engine::builder()
        .provider(scripted(fixed))
        .build()
        .run(&wf, given.clone())
        .await
        .unwrap();
    let journal = Arc::new(MemoryJournal::default());
    let err = Engine::builder()
        .provider(scripted(broken))
        .build()
        .run_with_journal(&wf, given.clone(), journal.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, RunError::Step(_)), "{err:?}");
    let p = scripted(fixed);
    let out = Engine::builder()
        .provider(p.clone())
        .build()
        .run_with_journal(&wf, given, journal)
        .await
        .unwrap();
    let mut called = keys(&p);
    called.sort();
    let mut want: Vec<String> = recalled.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    assert_eq!(called, want, "only uncommitted work runs again");
    assert_eq!(out.output, reference.output);
}

#[tokio::test]
async fn map_reduce_resumes_without_repeating_committed_items() {
    crash_resume(
        MAP_REDUCE,
        list_input(&["a", "b", "c", "d"]),
        // The last item fails: the three before it finished and committed
        // (fail_fast starts no item after a failure, so an earlier failing
        // item would leave later ones unstarted, to be run on resume).
        "- { step: 'map[3]/sum', error: invalid_request }\n- { default: echo }",
        "- { default: echo }",
        &["m/map[3]/sum", "r/combine"],
    )
    .await;
}

#[tokio::test]
async fn fan_out_resumes_without_repeating_finished_workers() {
    crash_resume(
        FAN_OUT,
        inputs(&[("text", "t")]),
        "- { step: review/style, error: invalid_request }\n- { default: echo }",
        "- { default: echo }",
        &["review/style", "review/aggregate"],
    )
    .await;
}

#[tokio::test]
async fn pipeline_resumes_at_the_failed_stage() {
    crash_resume(
        PIPELINE,
        inputs(&[("text", "t")]),
        "- { step: p/polish, error: invalid_request }\n- { default: echo }",
        "- { default: echo }",
        &["p/polish"],
    )
    .await;
}

#[tokio::test]
async fn saga_resumes_its_compensations_and_never_retries_the_failed_step() {
    // The reference outcome: car fails, both compensations succeed.
    let failing_car = "- { step: book/car, error: invalid_request }\n- { default: echo }";
    let wf = workflow(SAGA);
    let reference = Engine::builder()
        .provider(scripted(failing_car))
        .build()
        .run(&wf, inputs(&[]))
        .await
        .unwrap();
    let journal = Arc::new(MemoryJournal::default());
    let broken = "- { step: book/car, error: invalid_request }\n- { step: flight/compensate, error: server_error }\n- { default: echo }";
    let err = Engine::builder()
        .provider(scripted(broken))
        .build()
        .run_with_journal(&wf, inputs(&[]), journal.clone())
        .await
        .unwrap_err();
    assert!(matches!(&err, RunError::Step(e) if matches!(e.kind, FailureKind::Compensation(_))));
    // Now every call would succeed, the car included: it is not retried.
    let p = scripted("- { default: echo }");
    let out = Engine::builder()
        .provider(p.clone())
        .build()
        .run_with_journal(&wf, inputs(&[]), journal)
        .await
        .unwrap();
    assert_eq!(keys(&p), ["book/flight/compensate"]);
    assert_eq!(out.output, reference.output);
    assert_eq!(out.output.unwrap()["status"], "compensated");
}

#[tokio::test]
async fn scatter_gather_resumes_with_the_recorded_gather() {
    let yaml = SCATTER.replace(
        "GATHER",
        "gather: { name: merge, kind: llm, prompt: \"Merge {{ results | length }}; late: {{ timed_out | join(',') }}\" }",
    );
    let wf = workflow(&yaml);
    let journal = Arc::new(MemoryJournal::default());
    let broken = "- { step: ask/slow, reply: late, delay: 60s }\n- { step: ask/broken, error: invalid_request }\n- { step: ask/merge, error: invalid_request }\n- { default: echo }";
    let err = Engine::builder()
        .provider(scripted(broken))
        .build()
        .run_with_journal(&wf, inputs(&[("q", "x")]), journal.clone())
        .await
        .unwrap_err();
    assert!(matches!(&err, RunError::Step(e) if e.step == "ask/merge"));
    // Every source would answer at once now; the recorded gather stands.
    let p = scripted("- { default: echo }");
    let out = Engine::builder()
        .provider(p.clone())
        .build()
        .run_with_journal(&wf, inputs(&[("q", "x")]), journal)
        .await
        .unwrap();
    assert_eq!(keys(&p), ["ask/merge"]);
    assert_eq!(out.output, Some(json!("Merge 2; late: slow")));
}

#[tokio::test]
async fn a_map_resumes_on_a_sqlite_store_without_repeating_items() {
    use spes_engine::{RunEnd, WorkflowSource};
    use spes_store::RunStore;
    use spes_store::sqlite::{SqliteOptions, SqliteStore};
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn RunStore> = Arc::new(
        SqliteStore::open(&dir.path().join("spes.db"), SqliteOptions::default())
            .await
            .unwrap(),
    );
    let wf = workflow(MAP_REDUCE);
    let src = WorkflowSource {
        path: "/tmp/mr.yaml".into(),
        text: MAP_REDUCE.into(),
    };
    let broken = scripted("- { step: 'map[1]/sum', error: invalid_request }\n- { default: echo }");
    let (id, end) = Engine::builder()
        .provider(broken)
        .build()
        .start(store.clone(), &wf, &src, list_input(&["a", "b", "c"]))
        .await
        .unwrap();
    assert!(matches!(end, RunEnd::Failed(_)), "{end:?}");
    let run = store.run(&id).await.unwrap().unwrap();
    let fixed = scripted("- { default: echo }");
    let end = Engine::builder()
        .provider(fixed.clone())
        .build()
        .resume(store.clone(), &run, &wf, &src, false)
        .await
        .unwrap();
    let RunEnd::Completed(out) = end else {
        panic!("{end:?}")
    };
    let mut k = keys(&fixed);
    k.sort();
    assert_eq!(k, ["m/map[1]/sum", "r/combine"]);
    assert_eq!(out.output, Some(json!("Combine: S a, S b, S c")));
}

#[tokio::test]
async fn an_item_step_can_read_the_whole_list() {
    let wf = workflow(
        r#"
name: w
inputs: { items: { type: list, required: true } }
steps:
  - name: m
    kind: map
    over: items
    step: { name: t, kind: transform, fn: template, input: "{{ item }} of {{ items | length }}" }
    output: out
"#,
    );
    let engine = Engine::builder()
        .provider(scripted("- { default: echo }"))
        .build();
    let out = engine.run(&wf, list_input(&["a", "b"])).await.unwrap();
    assert_eq!(out.output, Some(json!(["a of 2", "b of 2"])));
}

#[tokio::test]
async fn a_saga_resumes_on_a_sqlite_store_from_its_journaled_failure_point() {
    use spes_engine::{RunEnd, WorkflowSource};
    use spes_store::sqlite::{SqliteOptions, SqliteStore};
    use spes_store::{RunStatus, RunStore};
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn RunStore> = Arc::new(
        SqliteStore::open(&dir.path().join("spes.db"), SqliteOptions::default())
            .await
            .unwrap(),
    );
    let wf = workflow(SAGA);
    let src = WorkflowSource {
        path: "/tmp/saga.yaml".into(),
        text: SAGA.into(),
    };
    let broken = scripted(
        "- { step: book/car, error: invalid_request }\n- { step: flight/compensate, error: server_error }\n- { default: echo }",
    );
    let (id, end) = Engine::builder()
        .provider(broken)
        .build()
        .start(store.clone(), &wf, &src, inputs(&[]))
        .await
        .unwrap();
    let RunEnd::Failed(e) = end else {
        panic!("{end:?}")
    };
    assert!(matches!(e.kind, FailureKind::Compensation(_)));
    let run = store.run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    let fixed = scripted("- { default: echo }");
    let end = Engine::builder()
        .provider(fixed.clone())
        .build()
        .resume(store.clone(), &run, &wf, &src, false)
        .await
        .unwrap();
    let RunEnd::Completed(out) = end else {
        panic!("{end:?}")
    };
    assert_eq!(keys(&fixed), ["book/flight/compensate"]);
    assert_eq!(out.output.unwrap()["status"], "compensated");
}
