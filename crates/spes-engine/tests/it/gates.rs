//! Human gates: approval, choose, sections; detached (store) and interactive (reviewer).

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use spes_engine::{Engine, GateRequest, Reviewer, RunEnd, WorkflowSource};
use spes_store::sqlite::{SqliteOptions, SqliteStore};
use spes_store::{Decided, GateFilter, RunStatus, RunStore};

use crate::{inputs, scripted, workflow};

async fn store(dir: &tempfile::TempDir) -> Arc<dyn RunStore> {
    Arc::new(
        SqliteStore::open(&dir.path().join("spes.db"), SqliteOptions::default())
            .await
            .unwrap(),
    )
}

fn source(text: &str) -> WorkflowSource {
    WorkflowSource {
        path: "/tmp/w.yaml".into(),
        text: text.into(),
    }
}

const APPROVE: &str = r#"
name: signoff
inputs: { topic: { type: string, required: true } }
steps:
  - { name: draft, kind: llm, prompt: "Draft about {{ topic }}", output: draft }
  - { name: review, kind: approval, show: draft, max_revisions: 2, output: final }
  - { name: out, kind: transform, fn: template, input: "{{ final.status }}: {{ final.output }}", output: out }
output: out
"#;

#[tokio::test]
async fn approval_suspends_then_revises_then_approves_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(&dir).await;
    let wf = workflow(APPROVE);
    let p = scripted("- { step: draft, reply: 'v1' }\n- { step: revision1, reply: 'v2' }");
    let engine = Engine::builder().provider(p.clone()).build();
    let (id, end) = engine
        .start(st.clone(), &wf, &source(APPROVE), inputs(&[("topic", "x")]))
        .await
        .unwrap();
    let RunEnd::Waiting(gates) = end else {
        panic!("{end:?}")
    };
    assert_eq!(gates, vec!["review/review0".to_owned()]);
    let run = st.run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Waiting);
    let open = st
        .gates(&GateFilter {
            run_id: Some(id),
            pending_only: true,
        })
        .await
        .unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].request["text"], json!("v1"));

    // A human asks for a revision (from another process, in real life).
    let d = json!({ "action": "revise", "comments": "shorter", "suggest": "drop the intro" });
    assert_eq!(
        st.decide_gate(&id, "review/review0", &d).await.unwrap(),
        Decided::Now
    );
    // A second answer is refused with the first shown.
    let again = st
        .decide_gate(&id, "review/review0", &json!({ "action": "approve" }))
        .await
        .unwrap();
    assert!(
        matches!(again, Decided::Already { ref decision, .. } if decision["action"] == "revise")
    );

    // A fresh engine (a restart) resumes: the revision is generated from the feedback.
    let engine = Engine::builder().provider(p.clone()).build();
    let end = engine
        .resume(st.clone(), &run, &wf, &source(APPROVE), false)
        .await
        .unwrap();
    assert_eq!(
        match end {
            RunEnd::Waiting(g) => g,
            other => panic!("{other:?}"),
        },
        vec!["review/review1".to_owned()]
    );
    let calls = p.calls();
    let revision_prompt = &calls.last().unwrap().1.messages[0].content;
    assert!(
        revision_prompt.contains("v1")
            && revision_prompt.contains("shorter")
            && revision_prompt.contains("drop the intro"),
        "{revision_prompt}"
    );

    st.decide_gate(
        &id,
        "review/review1",
        &json!({ "action": "approve", "comments": "good" }),
    )
    .await
    .unwrap();
    let run = st.run(&id).await.unwrap().unwrap();
    let end = engine
        .resume(st.clone(), &run, &wf, &source(APPROVE), false)
        .await
        .unwrap();
    let RunEnd::Completed(out) = end else {
        panic!("{end:?}")
    };
    assert_eq!(out.output, Some(json!("approved: v2")));
    assert_eq!(out.context["final"]["revisions"], json!(1));
    assert_eq!(
        out.context["final"]["history"][0]["comments"],
        json!("shorter")
    );
    assert_eq!(
        p.calls().len(),
        2,
        "draft and one revision: nothing repeated"
    );
}

#[tokio::test]
async fn a_deadline_already_past_at_resume_takes_the_timeout_path_once() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(&dir).await;
    let yaml = APPROVE.replace(
        "max_revisions: 2,",
        "max_revisions: 2, deadline: 3d, on_timeout: approve,",
    );
    let wf = workflow(&yaml);
    let t0: i64 = 1_800_000_000_000;
    let at = |ms: i64| -> spes_engine::Clock { Arc::new(move || ms) };
    let engine = Engine::builder()
        .provider(scripted("- { default: echo }"))
        .clock(at(t0))
        .build();
    let (id, end) = engine
        .start(st.clone(), &wf, &source(&yaml), inputs(&[("topic", "x")]))
        .await
        .unwrap();
    assert!(matches!(end, RunEnd::Waiting(_)), "{end:?}");
    let gate = &st
        .gates(&GateFilter {
            run_id: Some(id),
            pending_only: true,
        })
        .await
        .unwrap()[0];
    assert_eq!(
        gate.deadline.unwrap().timestamp_millis(),
        t0 + 3 * 86_400_000
    );

    // Two days later: still waiting.
    let run = st.run(&id).await.unwrap().unwrap();
    let later = Engine::builder()
        .provider(scripted("- { default: echo }"))
        .clock(at(t0 + 2 * 86_400_000))
        .build();
    assert!(matches!(
        later
            .resume(st.clone(), &run, &wf, &source(&yaml), false)
            .await
            .unwrap(),
        RunEnd::Waiting(_)
    ));

    // Four days later the resume takes the timeout path.
    let run = st.run(&id).await.unwrap().unwrap();
    let late = Engine::builder()
        .provider(scripted("- { default: echo }"))
        .clock(at(t0 + 4 * 86_400_000))
        .build();
    let RunEnd::Completed(out) = late
        .resume(st.clone(), &run, &wf, &source(&yaml), false)
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(out.output, Some(json!("approved: Draft about x")));
    let gates = st
        .gates(&GateFilter {
            run_id: Some(id),
            pending_only: false,
        })
        .await
        .unwrap();
    assert_eq!(gates[0].decision.as_ref().unwrap()["by"], json!("deadline"));
    let decisions = st
        .entries(&id)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "decision")
        .count();
    assert_eq!(
        decisions, 1,
        "the timeout decision is recorded exactly once"
    );
    // A human answering afterwards is refused with the deadline's decision.
    let late_answer = st
        .decide_gate(&id, "review/review0", &json!({ "action": "reject" }))
        .await
        .unwrap();
    assert!(
        matches!(late_answer, Decided::Already { ref decision, .. } if decision["by"] == "deadline")
    );
}

#[tokio::test]
async fn two_parallel_gates_are_answered_independently_by_id() {
    let yaml = r#"
name: two
steps:
  - name: both
    kind: parallel
    output: both
    steps:
      - { name: left, kind: approval, show: a_text }
      - { name: right, kind: approval, show: b_text }
inputs:
  a_text: { type: string, default: A }
  b_text: { type: string, default: B }
"#;
    let dir = tempfile::tempdir().unwrap();
    let st = store(&dir).await;
    let wf = workflow(yaml);
    let engine = Engine::builder()
        .provider(scripted("- { default: echo }"))
        .build();
    let (id, end) = engine
        .start(st.clone(), &wf, &source(yaml), Default::default())
        .await
        .unwrap();
    let RunEnd::Waiting(mut gates) = end else {
        panic!("{end:?}")
    };
    gates.sort();
    assert_eq!(
        gates,
        vec![
            "both/left/review0".to_owned(),
            "both/right/review0".to_owned()
        ]
    );
    st.decide_gate(
        &id,
        "both/right/review0",
        &json!({ "action": "reject", "comments": "no" }),
    )
    .await
    .unwrap();
    let run = st.run(&id).await.unwrap().unwrap();
    let end = engine
        .resume(st.clone(), &run, &wf, &source(yaml), false)
        .await
        .unwrap();
    assert!(
        matches!(end, RunEnd::Waiting(ref g) if g == &vec!["both/left/review0".to_owned()]),
        "{end:?}"
    );
    st.decide_gate(&id, "both/left/review0", &json!({ "action": "approve" }))
        .await
        .unwrap();
    let run = st.run(&id).await.unwrap().unwrap();
    let RunEnd::Completed(out) = engine
        .resume(st.clone(), &run, &wf, &source(yaml), false)
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(
        out.output.as_ref().unwrap()["left"]["status"],
        json!("approved")
    );
    assert_eq!(
        out.output.as_ref().unwrap()["right"]["status"],
        json!("rejected")
    );
    let stored = st.run(&id).await.unwrap().unwrap().output.unwrap();
    assert_eq!(Some(stored), out.output);
}

#[tokio::test]
async fn racing_approve_and_reject_exactly_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(&dir).await;
    let wf = workflow(APPROVE);
    let engine = Engine::builder()
        .provider(scripted("- { default: echo }"))
        .build();
    let (id, _) = engine
        .start(st.clone(), &wf, &source(APPROVE), inputs(&[("topic", "x")]))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let st = st.clone();
        tasks.push(tokio::spawn(async move {
            let d = if i % 2 == 0 {
                json!({ "action": "approve" })
            } else {
                json!({ "action": "reject" })
            };
            st.decide_gate(&id, "review/review0", &d).await.unwrap()
        }));
    }
    let mut now = 0;
    for t in tasks {
        if t.await.unwrap() == Decided::Now {
            now += 1;
        }
    }
    assert_eq!(now, 1);
}

/// Answers from a list, recording what it was asked.
struct Canned(Mutex<Vec<Value>>, Mutex<Vec<GateRequest>>);

#[async_trait::async_trait]
impl Reviewer for Canned {
    async fn review(&self, gate: &GateRequest) -> Option<Value> {
        self.1.lock().unwrap().push(gate.clone());
        let mut v = self.0.lock().unwrap();
        if v.is_empty() {
            None
        } else {
            Some(v.remove(0))
        }
    }
}

#[tokio::test]
async fn interactive_choose_and_sections() {
    let yaml = r#"
name: pick
steps:
  - name: tagline
    kind: choose
    n: 3
    generate: { kind: llm, prompt: "A tagline for spes" }
    output: tag
  - name: doc
    kind: sections
    outline: [Intro, Design]
    section: { kind: llm, prompt: "Write {{ section }}. Before: {{ previous }}" }
    output: doc
"#;
    let wf = workflow(yaml);
    let reviewer = Arc::new(Canned(
        Mutex::new(vec![
            json!({ "action": "choose", "choice": 2 }),
            json!({ "action": "approve" }),
            json!({ "action": "revise", "comments": "more detail" }),
            json!({ "action": "approve" }),
        ]),
        Mutex::default(),
    ));
    let p = scripted("- { default: echo }");
    let engine = Engine::builder()
        .provider(p.clone())
        .reviewer(reviewer.clone())
        .build();
    let out = engine.run(&wf, Default::default()).await.unwrap();
    assert_eq!(out.context["tag"]["selected_index"], json!(2));
    assert_eq!(
        out.context["tag"]["selected"],
        json!("A tagline for spes\n\n(Generate variation 2 of 3, making it unique.)")
    );
    assert_eq!(out.context["doc"]["status"], json!("complete"));
    let doc = out.context["doc"]["document"].as_str().unwrap();
    assert!(
        doc.starts_with("Write Intro. Before: \n\nWrite Design. Before: Write Intro."),
        "{doc}"
    );
    assert!(doc.contains("Feedback: more detail"), "{doc}");
    let asked: Vec<String> = reviewer
        .1
        .lock()
        .unwrap()
        .iter()
        .map(|g| g.key.clone())
        .collect();
    assert_eq!(
        asked,
        vec![
            "tagline/pick",
            "doc/s1/review",
            "doc/s2/review",
            "doc/s2/review2"
        ]
    );
    assert_eq!(p.calls().len(), 3 + 2 + 1);

    // A rejected section stops with the partial document.
    let reviewer = Arc::new(Canned(
        Mutex::new(vec![
            json!({ "action": "choose", "choice": 1 }),
            json!({ "action": "approve" }),
            json!({ "action": "reject" }),
        ]),
        Mutex::default(),
    ));
    let engine = Engine::builder()
        .provider(scripted("- { default: echo }"))
        .reviewer(reviewer)
        .build();
    let out = engine.run(&wf, Default::default()).await.unwrap();
    assert_eq!(out.context["doc"]["status"], json!("rejected"));
    assert_eq!(out.context["doc"]["failed_at"], json!("Design"));
    assert_eq!(out.context["doc"]["completed_sections"], json!(["Intro"]));
}

/// A whole gate flow through the engine's API alone (what every front door
/// calls): start, list what waits, decide with a reviewer's name, resume;
/// a cancel that closes the gates; a deadline applied without a human.
#[tokio::test]
async fn a_gate_flow_through_the_engine_api_alone() {
    use chrono::{TimeZone, Utc};
    use spes_engine::ops::{self, Decision, OpError};
    let dir = tempfile::tempdir().unwrap();
    let st = store(&dir).await;
    let yaml = APPROVE.replace(
        "max_revisions: 2,",
        "max_revisions: 2, deadline: 1h, on_timeout: approve,",
    );
    let wf = workflow(&yaml);
    let t0: i64 = 1_800_000_000_000;
    let at = |ms: i64| -> spes_engine::Clock { Arc::new(move || ms) };
    let now = |ms: i64| Utc.timestamp_millis_opt(ms).unwrap();
    let engine = Engine::builder()
        .provider(scripted("- { default: echo }"))
        .clock(at(t0))
        .build();
    async fn start(
        e: &Engine,
        st: &Arc<dyn RunStore>,
        wf: &spes_core::workflow::Workflow,
        yaml: &str,
    ) -> spes_store::RunId {
        let (id, end) = e
            .start(st.clone(), wf, &source(yaml), inputs(&[("topic", "x")]))
            .await
            .unwrap();
        assert!(matches!(end, RunEnd::Waiting(_)), "{end:?}");
        id
    }

    // 1. Decided by a named reviewer, then resumed.
    let a = start(&engine, &st, &wf, &yaml).await;
    let waiting = ops::pending(st.as_ref(), None, now(t0)).await.unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].key, "review/review0");
    assert_eq!(waiting[0].request["on_timeout"], json!("approve"));
    // An answer the gate does not take is refused, naming what it takes.
    let e = ops::decide(
        &st,
        &a.to_string(),
        None,
        &Decision::Choose { n: 1 },
        "ada",
        now(t0),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, OpError::Refused(ref m) if m.contains("`choose` answers choose gates")),
        "{e}"
    );
    let r = ops::decide(
        &st,
        &a.to_string()[..8],
        None,
        &Decision::Approve {
            comments: "fine".into(),
        },
        "ada",
        now(t0),
    )
    .await
    .unwrap();
    assert_eq!(
        (r.run, r.gate.as_str(), r.queued),
        (a, "review/review0", false)
    );
    let gate = &st
        .gates(&GateFilter {
            run_id: Some(a),
            pending_only: false,
        })
        .await
        .unwrap()[0];
    assert_eq!(
        gate.decision,
        Some(json!({ "action": "approve", "comments": "fine", "by": "ada" }))
    );
    let run = st.run(&a).await.unwrap().unwrap();
    let RunEnd::Completed(out) = engine
        .resume(st.clone(), &run, &wf, &source(&yaml), false)
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(out.context["final"]["timed_out"], json!(false));

    // 2. Cancelled: the gate is closed and leaves the pending list.
    let b = start(&engine, &st, &wf, &yaml).await;
    let c = ops::cancel(st.as_ref(), &b.to_string()).await.unwrap();
    assert_eq!(c.after.status, RunStatus::Cancelled);
    assert_eq!(c.closed, ["review/review0"]);
    assert!(
        ops::pending(st.as_ref(), Some(&b), now(t0))
            .await
            .unwrap()
            .is_empty()
    );
    let e = ops::decide(
        &st,
        &b.to_string(),
        None,
        &Decision::Approve {
            comments: String::new(),
        },
        "ada",
        now(t0),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, OpError::Refused(ref m) if m.contains("is closed: the run was cancelled")),
        "{e}"
    );
    // A cancelled run cannot be paused.
    assert!(ops::pause(st.as_ref(), &b.to_string()).await.is_err());

    // 3. The deadline passes: applied without a human, exactly once; a
    //    late answer is refused; the result says it timed out.
    let d = start(&engine, &st, &wf, &yaml).await;
    assert!(
        ops::apply_deadlines(st.as_ref(), None, now(t0 + 3_599_000))
            .await
            .unwrap()
            .is_empty()
    );
    let fired = ops::apply_deadlines(st.as_ref(), None, now(t0 + 3_600_000))
        .await
        .unwrap();
    assert_eq!(fired.len(), 1);
    assert_eq!((fired[0].run, fired[0].action.as_str()), (d, "approve"));
    assert!(
        ops::apply_deadlines(st.as_ref(), None, now(t0 + 3_700_000))
            .await
            .unwrap()
            .is_empty()
    );
    let e = ops::decide(
        &st,
        &d.to_string(),
        None,
        &Decision::Reject {
            reason: "late".into(),
        },
        "ada",
        now(t0 + 3_700_000),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, OpError::Refused(ref m) if m.contains("was decided by its deadline")),
        "{e}"
    );
    let run = st.run(&d).await.unwrap().unwrap();
    let RunEnd::Completed(out) = engine
        .resume(st.clone(), &run, &wf, &source(&yaml), false)
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(out.context["final"]["status"], json!("approved"));
    assert_eq!(out.context["final"]["timed_out"], json!(true));
}
