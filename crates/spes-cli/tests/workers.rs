//! Many workers on one PostgreSQL store (`spes worker`), as separate
//! processes, each with its own fake LLM server (so every request is
//! attributed to the worker that sent it):
//! - two workers split a 200-item map; the fake server SIGKILLs worker A
//!   at a seeded request; every result is committed once, the reduce runs
//!   once with the golden output, B takes A's orphaned items;
//! - the same with A SIGSTOPped past its lease and resumed: a zombie whose
//!   late writes change nothing;
//! - the database server is stopped and started under running workers;
//! - two workers share a provider's `max_concurrency` and `rpm` through
//!   the store (`workers/limits.rs`).
//!
//! Needs PostgreSQL: `SPES_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`, see `scripts/postgres.sh`);
//! the restart test starts its own cluster with the installed `initdb` and
//! `pg_ctl`. `SPES_CRASH_SEED=N` replays a seed (printed by each test).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "crash/harness.rs"]
mod harness;
#[path = "workers/limits.rs"]
mod limits;
#[path = "workers/shared.rs"]
mod shared;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{Lcg, seed, wait};
use shared::{Cluster, Dir, KillOnDrop, completed, scalar, signal, until};
use spes_fake_llm::FakeServer;
use spes_store::postgres::{PostgresOptions, PostgresStore};
use spes_store::testing::postgres::TestSchema;
use spes_store::{RunId, RunStore};

/// Lease of the test workers, in seconds.
const LEASE_S: f64 = 2.0;

fn map_yaml(items: usize) -> String {
    let topics: Vec<String> = (0..items).map(|i| format!("\"topic {i}\"")).collect();
    format!(
        "name: many\ninputs:\n  topics: {{ type: list, default: [{}] }}\nsteps:\n  - name: gather\n    kind: map\n    over: topics\n    as: t\n    concurrency: 8\n    step: {{ name: answer, kind: llm, prompt: \"[m{{{{ index }}}}] facts about {{{{ t }}}}\", max_tokens: 16 }}\n    output: answers\n  - name: sum\n    kind: reduce\n    over: answers\n    step: {{ name: combine, kind: llm, prompt: \"[reduce] {{{{ items | join(' | ') }}}}\", max_tokens: 16 }}\n    output: final\noutput: final\n",
        topics.join(", ")
    )
}

/// The output an uninterrupted run gives (the fake server echoes).
fn golden(items: usize) -> serde_json::Value {
    let answers: Vec<String> = (0..items)
        .map(|i| format!("echo: [m{i}] facts about topic {i}"))
        .collect();
    serde_json::Value::String(format!("echo: [reduce] {}", answers.join(" | ")))
}

/// Step keys of the requests a server received, with their counts.
fn keys(server: &FakeServer) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in server.requests() {
        let k = r.header("x-spes-step").unwrap_or("?").to_owned();
        *out.entry(k).or_insert(0) += 1;
    }
    out
}

/// Checks what a finished map run left in the store: every result once,
/// every item's model call once, nothing claimed or open.
async fn check_store(store: &PostgresStore, run: &RunId, items: usize) {
    let n = i64::try_from(items).unwrap();
    let results = scalar(
        store,
        "SELECT count(*) FROM entries WHERE run_id = $1 AND kind = 'item'",
        run,
    )
    .await;
    let distinct = scalar(
        store,
        "SELECT count(DISTINCT key) FROM entries WHERE run_id = $1 AND kind = 'item'",
        run,
    )
    .await;
    assert_eq!(
        (results, distinct),
        (n, n),
        "item results (count, distinct)"
    );
    let calls = scalar(
        store,
        "SELECT count(*) FROM entries WHERE run_id = $1 AND kind = 'model' AND key LIKE 'gather/map[%'",
        run,
    )
    .await;
    let distinct_calls = scalar(
        store,
        "SELECT count(DISTINCT key) FROM entries WHERE run_id = $1 AND kind = 'model' AND key LIKE 'gather/map[%'",
        run,
    )
    .await;
    assert_eq!(
        (calls, distinct_calls),
        (n, n),
        "item model calls (count, distinct)"
    );
    let reduce = scalar(
        store,
        "SELECT count(*) FROM entries WHERE run_id = $1 AND key = 'sum/combine'",
        run,
    )
    .await;
    assert_eq!(reduce, 1, "reduce entries");
    let open = scalar(
        store,
        "SELECT count(*) FROM tasks WHERE run_id = $1 AND state <> 'done'",
        run,
    )
    .await;
    assert_eq!(open, 0, "tasks left claimed or ready");
    let tasks = scalar(store, "SELECT count(*) FROM tasks WHERE run_id = $1", run).await;
    assert_eq!(tasks, n + 1, "one task per item and one for the run");
}

/// `Some` once `owner` holds no task.
async fn holds_nothing(store: &PostgresStore, owner: &str) -> Option<()> {
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tasks WHERE owner = $1 AND state = 'claimed'")
            .bind(owner)
            .fetch_one(store.pool())
            .await
            .ok()?;
    (n == 0).then_some(())
}

/// Two workers, two fake servers, one queued 200-item map run.
struct Pair {
    schema: TestSchema,
    store: PostgresStore,
    a_server: FakeServer,
    b_server: FakeServer,
    a_dir: Dir,
    b_dir: Dir,
    submit: Dir,
}

impl Pair {
    async fn new(items: usize, latency: Duration) -> Self {
        let schema = TestSchema::new().await;
        let store = schema.store().await;
        let a_server = FakeServer::start().await.unwrap();
        let b_server = FakeServer::start().await.unwrap();
        a_server.set_latency(latency);
        b_server.set_latency(latency);
        let submit = Dir::new(&a_server.openai_base_url());
        submit.write("wf.yaml", &map_yaml(items));
        let a_dir = Dir::new(&a_server.openai_base_url());
        let b_dir = Dir::new(&b_server.openai_base_url());
        Self {
            schema,
            store,
            a_server,
            b_server,
            a_dir,
            b_dir,
            submit,
        }
    }

    fn url(&self) -> &str {
        self.schema.url()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_one_killed_every_item_committed_once() {
    let seed = seed();
    eprintln!("seed {seed} (SPES_CRASH_SEED={seed} replays it)");
    let mut rng = Lcg::new(seed, "two_workers_one_killed");
    let kill_at = rng.range(10, 60);
    let items = 200;
    let p = Pair::new(items, Duration::from_millis(40)).await;
    let run = p.submit.enqueue("wf.yaml", p.url(), &[]);
    let a = p.a_dir.worker(p.url(), "worker-a", 8, LEASE_S);
    let a_pid = a.id();
    let _a_guard = KillOnDrop(a_pid);
    let killed: Arc<Mutex<Option<Instant>>> = Arc::default();
    let k = killed.clone();
    p.a_server.on_request(move |n| {
        if n == kill_at {
            // The time first: the test may see A dead before this hook returns.
            *k.lock().unwrap() = Some(Instant::now());
            harness::sigkill(a_pid);
        }
    });
    let b = p.b_dir.worker(p.url(), "worker-b", 8, LEASE_S);
    let _b_guard = KillOnDrop(b.id());
    let a_exit = wait(a).await;
    assert_eq!(
        a_exit.signal(),
        Some(9),
        "worker A was killed: {}",
        p.a_dir.log()
    );
    let killed_at = killed.lock().unwrap().expect("the kill time");
    // B takes A's orphaned tasks once their lease runs out (the claim
    // query is the sweep; B polls every 50 ms).
    until("B to take A's tasks", Duration::from_secs(30), || {
        holds_nothing(&p.store, "worker-a")
    })
    .await;
    let picked_up = killed_at.elapsed();
    let bound =
        Duration::from_secs_f64(LEASE_S) + Duration::from_millis(50) + Duration::from_secs(2);
    assert!(
        picked_up <= bound,
        "B took A's tasks {picked_up:?} after the kill (bound {bound:?})"
    );
    completed(&p.store, &run, Duration::from_secs(120)).await;
    let out = p.store.run(&run).await.unwrap().unwrap().output;
    assert_eq!(out, Some(golden(items)));
    check_store(&p.store, &run, items).await;

    let (ka, kb) = (keys(&p.a_server), keys(&p.b_server));
    let map_calls = |k: &BTreeMap<String, usize>| {
        k.iter()
            .filter(|(key, _)| key.starts_with("gather/map["))
            .map(|(_, n)| *n)
            .sum::<usize>()
    };
    // A's in-flight calls when it died: requested by A, never committed by A.
    let a_in_flight = 8;
    assert!(
        map_calls(&ka) >= kill_at,
        "A was killed at its request {kill_at}"
    );
    assert!(
        map_calls(&ka) + map_calls(&kb) <= items + a_in_flight,
        "map calls: A {} + B {} > {items} + {a_in_flight}",
        map_calls(&ka),
        map_calls(&kb)
    );
    let all: BTreeSet<&String> = ka
        .keys()
        .chain(kb.keys())
        .filter(|k| k.starts_with("gather/map["))
        .collect();
    assert_eq!(all.len(), items, "every item was asked for");
    let reduce = ka.get("sum/combine").unwrap_or(&0) + kb.get("sum/combine").unwrap_or(&0);
    assert_eq!(reduce, 1, "the reduce ran once");
    eprintln!(
        "A killed at its request {kill_at}; A made {} map calls, B {}; B took A's tasks after {picked_up:?}",
        map_calls(&ka),
        map_calls(&kb)
    );

    // B stops on SIGTERM, giving back nothing (it holds nothing) and exiting 0.
    signal(b.id(), "TERM");
    let b_exit = wait(b).await;
    assert_eq!(b_exit.code(), Some(0), "{}", p.b_dir.log());
    assert!(p.b_dir.log().contains("stopped"), "{}", p.b_dir.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_zombie_worker_resumed_past_its_lease_changes_nothing() {
    let seed = seed();
    eprintln!("seed {seed} (SPES_CRASH_SEED={seed} replays it)");
    let mut rng = Lcg::new(seed, "zombie");
    let stop_at = rng.range(10, 60);
    let items = 200;
    let p = Pair::new(items, Duration::from_millis(40)).await;
    let run = p.submit.enqueue("wf.yaml", p.url(), &[]);
    let a = p.a_dir.worker(p.url(), "worker-a", 8, LEASE_S);
    let a_pid = a.id();
    let _a_guard = KillOnDrop(a_pid);
    // From the stop on, A's server holds its answers: A's in-flight calls
    // complete only after A is resumed, long after its lease.
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stopped.clone();
    p.a_server.on_request(move |n| {
        if n == stop_at {
            signal(a_pid, "STOP");
            s.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let b = p.b_dir.worker(p.url(), "worker-b", 8, LEASE_S);
    let _b_guard = KillOnDrop(b.id());
    until("A to be stopped", Duration::from_secs(60), || async {
        stopped
            .load(std::sync::atomic::Ordering::SeqCst)
            .then_some(())
    })
    .await;
    until("B to take A's tasks", Duration::from_secs(30), || {
        holds_nothing(&p.store, "worker-a")
    })
    .await;
    completed(&p.store, &run, Duration::from_secs(120)).await;
    check_store(&p.store, &run, items).await;
    let entries_before = scalar(
        &p.store,
        "SELECT count(*) FROM entries WHERE run_id = $1",
        &run,
    )
    .await;

    // Resume the zombie: its heartbeat and its late commits meet the fence.
    signal(a_pid, "CONT");
    until(
        "A to notice its lost leases",
        Duration::from_secs(30),
        || async {
            let log = p.a_dir.log();
            (log.contains("lease lost") || log.contains("fenced")).then_some(())
        },
    )
    .await;
    signal(a_pid, "TERM");
    let a_exit = wait(a).await;
    assert_eq!(a_exit.code(), Some(0), "{}", p.a_dir.log());
    let log = p.a_dir.log();
    let lost: u64 = log
        .lines()
        .find_map(|l| {
            let rest = l.split(" items done, ").nth(1)?;
            rest.split(' ').next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no final line in A's log:\n{log}"));
    assert!(lost >= 1, "A lost no lease?\n{log}");
    let entries_after = scalar(
        &p.store,
        "SELECT count(*) FROM entries WHERE run_id = $1",
        &run,
    )
    .await;
    assert_eq!(
        entries_after, entries_before,
        "the zombie's late writes changed rows"
    );
    check_store(&p.store, &run, items).await;
    assert_eq!(
        p.store.run(&run).await.unwrap().unwrap().output,
        Some(golden(items))
    );
    signal(b.id(), "TERM");
    assert_eq!(wait(b).await.code(), Some(0), "{}", p.b_dir.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_complete_across_database_restarts() {
    let seed = seed();
    eprintln!("seed {seed} (SPES_CRASH_SEED={seed} replays it)");
    let mut rng = Lcg::new(seed, "restarts");
    let cluster = Cluster::start();
    let url = cluster.url();
    let store = PostgresStore::connect(&url, PostgresOptions::default())
        .await
        .unwrap();
    let server = FakeServer::start().await.unwrap();
    server.set_latency(Duration::from_millis(30));
    let submit = Dir::new(&server.openai_base_url());
    let items = 40;
    submit.write("wf.yaml", &map_yaml(items));
    let runs: Vec<RunId> = (0..3)
        .map(|_| submit.enqueue("wf.yaml", &url, &[]))
        .collect();
    let wa = Dir::new(&server.openai_base_url());
    let wb = Dir::new(&server.openai_base_url());
    let a = wa.worker(&url, "worker-a", 4, 3.0);
    let b = wb.worker(&url, "worker-b", 4, 3.0);
    let _guards = (KillOnDrop(a.id()), KillOnDrop(b.id()));
    let mut seen = 0;
    for restart in 0..3 {
        // Wait for some progress, then cut the server for a while.
        let target = seen + rng.range(5, 25);
        until(
            "progress before a restart",
            Duration::from_secs(60),
            || async { (server.request_count() >= target).then_some(()) },
        )
        .await;
        seen = server.request_count();
        cluster.down();
        // The outage itself (not a race: the workers must ride it out).
        std::thread::sleep(Duration::from_millis(rng.range(300, 1500) as u64));
        cluster.up();
        eprintln!("restart {restart} done after request {seen}");
    }
    for run in &runs {
        completed(&store, run, Duration::from_secs(120)).await;
        check_store(&store, run, items).await;
        assert_eq!(
            store.run(run).await.unwrap().unwrap().output,
            Some(golden(items))
        );
    }
    let logs = format!("{}{}", wa.log(), wb.log());
    assert!(logs.contains("reconnected"), "no reconnect logged:\n{logs}");
    let lost_lines = logs
        .lines()
        .filter(|l| l.contains("database unavailable"))
        .count();
    let back_lines = logs.lines().filter(|l| l.contains("reconnected")).count();
    assert!(lost_lines >= 1 && back_lines >= 1, "{logs}");
    for (child, dir) in [(a, &wa), (b, &wb)] {
        signal(child.id(), "TERM");
        assert_eq!(wait(child).await.code(), Some(0), "{}", dir.log());
    }
}

#[tokio::test]
async fn a_worker_needs_a_shared_store() {
    let server = FakeServer::start().await.unwrap();
    let d = Dir::new(&server.openai_base_url());
    let out = d
        .command(&["worker", "--store", "sqlite://.spes/spes.db"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spes worker needs a shared store"), "{err}");
}

/// A workflow mapping one llm step over `n` topics; `map_extra` adds lines
/// to the map step, `policy` adds fields to the llm step.
fn topic_map(name: &str, n: usize, map_extra: &str, policy: &str) -> String {
    let topics: Vec<String> = (0..n).map(|i| format!("\"t{i}\"")).collect();
    format!(
        "name: {name}\ninputs:\n  topics: {{ type: list, default: [{}] }}\nsteps:\n  - name: gather\n    kind: map\n    over: topics\n{map_extra}    step: {{ name: answer, kind: llm, prompt: \"about {{{{ item }}}}\", max_tokens: 8, {policy} }}\n    output: answers\noutput: answers\n",
        topics.join(", ")
    )
}

/// Two workers of concurrency 1 on one queued run: A behind server `sa`,
/// B behind `sb`.
struct TwoWorkers {
    run: RunId,
    workers: [(std::process::Child, Dir); 2],
    /// Kill both if the test fails before [`TwoWorkers::stop`].
    _guards: [KillOnDrop; 2],
}

impl TwoWorkers {
    /// Queues `wf`, starts the workers with a lease of `lease` s and waits
    /// until the run completes.
    async fn run(
        schema: &TestSchema,
        store: &PostgresStore,
        (sa, sb): (&FakeServer, &FakeServer),
        wf: &str,
        lease: f64,
    ) -> Self {
        let submit = Dir::new(&sa.openai_base_url());
        submit.write("wf.yaml", wf);
        let (da, db) = (
            Dir::new(&sa.openai_base_url()),
            Dir::new(&sb.openai_base_url()),
        );
        let run = submit.enqueue("wf.yaml", schema.url(), &[]);
        let a = da.worker(schema.url(), "worker-a", 1, lease);
        let b = db.worker(schema.url(), "worker-b", 1, lease);
        let two = Self {
            run,
            _guards: [KillOnDrop(a.id()), KillOnDrop(b.id())],
            workers: [(a, da), (b, db)],
        };
        completed(store, &two.run, Duration::from_secs(60)).await;
        two
    }

    /// SIGTERM to both: each must stop cleanly (exit 0).
    async fn stop(self) {
        let Self {
            workers, _guards, ..
        } = self;
        for (child, dir) in workers {
            signal(child.id(), "TERM");
            assert_eq!(wait(child).await.code(), Some(0), "{}", dir.log());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_share_one_circuit_breaker_per_provider() {
    let schema = TestSchema::new().await;
    let store = schema.store().await;
    let (sa, sb) = (
        FakeServer::start().await.unwrap(),
        FakeServer::start().await.unwrap(),
    );
    // The provider is down behind both workers.
    sa.set_default(spes_fake_llm::FakeResponse::server_error());
    sb.set_default(spes_fake_llm::FakeResponse::server_error());
    let wf = topic_map(
        "down",
        20,
        "    on_error: collect\n",
        "circuit_breaker: { failures: 3, cooldown: 60s }",
    );
    let two = TwoWorkers::run(&schema, &store, (&sa, &sb), &wf, 5.0).await;
    let run = two.run;
    let calls = sa.request_count() + sb.request_count();
    // Shared: three failures in a row open the one breaker (a fourth call
    // may have been admitted by the other worker meanwhile). Each worker
    // with its own breaker would have made three calls: six.
    assert!(
        (3..=4).contains(&calls),
        "{calls} calls reached the provider (A {}, B {})",
        sa.request_count(),
        sb.request_count()
    );
    let (state, _) = store
        .queue()
        .unwrap()
        .shared_state("breaker:remote")
        .await
        .unwrap()
        .expect("the breaker's shared state");
    assert!(state.get("open_until_ms").is_some(), "{state}");
    let answers = store.run(&run).await.unwrap().unwrap().output.unwrap();
    assert_eq!(answers.as_array().map(Vec::len), Some(20));
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_continues_a_run_whose_gate_was_answered() {
    let schema = TestSchema::new().await;
    let store = schema.store().await;
    let server = FakeServer::start().await.unwrap();
    let submit = Dir::new(&server.openai_base_url());
    submit.write(
        "wf.yaml",
        "name: gated\ninputs:\n  topic: { type: string, default: rust }\nsteps:\n  - { name: draft, kind: llm, prompt: \"draft about {{ topic }}\", max_tokens: 8, output: draft }\n  - { name: review, kind: approval, show: draft }\n  - { name: out, kind: transform, fn: uppercase, input: \"{{ draft }}\", output: out }\noutput: out\n",
    );
    let w = Dir::new(&server.openai_base_url());
    let run = submit.enqueue("wf.yaml", schema.url(), &[]);
    let child = w.worker(schema.url(), "worker-g", 2, 5.0);
    let _guard = KillOnDrop(child.id());
    until(
        "the run to wait at its gate",
        Duration::from_secs(30),
        || async {
            (store.status(&run).await.ok().flatten() == Some(spes_store::RunStatus::Waiting))
                .then_some(())
        },
    )
    .await;
    // Answered from anywhere (here: another directory, the same store).
    let out = submit
        .command(&["approve", &run.to_string(), "--store", schema.url()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    completed(&store, &run, Duration::from_secs(30)).await;
    assert_eq!(
        store.run(&run).await.unwrap().unwrap().output,
        Some(serde_json::json!("ECHO: DRAFT ABOUT RUST"))
    );
    assert_eq!(
        server.request_count(),
        1,
        "the draft was not asked for again"
    );
    let listed = submit
        .command(&["runs", "list", "--store", schema.url()])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains(&run.short()),
        "{}",
        String::from_utf8_lossy(&listed.stdout)
    );
    signal(child.id(), "TERM");
    assert_eq!(wait(child).await.code(), Some(0), "{}", w.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_applies_a_gate_deadline_with_no_human_and_continues_the_run() {
    let schema = TestSchema::new().await;
    let store = schema.store().await;
    let server = FakeServer::start().await.unwrap();
    let submit = Dir::new(&server.openai_base_url());
    submit.write(
        "wf.yaml",
        "name: timed\nsteps:\n  - { name: draft, kind: llm, prompt: \"draft\", max_tokens: 8, output: draft }\n  - { name: review, kind: approval, show: draft, deadline: 1s, on_timeout: approve, output: r }\n  - { name: out, kind: transform, fn: template, input: \"{{ r.status }} {{ r.timed_out | tojson }}\", output: out }\noutput: out\n",
    );
    let w = Dir::new(&server.openai_base_url());
    let run = submit.enqueue("wf.yaml", schema.url(), &[]);
    let child = w.worker(schema.url(), "worker-d", 2, 5.0);
    let _guard = KillOnDrop(child.id());
    // Nobody answers: the worker decides at the deadline and goes on.
    completed(&store, &run, Duration::from_secs(30)).await;
    assert_eq!(
        store.run(&run).await.unwrap().unwrap().output,
        Some(serde_json::json!("approved true"))
    );
    let gate = &store
        .gates(&spes_store::GateFilter {
            run_id: Some(run),
            pending_only: false,
        })
        .await
        .unwrap()[0];
    let d = gate.decision.as_ref().unwrap();
    assert_eq!(
        (d["by"].as_str(), d["action"].as_str()),
        (Some("deadline"), Some("approve"))
    );
    // Decided soon after the deadline (the workers look twice a second;
    // the bound leaves room for a loaded machine).
    let lag = gate.decided_at.unwrap() - gate.deadline.unwrap();
    assert!(
        lag >= chrono::TimeDelta::zero() && lag < chrono::TimeDelta::milliseconds(2000),
        "decided {lag} after the deadline"
    );
    signal(child.id(), "TERM");
    assert_eq!(wait(child).await.code(), Some(0), "{}", w.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_honour_a_providers_retry_after_together() {
    let schema = TestSchema::new().await;
    let store = schema.store().await;
    let (sa, sb) = (
        FakeServer::start().await.unwrap(),
        FakeServer::start().await.unwrap(),
    );
    sa.set_latency(Duration::from_millis(20));
    sb.set_latency(Duration::from_millis(20));
    // A's first call is told to come back in 3 s; everything else answers.
    sa.push(spes_fake_llm::FakeResponse::rate_limited(Some("3")));
    let arrivals: Arc<Mutex<Vec<(char, Instant)>>> = Arc::default();
    for (name, server) in [('a', &sa), ('b', &sb)] {
        let log = arrivals.clone();
        server.on_request(move |_| log.lock().unwrap().push((name, Instant::now())));
    }
    let wf = topic_map(
        "limited",
        30,
        "",
        "retry: { attempts: 3, base: 100ms, max: 10s }",
    );
    let two = TwoWorkers::run(&schema, &store, (&sa, &sb), &wf, 10.0).await;
    let run = two.run;
    let arrivals = arrivals.lock().unwrap().clone();
    let limited_at = arrivals
        .iter()
        .find(|(w, _)| *w == 'a')
        .map(|(_, t)| *t)
        .expect("A made a call");
    let (from, to) = (
        limited_at + Duration::from_millis(300),
        limited_at + Duration::from_millis(2700),
    );
    let during: Vec<&(char, Instant)> = arrivals
        .iter()
        .filter(|(_, t)| *t > from && *t < to)
        .collect();
    assert!(
        during.is_empty(),
        "{} calls reached the provider while it had asked to wait",
        during.len()
    );
    assert!(
        arrivals.len() >= 31,
        "30 items and the limited call: {}",
        arrivals.len()
    );
    let answers = store.run(&run).await.unwrap().unwrap().output.unwrap();
    assert_eq!(answers.as_array().map(Vec::len), Some(30));
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_gives_the_leases_back_at_once() {
    let schema = TestSchema::new().await;
    let store = schema.store().await;
    let (slow, fast) = (
        FakeServer::start().await.unwrap(),
        FakeServer::start().await.unwrap(),
    );
    // A's calls hang far past the test; its lease is long.
    slow.set_latency(Duration::from_secs(60));
    let submit = Dir::new(&fast.openai_base_url());
    submit.write("wf.yaml", &map_yaml(10));
    let (da, db) = (
        Dir::new(&slow.openai_base_url()),
        Dir::new(&fast.openai_base_url()),
    );
    let run = submit.enqueue("wf.yaml", schema.url(), &[]);
    let a = da.worker(schema.url(), "worker-a", 4, 60.0);
    let _ga = KillOnDrop(a.id());
    until(
        "A to hold four items in flight",
        Duration::from_secs(30),
        || async { (slow.request_count() >= 4).then_some(()) },
    )
    .await;
    signal(a.id(), "TERM");
    let exit = wait(a).await;
    assert_eq!(exit.code(), Some(0), "{}", da.log());
    // Given back at once: nothing is left claimed by A (no lease had to run out).
    assert_eq!(
        holds_nothing(&store, "worker-a").await,
        Some(()),
        "{}",
        da.log()
    );
    assert!(da.log().contains("tasks given back"), "{}", da.log());
    let b = db.worker(schema.url(), "worker-b", 4, 60.0);
    let _gb = KillOnDrop(b.id());
    // Well within A's 60 s lease: B did not wait for it to run out.
    completed(&store, &run, Duration::from_secs(30)).await;
    check_store(&store, &run, 10).await;
    signal(b.id(), "TERM");
    assert_eq!(wait(b).await.code(), Some(0), "{}", db.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_worker_wakes_on_new_work_before_its_poll() {
    let schema = TestSchema::new().await;
    let store = schema.store().await;
    let server = FakeServer::start().await.unwrap();
    let submit = Dir::new(&server.openai_base_url());
    submit.write(
        "wf.yaml",
        "name: quick\ninputs:\n  x: { type: string, default: hi }\nsteps:\n  - { name: up, kind: transform, fn: uppercase, input: \"{{ x }}\", output: up }\noutput: up\n",
    );
    // The worker's sessions carry a name of their own, to find its LISTEN.
    let app = format!("wake_{}", &schema.name()[10..]);
    let url = format!("{}&application_name={app}", schema.url());
    let w = Dir::new(&server.openai_base_url());
    let child = w
        .command(&["worker", "--store", &url, "--poll-ms", "10000"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(child.id());
    until("the worker to listen", Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND query LIKE 'LISTEN%'",
        )
        .bind(&app)
        .fetch_one(store.pool())
        .await
        .ok()?;
        (n > 0).then_some(())
    })
    .await;
    let run = submit.enqueue("wf.yaml", schema.url(), &[]);
    let queued = Instant::now();
    // Far sooner than the 10 s poll: the enqueue's NOTIFY woke the worker.
    completed(&store, &run, Duration::from_secs(5)).await;
    assert!(queued.elapsed() < Duration::from_secs(5));
    assert_eq!(
        store.run(&run).await.unwrap().unwrap().output,
        Some(serde_json::json!("HI"))
    );
    signal(child.id(), "TERM");
    assert_eq!(wait(child).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sub_workflow_runs_as_a_task_of_its_own() {
    let schema = TestSchema::new().await;
    let store = schema.store().await;
    let server = FakeServer::start().await.unwrap();
    let submit = Dir::new(&server.openai_base_url());
    submit.write(
        "child.yaml",
        "name: child\ninputs: { topic: { type: string, required: true } }\nsteps:\n  - { name: one, kind: llm, prompt: \"first on {{ topic }}\", output: one }\n  - { name: two, kind: llm, prompt: \"second on {{ one }}\", output: two }\noutput: two\n",
    );
    submit.write(
        "wf.yaml",
        "name: parent\ninputs: { text: { type: string, default: caches } }\nsteps:\n  - { name: child, kind: workflow, path: child.yaml, inputs: { topic: \"{{ text }}\" }, output: child }\n  - { name: last, kind: llm, prompt: \"sum up {{ child }}\", output: last }\noutput: last\n",
    );
    let w = Dir::new(&server.openai_base_url());
    let run = submit.enqueue("wf.yaml", schema.url(), &[]);
    let child = w.worker(schema.url(), "worker-s", 2, 5.0);
    let _guard = KillOnDrop(child.id());
    completed(&store, &run, Duration::from_secs(30)).await;
    assert_eq!(
        store.run(&run).await.unwrap().unwrap().output,
        Some(serde_json::json!(
            "echo: sum up echo: second on echo: first on caches"
        ))
    );
    let task: (String, String) =
        sqlx::query_as("SELECT kind, state FROM tasks WHERE run_id = $1 AND key = 'child'")
            .bind(run.to_string())
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(
        task,
        ("item".to_owned(), "done".to_owned()),
        "the sub-workflow's task"
    );
    let keys: BTreeSet<String> = store
        .entries(&run)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    for k in ["child/one", "child/two", "child#result", "last"] {
        assert!(keys.contains(k), "{k} not in {keys:?}");
    }
    assert_eq!(server.request_count(), 3, "each call once");
    signal(child.id(), "TERM");
    assert_eq!(wait(child).await.code(), Some(0), "{}", w.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resuming_a_failed_queued_run_queues_it_for_the_workers() {
    let schema = TestSchema::new().await;
    let store = schema.store().await;
    let server = FakeServer::start().await.unwrap();
    // The first call is refused for good (a terminal error): the run fails.
    server.push(spes_fake_llm::FakeResponse::error(400));
    let submit = Dir::new(&server.openai_base_url());
    submit.write(
        "wf.yaml",
        "name: once\ninputs:\n  topic: { type: string, default: rust }\nsteps:\n  - { name: say, kind: llm, prompt: \"say {{ topic }}\", max_tokens: 8, output: said }\noutput: said\n",
    );
    let w = Dir::new(&server.openai_base_url());
    let run = submit.enqueue("wf.yaml", schema.url(), &[]);
    let child = w.worker(schema.url(), "worker-r", 2, 5.0);
    let _guard = KillOnDrop(child.id());
    until("the run to fail", Duration::from_secs(30), || async {
        (store.status(&run).await.ok().flatten() == Some(spes_store::RunStatus::Failed))
            .then_some(())
    })
    .await;
    let out = submit
        .command(&["resume", &run.to_string(), "--store", schema.url()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("queued again"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    completed(&store, &run, Duration::from_secs(30)).await;
    let done = store.run(&run).await.unwrap().unwrap();
    assert_eq!(done.output, Some(serde_json::json!("echo: say rust")));
    assert_eq!(done.error, None);
    assert_eq!(server.request_count(), 2);
    signal(child.id(), "TERM");
    assert_eq!(wait(child).await.code(), Some(0), "{}", w.log());
}

/// Issue 11, item 10: a healthy worker alone on the store never loses a
/// lease. With a 3 s lease (a heartbeat every second) over 3,000 tiny
/// `transform` items finishing fast, the old heartbeat read a lease, the
/// item committed and ended its task, and the renewal then called that
/// task lost: it aborted the task before it counted itself done and logged
/// "lease lost" (store test `renew_does_not_report_a_task_its_holder_just_finished`
/// shows the cause). A renewal racing the finishing transaction itself
/// misreported too (its snapshot showed the task still claimed). No task
/// was ever claimed twice: nothing was taken from a live holder. Now: 0
/// lost, and "items done" counts every item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_healthy_worker_loses_no_lease() {
    const ITEMS: usize = 3000;
    let schema = TestSchema::new().await;
    let url = schema.url().to_owned();
    let store = PostgresStore::connect(&url, PostgresOptions::default())
        .await
        .unwrap();
    let server = FakeServer::start().await.unwrap();
    let dir = Dir::new(&server.openai_base_url());
    let list: Vec<String> = (0..ITEMS).map(|i| format!("\"item {i}\"")).collect();
    dir.write(
        "wf.yaml",
        &format!(
            "name: tiny\ninputs:\n  items: {{ type: list, default: [{}] }}\nsteps:\n  - name: each\n    kind: map\n    over: items\n    concurrency: 16\n    step: {{ name: up, kind: transform, fn: uppercase, input: \"{{{{ item }}}}\" }}\n    output: out\noutput: out\n",
            list.join(", ")
        ),
    );
    let run = dir.enqueue("wf.yaml", &url, &[]);
    // Long enough that a heartbeat starved by a loaded machine (the whole
    // suite on 2 cores) still renews in time; the misreport this test
    // guards against does not depend on the length.
    let worker = dir.worker(&url, "lone", 16, 3.0);
    let pid = worker.id();
    let _guard = KillOnDrop(pid);
    completed(&store, &run, Duration::from_secs(240)).await;
    signal(pid, "TERM");
    let exit = wait(worker).await;
    assert_eq!(exit.code(), Some(0), "worker stopped cleanly");
    let log = dir.log();
    let reclaimed = scalar(
        &store,
        "SELECT count(*) FROM tasks WHERE run_id = $1 AND epoch > 1",
        &run,
    )
    .await;
    // Not taken from a live holder: no task was ever claimed twice. The
    // losses were misreports by the heartbeat's renewal.
    assert_eq!(reclaimed, 0, "tasks claimed more than once");
    let last = log
        .lines()
        .rfind(|l| l.contains("items done"))
        .unwrap_or_else(|| panic!("no stats line in the worker log:\n{log}"));
    assert!(
        last.contains(&format!(" {ITEMS} items done, 0 leases lost")),
        "{last}\n(lease lines: {:?})",
        log.lines()
            .filter(|l| l.contains("lease"))
            .take(5)
            .collect::<Vec<_>>()
    );
    let results = scalar(
        &store,
        "SELECT count(DISTINCT key) FROM entries WHERE run_id = $1 AND kind = 'item'",
        &run,
    )
    .await;
    assert_eq!(results, i64::try_from(ITEMS).unwrap());
}

/// Two workers spend from one run's budget: each reads what the run has
/// spent from the store before a call, so together they overspend by at
/// most the calls they have in flight (2 workers × concurrency 2), and the
/// run stops with class `budget_exceeded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_sharing_a_budget_overspend_by_at_most_their_calls_in_flight() {
    const BUDGET: usize = 10;
    const IN_FLIGHT: usize = 2 * 2;
    let schema = TestSchema::new().await;
    let store = schema.store().await;
    let (sa, sb) = (
        FakeServer::start().await.unwrap(),
        FakeServer::start().await.unwrap(),
    );
    for s in [&sa, &sb] {
        s.set_default(spes_fake_llm::FakeResponse::echo().with_latency(Duration::from_millis(30)));
    }
    let wf = topic_map("budgeted", 60, "    concurrency: 8\n", "temperature: 1").replace(
        "name: budgeted\n",
        &format!("name: budgeted\nbudget: {{ calls: {BUDGET} }}\n"),
    );
    let submit = Dir::new(&sa.openai_base_url());
    submit.write("wf.yaml", &wf);
    let (da, db) = (
        Dir::new(&sa.openai_base_url()),
        Dir::new(&sb.openai_base_url()),
    );
    let run = submit.enqueue("wf.yaml", schema.url(), &[]);
    let a = da.worker(schema.url(), "worker-a", 2, 5.0);
    let b = db.worker(schema.url(), "worker-b", 2, 5.0);
    let _guards = [KillOnDrop(a.id()), KillOnDrop(b.id())];
    until("the run to fail", Duration::from_secs(60), || async {
        (store.status(&run).await.ok().flatten() == Some(spes_store::RunStatus::Failed))
            .then_some(())
    })
    .await;
    let committed = usize::try_from(
        scalar(
            &store,
            "SELECT COUNT(*) FROM entries WHERE run_id = $1 AND kind = 'model'",
            &run,
        )
        .await,
    )
    .unwrap();
    let sent = sa.request_count() + sb.request_count();
    assert!(
        (BUDGET..=BUDGET + IN_FLIGHT).contains(&committed),
        "{committed} calls committed for a budget of {BUDGET} (A sent {}, B sent {})",
        sa.request_count(),
        sb.request_count()
    );
    assert_eq!(sent, committed, "every call sent was committed");
    assert!(
        sa.request_count() > 0 && sb.request_count() > 0,
        "both workers spent"
    );
    let error = store
        .run(&run)
        .await
        .unwrap()
        .unwrap()
        .error
        .unwrap_or_default();
    assert!(error.contains("budget_exceeded"), "{error}");
    for (child, dir) in [(a, da), (b, db)] {
        signal(child.id(), "TERM");
        assert_eq!(wait(child).await.code(), Some(0), "{}", dir.log());
    }
}

/// `spes worker --metrics-addr`: `/metrics` (no token) shows the run the
/// worker executed: its claim, three model calls with the fake server's
/// tokens, the completed run and an empty queue, parsed with a Prometheus
/// text parser.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_serves_metrics_of_what_it_executed() {
    let schema = TestSchema::new().await;
    let server = FakeServer::start().await.unwrap();
    server.set_default(spes_fake_llm::FakeResponse::echo().with_usage(11, 4));
    let dir = Dir::new(&server.openai_base_url());
    dir.write(
        "three.yaml",
        "name: three\nsteps:\n  - { name: a, kind: llm, prompt: one, output: a }\n  - { name: b, kind: llm, prompt: \"two {{ a }}\", output: b }\n  - { name: c, kind: llm, prompt: \"three {{ b }}\", output: c }\n",
    );
    let log = std::fs::File::create(dir.root.join("worker.log")).unwrap();
    let mut worker = dir
        .command(&[
            "worker",
            "--store",
            schema.url(),
            "--poll-ms",
            "50",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(worker.id());
    let addr = until("the metrics address", Duration::from_secs(60), || async {
        let log = dir.log();
        let rest = log.split("metrics at http://").nth(1)?;
        Some(rest.split('/').next()?.to_owned())
    })
    .await;
    let run = dir.enqueue("three.yaml", schema.url(), &[]);
    let store = schema.store().await;
    completed(&store, &run, Duration::from_secs(60)).await;
    assert_eq!(server.request_count(), 3);
    let resp = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let s = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let value = |metric: &str, labels: &[(&str, &str)]| -> f64 {
        let x = s
            .samples
            .iter()
            .find(|x| {
                x.metric == metric
                    && labels
                        .iter()
                        .all(|(k, v)| x.labels.get(k).is_some_and(|h| h == *v))
            })
            .unwrap_or_else(|| panic!("no {metric} {labels:?} in\n{text}"));
        match x.value {
            prometheus_parse::Value::Counter(n)
            | prometheus_parse::Value::Gauge(n)
            | prometheus_parse::Value::Untyped(n) => n,
            ref other => panic!("{metric}: {other:?}"),
        }
    };
    let call = [("provider", "remote"), ("model", "m"), ("outcome", "ok")];
    assert_eq!(value("spes_model_call_duration_seconds_count", &call), 3.0);
    let pm = [("provider", "remote"), ("model", "m")];
    let tokens = |t| {
        let mut l = pm.to_vec();
        l.push(("type", t));
        value("spes_tokens_total", &l)
    };
    assert_eq!((tokens("input"), tokens("output")), (33.0, 12.0));
    assert_eq!(value("spes_worker_claims_total", &[("task", "run")]), 1.0);
    assert_eq!(value("spes_worker_lease_losses_total", &[]), 0.0);
    assert_eq!(value("spes_runs", &[("status", "completed")]), 1.0);
    assert_eq!(value("spes_queue_tasks", &[("state", "ready")]), 0.0);
    assert_eq!(value("spes_queue_tasks", &[("state", "claimed")]), 0.0);
    signal(worker.id(), "TERM");
    let exit = worker.wait().unwrap();
    assert!(exit.success(), "{exit:?}: {}", dir.log());
}

/// A map (inside a sequence with a canned fallback) that runs out of its
/// `calls` budget at item 3 of `items`, one item at a time.
fn budgeted_fallback(items: usize) -> String {
    let topics: Vec<String> = (0..items).map(|i| format!("t{i}")).collect();
    format!(
        "name: budgeted\nbudget: {{ calls: 3 }}\ninputs:\n  topics: {{ type: list, default: [{}] }}\nsteps:\n  - name: outer\n    kind: sequence\n    fallback: [ {{ step: {{ kind: transform, fn: template, input: canned }} }} ]\n    steps:\n      - name: gather\n        kind: map\n        over: topics\n        concurrency: 1\n        step: {{ name: answer, kind: llm, prompt: \"about {{{{ item }}}}\", max_tokens: 8, temperature: 1 }}\n        output: answers\n    output: result\noutput: answers\n",
        topics.join(", ")
    )
}

/// An engine error's text without its file's directory: (step, file name,
/// line:col, why).
fn error_shape(e: &str) -> (String, String, String, String) {
    let (head, why) = e
        .split_once(" failed: ")
        .unwrap_or_else(|| panic!("not a step error: {e}"));
    let (step, loc) = head
        .split_once(" (")
        .unwrap_or_else(|| panic!("no location: {e}"));
    let loc = loc.trim_end_matches(')');
    let (file, line_col) = loc.split_once(':').unwrap();
    let file = std::path::Path::new(file)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    (step.to_owned(), file, line_col.to_owned(), why.to_owned())
}

/// A map item that a worker stops on the run's budget stops the run as
/// `spes run` stops in one process (exit 7, class `budget_exceeded`): past
/// the fallback of the step around the map, with the same error (the
/// refused step, where it is written, the limit). `spes resume RUN
/// --budget calls=100` then records a higher limit, and the worker that
/// executed the items (and cached the run) sees it: the run completes, no
/// call repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_budget_stop_in_a_worker_item_fails_the_run_as_in_one_process_until_resumed_with_more() {
    const ITEMS: usize = 6;
    let schema = TestSchema::new().await;
    let store = schema.store().await;
    let server = FakeServer::start().await.unwrap();
    server.set_default(spes_fake_llm::FakeResponse::echo());
    let wf = budgeted_fallback(ITEMS);
    // One process, on the project's own store.
    let local = Dir::new(&server.openai_base_url());
    local.write("wf.yaml", &wf);
    let one = local
        .command(&["run", "wf.yaml", "--json"])
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&one.stdout).unwrap_or_default();
    assert_eq!(
        one.status.code(),
        Some(7),
        "{doc}\n{}",
        String::from_utf8_lossy(&one.stderr)
    );
    assert_eq!(doc["error"]["class"], "budget_exceeded", "{doc}");
    let expected = error_shape(doc["error"]["message"].as_str().unwrap());
    assert_eq!(expected.0, "step `outer/gather/map[3]/answer`", "{doc}");
    assert_eq!(server.request_count(), 3);
    // The same workflow queued for a worker.
    let dir = Dir::new(&server.openai_base_url());
    dir.write("wf.yaml", &wf);
    let run = dir.enqueue("wf.yaml", schema.url(), &[]);
    let worker = dir.worker(schema.url(), "worker-a", 1, 5.0);
    let _guard = KillOnDrop(worker.id());
    until("the run to stop", Duration::from_secs(60), || async {
        let r = store.run(&run).await.ok().flatten()?;
        assert_ne!(
            r.status,
            spes_store::RunStatus::Completed,
            "the fallback served past the budget: {:?}",
            r.output
        );
        (r.status == spes_store::RunStatus::Failed).then_some(())
    })
    .await;
    let error = store.run(&run).await.unwrap().unwrap().error.unwrap();
    assert_eq!(error_shape(&error), expected, "{error}");
    const CALLS: &str = "SELECT COUNT(*) FROM entries WHERE run_id = $1 AND kind = 'model'";
    assert_eq!(scalar(&store, CALLS, &run).await, 3);
    assert_eq!(server.request_count(), 3 + 3);
    // A higher limit, recorded with the run; the worker continues it.
    let resumed = dir
        .command(&[
            "resume",
            &run.to_string(),
            "--budget",
            "calls=100",
            "--store",
            schema.url(),
        ])
        .output()
        .unwrap();
    assert!(resumed.status.success(), "{resumed:?}");
    completed(&store, &run, Duration::from_secs(60)).await;
    let done = store.run(&run).await.unwrap().unwrap();
    let answers = done.output.as_ref().and_then(|o| o.as_array()).cloned();
    assert_eq!(answers.map(|a| a.len()), Some(ITEMS), "{:?}", done.output);
    assert_eq!(
        scalar(&store, CALLS, &run).await,
        i64::try_from(ITEMS).unwrap()
    );
    assert_eq!(server.request_count(), 3 + ITEMS, "a call was repeated");
    signal(worker.id(), "TERM");
    assert_eq!(wait(worker).await.code(), Some(0), "{}", dir.log());
}
