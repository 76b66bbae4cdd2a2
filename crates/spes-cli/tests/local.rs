//! The embedded model end to end through `spes`: the offline default, a
//! degrade from a failing remote provider to `local`, and a crash after a
//! local call whose resume does not run the model again.
//! Needs the default model (`scripts/fetch-model.sh`; `scripts/test.sh` fetches it).
#![cfg(feature = "local")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "crash/harness.rs"]
mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use harness::{Project, sigkill, wait};
use spes_fake_llm::{FakeResponse, FakeServer};
use spes_store::{RunStatus, RunStore};

const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1";

fn model_path() -> std::path::PathBuf {
    let p = spes_local::default_model_path();
    assert!(
        p.is_file(),
        "the default model is not at {}; run scripts/fetch-model.sh (scripts/test.sh does)",
        p.display()
    );
    p
}

const CHAIN: &str = r#"name: local_chain
inputs:
  text: { type: string, default: "The release adds offline runs, faster resumes and clearer errors." }
steps:
  - { name: summary, kind: llm, prompt: "Summarise in one sentence: {{ text }}", max_tokens: 32, output: summary }
  - { name: title, kind: llm, prompt: "Write a short title for: {{ summary }}", max_tokens: 12, output: title }
output: title
"#;

#[tokio::test]
async fn with_no_provider_and_no_key_workflows_run_on_the_local_model() {
    model_path();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("wf.yaml"), CHAIN).unwrap();
    // No spes.toml at all: no provider configured, no key in the environment.
    let run = |args: &[&str]| {
        let out = harness::spes_command(dir.path(), args).output().unwrap();
        assert!(
            out.status.success(),
            "spes {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let first = run(&["run", "wf.yaml", "--json"]);
    let ctx: serde_json::Value =
        serde_json::from_slice::<serde_json::Value>(&first.stdout).unwrap()["context"].clone();
    let title = ctx["title"].as_str().unwrap();
    let summary = ctx["summary"].as_str().unwrap();
    assert!(
        !title.trim().is_empty() && !summary.trim().is_empty(),
        "{ctx}"
    );
    // Greedy: the same run gives the same text.
    let again = run(&["run", "wf.yaml", "--json"]);
    let ctx2: serde_json::Value =
        serde_json::from_slice::<serde_json::Value>(&again.stdout).unwrap()["context"].clone();
    assert_eq!(ctx["title"], ctx2["title"]);
    // The journal records the local model like any provider's answer.
    let store = spes_store::sqlite::SqliteStore::open(
        &dir.path().join(".spes/spes.db"),
        spes_store::sqlite::SqliteOptions::default(),
    )
    .await
    .unwrap();
    let runs = store.list_runs(None, 10).await.unwrap();
    let entries = store.entries(&runs[0].id).await.unwrap();
    let models: Vec<_> = entries.iter().filter(|e| e.kind == "model").collect();
    assert_eq!(models.len(), 2);
    for e in models {
        assert_eq!(e.payload["response"]["model"], MODEL, "{}", e.payload);
        assert!(
            e.payload["response"]["usage"]["output_tokens"]
                .as_u64()
                .unwrap()
                > 0
        );
    }
}

#[tokio::test]
async fn a_missing_model_file_names_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("wf.yaml"), CHAIN).unwrap();
    let out = harness::spes_command(dir.path(), &["run", "wf.yaml", "--no-store"])
        .env("SPES_MODEL_DIR", dir.path().join("no-models-here"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not found"), "{err}");
    assert!(err.contains("scripts/fetch-model.sh"), "{err}");
}

#[tokio::test]
async fn a_failing_remote_provider_degrades_to_local() {
    model_path();
    let server = FakeServer::start().await.unwrap();
    server.set_default(FakeResponse::server_error());
    let wf = r#"name: degrade_to_local
steps:
  - name: answer
    kind: llm
    prompt: "Name one planet."
    max_tokens: 12
    retry: { attempts: 2, base: 10ms, jitter: false }
    degrade: [ { provider: remote, name: remote }, { provider: local, name: offline model } ]
    output: answer
output: answer
"#;
    let p = Project::new(wf, &server.openai_base_url());
    let exit = wait(p.spawn(&["run", "wf.yaml", "--json"])).await;
    assert_eq!(exit.code(), Some(0), "{}", exit.stderr);
    let ctx: serde_json::Value =
        serde_json::from_slice::<serde_json::Value>(&exit.stdout).unwrap()["context"].clone();
    assert!(!ctx["answer"].as_str().unwrap().trim().is_empty(), "{ctx}");
    assert_eq!(ctx["answer_served_by"]["by"], "degrade2", "{ctx}");
    assert_eq!(ctx["answer_served_by"]["degraded"], true);
    // The remote level was really tried, with its retry, before local served.
    assert_eq!(server.request_count(), 2);
    let store = p.store().await;
    let run = &store.list_runs(None, 1).await.unwrap()[0];
    let served = store
        .entry(&run.id, "answer#degrade2")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        served.payload["response"]["model"], MODEL,
        "{}",
        served.payload
    );
}

#[tokio::test]
async fn a_finished_local_call_is_not_repeated_after_a_crash() {
    let model = model_path();
    let server = FakeServer::start().await.unwrap();
    server.set_default(FakeResponse::text("a remote answer"));
    let wf = r#"name: local_then_remote
steps:
  - { name: draft, kind: llm, provider: local, prompt: "Write one sentence about rivers.", max_tokens: 24, output: draft }
  - { name: polish, kind: llm, prompt: "Polish: {{ draft }}", output: polished }
output: polished
"#;
    let p = Project::new(wf, &server.openai_base_url());
    let toml = |model_path: &str| {
        format!(
            "[defaults]\nprovider = \"remote\"\n\n[providers.remote]\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\n\n[providers.local]\nkind = \"local\"\nmodel_path = \"{model_path}\"\ncontext = 1024\n",
            server.openai_base_url()
        )
    };
    p.write("spes.toml", &toml(&model.display().to_string()));

    // The remote call (after the local one) kills the process.
    let pid = Arc::new(AtomicU32::new(0));
    let hook_pid = Arc::clone(&pid);
    server.on_request(move |n| {
        if n != 1 {
            return;
        }
        sigkill(harness::spawned_pid(&hook_pid));
    });
    let child = p.spawn(&["run", "wf.yaml"]);
    pid.store(child.id(), Ordering::SeqCst);
    let exit = wait(child).await;
    assert_eq!(exit.signal(), Some(9), "expected a kill: {}", exit.stderr);

    let store = p.store().await;
    let run = store.list_runs(None, 1).await.unwrap().remove(0);
    let draft = store
        .entry(&run.id, "draft")
        .await
        .unwrap()
        .expect("draft committed before the kill");
    assert_eq!(draft.payload["response"]["model"], MODEL);
    assert!(store.entry(&run.id, "polish").await.unwrap().is_none());
    store.close().await;

    // Resume with the model file gone: only a replay of `draft` can succeed.
    p.write("spes.toml", &toml("/nonexistent/model.gguf"));
    let exit = wait(p.spawn(&["resume", &run.id.to_string()])).await;
    assert_eq!(exit.code(), Some(0), "{}", exit.stderr);
    assert_eq!(exit.stdout_text().trim(), "a remote answer");
    let store = p.store().await;
    let after = store.entry(&run.id, "draft").await.unwrap().unwrap();
    assert_eq!(
        after, draft,
        "the local answer is the one committed before the crash"
    );
    let polish = server.last_request().unwrap();
    let draft_text = draft.payload["response"]["text"].as_str().unwrap();
    let first_word = draft_text.split_whitespace().next().unwrap();
    assert!(
        polish.raw_body.contains(first_word),
        "the resumed remote call is built on the recorded local answer"
    );
    assert_eq!(
        store.run(&run.id).await.unwrap().unwrap().status,
        RunStatus::Completed
    );
}

#[tokio::test]
async fn on_a_terminal_the_progress_line_streams_the_local_answer() {
    model_path();
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("this test needs `script` (util-linux) to give spes a terminal");
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("wf.yaml"), CHAIN).unwrap();
    let spes = env!("CARGO_BIN_EXE_spes");
    // `script` runs spes on a pseudo-terminal and copies what it printed.
    let log = dir.path().join("tty.log");
    let status = std::process::Command::new("script")
        .current_dir(dir.path())
        .args(["-qec", &format!("{spes} run wf.yaml --no-store")])
        .arg(&log)
        .env_remove("SPES_CONFIG")
        .env_remove("SPES_PROVIDER")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    // Several live redraws of the summary step, each longer than the last.
    let live: Vec<&str> = text
        .split("\r\x1b[2K")
        .filter(|l| l.starts_with("… summary  "))
        .collect();
    assert!(live.len() > 3, "no streamed progress: {text:?}");
    assert!(text.contains("✓\x1b[0m summary"), "{text:?}");
}

#[test]
fn doctor_shows_usable_providers_key_names_and_the_model_never_a_key() {
    let model = model_path();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("spes.toml"),
        "[providers.claude]\nkind = \"anthropic\"\napi_key_env = \"SPES_DOCTOR_KEY\"\n\n[providers.gpt]\nkind = \"openai\"\napi_key_env = \"SPES_DOCTOR_MISSING\"\n",
    )
    .unwrap();
    let canary = "sk-canary-0123456789-doctor";
    let out = harness::spes_command(dir.path(), &["doctor"])
        .env("SPES_DOCTOR_KEY", canary)
        .env_remove("SPES_DOCTOR_MISSING")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let all = format!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(!all.contains(canary), "a key value was printed: {all}");
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with("  ") && l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}: {text}"))
            .to_owned()
    };
    let claude = line("claude");
    assert!(
        claude.starts_with("  ✓") && claude.contains("$SPES_DOCTOR_KEY (set)"),
        "{text}"
    );
    let gpt = line("gpt");
    assert!(
        gpt.starts_with("  ✗") && gpt.contains("$SPES_DOCTOR_MISSING, which is not set"),
        "{text}"
    );
    let local = line("local");
    assert!(
        local.starts_with("  ✓") && local.contains(&model.display().to_string()),
        "{local}"
    );
    assert!(local.contains("llama"), "the GGUF architecture: {local}");
    // The key is set, so `claude` is the default.
    assert!(text.contains("default   claude"), "{text}");

    // Without the model file, doctor says how to get it.
    let out = harness::spes_command(dir.path(), &["doctor"])
        .env("SPES_MODEL_DIR", dir.path().join("empty"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("default   local (not usable: see below)"),
        "{text}"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "an unusable default fails doctor"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the default provider `local` is not usable"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let local = text
        .lines()
        .find(|l| l.starts_with("  ") && l.contains(" local "))
        .unwrap();
    assert!(
        local.starts_with("  ✗") && local.contains("scripts/fetch-model.sh"),
        "{local}"
    );
}

/// `spes ARGS` in `dir` (no spes.toml: the local model), awaited.
fn local_spes(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    harness::spes_command(dir, args).output().unwrap()
}

/// The journal of the newest run in `dir`'s store, in order.
fn last_entries(dir: &std::path::Path) -> Vec<spes_store::Entry> {
    let rt = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        rt.block_on(async {
            let store = spes_store::sqlite::SqliteStore::open(
                &dir.join(".spes/spes.db"),
                spes_store::sqlite::SqliteOptions::default(),
            )
            .await
            .unwrap();
            let run = &store.list_runs(None, 1).await.unwrap()[0];
            store.entries(&run.id).await.unwrap()
        })
    })
}

fn entry_keys(dir: &std::path::Path) -> Vec<String> {
    last_entries(dir).into_iter().map(|e| e.key).collect()
}

fn last_run(dir: &std::path::Path) -> String {
    let out = local_spes(dir, &["runs", "list"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned()
}

/// The spider's legs as JSON, checked against `legs.json`: an even `n`.
/// The grammar cannot enforce `multipleOf`; the check after the answer does.
fn legs_project(dir: &std::path::Path, repair: u32) {
    std::fs::write(
        dir.join("legs.json"),
        r#"{ "type": "object", "required": ["n"], "properties": { "n": { "type": "integer", "multipleOf": 2 } } }"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("wf.yaml"),
        format!("name: legs\nsteps:\n  - {{ name: count, kind: llm, prompt: 'How many legs has a spider? JSON: {{\"n\": N}}', schema: legs.json, max_tokens: 24, repair: {repair}, output: legs }}\noutput: legs\n"),
    )
    .unwrap();
}

/// The recorded answers' `n`, attempt by attempt.
fn recorded_legs(dir: &std::path::Path) -> Vec<i64> {
    last_entries(dir)
        .into_iter()
        .map(|e| {
            let text = e.payload["response"]["text"].as_str().unwrap().to_owned();
            serde_json::from_str::<serde_json::Value>(&text).unwrap()["n"]
                .as_i64()
                .unwrap()
        })
        .collect()
}

/// A schema violation on `local` repaired on the second attempt: the
/// repair request carries the rejected answer, and the local sampler never
/// gives a rejected answer again (greedy decoding would repeat it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_schema_violation_is_repaired_on_the_second_attempt() {
    model_path();
    let dir = tempfile::tempdir().unwrap();
    legs_project(dir.path(), 1);
    let out = local_spes(dir.path(), &["run", "wf.yaml", "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("repaired after 1 invalid answer"), "{err}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = doc["context"]["legs"]["n"].as_i64().unwrap();
    assert_eq!(n % 2, 0, "{doc}");
    assert_eq!(entry_keys(dir.path()), ["count", "count#repair1"]);
    let legs = recorded_legs(dir.path());
    assert_ne!(
        legs[0] % 2,
        0,
        "the first answer was the invalid one: {legs:?}"
    );
    assert_eq!(legs[1], n);
}

/// With no repair allowed the violation fails the run with its pointer;
/// the schema file is pinned (an edit refuses resume); raising `repair`
/// lets `spes resume` ask the model again, and the run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_violation_that_persists_fails_with_pointers_and_resume_with_a_repair_completes() {
    model_path();
    let dir = tempfile::tempdir().unwrap();
    legs_project(dir.path(), 0);
    let out = local_spes(dir.path(), &["run", "wf.yaml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("invalid_output"), "{err}");
    assert!(
        err.contains("/n: ") && err.contains("is not a multiple of 2"),
        "{err}"
    );
    assert_eq!(entry_keys(dir.path()), ["count"]);
    let id = last_run(dir.path());
    // The schema file is pinned: an edit refuses resume.
    let pinned = std::fs::read(dir.path().join("legs.json")).unwrap();
    std::fs::write(
        dir.path().join("legs.json"),
        r#"{ "type": "object", "required": ["n"], "properties": { "n": { "type": "integer" } } }"#,
    )
    .unwrap();
    let refused = local_spes(dir.path(), &["resume", &id]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_ne!(refused.status.code(), Some(0), "{err}");
    assert!(
        err.contains("the schema file") && err.contains("legs.json"),
        "{err}"
    );
    // The schema back as it was, one repair allowed: resume asks again.
    std::fs::write(dir.path().join("legs.json"), pinned).unwrap();
    legs_project(dir.path(), 1);
    let done = local_spes(dir.path(), &["resume", &id, "--allow-changes", "--json"]);
    assert_eq!(
        done.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let ctx: serde_json::Value =
        serde_json::from_slice::<serde_json::Value>(&done.stdout).unwrap()["context"].clone();
    assert_eq!(ctx["legs"]["n"].as_i64().unwrap() % 2, 0, "{ctx}");
    assert_eq!(entry_keys(dir.path()), ["count", "count#repair1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_json_answer_cut_at_max_tokens_fails_and_resume_with_more_tokens_asks_again() {
    model_path();
    let dir = tempfile::tempdir().unwrap();
    let wf = "name: cut\nsteps:\n  - name: pick\n    kind: llm\n    prompt: Write the word red two times as a JSON array.\n    schema: { type: array, items: { type: string }, maxItems: 3 }\n    max_tokens: 8\n    output: v\noutput: v\n";
    std::fs::write(dir.path().join("wf.yaml"), wf).unwrap();
    let out = local_spes(dir.path(), &["run", "wf.yaml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("invalid_output") && err.contains("/: the answer was cut off at max_tokens"),
        "{err}"
    );
    assert!(err.contains("raise the step's `max_tokens`"), "{err}");
    assert_eq!(entry_keys(dir.path()), ["pick", "pick#repair1"]);
    std::fs::write(
        dir.path().join("wf.yaml"),
        wf.replace("max_tokens: 8", "max_tokens: 64"),
    )
    .unwrap();
    let id = last_run(dir.path());
    let done = local_spes(dir.path(), &["resume", &id, "--allow-changes", "--json"]);
    assert_eq!(
        done.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let ctx: serde_json::Value =
        serde_json::from_slice::<serde_json::Value>(&done.stdout).unwrap()["context"].clone();
    let items = ctx["v"].as_array().unwrap();
    assert!(!items.is_empty() && items.len() <= 3, "{ctx}");
    // The recorded attempts replayed; the model was asked again.
    let keys = entry_keys(dir.path());
    assert_eq!(keys[..2], ["pick", "pick#repair1"]);
    assert!(keys.len() >= 3, "{keys:?}");
}
