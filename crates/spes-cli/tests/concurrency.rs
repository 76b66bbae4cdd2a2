//! Concurrent use of one store: while a run executes (its model calls
//! slowed by the fake server), rounds of 20 `spes` processes hit the same
//! store at once. Every one must succeed, and none may show a user
//! "database is locked".
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "crash/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::{Exit, Project, spes_command, wait};
use spes_fake_llm::FakeServer;
use spes_store::{RunStatus, RunStore};

const STEPS: usize = 50;
const LATENCY: Duration = Duration::from_millis(200);
const CONTENDERS: usize = 20;
/// How long the contenders keep coming (the run takes about STEPS x LATENCY).
const CONTEND_FOR: Duration = Duration::from_secs(10);
/// Gates of the waiting run that `approve`/`reject` contenders answer.
const GATES: usize = 400;

fn chain() -> String {
    let mut yaml = String::from(
        "name: slow_chain\ninputs:\n  topic: { type: string, default: rust }\nsteps:\n",
    );
    for i in 1..=STEPS {
        let prev = if i == 1 {
            "topic".to_owned()
        } else {
            format!("s{}", i - 1)
        };
        yaml.push_str(&format!(
            "  - {{ name: s{i}, kind: llm, prompt: \"[s{i}] {{{{ {prev} }}}}\", max_tokens: 16, output: s{i} }}\n"
        ));
    }
    yaml
}

/// A workflow that opens `GATES` approval gates side by side and waits.
fn gates() -> String {
    let mut yaml = String::from(
        "name: many_gates\ninputs:\n  text: { type: string, default: draft }\nsteps:\n  - name: g\n    kind: parallel\n    steps:\n",
    );
    for i in 0..GATES {
        yaml.push_str(&format!(
            "      - {{ name: a{i:03}, kind: approval, show: text }}\n"
        ));
    }
    yaml
}

/// The commands one round of contenders runs against the live run `run`
/// (`CONTENDERS` processes at once). Readers must exit 0. Each round also
/// answers two gates of the waiting run `gated`, twice each (approve and
/// reject race): exactly one answer per gate wins, the other is refused as
/// already decided (exit 2); none may see "locked".
fn contender_commands(run: &str, gated: &str, round: usize) -> Vec<Vec<String>> {
    (0..CONTENDERS)
        .map(|i| {
            let gate = format!("g/a{:03}/review0", (round * 2 + i % 2) % GATES);
            if i < 4 {
                if i < 2 {
                    vec!["approve".into(), gated.to_owned(), "--gate".into(), gate]
                } else {
                    vec![
                        "reject".into(),
                        gated.to_owned(),
                        "--gate".into(),
                        gate,
                        "--reason".into(),
                        "no".into(),
                    ]
                }
            } else if i % 4 == 3 {
                vec![
                    "runs".into(),
                    "list".into(),
                    "--status".into(),
                    "running".into(),
                ]
            } else if i % 4 == 1 {
                vec!["runs".into(), "show".into(), run.to_owned()]
            } else {
                vec!["runs".into(), "list".into()]
            }
        })
        .collect()
}

fn assert_not_locked(args: &[String], exit: &Exit) {
    let stdout = exit.stdout_text();
    let answer = matches!(args[0].as_str(), "approve" | "reject");
    if answer && exit.code() == Some(2) {
        assert!(
            exit.stderr.contains("already decided"),
            "`spes {}`: {}",
            args.join(" "),
            exit.stderr
        );
    } else {
        assert_eq!(
            exit.code(),
            Some(0),
            "`spes {}` failed:\n--- stdout\n{stdout}\n--- stderr\n{}",
            args.join(" "),
            exit.stderr
        );
    }
    for text in [&stdout, &exit.stderr] {
        assert!(
            !text.to_ascii_lowercase().contains("locked"),
            "`spes {}` showed a lock error:\n{text}",
            args.join(" ")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_readers_while_a_run_executes() {
    let server = FakeServer::start().await.unwrap();
    server.set_latency(LATENCY);
    let project = Project::new(&chain(), &server.openai_base_url());
    // A second run waits at GATES human gates; contenders answer them.
    std::fs::write(project.root.join("gates.yaml"), gates()).unwrap();
    let gated = wait(project.spawn(&["run", "gates.yaml"])).await;
    assert_eq!(gated.code(), Some(3), "{}", gated.stderr);
    let gated_id = {
        let store = project.store().await;
        let id = store.list_runs(Some(RunStatus::Waiting), 1).await.unwrap()[0]
            .id
            .to_string();
        store.close().await;
        id
    };
    let run = project.spawn(&["run", "wf.yaml"]);
    let run_pid = run.id();
    let run = tokio::spawn(wait(run));

    // The run record exists before the first model call goes out.
    let t = Instant::now();
    while server.request_count() == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the run never called the model"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let store = project.store().await;
    let runs = store.list_runs(Some(RunStatus::Running), 10).await.unwrap();
    assert_eq!(runs.len(), 1);
    let id = runs[0].id.to_string();
    store.close().await;

    let started = Instant::now();
    let (mut rounds, mut processes, mut saw_running) = (0, 0, 0);
    while started.elapsed() < CONTEND_FOR {
        let cmds = contender_commands(&id, &gated_id, rounds);
        let children: Vec<_> = cmds
            .iter()
            .map(|args| {
                let a: Vec<&str> = args.iter().map(String::as_str).collect();
                spes_command(&project.root, &a).spawn().expect("start spes")
            })
            .collect();
        for (args, child) in cmds.iter().zip(children) {
            let exit = wait(child).await;
            assert_not_locked(args, &exit);
            if exit.stdout_text().contains("running") {
                saw_running += 1;
            }
            processes += 1;
        }
        rounds += 1;
    }
    println!(
        "{processes} processes in {rounds} rounds of {CONTENDERS} over {:.1} s; {saw_running} saw the run running",
        started.elapsed().as_secs_f64()
    );
    assert!(saw_running > 0, "the contenders never overlapped the run");

    let exit = run.await.unwrap();
    assert_eq!(
        exit.code(),
        Some(0),
        "the run (pid {run_pid}) failed:\n{}",
        exit.stderr
    );
    assert!(
        !exit.stderr.to_ascii_lowercase().contains("locked"),
        "{}",
        exit.stderr
    );
    assert_eq!(server.request_count(), STEPS);
    let store = project.store().await;
    let run = store.find_run(&id).await.unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(
        store
            .entries(&run.id)
            .await
            .unwrap()
            .iter()
            .filter(|e| e.kind == "model")
            .count(),
        STEPS
    );
    // Every answered gate has exactly one decision, recorded once in the journal.
    let gated = store.find_run(&gated_id).await.unwrap();
    let decided = store
        .gates(&spes_store::GateFilter {
            run_id: Some(gated.id),
            pending_only: false,
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|g| g.decision.is_some())
        .count();
    let decisions = store
        .entries(&gated.id)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.kind == "decision")
        .count();
    assert_eq!(decided, decisions);
    assert_eq!(
        decided,
        (rounds * 2).min(GATES),
        "one decision per answered gate"
    );
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
    store.close().await;
}
