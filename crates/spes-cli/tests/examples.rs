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
        "research.yaml",
        &["--input", "topic=remote work and productivity"],
        "(analysis: iteration 2 of 2, score 1.0; 3 research questions)",
    ),
    (
        "composed-briefing.yaml",
        &["--input-file", "notes=inputs/release-notes.txt"],
        "(43 words)",
    ),
    (
        "triage.yaml",
        &["--input", "request=login throws a null pointer exception"],
        "[bug] Reproduce the null pointer in login",
    ),
    (
        "resilient-summary.yaml",
        &["--input-file", "text=inputs/release-notes.txt"],
        "(summary: fallback1 via backup, attempt 1; title: the basic level)",
    ),
    (
        "debate.yaml",
        &["--input", "proposal=split checkout out of the monolith"],
        "Verdict after 2 rounds: Split out checkout only, behind the existing gateway",
    ),
    (
        "switch-triage.yaml",
        &["--input", "request=login throws a null pointer exception"],
        "[bug_fix, exact match of \"Bug fix.\"] Add a null check on the session lookup",
    ),
    (
        "quality-gate.yaml",
        &["--input", "product=spes, a durable prompt workflow engine"],
        "Prompt workflows that never repeat a finished call. (attempt 2 of 2, score 0.9333)",
    ),
    (
        "refine.yaml",
        &["--input-file", "notes=inputs/release-notes.txt"],
        "no action is needed from you. [iteration 2, passed]",
    ),
    (
        "writer-editor.yaml",
        &["--input-file", "text=inputs/release-notes.txt"],
        "Version 4.2 now ships Friday at 10:00 UTC",
    ),
    (
        "map-reduce.yaml",
        &[
            "--input",
            r#"docs=["Q3 report", "Churn analysis", "A very long appendix", "Support review"]"#,
        ],
        "Overview: growth came from subscriptions",
    ),
    (
        "fan-out.yaml",
        &[
            "--input",
            "code=fn find_user(n: &str) { db.query(format!(\"... {n}\")) }",
        ],
        "1. [security] SQL injection in `find_user`",
    ),
    (
        "saga.yaml",
        &["--input", "release=spes 1.4"],
        "Launch compensated (publish failed); undone: draft_post=compensated, reserve_slot=compensated",
    ),
    (
        "pipeline.yaml",
        &["--input", "notes=startup 30% faster; config reload"],
        "Faster startup; config reloads live, no restart needed.",
    ),
    (
        "scatter-gather.yaml",
        &["--input", "question=How do I rotate API keys?"],
        "The forum did not answer in time.",
    ),
];

/// Examples that call an HTTP service, run against a local stub below.
const STUBBED: &[&str] = &["agent-with-tools.yaml", "booking-saga.yaml"];

/// The booking service of `booking-saga.yaml` on a loopback port: books
/// flights and hotels, refuses every charge (402), cancels bookings; and
/// the weather service of `agent-with-tools.yaml` (`GET /weather/Paris`).
/// Returns its base URL and the requests it saw (`METHOD /path`).
fn booking_stub() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let log = log.clone();
        async move {
            let line = format!("{} {}", req.method(), req.uri().path());
            log.lock().unwrap().push(line.clone());
            match line.as_str() {
                "POST /flights" => (
                    StatusCode::CREATED,
                    axum::Json(serde_json::json!({ "id": "F-1" })),
                )
                    .into_response(),
                "POST /hotels" => (
                    StatusCode::CREATED,
                    axum::Json(serde_json::json!({ "id": "H-7" })),
                )
                    .into_response(),
                "POST /charges" => (StatusCode::PAYMENT_REQUIRED, "card declined").into_response(),
                "DELETE /flights/F-1" | "DELETE /hotels/H-7" => {
                    StatusCode::NO_CONTENT.into_response()
                }
                "GET /weather/Paris" => {
                    axum::Json(serde_json::json!({ "sky": "sunny", "high_c": 24 })).into_response()
                }
                _ => StatusCode::NOT_FOUND.into_response(),
            }
        }
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
    });
    (format!("http://{addr}"), seen)
}

#[test]
fn the_booking_saga_books_then_cancels_over_http() {
    let (api, seen) = booking_stub();
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_spes"))
        .current_dir(examples_dir())
        .args(["--store", &store_url(&tmp)])
        .args(["run", "workflows/booking-saga.yaml"])
        .args(["--input", &format!("api={api}"), "--input", "trip=t1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(
            "Trip t1: compensated (charge failed); undone: hotel=compensated, flight=compensated"
        ),
        "{stdout}\n{stderr}"
    );
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "POST /flights",
            "POST /hotels",
            "POST /charges",
            "DELETE /hotels/H-7",
            "DELETE /flights/F-1"
        ],
        "each booking cancelled once, in reverse order"
    );
}

/// The example's MCP server (`mcp-server-time`, from PyPI, installed by
/// scripts/mcp-servers.sh) on PATH, and its HTTP tool against the stub.
#[test]
fn the_agent_example_calls_its_mcp_and_http_tools_then_answers() {
    let (api, seen) = booking_stub();
    let tmp = tempfile::tempdir().unwrap();
    let time = std::env::var("SPES_TEST_MCP_TIME").unwrap_or_else(|_| {
        panic!("SPES_TEST_MCP_TIME is not set: run `eval \"$(bash scripts/mcp-servers.sh)\"` first")
    });
    let bin = Path::new(&time).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_spes"))
        .current_dir(examples_dir())
        .env("PATH", path)
        .args(["--store", &store_url(&tmp)])
        .args(["run", "workflows/agent-with-tools.yaml"])
        .args(["--input", &format!("api={api}")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("Sunny and 24 °C in Paris: pack sunglasses"),
        "{stdout}\n{stderr}"
    );
    assert!(stderr.contains("2 turns, 2 tool calls"), "{stderr}");
    assert!(
        stderr.contains("⚙ advise/turn[1]/call[weather#1]")
            && stderr.contains("⚙ advise/turn[1]/call[get_current_time#1]"),
        "each tool call is shown: {stderr}"
    );
    assert!(!stderr.contains("(error result)"), "{stderr}");
    assert_eq!(*seen.lock().unwrap(), ["GET /weather/Paris"]);
    // The MCP server's answer is in the journal: the time in Paris.
    let spes = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_spes"))
            .current_dir(examples_dir())
            .args(["--store", &store_url(&tmp)])
            .args(args)
            .output()
            .unwrap()
    };
    let listed = String::from_utf8_lossy(&spes(&["runs", "list"]).stdout).into_owned();
    let id = listed
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("{listed}"))
        .to_owned();
    let shown = spes(&["runs", "show", "--json", &id]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("Europe/Paris"), "{shown}");
}

/// Examples with a human gate: (workflow, inputs, answers given with the CLI, a line the result must contain).
/// (workflow, inputs, answers given with the CLI (`RUN` stands for the run id), a line the result must contain).
type Gated = (
    &'static str,
    &'static [&'static str],
    &'static [&'static [&'static str]],
    &'static str,
);

const GATED: &[Gated] = &[
    (
        "release-signoff.yaml",
        &["--input-file", "notes=inputs/release-notes.txt"],
        &[
            &["revise", "RUN", "--comments", "mention the cache size cap"],
            &["approve", "RUN"],
        ],
        "it is now capped at 10,000 entries",
    ),
    (
        "tagline-choice.yaml",
        &["--input", "product=spes"],
        &[&["choose", "RUN", "2"]],
        "chosen variation 2 of 3: Durable prompts, offline by default.",
    ),
    (
        "design-doc.yaml",
        &["--input", "feature=durable runs"],
        &[
            &["approve", "RUN"],
            &[
                "revise",
                "RUN",
                "--comments",
                "say when the entry is committed",
            ],
            &["approve", "RUN"],
            &["approve", "RUN"],
        ],
        "complete: Problem, Proposal, Risks",
    ),
    (
        "design-note.yaml",
        &["--input", "topic=journal every model call"],
        &[
            &["approve", "RUN"],
            &["approve", "RUN"],
            &["approve", "RUN"],
        ],
        "complete: Context, Decision, Risks",
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
    let mut listed: Vec<String> = CASES
        .iter()
        .map(|c| c.0.to_owned())
        .chain(GATED.iter().map(|c| c.0.to_owned()))
        .chain(STUBBED.iter().map(|c| (*c).to_owned()))
        .collect();
    listed.sort();
    assert_eq!(
        on_disk, listed,
        "add new examples to CASES in tests/examples.rs"
    );
}

#[test]
fn every_step_kind_has_an_example() {
    let mut text = String::new();
    for e in std::fs::read_dir(examples_dir().join("workflows")).unwrap() {
        text.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap());
    }
    let missing: Vec<&str> = spes_core::workflow::validate::STEP_KINDS
        .iter()
        .copied()
        .filter(|k| {
            !text.contains(&format!("kind: {k}\n")) && !text.contains(&format!("kind: {k},"))
        })
        .collect();
    assert!(missing.is_empty(), "no example uses kind {missing:?}");
}

#[test]
fn every_example_validates() {
    let dir = examples_dir();
    for file in CASES
        .iter()
        .map(|c| c.0)
        .chain(GATED.iter().map(|c| c.0))
        .chain(STUBBED.iter().copied())
    {
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
    let tmp = tempfile::tempdir().unwrap();
    for (file, inputs, expected) in CASES {
        let out = Command::new(env!("CARGO_BIN_EXE_spes"))
            .current_dir(&dir)
            .env_remove("ANTHROPIC_API_KEY")
            .env_remove("OPENAI_API_KEY")
            .args(["--store", &store_url(&tmp)])
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
    for file in CASES.iter().map(|c| c.0).chain(GATED.iter().map(|c| c.0)) {
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

fn store_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("spes.db").display())
}

#[test]
fn gated_examples_wait_for_a_human_then_finish() {
    let dir = examples_dir();
    for (file, inputs, answers, expected) in GATED {
        let tmp = tempfile::tempdir().unwrap();
        let store = store_url(&tmp);
        let spes = |args: &[&str]| {
            Command::new(env!("CARGO_BIN_EXE_spes"))
                .current_dir(&dir)
                .args(["--store", &store])
                .args(args)
                .output()
                .unwrap()
        };
        let mut args = vec!["run".to_owned(), format!("workflows/{file}")];
        args.extend(inputs.iter().map(|s| (*s).to_owned()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut out = spes(&argv);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list = spes(&["runs", "list"]);
        let id = String::from_utf8_lossy(&list.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        for answer in *answers {
            let a: Vec<&str> = answer
                .iter()
                .map(|x| if *x == "RUN" { id.as_str() } else { *x })
                .collect();
            let r = spes(&a);
            assert!(
                r.status.success(),
                "{file} {a:?}: {}",
                String::from_utf8_lossy(&r.stderr)
            );
            out = spes(&["resume", &id]);
        }
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(expected), "{file}: {stdout}");
    }
}

/// `spes tools list` starts the project's MCP servers and lists their
/// tools as `SERVER.TOOL`, in text and in JSON.
#[test]
fn tools_list_shows_the_mcp_servers_tools() {
    let time = std::env::var("SPES_TEST_MCP_TIME").unwrap_or_else(|_| {
        panic!("SPES_TEST_MCP_TIME is not set: run `eval \"$(bash scripts/mcp-servers.sh)\"` first")
    });
    let bin = Path::new(&time).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_spes"))
            .current_dir(examples_dir())
            .env("PATH", &path)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["tools", "list"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("time.get_current_time  ")),
        "{stdout}"
    );
    let out = run(&["tools", "list", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = doc["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "time.get_current_time")
        .unwrap_or_else(|| panic!("{doc}"));
    assert_eq!(t["server"], "time");
    assert!(t["parameters"]["properties"]["timezone"].is_object(), "{t}");
}
