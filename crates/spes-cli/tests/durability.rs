//! Issue 11, from the outside: one owner per run (two `spes resume` of
//! the same run), a disk that fills mid-run (exit 5, nothing claimed that
//! is not committed), and private store files under a permissive umask.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "crash/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use harness::{Project, marker, sigkill, spes_command, wait};
use spes_fake_llm::{FakeResponse, FakeServer};
use spes_store::{RunStatus, RunStore};

fn chain(steps: usize, text: &str) -> String {
    let mut yaml = String::from(
        "name: durable_chain\ninputs:\n  topic: { type: string, default: rust }\nsteps:\n",
    );
    for i in 1..=steps {
        let prev = if i == 1 {
            "topic".to_owned()
        } else {
            format!("s{}", i - 1)
        };
        yaml.push_str(&format!(
            "  - {{ name: s{i}, kind: llm, prompt: \"[s{i}] {text} {{{{ {prev} | length }}}}\", max_tokens: 64, output: s{i} }}\n"
        ));
    }
    yaml
}

/// Requests per step marker.
fn calls_per_step(server: &FakeServer) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in server.requests() {
        *m.entry(marker(&r.body).unwrap()).or_insert(0) += 1;
    }
    m
}

/// A run whose process was SIGKILLed mid-run is `running` under a dead
/// owner. Two `spes resume` of it at once: exactly one executes it; the
/// other is refused at once (exit 6) naming the live owner, and no model
/// call is made twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_resumes_execute_a_run_once() {
    const STEPS: usize = 12;
    let server = FakeServer::start().await.unwrap();
    let project = Project::new(&chain(STEPS, "go"), &server.openai_base_url());
    // The first life dies when step 3 is asked for (steps 1 and 2 committed).
    let pid = Arc::new(AtomicU32::new(0));
    {
        let pid = pid.clone();
        server.on_request(move |n| {
            if n == 3 {
                sigkill(harness::spawned_pid(&pid));
            }
        });
    }
    let child = project.spawn(&["run", "wf.yaml"]);
    pid.store(child.id(), Ordering::SeqCst);
    let exit = wait(child).await;
    assert_eq!(exit.signal(), Some(9), "the first life was killed");
    server.on_request(|_| {});
    let store = project.store().await;
    let run = store.list_runs(None, 1).await.unwrap().remove(0);
    assert_eq!(
        run.status,
        RunStatus::Running,
        "left running by a dead owner"
    );
    let done_before = store.entries(&run.id).await.unwrap().len();
    store.close().await;
    // Shown as interrupted, not as a live run.
    let listed = wait(project.spawn(&["runs", "list"])).await;
    assert!(
        listed
            .stdout_text()
            .lines()
            .nth(1)
            .unwrap_or("")
            .contains("interrupted"),
        "{}",
        listed.stdout_text()
    );
    let before = server.request_count();

    // Slow answers, so that the two resumes overlap for the whole run.
    server.set_default(FakeResponse::echo().with_latency(Duration::from_millis(100)));
    let id = run.id.to_string();
    let a = project.spawn(&["resume", &id]);
    let b = project.spawn(&["resume", &id]);
    let (a, b) = tokio::join!(wait(a), wait(b));
    let mut codes = [a.code(), b.code()];
    codes.sort_unstable();
    assert_eq!(
        codes,
        [Some(0), Some(6)],
        "one resume runs, the other is refused:\nA: {}\nB: {}",
        a.stderr,
        b.stderr
    );
    let refused = if a.code() == Some(6) { &a } else { &b };
    assert!(
        refused.stderr.contains("is running under") && refused.stderr.contains(':'),
        "the refusal names the owner: {}",
        refused.stderr
    );
    let per_step = calls_per_step(&server);
    let dup: Vec<_> = per_step.iter().filter(|(_, n)| **n > 1).collect();
    // Step 3 was asked for by the killed life and never committed: it is
    // the only step that may be asked for twice.
    assert!(
        dup.iter().all(|(k, n)| k.as_str() == "s3" && **n == 2),
        "duplicate model calls: {dup:?}"
    );
    assert_eq!(
        server.request_count() - before,
        STEPS - done_before,
        "the remaining steps were called once each"
    );
    let store = project.store().await;
    let run = store.run(&run.id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(store.entries(&run.id).await.unwrap().len(), STEPS);
    store.close().await;
}

/// Ctrl-C (SIGINT) mid-run: the run is given back at once (shown
/// `interrupted`, owner cleared), exit 130 with how to resume; the resume
/// takes it over (no dead-owner wait) and repeats no finished step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_marks_the_run_interrupted_and_says_how_to_resume() {
    const STEPS: usize = 6;
    let server = FakeServer::start().await.unwrap();
    let project = Project::new(&chain(STEPS, "go"), &server.openai_base_url());
    let pid = Arc::new(AtomicU32::new(0));
    {
        let pid = pid.clone();
        server.on_request(move |n| {
            if n == 3 {
                let p = harness::spawned_pid(&pid);
                let ok = std::process::Command::new("kill")
                    .args(["-INT", &p.to_string()])
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "kill -INT {p}");
            }
        });
    }
    let child = project.spawn(&["run", "wf.yaml"]);
    pid.store(child.id(), Ordering::SeqCst);
    let exit = wait(child).await;
    server.on_request(|_| {});
    assert_eq!(exit.code(), Some(130), "{}", exit.stderr);
    assert!(
        exit.stderr.contains("interrupted; `spes resume "),
        "{}",
        exit.stderr
    );
    let store = project.store().await;
    let run = store.list_runs(None, 1).await.unwrap().remove(0);
    assert_eq!(
        (run.status, run.owner.as_deref()),
        (RunStatus::Running, None)
    );
    let done_before = store.entries(&run.id).await.unwrap().len();
    assert!(
        (2..STEPS).contains(&done_before),
        "{done_before} steps committed"
    );
    store.close().await;
    let listed = wait(project.spawn(&["runs", "list"])).await;
    assert!(
        listed.stdout_text().contains("interrupted"),
        "{}",
        listed.stdout_text()
    );
    let resumed = wait(project.spawn(&["resume", &run.id.to_string()])).await;
    assert_eq!(resumed.code(), Some(0), "{}", resumed.stderr);
    let per_step = calls_per_step(&server);
    // Only a step in flight at the Ctrl-C may have been asked for twice.
    let dup: Vec<_> = per_step.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dup.len() <= 1 && dup.iter().all(|(_, n)| **n == 2),
        "{dup:?}"
    );
    assert_eq!(per_step.len(), STEPS);
}

/// The store lives on a tmpfs that fills mid-run: the run stops at the
/// step whose commit failed, with exit 5 naming the cause; every step it
/// reported done is in the journal, no later step is called; once space
/// is back, `spes resume` finishes it. Needs `mount` (root): skipped with
/// a printed reason otherwise (`spes-store`'s max_page_count tests always run).
#[tokio::test]
async fn a_disk_that_fills_mid_run_stops_it_with_exit_5() {
    const STEPS: usize = 40;
    let server = FakeServer::start().await.unwrap();
    let project = Project::new(&chain(STEPS, &"x".repeat(4000)), &server.openai_base_url());
    let spes = project.root.join(".spes");
    std::fs::create_dir_all(&spes).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=320k,mode=0700", "tmpfs"])
        .arg(&spes)
        .output();
    match mounted {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            println!(
                "SKIPPED: cannot mount a tmpfs here ({}); the disk-full path is covered by max_page_count tests",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return;
        }
        Err(e) => {
            println!("SKIPPED: no mount command ({e})");
            return;
        }
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(spes.clone());
    server.set_default(FakeResponse::text("y".repeat(6000)));
    let exit = wait(project.spawn(&["run", "wf.yaml"])).await;
    assert_eq!(
        exit.code(),
        Some(5),
        "a full disk stops the run with exit 5:\n{}",
        exit.stderr
    );
    assert!(
        exit.stderr.contains("did not commit") && exit.stderr.contains("full"),
        "the message names the cause: {}",
        exit.stderr
    );
    // Space comes back; what was committed is intact and a prefix of the chain.
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&spes)
        .status()
        .unwrap();
    assert!(grown.success());
    let store = project.store().await;
    let run = store.list_runs(None, 1).await.unwrap().remove(0);
    let keys: Vec<String> = store
        .entries(&run.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    let k = keys.len();
    assert!(
        k > 0 && k < STEPS,
        "the disk filled mid-run ({k} steps stored)"
    );
    let prefix: Vec<String> = (1..=k).map(|i| format!("s{i}")).collect();
    assert_eq!(keys, prefix, "earlier entries intact");
    // Every step shown as done is stored; the step whose commit failed was
    // the last one asked for.
    let shown_done = exit.stderr.matches("✓").count();
    assert!(shown_done <= k, "{shown_done} steps shown done, {k} stored");
    assert_eq!(
        server.request_count(),
        k + 1,
        "no call after the failed commit"
    );
    store.close().await;
    let exit = wait(project.spawn(&["resume", &run.id.to_string()])).await;
    assert_eq!(exit.code(), Some(0), "resumed:\n{}", exit.stderr);
    assert_eq!(
        server.request_count(),
        STEPS + 1,
        "only the uncommitted step is asked again"
    );
}

/// Under umask 000, `spes run` still creates `.spes/` 0700 and the
/// database with its -wal/-shm 0600.
#[tokio::test]
async fn the_store_is_private_under_umask_000() {
    use std::os::unix::fs::PermissionsExt;
    let server = FakeServer::start().await.unwrap();
    let project = Project::new(&chain(2, "go"), &server.openai_base_url());
    let cmd = spes_command(&project.root, &[]);
    let bin = env!("CARGO_BIN_EXE_spes");
    let mut sh = std::process::Command::new("sh");
    sh.current_dir(&project.root)
        .args(["-c", &format!("umask 000; exec '{bin}' run wf.yaml")])
        .envs(cmd.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in cmd.get_envs() {
        if v.is_none() {
            sh.env_remove(k);
        }
    }
    let exit = wait(sh.spawn().unwrap()).await;
    assert_eq!(exit.code(), Some(0), "{}", exit.stderr);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&project.root.join(".spes")), 0o700, ".spes/");
    assert_eq!(mode(&project.db()), 0o600, "spes.db");
    // While a store is open its -wal and -shm exist: check their modes then.
    let store = project.store().await;
    for suffix in ["-wal", "-shm"] {
        let p = project.root.join(format!(".spes/spes.db{suffix}"));
        assert_eq!(mode(&p), 0o600, "spes.db{suffix}");
    }
    store.close().await;
}

/// The booking service of examples/workflows/booking-saga.yaml: the first
/// charge request SIGKILLs the `spes` whose pid is in `pid` (the request
/// was sent, its answer never committed); every charge is refused (402).
/// Records `METHOD /path idempotency-key` lines.
async fn killing_booking_stub(pid: Arc<AtomicU32>) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (log, pid) = (log.clone(), pid.clone());
        async move {
            let line = format!("{} {}", req.method(), req.uri().path());
            let key = req
                .headers()
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            let charges = {
                let mut log = log.lock().unwrap();
                log.push(format!("{line} {key}"));
                log.iter()
                    .filter(|l| l.starts_with("POST /charges"))
                    .count()
            };
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
                "POST /charges" => {
                    if charges == 1 {
                        sigkill(harness::spawned_pid(&pid));
                    }
                    (StatusCode::PAYMENT_REQUIRED, "card declined").into_response()
                }
                "DELETE /flights/F-1" | "DELETE /hotels/H-7" => {
                    StatusCode::NO_CONTENT.into_response()
                }
                _ => StatusCode::NOT_FOUND.into_response(),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

/// A saga of http steps (examples/workflows/booking-saga.yaml) SIGKILLed
/// while its charge request is in flight, then resumed: the committed
/// bookings are not sent again, the charge is sent again with the same
/// `Idempotency-Key`, and each booking's cancellation arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_saga_killed_mid_request_resumes_without_repeating_committed_requests() {
    let pid = Arc::new(AtomicU32::new(0));
    let (api, seen) = killing_booking_stub(pid.clone()).await;
    let workflow = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/workflows/booking-saga.yaml"),
    )
    .unwrap();
    let project = Project::new(&workflow, "http://127.0.0.1:9/v1");
    let api_input = format!("api={api}");
    let child = project.spawn(&[
        "run", "wf.yaml", "--input", &api_input, "--input", "trip=t1",
    ]);
    pid.store(child.id(), Ordering::SeqCst);
    let exit = wait(child).await;
    assert_eq!(exit.signal(), Some(9), "killed mid-charge: {}", exit.stderr);
    let store = project.store().await;
    let run = store.list_runs(None, 1).await.unwrap().remove(0);
    assert_eq!(
        run.status,
        RunStatus::Running,
        "left running by a dead owner"
    );
    let kinds: Vec<String> = store
        .entries(&run.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| *k == "http").count(),
        2,
        "both bookings committed, the charge not: {kinds:?}"
    );
    store.close().await;

    let resumed = wait(project.spawn(&["resume", &run.id.to_string()])).await;
    assert_eq!(resumed.code(), Some(0), "{}", resumed.stderr);
    assert!(
        resumed.stdout_text().contains(
            "Trip t1: compensated (charge failed); undone: hotel=compensated, flight=compensated"
        ),
        "{}",
        resumed.stdout_text()
    );
    let seen = seen.lock().unwrap().clone();
    let count = |prefix: &str| seen.iter().filter(|l| l.starts_with(prefix)).count();
    assert_eq!(count("POST /flights"), 1, "{seen:?}");
    assert_eq!(count("POST /hotels"), 1, "{seen:?}");
    assert_eq!(count("DELETE /hotels/H-7"), 1, "{seen:?}");
    assert_eq!(count("DELETE /flights/F-1"), 1, "{seen:?}");
    let charge_keys: Vec<&str> = seen
        .iter()
        .filter(|l| l.starts_with("POST /charges"))
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(charge_keys.len(), 2, "{seen:?}");
    assert_eq!(charge_keys[0], charge_keys[1], "the same Idempotency-Key");
    assert!(charge_keys[0].starts_with("spes-"), "{seen:?}");
}

/// An agent SIGKILLed after its tool call finished and before its next
/// model turn was answered, then resumed: the tool (an http tool on a
/// local stub, counted there) ran exactly once, and the answer equals an
/// uninterrupted run's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_between_a_tool_call_and_its_next_turn_repeats_no_tool_call() {
    let hits = Arc::new(AtomicU32::new(0));
    let h = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let h = h.clone();
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            axum::Json(serde_json::json!({ "charged": 5 }))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let server = FakeServer::start().await.unwrap();
    let workflow = format!(
        "name: pay\nsteps:\n  - name: pay\n    kind: agent\n    prompt: \"Charge 5.\"\n    tools:\n      - http: {{ name: charge, description: Charges the card, method: POST, url: \"{api}/charge\", body: {{ amount: \"{{{{ args.amount }}}}\" }} }}\n    output: out\noutput: out\n"
    );
    let project = Project::new(&workflow, &server.openai_base_url());
    server.push(FakeResponse::tool_call(
        "charge",
        &serde_json::json!({ "amount": 5 }),
    ));
    server.push(FakeResponse::text("Charged 5."));
    // The first life dies when its second model turn is asked for: the
    // tool call before it is committed, the turn is not.
    let pid = Arc::new(AtomicU32::new(0));
    {
        let pid = pid.clone();
        server.on_request(move |n| {
            if n == 2 {
                sigkill(harness::spawned_pid(&pid));
            }
        });
    }
    let child = project.spawn(&["run", "wf.yaml"]);
    pid.store(child.id(), Ordering::SeqCst);
    let exit = wait(child).await;
    assert_eq!(exit.signal(), Some(9), "{}", exit.stderr);
    server.on_request(|_| {});
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the tool ran before the kill"
    );
    let store = project.store().await;
    let run = store.list_runs(None, 1).await.unwrap().remove(0);
    let keys: Vec<String> = store
        .entries(&run.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, ["pay/turn[1]", "pay/turn[1]/call[charge#1]"]);
    store.close().await;

    server.push(FakeResponse::text("Charged 5."));
    let resumed = wait(project.spawn(&["resume", &run.id.to_string()])).await;
    assert_eq!(resumed.code(), Some(0), "{}", resumed.stderr);
    assert_eq!(resumed.stdout_text(), "Charged 5.\n");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the tool ran exactly once");
    assert!(
        resumed.stderr.contains("(replayed from journal)"),
        "{}",
        resumed.stderr
    );
    // The resumed turn 2 carried the committed tool result.
    let last = server.requests().last().unwrap().body.clone();
    let msgs = last["messages"].as_array().unwrap();
    assert_eq!(msgs.last().unwrap()["role"], "tool");
    assert!(
        msgs.last().unwrap()["content"]
            .as_str()
            .unwrap()
            .contains("\"charged\":5"),
        "{last}"
    );
}
