//! Crash tests: the fake LLM server SIGKILLs `spes` when request k
//! arrives (k drawn from a printed seed; `SPES_CRASH_SEED=N` replays a
//! failure), the test checks the store, resumes, and repeats until the run
//! completes. The result must be byte-identical to an uninterrupted run,
//! with every committed model call made once.
//!
//! Each process life gets its own fake server (`spes.toml` is pointed at
//! it before the life starts), so every request is attributed to the
//! process that sent it, even one that reaches the server after its
//! sender died.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "crash/harness.rs"]
mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use harness::{Lcg, Project, committed_model_keys, marker, seed, sigkill, wait};
use spes_fake_llm::{FakeServer, RecordedRequest};
use spes_store::{RunStatus, RunStore};

/// A workflow and how its requests map to journal keys.
struct Scenario {
    name: &'static str,
    yaml: String,
    /// Prompt marker (`[s3]` at the start of the user message) -> journal key.
    keys: BTreeMap<String, String>,
    kills: usize,
    /// A human gate the run stops at (exit 3) until `spes approve` answers it.
    gate: bool,
    /// Requests name their step in the `x-spes-step` header (patterns whose
    /// prompts the engine builds); `keys` is then learned from the reference run.
    by_header: bool,
    /// Other files the workflow needs (sub-workflows), written beside it.
    files: Vec<(&'static str, String)>,
}

impl Scenario {
    fn calls(&self) -> usize {
        self.keys.len()
    }

    fn key_of(&self, r: &RecordedRequest) -> String {
        if self.by_header {
            return r
                .header("x-spes-step")
                .unwrap_or_else(|| panic!("request {} has no x-spes-step header", r.n))
                .to_owned();
        }
        let m = marker(&r.body)
            .unwrap_or_else(|| panic!("request {} has no step marker: {}", r.n, r.raw_body));
        self.keys
            .get(&m)
            .unwrap_or_else(|| panic!("request {} names unknown step `{m}`", r.n))
            .clone()
    }
}

fn chain(steps: usize, kills: usize) -> Scenario {
    let mut yaml = String::from(
        "name: crash_chain\ninputs:\n  topic: { type: string, default: rust }\nsteps:\n",
    );
    let mut keys = BTreeMap::new();
    for i in 1..=steps {
        let prev = if i == 1 {
            "topic".to_owned()
        } else {
            format!("s{}", i - 1)
        };
        yaml.push_str(&format!(
            "  - {{ name: s{i}, kind: llm, prompt: \"[s{i}] step {i} continues: {{{{ {prev} }}}}\", max_tokens: 64, output: s{i} }}\n"
        ));
        keys.insert(format!("s{i}"), format!("s{i}"));
    }
    Scenario {
        name: "chain",
        yaml,
        keys,
        kills,
        gate: false,
        by_header: false,
        files: Vec::new(),
    }
}

fn fan_out(children: usize, kills: usize) -> Scenario {
    let mut yaml = String::from(
        "name: crash_fan\ninputs:\n  topic: { type: string, default: rust }\nsteps:\n  - name: fan\n    kind: parallel\n    steps:\n",
    );
    let mut keys = BTreeMap::new();
    let mut join = String::from("[join] combine:");
    for i in 1..=children {
        let n = format!("p{i:02}");
        yaml.push_str(&format!(
            "      - {{ name: {n}, kind: llm, prompt: \"[{n}] point {i} about {{{{ topic }}}}\", max_tokens: 64, output: {n} }}\n"
        ));
        keys.insert(n.clone(), format!("fan/{n}"));
        join.push_str(&format!(" {{{{ {n} }}}} |"));
    }
    yaml.push_str(&format!(
        "  - {{ name: join, kind: llm, prompt: \"{join}\", max_tokens: 64, output: final }}\n"
    ));
    keys.insert("join".into(), "join".into());
    Scenario {
        name: "fan_out",
        yaml,
        keys,
        kills,
        gate: false,
        by_header: false,
        files: Vec::new(),
    }
}

/// A map over `items` topics (4 at a time) and a reduce over the answers.
fn map_reduce(items: usize, kills: usize) -> Scenario {
    let topics: Vec<String> = (0..items).map(|i| format!("\"topic {i}\"")).collect();
    let yaml = format!(
        "name: crash_map\ninputs:\n  topics: {{ type: list, default: [{}] }}\nsteps:\n  - name: gather\n    kind: map\n    over: topics\n    as: t\n    concurrency: 4\n    step: {{ name: answer, kind: llm, prompt: \"[m{{{{ index }}}}] facts about {{{{ t }}}}\", max_tokens: 64 }}\n    output: answers\n  - name: sum\n    kind: reduce\n    over: answers\n    step: {{ name: combine, kind: llm, prompt: \"[reduce] {{{{ items | join(' | ') }}}}\", max_tokens: 64 }}\n    output: final\noutput: final\n",
        topics.join(", ")
    );
    let mut keys = BTreeMap::new();
    for i in 0..items {
        keys.insert(format!("m{i}"), format!("gather/map[{i}]/answer"));
    }
    keys.insert("reduce".into(), "sum/combine".into());
    Scenario {
        name: "map_reduce",
        yaml,
        keys,
        kills,
        gate: false,
        by_header: false,
        files: Vec::new(),
    }
}

/// A 10-step chain with a human approval gate after step 5.
fn chain_with_gate(kills: usize) -> Scenario {
    let mut s = chain(10, kills);
    s.name = "chain_with_gate";
    let gate = "  - { name: signoff, kind: approval, show: s5, output: signoff }\n";
    let at = s.yaml.find("  - { name: s6,").expect("a sixth step");
    s.yaml.insert_str(at, gate);
    s.gate = true;
    s
}

/// Approves the run's open gate from another process.
async fn approve(p: &Project) -> String {
    let store = p.store().await;
    let run = store.list_runs(None, 1).await.unwrap().remove(0);
    store.close().await;
    assert_eq!(
        run.status,
        RunStatus::Waiting,
        "a run stopped at its gate is waiting"
    );
    let id = run.id.to_string();
    let exit = wait(p.spawn(&["approve", &id])).await;
    assert_eq!(exit.code(), Some(0), "approve failed:\n{}", exit.stderr);
    id
}

/// One process life: its server (all its requests), what was committed
/// when it started, and how it ended.
struct Life {
    server: FakeServer,
    committed_before: BTreeSet<String>,
    kill_at: Option<usize>,
    /// Ended waiting at the human gate (not killed, not completed).
    at_gate: bool,
}

/// A pattern scenario: its step keys come from the `x-spes-step` header.
fn pattern(name: &'static str, yaml: &str, kills: usize) -> Scenario {
    Scenario {
        name,
        yaml: yaml.to_owned(),
        keys: BTreeMap::new(),
        kills,
        gate: false,
        by_header: true,
        files: Vec::new(),
    }
}

/// Runs the workflow without interruption in its own project.
async fn uninterrupted(s: &Scenario) -> (Vec<u8>, Vec<RecordedRequest>) {
    let server = FakeServer::start().await.unwrap();
    let project = Project::new(&s.yaml, &server.openai_base_url());
    for (name, text) in &s.files {
        project.write(name, text);
    }
    let mut exit = wait(project.spawn(&["run", "wf.yaml"])).await;
    if s.gate {
        assert_eq!(
            exit.code(),
            Some(3),
            "the reference run waits at its gate:\n{}",
            exit.stderr
        );
        let id = approve(&project).await;
        exit = wait(project.spawn(&["resume", &id])).await;
    }
    assert_eq!(
        exit.code(),
        Some(0),
        "uninterrupted run failed:\n{}",
        exit.stderr
    );
    if !s.by_header {
        assert_eq!(server.request_count(), s.calls(), "uninterrupted calls");
    }
    (exit.stdout, server.requests())
}

async fn crash_and_resume(s: &Scenario) {
    let mut learned;
    let s = if s.by_header {
        let (_, reference) = uninterrupted(s).await;
        learned = Scenario {
            keys: BTreeMap::new(),
            yaml: s.yaml.clone(),
            files: s.files.clone(),
            ..*s
        };
        for r in &reference {
            let k = learned.key_of(r);
            assert!(
                learned.keys.insert(k.clone(), k.clone()).is_none(),
                "{}: `{k}` requested twice in an uninterrupted run",
                s.name
            );
        }
        &learned
    } else {
        s
    };
    let seed = seed();
    println!(
        "{}: seed {seed} (rerun with SPES_CRASH_SEED={seed})",
        s.name
    );
    let mut rng = Lcg::new(seed, s.name);
    let (expected_stdout, reference) = uninterrupted(s).await;

    let mut project: Option<Project> = None;
    let mut lives: Vec<Life> = Vec::new();
    let mut run_id: Option<spes_store::RunId> = None;
    let mut final_stdout = Vec::new();
    let started = Instant::now();
    loop {
        let gate_lives = lives.iter().filter(|l| l.at_gate).count();
        assert!(
            lives.len() - gate_lives <= s.kills,
            "seed {seed}: more lives than kills + 1"
        );
        let server = FakeServer::start().await.unwrap();
        let p = project.get_or_insert_with(|| {
            let p = Project::new(&s.yaml, &server.openai_base_url());
            for (name, text) in &s.files {
                p.write(name, text);
            }
            p
        });
        p.point_at(&server.openai_base_url());

        // What is committed now: no request may ask for it again.
        let committed_before = match &run_id {
            None => BTreeSet::new(),
            Some(id) => {
                let store = p.store().await;
                let keys = committed_model_keys(&store, id).await;
                store.close().await;
                keys
            }
        };
        let remaining = s.calls() - committed_before.len();
        assert!(
            remaining > 0,
            "seed {seed}: nothing left to do, yet not completed"
        );
        let kills_left = s.kills - (lives.len() - gate_lives);
        let kill_at = (kills_left > 0).then(|| {
            // Spread the kills over the run: k in 1..=2*remaining/(kills_left+1).
            let hi = (2 * remaining / (kills_left + 1)).clamp(1, remaining);
            rng.range(1, hi)
        });

        let pid = Arc::new(AtomicU32::new(0));
        let killed = Arc::new(AtomicBool::new(false));
        if let Some(k) = kill_at {
            let (pid, killed) = (pid.clone(), killed.clone());
            server.on_request(move |n| {
                if n != k {
                    return;
                }
                let p = harness::spawned_pid(&pid);
                // Flag first: the waiting test may see the death before kill(1) returns.
                killed.store(true, Ordering::SeqCst);
                sigkill(p);
            });
        }

        let id_text = run_id.map(|i| i.to_string());
        let args: Vec<&str> = match &id_text {
            None => vec!["run", "wf.yaml"],
            Some(id) => vec!["resume", id],
        };
        let child = p.spawn(&args);
        let child_pid = child.id();
        pid.store(child_pid, Ordering::SeqCst);
        let exit = wait(child).await;

        // Stopped at the human gate before the kill could land: answer it
        // from another process; the kill is tried again in the next life.
        if s.gate && !killed.load(Ordering::SeqCst) && exit.code() == Some(3) {
            let id = approve(p).await;
            run_id = Some(id.parse().unwrap());
            println!(
                "  life {}: waited at the gate ({} committed before); approved",
                lives.len() + 1,
                committed_before.len()
            );
            lives.push(Life {
                server,
                committed_before,
                kill_at: None,
                at_gate: true,
            });
            continue;
        }

        match kill_at {
            Some(k) => {
                assert!(
                    killed.load(Ordering::SeqCst),
                    "seed {seed}: life {} was to be killed at request {k} but ended first ({:?}):\n{}",
                    lives.len() + 1,
                    exit.status,
                    exit.stderr
                );
                assert_eq!(
                    exit.signal(),
                    Some(9),
                    "seed {seed}: life {} should have died of SIGKILL:\n{}",
                    lives.len() + 1,
                    exit.stderr
                );
                // The store survives the kill.
                let store = p.store().await;
                assert_eq!(
                    store.integrity_check().await.unwrap(),
                    "ok",
                    "seed {seed}: integrity_check after kill {}",
                    lives.len() + 1
                );
                let runs = store.list_runs(None, 10).await.unwrap();
                assert_eq!(runs.len(), 1, "seed {seed}: one run in the store");
                let run = &runs[0];
                if let Some(id) = run_id {
                    assert_eq!(run.id, id);
                }
                run_id = Some(run.id);
                assert_eq!(
                    run.status,
                    RunStatus::Running,
                    "seed {seed}: a killed run stays running"
                );
                let owner = run.owner.clone().unwrap_or_default();
                assert!(
                    owner.ends_with(&format!(":{child_pid}")),
                    "seed {seed}: owner `{owner}` should be the killed process {child_pid}"
                );
                store.close().await;
                println!(
                    "  life {}: killed at request {k} of {remaining} outstanding ({} committed before)",
                    lives.len() + 1,
                    committed_before.len()
                );
            }
            None => {
                assert_eq!(
                    exit.code(),
                    Some(0),
                    "seed {seed}: the last life should complete:\n{}",
                    exit.stderr
                );
                println!(
                    "  life {}: completed ({} committed before)",
                    lives.len() + 1,
                    committed_before.len()
                );
                final_stdout = exit.stdout;
            }
        }
        lives.push(Life {
            server,
            committed_before,
            kill_at,
            at_gate: false,
        });
        if kill_at.is_none() {
            break;
        }
    }
    let p = project.unwrap();
    let id = run_id.expect("a run id");

    // 1. The output is byte-identical to an uninterrupted run.
    assert_eq!(
        String::from_utf8_lossy(&final_stdout),
        String::from_utf8_lossy(&expected_stdout),
        "seed {seed}: output differs from the uninterrupted run"
    );
    assert_eq!(final_stdout, expected_stdout, "seed {seed}: bytes differ");

    // 2. Exactly one committed model call per step, and the run completed.
    let store = p.store().await;
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
    let entries = store.entries(&id).await.unwrap();
    let model: Vec<&str> = entries
        .iter()
        .filter(|e| e.kind == "model")
        .map(|e| e.key.as_str())
        .collect();
    assert_eq!(
        model.len(),
        s.calls(),
        "seed {seed}: committed model entries: {model:?}"
    );
    let expected_keys: BTreeSet<&str> = s.keys.values().map(String::as_str).collect();
    assert_eq!(
        model.iter().copied().collect::<BTreeSet<_>>(),
        expected_keys,
        "seed {seed}"
    );
    let run = store.run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Completed, "seed {seed}");
    assert_eq!(store.list_runs(None, 10).await.unwrap().len(), 1);
    store.close().await;

    // 3. Requests, per life: never for a step committed when the life
    //    started, at most once per step, and the same bytes every time.
    let reference_bodies: BTreeMap<String, String> = reference
        .iter()
        .map(|r| (s.key_of(r), r.raw_body.clone()))
        .collect();
    let mut requests: BTreeMap<String, usize> = BTreeMap::new();
    let mut in_flight_kills: BTreeMap<String, usize> = BTreeMap::new();
    let mut landed = 0;
    for (i, life) in lives.iter().enumerate() {
        let reqs = life.server.requests();
        let mut seen = BTreeSet::new();
        for r in &reqs {
            let key = s.key_of(r);
            assert!(
                !life.committed_before.contains(&key),
                "seed {seed}: life {} requested `{key}`, committed before it started",
                i + 1
            );
            assert!(
                seen.insert(key.clone()),
                "seed {seed}: life {} requested `{key}` twice",
                i + 1
            );
            *requests.entry(key.clone()).or_default() += 1;
            assert_eq!(
                r.raw_body,
                reference_bodies[&key],
                "seed {seed}: life {} sent a different request for `{key}`",
                i + 1
            );
        }
        if life.kill_at.is_some() {
            landed += 1;
            // In flight when the kill landed: requested in this life and
            // still not committed when the next life started.
            let after = &lives[i + 1].committed_before;
            assert!(
                life.committed_before.is_subset(after),
                "seed {seed}: a commit was lost"
            );
            for key in seen.iter().filter(|k| !after.contains(*k)) {
                *in_flight_kills.entry(key.clone()).or_default() += 1;
            }
        }
    }
    assert_eq!(landed, s.kills, "seed {seed}: every kill landed");
    for key in s.keys.values() {
        let n = requests.get(key).copied().unwrap_or(0);
        let k = in_flight_kills.get(key).copied().unwrap_or(0);
        assert!(n >= 1, "seed {seed}: `{key}` was never requested");
        assert!(
            n <= 1 + k,
            "seed {seed}: `{key}` requested {n} times with {k} kills in flight"
        );
    }
    let total: usize = requests.values().sum();
    println!(
        "{}: {} lives, {total} requests for {} steps, {:.1} s",
        s.name,
        lives.len(),
        s.calls(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_of_10_survives_5_kills() {
    crash_and_resume(&chain(10, 5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_with_a_human_gate_survives_5_kills() {
    crash_and_resume(&chain_with_gate(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_reduce_of_20_items_survives_5_kills() {
    crash_and_resume(&map_reduce(20, 5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_fan_out_of_20_survives_5_kills() {
    crash_and_resume(&fan_out(20, 5)).await;
}

const DEBATE_YAML: &str = r#"name: crash_debate
agents: { pro: { role: pro }, con: { role: con }, judge: { role: judge } }
steps:
  - { name: argue, kind: debate, debaters: [pro, con], topic: "Should we split the monolith?", rounds: 3, judge: judge, output: verdict }
output: verdict
"#;

const SWITCH_YAML: &str = r#"name: crash_switch
inputs: { request: { type: string, default: "login throws a null pointer" } }
steps:
  - name: route
    kind: switch
    classify: { prompt: "bug_fix: {{ request }}" }
    routes:
      bug_fix:
        - { name: fix, kind: llm, prompt: "fix {{ request }}", output: fix }
        - { name: test, kind: llm, prompt: "test for {{ request }}", output: test }
      feature:
        - { name: design, kind: llm, prompt: "design {{ request }}", output: design }
    output: routed
output: routed
"#;

const ITERATE_YAML: &str = r#"name: crash_iterate
inputs: { topic: { type: string, default: caching } }
steps:
  - name: gate
    kind: quality_gate
    step: { kind: llm, prompt: "A slogan about {{ topic }}" }
    evaluator: { checks: [ { contains: "never-present" }, { words: { min: 2 } } ] }
    threshold: 1
    max_attempts: 3
    output: slogan
  - name: polish
    kind: refine
    generate: { kind: llm, prompt: "A blurb about {{ topic }}" }
    evaluator: { checks: [ { contains: "never-present" } ] }
    threshold: 1
    max_iterations: 3
    output: blurb
  - { name: out, kind: transform, fn: template, input: "{{ slogan.output }} | {{ blurb.output }}", output: out }
output: out
"#;

const ORCH_YAML: &str = r#"name: crash_orch
inputs: { code: { type: string, default: "fn main() {}" } }
steps:
  - name: review
    kind: fan_out
    workers:
      - { name: sec, step: { name: r, kind: llm, prompt: "security review of {{ code }}" } }
      - { name: perf, step: { name: r, kind: llm, prompt: "perf review of {{ code }}" } }
      - { name: style, step: { name: r, kind: llm, prompt: "style review of {{ code }}" } }
    aggregate: { name: combine, kind: llm, prompt: "combine {{ results.sec }} / {{ results.perf }} / {{ results.style }}" }
    output: review
  - name: polish
    kind: pipeline
    input: "{{ review }}"
    stages:
      - { name: draft, kind: llm, prompt: "draft: {{ input }}" }
      - { name: edit, kind: llm, prompt: "edit: {{ input }}" }
      - { name: title, kind: llm, prompt: "title: {{ input }}" }
    output: polished
  - name: launch
    kind: saga
    steps:
      - { name: reserve, kind: llm, prompt: "reserve a slot for {{ polished }}", compensate: { name: release, kind: llm, prompt: "release the slot" } }
      - { name: post, kind: llm, prompt: "post {{ polished }}", compensate: { name: unpost, kind: llm, prompt: "delete the post" } }
      - { name: announce, kind: llm, prompt: "announce {{ polished }}" }
    output: launched
output: launched
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debate_survives_3_kills() {
    crash_and_resume(&pattern("debate", DEBATE_YAML, 3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_survives_2_kills() {
    crash_and_resume(&pattern("switch", SWITCH_YAML, 2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quality_gate_and_refine_survive_4_kills() {
    crash_and_resume(&pattern("quality_gate_refine", ITERATE_YAML, 4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_pipeline_and_saga_survive_5_kills() {
    crash_and_resume(&pattern("fan_out_pipeline_saga", ORCH_YAML, 5)).await;
}

const MISC_YAML: &str = r#"name: crash_misc
inputs: { text: { type: string, default: "the cache grows without bound" } }
agents: { writer: { role: writer }, editor: { role: editor }, checker: { role: checker } }
steps:
  - name: chain
    kind: sequence
    agents: [writer, editor, checker]
    task: "Release note about {{ text }}"
    output: note
  - name: urgent
    kind: branch
    branches:
      - { name: yes, if: { ask: "Is this urgent? {{ text }}" }, steps: [ { name: page, kind: llm, prompt: "page on-call about {{ text }}", output: action } ] }
    else:
      - { name: ticket, kind: llm, prompt: "file a ticket about {{ text }}", output: action }
  - name: child
    kind: workflow
    path: child.yaml
    inputs: { topic: "{{ text }}" }
    output: child
  - name: safe
    kind: llm
    prompt: "a summary of {{ note }} and {{ child }}"
    retry: { attempts: 3, backoff: constant, base: 10ms }
    timeout: 30s
    degrade: [ { provider: remote } ]
    output: summary
output: summary
"#;

const CHILD_YAML: &str = r#"name: child
inputs: { topic: { type: string, required: true } }
steps:
  - { name: one, kind: llm, prompt: "first on {{ topic }}", output: one }
  - { name: two, kind: llm, prompt: "second on {{ one }}", output: two }
output: two
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_sequence_ask_branch_sub_workflow_and_policies_survive_5_kills() {
    let mut s = pattern("sequence_branch_workflow_policies", MISC_YAML, 5);
    s.files.push(("child.yaml", CHILD_YAML.to_owned()));
    crash_and_resume(&s).await;
}

const SCATTER_YAML: &str = r#"name: crash_sg
inputs: { code: { type: string, default: "fn main() {}" } }
steps:
  - name: ask
    kind: scatter_gather
    sources:
      - { name: docs, kind: llm, prompt: "docs about {{ code }}" }
      - { name: forum, kind: llm, prompt: "forum about {{ code }}" }
      - { name: issues, kind: llm, prompt: "issues about {{ code }}" }
    timeout: 60s
    gather: { name: merge, kind: llm, prompt: "merge {{ results.docs }} / {{ results.forum }} / {{ results.issues }}" }
    output: asked
output: asked
"#;

/// The window (60 s) is far longer than the run: every source arrives, so
/// the output is deterministic; the window's start is journaled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scatter_gather_survives_3_kills() {
    crash_and_resume(&pattern("scatter_gather", SCATTER_YAML, 3)).await;
}

/// A killed owner that its parent has not reaped yet (a zombie) is dead:
/// resume must not refuse its run as "running in process ...".
#[test]
fn a_killed_unreaped_owner_is_dead() {
    let mut child = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("start sleep");
    let pid = child.id();
    let this = spes_engine::durable::this_owner();
    let host = this.rsplit_once(':').unwrap().0;
    let owner = format!("{host}:{pid}");
    assert!(spes_engine::durable::owner_alive(&owner));
    sigkill(pid);
    let t = Instant::now();
    while spes_engine::durable::owner_alive(&owner) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "a killed process still counts as alive"
        );
        std::thread::yield_now();
    }
    child.wait().expect("reap");
    assert!(!spes_engine::durable::owner_alive(&owner));
}
