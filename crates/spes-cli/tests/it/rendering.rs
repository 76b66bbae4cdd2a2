//! The whole stderr of representative diagnostics, literally.

use crate::common::Project;

fn stderr_of(p: &Project, args: &[&str]) -> String {
    let run = p.spes(args);
    run.expect_code(2);
    assert!(run.stdout().is_empty(), "stdout: {}", run.stdout());
    run.stderr()
}

#[test]
fn unknown_agent_with_did_you_mean() {
    let p = Project::new();
    p.write(
        "w.yaml",
        "name: w
agents:
  writer: { persona: persona/editor@^1 }
steps:
  - name: a
    kind: llm
    agent: writr
    task: hi
",
    );
    assert_eq!(
        stderr_of(&p, &["run", "w.yaml"]),
        "w.yaml:7:12: error[spes::workflow::unknown_agent]: unknown agent `writr`
  hint: did you mean `writer`?
"
    );
}

#[test]
fn unknown_step_kind() {
    let p = Project::new();
    p.write(
        "w.yaml",
        "name: w\nsteps:\n  - name: a\n    kind: lmm\n    prompt: hi\n",
    );
    assert_eq!(
        stderr_of(&p, &["workflow", "validate", "w.yaml"]),
        "w.yaml:4:11: error[spes::workflow::unknown_step_kind]: step `a`: unknown step kind `lmm`
  hint: did you mean `llm`? Step kinds: llm, transform, http, agent, sequence, branch, parallel, approval, choose, sections, workflow, switch, quality_gate, refine, debate, map, reduce, fan_out, saga, pipeline, scatter_gather
"
    );
}

#[test]
fn key_read_before_written() {
    let p = Project::new();
    p.write(
        "w.yaml",
        "name: w
inputs:
  topic: { type: string, required: true }
steps:
  - name: a
    kind: llm
    prompt: \"Write about {{ topc }}\"
",
    );
    assert_eq!(
        stderr_of(&p, &["run", "w.yaml", "--input", "topic=x"]),
        "w.yaml:7:13: error[spes::workflow::unknown_key]: step `a` reads `topc` before any step writes it
  hint: did you mean `topic`? Keys known here: topic
"
    );
}

#[test]
fn component_missing_field() {
    let p = Project::new();
    p.write(
        "components/personas/persona-terse-v1.0.0.md",
        "---\nkind: persona\nname: terse\nversion: 1.0.0\n---\nBe terse.\n",
    );
    assert_eq!(
        stderr_of(&p, &["components", "lint", "components"]),
        "components/personas/persona-terse-v1.0.0.md:4:1: error[spes::component::missing_field]: component frontmatter is missing field `description`
  hint: add `description: ...`, one line on what the component is for
"
    );
}

#[test]
fn bad_input_value() {
    let p = Project::new();
    p.write(
        "w.yaml",
        "name: w
inputs:
  count: { type: integer, default: 1 }
steps:
  - { name: a, kind: transform, fn: trim, input: \"{{ count }}\" }
",
    );
    assert_eq!(
        stderr_of(&p, &["run", "w.yaml", "--input", "count=abc"]),
        "error[spes::input::invalid]: input `count` must be an integer, got `abc`
  hint: inputs are declared under `inputs:` in w.yaml; pass each as --input KEY=VALUE
"
    );
}

#[test]
fn input_without_equals() {
    let p = Project::new();
    p.write(
        "w.yaml",
        "name: w\nsteps:\n  - { name: a, kind: transform, fn: trim, input: x }\n",
    );
    assert_eq!(
        stderr_of(&p, &["run", "w.yaml", "--input", "text"]),
        "error[spes::input::syntax]: --input `text` must look like KEY=VALUE
  hint: write --input name=value, e.g. --input text=hello
"
    );
}

#[test]
fn unknown_evaluator_check() {
    let p = Project::new();
    p.write(
        "w.yaml",
        "name: w
steps:
  - name: gate
    kind: quality_gate
    step: { prompt: hi }
    evaluator: { checks: [ { word: { min: 3 } } ] }
    threshold: 1.2
",
    );
    assert_eq!(
        stderr_of(&p, &["workflow", "validate", "w.yaml"]),
        "w.yaml:6:28: error[spes::workflow::unknown_check]: step `gate`: unknown check `word`
  hint: did you mean `words`? Checks: contains, regex, length, words, lines, json, schema
w.yaml:7:16: error[spes::workflow::bad_threshold]: step `gate`: threshold 1.2 is outside 0..1
  hint: scores run from 0 (worst) to 1 (best); write e.g. 0.8
2 errors
"
    );
}
