//! Answers checked against what the step asked for, through `spes` on both
//! wire formats of the fake server: a schema (from a file, pinned with the
//! run) violated then repaired; a violation that persists fails with
//! `invalid_output` naming pointers and a resume asks the model again;
//! an edited schema file refuses resume unless `--allow-changes`; a text
//! answer cut at `max_tokens` is marked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "crash/harness.rs"]
mod harness;

use harness::{Exit, Project, wait};
use serde_json::{Value, json};
use spes_fake_llm::{FakeResponse, FakeServer, FakeStop};
use spes_store::{RunStatus, RunStore};

const SCHEMA: &str = r#"{
  "type": "object",
  "required": ["name", "age"],
  "properties": { "name": { "type": "string" }, "age": { "type": "integer" } }
}"#;

const WF: &str = r#"name: people
steps:
  - name: extract
    kind: llm
    prompt: "Extract the person: Ada, forty years old."
    schema: schemas/person.json
    output: person
output: person
"#;

const BAD: &str = r#"{"name": "Ada", "age": "forty"}"#;
const GOOD: &str = r#"{"name": "Ada", "age": 40}"#;

#[derive(Clone, Copy, Debug)]
enum Wire {
    OpenAi,
    Anthropic,
}

fn project(server: &FakeServer, wire: Wire, stream: bool, wf: &str) -> Project {
    let p = Project::new(wf, &server.openai_base_url());
    let (kind, url) = match wire {
        Wire::OpenAi => ("openai", server.openai_base_url()),
        Wire::Anthropic => ("anthropic", server.url()),
    };
    p.write(
        "spes.toml",
        &format!(
            "[defaults]\nprovider = \"remote\"\n\n[providers.remote]\nkind = \"{kind}\"\nbase_url = \"{url}\"\nmodel = \"m\"\nstream = {stream}\n"
        ),
    );
    p.write("schemas/person.json", SCHEMA);
    p
}

async fn spes(p: &Project, args: &[&str]) -> Exit {
    wait(p.spawn(args)).await
}

/// The messages of a recorded request, as (role, text) whatever the wire format.
fn messages(body: &Value) -> Vec<(String, String)> {
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let text = match &m["content"] {
                Value::String(s) => s.clone(),
                Value::Array(blocks) => blocks
                    .iter()
                    .filter_map(|b| b["text"].as_str())
                    .collect::<Vec<_>>()
                    .join(""),
                other => other.to_string(),
            };
            (m["role"].as_str().unwrap().to_owned(), text)
        })
        .collect()
}

async fn run_id(p: &Project) -> String {
    let store = p.store().await;
    store.list_runs(None, 1).await.unwrap()[0].id.to_string()
}

async fn repaired_on_the_second_attempt(wire: Wire, stream: bool) {
    let server = FakeServer::start().await.unwrap();
    server.push(FakeResponse::text(BAD));
    server.push(FakeResponse::text(GOOD));
    let p = project(&server, wire, stream, WF);
    let exit = spes(&p, &["run", "wf.yaml", "--json"]).await;
    assert_eq!(exit.code(), Some(0), "{wire:?}: {}", exit.stderr);
    let ctx: Value = serde_json::from_slice::<Value>(&exit.stdout).unwrap()["context"].clone();
    assert_eq!(ctx["person"], json!({ "name": "Ada", "age": 40 }), "{ctx}");
    assert!(
        exit.stderr.contains("repaired after 1 invalid answer"),
        "{}",
        exit.stderr
    );
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2, "{wire:?}");
    // The repair request: the first prompt, the bad answer as the
    // assistant's, then the problems with their JSON pointers.
    let m = messages(&reqs[1].body);
    assert_eq!(m.len(), 3, "{m:?}");
    assert_eq!(m[0], messages(&reqs[0].body)[0]);
    assert_eq!(m[1], ("assistant".to_owned(), BAD.to_owned()));
    assert_eq!(m[2].0, "user");
    assert!(
        m[2].1
            .contains("- /age: \"forty\" is not of type \"integer\""),
        "{}",
        m[2].1
    );
    // Each attempt has its own journal entry.
    let store = p.store().await;
    let run = &store.list_runs(None, 1).await.unwrap()[0];
    let keys: Vec<String> = store
        .entries(&run.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, ["extract", "extract#repair1"]);
    // The schema file is pinned with the run.
    let shown = spes(&p, &["runs", "show", &run.id.to_string()]).await;
    assert!(
        shown.stdout_text().contains("schema ") && shown.stdout_text().contains("person.json"),
        "{}",
        shown.stdout_text()
    );
    // A replay is exact and asks nothing.
    let again = spes(&p, &["runs", "replay", &run.id.to_string()]).await;
    assert_eq!(again.code(), Some(0), "{}", again.stderr);
    assert!(
        again.stdout_text().contains("output identical")
            || again.stderr.contains("output identical"),
        "{again:?}"
    );
    assert_eq!(server.request_count(), 2);
}

#[tokio::test]
async fn openai_a_schema_violation_is_repaired_on_the_second_attempt() {
    repaired_on_the_second_attempt(Wire::OpenAi, false).await;
}

#[tokio::test]
async fn anthropic_a_schema_violation_is_repaired_on_the_second_attempt() {
    repaired_on_the_second_attempt(Wire::Anthropic, true).await;
}

async fn a_persisting_violation_fails_then_resume_asks_again(wire: Wire, stream: bool) {
    let server = FakeServer::start().await.unwrap();
    server.push(FakeResponse::text(BAD));
    server.push(FakeResponse::text(r#"{"name": 7, "age": "forty"}"#));
    let p = project(&server, wire, stream, WF);
    let exit = spes(&p, &["run", "wf.yaml"]).await;
    assert_eq!(exit.code(), Some(1), "{}", exit.stderr);
    for want in [
        "invalid_output",
        "(after 2 attempts)",
        "/age: \"forty\" is not of type \"integer\"",
        "/name: 7 is not of type \"string\"",
        "repair",
    ] {
        assert!(exit.stderr.contains(want), "{want}: {}", exit.stderr);
    }
    let id = run_id(&p).await;
    let store = p.store().await;
    let run = store.find_run(&id).await.unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert!(run.error.as_deref().unwrap().contains("/age"), "{run:?}");
    assert_eq!(server.request_count(), 2);

    // The user allows one more repair; resume asks the model again (the
    // recorded answers replay, the third attempt is new) and completes.
    p.write(
        "wf.yaml",
        &WF.replace("    output: person", "    repair: 2\n    output: person"),
    );
    server.push(FakeResponse::text(GOOD));
    let refused = spes(&p, &["resume", &id]).await;
    assert_ne!(refused.code(), Some(0), "{}", refused.stderr);
    assert!(refused.stderr.contains("changed"), "{}", refused.stderr);
    assert_eq!(server.request_count(), 2, "a refused resume asks nothing");
    let done = spes(&p, &["resume", &id, "--allow-changes", "--json"]).await;
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    let ctx: Value = serde_json::from_slice::<Value>(&done.stdout).unwrap()["context"].clone();
    assert_eq!(ctx["person"], json!({ "name": "Ada", "age": 40 }));
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    let m = messages(&reqs[2].body);
    // The third request carries both rejected answers, the last one last.
    assert_eq!(m.len(), 5, "{m:?}");
    assert_eq!(m[1].1, r#"{"name": "Ada", "age": "forty"}"#);
    assert_eq!(
        m[3].1, r#"{"name": 7, "age": "forty"}"#,
        "repairs the last answer"
    );
    let keys: Vec<String> = store
        .entries(&run.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, ["extract", "extract#repair1", "extract#repair2"]);
}

#[tokio::test]
async fn openai_a_persisting_violation_fails_and_resume_with_more_repairs_completes() {
    a_persisting_violation_fails_then_resume_asks_again(Wire::OpenAi, true).await;
}

#[tokio::test]
async fn anthropic_a_persisting_violation_fails_and_resume_with_more_repairs_completes() {
    a_persisting_violation_fails_then_resume_asks_again(Wire::Anthropic, false).await;
}

#[tokio::test]
async fn a_failed_step_is_asked_again_on_a_plain_resume_never_replayed_as_a_failure() {
    let server = FakeServer::start().await.unwrap();
    let p = project(&server, Wire::OpenAi, false, WF);
    server.push(FakeResponse::text("not json at all"));
    server.push(FakeResponse::text("still not json"));
    let exit = spes(&p, &["run", "wf.yaml"]).await;
    assert_eq!(exit.code(), Some(1), "{}", exit.stderr);
    assert!(exit.stderr.contains("/: not valid JSON"), "{}", exit.stderr);
    let id = run_id(&p).await;
    // Nothing changed; the model may well answer better this time.
    server.push(FakeResponse::text(GOOD));
    let done = spes(&p, &["resume", &id, "--json"]).await;
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    assert_eq!(server.request_count(), 3);
}

#[tokio::test]
async fn an_edited_schema_file_refuses_resume_unless_changes_are_allowed() {
    let server = FakeServer::start().await.unwrap();
    let p = project(&server, Wire::Anthropic, false, WF);
    server.push(FakeResponse::text(BAD));
    server.push(FakeResponse::text(BAD));
    let exit = spes(&p, &["run", "wf.yaml"]).await;
    assert_eq!(exit.code(), Some(1), "{}", exit.stderr);
    let id = run_id(&p).await;
    // The user relaxes the schema: `age` may be written out.
    p.write(
        "schemas/person.json",
        &SCHEMA.replace(
            r#""age": { "type": "integer" }"#,
            r#""age": { "type": ["integer", "string"] }"#,
        ),
    );
    let refused = spes(&p, &["resume", &id]).await;
    assert_ne!(refused.code(), Some(0), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("the schema file") && refused.stderr.contains("person.json"),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("`extract`"), "{}", refused.stderr);
    let done = spes(&p, &["resume", &id, "--allow-changes", "--json"]).await;
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    // The recorded answer now passes: no new call.
    let ctx: Value = serde_json::from_slice::<Value>(&done.stdout).unwrap()["context"].clone();
    assert_eq!(ctx["person"], json!({ "name": "Ada", "age": "forty" }));
    assert_eq!(server.request_count(), 2);
}

async fn truncated_text_is_marked(wire: Wire, stream: bool) {
    let server = FakeServer::start().await.unwrap();
    server.push(
        FakeResponse::text("The release adds offline runs and").with_stop(FakeStop::MaxTokens),
    );
    let wf = r#"name: cut
steps:
  - { name: summary, kind: llm, prompt: "Summarise.", max_tokens: 8, output: summary }
output: summary
"#;
    let p = project(&server, wire, stream, wf);
    let exit = spes(&p, &["run", "wf.yaml", "--json"]).await;
    assert_eq!(exit.code(), Some(0), "{}", exit.stderr);
    let ctx: Value = serde_json::from_slice::<Value>(&exit.stdout).unwrap()["context"].clone();
    assert_eq!(ctx["summary"], "The release adds offline runs and");
    assert!(
        exit.stderr.contains("✓ summary") && exit.stderr.contains("truncated at max_tokens"),
        "the progress line says it was cut: {}",
        exit.stderr
    );
    let id = run_id(&p).await;
    let shown = spes(&p, &["runs", "show", &id]).await.stdout_text();
    assert!(
        shown
            .lines()
            .any(|l| l.contains("summary") && l.contains("truncated (stopped at max_tokens)")),
        "{shown}"
    );
    // The journal entry records why it stopped.
    let store = p.store().await;
    let run = store.find_run(&id).await.unwrap();
    let e = store.entry(&run.id, "summary").await.unwrap().unwrap();
    assert_eq!(e.payload["response"]["stop_reason"], "max_tokens");

    // `on_truncation: fail` on text: repaired, then refused.
    server.push(FakeResponse::text("cut").with_stop(FakeStop::MaxTokens));
    server.push(FakeResponse::text("cut again").with_stop(FakeStop::MaxTokens));
    p.write(
        "wf.yaml",
        &wf.replace("max_tokens: 8,", "max_tokens: 8, on_truncation: fail,"),
    );
    let exit = spes(&p, &["run", "wf.yaml"]).await;
    assert_eq!(exit.code(), Some(1), "{}", exit.stderr);
    assert!(
        exit.stderr.contains("invalid_output") && exit.stderr.contains("cut off at max_tokens"),
        "{}",
        exit.stderr
    );
    assert!(
        exit.stderr.contains("max_tokens"),
        "the hint names the fix: {}",
        exit.stderr
    );
}

#[tokio::test]
async fn openai_truncated_text_is_marked() {
    truncated_text_is_marked(Wire::OpenAi, true).await;
}

#[tokio::test]
async fn anthropic_truncated_text_is_marked() {
    truncated_text_is_marked(Wire::Anthropic, false).await;
}

#[tokio::test]
async fn workflow_validate_points_at_a_bad_or_missing_schema_file() {
    let server = FakeServer::start().await.unwrap();
    let p = project(&server, Wire::OpenAi, false, WF);
    p.write("schemas/person.json", r#"{ "type": "objekt" }"#);
    let out = spes(&p, &["workflow", "validate", "wf.yaml"]).await;
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("spes::workflow::bad_schema"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("wf.yaml:6:13"), "{}", out.stderr);
    assert!(out.stderr.contains("person.json"), "{}", out.stderr);
    std::fs::remove_file(p.root.join("schemas/person.json")).unwrap();
    let out = spes(&p, &["workflow", "validate", "wf.yaml"]).await;
    assert!(
        out.stderr.contains("spes::workflow::schema_file"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("wf.yaml:6:13"), "{}", out.stderr);
    // A directory is not a schema file.
    std::fs::create_dir_all(p.root.join("schemas/person.json")).unwrap();
    let out = spes(&p, &["workflow", "validate", "wf.yaml"]).await;
    assert!(out.stderr.contains("not a regular file"), "{}", out.stderr);
    assert_eq!(server.request_count(), 0);
}

#[tokio::test]
async fn the_branch_arm_taken_is_in_the_context_and_in_runs_show() {
    let server = FakeServer::start().await.unwrap();
    let wf = r#"name: route
inputs: { text: { type: string, default: "please decode this" } }
steps:
  - name: kind
    kind: branch
    branches:
      - { name: code, if: { keyword: code, in: text }, steps: [ { name: c, kind: transform, fn: template, input: "code", output: r } ] }
    else: [ { name: o, kind: transform, fn: template, input: "other", output: r } ]
  - { name: out, kind: transform, fn: template, input: "{{ r }} ({{ kind_taken }})", output: out }
output: out
"#;
    let p = project(&server, Wire::OpenAi, false, wf);
    let exit = spes(&p, &["run", "wf.yaml", "--json"]).await;
    assert_eq!(exit.code(), Some(0), "{}", exit.stderr);
    let ctx: Value = serde_json::from_slice::<Value>(&exit.stdout).unwrap()["context"].clone();
    assert_eq!(
        ctx["out"], "other (else)",
        "\"decode\" is not the word `code`"
    );
    let id = run_id(&p).await;
    let shown = spes(&p, &["runs", "show", &id]).await.stdout_text();
    assert!(
        shown
            .lines()
            .any(|l| l.contains("kind#taken") && l.contains(r#"decision {"taken":"else"}"#)),
        "{shown}"
    );
    assert_eq!(server.request_count(), 0);
}
