//! Error-recovery policies: retry, fallback, degrade, circuit breaker,
//! timeout, and their durability (every attempt under its own key).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use spes_core::policy::BreakerState;
use spes_engine::{Effect, Engine, FailureKind, Journal, MemoryJournal, RunError};
use spes_llm::scripted::ScriptedProvider;

use crate::{inputs, scripted, workflow};

fn named(name: &str, script: &str) -> Arc<ScriptedProvider> {
    Arc::new(ScriptedProvider::parse(name, "answers.yaml", script).unwrap())
}

/// Calls the provider saw for steps whose key ends with `step` (attempts look alike).
fn calls_to(p: &ScriptedProvider, step: &str) -> usize {
    p.calls().iter().filter(|(k, _)| k == step).count()
}

fn one_step(policies: &str) -> String {
    format!(
        "name: w\nsteps:\n  - name: x\n    kind: llm\n    prompt: hi\n    output: x\n{}",
        policies
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    )
}

fn step_error(e: RunError) -> spes_engine::EngineError {
    match e {
        RunError::Step(e) => e,
        other => panic!("expected a step failure, got {other}"),
    }
}

#[tokio::test]
async fn retry_succeeds_after_transient_errors_and_journals_each_attempt_apart() {
    let wf = workflow(&one_step("retry: { attempts: 3, base: 1ms }"));
    let p = scripted("- { step: x, error: server_error, times: 2 }\n- { step: x, reply: ok }");
    let engine = Engine::builder().provider(p.clone()).build();
    let journal = Arc::new(MemoryJournal::default());
    let out = engine
        .run_with_journal(&wf, inputs(&[]), journal.clone())
        .await
        .unwrap();
    assert_eq!(out.output, Some(json!("ok")));
    assert_eq!(calls_to(&p, "x"), 3);
    let entries = journal.entries();
    assert!(matches!(
        entries.get("x#attempt3"),
        Some(Effect::Model { .. })
    ));
    assert!(!entries.contains_key("x"), "failed attempts record nothing");
    assert_eq!(
        entries.get("x#served"),
        Some(&Effect::Decision {
            decision: json!({ "alternative": 0, "attempt": 3, "by": "step" })
        })
    );
}

#[tokio::test]
async fn retry_gives_up_after_attempts_counting_the_first_try() {
    let wf = workflow(&one_step("retry: { attempts: 3, base: 1ms }"));
    let p = scripted("- { step: x, error: server_error, times: 5 }\n- { step: x, reply: late }");
    let engine = Engine::builder().provider(p.clone()).build();
    let e = step_error(engine.run(&wf, inputs(&[])).await.unwrap_err());
    assert!(matches!(e.kind, FailureKind::Provider(_)), "{e}");
    assert_eq!(calls_to(&p, "x"), 3);
}

#[tokio::test]
async fn terminal_errors_are_not_retried() {
    let wf = workflow(&one_step("retry: { attempts: 5, base: 1ms }"));
    let p = scripted("- { step: x, error: invalid_request, times: 1 }\n- { step: x, reply: ok }");
    let engine = Engine::builder().provider(p.clone()).build();
    let e = step_error(engine.run(&wf, inputs(&[])).await.unwrap_err());
    assert!(e.to_string().contains("invalid_request"), "{e}");
    assert_eq!(calls_to(&p, "x"), 1);
}

#[tokio::test]
async fn the_engine_waits_at_least_what_retry_after_asks() {
    let wf = workflow(&one_step(
        "retry: { attempts: 2, base: 1ms, max: 5s, jitter: false }",
    ));
    let p = scripted(
        "- { step: x, error: rate_limited, retry_after: 40ms, times: 1 }\n- { step: x, reply: ok }",
    );
    let engine = Engine::builder().provider(p.clone()).build();
    let start = Instant::now();
    let out = engine.run(&wf, inputs(&[])).await.unwrap();
    assert_eq!(out.output, Some(json!("ok")));
    // The backoff alone is 1ms; the provider asked for 40ms (a lower bound: sleeps never end early).
    assert!(start.elapsed() >= Duration::from_millis(40));
}

#[tokio::test]
async fn a_retry_after_longer_than_max_gives_up_to_the_fallback_at_once() {
    let wf = workflow(&one_step(
        "retry: { attempts: 3, base: 1ms, max: 50ms }\nfallback: [ { provider: backup } ]",
    ));
    let p = scripted("- { step: x, error: rate_limited, retry_after: 1h }");
    let b = named("backup", "- { step: 'x#fallback1', reply: spare }");
    let engine = Engine::builder().provider(p.clone()).provider(b).build();
    let out = engine.run(&wf, inputs(&[])).await.unwrap();
    assert_eq!(out.output, Some(json!("spare")));
    assert_eq!(calls_to(&p, "x"), 1, "no retry into a known refusal");
}

#[tokio::test]
async fn an_answer_failing_validate_is_retried() {
    let wf = workflow(&one_step(
        "retry: { attempts: 3, base: 1ms, validate: \"output | length > 4\" }",
    ));
    let p = scripted("- { step: x, replies: [no, nope, 'long enough'] }");
    let engine = Engine::builder().provider(p.clone()).build();
    let journal = Arc::new(MemoryJournal::default());
    let out = engine
        .run_with_journal(&wf, inputs(&[]), journal.clone())
        .await
        .unwrap();
    assert_eq!(out.output, Some(json!("long enough")));
    assert_eq!(calls_to(&p, "x"), 3);
    // Rejected answers are committed too, each under its attempt's key.
    assert!(journal.get("x").await.unwrap().is_some());
    assert!(journal.get("x#attempt2").await.unwrap().is_some());
    assert!(
        !out.context.contains_key("output"),
        "`output` is only visible to validate"
    );
}

#[tokio::test]
async fn validation_that_never_passes_fails_the_step() {
    let wf = workflow(&one_step(
        "retry: { attempts: 2, base: 1ms, validate: \"'json' in output\" }",
    ));
    let p = scripted("- { step: x, reply: prose }");
    let engine = Engine::builder().provider(p.clone()).build();
    let e = step_error(engine.run(&wf, inputs(&[])).await.unwrap_err());
    assert!(e.to_string().contains("validate"), "{e}");
    assert_eq!(calls_to(&p, "x"), 2);
}

#[tokio::test]
async fn fallback_to_a_second_provider() {
    let wf = workflow(&one_step(
        "retry: { attempts: 2, base: 1ms }\nfallback: [ { provider: backup } ]",
    ));
    let p = scripted("- { step: x, error: overloaded }");
    let b = named("backup", "- { step: 'x#fallback1', reply: spare }");
    let engine = Engine::builder()
        .provider(p.clone())
        .provider(b.clone())
        .build();
    let out = engine.run(&wf, inputs(&[])).await.unwrap();
    assert_eq!(out.output, Some(json!("spare")));
    assert_eq!(calls_to(&p, "x"), 2);
    assert_eq!(b.calls().len(), 1);
    assert_eq!(
        out.context["x_served_by"],
        json!({ "by": "fallback1", "label": "backup", "attempt": 1, "degraded": true })
    );
}

#[tokio::test]
async fn fallback_to_a_step_after_a_terminal_error() {
    let wf = workflow(&one_step(
        "fallback: [ { step: { kind: transform, fn: template, input: unavailable } } ]",
    ));
    let p = scripted("- { step: x, error: context_overflow }");
    let engine = Engine::builder().provider(p.clone()).build();
    let out = engine.run(&wf, inputs(&[])).await.unwrap();
    assert_eq!(out.output, Some(json!("unavailable")));
    assert_eq!(out.context["x_served_by"]["by"], json!("fallback1"));
    assert_eq!(out.context["x_served_by"]["label"], json!("step transform"));
}

#[tokio::test]
async fn degrade_records_which_level_served() {
    let wf = workflow(&one_step(
        "degrade: [ { provider: test, name: best }, { provider: test, model: small, name: cheap }, { provider: backup } ]",
    ));
    let p = scripted(
        "- { step: 'x#degrade1', error: server_error }\n- { step: 'x#degrade2', reply: good-enough }",
    );
    let b = named("backup", "- { default: echo }");
    let engine = Engine::builder()
        .provider(p.clone())
        .provider(b.clone())
        .build();
    let journal = Arc::new(MemoryJournal::default());
    let out = engine
        .run_with_journal(&wf, inputs(&[]), journal.clone())
        .await
        .unwrap();
    assert_eq!(out.output, Some(json!("good-enough")));
    assert_eq!(
        out.context["x_served_by"],
        json!({ "by": "degrade2", "label": "cheap", "attempt": 1, "degraded": true })
    );
    assert_eq!(p.calls()[1].1.model.as_deref(), Some("small"));
    assert!(
        b.calls().is_empty(),
        "a lower level is not tried once one served"
    );
    assert!(matches!(
        journal.get("x#degrade2").await.unwrap(),
        Some(Effect::Model { .. })
    ));
}

#[tokio::test]
async fn timeout_bounds_each_attempt_and_is_retried() {
    let wf = workflow(&one_step(
        "timeout: 30ms\nretry: { attempts: 2, base: 1ms }",
    ));
    let p = scripted("- { step: x, reply: late, delay: 5s, times: 1 }\n- { step: x, reply: fast }");
    let engine = Engine::builder().provider(p.clone()).build();
    let out = engine.run(&wf, inputs(&[])).await.unwrap();
    assert_eq!(out.output, Some(json!("fast")));

    let wf = workflow(&one_step("timeout: 30ms"));
    let p = scripted("- { step: x, reply: late, delay: 5s }");
    let engine = Engine::builder().provider(p).build();
    let e = step_error(engine.run(&wf, inputs(&[])).await.unwrap_err());
    assert!(matches!(e.kind, FailureKind::Timeout(d) if d == Duration::from_millis(30)));
    assert_eq!(e.class(), spes_llm::ErrorClass::Transient);
}

#[tokio::test]
async fn the_breaker_lets_threshold_calls_through_none_during_cooldown_then_one_probe() {
    let wf = workflow(&one_step(
        "circuit_breaker: { name: main, failures: 3, cooldown: 10s }",
    ));
    let p = scripted(
        "- { step: x, error: server_error, times: 3 }\n- { step: x, reply: back, delay: 50ms }",
    );
    let now = Arc::new(AtomicI64::new(1_000_000));
    let clock = now.clone();
    let engine = Engine::builder()
        .provider(p.clone())
        .clock(Arc::new(move || clock.load(Ordering::SeqCst)))
        .build();
    // Separate runs share the engine's breaker.
    for _ in 0..3 {
        let e = step_error(engine.run(&wf, inputs(&[])).await.unwrap_err());
        assert!(matches!(e.kind, FailureKind::Provider(_)), "{e}");
    }
    assert_eq!(calls_to(&p, "x"), 3);
    assert_eq!(
        engine.breakers().state("main"),
        Some(BreakerState::Open {
            until_ms: 1_010_000
        })
    );
    // During the cool-down: refused without calling.
    for _ in 0..4 {
        now.fetch_add(2_000, Ordering::SeqCst);
        let e = step_error(engine.run(&wf, inputs(&[])).await.unwrap_err());
        assert!(matches!(e.kind, FailureKind::CircuitOpen { .. }), "{e}");
        assert_eq!(e.class(), spes_llm::ErrorClass::Transient);
    }
    assert_eq!(calls_to(&p, "x"), 3);
    // After it: exactly one probe; a concurrent run is refused meanwhile.
    now.fetch_add(2_000, Ordering::SeqCst);
    let (a, b) = tokio::join!(engine.run(&wf, inputs(&[])), engine.run(&wf, inputs(&[])));
    assert_eq!(a.unwrap().output, Some(json!("back")));
    let e = step_error(b.unwrap_err());
    assert!(matches!(e.kind, FailureKind::CircuitOpen { .. }), "{e}");
    assert_eq!(calls_to(&p, "x"), 4);
    assert_eq!(
        engine.breakers().state("main"),
        Some(BreakerState::Closed { failures: 0 })
    );
}

#[tokio::test]
async fn an_open_breaker_is_waited_out_by_retry_when_it_fits_in_max() {
    let wf = workflow(&one_step(
        "circuit_breaker: { failures: 1, cooldown: 20ms }\nretry: { attempts: 3, base: 1ms, max: 1s, jitter: false }",
    ));
    let p = scripted("- { step: x, error: server_error, times: 1 }\n- { step: x, reply: ok }");
    let engine = Engine::builder().provider(p.clone()).build();
    let out = engine.run(&wf, inputs(&[])).await.unwrap();
    assert_eq!(out.output, Some(json!("ok")));
    // Attempt 1 failed and opened the breaker; attempt 2 was refused and waited the
    // cool-down; attempt 3 was the probe.
    assert_eq!(calls_to(&p, "x"), 2);
    // The breaker is named after the provider when the step names none.
    assert_eq!(
        engine.breakers().state("test"),
        Some(BreakerState::Closed { failures: 0 })
    );
}

#[tokio::test]
async fn resume_after_a_later_failure_repeats_no_committed_attempt() {
    let yaml = r#"
name: w
steps:
  - name: a
    kind: llm
    prompt: first
    retry: { attempts: 3, base: 300ms, jitter: false }
    output: a
  - { name: b, kind: llm, prompt: "then {{ a }}", output: b }
"#;
    let wf = workflow(yaml);
    let p = scripted(
        "- { step: a, error: server_error, times: 1 }\n- { step: a, replies: [A2, A3] }\n- { step: b, error: invalid_request, times: 1 }\n- { step: b, reply: B }",
    );
    let engine = Engine::builder().provider(p.clone()).build();
    let journal = Arc::new(MemoryJournal::default());
    let e = engine
        .run_with_journal(&wf, inputs(&[]), journal.clone())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("step `b`"), "{e}");
    assert_eq!(calls_to(&p, "a"), 2);
    let start = Instant::now();
    let out = engine
        .run_with_journal(&wf, inputs(&[]), journal.clone())
        .await
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_millis(300),
        "a recorded success answers at once; no backoff is slept again"
    );
    assert_eq!(
        calls_to(&p, "a"),
        2,
        "attempt 2 was committed: not repeated"
    );
    assert_eq!(out.context["a"], json!("A2"));
    assert_eq!(out.context["b"], json!("B"));
    assert_eq!(out.replayed, 1);
}

#[tokio::test]
async fn resume_inside_a_retry_replays_committed_attempts_and_continues() {
    let wf = workflow(&one_step(
        "retry: { attempts: 3, base: 1ms, validate: \"output == 'good'\" }",
    ));
    // Attempt 1 answers (rejected by validate, but committed); attempt 2 fails terminally.
    let p = scripted(
        "- { step: x, reply: bad, times: 1 }\n- { step: x, error: invalid_request, times: 1 }\n- { step: x, reply: good }",
    );
    let engine = Engine::builder().provider(p.clone()).build();
    let journal = Arc::new(MemoryJournal::default());
    engine
        .run_with_journal(&wf, inputs(&[]), journal.clone())
        .await
        .unwrap_err();
    assert_eq!(calls_to(&p, "x"), 2);
    let out = engine
        .run_with_journal(&wf, inputs(&[]), journal.clone())
        .await
        .unwrap();
    assert_eq!(out.output, Some(json!("good")));
    // Attempt 1 replayed from the journal; only attempt 2 was made again.
    assert_eq!(calls_to(&p, "x"), 3);
    assert_eq!((out.model_calls, out.replayed), (1, 1));
    // And once served, a third run makes no call at all.
    let again = engine
        .run_with_journal(&wf, inputs(&[]), journal)
        .await
        .unwrap();
    assert_eq!((again.model_calls, again.replayed), (0, 1));
    assert_eq!(again.output, Some(json!("good")));
}

#[tokio::test]
async fn retry_on_a_sequence_reruns_it_under_fresh_keys() {
    let yaml = r#"
name: w
steps:
  - name: s
    kind: sequence
    retry: { attempts: 2, base: 1ms }
    steps:
      - { name: one, kind: llm, prompt: "1", output: one }
      - { name: two, kind: llm, prompt: "2", output: two }
    output: out
"#;
    let wf = workflow(yaml);
    let p = scripted(
        "- { step: one, reply: I }\n- { step: two, error: server_error, times: 1 }\n- { step: two, reply: II }",
    );
    let engine = Engine::builder().provider(p.clone()).build();
    let journal = Arc::new(MemoryJournal::default());
    let out = engine
        .run_with_journal(&wf, inputs(&[]), journal.clone())
        .await
        .unwrap();
    assert_eq!(out.output, Some(json!("II")));
    let keys: Vec<String> = p.calls().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["s/one", "s/two", "s#attempt2/one", "s#attempt2/two"]);
    assert!(journal.get("s#attempt2/two").await.unwrap().is_some());
}

#[tokio::test]
async fn a_crash_during_backoff_resumes_on_the_store_without_repeating_the_committed_attempt() {
    use spes_engine::{RunEnd, WorkflowSource};
    use spes_store::RunStore;
    use spes_store::sqlite::{SqliteOptions, SqliteStore};

    let yaml = one_step(
        "retry: { attempts: 3, base: 200ms, jitter: false, validate: \"output == 'good'\" }",
    );
    let wf = workflow(&yaml);
    let source = WorkflowSource {
        path: "/tmp/policy.yaml".into(),
        text: yaml.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn RunStore> = Arc::new(
        SqliteStore::open(&dir.path().join("spes.db"), SqliteOptions::default())
            .await
            .unwrap(),
    );
    // Attempt 1 answers "bad" (committed, rejected by validate); the process
    // dies while retry waits before attempt 2.
    let first = scripted("- { step: x, reply: bad }");
    let engine = Engine::builder().provider(first.clone()).build();
    let crashed = tokio::time::timeout(
        Duration::from_millis(50),
        engine.start(store.clone(), &wf, &source, inputs(&[])),
    )
    .await;
    assert!(crashed.is_err(), "the run was cut off during the backoff");
    assert_eq!(calls_to(&first, "x"), 1);
    let runs = store.list_runs(None, 10).await.unwrap();
    let run = runs.first().unwrap().clone();
    // The owning process is gone, as after a real crash: this test process
    // lives on, so the run is handed to a process that has exited.
    let dead = {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    };
    let me = spes_engine::durable::this_owner();
    let host = me.rsplit_once(':').unwrap().0;
    let run = store
        .claim_run(
            &run.id,
            spes_store::RunStatus::Running,
            run.owner.as_deref(),
            &format!("{host}:{dead}"),
        )
        .await
        .unwrap();
    let keys: Vec<String> = store
        .entries(&run.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, ["x"]);

    let second = scripted("- { step: x, reply: good }");
    let engine = Engine::builder().provider(second.clone()).build();
    let end = engine
        .resume(store.clone(), &run, &wf, &source, false)
        .await
        .unwrap();
    let RunEnd::Completed(out) = end else {
        panic!("{end:?}")
    };
    assert_eq!(out.output, Some(json!("good")));
    assert_eq!(
        calls_to(&second, "x"),
        1,
        "attempt 1 replayed, only attempt 2 made"
    );
    let keys: Vec<String> = store
        .entries(&run.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, ["x", "x#attempt2", "x#served"]);
}

/// A journal that holds something else under a step's key than the step
/// expects (here a gate decision where an llm step now stands: the
/// workflow changed under the run) is a terminal `Mismatch`: `retry` does
/// not try again under fresh keys, no model is called, and the error names
/// what the journal holds.
#[tokio::test]
async fn a_journal_mismatch_is_terminal_and_not_retried() {
    let wf = workflow(&one_step("retry: { attempts: 3, base: 1ms }"));
    let p = scripted("- { step: x, reply: fresh }");
    let engine = Engine::builder().provider(p.clone()).build();
    let journal = Arc::new(MemoryJournal::default());
    journal
        .record(
            "x",
            Effect::Decision {
                decision: json!({ "action": "approve" }),
            },
        )
        .await
        .unwrap();
    let e = step_error(
        engine
            .run_with_journal(&wf, inputs(&[]), journal)
            .await
            .unwrap_err(),
    );
    assert!(
        matches!(
            e.kind,
            FailureKind::Journal(spes_engine::JournalError::Mismatch(_))
        ),
        "{e}"
    );
    assert_eq!(e.class(), spes_llm::ErrorClass::Terminal);
    assert!(
        e.to_string()
            .contains("journal mismatch: the journal holds a decision entry under this key"),
        "{e}"
    );
    assert_eq!(
        p.calls().len(),
        0,
        "no model call: {e} {:?}",
        p.calls()
            .iter()
            .map(|(k, r)| (k.clone(), r.messages.len()))
            .collect::<Vec<_>>()
    );
}
