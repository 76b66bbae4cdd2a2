//! Durable runs on a real SQLite store.

use std::sync::Arc;

use serde_json::json;
use spes_engine::durable::{drift, first_differing_step};
use spes_engine::{Engine, RunEnd, RunError, WorkflowSource};
use spes_store::sqlite::{SqliteOptions, SqliteStore};
use spes_store::{RunStatus, RunStore};

use crate::{inputs, scripted, workflow};

const CHAIN3: &str = r#"
name: chain3
inputs: { topic: { type: string, required: true } }
steps:
  - { name: a, kind: llm, prompt: "About {{ topic }}", output: a }
  - { name: b, kind: llm, prompt: "Improve: {{ a }}", output: b }
  - { name: c, kind: llm, prompt: "Title: {{ b }}", output: c }
"#;

async fn store(dir: &tempfile::TempDir) -> Arc<dyn RunStore> {
    Arc::new(
        SqliteStore::open(&dir.path().join("spes.db"), SqliteOptions::default())
            .await
            .unwrap(),
    )
}

fn source(text: &str) -> WorkflowSource {
    WorkflowSource {
        path: "/tmp/chain3.yaml".into(),
        text: text.into(),
    }
}

#[tokio::test]
async fn a_failed_run_resumes_without_repeating_finished_calls() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let wf = workflow(CHAIN3);
    // b fails once (terminal), then the script is fixed.
    let broken = scripted("- { step: a, reply: A }\n- { step: b, error: invalid_request }");
    let engine = Engine::builder().provider(broken.clone()).build();
    let (id, end) = engine
        .start(
            store.clone(),
            &wf,
            &source(CHAIN3),
            inputs(&[("topic", "t")]),
        )
        .await
        .unwrap();
    let RunEnd::Failed(e) = end else {
        panic!("{end:?}")
    };
    assert_eq!(e.step, "b");
    let run = store.run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert!(
        run.error
            .as_deref()
            .unwrap_or_default()
            .contains("invalid_request")
    );
    assert_eq!(
        store.entries(&id).await.unwrap().len(),
        1,
        "a's answer is committed"
    );

    let fixed = scripted("- { step: b, reply: B }\n- { step: c, reply: C }");
    let engine = Engine::builder().provider(fixed.clone()).build();
    let end = engine
        .resume(store.clone(), &run, &wf, &source(CHAIN3), false)
        .await
        .unwrap();
    let RunEnd::Completed(out) = end else {
        panic!("{end:?}")
    };
    assert_eq!(out.output, Some(json!("C")));
    assert_eq!((out.model_calls, out.replayed), (2, 1));
    let keys: Vec<String> = fixed.calls().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec!["b", "c"], "a was answered from the journal");
    let run = store.run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.output, Some(json!("C")));
    assert_eq!(run.owner, None);

    // Replay: zero calls, identical output.
    let nothing = scripted("- { default: error }");
    let engine = Engine::builder().provider(nothing.clone()).build();
    let r = engine.replay(store.clone(), &run, &wf).await.unwrap();
    assert!(r.identical);
    assert_eq!(r.replayed, 3);
    assert!(nothing.calls().is_empty());

    // Completed runs do not resume.
    let err = engine
        .resume(store.clone(), &run, &wf, &source(CHAIN3), false)
        .await
        .unwrap_err();
    assert!(matches!(err, RunError::Refused(_)), "{err}");
}

#[tokio::test]
async fn parallel_results_come_back_from_the_store_in_declared_order() {
    const PAR: &str = r#"
name: par
steps:
  - name: views
    kind: parallel
    steps:
      - { name: zeta, kind: llm, prompt: "Z" }
      - { name: alpha, kind: llm, prompt: "A" }
      - { name: mid, kind: llm, prompt: "M" }
    output: views
  - { name: check, kind: llm, prompt: "ok?", output: check }
output: views
"#;
    const WANT: &str = r#"{"zeta":"Z","alpha":"A","mid":"M"}"#;
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let wf = workflow(PAR);
    // The step after the parallel fails once: the branches are committed.
    let broken = scripted("- { step: check, error: invalid_request }\n- { default: echo }");
    let (id, end) = Engine::builder()
        .provider(broken)
        .build()
        .start(store.clone(), &wf, &source(PAR), inputs(&[]))
        .await
        .unwrap();
    assert!(matches!(end, RunEnd::Failed(_)), "{end:?}");
    let run = store.run(&id).await.unwrap().unwrap();
    let fixed = scripted("- { default: echo }");
    let end = Engine::builder()
        .provider(fixed.clone())
        .build()
        .resume(store.clone(), &run, &wf, &source(PAR), false)
        .await
        .unwrap();
    let RunEnd::Completed(out) = end else {
        panic!("{end:?}")
    };
    assert_eq!(fixed.calls().len(), 1, "only `check` is asked again");
    assert_eq!(serde_json::to_string(&out.output).unwrap(), WANT);
    // The recorded output and a replay of it keep the order too.
    let run = store.run(&id).await.unwrap().unwrap();
    assert_eq!(serde_json::to_string(&run.output).unwrap(), WANT);
    let r = Engine::builder()
        .provider(scripted("- { default: error }"))
        .build()
        .replay(store.clone(), &run, &wf)
        .await
        .unwrap();
    assert!(r.identical);
    assert_eq!(serde_json::to_string(&r.output).unwrap(), WANT);
}

#[tokio::test]
async fn resume_refuses_a_changed_workflow_and_names_the_first_differing_step() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let wf = workflow(CHAIN3);
    let engine = Engine::builder()
        .provider(scripted(
            "- { step: a, reply: A }\n- { step: b, error: invalid_request }",
        ))
        .build();
    let (id, _) = engine
        .start(
            store.clone(),
            &wf,
            &source(CHAIN3),
            inputs(&[("topic", "t")]),
        )
        .await
        .unwrap();
    let run = store.run(&id).await.unwrap().unwrap();
    let changed = CHAIN3.replace("Improve: {{ a }}", "Make better: {{ a }}");
    let wf2 = workflow(&changed);
    let d = drift(&run, &wf2, &source(&changed)).unwrap();
    assert_eq!(d.first_step.as_deref(), Some("b"));
    let err = engine
        .resume(store.clone(), &run, &wf2, &source(&changed), false)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("the first step that differs is `b`"), "{err}");
    assert!(err.contains("--allow-changes"), "{err}");
    // The override resumes; a's recorded answer is still used.
    let p = scripted("- { default: echo }");
    let engine = Engine::builder().provider(p.clone()).build();
    let end = engine
        .resume(store.clone(), &run, &wf2, &source(&changed), true)
        .await
        .unwrap();
    assert!(matches!(end, RunEnd::Completed(_)));
    assert_eq!(p.calls()[0].1.messages[0].content, "Make better: A");
    assert_eq!(first_differing_step(CHAIN3, CHAIN3), None);
}

#[tokio::test]
async fn a_paused_run_stops_before_its_next_call_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let wf = workflow(CHAIN3);
    let p = scripted("- { default: echo }");
    let engine = Engine::builder().provider(p.clone()).build();
    let (id, _) = engine
        .start(
            store.clone(),
            &wf,
            &source(CHAIN3),
            inputs(&[("topic", "t")]),
        )
        .await
        .unwrap();
    assert_eq!(
        store.run(&id).await.unwrap().unwrap().status,
        RunStatus::Completed
    );

    // A run paused from outside (another process) stops at its next model call.
    let gate = Arc::new(GatedProvider::default());
    let (id2, _) = {
        let engine = Engine::builder().provider(gate.clone()).build();
        let store2 = store.clone();
        let wf2 = wf.clone();
        let task = tokio::spawn(async move {
            engine
                .start(store2, &wf2, &source(CHAIN3), inputs(&[("topic", "t")]))
                .await
        });
        // b's call is in flight (a is committed): pause, then let b answer.
        gate.in_b.notified().await;
        let id = store.list_runs(Some(RunStatus::Running), 10).await.unwrap()[0].id;
        store
            .transition(
                &id,
                &[RunStatus::Running],
                RunStatus::Paused,
                spes_store::RunPatch::default(),
            )
            .await
            .unwrap();
        gate.release_b.notify_one();
        let (rid, end) = task.await.unwrap().unwrap();
        assert_eq!(rid, id);
        assert!(matches!(end, RunEnd::Paused), "{end:?}");
        (rid, end)
    };
    let run = store.run(&id2).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Paused);
    // b finished before the pause was seen: it is committed; c was not called.
    assert_eq!(store.entries(&id2).await.unwrap().len(), 2);
    // The resume uses the provider the run was started with (by name).
    let p = Arc::new(
        spes_llm::scripted::ScriptedProvider::parse("gated", "answers.yaml", "- { default: echo }")
            .unwrap(),
    );
    let engine = Engine::builder().provider(p.clone()).build();
    let end = engine
        .resume(store.clone(), &run, &wf, &source(CHAIN3), false)
        .await
        .unwrap();
    assert!(matches!(end, RunEnd::Completed(_)));
    assert_eq!(p.calls().len(), 1, "only c");
}

/// Answers every step at once, except `b`, which waits until released.
#[derive(Debug, Default)]
struct GatedProvider {
    in_b: tokio::sync::Notify,
    release_b: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl spes_llm::Provider for GatedProvider {
    fn name(&self) -> &str {
        "gated"
    }
    fn kind(&self) -> &'static str {
        "scripted"
    }
    fn default_model(&self) -> Option<&str> {
        None
    }
    async fn complete(
        &self,
        _req: &spes_core::message::ChatRequest,
        cx: &spes_llm::CallContext,
    ) -> Result<spes_core::message::ChatResponse, spes_llm::ProviderError> {
        if cx.step_key == "b" {
            self.in_b.notify_one();
            self.release_b.notified().await;
        }
        Ok(spes_core::message::ChatResponse {
            text: format!("{} done", cx.step_key),
            stop_reason: spes_core::message::StopReason::EndTurn,
            usage: spes_core::message::Usage::default(),
            model: None,
            request_id: None,
            latency_ms: 0,
            tool_calls: Vec::new(),
        })
    }
}

// ---- issue 11: a commit the store refuses stops the run there ----

/// A chain of `n` steps with long answers and a retry policy on every step
/// (which must not retry a store failure).
fn long_chain(n: usize) -> (String, String) {
    let mut yaml =
        String::from("name: long\ninputs: { topic: { type: string, required: true } }\nsteps:\n");
    let mut script = String::new();
    for i in 1..=n {
        yaml.push_str(&format!(
            "  - {{ name: s{i}, kind: llm, prompt: \"[s{i}] {{{{ topic }}}}\", output: s{i}, retry: {{ attempts: 3, base: 1ms }} }}\n"
        ));
        script.push_str(&format!(
            "- {{ step: s{i}, reply: \"{}\" }}\n",
            "z".repeat(3000)
        ));
    }
    (yaml, script)
}

/// Checks a run that a refused commit stopped: the error is of class
/// store at the first unrecorded step, earlier entries are intact, and no
/// call was made after (or repeated for) the failed commit.
async fn stopped_by_the_store(
    store: &Arc<dyn RunStore>,
    provider: &spes_llm::scripted::ScriptedProvider,
    id: spes_store::RunId,
    end: RunEnd,
) -> usize {
    let RunEnd::Failed(e) = end else {
        panic!("expected a failed run, got {end:?}")
    };
    assert!(e.is_store(), "error class store: {e}");
    assert!(
        e.to_string().contains("did not commit"),
        "the message says so: {e}"
    );
    let keys: Vec<String> = store
        .entries(&id)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "model")
        .map(|e| e.key)
        .collect();
    let k = keys.len();
    let prefix: Vec<String> = (1..=k).map(|i| format!("s{i}")).collect();
    assert_eq!(keys, prefix, "earlier entries intact");
    // Either the model call's entry failed to commit (the call was made,
    // its answer not used), or the policy's `#served` record after it.
    let calls = provider.calls().len();
    if e.step == format!("s{}", k + 1) {
        assert_eq!(calls, k + 1, "no retry, no later step");
    } else {
        assert_eq!(e.step, format!("s{k}"), "stopped at the failed commit");
        assert_eq!(calls, k, "no later step");
    }
    k
}

#[tokio::test]
async fn a_full_sqlite_store_stops_the_run_at_the_step_it_cannot_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn RunStore> = Arc::new(
        SqliteStore::open(
            &dir.path().join("spes.db"),
            SqliteOptions::default().with_max_pages(48),
        )
        .await
        .unwrap(),
    );
    let (yaml, script) = long_chain(60);
    let wf = workflow(&yaml);
    let p = scripted(&script);
    let engine = Engine::builder().provider(p.clone()).build();
    let (id, end) = engine
        .start(
            store.clone(),
            &wf,
            &source(&yaml),
            inputs(&[("topic", "t")]),
        )
        .await
        .unwrap();
    let k = stopped_by_the_store(&store, &p, id, end).await;
    assert!(k > 2 && k < 60, "the store filled mid-run ({k})");
}

#[tokio::test]
async fn a_postgres_commit_that_fails_stops_the_run_at_that_step() {
    let schema = spes_store::testing::postgres::TestSchema::new().await;
    let pg = spes_store::postgres::PostgresStore::connect(
        schema.url(),
        spes_store::postgres::PostgresOptions::default(),
    )
    .await
    .unwrap();
    // A deferred constraint trigger refuses the entry of s3 at COMMIT time
    // (after the INSERT succeeded): the commit's own result must be seen.
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(schema.url())
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_s3() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.key = 's3' THEN RAISE EXCEPTION 'refused at commit'; END IF; RETURN NULL; END $$; \
         CREATE CONSTRAINT TRIGGER refuse_s3_at_commit AFTER INSERT ON entries \
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_s3();",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let store: Arc<dyn RunStore> = Arc::new(pg);
    let (yaml, script) = long_chain(6);
    let wf = workflow(&yaml);
    let p = scripted(&script);
    let engine = Engine::builder().provider(p.clone()).build();
    let (id, end) = engine
        .start(
            store.clone(),
            &wf,
            &source(&yaml),
            inputs(&[("topic", "t")]),
        )
        .await
        .unwrap();
    assert_eq!(stopped_by_the_store(&store, &p, id, end).await, 2);
    let run = store.run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Failed, "the failure is recorded");
    assert!(
        run.error.unwrap_or_default().contains("refused at commit"),
        "naming the cause"
    );
}

#[tokio::test]
async fn prompts_are_re_rendered_from_the_journal_as_far_as_it_goes() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let wf = workflow(CHAIN3);
    // b fails: the journal holds a only.
    let broken = scripted("- { step: a, reply: Alpha }\n- { step: b, error: invalid_request }");
    let (id, end) = Engine::builder()
        .provider(broken)
        .build()
        .start(
            store.clone(),
            &wf,
            &source(CHAIN3),
            inputs(&[("topic", "owls")]),
        )
        .await
        .unwrap();
    assert!(matches!(end, RunEnd::Failed(_)), "{end:?}");
    let run = store.run(&id).await.unwrap().unwrap();
    let nothing = scripted("- { default: error }");
    let engine = Engine::builder().provider(nothing.clone()).build();
    let p = engine.prompts(store.clone(), &run, &wf).await.unwrap();
    // a, with its answer; b as the workflow would ask it, unanswered.
    assert_eq!(p.len(), 2, "{p:?}");
    assert_eq!(p[0].key, "a");
    assert_eq!(p[0].messages[0].role, "user");
    assert_eq!(p[0].messages[0].content, "About owls");
    assert_eq!(p[0].answer.as_deref(), Some("Alpha"));
    assert_eq!(p[1].key, "b");
    assert_eq!(p[1].messages[0].content, "Improve: Alpha");
    assert_eq!(p[1].answer, None);
    assert!(nothing.calls().is_empty(), "no model was called");
}
