//! `kind: agent` on the scripted provider: tools registered in Rust and
//! http tools against a local stub, every turn and tool call journaled.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use spes_engine::tool::FnTool;
use spes_engine::{Effect, Engine, MemoryJournal, RunEnd, WorkflowSource};
use spes_store::sqlite::{SqliteOptions, SqliteStore};
use spes_store::{RunStatus, RunStore};

use crate::{scripted, workflow};

/// An `add` tool that counts its calls.
pub(crate) fn adder(calls: Arc<AtomicUsize>) -> Arc<FnTool> {
    Arc::new(FnTool::new(
        "add",
        "Adds a and b",
        json!({
            "type": "object",
            "properties": { "a": { "type": "number" }, "b": { "type": "number" } },
            "required": ["a", "b"]
        }),
        move |args: Value| {
            let calls = calls.clone();
            Box::pin(async move {
                calls.fetch_add(1, Ordering::SeqCst);
                match (args["a"].as_i64(), args["b"].as_i64()) {
                    (Some(a), Some(b)) => Ok((a + b).to_string()),
                    _ => Err("a and b must be numbers".to_owned()),
                }
            })
        },
    ))
}

/// A weather service on a loopback port: `GET /weather/CITY` answers JSON.
async fn weather() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = axum::Router::new().route(
        "/weather/{city}",
        axum::routing::get(
            move |axum::extract::Path(city): axum::extract::Path<String>| {
                let h = h.clone();
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    axum::Json(json!({ "city": city, "sky": "sunny" }))
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), hits)
}

fn agent_yaml(base: &str) -> String {
    format!(
        r#"
name: helper
inputs: {{ city: {{ type: string, default: Paris }} }}
steps:
  - name: plan
    kind: agent
    prompt: "Add 2 and 3, and tell me the weather in {{{{ city }}}}."
    tools:
      - add
      - http:
          name: weather
          description: The weather in a city
          parameters: {{ type: object, properties: {{ city: {{ type: string }} }}, required: [city] }}
          url: "{base}/weather/{{{{ args.city }}}}"
    max_turns: 4
    output: answer
"#
    )
}

const SCRIPT: &str = r#"
- { step: "plan/turn[1]", tool_calls: [{ name: add, arguments: { a: 2, b: 3 } }, { name: weather, arguments: { city: Paris } }] }
- { step: "plan/turn[2]", reply: "5, and sunny in Paris." }
"#;

#[tokio::test]
async fn an_agent_calls_rust_and_http_tools_and_answers_with_their_results() {
    let (base, hits) = weather().await;
    let adds = Arc::new(AtomicUsize::new(0));
    let provider = scripted(SCRIPT);
    let engine = Engine::builder()
        .provider(provider.clone())
        .tool(adder(adds.clone()))
        .build();
    let journal = Arc::new(MemoryJournal::default());
    let out = engine
        .run_with_journal(
            &workflow(&agent_yaml(&base)),
            BTreeMap::new(),
            journal.clone(),
        )
        .await
        .unwrap();
    assert_eq!(out.output, Some(json!("5, and sunny in Paris.")));
    assert_eq!(
        (adds.load(Ordering::SeqCst), hits.load(Ordering::SeqCst)),
        (1, 1)
    );
    let calls = provider.calls();
    let keys: Vec<&str> = calls.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["plan/turn[1]", "plan/turn[2]"]);
    // Both turns offered both tools; the second carried the calls and their results.
    let names: Vec<&str> = calls[0].1.tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["add", "weather"]);
    let second = &calls[1].1;
    let results = &second.messages.last().unwrap().tool_results;
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].content, "5");
    assert!(!results[0].is_error);
    let weather: Value = serde_json::from_str(&results[1].content).unwrap();
    assert_eq!(weather, json!({ "city": "Paris", "sky": "sunny" }));
    let assistant = &second.messages[second.messages.len() - 2];
    assert_eq!(assistant.tool_calls.len(), 2);
    assert_eq!(results[0].call_id, assistant.tool_calls[0].id);
    // Journal: two model turns and two tool calls, under stable keys.
    let entries = journal.entries();
    let mut keys: Vec<&String> = entries.keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "plan/turn[1]",
            "plan/turn[1]/call[add#1]",
            "plan/turn[1]/call[weather#1]",
            "plan/turn[2]"
        ]
    );
    assert!(matches!(
        &entries["plan/turn[1]/call[add#1]"],
        Effect::Tool { name, content, is_error: false, .. } if name == "add" && content == "5"
    ));
}

/// Killed (here: failed) after its tool calls finished and before the next
/// model turn, then resumed: the tools are not called again and the
/// finished turn is not asked again; the answer equals an uninterrupted
/// run's.
#[tokio::test]
async fn a_resumed_agent_repeats_no_finished_turn_and_no_finished_tool_call() {
    let (base, hits) = weather().await;
    let adds = Arc::new(AtomicUsize::new(0));
    let yaml = agent_yaml(&base);
    let wf = workflow(&yaml);
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn RunStore> = Arc::new(
        SqliteStore::open(&dir.path().join("spes.db"), SqliteOptions::default())
            .await
            .unwrap(),
    );
    let source = WorkflowSource {
        path: "/tmp/helper.yaml".into(),
        text: yaml.clone(),
    };
    let broken = scripted(
        r#"
- { step: "plan/turn[1]", tool_calls: [{ name: add, arguments: { a: 2, b: 3 } }, { name: weather, arguments: { city: Paris } }] }
- { step: "plan/turn[2]", error: invalid_request }
"#,
    );
    let engine = Engine::builder()
        .provider(broken)
        .tool(adder(adds.clone()))
        .build();
    let (id, end) = engine
        .start(store.clone(), &wf, &source, BTreeMap::new())
        .await
        .unwrap();
    assert!(matches!(end, RunEnd::Failed(_)), "{end:?}");
    assert_eq!(
        (adds.load(Ordering::SeqCst), hits.load(Ordering::SeqCst)),
        (1, 1)
    );

    let fixed = scripted(SCRIPT);
    let engine = Engine::builder()
        .provider(fixed.clone())
        .tool(adder(adds.clone()))
        .build();
    let run = store.run(&id).await.unwrap().unwrap();
    let end = engine
        .resume(store.clone(), &run, &wf, &source, false)
        .await
        .unwrap();
    let RunEnd::Completed(out) = end else {
        panic!("{end:?}")
    };
    assert_eq!(out.output, Some(json!("5, and sunny in Paris.")));
    assert_eq!(
        (adds.load(Ordering::SeqCst), hits.load(Ordering::SeqCst)),
        (1, 1),
        "no tool ran twice"
    );
    let keys: Vec<String> = fixed.calls().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["plan/turn[2]"], "turn 1 came from the journal");
    let run = store.run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    let kinds: Vec<String> = store
        .entries(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| *k == "tool").count(),
        2,
        "{kinds:?}"
    );
}

#[tokio::test]
async fn tool_errors_and_unknown_tools_go_back_to_the_model_and_turns_run_out() {
    let adds = Arc::new(AtomicUsize::new(0));
    let yaml = r#"
name: helper
steps:
  - name: plan
    kind: agent
    prompt: "Add things."
    tools: [add]
    max_turns: 2
    output: answer
"#;
    let provider = scripted(
        r#"
- { step: "plan/turn[1]", tool_calls: [{ name: add, arguments: { a: x } }, { name: subtract, arguments: {} }] }
- { step: "plan/turn[2]", tool_calls: [{ name: add, arguments: { a: 1, b: 1 } }] }
"#,
    );
    let engine = Engine::builder()
        .provider(provider.clone())
        .tool(adder(adds.clone()))
        .build();
    let err = engine
        .run(&workflow(yaml), BTreeMap::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("used all 2 turns"), "{err}");
    let calls = provider.calls();
    let results = &calls[1].1.messages.last().unwrap().tool_results;
    assert_eq!(results.len(), 2);
    assert!(results[0].is_error && results[0].content.contains("must be numbers"));
    assert!(results[1].is_error && results[1].content.contains("no tool named `subtract`"));

    // A tool the workflow names but the engine lacks: refused before any call.
    let engine = Engine::builder()
        .provider(scripted("- { default: echo }"))
        .build();
    let err = engine
        .run(&workflow(yaml), BTreeMap::new())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("tool `add` is not registered"),
        "{err}"
    );
}

/// `approve_tools`: the call waits at a gate showing the tool and its
/// arguments; a rejection goes back to the model as the tool's (error)
/// result without running the tool; an approval runs it, once.
#[tokio::test]
async fn a_gated_tool_call_waits_for_a_human_then_runs_or_is_refused() {
    let yaml = r#"
name: careful
steps:
  - name: plan
    kind: agent
    prompt: "Add twice."
    tools: [add]
    approve_tools: [add]
    output: answer
"#;
    let wf = workflow(yaml);
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn RunStore> = Arc::new(
        SqliteStore::open(&dir.path().join("spes.db"), SqliteOptions::default())
            .await
            .unwrap(),
    );
    let source = WorkflowSource {
        path: "/tmp/careful.yaml".into(),
        text: yaml.into(),
    };
    let adds = Arc::new(AtomicUsize::new(0));
    let script = r#"
- { step: "plan/turn[1]", tool_calls: [{ name: add, arguments: { a: 1, b: 1 } }] }
- { step: "plan/turn[2]", tool_calls: [{ name: add, arguments: { a: 2, b: 2 } }] }
- { step: "plan/turn[3]", reply: "Done." }
"#;
    let engine = || {
        Engine::builder()
            .provider(scripted(script))
            .tool(adder(adds.clone()))
            .build()
    };
    let (id, end) = engine()
        .start(store.clone(), &wf, &source, BTreeMap::new())
        .await
        .unwrap();
    let gate1 = "plan/turn[1]/call[add#1]#approval";
    assert!(
        matches!(&end, RunEnd::Waiting(g) if g == &vec![gate1.to_owned()]),
        "{end:?}"
    );
    assert_eq!(
        adds.load(Ordering::SeqCst),
        0,
        "nothing runs before approval"
    );
    let open = store
        .gates(&spes_store::GateFilter::default())
        .await
        .unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].request["tool"], "add");
    assert_eq!(open[0].request["arguments"], json!({ "a": 1, "b": 1 }));
    store
        .decide_gate(
            &id,
            gate1,
            &json!({ "action": "reject", "reason": "use the calculator" }),
        )
        .await
        .unwrap();
    let run = store.run(&id).await.unwrap().unwrap();
    let end = engine()
        .resume(store.clone(), &run, &wf, &source, false)
        .await
        .unwrap();
    let gate2 = "plan/turn[2]/call[add#1]#approval";
    assert!(
        matches!(&end, RunEnd::Waiting(g) if g == &vec![gate2.to_owned()]),
        "{end:?}"
    );
    assert_eq!(
        adds.load(Ordering::SeqCst),
        0,
        "a refused call does not run"
    );
    store
        .decide_gate(&id, gate2, &json!({ "action": "approve" }))
        .await
        .unwrap();
    let run = store.run(&id).await.unwrap().unwrap();
    let provider = scripted(script);
    let end = Engine::builder()
        .provider(provider.clone())
        .tool(adder(adds.clone()))
        .build()
        .resume(store.clone(), &run, &wf, &source, false)
        .await
        .unwrap();
    let RunEnd::Completed(out) = end else {
        panic!("{end:?}")
    };
    assert_eq!(out.output, Some(json!("Done.")));
    assert_eq!(adds.load(Ordering::SeqCst), 1, "the approved call ran once");
    // The model saw the refusal as turn 1's tool result, and the sum as turn 2's.
    let calls = provider.calls();
    let last = &calls.last().unwrap().1.messages;
    let refused = &last[last.len() - 3].tool_results[0];
    assert!(refused.is_error, "{refused:?}");
    assert!(
        refused
            .content
            .contains("refused this call: use the calculator"),
        "{refused:?}"
    );
    let approved = &last[last.len() - 1].tool_results[0];
    assert_eq!((approved.content.as_str(), approved.is_error), ("4", false));
}

/// `{ workflow: { path } }`: the model calls a whole workflow; its inputs
/// are the tool's parameters, its steps are journaled under the call's
/// key, its result is the tool's result; bad arguments are an error result.
#[tokio::test]
async fn a_workflow_is_a_tool_whose_inputs_are_its_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let child = dir.path().join("shout.yaml");
    std::fs::write(
        &child,
        "name: shout\ndescription: Shouts a word\ninputs: { word: { type: string, required: true, description: the word } }\nsteps:\n  - { name: up, kind: transform, fn: uppercase, input: \"{{ word }}\", output: loud }\noutput: loud\n",
    )
    .unwrap();
    let yaml = format!(
        r#"
name: caller
steps:
  - name: ask
    kind: agent
    prompt: "Shout hello."
    tools: [{{ workflow: {{ path: "{}" }} }}]
    output: answer
"#,
        child.display()
    );
    let provider = scripted(
        r#"
- { step: "ask/turn[1]", tool_calls: [{ name: shout, arguments: { word: hello } }, { name: shout, arguments: { wrong: 1 } }] }
- { step: "ask/turn[2]", reply: "HELLO it is." }
"#,
    );
    let engine = Engine::builder().provider(provider.clone()).build();
    let journal = Arc::new(MemoryJournal::default());
    let out = engine
        .run_with_journal(&workflow(&yaml), BTreeMap::new(), journal.clone())
        .await
        .unwrap();
    assert_eq!(out.output, Some(json!("HELLO it is.")));
    let calls = provider.calls();
    let offered = &calls[0].1.tools[0];
    assert_eq!(offered.name, "shout");
    assert_eq!(offered.description, "Shouts a word");
    assert_eq!(
        offered.parameters,
        json!({ "type": "object", "properties": { "word": { "type": "string", "description": "the word" } }, "required": ["word"] })
    );
    let results = &calls[1].1.messages.last().unwrap().tool_results;
    assert_eq!(
        (results[0].content.as_str(), results[0].is_error),
        ("HELLO", false)
    );
    assert!(results[1].is_error, "{:?}", results[1]);
    assert!(results[1].content.contains("word"), "{:?}", results[1]);
    // The child's own step is journaled under the call's key (a transform
    // is pure: nothing to journal), and the call's result under its key.
    let entries = journal.entries();
    assert!(matches!(
        &entries["ask/turn[1]/call[shout#1]"],
        Effect::Tool { content, is_error: false, .. } if content == "HELLO"
    ));
}

/// `format: json` + `schema` on an agent: the final answer is checked like
/// an llm step's; one that is not what was asked for goes back with its
/// problems in the next turn, and the step's value is the parsed JSON.
#[tokio::test]
async fn an_agents_final_answer_follows_its_schema_after_a_repair() {
    let yaml = r#"
name: sum
steps:
  - name: plan
    kind: agent
    prompt: "Add 2 and 3; answer as JSON."
    tools: [add]
    format: json
    schema: { type: object, properties: { sum: { type: integer } }, required: [sum] }
    output: answer
"#;
    let provider = scripted(
        r#"
- { step: "plan/turn[1]", tool_calls: [{ name: add, arguments: { a: 2, b: 3 } }] }
- { step: "plan/turn[2]", reply: "The sum is 5." }
- { step: "plan/turn[3]", reply: '{"sum": 5}' }
"#,
    );
    let adds = Arc::new(AtomicUsize::new(0));
    let engine = Engine::builder()
        .provider(provider.clone())
        .tool(adder(adds.clone()))
        .build();
    let out = engine.run(&workflow(yaml), BTreeMap::new()).await.unwrap();
    assert_eq!(out.output, Some(json!({ "sum": 5 })));
    let calls = provider.calls();
    assert_eq!(calls.len(), 3);
    assert!(
        calls[0].1.json_schema.is_some(),
        "the schema is asked for natively"
    );
    let repair = &calls[2].1.messages.last().unwrap().content;
    assert!(repair.contains("JSON"), "{repair}");
    assert_eq!(adds.load(Ordering::SeqCst), 1);
}
