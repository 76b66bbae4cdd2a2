//! Behaviour of the `spes` commands on good input.

use serde_json::Value;

use crate::common::Project;

const SUMMARY: &str = "The team moved the release to Friday after load tests found a memory leak in the cache. The fix is merged and a second test run passed.";
const TITLE: &str = "Release Moves to Friday After Cache Fix";

/// `spes init proj` in a fresh directory; returns the parent project and the path.
fn init_project() -> (Project, std::path::PathBuf) {
    let parent = Project::empty();
    let run = parent.spes(["init", "proj"]);
    run.expect_code(0);
    assert!(
        run.stderr().contains("Created a spes project"),
        "{}",
        run.stderr()
    );
    let dir = parent.path().join("proj");
    (parent, dir)
}

fn in_dir(dir: &std::path::Path, args: &[&str]) -> crate::common::Run {
    let mut cmd = assert_cmd::Command::new(env!("CARGO_BIN_EXE_spes"));
    cmd.current_dir(dir)
        .args(args)
        .env_remove("SPES_CONFIG")
        .env_remove("SPES_PROVIDER")
        .env_remove("ANTHROPIC_API_KEY")
        .env("NO_COLOR", "1")
        .timeout(std::time::Duration::from_secs(60));
    let started = std::time::Instant::now();
    let output = cmd.output().expect("run spes");
    crate::common::Run {
        output,
        elapsed: started.elapsed(),
    }
}

#[test]
fn version_prints_the_version_commit_and_features() {
    let run = Project::empty().spes(["--version"]);
    run.expect_code(0);
    // The commit this checkout is at (build.rs asks git the same question).
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".to_owned(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        );
    let enabled: Vec<&str> = [
        ("default", cfg!(feature = "default")),
        ("local", cfg!(feature = "local")),
        ("otel", cfg!(feature = "otel")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    let features = if enabled.is_empty() {
        "none".to_owned()
    } else {
        enabled.join(", ")
    };
    assert_eq!(
        run.stdout().trim(),
        format!(
            "spes {} (commit {commit}; features: {features})",
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[test]
fn init_then_run_prints_title_and_summary() {
    let (_parent, dir) = init_project();
    let run = in_dir(
        &dir,
        &[
            "run",
            "workflows/summarize.yaml",
            "--input",
            "text=Release notes: moved to Friday.",
        ],
    );
    run.expect_code(0);
    let stdout = run.stdout();
    assert_eq!(stdout, format!("# {TITLE}\n\n{SUMMARY}\n"));
    let stderr = run.stderr();
    for step in ["summary", "title", "report"] {
        assert!(
            stderr.lines().any(|l| l.contains('✓') && l.contains(step)),
            "no ✓ line for {step}:\n{stderr}"
        );
    }
    assert!(stderr.contains("summarize done in"), "{stderr}");
}

#[test]
fn quiet_run_has_empty_stderr() {
    let (_parent, dir) = init_project();
    let run = in_dir(
        &dir,
        &[
            "run",
            "workflows/summarize.yaml",
            "--quiet",
            "--input",
            "text=notes",
        ],
    );
    run.expect_code(0);
    assert_eq!(run.stderr(), "");
    assert!(run.stdout().contains(TITLE));
}

#[test]
fn json_run_prints_inputs_and_outputs() {
    let (_parent, dir) = init_project();
    let run = in_dir(
        &dir,
        &[
            "run",
            "workflows/summarize.yaml",
            "--json",
            "-q",
            "--input",
            "text=notes",
        ],
    );
    run.expect_code(0);
    let v: Value = serde_json::from_str(&run.stdout()).expect("stdout is JSON");
    // One shape in every outcome: run id, status, output, usage, gates, error, context.
    let top: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        top,
        [
            "schema", "run_id", "status", "output", "usage", "gates", "error", "context"
        ]
    );
    assert_eq!(
        (v["schema"].as_u64(), v["status"].as_str()),
        (Some(1), Some("completed"))
    );
    assert_eq!(v["run_id"].as_str().map(str::len), Some(32));
    assert_eq!(v["output"], format!("# {TITLE}\n\n{SUMMARY}"));
    assert_eq!(v["usage"]["model_calls"], 2);
    assert_eq!(
        (v["gates"].as_array().map(Vec::len), v["error"].is_null()),
        (Some(0), true)
    );
    let obj = v["context"].as_object().expect("a JSON object");
    assert_eq!(obj["text"], "notes");
    assert_eq!(obj["summary"], SUMMARY);
    assert_eq!(obj["title"], TITLE);
    assert_eq!(obj["report"], format!("# {TITLE}\n\n{SUMMARY}"));
    // The context in the order it was written: inputs, then each step.
    let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    assert_eq!(keys, ["text", "summary", "title", "report"]);
}

#[test]
fn a_parallel_result_prints_in_declared_order() {
    let p = Project::new();
    p.write(
        "order.yaml",
        "name: order\nsteps:\n  - name: views\n    kind: parallel\n    steps:\n      - { name: zeta, kind: llm, prompt: Z }\n      - { name: alpha, kind: llm, prompt: A }\n      - { name: mid, kind: llm, prompt: M }\n    output: views\n",
    );
    let run = p.spes(["run", "order.yaml", "-q", "--no-store"]);
    run.expect_code(0);
    assert_eq!(
        run.stdout(),
        "{\n  \"zeta\": \"Z\",\n  \"alpha\": \"A\",\n  \"mid\": \"M\"\n}\n"
    );
}

#[test]
fn init_never_overwrites_a_file() {
    let p = Project::empty();
    p.write("proj/keep.txt", "mine");
    p.write("proj/workflows/summarize.yaml", "my own");
    let run = p.spes(["init", "proj"]);
    run.expect_code(2);
    assert!(
        run.stderr()
            .contains("already has workflows/summarize.yaml"),
        "{}",
        run.stderr()
    );
    assert_eq!(
        std::fs::read_to_string(p.path().join("proj/workflows/summarize.yaml")).unwrap(),
        "my own"
    );
    // Nothing was written.
    assert!(!p.path().join("proj/spes.toml").exists());
    assert!(!p.path().join("proj/.gitignore").exists());
    // Files init does not write are no obstacle.
    std::fs::remove_file(p.path().join("proj/workflows/summarize.yaml")).unwrap();
    p.spes(["init", "proj"]).expect_code(0);
    assert_eq!(
        std::fs::read_to_string(p.path().join("proj/keep.txt")).unwrap(),
        "mine"
    );
    // A second init is refused: everything is there.
    p.spes(["init", "proj"]).expect_code(2);
}

#[test]
fn validate_accepts_a_good_workflow() {
    let (_parent, dir) = init_project();
    let run = in_dir(&dir, &["workflow", "validate", "workflows/summarize.yaml"]);
    run.expect_code(0);
    assert!(
        run.stderr()
            .contains("✓ workflows/summarize.yaml (summarize): 3 steps"),
        "{}",
        run.stderr()
    );
}

#[test]
fn diagram_mermaid_is_a_flowchart() {
    let (_parent, dir) = init_project();
    let run = in_dir(
        &dir,
        &[
            "workflow",
            "diagram",
            "workflows/summarize.yaml",
            "--format",
            "mermaid",
        ],
    );
    run.expect_code(0);
    assert!(run.stdout().starts_with("flowchart TD"), "{}", run.stdout());
}

#[test]
fn components_show_prints_the_body() {
    let (_parent, dir) = init_project();
    let run = in_dir(&dir, &["components", "show", "persona/editor@^1"]);
    run.expect_code(0);
    let stdout = run.stdout();
    assert!(stdout.starts_with("persona/editor@1.0.0\n"), "{stdout}");
    assert!(
        stdout.contains("---\nYou are a precise editor. You write plainly for {{ audience }}, keep every fact,\nand cut every word that does not earn its place.\n"),
        "{stdout}"
    );
}

#[test]
fn scripted_authentication_error_fails_the_run() {
    let p = Project::new();
    p.write(
        "answers.yaml",
        "- { step: a, error: authentication }\n- { default: echo }\n",
    );
    p.write(
        "w.yaml",
        "name: w\nsteps:\n  - { name: a, kind: llm, prompt: hi, output: a }\n",
    );
    let run = p.spes(["run", "w.yaml"]);
    run.expect_code(1);
    let stderr = run.stderr();
    assert!(stderr.contains("error: step `a`"), "{stderr}");
    assert!(stderr.to_lowercase().contains("auth"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(run.stdout(), "");
}

#[test]
fn template_syntax_in_values_passes_through_verbatim() {
    let p = Project::new();
    let reply = "Reply with {{ x }} and {% if y %}raw{% endif %}";
    p.write(
        "answers.yaml",
        format!("- step: a\n  reply: '{reply}'\n- {{ default: echo }}\n"),
    );
    p.write(
        "w.yaml",
        "name: w
inputs:
  text: { type: string, required: true }
steps:
  - { name: a, kind: llm, prompt: \"Ignore {{ text }}\", output: a }
  - { name: b, kind: llm, prompt: \"{{ text }}\", output: b }
  - { name: c, kind: transform, fn: template, input: \"A={{ a }}|B={{ b }}\", output: c }
output: c
",
    );
    let input = "{{ x }} {% if %} {{ text }}";
    let run = p.spes(["run", "w.yaml", "-q", "--input", &format!("text={input}")]);
    run.expect_code(0);
    assert_eq!(run.stdout(), format!("A={reply}|B={input}\n"));
}
