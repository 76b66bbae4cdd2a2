//! Every `--json` output against its published JSON Schema
//! (`docs/schemas/NAME.json`, generated from `spes_engine::view`), and the
//! published schemas against the code: `SPES_BLESS=1 cargo test` rewrites
//! them after a deliberate change of shape.

use std::path::PathBuf;

use serde_json::Value;

use crate::common::{Project, Run};

fn schemas_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/schemas")
}

/// The published schema `name`.
fn published(name: &str) -> Value {
    let path = schemas_dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (SPES_BLESS=1 writes it)", path.display()));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn the_published_schemas_are_the_ones_the_code_generates() {
    let dir = schemas_dir();
    let bless = std::env::var_os("SPES_BLESS").is_some();
    let all = spes_engine::view::schemas();
    for (name, schema) in &all {
        let path = dir.join(format!("{name}.json"));
        let want = serde_json::to_string_pretty(schema).unwrap() + "\n";
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &want).unwrap();
            continue;
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            have,
            want,
            "{} is not what the code generates: run `SPES_BLESS=1 cargo test -p spes-cli --test it shapes` and commit it",
            path.display()
        );
    }
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut names: Vec<String> = all.iter().map(|(n, _)| format!("{n}.json")).collect();
    names.sort();
    assert_eq!(
        files, names,
        "docs/schemas holds exactly the published schemas"
    );
}

/// Asserts `doc` is valid against the published schema `name`.
fn conforms(name: &str, doc: &Value) {
    let schema = published(name);
    let v = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = v
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{name}: {errors:?}\n{doc:#}");
    assert_eq!(doc["schema"], 1, "{name}: {doc}");
}

fn stdout_json(r: &Run) -> Value {
    serde_json::from_str(&r.stdout())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", r.stdout(), r.stderr()))
}

/// A project with a gate, a failing step and a component.
fn project() -> Project {
    let p = Project::new();
    p.write(
        "answers.yaml",
        "- { step: fails, error: invalid_request }\n- { default: echo }\n",
    );
    p.write(
        "ok.yaml",
        "name: ok\ninputs: { topic: { type: string, required: true } }\nsteps:\n  - { name: a, kind: llm, prompt: 'About {{ topic }}', output: a }\noutput: a\n",
    );
    p.write(
        "gate.yaml",
        "name: gate\nsteps:\n  - { name: d, kind: llm, prompt: 'Draft', output: d }\n  - { name: review, kind: approval, show: d }\noutput: d\n",
    );
    p.write(
        "fails.yaml",
        "name: fails\nsteps:\n  - { name: fails, kind: llm, prompt: 'x', output: x }\noutput: x\n",
    );
    p.write(
        "bad.yaml",
        "name: bad\nsteps:\n  - { name: a, kind: nope }\n",
    );
    p
}

#[test]
fn run_resume_and_fork_print_the_run_shape_in_every_outcome() {
    let p = project();
    let done = p.spes(["run", "ok.yaml", "-i", "topic=x", "--json"]);
    done.expect_code(0);
    let doc = stdout_json(&done);
    conforms("run", &doc);
    assert_eq!(doc["status"], "completed");
    let id = doc["run_id"].as_str().unwrap().to_owned();

    let waiting = p.spes(["run", "gate.yaml", "--json", "--detach"]);
    waiting.expect_code(3);
    let doc = stdout_json(&waiting);
    conforms("run", &doc);
    assert_eq!(doc["status"], "waiting");
    assert_eq!(doc["gates"], serde_json::json!(["review/review0"]));

    let failed = p.spes(["run", "fails.yaml", "--json"]);
    failed.expect_code(1);
    let doc = stdout_json(&failed);
    conforms("run", &doc);
    assert_eq!(doc["status"], "failed");
    assert_eq!(doc["error"]["class"], "terminal");
    let failed_id = doc["run_id"].as_str().unwrap().to_owned();

    let resumed = p.spes(["resume", &failed_id, "--json"]);
    conforms("run", &stdout_json(&resumed));

    let forked = p.spes(["runs", "fork", &id, "--at", "a", "--json"]);
    forked.expect_code(0);
    conforms("run", &stdout_json(&forked));
}

#[test]
fn runs_list_show_and_pending_match_their_schemas() {
    let p = project();
    // Before any run: the empty answers (no store) have the same shapes.
    conforms(
        "runs-list",
        &stdout_json(p.spes(["runs", "list", "--json"]).expect_code(0)),
    );
    conforms(
        "runs-pending",
        &stdout_json(p.spes(["runs", "pending", "--json"]).expect_code(0)),
    );
    p.spes(["run", "gate.yaml", "--detach"]).expect_code(3);
    let list = stdout_json(p.spes(["runs", "list", "--json"]).expect_code(0));
    conforms("runs-list", &list);
    let id = list["runs"][0]["id"].as_str().unwrap().to_owned();
    let pending = stdout_json(p.spes(["runs", "pending", "--json"]).expect_code(0));
    conforms("runs-pending", &pending);
    assert_eq!(pending["gates"][0]["key"], "review/review0");
    p.spes(["approve", &id, "--as", "ana"]).expect_code(0);
    let shown = stdout_json(p.spes(["runs", "show", &id, "--json"]).expect_code(0));
    conforms("runs-show", &shown);
    assert_eq!(shown["gates"][0]["decision"]["by"], "ana");
}

#[test]
fn validate_components_doctor_and_pattern_match_their_schemas() {
    let p = project();
    let ok = p.spes(["workflow", "validate", "ok.yaml", "--json"]);
    conforms("workflow-validate", &stdout_json(ok.expect_code(0)));
    let bad = p.spes(["workflow", "validate", "bad.yaml", "ok.yaml", "--json"]);
    let doc = stdout_json(bad.expect_code(2));
    conforms("workflow-validate", &doc);
    assert_eq!(doc["valid"], false);
    assert_eq!(doc["diagnostics"][0]["severity"], "error");
    assert!(doc["diagnostics"][0]["line"].is_u64(), "{doc}");

    conforms(
        "components-list",
        &stdout_json(p.spes(["components", "list", "--json"]).expect_code(0)),
    );
    let shown = p.spes(["components", "show", "persona/editor", "--json"]);
    let doc = stdout_json(shown.expect_code(0));
    conforms("components-show", &doc);
    assert_eq!(doc["variables"][0]["name"], "audience");

    let doctor = p.spes(["doctor", "--json"]);
    conforms("doctor", &stdout_json(&doctor));

    let suggested = p.spes(["pattern", "suggest", "--human-judgment", "--json"]);
    conforms("pattern-suggest", &stdout_json(suggested.expect_code(0)));
}

#[test]
fn every_progress_event_matches_the_event_schema() {
    let p = project();
    let r = p.spes(["--events", "run", "ok.yaml", "-i", "topic=x"]);
    r.expect_code(0);
    let schema = published("event");
    let v = jsonschema::validator_for(&schema).unwrap();
    let mut kinds = Vec::new();
    // The closing summary stays a plain line; every event is an object.
    for line in r.stderr().lines().filter(|l| l.starts_with('{')) {
        let e: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v.is_valid(&e), "{e}");
        kinds.push(e["event"].as_str().unwrap().to_owned());
    }
    assert!(kinds.contains(&"step_started".to_owned()), "{kinds:?}");
    assert!(kinds.contains(&"step_finished".to_owned()), "{kinds:?}");
    // A shape the schema refuses is refused (the check can fail).
    assert!(!v.is_valid(&serde_json::json!({ "event": "step_started", "key": 1 })));
}

#[test]
fn spes_schema_lists_and_prints_the_published_schemas() {
    let p = Project::empty();
    let listed = p.spes(["schema"]);
    listed.expect_code(0);
    let names: Vec<String> = listed.stdout().lines().map(str::to_owned).collect();
    let want: Vec<String> = spes_engine::view::schemas()
        .iter()
        .map(|(n, _)| (*n).to_owned())
        .collect();
    assert_eq!(names, want);
    let run = p.spes(["schema", "run"]);
    assert_eq!(stdout_json(run.expect_code(0)), published("run"));
    let unknown = p.spes(["schema", "nope"]);
    unknown.expect_code(2);
    assert!(
        unknown.stderr().contains("runs-show"),
        "{}",
        unknown.stderr()
    );
}
