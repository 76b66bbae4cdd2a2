//! `cargo bench -p spes-engine --bench durable` (with
//! `CARGO_TARGET_DIR=/work/bench-target` to stay off the debug builds):
//! what durability costs, against a SQLite store in a temp dir and the
//! scripted provider.
//!
//! 1. Journal commit cost per step: a durable 200-step chain minus the
//!    same chain in memory, per step (µs), for each durability setting,
//!    against bare commit loops beside it; and in lockstep, each step's
//!    journal commit right after one bare commit on a file of its own, so
//!    that both are measured on the disk at the same moments. The target
//!    (at most 1.5x one synchronous commit) is for `synchronous=FULL`, the
//!    default, against the cheapest way to make one: `BEGIN IMMEDIATE;
//!    INSERT; COMMIT` on the calling thread (rusqlite), with no hand-over
//!    between threads. The loops through sqlx (which hands each statement
//!    to its connection's thread) are printed for comparison. With NORMAL
//!    a commit does not fsync, and every figure is for comparison only.
//!    On a new file the store writes its WAL ahead of its frames (zeros),
//!    which the bare loop, plain SQLite, does not: the new-file line shows
//!    what a user's first run gets against a plain loop, the warm-file
//!    line compares both files at their working size (no growth in
//!    either), the strictest comparison of the two (15 rounds, each a
//!    durable run then a bare loop). On PostgreSQL (when a server is
//!    reachable, see `scripts/postgres.sh`): 9 rounds, each a durable run
//!    then a loop of as many bare commits (`BEGIN; INSERT; COMMIT` through
//!    sqlx), the durable step's cost against the loop's mean as for
//!    SQLite, with the ratio to its median beside it.
//! 2. Resume of a run with 1,000 recorded steps (ms): the last step failed
//!    on its first attempt; resume answers the 1,000 from the journal.
//! 3. Store bytes per step for chains whose outputs are 100, 1,000 and
//!    10,000 bytes while the context grows: linear in the output size,
//!    and the same late in the run as early (no context copies, no prompts).
//! 4. Answer checking: a chain whose steps ask for JSON under a
//!    50-property schema and get a 10 KB answer, minus the same chain
//!    taking the answer as text, per step (µs; target < 100 µs); and the
//!    check alone (`check_answer`: parse + validate).
//!
//! 5. Not run with the others, only when named (`-- steps`): the durable
//!    chain with `synchronous=NORMAL` (`SPES_DURABLE_BENCH_SYNC=full`:
//!    FULL) against the chain in memory, the append alone, and the store's
//!    append statements made directly, a loop to profile the CPU a durable
//!    step costs beside its fsync (`SPES_DURABLE_BENCH_ROUNDS`, default 20).
//!
//! Prints figures; asserts only that the runs did what they should.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_precision_loss,
    missing_docs
)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spes_core::component::ComponentRegistry;
use spes_core::workflow::{ValidateEnv, Workflow, parse_workflow, validate};
use spes_engine::{Engine, RunEnd, WorkflowSource};
use spes_llm::ProviderErrorKind;
use spes_llm::scripted::{Answer, Rule, ScriptedProvider};
use spes_store::sqlite::{Durability, SqliteOptions, SqliteStore};
use spes_store::{RunStatus, RunStore};

/// A chain of `steps` llm steps, each prompt holding the previous output.
fn chain(steps: usize) -> (Workflow, WorkflowSource) {
    let mut yaml =
        String::from("name: chain\ninputs:\n  topic: { type: string, default: rust }\nsteps:\n");
    for i in 1..=steps {
        let prev = if i == 1 {
            "topic".to_owned()
        } else {
            format!("s{}", i - 1)
        };
        yaml.push_str(&format!(
            "  - {{ name: s{i}, kind: llm, prompt: \"Step {i}: continue from {{{{ {prev} }}}}\", output: s{i} }}\n"
        ));
    }
    let spec = parse_workflow("chain.yaml", &yaml).unwrap();
    let reg = ComponentRegistry::from_components(vec![]);
    let env = ValidateEnv {
        components: &reg,
        providers: None,
    };
    let wf = validate(spec, "chain.yaml", &yaml, &env).unwrap().0;
    (
        wf,
        WorkflowSource {
            path: "/bench/chain.yaml".into(),
            text: yaml,
        },
    )
}

fn engine(rules: Vec<Rule>) -> Engine {
    Engine::builder()
        .provider(Arc::new(ScriptedProvider::new("bench", rules)))
        .build()
}

fn replying(text: &str) -> Engine {
    engine(vec![Rule::default(Answer::Reply(text.to_owned()))])
}

async fn open(dir: &Path, durability: Durability) -> Arc<SqliteStore> {
    Arc::new(
        SqliteStore::open(
            &dir.join("spes.db"),
            SqliteOptions::default().with_durability(durability),
        )
        .await
        .unwrap(),
    )
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The median and the mean of a loop's times (µs).
fn median_and_mean(times: Vec<Duration>) -> (f64, f64) {
    let mean = times.iter().copied().map(us).sum::<f64>() / times.len() as f64;
    (us(median(times)), mean)
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// 1. Journal commit cost per step.
async fn commit_cost() {
    const STEPS: usize = 200;
    const ROUNDS: usize = 7;
    let (wf, source) = chain(STEPS);
    let engine = replying("ok");
    // Warm up.
    for _ in 0..3 {
        engine.run(&wf, BTreeMap::new()).await.unwrap();
    }
    let mut mem = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let out = engine.run(&wf, BTreeMap::new()).await.unwrap();
        mem.push(t.elapsed());
        assert_eq!(out.model_calls, STEPS as u64);
    }
    let mem = median(mem);
    println!(
        "in memory: {STEPS}-step chain {:.2} ms ({:.1} µs/step)",
        ms(mem),
        us(mem) / STEPS as f64
    );
    for durability in [Durability::Full, Durability::Normal] {
        // The target is against one synchronous commit (an fsync
        // per commit: FULL, the default); NORMAL's commits are not.
        let goal = match durability {
            Durability::Full => "target <= 1.5x",
            _ => "no target: with synchronous=NORMAL a commit does not fsync",
        };
        // The commit alone: RunStore::append of a model entry, 200 in a row.
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), durability).await;
        let (id, _) = engine
            .start(store.clone(), &wf, &source, BTreeMap::new())
            .await
            .unwrap();
        let appends = append_rounds(&store, &id, ROUNDS, STEPS).await;
        store.close().await;
        println!(
            "append:    RunStore::append alone {:.1} µs/entry · store {}",
            us(median(appends)) / STEPS as f64,
            store.describe()
        );

        let mut durable = Vec::new();
        let mut bares = Vec::new();
        let mut directs = Vec::new();
        let mut describe = String::new();
        for _ in 0..ROUNDS {
            // Bare commit loops beside each round, so that all see the
            // disk in the same state (fsync times drift on a shared disk).
            directs.push(bare_direct_commit(durability, STEPS));
            bares.push(bare_sqlite_commit(durability, STEPS).await);
            let dir = tempfile::tempdir().unwrap();
            let store = open(dir.path(), durability).await;
            describe = store.describe();
            let t = Instant::now();
            let (_, end) = engine
                .start(store.clone(), &wf, &source, BTreeMap::new())
                .await
                .unwrap();
            durable.push(t.elapsed());
            assert!(matches!(end, RunEnd::Completed(ref o) if o.model_calls == STEPS as u64));
            store.close().await;
        }
        let durable = median(durable);
        let per_step = (us(durable) - us(mem)) / STEPS as f64;
        println!(
            "durable:   {STEPS}-step chain {:.2} ms; durable cost (commit + journal lookup + pause/cancel check) {per_step:.1} µs/step (target < 200 µs) · store {describe}",
            ms(durable)
        );
        // The durable figure is a mean over its run (the run's time per
        // step): the target compares it with the bare loop's mean; the
        // ratio to the loop's median (its slower commits left out) is
        // printed beside it.
        let (direct, direct_mean) = middles(&directs);
        println!(
            "bare:      one synchronous commit made directly (BEGIN IMMEDIATE; INSERT; COMMIT by rusqlite on the calling thread, a new WAL file, synchronous={}) mean {direct_mean:.1} µs, median {direct:.1} µs · durable step costs {:.2}x the mean ({goal}), {:.2}x the median",
            durability.pragma(),
            per_step / direct_mean,
            per_step / direct
        );
        bares.sort_by(f64::total_cmp);
        let bare = bares[bares.len() / 2];
        println!(
            "bare:      the same through sqlx, a statement at a time (each handed to its connection's thread) {bare:.1} µs · durable step costs {:.2}x it (for comparison)",
            per_step / bare
        );
        // The bare loop with its three statements as one command (one
        // hand-over each way to sqlx's connection thread).
        let one = bare_sqlite_commit_one_command(durability, STEPS).await;
        println!(
            "bare:      the same through sqlx as one command (one round trip to the connection's thread) {one:.1} µs · durable step costs {:.2}x it (for comparison)",
            per_step / one
        );
        // The store's own statement on a raw connection: what the SQL costs,
        // without the store's machinery around it.
        let own = bare_store_sql(durability, STEPS, false).await;
        println!(
            "bare:      the store's own append statements (with their seq and status subqueries and indexes) as one sqlx command on a raw connection {own:.1} µs · durable step costs {:.2}x it",
            per_step / own
        );
        let pooled = bare_store_sql(durability, STEPS, true).await;
        println!(
            "bare:      the same through a one-connection sqlx pool (acquire, and a ping on every release) {pooled:.1} µs"
        );
        // The same in files that already hold a run or a loop of commits:
        // a long-lived spes.db, whose WAL no longer grows at each commit.
        let (warm_step, (warm_direct, warm_mean), warm_one) =
            warm_cost(&engine, &wf, &source, durability, mem).await;
        println!(
            "warm file: durable cost {warm_step:.1} µs/step · direct bare commit mean {warm_mean:.1} µs, median {warm_direct:.1} µs · {:.2}x the mean ({goal}), {:.2}x the median · through sqlx as one command (median) {warm_one:.1} µs · {:.2}x it (for comparison)",
            warm_step / warm_mean,
            warm_step / warm_direct,
            warm_step / warm_one
        );
        let (step, bare, rounds) = interleaved_cost(&wf, &source, durability).await;
        println!(
            "lockstep:  each model call makes one bare one-command commit through sqlx on a file of its own just before the step's journal commit (both files warm); durable cost {step:.1} µs/step · bare commit {bare:.1} µs · {:.2}x it (for comparison; per round: {rounds})",
            step / bare
        );
    }
    postgres_cost(&wf, &source, &engine, mem).await;
}

/// `rounds` rounds of `n` [`RunStore::append`]s in a row to run `id`, each
/// with the payload of the run's first entry under a new key: how long
/// each round took.
async fn append_rounds(
    store: &SqliteStore,
    id: &spes_store::RunId,
    rounds: usize,
    n: usize,
) -> Vec<Duration> {
    let payload = store.entries(id).await.unwrap()[0].payload.clone();
    let mut took = Vec::new();
    for round in 0..rounds {
        let t = Instant::now();
        for i in 0..n {
            store
                .append(id, &format!("bench/{round}/{i}"), "model", &payload)
                .await
                .unwrap();
        }
        took.push(t.elapsed());
    }
    took
}

/// The durable 200-step chain alone, with `synchronous=NORMAL`, against
/// the same chain in memory, rounds alternating (`SPES_DURABLE_BENCH_ROUNDS`,
/// default 20): the CPU a durable step costs beside its fsync.
async fn steps_cost() {
    const STEPS: usize = 200;
    let rounds = std::env::var("SPES_DURABLE_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20usize);
    let sync = match std::env::var("SPES_DURABLE_BENCH_SYNC").as_deref() {
        Ok("full" | "FULL") => Durability::Full,
        _ => Durability::Normal,
    };
    let (wf, source) = chain(STEPS);
    let engine = replying("ok");
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), sync).await;
    let (mut mem, mut durable) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        engine.run(&wf, BTreeMap::new()).await.unwrap();
        mem.push(t.elapsed());
        let t = Instant::now();
        let (_, end) = engine
            .start(store.clone(), &wf, &source, BTreeMap::new())
            .await
            .unwrap();
        durable.push(t.elapsed());
        assert!(matches!(end, RunEnd::Completed(_)));
    }
    // The append alone, on the same (warm) file, into a run of its own.
    let (id, _) = engine
        .start(store.clone(), &wf, &source, BTreeMap::new())
        .await
        .unwrap();
    let appends = append_rounds(&store, &id, rounds, STEPS).await;
    store.close().await;
    println!(
        "steps:     RunStore::append alone (synchronous={}, warm file) {:.1} µs/entry",
        sync.pragma(),
        us(median(appends)) / STEPS as f64
    );
    // Their means hold the checkpoints, which sync with NORMAL too.
    let (direct, direct_mean) = bare_direct_commit(sync, 2000);
    let (sql, sql_mean) = direct_store_sql(sync, 2000).await;
    println!(
        "steps:     the store's append statements made directly (rusqlite, calling thread) median {sql:.1} µs, mean {sql_mean:.1} µs · a bare commit made directly median {direct:.1} µs, mean {direct_mean:.1} µs"
    );
    let (mem, durable) = (median(mem), median(durable));
    println!(
        "steps:     {STEPS}-step chain in memory {:.1} µs/step, durable (synchronous={}, warm file) {:.1} µs/step: durable cost {:.1} µs/step",
        us(mem) / STEPS as f64,
        sync.pragma(),
        us(durable) / STEPS as f64,
        (us(durable) - us(mem)) / STEPS as f64
    );
}

/// The median and mean of `n` commits of the store's own append
/// statements (as `insert_all` in the store makes them), made by rusqlite
/// on the calling thread into a new store file: what the SQL costs without
/// the store's machinery around it (µs).
async fn direct_store_sql(durability: Durability, n: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), durability).await;
    let run = spes_store::testing::sample_run();
    store.create_run(&run).await.unwrap();
    store.close().await;
    let conn = rusqlite::Connection::open(dir.path().join("spes.db")).unwrap();
    conn.pragma_update(None, "synchronous", durability.pragma())
        .unwrap();
    conn.pragma_update(None, "foreign_keys", "ON").unwrap();
    let payload = "x".repeat(600);
    let id = run.id.to_string();
    let mut times = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        conn.prepare_cached("BEGIN IMMEDIATE")
            .unwrap()
            .execute([])
            .unwrap();
        let (_status, seq): (String, i64) = conn
            .prepare_cached(
                "SELECT status, (SELECT COALESCE(MAX(seq), 0) + 1 FROM entries WHERE run_id = ?1) \
                 FROM runs WHERE id = ?1",
            )
            .unwrap()
            .query_row([&id], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        conn.prepare_cached(
            "INSERT INTO entries (run_id, seq, key, kind, payload, recorded_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (run_id, key) DO NOTHING",
        )
        .unwrap()
        .execute(rusqlite::params![
            id,
            seq,
            format!("step{i}"),
            "model",
            payload,
            "2026-01-01T00:00:00.000000Z"
        ])
        .unwrap();
        conn.prepare_cached("COMMIT").unwrap().execute([]).unwrap();
        times.push(t.elapsed());
    }
    median_and_mean(times)
}

/// [`commit_cost`]'s durable step, direct bare commit and one-command bare
/// commit, each in a file that already went through one round (its WAL at
/// its working size), rounds alternating: (µs per durable step, (median,
/// mean) µs per direct bare commit, µs per one-command bare commit).
async fn warm_cost(
    engine: &Engine,
    wf: &Workflow,
    source: &WorkflowSource,
    durability: Durability,
    mem: Duration,
) -> (f64, (f64, f64), f64) {
    const STEPS: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), durability).await;
    let (_bare_dir, mut conn) = bare_sqlite(durability).await;
    let (_direct_dir, direct_conn) = direct_sqlite(durability);
    let payload = "x".repeat(200);
    let mut durable = Vec::new();
    let mut bare = Vec::new();
    let mut direct = Vec::new();
    for round in 0..=WARM_ROUNDS {
        let t = Instant::now();
        let (_, end) = engine
            .start(store.clone(), wf, source, BTreeMap::new())
            .await
            .unwrap();
        let took = t.elapsed();
        assert!(matches!(end, RunEnd::Completed(_)));
        let mut times = Vec::new();
        for i in 0..STEPS {
            let t = Instant::now();
            one_command_commit(&mut conn, format!("k{round}-{i}"), &payload).await;
            times.push(t.elapsed());
        }
        let directs = direct_commits(&direct_conn, &format!("k{round}"), STEPS);
        // The first round warms the files.
        if round > 0 {
            durable.push(took);
            bare.push(us(median(times)));
            direct.push(directs);
        }
    }
    store.close().await;
    bare.sort_by(f64::total_cmp);
    (
        (us(median(durable)) - us(mem)) / STEPS as f64,
        middles(&direct),
        bare[bare.len() / 2],
    )
}

/// Rounds of [`warm_cost`] (after one that warms the files).
const WARM_ROUNDS: usize = 15;

/// A provider that, before it answers, makes one bare one-command commit
/// (as [`bare_sqlite_commit_one_command`]) on a SQLite file of its own and
/// records how long it took: the bare commit and the step's journal
/// commit then alternate, one each per step, on the same disk at the same
/// moment (fsync times drift on a shared disk; loops side by side see
/// different moments).
#[derive(Debug)]
struct Committing {
    answer: ScriptedProvider,
    conn: tokio::sync::Mutex<sqlx::SqliteConnection>,
    took: std::sync::Mutex<Vec<Duration>>,
    n: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl spes_llm::Provider for Committing {
    fn name(&self) -> &str {
        "committing"
    }

    fn kind(&self) -> &'static str {
        "scripted"
    }

    fn default_model(&self) -> Option<&str> {
        None
    }

    async fn complete(
        &self,
        req: &spes_core::message::ChatRequest,
        cx: &spes_llm::CallContext,
    ) -> Result<spes_core::message::ChatResponse, spes_llm::ProviderError> {
        let i = self.n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut conn = self.conn.lock().await;
        let payload = "x".repeat(200);
        let t = Instant::now();
        one_command_commit(&mut conn, format!("k{i}"), &payload).await;
        self.took.lock().unwrap().push(t.elapsed());
        drop(conn);
        self.answer.complete(req, cx).await
    }
}

/// The durable chain and a bare commit in lockstep (see [`Committing`]),
/// both files warm (the first round is not counted): the durable cost
/// per step (the chain's time less its bare commits, less the chain in
/// memory) and the bare commit, both as means over the same steps (µs),
/// and each round's ratio.
async fn interleaved_cost(
    wf: &Workflow,
    source: &WorkflowSource,
    durability: Durability,
) -> (f64, f64, String) {
    const STEPS: usize = 200;
    let (_bare_dir, conn) = bare_sqlite(durability).await;
    let provider = Arc::new(Committing {
        answer: ScriptedProvider::new("bench", vec![Rule::default(Answer::Reply("ok".into()))]),
        conn: tokio::sync::Mutex::new(conn),
        took: std::sync::Mutex::new(Vec::new()),
        n: std::sync::atomic::AtomicUsize::new(0),
    });
    let engine = Engine::builder().provider(provider.clone()).build();
    let plain = replying("ok");
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), durability).await;
    let (mut steps, mut bares, mut ratios) = (0.0, 0.0, Vec::new());
    for round in 0..8 {
        let t = Instant::now();
        plain.run(wf, BTreeMap::new()).await.unwrap();
        let mem = us(t.elapsed());
        provider.took.lock().unwrap().clear();
        let t = Instant::now();
        let (_, end) = engine
            .start(store.clone(), wf, source, BTreeMap::new())
            .await
            .unwrap();
        let took = us(t.elapsed());
        assert!(matches!(end, RunEnd::Completed(_)));
        let bare: f64 = provider.took.lock().unwrap().iter().copied().map(us).sum();
        let step = (took - bare - mem) / STEPS as f64;
        let bare = bare / STEPS as f64;
        if round > 0 {
            steps += step;
            bares += bare;
            ratios.push(format!("{:.2}", step / bare));
        }
    }
    store.close().await;
    (steps / 7.0, bares / 7.0, ratios.join(" "))
}

/// The median of the store's lone-append statements (`BEGIN IMMEDIATE;
/// INSERT ... RETURNING seq, status; COMMIT`, as the store's journal connection
/// runs them) sent as one command through sqlx on a raw connection to a
/// store file holding one run.
async fn bare_store_sql(durability: Durability, n: usize, pooled: bool) -> f64 {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), durability).await;
    let run = spes_store::testing::sample_run();
    store.create_run(&run).await.unwrap();
    store.close().await;
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("spes.db"))
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .foreign_keys(true)
        .synchronous(match durability {
            Durability::Full => sqlx::sqlite::SqliteSynchronous::Full,
            _ => sqlx::sqlite::SqliteSynchronous::Normal,
        });
    let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .test_before_acquire(false)
        .connect_with(opts)
        .await
        .unwrap();
    let payload = "x".repeat(600);
    let id = run.id.to_string();
    let mut times = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        let q = sqlx::query(
            "BEGIN IMMEDIATE; \
             SELECT status, (SELECT COALESCE(MAX(seq), 0) + 1 FROM entries WHERE run_id = ?1) FROM runs WHERE id = ?1; \
             INSERT INTO entries (run_id, seq, key, kind, payload, recorded_at) \
             VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM entries WHERE run_id = ?1), ?2, ?3, ?4, ?5) \
             ON CONFLICT (run_id, key) DO NOTHING; COMMIT",
        )
        .bind(&id)
        .bind(format!("step{i}"))
        .bind("model")
        .bind(&payload)
        .bind("2026-12-05T00:00:00.000000Z");
        if pooled {
            q.fetch_all(&pool).await.unwrap();
        } else {
            q.fetch_all(&mut conn).await.unwrap();
        }
        times.push(t.elapsed());
    }
    us(median(times))
}

/// A raw SQLite connection (WAL, `durability`) to a new file holding one
/// table `t (k, v)`, for the bare commit loops.
async fn bare_sqlite(durability: Durability) -> (tempfile::TempDir, sqlx::SqliteConnection) {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("bare.db"))
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(match durability {
            Durability::Full => sqlx::sqlite::SqliteSynchronous::Full,
            _ => sqlx::sqlite::SqliteSynchronous::Normal,
        });
    let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
    sqlx::raw_sql("CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT)")
        .execute(&mut conn)
        .await
        .unwrap();
    (dir, conn)
}

/// A rusqlite connection (WAL, `durability`) to a new file holding one
/// table `t (k, v)`, for the direct bare commit loops.
fn direct_sqlite(durability: Durability) -> (tempfile::TempDir, rusqlite::Connection) {
    let dir = tempfile::tempdir().unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("direct.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", durability.pragma())
        .unwrap();
    conn.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT)")
        .unwrap();
    (dir, conn)
}

/// The median and the mean of `n` commits (`BEGIN IMMEDIATE; INSERT;
/// COMMIT`) on `conn`, made on this thread (µs); keys start with `prefix`.
fn direct_commits(conn: &rusqlite::Connection, prefix: &str, n: usize) -> (f64, f64) {
    let payload = "x".repeat(200);
    let mut times = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        conn.prepare_cached("INSERT INTO t VALUES (?1, ?2)")
            .unwrap()
            .execute(rusqlite::params![format!("{prefix}-{i}"), payload])
            .unwrap();
        conn.execute_batch("COMMIT").unwrap();
        times.push(t.elapsed());
    }
    median_and_mean(times)
}

/// The middle round's median and the middle round's mean of rounds of
/// (median, mean).
fn middles(rounds: &[(f64, f64)]) -> (f64, f64) {
    let mut medians: Vec<f64> = rounds.iter().map(|r| r.0).collect();
    let mut means: Vec<f64> = rounds.iter().map(|r| r.1).collect();
    medians.sort_by(f64::total_cmp);
    means.sort_by(f64::total_cmp);
    (medians[medians.len() / 2], means[means.len() / 2])
}

/// The median and mean of a bare commit loop made directly on a new file
/// (see [`direct_commits`]): what one durable write cannot go below on
/// this disk.
fn bare_direct_commit(durability: Durability, n: usize) -> (f64, f64) {
    let (_dir, conn) = direct_sqlite(durability);
    direct_commits(&conn, "k", n)
}

/// The median of a bare commit loop on a raw sqlx SQLite connection.
async fn bare_sqlite_commit(durability: Durability, n: usize) -> f64 {
    let (_dir, mut conn) = bare_sqlite(durability).await;
    let payload = "x".repeat(200);
    let mut times = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("INSERT INTO t VALUES (?1, ?2)")
            .bind(format!("k{i}"))
            .bind(&payload)
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::raw_sql("COMMIT").execute(&mut conn).await.unwrap();
        times.push(t.elapsed());
    }
    us(median(times))
}

/// One bare commit on a [`bare_sqlite`] connection: `BEGIN IMMEDIATE;
/// INSERT; COMMIT` sent as one command (one hand-over each way).
async fn one_command_commit(conn: &mut sqlx::SqliteConnection, key: String, payload: &str) {
    sqlx::query("BEGIN IMMEDIATE; INSERT INTO t VALUES (?1, ?2); COMMIT")
        .bind(key)
        .bind(payload)
        .execute(conn)
        .await
        .unwrap();
}

/// [`bare_sqlite_commit`] with `BEGIN IMMEDIATE; INSERT; COMMIT` sent as
/// one command (see [`one_command_commit`]).
async fn bare_sqlite_commit_one_command(durability: Durability, n: usize) -> f64 {
    let (_dir, mut conn) = bare_sqlite(durability).await;
    let payload = "x".repeat(200);
    let mut times = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        one_command_commit(&mut conn, format!("k{i}"), &payload).await;
        times.push(t.elapsed());
    }
    us(median(times))
}

/// The same chain on PostgreSQL (`SPES_TEST_POSTGRES_URL`, skipped with a
/// line when no server answers), beside a bare commit loop on one connection.
async fn postgres_cost(wf: &Workflow, source: &WorkflowSource, engine: &Engine, mem: Duration) {
    use sqlx::Connection;
    const STEPS: usize = 200;
    let url = spes_store::testing::postgres::server_url();
    if sqlx::PgConnection::connect(&url).await.is_err() {
        println!("postgres:  skipped (no server at {url}; see scripts/postgres.sh)");
        return;
    }
    let schema = spes_store::testing::postgres::TestSchema::new().await;
    let store: Arc<dyn RunStore> = Arc::new(
        spes_store::postgres::PostgresStore::connect(
            schema.url(),
            spes_store::postgres::PostgresOptions::default(),
        )
        .await
        .unwrap(),
    );
    let mut conn = sqlx::PgConnection::connect(schema.url()).await.unwrap();
    sqlx::raw_sql("CREATE TABLE bare (k TEXT PRIMARY KEY, v TEXT)")
        .execute(&mut conn)
        .await
        .unwrap();
    let payload = "x".repeat(200);
    // Rounds alternate a durable run and a bare loop of as many commits, so
    // that both see the server and the disk at the same moments; the first
    // round warms both up.
    let (mut durable, mut bares) = (Vec::new(), Vec::new());
    for round in 0..=PG_ROUNDS {
        let t = Instant::now();
        let (_, end) = engine
            .start(store.clone(), wf, source, BTreeMap::new())
            .await
            .unwrap();
        let took = t.elapsed();
        assert!(matches!(end, RunEnd::Completed(ref o) if o.model_calls == STEPS as u64));
        let mut times = Vec::new();
        for i in 0..STEPS {
            let t = Instant::now();
            let mut tx = conn.begin().await.unwrap();
            sqlx::query("INSERT INTO bare VALUES ($1, $2)")
                .bind(format!("k{round}-{i}"))
                .bind(&payload)
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            times.push(t.elapsed());
        }
        if round > 0 {
            durable.push(took);
            bares.push(median_and_mean(times));
        }
    }
    let per_step = (us(median(durable)) - us(mem)) / STEPS as f64;
    let (bare, bare_mean) = middles(&bares);
    // As for SQLite: the durable figure is a mean over its run, compared
    // with the bare loop's mean; the ratio to its median is printed beside.
    println!(
        "postgres:  durable cost {per_step:.1} µs/step · bare commit (BEGIN; INSERT; COMMIT through sqlx, three round trips) mean {bare_mean:.1} µs, median {bare:.1} µs · {:.2}x the mean (target <= 1.5x), {:.2}x the median · {PG_ROUNDS} rounds, each a durable run then a bare loop · store {}",
        per_step / bare_mean,
        per_step / bare,
        store.describe()
    );
}

/// Rounds of [`postgres_cost`] (after one to warm up).
const PG_ROUNDS: usize = 9;

/// 2. Resume of a run with 1,000 recorded steps.
async fn resume_cost() {
    const RECORDED: usize = 1000;
    const ROUNDS: usize = 5;
    let (wf, source) = chain(RECORDED + 1);
    let last = format!("s{}", RECORDED + 1);
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), Durability::Full).await;
    let describe = store.describe();
    let mut resumes = Vec::new();
    let mut reopen_and_resume = Vec::new();
    for round in 0..ROUNDS {
        // The last step fails on its first attempt: 1,000 steps recorded.
        let failing = engine(vec![
            Rule::step(
                &last,
                Answer::Error {
                    kind: ProviderErrorKind::InvalidRequest,
                    status: Some(400),
                    retry_after: None,
                    message: "bench: fail once".into(),
                },
            ),
            Rule::default(Answer::Reply("ok".into())),
        ]);
        let (id, end) = failing
            .start(store.clone(), &wf, &source, BTreeMap::new())
            .await
            .unwrap();
        assert!(matches!(end, RunEnd::Failed(_)), "{end:?}");
        assert_eq!(store.entries(&id).await.unwrap().len(), RECORDED);

        let healthy = replying("ok");
        // Odd rounds include opening the store, as a fresh `spes resume` does.
        let reopen = round % 2 == 1;
        if reopen {
            store.close().await;
        }
        let t = Instant::now();
        if reopen {
            store = open(dir.path(), Durability::Full).await;
        }
        let st = store.clone();
        let run = st.run(&id).await.unwrap().unwrap();
        let end = healthy
            .resume(st.clone(), &run, &wf, &source, false)
            .await
            .unwrap();
        let took = t.elapsed();
        match end {
            RunEnd::Completed(o) => {
                assert_eq!(o.replayed, RECORDED as u64);
                assert_eq!(o.model_calls, 1);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            st.run(&id).await.unwrap().unwrap().status,
            RunStatus::Completed
        );
        if reopen {
            reopen_and_resume.push(took);
        } else {
            resumes.push(took);
        }
    }
    println!(
        "resume of a run with {RECORDED} recorded steps: {:.1} ms (target < 100 ms); with opening the store: {:.1} ms · store {describe}",
        ms(median(resumes)),
        ms(median(reopen_and_resume))
    );
}

/// Size of the store files (main file plus WAL, if any).
fn store_bytes(dir: &Path) -> u64 {
    ["spes.db", "spes.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// 3. Store bytes per step for growing contexts.
async fn growth() {
    const HALF: usize = 100;
    println!(
        "store growth (chains of {HALF} and {} steps; each prompt holds the previous output, the context holds all; \
         file = SQLite main file + WAL after close, 4 KiB pages):",
        2 * HALF
    );
    for size in [100usize, 1_000, 10_000] {
        let text: String = "abcdefghij".repeat(size / 10);
        let engine = replying(&text);
        let mut sizes = Vec::new();
        let mut journal = 0usize;
        for steps in [HALF, 2 * HALF] {
            let (wf, source) = chain(steps);
            let dir = tempfile::tempdir().unwrap();
            let store = open(dir.path(), Durability::Normal).await;
            let (id, end) = engine
                .start(store.clone(), &wf, &source, BTreeMap::new())
                .await
                .unwrap();
            assert!(matches!(end, RunEnd::Completed(_)));
            journal = store
                .entries(&id)
                .await
                .unwrap()
                .iter()
                .map(|e| e.key.len() + e.kind.len() + e.payload.to_string().len())
                .sum::<usize>()
                / steps;
            // The last connection to close checkpoints the WAL into the file.
            store.close().await;
            sizes.push(store_bytes(dir.path()));
        }
        let first = sizes[0] as f64 / HALF as f64;
        let second = (sizes[1] - sizes[0]) as f64 / HALF as f64;
        println!(
            "  output {size:>6} B: journal {journal:>6} B/step (output + {:>3} B); file {:>8} B after {HALF} steps, {:>8} B after {}: \
             {first:>6.0} B/step over steps 1..{HALF}, {second:>6.0} B/step over steps {}..{}",
            journal - size,
            sizes[0],
            sizes[1],
            2 * HALF,
            HALF + 1,
            2 * HALF,
        );
    }
}

/// 4. What checking a 10 KB JSON answer against a 50-property schema adds per step.
async fn answer_check_cost() {
    use spes_core::answer::{AnswerSchema, OnTruncation, Verdict, check_answer};
    use spes_core::workflow::Format;
    const STEPS: usize = 200;
    const ROUNDS: usize = 7;
    const PROPS: usize = 50;
    let mut props = serde_json::Map::new();
    let mut answer = serde_json::Map::new();
    for i in 0..PROPS {
        props.insert(
            format!("p{i}"),
            serde_json::json!({ "type": "string", "minLength": 1, "maxLength": 400 }),
        );
        answer.insert(format!("p{i}"), serde_json::json!("x".repeat(196)));
    }
    let required: Vec<String> = (0..PROPS).map(|i| format!("p{i}")).collect();
    let schema = serde_json::json!({
        "type": "object", "required": required, "properties": props, "additionalProperties": false
    });
    let answer = serde_json::Value::Object(answer).to_string();
    assert!((9_500..=11_000).contains(&answer.len()), "{}", answer.len());
    // `extra`: what the step asks of its answer (nothing: text).
    let build = |extra: &str| {
        let mut yaml = String::from("name: checked\nsteps:\n");
        for i in 1..=STEPS {
            yaml.push_str(&format!(
                "  - {{ name: s{i}, kind: llm, prompt: \"Step {i}\"{extra}, output: s{i} }}\n"
            ));
        }
        let spec = parse_workflow("checked.yaml", &yaml).unwrap();
        let reg = ComponentRegistry::from_components(vec![]);
        let env = ValidateEnv {
            components: &reg,
            providers: None,
        };
        validate(spec, "checked.yaml", &yaml, &env).unwrap().0
    };
    let text = build("");
    let json = build(", format: json");
    let checked = build(&format!(", schema: {schema}"));
    let engine = replying(&answer);
    let time = |wf: &Workflow| {
        let mut runs = Vec::new();
        for _ in 0..ROUNDS {
            let t = Instant::now();
            let out = futures_lite_block(&engine, wf);
            runs.push(t.elapsed());
            assert_eq!(out, STEPS as u64);
        }
        median(runs)
    };
    // Warm up, then measure each.
    let _ = (time(&text), time(&json), time(&checked));
    let (t_text, t_json, t_checked) = (time(&text), time(&json), time(&checked));
    let per_step = |a: Duration, b: Duration| (us(a) - us(b)) / STEPS as f64;
    let compiled = AnswerSchema::new(schema).unwrap();
    let mut alone = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..100 {
            let v = check_answer(
                Format::Json,
                Some(&compiled),
                OnTruncation::Fail,
                &answer,
                false,
            );
            assert!(matches!(v, Verdict::Valid(_)));
        }
        alone.push(t.elapsed() / 100);
    }
    println!(
        "answers:   {STEPS}-step chains, {} B JSON answers: as text {:.2} ms; format: json {:.2} ms; under a {PROPS}-property schema {:.2} ms",
        answer.len(),
        ms(t_text),
        ms(t_json),
        ms(t_checked),
    );
    println!(
        "           the schema check adds {:.1} µs/step (target < 100 µs); check_answer alone (parse + validate) {:.1} µs; JSON in the context instead of text {:.1} µs/step",
        per_step(t_checked, t_json),
        us(median(alone)),
        per_step(t_json, t_text),
    );
}

/// Runs `wf` in memory to its end on the current runtime; its model calls.
fn futures_lite_block(engine: &Engine, wf: &Workflow) -> u64 {
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current()
            .block_on(engine.run(wf, BTreeMap::new()))
            .unwrap()
            .model_calls
    })
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // `cargo bench -p spes-engine --bench durable -- answers` runs one part
    // (commit, resume, growth, answers); no name runs them all.
    let parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |p: &str| parts.is_empty() || parts.iter().any(|a| a == p);
    rt.block_on(async {
        // Not part of a run of them all: a loop to profile (callgrind,
        // perf), with `synchronous=NORMAL` so that no fsync hides the CPU.
        if parts.iter().any(|a| a == "steps") {
            steps_cost().await;
        }
        if wanted("commit") {
            commit_cost().await;
        }
        if wanted("resume") {
            resume_cost().await;
        }
        if wanted("growth") {
            growth().await;
        }
        if wanted("answers") {
            answer_check_cost().await;
        }
    });
}
