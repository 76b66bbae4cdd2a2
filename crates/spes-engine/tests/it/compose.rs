//! Composition: reusable step definitions and sub-workflows.

use std::sync::Arc;

use serde_json::json;
use spes_core::component::ComponentRegistry;
use spes_core::workflow::{ValidateEnv, Workflow, parse_workflow, validate};
use spes_engine::durable::drift;
use spes_engine::{Engine, RunEnd, WorkflowSource};
use spes_store::RunStore;
use spes_store::sqlite::{SqliteOptions, SqliteStore};

use crate::{inputs, scripted};

const CHILD: &str = r#"
name: summarize
inputs:
  text: { type: string, required: true }
  style: { type: string, default: plain }
steps:
  - { name: sum, kind: llm, prompt: "Summarise ({{ style }}): {{ text }}", output: s }
  - { name: shout, kind: transform, fn: uppercase, input: "{{ s }}", output: loud }
output: loud
"#;

const PARENT: &str = r#"
name: parent
inputs: { doc: { type: string, required: true } }
definitions:
  tidy: { kind: transform, fn: trim, input: "{{ doc }}" }
steps:
  - { name: clean, use: tidy, output: cleaned }
  - name: child
    kind: workflow
    path: child.yaml
    inputs: { text: "{{ cleaned }}" }
    output: summary
  - { name: again, use: tidy, output: again }
output: summary
"#;

fn load(dir: &std::path::Path, file: &str) -> Result<Workflow, String> {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let shown = path.display().to_string();
    let spec = parse_workflow(&shown, &text).map_err(|d| d.render_plain())?;
    let reg = ComponentRegistry::from_components(vec![]);
    let env = ValidateEnv {
        components: &reg,
        providers: None,
    };
    validate(spec, &shown, &text, &env)
        .map(|(w, _)| w)
        .map_err(|d| d.render_plain())
}

#[tokio::test]
async fn definitions_and_sub_workflows_run_with_their_own_context_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("child.yaml"), CHILD).unwrap();
    std::fs::write(dir.path().join("parent.yaml"), PARENT).unwrap();
    let wf = load(dir.path(), "parent.yaml").unwrap();
    let keys: Vec<String> = wf.walk().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        vec!["clean", "child", "child/sum", "child/shout", "again"]
    );
    assert_eq!(wf.children.len(), 1);
    let p = scripted("- { step: child/sum, reply: 'short version' }");
    let engine = Engine::builder().provider(p.clone()).build();
    let out = engine
        .run(&wf, inputs(&[("doc", "  the doc  ")]))
        .await
        .unwrap();
    assert_eq!(out.output, Some(json!("SHORT VERSION")));
    assert_eq!(
        p.calls()[0].1.messages[0].content,
        "Summarise (plain): the doc"
    );
    // The child's keys do not leak into the parent's context.
    assert!(out.context.get("s").is_none() && out.context.get("loud").is_none());
    assert_eq!(out.context["again"], json!("the doc"));
}

#[tokio::test]
async fn a_changed_sub_workflow_is_named_at_resume() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("child.yaml"), CHILD).unwrap();
    std::fs::write(dir.path().join("parent.yaml"), PARENT).unwrap();
    let wf = load(dir.path(), "parent.yaml").unwrap();
    let store: Arc<dyn RunStore> = Arc::new(
        SqliteStore::open(&dir.path().join("s.db"), SqliteOptions::default())
            .await
            .unwrap(),
    );
    let engine = Engine::builder()
        .provider(scripted("- { step: child/sum, error: invalid_request }"))
        .build();
    let source = WorkflowSource {
        path: dir.path().join("parent.yaml").display().to_string(),
        text: PARENT.into(),
    };
    let (id, end) = engine
        .start(store.clone(), &wf, &source, inputs(&[("doc", "d")]))
        .await
        .unwrap();
    assert!(matches!(end, RunEnd::Failed(_)));
    std::fs::write(
        dir.path().join("child.yaml"),
        CHILD.replace("Summarise", "Condense"),
    )
    .unwrap();
    let wf2 = load(dir.path(), "parent.yaml").unwrap();
    let run = store.run(&id).await.unwrap().unwrap();
    let d = drift(&run, &wf2, &source).unwrap();
    assert_eq!(d.first_step.as_deref(), Some("child"), "{d}");
}

#[test]
fn composition_errors_point_at_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("child.yaml"), CHILD).unwrap();
    // A cycle.
    std::fs::write(
        d.join("a.yaml"),
        "name: a\nsteps:\n  - { name: b, kind: workflow, path: b.yaml }\n",
    )
    .unwrap();
    std::fs::write(
        d.join("b.yaml"),
        "name: b\nsteps:\n  - { name: a, kind: workflow, path: a.yaml }\n",
    )
    .unwrap();
    let e = load(d, "a.yaml").unwrap_err();
    assert!(e.contains("spes::workflow::workflow_cycle"), "{e}");
    // Unknown and missing inputs.
    std::fs::write(
        d.join("p.yaml"),
        "name: p\nsteps:\n  - { name: c, kind: workflow, path: child.yaml, inputs: { txt: hi } }\n",
    )
    .unwrap();
    let e = load(d, "p.yaml").unwrap_err();
    assert!(e.contains("p.yaml:3:65: error[spes::workflow::unknown_input]: step `c`: child.yaml declares no input `txt`"), "{e}");
    assert!(
        e.contains("error[spes::workflow::missing_input]: step `c`: child.yaml needs input `text`"),
        "{e}"
    );
    // Unknown definition; extra fields beside `use`.
    std::fs::write(d.join("q.yaml"), "name: q\ndefinitions:\n  t: { kind: transform, fn: trim, input: x }\nsteps:\n  - { name: a, use: nope }\n  - { name: b, use: t, fn: lowercase }\n").unwrap();
    let e = load(d, "q.yaml").unwrap_err();
    assert!(e.contains("q.yaml:5:21: error[spes::workflow::unknown_definition]: `use: nope` names no definition"), "{e}");
    assert!(e.contains("error[spes::workflow::use_with_fields]"), "{e}");
    // A missing file.
    std::fs::write(
        d.join("r.yaml"),
        "name: r\nsteps:\n  - { name: c, kind: workflow, path: nowhere.yaml }\n",
    )
    .unwrap();
    assert!(load(d, "r.yaml").unwrap_err().contains("cannot read"));
}

const GATED_CHILD: &str = r#"
name: gated
inputs: { doc: { type: string, required: true } }
steps:
  - name: gate
    kind: quality_gate
    step:
      name: brief
      kind: workflow
      path: child.yaml
      inputs: { text: "{{ doc }}{{ feedback }}", style: "try {{ attempt }}" }
    evaluator: { checks: [ { contains: SHORT } ] }
    output: gate
output: gate
"#;

#[tokio::test]
async fn a_quality_gate_around_a_sub_workflow_retries_it_and_resumes_without_repeating_calls() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("child.yaml"), CHILD).unwrap();
    std::fs::write(dir.path().join("gated.yaml"), GATED_CHILD).unwrap();
    let wf = load(dir.path(), "gated.yaml").unwrap();
    let keys: Vec<String> = wf.walk().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        vec![
            "gate",
            "gate/attempt*/brief",
            "gate/attempt*/brief/sum",
            "gate/attempt*/brief/shout"
        ]
    );
    assert_eq!(wf.children.len(), 1, "the child file is pinned");
    let script = "- { step: attempt1/brief/sum, reply: 'a long version' }\n- { step: attempt2/brief/sum, reply: 'short' }";

    // The second attempt fails at its model call; the first is committed.
    let store: Arc<dyn RunStore> = Arc::new(
        SqliteStore::open(&dir.path().join("s.db"), SqliteOptions::default())
            .await
            .unwrap(),
    );
    let source = WorkflowSource {
        path: dir.path().join("gated.yaml").display().to_string(),
        text: GATED_CHILD.into(),
    };
    let broken = scripted(&format!(
        "- {{ step: attempt2/brief/sum, error: invalid_request }}\n{script}"
    ));
    let (id, end) = Engine::builder()
        .provider(broken)
        .build()
        .start(store.clone(), &wf, &source, inputs(&[("doc", "d")]))
        .await
        .unwrap();
    let RunEnd::Failed(e) = end else {
        panic!("{end:?}")
    };
    assert_eq!(e.step, "gate/attempt2/brief/sum");
    let run = store.run(&id).await.unwrap().unwrap();
    let fixed = scripted(script);
    let end = Engine::builder()
        .provider(fixed.clone())
        .build()
        .resume(store.clone(), &run, &wf, &source, false)
        .await
        .unwrap();
    let RunEnd::Completed(out) = end else {
        panic!("{end:?}")
    };
    let asked: Vec<String> = fixed.calls().into_iter().map(|(k, _)| k).collect();
    assert_eq!(asked, ["gate/attempt2/brief/sum"], "attempt 1 replays");
    let gate = out.output.unwrap();
    assert_eq!(
        (gate["passed"].clone(), gate["attempts"].clone()),
        (json!(true), json!(2))
    );
    assert_eq!(gate["output"], json!("SHORT"));
    assert_eq!(gate["history"][0]["output"], json!("A LONG VERSION"));
    // The child got the attempt and the gate's feedback through its inputs.
    let second = &fixed.calls()[0].1.messages[0].content;
    assert!(
        second.starts_with(
            "Summarise (try 2): d\n\nPrevious attempt (quality: 0.0):\nA LONG VERSION"
        ),
        "{second}"
    );
}
