//! Every workflow under `examples/workflows` is validated and run on the
//! scripted provider; the expected results pin the examples' behaviour.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// (workflow file, inputs, a line the result must contain)
const CASES: &[(&str, &[&str], &str)] = &[
    (
        "summarize-then-title.yaml",
        &["--input-file", "text=inputs/release-notes.txt"],
        "# Release Slips to Friday After Cache Leak Fix",
    ),
    (
        "code-review.yaml",
        &["--input", "code=fn load() { cfg.unwrap() }"],
        "- `parse_config`: an empty file panics",
    ),
    (
        "extract-facts.yaml",
        &[
            "--input",
            "text=Acme sold anvils and rocket skates in 2024 for 12.5M USD",
        ],
        "Acme (2024): 2 products: anvil, rocket skates; revenue 12.5 M USD",
    ),
    (
        "triage.yaml",
        &["--input", "request=login throws a null pointer exception"],
        "[bug] Reproduce the null pointer in login",
    ),
];

#[test]
fn every_example_is_listed_here() {
    let mut on_disk: Vec<String> = std::fs::read_dir(examples_dir().join("workflows"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = CASES.iter().map(|c| c.0.to_owned()).collect();
    listed.sort();
    assert_eq!(
        on_disk, listed,
        "add new examples to CASES in tests/examples.rs"
    );
}

#[test]
fn every_example_validates() {
    let dir = examples_dir();
    for (file, _, _) in CASES {
        let out = Command::new(env!("CARGO_BIN_EXE_spes"))
            .current_dir(&dir)
            .args(["workflow", "validate", &format!("workflows/{file}")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_example_runs_offline() {
    let dir = examples_dir();
    for (file, inputs, expected) in CASES {
        let out = Command::new(env!("CARGO_BIN_EXE_spes"))
            .current_dir(&dir)
            .env_remove("ANTHROPIC_API_KEY")
            .env_remove("OPENAI_API_KEY")
            .args(["run", &format!("workflows/{file}")])
            .args(*inputs)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{file} failed:\n{stderr}");
        assert!(
            stdout.contains(expected),
            "{file}: stdout lacks {expected:?}:\n{stdout}"
        );
        assert!(
            stderr.contains("✓"),
            "{file}: no progress on stderr:\n{stderr}"
        );
    }
}

#[test]
fn every_example_diagram_renders() {
    let dir = examples_dir();
    for (file, _, _) in CASES {
        let out = Command::new(env!("CARGO_BIN_EXE_spes"))
            .current_dir(&dir)
            .args([
                "workflow",
                "diagram",
                &format!("workflows/{file}"),
                "--format",
                "mermaid",
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("flowchart TD\n"), "{file}: {text}");
        assert!(text.contains("--> done"), "{file}: {text}");
    }
}
