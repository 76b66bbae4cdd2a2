//! Human gates through the real binary and a real SQLite store:
//! detached runs answered by other processes, double answers, races.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

const WF: &str = r#"name: signoff
inputs: { topic: { type: string, required: true } }
steps:
  - { name: draft, kind: llm, prompt: "Draft about {{ topic }}", output: draft }
  - name: reviews
    kind: parallel
    output: reviews
    steps:
      - { name: legal, kind: approval, show: draft }
      - { name: tone, kind: approval, show: draft, max_revisions: 1 }
  - { name: out, kind: transform, fn: template, input: "{{ reviews.legal.status }}/{{ reviews.tone.status }}: {{ reviews.tone.output }}", output: out }
output: out
"#;

fn project() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("spes.toml"),
        "[defaults]\nprovider = \"t\"\n[providers.t]\nkind = \"scripted\"\nscript = \"a.yaml\"\n",
    )
    .unwrap();
    std::fs::write(
        d.path().join("a.yaml"),
        "- { step: draft, reply: 'draft one' }\n- { step: revision1, reply: 'draft two' }\n- { default: echo }\n",
    )
    .unwrap();
    std::fs::write(d.path().join("w.yaml"), WF).unwrap();
    d
}

fn spes(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spes"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Writes a spes.toml whose providers are all scripted (`NAME` reads
/// `NAME.yaml`, written with the given script), `default` first choice.
fn scripted(d: &Path, default: &str, providers: &[(&str, &str)]) {
    let mut toml = format!("[defaults]\nprovider = \"{default}\"\n");
    for (name, script) in providers {
        toml.push_str(&format!(
            "[providers.{name}]\nkind = \"scripted\"\nscript = \"{name}.yaml\"\n"
        ));
        std::fs::write(d.join(format!("{name}.yaml")), script).unwrap();
    }
    std::fs::write(d.join("spes.toml"), toml).unwrap();
}

fn run_id(dir: &Path) -> String {
    let out = spes(dir, &["runs", "list"]);
    text(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn detached_gates_are_answered_by_id_from_other_processes_then_resumed() {
    let p = project();
    let d = p.path();
    let out = spes(d, &["run", "w.yaml", "-i", "topic=x"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("is waiting for a human at"),
        "{}",
        text(&out.stderr)
    );
    let id = run_id(d);
    let pending = text(&spes(d, &["runs", "pending"]).stdout);
    assert!(
        pending.contains("reviews/legal/review0") && pending.contains("reviews/tone/review0"),
        "{pending}"
    );

    // Two gates open: an answer without --gate is refused and names both.
    let out = spes(d, &["approve", &id[..8]]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("has 2 open gates: reviews/legal/review0, reviews/tone/review0"),
        "{}",
        text(&out.stderr)
    );

    // Answer each by id (the end of its key is enough).
    let out = spes(
        d,
        &[
            "revise",
            &id,
            "--gate",
            "tone/review0",
            "--comments",
            "warmer",
            "--suggest",
            "say thanks",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = spes(d, &["approve", &id, "--gate", "reviews/legal/review0"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A second answer to a decided gate is refused, showing the first.
    let out = spes(
        d,
        &[
            "reject",
            &id,
            "--gate",
            "reviews/legal/review0",
            "--reason",
            "changed my mind",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("was already decided at"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains(": approve by "),
        "{}",
        text(&out.stderr)
    );

    // A full restart: a fresh process resumes; the revision waits for its own review.
    let out = spes(d, &["resume", &id]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("reviews/tone/review1"),
        "{}",
        text(&out.stderr)
    );
    let out = spes(d, &["approve", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = spes(d, &["resume", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "approved/approved: draft two\n");

    let shown = text(&spes(d, &["runs", "show", &id]).stdout);
    assert!(shown.contains("completed"), "{shown}");
    assert!(shown.contains("\"comments\":\"warmer\""), "{shown}");
}

#[test]
fn racing_approve_and_reject_processes_exactly_one_wins() {
    let p = project();
    let d = p.path().to_path_buf();
    std::fs::write(
        d.join("w.yaml"),
        WF.replace(
            "      - { name: tone, kind: approval, show: draft, max_revisions: 1 }\n",
            "",
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("w.yaml"),
        std::fs::read_to_string(d.join("w.yaml")).unwrap().replace(
            "{{ reviews.legal.status }}/{{ reviews.tone.status }}: {{ reviews.tone.output }}",
            "{{ reviews.legal.status }}",
        ),
    )
    .unwrap();
    let out = spes(&d, &["run", "w.yaml", "-i", "topic=x"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let id = run_id(&d);
    let children: Vec<_> = (0..8)
        .map(|i| {
            let args: Vec<String> = if i % 2 == 0 {
                vec!["approve".into(), id.clone()]
            } else {
                vec![
                    "reject".into(),
                    id.clone(),
                    "--reason".into(),
                    format!("r{i}"),
                ]
            };
            Command::new(env!("CARGO_BIN_EXE_spes"))
                .current_dir(&d)
                .args(&args)
                .output_async()
        })
        .collect();
    let results: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let winners = results.iter().filter(|o| o.status.success()).count();
    assert_eq!(
        winners,
        1,
        "{:?}",
        results.iter().map(|o| text(&o.stderr)).collect::<Vec<_>>()
    );
    for o in results.iter().filter(|o| !o.status.success()) {
        let e = text(&o.stderr);
        assert!(
            e.contains("already decided") || e.contains("no open gate"),
            "{e}"
        );
        assert!(!e.contains("locked"), "{e}");
    }
    let out = spes(&d, &["resume", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status = text(&out.stdout);
    assert!(status == "approved\n" || status == "rejected\n", "{status}");
}

trait SpawnOutput {
    fn output_async(&mut self) -> std::process::Child;
}

impl SpawnOutput for Command {
    fn output_async(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }
}

#[test]
fn choose_answers_are_checked_against_the_gate() {
    let p = project();
    let d = p.path();
    std::fs::write(
        d.join("w.yaml"),
        "name: pick\nsteps:\n  - { name: tag, kind: choose, n: 3, generate: { prompt: 'a tagline' }, output: tag }\n  - { name: out, kind: transform, fn: template, input: '{{ tag.selected_index }}', output: out }\noutput: out\n",
    )
    .unwrap();
    let out = spes(d, &["run", "w.yaml"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let id = run_id(d);
    let out = spes(d, &["choose", &id, "4"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("offers variations 1 to 3"),
        "{}",
        text(&out.stderr)
    );
    let out = spes(d, &["revise", &id, "--comments", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("does not take `revise`"),
        "{}",
        text(&out.stderr)
    );
    assert!(spes(d, &["choose", &id, "2"]).status.success());
    let out = spes(d, &["resume", &id]);
    assert_eq!(text(&out.stdout), "2\n", "{}", text(&out.stderr));
}

#[test]
fn interactive_mode_reads_answers_from_stdin() {
    use std::io::Write;
    let p = project();
    let d = p.path();
    std::fs::write(
        d.join("w.yaml"),
        WF.replace("      - { name: legal, kind: approval, show: draft }\n", "")
            .replace("{{ reviews.legal.status }}/", ""),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_spes"))
        .current_dir(d)
        .args(["run", "w.yaml", "-i", "topic=x", "--interactive"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"v\nshorter\n\na\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "approved: draft two\n");
    let err = text(&out.stderr);
    assert!(
        err.contains("── approval gate `reviews/tone/review0`") && err.contains("draft one"),
        "{err}"
    );
}

#[test]
fn cancel_closes_the_gates_and_a_later_answer_is_refused_naming_it() {
    let p = project();
    let d = p.path();
    let out = spes(d, &["run", "w.yaml", "-i", "topic=x"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let id = run_id(d);
    let out = spes(d, &["cancel", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("is cancelled (its 2 open gates are closed)"),
        "{}",
        text(&out.stderr)
    );
    let pending = spes(d, &["runs", "pending"]);
    assert!(
        text(&pending.stderr).contains("no gate is waiting for a human"),
        "{}{}",
        text(&pending.stdout),
        text(&pending.stderr)
    );
    assert!(
        !text(&pending.stdout).contains(&id),
        "{}",
        text(&pending.stdout)
    );
    let out = spes(d, &["approve", &id, "--gate", "legal/review0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("gate `reviews/legal/review0` is closed: the run was cancelled"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !text(&out.stderr).contains("spes resume"),
        "{}",
        text(&out.stderr)
    );
    let out = spes(d, &["resume", &id]);
    assert_ne!(out.status.code(), Some(0));
    // Only a completed run replays (the engine's rule).
    let out = spes(d, &["runs", "replay", &id]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("is cancelled; only completed runs can be replayed"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn who_decided_is_recorded_from_as_and_shown() {
    let p = project();
    let d = p.path();
    let out = spes(d, &["run", "w.yaml", "-i", "topic=x"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let id = run_id(d);
    let out = spes(
        d,
        &["approve", &id, "--gate", "legal/review0", "--as", "ada"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("(by ada)"),
        "{}",
        text(&out.stderr)
    );
    // Without --as: the operating-system user.
    let out = Command::new(env!("CARGO_BIN_EXE_spes"))
        .current_dir(d)
        .args(["approve", &id, "--gate", "tone/review0"])
        .env("USER", "grace")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&spes(d, &["runs", "show", &id]).stdout);
    assert!(shown.contains("  input topic: x\n"), "{shown}");
    assert!(shown.contains("\"by\":\"ada\""), "{shown}");
    assert!(shown.contains("\"by\":\"grace\""), "{shown}");
}

#[test]
fn a_passed_deadline_decides_at_the_next_command_and_a_late_answer_is_refused() {
    let p = project();
    let d = p.path();
    std::fs::write(
        d.join("t.yaml"),
        "name: timed\nsteps:\n  - { name: draft, kind: llm, prompt: 'Draft', output: draft }\n  - { name: review, kind: approval, show: draft, deadline: 1s, on_timeout: approve, output: r }\n  - { name: out, kind: transform, fn: template, input: '{{ r.status }} timed_out={{ r.timed_out | tojson }}', output: out }\noutput: out\n",
    )
    .unwrap();
    let out = spes(d, &["run", "t.yaml"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let id = run_id(d);
    // The deadline passes with no process running.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let out = spes(d, &["reject", &id, "--reason", "too late"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("gate `review/review0` was decided by its deadline")
            && text(&out.stderr).contains("(approve); a late answer is not taken"),
        "{}",
        text(&out.stderr)
    );
    let out = spes(d, &["resume", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "approved timed_out=true\n");
    let shown = text(&spes(d, &["runs", "show", &id]).stdout);
    assert!(shown.contains("\"by\":\"deadline\""), "{shown}");
}

#[test]
fn a_run_keeps_the_provider_it_was_started_with() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    scripted(
        d,
        "b",
        &[
            ("a", "- { prompt_contains: '', reply: 'from a' }\n"),
            ("b", "- { prompt_contains: '', reply: 'from b' }\n"),
        ],
    );
    std::fs::write(
        d.join("w.yaml"),
        "name: pinned\nsteps:\n  - { name: first, kind: llm, prompt: 'one', output: one }\n  - { name: review, kind: approval, show: one }\n  - { name: last, kind: llm, prompt: 'two', output: two }\n  - { name: out, kind: transform, fn: template, input: '{{ one }} / {{ two }}', output: out }\noutput: out\n",
    )
    .unwrap();
    let out = spes(d, &["run", "w.yaml", "--provider", "a", "--detach"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let id = run_id(d);
    assert!(spes(d, &["approve", &id]).status.success());
    // Resumed without the flag: still provider a (the project default is b).
    let out = spes(d, &["resume", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "from a / from a\n");
    let shown = text(&spes(d, &["runs", "show", &id]).stdout);
    assert!(shown.contains("  provider: a (pinned"), "{shown}");

    // Another provider on resume is refused, naming the pinned one...
    let out = spes(d, &["run", "w.yaml", "--provider", "a", "--detach"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let id = run_id(d);
    assert!(spes(d, &["approve", &id]).status.success());
    let out = spes(d, &["resume", &id, "--provider", "b"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("was started with provider `a`, not `b`"),
        "{}",
        text(&out.stderr)
    );
    // ...unless changes are allowed.
    let out = spes(d, &["resume", &id, "--provider", "b", "--allow-changes"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "from a / from b\n");
}

#[test]
fn replay_names_the_first_step_whose_prompt_changed() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    scripted(
        d,
        "t",
        &[("t", "- { prompt_contains: '', reply: 'same answer' }\n")],
    );
    let wf = "name: r\nsteps:\n  - { name: one, kind: llm, prompt: 'first', output: a }\n  - { name: two, kind: llm, prompt: 'second', output: b }\noutput: b\n";
    std::fs::write(d.join("w.yaml"), wf).unwrap();
    let out = spes(d, &["run", "w.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = run_id(d);
    let out = spes(d, &["runs", "replay", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("output identical"),
        "{}",
        text(&out.stderr)
    );
    // The second prompt changes; the answers (and so the output) would not.
    std::fs::write(
        d.join("w.yaml"),
        wf.replace("'second'", "'second, reworded'"),
    )
    .unwrap();
    let out = spes(d, &["runs", "replay", &id, "--allow-changes"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr)
            .contains("step `two` would now send another request than the one recorded"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn fork_reuses_the_steps_before_and_runs_the_rest_on_the_current_files() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    scripted(
        d,
        "t",
        &[(
            "t",
            "- { step: one, replies: ['first answer', 'NEW first answer'] }\n- { default: echo }\n",
        )],
    );
    let wf = "name: f\ninputs: { topic: { type: string, required: true } }\nsteps:\n  - { name: one, kind: llm, prompt: 'about {{ topic }}', output: a }\n  - { name: two, kind: llm, prompt: 'B: {{ a }} / {{ topic }}', output: b }\noutput: b\n";
    std::fs::write(d.join("w.yaml"), wf).unwrap();
    let out = spes(d, &["run", "w.yaml", "-i", "topic=x"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "B: first answer / x\n");
    let id = run_id(d);
    // The second step's prompt changes; fork there with another topic.
    std::fs::write(d.join("w.yaml"), wf.replace("'B: ", "'B2: ")).unwrap();
    let out = spes(d, &["runs", "fork", &id, "--at", "two", "-i", "topic=y"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Step one answered from the record (no second call: its reply would
    // be the script's second one); step two ran anew on the new text.
    assert_eq!(text(&out.stdout), "B2: first answer / y\n");
    assert!(
        text(&out.stderr).contains(&format!("forked from run {id} at step `two`")),
        "{}",
        text(&out.stderr)
    );
    // The original run is untouched; the fork is a run of its own.
    let listed = text(&spes(d, &["runs", "list"]).stdout);
    assert_eq!(
        listed.lines().filter(|l| l.contains("completed")).count(),
        2,
        "{listed}"
    );
    let out = spes(d, &["runs", "fork", &id, "--at", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("has no top-level step `nope`; its steps: one, two"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn json_has_one_shape_in_every_outcome_and_detach_prints_the_run_id() {
    let p = project();
    let d = p.path();
    // Stopped at the gates (exit 3): still JSON on stdout.
    let out = spes(d, &["run", "w.yaml", "-i", "topic=x", "--json", "--detach"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = run_id(d);
    assert_eq!(v["run_id"], serde_json::json!(id));
    assert_eq!(v["status"], "waiting");
    assert_eq!(
        v["gates"],
        serde_json::json!(["reviews/legal/review0", "reviews/tone/review0"])
    );
    assert!(v["error"].is_null() && v["output"].is_null());
    // Without --json, a detached run stopped at a gate prints its id.
    let out = spes(d, &["run", "w.yaml", "-i", "topic=y", "--detach"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(text(&out.stdout).trim(), run_id(d));
    // A failed run: the error, classed.
    std::fs::write(d.join("bad.yaml"), "name: bad\nsteps:\n  - { name: s, kind: transform, fn: json_parse, input: 'not json', output: o }\n").unwrap();
    let out = spes(d, &["run", "bad.yaml", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["status"].as_str(), v["error"]["step"].as_str()),
        (Some("failed"), Some("s"))
    );
    assert_eq!(v["error"]["class"], "terminal");
    assert!(v["run_id"].is_string());
}

#[test]
fn progress_shows_retries_and_fallbacks_as_they_happen() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    scripted(
        d,
        "a",
        &[
            ("a", "- { step: s, error: server_error, times: 5 }\n"),
            ("b", "- { prompt_contains: hi, reply: 'from b' }\n"),
        ],
    );
    std::fs::write(
        d.join("w.yaml"),
        "name: p\nsteps:\n  - name: s\n    kind: llm\n    prompt: hi\n    retry: { attempts: 2, base: 1ms, jitter: false }\n    fallback: [{ provider: b }]\n    output: s\noutput: s\n",
    )
    .unwrap();
    let out = spes(d, &["run", "w.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "from b\n");
    let err = text(&out.stderr);
    let retry = err.find("↻ s: attempt 2 in 1ms (").expect(&err);
    let fallback = err.find("↪ s: step (").expect(&err);
    let done = err.find("✓ s").expect(&err);
    assert!(retry < fallback && fallback < done, "{err}");
    assert!(
        err.contains("gave up (") && err.contains("); trying fallback1 ("),
        "{err}"
    );
}

#[test]
fn runs_list_show_and_pending_print_json_for_programs() {
    let p = project();
    let d = p.path();
    let out = spes(d, &["run", "w.yaml", "-i", "topic=x", "--detach"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_owned();
    let json = |args: &[&str]| -> serde_json::Value {
        let out = spes(d, args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let list = json(&["runs", "list", "--json"]);
    assert_eq!(list["schema"], 1);
    assert_eq!(list["runs"][0]["id"], serde_json::json!(id));
    assert_eq!(list["runs"][0]["status"], "waiting");
    assert_eq!(list["runs"][0]["workflow"], "signoff");
    let pending = json(&["runs", "pending", "--json"]);
    // Two parallel branches opened their gates at the same moment: the
    // inbox lists them in the order they were opened, either one first.
    let mut keys: Vec<&str> = pending["gates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["key"].as_str().unwrap())
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["reviews/legal/review0", "reviews/tone/review0"]);
    for g in pending["gates"].as_array().unwrap() {
        assert_eq!(g["run_id"], serde_json::json!(id));
        assert_eq!(g["request"]["text"], "draft one");
    }
    let shown = json(&["runs", "show", &id, "--json"]);
    assert_eq!(shown["run"]["inputs"]["topic"], "x");
    assert_eq!(shown["run"]["provider"], "t");
    assert_eq!(shown["entries"][0]["key"], "draft");
    assert_eq!(shown["gates"].as_array().map(Vec::len), Some(2));
    // Where there is no store: empty lists, and no store is created.
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("spes.toml"), "").unwrap();
    let out = spes(empty.path(), &["runs", "list", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, serde_json::json!({ "schema": 1, "runs": [] }));
    assert!(!empty.path().join(".spes").exists());
}

#[test]
fn events_stream_progress_as_json_lines_on_stderr() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    scripted(
        d,
        "a",
        &[(
            "a",
            "- { step: one, error: server_error, times: 1 }\n- { default: echo }\n",
        )],
    );
    std::fs::write(
        d.join("w.yaml"),
        "name: e\nsteps:\n  - { name: one, kind: llm, prompt: \"hi\\u001b[2J\", retry: { attempts: 2, base: 1ms, jitter: false }, output: a }\n  - { name: two, kind: transform, fn: uppercase, input: '{{ a }}', output: b }\noutput: b\n",
    )
    .unwrap();
    let out = spes(d, &["run", "w.yaml", "--events"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        !err.contains('\u{1b}'),
        "no raw escape reaches the terminal: {err:?}"
    );
    let events: Vec<serde_json::Value> = err
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap(),
                e["key"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("step_started", "one"),
            ("retrying", "one"),
            ("step_finished", "one"),
            ("step_started", "two"),
            ("step_finished", "two"),
        ],
        "{err}"
    );
    assert_eq!(events[1]["attempt"], 2);
    assert!(events[2]["error"].is_null() && events[2]["elapsed_ms"].is_u64());
}

#[test]
fn workflow_validate_json_lists_the_workflows_and_diagnostics_with_positions() {
    let p = project();
    let d = p.path();
    std::fs::write(
        d.join("bad.yaml"),
        "name: bad\nsteps:\n  - { name: a, kind: llm, prompt: '{{ nope }}' }\n",
    )
    .unwrap();
    let out = spes(d, &["workflow", "validate", "w.yaml", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["schema"].as_u64(), v["valid"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(v["workflows"][0]["name"], "signoff");
    let out = spes(d, &["workflow", "validate", "w.yaml", "bad.yaml", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    let e = &v["diagnostics"][0];
    assert_eq!(
        (e["severity"].as_str(), e["file"].as_str()),
        (Some("error"), Some("bad.yaml"))
    );
    assert!(e["code"].as_str().unwrap().starts_with("spes::"), "{e}");
    assert_eq!(e["line"], 3, "{e}");
    assert!(e["column"].as_u64().unwrap() > 1, "{e}");
    assert!(e["message"].as_str().unwrap().contains("nope"), "{e}");
}

#[test]
fn components_list_and_show_print_json() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    assert!(spes(d, &["init"]).status.success());
    let out = spes(d, &["components", "list", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = v["components"].as_array().unwrap();
    assert!(!list.is_empty(), "{v}");
    let first = &list[0];
    for k in [
        "reference",
        "kind",
        "name",
        "version",
        "description",
        "file",
        "tags",
    ] {
        assert!(first.get(k).is_some(), "{k} in {first}");
    }
    let r = first["reference"].as_str().unwrap();
    let out = spes(d, &["components", "show", r, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["reference"], first["reference"]);
    assert!(c["body"].as_str().is_some_and(|b| !b.is_empty()), "{c}");
    assert!(c["variables"].is_array());
}

#[test]
fn doctor_json_says_which_providers_are_usable_and_never_a_key() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    std::fs::write(
        d.join("spes.toml"),
        "[defaults]\nprovider = \"t\"\n[providers.t]\nkind = \"scripted\"\nscript = \"a.yaml\"\n[providers.o]\nkind = \"openai\"\n",
    )
    .unwrap();
    std::fs::write(d.join("a.yaml"), "- { default: echo }\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_spes"))
        .current_dir(d)
        .args(["doctor", "--json"])
        .env("OPENAI_API_KEY", "sk-canary-doctor-json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let raw = text(&out.stdout);
    assert!(!raw.contains("sk-canary"), "{raw}");
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        (v["default_provider"].as_str(), v["default_ready"].as_bool()),
        (Some("t"), Some(true))
    );
    assert_eq!(v["keys_set"]["OPENAI_API_KEY"], true);
    let t = v["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "t")
        .unwrap();
    assert_eq!(
        (t["kind"].as_str(), t["ready"].as_bool()),
        (Some("scripted"), Some(true))
    );
    // An unusable default: exit 1, still JSON.
    std::fs::remove_file(d.join("a.yaml")).unwrap();
    let out = spes(d, &["doctor", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["default_ready"], false);
}

/// A payment service on a loopback port: counts `POST /charge`.
fn payment_stub() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    let app = axum::Router::new().route(
        "/charge",
        axum::routing::post(move || {
            let h = h.clone();
            async move {
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                axum::Json(serde_json::json!({ "charged": true }))
            }
        }),
    );
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
    (format!("http://{addr}"), hits)
}

/// `approve_tools`: the agent's call waits at a gate that `spes runs
/// pending` lists and `spes approve` answers; the tool runs only then,
/// once, and the run completes on resume.
#[test]
fn a_tool_call_waits_for_approval_given_with_the_cli() {
    let (api, hits) = payment_stub();
    let p = tempfile::tempdir().unwrap();
    let d = p.path();
    scripted(
        d,
        "t",
        &[(
            "t",
            "- { step: \"pay/turn[1]\", tool_calls: [{ name: charge, arguments: { amount: 5 } }] }\n- { step: \"pay/turn[2]\", reply: Charged. }\n",
        )],
    );
    std::fs::write(
        d.join("w.yaml"),
        format!(
            r#"name: pay
steps:
  - name: pay
    kind: agent
    prompt: "Charge 5."
    tools:
      - http: {{ name: charge, description: Charges the card, method: POST, url: "{api}/charge", body: {{ amount: "{{{{ args.amount }}}}" }} }}
    approve_tools: [charge]
    output: out
output: out
"#
        ),
    )
    .unwrap();
    let out = spes(d, &["run", "w.yaml"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let gate = "pay/turn[1]/call[charge#1]#approval";
    assert!(text(&out.stderr).contains(gate), "{}", text(&out.stderr));
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    let pending = text(&spes(d, &["runs", "pending"]).stdout);
    assert!(pending.contains(gate), "{pending}");
    let id = run_id(d);
    let out = spes(d, &["approve", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = spes(d, &["resume", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Charged.\n");
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the approved call ran once"
    );
}
