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

const STEPS: usize = 25;
const LATENCY: Duration = Duration::from_millis(200);
const CONTENDERS: usize = 20;
/// How long the contenders keep coming (the run takes about STEPS x LATENCY).
const CONTEND_FOR: Duration = Duration::from_secs(5);

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

/// The commands one round of contenders runs against the live run `run`
/// (`CONTENDERS` processes at once), each expected to exit 0.
///
/// Extend here: once a workflow with gates is used, add `spes approve RUN
/// --gate G` / `spes reject RUN --reason ...` processes (and relax the
/// expected exit code for the losers of a decided gate, which must still
/// never see "locked").
fn contender_commands(run: &str) -> Vec<Vec<String>> {
    (0..CONTENDERS)
        .map(|i| {
            if i % 4 == 3 {
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
    assert_eq!(
        exit.code(),
        Some(0),
        "`spes {}` failed:\n--- stdout\n{stdout}\n--- stderr\n{}",
        args.join(" "),
        exit.stderr
    );
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
    let runs = store.list_runs(None, 10).await.unwrap();
    assert_eq!(runs.len(), 1);
    let id = runs[0].id.to_string();
    store.close().await;

    let started = Instant::now();
    let (mut rounds, mut processes, mut saw_running) = (0, 0, 0);
    while started.elapsed() < CONTEND_FOR {
        let cmds = contender_commands(&id);
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
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
    store.close().await;
}
